# Cython view of _sys.h: the kernel ABI, declared once and cimported by the ring and operations.
# Only the fields this project reads are declared; the C side owns the real layouts.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from posix.types cimport off_t

cdef extern from "<sys/socket.h>":
    ctypedef unsigned int socklen_t
    struct sockaddr:
        unsigned short sa_family
    struct sockaddr_storage:
        unsigned short ss_family
    struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        void *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags

cdef extern from "<sys/uio.h>":
    struct iovec:
        void *iov_base
        size_t iov_len

cdef extern from "<sys/epoll.h>" nogil:
    # What the readiness registry's epoll instance reports (the kernel fills these for
    # IORING_OP_EPOLL_WAIT as for epoll_wait(2)).
    ctypedef union epoll_data_t:
        void *ptr
        int fd
        uint32_t u32
        uint64_t u64
    struct epoll_event:
        uint32_t events
        epoll_data_t data

cdef extern from "<netinet/in.h>" nogil:
    # The addresses the core converts itself (the ring's accept, connect, sendto and recvmsg;
    # transports' getsockname/getpeername) rather than through the socket module.
    struct in_addr:
        unsigned int s_addr
    struct sockaddr_in:
        unsigned short sin_family
        unsigned short sin_port
        in_addr sin_addr
    struct in6_addr:
        pass
    struct sockaddr_in6:
        unsigned short sin6_family
        unsigned short sin6_port
        unsigned int sin6_flowinfo
        in6_addr sin6_addr
        unsigned int sin6_scope_id

cdef extern from "<arpa/inet.h>" nogil:
    int inet_pton(int af, const char *src, void *dst)
    const char *inet_ntop(int af, const void *src, char *dst, socklen_t size)
    unsigned short htons(unsigned short)
    unsigned short ntohs(unsigned short)
    unsigned int htonl(unsigned int)
    unsigned int ntohl(unsigned int)

cdef extern from "<poll.h>" nogil:
    # The poll(2) event bits io_uring's POLL_ADD takes and reports -- and poll(2) itself, for the
    # few waits that cannot go through the ring (a fork child's loop, a connect's outcome).
    enum:
        POLLIN, POLLOUT
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long nfds, int timeout)

cdef extern from "<fcntl.h>" nogil:
    # A descriptor's file status flags (O_NONBLOCK): read for sockets the caller made, and set
    # around the few writes that must not sleep on a file that has no other way (_pipes).
    int F_GETFL, F_SETFL, O_NONBLOCK
    int c_fcntl "fcntl"(int fd, int cmd, ...)

cdef extern from "<errno.h>" nogil:
    int errno
    enum:
        EPERM, ENOENT, EINTR, EBADF, EAGAIN, ENOMEM, EBUSY, EINVAL, EPIPE, ENOSYS, ETIME, ENOBUFS
        ECANCELED, EAFNOSUPPORT, EALREADY, ECONNRESET, ENOTCONN, EOPNOTSUPP, EINPROGRESS
        EEXIST

cdef extern from "_sys.h" nogil:
    size_t UL_SUN_PATH_OFFSET
    struct io_sqring_offsets:
        uint32_t head, tail, ring_mask, ring_entries, flags, dropped, array
    struct io_cqring_offsets:
        uint32_t head, tail, ring_mask, ring_entries, overflow, cqes, flags
    struct io_uring_params:
        uint32_t sq_entries, cq_entries, flags, sq_thread_cpu, sq_thread_idle, features, wq_fd
        io_sqring_offsets sq_off
        io_cqring_offsets cq_off
    struct io_uring_sqe:
        uint8_t opcode
        uint8_t flags
        int fd
        uint64_t user_data
    struct io_uring_cqe:
        uint64_t user_data
        int res
        uint32_t flags
    struct io_uring_getevents_arg:
        uint64_t sigmask
        uint32_t sigmask_sz
        uint32_t pad
        uint64_t ts
    struct io_uring_rsrc_update:
        uint32_t offset
        uint32_t resv
        uint64_t data
    struct __kernel_timespec:
        long long tv_sec
        long long tv_nsec
    struct io_uring_probe_op:
        uint8_t op
        uint16_t flags
    struct io_uring_probe:
        uint8_t last_op
        uint8_t ops_len
        io_uring_probe_op ops[1]
    struct io_uring_buf:
        uint64_t addr
        uint32_t len
        uint16_t bid
    struct io_uring_buf_ring:
        uint16_t tail
    struct io_uring_recvmsg_out:
        uint32_t namelen
        uint32_t controllen
        uint32_t payloadlen
        uint32_t flags
    struct io_uring_buf_reg:
        uint64_t ring_addr
        uint32_t ring_entries
        uint16_t bgid
        uint16_t flags

    # setup / enter / register constants
    unsigned IORING_SETUP_CQSIZE, IORING_SETUP_SUBMIT_ALL, IORING_SETUP_COOP_TASKRUN
    unsigned IORING_SETUP_TASKRUN_FLAG, IORING_SETUP_SINGLE_ISSUER, IORING_SETUP_DEFER_TASKRUN
    unsigned IORING_SETUP_R_DISABLED, IORING_SETUP_CLAMP
    unsigned IORING_FEAT_SINGLE_MMAP, IORING_FEAT_NODROP, IORING_FEAT_EXT_ARG, IORING_FEAT_FAST_POLL
    unsigned IORING_FEAT_MIN_TIMEOUT
    unsigned IORING_ENTER_GETEVENTS, IORING_ENTER_EXT_ARG, IORING_ENTER_REGISTERED_RING
    unsigned IORING_SQ_CQ_OVERFLOW, IORING_SQ_TASKRUN
    unsigned IORING_REGISTER_PROBE, IORING_REGISTER_ENABLE_RINGS
    unsigned IORING_REGISTER_RING_FDS, IORING_UNREGISTER_RING_FDS
    unsigned IORING_REGISTER_PBUF_RING, IORING_UNREGISTER_PBUF_RING, IOU_PBUF_RING_INC
    long long IORING_OFF_SQ_RING, IORING_OFF_CQ_RING, IORING_OFF_SQES
    unsigned IORING_CQE_F_BUFFER, IORING_CQE_F_MORE, IORING_CQE_F_NOTIF, IORING_CQE_F_BUF_MORE
    unsigned IORING_CQE_F_SOCK_NONEMPTY, IORING_CQE_BUFFER_SHIFT
    unsigned IO_URING_OP_SUPPORTED
    unsigned IOSQE_ASYNC, IOSQE_IO_LINK
    unsigned IORING_FSYNC_DATASYNC

    # opcodes (our own names; values are ABI)
    enum:
        UL_OP_NOP, UL_OP_READV, UL_OP_WRITEV, UL_OP_FSYNC, UL_OP_POLL_ADD, UL_OP_POLL_REMOVE
        UL_OP_SENDMSG
        UL_OP_RECVMSG, UL_OP_TIMEOUT, UL_OP_ACCEPT, UL_OP_ASYNC_CANCEL, UL_OP_CONNECT, UL_OP_OPENAT
        UL_OP_CLOSE, UL_OP_READ, UL_OP_WRITE, UL_OP_SEND, UL_OP_RECV, UL_OP_SPLICE, UL_OP_SHUTDOWN
        UL_OP_MSG_RING, UL_OP_SEND_ZC, UL_OP_SENDMSG_ZC, UL_OP_WAITID, UL_OP_EPOLL_WAIT
        UL_PROBE_OPS

    int ul_setup(unsigned entries, io_uring_params *p)
    int ul_enter(int fd, unsigned to_submit, unsigned min_complete, unsigned flags, void *arg,
                 size_t argsz)
    int ul_register(int fd, unsigned opcode, void *arg, unsigned nr_args)
    uint64_t ul_thread_token()
    ssize_t ul_write_nowait(int fd, const void *buf, size_t n)
    unsigned ul_load_acquire(const unsigned *p)
    void ul_store_release(unsigned *p, unsigned v)
    unsigned ul_load_relaxed(const unsigned *p)
    void ul_cpu_relax()
    int sched_yield()
    long long ul_monotonic_ns()
    void *ul_mmap(size_t length, int fd, off_t off)
    void *ul_mmap_anon(size_t length, int populate)
    int munmap(void *addr, size_t length)

    void ul_prep_recv(io_uring_sqe *sqe, int fd, void *buf, unsigned len, int flags, uint64_t ud)
    void ul_prep_recv_multishot(io_uring_sqe *sqe, int fd, unsigned bgid, uint64_t ud)
    void ul_prep_recvmsg_multishot(io_uring_sqe *sqe, int fd, msghdr *msg, unsigned bgid,
                                   uint64_t ud)
    void ul_prep_send(io_uring_sqe *sqe, int fd, const void *buf, unsigned len, int flags,
                      uint64_t ud)
    void ul_prep_send_zc(io_uring_sqe *sqe, int fd, const void *buf, unsigned len, int flags,
                         uint64_t ud)
    void ul_prep_msg(io_uring_sqe *sqe, int op, int fd, msghdr *msg, int flags, uint64_t ud)
    void ul_prep_accept(io_uring_sqe *sqe, int fd, sockaddr *addr, socklen_t *addrlen, int flags,
                        uint64_t ud)
    void ul_prep_connect(io_uring_sqe *sqe, int fd, const sockaddr *addr, socklen_t addrlen,
                         uint64_t ud)
    void ul_prep_poll(io_uring_sqe *sqe, int fd, unsigned events, int multishot, uint64_t ud)
    void ul_prep_epoll_wait(io_uring_sqe *sqe, int epfd, void *events, unsigned maxevents,
                            uint64_t ud)
    void ul_prep_rw(io_uring_sqe *sqe, int op, int fd, void *buf, unsigned len, uint64_t off,
                    uint64_t ud)
    void ul_prep_splice(io_uring_sqe *sqe, int fd_in, int64_t off_in, int fd_out, int64_t off_out,
                        unsigned len, unsigned flags, uint64_t ud)
    void ul_prep_shutdown(io_uring_sqe *sqe, int fd, int how, uint64_t ud)
    void ul_prep_openat(io_uring_sqe *sqe, int dfd, const char *path, int flags, unsigned mode,
                        uint64_t ud)
    void ul_prep_fsync(io_uring_sqe *sqe, int fd, unsigned fsync_flags, uint64_t ud)
    void ul_prep_close(io_uring_sqe *sqe, int fd, uint64_t ud)
    void ul_prep_cancel(io_uring_sqe *sqe, uint64_t target, uint64_t ud)
    void ul_prep_cancel_all(io_uring_sqe *sqe, uint64_t ud)
    void ul_buf_ring_add(io_uring_buf_ring *br, unsigned mask, unsigned tail_off, void *addr,
                         unsigned len, unsigned bid)
    void ul_buf_ring_advance(io_uring_buf_ring *br, unsigned count)
    void ul_buf_reg_set_flags(io_uring_buf_reg *reg, uint16_t flags)
    int ul_eventfd_write(int fd)
    int ul_flag_raise(int *p)
    void ul_flag_lower(int *p)
