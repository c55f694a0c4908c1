# cython: language_level=3
"""Socket addresses between Python and C, with the conventions of CPython's socket module: the
sockaddr a datagram arrived from or an accepted connection came from, as the tuple (or str,
bytes) socket.recvfrom()/accept() would give, and a Python address as the sockaddr
socket.sendto() would pass to the kernel -- for the operations that carry one (_ops: MsgOp,
AcceptOp, accept_nonblocking) and the datagram transports (_datagram)."""

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
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
    cdef bytes path
    cdef Py_buffer view
    memset(ss, 0, sizeof(sockaddr_storage))
    if family == AF_UNIX:
        # A str in the filesystem encoding, or anything with a contiguous buffer (an
        # array.array too), as socket.sendto() takes it -- and refuses with its words.
        if isinstance(address, str):
            path = os.fsencode(address)
        else:
            try:
                PyObject_GetBuffer(address, &view, PyBUF_SIMPLE)
            except TypeError:
                raise TypeError(f"a bytes-like object is required, not "
                                f"'{type(address).__name__}'") from None
            try:
                path = PyBytes_FromStringAndSize(<char *>view.buf, view.len)
            finally:
                PyBuffer_Release(&view)
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
    # Then, in socket.sendto()'s order (getsockaddrarg): the host converted, the port (and
    # flowinfo, scope id) made C integers, the host resolved, and only then the ranges checked
    # -- so an unknown name with a bad port is a gaierror (error_received() in a datagram
    # transport), not an OverflowError (fatal there).
    host = _host_bytes(address[0])
    # Any integer-like port (operator.index: a numpy integer...), as socket.sendto() takes it.
    port_number = _index(address[1])
    if not -0x80000000 <= port_number <= 0x7fffffff:        # not a C int
        raise OverflowError("sendto(): port must be 0-65535.")
    if family == AF_INET:
        sin = <sockaddr_in *>ss
        _resolve_host(host, AF_INET, <sockaddr *>sin, sizeof(sockaddr_in))
        if not 0 <= port_number <= 65535:
            raise OverflowError("sendto(): port must be 0-65535.")
        sin.sin_family = AF_INET
        sin.sin_port = htons(<unsigned short>port_number)
        return sizeof(sockaddr_in)
    # CPython reads flowinfo and the scope id as C unsigned ints without a range check (-1 is
    # 0xffffffff), then refuses a flowinfo of more than 20 bits.  (Only sendto comes here:
    # sock_connect uses socket.connect() itself.)
    flowinfo = _index(address[2]) & 0xffffffff if len(address) > 2 else 0
    scope_id = _index(address[3]) & 0xffffffff if len(address) > 3 else 0
    sin6 = <sockaddr_in6 *>ss
    _resolve_host(host, AF_INET6, <sockaddr *>sin6, sizeof(sockaddr_in6))
    if not 0 <= port_number <= 65535:
        raise OverflowError("sendto(): port must be 0-65535.")
    if flowinfo > 0xfffff:
        raise OverflowError("sendto(): flowinfo must be 0-1048575.")
    sin6.sin6_family = AF_INET6
    sin6.sin6_port = htons(<unsigned short>port_number)
    sin6.sin6_flowinfo = htonl(<unsigned int>flowinfo)
    # The tuple's scope id (0 when not given) over any a scoped name resolved with, as
    # socket.sendto() sets it: the stock loop's datagrams go where its go.
    sin6.sin6_scope_id = <unsigned int>scope_id
    return sizeof(sockaddr_in6)


cdef bytes _host_bytes(object host):
    """The host of an AF_INET/AF_INET6 address as socket.sendto() converts it (CPython's
    idna_converter): bytes and bytearray as they are, an ASCII str as it is -- 'foo..bar' is
    a name the resolver refuses (gaierror), not a label the idna codec refuses -- and any
    other str through the idna codec."""
    cdef bytes name
    if isinstance(host, str):
        if (<str>host).isascii():
            name = (<str>host).encode('ascii')
        else:
            try:
                name = (<str>host).encode('idna')
            except UnicodeError:
                raise TypeError("encoding of hostname failed") from None
    elif isinstance(host, (bytes, bytearray)):
        name = bytes(host)
    else:
        raise TypeError(f"str, bytes or bytearray expected, not {type(host).__name__}")
    if b'\0' in name:
        # inet_pton() would stop at the NUL and send to the address before it.
        raise TypeError("host name must not contain null character")
    return name


cdef int _resolve_host(bytes host, int family, sockaddr *sa, socklen_t size) except -1:
    """Fill the address part of `sa` (zeroed) from `host` as socket.sendto() does (CPython's
    setipaddr): '' is the wildcard address, '<broadcast>' the IPv4 broadcast address, a numeric
    address is parsed, anything else resolved with getaddrinfo() -- synchronously, as
    socket.sendto() resolves it."""
    cdef void *dest
    if family == AF_INET:
        dest = &(<sockaddr_in *>sa).sin_addr
    else:
        dest = &(<sockaddr_in6 *>sa).sin6_addr
    if host == b'':
        return 0            # INADDR_ANY / in6addr_any: all zeroes
    if host == b'<broadcast>':
        if family != AF_INET:
            raise OSError("address family mismatched")
        (<sockaddr_in *>sa).sin_addr.s_addr = 0xffffffff
        return 0
    # A literal with a scope ('fe80::1%eth0') goes to the resolver, which knows the interfaces.
    if (family == AF_INET or b'%' not in host) and inet_pton(family, host, dest) == 1:
        return 0
    info = _socket.getaddrinfo(host, None, family)[0][4]
    if inet_pton(family, info[0].split('%')[0].encode('ascii'), dest) != 1:
        raise OSError(EAFNOSUPPORT, f"unexpected address {info[0]!r} for {host!r}")
    return 0
