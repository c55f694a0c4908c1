"""Stream transports through a protocol's life: callbacks that raise, accepted sockets, the
protocol switched mid-stream, the creation context, many connections, interrupts out of
callbacks, EOF handling that toggles reading, writelines() errors, and sockets closed under
their transports -- run on uringloop and on the stock loop."""

import asyncio
import contextlib
import contextvars
import errno
import gc
import socket
import sys
import warnings

import pytest

from helpers import bounded, check_instance_attributes, pattern
from protocol_helpers import Recorder, EchoProtocol, connected_pair, shut, BufferedRecorder


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


@pytest.mark.asyncio
@bounded()
async def test_a_transport_takes_attributes_and_methods_replaced_on_it():
    """Programs and tests set attributes on a transport and replace its methods on the instance
    (`transport.write = ...`, mock.patch.object: uvicorn's and aiohttp's own test suites do), as
    the stock transport allows: Python code then calls the replacement, and the transport's own
    method is back once the attribute is deleted."""
    server, peer, client = await connected_pair()
    await check_instance_attributes(client.transport, peer.received)
    # A transport nobody gave an attribute answers vars() too, and is collected as usual.
    assert 'label' not in vars(peer.transport)
    await shut(server, client, peer)
    gc.collect()


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


def test_closing_a_transport_with_bytes_unsent_after_the_loop_closed_raises_nothing(new_loop):
    """A transport whose peer stopped reading, with bytes still unsent when its loop is closed:
    close() afterwards -- a pending task's `finally: writer.close()`, run when the task is
    collected -- schedules nothing and raises nothing, as on the stock loop (whose buffer is not
    empty then).  uringloop raised 'Event loop is closed': the loop's close had drained the
    send in flight, and close() took that for an empty buffer."""
    loop = new_loop()
    listener = socket.create_server(("127.0.0.1", 0))
    peer = None

    async def stuff():
        nonlocal peer
        reader, writer = await asyncio.open_connection(*listener.getsockname())
        peer, _ = listener.accept()                  # and never read from
        for _ in range(100):
            if writer.transport.get_write_buffer_size():
                break
            writer.write(b"x" * 1_000_000)
            await asyncio.sleep(0.02)
        return writer

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)    # both loops: unclosed at gc
            writer = loop.run_until_complete(stuff())
            loop.close()
            assert writer.transport.get_write_buffer_size() > 0
            writer.close()
            assert writer.transport.is_closing()
            del writer
            gc.collect()
    finally:
        listener.close()
        if peer is not None:
            peer.close()


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
async def test_writelines_of_something_falsy_is_the_stock_transports_answer():
    """From 3.12 the stock writelines() returns at once for a falsy argument (None, 0, ());
    before, b''.join() refuses anything not iterable with its own message.  (uringloop raised
    "'NoneType' object is not iterable" on every version.)"""
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    with b:
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, a)
        for nothing in (None, 0):
            if sys.version_info >= (3, 12):
                assert transport.writelines(nothing) is None
            else:
                with pytest.raises(TypeError, match="^can only join an iterable$"):
                    transport.writelines(nothing)
        transport.writelines(())
        transport.writelines(iter([b"still ", b"writing"]))
        b.settimeout(5)
        assert b.recv(100) == b"still writing"
        transport.close()
        await asyncio.sleep(0)


@pytest.mark.asyncio
@bounded()
@pytest.mark.parametrize("method", ["write", "writelines"])
async def test_a_view_that_is_not_contiguous_is_refused_as_the_stock_transport_refuses_it(method):
    """memoryview(...)[::2] is not a bytes-like object for socket.send(): the stock transport's
    write() ends in a fatal BufferError and sends nothing; its writelines() does the same from
    3.12, and before raises join's TypeError.  (uringloop copied the view and sent it.)"""
    loop = asyncio.get_running_loop()
    errors = []
    loop.set_exception_handler(lambda loop, ctx: errors.append(ctx))
    a, b = socket.socketpair()
    with b:
        transport, protocol = await loop.connect_accepted_socket(Recorder, a)
        strided = memoryview(b"0123456789")[::2]
        if method == "writelines" and sys.version_info < (3, 12):
            with pytest.raises(TypeError, match="sequence item 1: expected a bytes-like object, "
                                                "memoryview found"):
                transport.writelines([b"<", strided, b">"])
            assert not transport.is_closing()
            transport.close()
            assert await asyncio.wait_for(protocol.lost, 5) is None
        else:
            if method == "write":
                transport.write(strided)
            else:
                transport.writelines([b"<", strided, b">"])
            exc = await asyncio.wait_for(protocol.lost, 5)
            assert type(exc) is BufferError
            assert [e['message'] for e in errors] == ['Fatal write error on socket transport']
        b.settimeout(5)
        assert b.recv(100) == b""              # nothing was sent


@pytest.mark.asyncio
@bounded()
async def test_a_view_that_is_not_contiguous_behind_queued_bytes_is_refused_as_stock_refuses_it():
    """Behind bytes the socket did not take: before 3.12 the stock transport adds the view to
    its bytearray -- TypeError out of write(), the transport open, the queued bytes delivered
    (uringloop ended the connection with a fatal BufferError and dropped them); from 3.12 it
    queues the view and the send that reaches it fails: a fatal BufferError."""
    loop = asyncio.get_running_loop()
    errors = []
    loop.set_exception_handler(lambda loop, ctx: errors.append(ctx))
    a, b = socket.socketpair()
    with b:
        transport, protocol = await loop.connect_accepted_socket(Recorder, a)
        transport.write(b"x" * 1_000_000)
        assert transport.get_write_buffer_size() > 0
        strided = memoryview(b"0123456789")[::2]
        if sys.version_info < (3, 12):
            with pytest.raises(TypeError, match="^can't set bytearray slice from memoryview$"):
                transport.write(strided)
            assert not transport.is_closing()
            transport.write(b"end")
            got = bytearray()
            b.setblocking(False)
            while len(got) < 1_000_003:
                chunk = await loop.sock_recv(b, 1 << 20)
                assert chunk
                got += chunk
            assert got == b"x" * 1_000_000 + b"end"
            transport.close()
            assert await asyncio.wait_for(protocol.lost, 5) is None
        else:
            transport.write(strided)
            b.setblocking(False)
            while not protocol.lost.done():     # (the stock transport's send waits for room)
                if not await asyncio.wait_for(loop.sock_recv(b, 1 << 20), 5):
                    break
            exc = await asyncio.wait_for(protocol.lost, 5)
            assert type(exc) is BufferError
            assert [e['message'] for e in errors] == ['Fatal write error on socket transport']


@pytest.mark.skipif(sys.version_info < (3, 12),
                    reason="the stock loop refuses a socket a live transport has from 3.12")
@pytest.mark.asyncio
@bounded()
@pytest.mark.parametrize("api", ["connect_accepted_socket", "create_connection"])
async def test_a_second_transport_on_a_socket_a_live_transport_has_is_refused(api):
    """3.12+'s _make_socket_transport(): RuntimeError("File descriptor ... is used by
    transport ...") -- uringloop made the second transport, which the first one's close then
    ended with EBADF."""
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    with b:
        first, protocol = await loop.connect_accepted_socket(Recorder, a)
        alias = socket.socket(fileno=a.fileno())      # the same descriptor, another object
        try:
            if api == "connect_accepted_socket":
                call = loop.connect_accepted_socket(Recorder, alias)
            else:
                call = loop.create_connection(Recorder, sock=alias)
            with pytest.raises(RuntimeError, match="is used by transport"):
                await call
        finally:
            alias.detach()
        first.write(b"first still works")
        b.settimeout(5)
        assert b.recv(100) == b"first still works"
        first.close()
        assert await asyncio.wait_for(protocol.lost, 5) is None


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


@pytest.mark.asyncio
@bounded()
@pytest.mark.parametrize("kind", ["Protocol", "BufferedProtocol"])
async def test_an_answer_and_close_after_the_first_bytes_of_a_burst_ends_cleanly(kind):
    """A server that answers and closes in its first data_received()/buffer_updated() while the
    rest of a 40 KB request is already there: the client gets the whole answer and a clean EOF,
    as on the stock loop, which reads up to 256 KiB at once and so leaves nothing unread.  (A
    reset asked for when a close dropped received bytes -- tried for closes with bytes truly
    unread -- reset such connections too, and threw away the answer's unsent part.)"""
    loop = asyncio.get_running_loop()
    answer = pattern(300_000)

    class AnswerAndClose(asyncio.BufferedProtocol if kind == "BufferedProtocol"
                         else asyncio.Protocol):
        buf = bytearray(65536)

        def connection_made(self, transport):
            self.transport = transport

        def get_buffer(self, sizehint):
            return self.buf

        def data_received(self, data):
            self.transport.write(answer)
            self.transport.close()

        def buffer_updated(self, nbytes):
            self.data_received(None)

    server = await loop.create_server(AnswerAndClose, "127.0.0.1", 0)
    client = socket.create_connection(server.sockets[0].getsockname()[:2])
    try:
        client.sendall(b"r" * 40_000)
        client.setblocking(False)
        got = bytearray()
        while True:
            data = await asyncio.wait_for(loop.sock_recv(client, 65536), 5)
            if not data:
                break
            got += data
    finally:
        client.close()
    assert bytes(got) == answer
    server.close()
    await server.wait_closed()
