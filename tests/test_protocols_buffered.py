"""Stream transports delivering to a BufferedProtocol: get_buffer()/buffer_updated(), pausing,
their failures, large reads, and switches between protocol kinds -- run on uringloop and on
the stock loop."""

import asyncio
import socket

import pytest

from helpers import bounded, pattern
from protocol_helpers import Recorder, connected_pair, shut, BufferedRecorder


@pytest.mark.asyncio
@bounded()
@pytest.mark.parametrize('size', [1, 100, 65536, 1 << 20])
async def test_buffered_protocol_receives_everything(size):
    server, sender, client = await connected_pair(
        client_protocol=lambda: BufferedRecorder(size))
    payload = pattern(2 * 1024 * 1024 if size > 1 else 20_000)
    sender.transport.write(payload)
    sender.transport.write_eof()
    await client.eof
    assert bytes(client.data) == payload
    assert await client.lost is None          # eof_received returned None: closed
    assert client.events == ['made', 'data', 'eof', 'lost']
    await sender.lost
    server.close()
    await server.wait_closed()


@pytest.mark.asyncio
@bounded()
async def test_buffered_protocol_pause_reading_keeps_order():
    loop = asyncio.get_running_loop()

    class PausingBuffered(BufferedRecorder):
        in_pause = 0

        def buffer_updated(self, nbytes):
            if not self.transport.is_reading():
                PausingBuffered.in_pause += 1
            super().buffer_updated(nbytes)
            if len(self.data) // 100_000 > getattr(self, 'pauses', 0):
                self.pauses = getattr(self, 'pauses', 0) + 1
                self.transport.pause_reading()
                loop.call_later(0.005, self.transport.resume_reading)

    server, peer, client = await connected_pair(client_protocol=lambda: PausingBuffered(4096))
    payload = pattern(2 * 1024 * 1024)
    peer.transport.write(payload)
    peer.transport.write_eof()
    await client.eof
    assert bytes(client.data) == payload
    assert PausingBuffered.in_pause == 0
    await client.lost
    await shut(server, peer)


@pytest.mark.asyncio
@bounded()
async def test_resume_reading_does_not_call_get_buffer_from_inside_it():
    """A BufferedProtocol that resumes reading from its own buffer_updated() is not asked for
    its next buffer before that callback has returned -- the stock transport's reader asks
    from the loop.  uringloop armed the receive inside resume_reading(), calling get_buffer()
    there."""
    class Resuming(BufferedRecorder):
        inside = False
        asked_inside = 0

        def get_buffer(self, sizehint):
            if self.inside:
                Resuming.asked_inside += 1
            return super().get_buffer(sizehint)

        def buffer_updated(self, nbytes):
            super().buffer_updated(nbytes)
            self.transport.pause_reading()
            self.inside = True
            try:
                self.transport.resume_reading()
            finally:
                self.inside = False

    server, peer, client = await connected_pair(client_protocol=lambda: Resuming(4096))
    payload = pattern(200_000)
    peer.transport.write(payload)
    peer.transport.write_eof()
    await client.eof
    assert bytes(client.data) == payload
    assert Resuming.asked_inside == 0
    await client.lost
    await shut(server, peer)


@pytest.mark.asyncio
@bounded()
async def test_buffered_protocol_get_buffer_failures_are_fatal():
    loop = asyncio.get_running_loop()
    errors = []
    loop.set_exception_handler(lambda loop, ctx: errors.append(ctx))

    class EmptyBuffer(BufferedRecorder):
        def get_buffer(self, sizehint):
            return bytearray()

    class Raising(BufferedRecorder):
        def get_buffer(self, sizehint):
            raise OverflowError('no buffer')

    for proto_class, exc_type in ((EmptyBuffer, RuntimeError), (Raising, OverflowError)):
        errors.clear()
        server, peer, client = await connected_pair(client_protocol=proto_class)
        peer.transport.write(b'data')
        exc = await client.lost
        assert isinstance(exc, exc_type)
        assert errors[0]['message'] == 'Fatal error: protocol.get_buffer() call failed.'
        await shut(server, peer)


@pytest.mark.asyncio
@bounded()
@pytest.mark.parametrize('buffer', [b'\0' * 64, memoryview(bytearray(64))[::2], 'text'],
                         ids=['bytes', 'strided view', 'str'])
async def test_a_buffer_that_cannot_be_written_is_recv_intos_type_error(buffer):
    """get_buffer() giving what socket.recv_into() cannot write into: a fatal read error with
    recv_into()'s TypeError and message, as the stock transport's recv_into() raises it.
    (uringloop's message was its own: "a writable bytes-like object is required".)"""
    loop = asyncio.get_running_loop()
    errors = []
    loop.set_exception_handler(lambda loop, ctx: errors.append(ctx))

    class Unwritable(BufferedRecorder):
        def get_buffer(self, sizehint):
            return buffer

    server, peer, client = await connected_pair(client_protocol=Unwritable)
    peer.transport.write(b'data')
    exc = await client.lost
    assert type(exc) is TypeError
    assert str(exc) == ('recv_into() argument 1 must be read-write bytes-like object, '
                        f'not {type(buffer).__name__}')
    assert [e['message'] for e in errors] == ['Fatal read error on socket transport']
    await shut(server, peer)


@pytest.mark.asyncio
@bounded()
async def test_buffered_protocol_buffer_updated_failure_is_fatal():
    loop = asyncio.get_running_loop()
    errors = []
    loop.set_exception_handler(lambda loop, ctx: errors.append(ctx))

    class Raising(BufferedRecorder):
        def buffer_updated(self, nbytes):
            raise LookupError('updated')

    server, peer, client = await connected_pair(client_protocol=Raising)
    peer.transport.write(b'data')
    exc = await client.lost
    assert isinstance(exc, LookupError)
    assert errors[0]['message'] == 'Fatal error: protocol.buffer_updated() call failed.'
    await shut(server, peer)


class LargeThenFailing(BufferedRecorder):
    """Receives normally until `fail` is set, then fails the way `fail` names.  The first
    large transfer moves a uringloop connection to its large-read path (a poll, then recv(2)
    into get_buffer()'s buffer), so the failures are met there too."""
    fail = None

    def get_buffer(self, sizehint):
        if self.fail == 'get_buffer raises':
            raise OverflowError('no buffer')
        if self.fail == 'empty buffer':
            return bytearray()
        if self.fail == 'read-only buffer':
            return b'\0' * 65536
        return super().get_buffer(sizehint)

    def buffer_updated(self, nbytes):
        if self.fail == 'buffer_updated raises':
            raise LookupError('updated')
        super().buffer_updated(nbytes)


@pytest.mark.asyncio
@bounded()
@pytest.mark.parametrize('fail, exc_type, message', [
    ('get_buffer raises', OverflowError, 'Fatal error: protocol.get_buffer() call failed.'),
    ('empty buffer', RuntimeError, 'Fatal error: protocol.get_buffer() call failed.'),
    ('buffer_updated raises', LookupError, 'Fatal error: protocol.buffer_updated() call failed.'),
    ('read-only buffer', TypeError, 'Fatal read error on socket transport'),
])
async def test_buffered_protocol_failures_after_large_reads_are_fatal(fail, exc_type, message):
    loop = asyncio.get_running_loop()
    errors = []
    loop.set_exception_handler(lambda loop, ctx: errors.append(ctx))
    server, peer, client = await connected_pair(client_protocol=LargeThenFailing)
    first = pattern(1 << 20)
    peer.transport.write(first)
    while len(client.data) < len(first):
        await asyncio.sleep(0.001)
    assert bytes(client.data) == first
    client.fail = fail
    peer.transport.write(pattern(200_000, seed=7))
    exc = await client.lost
    assert isinstance(exc, exc_type)
    assert [e['message'] for e in errors] == [message]
    assert client.events.count('lost') == 1
    await shut(server, peer)


@pytest.mark.asyncio
@bounded()
@pytest.mark.parametrize('action', ['pause', 'close'])
async def test_buffered_protocol_stops_inside_a_burst_of_large_reads(action):
    """pause_reading() or close() inside buffer_updated(), in the middle of a burst that fills
    the protocol's buffer again and again: no buffer_updated() follows until resume_reading()
    (then every byte, in order) or ever (close)."""
    loop = asyncio.get_running_loop()

    class Stopping(BufferedRecorder):
        calls_while_stopped = 0
        stopped = False

        def buffer_updated(self, nbytes):
            if self.stopped:
                Stopping.calls_while_stopped += 1
            super().buffer_updated(nbytes)
            if len(self.data) >= 300_000 and not self.stopped and not hasattr(self, 'done'):
                self.done = True
                self.stopped = True
                if action == 'pause':
                    self.transport.pause_reading()
                    loop.call_later(0.05, self.resume)
                else:
                    self.transport.close()

        def resume(self):
            self.stopped = False
            self.transport.resume_reading()

    server, peer, client = await connected_pair(client_protocol=lambda: Stopping(16384))
    payload = pattern(4 * 1024 * 1024)
    peer.transport.write(payload)
    if action == 'pause':
        peer.transport.write_eof()
        await client.eof
        assert bytes(client.data) == payload
    else:
        assert await client.lost is None
        assert payload.startswith(bytes(client.data))
        await asyncio.sleep(0.05)
    assert Stopping.calls_while_stopped == 0
    assert client.events.count('lost') <= 1
    await shut(server, peer)


@pytest.mark.asyncio
@bounded()
async def test_switch_between_protocol_kinds():
    server, peer, client = await connected_pair()
    t = client.transport
    buffered = BufferedRecorder(1000)
    buffered.transport = t
    buffered.events.append('made')
    t.set_protocol(buffered)
    part1 = pattern(200_000)
    peer.transport.write(part1)
    while len(buffered.data) < len(part1):
        await asyncio.sleep(0.001)
    back = Recorder()
    back.transport = t
    t.set_protocol(back)
    part2 = pattern(200_000, seed=99)
    peer.transport.write(part2)
    assert await back.received(len(part2)) == part2
    assert bytes(buffered.data) == part1
    peer.transport.close()
    await back.lost
    await peer.lost
    server.close()
    await server.wait_closed()


@pytest.mark.asyncio
async def test_switch_to_a_plain_protocol_inside_buffer_updated_gets_the_rest():
    """Protocol -> BufferedProtocol with a small buffer -> Protocol again from inside
    buffer_updated(), during a burst: every byte arrives, the rest through the new protocol's
    data_received().  (uringloop went on copying what it held through get_buffer(), which the
    plain protocol lacks: a fatal error and most of the burst lost.)  get_buffer() is always
    asked with -1, as the stock transport asks."""
    loop = asyncio.get_running_loop()
    got = bytearray()
    hints = []
    done = loop.create_future()

    class Plain(asyncio.Protocol):
        def __init__(self, switch):
            self.switch = switch

        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            got.extend(data)
            if self.switch:
                self.switch = False
                self.transport.set_protocol(Buffered(self.transport))

        def eof_received(self):
            done.set_result(None)

        def connection_lost(self, exc):
            if not done.done():
                done.set_exception(exc or ConnectionError("lost before EOF"))

    class Buffered(asyncio.BufferedProtocol):
        def __init__(self, transport):
            self.transport = transport
            self.buf = bytearray(1000)

        def get_buffer(self, sizehint):
            hints.append(sizehint)
            return self.buf

        def buffer_updated(self, nbytes):
            got.extend(self.buf[:nbytes])
            plain = Plain(False)
            plain.transport = self.transport
            self.transport.set_protocol(plain)

        def eof_received(self):
            done.set_result(None)

        def connection_lost(self, exc):
            if not done.done():
                done.set_exception(exc or ConnectionError("lost before EOF"))

    a, b = socket.socketpair()
    with b:
        b.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 21)
        transport, _ = await loop.connect_accepted_socket(lambda: Plain(True), a)
        await asyncio.sleep(0.05)
        payload = pattern(200 * 1024)
        b.sendall(payload)
        b.shutdown(socket.SHUT_WR)
        await asyncio.wait_for(done, 10)
        transport.close()
    assert bytes(got) == payload
    assert set(hints) <= {-1}


@pytest.mark.asyncio
@bounded()
async def test_get_buffer_is_asked_for_only_when_bytes_have_arrived():
    """The stock transport (and uvloop) calls get_buffer() when the socket has bytes for it,
    never on an idle connection: a get_buffer() that fails while nothing arrives leaves the
    connection open, and the buffer it returned is not held between reads -- a bytearray can
    be resized then.  uringloop lent the buffer to a receive armed in advance: an idle
    connection's failing get_buffer() was a fatal error at once, and resizing the buffer
    raised BufferError ("Existing exports of data")."""
    loop = asyncio.get_running_loop()
    errors = []
    loop.set_exception_handler(lambda loop, ctx: errors.append(ctx))

    class Counting(BufferedRecorder):
        asked = 0
        refuse = True

        def get_buffer(self, sizehint):
            self.asked += 1
            if self.refuse:
                raise OverflowError('not now')
            return self.buffer

    server, peer, client = await connected_pair(client_protocol=lambda: Counting(16))
    for _ in range(10):
        await asyncio.sleep(0.005)
    assert client.asked == 0
    assert not client.lost.done() and errors == []
    client.buffer.extend(b'\0' * 48)            # resized while idle: nothing holds it
    client.refuse = False
    peer.transport.write(b'x' * 40)
    while len(client.data) < 40:
        await asyncio.sleep(0.005)
    assert bytes(client.data) == b'x' * 40
    client.buffer.extend(b'\0' * 64)            # and again after the read
    assert errors == []
    await shut(server, peer)


@pytest.mark.asyncio
@bounded()
async def test_a_buffer_replaced_between_reads_gets_the_next_bytes():
    """A protocol that gives get_buffer() a new buffer once it has taken the last one's bytes
    (here from a task, between reads) finds the next bytes in the new one.  uringloop lent the
    old buffer to a receive armed in advance: the kernel wrote into that, and the protocol
    read zeros from its new buffer."""
    class Replacing(BufferedRecorder):
        def get_buffer(self, sizehint):
            return self.buffer

    server, peer, client = await connected_pair(client_protocol=lambda: Replacing(64))
    peer.transport.write(b'first')
    while len(client.data) < 5:
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.01)
    client.buffer = bytearray(64)
    peer.transport.write(b'second message')
    while len(client.data) < 19:
        await asyncio.sleep(0.005)
    assert bytes(client.data) == b'firstsecond message'
    await shut(server, peer)


@pytest.mark.asyncio
@bounded()
@pytest.mark.parametrize('size', [64, 65536])
@pytest.mark.parametrize('chunk', [1000, 60_000])
async def test_a_buffer_is_filled_once_per_iteration(chunk, size):
    """The stock transport reads once per iteration, so a protocol may leave the bytes in the
    buffer get_buffer() returns for a callback of its own (call_soon() from buffer_updated())
    to take: the next read comes after it.  Both for bytes that arrive in small pieces and for
    a stream that arrives faster than the buffer takes it, into a small buffer and a large one.
    uringloop filled the buffer again before such callbacks had run (two receives of one batch
    of completions, a receive right after a fill from its stash, or up to 4 reads in a row into
    a buffer of 16 KiB or more) and the protocol took the later bytes twice."""
    loop = asyncio.get_running_loop()

    class Deferring(BufferedRecorder):
        overwritten = 0
        waiting = 0

        def get_buffer(self, sizehint):
            if self.waiting:
                Deferring.overwritten += 1
            return self.buffer

        def buffer_updated(self, nbytes):
            self.waiting += 1
            loop.call_soon(self.take, nbytes)

        def take(self, nbytes):
            self.waiting -= 1
            self.data += self.buffer[:nbytes]

    server, peer, client = await connected_pair(client_protocol=lambda: Deferring(size))
    payload = pattern(300_000 if size < 1000 else 3_000_000)
    for start in range(0, len(payload), chunk):
        peer.transport.write(payload[start:start + chunk])
    peer.transport.write_eof()
    await client.eof
    await asyncio.sleep(0)
    assert Deferring.overwritten == 0
    assert bytes(client.data) == payload
    await shut(server, peer)


@pytest.mark.parametrize('exc_type', [KeyboardInterrupt, SystemExit])
def test_an_interrupt_out_of_get_buffer_loses_nothing(new_loop, exc_type):
    """KeyboardInterrupt or SystemExit out of get_buffer() leaves run_until_complete(); run
    again, the loop delivers the bytes that were waiting and reads on -- the stock reader stays
    registered through it.  uringloop never read the connection again."""
    loop = new_loop()
    got = bytearray()

    class Interrupting(asyncio.BufferedProtocol):
        interrupts = 1
        buf = bytearray(16)

        def get_buffer(self, sizehint):
            if self.interrupts:
                self.interrupts -= 1
                raise exc_type()
            return self.buf

        def buffer_updated(self, nbytes):
            got.extend(self.buf[:nbytes])

    a, peer = socket.socketpair()
    with peer:
        transport, _ = loop.run_until_complete(loop.create_connection(Interrupting, sock=a))
        peer.sendall(b'0123456789' * 3)
        deadline = loop.time() + 5
        with pytest.raises(exc_type):
            while loop.time() < deadline:
                loop.run_until_complete(asyncio.sleep(0.01))
        peer.sendall(b'more')
        while len(got) < 34 and loop.time() < deadline:
            loop.run_until_complete(asyncio.sleep(0.01))
        assert bytes(got) == b'0123456789' * 3 + b'more'
        transport.close()
        loop.run_until_complete(asyncio.sleep(0.01))
