# cython: language_level=3
"""Write flow control and protocol-callback error reporting for the completion-based transports.

The stock loop's transports get these from asyncio.transports._FlowControlMixin, a pure-Python
class; ours are completion handlers compiled into extension types (which cannot inherit from a
Python class), so the same contract is implemented here once, for the stream transport, the
datagram transport and the pipe transports: the protocol's pause_writing() is called when the
bytes accepted but not yet written exceed the high-water mark, resume_writing() when they drop
to the low-water mark, with the stock defaults (64 KiB, high // 4) and messages.  Each transport
says how it counts those bytes (write_buffer_size()).

A protocol callback that raises inside a completion handler must not unwind into the Proactor
(the transport would be left half-updated); it is reported to the loop's exception handler, as
the stock loop's Handle._run reports an exception escaping a reader callback.

This module also holds the Python-level halves the datagram and pipe transports share: their
asyncio transport objects are thin Python classes delegating to a TransportCore (`_core`).
"""

from asyncio import events as _events
from asyncio import futures as _futures
from asyncio import constants as _constants
from asyncio import trsock as _trsock
from asyncio.log import logger as _logger

import math
import warnings
from collections import deque as _deque

from cpython.pyport cimport PY_SSIZE_T_MAX

from cpython.contextvars cimport PyContext_CopyCurrent, PyContext_Enter, PyContext_Exit

from uringloop._proactor cimport Completer, Operation, Proactor

cdef Py_ssize_t _LOG_THRESHOLD = _constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES


cdef class WriteFlow(Completer):

    cdef int init_flow(self, object loop, object protocol) except -1:
        self.loop = loop
        self.proactor = <Proactor>loop._proactor
        self.protocol = protocol
        self.high_water = 64 * 1024
        self.low_water = self.high_water // 4
        return 0

    cdef Py_ssize_t write_buffer_size(self) noexcept:
        return 0

    cdef object visible_transport(self):
        # What the exception handler's context names as the transport.
        return self

    cdef int maybe_pause_protocol(self) except -1:
        if self.paused_protocol is not None or self.write_buffer_size() <= self.high_water:
            return 0
        self.paused_protocol = self.protocol
        try:
            self.protocol.pause_writing()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self.loop.call_exception_handler({
                'message': 'protocol.pause_writing() failed',
                'exception': exc,
                'transport': self.visible_transport(),
                'protocol': self.protocol,
            })
        return 0

    cdef int maybe_resume_protocol(self) except -1:
        # resume_writing() goes to the protocol that was paused, which need not be the current
        # one.  The stock transports hand most of a write to the kernel inside write(), so they
        # rarely pause; ours always buffer until the completion, so a protocol that writes a big
        # block and then hands the transport over (loop.start_tls() swapping in an SSLProtocol,
        # or any set_protocol()) is paused at the swap.  The new protocol was never paused --
        # SSLProtocol asserts as much -- while the old one (a StreamWriter waiting in drain(),
        # now the SSL layer's application protocol) still waits to hear that its bytes left.
        cdef object paused = self.paused_protocol
        if paused is None or self.write_buffer_size() > self.low_water:
            return 0
        self.paused_protocol = None
        try:
            paused.resume_writing()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self.loop.call_exception_handler({
                'message': 'protocol.resume_writing() failed',
                'exception': exc,
                'transport': self.visible_transport(),
                'protocol': paused,
            })
        return 0

    cdef int count_lost_write(self, str what) except -1:
        # The stock transports count writes after the connection is gone and warn past a
        # threshold instead of raising (the protocol learns of the loss via connection_lost).
        if self.conn_lost >= _LOG_THRESHOLD:
            _logger.warning(what)
        self.conn_lost += 1
        return 0

    cdef int report_fatal_error(self, object exc, str message, bint quiet) except -1:
        # The first half of every transport's _fatal_error: an expected kind of error (quiet) is
        # only logged in debug mode, anything else goes to the exception handler.  Closing the
        # transport is the caller's second half.
        if quiet:
            if self.loop.get_debug():
                _logger.debug("%r: %s", self.visible_transport(), message, exc_info=exc)
        else:
            self.loop.call_exception_handler({
                'message': message,
                'exception': exc,
                'transport': self.visible_transport(),
                'protocol': self.protocol,
            })
        return 0

    def get_write_buffer_limits(self):
        # The numbers as given, as the stock transports return them (the marks compared with
        # are their floors: _water_mark).
        if self.limits is not None:
            return self.limits
        return (self.low_water, self.high_water)

    def set_write_buffer_limits(self, high=None, low=None):
        if high is None:
            high = 64 * 1024 if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f'high ({high!r}) must be >= low ({low!r}) must be >= 0')
        self.high_water = _water_mark(high)
        self.low_water = _water_mark(low)
        self.limits = (low, high)
        self.maybe_pause_protocol()


cdef Py_ssize_t _water_mark(object limit) except -1:
    """A write-buffer limit (checked >= 0) as a byte count.  The stock transports keep whatever
    number they are given -- 1e6 and 2**70 work there -- and compare sizes with it; a size in
    whole bytes exceeds x exactly when it exceeds floor(x), so the floor, capped at the largest
    size there can be, makes every pause and resume come where the stock loop's would."""
    if not isinstance(limit, int):
        if limit == math.inf:
            return PY_SSIZE_T_MAX
        limit = math.floor(limit)
    return min(limit, PY_SSIZE_T_MAX)


cdef object not_contiguous_error():
    """What socket.send(), sendto() and os.write() raise for a view whose bytes are not
    contiguous (a slice with a step, a transposed array), and so what the stock transports'
    writes fail with, as a fatal write error with nothing of it sent.  (Copying it into bytes
    and sending that, as uringloop did, made code work here that fails on the stock loop;
    uvloop refuses such a view too.)"""
    return BufferError('memoryview: underlying buffer is not C-contiguous')


cdef object queued_not_contiguous_error(object view, bint extend):
    """What the stock transports' write() raises to its caller for such a view when bytes are
    already queued (nothing of it sent, the transport left as it was): the TypeError of adding
    it to their bytearray buffer -- `+=` in the pipe transport, extend() in the socket
    transport before 3.12 (from 3.12 it queues the view, and the later send fails it).  Made
    by that very operation, for its words."""
    cdef bytearray buf = bytearray()
    try:
        if extend:
            buf.extend(view)
        else:
            buf += view
    except TypeError as exc:
        return exc
    return not_contiguous_error()


cdef int add_socket_extra(dict extra, object sock) except -1:
    """The get_extra_info() entries of a socket transport, as the stock transports fill them
    ('peername' may have been given by the caller: an accepted connection's address)."""
    extra['socket'] = _trsock.TransportSocket(sock)
    try:
        extra['sockname'] = sock.getsockname()
    except OSError:
        extra['sockname'] = None
    if 'peername' not in extra:
        try:
            extra['peername'] = sock.getpeername()
        except OSError:
            extra['peername'] = None
    return 0


cdef class TransportCore(WriteFlow):

    def __init__(self, loop, transport, protocol):
        self.init_flow(loop, protocol)
        self.transport = transport
        self.context = PyContext_CopyCurrent()
        self.stash = _deque()

    cdef int op_done(self, Operation op, int res, unsigned flags) except -1:
        # Completions are dispatched outside of any context.  What they call -- the protocol's
        # datagram_received(), data_received(), error_received(), resume_writing(), and the
        # callbacks they schedule -- runs in (a copy of) the context the transport was made
        # in, as the stock loop's reader and writer handles run theirs (the stream transport
        # does the same: SocketTransport.enter_context).  Entries nest: an operation cancelled
        # before it reached the kernel completes from inside a callback.
        if self.context_depth == 0:
            PyContext_Enter(self.context)
        self.context_depth += 1
        try:
            return self.completed(op, res, flags)
        except Exception as exc:
            # The loop's own work for the completion failed (MemoryError...): as the stock
            # transports' reader and writer callbacks, a fatal error of the transport's (see
            # _transports.SocketTransport.op_done for why).
            if not self.completion_failed(op, exc):
                raise
            return 0
        finally:
            self.context_depth -= 1
            if self.context_depth == 0:
                PyContext_Exit(self.context)

    cdef int completed(self, Operation op, int res, unsigned flags) except -1:
        return 0

    cdef bint completion_failed(self, Operation op, object exc) except -1:
        """completed() raised `exc`: end the transport with it and return True (or False: the
        Proactor reports it)."""
        return False

    cdef Py_ssize_t write_buffer_size(self) noexcept:
        return self.buffer_size

    cdef object visible_transport(self):
        return self.transport

    cdef int callback_failed(self, str method, tuple args, object exc) except -1:
        """protocol.<method>(*args) raised: reported as the stock loop reports an exception out
        of the reader callback that called it -- 'Exception in callback ...', with a `handle`
        (an exception handler may read context['handle']) -- naming the protocol's method
        rather than the transport's internal _read_ready(); the transport stays open."""
        callback = getattr(self.protocol, method, None)
        self.loop.call_exception_handler({
            'message': f'Exception in callback {self.protocol!r}.{method}()',
            'exception': exc,
            'handle': _events.Handle(callback, args, self.loop) if callback is not None else None,
            'transport': self.transport,
            'protocol': self.protocol,
        })
        return 0

    cdef int release_if_idle(self) except -1:
        # Close the descriptor once connection_lost() has run and the kernel holds nothing.
        return 0

    cdef int let_go_of_the_loop(self) except -1:
        """Lost, and released (release_if_idle): nothing of ours is in the kernel and nothing
        will be again.  The loop is let go of, as the stock transports drop theirs in
        _call_connection_lost: the core, the transport object and the operations refer to one
        another, and a loop in that cycle would outlive its close until the cyclic collector
        came (Proactor.let_go_of_the_loop)."""
        transport = self.transport
        if transport is not None:
            transport._loop = None
        self.loop = None
        return 0

    def loop_closed(self):
        """The loop closed with this transport still open.  Nothing can complete any more, so
        the core no longer needs the transport object it reports to -- and its reference is
        the one cycle (transport._core <-> core.transport) that kept a dropped transport, and
        its descriptor, alive until the cyclic collector came.  Dropped, an unclosed transport
        is collected by reference counting the moment its user lets go of it, as the stock
        loop's is: one 'unclosed transport' warning, and its __del__ closes the descriptor
        before the socket or file object under it is collected (which would warn again)."""
        self.transport = None

    # ---- pausing the receiving side (datagram and read-pipe cores) ----
    #
    # pause_reading() stops the receive the kernel holds (stop_receive), but a cancel races with
    # the completion: a datagram or a read can still complete after it.  What completes while
    # paused is real and is kept in `stash`, in order; the completion handlers also stash
    # whatever completes while the stash is not empty, so nothing overtakes it.  resume_reading()
    # delivers the stash from the ready queue -- not from inside the caller's resume_reading(),
    # as the stock transports deliver only from their reader callbacks -- and receives again
    # (start_receive) once it is empty.

    cdef int start_receive(self) except -1:
        return 0

    cdef int stop_receive(self) except -1:
        return 0

    cdef int deliver_stashed(self, object item) except -1:
        return 0

    def flush_stash(self, unsigned ticket):
        """Deliver what completed after pause_reading(), in order, then receive again -- unless
        a pause_reading() since the resume_reading() that asked for it withdrew it."""
        if not self.stash_flush_scheduled or ticket != self.stash_ticket:
            return
        self.stash_flush_scheduled = False
        while self.stash and not self.paused and not self.closing:
            self.deliver_stashed(self.stash.popleft())
        if self.closing:
            self.stash.clear()
        elif not self.paused:
            self.start_receive()

    def pause_reading(self):
        if self.closing or self.paused:
            return
        self.paused = True
        self.stash_flush_scheduled = False      # (withdrawn: see resume_reading)
        self.stop_receive()
        if self.loop.get_debug():
            _logger.debug("%r pauses reading", self.transport)

    def resume_reading(self):
        if self.closing or not self.paused:
            return
        self.paused = False
        if self.stash:
            # Delivered where the stock transport would read it after resume_reading(): its
            # reader, registered again, is polled once the ready callbacks have all run, so
            # behind everything they queued -- also what the caller queued after this call (see
            # _receiveside.ReceiveSide.schedule_stash_after_ready_pass).
            if not self.stash_flush_scheduled:
                self.stash_flush_scheduled = True
                self.stash_ticket += 1
                self.proactor.after_ready_pass.append((self.flush_stash, self.stash_ticket))
        else:
            self.start_receive()
        if self.loop.get_debug():
            _logger.debug("%r resumes reading", self.transport)

    def call_connection_lost(self, exc):
        try:
            self.protocol.connection_lost(exc)
        finally:
            self.lost = True
            self.protocol = None
            self.release_if_idle()

    @property
    def protocol(self):
        return self.protocol

    @protocol.setter
    def protocol(self, protocol):
        self.protocol = protocol


# ---------------------------------------------------------------------------------------------
# the Python-level transport objects of the datagram and pipe transports: what they delegate to
# their core (`self._core`) the same way.  Listed before the asyncio base class, whose methods
# only raise NotImplementedError.
# ---------------------------------------------------------------------------------------------

class CoreTransportMixin:
    """BaseTransport methods answered by the core."""

    def _announce(self, loop, protocol, waiter, start, start_after_made=True):
        """What every transport does once built, as the stock transports do it: from the ready
        queue, protocol.connection_made(self), then `start` (the core's first operation) --
        one pass of the ready queue later when `start_after_made`, so that what
        connection_made() schedules runs before the protocol hears of any input (the stream
        transport's _start_reading says why) -- and the waiter's result."""
        loop._ul_core_transports.add(self)    # for Loop.close(): see TransportCore.loop_closed
        loop.call_soon(protocol.connection_made, self)
        if start_after_made:
            loop.call_soon(loop.call_soon, start)
        else:
            loop.call_soon(start)
        if waiter is not None:
            loop.call_soon(_futures._set_result_unless_cancelled, waiter, None)

    def _repr_info(self):
        """The start of every core transport's repr: its class, 'closed' or 'closing', its fd.
        The transports add what they do (reading, sending) while the fd is open."""
        core = self._core
        info = [type(self).__name__]
        if core is None or not core.fd_open:
            info.append('closed')
        elif core.closing:
            info.append('closing')
        if core is not None:
            info.append(f'fd={core.fd}')
        return info

    def set_protocol(self, protocol):
        self._core.protocol = protocol

    def get_protocol(self):
        return self._core.protocol

    def is_closing(self):
        return self._core.closing

    def close(self):
        self._core.close()

    def __del__(self, _warn=warnings.warn):
        core = self._core
        if core is not None and core.fd_open:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            core.close_unclosed()


class CoreReadingMixin:
    """ReadTransport's reading control, answered by the core."""

    def is_reading(self):
        core = self._core
        return not core.closing and not core.paused

    def pause_reading(self):
        self._core.pause_reading()

    def resume_reading(self):
        self._core.resume_reading()


class CoreWritingMixin:
    """WriteTransport's flow control and abort(), answered by the core."""

    def get_write_buffer_size(self):
        return self._core.buffer_size

    def get_write_buffer_limits(self):
        return self._core.get_write_buffer_limits()

    def set_write_buffer_limits(self, high=None, low=None):
        self._core.set_write_buffer_limits(high, low)

    def abort(self):
        self._core.abort()
