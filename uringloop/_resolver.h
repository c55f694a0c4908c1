/* The resolver's threads: getaddrinfo(3) off the loop's thread, without the interpreter.
 *
 * getaddrinfo(3) blocks (it reads /etc/hosts, asks nsswitch's modules, may wait on a DNS
 * server), and io_uring has no operation for it, so it must run on another thread.  The stock
 * loop runs socket.getaddrinfo in its default executor: a concurrent.futures work item, a
 * Python worker thread that takes the GIL, converts the arguments and the result there, and a
 * call_soon_threadsafe() back -- ~36 us of overhead around a ~10 us lookup of "localhost" on
 * this project's machine, where uvloop (libuv's C thread pool) spends ~20.
 *
 * Here a request is a C struct holding copies of the encoded host and service and the hints;
 * the loop's thread queues it (ul_gai_submit) and a worker of a small process-wide pool runs
 * getaddrinfo(3) and hands the request to the loop's *sink*: a mutex-protected list of finished
 * requests plus the loop's wake-up eventfd, which the ring always has a read in flight on.  The
 * worker never touches a Python object, so it never takes the GIL; the loop's thread converts
 * the addrinfo list into socket.getaddrinfo's tuples when the wake-up completes (_resolver.pyx).
 *
 * Lifetimes.  A sink is shared by the loop and by each of its requests still in a worker:
 * `refs` counts them all, under the sink's lock.  Closing the loop detaches the sink
 * (wake_fd = -1) under that lock before the eventfd is closed, so no worker ever writes to a
 * closed -- or reused -- descriptor; a request finishing after that is an orphan, which its
 * worker frees, and whoever drops the last reference frees the sink.
 *
 * Fork.  Only the forking thread lives on in the child: the workers are gone, and the pool's
 * lock may have been held by one of them.  The child's copy of the pool is reset by an atfork
 * handler (the parent's queued requests are leaked there, a few hundred bytes at worst), and
 * the child's loops made before the fork never use their sinks again (Proactor's fork path).
 * What the pool cannot reset is glibc's own state: a worker inside getaddrinfo(3) at the fork
 * may hold the resolver configuration's lock (resolv_conf.c), and the child's lookups of names
 * then wait on it for ever -- as with any threads that resolve, the stock loop's executor too.
 */

#ifndef UL_RESOLVER_H
#define UL_RESOLVER_H

#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* libuv's default is 4; a few more, since a slow DNS server holds a worker for seconds and
 * the stock loop's executor would have min(32, CPUs + 4) threads for it.  Workers are made
 * when a request finds none idle, and stay. */
#define UL_GAI_MAX_THREADS 8

typedef struct ul_gai_sink ul_gai_sink;

typedef struct ul_gai_request {
    struct ul_gai_request *next;
    ul_gai_sink *sink;
    uint64_t id;                 /* the loop's key for the request's future */
    const char *host;            /* NULL: none (into `text`) */
    const char *service;         /* NULL: none (into `text`) */
    struct addrinfo hints;
    struct addrinfo *result;     /* getaddrinfo's list, freed by ul_gai_request_free */
    int error;                   /* getaddrinfo's return value */
    int sys_errno;               /* errno right after it: the error when it is EAI_SYSTEM */
    int cancelled;               /* set by the loop (atomically): nobody awaits it any more */
    char text[];                 /* host, then service, each NUL-terminated */
} ul_gai_request;

struct ul_gai_sink {
    pthread_mutex_t lock;
    ul_gai_request *done_head;   /* finished, for the loop to take */
    ul_gai_request *done_tail;
    int wake_fd;                 /* the loop's wake-up eventfd; -1 once the loop detached */
    long refs;                   /* the loop's own, plus one per request not yet taken */
};

static pthread_mutex_t ul_gai_pool_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ul_gai_pool_cond = PTHREAD_COND_INITIALIZER;
static pthread_once_t ul_gai_atfork_once = PTHREAD_ONCE_INIT;
static ul_gai_request *ul_gai_queue_head, *ul_gai_queue_tail;
static int ul_gai_queued;        /* requests in the queue */
static int ul_gai_threads;       /* workers alive */
static int ul_gai_idle;          /* workers waiting on the condition (woken or not) */

static void ul_gai_after_fork_in_child(void)
{
    pthread_mutex_init(&ul_gai_pool_lock, NULL);
    pthread_cond_init(&ul_gai_pool_cond, NULL);
    ul_gai_queue_head = ul_gai_queue_tail = NULL;
    ul_gai_queued = ul_gai_threads = ul_gai_idle = 0;
}

static void ul_gai_register_atfork(void)
{
    pthread_atfork(NULL, NULL, ul_gai_after_fork_in_child);
}

static ul_gai_sink *ul_gai_sink_new(int wake_fd)
{
    ul_gai_sink *sink = (ul_gai_sink *)calloc(1, sizeof(ul_gai_sink));
    if (sink == NULL)
        return NULL;
    pthread_mutex_init(&sink->lock, NULL);
    sink->wake_fd = wake_fd;
    sink->refs = 1;
    return sink;
}

static void ul_gai_sink_free(ul_gai_sink *sink)
{
    pthread_mutex_destroy(&sink->lock);
    free(sink);
}

static ul_gai_request *ul_gai_request_new(const char *host, size_t host_len,
                                          const char *service, size_t service_len)
{
    /* host / service NULL: none.  Both are copied: the worker may outlive the Python objects. */
    size_t size = sizeof(ul_gai_request) + (host ? host_len + 1 : 0)
                  + (service ? service_len + 1 : 0);
    ul_gai_request *req = (ul_gai_request *)calloc(1, size);
    char *p;
    if (req == NULL)
        return NULL;
    p = req->text;
    if (host) {
        memcpy(p, host, host_len);
        p[host_len] = 0;
        req->host = p;
        p += host_len + 1;
    }
    if (service) {
        memcpy(p, service, service_len);
        p[service_len] = 0;
        req->service = p;
    }
    return req;
}

static void ul_gai_request_free(ul_gai_request *req)
{
    if (req->result != NULL)
        freeaddrinfo(req->result);
    free(req);
}

/* A finished request goes to its sink, or is freed when the loop has gone. */
static void ul_gai_deliver(ul_gai_request *req)
{
    ul_gai_sink *sink = req->sink;
    uint64_t one = 1;
    int orphan, last = 0;
    ssize_t written;
    pthread_mutex_lock(&sink->lock);
    orphan = sink->wake_fd < 0;
    if (!orphan) {
        req->next = NULL;
        if (sink->done_tail != NULL) {
            /* The loop has not taken the list since the write that its first entry made:
             * that write's wake-up will take this one too. */
            sink->done_tail->next = req;
            sink->done_tail = req;
        } else {
            sink->done_head = sink->done_tail = req;
            /* Under the lock, so that the loop cannot close the descriptor in between; an
             * eventfd write of 1 fails only at a count of 2**64 - 2, which nobody reaches. */
            do {
                written = write(sink->wake_fd, &one, sizeof(one));
            } while (written < 0 && errno == EINTR);
        }
    } else {
        last = --sink->refs == 0;
    }
    pthread_mutex_unlock(&sink->lock);
    if (orphan) {
        ul_gai_request_free(req);
        if (last)
            ul_gai_sink_free(sink);
    }
}

/* Whether the sink's loop has closed (ul_gai_detach). */
static int ul_gai_detached(ul_gai_sink *sink)
{
    int detached;
    pthread_mutex_lock(&sink->lock);
    detached = sink->wake_fd < 0;
    pthread_mutex_unlock(&sink->lock);
    return detached;
}

/* From the loop's thread, for a request it has not taken back yet (so not freed): its
 * awaiter is gone; a worker that has yet to start it skips it. */
static void ul_gai_cancel(ul_gai_request *req)
{
    __atomic_store_n(&req->cancelled, 1, __ATOMIC_RELAXED);
}

static void *ul_gai_worker(void *unused)
{
    ul_gai_request *req;
    (void)unused;
    for (;;) {
        pthread_mutex_lock(&ul_gai_pool_lock);
        while (ul_gai_queue_head == NULL) {
            ul_gai_idle++;
            pthread_cond_wait(&ul_gai_pool_cond, &ul_gai_pool_lock);
            ul_gai_idle--;
        }
        req = ul_gai_queue_head;
        ul_gai_queue_head = req->next;
        if (ul_gai_queue_head == NULL)
            ul_gai_queue_tail = NULL;
        ul_gai_queued--;
        pthread_mutex_unlock(&ul_gai_pool_lock);

        if (__atomic_load_n(&req->cancelled, __ATOMIC_RELAXED) || ul_gai_detached(req->sink)) {
            /* Nobody will read its answer: its awaiter was cancelled while it was queued, or
             * its loop has closed.  It is not looked up -- as the stock loop's executor never
             * starts a work item cancelled before a thread took it, and each stock loop's
             * queue goes with its executor -- so that lookups abandoned behind a slow DNS
             * server (a timeout and a retry, many times over) do not hold up the pool that
             * every loop of the process shares.  (One already running cannot be stopped:
             * getaddrinfo(3) has no way to be interrupted.) */
            req->error = EAI_SYSTEM;
            req->sys_errno = ECANCELED;
            req->result = NULL;
        } else {
            errno = 0;
            req->error = getaddrinfo(req->host, req->service, &req->hints, &req->result);
            req->sys_errno = errno;
            if (req->error != 0)
                req->result = NULL;
        }
        ul_gai_deliver(req);
    }
    return NULL;
}

/* Starts a worker with every signal blocked: a signal meant for the process is then delivered
 * to a thread that runs Python (the main one), never to a worker inside getaddrinfo(3).
 * Called with the pool's lock held.  0, or an errno. */
static int ul_gai_start_worker(void)
{
    pthread_t thread;
    pthread_attr_t attr;
    sigset_t all, old;
    int err;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    err = pthread_create(&thread, &attr, ul_gai_worker, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    if (err == 0)
        ul_gai_threads++;
    return err;
}

/* Queues `req` for `sink` (which gains a reference).  0, or an errno when no worker exists and
 * none could be started (the request is not queued then, and stays the caller's). */
static int ul_gai_submit(ul_gai_sink *sink, ul_gai_request *req)
{
    int err = 0;
    pthread_once(&ul_gai_atfork_once, ul_gai_register_atfork);
    /* The reference first: once queued, the request may be finished before this returns. */
    pthread_mutex_lock(&sink->lock);
    sink->refs++;
    pthread_mutex_unlock(&sink->lock);
    pthread_mutex_lock(&ul_gai_pool_lock);
    if (ul_gai_queued + 1 > ul_gai_idle && ul_gai_threads < UL_GAI_MAX_THREADS) {
        err = ul_gai_start_worker();
        if (err != 0 && ul_gai_threads > 0)
            err = 0;            /* the workers there are will get to it */
    }
    if (err == 0) {
        req->sink = sink;
        req->next = NULL;
        if (ul_gai_queue_tail != NULL)
            ul_gai_queue_tail->next = req;
        else
            ul_gai_queue_head = req;
        ul_gai_queue_tail = req;
        ul_gai_queued++;
        pthread_cond_signal(&ul_gai_pool_cond);
    }
    pthread_mutex_unlock(&ul_gai_pool_lock);
    if (err != 0) {
        pthread_mutex_lock(&sink->lock);
        sink->refs--;            /* never the last: the loop holds its own */
        pthread_mutex_unlock(&sink->lock);
    }
    return err;
}

/* The finished requests, oldest first (NULL: none); the caller frees each with
 * ul_gai_taken(). */
static ul_gai_request *ul_gai_take(ul_gai_sink *sink)
{
    ul_gai_request *head;
    pthread_mutex_lock(&sink->lock);
    head = sink->done_head;
    sink->done_head = sink->done_tail = NULL;
    pthread_mutex_unlock(&sink->lock);
    return head;
}

/* A request the loop has taken and converted: freed, and its reference on the sink dropped
 * (never the last: the loop holds its own until ul_gai_detach). */
static void ul_gai_taken(ul_gai_sink *sink, ul_gai_request *req)
{
    ul_gai_request_free(req);
    pthread_mutex_lock(&sink->lock);
    sink->refs--;
    pthread_mutex_unlock(&sink->lock);
}

/* The loop is closing: from now on workers free what they finish instead of waking it.  What
 * was finished and not taken is freed here.  The sink itself goes with its last reference. */
static void ul_gai_detach(ul_gai_sink *sink)
{
    ul_gai_request *req, *next;
    int last;
    pthread_mutex_lock(&sink->lock);
    sink->wake_fd = -1;
    req = sink->done_head;
    sink->done_head = sink->done_tail = NULL;
    for (; req != NULL; req = next) {
        next = req->next;
        ul_gai_request_free(req);
        sink->refs--;
    }
    last = --sink->refs == 0;
    pthread_mutex_unlock(&sink->lock);
    if (last)
        ul_gai_sink_free(sink);
}

#endif /* UL_RESOLVER_H */
