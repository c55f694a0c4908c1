"""The loop's scheduling behaviour -- call_soon, call_at/call_later, the timer heap, the ready
queue, one iteration -- on uringloop (compiled, uringloop/_sched.pyx) and on the stock loop (the
oracle).  Every test runs on both loops (the `new_loop` fixture); a few also compare uringloop's
outcome with the stock loop's directly.

Handles' lifetimes and the garbage collector: test_scheduling_lifetimes; the loop's wait,
its wake-ups and run_forever(): test_scheduling_wait."""

import asyncio
import contextvars
import heapq
import os
import logging
import re
import sys
import threading
import time
import weakref
from asyncio import base_events, events

import pytest

import uringloop

from helpers import run_iterations


def stock_outcome(action):
    """What `action(loop)` does on a fresh stock loop: ('ok', result) or ('raises', type)."""
    loop = asyncio.SelectorEventLoop()
    try:
        return ("ok", action(loop))
    except BaseException as exc:   # noqa: B902 - the oracle's outcome, whatever it is
        return ("raises", type(exc))
    finally:
        loop.close()


def outcome(action, loop):
    try:
        return ("ok", action(loop))
    except BaseException as exc:   # noqa: B902
        return ("raises", type(exc))


# ---- handles ----

def test_call_soon_returns_an_asyncio_handle(new_loop):
    loop = new_loop()
    loop.set_debug(False)    # the handle of a loop not in debug mode (-X dev turns it on)

    def callback(a, b):
        pass

    handle = loop.call_soon(callback, 1, 2)
    assert type(handle) is asyncio.Handle
    assert not handle.cancelled()
    assert handle._callback is callback and handle._args == (1, 2)
    assert handle._loop is loop and handle._source_traceback is None
    assert isinstance(handle._context, contextvars.Context)
    assert repr(handle) == repr(events.Handle(callback, (1, 2), loop))
    assert loop._ready[-1] is handle
    handle.cancel()
    assert handle.cancelled() and handle._callback is None and handle._args is None
    reference = events.Handle(callback, (1, 2), loop)
    reference.cancel()
    assert repr(handle) == repr(reference)


def test_call_later_returns_an_asyncio_timer_handle(new_loop):
    loop = new_loop()
    loop.set_debug(False)    # the handle of a loop not in debug mode (-X dev turns it on)
    before = loop.time()
    timer = loop.call_later(10.0, print, "x")
    after = loop.time()
    assert type(timer) is asyncio.TimerHandle
    assert before + 10.0 <= timer.when() <= after + 10.0
    assert timer._scheduled is True
    assert loop._scheduled == [timer]
    assert repr(timer) == repr(events.TimerHandle(timer.when(), print, ("x",), loop))
    timer.cancel()
    assert timer.cancelled()
    assert loop._timer_cancelled_count == 1
    # a cancelled timer stays in the heap until an iteration drops it
    assert loop._scheduled == [timer]
    loop.call_soon(lambda: None)      # so the iteration does not wait
    run_iterations(loop)
    assert loop._scheduled == [] and timer._scheduled is False
    assert loop._timer_cancelled_count == 0


def test_call_at_keeps_the_deadline_object(new_loop):
    loop = new_loop()
    timer = loop.call_at(12345, print)
    assert timer.when() == 12345 and type(timer.when()) is int


@pytest.mark.skipif(sys.version_info < (3, 12), reason="Handle.get_context() is new in 3.12")
def test_get_context(new_loop):
    loop = new_loop()
    context = contextvars.copy_context()
    assert loop.call_soon(print, context=context).get_context() is context
    assert loop.call_later(1, print, context=context).get_context() is context


def test_handles_compare_and_hash_as_asyncio_defines(new_loop):
    loop = new_loop()
    a = loop.call_at(5.0, print)
    b = loop.call_at(5.0, print)
    c = loop.call_at(6.0, print)
    assert a == b and a is not b and hash(a) == hash(5.0)
    assert a < c and c > b and a <= b and not a < b


# ---- order of execution ----

def test_call_soon_is_fifo(new_loop):
    loop = new_loop()
    seen = []
    for i in range(50):
        loop.call_soon(seen.append, i)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == list(range(50))


def test_callbacks_scheduled_by_callbacks_run_next_iteration(new_loop):
    loop = new_loop()
    seen = []

    def first():
        seen.append("first")
        loop.call_soon(seen.append, "scheduled by first")

    loop.call_soon(first)
    loop.call_soon(seen.append, "second")
    run_iterations(loop)
    assert seen == ["first", "second"]
    assert len(loop._ready) == 1
    run_iterations(loop)
    assert seen == ["first", "second", "scheduled by first"]


def test_due_timers_run_after_the_ready_callbacks(new_loop):
    # The iteration appends due timers to the ready queue behind what was already there.
    loop = new_loop()
    seen = []
    loop.call_later(0, seen.append, "timer scheduled first")
    loop.call_soon(seen.append, "call_soon scheduled second")
    run_iterations(loop)
    assert seen == ["call_soon scheduled second", "timer scheduled first"]


def test_a_timer_a_callback_schedules_waits_for_the_callbacks_queued_before_it(new_loop):
    # call_soon(A) then call_later(0, B) from a callback: the stock loop runs A in the next
    # iteration and B behind it, although B is already due when the callback returns.  (The
    # conformance run of test_waitfor on 3.12 caught the other order once: wait_for()'s
    # 1e-9 s timeout cancelled a task before the task's first step had run.)
    loop = new_loop()
    seen = []

    def first():
        loop.call_soon(seen.append, "call_soon")
        loop.call_later(0, seen.append, "call_later(0)")

    loop.call_soon(first)
    loop.call_later(0.05, loop.stop)
    loop.run_forever()
    assert seen == ["call_soon", "call_later(0)"]


def test_timers_run_in_deadline_order(new_loop):
    loop = new_loop()
    seen = []
    now = loop.time()
    for delay in (0.03, 0.01, 0.02, 0.0, 0.015):
        loop.call_at(now + delay, seen.append, delay)
    loop.call_at(now + 0.04, loop.stop)
    loop.run_forever()
    assert seen == [0.0, 0.01, 0.015, 0.02, 0.03]


def test_equal_deadlines_run_in_heapq_order(new_loop):
    # asyncio leaves the order of equal deadlines to heapq ("undefined" in its docs); it is not
    # FIFO beyond a few timers.  The loop must pop exactly what heapq pops.
    loop = new_loop()
    deadline = loop.time() - 1.0            # already due
    whens = [deadline + (i % 3) * 1e-3 for i in range(40)]
    seen = []
    reference = []
    for i, when in enumerate(whens):
        loop.call_at(when, seen.append, i)
        heapq.heappush(reference, events.TimerHandle(when, None, (i,), loop))
        assert [t.when() for t in loop._scheduled] == [t.when() for t in reference]
    expected = [heapq.heappop(reference)._args[0] for _ in range(len(whens))]
    first_group = [i for i in expected if i % 3 == 0]
    assert first_group != sorted(first_group), "the case must exercise the non-FIFO part"
    run_iterations(loop)
    assert seen == expected


def test_scheduled_heap_matches_heapq_through_pushes_and_pops(new_loop):
    loop = new_loop()
    now = loop.time()
    reference = []
    for i in range(300):
        when = now + 100 + (i * 7919 % 300) * 0.5      # 300 distinct deadlines
        timer = loop.call_at(when, print)
        heapq.heappush(reference, timer)
        assert loop._scheduled == reference and all(
            a is b for a, b in zip(loop._scheduled, reference))
    # Make the first 120 due by moving the clock's reference: pop them through an iteration.
    due = sorted(reference, key=lambda t: t.when())[119].when()
    ordered_expected = [heapq.heappop(reference) for _ in range(120)]
    assert all(t.when() <= due for t in ordered_expected)
    loop._clock_resolution = due - loop.time() + 1e-6   # everything up to `due` counts as due
    popped = []
    for timer in ordered_expected:
        timer._callback = popped.append
        timer._args = (timer,)
    loop.call_soon(lambda: None)
    run_iterations(loop)
    assert popped == ordered_expected
    assert all(a is b for a, b in zip(loop._scheduled, reference))
    assert len(loop._scheduled) == 180


def test_a_large_due_heap_pops_in_heapq_order_and_lets_go_of_each_timer(new_loop):
    # Thousands of timers due at once: the heap shrinks through several halvings of its list
    # while they are popped, they run in heapq's order (ties included), the ones not due stay
    # in heapq's arrangement, and each timer that ran is freed -- nothing keeps a reference.
    import random
    import weakref
    loop = new_loop()
    now = loop.time()
    rng = random.Random(7)
    seen, reference, refs = [], [], []
    for i in range(5000):
        if i % 5:
            when = now - 10 + rng.randrange(1000) * 1e-3     # due, many equal deadlines
        else:
            when = now + 100 + rng.randrange(1000)            # not due
        refs.append(weakref.ref(loop.call_at(when, seen.append, i)))
        heapq.heappush(reference, events.TimerHandle(when, None, (i,), loop))
    expected = [heapq.heappop(reference)._args[0] for _ in range(4000)]
    run_iterations(loop)
    assert seen == expected
    assert [(t.when(), t._args) for t in loop._scheduled] == [
        (t.when(), (t._args[0],)) for t in reference]
    assert [i for i, ref in enumerate(refs) if ref() is not None] == list(range(0, 5000, 5))


def test_a_timer_that_interrupts_leaves_the_other_due_timers_queued(new_loop):
    loop = new_loop()
    seen = []
    deadline = loop.time() - 1.0

    def boom():
        raise KeyboardInterrupt

    loop.call_at(deadline, seen.append, 0)
    loop.call_at(deadline + 1e-3, boom)
    rest = [loop.call_at(deadline + 2e-3, seen.append, 2),
            loop.call_at(deadline + 3e-3, seen.append, 3)]
    with pytest.raises(KeyboardInterrupt):
        run_iterations(loop)
    assert seen == [0]
    assert list(loop._ready) == rest
    run_iterations(loop)
    assert seen == [0, 2, 3]


def test_cancelled_handles_are_skipped(new_loop):
    loop = new_loop()
    seen = []
    loop.call_soon(seen.append, 1)
    handle = loop.call_soon(seen.append, 2)
    handle.cancel()
    timer = loop.call_later(0, seen.append, 3)
    timer.cancel()
    loop.call_soon(seen.append, 4)

    def cancel_a_later_one():
        seen.append("canceller")
        victim.cancel()

    loop.call_soon(cancel_a_later_one)
    victim = loop.call_soon(seen.append, "victim")
    run_iterations(loop)
    assert seen == [1, 4, "canceller"]
    assert not loop._ready and not loop._scheduled


def test_callback_cancelling_its_own_handle(new_loop):
    loop = new_loop()
    seen = []

    def callback(*args):
        seen.append(args)
        handle.cancel()

    handle = loop.call_soon(callback, "a", "b")
    run_iterations(loop)
    assert seen == [("a", "b")]
    assert handle.cancelled()


def test_clock_resolution_makes_near_timers_due(new_loop):
    loop = new_loop()
    seen = []
    loop._clock_resolution = 10.0
    loop.call_later(5.0, seen.append, "within the resolution")
    loop.call_later(20.0, seen.append, "beyond it")
    loop.call_soon(lambda: None)             # the iteration does not block
    run_iterations(loop)
    assert seen == ["within the resolution"]
    assert len(loop._scheduled) == 1


def test_iteration_does_not_block_while_stopping(new_loop):
    loop = new_loop()
    seen = []
    loop.call_later(3600, seen.append, "far")
    loop.stop()
    loop.run_forever()               # would wait an hour if _stopping did not zero the timeout
    assert seen == [] and len(loop._scheduled) == 1


# ---- the cancelled-timer clean-up heuristics ----

def test_many_cancelled_timers_rebuild_the_heap(new_loop):
    loop = new_loop()
    n = base_events._MIN_SCHEDULED_TIMER_HANDLES * 3
    timers = [loop.call_later(3600 + i, print) for i in range(n)]
    cancelled = timers[::3] + timers[1::3]          # two thirds: above the fraction
    for timer in cancelled:
        timer.cancel()
    assert loop._timer_cancelled_count == len(cancelled)
    kept = [t for t in timers if not t.cancelled()]
    reference = list(kept)
    loop.call_soon(lambda: None)
    run_iterations(loop)
    assert loop._timer_cancelled_count == 0
    assert sorted(loop._scheduled, key=id) == sorted(kept, key=id)
    heapq.heapify(reference)
    assert [t.when() for t in loop._scheduled] == [t.when() for t in reference]
    assert all(t._scheduled is False for t in cancelled)
    assert all(t._scheduled is True for t in kept)


def test_few_cancelled_timers_are_dropped_from_the_head_only(new_loop):
    loop = new_loop()
    n = base_events._MIN_SCHEDULED_TIMER_HANDLES * 2
    timers = [loop.call_later(3600 + i, print) for i in range(n)]
    for timer in timers[:5] + timers[-5:]:          # head and tail, far below the fraction
        timer.cancel()
    loop.call_soon(lambda: None)
    run_iterations(loop)
    assert len(loop._scheduled) == n - 5            # the tail ones wait for their turn
    assert loop._timer_cancelled_count == 5
    assert loop._scheduled[0] is timers[5]
    assert all(t._scheduled is False for t in timers[:5])
    assert all(t._scheduled is True for t in timers[-5:])


def test_a_timer_cancelled_by_a_callback_before_a_wait_is_dropped_and_uncounted(new_loop):
    """A callback cancels the first timer (a timeout whose awaited thing came first) and the
    loop then waits: the cancelled timer leaves the heap as the next iteration's first step,
    and the cancelled-timer count goes back to 0 -- no wake-up at its deadline either."""
    loop = new_loop()
    ran = []
    timeout = loop.call_later(0.05, ran.append, "timeout")
    loop.call_soon(timeout.cancel)
    loop.call_later(0.1, loop.stop)
    loop.run_forever()
    assert ran == []
    assert loop._timer_cancelled_count == 0
    assert loop._scheduled == []
    assert timeout._scheduled is False


def test_a_timer_postponed_in_place_runs_at_its_new_deadline(new_loop):
    """Code that moves a scheduled timer by assigning its _when (an expiring cache extending
    itself): the stock heap reads the live deadline, so the timer runs at the new one."""
    loop = new_loop()
    ran = []
    start = loop.time()
    timer = loop.call_at(start + 0.05, lambda: ran.append(loop.time() - start))
    loop.call_at(start + 0.5, loop.stop)
    timer._when = start + 0.2
    loop.run_forever()
    assert len(ran) == 1 and 0.2 <= ran[0] < 0.5


def test_deadlines_rewritten_then_heapified_run_in_their_new_order(new_loop):
    """A fake clock's way: rewrite deadlines, heapq.heapify(loop._scheduled)."""
    loop = new_loop()
    ran = []
    start = loop.time()
    timers = [loop.call_at(start + 0.05 * (i + 1), ran.append, i) for i in range(3)]
    timers[1]._when = start + 0.3
    heapq.heapify(loop._scheduled)
    loop.call_at(start + 0.2, loop.stop)
    loop.run_forever()
    assert ran == [0, 2]


def test_handle_classes_replaced_in_asyncio_events_are_used(new_loop, monkeypatch):
    """BaseEventLoop looks asyncio.events.Handle / TimerHandle up on each call: replacing them
    (instrumentation does) gives handles of the replacements."""
    class MyHandle(events.Handle):
        pass

    class MyTimerHandle(events.TimerHandle):
        pass

    loop = new_loop()
    monkeypatch.setattr(events, "Handle", MyHandle)
    monkeypatch.setattr(events, "TimerHandle", MyTimerHandle)
    ran = []
    assert type(loop.call_soon(ran.append, 1)) is MyHandle
    assert type(loop.call_later(0, ran.append, 2)) is MyTimerHandle
    assert type(loop.call_at(loop.time(), ran.append, 3)) is MyTimerHandle
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert ran == [1, 2, 3]


def test_the_loop_clock_follows_a_replaced_time_monotonic(new_loop, monkeypatch):
    """BaseEventLoop.time() calls time.monotonic(): tools that replace it (freezegun's
    tick()) move the loop's clock, and timers become due by it."""
    loop = new_loop()
    real = time.monotonic
    offset = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: real() + offset[0])
    ran = []
    loop.call_later(3600, ran.append, "an hour later")
    offset[0] += 3601
    assert abs(loop.time() - (real() + 3601)) < 1
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert ran == ["an hour later"]


def test_cancelling_a_popped_timer_is_not_counted(new_loop):
    loop = new_loop()
    timer = loop.call_later(0, lambda: None)
    loop.call_soon(lambda: None)
    run_iterations(loop)
    assert timer._scheduled is False
    timer.cancel()
    assert loop._timer_cancelled_count == 0


# ---- stop(), exceptions, debug mode ----

def test_stop_inside_a_callback_finishes_the_iteration(new_loop):
    loop = new_loop()
    seen = []

    def stopper():
        seen.append("stop")
        loop.stop()
        loop.call_soon(seen.append, "next run")

    loop.call_soon(seen.append, "before")
    loop.call_soon(stopper)
    loop.call_soon(seen.append, "after, same iteration")
    loop.run_forever()
    assert seen == ["before", "stop", "after, same iteration"]
    assert not loop.is_running()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen[-1] == "next run"


def test_callback_exception_reaches_the_handler(new_loop):
    loop = new_loop()
    loop.set_debug(False)    # the handle of a loop not in debug mode (-X dev turns it on)
    contexts = []
    loop.set_exception_handler(lambda loop, context: contexts.append(context))
    seen = []

    def boom(x):
        raise ZeroDivisionError(x)

    handle = loop.call_soon(boom, 42)
    timer = loop.call_later(0, boom, 43)
    loop.call_soon(seen.append, "still runs")
    run_iterations(loop)
    assert seen == ["still runs"]
    assert [c["handle"] for c in contexts] == [handle, timer]
    for context, value in zip(contexts, (42, 43)):
        assert isinstance(context["exception"], ZeroDivisionError)
        assert context["exception"].args == (value,)
        assert context["message"].startswith(
            "Exception in callback test_callback_exception_reaches_the_handler.<locals>.boom(")
        assert "source_traceback" not in context


def test_callback_exception_message_matches_the_stock_loop(new_loop):
    loop = new_loop()
    contexts = []
    loop.set_exception_handler(lambda loop, context: contexts.append(context))

    def boom():
        raise ValueError

    loop.call_soon(boom)
    run_iterations(loop)
    stock = asyncio.SelectorEventLoop()
    try:
        stock_contexts = []
        stock.set_exception_handler(lambda loop, context: stock_contexts.append(context))
        stock.call_soon(boom)
        run_iterations(stock)
    finally:
        stock.close()
    assert contexts[0]["message"] == stock_contexts[0]["message"]
    assert set(contexts[0]) == set(stock_contexts[0])


@pytest.mark.parametrize("exc_type", [SystemExit, KeyboardInterrupt])
def test_system_exit_and_keyboard_interrupt_propagate(new_loop, exc_type):
    loop = new_loop()
    seen = []

    def boom():
        raise exc_type

    loop.call_soon(seen.append, 1)
    loop.call_soon(boom)
    later = loop.call_soon(seen.append, 2)
    with pytest.raises(exc_type):
        run_iterations(loop)
    assert seen == [1]
    assert list(loop._ready) == [later]      # the rest of the batch is still queued


def test_debug_mode_logs_slow_callbacks(new_loop, caplog):
    loop = new_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = 0.0

    def slow():
        pass

    loop.call_soon(slow)
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        run_iterations(loop)
    warnings = [r for r in caplog.records if r.getMessage().startswith("Executing <Handle")]
    assert len(warnings) == 1
    assert "slow()" in warnings[0].getMessage() and " took " in warnings[0].getMessage()
    assert loop._current_handle is None


@pytest.mark.parametrize("kind", ["stream", "datagram"])
def test_debug_mode_logs_slow_protocol_callbacks(new_loop, caplog, kind):
    """A data_received()/datagram_received() that blocks the loop gets the slow-callback warning
    in debug mode, as the stock loop's _read_ready handle does.  (uringloop calls protocols from
    completions, which were not timed: no warning.)"""
    import socket
    loop = new_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = 0.05
    received = []

    class Slow(asyncio.Protocol):
        def data_received(self, data):
            received.append(data)
            time.sleep(0.1)

        def datagram_received(self, data, addr):
            self.data_received(data)

    if kind == "stream":
        a, peer = socket.socketpair()
        transport, _ = loop.run_until_complete(loop.create_connection(Slow, sock=a))
        peer.send(b"x")
    else:
        transport, _ = loop.run_until_complete(
            loop.create_datagram_endpoint(Slow, local_addr=("127.0.0.1", 0)))
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.sendto(b"x", transport.get_extra_info("sockname"))
    with peer, caplog.at_level(logging.WARNING, logger="asyncio"):
        deadline = time.monotonic() + 5
        while not received and time.monotonic() < deadline:
            loop.run_until_complete(asyncio.sleep(0.01))
        transport.close()
        loop.run_until_complete(asyncio.sleep(0.01))
    assert received == [b"x"]
    slow = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Executing <")]
    assert len(slow) == 1 and re.search(r" took \d+\.\d{3} seconds$", slow[0]), slow


def test_debug_mode_records_where_handles_were_created(new_loop):
    loop = new_loop()
    loop.set_debug(True)
    handles = [loop.call_soon(print), loop.call_later(1, print), loop.call_at(1, print)]
    for handle in handles:
        last = handle._source_traceback[-1]
        assert last.filename == __file__
        assert last.name == "test_debug_mode_records_where_handles_were_created"


def test_debug_mode_checks_the_callback_and_the_thread(new_loop):
    loop = new_loop()
    loop.set_debug(True)

    async def coroutine_function():
        pass

    with pytest.raises(TypeError):
        loop.call_soon(coroutine_function)
    with pytest.raises(TypeError):
        loop.call_later(1, 42)
    errors = []

    def from_another_thread():
        try:
            loop.call_soon(print)
        except RuntimeError as exc:
            errors.append(exc)
        loop.call_soon_threadsafe(loop.stop)

    loop.call_soon(lambda: threading.Thread(target=from_another_thread).start())
    loop.run_forever()
    assert len(errors) == 1 and "Non-thread-safe" in str(errors[0])


def test_handle_cancel_in_debug_mode_keeps_the_repr(new_loop):
    loop = new_loop()
    loop.set_debug(True)
    handle = loop.call_soon(print, "x")
    handle.cancel()
    assert "print('x')" in repr(handle) and "cancelled" in repr(handle)


# ---- contexts ----

def test_callbacks_run_in_a_copy_of_the_callers_context(new_loop):
    loop = new_loop()
    var = contextvars.ContextVar("var", default="unset")
    seen = []

    def read_and_write(tag):
        seen.append((tag, var.get()))
        var.set(f"set by {tag}")

    var.set("at call_soon")
    loop.call_soon(read_and_write, "a")
    loop.call_later(0, read_and_write, "b")
    var.set("changed afterwards")
    loop.call_soon(read_and_write, "c")
    run_iterations(loop)
    assert seen == [("a", "at call_soon"), ("c", "changed afterwards"),
                    ("b", "at call_soon")]
    assert var.get() == "changed afterwards"


def test_explicit_context_is_used_and_mutated(new_loop):
    loop = new_loop()
    var = contextvars.ContextVar("var", default="unset")
    context = contextvars.Context()
    seen = []
    loop.call_soon(var.set, "inside", context=context)
    loop.call_at(loop.time() - 1, lambda: seen.append(var.get()), context=context)
    run_iterations(loop)
    assert context[var] == "inside" and seen == ["inside"]
    assert var.get() == "unset"


def test_entering_an_entered_context_fails_as_on_the_stock_loop(new_loop, caplog):
    # Handle._run runs the callback with context.run(): running a handle whose context is
    # already entered is an error for the exception handler, not one that leaves the loop.
    # (From 3.12 on, call_exception_handler runs the handler in the handle's context as well,
    # which fails the same way and is logged.)
    def scenario(loop):
        contexts = []
        loop.set_exception_handler(lambda loop, context: contexts.append(context))
        context = contextvars.Context()

        def run_inside():
            loop.call_soon(print, context=context)
            run_iterations(loop)

        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            context.run(run_inside)
        return ([type(c["exception"]) for c in contexts],
                [r.getMessage().splitlines()[0] for r in caplog.records])

    stock = asyncio.SelectorEventLoop()
    try:
        expected = scenario(stock)
    finally:
        stock.close()
    assert scenario(new_loop()) == expected
    assert expected[0] == [RuntimeError] or "Unhandled error in exception handler" in expected[1]


# ---- errors, as the stock loop raises them ----

@pytest.mark.parametrize("action", [
    pytest.param(lambda loop: loop.call_at(None, print), id="call_at(None)"),
    pytest.param(lambda loop: loop.call_later(None, print), id="call_later(None)"),
    pytest.param(lambda loop: loop.call_later("1", print), id="call_later('1')"),
    pytest.param(lambda loop: loop.call_soon(print, context=42) and None, id="bad context"),
    pytest.param(lambda loop: loop.call_at(1.0, print) and loop.call_at("x", print) and None,
                 id="incomparable deadline"),
])
def test_bad_arguments_fail_as_on_the_stock_loop(new_loop, action):
    assert outcome(action, new_loop()) == stock_outcome(action)


def test_incomparable_deadline_stays_in_the_heap_as_with_heapq(new_loop):
    loop = new_loop()
    loop.call_at(1.0, print)
    with pytest.raises(TypeError):
        loop.call_at("x", print)
    assert [t.when() for t in loop._scheduled] == [1.0, "x"]


@pytest.mark.parametrize("method", ["call_soon", "call_later", "call_at"])
def test_closed_loop_refuses_callbacks(new_loop, method):
    loop = new_loop()
    loop.close()
    args = (print,) if method == "call_soon" else (1, print)
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        getattr(loop, method)(*args)


def test_close_clears_the_queues(new_loop):
    loop = new_loop()
    loop.call_soon(print)
    loop.call_later(10, print)
    loop.close()
    assert not loop._ready and not loop._scheduled


# ---- what tests and instrumentation replace ----

def test_time_replaced_on_the_instance_is_used(new_loop):
    loop = new_loop()
    loop.time = lambda: 1000.0
    timer = loop.call_later(5, print)
    assert timer.when() == 1005.0
    seen = []
    loop.call_at(999.0, seen.append, "due by the fake clock")
    loop.call_soon(lambda: None)
    run_iterations(loop)
    assert seen == ["due by the fake clock"]
    del loop.time
    assert loop.time() != 1000.0


def test_call_at_replaced_on_the_instance_is_used_by_call_later(new_loop):
    loop = new_loop()
    calls = []
    original = loop.call_at

    def recording_call_at(when, callback, *args, context=None):
        calls.append(when)
        return original(when, callback, *args, context=context)

    loop.call_at = recording_call_at
    timer = loop.call_later(1, print)
    assert calls == [timer.when()]


def test_create_future_binds_the_loop_and_each_future_is_new(new_loop):
    loop = new_loop()
    first, second = loop.create_future(), loop.create_future()
    assert type(first) is asyncio.Future and first is not second
    assert first.get_loop() is loop and second.get_loop() is loop
    first.set_result(1)
    assert first.result() == 1 and not second.done()


def test_create_future_uses_a_replaced_future_class(new_loop, monkeypatch):
    # BaseEventLoop.create_future() looks asyncio.futures.Future up at each call.
    loop = new_loop()
    made = []

    class Recording(asyncio.Future):
        def __init__(self, *, loop=None):
            made.append(loop)
            super().__init__(loop=loop)

    monkeypatch.setattr(asyncio.futures, "Future", Recording)
    future = loop.create_future()
    assert type(future) is Recording and made == [loop] and future.get_loop() is loop


# ---- create_task: compiled for the coroutine alone, BaseEventLoop's for everything else ----

async def _returns(value):
    return value


def test_create_task_makes_an_asyncio_task_of_the_loop(new_loop):
    loop = new_loop()
    marker = contextvars.ContextVar("marker")
    marker.set("the caller's")

    async def reads_the_marker():
        return marker.get()

    task = loop.create_task(reads_the_marker())
    marker.set("changed after")
    assert type(task) is asyncio.Task and task.get_loop() is loop
    assert re.fullmatch(r"Task-\d+", task.get_name())
    assert loop.run_until_complete(task) == "the caller's"     # a copy of the caller's context
    loop.close()


def test_closed_loop_refuses_tasks(new_loop):
    loop = new_loop()
    loop.close()
    coro = _returns(1)
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.create_task(coro)
    coro.close()


@pytest.mark.parametrize("kwargs", [
    pytest.param({"name": "named"}, id="name"),
    pytest.param({"context": contextvars.Context()}, id="context"),   # TypeError on 3.10
    pytest.param({"eager_start": True}, id="eager_start"),           # TypeError before 3.14
    pytest.param({"nmae": "typo"}, id="unknown keyword"),
])
def test_create_task_keywords_as_on_the_stock_loop(new_loop, kwargs):
    def action(loop):
        coro = _returns(7)
        try:
            task = loop.create_task(coro, **kwargs)
        except TypeError:
            coro.close()
            raise
        return task.get_name() == kwargs.get("name", task.get_name()), loop.run_until_complete(task)

    assert outcome(action, new_loop()) == stock_outcome(action)


def test_create_task_uses_a_replaced_task_class(new_loop, monkeypatch):
    # BaseEventLoop.create_task() looks asyncio.tasks.Task up at each call.
    loop = new_loop()
    made = []

    class Recording(asyncio.Task):
        def __init__(self, coro, *, loop=None, **kwargs):
            made.append(loop)
            super().__init__(coro, loop=loop, **kwargs)

    monkeypatch.setattr(asyncio.tasks, "Task", Recording)
    task = loop.create_task(_returns(3))
    assert type(task) is Recording and made == [loop]
    assert loop.run_until_complete(task) == 3
    loop.close()


def test_create_task_uses_the_task_factory(new_loop):
    loop = new_loop()
    seen = []

    def factory(loop, coro, **kwargs):
        seen.append(kwargs)
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(factory)
    plain = loop.create_task(_returns(5))
    named = loop.create_task(_returns(6), name="from the factory")
    assert seen == [{}, {}] and named.get_name() == "from the factory"
    assert loop.run_until_complete(asyncio.gather(plain, named)) == [5, 6]
    loop.close()


def test_check_closed_replaced_on_the_instance_is_used_by_create_task(new_loop):
    loop = new_loop()

    def refuse():
        raise RuntimeError("refused by the replacement")

    loop._check_closed = refuse
    coro = _returns(1)
    with pytest.raises(RuntimeError, match="refused by the replacement"):
        loop.create_task(coro)
    coro.close()
    del loop._check_closed
    loop.close()


def test_create_task_in_debug_mode_traces_back_to_its_caller(new_loop):
    loop = new_loop()
    loop.set_debug(True)
    task = loop.create_task(_returns(0))
    frame = task._source_traceback[-1]
    assert frame.name == "test_create_task_in_debug_mode_traces_back_to_its_caller"
    loop.run_until_complete(task)
    loop.close()


def test_patched_handle_run_is_called(new_loop, monkeypatch):
    loop = new_loop()
    ran = []
    original = asyncio.Handle._run

    def instrumented(self):
        ran.append(self)
        return original(self)

    monkeypatch.setattr(asyncio.Handle, "_run", instrumented)
    seen = []
    handle = loop.call_soon(seen.append, 1)
    timer = loop.call_later(0, seen.append, 2)
    run_iterations(loop)
    assert ran == [handle, timer] and seen == [1, 2]


def test_subclass_handle_in_ready_queue_runs_its_own_run(new_loop):
    loop = new_loop()
    ran = []

    class MyHandle(asyncio.Handle):
        __slots__ = ()

        def _run(self):
            ran.append(self)
            super()._run()

    seen = []
    handle = MyHandle(seen.append, ("mine",), loop, None)
    loop._ready.append(handle)
    run_iterations(loop)
    assert ran == [handle] and seen == ["mine"]


def test_subclass_with_a_class_level_selector_runs_base_event_loop_code(new_loop):
    # CPython's own tests subclass loops with `_selector` (a mock) as a class attribute.
    base = type(new_loop())
    seen = []

    class FakeSelector:
        def select(self, timeout):
            seen.append(("select", timeout))
            return []

    class Sub(base):
        _selector = FakeSelector()

        def _process_events(self, event_list):
            seen.append(("events", event_list))

    loop = Sub()
    real_selector = loop._selector
    del loop._selector                    # the instance's own: now the class attribute shows
    try:
        loop.call_soon(seen.append, "callback")
        run_iterations(loop)
        assert seen == [("select", 0), ("events", []), "callback"]
    finally:
        loop._selector = real_selector
        loop.close()


def test_patched_handle_init_sees_every_handle(new_loop, monkeypatch):
    loop = new_loop()
    created = []
    handle_init = asyncio.Handle.__init__
    timer_init = asyncio.TimerHandle.__init__

    def recording_handle_init(self, *args, **kwargs):
        created.append(type(self).__name__)
        handle_init(self, *args, **kwargs)

    def recording_timer_init(self, *args, **kwargs):
        created.append("timer")
        timer_init(self, *args, **kwargs)

    monkeypatch.setattr(asyncio.Handle, "__init__", recording_handle_init)
    loop.call_soon(print)
    monkeypatch.setattr(asyncio.TimerHandle, "__init__", recording_timer_init)
    loop.call_later(1, print)
    loop.call_at(1, print)
    assert created == ["Handle", "timer", "TimerHandle", "timer", "TimerHandle"]


def test_patched_timer_lt_orders_the_heap(new_loop, monkeypatch):
    # Whoever replaces TimerHandle.__lt__ decides the heap's order, as with heapq.
    loop = new_loop()
    monkeypatch.setattr(asyncio.TimerHandle, "__lt__", lambda a, b: a._when > b._when)
    reference = []
    for i in range(50):
        timer = loop.call_at(1000.0 + (i * 7 % 50), print)
        heapq.heappush(reference, timer)
    assert all(a is b for a, b in zip(loop._scheduled, reference))
    assert loop._scheduled[0].when() == 1049.0       # the "smallest" is now the latest


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_order_after_an_interrupt_is_the_stock_loops(new_loop, exc_type):
    """A callback that schedules C, then raises KeyboardInterrupt/SystemExit, with B after it in
    the batch and a timer T due: run again, the loop runs B, T, C -- the order of the stock
    loop's ready queue, where the due timer stood before what the batch scheduled.  (uringloop
    put the timer last: B, C, T.)"""
    loop = new_loop()
    log = []

    def interrupting():
        log.append("A")
        loop.call_soon(log.append, "C")
        raise exc_type()

    loop.call_later(0, log.append, "T")
    time.sleep(0.01)
    loop.call_soon(interrupting)
    loop.call_soon(log.append, "B")
    with pytest.raises(exc_type):
        loop.run_forever()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert log == ["A", "B", "T", "C"]


def test_a_threadsafe_callback_queued_during_the_wait_runs_before_timers_due_meanwhile(new_loop):
    """call_soon_threadsafe() while the loop waits, after a timer's deadline has passed: the
    callback runs first, as it is already in the stock loop's ready queue when the timers are
    added to it.  (uringloop ran the timer, and the callback an iteration later.)"""
    loop = new_loop()
    log = []
    started = threading.Event()

    def other_thread():
        started.wait()
        time.sleep(0.05)
        # Hold the GIL past the timer's deadline, so that the loop finds both when it wakes.
        deadline = time.monotonic() + 0.1
        while time.monotonic() < deadline:
            pass
        loop.call_soon_threadsafe(log.append, "threadsafe")

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1.0)
    try:
        loop.call_soon(started.set)
        loop.call_later(0.1, log.append, "timer")
        loop.call_later(0.5, loop.stop)
        thread = threading.Thread(target=other_thread)
        thread.start()
        loop.run_forever()
        thread.join()
    finally:
        sys.setswitchinterval(switch)
    assert log == ["threadsafe", "timer"]


def test_subclass_hooks_that_call_soon_and_handles_consult(new_loop):
    """BaseEventLoop.call_soon() goes through self._call_soon(), and a handle asks
    loop.get_debug() whether to record where it was made: a subclass replacing either is
    heard, as with the stock loop.  (uringloop's compiled call_soon and call_later used
    neither.)"""
    base = type(new_loop())
    seen = []

    class Hooked(base):
        def _call_soon(self, callback, args, context):
            seen.append(callback)
            return super()._call_soon(callback, args, context)

    class Debugging(base):
        def get_debug(self):
            return True

    loop = Hooked()
    try:
        loop.call_soon(print)
        assert seen == [print]
    finally:
        loop._ready.clear()
        loop.close()
    loop = Debugging()
    try:
        assert loop.call_soon(print)._source_traceback is not None
        assert loop.call_later(1, print)._source_traceback is not None
    finally:
        loop._ready.clear()
        loop._scheduled.clear()
        loop.close()


_NAN_TIMER_SCRIPT = r"""
import asyncio, sys
sys.path.insert(0, sys.argv[2])
import uringloop

async def main():
    if sys.version_info < (3, 13):          # 3.13's sleep() refuses NaN itself
        await asyncio.sleep(float("nan"))
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    loop.call_at(float("nan"), fut.set_result, "ran")
    print(await asyncio.wait_for(fut, 5))

factory = uringloop.new_event_loop if sys.argv[1] == "uringloop" else asyncio.SelectorEventLoop
loop = factory()
loop.run_until_complete(main())
loop.close()
"""


@pytest.mark.parametrize("loop_name", ["uringloop", "asyncio"])
def test_a_timer_whose_deadline_is_nan_runs_at_once(loop_name, tmp_path):
    """sleep(nan), call_at(nan): the timer is due at once, as the stock loop of 3.10-3.12 runs
    it (3.13's sleep() refuses NaN, and its selector the NaN timeout of call_at(nan)).
    uringloop read a NaN head as moved on every look and spun in pop_due() forever, deaf to
    Ctrl-C -- hence a child process."""
    import subprocess
    if loop_name == "asyncio" and sys.version_info >= (3, 13):
        pytest.skip("the stock loop of 3.13 raises ValueError from its selector")
    script = tmp_path / "nan_timer.py"
    script.write_text(_NAN_TIMER_SCRIPT)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(uringloop.__file__)))
    try:
        proc = subprocess.run([sys.executable, str(script), loop_name, repo],
                              capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("the loop never ran the timer (killed after 30 s)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["ran"]


def test_time_follows_a_replaced_time_module_in_base_events(new_loop):
    """mock.patch('asyncio.base_events.time') -- CPython's own test_base_events does it -- moves
    loop.time() as it moves BaseEventLoop.time(); uringloop watched only time.monotonic and
    went on reading the real clock."""
    from unittest import mock
    loop = new_loop()
    with mock.patch('asyncio.base_events.time') as fake:
        fake.monotonic.return_value = 123.0
        assert loop.time() == 123.0
    assert loop.time() != 123.0


def test_a_future_made_in_debug_mode_records_create_future_as_its_origin(new_loop):
    """In debug mode a future's source traceback ends in BaseEventLoop.create_future(), as on
    the stock loop: its repr says "created at .../asyncio/base_events.py", and so does a
    destroyed task's report of what it waited for.  uringloop's compiled create_future() left
    no frame: the traceback ended in the caller."""
    loop = new_loop()
    loop.set_debug(True)

    async def make():
        return loop.create_future()

    future = loop.run_until_complete(make())
    filename, _, function = future._source_traceback[-1][:3]
    assert (os.path.basename(filename), function) == ("base_events.py", "create_future")
    assert "created at " in repr(future) and "base_events.py:" in repr(future)
    future.cancel()
