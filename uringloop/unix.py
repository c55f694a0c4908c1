"""The loop's UNIX-specific API on the Proactor: datagram endpoints, pipes, subprocesses, signals,
and readiness callbacks (add_reader/add_writer) through io_uring poll requests.  (Filled in by
the transports work; see issue 3.)"""


class UnixMixin:
    """Mixed into uringloop.Loop: UDP, pipes, processes, signals, readiness compatibility."""

    def _close_io(self) -> None:
        super()._close_io()
