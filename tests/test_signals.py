"""add_signal_handler / remove_signal_handler, on uringloop and on the stock loop."""

import asyncio
import faulthandler
import os
import signal
import socket
import subprocess
import sys
import threading

import pytest

from helpers import no_leaked_fds  # noqa: F401 (an autouse fixture)


@pytest.fixture(autouse=True)
def restore_signal_state():
    """The loops reset handlers to SIG_DFL (as asyncio does); put back what the process had."""
    saved = {sig: signal.getsignal(sig) for sig in signal.valid_signals()}
    fault = faulthandler.is_enabled()
    yield
    for sig, handler in saved.items():
        if handler is not None and signal.getsignal(sig) != handler:
            signal.signal(sig, handler)
    if fault and not faulthandler.is_enabled():
        faulthandler.enable(file=sys.__stderr__)
    signal.set_wakeup_fd(-1)


def kill_self(sig):
    os.kill(os.getpid(), sig)


@pytest.mark.asyncio
async def test_handler_runs_with_its_arguments_while_the_loop_sleeps():
    loop = asyncio.get_running_loop()
    fired = loop.create_future()
    loop.add_signal_handler(signal.SIGUSR1, fired.set_result, "usr1")
    # Sent from another thread while the loop waits in the kernel: the wait must end for it.
    threading.Timer(0.05, kill_self, (signal.SIGUSR1,)).start()
    assert await asyncio.wait_for(fired, 5) == "usr1"
    assert loop.remove_signal_handler(signal.SIGUSR1) is True


@pytest.mark.asyncio
async def test_signal_while_busy_is_handled_afterwards():
    loop = asyncio.get_running_loop()
    got = []
    loop.add_signal_handler(signal.SIGUSR2, got.append, 2)
    kill_self(signal.SIGUSR2)        # delivered now, handled from the loop
    assert got == []
    for _ in range(100):
        if got:
            break
        await asyncio.sleep(0.01)
    assert got == [2]
    loop.remove_signal_handler(signal.SIGUSR2)


@pytest.mark.asyncio
async def test_several_signals_and_replacement():
    loop = asyncio.get_running_loop()
    got = []
    loop.add_signal_handler(signal.SIGUSR1, got.append, "first")
    loop.add_signal_handler(signal.SIGUSR1, got.append, "second")     # replaces
    loop.add_signal_handler(signal.SIGUSR2, got.append, "other")
    kill_self(signal.SIGUSR1)
    kill_self(signal.SIGUSR2)
    for _ in range(200):
        if "second" in got and "other" in got:
            break
        await asyncio.sleep(0.005)
    assert "second" in got and "other" in got
    assert "first" not in got
    assert loop.remove_signal_handler(signal.SIGUSR1)
    assert loop.remove_signal_handler(signal.SIGUSR2)


@pytest.mark.asyncio
async def test_sigchld_handler_sees_child_exit():
    loop = asyncio.get_running_loop()
    fired = loop.create_future()
    loop.add_signal_handler(signal.SIGCHLD,
                            lambda: fired.done() or fired.set_result(True))
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    assert await asyncio.wait_for(proc.wait(), 10) == 0
    assert await asyncio.wait_for(fired, 5) is True
    assert loop.remove_signal_handler(signal.SIGCHLD)


@pytest.mark.asyncio
async def test_sigint_handler_replaces_keyboardinterrupt_and_removal_restores_it():
    loop = asyncio.get_running_loop()
    fired = loop.create_future()
    loop.add_signal_handler(signal.SIGINT, fired.set_result, "int")
    kill_self(signal.SIGINT)
    assert await asyncio.wait_for(fired, 5) == "int"
    assert loop.remove_signal_handler(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.asyncio
async def test_remove_restores_default_and_reports_whether_one_existed():
    loop = asyncio.get_running_loop()
    assert loop.remove_signal_handler(signal.SIGUSR1) is False
    loop.add_signal_handler(signal.SIGUSR1, lambda: None)
    assert signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, signal.SIG_IGN, None)
    assert loop.remove_signal_handler(signal.SIGUSR1) is True
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    assert loop.remove_signal_handler(signal.SIGUSR1) is False
    # The last handler gone, the wake-up descriptor is unset.
    assert signal.set_wakeup_fd(-1) == -1


@pytest.mark.asyncio
async def test_cancelled_handle_removes_itself_on_delivery():
    loop = asyncio.get_running_loop()
    got = []
    loop.add_signal_handler(signal.SIGUSR1, got.append, 1)
    loop._signal_handlers[signal.SIGUSR1].cancel()
    kill_self(signal.SIGUSR1)
    for _ in range(100):
        if signal.SIGUSR1 not in loop._signal_handlers:
            break
        await asyncio.sleep(0.01)
    assert signal.SIGUSR1 not in loop._signal_handlers
    assert got == []
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


@pytest.mark.asyncio
async def test_argument_errors_match_the_stock_loop():
    loop = asyncio.get_running_loop()
    for uncatchable in (signal.SIGKILL, signal.SIGSTOP):
        with pytest.raises(RuntimeError):
            loop.add_signal_handler(uncatchable, lambda: None)
        assert uncatchable not in loop._signal_handlers
    for invalid in (0, -1, 1000, signal.NSIG):
        with pytest.raises(ValueError):
            loop.add_signal_handler(invalid, lambda: None)
        with pytest.raises(ValueError):
            loop.remove_signal_handler(invalid)
    for not_int in ("SIGUSR1", 10.0, None):
        with pytest.raises(TypeError):
            loop.add_signal_handler(not_int, lambda: None)
        with pytest.raises(TypeError):
            loop.remove_signal_handler(not_int)

    async def coroutine_function():
        pass

    with pytest.raises(TypeError):
        loop.add_signal_handler(signal.SIGUSR1, coroutine_function)
    coro = coroutine_function()
    with pytest.raises(TypeError):
        loop.add_signal_handler(signal.SIGUSR1, coro)
    coro.close()
    assert loop._signal_handlers == {}


@pytest.mark.asyncio
async def test_every_signal_the_stock_loop_accepts():
    loop = asyncio.get_running_loop()
    accepted = []
    for sig in sorted(signal.valid_signals()):
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            with pytest.raises(RuntimeError):
                loop.add_signal_handler(sig, lambda: None)
            continue
        loop.add_signal_handler(sig, lambda: None)
        accepted.append(sig)
    assert signal.SIGCHLD in accepted and signal.SIGTERM in accepted
    assert signal.SIGRTMIN in accepted and signal.SIGRTMAX in accepted
    got = []
    loop.add_signal_handler(signal.SIGRTMIN, got.append, "rt")
    kill_self(signal.SIGRTMIN)
    for _ in range(100):
        if got:
            break
        await asyncio.sleep(0.01)
    assert got == ["rt"]
    for sig in accepted:
        assert loop.remove_signal_handler(sig) is True
    assert loop._signal_handlers == {}


def test_only_the_main_thread_may_add_handlers(new_loop):
    loop = new_loop()
    outcome = []

    def in_thread():
        try:
            loop.add_signal_handler(signal.SIGUSR1, lambda: None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    assert len(outcome) == 1 and isinstance(outcome[0], RuntimeError)
    assert loop._signal_handlers == {}
    loop.close()


def test_handlers_added_from_main_thread_for_a_loop_in_another_thread(new_loop):
    loop = new_loop()
    fired = threading.Event()
    started = threading.Event()
    may_close = threading.Event()

    async def main():
        started.set()
        while not fired.is_set():
            await asyncio.sleep(0.01)

    def run_then_close():
        # The loop is closed by the thread that ran it (signal handlers were removed first,
        # from the main thread, which alone may touch them).
        loop.run_until_complete(main())
        may_close.wait(10)
        loop.close()

    thread = threading.Thread(target=run_then_close)
    thread.start()
    started.wait(5)
    loop.add_signal_handler(signal.SIGUSR1, fired.set)
    kill_self(signal.SIGUSR1)
    assert fired.wait(10)
    assert loop.remove_signal_handler(signal.SIGUSR1)
    may_close.set()
    thread.join(10)
    assert not thread.is_alive()
    assert loop.is_closed()


def test_close_restores_handlers_and_wakeup_fd(new_loop):
    loop = new_loop()
    loop.add_signal_handler(signal.SIGUSR1, lambda: None)
    loop.add_signal_handler(signal.SIGTERM, lambda: None)
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert signal.set_wakeup_fd(-1) == -1
    with pytest.raises(RuntimeError):
        loop.add_signal_handler(signal.SIGUSR1, lambda: None)


def test_signal_to_a_child_process_group_is_unaffected(new_loop):
    # Handlers in the parent do not leak into children: their signal dispositions are the
    # defaults (Popen restores them), so SIGUSR1 kills the child.
    loop = new_loop()

    async def main():
        loop.add_signal_handler(signal.SIGUSR1, lambda: None)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "import sys, time\nprint('up', flush=True)\ntime.sleep(30)",
            stdout=subprocess.PIPE)
        assert await asyncio.wait_for(proc.stdout.readline(), 10) == b"up\n"
        proc.send_signal(signal.SIGUSR1)
        code = await asyncio.wait_for(proc.wait(), 10)
        loop.remove_signal_handler(signal.SIGUSR1)
        return code

    assert loop.run_until_complete(main()) == -signal.SIGUSR1
    loop.close()


def test_sigint_raised_by_a_callback_leaves_from_the_loop_not_the_next_callback(new_loop):
    """SIGINT raised by a callback (signal.raise_signal) while a task does socket I/O: the
    KeyboardInterrupt leaves run_until_complete() from the loop, and the task is still pending,
    as on the stock loop, whose own bytecode between two callbacks runs the signal's handler.
    (On Python 3.10, whose raise_signal() leaves that to the next bytecode, uringloop raised
    it inside the next callback -- the task, which ended with it.)"""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    loop = new_loop()
    caught_inside = []

    async def ping_pong():
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        try:
            for i in range(300):
                await loop.sock_sendall(a, b"p")
                await loop.sock_recv(b, 10)
                await asyncio.sleep(0)
                if i == 100:
                    loop.call_soon(signal.raise_signal, signal.SIGINT)
        except KeyboardInterrupt:
            caught_inside.append(True)
            raise
        finally:
            a.close()
            b.close()

    task = loop.create_task(ping_pong())
    with pytest.raises(KeyboardInterrupt):
        loop.run_until_complete(task)
    assert caught_inside == []
    assert not task.done()
    task.cancel()
    loop.run_until_complete(asyncio.gather(task, return_exceptions=True))


@pytest.mark.parametrize("registration", ["signal handler", "reader"])
def test_a_loop_run_in_a_thread_closes_from_another(new_loop, registration):
    """A loop run (and stopped) in a worker thread, with a signal handler or a reader, closed
    from the main thread: it closes, as the stock loop does.  (uringloop's close raised
    FileExistsError -- cancelling the signal reader's or the readiness poll's request entered
    the SINGLE_ISSUER ring from the wrong thread -- and left the loop half-closed.)"""
    a, b = socket.socketpair()
    loop = new_loop()
    try:
        if registration == "signal handler":
            loop.add_signal_handler(signal.SIGUSR1, lambda: None)

        def run():
            if registration == "reader":
                loop.add_reader(a, lambda: None)
            loop.call_soon(loop.stop)
            loop.run_forever()

        worker = threading.Thread(target=run)
        worker.start()
        worker.join()
        loop.close()
        assert loop.is_closed()
        assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    finally:
        a.close()
        b.close()


def test_closed_from_a_thread_other_than_main_with_a_signal_handler(new_loop):
    """close() called in a worker thread while a signal handler is installed: removing the
    handler raises ValueError there (signal.signal() is for the main thread), and the loop is
    closed all the same, as the stock loop's close() closes first and removes after."""
    loop = new_loop()
    loop.add_signal_handler(signal.SIGUSR1, lambda: None)
    outcome = {}

    def close_here():
        loop.run_until_complete(asyncio.sleep(0))
        try:
            loop.close()
        except ValueError as exc:
            outcome["raised"] = exc
        outcome["closed"] = loop.is_closed()

    try:
        worker = threading.Thread(target=close_here)
        worker.start()
        worker.join()
        assert isinstance(outcome.get("raised"), ValueError)
        assert outcome["closed"] is True
    finally:
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)


@pytest.mark.parametrize("ran", [False, True], ids=["never-run", "run"])
@pytest.mark.parametrize("kind", ["asyncio", "uringloop"])
def test_a_loop_dropped_with_a_signal_handler_warns_only_of_itself(kind, ran):
    """A loop with a signal handler, dropped without close(): one ResourceWarning, the unclosed
    loop's, and the loop's close from its finalizer reports nothing.  (On 3.11 uringloop's
    signal socketpair was finalized first: two "unclosed socket" warnings, and, for a loop that
    never ran, "receiving from the signal wake-up socket failed" -- EBADF -- from the close.)"""
    import gc
    import warnings
    from conftest import LOOP_FACTORIES
    loop = LOOP_FACTORIES[kind]()
    errors = []
    loop.set_exception_handler(lambda loop, context: errors.append(context))
    loop.add_signal_handler(signal.SIGUSR1, lambda: None)
    if ran:
        loop.run_until_complete(asyncio.sleep(0.01))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del loop
        gc.collect()
    assert [str(w.message).split(" ")[:2] for w in caught] == [["unclosed", "event"]]
    assert errors == []
