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
def is_uring():
    """True when the running loop is uringloop (for the few assertions only it can make)."""
    return isinstance(asyncio.get_running_loop(), uringloop.Loop)


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
