"""Randomized checks against the stock loop, the oracle: many small scenarios drawn from fixed
seeds, each run on uringloop and on the stock loop.

Where the two loops may legitimately differ (how a byte stream is cut into data_received()
calls, how much of a write the socket took at once), the scenarios compare what must not differ:
the bytes that arrive, the return values, the file position, the sequence of protocol calls with
consecutive data_received() calls merged.  The seeds are fixed, so a failure names its scenario
and reproduces; the scenarios came from a differential search that found two real differences
(writelines() pausing where the stock loop does not; a segfault when a transport was freed under
its own completion handler -- see test_protocols.py for both)."""

import asyncio
import random
import socket
import struct
import sys

import pytest

import uringloop

from helpers import pattern


# The stock transport's writelines() of 3.12.0-3.12.8 and 3.13.0-3.13.1 never pauses the
# protocol (CPython gh-127655, CVE-2024-12254, fixed in 3.12.9 and 3.13.2): it cannot be the
# oracle where writelines() meets flow control.  (With 3.12.1 here, some echo scenarios stalled
# on it; with its writelines() replaced by write() they all passed.)
STOCK_WRITELINES_FLOW_CONTROL = not ((3, 12) <= sys.version_info < (3, 12, 9)
                                     or (3, 13) <= sys.version_info < (3, 13, 2))


def run_on(loop_name, coro_fn, *args):
    if loop_name == 'uringloop':
        return uringloop.run(coro_fn(*args))
    return asyncio.run(coro_fn(*args))


# ---- echo integrity: write kinds, flow control, pausing, BufferedProtocol ---------------------

class _Echo(asyncio.Protocol):
    """Echoes through a random mix of write(), writelines(), mutable buffers reused at once,
    reading paused while writing is, and short pauses of its own."""

    def __init__(self, rnd, lost):
        self.rnd = rnd
        self.lost = lost
        self.writing_paused = False

    def connection_made(self, transport):
        self.transport = transport
        if self.rnd.random() < 0.5:
            transport.set_write_buffer_limits(high=self.rnd.choice([0, 1, 1000, 100_000]))

    def pause_writing(self):
        self.writing_paused = True
        if not self.transport.is_closing() and self.transport.is_reading():
            self.transport.pause_reading()

    def resume_writing(self):
        self.writing_paused = False
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def data_received(self, data):
        self.echo(data)

    def echo(self, data):
        t, r = self.transport, self.rnd.random()
        if r < 0.25:
            t.write(data)
        elif r < 0.45:
            buf = bytearray(data)
            t.write(buf)
            buf[:] = b'X' * len(buf)                  # reused the moment write() returned
        elif r < 0.6:
            t.write(memoryview(bytearray(data)))
        elif r < 0.8:
            k = self.rnd.randint(0, len(data))
            t.writelines([data[:k], bytearray(data[k:])])
        else:
            for i in range(0, len(data), 3000):
                t.write(data[i:i + 3000])
        if self.rnd.random() < 0.1 and t.is_reading() and not self.writing_paused:
            t.pause_reading()
            asyncio.get_running_loop().call_later(self.rnd.choice([0, 0.001]), self.resume)

    def resume(self):
        if not self.transport.is_closing() and not self.writing_paused:
            self.transport.resume_reading()

    def eof_received(self):
        self.transport.write_eof()
        self.transport.close()
        return True

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(exc)


class _BufferedEcho(_Echo):
    def __init__(self, rnd, lost):
        super().__init__(rnd, lost)
        self.buffer = bytearray(rnd.choice([1, 100, 4096, 70_000]))

    def get_buffer(self, sizehint):
        return self.buffer

    def buffer_updated(self, nbytes):
        self.echo(bytes(self.buffer[:nbytes]) if self.rnd.random() < 0.5
                  else self.buffer[:nbytes])


async def _echo_scenario(seed):
    rnd = random.Random(seed)
    loop = asyncio.get_running_loop()
    lost = loop.create_future()
    cls = _BufferedEcho if rnd.random() < 0.4 else _Echo
    server = await loop.create_server(lambda: cls(rnd, lost), '127.0.0.1', 0)
    reader, writer = await asyncio.open_connection(
        *server.sockets[0].getsockname(), limit=rnd.choice([10, 2 ** 16]))
    payload = pattern(rnd.choice([0, 1, 1000, 70_000, 500_000, 2_000_000]), seed=seed)

    async def send():
        i = 0
        while i < len(payload):
            n = rnd.choice([1, 100, 1024, 16384, 100_000, 1_000_000])
            writer.write(payload[i:i + n])
            i += n
            if rnd.random() < 0.5:
                await writer.drain()
        await writer.drain()
        writer.write_eof()

    async def receive():
        got = bytearray()
        while True:
            kind = rnd.random()
            if kind < 0.3:
                chunk = await reader.read(rnd.choice([1, 1000, 65536]))
            elif kind < 0.5:
                try:
                    chunk = await reader.readexactly(rnd.choice([1, 5000]))
                except asyncio.IncompleteReadError as e:
                    got += e.partial
                    return bytes(got)
            else:
                chunk = await reader.read(100_000)
            if not chunk:
                return bytes(got)
            got += chunk
            if rnd.random() < 0.05:
                await asyncio.sleep(0.001)

    _, echoed = await asyncio.gather(send(), receive())
    writer.close()
    await writer.wait_closed()
    exc = await asyncio.wait_for(lost, 10)
    server.close()
    await server.wait_closed()
    return echoed == payload, len(echoed), len(payload), exc


async def _echo_scenarios(seeds):
    return [await asyncio.wait_for(_echo_scenario(seed), 30) for seed in seeds]


@pytest.mark.parametrize('loop_name', ['uringloop', 'asyncio'])
def test_echo_survives_every_mix_of_writes_pauses_and_limits(loop_name):
    if loop_name == 'asyncio' and not STOCK_WRITELINES_FLOW_CONTROL:
        pytest.skip("this Python's stock writelines() ignores flow control (gh-127655)")
    results = run_on(loop_name, _echo_scenarios, range(60))
    bad = [(seed, r) for seed, r in enumerate(results) if r != (True, r[2], r[2], None)]
    assert not bad, bad


# ---- sendfile: the same answers as the stock loop --------------------------------------------

async def _sendfile_scenario(seed, path, size):
    rnd = random.Random(seed)
    loop = asyncio.get_running_loop()
    offset = rnd.choice([0, 0, 1, 500, size // 2, size, size + 10])
    count = rnd.choice([None, None, 0, 1, 1000, 100_000, size * 2])
    through_transport = rnd.random() < 0.5
    fallback = rnd.random() < 0.5
    outcome = {}
    received = bytearray()
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    listener.listen()
    listener.setblocking(False)

    async def collect(sock):
        while True:
            chunk = await loop.sock_recv(sock, 65536)
            if not chunk:
                return
            received.extend(chunk)

    with open(path, 'rb') as f:
        if rnd.random() < 0.3:
            f.seek(rnd.choice([0, 7, size]))
        try:
            if through_transport:
                accepting = loop.create_task(loop.sock_accept(listener))
                transport, _ = await loop.create_connection(
                    asyncio.Protocol, *listener.getsockname())
                peer, _ = await accepting
                collecting = loop.create_task(collect(peer))
                if rnd.random() < 0.5:
                    transport.write(b'head')
                try:
                    outcome['sent'] = await loop.sendfile(transport, f, offset, count,
                                                          fallback=fallback)
                except Exception as e:
                    outcome['error'] = type(e).__name__
                if rnd.random() < 0.5 and not transport.is_closing():
                    transport.write(b'tail')
                transport.close()
            else:
                sock = socket.socket()
                sock.setblocking(False)
                await loop.sock_connect(sock, listener.getsockname())
                peer, _ = await loop.sock_accept(listener)
                collecting = loop.create_task(collect(peer))
                try:
                    outcome['sent'] = await loop.sock_sendfile(sock, f, offset, count,
                                                               fallback=fallback)
                except Exception as e:
                    outcome['error'] = type(e).__name__
                sock.shutdown(socket.SHUT_WR)
                await asyncio.sleep(0)
                sock.close()
            await collecting
            peer.close()
        finally:
            listener.close()
        outcome['position'] = f.tell()
    outcome['received'] = bytes(received)
    return outcome


async def _sendfile_scenarios(seeds, path, size):
    return [await asyncio.wait_for(_sendfile_scenario(seed, path, size), 20) for seed in seeds]


@pytest.mark.parametrize('size', [0, 1000, 300_000])
def test_sendfile_answers_as_the_stock_loop(size, tmp_path):
    path = tmp_path / 'file'
    path.write_bytes(pattern(size, seed=size))
    seeds = range(40)
    stock = run_on('asyncio', _sendfile_scenarios, seeds, path, size)
    ours = run_on('uringloop', _sendfile_scenarios, seeds, path, size)
    differ = [(seed, s, o) for seed, s, o in zip(seeds, stock, ours) if s != o]
    assert not differ, differ[:3]


# ---- protocol call sequences around closing -------------------------------------------------

_BIG = pattern(3_000_000)


def _close_plans():
    later = lambda delay, fn: asyncio.get_running_loop().call_later(delay, fn)  # noqa: E731
    plans = {
        'peer closes': ({}, 'send_close'),
        'peer shuts its write side, answered': (
            {'eof': lambda p: (p.t.write(b'r' * 1000), p.t.close()) and None}, 'send_shut'),
        'peer resets': ({}, 'send_reset'),
        'close in connection_made': ({'made': lambda p: p.t.close()}, 'send_close'),
        'abort in connection_made': ({'made': lambda p: p.t.abort()}, 'send_close'),
        'large write, close': ({'made': lambda p: (p.t.write(_BIG), p.t.close())}, 'read_all'),
        'large write, abort': ({'made': lambda p: (p.t.write(_BIG), p.t.abort())}, 'read_all'),
        'write_eof, then data': ({'made': lambda p: p.t.write_eof()}, 'send_close'),
        'data_received raises': ({'data': lambda p, d: 1 / 0}, 'send_close'),
        'large write, peer resets': ({'made': lambda p: p.t.write(_BIG)}, 'reset_at_once'),
        'pause, close': ({'made': lambda p: (p.t.pause_reading(), p.t.close())}, 'send_close'),
        'large write under a low limit, close': (
            {'made': lambda p: (p.t.set_write_buffer_limits(high=1000), p.t.write(_BIG),
                                p.t.close())}, 'read_all'),
        'writelines, close': (
            {'made': lambda p: (p.t.writelines([_BIG[:100_000], bytearray(5000)]),
                                p.t.close())}, 'read_all'),
        'close twice, abort': (
            {'made': lambda p: (p.t.close(), p.t.close(), p.t.abort())}, 'send_close'),
        'paused a while': (
            {'made': lambda p: (p.t.pause_reading(), later(0.1, p.t.resume_reading))},
            'send_close'),
        'large write, write_eof, close': (
            {'made': lambda p: (p.t.write(_BIG), p.t.write_eof(), p.t.close())}, 'read_all'),
        'kept open after EOF, closed later': (
            {'eof': lambda p: (later(0.05, p.t.close), True)[1]}, 'send_shut'),
        'pause in data_received': (
            {'data': lambda p, d: (p.t.pause_reading(), later(0.05, p.t.resume_reading))},
            'send_close'),
        'pause twice, resume twice': (
            {'made': lambda p: (p.t.pause_reading(), p.t.pause_reading(), p.t.resume_reading(),
                                p.t.resume_reading())}, 'send_close'),
    }
    if STOCK_WRITELINES_FLOW_CONTROL:
        plans['large writelines, close'] = (
            {'made': lambda p: (p.t.writelines([_BIG, bytearray(_BIG)]), p.t.close())},
            'read_all')
    return plans


class _Calls(asyncio.Protocol):
    def __init__(self, calls, plan, lost):
        self.calls, self.plan, self.lost = calls, plan, lost

    def connection_made(self, transport):
        self.t = transport
        self.calls.append('made')
        if 'made' in self.plan:
            self.plan['made'](self)

    def data_received(self, data):
        if self.calls[-1] != 'data':
            self.calls.append('data')       # how the stream is cut may differ; that it came not
        if 'data' in self.plan:
            self.plan['data'](self, data)

    def eof_received(self):
        self.calls.append('eof')
        return self.plan['eof'](self) if 'eof' in self.plan else None

    def pause_writing(self):
        self.calls.append('pause_writing')

    def resume_writing(self):
        self.calls.append('resume_writing')

    def connection_lost(self, exc):
        self.calls.append(('lost', type(exc).__name__ if exc else None, self.t.is_closing()))
        if not self.lost.done():
            self.lost.set_result(None)


async def _peer(kind, address):
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    await loop.sock_connect(sock, address)
    outcome = None
    if kind in ('send_close', 'send_shut', 'send_reset'):
        await loop.sock_sendall(sock, b'p' * 5000)
        await asyncio.sleep(0.05)
        if kind == 'send_shut':
            sock.shutdown(socket.SHUT_WR)
            outcome = 0
            while chunk := await loop.sock_recv(sock, 65536):
                outcome += len(chunk)
        elif kind == 'send_reset':
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
    elif kind == 'read_all':
        got = 0
        try:
            while chunk := await loop.sock_recv(sock, 65536):
                got += len(chunk)
            outcome = ('all', got)
        except ConnectionResetError:
            outcome = ('reset', got > 0)
    elif kind == 'reset_at_once':
        await asyncio.sleep(0.05)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
    sock.close()
    return outcome


async def _close_scenarios():
    loop = asyncio.get_running_loop()
    results = {}
    for name, (plan, kind) in _close_plans().items():
        reported = []
        loop.set_exception_handler(
            lambda loop, context: reported.append(type(context.get('exception')).__name__))
        calls = []
        lost = loop.create_future()
        server = await loop.create_server(lambda: _Calls(calls, plan, lost), '127.0.0.1', 0)
        peer = await asyncio.wait_for(_peer(kind, server.sockets[0].getsockname()), 10)
        await asyncio.wait_for(lost, 10)
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.02)
        results[name] = (calls, peer, reported)
    return results


def test_protocol_calls_around_closing_are_the_stock_loops():
    stock = run_on('asyncio', _close_scenarios)
    ours = run_on('uringloop', _close_scenarios)
    differ = {name: (stock[name], ours[name]) for name in stock if stock[name] != ours[name]}
    assert not differ, differ
