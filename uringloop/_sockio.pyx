# cython: language_level=3
"""loop.sock_*: the low-level socket API as io_uring operations.

The coroutine functions bound onto uringloop.Loop (sock_recv ... sock_connect), and the loop's
table of the sockets they were used on.  Each call finds or makes its socket's SocketState
(_state_for) and becomes a request on that state's queue; the state (_sockstate) submits the
requests, one operation per direction in the kernel at a time, and keeps what a request whose
caller had gone still brings -- how nothing is lost, in order, and how a closed socket's number
taken by a new socket is never reached, is told there.  Here: the table (a state per descriptor
number, checked against the socket object), the sweep that ends requests of sockets closed
under them (_retire, _sweep_closed_sockets), the hand-over of a socket to a transport
(forget_socket), and what each coroutine does before and after its request: arguments refused
as the stock loop refuses them, zero-length reads, the cancellation of a request whose awaiter
went away (_abandoned), sock_connect's resolution and its connect(2) at once.
"""

from uringloop._sys cimport (EBADF, EAGAIN, EINTR, EINPROGRESS, POLLOUT, pollfd, poll as c_poll,
                             F_GETFL, O_NONBLOCK, c_fcntl,
                             sockaddr, socklen_t, sockaddr_in, inet_pton, htons)
from libc.errno cimport errno, EALREADY
from libc.string cimport memset
from cpython.buffer cimport (PyObject_GetBuffer, PyBuffer_Release, PyBuffer_IsContiguous,
                             PyBUF_FULL_RO, PyBUF_SIMPLE)
from cpython.bytes cimport PyBytes_FromStringAndSize

from uringloop._proactor cimport Proactor, os_error
from uringloop._ops cimport unwritable_buffer_error
from uringloop._sched cimport LoopCore, ul_socket_fd
from uringloop._transport_table cimport TransportTable
from uringloop._sockstate cimport (Request, SocketState, K_RECV, K_RECV_INTO, K_RECVFROM,
                                   K_RECVFROM_INTO, K_SEND, K_SENDTO, K_ACCEPT, K_CONNECT,
                                   K_SEND_TURN, CONNECT_UNDER_WAY, CONNECT_FOUND_MADE)
from uringloop._sockstate import WOULD_BLOCK

import socket as _socket
import _socket as _socket_c
import weakref
from asyncio import base_events as _base_events
from asyncio import tasks as _tasks

cdef object _socket_type = _socket.socket
cdef object _check_ssl_socket = _base_events._check_ssl_socket
cdef int _MSG_DONTWAIT = _socket.MSG_DONTWAIT
cdef int AF_INET = _socket.AF_INET
cdef int AF_INET6 = _socket.AF_INET6
cdef int AF_UNIX = _socket.AF_UNIX
cdef object _WOULD_BLOCK = WOULD_BLOCK

cdef extern from "<sys/socket.h>" nogil:
    int c_connect "connect"(int fd, const sockaddr *addr, socklen_t addrlen)

cdef extern from "<string.h>" nogil:
    size_t strlen(const char *s)

cdef extern from "Python.h":
    const char *PyUnicode_AsUTF8AndSize(object unicode, Py_ssize_t *size) except NULL



# ---------------------------------------------------------------------------------------------
# the loop methods (bound onto uringloop.Loop)
#
# They are coroutine functions, as in asyncio: user code passes loop.sock_recv(...) to
# create_task(), gather() and wait_for(), which accept coroutines only.  The body runs when the
# coroutine is first awaited or the task first runs -- as in asyncio, that is when the request
# joins the socket's queue and when argument errors are raised.
# An argument the socket's own method would refuse (a negative size, a read-only buffer, data
# that is not bytes-like) is refused before the socket is looked at, as the stock loop's call
# of that method refuses it: sock_recv(closed_sock, -1) is a ValueError there, not EBADF.
# ---------------------------------------------------------------------------------------------

cdef int _socket_fd(loop, sock) except -2:
    """The checks every sock_* call makes first, in the stock loop's order -- an SSL socket
    refused (TypeError), then in debug mode a blocking socket (ValueError) -- and the socket's
    descriptor number, -1 once it is closed.  The arguments are checked after these, as the
    stock loop's first attempt, the socket's own method, checks them; a closed socket is
    refused (EBADF) only after that, by _state_for: a read of nothing from it is answered
    first, as the socket's method answers it (b'' or 0, without a system call)."""
    cdef int fd
    if type(sock) is _socket_type:
        fd = ul_socket_fd(sock)
    else:
        _check_ssl_socket(sock)
        fd = sock.fileno()
    if (<LoopCore?>loop)._debug and sock.gettimeout() != 0:
        raise ValueError("the socket must be non-blocking")
    return fd


cdef SocketState _state_for(loop, sock, int fd):
    # Reached on every sock_* call, after _socket_fd(): the loop's fields are read from its C
    # struct (LoopCore's), and an exact socket's number from the socket's -- no attribute
    # lookups, no fileno() call.
    cdef LoopCore core = <LoopCore?>loop
    cdef dict states = core._ul_sock_states
    cdef SocketState state
    if fd < 0:
        raise OSError(EBADF, 'Bad file descriptor')
    if fd in (<TransportTable?>core._transports).data:
        loop._ensure_fd_no_transport(fd)
    state = <SocketState>states.get(fd)
    if state is None or state.sock_ref() is not sock:
        if state is not None:
            _retire(states, state)
        proactor = <Proactor>loop._proactor
        proactor.check_usable()
        state = SocketState(loop, proactor, sock, fd)
        if _kept_by_closed_loops:
            leftovers = _take_kept(sock)
            if leftovers is not None:
                state.adopt(leftovers)
        states[fd] = state
    if core._ul_sock_sweep is None:
        core._ul_sock_sweep = loop.call_later(SWEEP_INTERVAL, _sweep_closed_sockets, loop)
    return state


# Sockets closed under requests still in the kernel
# -------------------------------------------------
# A request in the kernel holds a reference to its socket's file until it ends.  A program that
# closes a socket object while a sock_recv(), sock_accept() or sock_sendall() of its waits --
# a timeout written as "close it from another task", a shutdown path -- closes only the number:
# with the stock loop epoll forgets the file and the kernel closes the connection at once (the
# peer sees EOF, a closed listener's port is free again), but here the file stayed open for as
# long as the request waited, possibly forever: the peer never saw the close, clients still
# connected to the "closed" listener.  Nothing tells the loop about socket.close().  So while
# any sock_* state exists, a sweep every SWEEP_INTERVAL seconds looks for states whose socket
# object was closed (or collected) with requests in the kernel; those requests fail with EBADF
# -- what the socket's own methods raise once it is closed; the stock loop's caller would wait
# on forever -- and are cancelled in the kernel, which then lets go of the file.  The sweep
# runs SWEEP_INTERVAL seconds after a sock_* call, and again every SWEEP_INTERVAL seconds while
# requests wait (a server idle in sock_accept() wakes once a second for it); it stops when none
# waits, and the next sock_* call starts it again.  A sweep walks the sockets used with sock_*,
# and drops the state of those closed with nothing in flight.  (Not more often: each timer
# that ends a wait is a wake-up, and one that ends a wait the spin had been sized for shrinks
# its limit -- a first sweep after 0.1 s, doubling, kept the limit from growing in
# tests/test_spinning.py.)

cdef double SWEEP_INTERVAL = 1.0

# Keys of the states _retire() keeps: below every descriptor number.
cdef long _last_retired_key = 0


cdef int _retire(dict states, SocketState state) except -1:
    """`state` served a socket closed since, whose number another socket now has: it leaves
    that number.  With requests of its still in the kernel it stays in the table, under a key
    no descriptor has, for the sweep to find its socket closed and end them (EBADF, and the
    cancel that lets the kernel drop the closed file).  Dropped there, as it was once, their
    callers waited forever and the closed connection stayed open, its peer never seeing EOF."""
    global _last_retired_key
    del states[state.fd]
    if state.has_requests_in_kernel():
        _last_retired_key -= 1
        states[_last_retired_key] = state
    else:
        state.discard()
    return 0


def _sweep_closed_sockets(loop):
    cdef SocketState state
    cdef dict states = loop._ul_sock_states
    cdef bint waiting = False
    loop._ul_sock_sweep = None
    if loop.is_closed():
        return
    for fd, state in list(states.items()):
        if not state.has_requests_in_kernel():
            if state.socket_closed() and state.idle():
                del states[fd]
                state.discard()
        elif state.socket_closed():
            state.abandon_requests_in_kernel()
        else:
            waiting = True
    if waiting:
        loop._ul_sock_sweep = loop.call_later(SWEEP_INTERVAL, _sweep_closed_sockets, loop)


cdef int _abandoned(SocketState state, Request req) except -1:
    """The coroutine awaiting `req` was interrupted: its task cancelled (Task.cancel() has
    cancelled req.fut, and the CancelledError is now thrown in), or closed unfinished.

    A request whose future is cancelled is withdrawn: off its socket's queue, or cancelled in
    the kernel if it is there (the final CQE still comes back, and recv_done/accept_done keep
    whatever it brings for the next caller).  This runs when the task resumes, so the kernel's
    cancel follows the task's by one pass of the ready queue at most.

    The one window asyncio leaves open: the result was set (the kernel had completed) but the
    task was cancelled before it resumed, and the CancelledError would drop the bytes or the
    connection.  They go back to the front of the socket's stash for the next caller instead.
    (Each coroutine awaits its future itself rather than through a shared helper coroutine:
    one coroutine object less per call on the sock_* hot path.)"""
    cdef object fut = req.fut
    if not fut.done():
        # Not cancelled by its task: the coroutine is being closed (or had an exception thrown
        # in) while it waited.  After loop.close() -- a task still pending at close, destroyed
        # or closed afterwards -- there is nothing left to withdraw (the close ended every
        # kernel operation), and cancelling the future would schedule its task's wake-up on the
        # closed loop: RuntimeError out of coroutine.close(), where the stock loop's coroutine
        # closes quietly.
        if state.loop.is_closed():
            return 0
        fut.cancel()
    if fut.cancelled():
        state.request_cancelled(req)
    elif (fut.exception() is None and req.kind != K_SEND and req.kind != K_SENDTO
            and req.kind != K_CONNECT):
        state.give_back(req, fut.result())
    return 0


cdef object _read_nothing(SocketState state, object call, object arg, bint takes_message):
    """A read of zero bytes, made as the stock loop's first, non-blocking attempt makes it: by
    the socket's own method.  socket.recv(0) and recv_into() of an empty buffer return b'' and 0
    at once without a system call, whatever is waiting -- a zero-length receive submitted to
    the kernel would wait for data first.  recvfrom(0) and recvfrom_into() of an empty buffer
    (`takes_message`) do reach the kernel (a waiting datagram is taken; with nothing waiting
    they would block), and when they would block the request is queued like any other.  On a
    datagram socket only when no earlier receive is queued, to keep the order in which
    datagrams are taken; otherwise at once whatever is queued (as the stock loop: a zero-length
    read queued behind a waiting receive would otherwise wait for data it does not want, and
    on a datagram socket take a datagram it cannot hold)."""
    # A kept error (a cancelled receive's: see recv_done) goes to the read that would have met
    # it in the kernel: recvfrom() always asks the kernel; recv(0) not, for a connection's error.
    if takes_message:
        if (state.recv_q and not state.stream) or state.stash_exc is not None:
            return _WOULD_BLOCK
    elif state.kept_error_stops_empty_reads():
        return _WOULD_BLOCK
    try:
        return call(arg)
    except (BlockingIOError, InterruptedError):
        return _WOULD_BLOCK


# The sizes are converted inside the coroutines, not typed in their signatures: a size that is
# not an integer must raise its TypeError where the stock loop raises it -- when the coroutine
# runs -- and not when it is created (Cython converts typed arguments at the call).

async def sock_recv(self, sock, n):
    """Receive up to n bytes from sock (completion-based recv)."""
    cdef int fd = _socket_fd(self, sock)
    cdef Py_ssize_t size = n
    if size < 0:
        raise ValueError("negative buffersize in recv")
    if size == 0 and fd < 0:
        return sock.recv(0)
    cdef SocketState state = _state_for(self, sock, fd)
    if size == 0:
        result = _read_nothing(state, sock.recv, 0, False)
        if result is not _WOULD_BLOCK:
            return result
    cdef Request req = state.new_request(K_RECV)
    req.nbytes = size
    state.queue_recv(req)
    state.pump_recv()
    try:
        result = await req.fut
    except BaseException:
        _abandoned(state, req)
        raise
    state.claimed(req)
    return result


async def sock_recv_into(self, sock, buf):
    """Receive into buf; the kernel writes into it directly, and holds it until it is done."""
    cdef int fd = _socket_fd(self, sock)
    cdef Py_ssize_t size = _check_writable(buf, 'recv_into')
    if size == 0 and fd < 0:
        return sock.recv_into(buf)
    cdef SocketState state = _state_for(self, sock, fd)
    if size == 0:
        result = _read_nothing(state, sock.recv_into, buf, False)
        if result is not _WOULD_BLOCK:
            return result
    cdef Request req = state.new_request(K_RECV_INTO)
    req.buf = buf
    state.queue_recv(req)
    state.pump_recv()
    try:
        result = await req.fut
    except BaseException:
        _abandoned(state, req)
        raise
    state.claimed(req)
    return result


async def sock_recvfrom(self, sock, bufsize):
    cdef int fd = _socket_fd(self, sock)
    cdef Py_ssize_t size = bufsize
    if size < 0:
        raise ValueError("negative buffersize in recvfrom")
    cdef SocketState state = _state_for(self, sock, fd)
    if size == 0:
        result = _read_nothing(state, sock.recvfrom, 0, True)
        if result is not _WOULD_BLOCK:
            return result
    cdef Request req = state.new_request(K_RECVFROM)
    req.nbytes = size
    state.queue_recv(req)
    state.pump_recv()
    try:
        result = await req.fut
    except BaseException:
        _abandoned(state, req)
        raise
    state.claimed(req)
    return result


async def sock_recvfrom_into(self, sock, buf, nbytes=0):
    cdef int fd = _socket_fd(self, sock)
    if not nbytes:
        # The stock loop's reading of "no size": len(buf) -- items, not bytes, for an array
        # of wider items, as socket.recvfrom_into() is then told (and its TypeError first, for
        # an object without a length).
        nbytes = len(buf)
    cdef Py_ssize_t size = _check_writable(buf, 'recvfrom_into')
    cdef Py_ssize_t wanted = nbytes
    if wanted < 0:
        raise ValueError("negative buffersize in recvfrom_into")
    if wanted > size:
        raise ValueError("nbytes is greater than the length of the buffer")
    cdef SocketState state = _state_for(self, sock, fd)
    if size == 0:
        result = _read_nothing(state, sock.recvfrom_into, buf, True)
        if result is not _WOULD_BLOCK:
            return result
    cdef Request req = state.new_request(K_RECVFROM_INTO)
    req.buf = buf
    req.nbytes = wanted
    state.queue_recv(req)
    state.pump_recv()
    try:
        result = await req.fut
    except BaseException:
        _abandoned(state, req)
        raise
    state.claimed(req)
    return result


async def sock_sendall(self, sock, data):
    """Send every byte of data; partial completions continue inside the core."""
    cdef Request req
    cdef int fd = _socket_fd(self, sock)
    cdef Py_ssize_t size = _buffer_size(data)
    cdef SocketState state = _state_for(self, sock, fd)
    if size == 0 and state.stream:
        # Nothing to send, but the socket still answers for its state as the stock loop's
        # sock.send(b'') makes it: BrokenPipeError once shut down for writing or never
        # connected (ENOTCONN for AF_UNIX).  A send of nothing never waits.  (On a datagram or
        # seqpacket socket an empty send is an empty datagram: that one goes to the kernel.)
        # A connection's error a cancelled receive kept is told to it, as the kernel tells
        # the stock loop's send(b'') (see take_connection_error).
        exc = state.take_connection_error()
        if exc is not None:
            raise exc
        try:
            sock.send(data)
        except (BlockingIOError, InterruptedError):
            pass
        return None
    req = state.new_request(K_SEND)
    req.buf = _snapshot(data, size)
    state.queue_send(req)
    state.pump_send()
    try:
        return await req.fut
    except BaseException:
        _abandoned(state, req)
        raise


def take_send_turn(loop, sock):
    """The sending side of `sock` for a sock_sendfile(), once the sends queued before have gone
    (see SocketState.end_send_turn): (the turn, a future done when it comes).  Whatever
    happens, end_send_turn(turn) afterwards."""
    cdef SocketState state = _state_for(loop, sock, _socket_fd(loop, sock))
    cdef Request req = state.new_request(K_SEND_TURN)
    state.queue_send(req)
    state.pump_send()
    return req, req.fut


def end_send_turn(turn):
    (<Request?>turn).state.end_send_turn(<Request>turn)


async def sock_sendto(self, sock, data, address):
    cdef int fd = _socket_fd(self, sock)
    cdef Py_ssize_t size = _buffer_size(data)   # TypeError as socket.sendto() words it
    if address is None:
        # MsgOp takes None as "no address" (a connected datagram transport's sendto); sendto(2)
        # through the stock loop refuses it before anything is sent.
        raise TypeError("sock_sendto() address must be an address for the socket's family, "
                        "not None (for a connected socket use sock_sendall())")
    cdef SocketState state = _state_for(self, sock, fd)
    if (state.family != AF_INET and state.family != AF_INET6 and state.family != AF_UNIX
            and state.send_op is None and not state.send_q):
        # A family other than IP and unix (AF_NETLINK, AF_PACKET...): the socket's own sendto(),
        # at once, as the stock loop's first attempt, without a request.  (Should it not take
        # the datagram, the request below waits for room and tries it again: sendto_now.)
        try:
            return sock.sendto(data, _MSG_DONTWAIT, address)
        except (BlockingIOError, InterruptedError):
            pass
    cdef Request req = state.new_request(K_SENDTO)
    req.buf = _snapshot(data, size)
    req.address = address
    state.queue_send(req)
    state.pump_send()
    try:
        return await req.fut
    except BaseException:
        _abandoned(state, req)
        raise


async def sock_accept(self, sock):
    """Accept a connection: (conn, address), conn non-blocking, as with the stock loop."""
    cdef SocketState state = _state_for(self, sock, _socket_fd(self, sock))
    cdef Request req = state.new_request(K_ACCEPT)
    state.queue_accept(req)
    state.pump_accept()
    try:
        return await req.fut
    except BaseException:
        _abandoned(state, req)
        raise


# sock_connect resolves the address as the stock loop does -- through loop._ensure_resolved(),
# which answers at once for an address that is already numeric (base_events._ipaddr_info) and
# otherwise asks getaddrinfo() in the executor.  The numeric case is nearly every call (a
# create_connection() has resolved the host already and passes the address it got), and costs
# the stock path two Python coroutines, _ipaddr_info's checks and five enum conversions of the
# socket's family and type (~5 us per connect here, measured).  For the commonest form of it --
# an IPv4 socket, an exact (str, int) pair, a host inet_pton(3) reads -- _ipaddr_info's answer
# is the address itself, unchanged, and the check below gives it without the calls.  Anything
# else (IPv6 with its flowinfo and scope id, a port given as a string, bytes hosts, another
# protocol, a replaced _ensure_resolved or _ipaddr_info) goes the stock way.

# _socket.socket, the C type socket.socket subclasses: its family/type/proto are plain ints
# there (socket.socket's properties convert them to enums in Python).
cdef object _socket_base = _socket_c.socket
cdef object _family_of = _socket_base.__dict__['family'].__get__
cdef object _type_of = _socket_base.__dict__['type'].__get__
cdef object _proto_of = _socket_base.__dict__['proto'].__get__
cdef object _original_ensure_resolved = _base_events.BaseEventLoop._ensure_resolved
cdef object _original_ipaddr_info = _base_events._ipaddr_info
cdef str _NAME_ENSURE_RESOLVED = '_ensure_resolved'
cdef int _SOCK_STREAM = _socket.SOCK_STREAM
cdef int _SOCK_DGRAM = _socket.SOCK_DGRAM
cdef int _IPPROTO_TCP = _socket.IPPROTO_TCP
cdef int _IPPROTO_UDP = _socket.IPPROTO_UDP


cdef bint _already_resolved(loop, sock, address) except -1:
    """_ensure_resolved(address) would answer [(..., address)] for this IPv4 socket at once:
    address is an exact (str, int) pair with an IPv4 literal for its host, on a socket object
    (not a wrapper) of type stream or datagram and protocol 0, TCP or UDP, and neither
    _ensure_resolved nor _ipaddr_info has been replaced (a test's mock must see its call)."""
    cdef int kind, proto
    if not isinstance(sock, _socket_base):
        return False          # a socket-like wrapper: its type and proto only as attributes
    if type(address) is not tuple or len(address) != 2:
        return False
    host_obj = address[0]
    if type(host_obj) is not str or type(address[1]) is not int:
        return False
    kind = _type_of(sock)
    proto = _proto_of(sock)
    if (kind != _SOCK_STREAM and kind != _SOCK_DGRAM) or (
            proto != 0 and proto != _IPPROTO_TCP and proto != _IPPROTO_UDP):
        return False
    if (not stock_method(loop, _NAME_ENSURE_RESOLVED, _original_ensure_resolved)
            or _base_events._ipaddr_info is not _original_ipaddr_info):
        return False
    return is_ipv4_literal(host_obj)


cpdef bint stock_method(object loop, str name, object original) except -1:
    """loop.<name> is `original` (BaseEventLoop's): neither its class nor the instance replaced
    it (a test's mock, an instrumented subclass), so a short path may stand in for its call."""
    return getattr(type(loop), name, None) is original and name not in loop.__dict__


cpdef bint is_ipv4_literal(object host_obj) except -1:
    """host_obj is a str that inet_pton(AF_INET) reads (what base_events._ipaddr_info tries
    first): False for anything else, without raising."""
    cdef const char *host
    cdef Py_ssize_t size
    cdef unsigned char packed[16]
    if type(host_obj) is not str:
        return False
    try:
        host = PyUnicode_AsUTF8AndSize(host_obj, &size)
    except UnicodeError:
        return False          # a lone surrogate: the stock path raises what it raises
    if <Py_ssize_t>strlen(host) != size:
        return False          # an embedded NUL: socket.inet_pton() raises ValueError there
    return inet_pton(AF_INET, host, packed) == 1


async def sock_connect(self, sock, address):
    """Connect sock to address: connect(2) at once and, while the connection is under way, a
    poll on the ring for its outcome (see SocketState.start_connect)."""
    cdef SocketState state
    cdef Request req
    cdef int family, settled
    cdef bint under_way = False
    _socket_fd(self, sock)
    family = _family_of(sock) if isinstance(sock, _socket_base) else sock.family
    if family == AF_INET or (family == AF_INET6 and _base_events._HAS_IPv6):
        if family != AF_INET or not _already_resolved(self, sock, address):
            resolved = await self._ensure_resolved(
                address, family=sock.family, type=sock.type, proto=sock.proto, loop=self)
            _, _, _, _, address = resolved[0]
        else:
            settled = _connect_at_once(self, sock, address, &under_way)
            if settled == CONNECT_FOUND_MADE:
                # connect(2) said EINPROGRESS and the connection turned out made (a loopback
                # handshake, see SocketState.start_connect).  The stock loop resumes its caller
                # only from the writer callback an iteration later, and that pause is what lets
                # the rest of the loop run meanwhile -- a server of this same loop accepting
                # the connection, above all.  Returned at once, a coroutine connecting again
                # and again filled the listener's queue before the server's accept could run:
                # with a backlog of 1, every other connect then waited out the client's SYN
                # retransmission, ~1 s.  So the caller yields once, as it would have.
                await _tasks.sleep(0)
                return None
            if settled:
                return None         # connect(2) itself made it: as on the stock loop, no pause
    # (Looked up again: the socket may have been closed while the address was resolved.)
    state = _state_for(self, sock, _socket_fd(self, sock))
    req = state.new_request(K_CONNECT)
    req.address = address
    if under_way:
        req.nbytes = CONNECT_UNDER_WAY
    state.queue_send(req)
    state.pump_send()
    try:
        await req.fut
    except BaseException:
        _abandoned(state, req)
        raise
    if req.nbytes == CONNECT_FOUND_MADE:
        await _tasks.sleep(0)       # made by the time connect(2) returned: as above
    return None


# A TCP (or UDP) connect to an IPv4 literal on a socket with no sock_* state yet -- every
# create_connection() to an address, the common case by far -- is made here with connect(2) itself
# on a sockaddr_in of our own, not with the socket's connect() method: that method reports the
# usual outcome, EINPROGRESS, by raising BlockingIOError, and raising it (strerror() and its
# decoding, the exception object, the traceback entry Cython adds before the except clause
# matches) was about a tenth of the instructions of a whole loopback create_connection().  The
# address is what the method would have made of it: _already_resolved() checked an exact
# (str, int) pair whose host inet_pton(AF_INET) reads, which is how socket.connect() converts
# such a host too; a port out of range is left to the method, for its OverflowError.  Errors
# are raised as the method raises them, OSError(errno, strerror(errno)) (its subclass by
# errno); the outcomes are those of SocketState.start_connect.  A socket already known to
# sock_* (a request may be queued on it), with a timeout, in blocking mode, or closed, takes the
# general path.

cdef int _connect_at_once(object loop, object sock, tuple address, bint *under_way) except -1:
    """1 when connect(2) made the connection, CONNECT_FOUND_MADE when it said it was under way
    and a poll with no timeout found it made; 0 with *under_way set when it is under way and
    needs waiting for; 0 with *under_way clear when it was not tried (the general path
    connects).  Raises what socket.connect() would raise for an error connect(2) reports at
    once."""
    cdef sockaddr_in sin
    cdef pollfd pfd
    cdef int fd, err
    cdef Py_ssize_t size
    cdef object port_obj = address[1]
    cdef long port
    under_way[0] = False
    if port_obj < 0 or port_obj > 0xffff:
        return 0
    port = port_obj
    if sock.timeout != 0.0:
        return 0              # a timeout: socket.connect() itself waits up to it, as stock
    fd = sock.fileno()
    if fd < 0 or fd in (<dict>loop._ul_sock_states) or fd in loop._transports.data:
        return 0
    if not (c_fcntl(fd, F_GETFL) & O_NONBLOCK):
        return 0
    (<Proactor>loop._proactor).check_usable()
    memset(&sin, 0, sizeof(sin))
    sin.sin_family = AF_INET
    sin.sin_port = htons(<unsigned short>port)
    if inet_pton(AF_INET, PyUnicode_AsUTF8AndSize(address[0], &size), &sin.sin_addr) != 1:
        return 0
    if c_connect(fd, <sockaddr *>&sin, sizeof(sin)) == 0:
        return 1
    err = errno
    if err == EINPROGRESS:
        pfd.fd = fd
        pfd.events = POLLOUT
        pfd.revents = 0
        if c_poll(&pfd, 1, 0) == 1 and pfd.revents == POLLOUT:
            return CONNECT_FOUND_MADE     # connected already (see SocketState.start_connect)
    elif err != EAGAIN and err != EALREADY and err != EINTR:
        raise os_error(err)
    under_way[0] = True
    return 0


HANDOVER_PENDING = object()


def forget_socket(self, sock, int fd, transport=None):
    """Drop the sock_* state of fd if it has nothing in flight (called when a transport takes
    over the socket object `sock`), and return the stream bytes a cancelled sock_recv*() left in
    it, which the transport delivers before anything it receives itself (the stock loop would
    have left them in the socket), or None.

    With a receive of ours still in the kernel -- a cancelled sock_recv() whose task has not
    yet run to withdraw it, typically (create_connection(sock=) right after task.cancel()) --
    the state cannot go yet: that receive may still complete with the peer's first bytes, and
    a receive of the transport's own beside it could take the bytes after them.  The stream
    `transport` is then told to wait (HANDOVER_PENDING is returned, and the receive is
    cancelled: nobody but the transport may read the socket now); at the receive's final
    completion, hand_over() gives it what was left, bytes and error, and it starts receiving.
    (Those bytes were lost before: kept for a next sock_* caller who never came.)

    Only a state of that very socket object hands anything over.  One kept under the number
    for a socket closed since (its state outlives it until the number is used again) belonged
    to another connection: its bytes were handed to the new connection's protocol as if its
    peer had sent them.  It is discarded, as _state_for() discards it."""
    cdef dict states = self._ul_sock_states
    cdef SocketState state = states.get(fd)
    cdef object leftover = None
    if state is not None and state.sock_ref() is not sock:
        _retire(states, state)
        return None
    if state is None and _kept_by_closed_loops:
        # No sock_* call on this loop yet, but a closed loop kept bytes for the socket.
        kept = _take_kept(sock)
        if kept is not None and kept[0]:
            return kept[0]
    if state is not None and state.idle():
        del states[fd]
        if state.stream and state.stash:
            leftover = bytes(state.stash)
        state.discard()
    elif (state is not None and transport is not None and state.stream
            and state.recv_op is not None):
        state.handover = transport
        state.recv_op.cancel()
        return HANDOVER_PENDING
    return leftover


# What the sock_* requests of a closed loop received for callers that had gone -- bytes, an
# error, datagrams -- kept for the socket's next loop, whose first sock_* call (or transport)
# gets them first.  The stock loop made no receive for a caller that had gone: what it would
# have received is still in the socket when the program goes on with another loop (asyncio.run()
# of a wait_for(sock_recv()) that timed out, then another asyncio.run() on the same socket), and
# the "nothing is lost" rule holds across loops too.  Keyed weakly by the socket object: a
# socket collected takes its leftovers with it.  (_kept_by_closed_loops counts the entries, so
# that a new state pays a C comparison, not a dictionary's length, while there are none.)
cdef object _kept = weakref.WeakKeyDictionary()
cdef Py_ssize_t _kept_by_closed_loops = 0


def has_kept_leftovers():
    """Whether a closed loop kept anything for a socket (a transport taking a socket asks)."""
    return _kept_by_closed_loops != 0


cdef object _take_kept(object sock):
    global _kept_by_closed_loops
    try:
        leftovers = _kept.pop(sock, None)
    except TypeError:
        return None             # not weakly referenceable: never stored
    _kept_by_closed_loops = len(_kept)
    return leftovers


def forget_all_sockets(self):
    """Loop.close(), once the Proactor has drained: drop every socket's sock_* state.  What a
    caller that had gone left is kept for the socket's next loop (_kept, above) while the
    socket is open.  The connections accepted for callers that had gone are closed -- nobody
    can take them any more, and their clients would otherwise wait on them for as long as the
    process lives."""
    global _kept_by_closed_loops
    cdef dict states = self._ul_sock_states
    cdef SocketState state
    for state in list(states.values()):
        leftovers = state.leftovers()
        sock = state.sock_ref()
        if leftovers is not None and sock is not None and sock.fileno() == state.fd:
            try:
                _kept[sock] = leftovers
            except TypeError:
                pass            # a socket-like object without weak references: dropped
            _kept_by_closed_loops = len(_kept)
        state.discard()
    states.clear()
    self._ul_sock_sweep = None      # a timer the close drops, which refers back to the loop


# The buffer checks of sock_recv_into/sock_recvfrom_into and sock_sendall: what memoryview(buf)
# would tell (the same PyBUF_FULL_RO request), without making the memoryview and reading three
# of its attributes -- ~1,200 instructions of the ~37,000 a sock_* round trip took in the loop.

cdef inline Py_ssize_t _buffer_size(data) except -1:
    """The size in bytes of a bytes-like object; TypeError (as socket.send() raises it) for
    anything else."""
    cdef Py_buffer view
    cdef Py_ssize_t size
    PyObject_GetBuffer(data, &view, PyBUF_FULL_RO)
    size = view.len
    PyBuffer_Release(&view)
    return size


# Up to how many bytes sock_sendall() and sock_sendto() copy a mutable buffer at the call.
cdef Py_ssize_t SNAPSHOT_MAX = 256 * 1024


cdef object _snapshot(object data, Py_ssize_t size):
    """What a send request lends the kernel for `data`: a copy made now of a mutable buffer
    (bytearray, a view of one, array, mmap...) of up to SNAPSHOT_MAX bytes, else `data`.

    Why: the stock loop's sock_sendall() and sock_sendto() send at once, before the caller's
    task can suspend, so the bytes that leave are those the buffer held at the call -- up to
    what the socket takes at once (its send buffer: a datagram whole, a stream's first few
    hundred KiB); only the rest is read from the caller's buffer later.  The kernel reads a
    request's buffer at the loop's next io_uring_enter, after every callback of the pass, so
    tasks that fill one scratch buffer in turn and each await a send of it (gather) all sent
    the last one's bytes, and a send left to a background task sent what the buffer held by
    then.  A copy also leaves the caller's buffer free at once: a task whose send was
    cancelled may resize it.  Larger buffers are lent, as the stock loop reads the rest of
    them later."""
    cdef Py_buffer view
    if type(data) is bytes or size > SNAPSHOT_MAX:
        return data
    if type(data) is memoryview and (<memoryview>data).readonly \
            and type((<memoryview>data).obj) is bytes:
        return data
    try:
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    except BufferError:
        return data         # not contiguous: refused later, in the stock loop's words
    try:
        return PyBytes_FromStringAndSize(<char *>view.buf, view.len)
    finally:
        PyBuffer_Release(&view)


cdef inline Py_ssize_t _check_writable(buf, str method) except -1:
    """The size in bytes of a buffer the kernel may write into; for any other, the TypeError
    the socket's `method` (recv_into, recvfrom_into) raises, with its message."""
    cdef Py_buffer view
    cdef Py_ssize_t size = -1
    try:
        PyObject_GetBuffer(buf, &view, PyBUF_FULL_RO)
    except TypeError:
        pass
    else:
        if not view.readonly and PyBuffer_IsContiguous(&view, c'C'):
            size = view.len
        PyBuffer_Release(&view)
    if size < 0:
        raise unwritable_buffer_error(buf, method)
    return size
