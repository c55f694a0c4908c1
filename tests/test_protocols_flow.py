"""Stream transports with large data and flow control: large transfers and reads, many
connections at once, the receive ring's memory, pause_reading()/resume_reading(), write
buffer limits and pause_writing()/resume_writing() -- run on uringloop and on the stock loop."""

import asyncio
import contextlib
import os
import socket
import sys

import pytest

import uringloop

from helpers import bounded, pattern
from protocol_helpers import Recorder, EchoProtocol, connected_pair, shut, full_socket_pair_with


@pytest.mark.asyncio
@bounded()
async def test_large_transfer_both_directions_byte_for_byte():
    class Echo(Recorder):
        def data_received(self, data):
            super().data_received(data)
            self.transport.write(data)

    server, peer, client = await connected_pair(Echo)
    payload = os.urandom(16 * 1024 * 1024)
    view = memoryview(payload)
    for i in range(0, len(payload), 1 << 20):
        client.transport.write(view[i:i + (1 << 20)])
    assert await client.received(len(payload)) == payload
    assert bytes(peer.data) == payload
    await shut(server, client, peer)


@pytest.mark.asyncio
@bounded()
async def test_pause_reading_with_data_in_flight_loses_and_reorders_nothing():
    """Pause from inside data_received while the peer keeps sending: no data_received while
    paused, and after each resume every byte arrives, in order."""
    loop = asyncio.get_running_loop()

    class Pausing(Recorder):
        paused_calls = 0
        pauses = 0

        def data_received(self, data):
            if not self.transport.is_reading():
                Pausing.paused_calls += 1
            super().data_received(data)
            if len(self.data) // 200_000 > self.pauses:
                self.pauses += 1
                self.transport.pause_reading()
                assert not self.transport.is_reading()
                loop.call_later(0.01, self.transport.resume_reading)

    server, peer, client = await connected_pair(client_protocol=Pausing)
    payload = pattern(8 * 1024 * 1024)
    for i in range(0, len(payload), 100_000):
        peer.transport.write(payload[i:i + 100_000])
    peer.transport.write_eof()
    assert await client.received(len(payload)) == payload
    await client.eof
    # One pause per data_received() call at most: chunks are up to 256 KiB on the stock loop
    # and on uringloop up to a provided buffer (32 KiB) or a large read (124 KiB).
    assert client.pauses >= 5
    assert Pausing.paused_calls == 0
    assert client.events[:3] == ['made', 'data', 'eof']
    await shut(server, client, peer)


@pytest.mark.asyncio
@bounded(60)
async def test_many_connections_with_large_messages_lose_nothing():
    """32 connections each receive 768 KiB sent all at once, more than the loop's shared receive
    buffers hold at first (uringloop: 4 MiB, growing up to 32 MiB): receives that find no buffer
    (-ENOBUFS) are re-armed on the grown ring or continue into buffers of their own; every byte
    arrives, in order, on every connection."""
    import threading
    loop = asyncio.get_running_loop()
    size, count = 768 * 1024, 32
    done = {}
    all_done = loop.create_future()

    class Collector(asyncio.Protocol):
        def connection_made(self, transport):
            self.data = bytearray()

        def data_received(self, data):
            assert type(data) is bytes
            self.data += data

        def eof_received(self):
            done[bytes(self.data[:4])] = bytes(self.data)
            if len(done) == count and not all_done.done():
                all_done.set_result(None)

    server = await loop.create_server(Collector, '127.0.0.1', 0)
    address = server.sockets[0].getsockname()[:2]
    payloads = [pattern(size, seed=i * size) for i in range(count)]
    clients = [socket.create_connection(address) for _ in range(count)]

    def send_all():
        for sock, payload in zip(clients, payloads):
            sock.sendall(payload[:size // 2])
        for sock, payload in zip(clients, payloads):
            sock.sendall(payload[size // 2:])
            sock.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send_all)
    sender.start()
    try:
        await all_done
    finally:
        await loop.run_in_executor(None, sender.join)
        for sock in clients:
            sock.close()
        server.close()
        await server.wait_closed()
    assert sorted(done.values()) == sorted(payloads)


@pytest.mark.asyncio
@bounded(60)
async def test_data_waiting_on_many_connections_at_once_arrives_whole():
    """64 connections each have 256 KiB waiting before the loop looks at any of them -- 16 MiB,
    four times uringloop's initial shared receive buffers: on uringloop the ring runs dry and
    grows (BufferRing.grow); on every loop each connection gets its bytes whole and in order."""
    loop = asyncio.get_running_loop()
    size, count = 256 * 1024, 64
    received = {}
    connected = []

    class Collector(asyncio.Protocol):
        def connection_made(self, transport):
            self.data = bytearray()
            connected.append(self)

        def data_received(self, data):
            self.data += data
            if len(self.data) == size:
                received[bytes(self.data[:4])] = bytes(self.data)

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)   # accepted sockets too
    listener.bind(('127.0.0.1', 0))
    listener.listen(count)
    server = await loop.create_server(Collector, sock=listener)
    clients = []
    try:
        for _ in range(count):
            client = socket.create_connection(listener.getsockname())
            client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            clients.append(client)
        while len(connected) < count:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)           # every transport's receive is armed
        ring = getattr(loop, '_ul_recv_ring', None)
        initial = ring.count if ring else None
        payloads = [pattern(size, seed=i * size) for i in range(count)]
        for client, payload in zip(clients, payloads):   # the loop is not running meanwhile
            client.sendall(payload)
        while len(received) < count:
            await asyncio.sleep(0.01)
        assert sorted(received.values()) == sorted(payloads)
        if ring:
            assert ring.count > initial
    finally:
        for client in clients:
            client.close()
        server.close()
        await server.wait_closed()


class OneWay:
    """The client writes, the peer receives: send() waits until everything sent so far has
    arrived, whole and in order."""

    def __init__(self, client, peer):
        self.client, self.peer, self.sent = client, peer, bytearray()

    async def send(self, data):
        self.sent.extend(data)
        self.client.transport.write(data)
        assert await self.peer.received(len(self.sent)) == bytes(self.sent)


def large_read_size(peer):
    """On uringloop, the buffer size of the peer transport's next large read (0 while it reads
    from the shared ring); None on other loops."""
    if not isinstance(asyncio.get_running_loop(), uringloop.Loop):
        return lambda: None
    return lambda: peer.transport._ul_large_read_size


@pytest.mark.asyncio
@bounded(60)
async def test_large_reads_then_small_then_large_arrive_whole_and_in_order():
    """A stream of large writes, then a trickle of small ones, then large again.  On uringloop
    the large reads move the connection off the shared ring to a poll and a recv(2) into bytes
    of its own (the multishot receive is cancelled while data keeps arriving), the small ones
    move it back: every byte arrives once and in order across both switches, on every loop."""
    server, peer, client = await connected_pair()
    send, large = OneWay(client, peer).send, large_read_size(peer)
    big = 4 * 1024 * 1024
    await send(pattern(big))
    if large() is not None:
        assert large() > 0
    for i in range(20):                          # one small message per round trip
        await send(pattern(100, seed=big + 100 * i))
    if large() is not None:
        assert large() == 0
    await send(pattern(big, seed=2 * big))
    if large() is not None:
        assert large() > 0
    assert peer.events == ['made', 'data']
    await shut(server, client, peer)


@pytest.mark.asyncio
@bounded(60)
async def test_a_connection_idle_after_large_reads_holds_no_receive_buffer():
    """On uringloop a connection whose last reads were large waits for the next one with a
    poll, which lends the kernel no buffer (10,000 keep-alive connections idle after an upload
    must not hold 124 KiB each).  Large messages after the pause still arrive whole and in
    order, and a small one after them too; the same exchange on the stock loop."""
    server, peer, client = await connected_pair()
    send, large = OneWay(client, peer).send, large_read_size(peer)
    big = 1024 * 1024
    await send(pattern(big))
    await asyncio.sleep(0.1)                     # idle
    if large() is not None:
        assert large() > 0                      # still a large-message reader ...
        assert not peer.transport._ul_receive_holds_buffer   # ... waiting without a buffer
    await send(pattern(big, seed=big))
    await asyncio.sleep(0.1)
    await send(pattern(100, seed=2 * big))
    assert peer.events == ['made', 'data']
    await shut(server, client, peer)


@pytest.mark.asyncio
@bounded(60)
async def test_paused_while_waiting_after_large_reads_then_resumed():
    """A connection that has been reading large messages is paused while it waits for the next
    one (on uringloop: while its poll waits in the kernel, which pausing cancels), then the
    peer sends more and ends its side.  Nothing is delivered
    while paused -- neither data nor EOF; after resume_reading() all of it arrives, in order,
    then EOF; on every loop."""
    server, peer, client = await connected_pair()
    send, large = OneWay(client, peer).send, large_read_size(peer)
    big = 512 * 1024
    await send(pattern(big))
    if large() is not None:
        assert large() > 0                       # it waits as a large-message reader
    peer.transport.pause_reading()
    more = pattern(3 * big, seed=big)
    client.transport.write(more)
    client.transport.write_eof()
    await asyncio.sleep(0.2)
    assert len(peer.data) == big and 'eof' not in peer.events
    peer.transport.resume_reading()
    assert await peer.received(4 * big) == pattern(big) + more
    await peer.eof
    assert peer.events == ['made', 'data', 'eof']
    await shut(server, client, peer)


def _rss_bytes():
    with open('/proc/self/status') as status:
        for line in status:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) * 1024
    raise AssertionError('no VmRSS in /proc/self/status')


def test_the_receive_ring_takes_memory_only_where_the_kernel_wrote():
    """uringloop maps its shared receive ring for what it may grow to (32 MiB) when the first
    connection receives; only the pages the kernel writes into may count in the process's
    memory, not the whole capacity."""
    loop = uringloop.new_event_loop()
    try:
        if not loop._features.get('multishot_recv'):
            pytest.skip('no multishot receive: no shared ring')

        async def one_receive():
            got = loop.create_future()

            class Once(asyncio.Protocol):
                def data_received(self, data):
                    if not got.done():
                        got.set_result(data)

            server = await loop.create_server(Once, '127.0.0.1', 0)
            client = socket.create_connection(server.sockets[0].getsockname())
            try:
                before = _rss_bytes()
                client.sendall(b'x' * 1024)
                assert await got == b'x' * 1024
                return _rss_bytes() - before
            finally:
                client.close()
                server.close()
                await server.wait_closed()

        grown = loop.run_until_complete(asyncio.wait_for(one_receive(), 10))
        ring = loop._ul_recv_ring
        assert ring.capacity * ring.buf_size >= 16 * 1024 * 1024
        assert grown < 8 * 1024 * 1024
    finally:
        loop.close()


@pytest.mark.asyncio
@bounded(60)
async def test_timers_and_threadsafe_callbacks_run_while_many_connections_are_busy():
    """Under load (many completions per iteration) uringloop's wait asks the kernel for a batch
    of completions; timers and call_soon_threadsafe() from another thread must still get
    through while every connection is busy, as on the stock loop."""
    import threading
    loop = asyncio.get_running_loop()

    server = await loop.create_server(EchoProtocol, '127.0.0.1', 0)
    address = server.sockets[0].getsockname()[:2]
    streams = [await asyncio.open_connection(*address) for _ in range(40)]
    stop = False

    async def ping_pong(reader, writer):
        while not stop:
            writer.write(b'x' * 1024)
            await reader.readexactly(1024)

    workers = [asyncio.ensure_future(ping_pong(r, w)) for r, w in streams]
    ticks = []
    from_thread = []
    try:
        for i in range(20):
            await asyncio.sleep(0.005)          # a timer, due while the echoes run
            ticks.append(i)
        for i in range(20):
            arrived = loop.create_future()
            threading.Thread(target=loop.call_soon_threadsafe,
                             args=(arrived.set_result, i)).start()
            from_thread.append(await arrived)
    finally:
        stop = True
        await asyncio.gather(*workers)
        for _, writer in streams:
            writer.close()
        server.close()
        await server.wait_closed()
    assert ticks == list(range(20)) and from_thread == list(range(20))


@pytest.mark.asyncio
@bounded()
async def test_pause_resume_reading_idempotent_and_eof_while_paused():
    server, peer, client = await connected_pair()
    t = client.transport
    t.pause_reading()
    t.pause_reading()
    assert not t.is_reading()
    peer.transport.write(b'while paused')
    peer.transport.close()
    await peer.lost
    await asyncio.sleep(0.05)
    assert client.events == ['made']           # nothing delivered while paused, not even EOF
    t.resume_reading()
    t.resume_reading()
    assert t.is_reading()
    await client.eof
    assert bytes(client.data) == b'while paused'
    assert await client.lost is None
    assert client.events == ['made', 'data', 'eof', 'lost']
    assert not t.is_reading()                  # closing
    server.close()
    await server.wait_closed()


@pytest.mark.asyncio
@bounded()
@pytest.mark.parametrize("held", ["eof", "data"])
@pytest.mark.parametrize("resumed", ["a later iteration", "the same pass"])
async def test_what_came_while_paused_follows_the_callbacks_queued_after_resume_reading(
        held, resumed):
    """uvicorn with pipelined requests and a client that then shuts its side: reading is
    paused while a response is written, resumed (and paused again) between requests, and at
    the last one resumed and followed by the task for the next request.  The stock loop reads
    what came meanwhile -- the client's EOF -- at its next poll, after that task's first step
    has written the response; delivered first, the EOF closed the transport and the response
    was dropped.  Here what came is kept by the transport (a receive resumed and paused again
    took it), and must wait for the same callbacks."""
    loop = asyncio.get_running_loop()

    class PausesOnData(Recorder):
        def data_received(self, data):
            super().data_received(data)
            if data == b'first':
                self.transport.pause_reading()

    server, peer, client = await connected_pair(client_protocol=PausesOnData)
    t = client.transport
    peer.transport.write(b'first')
    await client.received(5)
    if held == 'eof':
        peer.transport.write_eof()
    else:
        peer.transport.write(b'second')
    await asyncio.sleep(0.05)
    t.resume_reading()
    t.pause_reading()           # the receive resumed takes what came, then is stopped
    await asyncio.sleep(0.05)
    assert client.events == ['made', 'data']

    async def next_request():
        client.events.append('task')

    def resume_and_go_on():
        t.resume_reading()
        loop.call_soon(client.events.append, 'queued')
        loop.create_task(next_request())

    if resumed == 'the same pass':
        t.resume_reading()
        t.pause_reading()
        loop.call_soon(resume_and_go_on)
    else:
        resume_and_go_on()
    if held == 'eof':
        await client.eof
    else:
        await client.received(11)
    assert client.events == ['made', 'data', 'queued', 'task', held if held == 'eof' else 'data']
    await shut(server, client, peer)


@pytest.mark.asyncio
@bounded()
async def test_the_eof_after_resumed_bytes_comes_a_readiness_round_after_them():
    """The peer wrote and shut its side while reading was paused; both wait in the socket.
    The stock loop reads the bytes at the first poll after resume_reading() and the EOF at the
    next one: eof_received() comes after everything the ready pass between the two queued.
    (Where the bytes themselves land among the callbacks is not compared: a receive the loop
    arms completes in the same iteration, README.)  One pass sooner, the EOF closed the
    transport under a callback the stock loop runs with it open."""
    loop = asyncio.get_running_loop()
    trace = []

    class Traced(Recorder):
        def eof_received(self):
            trace.append('eof')
            return super().eof_received()

        def connection_lost(self, exc):
            trace.append('lost')
            super().connection_lost(exc)

    server, peer, client = await connected_pair(client_protocol=Traced)
    client.transport.pause_reading()
    peer.transport.write(b'hello')
    peer.transport.write_eof()
    await asyncio.sleep(0.05)
    client.transport.resume_reading()
    loop.call_soon(trace.append, 'queued with the resume')
    await asyncio.sleep(0)
    trace.append('next pass')
    loop.call_soon(trace.append, 'queued in the next pass')
    await asyncio.sleep(0)
    trace.append('pass after')
    loop.call_soon(trace.append, 'queued in the pass after')
    await client.lost
    await asyncio.sleep(0.01)
    assert bytes(client.data) == b'hello'
    assert trace == ['queued with the resume', 'next pass', 'queued in the next pass',
                     'pass after', 'eof', 'queued in the pass after', 'lost']
    await shut(server, peer)


class HopTracer(Recorder):
    """Traces data_received(), a call_soon() chain of three hops it starts (hop(n) runs hop n
    and queues hop n + 1), eof_received() and connection_lost() into `trace`; `accepted`
    resolves to the protocol at connection_made()."""

    def __init__(self, trace, accepted):
        super().__init__()
        self.trace = trace
        self.accepted = accepted

    def connection_made(self, transport):
        super().connection_made(transport)
        self.accepted.set_result(self)

    def data_received(self, data):
        super().data_received(data)
        self.trace.append('data')
        self.loop.call_soon(self.hop, 1)

    def hop(self, n):
        self.trace.append(f'hop{n}')
        if n < 3:
            self.loop.call_soon(self.hop, n + 1)

    def eof_received(self):
        self.trace.append('eof')
        return super().eof_received()

    def connection_lost(self, exc):
        self.trace.append('lost')
        super().connection_lost(exc)


@contextlib.asynccontextmanager
async def plain_socket_peer(tracer_class, trace):
    """A server whose connection gets a `tracer_class` protocol, and a plain non-blocking
    socket connected to it: (socket, future of the server-side protocol); both closed on
    leaving."""
    loop = asyncio.get_running_loop()
    accepted = loop.create_future()
    server = await loop.create_server(lambda: tracer_class(trace, accepted), '127.0.0.1', 0)
    peer = socket.socket()
    peer.setblocking(False)
    try:
        await loop.sock_connect(peer, server.sockets[0].getsockname())
        yield peer, accepted
    finally:
        peer.close()
        server.close()
        await server.wait_closed()


async def lost_after_request(protocol):
    """Waits for the connection's end (and a moment for whatever would follow it), then
    checks that the request arrived whole."""
    await protocol.lost
    await asyncio.sleep(0.01)
    assert bytes(protocol.data) == b'request'


@pytest.mark.asyncio
@bounded()
@pytest.mark.parametrize('when', ['before the first read', 'while reading',
                                  'shut by a callback after the bytes'])
async def test_the_eof_comes_a_readiness_round_after_the_last_bytes(when):
    """A peer (a plain socket) sends a request and shuts its side.  The stock loop reads the
    bytes in one round and the EOF at its next poll: eof_received() runs after the callback
    data_received() queued (hop 1) and before what that one queues (hop 2) -- also when the
    bytes and the EOF arrive together, which the kernel may complete in one batch.  (A pass
    later, aiohttp and gunicorn answered a request whose client had shut its side where the
    stock loop and uvloop close without answering.)  Shut by hop 1 itself, the EOF is seen at
    the poll after hop 1's pass: after hop 2, before hop 3."""
    trace = []

    class ShutByHop1(HopTracer):
        def hop(self, n):
            if n == 1 and when == 'shut by a callback after the bytes':
                peer.shutdown(socket.SHUT_WR)
            super().hop(n)

    async with plain_socket_peer(ShutByHop1, trace) as (peer, accepted):
        if when == 'before the first read':
            peer.send(b'request')
            peer.shutdown(socket.SHUT_WR)
        protocol = await accepted
        if when != 'before the first read':
            await asyncio.sleep(0.05)     # reading, the receive in the kernel
            peer.send(b'request')
            if when == 'while reading':
                peer.shutdown(socket.SHUT_WR)
        await lost_after_request(protocol)
        if when == 'shut by a callback after the bytes':
            assert trace == ['data', 'hop1', 'hop2', 'eof', 'hop3', 'lost']
        else:
            assert trace == ['data', 'hop1', 'eof', 'hop2', 'lost', 'hop3']


@pytest.mark.asyncio
@bounded()
async def test_an_eof_that_came_while_paused_follows_what_the_pass_before_the_resume_queued():
    """The peer sends a request and shuts its side at once; data_received() pauses reading, and
    the callback it queued resumes it.  The stock loop reads the EOF at the poll after that
    callback's pass: after what the pass queued (hop 2).  The EOF completing while paused
    scheduled its own delivery, which ran in the resuming pass, ahead of hop 2."""
    trace = []

    class PausedUntilHop1(HopTracer):
        def data_received(self, data):
            super().data_received(data)
            self.transport.pause_reading()

        def hop(self, n):
            if n == 1:
                self.transport.resume_reading()
            super().hop(n)

    async with plain_socket_peer(PausedUntilHop1, trace) as (peer, accepted):
        protocol = await accepted
        await asyncio.sleep(0.05)
        peer.send(b'request')
        peer.shutdown(socket.SHUT_WR)
        await lost_after_request(protocol)
        assert trace == ['data', 'hop1', 'hop2', 'eof', 'hop3', 'lost']


@pytest.mark.asyncio
@bounded()
async def test_pause_reading_in_connection_made():
    class StartsPaused(Recorder):
        def connection_made(self, transport):
            super().connection_made(transport)
            transport.pause_reading()

    if sys.version_info < (3, 11) and not isinstance(asyncio.get_running_loop(), uringloop.Loop):
        pytest.skip("Python 3.10's stock transport ignores pause_reading() in connection_made()")
    server, peer, client = await connected_pair(client_protocol=StartsPaused)
    peer.transport.write(b'hello')
    await asyncio.sleep(0.05)
    assert client.events == ['made']
    client.transport.resume_reading()
    assert await client.received(5) == b'hello'
    await shut(server, client, peer)


@pytest.mark.asyncio
@bounded(30)
async def test_slow_reader_pauses_and_resumes_writing():
    """A writer that respects pause_writing() against a peer that stops reading: it is paused
    once the kernel's buffers are full, resumed when the peer reads again, nothing is lost."""
    loop = asyncio.get_running_loop()

    class Writer(Recorder):
        def __init__(self):
            super().__init__()
            self.flow = []
            self.writable = loop.create_future()
            self.writable.set_result(None)

        def pause_writing(self):
            assert self.flow[-1:] != ['pause']
            self.flow.append('pause')
            self.writable = loop.create_future()

        def resume_writing(self):
            assert self.flow[-1:] == ['pause']
            self.flow.append('resume')
            self.writable.set_result(None)

    server, peer, client = await connected_pair(client_protocol=Writer)
    t = client.transport
    assert t.get_write_buffer_limits() == (16384, 65536)
    peer.transport.pause_reading()
    chunk = pattern(256 * 1024)
    total = 64 * 1024 * 1024
    sent = 0

    async def produce():
        nonlocal sent
        while sent < total:
            await client.writable
            t.write(chunk)
            sent += len(chunk)
            await asyncio.sleep(0)

    producer = asyncio.ensure_future(produce())
    # Wait until the writer is stuck: paused, with more than the high-water mark buffered.
    stuck_at = None
    while stuck_at is None or sent != stuck_at:
        stuck_at = sent if client.flow[-1:] == ['pause'] else None
        await asyncio.sleep(0.05)
    assert sent < total
    assert t.get_write_buffer_size() > 65536
    peer.transport.resume_reading()
    await producer
    assert await peer.received(total) == chunk * (total // len(chunk))
    await client.writable
    assert client.flow[0] == 'pause' and client.flow[-1] == 'resume'
    assert t.get_write_buffer_size() <= 16384
    await shut(server, client, peer)


def _unix_pair_capacity():
    """How many bytes a fresh AF_UNIX socket pair takes before the sender would block."""
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        taken = 0
        try:
            while True:
                taken += a.send(b"c" * 65536)
        except BlockingIOError:
            return taken


@pytest.mark.asyncio
@bounded(30)
@pytest.mark.parametrize("writes", [1, 2], ids=["one_write", "queued_behind_a_send"])
async def test_a_paused_writer_resumes_once_the_kernel_has_taken_enough_of_a_large_write(writes):
    """The peer reads what the kernel holds of a large write and then waits: the kernel takes
    most of the rest, and with what is left below the low-water mark the protocol is resumed
    -- the stock transport's buffer shrinks with each send(2).  (uringloop counted a send's
    bytes off only at its completion: the protocol stayed paused until the peer had read
    nearly all of it, which a peer waiting for the protocol never would.)"""
    loop = asyncio.get_running_loop()

    class Writer(asyncio.Protocol):
        def __init__(self):
            self.flow = []
            self.resumed = loop.create_future()

        def pause_writing(self):
            self.flow.append("pause")

        def resume_writing(self):
            self.flow.append("resume")
            self.resumed.set_result(None)

    capacity = _unix_pair_capacity()
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    transport, proto = await loop.create_connection(Writer, sock=ours)
    transport.set_write_buffer_limits(high=65536, low=50000)
    payload = pattern(2 * capacity + 8000)
    if writes == 1:
        transport.write(payload)
    else:
        half = len(payload) // 2
        transport.write(payload[:half])
        await asyncio.sleep(0)          # (the first half in flight: the rest is queued)
        transport.write(payload[half:])
    await asyncio.sleep(0.05)
    assert proto.flow == ["pause"]
    assert transport.get_write_buffer_size() > 65536
    got = bytearray()
    while len(got) < capacity:          # what the kernel holds, and no more
        try:
            got += theirs.recv(capacity - len(got))
        except BlockingIOError:
            await asyncio.sleep(0.001)
    await asyncio.wait_for(proto.resumed, 10)
    assert proto.flow == ["pause", "resume"]
    assert transport.get_write_buffer_size() <= 50000
    while len(got) < len(payload):
        try:
            got += theirs.recv(1 << 20)
        except BlockingIOError:
            await asyncio.sleep(0.001)
    assert got == payload
    assert transport.get_write_buffer_size() == 0
    transport.close()
    theirs.close()


@pytest.mark.asyncio
@bounded()
async def test_write_buffer_limits():
    loop = asyncio.get_running_loop()
    server, peer, client = await connected_pair()
    t = client.transport
    t.set_write_buffer_limits(high=1000)
    assert t.get_write_buffer_limits() == (250, 1000)
    t.set_write_buffer_limits(low=100)
    assert t.get_write_buffer_limits() == (100, 400)
    t.set_write_buffer_limits(high=10, low=5)
    assert t.get_write_buffer_limits() == (5, 10)
    t.set_write_buffer_limits(0, 0)
    assert t.get_write_buffer_limits() == (0, 0)
    with pytest.raises(ValueError):
        t.set_write_buffer_limits(high=1, low=2)
    with pytest.raises(ValueError):
        t.set_write_buffer_limits(high=-1)
    t.set_write_buffer_limits()
    assert t.get_write_buffer_limits() == (16384, 65536)
    assert t.get_write_buffer_size() == 0
    await shut(server, client, peer)


@pytest.mark.asyncio
@bounded()
async def test_write_buffer_limits_of_any_real_number():
    # The stock transports take any number (high=1e6 is a float, and no size is too large) and
    # compare the bytes they hold with it; the pauses and resumes must come where they do there.
    class Flow(Recorder):
        def __init__(self):
            super().__init__()
            self.flow = []
            self.resumed = self.loop.create_future()

        def pause_writing(self):
            self.flow.append('pause')

        def resume_writing(self):
            self.flow.append('resume')
            self.resumed.set_result(None)

    server, peer, client = await full_socket_pair_with(Flow)
    t = client.transport
    t.set_write_buffer_limits(high=1e6)
    assert t.get_write_buffer_limits() == (250_000, 1_000_000)
    # ... and give them back as they were given (uringloop gave their floors: (25, 100)).
    t.set_write_buffer_limits(high=100.5)
    assert t.get_write_buffer_limits() == (25.0, 100.5)
    assert type(t.get_write_buffer_limits()[0]) is float
    t.set_write_buffer_limits(high=2 ** 70)
    payload = pattern(1_000_000)
    t.write(payload)
    assert t.get_write_buffer_size() > 0 and client.flow == []
    t.set_write_buffer_limits(high=0.5, low=0.25)    # above 0.5 bytes: any byte held
    assert client.flow == ['pause']
    peer.transport.resume_reading()
    await client.resumed                            # at 0.25 bytes: when none is left
    assert t.get_write_buffer_size() == 0 and client.flow == ['pause', 'resume']
    assert await peer.received(len(payload)) == payload
    await shut(server, client, peer)


@pytest.mark.asyncio
@bounded()
async def test_pause_writing_on_lowered_limits_and_failing_callbacks():
    loop = asyncio.get_running_loop()
    errors = []
    loop.set_exception_handler(lambda loop, ctx: errors.append(ctx))

    class Failing(Recorder):
        def pause_writing(self):
            raise ZeroDivisionError('pause')

        def resume_writing(self):
            raise ZeroDivisionError('resume')

    server, peer, client = await connected_pair(client_protocol=Failing)
    peer.transport.pause_reading()
    t = client.transport
    t.set_write_buffer_limits(high=0)
    for _ in range(1024):
        t.write(b'q' * 65536)
        if t.get_write_buffer_size():
            break
        await asyncio.sleep(0)
    assert [ctx['message'] for ctx in errors] == ['protocol.pause_writing() failed']
    assert isinstance(errors[0]['exception'], ZeroDivisionError)
    assert errors[0]['transport'] is t and errors[0]['protocol'] is client
    peer.transport.resume_reading()
    while len(errors) < 2:
        await asyncio.sleep(0.01)
    assert errors[1]['message'] == 'protocol.resume_writing() failed'
    assert not t.is_closing()             # the transport survives failing flow callbacks
    await shut(server, client, peer)
