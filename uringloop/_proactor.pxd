from libc.stdint cimport uint64_t, uint32_t
from uringloop._sys cimport io_uring_sqe
from uringloop._ring cimport Ring, BufferRing, EnterHook
from uringloop._waiting cimport WaitPolicy


# An iteration that found this many completions or fewer sends a write at once rather than with
# its io_uring_enter (Proactor.little_to_batch; why and what it measured: SocketTransport's
# send_at_once in _sendside.pyx).
cdef enum:
    FEW_COMPLETIONS = 4

cdef enum OpState:
    OP_IDLE = 0         # built, never submitted, or finished
    OP_QUEUED = 1       # waiting in the backlog for a free SQE slot
    OP_SUBMITTED = 2    # the kernel owns it (and its buffer and fd)
    OP_CANCELLING = 3   # ASYNC_CANCEL sent; still owned by the kernel until its final CQE


cdef class Completer:
    """Whoever an operation reports to: the sock_* state of a socket, a transport, a server."""
    cdef int op_done(self, Operation op, int res, unsigned flags) except -1
    # A send still in flight moved `res` bytes more: a short send whose rest it has resubmitted
    # (report_progress).  Its op_done still comes once, with the whole.
    cdef int op_progress(self, Operation op, int res) except -1
    cdef int before_enter(self) except -1     # asked for with Proactor.call_before_enter


cdef class StaleFdGuard(EnterHook):
    # The sock_* operations written into the SQ since the last io_uring_enter (see _proactor.pyx).
    cdef Ring ring
    cdef list ops


cdef class Proactor:
    cdef readonly Ring ring
    cdef StaleFdGuard fd_guard             # made with the ring; the ring's enter_hook when armed
    cdef readonly Py_ssize_t inflight      # operations the kernel still owns (incl. backlog)
    cdef readonly unsigned long long batches  # dispatches of completions so far (one per wait)
    cdef list backlog                      # operations waiting for an SQE slot
    cdef list pending_cancels              # operations whose ASYNC_CANCEL found no SQE slot
    # Handles a completion made ready that run in this iteration's I/O phase, before the timers
    # due -- where the stock loop's _process_events() puts a selector's callbacks (the readiness
    # registrations of add_reader/add_writer).  Run by the loop's iteration (_sched), or moved
    # to the ready queue by select() for BaseEventLoop's own iteration.
    cdef list io_handles
    # How many callbacks the ready callbacks of the current iteration queued (set once they have
    # run; 0 when none ran), and how many I/O-phase handles went behind those instead of
    # running in the I/O phase (_readiness.Readiness.queue_io_handle says why).
    cdef Py_ssize_t queued_by_ready_phase
    cdef Py_ssize_t io_deferred
    # (callback, argument) pairs that go into the ready queue behind everything queued so far,
    # at the end of the current iteration: where the stock loop's next poll would put an I/O
    # callback (_receiveside.ReceiveSide.schedule_stash_after_ready_pass says why).  Queued by
    # the loop's iteration (_sched) once its completions and timers have run -- or at its start
    # when they were asked for outside an iteration and nothing else is ready -- and by select()
    # for BaseEventLoop's own iteration.  after_next_ready_pass: the same one iteration later
    # (take_after_ready_pass moves it up).
    cdef list after_ready_pass
    cdef list after_next_ready_pass
    # While the loop's iteration runs the callbacks that were ready at its start: the number the
    # batch of completions its io_uring_enter brings will have (batches + 1); 0 otherwise.  A
    # receive armed then completes in that same iteration, a ready pass before the stock loop's
    # read (_receiveside.ReceiveSide.got_eof).
    cdef unsigned long long ready_pass_batch
    # Called once at the start of the next iteration's enter (enter_for), after every callback
    # of this one: the readiness registry re-arms its poll there (_readiness).
    cdef Completer call_before_enter
    cdef readonly object loop
    cdef readonly bint closing
    cdef public bint forked                # set in a fork child: the ring belongs to the parent
    cdef readonly bint runs_in_fork_child  # ... and the child goes on inside this loop's run
    cdef int wake_fd
    cdef int wake_pending                  # an eventfd write not yet taken (see wakeup)
    cdef WakeupOp wakeup_op
    cdef object resolver                   # a _resolver.Resolver: getaddrinfo()'s threads report
                                           # here (made, its module imported, on first use)
    cdef list buffer_rings
    cdef readonly unsigned long long completions
    cdef readonly unsigned long long skipped_enters  # non-blocking waits with nothing to do
    cdef object exception_handler          # loop.call_exception_handler
    cdef Py_ssize_t queued_io_bytes        # bytes the SQEs not yet submitted should move
    # completions this iteration found (see little_to_batch)
    cdef readonly unsigned ready_at_dispatch
    # How the iteration's io_uring_enter waits (batching, breadth, spinning: _waiting), told here
    # what each batch of completions brought and each send and receive.
    cdef readonly WaitPolicy waits
    cdef Operation inflight_head           # every pinned operation, linked (see pin)
    cdef public bint debug                 # the loop's debug mode: completions are timed
    cdef object __weakref__

    cdef inline void pin(self, Operation op):
        cdef Operation head = self.inflight_head
        op.inflight_next = head
        op.inflight_prev = NULL
        if head is not None:
            head.inflight_prev = <void *>op
        self.inflight_head = op
        op.pinned = True

    cdef inline void unpin(self, Operation op):
        # The caller holds a reference to op: the list's may be the last but one.  Unpinning
        # twice must do nothing: an operation its completion handler resubmitted into the
        # backlog and cancelled again is unpinned inside cancel(), then seen idle by dispatch().
        if not op.pinned:
            return
        cdef Operation after = op.inflight_next
        if op.inflight_prev == NULL:
            self.inflight_head = after
        else:
            (<Operation>op.inflight_prev).inflight_next = after
        if after is not None:
            after.inflight_prev = op.inflight_prev
        op.inflight_prev = NULL
        op.inflight_next = None
        op.pinned = False

    cdef inline void note_sent(self, int fd) noexcept:
        """A send on `fd` was just queued for the kernel or made at once (see
        WaitPolicy.note_answer)."""
        self.waits.note_sent(fd)

    cdef int submit(self, Operation op) except -1
    cdef int cancel(self, Operation op) except -1
    cdef void wake(self) noexcept
    cdef int flush_backlog(self) except -1
    cdef int guard_fd(self, Operation op) except -1
    cdef io_uring_sqe *unsent_sqe(self, Operation op) noexcept
    cdef bint unsent(self, Operation op) noexcept
    cdef int prep_again(self, Operation op) except -1
    cdef int swap_unsent(self, Operation old, Operation new) except -1
    cdef int place_pending_cancels(self) except -1
    cdef int submit_pending(self) except -1
    cdef int note_send(self, Py_ssize_t nbytes, bint awaited) except -1
    cdef int note_joined(self, Py_ssize_t nbytes) except -1
    cdef bint submit_early(self, Py_ssize_t nbytes) except -1
    cdef int reap(self) except -1
    cdef int dispatch(self, Operation op, int res, unsigned flags) except -1
    cdef int complete_timed(self, Operation op, int res, unsigned flags) except -1
    cdef int check_usable(self) except -1
    cpdef int wait(self, object timeout) except -1
    cdef int enter_for(self, object timeout) except -1
    cdef int wait_in_fork_child(self, object timeout) except -1
    cdef int dispatch_completions(self) except -1
    cdef int move_io_handles_to_ready(self) except -1
    cdef list take_io_handles(self)
    cdef list take_after_ready_pass(self)
    cdef inline bint little_to_batch(self):
        # Whether this iteration found too few completions for its sends to be worth batching
        # (SocketTransport.write sends at once then): FEW_COMPLETIONS or fewer.
        return self.ready_at_dispatch <= FEW_COMPLETIONS
    cdef int let_go_of_the_loop(self) except -1
    cdef BufferRing new_buffer_ring(self, unsigned count, unsigned buf_size,
                                    bint incremental=*, unsigned capacity=*)


cdef class Operation:
    cdef Proactor proactor
    cdef public Completer owner
    cdef readonly int state
    # The Proactor's list of the operations the kernel owns (Proactor.pin): the next one holds
    # a reference, the previous one is borrowed.
    cdef Operation inflight_next
    cdef void *inflight_prev
    cdef bint pinned
    cdef readonly int fd
    cdef public object keep                # pins whatever owns `fd` (a socket object)
    cdef public object tag                 # free for the owner (the request this op serves)
    cdef bint multishot
    cdef bint owner_sees_eagain            # -EAGAIN goes to the owner instead of back to the kernel
    cdef bint receives                     # a receive (or poll for input): may be an answer
    cdef bint cancel_asked                 # cancel() was called since its last submission
    cdef bint guards_fd                    # sock_*: checked against its socket before the enter
    cdef unsigned sq_slot                  # where its SQE was last written (Proactor.unsent)

    cdef inline uint64_t ud(self):
        return <uint64_t><size_t><void *>self
    cdef int prep(self, io_uring_sqe *sqe) except -1
    cdef int complete(self, int res, unsigned flags) except -1
    cdef void release(self) noexcept
    cdef int submit(self) except -1
    cpdef cancel(self)


cdef class WakeupOp(Operation):
    cdef unsigned long long value


cdef int call_owner(Operation op, int res, unsigned flags) except -1
cdef int report_progress(Operation op, int res) except -1
cdef int socket_fd_now(object sock) except? -2
cdef bint still_same_file(Operation op) except -1
cdef object os_error(int err)
