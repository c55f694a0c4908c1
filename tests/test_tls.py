"""TLS over the loop's transports (asyncio.sslproto over SocketTransport): ssl= on clients and
servers, server_hostname, start_tls, handshake timeout, errors.  Run on uringloop and stock."""

import asyncio
import weakref
import hashlib
import os
import socket
import ssl
import sys

import pytest

from helpers import bounded, certificate, contexts  # noqa: F401 (fixtures)


async def echo(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@pytest.mark.asyncio
@bounded(20)
async def test_tls_echo_and_extra_info(contexts):
    server_ctx, client_ctx = contexts
    server = await asyncio.start_server(echo, '127.0.0.1', 0, ssl=server_ctx)
    addr = server.sockets[0].getsockname()
    async with server:
        reader, writer = await asyncio.open_connection(*addr, ssl=client_ctx,
                                                       server_hostname='localhost')
        writer.write(b'hello over tls\n')
        assert await reader.readline() == b'hello over tls\n'
        assert writer.get_extra_info('sslcontext') is client_ctx
        peercert = writer.get_extra_info('peercert')
        assert ('commonName', 'localhost') in [item for rdn in peercert['subject']
                                               for item in rdn]
        assert isinstance(writer.get_extra_info('ssl_object'), ssl.SSLObject)
        assert writer.get_extra_info('cipher') is not None
        assert writer.get_extra_info('peername') == addr
        assert writer.get_extra_info('socket').getpeername() == addr
        # Read by applications through the stock SSLProtocol's private names (an aiohttp
        # middleware's request.transport._ssl_protocol._extra['peercert']): uringloop's compiled
        # protocol had neither.
        ssl_protocol = writer.transport._ssl_protocol
        assert ssl_protocol._extra['peercert'] == peercert
        assert ssl_protocol._get_extra_info('cipher') == writer.get_extra_info('cipher')
        assert ssl_protocol._loop is asyncio.get_running_loop()
        writer.close()
        await writer.wait_closed()


@pytest.mark.asyncio
@bounded(40)
async def test_tls_large_transfer_byte_for_byte(contexts):
    server_ctx, client_ctx = contexts
    server = await asyncio.start_server(echo, '127.0.0.1', 0, ssl=server_ctx)
    addr = server.sockets[0].getsockname()
    async with server:
        reader, writer = await asyncio.open_connection(*addr, ssl=client_ctx,
                                                       server_hostname='localhost')
        payload = os.urandom(8 * 1024 * 1024)

        async def send():
            view = memoryview(payload)
            for i in range(0, len(payload), 256 * 1024):
                writer.write(view[i:i + 256 * 1024])
                await writer.drain()

        sender = asyncio.ensure_future(send())
        digest = hashlib.sha256()
        n = 0
        while n < len(payload):
            chunk = await reader.read(1 << 20)
            assert chunk
            digest.update(chunk)
            n += len(chunk)
        await sender
        assert n == len(payload)
        assert digest.digest() == hashlib.sha256(payload).digest()
        writer.close()
        await writer.wait_closed()


@pytest.mark.asyncio
@bounded(20)
async def test_tls_protocol_api(contexts):
    loop = asyncio.get_running_loop()
    server_ctx, client_ctx = contexts
    done = loop.create_future()

    server_transports = []

    class Server(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            server_transports.append(transport)

        def data_received(self, data):
            self.transport.write(data.upper())

    class Client(asyncio.Protocol):
        def __init__(self):
            self.data = b''

        def connection_made(self, transport):
            transport.write(b'shout')

        def data_received(self, data):
            self.data += data
            if self.data == b'SHOUT':
                done.set_result(None)

        def connection_lost(self, exc):
            pass

    server = await loop.create_server(Server, '127.0.0.1', 0, ssl=server_ctx,
                                      ssl_handshake_timeout=5)
    addr = server.sockets[0].getsockname()
    transport, proto = await loop.create_connection(Client, *addr, ssl=client_ctx,
                                                    server_hostname='localhost')
    await done
    transport.close()
    for t in server_transports:
        t.close()          # (Python 3.10's SSL transport would warn if left to the GC)
    server.close()
    await server.wait_closed()


class LineProtocol(asyncio.Protocol):
    """Collects lines; `lines` is a queue."""

    def __init__(self):
        self.buffer = b''
        self.lines = asyncio.Queue()
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buffer += data
        while b'\n' in self.buffer:
            line, self.buffer = self.buffer.split(b'\n', 1)
            self.on_line(line)

    def on_line(self, line):
        self.lines.put_nowait(line)


@pytest.mark.asyncio
@bounded(20)
async def test_start_tls_upgrade(contexts):
    """STARTTLS: plain lines, then both ends upgrade the same connection.  The server pauses
    reading as soon as it sees STARTTLS, so the client's handshake bytes wait in the transport
    (received, not yet delivered) until the TLS protocol takes over."""
    loop = asyncio.get_running_loop()
    server_ctx, client_ctx = contexts
    upgraded = []

    class Server(LineProtocol):
        def on_line(self, line):
            if line == b'STARTTLS':
                self.transport.pause_reading()
                self.transport.write(b'GO\n')
                upgraded.append(loop.create_task(self.serve_tls()))
            else:
                super().on_line(line)

        async def serve_tls(self):
            # Until start_tls() returns, the app protocol has no way to write on TLS: lines
            # that arrive meanwhile are answered from here.
            tls = await loop.start_tls(self.transport, self, server_ctx, server_side=True)
            line = await self.lines.get()
            tls.write(b'secure:' + line + b'\n')
            return tls

    server = await loop.create_server(Server, '127.0.0.1', 0)
    addr = server.sockets[0].getsockname()
    transport, client = await loop.create_connection(LineProtocol, *addr)
    transport.write(b'STARTTLS\n')
    assert await client.lines.get() == b'GO'
    tls = await loop.start_tls(transport, client, client_ctx, server_hostname='localhost')
    assert tls.get_extra_info('peercert') is not None
    assert tls.get_extra_info('sslcontext') is client_ctx
    tls.write(b'ping\n')
    assert await client.lines.get() == b'secure:ping'
    server_tls = await upgraded[0]
    assert server_tls.get_extra_info('sslcontext') is server_ctx
    tls.close()
    server_tls.close()
    server.close()
    await server.wait_closed()


@pytest.mark.asyncio
@bounded(20)
async def test_start_tls_right_after_a_large_write(contexts):
    """A protocol writes more than the high-water mark, then hands the transport to TLS before
    those bytes have left.  The SSL layer was never paused, so it must not be told to resume
    (SSLProtocol asserts that); the protocol that was paused hears resume_writing() once its
    bytes are out; nothing reaches the exception handler and every byte arrives."""
    loop = asyncio.get_running_loop()
    server_ctx, client_ctx = contexts
    handler_calls = []
    loop.set_exception_handler(lambda loop, context: handler_calls.append(context))
    hello = os.urandom(100 * 1024)
    flow = []
    done = loop.create_future()

    class Server(asyncio.Protocol):
        def connection_made(self, transport):
            loop.create_task(self.upgrade(transport))

        def pause_writing(self):
            flow.append('pause')

        def resume_writing(self):
            flow.append('resume')

        async def upgrade(self, transport):
            transport.write(hello)              # above the 64 KiB high-water mark
            tls = await loop.start_tls(transport, self, server_ctx, server_side=True)
            tls.write(b'answer')
            done.set_result(tls)

    class Client(asyncio.Protocol):
        def __init__(self):
            self.data = bytearray()
            self.plain = loop.create_future()
            self.secure = loop.create_future()

        def data_received(self, data):
            self.data += data
            if not self.plain.done() and len(self.data) >= len(hello):
                self.plain.set_result(bytes(self.data))
                self.data.clear()
            elif self.plain.done() and self.data == b'answer':
                self.secure.set_result(bytes(self.data))

    server = await loop.create_server(Server, '127.0.0.1', 0)
    addr = server.sockets[0].getsockname()
    transport, client = await loop.create_connection(Client, *addr)
    assert await client.plain == hello
    tls = await loop.start_tls(transport, client, client_ctx, server_hostname='localhost')
    assert await client.secure == b'answer'
    server_tls = await done
    assert flow in ([], ['pause', 'resume'])
    assert handler_calls == []
    tls.close()
    server_tls.close()
    server.close()
    await server.wait_closed()


@pytest.mark.asyncio
@bounded(20)
async def test_wrong_hostname_fails_verification(contexts):
    server_ctx, client_ctx = contexts
    server = await asyncio.start_server(echo, '127.0.0.1', 0, ssl=server_ctx)
    addr = server.sockets[0].getsockname()
    async with server:
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.open_connection(*addr, ssl=client_ctx,
                                          server_hostname='not-localhost.example')


@pytest.mark.asyncio
@bounded(20)
async def test_untrusted_certificate_fails(contexts):
    server_ctx, _ = contexts
    server = await asyncio.start_server(echo, '127.0.0.1', 0, ssl=server_ctx)
    addr = server.sockets[0].getsockname()
    async with server:
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.open_connection(*addr, ssl=ssl.create_default_context(),
                                          server_hostname='localhost')


@pytest.mark.asyncio
@bounded(20)
async def test_handshake_timeout(contexts):
    """A peer that accepts TCP but never answers the TLS handshake."""
    _, client_ctx = contexts
    silent = []

    async def say_nothing(reader, writer):
        silent.append(writer)
        await reader.read()
        writer.close()

    server = await asyncio.start_server(say_nothing, '127.0.0.1', 0)
    addr = server.sockets[0].getsockname()
    async with server:
        with pytest.raises(ConnectionAbortedError):
            await asyncio.open_connection(*addr, ssl=client_ctx, server_hostname='localhost',
                                          ssl_handshake_timeout=0.2)
        for writer in silent:
            writer.close()


@pytest.mark.asyncio
@bounded(20)
@pytest.mark.skipif(sys.version_info < (3, 11), reason='ssl_shutdown_timeout: Python 3.11')
async def test_ssl_shutdown_timeout_accepted_and_clean_close(contexts):
    server_ctx, client_ctx = contexts
    server = await asyncio.start_server(echo, '127.0.0.1', 0, ssl=server_ctx,
                                        ssl_shutdown_timeout=1.0)
    addr = server.sockets[0].getsockname()
    async with server:
        reader, writer = await asyncio.open_connection(*addr, ssl=client_ctx,
                                                       server_hostname='localhost',
                                                       ssl_shutdown_timeout=1.0)
        writer.write(b'x')
        assert await reader.readexactly(1) == b'x'
        writer.close()
        await writer.wait_closed()


@pytest.mark.asyncio
@bounded(20)
async def test_a_tls_connection_made_just_before_server_close_is_served(contexts):
    """A client's connect completes and the server is closed on the next line: the stock loop
    has set that connection up by then (its accept task, queued by the listening socket's
    readiness, runs ahead of the client's wake-up), so close() leaves it to finish its
    handshake and be served.  (uringloop made a TLS connection in a task queued behind that
    wake-up: the server was closed first, the transport's attach to it failed, and the client
    read EOF at once.)"""
    server_ctx, client_ctx = contexts
    loop = asyncio.get_running_loop()
    served = loop.create_future()

    class Greeter(asyncio.Protocol):
        def connection_made(self, transport):
            transport.write(b"hello")
            served.set_result(transport)

    server = await loop.create_server(Greeter, "127.0.0.1", 0, ssl=server_ctx)
    raw = socket.socket()
    raw.setblocking(False)
    await loop.sock_connect(raw, server.sockets[0].getsockname())
    server.close()
    reader, writer = await asyncio.open_connection(sock=raw, ssl=client_ctx,
                                                   server_hostname="localhost")
    assert await reader.readexactly(5) == b"hello"
    (await served).close()
    writer.close()
    await writer.wait_closed()
    await server.wait_closed()


@pytest.mark.asyncio
@bounded(20)
async def test_tls_server_closes_first(contexts):
    server_ctx, client_ctx = contexts

    async def greet_and_close(reader, writer):
        writer.write(b'bye')
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(greet_and_close, '127.0.0.1', 0, ssl=server_ctx)
    addr = server.sockets[0].getsockname()
    async with server:
        reader, writer = await asyncio.open_connection(*addr, ssl=client_ctx,
                                                       server_hostname='localhost')
        assert await reader.read() == b'bye'
        writer.close()
        await writer.wait_closed()


@pytest.mark.asyncio
@bounded()
@pytest.mark.skipif(sys.version_info < (3, 11), reason="StreamWriter.start_tls() is 3.11+")
async def test_start_tls_first_thing_in_a_handler_with_the_client_hello_waiting(contexts):
    """A handler whose first step upgrades the accepted stream, while the client's ClientHello
    is already in the socket (implicit TLS on a plain listener): start_tls() must see it.
    (uringloop once fed it to the plain StreamReader first, and the handshake never ended.)"""
    server_ctx, client_ctx = contexts
    loop = asyncio.get_running_loop()

    async def handler(reader, writer):
        await writer.start_tls(server_ctx)
        writer.write((await reader.readline()).upper())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handler, '127.0.0.1', 0)
    async with server:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = client_ctx.wrap_bio(incoming, outgoing, server_hostname='localhost')
        with pytest.raises(ssl.SSLWantReadError):
            tls.do_handshake()
        sock = socket.create_connection(server.sockets[0].getsockname()[:2])
        with sock:
            sock.sendall(outgoing.read())      # waiting before the server accepts
            sock.setblocking(False)

            async def exchange():
                data = await asyncio.wait_for(loop.sock_recv(sock, 65536), 10)
                assert data, "the server closed the connection"
                incoming.write(data)

            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    if outgoing.pending:
                        await loop.sock_sendall(sock, outgoing.read())
                    await exchange()
            tls.write(b'hello\n')
            await loop.sock_sendall(sock, outgoing.read())
            reply = b''
            while not reply.endswith(b'\n'):
                try:
                    reply += tls.read(100)
                except ssl.SSLWantReadError:
                    await exchange()
            assert reply == b'HELLO\n'


@pytest.mark.asyncio
@bounded(20)
async def test_a_tls_transport_can_be_weakly_referenced(contexts):
    """A TLS connection's transport (and the SSL protocol under it) take weak references, as
    the stock ones do -- WeakSet, WeakKeyDictionary, weakref.finalize (uringloop's compiled TLS
    classes refused them: TypeError)."""
    server_ctx, client_ctx = contexts
    server = await asyncio.start_server(echo, '127.0.0.1', 0, ssl=server_ctx)
    addr = server.sockets[0].getsockname()
    async with server:
        reader, writer = await asyncio.open_connection(*addr, ssl=client_ctx,
                                                       server_hostname='localhost')
        transport = writer.transport
        ref = weakref.ref(transport)
        assert ref() is transport
        assert transport in weakref.WeakSet([transport])
        protocol = getattr(transport, '_ssl_protocol', None)
        if protocol is not None:
            assert weakref.ref(protocol)() is protocol
        writer.close()
        await writer.wait_closed()
