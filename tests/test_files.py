"""uringloop.files: completion-based reads and writes of regular files at offsets.

These tests run on uringloop only: the stock loop (and uvloop) have no file I/O to compare with,
so instead of the usual [uringloop]/[asyncio] pair each test selects the uringloop factory, and
one test checks that the stock loop is refused with a clear error.
"""

import array
import asyncio
import errno
import gc
import io
import os
import pickle
import random
import subprocess
import sys
import textwrap

import pytest

import uringloop
from uringloop import files

from helpers import PACKAGE_PARENT
from test_examples_helpers import drop_dac_capabilities, example_env

uring_only = pytest.mark.asyncio(loop_factories=["uringloop"])


@uring_only
async def test_write_then_read_at_offsets(tmp_path):
    path = tmp_path / "data"
    async with await files.open(path, "wb") as f:
        assert await f.write(b"world", 6) == 5
        assert await f.write(b"hello ", 0) == 6
        assert f.name == path and f.mode == "wb" and f.writable() and not f.readable()
    assert path.read_bytes() == b"hello world"
    async with files.open(path, "rb") as f:
        assert await f.read(5, 0) == b"hello"
        assert await f.read(5, 6) == b"world"
        assert await f.read(-1, 3) == b"lo world"
        assert f.stat().st_size == 11


@uring_only
async def test_reads_are_short_only_at_end_of_file(tmp_path):
    path = tmp_path / "data"
    payload = os.urandom(100_000)
    path.write_bytes(payload)
    async with files.open(path, "rb") as f:
        assert await f.read(1000, 99_500) == payload[99_500:]
        assert await f.read(10, 100_000) == b""
        assert await f.read(10, 10**9) == b""
        assert await f.read(0, 0) == b""
        buf = bytearray(4096)
        assert await f.readinto(buf, 100_000 - 96) == 96
        assert buf[:96] == payload[-96:]
        assert await f.readinto(buf, 100_000) == 0


@uring_only
async def test_readinto_accepts_any_writable_buffer(tmp_path):
    path = tmp_path / "data"
    payload = bytes(range(256)) * 64
    path.write_bytes(payload)
    async with files.open(path, "rb") as f:
        ba = bytearray(100)
        assert await f.readinto(ba, 0) == 100 and ba == payload[:100]
        big = bytearray(1000)
        assert await f.readinto(memoryview(big)[500:600], 7) == 100
        assert big[500:600] == payload[7:107] and big[:500] == bytes(500)
        ints = array.array("i", [0] * 16)
        assert await f.readinto(ints, 256) == 64 and ints.tobytes() == payload[256:320]
        with pytest.raises(TypeError):
            f.readinto(b"read-only bytes", 0)
        with pytest.raises(TypeError):
            f.readinto("text", 0)


@uring_only
async def test_many_requests_in_flight_at_their_own_offsets(tmp_path):
    """Writes submitted together are all in the kernel at once (nothing serializes them), land
    at their own offsets whatever order they complete in, and concurrent reads see them."""
    loop = asyncio.get_running_loop()
    block = 64 * 1024
    blocks = [os.urandom(block) for _ in range(64)]
    order = list(range(64))
    random.Random(6).shuffle(order)
    path = tmp_path / "data"
    async with files.open(path, "w+b") as f:
        before = loop.statistics()["inflight"]
        writes = [f.write(blocks[i], i * block) for i in order]
        assert loop.statistics()["inflight"] - before == 64
        assert await asyncio.gather(*writes) == [block] * 64
        reads = [f.read(block, i * block) for i in range(64)]
        assert await asyncio.gather(*reads) == blocks
    assert path.read_bytes() == b"".join(blocks)


@uring_only
async def test_large_transfers_roundtrip(tmp_path):
    payload = os.urandom(24 * 1024 * 1024)
    path = tmp_path / "big"
    async with files.open(path, "wb") as f:
        assert await f.write(memoryview(payload), 0) == len(payload)
        await f.fsync()
    async with files.open(path, "rb") as f:
        assert await f.read(-1, 0) == payload
        buf = bytearray(len(payload) + 10)
        assert await f.readinto(buf, 0) == len(payload)
        assert buf[: len(payload)] == payload


@uring_only
async def test_modes(tmp_path):
    path = tmp_path / "data"
    path.write_bytes(b"0123456789")
    async with files.open(path, "r+b") as f:          # read and write, no truncation
        await f.write(b"ab", 2)
        assert await f.read(-1, 0) == b"01ab456789"
    async with files.open(path, "ab") as f:           # the kernel appends whatever the offset
        await f.write(b"XY", 0)
        await f.write(b"Z", 3)
    assert path.read_bytes() == b"01ab456789XYZ"
    async with files.open(path, "wb") as f:           # truncates
        pass
    assert path.read_bytes() == b""
    with pytest.raises(FileExistsError):
        await files.open(path, "xb")
    async with files.open(tmp_path / "new", "x", perms=0o600) as f:
        await f.write(b"new", 0)
    assert (tmp_path / "new").read_bytes() == b"new"
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o600 & ~_umask()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@uring_only
async def test_invalid_arguments(tmp_path):
    path = tmp_path / "data"
    path.write_bytes(b"x")
    for mode in ("", "rw", "rr", "q", "r+w", 1):
        with pytest.raises((ValueError, TypeError)):
            files.open(path, mode)
    with pytest.raises(ValueError, match="binary"):
        files.open(path, "rt")
    with pytest.raises(ValueError, match="null"):
        files.open(str(path) + "\0x", "rb")
    with pytest.raises(TypeError):
        files.open(42, "rb")
    async with files.open(path, "r+b") as f:
        with pytest.raises(ValueError):
            f.read(1, -1)
        with pytest.raises(ValueError):
            f.write(b"x", -5)
        with pytest.raises(ValueError):
            f.read(-2, 0)
        with pytest.raises(TypeError):
            f.write("text", 0)
    async with files.open(path, "rb") as f:
        with pytest.raises(io.UnsupportedOperation):
            f.write(b"x", 0)
        with pytest.raises(TypeError):
            pickle.dumps(f)
    with pytest.raises(TypeError):
        files.File()
    async with files.open(path, "ab") as f:
        with pytest.raises(io.UnsupportedOperation):
            f.read(1, 0)
        with pytest.raises(io.UnsupportedOperation):
            f.readinto(bytearray(1), 0)


@uring_only
async def test_open_errors_are_the_builtin_ones(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(FileNotFoundError) as info:
        await files.open(missing, "rb")
    assert info.value.filename == missing
    with pytest.raises(FileNotFoundError):
        await files.open(tmp_path / "no-such-dir" / "f", "wb")
    for mode in ("rb", "wb", "r+b", "ab"):
        with pytest.raises(IsADirectoryError) as info:
            await files.open(tmp_path, mode)
        assert info.value.filename == tmp_path
    assert not missing.exists()


def run_unprivileged(args):
    """Run a command with file permissions enforced even when the tests run as root."""
    # cwd: `python -c` puts the working directory first on sys.path, where a checkout's
    # uringloop/ (sources only, under tox) would shadow the package under test.
    return subprocess.run(args, env=example_env(), preexec_fn=drop_dac_capabilities,
                          capture_output=True, text=True, timeout=60, cwd=PACKAGE_PARENT)


def test_permission_error(tmp_path):
    readonly = tmp_path / "readonly"
    readonly.write_bytes(b"keep me")
    readonly.chmod(0o444)
    locked_dir = tmp_path / "locked"
    locked_dir.mkdir()
    locked_dir.chmod(0o555)
    code = textwrap.dedent("""
        import sys, uringloop
        from uringloop import files

        async def attempt(path, mode):
            try:
                f = await files.open(path, mode)
            except OSError as exc:
                assert exc.filename == path, exc.filename
                return type(exc).__name__
            await f.close()
            return "opened"

        async def main():
            for path, mode in [(sys.argv[1], "wb"), (sys.argv[1], "r+b"),
                               (sys.argv[2] + "/new", "wb"), (sys.argv[1], "rb")]:
                print(await attempt(path, mode))

        uringloop.run(main())
    """)
    proc = run_unprivileged([sys.executable, "-c", code, str(readonly), str(locked_dir)])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["PermissionError", "PermissionError", "PermissionError",
                                   "opened"]
    assert readonly.read_bytes() == b"keep me"
    assert list(locked_dir.iterdir()) == []


@uring_only
async def test_buffer_is_pinned_until_the_final_completion(tmp_path):
    """The kernel owns a lent buffer until its request's final CQE -- also after the awaiting
    side cancelled: until then the bytearray cannot be resized (or freed)."""
    path = tmp_path / "data"
    path.write_bytes(b"x" * 4096)
    async with files.open(path, "r+b") as f:
        buf = bytearray(4096)
        fut = f.readinto(buf, 0)
        with pytest.raises(BufferError):
            buf.extend(b"more")
        assert await fut == 4096
        buf.extend(b"more")                     # released after completion

        data = bytearray(b"y" * 4096)
        fut = f.write(data, 0)
        fut.cancel()                            # the kernel may or may not have written yet
        with pytest.raises(BufferError):
            data.extend(b"more")                # still the kernel's until the final CQE
        with pytest.raises(asyncio.CancelledError):
            await fut
        for _ in range(500):
            try:
                data.extend(b"more")
                break
            except BufferError:
                await asyncio.sleep(0.001)
        else:
            pytest.fail("the buffer of a cancelled write was never released")


@uring_only
async def test_cancelling_the_awaiter_cancels_the_kernel_request(tmp_path):
    """A read on an empty FIFO stays in the kernel until cancelled; cancelling its task ends it
    there (in-flight count back to where it was), and it does not consume data written later."""
    loop = asyncio.get_running_loop()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    async with files.open(fifo, "r+b") as f:    # O_RDWR: opening does not wait for a writer
        baseline = loop.statistics()["inflight"]
        task = asyncio.ensure_future(_read(f, 10))
        await asyncio.sleep(0.05)
        assert not task.done() and loop.statistics()["inflight"] == baseline + 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(100):
            if loop.statistics()["inflight"] == baseline:
                break
            await asyncio.sleep(0.001)
        assert loop.statistics()["inflight"] == baseline
        writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.write(writer, b"abc")
        os.close(writer)
        assert await f.read(10, 0) == b"abc"    # a FIFO read returns what is there


async def _read(f, n):
    return await f.read(n, 0)


@uring_only
async def test_a_cancelled_task_resumes_only_when_the_kernel_gives_the_buffer_back(tmp_path):
    """Cancelling a readinto() asks the kernel to stop; the awaiting task gets its
    CancelledError only at the request's final completion, when the buffer is no longer the
    kernel's.  (A read of a regular file that waits for the disk may run on for a long time
    after the cancel -- over a second for 256 MiB -- and a task resumed at once reused a buffer
    the kernel was still filling.)  The future stays pending until then; cancel() returns True
    and its message reaches the CancelledError."""
    loop = asyncio.get_running_loop()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    async with files.open(fifo, "r+b") as f:
        buf = bytearray(16)
        fut = f.readinto(buf, 0)
        await asyncio.sleep(0.02)
        assert loop.statistics()["inflight"] >= 1 and not fut.done()
        assert fut.cancel("stop") is True
        assert not fut.done()                   # the kernel has not reported back yet
        with pytest.raises(BufferError):
            buf.extend(b"x")
        assert fut.cancel() is True             # asked again: nothing more to do
        with pytest.raises(asyncio.CancelledError, match="stop"):
            await fut
        assert fut.cancelled()
        buf.extend(b"x")                        # the buffer is ours again at once

        task = asyncio.ensure_future(f.readinto(bytearray(16), 0))
        await asyncio.sleep(0.02)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(task, 0.01)
        writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.write(writer, b"abc")
        os.close(writer)
        assert await f.read(10, 0) == b"abc"    # the cancelled read took none of it


def test_loop_close_closes_a_file_whose_close_request_never_reached_the_kernel(tmp_path):
    """f.close() whose close request waits in the backlog (the kernel taking no entries for
    now) when the loop closes: the descriptor is closed all the same (it stayed open while
    close() reported success)."""
    path = tmp_path / "data"
    path.write_bytes(b"x" * 10)
    loop = uringloop.new_event_loop()
    state = {}

    async def main():
        f = await files.open(path, "rb")
        state["fd"] = f.fileno()
        loop._proactor.ring._limit_sq_room(0)
        state["closing"] = f.close()
        assert loop.statistics()["backlog"] >= 1
        return f

    try:
        f = loop.run_until_complete(main())
    finally:
        loop._proactor.ring._limit_sq_room(None)
        loop.close()
    assert f.closed
    with pytest.raises(OSError):
        os.fstat(state["fd"])


def test_loop_close_cancels_an_open_waiting_for_a_fifo_reader(tmp_path):
    """An open of a FIFO for writing waits for a reader; the loop's close ends it with the
    kernel's internal -ERESTARTSYS (512), which the future reported as OSError(512, 'Unknown
    error 512').  It is cancelled instead, and nothing is left open."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    loop = uringloop.new_event_loop()
    before = set(os.listdir("/proc/self/fd"))

    async def start():
        opening = files.open(fifo, "wb")
        await asyncio.sleep(0.05)
        return opening._fut

    try:
        fut = loop.run_until_complete(start())
        assert not fut.done()
    finally:
        loop.close()
    assert fut.cancelled()
    assert set(os.listdir("/proc/self/fd")) <= before


def test_the_unclosed_file_warning_names_the_descriptor_it_closes(tmp_path):
    path = tmp_path / "data"
    path.write_bytes(b"x")
    loop = uringloop.new_event_loop()

    async def start():
        return await files.open(path, "rb")

    try:
        f = loop.run_until_complete(start())
        fd = f.fileno()
        with pytest.warns(ResourceWarning, match=f"unclosed file .*fd={fd}>"):
            del f
            gc.collect()
        with pytest.raises(OSError):
            os.fstat(fd)
    finally:
        loop.close()


@uring_only
async def test_close_waits_for_requests_in_flight(tmp_path):
    path = tmp_path / "data"
    chunks = [os.urandom(256 * 1024) for _ in range(16)]
    f = await files.open(path, "wb")
    writes = [f.write(c, i * len(c)) for i, c in enumerate(chunks)]
    closing = f.close()
    assert f.closed
    with pytest.raises(ValueError, match="closed file"):
        f.write(b"late", 0)
    await closing
    assert all(w.done() and w.result() == 256 * 1024 for w in writes)
    assert path.read_bytes() == b"".join(chunks)
    with pytest.raises(ValueError):
        f.fileno()
    await f.close()                             # idempotent


@uring_only
async def test_close_ends_a_fifo_read_waiting_for_a_writer(tmp_path):
    """A FIFO's read may wait forever: close() stops it (the read fails as a read of a closed
    file) instead of waiting with it, and the stopped read takes nothing written afterwards.
    A write in flight is still waited for."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    other = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)   # keeps the FIFO open after close()
    try:
        f = await files.open(fifo, "r+b")
        reading = asyncio.ensure_future(f.read(10, 0))
        await asyncio.sleep(0.05)
        assert not reading.done()
        await asyncio.wait_for(f.close(), 5)
        with pytest.raises(ValueError, match="closed file"):
            await reading
        os.write(other, b"later")
        assert os.read(other, 100) == b"later"
    finally:
        os.close(other)


@uring_only
async def test_fsync_and_fdatasync(tmp_path):
    async with files.open(tmp_path / "data", "wb") as f:
        await f.write(b"durable", 0)
        assert await f.fsync() is None
        assert await f.fdatasync() is None
    f = await files.open(tmp_path / "data", "rb")
    await f.close()
    with pytest.raises(ValueError, match="closed file"):
        f.fsync()


@uring_only
async def test_unnamed_temporary_file(tmp_path):
    async with files.open(tmp_path, "w+b", flags=os.O_TMPFILE, perms=0o600) as f:
        assert list(tmp_path.iterdir()) == []
        await f.write(b"anonymous", 0)
        assert await f.read(-1, 0) == b"anonymous"
        # linkat(AT_SYMLINK_FOLLOW) of the /proc link gives it a name (os.link uses linkat
        # with that flag only when given a directory fd).
        dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.link(f"/proc/self/fd/{f.fileno()}", "named", dst_dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
    assert (tmp_path / "named").read_bytes() == b"anonymous"
    with pytest.raises(ValueError):
        files.open(tmp_path, "rb", flags=os.O_TMPFILE)


@pytest.mark.asyncio(loop_factories=["asyncio"])
async def test_other_loops_are_refused_clearly(tmp_path):
    with pytest.raises(RuntimeError, match="needs a running uringloop event loop"):
        files.open(tmp_path / "x", "wb")
    assert not (tmp_path / "x").exists()


def test_no_running_loop_is_refused(tmp_path):
    with pytest.raises(RuntimeError, match="needs a running uringloop event loop"):
        files.open(tmp_path / "x", "wb")


def test_file_left_open_when_the_loop_closes(tmp_path):
    """Closing the loop drains the file's requests; the File can still be closed afterwards,
    and a File nobody closed warns like the builtin file objects."""
    path = tmp_path / "data"
    path.write_bytes(b"q" * 100)
    loop = uringloop.new_event_loop()

    async def start():
        f = await files.open(path, "rb")
        return f, f.read(100, 0)

    f, pending_read = loop.run_until_complete(start())
    loop.close()
    assert pending_read.done()
    fd = f.fileno()
    closing = f.close()
    assert closing.done() and closing.result() is None
    with pytest.raises(OSError):
        os.fstat(fd)

    loop = uringloop.new_event_loop()
    try:
        forgotten = loop.run_until_complete(start())[0]
        loop.run_until_complete(asyncio.sleep(0.01))
        fd = forgotten.fileno()
        with pytest.warns(ResourceWarning, match="unclosed file"):
            del forgotten
            gc.collect()
        with pytest.raises(OSError):
            os.fstat(fd)
    finally:
        loop.close()


def test_a_write_stopped_by_an_error_part_of_the_way_says_how_much_it_wrote(tmp_path):
    """A write of 200 bytes in a process whose files may not exceed 100 (RLIMIT_FSIZE): the
    kernel writes 100, then refuses the rest with EFBIG.  The OSError says so in
    characters_written (uringloop raised it bare: the caller could not tell that 100 bytes were
    on disk)."""
    script = textwrap.dedent(f"""
        import resource, signal, sys
        sys.path.insert(0, {str(PACKAGE_PARENT)!r})
        import uringloop
        from uringloop import files

        async def main():
            async with await files.open({str(tmp_path / "data")!r}, "wb") as f:
                try:
                    await f.write(b"x" * 200, 0)
                except OSError as exc:
                    print(exc.errno, exc.characters_written)

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100, resource.RLIM_INFINITY))
        uringloop.run(main())
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    errno_value, written = map(int, proc.stdout.split())
    assert errno_value == errno.EFBIG
    assert written == 100
    assert (tmp_path / "data").stat().st_size == 100


@uring_only
async def test_close_stops_a_write_to_a_fifo_nobody_reads(tmp_path):
    """A write of 1 MiB to a FIFO whose reader never reads waits for room forever; close()
    stops it, as it stops a FIFO's read: the write fails with the ValueError of a closed file,
    saying how much went out (the pipe's buffer-full).  uringloop's close() waited for it
    forever."""
    path = tmp_path / "fifo"
    os.mkfifo(path)
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        f = await files.open(path, "wb")
        writing = asyncio.ensure_future(f.write(b"x" * (1 << 20), 0))
        await asyncio.sleep(0.1)
        assert not writing.done()
        await asyncio.wait_for(f.close(), 5)
        with pytest.raises(ValueError) as raised:
            await writing
        written = raised.value.characters_written
        assert 0 < written < 1 << 20
        assert len(os.read(reader, 2 << 20)) == written
    finally:
        os.close(reader)
