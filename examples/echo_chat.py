"""Echo and chat server: thousands of connections on one thread, on io_uring.

    python examples/echo_chat.py                      # echo server on 127.0.0.1:8888
    python examples/echo_chat.py --mode chat          # chat room on 127.0.0.1:8888
    python examples/echo_chat.py --port 0 --loop uvloop

prints where it listens, then, when stopped with Ctrl-C, what it served:

    echo server listening on 127.0.0.1:8888 (loop: uringloop)
    served 2,000 connections (peak 2,000 at once); echoed 110,670 bytes

echo: every byte a client sends comes back to it.
chat: every line a member sends goes to every *other* member as "guest7: <line>"; a member
      learns its name from the server's first line, "* welcome guest7, 3 others here".

How it works.  The program is written on the low-level socket API (loop.sock_accept, sock_recv,
sock_sendall), which on uringloop *is* the Proactor: each call submits one request to io_uring
-- receive into a buffer the kernel fills, send; an accept waits with a poll -- and the
coroutine resumes when its completion arrives, with the bytes already in the buffer.  One coroutine per connection chains
them: receive, then (on completion) send, then receive again, like the completion handlers of the
Boost.Asio echo server in the Proactor guide.  The same file runs on uvloop and the stock loop,
where each call waits for readiness and then does the system call itself.

Memory.  A Proactor lends the kernel one buffer per outstanding receive: here 4 KiB per
connection, 8 MiB for 2,000 idle connections.  Chat fans a message out to every member; a member
whose unsent messages reach 1 MiB is dropped ("too slow") instead of being buffered for without
bound.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import socket
import sys

import runner

RECV_SIZE = 4096
MAX_LINE = 64 * 1024           # a chat line longer than this ends the connection
MAX_BACKLOG = 1024 * 1024      # unsent chat bytes after which a member is dropped as too slow


class Server:
    """Accepts connections and runs one handler coroutine per connection."""

    def __init__(self, sock: socket.socket, handler):
        self.sock = sock
        self.handler = handler
        self.connections: set = set()
        self.served = 0
        self.peak = 0

    async def accept_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(self.sock)     # accept4, or a poll on the ring
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.served += 1
            task = asyncio.ensure_future(self._run(conn))
            self.connections.add(task)
            self.peak = max(self.peak, len(self.connections))
            task.add_done_callback(self.connections.discard)

    async def _run(self, conn: socket.socket) -> None:
        try:
            await self.handler(conn)
        except (ConnectionError, OSError):
            pass                       # a peer that resets is a normal end of a connection
        finally:
            conn.close()

    async def close(self) -> None:
        for task in list(self.connections):
            task.cancel()
        await asyncio.gather(*self.connections, return_exceptions=True)


# ---------------------------------------------------------------------------------------------
# echo
# ---------------------------------------------------------------------------------------------

class Echo:
    def __init__(self):
        self.echoed = 0

    async def __call__(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        # Initiate a receive; when it completes the bytes are there: initiate the send of
        # exactly those bytes; when that completes, initiate the next receive.
        while data := await loop.sock_recv(conn, RECV_SIZE):
            await loop.sock_sendall(conn, data)
            self.echoed += len(data)

    def summary(self) -> str:
        return f"echoed {self.echoed:,} bytes"


# ---------------------------------------------------------------------------------------------
# chat
# ---------------------------------------------------------------------------------------------

class Member:
    """One chat connection: its name, and the messages not yet sent to it.

    A member's sends are serialized by its own writer coroutine (one send request in the kernel
    at a time, so messages never interleave); everything queued meanwhile goes out in the next
    send, joined into one buffer."""

    def __init__(self, name: str, conn: socket.socket, task: asyncio.Task):
        self.name = name
        self.conn = conn
        self.task = task                       # the connection's handler: cancel it to drop
        self.outbox: collections.deque = collections.deque()
        self.backlog = 0
        self.wakeup = asyncio.Event()
        self.dropped = False

    def deliver(self, message: bytes) -> bool:
        if self.backlog + len(message) > MAX_BACKLOG:
            return False
        self.outbox.append(message)
        self.backlog += len(message)
        self.wakeup.set()
        return True

    async def write_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            data = b"".join(self.outbox)
            self.outbox.clear()
            await loop.sock_sendall(self.conn, data)
            self.backlog -= len(data)


class Chat:
    def __init__(self):
        self.members: dict = {}
        self.joined = 0
        self.messages = 0
        self.deliveries = 0
        self.dropped = 0

    async def __call__(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self.joined += 1
        me = Member(f"guest{self.joined}", conn, asyncio.current_task())
        writer = asyncio.ensure_future(me.write_forever())
        me.deliver(f"* welcome {me.name}, {len(self.members)} others here\n".encode())
        self.members[conn] = me
        try:
            pending = b""
            while data := await loop.sock_recv(conn, RECV_SIZE):
                *lines, pending = (pending + data).split(b"\n")
                for line in lines:
                    self.broadcast(me, b"%s: %s\n" % (me.name.encode(), line.rstrip(b"\r")))
                if len(pending) > MAX_LINE:
                    break
        finally:
            del self.members[conn]
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)

    def broadcast(self, sender: Member, message: bytes) -> None:
        self.messages += 1
        for member in list(self.members.values()):
            if member is sender:
                continue
            if member.deliver(message):
                self.deliveries += 1
            elif not member.dropped:
                # It does not read fast enough: drop it rather than buffer without bound.
                member.dropped = True
                self.dropped += 1
                member.task.cancel()
                print(f"dropped {member.name}: too slow ({member.backlog:,} bytes unsent)",
                      flush=True)

    def summary(self) -> str:
        return (f"relayed {self.messages:,} messages in {self.deliveries:,} deliveries; "
                f"{self.dropped} members dropped as too slow")


# ---------------------------------------------------------------------------------------------

async def main(args) -> None:
    sock = socket.create_server((args.host, args.port), backlog=4096)
    sock.setblocking(False)
    host, port = sock.getsockname()[:2]
    service = Echo() if args.mode == "echo" else Chat()
    server = Server(sock, service)
    print(f"{args.mode} server listening on {host}:{port} (loop: {args.loop})", flush=True)
    accepting = asyncio.ensure_future(server.accept_forever())
    try:
        await runner.stop_requested()
    finally:
        accepting.cancel()
        await asyncio.gather(accepting, return_exceptions=True)
        await server.close()
        sock.close()
    print(f"served {server.served:,} connections (peak {server.peak:,} at once); "
          f"{service.summary()}", flush=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="echo_chat", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("echo", "chat"), default="echo")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8888, help="0 picks a free port")
    runner.add_loop_option(parser)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    runner.raise_open_file_limit()
    runner.run(main(arguments), arguments.loop)
    sys.exit(0)
