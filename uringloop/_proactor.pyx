# cython: language_level=3
"""The Proactor, which submits operations, waits for the kernel and dispatches completions, and
Operation, the base of every request it carries (one object per in-flight io_uring request; the
kinds -- receive, send, accept, poll, ... -- are in _ops.pyx).

How submission, completion, cancellation and buffer ownership fit together
---------------------------------------------------------------------------
Every request the loop makes of the kernel is an Operation.  Submitting one fills an SQE whose
user_data is the operation's own address and links the operation into the Proactor's list of
pinned operations (Proactor.pin), a strong reference, so the object -- and everything it pins:
the Python buffer the kernel writes into or reads from, the socket object whose fd the kernel
holds, the sockaddr the kernel reads -- stays alive for as long as the kernel may touch it.  When
a CQE arrives, its user_data *is* the operation (no dictionary lookup): the Proactor calls
op.complete(res, flags), and only on the operation's *final* CQE (no IORING_CQE_F_MORE) does it
drop the pins and unlink it.  That is the first Proactor rule of the seed document -- a lent
buffer outlives its operation -- enforced in one place for every kind of request.

Why a list the Proactor owns, and not a bare Py_INCREF per request (as before): a reference no
object holds is a root the garbage collector cannot see past.  The wake-up read is in flight for
as long as the loop is open, a reading transport's receive likewise, and each leads back to the
loop -- so a loop a program dropped without close() could never be collected: its ring, its
descriptors and every connection it served stayed for the life of the process, where the stock
loop's __del__ closes a forgotten loop.  Linked from the Proactor, the requests are part of the
loop's own reference cycle; when that cycle is garbage, the finalizers run before anything is
freed (PEP 442), and Proactor.__del__ closes the ring first -- cancelling and reaping every
request -- or, when it cannot (another thread of a SINGLE_ISSUER ring), makes itself immortal.

Cancellation never frees anything.  op.cancel() submits IORING_OP_ASYNC_CANCEL naming the
operation's user_data and marks it CANCELLING; the operation still belongs to the kernel until its
own final CQE, which carries either -ECANCELED or -- when the request won the race -- its real
result.  The owner (a Completer) decides what a late result means: the sock_* layer keeps late
bytes and connections for the next caller, a transport delivers them.  An operation whose CQE
reports -EAGAIN is resubmitted here, so no owner ever sees it.

Closing the Proactor submits one CANCEL_ANY|CANCEL_ALL request and then keeps reaping until the
in-flight count reaches zero; only then is the ring unmapped.  If the kernel does not finish in
time (an uncancellable request), the remaining operations are deliberately leaked -- their
references are never dropped -- because freeing a buffer the kernel may still write is worse.

The Proactor is what asyncio.BaseEventLoop sees as its `_selector`: BaseEventLoop._run_once calls
`select(timeout)` once per iteration, with the timeout it computed from its ready queue and timer
heap.  select() pushes the backlog into the SQ, makes exactly one io_uring_enter (submit everything
queued this iteration + wait for completions or the deadline), and dispatches every CQE.  It
returns an empty event list: completions have already been delivered.  (The loop's own compiled
iteration, _sched.LoopCore, calls the two halves, enter_for() and dispatch_completions(), itself.)
How that enter waits -- for one completion or for several, spinning first or not -- is the
WaitPolicy's to decide (_waiting.pyx).
"""

cimport cython
from cpython.ref cimport PyObject, Py_INCREF
from libc.stdint cimport uint64_t, uintptr_t
from libc.math cimport ceil
from posix.unistd cimport close as c_close, read as c_read

from uringloop._sys cimport *
from uringloop._ring cimport Ring, BufferRing
from uringloop._waiting cimport WaitPolicy
from uringloop._sched cimport ul_socket_fd

import _socket as _socket_c
import time as _time
from asyncio.log import logger as _logger

cdef extern from "<sys/eventfd.h>":
    int eventfd(unsigned int initval, int flags)
    int EFD_NONBLOCK, EFD_CLOEXEC


# ---------------------------------------------------------------------------------------------
# the Proactor
# ---------------------------------------------------------------------------------------------

cdef class Completer:
    cdef int op_done(self, Operation op, int res, unsigned flags) except -1:
        return 0

    cdef int op_progress(self, Operation op, int res) except -1:
        return 0

    cdef int before_enter(self) except -1:
        return 0


# A sock_* request on a socket its owner closes before the request reaches the kernel.
#
# An operation's SQE names its socket by number, and the kernel looks the number up only when
# io_uring_enter consumes the SQE -- at the end of the iteration in which the request was made.
# Between the two, another callback of the same pass of the ready queue may close the socket
# and make or accept a new one, which takes the lowest free number: very likely this one.  The
# request would then act on the new socket: a receive takes its bytes, a send writes to its
# peer, an accept takes its connections.  socket.close() tells the loop nothing, so the loop
# looks itself, just before the enter, while the SQEs written since the last one are still ours
# to change: every sock_* operation submitted since then is remembered (guards_fd, sq_slot),
# and one whose socket object no longer has that number has its SQE's descriptor replaced by
# -1, so that the kernel fails it with EBADF -- what the closed socket's own methods raise, and
# what the operation's owner reports for a socket closed under a request (socket_closed).  The
# cost is a list append per sock_* submission and a look at each of them per enter.  The
# stream transports' requests are guarded the same way, except where the loop made the socket
# itself and handed it to no one (its servers' connections, its connects to an address): a
# socket the caller gave (create_connection(sock=...), connect_accepted_socket()) may be closed
# by its owner between a write() and the enter (SocketTransport.setup).  (An SQE the kernel
# consumed early -- the SQ full, or a submit_pending() -- is past changing; those windows are
# inside the loop's own calls, not between two callbacks.)

cdef class StaleFdGuard(EnterHook):

    def __init__(self, Ring ring):
        self.ring = ring
        self.ops = []

    cdef int before_enter(self) except -1:
        cdef Operation op
        cdef Ring ring = self.ring
        cdef io_uring_sqe *sqe
        cdef list ops = self.ops
        ring.enter_hook = None
        for op in ops:
            # Still waiting in the SQ (not consumed by an earlier enter), still this operation's
            # SQE (not resubmitted into another slot since), and its socket closed since.
            if op.state != OP_SUBMITTED or op.fd < 0 or op.keep is None:
                continue
            sqe = ring.sqe_not_taken(op.sq_slot, op.ud())
            if sqe == NULL or sqe.fd != op.fd:
                continue
            if socket_fd_now(op.keep) != op.fd:
                sqe.fd = -1
        del ops[:]          # (the list is reused: one per enter would be an allocation each)
        return 0


cdef class Proactor:
    """The completion dispatcher one Loop owns (BaseEventLoop knows it as `_selector`)."""

    def __init__(self, loop, Ring ring):
        # First: a bad setting (URINGLOOP_SPIN_US) must be refused before anything below needs
        # closing.
        self.waits = WaitPolicy(ring)
        self.loop = loop
        self.ring = ring
        self.fd_guard = StaleFdGuard(ring)
        self.backlog = []
        self.pending_cancels = []
        self.io_handles = []
        self.after_ready_pass = []
        self.after_next_ready_pass = []
        self.buffer_rings = []
        self.exception_handler = loop.call_exception_handler
        # Blocking on purpose: io_uring arms its own poll for a file that supports NOWAIT, whereas
        # a read on an O_NONBLOCK eventfd may complete with -EAGAIN and spin.
        self.wake_fd = eventfd(0, EFD_CLOEXEC)
        if self.wake_fd < 0:
            raise os_error(_errno())        # (EMFILE: as the stock loop's socketpair() says it)
        # The wake-up is itself a completion: an 8-byte read on an eventfd that another thread
        # writes (call_soon_threadsafe, signal delivery).  It is always in flight while the loop
        # is open, so a waiting io_uring_enter returns as soon as anyone writes.
        self.wakeup_op = WakeupOp(self, None, self.wake_fd)
        self.wakeup_op.submit()

    # ---- submission side ----

    cdef int check_usable(self) except -1:
        if self.forked:
            raise RuntimeError(
                "this uringloop event loop was created in a parent process before os.fork(); "
                "its io_uring belongs to the parent and cannot be used in the child -- create a "
                "new event loop in the child")
        if self.ring.closed:
            raise RuntimeError("Event loop is closed")
        return 0

    def after_fork_in_child(self, bint running_here):
        """This is a fork child (called from os.fork()'s after-child hook, the only thread
        left).  `running_here`: the fork was made inside this loop's run, in the thread that
        runs it, so the child goes on inside that run."""
        self.forked = True
        if self.ring.closed:
            return
        # The eventfd is the parent's file, read by the parent's ring: a call_soon_threadsafe()
        # in the child would wake the parent, and nothing would wake the child.  Closing our copy
        # of the descriptor leaves the parent's alone.  (-1 if none can be had: the child's waits
        # then end by their timeout only.)
        if self.resolver is not None:
            self.resolver.abandon()       # the parent's; the child's lookups take the stock way
        c_close(self.wake_fd)
        self.wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)
        self.wake_pending = 0
        # Why a loop running at the fork may go on, where an idle one refuses to run at all: the
        # child's code is inside run_forever() and cannot follow the advice of check_usable()'s
        # error and make a new loop -- asyncio allows no loop to run inside a running one -- nor
        # even finish: asyncio.run()'s shutdown (cancelling the tasks, closing the async
        # generators and the executor) runs this loop again, so a child leaving with
        # sys.exit(3) left with status 1 and that RuntimeError instead.  It goes on without the
        # ring (wait_in_fork_child): callbacks, timers and call_soon_threadsafe() work, new I/O
        # is still refused (submit), and what the parent has in flight is not ours to collect.
        self.runs_in_fork_child = running_here

    cdef int submit(self, Operation op) except -1:
        cdef io_uring_sqe *sqe
        if (self.closing and op is not self.wakeup_op) or self.forked:
            # A fork child's inherited transport or file: the ring's memory is shared with the
            # parent, whose submission queue an SQE written here would join.
            self.check_usable()
            raise RuntimeError("Event loop is closed")
        sqe = NULL if self.backlog else self.ring.get_sqe()
        # (An operation resubmitted from its own completion is still pinned: dispatch() unpins
        # only what stayed idle.)
        cdef bint newly_pinned = not op.pinned
        if newly_pinned:
            self.pin(op)
        self.inflight += 1
        op.cancel_asked = False
        if sqe == NULL:
            # SQ full even after an early submit: keep order by queueing behind earlier ones.
            op.state = OP_QUEUED
            self.backlog.append(op)
            return 0
        op.sq_slot = self.ring.sq_tail - 1
        try:
            op.prep(sqe)
        except BaseException:
            # A prep failure leaves the slot filled with a NOP of user_data 0 (ignored).
            ul_prep_rw(sqe, UL_OP_NOP, -1, NULL, 0, 0, 0)
            self.inflight -= 1
            if newly_pinned:
                self.unpin(op)
            raise
        op.state = OP_SUBMITTED
        if op.guards_fd:
            self.guard_fd(op)
        return 0

    cdef int guard_fd(self, Operation op) except -1:
        """`op`, a sock_* operation, has just been written into the SQ (at op.sq_slot): its
        socket is looked at again before the enter (StaleFdGuard)."""
        self.fd_guard.ops.append(op)
        self.ring.enter_hook = self.fd_guard
        return 0

    # Changing a request the kernel has not seen yet.
    #
    # A submitted operation's SQE waits in the SQ, ours to change, until an io_uring_enter hands
    # it to the kernel -- normally the iteration's own, after every callback of the iteration
    # has run.  A transport that writes twice in one callback (an HTTP server's headers, then
    # its body) has its first write submitted as a send at once and the second queued behind
    # it, to leave only when the first one's completion comes back: one iteration later, with a
    # second enter and a second completion -- while the stock loop and uvloop send both before
    # the callback returns.  Instead the queued bytes join the send that has not left yet
    # (SendSide.join_unsent), and one sendmsg carries both: unsent() says whether `op` is still
    # in the SQ, and its SQE is rewritten in place (prep_again), or written for another
    # operation that takes its place (swap_unsent).  Nothing the kernel owns is touched: without
    # SQPOLL the kernel reads SQEs only inside io_uring_enter, and the SQ head it advances there
    # says which ones it has taken (one taken early -- submit_early, a cancel's enter -- is
    # past changing, and the write stays queued as before).

    cdef io_uring_sqe *unsent_sqe(self, Operation op) noexcept:
        """`op`'s SQE while it is still in the SQ, not yet taken by the kernel; else NULL."""
        if op.state != OP_SUBMITTED or op.cancel_asked or self.ring.closed or self.forked:
            # (A fork child's view of the SQ is the parent's memory: never written there.)
            return NULL
        return self.ring.sqe_not_taken(op.sq_slot, op.ud())

    cdef bint unsent(self, Operation op) noexcept:
        """Whether `op`'s SQE is still in the SQ, not yet taken by the kernel."""
        return self.unsent_sqe(op) != NULL

    cdef int prep_again(self, Operation op) except -1:
        """Write unsent `op`'s SQE again, in its slot, for what it carries now."""
        cdef io_uring_sqe *sqe = self.unsent_sqe(op)
        if sqe == NULL:
            raise RuntimeError('prep_again() of an operation the kernel has taken')
        op.prep(sqe)
        return 0

    cdef int swap_unsent(self, Operation old, Operation new) except -1:
        """`new` takes unsent `old`'s place in the SQ; `old` is idle after it, released of
        nothing (its owner does that), and never reaches the kernel.  `new` must be idle."""
        cdef io_uring_sqe *sqe = self.unsent_sqe(old)
        if sqe == NULL:
            raise RuntimeError('swap_unsent() of an operation the kernel has taken')
        new.prep(sqe)
        new.sq_slot = old.sq_slot
        new.cancel_asked = False
        new.state = OP_SUBMITTED
        if not new.pinned:
            self.pin(new)
        if new.guards_fd:
            self.guard_fd(new)
        old.state = OP_IDLE
        self.unpin(old)         # (inflight: one operation for another)
        return 0

    cdef int flush_backlog(self) except -1:
        """Place what waited for an SQE slot: the cancel requests first (they only end
        operations, and free the files and buffers of those the caller gave up on), then the
        operations, in the order they were submitted."""
        cdef io_uring_sqe *sqe
        cdef Operation op
        cdef Py_ssize_t i = 0, n = len(self.backlog)
        if self.pending_cancels:
            self.place_pending_cancels()
        try:
            while i < n:
                sqe = self.ring.get_sqe()
                if sqe == NULL:
                    break
                op = <Operation>self.backlog[i]
                op.sq_slot = self.ring.sq_tail - 1
                try:
                    op.prep(sqe)
                except BaseException:
                    # As in submit(): the slot goes to the kernel as a NOP of user_data 0.  The
                    # operation stays first in the backlog (queued, pinned, counted in flight)
                    # for a cancel() or close() to end.
                    ul_prep_rw(sqe, UL_OP_NOP, -1, NULL, 0, 0, 0)
                    raise
                op.state = OP_SUBMITTED
                if op.guards_fd:
                    self.guard_fd(op)
                i += 1
        finally:
            # Even when a prep raised: those placed are the kernel's now, and left in the
            # backlog they would be submitted a second time by the next flush.
            if i:
                del self.backlog[:i]
        return 0

    cdef int place_pending_cancels(self) except -1:
        """Send the ASYNC_CANCELs that cancel() found no SQE slot for (see there), as far as
        slots allow.  One whose operation has ended since, or was submitted again and not
        cancelled again, is dropped: its user_data may name a request made after it."""
        cdef list ops = self.pending_cancels
        cdef Operation op
        cdef io_uring_sqe *sqe
        while ops:
            op = <Operation>ops[0]
            if op.state == OP_SUBMITTED and op.cancel_asked:
                sqe = self.ring.get_sqe()
                if sqe == NULL:
                    return 0
                ul_prep_cancel(sqe, op.ud(), 0)
                op.state = OP_CANCELLING
            del ops[0]
        return 0

    cdef int submit_pending(self) except -1:
        """Hand every queued SQE to the kernel now, without waiting for anything -- for the few
        requests whose effect others may observe before the loop's next iteration."""
        self.check_usable()
        if self.backlog or self.pending_cancels:
            self.flush_backlog()
        self.ring.enter(0, 0)
        return 0

    cdef int note_send(self, Py_ssize_t nbytes, bint awaited) except -1:
        """A send of `nbytes` was just queued; `awaited`: someone waits for its completion (a
        paused protocol, drain(), a close), so the iteration's wait must not be held for more
        (see enter_for).  Large sends go to the kernel at once, before the iteration's enter.

        Why: a server answering many connections with large messages queues, within one batch
        of completions, a send per received chunk -- megabytes that sit in memory until the
        next io_uring_enter copies them into the sockets.  By then they have left the CPU
        cache (the kernel's copy then runs from memory), the allocator has had to grow its heap
        for them all at once (page faults, and trimming it again afterwards), and a second
        chunk of the same connection waits a whole iteration behind the first.  Submitting as
        soon as EARLY_SUBMIT_BYTES are queued copies each chunk while it is hot; the completion
        is in the CQ at once and reaped in the same pass of reap(), which frees the data and
        sends whatever the transport queued behind it.  For small messages nothing changes: one
        system call per EARLY_SUBMIT_BYTES is negligible next to copying that much."""
        if self.submit_early(nbytes):
            self.waits.quiet_sends = 0
        elif not awaited:
            self.waits.quiet_sends += 1
        return 0

    cdef int note_joined(self, Py_ssize_t nbytes) except -1:
        """`nbytes` joined a send not yet submitted (SendSide.join_unsent): counted towards
        EARLY_SUBMIT_BYTES as note_send() counts a send's -- but it is no send of its own."""
        if self.submit_early(nbytes):
            self.waits.quiet_sends = 0
        return 0

    cdef bint submit_early(self, Py_ssize_t nbytes) except -1:
        """Count `nbytes` towards EARLY_SUBMIT_BYTES and submit everything queued once they are
        reached (see note_send for why).  True: it submitted."""
        self.queued_io_bytes += nbytes
        if self.queued_io_bytes < EARLY_SUBMIT_BYTES or self.closing:
            return False
        self.queued_io_bytes = 0
        self.submit_pending()
        return True

    cdef int cancel(self, Operation op) except -1:
        cdef io_uring_sqe *sqe
        if op.state == OP_QUEUED:
            # Never reached the kernel: complete it here with the result the kernel would give.
            self.backlog.remove(op)
            op.state = OP_IDLE
            self.inflight -= 1
            try:
                op.complete(-ECANCELED, 0)
            finally:
                if op.state == OP_IDLE:      # not resubmitted by complete()
                    op.release()
                    self.unpin(op)
            return 0
        if op.state != OP_SUBMITTED or self.ring.closed or self.forked:
            # (In a fork child the request is the parent's, in the parent's ring: not ours to
            # cancel -- a close of the inherited loop stops its servers and readiness callbacks.)
            return 0
        # Remembered on the operation whether or not the ASYNC_CANCEL below finds a slot: its
        # final completion must not carry it on -- a partial send sending the rest, an -EAGAIN
        # going back to the kernel -- after its owner asked it to stop (dispatch, SendOp).
        op.cancel_asked = True
        sqe = self.ring.get_sqe()
        if sqe == NULL:
            # No slot even after pushing the queue to the kernel (it takes no more entries for
            # now: EAGAIN/EBUSY).  The cancel waits in pending_cancels for the next enter to
            # place it -- not given up: a receive on an idle connection would otherwise stay
            # armed, holding the socket's file open (its peer never sees the close) and its
            # buffer, until the loop closes.  Nothing is freed early meanwhile.
            self.pending_cancels.append(op)
            return 0
        ul_prep_cancel(sqe, op.ud(), 0)
        op.state = OP_CANCELLING
        # Push the cancel into the kernel now instead of at the iteration's enter: the usual next
        # step of a caller that cancels is to close the socket, and only a request that has
        # actually ended drops the kernel's reference to the file -- until then close(2) would
        # not close the connection and the peer would never see EOF.  min_complete=0 with
        # GETEVENTS also runs the deferred task work that completes the cancelled request.
        try:
            self.ring.enter(0, 0)
        except OSError as exc:
            # EEXIST: called from a thread other than the one that ran the loop -- its close()
            # stopping a signal reader or the readiness poll -- which may not enter a
            # SINGLE_ISSUER ring.  The cancel stays queued; close() then keeps the ring and its
            # requests rather than free them under the kernel (see close()).
            if exc.errno != EEXIST:
                raise
        return 0

    # ---- completion side ----

    cpdef int wait(self, object timeout) except -1:
        """One loop iteration's kernel work: submit + wait (+ deadline) in one io_uring_enter,
        then dispatch every completion."""
        self.enter_for(timeout)
        return self.dispatch_completions()

    # The two halves of wait(), for the loop's compiled iteration (_sched.pyx), which must note
    # the timers that are due between the kernel's return and the completions' callbacks.

    cdef int enter_for(self, object timeout) except -1:
        """Submit everything queued and wait up to `timeout` seconds (None: without limit) for
        a completion, in one io_uring_enter; dispatch nothing."""
        cdef long long timeout_ns
        cdef Completer waiting
        if self.forked and self.runs_in_fork_child and not self.ring.closed:
            return self.wait_in_fork_child(timeout)
        self.check_usable()
        if self.call_before_enter is not None:
            waiting, self.call_before_enter = self.call_before_enter, None
            waiting.before_enter()
        if self.backlog or self.pending_cancels:
            self.flush_backlog()
        if timeout is None:
            timeout_ns = -1
        else:
            timeout_ns = <long long>(timeout * 1e9)
            if timeout_ns < 0:
                timeout_ns = 0
        if self.ring.cq_ready() or self.backlog or self.pending_cancels:
            timeout_ns = 0          # work is already waiting: do not sleep
        if timeout_ns == 0 and not self.ring.has_work():
            # Nothing to submit and no completion anywhere: the enter would return at once with
            # nothing.  (Callbacks that keep the loop busy -- sleep(0) loops, call_soon chains --
            # make no system call at all; I/O that completes meanwhile raises SQ_TASKRUN and is
            # collected by the next iteration.)
            self.skipped_enters += 1
            return 0
        self.queued_io_bytes = 0
        # For how many completions, and whether to spin first: the WaitPolicy (_waiting.pyx).
        return self.waits.enter(timeout_ns, self.completions)

    cdef int wait_in_fork_child(self, object timeout) except -1:
        """enter_for() in a fork child that goes on inside this loop's run (see
        after_fork_in_child): the ring is the parent's -- entering it would submit what the
        parent queued and take the parent's completions -- so only the child's own wake-up
        (call_soon_threadsafe) or the timeout ends the wait, and nothing is dispatched."""
        cdef pollfd pfd
        cdef int ms, n
        cdef double ms_wanted
        cdef uint64_t value
        if timeout is None:
            ms = -1
        else:
            # Rounded up, as the stock selectors do: a wait that ended before the next timer is
            # due would come straight back for a few microseconds.
            ms_wanted = ceil(<double>timeout * 1e3)
            if not ms_wanted > 0:
                return 0
            ms = <int>min(ms_wanted, 2147483647.0)
        pfd.fd = self.wake_fd          # (-1 if the child had none: poll() skips it)
        pfd.events = POLLIN
        pfd.revents = 0
        with nogil:
            n = poll(&pfd, 1, ms)
        # (EINTR: the loop runs the signal's Python handler when this returns.)
        if n > 0 and pfd.revents & POLLIN:
            # Taken as WakeupOp.complete() takes it: the count first, then the flag, so that a
            # writer who saw the flag raised has queued its callback before this returns.
            c_read(self.wake_fd, &value, 8)
            ul_flag_lower(&self.wake_pending)
        return 0

    cdef int dispatch_completions(self) except -1:
        """Dispatch every completion the kernel has posted."""
        if self.forked:
            # A fork child's: the completion queue is the parent's (see wait_in_fork_child).
            return 0
        self.waits.batch_begins()
        self.batches += 1
        self.ready_at_dispatch = self.ring.cq_ready()
        # One batch per iteration: what this iteration's io_uring_enter brought.  With
        # DEFER_TASKRUN a 6.13+ kernel runs at most max(IO_LOCAL_TW_DEFAULT_MAX = 20,
        # min_complete) items of deferred task work per enter and leaves the rest for the next,
        # so under load the completions come in batches of about that size, one iteration (a
        # few microseconds) apart; the stock loop would dispatch every ready socket at once.
        # Collecting the rest at once with further non-blocking enters (up to 16 rounds of 256)
        # was slower wherever it made a difference: against it, in alternating runs, Protocol
        # 1 KiB x 100 / x 1000 1.10 / 1.09x, sock_* 1 KiB x 100 1.10x, aiohttp x 100 1.12x,
        # Protocol 16 KiB x 1000 1.07x, everything else within 0.99-1.04x.  Smaller batches keep
        # the kernel's and the protocols' working set in the cache, and each reply leaves with
        # the next enter instead of after the whole backlog has been received -- the C floor
        # (benchmarks/uring_echo.c) waits for one completion per enter the same way.
        self.waits.last_batch = self.reap()
        return 0

    def select(self, timeout=None):
        # BaseEventLoop's iteration (the loop's fallback, see _sched): the handles of the I/O
        # phase join the ready queue now, ahead of the timers it then finds due, and so do the
        # callbacks waiting for the end of a ready pass (after_ready_pass) -- every pass of
        # this iteration has ended before its select().
        self.wait(0 if self.after_ready_pass or self.after_next_ready_pass else timeout)
        self.move_io_handles_to_ready()
        callbacks = self.take_after_ready_pass()
        if callbacks is not None:
            for callback, argument in callbacks:
                self.loop.call_soon(callback, argument)
        return ()

    cdef int move_io_handles_to_ready(self) except -1:
        if self.io_handles:
            self.loop._ready.extend(self.io_handles)
            self.io_handles = []
        return 0

    cdef list take_after_ready_pass(self):
        """The callbacks waiting for the end of this iteration (or None), in order; those that
        wait one iteration more take their place."""
        cdef list callbacks = self.after_ready_pass
        if not callbacks and not self.after_next_ready_pass:
            return None
        self.after_ready_pass = self.after_next_ready_pass
        self.after_next_ready_pass = []
        return callbacks

    cdef list take_io_handles(self):
        """The handles this iteration's completions made ready for its I/O phase (or None)."""
        cdef list handles = self.io_handles
        if not handles:
            return None
        self.io_handles = []
        return handles

    cdef int reap(self) except -1:
        """Dispatch every ready completion; return how many there were."""
        cdef Ring ring = self.ring
        cdef unsigned n, i
        cdef int total = 0
        cdef io_uring_cqe *cqe
        cdef uint64_t ud
        cdef int res
        cdef unsigned flags
        cdef Operation op
        cdef BufferRing br
        cdef WaitPolicy waits = self.waits
        while True:
            n = ring.cq_ready()
            if n == 0:
                if ring.cq_overflowed():
                    # Parked completions: fetch them before anyone goes to sleep.
                    ring.enter(0, 0)
                    continue
                break
            i = 0
            try:
                while i < n:
                    cqe = ring.cq_at(i)
                    ud = cqe.user_data
                    res = cqe.res
                    flags = cqe.flags
                    i += 1
                    if ud == 0:
                        continue        # a cancel request's own failure: the target reports
                    op = <Operation><PyObject *><uintptr_t>ud
                    if res > 0:
                        waits.batch_bytes += res
                    self.dispatch(op, res, flags)
                    if self.forked:
                        # A callback called os.fork() and this is the child, back here (or
                        # leaving through here with SystemExit).  The rings are the parent's
                        # memory, shared: the parent goes on with this very batch, and nothing
                        # may move its CQ head or publish its buffers from here -- it would
                        # skip completions, or read past the tail and dispatch stale ones.
                        return total
            finally:
                if not self.forked:
                    ring.cq_advance(i)
                    total += i
                    for br in self.buffer_rings:
                        br.publish()
        return total

    cdef int dispatch(self, Operation op, int res, unsigned flags) except -1:
        cdef bint final = not (flags & IORING_CQE_F_MORE)
        cdef bint cancelled = op.cancel_asked
        self.completions += 1
        if res > 0 and op.receives:
            self.waits.note_answer(op.fd)
        if final:
            op.state = OP_IDLE
            self.inflight -= 1
        try:
            if res == -EAGAIN and final and cancelled:
                # The request ended without doing anything while our ASYNC_CANCEL was on its way
                # (which then found nothing to cancel): it is over, as the caller asked.  Sending
                # it back to the kernel would lose the cancel and keep its fd and buffer lent.
                op.complete(-ECANCELED, flags)
            elif res == -EAGAIN and final and not self.closing and not op.owner_sees_eagain:
                # Never surfaced: the request goes straight back to the kernel (it arms its own
                # poll this time because the socket really has nothing).  Requests that cannot
                # arm a poll (splice) would spin here: their owners wait for readiness instead.
                # Not when the socket was closed meanwhile (still_same_file).
                if still_same_file(op):
                    op.submit()
                else:
                    op.complete(-EBADF, flags)
            elif self.debug:
                self.complete_timed(op, res, flags)
            else:
                op.complete(res, flags)
        except Exception as exc:
            self.exception_handler({
                'message': f'Unhandled exception while completing {type(op).__name__}',
                'exception': exc,
            })
        finally:
            if final and op.state == OP_IDLE:    # not resubmitted by complete()
                op.release()
                self.unpin(op)
        return 0

    cdef int complete_timed(self, Operation op, int res, unsigned flags) except -1:
        # Debug mode: a completion runs protocol callbacks (data_received...) where the stock
        # loop runs a handle (_read_ready), which its debug mode times; so do we, with the
        # stock loop's warning, naming the operation and whom it completed for.
        loop = self.loop
        started = loop.time()
        try:
            op.complete(res, flags)
        finally:
            took = loop.time() - started
            if took >= loop.slow_callback_duration:
                _logger.warning('Executing %s took %.3f seconds',
                                f'<{type(op).__name__} completion for {op.owner!r}>', took)
        return 0

    # ---- getaddrinfo ----

    def get_resolver(self):
        """The loop's Resolver, made on the first lookup; None where lookups take the
        executor's way: a loop closing or closed, or made before a fork in this child."""
        if self.forked or self.closing or self.ring.closed:
            return None
        if self.resolver is None:
            from uringloop._resolver import Resolver
            self.resolver = Resolver(self.loop, self.wake_fd)
        return self.resolver

    # ---- wake-up ----

    def wakeup(self):
        """Make a waiting io_uring_enter return (any thread)."""
        self.wake()

    cdef void wake(self) noexcept:
        # One write is enough until the loop takes it: the eventfd read in flight completes
        # once for any number of writes.  The writer raises the flag after queueing its
        # callback, and the loop lowers it when it takes the read's completion -- before it
        # next looks at the ready queue -- so a callback whose write was skipped is queued
        # before the loop looks (the coalescing of libuv's uv_async_send).  Each
        # call_soon_threadsafe() from another thread cost a write(2) before: a thread queueing
        # 200k callbacks took 0.80 us per callback here against uvloop's 0.45.
        if ul_flag_raise(&self.wake_pending) == 0:
            ul_eventfd_write(self.wake_fd)

    # ---- provided buffers ----

    cdef BufferRing new_buffer_ring(self, unsigned count, unsigned buf_size,
                                    bint incremental=False, unsigned capacity=0):
        cdef BufferRing br = BufferRing(self.ring, len(self.buffer_rings), count, buf_size,
                                        incremental, capacity)
        self.buffer_rings.append(br)
        return br

    def buffer_ring(self, unsigned count, unsigned buf_size):
        return self.new_buffer_ring(count, buf_size)

    # ---- statistics and teardown ----

    @property
    def can_spin(self):
        """Whether waits may spin before sleeping (WaitPolicy.spin_or_wait): spinning is on and the
        kernel flags deferred completions in shared memory."""
        return self.waits.spin_max_ns > 0 and self.ring.can_spin()

    def statistics(self):
        cdef WaitPolicy waits = self.waits
        return {
            'enters': self.ring.enters,
            'skipped_enters': self.skipped_enters,
            'submitted': self.ring.submitted,
            'completions': self.completions,
            'inflight': self.inflight,
            'backlog': len(self.backlog),
            'spins': waits.spins,
            'spin_hits': waits.spin_hits,
            'spun_ns': waits.spun_ns,
            'spin_limit_ns': waits.spin_limit_ns,
            'spin_max_ns': waits.spin_max_ns,
            'answers': waits.answers,
            'active_fds': waits.active_fds,
            'receive_rate': waits.receive_rate,
            'breadth_waits': waits.breadth_waits,
        }

    def __del__(self):
        # A loop dropped without close() (see the module docstring): end the kernel's requests
        # before the collector frees what they pin.  BaseEventLoop.__del__ closes the loop as
        # well, but the collector calls the finalizers of a cycle in no particular order.
        if self.ring is not None and not self.ring.closed:
            try:
                self.close()
            except BaseException:
                pass            # close() has made everything still pinned immortal

    def close(self, double drain_timeout=5.0):
        """Cancel everything, wait for every final CQE, then unmap the ring.  Idempotent."""
        cdef io_uring_sqe *sqe
        cdef double deadline
        cdef bint cancel_all_placed
        if self.ring.closed:
            return
        self.closing = True
        if self.forked:
            # The parent's ring: touch nothing of it, just drop our mapping and descriptors.
            # In-flight operations stay referenced (leaked) on purpose: the Proactor, which
            # holds their list, is made immortal.
            Py_INCREF(self)
            self.ring.close()
            c_close(self.wake_fd)
            self.wake_fd = -1
            return
        try:
            while self.backlog:
                self.cancel(<Operation>self.backlog[0])
            if self.inflight:
                # One CANCEL_ANY|CANCEL_ALL ends every request, those whose own cancel is still
                # pending included.  Without a slot for it (the kernel taking no entries for
                # now), it is asked for again each round of the drain: given up, every request
                # that would never end by itself (a receive on an idle connection) would keep
                # the drain waiting its whole timeout, then leak.
                self.pending_cancels = []
                cancel_all_placed = False
                deadline = _time.monotonic() + drain_timeout
                while self.inflight > 0 and _time.monotonic() < deadline:
                    if not cancel_all_placed:
                        sqe = self.ring.get_sqe()
                        if sqe != NULL:
                            ul_prep_cancel_all(sqe, 0)
                            cancel_all_placed = True
                    self.ring.enter(1, 50_000_000)
                    self.reap()
        except OSError:
            # EEXIST: this is not the thread that ran the loop, and a SINGLE_ISSUER ring only
            # lets its issuer reap.  Fall through to the leaking teardown below.
            pass
        finally:
            if self.inflight == 0:
                for br in self.buffer_rings:
                    (<BufferRing>br).close()
            else:
                # The kernel may still write into buffers of requests that did not end: keep
                # every operation referenced and every provided-buffer pool mapped, forever.
                # A leak is the only safe outcome; closing the ring fd makes the kernel cancel
                # the rest in its own time.  The Proactor is made immortal: it holds the list of
                # the operations still pinned (and, through them, what they lend the kernel),
                # which a garbage collection of a dropped loop would otherwise free.
                Py_INCREF(self)
                _leaked_buffer_rings.extend(self.buffer_rings)
            self.buffer_rings = []
            self.ring.close()
            if self.resolver is not None:
                self.resolver.detach()    # no worker may write to the eventfd from here on
            c_close(self.wake_fd)
            self.wake_fd = -1
            if self.inflight == 0:
                self.let_go_of_the_loop()

    cdef int let_go_of_the_loop(self) except -1:
        """Drained and closed: drop the references back to the loop and the cycles through
        this Proactor, so that a closed loop nobody refers to is freed at once -- by its
        reference count, as the stock loop and uvloop are -- rather than by the cyclic
        collector in its own time (tornado's test_run_on_executor counts the cycles a closed
        loop leaves behind).  Nothing reads these once the ring is closed: no completion can
        come (dispatch, complete_timed), get_resolver() answers None, the fork hook passes a
        closed Proactor by, and submit() refuses before it compares with the wake-up read."""
        self.wakeup_op = None           # it refers back to us (Operation.proactor)
        self.resolver = None            # it refers to the loop
        self.exception_handler = None   # a method bound to the loop
        self.call_before_enter = None   # the readiness registry, which refers to the loop
        self.loop = None
        return 0


cdef enum:
    EARLY_SUBMIT_BYTES = 131072  # queued send bytes that make note_send() submit at once




# Buffer rings of loops that were closed with requests still in the kernel (see Proactor.close).
cdef list _leaked_buffer_rings = []


cdef inline int _errno():
    return errno


# ---------------------------------------------------------------------------------------------
# the operation base (the kinds are in _ops.pyx)
# ---------------------------------------------------------------------------------------------

# Closed under a request.  A request in the kernel holds its file, so closing the socket's fd
# while one is in flight does not close the socket -- but the *number* is free the moment
# close() returns, and the next socket made or accepted gets it.  Whatever the loop submits after
# that by number -- the rest of a partial send, an -EAGAIN completion sent back, the next sock_*
# request of a queue -- would reach that other socket: bytes sent to an unrelated peer, its bytes
# or connections taken.  The stock loop cannot do that: it calls the socket object's own methods,
# which raise EBADF once it is closed.  So before anything is submitted again for an operation
# that has completed, its socket object (op.keep) is asked whether it still has that number; a
# closed socket object's fileno() is -1.

cdef type _socket_base = _socket_c.socket

cdef int socket_fd_now(object sock) except? -2:
    """The number a socket object names now, -1 once it is closed: read from a _socket.socket's
    C struct (no call: the transports ask before every write), fileno() for anything else.
    The one test behind every "was the socket closed under us" check -- still_same_file here,
    and the stream and datagram transports' socket_gone()."""
    if isinstance(sock, _socket_base):
        return ul_socket_fd(sock)
    return sock.fileno()


cdef bint still_same_file(Operation op) except -1:
    """Whether op.fd still names the socket op.keep (when it keeps a socket object; anything
    else cannot tell, and counts as yes).  See above."""
    cdef object keep = op.keep
    if keep is None or not isinstance(keep, _socket_base):
        return True
    return ul_socket_fd(keep) == op.fd


cdef int call_owner(Operation op, int res, unsigned flags) except -1:
    """op.owner.op_done(op, res, flags), holding a reference to the owner for the call.

    Why: the handler may drop the last reference to its owner before it returns.  A transport
    gives a finished send back to the loop's spares (op.owner = None), and when that send was
    the last one of a closing transport it calls connection_lost() right there, which lets go
    of the protocol -- if nothing else held the protocol, and the protocol held the transport
    (self.transport = transport, the usual way), both are freed in the middle of the
    transport's own op_done.  Called as self.owner.op_done(...), Cython passes the attribute
    as a borrowed reference: the rest of op_done then ran on freed memory (a segfault, found
    with a protocol that wrote 6 MB and closed in connection_made).  A local variable owns its
    reference."""
    cdef Completer owner = op.owner
    if owner is not None:
        owner.op_done(op, res, flags)
    return 0


cdef int report_progress(Operation op, int res) except -1:
    """op.owner.op_progress(op, res), the owner held as in call_owner (the handler may resume
    a protocol, which may close its transport)."""
    cdef Completer owner = op.owner
    if owner is not None:
        owner.op_progress(op, res)
    return 0


cdef class Operation:

    def __init__(self, Proactor proactor, Completer owner, int fd, keep=None):
        self.proactor = proactor
        self.owner = owner
        self.fd = fd
        self.keep = keep

    cdef int prep(self, io_uring_sqe *sqe) except -1:
        ul_prep_rw(sqe, UL_OP_NOP, -1, NULL, 0, 0, self.ud())
        return 0

    cdef int complete(self, int res, unsigned flags) except -1:
        # Through a reference of our own (see call_owner), not self.owner.
        return call_owner(self, res, flags)

    cdef void release(self) noexcept:
        self.keep = None

    cdef int submit(self) except -1:
        self.proactor.submit(self)
        return 0

    cpdef cancel(self):
        self.proactor.cancel(self)

    @property
    def in_flight(self):
        return self.state != OP_IDLE


cdef extern from "<string.h>":
    char *c_strerror "strerror"(int errnum)


cdef object os_error(int err):
    """The OSError an errno stands for, as the stock loop's failed call raises it: OSError(err,
    strerror(err)), which Python turns into the specific subclass (ConnectionResetError,
    BrokenPipeError, PermissionError, ...).  Every module that turns a negative completion
    result or a failed call's errno into an exception makes it here."""
    return OSError(err, c_strerror(err).decode('utf-8', 'replace'))


@cython.final
cdef class WakeupOp(Operation):
    cdef int prep(self, io_uring_sqe *sqe) except -1:
        ul_prep_rw(sqe, UL_OP_READ, self.fd, &self.value, 8, <uint64_t>-1, self.ud())
        return 0

    cdef int complete(self, int res, unsigned flags) except -1:
        # The writes so far are taken (see Proactor.wakeup): the next one must write again.
        # Re-arm unless the loop is closing; the value itself means nothing.
        ul_flag_lower(&self.proactor.wake_pending)
        if not self.proactor.closing and self.state == OP_IDLE:
            self.submit()
        if self.proactor.resolver is not None:
            # getaddrinfo()'s workers wake the loop this way too (see _resolver).
            self.proactor.resolver.take_done()
        return 0
