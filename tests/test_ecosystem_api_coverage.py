"""uringloop.Loop raises NotImplementedError for no AbstractEventLoop method that the stock Unix
loop implements.

asyncio.AbstractEventLoop declares the API with stubs that raise NotImplementedError, and
BaseEventLoop implements the public methods on top of private hooks that raise it too
(_make_socket_transport, _make_subprocess_transport, _write_to_self, ...), which the Unix
selector loop supplies.  A loop class that forgot one of either would fail only when a program
reached it.  This walks both lists and checks every entry the stock loop implements against
uringloop.Loop.

"Raises NotImplementedError" is read from the function's bytecode: the function loads the name
NotImplementedError and has no way to return.  The first test checks that reading against what
the AbstractEventLoop stubs actually do when called, on every supported Python."""

import asyncio
import dis
import inspect
from asyncio import base_events, unix_events

import pytest

import uringloop

STOCK = unix_events._UnixSelectorEventLoop
ABSTRACT = asyncio.AbstractEventLoop
RETURNING = {"RETURN_VALUE", "RETURN_CONST", "YIELD_VALUE"}


def raises_not_implemented(func) -> bool:
    """True for a Python function whose every path ends in `raise NotImplementedError`."""
    func = inspect.unwrap(func)
    if not inspect.isfunction(func):
        return False          # compiled (Cython) or builtin: an implementation
    instructions = list(dis.get_instructions(func.__code__))
    loads = {ins.argval for ins in instructions if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME")}
    returns = any(ins.opname in RETURNING for ins in instructions)
    return "NotImplementedError" in loads and not returns


def public_methods(cls) -> list:
    return sorted(name for name in dir(cls)
                  if not name.startswith("_") and callable(getattr(cls, name)))


def hook_methods() -> list:
    """BaseEventLoop's private methods that raise NotImplementedError: the hooks a loop class
    must supply for BaseEventLoop's public methods to work."""
    return sorted(name for name, value in vars(base_events.BaseEventLoop).items()
                  if name.startswith("_") and not name.startswith("__")
                  and inspect.isfunction(value) and raises_not_implemented(value))


def defining_class(cls, name):
    return next(klass for klass in cls.__mro__ if name in vars(klass))


def call_stub(name):
    """Call AbstractEventLoop.<name> with None for every required argument; True if it raised
    NotImplementedError from its own frame (not from a method it delegates to)."""
    func = getattr(ABSTRACT, name)
    signature = inspect.signature(func)
    args, kwargs = [], {}
    for param in list(signature.parameters.values())[1:]:
        if param.default is not param.empty or param.kind in (param.VAR_POSITIONAL,
                                                              param.VAR_KEYWORD):
            continue
        if param.kind == param.KEYWORD_ONLY:
            kwargs[param.name] = None
        else:
            args.append(None)
    try:
        result = func(ABSTRACT(), *args, **kwargs)
        if inspect.iscoroutine(result):
            try:
                result.send(None)
            finally:
                result.close()
    except NotImplementedError as exc:
        innermost = exc.__traceback__
        while innermost.tb_next is not None:
            innermost = innermost.tb_next
        return innermost.tb_frame.f_code is inspect.unwrap(func).__code__
    return False


def test_the_stock_loop_is_the_unix_selector_loop():
    assert asyncio.SelectorEventLoop is STOCK
    assert issubclass(uringloop.Loop, base_events.BaseEventLoop)


@pytest.mark.parametrize("name", public_methods(ABSTRACT))
def test_bytecode_reading_agrees_with_calling_the_stub(name):
    assert raises_not_implemented(getattr(ABSTRACT, name)) == call_stub(name)


def test_the_lists_are_not_empty():
    # The walk below would pass vacuously on an empty list.
    stubs = [name for name in public_methods(ABSTRACT)
             if raises_not_implemented(getattr(ABSTRACT, name))]
    assert len(stubs) > 40 and "create_server" in stubs and "add_signal_handler" in stubs
    assert {"_make_socket_transport", "_make_subprocess_transport", "_process_events",
            "_write_to_self"} <= set(hook_methods())


@pytest.mark.parametrize("name", public_methods(ABSTRACT))
def test_loop_implements_what_the_stock_loop_implements(name):
    stock = getattr(STOCK, name)
    if raises_not_implemented(stock):
        pytest.skip(f"the stock Unix loop does not implement {name} either")
    ours = getattr(uringloop.Loop, name, None)
    assert ours is not None, f"uringloop.Loop has no {name}"
    assert not raises_not_implemented(ours), (
        f"uringloop.Loop.{name} raises NotImplementedError "
        f"(defined in {defining_class(uringloop.Loop, name).__qualname__})")
    if defining_class(STOCK, name) is not ABSTRACT:
        assert defining_class(uringloop.Loop, name) is not ABSTRACT, name


@pytest.mark.parametrize("name", hook_methods())
def test_loop_supplies_every_hook_the_stock_loop_supplies(name):
    if raises_not_implemented(getattr(STOCK, name)):
        pytest.skip(f"the stock Unix loop does not supply {name} either")
    assert not raises_not_implemented(getattr(uringloop.Loop, name)), (
        f"uringloop.Loop does not override BaseEventLoop.{name}")
