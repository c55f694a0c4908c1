# cython: language_level=3
"""When and how long the loop waits for the kernel: the WaitPolicy a Proactor asks for each
iteration's io_uring_enter.

The Proactor (_proactor.pyx) submits what an iteration queued and dispatches what completed; in
between, an iteration with nothing ready makes one io_uring_enter that waits.  How it waits is
this module's one concern, and it is where a Proactor on io_uring earns its keep or loses it:
a wait for one completion wakes the loop for every request, a wait for many holds the first
ones back, and a sleep between two requests costs the wake-up (on a virtual machine an exit to
the hypervisor, tens of microseconds).  The enter asks the kernel for min_complete completions,
bounded by the timers' deadline and, on 6.12+, by a min-wait after which it returns with what
it has; or it spins on the ring's shared memory first and sleeps only if nothing came:

  * a plain wait (one completion, the timers' deadline) -- the default;
  * quiet sends: sends nobody awaits that this enter submits complete during it, so it asks
    for one completion more than them (enter);
  * busy: the last iteration dispatched many completions, so it asks for a share of as many,
    bounded by BATCH_WAIT_NS (enter, busy_wait_count);
  * breadth: many peers have been talking to the loop lately, so it asks for a few of them
    at once (breadth_ask);
  * spinning: after completions, while the loop is in a conversation (its last completions
    answered its own sends), a plain wait first spins for an adaptive while (spin_or_wait).

The Proactor tells the policy what it needs: the bytes each batch moved and how many
completions it had (batch_bytes, last_batch), the unawaited sends queued (quiet_sends), each
send queued on a descriptor and each receive on one (note_sent, note_answer -- inline, on the
hot path), and the start of every batch (batch_begins).  Each rule's measurements are in the
comment above its code.
"""

from cpython.exc cimport PyErr_CheckSignals
from cpython.mem cimport PyMem_Realloc, PyMem_Free
from libc.stdint cimport uint32_t
from libc.string cimport memset

from uringloop._sys cimport *
from uringloop._ring cimport Ring

import os


cdef enum:
    BATCH_WAIT_FROM = 64         # completions in an iteration that make the next wait batch
    BATCH_WAIT_MAX = 64          # the most completions a batching wait asks for
    BATCH_WAIT_NS = 50000        # the longest a batching wait may take beyond the first one
    QUIET_SENDS_FROM = 16        # unawaited sends in one enter that make it wait for one more
    BREADTH_SHARE = 8            # a breadth wait asks for at most 1/8 of the talking peers
    BREADTH_ASK_LEAST = 6        # ... and for no fewer than this, or not at all
    PERIOD_SHIFT_NS = 20         # breadth is counted over periods of 2**20 ns (~1.05 ms)
    BATCH_BYTES = 1048576        # about what one batch of completions may bring in
    SPIN_START_NS = 25000        # where a wait's spin limit starts, and grows from after 0
    SPIN_LEAST_NS = 1000         # a spin limit halved below this is 0
    SPIN_DEFAULT_US = 100        # spin_max_ns without URINGLOOP_SPIN_US
    SPIN_MOST_US = 1000000       # the most URINGLOOP_SPIN_US may ask for


def _spin_max_ns_from_environment():
    """spin_max_ns from URINGLOOP_SPIN_US (microseconds; 0 turns spinning off)."""
    text = os.environ.get("URINGLOOP_SPIN_US", "").strip()
    if not text:
        return SPIN_DEFAULT_US * 1000
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= SPIN_MOST_US:
        raise ValueError(f"URINGLOOP_SPIN_US must be a whole number of microseconds from 0 "
                         f"(never spin) to {SPIN_MOST_US}, got {text!r}")
    return value * 1000


cdef inline unsigned _batch_for(Py_ssize_t nbytes, int count, unsigned least, unsigned most):
    """How many completions of the average size seen (`nbytes` over `count`) make about
    BATCH_BYTES, within [least, most]."""
    cdef Py_ssize_t n
    if nbytes <= 0 or count <= 0:
        return most
    n = <Py_ssize_t>BATCH_BYTES * count // nbytes
    if n < <Py_ssize_t>least:
        return least
    if n > <Py_ssize_t>most:
        return most
    return <unsigned>n


cdef class WaitPolicy:
    """How an iteration's io_uring_enter waits (see the module's docstring); one per Proactor."""

    def __init__(self, Ring ring):
        # Made first in Proactor.__init__: a bad setting is refused before anything needs
        # closing.
        self.spin_max_ns = _spin_max_ns_from_environment()
        self.spin_limit_ns = min(<long long>SPIN_START_NS, self.spin_max_ns)
        self.answer_window = <uint32_t>min((self.spin_max_ns * 5 // 2) >> 10, 0xffffffff)
        self.ring = ring

    cdef int grow_fd_stamps(self, int fd) noexcept:
        """Room in fd_stamps for `fd`; -1 (the send goes unrecorded) if memory is short."""
        cdef Py_ssize_t n = max(self.fd_stamps_len, 64)
        while n <= fd:
            n *= 2
        cdef void *mem = PyMem_Realloc(self.fd_stamps, n * sizeof(FdStamps))
        if mem == NULL:
            return -1
        self.fd_stamps = <FdStamps *>mem
        memset(self.fd_stamps + self.fd_stamps_len, 0, (n - self.fd_stamps_len) * sizeof(FdStamps))
        self.fd_stamps_len = n
        return 0

    def __dealloc__(self):
        PyMem_Free(self.fd_stamps)

    cdef void batch_begins(self) noexcept:
        """An iteration's wait has ended and its completions are about to be dispatched:
        note when (wait_ended, for answers), roll the breadth period over, and start
        counting the batch's bytes."""
        cdef uint32_t period
        self.batch_bytes = 0
        self.wait_ended = ul_monotonic_ns() >> 10
        period = <uint32_t>(self.wait_ended >> (PERIOD_SHIFT_NS - 10))
        if period != self.period:
            # A new period: the one that ended is the last whole one if it was the previous --
            # a loop that slept through whole periods has had no peer talking.
            if period == self.period + 1:
                self.active_fds = self.period_fds
                self.receive_rate = self.period_receives
            else:
                self.active_fds = self.receive_rate = 0
            self.period = period
            self.period_fds = self.period_receives = 0

    cdef int enter(self, long long timeout_ns, unsigned long long completions) except -1:
        """The io_uring_enter of an iteration that has work to wait for (see
        Proactor.enter_for, which submits what is queued and decides `timeout_ns`: 0 for
        none, negative for no deadline): how many completions to ask for and whether to
        spin first.  `completions`: the Proactor's count of completions so far."""
        cdef unsigned min_complete, min_wait_us, busy, ask
        cdef int quiet
        min_complete = 1
        min_wait_us = 0
        quiet = self.quiet_sends
        self.quiet_sends = 0
        if timeout_ns == 0:
            pass
        elif self.ring.min_timeout:
            # Two reasons to ask the kernel for more than one completion, both bounded by the
            # min-wait (6.12+): after BATCH_WAIT_NS with at least one completion ready the wait
            # ends anyway, and with none ready it goes on as an ordinary wait for one -- so no
            # completion is held longer than that, and an idle loop is not woken by it.
            #
            # Sends nobody waits for (see Proactor.note_send): a send on a socket with room
            # completes during this very io_uring_enter, and a wait for one completion would then
            # return at once with nothing to do but release the send, costing a second enter to
            # wait for what the server actually waits for -- the next request.  Asking for one more
            # completion than the sends makes one enter do both.  Only with QUIET_SENDS_FROM
            # sends or more: at 1 connection the extra completion rarely came within the
            # min-wait, and a wait ended by the timer was slower than the second enter
            # (protocol 1 KiB x 1: ~15% fewer requests per second); at 100 connections
            # system calls per request fell from 0.24-0.35 to 0.03.
            if quiet >= QUIET_SENDS_FROM:
                min_complete = 1 + min(quiet, BATCH_WAIT_MAX)
                min_wait_us = BATCH_WAIT_NS // 1000
            elif quiet:
                # Breadth: this iteration answered someone, and many peers have been talking
                # to the loop lately -- wait for some of them at once (see breadth_ask).
                ask = self.breadth_ask()
                if ask:
                    min_complete = quiet + ask
                    min_wait_us = BATCH_WAIT_NS // 1000
                    self.breadth_waits += 1
            # Busy: the last iteration dispatched many completions -- the reasoning is in the
            # branch below; here the min-wait bounds the wait instead of a shorter deadline,
            # which also saves the enter that followed a batching wait that timed out.
            if self.last_batch >= BATCH_WAIT_FROM:
                busy = self.busy_wait_count()
                if busy > min_complete:
                    min_complete = busy
                min_wait_us = BATCH_WAIT_NS // 1000
        elif self.last_batch >= BATCH_WAIT_FROM:
            # Busy: the last iteration dispatched many completions, so many requests are in
            # flight.  Waking for the first one back costs an io_uring_enter for a handful of
            # completions; waiting (briefly) for a quarter as many as last time lets one system
            # call serve a batch.  BATCH_WAIT_NS bounds the latency this adds, the timers'
            # deadline still applies, and an iteration that finds less than asked for ends the
            # batching (last_batch falls).  Only at a high count: with 10 connections (~20
            # completions an iteration, a receive and a send each) waiting for half of them
            # made the server wait for nearly every client -- 16 KiB echo fell to 0.63x uvloop.
            busy = self.busy_wait_count()
            if busy > 1:
                min_complete = busy
                if timeout_ns < 0 or timeout_ns > BATCH_WAIT_NS:
                    timeout_ns = BATCH_WAIT_NS
        if (min_complete == 1 and timeout_ns != 0 and self.spin_max_ns
                and completions != self.completions_at_spin
                and self.answers != self.answers_at_spin and self.ring.can_spin()):
            return self.spin_or_wait(timeout_ns, completions)
        self.ring.enter(min_complete, timeout_ns, min_wait_us)
        return 0

    # Spinning before sleeping.  A loop that has just served completions and finds none waiting
    # would go to sleep in io_uring_enter, and the peer's next message wakes it again.  The
    # wake-up is what costs: the kernel switches to the idle task, the CPU halts, and the
    # sender's CPU must interrupt it (an IPI) -- on a virtual machine whose guest halts at once
    # (this project's Firecracker guest: cpuidle haltpoll with guest_halt_poll_ns = 0) every
    # halt and every IPI is an exit to the hypervisor, tens of microseconds.  Measured there,
    # with a C client: at 1 connection the C io_uring floor and every loop served ~12k round
    # trips/s, the server halting between every two of them; Protocol 1 KiB x 10 left the
    # server 10% idle in ~4,000 sleeps/s while the client waited for it.  So after an iteration
    # that dispatched completions, a plain wait first spins on the ring's shared memory for up
    # to spin_limit_ns (Ring.spin_for_work: the kernel flags deferred completions in the SQ
    # flags, so no system call is needed to see one coming) and sleeps only if nothing came.
    #
    # The cost is CPU time: a spin that ends empty was wasted, one that ends with work burnt
    # the gap instead of idling through it.  So the limit adapts the way the kernel's own
    # guest halt-polling does (drivers/cpuidle/governors/haltpoll.c): a sleep that ended with
    # a completion within spin_max_ns would have been caught by a longer spin -- the limit
    # doubles (from SPIN_START_NS) up to spin_max_ns; a sleep longer than that halves it, so a
    # loop whose peers pause for longer than spin_max_ns stops spinning after a few waits; a
    # spin that finds work leaves it as it is.  Only plain waits spin: not a wait that has
    # nothing before it to make the next completion likely (no completion since the last
    # such wait: an idle loop, a loop running only timers), not a batching wait (that one
    # asks the kernel for many completions and a minimum wait; see enter), and never past
    # the timers' deadline.  Each turn of the spin yields the CPU to anything else runnable
    # on it (Ring.spin_for_work), so servers sharing a CPU take turns instead of spinning
    # through each other's work.
    #
    # And only while the loop is in a conversation: some completion since the last spin was an
    # *answer* -- a receive (or a poll for input) on a descriptor on which the loop had queued a
    # send in an iteration whose wait ended at most 2.5 x spin_max_ns (250 us by default) before
    # the wait that brought it (note_sent where a send is prepared or made at once, note_answer
    # in Proactor.dispatch()).  A spin pays where the peer's next message is its answer to the
    # loop's last one: the loop's own reply is what the peer waits for, so each sleep the spin saves
    # shortens the round trip and the next request comes sooner -- at 1 connection under
    # closed-loop load the server served 2.7-3.4x the requests.  Where messages come on their
    # own schedule, a spin buys nothing but a shorter wait for a message that would have come at
    # the same time anyway: a paced load of 20,000 requests/s over 10 connections (benchmarks/:
    # the `paced` workload), each request due 500 us after the previous one on its connection,
    # kept the spinning server ~99% busy at 2.7x uvloop's CPU time per request, every spin
    # (~40 us) ending with the next connection's request.  Those are not answers: the loop's
    # last send on that connection was ~500 us before.
    # URINGLOOP_SPIN_US sets spin_max_ns (0 turns spinning off).
    cdef int spin_or_wait(self, long long timeout_ns, unsigned long long completions) except -1:
        """A plain wait for one completion (up to timeout_ns; negative: no deadline), spinning
        first as the comment above describes."""
        cdef long long limit = self.spin_limit_ns
        cdef long long spun = 0
        cdef long long started
        self.completions_at_spin = completions
        if self.ring.sq_pending():
            # What this iteration queued (the replies, typically) goes out first: what the spin
            # waits for is the peers' answer to it.  This enter also runs the completions the
            # kernel holds; with any posted, it has done all a wait would have.
            self.ring.enter(0, 0)
            if self.ring.cq_ready():
                return 0
            if self.ring.sq_pending():
                # The kernel took none of it (EAGAIN/EBUSY: short of memory, CQ backlog full):
                # no answer can come to what it has not seen, so do not spin for one.
                limit = 0
        # (Only here: a wait that the enter above ended -- sock_sendall's, for the send it
        # just submitted -- leaves the answer that made it eligible to the next wait, the one
        # for the peer's reply.)
        self.answers_at_spin = self.answers
        if limit > 0:
            if 0 < timeout_ns < limit:
                limit = timeout_ns
            with nogil:
                spun = self.ring.spin_for_work(limit)
            # A signal that arrived during the spin interrupted no system call: the enter below
            # starts after it and would not return EINTR, so its Python handler (Ctrl-C's among
            # them) runs now, as the loop runs it after an interrupted wait.
            PyErr_CheckSignals()
            self.spins += 1
            if spun >= 0:
                self.spin_hits += 1
                self.spun_ns += <unsigned long long>spun
                # Completions are posted or flagged: this enter runs them and returns.
                self.ring.enter(1, max(timeout_ns - spun, 0) if timeout_ns > 0 else timeout_ns)
                return 0
            spun = -spun
            self.spun_ns += <unsigned long long>spun
            if timeout_ns > 0:
                timeout_ns = max(timeout_ns - spun, 0)
        started = ul_monotonic_ns()
        self.ring.enter(1, timeout_ns)
        if self.ring.cq_ready():
            # The time this wait took in all, spinning and sleeping: what a spin would have
            # needed to catch the completion that ended it.
            if spun + ul_monotonic_ns() - started <= self.spin_max_ns:
                self.spin_limit_ns = min(max(self.spin_limit_ns * 2, <long long>SPIN_START_NS),
                                         self.spin_max_ns)
            else:
                self.spin_limit_ns //= 2
                if self.spin_limit_ns < SPIN_LEAST_NS:
                    self.spin_limit_ns = 0
        return 0

    cdef unsigned busy_wait_count(self) noexcept:
        """How many completions a wait after a busy iteration asks for: a quarter as many as
        that iteration dispatched, at most BATCH_WAIT_MAX, and no more than bring about
        BATCH_BYTES at its average size -- the kernel copies the receives among them in before
        any is dispatched (see Proactor.dispatch_completions)."""
        return _batch_for(self.batch_bytes, self.last_batch, 1,
                          min(self.last_batch // 4, BATCH_WAIT_MAX))

    # Breadth.  A server answering many peers that each wait for its answer before they speak
    # again (request/response over many connections: HTTP keep-alive, RPC, the echo benchmark)
    # and that is faster than they are sleeps after every few requests: its wait for one
    # completion ends with the first request back, the iteration serves the handful that came
    # with it, and the next enter waits again.  Measured on the AMD guest, Protocol 1 KiB x 100
    # against the C client: ~4-5 requests an iteration, 0.16-0.31 io_uring_enter per request,
    # the server idle between iterations (the client is the bottleneck: the C floor serves the
    # same rate) -- and the busy batching (BATCH_WAIT_FROM completions an iteration) never
    # engages.  Asking the kernel for a few more completions, with the min-wait as the bound
    # (after BATCH_WAIT_NS it returns with what it has), lets one enter serve about as many
    # requests as arrive meanwhile: 0.056-0.067 enters per request, at the same throughput.
    #
    # The danger is the wait that cannot be satisfied: peers that all wait for the loop, so no
    # further request comes until the timer ends it.  Counting the descriptors the loop has
    # armed (receives in flight) is not enough: 5 busy connections among 500 idle ones, asked
    # for an eighth of the 505, served 54-67k requests/s against 123-173k, every wait ended by
    # the timer; 16 among 500, asked for up to as many as the last iterations brought, ~30%
    # fewer.  So the ask counts the peers that are talking: the descriptors that received in
    # the last whole period (~1.05 ms; note_answer), asking for at most an eighth of them -- the
    # rest keep the peers busy while the loop waits -- and for no more than arrive in twice the
    # min-wait at the last period's rate, and not at all below BREADTH_ASK_LEAST: a paced load
    # of 40,000 requests/s over 100 connections (~42 talking, 25 us apart) asked for 2 at a
    # time took more CPU per request, not less, and added latency; with this bound it asks for
    # nothing and is as before.  Only where the kernel has the min-wait (6.12+): without it
    # the bound would be a timeout that ends the wait with nothing when nothing came.
    cdef unsigned breadth_ask(self) noexcept:
        """How many requests the next wait asks for beyond the sends it carries: 0 or at least
        BREADTH_ASK_LEAST (see above)."""
        cdef unsigned by_peers = self.active_fds // BREADTH_SHARE
        cdef unsigned by_rate = <unsigned>(
            (<unsigned long long>self.receive_rate * 2 * BATCH_WAIT_NS) >> PERIOD_SHIFT_NS)
        cdef unsigned ask = min(by_peers, by_rate, <unsigned>BATCH_WAIT_MAX)
        return ask if ask >= <unsigned>BREADTH_ASK_LEAST else 0
