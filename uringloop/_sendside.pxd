# The send half of the stream socket transport (see _sendside.pyx).

from uringloop._proactor cimport Operation
from uringloop._ops cimport SendOp, SendMsgOp
from uringloop._flow cimport WriteFlow


cdef class SpareSends:
    # A loop's idle SendOps, shared by its transports (see spare_send_ops()).
    cdef list ops                    # ops[:count] are idle; the slots after hold None
    cdef Py_ssize_t count
    cdef SendOp take(self)
    cdef bint give(self, SendOp op) except -1


cdef SpareSends spare_send_ops(object loop)


cdef class SendSide(WriteFlow):
    # The base of _receiveside.ReceiveSide, and so of _transports.SocketTransport.  WriteFlow
    # holds loop (None once connection_lost has run, as stock), proactor, protocol, conn_lost and
    # the write flow control state.
    cdef object sock                 # None once connection_lost has run
    cdef readonly int _sock_fd
    cdef readonly bint _closing
    cdef readonly bint _eof          # write_eof() was called
    cdef bint guards_fd              # its requests are checked against the socket before each
                                     # io_uring_enter (see SocketTransport.setup)
    cdef SpareSends spare_sends      # the loop's idle SendOps: one is borrowed per send
    cdef SendMsgOp sendmsg_op_obj
    cdef Operation send_op           # the send the kernel owns, or None
    cdef list write_q                # data written while a send was in flight; None if none
    cdef Py_ssize_t queued_bytes
    cdef Py_ssize_t inflight_bytes
    cdef object empty_waiter
    cdef public object _sendfile_sender  # the SpliceSender of a loop.sendfile() in progress

    cdef int fatal_error(self, object exc, str message) except -1
    cdef bint socket_gone(self) except -1
    cdef bint receive_pending(self) noexcept
    cdef bint write_dropped(self) except -1
    cdef Py_ssize_t send_at_once(self, const char *buf, Py_ssize_t n) except -2
    cdef Py_ssize_t taken_at_once(self, ssize_t sent) except -2
    cdef object write_through(self, object data)
    cdef int check_writable(self, str method) except -1
    cdef object writelines_through(self, list items, Py_ssize_t n)
    cdef int submit_send(self, object data, Py_ssize_t n) except -1
    cdef int submit_queued(self) except -1
    cdef SendMsgOp sendmsg_op(self)
    cdef int join_unsent(self) except -1
    cdef bint send_awaited(self) noexcept
    cdef int send_done(self, Operation op, int res) except -1
    cdef int send_progress(self, Operation op, int res) except -1
    cdef int shutdown_after_sends(self) except -1
    cdef Py_ssize_t write_buffer_size(self) noexcept
