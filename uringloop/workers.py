"""Gunicorn worker classes that serve on uringloop.

    gunicorn myapp:app --worker-class uringloop.workers.GunicornUringWebWorker -w 4

`GunicornUringWebWorker` runs an aiohttp application (an `aiohttp.web.Application`, or a coroutine
function returning one or an `AppRunner`) on a uringloop event loop.  It is the counterpart of
aiohttp's `GunicornUVLoopWebWorker`: everything that makes a gunicorn worker -- booting the app,
serving the sockets the arbiter shares, the heartbeat, SIGTERM/SIGQUIT/SIGINT handling, graceful
shutdown within `--graceful-timeout`, `--max-requests` -- is aiohttp's `GunicornWebWorker`; only
the event loop it creates is ours.

Importing this module needs aiohttp and gunicorn; `import uringloop` does not import it.
"""

from __future__ import annotations

import asyncio
import warnings

from aiohttp.worker import GunicornWebWorker

import uringloop
from uringloop import loop as _loop_module

__all__ = ["GunicornUringWebWorker"]


class GunicornUringWebWorker(GunicornWebWorker):
    """aiohttp's gunicorn worker on a uringloop event loop."""

    def init_process(self) -> None:
        # This runs in the freshly forked worker.  GunicornWebWorker.init_process closes the
        # current event loop, makes a new one with asyncio.new_event_loop() and serves on it;
        # installing our policy first makes that new loop a uringloop.Loop -- and so is any
        # loop the application itself makes with asyncio.new_event_loop() in this process.
        #
        # A loop the master may have left current (a --preload'ed application that made one)
        # belongs to the parent's threads and rings: close it here, as aiohttp's uvloop worker
        # does, before the policy that knows it is replaced.  Asking for the current loop
        # where there is none makes one (and warns, from Python 3.12 on); that one is closed
        # just the same.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                asyncio.get_event_loop().close()
            except RuntimeError:
                pass                    # no current loop in this thread
        # That finds the master's loop only where the child still has it as its current loop: a
        # stock loop before Python 3.12.  A fork child forgets a current uringloop loop (before
        # 3.12 as from 3.12 for every loop: loop._after_fork_in_child), so the master's
        # uringloop loops are closed here by what tracks them, or each worker warned of an
        # unclosed event loop as it left.  Closing one in a fork child touches nothing of the
        # parent's ring: it drops this process's mapping and descriptors (Proactor.close).
        for proactor in list(_loop_module._live_proactors):
            inherited = proactor.loop
            if proactor.forked and inherited is not None and not inherited.is_closed():
                inherited.close()
        asyncio.set_event_loop_policy(uringloop.EventLoopPolicy())
        # The new policy has no loop yet.  Saying "none" explicitly makes the parent's "close
        # the current loop" step find nothing, instead of creating a ring only to close it.
        asyncio.set_event_loop(None)
        super().init_process()
