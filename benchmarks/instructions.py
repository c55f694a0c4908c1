#!/usr/bin/env python3
"""User-space instructions per request, counted with callgrind: the loops' work compared where
the guest's speed will not hold still.

    python3 benchmarks/instructions.py --server uringloop --server uvloop --style http
    python3 benchmarks/instructions.py --server new=uringloop --server old=uringloop@/tmp/old \\
        --style protocol --size 1 --conns 10 --top 20

A 2-CPU guest's rates move by tens of percent within minutes and it has no hardware counters
(`perf stat -e instructions` says "not supported"), so a change worth 2-3% of a request cannot
be told from noise by timing it.  Valgrind's callgrind counts every instruction the server's
process executes in user space, whatever else the host is doing.  What it cannot see is the
kernel's side -- system calls, the network stack, wake-ups -- nor cache misses or how long a
reply waits; for those, time the servers with alternate.py.  It answers one question well:
does this build (or this loop) make the server's own code do more or less per request?

How: each server runs benchmarks/servers.py under callgrind (about 50 times slower), one after
the other; the load generator (wrk for the HTTP styles) warms it up, callgrind's counters are
zeroed (`callgrind_control -z`), the load runs for --seconds, and the counters are dumped
(`callgrind_control -d`).  Under callgrind the server is the bottleneck by far, so nearly every
instruction it executes is work on a request; the dump's cost lines divided by the requests
the load generator completed are the instructions per request.  The window's edges add the
set-up and close of the load's connections and the requests in flight at either end (10
connections: ~0.3% at ~3,000 requests).  The loop's wait-before-sleep spin is off
(URINGLOOP_SPIN_US=0): spinning executes instructions that are not work.

The counts are split by the shared object they ran in: the interpreter (libpython), the
loop's own compiled code (uringloop's or uvloop's modules), CPython's `_asyncio` (futures and
tasks), libc, and the rest (aiohttp's or httptools' extensions, multidict, ...).  --top N adds
the N costliest functions of the loop's own code."""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import alternate  # noqa: E402
import harness  # noqa: E402
import servers  # noqa: E402

# Valgrind's start-up and aiohttp's or uvicorn's imports at its speed take 10-40 s.
READY_TIMEOUT = 180.0
# Name-compressed callgrind lines: "fn=(12) name" defines entry 12, "fn=(12)" refers to it.
_NAMED = re.compile(r"^(ob|fl|fi|fe|fn|cob|cfi|cfl|cfn)=\((\d+)\)(?: (.*))?$")
_TABLE = {"ob": "ob", "cob": "ob", "fl": "fl", "fi": "fl", "fe": "fl", "cfi": "fl", "cfl": "fl",
          "fn": "fn", "cfn": "fn"}


def self_costs(path: Path) -> collections.Counter:
    """{(object, function): instructions executed in the function itself} from a callgrind
    dump (the format of callgrind's manual, "Callgrind Format Specification"): a cost line
    belongs to the current ob=/fn=, except the one right after a calls= line, which is the
    call's inclusive cost and is already counted in the callee."""
    names: dict = {"ob": {}, "fl": {}, "fn": {}}
    obj = fn = None
    costs: collections.Counter = collections.Counter()
    after_calls = False
    with open(path) as f:
        for line in f:
            m = _NAMED.match(line)
            if m:
                key, idx, name = m.groups()
                table = names[_TABLE[key]]
                if name is not None:
                    table[idx] = name.rstrip("\n")
                if key == "ob":
                    obj = table[idx]
                elif key == "fn":
                    fn = table[idx]
                continue
            if line.startswith("calls="):
                after_calls = True
                continue
            if line[:1].isdigit() or line[:1] in "+-*":
                parts = line.split()
                if len(parts) >= 2:
                    if after_calls:
                        after_calls = False
                    else:
                        costs[(obj, fn)] += int(parts[1])
    return costs


def group_of(obj: str) -> str:
    name = Path(obj or "???").name
    if name.startswith("libpython"):
        return "interpreter"
    if "/uringloop/" in (obj or "") or "/uvloop/" in (obj or ""):
        return "the loop's own"
    if name.startswith("_asyncio."):
        return "_asyncio"
    if name.startswith("libc.so"):
        return "libc"
    return "other"


GROUPS = ("interpreter", "the loop's own", "_asyncio", "libc", "other")


def count_server(name: str, loop: str, tree: Optional[Path], args, out_dir: Path) -> dict:
    cpu_server, cpu_client = harness.pinning()
    server = harness.Server(loop, args.style, tree=tree, wrapper=(
        "valgrind", "--tool=callgrind", "--dump-instr=no",
        f"--callgrind-out-file={out_dir / name}.%p"),
        extra_env={"URINGLOOP_SPIN_US": "0"})
    server.start(cpu_server, out_dir, max_seconds=args.warmup + args.seconds + 600,
                 ready_timeout=READY_TIMEOUT)
    if not server.ready:
        raise SystemExit(f"{name}: {server.error}")
    try:
        load(server, args, args.warmup, cpu_client)
        subprocess.run(["callgrind_control", "-z", str(server.pid)], check=True,
                       capture_output=True, timeout=60)
        requests = load(server, args, args.seconds, cpu_client)
        subprocess.run(["callgrind_control", "-d", str(server.pid)], check=True,
                       capture_output=True, timeout=60)
    finally:
        server.stop(grace=10.0)
    dumps = sorted(out_dir.glob(f"{name}.{server.pid}.*"))
    if not dumps:
        raise SystemExit(f"{name}: callgrind wrote no dump in {out_dir}")
    return {"requests": requests, "costs": self_costs(dumps[-1])}


def load(server: harness.Server, args, seconds: float, cpu: Optional[int]) -> int:
    """Run the load generator against `server` for `seconds`; the requests it completed."""
    if args.style in servers.HTTP_STYLES:
        result = harness.run_wrk(server.port, args.conns, seconds, cpu)
        requests = result.get("requests")
    else:
        result = harness.run_loadgen(server.port, args.conns, int(args.size * 1024), seconds,
                                     0.0, cpu, connect_timeout=60.0, tls=args.style == "tls")
        requests = result.get("total_requests")
    if not result.get("ok") or not requests:
        raise SystemExit(f"{server.loop}: the load failed: {result.get('error')}")
    return requests


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    alternate.add_point_arguments(parser, "a server to count (ratios are to the first)")
    parser.add_argument("--seconds", type=float, default=10.0, help="the counted window")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--top", type=int, default=0, metavar="N",
                        help="also list the N costliest functions of the loop's own code")
    parser.add_argument("--out", type=Path, default=Path("/tmp/uringloop-callgrind"),
                        help="where the callgrind dumps and server logs go")
    args = parser.parse_args(argv)
    try:
        specs = [alternate.parse_server(s) for s in args.server]
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    names = [name for name, _, _ in specs]
    if len(set(names)) != len(names):
        parser.error("give the servers distinct names (NAME=LOOP)")
    if harness.FLOOR_NAME in [loop for _, loop, _ in specs]:
        parser.error("the C floor has no interpreter to count; leave it out")
    for tool in ("valgrind", "callgrind_control"):
        if not shutil.which(tool):
            parser.error(f"{tool} is not on PATH (apt-get install valgrind)")
    if args.style in servers.HTTP_STYLES and harness.wrk_path() is None:
        parser.error(f"the {args.style} style needs wrk on PATH")
    harness.build_loadgen(print)
    if args.style == "tls":
        harness.build_loadgen_tls(print)
    args.out.mkdir(parents=True, exist_ok=True)

    counted = {}
    for name, loop, tree in specs:
        started = time.monotonic()
        counted[name] = count_server(name, loop, tree, args, args.out)
        print(f"{name}: {counted[name]['requests']:,} requests counted "
              f"({time.monotonic() - started:.0f} s)", flush=True)

    print(f"\n{args.style} {args.size:g} KiB x {args.conns}: user-space instructions per request "
          f"(callgrind, {args.seconds:g} s window)")
    base = None
    print(f"  {'':<12}{'total':>10}" + "".join(f"{g:>16}" for g in GROUPS))
    for name in names:
        requests = counted[name]["requests"]
        by_group = collections.Counter()
        for (obj, _), cost in counted[name]["costs"].items():
            by_group[group_of(obj)] += cost
        total = sum(by_group.values()) / requests
        base = base or total
        row = f"  {name:<12}{total:>10,.0f}" + "".join(
            f"{by_group[g] / requests:>16,.0f}" for g in GROUPS)
        print(row + (f"   {total / base:.3f}x" if name != names[0] else ""))
    if "asyncio" in [loop for _, loop, _ in specs]:
        print("  (the stock loop's own code is Python: its instructions are the interpreter's)")
    if args.top:
        for name in names:
            requests = counted[name]["requests"]
            own = [(cost, obj, fn) for (obj, fn), cost in counted[name]["costs"].items()
                   if group_of(obj) == "the loop's own"]
            print(f"\n  {name}: the loop's own code, costliest functions per request")
            for cost, obj, fn in sorted(own, reverse=True)[:args.top]:
                print(f"    {cost / requests:>8,.0f}  {Path(obj).name.split('.')[0]}  {fn}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
