"""The Proactor invariants, each with a test that fails if it breaks.

Each storm runs on both loops: the stock loop is the oracle that the *test* is right (it loses
nothing because its data never leaves the kernel's socket buffer before a read succeeds);
uringloop must match it even though its reads are already in the kernel when the awaiter goes.

The storms avoid asyncio.wait_for: from 3.12 on it can itself drop a result that lands as its
timeout fires.  Instead each read is a task that is cancelled after a tiny wait; after cancel() we
wait for the task to finish and count what it returns if the read won the race.  A loss or a
duplicate can then only come from the loop.
"""

import asyncio
import errno
import gc
import hashlib
import os
import random
import socket
import sys
import threading

import pytest

import uringloop

STORM_BYTES = 20 * 1024 * 1024


def sender_thread(sock, total, seed):
    """Send `total` pseudo-random bytes in random chunk sizes from a plain blocking thread."""
    rng = random.Random(seed)
    digest = hashlib.sha256()

    def run():
        sent = 0
        sock.setblocking(True)
        while sent < total:
            n = min(total - sent, rng.choice((1, 7, 100, 1500, 4096, 65536, 200_000)))
            chunk = rng.randbytes(n)
            digest.update(chunk)
            sock.sendall(chunk)
            sent += n
            if rng.random() < 0.125:
                threading.Event().wait(0.0005)   # let the reader wait, so that reads time out
        sock.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, digest


async def cancelled_after(coro_or_future, delay):
    """Run a read, cancel it after `delay`, and return (finished_normally, result)."""
    task = asyncio.ensure_future(coro_or_future)
    done, _ = await asyncio.wait([task], timeout=delay)
    if not done:
        task.cancel()
        await asyncio.wait([task])
    if task.cancelled():
        return False, None
    return True, task.result()


@pytest.mark.asyncio
@pytest.mark.timeout(300)
async def test_cancel_storm_recv_loses_nothing(is_uring):
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    b.setblocking(False)
    with a, b:
        thread, sent_digest = sender_thread(a, STORM_BYTES, seed=1)
        got = hashlib.sha256()
        total = 0
        timeouts = 0
        while True:
            ok, data = await cancelled_after(loop.sock_recv(b, 65536), 0.0002)
            if not ok:
                timeouts += 1
                continue
            if not data:
                break
            got.update(data)
            total += len(data)
        thread.join()
    assert total == STORM_BYTES
    assert got.hexdigest() == sent_digest.hexdigest()
    # On uringloop every read is in the kernel when it is cancelled: the storm must have
    # cancelled some, or it tested nothing.  (The stock loop often finds data already there.)
    assert timeouts > 0 or not is_uring, "the storm never cancelled anything: it tested nothing"


@pytest.mark.asyncio
@pytest.mark.timeout(300)
async def test_cancel_storm_recv_into_dropped_buffers(is_uring):
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    b.setblocking(False)
    with a, b:
        thread, sent_digest = sender_thread(a, STORM_BYTES, seed=2)
        got = hashlib.sha256()
        total = 0
        timeouts = 0
        while True:
            buf = bytearray(32768)          # fresh each call, dropped after a timeout
            ok, n = await cancelled_after(loop.sock_recv_into(b, buf), 0.0002)
            if not ok:
                timeouts += 1
                del buf
                if timeouts % 64 == 0:
                    gc.collect()            # free dropped buffers while reads may be in flight
                continue
            if n == 0:
                break
            got.update(buf[:n])
            total += n
        thread.join()
    assert total == STORM_BYTES
    assert got.hexdigest() == sent_digest.hexdigest()
    assert timeouts > 0 or not is_uring


@pytest.mark.asyncio
@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["recv", "recv_into"])
async def test_bytes_arriving_as_the_reader_is_cancelled_reach_the_next_reader(kind):
    # The storms' race, made deterministic: the bytes arrive while a read waits, and its task is
    # cancelled before the loop runs again.  uringloop's kernel then completes the read whose
    # awaiter is gone (the bytes leave the socket); the stock loop leaves them in the socket.
    # Either way the next read must get them, once.
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    b.setblocking(False)
    buf = bytearray(100)

    async def read():
        if kind == "recv":
            return await loop.sock_recv(b, 100)
        n = await loop.sock_recv_into(b, buf)
        return bytes(buf[:n])

    sent = received = b""
    with a, b:
        for i in range(20):
            message = b"message %d;" % i
            task = asyncio.ensure_future(read())
            await asyncio.sleep(0.005)      # the read is waiting (on uringloop: in the kernel)
            a.send(message)
            sent += message
            task.cancel()
            await asyncio.wait([task])
            if not task.cancelled():
                received += task.result()   # the read won the race: it counts
            while len(received) < len(sent):
                received += await asyncio.wait_for(read(), 10)
    assert received == sent


async def leave_bytes_of_a_cancelled_read(a, b):
    """A sock_recv(a) whose bytes came in and whose task was cancelled before it resumed:
    uringloop keeps those bytes for a's next reader (the stock loop drops them)."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(loop.sock_recv(a, 100))
    await asyncio.sleep(0)
    b.send(b"OLD-CONNECTION")
    await asyncio.sleep(0)          # the read completes in this iteration ...
    task.cancel()                   # ... and its task is cancelled before it resumes
    await asyncio.wait([task])


@pytest.mark.asyncio
@pytest.mark.timeout(60)
@pytest.mark.parametrize("taken_by", ["open_connection", "server"])
async def test_bytes_kept_for_a_closed_socket_never_reach_a_new_one_with_its_number(taken_by):
    # What a cancelled read left belongs to its socket only.  The socket is closed and a new
    # connection gets its number: a transport made for it (open_connection(sock=), a server's
    # accept) must see only its own peer's bytes -- uringloop handed the old ones over first.
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    await leave_bytes_of_a_cancelled_read(a, b)
    number = a.fileno()
    if taken_by == "open_connection":
        a.close()
        b.close()
        c, d = socket.socketpair()
        assert c.fileno() == number
        with d:
            reader, writer = await asyncio.open_connection(sock=c)
            d.sendall(b"NEW")
            d.shutdown(socket.SHUT_WR)
            assert await asyncio.wait_for(reader.read(), 10) == b"NEW"
            writer.close()
        return
    got = loop.create_future()

    async def handler(reader, writer):
        got.set_result(await reader.read())
        writer.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    async with server:
        client = socket.create_connection(server.sockets[0].getsockname())
        with client:
            a.close()              # the server's accept now takes a's number
            b.close()
            client.sendall(b"NEW-CLIENT")
            client.shutdown(socket.SHUT_WR)
            assert await asyncio.wait_for(got, 10) == b"NEW-CLIENT"


def open_fds():
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.asyncio
@pytest.mark.timeout(300)
async def test_cancel_storm_accept_each_client_exactly_once(is_uring):
    if not is_uring:
        pytest.skip("the stock loop's sock_accept can accept a connection for a future that "
                    "was just cancelled and drop it (its reader is removed one callback too "
                    "late), which hangs this test: the storm is uringloop's invariant only")
    loop = asyncio.get_running_loop()
    clients = 300
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(clients)
    srv.setblocking(False)
    port = srv.getsockname()[1]
    fds_before = open_fds()

    def connect_all():
        socks = []
        for i in range(clients):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(i.to_bytes(4, "big"))
            socks.append(s)
            threading.Event().wait(0.0005)     # arrive slower than the accept timeout
        return socks

    connector = loop.run_in_executor(None, connect_all)
    seen = []
    timeouts = 0
    with srv:
        while len(seen) < clients:
            ok, result = await cancelled_after(loop.sock_accept(srv), 0.0002)
            if not ok:
                timeouts += 1
                continue
            conn, _ = result
            with conn:
                ident = b""
                while len(ident) < 4:
                    chunk = await loop.sock_recv(conn, 4 - len(ident))
                    assert chunk, "client closed before sending its id"
                    ident += chunk
                seen.append(int.from_bytes(ident, "big"))
        client_socks = await connector
        for s in client_socks:
            s.close()
    assert sorted(seen) == list(range(clients))       # every client once, none twice
    assert timeouts > 0 or not is_uring
    leaked = open_fds() - fds_before
    assert not leaked, f"file descriptors leaked: {leaked}"


@pytest.mark.asyncio
@pytest.mark.timeout(300)
async def test_sendall_64mib_to_a_slow_reader_arrives_whole_and_in_order():
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    payload = os.urandom(1 << 20) * 64
    received = hashlib.sha256()
    count = [0]

    def slow_reader():
        b.setblocking(True)
        i = 0
        while True:
            data = b.recv(65536)
            if not data:
                break
            received.update(data)
            count[0] += len(data)
            i += 1
            if i % 64 == 0:
                threading.Event().wait(0.002)   # slow: the kernel buffer fills, sends go partial

    t = threading.Thread(target=slow_reader, daemon=True)
    t.start()
    with a, b:
        await loop.sock_sendall(a, payload)
        a.shutdown(socket.SHUT_WR)
        await loop.run_in_executor(None, t.join)
    assert count[0] == len(payload)
    assert received.hexdigest() == hashlib.sha256(payload).hexdigest()


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_waiting_on_a_stalled_peer_is_not_a_busy_loop(is_uring, tmp_path):
    """Whatever waits for a peer -- to read, to make room, to accept -- waits in the kernel: a
    request that cannot progress must not complete and be resubmitted over and over (splice did,
    ~70k times a second, until it learnt to wait for POLLOUT).  Counted in ring completions, so
    uringloop only; the stock loop has no counter, and its waits are epoll's."""
    if not is_uring:
        pytest.skip("counts the ring's completions")
    loop = asyncio.get_running_loop()

    async def completions_while_idle():
        await asyncio.sleep(0.1)            # whatever was in motion settles
        before = loop.statistics()['completions']
        await asyncio.sleep(0.3)
        return loop.statistics()['completions'] - before

    busy = {}
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    listener.listen()
    listener.setblocking(False)
    with listener:
        # A transport whose peer stopped reading, with megabytes queued.
        transport, _ = await loop.create_connection(asyncio.Protocol, *listener.getsockname())
        peer, _ = await loop.sock_accept(listener)
        transport.write(b'x' * (32 << 20))
        busy['transport write'] = await completions_while_idle()
        transport.abort()
        peer.close()
        # sock_sendall, sock_recv and sock_accept with nothing coming.
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, listener.getsockname())
        peer, _ = await loop.sock_accept(listener)
        with sock, peer:
            waiting = [asyncio.ensure_future(loop.sock_sendall(sock, b'y' * (32 << 20))),
                       asyncio.ensure_future(loop.sock_recv(sock, 100)),
                       asyncio.ensure_future(loop.sock_accept(listener))]
            busy['sock_sendall, sock_recv, sock_accept'] = await completions_while_idle()
            for task in waiting:
                task.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)
        # sock_sendfile into a receiver that stopped reading.
        path = tmp_path / 'data'
        path.write_bytes(os.urandom(1 << 20) * 16)
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, listener.getsockname())
        peer, _ = await loop.sock_accept(listener)
        with sock, peer, open(path, 'rb') as f:
            task = asyncio.ensure_future(loop.sock_sendfile(sock, f))
            busy['sock_sendfile'] = await completions_while_idle()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    # A write pipe whose reader stopped reading.
    r, w = os.pipe()
    transport, _ = await loop.connect_write_pipe(asyncio.BaseProtocol, os.fdopen(w, 'wb'))
    transport.write(b'z' * (4 << 20))
    busy['pipe write'] = await completions_while_idle()
    transport.abort()
    os.close(r)
    # A few completions at most (a poll that fires once); a busy loop makes thousands.
    assert all(n <= 5 for n in busy.values()), busy


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_a_unix_connect_waiting_for_room_in_the_listeners_queue_is_not_a_busy_loop(
        is_uring, tmp_path):
    """A non-blocking unix socket's sock_connect() to a listener whose queue is full waits for
    room, as a blocking connect would, and connects once the listener accepts.  Nothing can be
    polled for that room; uringloop's connect request completed with -EAGAIN and was resubmitted
    at once, ~every few microseconds for as long as the queue stayed full.  (The stock loop
    reports the socket connected at once, though it is not: ENOTCONN on the first send.)"""
    if not is_uring:
        pytest.skip("the stock loop reports a connection that was never made")
    loop = asyncio.get_running_loop()
    path = str(tmp_path / 'listener')
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(0)
    fillers = []
    with listener:
        while True:                      # fill the listener's queue
            filler = socket.socket(socket.AF_UNIX)
            filler.setblocking(False)
            try:
                filler.connect(path)
            except BlockingIOError:
                filler.close()
                break
            fillers.append(filler)
        assert fillers
        sock = socket.socket(socket.AF_UNIX)
        sock.setblocking(False)
        with sock:
            connecting = asyncio.ensure_future(loop.sock_connect(sock, path))
            await asyncio.sleep(0.1)
            before = loop.statistics()['completions']
            await asyncio.sleep(0.3)
            completions = loop.statistics()['completions'] - before
            assert not connecting.done()
            assert completions <= 20, completions
            other = socket.socket(socket.AF_UNIX)          # one cancelled while it waits
            other.setblocking(False)
            with other:
                cancelled = asyncio.ensure_future(loop.sock_connect(other, path))
                await asyncio.sleep(0.05)
                cancelled.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await cancelled
            for filler in fillers:           # room: the listener accepts what was queued
                listener.accept()[0].close()
            await asyncio.wait_for(connecting, 5)
            peer, _ = listener.accept()
            with peer:
                await loop.sock_sendall(sock, b'hello')
                assert peer.recv(10) == b'hello'
    for filler in fillers:
        filler.close()


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_close_with_pending_recv_and_fd_reuse():
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    b.setblocking(False)
    old_fd = b.fileno()
    task = asyncio.ensure_future(loop.sock_recv(b, 100))
    await asyncio.sleep(0.01)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    b.close()
    # The kernel must really have let go of the socket: its peer sees EOF promptly.
    a.settimeout(10)
    assert a.recv(10) == b""
    a.close()

    # A new socket that reuses the fd number is never touched by the old operation.
    c, d = socket.socketpair()
    if old_fd not in (c.fileno(), d.fileno()):
        # Usually the lowest free number is reused; make sure by dup2-ing onto it.
        e = socket.socket(fileno=os.dup2(d.fileno(), old_fd))
        d.close()
        d = e
    c.setblocking(False)
    d.setblocking(False)
    with c, d:
        reader, writer = (d, c) if d.fileno() == old_fd else (c, d)
        await loop.sock_sendall(writer, b"fresh")
        assert await loop.sock_recv(reader, 100) == b"fresh"


def pair_on_number(number):
    """A connected socket pair (non-blocking) whose first socket has the descriptor number
    `number`, which the caller has just freed."""
    c, d = socket.socketpair()
    if d.fileno() == number:
        c, d = d, c
    elif c.fileno() != number:
        moved = socket.socket(fileno=os.dup2(c.fileno(), number))
        c.close()
        c = moved
    c.setblocking(False)
    d.setblocking(False)
    return c, d


# A socket closed under sock_* requests: the one in the kernel holds the old socket there, but its
# descriptor number is free the moment close() returns, and the next socket takes it.  Nothing
# the loop submits afterwards for the old socket -- a request queued behind the one in the kernel,
# the rest of a partial send -- may reach the new one.  On the stock loop nothing does (its
# callbacks call the closed socket object's methods); the queued request there waits for a
# descriptor that no longer exists, so each test cancels it at the end.


async def close_under(sock, *requests):
    """Start `requests` (sock_* calls on `sock`), let them reach the kernel, close `sock` under
    them and give its number to a new connected pair: (tasks, new, new's peer)."""
    tasks = [asyncio.ensure_future(request) for request in requests]
    await asyncio.sleep(0.05)
    assert not any(task.done() for task in tasks)
    number = sock.fileno()
    sock.close()
    return (tasks, *pair_on_number(number))


async def assert_failed_or_cancelled(task):
    """The outcome of a request on a socket closed under it: uringloop fails it as the closed
    socket's own methods fail (OSError EBADF); on the stock loop it waits on, and is cancelled."""
    task.cancel()
    outcome, = await asyncio.gather(task, return_exceptions=True)
    assert isinstance(outcome, (OSError, asyncio.CancelledError)), outcome


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_queued_receive_does_not_read_a_new_socket_that_took_the_closed_ones_number():
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    b.setblocking(False)
    (first, second), new, peer = await close_under(b, loop.sock_recv(b, 100),
                                                   loop.sock_recv(b, 100))
    with a, new, peer:
        peer.send(b"for the new socket")
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        await asyncio.sleep(0.05)
        assert new.recv(100) == b"for the new socket"
        await assert_failed_or_cancelled(second)


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_queued_send_does_not_reach_a_new_socket_that_took_the_closed_ones_number():
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()        # `a` never reads: the first send stays in the kernel
    b.setblocking(False)
    (stuck, queued), new, peer = await close_under(b, loop.sock_sendall(b, b"x" * (8 << 20)),
                                                   loop.sock_sendall(b, b"secret"))
    with a, new, peer:
        stuck.cancel()
        await asyncio.gather(stuck, return_exceptions=True)
        await asyncio.sleep(0.05)
        with pytest.raises(BlockingIOError):
            peer.recv(100)
        await assert_failed_or_cancelled(queued)


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_partial_send_does_not_go_on_in_a_new_socket_that_took_the_closed_ones_number():
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    b.setblocking(False)
    (sending,), new, peer = await close_under(b, loop.sock_sendall(b, b"x" * (8 << 20)))
    with a, new, peer:
        # The closed socket's peer reads: the send waiting in the kernel (on the old socket)
        # moves on and completes part of the way; the rest must not go out on `new`.
        a.setblocking(False)
        deadline = loop.time() + 5
        while not sending.done() and loop.time() < deadline:
            try:
                if not a.recv(1 << 20):
                    break           # EOF: the old socket is gone (the stock loop's case)
            except BlockingIOError:
                await asyncio.sleep(0.005)
        with pytest.raises(BlockingIOError):
            peer.recv(100)
        await assert_failed_or_cancelled(sending)


@pytest.mark.asyncio
@pytest.mark.timeout(60)
@pytest.mark.parametrize("call", ["sock_recv", "sock_sendall"])
async def test_request_written_in_the_pass_that_closes_its_socket_does_not_reach_a_new_one(
        call):
    """A sock_recv() or sock_sendall() whose request was written into the ring in the same pass
    of the ready queue in which another callback closes the socket and a new socket takes its
    number: the request reaches the kernel only at the iteration's io_uring_enter, by number,
    so before the enter uringloop looks whether the socket still has it (_proactor.StaleFdGuard) and
    fails the request with EBADF if not -- it must neither take the new socket's bytes nor
    write to its peer.  On the stock loop, which tries the socket itself first, the send has
    gone to the old peer at once and the receive waits on for the closed socket."""
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    number = b.fileno()
    swapped = []
    if call == "sock_recv":         # its first step writes the request into the ring
        pending = asyncio.ensure_future(loop.sock_recv(b, 100))
    else:
        pending = asyncio.ensure_future(loop.sock_sendall(b, b"for the old peer"))

    def close_and_reuse():          # the same pass of the ready queue, after that step
        b.close()
        swapped.append(pair_on_number(number))
        if call == "sock_recv":
            swapped[0][1].send(b"for the new socket")

    loop.call_soon(close_and_reuse)
    await asyncio.sleep(0.05)
    new, peer = swapped[0]
    with a, new, peer:
        pending.cancel()
        outcome, = await asyncio.gather(pending, return_exceptions=True)
        if call == "sock_recv":
            assert new.recv(100) == b"for the new socket"
            assert isinstance(outcome, (OSError, asyncio.CancelledError)), outcome
        else:
            with pytest.raises(BlockingIOError):
                peer.recv(100)                  # nothing reached the new socket's peer
            # Sent to the old peer before the close (stock), or failed (uringloop: EBADF).
            received = a.recv(100)
            if received:
                assert received == b"for the old peer"
                assert outcome is None, outcome
            else:
                assert isinstance(outcome, OSError) and outcome.errno == errno.EBADF, outcome


def test_connection_kept_for_a_cancelled_accept_is_closed_with_the_loop(new_loop, is_uring):
    if not is_uring:
        pytest.skip("the stock loop keeps no connection for a cancelled sock_accept(): one "
                    "accepted as its task was cancelled is dropped (closed when collected)")
    loop = new_loop()
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    srv.setblocking(False)
    clients = []

    def connect():
        clients.append(socket.create_connection(srv.getsockname()))

    async def main():
        task = asyncio.ensure_future(loop.sock_accept(srv))
        await asyncio.sleep(0.01)           # the accept waits: its poll is in the kernel
        assert not task.done()
        # The timer is due when the next iteration starts, and runs after that iteration's
        # completions -- the connection made by its first callback, accepted for the task --
        # and before the task resumes to take it: the task is cancelled with its result set,
        # and the connection is kept for the next sock_accept() on the listener.
        loop.call_later(0, task.cancel)
        loop.call_soon(connect)
        await asyncio.gather(task, return_exceptions=True)
        assert task.cancelled()

    with srv:
        loop.run_until_complete(main())
        client, = clients
        with client:
            client.settimeout(0.2)
            with pytest.raises(socket.timeout):
                client.recv(1)              # kept open, for a next caller
            loop.close()                    # nobody can take it any more: closed
            client.settimeout(10)
            assert client.recv(1) == b""


def test_close_drains_in_flight_operations_and_releases_buffers(new_loop):
    loop = new_loop()
    a, b = socket.socketpair()
    b.setblocking(False)
    buf = bytearray(1024)
    with a, b:
        async def start():
            return asyncio.ensure_future(loop.sock_recv_into(b, buf))

        task = loop.run_until_complete(start())
        loop.run_until_complete(asyncio.sleep(0.01))
        assert not task.done()
        task.cancel()
        loop.run_until_complete(asyncio.wait([task]))
        loop.close()
    # The buffer is no longer exported to any operation: it can be resized again.
    buf.extend(b"x")
    assert len(buf) == 1025
    proactor = getattr(loop, "_proactor", None)
    if proactor is not None:
        assert proactor.inflight == 0


def test_close_with_operations_still_pending_does_not_leak_or_crash(new_loop):
    loop = new_loop()
    socks = [socket.socketpair() for _ in range(20)]
    for _, b in socks:
        b.setblocking(False)

    async def start():
        return [asyncio.ensure_future(loop.sock_recv(b, 10)) for _, b in socks]

    tasks = loop.run_until_complete(start())
    loop.run_until_complete(asyncio.sleep(0.01))
    for t in tasks:
        t.cancel()
    loop.run_until_complete(asyncio.wait(tasks))
    loop.close()
    for a, b in socks:
        a.close()
        b.close()
    proactor = getattr(loop, "_proactor", None)
    if proactor is not None:
        assert proactor.inflight == 0


def test_coroutines_still_waiting_when_the_loop_closes_close_quietly(new_loop):
    """Tasks left waiting in sock_* calls at loop.close(): closing their coroutines afterwards
    (what destroying the tasks does) raises nothing, and the sockets keep working."""
    loop = new_loop()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    for s in (b, c):
        s.setblocking(False)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    buf = bytearray(64)
    with listener, a, b, c, d:
        async def start():
            return [asyncio.ensure_future(coro) for coro in (
                loop.sock_recv(b, 10), loop.sock_recv_into(b, buf), loop.sock_accept(listener),
                loop.sock_sendall(c, b"x" * (8 << 20)))]

        tasks = loop.run_until_complete(start())
        loop.run_until_complete(asyncio.sleep(0.05))
        assert not any(t.done() for t in tasks)
        loop.close()
        for t in tasks:
            t.get_coro().close()          # raised RuntimeError('Event loop is closed') before
        a.sendall(b"after")
        b.setblocking(True)
        b.settimeout(5)
        assert b.recv(10) == b"after"


def test_a_cancel_that_finds_no_sqe_slot_is_sent_at_the_next_enter():
    """uringloop only (its kernel requests): a cancel made while the kernel takes no more
    submission entries (EAGAIN/EBUSY; imitated with the ring's test knob) still reaches it once
    entries are taken again.  It was dropped: the receive stayed armed until the loop closed,
    holding the socket's file, so closing the socket did not close the connection."""
    loop = uringloop.new_event_loop()
    a, b = socket.socketpair()
    b.setblocking(False)
    a.settimeout(5)
    try:
        async def start():
            return asyncio.ensure_future(loop.sock_recv(b, 10))

        task = loop.run_until_complete(start())
        loop.run_until_complete(asyncio.sleep(0.01))
        proactor = loop._proactor
        armed = proactor.inflight            # the receive, and the loop's own wake-up read
        assert not task.done()
        proactor.ring._limit_sq_room(0)
        try:
            task.cancel()
            loop.run_until_complete(asyncio.wait([task]))
            assert task.cancelled()
            assert proactor.inflight == armed    # the receive is still the kernel's
        finally:
            proactor.ring._limit_sq_room(None)
        loop.run_until_complete(asyncio.sleep(0.05))
        assert proactor.inflight == armed - 1
        b.close()
        assert a.recv(10) == b""                  # the peer sees the close
    finally:
        loop.close()
        a.close()
        b.close()
