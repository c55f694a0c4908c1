"""asyncio.create_subprocess_exec/_shell on uringloop and on the stock loop."""

import asyncio
import hashlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import uringloop

from helpers import no_leaked_fds  # noqa: F401 (an autouse fixture)

PY = sys.executable


def python(code):
    return (PY, "-c", code)


@pytest.mark.asyncio
async def test_communicate_all_three_pipes_and_exit_status():
    proc = await asyncio.create_subprocess_exec(
        *python("import sys\n"
                "data = sys.stdin.buffer.read()\n"
                "sys.stdout.buffer.write(data.upper())\n"
                "sys.stderr.write('to stderr')\n"
                "sys.exit(3)"),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(b"hello child"), 10)
    assert out == b"HELLO CHILD"
    assert err == b"to stderr"
    assert proc.returncode == 3
    assert await proc.wait() == 3


@pytest.mark.asyncio
async def test_shell_with_stderr_merged_into_stdout():
    proc = await asyncio.create_subprocess_shell(
        "echo out; echo err >&2; exit 0",
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, err = await asyncio.wait_for(proc.communicate(), 10)
    assert err is None
    assert sorted(out.split()) == [b"err", b"out"]
    assert proc.returncode == 0


@pytest.mark.asyncio
async def test_large_output_arrives_complete():
    size = 3 * 1024 * 1024 + 5
    proc = await asyncio.create_subprocess_exec(
        *python(f"import sys; sys.stdout.buffer.write(bytes(range(256)) * ({size} // 256)"
                f" + b'x' * ({size} % 256))"),
        stdout=subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    assert len(out) == size
    assert out[:256] == bytes(range(256))
    assert proc.returncode == 0


@pytest.mark.asyncio
async def test_interactive_line_protocol_through_stdin_and_stdout():
    proc = await asyncio.create_subprocess_exec(
        *python("import sys\n"
                "for line in sys.stdin:\n"
                "    print(line.strip()[::-1], flush=True)"),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    for word in (b"alpha", b"beta", b"gamma"):
        proc.stdin.write(word + b"\n")
        await proc.stdin.drain()
        assert await asyncio.wait_for(proc.stdout.readline(), 10) == word[::-1] + b"\n"
    proc.stdin.close()
    await proc.stdin.wait_closed()
    assert await asyncio.wait_for(proc.wait(), 10) == 0
    assert await proc.stdout.read() == b""


@pytest.mark.asyncio
async def test_large_stdin_with_drain():
    payload = os.urandom(2 * 1024 * 1024)
    proc = await asyncio.create_subprocess_exec(
        *python("import sys, hashlib\n"
                "print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())"),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    for i in range(0, len(payload), 256 * 1024):
        proc.stdin.write(payload[i:i + 256 * 1024])
        await proc.stdin.drain()
    proc.stdin.close()
    out = await asyncio.wait_for(proc.stdout.read(), 20)
    assert out.strip().decode() == hashlib.sha256(payload).hexdigest()
    assert await proc.wait() == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("method, signum", [("terminate", signal.SIGTERM),
                                            ("kill", signal.SIGKILL),
                                            ("send_signal", signal.SIGUSR1)])
async def test_signalled_child_reports_minus_signal(method, signum):
    proc = await asyncio.create_subprocess_exec(
        *python("import sys, time\nprint('ready', flush=True)\ntime.sleep(30)"),
        stdout=subprocess.PIPE)
    assert await asyncio.wait_for(proc.stdout.readline(), 10) == b"ready\n"
    if method == "send_signal":
        proc.send_signal(signum)
    else:
        getattr(proc, method)()
    assert await asyncio.wait_for(proc.wait(), 10) == -signum
    assert proc.returncode == -signum


@pytest.mark.asyncio
async def test_wait_without_pipes_and_many_children_at_once():
    procs = [await asyncio.create_subprocess_exec(*python(f"import sys; sys.exit({i})"))
             for i in range(8)]
    codes = await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), 20)
    assert codes == list(range(8))


@pytest.mark.asyncio
async def test_pass_fds_cwd_env_and_new_session(tmp_path):
    r, w = os.pipe()
    try:
        proc = await asyncio.create_subprocess_exec(
            *python(f"import os\n"
                    f"os.write({w}, (os.getcwd() + '|' + os.environ['MARK'] + '|'"
                    f" + str(os.getsid(0) == os.getpid())).encode())"),
            pass_fds=(w,), cwd=str(tmp_path), env={**os.environ, "MARK": "marked"},
            start_new_session=True)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        os.close(w)
        w = -1
        assert os.read(r, 1000).decode() == f"{tmp_path}|marked|True"
    finally:
        os.close(r)
        if w != -1:
            os.close(w)


@pytest.mark.asyncio
async def test_missing_program_raises_and_leaks_nothing():
    with pytest.raises(FileNotFoundError):
        await asyncio.create_subprocess_exec("/nonexistent/program", stdout=subprocess.PIPE)
    with pytest.raises(ValueError):
        await asyncio.create_subprocess_exec(PY, "-c", "pass", universal_newlines=True)


@pytest.mark.asyncio
async def test_closing_the_transport_kills_a_running_child():
    loop = asyncio.get_running_loop()
    exited = loop.create_future()

    class Proto(asyncio.SubprocessProtocol):
        def process_exited(self):
            exited.set_result(True)

    transport, _ = await loop.subprocess_exec(Proto, *python("import time; time.sleep(30)"),
                                              stdin=None, stdout=None, stderr=None)
    assert transport.get_returncode() is None
    assert isinstance(transport.get_pid(), int)
    transport.close()
    await asyncio.wait_for(exited, 10)
    assert transport.get_returncode() == -signal.SIGKILL


@pytest.mark.asyncio
async def test_status_survives_popen_reaping_first():
    # Popen.poll() (called by the transport's close() and, before 3.13, send_signal()) may reap
    # the child before the loop does; the exit status must still be the real one.  The stock
    # watchers report 255 in that case, so only uringloop's result is asserted exactly.
    loop = asyncio.get_running_loop()
    proc = await asyncio.create_subprocess_exec(*python("import sys; sys.exit(7)"))
    popen = proc._transport.get_extra_info("subprocess")
    while popen.poll() is None:      # reaps it as soon as it has exited
        await asyncio.sleep(0.01)
    code = await asyncio.wait_for(proc.wait(), 10)
    if isinstance(loop, uringloop.Loop):
        assert code == 7
    else:
        assert code in (7, 255)


@pytest.mark.asyncio
async def test_a_child_reaped_elsewhere_is_reported_in_the_default_watchers_words(caplog):
    """A child the program reaps itself (os.waitpid) before the loop can: returncode 255 and
    the warning of the stock loop's default watcher -- from 3.12 the pidfd watcher's
    "exit status already read", before the threaded watcher's "Unknown child process".
    (uringloop gave the threaded watcher's words on every version.)"""
    loop = asyncio.get_running_loop()
    if not isinstance(loop, uringloop.Loop) and sys.version_info < (3, 12):
        pytest.skip("the stock loop's watcher thread may reap the child before os.waitpid()")
    proc = await asyncio.create_subprocess_exec(*python("import time; time.sleep(0.1)"))
    os.waitpid(proc.pid, 0)     # blocks the loop's thread until the child has exited
    with caplog.at_level("WARNING", logger="asyncio"):
        assert await asyncio.wait_for(proc.wait(), 10) == 255
    if sys.version_info >= (3, 12):
        expected = (f"child process pid {proc.pid} exit status already read:  "
                    "will report returncode 255")
    else:
        expected = f"Unknown child process pid {proc.pid}, will report returncode 255"
    assert expected in [r.getMessage() for r in caplog.records]


@pytest.mark.asyncio
async def test_process_exited_comes_after_the_pipes_the_exit_closed():
    """A child exiting with all three pipes open: the SubprocessProtocol hears of stdout's and
    stderr's end, then stdin's, then process_exited(), as on the stock loop from 3.12 (its
    pidfd watcher).  uringloop called process_exited() before stdin's pipe_connection_lost()
    in most runs: the exit went through one pass of the ready queue fewer than the write pipe's
    hang-up.  (Before 3.12 the stock loop's watcher thread races the pipes: not compared.)"""
    loop = asyncio.get_running_loop()
    if not isinstance(loop, uringloop.Loop) and sys.version_info < (3, 12):
        pytest.skip("the stock loop's watcher thread races the pipes before 3.12")

    class Recorder(asyncio.SubprocessProtocol):
        def __init__(self):
            self.events = []
            self.done = loop.create_future()

        def pipe_connection_lost(self, fd, exc):
            self.events.append(f"lost {fd}")

        def process_exited(self):
            self.events.append("exited")

        def connection_lost(self, exc):
            self.done.set_result(None)

    orders = set()
    for _ in range(10):
        transport, protocol = await loop.subprocess_exec(
            Recorder, *python("import sys; sys.exit(3)"),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        await asyncio.wait_for(protocol.done, 10)
        transport.close()
        assert sorted(protocol.events[:2]) == ["lost 1", "lost 2"]
        orders.add(tuple(protocol.events[2:]))
    assert orders == {("lost 0", "exited")}


@pytest.mark.asyncio
async def test_debug_mode_logs_the_exit_as_the_default_watcher_does(caplog):
    """In debug mode the stock loop's default watcher before 3.12, the threaded one, logs each
    child's exit as it reaps it; the pidfd watcher (3.12+) says nothing.  (uringloop said
    nothing on any version.)"""
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    try:
        with caplog.at_level("DEBUG", logger="asyncio"):
            proc = await asyncio.create_subprocess_exec(*python("import sys; sys.exit(3)"))
            assert await asyncio.wait_for(proc.wait(), 10) == 3
    finally:
        loop.set_debug(False)
    logged = f"process {proc.pid} exited with returncode 3" in caplog.messages
    assert logged == (sys.version_info < (3, 12))


@pytest.mark.asyncio
async def test_children_are_reaped_without_helper_threads():
    loop = asyncio.get_running_loop()
    threads_before = threading.active_count()
    proc = await asyncio.create_subprocess_exec(*python("import time; time.sleep(0.2)"))
    during = threading.active_count()
    assert await asyncio.wait_for(proc.wait(), 10) == 0
    if isinstance(loop, uringloop.Loop):
        assert during == threads_before
        assert len(loop._ul_children) == 0


def test_loop_close_with_running_child_stops_watching(new_loop):
    loop = new_loop()

    async def start():
        return await asyncio.create_subprocess_exec(
            *python("import sys; sys.stdin.read()"), stdin=subprocess.PIPE)

    proc = loop.run_until_complete(start())
    popen = proc._transport.get_extra_info("subprocess")
    proc._transport.close()          # kills the child and closes our pipe ends
    loop.run_until_complete(asyncio.sleep(0))
    if not isinstance(loop, uringloop.Loop):
        # The stock PidfdChildWatcher (3.12+) leaks its pidfd when the loop closes first.
        loop.run_until_complete(proc.wait())
    loop.close()
    # The closed uringloop no longer reaps: the status is left for Popen (before 3.12, to a
    # thread that reaps through Popen).  (The stock loop's watcher thread may reap it behind
    # Popen's back, which then reports 0.)
    code = popen.wait(10)
    if isinstance(loop, uringloop.Loop):
        assert code == -signal.SIGKILL


@pytest.mark.skipif(sys.version_info >= (3, 12),
                    reason="3.12+: the stock PidfdChildWatcher leaves it a zombie, as uringloop")
@pytest.mark.parametrize("exited", [False, True], ids=["running", "exited"])
def test_child_unreaped_at_loop_close_is_reaped_after_it(new_loop, caplog, exited):
    """Before 3.12 the stock loop's watcher thread outlives the loop: a child still running when
    the loop closes -- or exited, but not yet seen by the loop -- is reaped all the same, and no
    zombie remains.  uringloop left it a zombie (until Popen's cleanup), and close() must not
    wait for the child to do it."""
    loop = new_loop()

    async def start():
        return await asyncio.create_subprocess_exec(*python("import time; time.sleep(60)"))

    proc = loop.run_until_complete(start())
    popen = proc._transport.get_extra_info("subprocess")
    try:
        if exited:
            popen.send_signal(signal.SIGKILL)
            time.sleep(0.2)              # a zombie now, and the loop has not run since
        started = time.monotonic()
        loop.close()
        # Not waiting for the child (a minute away from exiting by itself).
        assert time.monotonic() - started < 30
        if not exited:
            popen.send_signal(signal.SIGKILL)      # exits now, with the loop closed
        deadline = time.monotonic() + 5
        while os.path.exists(f"/proc/{proc.pid}") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not os.path.exists(f"/proc/{proc.pid}"), "left a zombie"
        if not exited:
            # And reported as the stock watcher thread does, once the child has exited.
            while "that handles pid" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.01)
            assert f"that handles pid {proc.pid} is closed" in caplog.text
        code = popen.wait(10)
        if isinstance(loop, uringloop.Loop):
            # Reaped through Popen, which knows the real status (the stock thread's bare
            # waitpid() leaves it to report 0).
            assert code == -signal.SIGKILL
    finally:
        proc._transport.close()      # (a zombie left by a failure: reaped by its poll())


def test_falls_back_to_a_waitpid_thread_without_pidfd_open(new_loop, monkeypatch):
    loop = new_loop()
    if not isinstance(loop, uringloop.Loop):
        pytest.skip("uringloop's fallback for a refused pidfd_open(2)")

    def refused(pid, flags=0):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "pidfd_open", refused)

    async def main():
        proc = await asyncio.create_subprocess_exec(*python("import sys; sys.exit(5)"),
                                                    stdout=subprocess.PIPE)
        return await asyncio.wait_for(proc.communicate(), 10), proc.returncode

    assert loop.run_until_complete(main()) == ((b"", None), 5)
    loop.close()


def _refuse_pidfd_open(monkeypatch):
    def refused(pid, flags=0):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "pidfd_open", refused)


def _waitpid_threads(pid):
    return [t for t in threading.enumerate() if t.name == f"uringloop-waitpid-{pid}"]


def test_child_reaped_while_the_loop_closes_is_not_reported_as_on_a_closed_loop(caplog):
    """uringloop only (the thread a closing loop leaves to reap a child, before 3.12): a child
    killed just before close() can be reaped while the loop is still closing.  The stock
    watcher thread then hands its callback to that loop and says nothing, and warns only of a
    loop already closed; uringloop's thread warned either way ("Loop <... closed=False ...>
    that handles pid N is closed", in 2-5 of 8 runs)."""
    from uringloop import _children

    class ExitedChild:
        pid = 4242

        def wait(self):
            return 0

    loop = uringloop.new_event_loop()
    try:
        with caplog.at_level(logging.WARNING):
            _children._reap_after_close(loop, ExitedChild())
            assert "that handles pid 4242" not in caplog.text
    finally:
        loop.close()
    with caplog.at_level(logging.WARNING):
        _children._reap_after_close(loop, ExitedChild())
    assert "that handles pid 4242 is closed" in caplog.text


def test_fallback_thread_reaps_through_popen_and_reports_a_closed_loop(monkeypatch, caplog):
    """uringloop only (its fallback for a refused pidfd_open(2); the stock loop's, the
    ThreadedChildWatcher, is the reference of test_child_unreaped_at_loop_close_is_reaped_after_it
    before 3.12).  The child exits after the loop has closed: the waiting thread reaps it all the
    same and logs the stock thread's warning -- it said nothing -- and Popen, which the thread
    reaps through, knows the real status (a bare waitpid() left it to report 0)."""
    _refuse_pidfd_open(monkeypatch)
    loop = uringloop.new_event_loop()

    async def start():
        return await asyncio.create_subprocess_exec(*python("import time; time.sleep(60)"))

    proc = loop.run_until_complete(start())
    popen = proc._transport.get_extra_info("subprocess")
    try:
        waiters = _waitpid_threads(proc.pid)
        assert len(waiters) == 1          # the fallback is what is tested
        loop.close()
        popen.send_signal(signal.SIGKILL)          # exits now, with the loop closed
        waiters[0].join(30)
        assert not waiters[0].is_alive()
        assert not os.path.exists(f"/proc/{proc.pid}"), "left a zombie"
        assert f"that handles pid {proc.pid} is closed" in caplog.text
        assert popen.wait(10) == -signal.SIGKILL
    finally:
        proc._transport.close()      # (a child left by a failure: killed and reaped by it)


def test_fallback_thread_status_reaches_a_popen_polled_before_the_loop_runs(monkeypatch):
    """uringloop only (as above).  The waiting thread has seen the exit and queued the status
    for the loop, which has not run since (a callback still runs), and the program polls the
    Popen meanwhile -- as the transport's close() does.  Popen must see the real status: the
    thread's bare waitpid() had reaped the child behind its back, poll() found none and set
    returncode 0 (and kept it, since asyncio copies the status only into a Popen without
    one)."""
    _refuse_pidfd_open(monkeypatch)
    loop = uringloop.new_event_loop()

    async def main():
        r, w = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                *python(f"import os, sys; os.read({r}, 1); sys.exit(5)"), pass_fds=(r,))
        finally:
            os.close(r)
        popen = proc._transport.get_extra_info("subprocess")
        waiters = _waitpid_threads(proc.pid)
        os.write(w, b"x")            # the child exits now
        os.close(w)
        assert len(waiters) == 1
        waiters[0].join(30)          # (blocking the loop: it runs no callback meanwhile)
        assert not waiters[0].is_alive()
        polled = popen.poll()
        return polled, await asyncio.wait_for(proc.wait(), 10), popen.returncode

    try:
        assert loop.run_until_complete(main()) == (5, 5, 5)
    finally:
        loop.close()


@pytest.mark.timeout(30)
def test_a_child_that_cannot_be_watched_fails_creation_at_once(monkeypatch):
    """uringloop only (its child watching): no pidfd (a seccomp profile refusing pidfd_open)
    and no thread to wait with -- create_subprocess_exec() raises that error, as the stock
    loop's add_child_handler() does.  It waited for an exit nothing watched, forever."""
    def refused(pid, flags=0):
        raise PermissionError(1, "refused by the test")

    start = threading.Thread.start

    def no_waitpid_thread(thread):
        if thread.name.startswith("uringloop-waitpid"):
            raise RuntimeError("can't start new thread")
        return start(thread)

    monkeypatch.setattr(os, "pidfd_open", refused)
    monkeypatch.setattr(threading.Thread, "start", no_waitpid_thread)
    loop = uringloop.new_event_loop()
    try:
        with pytest.raises(RuntimeError, match="can't start new thread"):
            loop.run_until_complete(asyncio.wait_for(
                asyncio.create_subprocess_exec(*python("pass")), 10))
    finally:
        loop.close()


@pytest.mark.asyncio
async def test_protocol_callbacks_run_in_the_context_subprocess_exec_was_called_in():
    """The pipes' callbacks run in the caller's context; process_exited() and connection_lost()
    do too from 3.12, where the exit comes from the pidfd watcher's reader, registered by
    subprocess_exec() -- before, from the watcher's thread, in a fresh context.  (uringloop
    ran those two in the loop's context on 3.12+.  Found with uvloop's test_context.)"""
    import contextvars
    cvar = contextvars.ContextVar("cvar", default="outer")
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    seen = {}

    class Recorder(asyncio.SubprocessProtocol):
        def connection_made(self, transport):
            seen["connection_made"] = cvar.get()

        def pipe_data_received(self, fd, data):
            seen["pipe_data_received"] = cvar.get()

        def process_exited(self):
            seen["process_exited"] = cvar.get()

        def connection_lost(self, exc):
            seen["connection_lost"] = cvar.get()
            done.set_result(None)

    async def in_a_context_of_its_own():
        cvar.set("inner")
        transport, _ = await loop.subprocess_exec(
            Recorder, *python("import sys; sys.stdout.write(sys.stdin.read())"))
        transport.get_pipe_transport(0).write(b"data")
        transport.get_pipe_transport(0).write_eof()
        return transport

    transport = await asyncio.create_task(in_a_context_of_its_own())
    try:
        await asyncio.wait_for(done, 10)
    finally:
        transport.close()
    at_exit = "inner" if sys.version_info >= (3, 12) else "outer"
    assert seen == {"connection_made": "inner", "pipe_data_received": "inner",
                    "process_exited": at_exit, "connection_lost": at_exit}
