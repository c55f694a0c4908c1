"""loop.getaddrinfo(): what it returns and raises is what socket.getaddrinfo() returns and raises
when called synchronously -- on uringloop, whose lookups run getaddrinfo(3) on its own C threads,
and on the stock loop (the oracle), which calls socket.getaddrinfo in its default executor.

Beyond the values, the ways the stock route shows through and code relies on: a mocked
socket.getaddrinfo is what answers, a default executor the user set runs the lookups, one shut
down refuses them, debug mode logs them.  And the hazards of a resolver of its own: cancellation,
many lookups at once, loops in two threads, a loop closed with lookups in flight, fork.
Loopback names and literals only: this machine may have no DNS."""

import asyncio
import contextlib
import gc
import logging
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import warnings
from concurrent.futures import ThreadPoolExecutor
from unittest import mock

import pytest

from conftest import LOOP_FACTORIES
from helpers import PACKAGE_PARENT, child_env
from helpers import no_leaked_fds  # noqa: F401 (an autouse fixture)

needs_ipv6 = pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 in this Python")


def _has_service(name):
    try:
        socket.getservbyname(name, "tcp")
        return True
    except OSError:
        return False


needs_http_service = pytest.mark.skipif(not _has_service("http"), reason="no http in /etc/services")

NUMERIC = socket.AI_NUMERICHOST


class Str(str):
    """A str subclass: socket.getaddrinfo takes it as a str."""


def sync_outcome(host, port, **kwargs):
    """socket.getaddrinfo's list, or the type and args of what it raises."""
    try:
        return "result", socket.getaddrinfo(host, port, **kwargs)
    except Exception as exc:
        return "raised", (type(exc), exc.args)


async def async_outcome(host, port, **kwargs):
    try:
        return "result", await asyncio.get_running_loop().getaddrinfo(host, port, **kwargs)
    except Exception as exc:
        return "raised", (type(exc), exc.args)


def types_of(outcome):
    """The types inside a result: AddressFamily/SocketKind members (not bare ints), int proto,
    str canonname, and the address tuple's own -- `==` alone would not tell them apart."""
    kind, value = outcome
    if kind != "result":
        return None
    return [tuple(map(type, info[:4])) + (type(info[4]), tuple(map(type, info[4])))
            for info in value]


@contextlib.contextmanager
def nothing_unraisable():
    """An error swallowed on the way (an "Exception ignored in ...") is a failure too."""
    ignored = []
    hook, sys.unraisablehook = sys.unraisablehook, ignored.append
    try:
        yield
    finally:
        sys.unraisablehook = hook
    assert not ignored, [f"{u.exc_type.__name__}: {u.exc_value} in {u.object!r}" for u in ignored]


async def assert_same_as_sync(host, port, **kwargs):
    expected = sync_outcome(host, port, **kwargs)
    with nothing_unraisable():
        got = await async_outcome(host, port, **kwargs)
    assert got == expected
    assert types_of(got) == types_of(expected)
    return expected


# ---- results: the same list, in the same order, of the same types ----

RESULTS = [
    pytest.param("localhost", 80, {}, id="localhost"),
    pytest.param("127.0.0.1", 80, {}, id="ipv4-literal"),
    pytest.param("::1", 80, {}, id="ipv6-literal", marks=needs_ipv6),
    pytest.param(None, 8080, {"flags": socket.AI_PASSIVE}, id="passive-no-host"),
    pytest.param(None, 0, {"family": socket.AF_INET, "flags": socket.AI_PASSIVE},
                 id="passive-port-0"),
    pytest.param(b"localhost", 80, {}, id="bytes-host"),
    pytest.param(Str("localhost"), 80, {}, id="str-subclass-host"),
    pytest.param("LOCALHOST", 80, {}, id="upper-case-host"),
    pytest.param("localhost", "80", {}, id="str-port"),
    pytest.param("localhost", "http", {}, id="service-name", marks=needs_http_service),
    pytest.param("localhost", b"80", {}, id="bytes-port"),
    pytest.param("localhost", None, {}, id="no-port"),
    pytest.param("localhost", 0, {}, id="port-0"),
    pytest.param("127.0.0.1", 65535, {}, id="port-65535"),
    pytest.param("localhost", 80, {"family": socket.AF_INET}, id="af-inet"),
    pytest.param("::1", 80, {"family": socket.AF_INET6}, id="af-inet6", marks=needs_ipv6),
    pytest.param("localhost", 80, {"family": socket.AF_UNSPEC, "type": 0}, id="af-unspec-type-0"),
    pytest.param("localhost", 80, {"type": socket.SOCK_STREAM}, id="sock-stream"),
    pytest.param("localhost", 53, {"type": socket.SOCK_DGRAM}, id="sock-dgram"),
    pytest.param("127.0.0.1", 53, {"proto": socket.IPPROTO_UDP}, id="proto-udp"),
    pytest.param("127.0.0.1", 80, {"flags": NUMERIC}, id="ai-numerichost"),
    pytest.param("localhost", 80, {"flags": socket.AI_CANONNAME}, id="ai-canonname"),
    pytest.param("127.0.0.1", 80, {"flags": socket.AI_CANONNAME}, id="ai-canonname-literal"),
    pytest.param("localhost", "80", {"flags": socket.AI_NUMERICSERV}, id="ai-numericserv"),
]


@pytest.mark.asyncio
@pytest.mark.parametrize("host, port, kwargs", RESULTS)
async def test_result_is_socket_getaddrinfos(host, port, kwargs):
    expected = await assert_same_as_sync(host, port, **kwargs)
    assert expected[0] == "result" and expected[1]


@pytest.mark.asyncio
async def test_canonical_name_is_given_with_ai_canonname():
    infos = await asyncio.get_running_loop().getaddrinfo("localhost", 80,
                                                         flags=socket.AI_CANONNAME)
    assert infos[0][3] == socket.getaddrinfo("localhost", 80, flags=socket.AI_CANONNAME)[0][3]
    assert infos[0][3]


@pytest.mark.asyncio
@needs_ipv6
async def test_ipv6_scoped_literal_keeps_its_scope():
    if sync_outcome("fe80::1%lo", 80)[0] != "result":
        pytest.skip("socket.getaddrinfo itself refuses fe80::1%lo here")
    await assert_same_as_sync("fe80::1%lo", 80, type=socket.SOCK_STREAM)


# Arguments whose outcome differs between Python versions or machines (a truncating NUL, a
# port out of range, a name that reaches DNS): whatever socket.getaddrinfo does, so must we.
EDGES = [
    pytest.param("localhost.", 80, {}, id="trailing-dot"),
    pytest.param("localhost\x00junk", 80, {}, id="nul-in-str-host"),
    pytest.param(b"localhost\x00junk", 80, {}, id="nul-in-bytes-host"),
    pytest.param("127.0.0.1", "80\x00x", {}, id="nul-in-port"),
    pytest.param("127.0.0.1", " 80", {}, id="port-with-space"),
    pytest.param("127.0.0.1", -1, {}, id="port-negative"),
    pytest.param("127.0.0.1", 65536, {}, id="port-65536"),
    pytest.param("127.0.0.1", 2 ** 63, {}, id="port-beyond-c-long"),   # 3.12+: a result
    pytest.param("127.0.0.1", 2 ** 70, {}, id="port-huge"),             # 3.12+: a gaierror
    pytest.param("", 80, {"flags": NUMERIC}, id="empty-host"),
    pytest.param("a" * 63 + ".example", 80, {"flags": NUMERIC}, id="label-of-63"),
    pytest.param("a." * 130, 80, {"flags": NUMERIC}, id="name-over-255"),
    pytest.param(b"b\xc3\xbccher.invalid", 80, {"flags": NUMERIC}, id="non-ascii-bytes-host"),
    pytest.param("localhost", 80, {"family": socket.AF_INET6}, id="localhost-af-inet6"),
    pytest.param("localhost", 80, {"flags": socket.AI_ADDRCONFIG}, id="ai-addrconfig"),
    pytest.param("127.0.0.1", 80, {"family": True}, id="bool-family"),
]


@pytest.mark.asyncio
@pytest.mark.parametrize("host, port, kwargs", EDGES)
async def test_edge_argument_outcome_is_socket_getaddrinfos(host, port, kwargs):
    await assert_same_as_sync(host, port, **kwargs)


# ---- errors: the same exception type with the same args ----

ERRORS = [
    pytest.param("no-such-host.invalid", 80, {"flags": NUMERIC}, socket.gaierror, id="no-name"),
    pytest.param("127.0.0.1", "no-such-service", {}, socket.gaierror, id="no-service"),
    pytest.param("127.0.0.1", "http", {"flags": socket.AI_NUMERICSERV}, socket.gaierror,
                 id="service-name-with-ai-numericserv"),
    pytest.param(None, None, {}, socket.gaierror, id="no-host-no-port"),
    pytest.param("127.0.0.1", 80, {"family": socket.AF_UNIX}, socket.gaierror, id="bad-family"),
    pytest.param("127.0.0.1", 80, {"type": 12345}, socket.gaierror, id="bad-type"),
    pytest.param("127.0.0.1", 80, {"type": socket.SOCK_STREAM, "proto": socket.IPPROTO_UDP},
                 socket.gaierror, id="type-proto-mismatch"),
    pytest.param("127.0.0.1", 80, {"flags": -1}, socket.gaierror, id="bad-flags"),
    pytest.param("bücher.invalid", 80, {"flags": NUMERIC}, socket.gaierror, id="idna-host"),
    pytest.param(1234, 80, {}, TypeError, id="int-host"),
    pytest.param(bytearray(b"localhost"), 80, {}, TypeError, id="bytearray-host"),
    pytest.param("127.0.0.1", 1.5, {}, OSError, id="float-port"),
    pytest.param("127.0.0.1", True, {}, OSError, id="bool-port"),
    pytest.param("127.0.0.1", socket.AF_INET, {}, OSError, id="int-subclass-port"),
    pytest.param("a" * 64 + ".example", 80, {}, UnicodeError, id="label-over-63"),
    pytest.param("a" * 64, 80, {}, UnicodeError, id="last-label-over-63"),
    pytest.param("a..b", 80, {}, UnicodeError, id="empty-label"),
    pytest.param(".localhost", 80, {}, UnicodeError, id="leading-dot"),
    pytest.param("127.0.0.1", 80, {"family": "x"}, TypeError, id="str-family"),
    pytest.param("127.0.0.1", 80, {"type": 1.0}, TypeError, id="float-type"),
    pytest.param("127.0.0.1", 80, {"family": 2 ** 40}, OverflowError, id="family-beyond-c-int"),
    pytest.param("127.0.0.1", 80, {"family": 2 ** 70}, OverflowError, id="family-beyond-c-long"),
]


@pytest.mark.asyncio
@pytest.mark.parametrize("host, port, kwargs, error", ERRORS)
async def test_error_is_socket_getaddrinfos(host, port, kwargs, error):
    with pytest.raises(error):
        socket.getaddrinfo(host, port, **kwargs)
    await assert_same_as_sync(host, port, **kwargs)


# ---- a replaced socket.getaddrinfo answers (asyncio's own tests and user code mock it) ----

FAKE = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.7", 4242))]


@pytest.mark.asyncio
async def test_a_mocked_socket_getaddrinfo_answers_even_after_real_lookups():
    loop = asyncio.get_running_loop()
    await assert_same_as_sync("localhost", 80)
    with mock.patch("socket.getaddrinfo", return_value=FAKE) as fake:
        assert await loop.getaddrinfo("example.invalid", 4242, type=socket.SOCK_STREAM) is FAKE
    fake.assert_called_once_with("example.invalid", 4242, 0, socket.SOCK_STREAM, 0, 0)
    await assert_same_as_sync("localhost", 80)         # the real one again once unpatched


@pytest.mark.asyncio
async def test_a_mocked_socket_getaddrinfo_raising_raises_the_same():
    failure = socket.gaierror(socket.EAI_AGAIN, "mocked failure")
    with mock.patch("socket.getaddrinfo", side_effect=failure):
        with pytest.raises(socket.gaierror) as raised:
            await asyncio.get_running_loop().getaddrinfo("localhost", 80)
    assert raised.value.args == failure.args


@pytest.mark.asyncio
async def test_a_mocked_c_level_getaddrinfo_answers_through_socket_getaddrinfo():
    raw = [(2, 1, 6, "", ("192.0.2.7", 4242))]
    with mock.patch("_socket.getaddrinfo", return_value=raw):
        got = await asyncio.get_running_loop().getaddrinfo("localhost", 4242)
    assert got == FAKE and types_of(("result", got)) == types_of(("result", FAKE))


@pytest.mark.asyncio
async def test_a_mocked_socket_module_in_base_events_answers():
    with mock.patch("asyncio.base_events.socket") as fake_socket:
        fake_socket.getaddrinfo.return_value = FAKE
        assert await asyncio.get_running_loop().getaddrinfo("localhost", 4242) is FAKE


# ---- the default executor: one the user set runs the lookups; one shut down refuses them ----

class CountingExecutor(ThreadPoolExecutor):
    def __init__(self):
        super().__init__(max_workers=2)
        self.submitted = 0

    def submit(self, fn, /, *args, **kwargs):
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


@pytest.mark.asyncio
async def test_a_default_executor_the_user_set_runs_each_lookup():
    loop = asyncio.get_running_loop()
    await assert_same_as_sync("localhost", 80)           # before it is set
    executor = CountingExecutor()
    loop.set_default_executor(executor)
    for host, flags in [("localhost", 0), ("127.0.0.1", 0), ("no-such-host.invalid", NUMERIC)]:
        await assert_same_as_sync(host, 80, flags=flags)
    assert executor.submitted == 3
    executor.shutdown(wait=True)


@pytest.mark.asyncio
async def test_after_shutdown_default_executor_lookups_raise_runtime_error():
    loop = asyncio.get_running_loop()
    await assert_same_as_sync("localhost", 80)
    await loop.shutdown_default_executor()
    with pytest.raises(RuntimeError) as raised:
        await loop.getaddrinfo("localhost", 80)
    with pytest.raises(RuntimeError) as stock:
        await loop.run_in_executor(None, sum, [])
    assert raised.value.args == stock.value.args


@pytest.mark.asyncio
async def test_a_run_in_executor_replaced_on_the_loop_runs_each_lookup():
    """The stock loop's getaddrinfo() is a run_in_executor() call: one replaced on the instance
    sees every lookup (uringloop's own resolver went around it)."""
    loop = asyncio.get_running_loop()
    calls = []
    original = loop.run_in_executor

    def counting(executor, func, *args):
        calls.append(func.__name__)
        return original(executor, func, *args)

    loop.run_in_executor = counting
    try:
        await assert_same_as_sync("localhost", 80)
        await assert_same_as_sync("127.0.0.1", "80", type=socket.SOCK_STREAM)
    finally:
        del loop.run_in_executor
    assert calls == ["getaddrinfo", "getaddrinfo"]


@pytest.mark.parametrize("factory", list(LOOP_FACTORIES.values()), ids=list(LOOP_FACTORIES))
def test_a_run_in_executor_replaced_in_a_subclass_runs_each_lookup(factory):
    calls = []
    probe = factory()
    probe.close()

    class Counting(type(probe)):
        def run_in_executor(self, executor, func, *args):
            calls.append(func.__name__)
            return super().run_in_executor(executor, func, *args)

    loop = Counting()
    try:
        result = loop.run_until_complete(loop.getaddrinfo("localhost", 80))
    finally:
        loop.close()
    assert result == socket.getaddrinfo("localhost", 80)
    assert calls == ["getaddrinfo"]


@pytest.mark.asyncio
async def test_uringloop_resolves_without_the_default_executor(is_uring):
    # The point of uringloop's resolver: its own C threads, no executor work item.  (The stock
    # loop makes its default executor for the first lookup.)  Were the compiled way silently
    # refused, every result above would still match -- this is what tells.
    loop = asyncio.get_running_loop()
    for port in (80, "80", b"80", None):
        await assert_same_as_sync("localhost", port, type=socket.SOCK_STREAM,
                                  flags=socket.AI_ADDRCONFIG)
    await assert_same_as_sync(None, 0, family=socket.AF_INET, flags=socket.AI_PASSIVE)
    if is_uring:
        assert loop._default_executor is None
    else:
        assert loop._default_executor is not None


def test_a_closed_loop_refuses_lookups(new_loop):
    loop = new_loop()
    loop.run_until_complete(loop.getaddrinfo("localhost", 80))
    loop.close()
    lookup = loop.getaddrinfo("localhost", 80)
    with pytest.raises(RuntimeError, match="closed"):
        lookup.send(None)


# ---- debug mode: the same results, and each successful lookup logged as the stock loop does ----

@pytest.mark.asyncio
async def test_debug_mode_gives_the_same_results_and_logs_the_lookups(caplog):
    asyncio.get_running_loop().set_debug(True)
    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        await assert_same_as_sync("localhost", 80, type=socket.SOCK_STREAM)
        await assert_same_as_sync("no-such-host.invalid", 80, flags=NUMERIC)
    logged = [r.getMessage() for r in caplog.records
              if r.getMessage().startswith("Getting address info")]
    assert len(logged) == 1 and "localhost" in logged[0], logged


# ---- cancellation: the awaiter gets CancelledError; the finished lookup is dropped quietly ----

@pytest.mark.asyncio
async def test_a_cancelled_lookup_raises_cancelled_error_and_the_loop_goes_on():
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(loop.getaddrinfo("localhost", 80))
    await asyncio.sleep(0)                                # the lookup has started
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    await assert_same_as_sync("localhost", 80)


@pytest.mark.asyncio
async def test_cancelled_lookups_report_nothing_when_they_finish():
    # A result or an error arriving for a cancelled future must not be set on it (that raises)
    # nor be left unretrieved: either would reach the exception handler.
    loop = asyncio.get_running_loop()
    reported = []
    loop.set_exception_handler(lambda lp, context: reported.append(context))
    tasks = [asyncio.ensure_future(loop.getaddrinfo(host, 80, flags=NUMERIC))
             for host in ["no-such-host.invalid", "127.0.0.1"] * 20]
    await asyncio.sleep(0)
    for task in tasks:
        task.cancel()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(o, asyncio.CancelledError) for o in outcomes)
    for _ in range(20):                                   # by now the cancelled ones finished
        await assert_same_as_sync("no-such-host.invalid", 80, flags=NUMERIC)
    gc.collect()
    assert reported == []


# A getaddrinfo(3) that takes its time: interposed with LD_PRELOAD on a child process, it
# answers a name "slow-<ms>-..." after <ms> milliseconds (EAI_NONAME), and notes each such
# lookup it starts in the file $SLOW_GAI_LOG; other names go to the real one.
SLOW_GAI_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res)
{
    int (*real)(const char *, const char *, const struct addrinfo *, struct addrinfo **) =
        (int (*)(const char *, const char *, const struct addrinfo *, struct addrinfo **))
        dlsym(RTLD_NEXT, "getaddrinfo");
    if (node != NULL && strncmp(node, "slow-", 5) == 0) {
        int fd = open(getenv("SLOW_GAI_LOG"), O_WRONLY | O_APPEND | O_CREAT, 0600);
        if (fd >= 0) {
            if (write(fd, "x", 1) != 1) { /* nothing to do about it */ }
            close(fd);
        }
        usleep(1000 * atoi(node + 5));
        return EAI_NONAME;
    }
    return real(node, service, hints, res);
}
"""

CANCEL_QUEUED_SCRIPT = """
    import asyncio, socket
    import uringloop
    factory = uringloop.new_event_loop if {uring!r} else asyncio.SelectorEventLoop

    async def main():
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(loop.getaddrinfo(f"slow-300-{{i}}", 80)) for i in range(40)]
        await asyncio.sleep(0.1)            # the first ones have started
        for task in tasks:
            task.cancel()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(o, asyncio.CancelledError) for o in outcomes), outcomes
        print(await loop.getaddrinfo("127.0.0.1", 80, type=socket.SOCK_STREAM))
        await asyncio.sleep(0.6)            # those that started have finished

    loop = factory()
    loop.run_until_complete(main())
    loop.close()
"""


@pytest.mark.parametrize("loop_name", list(LOOP_FACTORIES))
def test_lookups_cancelled_while_queued_are_never_started(loop_name, tmp_path):
    """40 slow lookups, cancelled while most wait for a thread: only those a thread had taken
    run (the stock executor never starts a work item cancelled in its queue).  uringloop's
    threads ran every one of them, so that lookups abandoned behind a slow DNS server held up
    every later lookup of the process."""
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler for the getaddrinfo(3) stand-in")
    (tmp_path / "slowgai.c").write_text(SLOW_GAI_C)
    shim = tmp_path / "slowgai.so"
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(shim), str(tmp_path / "slowgai.c"),
                    "-ldl"], check=True, capture_output=True, timeout=60)
    log = tmp_path / "started"
    env = dict(child_env(), LD_PRELOAD=str(shim), SLOW_GAI_LOG=str(log))
    script = textwrap.dedent(CANCEL_QUEUED_SCRIPT.format(uring=loop_name == "uringloop"))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, env=env, cwd=PACKAGE_PARENT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == repr(socket.getaddrinfo("127.0.0.1", 80,
                                                            type=socket.SOCK_STREAM))
    started = len(log.read_text())
    # At most one per thread: uringloop's pool has 8, the stock executor min(32, CPUs + 4).
    threads = 8 if loop_name == "uringloop" else min(32, (os.cpu_count() or 1) + 4)
    assert 1 <= started <= threads, started


# ---- concurrency: each answer goes to its own question ----

@pytest.mark.asyncio
async def test_200_concurrent_lookups_each_get_their_own_answer():
    hosts = [("localhost", 0), ("127.0.0.1", 0), ("no-such-host.invalid", NUMERIC),
             (b"localhost", 0)]
    requests = [(*hosts[i % 4], 1000 + i, (0, socket.SOCK_STREAM, socket.SOCK_DGRAM)[i % 3])
                for i in range(200)]
    expected = [sync_outcome(host, port, type=kind, flags=flags)
                for host, flags, port, kind in requests]
    got = await asyncio.gather(*(async_outcome(host, port, type=kind, flags=flags)
                                 for host, flags, port, kind in requests))
    assert got == expected
    assert [types_of(o) for o in got] == [types_of(o) for o in expected]


def test_loops_in_two_threads_each_get_their_own_answers(new_loop):
    def lookups(loop, base):
        requests = [("127.0.0.1" if i % 2 else "localhost", base + i) for i in range(100)]

        async def ask():
            return await asyncio.gather(*(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                                          for host, port in requests))
        return requests, loop.run_until_complete(ask())

    loops = [new_loop(), new_loop()]
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(lookups, loop, 10000 * n) for n, loop in enumerate(loops, 1)]
        answers = [future.result(timeout=60) for future in futures]
    for requests, results in answers:
        assert results == [socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                           for host, port in requests]


# ---- closing the loop with lookups in flight: no crash, no hang, no stray wake-up ----

def start_lookups(loop, n=50):
    tasks = [loop.create_task(loop.getaddrinfo("localhost", 1000 + i)) for i in range(n)]
    loop.run_until_complete(asyncio.sleep(0))             # one iteration: all of them started
    return tasks


def assert_a_new_loop_resolves(new_loop):
    loop = new_loop()
    got = loop.run_until_complete(loop.getaddrinfo("localhost", 80))
    assert got == socket.getaddrinfo("localhost", 80)
    loop.close()


def test_closing_a_loop_after_cancelling_its_lookups_in_flight(new_loop):
    loop = new_loop()
    tasks = start_lookups(loop)
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loop.close()
    assert loop.is_closed() and all(task.done() for task in tasks)
    assert_a_new_loop_resolves(new_loop)


def test_closing_a_loop_with_its_lookups_still_pending(new_loop, caplog):
    loop = new_loop()
    tasks = start_lookups(loop)
    loop.close()
    assert loop.is_closed()
    # Descriptors opened now reuse the loop's numbers: a lookup finishing late must not write
    # its wake-up into one of them.
    pipes = [os.pipe() for _ in range(20)]
    try:
        assert_a_new_loop_resolves(new_loop)              # meanwhile the old lookups end
        for _ in range(3):
            assert_a_new_loop_resolves(new_loop)
        for r, _ in pipes:
            os.set_blocking(r, False)
            with pytest.raises(BlockingIOError):
                os.read(r, 100)
    finally:
        for r, w in pipes:
            os.close(r)
            os.close(w)
    with caplog.at_level(logging.CRITICAL, logger="asyncio"):   # "Task was destroyed but..."
        del tasks
        gc.collect()


# ---- fork: a child of a process whose resolver threads exist (some busy) resolves afresh ----

FORK_SCRIPT = """
    import asyncio, os, signal, socket, traceback, warnings
    import uringloop
    warnings.simplefilter("ignore", DeprecationWarning)   # 3.12+: fork() with threads alive
    factory = uringloop.new_event_loop if {uring!r} else asyncio.SelectorEventLoop

    def check(loop, n, numeric=False):
        if numeric:
            hints = dict(family=socket.AF_INET, type=socket.SOCK_STREAM,
                         proto=socket.IPPROTO_TCP, flags=socket.AI_NUMERICHOST)
            requests = [(("127.0.0.1", "127.0.0.2")[i % 2], 2000 + i) for i in range(n)]
        else:
            hints = {{}}
            requests = [(("localhost", "127.0.0.1")[i % 2], 2000 + i) for i in range(n)]
        async def ask():
            return await asyncio.gather(*(loop.getaddrinfo(h, p, **hints) for h, p in requests))
        expected = [socket.getaddrinfo(h, p, **hints) for h, p in requests]
        assert loop.run_until_complete(ask()) == expected

    parent = factory()
    check(parent, 2)                                      # the resolver's threads exist
    busy = [parent.create_task(parent.getaddrinfo("localhost", 3000 + i)) for i in range(20)]
    parent.run_until_complete(asyncio.sleep(0))           # and some are at work at the fork
    pid = os.fork()
    if pid == 0:
        signal.alarm(30)                                  # a hung child dies
        try:
            # Numeric lookups only: a name goes through glibc's resolver configuration, whose
            # process-wide lock (get_locked_global, resolv/resolv_conf.c) a parent's thread
            # inside getaddrinfo(3) may hold at the fork, and glibc 2.36 does not reset it in
            # the child -- which then hangs, whichever threads asked (with plain threads
            # calling socket.getaddrinfo: ~1 fork in 300-1,000 on the project's machine).  By
            # POSIX only async-signal-safe calls are safe there; what is tested is uringloop's
            # own pool.
            child = factory()
            check(child, 2, numeric=True)
            check(child, 50, numeric=True)                # enough to start several workers
            child.close()
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    got = parent.run_until_complete(asyncio.gather(*busy))
    assert got == [socket.getaddrinfo("localhost", 3000 + i) for i in range(20)]
    _, status = os.waitpid(pid, 0)
    check(parent, 10)
    parent.close()
    print("child", os.waitstatus_to_exitcode(status))
"""


@pytest.mark.parametrize("loop_name", list(LOOP_FACTORIES))
def test_a_fork_child_resolves_on_a_new_loop_and_the_parent_goes_on(loop_name):
    # The uringloop case is the one at stake (its process-wide thread pool, whose lock a worker
    # may hold at the fork); the stock loop runs the same script for symmetry.
    script = textwrap.dedent(FORK_SCRIPT.format(uring=loop_name == "uringloop"))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, env=child_env(), cwd=PACKAGE_PARENT)
    assert (result.returncode, result.stdout.strip()) == (0, "child 0"), result.stderr


# ---- the audit event: socket.getaddrinfo's, with its arguments; a hook may refuse ----

AUDIT_SCRIPT = """
    import asyncio, socket, sys
    import uringloop
    factory = uringloop.new_event_loop if {uring!r} else asyncio.SelectorEventLoop
    seen = []

    def hook(event, args):
        if event == "socket.getaddrinfo":
            seen.append(args)
            if args[0] == "refused.invalid":
                raise PermissionError("a hook refuses " + args[0])

    sys.addaudithook(hook)                # for the life of this process: hence a process

    async def main():
        loop = asyncio.get_running_loop()
        await loop.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)
        await loop.getaddrinfo(b"127.0.0.1", "80", family=socket.AF_INET, proto=6)
        try:
            await loop.getaddrinfo("refused.invalid", 80, flags=socket.AI_NUMERICHOST)
        except PermissionError as exc:
            print("refused:", exc)
        print(seen)

    loop = factory()
    loop.run_until_complete(main())
    loop.close()
"""


@pytest.mark.parametrize("loop_name", list(LOOP_FACTORIES))
def test_each_lookup_raises_socket_getaddrinfos_audit_event(loop_name):
    # PEP 578: socket.getaddrinfo raises "socket.getaddrinfo" (host, port, family, type, proto)
    # before it asks; uringloop's resolver, which does not call it, raises the same event.
    script = textwrap.dedent(AUDIT_SCRIPT.format(uring=loop_name == "uringloop"))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, env=child_env(), cwd=PACKAGE_PARENT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "refused: a hook refuses refused.invalid",
        "[('localhost', 80, 0, 1, 0), (b'127.0.0.1', '80', 2, 0, 6), "
        "('refused.invalid', 80, 0, 0, 0)]",
    ]


# ---- the signature: family, type, proto and flags are keyword-only ----

@pytest.mark.asyncio
async def test_family_type_proto_and_flags_are_keyword_only():
    loop = asyncio.get_running_loop()
    await assert_same_as_sync("localhost", 80, family=socket.AF_INET, type=socket.SOCK_STREAM,
                              proto=socket.IPPROTO_TCP, flags=socket.AI_CANONNAME)
    with pytest.raises(TypeError):
        await loop.getaddrinfo("localhost", 80, socket.AF_INET)
    with pytest.raises(TypeError):
        await loop.getaddrinfo("localhost", 80, socktype=socket.SOCK_STREAM)
    with pytest.raises(TypeError):
        await loop.getaddrinfo("localhost")
