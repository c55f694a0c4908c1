from uringloop._proactor cimport Completer, Proactor
from uringloop._ops cimport RecvOp


cdef class SignalReader(Completer):
    cdef object loop
    cdef Proactor proactor
    cdef readonly object read_sock         # the ring receives signal numbers from this end
    cdef readonly object write_sock        # signal.set_wakeup_fd() target
    cdef RecvOp recv_op
    cdef bytearray buf                     # lent to the kernel while recv_op is in flight
    cdef bint stopped

    cdef int arm(self) except -1
