# cython: language_level=3
"""Completion-based I/O on regular files: the compiled half of uringloop.files.

Every call on a File is one request on the ring, exactly like loop.sock_*:

  * read/readinto/write become IORING_OP_READ / IORING_OP_WRITE at an explicit file offset, carried
    by a ReadWriteOp.  The op holds the Py_buffer export of the caller's buffer (so it can be
    neither freed nor resized) from submission until its final CQE -- also when the awaiting task
    is cancelled, in which case ASYNC_CANCEL is submitted and the buffer is still released only
    when the kernel reports the request finished.
  * A short transfer continues here, in the completion handler, from where it stopped: a write
    always writes every byte, and a read fills its buffer unless it reaches end of file.  So the
    caller sees one completion per call and "fewer bytes than asked" means exactly "end of file",
    which is what lets a copier keep many positional requests in flight without bookkeeping.
  * open and close are requests too (IORING_OP_OPENAT / IORING_OP_CLOSE): path lookup and the
    last close of a file can wait for the disk, and the loop thread never does.  close() waits
    for the file's requests still in flight (a regular file's requests always finish on their own
    -- unlike a socket receive there is no peer to wait for), so a write issued before close() is
    never lost.  The exception is a read or a write of a FIFO or a character device, which waits
    for a peer that may never write or read: close() asks the kernel to stop those, and a read
    then ends with what it read after all or, having read nothing, with the ValueError of a
    closed file; a write with that ValueError, its `characters_written` saying how much of the
    data went out.  (close() waited forever for a write to a FIFO nobody read.)

Which loop: a File belongs to the uringloop loop it was opened on; the stock loop and uvloop have
no completion-based file I/O (uringloop.files.open refuses them with a clear error).
"""

cimport cython
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from libc.stdint cimport uint64_t

from uringloop._sys cimport (io_uring_sqe, ul_prep_openat, ul_prep_fsync, ul_prep_close,
                             UL_OP_READ, UL_OP_WRITE, IORING_FSYNC_DATASYNC, ECANCELED,
                             EINTR)
from uringloop._proactor cimport Proactor, Completer, Operation, OP_IDLE
from uringloop._ops cimport ReadWriteOp

import asyncio as _asyncio
import io as _io
import os as _os
import stat as _stat
import warnings as _warnings
from asyncio import futures as _futures

cdef extern from "<fcntl.h>":
    int AT_FDCWD

cdef extern from "<errno.h>":
    enum:
        EISDIR

cdef object _Future = _futures.Future
cdef object _shield = _asyncio.shield
cdef object _UnsupportedOperation = _io.UnsupportedOperation


cdef enum Kind:
    K_READ,         # read(size): into a bytes object of our own, handed over on completion
    K_READINTO,     # readinto(buffer): into the caller's buffer
    K_WRITE,
    K_FSYNC,


# Cancelling a file request.  The kernel owns a lent buffer until the request's final
# completion, and ASYNC_CANCEL cannot always stop a request at once: a read of a regular file that
# missed the page cache runs in an io-wq worker, and the kernel lets it finish -- a 256 MiB read
# went on writing into its buffer for over a second after the cancel.  Had the future been
# cancelled when asked, as a plain Future is, the awaiting task would have gone on (with its
# CancelledError, or wait_for()'s TimeoutError) to reuse or free a buffer the kernel was still
# filling.  So cancel() asks the kernel to stop and returns True, the way Task.cancel() asks, and
# the future becomes cancelled only at the request's final completion (whatever it reports:
# a read's bytes are dropped, a write may have written some or all of its data); a task awaiting
# it sees CancelledError only then, with its buffer back.  A request not yet in the kernel is
# cancelled at once (Proactor.cancel completes it there and then).

class FileFuture(_Future):
    """The future of one file request.  cancel() also cancels the kernel request, and the
    future is cancelled when the kernel reports the request finished: a task awaiting it is
    resumed (with CancelledError) only once the kernel is done with its buffer."""
    __slots__ = ('_ul_op', '_ul_kind', '_ul_cancel')

    def cancel(self, msg=None):
        if self.done():
            return False
        op = self._ul_op
        if op is None:
            return _Future.cancel(self, msg)
        if self._ul_cancel is None:
            self._ul_cancel = (msg,)
            op.cancel()         # completes it at once if it never reached the kernel
        return True


cdef inline object _new_future(loop, Operation op, int kind):
    fut = FileFuture(loop=loop)
    fut._ul_op = op
    fut._ul_kind = kind
    fut._ul_cancel = None
    op.tag = fut
    return fut


cdef inline bint _cancel_asked(object fut):
    return fut._ul_cancel is not None


cdef inline int _settle_cancelled(object fut) except -1:
    """The final completion of a request that was cancelled (by its future's cancel(), or in the
    kernel by the loop's close): cancel the future now, with the message cancel() was given."""
    if not fut.done():
        _Future.cancel(fut, None if fut._ul_cancel is None else fut._ul_cancel[0])
    return 0


cdef inline object _oserror(int err, object filename):
    # OSError(errno, strerror, filename) picks the subclass itself: FileNotFoundError,
    # IsADirectoryError, PermissionError, ... -- the exceptions the builtin open() raises.
    return OSError(err, _os.strerror(err), filename)


# ---------------------------------------------------------------------------------------------
# operation kinds
# ---------------------------------------------------------------------------------------------

@cython.final
cdef class OpenOp(Operation):
    cdef int prep(self, io_uring_sqe *sqe) except -1:
        ul_prep_openat(sqe, AT_FDCWD, PyBytes_AS_STRING(self.path), self.flags, self.perms,
                       self.ud())
        return 0

    cdef void release(self) noexcept:
        self.path = None
        self.keep = None


@cython.final
cdef class FsyncOp(Operation):
    cdef int prep(self, io_uring_sqe *sqe) except -1:
        ul_prep_fsync(sqe, self.fd, self.fsync_flags, self.ud())
        return 0


@cython.final
cdef class CloseOp(Operation):
    cdef int prep(self, io_uring_sqe *sqe) except -1:
        ul_prep_close(sqe, self.fd, self.ud())
        return 0


# ---------------------------------------------------------------------------------------------
# opening
# ---------------------------------------------------------------------------------------------

@cython.final
cdef class Opening(Completer):

    cdef int op_done(self, Operation op, int res, unsigned flags) except -1:
        cdef File f
        fut = self.fut
        (<object>fut)._ul_op = None
        if res < 0 and (res == -ECANCELED or _cancel_asked(fut) or self.proactor.closing):
            # Cancelled -- by the opener, or by the loop's close, whose cancel of everything
            # can end an open waiting for a FIFO's other end with the kernel's own -ERESTARTSYS
            # (512, which means nothing to a program).
            _settle_cancelled(fut)
            return 0
        if res < 0:
            if not fut.done():
                fut.set_exception(_oserror(-res, self.name))
            return 0
        if fut.done() or _cancel_asked(fut) or self.proactor.closing:
            # Nobody will ever see this descriptor (the opener was cancelled, or the loop is
            # closing): close it here rather than leak it.
            _os.close(res)
            _settle_cancelled(fut)
            return 0
        # fstat of an open descriptor reads the in-memory inode: it never waits for the disk.
        try:
            st_mode = _os.fstat(res).st_mode
        except OSError as exc:
            _os.close(res)
            fut.set_exception(exc)
            return 0
        if _stat.S_ISDIR(st_mode):
            # The kernel opens a directory read-only without complaint; the builtin open()
            # refuses it with IsADirectoryError, and so do we.
            _os.close(res)
            fut.set_exception(_oserror(EISDIR, self.name))
            return 0
        f = File.__new__(File)
        f.loop = self.loop
        f.proactor = self.proactor
        f.fd = res
        f.name = self.name
        f.mode = self.mode
        f.can_read = self.readable
        f.can_write = self.writable
        f.seekable = _stat.S_ISREG(st_mode) or _stat.S_ISBLK(st_mode)
        fut.set_result(f)
        return 0


def open_file(loop, name, bytes path, int flags, unsigned perms, str mode, bint readable,
              bint writable):
    """Submit openat(path, flags | O_CLOEXEC, perms); the future resolves to a File.  Called by
    uringloop.files.open, which validates the mode and the loop."""
    cdef Proactor proactor = <Proactor>loop._proactor
    cdef Opening opening
    cdef OpenOp op
    proactor.check_usable()
    if b'\0' in path:
        raise ValueError("embedded null byte")
    opening = Opening.__new__(Opening)
    opening.loop = loop
    opening.proactor = proactor
    opening.name = name
    opening.mode = mode
    opening.readable = readable
    opening.writable = writable
    op = OpenOp(proactor, opening, -1, None)
    op.path = path
    op.flags = flags | _os.O_CLOEXEC
    op.perms = perms
    fut = _new_future(loop, op, 0)
    opening.fut = fut
    op.submit()
    return fut


# ---------------------------------------------------------------------------------------------
# the file object
# ---------------------------------------------------------------------------------------------

@cython.final
cdef class File(Completer):
    """A file open for completion-based I/O on a running uringloop loop.

    Obtain one with ``await uringloop.files.open(path, mode)`` (or ``async with``).  Every I/O
    method submits one request to the kernel and returns an awaitable that completes when the
    kernel has finished it; any number of requests may be in flight at once, each at its own
    offset.  A buffer passed to readinto() or write() is lent to the kernel: it is pinned (it
    cannot be resized or freed) until the request's final completion, even if the awaiting task
    is cancelled.
    """

    def __cinit__(self):
        self.fd = -1

    def __init__(self, *args, **kwargs):
        raise TypeError("File objects are created by `await uringloop.files.open(path, mode)`")

    def __reduce__(self):
        raise TypeError(f"cannot pickle {type(self).__name__!r} object")

    # ---- properties ----

    @property
    def closed(self):
        """True once close() has been called (further requests raise ValueError)."""
        return self.closer is not None

    def fileno(self):
        """The file descriptor (valid until close() completes)."""
        if self.fd < 0:
            raise ValueError("I/O operation on closed file.")
        return self.fd

    def readable(self):
        """True if the file was opened for reading."""
        return self.can_read

    def writable(self):
        """True if the file was opened for writing."""
        return self.can_write

    def stat(self):
        """os.fstat() of the file.  Synchronous: it reads the in-memory inode and never waits
        for the disk."""
        self.check_usable(False, False)
        return _os.fstat(self.fd)

    def __repr__(self):
        state = 'closed' if self.closer is not None else f'fd={self.fd}'
        return f"<uringloop.files.File name={self.name!r} mode={self.mode!r} {state}>"

    # ---- requests ----

    cdef int check_usable(self, bint reading, bint writing) except -1:
        if self.closer is not None:
            raise ValueError("I/O operation on closed file.")
        if reading and not self.can_read:
            raise _UnsupportedOperation("File not open for reading")
        if writing and not self.can_write:
            raise _UnsupportedOperation("File not open for writing")
        self.proactor.check_usable()
        if self.proactor.closing:
            raise RuntimeError("Event loop is closed")
        return 0

    cdef object start(self, Operation op, int kind):
        fut = _new_future(self.loop, op, kind)
        op.submit()
        self.pending += 1
        if not self.seekable and (kind == K_READ or kind == K_READINTO or kind == K_WRITE):
            if self.device_ops is None:
                self.device_ops = set()
            self.device_ops.add(fut)
        return fut

    def read(self, Py_ssize_t size, long long offset):
        """Read `size` bytes at `offset`; returns bytes.

        Fewer bytes come back only when the file ends first (b'' at or past the end), or when an
        error stopped the read after some bytes (the next read, from there, raises it).  A size of
        -1 reads from `offset` to the end of the file as fstat() reports it now.  (On a FIFO or
        a character device the offset is ignored and a read returns what one read(2) returns.)
        """
        cdef ReadWriteOp op
        self.check_usable(True, False)
        if offset < 0:
            raise ValueError("negative offset")
        if size < 0:
            if size != -1:
                raise ValueError("size must be >= 0 or -1 (to end of file)")
            size = max(_os.fstat(self.fd).st_size - offset, 0)
        op = ReadWriteOp(self.proactor, self, self.fd, None)
        op.opcode = UL_OP_READ
        op.position = offset
        # A bytes object of our own that nobody can see until we hand it out: the kernel
        # writes into it directly, and for a full read it *is* the result (no copy).
        op.set_buffer(PyBytes_FromStringAndSize(NULL, size), False)
        return self.start(op, K_READ)

    def readinto(self, buffer, long long offset):
        """Read into `buffer` (any writable bytes-like object) at `offset`; returns the number
        of bytes read, which is len(buffer) unless the file ends first (0 at or past the end).

        The buffer is lent to the kernel until the request completes: do not use it meanwhile.
        """
        cdef ReadWriteOp op
        self.check_usable(True, False)
        if offset < 0:
            raise ValueError("negative offset")
        op = ReadWriteOp(self.proactor, self, self.fd, None)
        op.opcode = UL_OP_READ
        op.position = offset
        op.set_buffer(buffer, True)
        return self.start(op, K_READINTO)

    def write(self, data, long long offset):
        """Write every byte of `data` (any bytes-like object) at `offset`; returns len(data).

        An error raises OSError; its `characters_written` is how many bytes were written before
        it (EFBIG or ENOSPC may stop a write part of the way).
        In append mode ('a') the kernel writes at the end of the file whatever `offset` says.
        `data` is lent to the kernel until the request completes: do not modify it meanwhile.
        If the request is cancelled, some or all of the data may already be written.
        """
        cdef ReadWriteOp op
        self.check_usable(False, True)
        if offset < 0:
            raise ValueError("negative offset")
        op = ReadWriteOp(self.proactor, self, self.fd, None)
        op.opcode = UL_OP_WRITE
        op.position = offset
        op.set_buffer(data, False)
        return self.start(op, K_WRITE)

    def fsync(self):
        """Flush the file's data and metadata to the device (fsync(2)); returns None."""
        return self._sync(0)

    def fdatasync(self):
        """Flush the file's data, and only the metadata needed to read it back (fdatasync(2))."""
        return self._sync(IORING_FSYNC_DATASYNC)

    def _sync(self, unsigned fsync_flags):
        cdef FsyncOp op
        self.check_usable(False, False)
        op = FsyncOp(self.proactor, self, self.fd, None)
        op.fsync_flags = fsync_flags
        return self.start(op, K_FSYNC)

    def close(self):
        """Close the file: wait for its requests still in flight, then close the descriptor on
        the ring.  Idempotent; returns an awaitable.  Cancelling the await does not stop the
        close."""
        if self.closer is None:
            self.closer = self.loop.create_future()
            if self.fd < 0:
                self.closer.set_result(None)
            elif self.pending == 0:
                self.submit_close()
            elif self.device_ops:
                # A FIFO's or a device's read or write may wait forever: stop it.  The
                # operation is cancelled, not the future -- bytes it read before the cancel
                # landed are still handed to its caller (rw_done).
                for fut in list(self.device_ops):
                    op = fut._ul_op
                    if op is not None:
                        (<Operation>op).cancel()
        return _shield(self.closer)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc_info):
        await self.close()

    def __del__(self):
        # Requests in flight hold a reference to their File (op.owner), so this runs only when
        # the kernel has nothing of ours left: closing the descriptor here cannot race it.
        if self.fd >= 0 and not self.close_submitted:
            _warnings.warn(f"unclosed file {self!r}", ResourceWarning, source=self)
            fd, self.fd = self.fd, -1
            _os.close(fd)

    # ---- completions ----

    cdef int op_done(self, Operation op, int res, unsigned flags) except -1:
        fut = op.tag
        if type(op) is ReadWriteOp:
            return self.rw_done(<ReadWriteOp>op, res)
        if type(op) is CloseOp:
            self.fd = -1
            if res == -ECANCELED:
                # The close request never ran: it waited in the backlog (the kernel taking no
                # entries) when the loop closed, or the loop's cancel of everything stopped it.
                # The descriptor is still open: close it here.
                try:
                    _os.close(op.fd)
                except OSError as exc:
                    res = -exc.errno
                else:
                    res = 0
            if self.closer.done():
                return 0
            if res < 0:
                # The descriptor is released even when close(2) reports an error (Linux).
                self.closer.set_exception(_oserror(-res, self.name))
            else:
                self.closer.set_result(None)
            return 0
        # FsyncOp
        fut._ul_op = None
        if not fut.done():
            if _cancel_asked(fut):
                _settle_cancelled(fut)
            elif res == -ECANCELED:
                fut.cancel()
            elif res < 0:
                fut.set_exception(_oserror(-res, self.name))
            else:
                fut.set_result(None)
        return self.finish(op)

    cdef int rw_done(self, ReadWriteOp op, int res) except -1:
        cdef object fut = op.tag
        cdef object data
        cdef Py_ssize_t total
        cdef bint unfinished
        if res > 0:
            op.offset += res
        # A short transfer is not the end of a write, nor of a read of a regular file unless
        # that read returned 0 (end of file).  On a pipe or a character device a short read is
        # just what was there, as with os.read.
        unfinished = res == -EINTR or (
            res > 0 and op.offset < op.view.len and (self.seekable or op.opcode == UL_OP_WRITE))
        if (unfinished and not fut.done() and not _cancel_asked(fut)
                and not self.proactor.closing):
            # Continue from where the kernel stopped; the op keeps the buffer pinned meanwhile
            # and the caller sees one completion for the whole request.
            op.submit()
            return 0
        total = op.offset
        fut._ul_op = None
        if not fut.done():
            if _cancel_asked(fut):
                _settle_cancelled(fut)
            elif res == -ECANCELED and self.closer is not None and not self.seekable:
                # A FIFO's or a device's read stopped by close() (one read(2) per request: it
                # read nothing), or write -- as an I/O operation on a closed file.
                exc = ValueError("I/O operation on closed file.")
                if fut._ul_kind == K_WRITE:
                    exc.characters_written = total
                fut.set_exception(exc)
            elif res == -ECANCELED or unfinished:
                # Cancelled in the kernel, or cut short because the loop is closing.
                fut.cancel()
            elif res < 0 and (total == 0 or fut._ul_kind == K_WRITE):
                # An error after part of a write (EFBIG past RLIMIT_FSIZE, ENOSPC...): raised,
                # saying how much is written, as BlockingIOError says it (write(2) would have
                # returned the short count, and failed at the next call).
                exc = _oserror(-res, self.name)
                exc.characters_written = total
                fut.set_exception(exc)
            elif fut._ul_kind == K_READ:
                # (Also after an error that cut a read short: what was read comes back, a
                # short read, as read(2) returns it; the next read reports the error.)
                data = op.buffer
                if total != op.view.len:
                    data = PyBytes_FromStringAndSize(PyBytes_AS_STRING(data), total)
                fut.set_result(data)
            else:
                fut.set_result(total)
        return self.finish(op)

    cdef int finish(self, Operation op) except -1:
        if self.device_ops:
            self.device_ops.discard(op.tag)
        op.tag = None
        self.pending -= 1
        if self.pending == 0 and self.closer is not None and not self.close_submitted:
            self.submit_close()
        return 0

    cdef int submit_close(self) except -1:
        cdef CloseOp op
        self.close_submitted = True
        if self.proactor.closing or self.proactor.ring.closed:
            # The loop is shutting down: no new requests; close(2) right here.
            fd, self.fd = self.fd, -1
            try:
                _os.close(fd)
            except OSError as exc:
                if not self.closer.done():
                    self.closer.set_exception(exc)
                return 0
            if not self.closer.done():
                self.closer.set_result(None)
            return 0
        op = CloseOp(self.proactor, self, self.fd, None)
        op.submit()
        return 0
