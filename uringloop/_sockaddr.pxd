# Socket addresses between Python and C (see _sockaddr.pyx).

from uringloop._sys cimport sockaddr_storage, socklen_t

cdef object sockaddr_to_python(sockaddr_storage *ss, socklen_t length, int family)
cdef bint converts_sockaddr(int family) noexcept
cdef socklen_t python_to_sockaddr(object address, int family, sockaddr_storage *ss) except 0
