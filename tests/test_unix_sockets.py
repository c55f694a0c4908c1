"""UNIX stream sockets: create_unix_connection/create_unix_server (open_unix_connection/
start_unix_server), path handling and cleanup, abstract names.  Run on uringloop and stock."""

import asyncio
import errno
import os
import pathlib
import socket
import ssl
import sys
import tempfile

import pytest

import uringloop

from helpers import bounded, cancel_a_receive_as_its_bytes_arrive, echo


@pytest.fixture
def sock_path():
    # tmp_path can exceed the 107-byte sun_path limit; a short directory cannot.
    with tempfile.TemporaryDirectory(prefix='ul') as directory:
        yield os.path.join(directory, 'sock')


@pytest.mark.asyncio
@bounded()
async def test_unix_echo_and_extra_info(sock_path):
    server = await asyncio.start_unix_server(echo, sock_path)
    async with server:
        assert server.sockets[0].getsockname() == sock_path
        reader, writer = await asyncio.open_unix_connection(sock_path)
        payload = os.urandom(3 * 1024 * 1024)
        writer.write(payload)
        writer.write_eof()
        assert await reader.read() == payload
        assert writer.get_extra_info('peername') == sock_path
        assert writer.get_extra_info('sockname') == ''
        assert writer.get_extra_info('socket').family == socket.AF_UNIX
        writer.close()
        await writer.wait_closed()


@pytest.mark.asyncio
@bounded()
async def test_unix_protocol_api_with_pathlib(sock_path):
    loop = asyncio.get_running_loop()
    got = loop.create_future()

    class Upper(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.transport.write(data.upper())

    class Client(asyncio.Protocol):
        def data_received(self, data):
            got.set_result(data)

    server = await loop.create_unix_server(Upper, pathlib.Path(sock_path))
    transport, _ = await loop.create_unix_connection(Client, pathlib.Path(sock_path))
    transport.write(b'unix')
    assert await got == b'UNIX'
    transport.close()
    server.close()
    await server.wait_closed()


@pytest.mark.asyncio
@bounded()
async def test_stale_socket_file_is_replaced_and_other_files_are_not(sock_path):
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(sock_path)
    stale.close()                           # leaves the socket file behind
    server = await asyncio.start_unix_server(echo, sock_path)
    server.close()
    await server.wait_closed()
    if os.path.exists(sock_path):
        os.unlink(sock_path)
    with open(sock_path, 'w') as f:
        f.write('not a socket')
    with pytest.raises(OSError) as info:
        await asyncio.start_unix_server(echo, sock_path)
    assert info.value.errno == errno.EADDRINUSE
    assert repr(sock_path) in str(info.value)
    with open(sock_path) as f:
        assert f.read() == 'not a socket'


@pytest.mark.asyncio
@bounded()
async def test_socket_file_cleanup_on_close(sock_path):
    server = await asyncio.start_unix_server(echo, sock_path)
    assert os.path.exists(sock_path)
    server.close()
    await server.wait_closed()
    # Python 3.13 removes the socket file when the server closes (cleanup_socket=True).
    assert os.path.exists(sock_path) == (sys.version_info < (3, 13))


@pytest.mark.asyncio
@bounded()
async def test_socket_file_calls_come_from_asyncio_s_own_module_or_not_through_os(
        sock_path, monkeypatch):
    # Tools that find blocking calls in a running loop by patching the os module (blockbuster,
    # under which aiohttp's and anyio's test suites run) allow os.stat()/os.unlink() there only
    # when the caller is asyncio's own unix_events.py.  The stat and unlink around a unix
    # server's socket file -- the stale file replaced, the server's own removed at close
    # (Python 3.13) -- must come from there (the stock loop) or not go through the os module
    # at all (uringloop makes them in C), and still be done.
    calls = []

    def recording(name, function):
        def record_then_call(*args, **kwargs):
            calls.append((name, sys._getframe(1).f_code.co_filename.replace(os.sep, '/')))
            return function(*args, **kwargs)
        return record_then_call

    for name in ('stat', 'lstat', 'unlink', 'remove'):
        monkeypatch.setattr(os, name, recording(name, getattr(os, name)))
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(sock_path)
    stale.close()                           # leaves the socket file behind
    server = await asyncio.start_unix_server(echo, sock_path)
    reader, writer = await asyncio.open_unix_connection(sock_path)
    writer.write(b'ping')
    writer.write_eof()
    assert await reader.read() == b'ping'
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    monkeypatch.undo()
    assert os.path.exists(sock_path) == (sys.version_info < (3, 13))
    asyncio_dir = os.path.dirname(asyncio.__file__).replace(os.sep, '/') + '/'
    uringloop_dir = os.path.dirname(uringloop.__file__).replace(os.sep, '/') + '/'
    from_loops = [(name, path) for name, path in calls
                  if path.startswith((asyncio_dir, uringloop_dir))]
    assert all(path == asyncio_dir + 'unix_events.py' for _, path in from_loops), from_loops


@pytest.mark.asyncio
@bounded()
@pytest.mark.skipif(sys.version_info < (3, 13), reason='cleanup_socket: Python 3.13')
async def test_cleanup_socket_false_and_replaced_file(sock_path):
    server = await asyncio.start_unix_server(echo, sock_path, cleanup_socket=False)
    server.close()
    await server.wait_closed()
    assert os.path.exists(sock_path)
    os.unlink(sock_path)
    # A file that replaced the server's socket file is not the server's to remove.
    server = await asyncio.start_unix_server(echo, sock_path)
    os.unlink(sock_path)
    with open(sock_path, 'w') as f:
        f.write('someone else')
    server.close()
    await server.wait_closed()
    assert os.path.exists(sock_path)


@pytest.mark.asyncio
@bounded()
async def test_abstract_socket():
    name = f'\0uringloop-test-{os.getpid()}-{id(object())}'
    server = await asyncio.start_unix_server(echo, name)
    async with server:
        assert server.sockets[0].getsockname() == name.encode()
        reader, writer = await asyncio.open_unix_connection(name)
        writer.write(b'abstract')
        assert await reader.readexactly(8) == b'abstract'
        writer.close()
        await writer.wait_closed()


@pytest.mark.asyncio
@bounded()
async def test_sock_arguments(sock_path):
    loop = asyncio.get_running_loop()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_path)
    server = await asyncio.start_unix_server(echo, sock=listener)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.setblocking(False)
    await loop.sock_connect(client, sock_path)
    reader, writer = await asyncio.open_unix_connection(sock=client)
    writer.write(b'via sock')
    assert await reader.readexactly(8) == b'via sock'
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    with socket.socket() as tcp:
        with pytest.raises(ValueError):
            await loop.create_unix_server(asyncio.Protocol, sock=tcp)
        with pytest.raises(ValueError):
            await loop.create_unix_connection(asyncio.Protocol, sock=tcp)


@pytest.mark.asyncio
@bounded()
async def test_argument_errors(sock_path):
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_UNIX) as s:
        with pytest.raises(ValueError):
            await loop.create_unix_connection(asyncio.Protocol, sock_path, sock=s)
        with pytest.raises(ValueError):
            await loop.create_unix_server(asyncio.Protocol, sock_path, sock=s)
    with pytest.raises(ValueError):
        await loop.create_unix_connection(asyncio.Protocol)
    with pytest.raises(ValueError):
        await loop.create_unix_server(asyncio.Protocol)
    with pytest.raises(ValueError):
        await loop.create_unix_connection(asyncio.Protocol, sock_path, server_hostname='x')
    with pytest.raises(ValueError):
        await loop.create_unix_connection(asyncio.Protocol, sock_path, ssl_handshake_timeout=1)
    with pytest.raises(ValueError):
        await loop.create_unix_connection(asyncio.Protocol, sock_path,
                                          ssl=ssl.create_default_context())
    with pytest.raises(ValueError):
        await loop.create_unix_server(asyncio.Protocol, sock_path, ssl_handshake_timeout=1)
    with pytest.raises(TypeError):
        await loop.create_unix_server(asyncio.Protocol, sock_path, ssl=True)
    assert not os.path.exists(sock_path)


@pytest.mark.asyncio
@bounded()
async def test_an_empty_server_path_is_an_index_error(is_uring):
    """create_unix_server('') is the stock loop's IndexError (its path[0]): not a server the
    kernel binds to an automatic abstract name nobody can connect to by name, which uringloop
    made.  From 3.13 (cleanup_socket) an unbound sock= is the same IndexError on the stock loop.
    The stock loop leaves the socket it made for the path unclosed; uringloop makes none."""
    import warnings
    loop = asyncio.get_running_loop()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always', ResourceWarning)
        for path in ('', b''):
            with pytest.raises(IndexError):
                await loop.create_unix_server(asyncio.Protocol, path)
        import gc
        gc.collect()
    if is_uring:
        assert [str(w.message) for w in caught] == []
    if sys.version_info >= (3, 13):
        with socket.socket(socket.AF_UNIX) as unbound:
            with pytest.raises(IndexError):
                await loop.create_unix_server(asyncio.Protocol, sock=unbound)
            assert unbound.fileno() >= 0        # the caller's socket is left to the caller


@pytest.mark.asyncio
@bounded()
async def test_connect_errors(sock_path):
    with pytest.raises(FileNotFoundError):
        await asyncio.open_unix_connection(sock_path)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(sock_path)
    stale.close()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_unix_connection(sock_path)


@pytest.mark.asyncio
@bounded()
async def test_start_serving_false(sock_path):
    server = await asyncio.start_unix_server(echo, sock_path, start_serving=False)
    assert not server.is_serving()
    await server.start_serving()
    reader, writer = await asyncio.open_unix_connection(sock_path)
    writer.write(b'1')
    assert await reader.readexactly(1) == b'1'
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()


@pytest.mark.asyncio
@bounded()
@pytest.mark.parametrize('reading', ['reading', 'paused', 'stopped at the eof'])
async def test_a_peer_leaving_our_bytes_unread_resets_the_connection(sock_path, reading):
    """An AF_UNIX peer that closes with our write unread (its receive queue full) resets the
    connection: while we read, connection_lost() gets that ConnectionResetError, as the stock
    loop's reader -- run before its writer -- finds it; with reading paused, or stopped by an
    eof_received() that kept the connection open, the write's BrokenPipeError, as on the stock
    loop.  uringloop reported the broken pipe either way (the send's completion came before
    the receive's), and then the reset after an EOF (the send waiting for room woke to it)."""
    loop = asyncio.get_running_loop()
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(sock_path)
    listener.listen()
    listener.setblocking(False)
    lost = loop.create_future()
    eof = loop.create_future()

    class Writer(asyncio.Protocol):
        def eof_received(self):
            eof.set_result(None)
            return True

        def connection_lost(self, exc):
            lost.set_result(exc)

    with listener:
        transport, _ = await loop.create_unix_connection(Writer, sock_path)
        peer, _ = await loop.sock_accept(listener)
        if reading == 'paused':
            transport.pause_reading()
        elif reading == 'stopped at the eof':
            peer.shutdown(socket.SHUT_WR)
            await eof
        transport.write(b'z' * 2_000_000)
        await asyncio.sleep(0.05)
        assert transport.get_write_buffer_size() > 0
        peer.close()
        exc = await lost
    assert type(exc) is (ConnectionResetError if reading == 'reading' else BrokenPipeError), exc


@pytest.mark.asyncio
@bounded()
@pytest.mark.skipif(sys.version_info < (3, 11), reason="the stock loop's sock_recvfrom is 3.11+")
async def test_sock_recvfrom_on_a_unix_stream_gives_the_peers_path_also_for_kept_bytes(sock_path):
    # socket.recvfrom() on a connected unix stream socket names the peer's bound path.  A
    # receive cancelled as its bytes arrive keeps them for the next one (README); that one
    # gives the path too, not None.
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(sock_path)
        listener.listen()
        ours = socket.socket(socket.AF_UNIX)
        ours.setblocking(False)
        await loop.sock_connect(ours, sock_path)
        peer, _ = listener.accept()
        with ours, peer:
            await cancel_a_receive_as_its_bytes_arrive(loop.sock_recvfrom(ours, 100),
                                                       lambda: peer.send(b'hello'))
            await asyncio.sleep(0.01)
            data, address = await loop.sock_recvfrom(ours, 100)
            assert data == b'hello' and address == sock_path
