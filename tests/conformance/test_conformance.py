"""pytest items of the conformance run: one per module and loop.  The run itself happens once,
in the `conformance` session fixture (conftest.py), which also documents the environment
variables that turn the gate on and off."""

import pytest

from conformance import runner
from conformance.conftest import MODE, MODULES, WITH_STOCK

# The whole run happens in the session fixture, charged to the first item's setup: it gets its
# own pytest-timeout, well above the ~2 minutes it takes on an idle 2-core machine (a hang inside
# the run is bounded anyway, per test, by the runner's watchdog).
pytestmark = [pytest.mark.conformance, pytest.mark.timeout(1800)]


def _module_run(results, loop, module):
    run = results.runs[loop].modules[module]
    if run.status in ("absent", "skipped"):
        # Skipping is for an interpreter without the `test` package (or a kernel without
        # io_uring); a uringloop that cannot even be imported is a failure, never a skip.
        if "uringloop cannot be imported" in str(run.reason):
            pytest.fail(f"{module}: {run.reason}")
        pytest.skip(f"{module}: {run.reason}")
    return run


@pytest.mark.parametrize("module", MODULES)
def test_uringloop(conformance, module):
    """Every test of the module that the stock loop passes, uringloop passes too -- apart from
    exclusions.py and the known failures of this Python version (known_failures/)."""
    run = _module_run(conformance, "uringloop", module)
    assert run.status == "ran", f"{module} could not run on uringloop: {run.reason}"
    mine = [r for r in conformance.verdict.unexpected if r.id.startswith(module + ".")]
    charged = [r for r in conformance.verdict.charged if r.id.startswith(module + ".")]
    if MODE == "report":
        if charged:
            pytest.xfail(f"{len(charged)} test(s) of {module} fail on uringloop "
                         "(URINGLOOP_CONFORMANCE=report)")
        return
    assert not mine, (
        f"{len(mine)} test(s) of {module} fail on uringloop and are not in "
        f"{runner.known_failures_path(conformance.interpreter).name}:\n"
        + runner.format_failures(mine, details=True))
    if MODE == "strict":
        fixed = [i for i in conformance.verdict.fixed if i.startswith(module + ".")]
        assert not fixed, ("these tests pass now; remove them from "
                           f"{runner.known_failures_path(conformance.interpreter).name}:\n  "
                           + "\n  ".join(fixed))


if WITH_STOCK:
    @pytest.mark.parametrize("module", MODULES)
    def test_stock_loop(conformance, module):
        """The stock loop passes everything the selection runs: what it fails is an exclusion
        missing from exclusions.py or a broken environment, not a uringloop failure."""
        run = _module_run(conformance, "asyncio", module)
        assert run.status == "ran", f"{module} could not run on the stock loop: {run.reason}"
        failures = run.failures()
        assert not failures, (f"the stock loop fails {len(failures)} test(s) of {module}:\n"
                              + runner.format_failures(failures, details=True))
