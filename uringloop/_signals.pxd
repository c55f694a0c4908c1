from uringloop._proactor cimport Completer, Proactor
from uringloop._ops cimport RecvOp


cdef class SignalReader(Completer):
    cdef object loop
    cdef Proactor proactor
    # The socketpair's two descriptors, -1 once closed: plain numbers, not socket objects (see
    # __init__).
    cdef int read_fd                       # the ring receives signal numbers from this end
    cdef int write_fd                      # signal.set_wakeup_fd() target
    cdef RecvOp recv_op
    cdef bytearray buf                     # lent to the kernel while recv_op is in flight
    cdef bint stopped

    cdef int arm(self) except -1
