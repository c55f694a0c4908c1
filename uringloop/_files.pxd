from uringloop._proactor cimport Proactor, Completer, Operation
from uringloop._ops cimport ReadWriteOp


cdef class OpenOp(Operation):
    """openat(2) on the ring: the path (bytes) is pinned until the final CQE."""
    cdef bytes path
    cdef int flags
    cdef unsigned perms


cdef class FsyncOp(Operation):
    """fsync(2) / fdatasync(2) of a whole file (IORING_FSYNC_DATASYNC in fsync_flags)."""
    cdef unsigned fsync_flags


cdef class CloseOp(Operation):
    """close(2) on the ring, submitted once no other operation on the file is in flight."""
    pass


cdef class Opening(Completer):
    """The owner of one OpenOp: turns its completion into a File or the matching OSError."""
    cdef object loop
    cdef Proactor proactor
    cdef object fut
    cdef object name
    cdef str mode
    cdef bint readable, writable


cdef class File(Completer):
    cdef Proactor proactor
    cdef readonly object loop
    cdef int fd
    cdef readonly object name
    cdef readonly str mode
    cdef bint can_read, can_write
    cdef bint seekable               # regular file or block device: short reads mean EOF
    cdef Py_ssize_t pending          # user requests (read/write/fsync) not yet completed
    cdef object closer               # the close() future, once close has been asked for
    cdef set device_ops              # reads and writes in flight on a FIFO / device (close()
                                     # ends them)
    cdef bint close_submitted

    cdef int check_usable(self, bint reading, bint writing) except -1
    cdef object start(self, Operation op, int kind)
    cdef int rw_done(self, ReadWriteOp op, int res) except -1
    cdef int finish(self, Operation op) except -1
    cdef int submit_close(self) except -1
