"""examples/echo_chat.py, run as a user would, with thousands of clients connected at once.

The clients run in this process on the stock asyncio loop (the reference), the server in its own
process on uringloop (its default).
"""

import asyncio
import os
import re
import socket

import pytest

from test_examples_helpers import ExampleProcess, nofile_limit

CLIENTS = 2000
LISTENING = r"(echo|chat) server listening on 127\.0\.0\.1:(\d+) \(loop: uringloop\)"


class Barrier:
    """Wait until `parties` coroutines have arrived (asyncio.Barrier is 3.11+)."""

    def __init__(self, parties: int):
        self.parties = parties
        self.arrived = 0
        self.event = asyncio.Event()

    async def wait(self) -> None:
        self.arrived += 1
        if self.arrived == self.parties:
            self.event.set()
        await self.event.wait()


async def _connect(port: int, slots: asyncio.Semaphore):
    # A bounded number of handshakes at a time keeps the listen queue from overflowing (an
    # overflow costs a one-second SYN retransmit, not an error, but makes the test slow).
    async with slots:
        return await asyncio.open_connection("127.0.0.1", port)


def test_echo_2000_concurrent_clients():
    messages = 3
    with nofile_limit(CLIENTS + 256), ExampleProcess("echo_chat", "--port", "0") as server:
        port = int(server.expect(LISTENING).group(2))

        async def clients():
            slots = asyncio.Semaphore(64)
            connected, finished = Barrier(CLIENTS), Barrier(CLIENTS)
            echoed = 0

            async def client(i):
                nonlocal echoed
                reader, writer = await _connect(port, slots)
                try:
                    await connected.wait()            # all CLIENTS connections are open now
                    for k in range(messages):
                        line = f"client {i} says {k}\n".encode()
                        writer.write(line)
                        assert await reader.readexactly(len(line)) == line
                        echoed += len(line)
                    await finished.wait()             # and stay open until everyone is done
                finally:
                    writer.close()
                    await writer.wait_closed()

            await asyncio.gather(*(client(i) for i in range(CLIENTS)))
            return echoed

        echoed = asyncio.run(asyncio.wait_for(clients(), 120))
        assert echoed == sum(len(f"client {i} says {k}\n") for i in range(CLIENTS)
                             for k in range(messages))
        assert server.stop() == 0, server.stderr
        assert server.output[-1] == (f"served {CLIENTS:,} connections (peak {CLIENTS:,} at "
                                     f"once); echoed {echoed:,} bytes")
        assert server.stderr == ""


def test_echo_of_a_large_message():
    payload = os.urandom(4 * 1024 * 1024)
    with ExampleProcess("echo_chat", "--port", "0") as server:
        port = int(server.expect(LISTENING).group(2))

        async def client():
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            sending = asyncio.ensure_future(_write_all(writer, payload))
            received = await reader.readexactly(len(payload))
            await sending
            writer.close()
            await writer.wait_closed()
            return received

        assert asyncio.run(asyncio.wait_for(client(), 60)) == payload
        assert server.stop() == 0
        assert server.output[-1].endswith(f"echoed {len(payload):,} bytes")


async def _write_all(writer, data):
    writer.write(data)
    await writer.drain()


def test_chat_2000_members_every_message_reaches_every_other_member():
    senders = 5
    with nofile_limit(CLIENTS + 256), ExampleProcess("echo_chat", "--mode", "chat",
                                                     "--port", "0") as server:
        port = int(server.expect(LISTENING).group(2))

        async def members():
            slots = asyncio.Semaphore(64)
            joined, finished = Barrier(CLIENTS), Barrier(CLIENTS)
            names = [None] * CLIENTS

            async def member(i):
                reader, writer = await _connect(port, slots)
                try:
                    welcome = (await reader.readline()).decode()
                    match = re.fullmatch(r"\* welcome (guest\d+), (\d+) others here\n", welcome)
                    assert match, welcome
                    names[i] = match.group(1)
                    await joined.wait()
                    if i < senders:
                        writer.write(f"hello from member {i}\n".encode())
                    expected = {f"{names[j]}: hello from member {j}\n"
                                for j in range(senders) if j != i}
                    received = [(await reader.readline()).decode() for _ in expected]
                    assert sorted(received) == sorted(expected)
                    await finished.wait()
                finally:
                    writer.close()
                    await writer.wait_closed()

            await asyncio.gather(*(member(i) for i in range(CLIENTS)))
            assert len(set(names)) == CLIENTS

        asyncio.run(asyncio.wait_for(members(), 120))
        assert server.stop() == 0, server.stderr
        assert server.output[-1] == (
            f"served {CLIENTS:,} connections (peak {CLIENTS:,} at once); relayed {senders} "
            f"messages in {senders * (CLIENTS - 1):,} deliveries; 0 members dropped as too slow")


def test_chat_drops_a_member_that_does_not_read_instead_of_buffering_for_it():
    line = b"x" * 1023 + b"\n"
    batch = 256                                        # lines per round, 256 KiB
    with ExampleProcess("echo_chat", "--mode", "chat", "--port", "0") as server:
        port = int(server.expect(LISTENING).group(2))

        async def scenario():
            # The slow member never reads, with a small receive buffer.
            slow = socket.socket()
            slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            slow.setblocking(False)
            await asyncio.get_running_loop().sock_connect(slow, ("127.0.0.1", port))
            fast_reader, fast_writer = await asyncio.open_connection("127.0.0.1", port)
            await fast_reader.readline()                           # welcome
            sender_reader, sender = await asyncio.open_connection("127.0.0.1", port)
            sender_name = re.match(rb"\* welcome (guest\d+)", await sender_reader.readline())[1]
            sent = 0
            try:
                while not server.seen(r"^dropped guest1: too slow"):
                    assert sent < 64 * 1024 * 1024, "the slow member was never dropped"
                    sender.write(line * batch)
                    await sender.drain()
                    for _ in range(batch):                         # the fast one keeps up
                        assert await fast_reader.readline() == sender_name + b": " + line
                    sent += batch * len(line)
            finally:
                for w in (fast_writer, sender):
                    w.close()
                    await w.wait_closed()
                slow.close()
            return sent

        asyncio.run(asyncio.wait_for(scenario(), 60))
        assert server.stop() == 0
        assert server.output[-1].endswith("; 1 members dropped as too slow")
        assert re.fullmatch(r"dropped guest1: too slow \([\d,]+ bytes unsent\)",
                            server.seen(r"^dropped guest1").string)


@pytest.mark.parametrize("loop", ["uringloop", "uvloop", "asyncio"])
@pytest.mark.parametrize("mode", ["echo", "chat"])
def test_the_same_program_runs_on_each_loop(loop, mode):
    """`--loop` switches the event loop under the very same program (the README compares them)."""
    pytest.importorskip(loop)
    with ExampleProcess("echo_chat", "--mode", mode, "--port", "0", "--loop", loop) as server:
        port = int(server.expect(rf"{mode} server listening on 127\.0\.0\.1:(\d+) "
                                 rf"\(loop: {loop}\)").group(1))

        async def exchange():
            a_reader, a = await asyncio.open_connection("127.0.0.1", port)
            b_reader, b = await asyncio.open_connection("127.0.0.1", port)
            if mode == "chat":
                assert (await a_reader.readline()).startswith(b"* welcome guest1")
                assert (await b_reader.readline()).startswith(b"* welcome guest2")
            a.write(b"ping\n")
            got = await (a_reader if mode == "echo" else b_reader).readline()
            for w in (a, b):
                w.close()
                await w.wait_closed()
            return got

        expected = b"ping\n" if mode == "echo" else b"guest1: ping\n"
        assert asyncio.run(asyncio.wait_for(exchange(), 30)) == expected
        assert server.stop() == 0, server.stderr
        assert server.output[-1].startswith("served 2 connections (peak 2 at once)")
