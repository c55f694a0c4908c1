from uringloop._proactor cimport Completer, Proactor
from uringloop._ops cimport PollOp


cdef class ChildWatcher(Completer):
    cdef object loop
    cdef Proactor proactor
    cdef dict watches                      # pid -> PollOp on the child's pidfd

    cdef object reap(self, int pidfd, object popen)
    cdef int let_go(self, PollOp poll) except -1
    cdef int forget(self, PollOp poll) except -1
    cdef int log_exit(self, object pid, object returncode) except -1
