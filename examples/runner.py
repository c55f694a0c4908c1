"""What the socket examples share: picking the event loop, and stopping cleanly on Ctrl-C.

Every example runs on uringloop by default; `--loop uvloop` or `--loop asyncio` runs the very same
program on another loop, which is how the README compares them.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import signal

LOOPS = ("uringloop", "uvloop", "asyncio")


def add_loop_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--loop", choices=LOOPS, default="uringloop",
                        help="the event loop to run on (default: uringloop)")


def run(main, loop_name: str):
    """Run coroutine `main` to completion on a new event loop of the chosen kind."""
    if loop_name == "uringloop":
        import uringloop
        return uringloop.run(main)
    if loop_name == "uvloop":
        import uvloop
        return uvloop.run(main)
    return asyncio.run(main)


async def stop_requested() -> str:
    """Wait for SIGINT (Ctrl-C) or SIGTERM; returns the signal's name.

    signal.signal rather than loop.add_signal_handler, which not every loop implements: the
    handler runs in the main thread as soon as the loop's wait is interrupted, and wakes the
    loop with call_soon_threadsafe."""
    loop = asyncio.get_running_loop()
    stopped = loop.create_future()

    def on_signal(signum, frame):
        def stop():
            if not stopped.done():
                stopped.set_result(signal.Signals(signum).name)
        loop.call_soon_threadsafe(stop)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return await stopped
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def raise_open_file_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit: one descriptor per connection."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard
