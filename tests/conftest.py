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


def pytest_asyncio_loop_factories(config, item):
    return LOOP_FACTORIES


@pytest.fixture
def is_uring(request):
    """True when this test instance runs on uringloop (for the few assertions only it can make)."""
    callspec = getattr(request.node, "callspec", None)
    return callspec is not None and "uringloop" in callspec.id.split("-")


@pytest.fixture(params=list(LOOP_FACTORIES))
def new_loop(request):
    """For synchronous tests that drive a loop by hand: a factory of the parametrized kind."""
    loops = []

    def make():
        loop = LOOP_FACTORIES[request.param]()
        loops.append(loop)
        return loop

    yield make
    for loop in loops:
        if not loop.is_closed():
            loop.close()
    gc.collect()
