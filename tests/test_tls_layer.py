"""The TLS layer between the socket transport and the application's protocol, as the application
sees it: records that arrive together, BufferedProtocol applications, reading paused across the
peer's close, the app transport's API, flow-control limits, writes after close, abort, sendfile's
fallback, a context's own sslobject_class.  On uringloop from Python 3.11 on this is the compiled
layer (_sslproto.pyx), on the stock loop asyncio's SSLProtocol: the same tests, the same answers.
Python 3.11 and later (below)."""

import asyncio
import logging
import math
import os
import socket
import ssl
import sys

import pytest

from helpers import bounded, check_instance_attributes
from helpers import certificate, contexts  # noqa: F401 (fixtures)

# These pin asyncio 3.11+'s SSLProtocol behaviour, which the compiled layer reproduces.  On 3.10
# both loops run 3.10's own SSLProtocol, an older design that differs in most of them (an EOF
# while paused, the warnings, when the application is paused, no buffered path).
pytestmark = pytest.mark.skipif(sys.version_info < (3, 11),
                                reason="asyncio 3.11+'s SSLProtocol behaviour")


class Recorder(asyncio.Protocol):
    """Records the calls a protocol gets, in order; `closed` resolves at connection_lost()."""

    def __init__(self, on_made=None, eof_result=None):
        self.events = []
        self.data = bytearray()
        self.transport = None
        self.on_made = on_made
        self.eof_result = eof_result
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.events.append('made')
        if self.on_made is not None:
            self.on_made(transport)

    def data_received(self, data):
        assert type(data) is bytes
        if not self.events or self.events[-1] != 'data':
            self.events.append('data')
        self.data += data

    def eof_received(self):
        self.events.append('eof')
        return self.eof_result

    def connection_lost(self, exc):
        self.events.append(('lost', exc))
        if not self.closed.done():
            self.closed.set_result(exc)


async def tls_pair(contexts, server_factory, client_factory=asyncio.Protocol):
    """A TLS server for server_factory and one client connected to it; returns (server,
    client transport, client protocol, the server protocol once it got connection_made)."""
    loop = asyncio.get_running_loop()
    server_ctx, client_ctx = contexts
    made = loop.create_future()

    def factory():
        protocol = server_factory()
        original = protocol.connection_made

        def connection_made(transport):
            original(transport)
            if not made.done():
                made.set_result(protocol)
        protocol.connection_made = connection_made
        return protocol

    server = await loop.create_server(factory, '127.0.0.1', 0, ssl=server_ctx)
    addr = server.sockets[0].getsockname()
    transport, protocol = await loop.create_connection(client_factory, *addr, ssl=client_ctx,
                                                       server_hostname='localhost')
    return server, transport, protocol, await made


async def close_server(server):
    server.close()
    await server.wait_closed()


async def until(condition):
    """Wait (each test is bounded) until condition() holds."""
    while not condition():
        await asyncio.sleep(0.01)


def handler_reports():
    """The running loop's exception-handler calls from now on, in a list."""
    reports = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: reports.append(context))
    return reports


@pytest.mark.asyncio
@bounded(20)
async def test_records_that_arrive_together_reach_the_protocol_whole_and_in_order(contexts):
    # 200 writes of distinct content go out as 200 records, most of which the server receives
    # several to a read; it must see every byte once, in order.
    server, transport, _, peer = await tls_pair(contexts, Recorder)
    chunks = [bytes([i % 251]) * (100 + 37 * i) for i in range(200)]
    for chunk in chunks:
        transport.write(chunk)
    expected = b''.join(chunks)
    await until(lambda: len(peer.data) >= len(expected))
    assert bytes(peer.data) == expected
    transport.close()
    assert await peer.closed is None
    assert peer.events == ['made', 'data', 'eof', ('lost', None)]
    await close_server(server)


@pytest.mark.parametrize('kind', ['memoryview', 'bytearray'])
@pytest.mark.asyncio
@bounded(20)
async def test_a_buffered_protocol_application_gets_everything_through_a_small_buffer(
        contexts, kind, is_uring):
    if kind == 'bytearray' and not is_uring:
        pytest.skip("asyncio's SSLProtocol reads past a record's first bytes into a copy of a "
                    "bytearray buffer (buf[offset:]) and loses them (CPython 3.11-3.13)")

    class Small(asyncio.BufferedProtocol):
        def __init__(self):
            self.buffer = bytearray(1000)
            self.offered = memoryview(self.buffer) if kind == 'memoryview' else self.buffer
            self.data = bytearray()
            self.sizes = []
            self.eof = False
            self.closed = asyncio.get_running_loop().create_future()

        def connection_made(self, transport):
            self.transport = transport

        def get_buffer(self, sizehint):
            return self.offered

        def buffer_updated(self, nbytes):
            self.sizes.append(nbytes)
            self.data += self.buffer[:nbytes]

        def eof_received(self):
            self.eof = True

        def connection_lost(self, exc):
            self.closed.set_result(exc)

    server, transport, _, peer = await tls_pair(contexts, Small)
    payload = os.urandom(100_000)
    transport.write(payload)
    await until(lambda: len(peer.data) >= len(payload))
    assert bytes(peer.data) == payload
    assert max(peer.sizes) == 1000          # never more than the buffer it offered
    transport.close()
    assert await peer.closed is None
    assert peer.eof
    await close_server(server)


@pytest.mark.asyncio
@bounded(20)
async def test_a_buffered_protocol_application_may_resize_its_bytearray_in_buffer_updated(
        contexts, is_uring):
    if not is_uring:
        pytest.skip("asyncio's SSLProtocol reads past a record's first bytes into a copy of a "
                    "bytearray buffer (buf[offset:]) and loses them (CPython 3.11-3.13)")

    class Trims(asyncio.BufferedProtocol):
        """Offers a new bytearray each time and cuts it to what was received."""
        def __init__(self):
            self.data = bytearray()
            self.closed = asyncio.get_running_loop().create_future()

        def get_buffer(self, sizehint):
            self.buffer = bytearray(65536)
            return self.buffer

        def buffer_updated(self, nbytes):
            del self.buffer[nbytes:]            # a resize: no export of it may be left
            self.data += self.buffer

        def connection_lost(self, exc):
            self.closed.set_result(exc)

    reports = handler_reports()
    server, transport, _, peer = await tls_pair(contexts, Trims)
    chunks = [bytes([65 + i]) * 1000 for i in range(5)]     # records read together
    for chunk in chunks:
        transport.write(chunk)
    await until(lambda: len(peer.data) >= 5000 or peer.closed.done())
    transport.close()
    assert await peer.closed is None
    assert bytes(peer.data) == b''.join(chunks)
    assert reports == []
    await close_server(server)


@pytest.mark.asyncio
@bounded(20)
async def test_a_buffered_protocol_gets_everything_when_the_peer_ends_without_close_notify(
        contexts, is_uring):
    """A peer that sends and then closes TCP without close_notify: the plaintext already
    decrypted -- more than the application's buffer holds -- reaches it before eof_received()."""
    if not is_uring:
        pytest.skip("asyncio's SSLProtocol hands a BufferedProtocol one buffer of what is left "
                    "at the peer's EOF and drops the rest (CPython 3.11-3.13)")
    server_ctx, client_ctx = contexts
    loop = asyncio.get_running_loop()
    payload = os.urandom(200_000)
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    listener.listen()

    def peer():
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:     # takes conn's fd
            tls.sendall(payload)
            # The TCP end only, below the TLS layer: no close_notify.
            socket.socket.shutdown(tls, socket.SHUT_WR)
            tls.settimeout(10)
            while socket.socket.recv(tls, 65536):
                pass

    class Small(asyncio.BufferedProtocol):
        def __init__(self):
            self.buffer = bytearray(1000)
            self.data = bytearray()
            self.eof_at = None
            self.closed = loop.create_future()

        def get_buffer(self, sizehint):
            return self.buffer

        def buffer_updated(self, nbytes):
            self.data += self.buffer[:nbytes]

        def eof_received(self):
            self.eof_at = len(self.data)

        def connection_lost(self, exc):
            self.closed.set_result(exc)

    with listener:
        serving = loop.run_in_executor(None, peer)
        transport, app = await loop.create_connection(
            Small, *listener.getsockname(), ssl=client_ctx, server_hostname='localhost')
        await app.closed
        await serving
    assert app.eof_at == len(payload)
    assert bytes(app.data) == payload


@pytest.mark.asyncio
@bounded(20)
async def test_paused_reading_holds_data_and_the_peers_close_until_resumed(contexts):
    server, transport, _, peer = await tls_pair(contexts, Recorder)
    peer.transport.pause_reading()
    assert not peer.transport.is_reading()
    transport.write(b'held back')
    transport.close()
    await asyncio.sleep(0.3)
    assert peer.events == ['made']           # nothing while paused, not even the close
    assert not peer.closed.done()
    peer.transport.resume_reading()
    assert peer.transport.is_reading()
    assert await peer.closed is None
    assert bytes(peer.data) == b'held back'
    assert peer.events == ['made', 'data', 'eof', ('lost', None)]
    await close_server(server)


@pytest.mark.asyncio
@bounded(20)
async def test_the_app_transport_api(contexts):
    server, transport, protocol, peer = await tls_pair(contexts, Recorder)

    assert isinstance(transport, asyncio.Transport)
    assert transport.get_protocol() is protocol
    assert transport.get_extra_info('sslcontext') is contexts[1]
    assert isinstance(transport.get_extra_info('ssl_object'), ssl.SSLObject)
    assert transport.get_extra_info('peercert')['subject']
    assert len(transport.get_extra_info('cipher')) == 3
    assert transport.get_extra_info('peername') == server.sockets[0].getsockname()
    assert transport.get_extra_info('no such thing', 'default') == 'default'
    assert not transport.can_write_eof()
    with pytest.raises(NotImplementedError):
        transport.write_eof()
    with pytest.raises(TypeError, match='expecting a bytes-like instance, got str'):
        transport.write('text')
    transport.write(b'')                      # nothing at all
    transport.writelines([b'one ', bytearray(b'two '), memoryview(b'three')])
    await until(lambda: bytes(peer.data) == b'one two three')

    # set_protocol() switches where the data goes.
    other = Recorder()
    peer.transport.set_protocol(other)
    assert peer.transport.get_protocol() is other
    transport.write(b'four')
    await until(lambda: bytes(other.data) == b'four')
    assert bytes(peer.data) == b'one two three'

    assert not transport.is_closing()
    transport.close()
    assert transport.is_closing()
    assert await other.closed is None
    await close_server(server)


@pytest.mark.asyncio
@bounded(20)
async def test_the_stock_private_names_programs_and_tests_read(contexts):
    """What code written against the stock TLS classes reads by their private names (aiohttp's
    tests: transport._ssl_protocol._sslcontext) gives the same objects on both loops."""
    server, transport, protocol, peer = await tls_pair(contexts, Recorder, Recorder)
    ssl_protocol = transport._ssl_protocol
    assert ssl_protocol._sslcontext is contexts[1]
    assert ssl_protocol._server_side is False
    assert ssl_protocol._server_hostname == 'localhost'
    assert ssl_protocol._app_transport is transport
    assert ssl_protocol._app_protocol is protocol
    assert ssl_protocol._sslobj is transport.get_extra_info('ssl_object')
    assert ssl_protocol._transport.get_extra_info('peername') == \
        server.sockets[0].getsockname()
    assert peer.transport._ssl_protocol._server_side is True
    assert peer.transport._ssl_protocol._sslcontext is contexts[0]
    transport.close()
    assert await protocol.closed is None
    await close_server(server)


@pytest.mark.asyncio
@bounded(20)
async def test_the_app_transport_takes_attributes_and_methods_replaced_on_it(contexts):
    """As the stock TLS transport (and the socket transport: test_protocols_lifecycle.py):
    attributes set on it, methods replaced on the instance and mock.patch.object, with the
    transport's own method back once the replacement is deleted."""
    server, transport, protocol, peer = await tls_pair(contexts, Recorder, Recorder)
    assert 'label' not in vars(transport)

    async def peer_received(n):
        await until(lambda: len(peer.data) >= n)
        return bytes(peer.data[:n])
    await check_instance_attributes(transport, peer_received)
    transport.close()
    assert await protocol.closed is None
    await close_server(server)


@pytest.mark.asyncio
@bounded(20)
async def test_flow_control_limits(contexts):
    server, transport, _, peer = await tls_pair(contexts, Recorder)
    transport.set_write_buffer_limits(high=10_000, low=1_000)
    assert transport.get_write_buffer_limits() == (1_000, 10_000)
    transport.set_write_buffer_limits(high=8_000)
    assert transport.get_write_buffer_limits() == (2_000, 8_000)
    with pytest.raises(ValueError):
        transport.set_write_buffer_limits(high=1, low=2)
    transport.set_read_buffer_limits(high=4_000)
    assert transport.get_read_buffer_limits() == (1_000, 4_000)
    with pytest.raises(ValueError):
        transport.set_read_buffer_limits(high=-1)
    assert transport.get_read_buffer_size() == 0
    assert transport.get_write_buffer_size() == 0
    transport.close()
    await peer.closed
    await close_server(server)


@pytest.mark.asyncio
@bounded(20)
async def test_flow_control_limits_without_an_upper_bound(contexts):
    server, transport, _, peer = await tls_pair(contexts, Recorder)
    transport.set_write_buffer_limits(high=math.inf, low=0)
    assert transport.get_write_buffer_limits() == (0, math.inf)
    transport.set_read_buffer_limits(high=math.inf, low=0)
    assert transport.get_read_buffer_limits() == (0, math.inf)
    transport.set_write_buffer_limits(high=2 ** 64)
    assert transport.get_write_buffer_limits() == (2 ** 62, 2 ** 64)
    transport.write(b'x' * 1_000_000)      # never paused, all of it delivered
    await until(lambda: len(peer.data) >= 1_000_000)
    transport.close()
    await peer.closed
    await close_server(server)


@pytest.mark.asyncio
@bounded(20)
async def test_the_application_is_paused_and_resumed_by_its_write_buffer(contexts):
    calls = []

    class Writer(asyncio.Protocol):
        def pause_writing(self):
            calls.append('pause')

        def resume_writing(self):
            calls.append('resume')

    # The server does not read for a while, so the client's writes pile up.
    server, transport, protocol, peer = await tls_pair(
        contexts, lambda: Recorder(on_made=lambda t: t.pause_reading()), Writer)
    transport.set_write_buffer_limits(high=64 * 1024)
    block = b'x' * 65536
    sent = 0
    while 'pause' not in calls and sent < 64 * 1024 * 1024:
        transport.write(block)
        sent += len(block)
        await asyncio.sleep(0)
    assert calls == ['pause']
    assert transport.get_write_buffer_size() >= 64 * 1024
    peer.transport.resume_reading()
    await until(lambda: len(peer.data) >= sent)
    assert calls == ['pause', 'resume']
    transport.close()
    await peer.closed
    await close_server(server)


@pytest.mark.asyncio
@bounded(20)
async def test_writes_after_close_are_dropped_with_a_warning(contexts, caplog):
    server, transport, _, peer = await tls_pair(contexts, Recorder)
    transport.write(b'before')
    transport.close()
    with caplog.at_level(logging.WARNING, logger='asyncio'):
        for _ in range(10):
            transport.write(b'after')
    assert 'SSL connection is closed' in caplog.text
    await peer.closed
    assert bytes(peer.data) == b'before'
    await close_server(server)


@pytest.mark.asyncio
@bounded(20)
async def test_abort_loses_buffered_data_and_reports_a_clean_loss(contexts):
    class Client(Recorder):
        pass

    server, transport, protocol, peer = await tls_pair(contexts, Recorder, Client)
    transport.abort()
    assert transport.is_closing()
    assert await protocol.closed is None
    # The server sees its socket closed without close_notify: an end, possibly an error.
    await peer.closed
    assert peer.events[0] == 'made' and peer.events[-1][0] == 'lost'
    await close_server(server)


@pytest.mark.asyncio
@bounded(20)
async def test_returning_true_from_eof_received_is_ignored_with_a_warning(contexts, caplog):
    with caplog.at_level(logging.WARNING, logger='asyncio'):
        server, transport, _, peer = await tls_pair(contexts, lambda: Recorder(eof_result=True))
        transport.close()
        assert await peer.closed is None
    assert 'returning true from eof_received() has no effect when using ssl' in caplog.text
    assert peer.events == ['made', 'eof', ('lost', None)]
    await close_server(server)


@pytest.mark.asyncio
@bounded(20)
async def test_sendfile_over_tls_falls_back_to_writes(contexts, tmp_path):
    loop = asyncio.get_running_loop()
    path = tmp_path / 'payload'
    payload = os.urandom(300_000)
    path.write_bytes(payload)
    server, transport, _, peer = await tls_pair(contexts, Recorder)
    with open(path, 'rb') as file:
        sent = await loop.sendfile(transport, file, offset=1000, count=200_000)
    assert sent == 200_000
    await until(lambda: len(peer.data) >= sent)
    assert bytes(peer.data) == payload[1000:201_000]
    transport.close()
    await peer.closed
    await close_server(server)


@pytest.mark.asyncio
@bounded(20)
async def test_a_contexts_own_sslobject_class_does_the_work(contexts):
    server_ctx, client_ctx = contexts
    calls = {'read': 0, 'write': 0}

    class Counting(ssl.SSLObject):
        def read(self, *args, **kwargs):
            calls['read'] += 1
            return super().read(*args, **kwargs)

        def write(self, data):
            calls['write'] += 1
            return super().write(data)

    server_ctx.sslobject_class = Counting
    try:
        server, transport, _, peer = await tls_pair(
            contexts, lambda: Recorder(on_made=lambda t: None))
        transport.write(b'ping')
        await until(lambda: bytes(peer.data) == b'ping')
        peer.transport.write(b'pong')
        assert isinstance(peer.transport.get_extra_info('ssl_object'), Counting)
        transport.close()
        await peer.closed
        await close_server(server)
    finally:
        server_ctx.sslobject_class = ssl.SSLObject
    assert calls['read'] >= 1 and calls['write'] >= 1


@pytest.mark.asyncio
@bounded(20)
async def test_tls_inside_tls_through_start_tls(contexts):
    # An HTTPS proxy's tunnel: a TLS connection upgraded with start_tls() over a TLS transport.
    server_ctx, client_ctx = contexts
    served = asyncio.get_running_loop().create_future()

    async def handler(reader, writer):
        try:
            assert await reader.readexactly(7) == b'upgrade'
            writer.write(b'ok')
            await writer.drain()
            await writer.start_tls(server_ctx)
            data = await reader.readexactly(5)
            writer.write(data.upper())
            await writer.drain()
            served.set_result(writer.get_extra_info('ssl_object').version())
        finally:
            writer.close()

    server = await asyncio.start_server(handler, '127.0.0.1', 0, ssl=server_ctx)
    addr = server.sockets[0].getsockname()
    reader, writer = await asyncio.open_connection(*addr, ssl=client_ctx,
                                                   server_hostname='localhost')
    outer = writer.transport
    writer.write(b'upgrade')
    assert await reader.readexactly(2) == b'ok'
    await writer.start_tls(client_ctx, server_hostname='localhost')
    assert writer.transport is not outer
    assert writer.get_extra_info('ssl_object') is not outer.get_extra_info('ssl_object')
    writer.write(b'inner')
    assert await reader.readexactly(5) == b'INNER'
    assert (await served).startswith('TLS')
    writer.close()
    await writer.wait_closed()
    await close_server(server)


@pytest.mark.asyncio
@bounded(20)
async def test_a_corrupted_record_ends_the_connection_with_the_ssl_error(contexts):
    handled = handler_reports()
    server, transport, protocol, peer = await tls_pair(contexts, Recorder, Recorder)
    transport.write(b'fine')
    await until(lambda: bytes(peer.data) == b'fine')
    # Bytes that are no TLS record, written under the TLS layer's feet.
    os.write(transport.get_extra_info('socket').fileno(), b'\x17\x03\x03\x00\x10' + b'\0' * 16)
    exc = await peer.closed
    assert isinstance(exc, ssl.SSLError)
    assert peer.events == ['made', 'data', ('lost', exc)]
    # An SSLError is an OSError: logged in debug mode only, not reported to the handler.
    assert handled == []
    transport.close()
    await protocol.closed
    await close_server(server)


@pytest.mark.asyncio
@bounded(20)
async def test_a_failing_pause_writing_is_reported_and_not_fatal(contexts):
    handled = handler_reports()

    class Writer(asyncio.Protocol):
        def pause_writing(self):
            raise RuntimeError('pause refused')

    server, transport, protocol, peer = await tls_pair(
        contexts, lambda: Recorder(on_made=lambda t: t.pause_reading()), Writer)
    transport.set_write_buffer_limits(high=64 * 1024)
    block = b'z' * 65536
    sent = 0
    while not handled and sent < 64 * 1024 * 1024:
        transport.write(block)
        sent += len(block)
        await asyncio.sleep(0)
    assert [c['message'] for c in handled] == ['protocol.pause_writing() failed']
    assert isinstance(handled[0]['exception'], RuntimeError)
    assert handled[0]['transport'] is transport
    # The connection goes on: everything written arrives.
    peer.transport.resume_reading()
    await until(lambda: len(peer.data) >= sent)
    assert bytes(peer.data) == block * (sent // len(block))
    transport.close()
    await peer.closed
    await close_server(server)
