"""Conformance: the installed interpreter's own asyncio test suite, run with uringloop as the loop.

runner.py runs it (child.py is the per-module process), suites.py says which modules and how each
gets the loop under test, exclusions.py lists every test that does not run and why,
known_failures/ holds today's failures per Python version, and test_conformance.py is the pytest
entry point.  Command line: python tests/conformance/run.py --help
"""
