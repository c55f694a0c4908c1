"""examples/http_server.py, run as a user would: aiohttp's client for what clients normally do,
raw sockets for what they normally do not (pipelining, malformed requests, oversized heads)."""

import asyncio
import io
import os
import socket
import time

import aiohttp
import pytest

from test_examples_helpers import ExampleProcess

SERVING = r"serving HTTP on http://127\.0\.0\.1:(\d+)/ \(loop: (\w+)\)"


@pytest.fixture
def server():
    with ExampleProcess("http_server", "--port", "0", "--max-head", "8192",
                        "--max-body", str(4 * 1024 * 1024)) as proc:
        proc.port = int(proc.expect(SERVING).group(1))
        yield proc


def _run(coro, timeout=60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def _summary(server) -> str:
    assert server.stop() == 0, server.stderr
    assert server.stderr == ""
    return server.output[-1]


# ---- through aiohttp ----------------------------------------------------------------------

def test_get_head_and_errors_with_aiohttp(server):
    base = f"http://127.0.0.1:{server.port}"

    async def client():
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/") as r:
                assert r.status == 200 and await r.read() == b"Hello, world!\n"
                assert r.headers["Content-Type"] == "text/plain; charset=utf-8"
                assert r.headers["Server"] == "uringloop-example" and "Date" in r.headers
            async with session.get(f"{base}/?query=string") as r:
                assert r.status == 200
            async with session.head(f"{base}/") as r:
                assert r.status == 200 and r.headers["Content-Length"] == "14"
                assert await r.read() == b""
            async with session.get(f"{base}/missing") as r:
                assert r.status == 404
            async with session.post(f"{base}/", data=b"x") as r:
                assert r.status == 405 and r.headers["Allow"] == "GET, HEAD"
            async with session.get(f"{base}/echo") as r:
                assert r.status == 405 and r.headers["Allow"] == "POST"

    _run(client())
    assert _summary(server) == ("served 6 requests on 1 connections; "
                                "0 rejected as bad requests")


def test_keep_alive_reuses_one_connection(server):
    base = f"http://127.0.0.1:{server.port}"
    created = []
    trace = aiohttp.TraceConfig()

    async def on_create(session, context, params):
        created.append(params)

    trace.on_connection_create_end.append(on_create)

    async def client():
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector, trace_configs=[trace]) as session:
            for i in range(50):
                if i % 2:
                    async with session.get(f"{base}/") as r:
                        assert await r.read() == b"Hello, world!\n"
                else:
                    body = os.urandom(1000 + i)
                    async with session.post(f"{base}/echo", data=body) as r:
                        assert await r.read() == body

    _run(client())
    assert len(created) == 1
    assert _summary(server) == ("served 50 requests on 1 connections; "
                                "0 rejected as bad requests")


def test_content_length_bodies(server):
    base = f"http://127.0.0.1:{server.port}"
    bodies = [b"", b"a", os.urandom(64 * 1024 + 7), os.urandom(3 * 1024 * 1024)]

    async def client():
        async with aiohttp.ClientSession() as session:
            for body in bodies:
                headers = {"Content-Type": "application/x-test"}
                # (aiohttp wants large bodies as file-like objects; it still sends
                # Content-Length, as the server requires.)
                data = io.BytesIO(body) if len(body) > 1024 * 1024 else body
                async with session.post(f"{base}/echo", data=data, headers=headers) as r:
                    assert r.status == 200
                    assert r.headers["Content-Type"] == "application/x-test"
                    assert await r.read() == body
            # "Expect: 100-continue": the server says Continue before the body is sent.
            async with session.post(f"{base}/echo", data=b"after continue",
                                    expect100=True) as r:
                assert r.status == 200 and await r.read() == b"after continue"
            too_large = io.BytesIO(os.urandom(4 * 1024 * 1024 + 1))
            async with session.post(f"{base}/echo", data=too_large) as r:
                assert r.status == 413

    _run(client())
    assert _summary(server) == ("served 5 requests on 1 connections; "
                                "1 rejected as bad requests")


def test_many_concurrent_aiohttp_clients(server):
    base = f"http://127.0.0.1:{server.port}"

    async def client():
        connector = aiohttp.TCPConnector(limit=100)
        async with aiohttp.ClientSession(connector=connector) as session:
            async def one(i):
                async with session.post(f"{base}/echo", data=f"request {i}".encode()) as r:
                    return await r.read()
            results = await asyncio.gather(*(one(i) for i in range(2000)))
            assert results == [f"request {i}".encode() for i in range(2000)]

    _run(client())
    summary = _summary(server)
    assert summary.startswith("served 2,000 requests on ")
    assert summary.endswith(" connections; 0 rejected as bad requests")


# ---- raw sockets ------------------------------------------------------------------------------

class RawClient:
    """A plain blocking socket speaking HTTP by hand."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.reader = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self):
        """(status, headers, body) of the next response; None if the server closed."""
        status_line = self.reader.readline()
        if not status_line:
            return None
        version, status, _ = status_line.decode("latin-1").split(" ", 2)
        assert version == "HTTP/1.1"
        headers = {}
        while (line := self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.lower()] = value.strip()
        body = self.reader.read(int(headers.get("content-length", 0)))
        return int(status), headers, body

    def closed_by_server(self) -> bool:
        return self.reader.read() == b""

    def close(self):
        self.reader.close()
        self.sock.close()


def _get(path="/", extra=""):
    return f"GET {path} HTTP/1.1\r\nHost: test\r\n{extra}\r\n".encode()


def _post(body: bytes, extra=""):
    return (f"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
            .encode() + body)


def test_pipelined_requests_are_answered_in_order(server):
    c = RawClient(server.port)
    c.send(_get() + _post(b"first body") + _get("/missing") + _post(b"second") + _get())
    assert [c.response()[0] for _ in range(3)] == [200, 200, 404]
    status, headers, body = c.response()
    assert status == 200 and body == b"second"
    assert c.response()[2] == b"Hello, world!\n"
    # ...and one request dribbled in byte by byte: parsed across as many completions.
    for byte in _post(b"slowly"):
        c.send(bytes([byte]))
    assert c.response()[2] == b"slowly"
    c.send(_get(extra="Connection: close\r\n"))
    status, headers, _ = c.response()
    assert status == 200 and headers["connection"] == "close"
    assert c.closed_by_server()
    c.close()
    assert _summary(server) == ("served 7 requests on 1 connections; "
                                "0 rejected as bad requests")


def test_http_1_0_closes_unless_asked_to_keep_alive(server):
    c = RawClient(server.port)
    c.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    status, headers, _ = c.response()
    assert status == 200 and headers["connection"] == "keep-alive"
    c.send(b"GET / HTTP/1.0\r\n\r\n")
    assert c.response()[0] == 200
    assert c.closed_by_server()
    c.close()


MALFORMED = {
    "garbage": (b"GARBAGE\r\n\r\n", 400),
    "missing version": (b"GET /\r\nHost: x\r\n\r\n", 400),
    "bad version": (b"GET / HTTQ/1.1\r\nHost: x\r\n\r\n", 400),
    "HTTP/2": (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    "bad method": (b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "bad target": (b"GET nowhere HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "header without colon": (b"GET / HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n", 400),
    "space before colon": (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400),
    "folded header": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  continued\r\n\r\n", 400),
    "control character": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n", 400),
    "no Host in 1.1": (b"GET / HTTP/1.1\r\n\r\n", 400),
    "two Hosts": (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "bad Content-Length": (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n", 400),
    "negative Content-Length": (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
    "conflicting Content-Length": (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        400),
    "Content-Length with Transfer-Encoding": (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n", 400),
    "chunked": (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
}


def test_malformed_requests_get_400_and_the_connection_is_closed(server):
    for name, (request, expected) in MALFORMED.items():
        c = RawClient(server.port)
        c.send(_get() + request + _get())       # a good request first, one after: never served
        assert c.response()[0] == 200, name
        status, headers, body = c.response()
        assert (status, headers["connection"]) == (expected, "close"), name
        assert body.endswith(b"\n") and len(body) > 1, name
        assert c.closed_by_server(), name
        c.close()
    assert _summary(server) == (f"served {len(MALFORMED)} requests on {len(MALFORMED)} "
                                f"connections; {len(MALFORMED)} rejected as bad requests")


def test_header_size_limit(server):
    base = b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: "
    fits = base + b"a" * (8192 - len(base) - 4) + b"\r\n\r\n"
    assert len(fits) == 8192                    # the whole head, up to the limit exactly
    c = RawClient(server.port)
    c.send(fits)
    assert c.response()[0] == 200
    c.send(base + b"a" * (8192 - len(base) - 3) + b"\r\n\r\n")      # one byte more
    status, headers, body = c.response()
    assert (status, headers["connection"]) == (431, "close")
    assert body == b"request head larger than 8192 bytes\n"
    assert c.closed_by_server()
    c.close()
    # A head that never ends is cut off at the limit too, without waiting for its end.
    c = RawClient(server.port)
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-Endless: " + b"a" * 10000)
    assert c.response()[0] == 431 and c.closed_by_server()
    c.close()


def test_idle_keep_alive_connections_are_closed():
    with ExampleProcess("http_server", "--port", "0", "--idle-timeout", "1") as server:
        port = int(server.expect(SERVING).group(1))
        c = RawClient(port)
        for _ in range(3):                      # activity keeps the connection open...
            c.send(_get())
            assert c.response()[0] == 200
            time.sleep(0.3)
        assert c.closed_by_server()             # ...silence ends it (the socket's timeout: 10 s)
        c.close()
        assert server.stop() == 0


@pytest.mark.parametrize("loop", ["uringloop", "uvloop", "asyncio"])
def test_the_same_program_runs_on_each_loop(loop):
    pytest.importorskip(loop)
    with ExampleProcess("http_server", "--port", "0", "--loop", loop) as server:
        match = server.expect(SERVING)
        assert match.group(2) == loop
        base = f"http://127.0.0.1:{match.group(1)}"

        async def client():
            async with aiohttp.ClientSession() as session:
                async with session.post(f"{base}/echo", data=b"on " + loop.encode()) as r:
                    return await r.read()

        assert _run(client()) == b"on " + loop.encode()
        c = RawClient(int(match.group(1)))
        c.send(_get() + _get())
        assert [c.response()[0] for _ in range(2)] == [200, 200]
        c.close()
        assert _summary(server) == ("served 3 requests on 2 connections; "
                                    "0 rejected as bad requests")
