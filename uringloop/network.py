"""The loop's stream networking API on the Proactor: transports for TCP and UNIX sockets, servers,
TLS, sendfile.

BaseEventLoop implements create_connection, create_server, open_connection/start_server,
connect_accepted_socket, start_tls and sendfile on top of a few hooks; NetworkMixin supplies the
hooks with completion-based machinery:

  _make_socket_transport   the compiled SocketTransport (_transports.pyx)
  _make_ssl_transport      asyncio.sslproto.SSLProtocol over a SocketTransport, as the stock
                           loop layers it
  _start_serving           a compiled Acceptor per listening socket (_server.pyx): multishot
  _stop_serving            accept, connections served from the completion handler
"""

from __future__ import annotations

import sys

from asyncio import constants, sslproto

from uringloop._server import Acceptor
from uringloop._transports import SocketTransport

# SSLProtocol (and the loop hooks around it) grew ssl_shutdown_timeout in 3.11.
_HAS_SSL_SHUTDOWN_TIMEOUT = sys.version_info >= (3, 11)


class NetworkMixin:
    """Mixed into uringloop.Loop: stream transports and servers."""

    # The provided-buffer ring every transport's multishot receive draws from; created by the
    # first transport (False when the kernel cannot do multishot receives).
    _ul_recv_ring = None
    # Listening socket fd -> its Acceptor, while serving.
    _ul_acceptors = None

    # ---- transports ----

    def _make_socket_transport(self, sock, protocol, waiter=None, *, extra=None, server=None):
        return SocketTransport(self, sock, protocol, waiter, extra, server)

    def _make_ssl_transport(self, rawsock, protocol, sslcontext, waiter=None, *,
                            server_side=False, server_hostname=None, extra=None, server=None,
                            ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
                            ssl_shutdown_timeout=None):
        # TLS is asyncio's own SSLProtocol (a BufferedProtocol from 3.11 on: the kernel
        # receives straight into its buffer) over our socket transport, exactly the layering
        # of the stock loop; the application sees SSLProtocol's app transport.
        kwargs = {'ssl_handshake_timeout': ssl_handshake_timeout}
        if _HAS_SSL_SHUTDOWN_TIMEOUT:
            kwargs['ssl_shutdown_timeout'] = ssl_shutdown_timeout
        ssl_protocol = sslproto.SSLProtocol(self, protocol, sslcontext, waiter, server_side,
                                            server_hostname, **kwargs)
        SocketTransport(self, rawsock, ssl_protocol, None, extra, server)
        return ssl_protocol._app_transport

    # ---- servers ----

    def _start_serving(self, protocol_factory, sock, sslcontext=None, server=None, backlog=100,
                       ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
                       ssl_shutdown_timeout=None):
        acceptors = self._ul_acceptors
        if acceptors is None:
            acceptors = self._ul_acceptors = {}
        fd = sock.fileno()
        previous = acceptors.get(fd)
        if previous is not None:
            previous.stop()
        acceptor = Acceptor(self, sock, protocol_factory, sslcontext, server,
                            ssl_handshake_timeout, ssl_shutdown_timeout)
        acceptors[fd] = acceptor
        acceptor.start()

    def _stop_serving(self, sock):
        acceptors = self._ul_acceptors
        if acceptors:
            acceptor = acceptors.pop(sock.fileno(), None)
            if acceptor is not None:
                # Cancel first; the accept request holds its own reference to the socket's
                # file until its final completion, so closing the descriptor now is safe.
                acceptor.stop()
        sock.close()

    async def _accept_tls_connection(self, protocol_factory, conn, extra, sslcontext, server,
                                     ssl_handshake_timeout, ssl_shutdown_timeout):
        # A TLS connection is established only when its handshake completes; the stock loop
        # awaits that in a task per connection, and so do we.
        protocol = None
        transport = None
        try:
            protocol = protocol_factory()
            waiter = self.create_future()
            transport = self._make_ssl_transport(
                conn, protocol, sslcontext, waiter=waiter, server_side=True, extra=extra,
                server=server, ssl_handshake_timeout=ssl_handshake_timeout,
                ssl_shutdown_timeout=ssl_shutdown_timeout)
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
            if transport is None:
                conn.close()
            if self._debug:
                context = {
                    'message': 'Error on transport creation for incoming connection',
                    'exception': exc,
                }
                if protocol is not None:
                    context['protocol'] = protocol
                if transport is not None:
                    context['transport'] = transport
                self.call_exception_handler(context)

    def _close_io(self) -> None:
        acceptors = self._ul_acceptors
        if acceptors:
            for acceptor in acceptors.values():
                acceptor.stop()
            acceptors.clear()
        super()._close_io()
