# cython: language_level=3
"""add_reader/add_writer: readiness callbacks for libraries written against selectors.

psycopg, pyzmq, aiodns, prompt_toolkit and asyncio's own child watchers ask the loop to call them
when a descriptor becomes readable or writable.  The registrations live in an epoll instance of
the loop's own, and the ring waits on that instance with one request: IORING_OP_EPOLL_WAIT where
the kernel has it (6.15), whose completion brings the ready descriptors themselves -- the
iteration's io_uring_enter is the only system call an event costs, as epoll_wait is the stock
loop's -- or else a POLLIN poll request, after whose completion epoll_wait(2) with a zero
timeout collects them (two system calls per event).
Their registered asyncio.Handles run in the iteration's I/O phase (Proactor.io_handles): after
the callbacks that were ready when it began and before the timers due, exactly where the stock
loop's _process_events() puts them in its ready queue, so a callback runs as a Handle (context,
exception reporting, debug timing as usual) and in the stock order.  (They went to the end of
the ready queue before, behind what the iteration's completions had queued: a reader ready in
the same iteration as a timer ran after the timer, one iteration late.)  When the iteration's
ready callbacks queued callbacks of their own, which the stock loop would run first, the
handles go into the ready queue right behind those instead (Readiness.queue_io_handle).

Why epoll here, in a loop that is otherwise a Proactor on io_uring
-----------------------------------------------------------------
An earlier version gave each descriptor its own poll request on the ring.  A request in the
kernel holds a reference to its file until it ends, and epoll's registrations do not: closing
the last descriptor of a file removes it from every epoll set.  Programs close registered
descriptors without removing them first, and the stock loop lets them -- so with a poll request
per descriptor, a socket closed that way stayed open in the kernel (its peer never saw EOF, a
closed listener still accepted connections, and the old callback ran on the closed descriptor
at the next event).  epoll also answers add_reader() for what cannot be waited on the way the
stock loop does, because they are epoll_ctl(2)'s own errors: PermissionError for a regular
file, a directory or /dev/null, OSError(EBADF) for a descriptor that is not open.  And it keeps
epoll's behaviour when a closed descriptor's number is reused (modifying a registration the
instance no longer has adds it again; the stock selector skips that system call when the
event mask is unchanged, and the new file is never watched).

Level-triggered, like the stock loop
------------------------------------
The registrations are level-triggered epoll entries, so epoll_wait reports a descriptor every
time it is asked while the descriptor is ready.  The ring's request on the epoll instance
(called the poll here and in the code, whichever of the two it is) is one-shot.  After a
completion that dispatched handles it is submitted again at the start of the next iteration's
io_uring_enter (Proactor.call_before_enter), so it reaches the kernel only once those callbacks
have run.  Polling an epoll instance (or waiting on it) asks each of its reported
level-triggered entries again whether it is still ready -- after the callback had its chance
to consume -- so the poll completes at once if data is still there, and the callback runs
again in the next iteration, as with the stock loop.  (It was re-submitted from its completion
before, counting on the iteration's io_uring_enter to come after the callbacks.  But a completion handler later in the
same pass may enter the ring at once -- a transport closed in data_received() cancels its
receive, a write of megabytes is submitted early -- and that enter took the poll to the kernel
too: it completed at once, the descriptor not yet read, and the same reader was queued twice.
Its second call found nothing to read: BlockingIOError, or a blocking read that hung the loop.
And it was re-armed by a handle queued behind the dispatched ones after that: a Handle made,
run and freed per event.  With the epoll_wait(2) that IORING_OP_EPOLL_WAIT saves, that was
libpython's time per round trip of an add_reader ping-pong 3.9 -> 2.3 us, perf, 3.11.)

The poll is submitted from the loop's own thread only (the ring takes work from that thread
alone): a first registration made from another thread while the loop waits arms it through
call_soon_threadsafe(), which also wakes the loop -- as a stock epoll_wait in progress sees
an epoll_ctl made meanwhile.

Removing a callback takes the descriptor out of the set (or narrows its events): nothing fires
after remove_reader()/remove_writer() returned, also when its event was already collected into
the ready queue (the handle is cancelled, as the stock loop cancels it).
"""

cimport cython
from libc.stdint cimport uint32_t
from libc.limits cimport INT_MAX
from cpython.mem cimport PyMem_Free

from uringloop._sys cimport ECANCELED, EBADF, POLLIN, errno, epoll_event, UL_OP_EPOLL_WAIT
from uringloop._proactor cimport Completer, Proactor, Operation, OP_IDLE, os_error
from uringloop._ops cimport PollOp, EpollWaitOp, grow_events

from _thread import get_ident as _get_ident

from asyncio import events as _events

cdef object _Handle = _events.Handle

cdef extern from "<sys/epoll.h>" nogil:
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event *event)
    int epoll_wait(int epfd, epoll_event *events, int maxevents, int timeout)
    enum:
        EPOLL_CLOEXEC, EPOLL_CTL_ADD, EPOLL_CTL_MOD, EPOLL_CTL_DEL, EPOLLIN, EPOLLOUT

cdef extern from "<errno.h>" nogil:
    enum:
        ENOENT

cdef extern from "<unistd.h>" nogil:
    int c_close "close"(int fd)


cdef int _fileobj_to_fd(object fileobj) except -2:
    """The fd of an int or of an object with fileno(), with the selectors module's errors (and
    epoll's OverflowError for a number no descriptor can have)."""
    if isinstance(fileobj, int):
        fd = int(fileobj)
    else:
        try:
            fd = int(fileobj.fileno())
        except (AttributeError, TypeError, ValueError):
            raise ValueError(f"Invalid file object: {fileobj!r}") from None
    if fd < 0:
        raise ValueError(f"Invalid file descriptor: {fd}")
    if fd > INT_MAX:
        raise OverflowError("Python int too large to convert to C int")
    return <int>fd


@cython.final
cdef class FdWatch:

    def __init__(self, int fd, fileobj):
        self.fd = fd
        self.fileobj = fileobj

    cdef uint32_t mask(self):
        return ((EPOLLIN if self.reader is not None else 0)
                | (EPOLLOUT if self.writer is not None else 0))


@cython.final
cdef class Readiness(Completer):
    """The loop's readiness registrations: fd -> FdWatch, mirrored in an epoll instance."""

    def __cinit__(self):
        self.epfd = -1

    def __init__(self, loop):
        self.loop = loop
        self.proactor = <Proactor>loop._proactor
        self.watches = {}
        self.kernel_collects = bool(loop._features.get('epoll_wait'))

    def __dealloc__(self):
        if self.epfd >= 0:
            c_close(self.epfd)
        PyMem_Free(self.events)

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

    cdef int ctl(self, int op, int fd, uint32_t mask) except -1:
        """epoll_ctl(2); a modification the instance cannot find (the descriptor was closed,
        and its number may now name another file) becomes an addition."""
        cdef epoll_event event
        event.events = mask
        event.data.u64 = 0
        event.data.fd = fd
        if epoll_ctl(self.epfd, op, fd, &event) == 0:
            return 0
        if op == EPOLL_CTL_MOD and errno == ENOENT:
            return self.ctl(EPOLL_CTL_ADD, fd, mask)
        raise os_error(errno)

    cdef int new_poll(self) except -1:
        """The ring's wait on the (new) epoll instance, not yet submitted."""
        cdef PollOp poll
        if self.kernel_collects:
            self.poll = EpollWaitOp(self.proactor, self, self.epfd, None)
        else:
            poll = PollOp(self.proactor, self, self.epfd, None)
            poll.events = POLLIN
            self.poll = poll
        return 0

    cdef int arm(self) except -1:
        cdef Py_ssize_t registered = len(self.watches)
        if self.proactor.closing or self.proactor.forked:
            # (A fork child's loop: the poll is the parent's, in the parent's ring.)
            return 0
        if self.poll.state != OP_IDLE:
            # A poll still in the kernel (even one being cancelled) re-arms from its completion.
            if (self.kernel_collects and not self.poll.cancel_asked
                    and registered > (<EpollWaitOp>self.poll).maxevents):
                # More registrations than the request has room for events: were they all ready
                # at once, some would wait for the next iteration.  Its buffer cannot grow
                # under the kernel: the request is cancelled, and its completion arms a new
                # one with room for all.
                self.poll.cancel()
            return 0
        if self.proactor.call_before_enter is self:
            return 0        # its handles have yet to run: armed at the next enter
        if self.kernel_collects:
            # Room for every registration, as the stock selector asks epoll for: all that is
            # ready runs in one iteration -- and for as many again, so that registering more
            # seldom outgrows a request in flight (above).  epoll reports each descriptor at
            # most once per call, so the room beyond the registrations is never filled.
            (<EpollWaitOp>self.poll).reserve(max(2 * registered, 16))
        self.poll.submit()
        return 0

    cdef int before_enter(self) except -1:
        """The iteration after a completion that dispatched handles enters the kernel: they
        have run (module docstring)."""
        if self.epfd >= 0:
            self.arm()
        return 0

    def arm_from_any_thread(self):
        """arm_at_enter(), from the loop's thread: add_reader() called from another thread
        while the loop runs there may not write to the ring, and its wait would not see the
        poll."""
        thread_id = self.loop._thread_id
        if thread_id is not None and thread_id != _get_ident():
            self.loop.call_soon_threadsafe(self.arm_in_loop_thread)
        else:
            self.arm_at_enter()

    def arm_in_loop_thread(self):
        if self.epfd >= 0:
            self.arm_at_enter()

    cdef int arm_at_enter(self) except -1:
        """After a registration: an idle poll is armed by the iteration's next enter
        (before_enter), not now -- sized then for every registration made meanwhile.  A
        program that registers many descriptors at once (a hundred before the loop starts) had
        its poll armed by the first with room for 16 events, cancelled by the 17th for one
        with more room, and re-armed from the cancel's completion: none of the readers ran in
        the first iteration, where the stock loop's first poll runs them all.  (A poll in the
        kernel is arm()'s to judge: see there.)"""
        if self.poll.state != OP_IDLE or self.proactor.closing or self.proactor.forked:
            return self.arm()
        self.proactor.call_before_enter = self
        return 0

    cdef int op_done(self, Operation op, int res, unsigned flags) except -1:
        if self.epfd < 0 or self.proactor.closing:
            return 0                    # closed: nothing fires any more
        if res < 0 and res != -ECANCELED:
            # The registered descriptors are not polled here -- epoll drops a closed one
            # silently, and reports an error or hang-up on one as readiness (dispatch) -- so
            # the poll on the instance itself fails only when its number no longer names an
            # open file: EBADF, the number closed by someone else (a double close, a
            # closerange()) -- or, where the kernel collects the events, names a file that is
            # no epoll instance: EINVAL.  It was reported and never submitted again: every
            # reader and writer stopped firing while still registered.  The stock loop's
            # epoll_wait raises out of run_forever() then; here the instance is made again
            # (renew).
            self.renew(-res)
            return 0
        if res > 0:
            if self.kernel_collects:
                self.dispatch((<EpollWaitOp>op).events, res)
            else:
                self.collect()
            self.proactor.call_before_enter = self      # re-armed there (before_enter)
            return 0
        self.arm()
        return 0

    cdef int collect(self) except -1:
        """The PollOp way: the poll said the instance has events; epoll_wait(2) reads them."""
        cdef int n, room = max(len(self.watches), 1)
        # Room for every registration, as the stock selector asks epoll for: all that is ready
        # runs in this iteration.  (A smaller batch cannot be topped up with a second
        # epoll_wait: level-triggered descriptors just returned would come back again.)
        grow_events(&self.events, &self.events_room, room)
        n = epoll_wait(self.epfd, self.events, room, 0)
        if n < 0:
            # EBADF or EINVAL: the instance's number was closed by someone else (the poll in
            # the kernel holds the instance, so it still completed) and is free or names
            # another file now.  See renew.
            return self.renew(errno)
        return self.dispatch(self.events, n)

    cdef int dispatch(self, epoll_event *ready, int n) except -1:
        """The ready descriptors' handles to the ready queue, as the stock loop's
        _process_events() puts them there."""
        cdef int i
        cdef uint32_t events
        cdef FdWatch watch
        for i in range(n):
            watch = self.watches.get(ready[i].data.fd)
            if watch is None:
                continue
            events = ready[i].events
            # As selectors.EpollSelector: an error or hang-up wakes both directions.
            if events & ~(<uint32_t>EPOLLOUT) and watch.reader is not None:
                if watch.reader._cancelled:
                    # A cancelled handle unregisters itself.  Should its descriptor be closed
                    # while another handle of the file still makes epoll report it, remove()
                    # drops the whole registration and raises (see there); the stock loop's
                    # _process_events() lets that escape from run_forever(), here the writer
                    # just goes with it.
                    try:
                        self.remove(watch.fd, True)
                    except OSError:
                        continue
                else:
                    self.queue_io_handle(watch.reader)
            if events & ~(<uint32_t>EPOLLIN) and watch.writer is not None:
                if watch.writer._cancelled:
                    try:
                        self.remove(watch.fd, False)
                    except OSError:
                        pass
                else:
                    self.queue_io_handle(watch.writer)
        return 0

    # Where a ready descriptor's callback runs.  The stock loop runs it after every callback
    # that was queued before its poll; ours enters the kernel right after this iteration's
    # ready callbacks (_sched.pyx says why), so what those queued is still waiting.  Run in the
    # I/O phase, the reader or writer would overtake it -- and in a common pattern (anyio's
    # wait_readable/wait_writable; asyncio's own sock_* waits before 3.12)
    #     loop.add_writer(sock, fut.set_result, None)
    #     fut.add_done_callback(lambda f: loop.remove_writer(sock))
    # what is waiting is the done-callback that removes the writer: `fut` cancelled in that
    # pass (a cancel scope, a timeout), or resolved by the writer's previous call, the writer
    # ran on, and set the result of a done future -- an InvalidStateError through the exception
    # handler, which the stock loop never reports.  So when the ready callbacks queued anything,
    # the handle goes into the ready queue right behind it (ahead of what this iteration's
    # completions queued, which the stock loop would run after its I/O callbacks too); when
    # they queued nothing -- a descriptor ready all along, the usual case -- it runs in the I/O
    # phase, where it is in the stock order already.  (Queueing every reader behind the whole
    # ready queue was tried: a descriptor ready all along then ran one callback late.)  Either
    # way it runs before the next enter, which re-arms the poll (before_enter).
    cdef int queue_io_handle(self, object handle) except -1:
        cdef Proactor proactor = self.proactor
        if proactor.queued_by_ready_phase:
            self.loop._ready.insert(proactor.queued_by_ready_phase + proactor.io_deferred,
                                    handle)
            proactor.io_deferred += 1
        else:
            proactor.io_handles.append(handle)
        return 0

    cdef object add(self, object fileobj, object callback, tuple args, bint read):
        cdef int fd = self.lookup(fileobj)
        cdef FdWatch watch = self.watches.get(fd)
        cdef uint32_t mask = EPOLLIN if read else EPOLLOUT
        self.proactor.check_usable()
        if self.epfd < 0:
            self.epfd = epoll_create1(EPOLL_CLOEXEC)
            if self.epfd < 0:
                raise os_error(errno)
            self.new_poll()
        if fd == self.epfd:
            # The instance took the lowest free number: `fd` was not open before (the stock
            # loop's selector exists from the start, and epoll_ctl says EBADF there).
            raise os_error(EBADF)
        if watch is None:
            self.ctl(EPOLL_CTL_ADD, fd, mask)       # PermissionError, OSError(EBADF), ...
            watch = FdWatch(fd, fileobj)
            self.watches[fd] = watch
        else:
            try:
                self.ctl(EPOLL_CTL_MOD, fd, watch.mask() | mask)
            except OSError as exc:
                # A registration of a descriptor closed since, renewed for the same events:
                # the stock selector makes no system call for that and just swaps the callback.
                if exc.errno != EBADF or watch.mask() | mask != watch.mask():
                    # Otherwise the registration goes, as the selector's does when its
                    # modify() fails (epoll has dropped a closed descriptor already).
                    self.forget(watch)
                    raise
        handle = _Handle(callback, args, self.loop, None)
        if read:
            old, watch.reader = watch.reader, handle
        else:
            old, watch.writer = watch.writer, handle
        if old is not None:
            old.cancel()
        self.arm_from_any_thread()
        return handle

    cdef int renew(self, int err) except -1:
        """The epoll instance's number was closed under the loop (op_done, dispatch): make a
        new instance, add every registration to it again, report what happened to the
        exception handler, and arm the poll on the new one.  Every callback goes on firing
        as before.  The old number is never closed again by the loop: it may name someone
        else's file by now (close() closed it before, whatever it had become).  A registration
        whose descriptor is closed by now is not added (epoll would have dropped it as well)
        but stays known, as the stock selector keeps it: remove_reader() still says True; one
        whose number another file has taken since is watched for that file, as add_reader()
        would watch it (README: a reused descriptor number).  (Undetectable, and left alone:
        the old number taken meanwhile by another epoll instance, or by a socket that never
        becomes readable, before the poll is submitted again.  And should the poll ever fail
        for another reason with the instance still there, that instance is left open: no
        such failure is known for a poll on an epoll descriptor.)"""
        cdef FdWatch watch
        cdef epoll_event event
        cdef int old = self.epfd
        cdef int fd = epoll_create1(EPOLL_CLOEXEC)
        if fd < 0:
            err = errno
            self.epfd = -1
            self.watches.clear()
            raise os_error(err)
        self.epfd = fd
        self.new_poll()
        for watch in self.watches.values():
            event.events = watch.mask()
            event.data.u64 = 0
            event.data.fd = watch.fd
            epoll_ctl(fd, EPOLL_CTL_ADD, watch.fd, &event)
        self.arm()          # before the handler, which may do anything
        self.loop.call_exception_handler({
            'message': f'the readiness epoll instance (fd {old}) was closed by someone else: '
                       f'made a new one (fd {fd}) with every add_reader()/add_writer() '
                       f'registration',
            'exception': os_error(err),
        })
        return 0

    cdef int forget(self, FdWatch watch) except -1:
        cdef epoll_event unused
        del self.watches[watch.fd]
        if self.proactor.forked:
            # A fork child's loop (one that goes on inside its run cancels tasks in
            # asyncio.run()'s shutdown, whose clean-up removes readers): the epoll instance is
            # shared with the parent, and a deletion here took the parent's registration away.
            return 0
        epoll_ctl(self.epfd, EPOLL_CTL_DEL, watch.fd, &unused)    # errors: already gone
        return 0

    cdef bint remove(self, object fileobj, bint read) except -1:
        cdef int fd, err
        cdef FdWatch watch
        cdef epoll_event unused
        if self.loop.is_closed():
            return False
        try:
            fd = self.lookup(fileobj)
        except OverflowError:
            return False        # no descriptor has that number: none is registered (as stock)
        watch = self.watches.get(fd)
        if watch is None:
            return False
        if read:
            handle, watch.reader = watch.reader, None
        else:
            handle, watch.writer = watch.writer, None
        if watch.reader is None and watch.writer is None:
            # Errors are ignored: a descriptor closed while registered has already left the set
            # (the stock selector ignores them when unregistering as well).
            self.forget(watch)
        elif handle is not None and not self.proactor.forked:     # (forked: see forget)
            # The other direction stays registered: its events are narrowed.  That can fail --
            # EBADF when the descriptor was closed meanwhile, ENOENT when its number now names
            # a file the set never had -- and then the stock selector's modify() drops the whole
            # registration, the other direction's callback with it, and remove_reader() /
            # remove_writer() raise that OSError (selectors._PollLikeSelector.modify, the same
            # on 3.10-3.13; neither handle is cancelled there).  The project's rule is the stock
            # loop's exception types, so it is the same here.  (This said True before, and kept
            # the other callback registered for a descriptor that no longer existed.)
            unused.events = watch.mask()
            unused.data.u64 = 0
            unused.data.fd = fd
            if epoll_ctl(self.epfd, EPOLL_CTL_MOD, fd, &unused) != 0:
                err = errno
                self.forget(watch)
                raise os_error(err)
        if handle is None:
            return False
        handle.cancel()
        return True

    def close(self):
        """The loop is closing: stop the poll (the drain collects its completion) and drop
        the epoll instance with every registration.  (In a fork child the instance is shared
        with the parent: it is closed, never modified.)"""
        self.watches.clear()
        if self.epfd >= 0:
            self.poll.cancel()
            c_close(self.epfd)
            self.epfd = -1

    def let_go(self):
        """The loop has closed and drained: the poll (idle now) lets go of us, its owner --
        a reference cycle the loop's own would otherwise join (see unix.py's close)."""
        if self.poll is not None and self.poll.state == OP_IDLE:
            self.poll.owner = None

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
    if self.is_closed():
        return False        # as the stock loop (the registry was let go of at the close)
    return _registry(self).remove(fd, True)


def add_writer(self, fd, callback, *args):
    """Call callback(*args) whenever fd is writable (level-triggered); returns the Handle."""
    self._check_closed()
    return _registry(self).add(fd, callback, args, False)


def remove_writer(self, fd):
    """Stop watching fd for writing; True if a callback was registered."""
    if self.is_closed():
        return False        # as the stock loop (the registry was let go of at the close)
    return _registry(self).remove(fd, False)
