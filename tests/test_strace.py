"""From outside the process: the sock_* data path goes through io_uring_enter only.

A child process runs an accept/connect/echo exchange on uringloop under `strace -f`, between two
marker writes; between the markers there must be io_uring_enter calls and no readiness or direct
socket I/O system call at all (recvfrom, sendto, recvmsg, sendmsg, connect, epoll_wait, poll,
select) -- except the one accept4 and the one connect: sock_accept takes a connection with
accept4(2), at once or after a poll on the ring, and sock_connect starts the connection with
connect(2) and learns its outcome from a poll on the ring, as the stock loop does (_sockstate.pyx
says why not io_uring's accept and connect requests) -- or, to a listener on this host, from one
poll(2) with no timeout right after the connect(2) when the handshake is over already.
"""

import re
import shutil
import subprocess
import sys
import textwrap

import pytest


from helpers import PACKAGE_PARENT, child_env

pytestmark = pytest.mark.skipif(shutil.which("strace") is None,
                                reason="strace is not installed (apt-get install strace)")

CHILD = textwrap.dedent("""
    import asyncio, os, socket, uringloop

    async def main():
        loop = asyncio.get_running_loop()
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        srv.setblocking(False)
        client = socket.socket()
        client.setblocking(False)
        await asyncio.sleep(0)
        os.write(2, b"@@DATA-START@@")
        (conn, _), _ = await asyncio.gather(loop.sock_accept(srv),
                                            loop.sock_connect(client, srv.getsockname()))
        for i in range(200):
            await loop.sock_sendall(client, b"ping %d" % i)
            data = await loop.sock_recv(conn, 100)
            await loop.sock_sendall(conn, data)
            assert await loop.sock_recv(client, 100) == data
        buf = bytearray(100)
        await loop.sock_sendall(conn, b"into")
        assert await loop.sock_recv_into(client, buf) == 4
        os.write(2, b"@@DATA-END@@")
        for s in (conn, client, srv):
            s.close()

    uringloop.run(main())
""")

FORBIDDEN = ("recvfrom", "sendto", "recvmsg", "sendmsg", "accept", "connect",
             "epoll_wait", "epoll_pwait", "poll", "ppoll", "select", "pselect6")


def test_sock_data_path_is_io_uring_only(tmp_path):
    trace = tmp_path / "trace.txt"
    syscalls = ",".join(FORBIDDEN + ("accept4", "io_uring_enter", "write"))
    result = subprocess.run(
        ["strace", "-f", "-qq", "-e", f"trace={syscalls}", "-o", str(trace),
         sys.executable, "-c", CHILD],
        capture_output=True, text=True, timeout=120, env=child_env(), cwd=PACKAGE_PARENT)
    assert result.returncode == 0, result.stderr
    text = trace.read_text()
    start = text.index("@@DATA-START@@")
    end = text.index("@@DATA-END@@")
    window = text[start:end]
    calls = re.findall(r"^\d+\s+(\w+)\(", window, re.M)
    assert calls.count("io_uring_enter") >= 200, calls[:50]
    # The one poll(2) sock_connect may make, right after its connect(2) (start_connect).
    polls = [i for i, c in enumerate(calls) if c == "poll"]
    assert len(polls) <= 1 and all(calls[i - 1] == "connect" for i in polls), calls[:50]
    offending = sorted({c for c in calls if c in FORBIDDEN and c not in ("connect", "poll")})
    assert not offending, f"readiness/direct socket syscalls on the data path: {offending}"
    assert 1 <= calls.count("accept4") <= 2, calls[:50]    # EAGAIN at once, then the connection
    assert calls.count("connect") == 1, calls[:50]         # EINPROGRESS, then a poll on the ring


READER_CHILD = textwrap.dedent("""
    import asyncio, os, socket, sys, uringloop

    async def main():
        loop = asyncio.get_running_loop()
        loop._features["epoll_wait"] = sys.argv[1] == "kernel"
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        done = loop.create_future()
        got = []

        def on_a():
            got.append(a.recv(10))
            if len(got) == 200:
                done.set_result(None)
            else:
                a.send(b"x")

        def on_b():
            b.send(b.recv(10))

        loop.add_reader(a, on_a)
        loop.add_reader(b, on_b)
        await asyncio.sleep(0)
        os.write(2, b"@@DATA-START@@")
        a.send(b"x")
        await done
        os.write(2, b"@@DATA-END@@")
        assert got == [b"x"] * 200, got
        loop.remove_reader(a)
        loop.remove_reader(b)
        a.close()
        b.close()

    uringloop.run(main())
""")


@pytest.mark.parametrize("collects", ["kernel", "epoll_wait"])
def test_add_reader_events_come_in_the_ring_completion(tmp_path, collects):
    """Where the kernel has IORING_OP_EPOLL_WAIT (6.15), the readiness registry's events come in
    its completion: 400 reader calls between the markers and not one epoll_wait(2).  The
    fallback (a poll request on the epoll instance) reads them with one epoll_wait(2) per
    completion, as the registry did on every kernel before."""
    import uringloop
    if collects == "kernel" and not uringloop.probe().uses["epoll_wait"]:
        pytest.skip("the kernel has no IORING_OP_EPOLL_WAIT (Linux 6.15)")
    trace = tmp_path / "trace.txt"
    result = subprocess.run(
        ["strace", "-f", "-qq", "-e", "trace=epoll_wait,epoll_pwait,epoll_pwait2,io_uring_enter,"
         "write", "-o", str(trace), sys.executable, "-c", READER_CHILD, collects],
        capture_output=True, text=True, timeout=120, env=child_env(), cwd=PACKAGE_PARENT)
    assert result.returncode == 0, result.stderr
    text = trace.read_text()
    window = text[text.index("@@DATA-START@@"):text.index("@@DATA-END@@")]
    calls = re.findall(r"^\d+\s+(\w+)\(", window, re.M)
    waits = sum(calls.count(name) for name in ("epoll_wait", "epoll_pwait", "epoll_pwait2"))
    assert calls.count("io_uring_enter") >= 200, calls[:50]
    if collects == "kernel":
        assert waits == 0, calls[:50]
    else:
        assert waits >= 200, calls[:50]
