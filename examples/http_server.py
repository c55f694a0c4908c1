"""A small HTTP/1.1 server that parses requests in completion handlers, on io_uring.

    python examples/http_server.py                    # http://127.0.0.1:8000/
    python examples/http_server.py --port 0 --loop uvloop

prints where it serves, then, when stopped with Ctrl-C, what it served:

    serving HTTP on http://127.0.0.1:8000/ (loop: uringloop)
    served 20,012 requests on 103 connections; 3 rejected as bad requests

Routes:  GET|HEAD /       -> 200 "Hello, world!"
         POST /echo       -> 200 with the request's body (and Content-Type)
         anything else    -> 404, or 405 for a known path with another method

How it works.  Each connection is a chain of completions: the loop lends the kernel a buffer for
a receive (one IORING_OP_RECV on uringloop); when it completes, `HttpConnection.on_read_complete`
-- the completion handler -- appends the bytes to what it already had and parses every request
that is now complete, producing their responses in order; the responses go out in one send,
and when that send completes the next receive is initiated.  Nothing in the handler blocks or
waits: a request whose head or body is still partial simply stays in the buffer until the next
completion brings the rest.  That gives, with no extra code:

  * keep-alive: HTTP/1.1 connections stay open (HTTP/1.0 ones when asked), until
    "Connection: close", an error, or --idle-timeout seconds without a request;
  * pipelining: several requests in one receive are answered in order, in one send;
  * Content-Length bodies of any size up to --max-body, arriving in as many pieces as they like
    ("Expect: 100-continue" is answered first); Transfer-Encoding is refused with 501;
  * 400 Bad Request for malformed requests (request line, header syntax, conflicting or invalid
    Content-Length, missing Host, ...), 505 for other HTTP versions, 431 when the head exceeds
    --max-head bytes -- each followed by closing the connection, since the stream can no longer
    be trusted.  The server closes gracefully: its FIN first, then it reads and discards what the
    client still sends (up to 2 s), so that the client gets to read the response.
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import re
import socket
import sys
import time

import runner

RECV_SIZE = 64 * 1024
LINGER = 2.0                   # seconds to drain a connection the server closes

REASONS = {
    100: "Continue", 200: "OK", 400: "Bad Request", 404: "Not Found",
    405: "Method Not Allowed", 413: "Content Too Large", 431: "Request Header Fields Too Large",
    501: "Not Implemented", 505: "HTTP Version Not Supported",
}

# RFC 9110 token characters (method names, header names).
TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
VERSION = re.compile(rb"HTTP/(\d)\.(\d)")
FORBIDDEN_IN_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


class HttpError(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


class Request:
    __slots__ = ("method", "target", "version", "headers", "body", "keep_alive")

    def __init__(self, method, target, version, headers, keep_alive):
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers          # dict: lower-case name -> value (str)
        self.body = b""
        self.keep_alive = keep_alive


class Stats:
    def __init__(self):
        self.requests = 0
        self.connections = 0
        self.rejected = 0


_date_cache = [0, ""]


def http_date() -> str:
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0], _date_cache[1] = now, email.utils.formatdate(now, usegmt=True)
    return _date_cache[1]


def response(status: int, body: bytes = b"", *, content_type: str = "text/plain; charset=utf-8",
             close: bool = False, keep_alive_10: bool = False, head_only: bool = False,
             extra: tuple = ()) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS[status]}", f"Date: {http_date()}",
             "Server: uringloop-example", f"Content-Length: {len(body)}"]
    lines.append(f"Content-Type: {content_type}")
    lines.extend(extra)
    if close:
        lines.append("Connection: close")
    elif keep_alive_10:
        lines.append("Connection: keep-alive")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body


class HttpConnection:
    """The parsing state of one connection, driven by receive completions."""

    def __init__(self, stats: Stats, max_head: int, max_body: int):
        self.stats = stats
        self.max_head = max_head
        self.max_body = max_body
        self.buffer = bytearray()
        self.request: Request | None = None     # head parsed, body still arriving
        self.body_length = 0
        self.continue_sent = False

    def on_read_complete(self, data: bytes) -> tuple[list, bool]:
        """The completion handler of a receive: `data` is what the kernel put in the buffer.

        Returns the responses to send, in request order, and whether to close the connection
        once they are sent."""
        self.buffer += data
        responses = []
        while True:
            try:
                request = self.next_request(responses)
            except HttpError as error:
                self.stats.rejected += 1
                responses.append(response(error.status, f"{error.detail}\n".encode(),
                                          close=True))
                return responses, True
            if request is None:
                return responses, False
            self.stats.requests += 1
            responses.append(self.handle(request))
            if not request.keep_alive:
                return responses, True

    def next_request(self, responses: list) -> Request | None:
        """Take one complete request off the buffer, or None if it is not all here yet."""
        if self.request is None:
            self.request = self.parse_head()
            if self.request is None:
                return None
        if len(self.buffer) < self.body_length:
            if (not self.continue_sent and
                    self.request.headers.get("expect", "").lower() == "100-continue"):
                # The client waits for this before sending a body.
                responses.append(b"HTTP/1.1 100 Continue\r\n\r\n")
                self.continue_sent = True
            return None
        request, self.request = self.request, None
        request.body = bytes(self.buffer[:self.body_length])
        del self.buffer[:self.body_length]
        self.continue_sent = False
        return request

    def parse_head(self) -> Request | None:
        buffer = self.buffer
        # Leading empty lines before a request are allowed (RFC 9112 2.2).
        while buffer[:2] == b"\r\n" or buffer[:1] == b"\n":
            del buffer[: 2 if buffer[:1] == b"\r" else 1]
        # The head (request line, headers and the empty line that ends them) must end within
        # the first max_head bytes.
        end = buffer.find(b"\r\n\r\n", 0, self.max_head)
        bare = buffer.find(b"\n\n", 0, self.max_head)      # bare LF line ends, tolerated
        if bare >= 0 and (end < 0 or bare < end):
            end, skip = bare, 2
        else:
            skip = 4
        if end < 0:
            if len(buffer) >= self.max_head:
                raise HttpError(431, f"request head larger than {self.max_head} bytes")
            return None
        lines = bytes(buffer[:end]).split(b"\n")
        del buffer[: end + skip]
        lines = [line[:-1] if line.endswith(b"\r") else line for line in lines]

        parts = lines[0].split(b" ")
        if len(parts) != 3 or not TOKEN.fullmatch(parts[0]) or not parts[1]:
            raise HttpError(400, "malformed request line")
        method, target, version_text = parts
        version = VERSION.fullmatch(version_text)
        if version is None:
            raise HttpError(400, "malformed HTTP version")
        if version.group(1) != b"1":
            raise HttpError(505, "only HTTP/1.0 and HTTP/1.1 are supported")
        if not (target.startswith(b"/") or target == b"*" or b"://" in target):
            raise HttpError(400, "malformed request target")
        http11 = version.group(2) != b"0"

        headers: dict = {}
        content_lengths = set()
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not TOKEN.fullmatch(name):
                # Also catches obsolete line folding (a line starting with a space) and
                # whitespace between the name and the colon, both forbidden.
                raise HttpError(400, "malformed header line")
            value = value.strip(b" \t")
            if FORBIDDEN_IN_VALUE.search(value):
                raise HttpError(400, "control character in a header value")
            key = name.decode("ascii").lower()
            text = value.decode("latin-1")
            if key == "content-length":
                content_lengths.update(v.strip() for v in text.split(","))
            elif key == "host" and key in headers:
                raise HttpError(400, "more than one Host header")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text

        if "transfer-encoding" in headers:
            if content_lengths:
                raise HttpError(400, "both Transfer-Encoding and Content-Length")
            raise HttpError(501, "Transfer-Encoding is not supported; send Content-Length")
        if len(content_lengths) > 1:
            raise HttpError(400, "conflicting Content-Length values")
        length = 0
        if content_lengths:
            text = content_lengths.pop()
            if not text.isdigit() or not text.isascii():
                raise HttpError(400, "invalid Content-Length")
            length = int(text)
            if length > self.max_body:
                raise HttpError(413, f"body larger than {self.max_body} bytes")
        if http11 and "host" not in headers:
            raise HttpError(400, "HTTP/1.1 request without Host")

        connection = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        keep_alive = "close" not in connection if http11 else "keep-alive" in connection
        self.body_length = length
        return Request(method.decode("ascii"), target.decode("latin-1"), version_text,
                       headers, keep_alive)

    def handle(self, request: Request) -> bytes:
        path = request.target.split("?", 1)[0]
        options = {"close": not request.keep_alive,
                   "keep_alive_10": request.keep_alive and request.version == b"HTTP/1.0"}
        if path == "/":
            if request.method in ("GET", "HEAD"):
                return response(200, b"Hello, world!\n", head_only=request.method == "HEAD",
                                **options)
            return response(405, b"use GET or HEAD\n", extra=("Allow: GET, HEAD",), **options)
        if path == "/echo":
            if request.method == "POST":
                return response(200, request.body, content_type=request.headers.get(
                    "content-type", "application/octet-stream"), **options)
            return response(405, b"use POST\n", extra=("Allow: POST",), **options)
        return response(404, b"not found\n", head_only=request.method == "HEAD", **options)


class Server:
    def __init__(self, args):
        self.args = args
        self.stats = Stats()
        self.connections: dict = {}        # task -> time of its last completed receive

    async def accept_forever(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(listener)
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.stats.connections += 1
            task = asyncio.ensure_future(self.serve(conn))
            self.connections[task] = loop.time()
            task.add_done_callback(self.connections.pop)

    async def serve(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        http = HttpConnection(self.stats, self.args.max_head, self.args.max_body)
        task = asyncio.current_task()
        try:
            while True:
                data = await loop.sock_recv(conn, RECV_SIZE)       # initiate; resume on completion
                if not data:
                    break
                self.connections[task] = loop.time()
                responses, close = http.on_read_complete(data)     # the completion handler
                if responses:
                    await loop.sock_sendall(conn, b"".join(responses))
                if close:
                    await self.linger(conn)
                    break
        except (ConnectionError, OSError):
            pass
        finally:
            conn.close()

    async def linger(self, conn: socket.socket) -> None:
        """Close gracefully when the server decides to: send our FIN, then read and discard what
        the client is still sending (the rest of a refused body, pipelined requests) until it
        closes too, for at most LINGER seconds.  Closing a socket with unread bytes makes the
        kernel send a reset, which can destroy the response before the client has read it."""
        loop = asyncio.get_running_loop()
        conn.shutdown(socket.SHUT_WR)
        deadline = loop.time() + LINGER
        try:
            while (remaining := deadline - loop.time()) > 0:
                if not await asyncio.wait_for(loop.sock_recv(conn, RECV_SIZE), remaining):
                    break
        except asyncio.TimeoutError:
            pass

    async def close_idle_forever(self) -> None:
        """Once a second, end the connections that have been silent for --idle-timeout."""
        loop = asyncio.get_running_loop()
        timeout = self.args.idle_timeout
        while True:
            await asyncio.sleep(min(1.0, timeout / 2))
            now = loop.time()
            for task, last in list(self.connections.items()):
                if now - last > timeout:
                    task.cancel()        # cancels its receive in the kernel; `finally` closes


async def main(args) -> None:
    listener = socket.create_server((args.host, args.port), backlog=4096)
    listener.setblocking(False)
    host, port = listener.getsockname()[:2]
    server = Server(args)
    print(f"serving HTTP on http://{host}:{port}/ (loop: {args.loop})", flush=True)
    background = [asyncio.ensure_future(server.accept_forever(listener)),
                  asyncio.ensure_future(server.close_idle_forever())]
    try:
        await runner.stop_requested()
    finally:
        for task in background + list(server.connections):
            task.cancel()
        await asyncio.gather(*background, *server.connections, return_exceptions=True)
        listener.close()
    stats = server.stats
    print(f"served {stats.requests:,} requests on {stats.connections:,} connections; "
          f"{stats.rejected:,} rejected as bad requests", flush=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="http_server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--max-head", type=int, default=8192,
                        help="largest request head (request line, headers, empty line), in "
                             "bytes (default 8192)")
    parser.add_argument("--max-body", type=int, default=16 * 1024 * 1024,
                        help="largest request body, in bytes (default 16 MiB)")
    parser.add_argument("--idle-timeout", type=float, default=60.0,
                        help="seconds a keep-alive connection may stay silent (default 60)")
    runner.add_loop_option(parser)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    runner.raise_open_file_limit()
    runner.run(main(arguments), arguments.loop)
    sys.exit(0)
