#!/usr/bin/env python3
"""Alternating runs of two or more servers alive at once: the comparison behind the README's
levers table and "where the time goes" bullets.

    python3 benchmarks/alternate.py --server uringloop --server uvloop \\
        --style bufferedprotocol --size 16 --conns 100 --rounds 8
    python3 benchmarks/alternate.py --server new=uringloop --server old=uringloop@/tmp/old \\
        --style protocol --size 1 --conns 10 --perf /tmp/prof

run.py measures every point of the matrix in a few rounds; this measures one point in many, and
says for each run what the server's CPU did with it.  Every server is started once, pinned to
the first CPU, and stays alive; each round runs the load generator (wrk for the HTTP styles)
against each server in turn, on the second CPU, the order rotated every round so that no
server always runs first or always follows the same one.  A guest's speed moves by tens of
percent within minutes (benchmarks/README.md): ratios are therefore taken within a round, and
the round's spread is printed beside the median.

Per run it reads the server's user and system CPU time (/proc/PID/stat, all threads) and
divides by the requests the run made.  For a saturated server the sum is about the inverse of
its rate; the split is what tells more: when a round runs slower, whether the loop's own work
(user time) or the kernel's grew, and whether it grew for every server of the round alike.
With --perf DIR each run is also sampled (perf record, 2 kHz, the load's steady part) into
DIR/NAME-ROUND.data, and the share of each --symbols entry is turned into microseconds per
request.

A server NAME=LOOP@TREE runs TREE's benchmarks/servers.py with TREE's uringloop (a checkout
whose extension is built in place, e.g. a `git worktree` of an older commit): two builds
compared under the same load, the way the levers were measured.  A server c-io_uring is the C
floor (uring_echo.c, one echo whatever the style): a program with no interpreter beside the
loops, which tells whether a slower round slowed the kernel's part for everyone."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import loops  # noqa: E402
import servers  # noqa: E402

PERF_FREQUENCY = 2000
WARMUP = 0.5
TICK_US = 1e6 / os.sysconf("SC_CLK_TCK")


def parse_server(spec: str) -> tuple[str, str, Optional[Path]]:
    """'LOOP', 'NAME=LOOP' or 'NAME=LOOP@TREE' -> (name, loop, tree)."""
    name, eq, rest = spec.partition("=")
    if not eq:
        name, rest = "", spec
    loop, _, tree = rest.partition("@")
    known = (*loops.LOOP_NAMES, harness.FLOOR_NAME)
    if loop not in known:
        raise argparse.ArgumentTypeError(
            f"unknown loop {loop!r} in {spec!r} (one of {', '.join(known)})")
    if tree and loop == harness.FLOOR_NAME:
        raise argparse.ArgumentTypeError(f"{spec!r}: the C floor has no tree of its own")
    if tree and not (Path(tree) / "benchmarks" / "servers.py").is_file():
        raise argparse.ArgumentTypeError(f"{tree!r} has no benchmarks/servers.py")
    return name or loop, loop, Path(tree).resolve() if tree else None


def cpu_ticks(pid: int) -> Optional[tuple[int, int]]:
    """(user, system) clock ticks of process `pid`, its threads included (None: gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return harness.parse_stat_user_system_ticks(f.read())
    except OSError:
        return None


def perf_shares(path: Path, symbols: list[str]) -> dict:
    """{symbol: percent of the recording's samples} for each of `symbols`."""
    proc = subprocess.run(["perf", "report", "-i", str(path), "--no-children", "--sort", "sym",
                           "-q", "--stdio"], capture_output=True, text=True)
    shares = dict.fromkeys(symbols, 0.0)
    for line in proc.stdout.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+\[.\]\s+(\S+)", line)
        if m and m.group(2) in shares:
            shares[m.group(2)] += float(m.group(1))
    return shares


def one_run(server: harness.Server, args, client_cpu: Optional[int], perf_out: Optional[Path]):
    """One load run against `server`: the load generator's result plus the server's CPU time
    per request, and the perf shares when `perf_out` is given."""
    recorder = None
    if perf_out is not None:
        # Sample the steady part only: after the load generator's connections and warm-up,
        # ending before its last requests.
        window = max(args.duration - 0.8, 0.2)
        recorder = subprocess.Popen(
            ["bash", "-c", f"sleep {WARMUP + 0.3}; exec perf record -q -F {PERF_FREQUENCY} "
                           f"-p {server.pid} -o {perf_out} -- sleep {window}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    before = cpu_ticks(server.pid)
    if args.style in servers.HTTP_STYLES:
        result = harness.run_wrk(server.port, args.conns, args.duration, client_cpu)
        requests = result.get("requests")
    else:
        result = harness.run_loadgen(server.port, args.conns, int(args.size * 1024),
                                     args.duration, WARMUP, client_cpu,
                                     tls=args.style == "tls")
        requests = result.get("total_requests")
    after = cpu_ticks(server.pid)
    if recorder is not None:
        recorder.wait()
    if not result.get("ok"):
        raise SystemExit(f"{server.loop}: the run failed: {result.get('error')}")
    if before and after and requests:
        result["user_us"] = (after[0] - before[0]) * TICK_US / requests
        result["system_us"] = (after[1] - before[1]) * TICK_US / requests
    if perf_out is not None and perf_out.exists():
        cpu_us = result.get("user_us", 0.0) + result.get("system_us", 0.0)
        result["symbols_us"] = {sym: share / 100 * cpu_us
                                for sym, share in perf_shares(perf_out, args.symbols).items()}
    return result


def add_point_arguments(parser: argparse.ArgumentParser, server_help: str) -> None:
    """--server (repeated), --style, --size, --conns: the servers and the point they are
    loaded at (instructions.py takes the same)."""
    parser.add_argument("--server", action="append", required=True, metavar="[NAME=]LOOP[@TREE]",
                        help=server_help)
    parser.add_argument("--style", default="protocol", choices=servers.ALL_STYLES)
    parser.add_argument("--size", type=float, default=1, metavar="KIB")
    parser.add_argument("--conns", type=int, default=10)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_point_arguments(parser, "a server to compare (two or more; ratios are to the first)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per run")
    parser.add_argument("--perf", type=Path, metavar="DIR", help="record each run with perf")
    parser.add_argument("--symbols", nargs="+", default=["_copy_from_iter", "_copy_to_iter"],
                        help="with --perf: symbols whose share to report per request")
    parser.add_argument("--json", type=Path, help="write every run's result here")
    args = parser.parse_args(argv)
    try:
        specs = [parse_server(s) for s in args.server]
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    names = [name for name, _, _ in specs]
    if len(specs) < 2 or len(set(names)) != len(names):
        parser.error("give two or more servers with distinct names (NAME=LOOP)")
    if args.perf is not None:
        if not shutil.which("perf"):
            parser.error("--perf needs perf on PATH")
        args.perf.mkdir(parents=True, exist_ok=True)
    if args.style in servers.HTTP_STYLES and harness.wrk_path() is None:
        parser.error(f"the {args.style} style needs wrk on PATH")
    if (args.style in servers.HTTP_STYLES + ("tls",)
            and harness.FLOOR_NAME in [loop for _, loop, _ in specs]):
        parser.error(f"{harness.FLOOR_NAME} echoes plain TCP; it has no {args.style} server")

    harness.build_loadgen(print)
    if any(loop == harness.FLOOR_NAME for _, loop, _ in specs):
        harness.build_floor(print)
    if args.style == "tls":
        harness.build_loadgen_tls(print)
    server_cpu, client_cpu = harness.pinning()
    log_dir = Path(args.perf or "/tmp") / "alternate-logs"
    live = {}
    for name, loop, tree in specs:
        server = harness.Server(loop, args.style, tree=tree)
        server.start(server_cpu, log_dir, max_seconds=args.rounds * len(specs)
                     * (args.duration + 20) + 60)
        if not server.ready:
            raise SystemExit(f"{name}: {server.error}")
        live[name] = server
        print(f"{name}: {server.loop_type} (pid {server.pid}, port {server.port})", flush=True)

    runs: dict = {name: [] for name in names}
    try:
        for rnd in range(args.rounds):
            order = names[rnd % len(names):] + names[:rnd % len(names)]
            for name in order:
                out = args.perf / f"{name}-{rnd}.data" if args.perf else None
                runs[name].append(one_run(live[name], args, client_cpu, out))
            print(f"round {rnd}: " + "   ".join(_run_text(name, runs[name][-1]) for name in names),
                  flush=True)
            time.sleep(0.2)
    finally:
        for server in live.values():
            server.stop()

    base = names[0]
    print(f"\n{args.style} {args.size:g} KiB x {args.conns}, {args.rounds} rounds of "
          f"{args.duration:g} s (medians; ratios to {base} within each round):")
    for name in names:
        rps = [r["rps"] for r in runs[name]]
        ratios = [r["rps"] / b["rps"] for r, b in zip(runs[name], runs[base])]
        line = (f"  {name}: {statistics.median(rps):,.0f} req/s, "
                f"{statistics.median(ratios):.3f}x [{min(ratios):.2f}-{max(ratios):.2f}]")
        if all("user_us" in r for r in runs[name]):
            user = statistics.median(r["user_us"] for r in runs[name])
            system = statistics.median(r["system_us"] for r in runs[name])
            line += f", CPU per request {user:.2f} us user + {system:.2f} us system"
        print(line)
        if all("symbols_us" in r for r in runs[name]):
            for sym in args.symbols:
                each = [r["symbols_us"][sym] for r in runs[name]]
                print(f"      {sym}: {statistics.median(each):.2f} us per request "
                      f"[{min(each):.2f}-{max(each):.2f}]")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "runs": runs}, indent=1))
    return 0


def _run_text(name: str, run: dict) -> str:
    text = f"{name} {run['rps']:,.0f}"
    if "user_us" in run:
        text += f" ({run['user_us']:.2f}+{run['system_us']:.2f} us"
        if "symbols_us" in run:
            text += "; " + ", ".join(f"{v:.2f}" for v in run["symbols_us"].values())
        text += ")"
    return text


if __name__ == "__main__":
    sys.exit(main())
