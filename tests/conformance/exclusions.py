"""Every test of the selected modules that does not run, and why.  One list, nothing elsewhere.

A test is excluded for one of three reasons (the `category`):

STOCK_INTERNALS  it inspects or mocks the stock implementation rather than exercising the loop's
                 behaviour: mocked selectors, `loop._selector`, `_UnixSelectorEventLoop` private
                 methods, module globals of asyncio.selector_events/unix_events patched with
                 mock, classes only the selector loop has.  Running it on another loop tests
                 nothing (uvloop's and every other loop's conformance runs drop these too).
NOT_THE_LOOP     in a module of which only the loop-level parts are selected (test_unix_events):
                 a class that tests something other than an event loop -- the stock pipe
                 transports or child watchers driven by a mock loop -- and never touches the
                 loop under test.
BEHAVIOUR        a real, deliberate difference between uringloop and the stock loop.  Each one
                 must say what differs, why uringloop differs, and what a user sees; it is also
                 listed in the README.

Patterns are fnmatch patterns over "<module>.<Class>.<test>" (test ids without the
"test.test_asyncio." prefix); the converted classes are named in suites.py.  `python` limits an
entry to a range of interpreter versions where a test exists or differs only there.  The stock
loop runs exactly the same selection (exclusions apply to both), which is how the selection is
validated: the stock loop must pass everything that is left.
"""

from __future__ import annotations

import dataclasses
import fnmatch

STOCK_INTERNALS = "stock-internals"
NOT_THE_LOOP = "not-the-loop"
BEHAVIOUR = "behaviour"


@dataclasses.dataclass(frozen=True)
class Exclusion:
    pattern: str
    category: str
    reason: str
    python: tuple = ((3, 0), (3, 99))       # inclusive (major, minor) range

    def applies(self, test_id: str, version) -> bool:
        low, high = self.python
        return low <= tuple(version[:2]) <= high and fnmatch.fnmatchcase(test_id, self.pattern)


_SENDFILE_IMPL = ("the stock loop's private os.sendfile driver _sock_sendfile_native_impl, "
                  "its selector registrations (loop._selector.get_key) and mocked os.sendfile")

EXCLUSIONS = (
    # ---------------------------------------------------------------- test_events
    Exclusion("test_events.EventLoopTests.test_internal_fds", STOCK_INTERNALS,
              "counts BaseSelectorEventLoop._internal_fds (the self-pipe); it skips itself "
              "on any loop that is not a BaseSelectorEventLoop"),
    # ---------------------------------------------------------------- test_sock_lowlevel
    Exclusion("test_sock_lowlevel.SockTests.test_sendto_blocking", STOCK_INTERNALS,
              "passes a mock.Mock(spec=socket) whose sendto() raises BlockingIOError once, to "
              "drive the selector loop's retry-when-writable path; a completion-based loop "
              "never calls sock.sendto() (CPython skips this test for its own "
              "ProactorEventLoop: 'Not relevant to ProactorEventLoop')"),
    # ---------------------------------------------------------------- test_unix_events
    Exclusion("test_unix_events.SelectorEventLoopSignalTests.*", STOCK_INTERNALS,
              "add_signal_handler of _UnixSelectorEventLoop with the module global "
              "asyncio.unix_events.signal replaced by a mock; exercises that module's code "
              "path, not a loop's behaviour"),
    Exclusion("test_unix_events.UnixSocketTests.test_create_unix_server_bind_error",
              STOCK_INTERNALS,
              "patches asyncio.unix_events.socket, the module global the stock loop's "
              "create_unix_server uses"),
    Exclusion("test_unix_events.SelectorEventLoopUnixSockSendfileTests.test_sock_sendfile_cancel*",
              STOCK_INTERNALS, _SENDFILE_IMPL),
    Exclusion("test_unix_events.SelectorEventLoopUnixSockSendfileTests"
              ".test_sock_sendfile_blocking_error", STOCK_INTERNALS, _SENDFILE_IMPL),
    Exclusion("test_unix_events.SelectorEventLoopUnixSockSendfileTests"
              ".test_sock_sendfile_os_error_*", STOCK_INTERNALS, _SENDFILE_IMPL),
    Exclusion("test_unix_events.SelectorEventLoopUnixSockSendfileTests"
              ".test_sock_sendfile_exception", STOCK_INTERNALS, _SENDFILE_IMPL),
    Exclusion("test_unix_events.SelectorEventLoopUnixSockSendfileTests"
              ".test_sock_sendfile_not_available", STOCK_INTERNALS,
              "patches asyncio.unix_events.os to hide os.sendfile from the stock loop"),
    Exclusion("test_unix_events.UnixReadPipeTransportTests.*", NOT_THE_LOOP,
              "the stock _UnixReadPipeTransport class against a virtual-time TestLoop with "
              "mocked os.read"),
    Exclusion("test_unix_events.UnixWritePipeTransportTests.*", NOT_THE_LOOP,
              "the stock _UnixWritePipeTransport class against a virtual-time TestLoop with "
              "mocked os.write"),
    Exclusion("test_unix_events.AbstractChildWatcherTests.*", NOT_THE_LOOP,
              "asyncio.AbstractChildWatcher's abstract methods; no loop"),
    Exclusion("test_unix_events.BaseChildWatcherTests.*", NOT_THE_LOOP,
              "asyncio.BaseChildWatcher's abstract methods; no loop"),
    Exclusion("test_unix_events.SafeChildWatcherTests.*", NOT_THE_LOOP,
              "the stock SafeChildWatcher's bookkeeping with mocked os.waitpid on a TestLoop"),
    Exclusion("test_unix_events.FastChildWatcherTests.*", NOT_THE_LOOP,
              "the stock FastChildWatcher's bookkeeping with mocked os.waitpid on a TestLoop"),
)


def match(test_id: str, version) -> Exclusion | None:
    """The exclusion that applies to `test_id` on Python `version`, if any."""
    for rule in EXCLUSIONS:
        if rule.applies(test_id, version):
            return rule
    return None
