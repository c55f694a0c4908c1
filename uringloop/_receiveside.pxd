# The receive half of the stream socket transport (see _receiveside.pyx).

from cpython.buffer cimport Py_buffer
from uringloop._ring cimport BufferRing
from uringloop._proactor cimport Proactor, Operation
from uringloop._ops cimport RecvOp, MultishotRecvOp, PollOp
from uringloop._sendside cimport SendSide


cdef BufferRing receive_buffers(object loop, Proactor proactor)


cdef class ReceiveSide(SendSide):
    # The base of _transports.SocketTransport.  SendSide holds the socket, its descriptor, the
    # closing and write_eof() flags and the sending state; WriteFlow, its base, the loop,
    # proactor, protocol and flow control.
    cdef object context              # protocol callbacks from completions run in it
    cdef int context_depth
    cdef bint buffered               # the protocol is a BufferedProtocol
    cdef bint feeds_stream_reader    # the protocol is asyncio's own StreamReaderProtocol
    cdef bint protocol_connected     # (SocketTransport's: connection_lost() is owed; kept with
                                     # the other flags, see below)
    cdef readonly bint _paused       # pause_reading() in effect
    cdef bint reading_started        # the post-connection_made start has happened
    cdef bint awaiting_leftover      # a receive of sock_*'s is still in the kernel (see
                                     # SocketTransport.setup)
    cdef unsigned long long filled_in_batch  # the batch of completions that last filled a
                                     # BufferedProtocol's buffer (see got_data)
    cdef bint refills_at_once        # a BufferedProtocol of the loop's own (see note_protocol)
    cdef bint end_buffer_asked       # (got_end) get_buffer() was called for the read that ended
    cdef bint stopped_at_eof         # eof_received() kept the connection open: not reading
    cdef bint ring_dry               # the last multishot receive ended for want of buffers
    cdef int large_read_size         # > 0: large reads (poll, then recv(2) into bytes this size)
    cdef int stream_read_guess       # how far a large read grows a StreamReader's buffer (0: ask)
    cdef unsigned stash_ticket       # names the one _deliver_stash_after_pass that may deliver
    cdef bint stash_scheduled        # _deliver_stash is scheduled
    cdef bint stash_after_pass       # _deliver_stash_after_pass will: _deliver_stash stands down
    cdef unsigned bytes_batch        # the batch of completions that last brought bytes, and the
    cdef unsigned ready_read_batch   # one a ready pass read for ahead of (both truncated to 32
                                     # bits, compared for equality only: see got_eof)
    # (The ints and flags above are kept together: a lone int between pointers costs 4 B of
    # padding.)

    cdef BufferRing bufs             # the loop's provided buffers; None: single-shot receives
    cdef MultishotRecvOp ms_op
    cdef RecvOp single_op
    cdef PollOp poll_op              # large reads wait with it (see poll_done)
    cdef Operation recv_op           # the receive the kernel owns (until its final CQE) or None
    cdef list stash                  # bytes that completed while paused, in arrival order
    cdef object stash_end            # what followed the stash: None, True (EOF), an exception

    cdef int note_protocol(self, object protocol) except -1
    cdef bint receive_pending(self) noexcept
    cdef int enter_context(self) except -1
    cdef int start_receiving(self) except -1
    cdef int arm_receive_in_context(self) except -1
    cdef int exit_context(self) except -1
    cdef int arm_receive(self) except -1
    cdef int stop_receive(self) except -1
    cdef int recv_done(self, Operation op, int res, unsigned flags) except -1
    cdef int poll_done(self, int res) except -1
    cdef int recv_into_protocol(self) except -1
    cdef int inline_read_ended(self, ssize_t n) except -1
    cdef object protocol_buffer(self)
    cdef bint protocol_view(self, Py_buffer *view) except -1
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
    cdef int fill_protocol_buffer(self) except -1
    cdef int on_eof(self) except -1
    cdef int schedule_stash(self) except -1
    cdef int schedule_stash_after_ready_pass(self, bint one_iteration_later=*) except -1
    cdef int deliver_stash(self) except -1
    cdef int note_read_from_ready_pass(self) except -1
