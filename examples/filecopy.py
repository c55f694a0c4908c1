"""An async file copier that keeps several reads and writes in flight, on io_uring.

    python examples/filecopy.py SOURCE DEST [--chunk 1M] [--depth 8] [--fsync]
    python examples/filecopy.py SOURCE DEST --compare [--cold]   # vs shutil.copyfile and cp

prints, for example:

    copied 268,435,456 bytes in 0.39 s (656 MiB/s), 1 MiB per request, up to 8 requests in flight

How it works.  `depth` workers each own one buffer.  A worker takes the next chunk of the file,
reads it into its buffer at the chunk's offset (IORING_OP_READ), writes the buffer at the same
offset of the destination (IORING_OP_WRITE), and takes the next chunk.  Every `await` is one
request submitted to the kernel and one completion coming back; while a worker waits for its
write, the others' reads and writes are in the kernel too, so up to `depth` requests overlap.
Only uringloop can do this: the stock loop and uvloop have no file I/O except through threads.

No partial destination.  The copy is written into an unnamed file (O_TMPFILE) in the
destination's directory and gets its name -- atomically replacing an existing destination --
only once every byte is written.  If anything fails, or the process is killed, there is nothing
to clean up.  (On a file system without O_TMPFILE a hidden temporary name is used instead and
removed on failure.)  As with `cp`, an existing destination must be writable, and a directory is
refused (IsADirectoryError, as shutil.copyfile does).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import secrets
import shutil
import stat
import subprocess
import sys
import time

import uringloop
from uringloop import files

MiB = 1024 * 1024


class Stats:
    copied = 0          # bytes
    peak_in_flight = 0  # most requests the kernel held at once (from the loop's statistics)


async def copy(source, dest, *, chunk: int = MiB, depth: int = 8, fsync: bool = False,
               stats: Stats | None = None) -> int:
    """Copy the file `source` to `dest`; return the number of bytes copied.

    Raises the OSError subclass the failing step gives (FileNotFoundError, IsADirectoryError,
    PermissionError, ...); `dest` is then left as it was.
    """
    stats = stats if stats is not None else Stats()
    dest = os.fspath(dest)
    async with files.open(source, "rb") as src:
        src_stat = src.stat()
        perms = _check_destination(source, src_stat, dest)
        out, temp_name = await _open_unnamed(dest, perms)
        published = False
        try:
            async with out:
                if stat.S_ISREG(src_stat.st_mode):
                    await _pump(src, out, chunk, depth, stats)
                else:
                    await _pump_stream(src, out, chunk, stats)
                if fsync:
                    await out.fsync()
                # Renaming over an existing file frees the old one, which can take a while
                # (and ext4 starts writing the new one back): in a thread, not on the loop.
                publishing = asyncio.get_running_loop().run_in_executor(
                    None, _publish, out.fileno(), temp_name, dest, perms)
                try:
                    await asyncio.shield(publishing)
                except asyncio.CancelledError:
                    # Interrupted now, the destination is still whole or untouched: let the
                    # rename that has started finish before the file is closed.
                    await asyncio.wait([publishing])
                    raise
                published = True
        finally:
            if temp_name is not None and not published:
                _unlink_quietly(temp_name)
    return stats.copied


async def _pump(src, out, chunk: int, depth: int, stats: Stats) -> None:
    """Keep up to `depth` read/write pairs in flight until a read finds the end of the file."""
    loop = asyncio.get_running_loop()
    baseline = loop.statistics()["inflight"]
    next_offset = 0
    end_seen = False

    async def worker(buffer: memoryview) -> None:
        nonlocal next_offset, end_seen
        while not end_seen:
            offset = next_offset
            next_offset += chunk
            request = src.readinto(buffer, offset)     # submitted; the kernel owns `buffer`
            stats.peak_in_flight = max(stats.peak_in_flight,
                                       loop.statistics()["inflight"] - baseline)
            n = await request                          # short only at end of file
            if n:
                await out.write(buffer[:n], offset)
                stats.copied += n
            if n < chunk:
                end_seen = True

    workers = [asyncio.ensure_future(worker(memoryview(bytearray(chunk)))) for _ in range(depth)]
    try:
        await asyncio.gather(*workers)
    except BaseException:
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        raise


async def _pump_stream(src, out, chunk: int, stats: Stats) -> None:
    """A pipe or a character device has no offsets: read it in order until it returns 0."""
    buffer = memoryview(bytearray(chunk))
    while n := await src.readinto(buffer, 0):
        await out.write(buffer[:n], stats.copied)
        stats.copied += n
    stats.peak_in_flight = max(stats.peak_in_flight, 1)


def _check_destination(source, src_stat: os.stat_result, dest: str) -> int:
    """Refuse what cp and shutil.copyfile refuse, before anything is written; return the
    permission bits the copy gets (the existing destination's, or the source's)."""
    try:
        dst_stat = os.stat(dest)
    except FileNotFoundError:
        return stat.S_IMODE(src_stat.st_mode) & 0o777
    if stat.S_ISDIR(dst_stat.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), dest)
    if (dst_stat.st_dev, dst_stat.st_ino) == (src_stat.st_dev, src_stat.st_ino):
        raise shutil.SameFileError(f"{source!r} and {dest!r} are the same file")
    # The kernel's own permission check, exactly as `cp` would meet it when opening the existing
    # destination for writing (mode bits, ACLs, read-only mounts, immutable files).  O_NONBLOCK
    # so that a FIFO without a reader does not hang here.
    os.close(os.open(dest, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC))
    return stat.S_IMODE(dst_stat.st_mode)


async def _open_unnamed(dest: str, perms: int):
    """Open the file the copy is written into: unnamed (O_TMPFILE) where the file system can,
    else under a hidden temporary name.  Returns (File, temporary name or None)."""
    directory = os.path.dirname(os.path.abspath(dest))
    try:
        try:
            return await files.open(directory, "wb", flags=os.O_TMPFILE, perms=perms), None
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
        temp_name = os.path.join(directory, f".{os.path.basename(dest)}.{secrets.token_hex(4)}")
        return await files.open(temp_name, "xb", perms=perms), temp_name
    except OSError as exc:
        # Report the destination, as `cp` does, not the directory or the temporary name.
        raise type(exc)(exc.errno, exc.strerror, dest) from None


def _publish(fd: int, temp_name, dest: str, perms: int) -> None:
    """Give the finished copy (open as `fd`) the destination's name in one step."""
    os.fchmod(fd, perms)                   # exactly these bits, whatever the umask
    directory = os.path.dirname(os.path.abspath(dest))
    if temp_name is None:
        # An O_TMPFILE file gets a name by linkat(AT_SYMLINK_FOLLOW) of /proc/self/fd/N (os.link
        # passes that flag only when given a directory fd, hence dst_dir_fd).  Straight to the
        # destination's name if it is free; otherwise to a temporary name, renamed over it.
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            link = f"/proc/self/fd/{fd}"
            try:
                os.link(link, os.path.basename(dest), dst_dir_fd=dir_fd)
                return
            except FileExistsError:
                temp_name = os.path.join(directory,
                                         f".{os.path.basename(dest)}.{secrets.token_hex(4)}")
                os.link(link, os.path.basename(temp_name), dst_dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
    try:
        os.replace(temp_name, dest)
    except BaseException:
        _unlink_quietly(temp_name)
        raise


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# ---------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------

def _size(text: str) -> int:
    units = {"K": 1024, "M": MiB, "G": 1024 * MiB}
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def _human(n: int) -> str:
    return f"{n // MiB} MiB" if n % MiB == 0 else f"{n // 1024} KiB" if n % 1024 == 0 else f"{n} B"


def _timed(func, source: str, cold: bool) -> float:
    os.sync()              # start each run with no dirty pages from the previous one
    if cold:
        # Evict the source's pages (only this file's) so that the copy reads from the device.
        fd = os.open(source, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def compare(source: str, dest: str, chunk: int, depth: int, cold: bool, rounds: int = 3) -> None:
    """Time this copier, shutil.copyfile and cp on the same file, alternating, in one run."""
    size = os.stat(source).st_size
    methods = {
        f"uringloop.files ({depth} x {_human(chunk)} in flight)":
            lambda: uringloop.run(copy(source, dest, chunk=chunk, depth=depth)),
        "shutil.copyfile": lambda: shutil.copyfile(source, dest),
        "cp": lambda: subprocess.run(["cp", source, dest], check=True),
    }
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(rounds):
        for name, method in methods.items():
            _unlink_quietly(dest)
            times[name].append(_timed(method, source, cold))
    _unlink_quietly(dest)
    cache = "source evicted from the page cache before each run" if cold else "page cache warm"
    print(f"{size:,} bytes, {cache}, no fsync; best of {rounds} runs each:")
    for name, samples in times.items():
        best = min(samples)
        print(f"  {name:<40} {best:6.3f} s  {size / MiB / best:7.0f} MiB/s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="filecopy", description="Copy a file with reads and writes overlapped on io_uring.")
    parser.add_argument("source")
    parser.add_argument("dest")
    parser.add_argument("--chunk", type=_size, default=MiB,
                        help="bytes per read/write request (default 1M)")
    parser.add_argument("--depth", type=int, default=8,
                        help="read/write pairs in flight (default 8)")
    parser.add_argument("--fsync", action="store_true",
                        help="flush the copy to the device before giving it its name")
    parser.add_argument("--compare", action="store_true",
                        help="instead of one copy, time this copier, shutil.copyfile and cp on "
                             "the same file (3 rounds each); DEST is removed afterwards")
    parser.add_argument("--cold", action="store_true",
                        help="with --compare: evict SOURCE from the page cache before each run")
    args = parser.parse_args(argv)
    if args.chunk <= 0 or args.depth <= 0:
        parser.error("--chunk and --depth must be positive")
    try:
        if args.compare:
            compare(args.source, args.dest, args.chunk, args.depth, args.cold)
            return 0
        stats = Stats()
        start = time.perf_counter()
        uringloop.run(copy(args.source, args.dest, chunk=args.chunk, depth=args.depth,
                           fsync=args.fsync, stats=stats))
        elapsed = time.perf_counter() - start
    except (OSError, shutil.Error) as exc:
        print(f"filecopy: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("filecopy: interrupted", file=sys.stderr)
        return 130
    rate = stats.copied / MiB / max(elapsed, 1e-9)
    print(f"copied {stats.copied:,} bytes in {elapsed:.2f} s ({rate:.0f} MiB/s), "
          f"{_human(args.chunk)} per request, up to {stats.peak_in_flight} requests in flight")
    return 0


if __name__ == "__main__":
    sys.exit(main())
