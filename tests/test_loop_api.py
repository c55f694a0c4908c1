"""The public face: Loop, new_event_loop, run, the policy, probe and the refusal diagnosis; and
the loop-level behaviour the core owns (wake-ups from threads, timers, closing, fork)."""

import asyncio
import errno
import gc
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import warnings
import weakref

import pytest

import uringloop

from conftest import LOOP_FACTORIES
from helpers import PACKAGE_PARENT, child_env, echo
from uringloop import _probe


# Child interpreters import the very uringloop this test imported (an in-place build or the
# installed package), whichever directory that is.
CHILD_ENV = child_env()


def run_python(code, timeout=60):
    # cwd: `python -c` puts the working directory first on sys.path, where a checkout's
    # uringloop/ (sources only, under tox) would shadow the package under test.
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env=CHILD_ENV, cwd=PACKAGE_PARENT)


def test_loop_is_an_asyncio_event_loop():
    loop = uringloop.new_event_loop()
    try:
        assert isinstance(loop, uringloop.Loop)
        assert isinstance(loop, asyncio.AbstractEventLoop)
    finally:
        loop.close()


def test_run_returns_the_result_on_a_uringloop():
    async def main():
        await asyncio.sleep(0)
        return type(asyncio.get_running_loop())

    assert uringloop.run(main()) is uringloop.Loop


def test_run_rejects_non_coroutines():
    with pytest.raises(ValueError):
        uringloop.run(lambda: None)


def test_run_refuses_an_unknown_keyword_on_every_version():
    """uringloop.run(main(), bogus=1) raises TypeError as asyncio.run()/Runner do (on 3.10 it
    was dropped silently)."""
    async def main():
        return 1

    coro = main()
    try:
        with pytest.raises(TypeError):
            uringloop.run(coro, bogus=1)
    finally:
        coro.close()


def test_run_takes_a_loop_factory_as_uvloop_run_does():
    made = []

    def factory():
        made.append(asyncio.new_event_loop())
        return made[-1]

    async def main():
        return asyncio.get_running_loop()

    assert uringloop.run(main(), loop_factory=factory) is made[0]
    assert made[0].is_closed()


def test_run_makes_its_loop_the_current_one_while_it_runs_as_asyncio_run_does():
    """asyncio.run(main) sets its loop as the current event loop while it runs and leaves none
    after; uringloop.run(main) does the same on every version.  (On 3.11+ it set none: the
    policy's get_event_loop() inside main() made a second, stock loop, and after the run
    asyncio.get_event_loop() returned it instead of raising.)  Run in a fresh interpreter:
    the policy's state is process-wide."""
    result = run_python("""
        import asyncio, warnings
        import uringloop
        warnings.simplefilter("ignore", DeprecationWarning)

        async def main():
            return asyncio.get_event_loop_policy().get_event_loop() is asyncio.get_running_loop()

        print(uringloop.run(main()))
        try:
            asyncio.get_event_loop_policy().get_event_loop()
        except RuntimeError:
            print("none after")
        # With a loop_factory, as asyncio.run(main, loop_factory=...) and uvloop.run(): the
        # current loop is left as it was.
        preset = asyncio.new_event_loop()
        asyncio.set_event_loop(preset)

        async def current_is_preset():
            return asyncio.get_event_loop_policy().get_event_loop() is preset

        inside = uringloop.run(current_is_preset(), loop_factory=uringloop.new_event_loop)
        try:
            after = asyncio.get_event_loop_policy().get_event_loop() is preset
        except RuntimeError:
            after = "cleared"
        print(inside, after)
    """)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split()
    if sys.version_info >= (3, 11):
        assert lines == ["True", "none", "after", "True", "True"], result.stdout
    else:
        # 3.10 has no loop_factory in asyncio.run(); uringloop.run's 3.10 path, like 3.10's
        # asyncio.run(), makes whatever loop it runs the current one.
        assert lines[:3] == ["True", "none", "after"], result.stdout


def test_run_of_a_non_coroutine_inside_a_running_loop_is_the_running_loop_error():
    async def outer():
        with pytest.raises(RuntimeError, match="cannot be called from a running event loop"):
            uringloop.run(lambda: None)

    uringloop.run(outer())


@pytest.mark.skipif(sys.version_info < (3, 12), reason="uvloop.install() warns from 3.12")
def test_install_is_deprecated_as_uvloop_install_is():
    old_policy = asyncio.get_event_loop_policy()
    try:
        with pytest.warns(DeprecationWarning, match="uringloop.run"):
            uringloop.install()
        assert isinstance(asyncio.get_event_loop_policy(), uringloop.EventLoopPolicy)
    finally:
        asyncio.set_event_loop_policy(old_policy)


@pytest.mark.skipif(sys.version_info < (3, 12), reason="loop_factory= is new in 3.12")
def test_asyncio_run_with_loop_factory():
    async def main():
        return type(asyncio.get_running_loop())

    assert asyncio.run(main(), loop_factory=uringloop.new_event_loop) is uringloop.Loop
    assert asyncio.run(main(), loop_factory=uringloop.Loop) is uringloop.Loop


def test_event_loop_policy_in_a_fresh_interpreter():
    result = run_python("""
        import asyncio, warnings
        warnings.simplefilter("ignore", DeprecationWarning)
        import uringloop
        uringloop.install()
        async def main():
            return type(asyncio.get_running_loop()).__name__
        print(asyncio.run(main()))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Loop"


def test_a_tcp_echo_loads_only_the_modules_it_uses():
    # The compiled modules for pipes, datagrams, children, signals, splice-based sendfile,
    # readiness callbacks, the C resolver and TLS are imported when a loop first needs them
    # (memory: a TCP server over numeric addresses never does); each then works as usual in the
    # same process.
    result = run_python("""
        import asyncio, os, signal, socket, sys
        import uringloop
        LAZY = ["uringloop._" + name
                for name in ("pipes", "datagram", "children", "signals", "sendfile",
                             "readiness", "resolver", "sslproto")]

        class Echo(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport = transport
            def data_received(self, data):
                self.transport.write(data)

        async def main():
            loop = asyncio.get_running_loop()
            server = await loop.create_server(Echo, "127.0.0.1", 0)
            reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            writer.close()
            server.close()
            await server.wait_closed()
            print(sorted(m for m in LAZY if m in sys.modules))
            got = loop.create_future()
            loop.add_signal_handler(signal.SIGUSR1, got.set_result, "signal")
            os.kill(os.getpid(), signal.SIGUSR1)
            print(await got)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", "print('child')", stdout=asyncio.subprocess.PIPE)
            print((await proc.communicate())[0].decode().strip())
            transport, _ = await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
            transport.close()
            print(sorted(m for m in LAZY if m in sys.modules))
            a, b = socket.socketpair()
            readable = loop.create_future()
            loop.add_reader(a, readable.set_result, "readable")
            b.send(b"x")
            print(await readable)
            assert loop.remove_reader(a)
            a.close()
            b.close()
            infos = await loop.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)
            print(infos == socket.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM))
            print(sorted(m for m in LAZY if m in sys.modules))

        uringloop.run(main())
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "[]", "signal", "child",
        "['uringloop._children', 'uringloop._datagram', 'uringloop._pipes', 'uringloop._signals']",
        "readable", "True",
        "['uringloop._children', 'uringloop._datagram', 'uringloop._pipes', "
        "'uringloop._readiness', 'uringloop._resolver', 'uringloop._signals']"]


def test_probe_reports_this_kernel():
    report = uringloop.probe()
    assert report.available, report.format()
    assert report.kernel == os.uname().release
    assert "RECV" in report.opcodes and "ASYNC_CANCEL" in report.opcodes
    # "the loop will use" names only what the loop consults or submits (not SEND_ZC, WAITID or
    # recv bundles, which the kernel has and the loop does not use).
    assert set(report.uses) == {"single_issuer_defer_taskrun", "coop_taskrun", "multishot_recv",
                                "provided_buffer_rings", "incremental_buffers", "splice",
                                "epoll_wait"}
    assert "io_uring: available" in report.format()


def test_each_loop_has_its_own_feature_set():
    # The kernel is asked once per process (_probe.feature_set keeps its answer), yet a loop's
    # feature set is its own: what one loop changes in it (the fallback tests narrow it) is
    # not what the next loop starts with.
    first = uringloop.new_event_loop()
    try:
        expected = dict(first._features)
        for name in first._features:
            first._features[name] = not first._features[name]
    finally:
        first.close()
    second = uringloop.new_event_loop()
    try:
        assert second._features == expected
        assert second._features == uringloop.probe().uses
    finally:
        second.close()


def test_python_m_uringloop_prints_the_report():
    result = subprocess.run([sys.executable, "-m", "uringloop"], capture_output=True, text=True,
                            timeout=60, env=CHILD_ENV, cwd=PACKAGE_PARENT)
    assert result.returncode == 0, result.stderr
    assert "io_uring: available" in result.stdout
    assert os.uname().release in result.stdout


@pytest.mark.parametrize("err, disabled, seccomp, expect, release, group", [
    (errno.EPERM, "2", 0, "io_uring_disabled=2", "6.8.0", "1234"),
    (errno.EPERM, "1", 0, "group 1234 (kernel.io_uring_group)", "6.8.0", "1234"),
    (errno.EPERM, "1", 0, "kernel.io_uring_group is -1: no group", "6.8.0", "-1"),
    (errno.EPERM, "0", 2, "seccomp", "6.8.0", "1234"),
    # In the sysctl's group already: the group is not what refuses (it named the group).
    (errno.EPERM, "1", 2, "seccomp", "6.8.0", str(os.getegid())),
    (errno.ENOSYS, None, 2, "seccomp", "6.8.0", "1234"),
    (errno.ENOSYS, None, 0, "no io_uring", "6.8.0", "1234"),
    # A container on a host whose kernel predates io_uring: the kernel, not the profile.
    (errno.ENOSYS, None, 2, "predates io_uring", "4.19.0", "1234"),
    (errno.EPERM, None, 2, "predates io_uring", "3.10.0-1160.el7.x86_64", "1234"),
    (errno.ENOMEM, "0", 0, "RLIMIT_MEMLOCK", "5.10.0", "1234"),
    (errno.ENOMEM, "0", 0, "memory cgroup", "6.8.0", "1234"),
])
def test_refusal_is_diagnosed(monkeypatch, err, disabled, seccomp, expect, release, group):
    def fake_read(path):
        if path.endswith("io_uring_disabled"):
            return disabled
        if path.endswith("io_uring_group"):
            return group
        if path == "/proc/self/status":
            return f"Name:\tpython\nSeccomp:\t{seccomp}\n"
        return None

    monkeypatch.setattr(_probe, "_read", fake_read)
    monkeypatch.setattr(_probe, "_kernel_release", lambda: release)
    exc = _probe.diagnose(err)
    assert isinstance(exc, uringloop.IOUringUnavailableError)
    assert isinstance(exc, OSError) and isinstance(exc, RuntimeError)
    assert exc.errno == err
    assert expect in exc.cause
    assert exc.fix and "Fix:" in str(exc)


def _refuse_ring(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr("uringloop.loop.Ring", refuse)
    monkeypatch.setattr(_probe, "_read",
                        lambda path: "Seccomp:\t2\n" if path == "/proc/self/status" else None)


def test_the_refusal_pickles_and_copies_with_its_cause_and_fix():
    """Raised in a ProcessPoolExecutor job or a multiprocessing child, it must cross back."""
    import copy
    import pickle

    exc = _probe.diagnose(errno.ENOSYS)
    for again in (pickle.loads(pickle.dumps(exc)), copy.copy(exc)):
        assert type(again) is uringloop.IOUringUnavailableError
        assert (again.errno, again.cause, again.fix, str(again)) == \
            (exc.errno, exc.cause, exc.fix, str(exc))


def test_a_kernel_older_than_5_19_is_refused_where_the_ring_sets_up(monkeypatch):
    """5.11-5.18 set a ring up; the loop would run until its close, whose CANCEL_ALL|ANY they
    refuse (every close waited out its drain and leaked the ring).  The loop is refused as the
    probe refuses it, and fallback=True gives the stock loop."""
    monkeypatch.setattr(_probe, "_kernel_release", lambda: "5.15.0-91-generic")
    with pytest.raises(uringloop.IOUringUnavailableError, match="5.19") as raised:
        uringloop.new_event_loop()
    assert raised.value.errno == errno.EINVAL
    report = uringloop.probe()
    assert not report.available and report.cause == raised.value.cause
    with pytest.warns(RuntimeWarning, match="stock asyncio"):
        loop = uringloop.new_event_loop(fallback=True)
    try:
        assert isinstance(loop, asyncio.SelectorEventLoop)
    finally:
        loop.close()


SECCOMP_CHILD = """
    import ctypes, errno, sys
    SETUP, ENTER, REGISTER = 425, 426, 427          # x86_64 system call numbers

    class Filter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                    ("k", ctypes.c_uint)]

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Filter))]

    def refuse(number, err):
        # A classic-BPF seccomp filter: on x86_64, system call `number` fails with `err`.
        ins = [Filter(0x20, 0, 0, 4), Filter(0x15, 0, 3, 0xC000003E), Filter(0x20, 0, 0, 0),
               Filter(0x15, 0, 1, number), Filter(0x06, 0, 0, 0x00050000 | err),
               Filter(0x06, 0, 0, 0x7FFF0000)]
        array = (Filter * len(ins))(*ins)
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(38, 1, 0, 0, 0) != 0:                    # PR_SET_NO_NEW_PRIVS
            sys.exit(77)
        if libc.prctl(22, 2, ctypes.byref(Program(len(ins), array)), 0, 0) != 0:
            sys.exit(77)                                        # no seccomp here: skip

    refuse(%s, errno.EPERM)
    import uringloop
    try:
        uringloop.new_event_loop()
    except uringloop.IOUringUnavailableError as exc:
        print("refused:", exc.cause)
    report = uringloop.probe()
    print("probe:", "available" if report.available else "unavailable")
"""


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86_64 system call numbers")
@pytest.mark.parametrize("call", ["ENTER", "REGISTER"])
def test_a_sandbox_refusing_enter_or_register_is_diagnosed_at_creation(call, monkeypatch):
    """A seccomp profile that allows io_uring_setup but not io_uring_enter (or _register): the
    loop's creation says so, with the cause -- not a bare PermissionError at its first
    iteration -- and the probe reports io_uring unavailable."""
    result = run_python(SECCOMP_CHILD % call)
    if result.returncode == 77:
        pytest.skip("seccomp filters cannot be installed here")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("refused: a seccomp filter"), result.stdout
    assert lines[1] == "probe: unavailable"


def test_refused_io_uring_raises_one_clear_exception(monkeypatch):
    _refuse_ring(monkeypatch)
    with pytest.raises(uringloop.IOUringUnavailableError, match="seccomp"):
        uringloop.new_event_loop()


def test_fallback_returns_the_stock_loop_with_one_warning(monkeypatch):
    _refuse_ring(monkeypatch)
    with pytest.warns(RuntimeWarning, match="stock asyncio") as record:
        loop = uringloop.new_event_loop(fallback=True)
    try:
        assert len(record) == 1
        assert isinstance(loop, asyncio.SelectorEventLoop)
    finally:
        loop.close()


def test_call_soon_threadsafe_wakes_a_waiting_loop(new_loop):
    loop = new_loop()
    woke = []

    def from_thread():
        time.sleep(0.1)
        loop.call_soon_threadsafe(woke.append, "woken")
        loop.call_soon_threadsafe(loop.stop)

    t = threading.Thread(target=from_thread)
    t.start()
    watchdog = threading.Timer(30, lambda: loop.call_soon_threadsafe(loop.stop))
    watchdog.start()
    loop.run_forever()          # nothing scheduled: only the wake-up can end this
    watchdog.cancel()
    t.join()
    assert woke == ["woken"]


def test_loop_created_in_one_thread_runs_in_another(new_loop):
    loop = new_loop()
    result = []

    def run():
        result.append(loop.run_until_complete(asyncio.sleep(0.01, result="ran")))

    t = threading.Thread(target=run)
    t.start()
    t.join(30)
    assert result == ["ran"]


def test_timers_fire_in_order(new_loop):
    loop = new_loop()
    fired = []
    for delay in (0.03, 0.01, 0.02):
        loop.call_later(delay, fired.append, delay)
    loop.call_later(0.05, loop.stop)
    loop.run_forever()
    assert fired == [0.01, 0.02, 0.03]


def test_exception_in_callback_reaches_the_handler_and_loop_goes_on(new_loop):
    loop = new_loop()
    seen = []
    loop.set_exception_handler(lambda lp, ctx: seen.append(ctx["exception"]))

    def boom():
        raise ZeroDivisionError

    loop.call_soon(boom)
    loop.run_until_complete(asyncio.sleep(0.01))
    assert len(seen) == 1 and isinstance(seen[0], ZeroDivisionError)


def test_run_in_executor_and_getaddrinfo(new_loop):
    loop = new_loop()
    assert loop.run_until_complete(loop.run_in_executor(None, sum, [1, 2, 3])) == 6
    infos = loop.run_until_complete(loop.getaddrinfo("localhost", 80))
    assert infos and all(len(info) == 5 for info in infos)
    loop.run_until_complete(loop.shutdown_default_executor())


def test_a_default_executor_of_another_kind_is_warned_of_at_the_callers_line(new_loop):
    """3.10 warns of one (DeprecationWarning) at the line that set it -- where the default
    filters show it, in __main__ (uringloop's warning named its own file, so they hid it);
    3.11 refuses it."""
    import concurrent.futures
    loop = new_loop()
    try:
        executor = concurrent.futures.ProcessPoolExecutor(max_workers=1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if sys.version_info >= (3, 11):
                with pytest.raises(TypeError, match="must be ThreadPoolExecutor"):
                    loop.set_default_executor(executor)
            else:
                loop.set_default_executor(executor)
        executor.shutdown()
        if sys.version_info < (3, 11):
            [warning] = caught
            assert warning.category is DeprecationWarning
            assert "not an instance of ThreadPoolExecutor" in str(warning.message)
            assert warning.filename == __file__
        else:
            assert caught == []
    finally:
        loop.close()


async def _sleep_briefly(loop):
    await asyncio.sleep(0.001)


async def _run_in_the_default_executor(loop):
    await loop.run_in_executor(None, sum, [1, 2])
    await loop.shutdown_default_executor()


async def _wake_from_a_thread(loop):
    woken = loop.create_future()
    waker = threading.Thread(target=loop.call_soon_threadsafe, args=(woken.set_result, 1))
    waker.start()
    await woken
    waker.join()        # (a thread still running holds its arguments: the loop)


async def _watch_a_reader(loop):
    a, b = socket.socketpair()
    with a, b:
        readable = loop.create_future()
        loop.add_reader(a.fileno(), readable.set_result, None)
        b.send(b"x")
        await readable
        loop.remove_reader(a.fileno())


async def _sock_calls_one_cancelled(loop):
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        b.setblocking(False)
        await loop.sock_sendall(a, b"ping")
        assert await loop.sock_recv(b, 10) == b"ping"
        receiving = asyncio.ensure_future(loop.sock_recv(b, 10))
        await asyncio.sleep(0)
        receiving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await receiving


async def _look_up_localhost(loop):
    await loop.getaddrinfo("localhost", 80)
    await loop.shutdown_default_executor()   # (the stock loop's lookup ran in it)


async def _handle_a_signal(loop):
    import signal
    delivered = loop.create_future()
    loop.add_signal_handler(signal.SIGUSR1, delivered.set_result, None)
    os.kill(os.getpid(), signal.SIGUSR1)
    await delivered
    loop.remove_signal_handler(signal.SIGUSR1)


async def _serve_a_stream(loop):
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
    writer.write(b"ping")
    writer.write_eof()
    assert await reader.read() == b"ping"
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()


async def _send_a_datagram(loop):
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                       local_addr=("127.0.0.1", 0))
    transport.sendto(b"x", transport.get_extra_info("sockname"))
    await asyncio.sleep(0.01)
    transport.close()
    await asyncio.sleep(0)


async def _run_a_child(loop):
    import subprocess
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "print('hi')", stdout=subprocess.PIPE)
    assert await child.communicate() == (b"hi\n", None)
    await asyncio.sleep(0.01)     # (the transport's connection_lost() comes after the exit)
    for thread in threading.enumerate():
        if thread.name.startswith("waitpid-"):
            thread.join(10)   # (the stock watcher's thread before 3.12 holds the loop till done)


async def _sendfile_a_file(loop):
    import tempfile
    a, b = socket.socketpair()
    with a, b, tempfile.TemporaryFile() as file:
        file.write(b"x" * 100_000)
        file.seek(0)
        a.setblocking(False)
        b.setblocking(False)
        sending = asyncio.ensure_future(loop.sock_sendfile(a, file))
        received = 0
        while received < 100_000:
            received += len(await loop.sock_recv(b, 65536))
        assert await sending == 100_000


@pytest.mark.parametrize("loop_name", list(LOOP_FACTORIES))
@pytest.mark.parametrize("work", [None, _sleep_briefly, _run_in_the_default_executor,
                                  _wake_from_a_thread, _watch_a_reader,
                                  _sock_calls_one_cancelled, _look_up_localhost, _handle_a_signal,
                                  _serve_a_stream, _send_a_datagram, _run_a_child,
                                  _sendfile_a_file],
                         ids=lambda work: "nothing" if work is None else work.__name__[1:])
def test_a_closed_loop_is_freed_without_the_cyclic_collector(loop_name, work):
    """A closed loop nobody refers to is freed at once, by its reference count, as the stock
    loop (and uvloop) are -- not left in reference cycles for the cyclic collector (tornado's
    test_run_on_executor counts such garbage).  uringloop's was: the Proactor, its wake-up
    read, the resolver, the readiness registry, the signal reader, a kept {'loop': loop}, a
    stopped server's accept poll, closed datagram and pipe transports, and a finished
    sendfile's splicer (through its futures) all referred back to it.  (Closed transports may stay cyclic garbage, on the stock loop too: not the loop.)"""
    gc.collect()
    gc.disable()    # (a collection during the work would free what a closed transport held)
    try:
        loop = LOOP_FACTORIES[loop_name]()
        if work is not None:
            loop.run_until_complete(work(loop))
        loop.close()
        freed = weakref.ref(loop)
        del loop
        assert freed() is None
    finally:
        gc.enable()


def test_closed_loop_refuses_work(new_loop):
    loop = new_loop()
    loop.close()
    loop.close()                  # idempotent
    coro = asyncio.sleep(0)
    with pytest.raises(RuntimeError):
        loop.run_until_complete(coro)
    coro.close()
    with pytest.raises(RuntimeError):
        loop.call_soon(print)


def test_closing_the_loop_lets_go_of_connections_the_program_never_closed(new_loop):
    # The stock loop refers to its transports weakly: once it is closed, a connection nobody
    # closed or refers to is collected (its socket closed, with a ResourceWarning), even while
    # the closed loop object itself lives on -- in an asyncio.Runner, a module-level `loop`.
    def open_fds():
        return set(os.listdir("/proc/self/fd"))

    loop = new_loop()
    before = open_fds()

    async def leave_connections_open():
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        for _ in range(5):
            await loop.create_connection(asyncio.Protocol, *server.sockets[0].getsockname())
        await asyncio.sleep(0.05)      # the server side of each connection is made too
        server.close()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        loop.run_until_complete(leave_connections_open())
        assert len(open_fds() - before) >= 10
        loop.close()
        gc.collect()
    assert open_fds() - before == set()


@pytest.mark.parametrize("factory", list(LOOP_FACTORIES.values()), ids=list(LOOP_FACTORIES))
def test_a_loop_dropped_without_close_is_collected_and_closed(factory):
    # BaseEventLoop.__del__ closes a forgotten loop (with a ResourceWarning).  uringloop's loops
    # were never collected: the kernel's requests in flight (the wake-up read, a reading
    # transport's receive, a waiting sock_recv) were references nobody held, so the ring, its
    # descriptors and every connection stayed for the life of the process.  Later, the same
    # with a timer or a callback still queued (a background task asleep): queued handles were
    # kept off the cyclic GC's lists, which hid their references to the loop.
    def open_fds():
        return set(os.listdir("/proc/self/fd"))

    def use_and_drop():
        loop = factory()
        a, b = socket.socketpair()
        b.setblocking(False)

        async def main():
            server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
            await loop.create_connection(asyncio.Protocol, *server.sockets[0].getsockname())
            loop.create_task(loop.sock_recv(b, 10))       # still waiting when dropped
            loop.create_task(asyncio.sleep(3600))         # a timer still queued
            await asyncio.sleep(0.05)
            loop.call_soon(print)                         # a callback still queued

        loop.run_until_complete(main())
        a.close()
        return weakref.ref(loop)

    gc.collect()
    before = open_fds()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        dropped = use_and_drop()
        gc.collect()
    assert dropped() is None
    gc.collect()
    assert open_fds() - before == set()
    assert any("unclosed event loop" in str(w.message) for w in caught)


def test_a_fork_child_of_a_program_that_installed_the_policy_gets_a_new_loop():
    """install(), a current loop made by asyncio.get_event_loop(), then fork: in the child,
    asyncio.get_event_loop() gives a new loop that runs -- the parent's cannot run there.  From
    3.12 asyncio itself resets the current loop in a fork child; before, the child was handed
    the parent's loop, and the first run_until_complete() raised RuntimeError."""
    result = run_python("""
        import asyncio, os, warnings
        import uringloop
        warnings.simplefilter("ignore", DeprecationWarning)
        uringloop.install()
        parent_loop = asyncio.get_event_loop()
        parent_loop.run_until_complete(asyncio.sleep(0))
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                loop = asyncio.get_event_loop()
                if loop is parent_loop or not isinstance(loop, uringloop.Loop):
                    code = 10
                else:
                    loop.run_until_complete(asyncio.sleep(0.01))
                    loop.close()
            except BaseException:
                code = 11
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        parent_loop.run_until_complete(asyncio.sleep(0))
        parent_loop.close()
        print("child", os.waitstatus_to_exitcode(status))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "child 0", result.stdout + result.stderr


def test_fork_child_refuses_the_parents_loop_and_can_make_a_new_one():
    # The parent has requests in the kernel -- a receive, a readiness callback's poll, a
    # server's poll -- which closing its loop in the child must neither cancel nor trip over.
    result = run_python("""
        import asyncio, os, socket, sys
        import uringloop
        loop = uringloop.new_event_loop()
        a, b = socket.socketpair()
        b.setblocking(False)
        receiving = loop.create_task(loop.sock_recv(b, 10))
        c, d = socket.socketpair()
        loop.add_reader(d, lambda: None)
        server = loop.run_until_complete(loop.create_server(asyncio.Protocol, '127.0.0.1', 0))
        loop.run_until_complete(asyncio.sleep(0))
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                loop.run_until_complete(asyncio.sleep(0))
                code = 10                       # must not work
            except RuntimeError as exc:
                if "fork" not in str(exc):
                    code = 11
            try:
                loop.close()                     # leaves the parent's ring alone
            except BaseException:
                code = 13
            if not loop.is_closed():
                code = 14
            async def echo():
                a, b = socket.socketpair()
                a.setblocking(False); b.setblocking(False)
                lp = asyncio.get_running_loop()
                await lp.sock_sendall(a, b"child")
                return await lp.sock_recv(b, 10)
            if uringloop.run(echo()) != b"child":
                code = 12
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        # the parent's loop still works after the child is gone, its receive still waiting
        loop.run_until_complete(asyncio.sleep(0.01))
        a.send(b"parent")
        assert loop.run_until_complete(asyncio.wait_for(receiving, 10)) == b"parent"
        loop.remove_reader(d)
        server.close()
        loop.close()
        print("child", os.waitstatus_to_exitcode(status))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "child 0", result.stdout + result.stderr


@pytest.mark.parametrize("wake_up", [False, True], ids=["at-once", "after-a-thread"])
@pytest.mark.parametrize("loop_name", list(LOOP_FACTORIES))
def test_a_fork_child_leaving_the_running_loop_with_sys_exit_exits_with_its_code(loop_name,
                                                                                  wake_up):
    """A coroutine forks and the child leaves with sys.exit(3): asyncio.run()'s shutdown then
    runs the loop again in the child (cancelling tasks, closing async generators and the
    executor), and the child must exit with 3 and print nothing, as on the stock loop.  On
    uringloop it exited with 1 and a RuntimeError (the inherited loop refused to iterate).
    `after-a-thread`: the child first awaits run_in_executor(), so its loop must be woken by a
    thread of its own (and its shutdown joins that executor); on uringloop new I/O is refused
    there all the same (the ring is the parent's).  On uringloop, the parent's loop works on:
    the receive it had in flight at the fork completes, its reader is called (the child removed
    it), and a thread wakes it.  (The stock loop's child shares the parent's epoll instance and
    self-pipe, and unregisters them from it when its loop closes: its parent is not checked.)"""
    result = run_python(f"""
        import asyncio, os, socket, sys
        import uringloop
        uring = {loop_name == "uringloop"!r}
        factory = uringloop.new_event_loop if uring else asyncio.SelectorEventLoop

        async def main():
            loop = asyncio.get_running_loop()
            a, b = socket.socketpair()
            b.setblocking(False)
            receiving = asyncio.ensure_future(loop.sock_recv(b, 10)) if uring else None
            r, w = os.pipe()
            readable = loop.create_future()
            loop.add_reader(r, lambda: readable.done() or readable.set_result(os.read(r, 10)))
            await asyncio.sleep(0)
            pid = os.fork()
            if pid == 0:
                if {wake_up!r}:
                    await loop.run_in_executor(None, sum, [1, 2])
                    if uring:
                        # A reader's clean-up leaves the parent's registration alone (the epoll
                        # instance is shared), and new I/O is refused, with the reason.
                        loop.remove_reader(r)
                        c, d = socket.socketpair()
                        c.setblocking(False)
                        try:
                            await loop.sock_sendall(c, b"x")
                            os._exit(8)
                        except RuntimeError as exc:
                            if "fork" not in str(exc):
                                os._exit(9)
                sys.exit(3)
            _, status = os.waitpid(pid, 0)
            print("child", os.waitstatus_to_exitcode(status), flush=True)
            if uring:
                a.send(b"parent")
                os.write(w, b"pipe")
                print(await asyncio.wait_for(receiving, 10),
                      await asyncio.wait_for(readable, 10),
                      await loop.run_in_executor(None, sum, [1, 2]), flush=True)
            loop.remove_reader(r)
            for f in (a, b, r, w):
                os.close(f) if isinstance(f, int) else f.close()

        uringloop.run(main(), loop_factory=factory)
    """)
    expected = "child 3\nb'parent' b'pipe' 3" if loop_name == "uringloop" else "child 3"
    assert (result.returncode, result.stdout.strip(), result.stderr) == (0, expected, "")


def test_a_fork_child_leaving_from_a_callback_leaves_the_parents_rings_alone():
    """A protocol callback forks and the child exits with sys.exit() -- which unwinds through
    the completion handling the child inherited.  The completion queue is memory shared with
    the parent: the child must not move its head (the parent's loop then dispatched stale
    completions forever), and the parent answers every connection."""
    result = run_python("""
        import asyncio, os, socket, sys, threading, time
        import uringloop
        me = os.getpid()
        forked = []

        class Echo(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport = transport
            def data_received(self, data):
                if data == b"fork" and not forked:
                    forked.append(True)
                    pid = os.fork()
                    if pid == 0:
                        sys.exit(0)
                    os.waitpid(pid, 0)
                self.transport.write(data)

        async def main():
            loop = asyncio.get_running_loop()
            server = await loop.create_server(Echo, "127.0.0.1", 0)
            clients = [socket.create_connection(server.sockets[0].getsockname())
                       for _ in range(4)]
            await asyncio.sleep(0.1)
            for i, client in enumerate(clients):
                client.sendall(b"fork" if i == 0 else b"msg%d" % i)
            for client in clients:
                client.settimeout(10)
            echoed = await loop.run_in_executor(None, lambda: [c.recv(100) for c in clients])
            for client in clients:
                client.close()
            server.close()
            return echoed

        def watchdog():
            time.sleep(20)
            if os.getpid() == me:
                print("hung", flush=True)
                os._exit(1)

        threading.Thread(target=watchdog, daemon=True).start()
        loop = uringloop.new_event_loop()
        print(loop.run_until_complete(main()))
        loop.close()
    """)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "[b'fork', b'msg1', b'msg2', b'msg3']", result.stdout


def test_statistics_count_io_uring_enters():
    async def main():
        loop = asyncio.get_running_loop()
        import socket
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        with a, b:
            for _ in range(10):
                await loop.sock_sendall(a, b"x")
                await loop.sock_recv(b, 1)
        return loop.statistics()

    stats = uringloop.run(main())
    assert stats["enters"] > 0 and stats["completions"] >= 20


async def _socketpair_round_trips(count=3):
    import socket
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    with a, b:
        for i in range(count):
            await loop.sock_sendall(a, b"%d" % i)
            assert await loop.sock_recv(b, 10) == b"%d" % i
    return loop._proactor.ring.registered_index


def test_ring_fd_is_registered_while_used_and_given_back_at_close():
    # A thread has 16 slots for registered rings: twenty loops one after the other each get one
    # only if close() gave the previous one back.
    indexes, after_close = [], []
    for _ in range(20):
        loop = uringloop.new_event_loop()
        try:
            single_issuer = loop._features["single_issuer_defer_taskrun"]
            indexes.append(loop.run_until_complete(_socketpair_round_trips()))
        finally:
            loop.close()
        after_close.append(loop._proactor.ring.registered_index)
    if not single_issuer:
        # Only a SINGLE_ISSUER ring registers (it alone is entered from one thread only).
        assert indexes == [-1] * 20
    else:
        assert all(0 <= i < 16 for i in indexes), indexes
    assert after_close == [-1] * 20


def test_loops_in_two_threads_each_enter_their_own_registered_ring():
    # Both threads' first registered ring sits in slot 0 of that thread's own table: each loop
    # must reach its own ring through it, however the two interleave.
    results, errors = {}, []
    barrier = threading.Barrier(2)

    def run(name):
        try:
            barrier.wait(10)
            results[name] = uringloop.run(_socketpair_round_trips(2000))
        except BaseException as exc:        # reported below, in the test's own thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert sorted(results) == ["a", "b"]


def test_a_loop_run_in_a_finished_thread_closes_from_another():
    loop = uringloop.new_event_loop()
    seen = []
    t = threading.Thread(target=lambda: seen.append(
        loop.run_until_complete(_socketpair_round_trips())))
    t.start()
    t.join(30)
    assert len(seen) == 1
    loop.close()                # the slot was the finished thread's: nothing to give back here
    assert loop.is_closed() and loop._proactor.ring.registered_index == -1


def test_a_second_thread_gets_a_clear_error_not_its_own_ring():
    # The loop's ring was registered in the first thread's table of rings, which the kernel
    # drops when that thread ends.  The second thread (glibc may well give it the first one's
    # pthread_t) has a ring of its own in the same slot of its table: entering "our" slot from
    # there would reach that other ring.  It must get SINGLE_ISSUER's refusal instead.
    loop = uringloop.new_event_loop()
    try:
        if not loop._features["single_issuer_defer_taskrun"]:
            pytest.skip("needs SINGLE_ISSUER rings (Linux 6.1)")
        first = threading.Thread(target=lambda: loop.run_until_complete(
            _socketpair_round_trips()))
        first.start()
        first.join(30)
        outcome = []

        def second():
            own = uringloop.new_event_loop()
            try:
                outcome.append(own.run_until_complete(_socketpair_round_trips()))
                fut = loop.create_future()
                loop.call_later(0.01, fut.set_result, "ran")
                try:
                    outcome.append(loop.run_until_complete(fut))
                except OSError as exc:
                    outcome.append(exc)
            finally:
                own.close()

        t = threading.Thread(target=second)
        t.start()
        t.join(30)
        assert len(outcome) == 2 and outcome[0] >= 0, outcome
        err = outcome[1]
        assert isinstance(err, OSError) and err.errno == errno.EEXIST, outcome
        assert "thread that first ran the loop" in str(err)
    finally:
        loop.close()


def test_a_refused_run_in_another_thread_leaves_the_loop_whole_in_its_own():
    """The pattern aiosmtpd's UnthreadedController tests use: a server started by running the
    loop in the main thread, then the loop run in another thread.  The SINGLE_ISSUER ring
    refuses the second thread (the difference the README lists); the refusal must cost
    nothing: back in its own thread the loop still serves the server it had (its request on
    the listening socket still in flight), closes it, and the port is free after close()."""
    loop = uringloop.new_event_loop()
    try:
        if not loop._features["single_issuer_defer_taskrun"]:
            pytest.skip("needs SINGLE_ISSUER rings (Linux 6.1)")

        class Greeter(asyncio.Protocol):
            def connection_made(self, transport):
                transport.write(b"220 ready\r\n")
                transport.close()

        server = loop.run_until_complete(loop.create_server(Greeter, "127.0.0.1", 0))
        port = server.sockets[0].getsockname()[1]
        outcome = []

        def elsewhere():
            try:
                outcome.append(loop.run_until_complete(asyncio.sleep(0.01, "ran")))
            except OSError as exc:
                outcome.append(exc)

        t = threading.Thread(target=elsewhere)
        t.start()
        t.join(30)
        assert len(outcome) == 1 and isinstance(outcome[0], OSError), outcome
        assert outcome[0].errno == errno.EEXIST
        assert not loop.is_running()

        async def greeting():
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            line = await reader.readline()
            writer.close()
            await writer.wait_closed()
            return line

        assert loop.run_until_complete(asyncio.wait_for(greeting(), 10)) == b"220 ready\r\n"
        server.close()
        loop.run_until_complete(server.wait_closed())
    finally:
        loop.close()
    with socket.socket() as probe:
        # (SO_REUSEADDR: the served connection's end may be in TIME_WAIT; a listener is not.)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))
        probe.listen()


def test_run_inside_a_running_loop_is_refused_as_asyncio_run_refuses_it():
    """uringloop.run() from a running loop: asyncio.run()'s RuntimeError, before any loop is
    made.  (On 3.11 uringloop made a second loop and failed in it, with another message and a
    'never awaited' warning.)"""
    async def outer():
        inner = asyncio.sleep(0)
        try:
            with pytest.raises(RuntimeError,
                               match=r"cannot be called from a running event loop"):
                uringloop.run(inner)
        finally:
            inner.close()

    uringloop.run(outer())
