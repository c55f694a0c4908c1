"""Micro-benchmarks of the loop's scheduling paths: uringloop vs uvloop vs the stock loop.

    python3 benchmarks/micro_sched.py                    # every workload, 5 interleaved rounds
    python3 benchmarks/micro_sched.py -r 7 call_soon timers
    python3 benchmarks/micro_sched.py --one uringloop timers     # one measurement (for profiling)

Each round runs every loop in its own child process (same interpreter), interleaved, in an order
rotated by one each round (run.rotated: round 1 uringloop, uvloop, asyncio; round 2 uvloop,
asyncio, uringloop; ...), so a noisy neighbour on this shared machine hurts every loop alike.  A
child runs the workload once to warm up (allocator arenas, imports, code caches) and then
--repeat times, each on a fresh loop, and reports the median.  The table shows the median over
the rounds, and the ratios to uvloop and to the stock loop as the median of the same-round ratios
(the project's rule, as benchmarks/run.py reports them); lower is better.  The children are not
pinned to a CPU, nor run with run.py's GLIBC_TUNABLES: these figures are for comparing builds and
loops on one machine, not for the README's tables, which come from micro.py under run.py.

Workloads (each timed around run_until_complete() of the workload, loop creation excluded):
  call_soon      100k call_soon(noop) from one callback, until the last has run (a burst: 100k
                 handles queued at once, so the cyclic GC's full collections weigh in)
  call_soon_steady  100k call_soon in 100 chains (each callback schedules the next of its
                 chain): at most 100 handles queued, about 100 per iteration
  iterations     100k loop iterations: a callback that schedules itself again (one handle and
                 one wait for I/O -- an io_uring_enter, an epoll_wait -- per iteration)
  timers         100k call_later() with delays spread over 1 ms, until the last has fired
  timers_cancel  100k call_later(10 s) cancelled again, then one call_later(0) fires
  sleep0         100 tasks x 1000 `await asyncio.sleep(0)`
  sock_pingpong  20k 64-byte round trips over a socketpair with sock_sendall/sock_recv
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time

from run import rotated
from stats import round_ratios

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

N_CALLS = 100_000
N_TIMERS = 100_000
N_TASKS, N_SLEEPS = 100, 1000
N_ROUND_TRIPS = 20_000


def make_loop(kind):
    if kind == "uringloop":
        sys.path.insert(0, ROOT)
        import uringloop
        return uringloop.new_event_loop()
    if kind == "uvloop":
        import uvloop
        return uvloop.new_event_loop()
    if kind == "asyncio":
        return asyncio.SelectorEventLoop()
    raise SystemExit(f"unknown loop {kind!r}")


def bench_call_soon(loop):
    done = loop.create_future()
    noop = lambda: None             # noqa: E731

    def start():
        call_soon = loop.call_soon
        for _ in range(N_CALLS - 1):
            call_soon(noop)
        call_soon(done.set_result, None)

    t0 = time.perf_counter()
    loop.call_soon(start)
    loop.run_until_complete(done)
    return time.perf_counter() - t0


def bench_call_soon_steady(loop):
    done = loop.create_future()
    remaining = N_CALLS
    chains = 100

    def step():
        nonlocal remaining
        remaining -= 1
        if remaining >= chains:
            loop.call_soon(step)
        elif remaining == 0:
            done.set_result(None)

    t0 = time.perf_counter()
    for _ in range(chains):
        loop.call_soon(step)
    loop.run_until_complete(done)
    return time.perf_counter() - t0


def bench_iterations(loop):
    done = loop.create_future()
    remaining = N_CALLS

    def again():
        nonlocal remaining
        remaining -= 1
        if remaining:
            loop.call_soon(again)
        else:
            done.set_result(None)

    t0 = time.perf_counter()
    loop.call_soon(again)
    loop.run_until_complete(done)
    return time.perf_counter() - t0


def bench_timers(loop):
    done = loop.create_future()
    fired = 0

    def tick():
        nonlocal fired
        fired += 1
        if fired == N_TIMERS:
            done.set_result(None)

    def start():
        call_later = loop.call_later
        for i in range(N_TIMERS):
            # A scrambled but deterministic order of deadlines within 1 ms: the heap does real
            # work on insertion and every pop.
            call_later((i * 7919 % 1000) * 1e-6, tick)

    t0 = time.perf_counter()
    loop.call_soon(start)
    loop.run_until_complete(done)
    return time.perf_counter() - t0


def bench_timers_cancel(loop):
    done = loop.create_future()
    noop = lambda: None             # noqa: E731

    def start():
        call_later = loop.call_later
        handles = [call_later(10.0 + i * 1e-6, noop) for i in range(N_TIMERS)]
        for handle in handles:
            handle.cancel()
        loop.call_later(0, done.set_result, None)

    t0 = time.perf_counter()
    loop.call_soon(start)
    loop.run_until_complete(done)
    return time.perf_counter() - t0


def bench_sleep0(loop):
    async def worker():
        for _ in range(N_SLEEPS):
            await asyncio.sleep(0)

    async def main():
        await asyncio.gather(*[worker() for _ in range(N_TASKS)])

    t0 = time.perf_counter()
    loop.run_until_complete(main())
    return time.perf_counter() - t0


def bench_sock_pingpong(loop):
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    payload = b"x" * 64

    async def echo():
        for _ in range(N_ROUND_TRIPS):
            data = await loop.sock_recv(b, 64)
            await loop.sock_sendall(b, data)

    async def client():
        for _ in range(N_ROUND_TRIPS):
            await loop.sock_sendall(a, payload)
            await loop.sock_recv(a, 64)

    async def main():
        await asyncio.gather(echo(), client())

    try:
        t0 = time.perf_counter()
        loop.run_until_complete(main())
        return time.perf_counter() - t0
    finally:
        a.close()
        b.close()


WORKLOADS = {
    "call_soon": bench_call_soon,
    "call_soon_steady": bench_call_soon_steady,
    "iterations": bench_iterations,
    "timers": bench_timers,
    "timers_cancel": bench_timers_cancel,
    "sleep0": bench_sleep0,
    "sock_pingpong": bench_sock_pingpong,
}
LOOPS = ["uringloop", "uvloop", "asyncio"]


def run_one(kind, workload):
    loop = make_loop(kind)
    try:
        return WORKLOADS[workload](loop)
    finally:
        loop.close()


def run_repeated(kind, workload, repeat):
    run_one(kind, workload)                 # warm-up, not counted
    return statistics.median(run_one(kind, workload) for _ in range(repeat))


def measure_in_child(kind, workload, repeat):
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--repeat", str(repeat),
                          "--one", kind, workload],
                         check=True, capture_output=True, text=True, cwd=ROOT).stdout
    return float(out.split()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workloads", nargs="*", default=list(WORKLOADS))
    parser.add_argument("-r", "--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per child (median)")
    parser.add_argument("--loops", default=",".join(LOOPS))
    parser.add_argument("--one", nargs=2, metavar=("LOOP", "WORKLOAD"),
                        help="one measurement in this process; prints seconds")
    args = parser.parse_args()
    if args.one:
        print(f"{run_repeated(*args.one, args.repeat):.6f}")
        return
    loops = args.loops.split(",")
    print(f"# Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {os.uname().sysname} "
          f"{os.uname().release}; median of {args.rounds} interleaved rounds of the median of "
          f"{args.repeat} warm runs (seconds)")
    header = f"{'workload':<17}" + "".join(f"{k:>11}" for k in loops)
    if "uringloop" in loops:
        header += "  uring/uvloop  uring/asyncio"
    print(header)
    for workload in args.workloads:
        samples = {k: [] for k in loops}
        for rnd in range(args.rounds):
            for kind in rotated(loops, rnd):
                samples[kind].append(measure_in_child(kind, workload, args.repeat))
        medians = {k: statistics.median(v) for k, v in samples.items()}
        line = f"{workload:<17}" + "".join(f"{medians[k]:>11.4f}" for k in loops)
        if "uringloop" in loops:
            ours = samples["uringloop"]
            if "uvloop" in samples:
                line += f"  {statistics.median(round_ratios(ours, samples['uvloop'])):>12.2f}"
            if "asyncio" in samples:
                line += f"  {statistics.median(round_ratios(ours, samples['asyncio'])):>13.2f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
