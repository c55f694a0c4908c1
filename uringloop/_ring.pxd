from libc.stdint cimport uint16_t, uint32_t, uint64_t
from uringloop._sys cimport io_uring_sqe, io_uring_cqe, io_uring_buf_ring, io_uring_params


cdef class EnterHook:
    # Told before every io_uring_enter, while the SQEs written since the last one can still be
    # changed (Ring.enter_hook; the Proactor's StaleFdGuard).
    cdef int before_enter(self) except -1


cdef class Ring:
    cdef readonly int fd
    cdef readonly unsigned setup_flags       # the IORING_SETUP_* flags the kernel accepted
    cdef readonly unsigned features          # IORING_FEAT_* reported by the kernel
    cdef readonly unsigned sq_entries, cq_entries
    cdef bint enabled                        # false while IORING_SETUP_R_DISABLED is pending
    cdef bint closed
    cdef readonly bint min_timeout           # the kernel has IORING_FEAT_MIN_TIMEOUT (6.12)

    # The ring's slot in its issuer thread's table of registered rings (IORING_REGISTER_RING_FDS),
    # or -1: io_uring_enter then takes the slot instead of the descriptor.
    cdef readonly int registered_index
    cdef uint64_t registered_thread          # ul_thread_token() of that thread
    cdef long registered_pid                 # and its process (a fork shares the thread value)

    # submission queue, shared with the kernel
    cdef unsigned *sq_khead
    cdef unsigned *sq_ktail
    cdef unsigned *sq_kflags
    cdef unsigned *sq_array
    cdef unsigned sq_mask
    cdef unsigned sq_tail                    # our private tail: SQEs handed out, not yet published
    cdef unsigned sq_room                    # sq_entries (less only in tests: _limit_sq_room)
    cdef io_uring_sqe *sqes
    cdef EnterHook enter_hook                # None, or told before each enter (see EnterHook)

    # completion queue, shared with the kernel
    cdef unsigned *cq_khead
    cdef unsigned *cq_ktail
    cdef unsigned cq_mask
    cdef io_uring_cqe *cqes

    cdef void *sq_map
    cdef size_t sq_map_len
    cdef void *cq_map
    cdef size_t cq_map_len
    cdef size_t sqes_map_len

    cdef readonly bytes supported_ops        # byte per opcode: 1 when the kernel has it
    cdef readonly unsigned long long enters  # statistics: io_uring_enter calls
    cdef readonly unsigned long long submitted

    cdef int _map(self, io_uring_params *p) except -1
    cdef int _probe(self) except -1
    cdef int _check_enter(self) except -1
    cdef io_uring_sqe *get_sqe(self) except? NULL
    cdef unsigned sq_pending(self) noexcept
    cdef io_uring_sqe *sqe_not_taken(self, unsigned slot, uint64_t user_data) noexcept
    cdef int flush(self) except -1
    cdef int enter(self, unsigned min_complete, long long timeout_ns,
                   unsigned min_wait_us=*) except -2
    cdef int entered(self, int ret) except -2
    cdef unsigned cq_ready(self) noexcept
    cdef io_uring_cqe *cq_at(self, unsigned i) noexcept
    cdef void cq_advance(self, unsigned n) noexcept
    cdef bint cq_overflowed(self) noexcept
    cdef bint has_work(self) noexcept
    cdef bint can_spin(self) noexcept
    cdef long long spin_for_work(self, long long limit_ns) noexcept nogil
    cdef int enable(self) except -1
    cdef void register_ring_fd(self)
    cdef void unregister_ring_fd(self)
    cdef int enter_fd(self, unsigned *flags)
    cdef bint has_op(self, int opcode) noexcept
    cpdef close(self)


cdef class BufferRing:
    """A provided-buffer ring (IORING_REGISTER_PBUF_RING): a group of equal-sized buffers the
    kernel picks from when a multishot receive completes."""
    cdef Ring ring
    cdef readonly unsigned bgid
    cdef readonly unsigned count             # buffers in circulation
    cdef readonly unsigned capacity          # the ring's entries: what count may grow to
    cdef readonly unsigned buf_size
    cdef bint grew_in_batch                  # grow() added buffers since the last publish()
    cdef unsigned mask
    cdef io_uring_buf_ring *br
    cdef size_t br_len
    cdef char *pool
    cdef size_t pool_len
    cdef unsigned pending_returns
    cdef bint registered
    cdef readonly bint incremental           # IOU_PBUF_RING_INC: buffers consumed piecewise
    cdef unsigned *offsets                   # incremental: next byte of each buffer

    cdef inline char *buffer(self, unsigned bid):
        return self.pool + <size_t>bid * self.buf_size
    cdef inline char *data(self, unsigned bid):
        # Where the bytes of the completion that names `bid` start.
        if self.incremental:
            return self.pool + <size_t>bid * self.buf_size + self.offsets[bid]
        return self.pool + <size_t>bid * self.buf_size
    cdef void consumed(self, unsigned bid, unsigned nbytes, unsigned cqe_flags) noexcept
    cdef void give_back(self, unsigned bid) noexcept
    cdef bint grow(self) noexcept
    cdef void publish(self) noexcept
    cdef _unmap(self)
    cpdef close(self)
