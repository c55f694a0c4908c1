# cython: language_level=3
"""Listening sockets of asyncio servers: a poll on the ring, accept(2) in its completion.

loop._start_serving(...) gives the listening socket one Acceptor.  It keeps one POLLIN poll
request on the ring; when the poll completes, the handler accepts with accept4(2)
(SOCK_NONBLOCK|SOCK_CLOEXEC: the socket object costs no further system call) until the queue is
empty or `backlog` connections were taken -- the stock loop's batch -- and arms the poll again.

Why not the kernel's accept request (multishot accept), which would save the accept4 calls?
Because of who gets woken.  io_uring waits for a listening socket on behalf of an accept request
as an *exclusive* waiter (EPOLLEXCLUSIVE): a new connection wakes one such waiter, not all of
them.  That is harmless in one process and wrong where several share the socket -- gunicorn's
workers, uvicorn --workers, any pre-fork server.  With DEFER_TASKRUN the woken request only
accepts when its loop next enters the ring, so
  * a worker whose loop is busy (a slow callback) takes the wake-up and the connection waits for
    it, while an idle sibling sleeps on; the stock loop and uvloop wake every worker and the
    idle one serves;
  * a worker that stops serving (a graceful restart) cancels its accept request after taking a
    wake-up: the connection stays queued in the kernel and no other worker is woken until the
    next connection arrives -- a client hangs.  (Measured: two processes on one socket, the
    first blocked for a second and then closing its server: the connection made meanwhile was
    never answered.)
A poll request is an ordinary waiter, woken with every other process's.  It is one-shot and
armed again after each batch, and arming checks readiness at once, so connections still queued
after a batch (or after a transient error) fire it immediately: level-triggered, nothing waits
for the next connection to arrive.

A connection is served right in the completion handler: protocol_factory() is called and the
SocketTransport made there (the stock loop goes through a Task per connection to get the same
effect one iteration later).  Both run in a copy, one per connection, of the context that was
current when serving started, as in the stock loop's Task per connection.  A TLS connection's
protocol and transports are made there too, and only its handshake is awaited in a Task
(NetworkMixin._await_tls_handshake).  Made in that Task, they were made after the callbacks
already queued -- among them, often, the wake-up of the client that has just connected: a
server.close() it called found no connection attached to the server, and the transport's
attach then failed (the client read EOF at once; the stock loop's Task, queued by the listening
socket's readiness ahead of that wake-up, attaches first).

Errors follow the stock loop: running out of descriptors or memory (EMFILE, ENFILE, ENOBUFS,
ENOMEM) is reported to the exception handler and accepting pauses for
constants.ACCEPT_RETRY_DELAY seconds; a connection aborted before it was accepted ends the batch
(the poll, armed again, fires at once if more are queued).

_stop_serving cancels the poll and closes the socket.  Nothing is accepted once serving stopped:
connections still queued stay in the kernel for whoever else listens on the socket.

A listening socket its owner closes under the server (sock.close() without server.close()) is
not accepted from again: nothing goes to the kernel by the number it had (see arm, and
accept_queued for a protocol factory that closes it mid-batch).  Unlike with the stock loop's
epoll registration, the poll request in flight holds the socket open in the kernel -- its port
bound, connections still completing their handshake -- until a connection wakes it or
server.close() cancels it.
"""

cimport cython
from cpython.contextvars cimport (PyContext_Copy, PyContext_CopyCurrent, PyContext_Enter,
                                  PyContext_Exit)

from uringloop._sys cimport *
from posix cimport stat as c_stat
from posix.unistd cimport unlink as c_unlink
from uringloop._proactor cimport Proactor, Completer, Operation, OP_IDLE, os_error
from uringloop._ops cimport PollOp, accept_nonblocking
from uringloop._transports cimport SocketTransport

import errno as _errno
import os
import socket as _socket

from asyncio import constants as _constants
from asyncio import trsock as _trsock
from asyncio.log import logger

cdef extern from "<sys/socket.h>" nogil:
    int SOCK_NONBLOCK

cdef object _socket_type = _socket.socket
cdef frozenset _OUT_OF_RESOURCES = frozenset([_errno.EMFILE, _errno.ENFILE, _errno.ENOBUFS,
                                              _errno.ENOMEM])
cdef frozenset _TRANSIENT = frozenset([_errno.ECONNABORTED, _errno.EINTR, _errno.EAGAIN,
                                       _errno.EPROTO, _errno.ENETDOWN, _errno.ENOPROTOOPT,
                                       _errno.EHOSTDOWN, _errno.ENONET, _errno.EHOSTUNREACH,
                                       _errno.EOPNOTSUPP, _errno.ENETUNREACH, _errno.EPERM])


@cython.final
def report_failed_connection(loop, exc, protocol, transport):
    """An accepted connection could not be given a protocol and transport (the factory or the
    transport raised, or the TLS handshake failed): reported in debug mode only, as stock."""
    if loop._debug:
        context = {
            'message': 'Error on transport creation for incoming connection',
            'exception': exc,
        }
        if protocol is not None:
            context['protocol'] = protocol
        if transport is not None:
            context['transport'] = transport
        loop.call_exception_handler(context)


cdef class Acceptor(Completer):
    cdef object loop
    cdef Proactor proactor
    cdef object sock
    cdef int fd
    cdef int family, sock_type, proto
    cdef int backlog
    cdef object protocol_factory
    cdef object sslcontext
    cdef object server
    cdef object ssl_handshake_timeout
    cdef object ssl_shutdown_timeout
    cdef object context
    cdef PollOp poll
    cdef readonly bint serving
    cdef object retry_handle

    def __init__(self, loop, sock, protocol_factory, sslcontext, server, backlog,
                 ssl_handshake_timeout, ssl_shutdown_timeout):
        self.loop = loop
        self.proactor = <Proactor>loop._proactor
        self.sock = sock
        self.fd = sock.fileno()
        self.family = sock.family
        self.sock_type = sock.type
        self.proto = sock.proto
        self.backlog = max(1, backlog)
        self.protocol_factory = protocol_factory
        self.sslcontext = sslcontext
        self.server = server
        self.ssl_handshake_timeout = ssl_handshake_timeout
        self.ssl_shutdown_timeout = ssl_shutdown_timeout
        self.context = PyContext_CopyCurrent()

    def start(self):
        self.serving = True
        self.retry_handle = None
        self.arm()

    def stop(self):
        self.serving = False
        if self.retry_handle is not None:
            self.retry_handle.cancel()
            self.retry_handle = None
        if self.poll is not None:
            self.poll.cancel()

    cdef int arm(self) except -1:
        if not self.serving or self.proactor.closing or self.retry_handle is not None:
            return 0
        if self.sock.fileno() != self.fd:
            # The listening socket was closed under the server (sock.close() without
            # server.close()): its number may be another socket's by now, whose connections a
            # poll and accept4 by number would take (see _proactor: closed under a request).  It
            # stops accepting, as the stock loop's reader goes with the closed descriptor.
            self.serving = False
            return 0
        if self.poll is None:
            self.poll = PollOp(self.proactor, self, self.fd, self.sock)
            self.poll.events = POLLIN
        elif self.poll.state != OP_IDLE:
            return 0          # still armed (or being cancelled)
        self.poll.keep = self.sock
        self.poll.submit()
        return 0

    cdef int op_done(self, Operation op, int res, unsigned flags) except -1:
        if not self.serving or self.proactor.closing:
            # Stopped: whatever is queued stays for the socket's other owners.  The poll,
            # ended, is let go of (start() makes another): it refers back to us, and that
            # cycle would hold the server and its loop for the cyclic collector.
            if op is self.poll and op.state == OP_IDLE:
                self.poll = None
            return 0
        try:
            if res >= 0 and self.sock.fileno() != self.fd:
                self.serving = False        # closed under the server (see arm)
            elif res >= 0:
                PyContext_Enter(self.context)
                try:
                    self.accept_queued()
                finally:
                    PyContext_Exit(self.context)
            elif res != -ECANCELED:
                self.report_error(-res)
        finally:
            # Also when KeyboardInterrupt or SystemExit from a protocol factory leaves the loop
            # through here: the stock loop's accept reader stays registered through them, and
            # a loop run again goes on accepting.
            self.arm()
        return 0

    cdef int accept_queued(self) except -1:
        """Accept up to `backlog` connections (the stock loop's batch), serving each at once."""
        cdef int i, err
        for i in range(self.backlog):
            accepted = accept_nonblocking(self.fd, self.family, &err)
            if accepted is None:
                if err != EAGAIN and err not in _TRANSIENT:
                    self.report_error(err)
                # EAGAIN: the queue is empty.  A transient error (a connection reset before it
                # was accepted...) ends the batch as in the stock loop; the poll, armed again,
                # fires at once if more connections are queued.
                return 0
            fd, address = accepted
            # Each connection gets a copy of the serving context of its own, as each gets a
            # Task on the stock loop: what its protocol_factory() or callbacks set in a context
            # variable (a request id...) must not be seen by the next connection.
            connection_context = PyContext_Copy(self.context)
            PyContext_Enter(connection_context)
            try:
                self.new_connection(fd, address)
            finally:
                PyContext_Exit(connection_context)
            if not self.serving:
                return 0      # the protocol factory closed the server
            if self.sock.fileno() != self.fd:
                self.serving = False    # ... or the listening socket itself (see arm)
                return 0
        return 0

    cdef int report_error(self, int err) except -1:
        exc = os_error(err)
        if err in _OUT_OF_RESOURCES:
            # Linux keeps reporting the socket readable; retry after a pause (as stock).
            message = 'socket.accept() out of system resource'
        else:
            # The stock loop lets accept() raise into the exception handler and keeps the
            # reader registered; do the same without spinning on a persistent error.
            message = 'Error accepting a connection'
        self.loop.call_exception_handler({
            'message': message,
            'exception': exc,
            'socket': _trsock.TransportSocket(self.sock),
        })
        if self.serving and self.retry_handle is None:
            self.retry_handle = self.loop.call_later(_constants.ACCEPT_RETRY_DELAY, self._retry)
        return 0

    def _retry(self):
        self.retry_handle = None
        self.arm()

    cdef int new_connection(self, int fd, object addr) except -1:
        cdef object loop = self.loop
        cdef object protocol = None
        cdef object transport = None
        cdef SocketTransport made
        try:
            conn = _socket_type(self.family, self.sock_type | SOCK_NONBLOCK, self.proto, fd)
        except BaseException:
            os.close(fd)
            raise
        if loop._debug:
            logger.debug("%r got a new connection from %r: %r", self.server, addr, conn)
        try:
            protocol = self.protocol_factory()
            if self.sslcontext:
                waiter = loop.create_future()
                transport = loop._make_ssl_transport(
                    conn, protocol, self.sslcontext, waiter=waiter, server_side=True,
                    extra={'peername': addr} if addr is not None else None,
                    server=self.server, ssl_handshake_timeout=self.ssl_handshake_timeout,
                    ssl_shutdown_timeout=self.ssl_shutdown_timeout)
                loop.create_task(loop._await_tls_handshake(waiter, transport, protocol))
                return 0
            made = SocketTransport.__new__(SocketTransport)
            made.setup(loop, conn, protocol, None, None, addr, self.server)
            transport = made
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            if transport is None:
                conn.close()
            report_failed_connection(loop, exc, protocol, transport)
        return 0


# ---- the socket file of a unix server ----
#
# create_unix_server() replaces a socket file a previous server left at its path, and a server
# made with cleanup_socket (Python 3.13) removes its own file when it closes, unless another has
# taken the path since: a stat and an unlink each, made synchronously by the stock loop too, in
# asyncio/unix_events.py.  Tools that find blocking calls in a running loop by patching the os
# module (blockbuster, which aiohttp's and anyio's test suites run under) allow these calls there
# by asyncio's file and function names, and nowhere else -- os.stat() called from our network.py
# raised blockbuster's BlockingError in programs that pass on the stock loop and on uvloop.  So
# they are made here, as system calls, with os.stat()'s and os.unlink()'s results and errors.

cdef bytes _file_system_path(object path):
    """`path` (str or bytes, as os.fspath() gave it) as the bytes os.stat() passes to stat(2)."""
    cdef bytes encoded = os.fsencode(path)
    if b'\0' in encoded:
        os.stat(path)       # os.stat()'s own ValueError for an embedded null byte
    return encoded


def file_mode_and_inode(path):
    """(st_mode, st_ino) of os.stat(path), or the OSError it raises (FileNotFoundError...)."""
    cdef bytes encoded = _file_system_path(path)
    cdef const char *c_path = encoded
    cdef c_stat.struct_stat st
    cdef int rc, err = 0
    with nogil:
        rc = c_stat.stat(c_path, &st)
        if rc != 0:
            err = errno
    if rc != 0:
        raise OSError(err, os.strerror(err), path)     # the subclass by errno, as os.stat()
    return st.st_mode, st.st_ino


def remove_file(path):
    """os.unlink(path): None, or the OSError it raises."""
    cdef bytes encoded = _file_system_path(path)
    cdef const char *c_path = encoded
    cdef int rc, err = 0
    with nogil:
        rc = c_unlink(c_path)
        if rc != 0:
            err = errno
    if rc != 0:
        raise OSError(err, os.strerror(err), path)
