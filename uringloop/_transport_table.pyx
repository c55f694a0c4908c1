# cython: language_level=3
"""The loop's descriptor -> transport table (BaseEventLoop's `_transports`), compiled."""

from cpython.weakref cimport PyWeakref_NewRef


cdef class TransportTable:
    """The loop's `_transports`: each descriptor a transport uses -> that transport, held
    weakly, as the stock selector loop holds them; _ensure_fd_no_transport() and the sock_*
    calls ask it whether a descriptor is some transport's.

    The stock loop's WeakValueDictionary is Python code -- a KeyedRef with a removal callback
    made per entry, get() and __delitem__ as Python methods -- about 10k instructions of the
    ~98k in the loop for a loopback create_connection() and its close (callgrind, Python 3.11).
    Here an entry is a plain weak reference with no callback, made in C.  The one way an entry
    outlives its transport, a transport collected without being closed, leaves it dead: it reads
    as absent everywhere and is replaced when its number is registered again (the kernel hands
    out the lowest free numbers), so the table holds no more entries than descriptors were in
    use at once.  `data` is the dict underneath, for a quick membership test (the sock_* calls):
    an entry found there may be dead, which a lookup then tells."""

    def __cinit__(self):
        self.data = {}

    cdef object lookup(self, object fd):
        cdef object ref = self.data.get(fd)
        return None if ref is None else ref()

    cdef int put(self, object fd, object transport) except -1:
        self.data[fd] = PyWeakref_NewRef(transport, None)
        return 0

    cdef int drop(self, object fd, object transport) except -1:
        """Remove fd's entry if it is `transport`'s."""
        cdef object ref = self.data.get(fd)
        if ref is not None and ref() is transport:
            del self.data[fd]
        return 0

    def get(self, fd, default=None):
        transport = self.lookup(fd)
        return default if transport is None else transport

    def __getitem__(self, fd):
        transport = self.lookup(fd)
        if transport is None:
            raise KeyError(fd)
        return transport

    def __setitem__(self, fd, transport):
        self.put(fd, transport)

    def __delitem__(self, fd):
        ref = self.data.pop(fd)
        if ref() is None:
            raise KeyError(fd)

    def pop(self, fd, *default):
        if len(default) > 1:
            raise TypeError(f"pop expected at most 2 arguments, got {1 + len(default)}")
        ref = self.data.pop(fd, None)
        transport = None if ref is None else ref()
        if transport is None:
            if default:
                return default[0]
            raise KeyError(fd)
        return transport

    def __contains__(self, fd):
        return self.lookup(fd) is not None

    def items(self):
        return [(fd, t) for fd, t in [(fd, ref()) for fd, ref in self.data.items()]
                if t is not None]

    def keys(self):
        return [fd for fd, _ in self.items()]

    def values(self):
        return [t for _, t in self.items()]

    def __iter__(self):
        return iter(self.keys())

    def __len__(self):
        return len(self.items())

    def __repr__(self):
        return f'<TransportTable {dict(self.items())!r}>'
