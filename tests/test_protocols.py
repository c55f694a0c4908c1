"""Stream transports through the Protocol API: create_connection/create_server and the transport
methods -- connecting, extra info, writes and their order, EOF and half-close, close, abort and
resets -- written once and run on uringloop and on the stock loop (the oracle).

The rest of the Protocol API's tests: large data and flow control in test_protocols_flow, the
BufferedProtocol in test_protocols_buffered, failing callbacks, protocol switches, interrupts
and sockets closed under their transports in test_protocols_lifecycle."""

import array
import asyncio
import contextlib
import errno
import functools
import gc
import socket
import struct
import subprocess
import sys
import textwrap
import warnings

import pytest

import uringloop

from helpers import PACKAGE_PARENT, bounded, child_env, pattern
from protocol_helpers import (Recorder, EchoProtocol, connected_pair, recording_server, shut,
                             full_socket_pair)


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


class PiecewiseAnswer(asyncio.Protocol):
    """Answers each request, in one data_received(), with the pieces of answer_pieces(): written
    one by one, through write() and writelines() and with bytes, bytearray and memoryview."""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        for method, piece in answer_pieces(data[0]):
            if method == 'writelines':
                self.transport.writelines(piece)
            else:
                self.transport.write(piece)


def answer_pieces(seed):
    body = pattern(3000, seed=seed * 3000)
    return [('write', b'HTTP/1.1 200 OK\r\nContent-Length: 3000\r\n\r\n'),
            ('write', bytearray(body[:1000])),
            ('writelines', [body[1000:1500], memoryview(body[1500:2500])]),
            ('write', memoryview(bytearray(body[2500:2999]))),
            ('write', body[2999:])]


def whole_answer(seed):
    return b''.join(b''.join(p) if m == 'writelines' else bytes(p)
                    for m, p in answer_pieces(seed))


@pytest.mark.asyncio
@bounded()
async def test_answers_written_in_pieces_by_one_callback_leave_together(is_uring):
    """Eight connections' requests arrive before the loop looks at any, and each protocol
    answers in five writes -- headers, then the body in pieces of every kind.  Every answer
    arrives whole and in order.  On uringloop, where those replies are send operations (see the
    test above), the pieces written after the first join its send before the iteration's
    io_uring_enter takes it to the kernel: one send, one completion per answer, as the stock
    loop sends them all before the callback returns.  (They waited for the first send's
    completion before, and left an iteration later with a completion of their own.)"""
    loop = asyncio.get_running_loop()
    count = 8

    class WholeAnswer(PiecewiseAnswer):
        def data_received(self, data):
            self.transport.write(whole_answer(data[0]))

    costs = {}
    for name, factory in [('whole', WholeAnswer), ('pieces', PiecewiseAnswer)]:
        async with plain_clients(factory, count) as clients:
            before = loop.statistics()['completions'] if is_uring else 0
            answers = await send_together_and_collect(
                clients, [bytes([i]) for i in range(count)], len(whole_answer(0)))
            assert answers == [whole_answer(i) for i in range(count)]
            if is_uring:
                costs[name] = loop.statistics()['completions'] - before
    if is_uring:
        # Separately, the pieces after the first would add a completion per connection.
        assert costs['pieces'] < costs['whole'] + count // 2, costs


@pytest.mark.asyncio
@bounded()
async def test_thousands_of_writes_by_one_callback_arrive_in_order():
    """More pieces than one sendmsg carries (1,024 buffers), more bytes than the socket takes
    at once: what joined the first send leaves with it, the rest behind it, and the peer reads
    every byte in order."""
    count, pieces, size = 3, 1500, 1000

    class ManyWrites(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            for i in range(pieces):
                self.transport.write(struct.pack('<HI', data[0], i) + b'.' * (size - 6))

    expected = [b''.join(struct.pack('<HI', c, i) + b'.' * (size - 6) for i in range(pieces))
                for c in range(count)]
    async with plain_clients(ManyWrites, count) as clients:
        answers = await send_together_and_collect(
            clients, [bytes([i]) for i in range(count)], pieces * size)
    assert answers == expected


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
