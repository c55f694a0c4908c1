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
