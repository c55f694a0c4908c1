"""uringloop.Loop: asyncio.BaseEventLoop with its I/O layer replaced by an io_uring Proactor.

BaseEventLoop supplies everything that is not I/O -- the ready queue, the timer heap, executors,
getaddrinfo, happy eyeballs, start_tls, debug mode, the exception handler -- and calls two hooks
once per iteration: `self._selector.select(timeout)` and `self._process_events(events)`.  Our
`_selector` is the compiled Proactor: its select() makes the iteration's single io_uring_enter
(submit everything queued + wait for a completion or the next timer) and dispatches every
completion before returning, so `_process_events` has nothing left to do.

The scheduling half of BaseEventLoop -- call_soon, call_at/call_later, the timer heap, the ready
queue, run_forever/_run_once -- is compiled in LoopCore (_sched.pyx) with BaseEventLoop's
behaviour; its _run_once calls the Proactor's wait() directly instead of select().

The sock_* methods are compiled functions from `_sockio` bound as methods; transports, servers,
pipes, subprocesses and signals live in their own modules and are attached below.
"""

from __future__ import annotations

import asyncio
import errno
import os
import sys
import threading
import weakref

from asyncio import base_events

from uringloop import _sockio
from uringloop.network import NetworkMixin
from uringloop.unix import UnixMixin
from uringloop._proactor import Proactor
from uringloop._sched import LoopCore
from uringloop._transport_table import TransportTable
from uringloop._probe import IOUringUnavailableError, diagnose, feature_set, too_old
from uringloop._ring import Ring

__all__ = ["Loop"]

# Every live Proactor, so that a fork child can mark them as the parent's (see _after_fork).
_live_proactors: "weakref.WeakSet[Proactor]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # The child shares the parent's ring mapping and fd.  Submitting on it would race the parent
    # for the same queues, so every inherited loop refuses new I/O with a clear error -- and
    # refuses to run at all, unless the fork was made inside its run, in the thread running it:
    # the child then goes on inside that run, without the ring (Proactor.after_fork_in_child).
    # (Only the forking thread exists in the child; it keeps its thread id.)
    me = threading.get_ident()
    for proactor in list(_live_proactors):
        loop = proactor.loop            # None once closed (Proactor.let_go_of_the_loop)
        proactor.after_fork_in_child(loop is not None and loop._thread_id == me)
    if sys.version_info < (3, 12):
        _forget_an_inherited_current_loop()


def _forget_an_inherited_current_loop() -> None:
    # From 3.12 a fork child starts with no current event loop (asyncio.events' on_fork resets
    # the policy's); before, the child's get_event_loop() hands back the loop the parent had set
    # -- which works for a stock loop, but ours refuses to run in the child.  So where that loop
    # is one of ours and the child does not go on inside its run, the child starts as on 3.12:
    # no current loop, a new one made on demand (a program that installed uringloop's policy,
    # forked workers, and asks asyncio.get_event_loop() in each).
    policy = asyncio.events._event_loop_policy
    local = getattr(policy, "_local", None)
    loop = getattr(local, "_loop", None)
    if not isinstance(loop, Loop):
        return
    proactor = loop._proactor          # (None only in a loop whose construction failed)
    if proactor is None or not proactor.runs_in_fork_child:
        policy._local = type(local)()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _CloseIOChain:
    """The end of the `_close_io` chain.  The mixins above it in the MRO release what they hold
    before the drain and chain to super(); a `_close_io` defined on Loop itself would shadow
    theirs."""

    def _close_io(self) -> None:
        pass


class Loop(UnixMixin, NetworkMixin, _CloseIOChain, LoopCore, base_events.BaseEventLoop):
    """An asyncio event loop whose I/O is completion-based, on io_uring.

    LoopCore (uringloop/_sched.pyx) comes before BaseEventLoop: it holds the scheduling state in
    C fields and compiles call_soon, call_soon_threadsafe, call_at/call_later,
    run_forever/_run_once, time and a few small methods with BaseEventLoop's behaviour (and the
    no-op _process_events, and _write_to_self: the Proactor's wake-up); everything else is
    BaseEventLoop's."""

    def __init__(self) -> None:
        super().__init__()
        self._proactor = None
        try:
            ring = Ring()
        except OSError as exc:
            self._closed = True      # half-built: BaseEventLoop.__del__ must not try to close
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                # No descriptor left for the ring: nothing about io_uring (and the stock loop,
                # which a fallback would make, needs descriptors too) -- the stock loop's
                # OSError, in its words.
                raise OSError(exc.errno, os.strerror(exc.errno)) from None
            raise diagnose(exc.errno or 0) from exc
        old = too_old()
        if old is not None:
            self._closed = True
            ring.close()
            raise old
        try:
            self._features = feature_set(ring)
            self._proactor = Proactor(self, ring)
        except BaseException:
            self._closed = True
            ring.close()
            raise
        self._selector = self._proactor      # what BaseEventLoop._run_once waits on
        self._proactor.debug = bool(self._debug)
        self._ul_sock_states: dict = {}
        self._ul_sock_sweep = None     # the TimerHandle of _sockio's sweep for closed sockets
        # fd -> transport for each loop.sendfile() in progress (network.py)
        self._ul_sendfile_transports: dict = {}
        # fd -> transport, maintained by the transports themselves.  Weak, as the stock loop's:
        # a transport the kernel holds nothing for (reading paused, or ended by the peer's EOF
        # with the protocol keeping it half-open) and nobody else refers to is collected, its
        # socket closed with a ResourceWarning -- a server whose handlers forget to close
        # writers does not keep a descriptor per finished client.  (A transport with a request
        # in flight is held by it: see the Proactor's pins.)  A compiled mapping in place of
        # the stock WeakValueDictionary (_transport_table.TransportTable says why); the sock_* calls
        # test membership on `.data`, the plain dict underneath.
        self._transports = TransportTable()
        # The datagram and pipe transports (Python objects over a compiled core), weakly: the
        # ones still open when the loop closes are told so (TransportCore.loop_closed).
        self._ul_core_transports = weakref.WeakSet()
        _live_proactors.add(self._proactor)

    def set_debug(self, enabled: bool) -> None:
        super().set_debug(enabled)
        proactor = getattr(self, '_proactor', None)
        if proactor is not None:
            proactor.debug = bool(enabled)     # times completions as the stock loop's handles

    # ---- the BaseEventLoop hooks ----

    def close(self) -> None:
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        self._close_io()
        # Drain first: completions may still resolve futures and schedule callbacks, which
        # BaseEventLoop.close() then discards with the rest of the ready queue.
        self._proactor.close()
        _sockio.forget_all_sockets(self)
        for transport in list(self._ul_core_transports):
            core = transport._core
            if core is not None:
                core.loop_closed()
        self._ul_gc_track_queued()    # BaseEventLoop.close() drops them: back in the GC first
        self._ul_let_go_of_future_kwargs()
        super().close()

    def statistics(self) -> dict:
        """Counters of the ring: io_uring_enter calls, SQEs submitted, completions, in flight,
        the waits that spun before sleeping (spins, spin_hits, spun_ns, spin_limit_ns,
        spin_max_ns) and the answers that let them (answers; see Proactor.spin_or_wait)."""
        return self._proactor.statistics()

    # ---- the low-level socket API: completion-based, compiled ----

    sock_recv = _sockio.sock_recv
    sock_recv_into = _sockio.sock_recv_into
    sock_recvfrom = _sockio.sock_recvfrom
    sock_recvfrom_into = _sockio.sock_recvfrom_into
    sock_sendall = _sockio.sock_sendall
    sock_sendto = _sockio.sock_sendto
    sock_accept = _sockio.sock_accept
    sock_connect = _sockio.sock_connect

    def _ensure_fd_no_transport(self, fd) -> None:
        fileno = fd
        if not isinstance(fileno, int):
            try:
                fileno = int(fileno.fileno())
            except (AttributeError, TypeError, ValueError):
                raise ValueError(f"Invalid file object: {fd!r}") from None
        transport = self._transports.get(fileno)
        if transport is not None and not transport.is_closing():
            raise RuntimeError(f"File descriptor {fd!r} is used by transport {transport!r}")
