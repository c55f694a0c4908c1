# cython: language_level=3
"""The state of one socket used with loop.sock_*: its queues of requests and the operations they
put in the kernel (the coroutines themselves, and the loop's table of these states: _sockio).

Every sock_* call becomes one request on a per-socket queue, served in FIFO order, with at most one
operation per direction (receive, send, accept) in the kernel at a time.  The queues exist for the
Proactor's "nothing is lost" rule:

  * A receive or accept whose awaiter is cancelled (asyncio.wait_for timing out, a task being
    cancelled) is cancelled in the kernel with ASYNC_CANCEL as the awaiting coroutine takes the
    CancelledError (_sockio._abandoned) -- but the kernel may already have completed it.
    Whatever its final CQE carries (bytes, a datagram, a connection, an error) is kept on the
    socket's state and handed to the next caller on that socket, in order -- on the socket's
    next loop too, if this one closes first (leftovers/adopt, _sockio._kept; connections are
    the exception: they close with the loop).
  * A later request never overtakes an earlier operation that is still in the kernel (even an
    orphaned one): it waits for that operation's final CQE, so bytes cannot be reordered.
  * A send continues after partial completions inside the core (SendOp) until every byte is out.

Datagram and seqpacket sockets are the exception on the receiving side: there a receive waits
with a poll on the ring and is made inline, by the socket's own method, for a caller still
waiting (receive_now) -- a message the kernel had cut to a cancelled caller's size could not
be handed on whole.

sock_connect connects as the stock loop does -- connect(2) at once, then a poll for the outcome
(start_connect) -- so that errors the kernel reports at once are raised as socket.connect()
raises them.

The state of a socket is keyed by its fd and checked against the socket object itself (a weak
reference), so a new socket that reuses a closed socket's fd number starts clean; an operation
still in flight for the old socket holds the old *file* in the kernel and reports to the old state
object, never to the new one (which stays in the table under another key until the sweep has
ended that operation: _sockio._retire).  What was queued behind it is never submitted once the
old socket is closed -- by number it would reach the new socket -- but fails with EBADF, as the
closed socket's own methods fail (socket_closed; SendOp does the same for the rest of a partial
send).
Connections accepted for callers that had gone are closed with the loop if nobody took them.

The same holds for a request made in the pass of the ready queue in which another callback
closes its socket and makes or accepts a new one (which takes the lowest free number: very
likely this one).  The request is written into the ring when it is made, and the kernel reads
its descriptor number only at the iteration's io_uring_enter: it would reach the new socket --
a receive taking its bytes, a send writing to its peer.  socket.close() tells the loop nothing,
so every operation submitted here is marked (guards_fd) and the Proactor looks again just
before the enter: one whose socket no longer has the number is failed by the kernel with EBADF
(_proactor.StaleFdGuard).  The cheaper-looking alternatives do not hold: a dup() per request is a
system call per request; one per socket keeps the connection open after close() until the loop
notices; a fixed-file slot per socket holds the file as that dup would, and costs a
registration; holding the socket's _io_refs (as makefile() does) keeps fileno() valid after
close(), which programs and libraries read as "still open".
"""

cimport cython
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from uringloop._sys cimport (ECANCELED, EBADF, EAGAIN, EINTR, EINPROGRESS, POLLIN, POLLOUT,
                             pollfd, poll as c_poll, F_GETFL, O_NONBLOCK, c_fcntl)

from uringloop._proactor cimport Proactor, Completer, Operation, OP_IDLE, os_error
from uringloop._ops cimport (BufferOp, RecvOp, SendOp, MsgOp, AcceptOp, ConnectOp, PollOp, DelayOp,
                             accept_nonblocking)
from uringloop._sockaddr cimport converts_sockaddr

import collections
import errno
import os
import socket as _socket
import _socket as _socket_c
import weakref
from asyncio import futures as _futures

cdef object _Future = _futures.Future
cdef object _deque = collections.deque
# The Future's methods, and deque's append, called unbound on the exact objects made here (the
# requests' futures are exactly asyncio.Future, see new_request; the queues exactly deques):
# no method lookup through the type, and no bound method, on every request and completion.
cdef object _future_done = _Future.done
cdef object _future_set_result = _Future.set_result
cdef object _future_set_exception = _Future.set_exception
cdef object _deque_append = _deque.append


cdef inline bint _done(object fut) except -1:
    return _future_done(fut)


cdef inline int _set_result(object fut, object value) except -1:
    _future_set_result(fut, value)
    return 0


cdef inline int _set_exception(object fut, object exc) except -1:
    _future_set_exception(fut, exc)
    return 0


cdef object _ref = weakref.ref
cdef object _socket_type = _socket.socket
cdef int _MSG_DONTWAIT = _socket.MSG_DONTWAIT
cdef int AF_UNIX = _socket.AF_UNIX
cdef int _SOCK_STREAM = _socket.SOCK_STREAM
# _socket.socket, the C type socket.socket subclasses: its family and type are plain ints there
# (socket.socket's properties convert them to enums in Python).
cdef object _socket_base = _socket_c.socket
cdef object _family_of = _socket_base.__dict__['family'].__get__
cdef object _type_of = _socket_base.__dict__['type'].__get__

cdef extern from "<sys/socket.h>" nogil:
    int SOCK_NONBLOCK


# What a request made at once by the socket's own method returns when that method would block
# (receive_now, accept_now; _sockio's zero-length reads): the request then waits in its queue.
WOULD_BLOCK = object()
cdef object _WOULD_BLOCK = WOULD_BLOCK


@cython.final
@cython.freelist(64)
cdef class Request:
    """One sock_* call on a socket's queue: its future, kind, buffer or data, size and
    address (the fields: _sockstate.pxd)."""


cdef bint _asked_for_bytes(Request req) except -1:
    """Whether a receive asked for at least one byte (so that nothing back is the stream's end,
    not the answer to a read of zero bytes)."""
    if req.kind == K_RECV or req.kind == K_RECVFROM:
        return req.nbytes > 0
    room = len(memoryview(req.buf).cast('B'))
    return room > 0 if req.nbytes == 0 else req.nbytes > 0 and room > 0


cdef tuple _CONNECTION_ERRNOS = (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN,
                                 errno.ENETDOWN, errno.EPROTO)


cdef bint _reported_once(object exc):
    """Whether `exc`, kept from a stream socket's receive, is the connection's pending error
    (the kernel's sk_err: told to one call, then gone) rather than a refusal every call would
    get (EBADF, ENOTCONN, EINVAL...)."""
    return isinstance(exc, (ConnectionError, TimeoutError)) or (
        isinstance(exc, OSError) and exc.errno in _CONNECTION_ERRNOS)


@cython.final
cdef class SocketState(Completer):
    def __init__(self, loop, Proactor proactor, sock, int fd):
        self.loop = loop
        self.proactor = proactor
        self.sock_ref = _ref(sock)
        self.fd = fd
        if isinstance(sock, _socket_base):
            # The ints themselves: socket.socket's family and type properties convert them to
            # enums in Python (~0.5 us each).
            self.family = _family_of(sock)
            self.stream = _type_of(sock) == _SOCK_STREAM
        else:
            self.family = sock.family
            self.stream = sock.type == _socket.SOCK_STREAM
        self.stash = bytearray()
        # The queues (recv_q, send_q, accept_q) and the stashes of datagrams and connections
        # (dgram_stash, accepted) are made when first needed: most sockets use one direction or
        # two, and an empty deque is 760 bytes: five of them made ~4.5 KB per socket ever used
        # with sock_* (a socketpair after one send and one receive: 9.2 KB, now 2.9 KB; the stock
        # loop and uvloop keep nothing).  None is falsy where they are tested.

    cdef int queue_recv(self, Request req) except -1:
        if self.recv_q is None:
            self.recv_q = _deque()
        _deque_append(self.recv_q, req)
        return 0

    cdef int queue_send(self, Request req) except -1:
        if self.send_q is None:
            self.send_q = _deque()
        _deque_append(self.send_q, req)
        return 0

    cdef int end_send_turn(self, Request req) except -1:
        """A K_SEND_TURN's holder is done with the sending side -- or gave up waiting for it:
        the sends queued behind go ahead.

        sock_sendfile() splices into the socket from its own operations, outside this queue;
        so that its bytes and those of a sock_sendall() (or another sock_sendfile()) on the same
        socket do not interleave -- they did, 1 MiB at a time -- it queues a turn here, as a
        send would, waits until the turn comes (its future's result), sends, and ends the turn
        (_sockio.take_send_turn / end_send_turn)."""
        if self.send_turn is req:
            self.send_turn = None
            if not self.proactor.closing:
                self.pump_send()
        elif self.send_q is not None:
            try:
                self.send_q.remove(req)
            except ValueError:
                pass
        return 0

    cdef int claimed(self, Request req) except -1:
        """The coroutine of `req` has resumed with its result: the next receive may be
        served."""
        if self.unclaimed is req:
            self.unclaimed = None
            if self.recv_q:
                self.pump_recv()
        return 0

    cdef int queue_accept(self, Request req) except -1:
        if self.accept_q is None:
            self.accept_q = _deque()
        _deque_append(self.accept_q, req)
        return 0

    cdef object datagram_stash(self):
        if self.dgram_stash is None:
            self.dgram_stash = _deque()
        return self.dgram_stash

    cdef object accepted_stash(self):
        if self.accepted is None:
            self.accepted = _deque()
        return self.accepted

    cdef bint idle(self):
        return (not self.has_requests_in_kernel() and self.send_turn is None
                and not self.recv_q and not self.accept_q and not self.send_q)

    cdef bint has_requests_in_kernel(self):
        return self.recv_op is not None or self.accept_op is not None or self.send_op is not None

    cdef bint socket_closed(self) except -1:
        """Whether the socket this state serves has been closed (or collected): its fd number
        may name another socket by now, for which nothing may be submitted (see _proactor: closed
        under a request).  Asked before each request a queue sends to the kernel -- queued
        requests go there from completion handlers, long after the call that checked the
        socket."""
        cdef object sock = self.sock_ref()
        return sock is None or sock.fileno() != self.fd

    cdef int abandon_requests_in_kernel(self) except -1:
        """The socket object was closed with requests of its in the kernel (see the sweep,
        _sockio._sweep_closed_sockets): each fails with EBADF and is cancelled there, which
        drops the kernel's reference to the file.  Whatever a final completion still brings is
        kept as for any caller that had gone; the requests queued behind fail when the queue
        next moves (socket_closed)."""
        cdef Operation op
        for op in (self.recv_op, self.accept_op, self.send_op):
            if op is None:
                continue
            if isinstance(op.tag, Request):
                self.fail(<Request>op.tag, os_error(EBADF))
            op.cancel()
        return 0

    cdef int fail_closed(self, object q) except -1:
        """Every request waiting in `q` fails as the socket's own methods fail once it is
        closed (OSError EBADF)."""
        while q:
            self.fail(<Request>q.popleft(), os_error(EBADF))
        return 0

    cdef Request new_request(self, int kind):
        cdef Request req = Request.__new__(Request)
        req.state = self
        req.kind = kind
        # An exact asyncio.Future, not a subclass: the C Task then takes its fast paths (no
        # attribute lookups of _asyncio_future_blocking, get_loop, add_done_callback and
        # result per await).  With the op reuse and the inlined awaits (_sockio): an in-process
        # sock_* ping-pong went from ~44k to ~56k round trips/s (median of 11 alternating
        # runs), the benchmark's sock_* server from ~17-24 to ~13-15 us of CPU per request.
        # The kernel operation is then cancelled by the awaiting coroutine (_sockio._abandoned).
        req.fut = _Future(loop=self.loop)
        return req

    # ---- cancellation from the awaiting side ----

    cdef int request_cancelled(self, Request req) except -1:
        cdef object q
        cdef Operation op
        if req.kind == K_ACCEPT:
            q, op = self.accept_q, self.accept_op
        elif req.kind == K_SEND or req.kind == K_SENDTO or req.kind == K_CONNECT:
            q, op = self.send_q, self.send_op
        else:
            q, op = self.recv_q, self.recv_op
        if op is not None and op.tag is req:
            # In the kernel: ask it to stop.  The final CQE still comes back to op_done, which
            # keeps any result for the next caller.
            op.cancel()
        elif q is not None:
            try:
                q.remove(req)
            except ValueError:
                pass
        return 0

    # ---- receive ----

    cdef int pump_recv(self) except -1:
        cdef Request req
        cdef Operation op
        while True:
            if self.unclaimed is not None:
                return 0
            req = self.next_request(self.recv_q)
            if req is None:
                return 0
            if self.stash_exc is not None:
                exc, self.stash_exc = self.stash_exc, None
                self.recv_q.popleft()
                self.fail(req, exc)
                self.withdraw_receive(req)
                continue
            if self.stream and (self.stash or self.stash_eof):
                # (An empty stash with the end marked serves the end: b'', or 0 bytes read.)
                self.stash_eof = self.stash_eof and bool(self.stash)
                self.recv_q.popleft()
                self.serve_from_stash(req)
                self.unclaimed = req
                self.withdraw_receive(req)
                continue
            if not self.stream and self.dgram_stash:
                self.recv_q.popleft()
                data, addr = self.dgram_stash.popleft()
                self.serve_datagram(req, data, len(data), addr)
                self.unclaimed = req
                self.withdraw_receive(req)
                continue
            if self.recv_op is not None or self.proactor.closing:
                return 0     # an earlier operation is still in the kernel: wait for it
            if self.socket_closed():
                return self.fail_closed(self.recv_q)
            if not self.stream:
                try:
                    result = self.receive_now(req)
                except Exception as exc:
                    self.recv_q.popleft()
                    self.fail(req, exc)
                    continue
                if result is not _WOULD_BLOCK:
                    self.recv_q.popleft()
                    _set_result(req.fut, result)
                    self.unclaimed = req
                    continue
                op = self.readable_poll()
                op.tag = req
                self.recv_op = op
                op.guards_fd = True
                op.submit()
                return 0
            try:
                op = self.make_recv_op(req)
            except Exception as exc:
                # A buffer the kernel cannot be lent: this request fails and the next one goes
                # ahead (see pump_send).  sock_recv_into() refuses what it can see up front.
                self.fail(req, exc)
                continue
            op.tag = req
            self.recv_op = op
            op.guards_fd = True
            op.submit()
            return 0

    cdef int withdraw_receive(self, Request req) except -1:
        """`req` was just served from what a cancelled caller left; if its own receive is in
        the kernel (submitted while it waited behind that caller), cancel it.  Left there it
        stayed armed with nobody waiting -- holding the socket's file, so that closing the
        socket did not close the connection (its peer never saw EOF).  Whatever its final CQE
        still brings is kept for the next caller (recv_done).  After serving, not before: a
        request that never reached the kernel completes inside cancel(), and recv_done's
        pump_recv() must not serve a later caller ahead of this one."""
        cdef Operation op = self.recv_op
        if op is not None and op.tag is req:
            op.cancel()
        return 0

    cdef Operation make_recv_op(self, Request req):
        cdef BufferOp op
        cdef object sock = self.sock_ref()
        if (req.kind == K_RECV or req.kind == K_RECV_INTO) and self.spare_recv is not None:
            op = self.spare_recv
            self.spare_recv = None
            op.keep = sock
        elif req.kind == K_RECV or req.kind == K_RECV_INTO:
            op = RecvOp(self.proactor, self, self.fd, sock)
        else:
            op = MsgOp(self.proactor, self, self.fd, sock)
        if req.kind == K_RECV or req.kind == K_RECVFROM:
            # Our own scratch bytes object: nobody else can see it until we hand it out.
            op.set_buffer(PyBytes_FromStringAndSize(NULL, req.nbytes), False)
        else:
            op.set_buffer(req.buf, True)
            if req.nbytes and req.nbytes < op.view.len:
                op.view.len = req.nbytes
        return op

    # Receiving on a datagram socket.  On a stream socket, a receive the kernel completed for a
    # caller who had gone loses nothing: its bytes go to the stash, ahead of the next caller's.
    # A datagram cannot be kept like that: a receive takes the whole message and the kernel
    # cuts it to the receive's size, so a cancelled sock_recv(sock, 4) would leave the next
    # sock_recvfrom() the first 4 bytes of a datagram and no sender address, where the stock
    # loop -- which reads only for a caller still waiting -- leaves the datagram in the socket.
    # So datagram and seqpacket receives wait with a poll (cancelled like any request), and the
    # receive is made here, inline, with the socket's own method for the caller at the head of
    # the queue: the stock loop's order (try at once, else wait for readiness and try again),
    # its results (addresses of every family, as socket.recvfrom() converts them) and errors.

    cdef PollOp readable_poll(self):
        """The socket's POLLIN poll, lent the socket: the spare one when it is free.  (A
        listening socket's accepts and a datagram socket's receives wait with it; no socket
        does both.)"""
        cdef PollOp op = self.spare_poll
        if op is None or op.state != OP_IDLE:
            op = self.spare_poll = PollOp(self.proactor, self, self.fd, None)
            op.events = POLLIN
        op.keep = self.sock_ref()
        return op

    cdef object receive_now(self, Request req):
        """The head request's receive on a datagram socket, made at once by the socket's own
        method: its result, or _WOULD_BLOCK; raises what the method raises."""
        cdef object sock = self.sock_ref()
        if sock is None:
            raise os_error(EBADF)
        # MSG_DONTWAIT: a socket left in blocking mode (asyncio wants non-blocking ones) must
        # not block the loop here either.
        # sock_recv() and sock_recv_into() receive with recvfrom too, and the request keeps the
        # sender's address: should the awaiter be gone before taking the datagram, give_back()
        # keeps it whole, address included, for a later sock_recvfrom().
        try:
            if req.kind == K_RECV:
                data, req.address = sock.recvfrom(req.nbytes, _MSG_DONTWAIT)
                return data
            if req.kind == K_RECV_INTO:
                n, req.address = sock.recvfrom_into(req.buf, 0, _MSG_DONTWAIT)
                return n
            if req.kind == K_RECVFROM:
                return sock.recvfrom(req.nbytes, _MSG_DONTWAIT)
            return sock.recvfrom_into(req.buf, req.nbytes, _MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return _WOULD_BLOCK

    cdef int serve_from_stash(self, Request req) except -1:
        """A receive on a stream socket, served from bytes a cancelled caller left."""
        cdef Py_ssize_t n
        cdef memoryview mv
        if req.kind == K_RECV or req.kind == K_RECVFROM:
            n = min(req.nbytes, len(self.stash))
            data = bytes(self.stash[:n])
            del self.stash[:n]
            _set_result(req.fut, data if req.kind == K_RECV else (data, self.stream_sender()))
        else:   # K_RECV_INTO, K_RECVFROM_INTO
            mv = memoryview(req.buf).cast('B')
            n = len(mv) if req.nbytes == 0 else min(req.nbytes, len(mv))
            n = min(n, len(self.stash))
            mv[:n] = self.stash[:n]
            del self.stash[:n]
            _set_result(req.fut, n if req.kind == K_RECV_INTO else (n, self.stream_sender()))
        return 0

    cdef object stream_sender(self):
        """The address socket.recvfrom() gives with a connected stream socket's bytes: none
        for TCP; for a unix socket the peer's bound path (None when it has none)."""
        sock = self.sock_ref()
        if self.family != AF_UNIX or sock is None:
            return None
        try:
            return sock.getpeername() or None
        except OSError:
            return None

    cdef int serve_datagram(self, Request req, object data, Py_ssize_t n, object addr) except -1:
        cdef memoryview mv
        if req.kind == K_RECVFROM:
            _set_result(req.fut, (data[:req.nbytes] if n > req.nbytes else data, addr))
        elif req.kind == K_RECVFROM_INTO:
            mv = memoryview(req.buf).cast('B')
            limit = len(mv) if req.nbytes == 0 else min(req.nbytes, len(mv))
            n = min(n, limit)
            mv[:n] = data[:n]
            _set_result(req.fut, (n, addr))
        elif req.kind == K_RECV:
            req.address = addr
            _set_result(req.fut, data[:req.nbytes])
        else:
            req.address = addr
            mv = memoryview(req.buf).cast('B')
            n = min(n, len(mv))
            mv[:n] = data[:n]
            _set_result(req.fut, n)
        return 0

    cdef Request next_request(self, object q):
        # The oldest request of a queue still waiting for a result (those whose awaiter was
        # cancelled are dropped), or None.
        cdef Request req
        while q:
            req = <Request>q[0]
            if not _done(req.fut):
                return req
            q.popleft()
        return None

    cdef Request finish_request(self, Operation op, object q):
        # The request an operation served, off its queue: its final completion has come.
        cdef Request req = <Request>op.tag
        op.tag = None
        if q and q[0] is req:
            q.popleft()
        return req

    cdef int give_back(self, Request req, object result) except -1:
        """Return a delivered result whose awaiter was cancelled before it could take it: it
        came before anything stashed since, so it goes to the front."""
        cdef memoryview mv
        if self.unclaimed is req:
            self.unclaimed = None
        if self.stream and not result and req.kind != K_ACCEPT and _asked_for_bytes(req):
            self.stash_eof = True       # the end of the stream it was given (see recv_done)
        if req.kind == K_RECV:
            if self.stream:
                self.stash[:0] = result
            else:
                self.datagram_stash().appendleft((result, req.address))
        elif req.kind == K_RECV_INTO:
            data = bytes(memoryview(req.buf).cast('B')[:result])
            if self.stream:
                self.stash[:0] = data
            else:
                self.datagram_stash().appendleft((data, req.address))
        elif req.kind == K_RECVFROM:
            if self.stream:
                self.stash[:0] = result[0]
            else:
                self.datagram_stash().appendleft(result)
        elif req.kind == K_RECVFROM_INTO:
            nbytes, addr = result
            data = bytes(memoryview(req.buf).cast('B')[:nbytes])
            if self.stream:
                self.stash[:0] = data
            else:
                self.datagram_stash().appendleft((data, addr))
        elif req.kind == K_ACCEPT:
            conn, addr = result
            self.accepted_stash().appendleft((conn.detach(), addr))
            self.pump_accept()
            return 0
        self.pump_recv()
        return 0

    cdef int fail(self, Request req, object exc) except -1:
        if not _done(req.fut):
            _set_exception(req.fut, exc)
        return 0

    cdef int recv_done(self, BufferOp op, int res) except -1:
        cdef Request req = self.finish_request(op, self.recv_q)
        cdef bint waiting = not _done(req.fut)
        cdef object data = None, addr = None
        self.recv_op = None
        if res == -ECANCELED:
            # Not kept for reuse: a request cancelled before it reached the kernel completes from
            # inside Proactor.cancel(), which releases the operation's buffer after this handler
            # returns -- even if pump_recv() below had lent it a new one.
            pass
        elif res < 0:
            if waiting:
                self.fail(req, os_error(-res))
            else:
                self.stash_exc = os_error(-res)
        else:
            if req.kind == K_RECV or req.kind == K_RECVFROM:
                data = op.buffer
                if res != len(data):
                    data = PyBytes_FromStringAndSize(PyBytes_AS_STRING(data), res)
            if req.kind == K_RECVFROM or req.kind == K_RECVFROM_INTO:
                addr = (<MsgOp>op).address(self.family)
            if waiting:
                if req.kind == K_RECV:
                    _set_result(req.fut, data)
                elif req.kind == K_RECV_INTO:
                    _set_result(req.fut, res)
                elif req.kind == K_RECVFROM:
                    _set_result(req.fut, (data, addr))
                else:
                    _set_result(req.fut, (res, addr))
                self.unclaimed = req
            else:
                # The awaiter is gone but the bytes are real: keep them for the next caller.
                # (A stream socket's: datagram sockets receive inline, see receive_now.)
                if data is None:
                    data = bytes(memoryview(op.buffer).cast('B')[:res])
                self.stash += data
                if res == 0 and op.view.len > 0:
                    # The end of the stream is real too.  Dropped, it was met again only by a
                    # receive in the kernel -- which a caller retrying under a deadline already
                    # past (asyncio.timeout(0), wait_for(..., 0)) cancelled again, for ever:
                    # the stock loop's recv(), tried at once, returns b'' without suspending.
                    self.stash_eof = True
        if res != -ECANCELED and type(op) is RecvOp:
            # Reusable once this handler returns: the Proactor then releases the buffer, unless
            # pump_recv() below has already resubmitted the operation with the next one.
            self.spare_recv = <RecvOp>op
        if self.handover is not None:
            return self.hand_over(req)
        if not self.proactor.closing:
            self.pump_recv()
        return 0

    cdef int hand_over(self, Request finished) except -1:
        """The receive that was in the kernel when a transport took the socket has ended:
        what it and the cancelled callers before it left goes to the transport, which has been
        waiting for this before it receives itself (_sockio.forget_socket).  Receives still queued
        fail as new sock_* calls on a transport's socket fail, and the state goes if nothing
        else of it is in the kernel."""
        cdef Request req
        transport, self.handover = self.handover, None
        self.unclaimed = None
        leftover = bytes(self.stash) if self.stash else None
        exc, self.stash_exc = self.stash_exc, None
        self.stash = bytearray()
        self.stash_eof = False          # (the transport's receive meets the end again)
        taken = RuntimeError(f'File descriptor {self.fd} is used by transport {transport!r}')
        self.fail(finished, taken)         # if its caller still waits (the receive cancelled)
        while self.recv_q:
            req = <Request>self.recv_q.popleft()
            self.fail(req, taken)
        states = self.loop._ul_sock_states
        if self.idle() and states.get(self.fd) is self:
            del states[self.fd]
            self.discard()
        transport._take_leftover(leftover, exc)
        return 0

    # ---- accept ----
    #
    # Why a poll and accept4(2), the stock loop's way, rather than io_uring's accept request:
    # the kernel wakes an accept request as an *exclusive* waiter.  Where several processes
    # call sock_accept() on one inherited listening socket, a new connection wakes only one of
    # them, and with DEFER_TASKRUN its accept runs when that loop next enters the ring: a busy
    # process keeps the connection waiting while an idle one sleeps on, and one that cancels its
    # sock_accept() after taking the wake-up leaves the connection queued with nobody woken for
    # it -- the client hangs until the next connection arrives (measured; the pre-fork test in
    # tests/test_server.py).  A poll is an ordinary waiter, woken with every other process's,
    # and accept4 runs only for a caller still waiting, so nothing is accepted for nobody.
    # (_server.pyx's Acceptor serves create_server's listening sockets the same way.)
    #
    # A listening socket in blocking mode (asyncio requires non-blocking ones; the stock loop
    # would block in accept() there) keeps the accept request: accept4 after a poll could block
    # the loop if another process took the connection first.

    cdef object accept_now(self):
        """accept4(2) on the listening socket: (conn, address), or _WOULD_BLOCK; raises the
        OSError socket.accept() raises."""
        cdef int err
        accepted = accept_nonblocking(self.fd, self.family, &err)
        if accepted is None:
            if err == EAGAIN or err == EINTR:
                return _WOULD_BLOCK
            raise os_error(err)
        fd, address = accepted
        return (self.connection(fd), address)

    cdef object connection(self, int fd):
        """The socket object of an accepted descriptor (non-blocking); closes fd on failure."""
        cdef object listener = self.sock_ref()
        try:
            if listener is not None:
                return _socket_type(self.family, listener.type | SOCK_NONBLOCK, listener.proto,
                                    fd)
            return _socket_type(self.family, _socket.SOCK_STREAM | SOCK_NONBLOCK, 0, fd)
        except BaseException:
            os.close(fd)
            raise

    cdef int deliver_connection(self, Request req, int fd, object addr) except -1:
        try:
            conn = self.connection(fd)
        except BaseException as exc:
            self.fail(req, exc)
        else:
            _set_result(req.fut, (conn, addr))
        return 0

    cdef int pump_accept(self) except -1:
        cdef Request req
        cdef Operation op
        while True:
            req = self.next_request(self.accept_q)
            if req is None:
                return 0
            if self.accepted:
                self.accept_q.popleft()
                fd, addr = self.accepted.popleft()
                self.deliver_connection(req, fd, addr)
                continue
            if self.accept_op is not None or self.proactor.closing:
                return 0
            if self.socket_closed():
                return self.fail_closed(self.accept_q)
            if c_fcntl(self.fd, F_GETFL) & O_NONBLOCK:
                # First try at once, as the stock loop does: a queued connection costs no
                # trip through the ring.
                try:
                    result = self.accept_now()
                except BaseException as exc:
                    self.accept_q.popleft()
                    self.fail(req, exc)
                    continue
                if result is not _WOULD_BLOCK:
                    self.accept_q.popleft()
                    _set_result(req.fut, result)
                    continue
                op = self.readable_poll()
            else:
                op = AcceptOp(self.proactor, self, self.fd, self.sock_ref())
            op.tag = req
            self.accept_op = op
            op.guards_fd = True
            op.submit()
            return 0

    cdef int accept_done(self, Operation op, int res) except -1:
        cdef Request req = <Request>op.tag
        cdef bint waiting = not _done(req.fut)
        op.tag = None
        self.accept_op = None
        if type(op) is PollOp and (res >= 0 or res == -ECANCELED):
            # Readable (or an error the accept will report), or the poll cancelled: the request
            # stays at the head of the queue, and pump_accept() accepts for it if it is still
            # waiting -- or polls again if another process took the connection first.
            pass
        else:
            if self.accept_q and self.accept_q[0] is req:
                self.accept_q.popleft()
            if res >= 0:
                addr = (<AcceptOp>op).address(self.family)
                if waiting:
                    self.deliver_connection(req, res, addr)
                elif self.proactor.closing:
                    os.close(res)
                else:
                    # Accepted exactly once: the next caller's.
                    self.accepted_stash().append((res, addr))
            elif res != -ECANCELED and waiting:
                self.fail(req, os_error(-res))
        if not self.proactor.closing:
            self.pump_accept()
        return 0

    # ---- send and connect ----

    # Connecting.  sock_connect connects as the stock loop does: connect(2) at once, by the
    # socket's own method, and when that says the connection is under way (EINPROGRESS), a
    # poll for POLLOUT and SO_ERROR for the outcome.  An io_uring connect request would do the
    # same work, but it reports every failure alike at its completion, where the stock loop
    # raises what connect(2) refused at once as socket.connect() raises it ("No such file or
    # directory" for a unix path, "Network is unreachable"...) and only what failed later as
    # OSError(err, 'Connect call failed <address>'); create_connection() relies on the
    # difference (the same error from every address of a host is raised as that one error,
    # with its errno).  The socket's own method also converts every address family it knows.
    # A socket in blocking mode gets the connect request (connect(2) would block the loop;
    # asyncio wants non-blocking sockets).
    #
    # A unix socket whose listener's queue is full (EAGAIN) waits for room, as a blocking
    # connect would.  Nothing can be polled for that: a blocking connect sleeps on the
    # listener's own wait queue, which its accept() wakes, while the connecting socket reports
    # POLLOUT at once -- the stock loop waits for that POLLOUT and reports a connection that
    # was never made, and an io_uring connect request completes with -EAGAIN at once, again
    # and again (resubmitted, it kept a core busy for as long as the queue stayed full).  So
    # connect(2) is tried again after a pause in the kernel (a DelayOp: 1 ms, doubling up to
    # 50 ms while the queue stays full); `req.nbytes` counts the tries.
    #
    # A TCP connection to this host is usually made by the time connect(2) returns EINPROGRESS:
    # the SYN, the SYN-ACK and the ACK cross the loopback in the softirqs that connect(2) itself
    # runs.  One poll(2) with no timeout asks whether it is so; when the socket reports exactly
    # POLLOUT (established, no error pending: TCP reports POLLERR whenever one is), the request
    # is settled at once -- no poll on the ring, no completion to wait an iteration for.  Where
    # the handshake is still under way (any remote peer), or an error is pending, it goes to the
    # ring as before, and the error stays in the socket until that completion reads it, as the
    # stock loop leaves it until its writer callback: CPython's test_sock_client_connect_racing
    # cancels a connect to a port not listening yet and relies on the next connect(2) reporting
    # the refusal.  The cost where it does not pay, one system call, is small against a round
    # trip over a network.  sock_connect 15.2 -> 13.1 us, create_connection 25.1 -> 23.7 us to
    # a loopback listener (1,000 in a row, alternating runs, Python 3.11, Intel guest).
    # The caller is not resumed at once, though: see _sockio.sock_connect.

    cdef Operation start_connect(self, Request req):
        """Connect at once: None when that settled the request (connected, or refused), else the
        operation that waits for the outcome."""
        cdef Operation op
        cdef pollfd pfd
        cdef object sock = self.sock_ref()
        if sock is None:
            raise os_error(EBADF)
        if req.nbytes == CONNECT_UNDER_WAY:
            # sock_connect's connect(2) started it (_sockio._connect_at_once): wait for the outcome.
            op = PollOp(self.proactor, self, self.fd, sock)
            (<PollOp>op).events = POLLOUT
            return op
        if c_fcntl(self.fd, F_GETFL) & O_NONBLOCK:
            try:
                sock.connect(req.address)
            except (BlockingIOError, InterruptedError) as exc:
                if exc.errno == EAGAIN and self.family == AF_UNIX:
                    op = DelayOp(self.proactor, self, -1, sock)
                    (<DelayOp>op).set_delay(min(0.001 * (1 << min(req.nbytes, 6)), 0.05))
                    req.nbytes += 1
                    return op
                if exc.errno == EINPROGRESS and self.family != AF_UNIX:
                    pfd.fd = self.fd
                    pfd.events = POLLOUT
                    pfd.revents = 0
                    if c_poll(&pfd, 1, 0) == 1 and pfd.revents == POLLOUT:
                        # Connected already (see above); sock_connect yields once all the
                        # same, as the stock loop's waits for its writer callback.
                        req.nbytes = CONNECT_FOUND_MADE
                        _set_result(req.fut, None)
                        return None
                op = PollOp(self.proactor, self, self.fd, sock)
                (<PollOp>op).events = POLLOUT
                return op
            else:
                _set_result(req.fut, None)
                return None
        op = ConnectOp(self.proactor, self, self.fd, sock)
        (<ConnectOp>op).set_address(self.family, req.address)
        return op

    # A unix datagram socket's sock_sendto() never waits in the kernel as a sendmsg request:
    # unix_dgram_sendmsg copies the data out before it finds the receiver's queue full, and the
    # request, retried once there is room, sends an *empty* datagram (see _datagram's module
    # docstring).  It sends at once by the socket's own method, as the stock loop does, and
    # when there is no room waits for POLLOUT and tries again (send_done).  So does a socket of
    # a family whose addresses the core cannot write (AF_PACKET, AF_CAN...: see
    # _sockaddr.converts_sockaddr): only its own sendto() takes the addresses socket.sendto() takes
    # (a sendmsg request refused them with EAFNOSUPPORT when the first try would block).

    cdef Operation sendto_now(self, Request req):
        """A sendto() at once by the socket's own method (a unix datagram socket, or a family
        the core does not convert): None when that settled the request, else the POLLOUT poll
        to wait for room with; raises what socket.sendto() raises."""
        cdef PollOp op
        cdef object sock = self.sock_ref()
        if sock is None:
            raise os_error(EBADF)
        try:
            sent = sock.sendto(req.buf, _MSG_DONTWAIT, req.address)
        except (BlockingIOError, InterruptedError):
            op = PollOp(self.proactor, self, self.fd, sock)
            op.events = POLLOUT
            return op
        _set_result(req.fut, sent)
        return None

    cdef int connect_error(self) except -1:
        """SO_ERROR of a socket whose connection attempt ended (its POLLOUT came)."""
        cdef object sock = self.sock_ref()
        if sock is None:
            return EBADF
        try:
            return sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_ERROR)
        except OSError as exc:
            return exc.errno or EBADF      # closed under the connect: EBADF, as stock's would

    cdef Operation make_send_op(self, Request req):
        cdef Operation op
        if req.kind == K_SEND:
            if self.spare_send is not None:
                op = self.spare_send
                self.spare_send = None
                op.keep = self.sock_ref()
            else:
                op = SendOp(self.proactor, self, self.fd, self.sock_ref())
            (<SendOp>op).set_buffer(req.buf, False)
        else:
            op = MsgOp(self.proactor, self, self.fd, self.sock_ref())
            (<MsgOp>op).sending = True
            (<MsgOp>op).set_address(self.family, req.address)   # first: it may refuse
            (<MsgOp>op).set_buffer(req.buf, False)
        return op

    cdef bint kept_error_stops_empty_reads(self) except -1:
        """Whether a read of zero bytes is to be told the error a receive kept (see recv_done)
        rather than answered at once (_sockio._read_nothing): yes for an error every call gets
        (EBADF, ENOTCONN...) or any on a datagram socket; not for a stream connection's error,
        which the stock loop's recv(0) never asks the kernel for -- its b'' comes at once and
        the error stays for the next read of some size."""
        return self.stash_exc is not None and not (self.stream and _reported_once(self.stash_exc))

    cdef object take_connection_error(self):
        """The connection's error a receive kept for the next call (see recv_done), taken, if
        a send is to be told it; else None.

        A connection's error (a reset, a timeout) is told by the kernel once, to the first call
        that asks -- receive or send -- and the calls after it see a closed connection (a send
        EPIPE, a receive b'').  A receive of ours whose caller had gone took it and kept it;
        the stock loop never made that receive, so its next call, a send, is the one told.  It
        is told there, and the next receive then gets the kernel's b''.  (An error every call
        would get -- EBADF, ENOTCONN -- stays for the receives, as does anything on a datagram
        socket.)"""
        if (self.stash_exc is None or not self.stream
                or not _reported_once(self.stash_exc)):
            return None
        exc, self.stash_exc = self.stash_exc, None
        return exc

    cdef int pump_send(self) except -1:
        cdef Request req
        cdef Operation op
        while True:
            req = self.next_request(self.send_q)
            if (req is None or self.send_op is not None or self.send_turn is not None
                    or self.proactor.closing):
                return 0
            if self.socket_closed():
                return self.fail_closed(self.send_q)
            if req.kind == K_SEND_TURN:
                self.send_q.popleft()
                self.send_turn = req            # until end_send_turn()
                _set_result(req.fut, None)
                return 0
            if req.kind != K_CONNECT:
                exc = self.take_connection_error()
                if exc is not None:
                    self.fail(req, exc)
                    continue
            try:
                if req.kind == K_CONNECT:
                    op = self.start_connect(req)
                    if op is None:
                        continue      # connected at once
                elif req.kind == K_SENDTO and (
                        (self.family == AF_UNIX and not self.stream)
                        or not converts_sockaddr(self.family)):
                    op = self.sendto_now(req)
                    if op is None:
                        continue      # sent at once
                else:
                    op = self.make_send_op(req)
            except Exception as exc:
                # An address socket.sendto()/connect() would refuse, or a connect(2) refused
                # at once: this request fails (its awaiter gets the exception) and the next one
                # goes ahead.  Left at the head of the queue it would fail every later call on
                # the socket instead, or escape from a completion handler that pumps the queue.
                self.fail(req, exc)
                continue
            break
        op.tag = req
        self.send_op = op
        op.guards_fd = True      # (the module docstring, and StaleFdGuard in _proactor)
        op.submit()
        if type(op) is ConnectOp:
            # asyncio's sock_connect calls connect(2) before it first yields, and programs
            # rely on it: the peer's listener has the connection in its backlog right away (a
            # blocking accept() after one `await asyncio.sleep(0)` returns), and a connect
            # cancelled after one iteration has still been attempted.  A connect request (see
            # start_connect) is worth its own io_uring_enter for that.
            self.proactor.submit_pending()
        return 0

    cdef int send_done(self, Operation op, int res) except -1:
        cdef Request req = self.finish_request(op, self.send_q)
        self.send_op = None
        if (((req.kind == K_SENDTO and type(op) is PollOp and res >= 0)
                or (req.kind == K_CONNECT and type(op) is DelayOp and res != -ECANCELED))
                and not _done(req.fut)):
            # The socket has room for a sendto() (sendto_now), or a unix connect's pause is over
            # (start_connect): the request goes back to the head of the queue and pump_send()
            # below tries it again, or waits again.
            if self.send_q is None:
                self.send_q = _deque()
            self.send_q.appendleft(req)
        elif not _done(req.fut):
            if res == -ECANCELED:
                req.fut.cancel()
            elif req.kind == K_CONNECT and type(op) is PollOp:
                err = -res if res < 0 else self.connect_error()
                if err:
                    self.fail(req, OSError(err, f'Connect call failed {req.address}'))
                else:
                    _set_result(req.fut, None)
            elif res < 0:
                # (Also the connect request of a socket in blocking mode, start_connect: the
                # stock loop's connect() of such a socket blocks and raises as socket.connect()
                # raises -- ConnectionRefusedError(111, 'Connection refused'), not the
                # 'Connect call failed <address>' of its writer callback.)
                self.fail(req, os_error(-res))
            elif req.kind == K_SENDTO:
                _set_result(req.fut, res)
            else:
                _set_result(req.fut, None)
        if res != -ECANCELED and type(op) is SendOp:
            self.spare_send = <SendOp>op      # as spare_recv in recv_done
        if not self.proactor.closing:
            self.pump_send()
        return 0

    cdef int recv_poll_done(self, Operation op, int res) except -1:
        # A datagram socket's poll (receive_now): readable, cancelled or failed.  Readable, the
        # request stays at the head of the queue and pump_recv() receives for it if it is still
        # waiting -- or polls again if someone else took the datagram first.
        cdef Request req = <Request>op.tag
        op.tag = None
        self.recv_op = None
        if res < 0 and res != -ECANCELED:
            if self.recv_q and self.recv_q[0] is req:
                self.recv_q.popleft()
            self.fail(req, os_error(-res))
        if not self.proactor.closing:
            self.pump_recv()
        return 0

    cdef int op_done(self, Operation op, int res, unsigned flags) except -1:
        if op is self.recv_op:
            if type(op) is PollOp:
                return self.recv_poll_done(op, res)
            return self.recv_done(<BufferOp>op, res)
        if op is self.accept_op:
            return self.accept_done(op, res)
        if op is self.send_op:
            return self.send_done(op, res)
        return 0

    cdef object leftovers(self):
        """What a caller that had gone left here -- stream bytes, a kept error, datagrams -- for
        the socket's next loop (_sockio.forget_all_sockets), or None.  Accepted connections are
        not carried: they are sockets of the loop's making, closed with it (discard)."""
        if not (self.stash or self.stash_exc is not None or self.dgram_stash):
            return None
        return (bytes(self.stash), self.stash_exc,
                list(self.dgram_stash) if self.dgram_stash else None)

    cdef int adopt(self, tuple leftovers) except -1:
        """Take over what the socket's previous loop kept (leftovers())."""
        data, exc, datagrams = leftovers
        self.stash += data
        self.stash_exc = exc
        if datagrams:
            self.datagram_stash().extend(datagrams)
        return 0

    cdef discard(self):
        """The socket this state served is gone: release what only it could have used."""
        self.spare_recv = self.spare_send = None    # they point back here (op.owner)
        self.spare_poll = None
        while self.accepted:
            fd, _ = self.accepted.popleft()
            os.close(fd)
        self.stash = bytearray()
        self.stash_eof = False
        if self.dgram_stash is not None:
            self.dgram_stash.clear()
        self.stash_exc = None
        self.unclaimed = None
