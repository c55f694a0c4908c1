"""An aiohttp application served on the loop (AppRunner + TCPSite) and exercised by aiohttp's own
client in the same loop: plain GETs, a multi-megabyte POST, a chunked streaming response of several
megabytes, and a websocket echo.  Every test runs on uringloop and on the stock loop (conftest).
Last, web.run_app(app, loop=uringloop.new_event_loop()) in a process of its own."""

import asyncio
import contextlib
import functools
import hashlib
import io
import os
import pathlib
import random
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest

aiohttp = pytest.importorskip(
    "aiohttp", reason="aiohttp is not installed (the 'test' extra has it)")
from aiohttp import web  # noqa: E402

import uringloop  # noqa: E402
from helpers import certificate, contexts  # noqa: E402,F401 (fixtures)

MiB = 1024 * 1024


def bounded(seconds=60):
    def decorate(fn):
        @functools.wraps(fn)
        async def run(*args, **kwargs):
            return await asyncio.wait_for(fn(*args, **kwargs), seconds)
        return run
    return decorate


def pattern(seed: int, size: int) -> bytes:
    """Deterministic, incompressible-looking bytes: both ends can produce and check them."""
    return random.Random(seed).randbytes(size)


def loop_name() -> str:
    loop_type = type(asyncio.get_running_loop())
    return f"{loop_type.__module__}.{loop_type.__qualname__}"


# ---- the application ----

async def handle_hello(request):
    return web.json_response({"hello": request.query.get("name", "world"), "loop": loop_name()})


async def handle_upload(request):
    # Read the body as it arrives, hashing as we go: the server never holds more than a chunk.
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        size += len(chunk)
    return web.json_response({"size": size, "sha256": digest.hexdigest()})


async def handle_echo(request):
    return web.Response(body=await request.read(), content_type="application/octet-stream")


async def handle_stream(request):
    # No Content-Length: aiohttp sends the body chunked, one chunk per write.
    size = int(request.query["size"])
    chunk_size = int(request.query["chunk"])
    body = pattern(int(request.query["seed"]), size)
    response = web.StreamResponse()
    response.content_type = "application/octet-stream"
    await response.prepare(request)
    for start in range(0, size, chunk_size):
        await response.write(body[start:start + chunk_size])
    await response.write_eof()
    return response


async def handle_websocket(request):
    ws = web.WebSocketResponse(max_msg_size=8 * MiB)
    await ws.prepare(request)
    async for message in ws:
        if message.type == aiohttp.WSMsgType.TEXT:
            if message.data == "close":
                await ws.close()
            else:
                await ws.send_str("echo:" + message.data)
        elif message.type == aiohttp.WSMsgType.BINARY:
            await ws.send_bytes(message.data[::-1])
    return ws


def make_app() -> web.Application:
    app = web.Application(client_max_size=64 * MiB)
    app.router.add_get("/hello", handle_hello)
    app.router.add_post("/upload", handle_upload)
    app.router.add_post("/echo", handle_echo)
    app.router.add_get("/stream", handle_stream)
    app.router.add_get("/ws", handle_websocket)
    return app


@contextlib.asynccontextmanager
async def serving(app, ssl_context=None):
    """Serve `app` on 127.0.0.1 on the running loop (HTTPS with ssl_context); yields the base
    URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        port = runner.addresses[0][1]
        yield f"{'https' if ssl_context is not None else 'http'}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


# ---- the tests ----

@pytest.mark.asyncio
@bounded()
async def test_get_requests_keepalive_and_fresh_connections(is_uring):
    async with serving(make_app()) as base:
        async with aiohttp.ClientSession() as session:
            for i in range(50):
                async with session.get(f"{base}/hello", params={"name": f"n{i}"}) as response:
                    assert response.status == 200
                    payload = await response.json()
                    assert payload["hello"] == f"n{i}"
            # The server handled the requests on the loop under test.
            assert payload["loop"] == loop_name()
            assert (payload["loop"] == "uringloop.loop.Loop") == is_uring

        # Many connections at once, each used for one request.
        connector = aiohttp.TCPConnector(force_close=True, limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            async def one(i):
                async with session.get(f"{base}/hello", params={"name": str(i)}) as response:
                    return (await response.json())["hello"]
            answers = await asyncio.gather(*(one(i) for i in range(64)))
        assert answers == [str(i) for i in range(64)]

        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/missing") as response:
                assert response.status == 404


@pytest.mark.asyncio
@bounded()
async def test_https_requests_a_large_body_and_a_secure_websocket(contexts, is_uring):
    # TLS on both ends through the loop's ssl= support (on uringloop from 3.11: its compiled
    # TLS layer), the certificate (made for localhost and 127.0.0.1) verified.
    server_ctx, client_ctx = contexts
    async with serving(make_app(), ssl_context=server_ctx) as base:
        assert base.startswith("https://")
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ctx)) as session:
            for i in range(5):
                async with session.get(f"{base}/hello", params={"name": f"s{i}"}) as response:
                    assert response.status == 200
                    payload = await response.json()
                    assert payload["hello"] == f"s{i}"
            assert (payload["loop"] == "uringloop.loop.Loop") == is_uring

            body = pattern(3, 3 * MiB + 777)
            async with session.post(f"{base}/echo", data=io.BytesIO(body)) as response:
                assert await response.read() == body

            async with session.ws_connect(f"{base.replace('https', 'wss')}/ws") as ws:
                await ws.send_str("over tls")
                assert (await ws.receive()).data == "echo:over tls"
                blob = pattern(4, 300_000)
                await ws.send_bytes(blob)
                assert (await ws.receive()).data == blob[::-1]
                await ws.close()

        # A client that does not trust the server's certificate is refused.
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await session.get(f"{base}/hello")


@pytest.mark.asyncio
@bounded()
async def test_post_multi_megabyte_body_checksum():
    body = pattern(1, 12 * MiB + 12345)
    async with serving(make_app()) as base:
        async with aiohttp.ClientSession() as session:
            # With a Content-Length ...
            async with session.post(f"{base}/upload", data=io.BytesIO(body)) as response:
                assert response.status == 200
                assert await response.json() == {
                    "size": len(body), "sha256": hashlib.sha256(body).hexdigest()}

            # ... and from an async generator (a chunked request body).
            async def produce():
                for start in range(0, len(body), 256 * 1024):
                    yield body[start:start + 256 * 1024]
            async with session.post(f"{base}/upload", data=produce()) as response:
                assert response.headers.get("Content-Type", "").startswith("application/json")
                assert await response.json() == {
                    "size": len(body), "sha256": hashlib.sha256(body).hexdigest()}

            # Both directions large: the server sends the body back.
            echo_body = pattern(2, 6 * MiB)
            async with session.post(f"{base}/echo", data=io.BytesIO(echo_body)) as response:
                assert response.content_length == len(echo_body)
                assert await response.read() == echo_body


@pytest.mark.asyncio
@bounded()
async def test_streaming_chunked_response_several_megabytes():
    size = 6 * MiB + 777
    expected = pattern(3, size)
    async with serving(make_app()) as base:
        async with aiohttp.ClientSession() as session:
            params = {"size": size, "chunk": 64 * 1024, "seed": 3}
            async with session.get(f"{base}/stream", params=params) as response:
                assert response.status == 200
                assert response.headers["Transfer-Encoding"] == "chunked"
                assert response.content_length is None
                digest = hashlib.sha256()
                received = 0
                # Read slowly at first so that the server's writes back up (flow control).
                async for chunk in response.content.iter_chunked(32 * 1024):
                    if received < 256 * 1024:
                        await asyncio.sleep(0.005)
                    digest.update(chunk)
                    received += len(chunk)
            assert received == size
            assert digest.hexdigest() == hashlib.sha256(expected).hexdigest()

            # Small, odd-sized chunks, many of them.
            params = {"size": 300_001, "chunk": 1000, "seed": 4}
            async with session.get(f"{base}/stream", params=params) as response:
                assert await response.read() == pattern(4, 300_001)


@pytest.mark.asyncio
@bounded()
async def test_websocket_echo_text_and_binary():
    async with serving(make_app()) as base:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{base}/ws", max_msg_size=8 * MiB) as ws:
                # One at a time.
                for i in range(200):
                    await ws.send_str(f"message {i} " + "x" * (i % 50))
                    assert await ws.receive_str() == f"echo:message {i} " + "x" * (i % 50)
                    data = pattern(i, i * 37 % 5000 + 1)
                    await ws.send_bytes(data)
                    assert await ws.receive_bytes() == data[::-1]

                # Pipelined: many messages in flight before the first answer is read.
                texts = [f"pipelined {i}" for i in range(500)]
                for text in texts:
                    await ws.send_str(text)
                for text in texts:
                    assert await ws.receive_str() == "echo:" + text

                # Large frames, text and binary.
                big_text = "ü" * (512 * 1024)
                await ws.send_str(big_text)
                assert await ws.receive_str() == "echo:" + big_text
                big = pattern(99, 4 * MiB)
                await ws.send_bytes(big)
                assert await ws.receive_bytes() == big[::-1]

                await ws.send_str("close")
                message = await ws.receive()
                assert message.type == aiohttp.WSMsgType.CLOSE
            assert ws.closed


@pytest.mark.asyncio
@bounded()
async def test_many_websocket_clients_at_once():
    async with serving(make_app()) as base:
        async with aiohttp.ClientSession() as session:
            async def client(n):
                async with session.ws_connect(f"{base}/ws") as ws:
                    for i in range(50):
                        await ws.send_str(f"{n}:{i}")
                        assert await ws.receive_str() == f"echo:{n}:{i}"
                        await ws.send_bytes(bytes([n, i]) * 100)
                        assert await ws.receive_bytes() == (bytes([n, i]) * 100)[::-1]
                return n
            assert sorted(await asyncio.gather(*(client(n) for n in range(20)))) == list(range(20))


RUN_APP = '''
import asyncio, socket, sys
import uringloop
from aiohttp import web

async def whoami(request):
    loop = asyncio.get_running_loop()
    return web.Response(text=f"{type(loop).__module__}.{type(loop).__qualname__}")

app = web.Application()
app.router.add_get("/", whoami)
web.run_app(app, sock=socket.socket(fileno=int(sys.argv[1])),
            loop=uringloop.new_event_loop(), print=lambda *args: print("serving", flush=True))
'''


def test_run_app_with_a_uringloop(tmp_path):
    # aiohttp's one-call entry point: web.run_app(app, loop=uringloop.new_event_loop()), in a
    # process of its own (it installs signal handlers), stopped with Ctrl-C.
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    script = tmp_path / "serve.py"
    script.write_text(RUN_APP)
    env = dict(os.environ,
               PYTHONPATH=str(pathlib.Path(uringloop.__file__).resolve().parent.parent))
    proc = subprocess.Popen([sys.executable, str(script), str(listener.fileno())],
                            pass_fds=[listener.fileno()], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    listener.close()
    try:
        assert proc.stdout.readline() == "serving\n", proc.stderr.read()
        for _ in range(3):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=20) as response:
                assert response.read() == b"uringloop.loop.Loop"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
