"""Benchmark servers: one process serves one workload on one event loop, pinned to one CPU.

    python benchmarks/servers.py --loop uvloop --style protocol --cpu 0

Styles: `sock` (loop.sock_accept / sock_recv_into / sock_sendall), `streams`
(asyncio.start_server), `protocol` (asyncio.Protocol), `bufferedprotocol`
(asyncio.BufferedProtocol), `tls` (the streams server with ssl=, over whatever TLS layer the
loop has; the certificate in benchmarks/tls/), `twowrites` (the Protocol server answering each
message in two writes) -- all TCP echo servers -- and two HTTP hello worlds: `http` (aiohttp)
and `asgi` (uvicorn's httptools protocol and an ASGI app).

Once listening, the process prints one JSON line on stdout:
    {"ready": true, "port": 40123, "loop_type": "uvloop.Loop", "pid": 1234}
with loop_type taken from the running loop inside the server, so the harness can check that the
loop measured is the loop named.  If the loop cannot be made or the style cannot be served on it
(for example a loop without create_server yet), it prints {"ready": false, "error": "..."} and
exits with status 3: the harness reports that style on that loop as "n/a" with the error.

The process ends by itself: when its stdin reaches EOF (the harness closed it, or died) or after
--max-seconds, whichever comes first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import select
import socket
import ssl
import sys
import threading
import traceback
from pathlib import Path

import loops

STYLES = ("sock", "streams", "protocol", "bufferedprotocol", "tls")
HTTP_STYLES = ("http", "asgi")          # served HTTP/1.1, loaded with wrk
ALL_STYLES = STYLES + ("twowrites",) + HTTP_STYLES
# A self-signed ECDSA P-256 certificate for 127.0.0.1 / localhost, made for these loopback runs
# only (valid until 2126); the load generator does not verify it.
TLS_DIR = Path(__file__).resolve().parent / "tls"
BACKLOG = 2048
# The most one receive asks for.  The sock_* and BufferedProtocol servers preallocate a buffer of
# this size per connection (1000 connections: 64 MB per server process).
RECV_SIZE = 64 * 1024


def _nodelay(sock) -> None:
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


# ---- sock_* ---------------------------------------------------------------------------------

async def serve_sock(host: str, port: int):
    loop = asyncio.get_running_loop()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(BACKLOG)
    listener.setblocking(False)
    handlers: set = set()

    async def echo(conn: socket.socket) -> None:
        buf = bytearray(RECV_SIZE)
        view = memoryview(buf)
        try:
            while True:
                n = await loop.sock_recv_into(conn, buf)
                if not n:
                    break
                await loop.sock_sendall(conn, view[:n])
        except OSError:
            pass                  # the client went away mid-echo: nothing to report
        finally:
            conn.close()

    async def accept_forever() -> None:
        while True:
            conn, _ = await loop.sock_accept(listener)
            _nodelay(conn)
            task = loop.create_task(echo(conn))
            handlers.add(task)
            task.add_done_callback(handlers.discard)

    acceptor = loop.create_task(accept_forever())
    return listener.getsockname()[1], (listener, acceptor, handlers)


# ---- streams --------------------------------------------------------------------------------

async def serve_streams(host: str, port: int, ssl_context=None):
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _nodelay(writer.get_extra_info("socket"))
        try:
            while True:
                data = await reader.read(RECV_SIZE)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(echo, host, port, backlog=BACKLOG, ssl=ssl_context)
    return server.sockets[0].getsockname()[1], server


async def serve_tls(host: str, port: int):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(TLS_DIR / "cert.pem", TLS_DIR / "key.pem")
    return await serve_streams(host, port, ssl_context=context)


# ---- Protocol and BufferedProtocol ----------------------------------------------------------

class EchoProtocol(asyncio.Protocol):
    transport = None

    def connection_made(self, transport):
        self.transport = transport
        _nodelay(transport.get_extra_info("socket"))

    def data_received(self, data):
        self.transport.write(data)

    def connection_lost(self, exc):
        self.transport = None


class EchoInTwoWrites(EchoProtocol):
    """The echo written back in two halves, as a protocol writes a header and then its
    payload: whether the loop sends the second half with the first."""

    def data_received(self, data):
        half = len(data) // 2
        self.transport.write(data[:half])
        self.transport.write(data[half:])


async def serve_twowrites(host: str, port: int):
    return await serve_protocol(host, port, EchoInTwoWrites)


class EchoBufferedProtocol(asyncio.BufferedProtocol):
    """The kernel (or the loop) fills our own buffer; the echo writes a copy of what arrived,
    because a transport may keep a reference to written data until it is sent (the stock loop
    does since 3.12) and the buffer is reused for the next receive."""

    transport = None

    def connection_made(self, transport):
        self.transport = transport
        self.buffer = bytearray(RECV_SIZE)
        self.view = memoryview(self.buffer)
        _nodelay(transport.get_extra_info("socket"))

    def get_buffer(self, sizehint):
        return self.view

    def buffer_updated(self, nbytes):
        self.transport.write(self.buffer[:nbytes])

    def connection_lost(self, exc):
        self.transport = None


async def serve_protocol(host: str, port: int, factory=EchoProtocol):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, host, port, backlog=BACKLOG)
    return server.sockets[0].getsockname()[1], server


async def serve_bufferedprotocol(host: str, port: int):
    return await serve_protocol(host, port, EchoBufferedProtocol)


# ---- aiohttp hello world --------------------------------------------------------------------

async def serve_http(host: str, port: int):
    from aiohttp import web

    async def hello(request):
        return web.Response(text="Hello, World!")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=BACKLOG)
    await site.start()
    return runner.addresses[0][1], runner


# ---- uvicorn hello world -----------------------------------------------------------------------

async def serve_asgi(host: str, port: int):
    """What `uvicorn app:app --http httptools --loop ...` runs -- uvicorn's Server with its
    httptools protocol, a task per request, its 0.1 s tick -- on the loop already running
    here, serving a listening socket made here (uvicorn takes sockets= as from gunicorn)."""
    import httptools  # noqa: F401 - without it uvicorn's h11 protocol would be measured instead
    import uvicorn

    body = b"Hello, World!"
    start = {"type": "http.response.start", "status": 200,
             "headers": [(b"content-type", b"text/plain"),
                         (b"content-length", str(len(body)).encode())]}

    async def hello(scope, receive, send):
        if scope["type"] == "http":
            await send(start)
            await send({"type": "http.response.body", "body": body})

    config = uvicorn.Config(hello, http="httptools", lifespan="off", access_log=False,
                            log_level="warning", backlog=BACKLOG)
    server = uvicorn.Server(config)
    # proto given, as getaddrinfo gives it to the sockets uvicorn's own create_server() makes:
    # the stock loop sets TCP_NODELAY only on sockets whose proto says TCP, and
    # socket(AF_INET, SOCK_STREAM) says 0 -- each reply's second write would then wait out the
    # client's delayed ACK (~40 ms).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    serving = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    while not server.started:
        if serving.done():
            serving.result()                # its startup failed: the reason goes to the harness
            raise RuntimeError("uvicorn's server ended before it started")
        await asyncio.sleep(0.01)
    return sock.getsockname()[1], (server, serving)


SERVE = {
    "sock": serve_sock,
    "streams": serve_streams,
    "protocol": serve_protocol,
    "bufferedprotocol": serve_bufferedprotocol,
    "tls": serve_tls,
    "http": serve_http,
    "asgi": serve_asgi,
    "twowrites": serve_twowrites,
}


# ---- process plumbing -----------------------------------------------------------------------

def _emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _watch_parent(max_seconds: float) -> None:
    """End the process when stdin closes (the harness is done with us, or gone) or after
    max_seconds: a benchmark server never outlives its run."""
    def watch():
        try:
            select.select([sys.stdin], [], [], max_seconds)
        finally:
            os._exit(0)
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loop", required=True, choices=loops.LOOP_NAMES)
    parser.add_argument("--style", required=True, choices=ALL_STYLES)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cpu", type=int, default=None, help="pin this process to one CPU")
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    args = parser.parse_args(argv)

    _watch_parent(args.max_seconds)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    _raise_fd_limit()

    try:
        loop = loops.make_loop(args.loop)
    except Exception as exc:            # noqa: BLE001 - reported to the harness as n/a
        _emit({"ready": False, "error": f"cannot create the loop: {type(exc).__name__}: {exc}"})
        return 3
    asyncio.set_event_loop(loop)

    def report_handler_errors(loop, context):
        # Unexpected errors inside the server: visible in the server's log, and the client
        # fails the run (a broken echo never looks like a slow one).
        exc = context.get("exception")
        print(f"server error: {context.get('message')}: {exc!r}", file=sys.stderr, flush=True)

    loop.set_exception_handler(report_handler_errors)

    async def start():
        port, keep = await SERVE[args.style](args.host, args.port)
        return port, keep, loops.type_name(asyncio.get_running_loop())

    try:
        port, keep, loop_type = loop.run_until_complete(start())
    except Exception as exc:            # noqa: BLE001 - reported to the harness as n/a
        detail = traceback.format_exception_only(type(exc), exc)[-1].strip()
        _emit({"ready": False, "error": detail, "loop_type": loops.type_name(loop)})
        return 3
    _emit({"ready": True, "port": port, "loop_type": loop_type, "pid": os.getpid(),
           "style": args.style, "loop": args.loop, "cpus": sorted(os.sched_getaffinity(0))})
    try:
        loop.run_forever()
    finally:
        del keep
    return 0


if __name__ == "__main__":
    sys.exit(main())
