# The operation kinds (see _ops.pyx); their base, Operation, and the Proactor are in _proactor.

from cpython.buffer cimport Py_buffer
from uringloop._sys cimport (sockaddr_storage, socklen_t, msghdr, iovec, __kernel_timespec,
                             epoll_event)
from uringloop._ring cimport BufferRing
from uringloop._proactor cimport Operation


cdef class BufferOp(Operation):
    """An operation on a lent Python buffer: the Py_buffer export is held (the object can neither
    be freed nor resized) from submission until the final completion."""
    cdef Py_buffer view
    cdef bint has_view
    cdef readonly Py_ssize_t offset        # bytes already transferred (partial sends)
    cdef int flags                         # MSG_* flags
    cdef object obj                        # the exporting object (kept alive with the view)
    cdef int set_buffer(self, object obj, bint writable) except -1
    cdef int drop_buffer(self) except -1


cdef class RecvOp(BufferOp):
    pass


cdef class SendOp(BufferOp):
    """send(2) until every byte is out: a partial completion resubmits the rest from inside the
    core, so no owner ever sees a short write."""
    pass


cdef class SendMsgOp(Operation):
    """sendmsg(2) of several buffers at once (the writes queued while a send was in flight).
    Every buffer is pinned (a Py_buffer export) until the final completion; partial sends are
    continued inside the operation, so the owner sees one completion for all of them."""
    cdef Py_buffer *views
    cdef iovec *iov
    cdef Py_ssize_t count            # buffers held
    cdef Py_ssize_t first            # first iovec with bytes still to send
    cdef readonly Py_ssize_t total   # bytes in all buffers
    cdef readonly Py_ssize_t sent    # bytes the kernel accepted so far
    cdef msghdr msg
    cdef int set_buffers(self, list items, Py_ssize_t n) except -1
    cdef int add_buffers(self, list items, Py_ssize_t n) except -1
    cdef void drop_views(self) noexcept


cdef class MultishotRecvOp(Operation):
    cdef BufferRing bufs


cdef class MsgOp(BufferOp):
    """recvmsg/sendmsg with an address: datagrams."""
    cdef msghdr msg
    cdef iovec iov
    cdef sockaddr_storage addr
    cdef bint sending
    cdef int set_address(self, object family, object address) except -1
    cdef object address(self, int family)


cdef class AcceptOp(Operation):
    cdef sockaddr_storage addr
    cdef socklen_t addrlen
    cdef object address(self, int family)


cdef class ConnectOp(Operation):
    cdef sockaddr_storage addr
    cdef socklen_t addrlen
    cdef int set_address(self, int family, object address) except -1


cdef class PollOp(Operation):
    cdef public unsigned events


cdef int grow_events(epoll_event **events, int *room, int n) except -1


cdef class EpollWaitOp(Operation):
    """epoll_wait(2) of an epoll instance, done by the kernel into a buffer the operation owns
    (lent to the kernel from submission to the final completion, like every buffer)."""
    cdef epoll_event *events
    cdef int room                          # events the buffer holds
    cdef int maxevents                     # asked for at the next submission (<= room)
    cdef int reserve(self, int n) except -1


cdef class ReadWriteOp(BufferOp):
    """read/write of a regular file (or pipe) at an offset: the files API."""
    cdef int opcode
    cdef long long position


cdef class SpliceOp(Operation):
    cdef int fd_out
    cdef long long off_in, off_out
    cdef unsigned nbytes


cdef class ShutdownOp(Operation):
    cdef int how


cdef class DelayOp(Operation):
    """IORING_OP_TIMEOUT used as a sleep: its final CQE (-ETIME) comes once the delay has
    passed, or -ECANCELED if cancelled first.  No fd; a retry's backoff (see _sockstate's unix
    connect)."""
    cdef __kernel_timespec delay
    cdef int set_delay(self, double seconds) except -1


cdef int get_writable_buffer(object obj, Py_buffer *view) except -1
cdef object unwritable_buffer_error(object buf, str method)
cdef object accept_nonblocking(int fd, int family, int *err)
