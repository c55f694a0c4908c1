# loop.getaddrinfo() on the resolver's C threads (see _resolver.pyx; the threads: _resolver.h).

from libc.stdint cimport uint64_t


cdef class Resolver:
    cdef void *sink                # the loop's ul_gai_sink (NULL once detached or abandoned)
    cdef object loop
    cdef dict waiting              # request id -> the future its lookup resolves
    cdef dict requests             # request id -> its ul_gai_request's address, until taken back
    cdef uint64_t last_id
