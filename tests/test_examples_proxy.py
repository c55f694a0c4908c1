"""examples/proxy.py, run as a user would: 100 MiB each way through it at once, with a receiver
that is slow to start, while the proxy's memory is watched.

The two ends (a client and the upstream server) are plain blocking sockets in threads of this
process: nothing of uringloop is on that side."""

import hashlib
import os
import socket
import threading
import time

import pytest

from test_examples_helpers import ExampleProcess

MiB = 1024 * 1024
BASE_BLOCK = os.urandom(MiB)
FORWARDING = r"forwarding 127\.0\.0\.1:(\d+) -> 127\.0\.0\.1:(\d+) \(loop: (\w+)\)"


def _block(stream: int, i: int) -> bytes:
    # Distinct 1 MiB blocks (numbered, per direction) without generating 200 MiB of randomness:
    # a lost, duplicated or reordered block changes the checksum.
    return stream.to_bytes(1, "little") + i.to_bytes(7, "little") + BASE_BLOCK[8:]


class Transfer(threading.Thread):
    """Sends `blocks` MiB on `sock`, then half-closes it; records the checksum of what it sent."""

    def __init__(self, sock: socket.socket, stream: int, blocks: int):
        super().__init__(daemon=True)
        self.sock, self.stream, self.blocks = sock, stream, blocks
        self.digest = hashlib.sha256()
        self.error = None

    def run(self):
        try:
            for i in range(self.blocks):
                block = _block(self.stream, i)
                self.digest.update(block)
                self.sock.sendall(block)
            self.sock.shutdown(socket.SHUT_WR)
        except BaseException as exc:      # reported by the test
            self.error = exc


class Receive(threading.Thread):
    """Receives until end of stream, after an initial pause; records the checksum."""

    def __init__(self, sock: socket.socket, pause: float = 0.0):
        super().__init__(daemon=True)
        self.sock, self.pause = sock, pause
        self.digest = hashlib.sha256()
        self.received = 0
        self.error = None

    def run(self):
        try:
            time.sleep(self.pause)
            buf = bytearray(MiB)
            while n := self.sock.recv_into(buf):
                self.digest.update(memoryview(buf)[:n])
                self.received += n
        except BaseException as exc:
            self.error = exc


def _upstream_listener() -> socket.socket:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(30)
    return listener


def _transfer_both_ways(proxy_port: int, listener: socket.socket, blocks: int,
                        slow_start: float = 0.0, on_progress=None):
    client = socket.create_connection(("127.0.0.1", proxy_port), timeout=60)
    upstream, _ = listener.accept()
    upstream.settimeout(60)
    with client, upstream:
        threads = [Transfer(client, 1, blocks), Receive(upstream),
                   Transfer(upstream, 2, blocks), Receive(client, pause=slow_start)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        while any(t.is_alive() for t in threads):
            assert time.monotonic() < deadline, "the transfer did not finish in time"
            if on_progress:
                on_progress()
            time.sleep(0.02)
        for t in threads:
            assert t.error is None, t.error
        up_sent, up_received, down_sent, down_received = threads
        assert up_received.received == blocks * MiB and down_received.received == blocks * MiB
        assert up_received.digest.hexdigest() == up_sent.digest.hexdigest()
        assert down_received.digest.hexdigest() == down_sent.digest.hexdigest()


def test_100_mib_each_way_with_bounded_memory():
    with _upstream_listener() as listener:
        target = listener.getsockname()[1]
        with ExampleProcess("proxy", "--listen", "127.0.0.1:0",
                            "--target", f"127.0.0.1:{target}") as proxy:
            port = int(proxy.expect(FORWARDING).group(1))
            baseline = proxy.rss_bytes()
            peak = baseline

            def watch():
                nonlocal peak
                peak = max(peak, proxy.rss_bytes())

            # The client does not read at all for the first 1.5 s while both sides send as
            # fast as they can: a proxy without back-pressure would soak up most of the
            # 100 MiB coming down; this one must stay within its buffers.
            _transfer_both_ways(port, listener, 100, slow_start=1.5, on_progress=watch)
            assert proxy.stop() == 0, proxy.stderr
            assert proxy.output[-1] == ("forwarded 1 connections: 104,857,600 bytes up, "
                                        "104,857,600 bytes down")
            growth = peak - baseline
            assert growth < 16 * MiB, f"the proxy's RSS grew by {growth / MiB:.1f} MiB"


@pytest.mark.parametrize("loop", ["uringloop", "uvloop", "asyncio"])
def test_the_same_program_runs_on_each_loop(loop):
    pytest.importorskip(loop)
    with _upstream_listener() as listener:
        target = listener.getsockname()[1]
        with ExampleProcess("proxy", "--listen", "127.0.0.1:0", "--target",
                            f"127.0.0.1:{target}", "--loop", loop) as proxy:
            match = proxy.expect(FORWARDING)
            assert match.group(3) == loop
            _transfer_both_ways(int(match.group(1)), listener, 8)
            assert proxy.stop() == 0, proxy.stderr
            assert proxy.output[-1] == ("forwarded 1 connections: 8,388,608 bytes up, "
                                        "8,388,608 bytes down")


def test_unreachable_target_closes_the_client_and_keeps_serving():
    with _upstream_listener() as listener:
        dead = listener.getsockname()[1]
    # Nothing listens on `dead` any more: connecting to it is refused.
    with ExampleProcess("proxy", "--listen", "127.0.0.1:0",
                        "--target", f"127.0.0.1:{dead}") as proxy:
        port = int(proxy.expect(FORWARDING).group(1))
        for _ in range(2):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
                assert client.recv(10) == b""           # closed by the proxy
            proxy.expect(rf"cannot connect to 127\.0\.0\.1:{dead}: .*refused")
        assert proxy.stop() == 0, proxy.stderr
        assert proxy.output[-1] == "forwarded 0 connections: 0 bytes up, 0 bytes down"
