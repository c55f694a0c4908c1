# cython: language_level=3
"""sendfile on the ring: file -> pipe -> socket with IORING_OP_SPLICE, no byte through Python.

One SpliceSender per loop.sock_sendfile()/loop.sendfile() call alternates two splices until the
requested count is out or the file ends:

    FILL   splice(file at `offset` -> pipe)     the page-cache pages are referenced, not copied
    DRAIN  splice(pipe -> socket)               repeated until the pipe is empty again

io_uring runs splices in its worker threads (splice cannot be attempted without blocking), so a
cold file never stalls the loop; each step is submitted from the previous step's completion
handler and goes out with the loop's next io_uring_enter.

A full socket buffer is the exception.  splice() takes the non-blocking flag from the socket's
own file (asyncio sockets are non-blocking, and our duplicate shares that flag), so a DRAIN into
a receiver that stopped reading ends at once with -EAGAIN -- and unlike recv or send, a splice
does not arm a poll for its retry.  Resubmitting it, as the proactor does with other requests'
-EAGAIN, spun the loop at 100% CPU (~70k completions a second) for as long as the peer was slow,
and a cancel that landed between two of those completions found nothing to cancel.  So the
splice's -EAGAIN comes here (owner_sees_eagain) and the sender waits for the descriptor's
readiness with a POLL_ADD (`ready_op`) before the same step is submitted again:

    FILL/DRAIN --(-EAGAIN)--> WAIT (poll POLLIN on the file / POLLOUT on the socket) --> same step

Only one of the two operations is ever in the kernel, and cancelling cancels whichever it is.

Descriptor ownership: an operation that waits in io_uring's worker queue resolves its descriptor
numbers only when it runs.  The sender therefore works on its own duplicates of the file and
socket descriptors (and on its own pipe) and closes them only after the final completion of its
last operation -- the caller may close the socket or the file at any moment (a transport being
closed, a task being cancelled) without an in-flight splice ever touching a reused number.

The duplicate keeps the connection alive, though, so the caller's socket object is kept too
and asked before each new step whether it still has its number: a socket the caller closed
under a transfer ends it with OSError(EBADF), as sock_sendall() does, instead of streaming the
rest of the file into a connection its owner believes closed.

Errors mirror the stock loop's os.sendfile path: a failure before any byte was sent raises
SendfileNotAvailableError (loop.sock_sendfile then falls back to reading and sending), a failure
later raises the OSError itself (ENOTCONN normalised to ConnectionError), and the file position is
left just after the last byte sent.  A cancelled transfer leaves the position alone, as the stock
loop's does (its os.sendfile calls name the offset and never move it) -- and the caller resumes
only after the kernel's last splice has ended (`finished`, awaited by network._splice_file): a
splice running in an io_uring worker when the cancel comes may still move bytes, and none of
them may reach the socket after the caller was told the transfer is over, nor may a late lseek
undo what the caller does with the file in its `except CancelledError`.
"""

cimport cython

from uringloop._sys cimport *
from uringloop._proactor cimport Proactor, Completer, Operation, OP_IDLE, os_error
from uringloop._ops cimport SpliceOp, PollOp

import errno as _errno
import fcntl as _fcntl
import os

from asyncio import exceptions as _exceptions

# A bigger pipe moves more per splice pair; 1 MiB is the default unprivileged maximum
# (/proc/sys/fs/pipe-max-size).  The default 64 KiB is kept if the kernel refuses.
cdef int PIPE_SIZE = 1 << 20
cdef int _F_SETPIPE_SZ = getattr(_fcntl, 'F_SETPIPE_SZ', 1031)
cdef int _F_GETPIPE_SZ = getattr(_fcntl, 'F_GETPIPE_SZ', 1032)

cdef enum Stage:
    FILL = 0
    DRAIN = 1


@cython.final
cdef class SpliceSender(Completer):
    cdef Proactor proactor
    cdef object fut
    cdef object finished_fut       # done once neither operation is in the kernel any more
    cdef object sock               # the caller's socket: closed under us ends the transfer
    cdef int sock_number           # its number when the transfer began
    cdef SpliceOp op
    cdef PollOp ready_op           # waits for the descriptor a splice found not ready
    cdef int file_fd, sock_fd, pipe_r, pipe_w
    cdef long long offset          # next file offset to read
    cdef long long remaining       # bytes still wanted; -1: up to EOF
    cdef long long chunk           # largest FILL
    cdef readonly long long total_sent
    cdef long long in_pipe         # filled but not yet drained
    cdef int stage
    cdef bint started

    def __cinit__(self):
        # Before __init__ can fail (an offset or count too large for a long long, a closed
        # loop): __dealloc__ closes the descriptors that are not -1, and C zero-initialised
        # fields would have it close descriptor 0 -- the process's stdin, or whatever file
        # took its number since.
        self.file_fd = self.sock_fd = self.pipe_r = self.pipe_w = -1

    def __init__(self, loop, sock, int file_fd, long long offset, long long count):
        """Send from file_fd at offset (count bytes, or to EOF when count <= 0) to the socket
        `sock`.  Both descriptors are duplicated here; the caller keeps ownership of its own."""
        self.proactor = <Proactor>loop._proactor
        self.proactor.check_usable()
        self.file_fd = self.sock_fd = self.pipe_r = self.pipe_w = -1
        self.fut = loop.create_future()
        self.finished_fut = loop.create_future()
        self.offset = offset
        self.remaining = count if count > 0 else -1
        self.sock = sock
        self.sock_number = sock.fileno()
        try:
            self.file_fd = os.dup(file_fd)
            self.sock_fd = os.dup(self.sock_number)
            self.pipe_r, self.pipe_w = os.pipe2(os.O_CLOEXEC)
            try:
                _fcntl.fcntl(self.pipe_w, _F_SETPIPE_SZ, PIPE_SIZE)
            except OSError:
                pass
            self.chunk = _fcntl.fcntl(self.pipe_w, _F_GETPIPE_SZ)
        except BaseException:
            self.close_fds()
            raise
        self.op = SpliceOp(self.proactor, self, -1, None)
        self.op.owner_sees_eagain = True
        self.ready_op = PollOp(self.proactor, self, -1, None)

    @property
    def future(self):
        """The transfer's outcome: the bytes sent, or the exception."""
        return self.fut

    @property
    def finished(self):
        """Done once the kernel holds no splice or poll of this transfer any more."""
        return self.finished_fut

    def start(self):
        self.started = True
        self.fut.add_done_callback(self._on_future_done)
        self.fill()

    def abort(self, exc):
        """End the transfer with exc (its transport is being closed)."""
        if not self.fut.done():
            self.fut.set_exception(exc)
            self._on_future_done(self.fut)    # now, not a callback later: the close is now

    def _on_future_done(self, fut):
        # Cancelled or aborted (finish() completes it only once both operations are idle): the
        # final completion of whichever operation is in the kernel releases everything.
        if self.op.state != OP_IDLE:
            self.op.cancel()
        elif self.ready_op.state != OP_IDLE:
            self.ready_op.cancel()

    cdef int fill(self) except -1:
        cdef long long n = self.chunk
        if self.remaining >= 0 and self.remaining < n:
            n = self.remaining
        self.stage = FILL
        self.op.fd = self.file_fd
        self.op.off_in = self.offset
        self.op.fd_out = self.pipe_w
        self.op.off_out = -1
        self.op.nbytes = <unsigned>n
        self.op.submit()
        return 0

    cdef int drain(self) except -1:
        self.stage = DRAIN
        self.op.fd = self.pipe_r
        self.op.off_in = -1
        self.op.fd_out = self.sock_fd
        self.op.off_out = -1
        self.op.nbytes = <unsigned>self.in_pipe
        self.op.submit()
        return 0

    cdef int wait_ready(self) except -1:
        # The step that got -EAGAIN is submitted again when its descriptor is ready: the socket
        # can take more (DRAIN), or a non-regular input has data (FILL).
        if self.stage == FILL:
            self.ready_op.fd = self.file_fd
            self.ready_op.events = POLLIN
        else:
            self.ready_op.fd = self.sock_fd
            self.ready_op.events = POLLOUT
        self.ready_op.submit()
        return 0

    cdef int op_done(self, Operation op, int res, unsigned flags) except -1:
        if op is self.ready_op:
            if self.fut.done() or self.proactor.closing:
                return self.finish(None)
            if self.sock.fileno() != self.sock_number:
                return self.finish(os_error(EBADF))
            if res < 0:
                return self.finish(self.error(-res))
            # Ready, or in error (POLLERR/POLLHUP): the splice itself reports which.
            return self.fill() if self.stage == FILL else self.drain()
        if res > 0:
            if self.stage == FILL:
                self.offset += res
                if self.remaining > 0:
                    self.remaining -= res
                self.in_pipe = res
            else:
                self.in_pipe -= res
                self.total_sent += res
        if self.fut.done() or self.proactor.closing:
            return self.finish(None)           # cancelled (or the loop is closing): stop here
        if self.sock.fileno() != self.sock_number:
            # Closed by its owner (and maybe its number reused): nothing more goes out.
            return self.finish(os_error(EBADF))
        if res == -EAGAIN:
            return self.wait_ready()
        if res < 0:
            return self.finish(self.error(-res))
        if res == 0:
            if self.stage == FILL:
                return self.finish(None)       # end of file
            return self.finish(self.error(_errno.EPIPE))
        if self.in_pipe > 0:
            return self.drain()
        if self.remaining == 0:
            return self.finish(None)
        return self.fill()

    cdef object error(self, int err):
        if self.total_sent == 0:
            # Not a file splice can read (procfs, O_DIRECT...) or a socket it cannot write:
            # the stock loop falls back to read+send in that case, whatever the errno.
            # (In the stock loop's words, whose call it stands in for; the splice's own error
            # is the cause.)
            exc = _exceptions.SendfileNotAvailableError("os.sendfile call failed")
            exc.__cause__ = os_error(err)
            return exc
        if err == _errno.ENOTCONN:
            exc = ConnectionError("socket is not connected", _errno.ENOTCONN)
            exc.__cause__ = os_error(err)
            return exc
        return os_error(err)

    cdef int finish(self, object exc) except -1:
        try:
            if self.total_sent > 0 and not self.fut.cancelled():
                # The file position ends just after the last byte that went out, as with
                # os.sendfile in the stock loop (the duplicate shares the file's position).
                os.lseek(self.file_fd, self.offset - self.in_pipe, os.SEEK_SET)
        finally:
            self.close_fds()
            self.sock = None
            # Neither operation is in the kernel, and neither goes there again: they let go of
            # us, their owner -- a cycle that held the futures and, through them, the loop.
            self.op.owner = None
            self.ready_op.owner = None
            if not self.finished_fut.done():
                self.finished_fut.set_result(None)
        if not self.fut.done():
            if exc is None:
                self.fut.set_result(self.total_sent)
            else:
                self.fut.set_exception(exc)
        return 0

    cdef int close_fds(self) except -1:
        if self.file_fd >= 0:
            os.close(self.file_fd)
            self.file_fd = -1
        if self.sock_fd >= 0:
            os.close(self.sock_fd)
            self.sock_fd = -1
        if self.pipe_r >= 0:
            os.close(self.pipe_r)
            self.pipe_r = -1
        if self.pipe_w >= 0:
            os.close(self.pipe_w)
            self.pipe_w = -1
        return 0

    def __dealloc__(self):
        # Only reached if start() never ran (the operation pins us while the kernel owns it).
        if not self.started:
            self.close_fds()
