"""Stream transports through the Protocol API: create_connection/create_server and the transport
methods, written once and run on uringloop and on the stock loop (the oracle)."""

import array
import asyncio
import contextlib
import contextvars
import errno
import functools
import gc
import os
import socket
import struct
import subprocess
import sys
import textwrap
import warnings

import pytest

import uringloop

from helpers import PACKAGE_PARENT, bounded, child_env, pattern

class Recorder(asyncio.Protocol):
    """Records every protocol call; futures for the moments tests wait on."""

    def __init__(self, keep_open=False):
        self.loop = asyncio.get_running_loop()
        self.transport = None
        self.events = []
        self.data = bytearray()
        self.keep_open = keep_open
        self.made = self.loop.create_future()
        self.eof = self.loop.create_future()
        self.lost = self.loop.create_future()
        self._want = None

    def connection_made(self, transport):
        self.transport = transport
        self.events.append('made')
        self.made.set_result(transport)

    def data_received(self, data):
        assert type(data) is bytes
        if not self.events or self.events[-1] != 'data':
            self.events.append('data')
        self.data += data
        if self._want is not None and len(self.data) >= self._want[0]:
            fut = self._want[1]
            self._want = None
            if not fut.done():
                fut.set_result(None)

    def eof_received(self):
        self.events.append('eof')
        self.eof.set_result(None)
        return self.keep_open

    def connection_lost(self, exc):
        self.events.append('lost')
        self.lost.set_result(exc)

    async def received(self, n):
        if len(self.data) < n:
            fut = self.loop.create_future()
            self._want = (n, fut)
            await asyncio.wait({fut, self.lost}, return_when=asyncio.FIRST_COMPLETED)
        return bytes(self.data)


class EchoProtocol(asyncio.Protocol):
    """Writes back whatever it receives."""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


async def connected_pair(server_protocol=Recorder, client_protocol=Recorder):
    """A server and one connection to it: (server, server-side protocol, client protocol)."""
    loop = asyncio.get_running_loop()
    accepted = loop.create_future()

    def factory():
        proto = server_protocol()
        if not accepted.done():
            accepted.set_result(proto)
        return proto

    server = await loop.create_server(factory, '127.0.0.1', 0)
    host, port = server.sockets[0].getsockname()[:2]
    _, client = await loop.create_connection(client_protocol, host, port)
    peer = await accepted
    await peer.made
    return server, peer, client


async def recording_server():
    """A server on 127.0.0.1 whose connections each get a Recorder: (server, their list)."""
    accepted = []

    def factory():
        accepted.append(Recorder())
        return accepted[-1]

    server = await asyncio.get_running_loop().create_server(factory, '127.0.0.1', 0)
    return server, accepted


async def shut(server, *protocols):
    for proto in protocols:
        if proto.transport is not None:
            proto.transport.close()
    for proto in protocols:
        if proto.transport is not None:
            await proto.lost
    server.close()
    await server.wait_closed()


@pytest.mark.asyncio
@bounded()
async def test_connection_made_runs_before_create_connection_returns():
    server, peer, client = await connected_pair()
    assert client.made.done()
    assert client.events == ['made']
    transport = client.transport
    assert transport.get_protocol() is client
    assert not transport.is_closing()
    assert transport.is_reading()
    await shut(server, client, peer)


# ---- create_connection() to an IPv4 literal (uringloop's short path: see network.py) ----

@pytest.mark.asyncio
@bounded()
async def test_connection_to_an_ipv4_literal_gets_the_socket_the_stock_loop_makes():
    """The socket _connect_sock() makes from _ipaddr_info()'s answer: AF_INET, SOCK_STREAM,
    IPPROTO_TCP, non-blocking -- with the defaults also given explicitly."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Recorder, '127.0.0.1', 0)
    port = server.sockets[0].getsockname()[1]
    explicit = {'ssl': None, 'family': 0, 'proto': 0, 'flags': 0, 'sock': None,
                'local_addr': None, 'server_hostname': None}
    clients = []
    for kwargs in [{}, explicit]:
        transport, client = await loop.create_connection(Recorder, '127.0.0.1', port, **kwargs)
        clients.append(client)
        sock = transport.get_extra_info('socket')
        assert (sock.family, sock.type, sock.proto) == (
            socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        assert sock.gettimeout() == 0
        assert transport.get_extra_info('peername') == ('127.0.0.1', port)
        assert client.events == ['made']
    await shut(server, *clients)


@pytest.mark.asyncio
@bounded()
async def test_a_refused_connection_to_an_ipv4_literal_raises_as_on_the_stock_loop():
    """create_connection() raises the one exception _connect_sock() collected, as it is, and
    closes the socket (one left to the garbage collector warns)."""
    loop = asyncio.get_running_loop()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always', ResourceWarning)
        with socket.socket() as probe:
            probe.bind(('127.0.0.1', 0))
            port = probe.getsockname()[1]       # bound, not listening: refused
            with pytest.raises(ConnectionRefusedError) as raised:
                await loop.create_connection(asyncio.Protocol, '127.0.0.1', port)
        assert str(raised.value) == (
            f"[Errno {errno.ECONNREFUSED}] Connect call failed ('127.0.0.1', {port})")
        del raised                  # its traceback holds the frames that held the socket
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []
    with pytest.raises(TypeError):
        await loop.create_connection(asyncio.Protocol, '127.0.0.1', port, no_such_option=1)


@pytest.mark.asyncio
@bounded()
async def test_connection_to_an_ipv4_literal_goes_through_a_replaced_connect_sock():
    """A _connect_sock replaced on the loop (a test's mock, an instrumented subclass) makes the
    socket, as on the stock loop."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Recorder, '127.0.0.1', 0)
    port = server.sockets[0].getsockname()[1]
    asked = []
    original = loop._connect_sock

    async def spy(exceptions, addr_info, *args):
        asked.append(addr_info[4])
        return await original(exceptions, addr_info, *args)

    loop._connect_sock = spy
    try:
        _, client = await loop.create_connection(Recorder, '127.0.0.1', port)
    finally:
        del loop._connect_sock
    assert asked == [('127.0.0.1', port)]
    await shut(server, client)


@pytest.mark.asyncio
@bounded()
async def test_extra_info():
    server, peer, client = await connected_pair()
    t = client.transport
    sock = t.get_extra_info('socket')
    assert isinstance(sock, asyncio.trsock.TransportSocket)
    assert sock.family == socket.AF_INET and sock.type == socket.SOCK_STREAM
    assert t.get_extra_info('sockname') == sock.getsockname()
    assert t.get_extra_info('peername') == server.sockets[0].getsockname()
    assert peer.transport.get_extra_info('peername') == t.get_extra_info('sockname')
    assert peer.transport.get_extra_info('sockname') == t.get_extra_info('peername')
    assert t.get_extra_info('no such thing') is None
    assert t.get_extra_info('no such thing', 42) == 42
    # TCP_NODELAY on both ends, as the stock loop sets it.
    for transport in (t, peer.transport):
        s = transport.get_extra_info('socket')
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    assert f"fd={sock.fileno()}" in repr(t)
    # The same TransportSocket every time, in the stock transport's dict too, and after close.
    assert t.get_extra_info('socket') is sock
    assert t._extra['socket'] is sock
    other = peer.transport
    await shut(server, client, peer)
    assert t.get_extra_info('socket') is sock
    first = other.get_extra_info('socket')        # first asked for after the connection ended
    assert isinstance(first, asyncio.trsock.TransportSocket)
    assert other.get_extra_info('socket') is first


@pytest.mark.asyncio
@bounded()
async def test_nodelay_only_where_the_stock_loop_sets_it():
    """TCP_NODELAY goes on sockets of protocol IPPROTO_TCP only: a TCP socket made with protocol
    0 (socket.socket()'s default) is left as it is, and an AF_UNIX one works as well."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(asyncio.Protocol, '127.0.0.1', 0)
    raw = socket.socket()
    assert raw.proto == 0
    raw.setblocking(False)
    await loop.sock_connect(raw, server.sockets[0].getsockname())
    transport, _ = await loop.create_connection(asyncio.Protocol, sock=raw)
    assert raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
    transport.close()
    left, right = socket.socketpair()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, left)
    assert transport.get_extra_info('socket').family == socket.AF_UNIX
    transport.close()
    right.close()
    server.close()
    await server.wait_closed()


@pytest.mark.asyncio
@bounded()
async def test_extra_info_outlives_the_peer_and_the_transport():
    # 'socket', 'sockname' and 'peername' are fetched when the transport is made: after the peer
    # reset the connection (getpeername() would now fail) and after connection_lost() they still
    # answer the same.
    server, peer, client = await connected_pair()
    names = ('socket', 'sockname', 'peername')
    at_start = {t: {n: t.get_extra_info(n) for n in names}
                for t in (peer.transport, client.transport)}
    raw = client.transport.get_extra_info('socket')
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
    client.transport.abort()                        # a reset: the server side sees ECONNRESET
    assert isinstance(await client.lost, type(None))
    assert isinstance(await peer.lost, ConnectionResetError)
    for t, before in at_start.items():
        after = {n: t.get_extra_info(n) for n in names}
        assert after == before
        assert after['socket'] is before['socket']
        assert t.get_extra_info('sockname', 'x') == before['sockname']
        assert t.get_extra_info('nothing', 'x') == 'x'
    assert at_start[peer.transport]['peername'] == at_start[client.transport]['sockname']
    assert at_start[peer.transport]['sockname'] == at_start[client.transport]['peername']
    server.close()
    await server.wait_closed()


@pytest.mark.asyncio
@bounded()
async def test_extra_info_of_many_connections_to_one_server():
    # Every connection reports its own addresses: on the server side the same listening address
    # and each its own peer port; on the client side the reverse.
    loop = asyncio.get_running_loop()
    server, accepted = await recording_server()
    address = server.sockets[0].getsockname()
    clients = []
    for _ in range(5):
        _, client = await loop.create_connection(Recorder, *address)
        clients.append(client)
    for proto in accepted:
        await proto.made
    assert len(accepted) == 5
    seen = set()
    for proto in accepted:
        t = proto.transport
        sock = t.get_extra_info('socket')
        assert t.get_extra_info('sockname') == sock.getsockname() == address
        assert t.get_extra_info('peername') == sock.getpeername()
        seen.add(t.get_extra_info('peername'))
    assert seen == {c.transport.get_extra_info('sockname') for c in clients}
    assert len(seen) == 5
    for client in clients:
        assert client.transport.get_extra_info('peername') == address
    await shut(server, *clients, *accepted)


@pytest.mark.asyncio
@bounded()
async def test_extra_info_dict_and_odd_names():
    server, peer, client = await connected_pair()
    t = peer.transport
    with pytest.raises(TypeError):
        t.get_extra_info([])                        # unhashable, as a dict lookup says
    assert t.get_extra_info(b'socket') is None
    extra = t._extra                                # the stock transports' dict
    assert set(extra) >= {'socket', 'sockname', 'peername'}
    for name in ('socket', 'sockname', 'peername'):
        assert extra[name] is t.get_extra_info(name)
    extra['added'] = 1                              # asyncio's own code fills it like this
    assert t.get_extra_info('added') == 1
    assert t._extra is extra
    await shut(server, client, peer)


@pytest.mark.asyncio
@bounded()
async def test_echo_and_event_order():
    class Echo(Recorder):
        def data_received(self, data):
            super().data_received(data)
            self.transport.write(data)

    server, peer, client = await connected_pair(Echo)
    payload = pattern(100_000)
    client.transport.write(payload[:10])
    client.transport.write(bytearray(payload[10:1000]))
    client.transport.write(memoryview(payload)[1000:])
    assert await client.received(len(payload)) == payload
    client.transport.write_eof()
    await peer.eof
    await peer.lost            # Echo returns None from eof_received: the server side closes
    await client.eof
    assert await client.lost is None
    assert client.events == ['made', 'data', 'eof', 'lost']
    assert peer.events == ['made', 'data', 'eof', 'lost']
    assert client.transport.is_closing()
    server.close()
    await server.wait_closed()


@pytest.mark.asyncio
@bounded()
async def test_mutable_buffers_are_snapshotted_at_write():
    server, peer, client = await connected_pair()
    buf = bytearray(b'a' * 50_000)
    client.transport.write(buf)
    buf[:] = b'b' * 50_000           # reuse (resize even) the buffer right after write()
    buf.extend(b'c')
    view = memoryview(bytearray(b'x' * 1000))
    client.transport.write(view)
    view[:] = b'y' * 1000
    client.transport.writelines([buf, b'tail'])
    expected = b'a' * 50_000 + b'x' * 1000 + b'b' * 50_000 + b'c' + b'tail'
    assert await peer.received(len(expected)) == expected
    await shut(server, client, peer)


async def full_socket_pair():
    """connected_pair() whose client socket takes only part of a large write at once: the peer
    reads nothing (until it resumes reading) and the client's send buffer is small."""
    return await full_socket_pair_with(Recorder)


async def full_socket_pair_with(client_protocol):
    server, peer, client = await connected_pair(client_protocol=client_protocol)
    peer.transport.pause_reading()
    client.transport.get_extra_info('socket').setsockopt(
        socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return server, peer, client


@pytest.mark.asyncio
@bounded()
@pytest.mark.parametrize('method', ['write', 'writelines'])
async def test_large_mutable_write_into_a_full_socket_is_snapshotted(method):
    # The socket takes part of the write at most (the peer reads nothing and the send buffer is
    # small); what it did not take must be the bytes as they were when write() was called.
    if sys.version_info >= (3, 12) and not isinstance(asyncio.get_running_loop(), uringloop.Loop):
        pytest.skip("since 3.12 the stock transport keeps a view of unsent data, not a copy")
    server, peer, client = await full_socket_pair()
    payload = pattern(1_000_000)
    buf = bytearray(payload)
    if method == 'write':
        client.transport.write(buf)
    else:
        # The socket stops inside the second item: its unsent tail and the third item stay.
        head = bytearray(payload[:10])
        client.transport.writelines([head, memoryview(buf)[10:-10], bytearray(payload[-10:])])
        head[:] = b'z' * 10
    buf[:] = b'z' * len(buf)
    view = memoryview(bytearray(pattern(200_000, seed=7)))
    client.transport.write(view)            # queued behind the first: order kept
    view[:] = b'y' * len(view)
    assert client.transport.get_write_buffer_size() > 0
    peer.transport.resume_reading()
    expected = payload + pattern(200_000, seed=7)
    assert await peer.received(len(expected)) == expected
    await shut(server, client, peer)


@pytest.mark.asyncio
@bounded()
@pytest.mark.parametrize('method', ['write', 'writelines'])
@pytest.mark.parametrize('mutable', [False, True])
async def test_wide_item_views_into_a_full_socket_arrive_byte_for_byte(method, mutable,
                                                                      is_uring):
    """A memoryview whose items are 4 bytes wide (a view of an int array; a read-only view of
    bytes cast to 'i'), of which the socket takes only part at once: what follows is the rest
    counted in bytes, not in items.  (uringloop's write() sliced a read-only one in items before
    this test: 925,777 of 1,024,000 bytes arrived.)"""
    if not is_uring and (method == 'write' or sys.version_info >= (3, 12)):
        # Measured with 3.10.13-3.13.0: the stock transport keeps data[n:] of such
        # a view -- n bytes sent, the slice counted in items -- and loses bytes.  (Its
        # writelines() joins the items into bytes first up to 3.11.)
        pytest.skip("the stock transport slices a wide-item view's unsent rest in items")
    server, peer, client = await full_socket_pair()
    payload = pattern(1_000_000)
    view = (memoryview(array.array('i', payload)) if mutable
            else memoryview(payload).cast('i'))
    assert view.itemsize == 4 and view.nbytes == len(payload)
    if method == 'write':
        client.transport.write(view)
    else:
        client.transport.writelines([b'head', view])
    assert client.transport.get_write_buffer_size() > 0       # the socket did not take it all
    peer.transport.resume_reading()
    expected = payload if method == 'write' else b'head' + payload
    assert await peer.received(len(expected)) == expected
    await shut(server, client, peer)


@pytest.mark.asyncio
@bounded()
async def test_large_mutable_write_after_a_reset_is_a_fatal_error():
    server, peer, client = await connected_pair()
    client.transport.pause_reading()        # the reset is met by the write, not by a read
    sock = peer.transport.get_extra_info('socket')
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
    peer.transport.abort()                  # closes with a reset
    await peer.lost
    await asyncio.sleep(0.05)
    client.transport.write(bytearray(100_000))
    exc = await client.lost
    assert isinstance(exc, (ConnectionResetError, BrokenPipeError))
    assert client.transport.is_closing()
    server.close()
    await server.wait_closed()


@pytest.mark.asyncio
@bounded()
@pytest.mark.parametrize('kind', [bytes, bytearray])
async def test_small_write_after_a_reset_is_a_fatal_error(kind):
    server, peer, client = await connected_pair()
    client.transport.pause_reading()
    sock = peer.transport.get_extra_info('socket')
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
    peer.transport.abort()
    await peer.lost
    await asyncio.sleep(0.05)
    client.transport.write(kind(b'x' * 100))
    exc = await client.lost
    assert isinstance(exc, (ConnectionResetError, BrokenPipeError))
    client.transport.write(kind(b'y' * 100))        # after the loss: counted, not raised
    server.close()
    await server.wait_closed()


@pytest.mark.asyncio
@bounded()
@pytest.mark.parametrize('method', ['write', 'writelines'])
@pytest.mark.parametrize('kind', [bytes, bytearray, memoryview])
async def test_write_on_an_idle_connection_is_on_the_socket_when_write_returns(kind, method):
    """With nothing else going on, write() hands the bytes to the socket before it returns, as
    the stock loop does: a reply does not wait for the rest of the iteration (on uringloop: a
    send with nothing to batch with goes out at once instead of at the next io_uring_enter).
    writelines() does the same (on uringloop: one sendmsg(2)), and neither pauses the protocol
    above the high-water mark when the socket takes it whole -- the bytes of a send operation
    would count until its completion."""
    loop = asyncio.get_running_loop()
    made = loop.create_future()

    class Writer(Recorder):
        def connection_made(self, transport):
            super().connection_made(transport)
            made.set_result(self)

        def pause_writing(self):
            self.events.append('pause')

        def resume_writing(self):
            self.events.append('resume')

    server = await loop.create_server(Writer, '127.0.0.1', 0)
    peer = socket.create_connection(server.sockets[0].getsockname())
    peer.setblocking(False)
    try:
        writer = await made
        writer.transport.set_write_buffer_limits(high=4096)
        await asyncio.sleep(0.05)            # the connection is set up and the loop is idle
        for size in (10, 20_000):
            payload = pattern(size, seed=size)
            if method == 'write':
                writer.transport.write(kind(payload))
            else:
                third = size // 3
                writer.transport.writelines([kind(payload[:third]), payload[third:2 * third],
                                             kind(payload[2 * third:])])
            got = bytearray()
            while True:
                try:
                    chunk = peer.recv(1 << 20)      # no await: the loop has not run since
                except BlockingIOError:
                    break
                got += chunk
            assert bytes(got) == payload
            assert writer.transport.get_write_buffer_size() == 0
        await asyncio.sleep(0.05)
        assert writer.events == ['made']
    finally:
        peer.close()
        server.close()
        await server.wait_closed()


# A protocol that nothing but its transport references, answering with more than the socket
# takes at once and closing: the send completion that finishes the answer calls
# connection_lost(), which drops the protocol -- and with it the last reference to the transport,
# from inside the transport's own completion handler.  Run in a child: what this guards against
# is a crash (uringloop freed the transport under its handler: a segfault).
_UNREFERENCED_PROTOCOL_CHILD = """
import asyncio, socket, sys
import uringloop

ANSWER = b'x' * 3_000_000

class Answer(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        if WHERE == 'connection_made':
            self.answer()

    def data_received(self, data):
        self.answer()

    def answer(self):
        self.transport.write(ANSWER)
        self.transport.write(bytearray(ANSWER))
        self.transport.close()

async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Answer, '127.0.0.1', 0)
    for _ in range(3):
        client = socket.socket()
        client.setblocking(False)
        await loop.sock_connect(client, server.sockets[0].getsockname())
        if WHERE == 'data_received':
            await loop.sock_sendall(client, b'go')
        got = 0
        while True:
            chunk = await asyncio.wait_for(loop.sock_recv(client, 1 << 20), 10)
            if not chunk:
                break
            got += len(chunk)
        client.close()
        assert got == 2 * len(ANSWER), got
    server.close()
    print('answered', flush=True)

WHERE = sys.argv[2]
if sys.argv[1] == 'uringloop':
    uringloop.run(main())
else:
    asyncio.run(main())
"""


@pytest.mark.parametrize('where', ['connection_made', 'data_received'])
@pytest.mark.parametrize('loop_name', ['uringloop', 'asyncio'])
def test_a_protocol_referenced_only_by_its_transport_may_answer_and_close(loop_name, where):
    # cwd: `python -c` puts the working directory first on sys.path (see test_loop_api).
    proc = subprocess.run(
        [sys.executable, '-X', 'faulthandler', '-c', textwrap.dedent(_UNREFERENCED_PROTOCOL_CHILD),
         loop_name, where],
        capture_output=True, text=True, timeout=120, env=child_env(), cwd=PACKAGE_PARENT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == 'answered'


@contextlib.asynccontextmanager
async def plain_clients(protocol_factory, count):
    """A loop server of protocol_factory and `count` non-blocking plain sockets connected to it,
    each accepted and its receive armed; closed again on the way out."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(protocol_factory, '127.0.0.1', 0)
    clients = [socket.create_connection(server.sockets[0].getsockname()) for _ in range(count)]
    try:
        for client in clients:
            client.setblocking(False)
        await asyncio.sleep(0.1)
        yield clients
    finally:
        for client in clients:
            client.close()
        server.close()
        await server.wait_closed()


async def send_together_and_collect(clients, requests, answer_size):
    """Send each client its request while the loop is not running (so that all of them arrive
    before it looks at any), then collect answer_size bytes from each."""
    for client, request in zip(clients, requests):
        client.send(request)
    answers = [bytearray() for _ in clients]
    while any(len(a) < answer_size for a in answers):
        await asyncio.sleep(0.01)
        for client, a in zip(clients, answers):
            try:
                a += client.recv(1 << 16)
            except BlockingIOError:
                pass
    return [bytes(a) for a in answers]


@pytest.mark.asyncio
@bounded()
async def test_replies_to_requests_that_arrived_together_are_whole_and_in_order(is_uring):
    """Eight connections' requests arrive before the loop looks at any: every echo comes back
    whole.  On uringloop those replies are send operations that leave together in the next
    io_uring_enter (each with its completion), not eight send(2) calls: the at-once send is for
    an iteration with nothing to batch with."""
    loop = asyncio.get_running_loop()
    count, size = 8, 3000
    payloads = [pattern(size, seed=i * size) for i in range(count)]
    async with plain_clients(EchoProtocol, count) as clients:
        before = loop.statistics()['completions'] if is_uring else 0
        assert await send_together_and_collect(clients, payloads, size) == payloads
        if is_uring:
            # A receive and a send completion per connection (a send at once would have none).
            assert loop.statistics()['completions'] - before >= 2 * count


@pytest.mark.asyncio
@bounded()
async def test_large_replies_to_requests_that_arrived_together_leave_inside_write():
    """Eight connections' requests arrive before the loop looks at any, and each protocol
    answers with 20,000 bytes: every reply is on its socket when write() returns, as on the
    stock loop (on uringloop: data of 16 KiB or more goes out at once even in an iteration with
    much to batch -- what a protocol writes back is mostly what it was just handed, still in
    the cache), and each arrives whole."""
    count, size = 8, 20_000
    left_after_write = []

    class Answer(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.transport.write(pattern(size, seed=data[0] * size))
            left_after_write.append(self.transport.get_write_buffer_size())

    async with plain_clients(Answer, count) as clients:
        answers = await send_together_and_collect(
            clients, [bytes([i]) * 100 for i in range(count)], size)
        assert answers == [pattern(size, seed=i * size) for i in range(count)]
        assert left_after_write == [0] * count


@pytest.mark.asyncio
@bounded()
async def test_writelines_and_many_small_writes_keep_order():
    server, peer, client = await connected_pair()
    chunks = [pattern(n, seed=i * 1000) for i, n in enumerate([1, 7, 300, 65536, 2, 100_000, 5])]
    expected = b''
    for i in range(200):
        piece = struct.pack('<I', i)
        client.transport.write(piece)
        expected += piece
    client.transport.writelines(chunks)
    client.transport.writelines([])
    client.transport.writelines(iter([b'x', bytearray(b'y'), memoryview(b'z')]))
    expected += b''.join(chunks) + b'xyz'
    assert await peer.received(len(expected)) == expected
    await shut(server, client, peer)


@pytest.mark.asyncio
@bounded()
async def test_write_errors():
    server, peer, client = await connected_pair()
    t = client.transport
    with pytest.raises(TypeError):
        t.write('text')
    with pytest.raises(TypeError):
        t.write(12)
    t.write(b'')                  # nothing, no error
    assert t.can_write_eof()
    t.write_eof()
    with pytest.raises(RuntimeError):
        t.write(b'more')
    with pytest.raises(RuntimeError):
        t.writelines([b'more'])
    t.write_eof()                 # a second write_eof() is a no-op
    await peer.eof
    await shut(server, client, peer)


@pytest.mark.asyncio
@bounded()
async def test_half_close_keep_open():
    """Client sends then shuts its write side; the server keeps the connection open (eof_received
    returns True) and still answers; the client reads the answer, then sees EOF."""
    class Answer(Recorder):
        def eof_received(self):
            super().eof_received()
            self.transport.write(b'answer:' + bytes(self.data))
            self.transport.write_eof()
            return True

    server, peer, client = await connected_pair(Answer, functools.partial(Recorder, True))
    client.transport.write(b'question')
    client.transport.write_eof()
    await client.eof
    assert bytes(client.data) == b'answer:question'
    assert not client.transport.is_closing()      # keep_open=True for the client too
    assert not peer.transport.is_closing()
    client.transport.close()
    assert await client.lost is None
    # The server stopped reading at EOF: it closes when it is done writing.
    peer.transport.close()
    assert await peer.lost is None
    assert peer.events == ['made', 'data', 'eof', 'lost']
    server.close()
    await server.wait_closed()


@pytest.mark.asyncio
@bounded()
async def test_eof_received_runs_after_what_data_received_scheduled():
    """Bytes and the EOF behind them arrive before the loop looks: the stock loop reads the EOF
    in a later round than the bytes, so a callback data_received() scheduled runs before
    eof_received() -- on uringloop too, though both may complete in one batch."""
    loop = asyncio.get_running_loop()
    events = []
    made = loop.create_future()

    class Ordered(asyncio.Protocol):
        def connection_made(self, transport):
            made.set_result(transport)

        def data_received(self, data):
            events.append(('data', data))
            loop.call_soon(events.append, ('scheduled by data_received',))

        def eof_received(self):
            events.append(('eof',))

        def connection_lost(self, exc):
            events.append(('lost', exc))

    server = await loop.create_server(Ordered, '127.0.0.1', 0)
    peer = socket.create_connection(server.sockets[0].getsockname())
    try:
        await made
        await asyncio.sleep(0.05)              # the receive is armed, the loop idle
        peer.sendall(b'last words')
        peer.shutdown(socket.SHUT_WR)          # both before the loop runs again
        for _ in range(200):
            if events and events[-1][0] == 'lost':
                break
            await asyncio.sleep(0.01)
        assert events == [('data', b'last words'), ('scheduled by data_received',), ('eof',),
                          ('lost', None)]
    finally:
        peer.close()
        server.close()
        await server.wait_closed()


@pytest.mark.asyncio
@bounded()
async def test_eof_received_false_closes_transport():
    server, peer, client = await connected_pair()
    client.transport.write(b'bye')
    client.transport.write_eof()
    await peer.eof
    assert peer.transport.is_closing()
    assert await peer.lost is None
    await client.eof
    assert await client.lost is None
    assert bytes(peer.data) == b'bye'
    server.close()
    await server.wait_closed()


@pytest.mark.asyncio
@bounded()
async def test_write_eof_behind_a_send_the_peer_resets_after_is_no_unhandled_error():
    """write_eof() while a send waits for room; the peer makes room and then resets the
    connection before the loop hears that the send went out.  The shutdown deferred to that
    moment meets a reset socket (ENOTCONN): the connection ends with the reset, quietly, as
    the stock loop's failing send ends it -- not with an error out of a completion handler
    left to the loop's exception handler.  (On uringloop the peer's reset is made from another
    connection's data_received() dispatched in the same batch as the send's completion.)"""
    loop = asyncio.get_running_loop()
    errors = []
    loop.set_exception_handler(lambda loop, context: errors.append(context))
    listener = socket.create_server(('127.0.0.1', 0))
    sock = socket.create_connection(listener.getsockname())
    peer, _ = listener.accept()
    other_peer = None
    sock.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while True:                    # the socket full: the next write waits for room
            sock.send(b'f' * 65536)
    lost = loop.create_future()

    class Client(asyncio.Protocol):
        def connection_lost(self, exc):
            lost.set_result(exc)

    class ResetsThePeer(asyncio.Protocol):
        def data_received(self, data):
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
            peer.close()

    transport, _ = await loop.create_connection(Client, sock=sock)
    other, _ = await loop.create_connection(ResetsThePeer, *listener.getsockname())
    try:
        other_peer, _ = listener.accept()
        await asyncio.sleep(0.01)
        transport.write(b'x' * 10)
        transport.write_eof()

        def make_room_then_wake_the_resetter():
            other_peer.send(b'go')
            peer.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                while peer.recv(1 << 20):
                    pass

        loop.call_soon(make_room_then_wake_the_resetter)
        exc = await lost
        assert isinstance(exc, OSError), exc
        assert errors == []
    finally:
        other.close()
        for s in (peer, other_peer, listener):
            if s is not None:
                s.close()


@pytest.mark.asyncio
@bounded()
async def test_eof_after_large_messages_is_seen_once():
    """Large messages, then the peer's EOF, the last bytes and the EOF possibly in one wake-up
    of the socket: every byte, then eof_received() once, then connection_lost().  (uringloop
    reads large messages on readiness; a trial build that waited for it with a multishot
    poll, which completes once per wake-up and not while the socket stays readable, lost
    this EOF: it failed here.)"""
    server, peer, client = await connected_pair()
    first, second = pattern(64 * 1024), pattern(96 * 1024)[::-1]
    client.transport.write(first)
    assert await peer.received(len(first)) == first
    client.transport.write(second)
    client.transport.write_eof()
    await peer.eof
    assert bytes(peer.data) == first + second
    assert await peer.lost is None           # eof_received() returned False: closed
    assert peer.events == ['made', 'data', 'eof', 'lost']
    await client.eof
    await shut(server, client)


@pytest.mark.asyncio
@bounded()
async def test_many_peers_end_at_once_after_large_messages():
    """Twenty connections in large reads whose peers all shut down their side at once, so
    that their EOFs come in together: each server side sees eof_received() once, then
    connection_lost(), and the loop goes on serving.  (The multishot-poll trial build that
    lost the EOF of test_eof_after_large_messages_is_seen_once failed here too.)"""
    loop = asyncio.get_running_loop()
    server, peers = await recording_server()
    port = server.sockets[0].getsockname()[1]
    message = pattern(64 * 1024)
    clients = []
    for _ in range(20):
        sock = socket.socket()
        # Room for the last message whole, so that one non-blocking send() takes all of it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        sock.setblocking(False)
        await loop.sock_connect(sock, ('127.0.0.1', port))
        clients.append(sock)
    for sock in clients:
        await loop.sock_sendall(sock, message)
    while len(peers) < 20 or any(len(p.data) < len(message) for p in peers):
        await asyncio.sleep(0.005)
    for sock in clients:      # back to back: the last bytes and the EOF, no await between
        assert sock.send(message[:32 * 1024]) == 32 * 1024
        sock.shutdown(socket.SHUT_WR)
    for proto in peers:
        assert await proto.lost is None
        assert proto.events == ['made', 'data', 'eof', 'lost']
        assert bytes(proto.data) == message + message[:32 * 1024]
    for sock in clients:
        sock.close()
    server.close()
    await server.wait_closed()


@pytest.mark.asyncio
@bounded()
async def test_close_flushes_pending_writes():
    server, peer, client = await connected_pair()
    payload = pattern(8 * 1024 * 1024)
    t = client.transport
    t.write(payload)
    t.close()
    assert t.is_closing()
    assert not t.is_reading()
    t.close()                             # idempotent
    assert await peer.received(len(payload)) == payload
    await peer.eof
    assert await client.lost is None
    assert client.events == ['made', 'lost']
    fd = t.get_extra_info('socket').fileno()
    assert fd == -1                       # the socket is closed after connection_lost
    if isinstance(asyncio.get_running_loop(), uringloop.Loop):
        # uringloop keeps loop._transports exact (the stock loop uses a WeakValueDictionary).
        assert t not in asyncio.get_running_loop()._transports.values()
    await peer.lost
    server.close()
    await server.wait_closed()


@pytest.mark.asyncio
@bounded()
async def test_abort_drops_buffer_and_calls_connection_lost_once():
    server, peer, client = await connected_pair()
    peer.transport.pause_reading()        # so that writes pile up
    t = client.transport
    chunk = b'x' * (1 << 20)
    for _ in range(32):
        t.write(chunk)
    assert t.get_write_buffer_size() > 0
    t.abort()
    assert t.is_closing()
    assert t.get_write_buffer_size() == 0
    t.abort()
    t.close()
    assert await client.lost is None
    assert client.events == ['made', 'lost']
    t.write(b'ignored after the connection is lost')     # no exception, as stock
    peer.transport.resume_reading()
    await peer.lost
    assert len(peer.data) < 32 * len(chunk)
    server.close()
    await server.wait_closed()


@pytest.mark.asyncio
@bounded()
async def test_connection_refused():
    loop = asyncio.get_running_loop()
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()                               # nothing listens there now
    with pytest.raises(ConnectionRefusedError):
        await loop.create_connection(Recorder, '127.0.0.1', port)


@pytest.mark.asyncio
@bounded()
async def test_reset_by_peer_while_reading():
    loop = asyncio.get_running_loop()
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    listener.listen()
    listener.setblocking(False)
    with listener:
        _, client = await loop.create_connection(Recorder, *listener.getsockname())
        conn, _ = await loop.sock_accept(listener)
        await loop.sock_sendall(conn, b'before reset')
        await client.received(12)
        # SO_LINGER with a zero timeout turns close() into a reset.
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
        conn.close()
        exc = await client.lost
    assert isinstance(exc, ConnectionResetError)
    assert bytes(client.data) == b'before reset'
    assert client.events == ['made', 'data', 'lost']


@pytest.mark.asyncio
@bounded()
async def test_reset_by_peer_while_writing():
    loop = asyncio.get_running_loop()
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    listener.listen()
    listener.setblocking(False)
    with listener:
        _, client = await loop.create_connection(Recorder, *listener.getsockname())
        conn, _ = await loop.sock_accept(listener)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
        conn.close()
        chunk = b'z' * 65536
        for _ in range(200):
            if client.lost.done():
                break
            client.transport.write(chunk)
            await asyncio.sleep(0.001)
        exc = await client.lost
    assert isinstance(exc, (ConnectionResetError, BrokenPipeError))


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


@pytest.mark.asyncio
@bounded()
async def test_data_received_exception_is_fatal():
    loop = asyncio.get_running_loop()
    errors = []
    loop.set_exception_handler(lambda loop, ctx: errors.append(ctx))

    class Broken(Recorder):
        def data_received(self, data):
            super().data_received(data)
            raise ValueError('boom')

    server, peer, client = await connected_pair(client_protocol=Broken)
    peer.transport.write(b'trigger')
    exc = await client.lost
    assert isinstance(exc, ValueError)
    assert len(errors) == 1
    assert errors[0]['message'] == 'Fatal error: protocol.data_received() call failed.'
    assert errors[0]['exception'] is exc
    assert errors[0]['transport'] is client.transport
    assert errors[0]['protocol'] is client
    await peer.lost
    server.close()
    await server.wait_closed()


@pytest.mark.asyncio
@bounded()
async def test_eof_received_exception_is_fatal():
    loop = asyncio.get_running_loop()
    errors = []
    loop.set_exception_handler(lambda loop, ctx: errors.append(ctx))

    class Broken(Recorder):
        def eof_received(self):
            raise KeyError('eof')

    server, peer, client = await connected_pair(client_protocol=Broken)
    peer.transport.write_eof()
    exc = await client.lost
    assert isinstance(exc, KeyError)
    assert errors[0]['message'] == 'Fatal error: protocol.eof_received() call failed.'
    await shut(server, peer)


@pytest.mark.asyncio
@bounded()
async def test_connect_accepted_socket_and_sock_argument():
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        b.setblocking(False)
        _, proto = await loop.connect_accepted_socket(Recorder, a)
        await loop.sock_sendall(b, b'from b')
        assert await proto.received(6) == b'from b'
        proto.transport.write(b'to b')
        assert await loop.sock_recv(b, 100) == b'to b'
        assert proto.transport.get_extra_info('socket').family == socket.AF_UNIX
        proto.transport.close()
        assert await proto.lost is None
        assert await loop.sock_recv(b, 100) == b''


@pytest.mark.asyncio
@bounded()
async def test_socket_of_a_transport_is_refused_to_sock_methods():
    server, peer, client = await connected_pair()
    loop = asyncio.get_running_loop()
    sock = client.transport.get_extra_info('socket')
    with pytest.raises(RuntimeError):
        loop._ensure_fd_no_transport(sock.fileno())
    client.transport.close()
    loop._ensure_fd_no_transport(sock.fileno())        # a closing transport releases it
    await shut(server, client, peer)


@pytest.mark.asyncio
@bounded()
async def test_a_transport_collected_unclosed_leaves_its_number_to_the_next_socket():
    """The loop knows its transports weakly: one nobody closed or refers to (reading paused, so
    the kernel holds nothing of it) is collected, its socket closed with a ResourceWarning, and
    the descriptor number, which the next socket made takes, is that socket's for sock_*."""
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, a)
    number = a.fileno()
    transport.pause_reading()
    await asyncio.sleep(0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        del transport, a
        gc.collect()
    c, d = socket.socketpair()
    try:
        assert c.fileno() == number          # the kernel hands out the lowest free number
        loop._ensure_fd_no_transport(number)
        for sock in (b, c, d):
            sock.setblocking(False)
        await loop.sock_sendall(d, b"mine")
        assert await asyncio.wait_for(loop.sock_recv(c, 100), 5) == b"mine"
        assert await asyncio.wait_for(loop.sock_recv(b, 100), 5) == b""   # a's end closed
    finally:
        for sock in (b, c, d):
            sock.close()


@pytest.mark.asyncio
@bounded()
async def test_set_protocol_switches_delivery_mid_stream():
    server, peer, client = await connected_pair()
    first = pattern(1000)
    peer.transport.write(first)
    await client.received(len(first))
    second = Recorder()
    second.transport = client.transport
    client.transport.set_protocol(second)
    assert client.transport.get_protocol() is second
    rest = pattern(300_000, seed=1000)
    peer.transport.write(rest)
    assert await second.received(len(rest)) == rest
    assert bytes(client.data) == first
    peer.transport.close()
    await second.lost
    await peer.lost
    server.close()
    await server.wait_closed()


@pytest.mark.asyncio
@bounded()
async def test_protocol_callbacks_run_in_the_creation_context():
    var = contextvars.ContextVar('var', default='unset')
    seen = []

    class Looking(Recorder):
        def connection_made(self, transport):
            seen.append(('made', var.get()))
            super().connection_made(transport)

        def data_received(self, data):
            seen.append(('data', var.get()))
            super().data_received(data)

        def connection_lost(self, exc):
            seen.append(('lost', var.get()))
            super().connection_lost(exc)

    loop = asyncio.get_running_loop()

    async def connect():
        var.set('client task')
        return await loop.create_connection(Looking, *server.sockets[0].getsockname())

    accepted = loop.create_future()

    def factory():
        proto = Recorder()
        accepted.set_result(proto)
        return proto

    server = await loop.create_server(factory, '127.0.0.1', 0)
    _, client = await asyncio.ensure_future(connect())
    peer = await accepted
    await peer.made
    peer.transport.write(b'x')
    await client.received(1)
    peer.transport.close()
    await client.lost
    assert var.get() == 'unset'
    assert set(seen) == {('made', 'client task'), ('data', 'client task'),
                         ('lost', 'client task')}
    await peer.lost
    server.close()
    await server.wait_closed()


class BufferedRecorder(asyncio.BufferedProtocol):
    def __init__(self, size=65536):
        self.loop = asyncio.get_running_loop()
        self.buffer = bytearray(size)
        self.data = bytearray()
        self.events = []
        self.transport = None
        self.made = self.loop.create_future()
        self.eof = self.loop.create_future()
        self.lost = self.loop.create_future()
        self.sizes_asked = set()

    def connection_made(self, transport):
        self.transport = transport
        self.events.append('made')
        self.made.set_result(None)

    def get_buffer(self, sizehint):
        self.sizes_asked.add(sizehint)
        return memoryview(self.buffer)

    def buffer_updated(self, nbytes):
        assert 0 < nbytes <= len(self.buffer)
        if self.events[-1] != 'data':
            self.events.append('data')
        self.data += self.buffer[:nbytes]

    def eof_received(self):
        self.events.append('eof')
        self.eof.set_result(None)

    def connection_lost(self, exc):
        self.events.append('lost')
        self.lost.set_result(exc)


@pytest.mark.asyncio
@bounded()
@pytest.mark.parametrize('size', [1, 100, 65536, 1 << 20])
async def test_buffered_protocol_receives_everything(size):
    server, sender, client = await connected_pair(
        client_protocol=lambda: BufferedRecorder(size))
    payload = pattern(2 * 1024 * 1024 if size > 1 else 20_000)
    sender.transport.write(payload)
    sender.transport.write_eof()
    await client.eof
    assert bytes(client.data) == payload
    assert await client.lost is None          # eof_received returned None: closed
    assert client.events == ['made', 'data', 'eof', 'lost']
    await sender.lost
    server.close()
    await server.wait_closed()


@pytest.mark.asyncio
@bounded()
async def test_buffered_protocol_pause_reading_keeps_order():
    loop = asyncio.get_running_loop()

    class PausingBuffered(BufferedRecorder):
        in_pause = 0

        def buffer_updated(self, nbytes):
            if not self.transport.is_reading():
                PausingBuffered.in_pause += 1
            super().buffer_updated(nbytes)
            if len(self.data) // 100_000 > getattr(self, 'pauses', 0):
                self.pauses = getattr(self, 'pauses', 0) + 1
                self.transport.pause_reading()
                loop.call_later(0.005, self.transport.resume_reading)

    server, peer, client = await connected_pair(client_protocol=lambda: PausingBuffered(4096))
    payload = pattern(2 * 1024 * 1024)
    peer.transport.write(payload)
    peer.transport.write_eof()
    await client.eof
    assert bytes(client.data) == payload
    assert PausingBuffered.in_pause == 0
    await client.lost
    await shut(server, peer)


@pytest.mark.asyncio
@bounded()
async def test_resume_reading_does_not_call_get_buffer_from_inside_it():
    """A BufferedProtocol that resumes reading from its own buffer_updated() is not asked for
    its next buffer before that callback has returned -- the stock transport's reader asks
    from the loop.  uringloop armed the receive inside resume_reading(), calling get_buffer()
    there."""
    class Resuming(BufferedRecorder):
        inside = False
        asked_inside = 0

        def get_buffer(self, sizehint):
            if self.inside:
                Resuming.asked_inside += 1
            return super().get_buffer(sizehint)

        def buffer_updated(self, nbytes):
            super().buffer_updated(nbytes)
            self.transport.pause_reading()
            self.inside = True
            try:
                self.transport.resume_reading()
            finally:
                self.inside = False

    server, peer, client = await connected_pair(client_protocol=lambda: Resuming(4096))
    payload = pattern(200_000)
    peer.transport.write(payload)
    peer.transport.write_eof()
    await client.eof
    assert bytes(client.data) == payload
    assert Resuming.asked_inside == 0
    await client.lost
    await shut(server, peer)


@pytest.mark.asyncio
@bounded()
async def test_buffered_protocol_get_buffer_failures_are_fatal():
    loop = asyncio.get_running_loop()
    errors = []
    loop.set_exception_handler(lambda loop, ctx: errors.append(ctx))

    class EmptyBuffer(BufferedRecorder):
        def get_buffer(self, sizehint):
            return bytearray()

    class Raising(BufferedRecorder):
        def get_buffer(self, sizehint):
            raise OverflowError('no buffer')

    for proto_class, exc_type in ((EmptyBuffer, RuntimeError), (Raising, OverflowError)):
        errors.clear()
        server, peer, client = await connected_pair(client_protocol=proto_class)
        peer.transport.write(b'data')
        exc = await client.lost
        assert isinstance(exc, exc_type)
        assert errors[0]['message'] == 'Fatal error: protocol.get_buffer() call failed.'
        await shut(server, peer)


@pytest.mark.asyncio
@bounded()
async def test_buffered_protocol_buffer_updated_failure_is_fatal():
    loop = asyncio.get_running_loop()
    errors = []
    loop.set_exception_handler(lambda loop, ctx: errors.append(ctx))

    class Raising(BufferedRecorder):
        def buffer_updated(self, nbytes):
            raise LookupError('updated')

    server, peer, client = await connected_pair(client_protocol=Raising)
    peer.transport.write(b'data')
    exc = await client.lost
    assert isinstance(exc, LookupError)
    assert errors[0]['message'] == 'Fatal error: protocol.buffer_updated() call failed.'
    await shut(server, peer)


class LargeThenFailing(BufferedRecorder):
    """Receives normally until `fail` is set, then fails the way `fail` names.  The first
    large transfer moves a uringloop connection to its large-read path (a poll, then recv(2)
    into get_buffer()'s buffer), so the failures are met there too."""
    fail = None

    def get_buffer(self, sizehint):
        if self.fail == 'get_buffer raises':
            raise OverflowError('no buffer')
        if self.fail == 'empty buffer':
            return bytearray()
        if self.fail == 'read-only buffer':
            return b'\0' * 65536
        return super().get_buffer(sizehint)

    def buffer_updated(self, nbytes):
        if self.fail == 'buffer_updated raises':
            raise LookupError('updated')
        super().buffer_updated(nbytes)


@pytest.mark.asyncio
@bounded()
@pytest.mark.parametrize('fail, exc_type, message', [
    ('get_buffer raises', OverflowError, 'Fatal error: protocol.get_buffer() call failed.'),
    ('empty buffer', RuntimeError, 'Fatal error: protocol.get_buffer() call failed.'),
    ('buffer_updated raises', LookupError, 'Fatal error: protocol.buffer_updated() call failed.'),
    ('read-only buffer', TypeError, 'Fatal read error on socket transport'),
])
async def test_buffered_protocol_failures_after_large_reads_are_fatal(fail, exc_type, message):
    loop = asyncio.get_running_loop()
    errors = []
    loop.set_exception_handler(lambda loop, ctx: errors.append(ctx))
    server, peer, client = await connected_pair(client_protocol=LargeThenFailing)
    first = pattern(1 << 20)
    peer.transport.write(first)
    while len(client.data) < len(first):
        await asyncio.sleep(0.001)
    assert bytes(client.data) == first
    client.fail = fail
    peer.transport.write(pattern(200_000, seed=7))
    exc = await client.lost
    assert isinstance(exc, exc_type)
    assert [e['message'] for e in errors] == [message]
    assert client.events.count('lost') == 1
    await shut(server, peer)


@pytest.mark.asyncio
@bounded()
@pytest.mark.parametrize('action', ['pause', 'close'])
async def test_buffered_protocol_stops_inside_a_burst_of_large_reads(action):
    """pause_reading() or close() inside buffer_updated(), in the middle of a burst that fills
    the protocol's buffer again and again: no buffer_updated() follows until resume_reading()
    (then every byte, in order) or ever (close)."""
    loop = asyncio.get_running_loop()

    class Stopping(BufferedRecorder):
        calls_while_stopped = 0
        stopped = False

        def buffer_updated(self, nbytes):
            if self.stopped:
                Stopping.calls_while_stopped += 1
            super().buffer_updated(nbytes)
            if len(self.data) >= 300_000 and not self.stopped and not hasattr(self, 'done'):
                self.done = True
                self.stopped = True
                if action == 'pause':
                    self.transport.pause_reading()
                    loop.call_later(0.05, self.resume)
                else:
                    self.transport.close()

        def resume(self):
            self.stopped = False
            self.transport.resume_reading()

    server, peer, client = await connected_pair(client_protocol=lambda: Stopping(16384))
    payload = pattern(4 * 1024 * 1024)
    peer.transport.write(payload)
    if action == 'pause':
        peer.transport.write_eof()
        await client.eof
        assert bytes(client.data) == payload
    else:
        assert await client.lost is None
        assert payload.startswith(bytes(client.data))
        await asyncio.sleep(0.05)
    assert Stopping.calls_while_stopped == 0
    assert client.events.count('lost') <= 1
    await shut(server, peer)


@pytest.mark.asyncio
@bounded()
async def test_switch_between_protocol_kinds():
    server, peer, client = await connected_pair()
    t = client.transport
    buffered = BufferedRecorder(1000)
    buffered.transport = t
    buffered.events.append('made')
    t.set_protocol(buffered)
    part1 = pattern(200_000)
    peer.transport.write(part1)
    while len(buffered.data) < len(part1):
        await asyncio.sleep(0.001)
    back = Recorder()
    back.transport = t
    t.set_protocol(back)
    part2 = pattern(200_000, seed=99)
    peer.transport.write(part2)
    assert await back.received(len(part2)) == part2
    assert bytes(buffered.data) == part1
    peer.transport.close()
    await back.lost
    await peer.lost
    server.close()
    await server.wait_closed()


@pytest.mark.asyncio
@bounded()
async def test_many_concurrent_connections():
    loop = asyncio.get_running_loop()

    server = await loop.create_server(EchoProtocol, '127.0.0.1', 0)
    addr = server.sockets[0].getsockname()

    async def one(i):
        _, proto = await loop.create_connection(Recorder, *addr)
        payload = pattern(5000 + i, seed=i)
        proto.transport.write(payload)
        assert await proto.received(len(payload)) == payload
        proto.transport.close()
        await proto.lost

    await asyncio.gather(*(one(i) for i in range(100)))
    server.close()
    await server.wait_closed()


@pytest.mark.asyncio
@bounded()
async def test_connections_sending_in_turns_with_aborts_among_them():
    # Many connections writing in the same iterations, over several rounds, while some abort
    # with a send in flight: each peer gets exactly its own bytes, in order.
    loop = asyncio.get_running_loop()

    server = await loop.create_server(EchoProtocol, '127.0.0.1', 0)
    addr = server.sockets[0].getsockname()

    async def one(i):
        _, proto = await loop.create_connection(Recorder, *addr)
        expected = b''
        for rnd in range(4):
            payload = pattern(1000 + 97 * i + rnd, seed=10 * i + rnd)
            proto.transport.write(payload[:100])
            proto.transport.write(payload[100:])
            expected += payload
            if i % 5 == 0 and rnd == 2:
                proto.transport.write(b'z' * (1 << 20))
                proto.transport.abort()
                assert await proto.lost is None
                return
            assert await proto.received(len(expected)) == expected
        proto.transport.close()
        await proto.lost

    await asyncio.gather(*(one(i) for i in range(30)))
    server.close()
    await server.wait_closed()


@pytest.mark.asyncio
@bounded()
async def test_transports_are_asyncio_transports():
    """isinstance() checks that libraries make: a stream transport is an asyncio.Transport (and so
    a ReadTransport, WriteTransport and BaseTransport), and so is a datagram transport, as the
    stock loop's are."""
    loop = asyncio.get_running_loop()
    server, peer, client = await connected_pair()
    for cls in (asyncio.Transport, asyncio.ReadTransport, asyncio.WriteTransport,
                asyncio.BaseTransport):
        assert isinstance(client.transport, cls)
        assert isinstance(peer.transport, cls)
    assert not isinstance(client.transport, asyncio.DatagramTransport)
    udp, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                 local_addr=('127.0.0.1', 0))
    assert isinstance(udp, asyncio.Transport)   # (the stock one is a DatagramTransport on 3.12+)
    udp.close()
    await shut(server, client, peer)


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
@pytest.mark.parametrize("kind", ["buffered", "large", "buffered large"])
def test_an_interrupt_out_of_a_receive_callback_leaves_the_connection_read(new_loop, kind,
                                                                           exc_type):
    """KeyboardInterrupt or SystemExit raised once by buffer_updated() (or by data_received()
    of a large read) leaves run_until_complete(); a loop run again goes on reading the
    connection, as the stock loop's reader stays registered.  (uringloop never armed the next
    receive: later bytes stayed in the socket for good.)"""
    loop = new_loop()
    size = 10 if kind == "buffered" else 100_000
    # A large message's first bytes come from the shared ring (a BufferedProtocol's: a receive
    # into its buffer); from the third read on, the connection is on large reads (a poll, then
    # recv(2)), the path that lost its re-arm.
    raise_at = 1 if kind == "buffered" else 3
    got = []

    def count(n):
        got.append(n)
        if len(got) == raise_at:
            raise exc_type()

    class Buffered(asyncio.BufferedProtocol):
        # Large messages: a buffer they fill, so that a poll's reads go on inline.
        buf = bytearray(1 << 20 if kind == "buffered" else 16384)

        def get_buffer(self, sizehint):
            return self.buf

        def buffer_updated(self, nbytes):
            count(nbytes)

    class Plain(asyncio.Protocol):
        def data_received(self, data):
            count(len(data))

    a, peer = socket.socketpair()
    with peer:
        transport, _ = loop.run_until_complete(
            loop.create_connection(Plain if kind == "large" else Buffered, sock=a))
        peer.settimeout(10)
        interrupts = 0
        for _ in range(3):
            peer.sendall(b"x" * size)
            deadline = loop.time() + 5
            try:
                while sum(got) < size * (_ + 1) and loop.time() < deadline:
                    loop.run_until_complete(asyncio.sleep(0.01))
            except exc_type:
                interrupts += 1
                while sum(got) < size * (_ + 1) and loop.time() < deadline:
                    loop.run_until_complete(asyncio.sleep(0.01))
        assert interrupts == 1
        assert sum(got) == 3 * size
        transport.close()
        loop.run_until_complete(asyncio.sleep(0.01))


def test_an_interrupt_out_of_a_protocol_factory_leaves_the_server_accepting(new_loop):
    """KeyboardInterrupt from protocol_factory() leaves the loop; run again, the server accepts
    the next connections, as the stock loop's does.  (uringloop's listening socket was never
    polled again: clients waited in the kernel's queue for good.)"""
    loop = new_loop()
    made = []

    class Kept(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

    def factory():
        if not made:
            made.append(None)
            raise KeyboardInterrupt
        protocol = Kept()
        made.append(protocol)
        return protocol

    server = loop.run_until_complete(loop.create_server(factory, "127.0.0.1", 0))
    address = server.sockets[0].getsockname()
    clients = []
    interrupts = 0
    # The interrupted connection's socket is left to the garbage collector, on both loops.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            for expected in (1, 2, 3, 4):
                clients.append(socket.create_connection(address))
                deadline = loop.time() + 5
                while len(made) < expected and loop.time() < deadline:
                    try:
                        loop.run_until_complete(asyncio.sleep(0.01))
                    except KeyboardInterrupt:
                        interrupts += 1
            assert interrupts == 1
            assert len(made) == 4     # the interrupted one, then a protocol for each of the rest
        finally:
            for client in clients:
                client.close()
            for protocol in made[1:]:
                protocol.transport.close()
            server.close()
            loop.run_until_complete(server.wait_closed())
            gc.collect()


@pytest.mark.asyncio
async def test_eof_received_that_toggles_reading_is_called_once():
    """eof_received() pausing and resuming reading, then keeping the connection open: called
    once, as on the stock loop, which stops reading after it returns.  (uringloop's resumed
    receive found the EOF again and called eof_received() again, without end: the loop spun.)"""
    loop = asyncio.get_running_loop()
    calls = []

    class Toggling(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def eof_received(self):
            calls.append(None)
            self.transport.pause_reading()
            self.transport.resume_reading()
            return True

    a, b = socket.socketpair()
    with b:
        transport, _ = await loop.connect_accepted_socket(Toggling, a)
        b.shutdown(socket.SHUT_WR)
        await asyncio.sleep(0.2)
        assert len(calls) == 1
        transport.write(b"still open for writing")
        assert b.recv(100) == b"still open for writing"
        transport.close()
        await asyncio.sleep(0)


@pytest.mark.asyncio
async def test_switch_to_a_plain_protocol_inside_buffer_updated_gets_the_rest():
    """Protocol -> BufferedProtocol with a small buffer -> Protocol again from inside
    buffer_updated(), during a burst: every byte arrives, the rest through the new protocol's
    data_received().  (uringloop went on copying what it held through get_buffer(), which the
    plain protocol lacks: a fatal error and most of the burst lost.)  get_buffer() is always
    asked with -1, as the stock transport asks."""
    loop = asyncio.get_running_loop()
    got = bytearray()
    hints = []
    done = loop.create_future()

    class Plain(asyncio.Protocol):
        def __init__(self, switch):
            self.switch = switch

        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            got.extend(data)
            if self.switch:
                self.switch = False
                self.transport.set_protocol(Buffered(self.transport))

        def eof_received(self):
            done.set_result(None)

        def connection_lost(self, exc):
            if not done.done():
                done.set_exception(exc or ConnectionError("lost before EOF"))

    class Buffered(asyncio.BufferedProtocol):
        def __init__(self, transport):
            self.transport = transport
            self.buf = bytearray(1000)

        def get_buffer(self, sizehint):
            hints.append(sizehint)
            return self.buf

        def buffer_updated(self, nbytes):
            got.extend(self.buf[:nbytes])
            plain = Plain(False)
            plain.transport = self.transport
            self.transport.set_protocol(plain)

        def eof_received(self):
            done.set_result(None)

        def connection_lost(self, exc):
            if not done.done():
                done.set_exception(exc or ConnectionError("lost before EOF"))

    a, b = socket.socketpair()
    with b:
        b.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 21)
        transport, _ = await loop.connect_accepted_socket(lambda: Plain(True), a)
        await asyncio.sleep(0.05)
        payload = pattern(200 * 1024)
        b.sendall(payload)
        b.shutdown(socket.SHUT_WR)
        await asyncio.wait_for(done, 10)
        transport.close()
    assert bytes(got) == payload
    assert set(hints) <= {-1}


@pytest.mark.asyncio
async def test_writelines_errors_are_those_of_the_stock_transport():
    """Before Python 3.12 the stock writelines() is write(b''.join(...)), so its errors are the
    join's and write()'s; from 3.12 it has its own.  (uringloop always gave the 3.12 ones.)"""
    loop = asyncio.get_running_loop()
    joined = sys.version_info < (3, 12)
    a, b = socket.socketpair()
    with b:
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, a)
        with pytest.raises(TypeError) as raised:
            transport.writelines([b"ok", "text"])
        if joined:
            assert str(raised.value) == "sequence item 1: expected a bytes-like object, str found"
        transport.write_eof()
        with pytest.raises(RuntimeError) as raised:
            transport.writelines([b"after"])
        method = "write" if joined else "writelines"
        assert str(raised.value) == f"Cannot call {method}() after write_eof()"
        transport.close()
        await asyncio.sleep(0)


@pytest.mark.asyncio
@bounded()
async def test_a_socket_closed_under_its_transport_ends_it_and_nothing_goes_by_its_number():
    """The owner of a socket handed to a transport closes it, and a new socket takes the
    number.  Like the stock transport's next send() on the closed object, write() ends the
    transport with EBADF; nothing is sent to, or read from, the socket that has the number."""
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    transport, protocol = await loop.connect_accepted_socket(Recorder, sock=a)
    await asyncio.sleep(0.02)
    number = a.fileno()
    a.close()
    c, d = socket.socketpair()
    with b, c, d:
        assert c.fileno() == number
        for d_or_b in (b, c, d):
            d_or_b.setblocking(False)
        transport.write(b"small")
        transport.write(b"x" * 100_000)
        exc = await asyncio.wait_for(protocol.lost, 5)
        assert isinstance(exc, OSError) and exc.errno == errno.EBADF
        d.send(b"for c only")
        await asyncio.sleep(0.05)
        with pytest.raises(BlockingIOError):
            d.recv(1 << 20)                     # nothing of ours reached c's peer
        assert c.recv(100) == b"for c only"     # and nothing of c's was read
        assert protocol.data == b""


@pytest.mark.asyncio
@bounded()
@pytest.mark.parametrize('request_made', ['send', 'receive'])
async def test_a_socket_closed_right_after_a_request_of_its_transport_lends_it_no_number(
        is_uring, request_made):
    """The order the test above does not take: first the transport makes a request -- a
    write() the full socket cannot take at once, or the receive resume_reading() arms -- then,
    in the same callback, the socket's owner closes it and a new socket takes its number, all
    before the loop enters the kernel again.  The request must not reach the new socket: our
    bytes to its peer, or its peer's bytes to our protocol.  (uringloop wrote the request into
    the SQ by number; the kernel looked the number up at the enter and found the new socket.)"""
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    if request_made == 'send':
        a.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:                          # full: the next write becomes a request
                a.send(b'f' * 65536)
    transport, protocol = await loop.connect_accepted_socket(Recorder, sock=a)
    if request_made == 'receive':
        transport.pause_reading()
    await asyncio.sleep(0.02)
    number = a.fileno()
    if request_made == 'send':
        transport.write(b'not for d')
    else:
        transport.resume_reading()
    a.close()
    c, d = socket.socketpair()
    with b, c, d:
        assert c.fileno() == number
        for s in (c, d):
            s.setblocking(False)
        d.send(b'for c only')
        # (The stock transport never hears of its socket again; uringloop's request fails.)
        await asyncio.wait([protocol.lost], timeout=2 if is_uring else 0.05)
        with pytest.raises(BlockingIOError):
            d.recv(1 << 20)                      # nothing of ours reached c's peer
        assert c.recv(100) == b'for c only'      # and nothing of c's was read
        assert protocol.data == b''
        if is_uring:
            exc = protocol.lost.result()
            assert isinstance(exc, OSError) and exc.errno == errno.EBADF
        else:
            # The stock loop's selector still maps the number to the transport's writer, and
            # its first abort() fails to change that registration on the new socket (and drops it).
            with contextlib.suppress(FileNotFoundError):
                transport.abort()
            transport.abort()
            await protocol.lost


@pytest.mark.asyncio
@bounded()
@pytest.mark.parametrize('kind', ['Protocol', 'BufferedProtocol', 'streams'])
async def test_a_socket_closed_under_its_idle_transport_gets_it_nothing_more(is_uring, kind):
    """The owner of a socket handed to a transport closes it while the transport waits for
    data; the peer's bytes sent after that reach no protocol, and the peer sees the close.
    (uringloop's multishot receive, armed before the close, held the socket's file: it went
    on delivering the peer's bytes and the peer never saw the close.  Now what it brings
    ends the transport with EBADF, which lets the file go.)"""
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    if kind == 'streams':
        reader, writer = await asyncio.open_connection(sock=a)
        transport = writer.transport
    else:
        transport, protocol = await loop.connect_accepted_socket(
            Recorder if kind == 'Protocol' else BufferedRecorder, sock=a)
    with b:
        await asyncio.sleep(0.02)
        a.close()
        with contextlib.suppress(OSError):       # (the stock loop: EPIPE, a is closed)
            b.sendall(b'after the close')
        for _ in range(40):
            if transport.is_closing():
                break
            await asyncio.sleep(0.005)          # (the stock transport never hears of it)
        if kind == 'streams':
            assert len(reader._buffer) == 0
        else:
            assert protocol.data == b''
        b.settimeout(5)
        assert b.recv(100) == b''               # the close reached the peer
        if is_uring:
            assert transport.is_closing()
        if kind == 'streams':
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        else:
            transport.abort()
            exc = await protocol.lost
            if is_uring:
                assert isinstance(exc, OSError) and exc.errno == errno.EBADF


@pytest.mark.asyncio
@bounded()
async def test_a_memoryview_released_right_after_write_is_no_concern_of_the_caller(is_uring):
    """`with memoryview(data) as view: transport.write(view)`: the view is released when the
    block ends, whether the bytes left at once, became a send operation (several connections
    answering in one iteration) or wait behind a large write -- no BufferError, every byte
    delivered.  (The stock transport of 3.12+ keeps a queued view itself and fails on it once
    released: that part is checked on uringloop, and on the stock loop before 3.12.)"""
    loop = asyncio.get_running_loop()
    errors = []

    class Replies(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            try:
                with memoryview(b"reply") as view:
                    self.transport.write(view)
            except BufferError as exc:
                errors.append(exc)

    pairs = [socket.socketpair() for _ in range(4)]
    transports = []
    try:
        for a, _ in pairs:
            transports.append((await loop.connect_accepted_socket(Replies, sock=a))[0])
        await asyncio.sleep(0.02)
        for _, b in pairs:
            b.send(b"request")
        for _, b in pairs:
            b.setblocking(False)
            assert await loop.sock_recv(b, 100) == b"reply"
        assert errors == []

        if is_uring or sys.version_info < (3, 12):
            transport = transports[0]
            transport.write(b"x" * 4_000_000)    # more than the socket takes: a send in flight
            with memoryview(b"tail") as view:
                transport.write(view)            # queued behind it
            transport.close()
            b = pairs[0][1]
            received = bytearray()
            while chunk := await loop.sock_recv(b, 1 << 20):
                received += chunk
            assert len(received) == 4_000_004 and received.endswith(b"tail")
    finally:
        for t in transports:
            t.close()
        for _, b in pairs:
            b.close()
        await asyncio.sleep(0)


@pytest.mark.asyncio
@bounded()
async def test_data_received_rebound_on_the_protocol_instance_takes_the_next_bytes():
    """The stock transport looks protocol.data_received up for every read: a protocol that
    switches state by rebinding it on the instance gets the next bytes in the new method."""
    loop = asyncio.get_running_loop()
    calls = []
    next_read = loop.create_future()

    class Switches(asyncio.Protocol):
        def data_received(self, data):
            calls.append(("header", data))
            self.data_received = self.body
            next_read.set_result(None)

        def body(self, data):
            calls.append(("body", data))

    a, b = socket.socketpair()
    with b:
        transport, _ = await loop.connect_accepted_socket(Switches, sock=a)
        b.send(b"one")
        await asyncio.wait_for(next_read, 5)
        b.send(b"two")
        for _ in range(100):
            if len(calls) == 2:
                break
            await asyncio.sleep(0.01)
        transport.close()
    assert calls == [("header", b"one"), ("body", b"two")]
