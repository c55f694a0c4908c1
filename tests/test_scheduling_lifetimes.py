"""What the loop's scheduling keeps alive and for how long, on uringloop and on the stock loop: a
callback's arguments released once it has run, handles someone keeps or references weakly,
contexts through many rounds, finalizers that schedule, and handles and contexts in reference
cycles (uringloop keeps queued handles off the collector's lists: _sched.h)."""

import asyncio
import contextvars
import gc
import socket
import weakref

import pytest

from helpers import run_iterations


class _Released:
    """A callback argument whose release is recorded."""

    def __init__(self, log, name):
        self.log, self.name = log, name

    def __del__(self):
        self.log.append(f"{self.name} released")


def test_a_callbacks_arguments_are_released_as_soon_as_it_has_run(new_loop):
    # The ready queue held the handle's last reference: its callback and arguments go before
    # the next callback runs.
    loop = new_loop()
    log = []
    loop.call_soon(lambda arg: log.append("first ran"), _Released(log, "first's argument"))
    loop.call_soon(log.append, "second ran")
    run_iterations(loop)
    assert log == ["first ran", "first's argument released", "second ran"]


def test_a_handle_someone_keeps_is_left_as_it_was(new_loop):
    loop = new_loop()
    calls = []
    kept = loop.call_soon(calls.append, 1)
    run_iterations(loop)
    later = [loop.call_soon(calls.append, n) for n in range(2, 200)]
    run_iterations(loop)
    assert calls == list(range(1, 200))
    assert all(handle is not kept for handle in later)
    assert kept._callback == calls.append and kept._args == (1,) and not kept.cancelled()


def test_a_weakly_referenced_handle_dies_once_it_has_run(new_loop):
    loop = new_loop()
    ref = weakref.ref(loop.call_soon(lambda: None))
    run_iterations(loop)
    assert ref() is None


def test_callbacks_scheduled_over_and_over_each_run_in_their_own_context(new_loop):
    loop = new_loop()
    var = contextvars.ContextVar("var")
    seen = []
    expected = []
    for round_ in range(3):
        for i in range(150):
            if i % 2:
                context = contextvars.Context()
                context.run(var.set, (round_, i))
                loop.call_soon(lambda: seen.append(var.get()), context=context)
            else:
                token = var.set((round_, i))
                loop.call_soon(lambda: seen.append(var.get()))     # a copy of this context
                var.reset(token)
            expected.append((round_, i))
        run_iterations(loop)
    assert seen == expected


def test_a_finalizer_may_schedule_while_a_run_callbacks_arguments_are_released(new_loop):
    loop = new_loop()
    log = []

    class Rescheduling:
        def __del__(self):
            loop.call_soon(log.append, "scheduled by __del__")

    loop.call_soon(lambda arg: log.append("ran"), Rescheduling())
    run_iterations(loop, 2)
    assert log == ["ran", "scheduled by __del__"]


# ---- handles and the cyclic garbage collector ----
#
# uringloop keeps the handles it queues out of the collector's lists while they wait (a queued
# handle is reachable from the loop anyway) and gives them back when it takes them off the
# queue.  What must hold, as on the stock loop: a handle that ends up in a reference cycle is
# collected once the cycle is garbage -- whether it ran, was cancelled, or was still queued when
# the loop closed.

class _CycleHolder:
    """An object whose handle refers back to it through the callback: a cycle."""

    def callback(self):
        self.ran = True


def _collected(ref):
    gc.collect()
    return ref() is None


@pytest.mark.parametrize("schedule", ["call_soon", "call_later"])
def test_a_handle_in_a_cycle_is_collected_after_it_ran(new_loop, schedule):
    import weakref
    loop = new_loop()
    holder = _CycleHolder()
    if schedule == "call_soon":
        holder.handle = loop.call_soon(holder.callback)
    else:
        holder.handle = loop.call_later(0, holder.callback)
    loop.run_until_complete(asyncio.sleep(0.01))
    assert holder.ran
    ref = weakref.ref(holder)
    del holder
    assert _collected(ref)


def test_cancelled_timers_dropped_from_the_heap_are_tracked_again(new_loop):
    loop = new_loop()
    at_head = loop.call_later(3600, lambda: None)
    at_head.cancel()
    many = [loop.call_later(3600 + i, lambda: None) for i in range(200)]
    for timer in many[:150]:
        timer.cancel()
    # The ready callback keeps the iteration from blocking.  Both clean-ups run: the cancelled
    # timers are the majority of a large heap (rebuilt without them).
    loop.call_soon(lambda: None)
    run_iterations(loop)
    assert len(loop._scheduled) == 50
    assert gc_tracked(at_head) and all(gc_tracked(t) for t in many[:150])
    small = [loop.call_later(3600 - i, lambda: None) for i in (1, 2)]
    small[1].cancel()          # the earliest: dropped off the head alone
    loop.call_soon(lambda: None)
    run_iterations(loop)
    assert small[1] not in loop._scheduled and gc_tracked(small[1])


def test_handles_still_queued_at_close_are_collected(new_loop):
    import weakref
    loop = new_loop()
    holders = [_CycleHolder(), _CycleHolder()]
    holders[0].handle = loop.call_soon(holders[0].callback)
    holders[1].handle = loop.call_later(3600, holders[1].callback)
    refs = [weakref.ref(h) for h in holders]
    del holders
    loop.close()
    assert all(_collected(ref) for ref in refs)


def test_handles_taken_off_the_queue_are_tracked_again(new_loop):
    # Whatever the loop did with them while queued, a handle that has run or fired is a normal
    # GC-tracked object again (as every asyncio.Handle is on the stock loop).
    loop = new_loop()
    soon = loop.call_soon(lambda: None)
    timer = loop.call_later(0, lambda: None)
    loop.run_until_complete(asyncio.sleep(0.01))
    assert gc_tracked(soon) and gc_tracked(timer)


def gc_tracked(obj):
    return gc.is_tracked(obj)


# The handles' contexts: while a handle waits, uringloop also moves its context off the
# collector's lists (onto a list of its own, see ul_gc_park in _sched.h) and back when the handle
# leaves the queue.  Cycles through a context must still be collected, a context shared by
# several handles must stay sound, and a handle dropped from the queue by someone else must free
# its context normally.

_cycle_var = contextvars.ContextVar("_cycle_var")


def test_a_cycle_through_the_callers_context_is_collected_after_it_ran(new_loop):
    import weakref
    loop = new_loop()
    holder = _CycleHolder()
    context = contextvars.copy_context()
    context.run(_cycle_var.set, holder)
    # call_soon copies the caller's context, which holds `holder`; holder holds the handle.
    holder.handle = context.run(loop.call_soon, holder.callback)
    del context
    run_iterations(loop)
    assert holder.ran
    ref = weakref.ref(holder)
    del holder
    assert _collected(ref)


def test_a_context_shared_by_queued_handles_stays_usable(new_loop):
    loop = new_loop()
    context = contextvars.copy_context()
    seen = []
    first = loop.call_soon(lambda: seen.append(_cycle_var.set("x")), context=context)
    second = loop.call_later(0, lambda: seen.append(_cycle_var.get()), context=context)
    run_iterations(loop)
    loop.run_until_complete(asyncio.sleep(0.01))
    assert len(seen) == 2 and seen[1] == "x"
    assert first._context is context and second._context is context
    gc.collect()
    assert gc.is_tracked(context) and context[_cycle_var] == "x"


def test_a_handle_dropped_from_the_queue_by_someone_else_frees_its_context(new_loop):
    import weakref

    class Value:
        pass

    loop = new_loop()
    value = Value()
    ref = weakref.ref(value)
    context = contextvars.copy_context()
    context.run(_cycle_var.set, value)
    del value
    loop.call_soon(print, context=context)
    loop.call_later(3600, print, context=context)
    del context
    loop._ready.clear()               # not the loop's doing: nobody puts these back in the GC
    loop._scheduled.clear()
    gc.collect()
    assert ref() is None              # the context went with its handles, no crash
    loop.call_soon(loop.stop)         # and the loop goes on
    loop.run_forever()


def test_a_pending_sock_task_whose_repr_was_taken_is_collected(new_loop, caplog):
    """A task left pending on a sock_* coroutine, its repr taken by a function that held it,
    then the loop closed: the task is collected.  The repr reads the coroutine's cr_frame, and
    uringloop's sock_* coroutines are Cython's, whose type kept that frame hidden from the
    collector; on Python 3.10 the frame's f_back chain reaches the function that held the task,
    so task, coroutine and frame formed a cycle the collector could not see as one, and none
    of them -- nor the loop and sockets they referenced -- was ever freed (setup.py now gives
    the generated traverse the frame)."""
    loop = new_loop()
    a, b = socket.socketpair()
    a.setblocking(False)

    async def main():
        task = loop.create_task(loop.sock_recv(a, 10))
        await asyncio.sleep(0)
        assert "sock_recv" in repr(task)
        return weakref.ref(task)

    with caplog.at_level("CRITICAL", logger="asyncio"):     # "Task was destroyed ..." below
        task_ref = loop.run_until_complete(main())
        loop.close()
        a.close()
        b.close()
        gc.collect()
    assert task_ref() is None
