from uringloop._ops cimport Completer, Proactor, PollOp


cdef class FdWatch(Completer):
    cdef Readiness registry
    cdef readonly int fd
    cdef object fileobj                    # what the first registration passed (pinned by polls)
    cdef object reader                     # asyncio.Handle or None
    cdef object writer
    cdef PollOp read_poll                  # POLLIN, re-armed after every event
    cdef PollOp write_poll                 # POLLOUT, likewise

    cdef int arm(self, PollOp poll) except -1
    cdef int disarm(self, PollOp poll) except -1


cdef class Readiness:
    cdef object loop
    cdef Proactor proactor
    cdef object ready                      # loop._ready: where the handles go, as in the stock loop
    cdef dict watches                      # fd -> FdWatch

    cdef int lookup(self, object fileobj) except -1
    cdef object add(self, object fileobj, object callback, tuple args, bint read)
    cdef bint remove(self, object fileobj, bint read) except -1
