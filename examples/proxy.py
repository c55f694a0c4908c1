"""Port-forwarding proxy: async-reads from one socket, async-writes to the other, on io_uring.

    python examples/proxy.py --listen 127.0.0.1:8080 --target 127.0.0.1:9000
    python examples/proxy.py --listen 127.0.0.1:0 --target example.com:80 --loop uvloop

prints where it listens and what it forwards to, then, when stopped with Ctrl-C, the totals:

    forwarding 127.0.0.1:8080 -> 127.0.0.1:9000 (loop: uringloop)
    forwarded 1 connections: 104,857,600 bytes up, 104,857,600 bytes down

For every accepted client the proxy connects to the target and runs two pumps, one per direction.
A pump lends the kernel a buffer for a receive from one socket; when that completes, it sends
exactly those bytes to the other socket, and meanwhile receives the next chunk into its second
buffer.  So each direction has at most one receive and one send in flight:

    recv -> A        send A ---------> (completes)
               recv -> B   (overlaps)  send B ---------> ...
                                 recv -> A (only once send A has completed)

Back-pressure is built in: a pump does not start its next receive until its previous send has
completed, so when the receiving side is slow the sends take longer, the proxy stops reading,
the sender's socket buffers fill and TCP flow control pushes back on the sender.  Memory per
connection is fixed -- two buffers per direction (4 x 256 KiB by default) -- however fast one
side sends and however slowly the other reads.

End of stream is forwarded as a half-close (shutdown(SHUT_WR)); the connection is closed when
both directions have ended, or at once if either side resets it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys

import runner


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


class Proxy:
    def __init__(self, target: tuple[str, int], buffer_size: int):
        self.target = target
        self.buffer_size = buffer_size
        self.connections = 0
        self.up = 0            # client -> target bytes
        self.down = 0          # target -> client bytes
        self.tasks: set = set()

    async def accept_forever(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            client, _ = await loop.sock_accept(listener)
            client.setblocking(False)
            task = asyncio.ensure_future(self.forward(client))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def forward(self, client: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        upstream = None
        try:
            try:
                upstream = await self.connect()
            except OSError as exc:
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
                print(f"cannot connect to {self.target[0]}:{self.target[1]}: {reason}",
                      flush=True)
                return
            self.connections += 1
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pumps = [asyncio.ensure_future(self.pump(client, upstream, "up")),
                     asyncio.ensure_future(self.pump(upstream, client, "down"))]
            try:
                # Either both directions end (two half-closes), or one fails (a reset) and the
                # other is stopped: there is no one left to forward to.
                await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            client.close()
            if upstream is not None:
                upstream.close()

    async def connect(self) -> socket.socket:
        loop = asyncio.get_running_loop()
        host, port = self.target
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        error = None
        for family, type_, proto, _, address in infos:
            sock = socket.socket(family, type_, proto)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, address)
                return sock
            except OSError as exc:
                sock.close()
                error = exc
        raise error or OSError(f"no address for {host}")

    async def pump(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        loop = asyncio.get_running_loop()
        buffers = [memoryview(bytearray(self.buffer_size)) for _ in range(2)]
        sending = None                  # the send in flight, if any
        turn = 0
        try:
            while True:
                buffer = buffers[turn]
                turn ^= 1
                # The kernel fills `buffer` while the previous buffer is still being sent.
                n = await loop.sock_recv_into(src, buffer)
                if sending is not None:
                    await sending       # back-pressure: never more than one send in flight
                    sending = None
                if n == 0:
                    break
                sending = asyncio.ensure_future(loop.sock_sendall(dst, buffer[:n]))
                if direction == "up":
                    self.up += n
                else:
                    self.down += n
        finally:
            if sending is not None:
                sending.cancel()
                await asyncio.gather(sending, return_exceptions=True)
        dst.shutdown(socket.SHUT_WR)     # forward the end of stream


async def main(args) -> None:
    listener = socket.create_server(args.listen, backlog=1024)
    listener.setblocking(False)
    host, port = listener.getsockname()[:2]
    proxy = Proxy(args.target, args.buffer)
    print(f"forwarding {host}:{port} -> {args.target[0]}:{args.target[1]} (loop: {args.loop})",
          flush=True)
    accepting = asyncio.ensure_future(proxy.accept_forever(listener))
    try:
        await runner.stop_requested()
    finally:
        accepting.cancel()
        for task in list(proxy.tasks):
            task.cancel()
        await asyncio.gather(accepting, *proxy.tasks, return_exceptions=True)
        listener.close()
    print(f"forwarded {proxy.connections:,} connections: {proxy.up:,} bytes up, "
          f"{proxy.down:,} bytes down", flush=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="proxy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", type=parse_address, default=("127.0.0.1", 8080),
                        help="HOST:PORT to accept clients on (port 0 picks a free one)")
    parser.add_argument("--target", type=parse_address, required=True,
                        help="HOST:PORT to forward every connection to")
    parser.add_argument("--buffer", type=int, default=256 * 1024,
                        help="bytes per buffer; each direction has two (default 262144)")
    runner.add_loop_option(parser)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    runner.raise_open_file_limit()
    runner.run(main(arguments), arguments.loop)
    sys.exit(0)
