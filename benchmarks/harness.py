"""The processes a benchmark run drives: servers, the C load generator, wrk, the syscall counter.

Every process started here is bounded: servers end when their stdin closes (and after a maximum
lifetime), clients run under a timeout, and `stop_all()` -- called from run.py's `finally`, from
atexit and on SIGTERM -- kills whatever is left, by process group.  Nothing outlives a run.
"""

from __future__ import annotations

import atexit
import dataclasses
import importlib.machinery
import json
import os
import re
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Callable, Optional

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
BIN_DIR = BENCH_DIR / "bin"
LOADGEN_SRC = BENCH_DIR / "loadgen.c"
LOADGEN = BIN_DIR / "loadgen"
LOADGEN_CFLAGS = ["-O2", "-Wall", "-Wextra"]
# The same source built with --tls (see loadgen.c): it links OpenSSL, so it is a binary of its
# own, and the plain load generator, which every other point uses, stays as it was.
LOADGEN_TLS = BIN_DIR / "loadgen-tls"
LOADGEN_TLS_FLAGS = ("-DLOADGEN_TLS",)
LOADGEN_TLS_LIBS = ("-lssl", "-lcrypto")
# The floor: a minimal C echo server on io_uring (see uring_echo.c), measured beside the loops at
# the small-message Protocol points.  Run.py treats it as one more server under this name.
FLOOR_NAME = "c-io_uring"
FLOOR_SRC = BENCH_DIR / "uring_echo.c"
FLOOR = BIN_DIR / "uring_echo"

SERVER_CPU = 0
CLIENT_CPU = 1


class HarnessError(RuntimeError):
    pass


# ---- the environment of the child processes ------------------------------------------------

def in_tree_uringloop() -> bool:
    """Is there a uringloop built in place (setup.py build_ext --inplace) for this Python?"""
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    return (REPO_DIR / "uringloop" / f"_ops{suffix}").exists()


_compiled_in_tree = False


def compile_in_tree() -> None:
    """Write the bytecode of the in-tree package's Python modules, once per run.

    The children run with PYTHONDONTWRITEBYTECODE (they must not litter the tree as they go), so
    without this every server would compile uringloop's .py files from source at start-up while
    uvloop and asyncio load theirs from bytecode made at installation.  The compiler's memory
    stays in the server's heap: it showed as ~0.6 MiB more RSS than uvloop's before any
    connection (measured with the Protocol server, Python 3.11), charged to the loop."""
    global _compiled_in_tree
    if not _compiled_in_tree:
        import compileall
        compileall.compile_dir(str(REPO_DIR / "uringloop"), maxlevels=0, quiet=1)
        _compiled_in_tree = True


# glibc's memcpy/memmove copy anything above ~2 KiB with `rep movsb` on CPUs that advertise fast
# string moves (ERMS/FSRM).  On AMD Zen 3 (this project's benchmark machine: EPYC, family 25,
# glibc 2.36) `rep movsb` runs ~9x slower when the destination lies a few bytes after the
# source modulo 4096: copying 64 KiB took 44-45 us instead of 5 us in a Python loop of
# bytearray slices (`bytearray[:n]` of a 64 KiB buffer, whose copy malloc placed 64 KiB + 16
# bytes further on).  Which copies hit that depends on where the heap puts each object, so a
# server's rate turned on luck: BufferedProtocol echo at 100 KiB x 1, whose every request
# copies the received chunk (servers.py), ran at 0.60x the same server's rate after an
# unrelated change to when transports free what they wrote.  The servers of every loop and
# the micro-benchmarks therefore run with `rep movsb` kept out of copies below 1 GiB (glibc
# then uses its vector loop, and non-temporal stores from its usual threshold on); the run
# records it, and --keep-rep-movsb measures with glibc's default.
REP_MOVSB_TUNABLE = "glibc.cpu.x86_rep_movsb_threshold=1073741824"
avoid_rep_movsb = True      # set by run.py from --keep-rep-movsb

# glibc's malloc gives memory at the top of its heap back to the kernel (trims it) once more
# than M_TRIM_THRESHOLD is free there -- 128 KiB until its "dynamic threshold" raises it, which
# happens the first time the process frees a chunk big enough to have been mmap()ed (mmap
# threshold 128 KiB, raised to that chunk's size, the trim threshold to twice it).  A 100 KiB
# echo allocates and frees a few hundred KiB per request at the heap top (the received bytes,
# the StreamReader's buffer, the bytes read() returns), so a process whose thresholds were never
# raised trims and regrows its heap every request and takes a page fault on every page it
# touches: streams 100 KiB x 10 measured 25-29 minor faults per request in uringloop's, uvloop's
# and the stock loop's servers alike (12k req/s for each), 0.02-0.03 per request with the
# thresholds fixed (18-23k req/s).  Whether a server had crossed that line depended on what it
# had happened to allocate before -- one of the points' earlier sizes, a burst that left more
# than 128 KiB in a StreamReader -- so two processes of the same build measured 0.80x each
# other, and a point's ratio turned on which loop's server had been lucky.  Every child
# therefore runs with the thresholds fixed where glibc's own adjustment would put them after a
# 4 MiB buffer had been freed; --keep-malloc-thresholds measures with glibc's defaults.
MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=4194304:glibc.malloc.trim_threshold=8388608"
fix_malloc_thresholds = True    # set by run.py from --keep-malloc-thresholds


def glibc_tunables() -> Optional[str]:
    """The GLIBC_TUNABLES the children run with (None: glibc's defaults)."""
    parts = [os.environ["GLIBC_TUNABLES"]] if os.environ.get("GLIBC_TUNABLES") else []
    if avoid_rep_movsb:
        parts.append(REP_MOVSB_TUNABLE)
    if fix_malloc_thresholds:
        parts.append(MALLOC_TUNABLES)
    return ":".join(parts) or None


def child_env() -> dict:
    """Servers and micro-benchmarks import uringloop from the repository when it is built in
    place there (a developer's tree), otherwise from wherever it is installed."""
    env = dict(os.environ)
    if in_tree_uringloop():
        compile_in_tree()
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO_DIR)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    tunables = glibc_tunables()
    if tunables:
        env["GLIBC_TUNABLES"] = tunables
    return env


def cpus_available() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def pinning() -> tuple[Optional[int], Optional[int]]:
    """(server CPU, client CPU): the first two CPUs this process may use; no pinning where
    there is only one."""
    cpus = cpus_available()
    if len(cpus) < 2:
        return None, None
    return cpus[0], cpus[1]


# ---- building the load generator -----------------------------------------------------------

def build_loadgen(log: Callable[[str], None]) -> Path:
    """Compile loadgen.c into benchmarks/bin/ unless an up-to-date binary is there."""
    return _build(LOADGEN_SRC, LOADGEN, "the load generator", log)


def build_loadgen_tls(log: Callable[[str], None]) -> Path:
    """Compile loadgen.c with TLS (OpenSSL) into benchmarks/bin/loadgen-tls likewise; a
    HarnessError names what is missing (OpenSSL's headers: apt-get install libssl-dev)."""
    try:
        return _build(LOADGEN_SRC, LOADGEN_TLS, "the TLS load generator", log,
                      LOADGEN_TLS_FLAGS, LOADGEN_TLS_LIBS)
    except HarnessError as exc:
        raise HarnessError(f"{exc}\n(the TLS load generator needs OpenSSL's headers and "
                           "libraries: apt-get install libssl-dev)") from None


def build_floor(log: Callable[[str], None]) -> Path:
    """Compile uring_echo.c (the C io_uring floor) into benchmarks/bin/ likewise."""
    return _build(FLOOR_SRC, FLOOR, "the C io_uring echo server", log)


def _build(src: Path, binary: Path, what: str, log: Callable[[str], None],
           flags: tuple = (), libs: tuple = ()) -> Path:
    if binary.exists() and binary.stat().st_mtime >= src.stat().st_mtime:
        return binary
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise HarnessError(f"no C compiler: install gcc (apt-get install gcc) to build "
                           f"{what}, benchmarks/{src.name}")
    BIN_DIR.mkdir(parents=True, exist_ok=True)
    cmd = [cc, *LOADGEN_CFLAGS, *flags, "-o", str(binary), str(src), *libs]
    log(f"building {what}: {' '.join(cmd)}")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 or proc.stderr.strip():
        # Warnings count as failures: the build must stay warning-free.
        raise HarnessError(f"building {binary.name} failed:\n{proc.stderr}")
    return binary


# ---- servers --------------------------------------------------------------------------------

_live: set = set()
started: list = []          # every server process started in this run: {"loop", "style", "pid"}


@dataclasses.dataclass(eq=False)
class Server:
    loop: str
    style: str
    requested_port: int = 0
    proc: Optional[subprocess.Popen] = None
    port: Optional[int] = None
    pid: Optional[int] = None
    loop_type: Optional[str] = None
    cpus: Optional[list] = None         # the server's CPU affinity, as it reported it
    error: Optional[str] = None
    log_path: Optional[Path] = None
    # Another checkout, with its extension built in place, whose servers.py and uringloop this
    # server runs instead of this one's (alternate.py's comparisons of two builds).
    tree: Optional[Path] = None
    # A command the server runs under (instructions.py's valgrind), and variables for its
    # environment on top of child_env()'s.
    wrapper: tuple = ()
    extra_env: Optional[dict] = None

    @property
    def ready(self) -> bool:
        return self.error is None and self.port is not None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, cpu: Optional[int], log_dir: Path, max_seconds: float,
              ready_timeout: float = 30.0) -> "Server":
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"server-{self.style}-{self.loop}.log"
        bench_dir = BENCH_DIR if self.tree is None else self.tree / "benchmarks"
        if self.loop == FLOOR_NAME:
            # One echo server whatever the style: it has no styles.
            cmd = [str(FLOOR), "--max-seconds", str(int(max_seconds)),
                   "--port", str(self.requested_port)]
        else:
            cmd = [sys.executable, str(bench_dir / "servers.py"), "--loop", self.loop,
                   "--style", self.style, "--max-seconds", str(int(max_seconds)),
                   "--port", str(self.requested_port)]
        if cpu is not None:
            cmd += ["--cpu", str(cpu)]
        cmd = [*self.wrapper, *cmd]
        env = child_env()
        if self.tree is not None:
            env["PYTHONPATH"] = str(self.tree)
        env.update(self.extra_env or {})
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=log, env=env, cwd=str(bench_dir),
                                         start_new_session=True)
        _live.add(self)
        started.append({"loop": self.loop, "style": self.style, "pid": self.proc.pid,
                        "cpu": cpu})
        line = _read_line(self.proc, ready_timeout)
        try:
            info = json.loads(line) if line else None
        except ValueError:
            info = None
        if not info:
            self.error = (f"the server printed no ready line within {ready_timeout:.0f} s "
                          f"(exit status {self.proc.poll()}); see {self.log_path}: "
                          f"{_tail(self.log_path)}")
            self.stop()
            return self
        self.loop_type = info.get("loop_type")
        if not info.get("ready"):
            self.error = info.get("error") or "the server could not start"
            self.stop()
            return self
        self.port, self.pid, self.cpus = info["port"], info["pid"], info.get("cpus")
        if cpu is not None and self.cpus != [cpu]:
            self.error = f"the server is not pinned to CPU {cpu} (its CPUs: {self.cpus})"
            self.stop()
        return self

    def stop(self, grace: float = 3.0) -> None:
        proc = self.proc
        if proc is None:
            return
        try:
            if proc.stdin and not proc.stdin.closed:
                proc.stdin.close()          # the server's watcher thread exits on EOF
        except OSError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            _kill_group(proc, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                _kill_group(proc, signal.SIGKILL)
                proc.wait(grace)
        if proc.stdout:
            proc.stdout.close()
        _live.discard(self)


def _read_line(proc: subprocess.Popen, timeout: float) -> Optional[str]:
    """One line from proc.stdout within timeout (None if it ends or stays silent)."""
    deadline = time.monotonic() + timeout
    buf = b""
    fd = proc.stdout.fileno()
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
        if b"\n" in buf:
            return buf.split(b"\n", 1)[0].decode(errors="replace")
    return None


def _tail(path: Optional[Path], n: int = 400) -> str:
    try:
        text = path.read_text(errors="replace").strip() if path else ""
    except OSError:
        return ""
    return text[-n:].replace("\n", " | ")


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_all() -> None:
    for server in list(_live):
        server.stop(grace=1.0)


atexit.register(stop_all)


# ---- CPU accounting around a run ------------------------------------------------------------
#
# The machine may be shared.  Around each run we read the server CPU's counters (/proc/stat) and
# the server process's own (/proc/PID/stat, /proc/PID/status), so every result carries how much
# of its CPU the server actually got: a run where something else ran on the server's CPU (or the
# hypervisor stole it) is visible as such instead of passing for a slow loop.

_TICK = os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass
class CpuSnapshot:
    wall: float
    cpu_tasks: int                  # ticks the server CPU ran tasks (user, nice, system) or was
                                    # stolen by the hypervisor
    cpu_irq: int                    # ticks in interrupts and softirqs (mostly the run's own
                                    # loopback traffic: kept apart from "others")
    cpu_total: int
    cpu_steal: int
    proc_ticks: int                 # the server process's utime + stime
    preemptions: int                # its involuntary context switches


def cpu_snapshot(cpu: Optional[int], pid: Optional[int]) -> Optional[CpuSnapshot]:
    try:
        label = f"cpu{cpu}" if cpu is not None else "cpu"
        fields = None
        with open("/proc/stat") as f:
            for line in f:
                if line.split(" ", 1)[0] == label:
                    fields = [int(x) for x in line.split()[1:9]]
                    break
        if fields is None or pid is None:
            return None
        user, nice, system, idle, iowait, irq, softirq, steal = fields
        with open(f"/proc/{pid}/stat") as f:
            proc_ticks = parse_stat_cpu_ticks(f.read())
        preemptions = 0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("nonvoluntary_ctxt_switches:"):
                    preemptions = int(line.split()[1])
        return CpuSnapshot(time.monotonic(), user + nice + system + steal, irq + softirq,
                           sum(fields), steal, proc_ticks, preemptions)
    except (OSError, ValueError, IndexError):
        return None


def parse_stat_user_system_ticks(text: str) -> tuple[int, int]:
    """(utime, stime) (fields 14 and 15, clock ticks) of a /proc/PID/stat line: the whole
    process, threads that have ended included.  The fields are counted after the command name's
    closing parenthesis, since the name itself may hold spaces and parentheses."""
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def parse_stat_cpu_ticks(text: str) -> int:
    """utime + stime of a /proc/PID/stat line (see parse_stat_user_system_ticks)."""
    return sum(parse_stat_user_system_ticks(text))


def parse_schedstat_ns(text: str) -> int:
    """The time on CPU, in nanoseconds, of a /proc/PID/task/TID/schedstat line ("<on-CPU ns>
    <run-queue wait ns> <timeslices>")."""
    return int(text.split()[0])


@dataclasses.dataclass
class ProcessCpuTime:
    """A process's CPU time at one moment, in the two forms the kernel gives it."""
    wall: float                     # time.monotonic() when it was read
    task_ns: Optional[dict]         # per thread (tid -> ns on CPU); None: schedstat unreadable
    ticks: int                      # utime + stime of the whole process, in clock ticks


# A server's CPU time over a paced run's window (Runner.paced_point) comes from
# /proc/PID/task/*/schedstat, summed over the threads: nanoseconds, where /proc/PID/stat's
# utime + stime come in clock ticks of 10 ms (USER_HZ 100) -- at 5,000 requests/s for 0.8 s, a
# tick is 2.5 us of a request's CPU time.  (/proc/PID/schedstat alone is the main thread's;
# the servers' other thread, the watcher of stdin, hardly runs, but is counted.)  Either figure
# is the scheduler's sum_exec_runtime, brought up to date at each context switch, yield and
# scheduler tick, so a thread on CPU when it is read lags by up to one tick (4 ms at HZ 250,
# measured here): a server that sleeps or yields between requests is read almost exactly, a
# saturated one within a tick at each end.  What schedstat lacks is the threads that ended:
# when one of those read at the start is gone at the end, the reading falls back to the ticks.

def process_cpu_time(pid: int) -> Optional[ProcessCpuTime]:
    """The CPU time of process `pid` now (None when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            ticks = parse_stat_cpu_ticks(f.read())
    except (OSError, ValueError, IndexError):
        return None
    task_ns: Optional[dict] = {}
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    task_ns[int(tid)] = parse_schedstat_ns(f.read())
            except FileNotFoundError:
                pass                    # the thread ended after the listing
    except (OSError, ValueError, IndexError):
        task_ns = None                  # a kernel without CONFIG_SCHED_INFO
    return ProcessCpuTime(time.monotonic(), task_ns or None, ticks)


def cpu_seconds_between(before: ProcessCpuTime, after: ProcessCpuTime) -> tuple[float, str]:
    """(CPU seconds the process ran between the two readings, "schedstat" | "stat": which
    figure gave it).  A thread that started in between counts from zero."""
    if (before.task_ns is not None and after.task_ns is not None
            and before.task_ns.keys() <= after.task_ns.keys()):
        ns = sum(v - before.task_ns.get(tid, 0) for tid, v in after.task_ns.items())
        return ns / 1e9, "schedstat"
    return (after.ticks - before.ticks) / _TICK, "stat"


def _cpu_ticks(cpu: int) -> Optional[tuple[int, int]]:
    """(ticks running tasks or stolen, all ticks) of one CPU."""
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.split(" ", 1)[0] == f"cpu{cpu}":
                    user, nice, system, idle, iowait, irq, softirq, steal = \
                        [int(x) for x in line.split()[1:9]]
                    return user + nice + system + steal, \
                        user + nice + system + idle + iowait + irq + softirq + steal
    except (OSError, ValueError):
        pass
    return None


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def with_cpu_usage(server_pid: Optional[int], server_cpu: Optional[int],
                   run: Callable[[], dict], client_cpu: Optional[int] = None) -> dict:
    """run() (a load generator or wrk run), its result extended with the run's CPU usage: the
    server's (see cpu_usage) and, on the client's CPU, how much other processes took
    (client_cpu_other_pct: that CPU's task time minus the client's own, from RUSAGE_CHILDREN
    of the process that waited for it)."""
    before = cpu_snapshot(server_cpu, server_pid)
    client_before = _cpu_ticks(client_cpu) if client_cpu is not None else None
    children_before = _children_cpu_seconds()
    result = run()
    after = cpu_snapshot(server_cpu, server_pid)
    result.update(cpu_usage(before, after))
    # The server's CPU time per request served (the load generator's total counts its warm-up,
    # as the CPU time does; wrk counts every request).  A server whose CPU is saturated spends
    # about the inverse of its rate; below saturation it is what the rate cannot show, the CPU
    # each request cost.
    requests = result.get("total_requests") or result.get("requests")
    if before is not None and after is not None and requests:
        result["server_cpu_us_per_request"] = round(
            (after.proc_ticks - before.proc_ticks) / _TICK * 1e6 / requests, 2)
    client_after = _cpu_ticks(client_cpu) if client_cpu is not None else None
    if client_before and client_after and client_after[1] > client_before[1]:
        client_ticks = (_children_cpu_seconds() - children_before) * _TICK
        others = client_after[0] - client_before[0] - client_ticks
        result["client_cpu_other_pct"] = round(
            max(0.0, 100.0 * others / (client_after[1] - client_before[1])), 1)
    return result


def cpu_usage(before: Optional[CpuSnapshot], after: Optional[CpuSnapshot]) -> dict:
    """server_cpu_pct: the server process's CPU time / wall time; cpu_other_pct: the share of
    its CPU that other tasks ran (or the hypervisor stole) meanwhile -- the disturbance;
    cpu_irq_pct: interrupts and softirqs on it (largely the run's own loopback traffic);
    server_preempted_per_s: involuntary context switches of the server."""
    if before is None or after is None or after.cpu_total <= before.cpu_total:
        return {}
    total = after.cpu_total - before.cpu_total
    wall = max(after.wall - before.wall, 1e-9)
    proc = after.proc_ticks - before.proc_ticks
    others = max(0, after.cpu_tasks - before.cpu_tasks - proc)
    return {
        "server_cpu_pct": round(100.0 * proc / _TICK / wall, 1),
        "cpu_other_pct": round(100.0 * others / total, 1),
        "cpu_irq_pct": round(100.0 * (after.cpu_irq - before.cpu_irq) / total, 1),
        "cpu_steal_pct": round(100.0 * (after.cpu_steal - before.cpu_steal) / total, 1),
        "server_preempted_per_s": round((after.preemptions - before.preemptions) / wall, 1),
    }


# ---- the C load generator -------------------------------------------------------------------

# A run of a fixed number of requests (--requests) must finish within this many seconds per
# request on top of the fixed allowance: 1M requests get 200 s, a rate no loop falls below.
SECONDS_PER_REQUEST_LIMIT = 1 / 5000


def run_loadgen(port: int, conns: int, size: int, duration: float, warmup: float,
                cpu: Optional[int], connect_timeout: float = 10.0,
                server_pid: Optional[int] = None, server_cpu: Optional[int] = None,
                requests: Optional[int] = None, tls: bool = False) -> dict:
    """One closed-loop echo run; a dict with ok=True and rps/p50_us/p99_us, or ok=False and
    error; with server_pid, also the CPU accounting of the run (see cpu_usage).  With
    `requests`, exactly that many requests instead of `duration` seconds of them; with `tls`,
    over TLS (the loadgen-tls binary, which build_loadgen_tls() made)."""
    return with_cpu_usage(server_pid, server_cpu, lambda: _run_loadgen(
        port, conns, size, duration, warmup, cpu, connect_timeout, requests, tls),
        client_cpu=cpu)


def _run_loadgen(port, conns, size, duration, warmup, cpu, connect_timeout,
                 requests=None, tls=False) -> dict:
    cmd = [str(LOADGEN_TLS if tls else LOADGEN), "--port", str(port), "--conns", str(conns),
           "--size", str(size), "--duration", str(duration), "--warmup", str(warmup),
           "--timeout", str(connect_timeout)]
    if tls:
        cmd.append("--tls")
    if cpu is not None:
        cmd += ["--cpu", str(cpu)]
    # The connect phase and the first round (see loadgen.c) each end within connect_timeout
    # of no progress.
    limit = connect_timeout * 3 + warmup + duration + 15
    if requests:
        cmd += ["--requests", str(requests)]
        limit = connect_timeout * 2 + 15 + requests * SECONDS_PER_REQUEST_LIMIT
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"the load generator did not finish within {limit:.0f} s"}
    return _loadgen_result(proc.returncode, proc.stdout, proc.stderr)


def _loadgen_result(returncode: int, stdout: str, stderr: str) -> dict:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"ok": False, "error": f"loadgen exit status {returncode}: "
                                      f"{(stderr or stdout).strip()[:300]}"}
    return json.loads(lines[-1])


def run_paced_loadgen(port: int, conns: int, size: int, rate: float, duration: float,
                      warmup: float, cpu: Optional[int], server_pid: int,
                      server_cpu: Optional[int], connect_timeout: float = 10.0) -> dict:
    """One paced echo run (loadgen --rate: `rate` requests/s over `conns` connections); the
    load generator's result plus the server's CPU time over its measurement window:
    server_cpu_s, server_cpu_pct (CPU time ÷ the window's wall time), cpu_us_per_request, and
    the disturbance figures of cpu_usage() over the same window.

    A run whose window marks this process read too late (descheduled on a busy machine: the
    CPU time would not be the window's) measured nothing; it is made again, up to
    PACED_ATTEMPTS times in all, and the last one says so if none could be read."""
    for _ in range(PACED_ATTEMPTS):
        result = with_cpu_usage(None, None, lambda: _run_paced_loadgen(
            port, conns, size, rate, duration, warmup, cpu, server_pid, server_cpu,
            connect_timeout), client_cpu=cpu)
        if not result.pop("marks_read_late", False):
            break
    return result


PACED_ATTEMPTS = 3


def _run_paced_loadgen(port, conns, size, rate, duration, warmup, cpu, server_pid, server_cpu,
                       connect_timeout) -> dict:
    # The server's CPU time must cover the load generator's measurement window and nothing
    # else: not the connections' set-up, not the first round (see loadgen.c), not the warm-up
    # while the loop's spin limit settles, not the drain.  Sleeping `warmup` seconds here would
    # miss by the connect time and the first round, which vary from run to run, so the load
    # generator says when its window starts and ends (--mark-window: a line on stdout, flushed
    # as it happens, at a wake-up it schedules for that moment) and the server's CPU time is
    # read as each line arrives.  This process waits on the pipe on the load generator's CPU,
    # so it may have to wait for the load generator to yield it: in a quick run (0.8 s windows)
    # the two readings were 0.7998-0.8024 s apart, the widest where the load generator's CPU
    # was 98% busy -- the CPU time covers up to 0.3% more than the window whose requests it is
    # divided by.  CPU % divides by the time between the two readings themselves.
    cmd = [str(LOADGEN), "--port", str(port), "--conns", str(conns), "--size", str(size),
           "--duration", str(duration), "--warmup", str(warmup),
           "--timeout", str(connect_timeout), "--rate", str(rate), "--mark-window"]
    if cpu is not None:
        cmd += ["--cpu", str(cpu)]
    limit = connect_timeout * 3 + warmup + duration + 15
    deadline = time.monotonic() + limit
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    readings: dict = {}
    out = b""
    try:
        fd = proc.stdout.fileno()
        while True:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(0.0, left))
            if not ready:
                return {"ok": False,
                        "error": f"the load generator did not finish within {limit:.0f} s"}
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            out += chunk
            for what in ("start", "end"):
                if what not in readings and f"# window {what}\n".encode() in out:
                    # The precise reading first: the rest (/proc/stat ...) can wait a little.
                    readings[what] = (process_cpu_time(server_pid),
                                      cpu_snapshot(server_cpu, server_pid))
        proc.wait(max(1.0, deadline - time.monotonic()))
        err = proc.stderr.read()
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"the load generator did not finish within {limit:.0f} s"}
    finally:
        if proc.poll() is None:
            _kill_group(proc, signal.SIGKILL)
            proc.wait(5)
        proc.stdout.close()
        proc.stderr.close()
    result = _loadgen_result(proc.returncode, out.decode(errors="replace"),
                             err.decode(errors="replace"))
    if not result.get("ok"):
        return result
    (cpu0, snap0), (cpu1, snap1) = readings.get("start", (None, None)), \
        readings.get("end", (None, None))
    if cpu0 is None or cpu1 is None:
        return dict(result, ok=False, error="the server's CPU time could not be read over the "
                                            "window (the server exited, or a mark was missing)")
    result.update(cpu_usage(snap0, snap1))
    cpu_s, source = cpu_seconds_between(cpu0, cpu1)
    wall = max(cpu1.wall - cpu0.wall, 1e-9)
    if abs(wall - result["window_s"]) > 0.05 * result["window_s"] + 0.005:
        # This process was kept from reading a mark in time (descheduled): the CPU time
        # would not be the window's.
        return dict(result, ok=False, marks_read_late=True,
                    error=f"the server's CPU time was read over {wall:.3f} s "
                          f"for a {result['window_s']:.3f} s window")
    result.update(server_cpu_s=round(cpu_s, 6), server_cpu_source=source,
                  cpu_window_s=round(wall, 6),
                  server_cpu_pct=round(100.0 * cpu_s / wall, 2),
                  cpu_us_per_request=round(cpu_s * 1e6 / result["requests"], 3))
    return result


# ---- memory: a server's RSS, and idle connections to it -------------------------------------

def read_rss(pid: int) -> Optional[dict]:
    """The process's resident memory from /proc/PID/status, in bytes: vm_rss (VmRSS, what is
    reported), rss_anon and rss_file (its heap/stack/anonymous mappings and its mapped files,
    kept in the raw results).  None when the process is gone.  Kernel memory for its sockets
    (socket structures, TCP buffers) and io_uring rings' kernel side are not in RSS."""
    fields = {"VmRSS:": "vm_rss", "RssAnon:": "rss_anon", "RssFile:": "rss_file",
              "RssShmem:": "rss_shmem"}
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                parts = line.split()
                if parts and parts[0] in fields and parts[-1] == "kB":
                    out[fields[parts[0]]] = int(parts[1]) * 1024
    except (OSError, ValueError):
        return None
    return out if "vm_rss" in out else None


def raise_fd_limit(needed: int) -> Optional[str]:
    """Raise this process's soft RLIMIT_NOFILE to at least `needed` (within the hard limit);
    the problem as text when the hard limit is too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            return (f"{needed} file descriptors are needed but the hard limit (ulimit -Hn) is "
                    f"{hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return None


class IdleConnections:
    """TCP connections to a server that stay open and idle, held by this process.

    Each connection is proven live before it counts: it sends one byte and waits for the echo,
    so the server has accepted it, made its protocol and transport, and served one receive --
    the state of a keep-alive connection waiting for its next request.  Connections are opened
    in batches and each batch is echoed before the next is opened, which paces the client to
    the server's accept rate (an overflowing accept queue would stall connects for a second per
    SYN retransmission).  Blocking sockets with a timeout: a hung server fails the step with
    the reason, never hangs the run."""

    BATCH = 500
    FD_MARGIN = 64

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0):
        self.address = (host, port)
        self.timeout = timeout
        self.socks: list = []

    def __len__(self) -> int:
        return len(self.socks)

    def grow_to(self, total: int) -> None:
        """Open connections until `total` are held; HarnessError with the reason otherwise."""
        problem = raise_fd_limit(total + self.FD_MARGIN)
        if problem:
            raise HarnessError(problem)
        while len(self.socks) < total:
            batch = []
            try:
                for _ in range(min(self.BATCH, total - len(self.socks))):
                    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    batch.append(sock)
                    sock.settimeout(self.timeout)
                    sock.connect(self.address)
                for sock in batch:
                    sock.sendall(b"m")
                for sock in batch:
                    if sock.recv(1) != b"m":
                        raise HarnessError(f"connection {len(self.socks) + 1}: the server "
                                           "closed it or echoed a wrong byte")
            except OSError as exc:
                for sock in batch:
                    sock.close()
                raise HarnessError(f"after {len(self.socks)} idle connections: "
                                   f"{type(exc).__name__}: {exc}") from None
            except HarnessError:
                for sock in batch:
                    sock.close()
                raise
            self.socks.extend(batch)

    def close(self) -> None:
        for sock in self.socks:
            sock.close()
        self.socks = []


# ---- wrk ------------------------------------------------------------------------------------

def wrk_path() -> Optional[str]:
    return shutil.which("wrk")


def wrk_version() -> Optional[str]:
    path = wrk_path()
    if not path:
        return None
    proc = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    first = (proc.stdout or proc.stderr).strip().splitlines()
    m = re.match(r"(wrk \S+)", first[0]) if first else None
    return m.group(1) if m else (first[0] if first else "wrk ?")


def check_http(port: int, timeout: float = 5.0) -> Optional[str]:
    """None when GET / answers 200 "Hello, World!" (what wrk will hammer), else the problem."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=timeout) as resp:
            body = resp.read()
            if resp.status != 200 or body != b"Hello, World!":
                return f"unexpected response {resp.status} {body[:60]!r}"
    except Exception as exc:            # noqa: BLE001 - becomes the point's error
        return f"GET / failed: {type(exc).__name__}: {exc}"
    return None


_UNITS = {"us": 1.0, "ms": 1000.0, "s": 1_000_000.0}


def _to_us(text: str) -> Optional[float]:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    return float(m.group(1)) * _UNITS[m.group(2)] if m else None


def parse_wrk(output: str) -> dict:
    out: dict = {"ok": True}
    m = re.search(r"Requests/sec:\s*([\d.]+)", output)
    if not m:
        return {"ok": False, "error": f"no Requests/sec in wrk's output: {output.strip()[-300:]}"}
    out["rps"] = float(m.group(1))
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", output)
    if m:
        out["requests"] = int(m.group(1))
    for pct, key in (("50", "p50_us"), ("99", "p99_us")):
        m = re.search(rf"^\s*{pct}(?:\.0+)?%\s+(\S+)", output, re.M)
        if m:
            out[key] = _to_us(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", output)
    if m and int(m.group(1)):
        out.update(ok=False, error=f"{m.group(1)} responses were not 2xx/3xx")
    m = re.search(r"Socket errors:\s*(.*)", output)
    if m:
        # "connect 0, read 0, write 0, timeout 3": a request unanswered for wrk's --timeout is
        # as much a failure as a reset.
        counts = {k: int(v) for k, v in re.findall(r"(\w+)\s+(\d+)", m.group(1))}
        out["socket_errors"] = counts
        if any(counts.values()):
            out.update(ok=False, error=f"wrk socket errors: {m.group(1).strip()}")
    return out


def run_wrk(port: int, conns: int, duration: float, cpu: Optional[int],
            server_pid: Optional[int] = None, server_cpu: Optional[int] = None) -> dict:
    return with_cpu_usage(server_pid, server_cpu,
                          lambda: _run_wrk(port, conns, duration, cpu), client_cpu=cpu)


def _run_wrk(port: int, conns: int, duration: float, cpu: Optional[int]) -> dict:
    path = wrk_path()
    if path is None:
        return {"ok": False, "error": "wrk is not installed"}
    secs = max(1, int(round(duration)))
    cmd = [path, "-t1", f"-c{conns}", f"-d{secs}s", "--latency", "--timeout", "5s",
           f"http://127.0.0.1:{port}/"]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd] if shutil.which("taskset") else cmd
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=secs + 30)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": "wrk did not finish in time"}
    if proc.returncode != 0:
        return {"ok": False, "error": f"wrk exit status {proc.returncode}: "
                                      f"{(proc.stderr or proc.stdout).strip()[:300]}"}
    return parse_wrk(proc.stdout)


# ---- counting a server's system calls -------------------------------------------------------

# The syscalls named in the breakdown.  Every syscall is counted in the total (the raw_syscalls
# tracepoint); naming all ~350 per-syscall tracepoints would make perf take ~15 s to attach and
# detach, so only the ones an event loop's I/O path makes are broken out ("other" is the rest).
SYSCALL_BREAKDOWN = (
    "io_uring_enter", "epoll_wait", "epoll_pwait", "epoll_pwait2", "epoll_ctl", "poll", "ppoll",
    "select", "pselect6", "read", "write", "readv", "writev", "recvfrom", "sendto", "recvmsg",
    "sendmsg", "accept4", "accept", "close", "shutdown", "futex", "ioctl", "getsockname",
    "getpeername", "setsockopt", "getsockopt", "brk", "mmap", "munmap", "clock_gettime",
    "getpid",
)


def syscall_method() -> tuple[Optional[str], str]:
    """("perf" | "strace" | None, description): perf's syscall tracepoints where they work (low
    overhead, exact counts), else strace -c -f (counts exact, but slows the server)."""
    if shutil.which("perf"):
        proc = subprocess.run(["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter",
                               "-e", "syscalls:sys_enter_io_uring_enter", "--", "true"],
                              capture_output=True, text=True, timeout=30)
        if proc.returncode == 0 and "raw_syscalls:sys_enter" in proc.stderr \
                and "<not supported>" not in proc.stderr:
            return "perf", ("`perf stat -e raw_syscalls:sys_enter -e syscalls:sys_enter_<name> "
                            "-p <server pid>` (counters enabled through perf's control FIFO "
                            "only while the load generator runs)")
    if shutil.which("strace"):
        return "strace", "`strace -c -f -p <server pid>` (it slows the server while attached)"
    return None, "neither perf (with syscall tracepoints) nor strace is available"


def count_syscalls(method: str, pid: int, workload: Callable[[], dict],
                   log_dir: Path) -> dict:
    """Count the system calls of server `pid` (all its threads) while `workload` (the load
    generator) runs; {"total": n, "by_name": {...}, "run": workload's result} or {"error"}."""
    log_dir.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix="syscalls-", dir=log_dir))
    out_path = work_dir / "counts.txt"
    if method == "perf":
        return _count_with_perf(pid, workload, work_dir, out_path)
    return _count_with_strace(pid, workload, out_path)


def _count_with_perf(pid: int, workload, work_dir: Path, out_path: Path) -> dict:
    # perf starts with its counters disabled (-D -1) and is switched on and off through a
    # control FIFO; its acknowledgement tells us the counters really are live, so the count
    # covers exactly the load generator's run.
    ctl, ack = work_dir / "ctl", work_dir / "ack"
    os.mkfifo(ctl)
    os.mkfifo(ack)
    events = ["-e", "raw_syscalls:sys_enter"]
    for name in _existing_tracepoints(SYSCALL_BREAKDOWN):
        events += ["-e", f"syscalls:sys_enter_{name}"]
    cmd = ["perf", "stat", "-x,", "-o", str(out_path), "-D", "-1", "--control",
           f"fifo:{ctl},{ack}", *events, "-p", str(pid)]
    counter = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)
    ack_fd = os.open(ack, os.O_RDONLY | os.O_NONBLOCK)
    ctl_fd = None
    run = None
    try:
        ctl_fd = _open_fifo_writer(ctl, counter, timeout=20.0)
        if ctl_fd is None or not _perf_command(ctl_fd, ack_fd, "enable"):
            return {"error": "perf did not start counting: "
                             + _finish(counter, out_path).strip()[-300:]}
        run = workload()
        if not _perf_command(ctl_fd, ack_fd, "disable"):
            return {"error": "perf did not acknowledge 'disable'", "run": run}
    finally:
        for fd in (ctl_fd, ack_fd):
            if fd is not None:
                os.close(fd)
        _finish(counter, out_path)
    counts = _parse_perf(out_path.read_text(errors="replace") if out_path.exists() else "")
    total = counts.pop("*", None)
    if total is None:
        return {"error": "perf reported no counts", "run": run}
    named = sum(counts.values())
    if total > named:
        counts["other"] = total - named
    return {"total": total, "by_name": counts, "run": run}


def _existing_tracepoints(names) -> list:
    """The names whose sys_enter tracepoint this kernel has (perf refuses an unknown event;
    which syscalls exist depends on the architecture)."""
    for root in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
        events = Path(root) / "events" / "syscalls"
        if events.is_dir():
            return [n for n in names if (events / f"sys_enter_{n}").is_dir()]
    return ["io_uring_enter"]


def _open_fifo_writer(path: Path, proc: subprocess.Popen, timeout: float) -> Optional[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            return os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:                 # ENXIO: perf has not opened its end yet
            time.sleep(0.01)
    return None


def _perf_command(ctl_fd: int, ack_fd: int, command: str, timeout: float = 20.0) -> bool:
    os.write(ctl_fd, command.encode() + b"\n")
    deadline = time.monotonic() + timeout
    got = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([ack_fd], [], [], max(0.0, deadline - time.monotonic()))
        if ready:
            try:
                chunk = os.read(ack_fd, 64)
            except BlockingIOError:
                continue
            if not chunk:
                time.sleep(0.01)        # writer not connected yet
                continue
            got += chunk
            if b"ack" in got:
                return True
    return False


def _finish(counter: subprocess.Popen, out_path: Path) -> str:
    """Stop a counter process (SIGINT makes perf and strace write their summary) and return
    its stderr."""
    if counter.poll() is None:
        try:
            os.killpg(counter.pid, signal.SIGINT)
        except ProcessLookupError:
            pass
    try:
        counter.wait(30)
    except subprocess.TimeoutExpired:
        _kill_group(counter, signal.SIGKILL)
        counter.wait(5)
    err = ""
    if counter.stderr:
        err = counter.stderr.read().decode(errors="replace")
        counter.stderr.close()
    return err


def _count_with_strace(pid: int, workload, out_path: Path) -> dict:
    cmd = ["strace", "-c", "-f", "-o", str(out_path), "-p", str(pid)]
    counter = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)
    run = None
    try:
        # strace says "Process N attached" on stderr once it is; wait for that (bounded).
        deadline = time.monotonic() + 10
        seen = b""
        while b"attached" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([counter.stderr], [], [], 0.2)
            if ready:
                chunk = os.read(counter.stderr.fileno(), 4096)
                if not chunk:
                    break
                seen += chunk
        if b"attached" not in seen:
            return {"error": f"strace did not attach: {seen.decode(errors='replace')[-300:]}"}
        run = workload()
    finally:
        _finish(counter, out_path)
    counts = _parse_strace(out_path.read_text(errors="replace") if out_path.exists() else "")
    if not counts:
        return {"error": "strace reported no counts", "run": run}
    return {"total": sum(counts.values()), "by_name": counts, "run": run}


def _parse_perf(text: str) -> dict:
    """perf stat -x, lines: value,unit,event,...; "<not counted>" (the thread never ran while
    enabled) is a count of 0."""
    counts = {}
    for line in text.splitlines():
        fields = line.split(",")
        if len(fields) < 3:
            continue
        value = fields[0].strip()
        if value == "<not counted>":
            value = "0"
        if not value.isdigit():
            continue
        event = fields[2]
        if event == "raw_syscalls:sys_enter":
            counts["*"] = int(value)
        elif event.startswith("syscalls:sys_enter_") and int(value):
            counts[event[len("syscalls:sys_enter_"):]] = int(value)
    return counts


def _parse_strace(text: str) -> dict:
    counts = {}
    for line in text.splitlines():
        fields = line.split()
        # % time, seconds, usecs/call, calls, [errors], syscall
        if len(fields) >= 5 and fields[0].replace(".", "").isdigit() and fields[3].isdigit():
            if fields[-1] != "total":
                counts[fields[-1]] = int(fields[3])
    return counts
