"""`uvicorn app:app --loop uringloop:new_event_loop`: a real uvicorn process serving a small ASGI
application on uringloop, queried over loopback, stopped with SIGINT or SIGTERM.

The application itself reports the loop it runs on, so the test sees that uvicorn really used
uringloop (and not merely accepted the option).  uvicorn takes `--loop module:callable` as the
loop factory from 0.36 on (Config.get_loop_factory imports the callable and passes it to
asyncio.run/Runner as loop_factory); older versions only accept their named loops."""

import hashlib
import http.client
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import textwrap
import threading

import pytest

uvicorn = pytest.importorskip(
    "uvicorn", reason="uvicorn is not installed (the 'test' extra has it)")

import uringloop  # noqa: E402
from helpers import certificate  # noqa: E402,F401 (fixture)

UVICORN_VERSION = tuple(int(part) for part in uvicorn.__version__.split(".")[:2])
pytestmark = pytest.mark.skipif(
    UVICORN_VERSION < (0, 36),
    reason=f"uvicorn {uvicorn.__version__} does not take --loop module:callable (0.36 does)")

URINGLOOP_PATH = str(pathlib.Path(uringloop.__file__).resolve().parent.parent)

APP = textwrap.dedent('''
    """A tiny ASGI application that reports the event loop serving it."""
    import asyncio
    import hashlib
    import json
    import os
    import pathlib

    import uringloop

    MARKERS = pathlib.Path(os.environ["UL_TEST_MARKERS"])


    def loop_report():
        loop = asyncio.get_running_loop()
        return {"loop": f"{type(loop).__module__}.{type(loop).__qualname__}",
                "is_uringloop": isinstance(loop, uringloop.Loop), "pid": os.getpid()}


    async def lifespan(receive, send):
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                (MARKERS / "startup.json").write_text(json.dumps(loop_report()))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                (MARKERS / "shutdown.json").write_text(json.dumps(loop_report()))
                await send({"type": "lifespan.shutdown.complete"})
                return


    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        assert scope["type"] == "http"
        digest = hashlib.sha256()
        size = 0
        while True:
            message = await receive()
            digest.update(message.get("body", b""))
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        report = dict(loop_report(), method=scope["method"], path=scope["path"],
                      size=size, sha256=digest.hexdigest())
        body = json.dumps(report).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
''')


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Uvicorn:
    """`uvicorn app:app --loop uringloop:new_event_loop` as its own process."""

    def __init__(self, app_dir: pathlib.Path, port: int, extra_args=()):
        markers = app_dir / "markers"
        markers.mkdir()
        self.markers = markers
        self.port = port
        env = dict(os.environ, PYTHONPATH=URINGLOOP_PATH, PYTHONUNBUFFERED="1",
                   UL_TEST_MARKERS=str(markers))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app:app", "--loop", "uringloop:new_event_loop",
             "--host", "127.0.0.1", "--port", str(port), "--app-dir", str(app_dir),
             "--no-access-log", "--lifespan", "on", *extra_args],
            cwd=app_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.log: list = []
        self.started = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.log.append(line)
            if "Uvicorn running on" in line:
                self.started.set()
        self.started.set()          # the process ended: stop waiting

    @property
    def output(self) -> str:
        return "".join(self.log)

    def wait_started(self, timeout: float = 30) -> None:
        assert self.started.wait(timeout), f"uvicorn did not start in {timeout} s:\n{self.output}"
        assert self.proc.poll() is None, f"uvicorn exited:\n{self.output}"

    def stop(self, sig, timeout: float = 20) -> int:
        self.proc.send_signal(sig)
        returncode = self.proc.wait(timeout)
        self.reader.join(timeout)
        return returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


def request(conn, method, path, body=None):
    conn.request(method, path, body=body,
                 headers={"Content-Type": "application/octet-stream"} if body else {})
    response = conn.getresponse()
    payload = response.read()
    assert response.status == 200, (response.status, payload)
    return json.loads(payload)


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_uvicorn_serves_asgi_app_on_uringloop(tmp_path, stop_signal):
    (tmp_path / "app.py").write_text(APP)
    server = Uvicorn(tmp_path, free_port())
    try:
        server.wait_started()
        startup = json.loads((server.markers / "startup.json").read_text())
        assert startup["loop"] == "uringloop.loop.Loop" and startup["is_uringloop"], startup
        assert startup["pid"] == server.proc.pid

        # Several requests on one keep-alive connection ...
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
        try:
            for i in range(10):
                report = request(conn, "GET", f"/item/{i}")
                assert report["path"] == f"/item/{i}" and report["method"] == "GET"
                assert report["is_uringloop"] and report["pid"] == server.proc.pid
            # ... including POST bodies, small and multi-megabyte.
            for size in (1, 65_537, 5 * 1024 * 1024 + 3):
                body = os.urandom(size)
                report = request(conn, "POST", "/upload", body)
                assert report["size"] == size
                assert report["sha256"] == hashlib.sha256(body).hexdigest()
                assert report["loop"] == "uringloop.loop.Loop"
        finally:
            conn.close()
        # ... and a fresh connection per request.
        for i in range(10):
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
            try:
                assert request(conn, "POST", "/fresh", b"%d" % i)["size"] == len(b"%d" % i)
            finally:
                conn.close()

        # uvicorn shuts down gracefully, then re-raises the signal it caught with the default
        # disposition restored (on any loop): SIGINT ends in a KeyboardInterrupt that uvicorn
        # suppresses (exit status 0), SIGTERM kills the process with that signal.
        returncode = server.stop(stop_signal)
        assert returncode == (0 if stop_signal == signal.SIGINT else -stop_signal), server.output
        assert "Finished server process" in server.output, server.output
        # The lifespan shutdown ran on the same uringloop, in the same process.
        shutdown = json.loads((server.markers / "shutdown.json").read_text())
        assert shutdown["is_uringloop"] and shutdown["pid"] == server.proc.pid
        assert "Traceback" not in server.output, server.output
    finally:
        server.kill()


def test_uvicorn_serves_https_on_uringloop(tmp_path, certificate):
    # uvicorn's --ssl-* options: the loop's TLS (its compiled layer from Python 3.11 on) under
    # an ASGI app, verified by a client that trusts the test certificate.
    import ssl
    certfile, keyfile = certificate
    (tmp_path / "app.py").write_text(APP)
    server = Uvicorn(tmp_path, free_port(),
                     ("--ssl-certfile", certfile, "--ssl-keyfile", keyfile))
    try:
        server.wait_started()
        assert "https://127.0.0.1" in server.output, server.output
        context = ssl.create_default_context(cafile=certfile)
        conn = http.client.HTTPSConnection("127.0.0.1", server.port, timeout=20, context=context)
        try:
            for i in range(5):
                report = request(conn, "GET", f"/item/{i}")
                assert report["path"] == f"/item/{i}" and report["is_uringloop"]
            body = os.urandom(3 * 1024 * 1024 + 5)
            report = request(conn, "POST", "/upload", body)
            assert report["size"] == len(body)
            assert report["sha256"] == hashlib.sha256(body).hexdigest()
            assert conn.sock.version().startswith("TLS")
        finally:
            conn.close()
        assert server.stop(signal.SIGINT) == 0, server.output
        assert "Traceback" not in server.output, server.output
    finally:
        server.kill()


def test_uvicorn_refuses_unknown_loop_factory(tmp_path):
    # The negative control: --loop really is interpreted (a bad factory is an error, not ignored).
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "markers").mkdir()
    env = dict(os.environ, PYTHONPATH=URINGLOOP_PATH, UL_TEST_MARKERS=str(tmp_path / "markers"))
    result = subprocess.run(
        [sys.executable, "-m", "uvicorn", "app:app", "--loop", "uringloop:no_such_factory",
         "--port", str(free_port()), "--app-dir", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "no_such_factory" in result.stdout + result.stderr
