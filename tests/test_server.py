"""asyncio.Server on the loop's accept machinery: create_server/start_server, serving life cycle,
closing, errors.  Run on uringloop and on the stock loop."""

import asyncio
import contextvars
import gc
import os
import resource
import socket
import subprocess
import sys
import textwrap
import warnings

import pytest

from conftest import LOOP_FACTORIES
from helpers import PACKAGE_PARENT, bounded, child_env


class Echo(asyncio.Protocol):
    instances = []

    def connection_made(self, transport):
        self.transport = transport
        self.lost = asyncio.get_running_loop().create_future()
        Echo.instances.append(self)

    def data_received(self, data):
        self.transport.write(data)

    def connection_lost(self, exc):
        self.lost.set_result(exc)


async def roundtrip(addr, payload=b'ping'):
    reader, writer = await asyncio.open_connection(*addr[:2])
    try:
        writer.write(payload)
        return await reader.readexactly(len(payload))
    finally:
        writer.close()
        await writer.wait_closed()


async def refused(addr):
    try:
        reader, writer = await asyncio.open_connection(*addr[:2])
    except ConnectionRefusedError:
        return True
    # The connect may complete against a dying listener; it must then be dropped at once.
    try:
        data = await reader.read(1)
        return data == b''
    except ConnectionResetError:
        return True
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionResetError:
            pass


@pytest.mark.asyncio
@bounded()
async def test_server_attributes_and_async_with():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, '127.0.0.1', 0)
    async with server:
        assert server.is_serving()
        assert server.get_loop() is loop
        (sock,) = server.sockets
        assert isinstance(sock, asyncio.trsock.TransportSocket)
        addr = sock.getsockname()
        assert addr[0] == '127.0.0.1'
        assert f'{addr}' in repr(server) or 'sockets' in repr(server)
        assert await roundtrip(addr) == b'ping'
    assert not server.is_serving()
    assert server.sockets == ()
    assert sock.fileno() == -1           # the listening socket is closed
    assert await refused(addr)


@pytest.mark.asyncio
@bounded()
async def test_start_serving_false_then_start_serving():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, '127.0.0.1', 0, start_serving=False)
    addr = server.sockets[0].getsockname()
    assert not server.is_serving()
    assert await refused(addr)           # bound but not listening yet
    await server.start_serving()
    assert server.is_serving()
    await server.start_serving()         # idempotent
    assert await roundtrip(addr, b'now') == b'now'
    server.close()
    await server.wait_closed()


@pytest.mark.asyncio
@bounded()
async def test_serve_forever_cancel_closes_the_server():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, '127.0.0.1', 0, start_serving=False)
    addr = server.sockets[0].getsockname()
    task = asyncio.ensure_future(server.serve_forever())
    await asyncio.sleep(0)
    assert server.is_serving()
    assert await roundtrip(addr) == b'ping'
    with pytest.raises(RuntimeError):
        await server.serve_forever()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not server.is_serving()
    assert server.sockets == ()
    with pytest.raises(RuntimeError):
        await server.serve_forever()     # closed
    assert await refused(addr)


@pytest.mark.asyncio
@bounded()
async def test_close_keeps_existing_connections_and_wait_closed():
    loop = asyncio.get_running_loop()
    Echo.instances.clear()
    server = await loop.create_server(Echo, '127.0.0.1', 0)
    addr = server.sockets[0].getsockname()
    reader, writer = await asyncio.open_connection(*addr[:2])
    writer.write(b'a')
    assert await reader.readexactly(1) == b'a'
    server.close()
    assert not server.is_serving()
    server.close()                       # idempotent
    assert await refused(addr)
    # The accepted connection outlives the listening socket.
    writer.write(b'still here')
    assert await reader.readexactly(10) == b'still here'
    waiter = asyncio.ensure_future(server.wait_closed())
    await asyncio.sleep(0.05)
    # Python 3.12.1 made wait_closed() wait for the server's connections too.
    assert waiter.done() == (sys.version_info < (3, 12, 1))
    writer.close()
    await writer.wait_closed()
    await waiter
    (echo,) = Echo.instances
    assert await echo.lost is None


@pytest.mark.asyncio
@bounded()
@pytest.mark.skipif(sys.version_info < (3, 13), reason='Server.close_clients/abort_clients: 3.13')
@pytest.mark.parametrize('how', ['close_clients', 'abort_clients'])
async def test_close_and_abort_clients(how):
    loop = asyncio.get_running_loop()
    Echo.instances.clear()
    server = await loop.create_server(Echo, '127.0.0.1', 0)
    addr = server.sockets[0].getsockname()
    conns = [await asyncio.open_connection(*addr[:2]) for _ in range(3)]
    for reader, writer in conns:
        writer.write(b'x')
        assert await reader.readexactly(1) == b'x'
    server.close()
    getattr(server, how)()
    for reader, writer in conns:
        assert await reader.read() == b''
        writer.close()
        await writer.wait_closed()
    await server.wait_closed()
    assert len(Echo.instances) == 3
    for echo in Echo.instances:
        assert await echo.lost is None


@pytest.mark.asyncio
@bounded()
# The stock loop drops the accepted socket without closing it (it is closed, with a
# ResourceWarning, when collected); uringloop closes it.
@pytest.mark.filterwarnings('ignore::ResourceWarning')
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
async def test_protocol_factory_failure_drops_only_that_connection():
    loop = asyncio.get_running_loop()
    calls = []

    def factory():
        calls.append(None)
        if len(calls) == 1:
            raise RuntimeError('factory failed')
        return Echo()

    server = await loop.create_server(factory, '127.0.0.1', 0)
    addr = server.sockets[0].getsockname()
    reader, writer = await asyncio.open_connection(*addr[:2])
    while calls == []:
        await asyncio.sleep(0.01)
    gc.collect()
    assert await reader.read() == b''    # that connection is closed
    writer.close()
    await writer.wait_closed()
    assert await roundtrip(addr) == b'ping'
    assert server.is_serving()
    server.close()
    await server.wait_closed()


@pytest.mark.asyncio
@bounded()
@pytest.mark.parametrize('failure', ['factory returns None', 'factory closes the server'])
async def test_a_connection_its_factory_fails_is_closed_without_an_unclosed_transport(
        is_uring, failure):
    """A factory that returns no protocol (the transport's connection_made lookup fails) or
    that closes the server (attaching to it fails): the exception handler hears of it, the
    client sees the connection closed, and no 'unclosed transport' ResourceWarning is given
    for a transport that never took the socket (uringloop gave one, having closed the socket
    itself).  The stock loop leaves such a socket open -- the client waits for ever.  (The
    handler is told in debug mode only, as on the stock loop.)"""
    if not is_uring:
        pytest.skip("the stock loop leaves the accepted socket open")
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    errors = []
    loop.set_exception_handler(lambda loop, context: errors.append(context))
    server = None

    def factory():
        if failure == 'factory returns None':
            return None
        server.close()
        return Echo()

    server = await loop.create_server(factory, '127.0.0.1', 0)
    addr = server.sockets[0].getsockname()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always', ResourceWarning)
        reader, writer = await asyncio.open_connection(*addr[:2])
        assert await reader.read() == b''
        writer.close()
        await writer.wait_closed()
        gc.collect()
    assert [str(w.message) for w in caught if 'transport' in str(w.message)] == []
    assert len(errors) == 1
    expected = AttributeError if failure == 'factory returns None' else AssertionError
    assert isinstance(errors[0]['exception'], expected)
    server.close()
    await server.wait_closed()


@pytest.mark.asyncio
@bounded()
async def test_sock_argument_and_peername_of_accepted():
    loop = asyncio.get_running_loop()
    seen = []

    class Record(Echo):
        def connection_made(self, transport):
            super().connection_made(transport)
            seen.append((transport.get_extra_info('peername'),
                         transport.get_extra_info('sockname')))

    sock = socket.socket()
    sock.bind(('127.0.0.1', 0))
    server = await loop.create_server(Record, sock=sock)
    assert server.sockets[0].getsockname() == sock.getsockname()
    reader, writer = await asyncio.open_connection(*sock.getsockname())
    writer.write(b'1')
    await reader.readexactly(1)
    assert seen == [(writer.get_extra_info('sockname'), writer.get_extra_info('peername'))]
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()


@pytest.mark.asyncio
@bounded()
async def test_several_listening_sockets():
    loop = asyncio.get_running_loop()
    hosts = ['127.0.0.1']
    if socket.has_ipv6:
        try:
            with socket.socket(socket.AF_INET6) as probe:
                probe.bind(('::1', 0))
            hosts.append('::1')
        except OSError:
            pass
    server = await loop.create_server(Echo, hosts, 0)
    assert len(server.sockets) == len(hosts)
    for sock in server.sockets:
        assert await roundtrip(sock.getsockname(), b'multi') == b'multi'
    server.close()
    await server.wait_closed()


@pytest.mark.asyncio
@bounded()
@pytest.mark.skipif(not hasattr(socket, 'SO_REUSEPORT'), reason='no SO_REUSEPORT')
async def test_reuse_port_two_servers():
    loop = asyncio.get_running_loop()
    first = await loop.create_server(Echo, '127.0.0.1', 0, reuse_port=True)
    port = first.sockets[0].getsockname()[1]
    second = await loop.create_server(Echo, '127.0.0.1', port, reuse_port=True)
    for _ in range(10):
        assert await roundtrip(('127.0.0.1', port)) == b'ping'
    first.close()
    second.close()
    await first.wait_closed()
    await second.wait_closed()


@pytest.mark.asyncio
@bounded()
async def test_connection_churn():
    server = await asyncio.start_server(lambda r, w: w.close(), '127.0.0.1', 0)
    addr = server.sockets[0].getsockname()
    for _ in range(200):
        reader, writer = await asyncio.open_connection(*addr)
        assert await reader.read() == b''
        writer.close()
        await writer.wait_closed()
    server.close()
    await server.wait_closed()


@pytest.mark.asyncio
@bounded()
async def test_burst_of_simultaneous_connections():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, '127.0.0.1', 0, backlog=500)
    addr = server.sockets[0].getsockname()
    results = await asyncio.gather(*(roundtrip(addr, b'%d' % i) for i in range(300)))
    assert results == [b'%d' % i for i in range(300)]
    server.close()
    await server.wait_closed()


@pytest.mark.asyncio
@bounded(20)
async def test_accept_out_of_descriptors_is_reported_and_retried():
    """EMFILE on accept goes to the exception handler; accepting resumes after
    constants.ACCEPT_RETRY_DELAY once descriptors are available again."""
    loop = asyncio.get_running_loop()
    errors = []
    loop.set_exception_handler(lambda loop, ctx: errors.append(ctx))
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    addr = listener.getsockname()
    clients = [socket.socket() for _ in range(6)]
    for c in clients:
        c.setblocking(False)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(name) for name in os.listdir('/proc/self/fd'))
    fillers = []
    try:
        # No free descriptor at all: every accept() fails with EMFILE.
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))
        while True:
            try:
                fillers.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                break
        server = await loop.create_server(Echo, sock=listener)
        for c in clients:
            await loop.sock_connect(c, addr)
        for _ in range(100):
            if errors:
                break
            await asyncio.sleep(0.01)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for fd in fillers:
            os.close(fd)
    assert errors
    assert errors[0]['message'] == 'socket.accept() out of system resource'
    assert isinstance(errors[0]['exception'], OSError)
    assert errors[0]['exception'].errno == 24     # EMFILE
    # Descriptors are back: every pending connection is served after the retry delay.
    for c in clients:
        await loop.sock_sendall(c, b'ok')
        assert await loop.sock_recv(c, 2) == b'ok'
        c.close()
    server.close()
    await server.wait_closed()


# A pre-fork worker (gunicorn, uvicorn --workers): serves a listening socket it inherited --
# with an asyncio server, or with its own loop of sock_accept() calls -- and takes commands on
# stdin: "hold" blocks its loop until the next line ("release", or "close" to stop serving
# before the loop runs again), "close" stops serving.
PREFORK_WORKER = textwrap.dedent("""
    import asyncio, os, socket, sys
    import uringloop

    class SayPid(asyncio.Protocol):
        def connection_made(self, transport):
            transport.write(str(os.getpid()).encode())
            transport.close()

    async def accept_forever(loop, listener):
        while True:
            conn, _ = await loop.sock_accept(listener)
            await loop.sock_sendall(conn, str(os.getpid()).encode())
            conn.close()

    async def main():
        loop = asyncio.get_running_loop()
        listener = socket.socket(fileno=int(sys.argv[3]))
        if sys.argv[2] == "create_server":
            server = await loop.create_server(SayPid, sock=listener)
            async def stop_serving():
                server.close()
                await server.wait_closed()
        else:
            listener.setblocking(False)
            accepting = asyncio.ensure_future(accept_forever(loop, listener))
            async def stop_serving():
                accepting.cancel()
                await asyncio.gather(accepting, return_exceptions=True)
        print("serving", flush=True)
        while True:
            command = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
            if command == "hold":
                print("holding", flush=True)
                command = sys.stdin.readline().strip()
            if command == "close":
                await stop_serving()
                print("closed", flush=True)
            elif command != "release":
                return

    factory = uringloop.new_event_loop if sys.argv[1] == "uringloop" else asyncio.SelectorEventLoop
    loop = factory()
    loop.run_until_complete(main())
    loop.close()
""")


def listening_socket_on_number(number):
    """A listening TCP socket (non-blocking) with the descriptor number `number`, which the
    caller has just freed."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    if sock.fileno() != number:
        moved = socket.socket(fileno=os.dup2(sock.fileno(), number))
        sock.close()
        sock = moved
    sock.listen()
    sock.setblocking(False)
    return sock


@pytest.mark.asyncio
@bounded(30)
async def test_server_whose_socket_is_closed_under_it_takes_nothing_by_its_number(is_uring):
    if not is_uring:
        pytest.skip("the stock loop keeps the closed listener's reader registered by number, "
                    "so sock_accept() on a socket that reuses the number fails to register")
    loop = asyncio.get_running_loop()
    served = []
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    server = await loop.create_server(lambda: served.append(1) or asyncio.Protocol(),
                                      sock=listener)
    number, address = listener.fileno(), listener.getsockname()
    # Closed under the server, without server.close(): its poll in the kernel keeps the socket
    # listening, and the number goes to a new listener, accepted from with sock_accept().
    listener.close()
    with listening_socket_on_number(number) as other:
        accepting = asyncio.ensure_future(loop.sock_accept(other))
        await asyncio.sleep(0.01)
        with socket.create_connection(address):     # wakes the server's poll
            await asyncio.sleep(0.05)
        with socket.create_connection(other.getsockname()):
            conn, _ = await asyncio.wait_for(accepting, 5)
            conn.close()
    assert served == []
    server.close()
    await server.wait_closed()


@pytest.mark.asyncio
async def test_a_transport_a_closed_server_refuses_is_not_detached_from_it(is_uring):
    """A transport made for a server that has closed: the server refuses it (its _attach()
    asserts), and the half-made transport, collected, does not detach from the server it never
    joined.  (The stock transport does: on 3.13 its finalizer's _detach() raises TypeError from
    the closed server's waiters, printed as "Exception ignored"; uringloop's did the same.)"""
    if not is_uring:
        pytest.skip("the stock transport detaches from the server it never joined")
    loop = asyncio.get_running_loop()
    server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
    server.close()
    await server.wait_closed()
    unraisable = []
    previous_hook, sys.unraisablehook = sys.unraisablehook, unraisable.append
    a, b = socket.socketpair()
    try:
        with warnings.catch_warnings():
            # (the half-made transport is unclosed: its ResourceWarning is not the question)
            warnings.simplefilter("ignore", ResourceWarning)
            with pytest.raises(AssertionError):
                loop._make_socket_transport(a, asyncio.Protocol(), server=server)
            gc.collect()
    finally:
        sys.unraisablehook = previous_hook
        a.close()
        b.close()
    assert [u.exc_type for u in unraisable] == []


@pytest.mark.asyncio
@bounded(30)
async def test_a_server_with_backlog_0_accepts(is_uring):
    """backlog=0 (the kernel then queues one connection): connections are accepted and served.
    The stock loop accepts up to `backlog` connections per wake-up -- none here -- and wakes
    again at once, at 100% CPU, serving nothing."""
    if not is_uring:
        pytest.skip("the stock loop accepts range(backlog) connections per wake-up: none")
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, "127.0.0.1", 0, backlog=0)
    address = server.sockets[0].getsockname()
    try:
        for i in range(4):
            reader, writer = await asyncio.open_connection(*address)
            writer.write(b"ping %d" % i)
            assert await asyncio.wait_for(reader.readexactly(6), 5) == b"ping %d" % i
            writer.close()
            await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.asyncio
@bounded(30)
async def test_a_protocol_factory_closing_the_listening_socket_ends_the_accept_batch():
    """The protocol factory closes the listening socket itself (not the server), and a new
    listener takes its number: the server accepts nothing more -- no accept4() by the closed
    number, which would take the new listener's connection or report EBADF."""
    loop = asyncio.get_running_loop()
    reports = []
    loop.set_exception_handler(lambda loop, context: reports.append(context))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(10)
    address = listener.getsockname()
    served, other = [], {}

    class ClosesTheListener(asyncio.Protocol):
        def __init__(self):
            if not other:
                number = listener.fileno()
                listener.close()
                new = socket.socket()
                new.bind(("127.0.0.1", 0))
                new.listen(10)
                new.setblocking(False)
                other["listener"] = new
                other["reused"] = new.fileno() == number
                other["client"] = socket.create_connection(new.getsockname())

        def connection_made(self, transport):
            served.append(transport.get_extra_info("sockname"))
            transport.close()

    server = await loop.create_server(ClosesTheListener, sock=listener)
    with socket.create_connection(address):
        await asyncio.sleep(0.2)
    try:
        assert other["reused"]
        assert served == [address]
        assert reports == []
        conn, _ = other["listener"].accept()     # its connection is still its own
        conn.close()
    finally:
        other["client"].close()
        other["listener"].close()
        try:
            server.close()
        except ValueError:
            pass        # the stock loop's remove_reader(-1) of the closed socket


@pytest.mark.asyncio
@bounded(30)
async def test_closing_a_server_whose_socket_was_closed_releases_the_port():
    loop = asyncio.get_running_loop()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    server = await loop.create_server(asyncio.Protocol, sock=listener)
    listener.close()
    try:
        server.close()
    except ValueError:
        pass            # the stock loop's remove_reader(-1) of the closed socket
    await asyncio.sleep(0.05)
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))      # nothing holds the port any more
        again.listen()


def test_serving_on_a_closed_loop_is_refused(new_loop):
    loop = new_loop()
    server = loop.run_until_complete(
        loop.create_server(asyncio.Protocol, "127.0.0.1", 0, start_serving=False))
    loop.close()
    with pytest.raises(RuntimeError, match="closed"):
        server._start_serving()
    for sock in server._sockets:
        sock.close()


def answering_pid(conn):
    """Who served a connection to a PREFORK_WORKER, or why nobody did."""
    conn.settimeout(5)
    try:
        data = b''
        while chunk := conn.recv(100):
            data += chunk
        return int(data)
    except socket.timeout:
        return 'no answer within 5 s'
    finally:
        conn.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize('accepting', ['create_server', 'sock_accept'])
@pytest.mark.parametrize('loop_name', list(LOOP_FACTORIES))
def test_prefork_workers_sharing_a_listening_socket(loop_name, accepting):
    """Two processes serve one inherited listening socket.  While the first one's loop is busy,
    the second serves every new connection; a connection that arrives while the first is busy
    and is then stopping serving (a graceful restart) is served by the second, not stranded in
    the kernel's queue.  (The kernel wakes only one waiter for io_uring's own accept request:
    the busy or stopping worker would take every connection, and strand one.)"""
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    listener.listen(64)
    address = listener.getsockname()
    workers = []
    try:
        for _ in range(2):       # the first worker starts waiting on the socket first
            # cwd: `python -c` puts its working directory first on sys.path, and a checkout's
            # source tree there would shadow the uringloop under test.
            worker = subprocess.Popen(
                [sys.executable, '-c', PREFORK_WORKER, loop_name, accepting,
                 str(listener.fileno())],
                pass_fds=[listener.fileno()], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                text=True, env=child_env(), cwd=PACKAGE_PARENT)
            workers.append(worker)
            assert worker.stdout.readline() == 'serving\n'
        busy, idle = workers

        busy.stdin.write('hold\n')
        busy.stdin.flush()
        assert busy.stdout.readline() == 'holding\n'
        served = [answering_pid(socket.create_connection(address)) for _ in range(3)]
        assert served == [idle.pid] * 3

        arrived_while_busy = socket.create_connection(address)
        busy.stdin.write('close\n')
        busy.stdin.flush()
        assert busy.stdout.readline() == 'closed\n'
        assert answering_pid(arrived_while_busy) == idle.pid
        served = [answering_pid(socket.create_connection(address)) for _ in range(3)]
        assert served == [idle.pid] * 3
    finally:
        for worker in workers:
            worker.kill()
            worker.communicate()
        listener.close()


@pytest.mark.asyncio
@bounded()
async def test_connections_a_handler_abandons_are_collected_after_the_peer_leaves():
    # A handler that never closes its writer: once the client has gone (EOF: the stream
    # protocol keeps the connection half-open) nothing refers to the server side any more, and
    # the stock loop, which refers to its transports weakly, lets it be collected -- its socket
    # closed.  (uringloop's map of transports was a plain dict: a descriptor per client, kept.)
    # The unclosed writers and transports report themselves (ResourceWarning; from 3.13 a
    # StreamWriter nobody refers to closes its transport as it goes): expected here.
    import warnings

    def open_fds():
        return set(os.listdir('/proc/self/fd'))

    served = []
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', ResourceWarning)
        server = await asyncio.start_server(lambda reader, writer: served.append(1),
                                            '127.0.0.1', 0)
        async with server:
            address = server.sockets[0].getsockname()
            gc.collect()
            before = open_fds()
            for _ in range(20):
                with socket.create_connection(address) as client:
                    client.sendall(b'hello')
            while len(served) < 20:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)               # every EOF has arrived
            gc.collect()
            await asyncio.sleep(0)
            assert open_fds() - before == set()
        gc.collect()


@pytest.mark.asyncio
async def test_context_changes_of_one_connection_do_not_reach_the_next():
    """Each connection's protocol_factory() and callbacks run in a context of its own (a Task
    per connection on the stock loop): a context variable one sets is not seen by the next.
    (uringloop ran every connection in the server's one context: the values leaked on.)"""
    request_id = contextvars.ContextVar("request_id", default=0)
    seen = []

    class Recording(asyncio.Protocol):
        def connection_made(self, transport):
            seen.append(("made", request_id.get()))
            transport.close()

    def factory():
        seen.append(("factory", request_id.get()))
        request_id.set(request_id.get() + 1)
        return Recording()

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    async with server:
        for _ in range(3):
            reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
    assert seen == [("factory", 0), ("made", 1)] * 3
    assert request_id.get() == 0
