"""Every asyncio test runs twice: on uringloop and on the stock loop, which is the oracle.

pytest-asyncio's `pytest_asyncio_loop_factories` hook parametrizes each `@pytest.mark.asyncio`
test over the factories returned here; the test id ends in [uringloop] or [asyncio].
"""

import asyncio
import gc

import pytest

import uringloop

LOOP_FACTORIES = {
    "uringloop": uringloop.new_event_loop,
    "asyncio": asyncio.SelectorEventLoop,
}


def uringloop_with_poll_and_epoll_wait():
    """uringloop as on a kernel before 6.15: its add_reader()/add_writer() registry waits with a
    poll request on its epoll instance and then reads the events with epoll_wait(2), where a
    newer kernel brings them in the completion of one IORING_OP_EPOLL_WAIT (_readiness.pyx)."""
    loop = uringloop.new_event_loop()
    loop._features["epoll_wait"] = False
    return loop


# Tests marked `readiness` run on both of uringloop's ways of waiting for add_reader() events.
READINESS_LOOP_FACTORIES = dict(LOOP_FACTORIES, **{
    "uringloop-pollfallback": uringloop_with_poll_and_epoll_wait,
})


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "readiness: also run on uringloop's readiness fallback (POLL_ADD and "
                   "epoll_wait(2) instead of IORING_OP_EPOLL_WAIT)")


def pytest_asyncio_loop_factories(config, item):
    if item.get_closest_marker("readiness"):
        return READINESS_LOOP_FACTORIES
    return LOOP_FACTORIES


@pytest.fixture
def is_uring(request):
    """True when this test instance runs on uringloop (for the few assertions only it can make)."""
    callspec = getattr(request.node, "callspec", None)
    return callspec is not None and "uringloop" in callspec.id.split("-")


def loop_maker_fixture(factories):
    """A `new_loop` fixture over `factories` (a module may use its own set: test_readiness)."""

    @pytest.fixture(params=list(factories))
    def new_loop(request):
        """For synchronous tests that drive a loop by hand: a factory of the parametrized kind."""
        loops = []

        def make():
            loop = factories[request.param]()
            loops.append(loop)
            return loop

        yield make
        for loop in loops:
            if not loop.is_closed():
                loop.close()
        gc.collect()

    return new_loop


new_loop = loop_maker_fixture(LOOP_FACTORIES)
