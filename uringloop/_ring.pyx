# cython: language_level=3
"""The Ring: one io_uring instance, its two shared queues, and nothing of asyncio.

How the pieces fit
------------------
An io_uring is two single-producer/single-consumer queues shared between this process and the
kernel through mmap(2):

  * the submission queue (SQ).  We are the producer.  We fill an SQE slot, then publish it by
    storing the SQ tail with *release* ordering, so the kernel can never observe the new tail
    before the SQE contents.  The kernel consumes entries when we call io_uring_enter(2) and moves
    the SQ head; we read that head with *acquire* ordering before reusing a slot.
  * the completion queue (CQ).  The kernel is the producer.  We read the CQ tail with *acquire*
    ordering, read every CQE up to it, and only then store the CQ head with *release* ordering to
    hand the slots back.

The Ring hands out SQEs (get_sqe), publishes them and waits in exactly one io_uring_enter per loop
iteration (enter), and exposes the ready CQEs as an array window (cq_ready / cq_at / cq_advance).
It never interprets user_data: that belongs to the operations layer (_proactor, _ops), which
keeps the objects the kernel is working for alive.

Set-up flags, best first (each is retried without the newer flags on EINVAL):

  SINGLE_ISSUER|DEFER_TASKRUN (6.1)  completions are produced only when we ask for them, in our own
                                     thread, at the enter call we make anyway: no IPIs, no task-work
                                     interrupting Python code.  Requires that one thread submits.
                                     R_DISABLED lets that thread be the one that first *runs* the
                                     loop rather than the one that created it (asyncio creates
                                     loops in one thread and runs them in another all the time).
  COOP_TASKRUN|TASKRUN_FLAG (5.19)   the next best: completions are batched at syscall boundaries.
  SUBMIT_ALL (5.18)                  a bad SQE is reported in its own CQE instead of stopping the
                                     batch, so a published SQ is always consumed entirely.
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, uintptr_t
from libc.string cimport memset
from libc.stdlib cimport calloc, free
from cpython.bytes cimport PyBytes_FromStringAndSize
from posix.unistd cimport getpid

from uringloop._sys cimport *
from libc.errno cimport EACCES

import os

cdef enum:
    # 1024 SQEs (and a 4096-entry CQ): an iteration that queues more submits early, and ring
    # set-up cost grows with the size (the kernel zeroes the rings): 4096 entries made
    # creating a loop four times slower for no measured gain.
    DEFAULT_ENTRIES = 1024


# What IORING_REGISTER_PROBE answered (Ring._probe), once it has.
cdef bytes _kernel_ops = None
# io_uring_enter was found permitted (Ring._check_enter), once it has.
cdef bint _enter_permitted = False

# A sandbox that refuses one of the three io_uring system calls answers with one of these.
cdef inline bint _refused(int ret) noexcept:
    return ret == -EPERM or ret == -ENOSYS or ret == -EACCES


cdef object _oserror(int err, str what):
    return OSError(err, f"{what}: {os.strerror(err)}")


# The flag sets tried in order.  Each later set drops a feature the kernel may not have; a kernel
# that rejects all of them with EINVAL is older than anything we support.
# TASKRUN_FLAG with DEFER_TASKRUN: the kernel raises IORING_SQ_TASKRUN when completions wait in
# its deferred list, so an iteration that must not block can tell whether io_uring_enter would
# find anything (Ring.has_work) and skip the system call when it would not.
cdef list _SETUP_CHOICES = [
    IORING_SETUP_SUBMIT_ALL | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN
        | IORING_SETUP_TASKRUN_FLAG | IORING_SETUP_R_DISABLED,
    IORING_SETUP_SUBMIT_ALL | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN
        | IORING_SETUP_R_DISABLED,
    IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG,
    IORING_SETUP_SUBMIT_ALL,
    0,
]


cdef class EnterHook:
    cdef int before_enter(self) except -1:
        return 0


# The smallest ring Ring() falls back to when the kernel has no memory for a larger one.
cdef unsigned MIN_ENTRIES = 64


cdef class Ring:

    def __cinit__(self):
        self.fd = -1
        self.closed = True
        self.registered_index = -1

    def __init__(self, unsigned entries=DEFAULT_ENTRIES, *, bint single_issuer=True,
                 unsigned extra_flags=0):
        cdef io_uring_params p
        cdef int fd = -EINVAL
        cdef unsigned flags
        while True:
            for choice in _SETUP_CHOICES:
                flags = <unsigned>choice
                if not single_issuer and flags & IORING_SETUP_SINGLE_ISSUER:
                    continue
                memset(&p, 0, sizeof(p))
                # A CQ four times the SQ: multishot requests post many CQEs per SQE, and
                # overflow, although never lossy with FEAT_NODROP, costs a slow path in the
                # kernel.
                p.flags = flags | extra_flags | IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP
                p.cq_entries = entries * 4
                fd = ul_setup(entries, &p)
                if fd != -EINVAL:
                    break
            # ENOMEM: the rings' memory is charged to RLIMIT_MEMLOCK (before 5.12, and again on
            # recent kernels, 6.18 measured) for a process without
            # CAP_IPC_LOCK -- 64 KiB in many containers, where 1024 entries (about 130 KiB of
            # SQEs and CQEs) do not fit: smaller rings do.  A full SQ is only a wait (the
            # Proactor's backlog), never a failure.
            if fd != -ENOMEM or entries <= MIN_ENTRIES:
                break
            entries //= 4
        if fd < 0:
            raise _oserror(-fd, "io_uring_setup")
        self.fd = fd
        self.closed = False
        self.setup_flags = p.flags & ~(IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP)
        self.features = p.features
        self.min_timeout = (p.features & IORING_FEAT_MIN_TIMEOUT) != 0
        self.enabled = not (p.flags & IORING_SETUP_R_DISABLED)
        self.sq_entries = p.sq_entries
        self.sq_room = p.sq_entries
        self.cq_entries = p.cq_entries
        try:
            self._map(&p)
            self._probe()
            self._check_enter()
        except BaseException:
            self.close()
            raise

    cdef int _map(self, io_uring_params *p) except -1:
        cdef size_t sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned)
        cdef size_t cq_len = p.cq_off.cqes + p.cq_entries * sizeof(io_uring_cqe)
        cdef char *sq
        cdef char *cq
        if not (p.features & IORING_FEAT_NODROP) or not (p.features & IORING_FEAT_EXT_ARG):
            # Without NODROP a full CQ silently loses completions (and with them the knowledge
            # of when a lent buffer is free again); without EXT_ARG the enter call cannot wait
            # with a timeout.  Both arrived in 5.5/5.11; we require 5.19 anyway.
            raise OSError(EINVAL, "this kernel's io_uring lacks FEAT_NODROP/FEAT_EXT_ARG "
                                  "(Linux >= 5.19 is required)")
        if p.features & IORING_FEAT_SINGLE_MMAP:
            sq_len = cq_len = max(sq_len, cq_len)
        sq = <char *>ul_mmap(sq_len, self.fd, IORING_OFF_SQ_RING)
        if sq == NULL:
            raise _oserror(errno, "mmap(SQ ring)")
        self.sq_map = sq
        self.sq_map_len = sq_len
        if p.features & IORING_FEAT_SINGLE_MMAP:
            cq = sq
        else:
            cq = <char *>ul_mmap(cq_len, self.fd, IORING_OFF_CQ_RING)
            if cq == NULL:
                raise _oserror(errno, "mmap(CQ ring)")
            self.cq_map = cq
            self.cq_map_len = cq_len
        self.sqes_map_len = p.sq_entries * sizeof(io_uring_sqe)
        self.sqes = <io_uring_sqe *>ul_mmap(self.sqes_map_len, self.fd, IORING_OFF_SQES)
        if self.sqes == NULL:
            raise _oserror(errno, "mmap(SQEs)")

        self.sq_khead = <unsigned *>(sq + p.sq_off.head)
        self.sq_ktail = <unsigned *>(sq + p.sq_off.tail)
        self.sq_kflags = <unsigned *>(sq + p.sq_off.flags)
        self.sq_mask = (<unsigned *>(sq + p.sq_off.ring_mask))[0]
        self.sq_array = <unsigned *>(sq + p.sq_off.array)
        self.sq_tail = self.sq_ktail[0]
        # The SQ array is an indirection the kernel applies to every entry.  We never reorder, so
        # slot i always names SQE i; filling it once keeps it out of the hot path.
        cdef unsigned i
        for i in range(p.sq_entries):
            self.sq_array[i] = i

        self.cq_khead = <unsigned *>(cq + p.cq_off.head)
        self.cq_ktail = <unsigned *>(cq + p.cq_off.tail)
        self.cq_mask = (<unsigned *>(cq + p.cq_off.ring_mask))[0]
        self.cqes = <io_uring_cqe *>(cq + p.cq_off.cqes)
        return 0

    cdef int _probe(self) except -1:
        # The opcodes are the running kernel's, the same for every ring of the process: asked
        # once (a loop's creation is otherwise one io_uring_register more).
        global _kernel_ops
        cdef size_t size = sizeof(io_uring_probe) + UL_PROBE_OPS * sizeof(io_uring_probe_op)
        cdef io_uring_probe *probe
        cdef bytearray ops
        cdef int i, ret
        if _kernel_ops is not None:
            self.supported_ops = _kernel_ops
            return 0
        probe = <io_uring_probe *>calloc(1, size)
        ops = bytearray(UL_PROBE_OPS)
        if probe == NULL:
            raise MemoryError()
        try:
            ret = ul_register(self.fd, IORING_REGISTER_PROBE, probe, UL_PROBE_OPS)
            if _refused(ret):
                # io_uring_register itself is refused (a seccomp profile that allows only
                # io_uring_setup): the loop could not enable its ring -- say so now, where the
                # loop's creation diagnoses it, not at the first iteration.
                raise _oserror(-ret, "io_uring_register")
            if ret >= 0:
                for i in range(probe.ops_len):
                    if probe.ops[i].flags & IO_URING_OP_SUPPORTED:
                        ops[probe.ops[i].op] = 1
        finally:
            free(probe)
        self.supported_ops = bytes(ops)
        if ret >= 0:
            _kernel_ops = self.supported_ops
        return 0

    cdef int _check_enter(self) except -1:
        # The same for io_uring_enter: a sandbox may allow the set-up and refuse the enter.  An
        # enter that submits and waits for nothing does nothing: on a ring still disabled
        # (R_DISABLED) the kernel answers EBADFD, on an enabled one 0.  Asked once per process
        # (a filter, once installed, stays).
        global _enter_permitted
        cdef int ret
        if _enter_permitted:
            return 0
        ret = ul_enter(self.fd, 0, 0, 0, NULL, 0)
        if _refused(ret):
            raise _oserror(-ret, "io_uring_enter")
        _enter_permitted = True
        return 0

    cdef bint has_op(self, int opcode) noexcept:
        return 0 <= opcode < UL_PROBE_OPS and self.supported_ops[opcode] != 0

    def supports(self, int opcode):
        """True when the running kernel implements io_uring opcode `opcode`."""
        return self.has_op(opcode)

    cdef int enable(self) except -1:
        # With R_DISABLED the thread that enables the ring becomes its single issuer.
        cdef int ret
        if not self.enabled:
            ret = ul_register(self.fd, IORING_REGISTER_ENABLE_RINGS, NULL, 0)
            if ret < 0:
                raise _oserror(-ret, "io_uring_register(ENABLE_RINGS)")
            self.enabled = True
            if self.setup_flags & IORING_SETUP_SINGLE_ISSUER:
                self.register_ring_fd()
        return 0

    # Why register the ring's own descriptor: every io_uring_enter otherwise looks the ring's
    # file up in the process's descriptor table and takes a reference on it (fdget/fdput), and
    # the loop makes one or more enters per iteration.  Registered, the enter names a slot in the
    # calling thread's own small table of rings instead (5.18).  That table is per *thread*: the
    # same slot number in another thread means nothing, or another loop's ring.  So only a
    # SINGLE_ISSUER ring registers (every enter then comes from the thread that enabled it; any
    # other thread is refused by the kernel anyway), each enter checks it runs in that thread
    # before using the slot, and close() unregisters from that thread.  A ring closed from
    # another thread stays in the issuer's table (holding the kernel's ring alive) until that
    # thread exits; the kernel drops the table then.  Any failure -- an older kernel, or the
    # thread's 16 slots all taken by other loops -- just leaves the plain descriptor in use.
    cdef void register_ring_fd(self):
        cdef io_uring_rsrc_update update
        memset(&update, 0, sizeof(update))
        update.offset = <uint32_t>0xFFFFFFFF          # any free slot; the kernel writes it back
        update.data = <uint64_t>self.fd
        if ul_register(self.fd, IORING_REGISTER_RING_FDS, &update, 1) == 1:
            self.registered_index = <int>update.offset
            self.registered_thread = ul_thread_token()
            self.registered_pid = getpid()

    cdef void unregister_ring_fd(self):
        cdef io_uring_rsrc_update update
        if self.registered_index < 0:
            return
        if ul_thread_token() == self.registered_thread and getpid() == self.registered_pid:
            memset(&update, 0, sizeof(update))
            update.offset = <uint32_t>self.registered_index
            ul_register(self.fd, IORING_UNREGISTER_RING_FDS, &update, 1)
        self.registered_index = -1

    cdef inline int enter_fd(self, unsigned *flags):
        # What io_uring_enter takes from this thread: the registered slot (with its flag added to
        # `flags`) in the thread that registered it, the descriptor anywhere else.
        if self.registered_index >= 0 and ul_thread_token() == self.registered_thread:
            flags[0] |= IORING_ENTER_REGISTERED_RING
            return self.registered_index
        return self.fd

    # ---- submission ----

    cdef io_uring_sqe *get_sqe(self) except? NULL:
        """A zero-initialised-by-the-caller SQE slot, or NULL when the SQ is full even after
        pushing what is queued to the kernel (the caller then keeps its request in a backlog)."""
        cdef unsigned head = ul_load_acquire(self.sq_khead)
        if self.sq_tail - head >= self.sq_room:
            # Full: hand the queued entries to the kernel now rather than at the iteration's
            # enter.  min_complete=0, so this never blocks.
            self.enter(0, 0)
            head = ul_load_acquire(self.sq_khead)
            if self.sq_tail - head >= self.sq_room:
                return NULL
        cdef io_uring_sqe *sqe = &self.sqes[self.sq_tail & self.sq_mask]
        self.sq_tail += 1
        return sqe

    def _limit_sq_room(self, room=None):
        """For tests: hand out SQE slots only while fewer than `room` wait for the kernel (None:
        the whole queue) -- with 0, get_sqe() answers NULL as when the kernel takes no more
        entries (EAGAIN/EBUSY), the case no loopback test can bring about."""
        self.sq_room = self.sq_entries if room is None else min(<unsigned>room, self.sq_entries)

    cdef unsigned sq_pending(self) noexcept:
        return self.sq_tail - ul_load_acquire(self.sq_khead)

    cdef io_uring_sqe *sqe_not_taken(self, unsigned slot, uint64_t user_data) noexcept:
        """The SQE get_sqe() handed out at `slot` (its sq_tail then), while the kernel has not
        taken it yet -- it reads SQEs only inside io_uring_enter, and the head it advances
        there says which -- and it still carries `user_data`; else NULL.  Until then it is ours
        to change (the Proactor's StaleFdGuard, and its unsent operations)."""
        cdef unsigned head = ul_load_acquire(self.sq_khead)
        cdef io_uring_sqe *sqe
        if <unsigned>(slot - head) >= <unsigned>(self.sq_tail - head):
            return NULL
        sqe = &self.sqes[slot & self.sq_mask]
        return sqe if sqe.user_data == user_data else NULL

    cdef int flush(self) except -1:
        # Release: the SQE contents written above must be visible before the tail that publishes
        # them (io_uring(7)).
        if self.sq_ktail[0] != self.sq_tail:
            ul_store_release(self.sq_ktail, self.sq_tail)
        return 0

    cdef int enter(self, unsigned min_complete, long long timeout_ns,
                   unsigned min_wait_us=0) except -2:
        """Publish queued SQEs and, in the same system call, wait until `min_complete` CQEs are
        ready or `timeout_ns` passes (negative: no deadline).  Returns the number of SQEs the
        kernel consumed; a timeout, a signal or transient back-pressure is not an error.

        `min_wait_us` (only where the kernel has `min_timeout`): after that many microseconds
        the wait ends as soon as ANY completion is ready, even if fewer than `min_complete`; with
        none ready it goes on until `timeout_ns` as an ordinary wait for one."""
        cdef io_uring_getevents_arg arg
        cdef __kernel_timespec ts
        cdef unsigned flags = IORING_ENTER_GETEVENTS
        cdef void *argp = NULL
        cdef size_t argsz = 0
        cdef unsigned to_submit
        cdef int ret
        cdef int fd
        if self.closed:
            raise RuntimeError("the io_uring ring is closed")
        if not self.enabled:
            self.enable()
        fd = self.enter_fd(&flags)
        if self.enter_hook is not None:
            self.enter_hook.before_enter()
        self.flush()
        to_submit = self.sq_tail - ul_load_acquire(self.sq_khead)
        if timeout_ns == 0:
            min_complete = 0
        if min_complete <= 1 or not self.min_timeout:
            min_wait_us = 0
        if min_complete and (timeout_ns > 0 or min_wait_us):
            memset(&arg, 0, sizeof(arg))
            if timeout_ns > 0:
                ts.tv_sec = timeout_ns // 1000000000
                ts.tv_nsec = timeout_ns % 1000000000
                arg.ts = <uint64_t><uintptr_t>&ts
            arg.pad = min_wait_us       # min_wait_usec in 6.12+ headers
            argp = &arg
            argsz = sizeof(arg)
            flags |= IORING_ENTER_EXT_ARG
        if min_complete:
            with nogil:         # may sleep: other threads run meanwhile
                ret = ul_enter(fd, to_submit, min_complete, flags, argp, argsz)
        else:
            # Returns without waiting: dropping and retaking the GIL would cost more than the
            # call itself.
            ret = ul_enter(fd, to_submit, min_complete, flags, argp, argsz)
        return self.entered(ret)

    cdef int entered(self, int ret) except -2:
        """The outcome of an io_uring_enter that returned `ret`: the SQEs the kernel consumed."""
        self.enters += 1
        if ret >= 0:
            self.submitted += <unsigned>ret
            return ret
        if ret == -ETIME or ret == -EINTR or ret == -EAGAIN or ret == -EBUSY:
            # ETIME: the deadline passed.  EINTR: a signal arrived (Python's handler runs when we
            # return).  EAGAIN/EBUSY: the kernel is short of memory or the CQ backlog is full;
            # the caller reaps and the next enter retries the submission.
            return 0
        if ret == -EEXIST and self.setup_flags & IORING_SETUP_SINGLE_ISSUER:
            raise OSError(EEXIST, "io_uring_enter: this event loop's io_uring takes work only "
                                  "from the thread that first ran the loop (SINGLE_ISSUER); run "
                                  "the loop in that thread, or create a new loop in this one")
        raise _oserror(-ret, "io_uring_enter")

    # ---- completion ----

    cdef unsigned cq_ready(self) noexcept:
        # Acquire: every CQE up to this tail is fully written by the kernel.
        return ul_load_acquire(self.cq_ktail) - self.cq_khead[0]

    cdef io_uring_cqe *cq_at(self, unsigned i) noexcept:
        return &self.cqes[(self.cq_khead[0] + i) & self.cq_mask]

    cdef void cq_advance(self, unsigned n) noexcept:
        # Release: we are done reading these CQEs before the kernel may overwrite them.
        ul_store_release(self.cq_khead, self.cq_khead[0] + n)

    cdef bint has_work(self) noexcept:
        """Whether an io_uring_enter that does not wait would do anything: submit queued SQEs,
        find CQEs, or run deferred completions (IORING_SQ_TASKRUN) / flush overflowed ones.
        Without TASKRUN_FLAG the kernel does not tell, so the answer is always yes."""
        if self.sq_tail != ul_load_acquire(self.sq_khead) or self.sq_ktail[0] != self.sq_tail:
            return True
        if self.cq_ready():
            return True
        if not (self.setup_flags & IORING_SETUP_TASKRUN_FLAG):
            return True
        return (ul_load_relaxed(self.sq_kflags)
                & (IORING_SQ_TASKRUN | IORING_SQ_CQ_OVERFLOW)) != 0

    cdef bint can_spin(self) noexcept:
        """Whether spin_for_work can see completions coming: the kernel flags deferred ones
        (TASKRUN_FLAG), so reading shared memory tells without a system call."""
        return (self.setup_flags & IORING_SETUP_TASKRUN_FLAG) != 0 and not self.closed

    cdef long long spin_for_work(self, long long limit_ns) noexcept nogil:
        """Spin on the ring's shared memory -- no system call -- until a CQE is posted or the
        kernel flags completions waiting to be run (IORING_SQ_TASKRUN), for at most `limit_ns`.
        Returns the nanoseconds spun, negated when nothing came (see WaitPolicy.spin_or_wait
        for why a loop would rather spin than sleep).  Only for rings that can_spin().  Each
        turn yields the CPU to other runnable threads and processes, so a spin takes only
        time nobody else wanted."""
        cdef long long start = ul_monotonic_ns()
        cdef long long now = start
        cdef unsigned i
        while True:
            # Acquire on the CQ tail as cq_ready() does; the flags word is a hint, read relaxed.
            if (ul_load_acquire(self.cq_ktail) != self.cq_khead[0]
                    or ul_load_relaxed(self.sq_kflags)
                    & (IORING_SQ_TASKRUN | IORING_SQ_CQ_OVERFLOW)):
                return ul_monotonic_ns() - start
            if now - start >= limit_ns:
                return start - now - 1          # negative even for a zero limit
            # A few pauses between clock reads: the shared words are in this CPU's cache until
            # the kernel writes them, and a clock read costs more than a look at them.
            for i in range(16):
                ul_cpu_relax()
            # Offer the CPU to whatever else is runnable on it (returns at once when nothing
            # is): four servers sharing one CPU, each on one connection, served 0.76-0.80x the
            # requests of not spinning when their spins kept the CPU, 1.3x when they yield.
            sched_yield()
            now = ul_monotonic_ns()

    @property
    def sq_flags(self):
        """The kernel's IORING_SQ_* flags of this ring (diagnostics)."""
        return ul_load_relaxed(self.sq_kflags) if not self.closed else 0

    cdef bint cq_overflowed(self) noexcept:
        # With FEAT_NODROP a full CQ parks completions in a kernel list and raises this flag;
        # the next enter(GETEVENTS) moves them into the CQ.  Nothing is lost, but we must come
        # back for them before sleeping.
        return (ul_load_relaxed(self.sq_kflags) & IORING_SQ_CQ_OVERFLOW) != 0

    cpdef close(self):
        if self.closed:
            return
        self.closed = True
        if self.sqes != NULL:
            munmap(self.sqes, self.sqes_map_len)
            self.sqes = NULL
        if self.cq_map != NULL:
            munmap(self.cq_map, self.cq_map_len)
            self.cq_map = NULL
        if self.sq_map != NULL:
            munmap(self.sq_map, self.sq_map_len)
            self.sq_map = NULL
        if self.fd >= 0:
            self.unregister_ring_fd()
            os.close(self.fd)
            self.fd = -1

    @property
    def is_closed(self):
        return self.closed

    def __dealloc__(self):
        # Only reached when the owner never called close(); the loop always drains first.
        if not self.closed:
            self.close()


cdef class BufferRing:
    """`count` buffers of `buf_size` bytes registered as buffer group `bgid`.

    Ownership: a buffer belongs to the kernel from the moment it is published in the ring until a
    CQE names it (IORING_CQE_F_BUFFER, id in the upper 16 flag bits); then it belongs to us until
    give_back() returns it.  The pool memory is unmapped only after the group is unregistered, so
    the kernel can never write into freed memory.

    With `incremental` (IOU_PBUF_RING_INC, 6.12) the kernel consumes a buffer piece by piece: a
    completion takes only the bytes it needs and, while IORING_CQE_F_BUF_MORE is set, the same
    buffer goes on serving the next completions, each starting where the previous one ended.
    data(bid) tracks that position; consumed() advances it and gives the buffer back once the
    kernel has finished with it.  Large buffers then cost nothing for small messages.

    With `capacity` > count the ring is registered with room for `capacity` buffers but only
    `count` circulate; grow() puts more into circulation when the ring ran dry.  The pool is
    mapped for all of them up front -- address space only: a page takes memory when the kernel
    first writes into it."""

    def __cinit__(self, Ring ring, unsigned bgid, unsigned count, unsigned buf_size,
                  bint incremental=False, unsigned capacity=0):
        cdef io_uring_buf_reg reg
        cdef unsigned i
        cdef int ret
        if count == 0 or count & (count - 1) or count > 32768:
            raise ValueError("count must be a power of two <= 32768")
        if capacity < count:
            capacity = count
        if capacity & (capacity - 1) or capacity > 32768:
            raise ValueError("capacity must be a power of two <= 32768")
        self.ring = ring
        self.bgid = bgid
        self.count = count
        self.capacity = capacity
        self.mask = capacity - 1
        self.buf_size = buf_size
        self.br_len = capacity * sizeof(io_uring_buf)
        self.br = <io_uring_buf_ring *>ul_mmap_anon(self.br_len, True)
        self.pool_len = <size_t>capacity * buf_size
        self.pool = <char *>ul_mmap_anon(self.pool_len, False)
        if self.br == NULL or self.pool == NULL:
            self._unmap()
            raise MemoryError("cannot map the provided-buffer ring")
        if incremental:
            self.offsets = <unsigned *>calloc(capacity, sizeof(unsigned))
            if self.offsets == NULL:
                self._unmap()
                raise MemoryError()
            self.incremental = True
        memset(&reg, 0, sizeof(reg))
        reg.ring_addr = <uint64_t><uintptr_t>self.br
        reg.ring_entries = capacity
        reg.bgid = <uint16_t>bgid
        if incremental:
            ul_buf_reg_set_flags(&reg, <uint16_t>IOU_PBUF_RING_INC)
        ret = ul_register(ring.fd, IORING_REGISTER_PBUF_RING, &reg, 1)
        if ret < 0:
            self._unmap()
            raise _oserror(-ret, "io_uring_register(PBUF_RING)")
        self.registered = True
        for i in range(count):
            ul_buf_ring_add(self.br, self.mask, i, self.buffer(i), buf_size, i)
        ul_buf_ring_advance(self.br, count)

    cdef void give_back(self, unsigned bid) noexcept:
        # Batched: the new tail is published once per reaped CQE batch (publish()).
        ul_buf_ring_add(self.br, self.mask, self.pending_returns, self.buffer(bid),
                        self.buf_size, bid)
        self.pending_returns += 1

    cdef void consumed(self, unsigned bid, unsigned nbytes, unsigned cqe_flags) noexcept:
        # Call once per completion that names `bid`, after copying its data out.
        if self.incremental and cqe_flags & IORING_CQE_F_BUF_MORE:
            self.offsets[bid] += nbytes      # the kernel keeps filling this buffer
            return
        if self.incremental:
            self.offsets[bid] = 0
        self.give_back(bid)

    cdef bint grow(self) noexcept:
        """The ring ran dry (a receive ended with -ENOBUFS): double the buffers in circulation,
        up to `capacity`.  Returns whether more buffers are on their way -- added now, or by
        an earlier call in this batch of completions (every connection that met the dry ring
        in one batch asks; only the first grows it).  They reach the kernel at publish()."""
        cdef unsigned bid, target
        if self.grew_in_batch:
            return True
        if self.count >= self.capacity:
            return False
        target = self.count * 2
        if target > self.capacity:
            target = self.capacity
        for bid in range(self.count, target):
            self.give_back(bid)
        self.count = target
        self.grew_in_batch = True
        return True

    cdef void publish(self) noexcept:
        self.grew_in_batch = False
        if self.pending_returns:
            ul_buf_ring_advance(self.br, self.pending_returns)
            self.pending_returns = 0

    cdef _unmap(self):
        if self.offsets != NULL:
            free(self.offsets)
            self.offsets = NULL
        if self.br != NULL:
            munmap(self.br, self.br_len)
            self.br = NULL
        if self.pool != NULL:
            munmap(self.pool, self.pool_len)
            self.pool = NULL

    cpdef close(self):
        cdef io_uring_buf_reg reg
        if self.registered:
            self.registered = False
            if not self.ring.closed:
                memset(&reg, 0, sizeof(reg))
                reg.bgid = <uint16_t>self.bgid
                ul_register(self.ring.fd, IORING_UNREGISTER_PBUF_RING, &reg, 1)
            # If the ring is already gone, its teardown released the group.
        self._unmap()

    def __dealloc__(self):
        self.close()
