# The plumbing shared by the completion-based transports of the UNIX layer (datagram, pipes):
# write flow control and the reporting of protocol callbacks that raise.

from uringloop._ops cimport Completer, Proactor


cdef class TransportCore(Completer):
    cdef object loop
    cdef Proactor proactor
    cdef readonly object transport         # the asyncio transport object the protocol sees
    cdef public object protocol
    cdef readonly bint closing             # close()/abort()/a fatal error happened
    cdef readonly int conn_lost            # connection_lost() scheduled (and writes dropped)
    cdef readonly bint lost                # connection_lost() has run
    cdef readonly Py_ssize_t buffer_size   # bytes accepted for writing, not yet written
    cdef Py_ssize_t high_water, low_water
    cdef bint protocol_paused

    cdef int maybe_pause_protocol(self) except -1
    cdef int maybe_resume_protocol(self) except -1
    cdef int callback_failed(self, str what, object exc) except -1
    cdef int count_lost_write(self, str what) except -1
