/*
 * uring_echo: a minimal single-threaded TCP echo server in C on io_uring -- the benchmark's floor.
 *
 * Issue 7 measures uringloop against uvloop and the stock loop, and also asks how close it comes
 * to what io_uring gives a program with no interpreter at all.  This server is that program: the
 * same kernel interface uringloop uses (raw io_uring_setup / io_uring_enter and mmap, no
 * liburing), the same ring set-up (SINGLE_ISSUER | DEFER_TASKRUN where the kernel has them), one
 * io_uring_enter per iteration that submits everything queued and waits for at least one
 * completion, and nothing else: no Python, no protocol objects, no copies.
 *
 * Each connection owns one 64 KiB buffer (the size the Python benchmark servers receive at
 * most) and is always in exactly one of two states:
 *
 *     RECEIVING --(recv completes with n > 0 bytes)--> SENDING n bytes
 *     SENDING   --(all n bytes sent; a short send is resubmitted for the rest)--> RECEIVING
 *
 * so the buffer is never written while the kernel is sending from it.  EOF or an error on either
 * closes the connection.  Accepts are one multishot accept request (re-armed if the kernel ends
 * it); every accepted socket gets TCP_NODELAY, as the Python servers' sockets do.
 *
 * Interface (the harness treats it like benchmarks/servers.py):
 *     uring_echo [--host 127.0.0.1] [--port 0] [--cpu N] [--max-seconds S]
 * Once listening it prints one JSON line,
 *     {"ready": true, "port": 40123, "loop_type": "c-io_uring", "pid": 1234, "cpus": [0]}
 * and it exits when its stdin reaches EOF (a read request on fd 0 is on the ring) or after
 * --max-seconds (SIGALRM), whichever comes first.  If it cannot start it prints
 * {"ready": false, "error": "..."} and exits with status 3.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/io_uring.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Constants newer than some installed headers (values from the kernel's uapi). */
#ifndef IORING_SETUP_SINGLE_ISSUER
#define IORING_SETUP_SINGLE_ISSUER (1U << 12)
#endif
#ifndef IORING_SETUP_DEFER_TASKRUN
#define IORING_SETUP_DEFER_TASKRUN (1U << 13)
#endif
#ifndef IORING_ACCEPT_MULTISHOT
#define IORING_ACCEPT_MULTISHOT (1U << 0)
#endif

#define RING_ENTRIES 4096u
#define BUF_SIZE (64u * 1024u)
#define BACKLOG 2048

/* user_data: a pointer to the connection (8-byte aligned) with the operation in the low bits. */
enum op { OP_ACCEPT = 1, OP_RECV = 2, OP_SEND = 3, OP_STDIN = 4 };
#define OP_MASK 7u

struct conn {
    int fd;
    uint32_t len;          /* bytes received, being echoed */
    uint32_t sent;         /* of those, sent so far */
    unsigned char buf[BUF_SIZE];
} __attribute__((aligned(8)));

static struct {
    int fd;
    /* submission queue */
    unsigned *sq_head, *sq_tail, sq_mask, *sq_array;
    struct io_uring_sqe *sqes;
    unsigned sq_local_tail;        /* entries written but not yet published to the kernel */
    /* completion queue */
    unsigned *cq_head, *cq_tail, cq_mask;
    struct io_uring_cqe *cqes;
} ring;

static int listen_fd = -1;
static char stdin_buf[64];

static void fail(const char *what) {
    printf("{\"ready\": false, \"error\": \"%s: %s\"}\n", what, strerror(errno));
    fflush(stdout);
    exit(3);
}

static int sys_setup(unsigned entries, struct io_uring_params *p) {
    return (int)syscall(__NR_io_uring_setup, entries, p);
}

static int sys_enter(unsigned to_submit, unsigned min_complete, unsigned flags) {
    return (int)syscall(__NR_io_uring_enter, ring.fd, to_submit, min_complete, flags, NULL, 0);
}

static void setup_ring(void) {
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
    ring.fd = sys_setup(RING_ENTRIES, &p);
    if (ring.fd < 0 && errno == EINVAL) {          /* a kernel before 6.1: plain ring */
        memset(&p, 0, sizeof p);
        ring.fd = sys_setup(RING_ENTRIES, &p);
    }
    if (ring.fd < 0)
        fail("io_uring_setup");
    size_t sq_size = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cq_size = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    if (p.features & IORING_FEAT_SINGLE_MMAP) {
        if (cq_size > sq_size)
            sq_size = cq_size;
        cq_size = sq_size;
    }
    unsigned char *sq = mmap(NULL, sq_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                             ring.fd, IORING_OFF_SQ_RING);
    if (sq == MAP_FAILED)
        fail("mmap sq ring");
    unsigned char *cq = sq;
    if (!(p.features & IORING_FEAT_SINGLE_MMAP)) {
        cq = mmap(NULL, cq_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring.fd,
                  IORING_OFF_CQ_RING);
        if (cq == MAP_FAILED)
            fail("mmap cq ring");
    }
    ring.sqes = mmap(NULL, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
                     MAP_SHARED | MAP_POPULATE, ring.fd, IORING_OFF_SQES);
    if (ring.sqes == MAP_FAILED)
        fail("mmap sqes");
    ring.sq_head = (unsigned *)(sq + p.sq_off.head);
    ring.sq_tail = (unsigned *)(sq + p.sq_off.tail);
    ring.sq_mask = *(unsigned *)(sq + p.sq_off.ring_mask);
    ring.sq_array = (unsigned *)(sq + p.sq_off.array);
    ring.sq_local_tail = *ring.sq_tail;
    ring.cq_head = (unsigned *)(cq + p.cq_off.head);
    ring.cq_tail = (unsigned *)(cq + p.cq_off.tail);
    ring.cq_mask = *(unsigned *)(cq + p.cq_off.ring_mask);
    ring.cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
}

/* Publish what was written: the kernel reads the tail with acquire semantics, so the entries
 * (and the array slots) must be visible before the new tail is. */
static unsigned flush_sq(void) {
    unsigned published = *ring.sq_tail;
    unsigned n = ring.sq_local_tail - published;
    if (n)
        __atomic_store_n(ring.sq_tail, ring.sq_local_tail, __ATOMIC_RELEASE);
    return n;
}

static struct io_uring_sqe *get_sqe(void) {
    unsigned head = __atomic_load_n(ring.sq_head, __ATOMIC_ACQUIRE);
    if (ring.sq_local_tail - head > ring.sq_mask) {
        /* Full: hand the queue to the kernel before writing more.  The ring holds 4096
         * entries and each connection has at most one request, so this is rare. */
        unsigned n = flush_sq();
        if (sys_enter(n, 0, 0) < 0 && errno != EINTR)
            fail("io_uring_enter (full submission queue)");
        head = __atomic_load_n(ring.sq_head, __ATOMIC_ACQUIRE);
        if (ring.sq_local_tail - head > ring.sq_mask)
            fail("submission queue stays full");
    }
    unsigned idx = ring.sq_local_tail & ring.sq_mask;
    struct io_uring_sqe *sqe = &ring.sqes[idx];
    memset(sqe, 0, sizeof *sqe);
    ring.sq_array[idx] = idx;
    ring.sq_local_tail++;
    return sqe;
}

static struct io_uring_sqe *prep(int opcode, int fd, const void *addr, unsigned len,
                                 void *owner, enum op op) {
    struct io_uring_sqe *sqe = get_sqe();
    sqe->opcode = (uint8_t)opcode;
    sqe->fd = fd;
    sqe->addr = (uint64_t)(uintptr_t)addr;
    sqe->len = len;
    sqe->user_data = (uint64_t)(uintptr_t)owner | op;
    return sqe;
}

static void arm_accept(void) {
    struct io_uring_sqe *sqe = get_sqe();
    sqe->opcode = IORING_OP_ACCEPT;
    sqe->fd = listen_fd;
    sqe->ioprio = IORING_ACCEPT_MULTISHOT;
    sqe->accept_flags = SOCK_CLOEXEC;
    sqe->user_data = OP_ACCEPT;
}

static void arm_recv(struct conn *c) {
    prep(IORING_OP_RECV, c->fd, c->buf, BUF_SIZE, c, OP_RECV);
}

static void arm_send(struct conn *c) {
    prep(IORING_OP_SEND, c->fd, c->buf + c->sent, c->len - c->sent, c, OP_SEND)->msg_flags =
        MSG_NOSIGNAL;
}

static void arm_stdin(void) {
    prep(IORING_OP_READ, 0, stdin_buf, sizeof stdin_buf, NULL, OP_STDIN);
}

static void drop(struct conn *c) {
    close(c->fd);
    free(c);
}

static void on_accept(int res, unsigned flags) {
    if (!(flags & IORING_CQE_F_MORE))
        arm_accept();           /* the kernel ended the multishot request: ask again */
    if (res < 0)
        return;                 /* ECONNABORTED, EMFILE, ...: the next connection is served */
    int one = 1;
    setsockopt(res, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct conn *c = aligned_alloc(8, sizeof *c);
    if (c == NULL) {
        close(res);
        return;
    }
    c->fd = res;
    c->len = c->sent = 0;
    arm_recv(c);
}

static void on_recv(struct conn *c, int res) {
    if (res == -EAGAIN || res == -EINTR) {
        arm_recv(c);
        return;
    }
    if (res <= 0) {
        drop(c);
        return;
    }
    c->len = (uint32_t)res;
    c->sent = 0;
    arm_send(c);
}

static void on_send(struct conn *c, int res) {
    if (res == -EAGAIN || res == -EINTR) {
        arm_send(c);
        return;
    }
    if (res <= 0) {
        drop(c);
        return;
    }
    c->sent += (uint32_t)res;
    if (c->sent < c->len)
        arm_send(c);
    else
        arm_recv(c);
}

static int parse_int(const char *s, const char *what) {
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v < 0 || v > 0x7fffffff) {
        fprintf(stderr, "uring_echo: bad %s: %s\n", what, s);
        exit(1);
    }
    return (int)v;
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1";
    int port = 0, cpu = -1, max_seconds = 3600;
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc) {
            fprintf(stderr, "usage: uring_echo [--host H] [--port P] [--cpu N] "
                            "[--max-seconds S]\n");
            return 1;
        }
        if (!strcmp(argv[i], "--host"))
            host = argv[++i];
        else if (!strcmp(argv[i], "--port"))
            port = parse_int(argv[++i], "--port");
        else if (!strcmp(argv[i], "--cpu"))
            cpu = parse_int(argv[++i], "--cpu");
        else if (!strcmp(argv[i], "--max-seconds"))
            max_seconds = parse_int(argv[++i], "--max-seconds");
        else {
            fprintf(stderr, "uring_echo: unknown option %s\n", argv[i]);
            return 1;
        }
    }
    if (cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        if (sched_setaffinity(0, sizeof set, &set) < 0)
            fail("sched_setaffinity");
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);
    alarm((unsigned)max_seconds);       /* SIGALRM's default action ends the process */

    listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (listen_fd < 0)
        fail("socket");
    int one = 1;
    setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        errno = EINVAL;
        fail("--host must be an IPv4 address");
    }
    if (bind(listen_fd, (struct sockaddr *)&addr, sizeof addr) < 0)
        fail("bind");
    if (listen(listen_fd, BACKLOG) < 0)
        fail("listen");
    socklen_t alen = sizeof addr;
    if (getsockname(listen_fd, (struct sockaddr *)&addr, &alen) < 0)
        fail("getsockname");

    setup_ring();
    arm_accept();
    arm_stdin();
    printf("{\"ready\": true, \"port\": %d, \"loop_type\": \"c-io_uring\", \"pid\": %d, "
           "\"cpus\": [", ntohs(addr.sin_port), (int)getpid());
    cpu_set_t mine;
    if (sched_getaffinity(0, sizeof mine, &mine) == 0) {
        const char *sep = "";
        for (int i = 0; i < CPU_SETSIZE; i++)
            if (CPU_ISSET(i, &mine)) {
                printf("%s%d", sep, i);
                sep = ", ";
            }
    }
    printf("]}\n");
    fflush(stdout);

    for (;;) {
        /* One enter per iteration: submit everything queued, wait for one completion. */
        unsigned n = flush_sq();
        if (sys_enter(n, 1, IORING_ENTER_GETEVENTS) < 0 && errno != EINTR)
            fail("io_uring_enter");
        unsigned head = *ring.cq_head;
        unsigned tail = __atomic_load_n(ring.cq_tail, __ATOMIC_ACQUIRE);
        for (; head != tail; head++) {
            struct io_uring_cqe *cqe = &ring.cqes[head & ring.cq_mask];
            uint64_t ud = cqe->user_data;
            int res = cqe->res;
            unsigned flags = cqe->flags;
            struct conn *c = (struct conn *)(uintptr_t)(ud & ~(uint64_t)OP_MASK);
            switch (ud & OP_MASK) {
            case OP_ACCEPT:
                on_accept(res, flags);
                break;
            case OP_RECV:
                on_recv(c, res);
                break;
            case OP_SEND:
                on_send(c, res);
                break;
            case OP_STDIN:
                if (res == -EAGAIN || res == -EINTR || res > 0)
                    arm_stdin();
                else
                    return 0;       /* EOF (or an error) on stdin: the harness is done */
                break;
            }
        }
        /* The slots are free for the kernel only once the new head is visible. */
        __atomic_store_n(ring.cq_head, head, __ATOMIC_RELEASE);
    }
}
