# cython: language_level=3
"""The send half of the stream socket transport: SendSide, the lowest of
_transports.SocketTransport's own layers (under _receiveside.ReceiveSide), owns everything
write(), writelines(), write_eof() and the write flow control do, and the send operations
behind them.  The transport's receiving lives in _receiveside.pyx, its life cycle (close,
abort, connection_lost) and its fatal errors in _transports.pyx; the send half meets them in
three places: a send that fails ends the transport through fatal_error(), the last send of a
closing transport calls _call_connection_lost(), and both halves ask socket_gone() before they
name the socket to the kernel.

write() with nothing in flight submits a send of that very object (bytes are pinned, mutable
buffers are copied first: the caller may reuse them the moment write() returns).  Data of 16 KiB
or more, and any data when the iteration has little to batch it with, is first offered to the
socket with one non-blocking send(2) -- writelines(): one sendmsg(2) -- and only what it did not
take is submitted (see write_through, send_at_once and writelines_through).  Writes made while a
send is in flight are queued and leave together, in one vectored sendmsg (SendMsgOp), when it
completes -- or at once join it, while it has not reached the kernel yet (join_unsent).  Partial
sends are continued inside the operations, so a completion always means "all of it is out" or
an error.

The bytes in flight count towards the write buffer size, which drives pause_writing()/
resume_writing() as _FlowControlMixin does.  They must: the stock transport learns synchronously
how much the kernel accepted, we only learn it from completions, and a writer that loops on
`write(); await drain()` would otherwise never be paused and never yield.  A send the socket's
room cuts short reports what it moved as it goes on (send_progress), so a large write leaves the
buffer as the kernel takes it, as with the stock transport.  The visible difference is that data
handed to a send operation (small writes in a busy iteration, anything written while a send is in
flight) counts until its completion even when the kernel takes it whole, so more of it than the
high-water mark pauses the protocol until then -- one loop iteration later.

Zero-copy send (IORING_OP_SEND_ZC) is not used: measured on loopback (1 GiB in 64 KiB and 1 MiB
writes) it cost more CPU per byte and was slower than a plain send -- loopback copies anyway and
the extra notification completion is pure overhead.  It may pay on a real NIC for writes of
hundreds of KiB; that would be a SendOp variant releasing its buffer at IORING_CQE_F_NOTIF.
"""

cimport cython
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from libc.string cimport memset

from uringloop._sys cimport *
from uringloop._proactor cimport Operation, OP_IDLE, socket_fd_now, os_error
from uringloop._ops cimport SendOp, SendMsgOp
from uringloop._flow cimport WriteFlow, not_contiguous_error, queued_not_contiguous_error

import socket as _socket
import sys

cdef extern from "<sys/socket.h>" nogil:
    int MSG_NOSIGNAL
    int MSG_DONTWAIT
    ssize_t c_send "send"(int fd, const void *buf, size_t n, int flags)
    ssize_t c_sendmsg "sendmsg"(int fd, const msghdr *msg, int flags)

cdef object _SHUT_WR = _socket.SHUT_WR
cdef object _SOL_SOCKET = _socket.SOL_SOCKET
cdef object _SO_ERROR = _socket.SO_ERROR
cdef int _AF_UNIX = _socket.AF_UNIX
# Before 3.12 the stock transports' writelines() is WriteTransport's write(b''.join(list_of_data)):
# its errors are the join's TypeError, then write()'s own.  (It sends what the join made; we send
# the items as they are -- the bytes are the same.)
cdef bint _WRITELINES_IS_JOINED_WRITE = sys.version_info < (3, 12)
# Before 3.12 the stock socket transport queues what the socket did not take in a bytearray
# (extend()); from 3.12 in a deque of the objects written.
cdef bint _QUEUE_IS_BYTEARRAY = sys.version_info < (3, 12)

cdef enum:
    # The kernel's UIO_MAXIOV: the most buffers one sendmsg may carry.
    IOV_LIMIT = 1024
    # Idle send operations a loop keeps for its transports (see spare_send_ops()).
    SPARE_SEND_OPS = 256
    # Data from this size up is offered to the socket inside write() (write_through).
    WRITE_THROUGH_MIN = 16384


@cython.final
cdef class SpareSends:
    """A stack of idle SendOps in a list that never shrinks.

    A plain list's pop() and append() would do: but a busy loop borrows and returns a batch of
    sends every iteration, and a list that empties and refills resizes its array on the way
    down and up again -- a realloc() every few sends (0.5% of a server's time at Protocol
    1 KiB x 10).  Here the slots stay; a taken one holds None."""

    def __cinit__(self):
        self.ops = []
        self.count = 0

    cdef SendOp take(self):
        # Only when count > 0.
        self.count -= 1
        op = <SendOp>self.ops[self.count]
        self.ops[self.count] = None
        return op

    cdef bint give(self, SendOp op) except -1:
        """Keep `op` unless SPARE_SEND_OPS are kept already; True: kept."""
        if self.count >= SPARE_SEND_OPS:
            return False
        if self.count < len(self.ops):
            self.ops[self.count] = op
        else:
            self.ops.append(op)
        self.count += 1
        return True


cdef SpareSends spare_send_ops(loop):
    """The loop's idle SendOps, shared by its transports.

    A transport borrows one for each send and gives it back at the completion, so a connection
    that is not sending holds none (a SendOp is ~200 B; an idle keep-alive connection would
    otherwise keep the one it used last), while a busy loop still reuses operations instead of
    making one per write.  At most SPARE_SEND_OPS are kept (~50 KiB): enough for that many
    connections sending in the same iteration."""
    spare = loop._ul_spare_send_ops
    if spare is None:
        spare = loop._ul_spare_send_ops = SpareSends()
    return <SpareSends>spare


cdef inline bint _immutable(object data):
    """bytes, or a read-only contiguous view of bytes: its bytes cannot change or move."""
    cdef memoryview mv
    if type(data) is bytes:
        return True
    if type(data) is memoryview:
        mv = <memoryview>data
        return mv.readonly and type(mv.obj) is bytes and mv.c_contiguous
    return False


cdef inline object _pinnable(object data):
    """An object whose bytes cannot change or move while the kernel sends them: immutable data
    as it is; anything mutable is copied (the caller may reuse its buffer as soon as write()
    returns)."""
    if not _immutable(data):
        return bytes(data)
    if type(data) is memoryview:
        return memoryview(data)     # our own view: the caller may release theirs
    return data


cdef inline Py_ssize_t _nbytes(object data):
    if type(data) is bytes:
        return PyBytes_GET_SIZE(data)
    return (<memoryview>data).nbytes




cdef class SendSide(WriteFlow):
    """What SocketTransport does to send (see the module's docstring).  Not used on its own:
    socket_gone() and fatal_error() are the transport's."""

    cdef int fatal_error(self, object exc, str message) except -1:
        raise NotImplementedError('SocketTransport.fatal_error')

    cdef bint socket_gone(self) except -1:
        """Whether the socket object was closed under the transport (its owner kept it: a
        sock= argument, connect_accepted_socket), and if so end the transport with EBADF, as
        the stock transport's next send() or recv() on the closed object ends it.

        Why before anything goes to the kernel by number: a request in flight holds the old
        file, but a new one -- a receive armed, a send, the inline recv(2) after a poll, the
        queue sent from a completion -- would name whatever socket took the number since:
        bytes sent to an unrelated peer, its bytes read.  (Cheap enough for every write: the
        number is read from the socket object's C struct.)"""
        cdef object sock = self.sock
        if sock is None:
            return False
        if socket_fd_now(sock) == self._sock_fd:
            return False
        self.fatal_error(os_error(EBADF), 'Fatal error on transport')
        return True

    # ---- writing ----

    def write(self, data):
        cdef Py_ssize_t n
        if type(data) is not bytes and not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f'data argument must be a bytes-like object, '
                            f'not {type(data).__name__!r}')
        self.check_writable('write')
        if not data:
            return
        if self.write_dropped():
            return
        if type(data) is memoryview and not (<memoryview>data).c_contiguous:
            if _QUEUE_IS_BYTEARRAY and (self.send_op is not None or self.write_q):
                # Behind bytes queued the stock transport adds it to its bytearray: TypeError
                # to the caller, the transport left as it was.  (From 3.12 it queues the view,
                # and the send that reaches it fails: fatal, as below but later.)
                raise queued_not_contiguous_error(data, True)
            self.fatal_error(not_contiguous_error(), 'Fatal write error on socket transport')
            return
        if (type(data) is not bytes or self.proactor.little_to_batch()
                or PyBytes_GET_SIZE(data) >= WRITE_THROUGH_MIN):
            data = self.write_through(data)
            if data is None:
                return        # all sent, or the socket failed (reported as a fatal error)
        n = _nbytes(data)
        if self.send_op is None:
            self.submit_send(data, n)
        else:
            if self.write_q is None:
                self.write_q = [data]
            else:
                self.write_q.append(data)
            self.queued_bytes += n
            self.join_unsent()
        self.maybe_pause_protocol()

    cdef bint receive_pending(self) noexcept:
        """Whether a receive is in flight (ReceiveSide answers)."""
        return False

    def _end_with_broken_pipe(self, exc):
        if not self.conn_lost and self.sock is not None:
            self.fatal_error(exc, 'Fatal write error on socket transport')

    cdef bint write_dropped(self) except -1:
        """Whether a write is to be dropped: the transport is lost (the write is counted, and
        logged past asyncio's threshold, as the stock transport counts it), or its socket was
        closed under it (socket_gone() ends the transport)."""
        if self.conn_lost:
            self.count_lost_write('socket.send() raised exception.')
            return True
        return self.socket_gone()

    # A send that completes at once skips the completion queue.
    #
    # A write normally becomes a send operation submitted with the iteration's io_uring_enter,
    # so that the sends of many connections leave in one system call.  When the iteration found
    # few completions (Proactor.little_to_batch: FEW_COMPLETIONS, 4, or fewer) there is little
    # or nothing to batch with: a
    # server answering one request at a time would spend an io_uring_enter on the send alone --
    # it returns at once, since a send on a socket with room completes inside it -- then a loop
    # iteration to dispatch that completion, then a second enter to wait for the next request,
    # and the reply would leave only after the rest of the iteration's callbacks.  There,
    # write() offers the bytes to the socket itself, with one non-blocking send(2), before it
    # returns (as the stock loop and uvloop do with every write); what the socket does not take
    # becomes a send operation as usual.  Nothing is lent to the kernel beyond the call, no fd
    # stays referenced, and the order holds: only with nothing of this transport in flight or
    # queued.  This is the io_uring counterpart of IOCP's FILE_SKIP_COMPLETION_PORT_ON_SUCCESS.
    # Measured at 1 connection (Python 3.11, 11 alternating 1 s runs, both builds alive),
    # requests per second at 1 / 16 / 100 KiB: streams +14 / +12 / +6%, Protocol +12 / +9 / -1%,
    # BufferedProtocol 1 KiB +10% (16 / 100 KiB: +10 / +8% with glibc's rep movsb kept out of
    # the echo's own copy -- see benchmarks/README.md).
    #
    # The limit was one completion until 2026-12-02.  With a few, a reply written by a task
    # (asyncio streams, aiohttp: the ready callbacks after the dispatch) still waited for the
    # enter after those callbacks, and the callback that looks for the next request ran right
    # after that enter, before the peer could have answered: aiohttp's request loop found no
    # request queued on ~0.8 of its turns and waited on a future (~0.2 on uvloop, which sends
    # every write at once).  Sent at once, the reply's answer is back by then more often (0.27).
    # aiohttp hello world x 10 connections, alternating 2 s runs against a limit of 1 (Python
    # 3.11, Intel guest): limit 2 0.97x, 3 1.02x, 4 1.03-1.07x [0.99-1.12] over three sets, 6
    # 1.05x, 8 0.95-0.97x, 16 0.95x -- above ~6 the iterations that send at once are most of
    # them, and every reply wakes the client by itself (the reason sends are batched at all).
    # Unchanged with 4: Protocol and streams 1 KiB x 10 0.99 / 1.00x, Protocol 1 KiB x 100
    # 1.01x, aiohttp x 100 0.99x (8 / 6 rounds): there the iterations find many completions
    # and the sends stay on the ring.

    cdef Py_ssize_t send_at_once(self, const char *buf, Py_ssize_t n) except -2:
        """How many bytes of `buf` the socket took at once with one non-blocking send(2): all,
        part or none (EAGAIN); -1 when it failed, reported as a fatal error."""
        self.proactor.note_sent(self._sock_fd)
        return self.taken_at_once(
            c_send(self._sock_fd, buf, <size_t>n, MSG_DONTWAIT | MSG_NOSIGNAL))

    cdef Py_ssize_t taken_at_once(self, ssize_t sent) except -2:
        """The outcome of a non-blocking send(2)/sendmsg(2) that just returned `sent` (errno
        still its own): the bytes taken, 0 for EAGAIN/EINTR, or -1 for a failure, reported as
        a fatal error."""
        cdef int err = errno
        if sent >= 0:
            return sent
        if err == EAGAIN or err == EINTR:
            return 0
        self.fatal_error(os_error(err), 'Fatal write error on socket transport')
        return -1

    cdef object write_through(self, object data):
        """What of `data` is left to send, as an object that cannot change (see _pinnable), or
        None when nothing is.

        The caller may reuse a bytearray the moment write() returns, so a send submitted for
        later needs a copy of it.  For large data that copy costs more than the send itself: it
        allocates (at 100 KiB, heap growth and page faults) and it leaves the kernel to copy the
        bytes a second time, at the next io_uring_enter, from memory that has left the cache by
        then -- BufferedProtocol echo at 100 KiB x 100 connections spent 7x uvloop's time in
        memmove.  Large bytes need no copy, but the same holds for the kernel's: what a
        protocol writes is mostly what it was just handed, which a large read brought into the
        cache moments ago (poll_done); by the next enter, after the iteration's other large
        reads, it is gone (Protocol echo 100 KiB x 100: the inline reads and this together
        gave 1.32x the requests per second of the build before; the reads alone 0.83x of
        that).  So with nothing in flight or queued (order),
        data of WRITE_THROUGH_MIN bytes or more is offered to the socket at once, as the stock
        loop and uvloop offer every write: one send(2) with MSG_DONTWAIT, and only what the
        socket did not take is submitted (mutable data copied first).  Smaller data is not --
        a copy of a few KiB is cheaper than a system call, and the sends of an iteration still
        leave in one io_uring_enter -- unless there is little to batch with (send_at_once)."""
        cdef Py_buffer view
        cdef Py_ssize_t sent
        cdef bint unbatched, immutable
        if self.send_op is not None or self.write_q or self.sock is None:
            return _pinnable(data)
        unbatched = self.proactor.little_to_batch()
        immutable = _immutable(data)
        try:
            PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        except BufferError:
            return _pinnable(data)     # (write() refused a non-contiguous view already)
        try:
            if view.len < WRITE_THROUGH_MIN and not unbatched:
                if immutable:
                    return _pinnable(data)
                return PyBytes_FromStringAndSize(<char *>view.buf, view.len)
            sent = self.send_at_once(<char *>view.buf, view.len)
            if sent == view.len or sent < 0:
                return None
            if immutable:
                # Sliced in bytes: a view's items may be wider (memoryview.cast('i')).
                return memoryview(data).cast('B')[sent:] if sent else _pinnable(data)
            return PyBytes_FromStringAndSize(<char *>view.buf + sent, view.len - sent)
        finally:
            PyBuffer_Release(&view)

    def writelines(self, list_of_data):
        cdef list items = []
        cdef Py_ssize_t n = 0, size, i = 0
        cdef bint scattered = False
        if not _WRITELINES_IS_JOINED_WRITE:
            self.check_writable('writelines')
            if not list_of_data:
                return          # (as 3.12+'s: writelines(None) too is a write of nothing)
        elif type(list_of_data) is not list and type(list_of_data) is not tuple:
            # 3.10 / 3.11's writelines is write(b''.join(list_of_data)): join's TypeError.
            try:
                list_of_data = iter(list_of_data)
            except TypeError:
                raise TypeError('can only join an iterable') from None
        for data in list_of_data:
            if type(data) is not bytes:
                try:
                    data = memoryview(data)     # pinned below, unless the socket takes it
                except TypeError:
                    if _WRITELINES_IS_JOINED_WRITE:
                        raise TypeError(f'sequence item {i}: expected a bytes-like object, '
                                        f'{type(data).__name__} found') from None
                    raise
                if not data.c_contiguous:
                    if _WRITELINES_IS_JOINED_WRITE:
                        raise TypeError(f'sequence item {i}: expected a bytes-like object, '
                                        f'memoryview found')
                    scattered = True
            size = _nbytes(data)
            if size:
                items.append(data)
                n += size
            i += 1
        if _WRITELINES_IS_JOINED_WRITE:
            self.check_writable('write')
        if not items:
            return
        if self.write_dropped():
            return
        if scattered:
            self.fatal_error(not_contiguous_error(), 'Fatal write error on socket transport')
            return
        if (self.send_op is None and not self.write_q and self.sock is not None
                and (n >= WRITE_THROUGH_MIN or self.proactor.little_to_batch())):
            # The rule write() follows (write_through): offered to the socket at once.
            items = self.writelines_through(items, n)
            if items is None:
                return        # all sent, or the socket failed (reported as a fatal error)
            n = 0
            for data in items:
                n += _nbytes(data)
        else:
            for i in range(len(items)):
                if type(items[i]) is not bytes:
                    items[i] = _pinnable(items[i])
        if self.send_op is None and len(items) == 1:
            self.submit_send(items[0], n)
        else:
            if self.write_q is None:
                self.write_q = items
            else:
                self.write_q.extend(items)
            self.queued_bytes += n
            if self.send_op is None:
                self.submit_queued()
            else:
                self.join_unsent()
        self.maybe_pause_protocol()

    cdef int check_writable(self, str method) except -1:
        if self._eof:
            raise RuntimeError(f'Cannot call {method}() after write_eof()')
        if self.empty_waiter is not None:
            raise RuntimeError(f'unable to {method}; sendfile is in progress')
        return 0

    cdef object writelines_through(self, list items, Py_ssize_t n):
        """writelines()'s counterpart of write_through: one non-blocking sendmsg(2) of `items`
        (the first IOV_LIMIT of them), and what the socket did not take as a list of objects
        that cannot change (_pinnable: a mutable remainder is copied), or None when nothing is
        left or the send failed (reported as a fatal error).

        Why: without it a writelines() always became a send operation -- asyncio's
        StreamWriter.writelines(), and aiohttp's replies of 2 KiB or more (headers and body, on
        Python 3.12.9+ and 3.13.2+) -- so its bytes waited for the next io_uring_enter even
        with nothing to batch them with, large mutable items were copied first, and more than
        the high-water mark paused the protocol until the completion even when the socket took
        it whole (the stock loop sends at once and does not pause).  Measured (Protocol echo
        answering with writelines() of two halves, alternating 1 s runs against the build
        before): 1 KiB x 1 1.06x, 16 KiB x 10 1.01x, 100 KiB x 10 1.24x."""
        cdef Py_ssize_t count = len(items), k, i, got = 0
        cdef Py_ssize_t sent, left, size
        cdef Py_buffer *views
        cdef iovec *iov
        cdef msghdr msg
        cdef list rest
        k = count if count < IOV_LIMIT else IOV_LIMIT
        views = <Py_buffer *>PyMem_Malloc(k * (sizeof(Py_buffer) + sizeof(iovec)))
        if views == NULL:
            raise MemoryError()
        iov = <iovec *>(<char *>views + k * sizeof(Py_buffer))
        try:
            try:
                while got < k:
                    PyObject_GetBuffer(items[got], &views[got], PyBUF_SIMPLE)
                    iov[got].iov_base = views[got].buf
                    iov[got].iov_len = <size_t>views[got].len
                    got += 1
            except BufferError:
                sent = 0                # (not reached: writelines() refused those already)
            else:
                memset(&msg, 0, sizeof(msghdr))
                msg.msg_iov = iov
                msg.msg_iovlen = <size_t>k
                self.proactor.note_sent(self._sock_fd)
                sent = self.taken_at_once(
                    c_sendmsg(self._sock_fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL))
            if sent < 0 or sent == n:
                return None       # failed (reported), or all of it went
            # Skip what went out; the item the socket stopped in keeps its unsent tail.
            rest = []
            left = sent
            for i in range(count):
                data = items[i]
                size = _nbytes(data)
                if left >= size:
                    left -= size
                    continue
                if left:
                    data = memoryview(data).cast('B')[left:]    # in bytes, as in write_through
                    left = 0
                rest.append(_pinnable(data))
            return rest
        finally:
            for i in range(got):
                PyBuffer_Release(&views[i])
            PyMem_Free(views)

    cdef int submit_send(self, object data, Py_ssize_t n) except -1:
        cdef SendOp op
        if self.spare_sends.count:
            op = self.spare_sends.take()
            op.owner = self
            op.fd = self._sock_fd
        else:
            op = SendOp(self.proactor, self, self._sock_fd, self.sock)
        op.guards_fd = self.guards_fd       # (the loop's spares serve every transport)
        op.set_buffer(data, False)
        op.keep = self.sock
        self.inflight_bytes = n
        self.send_op = op
        op.submit()
        self.proactor.note_send(n, self.send_awaited())
        return 0

    cdef int submit_queued(self) except -1:
        cdef list q = self.write_q
        cdef Py_ssize_t k = len(q)
        cdef SendMsgOp op
        if self.socket_gone():
            return 0
        # The queue is dropped once it is empty: an idle connection holds no list.
        if k == 1:
            data = q[0]
            self.write_q = None
            k = self.queued_bytes
            self.queued_bytes = 0
            return self.submit_send(data, k)
        if k > IOV_LIMIT:
            k = IOV_LIMIT
        op = self.sendmsg_op()
        op.set_buffers(q, k)
        if k == len(q):
            self.write_q = None
        else:
            del q[:k]
        self.queued_bytes -= op.total
        self.inflight_bytes = op.total
        op.keep = self.sock
        self.send_op = op
        op.submit()
        self.proactor.note_send(op.total, self.send_awaited())
        return 0

    cdef SendMsgOp sendmsg_op(self):
        """The transport's vectored send operation, made on first use (one per transport: at
        most one send of a transport is in flight)."""
        if self.sendmsg_op_obj is None:
            self.sendmsg_op_obj = SendMsgOp(self.proactor, self, self._sock_fd, self.sock)
            self.sendmsg_op_obj.guards_fd = self.guards_fd
        return self.sendmsg_op_obj

    cdef int join_unsent(self) except -1:
        """The queue joins the send in flight when that one has not reached the kernel yet.

        Why: a protocol that writes twice in one callback -- an HTTP server's headers and then
        its body (uvicorn), a frame's header and its payload -- had its first write submitted
        as a send and the second queued behind it, to leave when the first one's completion
        came back: an iteration later, with an io_uring_enter and a completion more, the reply
        complete at its peer only then.  The stock loop and uvloop send both before the
        callback returns.  Until the iteration's enter the first send's SQE is still ours
        (Proactor.unsent), so the queue is added to it: one sendmsg for all, leaving with that
        enter (a SendOp gives its place to the transport's SendMsgOp; a SendMsgOp takes the
        new buffers itself).  A send the kernel has taken, a short send's rest, or a queue
        beyond IOV_LIMIT buffers stays as before: the queue leaves at the completion.
        Measured (Python 3.11, 1 KiB x 10 connections, 8 alternating rounds of 2 s against the
        build before and uvloop): the Protocol echo answering in two writes (benchmarks'
        `twowrites`) 1.95x the build before, 2.09x uvloop (the build before: 1.07x); uvicorn's
        hello world (`asgi`: headers and body are two writes) 1.25x the build before, 1.27x
        uvloop (the build before: 1.01x)."""
        cdef Operation op = self.send_op
        cdef SendOp single
        cdef SendMsgOp msg
        cdef list q = self.write_q
        cdef Py_ssize_t k = len(q)
        if not self.proactor.unsent(op):
            return 0
        if type(op) is SendOp:
            single = <SendOp>op
            msg = self.sendmsg_op()
            if single.offset or k + 1 > IOV_LIMIT or msg.state != OP_IDLE:
                return 0
            q.insert(0, single.obj)
            try:
                msg.set_buffers(q, k + 1)
            except MemoryError:
                del q[0]        # (the queue then leaves at the completion, as without this)
                return 0
            msg.keep = self.sock
            self.proactor.swap_unsent(single, msg)
            self.send_op = msg
            single.release()                # (never reached the kernel: nothing to wait for)
            if self.spare_sends.give(single):
                single.owner = None
        else:
            msg = <SendMsgOp>op              # (a transport's sends are one or the other)
            if msg.count + k > IOV_LIMIT:
                return 0
            try:
                msg.add_buffers(q, k)
            except MemoryError:
                return 0        # (it took none of them: as above)
            self.proactor.prep_again(msg)
        self.write_q = None
        k = self.queued_bytes
        self.queued_bytes = 0
        self.inflight_bytes += k
        self.proactor.note_joined(k)
        return 0

    cdef bint send_awaited(self) noexcept:
        # Whether someone waits for the send just submitted to complete: a paused protocol (or
        # one about to be), drain()/sendfile's empty waiter, or a close() waiting to finish.
        return (self.inflight_bytes + self.queued_bytes > self.high_water or self._closing
                or self.paused_protocol is not None or self.empty_waiter is not None)

    cdef int send_progress(self, Operation op, int res) except -1:
        """The send in flight was short by the socket's room and has resubmitted its rest:
        the `res` bytes it moved leave the write buffer now.

        Why: the stock transport's buffer shrinks with each send(2) of its writer callback,
        and it resumes a paused protocol as soon as the buffer is down to the low-water mark.
        Counted off only at the completion of the whole send, a protocol paused by a large
        write stayed paused while its peer read all but the last part of it -- and for good
        when that peer then waited for something from the protocol (a drain() that never
        returned: 250 KB still counted where the stock transport held 36 KB and had resumed)."""
        if op is not self.send_op or self.conn_lost or self.proactor.closing:
            return 0
        self.inflight_bytes -= res
        if self.inflight_bytes < 0:
            self.inflight_bytes = 0
        self.maybe_resume_protocol()
        return 0

    cdef int send_done(self, Operation op, int res) except -1:
        if op is not self.send_op:
            return 0
        self.send_op = None
        if self.conn_lost or self.sock is None or self.proactor.closing:
            return 0          # aborted: the queue is gone and nobody waits
        if res < 0:
            if (res == -ECONNRESET and not self.receive_pending()
                    and self.sock.family == _AF_UNIX):
                # A unix peer that closed with our bytes unread: a send that was waiting for
                # room in the kernel wakes to the reset it left, while the stock loop's send,
                # made when its writer callback runs -- reading stopped or paused, no reader to
                # meet the reset first -- finds the connection shut and gets EPIPE.
                res = -EPIPE
            exc = os_error(-res)
            self.write_q = None
            self.queued_bytes = 0
            self.inflight_bytes = 0
            if res == -EPIPE and self.receive_pending():
                # The peer is gone.  A receive of ours is in flight, and what it brings -- most
                # often in this same batch of completions, after this one -- says why: a peer
                # that closed with our bytes unread (AF_UNIX) resets the connection, and the
                # stock loop, whose reader runs before its writer, ends it with that
                # ConnectionResetError.  The broken pipe is reported only if nothing else has
                # ended the transport by the ready queue's next pass.
                self.loop.call_soon(self._end_with_broken_pipe, exc)
            else:
                self.fatal_error(exc, 'Fatal write error on socket transport')
            if self.empty_waiter is not None and not self.empty_waiter.done():
                self.empty_waiter.set_exception(exc)
            return 0
        self.inflight_bytes = 0
        if type(op) is SendOp and self.spare_sends.give(<SendOp>op):
            # Back to the loop's spares, unless they are full.  The Proactor releases its buffer
            # when this handler returns, unless a write below (here or on another transport) has
            # already taken it again and submitted it with a new one.  Only this completed path
            # gives it back: an aborted send may be completing from inside cancel(), which
            # releases the buffer regardless of a resubmission.
            op.owner = None
        if self.write_q:
            self.submit_queued()
        self.maybe_resume_protocol()      # may write more
        if self.send_op is None:
            if self.empty_waiter is not None and not self.empty_waiter.done():
                self.empty_waiter.set_result(None)
            if self._closing:
                # (Unless resume_writing() above closed or aborted the transport itself, which
                # has scheduled connection_lost() already.)
                if not self.conn_lost:
                    self.conn_lost += 1
                    self._call_connection_lost(None)
            elif self._eof:
                self.shutdown_after_sends()
        return 0

    cdef int shutdown_after_sends(self) except -1:
        """The shutdown(SHUT_WR) that write_eof() left for the last send's completion.

        The stock transport shuts down in the same callback as its last send(2), so a peer's
        reset meets the send and ends the connection quietly (a fatal error with the reset).
        Here the send completed in the kernel some time before this handler runs -- after the
        rest of its batch, whose callbacks may have reset the peer -- so the reset can meet the
        shutdown instead (ENOTCONN).  Raised from here it would reach the loop's exception
        handler as an error of the completion, leaving the transport open.  It ends the
        connection as the failed send would have: with the socket's pending error (the reset)
        when there is one."""
        cdef int err = 0
        try:
            self.sock.shutdown(_SHUT_WR)
        except OSError as exc:
            try:
                err = self.sock.getsockopt(_SOL_SOCKET, _SO_ERROR)
            except OSError:
                err = 0
            self.fatal_error(os_error(err) if err else exc,
                             'Fatal write error on socket transport')
        return 0

    def write_eof(self):
        if self._closing or self._eof:
            return
        self._eof = True
        if self.send_op is None:
            self.sock.shutdown(_SHUT_WR)

    def can_write_eof(self):
        return True

    # ---- write flow control (the _FlowControlMixin protocol) ----

    def get_write_buffer_size(self):
        return self.write_buffer_size()

    cdef Py_ssize_t write_buffer_size(self) noexcept:
        # The bytes in flight count (see the module docstring).
        return self.queued_bytes + self.inflight_bytes

    @property
    def _protocol_paused(self):
        return self.paused_protocol is not None

    @property
    def _conn_lost(self):
        return self.conn_lost

    # ---- loop.sendfile support (as the stock transport offers it) ----

    def _make_empty_waiter(self):
        if self.empty_waiter is not None:
            raise RuntimeError("Empty waiter is already set")
        self.empty_waiter = self.loop.create_future()
        if self.send_op is None:
            self.empty_waiter.set_result(None)
        return self.empty_waiter

    def _reset_empty_waiter(self):
        self.empty_waiter = None
