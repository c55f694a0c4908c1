"""connect_read_pipe / connect_write_pipe, on uringloop and on the stock loop."""

import asyncio
import errno
import fcntl
import gc
import hashlib
import os
import select
import socket
import struct
import subprocess
import sys
import termios
import tty
import warnings

import pytest

from helpers import no_leaked_fds  # noqa: F401 (an autouse fixture)


class Reader(asyncio.Protocol):
    def __init__(self):
        self.loop = asyncio.get_running_loop()
        self.transport = None
        self.data = bytearray()
        self.chunks = 0
        self.eof = False
        self.lost = self.loop.create_future()
        self.events = []

    def connection_made(self, transport):
        self.events.append("made")
        self.transport = transport

    def data_received(self, data):
        assert isinstance(data, bytes)
        if not self.chunks:
            self.events.append("data")
        self.chunks += 1
        self.data += data

    def eof_received(self):
        self.events.append("eof")
        self.eof = True

    def connection_lost(self, exc):
        self.events.append("lost")
        self.lost.set_result(exc)


class Writer(asyncio.BaseProtocol):
    def __init__(self):
        self.loop = asyncio.get_running_loop()
        self.lost = self.loop.create_future()
        self.paused = 0
        self.resumed = 0

    def connection_lost(self, exc):
        self.lost.set_result(exc)

    def pause_writing(self):
        self.paused += 1

    def resume_writing(self):
        self.resumed += 1


def is_reading(transport):
    """transport.is_reading(), or None where the stock read pipe lacks it (Python 3.10)."""
    try:
        return transport.is_reading()
    except NotImplementedError:
        return None


async def until(predicate, limit=2000):
    for _ in range(limit):
        if predicate():
            return
        await asyncio.sleep(0)
    await asyncio.sleep(0.05)
    assert predicate()


async def iterations(n=10):
    for _ in range(n):
        await asyncio.sleep(0)


async def read_from(r, n, got=b""):
    """`n` bytes from the non-blocking pipe end `r` (after `got`), letting the loop run while
    the pipe is empty."""
    got = bytearray(got)
    while len(got) < n:
        try:
            got += os.read(r, 1 << 16)
        except BlockingIOError:
            await asyncio.sleep(0)
    return bytes(got)


async def read_pipe():
    r, w = os.pipe()
    loop = asyncio.get_running_loop()
    rpipe = os.fdopen(r, "rb", 0)
    transport, proto = await loop.connect_read_pipe(Reader, rpipe)
    return transport, proto, rpipe, w


async def write_pipe():
    r, w = os.pipe()
    loop = asyncio.get_running_loop()
    wpipe = os.fdopen(w, "wb", 0)
    transport, proto = await loop.connect_write_pipe(Writer, wpipe)
    return transport, proto, wpipe, r


@pytest.mark.asyncio
async def test_read_pipe_data_then_eof():
    transport, proto, rpipe, w = await read_pipe()
    assert proto.transport is transport
    assert transport.get_extra_info("pipe") is rpipe
    assert is_reading(transport) in (True, None)
    os.write(w, b"hello ")
    os.write(w, b"world")
    await until(lambda: proto.data == b"hello world")
    os.close(w)
    assert await asyncio.wait_for(proto.lost, 5) is None
    assert proto.eof
    assert proto.events == ["made", "data", "eof", "lost"]
    assert transport.is_closing()
    await until(lambda: rpipe.closed)


@pytest.mark.asyncio
async def test_read_pipe_close_without_eof():
    transport, proto, rpipe, w = await read_pipe()
    transport.close()
    transport.close()
    assert transport.is_closing()
    assert await asyncio.wait_for(proto.lost, 5) is None
    assert not proto.eof
    await until(lambda: rpipe.closed)
    os.close(w)


@pytest.mark.asyncio
async def test_write_pipe_delivers_large_data_in_order():
    loop = asyncio.get_running_loop()
    transport, proto, wpipe, r = await write_pipe()
    rtransport, rproto = await loop.connect_read_pipe(Reader, os.fdopen(r, "rb", 0))
    payload = os.urandom(3 * 1024 * 1024 + 17)     # far more than a pipe holds
    view = memoryview(payload)
    for i in range(0, len(payload), 100_000):
        transport.write(view[i:i + 100_000])
    transport.write(bytearray(b"-tail"))
    transport.close()
    assert await asyncio.wait_for(proto.lost, 10) is None
    assert await asyncio.wait_for(rproto.lost, 10) is None
    assert rproto.data == payload + b"-tail"
    assert rproto.eof
    assert proto.paused == proto.resumed
    assert transport.get_write_buffer_size() == 0


@pytest.mark.asyncio
async def test_write_pipe_flow_control_pauses_and_resumes():
    transport, proto, wpipe, r = await write_pipe()
    transport.set_write_buffer_limits(high=1024, low=256)
    assert transport.get_write_buffer_limits() == (256, 1024)
    with pytest.raises(ValueError):
        transport.set_write_buffer_limits(high=1, low=2)
    transport.write(b"x" * (1 << 20))            # the pipe takes 64 KiB; the rest waits
    await iterations()
    assert proto.paused == 1 and proto.resumed == 0
    assert transport.get_write_buffer_size() > 1024
    os.set_blocking(r, False)
    await read_from(r, 1 << 20)
    await until(lambda: proto.resumed == 1)
    assert transport.get_write_buffer_size() == 0
    transport.close()
    assert await asyncio.wait_for(proto.lost, 5) is None
    os.close(r)


@pytest.mark.asyncio
async def test_write_pipe_data_is_copied_at_write():
    loop = asyncio.get_running_loop()
    transport, proto, wpipe, r = await write_pipe()
    rtransport, rproto = await loop.connect_read_pipe(Reader, os.fdopen(r, "rb", 0))
    buf = bytearray(b"original")
    transport.write(buf)
    buf[:] = b"changed after write() returned"
    transport.write(buf)
    transport.close()
    await asyncio.wait_for(rproto.lost, 5)
    assert rproto.data == b"original" + b"changed after write() returned"
    await asyncio.wait_for(proto.lost, 5)


@pytest.mark.asyncio
async def test_write_pipe_bytes_are_in_the_pipe_when_write_returns():
    # As with the stock loop's os.write() in write(): a program may read the other end right
    # after write(), before the loop runs again.
    transport, proto, wpipe, r = await write_pipe()
    os.set_blocking(r, False)               # a missing byte fails here instead of hanging
    transport.write(b"one")
    assert os.read(r, 100) == b"one"
    transport.write(bytearray(b"two"))
    transport.write(memoryview(b"three"))
    assert os.read(r, 100) == b"twothree"
    # More than the pipe holds: what fits is there at once, the rest follows in order.
    payload = os.urandom(200_000)
    transport.write(payload)
    got = os.read(r, 1 << 20)
    assert 0 < len(got) < len(payload)
    assert await read_from(r, len(payload), got) == payload
    await until(lambda: transport.get_write_buffer_size() == 0)
    transport.close()
    assert await asyncio.wait_for(proto.lost, 5) is None
    os.close(r)


@pytest.mark.asyncio
async def test_socket_write_pipe_bytes_are_sent_when_write_returns():
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    b.setblocking(False)
    transport, proto = await loop.connect_write_pipe(Writer, a)
    transport.write(b"at once")
    assert b.recv(100) == b"at once"
    transport.close()
    assert await asyncio.wait_for(proto.lost, 5) is None
    b.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("end", ["slave", "master"])
async def test_pty_write_pipe_bytes_are_in_the_pty_when_write_returns(end):
    # The pty flavour of the test above (CPython's test_write_pty does the same): a blocking
    # read of the other end on the loop's own thread, before the loop runs again.
    # (A pty passes the bytes to the other end through a kernel worker, so the read waits for
    # them -- up to 5 s, without letting the loop run: a missing byte fails instead of hanging.)
    # The master end (/dev/ptmx) is a tty the transport cannot open again for itself.
    loop = asyncio.get_running_loop()
    master, slave = os.openpty()
    tty.setraw(slave)
    ours, theirs = (slave, master) if end == "slave" else (master, slave)
    transport, proto = await loop.connect_write_pipe(Writer, os.fdopen(ours, "wb", 0))

    def read_other_end(n):
        got = b""
        while len(got) < n and select.select([theirs], [], [], 5)[0]:
            got += os.read(theirs, 100)
        return got

    try:
        transport.write(b"1")
        assert transport.get_write_buffer_size() == 0
        assert read_other_end(1) == b"1"
        transport.write(b"2345")
        assert read_other_end(4) == b"2345"
        transport.close()
        assert await asyncio.wait_for(proto.lost, 5) is None
    finally:
        if not transport.is_closing():
            transport.abort()
        os.close(theirs)


@pytest.mark.asyncio
async def test_pty_master_write_pipe_aborted_with_a_write_blocked_is_closed_by_connection_lost():
    # Nobody reads the slave: most of the write waits for room.  abort() drops it, and the
    # master is closed by the time the protocol's connection_lost() has run, as with the stock
    # transport (the pty then reads as hung up from the slave's side: no stale bytes kept).
    loop = asyncio.get_running_loop()
    master, slave = os.openpty()
    tty.setraw(slave)
    wpipe = os.fdopen(master, "wb", 0)
    transport, proto = await loop.connect_write_pipe(Writer, wpipe)
    try:
        transport.write(b"x" * 300_000)
        await asyncio.sleep(0.05)
        assert transport.get_write_buffer_size() > 0
        transport.abort()
        assert await asyncio.wait_for(proto.lost, 5) is None
        assert wpipe.closed
    finally:
        if not transport.is_closing():
            transport.abort()
        os.close(slave)


@pytest.mark.asyncio
async def test_write_pipe_to_a_device_that_refuses_the_write_fails_in_write():
    # /dev/full refuses every write with ENOSPC.  The stock transport's write() tries
    # os.write() at once: the transport is closing when write() returns, with nothing
    # buffered, and connection_lost() gets the error.
    loop = asyncio.get_running_loop()
    errors = []
    loop.set_exception_handler(lambda loop, ctx: errors.append(ctx))
    transport, proto = await loop.connect_write_pipe(Writer, open("/dev/full", "wb", 0))
    transport.write(b"abc")
    assert transport.is_closing()
    assert transport.get_write_buffer_size() == 0
    transport.write(b"x" * 200_000)                 # dropped, as on a closed transport
    assert transport.get_write_buffer_size() == 0 and proto.paused == 0
    exc = await asyncio.wait_for(proto.lost, 5)
    assert isinstance(exc, OSError) and exc.errno == errno.ENOSPC
    assert errors == []                             # an OSError is not reported to the handler


@pytest.mark.asyncio
@pytest.mark.parametrize("transport_kind", ["write", "read"])
async def test_tty_pipe_transport_has_only_the_access_of_the_descriptor_it_was_given(
        transport_kind):
    # A write transport on a tty opened O_RDONLY cannot write to it (EBADF), nor can a read
    # transport read from one opened O_WRONLY: the stock transports use the caller's
    # descriptor, and neither may reach the terminal through another.
    loop = asyncio.get_running_loop()
    errors = []
    loop.set_exception_handler(lambda loop, ctx: errors.append(ctx))
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    try:
        if transport_kind == "write":
            fd = os.open(os.ttyname(slave), os.O_RDONLY | os.O_NOCTTY)
            transport, proto = await loop.connect_write_pipe(Writer, os.fdopen(fd, "rb", 0))
            transport.write(b"hello")
            exc = await asyncio.wait_for(proto.lost, 5)
            assert isinstance(exc, OSError) and exc.errno == errno.EBADF
            await asyncio.sleep(0.05)
            with pytest.raises(BlockingIOError):
                os.read(master, 100)                # nothing reached the terminal
            assert errors == []
        else:
            fd = os.open(os.ttyname(slave), os.O_WRONLY | os.O_NOCTTY)
            transport, proto = await loop.connect_read_pipe(Reader, os.fdopen(fd, "wb", 0))
            os.write(master, b"typed")
            exc = await asyncio.wait_for(proto.lost, 5)
            assert isinstance(exc, OSError) and exc.errno == errno.EBADF
            assert proto.data == b""
            assert [ctx["message"] for ctx in errors] == ["Fatal read error on pipe transport"]
    finally:
        if not transport.is_closing():
            transport.abort()
        os.close(master)
        os.close(slave)


PTY_DRAINER = """
import hashlib, os, select, sys
end, go, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
told = bool(select.select([go], [], [], 10)[0])
digest, got = hashlib.sha256(), 0
while got < n:
    chunk = os.read(end, 1 << 16)
    digest.update(chunk)
    got += len(chunk)
print(told, got, digest.hexdigest())
"""


@pytest.mark.asyncio
@pytest.mark.parametrize("end", ["slave", "master"])
async def test_pty_write_larger_than_the_pty_holds_does_not_block_the_loop(end):
    # Nobody reads the other end until the loop has run callbacks with the pty full: a write
    # that blocked the loop's thread until the data was read would never get there.  The reader
    # is a child process (a thread could need the GIL the blocked loop holds), which gives up
    # waiting to be told after 10 s and drains the pty anyway, so that a failure ends.  (The
    # slave end is a tty the transport can open again; the master end, /dev/ptmx, is not.)
    loop = asyncio.get_running_loop()
    master, slave = os.openpty()
    tty.setraw(slave)
    ours, theirs = (slave, master) if end == "slave" else (master, slave)
    transport, proto = await loop.connect_write_pipe(Writer, os.fdopen(ours, "wb", 0))
    go_r, go_w = os.pipe()
    payload = os.urandom(400_000)           # a pty holds a few KiB to 64 KiB
    drainer = subprocess.Popen(
        [sys.executable, "-c", PTY_DRAINER, str(theirs), str(go_r), str(len(payload))],
        pass_fds=(theirs, go_r), stdout=subprocess.PIPE, text=True)
    try:
        transport.write(payload[:1000])
        transport.write(payload[1000:])
        await iterations(5)
        assert transport.get_write_buffer_size() > 0      # the pty is full, nobody reads it
        os.write(go_w, b"go")
        await until(lambda: drainer.poll() is not None, limit=100_000)
        told, got, digest = drainer.stdout.read().split()
        assert told == "True", "the loop did not run callbacks while the pty was full"
        assert (int(got), digest) == (len(payload), hashlib.sha256(payload).hexdigest())
        await until(lambda: transport.get_write_buffer_size() == 0)
        transport.close()
        assert await asyncio.wait_for(proto.lost, 5) is None
    finally:
        if not transport.is_closing():
            transport.abort()
        drainer.kill()
        drainer.communicate()
        for fd in (go_r, go_w, theirs):
            os.close(fd)


@pytest.mark.asyncio
async def test_write_pipe_write_after_the_reader_closed_fails_with_broken_pipe():
    transport, proto, wpipe, r = await write_pipe()
    os.close(r)
    transport.write(b"nobody reads this")
    exc = await asyncio.wait_for(proto.lost, 5)
    assert isinstance(exc, BrokenPipeError)
    assert transport.is_closing()
    await until(lambda: wpipe.closed)


@pytest.mark.asyncio
async def test_write_pipe_to_a_reader_gone_before_the_connect_is_open_until_its_first_write():
    """The stock transport learns of a vanished reader from its reader callback, which runs
    behind the wake-up of the task that awaited connect_write_pipe(): that task finds the
    transport open, and its first write() fails -- connection_lost(BrokenPipeError).
    (uringloop acted on the hang-up at its completion, ahead of that wake-up: the task found
    the transport closing, its write dropped and connection_lost(None).)"""
    r, w = os.pipe()
    os.close(r)
    wpipe = os.fdopen(w, "wb", 0)
    transport, proto = await asyncio.get_running_loop().connect_write_pipe(Writer, wpipe)
    assert not transport.is_closing()
    transport.write(b"nobody reads this")
    exc = await asyncio.wait_for(proto.lost, 5)
    assert isinstance(exc, BrokenPipeError)
    await until(lambda: wpipe.closed)


@pytest.mark.asyncio
async def test_write_pipe_to_a_reader_gone_before_the_connect_ends_quietly_without_a_write():
    r, w = os.pipe()
    os.close(r)
    wpipe = os.fdopen(w, "wb", 0)
    transport, proto = await asyncio.get_running_loop().connect_write_pipe(Writer, wpipe)
    assert await asyncio.wait_for(proto.lost, 5) is None
    assert transport.is_closing()
    await until(lambda: wpipe.closed)


@pytest.mark.asyncio
async def test_write_pipe_reader_going_away_is_noticed_without_writing():
    transport, proto, wpipe, r = await write_pipe()
    transport.write(b"some")
    await iterations()
    os.close(r)
    assert await asyncio.wait_for(proto.lost, 5) is None
    assert transport.is_closing()
    await until(lambda: wpipe.closed)


@pytest.mark.asyncio
@pytest.mark.parametrize("closed_first", [False, True], ids=["open", "closing"])
async def test_write_pipe_reader_going_away_with_data_buffered(closed_first):
    """connection_lost(BrokenPipeError()), no errno, and no fatal error reported: the stock
    transport's reader tells the hang-up before its writer's write fails, closing or not.
    (uringloop's failed write could come first -- always once close() had been called: a fatal
    error with BrokenPipeError(32).)"""
    errors = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
    transport, proto, wpipe, r = await write_pipe()
    transport.write(b"y" * (1 << 20))            # does not fit: stays buffered
    await iterations()
    if closed_first:
        transport.close()
        await iterations()
    os.close(r)
    exc = await asyncio.wait_for(proto.lost, 5)
    assert type(exc) is BrokenPipeError and exc.errno is None
    assert errors == []
    transport.write(b"ignored after the loss")
    await until(lambda: wpipe.closed)


@pytest.mark.asyncio
async def test_write_pipe_abort_drops_buffered_data():
    transport, proto, wpipe, r = await write_pipe()
    transport.write(b"z" * (1 << 20))
    await iterations()
    transport.abort()
    assert transport.is_closing()
    assert transport.get_write_buffer_size() == 0
    assert await asyncio.wait_for(proto.lost, 5) is None
    os.set_blocking(r, False)
    total = 0
    while True:
        try:
            chunk = os.read(r, 1 << 16)
        except BlockingIOError:
            break
        if not chunk:
            break
        total += len(chunk)
    assert total < (1 << 20)
    os.close(r)


@pytest.mark.asyncio
async def test_write_pipe_write_eof_and_misuse():
    transport, proto, wpipe, r = await write_pipe()
    assert transport.can_write_eof()
    with pytest.raises(AssertionError):
        transport.write("text")
    transport.write(b"")
    transport.write(b"last")
    transport.write_eof()
    assert transport.is_closing()
    transport.write(b"after eof is dropped")
    assert await asyncio.wait_for(proto.lost, 5) is None
    os.set_blocking(r, True)
    assert os.read(r, 100) == b"last"
    assert os.read(r, 100) == b""
    os.close(r)


@pytest.mark.asyncio
async def test_read_pipe_pause_and_resume_lose_nothing():
    transport, proto, rpipe, w = await read_pipe()
    os.write(w, b"first")
    await until(lambda: proto.data == b"first")
    transport.pause_reading()
    assert is_reading(transport) in (False, None)
    os.write(w, b"-second")
    await iterations(20)
    assert proto.data == b"first"
    transport.resume_reading()
    assert is_reading(transport) in (True, None)
    await until(lambda: proto.data == b"first-second")
    for i in range(30):
        os.write(w, b"%d," % i)
        if i % 2:
            transport.pause_reading()
        await asyncio.sleep(0)
        transport.resume_reading()
    os.close(w)
    await asyncio.wait_for(proto.lost, 5)
    assert proto.data == b"first-second" + b"".join(b"%d," % i for i in range(30))


@pytest.mark.asyncio
async def test_read_pipe_eof_comes_where_the_stock_reader_would_find_it():
    # The stock transport's reader runs from the ready queue, behind what the pass before its
    # poll queued, and schedules eof_received() and connection_lost() from there.
    transport, proto, rpipe, w = await read_pipe()
    loop = asyncio.get_running_loop()
    await asyncio.sleep(0.01)
    os.close(w)
    for i in range(3):
        loop.call_soon(proto.events.append, f"mark{i}")
        await asyncio.sleep(0)
    await asyncio.wait_for(proto.lost, 5)
    await asyncio.sleep(0.01)
    assert proto.events == ["made", "mark0", "mark1", "eof", "lost", "mark2"]


@pytest.mark.asyncio
async def test_read_pipe_resumed_delivers_what_it_kept_behind_the_callbacks_queued_with_it():
    # A read resumed and paused again in one callback takes what the pipe holds (kept while
    # paused); resumed later, those bytes come where the stock reader would read them: after
    # what the caller queued with resume_reading(), not before.
    transport, proto, rpipe, w = await read_pipe()
    loop = asyncio.get_running_loop()
    transport.pause_reading()
    os.write(w, b"kept")
    await iterations(5)
    transport.resume_reading()
    transport.pause_reading()
    await asyncio.sleep(0.01)
    assert proto.data == b""
    transport.resume_reading()
    loop.call_soon(proto.events.append, "queued with the resume")
    await until(lambda: proto.data == b"kept")
    assert proto.events == ["made", "queued with the resume", "data"]
    transport.close()
    os.close(w)
    await asyncio.wait_for(proto.lost, 5)


@pytest.mark.asyncio
async def test_read_pipe_closed_in_data_received_leaves_the_rest_in_the_pipe():
    """A protocol that closes its transport in data_received(): what the pipe holds beyond
    that chunk stays there for the pipe's other readers -- no read taken ahead of the close."""
    loop = asyncio.get_running_loop()
    r, w = os.pipe()
    other_reader = os.dup(r)
    try:
        class CloseAtFirst(Reader):
            def data_received(self, data):
                super().data_received(data)
                os.write(w, b"second")      # arrives before the close
                self.transport.close()

        transport, proto = await loop.connect_read_pipe(CloseAtFirst, os.fdopen(r, "rb", 0))
        os.write(w, b"first")
        assert await asyncio.wait_for(proto.lost, 5) is None
        await iterations()
        assert proto.data == b"first"
        os.set_blocking(other_reader, False)
        assert os.read(other_reader, 100) == b"second"
    finally:
        os.close(other_reader)
        os.close(w)


@pytest.mark.asyncio
async def test_read_pipe_takes_nothing_from_a_pipe_given_its_closed_number():
    """Misuse: the caller closes the pipe's file object under the transport, and a new pipe
    gets the number.  The transport must not read that pipe's bytes."""
    r, w = os.pipe()
    rpipe = os.fdopen(r, "rb", 0)
    other = {}

    class ClosesItsFile(Reader):
        def data_received(self, data):
            super().data_received(data)
            rpipe.close()
            other["r"], other["w"] = os.pipe()
            os.write(other["w"], b"for someone else")

    transport, proto = await asyncio.get_running_loop().connect_read_pipe(ClosesItsFile, rpipe)
    os.write(w, b"first")
    await until(lambda: "w" in other)
    await iterations(20)
    try:
        assert other["r"] == r                  # the number was reused
        assert proto.data == b"first"
        os.set_blocking(other["r"], False)
        assert os.read(other["r"], 100) == b"for someone else"
    finally:
        transport.close()
        await iterations()
        for fd in (w, other["r"], other["w"]):
            os.close(fd)


@pytest.mark.asyncio
@pytest.mark.filterwarnings("ignore::ResourceWarning",       # the stock transport's abort()
                            "ignore::pytest.PytestUnraisableExceptionWarning")   # fails here
async def test_write_pipe_writes_nothing_into_a_pipe_given_its_closed_number():
    """Misuse: the caller closes the pipe's file object while the transport still has the rest
    of a write to send, and the number goes to another pipe's write end: none of the rest may
    reach that pipe."""
    loop = asyncio.get_running_loop()
    r, w = os.pipe()
    wpipe = os.fdopen(w, "wb", 0)
    transport, proto = await loop.connect_write_pipe(Writer, wpipe)
    transport.write(b"A" * 1_000_000)       # more than the pipe holds: the rest waits
    wpipe.close()
    assert os.open(os.devnull, os.O_RDONLY) == w    # holds the number for the dup2() below
    r2, w2 = os.pipe()
    os.dup2(w2, w)                          # the number now names the other pipe's write end
    os.close(w2)
    try:
        await iterations(20)
        await asyncio.sleep(0.05)
        os.set_blocking(r2, False)
        with pytest.raises(BlockingIOError):
            os.read(r2, 1 << 20)
    finally:
        try:
            transport.abort()
        except OSError:
            pass        # the stock loop's selector, asked to forget a number it never had
        await iterations()
        for fd in (r, r2, w):
            os.close(fd)


@pytest.mark.asyncio
async def test_pipe_transports_refuse_regular_files(tmp_path):
    loop = asyncio.get_running_loop()
    path = tmp_path / "file"
    path.write_bytes(b"x")
    with open(path, "rb") as f:
        with pytest.raises(ValueError):
            await loop.connect_read_pipe(Reader, f)
    with open(path, "wb") as f:
        with pytest.raises(ValueError):
            await loop.connect_write_pipe(Writer, f)


@pytest.mark.asyncio
# (The stock transport half made by the refusal raises from __del__; uringloop's does not.)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_pipe_transports_refuse_a_fileno_that_is_not_a_number():
    class NotAFile:
        def fileno(self):
            return "3"

    loop = asyncio.get_running_loop()
    with pytest.raises(TypeError, match="'str' object cannot be interpreted as an integer"):
        await loop.connect_read_pipe(Reader, NotAFile())
    with pytest.raises(TypeError, match="'str' object cannot be interpreted as an integer"):
        await loop.connect_write_pipe(Writer, NotAFile())


@pytest.mark.asyncio
async def test_socket_as_read_and_write_pipe():
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    rt, rp = await loop.connect_read_pipe(Reader, a)
    wt, wp = await loop.connect_write_pipe(Writer, b)
    wt.write(b"over a socket")
    await until(lambda: rp.data == b"over a socket")
    wt.close()
    assert await asyncio.wait_for(wp.lost, 5) is None
    b.close()                        # the write transport closed it already; harmless
    assert await asyncio.wait_for(rp.lost, 5) is None
    assert rp.eof
    await until(lambda: a.fileno() == -1)


@pytest.mark.asyncio
async def test_pty_hangup_ends_the_read_pipe_quietly():
    loop = asyncio.get_running_loop()
    errors = []
    loop.set_exception_handler(lambda loop, ctx: errors.append(ctx))
    master, slave = os.openpty()
    transport, proto = await loop.connect_read_pipe(Reader, os.fdopen(master, "rb", 0))
    os.write(slave, b"through the terminal\n")
    await until(lambda: b"through the terminal" in proto.data)
    os.close(slave)
    exc = await asyncio.wait_for(proto.lost, 5)
    assert isinstance(exc, OSError) and exc.errno == errno.EIO
    assert errors == []


PTY_WATCHDOG = """
import os, select, sys
master, go = int(sys.argv[1]), int(sys.argv[2])
told = bool(select.select([go], [], [], 10)[0])
if not told:
    os.write(master, b"123456789")      # what a read that waits for VMIN bytes waits for
print(told)
"""


@pytest.mark.asyncio
async def test_tty_read_with_vmin_and_vtime_delivers_what_is_there():
    # Non-canonical mode with VMIN=10, VTIME=25.5 s: a read(2) that may sleep waits for ten
    # bytes or the timer, in the loop's thread if the loop lets the tty sleep there.  Both loops
    # deliver the one byte at once.  The watchdog (a child process: a thread could need the GIL
    # the blocked loop holds) supplies the other nine after 10 s if not told first, so a
    # failure ends.
    loop = asyncio.get_running_loop()
    master, slave = os.openpty()
    tty.setraw(slave)
    attrs = termios.tcgetattr(slave)
    attrs[6][termios.VMIN], attrs[6][termios.VTIME] = 10, 255
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    transport, proto = await loop.connect_read_pipe(Reader, os.fdopen(slave, "rb", 0))
    go_r, go_w = os.pipe()
    watchdog = subprocess.Popen(
        [sys.executable, "-c", PTY_WATCHDOG, str(master), str(go_r)],
        pass_fds=(master, go_r), stdout=subprocess.PIPE, text=True)
    try:
        await iterations(3)
        os.write(master, b"a")
        await until(lambda: proto.data, limit=100_000)
        os.write(go_w, b"go")
        await until(lambda: watchdog.poll() is not None, limit=100_000)
        assert watchdog.stdout.read().split() == ["True"], "the one byte waited for VMIN"
        assert proto.data == b"a"
        transport.close()
        assert await asyncio.wait_for(proto.lost, 5) is None
    finally:
        watchdog.kill()
        watchdog.communicate()
        for fd in (go_r, go_w, master):
            os.close(fd)
        if not transport.is_closing():
            transport.close()
            await asyncio.wait_for(proto.lost, 5)


@pytest.mark.asyncio
async def test_data_received_exception_is_reported_and_reading_continues():
    loop = asyncio.get_running_loop()
    errors = []
    loop.set_exception_handler(lambda loop, ctx: errors.append(ctx))

    class Failing(Reader):
        def data_received(self, data):
            super().data_received(data)
            if data.startswith(b"boom"):
                raise ZeroDivisionError

    r, w = os.pipe()
    transport, proto = await loop.connect_read_pipe(Failing, os.fdopen(r, "rb", 0))
    os.write(w, b"boom")
    await until(lambda: errors)
    os.write(w, b"fine")
    await until(lambda: proto.data == b"boomfine")
    assert isinstance(errors[0]["exception"], ZeroDivisionError)
    # As the stock loop reports an exception out of a callback: with the handle that ran (an
    # exception handler may read context['handle']; uringloop's context had none).
    assert errors[0]["message"].startswith("Exception in callback ")
    assert isinstance(errors[0]["handle"], asyncio.Handle)
    os.close(w)
    await asyncio.wait_for(proto.lost, 5)


@pytest.mark.asyncio
async def test_a_write_of_a_view_that_is_not_contiguous_is_a_fatal_write_error():
    """memoryview(...)[::2] is not a bytes-like object for os.write(): the stock write pipe's
    write() fails with a fatal BufferError and writes nothing.  (uringloop raised TypeError
    out of write() and kept the transport open.)"""
    loop = asyncio.get_running_loop()
    errors = []
    loop.set_exception_handler(lambda loop, ctx: errors.append(ctx))
    transport, proto, wpipe, r = await write_pipe()
    try:
        transport.write(memoryview(b"abcdefgh")[::2])
        exc = await asyncio.wait_for(proto.lost, 5)
        assert type(exc) is BufferError
        assert [e["message"] for e in errors] == ["Fatal write error on pipe transport"]
        os.set_blocking(r, False)
        assert os.read(r, 100) == b""           # nothing was written before the pipe closed
    finally:
        transport.close()
        os.close(r)
        await asyncio.sleep(0)


@pytest.mark.asyncio
async def test_a_view_that_is_not_contiguous_behind_queued_bytes_is_a_type_error_of_write():
    """Behind bytes the pipe did not take, the stock write pipe adds the view to its bytearray:
    TypeError out of write(), nothing of it written, the transport open and the queued bytes
    still delivered.  (uringloop raised BufferError.)"""
    transport, proto, wpipe, r = await write_pipe()
    try:
        transport.write(b"x" * 1_000_000)
        assert transport.get_write_buffer_size() > 0
        with pytest.raises(TypeError, match="^can't concat memoryview to bytearray$"):
            transport.write(memoryview(b"abcdefgh")[::2])
        assert not transport.is_closing()
        transport.write(b"end")
        got = bytearray()
        loop = asyncio.get_running_loop()
        while len(got) < 1_000_003:
            chunk = await loop.run_in_executor(None, os.read, r, 1 << 20)
            assert chunk
            got += chunk
        assert got == b"x" * 1_000_000 + b"end"
    finally:
        transport.close()
        os.close(r)
        await asyncio.sleep(0)


@pytest.mark.asyncio
async def test_set_protocol_on_pipes():
    loop = asyncio.get_running_loop()
    transport, proto, rpipe, w = await read_pipe()
    other = Reader()
    transport.set_protocol(other)
    assert transport.get_protocol() is other
    os.write(w, b"redirected")
    await until(lambda: other.data == b"redirected")
    assert proto.data == b""
    os.close(w)
    await asyncio.wait_for(other.lost, 5)


def test_unclosed_pipe_transport_warns_and_closes_pipe(new_loop):
    loop = new_loop()
    r, w = os.pipe()
    rpipe = os.fdopen(r, "rb", 0)

    async def connect():
        return await loop.connect_read_pipe(asyncio.Protocol, rpipe)

    transport, _ = loop.run_until_complete(connect())
    loop.close()
    with pytest.warns(ResourceWarning):
        del transport
        gc.collect()
    assert rpipe.closed
    os.close(w)


@pytest.mark.asyncio
async def test_a_pause_one_callback_after_data_received_leaves_the_rest_in_the_pipe():
    """pause_reading() made one callback after data_received() -- where a subprocess's
    StreamReader makes it, pipe_data_received() being one pass later -- finds no read in the
    kernel: what the writer sent meanwhile stays in the pipe, as with the stock transport (a
    read already armed took it, and a child writing to a paused reader could write a whole
    buffer more)."""
    loop = asyncio.get_running_loop()
    r, w = os.pipe()
    rpipe = os.fdopen(r, "rb", 0)
    received = []

    class Pauser(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            received.append(data)
            if len(received) == 1:
                os.write(w, b"second")          # comes while this callback runs
                loop.call_soon(self.transport.pause_reading)

    transport, _ = await loop.connect_read_pipe(Pauser, rpipe)
    try:
        os.write(w, b"first")
        await until(lambda: received)
        for _ in range(5):
            await asyncio.sleep(0.01)
        assert received == [b"first"]
        waiting = fcntl.ioctl(r, termios.FIONREAD, struct.pack("i", 0))
        assert struct.unpack("i", waiting)[0] == len(b"second")     # still in the pipe
        transport.resume_reading()
        await until(lambda: len(received) == 2)
        assert received == [b"first", b"second"]
    finally:
        transport.close()
        os.close(w)
        await asyncio.sleep(0)


def pipe_transports_left_open_at_loop_close(new_loop):
    """A read and a write pipe transport, on a loop closed under them: (read transport, write
    transport, read pipe file, write pipe file)."""
    loop = new_loop()
    rfd, wfd = os.pipe()
    rpipe, wpipe = os.fdopen(rfd, "rb", 0), os.fdopen(wfd, "wb", 0)

    async def connect():
        r, _ = await loop.connect_read_pipe(asyncio.Protocol, rpipe)
        w, _ = await loop.connect_write_pipe(asyncio.Protocol, wpipe)
        return r, w

    r, w = loop.run_until_complete(connect())
    loop.close()
    return r, w, rpipe, wpipe


def test_unclosed_pipe_transports_after_loop_close_are_released_by_reference_counting(new_loop):
    """Pipe transports left open when the loop closes are released the moment their user lets
    go of them, as the stock loop's are -- not at a later pass of the cyclic collector -- each
    with its one 'unclosed transport' warning (collected in a cycle, the pipe's file object
    under it warned as well)."""
    r, w, rpipe, wpipe = pipe_transports_left_open_at_loop_close(new_loop)
    rfd, wfd = rpipe.fileno(), wpipe.fileno()
    del rpipe, wpipe
    gc.disable()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            del r
            with pytest.raises(OSError):
                os.fstat(rfd)
            del w
            with pytest.raises(OSError):
                os.fstat(wfd)
    finally:
        gc.enable()
    assert [str(w.message).split(" <")[0] for w in caught] == ["unclosed transport"] * 2


def test_closing_a_write_pipe_with_bytes_unwritten_after_the_loop_closed(new_loop):
    """close() of a write pipe whose bytes the reader never took, after loop.close(): the
    stock transport waits for its buffer to drain and schedules nothing, so nothing is raised
    -- not from close(), nor from a subprocess transport's finalizer that calls it.
    (uringloop raised "Event loop is closed".)"""
    loop = new_loop()
    r, w = os.pipe()
    wpipe = os.fdopen(w, "wb", 0)

    async def connect_and_write():
        transport, _ = await loop.connect_write_pipe(asyncio.Protocol, wpipe)
        transport.write(b"x" * 1_000_000)
        await asyncio.sleep(0.01)
        return transport

    transport = loop.run_until_complete(connect_and_write())
    assert transport.get_write_buffer_size() > 0
    loop.close()
    transport.close()
    assert transport.is_closing()
    with pytest.warns(ResourceWarning):
        del transport
        gc.collect()
    assert wpipe.closed
    os.close(r)


def test_repr_of_pipe_transports_left_open_when_the_loop_closes(new_loop):
    """A loop closed under open pipe transports: their repr still works and says 'open' (as the
    stock transports' do)."""
    r, w, rpipe, wpipe = pipe_transports_left_open_at_loop_close(new_loop)
    assert 'open' in repr(r) and 'open' in repr(w)
    # Both loops warn about transports never closed; that is not what this test is about.
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', ResourceWarning)
        del r, w
        gc.collect()
    rpipe.close()
    wpipe.close()


@pytest.mark.asyncio
async def test_repr_of_pipe_transports_says_what_the_stock_one_says():
    """The stock words: 'polling' while reading (or while bytes wait to be written), 'idle'
    once paused or with nothing to write, the write buffer's size, and 'closed' at both ends
    once closed.  (uringloop said 'reading' -- until the cancel of a paused pipe's read had
    completed -- and 'writing', and 'closed' once.)"""
    import re

    def words(transport):
        return re.sub(r"fd=\d+", "fd=N", repr(transport)).strip("<>").split()[1:]

    rtransport, _, rpipe, w = await read_pipe()
    assert words(rtransport) == ["fd=N", "polling"]
    rtransport.pause_reading()
    assert words(rtransport) == ["fd=N", "idle"]
    rtransport.resume_reading()
    assert words(rtransport) == ["fd=N", "polling"]
    rtransport.close()
    assert words(rtransport)[0] == "closing"
    await asyncio.sleep(0.01)
    assert words(rtransport) == ["closed", "fd=N", "closed"]
    os.close(w)

    wtransport, _, wpipe, r = await write_pipe()
    try:
        assert words(wtransport) == ["fd=N", "idle", "bufsize=0"]
        wtransport.write(b"x" * 1_000_000)
        size = wtransport.get_write_buffer_size()
        assert size > 0 and words(wtransport) == ["fd=N", "polling", f"bufsize={size}"]
    finally:
        wtransport.abort()
        await asyncio.sleep(0.01)
        os.close(r)
    assert words(wtransport) == ["closed", "fd=N", "closed"]


@pytest.mark.asyncio
async def test_connect_read_pipe_returns_before_the_first_data():
    # As with the stock loop, the caller of connect_read_pipe() resumes before the first
    # data_received(): pausing at once holds back what was already in the pipe.
    loop = asyncio.get_running_loop()
    r, w = os.pipe()
    os.write(w, b"early")
    transport, reader = await loop.connect_read_pipe(Reader, os.fdopen(r, "rb", 0))
    try:
        transport.pause_reading()
        await asyncio.sleep(0.05)
        assert reader.data == b""
        transport.resume_reading()
    finally:
        os.close(w)
        await asyncio.wait_for(reader.lost, 10)
    assert reader.data == b"early" and reader.events == ["made", "data", "eof", "lost"]


_where = __import__("contextvars").ContextVar("where", default="loop")


@pytest.mark.asyncio
async def test_pipe_protocol_callbacks_run_in_the_context_the_transport_was_made_in():
    """A read pipe's data_received(), eof_received() and connection_lost(), and a write pipe's
    connection_lost(), run in the context current when connect_*_pipe() was awaited, as the
    stock loop's reader handle runs them.  (uringloop called them from completions in the
    loop's bare context: connection_made alone saw the caller's values.)"""
    loop = asyncio.get_running_loop()
    _where.set("caller")
    seen = {}
    lost = loop.create_future()

    class Reading(asyncio.Protocol):
        def data_received(self, data):
            seen.setdefault("data_received", _where.get())

        def eof_received(self):
            seen["eof_received"] = _where.get()

        def connection_lost(self, exc):
            seen["read connection_lost"] = _where.get()
            lost.set_result(None)

    r, w = os.pipe()
    transport, _ = await loop.connect_read_pipe(Reading, os.fdopen(r, "rb", 0))
    os.write(w, b"x")
    os.close(w)
    await asyncio.wait_for(lost, 10)

    write_lost = loop.create_future()

    class Writing(asyncio.Protocol):
        def connection_lost(self, exc):
            seen["write connection_lost"] = _where.get()
            write_lost.set_result(None)

    r, w = os.pipe()
    transport, _ = await loop.connect_write_pipe(Writing, os.fdopen(w, "wb", 0))
    # An asyncio.Transport, as the stock write pipe transport is: no reading to pause.
    with pytest.raises(NotImplementedError):
        transport.pause_reading()
    os.close(r)                     # the reading end goes: the transport learns it and closes
    await asyncio.wait_for(write_lost, 10)
    assert seen == {"data_received": "caller", "eof_received": "caller",
                    "read connection_lost": "caller", "write connection_lost": "caller"}


def test_a_read_pipe_goes_on_reading_after_data_received_raised_keyboardinterrupt(new_loop):
    """KeyboardInterrupt out of data_received() stops the loop's run; run again, the transport
    goes on reading, as the stock one does (its reader stays registered).  uringloop had not
    armed the next read: the pipe stayed silent while is_reading() said True."""
    loop = new_loop()

    class Proto(asyncio.Protocol):
        def __init__(self):
            self.chunks = []

        def data_received(self, data):
            self.chunks.append(data)
            if len(self.chunks) == 1:
                raise KeyboardInterrupt

    r, w = os.pipe()
    try:
        transport, proto = loop.run_until_complete(
            loop.connect_read_pipe(Proto, os.fdopen(r, "rb", 0)))
        os.write(w, b"first")
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(asyncio.sleep(1))
        os.write(w, b"second")
        loop.run_until_complete(asyncio.sleep(0.1))
        assert proto.chunks == [b"first", b"second"]
        transport.close()
        loop.run_until_complete(asyncio.sleep(0.01))
    finally:
        os.close(w)
