# cython: language_level=3
"""The stream socket transport (TCP and AF_UNIX) on completions.

What the stock _SelectorSocketTransport does with readiness, this transport does with operations
the kernel completes, and the protocol sees the same sequence of calls.  SocketTransport is
built in layers, one concern each:

    SocketTransport (this module)  setup, addresses and get_extra_info(), the protocol switch,
                                   close/abort/connection_lost(), the completions' entry (op_done)
      ReceiveSide (_receiveside)   reading: receive operations, large reads, pause/resume and the
                                   stash, delivery to the protocol, the provided-buffer ring
        SendSide (_sendside)       writing: write(), writelines(), write_eof(), send operations
          WriteFlow (_flow)        write flow control, the loop, proactor and protocol fields

Each lower module's docstring tells its half's story: how completions become data_received() or
buffer_updated() calls (_receiveside), how writes become sends (_sendside).  The halves meet
here: op_done() hands each completion to its half, and a failure in either ends the transport
through fatal_error() and force_close().

Closing
-------
close() stops reading (cancels the receive) and lets queued writes finish; connection_lost()
follows through call_soon once they have, as with the stock transport.  abort() also cancels the
send in flight and drops the queue.  The socket is closed after connection_lost(); an operation
the kernel is still cancelling at that moment holds its own reference to the socket's file, so
the descriptor number may be reused at once without the old operation touching the new socket.
"""

from cpython.contextvars cimport PyContext_CopyCurrent
from libc.string cimport memcmp

from uringloop._sys cimport *
from uringloop._proactor cimport Proactor, Operation, os_error
from uringloop._transport_table cimport TransportTable
from uringloop._flow cimport add_socket_extra
from uringloop._sendside cimport spare_send_ops
from uringloop._receiveside cimport ReceiveSide, receive_buffers

import _socket as _c_socket
import socket as _socket
import sys
import warnings

from asyncio import base_events as _base_events
from asyncio import constants as _constants
from asyncio import futures as _futures
from asyncio import transports as _asyncio_transports
from asyncio import trsock as _trsock

from uringloop._sockio import (forget_socket as _forget_socket,
                               has_kept_leftovers as _has_kept_leftovers,
                               HANDOVER_PENDING as _HANDOVER_PENDING)

cdef extern from "<sys/socket.h>" nogil:
    int c_setsockopt "setsockopt"(int fd, int level, int name, const void *value,
                                  socklen_t length)
    int c_getsockname "getsockname"(int fd, sockaddr *addr, socklen_t *length)
    int c_getpeername "getpeername"(int fd, sockaddr *addr, socklen_t *length)

cdef extern from "<netinet/in.h>" nogil:
    int IPPROTO_TCP

cdef extern from "<netinet/tcp.h>" nogil:
    int TCP_NODELAY

cdef extern from "_instance_dict.h":
    void ul_drop_instance_dict(object o)   # the why and the measurements: there

cdef object _TransportSocket = _trsock.TransportSocket

# socket.socket's `family` and `type` convert to enums (two Python calls each, ~1.3 us per pair
# on this machine); the _socket base type's members are the plain ints.
cdef type _c_socket_type = _c_socket.socket
cdef type _py_socket_type = _socket.socket
cdef object _set_nodelay_py = _base_events._set_nodelay
cdef object _raw_family = _c_socket.socket.family.__get__
cdef object _raw_type = _c_socket.socket.type.__get__
cdef int _AF_INET = _socket.AF_INET
cdef int _AF_INET6 = _socket.AF_INET6
cdef int _SOCK_STREAM = _socket.SOCK_STREAM
cdef object _set_result_unless_cancelled = _futures._set_result_unless_cancelled
# Held here so that a transport finalized at interpreter shutdown can still warn.
cdef object _warn = warnings.warn
# Python 3.13's Server keeps a WeakSet of its transports: _attach(transport)/_detach(transport).
# Earlier versions count them: _attach()/_detach().
cdef bint _SERVER_TRACKS_TRANSPORTS = sys.version_info >= (3, 13)


cdef int set_nodelay(object sock, int fd) except -1:
    """asyncio.base_events._set_nodelay, the same test and the same error, without the enum
    conversions: TCP_NODELAY on an AF_INET/AF_INET6 SOCK_STREAM socket of protocol IPPROTO_TCP
    (a socket made with proto 0 is left alone, as stock leaves it)."""
    cdef int one = 1
    cdef int family
    if not isinstance(sock, _c_socket_type):
        _set_nodelay_py(sock)           # a socket-like object: what stock does with it
        return 0
    family = _raw_family(sock)
    if (family == _AF_INET or family == _AF_INET6) and _raw_type(sock) == _SOCK_STREAM \
            and sock.proto == IPPROTO_TCP:
        if c_setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0:
            err = errno
            raise os_error(err)
    return 0


cdef dict _NO_EXTRA = {}


# The addresses of the last transport made.  The connections of one server share its address
# and mostly a few peer hosts (a client's connections: the server's address), and socket
# methods build a fresh tuple and host string each time -- 150 B per connection.  A new address
# equal to the last one is replaced by it; one only sharing the host gets the held host string.
# Addresses are immutable, so sharing them cannot be observed (save by `is`).
cdef object _last_sockname = None
cdef object _last_peername = None


# An AF_INET socket's addresses are read with getsockname(2)/getpeername(2) here rather than by
# the socket's methods (two Python calls, each building a host string and a tuple): compared
# with the raw address of the last transport, an equal one is that transport's tuple, and only
# a new one is converted -- as the socket module converts it (inet_ntop, the port in host
# order).  IPv6 stays with the methods: the module writes a scope into the host ("fe80::1%eth0")
# through getnameinfo(3).  ~6k of the ~70k instructions of a loopback create_connection().
cdef sockaddr_in _last_sock_raw
cdef sockaddr_in _last_peer_raw
cdef object _last_inet_sockname = None      # the tuples those raw addresses were converted to
cdef object _last_inet_peername = None


cdef object _inet_address(int fd, bint peer, object last, sockaddr_in *last_raw):
    """The address of an AF_INET socket, as socket.getsockname() (peer: getpeername()) gives
    it, or `last` when it is the one last_raw holds (then the raw address of this one); None
    when the call fails, as those methods raise OSError."""
    cdef sockaddr_in sin
    cdef socklen_t length = sizeof(sin)
    cdef char text[16]
    cdef int rc
    if peer:
        rc = c_getpeername(fd, <sockaddr *>&sin, &length)
    else:
        rc = c_getsockname(fd, <sockaddr *>&sin, &length)
    if rc != 0 or length != sizeof(sin) or sin.sin_family != _AF_INET:
        return None
    if (last is not None and sin.sin_port == last_raw.sin_port
            and memcmp(&sin.sin_addr, &last_raw.sin_addr, sizeof(sin.sin_addr)) == 0):
        return last
    last_raw[0] = sin
    inet_ntop(_AF_INET, &sin.sin_addr, text, sizeof(text))
    return (text.decode('ascii'), ntohs(sin.sin_port))


cdef object _shared_address(object addr, object last):
    cdef tuple t
    if last is None or type(addr) is not type(last):
        return addr
    if addr == last:
        return last
    if type(addr) is tuple:
        t = <tuple>addr
        if (len(t) >= 2 and len(t) == len(<tuple>last) and type(t[0]) is str
                and t[0] == (<tuple>last)[0]):
            return ((<tuple>last)[0],) + t[1:]
    return addr


# ---------------------------------------------------------------------------------------------
# the transport
# ---------------------------------------------------------------------------------------------

# What isinstance() sees.  SocketTransport is an extension type, and an extension type cannot
# have asyncio.Transport (a Python class whose __slots__ add an instance field) among its bases:
# the two instance layouts conflict.  Yet code does check isinstance(transport, asyncio.Transport)
# -- CPython's own tests among it.  isinstance() falls back to the instance's __class__ attribute
# when type(obj) is not a subclass, so SocketTransport reports this stand-in, a real subclass of
# asyncio.Transport, as its __class__ (the mechanism unittest.mock's spec objects use).  type()
# still gives the extension type.  Nothing instantiates the stand-in.
class _SocketTransportFace(_asyncio_transports.Transport):
    __slots__ = ()

    def __new__(cls, *args, **kwargs):
        raise TypeError("uringloop transports are created by the event loop")

_SocketTransportFace.__name__ = _SocketTransportFace.__qualname__ = 'SocketTransport'


cdef class SocketTransport(ReceiveSide):
    """asyncio.Transport for a connected stream socket (what loop.create_connection,
    create_server, start_server, open_connection and connect_accepted_socket hand out)."""

    _start_tls_compatible = True

    @property
    def __class__(self):
        # See _SocketTransportFace.
        return _SocketTransportFace
    _sendfile_compatible = _constants._SendfileMode.TRY_NATIVE

    def __cinit__(self):
        # Attributes set on the transport and methods replaced on it (`transport.write = ...`,
        # mock.patch.object) live in an instance dict, made on the first set, not with every
        # transport (_instance_dict.h says why).
        ul_drop_instance_dict(self)

    def __init__(self, loop, sock, protocol, waiter=None, extra=None, server=None):
        self.setup(loop, sock, protocol, waiter, extra, None, server)

    cdef int setup(self, object loop, object sock, object protocol, object waiter, dict extra,
                   object peername, object server) except -1:
        # __init__, and what the server's accept path calls directly (peername: the address
        # accept() reported, or None to ask the socket).
        (<Proactor>loop._proactor).check_usable()
        # Looked up first: a protocol without connection_made() (a factory that returned None)
        # fails here, as at the stock transport's call_soon(), but before this object holds the
        # socket or is attached to a server -- the caller closes the socket, and no finalizer
        # warns of an unclosed transport that never was one.
        connection_made = protocol.connection_made
        self.init_flow(loop, protocol)
        if extra is None:
            # The usual case: the three entries every socket transport has are fields, not a
            # dict (a dict of three entries costs an idle connection ~180 B).
            # The socket itself until get_extra_info('socket') first asks (socket_extra()).
            self.socket_info = sock
            self.set_addresses(sock, peername)
        else:
            # A caller's dict gets the entries, as the stock transport adds them to it.
            self.extra = extra
            add_socket_extra(extra, sock)
        self.sock = sock
        self._sock_fd = sock.fileno()
        # A request is written into the SQ when it is made and the kernel looks its descriptor
        # up only at the iteration's io_uring_enter.  socket_gone() catches a socket closed
        # under the transport before anything is submitted, but not one closed after: a
        # write() or a re-armed receive, then -- in a later callback of the same pass -- the
        # socket's owner closes it and a new socket takes the lowest free number, this one.
        # The enter would then send our bytes to the new socket's peer, or hand its bytes to
        # our protocol.  So, as for sock_* requests, the Proactor looks again just before the
        # enter (StaleFdGuard) and fails such a request with EBADF -- for every socket but
        # those the loop made itself and never handed out (accepted by its servers, or made by
        # its create_connection()/create_unix_connection() for an address: `loop_socket`),
        # which nobody else holds to close.
        self.guards_fd = not (server is not None or loop._ul_loop_socket is sock)
        if loop._ul_loop_socket is sock:
            loop._ul_loop_socket = None
        self.set_protocol(protocol)
        self.server = server
        # Completions arrive outside any task; protocol callbacks run in this context, the one
        # the transport was made in (as the stock loop's reader handle would).
        self.context = PyContext_CopyCurrent()
        self.bufs = receive_buffers(loop, self.proactor)
        self.spare_sends = spare_send_ops(loop)
        if server is not None:
            try:
                if _SERVER_TRACKS_TRANSPORTS:
                    server._attach(self)
                else:
                    server._attach()
            except BaseException:
                # (A closed server asserts.)  Not attached, so never detached: on 3.13 the
                # finalizer's _detach() raised TypeError from the closed server's waiters.
                # Nor does it own the socket, which the caller closes (its finalizer warned).
                self.server = None
                self.sock = None
                raise
        table = loop._transports
        if type(table) is TransportTable:
            (<TransportTable>table).put(self._sock_fd, self)
        else:
            table[self._sock_fd] = self
        if self._sock_fd in loop._ul_sock_states or _has_kept_leftovers():
            # The socket was used with sock_* (sock_connect, typically) before the transport
            # took it over; its idle per-socket state must not outlive the handover.  Bytes a
            # cancelled sock_recv() left there come first (see _arm_first_receive) -- also
            # ones a closed loop kept for the socket (_sockio._kept).  With a receive of
            # sock_*'s still in the kernel, the transport receives nothing itself until that
            # one has ended and handed over what it got (_take_leftover).
            self.awaiting_leftover = True
            leftover = _forget_socket(loop, sock, self._sock_fd, self)
            if leftover is not _HANDOVER_PENDING:
                self.awaiting_leftover = False
                if leftover is not None:
                    self.stash = [leftover]

        # Disable Nagle: small writes go out without waiting for the peer's ACK (as stock).
        set_nodelay(sock, self._sock_fd)

        loop.call_soon(connection_made, self)
        # Reading starts only once connection_made() has run, then the waiter is woken.
        loop.call_soon(self._start_reading)
        if waiter is not None:
            loop.call_soon(_set_result_unless_cancelled, waiter, None)
        return 0

    cdef int set_addresses(self, object sock, object peername) except -1:
        global _last_sockname, _last_peername, _last_inet_sockname, _last_inet_peername
        cdef int fd
        if (type(sock) is _c_socket_type or type(sock) is _py_socket_type) \
                and _raw_family(sock) == _AF_INET:
            # (see _inet_address)
            fd = sock.fileno()
            self.sockname = _inet_address(fd, False, _last_inet_sockname, &_last_sock_raw)
            if self.sockname is not None:
                _last_inet_sockname = self.sockname
            if peername is None:
                peername = _inet_address(fd, True, _last_inet_peername, &_last_peer_raw)
                if peername is not None:
                    _last_inet_peername = peername
            else:
                peername = _last_peername = _shared_address(peername, _last_peername)
            self.peername = peername
            return 0
        try:
            sockname = _shared_address(sock.getsockname(), _last_sockname)
        except OSError:
            sockname = None
        else:
            _last_sockname = sockname
        if peername is None:
            try:
                peername = sock.getpeername()
            except OSError:
                pass
        if peername is not None:
            peername = _last_peername = _shared_address(peername, _last_peername)
        self.sockname = sockname
        self.peername = peername
        return 0

    def __repr__(self):
        info = [type(self).__name__]
        if self.sock is None:
            info.append('closed')
        elif self._closing:
            info.append('closing')
        info.append(f'fd={self._sock_fd}')
        if self.loop is not None and not self.loop.is_closed():
            if self.recv_op is not None and not self._paused:
                info.append('read=polling')
            else:
                info.append('read=idle')
            state = 'polling' if self.send_op is not None else 'idle'
            info.append(f'write=<{state}, bufsize={self.queued_bytes + self.inflight_bytes}>')
        return '<{}>'.format(' '.join(info))

    def __del__(self):
        if self.sock is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self.sock.close()
            if _SERVER_TRACKS_TRANSPORTS and self.server is not None:
                self.server._detach(self)

    # ---- attributes the stock transport exposes and asyncio itself reads ----

    @property
    def _loop(self):
        return self.loop

    @property
    def _sock(self):
        return self.sock

    @property
    def _protocol(self):
        return self.protocol

    @property
    def _server(self):
        return self.server

    @property
    def _extra(self):
        # The stock transport's dict, made on demand; from then on it is what get_extra_info()
        # answers from, so changes made to it are seen as the stock transport would see them.
        if self.extra is None:
            self.extra = {'socket': self.socket_extra(), 'sockname': self.sockname,
                          'peername': self.peername}
        return self.extra

    cdef object socket_extra(self):
        """get_extra_info('socket'): the asyncio.trsock.TransportSocket of the transport's
        socket, made the first time it is asked for (most connections never are: ~2k
        instructions, a Python-level __init__, and 48 bytes each saved) and the same object
        every time after."""
        if type(self.socket_info) is not _TransportSocket:
            self.socket_info = _TransportSocket(self.socket_info)
        return self.socket_info

    # ---- BaseTransport ----

    def get_extra_info(self, name, default=None):
        if self.extra is not None:
            return self.extra.get(name, default)
        if isinstance(name, str):
            if name == 'socket':
                return self.socket_extra()
            if name == 'sockname':
                return self.sockname
            if name == 'peername':
                return self.peername
        return _NO_EXTRA.get(name, default)    # raises for an unhashable name, as a dict does

    def is_closing(self):
        return self._closing

    def set_protocol(self, protocol):
        self.protocol = protocol
        self.protocol_connected = True
        self.note_protocol(protocol)

    def get_protocol(self):
        return self.protocol

    def close(self):
        if self._closing:
            return
        self._closing = True
        self.stop_receive()
        # Nothing in flight: the connection is lost now.  (A loop closed with bytes unsent --
        # its close drained the send, leaving them counted -- has nobody to send them; the
        # stock transport, whose buffer is not empty then, schedules nothing and raises
        # nothing, and neither does this one: a task's `finally: writer.close()` run when it
        # is collected after loop.close() gave 'Event loop is closed'.)
        if self.send_op is None and not (self.proactor.closing and self.write_buffer_size()):
            self.conn_lost += 1
            self.loop.call_soon(self._call_connection_lost, None)

    def abort(self):
        self.force_close(None)

    def _force_close(self, exc):
        self.force_close(exc)

    def _fatal_error(self, exc, message='Fatal error on transport'):
        self.fatal_error(exc, message)

    cdef int fatal_error(self, object exc, str message) except -1:
        self.report_fatal_error(exc, message, isinstance(exc, OSError))
        self.force_close(exc)
        return 0

    cdef int force_close(self, object exc) except -1:
        if self.conn_lost:
            return 0
        # Lost first: a send still in the Proactor's backlog completes inside cancel() below,
        # and its handler must find the transport lost (else it reports a fatal error, whose
        # force_close would schedule a second connection_lost()).
        self.conn_lost += 1
        if self.send_op is not None or self.write_q:
            self.write_q = None
            self.queued_bytes = 0
            self.inflight_bytes = 0
            if self.send_op is not None:
                self.send_op.cancel()     # its completion is ignored: _conn_lost is set
        if not self._closing:
            self._closing = True
            self.stop_receive()
        self.loop.call_soon(self._call_connection_lost, exc)
        return 0

    def _call_connection_lost(self, exc):
        try:
            if self.protocol_connected:
                self.protocol.connection_lost(exc)
        finally:
            # Anything still in the kernel was cancelled by close()/abort(); it keeps its own
            # reference to the socket's file, so closing the descriptor now is safe.
            if self.recv_op is not None:
                self.recv_op.cancel()
            if self.send_op is not None:
                self.send_op.cancel()
            if self._sendfile_sender is not None:
                # A loop.sendfile() in progress splices into a duplicate of our descriptor,
                # which would keep the connection open -- and sending -- after this close.
                self._sendfile_sender.abort(
                    ConnectionError("Connection was closed during sendfile"))
                self._sendfile_sender = None
            transports = self.loop._transports
            if type(transports) is TransportTable:
                (<TransportTable>transports).drop(self._sock_fd, self)
            elif transports.get(self._sock_fd) is self:
                del transports[self._sock_fd]
            self.sock.close()
            self.sock = None
            self.protocol = None
            self.feeds_stream_reader = False
            self.loop = None
            server = self.server
            if server is not None:
                if _SERVER_TRACKS_TRANSPORTS:
                    server._detach(self)
                else:
                    server._detach()
                self.server = None
        if self.empty_waiter is not None and not self.empty_waiter.done():
            self.empty_waiter.set_exception(ConnectionError("Connection is closed by peer"))

    cdef int op_done(self, Operation op, int res, unsigned flags) except -1:
        self.enter_context()
        try:
            if op is self.ms_op or op is self.single_op:
                self.recv_done(op, res, flags)
            elif op is self.poll_op:
                self.poll_done(res)
            else:
                self.send_done(op, res)
        except Exception as exc:
            # The loop's own work for the completion failed -- a protocol's exceptions are
            # reported where it is called -- which leaves this connection's state unknown: the
            # bytes received may be gone (no memory for the bytes object that was to hold them,
            # or for a StreamReader's buffer to grow), the next receive not armed.  The stock
            # reader's _read_ready() takes any exception of its recv() for a fatal error, and
            # so does this: reported, the connection closed, connection_lost(exc) -- not a
            # connection that went on with a hole in its bytes, or hung for good, with only
            # the Proactor's "Unhandled exception" in the log (found with RLIMIT_AS).
            self.fatal_error(exc, 'Fatal read error on socket transport'
                             if op is self.ms_op or op is self.single_op or op is self.poll_op
                             else 'Fatal write error on socket transport')
        finally:
            self.exit_context()
        return 0

    cdef int op_progress(self, Operation op, int res) except -1:
        if op is not self.send_op:
            return 0
        self.enter_context()
        try:
            self.send_progress(op, res)
        finally:
            self.exit_context()
        return 0
