from libc.stdint cimport uint32_t

from uringloop._sys cimport epoll_event
from uringloop._proactor cimport Completer, Proactor, Operation


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
    # The ring's wait on epfd, re-armed after every event: an EpollWaitOp that brings the events
    # (kernel_collects), or a PollOp for POLLIN after which epoll_wait(2) collects them.
    cdef Operation poll
    cdef bint kernel_collects
    cdef epoll_event *events               # epoll_wait's buffer (the PollOp way): room for all
    cdef int events_room

    cdef int lookup(self, object fileobj) except -1
    cdef int ctl(self, int op, int fd, uint32_t mask) except -1
    cdef int arm(self) except -1
    cdef int arm_at_enter(self) except -1
    cdef int new_poll(self) except -1
    cdef int collect(self) except -1
    cdef int dispatch(self, epoll_event *events, int n) except -1
    cdef int queue_io_handle(self, object handle) except -1
    cdef object add(self, object fileobj, object callback, tuple args, bint read)
    cdef bint remove(self, object fileobj, bint read) except -1
    cdef int renew(self, int err) except -1
    cdef int forget(self, FdWatch watch) except -1
