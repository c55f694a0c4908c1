cimport cython


@cython.final
cdef class TransportTable:
    cdef readonly dict data      # descriptor -> weak reference to its transport (may be dead)

    cdef object lookup(self, object fd)
    cdef int put(self, object fd, object transport) except -1
    cdef int drop(self, object fd, object transport) except -1
