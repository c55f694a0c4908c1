"""The data path of a real server is completion-based: an aiohttp application on uringloop,
traced with strace while an aiohttp client makes requests, issues no recvmsg/sendmsg and never
waits in epoll/poll/select -- every receive is an io_uring request except the large reads of a
bulk transfer, and so is every send except one that completes at once.  (The server accepts with
accept4(2) when an io_uring poll says a connection is queued: _server.pyx says why.)  A large
read waits for readiness with an io_uring poll and then receives with one non-blocking recv(2)
of at least 16 KiB; a write that finds nothing to batch with (here, one client's requests one
after another), or a large one, is offered to the socket with one non-blocking send(2) before
write() returns.  Neither ever waits for the socket."""

import asyncio
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest


from helpers import PACKAGE_PARENT

aiohttp = pytest.importorskip('aiohttp', reason='aiohttp is not installed')

# The server imports the uringloop these tests imported (an in-place build, or the installed
# package under tox), never a checkout's source directory.
WORKTREE = PACKAGE_PARENT

TRACED = ['recvfrom', 'sendto', 'recvmsg', 'sendmsg', 'epoll_wait', 'epoll_pwait',
          'epoll_pwait2', 'poll', 'ppoll', 'select', 'pselect6', 'read', 'write',
          'io_uring_enter']
# What a readiness-based loop would do on the data path; none of it may appear.  (sendto and
# recvfrom: only as the non-blocking send at once and large read, checked below.)
FORBIDDEN = ['recvmsg', 'sendmsg', 'epoll_wait', 'epoll_pwait',
             'epoll_pwait2', 'poll', 'ppoll', 'select', 'pselect6']
LARGE_READ_FROM = 16384

SERVER = textwrap.dedent('''
    import asyncio, os, sys
    sys.path.insert(0, sys.argv[1])
    import uringloop
    from aiohttp import web

    async def main():
        stop = asyncio.Event()

        async def hello(request):
            return web.Response(body=b'hello ' * 1000)

        async def echo(request):
            return web.Response(body=await request.read())

        async def stream(request):
            response = web.StreamResponse()
            await response.prepare(request)
            for i in range(50):
                await response.write(b'%05d' % i * 200)
            await response.write_eof()
            return response

        async def quit(request):
            stop.set()
            return web.Response(text='bye')

        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_get('/', hello)
        app.router.add_post('/echo', echo)
        app.router.add_get('/stream', stream)
        app.router.add_get('/quit', quit)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, '127.0.0.1', 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        # These two writes delimit the data path in the trace.
        os.write(1, b'READY %d %d\\n' % (port, os.getpid()))
        await stop.wait()
        os.write(1, b'DONE\\n')
        await asyncio.sleep(0.1)
        await runner.cleanup()

    uringloop.run(main())
''')


def strace_usable():
    if shutil.which('strace') is None:
        return 'strace is not installed'
    probe = subprocess.run(['strace', '-f', '-o', os.devnull, 'true'], capture_output=True)
    if probe.returncode != 0:
        return f'strace cannot trace here: {probe.stderr.decode(errors="replace").strip()}'
    return None


@pytest.mark.skipif(strace_usable() is not None, reason=str(strace_usable()))
def test_aiohttp_server_data_path_is_io_uring_only(tmp_path):
    script = tmp_path / 'server.py'
    script.write_text(SERVER)
    trace = tmp_path / 'trace.txt'
    proc = subprocess.Popen(
        ['strace', '-f', '-qq', '-o', str(trace), '-e', 'trace=' + ','.join(TRACED),
         sys.executable, str(script), WORKTREE],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    server_pid = None
    try:
        line = proc.stdout.readline()
        assert line.startswith(b'READY '), (line, proc.stderr.read() if proc.poll() else b'')
        port, server_pid = map(int, line.split()[1:3])
        asyncio.run(asyncio.wait_for(exercise(port), 60))
        assert proc.stdout.readline() == b'DONE\n'
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            # Killing strace would only detach the traced server: end the server first.
            if server_pid is not None:
                try:
                    os.kill(server_pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == 0

    text = trace.read_text()
    start = text.index('write(1, "READY')
    end = text.index('write(1, "DONE')
    data_path = text[start:end]
    calls = re.findall(r'^\d+\s+(?:<\.\.\. )?(\w+)\(', data_path, re.M)
    counts = {name: calls.count(name) for name in set(calls)}
    assert counts.get('io_uring_enter', 0) > 0, counts
    assert not {name for name in FORBIDDEN if counts.get(name)}, counts
    sends = re.findall(r'^\d+\s+sendto\(.*$', data_path, re.M)
    waiting = [line for line in sends if 'MSG_DONTWAIT' not in line]
    assert not waiting, waiting[:3]
    receives = re.findall(r'^\d+\s+recvfrom\(\d+, "(?:[^"\\]|\\.)*"(?:\.\.\.)?, (\d+), (\w+)',
                          data_path, re.M)
    small_or_waiting = [r for r in receives
                        if int(r[0]) < LARGE_READ_FROM or r[1] != 'MSG_DONTWAIT']
    assert not small_or_waiting, small_or_waiting[:3]
    # The 4 MiB upload is received with large reads, the rest on the ring.
    assert 0 < len(receives) < 4 * 1024 * 1024 // LARGE_READ_FROM, len(receives)


async def exercise(port):
    base = f'http://127.0.0.1:{port}'
    async with aiohttp.ClientSession() as session:
        for _ in range(20):                               # keep-alive requests
            async with session.get(base + '/') as response:
                assert response.status == 200
                assert await response.read() == b'hello ' * 1000
        body = os.urandom(4 * 1024 * 1024)
        async with session.post(base + '/echo', data=io.BytesIO(body)) as response:
            assert await response.read() == body
        async with session.get(base + '/stream') as response:
            assert await response.read() == b''.join(b'%05d' % i * 200 for i in range(50))
    # Fresh connections: accept is on the data path too.
    for _ in range(5):
        async with aiohttp.ClientSession() as session:
            async with session.get(base + '/') as response:
                assert response.status == 200
                await response.read()
    async with aiohttp.ClientSession() as session:
        async with session.get(base + '/quit') as response:
            assert await response.text() == 'bye'
