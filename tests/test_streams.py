"""asyncio streams (open_connection/start_server, StreamReader/StreamWriter) over the loop's
transports, on uringloop and on the stock loop."""

import asyncio
import hashlib
import os
import socket

import pytest

from helpers import bounded, echo


async def start(handler=echo, **kwargs):
    server = await asyncio.start_server(handler, '127.0.0.1', 0, **kwargs)
    return server, server.sockets[0].getsockname()[:2]


@pytest.mark.asyncio
@bounded()
async def test_echo_lines_and_exact_reads():
    server, addr = await start()
    async with server:
        reader, writer = await asyncio.open_connection(*addr)
        writer.write(b'first line\nsecond ')
        writer.write(b'line\n')
        await writer.drain()
        assert await reader.readline() == b'first line\n'
        assert await reader.readline() == b'second line\n'
        writer.writelines([b'ab', b'cd', b'ef'])
        assert await reader.readexactly(6) == b'abcdef'
        writer.write(b'x:y:z')
        assert await reader.readuntil(b':') == b'x:'
        assert await reader.readexactly(3) == b'y:z'
        assert writer.can_write_eof()
        writer.write_eof()
        assert await reader.read() == b''
        assert reader.at_eof()
        writer.close()
        await writer.wait_closed()


@pytest.mark.asyncio
@bounded()
async def test_incomplete_read_at_eof():
    async def send_and_close(reader, writer):
        writer.write(b'only five')
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server, addr = await start(send_and_close)
    async with server:
        reader, writer = await asyncio.open_connection(*addr)
        with pytest.raises(asyncio.IncompleteReadError) as info:
            await reader.readexactly(100)
        assert info.value.partial == b'only five'
        writer.close()
        await writer.wait_closed()


@pytest.mark.asyncio
@bounded(30)
async def test_large_transfer_with_drain_and_backpressure():
    """32 MiB through an echo server: the reader's limit pauses the transport (pause_reading)
    and drain() waits on pause_writing; every byte comes back in order."""
    server, addr = await start(limit=64 * 1024)
    async with server:
        reader, writer = await asyncio.open_connection(*addr, limit=32 * 1024)
        payload = os.urandom(32 * 1024 * 1024)

        async def send():
            view = memoryview(payload)
            for i in range(0, len(payload), 300_000):
                writer.write(view[i:i + 300_000])
                await writer.drain()
            writer.write_eof()

        sender = asyncio.ensure_future(send())
        digest = hashlib.sha256()
        received = 0
        while True:
            chunk = await reader.read(100_000)
            if not chunk:
                break
            digest.update(chunk)
            received += len(chunk)
        await sender
        assert received == len(payload)
        assert digest.digest() == hashlib.sha256(payload).digest()
        writer.close()
        await writer.wait_closed()


@pytest.mark.asyncio
@bounded()
async def test_many_clients_concurrently():
    server, addr = await start()
    async with server:
        async def client(i):
            reader, writer = await asyncio.open_connection(*addr)
            message = f'client {i}\n'.encode() * (i + 1)
            writer.write(message)
            await writer.drain()
            got = await reader.readexactly(len(message))
            writer.close()
            await writer.wait_closed()
            return got == message

        results = await asyncio.gather(*(client(i) for i in range(50)))
        assert all(results)


@pytest.mark.asyncio
@bounded()
async def test_writer_extra_info_and_close_from_server_side():
    peers = []

    async def record(reader, writer):
        peers.append(writer.get_extra_info('peername'))
        writer.write(b'bye')
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server, addr = await start(record)
    async with server:
        reader, writer = await asyncio.open_connection(*addr)
        assert writer.get_extra_info('peername') == addr
        assert await reader.read() == b'bye'
        assert peers == [writer.get_extra_info('sockname')]
        assert writer.transport.get_extra_info('socket') is writer.get_extra_info('socket')
        writer.close()
        await writer.wait_closed()
        assert writer.is_closing()


@pytest.mark.asyncio
@bounded()
async def test_reading_after_peer_reset_raises():
    import socket
    import struct

    async def reset(reader, writer):
        await reader.readexactly(4)
        sock = writer.get_extra_info('socket')
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
        writer.transport.abort()

    server, addr = await start(reset)
    async with server:
        reader, writer = await asyncio.open_connection(*addr)
        writer.write(b'ping')
        with pytest.raises(ConnectionResetError):
            await reader.read(100)
        writer.close()
        with pytest.raises(ConnectionResetError):
            await writer.wait_closed()


@pytest.mark.asyncio
@bounded()
async def test_open_connection_refused():
    import socket
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection('127.0.0.1', port)


@pytest.mark.asyncio
@bounded()
async def test_a_handler_runs_before_the_first_data_it_can_hold_back():
    # The stock loop runs the handler's first step before any data_received() of its
    # connection, even with the peer's bytes already waiting: a handler that pauses reading at
    # once finds its StreamReader empty.  (uringloop once delivered them first.)
    seen = asyncio.get_running_loop().create_future()

    async def handler(reader, writer):
        writer.transport.pause_reading()
        await asyncio.sleep(0.05)
        seen.set_result(bytes(reader._buffer))
        writer.transport.resume_reading()
        assert await reader.readexactly(5) == b'early'
        writer.close()

    server, addr = await start(handler)
    async with server:
        with socket.create_connection(addr) as client:
            client.sendall(b'early')          # waiting before the server accepts
            assert await asyncio.wait_for(seen, 10) == b''


@pytest.mark.asyncio
@bounded()
async def test_open_connection_returns_before_the_first_data():
    # Likewise on the client side: open_connection()'s caller resumes before the first
    # data_received(), so pausing right away holds back what the server sent at once.
    a, b = socket.socketpair()
    with b:
        b.sendall(b'at once')
        reader, writer = await asyncio.open_connection(sock=a)
        writer.transport.pause_reading()
        await asyncio.sleep(0.05)
        assert bytes(reader._buffer) == b''
        writer.transport.resume_reading()
        assert await reader.readexactly(7) == b'at once'
        writer.close()
        await writer.wait_closed()


async def _serve_bytes(payload, chunk):
    """A server that writes `payload` in `chunk`-sized writes to each client, then closes."""
    async def send(reader, writer):
        view = memoryview(payload)
        for i in range(0, len(payload), chunk):
            writer.write(view[i:i + chunk])
            await writer.drain()
        writer.close()
        await writer.wait_closed()
    return await start(send)


@pytest.mark.asyncio
@bounded(30)
async def test_messages_growing_and_shrinking_arrive_whole():
    """Request/response over streams with each message's size different from the last --
    growing past what the previous read took, shrinking below half of it, a byte apart, a
    whole ring buffer and back to small -- and the last one followed by the EOF: every byte
    arrives in order on both sides.  (Large reads into a StreamReader grow its buffer by what
    the last read took: a larger message fills that and the rest is read after it.)"""
    sizes = [20000, 20000, 100000, 16384, 16385, 16383, 300000, 17000, 65536, 65537, 1000,
             40000, 126976, 126977, 200, 50000, 16384]

    async def serve(reader, writer):
        try:
            while True:
                header = await reader.read(4)
                if not header:
                    break
                header += await reader.readexactly(4 - len(header))
                writer.write(await reader.readexactly(int.from_bytes(header, 'big')))
                await writer.drain()
        finally:
            writer.close()

    server, addr = await start(serve)
    async with server:
        reader, writer = await asyncio.open_connection(*addr)
        for size in sizes:
            message = os.urandom(size)
            writer.write(size.to_bytes(4, 'big') + message)
            assert await reader.readexactly(size) == message
        last = os.urandom(70000)
        writer.write(len(last).to_bytes(4, 'big') + last)
        writer.write_eof()
        assert await reader.read() == last
        writer.close()
        await writer.wait_closed()


class _IntLimit(int):
    """A limit of a subclass of int: the loop compares it in Python, not in C."""


@pytest.mark.asyncio
@pytest.mark.parametrize('chunk, limit', [(1024, 16 * 1024), (100 * 1024, 512 * 1024),
                                          (1024, _IntLimit(16 * 1024))])
@bounded(30)
async def test_messages_keep_the_readers_limit_while_nobody_reads(chunk, limit):
    """Small messages (received from the loop's buffer ring) and large ones (large reads)
    fill a StreamReader nobody reads: the transport pauses once the buffer holds more than
    twice the limit, the buffer stays bounded, and every byte arrives in order once read.
    (The limit is large enough for many reads to fill it; one of a subclass of int is compared
    as StreamReader compares it.)"""
    payload = os.urandom(4 * 1024 * 1024)
    server, addr = await _serve_bytes(payload, chunk)
    async with server:
        reader, writer = await asyncio.open_connection(*addr, limit=limit)
        transport = writer.transport
        for _ in range(200):
            await asyncio.sleep(0.01)
            if not transport.is_reading():
                break
        assert not transport.is_reading()
        # Paused after the read that crossed 2 x limit: at most one read more than that (the
        # stock loop reads up to 256 KiB at a time).
        assert 2 * limit < len(reader._buffer) <= 2 * limit + 256 * 1024
        assert await reader.read() == payload
        writer.close()
        await writer.wait_closed()


@pytest.mark.asyncio
@pytest.mark.parametrize('chunk', [1024, 100 * 1024])
@bounded(30)
async def test_messages_reach_a_stream_reader_subclass_through_feed_data(chunk):
    """A StreamReader subclass sees every byte through its own feed_data(), small messages
    and large reads alike, as on the stock loop."""
    class CountingReader(asyncio.StreamReader):
        fed = 0

        def feed_data(self, data):
            self.fed += len(data)
            super().feed_data(data)

    payload = os.urandom(2 * 1024 * 1024)
    server, addr = await _serve_bytes(payload, chunk)
    async with server:
        loop = asyncio.get_running_loop()
        reader = CountingReader(loop=loop)
        transport, _ = await loop.create_connection(
            lambda: asyncio.StreamReaderProtocol(reader, loop=loop), *addr)
        assert await reader.read() == payload
        assert reader.fed == len(payload)
        transport.close()


@pytest.mark.asyncio
@bounded()
async def test_a_patched_wakeup_waiter_wakes_the_reads(monkeypatch):
    """StreamReader._wakeup_waiter replaced on the class is what wakes a read() waiting for
    data (the loop runs the stock one inline; a replaced one must still be called)."""
    wakes = []
    stock_wakeup_waiter = asyncio.StreamReader._wakeup_waiter

    def wakeup_waiter(self):
        wakes.append(self._waiter is not None)
        stock_wakeup_waiter(self)

    monkeypatch.setattr(asyncio.StreamReader, '_wakeup_waiter', wakeup_waiter)
    server, addr = await start()
    async with server:
        reader, writer = await asyncio.open_connection(*addr)
        for i in range(5):
            writer.write(b'ping %d' % i)
            # Nothing can have come back yet: this read waits, and only a wake-up ends it.
            assert await reader.read(100) == b'ping %d' % i
        # The client's five reads waited, and so did the echo handler's reads.
        assert wakes.count(True) >= 10
        writer.close()
        await writer.wait_closed()


@pytest.mark.asyncio
@pytest.mark.parametrize('chunk', [1024, 100 * 1024])
@bounded(30)
async def test_messages_go_through_a_patched_feed_data(monkeypatch, chunk):
    """StreamReader.feed_data replaced on the class (instrumentation, a test double) is called
    for every byte, small messages and large reads alike."""
    seen = []
    stock_feed_data = asyncio.StreamReader.feed_data

    def feed_data(self, data):
        seen.append(len(data))
        stock_feed_data(self, data)

    monkeypatch.setattr(asyncio.StreamReader, 'feed_data', feed_data)
    payload = os.urandom(2 * 1024 * 1024)
    server, addr = await _serve_bytes(payload, chunk)
    async with server:
        reader, writer = await asyncio.open_connection(*addr)
        assert await reader.read() == payload
        assert sum(seen) == len(payload)
        writer.close()
        await writer.wait_closed()


@pytest.mark.asyncio
@pytest.mark.parametrize('chunk', [1024, 100 * 1024])
@bounded(30)
async def test_messages_go_through_a_feed_data_replaced_on_the_reader(chunk):
    """feed_data replaced on one reader instance (a test double, a tap) is called for every
    byte, as the stock transport's data_received() -> feed_data() calls it."""
    seen = []
    payload = os.urandom(2 * 1024 * 1024)
    server, addr = await _serve_bytes(payload, chunk)
    async with server:
        reader, writer = await asyncio.open_connection(*addr)
        stock_feed_data = reader.feed_data

        def feed_data(data):
            seen.append(len(data))
            stock_feed_data(data)

        reader.feed_data = feed_data
        received = await reader.read()
        # What arrived before the replacement went in the stock way.
        assert received == payload and 0 < sum(seen) <= len(payload)
        writer.close()
        await writer.wait_closed()
