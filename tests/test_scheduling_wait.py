"""The loop's wait for I/O and its wake-ups, on uringloop and on the stock loop:
call_soon_threadsafe() from other threads, timers that end the wait, a busy loop still
collecting completions, run_forever()'s set-up and clean-up, signal handlers while the loop
waits, and I/O callbacks queued behind the callbacks already ready."""

import asyncio
import contextvars
import sys
import threading
import time
from asyncio import base_events

import pytest

import uringloop


# ---- the loop's wake-up and the Proactor wait ----

def test_call_soon_threadsafe_wakes_a_waiting_loop(new_loop):
    loop = new_loop()
    seen = []
    threads = []

    def from_thread():
        loop.call_soon_threadsafe(seen.append, "from the thread")
        loop.call_soon_threadsafe(loop.stop)

    def start_thread():
        threads.append(threading.Thread(target=from_thread))
        threads[0].start()

    # The loop has nothing to do and no timer but the fallback, so it blocks in the wait.
    fallback = loop.call_later(30, seen.append, "fallback timer")
    loop.call_soon(start_thread)
    loop.run_forever()
    threads[0].join()
    fallback.cancel()
    assert seen == ["from the thread"]


def test_call_soon_threadsafe_keeps_the_stock_contract(new_loop):
    """What the call gives back and how it fails, as BaseEventLoop's: a Handle that can be
    cancelled before it runs, the context it was given, the loop's closed error; and a loop
    class that replaces _write_to_self (how a loop is woken) still has it called."""
    loop = new_loop()
    var = contextvars.ContextVar("var", default="default")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "given")
    seen = []
    handle = loop.call_soon_threadsafe(seen.append, "cancelled")
    assert isinstance(handle, asyncio.Handle) and not isinstance(handle, asyncio.TimerHandle)
    handle.cancel()
    loop.call_soon_threadsafe(lambda: seen.append(var.get()), context=ctx)
    loop.call_soon_threadsafe(lambda: seen.append(var.get()))
    loop.call_soon_threadsafe(loop.stop)
    loop.run_forever()
    assert seen == ["given", "default"]
    loop.close()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.call_soon_threadsafe(seen.append, "late")

    woken = []

    class CountingWakeups(type(loop)):
        def _write_to_self(self):
            woken.append(True)
            super()._write_to_self()

    counting = CountingWakeups()
    try:
        counting.call_soon_threadsafe(seen.append, "counted")
        counting.call_soon_threadsafe(counting.stop)
        counting.run_forever()
    finally:
        counting.close()
    assert woken == [True, True] and seen[-1] == "counted"


def test_every_threadsafe_call_after_a_wait_wakes_the_loop_again(new_loop):
    """uringloop writes its wake-up eventfd only when no write is pending: each of these calls
    comes once the loop has taken the last one and is waiting again, so each needs a write of
    its own.  A wake-up lost would leave the loop asleep until the fallback timer."""
    loop = new_loop()
    ran = threading.Event()
    missed = []

    def from_thread():
        for i in range(100):
            ran.clear()
            loop.call_soon_threadsafe(ran.set)
            if not ran.wait(10):
                missed.append(i)
                break
            time.sleep(0.002)           # the loop goes back to waiting meanwhile
        loop.call_soon_threadsafe(loop.stop)

    thread = threading.Thread(target=from_thread)
    fallback = loop.call_later(60, loop.stop)
    loop.call_soon(thread.start)
    loop.run_forever()
    thread.join()
    fallback.cancel()
    assert missed == []


def test_threadsafe_calls_from_many_threads_all_run_once_in_each_threads_order(new_loop):
    """Four threads queue 20,000 callbacks each as fast as they can, most of them while a
    wake-up is already pending (uringloop then skips the write): every one runs, once, and each
    thread's in the order it queued them."""
    loop = new_loop()
    per_thread = 20000
    seen = {n: [] for n in range(4)}
    finished = []

    def from_thread(n):
        for i in range(per_thread):
            loop.call_soon_threadsafe(seen[n].append, i)
        loop.call_soon_threadsafe(finished.append, n)

    def check_done():
        if len(finished) == 4:
            loop.stop()
        else:
            loop.call_later(0.01, check_done)

    threads = [threading.Thread(target=from_thread, args=(n,)) for n in range(4)]
    fallback = loop.call_later(60, loop.stop)
    for thread in threads:
        loop.call_soon(thread.start)
    loop.call_soon(check_done)
    loop.run_forever()
    for thread in threads:
        thread.join()
    fallback.cancel()
    assert sorted(finished) == [0, 1, 2, 3]
    for n in range(4):
        assert seen[n] == list(range(per_thread))


def test_timer_ends_the_wait(new_loop):
    loop = new_loop()
    seen = []
    loop.call_later(0.01, seen.append, "timer")
    loop.call_later(0.02, loop.stop)
    loop.run_forever()
    assert seen == ["timer"]


@pytest.mark.asyncio
async def test_tasks_and_sleep_zero_interleave():
    order = []

    async def worker(name):
        for i in range(3):
            order.append((name, i))
            await asyncio.sleep(0)

    await asyncio.gather(worker("a"), worker("b"))
    assert order == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2)]


@pytest.mark.asyncio
async def test_sleep_and_wait_for_deadlines():
    loop = asyncio.get_running_loop()
    start = loop.time()
    await asyncio.sleep(0.01)
    assert loop.time() >= start + 0.01 - loop._clock_resolution
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.sleep(10), 0.01)


def test_uringloop_compiles_its_scheduling():
    # Not a timing: that the compiled methods really are the ones a Loop uses.
    from uringloop import _sched
    loop = uringloop.new_event_loop()
    try:
        for name in ("call_soon", "call_at", "call_later", "_run_once", "time", "get_debug"):
            assert getattr(type(loop), name) is getattr(_sched.LoopCore, name)
        assert isinstance(loop, base_events.BaseEventLoop)
    finally:
        loop.close()


@pytest.mark.asyncio
async def test_a_busy_loop_still_collects_io_completions(is_uring):
    # While callbacks keep the ready queue non-empty every iteration waits with timeout 0;
    # uringloop then skips io_uring_enter when the kernel reports nothing pending, and must
    # still see a receive that completes meanwhile.
    import socket
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    spins = 0
    try:
        receive = asyncio.ensure_future(loop.sock_recv(a, 100))
        before = loop.statistics() if is_uring else None
        for _ in range(10):
            await asyncio.sleep(0)
        if is_uring:
            # idle spinning with the receive in the kernel made no system call
            assert loop.statistics()["skipped_enters"] >= before["skipped_enters"] + 8
        sender = threading.Thread(target=b.send, args=(b"ping",))
        sender.start()
        sender.join()                      # the bytes are in the socket now
        while not receive.done() and spins < 1000:    # sleep(0): the loop never blocks
            await asyncio.sleep(0)
            spins += 1
        assert receive.done(), "a completion was left in the kernel while the loop spun"
        assert receive.result() == b"ping"
    finally:
        a.close()
        b.close()


# ---- run_forever ----

def test_run_forever_sets_up_and_restores_the_running_state(new_loop):
    loop = new_loop()
    seen = {}
    previous_hooks = sys.get_asyncgen_hooks()

    def inside():
        seen["running"] = loop.is_running()
        seen["current"] = asyncio.get_running_loop() is loop
        seen["thread"] = loop._thread_id == threading.get_ident()
        seen["hooks"] = sys.get_asyncgen_hooks().firstiter == loop._asyncgen_firstiter_hook
        with pytest.raises(RuntimeError):
            loop.run_forever()                  # already running
        loop.stop()

    loop.call_soon(inside)
    loop.run_forever()
    assert seen == {"running": True, "current": True, "thread": True, "hooks": True}
    assert not loop.is_running() and loop._thread_id is None and loop._stopping is False
    assert sys.get_asyncgen_hooks() == previous_hooks
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()
    loop.close()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.run_forever()


def test_run_forever_uses_a_run_once_replaced_on_the_instance(new_loop):
    # CPython's test_events.test_timeout_rounding counts iterations this way.
    loop = new_loop()
    original = loop._run_once
    count = 0

    def counting_run_once():
        nonlocal count
        count += 1
        original()

    loop._run_once = counting_run_once
    loop.call_soon(loop.call_soon, loop.stop)
    loop.run_forever()
    assert count == 2


def test_run_forever_propagates_exceptions_and_cleans_up(new_loop):
    loop = new_loop()

    def boom():
        raise SystemExit(3)

    loop.call_soon(boom)
    with pytest.raises(SystemExit):
        loop.run_forever()
    assert not loop.is_running()
    loop.call_soon(loop.stop)
    loop.run_forever()                         # usable again


class Interrupted(KeyboardInterrupt):
    pass


def test_a_signal_handler_runs_while_the_loop_waits(new_loop):
    # The stock loop runs Python bytecode between iterations, where the interpreter calls
    # signal handlers; a loop that waits in C must still let SIGINT's handler raise.
    import signal
    loop = new_loop()

    def handler(signum, frame):
        raise Interrupted

    main_thread_id = threading.main_thread().ident
    started = threading.Event()

    def main_thread_sleeps():
        with open(f"/proc/self/task/{threading.main_thread().native_id}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "S"

    def interrupt_main():
        started.wait()
        while not main_thread_sleeps():     # blocked in the loop's wait for I/O
            time.sleep(0.001)
        signal.pthread_kill(main_thread_id, signal.SIGINT)

    def start_interrupter():
        threading.Thread(target=interrupt_main).start()
        started.set()

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers belong to the main thread")
    previous = signal.signal(signal.SIGINT, handler)
    fallback = loop.call_later(30, loop.stop)
    try:
        loop.call_soon(start_interrupter)
        with pytest.raises(Interrupted):
            loop.run_forever()
        assert not fallback.cancelled()          # ended by the signal, not the fallback
        assert loop.time() < fallback.when()
    finally:
        signal.signal(signal.SIGINT, previous)
        fallback.cancel()


def test_io_callbacks_run_after_the_callbacks_already_ready(new_loop):
    """One iteration runs the callbacks that were ready when it began before the I/O callbacks
    of what its wait brought, and those before the timers that were due: a protocol never
    sees data ahead of a callback (a task's first step, here) that was ready before it came."""
    import socket
    loop = new_loop()
    order = []

    class Receiver(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr):
            order.append(('io', data))

    transport, _ = loop.run_until_complete(loop.create_datagram_endpoint(
        Receiver, local_addr=('127.0.0.1', 0)))
    addr = transport.get_extra_info('sockname')
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for round_ in range(3):
            # The datagram waits in the kernel before the loop runs again; a timer is due by
            # then too, and a task's first step is ready.
            loop.call_later(0, order.append, ('timer', round_))
            sender.sendto(b'%d' % round_, addr)
            time.sleep(0.05)

            async def first_step(round_=round_):
                order.append(('task', round_))

            task = loop.create_task(first_step())
            loop.call_soon(order.append, ('ready', round_))
            loop.run_until_complete(task)
            while len(order) < 4 * (round_ + 1):
                loop.run_until_complete(asyncio.sleep(0.01))
    transport.close()
    loop.run_until_complete(asyncio.sleep(0))
    for round_ in range(3):
        assert order[4 * round_:4 * round_ + 4] == [
            ('task', round_), ('ready', round_), ('io', b'%d' % round_), ('timer', round_)]
