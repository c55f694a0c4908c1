"""Protocols and connection set-ups shared by the test_protocols* modules: a Recorder that
records every protocol call, an echo, a connected pair through a server, a pair whose socket
buffers are full, and a BufferedProtocol recorder."""

import asyncio
import socket


class Recorder(asyncio.Protocol):
    """Records every protocol call; futures for the moments tests wait on."""

    def __init__(self, keep_open=False):
        self.loop = asyncio.get_running_loop()
        self.transport = None
        self.events = []
        self.data = bytearray()
        self.keep_open = keep_open
        self.made = self.loop.create_future()
        self.eof = self.loop.create_future()
        self.lost = self.loop.create_future()
        self._want = None

    def connection_made(self, transport):
        self.transport = transport
        self.events.append('made')
        self.made.set_result(transport)

    def data_received(self, data):
        assert type(data) is bytes
        if not self.events or self.events[-1] != 'data':
            self.events.append('data')
        self.data += data
        if self._want is not None and len(self.data) >= self._want[0]:
            fut = self._want[1]
            self._want = None
            if not fut.done():
                fut.set_result(None)

    def eof_received(self):
        self.events.append('eof')
        self.eof.set_result(None)
        return self.keep_open

    def connection_lost(self, exc):
        self.events.append('lost')
        self.lost.set_result(exc)

    async def received(self, n):
        if len(self.data) < n:
            fut = self.loop.create_future()
            self._want = (n, fut)
            await asyncio.wait({fut, self.lost}, return_when=asyncio.FIRST_COMPLETED)
        return bytes(self.data)


class EchoProtocol(asyncio.Protocol):
    """Writes back whatever it receives."""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


async def connected_pair(server_protocol=Recorder, client_protocol=Recorder):
    """A server and one connection to it: (server, server-side protocol, client protocol)."""
    loop = asyncio.get_running_loop()
    accepted = loop.create_future()

    def factory():
        proto = server_protocol()
        if not accepted.done():
            accepted.set_result(proto)
        return proto

    server = await loop.create_server(factory, '127.0.0.1', 0)
    host, port = server.sockets[0].getsockname()[:2]
    _, client = await loop.create_connection(client_protocol, host, port)
    peer = await accepted
    await peer.made
    return server, peer, client


async def recording_server():
    """A server on 127.0.0.1 whose connections each get a Recorder: (server, their list)."""
    accepted = []

    def factory():
        accepted.append(Recorder())
        return accepted[-1]

    server = await asyncio.get_running_loop().create_server(factory, '127.0.0.1', 0)
    return server, accepted


async def shut(server, *protocols):
    for proto in protocols:
        if proto.transport is not None:
            proto.transport.close()
    for proto in protocols:
        if proto.transport is not None:
            await proto.lost
    server.close()
    await server.wait_closed()


async def full_socket_pair():
    """connected_pair() whose client socket takes only part of a large write at once: the peer
    reads nothing (until it resumes reading) and the client's send buffer is small."""
    return await full_socket_pair_with(Recorder)


async def full_socket_pair_with(client_protocol):
    server, peer, client = await connected_pair(client_protocol=client_protocol)
    peer.transport.pause_reading()
    client.transport.get_extra_info('socket').setsockopt(
        socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return server, peer, client


class BufferedRecorder(asyncio.BufferedProtocol):
    """Records a BufferedProtocol's calls; get_buffer() lends one buffer of `size` bytes, and the
    size hints it was asked with are kept."""

    def __init__(self, size=65536):
        self.loop = asyncio.get_running_loop()
        self.buffer = bytearray(size)
        self.data = bytearray()
        self.events = []
        self.transport = None
        self.made = self.loop.create_future()
        self.eof = self.loop.create_future()
        self.lost = self.loop.create_future()
        self.sizes_asked = set()

    def connection_made(self, transport):
        self.transport = transport
        self.events.append('made')
        self.made.set_result(None)

    def get_buffer(self, sizehint):
        self.sizes_asked.add(sizehint)
        return memoryview(self.buffer)

    def buffer_updated(self, nbytes):
        assert 0 < nbytes <= len(self.buffer)
        if self.events[-1] != 'data':
            self.events.append('data')
        self.data += self.buffer[:nbytes]

    def eof_received(self):
        self.events.append('eof')
        self.eof.set_result(None)

    def connection_lost(self, exc):
        self.events.append('lost')
        self.lost.set_result(exc)
