"""add_reader/add_writer/remove_reader/remove_writer, on uringloop and on the stock loop."""

import asyncio
import contextlib
import contextvars
import errno
import os
import socket
import threading
import time

import pytest

import uringloop

from conftest import READINESS_LOOP_FACTORIES, loop_maker_fixture
from helpers import no_leaked_fds  # noqa: F401 (an autouse fixture)

# Every test here also runs on uringloop's fallback for kernels without IORING_OP_EPOLL_WAIT
# (conftest.READINESS_LOOP_FACTORIES).
pytestmark = pytest.mark.readiness
new_loop = loop_maker_fixture(READINESS_LOOP_FACTORIES)


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


async def iterations(n=10):
    """Let the loop run n iterations (each one polls the kernel once)."""
    for _ in range(n):
        await asyncio.sleep(0)


async def until(predicate, limit=1000):
    for _ in range(limit):
        if predicate():
            return
        await asyncio.sleep(0)
    await asyncio.sleep(0.01)
    assert predicate()


@pytest.mark.asyncio
@pytest.mark.parametrize("ending", ["cancelled", "resolved by the writer"])
async def test_a_waiter_removing_its_writer_in_a_done_callback_is_not_called_again(pair, ending):
    """The pattern of anyio's wait_writable()/wait_readable() (and asyncio's own sock_* waits
    before 3.12): a writer that resolves a future, removed by the future's done-callback.  On
    the stock loop a writer runs after every callback queued before its poll, the done-callback
    among them, so it never runs on a done future.  uringloop ran it in the I/O phase of the
    iteration whose ready callbacks had queued that done-callback: on a future cancelled in that
    pass fut.set_result() raised InvalidStateError into the exception handler.  (The second
    case guards the other side: a writer that resolved the future must not run again before
    the done-callback removes it.)"""
    loop = asyncio.get_running_loop()
    a, _ = pair                                 # writable all along
    errors = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context["message"]))
    try:
        for _ in range(20):
            fut = loop.create_future()
            loop.add_writer(a, fut.set_result, None)
            fut.add_done_callback(lambda _f: loop.remove_writer(a))
            if ending == "cancelled":
                fut.cancel()
                await asyncio.sleep(0)
                await asyncio.sleep(0)
            else:
                assert await fut is None
        await iterations()
    finally:
        loop.set_exception_handler(None)
        loop.remove_writer(a)
    assert errors == []


@pytest.mark.asyncio
async def test_reader_is_called_when_data_arrives(pair):
    loop = asyncio.get_running_loop()
    a, b = pair
    got = []

    def on_readable(sock, tag):
        got.append((tag, sock.recv(100)))

    loop.add_reader(b, on_readable, b, "tag")
    await iterations()
    assert got == []
    a.send(b"hello")
    await until(lambda: got)
    assert got == [("tag", b"hello")]
    assert loop.remove_reader(b) is True


@pytest.mark.asyncio
async def test_reader_is_level_triggered(pair):
    loop = asyncio.get_running_loop()
    a, b = pair
    calls = 0

    def lazy_reader():
        # Reads nothing for the first calls: the data stays, so the callback must come back.
        nonlocal calls
        calls += 1
        if calls >= 5:
            b.recv(100)

    loop.add_reader(b.fileno(), lazy_reader)
    a.send(b"x")
    await until(lambda: calls >= 5)
    await iterations(20)
    assert calls == 5            # consumed at the fifth call: quiet since
    a.send(b"y")
    await until(lambda: calls == 6)
    loop.remove_reader(b.fileno())


@pytest.mark.asyncio
async def test_writer_is_level_triggered_until_removed(pair):
    loop = asyncio.get_running_loop()
    a, _ = pair
    calls = 0

    def on_writable():
        nonlocal calls
        calls += 1
        if calls == 3:
            assert loop.remove_writer(a) is True

    loop.add_writer(a, on_writable)
    await until(lambda: calls >= 3)
    await iterations(20)
    assert calls == 3


@pytest.mark.asyncio
async def test_replacing_a_reader_replaces_the_callback(pair):
    loop = asyncio.get_running_loop()
    a, b = pair
    got = []
    first = loop._add_reader(b, lambda: got.append("first"))
    second = loop._add_reader(b, lambda: got.append(("second", b.recv(10))))
    assert isinstance(first, asyncio.Handle) and first.cancelled()
    assert not second.cancelled()
    a.send(b"!")
    await until(lambda: got)
    await iterations()
    assert got == [("second", b"!")]
    assert loop.remove_reader(b)


@pytest.mark.asyncio
async def test_remove_returns_whether_a_callback_was_registered(pair):
    loop = asyncio.get_running_loop()
    a, b = pair
    assert loop.remove_reader(b) is False
    assert loop.remove_writer(b) is False
    loop.add_reader(b, lambda: None)
    assert loop.remove_writer(b) is False        # only a reader is registered
    assert loop.remove_reader(b) is True
    assert loop.remove_reader(b) is False
    loop.add_writer(b, lambda: None)
    loop.add_reader(b, lambda: None)
    assert loop.remove_reader(b) is True
    assert loop.remove_writer(b) is True
    assert loop.remove_writer(b) is False


@pytest.mark.asyncio
async def test_reader_and_writer_on_one_fd_are_independent(pair):
    loop = asyncio.get_running_loop()
    a, b = pair
    reads, writes = [], []
    loop.add_reader(b, lambda: reads.append(b.recv(10)))
    loop.add_writer(b, lambda: writes.append(1))
    await until(lambda: writes)
    assert loop.remove_writer(b)
    await iterations()
    count = len(writes)
    a.send(b"r")
    await until(lambda: reads)
    await iterations()
    assert reads == [b"r"]
    assert len(writes) == count
    assert loop.remove_reader(b)


@pytest.mark.asyncio
async def test_nothing_fires_after_remove_with_poll_in_flight(pair):
    loop = asyncio.get_running_loop()
    a, b = pair
    got = []
    loop.add_reader(b, got.append, "fired")
    await iterations()               # the poll is in the kernel now
    assert loop.remove_reader(b)
    a.send(b"data")
    await iterations(20)
    assert got == []


@pytest.mark.asyncio
async def test_nothing_fires_when_data_races_the_removal(pair):
    loop = asyncio.get_running_loop()
    a, b = pair
    got = []
    loop.add_reader(b, got.append, "fired")
    await iterations()
    # The data wakes the poll before the removal reaches the kernel: the event is dropped.
    a.send(b"data")
    assert loop.remove_reader(b)
    await iterations(20)
    assert got == []


@pytest.mark.asyncio
async def test_callback_removing_itself_runs_once(pair):
    loop = asyncio.get_running_loop()
    a, b = pair
    calls = []

    def once():
        calls.append(1)
        loop.remove_reader(b)        # without reading: level-triggered would call again

    loop.add_reader(b, once)
    a.send(b"x")
    await until(lambda: calls)
    await iterations(20)
    assert calls == [1]


@pytest.mark.asyncio
async def test_cancelled_handle_unregisters_itself(pair):
    loop = asyncio.get_running_loop()
    a, b = pair
    called = []
    handle = loop._add_reader(b, called.append, 1)
    handle.cancel()
    a.send(b"x")
    await iterations(20)
    assert called == []
    assert loop.remove_reader(b) is False


@pytest.mark.asyncio
async def test_invalid_descriptors_raise_like_the_stock_loop(tmp_path):
    loop = asyncio.get_running_loop()
    for bad in (-1, "text", object(), None):
        with pytest.raises(ValueError):
            loop.add_reader(bad, lambda: None)
        with pytest.raises(ValueError):
            loop.add_writer(bad, lambda: None)
        with pytest.raises(ValueError):
            loop.remove_reader(bad)
        with pytest.raises(ValueError):
            loop.remove_writer(bad)
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(OSError) as info:
        loop.add_reader(r, lambda: None)
    assert info.value.errno == 9    # EBADF
    assert loop.remove_reader(r) is False
    path = tmp_path / "regular"
    path.write_bytes(b"data")
    with open(path, "rb") as regular:
        with pytest.raises(PermissionError):
            loop.add_reader(regular, lambda: None)
        with pytest.raises(PermissionError):
            loop.add_writer(regular.fileno(), lambda: None)
        assert loop.remove_reader(regular) is False
    # A character device that cannot be waited on: epoll refuses it as well (uringloop once
    # accepted /dev/null and called the reader in a busy loop).
    with open(os.devnull, "rb") as null:
        with pytest.raises(PermissionError):
            loop.add_reader(null, lambda: None)
        assert loop.remove_reader(null) is False
    # A number no descriptor can have: epoll's OverflowError, and nothing to remove (uringloop
    # cut 2**32 + n down to n and watched that descriptor instead).
    r, w = os.pipe()
    try:
        for huge in (2 ** 31, 2 ** 32 + r):
            with pytest.raises(OverflowError):
                loop.add_reader(huge, lambda: None)
        assert loop.remove_reader(2 ** 64) is False
        assert loop.remove_reader(r) is False
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.asyncio
async def test_a_failed_modification_drops_the_registration():
    """add_writer() on a registered reader's descriptor that was closed meanwhile fails with
    EBADF, and, as with the stock selector, the registration is gone with it (uringloop kept
    it: a later add_reader() "succeeded" and remove_reader() said True)."""
    loop = asyncio.get_running_loop()
    r, w = os.pipe()
    loop.add_reader(r, lambda: None)
    os.close(r)
    os.close(w)
    with pytest.raises(OSError) as info:
        loop.add_writer(r, lambda: None)
    assert info.value.errno == 9    # EBADF
    assert loop.remove_reader(r) is False
    with pytest.raises(OSError):
        loop.add_reader(r, lambda: None)


@pytest.mark.asyncio
@pytest.mark.parametrize("given_as", ["number", "socket object"])
@pytest.mark.parametrize("removed", ["reader", "writer"])
async def test_removing_one_direction_of_a_closed_descriptor_raises_and_drops_the_other(
        given_as, removed):
    """remove_reader() of a descriptor closed since it was registered while a writer is still
    registered on it (or remove_writer() with a reader) raises OSError(EBADF), and the other
    direction's callback is gone with the registration.  That is the stock loop's behaviour
    on 3.10-3.13 (its selector's modify() fails, unregisters and re-raises), and the project's
    rule is the stock loop's exception types.  uringloop said True and kept the other callback
    registered for a descriptor that no longer existed."""
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    with b:
        target = a.fileno() if given_as == "number" else a
        loop.add_reader(target, lambda: None)
        loop.add_writer(target, lambda: None)
        a.close()
        remove, other = ((loop.remove_reader, loop.remove_writer) if removed == "reader"
                         else (loop.remove_writer, loop.remove_reader))
        with pytest.raises(OSError) as info:
            remove(target)
        assert info.value.errno == errno.EBADF
        if given_as == "number":
            assert other(target) is False
            assert remove(target) is False
        else:
            # No registration has it any more: the closed socket object is a descriptor -1,
            # a ValueError for both loops.
            with pytest.raises(ValueError):
                other(target)
        await iterations()


@pytest.mark.asyncio
async def test_an_error_on_the_descriptor_wakes_both_its_reader_and_its_writer():
    """An error (EPOLLERR) wakes the reader and the writer of a descriptor whatever they wait
    for, as the stock selector maps it: here a full pipe's write end, whose reader has gone,
    has neither room nor anything to read."""
    loop = asyncio.get_running_loop()
    r, w = os.pipe()
    os.set_blocking(w, False)
    fired = set()
    try:
        while True:
            os.write(w, b"x" * 65536)
    except BlockingIOError:
        pass
    try:
        loop.add_reader(w, fired.add, "reader")
        loop.add_writer(w, fired.add, "writer")
        await iterations()
        assert fired == set()
        os.close(r)
        await until(lambda: fired == {"reader", "writer"})
        assert loop.remove_reader(w) and loop.remove_writer(w)
    finally:
        os.close(w)


def eventpoll_descriptors():
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "anon_inode:[eventpoll]":
                found.add(int(name))
        except FileNotFoundError:
            pass                # listdir's own descriptor
    return found


def test_readiness_survives_its_epoll_descriptor_being_closed_by_someone_else(
        new_loop, is_uring):
    """The loop's epoll instance closed by someone else (a double close, a closerange()):
    every registration goes on firing, the exception handler hears about it, and loop.close()
    leaves alone the file that took the number.  uringloop's poll on the instance failed with
    EBADF once re-armed (or its epoll_wait did) and was never armed again: every reader and
    writer stopped firing while still registered -- and close() closed the number, whatever
    file it named by then."""
    if not is_uring:
        pytest.skip("the stock loop's epoll_wait raises OSError(EBADF) out of run_forever() "
                    "once its selector's descriptor is closed under it")
    loop = new_loop()
    reports = []
    loop.set_exception_handler(lambda loop, context: reports.append(context))
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    got = []
    before = eventpoll_descriptors()

    def reader():
        got.append(b.recv(100))
        if len(got) == 1:
            os.close(epfd)      # between its completion and the poll's re-arm: POLL_ADD fails

    async def main():
        loop.add_reader(b, reader)
        await iterations()
        a.send(b"one")
        await until(lambda: len(got) == 1)
        await iterations()
        a.send(b"two")
        await until(lambda: len(got) == 2)
        assert len(reports) == 1
        # Closed again while the poll waits in the kernel (it holds the instance, and still
        # completes), the number taken by another file before it does: epoll_wait on it fails.
        renewed, = eventpoll_descriptors() - before      # (it may have taken epfd's number)
        os.close(renewed)
        os.dup2(null, renewed, inheritable=False)
        a.send(b"three")
        await until(lambda: len(got) == 3)
        assert len(reports) == 2
        return renewed

    null = os.open(os.devnull, os.O_RDONLY)
    try:
        with a, b:
            loop.add_reader(b, lambda: None)
            epfd, = eventpoll_descriptors() - before
            loop.remove_reader(b)
            stranger = loop.run_until_complete(main())
            assert got == [b"one", b"two", b"three"]
            for report in reports:
                assert isinstance(report["exception"], OSError)
                assert "closed by someone else" in report["message"]
            loop.close()
            os.fstat(stranger)          # still open: not the loop's to close
            os.close(stranger)
    finally:
        os.close(null)


@contextlib.contextmanager
def counting_readers(loop, count):
    """`count` socket pairs, with a reader on the first socket of each that reads what came
    and counts its call: (the pairs, a list whose one item is the count of calls)."""
    pairs = [socket.socketpair() for _ in range(count)]
    calls = [0]

    def read(sock):
        sock.recv(10)
        calls[0] += 1

    try:
        for a, b in pairs:
            a.setblocking(False)
            loop.add_reader(a, read, a)
        yield pairs, calls
    finally:
        for a, b in pairs:
            loop.remove_reader(a)
            a.close()
            b.close()


def readers_run_per_step(loop, calls, steps):
    """Step the loop `steps` times (call_soon(stop), run_forever()): the readers run in each."""
    per_step = []
    for _ in range(steps):
        before = calls[0]
        loop.call_soon(loop.stop)
        loop.run_forever()
        per_step.append(calls[0] - before)
    return per_step


def test_every_ready_descriptor_is_dispatched_in_one_iteration(new_loop):
    """300 descriptors ready at once: all 300 readers run in the same iteration, as the stock
    selector asks epoll for as many events as it has registrations.  (uringloop took 128 per
    iteration.)"""
    loop = new_loop()
    with counting_readers(loop, 300) as (pairs, calls):
        loop.run_until_complete(asyncio.sleep(0.01))
        for a, b in pairs:
            b.send(b"x")
        per_iteration = readers_run_per_step(loop, calls, 4)
        assert sorted(per_iteration) == [0, 0, 0, 300], per_iteration


def test_descriptors_registered_before_the_loop_runs_are_all_served_by_its_first_step(
        new_loop):
    """100 readable descriptors registered before the loop runs: the first step runs all 100
    readers, as the stock loop's first poll finds them all.  uringloop armed its wait with
    room for 16 events at the first registration, cancelled it for more room at the 17th, and
    ran none of them until the second step."""
    loop = new_loop()
    with counting_readers(loop, 100) as (pairs, calls):
        for a, b in pairs:
            b.send(b"x")
        assert readers_run_per_step(loop, calls, 3) == [100, 0, 0]


def test_a_reader_runs_before_the_timers_due_in_the_same_iteration(new_loop, pair):
    """A descriptor that became ready and a timer that fell due while one callback blocked:
    the reader runs first, then the timer, in one iteration -- the stock loop's order (its
    _process_events() queues the reader ahead of the due timers).  uringloop queued the reader
    behind what the iteration's completions had queued, and ran it after the timer, an
    iteration late."""
    loop = new_loop()
    a, b = pair
    order = []

    def read():
        a.recv(10)
        order.append('reader')

    def block_while_both_become_ready():
        loop.call_later(0.01, order.append, 'timer')
        b.send(b"x")
        time.sleep(0.05)

    loop.add_reader(a, read)
    try:
        # A timer's callback: nothing else is ready in the iteration after it, so the next
        # iteration finds the data and the due timer together.
        loop.call_later(0.01, block_while_both_become_ready)
        loop.run_until_complete(asyncio.sleep(0.2))
        assert order == ['reader', 'timer']
    finally:
        loop.remove_reader(a)


@pytest.mark.asyncio
async def test_closing_a_registered_descriptor_closes_it():
    """A descriptor closed without remove_reader()/remove_writer() first really closes: its
    peer sees EOF, a closed listener refuses connections, and the old callback never runs.
    (uringloop once waited with a poll request per descriptor, and a request in the kernel
    holds the file open.)"""
    loop = asyncio.get_running_loop()
    fired = []
    a, b = socket.socketpair()
    with b:
        loop.add_reader(a, fired.append, "reader")
        loop.add_writer(a, lambda: None)
        await iterations()
        a.close()
        b.settimeout(5)
        assert b.recv(10) == b""                 # EOF at once: the socket is closed
        with pytest.raises(BrokenPipeError):
            b.send(b"to nobody")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    address = listener.getsockname()
    loop.add_reader(listener, fired.append, "listener")
    await iterations()
    listener.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=5).close()
    await iterations()
    assert fired == []


@pytest.mark.asyncio
async def test_a_reused_descriptor_number_is_watched_for_its_new_file(is_uring):
    if not is_uring:
        pytest.skip("the stock selector keeps the closed file's registration when the number is "
                    "registered again for the same events, and never reports the new one")
    loop = asyncio.get_running_loop()
    fired = []
    a, b = socket.socketpair()
    fd = a.fileno()
    loop.add_reader(fd, fired.append, "old")
    await iterations()
    a.close()
    b.close()
    c, d = socket.socketpair()
    with c, d:
        new, other = (c, d) if c.fileno() == fd else (d, c)
        assert new.fileno() == fd
        loop.add_reader(fd, fired.append, "new")
        other.send(b"x")
        await until(lambda: fired)
        assert loop.remove_reader(fd) is True
        assert fired[0] == "new" and set(fired) == {"new"}


@pytest.mark.asyncio
async def test_fd_owned_by_a_transport_is_refused():
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                       local_addr=("127.0.0.1", 0))
    sock = transport.get_extra_info("socket")
    for method in (loop.add_reader, loop.add_writer):
        with pytest.raises(RuntimeError):
            method(sock.fileno(), lambda: None)
    for method in (loop.remove_reader, loop.remove_writer):
        with pytest.raises(RuntimeError):
            method(sock.fileno())
    fd = sock.fileno()
    transport.close()
    # A closing transport no longer owns it.
    assert loop.remove_reader(fd) is False
    await iterations()


@pytest.mark.asyncio
async def test_closed_socket_object_can_still_be_removed(pair):
    loop = asyncio.get_running_loop()
    a, b = pair
    c = b.dup()
    loop.add_reader(c, lambda: None)
    await iterations()
    c.close()
    assert loop.remove_reader(c) is True


@pytest.mark.asyncio
async def test_pipe_eof_wakes_the_reader():
    loop = asyncio.get_running_loop()
    r, w = os.pipe()
    os.set_blocking(r, False)
    chunks = []

    def on_readable():
        data = os.read(r, 100)
        chunks.append(data)
        if not data:
            loop.remove_reader(r)

    try:
        loop.add_reader(r, on_readable)
        os.write(w, b"abc")
        await until(lambda: chunks)
        os.close(w)
        await until(lambda: chunks[-1:] == [b""])
        assert chunks == [b"abc", b""]
    finally:
        os.close(r)


@pytest.mark.asyncio
async def test_callback_runs_in_the_context_of_registration(pair):
    loop = asyncio.get_running_loop()
    a, b = pair
    var = contextvars.ContextVar("var", default="unset")
    seen = []
    var.set("at registration")
    loop.add_reader(b, lambda: seen.append(var.get()) or b.recv(10))
    var.set("later")
    a.send(b"x")
    await until(lambda: seen)
    assert seen == ["at registration"]
    loop.remove_reader(b)


@pytest.mark.asyncio
async def test_exception_in_callback_goes_to_the_handler(pair):
    loop = asyncio.get_running_loop()
    a, b = pair
    errors = []
    loop.set_exception_handler(lambda loop, ctx: errors.append(ctx))

    def broken():
        b.recv(10)
        raise ZeroDivisionError

    loop.add_reader(b, broken)
    a.send(b"x")
    await until(lambda: errors)
    assert isinstance(errors[0]["exception"], ZeroDivisionError)
    assert isinstance(errors[0]["handle"], asyncio.Handle)
    a.send(b"y")                     # still registered after the exception
    await until(lambda: len(errors) == 2)
    loop.remove_reader(b)


def test_closed_loop_refuses_and_reports_nothing(new_loop, pair):
    loop = new_loop()
    a, b = pair
    loop.close()
    with pytest.raises(RuntimeError):
        loop.add_reader(b, lambda: None)
    with pytest.raises(RuntimeError):
        loop.add_writer(b, lambda: None)
    assert loop.remove_reader(b) is False
    assert loop.remove_writer(b) is False


def test_close_with_registrations_drains(new_loop, pair):
    loop = new_loop()
    a, b = pair
    fired = []
    loop.add_reader(b, fired.append, "r")
    loop.add_writer(a, fired.append, "w")
    loop.run_until_complete(iterations())
    assert "w" in fired
    registry = loop._ul_readiness if isinstance(loop, uringloop.Loop) else None
    loop.close()
    if isinstance(loop, uringloop.Loop):
        assert loop._proactor.inflight == 0
        assert len(registry) == 0          # released by _close_io before the drain
        assert loop._ul_readiness is None  # and let go of once drained


@pytest.mark.asyncio
@pytest.mark.parametrize("what_enters", ["close", "large write"])
async def test_reader_runs_once_per_readiness_when_a_transport_enters_the_ring_early(
        pair, what_enters):
    # A completion in the same batch makes the Proactor enter the ring at once -- a transport
    # closed in data_received() cancels its receive, a write of megabytes is submitted early.
    # That enter took the readiness poll, re-armed before the reader had run, to the kernel:
    # it completed at once and the reader was queued twice, the second call finding nothing.
    loop = asyncio.get_running_loop()
    a, b = pair
    c, d = socket.socketpair()
    calls = []

    def reader():
        try:
            calls.append(a.recv(100))
        except BlockingIOError:
            calls.append("nothing to read")

    class Closing(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            if what_enters == "close":
                self.transport.close()
            else:
                self.transport.write(b"z" * 4_000_000)

    with c, d:
        transport, _ = await loop.connect_accepted_socket(Closing, c)
        loop.add_reader(a, reader)
        try:
            await asyncio.sleep(0.05)
            b.send(b"x")                # ready first, then the transport's data
            d.send(b"y")
            await asyncio.sleep(0.1)
        finally:
            loop.remove_reader(a)
            transport.abort()
    assert calls == [b"x"]


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_first_reader_added_from_another_thread_is_watched_at_once():
    # The loop waits (a 5 s sleep, nothing else registered) while a thread adds a reader and
    # makes its descriptor readable: the stock loop's epoll_wait sees the new registration.
    loop = asyncio.get_running_loop()
    r, w = os.pipe()
    os.set_blocking(r, False)
    called = loop.create_future()

    def reader():
        os.read(r, 10)
        loop.remove_reader(r)
        called.set_result(loop.time())

    def other_thread():
        time.sleep(0.1)                 # the loop is waiting by now
        loop.add_reader(r, reader)
        os.write(w, b"x")

    thread = threading.Thread(target=other_thread)   # (no executor: its result wakes the loop)
    try:
        started = loop.time()
        thread.start()
        assert await asyncio.wait_for(called, 5) - started < 2.5
    finally:
        thread.join()
        os.close(r)
        os.close(w)
