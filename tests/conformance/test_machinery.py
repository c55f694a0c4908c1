"""The runner's own promises, on a synthetic module: a crash or a hang costs only the test that
was running and the module goes on; fixture failures and skips reach the tests they stopped;
each result knows whether the loop under test took part.  (Seconds; no test.test_asyncio.)"""

import os
import sys
import textwrap

from conformance import runner, suites

SYNTHETIC = textwrap.dedent('''
    import asyncio, os, signal, time, unittest

    class Ordinary(unittest.TestCase):
        def test_1_passes(self):
            pass
        def test_2_fails(self):
            self.assertEqual(1, 2)
        def test_3_crashes(self):
            os.kill(os.getpid(), signal.SIGSEGV)
        def test_4_hangs(self):
            time.sleep(600)
        def test_5_skips(self):
            self.skipTest("not here")
        def test_6_uses_the_loop(self):
            asyncio.new_event_loop().close()
        def test_7_after_the_crash_and_the_hang(self):
            pass

    class BrokenFixture(unittest.TestCase):
        @classmethod
        def setUpClass(cls):
            raise RuntimeError("the fixture broke")
        def test_never_runs(self):
            pass

    class SkippingFixture(unittest.TestCase):
        @classmethod
        def setUpClass(cls):
            raise unittest.SkipTest("the whole class is skipped")
        def test_skipped_by_its_fixture(self):
            pass

    class HangingFixture(unittest.TestCase):
        @classmethod
        def setUpClass(cls):
            time.sleep(600)
        def test_after_a_hanging_fixture(self):
            pass

    class SubTests(unittest.TestCase):
        def test_one_subtest_fails(self):
            for i in range(2):
                with self.subTest(i=i):
                    self.assertEqual(i, 0)
''')


def test_crashes_hangs_and_fixtures_are_charged_to_the_right_tests(tmp_path):
    run = _synthetic_run(tmp_path, "synthetic", SYNTHETIC, timeout=2.0)

    outcome = {test_id.split(".", 1)[1]: r.outcome for test_id, r in run.results.items()}
    assert outcome == {
        "Ordinary.test_1_passes": runner.PASSED,
        "Ordinary.test_2_fails": runner.FAILED,
        "Ordinary.test_3_crashes": runner.CRASHED,
        "Ordinary.test_4_hangs": runner.TIMEOUT,
        "Ordinary.test_5_skips": runner.SKIPPED,
        "Ordinary.test_6_uses_the_loop": runner.PASSED,
        "Ordinary.test_7_after_the_crash_and_the_hang": runner.PASSED,
        "BrokenFixture.test_never_runs": runner.NOT_RUN,
        "SkippingFixture.test_skipped_by_its_fixture": runner.SKIPPED,
        "HangingFixture.test_after_a_hanging_fixture": runner.TIMEOUT,
        "SubTests.test_one_subtest_fails": runner.FAILED,
    }
    results = {test_id.split(".", 1)[1]: r for test_id, r in run.results.items()}
    assert "SIGSEGV" in results["Ordinary.test_3_crashes"].detail
    assert "time.sleep" in results["Ordinary.test_4_hangs"].detail or \
        "test_4_hangs" in results["Ordinary.test_4_hangs"].detail
    assert "the fixture broke" in results["BrokenFixture.test_never_runs"].detail
    assert "between tests" in results["HangingFixture.test_after_a_hanging_fixture"].detail
    assert results["Ordinary.test_6_uses_the_loop"].loops == 1
    assert results["Ordinary.test_1_passes"].loops == 0
    assert run.children == 4        # the first, and one after each crash or hang
    assert run.counts()["failing"] == 6


# A test that fails the first time it runs in a directory and passes after: what a port race
# looks like to the runner.
BY_CHANCE = textwrap.dedent('''
    import os, unittest

    class Chance(unittest.TestCase):
        def test_fails_the_first_time(self):
            first = not os.path.exists("ran-once")
            open("ran-once", "w").close()
            self.assertFalse(first, "the first run fails")
        def test_always_fails(self):
            self.assertEqual(1, 2)
        def test_passes(self):
            pass
''')


def _synthetic_run(tmp_path, name, source, timeout=5.0):
    """Run module `mod` of a package `<name>_pkg` holding `source`, on the stock loop."""
    package = tmp_path / f"{name}_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "mod.py").write_text(source)
    env = runner.child_environment()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    interpreter = runner.Interpreter(sys.executable, tuple(sys.version_info[:3]), None, ("mod",))
    suite = suites.Suite("mod", False, package=f"{name}_pkg")
    return runner.ModuleRunner(suite, interpreter, "asyncio", timeout=timeout,
                               workdir=tmp_path / f"work-{name}", env=env).execute()


def test_a_failure_that_does_not_come_back_alone_counts_as_passed_and_is_reported(tmp_path):
    run = _synthetic_run(tmp_path, "chance", BY_CHANCE)

    results = {test_id.split(".", 1)[1]: r for test_id, r in run.results.items()}
    chance = results["Chance.test_fails_the_first_time"]
    assert chance.outcome == runner.PASSED
    assert "the first run fails" in chance.first_failure
    assert results["Chance.test_always_fails"].outcome == runner.FAILED
    assert results["Chance.test_always_fails"].first_failure == ""
    assert results["Chance.test_passes"].first_failure == ""
    assert run.reruns == 2 and run.children == 1
    assert [r.id for r in run.flaky()] == ["mod.Chance.test_fails_the_first_time"]
    interpreter = runner.Interpreter(sys.executable, tuple(sys.version_info[:3]), None, ("mod",))
    whole = runner.Run(interpreter, "asyncio", 5.0, 1, modules={"mod": run})
    summary = runner.format_summary(whole)
    assert "then passed when run again alone (counted as passed): 1" in summary
    assert "mod.Chance.test_fails_the_first_time" in summary


def test_a_module_failing_many_tests_has_none_run_again(tmp_path):
    many = BY_CHANCE + "".join(
        f"\n    def test_fails_{i}(self):\n        self.fail('{i}')\n"
        for i in range(runner.MAX_RERUNS))
    run = _synthetic_run(tmp_path, "many", many)

    results = {test_id.split(".", 1)[1]: r for test_id, r in run.results.items()}
    assert results["Chance.test_fails_the_first_time"].outcome == runner.FAILED
    assert run.reruns == 0 and not run.flaky()
    assert run.counts()["failing"] == runner.MAX_RERUNS + 2


def test_an_interpreter_without_the_test_suite_is_reported_not_run(tmp_path):
    # Debian's and Ubuntu's python3 ship without the `test` package (it is in
    # libpythonX.Y-testsuite); an empty package of that name stands in for one.
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "__init__.py").write_text("")
    env = runner.child_environment()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    interpreter = runner.probe_interpreter(sys.executable, "uringloop", env)
    assert interpreter.problem is not None
    assert interpreter.problem.startswith("this interpreter has no test suite")
    assert interpreter.modules == ()
