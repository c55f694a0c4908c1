#!/usr/bin/env python3
"""uringloop benchmark: uringloop vs uvloop vs the stock asyncio loop, one command.

    python3 benchmarks/run.py            # full: every style x size x connection count
    python3 benchmarks/run.py --quick    # the headline subset, about 3 minutes on 2 CPUs

Workloads: TCP echo in four server styles (sock_*, streams, Protocol, BufferedProtocol) driven by
a C load generator (benchmarks/loadgen.c, built on first run) that verifies every echoed byte,
and the streams server over TLS at two points (the same load generator built with OpenSSL);
the server's CPU time under paced echo load (fixed request rates every loop sustains); aiohttp
hello world under wrk; loop micro-benchmarks; system calls per echo request; the server's memory
(RSS per idle connection, and RSS across repeated runs of a fixed number of requests).

Method: the server runs in its own process pinned to one CPU, the load generator on the other.
Each point is measured in rounds; within a round every loop runs once, back to back (A B C A B C
...), and ratios are taken within a round.  A style a loop cannot serve yet is reported as n/a
with its error, never a crash.  Results: benchmarks/results/results.{json,md} and PNG plots.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import loops as loops_mod  # noqa: E402
import report  # noqa: E402
import stats  # noqa: E402

KIB = 1024
STYLES = ("sock", "streams", "protocol", "bufferedprotocol")
# The streams echo server over TLS (ssl=), outside issue 7's table: there each loop's TLS layer
# is most of the server's work -- asyncio's SSLProtocol, in Python, for uringloop and the stock
# loop; uvloop's own, compiled.  1 KiB and 16 KiB at 10 connections, the load generator built
# with OpenSSL (bin/loadgen-tls); without OpenSSL's headers these points are skipped.
TLS_STYLE = "tls"
TLS_POINTS = ((TLS_STYLE, KIB, 10), (TLS_STYLE, 16 * KIB, 10))
SIZES = (1 * KIB, 16 * KIB, 100 * KIB)
CONNS = (1, 10, 100, 1000)
MICRO = ("call_soon", "timers", "sleep0_tasks", "create_close", "threadsafe", "connect",
         "getaddrinfo", "add_reader")
WORKLOADS = ("echo", "paced", "http", "micro", "syscalls", "memory")
# The memory benchmark's server and load: the Protocol echo server, 1 KiB requests over 10
# connections (issue 7's "RSS after 1M requests").
MEMORY_STYLE = "protocol"
MEMORY_SIZE = 1 * 1024
MEMORY_LOAD_CONNS = 10
# Connections opened, echoed once and closed before the 0-connection RSS is read, so that what
# the first connection initialises once (code paths, caches, free lists) is not charged to the
# idle connections.
MEMORY_WARMUP_CONNS = 16
REFERENCES = ("uvloop", "asyncio")
# The C io_uring floor (benchmarks/uring_echo.c) joins the rounds of the Protocol echo points at
# this size: small messages are where the per-operation cost of a loop shows, and where issue 7
# asks how close uringloop comes to a program with no interpreter.  (At 16 and 100 KiB that
# minimal server -- one buffer per connection, receiving and sending in turn -- bounds nothing:
# uringloop's Protocol server is faster there, so it is not run.)
FLOOR = harness.FLOOR_NAME
FLOOR_STYLE = "protocol"
FLOOR_SIZE = 1 * KIB
# The paced workload: echo at fixed request rates that every loop sustains, measuring what the
# server spends on them -- its CPU time per request and CPU % -- and the latency the client sees.
# Closed-loop throughput hides that cost: uringloop's waits spin before they sleep (Proactor.
# spin_or_wait), which at 1 connection under closed-loop load made its server ~3x faster than
# uvloop's but ~98% busy against ~45%; at a rate below every loop's capacity, the spin either
# catches the next request or is CPU time spent on nothing.  Points: (style, size, conns, rate
# in requests/s over all the connections).
#
# Every rate must be one the stock loop sustains on the benchmark machine (the 2-CPU VM), or
# the loops would not be compared at the same work.  At 1 connection that caps it low: the stock
# loop's Protocol server echoes 10.8-12.5k requests/s closed-loop there (~80 us a round trip,
# latency-bound at ~45% CPU), and paced, each cycle also takes the client's own wake-up (10-50 us
# late in this VM).  So the 20,000 requests/s first planned for 1 connection is out of reach for
# every loop that does not spin.  In probes of 0.8 s (loadgen.c as it is now) the stock loop
# achieved 97.5-100% of 8,000 requests/s (3 runs) and of 10,000 (6 runs): it keeps up on
# average, but falls behind in stretches (of the VM) in which its echoes take 300-400 us, and at
# those rates a stretch of some 20 ms costs requests (see loadgen.c, CATCH_UP_NS).  6,000
# leaves it a margin.  (The region where a 1-connection server's spin finds its next request --
# gaps under its 100 us limit, from ~10k requests/s -- is therefore not compared at 1
# connection; at 10 and 100 connections the server sees a request every 50 and 25 us on
# average.)  The other rates are an eighth to a quarter of the stock loop's closed-loop rate at
# their points (Protocol x 10 157k, x 100 182k; streams x 10 79k), and it achieved them within
# 0.6%.
PACED_POINTS = (
    ("protocol", 1 * KIB, 1, 5000), ("protocol", 1 * KIB, 1, 6000),
    ("protocol", 1 * KIB, 10, 20000), ("protocol", 1 * KIB, 100, 40000),
    ("streams", 1 * KIB, 10, 20000),
)
PACED_METRICS = ("rps", "server_cpu_pct", "cpu_us_per_request", "p50_us", "p99_us")
# A paced run that achieved less than its rate by more than this share did not sustain the rate:
# it is reported as such (not ok, `short`), never averaged with the runs that did.
PACED_SHORTFALL = 0.03
# A load run in which other processes took this much of the server's or the client's CPU is
# repeated once; the extra runs may add at most RETRY_BUDGET of the planned time.
RETRY_DISTURBED_PCT = 25.0
RETRY_BUDGET = 0.10


@dataclasses.dataclass(frozen=True)
class Mode:
    name: str
    echo_points: tuple            # (style, size, conns)
    reps: int
    duration: float               # seconds measured per echo run
    warmup: float                 # seconds of load before the measurement window
    http_conns: tuple
    http_duration: int
    micro_scale: float
    syscall_points: tuple         # (style, size, conns)
    syscall_duration: float
    memory_idle_conns: tuple      # idle connection counts, held together (ascending)
    memory_requests: int          # requests per load run of the memory benchmark
    memory_load_runs: int         # load runs against the same server (growth: last - first)
    paced_points: tuple = ()      # (style, size, conns, rate): the paced workload's points


FULL = Mode(
    name="full",
    echo_points=tuple((s, z, c) for s in STYLES for z in SIZES for c in CONNS) + TLS_POINTS,
    reps=3, duration=2.0, warmup=0.5,
    http_conns=(10, 100), http_duration=3,
    micro_scale=1.0,
    syscall_points=(("sock", KIB, 100), ("protocol", KIB, 100)),
    syscall_duration=2.0,
    memory_idle_conns=(2000, 10000), memory_requests=1_000_000, memory_load_runs=3,
    paced_points=PACED_POINTS,
)

# The quick subset: the points issue 7's headline targets name (1 KiB at 10 and 100 connections
# for sock_* and Protocol, 10 for streams and BufferedProtocol, one large-message point),
# shorter runs, a smaller micro-benchmark scale and aiohttp at 100 connections only.
QUICK = Mode(
    name="quick",
    echo_points=(("sock", KIB, 10), ("sock", KIB, 100),
                 ("streams", KIB, 10),
                 ("protocol", KIB, 10), ("protocol", KIB, 100), ("protocol", 100 * KIB, 1),
                 ("bufferedprotocol", KIB, 10)),
    reps=3, duration=0.8, warmup=0.25,
    http_conns=(100,), http_duration=1,
    micro_scale=0.2,
    syscall_points=(("sock", KIB, 100), ("protocol", KIB, 100)),
    syscall_duration=0.6,
    # Idle connections are cheap to measure (about 2 s per loop and round): the same counts as
    # the full run.  The load runs take a tenth of the requests.
    memory_idle_conns=(2000, 10000), memory_requests=100_000, memory_load_runs=3,
    # Paced: the Protocol server at 1, 10 and 100 connections (one server per loop for all).
    paced_points=(("protocol", KIB, 1, 5000), ("protocol", KIB, 10, 20000),
                  ("protocol", KIB, 100, 40000)),
)

# For the test suite: every code path, minimal time (not a measurement).
SMOKE = Mode(
    name="smoke",
    echo_points=(("sock", KIB, 2), ("protocol", KIB, 2), ("protocol", 16 * KIB, 2),
                 (TLS_STYLE, KIB, 2)),
    reps=1, duration=0.2, warmup=0.05,
    http_conns=(4,), http_duration=1,
    micro_scale=0.01,
    syscall_points=(("sock", KIB, 2),),
    syscall_duration=0.2,
    memory_idle_conns=(20,), memory_requests=2000, memory_load_runs=2,
    paced_points=(("protocol", KIB, 2, 2000),),
)

MODES = {"full": FULL, "quick": QUICK, "smoke": SMOKE}


# ---- progress -------------------------------------------------------------------------------

class Progress:
    """Prints one line per run with elapsed time and an estimate of what is left, from the
    planned cost of each step (seconds of load, plus process start-up)."""

    def __init__(self, total_cost: float, stream=sys.stderr):
        self.total = max(total_cost, 1e-9)
        self.done = 0.0
        self.start = time.monotonic()
        self.stream = stream

    def advance(self, cost: float) -> None:
        self.done += cost

    def say(self, text: str) -> None:
        elapsed = time.monotonic() - self.start
        frac = min(self.done / self.total, 1.0)
        left = elapsed / frac - elapsed if frac > 0.02 else self.total - elapsed
        self.stream.write(f"[{frac * 100:3.0f}% {_clock(elapsed)} ~{_clock(max(left, 0))} left] "
                          f"{text}\n")
        self.stream.flush()


def _clock(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    return f"{seconds // 60}:{seconds % 60:02d}"


# A load run whose first round (every connection completing one request before the clock
# starts: see loadgen.c) took this long says so in the progress line.
FIRST_ROUND_NOTE_S = 0.5


def rotated(loops: list, rnd: int) -> list:
    """The order the loops run in, in round `rnd`: rotated by one each round, so that every loop
    takes every position in turn (with as many rounds as loops, each position once).  A fixed
    order would add the same-signed error to every same-round ratio wherever the machine drifts
    within a round (a previous server's clean-up, frequency, the guest's neighbours), and the
    median of the ratios would not cancel it."""
    k = rnd % len(loops) if loops else 0
    return loops[k:] + loops[:k]


def _measured(run: dict) -> bool:
    """Did the run measure something: ok, or a paced run short of its rate?"""
    return bool(run.get("ok") or run.get("short"))


def paced_verdict(run: dict, rate: float) -> dict:
    """A paced run that achieved less than its rate by more than PACED_SHORTFALL becomes not ok
    and `short`, with its figures kept: the loop could not sustain the rate."""
    if run.get("ok") and run["rps"] < rate * (1 - PACED_SHORTFALL):
        run.update(ok=False, short=True,
                   error=f"could not sustain {report.fmt_rate(rate)} requests/s (achieved "
                         f"{run['rps'] / rate:.0%} of it)")
    return run


def _run_text(run: dict) -> str:
    if not _measured(run):
        return f"FAILED: {run.get('error')}"
    text = (f"{report.fmt_rate(run['rps'])} req/s  p50 {report.fmt_us(run.get('p50_us'))}"
            f"  p99 {report.fmt_us(run.get('p99_us'))}")
    if run.get("short"):
        text = f"SHORT OF THE RATE: {text}"
    if "cpu_us_per_request" in run:
        text += f"  {run['cpu_us_per_request']:.1f} us CPU/request"
    if "server_cpu_pct" in run:
        text += f"  (server CPU {run['server_cpu_pct']:.0f}%"
        others = report.disturbance(run) or 0
        if others >= report.BUSY_PCT:
            text += f", OTHER PROCESSES {others:.0f}%"
        text += ")"
    if run.get("client_cpu_pct", 0) >= report.CLIENT_BOUND_PCT:
        text += f"  [client CPU {run['client_cpu_pct']:.0f}%]"
    if run.get("schedule_restarts"):
        # Requests that left too late for the load generator to catch up (see loadgen.c).
        text += f"  [{run['schedule_restarts']} schedule restarts]"
    if run.get("first_round_s", 0) >= FIRST_ROUND_NOTE_S:
        text += f"  [first round {run['first_round_s']:.1f} s]"
    served = run.get("conns_served")
    if served is not None and "conns" in run and served != run["conns"]:
        text += f"  [{served} of {run['conns']} connections served in the window]"
    return text


# ---- machine description --------------------------------------------------------------------

def _cpu_model() -> str:
    """"AMD EPYC (family 25, model 17), virtual machine" -- a VM often hides the exact name."""
    info = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or "?"
    text = info.get("model name") or platform.processor() or "?"
    if "cpu family" in info and "model" in info:
        text += f" (family {info['cpu family']}, model {info['model']})"
    if "hypervisor" in info.get("flags", "").split():
        text += ", virtual machine"
    return text


def _memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return 0.0


def _git_describe() -> str:
    try:
        head = subprocess.run(["git", "-C", str(harness.REPO_DIR), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(harness.REPO_DIR), "status", "--porcelain",
                                "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "") if head else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def _package_info(name: str) -> dict:
    """Version and location as the child processes see them (same interpreter, same path)."""
    code = ("import json, sys; sys.path.insert(0, %r); import loops; "
            "print(json.dumps(loops.describe(%r)))" % (str(harness.BENCH_DIR), name))
    if name not in loops_mod.LOOP_NAMES:
        code = ("import json, importlib.metadata as m\n"
                "try: print(json.dumps({'version': m.version(%r)}))\n"
                "except Exception as e: print(json.dumps({'error': repr(e)}))" % name)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=harness.child_env(), cwd=str(harness.BENCH_DIR))
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": proc.stderr.strip()[-200:]}


def machine_metadata() -> dict:
    gcc = shutil.which("gcc") or shutil.which("cc")
    gcc_version = (subprocess.run([gcc, "--version"], capture_output=True, text=True,
                                  timeout=10).stdout.splitlines() or ["?"])[0] if gcc else None
    return {
        "started_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "hostname": platform.node(),
        "cpu_model": _cpu_model(),
        "cpus": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "kernel": platform.release(),
        "kernel_version": platform.version(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "python_executable": sys.executable,
        "git": _git_describe(),
        "uringloop_from": "repository (built in place)" if harness.in_tree_uringloop()
                          else "installed package",
        "packages": {name: _package_info(name)
                     for name in ("uringloop", "uvloop", "aiohttp", "matplotlib")},
        "wrk": harness.wrk_version(),
        "gcc": gcc_version,
        "loadgen_build": " ".join(["gcc", *harness.LOADGEN_CFLAGS]),
        "loadavg_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


# ---- the run --------------------------------------------------------------------------------

class Runner:
    def __init__(self, mode: Mode, loops: list[str], out_dir: Path, progress: Progress,
                 command: str, cpus: tuple, floor: bool = True):
        self.mode = mode
        self.loops = loops
        self.floor = floor              # run the C io_uring floor at its points
        self.out_dir = out_dir
        self.log_dir = out_dir / "tmp"
        self.progress = progress
        self.server_cpu, self.client_cpu = cpus
        self.retries_per_run = 1
        self.retry_budget = 0.0         # seconds of extra runs allowed; set from the plan
        self.loop_types: dict = {}
        self.results: dict = {
            "config": {
                "mode": mode.name, "command": command, "loops": loops, "reps": mode.reps,
                "duration": mode.duration, "warmup": mode.warmup,
                "http_duration": mode.http_duration, "micro_scale": mode.micro_scale,
                "references": list(REFERENCES), "floor": floor,
                "retry": {"disturbed_pct": RETRY_DISTURBED_PCT, "budget": RETRY_BUDGET},
                "pinning": {"server": self.server_cpu, "client": self.client_cpu},
                "glibc_tunables": harness.glibc_tunables(),
                "memory": {"idle_conns": list(mode.memory_idle_conns),
                           "requests": mode.memory_requests,
                           "load_runs": mode.memory_load_runs,
                           "load_conns": MEMORY_LOAD_CONNS, "size": MEMORY_SIZE},
                "paced": {"points": [list(p) for p in mode.paced_points],
                          "shortfall_limit": PACED_SHORTFALL},
            },
            "points": [],
            "loop_types": self.loop_types,
        }

    # -- servers --

    def start_servers(self, style: str) -> dict:
        return {lp: self.start_server(lp, style) for lp in self.loops}

    def start_server(self, lp: str, style: str) -> harness.Server:
        """A server of `style` on loop `lp`, pinned and verified to run that loop (n/a with the
        reason otherwise)."""
        server = harness.Server(lp, style).start(self.server_cpu, self.log_dir,
                                                 max_seconds=3600)
        if server.ready:
            expected = FLOOR if lp == FLOOR else loops_mod.EXPECTED_TYPES[lp]
            if server.loop_type != expected:
                server.error = (f"the server runs {server.loop_type}, not {expected}: "
                                "refusing to report it as " + lp)
                server.stop()
            else:
                self.loop_types.setdefault(lp, server.loop_type)
        if server.ready:
            self.progress.say(f"{style} server on {lp}: type(loop) = {server.loop_type}, "
                              f"CPUs {server.cpus}")
        else:
            self.progress.say(f"{style} server on {lp}: n/a - {server.error}")
        return server

    def ensure_alive(self, server: harness.Server) -> harness.Server:
        """A server found dead before a run is replaced by a new one, so that one crash does
        not blank out the rest of the style; the crash is recorded on the run it broke."""
        if server.ready and not server.alive():
            return self.start_server(server.loop, server.style)
        return server

    # -- echo --

    def floor_point(self, style: str, size: int) -> bool:
        return self.floor and style == FLOOR_STYLE and size == FLOOR_SIZE

    def echo_style(self, style: str, points: list, sys_points: list) -> None:
        servers = self.start_servers(style)
        if any(self.floor_point(style, size) for (_, size, _) in points):
            servers[FLOOR] = self.start_server(FLOOR, style)
        try:
            for (_, size, conns) in points:
                self.results["points"].append(self.echo_point(servers, style, size, conns))
            for (_, size, conns) in sys_points:
                self.syscall_point(servers, style, size, conns)
        finally:
            for server in servers.values():
                server.stop()

    def echo_point(self, servers: dict, style: str, size: int, conns: int) -> dict:
        mode = self.mode
        point_loops = self.loops + ([FLOOR] if self.floor_point(style, size) else [])
        runs = self.load_rounds(
            servers, point_loops, f"echo {style} {report.fmt_size(size)} x{conns}",
            lambda server: harness.run_loadgen(server.port, conns, size, mode.duration,
                                               mode.warmup, self.client_cpu,
                                               server_pid=server.pid,
                                               server_cpu=self.server_cpu,
                                               tls=style == TLS_STYLE))
        point = {"workload": "echo", "style": style, "size": size, "conns": conns}
        point["loops"] = self.summarize(runs, ("rps", "p50_us", "p99_us"))
        return point

    def load_rounds(self, servers: dict, point_loops: list, label: str,
                    run_against: Callable[[harness.Server], dict]) -> dict:
        """{loop: [run per round]}: `mode.reps` rounds, each running run_against(server) once
        per loop, in order (see measure).  A server found dead is replaced (see ensure_alive)."""
        mode = self.mode
        runs: dict = {lp: [] for lp in point_loops}
        for rnd in range(mode.reps):
            for lp in rotated(point_loops, rnd):
                server = servers[lp]
                if not server.ready:
                    runs[lp].append({"ok": False, "error": server.error, "na": True})
                    self.progress.advance(self.echo_cost())
                    continue
                if not server.alive():
                    died = (f"the {lp} server exited (status {server.proc.poll()}): "
                            f"{harness._tail(server.log_path)}")
                    self.results.setdefault("server_restarts", []).append(died)
                    self.progress.say(died + " - starting a new one")
                    server = servers[lp] = self.ensure_alive(server)
                    if not server.ready:
                        runs[lp].append({"ok": False, "error": died})
                        continue
                run = self.measure(lambda: run_against(server), self.echo_cost(),
                                   f"{label}  round {rnd + 1}/{mode.reps}  {lp:9}")
                runs[lp].append(run)
        return runs

    def measure(self, run_once, cost: float, label: str) -> dict:
        """One load run; a run that other processes disturbed badly is repeated (once, within
        a budget of extra runs) and the less disturbed attempt is kept.  Every loop gets the
        same treatment, and the kept run records how many attempts it took."""
        run = run_once()
        self.progress.advance(cost)
        self.progress.say(f"{label} {_run_text(run)}")
        attempts = 1
        # A paced run that fell short of its rate while disturbed is repeated too: the
        # disturbance, not the loop, may be why.
        while (_measured(run) and (report.disturbance(run) or 0) >= RETRY_DISTURBED_PCT
               and attempts <= self.retries_per_run and self.retry_budget >= cost):
            self.retry_budget -= cost
            again = run_once()
            attempts += 1
            self.progress.say(f"{label} {_run_text(again)}  (repeated: disturbed)")
            if _measured(again) and (report.disturbance(again) or 0) < report.disturbance(run):
                run = again
        if attempts > 1:
            run["attempts"] = attempts
        return run

    def echo_cost(self) -> float:
        return self.mode.duration + self.mode.warmup + 0.15

    # -- paced load --

    def paced(self) -> None:
        """The paced points, a set of servers per style (as the echo workload has)."""
        points = self.mode.paced_points
        for style in dict.fromkeys(p[0] for p in points):
            servers = self.start_servers(style)
            try:
                for (_, size, conns, rate) in [p for p in points if p[0] == style]:
                    self.results["points"].append(
                        self.paced_point(servers, style, size, conns, rate))
            finally:
                for server in servers.values():
                    server.stop()

    def paced_point(self, servers: dict, style: str, size: int, conns: int,
                    rate: float) -> dict:
        """Echo at `rate` requests/s (loadgen --rate) in rounds like an echo point: per run,
        the rate achieved, the server's CPU time over the window (harness.run_paced_loadgen)
        and the client's latency.  A run short of the rate by more than PACED_SHORTFALL is not
        ok and says so (`short`): it is left out of the medians and ratios."""
        mode = self.mode
        runs = self.load_rounds(
            servers, self.loops,
            f"paced {style} {report.fmt_size(size)} x{conns} at {report.fmt_rate(rate)}/s",
            lambda server: paced_verdict(harness.run_paced_loadgen(
                server.port, conns, size, rate, mode.duration, mode.warmup, self.client_cpu,
                server.pid, self.server_cpu), rate))
        point = {"workload": "paced", "style": style, "size": size, "conns": conns,
                 "rate": rate, "shortfall_limit": PACED_SHORTFALL}
        point["loops"] = self.summarize(runs, PACED_METRICS)
        return point

    def summarize(self, runs: dict, metrics: tuple) -> dict:
        """Per loop: the raw runs, per-metric summaries and same-round ratios, and the error
        that made the loop n/a (when no run succeeded)."""
        runs = {lp: [{k: v for k, v in r.items() if k not in ("conns", "size")} for r in rs]
                for lp, rs in runs.items()}         # the point says those already
        ok_runs = {lp: [r if r.get("ok") else None for r in rs] for lp, rs in runs.items()}
        out = {lp: {"runs": rs, "metrics": {}} for lp, rs in runs.items()}
        references = REFERENCES + ((FLOOR,) if FLOOR in runs else ())
        for metric in metrics:
            per_loop = stats.summarize_point(ok_runs, metric, references)
            for lp, entry in per_loop.items():
                out[lp]["metrics"][metric] = entry
        for lp, rs in runs.items():
            errors = [r.get("error") for r in rs if not r.get("ok")]
            if errors and len(errors) == len(rs):
                out[lp]["error"] = errors[0]
            elif errors:
                out[lp]["partial_errors"] = errors
        return out

    # -- system calls --

    def syscall_point(self, servers: dict, style: str, size: int, conns: int) -> None:
        method, description = self.syscall_method
        if method is None:
            return
        sc = self.results.setdefault("syscalls", {"method": method,
                                                  "method_description": description,
                                                  "points": []})
        point = {"style": style, "size": size, "conns": conns, "loops": {}}
        sc["points"].append(point)
        for lp in self.loops:
            server = servers[lp]
            if not server.ready or not server.alive():
                point["loops"][lp] = {"error": server.error or "the server is not running"}
                self.progress.advance(self.mode.syscall_duration + 0.7)
                continue
            counted = harness.count_syscalls(
                method, server.pid,
                lambda: harness.run_loadgen(server.port, conns, size,
                                            self.mode.syscall_duration, 0.0, self.client_cpu),
                self.log_dir)
            self.progress.advance(self.mode.syscall_duration + 0.7)
            run = counted.get("run") or {}
            if counted.get("error") or not run.get("ok"):
                err = counted.get("error") or run.get("error")
                point["loops"][lp] = {"error": err}
                self.progress.say(f"syscalls {style} {report.fmt_size(size)} x{conns}  {lp:9} "
                                  f"FAILED: {err}")
                continue
            requests = run["total_requests"]
            by_name = dict(sorted(counted["by_name"].items(), key=lambda kv: -kv[1]))
            entry = {"total": counted["total"], "requests": requests,
                     "per_request": counted["total"] / requests, "by_name": by_name,
                     "top_per_request": {k: v / requests for k, v in list(by_name.items())[:4]},
                     "run": run}
            point["loops"][lp] = entry
            self.progress.say(f"syscalls {style} {report.fmt_size(size)} x{conns}  {lp:9} "
                              f"{entry['per_request']:.3f} per request "
                              f"({counted['total']} syscalls / {requests} requests)")

    @property
    def syscall_method(self) -> tuple:
        if not hasattr(self, "_syscall_method"):
            self._syscall_method = harness.syscall_method()
        return self._syscall_method

    # -- HTTP --

    def http(self) -> None:
        mode = self.mode
        if harness.wrk_path() is None:
            msg = ("wrk is not installed, so the aiohttp benchmark was skipped: install it with "
                   "`apt-get update && apt-get install wrk` (Debian/Ubuntu package wrk)")
            self.results["http_skipped"] = msg
            self.progress.say("HTTP: SKIPPED - " + msg)
            return
        servers = self.start_servers("http")
        try:
            for lp, server in servers.items():
                if server.ready:
                    problem = harness.check_http(server.port)
                    if problem:
                        server.error = f"aiohttp server answered wrongly: {problem}"
                        server.stop()
                    else:           # warm-up, not recorded
                        harness.run_wrk(server.port, max(mode.http_conns), 1, self.client_cpu)
                        self.progress.advance(1.2)
            for conns in mode.http_conns:
                runs: dict = {lp: [] for lp in self.loops}
                for rnd in range(mode.reps):
                    for lp in rotated(self.loops, rnd):
                        server = servers[lp]
                        if not server.ready:
                            runs[lp].append({"ok": False, "error": server.error, "na": True})
                            self.progress.advance(mode.http_duration + 0.2)
                            continue
                        if not server.alive():
                            runs[lp].append({"ok": False, "error": f"the {lp} server exited"})
                            continue
                        run = self.measure(
                            lambda: harness.run_wrk(server.port, conns, mode.http_duration,
                                                    self.client_cpu, server_pid=server.pid,
                                                    server_cpu=self.server_cpu),
                            mode.http_duration + 0.2,
                            f"aiohttp x{conns}  round {rnd + 1}/{mode.reps}  {lp:9}")
                        runs[lp].append(run)
                point = {"workload": "http", "style": "aiohttp", "conns": conns}
                point["loops"] = self.summarize(runs, ("rps", "p50_us", "p99_us"))
                self.results["points"].append(point)
        finally:
            for server in servers.values():
                server.stop()

    # -- micro-benchmarks --

    def micro(self) -> None:
        mode = self.mode
        runs: dict = {name: {lp: [] for lp in self.loops} for name in MICRO}
        work: dict = {}
        for rnd in range(mode.reps):
            for lp in rotated(self.loops, rnd):
                res = self.run_micro_process(lp)
                self.progress.advance(self.micro_cost())
                others = res.get("cpu_other_pct", 0)
                if others >= RETRY_DISTURBED_PCT and self.retry_budget >= self.micro_cost():
                    self.retry_budget -= self.micro_cost()
                    self.progress.say(f"micro  round {rnd + 1}/{mode.reps}  {lp:9} disturbed "
                                      f"(other processes {others:.0f}%): repeated")
                    again = self.run_micro_process(lp)
                    if again.get("cpu_other_pct", 0) < others and again.get("results"):
                        res = again
                    res["attempts"] = 2
                if "loop_type" in res and res.get("loop_type") != loops_mod.EXPECTED_TYPES[lp]:
                    res = {"errors": {"*": f"ran {res['loop_type']}, not "
                                           f"{loops_mod.EXPECTED_TYPES[lp]}"}}
                parts = []
                for name in MICRO:
                    r = res.get("results", {}).get(name)
                    err = res.get("errors", {}).get(name) or res.get("errors", {}).get("*")
                    if r:
                        run = {"ok": True, "seconds": r["seconds"]}
                        for key in ("cpu_other_pct", "attempts"):
                            if key in res:
                                run[key] = res[key]
                        runs[name][lp].append(run)
                        work[name] = r["ops"]
                        parts.append(f"{name} {report.fmt_seconds(r['seconds'])}")
                    else:
                        runs[name][lp].append({"ok": False, "error": err or "no result"})
                        parts.append(f"{name} n/a")
                if res.get("cpu_other_pct", 0) >= report.BUSY_PCT:
                    parts.append(f"OTHER PROCESSES {res['cpu_other_pct']:.0f}%")
                self.progress.say(f"micro  round {rnd + 1}/{mode.reps}  {lp:9} "
                                  + ", ".join(parts))
        units = {"call_soon": "callbacks", "timers": "timers", "sleep0_tasks": "task steps",
                 "create_close": "loops", "threadsafe": "callbacks from a thread",
                 "connect": "connections", "getaddrinfo": "lookups",
                 "add_reader": "round trips"}
        for name in MICRO:
            point = {"workload": "micro", "name": name,
                     "work": f"{work.get(name, 0):,} {units[name]}"}
            point["loops"] = self.summarize(runs[name], ("seconds",))
            self.results["points"].append(point)

    def micro_cost(self) -> float:
        return 0.3 + 2.5 * self.mode.micro_scale

    def run_micro_process(self, lp: str) -> dict:
        cmd = [sys.executable, str(harness.BENCH_DIR / "micro.py"), "--loop", lp,
               "--scale", str(self.mode.micro_scale)]
        if self.server_cpu is not None:
            cmd += ["--cpu", str(self.server_cpu)]
        out: dict = {}

        def run_process() -> dict:
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                                      env=harness.child_env(), cwd=str(harness.BENCH_DIR))
            except subprocess.TimeoutExpired:
                return {"errors": {"*": "the micro-benchmark process timed out"}}
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            if not lines:
                return {"errors": {"*": f"exit status {proc.returncode}: "
                                        f"{proc.stderr.strip()[-300:]}"}}
            return json.loads(lines[-1])

        # The micro-benchmark process runs on the server CPU: measure what others took of it.
        usage = harness.with_cpu_usage(None, None, lambda: out.update(run_process()) or {},
                                       client_cpu=self.server_cpu)
        if "client_cpu_other_pct" in usage:
            out["cpu_other_pct"] = usage["client_cpu_other_pct"]
        return out

    # -- memory --

    def memory(self) -> None:
        """Issue 7's memory row: RSS per idle connection, and RSS after repeated runs of a fixed
        number of requests (growth across the runs)."""
        mem = self.results.setdefault("memory", {
            "style": MEMORY_STYLE, "warmup_conns": MEMORY_WARMUP_CONNS,
            "idle": [], "load": None})
        mem["idle"] = self.memory_idle()
        mem["load"] = self.memory_load()

    def memory_idle(self) -> list:
        """Per round and loop, a fresh server: its RSS with no connection (after a few warm-up
        connections came and went), then with each count of idle connections, held together
        (2000, then 8000 more for 10000).  Bytes per connection: (RSS with N - RSS with 0) / N.
        A fresh server per round, because memory freed by an earlier round's connections would
        be reused by the next and make connections look cheaper."""
        counts = sorted(self.mode.memory_idle_conns)
        runs: dict = {n: {lp: [] for lp in self.loops} for n in counts}
        for rnd in range(self.mode.reps):
            for lp in rotated(self.loops, rnd):
                per_count = self.memory_idle_once(lp)
                self.progress.advance(self.memory_idle_cost())
                for n in counts:
                    runs[n][lp].append(per_count[n])
                label = f"memory idle  round {rnd + 1}/{self.mode.reps}  {lp:9}"
                first = per_count[counts[0]]
                if first.get("ok"):
                    self.progress.say(
                        f"{label} RSS {report.fmt_bytes(first['rss0'])} with no connection; "
                        + ", ".join(f"{n} conns {report.fmt_bytes(per_count[n]['rss'])} = "
                                    f"{per_count[n]['bytes_per_conn']:,.0f} B/conn"
                                    if per_count[n].get("ok") else
                                    f"{n} conns FAILED: {per_count[n]['error']}"
                                    for n in counts))
                else:
                    self.progress.say(f"{label} FAILED: {first.get('error')}")
        points = []
        for n in counts:
            point = {"conns": n, "loops": self.summarize(runs[n], ("bytes_per_conn",))}
            points.append(point)
        return points

    def memory_idle_once(self, lp: str) -> dict:
        """{N: run} for one fresh server of loop `lp`; a run is ok with rss0, rss (bytes) and
        bytes_per_conn, or not ok with the error."""
        counts = sorted(self.mode.memory_idle_conns)
        server = self.start_server(lp, MEMORY_STYLE)
        held = None
        out: dict = {}
        try:
            if not server.ready:
                return {n: {"ok": False, "error": server.error, "na": True} for n in counts}
            try:
                warm = harness.IdleConnections(server.port)
                try:
                    warm.grow_to(MEMORY_WARMUP_CONNS)
                finally:
                    warm.close()
                time.sleep(0.2)             # let the server see the closes
                before = harness.read_rss(server.pid)
                held = harness.IdleConnections(server.port)
                for n in counts:
                    held.grow_to(n)
                    time.sleep(0.1)
                    after = harness.read_rss(server.pid)
                    if before is None or after is None:
                        raise harness.HarnessError(f"the {lp} server exited")
                    out[n] = {"ok": True, "rss0": before["vm_rss"], "rss": after["vm_rss"],
                              "bytes_per_conn": (after["vm_rss"] - before["vm_rss"]) / n,
                              "rss_anon0": before.get("rss_anon"),
                              "rss_anon": after.get("rss_anon")}
                return out
            except harness.HarnessError as exc:
                # The counts measured before the failure stand.
                return {n: out.get(n) or {"ok": False, "error": str(exc)} for n in counts}
        finally:
            if held is not None:
                held.close()
            server.stop()

    def memory_load(self) -> dict:
        """One server per loop; `memory_load_runs` runs of exactly `memory_requests` echo
        requests (1 KiB, 10 connections, the C load generator), the loops interleaved run by
        run; the server's RSS before the first run and after each.  Growth: RSS after the last
        run - RSS after the first (the first run's allocations -- buffers, free lists -- are
        the steady state, not growth)."""
        mode = self.mode
        servers = self.start_servers(MEMORY_STYLE)
        runs: dict = {lp: [] for lp in self.loops}
        before: dict = {}
        try:
            for lp, server in servers.items():
                rss = harness.read_rss(server.pid) if server.ready else None
                if rss:
                    before[lp] = rss["vm_rss"]
            for i in range(mode.memory_load_runs):
                for lp in self.loops:
                    server = servers[lp]
                    label = (f"memory load  run {i + 1}/{mode.memory_load_runs}  {lp:9} "
                             f"{mode.memory_requests:,} requests")
                    if not server.ready:
                        runs[lp].append({"ok": False, "error": server.error, "na": True})
                        self.progress.advance(self.memory_load_cost())
                        continue
                    if not server.alive():
                        # Never replaced: a new process would reset the RSS being followed.
                        runs[lp].append({"ok": False, "error": f"the {lp} server exited"})
                        self.progress.advance(self.memory_load_cost())
                        continue
                    run = harness.run_loadgen(server.port, MEMORY_LOAD_CONNS, MEMORY_SIZE,
                                              1.0, 0.0, self.client_cpu,
                                              server_pid=server.pid, server_cpu=self.server_cpu,
                                              requests=mode.memory_requests)
                    self.progress.advance(self.memory_load_cost())
                    if run.get("ok") and run.get("total_requests") != mode.memory_requests:
                        run.update(ok=False, error=f"{run.get('total_requests')} requests "
                                                   f"completed, not {mode.memory_requests}")
                    time.sleep(0.2)         # let the server see the load generator's closes
                    rss = harness.read_rss(server.pid)
                    if run.get("ok") and rss is None:
                        run.update(ok=False, error=f"the {lp} server exited")
                    if run.get("ok"):
                        run["rss"] = rss["vm_rss"]
                        run["rss_anon"] = rss.get("rss_anon")
                        self.progress.say(f"{label} at {report.fmt_rate(run['rps'])} req/s: "
                                          f"RSS {report.fmt_bytes(run['rss'])}")
                    else:
                        self.progress.say(f"{label} FAILED: {run.get('error')}")
                    runs[lp].append(run)
        finally:
            for server in servers.values():
                server.stop()
        point = {"requests_per_run": mode.memory_requests, "runs": mode.memory_load_runs,
                 "conns": MEMORY_LOAD_CONNS, "size": MEMORY_SIZE,
                 "loops": self.summarize(runs, ("rss",))}
        for lp, entry in point["loops"].items():
            if lp in before:
                entry["rss_before"] = before[lp]
            rss = [r.get("rss") if r.get("ok") else None for r in runs[lp]]
            if len(rss) >= 2 and all(v is not None for v in rss):
                entry["growth"] = rss[-1] - rss[0]
                entry["growth_per_request"] = entry["growth"] / (
                    mode.memory_requests * (len(rss) - 1))
        return point

    def memory_idle_cost(self) -> float:
        return 0.6 + max(self.mode.memory_idle_conns) / 10000 * 1.2

    def memory_load_cost(self) -> float:
        return 0.3 + self.mode.memory_requests / 60000

    # -- plan --

    def planned_cost(self, do_echo, do_http, do_micro, do_sys, do_memory=False,
                     do_paced=False) -> float:
        n = len(self.loops)
        cost = 0.0
        if do_echo:
            cost += len(self.mode.echo_points) * self.mode.reps * n * self.echo_cost()
            floor_points = [p for p in self.mode.echo_points if self.floor_point(p[0], p[1])]
            cost += len(floor_points) * self.mode.reps * self.echo_cost()
        if do_paced:
            cost += len(self.mode.paced_points) * self.mode.reps * n * self.echo_cost()
        if do_sys:
            cost += len(self.mode.syscall_points) * n * (self.mode.syscall_duration + 0.7)
        if do_http:
            cost += n * 1.2 + len(self.mode.http_conns) * self.mode.reps * n * (
                self.mode.http_duration + 0.2)
        if do_micro:
            cost += self.mode.reps * n * self.micro_cost()
        if do_memory:
            cost += self.mode.reps * n * self.memory_idle_cost()
            cost += self.mode.memory_load_runs * n * self.memory_load_cost()
        return cost


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark uringloop against uvloop and the stock asyncio loop.",
        epilog="Results go to benchmarks/results/ (results.json, results.md, *.png); server "
               "logs and counter output to benchmarks/results/tmp/.")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true",
                       help="the headline subset in about 3 minutes (default: the full matrix)")
    group.add_argument("--smoke", action="store_true",
                       help="a few seconds through every code path (for the test suite; the "
                            "figures mean nothing)")
    parser.add_argument("--loops", nargs="+", choices=loops_mod.LOOP_NAMES,
                        default=list(loops_mod.LOOP_NAMES),
                        help="loops to compare, in the order each round runs them")
    parser.add_argument("--only", nargs="+", choices=WORKLOADS,
                        help="run only these workloads")
    parser.add_argument("--styles", nargs="+", choices=STYLES + (TLS_STYLE,),
                        help="echo styles to run (default: those of the mode)")
    parser.add_argument("--sizes", nargs="+", type=int, metavar="KIB",
                        help="echo message sizes in KiB (with --conns/--styles: the matrix to "
                             "run instead of the mode's points)")
    parser.add_argument("--conns", nargs="+", type=int, metavar="N",
                        help="echo connection counts (see --sizes)")
    parser.add_argument("--reps", type=int, help="rounds per point (at least 3 for results "
                                                 "worth quoting)")
    parser.add_argument("--duration", type=float, help="seconds measured per echo run")
    parser.add_argument("--idle-conns", nargs="+", type=int, metavar="N",
                        help="memory: idle connection counts to measure (default: those of "
                             "the mode)")
    parser.add_argument("--memory-requests", type=int, metavar="N",
                        help="memory: echo requests per load run (default: 1,000,000; "
                             "--quick 100,000)")
    parser.add_argument("--no-floor", action="store_true",
                        help="leave out the C io_uring echo server (benchmarks/uring_echo.c) "
                             "that is measured beside the loops at the 1 KiB Protocol points")
    parser.add_argument("--keep-rep-movsb", action="store_true",
                        help="run the servers with glibc's default memcpy (by default they run "
                             "with `rep movsb` kept out of copies: see harness.REP_MOVSB_TUNABLE)")
    parser.add_argument("--keep-malloc-thresholds", action="store_true",
                        help="run the servers with glibc's default (dynamic) malloc trim and mmap "
                             "thresholds (by default they run with both fixed: see "
                             "harness.MALLOC_TUNABLES)")
    parser.add_argument("--output", type=Path, default=None,
                        help="directory for the results (default: benchmarks/results; "
                             "benchmarks/results/tmp/smoke for --smoke)")
    return parser.parse_args(argv)


def _clear_logs(log_dir: Path) -> None:
    """Remove the previous run's server logs and counter output (only files this harness
    writes there), which would only confuse."""
    if not log_dir.is_dir():
        return
    for path in log_dir.glob("server-*.log"):
        path.unlink()
    for path in log_dir.glob("syscalls-*"):
        shutil.rmtree(path, ignore_errors=True)


def _terminate(signum, frame):
    # SIGTERM ends the run like Ctrl-C: through main's finally, which stops every server.
    raise KeyboardInterrupt


def main(argv=None) -> int:
    args = parse_args(argv)
    mode = QUICK if args.quick else SMOKE if args.smoke else FULL
    overrides = {}
    if args.reps:
        overrides["reps"] = args.reps
    if args.duration:
        overrides["duration"] = args.duration
    if args.idle_conns:
        overrides["memory_idle_conns"] = tuple(sorted(set(args.idle_conns)))
    if args.memory_requests:
        overrides["memory_requests"] = args.memory_requests
    if args.sizes or args.conns:
        # An explicit matrix: the styles (default all) x these sizes x these counts.
        overrides["echo_points"] = tuple(
            (st, kib * KIB, c) for st in (args.styles or STYLES)
            for kib in (args.sizes or [z // KIB for z in SIZES]) for c in (args.conns or CONNS))
    elif args.styles:
        overrides["echo_points"] = tuple(p for p in mode.echo_points if p[0] in args.styles)
    if args.styles:
        overrides["syscall_points"] = tuple(p for p in mode.syscall_points
                                            if p[0] in args.styles)
    mode = dataclasses.replace(mode, **overrides)
    if args.output is None:
        args.output = harness.BENCH_DIR / "results" / ("tmp/smoke" if args.smoke else "")
    only = set(args.only or WORKLOADS)
    command = "python3 benchmarks/run.py" + (" " + " ".join(argv if argv is not None
                                                             else sys.argv[1:])).rstrip()

    def log(text):
        sys.stderr.write(text + "\n")
        sys.stderr.flush()

    signal.signal(signal.SIGTERM, _terminate)
    harness.avoid_rep_movsb = not args.keep_rep_movsb
    harness.fix_malloc_thresholds = not args.keep_malloc_thresholds
    cpus = harness.pinning()            # before narrowing our own affinity below
    if cpus[1] is not None:
        # This process mostly waits, but keep even that off the server's CPU.
        os.sched_setaffinity(0, {cpus[1]})

    started = time.monotonic()
    _clear_logs(args.output / "tmp")
    try:
        harness.build_loadgen(log)
    except harness.HarnessError as exc:
        log(f"error: {exc}")
        return 2
    if "echo" in only and any(p[0] == TLS_STYLE for p in mode.echo_points):
        try:
            harness.build_loadgen_tls(log)
        except harness.HarnessError as exc:
            log(f"WARNING: the TLS echo points will be skipped: {exc}")
            mode = dataclasses.replace(mode, echo_points=tuple(
                p for p in mode.echo_points if p[0] != TLS_STYLE))
    floor = not args.no_floor
    if floor:
        try:
            harness.build_floor(log)
        except harness.HarnessError as exc:
            # A reference, not a loop under test: the run goes on without it.
            log(f"WARNING: the C io_uring floor will not be measured: {exc}")
            floor = False
    meta = machine_metadata()
    progress = Progress(0)
    runner = Runner(mode, args.loops, args.output, progress, command, cpus, floor)
    progress.total = runner.planned_cost("echo" in only, "http" in only, "micro" in only,
                                         "syscalls" in only, "memory" in only, "paced" in only)
    runner.retry_budget = RETRY_BUDGET * progress.total
    runner.results["meta"] = meta
    log(f"uringloop benchmark, {mode.name} mode: loops {' '.join(args.loops)}, {mode.reps} "
        f"rounds per point, about {_clock(progress.total)} of load")
    log(f"machine: {meta['cpu_model']}, {meta['cpus']} CPUs, kernel {meta['kernel']}, Python "
        f"{meta['python']}; server on CPU {runner.server_cpu}, load generator on CPU "
        f"{runner.client_cpu}; uringloop from the {meta['uringloop_from']}")
    if mode.reps < 3:
        log(f"note: {mode.reps} round(s) per point: fine for a try-out, not for figures to quote "
            "(use at least 3)")
    if "syscalls" in only:
        if runner.syscall_method[0]:
            log(f"system calls counted with: {runner.syscall_method[1]}")
        else:
            log(f"WARNING: system calls will not be counted: {runner.syscall_method[1]} "
                "(apt-get install linux-perf, or strace)")
            only.discard("syscalls")
            runner.results["syscalls"] = {"skipped": runner.syscall_method[1]}
    if "http" in only and harness.wrk_path() is None:
        log("WARNING: wrk is not installed: the aiohttp benchmark will be skipped. Install it "
            "with `apt-get update && apt-get install wrk`.")

    interrupted = False
    try:
        styles = list(dict.fromkeys(
            [p[0] for p in mode.echo_points if "echo" in only]
            + [p[0] for p in mode.syscall_points if "syscalls" in only]))
        for style in styles:
            runner.echo_style(
                style,
                [p for p in mode.echo_points if p[0] == style] if "echo" in only else [],
                [p for p in mode.syscall_points if p[0] == style] if "syscalls" in only else [])
        if "paced" in only:
            runner.paced()
        if "http" in only:
            runner.http()
        if "micro" in only:
            runner.micro()
        if "memory" in only:
            runner.memory()
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: stopping the servers and writing the partial results")
    finally:
        harness.stop_all()
    runner.results["interrupted"] = interrupted
    runner.results["server_processes"] = harness.started
    meta["elapsed_s"] = time.monotonic() - started
    meta["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    written = report.write_all(runner.results, args.output)
    default_output = args.output.resolve() == (harness.BENCH_DIR / "results").resolve()
    if default_output and not interrupted and mode.name != "smoke":
        if report.update_readme(runner.results, harness.BENCH_DIR / "README.md", args.output):
            written.append(harness.BENCH_DIR / "README.md")
    log(f"done in {_clock(meta['elapsed_s'])}; wrote " + ", ".join(str(p) for p in written))
    print(report.render_markdown(runner.results))
    return 130 if interrupted else 0


if __name__ == "__main__":
    import bootstrap  # noqa: E402  (first run on a fresh machine: venv, packages, wrk)
    bootstrap.ensure_environment(sys.argv[1:])
    sys.exit(main())
