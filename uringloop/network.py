"""The loop's stream networking API on the Proactor: transports for TCP and UNIX sockets, servers,
TLS, sendfile.

BaseEventLoop implements create_connection, create_server, open_connection/start_server,
connect_accepted_socket, start_tls and sendfile on top of a few hooks; NetworkMixin supplies the
hooks with completion-based machinery:

  _make_socket_transport   the compiled SocketTransport (_transports.pyx)
  _make_ssl_transport      TLS over a SocketTransport, layered as the stock loop layers it:
                           the compiled SSLProtocol (_sslproto.pyx) on 3.11+, asyncio's own
                           on 3.10; start_tls() is overridden to use the same class
  _start_serving           a compiled Acceptor per listening socket (_server.pyx): a poll on
  _stop_serving            the ring, accept4 and the new transport in its completion handler

create_connection() itself is overridden only to take a shorter path to an IPv4 literal with
default options (the same steps as BaseEventLoop's; see the comment above its defaults); and
NetworkMixin adds the UNIX-socket half of the stream API that BaseEventLoop leaves to its subclasses
(create_unix_connection, create_unix_server: asyncio.open_unix_connection/start_unix_server),
with unix_events' semantics: a stale socket file is replaced at bind, abstract names are left
alone, and on Python 3.13 the socket file is removed when the server closes (cleanup_socket).
"""

from __future__ import annotations

import _socket
import errno
import inspect
import os
import socket
import stat
import sys

import io
import warnings
from concurrent.futures import ThreadPoolExecutor

try:
    import ssl
except ImportError:  # pragma: no cover -- a Python built without OpenSSL
    ssl = None

from asyncio import base_events, constants, exceptions, protocols, sslproto, tasks
from asyncio.log import logger

from uringloop._server import (Acceptor, file_mode_and_inode, remove_file,
                               report_failed_connection)
from uringloop._sockio import end_send_turn, is_ipv4_literal, stock_method, take_send_turn
from uringloop._transports import SocketTransport

# SSLProtocol (and the loop hooks around it) grew ssl_shutdown_timeout in 3.11.
_HAS_SSL_SHUTDOWN_TIMEOUT = sys.version_info >= (3, 11)
# From 3.12 a stream transport is refused a socket whose descriptor a live transport already
# has (selector_events' _make_socket_transport / _make_ssl_transport: RuntimeError); 3.10 and
# 3.11 make the second transport.
_REFUSES_FD_IN_USE = sys.version_info >= (3, 12)
# create_unix_server(cleanup_socket=True) and the unlink at close arrived in 3.13.
_HAS_CLEANUP_SOCKET = sys.version_info >= (3, 13)
# sock_sendfile()'s count: from 3.13 any size (each os.sendfile() asks for at most
# sys.maxsize // 2 + 1 bytes); before, one past what a ssize_t holds raises OverflowError.
_SENDFILE_COUNT_UNBOUNDED = sys.version_info >= (3, 13)
_LARGEST_COUNT = (1 << 63) - 1          # what the splicer's long long holds
# set_default_executor() of an executor other than a ThreadPoolExecutor: 3.10 warns, 3.11 refuses.
_WARNS_OF_OTHER_EXECUTORS = sys.version_info < (3, 11)
# The TLS layer: the compiled one reproduces 3.11+'s SSLProtocol; 3.10's is an older design
# (see _sslproto.pyx), kept stock there -- and the compiled module, which reads 3.11's sslproto
# at import, is not imported at all.
_COMPILED_TLS = sys.version_info >= (3, 11)
_tls_protocol_class = None if _COMPILED_TLS else sslproto.SSLProtocol


def _tls_protocol():
    """The TLS protocol class, its compiled module imported by the first TLS connection: a
    server that never speaks TLS does not keep it resident (~0.2 MiB of RSS, as the lazily
    imported modules of unix.py)."""
    global _tls_protocol_class
    if _tls_protocol_class is None:
        from uringloop._sslproto import SSLProtocol
        _tls_protocol_class = SSLProtocol
    return _tls_protocol_class


# What getaddrinfo() compares against to know that nobody replaced the resolver (a mock in a test,
# an instrumented wrapper): then the lookup goes where the replacement is seen.
_STOCK_GETADDRINFO = socket.getaddrinfo
_STOCK_C_GETADDRINFO = _socket.getaddrinfo


def _is_abstract(path) -> bool:
    """An abstract-namespace AF_UNIX name (leading NUL byte): no file in the filesystem."""
    if not path:
        # The stock loop reads path[0] here, so an empty name is an IndexError there, raised
        # before anything is bound: for create_unix_server('') (bind() would give the socket
        # an automatic abstract name, a server nobody could name) and, on 3.13, for a sock=
        # that is not bound yet.  The same type here, with words that say what is wrong.
        raise IndexError(f'an empty AF_UNIX address ({path!r}) names no socket file')
    return path[0] in (0, '\x00')


def _ssl_shutdown_kwargs(method, ssl_shutdown_timeout) -> dict:
    if _HAS_SSL_SHUTDOWN_TIMEOUT:
        return {'ssl_shutdown_timeout': ssl_shutdown_timeout}
    if ssl_shutdown_timeout is not None:
        raise TypeError(f"{method}() got an unexpected keyword argument 'ssl_shutdown_timeout'")
    return {}


# create_connection() to an IPv4 address given as a literal, with nothing else asked for (no TLS,
# local address, happy eyeballs or interleaving, no family/proto/flags): what BaseEventLoop does
# there is one fixed path -- _ensure_resolved() answers [(AF_INET, SOCK_STREAM, IPPROTO_TCP, '',
# (host, port))] at once (_ipaddr_info), and _connect_sock() makes that socket, sets it
# non-blocking and awaits sock_connect(), closing the socket on any failure, whose exception
# create_connection() raises as it is (the only one of its list).  The fast path below takes the
# same steps, in the same order, with the same calls to the loop's own methods (sock_connect,
# _create_connection_transport -- replaced ones are called), without the two coroutines, the
# resolution and the list around them: 45-55 against 53-61 us per connect here (alternating
# runs against a uvloop server; uvloop's own create_connection 31-38 us, the stock loop's
# 91-121).  A replaced _ensure_resolved or _connect_sock, a patched base_events.socket or
# _ipaddr_info, debug mode (it logs the connection), or any argument but the defaults takes
# BaseEventLoop's path.
_STOCK_CONNECTION_PARAMETERS = inspect.signature(
    base_events.BaseEventLoop.create_connection).parameters
# The keyword arguments whose default this version's create_connection() has, by kind of default
# (ssl=False and all_errors=0 are read as the defaults are: as false).
_NONE_DEFAULTS = frozenset(
    ['sock', 'local_addr', 'server_hostname', 'ssl_handshake_timeout', 'ssl_shutdown_timeout',
     'happy_eyeballs_delay', 'interleave']).intersection(_STOCK_CONNECTION_PARAMETERS)
_ZERO_DEFAULTS = frozenset(['family', 'proto', 'flags']).intersection(
    _STOCK_CONNECTION_PARAMETERS)
_FALSE_DEFAULTS = frozenset(['ssl', 'all_errors']).intersection(_STOCK_CONNECTION_PARAMETERS)
_BASE_ENSURE_RESOLVED = base_events.BaseEventLoop._ensure_resolved
_BASE_RUN_IN_EXECUTOR = base_events.BaseEventLoop.run_in_executor
_BASE_CONNECT_SOCK = base_events.BaseEventLoop._connect_sock
_BASE_SOCKET_MODULE = base_events.socket
_BASE_IPADDR_INFO = base_events._ipaddr_info


def _defaults_only(kwargs) -> bool:
    """Every keyword argument of a create_connection() call has its default value."""
    for name, value in kwargs.items():
        if name in _NONE_DEFAULTS:
            if value is not None:
                return False
        elif name in _ZERO_DEFAULTS:
            if not isinstance(value, int) or value != 0:
                return False
        elif name in _FALSE_DEFAULTS:
            if value is not False and value is not None and value != 0:
                return False
        else:
            return False          # unknown: BaseEventLoop's TypeError
    return True


class _FallbackProtocol(protocols.Protocol):
    """The transport's protocol while loop.sendfile() falls back to reading and writing on a
    SocketTransport.

    The stock fallback installs a stand-in protocol of its own for the transfer, so that the
    pause_writing()/resume_writing() its writes cause pace the transfer and never reach the
    application's protocol, and installs the application's again at the end.  Its class
    (base_events._SendfileFallbackProtocol) accepts only a transports._FlowControlMixin, which
    an extension type cannot be; and it expects resume_writing() to go to the current
    protocol, while ours goes to the protocol that was paused (_flow.pyx) -- to this one even
    after the application's is back, when the transfer ended (or was cancelled) with the buffer
    over its high-water mark.  So this class plays the stand-in, and once restored ignores that
    late resume_writing().  (The stock loop hands it to the application's protocol, which was
    never paused: asyncio's streams then fail an assertion in resume_writing().)

    No protocol is paused when the fallback starts: the native attempt before it has waited
    for the write buffer to empty (_sendfile_native), so every pause from here on is ours."""

    def __init__(self, transp):
        self._transport = transp
        self._protocol = transp.get_protocol()
        self._resume_reading = transp.is_reading()
        self._ready = None             # while writing is paused: resolved by resume_writing()
        transp.pause_reading()
        transp.set_protocol(self)

    async def drain(self):
        if self._transport.is_closing():
            raise ConnectionError("Connection closed by peer")
        if self._ready is not None:
            await self._ready

    def pause_writing(self):
        if self._ready is None:
            self._ready = self._transport._loop.create_future()

    def resume_writing(self):
        ready, self._ready = self._ready, None
        if ready is not None and not ready.done():
            ready.set_result(None)

    def connection_made(self, transport):
        raise RuntimeError("Invalid state: connection should have been established already.")

    def connection_lost(self, exc):
        # A transfer waiting for resume_writing() fails with the connection's error; the
        # future stays for restore() to retrieve when the transfer was not waiting on it.
        ready = self._ready
        if ready is not None and not ready.done():
            ready.set_exception(ConnectionError("Connection is closed by peer")
                                if exc is None else exc)
        self._protocol.connection_lost(exc)

    # Reading is paused for the transfer: whatever arrives meanwhile waits in the transport for
    # the application's protocol (the transport delivers nothing while paused).
    def data_received(self, data):
        raise RuntimeError("Invalid state: reading should be paused")

    def eof_received(self):
        raise RuntimeError("Invalid state: reading should be paused")

    def restore(self):
        transp = self._transport
        # Also after connection_lost(), as stock: get_protocol() names the application's.
        transp.set_protocol(self._protocol)
        if self._resume_reading and transp._sock is not None:
            transp.resume_reading()
        ready, self._ready = self._ready, None
        if ready is not None:
            # Awaited only by the transfer, which is over.  The error connection_lost() set on it
            # while the transfer was reading the file is retrieved here: the transfer has raised
            # ConnectionError itself (drain()), and asyncio would log the future's as lost.
            if ready.done():
                if not ready.cancelled():
                    ready.exception()
            else:
                ready.cancel()


class NetworkMixin:
    """Mixed into uringloop.Loop: stream transports and servers, and name resolution."""

    # A default executor the user set: lookups run there, as on the stock loop.
    _ul_user_executor = False

    # ---- name resolution ----

    async def getaddrinfo(self, host, port, *, family=0, type=0, proto=0, flags=0):
        # On the resolver's C threads (_resolver: no executor work item, no GIL in the worker,
        # no call_soon_threadsafe), unless the stock way would do something else: debug mode
        # (it logs each lookup and its time), a default executor the user set (lookups ran
        # there), one shut down (run_in_executor raises), run_in_executor replaced (on the
        # instance or in a subclass: it must see the call), socket.getaddrinfo replaced (a mock
        # must see the call), a loop made before a fork in this child, and arguments whose
        # conversion the compiled side leaves to socket.getaddrinfo (Resolver.lookup: None).
        self._check_closed()
        if not (self._debug or self._ul_user_executor or self._executor_shutdown_called
                or socket.getaddrinfo is not _STOCK_GETADDRINFO
                or _socket.getaddrinfo is not _STOCK_C_GETADDRINFO
                or base_events.socket is not socket
                or not stock_method(self, 'run_in_executor', _BASE_RUN_IN_EXECUTOR)):
            resolver = self._proactor.get_resolver()
            if resolver is not None:
                future = resolver.lookup(host, port, family, type, proto, flags)
                if future is not None:
                    try:
                        return await future
                    except exceptions.CancelledError:
                        # As the executor's queue drops a cancelled work item: a lookup not
                        # yet started is skipped (Resolver.cancel).
                        if future.cancelled():
                            resolver.cancel(future)
                        raise
        return await super().getaddrinfo(host, port, family=family, type=type, proto=proto,
                                         flags=flags)

    def set_default_executor(self, executor):
        if _WARNS_OF_OTHER_EXECUTORS and not isinstance(executor, ThreadPoolExecutor):
            # 3.10's own steps, so that its warning names the caller's line (stacklevel 2):
            # through super() it named this file, and the default filters, which show a
            # DeprecationWarning only for __main__'s lines, hid it.
            warnings.warn('Using the default executor that is not an instance of '
                          'ThreadPoolExecutor is deprecated and will be prohibited '
                          'in Python 3.9', DeprecationWarning, 2)
            self._default_executor = executor
        else:
            super().set_default_executor(executor)
        self._ul_user_executor = True

    # ---- connections ----

    async def create_connection(self, protocol_factory, host=None, port=None, **kwargs):
        # The short path for an IPv4 literal: see the comment above _STOCK_CONNECTION_PARAMETERS.
        if (type(port) is not int or not is_ipv4_literal(host) or self._debug
                or (kwargs and not _defaults_only(kwargs))
                or not stock_method(self, '_ensure_resolved', _BASE_ENSURE_RESOLVED)
                or not stock_method(self, '_connect_sock', _BASE_CONNECT_SOCK)
                or base_events.socket is not _BASE_SOCKET_MODULE
                or base_events._ipaddr_info is not _BASE_IPADDR_INFO):
            return await super().create_connection(protocol_factory, host, port, **kwargs)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setblocking(False)
            await self.sock_connect(sock, (host, port))
        except BaseException:
            sock.close()
            raise
        # A socket of the loop's own, handed to no one: its transport's requests need no check
        # against a close by another owner (_ul_loop_socket).  Set here rather than in a helper
        # coroutine: one coroutine fewer per connection.
        self._ul_loop_socket = sock
        try:
            return await self._create_connection_transport(sock, protocol_factory, None, None)
        finally:
            if self._ul_loop_socket is sock:
                self._ul_loop_socket = None

    create_connection.__signature__ = inspect.signature(
        base_events.BaseEventLoop.create_connection)
    create_connection.__doc__ = base_events.BaseEventLoop.create_connection.__doc__

    # The provided-buffer ring every transport's multishot receive draws from; created by the
    # first transport (False when the kernel cannot do multishot receives).
    _ul_recv_ring = None
    # Idle SendOps the stream transports borrow one of per send (_sendside.spare_send_ops).
    _ul_spare_send_ops = None
    # Listening socket fd -> its Acceptor, while serving.
    _ul_acceptors = None
    # A socket this loop made and hands to no one, while its transport is being made: the
    # transport's requests need no check against a close by the socket's owner
    # (SocketTransport.setup takes it; _create_connection_transport() makes the transport
    # before its first await).
    _ul_loop_socket = None
    # UNIX server socket -> inode of its socket file, removed when the server closes (3.13).
    _ul_unix_server_sockets = None

    # ---- transports ----

    def _make_socket_transport(self, sock, protocol, waiter=None, *, extra=None, server=None):
        if _REFUSES_FD_IN_USE:
            self._ensure_fd_no_transport(sock)
        return SocketTransport(self, sock, protocol, waiter, extra, server)

    def _make_ssl_transport(self, rawsock, protocol, sslcontext, waiter=None, *,
                            server_side=False, server_hostname=None, extra=None, server=None,
                            ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
                            ssl_shutdown_timeout=None):
        # The TLS protocol (a BufferedProtocol from 3.11 on: the kernel receives straight into
        # its buffer) over our socket transport, exactly the layering of the stock loop; the
        # application sees the TLS protocol's app transport.
        if _REFUSES_FD_IN_USE:
            self._ensure_fd_no_transport(rawsock)
        kwargs = {'ssl_handshake_timeout': ssl_handshake_timeout}
        if _HAS_SSL_SHUTDOWN_TIMEOUT:
            kwargs['ssl_shutdown_timeout'] = ssl_shutdown_timeout
        ssl_protocol = _tls_protocol()(self, protocol, sslcontext, waiter, server_side,
                                       server_hostname, **kwargs)
        SocketTransport(self, rawsock, ssl_protocol, None, extra, server)
        return ssl_protocol._app_transport

    if _COMPILED_TLS:
        async def start_tls(self, transport, protocol, sslcontext, *, server_side=False,
                            server_hostname=None, ssl_handshake_timeout=None,
                            ssl_shutdown_timeout=None):
            """Upgrade transport to TLS; return the new transport protocol must use from now.

            BaseEventLoop.start_tls() builds asyncio's SSLProtocol itself, so this is its
            sequence with our TLS protocol in its place: the same checks, the upgrade made
            from the next iteration, and the transport closed if the handshake fails."""
            if ssl is None:
                raise RuntimeError('Python ssl module is not available')
            if not isinstance(sslcontext, ssl.SSLContext):
                raise TypeError(f'sslcontext is expected to be an instance of ssl.SSLContext, '
                                f'got {sslcontext!r}')
            if not getattr(transport, '_start_tls_compatible', False):
                raise TypeError(f'transport {transport!r} is not supported by start_tls()')
            waiter = self.create_future()
            tls = _tls_protocol()(self, protocol, sslcontext, waiter, server_side,
                                  server_hostname, ssl_handshake_timeout=ssl_handshake_timeout,
                                  ssl_shutdown_timeout=ssl_shutdown_timeout,
                                  call_connection_made=False)
            # Reading is paused before the switch so that no bytes reach the TLS protocol
            # ahead of its connection_made() (which starts the handshake).
            transport.pause_reading()
            transport.set_protocol(tls)
            made = self.call_soon(tls.connection_made, transport)
            resumed = self.call_soon(transport.resume_reading)
            try:
                await waiter
            except BaseException:
                transport.close()
                made.cancel()
                resumed.cancel()
                raise
            return tls._app_transport

    # ---- servers ----

    def _start_serving(self, protocol_factory, sock, sslcontext=None, server=None, backlog=100,
                       ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
                       ssl_shutdown_timeout=None):
        self._check_closed()      # as stock (its add_reader checks): no server that never serves
        # Keyed by the socket object, not its number: a socket closed under its server has no
        # number any more, and server.close() must still find (and cancel) its Acceptor, whose
        # poll request holds the listening socket open in the kernel until it ends.
        acceptors = self._ul_acceptors
        if acceptors is None:
            acceptors = self._ul_acceptors = {}
        previous = acceptors.get(sock)
        if previous is not None:
            previous.stop()
        acceptor = Acceptor(self, sock, protocol_factory, sslcontext, server, backlog,
                            ssl_handshake_timeout, ssl_shutdown_timeout)
        acceptors[sock] = acceptor
        acceptor.start()

    def _stop_serving(self, sock):
        unix_sockets = self._ul_unix_server_sockets
        cleanup = unix_sockets.pop(sock, None) if unix_sockets else None
        path = sock.getsockname() if cleanup is not None else None
        acceptors = self._ul_acceptors
        if acceptors:
            acceptor = acceptors.pop(sock, None)
            if acceptor is not None:
                # Cancel first; the poll request holds its own reference to the socket's
                # file until its final completion, so closing the descriptor now is safe.
                acceptor.stop()
        sock.close()
        if path is not None:
            # Remove the socket file -- unless someone else has bound a new one there since.
            try:
                # (stat and unlink in C: _server's "the socket file of a unix server")
                if file_mode_and_inode(path)[1] == cleanup:
                    remove_file(path)
            except FileNotFoundError:
                pass
            except OSError as err:
                logger.error('Unable to clean up listening UNIX socket %r: %r', path, err)

    async def _await_tls_handshake(self, waiter, transport, protocol):
        # An accepted TLS connection is established only when its handshake completes; the
        # stock loop awaits that in a task per connection, and so do we (its protocol and
        # transports are made in the accept's completion: _server's Acceptor.new_connection).
        try:
            try:
                await waiter
            except BaseException:
                transport.close()
                # An exception stored in the waiter would keep the protocol alive in a cycle.
                waiter = None
                raise
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            report_failed_connection(self, exc, protocol, transport)

    # ---- sendfile ----

    async def _sock_sendfile_native(self, sock, file, offset, count):
        # BaseEventLoop.sock_sendfile has checked the arguments; it falls back to read+send
        # when this raises SendfileNotAvailableError.
        try:
            fileno = file.fileno()
        except (AttributeError, io.UnsupportedOperation):
            raise exceptions.SendfileNotAvailableError("not a regular file") from None
        try:
            st = os.fstat(fileno)
        except OSError:
            raise exceptions.SendfileNotAvailableError("not a regular file") from None
        if not (count or st.st_size):
            # Nothing to send by the file's size: the stock loop's answer, without a system
            # call -- also for a pipe or a device, whose size is 0, with no count given.
            return 0
        # Any other kind of file is tried, as the stock loop tries os.sendfile() on it: a
        # device the kernel can splice from (/dev/zero, /dev/urandom) is sent natively; a pipe,
        # a socket or a terminal refuses a splice at an offset (ESPIPE) before a byte has
        # moved, which SpliceSender turns into SendfileNotAvailableError -- the fallback's cue.
        if sock.fileno() < 0:
            # Closed before the call.  The stock loop's os.sendfile() fails on it (EBADF)
            # before a byte is sent, which makes it SendfileNotAvailableError too -- so
            # fallback=True goes on to read and send, and fails there as sock_sendall() does.
            raise exceptions.SendfileNotAvailableError(
                "os.sendfile call failed") from OSError(errno.EBADF, "the socket is closed")
        self._ensure_fd_no_transport(sock.fileno())   # (its number, as stock says it)
        if sock.fileno() in self._ul_sendfile_transports:
            # A transport's loop.sendfile(): the transport refuses writes meanwhile.
            return await self._splice_file(sock, fileno, offset, count)
        # The socket's sends wait for this one and it for them (SocketState.end_send_turn).
        turn, turn_came = take_send_turn(self, sock)
        try:
            await turn_came
            return await self._splice_file(sock, fileno, offset, count)
        finally:
            end_send_turn(turn)

    async def _splice_file(self, sock, file_fd, offset, count):
        from uringloop._sendfile import SpliceSender     # imported when first used (see unix.py)
        if _SENDFILE_COUNT_UNBOUNDED and count and count > _LARGEST_COUNT:
            count = _LARGEST_COUNT      # no file holds more
        try:
            sender = SpliceSender(self, sock, file_fd, offset, count or 0)
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            # The splices need a pipe and duplicates of both descriptors (see _sendfile.pyx),
            # which os.sendfile() does not: out of descriptors, the stock loop's sendfile still
            # works, so this is the fallback's cue (fallback=True reads and sends).
            raise exceptions.SendfileNotAvailableError("os.sendfile call failed") from exc
        # loop.sendfile() on a transport: the transport's close ends the transfer (see
        # _sendfile_native).
        transp = self._ul_sendfile_transports.get(sock.fileno())
        if transp is not None:
            transp._sendfile_sender = sender
        sender.start()
        try:
            return await sender.future
        except BaseException:
            # Cancelled, or ended by the transport's close: the splice in the kernel may still
            # be moving bytes.  The caller resumes once it is over (see _sendfile.pyx) -- also
            # if cancelled again meanwhile (the first exception is what it then gets).
            while not sender.finished.done():
                try:
                    await tasks.shield(sender.finished)
                except exceptions.CancelledError:
                    pass
            raise

    async def _sendfile_native(self, transp, file, offset, count):
        if not isinstance(transp, SocketTransport):
            raise exceptions.SendfileNotAvailableError(
                f"native sendfile is not supported for transport {transp!r}")
        # As stock: the socket leaves the transport for the duration -- reading paused, the
        # write buffer drained, write() refused -- and is handed to sock_sendfile (which
        # also validates the arguments), without fallback.
        # The splices write to a duplicate of the socket's descriptor (they must not touch a
        # reused number, see _sendfile.pyx), so closing the transport alone would leave the
        # connection open and the file still streaming into it; the transport is told which
        # transfer is its own and aborts it as it closes -- the caller gets ConnectionError.
        fd = transp._sock_fd
        self._transports.pop(fd, None)
        resume_reading = transp.is_reading()
        transp.pause_reading()
        try:
            await transp._make_empty_waiter()
        except BaseException:
            # Cancelled while the queued writes drained: the transport is given back as it
            # was.  (The stock loop awaits this outside its try/finally: a cancel here leaves
            # its transport refusing write() for good, reading paused, and later an
            # InvalidStateError from the drained buffer's cancelled waiter.)
            transp._reset_empty_waiter()
            if transp._sock is not None:
                self._transports[fd] = transp
                if resume_reading:
                    transp.resume_reading()
            raise
        self._ul_sendfile_transports[fd] = transp
        try:
            return await self.sock_sendfile(transp._sock, file, offset, count, fallback=False)
        finally:
            del self._ul_sendfile_transports[fd]
            transp._sendfile_sender = None
            transp._reset_empty_waiter()
            if transp._sock is not None:          # connection_lost has not run
                self._transports[fd] = transp
                if resume_reading:
                    transp.resume_reading()

    async def _sendfile_fallback(self, transp, file, offset, count):
        if not isinstance(transp, SocketTransport):
            return await super()._sendfile_fallback(transp, file, offset, count)
        # The stock fallback, with our own stand-in protocol (_FallbackProtocol) for the
        # duration: read the file in the executor, write, and wait for resume_writing() whenever
        # the writes paused the stand-in.
        if offset:
            file.seek(offset)
        blocksize = min(count, 16384) if count else 16384
        buf = bytearray(blocksize)
        total_sent = 0
        proto = _FallbackProtocol(transp)
        try:
            while True:
                if count:
                    blocksize = min(count - total_sent, blocksize)
                    if blocksize <= 0:
                        return total_sent
                view = memoryview(buf)[:blocksize]
                read = await self.run_in_executor(None, file.readinto, view)
                if not read:
                    return total_sent
                await proto.drain()
                transp.write(view[:read])          # copied: buf is reused for the next read
                total_sent += read
        finally:
            if total_sent > 0 and hasattr(file, 'seek'):
                file.seek(offset + total_sent)
            proto.restore()

    # ---- UNIX stream sockets ----

    async def create_unix_connection(self, protocol_factory, path=None, *, ssl=None, sock=None,
                                     server_hostname=None, ssl_handshake_timeout=None,
                                     ssl_shutdown_timeout=None):
        tls_kwargs = _ssl_shutdown_kwargs('create_unix_connection', ssl_shutdown_timeout)
        assert server_hostname is None or isinstance(server_hostname, str)
        if ssl:
            if server_hostname is None:
                raise ValueError('you have to pass server_hostname when using ssl')
        else:
            if server_hostname is not None:
                raise ValueError('server_hostname is only meaningful with ssl')
            if ssl_handshake_timeout is not None:
                raise ValueError('ssl_handshake_timeout is only meaningful with ssl')
            if ssl_shutdown_timeout is not None:
                raise ValueError('ssl_shutdown_timeout is only meaningful with ssl')
        if path is not None:
            if sock is not None:
                raise ValueError('path and sock can not be specified at the same time')
            path = os.fspath(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0)
            try:
                sock.setblocking(False)
                await self.sock_connect(sock, path)
            except BaseException:
                sock.close()
                raise
        else:
            if sock is None:
                raise ValueError('no path and sock were specified')
            if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
                raise ValueError(f'A UNIX Domain Stream Socket was expected, got {sock!r}')
            sock.setblocking(False)
        if path is not None:
            self._ul_loop_socket = sock       # (as in create_connection)
        try:
            return await self._create_connection_transport(
                sock, protocol_factory, ssl, server_hostname,
                ssl_handshake_timeout=ssl_handshake_timeout, **tls_kwargs)
        finally:
            if self._ul_loop_socket is sock:
                self._ul_loop_socket = None

    async def _create_unix_server(self, protocol_factory, path, sock, backlog, ssl,
                                  ssl_handshake_timeout, ssl_shutdown_timeout, start_serving,
                                  cleanup_socket):
        tls_kwargs = _ssl_shutdown_kwargs('create_unix_server', ssl_shutdown_timeout)
        if isinstance(ssl, bool):
            raise TypeError('ssl argument must be an SSLContext or None')
        if ssl_handshake_timeout is not None and not ssl:
            raise ValueError('ssl_handshake_timeout is only meaningful with ssl')
        if ssl_shutdown_timeout is not None and not ssl:
            raise ValueError('ssl_shutdown_timeout is only meaningful with ssl')
        if path is not None:
            if sock is not None:
                raise ValueError('path and sock can not be specified at the same time')
            path = os.fspath(path)
            abstract = _is_abstract(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            if not abstract:
                # A socket file left by a previous server is replaced; anything else at that
                # path makes bind() fail below.
                try:
                    if stat.S_ISSOCK(file_mode_and_inode(path)[0]):
                        remove_file(path)
                except FileNotFoundError:
                    pass
                except OSError as err:
                    # The directory may allow creating the socket but not inspecting it.
                    logger.error('Unable to check or remove stale UNIX socket %r: %r',
                                 path, err)
            try:
                sock.bind(path)
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRINUSE:
                    raise OSError(errno.EADDRINUSE,
                                  f'Address {path!r} is already in use') from None
                raise
            except BaseException:
                sock.close()
                raise
        else:
            if sock is None:
                raise ValueError('path was not specified, and no sock specified')
            if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
                raise ValueError(f'A UNIX Domain Stream Socket was expected, got {sock!r}')
        if cleanup_socket:
            bound = sock.getsockname()
            if not _is_abstract(bound):
                try:
                    inode = file_mode_and_inode(bound)[1]
                except FileNotFoundError:
                    pass
                else:
                    if self._ul_unix_server_sockets is None:
                        self._ul_unix_server_sockets = {}
                    self._ul_unix_server_sockets[sock] = inode
        sock.setblocking(False)
        server = base_events.Server(self, [sock], protocol_factory, ssl, backlog,
                                    ssl_handshake_timeout, **tls_kwargs)
        if start_serving:
            server._start_serving()
            await tasks.sleep(0)
        return server

    if _HAS_CLEANUP_SOCKET:
        async def create_unix_server(self, protocol_factory, path=None, *, sock=None,
                                     backlog=100, ssl=None, ssl_handshake_timeout=None,
                                     ssl_shutdown_timeout=None, start_serving=True,
                                     cleanup_socket=True):
            return await self._create_unix_server(
                protocol_factory, path, sock, backlog, ssl, ssl_handshake_timeout,
                ssl_shutdown_timeout, start_serving, cleanup_socket)
    else:
        async def create_unix_server(self, protocol_factory, path=None, *, sock=None,
                                     backlog=100, ssl=None, ssl_handshake_timeout=None,
                                     ssl_shutdown_timeout=None, start_serving=True):
            return await self._create_unix_server(
                protocol_factory, path, sock, backlog, ssl, ssl_handshake_timeout,
                ssl_shutdown_timeout, start_serving, False)

    def _close_io(self) -> None:
        acceptors = self._ul_acceptors
        if acceptors:
            for acceptor in acceptors.values():
                acceptor.stop()
            acceptors.clear()
        super()._close_io()
