"""Loop micro-benchmarks: the scheduling paths every asyncio program pays for, without I/O.

    python benchmarks/micro.py --loop uvloop [--scale 1.0] [--cpu 0]

Prints one JSON line: {"loop_type": ..., "results": {name: {"seconds": s, "ops": n}}, "errors":
{name: "..."}}.  Each benchmark builds a fresh loop, times only the work it names (not the loop's
creation), and checks that the work was really done (every callback ran, every timer fired, every
task finished) -- a benchmark that silently did less would look fast.

  call_soon     N callbacks queued with loop.call_soon (from inside the loop), then run
  timers        100k call_later timers, deadlines 0-1 ms in shuffled order, until the last fires
  sleep0_tasks  T tasks, each awaiting asyncio.sleep(0) K times
  create_close  new_event_loop() + close(), repeated
  threadsafe    N callbacks queued with call_soon_threadsafe from another thread, until all ran
  connect       C create_connection() calls to an IPv4 literal, a listening socket in the same
                process that never accepts (the kernel completes each handshake into its queue):
                the client side of a connection set-up alone
  getaddrinfo   G awaited loop.getaddrinfo("localhost", 80, type=SOCK_STREAM) calls, one after
                the other (/etc/hosts: the lookup itself is ~10 us; the rest is the loop's way
                to a thread and back)
  add_reader    P round trips of one byte over a socketpair whose ends both have an add_reader
                callback that reads and answers (the layer tornado, pyzmq, psycopg and aiodns
                wait through: two readiness events per round trip, and their recv/send)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import socket
import sys
import threading
import time

import loops


def bench_call_soon(name: str, scale: float) -> dict:
    n = max(1000, int(500_000 * scale))
    loop = loops.make_loop(name)
    try:
        ran = [0]

        def callback():
            ran[0] += 1

        def schedule_all(done: asyncio.Future):
            call_soon = loop.call_soon
            for _ in range(n):
                call_soon(callback)
            call_soon(done.set_result, None)     # FIFO: runs after every callback above

        async def main():
            done = loop.create_future()
            start = time.perf_counter()
            loop.call_soon(schedule_all, done)
            await done
            return time.perf_counter() - start

        seconds = loop.run_until_complete(main())
        if ran[0] != n:
            raise AssertionError(f"{ran[0]} of {n} callbacks ran")
        return {"seconds": seconds, "ops": n}
    finally:
        loop.close()


def bench_timers(name: str, scale: float) -> dict:  # noqa: ARG001 - fixed size
    n = 100_000                        # "100k timers" at every scale: it takes well under 1 s
    delays = [i / n * 0.001 for i in range(n)]
    random.Random(5).shuffle(delays)
    loop = loops.make_loop(name)
    try:
        fired = [0]

        async def main():
            done = loop.create_future()

            def on_timer():
                fired[0] += 1
                if fired[0] == n:
                    done.set_result(None)

            start = time.perf_counter()
            call_later = loop.call_later
            for d in delays:
                call_later(d, on_timer)
            await done
            return time.perf_counter() - start

        seconds = loop.run_until_complete(main())
        if fired[0] != n:
            raise AssertionError(f"{fired[0]} of {n} timers fired")
        return {"seconds": seconds, "ops": n}
    finally:
        loop.close()


def bench_sleep0_tasks(name: str, scale: float) -> dict:
    tasks_n = max(100, int(10_000 * scale))
    rounds = 10
    loop = loops.make_loop(name)
    try:
        finished = [0]

        async def worker():
            for _ in range(rounds):
                await asyncio.sleep(0)
            finished[0] += 1

        async def main():
            start = time.perf_counter()
            await asyncio.gather(*[worker() for _ in range(tasks_n)])
            return time.perf_counter() - start

        seconds = loop.run_until_complete(main())
        if finished[0] != tasks_n:
            raise AssertionError(f"{finished[0]} of {tasks_n} tasks finished")
        return {"seconds": seconds, "ops": tasks_n * rounds}
    finally:
        loop.close()


def bench_create_close(name: str, scale: float) -> dict:
    n = max(20, int(1000 * scale))
    loops.make_loop(name).close()       # imports and one-time set-up are not what we time
    start = time.perf_counter()
    for _ in range(n):
        loop = loops.make_loop(name)
        loop.close()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "ops": n}


def bench_threadsafe(name: str, scale: float) -> dict:
    n = max(1000, int(200_000 * scale))
    loop = loops.make_loop(name)
    try:
        ran = [0]

        async def main():
            done = loop.create_future()

            def callback():
                ran[0] += 1
                if ran[0] == n:
                    done.set_result(None)

            def queue_all():
                call_soon_threadsafe = loop.call_soon_threadsafe
                for _ in range(n):
                    call_soon_threadsafe(callback)

            thread = threading.Thread(target=queue_all)
            start = time.perf_counter()
            thread.start()
            await done
            seconds = time.perf_counter() - start
            thread.join()
            return seconds

        seconds = loop.run_until_complete(main())
        if ran[0] != n:
            raise AssertionError(f"{ran[0]} of {n} callbacks ran")
        return {"seconds": seconds, "ops": n}
    finally:
        loop.close()


def bench_connect(name: str, scale: float) -> dict:
    # At most 1,000 connections at a time (the listening queue and the descriptors), and the
    # accepting side is closed first, so that no client port is left in TIME_WAIT: repeated runs
    # would otherwise make the kernel search longer for a free port.
    n = max(50, int(1000 * scale))
    loop = loops.make_loop(name)
    listener = socket.socket()
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(n + 16)
        port = listener.getsockname()[1]
        transports = []

        async def main():
            start = time.perf_counter()
            for _ in range(n):
                transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
                transports.append(transport)
            return time.perf_counter() - start

        seconds = loop.run_until_complete(main())
        listener.setblocking(False)
        accepted = 0
        while True:
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                break
            conn.close()
            accepted += 1
        for transport in transports:
            transport.close()
        loop.run_until_complete(asyncio.sleep(0.05))
        if accepted != n:
            raise AssertionError(f"{accepted} of {n} connections reached the listener")
        return {"seconds": seconds, "ops": n}
    finally:
        listener.close()
        loop.close()


def bench_getaddrinfo(name: str, scale: float) -> dict:
    n = max(100, int(3000 * scale))
    loop = loops.make_loop(name)
    try:
        expected = socket.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)

        async def main():
            # The first lookups start the resolver's threads (or the executor's): not timed.
            for _ in range(20):
                await loop.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)
            wrong = 0
            start = time.perf_counter()
            for _ in range(n):
                infos = await loop.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)
                wrong += infos != expected
            seconds = time.perf_counter() - start
            if wrong:
                raise AssertionError(f"{wrong} of {n} lookups differ from socket.getaddrinfo's")
            return seconds

        return {"seconds": loop.run_until_complete(main()), "ops": n}
    finally:
        loop.close()


def bench_add_reader(name: str, scale: float) -> dict:
    n = max(1000, int(50_000 * scale))
    loop = loops.make_loop(name)
    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        b.setblocking(False)
        done = loop.create_future()
        trips = [0]

        def on_a():
            if a.recv(16) != b"p":
                raise AssertionError("a round trip brought the wrong byte back")
            trips[0] += 1
            if trips[0] == n:
                done.set_result(time.perf_counter())
            else:
                a.send(b"p")

        def on_b():
            b.send(b.recv(16))

        async def main():
            loop.add_reader(a, on_a)
            loop.add_reader(b, on_b)
            await asyncio.sleep(0)
            start = time.perf_counter()
            a.send(b"p")
            end = await done
            loop.remove_reader(a)
            loop.remove_reader(b)
            return end - start

        seconds = loop.run_until_complete(main())
        if trips[0] != n:
            raise AssertionError(f"{trips[0]} of {n} round trips made")
        return {"seconds": seconds, "ops": n}
    finally:
        a.close()
        b.close()
        loop.close()


BENCHMARKS = {
    "call_soon": bench_call_soon,
    "timers": bench_timers,
    "sleep0_tasks": bench_sleep0_tasks,
    "create_close": bench_create_close,
    "threadsafe": bench_threadsafe,
    "connect": bench_connect,
    "getaddrinfo": bench_getaddrinfo,
    "add_reader": bench_add_reader,
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loop", required=True, choices=loops.LOOP_NAMES)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="work per benchmark relative to the full size (quick mode < 1)")
    parser.add_argument("--only", nargs="*", choices=list(BENCHMARKS), default=None)
    parser.add_argument("--cpu", type=int, default=None)
    args = parser.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})

    out: dict = {"loop": args.loop, "results": {}, "errors": {}}
    try:
        probe = loops.make_loop(args.loop)
    except Exception as exc:            # noqa: BLE001 - reported as n/a
        out["errors"]["*"] = f"cannot create the loop: {type(exc).__name__}: {exc}"
        print(json.dumps(out), flush=True)
        return 3
    out["loop_type"] = loops.type_name(probe)
    probe.close()

    for bench in args.only or BENCHMARKS:
        gc.collect()
        try:
            out["results"][bench] = BENCHMARKS[bench](args.loop, args.scale)
        except Exception as exc:        # noqa: BLE001 - one broken benchmark is n/a, not fatal
            out["errors"][bench] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
