/*
 * loadgen: a TCP echo load generator for the uringloop benchmarks, closed-loop or paced.
 *
 * Each of --conns connections keeps exactly one request in flight: it sends --size bytes, waits
 * until the same --size bytes have come back, compares every one of them with what it sent, and
 * sends the next.  Throughput is requests completed per second inside the measurement window
 * (after --warmup seconds, for --duration seconds); latency is send-start to last-byte-received of
 * each request completed in that window, reported as p50/p99.
 *
 * Before the clock starts, every connection completes one request (the first round): a server
 * that accepts its connections slowly while it is busy would otherwise be measured serving fewer
 * connections than --conns.  uvloop 0.23 accepts one connection per loop iteration; with 1,000
 * connections echoing 16 KiB it took 8 s to accept them all, so a 2 s window after 0.5 s of
 * warm-up saw it serve only 490-860 of them -- a smaller working set, and a higher rate, than the
 * point it was reported at.  In the first round each connection waits for its echo before
 * sending again, so the server has little else to do while it accepts.  The output says how long
 * the round took (first_round_s) and how many connections completed a request inside the window
 * (conns_served).
 *
 * With --rate R (requests per second over all connections; 0, the default, is the closed loop
 * above) the load is paced: each connection still keeps at most one request in flight, and its
 * requests are due --conns / R seconds apart, so the offered rate is R whatever the server's
 * speed.  A connection whose echo is back before its next request is due sleeps until then (the
 * point: a server that sees idle gaps between requests, as a server at a fixed rate does); one
 * whose echo is late sends the next request as soon as it is back.  The connections' first due
 * times are spread evenly over one interval (connection i at i / R seconds), so they do not all
 * fire together.  Due times stay an interval apart even when a request leaves late, so a
 * connection that fell behind catches up by sending as soon as each echo is back.  Counting each
 * interval from the previous request's actual start instead would offer less than R to every
 * loop: most wake-ups of this client are 10-50 us late (the 2-CPU VM, 1 connection at 5,000
 * requests/s), a tenth or more of an interval at the rates the benchmark uses.  And an echo now
 * and then takes a few hundred microseconds: with the catching up limited to one interval, the
 * stock loop's server still fell 1-4% short of 5,000-10,000 requests/s on 1 connection.  The
 * catching up is bounded all the same: a request that leaves more than CATCH_UP_NS after it was
 * due starts the schedule afresh from itself, so a server that stalled for longer is not handed
 * every request it missed in one burst, and a server that cannot keep up serves what it can (the
 * output counts those restarts: schedule_restarts).  A paced run that achieves less than R is a
 * server that could not sustain R (the client sleeps most of the time: see client_cpu_pct).
 * Latency is measured from each request's actual start.
 *
 * With --mark-window the load generator prints "# window start" and "# window end" on stdout,
 * each flushed at the moment its measurement window starts and ends (it wakes up for both), so
 * that the harness can read the server's CPU time over exactly that window.  The JSON line is
 * still the last line of the output.
 *
 * With --requests N the run is a fixed amount of work instead: exactly N requests are issued (and
 * completed) over the connections, whatever time that takes; the window is the whole run
 * (--duration and --warmup are ignored).  The memory benchmark uses this to put a known number of
 * requests through a server between two readings of its RSS.
 *
 * Why C and not Python: a Python client shares the interpreter's costs with the servers being
 * measured and saturates long before uvloop does.  This one is a single epoll thread pinned to its
 * own CPU (--cpu), so the server under test gets the other CPU to itself.
 *
 * Verification: every request sends a window of a random pattern (the window start moves with the
 * connection number and the request's sequence number), so an echo that is stale, reordered,
 * duplicated, truncated or from another connection does not match.  Any mismatch, short echo,
 * unexpected EOF or reset aborts the run with an error.
 *
 * With --tls every connection speaks TLS (client side, the server's certificate not verified:
 * loopback only) and the requests and echoes are application data; the handshakes are done
 * before the first round.  Only a binary built with LOADGEN_TLS defined and linked with OpenSSL
 * (the harness builds bin/loadgen-tls that way when OpenSSL's headers are there) has it; the
 * plain binary refuses --tls.  Without --tls both builds make the same system calls.
 *
 * Output: one JSON object on stdout (after the window marks of --mark-window); exit status 0 on
 * success, 2 on a failed run, 1 on bad usage.  Every run ends by itself: a connect phase limited
 * by --timeout, a stall detector (--timeout seconds with requests out and none completed), and a
 * bounded drain of in-flight requests at the end.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#ifdef LOADGEN_TLS
#include <openssl/err.h>
#include <openssl/ssl.h>
#endif

/* The pattern is longer than a message by this much: the room the window start moves in. */
#define PATTERN_SLACK 4096u
#define SCRATCH_SIZE (256u * 1024u)
#define MAX_EVENTS 256
/* Paced: how far a connection may fall behind its schedule and still catch up (see the header).
 * Catching up never puts more than one request per connection in flight, so what a server
 * behind its schedule sees is the closed loop until it is back on time.  With 2 ms the stock
 * loop's and uvloop's servers fell 1-2.4% short of 5,000 requests/s on 1 connection (3 runs of
 * each), one of them in a run whose longest echo took 0.5 ms: the client (or its vCPU) had been
 * held up for longer than 2 ms, not the server. */
#define CATCH_UP_NS 20000000ull
/* The longest single wait for events: the stall detector and the window's end are looked at
 * least this often. */
#define MAX_WAIT_NS 50000000ull
/* epoll_pwait2 has number 441 on every architecture (it came after the syscall tables were
 * unified); headers older than Linux 5.11 do not name it. */
#ifndef SYS_epoll_pwait2
#define SYS_epoll_pwait2 441
#endif

struct conn {
    int fd;
    int connected;
    int want_out;          /* EPOLLOUT is armed: the current request is partly sent */
    int busy;              /* a request is in flight */
    uint32_t offset;       /* window start in the pattern for the current request */
    size_t sent, received;
    uint64_t seq;
    uint64_t started_ns;
    int served_in_window;  /* completed a request inside the measurement window */
    int idle;              /* paced: no request in flight, the next one due at due_ns */
    uint64_t due_ns;       /* paced: when its next request may start */
#ifdef LOADGEN_TLS
    SSL *ssl;              /* --tls: the connection's TLS state */
#endif
};

static struct {
    const char *host;
    int port, nconns, cpu;
    size_t size;
    double duration, warmup, timeout;
    unsigned long long requests;       /* 0: run for --duration; else issue exactly this many */
    double rate;                       /* 0: closed loop; else requests/s over all connections */
    int mark_window;                   /* print "# window start" / "# window end" (see header) */
    int tls;                           /* --tls: TLS on every connection (see header) */
} opt = {"127.0.0.1", 0, 1, -1, 1024, 2.0, 0.5, 10.0, 0, 0.0, 0, 0};

static unsigned char *pattern;
static unsigned char scratch[SCRATCH_SIZE];
static struct conn *conns;
static int epfd = -1;

static uint32_t *samples;          /* latencies (ns, saturated) of requests in the window */
static size_t nsamples, samples_cap;
static uint64_t total_requests;   /* every completed request, warm-up and drain included */
static uint64_t window_requests;
static uint64_t window_bytes;
static uint64_t issued_requests;  /* requests started (for --requests) */
static uint64_t interval_ns;      /* paced: --conns / --rate, between one connection's requests */
static uint64_t schedule_restarts;  /* paced: requests that left more than CATCH_UP_NS late */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void json_string(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            printf("\\%c", *s);
        else if ((unsigned char)*s < 0x20)
            printf("\\u%04x", *s);
        else
            putchar(*s);
    }
    putchar('"');
}

/* Report a failed run as JSON (so the harness can show the reason) and exit 2. */
static void fail(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void fail(const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    printf("{\"ok\": false, \"error\": ");
    json_string(msg);
    printf(", \"conns\": %d, \"size\": %zu, \"rate\": %.1f, \"total_requests\": %llu}\n",
           opt.nconns, opt.size, opt.rate, (unsigned long long)total_requests);
    fflush(stdout);
    exit(2);
}

static void usage(void)
{
    fprintf(stderr,
            "usage: loadgen --port N [--host 127.0.0.1] [--conns 1] [--size 1024]\n"
            "               [--duration 2] [--warmup 0.5] [--timeout 10] [--cpu N]\n"
            "               [--requests N] [--rate R] [--mark-window] [--tls]\n"
            "  --rate R       R requests/s over all connections, each connection sleeping\n"
            "                 until its next request is due (default 0: closed loop)\n"
            "  --mark-window  print '# window start' / '# window end' as the measurement\n"
            "                 window starts and ends\n"
            "  --tls          TLS on every connection (a binary built with LOADGEN_TLS)\n");
    exit(1);
}

static void parse_args(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--mark-window")) {        /* the options without a value */
            opt.mark_window = 1;
            continue;
        }
        if (!strcmp(a, "--tls")) {
#ifndef LOADGEN_TLS
            fprintf(stderr, "loadgen: built without TLS (LOADGEN_TLS and OpenSSL): no --tls\n");
            exit(1);
#endif
            opt.tls = 1;
            continue;
        }
        if (i + 1 >= argc)
            usage();
        const char *v = argv[++i];
        if (!strcmp(a, "--host"))
            opt.host = v;
        else if (!strcmp(a, "--port"))
            opt.port = atoi(v);
        else if (!strcmp(a, "--conns"))
            opt.nconns = atoi(v);
        else if (!strcmp(a, "--size"))
            opt.size = (size_t)strtoull(v, NULL, 10);
        else if (!strcmp(a, "--duration"))
            opt.duration = atof(v);
        else if (!strcmp(a, "--warmup"))
            opt.warmup = atof(v);
        else if (!strcmp(a, "--timeout"))
            opt.timeout = atof(v);
        else if (!strcmp(a, "--cpu"))
            opt.cpu = atoi(v);
        else if (!strcmp(a, "--requests"))
            opt.requests = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--rate"))
            opt.rate = atof(v);
        else
            usage();
    }
    if (opt.port <= 0 || opt.port > 65535 || opt.nconns <= 0 || opt.size == 0 ||
        opt.duration <= 0 || opt.warmup < 0 || opt.timeout <= 0 || !(opt.rate >= 0))
        usage();
    if (opt.rate > 0) {
        double ns = (double)opt.nconns * 1e9 / opt.rate;
        interval_ns = ns < 1 ? 1 : (uint64_t)ns;
    }
}

static void make_pattern(void)
{
    size_t n = opt.size + PATTERN_SLACK;
    uint64_t x = 0x9e3779b97f4a7c15ull;
    pattern = malloc(n);
    if (!pattern)
        fail("out of memory for a %zu-byte pattern", n);
    for (size_t i = 0; i < n; i++) {          /* xorshift64: cheap and not periodic in 4 KiB */
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        pattern[i] = (unsigned char)(x >> 24);
    }
}

static void epoll_set(struct conn *c, uint32_t events, int op)
{
    struct epoll_event ev = {.events = events, .data = {.u32 = (uint32_t)(c - conns)}};
    if (epoll_ctl(epfd, op, c->fd, &ev) < 0)
        fail("epoll_ctl: %s", strerror(errno));
}

static void record(uint64_t latency_ns)
{
    if (nsamples == samples_cap) {
        samples_cap = samples_cap ? samples_cap * 2 : 1u << 16;
        samples = realloc(samples, samples_cap * sizeof *samples);
        if (!samples)
            fail("out of memory for latency samples");
    }
    samples[nsamples++] = latency_ns > UINT32_MAX ? UINT32_MAX : (uint32_t)latency_ns;
}

static void want_out(struct conn *c)
{
    if (!c->want_out) {
        c->want_out = 1;
        epoll_set(c, EPOLLIN | EPOLLOUT, EPOLL_CTL_MOD);
    }
}

#ifdef LOADGEN_TLS
static SSL_CTX *tls_ctx;

/* --tls: after an SSL_* call on c that did not succeed (`ret` its return value), what to wait
 * for: EPOLLIN or EPOLLOUT; 0 for the peer's close_notify.  Any other outcome fails the run. */
static uint32_t tls_wait(struct conn *c, int ret, const char *what)
{
    int err = SSL_get_error(c->ssl, ret);
    if (err == SSL_ERROR_WANT_READ)
        return EPOLLIN;
    if (err == SSL_ERROR_WANT_WRITE)
        return EPOLLOUT;
    if (err == SSL_ERROR_ZERO_RETURN)
        return 0;
    char detail[256] = "";
    unsigned long code = ERR_get_error();
    if (code)
        ERR_error_string_n(code, detail, sizeof detail);
    else if (err == SSL_ERROR_SYSCALL)
        snprintf(detail, sizeof detail, "%s", errno ? strerror(errno) : "unexpected EOF");
    fail("connection %ld: %s: TLS error %d (%s)", (long)(c - conns), what, err, detail);
}
#endif

/* Send what is left of the current request; arm EPOLLOUT while the socket is full.  With --tls
 * a write that waits for the socket to be readable is tried again at its next event
 * (serve_events). */
static void push(struct conn *c)
{
    while (c->sent < opt.size) {
#ifdef LOADGEN_TLS
        if (opt.tls) {
            size_t written;
            int ret = SSL_write_ex(c->ssl, pattern + c->offset + c->sent, opt.size - c->sent,
                                   &written);
            if (ret == 1) {
                c->sent += written;
                continue;
            }
            uint32_t wait = tls_wait(c, ret, "SSL_write");
            if (!wait)
                fail("connection %ld: the server closed TLS (close_notify) during request %llu",
                     (long)(c - conns), (unsigned long long)c->seq);
            if (wait == EPOLLOUT)
                want_out(c);
            return;
        }
#endif
        ssize_t n = send(c->fd, pattern + c->offset + c->sent, opt.size - c->sent,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            c->sent += (size_t)n;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            want_out(c);
            return;
        }
        if (n < 0 && errno == EINTR)
            continue;
        fail("connection %ld: send: %s", (long)(c - conns), n < 0 ? strerror(errno) : "0");
    }
    if (c->want_out) {
        c->want_out = 0;
        epoll_set(c, EPOLLIN, EPOLL_CTL_MOD);
    }
}

static void start_request(struct conn *c)
{
    long idx = (long)(c - conns);
    c->offset = (uint32_t)(((uint64_t)idx * 131u + c->seq * 17u) % PATTERN_SLACK);
    c->sent = c->received = 0;
    c->busy = 1;
    issued_requests++;
    c->started_ns = now_ns();
    if (interval_ns) {
        /* The next request is due an interval after this one was due, not after it left, unless
         * this one left more than CATCH_UP_NS late: then the schedule starts again from it. */
        if (c->started_ns > c->due_ns + CATCH_UP_NS) {
            c->due_ns = c->started_ns;
            schedule_restarts++;
        }
        c->due_ns += interval_ns;
    }
    push(c);
}

/* Read what the server echoed so far (never past the current request), verify it, and complete
 * the request when all of it is back.  Returns 1 when a request completed.  With --tls it reads
 * until nothing is left: bytes OpenSSL has decrypted and kept would not wake epoll. */
static int pull(struct conn *c, uint64_t *now, uint64_t window_start, uint64_t window_end)
{
again:;
    size_t want = opt.size - c->received;
    if (want > SCRATCH_SIZE)
        want = SCRATCH_SIZE;
    ssize_t n;
#ifdef LOADGEN_TLS
    if (opt.tls) {
        size_t got;
        int ret = SSL_read_ex(c->ssl, scratch, want, &got);
        if (ret != 1) {
            uint32_t wait = tls_wait(c, ret, "SSL_read");
            if (wait == EPOLLOUT)
                want_out(c);
            if (wait)
                return 0;
            got = 0;               /* close_notify: the server closed */
        }
        n = (ssize_t)got;
    } else
#endif
    n = recv(c->fd, scratch, want, MSG_DONTWAIT);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return 0;
        fail("connection %ld: recv: %s", (long)(c - conns), strerror(errno));
    }
    if (n == 0)
        fail("connection %ld: the server closed the connection (request %llu, %zu of %zu bytes "
             "echoed)", (long)(c - conns), (unsigned long long)c->seq, c->received, opt.size);
    if (!c->busy || c->received + (size_t)n > c->sent)
        fail("connection %ld: the server sent %zd bytes that were never sent to it",
             (long)(c - conns), n);
    if (memcmp(scratch, pattern + c->offset + c->received, (size_t)n) != 0) {
        size_t at = 0;
        while (scratch[at] == pattern[c->offset + c->received + at])
            at++;
        fail("connection %ld: echoed byte %zu of request %llu differs from the byte sent",
             (long)(c - conns), c->received + at, (unsigned long long)c->seq);
    }
    c->received += (size_t)n;
    if (c->received < opt.size) {
        if (opt.tls)
            goto again;
        return 0;
    }
    *now = now_ns();
    c->busy = 0;
    c->seq++;
    total_requests++;
    if (*now >= window_start && *now < window_end) {
        window_requests++;
        window_bytes += opt.size;
        record(*now - c->started_ns);
        c->served_in_window = 1;
    }
    return 1;
}

/* May another request start now?  By time, or (--requests) by the count issued so far. */
static int more_requests(uint64_t now, uint64_t window_end)
{
    if (opt.requests)
        return issued_requests < opt.requests;
    return now < window_end;
}

static double tv_seconds(const struct timeval *tv)
{
    return (double)tv->tv_sec + (double)tv->tv_usec / 1e6;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static double percentile_us(double q)
{
    if (!nsamples)
        return 0.0;
    size_t i = (size_t)(q * (double)(nsamples - 1) + 0.5);
    return samples[i] / 1000.0;
}

static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static void pin_cpu(void)
{
    if (opt.cpu < 0)
        return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(opt.cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) < 0)
        fail("sched_setaffinity(CPU %d): %s", opt.cpu, strerror(errno));
}

/* Wait, within --timeout, until `pending` connections have each finished a set-up phase (the
 * TCP connect, the TLS handshake): step(c) sees every event on c and answers 1 when c has just
 * finished the phase, 0 otherwise.  `what` names the unfinished ones in the error. */
static void finish_phase(int pending, const char *what, int (*step)(struct conn *c))
{
    struct epoll_event events[MAX_EVENTS];
    uint64_t deadline = now_ns() + (uint64_t)(opt.timeout * 1e9);
    while (pending > 0) {
        if (now_ns() > deadline)
            fail("%d of %d %s after %.1f s", pending, opt.nconns, what, opt.timeout);
        int n = epoll_wait(epfd, events, MAX_EVENTS, 100);
        if (n < 0 && errno != EINTR)
            fail("epoll_wait: %s", strerror(errno));
        for (int k = 0; k < n; k++)
            pending -= step(&conns[events[k].data.u32]);
    }
}

static int connect_step(struct conn *c)
{
    int err = 0;
    socklen_t len = sizeof err;
    if (c->connected)
        return 0;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err)
        fail("connect to %s:%d: %s", opt.host, opt.port, strerror(err));
    c->connected = 1;
    epoll_set(c, EPOLLIN, EPOLL_CTL_MOD);
    return 1;
}

static void connect_all(void)
{
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)opt.port)};
    if (inet_pton(AF_INET, opt.host, &addr.sin_addr) != 1)
        fail("not an IPv4 address: %s", opt.host);
    int one = 1, pending = opt.nconns;
    for (int i = 0; i < opt.nconns; i++) {
        struct conn *c = &conns[i];
        c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (c->fd < 0)
            fail("socket: %s (connection %d)", strerror(errno), i);
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS)
            fail("connect to %s:%d: %s", opt.host, opt.port, strerror(errno));
        epoll_set(c, EPOLLOUT, EPOLL_CTL_ADD);
    }
    finish_phase(pending, "connections not established", connect_step);
}

#ifdef LOADGEN_TLS
/* --tls: one step of c's handshake; 1 when it has just finished (0 for one finished before, or
 * still under way).  A connection whose handshake is done waits for no event until all are (the
 * server's session tickets would make it readable, over and over, while the others finish). */
static int handshake_step(struct conn *c)
{
    if (c->connected == 2)
        return 0;
    int ret = SSL_do_handshake(c->ssl);
    if (ret == 1) {
        c->connected = 2;
        epoll_set(c, 0, EPOLL_CTL_MOD);
        return 1;
    }
    uint32_t wait = tls_wait(c, ret, "TLS handshake");
    if (!wait)
        fail("connection %ld: the server closed TLS during the handshake", (long)(c - conns));
    epoll_set(c, wait, EPOLL_CTL_MOD);
    return 0;
}

/* --tls: every connection's handshake, all of them in flight at once, within --timeout. */
static void handshake_all(void)
{
    tls_ctx = SSL_CTX_new(TLS_client_method());
    if (!tls_ctx)
        fail("SSL_CTX_new failed");
    SSL_CTX_set_verify(tls_ctx, SSL_VERIFY_NONE, NULL);
    /* push() sends what is left of a request from wherever it stands: partial writes, and a
     * retry whose buffer pointer moved with `sent`. */
    SSL_CTX_set_mode(tls_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    int pending = opt.nconns;
    for (int i = 0; i < opt.nconns; i++) {
        struct conn *c = &conns[i];
        c->ssl = SSL_new(tls_ctx);
        if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1)
            fail("connection %d: SSL_new / SSL_set_fd failed", i);
        SSL_set_connect_state(c->ssl);
        pending -= handshake_step(c);
    }
    finish_phase(pending, "TLS handshakes not done", handshake_step);
    for (int i = 0; i < opt.nconns; i++)
        epoll_set(&conns[i], EPOLLIN, EPOLL_CTL_MOD);
}
#endif

/* Wait for events until wake_ns (CLOCK_MONOTONIC) at the latest.  wake_ns 0: the closed loop's
 * plain wait of 50 ms at most, as it always was.
 *
 * A paced run sleeps until the next request is due, tens of microseconds away at the rates the
 * benchmark uses (1 connection at 6,000 requests/s: one every 167 us), so the wait needs a
 * timeout finer than epoll_wait's milliseconds.  epoll_pwait2 takes a timespec: one system call
 * per wait, as epoll_wait is.  The alternative, a timerfd in the epoll set, costs a
 * timerfd_settime whenever the next due time moves and a read() each time it fires -- two more
 * system calls per request on the client's CPU -- for the same precision; its only advantage,
 * running on kernels older than 5.11, does not matter on the machines this runs on (a run there
 * fails saying so).  The timeout of either is an hrtimer that the kernel may fire up to the
 * thread's timer slack late (50 us by default): main() sets the slack of a paced run to 1 ns. */
static int wait_events(struct epoll_event *events, uint64_t wake_ns)
{
    if (!wake_ns)
        return epoll_wait(epfd, events, MAX_EVENTS, (int)(MAX_WAIT_NS / 1000000));
    uint64_t now = now_ns();
    uint64_t wait = wake_ns > now ? wake_ns - now : 0;
    if (wait > MAX_WAIT_NS)
        wait = MAX_WAIT_NS;
    struct timespec timeout = {.tv_sec = (time_t)(wait / 1000000000ull),
                               .tv_nsec = (long)(wait % 1000000000ull)};
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 35))
    int n = epoll_pwait2(epfd, events, MAX_EVENTS, &timeout, NULL);
#else
    /* glibc before 2.35 has no wrapper. */
    int n = (int)syscall(SYS_epoll_pwait2, epfd, events, MAX_EVENTS, &timeout, NULL, 0);
#endif
    if (n < 0 && errno == ENOSYS)
        fail("epoll_pwait2 is not available (it needs Linux 5.11 or later): --rate and "
             "--mark-window cannot wait precisely enough without it");
    return n;
}

/* Wait for events (until wake_ns at the latest: see wait_events), then go on with each connection
 * they name: read its echo, or send more of its request.  Each connection whose request
 * completed goes to on_done(c, ctx) at once, so that the next request can leave before the other
 * events are seen to.  Returns the time after the wait. */
static uint64_t serve_events(uint64_t wake_ns, uint64_t window_start, uint64_t window_end,
                             void (*on_done)(struct conn *c, uint64_t now, void *ctx), void *ctx)
{
    struct epoll_event events[MAX_EVENTS];
    int n = wait_events(events, wake_ns);
    if (n < 0 && errno != EINTR)
        fail("epoll_wait: %s", strerror(errno));
    uint64_t now = now_ns();
    for (int k = 0; k < n; k++) {
        struct conn *c = &conns[events[k].data.u32];
        /* (With --tls either read or write may be the one waiting for this event.) */
        if ((opt.tls || (events[k].events & (EPOLLERR | EPOLLHUP | EPOLLIN))) &&
            pull(c, &now, window_start, window_end)) {
            on_done(c, now, ctx);
            continue;
        }
        if (c->busy && c->sent < opt.size &&
            (opt.tls || (c->want_out && (events[k].events & EPOLLOUT))))
            push(c);
    }
    return now;
}

/* What the loops over serve_events() keep: how many connections still take part (a request out,
 * or paced and idle until the next is due), and when a request last completed or, paced, started
 * (the stall detector's reference). */
struct progress {
    int in_flight;
    int idle;               /* paced: of in_flight, those with no request out */
    uint64_t last_progress;
    int issuing;            /* the measured run: start the next request while this is set */
    uint64_t window_end;
};

static void request_done(struct conn *c, uint64_t now, void *ctx)
{
    struct progress *p = ctx;
    p->last_progress = now;
    if (!(p->issuing && more_requests(now, p->window_end)))
        p->in_flight--;
    else if (interval_ns && now < c->due_ns) {
        c->idle = 1;        /* back early: start_due_requests() sends the next when it is due */
        p->idle++;
    } else
        start_request(c);
}

/* Paced: start the request of every idle connection that is due by `now`; returns the earliest
 * due time among those still idle (UINT64_MAX: none).  A scan of every connection: at the
 * benchmark's 100 connections that is a few hundred nanoseconds per wake-up. */
static uint64_t start_due_requests(struct progress *p, uint64_t now)
{
    uint64_t next = UINT64_MAX;
    for (int i = 0; i < opt.nconns && p->idle > 0; i++) {
        struct conn *c = &conns[i];
        if (!c->idle)
            continue;
        if (c->due_ns > now) {
            if (c->due_ns < next)
                next = c->due_ns;
            continue;
        }
        c->idle = 0;
        p->idle--;
        if (p->issuing && more_requests(now, p->window_end)) {
            /* A start counts as progress: a connection that was idle for longer than --timeout
             * (a slow rate) has not stalled. */
            p->last_progress = now;
            start_request(c);
        } else
            p->in_flight--;
    }
    return next;
}

/* Paced: the measured run stops issuing; idle connections have nothing out, so they are done. */
static void drop_idle(struct progress *p)
{
    for (int i = 0; i < opt.nconns; i++)
        if (conns[i].idle) {
            conns[i].idle = 0;
            p->in_flight--;
        }
    p->idle = 0;
}

/* Fails the run when requests are out and none has completed for --timeout seconds. */
static void check_stall(const struct progress *p, uint64_t now, const char *what)
{
    int out = p->in_flight - p->idle;
    if (out > 0 && now - p->last_progress > (uint64_t)(opt.timeout * 1e9))
        fail("%s: no request completed for %.1f s (%d of %d connections waiting)", what,
             opt.timeout, out, opt.nconns);
}

/* --mark-window: say on stdout, at once, that the window started or ended (see the header). */
static void mark(const char *what)
{
    printf("# window %s\n", what);
    fflush(stdout);
}

/* One request on every connection, each waiting for its echo, until all have come back (see
 * the header).  These requests count in total_requests only: there is no window yet. */
static void first_round(void)
{
    struct progress p = {.in_flight = opt.nconns, .last_progress = now_ns(), .issuing = 0};
    for (int i = 0; i < opt.nconns; i++)
        start_request(&conns[i]);
    while (p.in_flight > 0)
        check_stall(&p, serve_events(0, UINT64_MAX, UINT64_MAX, request_done, &p),
                    "first round stalled");
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    pin_cpu();
    raise_fd_limit();
    make_pattern();
    conns = calloc((size_t)opt.nconns, sizeof *conns);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (!conns || epfd < 0)
        fail("setup: %s", strerror(errno));

    connect_all();
#ifdef LOADGEN_TLS
    if (opt.tls)
        handshake_all();
#endif
    double first_round_s = 0;
    if (!opt.requests) {
        /* (--requests issues exactly that many: no round of its own before them.) */
        uint64_t t0 = now_ns();
        first_round();
        first_round_s = (double)(now_ns() - t0) / 1e9;
    }

    schedule_restarts = 0;      /* the first round's requests had no schedule */
    struct rusage usage_start, usage_end;
    getrusage(RUSAGE_SELF, &usage_start);
    uint64_t start = now_ns();
    uint64_t window_start = start + (uint64_t)(opt.warmup * 1e9);
    uint64_t window_end = window_start + (uint64_t)(opt.duration * 1e9);
    if (opt.requests) {
        /* A fixed number of requests: every one of them is in the window. */
        window_start = start;
        window_end = UINT64_MAX;
    }
    uint64_t now = start, drain_deadline = 0;
    struct progress p = {.in_flight = 0, .last_progress = start, .issuing = 1,
                         .window_end = window_end};
    for (int i = 0; i < opt.nconns && more_requests(start, window_end); i++) {
        if (interval_ns) {
            /* Paced: connection i's first request is due i / R seconds after the start. */
            conns[i].due_ns = start + interval_ns * (uint64_t)i / (uint64_t)opt.nconns;
            conns[i].idle = 1;
            p.idle++;
        } else
            start_request(&conns[i]);
        p.in_flight++;
    }
    if (interval_ns)
        prctl(PR_SET_TIMERSLACK, 1ul, 0ul, 0ul, 0ul);     /* see wait_events() */
    uint64_t next_due = p.idle ? start_due_requests(&p, start) : UINT64_MAX;
    int marked_start = 0, marked_end = 0;

    while (p.in_flight > 0) {
        /* The closed loop without marks waits as it always did (wake 0); otherwise the wait
         * ends when the next request is due or the window starts or ends, whichever is first. */
        uint64_t wake = 0;
        if (interval_ns || opt.mark_window) {
            wake = p.idle ? next_due : UINT64_MAX;
            if (opt.mark_window && !marked_start && window_start < wake)
                wake = window_start;
            if ((p.issuing || (opt.mark_window && !marked_end)) && window_end < wake)
                wake = window_end;
        }
        now = serve_events(wake, window_start, window_end, request_done, &p);
        if (p.issuing && now >= window_end) {
            /* Stop issuing; let what is in flight finish (bounded), so the server sees orderly
             * closes rather than resets in the middle of an echo. */
            p.issuing = 0;
            drain_deadline = now + 2000000000ull;
            drop_idle(&p);
        }
        if (p.idle)
            next_due = start_due_requests(&p, now);
        if (opt.mark_window && !marked_start && now >= window_start) {
            mark("start");
            marked_start = 1;
        }
        if (opt.mark_window && !marked_end && now >= window_end) {
            mark("end");
            marked_end = 1;
        }
        if (!p.issuing && now > drain_deadline)
            break;
        check_stall(&p, now, "stalled");
    }
    uint64_t finished = now_ns();
    /* A run of --requests ends its window when its last request is back. */
    if (opt.mark_window && !marked_start)
        mark("start");
    if (opt.mark_window && !marked_end)
        mark("end");
    getrusage(RUSAGE_SELF, &usage_end);
    int conns_served = 0;
    for (int i = 0; i < opt.nconns; i++) {
#ifdef LOADGEN_TLS
        if (conns[i].ssl) {
            SSL_shutdown(conns[i].ssl);     /* close_notify, without waiting for the server's */
            SSL_free(conns[i].ssl);
        }
#endif
        close(conns[i].fd);
        conns_served += conns[i].served_in_window;
    }

    /* The client's own CPU use over the run: near 100 % means the load generator, not the
     * server, may be what limits the rate. */
    double cpu_s = tv_seconds(&usage_end.ru_utime) - tv_seconds(&usage_start.ru_utime) +
                   tv_seconds(&usage_end.ru_stime) - tv_seconds(&usage_start.ru_stime);
    double client_cpu_pct = 100.0 * cpu_s / ((double)(finished - start) / 1e9);
    double window_s = opt.requests ? (double)(finished - start) / 1e9
                                   : (double)(window_end - window_start) / 1e9;
    if (window_requests == 0)
        fail("no request completed inside the %.2f s measurement window", window_s);
    qsort(samples, nsamples, sizeof *samples, cmp_u32);
    double mean = 0;
    for (size_t i = 0; i < nsamples; i++)
        mean += samples[i];
    mean /= (double)nsamples * 1000.0;
    printf("{\"ok\": true, \"cpu\": %d, \"conns\": %d, \"size\": %zu, \"window_s\": %.3f, "
           "\"requests\": %llu, \"rps\": %.1f, \"mbps\": %.2f, \"p50_us\": %.1f, "
           "\"p99_us\": %.1f, \"max_us\": %.1f, \"mean_us\": %.1f, \"total_requests\": %llu, "
           "\"unfinished\": %d, \"client_cpu_pct\": %.1f, \"first_round_s\": %.6f, "
           "\"conns_served\": %d, \"rate\": %.1f, \"schedule_restarts\": %llu, "
           "\"tls\": %s}\n",
           opt.cpu, opt.nconns, opt.size, window_s, (unsigned long long)window_requests,
           (double)window_requests / window_s, (double)window_bytes / window_s / 1e6,
           percentile_us(0.50), percentile_us(0.99), samples[nsamples - 1] / 1000.0, mean,
           (unsigned long long)total_requests, p.in_flight, client_cpu_pct, first_round_s,
           conns_served, opt.rate, (unsigned long long)schedule_restarts,
           opt.tls ? "true" : "false");
    return 0;
}
