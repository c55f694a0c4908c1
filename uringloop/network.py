"""The loop's stream networking API on the Proactor: transports for TCP and UNIX sockets, servers,
TLS, sendfile.  (Filled in by the transports work; see issue 3.)"""


class NetworkMixin:
    """Mixed into uringloop.Loop: stream transports and servers."""

    def _close_io(self) -> None:
        super()._close_io()
