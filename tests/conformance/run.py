"""Command line of the conformance run.  Examples (from the repository root):

    python tests/conformance/run.py                          # every module, uringloop
    python tests/conformance/run.py test_tasks test_locks    # some modules
    python tests/conformance/run.py --loop asyncio           # the stock loop: validates the selection
    python tests/conformance/run.py --show failures          # also list each failing test
    ~/.pyenv/versions/3.12.1/bin/python tests/conformance/run.py   # another interpreter
    python tests/conformance/run.py --compare                # also the stock loop, the oracle
    python tests/conformance/run.py --write-known-failures   # regenerate known_failures/pyX.Y.txt
"""

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from conformance import runner  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Run CPython's test.test_asyncio with uringloop as the loop under test.",
        epilog=__doc__.split("\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", help="modules to run (default: all)")
    parser.add_argument("--loop", choices=("uringloop", "asyncio"), default="uringloop",
                        help="the loop under test; asyncio = only the stock loop, which "
                             "validates the selection (it must pass everything)")
    parser.add_argument("--compare", action="store_true",
                        help="run the stock loop as well, and charge uringloop only with "
                             "tests the stock loop passes (a uringloop skip of a test the stock "
                             "loop passes is charged too)")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter whose test suite runs (default: this one)")
    parser.add_argument("--timeout", type=float, default=runner.DEFAULT_TIMEOUT,
                        help="seconds per test (default %(default)s)")
    parser.add_argument("--jobs", "-j", type=int, default=runner.DEFAULT_JOBS,
                        help="modules at a time (default %(default)s)")
    parser.add_argument("--show", choices=("none", "unexpected", "charged"),
                        default="unexpected",
                        help="list failing tests: none, those not in the known-failures list "
                             "(default), or all that uringloop is charged with")
    parser.add_argument("--details", action="store_true", help="with --show: full tracebacks")
    parser.add_argument("--json", metavar="PATH", help="write every result to PATH")
    parser.add_argument("--log-dir", metavar="DIR",
                        help="keep each module's output and events in DIR")
    parser.add_argument("--write-known-failures", action="store_true",
                        help="write the failures uringloop is charged with to "
                             "known_failures/pyX.Y.txt (implies --compare)")
    args = parser.parse_args(argv)

    if args.write_known_failures:
        args.compare = True     # the list holds what uringloop is charged with: vs the stock loop
    loops = ["asyncio"] if args.loop == "asyncio" else \
        (["asyncio", "uringloop"] if args.compare else ["uringloop"])
    env = runner.child_environment()
    interpreter = runner.probe_interpreter(args.python, loops[-1], env)
    if interpreter.problem:
        print(f"conformance run SKIPPED for {args.python}: {interpreter.problem}")
        return 0
    if args.write_known_failures and args.modules:
        parser.error("--write-known-failures rewrites the whole list: run every module")
    chosen = runner.selected_suites(args.modules)
    workdir = Path(args.log_dir).resolve() if args.log_dir else None
    if workdir:
        workdir.mkdir(parents=True, exist_ok=True)

    def progress(m):
        if m.status == "ran":
            c = m.counts()
            print(f"  [{m.loop}] {m.module}: {c['passed']} passed, {c['failing']} failed, "
                  f"{c['skipped']} skipped, {c['excluded']} excluded ({m.duration:.0f}s)",
                  flush=True)
        else:
            print(f"  [{m.loop}] {m.module}: {m.status}: {m.reason[:100]}", flush=True)

    runs = runner.run_conformance(interpreter, loops, chosen, timeout=args.timeout,
                                  jobs=args.jobs, workdir=workdir, env=env, progress=progress)
    for run in runs.values():
        print()
        print(runner.format_summary(run))
    if args.json:
        Path(args.json).write_text(
            json.dumps({loop: run.to_json() for loop, run in runs.items()}, indent=1),
            encoding="utf-8")

    stock = runs.get("asyncio")
    status = 0
    if stock is not None and stock.failures():
        # The stock loop is the oracle: what it fails is a selection or environment problem.
        status = 1
        print(f"\nthe STOCK loop fails {len(stock.failures())} test(s)"
              + (":" if args.show != "none" else ""))
        if args.show != "none":
            print(runner.format_failures(stock.failures(), details=args.details))
    if "uringloop" not in runs:
        return status

    run = runs["uringloop"]
    known = runner.load_known_failures(interpreter)
    verdict = runner.judge(run, known, stock)
    if args.write_known_failures:
        path = runner.write_known_failures(run, verdict.charged)
        print(f"\nwrote {path} ({len(verdict.charged)} known failures)")
        return status
    shown = verdict.charged if args.show == "charged" else verdict.unexpected
    if shown and args.show != "none":
        print(f"\n{'charged' if args.show == 'charged' else 'not in the known-failures list'}"
              f" ({len(shown)}):")
        print(runner.format_failures(shown, details=args.details))
    print(f"\nuringloop is charged with {len(verdict.charged)} test(s)"
          f"{' (compared with the stock loop)' if stock else ''}; "
          f"{len(verdict.unexpected)} not in {runner.known_failures_path(interpreter).name} "
          f"({len(known)} listed, {len(verdict.fixed)} of them pass now, "
          f"{len(verdict.stale)} not collected)")
    return 1 if verdict.unexpected or status else 0


if __name__ == "__main__":
    sys.exit(main())
