"""What several test modules share: bounded async tests, the file-descriptor leak check, a stream
echo handler, a loss-revealing byte pattern, a TLS certificate with its contexts, what code does
to a transport's instance (attributes, methods replaced), AF_PACKET
sockets on the loopback interface, the environment of child processes that must import the
uringloop under test, and a loop's iterations run by hand."""

import asyncio
import datetime
import errno
import functools
import gc
import os
import shutil
import socket
import ssl
import struct
import subprocess
import unittest.mock

import pytest

import uringloop

# The directory holding the uringloop these tests imported (this checkout's in-place build, or an
# installed package): children put it first on their path so that they test the same build.
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(uringloop.__file__)))


def child_env(**extra):
    """os.environ for a child Python that imports the uringloop under test."""
    return dict(os.environ, PYTHONPATH=PACKAGE_PARENT, **extra)


def bounded(seconds=15):
    """Fail a test that hangs instead of hanging the run."""
    def decorate(fn):
        @functools.wraps(fn)
        async def run(*args, **kwargs):
            return await asyncio.wait_for(fn(*args, **kwargs), seconds)
        return run
    return decorate


@pytest.fixture(autouse=True)
def no_leaked_fds():
    """Every descriptor a test opens is closed by the time the test (and its loop) is gone
    (autouse in every module that imports it)."""
    before = set(os.listdir("/proc/self/fd"))
    yield
    gc.collect()
    # listdir()'s own descriptor, or one another thread opened and closed meanwhile, is in the
    # listing and gone by the time it is looked at: not a leak.
    leaked = [target for target in map(_fd_target, set(os.listdir("/proc/self/fd")) - before)
              if target is not None]
    assert not leaked, leaked


def _fd_target(fd):
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except FileNotFoundError:
        return None


async def echo(reader, writer):
    """asyncio.start_server handler: echo until EOF, then close."""
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


class EchoProtocol(asyncio.Protocol):
    """A Protocol that writes back whatever it receives."""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


def pattern(n, seed=0):
    """n bytes that reveal any loss, duplication or reordering (a running 32-bit counter)."""
    words = (n + 3) // 4
    return struct.pack(f'<{words}I', *range(seed, seed + words))[:n]


def _make_cert_with_cryptography(certfile, keyfile):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'localhost')])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName('localhost'), x509.IPAddress(ipaddress.ip_address('127.0.0.1'))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    with open(certfile, 'wb') as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(keyfile, 'wb') as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))


def _make_cert_with_openssl(certfile, keyfile):
    subprocess.run(
        ['openssl', 'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1',
         '-nodes', '-days', '30', '-subj', '/CN=localhost',
         '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
         '-keyout', keyfile, '-out', certfile],
        check=True, capture_output=True, timeout=60)


@pytest.fixture(scope='module')
def certificate(tmp_path_factory):
    """A self-signed certificate for localhost/127.0.0.1, made for this test run."""
    directory = tmp_path_factory.mktemp('tls')
    certfile, keyfile = str(directory / 'cert.pem'), str(directory / 'key.pem')
    try:
        import cryptography  # noqa: F401
    except ImportError:
        if shutil.which('openssl') is None:
            pytest.skip('neither the cryptography package nor the openssl command is available '
                        'to make a test certificate')
        _make_cert_with_openssl(certfile, keyfile)
    else:
        _make_cert_with_cryptography(certfile, keyfile)
    return certfile, keyfile


@pytest.fixture
def contexts(certificate):
    certfile, keyfile = certificate
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(certfile, keyfile)
    client = ssl.create_default_context(cafile=certfile)
    return server, client


# AF_PACKET datagram sockets on the loopback interface: a family whose addresses uringloop's core
# does not convert (the socket module gives ('lo', ethertype, pkttype, hatype, hwaddr)).  Two
# ethertypes of the IEEE "local experimental" range: a socket bound to one receives only the
# frames of that type (not its own outgoing ones).  Needs CAP_NET_RAW: the tests skip without.
PACKET_P, PACKET_Q = 0x88B5, 0x88B6


async def check_instance_attributes(transport, peer_received):
    """What programs and tests do to a transport's instance, as the stock transports allow
    (uvicorn's and aiohttp's own test suites do it): an attribute set, read, in vars() and
    deleted; write() replaced on the instance takes the calls, and once the replacement is
    deleted the transport's own write() is back (`await peer_received(4)` must give b'sent');
    mock.patch.object on is_closing()."""
    transport.label = 'mine'
    assert transport.label == 'mine'
    assert vars(transport)['label'] == 'mine'
    swallowed = []
    transport.write = swallowed.append
    transport.write(b'not sent')
    assert swallowed == [b'not sent']
    del transport.write
    transport.write(b'sent')
    assert await peer_received(4) == b'sent'
    with unittest.mock.patch.object(transport, 'is_closing', return_value=True) as patched:
        assert transport.is_closing() is True
    assert patched.called
    assert transport.is_closing() is False
    del transport.label
    with pytest.raises(AttributeError):
        transport.label


class RefusingFirstSends(socket.socket):
    """A socket whose first `refuse` sendto() calls find no room (BlockingIOError), as a full
    send buffer would: the would-block path of a family whose send buffer cannot be filled at
    will (AF_PACKET on 'lo'), on demand, on any loop."""
    refuse = 0

    def sendto(self, *args):
        if self.refuse:
            self.refuse -= 1
            raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))
        return super().sendto(*args)


def packet_socket(ethertype, cls=None):
    """A non-blocking AF_PACKET SOCK_DGRAM socket bound to ('lo', ethertype) (of class `cls`,
    a socket.socket subclass, if given); pytest.skip() where none can be made."""
    try:
        sock = (cls or socket.socket)(socket.AF_PACKET, socket.SOCK_DGRAM,
                                      socket.htons(ethertype))
    except (OSError, AttributeError) as exc:
        pytest.skip(f"no AF_PACKET socket here: {exc}")
    try:
        sock.bind(("lo", ethertype))
    except OSError as exc:
        sock.close()
        pytest.skip(f"cannot bind an AF_PACKET socket to 'lo': {exc}")
    sock.setblocking(False)
    return sock


def lo_address(ethertype):
    """The address socket.sendto() takes for a frame of `ethertype` on 'lo'."""
    return ("lo", ethertype, 0, 0, b"\0" * 6)


def run_iterations(loop, n=1):
    """Drive the loop by hand: n iterations, as run_forever would run them."""
    asyncio.events._set_running_loop(loop)
    try:
        for _ in range(n):
            loop._run_once()
    finally:
        asyncio.events._set_running_loop(None)


async def cancel_a_receive_as_its_bytes_arrive(receive, send):
    """Start the sock_recv* coroutine `receive`, let it wait, then call send() (the peer's
    bytes) and cancel the receive in the same pass: on uringloop the receive is already in the
    kernel and may take the bytes, which the next receive on the socket must then get."""
    receiving = asyncio.ensure_future(receive)
    await asyncio.sleep(0.01)
    send()
    receiving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await receiving
