"""Waits that spin before sleeping (WaitPolicy.spin_or_wait): configured by URINGLOOP_SPIN_US, only
after answers (a receive soon after the loop's own send on that descriptor), never past a
timer's deadline, and the spin limit adapts -- it shrinks to nothing while the peers pause for
longer than the most a wait may spin, and grows back when answers come quickly."""

import asyncio
import socket
import threading
import time

import pytest

import uringloop
from helpers import EchoProtocol


def _new_loop(monkeypatch, spin_us):
    if spin_us is None:
        monkeypatch.delenv("URINGLOOP_SPIN_US", raising=False)
    else:
        monkeypatch.setenv("URINGLOOP_SPIN_US", str(spin_us))
    loop = uringloop.new_event_loop()
    # Spinning follows answers that come back within 250 us; debug mode (on under -X dev)
    # extracts a traceback for every future and handle, which makes round trips slower.
    loop.set_debug(False)
    return loop


def _require_spinning(loop):
    if not loop._proactor.can_spin:
        loop.close()
        pytest.skip("this kernel does not flag deferred completions (IORING_SETUP_TASKRUN_FLAG)")


class _Collect(asyncio.Protocol):
    def __init__(self):
        self.received = bytearray()
        self.waiter = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.received += data
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


async def _round_trips(count):
    """`count` 100-byte round trips between two transports of the running loop."""
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    server_transport, _ = await loop.connect_accepted_socket(EchoProtocol, a)
    client_transport, client = await loop.connect_accepted_socket(_Collect, b)
    try:
        for i in range(count):
            client.waiter = loop.create_future()
            message = bytes([i % 256]) * 100
            client_transport.write(message)
            while len(client.received) < 100:
                client.waiter = loop.create_future()
                await client.waiter
            assert bytes(client.received[:100]) == message
            del client.received[:100]
    finally:
        client_transport.close()
        server_transport.close()
        await asyncio.sleep(0)


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "1000001"])
def test_a_bad_spin_setting_is_refused_with_its_name(monkeypatch, value):
    monkeypatch.setenv("URINGLOOP_SPIN_US", value)
    with pytest.raises(ValueError, match="URINGLOOP_SPIN_US"):
        uringloop.new_event_loop()


def test_spin_setting_comes_from_the_environment(monkeypatch):
    loop = _new_loop(monkeypatch, None)
    try:
        assert loop.statistics()["spin_max_ns"] == 100_000
    finally:
        loop.close()
    loop = _new_loop(monkeypatch, 40)
    try:
        assert loop.statistics()["spin_max_ns"] == 40_000
        assert 0 < loop.statistics()["spin_limit_ns"] <= 40_000
    finally:
        loop.close()


def test_spinning_turned_off_never_spins(monkeypatch):
    loop = _new_loop(monkeypatch, 0)
    try:
        loop.run_until_complete(_round_trips(200))
        stats = loop.statistics()
        assert stats["spins"] == 0 and stats["spun_ns"] == 0 and stats["spin_limit_ns"] == 0
        assert not loop._proactor.can_spin
    finally:
        loop.close()


def test_round_trips_spin_and_find_the_answer(monkeypatch):
    loop = _new_loop(monkeypatch, None)
    _require_spinning(loop)
    try:
        loop.run_until_complete(_round_trips(300))
        stats = loop.statistics()
        # Each answer is posted by the loop's own send, so a spin that starts finds it.
        assert stats["spins"] > 0
        assert stats["spin_hits"] > 0
        assert stats["spin_hits"] <= stats["spins"]
        # Every echo answers the client's message, and every message after the first answers
        # the echo before it.
        assert stats["answers"] >= 300
    finally:
        loop.close()


def _paced_messages(loop, gap, count, answer_first):
    """A thread sends `count` messages `gap` seconds apart on a socket the loop reads with
    sock_recv; with `answer_first` each one answers a request the loop sends just before."""
    a, b = socket.socketpair()
    a.setblocking(False)

    def peer():
        for _ in range(count):
            if answer_first:
                b.recv(1)
            time.sleep(gap)
            b.send(b"x")

    async def receive():
        loop = asyncio.get_running_loop()
        for _ in range(count):
            if answer_first:
                await loop.sock_sendall(a, b"?")
            assert await loop.sock_recv(a, 1) == b"x"

    thread = threading.Thread(target=peer)
    thread.start()
    try:
        before = loop.statistics()
        loop.run_until_complete(receive())
        after = loop.statistics()
    finally:
        thread.join()
        a.close()
        b.close()
    return {key: after[key] - before[key] for key in ("spins", "answers", "completions")}


def test_messages_that_answer_nothing_do_not_make_the_loop_spin(monkeypatch):
    # A peer on its own schedule (here every 2 ms; the loop never sends to it): a spin would
    # only shorten the wait for a message that comes when it comes.
    loop = _new_loop(monkeypatch, None)
    _require_spinning(loop)
    try:
        counts = _paced_messages(loop, 0.002, 30, answer_first=False)
        assert counts["completions"] >= 30
        assert counts == {"spins": 0, "answers": 0, "completions": counts["completions"]}
    finally:
        loop.close()


def test_an_answer_later_than_the_window_is_not_one(monkeypatch):
    # Spins of up to 2 ms make 5 ms the window (a thread's answer, which needs the GIL, comes
    # well inside it): answers after 20 ms are not answers.
    loop = _new_loop(monkeypatch, 2000)
    _require_spinning(loop)
    try:
        counts = _paced_messages(loop, 0.02, 10, answer_first=True)
        assert counts["answers"] == 0 and counts["spins"] == 0
        # The same peer answering at once: answers, and the waits for them spin.
        counts = _paced_messages(loop, 0, 50, answer_first=True)
        assert counts["answers"] >= 25 and counts["spins"] > 0
    finally:
        loop.close()


def test_a_loop_running_only_timers_does_not_spin(monkeypatch):
    loop = _new_loop(monkeypatch, None)
    _require_spinning(loop)

    async def ticks():
        for _ in range(50):
            await asyncio.sleep(0.001)
        for _ in range(200):
            await asyncio.sleep(0)

    try:
        before = loop.statistics()
        loop.run_until_complete(ticks())
        after = loop.statistics()
        assert after["spins"] == before["spins"]
        assert after["spun_ns"] == before["spun_ns"]
    finally:
        loop.close()


def test_the_spin_limit_shrinks_while_the_peer_pauses_and_grows_back(monkeypatch):
    # At most 1 ms of spinning: a peer that answers at once (so the next wait may spin) and
    # then sends again only 20 ms later is never caught by a spin, and each wait that ends
    # after it halves the limit, down to nothing.
    loop = _new_loop(monkeypatch, 1000)
    _require_spinning(loop)
    a, b = socket.socketpair()
    a.setblocking(False)

    def peer():
        for _ in range(20):
            b.recv(1)
            b.send(b"!")
            time.sleep(0.02)
            b.send(b"x")

    async def receive_paused_messages():
        loop = asyncio.get_running_loop()
        received = b""
        for _ in range(20):
            await loop.sock_sendall(a, b"?")
            assert await loop.sock_recv(a, 1) == b"!"
            received += await loop.sock_recv(a, 1)
        return received

    try:
        start_limit = loop.statistics()["spin_limit_ns"]
        assert start_limit > 0
        thread = threading.Thread(target=peer)
        thread.start()
        try:
            assert loop.run_until_complete(receive_paused_messages()) == b"x" * 20
        finally:
            thread.join()
        stats = loop.statistics()
        assert stats["spin_limit_ns"] == 0
        # Quick answers again: a wait that ends within the most a spin may take grows it back.
        loop.run_until_complete(_round_trips(200))
        assert loop.statistics()["spin_limit_ns"] > 0
    finally:
        a.close()
        b.close()
        loop.close()


def _grow_spin_limit(loop, delay, count):
    """Requests answered by a thread after `delay` seconds each: every wait that a spin missed
    and an answer then ended within the most a spin may take doubles the limit."""
    _paced_messages(loop, delay, count, answer_first=True)
    return loop.statistics()["spin_limit_ns"]


@pytest.fixture
def long_spinning_loop(monkeypatch):
    """A loop allowed up to a second of spinning, its limit grown past 50 ms by answers that
    took 50 ms: (loop, limit)."""
    loop = _new_loop(monkeypatch, 1_000_000)
    _require_spinning(loop)
    try:
        limit = _grow_spin_limit(loop, 0.05, 13)
        assert limit > 50_000_000, limit
        yield loop, limit
    finally:
        loop.close()


def test_a_spin_ends_by_the_timers_deadline(long_spinning_loop):
    # A 5 ms sleep must still end at its deadline, not when the spin limit runs out.
    loop, limit = long_spinning_loop

    async def sleep_5ms():
        # A completion first, so that the wait which follows may spin.
        await _round_trips(1)
        start = loop.time()
        await asyncio.sleep(0.005)
        return loop.time() - start

    slept = loop.run_until_complete(sleep_5ms())
    assert 0.005 <= slept < limit / 2e9


def test_a_spinning_loop_is_woken_by_another_thread(long_spinning_loop):
    # The spin runs without the GIL and ends on the wake-up's completion: a thread that calls
    # call_soon_threadsafe 2 ms into a spin that may last 50 ms or more ends that very spin.
    loop, _ = long_spinning_loop

    async def woken():
        await _round_trips(1)
        fut = loop.create_future()
        before = loop.statistics()
        threading.Timer(0.002, loop.call_soon_threadsafe, (fut.set_result, "woken")).start()
        result = await fut
        after = loop.statistics()
        misses = after["spins"] - after["spin_hits"]
        return result, misses, before["spins"] - before["spin_hits"]

    result, misses_after, misses_before = loop.run_until_complete(woken())
    assert result == "woken"
    assert misses_after == misses_before     # the wait that the thread ended was a spin
