"""uringloop.workers.GunicornUringWebWorker under a real gunicorn master with two workers:
requests are served by uringloop in the workers, a graceful restart (SIGHUP) while a client keeps
sending requests loses none of them and brings new worker processes, SIGTERM ends the master.

aiohttp's own GunicornWebWorker (the stock loop) runs the same scenario as the oracle."""

import asyncio
import contextlib
import http.client
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

aiohttp = pytest.importorskip(
    "aiohttp", reason="aiohttp is not installed (the 'test' extra has it)")
gunicorn_config = pytest.importorskip(
    "gunicorn.config", reason="gunicorn is not installed (the 'test' extra has it)")

import uringloop  # noqa: E402

URINGLOOP_PATH = str(pathlib.Path(uringloop.__file__).resolve().parent.parent)

APP = textwrap.dedent('''
    import asyncio
    import os

    from aiohttp import web


    async def whoami(request):
        loop = asyncio.get_running_loop()
        return web.json_response({"loop": f"{type(loop).__module__}.{type(loop).__qualname__}",
                                  "pid": os.getpid(), "n": request.query.get("n")})


    app = web.Application()
    app.router.add_get("/", whoami)
''')

WORKERS = {
    "uringloop": ("uringloop.workers.GunicornUringWebWorker", "uringloop.loop.Loop"),
    "stock": ("aiohttp.GunicornWebWorker", "asyncio.unix_events._UnixSelectorEventLoop"),
}

# aiohttp's ClientSession retries an idempotent request once on a connection closed before the
# response (the session attribute that switches it, in the list of its attributes).
AIOHTTP_RETRIES = "_retry_connection" in getattr(aiohttp.ClientSession, "ATTRS", ())

BOOTED = re.compile(r"Booting worker with pid: (\d+)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def has_setting(name: str) -> bool:
    return any(setting.name == name for setting in gunicorn_config.KNOWN_SETTINGS)


class Gunicorn:
    """A gunicorn master (and its workers) in a session of its own, so that all of it can be
    killed at once if the test fails."""

    def __init__(self, app_dir: pathlib.Path, worker_class: str, port: int,
                 extra_args=(), extra_env=None):
        self.port = port
        args = [sys.executable, "-m", "gunicorn", "app:app", "--worker-class", worker_class,
                "-w", "2", "-b", f"127.0.0.1:{port}", "--chdir", str(app_dir),
                "--graceful-timeout", "5", "--timeout", "30", *extra_args]
        if has_setting("control_socket_disable"):
            # gunicorn >= 25.1 opens a control socket in $XDG_RUNTIME_DIR or ~/.gunicorn,
            # shared by every gunicorn of the user: none here.
            args.append("--no-control-socket")
        env = dict(os.environ, PYTHONPATH=URINGLOOP_PATH, PYTHONUNBUFFERED="1",
                   **(extra_env or {}))
        self.proc = subprocess.Popen(args, cwd=app_dir, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self.log: list = []
        self.booted: list = []          # worker pids, in the order gunicorn reported them
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self.changed:
                self.log.append(line)
                booted = BOOTED.search(line)
                if booted:
                    self.booted.append(int(booted.group(1)))
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    @property
    def output(self) -> str:
        return "".join(self.log)

    def wait_for(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        with self.changed:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{what}: not within {timeout} s\n{self.output}")
                if self.proc.poll() is not None and not self.reader.is_alive():
                    raise AssertionError(f"{what}: gunicorn exited\n{self.output}")
                self.changed.wait(min(remaining, 0.2))

    def kill_all(self) -> None:
        # The master leads its own session and process group; its workers are in that group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.reader.join(10)
        self.proc.stdout.close()


def get(port: int, n: int) -> dict:
    """One request on a fresh connection, with http.client (no retry of any kind)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request("GET", f"/?n={n}")
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, (response.status, body)
        report = json.loads(body)
        assert report["n"] == str(n), report
        return report
    finally:
        conn.close()


class Client(threading.Thread):
    """aiohttp's client, in a thread of its own on the stock loop, sending requests until told
    to stop: one stream of requests on fresh connections, one on a keep-alive pool.  Every
    answer and every failure is recorded.

    Like HTTP clients generally, it retries an idempotent request once when the connection
    closes before a response began (RFC 9112 section 9.3.1): aiohttp's client does so itself in
    recent versions, and for older ones this client does it explicitly.  A graceful
    restart needs that: a worker that stops serving closes the connections that have not
    delivered a request yet (aiohttp's AppRunner.cleanup) -- accepted just before the listener
    closed, their request may still be on its way.  That is aiohttp's behaviour on any loop.
    How often it happened is printed: connections beyond one per request on the fresh stream."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/"
        self.answers: list = []         # (monotonic time, report)
        self.failures: list = []
        self.fresh_requests = 0         # requests of the fresh-connection stream ...
        self.fresh_connections = 0      # ... and the connections they took
        self.stopping = threading.Event()

    def run(self) -> None:
        asyncio.run(self.main())

    async def main(self) -> None:
        trace = aiohttp.TraceConfig()

        async def connection_created(session, context, params):
            self.fresh_connections += 1
        trace.on_connection_create_end.append(connection_created)
        timeout = aiohttp.ClientTimeout(total=20)
        fresh = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True),
                                      timeout=timeout, trace_configs=[trace])
        pooled = aiohttp.ClientSession(timeout=timeout)
        # The keep-alive stream's retry goes on a new connection: aiohttp's own retry takes
        # the next connection of the pool, which may be another one an old worker is closing
        # (each old worker closes its idle keep-alive connections as it stops).
        retry = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True),
                                      timeout=timeout)
        async with fresh, pooled, retry:
            await asyncio.gather(self.stream(fresh, 10**6, True),
                                 self.stream(pooled, 2 * 10**6, retry_on=retry))

    async def stream(self, session, n: int, fresh: bool = False, retry_on=None) -> None:
        while not self.stopping.is_set():
            n += 1
            try:
                try:
                    report = await self.fetch(session, n)
                except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                    if AIOHTTP_RETRIES and retry_on is None:
                        raise                   # aiohttp has retried once already
                    report = await self.fetch(retry_on or session, n)
                self.answers.append((time.monotonic(), report))
            except Exception as exc:                      # noqa: BLE001 - recorded, asserted
                self.failures.append((n, repr(exc)))
            if fresh:
                self.fresh_requests += 1

    async def fetch(self, session, n: int) -> dict:
        async with session.get(self.url, params={"n": n}) as response:
            assert response.status == 200, response.status
            report = await response.json()
        assert report["n"] == str(n), report
        return report

    @property
    def retries(self) -> int:
        return self.fresh_connections - self.fresh_requests


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.timeout(120)
@pytest.mark.parametrize("worker", list(WORKERS))
def test_gunicorn_two_workers_graceful_restart(tmp_path, worker):
    worker_class, loop_name = WORKERS[worker]
    (tmp_path / "app.py").write_text(APP)
    server = Gunicorn(tmp_path, worker_class, free_port())
    client = None
    try:
        server.wait_for(lambda: len(server.booted) >= 2, 30, "two workers booted")
        old_workers = set(server.booted[:2])

        # Served by the workers, on the loop of the worker class.  (The master listens before
        # the workers boot: the first request waits in the backlog until a worker accepts it.)
        reports = [get(server.port, n) for n in range(20)]
        assert {report["loop"] for report in reports} == {loop_name}, reports
        assert {report["pid"] for report in reports} <= old_workers, (reports, old_workers)

        # A graceful restart under load.
        client = Client(server.port)
        client.start()
        time.sleep(0.3)
        hup_sent = time.monotonic()
        server.proc.send_signal(signal.SIGHUP)
        server.wait_for(lambda: len(server.booted) >= 4, 30, "two new workers booted")
        new_workers = set(server.booted[2:4])
        assert not new_workers & old_workers
        # The old workers finish their requests and leave; the new ones serve.
        deadline = time.monotonic() + 30
        while any(pid_alive(pid) for pid in old_workers):
            assert time.monotonic() < deadline, "old workers still running"
            time.sleep(0.05)
        deadline = time.monotonic() + 30
        while not any(report["pid"] in new_workers for _, report in client.answers):
            assert time.monotonic() < deadline, "no new worker answered"
            time.sleep(0.05)
        time.sleep(0.3)             # and keep going a little on the new workers alone
        client.stopping.set()
        client.join(30)
        assert not client.is_alive()

        assert client.failures == []
        print(f"{len(client.answers)} requests; "
              f"{client.retries} retried on the fresh-connection stream")
        assert len([t for t, _ in client.answers if t > hup_sent]) >= 10, \
            "too few requests across the restart"
        assert {report["loop"] for _, report in client.answers} == {loop_name}
        pids = {report["pid"] for _, report in client.answers}
        assert pids <= old_workers | new_workers, (pids, old_workers, new_workers)
        assert pids & new_workers

        # SIGTERM: the master stops its workers and exits.
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(30) == 0, server.output
        server.reader.join(10)
        assert "Shutting down: Master" in server.output
        assert not any(pid_alive(pid) for pid in new_workers)
        assert "Traceback" not in server.output, server.output
    finally:
        if client is not None:
            client.stopping.set()
        server.kill_all()
        print(server.output)            # shown by pytest when the test failed


# The application as a --preload'ed one that made a uringloop loop in the master and left it as
# the current loop (closed in the master itself as it leaves, by its own process id).
PRELOADED_APP = APP + textwrap.dedent('''
    import atexit

    import uringloop

    master_loop = uringloop.new_event_loop()
    master_loop.run_until_complete(asyncio.sleep(0))
    asyncio.set_event_loop(master_loop)
    MASTER_PID = os.getpid()
    atexit.register(lambda: os.getpid() == MASTER_PID and master_loop.close())
''')


@pytest.mark.timeout(120)
def test_gunicorn_preload_a_loop_the_master_left_is_closed_in_each_worker(tmp_path):
    """gunicorn --preload with an application that made a uringloop loop in the master: each
    worker closes the loop it inherited (it is the master's), and so no worker warns of an
    unclosed event loop as it leaves.  (Before 3.12 a fork child forgot that current loop --
    loop._after_fork_in_child -- so the worker's get_event_loop().close() closed a new one,
    and every worker warned; from 3.12 the stock worker's inherited stock loop warns so too.)"""
    worker_class, loop_name = WORKERS["uringloop"]
    (tmp_path / "app.py").write_text(PRELOADED_APP)
    server = Gunicorn(tmp_path, worker_class, free_port(), extra_args=["--preload"],
                      extra_env={"PYTHONWARNINGS": "always::ResourceWarning"})
    try:
        server.wait_for(lambda: len(server.booted) >= 2, 30, "two workers booted")
        reports = [get(server.port, n) for n in range(6)]
        assert {report["loop"] for report in reports} == {loop_name}, reports
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(30) == 0, server.output
        server.reader.join(10)
        assert "Shutting down: Master" in server.output
        assert "unclosed event loop" not in server.output, server.output
        assert "Traceback" not in server.output, server.output
    finally:
        server.kill_all()
        print(server.output)            # shown by pytest when the test failed
