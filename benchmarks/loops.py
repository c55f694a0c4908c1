"""The event loops under test, by name, and how to make one.

Used by the server and micro-benchmark processes (which run one loop each) and by the harness (for
the list of names and the versions it records).  A loop whose package cannot be imported is not an
error here: `make_loop` raises, the caller reports that loop as "n/a" with the reason.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata

LOOP_NAMES = ("uringloop", "uvloop", "asyncio")

# What type(loop) must be for each name: the check that the loop measured is the loop named.
EXPECTED_TYPES = {
    "uringloop": "uringloop.loop.Loop",
    "uvloop": "uvloop.Loop",
    "asyncio": "asyncio.unix_events._UnixSelectorEventLoop",
}


def make_loop(name: str) -> asyncio.AbstractEventLoop:
    """A new event loop of the named kind (never a fallback to another kind)."""
    if name == "uringloop":
        import uringloop
        return uringloop.new_event_loop()           # raises where io_uring is unavailable
    if name == "uvloop":
        import uvloop
        return uvloop.new_event_loop()
    if name == "asyncio":
        return asyncio.SelectorEventLoop()
    raise ValueError(f"unknown loop {name!r}; expected one of {', '.join(LOOP_NAMES)}")


def type_name(loop: object) -> str:
    cls = type(loop)
    return f"{cls.__module__}.{cls.__qualname__}"


def describe(name: str) -> dict:
    """Version and import location of a loop's package (for the results' metadata)."""
    if name == "asyncio":
        import sys
        return {"version": sys.version.split()[0], "path": asyncio.__file__}
    try:
        module = importlib.import_module(name)
    except Exception as exc:            # noqa: BLE001 - recorded, not raised
        return {"error": f"{type(exc).__name__}: {exc}"}
    version = getattr(module, "__version__", None)
    if version is None:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            version = "?"
    return {"version": version, "path": getattr(module, "__file__", "?")}
