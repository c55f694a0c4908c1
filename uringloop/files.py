"""Completion-based file I/O on the io_uring ring: reads and writes of regular files at offsets.

Neither the stock asyncio loop nor uvloop can do file I/O without a thread pool; uringloop submits
it to the kernel like any socket operation::

    import uringloop
    from uringloop import files

    async def main():
        async with await files.open("data.bin", "wb") as f:
            await f.write(b"hello", 0)                 # IORING_OP_WRITE at offset 0
        async with files.open("data.bin", "rb") as f:  # `await` is optional with `async with`
            print(await f.read(5, 0))                  # IORING_OP_READ at offset 0 -> b'hello'

    uringloop.run(main())

The model is positional, like os.pread/os.pwrite: every request names its own offset, so any
number of them may be in flight at once (see examples/filecopy.py, which keeps several reads and
writes in flight).  There is no file position and no text mode.

Guarantees, the same as for loop.sock_* on uringloop:

* A buffer given to ``readinto`` or ``write`` is lent to the kernel from submission until the
  request's final completion: it is pinned (a bytearray cannot be resized meanwhile).  Do not
  read or modify the buffer until the awaitable completes -- which, when it is cancelled, is when
  the kernel reports the request finished: cancel() asks the kernel to stop (ASYNC_CANCEL) and
  returns True, and the awaitable becomes cancelled at that final completion, so a cancelled
  task (or wait_for()'s TimeoutError) resumes with the buffer back in its hands.  (A read of a
  regular file that has to wait for the disk may run to its end all the same: the kernel does
  not stop it part of the way.)  A cancelled write may have written some or all of its data.
* ``write`` writes every byte (short writes continue inside the completion handler); ``read`` and
  ``readinto`` return fewer bytes than asked only at end of file.  (Regular files and block
  devices are what this is for; on a FIFO or a character device the offset is ignored and a
  read returns what one read(2) returns.)
* ``close`` waits for the file's requests still in flight, so nothing written is lost by closing.
  (A read of a FIFO or a character device, which may wait for a writer forever, is stopped
  instead: it raises the ValueError of a closed file.)
* Errors are the builtin open()'s: FileNotFoundError, IsADirectoryError (also for reading a
  directory), PermissionError, FileExistsError (mode 'x') ... with ``filename`` set; a request on a
  closed file raises ValueError, a write on a file opened for reading io.UnsupportedOperation.

Only a running uringloop loop can do this: on any other loop (or with no running loop) ``open``
raises RuntimeError.
"""

from __future__ import annotations

import asyncio
import os

from uringloop._files import File, FileFuture, open_file
from uringloop.loop import Loop

__all__ = ["open", "File", "FileFuture"]

# mode letter -> open(2) flags, as the builtin open() maps them
_BASE_FLAGS = {
    "r": os.O_RDONLY,
    "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "x": os.O_WRONLY | os.O_CREAT | os.O_EXCL,
    "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
}

# O_TMPFILE includes O_DIRECTORY; the kernel rejects it together with O_CREAT (EINVAL).
_O_TMPFILE = getattr(os, "O_TMPFILE", 0)


def _parse_mode(mode: str) -> tuple[int, bool, bool]:
    if not isinstance(mode, str):
        raise TypeError(f"open() argument 'mode' must be str, not {type(mode).__name__}")
    kinds = [c for c in mode if c in "rwxa"]
    if (len(kinds) != 1 or any(c not in "rwxab+" for c in mode)
            or len(set(mode)) != len(mode)):
        if "t" in mode and len(kinds) == 1:
            raise ValueError("uringloop.files opens files in binary mode only (no 't')")
        raise ValueError(f"invalid mode: {mode!r}")
    kind = kinds[0]
    flags = _BASE_FLAGS[kind]
    readable, writable = kind == "r", kind != "r"
    if "+" in mode:
        flags = (flags & ~(os.O_RDONLY | os.O_WRONLY)) | os.O_RDWR
        readable = writable = True
    return flags, readable, writable


class _Opener:
    """What files.open() returns: await it for the File, or use it with `async with` directly."""

    __slots__ = ("_fut", "_file")

    def __init__(self, fut):
        self._fut = fut
        self._file = None

    def __await__(self):
        return self._fut.__await__()

    async def __aenter__(self) -> File:
        self._file = await self._fut
        return self._file

    async def __aexit__(self, *exc_info) -> None:
        await self._file.close()


def open(path, mode: str = "rb", *, perms: int = 0o666, flags: int = 0) -> _Opener:
    """Open `path` for completion-based I/O on the running uringloop loop.

    mode:  'r' (read), 'w' (truncate or create), 'x' (create, FileExistsError if it exists),
           'a' (append: writes go to the end of the file whatever their offset), each with an
           optional '+' (read and write) and an optional 'b'; binary only.
    perms: permission bits of a file that is created (before the umask), as for os.open.
    flags: extra os.O_* flags OR'ed in (O_DIRECT, O_NOATIME, O_DSYNC, ...).  With os.O_TMPFILE
           `path` names a directory and the file is created unnamed in it (mode 'w' or 'w+';
           O_CREAT and O_TRUNC are then left out, as the kernel requires).  O_DIRECT needs
           block-aligned memory, offsets and sizes: use readinto() and write() with an aligned
           buffer (an mmap.mmap, say) -- read() reads into a new bytes object, which is not
           aligned, and the kernel refuses it (EINVAL).  os.O_NONBLOCK changes nothing: a
           read of an empty FIFO waits for data all the same (the ring waits for it, instead
           of the read failing with EAGAIN).

    A FIFO opened for reading only ('r') is open at once, without waiting for a writer as the
    builtin open() does (the kernel tries the open without blocking first); its first read then
    waits for one.  For writing, the open waits for a reader, as the builtin open() does.

    Returns an awaitable that resolves to a File once the kernel has opened the file (openat on
    the ring); ``async with files.open(...) as f`` closes it at the end of the block.  Raises
    RuntimeError if the running loop is not a uringloop loop.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError("uringloop.files.open() needs a running uringloop event loop "
                           "(call it from a coroutine run by uringloop.run)") from None
    if not isinstance(loop, Loop):
        raise RuntimeError(f"uringloop.files.open() needs a running uringloop event loop, not "
                           f"{type(loop).__module__}.{type(loop).__name__}: only uringloop "
                           f"submits file I/O to io_uring")
    open_flags, readable, writable = _parse_mode(mode)
    if flags & _O_TMPFILE == _O_TMPFILE and _O_TMPFILE:
        if mode.replace("b", "") not in ("w", "w+"):
            raise ValueError("os.O_TMPFILE needs mode 'w' or 'w+'")
        open_flags &= ~(os.O_CREAT | os.O_TRUNC)
    name = path
    fspath = os.fspath(path)
    encoded = os.fsencode(fspath)
    return _Opener(open_file(loop, name, encoded, open_flags | flags, perms, mode, readable,
                             writable))
