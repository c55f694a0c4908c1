"""uringloop's transports on kernels without its preferred mechanisms: the same behaviour with
single-shot receives (no multishot recv) and whole-buffer rings (no incremental consumption).
The loop's feature set is narrowed before any transport exists, which is what a loop on such a
kernel starts with."""

import asyncio
import os

import pytest

import uringloop

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
