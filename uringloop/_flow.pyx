# cython: language_level=3
"""Write flow control and protocol-callback error reporting for the UNIX-layer transports.

The stock loop's transports get these from asyncio.transports._FlowControlMixin, a pure-Python
class; ours are completion handlers compiled into extension types (which cannot inherit from a
Python class), so the same contract is implemented here once: the protocol's pause_writing() is
called when the bytes accepted but not yet written exceed the high-water mark, resume_writing()
when they drop to the low-water mark, with the stock defaults (64 KiB, high // 4) and messages.

A protocol callback that raises inside a completion handler must not unwind into the Proactor
(the transport would be left half-updated); it is reported to the loop's exception handler, as
the stock loop's Handle._run reports an exception escaping a reader callback.
"""

from asyncio import constants as _constants
from asyncio.log import logger as _logger

from uringloop._ops cimport Completer, Proactor

cdef Py_ssize_t _LOG_THRESHOLD = _constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES


cdef class TransportCore(Completer):

    def __init__(self, loop, transport, protocol):
        self.loop = loop
        self.proactor = <Proactor>loop._proactor
        self.transport = transport
        self.protocol = protocol
        self.high_water = 64 * 1024
        self.low_water = self.high_water // 4

    cdef int maybe_pause_protocol(self) except -1:
        if self.buffer_size <= self.high_water or self.protocol_paused:
            return 0
        self.protocol_paused = True
        try:
            self.protocol.pause_writing()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self.loop.call_exception_handler({
                'message': 'protocol.pause_writing() failed',
                'exception': exc,
                'transport': self.transport,
                'protocol': self.protocol,
            })
        return 0

    cdef int maybe_resume_protocol(self) except -1:
        if not self.protocol_paused or self.buffer_size > self.low_water:
            return 0
        self.protocol_paused = False
        try:
            self.protocol.resume_writing()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self.loop.call_exception_handler({
                'message': 'protocol.resume_writing() failed',
                'exception': exc,
                'transport': self.transport,
                'protocol': self.protocol,
            })
        return 0

    cdef int callback_failed(self, str what, object exc) except -1:
        self.loop.call_exception_handler({
            'message': f'Exception in callback {what}',
            'exception': exc,
            'transport': self.transport,
            'protocol': self.protocol,
        })
        return 0

    cdef int count_lost_write(self, str what) except -1:
        # The stock transports count writes after the connection is gone and warn past a
        # threshold instead of raising (the protocol learns of the loss via connection_lost).
        if self.conn_lost >= _LOG_THRESHOLD:
            _logger.warning(what)
        self.conn_lost += 1
        return 0

    def get_write_buffer_limits(self):
        return (self.low_water, self.high_water)

    def set_write_buffer_limits(self, high=None, low=None):
        if high is None:
            high = 64 * 1024 if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f'high ({high!r}) must be >= low ({low!r}) must be >= 0')
        self.high_water = high
        self.low_water = low
        self.maybe_pause_protocol()

    @property
    def write_paused(self):
        return self.protocol_paused
