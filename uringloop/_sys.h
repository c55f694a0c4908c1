/*
 * _sys.h -- the only file in uringloop that knows the kernel's io_uring ABI.
 *
 * What lives here, and why it is C rather than Cython:
 *
 *   - the three raw system calls (io_uring_setup, io_uring_enter, io_uring_register).  glibc has
 *     no wrappers for them and we deliberately do not use liburing (DEVELOPERS.md, decision 1), so
 *     we call syscall(2) with the numbers from <sys/syscall.h>;
 *   - the memory-ordering primitives used on the shared ring indices.  The kernel and this process
 *     run concurrently on the SQ/CQ head and tail words; the rules (io_uring(7), "memory ordering")
 *     are: load the index the *other* side writes with acquire semantics, store the index *we* own
 *     with release semantics, so that the SQE contents are visible before the tail that publishes
 *     them, and the CQE contents are read only after the tail that announces them;
 *   - SQE "prep" helpers: each operation kind fills exactly the fields the kernel reads for it and
 *     zeroes the rest, so the Cython code never touches the union-heavy struct io_uring_sqe;
 *   - fallback definitions for UAPI constants newer than the headers installed on the build machine
 *     (Debian 12 ships 6.1 headers; the loop probes the *running* kernel at run time, so it may use
 *     features the build headers have never heard of).
 */
#ifndef URINGLOOP_SYS_H
#define URINGLOOP_SYS_H

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sched.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <stddef.h>
#include <linux/io_uring.h>

/* ---- system call numbers (x86_64/aarch64 share them since 5.1's unified table) ---- */
#ifndef __NR_io_uring_setup
#define __NR_io_uring_setup 425
#endif
#ifndef __NR_io_uring_enter
#define __NR_io_uring_enter 426
#endif
#ifndef __NR_io_uring_register
#define __NR_io_uring_register 427
#endif

/* ---- constants newer than the oldest headers we build against ---- */
#ifndef IORING_SETUP_SUBMIT_ALL
#define IORING_SETUP_SUBMIT_ALL (1U << 7)          /* 5.18 */
#endif
#ifndef IORING_SETUP_COOP_TASKRUN
#define IORING_SETUP_COOP_TASKRUN (1U << 8)        /* 5.19 */
#endif
#ifndef IORING_SETUP_TASKRUN_FLAG
#define IORING_SETUP_TASKRUN_FLAG (1U << 9)
#endif
#ifndef IORING_SETUP_SINGLE_ISSUER
#define IORING_SETUP_SINGLE_ISSUER (1U << 12)      /* 6.0 */
#endif
#ifndef IORING_SETUP_DEFER_TASKRUN
#define IORING_SETUP_DEFER_TASKRUN (1U << 13)      /* 6.1 */
#endif
#ifndef IORING_SETUP_NO_SQARRAY
#define IORING_SETUP_NO_SQARRAY (1U << 16)         /* 6.6 */
#endif
#ifndef IORING_RECV_MULTISHOT
#define IORING_RECV_MULTISHOT (1U << 1)            /* 6.0 */
#endif
#ifndef IORING_RECVSEND_POLL_FIRST
#define IORING_RECVSEND_POLL_FIRST (1U << 0)
#endif
#ifndef IORING_RECVSEND_BUNDLE
#define IORING_RECVSEND_BUNDLE (1U << 4)           /* 6.10 */
#endif
#ifndef IORING_ASYNC_CANCEL_ALL
#define IORING_ASYNC_CANCEL_ALL (1U << 0)
#endif
#ifndef IORING_ASYNC_CANCEL_FD
#define IORING_ASYNC_CANCEL_FD (1U << 1)
#endif
#ifndef IORING_ASYNC_CANCEL_ANY
#define IORING_ASYNC_CANCEL_ANY (1U << 2)
#endif
#ifndef IORING_CQE_F_SOCK_NONEMPTY
#define IORING_CQE_F_SOCK_NONEMPTY (1U << 2)
#endif
#ifndef IORING_CQE_F_NOTIF
#define IORING_CQE_F_NOTIF (1U << 3)
#endif
#ifndef IORING_CQE_F_BUF_MORE
#define IORING_CQE_F_BUF_MORE (1U << 4)            /* 6.12, incremental buffer consumption */
#endif
#ifndef IOU_PBUF_RING_INC
#define IOU_PBUF_RING_INC 2                        /* 6.12 */
#endif
#ifndef IORING_POLL_ADD_MULTI
#define IORING_POLL_ADD_MULTI (1U << 0)
#endif
#ifndef IORING_SQ_CQ_OVERFLOW
#define IORING_SQ_CQ_OVERFLOW (1U << 1)
#endif
#ifndef IORING_SQ_TASKRUN
#define IORING_SQ_TASKRUN (1U << 2)
#endif
#ifndef IORING_FEAT_EXT_ARG
#define IORING_FEAT_EXT_ARG (1U << 8)
#endif
#ifndef IORING_FEAT_MIN_TIMEOUT
/* 6.12: io_uring_getevents_arg's `pad` is min_wait_usec (headers before 6.12 call it pad). */
#define IORING_FEAT_MIN_TIMEOUT (1U << 15)
#endif
#ifndef IORING_ENTER_EXT_ARG
#define IORING_ENTER_EXT_ARG (1U << 3)
#endif
#ifndef IORING_REGISTER_ENABLE_RINGS
#define IORING_REGISTER_ENABLE_RINGS 12
#endif
#ifndef IORING_REGISTER_PROBE
#define IORING_REGISTER_PROBE 8
#endif
#ifndef IORING_ENTER_REGISTERED_RING
#define IORING_ENTER_REGISTERED_RING (1U << 4)
#endif
#ifndef IORING_REGISTER_RING_FDS
#define IORING_REGISTER_RING_FDS 20
#endif
#ifndef IORING_UNREGISTER_RING_FDS
#define IORING_UNREGISTER_RING_FDS 21
#endif
#ifndef IORING_REGISTER_PBUF_RING
#define IORING_REGISTER_PBUF_RING 22
#endif
#ifndef IORING_UNREGISTER_PBUF_RING
#define IORING_UNREGISTER_PBUF_RING 23
#endif
#ifndef IORING_SETUP_R_DISABLED
#define IORING_SETUP_R_DISABLED (1U << 6)
#endif
#ifndef IOSQE_CQE_SKIP_SUCCESS
#define IOSQE_CQE_SKIP_SUCCESS (1U << 6)
#endif

/* Opcodes are an enum in the UAPI header, so they cannot be tested with #ifdef.  The values are
 * ABI and never change; we name the ones we use with our own prefix so that building against older
 * headers works, and the run-time probe decides whether the running kernel has them. */
enum {
    UL_OP_NOP = 0, UL_OP_READV = 1, UL_OP_WRITEV = 2, UL_OP_POLL_ADD = 6, UL_OP_POLL_REMOVE = 7,
    UL_OP_SENDMSG = 9, UL_OP_RECVMSG = 10, UL_OP_TIMEOUT = 11, UL_OP_ACCEPT = 13,
    UL_OP_ASYNC_CANCEL = 14, UL_OP_CONNECT = 16, UL_OP_OPENAT = 18, UL_OP_CLOSE = 19,
    UL_OP_READ = 22, UL_OP_WRITE = 23, UL_OP_SEND = 26, UL_OP_RECV = 27, UL_OP_SPLICE = 30,
    UL_OP_SHUTDOWN = 34, UL_OP_MSG_RING = 40, UL_OP_SEND_ZC = 47, UL_OP_SENDMSG_ZC = 48,
    UL_OP_WAITID = 50, UL_OP_FSYNC = 3, UL_OP_EPOLL_WAIT = 59,
};

#define UL_PROBE_OPS 256
#define UL_SUN_PATH_OFFSET offsetof(struct sockaddr_un, sun_path)

/* ---- raw system calls ---- */
static inline int ul_setup(unsigned entries, struct io_uring_params *p) {
    long r = syscall(__NR_io_uring_setup, entries, p);
    return r < 0 ? -errno : (int)r;
}

static inline int ul_enter(int fd, unsigned to_submit, unsigned min_complete, unsigned flags,
                           void *arg, size_t argsz) {
    long r = syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, arg, argsz);
    return r < 0 ? -errno : (int)r;
}

static inline int ul_register(int fd, unsigned opcode, void *arg, unsigned nr_args) {
    long r = syscall(__NR_io_uring_register, fd, opcode, arg, nr_args);
    return r < 0 ? -errno : (int)r;
}

/* A number that names the calling thread among all threads this process has had, cheaply (no
   system call): a registered ring index means something only in the thread that registered it.
   Not pthread_self(): glibc hands a new thread the descriptor -- and so the pthread_t -- of one
   that has exited, and the new thread's slot of the same number may hold another ring.  Not the
   kernel's thread id either: reading it is a system call.  A fork child inherits its parent's
   value, but a loop from before a fork never enters its ring in the child (Proactor.forked).
   The initial-exec TLS model reads the variable at a fixed offset from the thread pointer; the
   default for a shared object calls __tls_get_addr() on every read (every io_uring_enter asks).
   It takes 8 bytes of the static TLS surplus glibc keeps for modules loaded with dlopen(). */
static inline uint64_t ul_thread_token(void) {
    static uint64_t last_token;
    static __thread uint64_t token __attribute__((tls_model("initial-exec")));
    if (token == 0)
        token = __atomic_add_fetch(&last_token, 1, __ATOMIC_RELAXED);
    return token;
}

#ifndef RWF_NOWAIT
#define RWF_NOWAIT 0x00000008
#endif

/* One write that never sleeps, at the file's current position: what a blocking pipe can take at
   once, or -1 with EAGAIN (full) or EOPNOTSUPP (a file type without RWF_NOWAIT, such as a tty). */
static inline ssize_t ul_write_nowait(int fd, const void *buf, size_t n) {
    struct iovec iov;
    iov.iov_base = (void *)buf;
    iov.iov_len = n;
    return pwritev2(fd, &iov, 1, -1, RWF_NOWAIT);
}

/* ---- memory ordering on the shared indices ---- */
static inline unsigned ul_load_acquire(const unsigned *p) {
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
static inline void ul_store_release(unsigned *p, unsigned v) {
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}
static inline void ul_store_release16(uint16_t *p, uint16_t v) {
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}
/* Flags the kernel sets asynchronously (CQ overflow, task-run pending) are read relaxed: they
 * are hints that make us call io_uring_enter again, never data we dereference. */
static inline unsigned ul_load_relaxed(const unsigned *p) {
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

/* ---- spinning briefly instead of sleeping (Ring.spin_for_work) ---- */
static inline void ul_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#else
    __asm__ __volatile__("" ::: "memory");
#endif
}
static inline long long ul_monotonic_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static inline void *ul_mmap(size_t len, int fd, off_t off) {
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, off);
    return p == MAP_FAILED ? NULL : p;
}
/* Anonymous memory for the kernel to share: `populate` faults every page in now (the provided-
 * buffer ring's own entries); without it a page takes memory when first written (a buffer pool
 * mapped for more buffers than circulate yet). */
static inline void *ul_mmap_anon(size_t len, int populate) {
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | (populate ? MAP_POPULATE : 0), -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

/* ---- SQE preparation ----
 * Every helper starts from a zeroed SQE: the kernel rejects (EINVAL) non-zero values in fields an
 * opcode does not use, and a recycled SQE slot still holds the previous request's fields. */
static inline void ul_prep(struct io_uring_sqe *sqe, int op, int fd, const void *addr,
                           unsigned len, uint64_t off, uint64_t user_data) {
    memset(sqe, 0, sizeof(*sqe));
    sqe->opcode = (uint8_t)op;
    sqe->fd = fd;
    sqe->addr = (uint64_t)(uintptr_t)addr;
    sqe->len = len;
    sqe->off = off;
    sqe->user_data = user_data;
}

static inline void ul_prep_recv(struct io_uring_sqe *sqe, int fd, void *buf, unsigned len,
                                int msg_flags, uint64_t ud) {
    ul_prep(sqe, UL_OP_RECV, fd, buf, len, 0, ud);
    sqe->msg_flags = (uint32_t)msg_flags;
}

/* Multishot receive from a provided-buffer group: the kernel picks a buffer per completion and
 * keeps the request armed (IORING_CQE_F_MORE) until an error, EOF or the group runs dry. */
static inline void ul_prep_recv_multishot(struct io_uring_sqe *sqe, int fd, unsigned bgid,
                                          uint64_t ud) {
    ul_prep(sqe, UL_OP_RECV, fd, NULL, 0, 0, ud);
    sqe->ioprio = IORING_RECV_MULTISHOT;
    sqe->flags = IOSQE_BUFFER_SELECT;
    sqe->buf_group = (uint16_t)bgid;
}

/* Multishot recvmsg from a provided-buffer group (6.0): every datagram lands in its own buffer as
 * struct io_uring_recvmsg_out, then msg->msg_namelen bytes reserved for the source address, then
 * msg->msg_controllen bytes of control data, then the payload.  The kernel reads only the two
 * lengths from *msg (no iovec: the buffer comes from the group). */
static inline void ul_prep_recvmsg_multishot(struct io_uring_sqe *sqe, int fd, struct msghdr *msg,
                                             unsigned bgid, uint64_t ud) {
    ul_prep(sqe, UL_OP_RECVMSG, fd, msg, 1, 0, ud);
    sqe->ioprio = IORING_RECV_MULTISHOT;
    sqe->flags = IOSQE_BUFFER_SELECT;
    sqe->buf_group = (uint16_t)bgid;
}

static inline void ul_prep_send(struct io_uring_sqe *sqe, int fd, const void *buf, unsigned len,
                                int msg_flags, uint64_t ud) {
    ul_prep(sqe, UL_OP_SEND, fd, buf, len, 0, ud);
    sqe->msg_flags = (uint32_t)msg_flags;
}

static inline void ul_prep_send_zc(struct io_uring_sqe *sqe, int fd, const void *buf,
                                   unsigned len, int msg_flags, uint64_t ud) {
    ul_prep(sqe, UL_OP_SEND_ZC, fd, buf, len, 0, ud);
    sqe->msg_flags = (uint32_t)msg_flags;
}

static inline void ul_prep_msg(struct io_uring_sqe *sqe, int op, int fd, struct msghdr *msg,
                               int msg_flags, uint64_t ud) {
    ul_prep(sqe, op, fd, msg, 1, 0, ud);
    sqe->msg_flags = (uint32_t)msg_flags;
}

static inline void ul_prep_accept(struct io_uring_sqe *sqe, int fd, struct sockaddr *addr,
                                  socklen_t *addrlen, int flags, uint64_t ud) {
    ul_prep(sqe, UL_OP_ACCEPT, fd, addr, 0, (uint64_t)(uintptr_t)addrlen, ud);
    sqe->accept_flags = (uint32_t)flags;
}

static inline void ul_prep_connect(struct io_uring_sqe *sqe, int fd, const struct sockaddr *addr,
                                   socklen_t addrlen, uint64_t ud) {
    ul_prep(sqe, UL_OP_CONNECT, fd, addr, 0, addrlen, ud);
}

static inline void ul_prep_poll(struct io_uring_sqe *sqe, int fd, unsigned events, int multishot,
                                uint64_t ud) {
    ul_prep(sqe, UL_OP_POLL_ADD, fd, NULL, multishot ? IORING_POLL_ADD_MULTI : 0, 0, ud);
    sqe->poll32_events = events;  /* little-endian only: uringloop targets x86_64/aarch64 LE */
}

/* epoll_wait(2) of an epoll instance into `events` (room for `maxevents`), done by the kernel: it
 * completes with the number of events written once at least one is ready (6.15). */
static inline void ul_prep_epoll_wait(struct io_uring_sqe *sqe, int epfd, void *events,
                                      unsigned maxevents, uint64_t ud) {
    ul_prep(sqe, UL_OP_EPOLL_WAIT, epfd, events, maxevents, 0, ud);
}

static inline void ul_prep_rw(struct io_uring_sqe *sqe, int op, int fd, void *buf, unsigned len,
                              uint64_t off, uint64_t ud) {
    ul_prep(sqe, op, fd, buf, len, off, ud);
}

/* Files: open relative to dfd (AT_FDCWD) with open(2) flags and creation mode, fsync/fdatasync
 * (IORING_FSYNC_DATASYNC) of the whole file, close.  The kernel copies `path` when it prepares
 * the request; the operation still pins it until its final CQE. */
static inline void ul_prep_openat(struct io_uring_sqe *sqe, int dfd, const char *path, int flags,
                                  unsigned mode, uint64_t ud) {
    ul_prep(sqe, UL_OP_OPENAT, dfd, path, mode, 0, ud);
    sqe->open_flags = (uint32_t)flags;
}

static inline void ul_prep_fsync(struct io_uring_sqe *sqe, int fd, unsigned fsync_flags,
                                 uint64_t ud) {
    ul_prep(sqe, UL_OP_FSYNC, fd, NULL, 0, 0, ud);
    sqe->fsync_flags = fsync_flags;
}

static inline void ul_prep_close(struct io_uring_sqe *sqe, int fd, uint64_t ud) {
    ul_prep(sqe, UL_OP_CLOSE, fd, NULL, 0, 0, ud);
}

static inline void ul_prep_splice(struct io_uring_sqe *sqe, int fd_in, int64_t off_in, int fd_out,
                                  int64_t off_out, unsigned len, unsigned flags, uint64_t ud) {
    ul_prep(sqe, UL_OP_SPLICE, fd_out, NULL, len, (uint64_t)off_out, ud);
    sqe->splice_off_in = (uint64_t)off_in;
    sqe->splice_fd_in = fd_in;
    sqe->splice_flags = flags;
}

static inline void ul_prep_shutdown(struct io_uring_sqe *sqe, int fd, int how, uint64_t ud) {
    ul_prep(sqe, UL_OP_SHUTDOWN, fd, NULL, (unsigned)how, 0, ud);
}

/* Cancel by user_data.  The cancel request's own success completion is suppressed
 * (IOSQE_CQE_SKIP_SUCCESS, 5.17): the target's own final CQE is what the loop waits for. */
static inline void ul_prep_cancel(struct io_uring_sqe *sqe, uint64_t target, uint64_t ud) {
    ul_prep(sqe, UL_OP_ASYNC_CANCEL, -1, (void *)(uintptr_t)target, 0, 0, ud);
    sqe->flags = IOSQE_CQE_SKIP_SUCCESS;
}

/* Cancel every request on the ring (CANCEL_ANY|CANCEL_ALL, 5.19): used when the loop closes. */
static inline void ul_prep_cancel_all(struct io_uring_sqe *sqe, uint64_t ud) {
    ul_prep(sqe, UL_OP_ASYNC_CANCEL, -1, NULL, 0, 0, ud);
    sqe->cancel_flags = IORING_ASYNC_CANCEL_ANY | IORING_ASYNC_CANCEL_ALL;
}

/* ---- provided-buffer rings (IORING_REGISTER_PBUF_RING, 5.19) ---- */
static inline void ul_buf_ring_add(struct io_uring_buf_ring *br, unsigned mask, unsigned tail_off,
                                   void *addr, unsigned len, unsigned bid) {
    struct io_uring_buf *b = &br->bufs[(br->tail + tail_off) & mask];
    b->addr = (uint64_t)(uintptr_t)addr;
    b->len = len;
    b->bid = (uint16_t)bid;
}
/* The 16-bit field after bgid is `flags` in 6.7+ headers and `pad` in older ones
 * (IOU_PBUF_RING_MMAP, IOU_PBUF_RING_INC live there); set it by position so that both build. */
static inline void ul_buf_reg_set_flags(struct io_uring_buf_reg *reg, uint16_t flags) {
    memcpy((char *)&reg->bgid + sizeof(reg->bgid), &flags, sizeof(flags));
}
static inline void ul_buf_ring_advance(struct io_uring_buf_ring *br, unsigned count) {
    ul_store_release16(&br->tail, (uint16_t)(br->tail + count));
}

/* The wake-up flag (Proactor.wakeup): raised by whoever writes the eventfd, lowered by the loop
 * when it takes the write's completion.  Sequentially consistent both ways: the ready queue a
 * writer appended to before raising must be seen by the loop after it lowers. */
static inline int ul_flag_raise(int *p) {
    return __atomic_exchange_n(p, 1, __ATOMIC_SEQ_CST);
}
static inline void ul_flag_lower(int *p) {
    __atomic_store_n(p, 0, __ATOMIC_SEQ_CST);
}

static inline int ul_eventfd_write(int fd) {
    uint64_t one = 1;
    return (int)write(fd, &one, sizeof(one));
}

#endif
