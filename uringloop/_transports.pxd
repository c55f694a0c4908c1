from cpython.buffer cimport Py_buffer
from uringloop._sys cimport msghdr, iovec, io_uring_sqe
from uringloop._ring cimport BufferRing
from uringloop._ops cimport Operation, RecvOp, SendOp, MultishotRecvOp, PollOp
from uringloop._flow cimport WriteFlow


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
    cdef void drop_views(self) noexcept


cdef class SpareSends:
    # A loop's idle SendOps, shared by its transports (see spare_send_ops() in _transports.pyx).
    cdef list ops                    # ops[:count] are idle; the slots after hold None
    cdef Py_ssize_t count
    cdef SendOp take(self)
    cdef bint give(self, SendOp op) except -1


cdef class SocketTransport(WriteFlow):
    # WriteFlow holds loop (None once connection_lost has run, as stock), proactor, protocol,
    # conn_lost and the write flow control state.
    cdef object sock                 # None once connection_lost has run
    cdef readonly int _sock_fd
    cdef bint buffered               # the protocol is a BufferedProtocol
    cdef bint feeds_stream_reader    # the protocol is asyncio's own StreamReaderProtocol
    cdef bint protocol_connected
    # get_extra_info(): 'socket', 'sockname' and 'peername' are fields, the addresses fetched at
    # construction as the stock transport does; `extra` is None unless the creator passed a dict
    # or _extra was asked for (then the dict holds them all and answers).
    cdef object socket_info          # the socket, or its TransportSocket once asked for
    cdef object sockname
    cdef object peername
    cdef dict extra
    cdef object server
    cdef object context              # protocol callbacks from completions run in it
    cdef int context_depth
    cdef readonly bint _closing
    cdef readonly bint _paused       # pause_reading() in effect
    cdef bint reading_started        # the post-connection_made start has happened
    cdef bint awaiting_leftover      # a receive of sock_*'s is still in the kernel (setup)
    cdef bint stopped_at_eof         # eof_received() kept the connection open: not reading
    cdef bint ring_dry               # the last multishot receive ended for want of buffers
    cdef int large_read_size         # > 0: large reads (poll, then recv(2) into bytes this size)
    cdef readonly bint _eof          # write_eof() was called
    cdef bint guards_fd              # its requests are checked against the socket before each
                                     # io_uring_enter (see setup)
    cdef bint stash_scheduled        # _deliver_stash is scheduled (kept with the flags: a lone
                                     # int between pointers costs 4 B of padding)

    # receiving
    cdef BufferRing bufs             # the loop's provided buffers; None: single-shot receives
    cdef MultishotRecvOp ms_op
    cdef RecvOp single_op
    cdef PollOp poll_op              # large reads wait with it (see poll_done)
    cdef Operation recv_op           # the receive the kernel owns (until its final CQE) or None
    cdef object recv_target          # BufferedProtocol whose get_buffer() the kernel fills
    cdef list stash                  # bytes that completed while paused, in arrival order
    cdef object stash_end            # what followed the stash: None, True (EOF), an exception

    # sending
    cdef SpareSends spare_sends      # the loop's idle SendOps: one is borrowed per send
    cdef SendMsgOp sendmsg_op_obj
    cdef Operation send_op           # the send the kernel owns, or None
    cdef list write_q                # data written while a send was in flight; None if none
    cdef Py_ssize_t queued_bytes
    cdef Py_ssize_t inflight_bytes
    cdef object empty_waiter
    cdef public object _sendfile_sender  # the SpliceSender of a loop.sendfile() in progress

    cdef object __weakref__

    cdef int setup(self, object loop, object sock, object protocol, object waiter, dict extra,
                   object peername, object server) except -1
    cdef int set_addresses(self, object sock, object peername) except -1
    cdef object socket_extra(self)
    cdef int enter_context(self) except -1
    cdef int start_receiving(self) except -1
    cdef int arm_receive_in_context(self) except -1
    cdef int exit_context(self) except -1
    cdef int arm_receive(self) except -1
    cdef bint socket_gone(self) except -1
    cdef int stop_receive(self) except -1
    cdef int recv_done(self, Operation op, int res, unsigned flags) except -1
    cdef int poll_done(self, int res) except -1
    cdef int recv_into_protocol(self) except -1
    cdef int inline_read_ended(self, ssize_t n) except -1
    cdef object protocol_buffer(self)
    cdef bint buffer_updated(self, Py_ssize_t n) except -1
    cdef int got_data_or_interrupt(self, object data, bint rearm) except -1
    cdef int rearm_if_reading(self) except -1
    cdef int got_eof(self) except -1
    cdef int recv_into_stream_reader(self) except -1
    cdef object copy_into_stream_reader(self, const char *src, Py_ssize_t n)
    cdef int stream_reader_fed(self, object reader, bint rearm) except -1
    cdef int got_data(self, object data) except -1
    cdef int got_end(self, object end) except -1
    cdef int deliver(self, object data) except -1
    cdef int deliver_buffered(self, object data) except -1
    cdef int on_eof(self) except -1
    cdef int schedule_stash(self) except -1
    cdef int send_done(self, Operation op, int res) except -1
    cdef int shutdown_after_sends(self) except -1
    cdef Py_ssize_t send_at_once(self, const char *buf, Py_ssize_t n) except -2
    cdef Py_ssize_t taken_at_once(self, ssize_t sent) except -2
    cdef object write_through(self, object data)
    cdef int check_writable(self, str method) except -1
    cdef object writelines_through(self, list items, Py_ssize_t n)
    cdef int submit_send(self, object data, Py_ssize_t n) except -1
    cdef int submit_queued(self) except -1
    cdef bint send_awaited(self) noexcept
    cdef Py_ssize_t write_buffer_size(self) noexcept
    cdef int force_close(self, object exc) except -1
    cdef int fatal_error(self, object exc, str message) except -1

