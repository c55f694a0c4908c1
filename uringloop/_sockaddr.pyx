# cython: language_level=3
"""Socket addresses between Python and C, with the conventions of CPython's socket module: the
sockaddr a datagram arrived from or an accepted connection came from, as the tuple (or str,
bytes) socket.recvfrom()/accept() would give, and a Python address as the sockaddr
socket.sendto() would pass to the kernel -- for the operations that carry one (_ops: MsgOp,
AcceptOp, accept_nonblocking) and the datagram transports (_datagram)."""

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.string cimport memset, memcpy, strlen

from uringloop._sys cimport *

import os
from operator import index as _index
import socket as _socket

cdef extern from "<sys/un.h>":
    struct sockaddr_un:
        unsigned short sun_family
        char sun_path[108]

cdef extern from "<linux/netlink.h>":
    struct sockaddr_nl:
        unsigned short nl_family
        unsigned int nl_pid
        unsigned int nl_groups

cdef extern from "Python.h":
    object PyUnicode_DecodeFSDefaultAndSize(const char *s, Py_ssize_t size)

cdef int AF_INET = _socket.AF_INET
cdef int AF_INET6 = _socket.AF_INET6
cdef int AF_NETLINK = _socket.AF_NETLINK
cdef int AF_UNIX = _socket.AF_UNIX


cdef object sockaddr_to_python(sockaddr_storage *ss, socklen_t length, int family):
    cdef char text[64]
    cdef sockaddr_in *sin
    cdef sockaddr_in6 *sin6
    cdef sockaddr_un *sun
    cdef Py_ssize_t n
    if length == 0:
        return None      # no address (an unbound AF_UNIX sender): socket.recvfrom says None
    family = ss.ss_family
    if family == AF_INET:
        sin = <sockaddr_in *>ss
        inet_ntop(AF_INET, &sin.sin_addr, text, sizeof(text))
        return (text.decode('ascii'), ntohs(sin.sin_port))
    if family == AF_INET6:
        sin6 = <sockaddr_in6 *>ss
        inet_ntop(AF_INET6, &sin6.sin6_addr, text, sizeof(text))
        return (text.decode('ascii'), ntohs(sin6.sin6_port), ntohl(sin6.sin6_flowinfo),
                sin6.sin6_scope_id)
    if family == AF_UNIX:
        sun = <sockaddr_un *>ss
        n = <Py_ssize_t>length - <Py_ssize_t>UL_SUN_PATH_OFFSET
        if n <= 0:
            return ''
        if sun.sun_path[0] == 0:
            return PyBytes_FromStringAndSize(sun.sun_path, n)   # abstract namespace: bytes
        n = strlen(sun.sun_path) if strlen(sun.sun_path) < <size_t>n else n
        return PyUnicode_DecodeFSDefaultAndSize(sun.sun_path, n)
    if family == AF_NETLINK:
        return ((<sockaddr_nl *>ss).nl_pid, (<sockaddr_nl *>ss).nl_groups)   # as the socket module
    # Anything else: the raw (family, bytes) form, as socket.getaddrinfo would never give us.
    # (Not what socket.recvfrom() gives for it: datagram sockets of such families receive and
    # send with the socket's own methods instead -- see converts_sockaddr.)
    return (family, PyBytes_FromStringAndSize(<char *>ss, length))


cdef bint converts_sockaddr(int family) noexcept:
    """Whether sockaddr_to_python and python_to_sockaddr convert the addresses of `family` as
    the socket module does.  For any other family (AF_PACKET, AF_CAN, AF_TIPC, AF_BLUETOOTH...)
    only the socket object's own recvfrom()/sendto() give and take the addresses its users
    expect, so datagrams of those go through them (_datagram, _sockstate)."""
    return family == AF_INET or family == AF_INET6 or family == AF_UNIX or family == AF_NETLINK


cdef socklen_t python_to_sockaddr(object address, int family, sockaddr_storage *ss) except 0:
    """Fill `ss` from a Python address of `family`; return its length.  Hostnames are resolved
    synchronously, exactly as socket.sendto()/connect() would; the loop resolves beforehand where
    asyncio does (sock_connect)."""
    cdef sockaddr_in *sin
    cdef sockaddr_in6 *sin6
    cdef sockaddr_un *sun
    cdef bytes host, path
    cdef long port
    memset(ss, 0, sizeof(sockaddr_storage))
    if family == AF_UNIX:
        if isinstance(address, str):
            path = os.fsencode(address)
        elif isinstance(address, (bytes, bytearray, memoryview)):
            path = bytes(address)
        else:
            raise TypeError(f"a bytes-like object or str is required for an AF_UNIX address, "
                            f"not {type(address).__name__}")
        sun = <sockaddr_un *>ss
        # CPython's length: the path without its NUL (the kernel terminates a filesystem path
        # itself).  An empty path is then just the family -- connect() and sendto() refuse it
        # with EINVAL as they do for socket.connect('') -- not the abstract name b'\0'.
        if len(path) > <Py_ssize_t>sizeof(sun.sun_path) - (0 if path[:1] in (b'', b'\0') else 1):
            raise OSError("AF_UNIX path too long")
        sun.sun_family = AF_UNIX
        memcpy(sun.sun_path, <char *>path, len(path))
        return <socklen_t>(UL_SUN_PATH_OFFSET + len(path))
    if family == AF_NETLINK:
        # (pid, groups), both C unsigned ints, as socket.sendto() reads them.
        if not isinstance(address, tuple) or len(address) != 2:
            raise TypeError(f"sendto(): AF_NETLINK address must be tuple, not "
                            f"{type(address).__name__}")
        (<sockaddr_nl *>ss).nl_family = AF_NETLINK
        (<sockaddr_nl *>ss).nl_pid = <unsigned int>(_index(address[0]) & 0xffffffff)
        (<sockaddr_nl *>ss).nl_groups = <unsigned int>(_index(address[1]) & 0xffffffff)
        return sizeof(sockaddr_nl)
    if family != AF_INET and family != AF_INET6:
        raise OSError(EAFNOSUPPORT, f"address family {family} is not supported")
    if not isinstance(address, tuple):
        # (socket.sendto()'s messages, word for word.)
        raise TypeError(f"sendto(): {'AF_INET' if family == AF_INET else 'AF_INET6'} address "
                        f"must be tuple, not {type(address).__name__}")
    # The sizes socket.sendto()/connect() accept: a 4-tuple meant for AF_INET6 given to an
    # AF_INET socket is refused, not resolved as a hostname.
    if family == AF_INET and len(address) != 2:
        raise TypeError("AF_INET address must be a pair (host, port)")
    if family == AF_INET6 and not 2 <= len(address) <= 4:
        raise TypeError("AF_INET6 address must be a tuple (host, port[, flowinfo[, scopeid]])")
    host_obj, port_obj = address[0], address[1]
    # Any integer-like port (operator.index: a numpy integer...), as socket.sendto() takes it.
    port_number = _index(port_obj)
    if not 0 <= port_number <= 65535:
        raise OverflowError("sendto(): port must be 0-65535.")
    port = port_number
    if isinstance(host_obj, str):
        host = host_obj.encode('idna') if host_obj else b''
    elif isinstance(host_obj, (bytes, bytearray)):
        host = bytes(host_obj)
    else:
        raise TypeError(f"str, bytes or bytearray expected, not {type(host_obj).__name__}")
    if b'\0' in host:
        # inet_pton() would stop at the NUL and send to the address before it.
        raise TypeError("host name must not contain null character")
    if family == AF_INET:
        sin = <sockaddr_in *>ss
        sin.sin_family = AF_INET
        sin.sin_port = htons(<unsigned short>port)
        if host == b'' or host == b'<any>':
            return sizeof(sockaddr_in)
        if host == b'<broadcast>':
            sin.sin_addr.s_addr = 0xffffffff
            return sizeof(sockaddr_in)
        if inet_pton(AF_INET, host, &sin.sin_addr) != 1:
            info = _socket.getaddrinfo(host_obj, port, AF_INET)[0][4]
            inet_pton(AF_INET, info[0].encode('ascii'), &sin.sin_addr)
        return sizeof(sockaddr_in)
    sin6 = <sockaddr_in6 *>ss
    sin6.sin6_family = AF_INET6
    sin6.sin6_port = htons(<unsigned short>port)
    # CPython reads both as C unsigned ints without a range check (-1 is 0xffffffff), then
    # refuses a flowinfo of more than 20 bits.  (Only sendto comes here: sock_connect uses
    # socket.connect() itself.)
    if len(address) > 2:
        flowinfo = _index(address[2]) & 0xffffffff
        if flowinfo > 0xfffff:
            raise OverflowError("sendto(): flowinfo must be 0-1048575.")
        sin6.sin6_flowinfo = htonl(<unsigned int>flowinfo)
    if len(address) > 3:
        sin6.sin6_scope_id = <unsigned int>(_index(address[3]) & 0xffffffff)
    if host == b'':
        return sizeof(sockaddr_in6)
    if inet_pton(AF_INET6, host, &sin6.sin6_addr) != 1:
        # A name, or a literal with a scope ('fe80::1%eth0'): the address getaddrinfo() gives.
        # Its scope id is not kept: socket.sendto() sets the tuple's (0 when not given) over
        # the one the name resolved with, and the stock loop's datagrams go where its go.
        info = _socket.getaddrinfo(host_obj, port, AF_INET6)[0][4]
        inet_pton(AF_INET6, info[0].encode('ascii'), &sin6.sin6_addr)
    return sizeof(sockaddr_in6)
