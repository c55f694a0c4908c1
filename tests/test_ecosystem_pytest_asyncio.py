"""pytest-asyncio runs a project's async tests on uringloop through its documented loop-factory
hook: a project whose conftest.py returns {"uringloop": uringloop.new_event_loop} from
`pytest_asyncio_loop_factories` gets every @pytest.mark.asyncio test (and the async fixtures they
use) run on a uringloop.Loop -- the snippet shown in docs/ecosystem.md.

Each case is a separate pytest run (pytester, in a child process) on a small project written to
a temporary directory, so that this suite's own conftest (which adds the stock loop) is not in
play."""

import pathlib
import textwrap

import pytest

import uringloop

pytest_plugins = ["pytester"]

URINGLOOP_PATH = str(pathlib.Path(uringloop.__file__).resolve().parent.parent)

# The conftest.py of docs/ecosystem.md, verbatim.
CONFTEST = textwrap.dedent('''
    import uringloop

    def pytest_asyncio_loop_factories(config, item):
        return {"uringloop": uringloop.new_event_loop}
''')

PROJECT_TESTS = textwrap.dedent('''
    import asyncio

    import pytest
    import pytest_asyncio

    import uringloop


    @pytest_asyncio.fixture
    async def echo_server():
        async def echo(reader, writer):
            writer.write(await reader.read(100))
            await writer.drain()
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        yield server.sockets[0].getsockname()[:2], asyncio.get_running_loop()
        server.close()
        await server.wait_closed()


    @pytest.mark.asyncio
    async def test_runs_on_uringloop():
        assert type(asyncio.get_running_loop()) is uringloop.Loop


    @pytest.mark.asyncio
    async def test_async_fixture_shares_the_loop(echo_server):
        address, fixture_loop = echo_server
        assert fixture_loop is asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection(*address)
        writer.write(b"ping")
        assert await reader.read(100) == b"ping"
        writer.close()
        await writer.wait_closed()


    class TestInAClass:
        @pytest.mark.asyncio
        async def test_method(self):
            assert isinstance(asyncio.get_running_loop(), uringloop.Loop)
''')

INI = textwrap.dedent('''
    [pytest]
    asyncio_default_fixture_loop_scope = function
    filterwarnings = error
''')


@pytest.fixture
def project(pytester, monkeypatch):
    """A project directory with the tests above; the child pytest imports the tested uringloop."""
    monkeypatch.setenv("PYTHONPATH", URINGLOOP_PATH)
    pytester.makefile(".ini", pytest=INI)
    pytester.makepyfile(test_project=PROJECT_TESTS)
    return pytester


def run(pytester, *args):
    # -p pytest_asyncio: the child must have the plugin even where entry points are not scanned.
    return pytester.runpytest_subprocess("-p", "pytest_asyncio", "-p", "no:cacheprovider",
                                         "-v", *args, timeout=120)


def test_conftest_hook_runs_async_tests_on_uringloop(project):
    project.makeconftest(CONFTEST)
    result = run(project)
    result.assert_outcomes(passed=3)


def test_without_the_hook_the_tests_run_on_the_stock_loop(project):
    # The control: the same project without the conftest hook runs on asyncio's loop, so the
    # loop type assertions fail -- it is the hook that put the tests on uringloop.
    result = run(project)
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(["*test_runs_on_uringloop FAILED*",
                                 "*test_method FAILED*"])


def test_hook_next_to_other_loops_parametrizes(project):
    # Returning several factories runs every test once per loop, named by the mapping's keys
    # (how this project's own suite runs on uringloop and on the stock loop).
    project.makeconftest(CONFTEST.replace(
        '{"uringloop": uringloop.new_event_loop}',
        '{"uringloop": uringloop.new_event_loop,'
        ' "stock": __import__("asyncio").SelectorEventLoop}'))
    result = run(project)
    result.assert_outcomes(passed=4, failed=2)
    result.stdout.fnmatch_lines(["*test_runs_on_uringloop?uringloop? PASSED*"])
    result.stdout.fnmatch_lines(["*test_runs_on_uringloop?stock? FAILED*"])

