"""The conformance run: CPython's own `test.test_asyncio` with uringloop as the loop under test.

Each module of suites.SUITES runs in its own child process (child.py) with a per-test timeout,
at most `jobs` modules at a time.  A child that dies -- a crash, or the watchdog ending a test
that hung -- costs only the test it was running: that test is reported as crashed or timed out
and a new child runs the rest of the module.  A test that ran to its end and failed is run once
more, alone, in a child of its own: one that passes then had failed by chance (its port taken
between `find_unused_port()` and its use), is counted as passed and is reported as flaky, with
its first failure.  The result is one ModuleRun per module and a summary table of
passed/failed/skipped/excluded tests, separating the tests in which the loop under test was
actually created ("loop-using") from those that ran against a fake loop.

Command line: `python tests/conformance/run.py --help`; from pytest: test_conformance.py.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from conformance import suites

HERE = Path(__file__).resolve().parent
CHILD = HERE / "child.py"
KNOWN_FAILURES_DIR = HERE / "known_failures"

# Seconds per test.  The stock loop's slowest test takes 2.5s on the 2-core CI machine; a test
# that hangs (a thread blocked forever on a peer that never came) costs exactly this much.
DEFAULT_TIMEOUT = 15.0
DEFAULT_JOBS = 2            # modules at a time: the CI machines have two cores
MAX_RESTARTS = 40           # new child processes per module after crashes/hangs, then give up
# A module with more failures than this fails for a reason, not by chance: none is run again.
MAX_RERUNS = 3

PASSED, FAILED, ERROR, SKIPPED = "passed", "failed", "error", "skipped"
TIMEOUT, CRASHED, NOT_RUN = "timeout", "crashed", "not-run"
FAILING = frozenset({FAILED, ERROR, TIMEOUT, CRASHED, NOT_RUN})
# Run again alone when they happen: a test's own assertion or exception.  A crash is never chance,
# and a hang costs a whole timeout again.
RERUN = frozenset({FAILED, ERROR})

LOOP_NAMES = {"uringloop": "uringloop.Loop", "asyncio": "asyncio.SelectorEventLoop (stock)"}


@dataclasses.dataclass
class TestOutcome:
    id: str
    outcome: str
    detail: str = ""
    loops: int | None = None        # loops under test created during the test (None: unknown)
    duration: float = 0.0
    # Set when the test failed in the module's run and passed when run again alone: that first
    # failure (headline and traceback), so a flaky test is reported rather than forgotten.
    first_failure: str = ""

    @property
    def failing(self) -> bool:
        return self.outcome in FAILING

    @property
    def loop_using(self) -> bool:
        # A test that crashed or hung has no count; it is counted with the loop-using ones,
        # since a process dying mid-test is the loop's business until shown otherwise.
        return self.loops is None or self.loops > 0

    def headline(self) -> str:
        """One line saying why the test failed."""
        lines = [line.strip() for line in self.detail.strip().splitlines() if line.strip()]
        if self.outcome in (TIMEOUT, CRASHED, NOT_RUN, SKIPPED):
            return f"{self.outcome}: {lines[0][:160]}" if lines else self.outcome
        for index in range(len(lines) - 1, -1, -1):
            line = lines[index]
            if line.startswith(("File ", "^", "~", "###", "During handling",
                                "The above exception", "Traceback")):
                continue
            if ":" not in line:
                # A bare exception (NotImplementedError): where it came from says more.
                where = next((f[f.rindex(" in ") + 4:] for f in reversed(lines[:index])
                              if f.startswith("File ") and " in " in f), None)
                if where:
                    line = f"{line} in {where}"
            return f"{self.outcome}: {line[:160]}"
        return self.outcome


@dataclasses.dataclass
class ModuleRun:
    module: str
    loop: str
    status: str = "ran"         # ran | skipped (the module skips itself) | absent | broken
    reason: str = ""
    tests: list = dataclasses.field(default_factory=list)       # collected ids, in order
    excluded: dict = dataclasses.field(default_factory=dict)    # id -> reason
    results: dict = dataclasses.field(default_factory=dict)     # id -> TestOutcome
    children: int = 0
    reruns: int = 0             # failed tests run again alone
    duration: float = 0.0

    def outcomes(self):
        return self.results.values()

    def failures(self) -> list:
        return [r for r in self.outcomes() if r.failing]

    def flaky(self) -> list:
        return [r for r in self.outcomes() if r.first_failure]

    def counts(self) -> dict:
        c = {"collected": len(self.tests) or len(self.results), "excluded": len(self.excluded),
             PASSED: 0, "failing": 0, SKIPPED: 0, "loop_passed": 0, "loop_failing": 0}
        for r in self.outcomes():
            if r.outcome == SKIPPED:
                c[SKIPPED] += 1
            elif r.failing:
                c["failing"] += 1
                c["loop_failing"] += r.loop_using
            else:
                c[PASSED] += 1
                c["loop_passed"] += r.loop_using
        return c


@dataclasses.dataclass
class Interpreter:
    executable: str
    version: tuple = ()
    problem: str | None = None          # why the conformance run cannot happen here
    modules: tuple = ()                 # the selected modules this interpreter's suite has

    @property
    def tag(self) -> str:
        return f"{self.version[0]}.{self.version[1]}" if self.version else "?"


# ---------------------------------------------------------------------------------------------
# the interpreter under test
# ---------------------------------------------------------------------------------------------

_PROBE = r"""
import importlib.util, json, sys
info = {"version": list(sys.version_info[:3]), "problem": None, "modules": []}
try:
    import test.support
    spec = importlib.util.find_spec("test.test_asyncio")
    if spec is None:
        raise ModuleNotFoundError("No module named 'test.test_asyncio'")
    info["modules"] = [m for m in MODULES
                       if importlib.util.find_spec("test.test_asyncio." + m) is not None]
except Exception as exc:
    info["problem"] = ("this interpreter has no test suite (the `test` package with "
                       "test.test_asyncio): %s: %s; install it to run the conformance tests "
                       "(Debian/Ubuntu: apt install libpython%d.%d-testsuite)"
                       % (type(exc).__name__, exc, sys.version_info[0], sys.version_info[1]))
if info["problem"] is None and LOOP == "uringloop":
    try:
        import uringloop
        report = uringloop.probe()
        if not report.available:
            info["problem"] = "io_uring is unavailable: %s. Fix: %s" % (report.cause, report.fix)
    except Exception as exc:
        info["problem"] = "uringloop cannot be imported: %s: %s" % (type(exc).__name__, exc)
print(json.dumps(info))
"""


def child_environment() -> dict:
    """The children import the same uringloop as this process (the checkout's in-place build
    under `python -m pytest`, the installed one elsewhere), whatever their working directory."""
    env = dict(os.environ)
    paths = [str(HERE.parent.parent)]
    spec = importlib.util.find_spec("uringloop")
    if spec is not None and spec.origin:
        paths.insert(0, str(Path(spec.origin).resolve().parent.parent))
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"       # test output and our START markers stay in order
    env.pop("PYTHONASYNCIODEBUG", None)  # the suite sets debug mode itself where it wants it
    return env


def probe_interpreter(executable: str, loop: str, env: dict) -> Interpreter:
    code = _PROBE.replace("MODULES", repr([s.module for s in suites.SUITES])).replace(
        "LOOP", repr(loop))
    try:
        # cwd: `python -c` puts the working directory first on sys.path, and a checkout's
        # uringloop/ (sources without this interpreter's extension, under tox) must not shadow
        # the package under test; the first PYTHONPATH entry is where that package lives.
        out = subprocess.run([executable, "-c", code], capture_output=True, text=True,
                             env=env, timeout=120, check=True, stdin=subprocess.DEVNULL,
                             cwd=env["PYTHONPATH"].split(os.pathsep)[0])
        info = json.loads(out.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        return Interpreter(executable, problem=f"cannot run {executable}: {exc}")
    return Interpreter(executable, tuple(info["version"]), info["problem"],
                       tuple(info["modules"]))


# ---------------------------------------------------------------------------------------------
# one module
# ---------------------------------------------------------------------------------------------

class ModuleRunner:
    """Runs one module to the end, one child process after another."""

    def __init__(self, suite, interpreter: Interpreter, loop: str, timeout: float, workdir: Path,
                 env: dict):
        self.suite = suite
        self.python = interpreter.executable
        self.loop = loop
        self.timeout = timeout
        self.env = env
        self.dir = workdir / f"{loop}-{suite.module}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.events_path = self.dir / "events.jsonl"
        self.log_path = self.dir / "output.log"
        self.skip_path = self.dir / "skip.txt"
        self.cwd = self.dir / "cwd"         # tests create files (support.TESTFN) in the cwd
        self.cwd.mkdir(exist_ok=True)
        self.run = ModuleRun(suite.module, loop)
        self.fixture_errors = {}        # description -> detail
        self.fixture_skips = {}         # description -> reason
        self.finished = False

    def execute(self) -> ModuleRun:
        started = time.monotonic()
        offset = 0
        while not self.finished:
            self.skip_path.write_text("".join(f"{i}\n" for i in self.run.results),
                                      encoding="utf-8")
            log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            returncode, watchdog_fired = self._child()
            self.run.children += 1
            running, offset = self._read_events(offset)
            if self.finished:
                break
            log = self._log_since(log_offset)
            if not self._account_for_death(running, returncode, watchdog_fired, log):
                break
            if self.run.children > MAX_RESTARTS:
                self._give_up(f"not run: the module's process died {self.run.children} times")
                break
        self._settle_not_run()
        self._rerun_failures()
        self.run.duration = time.monotonic() - started
        return self.run

    def _child(self, events_path=None, only=None):
        events_path = events_path or self.events_path
        cmd = [self.python, str(CHILD), "--package", self.suite.package,
               "--module", self.suite.module, "--loop", self.loop,
               "--timeout", str(self.timeout), "--events", str(events_path)]
        cmd += ["--only", only] if only else ["--skip-file", str(self.skip_path)]
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, cwd=self.cwd, env=self.env,
                                    start_new_session=True)
        # The child's own faulthandler watchdog ends a hung test after `timeout`.  This one is
        # the backstop for a process that cannot even do that (stopped, or hung in exit).
        backstop = self.timeout * 2 + 30
        last_size, last_change, fired = -1, time.monotonic(), False
        try:
            while True:
                try:
                    return proc.wait(timeout=0.5), fired
                except subprocess.TimeoutExpired:
                    pass
                size = events_path.stat().st_size if events_path.exists() else 0
                if size != last_size:
                    last_size, last_change = size, time.monotonic()
                elif time.monotonic() - last_change > backstop:
                    fired = True
                    _kill_group(proc.pid)
        finally:
            # Whatever the tests left running in the child's session goes with it.
            _kill_group(proc.pid)
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def _rerun_failures(self):
        """Run each failed test once more, alone.  Two modules and two loops run side by side,
        and a few tests of the suite race them for ports (`socket_helper.find_unused_port()`
        closes the port it found before the test binds or connects to it): such a failure does
        not come back on the second run, a real one does."""
        again = [r for r in self.run.outcomes() if r.outcome in RERUN and r.id in self.run.tests]
        if not again or len(again) > MAX_RERUNS:
            return
        for first in again:
            self.run.reruns += 1
            events_path = self.dir / f"rerun-{self.run.reruns}.jsonl"
            self._child(events_path, only=first.id)
            second = None
            if events_path.exists():
                for line in events_path.read_text(encoding="utf-8", errors="replace").splitlines():
                    try:
                        event = json.loads(line)
                    except ValueError:
                        continue
                    if event.get("event") == "result" and event.get("id") == first.id:
                        second = event
            if second is not None and second["outcome"] == PASSED:
                self.run.results[first.id] = TestOutcome(
                    first.id, PASSED, "", second["loops"], second["duration"],
                    first_failure=f"{first.headline()}\n{first.detail}")

    def _read_events(self, offset: int):
        running = None
        self.last_started = None        # in this child: where a death between tests happened
        if not self.events_path.exists():
            return running, offset
        with open(self.events_path, "rb") as f:
            f.seek(offset)
            data = f.read()
        complete = data[:data.rfind(b"\n") + 1]
        if len(complete) < len(data):
            # A line cut short by a crash: drop it, or the next child would append to it.
            os.truncate(self.events_path, offset + len(complete))
        for line in complete.decode("utf-8", "replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            kind = event["event"]
            if kind == "collected":
                if not self.run.tests:
                    self.run.tests = event["tests"]
                    self.run.excluded = event["excluded"]
            elif kind == "start":
                running = self.last_started = event["id"]
            elif kind == "result":
                running = None
                self.run.results[event["id"]] = TestOutcome(
                    event["id"], event["outcome"], event["detail"], event["loops"],
                    event["duration"])
            elif kind == "fixture_error":
                self.fixture_errors[event["id"]] = event["detail"]
            elif kind == "fixture_skipped":
                self.fixture_skips[event["id"]] = event["reason"]
            elif kind == "module_skipped":
                self.run.status = "skipped"
                self.run.reason = event["reason"]
            elif kind == "done":
                self.finished = True
        return running, offset + len(complete)

    def _log_since(self, offset: int) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")

    def _account_for_death(self, running, returncode, watchdog_fired, log) -> bool:
        """The child ended before "done".  Charge it to the test that was running (or to the
        next one, when it died between tests); return False if the module cannot go on."""
        if watchdog_fired or "Timeout (" in log:
            outcome, why = TIMEOUT, f"no result within the {self.timeout:g}s per-test timeout"
        elif returncode < 0:
            outcome, why = CRASHED, f"the process died of {_signal_name(-returncode)}"
        else:
            outcome, why = CRASHED, f"the process exited with status {returncode}"
        if not self.run.tests:
            self.run.status = "broken"
            self.run.reason = f"{why} before the tests were collected:\n{_tail(log)}"
            return False
        if running is None:
            running = self._next_pending(after=self.last_started)
            if running is None:     # after the last test: in tearDownClass/tearDownModule
                key = f"{self.suite.module}.[after the last test]"
                self.run.results[key] = TestOutcome(key, outcome, f"{why}\n{_tail(log)}", 0)
                return False
            why += " between tests (in a class or module fixture) before this test started"
        marker = f"### START {running}\n"
        since = log[log.rfind(marker) + len(marker):] if marker in log else log
        self.run.results[running] = TestOutcome(running, outcome, f"{why}\n{_tail(since)}")
        return True

    def _next_pending(self, after=None):
        """The first test after `after` (in collection order) that unittest would start next:
        not done, not excluded, not in a class whose fixture already failed or skipped."""
        tests = self.run.tests
        start = tests.index(after) + 1 if after in tests else 0
        for test_id in tests[start:]:
            if (test_id not in self.run.results and test_id not in self.run.excluded
                    and self._fixture_verdict(test_id) is None):
                return test_id
        return None

    def _fixture_verdict(self, test_id):
        """(SKIPPED, reason) or (NOT_RUN, detail) when a class or module fixture of test_id
        skipped or failed, else None.  unittest names the fixture "setUpClass (pkg.mod.Cls)"."""
        package = self.suite.package
        owners = (f"{package}.{test_id.rsplit('.', 1)[0]})", f"{package}.{self.suite.module})")
        for description, reason in self.fixture_skips.items():
            if description.endswith(owners):
                return SKIPPED, reason
        for description, detail in self.fixture_errors.items():
            if description.endswith(owners):
                return NOT_RUN, "not run: its fixture failed\n" + detail
        return None

    def _give_up(self, why: str):
        for test_id in self.run.tests:
            if test_id not in self.run.results and test_id not in self.run.excluded:
                self.run.results[test_id] = TestOutcome(test_id, NOT_RUN, why)

    def _settle_not_run(self):
        """Tests unittest never started: their class or module fixture skipped or failed."""
        for test_id in self.run.tests:
            if test_id in self.run.results or test_id in self.run.excluded:
                continue
            verdict = self._fixture_verdict(test_id)
            if verdict is not None:
                outcome, detail = verdict
                self.run.results[test_id] = TestOutcome(test_id, outcome, detail, 0)
            else:
                self.run.results[test_id] = TestOutcome(test_id, NOT_RUN, "not run (no reason "
                                                        "reported; see the module's output)")
        # Fixture errors after the tests ran (tearDownClass, tearDownModule) are failures too.
        for description, detail in self.fixture_errors.items():
            if not any(r.outcome == NOT_RUN and detail in r.detail for r in self.run.outcomes()):
                key = f"{self.suite.module}.[{description}]"
                self.run.results[key] = TestOutcome(key, ERROR, detail, 0)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


# ---------------------------------------------------------------------------------------------
# the whole run
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Run:
    interpreter: Interpreter
    loop: str
    timeout: float
    jobs: int
    modules: dict = dataclasses.field(default_factory=dict)     # name -> ModuleRun
    duration: float = 0.0

    def failures(self) -> list:
        return [r for m in self.modules.values() for r in m.failures()]

    def to_json(self) -> dict:
        return {
            "python": list(self.interpreter.version), "executable": self.interpreter.executable,
            "loop": self.loop, "timeout": self.timeout, "jobs": self.jobs,
            "duration": round(self.duration, 1),
            "modules": {
                name: {"status": m.status, "reason": m.reason, "counts": m.counts(),
                       "excluded": m.excluded, "children": m.children, "reruns": m.reruns,
                       "duration": round(m.duration, 1),
                       "results": {i: dataclasses.asdict(r) for i, r in m.results.items()}}
                for name, m in self.modules.items()},
        }


def selected_suites(names=None) -> list:
    if not names:
        return list(suites.SUITES)
    unknown = [n for n in names if n not in suites.BY_NAME]
    if unknown:
        raise SystemExit(f"unknown module(s): {', '.join(unknown)}; "
                         f"choose from {', '.join(suites.BY_NAME)}")
    return [suites.BY_NAME[n] for n in names]


def run_conformance(interpreter: Interpreter, loops, chosen: list, *,
                    timeout: float = DEFAULT_TIMEOUT, jobs: int = DEFAULT_JOBS,
                    workdir: Path | None = None, env: dict | None = None,
                    progress=None) -> dict:
    """Run the chosen suites on each of `loops` in `interpreter` (which must have no .problem);
    return {loop: Run}.  All (loop, module) pairs share one pool of `jobs` workers."""
    env = env if env is not None else child_environment()
    runs = {loop: Run(interpreter, loop, timeout, jobs) for loop in loops}
    own_dir = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="uringloop-conformance-")) if own_dir else workdir
    started = time.monotonic()
    lock = threading.Lock()
    try:
        todo = []
        for loop in loops:
            for suite in chosen:
                if suite.module not in interpreter.modules:
                    runs[loop].modules[suite.module] = ModuleRun(
                        suite.module, loop, status="absent",
                        reason=f"not in the test suite of Python {interpreter.tag}")
                else:
                    todo.append((loop, suite))
        todo.sort(key=lambda pair: -pair[1].cost)   # longest first: the workers finish together

        def one(pair):
            loop, suite = pair
            result = ModuleRunner(suite, interpreter, loop, timeout, workdir, env).execute()
            if progress is not None:
                with lock:
                    progress(result)
            return result

        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            for result in pool.map(one, todo):
                runs[result.loop].modules[result.module] = result
        for run in runs.values():
            run.modules = {s.module: run.modules[s.module] for s in chosen}
    finally:
        if own_dir:
            shutil.rmtree(workdir, ignore_errors=True)
    for run in runs.values():
        run.duration = time.monotonic() - started
    return runs


# ---------------------------------------------------------------------------------------------
# known failures: the list of today's failures the lead shrinks to nothing
# ---------------------------------------------------------------------------------------------

def known_failures_path(interpreter: Interpreter) -> Path:
    return KNOWN_FAILURES_DIR / f"py{interpreter.tag}.txt"


def load_known_failures(interpreter: Interpreter) -> dict:
    """id -> note.  A missing file means no known failures: every failure counts."""
    path = known_failures_path(interpreter)
    known = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            entry, _, note = line.partition("#")
            if entry.strip():
                known[entry.strip()] = note.strip()
    return known


def write_known_failures(run: Run, charged: list) -> Path:
    path = known_failures_path(run.interpreter)
    path.parent.mkdir(exist_ok=True)
    lines = [
        f"# Tests of test.test_asyncio that fail on uringloop with Python {run.interpreter.tag}.",
        "# The pytest gate (test_conformance.py) fails on any failure NOT listed here; remove",
        "# entries as they are fixed (URINGLOOP_CONFORMANCE=strict fails on listed tests that",
        "# pass).  Generated by: python tests/conformance/run.py --write-known-failures",
        "# The text after '#' is the failure's headline when the list was generated.",
    ]
    for module in run.modules.values():
        failures = sorted((r for r in charged if r.id.startswith(module.module + ".")),
                          key=lambda r: r.id)
        if failures:
            lines.append("")
            lines.append(f"# {module.module}: {len(failures)}")
            lines.extend(f"{r.id}  # {r.headline()[:150]}" for r in failures)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@dataclasses.dataclass
class Verdict:
    charged: list       # tests uringloop does not pass although the stock loop does (or, with
                        # no stock run, every failing test): TestOutcomes of the uringloop run
    unexpected: list    # the charged ones that are not in the known-failures list
    fixed: list         # listed ids that uringloop passes now
    stale: list         # listed ids that the modules run did not collect
    stock_failing: list  # tests the stock loop fails: selection or environment problems


def judge(run: Run, known: dict, stock: Run | None = None) -> Verdict:
    """What uringloop's run is charged with.  With a stock run, a test that fails there as well
    is not charged to uringloop (it is reported in stock_failing instead), and a test uringloop
    skips while the stock loop passes it *is* charged: skipping is not passing."""
    def stock_outcome(module, test_id):
        if stock is None or module not in stock.modules:
            return None
        r = stock.modules[module].results.get(test_id)
        return r.outcome if r is not None else None

    charged, collected, fixed = [], set(), []
    for name, module in run.modules.items():
        collected.update(module.tests)
        collected.update(module.results)
        for r in module.outcomes():
            theirs = stock_outcome(name, r.id)
            if r.failing and theirs not in FAILING:
                charged.append(r)
            elif r.outcome == SKIPPED and theirs == PASSED:
                charged.append(dataclasses.replace(
                    r, detail=f"skipped where the stock loop passes: {r.detail}"))
            elif r.id in known and not r.failing:
                fixed.append(r.id)
    unexpected = [r for r in charged if r.id not in known]
    ran_modules = tuple(f"{name}." for name, m in run.modules.items() if m.status == "ran")
    stale = [i for i in known if i.startswith(ran_modules) and i not in collected]
    stock_failing = stock.failures() if stock is not None else []
    return Verdict(charged, unexpected, fixed, stale, stock_failing)


# ---------------------------------------------------------------------------------------------
# the summary
# ---------------------------------------------------------------------------------------------

def format_summary(run: Run) -> str:
    it = run.interpreter
    lines = [f"test.test_asyncio of Python {'.'.join(map(str, it.version))} ({it.executable})",
             f"loop under test: {LOOP_NAMES[run.loop]}; per-test timeout {run.timeout:g}s; "
             f"{run.jobs} module(s) at a time; {run.duration:.0f}s",
             "",
             f"{'module':<24}{'tests':>6}{'passed':>8}{'failed':>8}{'skipped':>8}"
             f"{'excluded':>9}   {'loop-using: pass/fail':<22}{'time':>6}",
             "-" * 97]
    total = dict.fromkeys(("collected", "excluded", PASSED, "failing", SKIPPED,
                           "loop_passed", "loop_failing"), 0)
    for name, m in run.modules.items():
        if m.status == "absent":
            lines.append(f"{name:<24}{'(not in this version)':>38}")
            continue
        if m.status != "ran":
            lines.append(f"{name:<24}  {m.status}: {m.reason.splitlines()[0][:60]}")
            if m.status == "broken":
                total["failing"] += 1
            continue
        c = m.counts()
        for key in total:
            total[key] += c[key]
        loop_using = f"{c['loop_passed']}/{c['loop_failing']}"
        lines.append(f"{name:<24}{c['collected']:>6}{c[PASSED]:>8}{c['failing']:>8}"
                     f"{c[SKIPPED]:>8}{c['excluded']:>9}   {loop_using:<22}{m.duration:>5.0f}s")
    lines.append("-" * 97)
    loop_using = f"{total['loop_passed']}/{total['loop_failing']}"
    lines.append(f"{'total':<24}{total['collected']:>6}{total[PASSED]:>8}{total['failing']:>8}"
                 f"{total[SKIPPED]:>8}{total['excluded']:>9}   {loop_using:<22}"
                 f"{run.duration:>5.0f}s")
    flaky = [r for m in run.modules.values() for r in m.flaky()]
    if flaky:
        lines.append(f"failed, then passed when run again alone (counted as passed): {len(flaky)}")
        for r in sorted(flaky, key=lambda r: r.id):
            lines.append(f"  {r.id}\n      first run: {r.first_failure.splitlines()[0]}")
    return "\n".join(lines)


def format_failures(failures: list, *, details: bool = False) -> str:
    lines = []
    for r in sorted(failures, key=lambda r: r.id):
        lines.append(f"  {r.id}\n      {r.headline()}")
        if details and r.detail:
            lines.extend("      | " + line for line in r.detail.rstrip().splitlines())
    return "\n".join(lines)
