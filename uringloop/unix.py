"""The loop's UNIX-specific API on the Proactor: datagram endpoints, pipes, subprocesses, signals,
and readiness callbacks (add_reader/add_writer) in an epoll instance that the ring polls.

BaseEventLoop implements the public methods (create_datagram_endpoint, connect_read_pipe,
subprocess_exec, ...) and calls the `_make_*_transport` factories defined here, which build our
completion-based transports (compiled, in _datagram, _pipes) instead of the selector ones.
"""

from __future__ import annotations

import errno
import signal
import sys
import threading
import warnings

from asyncio import coroutines as _coroutines
from asyncio import events as _events
from asyncio import unix_events as _unix_events
from asyncio.log import logger as _logger

# The sock_* state is part of every loop.  The readiness registry, the transports of datagram
# endpoints and pipes, the child watcher and the signal reader are imported where a loop first
# makes one: each compiled module resident costs memory (~0.7 MiB of RSS for four of these
# together with _sendfile, measured in a fresh process making a loop; _readiness ~0.1 MiB), and
# a TCP server never needs them.
from uringloop import _sockio

_readiness = None   # uringloop._readiness, imported by the first add/remove_reader/writer


def _readiness_module():
    global _readiness
    if _readiness is None:
        from uringloop import _readiness as module
        _readiness = module
    return _readiness


def _sighandler_noop(signum, frame):
    """Python-level handler of the signals the loop handles: the C-level handler has already
    written the signal number to the wake-up socket, which is all the loop needs."""


class UnixMixin:
    """Mixed into uringloop.Loop: UDP, pipes, processes, signals, readiness compatibility."""

    _ul_readiness = None        # the _readiness.Readiness registry, created on first use
    _ul_children = None         # the _children.ChildWatcher, created with the first child
    _ul_close_error = None      # what removing the signal handlers raised, for close() to raise
    _ul_signal_reader = None    # the _signals.SignalReader, created with the first handler
    _ul_datagram_buffers = None         # the UDP transports' shared provided-buffer group
    _ul_datagram_buffers_failed = None  # True once we know it cannot be had

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._signal_handlers = {}      # signal number -> Handle, as in the stock loop

    # ---- readiness callbacks (an epoll instance, polled on the ring: _readiness.pyx) ----

    # The private forms are what asyncio internals (pipe transports, child watchers, sendfile)
    # call; they skip the transport-ownership check, as in the stock loop.  Registrations, not
    # events: the module lookup per call costs nothing that matters.
    def _add_reader(self, fd, callback, *args):
        return _readiness_module().add_reader(self, fd, callback, *args)

    def _remove_reader(self, fd):
        return _readiness_module().remove_reader(self, fd)

    def _add_writer(self, fd, callback, *args):
        return _readiness_module().add_writer(self, fd, callback, *args)

    def _remove_writer(self, fd):
        return _readiness_module().remove_writer(self, fd)

    def add_reader(self, fd, callback, *args):
        """Add a reader callback."""
        self._ensure_fd_no_transport(fd)
        self._add_reader(fd, callback, *args)

    def remove_reader(self, fd):
        """Remove a reader callback."""
        self._ensure_fd_no_transport(fd)
        return self._remove_reader(fd)

    def add_writer(self, fd, callback, *args):
        """Add a writer callback."""
        self._ensure_fd_no_transport(fd)
        self._add_writer(fd, callback, *args)

    def remove_writer(self, fd):
        """Remove a writer callback."""
        self._ensure_fd_no_transport(fd)
        return self._remove_writer(fd)

    # ---- datagrams ----

    def _make_datagram_transport(self, sock, protocol, address=None, waiter=None, extra=None):
        self._ensure_fd_no_transport(sock)
        # The socket may have been connected with sock_connect (remote_addr=): that per-socket
        # state has nothing in flight any more and must not outlive the handover.
        _sockio.forget_socket(self, sock, sock.fileno())
        from uringloop import _datagram
        return _datagram.UringDatagramTransport(self, sock, protocol, address, waiter, extra)

    # ---- pipes ----

    def _make_read_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
        from uringloop import _pipes
        return _pipes.UringReadPipeTransport(self, pipe, protocol, waiter, extra)

    def _make_write_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
        from uringloop import _pipes
        return _pipes.UringWritePipeTransport(self, pipe, protocol, waiter, extra)

    # ---- subprocesses ----

    async def _make_subprocess_transport(self, protocol, args, shell, stdin, stdout, stderr,
                                         bufsize, extra=None, **kwargs):
        # The transport is the stock one: BaseSubprocessTransport (pipes through our
        # connect_*_pipe, exit bookkeeping) with the Popen-based _start of the UNIX loop, the
        # same in 3.10-3.13.  Only the child watching differs: no watcher object, no thread --
        # the child's pidfd is polled on the ring (see _children).
        waiter = self.create_future()
        transport = _unix_events._UnixSubprocessTransport(
            self, protocol, args, shell, stdin, stdout, stderr, bufsize,
            waiter=waiter, extra=extra, **kwargs)
        children = self._ul_children
        if children is None:
            from uringloop import _children
            children = self._ul_children = _children.ChildWatcher(self)
        try:
            children.watch(transport._proc, transport._process_exited)
        except BaseException:
            # No pidfd and no thread to wait with: nothing would ever end transport._wait()
            # (it waited there forever).  The error is raised at once, as from the stock
            # loop's add_child_handler(); the child is killed and reaped here, since nobody
            # else can (close() kills a child still running; after SIGKILL, wait() is brief).
            transport.close()
            transport._proc.wait()
            raise
        try:
            await waiter
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            transport.close()
            await transport._wait()
            raise
        return transport

    # ---- signals ----

    def add_signal_handler(self, sig, callback, *args):
        """Add a handler for a signal.  UNIX only.

        Raise ValueError if the signal number is invalid or uncatchable.
        Raise RuntimeError if there is a problem setting up the handler.
        """
        if _coroutines.iscoroutine(callback) or _coroutines.iscoroutinefunction(callback):
            raise TypeError("coroutines cannot be used with add_signal_handler()")
        self._check_signal(sig)
        self._check_closed()
        reader = self._ul_signal_reader
        if reader is None:
            from uringloop import _signals
            reader = self._ul_signal_reader = _signals.SignalReader(self)
        try:
            # Raises ValueError outside the main thread: by calling it first, a loop running
            # in another thread cannot add a signal handler (the stock loop's rule).
            signal.set_wakeup_fd(reader.wakeup_fd)
        except (ValueError, OSError) as exc:
            raise RuntimeError(str(exc))
        if not reader.receiving:
            if self._thread_id is not None and self._thread_id != threading.get_ident():
                # The loop runs in another thread, which alone may submit to its ring.
                self.call_soon_threadsafe(reader.start)
            else:
                reader.start()

        handle = _events.Handle(callback, args, self, None)
        self._signal_handlers[sig] = handle
        try:
            # The Python-level handler does nothing: the C-level one writes the signal number
            # to the wake-up socket, whose recv completion calls _handle_signal().
            signal.signal(sig, _sighandler_noop)
            # SA_RESTART: interrupted system calls elsewhere in the program are restarted.
            signal.siginterrupt(sig, False)
        except OSError as exc:
            del self._signal_handlers[sig]
            if not self._signal_handlers:
                try:
                    signal.set_wakeup_fd(-1)
                except (ValueError, OSError) as nexc:
                    _logger.info('set_wakeup_fd(-1) failed: %s', nexc)
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f'sig {sig} cannot be caught')
            raise

    def _handle_signal(self, sig):
        """Called by the wake-up socket's completion for each signal number received."""
        handle = self._signal_handlers.get(sig)
        if handle is None:
            return      # removed while the byte was on its way
        if handle._cancelled:
            self.remove_signal_handler(sig)
        else:
            self._add_callback(handle)

    def remove_signal_handler(self, sig):
        """Remove a handler for a signal.  UNIX only.

        Return True if a signal handler was removed, False if not.
        """
        self._check_signal(sig)
        try:
            del self._signal_handlers[sig]
        except KeyError:
            return False
        handler = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
        try:
            signal.signal(sig, handler)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f'sig {sig} cannot be caught')
            raise
        if not self._signal_handlers:
            try:
                signal.set_wakeup_fd(-1)
            except (ValueError, OSError) as exc:
                _logger.info('set_wakeup_fd(-1) failed: %s', exc)
        return True

    def _check_signal(self, sig):
        """Raise TypeError/ValueError for something that is not a valid signal number."""
        if not isinstance(sig, int):
            raise TypeError(f'sig must be an int, not {sig!r}')
        if sig not in signal.valid_signals():
            raise ValueError(f'invalid signal number {sig}')

    # ---- closing ----

    def _close_io(self) -> None:
        # Before the Proactor drains: stop what would otherwise re-arm itself, and give the
        # process its signal dispositions back.
        if self._ul_readiness is not None:
            self._ul_readiness.close()
        if self._ul_children is not None:
            self._ul_children.close()
        # As the stock loop: the handlers go back to the defaults and the wake-up descriptor is
        # unset (so no signal is written to the socket once it is closed, after the drain).
        if not sys.is_finalizing():
            try:
                for sig in list(self._signal_handlers):
                    self.remove_signal_handler(sig)
            except BaseException as exc:
                # As stock: the loop is closed all the same, then the error is raised.
                self._ul_close_error = exc
        elif self._signal_handlers:
            warnings.warn(f"Closing the loop {self!r} on interpreter shutdown stage, "
                          f"skipping signal handlers removal", ResourceWarning, source=self)
            self._signal_handlers.clear()
        if self._ul_signal_reader is not None:
            self._ul_signal_reader.stop()
        super()._close_io()

    def close(self) -> None:
        # Reached from Loop.close() after the Proactor has drained: nothing of ours is in the
        # kernel any more, so a transport the program never closed is held by nothing of the
        # loop's (loop._transports is weak) and is collected as on the stock loop.
        super().close()
        reader = self._ul_signal_reader
        if reader is not None:
            self._ul_signal_reader = None
            reader.close_sockets()
        # Drained: let go of the registries that refer back to the loop (reference cycles,
        # which would leave a closed loop to the cyclic collector: Proactor.let_go_of_the_loop).
        # Made again only by use after the close: a subprocess_exec(), which fails.
        # (remove_reader() and remove_writer() of a closed loop answer False without one.)
        readiness, self._ul_readiness = self._ul_readiness, None
        if readiness is not None:
            readiness.let_go()
        self._ul_children = None
        exc, self._ul_close_error = self._ul_close_error, None
        if exc is not None:
            raise exc
