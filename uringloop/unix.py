"""The loop's UNIX-specific API on the Proactor: datagram endpoints, pipes, subprocesses, signals,
and readiness callbacks (add_reader/add_writer) through io_uring poll requests.

BaseEventLoop implements the public methods (create_datagram_endpoint, connect_read_pipe,
subprocess_exec, ...) and calls the `_make_*_transport` factories defined here, which build our
completion-based transports (compiled, in _datagram, _pipes) instead of the selector ones.
"""

from __future__ import annotations

from asyncio import unix_events as _unix_events

from uringloop import _children, _datagram, _pipes, _readiness, _sockio


class UnixMixin:
    """Mixed into uringloop.Loop: UDP, pipes, processes, signals, readiness compatibility."""

    _ul_readiness = None        # the _readiness.Readiness registry, created on first use
    _ul_children = None         # the _children.ChildWatcher, created with the first child

    # ---- readiness callbacks (poll requests on the ring) ----

    # The private forms are what asyncio internals (pipe transports, child watchers, sendfile)
    # call; they skip the transport-ownership check, as in the stock loop.
    _add_reader = _readiness.add_reader
    _remove_reader = _readiness.remove_reader
    _add_writer = _readiness.add_writer
    _remove_writer = _readiness.remove_writer

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
        _sockio.forget_socket(self, sock.fileno())
        return _datagram.UringDatagramTransport(self, sock, protocol, address, waiter, extra)

    # ---- pipes ----

    def _make_read_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
        return _pipes.UringReadPipeTransport(self, pipe, protocol, waiter, extra)

    def _make_write_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
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
            children = self._ul_children = _children.ChildWatcher(self)
        try:
            children.watch(transport._proc, transport._process_exited)
            await waiter
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            transport.close()
            await transport._wait()
            raise
        return transport

    def _close_io(self) -> None:
        if self._ul_readiness is not None:
            self._ul_readiness.close()
        if self._ul_children is not None:
            self._ul_children.close()
        super()._close_io()

    def close(self) -> None:
        # Reached from Loop.close() after the Proactor has drained: nothing of ours is in the
        # kernel any more.  The stock loop refers to its transports weakly; our fd -> transport
        # map is a plain dict, so let go of the datagram transports here, or an endpoint the
        # program never closed could never be collected (and report itself unclosed).
        transports = self._transports
        for fd, transport in list(transports.items()):
            if isinstance(transport, _datagram.UringDatagramTransport):
                del transports[fd]
        super().close()
