"""The conformance run as part of `python -m pytest` (see README.md in this directory).

Environment:
  URINGLOOP_CONFORMANCE=gate     (default) fail on a test uringloop is charged with that is not
                                 in known_failures/pyX.Y.txt
  URINGLOOP_CONFORMANCE=strict   as gate, and also fail on listed tests that pass now
  URINGLOOP_CONFORMANCE=report   run and report, never fail (charged modules show as xfail)
  URINGLOOP_CONFORMANCE=off      do not run it
  URINGLOOP_CONFORMANCE_STOCK=0  do not run the stock loop alongside (default 1: it validates
                                 the selection, and a test the stock loop fails too is not
                                 charged to uringloop)
  URINGLOOP_CONFORMANCE_TIMEOUT  seconds per test (default 30)
  URINGLOOP_CONFORMANCE_JOBS     modules at a time (default 2)

The whole run happens once, in the session fixture, for the modules whose items were selected
(`-k test_tasks` runs one module); each module is then one pytest item per loop.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from conformance import runner, suites  # noqa: E402

MODES = ("gate", "strict", "report", "off")
MODE = os.environ.get("URINGLOOP_CONFORMANCE", "gate").strip().lower() or "gate"
WITH_STOCK = os.environ.get("URINGLOOP_CONFORMANCE_STOCK", "1").strip() not in ("0", "no", "")
TIMEOUT = float(os.environ.get("URINGLOOP_CONFORMANCE_TIMEOUT", runner.DEFAULT_TIMEOUT))
JOBS = int(os.environ.get("URINGLOOP_CONFORMANCE_JOBS", runner.DEFAULT_JOBS))
MODULES = [suite.module for suite in suites.SUITES]

_RESULTS = pytest.StashKey()


@dataclasses.dataclass
class Results:
    interpreter: runner.Interpreter
    runs: dict              # loop -> runner.Run
    verdict: runner.Verdict
    known: dict


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "conformance: CPython's test.test_asyncio run on uringloop (minutes; "
                   "URINGLOOP_CONFORMANCE=off or -m 'not conformance' leaves it out)")
    if MODE not in MODES:
        raise pytest.UsageError(f"URINGLOOP_CONFORMANCE={MODE!r}: choose one of {MODES}")


@pytest.fixture(scope="session")
def conformance(request) -> Results:
    if MODE == "off":
        pytest.skip("URINGLOOP_CONFORMANCE=off")
    env = runner.child_environment()
    interpreter = runner.probe_interpreter(sys.executable, "uringloop", env)
    if interpreter.problem:
        pytest.skip(f"conformance run skipped: {interpreter.problem}")
    wanted = {item.callspec.params["module"] for item in request.session.items
              if getattr(item, "callspec", None) is not None
              and item.get_closest_marker("conformance") is not None}
    chosen = [suite for suite in suites.SUITES if suite.module in wanted]
    loops = ["asyncio", "uringloop"] if WITH_STOCK else ["uringloop"]
    runs = runner.run_conformance(interpreter, loops, chosen, timeout=TIMEOUT, jobs=JOBS,
                                  env=env)
    known = runner.load_known_failures(interpreter)
    verdict = runner.judge(runs["uringloop"], known, runs.get("asyncio"))
    results = Results(interpreter, runs, verdict, known)
    request.config.stash[_RESULTS] = results
    return results


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    results = config.stash.get(_RESULTS, None)
    if results is None:
        return
    write = terminalreporter.write_line
    terminalreporter.section("uringloop conformance (CPython test.test_asyncio)")
    for run in results.runs.values():
        for line in runner.format_summary(run).splitlines():
            write(line)
        write("")
    verdict = results.verdict
    path = runner.known_failures_path(results.interpreter)
    write(f"uringloop is charged with {len(verdict.charged)} test(s); "
          f"{len(verdict.unexpected)} not in {path.name} ({len(results.known)} listed, "
          f"{len(verdict.fixed)} of them pass now, {len(verdict.stale)} not collected)")
    if verdict.fixed:
        write(f"listed in {path.name} but passing now (remove them): " + ", ".join(verdict.fixed))
