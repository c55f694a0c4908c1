from libc.stdint cimport uint32_t, uint64_t

from uringloop._proactor cimport Completer, Proactor
from uringloop._ops cimport PollOp


cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union epoll_data_t:
        void *ptr
        int fd
        uint32_t u32
        uint64_t u64
    struct epoll_event:
        uint32_t events
        epoll_data_t data


cdef class FdWatch:
    cdef readonly int fd
    cdef object fileobj                    # what the first registration passed
    cdef object reader                     # asyncio.Handle or None
    cdef object writer

    cdef uint32_t mask(self)


cdef class Readiness(Completer):
    cdef object loop
    cdef Proactor proactor
    cdef dict watches                      # fd -> FdWatch
    cdef int epfd                          # the epoll instance (-1 until the first registration)
    cdef PollOp poll                       # POLLIN on epfd, re-armed after every event
    cdef bint rearm_queued                 # re-armed by a handle behind those dispatch() queued
    cdef epoll_event *events               # epoll_wait's buffer: room for every registration
    cdef int events_room

    cdef int lookup(self, object fileobj) except -1
    cdef int ctl(self, int op, int fd, uint32_t mask) except -1
    cdef int arm(self) except -1
    cdef int dispatch(self) except -1
    cdef object add(self, object fileobj, object callback, tuple args, bint read)
    cdef bint remove(self, object fileobj, bint read) except -1
    cdef int renew(self, int err) except -1
    cdef int forget(self, FdWatch watch) except -1
