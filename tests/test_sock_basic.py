import asyncio
import socket

import pytest


@pytest.mark.asyncio
async def test_echo_roundtrip():
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    with a, b:
        await loop.sock_sendall(a, b"hello")
        assert await loop.sock_recv(b, 100) == b"hello"
