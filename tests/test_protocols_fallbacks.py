"""uringloop's transports on kernels without its preferred mechanisms: the same behaviour with
single-shot receives (no multishot recv) and whole-buffer rings (no incremental consumption).
The loop's feature set is narrowed before any transport exists, which is what a loop on such a
kernel starts with."""

import asyncio
import functools
import os
import socket

import pytest

import uringloop
import uringloop.loop
from uringloop._probe import SETUP_FLAGS

from helpers import pattern

FALLBACKS = {
    'single-shot-recv': {'multishot_recv': False},
    'whole-buffer-ring': {'incremental_buffers': False},
    'all': {'multishot_recv': False, 'incremental_buffers': False},
}


@pytest.fixture(params=list(FALLBACKS))
def narrowed_loop(request):
    loop = uringloop.new_event_loop()
    loop._features.update(FALLBACKS[request.param])
    yield loop
    loop.close()

class Sink(asyncio.Protocol):
    def __init__(self):
        self.loop = asyncio.get_running_loop()
        self.data = bytearray()
        self.eof = self.loop.create_future()
        self.lost = self.loop.create_future()
        self.paused_calls = 0

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        if not self.transport.is_reading():
            self.paused_calls += 1
        self.data += data
        if len(self.data) // 150_000 > getattr(self, 'pauses', 0):
            self.pauses = getattr(self, 'pauses', 0) + 1
            self.transport.pause_reading()
            self.loop.call_later(0.005, self.transport.resume_reading)

    def eof_received(self):
        self.eof.set_result(None)

    def connection_lost(self, exc):
        self.lost.set_result(exc)


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


async def scenario():
    loop = asyncio.get_running_loop()
    # Echo through streams, many connections at once.
    server = await loop.create_server(Echo, '127.0.0.1', 0)
    addr = server.sockets[0].getsockname()

    async def roundtrip(i):
        reader, writer = await asyncio.open_connection(*addr)
        payload = pattern(20_000 + i, seed=i)
        writer.write(payload)
        assert await reader.readexactly(len(payload)) == payload
        writer.close()
        await writer.wait_closed()

    await asyncio.gather(*(roundtrip(i) for i in range(40)))
    server.close()
    await server.wait_closed()

    # A large transfer to a reader that keeps pausing, then EOF.
    sinks = []
    server = await loop.create_server(lambda: sinks.append(Sink()) or sinks[-1], '127.0.0.1', 0)
    reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
    payload = os.urandom(3 * 1024 * 1024)
    writer.write(payload)
    writer.write_eof()
    while not sinks:
        await asyncio.sleep(0.001)
    await sinks[0].eof
    assert bytes(sinks[0].data) == payload
    assert sinks[0].paused_calls == 0
    await sinks[0].lost
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    return True


def test_transports_with_fallback_mechanisms(narrowed_loop):
    features = dict(narrowed_loop._features)
    assert narrowed_loop.run_until_complete(asyncio.wait_for(scenario(), 30))
    ring = narrowed_loop._ul_recv_ring
    if not features['multishot_recv']:
        assert ring is False                       # no provided buffers were set up
    else:
        assert ring.incremental == bool(features['incremental_buffers'])


# Kernels 5.19-6.0 have no SINGLE_ISSUER/DEFER_TASKRUN: the ring is set up with
# COOP_TASKRUN|TASKRUN_FLAG (the third of _ring.pyx's set-up choices), so completions are run as
# task work at system-call boundaries instead of only inside our io_uring_enter.  On a newer kernel
# the loop never picks it, so the test builds the loop on a ring that is not single-issuer, as the
# older kernel would have built it.
@pytest.fixture
def coop_taskrun_loop(monkeypatch):
    monkeypatch.setattr(uringloop.loop, 'Ring',
                        functools.partial(uringloop.loop.Ring, single_issuer=False))
    loop = uringloop.new_event_loop()
    yield loop
    loop.close()


async def coop_scenario():
    loop = asyncio.get_running_loop()
    # A blocked wait woken from another thread.
    woken = loop.create_future()
    waker = loop.run_in_executor(None, loop.call_soon_threadsafe, woken.set_result, 'woken')
    assert await asyncio.wait_for(woken, 10) == 'woken'
    await waker

    # A sock_recv cancelled while the bytes are on their way loses none of them: the next
    # caller gets what the cancelled one would have.
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    with a, b:
        pending = asyncio.ensure_future(loop.sock_recv(a, 100))
        await asyncio.sleep(0.01)
        pending.cancel()
        await loop.sock_sendall(b, b'kept')
        with pytest.raises(asyncio.CancelledError):
            await pending
        got = b''
        while len(got) < 4:
            got += await asyncio.wait_for(loop.sock_recv(a, 100), 10)
        assert got == b'kept'

    # Timers fire in order while I/O is in flight.
    order = []
    for delay in (0.02, 0.01, 0.0):
        loop.call_later(delay, order.append, delay)
    await asyncio.sleep(0.05)
    assert order == [0.0, 0.01, 0.02]
    return await scenario()


def test_loop_on_a_coop_taskrun_ring(coop_taskrun_loop):
    proactor = coop_taskrun_loop._proactor
    flags = proactor.ring.setup_flags
    assert flags & SETUP_FLAGS['COOP_TASKRUN'] and flags & SETUP_FLAGS['TASKRUN_FLAG']
    assert not flags & SETUP_FLAGS['DEFER_TASKRUN']
    assert coop_taskrun_loop._features['coop_taskrun']
    assert not coop_taskrun_loop._features['single_issuer_defer_taskrun']
    assert coop_taskrun_loop.run_until_complete(asyncio.wait_for(coop_scenario(), 60))
