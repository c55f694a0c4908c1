"""Which modules of the interpreter's `test.test_asyncio` run, and how each gets the loop under test.

CPython's asyncio tests reach an event loop in three ways, and each needs its own hook:

1. Loop-parameterised test classes.  A mixin holds the tests and a concrete class per selector
   supplies the loop (`create_event_loop` in test_events/test_sock_lowlevel/test_sendfile,
   `new_loop` in the functional.py-based modules, or a `setUp` that calls
   `asyncio.SelectorEventLoop()` in test_unix_events).  For these we *convert* one concrete class:
   subclass it and make it build the loop under test.  The stock loop's other variants of the same
   class (one per selector: Kqueue/EPoll/Poll/Select, and the Windows-only Proactor one) are
   *dropped*: they are the same tests on the stock loop, not tests of ours.

2. `asyncio.new_event_loop()`, `asyncio.run()`, `asyncio.Runner`, `IsolatedAsyncioTestCase`,
   `asyncio.get_event_loop()` outside a running loop: all end in
   `DefaultEventLoopPolicy._loop_factory`.  The child process replaces that class attribute (see
   child.py), which survives the `asyncio.set_event_loop_policy(None)` that many tests and every
   module's tearDownModule call -- an installed policy *instance* would not.

3. `test_utils.TestLoop` (virtual time) and `mock.Mock()` loops.  Those tests exercise Task,
   Future, the locks and the stock transports against a fake loop; they run unchanged and are
   reported as not using the loop under test.

A class that explicitly constructs `asyncio.SelectorEventLoop` and is not converted keeps testing
the stock loop; where such a class is part of a selected module it is listed in exclusions.py.
"""

from __future__ import annotations

import dataclasses

# How a converted class gets its loop.
CREATE_EVENT_LOOP = "create_event_loop"     # override the factory method of that name
NEW_LOOP = "new_loop"                        # (functional.FunctionalTestCaseMixin's name)
PATCH_SELECTOR_LOOP_IN_SETUP = "patch-setup"  # setUp calls asyncio.SelectorEventLoop(): patch it


@dataclasses.dataclass(frozen=True)
class Convert:
    source: str        # the stock concrete class to subclass
    how: str           # CREATE_EVENT_LOOP, NEW_LOOP or PATCH_SELECTOR_LOOP_IN_SETUP
    name: str          # the new class's name (test ids read <module>.<name>.<test>)


@dataclasses.dataclass(frozen=True)
class Suite:
    module: str                         # test.test_asyncio.<module>
    loop_parameterised: bool            # kind 1 above (else: loop-agnostic, kinds 2 and 3)
    convert: tuple = ()
    drop: tuple = ()                    # class names not collected at all (see above)
    since: tuple = (3, 10)              # first Python whose test suite has the module
    cost: int = 1                       # relative run time, to start the long modules first
    package: str = "test.test_asyncio"  # (another package only in the runner's own tests)


# The stock loop's per-selector variants of a converted class, and the Windows-only ones.
_SELECTOR_VARIANTS = ("KqueueEventLoopTests", "EPollEventLoopTests", "PollEventLoopTests",
                      "SelectEventLoopTests", "ProactorEventLoopTests")

SUITES = (
    # ---- loop-parameterised ----
    Suite("test_events", True, cost=8,
          convert=(Convert("SelectEventLoopTests", CREATE_EVENT_LOOP, "EventLoopTests"),),
          drop=_SELECTOR_VARIANTS),
    Suite("test_sock_lowlevel", True, cost=2,
          convert=(Convert("SelectEventLoopTests", CREATE_EVENT_LOOP, "SockTests"),),
          drop=_SELECTOR_VARIANTS),
    Suite("test_sendfile", True, cost=2,
          convert=(Convert("SelectEventLoopTests", CREATE_EVENT_LOOP, "SendfileTests"),),
          drop=_SELECTOR_VARIANTS),
    Suite("test_server", True,
          convert=(Convert("SelectorStartServerTests", NEW_LOOP, "StartServerTests"),),
          drop=("SelectorStartServerTests", "ProactorStartServerTests")),
    Suite("test_buffered_proto", True,
          convert=(Convert("BufferedProtocolSelectorTests", NEW_LOOP, "BufferedProtocolTests"),),
          drop=("BufferedProtocolSelectorTests", "BufferedProtocolProactorTests")),
    Suite("test_ssl", True, since=(3, 11), cost=8),              # asyncio.new_event_loop()
    Suite("test_sslproto", True, cost=5,
          convert=(Convert("SelectorStartTLSTests", NEW_LOOP, "StartTLSTests"),),
          drop=("SelectorStartTLSTests", "ProactorStartTLSTests")),
    Suite("test_streams", True, cost=2),                         # asyncio.new_event_loop()
    Suite("test_subprocess", True, cost=10),                     # policy.new_event_loop()
    Suite("test_unix_events", True, cost=2,
          convert=(Convert("SelectorEventLoopUnixSocketTests", PATCH_SELECTOR_LOOP_IN_SETUP,
                           "UnixSocketTests"),),
          drop=("SelectorEventLoopUnixSocketTests",)),
    # ---- loop-agnostic: the loop they create is ours through the policy ----
    Suite("test_tasks", False, cost=12),
    Suite("test_futures", False),
    Suite("test_futures2", False),
    Suite("test_locks", False),
    Suite("test_queues", False),
    Suite("test_timeouts", False, since=(3, 11)),
    Suite("test_taskgroups", False, since=(3, 11), cost=6),
    Suite("test_runners", False),
    Suite("test_waitfor", False, cost=2),
    Suite("test_context", False),
    Suite("test_pep492", False),
    Suite("test_threads", False),
    Suite("test_eager_task_factory", False, since=(3, 12)),
    Suite("test_staggered", False, since=(3, 13)),
)

BY_NAME = {suite.module: suite for suite in SUITES}
