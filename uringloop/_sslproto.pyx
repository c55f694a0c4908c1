# cython: language_level=3
"""TLS over the loop's stream transports, compiled (Python 3.11 and later).

Why this module exists
----------------------
The stock loop layers TLS as asyncio.sslproto.SSLProtocol -- a BufferedProtocol that feeds the
ciphertext the socket transport received into an ssl.MemoryBIO, runs OpenSSL over it through an
ssl.SSLObject, and hands the plaintext to the application's protocol through an app-facing
transport.  Every echoed record costs that Python class some 25 Python-level calls and as many
instance-dict lookups; measured with the benchmark's TLS load generator (streams echo, 1 KiB x 10
connections) uringloop running it served 0.72x uvloop, whose own TLS layer is compiled, with
libpython taking 6.9 us per request against uvloop's 2.7.  Compiling sslproto.py unchanged gained
4%: its state lives in Python objects either way.  What pays is state in C fields and calls made
from C, which is what this module is.

What it must do is exactly what asyncio 3.11+'s SSLProtocol does -- the same calls to the
application's protocol in the same order, the same flow control, the same errors and messages --
because asyncio is this project's oracle: tests/test_tls.py runs on both loops, and CPython's
test_ssl and test_sslproto run against this loop.  Python 3.10's SSLProtocol is an older design
(an SSL pipe, no BufferedProtocol), so 3.10 keeps the stock class (network.py decides).

How the pieces fit
------------------
    SocketTransport --get_buffer/buffer_updated/eof_received/connection_lost--> SSLProtocol
    SSLProtocol --data_received/buffer_updated/eof_received/connection_lost--> app protocol
    app protocol --write/close/abort/pause_reading...--> SSLTransport --> SSLProtocol
    SSLProtocol --write(ciphertext)/pause_reading/close--> SocketTransport

SSLProtocol is a state machine (the stock one's states, kept as C ints):

    UNWRAPPED --connection_made--> DO_HANDSHAKE --handshake done--> WRAPPED
    WRAPPED --close() / close_notify / EOF--> FLUSHING --pending plaintext delivered--> SHUTDOWN
    SHUTDOWN --our close_notify out (unwrap done) or EOF--> the socket transport is closed
    any state --abort / fatal error / connection_lost--> UNWRAPPED

and a second, smaller one for the application's protocol (INIT -> CON_MADE -> [EOF] ->
CON_LOST), which guarantees connection_made() before any data and connection_lost() once.

Two flow controls: the application's writes (plaintext not yet encrypted + ciphertext not yet
handed to the socket) against the write limits pause and resume the *application's* protocol;
ciphertext received and not yet decrypted against the read limits pauses and resumes the
*socket* transport.  The socket transport's own pause_writing() stops us handing it ciphertext.

Where it is faster than the stock class, and why that changes nothing visible
------------------------------------------------------------------------------
- OpenSSL is driven through the SSLObject's C object (ssl.SSLObject is a thin Python wrapper
  whose read()/write() only forward) -- unless the context's sslobject_class is a subclass the
  user supplied, in which case its methods are called as the stock class calls them.
- Reading plaintext ends where the stock class ends it, at "no more to read"; the stock class
  learns that from an SSLWantReadError (about 1 us to raise and catch), we from the memory BIO
  being empty and OpenSSL holding no decrypted bytes (pending() == 0).  With both empty, OpenSSL
  cannot produce more plaintext: CPython's ssl module never turns on OpenSSL's read-ahead (nor
  can its API), so every byte not yet processed is still in the BIO (at most a partial record
  sits inside OpenSSL, and that needs more input anyway).  A close_notify alert is bytes in the
  BIO, so it is still read.
- A BufferedProtocol application's buffer is filled through a memoryview of it; the stock class
  slices the buffer itself, and when get_buffer() returned a bytearray the slice is a copy and
  what OpenSSL reads into it past the first record is lost (CPython 3.11-3.13).  The one place
  where the stock behaviour is not kept: it loses data.
- Each read asks OpenSSL for no more plaintext than the ciphertext buffered could hold (at most
  one record's 16 KiB), where the stock read(256 KiB) allocates a 256 KiB bytes object per
  record and shrinks it.
- The buffer the socket transport receives into is not zeroed first (_unfilled_buffer): the
  stock class's bytearray(256 KiB) makes all of it resident, 256 KiB of RSS per connection.
"""

from cpython.bytearray cimport PyByteArray_FromStringAndSize
from cpython.pyport cimport PY_SSIZE_T_MAX

cdef extern from "_instance_dict.h":
    void ul_drop_instance_dict(object o)

import collections
import math
import sys
import warnings

from asyncio import constants as _constants
from asyncio import exceptions as _exceptions
from asyncio import protocols as _protocols
from asyncio import sslproto as _sslproto
from asyncio.log import logger as _logger

try:
    import ssl as _ssl
except ImportError:  # pragma: no cover -- a Python built without OpenSSL
    _ssl = None

if _ssl is not None:
    _SSLAgainErrors = (_ssl.SSLWantReadError, _ssl.SSLSyscallError)
    _SSLError = _ssl.SSLError
    _CertificateError = _ssl.CertificateError
    _MemoryBIO = _ssl.MemoryBIO
    _SSLObject = _ssl.SSLObject
else:  # pragma: no cover
    _SSLAgainErrors = _SSLError = _CertificateError = ()
    _MemoryBIO = _SSLObject = None

# 3.13 closes the socket transport with _force_close(exc) where 3.11/3.12 call abort().
cdef bint _ABORT_FORCES_CLOSE = sys.version_info >= (3, 13)

cdef object _BufferedProtocol = _protocols.BufferedProtocol
cdef object _add_flowcontrol_defaults = _sslproto.add_flowcontrol_defaults
cdef object _create_transport_context = _sslproto._create_transport_context
cdef object _StockState = _sslproto.SSLProtocolState
cdef object _CancelledError = _exceptions.CancelledError
cdef object _TimeoutError = _exceptions.TimeoutError
cdef Py_ssize_t _LOG_THRESHOLD_FOR_CONNLOST_WRITES = _constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES

# The states (see the module's docstring).  The names are the stock enum's, for messages.
cdef enum:
    UNWRAPPED = 0
    DO_HANDSHAKE = 1
    WRAPPED = 2
    FLUSHING = 3
    SHUTDOWN = 4

cdef tuple _STATE_NAMES = (_StockState.UNWRAPPED, _StockState.DO_HANDSHAKE, _StockState.WRAPPED,
                           _StockState.FLUSHING, _StockState.SHUTDOWN)

cdef enum:
    APP_INIT = 0
    APP_CON_MADE = 1
    APP_EOF = 2
    APP_CON_LOST = 3

cdef enum:
    # The largest buffer get_buffer() hands out unasked, as the stock class's max_size.
    MAX_SIZE = 256 * 1024
    # One TLS record's plaintext is at most 16 KiB, and a read never returns more than one
    # record's.
    RECORD_PLAINTEXT_MAX = 16 * 1024


cdef inline bytearray _unfilled_buffer(Py_ssize_t size):
    # A bytearray whose memory is left as malloc() gives it.  bytearray(size) writes zeros into
    # all of it, which makes every page resident: 256 KiB of RSS per TLS connection for a buffer
    # of which a connection exchanging small messages only ever touches the first pages (the
    # stock class pays that).  Nothing reads what nobody wrote: the socket transport receives
    # into it and buffer_updated(n) passes on the n bytes received.
    return PyByteArray_FromStringAndSize(NULL, size)


cdef inline Py_ssize_t _ceil_limit(object value) except? -1:
    # Limits may be floats (the stock class compares whatever it was given); an integer size is
    # >= x exactly when it is >= ceil(x), and <= x exactly when <= floor(x).  No size reaches
    # PY_SSIZE_T_MAX, so anything from there up -- math.inf, a huge int -- is "no limit".
    if value >= PY_SSIZE_T_MAX:
        return PY_SSIZE_T_MAX
    if type(value) is int:
        return value
    return math.ceil(value)


cdef inline Py_ssize_t _floor_limit(object value) except? -1:
    if value >= PY_SSIZE_T_MAX:
        return PY_SSIZE_T_MAX
    if type(value) is int:
        return value
    return math.floor(value)


# ---------------------------------------------------------------------------------------------
# what isinstance() sees
# ---------------------------------------------------------------------------------------------

# As with SocketTransport (_transports.pyx): an extension type cannot subclass the stock Python
# classes, yet code checks isinstance(protocol, asyncio.BufferedProtocol) (the socket transport
# itself does, to choose receives into get_buffer()), isinstance(transport, asyncio.Transport),
# and base_events' sendfile fallback isinstance(transport, transports._FlowControlMixin).  Each
# class reports a stand-in subclass of the stock class it replaces as its __class__; nothing
# instantiates the stand-ins.
class _SSLProtocolFace(_sslproto.SSLProtocol):
    def __new__(cls, *args, **kwargs):
        raise TypeError("uringloop's TLS protocol is created by the event loop")

_SSLProtocolFace.__name__ = _SSLProtocolFace.__qualname__ = 'SSLProtocol'


class _SSLTransportFace(_sslproto._SSLProtocolTransport):
    def __new__(cls, *args, **kwargs):
        raise TypeError("uringloop's TLS transport is created by the event loop")

_SSLTransportFace.__name__ = _SSLTransportFace.__qualname__ = 'SSLTransport'


# ---------------------------------------------------------------------------------------------
# the application's transport
# ---------------------------------------------------------------------------------------------

cdef class SSLTransport:
    """The transport the application's protocol gets: plaintext in, plaintext out.  It holds
    no state of its own but whether it is closed; everything goes to its SSLProtocol."""

    _start_tls_compatible = True
    _sendfile_compatible = _constants._SendfileMode.FALLBACK

    @property
    def __class__(self):
        return _SSLTransportFace

    def __cinit__(self):
        # As the socket transport's: the instance dict is made on the first attribute set.
        ul_drop_instance_dict(self)

    def __init__(self, loop, SSLProtocol ssl_protocol):
        self._loop = loop
        self.protocol = ssl_protocol
        self._closed = False

    @property
    def _ssl_protocol(self):
        return self.protocol

    cdef SSLProtocol live_protocol(self):
        if self.protocol is None:
            raise AttributeError("'NoneType' object has no attribute '_ssl_protocol' (the "
                                 "transport was closed twice)")
        return self.protocol

    def get_extra_info(self, name, default=None):
        """Get optional transport information."""
        return self.live_protocol().get_extra_info(name, default)

    def set_protocol(self, protocol):
        self.live_protocol().set_app_protocol(protocol)

    def get_protocol(self):
        return self.live_protocol().app_protocol

    def is_closing(self):
        return self._closed

    def close(self):
        """Close the transport: buffered data is flushed and close_notify sent, no more data is
        received, and the protocol's connection_lost(None) follows."""
        if not self._closed:
            self._closed = True
            self.protocol.start_shutdown()
        else:
            self.protocol = None

    def __del__(self):
        if not self._closed:
            self._closed = True
            warnings.warn("unclosed transport <asyncio._SSLProtocolTransport object>",
                          ResourceWarning)

    def is_reading(self):
        return not self.live_protocol().app_reading_paused

    def pause_reading(self):
        """No data is passed to the protocol until resume_reading()."""
        self.live_protocol().app_reading_paused = True

    def resume_reading(self):
        self.live_protocol().resume_app_reading()

    def set_write_buffer_limits(self, high=None, low=None):
        cdef SSLProtocol protocol = self.live_protocol()
        protocol.set_write_buffer_limits(high, low)
        protocol.control_app_writing()

    def get_write_buffer_limits(self):
        cdef SSLProtocol protocol = self.live_protocol()
        return (protocol.outgoing_low_water, protocol.outgoing_high_water)

    def get_write_buffer_size(self):
        return self.live_protocol().get_write_buffer_size()

    def set_read_buffer_limits(self, high=None, low=None):
        cdef SSLProtocol protocol = self.live_protocol()
        protocol.set_read_buffer_limits(high, low)
        protocol.control_ssl_reading()

    def get_read_buffer_limits(self):
        cdef SSLProtocol protocol = self.live_protocol()
        return (protocol.incoming_low_water, protocol.incoming_high_water)

    def get_read_buffer_size(self):
        return self.live_protocol().incoming.pending

    @property
    def _protocol_paused(self):
        # base_events' sendfile fallback reads it to know whether to wait for resume_writing().
        return self.live_protocol().app_writing_paused

    def write(self, data):
        """Encrypt and send data (buffered; never blocks)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data: expecting a bytes-like instance, "
                            f"got {type(data).__name__}")
        if not data:
            return
        self.live_protocol().write_one(data)

    def writelines(self, list_of_data):
        self.live_protocol().write_appdata(list_of_data)

    def write_eof(self):
        """TLS has no half-close: NotImplementedError, as the stock transport."""
        raise NotImplementedError

    def can_write_eof(self):
        return False

    def abort(self):
        """Close at once: buffered data is lost; connection_lost(None) follows."""
        self._closed = True
        if self.protocol is not None:
            self.protocol.abort(None)

    def _force_close(self, exc):
        self._closed = True
        if self.protocol is not None:
            self.protocol.abort(exc)

    def _test__append_write_backlog(self, data):
        # CPython's test_ssl fills the backlog behind the protocol's back with this.
        cdef SSLProtocol protocol = self.live_protocol()
        protocol.write_backlog.append(data)
        protocol.write_buffer_size += len(data)


# ---------------------------------------------------------------------------------------------
# the protocol the socket transport feeds
# ---------------------------------------------------------------------------------------------

cdef class SSLProtocol:
    """asyncio.BufferedProtocol for the socket transport: TLS between it and the application's
    protocol (see the module's docstring)."""

    max_size = MAX_SIZE
    # Its buffer_updated() takes the bytes out of its buffer before it returns (into the
    # incoming MemoryBIO): the socket transport may fill the buffer again at once, without
    # the once-per-iteration rule it keeps for other BufferedProtocols (ReceiveSide.got_data).
    _ul_takes_bytes_at_once = True

    @property
    def __class__(self):
        return _SSLProtocolFace

    def __init__(self, loop, app_protocol, sslcontext, waiter, server_side=False,
                 server_hostname=None, call_connection_made=True, ssl_handshake_timeout=None,
                 ssl_shutdown_timeout=None):
        if _ssl is None:
            raise RuntimeError("stdlib ssl module not available")
        self.ssl_buffer = _unfilled_buffer(MAX_SIZE)
        self.ssl_buffer_view = memoryview(self.ssl_buffer)

        if ssl_handshake_timeout is None:
            ssl_handshake_timeout = _constants.SSL_HANDSHAKE_TIMEOUT
        elif ssl_handshake_timeout <= 0:
            raise ValueError(f"ssl_handshake_timeout should be a positive number, "
                             f"got {ssl_handshake_timeout}")
        if ssl_shutdown_timeout is None:
            ssl_shutdown_timeout = _constants.SSL_SHUTDOWN_TIMEOUT
        elif ssl_shutdown_timeout <= 0:
            raise ValueError(f"ssl_shutdown_timeout should be a positive number, "
                             f"got {ssl_shutdown_timeout}")
        if not sslcontext:
            sslcontext = _create_transport_context(server_side, server_hostname)

        self.server_side = server_side
        self.server_hostname = server_hostname if (server_hostname and not server_side) else None
        self.sslcontext = sslcontext
        # More entries (peercert, cipher, compression, ssl_object) once the handshake is done.
        self.extra = {'sslcontext': sslcontext}

        self.write_backlog = collections.deque()
        self.write_buffer_size = 0

        self.waiter = waiter
        self.loop = loop
        self.set_app_protocol(app_protocol)
        self.app_transport = None
        self.app_transport_created = False
        self.transport = None
        self.handshake_timeout = ssl_handshake_timeout
        self.shutdown_timeout = ssl_shutdown_timeout
        self.incoming = _MemoryBIO()
        self.outgoing = _MemoryBIO()
        self.state = UNWRAPPED
        self.conn_lost = 0
        # start_tls() upgrades a connection whose protocol already had connection_made().
        self.app_state = APP_INIT if call_connection_made else APP_CON_MADE
        self.sslobj = sslcontext.wrap_bio(self.incoming, self.outgoing,
                                          server_side=self.server_side,
                                          server_hostname=self.server_hostname)
        if type(self.sslobj) is _SSLObject:
            self.ssl_c = self.sslobj._sslobj
        else:
            self.ssl_c = self.sslobj

        self.ssl_writing_paused = False
        self.app_reading_paused = False
        self.ssl_reading_paused = False
        self.set_read_buffer_limits(None, None)
        self.eof_received_flag = False
        self.app_writing_paused = False
        self.set_write_buffer_limits(None, None)
        self.get_app_transport()

    # ---- what tests and the loop reach by the stock class's names ----

    @property
    def _app_transport(self):
        return self.app_transport

    @property
    def _app_protocol(self):
        return self.app_protocol

    @property
    def _transport(self):
        return self.transport

    @property
    def _sslobj(self):
        return self.sslobj

    # (aiohttp's own tests read transport._ssl_protocol._sslcontext.)
    @property
    def _sslcontext(self):
        return self.sslcontext

    @property
    def _server_side(self):
        return self.server_side

    @property
    def _server_hostname(self):
        return self.server_hostname

    # Read by applications for the peer's certificate and the like, as
    # `transport._ssl_protocol._extra['peercert']` (aiohttp middlewares, among others).
    @property
    def _extra(self):
        return self.extra

    def _get_extra_info(self, name, default=None):
        return self.get_extra_info(name, default)

    @property
    def _loop(self):
        return self.loop

    @property
    def _ssl_handshake_timeout(self):
        return self.handshake_timeout

    @property
    def _ssl_shutdown_timeout(self):
        return self.shutdown_timeout

    # ---- the application's side ----

    cdef set_app_protocol(self, app_protocol):
        self.app_protocol = app_protocol
        # hasattr first: the cheap test for the common, plain Protocol.
        if hasattr(app_protocol, 'get_buffer') and isinstance(app_protocol, _BufferedProtocol):
            self.app_get_buffer = app_protocol.get_buffer
            self.app_buffer_updated = app_protocol.buffer_updated
            self.app_is_buffered = True
        else:
            self.app_get_buffer = self.app_buffer_updated = None
            self.app_is_buffered = False

    cdef wakeup_waiter(self, exc=None):
        if self.waiter is None:
            return
        if not self.waiter.cancelled():
            if exc is not None:
                self.waiter.set_exception(exc)
            else:
                self.waiter.set_result(None)
        self.waiter = None

    cdef SSLTransport get_app_transport(self):
        if self.app_transport is None:
            if self.app_transport_created:
                raise RuntimeError('Creating _SSLProtocolTransport twice')
            self.app_transport = SSLTransport(self.loop, self)
            self.app_transport_created = True
        return self.app_transport

    cdef get_extra_info(self, name, default):
        if name in self.extra:
            return self.extra[name]
        if self.transport is not None:
            return self.transport.get_extra_info(name, default)
        return default

    # ---- the socket transport's side (asyncio.BufferedProtocol) ----

    def connection_made(self, transport):
        """The socket is connected: start the handshake."""
        self.transport = transport
        self.start_handshake()

    def connection_lost(self, exc):
        """The socket is closed (exc: why, or None)."""
        self.write_backlog.clear()
        self.outgoing.read()
        self.conn_lost += 1
        # Mark the app transport closed so that its __del__ does not warn.
        if self.app_transport is not None:
            self.app_transport._closed = True
        # The application never saw connection_made() while the handshake was running, and
        # must not see connection_lost() either (the waiter gets the error instead).
        if self.state != DO_HANDSHAKE:
            if self.app_state == APP_CON_MADE or self.app_state == APP_EOF:
                self.app_state = APP_CON_LOST
                self.loop.call_soon(self.app_protocol.connection_lost, exc)
        self.set_state(UNWRAPPED)
        self.transport = None
        self.app_transport = None
        self.app_protocol = None
        self.app_get_buffer = self.app_buffer_updated = None
        self.wakeup_waiter(exc)
        if self.shutdown_timeout_handle is not None:
            self.shutdown_timeout_handle.cancel()
            self.shutdown_timeout_handle = None
        if self.handshake_timeout_handle is not None:
            self.handshake_timeout_handle.cancel()
            self.handshake_timeout_handle = None

    def get_buffer(self, Py_ssize_t n):
        cdef Py_ssize_t want = n
        if want <= 0 or want > MAX_SIZE:
            want = MAX_SIZE
        if len(self.ssl_buffer) < want:
            self.ssl_buffer = _unfilled_buffer(want)
            self.ssl_buffer_view = memoryview(self.ssl_buffer)
        return self.ssl_buffer_view

    def buffer_updated(self, Py_ssize_t nbytes):
        self.incoming.write(self.ssl_buffer_view[:nbytes])
        if self.state == WRAPPED:
            self.do_read()
        elif self.state == DO_HANDSHAKE:
            self.do_handshake()
        elif self.state == FLUSHING:
            self.do_flush()
        elif self.state == SHUTDOWN:
            self.do_shutdown()

    def eof_received(self):
        """The peer half-closed the socket (without close_notify, or after it)."""
        self.eof_received_flag = True
        try:
            if self.loop.get_debug():
                _logger.debug("%r received EOF", self)
            if self.state == DO_HANDSHAKE:
                self.on_handshake_complete(ConnectionResetError)
            elif self.state == WRAPPED:
                self.set_state(FLUSHING)
                if self.app_reading_paused:
                    # Keep the socket transport open: the plaintext still buffered is delivered
                    # after resume_reading(), then the shutdown goes on.
                    return True
                self.do_flush()
            elif self.state == FLUSHING:
                self.do_write()
                self.set_state(SHUTDOWN)
                self.do_shutdown()
            elif self.state == SHUTDOWN:
                self.do_shutdown()
        except Exception:
            self.transport.close()
            raise

    def pause_writing(self):
        """The socket transport's buffer is over its high-water mark."""
        assert not self.ssl_writing_paused
        self.ssl_writing_paused = True

    def resume_writing(self):
        """The socket transport's buffer drained below its low-water mark."""
        assert self.ssl_writing_paused
        self.ssl_writing_paused = False
        self.process_outgoing()

    # ---- the state machine ----

    cdef int set_state(self, int new_state) except -1:
        cdef int old = self.state
        if (new_state == UNWRAPPED
                or (old == UNWRAPPED and new_state == DO_HANDSHAKE)
                or (old == DO_HANDSHAKE and new_state == WRAPPED)
                or (old == WRAPPED and new_state == FLUSHING)
                or (old == FLUSHING and new_state == SHUTDOWN)):
            self.state = new_state
            return 0
        raise RuntimeError('cannot switch state from {} to {}'.format(
            _STATE_NAMES[old], _STATE_NAMES[new_state]))

    # handshake

    cdef start_handshake(self):
        if self.loop.get_debug():
            _logger.debug("%r starts SSL handshake", self)
            self.handshake_start_time = self.loop.time()
        else:
            self.handshake_start_time = None
        self.set_state(DO_HANDSHAKE)
        self.handshake_timeout_handle = self.loop.call_later(self.handshake_timeout,
                                                             self._check_handshake_timeout)
        self.do_handshake()

    def _check_handshake_timeout(self):
        if self.state == DO_HANDSHAKE:
            msg = (f"SSL handshake is taking longer than {self.handshake_timeout} seconds: "
                   f"aborting the connection")
            self.fatal_error(ConnectionAbortedError(msg), 'Fatal error on transport')

    cdef do_handshake(self):
        try:
            self.sslobj.do_handshake()
        except _SSLAgainErrors:
            self.process_outgoing()
        except _SSLError as exc:
            self.on_handshake_complete(exc)
        else:
            self.on_handshake_complete(None)

    cdef on_handshake_complete(self, handshake_exc):
        if self.handshake_timeout_handle is not None:
            self.handshake_timeout_handle.cancel()
            self.handshake_timeout_handle = None
        sslobj = self.sslobj
        try:
            if handshake_exc is not None:
                raise handshake_exc
            self.set_state(WRAPPED)
            peercert = sslobj.getpeercert()
        except Exception as exc:
            handshake_exc = None
            self.set_state(UNWRAPPED)
            if isinstance(exc, _CertificateError):
                msg = 'SSL handshake failed on verifying the certificate'
            else:
                msg = 'SSL handshake failed'
            self.fatal_error(exc, msg)
            self.wakeup_waiter(exc)
            return

        if self.loop.get_debug():
            dt = self.loop.time() - self.handshake_start_time
            _logger.debug("%r: SSL handshake took %.1f ms", self, dt * 1e3)

        self.extra.update(peercert=peercert, cipher=sslobj.cipher(),
                          compression=sslobj.compression(), ssl_object=sslobj)
        if self.app_state == APP_INIT:
            self.app_state = APP_CON_MADE
            self.app_protocol.connection_made(self.get_app_transport())
        self.wakeup_waiter()
        self.do_read()

    # shutdown

    cdef start_shutdown(self):
        if self.state == FLUSHING or self.state == SHUTDOWN or self.state == UNWRAPPED:
            return
        if self.app_transport is not None:
            self.app_transport._closed = True
        if self.state == DO_HANDSHAKE:
            self.abort(None)
        else:
            self.set_state(FLUSHING)
            self.shutdown_timeout_handle = self.loop.call_later(self.shutdown_timeout,
                                                                self._check_shutdown_timeout)
            self.do_flush()

    def _check_shutdown_timeout(self):
        if self.state == FLUSHING or self.state == SHUTDOWN:
            self.transport._force_close(_TimeoutError('SSL shutdown timed out'))

    cdef do_flush(self):
        # Whatever plaintext is still buffered goes to the application first -- all of it.  One
        # do_read() is not enough for a BufferedProtocol: it fills one buffer and leaves the
        # rest to a call_soon(), which finds the state SHUTDOWN (the stock class loses that rest
        # when the peer ends without close_notify).  So read again while that makes progress; a
        # partial record (the peer stopped mid-record) makes none.  A protocol that paused
        # reading meanwhile, as one that had paused before the close, gets no more.
        cdef Py_ssize_t left = -1, now
        while True:
            self.do_read()
            if self.state != FLUSHING:
                return          # aborted (or closed) from a callback of the application
            if self.app_reading_paused or self.nothing_to_read():
                break
            now = self.incoming.pending + self.ssl_c.pending()
            if now == left:
                break
            left = now
        self.set_state(SHUTDOWN)
        self.do_shutdown()

    cdef do_shutdown(self):
        try:
            if not self.eof_received_flag:
                self.sslobj.unwrap()
        except _SSLAgainErrors:
            self.process_outgoing()
        except _SSLError as exc:
            self.on_shutdown_complete(exc)
        else:
            self.process_outgoing()
            self.call_eof_received()
            self.on_shutdown_complete(None)

    cdef on_shutdown_complete(self, shutdown_exc):
        if self.shutdown_timeout_handle is not None:
            self.shutdown_timeout_handle.cancel()
            self.shutdown_timeout_handle = None
        if shutdown_exc:
            self.fatal_error(shutdown_exc, 'Fatal error on transport')
        else:
            self.loop.call_soon(self.transport.close)

    cdef abort(self, exc):
        self.set_state(UNWRAPPED)
        if self.transport is not None:
            if _ABORT_FORCES_CLOSE:
                self.transport._force_close(exc)
            else:
                self.transport.abort()

    # ---- outgoing: the application's plaintext to ciphertext on the socket ----

    cdef int refuse_write(self) except -1:
        # Writing after close(), or to a lost connection: dropped, with a warning once the
        # application keeps at it (the stock transports' threshold).
        if self.conn_lost >= _LOG_THRESHOLD_FOR_CONNLOST_WRITES:
            _logger.warning('SSL connection is closed')
        self.conn_lost += 1
        return 0

    cdef write_one(self, data):
        # SSLTransport.write(): the common case of write_appdata((data,)) without the tuple.
        cdef Py_ssize_t count, size
        if self.state != WRAPPED:
            if self.state == FLUSHING or self.state == SHUTDOWN or self.state == UNWRAPPED:
                self.refuse_write()
                return
            # The handshake is still running: the backlog waits for it.
            self.write_backlog.append(data)
            self.write_buffer_size += len(data)
            return
        try:
            if self.write_backlog:
                self.write_backlog.append(data)
                self.write_buffer_size += len(data)
                self.do_write()
                return
            # Nothing queued before it: straight to OpenSSL (a memory BIO takes all of it).
            size = len(data)
            try:
                count = self.ssl_c.write(data)
            except _SSLAgainErrors:
                count = 0
            if count < size:
                if count:
                    data = data[count:]
                self.write_backlog.append(data)
                self.write_buffer_size += size - count
            self.process_outgoing()
        except Exception as ex:
            self.fatal_error(ex, 'Fatal error on SSL protocol')

    cdef write_appdata(self, list_of_data):
        if self.state == FLUSHING or self.state == SHUTDOWN or self.state == UNWRAPPED:
            self.refuse_write()
            return
        for data in list_of_data:
            self.write_backlog.append(data)
            self.write_buffer_size += len(data)
        try:
            if self.state == WRAPPED:
                self.do_write()
        except Exception as ex:
            self.fatal_error(ex, 'Fatal error on SSL protocol')

    cdef do_write(self):
        cdef Py_ssize_t count, data_len
        backlog = self.write_backlog
        try:
            while backlog:
                data = backlog[0]
                count = self.ssl_c.write(data)
                data_len = len(data)
                if count < data_len:
                    backlog[0] = data[count:]
                    self.write_buffer_size -= count
                else:
                    backlog.popleft()
                    self.write_buffer_size -= data_len
        except _SSLAgainErrors:
            pass
        self.process_outgoing()

    cdef process_outgoing(self):
        if not self.ssl_writing_paused:
            if self.outgoing.pending:
                self.transport.write(self.outgoing.read())
        self.control_app_writing()

    # ---- incoming: ciphertext received to the application's plaintext ----

    cdef bint nothing_to_read(self) except -1:
        # The module's docstring: no ciphertext left in the BIO and no plaintext inside OpenSSL
        # means a read could only raise SSLWantReadError.
        return not self.incoming.pending and not self.ssl_c.pending()

    cdef do_read(self):
        if self.state != WRAPPED and self.state != FLUSHING:
            return
        try:
            if not self.app_reading_paused:
                if self.app_is_buffered:
                    self.do_read_buffered()
                else:
                    self.do_read_copied()
                if self.write_backlog:
                    self.do_write()
                else:
                    self.process_outgoing()
            self.control_ssl_reading()
        except Exception as ex:
            self.fatal_error(ex, 'Fatal error on SSL protocol')

    cdef do_read_buffered(self):
        cdef Py_ssize_t offset = 0, count = 1, wants
        buf = self.app_get_buffer(self.incoming.pending)
        wants = len(buf)
        view = None
        try:
            count = self.ssl_c.read(wants, buf)
            if count > 0:
                offset = count
                while offset < wants:
                    if self.nothing_to_read():
                        break
                    # The rest of the buffer as a view.  The stock class reads into buf[offset:],
                    # which for a bytearray (get_buffer() may return one) is a copy: the bytes
                    # read into it are lost.
                    if view is None:
                        view = memoryview(buf)
                    count = self.ssl_c.read(wants - offset, view[offset:])
                    if count > 0:
                        offset += count
                    else:
                        break
                else:
                    # The application's buffer is full: read on in the next iteration.
                    self.loop.call_soon(self._do_read)
        except _SSLAgainErrors:
            pass
        if view is not None:
            # No export of the application's buffer left when it is told: buffer_updated() may
            # resize the bytearray it returned (BufferError otherwise).
            view.release()
            view = None
        if offset > 0:
            self.app_buffer_updated(offset)
        if not count:
            # close_notify
            self.call_eof_received()
            self.start_shutdown()

    cdef do_read_copied(self):
        # Read records until there is no more; the application gets one bytes object.
        cdef Py_ssize_t count = 1, want, held
        cdef object first = None
        cdef list chunks = None
        try:
            while True:
                # Ask for no more than can come: a record's plaintext is smaller than its
                # ciphertext, so what the BIO holds (or what OpenSSL holds decrypted) bounds the
                # next read, and the bytes object read() makes is about the right size from the
                # start.  Nothing held: nothing to read (the module's docstring).
                want = self.incoming.pending
                held = self.ssl_c.pending()
                if held > want:
                    want = held
                if want == 0:
                    break
                if want > RECORD_PLAINTEXT_MAX:
                    want = RECORD_PLAINTEXT_MAX
                data = self.ssl_c.read(want)
                count = len(data)
                if not count:
                    break
                if first is None:
                    first = data
                elif chunks is None:
                    chunks = [first, data]
                else:
                    chunks.append(data)
        except _SSLAgainErrors:
            pass
        if chunks is not None:
            self.app_protocol.data_received(b''.join(chunks))
        elif first is not None:
            self.app_protocol.data_received(first)
        if not count:
            # close_notify
            self.call_eof_received()
            self.start_shutdown()

    def _do_read(self):
        self.do_read()

    cdef call_eof_received(self):
        try:
            if self.app_state == APP_CON_MADE:
                self.app_state = APP_EOF
                keep_open = self.app_protocol.eof_received()
                if keep_open:
                    _logger.warning('returning true from eof_received() '
                                    'has no effect when using ssl')
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as ex:
            self.fatal_error(ex, 'Error calling eof_received()')

    # ---- flow control ----

    cdef Py_ssize_t get_write_buffer_size(self) except -1:
        return self.outgoing.pending + self.write_buffer_size

    cdef control_app_writing(self):
        cdef Py_ssize_t size = self.get_write_buffer_size()
        if size >= self.outgoing_high and not self.app_writing_paused:
            self.app_writing_paused = True
            try:
                self.app_protocol.pause_writing()
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:
                self.report_flow_failure('protocol.pause_writing() failed', exc)
        elif size <= self.outgoing_low and self.app_writing_paused:
            self.app_writing_paused = False
            try:
                self.app_protocol.resume_writing()
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:
                self.report_flow_failure('protocol.resume_writing() failed', exc)

    cdef report_flow_failure(self, message, exc):
        # The application's pause_writing()/resume_writing() raised: reported, not fatal.
        self.loop.call_exception_handler({
            'message': message,
            'exception': exc,
            'transport': self.app_transport,
            'protocol': self,
        })

    cdef set_write_buffer_limits(self, high, low):
        high, low = _add_flowcontrol_defaults(high, low,
                                              _constants.FLOW_CONTROL_HIGH_WATER_SSL_WRITE)
        self.outgoing_high = _ceil_limit(high)
        self.outgoing_low = _floor_limit(low)
        self.outgoing_high_water = high
        self.outgoing_low_water = low

    cdef resume_app_reading(self):
        if self.app_reading_paused:
            self.app_reading_paused = False
            self.loop.call_soon(self._resume_app_reading)

    def _resume_app_reading(self):
        # What was held back while the application's reading was paused, and a shutdown that
        # waited for it (eof_received() while paused).
        if self.state == WRAPPED:
            self.do_read()
        elif self.state == FLUSHING:
            self.do_flush()
        elif self.state == SHUTDOWN:
            self.do_shutdown()

    cdef control_ssl_reading(self):
        cdef Py_ssize_t size = self.incoming.pending
        if size >= self.incoming_high and not self.ssl_reading_paused:
            self.ssl_reading_paused = True
            self.transport.pause_reading()
        elif size <= self.incoming_low and self.ssl_reading_paused:
            self.ssl_reading_paused = False
            self.transport.resume_reading()

    cdef set_read_buffer_limits(self, high, low):
        high, low = _add_flowcontrol_defaults(high, low,
                                              _constants.FLOW_CONTROL_HIGH_WATER_SSL_READ)
        self.incoming_high = _ceil_limit(high)
        self.incoming_low = _floor_limit(low)
        self.incoming_high_water = high
        self.incoming_low_water = low

    # ---- errors ----

    cdef fatal_error(self, exc, message):
        if self.transport:
            self.transport._force_close(exc)
        if isinstance(exc, OSError):
            if self.loop.get_debug():
                _logger.debug("%r: %s", self, message, exc_info=True)
        elif not isinstance(exc, _CancelledError):
            self.loop.call_exception_handler({
                'message': message,
                'exception': exc,
                'transport': self.transport,
                'protocol': self,
            })
