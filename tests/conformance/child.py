"""Run one module of `test.test_asyncio` in this process, with a chosen loop as the loop under test.

Started by runner.py, one process per module (and again after a crash or a hang, with the tests
already reported in --skip-file; and once per failed test with --only, to run it again alone).
It reports to the parent through --events, a file of JSON lines written and flushed one event at
a time, so that everything up to a crash survives it:

    {"event": "collected", "python": [3, 11, 7], "tests": [...], "excluded": {id: reason}}
    {"event": "start", "id": ...}
    {"event": "result", "id": ..., "outcome": ..., "detail": ..., "loops": n, "duration": s}
    {"event": "fixture_error", "id": ..., "detail": ...}     (setUpClass, tearDownModule, ...)
    {"event": "fixture_skipped", "id": ..., "reason": ...}   (setUpClass raised SkipTest)
    {"event": "module_skipped", "reason": ...}
    {"event": "done"}

Per-test timeout: faulthandler's watchdog thread is re-armed at every test boundary.  It does not
need the main thread (which may be blocked inside io_uring_enter or a C call), dumps every
thread's traceback into the log and exits the process; the parent then reports the test that was
running as timed out and starts a new process for the rest of the module.

Test ids are shortened to "<module>.<Class>.<test>" (without "test.test_asyncio.").
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import importlib
import json
import os
import sys
import time
import unittest
import unittest.mock
import warnings

# This file runs as a script: make `conformance` importable as the package it belongs to, and do
# not leave its own directory on sys.path (its module names could shadow others).
_HERE = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or os.curdir) == _HERE:
    del sys.path[0]
sys.path.insert(0, os.path.dirname(_HERE))

from conformance import exclusions, suites  # noqa: E402

PACKAGE = "test.test_asyncio"
DETAIL_LIMIT = 6000     # characters of traceback kept per test


class Events:
    def __init__(self, path: str):
        self._file = open(path, "a", encoding="utf-8", buffering=1)

    def emit(self, event: str, **fields) -> None:
        fields["event"] = event
        self._file.write(json.dumps(fields) + "\n")
        self._file.flush()


_package = PACKAGE


def short_id(test_id: str) -> str:
    prefix = _package + "."
    return test_id[len(prefix):] if test_id.startswith(prefix) else test_id


# ---- the loop under test ----

class LoopCounter:
    """The factory every hook of suites.py ends in; counts the loops it builds so that each
    test's result says whether the loop under test took part in it."""

    def __init__(self, loop_class):
        self.loop_class = loop_class
        self.created = 0

    def __call__(self):
        self.created += 1
        return self.loop_class()


def loop_class_for(name: str):
    if name == "uringloop":
        import uringloop
        return uringloop.Loop
    if name == "asyncio":
        # What asyncio.new_event_loop() returns on Linux: the selector loop on epoll.
        return asyncio.SelectorEventLoop
    raise SystemExit(f"unknown loop {name!r}")


def install_policy_factory(factory: LoopCounter) -> None:
    # A class attribute, not an installed policy instance: tests and tearDownModule call
    # asyncio.set_event_loop_policy(None), after which asyncio builds a fresh
    # DefaultEventLoopPolicy -- which then still builds our loop.
    asyncio.DefaultEventLoopPolicy._loop_factory = staticmethod(factory)


def converted_class(module, convert: suites.Convert, factory: LoopCounter):
    source = getattr(module, convert.source, None)
    if source is None:
        return None
    namespace = {"__module__": module.__name__, "__qualname__": convert.name,
                 "__doc__": f"{convert.source}, with the loop under test."}
    if convert.how in (suites.CREATE_EVENT_LOOP, suites.NEW_LOOP):
        namespace[convert.how] = lambda self: factory()
    elif convert.how == suites.PATCH_SELECTOR_LOOP_IN_SETUP:
        def setUp(self):
            with unittest.mock.patch.object(asyncio, "SelectorEventLoop", factory):
                source.setUp(self)
        namespace["setUp"] = setUp
    else:
        raise ValueError(f"unknown conversion {convert.how!r}")
    cls = type(convert.name, (source,), namespace)
    # Reachable by name like every other class of the module (unittest resolves ids that way).
    setattr(module, convert.name, cls)
    return cls


def test_classes(module, suite: suites.Suite, factory: LoopCounter, events: Events) -> list:
    seen, classes = set(), []
    for name, obj in list(vars(module).items()):
        if (isinstance(obj, type) and issubclass(obj, unittest.TestCase)
                and obj.__module__ == module.__name__ and name not in suite.drop
                and name == obj.__name__ and obj not in seen):
            seen.add(obj)
            classes.append(obj)
    for convert in suite.convert:
        cls = converted_class(module, convert, factory)
        if cls is not None:
            classes.append(cls)
        else:
            # A class suites.py converts is gone from this Python's suite: its tests would
            # silently not run, so the module fails until suites.py follows.
            events.emit("fixture_error", id=f"conversion of {convert.source}",
                        detail=f"{module.__name__} has no class {convert.source} to run on "
                               "the loop under test; update suites.py")
    return classes


def cap_support_timeouts(per_test: float) -> None:
    """As regrtest does for its --timeout: the suite's own waits (support.SHORT_TIMEOUT is 30s)
    must end before the watchdog does, so that a test stuck waiting fails with its own message.
    Done before the test modules are imported, since some capture these values as defaults."""
    from test import support
    cap = per_test * 0.75
    for name in ("LOOPBACK_TIMEOUT", "INTERNET_TIMEOUT", "SHORT_TIMEOUT", "LONG_TIMEOUT"):
        if hasattr(support, name):
            setattr(support, name, min(getattr(support, name), cap))


# ---- reporting unittest's outcomes ----

class EventResult(unittest.TestResult):
    """A TestResult that writes one "result" event per test and re-arms the watchdog."""

    def __init__(self, events: Events, factory: LoopCounter, timeout: float, log):
        super().__init__()
        self.events = events
        self.factory = factory
        self.timeout = timeout
        self.log = log
        # Loops are attributed to the test whose stopTest comes next: some are built before
        # startTest (3.10's IsolatedAsyncioTestCase.run() makes its loop first) or in setUpClass.
        self.loops_mark = factory.created
        self._reset()

    def _reset(self):
        self.current = None
        self.problems = []          # (kind, text)
        self.skip_reason = None
        self.succeeded = False
        self.expected_failure = False

    def arm(self):
        faulthandler.dump_traceback_later(self.timeout, exit=True, file=self.log)

    def startTest(self, test):
        super().startTest(test)
        self._reset()
        self.current = short_id(test.id())
        self.started = time.monotonic()
        self.log.write(f"\n### START {self.current}\n")
        self.log.flush()
        self.events.emit("start", id=self.current)
        self.arm()

    def stopTest(self, test):
        self.arm()      # setUpClass/tearDownClass of the next class run under the watchdog too
        super().stopTest(test)
        if self.problems:
            kinds = [kind for kind, _ in self.problems]
            outcome = "error" if "error" in kinds else kinds[0]
            detail = "\n".join(text for _, text in self.problems)
        elif self.skip_reason is not None and not self.succeeded:
            outcome, detail = "skipped", self.skip_reason
        elif self.succeeded or self.expected_failure:
            outcome, detail = "passed", ""
        else:
            outcome, detail = "error", "unittest reported no outcome for this test"
        loops_mark, self.loops_mark = self.loops_mark, self.factory.created
        self.events.emit("result", id=self.current, outcome=outcome,
                         detail=detail[-DETAIL_LIMIT:],
                         loops=self.factory.created - loops_mark,
                         duration=round(time.monotonic() - self.started, 3))
        self.current = None

    def _is_fixture(self, test) -> bool:
        # unittest reports setUpClass/setUpModule/... failures with a stand-in "_ErrorHolder".
        return not isinstance(test, unittest.TestCase) or self.current is None

    def addError(self, test, err):
        super().addError(test, err)
        text = self._exc_info_to_string(err, test)
        if self._is_fixture(test):
            self.events.emit("fixture_error", id=short_id(test.id()), detail=text[-DETAIL_LIMIT:])
        else:
            self.problems.append(("error", text))

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self.problems.append(("failed", self._exc_info_to_string(err, test)))

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            kind = "failed" if issubclass(err[0], test.failureException) else "error"
            self.problems.append((kind, f"{subtest}:\n" + self._exc_info_to_string(err, test)))

    def addSuccess(self, test):
        super().addSuccess(test)
        self.succeeded = True

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        if self._is_fixture(test):      # setUpClass/setUpModule raised SkipTest
            self.events.emit("fixture_skipped", id=short_id(test.id()), reason=str(reason))
            return
        self.skip_reason = reason

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self.expected_failure = True

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self.problems.append(("failed", "unexpected success of a test marked expectedFailure"))


# ---- main ----

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--module", required=True)
    parser.add_argument("--package", default=PACKAGE,
                        help="(another package of unittest modules: the runner's own tests)")
    parser.add_argument("--loop", choices=("uringloop", "asyncio"), required=True)
    parser.add_argument("--timeout", type=float, required=True)
    parser.add_argument("--events", required=True)
    parser.add_argument("--skip-file")
    parser.add_argument("--only", action="append", default=[],
                        help="run only this test (short id); repeatable")
    args = parser.parse_args(argv)

    events = Events(args.events)
    log = os.fdopen(os.dup(2), "w", encoding="utf-8", errors="replace")
    # Whatever hangs before the first test (imports, collection) is caught as well.
    faulthandler.dump_traceback_later(args.timeout, exit=True, file=log)

    global _package
    _package = args.package
    cap_support_timeouts(args.timeout)
    if args.package == PACKAGE:
        suite = suites.BY_NAME[args.module]
    else:
        suite = suites.Suite(args.module, False, package=args.package)
    factory = LoopCounter(loop_class_for(args.loop))
    install_policy_factory(factory)
    if not sys.warnoptions:
        warnings.simplefilter("default")    # what unittest.main() does

    try:
        module = importlib.import_module(f"{args.package}.{args.module}")
    except unittest.SkipTest as exc:
        events.emit("module_skipped", reason=f"the module skips itself: {exc}")
        events.emit("done")
        return 0

    loader = unittest.TestLoader()
    tests = []
    for cls in test_classes(module, suite, factory, events):
        tests.extend(loader.loadTestsFromTestCase(cls))
    version = sys.version_info[:3]
    excluded = {}
    for test in tests:
        rule = exclusions.match(short_id(test.id()), version)
        if rule is not None:
            excluded[short_id(test.id())] = rule.reason
    events.emit("collected", python=list(version), loop=args.loop,
                tests=[short_id(t.id()) for t in tests], excluded=excluded)

    skip = set()
    if args.skip_file:
        with open(args.skip_file, encoding="utf-8") as f:
            skip = {line.strip() for line in f if line.strip()}
    to_run = [t for t in tests if short_id(t.id()) not in excluded
              and short_id(t.id()) not in skip
              and (not args.only or short_id(t.id()) in args.only)]

    result = EventResult(events, factory, args.timeout, log)
    result.arm()
    unittest.TestSuite(to_run).run(result)
    faulthandler.cancel_dump_traceback_later()
    events.emit("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
