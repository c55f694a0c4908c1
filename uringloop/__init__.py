"""uringloop: a drop-in asyncio event loop whose I/O is a Proactor on io_uring.

    asyncio.run(main(), loop_factory=uringloop.new_event_loop)   # Python >= 3.12
    uringloop.run(main())                                         # any supported Python
"""

from __future__ import annotations

import asyncio as _asyncio
import sys as _sys
import warnings as _warnings

from uringloop._probe import IOUringUnavailableError, ProbeReport, probe
from uringloop.loop import Loop

__all__ = ["Loop", "new_event_loop", "run", "probe", "ProbeReport", "IOUringUnavailableError"]
__version__ = "0.1.0"


def new_event_loop(*, fallback: bool = False) -> _asyncio.AbstractEventLoop:
    """A new uringloop.Loop.  Where io_uring is refused, raise IOUringUnavailableError -- or,
    with fallback=True, warn once and return the stock asyncio loop instead."""
    try:
        return Loop()
    except IOUringUnavailableError as exc:
        if not fallback:
            raise
        _warnings.warn(f"uringloop: {exc.strerror}; using the stock asyncio event loop",
                       RuntimeWarning, stacklevel=2)
        return _asyncio.SelectorEventLoop()


def run(main, *, loop_factory=None, debug=None, **run_kwargs):
    """Run coroutine `main` on a new uringloop event loop, like asyncio.run (and uvloop.run).
    `loop_factory`, as uvloop.run's, makes the loop instead (default: new_event_loop)."""
    if _asyncio.events._get_running_loop() is not None:
        # asyncio.run()'s own check, and first, as there (3.11's Runner makes a loop first, and
        # fails later).
        raise RuntimeError("asyncio.run() cannot be called from a running event loop")
    if not _asyncio.iscoroutine(main):
        raise ValueError(f"a coroutine was expected, got {main!r}")
    if _sys.version_info >= (3, 11):
        if loop_factory is not None:
            # As asyncio.run(main, loop_factory=...) and uvloop.run(): the loop made is not
            # made the current event loop.
            return _run_311(main, loop_factory, debug, run_kwargs)
        # As asyncio.run(main) without a factory: the loop is the current event loop while it
        # runs (the policy's get_event_loop() inside main() returns it), and there is none
        # afterwards (asyncio.get_event_loop() raises rather than making a stray stock loop).
        made = []

        def current_loop_factory():
            loop = new_event_loop()
            made.append(loop)
            _asyncio.set_event_loop(loop)
            return loop

        try:
            return _run_311(main, current_loop_factory, debug, run_kwargs)
        finally:
            if made:
                _asyncio.set_event_loop(None)
    if loop_factory is None:
        loop_factory = new_event_loop
    if run_kwargs:
        # (3.10's asyncio.run() takes none; on 3.11+ Runner/asyncio.run refuse unknown ones.)
        raise TypeError(f"run() got an unexpected keyword argument {next(iter(run_kwargs))!r}")
    return _run_310(main, debug, loop_factory)


def _run_311(main, loop_factory, debug, run_kwargs):
    if _sys.version_info >= (3, 12):
        return _asyncio.run(main, loop_factory=loop_factory, debug=debug, **run_kwargs)
    with _asyncio.Runner(loop_factory=loop_factory, debug=debug, **run_kwargs) as runner:
        return runner.run(main)


def _run_310(main, debug, loop_factory):
    # asyncio.run() of Python 3.10, with our loop: same order of shutdown steps.
    loop = loop_factory()
    try:
        _asyncio.set_event_loop(loop)
        if debug is not None:
            loop.set_debug(debug)
        return loop.run_until_complete(main)
    finally:
        try:
            _cancel_all_tasks(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            _asyncio.set_event_loop(None)
            loop.close()


def _cancel_all_tasks(loop):
    to_cancel = _asyncio.all_tasks(loop)
    if not to_cancel:
        return
    for task in to_cancel:
        task.cancel()
    loop.run_until_complete(_asyncio.gather(*to_cancel, return_exceptions=True))
    for task in to_cancel:
        if task.cancelled():
            continue
        if task.exception() is not None:
            loop.call_exception_handler({
                "message": "unhandled exception during asyncio.run() shutdown",
                "exception": task.exception(),
                "task": task,
            })


if _sys.version_info < (3, 16):
    class EventLoopPolicy(_asyncio.DefaultEventLoopPolicy):
        """Event loop policy that creates uringloop loops (Python < 3.16, where policies exist).

            asyncio.set_event_loop_policy(uringloop.EventLoopPolicy())
        """

        def _loop_factory(self):
            return new_event_loop()

    def install() -> None:
        """Make uringloop the default: asyncio.set_event_loop_policy(EventLoopPolicy())."""
        if _sys.version_info >= (3, 12):
            # As uvloop.install() warns from 3.12 on.
            _warnings.warn(
                "uringloop.install() is deprecated in favor of uringloop.run() starting with "
                "Python 3.12.", DeprecationWarning, stacklevel=2)
        _asyncio.set_event_loop_policy(EventLoopPolicy())

    __all__ += ["EventLoopPolicy", "install"]
