# The plumbing shared by the completion-based transports: write flow control, the reporting of
# protocol callbacks that raise, and (TransportCore) what the datagram and pipe cores share.

from uringloop._proactor cimport Completer, Operation, Proactor


cdef class WriteFlow(Completer):
    # Base of the stream transport (_transports.SocketTransport) and of TransportCore.
    cdef object loop
    cdef Proactor proactor
    cdef object protocol
    cdef int conn_lost                     # connection_lost() scheduled (and writes dropped)
    cdef Py_ssize_t high_water, low_water
    cdef object limits                     # (low, high) as set, for get_write_buffer_limits()
    # The protocol whose pause_writing() was called and whose resume_writing() is still due
    # (None when writing is not paused).  It is remembered rather than assumed to be the current
    # protocol: see maybe_resume_protocol().
    cdef object paused_protocol

    cdef int init_flow(self, object loop, object protocol) except -1
    cdef Py_ssize_t write_buffer_size(self) noexcept
    cdef object visible_transport(self)
    cdef int maybe_pause_protocol(self) except -1
    cdef int maybe_resume_protocol(self) except -1
    cdef int count_lost_write(self, str what) except -1
    cdef int report_fatal_error(self, object exc, str message, bint quiet) except -1


cdef int add_socket_extra(dict extra, object sock) except -1
cdef object not_contiguous_error()
cdef object queued_not_contiguous_error(object view, bint extend)


cdef class TransportCore(WriteFlow):
    # The compiled half of the datagram and pipe transports (the asyncio transport object the
    # protocol sees is a Python class delegating to it).
    cdef readonly object transport         # the asyncio transport object the protocol sees
    cdef readonly bint closing             # close()/abort()/a fatal error happened
    cdef readonly bint lost                # connection_lost() has run
    cdef readonly Py_ssize_t buffer_size   # bytes accepted for writing, not yet written
    cdef object context                    # the protocol's callbacks from completions run in it
    cdef int context_depth
    # The receiving side of the cores that receive (datagrams, read pipes; unused by a write
    # pipe): see pause_reading() in _flow.pyx.
    cdef readonly bint paused
    cdef object stash                      # what completed after pause_reading(), in order
    cdef bint stash_flush_scheduled
    cdef unsigned stash_ticket             # names the one flush_stash that may deliver

    cdef int completed(self, Operation op, int res, unsigned flags) except -1
    cdef bint completion_failed(self, Operation op, object exc) except -1
    cdef int callback_failed(self, str method, tuple args, object exc) except -1
    cdef int release_if_idle(self) except -1
    cdef int let_go_of_the_loop(self) except -1
    cdef int start_receive(self) except -1
    cdef int stop_receive(self) except -1
    cdef int deliver_stashed(self, object item) except -1
