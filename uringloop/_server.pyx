# cython: language_level=3
"""Listening sockets of asyncio servers on completions.

loop._start_serving(...) gives the listening socket one Acceptor.  Where the kernel has multishot
accept, ONE accept request stays armed for the life of the server and every completion is a
new connection's descriptor (already SOCK_NONBLOCK|SOCK_CLOEXEC, so building the socket object
costs no system call); elsewhere a single-shot accept is re-submitted after each connection.

A connection is served right in the completion handler: protocol_factory() is called and the
SocketTransport made there (the stock loop goes through a Task per connection to get the same
effect one iteration later).  Both run in the context that was current when serving started, as
the stock loop's accept handler does.  TLS connections still go through a Task
(NetworkMixin._accept_tls_connection), because the handshake has to be awaited.

Errors follow the stock loop: running out of descriptors or memory (EMFILE, ENFILE, ENOBUFS,
ENOMEM) is reported to the exception handler and accepting pauses for
constants.ACCEPT_RETRY_DELAY seconds; a connection aborted before it was accepted is ignored.

_stop_serving cancels the accept request and closes the socket.  A connection the kernel
accepted before the cancellation landed is closed, not served.
"""

cimport cython
from cpython.contextvars cimport PyContext_CopyCurrent, PyContext_Enter, PyContext_Exit

from uringloop._sys cimport *
from uringloop._ops cimport Proactor, Completer, Operation, AcceptOp, OP_IDLE
from uringloop._transports cimport SocketTransport

import errno as _errno
import os
import socket as _socket

from asyncio import constants as _constants
from asyncio import trsock as _trsock
from asyncio.log import logger

cdef extern from "<string.h>":
    char *c_strerror "strerror"(int errnum)

cdef object _socket_type = _socket.socket
cdef int _SOCK_NONBLOCK = _socket.SOCK_NONBLOCK
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
    cdef object protocol_factory
    cdef object sslcontext
    cdef object server
    cdef object ssl_handshake_timeout
    cdef object ssl_shutdown_timeout
    cdef object context
    cdef AcceptOp op
    cdef bint multishot
    cdef readonly bint serving
    cdef object retry_handle

    def __init__(self, loop, sock, protocol_factory, sslcontext, server,
                 ssl_handshake_timeout, ssl_shutdown_timeout):
        self.loop = loop
        self.proactor = <Proactor>loop._proactor
        self.sock = sock
        self.fd = sock.fileno()
        self.family = sock.family
        self.sock_type = sock.type
        self.proto = sock.proto
        self.protocol_factory = protocol_factory
        self.sslcontext = sslcontext
        self.server = server
        self.ssl_handshake_timeout = ssl_handshake_timeout
        self.ssl_shutdown_timeout = ssl_shutdown_timeout
        self.context = PyContext_CopyCurrent()
        self.multishot = bool(loop._features.get('multishot_accept'))

    def start(self):
        self.serving = True
        self.retry_handle = None
        self.arm()

    def stop(self):
        self.serving = False
        if self.retry_handle is not None:
            self.retry_handle.cancel()
            self.retry_handle = None
        if self.op is not None:
            self.op.cancel()

    cdef int arm(self) except -1:
        if not self.serving or self.proactor.closing:
            return 0
        if self.op is None:
            self.op = AcceptOp(self.proactor, self, self.fd, self.sock)
            self.op.multishot = self.multishot
        elif self.op.state != OP_IDLE:
            return 0          # still armed (or being cancelled)
        self.op.keep = self.sock
        self.op.submit()
        return 0

    cdef int op_done(self, Operation op, int res, unsigned flags) except -1:
        cdef bint final = not (flags & IORING_CQE_F_MORE)
        cdef int err
        if res >= 0:
            if not self.serving or self.proactor.closing:
                os.close(res)     # accepted as the server stopped: refuse it
            else:
                PyContext_Enter(self.context)
                try:
                    self.new_connection(res, None if self.multishot
                                        else (<AcceptOp>op).address(self.family))
                finally:
                    PyContext_Exit(self.context)
        elif res != -ECANCELED and self.serving:
            err = -res
            if err in _OUT_OF_RESOURCES:
                # Linux keeps reporting the socket readable; retry after a pause (as stock).
                self.loop.call_exception_handler({
                    'message': 'socket.accept() out of system resource',
                    'exception': OSError(err, c_strerror(err).decode('utf-8', 'replace')),
                    'socket': _trsock.TransportSocket(self.sock),
                })
                if final:
                    self.retry_later()
                return 0
            if err not in _TRANSIENT:
                # The stock loop lets accept() raise into the exception handler and keeps the
                # reader registered; do the same without spinning on a persistent error.
                self.loop.call_exception_handler({
                    'message': 'Error accepting a connection',
                    'exception': OSError(err, c_strerror(err).decode('utf-8', 'replace')),
                    'socket': _trsock.TransportSocket(self.sock),
                })
                if final:
                    self.retry_later()
                return 0
        if final:
            self.arm()
        return 0

    cdef int retry_later(self) except -1:
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
            conn = _socket_type(self.family, self.sock_type | _SOCK_NONBLOCK, self.proto, fd)
        except BaseException:
            os.close(fd)
            raise
        if loop._debug:
            logger.debug("%r got a new connection from %r: %r", self.server, addr, conn)
        if self.sslcontext:
            extra = {'peername': addr} if addr is not None else None
            loop.create_task(loop._accept_tls_connection(
                self.protocol_factory, conn, extra, self.sslcontext, self.server,
                self.ssl_handshake_timeout, self.ssl_shutdown_timeout))
            return 0
        try:
            protocol = self.protocol_factory()
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
