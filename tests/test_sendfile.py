"""loop.sock_sendfile and loop.sendfile: native (uringloop: splice on the ring; stock:
os.sendfile) and the fallbacks, run on uringloop and on the stock loop."""

import asyncio
import contextlib
import errno
import hashlib
import io
import os
import socket
import sys
import time

import pytest

from helpers import bounded, certificate, contexts  # noqa: F401 (fixtures)


@pytest.fixture
def data_file(tmp_path):
    def make(size):
        path = tmp_path / f'data-{size}'
        path.write_bytes(os.urandom(size))
        return path
    return make


async def socket_pair():
    """Connected non-blocking TCP sockets (sender, receiver)."""
    loop = asyncio.get_running_loop()
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    listener.listen()
    listener.setblocking(False)
    with listener:
        sender = socket.socket()
        sender.setblocking(False)
        accept = asyncio.ensure_future(loop.sock_accept(listener))
        await loop.sock_connect(sender, listener.getsockname())
        receiver, _ = await accept
    return sender, receiver


async def read_all(sock, expected=None):
    loop = asyncio.get_running_loop()
    chunks = []
    n = 0
    while expected is None or n < expected:
        chunk = await loop.sock_recv(sock, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
        n += len(chunk)
    return b''.join(chunks)


def open_fds():
    return len(os.listdir('/proc/self/fd'))


@pytest.mark.asyncio
@bounded(20)
@pytest.mark.parametrize('size', [1, 100_000, 5 * 1024 * 1024 + 17])
async def test_sock_sendfile_whole_file(data_file, size):
    loop = asyncio.get_running_loop()
    path = data_file(size)
    sender, receiver = await socket_pair()
    with sender, receiver, open(path, 'rb') as f:
        fds = open_fds()
        reading = asyncio.ensure_future(read_all(receiver, size))
        assert await loop.sock_sendfile(sender, f) == size
        assert f.tell() == size
        assert await reading == path.read_bytes()
        assert open_fds() == fds


@pytest.mark.asyncio
@bounded(20)
async def test_sock_sendfile_offset_and_count(data_file):
    loop = asyncio.get_running_loop()
    path = data_file(3_000_000)
    content = path.read_bytes()
    sender, receiver = await socket_pair()
    with sender, receiver, open(path, 'rb') as f:
        f.seek(10)           # the current position is ignored: offset is explicit
        reading = asyncio.ensure_future(read_all(receiver, 1_500_000))
        assert await loop.sock_sendfile(sender, f, 1000, 1_500_000) == 1_500_000
        assert f.tell() == 1_501_000
        assert await reading == content[1000:1_501_000]
        # A count past the end stops at the end of the file.
        reading = asyncio.ensure_future(read_all(receiver, 1000))
        assert await loop.sock_sendfile(sender, f, len(content) - 1000, 50_000) == 1000
        assert await reading == content[-1000:]
        assert f.tell() == len(content)


@pytest.mark.asyncio
@bounded(20)
@pytest.mark.parametrize("count", [2 ** 63, 2 ** 70])
async def test_sock_sendfile_of_a_count_no_c_integer_holds(data_file, count):
    """3.13 sends the whole file, as for any count past its end (each os.sendfile() asks for
    at most sys.maxsize // 2 + 1 bytes); before it the count is refused with OverflowError,
    nothing sent.  (uringloop raised OverflowError on 3.13 too.)"""
    loop = asyncio.get_running_loop()
    path = data_file(100_000)
    sender, receiver = await socket_pair()
    with sender, receiver, open(path, 'rb') as f:
        if sys.version_info < (3, 13):
            with pytest.raises(OverflowError):
                await loop.sock_sendfile(sender, f, 0, count)
            sender.close()
            assert await read_all(receiver) == b''
        else:
            reading = asyncio.ensure_future(read_all(receiver, 100_000))
            assert await loop.sock_sendfile(sender, f, 0, count) == 100_000
            assert await reading == path.read_bytes()
            assert f.tell() == 100_000


@pytest.mark.asyncio
@bounded(20)
async def test_sock_sendfile_empty_file(tmp_path):
    loop = asyncio.get_running_loop()
    path = tmp_path / 'empty'
    path.write_bytes(b'')
    sender, receiver = await socket_pair()
    with sender, receiver, open(path, 'rb') as f:
        assert await loop.sock_sendfile(sender, f) == 0
        assert f.tell() == 0


@contextlib.contextmanager
def pipe_holding(data):
    """A pipe's read end (a file object) with `data` written into it; the write end is closed
    on exit."""
    r, w = os.pipe()
    try:
        os.write(w, data)
        with open(r, "rb", buffering=0) as pipe:
            yield pipe
    finally:
        os.close(w)


@pytest.mark.asyncio
@bounded(20)
async def test_sock_sendfile_of_a_pipe_without_a_count_sends_nothing():
    """A pipe's size is 0, and with no count given that is what the stock loop sends: it
    returns 0 at once and leaves the pipe's bytes where they are.  (uringloop fell back to
    reading the pipe, sent what was in it, then failed seeking it.)"""
    loop = asyncio.get_running_loop()
    sender, receiver = await socket_pair()
    with sender, receiver, pipe_holding(b"stays in the pipe") as pipe:
        assert await loop.sock_sendfile(sender, pipe) == 0
        assert pipe.read(100) == b"stays in the pipe"


def kernel_sends_from(path):
    """Whether os.sendfile() -- the stock loop's native path -- can send from the device."""
    a, b = socket.socketpair()
    with a, b, open(path, 'rb') as f:
        try:
            return os.sendfile(a.fileno(), f.fileno(), 0, 10) == 10
        except OSError:
            return False


@pytest.mark.asyncio
@bounded(20)
async def test_sock_sendfile_from_a_device_with_a_count_sends_natively():
    """A character device the kernel can send from is sent natively, as the stock loop's
    os.sendfile() sends it: fallback=False does not refuse it.  (uringloop refused every file
    but regular files and block devices: SendfileNotAvailableError, nothing sent.)"""
    if not kernel_sends_from('/dev/zero'):
        pytest.skip("this kernel's sendfile cannot read /dev/zero")
    loop = asyncio.get_running_loop()
    sender, receiver = await socket_pair()
    with sender, receiver, open('/dev/zero', 'rb') as zero:
        reading = asyncio.ensure_future(read_all(receiver, 300_000))
        assert await loop.sock_sendfile(sender, zero, 0, 300_000, fallback=False) == 300_000
        assert await reading == bytes(300_000)


@pytest.mark.asyncio
@bounded(20)
async def test_sock_sendfile_of_a_pipe_with_a_count_is_not_native():
    """A pipe cannot be sent from at an offset: SendfileNotAvailableError without fallback,
    and the pipe's bytes stay where they were."""
    loop = asyncio.get_running_loop()
    sender, receiver = await socket_pair()
    with sender, receiver, pipe_holding(b"stays in the pipe") as pipe:
        with pytest.raises(asyncio.SendfileNotAvailableError):
            await loop.sock_sendfile(sender, pipe, 0, 10, fallback=False)
        assert pipe.read(100) == b"stays in the pipe"


@pytest.mark.asyncio
@bounded(20)
async def test_sock_sendfile_on_a_closed_socket(data_file):
    """A socket closed before the call: natively nothing can be sent (SendfileNotAvailableError,
    as the stock loop's failed os.sendfile() becomes); the fallback then fails as
    sock_sendall() does on it, with EBADF.  (uringloop raised EBADF from the native path.)"""
    loop = asyncio.get_running_loop()
    path = data_file(100_000)
    for fallback in (False, True):
        sender, receiver = await socket_pair()
        sender.close()
        with receiver, open(path, 'rb') as f:
            if fallback:
                with pytest.raises(OSError) as caught:
                    await loop.sock_sendfile(sender, f, fallback=True)
                assert caught.value.errno == errno.EBADF
            else:
                with pytest.raises(asyncio.SendfileNotAvailableError,
                                   match="^os.sendfile call failed$"):   # the stock words
                    await loop.sock_sendfile(sender, f, fallback=False)
                assert f.tell() == 0


@pytest.mark.asyncio
@bounded(20)
async def test_sock_sendfile_non_regular_file_falls_back():
    loop = asyncio.get_running_loop()
    payload = os.urandom(200_000)
    sender, receiver = await socket_pair()
    with sender, receiver:
        with pytest.raises(asyncio.SendfileNotAvailableError):
            await loop.sock_sendfile(sender, io.BytesIO(payload), fallback=False)
        reading = asyncio.ensure_future(read_all(receiver, len(payload)))
        stream = io.BytesIO(payload)
        assert await loop.sock_sendfile(sender, stream) == len(payload)
        assert await reading == payload
        assert stream.tell() == len(payload)


@pytest.mark.asyncio
@bounded(20)
async def test_sock_sendfile_argument_errors(data_file, tmp_path):
    loop = asyncio.get_running_loop()
    path = data_file(10)
    sender, receiver = await socket_pair()
    with sender, receiver, open(path, 'rb') as f:
        with open(path, 'r') as text:
            with pytest.raises(ValueError):
                await loop.sock_sendfile(sender, text)
        with pytest.raises(ValueError):
            await loop.sock_sendfile(sender, f, -1)
        with pytest.raises(TypeError):
            await loop.sock_sendfile(sender, f, 1.5)
        with pytest.raises(ValueError):
            await loop.sock_sendfile(sender, f, 0, 0)
        with pytest.raises(TypeError):
            await loop.sock_sendfile(sender, f, 0, '10')
        with socket.socket(type=socket.SOCK_DGRAM) as udp:
            udp.setblocking(False)
            with pytest.raises(ValueError):
                await loop.sock_sendfile(udp, f)


@pytest.mark.asyncio
@bounded(20)
async def test_sock_sendfile_to_closed_peer_raises(data_file):
    loop = asyncio.get_running_loop()
    path = data_file(64 * 1024 * 1024)
    sender, receiver = await socket_pair()
    with sender, open(path, 'rb') as f:
        task = asyncio.ensure_future(loop.sock_sendfile(sender, f))
        await loop.sock_recv(receiver, 65536)          # some bytes got through
        receiver.close()                                # unread data: the peer resets
        with pytest.raises((ConnectionError, BrokenPipeError)):
            await task
        assert 0 < f.tell() < 64 * 1024 * 1024


@pytest.mark.asyncio
@bounded(20)
async def test_sock_sendfile_cancelled_midway(data_file):
    loop = asyncio.get_running_loop()
    path = data_file(32 * 1024 * 1024)
    sender, receiver = await socket_pair()
    with sender, receiver, open(path, 'rb') as f:
        fds = open_fds()
        task = asyncio.ensure_future(loop.sock_sendfile(sender, f))
        await loop.sock_recv(receiver, 65536)
        await asyncio.sleep(0.05)      # the receiver stops reading: the sender gets stuck
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The transfer is over when the caller resumes: nothing left behind, and the file's
        # position untouched, as the stock loop leaves it (os.sendfile names the offset).
        assert open_fds() == fds
        assert f.tell() == 0


@pytest.mark.asyncio
@bounded(30)
@pytest.mark.parametrize("second", ["sendfile", "sendall"])
async def test_sends_on_one_socket_each_wait_for_a_sock_sendfile_before_them(
        data_file, second, is_uring):
    """sock_sendfile() and then, while it runs, another sock_sendfile() or a sock_sendall() on
    the same socket: each goes out whole, in the order they were called.  uringloop's splices
    went out beside the other's bytes, 1 MiB at a time, interleaved."""
    if not is_uring:
        pytest.skip("the stock loop's first call never returns (it hands the socket's "
                    "writer to the second, 3.10-3.13)")
    loop = asyncio.get_running_loop()
    size = 8 * 1024 * 1024
    first = data_file(size)
    second_data = bytes([0x5A]) * size
    second_path = first.with_name('second')
    second_path.write_bytes(second_data)
    sender, receiver = await socket_pair()
    with sender, receiver, open(first, 'rb') as f, open(second_path, 'rb') as g:
        one = asyncio.ensure_future(loop.sock_sendfile(sender, f))
        await asyncio.sleep(0)
        if second == "sendfile":
            two = asyncio.ensure_future(loop.sock_sendfile(sender, g))
        else:
            two = asyncio.ensure_future(loop.sock_sendall(sender, second_data))
        received = await read_all(receiver, 2 * size)
        await asyncio.wait_for(asyncio.gather(one, two), 10)
    assert len(received) == 2 * size
    assert received[:size] == first.read_bytes()
    assert received[size:] == second_data


@pytest.mark.asyncio
@bounded(20)
async def test_a_sock_sendall_cancelled_while_waiting_behind_a_sock_sendfile_sends_nothing(
        data_file, is_uring):
    """A send queued behind a running sock_sendfile() and cancelled there leaves nothing in
    the stream, and the send after it goes out once the file is sent."""
    if not is_uring:
        pytest.skip("the stock loop's first call never returns (see above)")
    loop = asyncio.get_running_loop()
    size = 4 * 1024 * 1024
    path = data_file(size)
    sender, receiver = await socket_pair()
    with sender, receiver, open(path, 'rb') as f:
        one = asyncio.ensure_future(loop.sock_sendfile(sender, f))
        await asyncio.sleep(0)
        dropped = asyncio.ensure_future(loop.sock_sendall(sender, b'dropped'))
        await asyncio.sleep(0)
        dropped.cancel()
        last = asyncio.ensure_future(loop.sock_sendall(sender, b'last'))
        received = await read_all(receiver, size + 4)
        assert await one == size
        await last
    assert received == path.read_bytes() + b'last'


@pytest.mark.asyncio
@bounded(20)
async def test_sock_sendfile_cancelled_leaves_the_file_to_the_caller(data_file):
    """What the cancelled caller does with the file in its except block stands: no late
    lseek of the transfer ends up undoing it."""
    loop = asyncio.get_running_loop()
    path = data_file(8 * 1024 * 1024)
    sender, receiver = await socket_pair()
    with sender, receiver, open(path, 'rb') as f:
        async def send():
            try:
                await loop.sock_sendfile(sender, f, 0)
            except asyncio.CancelledError:
                f.seek(12345)
                raise
        task = asyncio.ensure_future(send())
        await loop.sock_recv(receiver, 65536)
        await asyncio.sleep(0.1)       # the receiver stops reading: the sender gets stuck
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(5):
            await asyncio.sleep(0.01)
        assert f.tell() == 12345


@pytest.mark.asyncio
@bounded(30)
async def test_sock_sendfile_stops_when_its_socket_is_closed_under_it(data_file, is_uring):
    """The caller closes the socket during the transfer: the connection ends (the peer sees
    end-of-file at once) and the rest of the file does not go out.  The stock loop's task
    then waits forever; uringloop's fails with EBADF, as its sock_sendall() does."""
    loop = asyncio.get_running_loop()
    size = 32 * 1024 * 1024
    path = data_file(size)
    sender, receiver = await socket_pair()
    receiver.setblocking(True)

    def read_slowly():
        n = 0
        while chunk := receiver.recv(65536):
            n += len(chunk)
            time.sleep(0.001)
        return n

    with receiver, open(path, 'rb') as f:
        reading = loop.run_in_executor(None, read_slowly)
        task = asyncio.ensure_future(loop.sock_sendfile(sender, f))
        await asyncio.sleep(0.2)
        sender.close()
        received = await asyncio.wait_for(reading, 10)     # end-of-file reached the peer
        assert received < size
        if is_uring:
            with pytest.raises(OSError) as caught:
                await asyncio.wait_for(task, 10)
            assert caught.value.errno == errno.EBADF
        else:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


@pytest.mark.asyncio
@bounded(20)
async def test_sock_sendfile_waits_for_a_stalled_receiver(data_file, is_uring):
    """A receiver that stops reading: the send waits for room (no completion per attempt --
    a splice into a full non-blocking socket fails at once and arms no poll of its own) and
    finishes, every byte in order, once the receiver reads again."""
    loop = asyncio.get_running_loop()
    size = 16 * 1024 * 1024
    path = data_file(size)
    sender, receiver = await socket_pair()
    with sender, receiver, open(path, 'rb') as f:
        fds = open_fds()
        task = asyncio.ensure_future(loop.sock_sendfile(sender, f))
        first = await loop.sock_recv(receiver, 65536)
        await asyncio.sleep(0.05)      # the socket buffers fill up
        if is_uring:
            before = loop.statistics()['completions']
        await asyncio.sleep(0.3)
        if is_uring:
            # One poll completion at most; the unfixed loop resubmitted the splice ~20,000 times.
            assert loop.statistics()['completions'] - before <= 5
        assert not task.done()
        rest = await read_all(receiver, size - len(first))
        assert await task == size
        assert first + rest == path.read_bytes()
        assert f.tell() == size
        assert open_fds() == fds


class Collect(asyncio.Protocol):
    def __init__(self):
        self.loop = asyncio.get_running_loop()
        self.data = bytearray()
        self.lost = self.loop.create_future()
        self.want = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.data += data
        if self.want and len(self.data) >= self.want[0] and not self.want[1].done():
            self.want[1].set_result(None)

    def connection_lost(self, exc):
        self.lost.set_result(exc)

    async def received(self, n):
        if len(self.data) < n:
            self.want = (n, self.loop.create_future())
            await self.want[1]
        return bytes(self.data)


async def transport_pair(server_ssl=None, client_ssl=None, client_protocol=Collect):
    loop = asyncio.get_running_loop()
    peers = []
    server = await loop.create_server(lambda: peers.append(Collect()) or peers[-1],
                                      '127.0.0.1', 0, ssl=server_ssl)
    kwargs = {'ssl': client_ssl, 'server_hostname': 'localhost'} if client_ssl else {}
    transport, client = await loop.create_connection(client_protocol,
                                                     *server.sockets[0].getsockname(), **kwargs)
    while not peers:
        await asyncio.sleep(0.001)
    return server, transport, client, peers[0]


@pytest.mark.asyncio
@bounded(20)
async def test_loop_sendfile_on_a_transport(data_file):
    loop = asyncio.get_running_loop()
    path = data_file(4 * 1024 * 1024 + 3)
    content = path.read_bytes()
    server, transport, client, peer = await transport_pair()
    transport.write(b'header:')
    with open(path, 'rb') as f:
        task = asyncio.ensure_future(loop.sendfile(transport, f, 100))
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError):
            transport.write(b'not now')         # refused while sendfile runs
        assert await task == len(content) - 100
        assert f.tell() == len(content)
    transport.write(b':trailer')
    expected = b'header:' + content[100:] + b':trailer'
    assert await peer.received(len(expected)) == expected
    # Reading was resumed afterwards.
    peer.transport.write(b'reply')
    assert await client.received(5) == b'reply'
    assert transport.is_reading()
    transport.close()
    await client.lost
    server.close()
    await server.wait_closed()


@pytest.mark.asyncio
@bounded(20)
async def test_loop_sendfile_ends_when_its_transport_is_aborted(data_file, is_uring):
    """abort() during loop.sendfile() ends the connection at once and fails the sendfile with
    ConnectionError; the file position is just after the last byte sent and nothing is left
    open.  (uringloop splices into a duplicate of the socket's descriptor, which alone would
    keep the connection open and the file streaming into it after the abort.)"""
    if not is_uring:
        pytest.skip("the stock loop's sendfile waits forever after abort() (3.11-3.13), and "
                    "its connection_lost raises InvalidStateError")
    loop = asyncio.get_running_loop()
    size = 32 * 1024 * 1024
    path = data_file(size)
    content = path.read_bytes()
    fds = open_fds()
    server, transport, client, peer = await transport_pair()
    peer.transport.pause_reading()              # the receiver stops reading: sendfile waits
    with open(path, 'rb') as f:
        task = asyncio.ensure_future(loop.sendfile(transport, f))
        await asyncio.sleep(0.2)
        assert not task.done()
        transport.abort()
        with pytest.raises(ConnectionError):
            await task
        assert 0 < f.tell() < size
    assert await client.lost is None
    peer.transport.resume_reading()
    await peer.lost                             # the connection really ended
    assert 0 < len(peer.data) < size and peer.data == content[:len(peer.data)]
    server.close()
    await server.wait_closed()
    assert open_fds() == fds

@pytest.mark.asyncio
@bounded(20)
async def test_loop_sendfile_cancelled_while_queued_writes_drain_gives_the_transport_back(
        data_file, is_uring):
    """loop.sendfile() waits for the transport's queued writes to leave before it sends the
    file; cancelled then, it gives the transport back as it was: writable, reading again, and
    nothing of the file sent.  (The stock loop waits outside its try/finally: its transport
    then refuses every write() with 'sendfile is in progress' for good.)"""
    if not is_uring:
        pytest.skip("the stock loop's transport is left refusing writes (3.10-3.13)")
    loop = asyncio.get_running_loop()
    path = data_file(1_000_000)
    server, transport, client, peer = await transport_pair()
    peer.transport.pause_reading()              # the queued writes cannot leave
    queued = b'A' * 8_000_000
    transport.write(queued)
    with open(path, 'rb') as f:
        task = asyncio.ensure_future(loop.sendfile(transport, f))
        await asyncio.sleep(0.05)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert f.tell() == 0
    assert transport.is_reading()
    transport.write(b'after')
    peer.transport.resume_reading()
    assert await peer.received(len(queued) + 5) == queued + b'after'
    peer.transport.write(b'reply')
    assert await client.received(5) == b'reply'
    transport.close()
    await client.lost
    server.close()
    await server.wait_closed()


@pytest.mark.asyncio
@bounded(20)
async def test_loop_sendfile_fallback_on_a_transport():
    loop = asyncio.get_running_loop()
    payload = os.urandom(300_000)
    server, transport, client, peer = await transport_pair()
    with pytest.raises(asyncio.SendfileNotAvailableError):
        await loop.sendfile(transport, io.BytesIO(payload), fallback=False)
    peer.transport.pause_reading()        # the fallback must respect flow control
    stream = io.BytesIO(payload)
    task = asyncio.ensure_future(loop.sendfile(transport, stream, 1000, 250_000))
    await asyncio.sleep(0.05)
    peer.transport.resume_reading()
    assert await task == 250_000
    assert stream.tell() == 251_000
    assert await peer.received(250_000) == payload[1000:251_000]
    assert transport.is_reading()
    transport.close()
    await client.lost
    server.close()
    await server.wait_closed()


# The stock transport of 3.12+ queues a view of the caller's buffer (no copy) where the socket
# takes not all of a write, and the stock fallback reads every block into one reused bytearray:
# what its receiver gets of a transfer held back by flow control is not the file (later blocks
# overwrite queued ones).  The tests below check that content on uringloop, over TLS (the stock
# TLS layer encrypts each write at once) and on the older stock loops.
STOCK_FALLBACK_SENDS_THE_FILE = sys.version_info < (3, 12)


class FlowRecorder(Collect):
    """Collect, noting each pause_writing()/resume_writing() it gets while `transfer` (a task)
    is not done."""

    def __init__(self):
        super().__init__()
        self.transfer = None
        self.flow_during = []
        self.flow = []

    def pause_writing(self):
        self.note('pause_writing')

    def resume_writing(self):
        self.note('resume_writing')

    def note(self, call):
        self.flow.append(call)
        if self.transfer is not None and not self.transfer.done():
            self.flow_during.append(call)


@pytest.mark.asyncio
@bounded(30)
@pytest.mark.parametrize('tls', [False, True], ids=['tcp', 'tls'])
async def test_loop_sendfile_fallback_paces_itself_not_the_protocol(contexts, tls, is_uring):
    """The fallback's writes pause and resume the fallback, not the application's protocol:
    the stock loop installs a protocol of its own for the transfer (reading paused) and the
    application's again afterwards, so while a slow receiver holds the transfer back the
    application's protocol sees no pause_writing()/resume_writing(), its write() is accepted,
    and the bytes its peer sent meanwhile reach it after the transfer.  (uringloop kept the
    application's protocol on a plain connection: it saw the transfer's pauses and resumes,
    and its write() was refused while the transfer waited for the buffer to drain.)"""
    loop = asyncio.get_running_loop()
    payload = os.urandom(16 * 1024 * 1024)
    server_ctx, client_ctx = contexts if tls else (None, None)
    server, transport, client, peer = await transport_pair(server_ctx, client_ctx,
                                                           FlowRecorder)
    while not hasattr(peer, 'transport'):      # (made once the TLS handshake is over)
        await asyncio.sleep(0.001)
    transport.set_write_buffer_limits(high=16384, low=4096)
    peer.transport.pause_reading()              # the receiver stops reading: the buffers fill
    stream = io.BytesIO(payload)                # no fileno(): the fallback, on either loop
    task = client.transfer = asyncio.ensure_future(loop.sendfile(transport, stream))
    for _ in range(200):
        await asyncio.sleep(0.01)
        if transport.get_write_buffer_size() > 16384:
            break
    await asyncio.sleep(0.05)
    assert not task.done()                      # held back by flow control
    assert client.flow_during == []
    transport.write(b'W')                       # goes out between two blocks of the file
    peer.transport.write(b'ping')               # waits until the transfer is over
    await asyncio.sleep(0.05)
    assert client.data == b''
    assert not transport.is_reading()
    assert transport.get_protocol() is not client
    peer.transport.resume_reading()
    assert await task == len(payload)
    assert client.flow_during == []
    assert transport.get_protocol() is client
    assert transport.is_reading()
    assert await client.received(4) == b'ping'
    transport.write(b':end')
    received = await peer.received(len(payload) + 5)
    assert len(received) == len(payload) + 5 and received.endswith(b':end')
    if is_uring or tls or STOCK_FALLBACK_SENDS_THE_FILE:
        # The file, with the application's b'W' between two of its blocks.
        assert any(received[at] == ord('W') and received[:at] == payload[:at]
                   and received[at + 1:-4] == payload[at:]
                   for at in range(0, len(payload) + 1, 16384))
    transport.close()
    await client.lost
    peer.transport.close()
    server.close()
    await server.wait_closed()


@pytest.mark.asyncio
@bounded(30)
@pytest.mark.parametrize('end', ['cancelled', 'peer_aborts'])
async def test_loop_sendfile_fallback_ended_early_gives_the_protocol_back(end, is_uring):
    """A fallback transfer cancelled, or cut by the peer, while the receiver holds it back: the
    application's protocol is the transport's again (also after connection_lost(), as stock),
    reading resumes, the file is left just after the last byte written, and the protocol saw
    none of the transfer's flow control.  (The stock loop later calls resume_writing() on it
    when the buffer the cancelled transfer left drains, a resume with no pause before it;
    uringloop does not.)"""
    loop = asyncio.get_running_loop()
    payload = os.urandom(16 * 1024 * 1024)
    server, transport, client, peer = await transport_pair(client_protocol=FlowRecorder)
    transport.set_write_buffer_limits(high=16384, low=4096)
    peer.transport.pause_reading()
    stream = io.BytesIO(payload)
    task = client.transfer = asyncio.ensure_future(loop.sendfile(transport, stream))
    for _ in range(200):
        await asyncio.sleep(0.01)
        if transport.get_write_buffer_size() > 16384:
            break
    await asyncio.sleep(0.05)
    assert not task.done()
    if end == 'cancelled':
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert transport.get_protocol() is client
        assert transport.is_reading()
        sent = stream.tell()
        assert 0 < sent < len(payload) and sent % 16384 == 0
        transport.write(b':end')
        peer.transport.resume_reading()
        received = await peer.received(sent + 4)
        assert len(received) == sent + 4 and received.endswith(b':end')
        if is_uring or STOCK_FALLBACK_SENDS_THE_FILE:
            assert received[:sent] == payload[:sent]
        transport.close()
        assert await client.lost is None
    else:
        peer.transport.abort()
        with pytest.raises(ConnectionError):
            await task
        assert isinstance(await client.lost, ConnectionError)
        assert transport.get_protocol() is client
        assert 0 < stream.tell() < len(payload)
    assert client.flow_during == []
    if is_uring:
        assert client.flow == []
    else:
        assert client.flow in ([], ['resume_writing'])
    peer.transport.close()
    server.close()
    await server.wait_closed()


@pytest.mark.asyncio
@bounded(20)
async def test_loop_sendfile_errors(data_file):
    loop = asyncio.get_running_loop()
    path = data_file(10)
    server, transport, client, peer = await transport_pair()
    with open(path, 'r') as text:
        with pytest.raises(ValueError):
            await loop.sendfile(transport, text)
    transport.close()
    with open(path, 'rb') as f:
        with pytest.raises(RuntimeError):
            await loop.sendfile(transport, f)
    await client.lost
    server.close()
    await server.wait_closed()


@pytest.mark.asyncio
@bounded(30)
async def test_loop_sendfile_over_tls_uses_the_fallback(data_file, contexts):
    server_ctx, client_ctx = contexts
    loop = asyncio.get_running_loop()
    path = data_file(1_000_000)
    server, transport, client, peer = await transport_pair(server_ctx, client_ctx)
    with open(path, 'rb') as f:
        assert await loop.sendfile(transport, f) == 1_000_000
    digest = hashlib.sha256(await peer.received(1_000_000)).digest()
    assert digest == hashlib.sha256(path.read_bytes()).digest()
    transport.close()
    await client.lost
    peer.transport.close()
    server.close()
    await server.wait_closed()


@pytest.mark.asyncio
@bounded(20)
async def test_a_count_too_large_closes_no_descriptor_of_anyone_else(data_file):
    """sock_sendfile() with an offset no C integer holds leaves descriptor 0 alone (both loops
    raise OverflowError).  uringloop's sender, failing in its constructor, closed descriptor
    0 (and tried three more) when it was freed: its fields start at 0, and were set to -1 only
    after the arguments were converted.  (A count that large was the case before 3.13; from
    3.13 such a count sends the file, test_sock_sendfile_of_a_count_no_c_integer_holds.)"""
    import gc
    loop = asyncio.get_running_loop()
    path = data_file(1000)
    saved = os.dup(0)
    stand_in = os.open(path, os.O_RDONLY)        # descriptor 0 for the test: a file we know
    os.dup2(stand_in, 0)
    os.close(stand_in)
    sender, receiver = await socket_pair()
    try:
        with sender, receiver, open(path, 'rb') as f:
            with pytest.raises(OverflowError):
                await loop.sock_sendfile(sender, f, 2 ** 64, 10)
        gc.collect()
        assert os.fstat(0).st_ino == os.stat(path).st_ino
    finally:
        os.dup2(saved, 0)
        os.close(saved)
