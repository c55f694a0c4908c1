# When and how long an iteration's io_uring_enter waits (see _waiting.pyx).

from libc.stdint cimport uint32_t
from uringloop._ring cimport Ring


ctypedef struct FdStamps:
    uint32_t sent_at_wait     # wait_ended (low 32 bits) of the iteration that last sent on it
    uint32_t received_in      # the period in which a receive on it was last counted


cdef class WaitPolicy:
    # What the Proactor tells it about each iteration, and what it keeps to decide the next wait.
    cdef Ring ring
    cdef int last_batch                    # completions the last iteration dispatched
    cdef Py_ssize_t batch_bytes            # bytes those completions moved (their results)
    cdef int quiet_sends                   # sends queued since the last enter that nobody awaits
    cdef readonly long long spin_max_ns    # URINGLOOP_SPIN_US: the longest a wait spins (0: never)
    cdef readonly long long spin_limit_ns  # how long the next wait may spin (see spin_or_wait)
    cdef readonly unsigned long long spins, spin_hits, spun_ns   # statistics
    cdef unsigned long long completions_at_spin  # the Proactor's completions when a wait last spun
    # Answers (see spin_or_wait): when this iteration's wait ended (in units of 1,024 ns), when
    # each descriptor last had a send queued (fd_stamps[fd].sent_at_wait: the iteration's
    # wait_ended, low 32 bits; grown on demand), how soon after that a receive on it is an
    # answer (the same units: 2.5 x spin_max_ns), the receives that were, and that count when a
    # wait last spun.
    cdef unsigned long long wait_ended
    cdef uint32_t answer_window
    cdef FdStamps *fd_stamps
    cdef Py_ssize_t fd_stamps_len
    cdef readonly unsigned long long answers
    cdef unsigned long long answers_at_spin
    # Breadth (see breadth_ask): the period (wait_ended >> 10: 2**20 ns, ~1.05 ms) the loop is
    # in, the descriptors that have received in it so far and its receives; the same two of
    # the last whole period; and the waits that asked for breadth.
    cdef uint32_t period
    cdef uint32_t period_fds, period_receives
    cdef readonly uint32_t active_fds, receive_rate
    cdef readonly unsigned long long breadth_waits

    cdef int grow_fd_stamps(self, int fd) noexcept

    cdef inline void note_sent(self, int fd) noexcept:
        """A send on `fd` was just queued for the kernel or made at once (see note_answer)."""
        if fd >= 0 and (fd < self.fd_stamps_len or self.grow_fd_stamps(fd) == 0):
            self.fd_stamps[fd].sent_at_wait = <uint32_t>self.wait_ended

    cdef inline void note_answer(self, int fd) noexcept:
        """Bytes (or readiness) arrived on `fd`: an answer if the wait that brought them ended
        at most answer_window after the wait before the loop's last send on it; counted towards
        the period's breadth (see breadth_ask) if the loop has ever sent on a descriptor with
        that number."""
        cdef FdStamps *stamps
        if 0 <= fd < self.fd_stamps_len:
            stamps = &self.fd_stamps[fd]
            if <uint32_t>(<uint32_t>self.wait_ended - stamps.sent_at_wait) <= self.answer_window:
                self.answers += 1
            self.period_receives += 1
            if stamps.received_in != self.period:
                stamps.received_in = self.period
                self.period_fds += 1

    cdef void batch_begins(self) noexcept
    cdef int enter(self, long long timeout_ns, unsigned long long completions) except -1
    cdef int spin_or_wait(self, long long timeout_ns, unsigned long long completions) except -1
    cdef unsigned busy_wait_count(self) noexcept
    cdef unsigned breadth_ask(self) noexcept
