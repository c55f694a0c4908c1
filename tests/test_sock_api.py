"""loop.sock_*: behaviour and errors, identical on uringloop and the stock loop."""

import asyncio
import contextlib
import errno
import os
import socket
import sys

import pytest

from helpers import (PACKET_P, PACKET_Q, RefusingFirstSends, cancel_a_receive_as_its_bytes_arrive,
                     lo_address, packet_socket)

needs_311 = pytest.mark.skipif(sys.version_info < (3, 11),
                               reason="sock_recvfrom/sock_sendto are in the stock loop since 3.11")


def nonblocking_pair(family=socket.AF_UNIX, type=socket.SOCK_STREAM):
    a, b = socket.socketpair(family, type)
    a.setblocking(False)
    b.setblocking(False)
    return a, b


async def tcp_pair():
    """A connected TCP pair made with sock_accept/sock_connect."""
    loop = asyncio.get_running_loop()
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        srv.setblocking(False)
        client = socket.socket()
        client.setblocking(False)
        accepted, _ = await asyncio.gather(loop.sock_accept(srv),
                                           loop.sock_connect(client, srv.getsockname()))
        conn, addr = accepted
        assert addr == client.getsockname()
        assert conn.gettimeout() == 0       # non-blocking, as the stock loop returns it
        return client, conn


def ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.asyncio
@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
async def test_sock_connect_to_this_host_lets_the_loop_run_before_it_returns(family):
    """connect(2) says EINPROGRESS and the stock loop resumes the caller from its writer
    callback, an iteration later, even when the loopback handshake is already done: callbacks
    due meanwhile run, and so does a server of the same loop accepting.  (uringloop returned
    at once when a poll found the connection made -- by its IPv4 shortcut or, for IPv6, the
    general path -- and a coroutine connecting in a loop to a listener of backlog 1 filled its
    queue before the server accepted: every other connect waited ~1 s for the client's SYN
    to be sent again.)"""
    if family == socket.AF_INET6 and not ipv6_loopback():
        pytest.skip("no IPv6 loopback here")
    loop = asyncio.get_running_loop()
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    accepted = []

    class Server(asyncio.Protocol):
        def connection_made(self, transport):
            accepted.append(transport)

    server = await loop.create_server(Server, host, 0, backlog=1)
    address = server.sockets[0].getsockname()
    clients = []
    try:
        for i in range(6):
            client = socket.socket(family)
            client.setblocking(False)
            clients.append(client)
            ran = []
            loop.call_soon(ran.append, i)
            await loop.sock_connect(client, address)
            assert ran == [i]
        # No connection's SYN was sent twice (struct tcp_info's tcpi_total_retrans).
        for client in clients:
            info = client.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
            assert int.from_bytes(info[100:104], sys.byteorder) == 0
        while len(accepted) < len(clients):
            await asyncio.sleep(0.01)
    finally:
        for client in clients:
            client.close()
        for transport in accepted:
            transport.close()
        server.close()
        await server.wait_closed()


@pytest.mark.asyncio
async def test_recv_returns_what_was_sent():
    loop = asyncio.get_running_loop()
    a, b = nonblocking_pair()
    with a, b:
        await loop.sock_sendall(a, b"hello")
        assert await loop.sock_recv(b, 100) == b"hello"


@pytest.mark.asyncio
async def test_recv_is_limited_to_n_and_keeps_the_rest():
    loop = asyncio.get_running_loop()
    a, b = nonblocking_pair()
    with a, b:
        await loop.sock_sendall(a, b"abcdefgh")
        assert await loop.sock_recv(b, 3) == b"abc"
        assert await loop.sock_recv(b, 100) == b"defgh"


@pytest.mark.asyncio
async def test_recv_zero_bytes_at_eof():
    loop = asyncio.get_running_loop()
    a, b = nonblocking_pair()
    with b:
        a.close()
        assert await loop.sock_recv(b, 10) == b""


@pytest.mark.asyncio
async def test_recv_waits_for_data_sent_later():
    loop = asyncio.get_running_loop()
    a, b = nonblocking_pair()
    with a, b:
        task = asyncio.ensure_future(loop.sock_recv(b, 10))
        await asyncio.sleep(0.01)
        assert not task.done()
        await loop.sock_sendall(a, b"late")
        assert await task == b"late"


@pytest.mark.asyncio
async def test_recv_into_writes_into_the_callers_buffer():
    loop = asyncio.get_running_loop()
    a, b = nonblocking_pair()
    with a, b:
        await loop.sock_sendall(a, b"0123456789")
        buf = bytearray(4)
        assert await loop.sock_recv_into(b, buf) == 4
        assert buf == b"0123"
        view = memoryview(bytearray(100))[10:20]
        assert await loop.sock_recv_into(b, view) == 6
        assert bytes(view[:6]) == b"456789"


@pytest.mark.asyncio
async def test_concurrent_receivers_are_served_in_order(is_uring):
    if not is_uring:
        pytest.skip("the stock loop leaves all but the last concurrent receiver pending "
                    "(each sock_recv replaces the fd's reader); uringloop queues them FIFO")
    loop = asyncio.get_running_loop()
    a, b = nonblocking_pair()
    with a, b:
        tasks = [asyncio.ensure_future(loop.sock_recv(b, 1)) for _ in range(3)]
        await asyncio.sleep(0)
        await loop.sock_sendall(a, b"x")
        done, pending = await asyncio.wait(tasks, timeout=0.05)
        assert [t.result() for t in done] == [b"x"]
        await loop.sock_sendall(a, b"yz")
        results = await asyncio.gather(*pending)
        assert sorted(results) == [b"y", b"z"]


@pytest.mark.asyncio
async def test_tcp_accept_connect_and_large_echo():
    loop = asyncio.get_running_loop()
    client, conn = await tcp_pair()
    payload = os.urandom(3 * 1024 * 1024 + 17)

    async def echo():
        while True:
            data = await loop.sock_recv(conn, 65536)
            if not data:
                break
            await loop.sock_sendall(conn, data)
        conn.close()

    async def send():
        await loop.sock_sendall(client, payload)
        client.shutdown(socket.SHUT_WR)

    echo_task = asyncio.ensure_future(echo())
    send_task = asyncio.ensure_future(send())
    received = bytearray()
    while True:
        data = await loop.sock_recv(client, 1 << 20)
        if not data:
            break
        received += data
    await asyncio.gather(echo_task, send_task)
    client.close()
    assert received == payload


@pytest.mark.asyncio
async def test_connect_resolves_hostnames():
    loop = asyncio.get_running_loop()
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        srv.setblocking(False)
        with socket.socket() as client:
            client.setblocking(False)
            accept = asyncio.ensure_future(loop.sock_accept(srv))
            await loop.sock_connect(client, ("localhost", srv.getsockname()[1]))
            conn, _ = await accept
            conn.close()


async def connect_and_accept(srv, address):
    """sock_connect a new socket to address and accept it on srv: the accepted peer address
    is the client's own (so it reached srv)."""
    loop = asyncio.get_running_loop()
    with socket.socket() as client:
        client.setblocking(False)
        await loop.sock_connect(client, address)
        conn, peer = await asyncio.wait_for(loop.sock_accept(srv), 5)
        conn.close()
        assert peer == client.getsockname()


@pytest.mark.asyncio
async def test_connect_address_forms_are_read_as_the_stock_loop_reads_them():
    """The numeric IPv4 pair (uringloop answers it without _ensure_resolved's coroutines) and
    the forms only address resolution turns into one: a port given as a string, a third item,
    a host name, bytes.  A host with an embedded NUL is socket.inet_pton()'s ValueError."""
    loop = asyncio.get_running_loop()
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        srv.setblocking(False)
        port = srv.getsockname()[1]
        for address in [("127.0.0.1", port), ("127.0.0.1", str(port)), ("127.0.0.1", port, 0),
                        ("localhost", port), (b"127.0.0.1", port), ["127.0.0.1", port]]:
            await connect_and_accept(srv, address)
        with socket.socket() as client:
            client.setblocking(False)
            with pytest.raises(ValueError):
                await loop.sock_connect(client, ("127.0.0.1\0", port))
            # A port out of range: socket.connect()'s OverflowError, on either loop.
            for bad_port in (-1, 65536, 2 ** 70):
                with pytest.raises(OverflowError):
                    await loop.sock_connect(client, ("127.0.0.1", bad_port))
    await still_works()


class SocketLike:
    """A wrapper that is not a socket.socket but answers for one (family, type, fileno,
    connect, getsockopt...), as some libraries' socket wrappers do."""

    def __init__(self, sock):
        self._sock = sock

    def __getattr__(self, name):
        return getattr(self._sock, name)


@pytest.mark.asyncio
async def test_connect_of_a_socket_like_wrapper_to_an_ipv4_literal():
    loop = asyncio.get_running_loop()
    with socket.socket() as srv, socket.socket() as client:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        srv.setblocking(False)
        client.setblocking(False)
        await loop.sock_connect(SocketLike(client), srv.getsockname())
        conn, peer = await asyncio.wait_for(loop.sock_accept(srv), 5)
        conn.close()
        assert peer == client.getsockname()


@pytest.mark.asyncio
async def test_connect_asks_a_replaced_ensure_resolved():
    """An _ensure_resolved replaced on the loop (a test's mock, an instrumented subclass) is
    asked for every address, the numeric ones included, as by the stock loop."""
    loop = asyncio.get_running_loop()
    asked = []
    original = loop._ensure_resolved

    async def spy(address, **kwargs):
        asked.append(address)
        return await original(address, **kwargs)

    loop._ensure_resolved = spy
    try:
        with socket.socket() as srv:
            srv.bind(("127.0.0.1", 0))
            srv.listen()
            srv.setblocking(False)
            await connect_and_accept(srv, srv.getsockname())
            assert asked == [srv.getsockname()]
    finally:
        del loop._ensure_resolved


@contextlib.asynccontextmanager
async def a_full_listener():
    """A listening socket whose queue is full (it has room for one connection, which a first
    client took), and a non-blocking socket whose connect to it will stay under way: yields
    (listener, that socket)."""
    loop = asyncio.get_running_loop()
    with socket.socket() as srv, socket.socket() as first, socket.socket() as second:
        srv.bind(("127.0.0.1", 0))
        srv.listen(0)
        first.setblocking(False)
        second.setblocking(False)
        await loop.sock_connect(first, srv.getsockname())
        yield srv, second


@pytest.mark.asyncio
async def test_a_connect_under_way_completes_once_the_listener_has_room():
    """A connect whose SYN finds the listener's queue full is under way when connect(2)
    returns (on uringloop: made by connect(2) itself, then a poll on the ring): once the
    listener accepts the connection ahead of it, the next SYN retransmission (~1 s) gets
    through, and sock_connect() returns with the socket connected to the listener."""
    loop = asyncio.get_running_loop()
    async with a_full_listener() as (srv, second):
        connecting = asyncio.ensure_future(loop.sock_connect(second, srv.getsockname()))
        await asyncio.sleep(0.1)
        assert not connecting.done()
        conn, _ = srv.accept()
        conn.close()
        assert await asyncio.wait_for(connecting, 10) is None
        assert second.getpeername() == srv.getsockname()
        conn, peer = srv.accept()
        conn.close()
        assert peer == second.getsockname()
    await still_works()


@pytest.mark.asyncio
async def test_a_cancelled_connect_leaves_the_loop_and_socket_usable(is_uring):
    """A connect still under way (the listener's queue is full, so its SYN goes unanswered)
    cancelled by wait_for: TimeoutError, and on uringloop the poll that waited for it is
    cancelled in the kernel (nothing stays in flight).  The loop serves the next call."""
    loop = asyncio.get_running_loop()
    async with a_full_listener() as (srv, second):
        if is_uring:
            in_flight = loop.statistics()["inflight"]
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(loop.sock_connect(second, srv.getsockname()), 0.2)
        if is_uring:
            for _ in range(100):
                if loop.statistics()["inflight"] == in_flight:
                    break
                await asyncio.sleep(0.01)
            assert loop.statistics()["inflight"] == in_flight
    await still_works()


@pytest.mark.asyncio
async def test_accept_of_a_connection_already_queued():
    # The other path of tcp_pair's accept, which waits for its connection: this one is in the
    # listener's queue before sock_accept() is called.
    loop = asyncio.get_running_loop()
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        srv.setblocking(False)
        with socket.create_connection(srv.getsockname()) as client:
            conn, addr = await loop.sock_accept(srv)
            with conn:
                assert addr == client.getsockname()
                assert conn.gettimeout() == 0
                assert (conn.family, conn.type, conn.proto) == (srv.family, srv.type, srv.proto)
                client.sendall(b"queued")
                assert await loop.sock_recv(conn, 100) == b"queued"


@pytest.mark.asyncio
async def test_accept_on_a_blocking_listener_does_not_block_the_loop(is_uring):
    if not is_uring:
        pytest.skip("the stock loop calls accept() on a blocking listener and blocks in it "
                    "(asyncio requires non-blocking sockets; only debug mode checks)")
    loop = asyncio.get_running_loop()
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        accept = asyncio.ensure_future(loop.sock_accept(srv))
        ticks = 0
        while ticks < 5:            # the loop keeps running while the accept waits
            await asyncio.sleep(0.01)
            ticks += 1
        assert not accept.done()
        with socket.create_connection(srv.getsockname()) as client:
            conn, addr = await asyncio.wait_for(accept, 10)
            with conn:
                assert addr == client.getsockname()
                assert conn.gettimeout() == 0


@pytest.mark.asyncio
async def test_a_receive_on_a_blocking_datagram_socket_does_not_block_the_loop(is_uring):
    if not is_uring:
        pytest.skip("the stock loop calls recv() on a blocking socket and blocks in it "
                    "(asyncio requires non-blocking sockets; only debug mode checks)")
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
        a.bind(("127.0.0.1", 0))                  # left in blocking mode
        b.bind(("127.0.0.1", 0))
        receiving = asyncio.ensure_future(loop.sock_recvfrom(a, 100))
        for _ in range(5):                        # the loop keeps running while it waits
            await asyncio.sleep(0.01)
        assert not receiving.done()
        b.sendto(b"late", a.getsockname())
        assert await asyncio.wait_for(receiving, 10) == (b"late", b.getsockname())


@pytest.mark.asyncio
async def test_unix_socket_accept_and_connect(tmp_path):
    loop = asyncio.get_running_loop()
    path = str(tmp_path / "sock")
    with socket.socket(socket.AF_UNIX) as srv:
        srv.bind(path)
        srv.listen()
        srv.setblocking(False)
        with socket.socket(socket.AF_UNIX) as client:
            client.setblocking(False)
            (conn, addr), _ = await asyncio.gather(loop.sock_accept(srv),
                                                   loop.sock_connect(client, path))
            with conn:
                assert addr == ""          # an unnamed client socket, as socket.accept() says
                await loop.sock_sendall(client, b"over unix")
                assert await loop.sock_recv(conn, 100) == b"over unix"


@needs_311
@pytest.mark.asyncio
async def test_udp_sendto_and_recvfrom():
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        a.setblocking(False)
        b.setblocking(False)
        assert await loop.sock_sendto(a, b"datagram", b.getsockname()) == 8
        data, addr = await loop.sock_recvfrom(b, 100)
        assert (data, addr) == (b"datagram", a.getsockname())
        await loop.sock_sendto(a, b"second", b.getsockname())
        buf = bytearray(64)
        nbytes, addr = await loop.sock_recvfrom_into(b, buf)
        assert (bytes(buf[:nbytes]), addr) == (b"second", a.getsockname())


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["unix", "tcp", "udp"])
async def test_zero_size_recv_returns_at_once_and_takes_nothing(kind):
    """recv(0) and recv_into(an empty buffer) return b'' and 0 at once, with nothing waiting
    and with data waiting, and leave the data (or the datagram) for the next read, as
    socket.recv() does (uringloop once waited for data before returning b'')."""
    loop = asyncio.get_running_loop()
    if kind == "udp":
        a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        b.bind(("127.0.0.1", 0))
        a.connect(b.getsockname())
        a.setblocking(False)
        b.setblocking(False)
    else:
        a, b = nonblocking_pair() if kind == "unix" else await tcp_pair()
    with a, b:
        for waiting in (False, True):
            if waiting:
                await loop.sock_sendall(a, b"kept")
                await asyncio.sleep(0.05)
            assert await asyncio.wait_for(loop.sock_recv(b, 0), 5) == b""
            assert await asyncio.wait_for(loop.sock_recv_into(b, bytearray()), 5) == 0
        assert await asyncio.wait_for(loop.sock_recv(b, 100), 5) == b"kept"
    await still_works()


def connected_udp_pair():
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    b.bind(("127.0.0.1", 0))
    a.connect(b.getsockname())
    b.connect(a.getsockname())
    a.setblocking(False)
    b.setblocking(False)
    return a, b


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["unix", "tcp", "udp"])
async def test_zero_size_recv_behind_a_waiting_receive_returns_at_once(kind):
    # socket.recv(0) and recv_into() of an empty buffer take nothing, so they need not wait
    # their turn: the stock loop answers them at once.  (uringloop queued them: on a stream it
    # then waited in the kernel for more data; on a datagram socket it waited for a datagram
    # and swallowed it, so the receive waiting first never got it.)
    loop = asyncio.get_running_loop()
    if kind == "udp":
        a, b = connected_udp_pair()
    else:
        a, b = nonblocking_pair() if kind == "unix" else await tcp_pair()
    with a, b:
        waiting = asyncio.ensure_future(loop.sock_recv(b, 100))
        await asyncio.sleep(0)
        assert await asyncio.wait_for(loop.sock_recv(b, 0), 5) == b""
        assert await asyncio.wait_for(loop.sock_recv_into(b, bytearray()), 5) == 0
        assert not waiting.done()
        await loop.sock_sendall(a, b"for the first")
        assert await asyncio.wait_for(waiting, 5) == b"for the first"
    await still_works()


@pytest.mark.asyncio
@pytest.mark.parametrize("type", [socket.SOCK_DGRAM, socket.SOCK_SEQPACKET],
                         ids=["dgram", "seqpacket"])
async def test_sendall_of_nothing_sends_an_empty_datagram(type):
    loop = asyncio.get_running_loop()
    a, b = nonblocking_pair(type=type)
    with a, b:
        await loop.sock_sendall(a, b"")
        await loop.sock_sendall(a, b"second")
        assert await asyncio.wait_for(loop.sock_recv(b, 100), 5) == b""
        assert await asyncio.wait_for(loop.sock_recv(b, 100), 5) == b"second"


@needs_311
@pytest.mark.asyncio
async def test_sendto_to_a_refused_address_is_a_type_error_of_that_call_only():
    """No address, or one of the wrong shape: TypeError, as socket.sendto() raises it, and the
    next sendto on the socket is not affected (uringloop once sent to None as if connected,
    and left a refused request queued, failing the calls after it)."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
        b.bind(("127.0.0.1", 0))
        a.connect(b.getsockname())
        a.setblocking(False)
        b.setblocking(False)
        with pytest.raises(TypeError):
            await loop.sock_sendto(a, b"x", None)
        with pytest.raises(TypeError):
            await loop.sock_sendto(a, b"x", b.getsockname() + (0, 0))   # AF_INET6's shape
        await loop.sock_sendto(a, b"after", b.getsockname())
        assert await asyncio.wait_for(loop.sock_recv(b, 100), 5) == b"after"   # nothing before
    await still_works()


@needs_311
@pytest.mark.asyncio
async def test_udp_ipv6_addresses_have_four_fields():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    loop = asyncio.get_running_loop()
    try:
        a = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        a.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback: {exc}")
    with a, socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as b:
        b.bind(("::1", 0))
        a.setblocking(False)
        b.setblocking(False)
        await loop.sock_sendto(a, b"six", b.getsockname())
        data, addr = await loop.sock_recvfrom(b, 100)
        assert data == b"six"
        assert addr == a.getsockname()


# ---- bad input: the stock loop's exception types, and the loop keeps working ----

async def still_works():
    loop = asyncio.get_running_loop()
    a, b = nonblocking_pair()
    with a, b:
        await loop.sock_sendall(a, b"ok")
        assert await loop.sock_recv(b, 10) == b"ok"


@pytest.mark.asyncio
async def test_recv_into_read_only_buffer_is_a_type_error():
    loop = asyncio.get_running_loop()
    a, b = nonblocking_pair()
    with a, b:
        await loop.sock_sendall(a, b"data")
        with pytest.raises(TypeError):
            await loop.sock_recv_into(b, b"immutable")
        # nothing was consumed by the failed call
        assert await loop.sock_recv(b, 10) == b"data"
    await still_works()


@pytest.mark.asyncio
@pytest.mark.parametrize("bad", ["text", b"read-only", 5, bytearray(12)],
                         ids=["str", "bytes", "int", "strided"])
async def test_buffer_errors_are_the_socket_methods_own(bad):
    """What is not a writable contiguous buffer gets the TypeError, with the message, that the
    socket's recv_into()/recvfrom_into() give it (recvfrom_into first asks for its length, as
    the stock loop does), and sock_sendall() the one socket.send() gives what is no buffer;
    nothing is read or lost."""
    if isinstance(bad, bytearray):
        bad = memoryview(bad)[::2]
    loop = asyncio.get_running_loop()
    a, b = nonblocking_pair()
    with a, b:
        a.send(b"kept")
        name = type(bad).__name__
        with pytest.raises(TypeError) as raised:
            await asyncio.wait_for(loop.sock_recv_into(b, bad), 5)
        assert str(raised.value) == (
            f"recv_into() argument 1 must be read-write bytes-like object, not {name}")
        if sys.version_info >= (3, 11):      # sock_recvfrom_into: the stock loop's from 3.11
            with pytest.raises(TypeError) as raised:
                await asyncio.wait_for(loop.sock_recvfrom_into(b, bad), 5)
            assert str(raised.value) == (
                "object of type 'int' has no len()" if isinstance(bad, int) else
                f"recvfrom_into() argument 1 must be read-write bytes-like object, not {name}")
        if not isinstance(bad, (bytes, memoryview)):
            with pytest.raises(TypeError) as raised:
                await asyncio.wait_for(loop.sock_sendall(a, bad), 5)
            assert str(raised.value) == f"a bytes-like object is required, not '{name}'"
            if sys.version_info >= (3, 11):  # sock_sendto: the stock loop's from 3.11
                with pytest.raises(TypeError) as raised:
                    await asyncio.wait_for(loop.sock_sendto(a, bad, b.getsockname()), 5)
                assert str(raised.value) == f"a bytes-like object is required, not '{name}'"
        assert await asyncio.wait_for(loop.sock_recv(b, 10), 5) == b"kept"


@pytest.mark.asyncio
async def test_recv_into_a_strided_buffer_is_a_type_error_of_that_call_only():
    """A buffer that is not contiguous is refused with TypeError, as socket.recv_into() refuses
    it; the next recv_into -- into a 2-D but contiguous view, which recv_into() accepts -- gets
    the bytes (uringloop once left the refused request queued, failing the calls after it)."""
    loop = asyncio.get_running_loop()
    a, b = nonblocking_pair()
    with a, b:
        a.send(b"123456")
        with pytest.raises(TypeError):
            await asyncio.wait_for(loop.sock_recv_into(b, memoryview(bytearray(12))[::2]), 5)
        target = bytearray(6)
        assert await asyncio.wait_for(
            loop.sock_recv_into(b, memoryview(target).cast("B", (2, 3))), 5) == 6
        assert target == b"123456"
    await still_works()


@pytest.mark.asyncio
async def test_closed_socket_is_an_oserror():
    loop = asyncio.get_running_loop()
    a, b = nonblocking_pair()
    a.close()
    b.close()
    with pytest.raises(OSError):
        await loop.sock_recv(b, 10)
    with pytest.raises(OSError):
        await loop.sock_sendall(a, b"x")
    await still_works()


@pytest.mark.asyncio
async def test_a_read_of_nothing_from_a_closed_socket_is_answered_as_its_method_answers():
    """socket.recv(0) and recv_into() of an empty buffer return b'' and 0 without a system
    call, closed socket or not, and the stock loop's sock_recv() tries them first.  (uringloop
    raised EBADF.)  Anything else on the closed socket is still EBADF."""
    loop = asyncio.get_running_loop()
    a, b = nonblocking_pair()
    a.close()
    b.close()
    assert await loop.sock_recv(b, 0) == b""
    assert await loop.sock_recv_into(b, bytearray()) == 0
    with pytest.raises(OSError) as raised:
        await loop.sock_recv_into(b, bytearray(1))
    assert raised.value.errno == errno.EBADF
    await still_works()


@pytest.mark.asyncio
async def test_negative_and_huge_sizes():
    loop = asyncio.get_running_loop()
    a, b = nonblocking_pair()
    with a, b:
        with pytest.raises(ValueError):
            await loop.sock_recv(b, -1)
        with pytest.raises(OverflowError):
            await loop.sock_recv(b, 1 << 70)
    await still_works()


@pytest.mark.asyncio
async def test_a_size_that_is_not_an_integer_fails_when_awaited():
    """As with the stock loop's coroutines, creating the coroutine checks nothing: the
    TypeError comes from awaiting it (a task made from it fails, its creator does not)."""
    loop = asyncio.get_running_loop()
    a, b = nonblocking_pair()
    with a, b:
        made = [loop.sock_recv(b, 1.5)]
        if hasattr(loop, 'sock_recvfrom'):     # the stock loop has it from 3.11 on
            made += [loop.sock_recvfrom(b, '10'), loop.sock_recvfrom_into(b, bytearray(4), 2.0)]
        for coro in made:
            with pytest.raises(TypeError, match='integer'):
                await coro
    await still_works()


@pytest.mark.asyncio
async def test_accept_on_a_datagram_socket_is_an_oserror():
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        s.bind(("127.0.0.1", 0))
        with pytest.raises(OSError) as info:
            await loop.sock_accept(s)
        assert info.value.errno == errno.EOPNOTSUPP
    await still_works()


@pytest.mark.asyncio
async def test_non_socket_argument():
    loop = asyncio.get_running_loop()
    with pytest.raises(AttributeError):
        await loop.sock_recv(42, 10)
    await still_works()


@pytest.mark.asyncio
async def test_sendall_of_a_str_is_a_type_error():
    loop = asyncio.get_running_loop()
    a, b = nonblocking_pair()
    with a, b:
        with pytest.raises(TypeError):
            await loop.sock_sendall(a, "text")
    await still_works()


@pytest.mark.asyncio
async def test_connection_refused():
    loop = asyncio.get_running_loop()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]     # bound, never listening: connect is refused
        with socket.socket() as client:
            client.setblocking(False)
            with pytest.raises(ConnectionRefusedError):
                await loop.sock_connect(client, ("127.0.0.1", port))
    await still_works()


@pytest.mark.asyncio
async def test_peer_reset():
    loop = asyncio.get_running_loop()
    client, conn = await tcp_pair()
    with client, conn:
        # SO_LINGER 0: close sends RST instead of FIN.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        client.close()
        await asyncio.sleep(0.01)
        with pytest.raises(ConnectionResetError):
            await loop.sock_recv(conn, 10)
    await still_works()


@pytest.mark.asyncio
async def test_ssl_socket_is_refused():
    ssl = pytest.importorskip("ssl")
    loop = asyncio.get_running_loop()
    ctx = ssl.create_default_context()
    with socket.socket() as raw:
        sslsock = ctx.wrap_socket(raw, do_handshake_on_connect=False, server_hostname="x")
        with sslsock:
            with pytest.raises(TypeError):
                await loop.sock_recv(sslsock, 10)


@pytest.mark.asyncio
async def test_debug_mode_refuses_blocking_sockets():
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    try:
        a, b = socket.socketpair()
        with a, b:
            with pytest.raises(ValueError):
                await loop.sock_recv(a, 10)
    finally:
        loop.set_debug(False)


@pytest.mark.asyncio
async def test_debug_mode_refuses_a_blocking_socket_before_looking_at_the_arguments():
    """The stock loop checks the socket first, then calls the socket's method, which checks the
    arguments: a blocking socket with a bad argument is the socket's ValueError.  (uringloop
    raised the argument's error first.)"""
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    try:
        a, b = socket.socketpair()
        with a, b:
            calls = [loop.sock_recv(b, -1), loop.sock_recv_into(b, b"read-only"),
                     loop.sock_sendall(a, "text")]
            if sys.version_info >= (3, 11):
                calls += [loop.sock_recvfrom(b, -1), loop.sock_sendto(a, "text", None)]
            for call in calls:
                with pytest.raises(ValueError, match="the socket must be non-blocking"):
                    await call
    finally:
        loop.set_debug(False)


@needs_311
@pytest.mark.asyncio
@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_UNIX], ids=["udp", "unix-dgram"])
async def test_a_datagram_arriving_as_its_receiver_is_cancelled_stays_whole(family, tmp_path):
    """A sock_recv(sock, 4) cancelled in the pass its datagram arrives in: the datagram stays
    whole, with its sender's address, for the next receive, as with the stock loop (which reads
    only for a caller still waiting).  uringloop's receive request had taken it, cut to 4
    bytes, and the next sock_recvfrom() got (b'0123', None)."""
    loop = asyncio.get_running_loop()
    a = socket.socket(family, socket.SOCK_DGRAM)
    b = socket.socket(family, socket.SOCK_DGRAM)
    with a, b:
        if family == socket.AF_INET:
            a.bind(("127.0.0.1", 0))
            b.bind(("127.0.0.1", 0))
        else:
            a.bind(str(tmp_path / "a"))
            b.bind(str(tmp_path / "b"))
        a.setblocking(False)
        for round in range(3):
            receiving = asyncio.ensure_future(loop.sock_recv(a, 4))
            await asyncio.sleep(0.01)
            b.sendto(b"0123456789AB-%d" % round, a.getsockname())
            receiving.cancel()
            with pytest.raises(asyncio.CancelledError):
                await receiving
            got = await asyncio.wait_for(loop.sock_recvfrom(a, 100), 5)
            assert got == (b"0123456789AB-%d" % round, b.getsockname())


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["recv", "recv_into", "recvfrom", "recvfrom_into"])
async def test_a_datagram_given_back_by_a_cancelled_receiver_keeps_its_address(is_uring, kind):
    """A sock_recv*() whose datagram was received for it but whose task was cancelled before it
    resumed gives the datagram back -- with its sender's address, for a later sock_recvfrom()
    (uringloop kept (data, None): sock_recv received without the address).  The window is
    made with two concurrent receivers served in one pass: the first, resuming, cancels the
    second."""
    if not is_uring:
        pytest.skip("the stock loop leaves all but the last concurrent receiver pending "
                    "(each add_reader() replaces the one before)")
    loop = asyncio.get_running_loop()
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with a, b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        a.setblocking(False)

        async def receive():
            buf = bytearray(100)
            if kind == "recv":
                return await loop.sock_recv(a, 100)
            if kind == "recv_into":
                n = await loop.sock_recv_into(a, buf)
            elif kind == "recvfrom":
                data, addr = await loop.sock_recvfrom(a, 100)
                assert addr == b.getsockname()
                return data
            else:
                n, addr = await loop.sock_recvfrom_into(a, buf)
                assert addr == b.getsockname()
            return bytes(buf[:n])

        second = None

        async def first_then_cancel_the_second():
            data = await receive()
            second.cancel()
            return data

        first = asyncio.ensure_future(first_then_cancel_the_second())
        await asyncio.sleep(0.01)
        second = asyncio.ensure_future(receive())
        await asyncio.sleep(0.01)
        b.sendto(b"one", a.getsockname())
        b.sendto(b"two", a.getsockname())
        assert await asyncio.wait_for(first, 5) == b"one"
        with pytest.raises(asyncio.CancelledError):
            await second
        got = await asyncio.wait_for(loop.sock_recvfrom(a, 100), 5)
        assert got == (b"two", b.getsockname())


@pytest.mark.asyncio
async def test_argument_errors_come_before_a_closed_socket_is_noticed():
    """sock_recv(closed, -1) raises the stock loop's ValueError, and a buffer the call cannot
    use its TypeError (uringloop: EBADF, its socket check came first)."""
    loop = asyncio.get_running_loop()
    a, b = nonblocking_pair()
    b.close()
    a.close()
    with pytest.raises(ValueError):
        await loop.sock_recv(a, -1)
    if sys.version_info >= (3, 11):
        with pytest.raises(ValueError):
            await loop.sock_recvfrom(a, -1)
    with pytest.raises(TypeError):
        await loop.sock_recv_into(a, b"read-only")
    with pytest.raises(TypeError):
        await loop.sock_sendall(a, 123)


@needs_311
@pytest.mark.asyncio
async def test_recvfrom_on_a_stream_socket_gets_bytes_a_cancelled_receive_left():
    """recvfrom on a connected stream socket gives (data, None); bytes a cancelled sock_recv()
    took are served to it like that (uringloop raised TypeError for sock_recvfrom and returned
    a bare count for sock_recvfrom_into, the bytes stuck)."""
    loop = asyncio.get_running_loop()
    a, b = nonblocking_pair()
    with a, b:
        for use_into in (False, True):
            await cancel_a_receive_as_its_bytes_arrive(loop.sock_recv(b, 100),
                                                       lambda: a.send(b"one"))
            if use_into:
                buf = bytearray(10)
                nbytes, addr = await asyncio.wait_for(loop.sock_recvfrom_into(b, buf), 5)
                got = (bytes(buf[:nbytes]), addr)
            else:
                got = await asyncio.wait_for(loop.sock_recvfrom(b, 100), 5)
            assert got == (b"one", None)


async def reset_as_a_receive_is_cancelled(client, conn):
    """The peer (`client`) resets the connection in the pass a sock_recv() on `conn` is
    cancelled in: on uringloop the cancelled receive, already in the kernel, takes the error."""
    import struct
    loop = asyncio.get_running_loop()
    receiving = asyncio.ensure_future(loop.sock_recv(conn, 100))
    await asyncio.sleep(0.01)
    receiving.cancel()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    with pytest.raises(asyncio.CancelledError):
        await receiving
    await asyncio.sleep(0.01)


@pytest.mark.parametrize("payload", [b"x" * 10, b""], ids=["bytes", "nothing"])
@pytest.mark.asyncio
async def test_a_reset_arriving_as_a_receiver_is_cancelled_is_told_to_the_next_send(payload):
    """The peer resets the connection in the pass a sock_recv() is cancelled in.  The kernel
    tells a connection's error once, to the first call that asks: the stock loop made no
    receive, so its next sock_sendall() gets ConnectionResetError and the receive after it
    b''.  On uringloop the cancelled receive was in the kernel and took the error; it keeps it
    for the next call -- the send, which got BrokenPipeError before, the error then going to
    the receive after it.  A send of nothing asks too (the stock loop's sock.send(b''); it
    was answered at once, the error left for the receive)."""
    loop = asyncio.get_running_loop()
    client, conn = await tcp_pair()
    with client, conn:
        await reset_as_a_receive_is_cancelled(client, conn)
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(loop.sock_sendall(conn, payload), 5)
        assert await asyncio.wait_for(loop.sock_recv(conn, 100), 5) == b""


@pytest.mark.parametrize("after", ["sock_recv", "transport"])
def test_bytes_a_cancelled_receive_took_reach_the_sockets_next_loop(new_loop, after):
    """A sock_recv() cancelled as the peer sends, then the loop closed and the socket read on
    a new loop (two asyncio.run() calls in a row): the bytes reach the new loop's reader.  The
    stock loop never took them from the socket; uringloop's receive had, and they were lost
    with the first loop's sock_* state."""
    a, b = nonblocking_pair()
    with a, b:
        async def cancelled_receive():
            loop = asyncio.get_running_loop()
            receiving = asyncio.ensure_future(loop.sock_recv(a, 100))
            await asyncio.sleep(0.01)
            receiving.cancel()
            b.send(b"payload")
            with pytest.raises(asyncio.CancelledError):
                await receiving
            await asyncio.sleep(0.01)

        first = new_loop()
        first.run_until_complete(cancelled_receive())
        first.close()

        async def read_again():
            loop = asyncio.get_running_loop()
            if after == "sock_recv":
                return await asyncio.wait_for(loop.sock_recv(a, 100), 5)
            received = loop.create_future()

            class Reader(asyncio.Protocol):
                def data_received(self, data):
                    received.set_result(data)

            transport, _ = await loop.create_connection(Reader, sock=a)
            try:
                return await asyncio.wait_for(received, 5)
            finally:
                transport.abort()

        second = new_loop()
        try:
            assert second.run_until_complete(read_again()) == b"payload"
        finally:
            second.close()


@pytest.mark.parametrize("empty_read", ["recv", "recv_into"])
@pytest.mark.asyncio
async def test_a_reset_a_cancelled_receiver_kept_is_not_told_to_an_empty_read(empty_read):
    """As above, then a read of nothing: the stock loop's sock.recv(0) answers b'' at once
    without asking the kernel, so the error waits for the next read of some size.  uringloop
    told the error to the empty read, and the read after it got b''."""
    loop = asyncio.get_running_loop()
    client, conn = await tcp_pair()
    with client, conn:
        await reset_as_a_receive_is_cancelled(client, conn)
        if empty_read == "recv":
            assert await asyncio.wait_for(loop.sock_recv(conn, 0), 5) == b""
        else:
            assert await asyncio.wait_for(loop.sock_recv_into(conn, bytearray()), 5) == 0
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(loop.sock_recv(conn, 100), 5)
        assert await asyncio.wait_for(loop.sock_recv(conn, 100), 5) == b""


@needs_311
@pytest.mark.asyncio
async def test_recvfrom_into_without_nbytes_asks_for_len_of_the_buffer():
    """nbytes 0 or None means len(buf), as in the stock loop -- items, not bytes, for an
    array of wider items (uringloop refused None and filled the whole array's bytes)."""
    import array
    loop = asyncio.get_running_loop()
    a, b = connected_udp_pair()
    with a, b:
        a.send(b"12345678")
        a.send(b"abcdefgh")
        buf = array.array("i", [0, 0])
        nbytes, _ = await asyncio.wait_for(loop.sock_recvfrom_into(b, buf, None), 5)
        assert nbytes == 2 and buf.tobytes()[:2] == b"12"
        nbytes, _ = await asyncio.wait_for(loop.sock_recvfrom_into(b, bytearray(16), 0), 5)
        assert nbytes == 8


@pytest.mark.asyncio
async def test_bytes_a_cancelled_receive_left_reach_the_transport_that_takes_the_socket():
    """Bytes a cancelled sock_recv() took are delivered by the transport the socket is handed
    to, before what it receives itself (uringloop dropped them with the socket's sock_*
    state).  On the stock loop they were never taken from the socket."""
    loop = asyncio.get_running_loop()
    a, b = nonblocking_pair()
    with b:
        receiving = asyncio.ensure_future(loop.sock_recv(a, 100))
        await asyncio.sleep(0.01)
        b.send(b"HELLO ")
        receiving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await receiving
        reader, writer = await asyncio.open_connection(sock=a)
        b.send(b"world")
        b.shutdown(socket.SHUT_WR)
        assert await asyncio.wait_for(reader.read(), 5) == b"HELLO world"
        writer.close()
        await writer.wait_closed()


@pytest.mark.asyncio
async def test_a_read_only_buffer_for_bytes_the_transport_holds_is_a_read_error():
    """A BufferedProtocol whose get_buffer() returns a read-only buffer, given bytes the
    transport already holds (here: what a cancelled sock_recv() left): the connection ends with
    the TypeError the stock transport's recv_into() raises (uringloop: BufferError, reported as
    a get_buffer() failure)."""
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda loop, context: None)
    lost = loop.create_future()

    class ReadOnly(asyncio.BufferedProtocol):
        def get_buffer(self, sizehint):
            return b"read-only buffer"

        def buffer_updated(self, nbytes):
            pass

        def connection_lost(self, exc):
            lost.set_result(exc)

    a, b = nonblocking_pair()
    try:
        with b:
            receiving = asyncio.ensure_future(loop.sock_recv(a, 100))
            await asyncio.sleep(0.01)
            b.send(b"HELLO")
            receiving.cancel()
            with pytest.raises(asyncio.CancelledError):
                await receiving
            await loop.create_connection(ReadOnly, sock=a)
            assert isinstance(await asyncio.wait_for(lost, 5), TypeError)
    finally:
        loop.set_exception_handler(None)


@pytest.mark.asyncio
async def test_a_transport_taking_the_socket_before_a_cancelled_receive_unwound_loses_nothing():
    """create_connection(sock=) right after cancelling a sock_recv() whose task has not yet run:
    the receive is still in the kernel and takes the peer's next bytes -- which the transport
    delivers first, then what it receives itself.  uringloop kept them for a next sock_*
    caller who never came (the protocol got b'0123456789', b'early' was lost).  The stock loop
    leaves them in the socket (and reports a RuntimeError from its replaced reader)."""
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda loop, context: None)     # the stock loop's RuntimeError
    received = bytearray()

    class Proto(asyncio.Protocol):
        def data_received(self, data):
            received.extend(data)

    a, b = nonblocking_pair()
    try:
        with b:
            receiving = asyncio.ensure_future(loop.sock_recv(a, 100))
            await asyncio.sleep(0.05)
            receiving.cancel()
            b.send(b"early")
            transport, _ = await loop.create_connection(Proto, sock=a)
            b.send(b"0123456789")
            for _ in range(100):
                if len(received) >= 15:
                    break
                await asyncio.sleep(0.01)
            assert bytes(received) == b"early0123456789"
            transport.close()
            await asyncio.sleep(0.01)
    finally:
        loop.set_exception_handler(None)
        a.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("type", [socket.SOCK_STREAM, socket.SOCK_DGRAM], ids=["stream", "dgram"])
@pytest.mark.parametrize("address", ["", b""], ids=["str", "bytes"])
async def test_an_empty_unix_address_is_refused(type, address):
    """An empty AF_UNIX address is invalid (EINVAL from connect/sendto, as socket.connect('')
    raises), not the abstract name b'\\0' (uringloop connected, and sent, to whoever had
    bound that name)."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_UNIX, type) as squatter:
        squatter.bind(b"\0")                # the empty abstract name: what must not be reached
        if type == socket.SOCK_STREAM:
            squatter.listen()
        with socket.socket(socket.AF_UNIX, type) as sock:
            sock.setblocking(False)
            with pytest.raises(OSError) as raised:
                if type == socket.SOCK_STREAM or sys.version_info < (3, 11):
                    await loop.sock_connect(sock, address)
                else:
                    await loop.sock_sendto(sock, b"lost", address)
            assert raised.value.errno == errno.EINVAL


@pytest.mark.asyncio
async def test_connect_errors_the_kernel_reports_at_once_are_socket_connects(tmp_path):
    """What connect(2) refuses at once is raised as socket.connect() raises it (the stock loop
    calls it first); only failures learnt later say 'Connect call failed'.  (uringloop said
    'Connect call failed' for all, and create_connection() to a host whose addresses all fail
    alike then raised 'Multiple exceptions' with no errno.)"""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.setblocking(False)
        with pytest.raises(FileNotFoundError) as raised:
            await loop.sock_connect(sock, str(tmp_path / "nobody"))
        assert raised.value.strerror == os.strerror(errno.ENOENT)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        with socket.socket() as sock:
            sock.setblocking(False)
            with pytest.raises(ConnectionRefusedError) as raised:
                await loop.sock_connect(sock, probe.getsockname())
            assert "Connect call failed" in str(raised.value)     # learnt from the poll


@needs_311
@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["recv", "recv_into"])
async def test_a_receive_retried_under_a_deadline_already_past_reaches_the_end(kind):
    """A caller retrying sock_recv() under a deadline already past (asyncio.timeout(0), a
    polling loop) gets every byte and then the end of the stream, b''.  On uringloop the
    receive waits for its completion, so each try may time out; the end met by a receive
    whose caller had gone was dropped, and every later try was cancelled before its own
    receive could meet it again: the loop never ended."""
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    with a:
        b.sendall(b"abc")
        b.close()
        got, timeouts = [], 0
        for _ in range(100):
            try:
                async with asyncio.timeout(0):
                    if kind == "recv":
                        chunk = await loop.sock_recv(a, 2)
                    else:
                        buf = bytearray(2)
                        chunk = bytes(buf[:await loop.sock_recv_into(a, buf)])
            except TimeoutError:
                timeouts += 1
                continue
            got.append(chunk)
            if not chunk:
                break
        assert got == [b"ab", b"c", b""]
        assert timeouts < 10


@pytest.mark.asyncio
async def test_connect_errors_of_a_socket_in_blocking_mode_are_its_connects(tmp_path):
    """A socket left in blocking mode (a common slip; asyncio wants non-blocking sockets): the
    stock loop's sock_connect() calls its connect(), which blocks and raises as socket.connect()
    raises -- no 'Connect call failed <address>', which uringloop's connect request gave."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_UNIX) as sock:
        with pytest.raises(FileNotFoundError) as raised:
            await loop.sock_connect(sock, str(tmp_path / "nobody"))
        assert str(raised.value) == f"[Errno {errno.ENOENT}] {os.strerror(errno.ENOENT)}"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        with socket.socket() as sock:
            with pytest.raises(ConnectionRefusedError) as raised:
                await loop.sock_connect(sock, probe.getsockname())
            assert str(raised.value) == (f"[Errno {errno.ECONNREFUSED}] "
                                         f"{os.strerror(errno.ECONNREFUSED)}")


@needs_311
@pytest.mark.asyncio
async def test_a_family_without_host_and_port_addresses_works():
    """AF_NETLINK (needs no privilege): sock_connect, sock_sendto and sock_recvfrom convert its
    (pid, groups) addresses as the socket module does (uringloop raised EAFNOSUPPORT and gave
    the address as raw bytes)."""
    import struct
    loop = asyncio.get_running_loop()
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    except OSError as exc:
        pytest.skip(f"no netlink socket here: {exc}")
    # RTM_GETLINK, dump: the kernel answers with at least one message from (0, 0).
    request = (struct.pack("=IHHII", 32, 18, 0x301, 1, 0)
               + struct.pack("=BxHiII", 0, 0, 0, 0, 0))
    with sock:
        sock.setblocking(False)
        sock.bind((0, 0))
        await loop.sock_connect(sock, (0, 0))
        assert await loop.sock_sendto(sock, request, (0, 0)) == len(request)
        data, addr = await asyncio.wait_for(loop.sock_recvfrom(sock, 65536), 5)
        assert addr == (0, 0) and len(data) >= 16


@needs_311
@pytest.mark.asyncio
async def test_a_packet_socket_sends_and_receives_with_the_socket_modules_addresses():
    """AF_PACKET (a family the core does not convert): sock_sendto() takes the addresses
    socket.sendto() takes -- also when the socket has no room at first and the datagram must
    wait for it (uringloop's request then refused the address: EAFNOSUPPORT) -- and
    sock_recvfrom()/sock_recvfrom_into() give the sender as socket.recvfrom() does."""
    loop = asyncio.get_running_loop()
    sender = packet_socket(PACKET_Q, RefusingFirstSends)
    receiver = packet_socket(PACKET_P)
    token = os.urandom(8)
    with sender, receiver:
        sender.refuse = 2
        assert await asyncio.wait_for(
            loop.sock_sendto(sender, token + b"waited", lo_address(PACKET_P)), 5) == 14
        assert sender.refuse == 0
        expected = ("lo", PACKET_P, socket.PACKET_HOST, 772, b"\0" * 6)     # 772: loopback
        assert await asyncio.wait_for(loop.sock_recvfrom(receiver, 100), 5) == (
            token + b"waited", expected)
        assert await loop.sock_sendto(sender, token + b"at once", lo_address(PACKET_P)) == 15
        buf = bytearray(100)
        assert await asyncio.wait_for(loop.sock_recvfrom_into(receiver, buf), 5) == (
            15, expected)
        assert bytes(buf[:15]) == token + b"at once"


@needs_311
@pytest.mark.asyncio
async def test_ipv6_flowinfo_and_scope_id_are_read_as_socket_sendto_reads_them():
    """socket.sendto() takes flowinfo and scope_id as C unsigned ints without a range check
    (-1 and 2**32 wrap) and refuses a flowinfo over 20 bits; sock_sendto() does the same.
    (uringloop accepted a 21-bit flowinfo and refused scope_ids socket.sendto() takes.)"""
    loop = asyncio.get_running_loop()
    try:
        a = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    except OSError:
        pytest.skip("no IPv6")
    with a, socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as b:
        try:
            b.bind(("::1", 0))
        except OSError:
            pytest.skip("no IPv6 loopback")
        a.setblocking(False)
        port = b.getsockname()[1]
        for flowinfo in (0x100000, -1):
            with pytest.raises(OverflowError, match="flowinfo must be 0-1048575"):
                await loop.sock_sendto(a, b"x", ("::1", port, flowinfo, 0))
        for scope_id in (-1, 2 ** 32):
            assert await loop.sock_sendto(a, b"y", ("::1", port, 0xfffff, scope_id)) == 1


@needs_311
@pytest.mark.asyncio
@pytest.mark.parametrize("family, address", [
    (socket.AF_INET, "not a tuple"), (socket.AF_INET, ("127.0.0.1", 70000)),
    (socket.AF_INET, ("127.0.0.1",)), (socket.AF_INET, (1, 2)),
    (socket.AF_INET6, "not a tuple"), (socket.AF_INET6, ("::1", 70000)),
    (socket.AF_INET6, (1, 2, 3, 4, 5)),
])
async def test_a_bad_address_is_refused_with_socket_sendtos_exception_and_message(family,
                                                                                  address):
    """The same exception type and message as the socket's own sendto() (uringloop's lacked
    its "sendto(): " prefix and worded the type error differently)."""
    loop = asyncio.get_running_loop()
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        with pytest.raises(Exception) as direct:
            sock.sendto(b"x", address)
        with pytest.raises(Exception) as through_loop:
            await loop.sock_sendto(sock, b"x", address)
        assert type(through_loop.value) is type(direct.value)
        assert str(through_loop.value) == str(direct.value)


@needs_311
@pytest.mark.asyncio
async def test_a_scope_in_the_host_is_overridden_by_the_tuples_as_socket_sendto_does():
    """socket.sendto() resolves 'fe80::1%lo' and then sets the tuple's scope id (0 when not
    given) over the one the name carried; sock_sendto() goes where socket.sendto() goes -- the
    same result or the same error.  (uringloop kept the name's scope: ENETUNREACH where the
    socket's own sendto() sent.)"""
    loop = asyncio.get_running_loop()
    try:
        a = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    except OSError:
        pytest.skip("no IPv6")
    with a:
        a.setblocking(False)

        def outcome(call):
            try:
                return call()
            except OSError as exc:
                return type(exc), exc.errno

        for address in [("fe80::1%lo", 9), ("fe80::1%lo", 9, 0), ("fe80::1%lo", 9, 0, 1)]:
            direct = outcome(lambda: a.sendto(b"x", address))
            try:
                through_loop = await loop.sock_sendto(a, b"x", address)
            except OSError as exc:
                through_loop = type(exc), exc.errno
            assert through_loop == direct, address


@pytest.mark.asyncio
@pytest.mark.parametrize("socket_kind", ["unconnected TCP", "shut down for writing",
                                         "unconnected AF_UNIX"])
async def test_sendall_of_nothing_reports_the_sockets_state(socket_kind):
    # The stock loop's sock.send(b'') answers for the socket even with nothing to send.
    loop = asyncio.get_running_loop()
    if socket_kind == "shut down for writing":
        sock, peer = nonblocking_pair()
        sock.shutdown(socket.SHUT_WR)
    else:
        sock = socket.socket(socket.AF_INET if "TCP" in socket_kind else socket.AF_UNIX)
        sock.setblocking(False)
        peer = None
    try:
        with pytest.raises(OSError) as raised:
            await loop.sock_sendall(sock, b"")
        assert raised.value.errno in (errno.EPIPE, errno.ENOTCONN)
        if peer is not None:
            assert await loop.sock_sendall(peer, b"") is None      # a working socket: nothing
    finally:
        sock.close()
        if peer is not None:
            peer.close()


@pytest.mark.asyncio
@needs_311
async def test_sendto_takes_an_integer_like_port_and_refuses_a_nul_in_the_host():
    class Port:
        def __init__(self, number):
            self.number = number

        def __index__(self):
            return self.number

    loop = asyncio.get_running_loop()
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with a, b:
        a.setblocking(False)
        b.setblocking(False)
        b.bind(("127.0.0.1", 0))
        host, port = b.getsockname()
        assert await loop.sock_sendto(a, b"by index", (host, Port(port))) == 8
        assert await asyncio.wait_for(loop.sock_recv(b, 100), 10) == b"by index"
        with pytest.raises(TypeError, match="null character"):
            await loop.sock_sendto(a, b"x", ("127.0.0.1\0zz", port))


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_closing_after_reads_served_from_kept_bytes_closes_the_connection():
    # Two reads wait; the first one's bytes come and its task is cancelled before it resumes
    # (uringloop keeps those bytes and serves them to the second read -- whose own receive was
    # in the kernel by then and stayed armed there, holding the socket open).  Nothing waits
    # any more, so closing the socket must close the connection: the peer sees EOF.
    loop = asyncio.get_running_loop()
    a, b = nonblocking_pair()
    with b:
        first = asyncio.ensure_future(loop.sock_recv(a, 100))
        second = asyncio.ensure_future(loop.sock_recv(a, 100))
        await asyncio.sleep(0)
        b.send(b"first")
        await asyncio.sleep(0)
        first.cancel()
        await asyncio.wait([first])
        got = b"" if first.cancelled() else first.result()
        got += await asyncio.wait_for(second, 10)
        assert got == b"first"
        a.close()
        await asyncio.sleep(0.05)
        b.setblocking(True)
        b.settimeout(5)
        assert b.recv(10) == b""


@pytest.mark.asyncio
@pytest.mark.timeout(30)
@pytest.mark.parametrize("waiting", ["sock_recv", "sock_recv_into"])
async def test_closing_a_socket_with_a_read_waiting_closes_the_connection(waiting):
    # The socket object is closed while a read of it waits (not cancelled first).  The stock
    # loop's epoll lets go of it and the peer sees EOF at once; uringloop's receive in the
    # kernel held the file open for as long as it waited -- the peer never saw the close.
    loop = asyncio.get_running_loop()
    a, b = nonblocking_pair()
    with b:
        read = (loop.sock_recv(a, 100) if waiting == "sock_recv"
                else loop.sock_recv_into(a, bytearray(100)))
        task = asyncio.ensure_future(read)
        await asyncio.sleep(0.05)
        a.close()
        b.setblocking(False)
        deadline = loop.time() + 10
        while True:         # (the loop must run meanwhile: uringloop notices within a second)
            try:
                assert b.recv(10) == b""
                break
            except BlockingIOError:
                assert loop.time() < deadline, "the peer never saw the close"
                await asyncio.sleep(0.02)
        task.cancel()       # the stock loop's read waits on forever; uringloop's fails (EBADF)
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_closing_a_listener_with_an_accept_waiting_frees_its_port():
    loop = asyncio.get_running_loop()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    address = listener.getsockname()
    task = asyncio.ensure_future(loop.sock_accept(listener))
    await asyncio.sleep(0.05)
    listener.close()
    deadline = loop.time() + 10
    while True:
        with socket.socket() as again:
            try:
                again.bind(address)          # free once the listening socket really closed
                break
            except OSError as exc:
                assert exc.errno == errno.EADDRINUSE
                assert loop.time() < deadline, "the closed listener still holds its port"
        await asyncio.sleep(0.02)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def cancel_when_its_result_is_in(task):
    """Cancel `task` in the one window asyncio leaves open to a sock_* caller: the future it
    awaits has its result, but the task has not resumed to take it.  (A callback that puts
    itself back on the ready queue runs ahead of the wake-up that the result schedules; the
    awaited future is the task's _fut_waiter until the task resumes.)"""
    loop = asyncio.get_running_loop()

    def look():
        waiter = task._fut_waiter
        if waiter is not None and waiter.done():
            task.cancel()
        elif not task.done():
            loop.call_soon(look)

    loop.call_soon(look)


async def waiting_receivers(sock, sizes):
    """A sock_recv() task per size, each queued on `sock` before this returns."""
    loop = asyncio.get_running_loop()
    tasks = [asyncio.ensure_future(loop.sock_recv(sock, n)) for n in sizes]
    await asyncio.sleep(0)
    return tasks


async def all_settled(tasks):
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_bytes_given_back_by_cancelled_receivers_keep_their_order(is_uring):
    if not is_uring:
        pytest.skip("the stock loop leaves all but the last concurrent receiver pending")
    # The first receiver takes b"12", and is cancelled before it resumes: the bytes go back.
    # They were served at once to the next two receivers -- and the first of those was
    # cancelled the same way, its b"1" going back behind b"2" already handed to the third.
    loop = asyncio.get_running_loop()
    a, b = nonblocking_pair()
    with a, b:
        first, second, third = await waiting_receivers(b, (10, 1, 1))
        cancel_when_its_result_is_in(first)
        cancel_when_its_result_is_in(second)
        a.send(b"12")
        await all_settled((first, second, third))
        assert first.cancelled() and second.cancelled()
        assert [third.result(), await loop.sock_recv(b, 1)] == [b"1", b"2"]


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_a_datagram_given_back_by_a_cancelled_receiver_keeps_its_place(is_uring):
    if not is_uring:
        pytest.skip("the stock loop leaves all but the last concurrent receiver pending")
    # Two datagrams arrive while three receivers wait.  The first receiver takes b"1" and is
    # cancelled before it resumes: b"1" goes back, and must reach the second receiver, ahead of
    # b"2" -- which the second had already been served when receives went on without waiting.
    a, b = connected_udp_pair()
    with a, b:
        first, second, third = await waiting_receivers(b, (10, 10, 10))
        cancel_when_its_result_is_in(first)
        a.send(b"1")
        a.send(b"2")
        await all_settled((first, second, third))
        assert first.cancelled()
        assert [second.result(), third.result()] == [b"1", b"2"]


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


@pytest.mark.asyncio
@pytest.mark.timeout(30)
@pytest.mark.parametrize("used_by", ["sock_*", "a transport"])
async def test_a_read_waiting_on_a_closed_socket_whose_number_is_taken_again_ends(is_uring,
                                                                                 used_by):
    # The socket is closed under a waiting read, and a new socket takes its number and is used
    # at once, with sock_* or by a transport (which asks the loop to forget the number's
    # sock_* state).  The read must still let go of the closed connection (its peer sees EOF,
    # as with the stock loop) and, on uringloop, fail with EBADF rather than wait forever.
    if used_by == "a transport" and not is_uring:
        pytest.skip("the stock loop's selector still holds the closed socket's reader under "
                    "that number (epoll itself dropped the file): the new transport is never "
                    "woken for its data")
    loop = asyncio.get_running_loop()
    a, b = nonblocking_pair()
    with b:
        task = asyncio.ensure_future(loop.sock_recv(a, 100))
        await asyncio.sleep(0.05)
        number = a.fileno()
        a.close()
        c, d = nonblocking_pair()
        with c, d:
            if c.fileno() != number:
                task.cancel()
                pytest.skip("the new socket did not take the closed one's number")
            if used_by == "sock_*":
                await loop.sock_sendall(c, b"new")
                assert await loop.sock_recv(d, 10) == b"new"
            else:
                transport, _ = await loop.connect_accepted_socket(Echo, c)
                await loop.sock_sendall(d, b"new")
                assert await loop.sock_recv(d, 10) == b"new"
                transport.close()
            deadline = loop.time() + 10
            while True:
                try:
                    assert b.recv(10) == b""
                    break
                except BlockingIOError:
                    assert loop.time() < deadline, "the peer never saw the close"
                    await asyncio.sleep(0.02)
            if is_uring:
                with pytest.raises(OSError) as caught:
                    await asyncio.wait_for(task, 10)
                assert caught.value.errno == errno.EBADF
            else:
                task.cancel()       # the stock loop's read waits on forever
                await asyncio.gather(task, return_exceptions=True)


@pytest.mark.asyncio
@pytest.mark.parametrize("view", ["bytearray", "memoryview", "array"])
async def test_sock_sendall_sends_what_a_mutable_buffer_held_at_the_call(view):
    # Tasks that fill one scratch buffer in turn, each awaiting its send (gather): each send
    # carries its own bytes, as the stock loop sends them before the task can suspend; and a
    # send left to a background task is not changed by what the buffer gets afterwards, nor
    # keeps the buffer from being resized.
    import array
    loop = asyncio.get_running_loop()
    a, b = nonblocking_pair()
    scratch = bytearray(8)
    buffer = {"bytearray": scratch, "memoryview": memoryview(scratch),
              "array": array.array("B", bytes(8))}[view]

    def fill(data):
        buffer[:] = array.array("B", data) if view == "array" else data

    async def send(i):
        fill(b"msg%05d" % i)
        await loop.sock_sendall(a, buffer)

    try:
        await asyncio.gather(*(send(i) for i in range(5)))
        background = asyncio.ensure_future(loop.sock_sendall(a, buffer))
        await asyncio.sleep(0)                  # its first step has run
        fill(b"changed!")
        await background
        if view == "bytearray":
            buffer.extend(b"grows")             # nothing holds on to it
        expected = b"".join(b"msg%05d" % i for i in range(5)) + b"msg00004"
        got = b""
        while len(got) < len(expected):
            got += await loop.sock_recv(b, 1000)
        assert got == expected
    finally:
        a.close()
        b.close()


@pytest.mark.asyncio
@needs_311
async def test_sock_sendto_sends_what_a_mutable_buffer_held_at_the_call():
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        receiver.bind(("127.0.0.1", 0))
        receiver.setblocking(False)
        sender.setblocking(False)
        scratch = bytearray(8)

        async def send(i):
            scratch[:] = b"pkt%05d" % i
            await loop.sock_sendto(sender, scratch, receiver.getsockname())

        await asyncio.gather(*(send(i) for i in range(5)))
        got = [await loop.sock_recv(receiver, 100) for _ in range(5)]
        assert got == [b"pkt%05d" % i for i in range(5)]
