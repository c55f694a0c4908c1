# cython: language_level=3
"""loop.getaddrinfo() without the executor: getaddrinfo(3) on a small C thread pool that never
takes the GIL (_resolver.h: the threads, the queue, the sink and their lifetimes), its results
converted on the loop's thread into exactly what socket.getaddrinfo() returns.

What the loop's side does, and why it is shaped so:
- lookup() encodes the arguments as socket.getaddrinfo's C half (socketmodule.c) does -- a str
  host through the idna codec, which for an ASCII name is the name itself once its labels pass
  the codec's length checks; an int port printed with "%ld"; a str port as UTF-8 -- into a
  request of copies, queues it, and returns a future.  Anything it does not encode the same way
  without calling Python (a non-ASCII host, a label the codec refuses, a NUL, a port of an int
  subclass -- which socket.getaddrinfo refuses --, a float port...) makes it return None, and
  the caller takes the stock way: socket.getaddrinfo in the executor, whose conversions and
  errors are then the stock loop's own.
- A worker hands the finished request to the loop's sink and writes the loop's wake-up eventfd
  once per batch; the ring's read on it completes, and WakeupOp.complete (_proactor) calls
  take_done(), which turns each addrinfo list into socket.getaddrinfo's tuples -- the family
  and socket type as AddressFamily/SocketKind members where they are members, the canonical
  name or '', the address as the socket module's makesockaddr gives it (_sockaddr) -- or the
  error into socket.gaierror(code, gai_strerror(code)), or an OSError from errno for
  EAI_SYSTEM, as set_gaierror() does.
- A lookup whose awaiter was cancelled while it was queued is never started (Resolver.cancel),
  as a work item cancelled in the executor's queue; one a worker has started runs to its end
  (getaddrinfo(3) cannot be interrupted, as in the executor) and its result is dropped when it
  arrives.  The queued lookups of a loop that closed are skipped too.
- Closing the loop detaches the sink before the eventfd is closed (Proactor.close); lookups
  still running are then freed by their workers.

Measured (AMD EPYC guest, 3.11, one CPU, "localhost"): 46 us per await loop.getaddrinfo() through
the executor, uvloop's 30; this path 24-27 (the README's "Beyond the targets" has the benchmark's
figures)."""

cimport cython
from cpython.ref cimport PyObject
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport uint64_t
from libc.stdio cimport snprintf
from libc.string cimport memchr, strlen

from uringloop._sys cimport sockaddr_storage, socklen_t
from uringloop._sockaddr cimport sockaddr_to_python
from uringloop._proactor cimport os_error

import _socket
import socket as _socket_module

cdef extern from "Python.h":
    # Declared without Cython's error check: an int too large is not an error here but a case
    # for the stock way (_pending_error() clears it).
    long _as_long "PyLong_AsLong"(object value) noexcept
    const char *PyUnicode_AsUTF8AndSize(object unicode, Py_ssize_t *size) except NULL
    bint PyUnicode_IS_ASCII(object unicode)
    int PySys_Audit(const char *event, const char *arg_format, ...) except -1
    object PyUnicode_FromString(const char *s)

cdef extern from "<netdb.h>":
    cdef struct addrinfo:
        int ai_flags
        int ai_family
        int ai_socktype
        int ai_protocol
        socklen_t ai_addrlen
        void *ai_addr
        char *ai_canonname
        addrinfo *ai_next
    const char *gai_strerror(int errcode)
    int EAI_SYSTEM

cdef extern from "_resolver.h":
    ctypedef struct ul_gai_sink:
        pass
    ctypedef struct ul_gai_request:
        ul_gai_request *next
        uint64_t id
        addrinfo hints
        addrinfo *result
        int error
        int sys_errno
    ul_gai_sink *ul_gai_sink_new(int wake_fd) nogil
    ul_gai_request *ul_gai_request_new(const char *host, size_t host_len,
                                       const char *service, size_t service_len) nogil
    void ul_gai_request_free(ul_gai_request *req) nogil
    int ul_gai_submit(ul_gai_sink *sink, ul_gai_request *req) nogil
    ul_gai_request *ul_gai_take(ul_gai_sink *sink) nogil
    void ul_gai_taken(ul_gai_sink *sink, ul_gai_request *req) nogil
    void ul_gai_detach(ul_gai_sink *sink) nogil
    void ul_gai_cancel(ul_gai_request *req) nogil

cdef object _gaierror = _socket.gaierror
cdef object _AddressFamily = _socket_module.AddressFamily
cdef object _SocketKind = _socket_module.SocketKind

# socket.getaddrinfo's _intenum_converter, remembered per value: enum members are singletons,
# and a value that is not one stays the int.
cdef dict _family_members = {}
cdef dict _kind_members = {}


cdef object _enum_member(dict cache, object enum_class, int value):
    member = cache.get(value)
    if member is None:
        try:
            member = enum_class(value)
        except ValueError:
            member = value
        cache[value] = member
    return member


cdef bint _idna_keeps(const char *name, Py_ssize_t n) noexcept:
    # The idna codec's ASCII fast path (encodings.idna, 3.10-3.13): the name unchanged when every
    # label but the last is 1-63 bytes long and the last shorter than 64; it raises otherwise --
    # which is left to it (a False here), as is a NUL.
    cdef Py_ssize_t i, start = 0
    for i in range(n):
        if name[i] == 0:
            return False
        if name[i] == b'.':
            if i == start or i - start > 63:
                return False
            start = i + 1
    return n - start < 64


cdef bint _c_int(object value, int *out) noexcept:
    # An int (AddressFamily, SocketKind, AddressInfo are int subclasses) that fits a C int: what
    # the "i" of socket.getaddrinfo's argument parsing takes as it is, without __index__.
    cdef long v
    if not isinstance(value, int):
        return False
    v = _as_long(value)
    if v == -1 and _pending_error():
        return False
    if v < -2147483648 or v > 2147483647:
        return False
    out[0] = <int>v
    return True


cdef extern from *:
    """
    static int ul_resolver_pending_error(void) {
        if (PyErr_Occurred()) { PyErr_Clear(); return 1; }
        return 0;
    }
    """
    bint _pending_error "ul_resolver_pending_error"() noexcept


cdef bint _bytes_without_nul(bytes value, const char **text, Py_ssize_t *length) noexcept:
    # The bytes as the C string getaddrinfo(3) will be given, unless a NUL would cut it short
    # (what socket.getaddrinfo then does is left to it).
    text[0] = PyBytes_AS_STRING(value)
    length[0] = PyBytes_GET_SIZE(value)
    return memchr(text[0], 0, length[0]) == NULL


cdef list _addrinfo_list(addrinfo *res):
    cdef list out = []
    while res != NULL:
        out.append((
            _enum_member(_family_members, _AddressFamily, res.ai_family),
            _enum_member(_kind_members, _SocketKind, res.ai_socktype),
            res.ai_protocol,
            PyUnicode_FromString(res.ai_canonname) if res.ai_canonname != NULL else '',
            sockaddr_to_python(<sockaddr_storage *>res.ai_addr, res.ai_addrlen, res.ai_family),
        ))
        res = res.ai_next
    return out


cdef object _lookup_error(int code, int sys_errno):
    if code == EAI_SYSTEM:
        return os_error(sys_errno)
    return _gaierror(code, PyUnicode_FromString(gai_strerror(code)))


@cython.final
cdef class Resolver:
    """The lookups of one loop: its sink (the finished requests and the loop's wake-up
    eventfd) and the futures its lookups resolve."""

    def __cinit__(self, loop, int wake_fd):
        self.loop = loop
        self.waiting = {}
        self.requests = {}
        self.sink = ul_gai_sink_new(wake_fd)
        if self.sink == NULL:
            raise MemoryError()

    def __dealloc__(self):
        self.detach()

    def lookup(self, host, port, family, socktype, proto, flags):
        """A future of socket.getaddrinfo(host, port, family, socktype, proto, flags) worked out
        on the resolver's threads; None for arguments it leaves to socket.getaddrinfo (see
        the module's docstring) and when no thread can be started."""
        cdef const char *host_c = NULL
        cdef const char *service_c = NULL
        cdef Py_ssize_t host_len = 0, service_len = 0
        cdef char port_text[24]
        cdef long port_value
        cdef int c_family, c_type, c_proto, c_flags
        cdef ul_gai_request *req
        if self.sink == NULL:
            return None
        if not (_c_int(family, &c_family) and _c_int(socktype, &c_type)
                and _c_int(proto, &c_proto) and _c_int(flags, &c_flags)):
            return None
        if host is None:
            pass
        elif type(host) is str:
            if not PyUnicode_IS_ASCII(host):
                return None
            host_c = PyUnicode_AsUTF8AndSize(host, &host_len)
            if not _idna_keeps(host_c, host_len):
                return None
        elif type(host) is bytes:
            if not _bytes_without_nul(host, &host_c, &host_len):
                return None
        else:
            return None
        if port is None:
            pass
        elif type(port) is int:
            port_value = _as_long(port)
            if port_value == -1 and _pending_error():
                return None
            snprintf(port_text, sizeof(port_text), "%ld", port_value)
            service_c = port_text
            service_len = strlen(port_text)
        elif type(port) is str:
            try:
                service_c = PyUnicode_AsUTF8AndSize(port, &service_len)
            except UnicodeError:
                return None
            if memchr(service_c, 0, service_len) != NULL:
                return None
        elif type(port) is bytes:
            if not _bytes_without_nul(port, &service_c, &service_len):
                return None
        else:
            return None
        # socket.getaddrinfo's audit event (PEP 578), with its arguments, once the lookup is
        # surely ours: a hook that raises refuses the lookup, as it would socket.getaddrinfo.
        PySys_Audit("socket.getaddrinfo", "OOiii", <PyObject *>host, <PyObject *>port,
                    c_family, c_type, c_proto)
        req = ul_gai_request_new(host_c, host_len, service_c, service_len)
        if req == NULL:
            raise MemoryError()
        req.hints.ai_family = c_family
        req.hints.ai_socktype = c_type
        req.hints.ai_protocol = c_proto
        req.hints.ai_flags = c_flags
        self.last_id += 1
        req.id = self.last_id
        future = self.loop.create_future()
        self.waiting[req.id] = future
        self.requests[req.id] = <size_t>req
        if ul_gai_submit(<ul_gai_sink *>self.sink, req) != 0:
            del self.waiting[req.id]
            del self.requests[req.id]
            ul_gai_request_free(req)
            return None
        return future

    def cancel(self, future):
        """The awaiter of `future` (a lookup's) was cancelled: a worker that has yet to start
        its request skips it (_resolver.h's ul_gai_worker).  Called on cancellation only, so
        the search through the lookups in flight costs the common path nothing."""
        if self.sink == NULL:
            return
        for request_id, waiting in self.waiting.items():
            if waiting is future:
                # Still in the table: the loop has not taken the request back, so it is alive.
                ul_gai_cancel(<ul_gai_request *><size_t>self.requests[request_id])
                return

    def take_done(self):
        """The lookups finished since the last wake-up: their futures resolved (called by the
        wake-up's completion on the loop's thread).  A Python-level method, as detach() and
        abandon(): _proactor reaches the resolver as an object, so that the module is imported by a
        loop's first lookup, not with the loop (a wake-up that finds no resolver pays nothing)."""
        cdef ul_gai_request *req
        cdef ul_gai_request *current
        if self.sink == NULL:
            return
        req = ul_gai_take(<ul_gai_sink *>self.sink)
        try:
            while req != NULL:
                current = req
                req = current.next
                try:
                    self.requests.pop(current.id, None)
                    future = self.waiting.pop(current.id, None)
                    if future is not None and not future.done():    # done: cancelled
                        if current.error != 0:
                            future.set_exception(_lookup_error(current.error, current.sys_errno))
                        else:
                            try:
                                result = _addrinfo_list(current.result)
                            except Exception as exc:      # a canonical name that is not UTF-8
                                future.set_exception(exc)
                            else:
                                future.set_result(result)
                finally:
                    ul_gai_taken(<ul_gai_sink *>self.sink, current)
        finally:
            # An exception (MemoryError) ends the batch: what it did not reach is freed all the
            # same, or the sink's count would never come down to be freed with the loop.
            while req != NULL:
                current = req
                req = current.next
                self.requests.pop(current.id, None)     # (cancel() may no longer reach it)
                ul_gai_taken(<ul_gai_sink *>self.sink, current)

    def detach(self):
        # The loop is closing (before its eventfd is): lookups still running end unseen, as
        # they do on the stock loop, whose executor's callback finds the loop closed.
        if self.sink != NULL:
            ul_gai_detach(<ul_gai_sink *>self.sink)
            self.sink = NULL
        self.waiting = {}
        self.requests = {}

    def abandon(self):
        # A fork child: the sink is the parent's copy, its lock possibly held by a worker that
        # does not exist here.  Left alone (leaked); the child's lookups take the stock way.
        self.sink = NULL
        self.waiting = {}
        self.requests = {}
