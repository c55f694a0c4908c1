# cython: language_level=3
"""add_reader/add_writer on io_uring: readiness callbacks for libraries written against selectors.

psycopg, pyzmq, aiodns, prompt_toolkit and asyncio's own child watchers ask the loop to call them
when a descriptor becomes readable or writable.  Here that question is an IORING_OP_POLL_ADD on
the ring; its completion appends the registered asyncio.Handle to the loop's ready queue, exactly
where the stock loop's _process_events() puts it, so the callback runs as a Handle (context,
exception reporting, debug timing all as usual).

Level-triggered, like epoll
---------------------------
An epoll registration reports a descriptor every time the loop asks while it is readable, so a
callback that does not consume the data is called again on the next iteration.  io_uring's
multishot poll cannot give that: it posts a completion per *wake-up* of the file's wait queue
(edge-triggered), and data that nobody read wakes nobody.  So each direction uses a one-shot
poll that is re-submitted from its own completion handler.  The re-submitted SQE only reaches the
kernel with the *next* io_uring_enter, which BaseEventLoop makes after this iteration's ready
callbacks have run; the kernel evaluates readiness at that moment -- after the callback had its
chance to consume -- and completes at once if the data is still there.  That is epoll's level-
triggered contract at the cost of one SQE per event, and the SQEs of an iteration share its one
system call.

Removing a callback cancels the poll in the kernel (ASYNC_CANCEL).  The poll may still complete
with an event that raced the cancel; with no handle registered any more, that event is dropped,
so nothing fires after remove_reader()/remove_writer() returned.

Errors follow the stock loop: an invalid descriptor or file object raises ValueError (the
selectors module's messages); a descriptor that is not open raises OSError(EBADF), and a regular
file or a directory raises PermissionError(EPERM), which is what epoll_ctl(2) answers for them.
"""

cimport cython

from uringloop._sys cimport ECANCELED, EBADF
from uringloop._ops cimport Completer, Proactor, Operation, PollOp, OP_IDLE

import errno as _errno
import os
import stat as _stat

from asyncio import events as _events

cdef object _Handle = _events.Handle
cdef object _fstat = os.fstat
cdef object _S_ISREG = _stat.S_ISREG
cdef object _S_ISDIR = _stat.S_ISDIR

cdef extern from "<poll.h>":
    enum:
        POLLIN, POLLOUT


cdef int _fileobj_to_fd(object fileobj) except -2:
    """The fd of an int or of an object with fileno(), with the selectors module's errors."""
    cdef long fd
    if isinstance(fileobj, int):
        fd = fileobj
    else:
        try:
            fd = int(fileobj.fileno())
        except (AttributeError, TypeError, ValueError):
            raise ValueError(f"Invalid file object: {fileobj!r}") from None
    if fd < 0:
        raise ValueError(f"Invalid file descriptor: {fd}")
    return <int>fd


cdef int _check_pollable(int fd) except -1:
    mode = _fstat(fd).st_mode          # OSError(EBADF) for a descriptor that is not open
    if _S_ISREG(mode) or _S_ISDIR(mode):
        # epoll_ctl(2) refuses these with EPERM; io_uring would report them ready forever.
        raise PermissionError(_errno.EPERM, os.strerror(_errno.EPERM))
    return 0


@cython.final
cdef class FdWatch(Completer):

    def __init__(self, Readiness registry, int fd, fileobj):
        self.registry = registry
        self.fd = fd
        self.fileobj = fileobj
        self.read_poll = PollOp(registry.proactor, self, fd, None)
        self.read_poll.events = POLLIN
        self.write_poll = PollOp(registry.proactor, self, fd, None)
        self.write_poll.events = POLLOUT

    cdef int arm(self, PollOp poll) except -1:
        # A poll still in the kernel (even one being cancelled) re-arms from its completion.
        if poll.state != OP_IDLE or self.registry.proactor.closing:
            return 0
        poll.keep = self.fileobj
        poll.submit()
        return 0

    cdef int disarm(self, PollOp poll) except -1:
        if poll.state != OP_IDLE:
            poll.cancel()
        return 0

    cdef int op_done(self, Operation op, int res, unsigned flags) except -1:
        cdef bint read = op is self.read_poll
        cdef object handle = self.reader if read else self.writer
        if handle is None:
            return 0                    # removed meanwhile: nothing fires any more
        if res == -ECANCELED:
            # Cancelled by a remove that was followed by a new registration (or the loop is
            # closing, which arm() checks): poll again for the handle now registered.
            self.arm(<PollOp>op)
            return 0
        if res == -EBADF:
            # The descriptor was closed while registered: epoll forgets such a descriptor
            # silently, and so do we (the registration stays until removed).
            return 0
        if res < 0:
            self.registry.loop.call_exception_handler({
                'message': f'poll on fd {self.fd} failed: {os.strerror(-res)}',
                'exception': OSError(-res, os.strerror(-res)),
                'handle': handle,
            })
            return 0
        if handle._cancelled:
            # As the stock loop's _process_events(): a cancelled handle unregisters itself.
            self.registry.remove(self.fd, read)
            return 0
        self.registry.ready.append(handle)
        self.arm(<PollOp>op)
        return 0


@cython.final
cdef class Readiness:
    """The loop's readiness registrations: fd -> FdWatch."""

    def __init__(self, loop):
        self.loop = loop
        self.proactor = <Proactor>loop._proactor
        self.ready = loop._ready
        self.watches = {}

    cdef int lookup(self, object fileobj) except -1:
        cdef FdWatch watch
        try:
            return _fileobj_to_fd(fileobj)
        except ValueError:
            # A closed socket object reports fileno() -1: find it among the registrations by
            # identity, as the selectors module does.
            for watch in self.watches.values():
                if watch.fileobj is fileobj:
                    return watch.fd
            raise

    cdef object add(self, object fileobj, object callback, tuple args, bint read):
        cdef int fd = self.lookup(fileobj)
        cdef FdWatch watch = self.watches.get(fd)
        handle = _Handle(callback, args, self.loop, None)
        if watch is None:
            _check_pollable(fd)
            watch = FdWatch(self, fd, fileobj)
            self.watches[fd] = watch
        if read:
            old, watch.reader = watch.reader, handle
            watch.arm(watch.read_poll)
        else:
            old, watch.writer = watch.writer, handle
            watch.arm(watch.write_poll)
        if old is not None:
            old.cancel()
        return handle

    cdef bint remove(self, object fileobj, bint read) except -1:
        cdef int fd
        cdef FdWatch watch
        if self.loop.is_closed():
            return False
        fd = self.lookup(fileobj)
        watch = self.watches.get(fd)
        if watch is None:
            return False
        if read:
            handle, watch.reader = watch.reader, None
            watch.disarm(watch.read_poll)
        else:
            handle, watch.writer = watch.writer, None
            watch.disarm(watch.write_poll)
        if watch.reader is None and watch.writer is None:
            del self.watches[fd]
        if handle is None:
            return False
        handle.cancel()
        return True

    def close(self):
        """The loop is closing: stop every poll (the drain then collects their completions)."""
        cdef FdWatch watch
        for watch in self.watches.values():
            watch.reader = watch.writer = None
            watch.disarm(watch.read_poll)
            watch.disarm(watch.write_poll)
        self.watches.clear()

    def polling(self, fileobj, bint read):
        """True while a poll for this fd and direction is in the kernel (for repr/tests)."""
        cdef FdWatch watch = self.watches.get(self.lookup(fileobj))
        if watch is None:
            return False
        return (watch.read_poll if read else watch.write_poll).state != OP_IDLE

    def __len__(self):
        return len(self.watches)


cdef Readiness _registry(loop):
    cdef Readiness registry = loop._ul_readiness
    if registry is None:
        registry = Readiness(loop)
        loop._ul_readiness = registry
    return registry


# ---- bound onto uringloop.Loop as the private methods asyncio internals call ----

def add_reader(self, fd, callback, *args):
    """Call callback(*args) whenever fd is readable (level-triggered); returns the Handle."""
    self._check_closed()
    return _registry(self).add(fd, callback, args, True)


def remove_reader(self, fd):
    """Stop watching fd for reading; True if a callback was registered."""
    return _registry(self).remove(fd, True)


def add_writer(self, fd, callback, *args):
    """Call callback(*args) whenever fd is writable (level-triggered); returns the Handle."""
    self._check_closed()
    return _registry(self).add(fd, callback, args, False)


def remove_writer(self, fd):
    """Stop watching fd for writing; True if a callback was registered."""
    return _registry(self).remove(fd, False)
