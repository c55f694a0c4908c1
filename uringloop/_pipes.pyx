# cython: language_level=3
"""connect_read_pipe / connect_write_pipe as io_uring completions (and the pipes of subprocesses).

The read transport keeps one read(2) in the kernel into a 256 KiB buffer it lends for the duration
(the stock transport's max_size); the completion copies the bytes out, resubmits the read and
calls protocol.data_received() directly.  A completion of 0 bytes is end-of-file: eof_received()
and connection_lost(None) follow from the ready queue, as with the stock transport.

The write transport first offers a write to the pipe at once, with nothing in flight, as the stock
transport's os.write() does (write_now: one write that cannot sleep), and submits a write(2) of
what the pipe did not take; what the protocol writes while that is in the kernel is gathered and
goes out as the next single write.  A pipe may accept part of a write (a full pipe, a pipe with
more room than the request...): the rest is submitted again from the completion.  Bytes accepted
but not yet written drive the protocol's write flow control.  A second, one-shot poll on the write
end (POLLIN, which a pipe's write end never reports; POLLERR/POLLHUP are always reported) completes
when the reading end is closed, so the transport learns of a vanished reader without writing, as
the stock transport does with its reader callback on the write end.

Sockets handed to these APIs use recv(2)/send(2) instead of read(2)/write(2) (their file status
flags do not matter to io_uring's socket operations).  Pipes and character devices are switched
to *blocking* mode, where the stock loop switches them to non-blocking: io_uring waits for a
blocking pollable file with its internal poll, whereas kernels before 6.x complete a read on an
O_NONBLOCK file with -EAGAIN, which would turn the wait into resubmissions.  (Blocking mode is
also what the other users of a shared descriptor such as stdin expect.)  A tty gets a second,
non-blocking description of the transport's own: it is read and written through that, after a
poll on the ring says it is ready, never through a request the tty could sleep in
(_open_tty_again).  A tty without one (a pty's master end) is written the same way through the
shared description, made non-blocking for each write alone (write_without_sleeping).

As everywhere in uringloop, the pipe is closed only when the kernel holds no operation that names
its descriptor any more.
"""

cimport cython
from cpython.bytes cimport PyBytes_FromStringAndSize

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from uringloop._sys cimport (ECANCELED, EAGAIN, EINTR, EPIPE, EOPNOTSUPP, POLLIN, POLLOUT,
                             UL_OP_READ, UL_OP_WRITE, errno, ul_write_nowait,
                             F_GETFL, F_SETFL, O_NONBLOCK, c_fcntl)
from uringloop._proactor cimport Proactor, Operation, OP_IDLE, os_error
from uringloop._ops cimport BufferOp, RecvOp, SendOp, ReadWriteOp, PollOp
from uringloop._flow cimport TransportCore, not_contiguous_error, queued_not_contiguous_error
from uringloop._flow import CoreTransportMixin, CoreReadingMixin, CoreWritingMixin

cdef extern from "<sys/socket.h>" nogil:
    int MSG_NOSIGNAL
    int MSG_DONTWAIT
    ssize_t c_send "send"(int fd, const void *buf, size_t n, int flags)

cdef extern from "<unistd.h>" nogil:
    ssize_t c_write "write"(int fd, const void *buf, size_t n)
    ssize_t c_read "read"(int fd, void *buf, size_t n)
    int c_close "close"(int fd)

import errno as _errno
import os
import stat as _stat

from asyncio import transports as _transports
from asyncio.log import logger as _logger

cdef Py_ssize_t MAX_READ = 256 * 1024


cdef class PipeCore(TransportCore):

    def __cinit__(self):
        self.tty_fd = -1
        self.own_fd = -1

    def __init__(self, loop, transport, pipe, int fd, protocol, bint is_socket):
        TransportCore.__init__(self, loop, transport, protocol)
        self.pipe = pipe
        self.fd = fd
        # Requests name a descriptor of the transport's own, not the caller's number: the
        # caller may close its file object (or a dup2() may replace the number) while a read or
        # write is queued for the next io_uring_enter or waits for its rest, and the number
        # then names whatever file took it -- the transport would read another pipe's bytes or
        # write into it.  This one is closed only in close_pipe(), once nothing in the kernel
        # names it.  (The pipe itself then stays open until the transport is closed, as a
        # socket's connection stays open under a request in flight.)
        self.own_fd = os.dup(fd)
        self.is_socket = is_socket

    def __dealloc__(self):
        if self.tty_fd >= 0:
            c_close(self.tty_fd)
        if self.own_fd >= 0:
            c_close(self.own_fd)      # never closed (the operations pin us while in flight)

    cdef int schedule_connection_lost(self, object exc) except -1:
        if not self.lost_scheduled:
            self.lost_scheduled = True
            self.loop.call_soon(self.call_connection_lost, exc)
        return 0

    cdef bint busy(self):
        return False

    cdef int release_if_idle(self) except -1:
        if self.lost and self.pipe is not None and not self.busy():
            self.close_pipe()
            self.let_go_of_the_loop()
        return 0

    cdef int close_pipe(self) except -1:
        cdef object pipe = self.pipe
        cdef int tty_fd = self.tty_fd
        cdef int own_fd = self.own_fd
        if tty_fd >= 0:
            self.tty_fd = -1
            c_close(tty_fd)
        if own_fd >= 0:
            self.own_fd = -1
            c_close(own_fd)
        self.pipe = None
        pipe.close()
        return 0

    def close_unclosed(self):
        """The transport object is being collected without close(): release the pipe."""
        if self.pipe is None:
            return False
        self.close_pipe()
        return True

    @property
    def fd_open(self):
        return self.pipe is not None


@cython.final
cdef class ReadPipeCore(PipeCore):

    def __init__(self, loop, transport, pipe, int fd, protocol, bint is_socket):
        PipeCore.__init__(self, loop, transport, pipe, fd, protocol, is_socket)
        self.buf = bytearray(MAX_READ)
        if is_socket:
            self.read_op = RecvOp(self.proactor, self, self.own_fd, None)
        else:
            self.read_op = ReadWriteOp(self.proactor, self, self.own_fd, None)
            (<ReadWriteOp>self.read_op).opcode = UL_OP_READ
            (<ReadWriteOp>self.read_op).position = -1     # the file's own (stream) position
        self.read_wait = self.read_op
        if not is_socket and os.isatty(fd):
            self.tty_fd = _open_tty_again(fd, os.O_RDONLY)
            if self.tty_fd >= 0:
                self.read_wait = PollOp(self.proactor, self, self.own_fd, None)
                (<PollOp>self.read_wait).events = POLLIN
                self.read_op.set_buffer(self.buf, True)    # tty_read's target; never submitted

    cdef bint busy(self):
        return self.read_wait.state != OP_IDLE

    def start_reading(self):
        """Scheduled right after protocol.connection_made()."""
        if not self.closing and not self.paused:
            self.start_receive()

    cdef int start_receive(self) except -1:
        """Submit the read (or, for a tty with a description of its own, the wait for input)."""
        cdef Operation op = self.read_wait
        if op.state != OP_IDLE or self.proactor.closing or self.pipe is None:
            return 0
        if not self.read_op.has_view:
            self.read_op.set_buffer(self.buf, True)
        op.submit()         # (names own_fd: nothing to pin in op.keep, see PipeCore)
        return 0

    cdef int tty_read(self) except? -1:
        """The tty has input (a POLLIN completion): read what it holds into the buffer without
        sleeping; return the count or -errno, as the completion of a read(2) would be."""
        cdef ssize_t n = c_read(self.tty_fd, self.read_op.view.buf, <size_t>self.read_op.view.len)
        return <int>n if n >= 0 else -errno

    cdef bint completion_failed(self, Operation op, object exc) except -1:
        self.fatal_error(exc, 'Fatal read error on pipe transport')
        return True

    cdef int completed(self, Operation op, int res, unsigned flags) except -1:
        cdef object data
        if op is not self.read_op and res >= 0 and not self.closing:
            res = self.tty_read()
            if res == -EAGAIN or res == -EINTR:
                res = -ECANCELED            # another reader took it: wait again (below)
        if res == -ECANCELED:
            if not self.closing and not self.paused and not self.stash:
                self.start_receive()
        elif self.closing:
            pass                    # completed after close(): the stock loop would not read it
        elif res < 0:
            self.fatal_error(os_error(-res), 'Fatal read error on pipe transport')
        elif self.paused or self.stash:
            self.stash.append(PyBytes_FromStringAndSize(<char *>self.read_op.view.buf, res))
        elif res == 0:
            # As the stock transport's reader, which runs from the ready queue -- behind what
            # the pass before the poll queued -- and then schedules eof_received() and
            # connection_lost(): one hop here, the other in got_eof().  (Straight from the
            # completion, the EOF came a pass early.)
            self.loop.call_soon(self.eof_read)
        else:
            # Delivered before the next read is armed: a protocol that closes the transport
            # (or pauses it) in data_received() leaves whatever else the pipe holds in the pipe,
            # for the other readers of a shared pipe, as the stock transport does -- a read
            # submitted first would have taken it before the close could cancel it.
            # The next read is armed from the ready queue (receive_again), behind what
            # data_received() queued: a pause_reading() one callback later -- a subprocess's
            # pipe_data_received() always is one, and the StreamReader behind it pauses there
            # -- then finds no read in the kernel, and the pipe keeps what comes next, as with
            # the stock transport.  (Armed here, the read took up to one more buffer-full
            # before the pause could cancel it: a child writing to a paused reader could
            # write 128 KiB past what was delivered where the stock loop lets it write 64.)
            # It costs no time: a read armed here would have waited for the next enter too.
            data = PyBytes_FromStringAndSize(<char *>self.read_op.view.buf, res)
            try:
                self.got_data(data)
            finally:
                # Also when data_received() raised KeyboardInterrupt or SystemExit (which go
                # out to the caller of run_*()): a loop run again goes on reading, as the stock
                # transport's reader stays registered.
                if not self.closing and not self.paused and not self.stash:
                    self.loop.call_soon(self.receive_again)
                self.release_if_idle()
            return 0
        self.release_if_idle()
        return 0

    def eof_read(self):
        if not self.closing:
            if self.paused or self.stash:
                self.stash.append(b'')
            else:
                self.got_eof()

    def receive_again(self):
        """Scheduled after a read's data was delivered (see completed())."""
        if not self.closing and not self.paused and not self.stash:
            self.start_receive()

    cdef int got_data(self, object data) except -1:
        try:
            self.protocol.data_received(data)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self.callback_failed('data_received', (data,), exc)
        return 0

    cdef int got_eof(self) except -1:
        if self.loop.get_debug():
            _logger.info("%r was closed by peer", self.transport)
        self.closing = True
        self.loop.call_soon(self.protocol.eof_received)
        self.schedule_connection_lost(None)
        return 0

    cdef int deliver_stashed(self, object data) except -1:
        if data:
            return self.got_data(data)
        return self.got_eof()

    cdef int stop_receive(self) except -1:
        if self.read_wait.state != OP_IDLE:
            self.read_wait.cancel()
        return 0

    def close(self):
        if not self.closing:
            self.close_with(None)

    cdef int close_with(self, object exc) except -1:
        self.closing = True
        self.stash.clear()
        if self.read_wait.state != OP_IDLE:
            self.read_wait.cancel()
        self.schedule_connection_lost(exc)
        return 0

    cdef int fatal_error(self, object exc, str message) except -1:
        # A pty whose other side closed reports EIO: an ordinary end, not worth a report.
        self.report_fatal_error(exc, message,
                                isinstance(exc, OSError) and exc.errno == _errno.EIO)
        self.close_with(exc)
        return 0

    @property
    def reading(self):
        return self.read_wait.state != OP_IDLE


@cython.final
cdef class WritePipeCore(PipeCore):

    def __init__(self, loop, transport, pipe, int fd, protocol, bint is_socket,
                 bint watch_hangup):
        PipeCore.__init__(self, loop, transport, pipe, fd, protocol, is_socket)
        self.pending = bytearray()
        if is_socket:
            self.write_op = SendOp(self.proactor, self, self.own_fd, None)
        else:
            self.write_op = ReadWriteOp(self.proactor, self, self.own_fd, None)
            (<ReadWriteOp>self.write_op).opcode = UL_OP_WRITE
            (<ReadWriteOp>self.write_op).position = -1
        if watch_hangup:
            self.hangup_poll = PollOp(self.proactor, self, self.own_fd, None)
            self.hangup_poll.events = POLLIN
        self.write_wait = self.write_op
        if not is_socket and not watch_hangup and os.isatty(fd):
            # A tty waits for room with a poll and writes without sleeping (see submit_rest):
            # through a description of its own, or -- where there is none (a pty's master end,
            # no /proc) -- through the shared one, made non-blocking for the write alone
            # (write_without_sleeping).
            self.tty_fd = _open_tty_again(fd, os.O_WRONLY)
            self.write_wait = PollOp(self.proactor, self, self.own_fd, None)
            (<PollOp>self.write_wait).events = POLLOUT

    cdef bint busy(self):
        return self.write_wait.state != OP_IDLE or (
            self.hangup_poll is not None and self.hangup_poll.state != OP_IDLE)

    def start_watching(self):
        """Scheduled right after protocol.connection_made()."""
        if self.hangup_poll is not None and not self.closing and not self.proactor.closing \
                and self.pipe is not None and self.hangup_poll.state == OP_IDLE:
            self.hangup_poll.submit()

    def write(self, data):
        cdef Py_ssize_t n
        if not isinstance(data, (bytes, bytearray, memoryview)):
            # The stock transport asserts this; the same exception type for the same misuse.
            raise AssertionError(repr(data))
        if type(data) is not bytes:
            if type(data) is memoryview and not (<memoryview>data).c_contiguous:
                return self.refuse_scattered(data)
            data = memoryview(data).cast('B')
        n = len(data)
        if n == 0:
            return
        if self.conn_lost or self.closing:
            self.count_lost_write('pipe closed by peer or os.write(pipe, data) raised exception.')
            return
        if self.write_wait.state == OP_IDLE:
            data = self.write_now(data)
            if data is None:
                return          # all written, or the pipe failed (reported as a fatal error)
            n = len(data)
            self.start_write(data)
        else:
            self.pending += data
        self.buffer_size += n
        self.maybe_pause_protocol()

    cdef object refuse_scattered(self, object view):
        """write() of a view that is not contiguous (a slice with a step), refused as the stock
        transport's write() refuses it: os.write() raises BufferError there, a fatal write
        error, when nothing is queued; queued behind other bytes, the bytearray it is added to
        raises TypeError to the caller.  Nothing of it is written either way."""
        if not view:
            return None
        if self.conn_lost or self.closing:
            self.count_lost_write('pipe closed by peer or os.write(pipe, data) raised exception.')
            return None
        if self.write_wait.state != OP_IDLE:
            raise queued_not_contiguous_error(view, False)
        self.fatal_error(not_contiguous_error(), 'Fatal write error on pipe transport')
        return None

    cdef object write_now(self, object data):
        """Offer `data` to the pipe at once, as the stock transport's write() does with
        os.write(); return what it did not take, as bytes (the kernel reads a submitted buffer
        after write() has returned, and the caller may change anything but bytes by then), or
        None when nothing is left.

        Why not only submit: the stock loop's write() puts the bytes in the pipe before it
        returns, and programs rely on it -- a write followed by a blocking read of the other end
        on the same thread (CPython's test_write_pipe does that) would otherwise wait forever
        for bytes only the loop's next iteration would hand to the kernel.  The fd stays in
        blocking mode (the ring waits on it), so the attempt must not sleep: RWF_NOWAIT for
        pipes, MSG_DONTWAIT for sockets, and for a tty, which refuses RWF_NOWAIT (EOPNOTSUPP),
        write(2) through a non-blocking description of its own (see _open_tty_again); a
        character device without one has its writes only submitted.  Only with nothing in
        flight, which keeps the order of the bytes."""
        cdef Py_buffer view
        cdef ssize_t done
        cdef int err
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            if self.is_socket:
                done = c_send(self.own_fd, view.buf, <size_t>view.len, MSG_DONTWAIT | MSG_NOSIGNAL)
                err = errno
            elif self.write_wait is not self.write_op or self.refuses_nowait:
                done = self.write_without_sleeping(<char *>view.buf, <size_t>view.len)
                err = <int>-done
            else:
                done = ul_write_nowait(self.own_fd, view.buf, <size_t>view.len)
                err = errno
                if done < 0 and err == EOPNOTSUPP:
                    # A character device that refuses RWF_NOWAIT (/dev/full...): offered the
                    # write the stock transport makes, with O_NONBLOCK, from now on.
                    self.refuses_nowait = True
                    done = self.write_without_sleeping(<char *>view.buf, <size_t>view.len)
                    err = <int>-done
            if done == view.len:
                return None
            if done < 0:
                if err != EAGAIN and err != EINTR:
                    self.conn_lost += 1
                    self.fatal_error(os_error(err), 'Fatal write error on pipe transport')
                    return None
                done = 0
            if done == 0 and type(data) is bytes:
                return data
            return PyBytes_FromStringAndSize(<char *>view.buf + done, view.len - done)
        finally:
            PyBuffer_Release(&view)

    cdef int start_write(self, object data) except -1:
        self.inflight = data
        self.inflight_done = 0
        self.submit_rest()
        return 0

    cdef int submit_rest(self) except -1:
        """Hand what is left of self.inflight to the kernel: as a write(2), or for a tty as a
        wait for room in it, after which tty_write() writes what fits.

        Why a tty waits instead of writing: io_uring writes to a pollable file that lacks
        FMODE_NOWAIT (a tty) inline in the io_uring_enter as soon as poll reports room, trusting
        the write not to sleep -- but a tty's write sleeps whenever the data outgrows that room,
        so a large write to a slow terminal held the loop's thread inside io_uring_enter until
        the other end had read it all (300 KB to a pty read at 400 KB/s: 0.7 s without a
        callback; the stock loop writes what fits and waits for its writer callback)."""
        cdef Operation op = self.write_wait
        if op is self.write_op:
            if self.inflight_done:
                self.write_op.set_buffer(memoryview(self.inflight)[self.inflight_done:], False)
            else:
                self.write_op.set_buffer(self.inflight, False)
        op.submit()
        return 0

    cdef int tty_write(self, int res) except? -1:
        """The tty has room (a POLLOUT completion `res`): write what fits of the rest of
        self.inflight without sleeping; return the count written or -errno, as the completion of
        a write(2) would be."""
        cdef Py_buffer view
        cdef ssize_t done
        if res < 0:
            return res
        PyObject_GetBuffer(self.inflight, &view, PyBUF_SIMPLE)
        try:
            done = self.write_without_sleeping(<char *>view.buf + self.inflight_done,
                                               <size_t>(view.len - self.inflight_done))
            if done == -EAGAIN or done == -EINTR:
                return 0            # the room went to another writer: wait again
            return <int>done
        finally:
            PyBuffer_Release(&view)

    cdef ssize_t write_without_sleeping(self, const char *buf, size_t n) noexcept:
        """write(2) that cannot sleep, for a tty or a device that refuses RWF_NOWAIT: the count
        written or -errno.

        Through the tty's own non-blocking description where there is one (_open_tty_again);
        else through the transport's descriptor with O_NONBLOCK set on the shared description
        for this one write, and its flags put back right after.  Why not leave it set, as the
        stock transport does: the descriptor stays blocking for the ring's requests and for
        the other users of the description (see the module docstring).  A read of the same
        description sleeping in the kernel meanwhile (a pty master's read transport) that wakes
        inside that window completes with -EAGAIN, which the proactor resubmits."""
        cdef int flags
        cdef ssize_t done
        if self.tty_fd >= 0:
            done = c_write(self.tty_fd, buf, n)
            return done if done >= 0 else -errno
        flags = c_fcntl(self.own_fd, F_GETFL)
        if flags < 0:
            return -errno
        if not (flags & O_NONBLOCK) and c_fcntl(self.own_fd, F_SETFL, flags | O_NONBLOCK) < 0:
            return -errno
        done = c_write(self.own_fd, buf, n)
        if done < 0:
            done = -errno
        if not (flags & O_NONBLOCK):
            c_fcntl(self.own_fd, F_SETFL, flags)
        return done

    cdef bint completion_failed(self, Operation op, object exc) except -1:
        self.fatal_error(exc, 'Fatal write error on pipe transport')
        return True

    cdef int completed(self, Operation op, int res, unsigned flags) except -1:
        if op is self.write_op:
            self.write_done(res)
        elif op is self.write_wait:
            # A poll that completed before abort()'s cancel reached it writes nothing more (as
            # the read side reads nothing once closing); write_done() then drops the rest.
            self.write_done(-ECANCELED if self.lost_scheduled else self.tty_write(res))
        elif res >= 0 and not self.closing:
            # The reading end went away.  Acted on from the ready queue, as the stock
            # transport's reader callback on the write end is: behind the callbacks already
            # queued.  Among them may be the wake-up of the task that awaited
            # connect_write_pipe() (the poll starts with the pass of the ready queue that
            # resolves its waiter, and a reader closed beforehand completes it in the very next
            # enter); that task must find the transport open and learn of the vanished reader
            # from its first write(), connection_lost(BrokenPipeError), as on the stock loop --
            # not find it closed, its write dropped and connection_lost(None).
            if self.proactor.closing:
                self.reader_gone()      # the loop is closing: nothing runs after this
            else:
                self.loop.call_soon(self.reader_gone)
        self.release_if_idle()
        return 0

    def reader_gone(self):
        if self.closing or self.pipe is None:
            return                      # a write found out first, or the transport was closed
        if self.loop.get_debug():
            _logger.info("%r was closed by peer", self.transport)
        self.close_with(BrokenPipeError() if self.buffer_size else None)

    cdef int write_done(self, int res) except -1:
        cdef object data
        if res == -ECANCELED or self.lost_scheduled:
            self.inflight = None
            return 0
        if res < 0:
            self.inflight = None
            if res == -EPIPE and self.hangup_poll is not None:
                # The reading end went away under this write.  The stock transport watches for
                # that with a reader (as hangup_poll does here), which epoll calls before the
                # writer for the one event that tells both: connection_lost(BrokenPipeError()),
                # not a fatal write error.  The hang-up's completion may come after this one.
                if self.loop.get_debug():
                    _logger.info("%r was closed by peer", self.transport)
                self.close_with(BrokenPipeError())
                return 0
            self.pending.clear()
            self.buffer_size = 0
            self.conn_lost += 1
            self.fatal_error(os_error(-res), 'Fatal write error on pipe transport')
            return 0
        self.buffer_size -= res
        self.inflight_done += res
        if self.inflight_done < len(self.inflight) and not self.proactor.closing:
            # A partial write (pipes and ttys; SendOp finishes sends itself).
            self.submit_rest()
            self.maybe_resume_protocol()
            return 0
        self.inflight = None
        if self.pending and not self.proactor.closing:
            data = bytes(self.pending)
            self.pending.clear()
            self.start_write(data)
        self.maybe_resume_protocol()    # may write more
        if self.closing and self.write_wait.state == OP_IDLE and not self.pending:
            # write_eof()/close() was waiting for the buffer to drain.
            if self.hangup_poll is not None and self.hangup_poll.state != OP_IDLE:
                self.hangup_poll.cancel()
            self.schedule_connection_lost(None)
        return 0

    def can_write_eof(self):
        return True

    def write_eof(self):
        if self.closing:
            return
        self.closing = True
        # buffer_size too: a write the loop's close cancelled left its bytes unwritten, and with
        # bytes unwritten the stock transport waits for its buffer to drain, which on a closed
        # loop never happens -- as here: nothing is scheduled (a close() from a finalizer after
        # loop.close() raised "Event loop is closed").
        if self.write_wait.state == OP_IDLE and not self.pending and self.buffer_size == 0:
            if self.hangup_poll is not None and self.hangup_poll.state != OP_IDLE:
                self.hangup_poll.cancel()
            self.schedule_connection_lost(None)

    def close(self):
        if self.pipe is not None and not self.closing:
            self.write_eof()

    def abort(self):
        self.close_with(None)

    cdef int close_with(self, object exc) except -1:
        self.closing = True
        self.pending.clear()
        self.buffer_size = 0
        if self.write_wait.state != OP_IDLE:
            self.write_wait.cancel()
        if self.hangup_poll is not None and self.hangup_poll.state != OP_IDLE:
            self.hangup_poll.cancel()
        self.schedule_connection_lost(exc)
        return 0

    cdef int fatal_error(self, object exc, str message) except -1:
        self.report_fatal_error(exc, message, isinstance(exc, OSError))
        self.close_with(exc)
        return 0

    @property
    def writing(self):
        return self.write_wait.state != OP_IDLE


cdef int _open_tty_again(int fd, int access) except -2:
    """A second, non-blocking open file description of the tty `fd` names, opened for `access`
    (O_RDONLY or O_WRONLY) -- for the reads and writes a tty's pipe transport makes; -1 where
    there is none to be had.

    Why: the stock transports read and write a tty without ever sleeping -- they switch the
    shared description to O_NONBLOCK for good, which the shell and every other process on the
    same terminal then see (and which is why this module keeps descriptors blocking).  io_uring
    offers no read or write of a tty that cannot sleep: a tty has no FMODE_NOWAIT, so the ring
    does the request inline in io_uring_enter as soon as poll says ready, and the tty then
    sleeps in the loop's thread -- a write for whatever does not fit (see submit_rest), a read
    in non-canonical mode with VMIN > 1 and VTIME > 0 until VMIN bytes or the timer (1 s
    stalls measured with VTIME=10).  And a submitted write leaves only at the next enter, so a
    program that wrote to a pty and then read its master end on the same thread waited forever
    (CPython's test_write_pty and test_bidirectional_pty).  Opening the device again through
    /proc/self/fd gives a description of our own, where O_NONBLOCK touches nobody else: the
    transport waits with a poll on the ring and reads or writes through it.  Not for the pty
    master (/dev/ptmx, 5:2): opening it again creates a new pty.  Nor where the caller's
    descriptor lacks the access the transport wants (a write transport on a tty opened
    O_RDONLY): the stock transport's write fails there with EBADF, and a description opened
    anew would write all the same.  Where there is none, the tty's reads are submitted as a
    pipe's are, and its writes go through the shared description (write_without_sleeping)."""
    cdef object st = os.fstat(fd)
    if os.major(st.st_rdev) == 5 and os.minor(st.st_rdev) == 2:
        return -1
    if (c_fcntl(fd, F_GETFL) & os.O_ACCMODE) not in (access, os.O_RDWR):
        return -1
    try:
        tty_fd = os.open(f'/proc/self/fd/{fd}',
                         access | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return -1       # no /proc, no permission, an exclusive tty (TIOCEXCL)...: submit only
    if os.fstat(tty_fd).st_rdev != st.st_rdev:
        os.close(tty_fd)
        return -1
    return tty_fd


cdef tuple _adopt_pipe(object pipe, str wrong_kind):
    """(fd, is_fifo, is_socket) of a pipe, socket or character device a transport takes over,
    switched to the blocking mode this module wants (see the module docstring)."""
    fileno = pipe.fileno()
    mode = os.fstat(fileno).st_mode        # (first, for the stock TypeError of a wrong fileno())
    cdef int fd = fileno
    is_fifo, is_socket = _stat.S_ISFIFO(mode), _stat.S_ISSOCK(mode)
    if not (is_fifo or is_socket or _stat.S_ISCHR(mode)):
        raise ValueError(wrong_kind)
    os.set_blocking(fd, is_socket == False)
    return fd, is_fifo, is_socket


class UringReadPipeTransport(CoreTransportMixin, CoreReadingMixin, _transports.ReadTransport):
    """asyncio.ReadTransport for a pipe, socket or character device, on io_uring."""

    max_size = MAX_READ

    def __init__(self, loop, pipe, protocol, waiter=None, extra=None):
        super().__init__(extra)
        self._core = None
        self._extra['pipe'] = pipe
        self._loop = loop
        fd, is_fifo, is_socket = _adopt_pipe(pipe, "Pipe transport is for pipes/sockets only.")
        core = ReadPipeCore(loop, self, pipe, fd, protocol, is_socket)
        self._core = core
        self._announce(loop, protocol, waiter, core.start_reading)

    def __repr__(self):
        core = self._core
        info = self._repr_info()
        if core is not None and core.fd_open:
            if self._loop.is_closed():
                # As the stock transport: a loop closed under an open pipe says only that.
                info.append('open')
            else:
                # The stock transport's words: 'polling' while its fd is registered for reading
                # (not paused, not closing -- is_reading()).
                info.append('polling' if not core.closing and not core.paused else 'idle')
        else:
            info.append('closed')       # (the stock repr says it at both ends)
        return '<{}>'.format(' '.join(info))


class UringWritePipeTransport(CoreTransportMixin, CoreWritingMixin, _transports.Transport):
    """asyncio.WriteTransport for a pipe, socket or character device, on io_uring.  An
    asyncio.Transport, as the stock one (through _FlowControlMixin) is: pause_reading(),
    resume_reading() and is_reading() raise NotImplementedError there, and here."""

    def __init__(self, loop, pipe, protocol, waiter=None, extra=None):
        super().__init__(extra)
        self._core = None
        self._extra['pipe'] = pipe
        self._loop = loop
        fd, is_fifo, is_socket = _adopt_pipe(
            pipe, "Pipe transport is only for pipes, sockets and character devices")
        core = WritePipeCore(loop, self, pipe, fd, protocol, is_socket, is_socket or is_fifo)
        self._core = core
        self.write = core.write          # the hot path, without a Python-level method first
        self._announce(loop, protocol, waiter, core.start_watching, False)

    def __repr__(self):
        core = self._core
        info = self._repr_info()
        if core is not None and core.fd_open:
            if self._loop.is_closed():
                info.append('open')
            else:
                # 'polling' while bytes wait for the pipe (the stock transport's writer is
                # registered then).
                info.append('polling' if core.writing else 'idle')
                info.append(f'bufsize={core.buffer_size}')
        else:
            info.append('closed')
        return '<{}>'.format(' '.join(info))

    def write(self, data):
        # Replaced per instance by the core's method (see __init__); kept for introspection.
        self._core.write(data)

    def can_write_eof(self):
        return True

    def write_eof(self):
        self._core.write_eof()
