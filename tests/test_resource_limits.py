"""Limits of the process -- descriptors, locked memory -- met while making a loop or using it:
each case runs in a child process of its own (the limits are the child's), on uringloop and on
the stock loop where both apply."""

import os
import shlex
import shutil
import subprocess
import sys
import textwrap

import pytest

from helpers import PACKAGE_PARENT, child_env

CHILD_PRELUDE = """
import asyncio, os, resource, socket, sys
def make_loop():
    if sys.argv[1] == "uringloop":
        import uringloop
        return uringloop.new_event_loop()
    return asyncio.SelectorEventLoop()
def take_all_descriptors_but(n):
    taken = []
    while True:
        try:
            taken.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            break
    for _ in range(n):
        os.close(taken.pop())
    return taken
"""


def run_child(code, loop_name, command_prefix=()):
    env = child_env()
    argv = [sys.executable, "-c", CHILD_PRELUDE + textwrap.dedent(code), loop_name]
    if command_prefix:
        argv = [*command_prefix, " ".join(shlex.quote(arg) for arg in argv)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env,
                          cwd=PACKAGE_PARENT)     # (not a checkout's unbuilt sources)
    assert done.returncode == 0, done.stderr
    return done.stdout.split("\n")


@pytest.mark.parametrize("loop_name", ["uringloop", "asyncio"])
def test_a_loop_made_with_no_descriptor_left_fails_with_the_stock_oserror(loop_name):
    # Nothing about io_uring: the stock loop's OSError(EMFILE), not IOUringUnavailableError
    # (whose fallback would make a stock loop that fails the same way).
    lines = run_child("""
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        make_loop().close()                     # (the modules a loop needs, imported)
        taken = take_all_descriptors_but(0)
        try:
            make_loop()
        except OSError as exc:
            print(type(exc).__name__, exc.errno, exc.strerror)
        for fd in taken:
            os.close(fd)
        loop = make_loop()
        print(loop.run_until_complete(asyncio.sleep(0, "runs")))
        loop.close()
    """, loop_name)
    assert lines[:2] == ["OSError 24 Too many open files", "runs"]


@pytest.mark.parametrize("loop_name", ["uringloop", "asyncio"])
def test_sock_sendfile_with_few_descriptors_left_falls_back_when_asked(loop_name):
    # uringloop's splices need a pipe and duplicates of both descriptors, which os.sendfile()
    # does not: short of them, fallback=True reads and sends the file all the same.
    lines = run_child("""
        import hashlib, tempfile
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        loop = make_loop()
        data = os.urandom(1 << 20)
        with tempfile.TemporaryFile() as f:
            f.write(data)
            a, b = socket.socketpair()
            a.setblocking(False)
            b.setblocking(False)
            async def receive(n):
                got = bytearray()
                while len(got) < n:
                    got += await loop.sock_recv(b, 1 << 16)
                return bytes(got)
            async def main():
                await loop.sock_sendall(a, b"warm")        # (the modules it needs, imported)
                await receive(4)
                f.seek(0)
                taken = take_all_descriptors_but(2)
                try:
                    sent, got = await asyncio.gather(
                        loop.sock_sendfile(a, f, fallback=True), receive(len(data)))
                finally:
                    for fd in taken:
                        os.close(fd)
                print(sent, got == data)
            loop.run_until_complete(main())
            a.close()
            b.close()
        loop.close()
    """, loop_name)
    assert lines[0] == f"{1 << 20} True"


@pytest.mark.skipif(shutil.which("capsh") is None or os.geteuid() != 0,
                    reason="needs capsh and root to drop CAP_IPC_LOCK")
def test_a_small_locked_memory_limit_gets_a_smaller_ring_or_says_so():
    # Without CAP_IPC_LOCK the kernel charges a ring's memory to RLIMIT_MEMLOCK (before 5.12,
    # and again on recent kernels): 64 KiB, common in containers, does not hold 1024 entries -- the
    # loop makes a smaller ring and runs; with no locked memory at all the error names the
    # limit, not the memory cgroup.
    lines = run_child("""
        import uringloop
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (64 << 10, 64 << 10))
        async def echo():
            reader, writer = await asyncio.open_connection(sock=a)
            writer.write(b"ping")
            return await loop.sock_recv(b, 4)
        loop = make_loop()
        a, b = socket.socketpair()
        b.setblocking(False)
        print(loop.run_until_complete(echo()))
        loop.close()
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (0, 0))
        try:
            make_loop()
        except uringloop.IOUringUnavailableError as exc:
            print(exc.errno, "RLIMIT_MEMLOCK" in exc.cause and "ulimit -l" in exc.fix)
    """, "uringloop", command_prefix=("capsh", "--drop=cap_ipc_lock", "--", "-c"))
    assert lines[:2] == ["b'ping'", "12 True"]
