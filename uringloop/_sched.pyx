# cython: language_level=3
"""The loop's scheduling hot paths, compiled: call_soon, call_soon_threadsafe, call_at/call_later,
the timer heap, the ready queue and one iteration of the loop (_run_once).

Why this exists and what it must not change
-------------------------------------------
asyncio.BaseEventLoop spends most of a busy iteration in Python-level bookkeeping: every
call_soon builds an asyncio.Handle through its Python __init__ (a contextvars copy, a get_debug()
call), every call_at pushes a TimerHandle onto a heapq heap whose comparisons each call
TimerHandle.__lt__ in Python, and every callback runs through Handle._run's Python frame.  The
behaviour of all of that is the asyncio contract -- CPython's own test suite pokes at it -- so
this module does the same work in C without changing anything anyone can observe:

  * Handles are real asyncio.events.Handle / TimerHandle instances.  They are allocated the way
    object.__new__ allocates them and their __slots__ are filled directly at the offsets the
    slot descriptors report (read once at import and validated: anything unexpected and the
    module keeps to the stock Python paths).  isinstance, repr, cancel(), cancelled(), when(),
    get_context() and __lt__ are the classes' own.
  * The timer heap is still the list `loop._scheduled`, ordered exactly as heapq orders it: the
    push/pop/heapify in _sched.h are the same algorithm heapq uses, and compare two TimerHandles
    with float deadlines in C (what TimerHandle.__lt__ computes), from a cache of deadlines kept
    beside the list; any other pair is compared through Python as heapq would compare it.
  * The ready queue is still the deque `loop._ready` (other modules append to it, and
    call_soon_threadsafe relies on deque.append being atomic).
  * An iteration runs callbacks in BaseEventLoop._run_once's order: the handles that were ready
    when it began, then the I/O callbacks, then the timers due (deadline < now + clock
    resolution) when the wait returned; what those schedule waits for the next iteration.
    Cancelled timers are dropped first with the same _MIN_SCHEDULED_TIMER_HANDLES /
    _MIN_CANCELLED_TIMER_HANDLES_FRACTION heuristic (read from asyncio.base_events each time).
    The wait is the compiled Proactor's, called directly: no select() call, no empty event
    list, no _process_events() call (ours is a no-op).  Because completions call protocols
    directly, the order is kept by when things happen rather than by queueing: see
    LoopCore.proactor_iteration.
  * A handle is run inline (enter its context, call, exit) only while Handle._run is asyncio's
    own; exceptions reach call_exception_handler with the same context dict Handle._run builds.

Everything unusual takes the stock path instead of an approximation of it: debug mode (source
tracebacks, thread and callback checks, the slow-callback warning) delegates call_soon/
call_soon_threadsafe/call_at/call_later to BaseEventLoop's own methods and runs handles through
handle._run(); a `time`, `call_at`, `_write_to_self` or `_process_events` replaced on the instance
or in a subclass is called as BaseEventLoop would call it; a `_selector` that is not our Proactor
gets select() + _process_events(); a heap that is not a list or a ready queue that is not a deque
sends the whole iteration to BaseEventLoop._run_once.
"""

from cpython.object cimport (PyObject, PyObject_RichCompareBool, PyObject_GenericSetAttr,
                             PyObject_Call, Py_LT, Py_GE)
from cpython.float cimport PyFloat_CheckExact, PyFloat_AS_DOUBLE
from cpython.tuple cimport PyTuple_CheckExact
from cpython.list cimport PyList_CheckExact, PyList_GET_ITEM
from cpython.exc cimport PyErr_CheckSignals
from cpython.contextvars cimport PyContext_CopyCurrent, PyContext_Enter, PyContext_Exit
from cpython.contextvars cimport PyContext_CheckExact

from uringloop._proactor cimport Proactor

import collections
import time as _time_mod
import sys as _sys
import threading as _threading
import heapq as _heapq
import inspect as _inspect
from asyncio import base_events as _base_events
from asyncio import events as _events
from asyncio import futures as _futures
from asyncio import tasks as _tasks
from asyncio import format_helpers as _format_helpers

cdef object _BaseEventLoop = _base_events.BaseEventLoop
cdef dict _base_events_globals = vars(_base_events)
cdef object _deque = collections.deque
# BaseEventLoop.time() calls time.monotonic() -- whatever that is at the time: freezegun and
# tests' fake clocks replace it to move the loop's clock.  Our C clock is used only while the
# module still has the function it had at import (asked through the module dict's version tag:
# see ul_attr_watch in _sched.h).
cdef object _real_monotonic = _time_mod.monotonic
cdef dict _time_globals = vars(_time_mod)


cdef ul_attr_watch _monotonic_watch
ul_attr_watch_init(&_monotonic_watch, _time_globals, 'monotonic', _real_monotonic)
# ... and base_events' own name for the time module, which tests replace as a whole
# (mock.patch('asyncio.base_events.time'), as CPython's test_base_events does).
cdef ul_attr_watch _time_module_watch
ul_attr_watch_init(&_time_module_watch, _base_events_globals, 'time', _time_mod)


cdef inline bint monotonic_replaced() noexcept:
    return not (ul_attr_unchanged(&_monotonic_watch) and ul_attr_unchanged(&_time_module_watch))


cdef object _Handle = _events.Handle
cdef object _TimerHandle = _events.TimerHandle
cdef ul_attr_watch _handle_watch, _timer_handle_watch     # asyncio.events.Handle, .TimerHandle
ul_attr_watch_init(&_handle_watch, vars(_events), 'Handle', _Handle)
ul_attr_watch_init(&_timer_handle_watch, vars(_events), 'TimerHandle', _TimerHandle)
cdef object _CFuture = getattr(_futures, '_CFuture', None)     # None without _asyncio
cdef object _original_run = _Handle.__dict__['_run']
cdef object _original_lt = _TimerHandle.__dict__['__lt__']

# Slot offsets of asyncio's Handle and TimerHandle (see _sched.h); -1 where unusable.
cdef Py_ssize_t OFF_CALLBACK = ul_member_offset(_Handle.__dict__['_callback'])
cdef Py_ssize_t OFF_ARGS = ul_member_offset(_Handle.__dict__['_args'])
cdef Py_ssize_t OFF_CANCELLED = ul_member_offset(_Handle.__dict__['_cancelled'])
cdef Py_ssize_t OFF_LOOP = ul_member_offset(_Handle.__dict__['_loop'])
cdef Py_ssize_t OFF_SOURCE_TRACEBACK = ul_member_offset(_Handle.__dict__['_source_traceback'])
cdef Py_ssize_t OFF_REPR = ul_member_offset(_Handle.__dict__['_repr'])
cdef Py_ssize_t OFF_CONTEXT = ul_member_offset(_Handle.__dict__['_context'])
cdef Py_ssize_t OFF_WHEN = ul_member_offset(_TimerHandle.__dict__['_when'])
cdef Py_ssize_t OFF_SCHEDULED = ul_member_offset(_TimerHandle.__dict__['_scheduled'])

# The handles can be read and written through their slots: every slot is a plain object slot
# (checked once; without it the module still works, through BaseEventLoop's methods and the
# Python-level attributes).
cdef bint SLOTS_USABLE = (
    OFF_CALLBACK >= 0 and OFF_ARGS >= 0 and OFF_CANCELLED >= 0 and OFF_LOOP >= 0
    and OFF_SOURCE_TRACEBACK >= 0 and OFF_REPR >= 0 and OFF_CONTEXT >= 0 and OFF_WHEN >= 0
    and OFF_SCHEDULED >= 0)

if SLOTS_USABLE:
    ul_heap_configure(_TimerHandle, OFF_WHEN)

# Whether queued handles' contexts can be parked off the GC's lists (see _sched.h).
GC_PARKING = bool(ul_gc_parking_check())

# Handle._run's exception report formats the callback; 3.13 added a `debug` argument.
cdef bint FORMAT_TAKES_DEBUG = (
    'debug' in _inspect.signature(_format_helpers._format_callback_source).parameters)

cdef str NAME_RUN = '_run'
cdef str NAME_LT = '__lt__'
cdef str NAME_TIME = 'time'
cdef str NAME_CALL_AT = 'call_at'
cdef str NAME_PROCESS_EVENTS = '_process_events'
cdef str NAME_RUN_ONCE = '_run_once'
cdef str NAME_WRITE_TO_SELF = '_write_to_self'
cdef str NAME_CHECK_CLOSED = '_check_closed'
# Methods of ours that the fast paths call without looking them up; an instance attribute of one
# of these names (a test's mock, say) sets LoopCore.shadowed and the lookups come back.
cdef frozenset SHORTCUT_NAMES = frozenset(
    [NAME_TIME, NAME_CALL_AT, NAME_PROCESS_EVENTS, NAME_RUN_ONCE, NAME_WRITE_TO_SELF,
     NAME_CHECK_CLOSED])
# Newer asyncio (3.14, CPython gh-128340) gives call_soon_threadsafe() a handle class of its own
# (events._ThreadSafeHandle, whose cancel() and _run() take a lock); wherever asyncio has it,
# BaseEventLoop.call_soon_threadsafe() is used as it is.
cdef bint THREADSAFE_HANDLE_CLASS = hasattr(_events, '_ThreadSafeHandle')
cdef frozenset HOOK_NAMES = frozenset(['_call_soon', 'get_debug'])

# 3.13 split run_forever's set-up and clean-up into methods of their own.
cdef bint RUN_FOREVER_HOOKS = hasattr(_BaseEventLoop, '_run_forever_setup')


cdef str NAME_INIT = '__init__'
cdef str NAME_NEW = '__new__'
cdef object _original_handle_init = _Handle.__dict__['__init__']
cdef object _original_timer_init = _TimerHandle.__dict__['__init__']
cdef object _object_new = object.__dict__['__new__']

# Whether asyncio's handle classes are still as asyncio defines them, looked up each time (the
# type attribute cache makes a lookup a few nanoseconds): instrumentation that replaces
# Handle.__init__ or Handle._run (some profilers do) must see every handle go through it -- and
# one that replaces the classes themselves in asyncio.events (BaseEventLoop looks them up there
# on each call) must get its own classes' handles.

cdef inline bint handle_init_pristine():
    """Handle() would run asyncio's own __init__ on an object.__new__ instance."""
    return (ul_attr_unchanged(&_handle_watch)
            and ul_class_lookup(_Handle, NAME_INIT) == <PyObject *>_original_handle_init
            and ul_class_lookup(_Handle, NAME_NEW) == <PyObject *>_object_new)


cdef inline bint timer_init_pristine():
    return (ul_attr_unchanged(&_timer_handle_watch)
            and ul_class_lookup(_TimerHandle, NAME_INIT) == <PyObject *>_original_timer_init
            and ul_class_lookup(_TimerHandle, NAME_NEW) == <PyObject *>_object_new
            and handle_init_pristine())


cdef inline bint run_pristine():
    """handle._run() is asyncio's own for both classes: a handle may be run inline."""
    return (ul_class_lookup(_Handle, NAME_RUN) == <PyObject *>_original_run
            and ul_class_lookup(_TimerHandle, NAME_RUN) == <PyObject *>_original_run)


cdef inline bint lt_pristine():
    """TimerHandle.__lt__ is asyncio's own: the heap may compare deadlines itself."""
    return ul_class_lookup(_TimerHandle, NAME_LT) == <PyObject *>_original_lt


# ---------------------------------------------------------------------------------------------
# handles
# ---------------------------------------------------------------------------------------------

cdef inline object new_handle(object cls, object callback, object args, object loop,
                              object context):
    """cls(callback, args, loop, context) for a loop not in debug mode, without the Python-level
    __init__: the same slot values in the same kind of object."""
    if context is None:
        context = PyContext_CopyCurrent()
    handle = ul_alloc_instance(cls)
    ul_slot_set(handle, OFF_CONTEXT, context)
    ul_slot_set(handle, OFF_LOOP, loop)
    ul_slot_set(handle, OFF_CALLBACK, callback)
    ul_slot_set(handle, OFF_ARGS, args)
    ul_slot_set(handle, OFF_CANCELLED, False)
    ul_slot_set(handle, OFF_REPR, None)
    ul_slot_set(handle, OFF_SOURCE_TRACEBACK, None)
    return handle


cdef inline int leave_gc(object handle) except -1:
    """A handle we made goes into the ready queue or onto the timer heap: while it waits there
    the cyclic GC need not walk it nor its context (ul_gc_untrack and ul_gc_park in _sched.h)."""
    cdef PyObject *context_p = ul_slot_get(handle, OFF_CONTEXT)
    ul_gc_untrack(handle)
    if context_p != NULL and PyContext_CheckExact(<object>context_p):
        ul_gc_park(context_p)
    return 0


cdef inline int back_to_gc(object handle) except -1:
    """A handle just taken off the ready queue or the timer heap rejoins the cyclic GC's lists,
    and so does its context: from here on anyone may hold them in a cycle."""
    cdef PyObject *context_p
    if type(handle) is _Handle or type(handle) is _TimerHandle:
        ul_gc_retrack(handle)
        if SLOTS_USABLE:
            context_p = ul_slot_get(handle, OFF_CONTEXT)
            if context_p != NULL and PyContext_CheckExact(<object>context_p):
                ul_gc_unpark(context_p)
    return 0


cdef inline bint is_cancelled(object handle) except -1:
    cdef int flag
    if SLOTS_USABLE and (type(handle) is _Handle or type(handle) is _TimerHandle):
        flag = ul_slot_bool(handle, OFF_CANCELLED)
        if flag >= 0:
            return flag
    return bool(handle._cancelled)


cdef inline int set_scheduled(object timer, object value) except -1:
    if SLOTS_USABLE and type(timer) is _TimerHandle:
        ul_slot_set(timer, OFF_SCHEDULED, value)
    else:
        timer._scheduled = value
    return 0


cdef inline object deadline(object timer):
    cdef PyObject *when
    if SLOTS_USABLE and type(timer) is _TimerHandle:
        when = ul_slot_get(timer, OFF_WHEN)
        if when != NULL:
            return <object>when
    return timer._when


def _report_callback_error(handle, exc):
    """What Handle._run does with an exception from its callback."""
    if FORMAT_TAKES_DEBUG:
        source = _format_helpers._format_callback_source(
            handle._callback, handle._args, debug=handle._loop.get_debug())
    else:
        source = _format_helpers._format_callback_source(handle._callback, handle._args)
    context = {
        'message': f'Exception in callback {source}',
        'exception': exc,
        'handle': handle,
    }
    if handle._source_traceback:
        context['source_traceback'] = handle._source_traceback
    handle._loop.call_exception_handler(context)


cdef int run_handle(object handle) except -1:
    """handle._run() for an asyncio Handle/TimerHandle whose _run is asyncio's own: the callback
    runs in the handle's context; anything but SystemExit/KeyboardInterrupt goes to the loop's
    exception handler."""
    cdef PyObject *context_p = ul_slot_get(handle, OFF_CONTEXT)
    cdef PyObject *callback_p = ul_slot_get(handle, OFF_CALLBACK)
    cdef PyObject *args_p = ul_slot_get(handle, OFF_ARGS)
    if (context_p == NULL or callback_p == NULL or args_p == NULL
            or not PyContext_CheckExact(<object>context_p)
            or not PyTuple_CheckExact(<object>args_p)):
        handle._run()           # something unusual in the slots: let asyncio deal with it
        return 0
    # Own references: the callback may cancel its own handle, which clears these slots.
    context = <object>context_p
    callback = <object>callback_p
    args = <object>args_p
    try:
        PyContext_Enter(context)
        try:
            ul_call_with_tuple(callback, args)
        finally:
            PyContext_Exit(context)
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        _report_callback_error(handle, exc)
    return 0


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------

cdef class LoopCore:
    """Base of uringloop.Loop, placed before BaseEventLoop in its MRO.

    BaseEventLoop.__init__ and every BaseEventLoop method still read and write _ready,
    _scheduled, _stopping, _debug, _closed, _selector, _timer_cancelled_count and
    _clock_resolution by those names; here they are C fields, so the compiled paths read them
    without a dictionary lookup."""

    # ---- attributes ----

    def __cinit__(self):
        # A subclass that defines one of our fields' names as a class attribute (CPython's tests
        # do, `_selector = mock.Mock()`) hides the C field from Python code: BaseEventLoop's
        # methods would then use the class attribute or an instance-dict entry while we read the
        # field.  Such a loop runs on BaseEventLoop's methods alone.
        cdef str name
        for name, descriptor in _FIELD_DESCRIPTORS:
            if ul_type_lookup(self, name) != <PyObject *>descriptor:
                self.fields_hidden = True
        # BaseEventLoop's call_soon() goes through self._call_soon(), and the handles it makes
        # ask loop.get_debug(): a subclass that replaces either gets BaseEventLoop's call_soon,
        # call_at and call_later, which consult them, instead of our compiled ones.
        for name, implementation in _HOOKS:
            if ul_type_lookup(self, name) != <PyObject *>implementation:
                self.hooks_replaced = True

    property _ready:
        def __get__(self):
            return self.ready

        def __set__(self, value):
            self.ready = value
            if type(value) is _deque:
                self.ready_append = value.append
                self.ready_popleft = value.popleft
            else:
                self.ready_append = self.ready_popleft = None

    def __setattr__(self, name, value):
        if name in SHORTCUT_NAMES:
            self.shadowed = True
        if name in HOOK_NAMES:
            self.hooks_replaced = True
        PyObject_GenericSetAttr(self, name, value)

    def __delattr__(self, name):
        if name in SHORTCUT_NAMES:
            self.shadowed = True
        _generic_setattr_raw(self, name, NULL)

    cdef bint own(self, str name, object implementation) noexcept:
        """type(self).<name> is ours and no instance attribute can hide it."""
        return not self.shadowed and ul_type_lookup(self, name) == <PyObject *>implementation

    cdef bint own_clock(self) except -1:
        """Our time() reads CLOCK_MONOTONIC in C: neither time() nor time.monotonic replaced."""
        return self.own(NAME_TIME, _own_time) and not monotonic_replaced()

    cdef object now(self):
        if self.own_clock():
            return ul_monotonic()
        return self.time()

    cdef int append_ready(self, object handle) except -1:
        if self.ready_append is not None:
            self.ready_append(handle)
        else:
            self.ready.append(handle)
        return 0

    cdef int queue_ready(self, object handle) except -1:
        # A handle we made: while it waits in our deque, the GC need not walk it (back_to_gc()
        # puts it back when run_ready() takes it off).
        self.append_ready(handle)
        if self.ready_append is not None and self.iterating:
            leave_gc(handle)
        return 0

    cdef dict loop_kwargs(self):
        """{'loop': self}, kept for the next call while the loop is open."""
        kwargs = {'loop': self}
        if not self._closed:
            self.future_kwargs = kwargs
        return kwargs

    def _ul_let_go_of_future_kwargs(self):
        """Loop.close(): the kept {'loop': self} is a reference cycle, which would leave a
        closed loop to the cyclic collector (see Proactor.let_go_of_the_loop)."""
        self.future_kwargs = None

    def _ul_gc_track_queued(self):
        """Give every queued handle back to the cyclic GC (before the queues are cleared, or
        handed to code that pops them without back_to_gc())."""
        for handle in self.ready:
            back_to_gc(handle)
        scheduled = self._scheduled
        if PyList_CheckExact(scheduled):
            for timer in <list>scheduled:
                back_to_gc(timer)

    # ---- BaseEventLoop methods, compiled ----

    def time(self):
        """Return the time according to the event loop's clock (time.monotonic())."""
        if monotonic_replaced():
            return _base_events_globals['time'].monotonic()    # what BaseEventLoop.time() calls
        return ul_monotonic()

    # Small BaseEventLoop methods on everyone's hot path: every Future and Task asks
    # loop.get_debug() when it is created, every Handle.cancel() asks it too.

    def get_debug(self):
        if self.fields_hidden:
            return _BaseEventLoop.get_debug(self)
        return self._debug

    def is_closed(self):
        """Returns True if the event loop was closed."""
        if self.fields_hidden:
            return _BaseEventLoop.is_closed(self)
        return self._closed

    def _check_closed(self):
        if self.fields_hidden:
            return _BaseEventLoop._check_closed(self)
        if self._closed:
            raise RuntimeError('Event loop is closed')

    def create_future(self):
        """Create a Future object attached to the loop."""
        if self._debug or self.fields_hidden:
            # Debug mode's record of where the future was made ends in BaseEventLoop's
            # create_future(), as on the stock loop (the repr's "created at", and the
            # "Task was destroyed" report's wait_for): a compiled frame records nothing.
            return _BaseEventLoop.create_future(self)
        future_class = _futures.Future      # looked up at each call, as BaseEventLoop does
        if future_class is not _CFuture:
            return future_class(loop=self)
        # asyncio's own C Future: its type has no vectorcall, so a call with a keyword builds
        # a dict of it and frees it again on every call (1% of a streams server's time at 1 KiB
        # x 10, where a Future waits for each read).  The class only reads it: one dict, kept.
        # (It makes a cycle with the loop, so a closed loop lets go of it: see
        # _ul_let_go_of_future_kwargs.)
        kwargs = self.future_kwargs
        if kwargs is None:
            kwargs = self.loop_kwargs()
        return PyObject_Call(future_class, (), kwargs)

    def create_task(self, coro, **kwargs):
        """Schedule a coroutine object.

        Return a task object.
        """
        # BaseEventLoop.create_task() is Python: its frame, a Python call of _check_closed(),
        # then asyncio.Task.  Called with the coroutine alone -- asyncio.create_task() without a
        # context, start_server()'s handler, aiohttp's task per request on Python 3.11 -- with
        # no task factory and not in debug mode, it comes down to that check and the Task, made
        # here.  Anything else (a name, a context, eager_start, a task factory, debug mode's
        # source traceback, a _check_closed() of a subclass or an instance's) is BaseEventLoop's,
        # with each Python version's own signature and errors.
        if (kwargs or self.fields_hidden or self._debug or self._task_factory is not None
                or not self.own(NAME_CHECK_CLOSED, _own_check_closed)):
            return _BaseEventLoop.create_task(self, coro, **kwargs)
        if self._closed:
            raise RuntimeError('Event loop is closed')
        kwargs = self.future_kwargs
        if kwargs is None:
            kwargs = self.loop_kwargs()
        return PyObject_Call(_tasks.Task, (coro,), kwargs)   # looked up at each call, as
                                                              # BaseEventLoop does

    def _process_events(self, event_list):
        # Completions were dispatched inside the Proactor's wait; nothing is left to process.
        pass

    def call_soon(self, callback, *args, context=None):
        """Arrange for a callback to be called as soon as possible (FIFO order)."""
        if self.fields_hidden or self.hooks_replaced:
            return _BaseEventLoop.call_soon(self, callback, *args, context=context)
        if self._closed:
            raise RuntimeError('Event loop is closed')
        if self._debug or not SLOTS_USABLE or not handle_init_pristine():
            return _BaseEventLoop.call_soon(self, callback, *args, context=context)
        handle = new_handle(_Handle, callback, args, self, context)
        self.queue_ready(handle)
        return handle

    def call_soon_threadsafe(self, callback, *args, context=None):
        """Like call_soon(), but thread-safe."""
        # BaseEventLoop's steps (check, queue the handle, wake the loop) without its three
        # Python-level calls: every run_in_executor() result, to_thread() and getaddrinfo()
        # comes back to the loop through here.
        if (self.fields_hidden or self.hooks_replaced or self._debug or THREADSAFE_HANDLE_CLASS
                or not SLOTS_USABLE or not handle_init_pristine()
                or not self.own(NAME_WRITE_TO_SELF, _own_write_to_self)):
            return _BaseEventLoop.call_soon_threadsafe(self, callback, *args, context=context)
        if self._closed:
            raise RuntimeError('Event loop is closed')
        handle = new_handle(_Handle, callback, args, self, context)
        self.queue_ready(handle)
        self.wake_waiting_loop()
        return handle

    def _write_to_self(self):
        # call_soon_threadsafe() and signal delivery: make a waiting io_uring_enter return.
        self.wake_waiting_loop()

    cdef int wake_waiting_loop(self) except -1:
        selector = self._selector
        if isinstance(selector, Proactor):
            (<Proactor>selector).wake()     # coalesced: see Proactor.wakeup
        else:
            # A loop whose _selector field is not its Proactor (a subclass hid the field, or
            # replaced the selector): wake the Proactor the loop made, if it has one.
            proactor = getattr(self, '_proactor', None)
            if proactor is not None:
                proactor.wakeup()
        return 0

    def _call_soon(self, callback, args, context):
        if (self.fields_hidden or self.hooks_replaced or self._debug or not SLOTS_USABLE
                or not handle_init_pristine()):
            return _BaseEventLoop._call_soon(self, callback, args, context)
        handle = new_handle(_Handle, callback, args, self, context)
        self.queue_ready(handle)
        return handle

    def call_at(self, when, callback, *args, context=None):
        """Like call_later(), but uses an absolute time (the loop's time())."""
        if (self.fields_hidden or self.hooks_replaced or when is None or self._debug
                or not SLOTS_USABLE or not timer_init_pristine()):
            # None: each Python version has its own error for it; debug: source tracebacks.
            return _BaseEventLoop.call_at(self, when, callback, *args, context=context)
        if self._closed:
            raise RuntimeError('Event loop is closed')
        return self.schedule_at(when, callback, args, context)

    def call_later(self, delay, callback, *args, context=None):
        """Arrange for a callback to be called after `delay` seconds; returns a TimerHandle."""
        if (self.fields_hidden or self.hooks_replaced or delay is None or self._debug
                or not SLOTS_USABLE or not timer_init_pristine()
                or not self.own_clock() or not self.own(NAME_CALL_AT, _own_call_at)):
            # Whatever is unusual, BaseEventLoop's own call_later (which calls our call_at).
            return _BaseEventLoop.call_later(self, delay, callback, *args, context=context)
        if PyFloat_CheckExact(delay):
            when = ul_monotonic() + PyFloat_AS_DOUBLE(delay)
        else:
            when = ul_monotonic() + delay
        if self._closed:
            raise RuntimeError('Event loop is closed')
        return self.schedule_at(when, callback, args, context)

    def __dealloc__(self):
        ul_heap_free(&self.timers)

    # ---- the timer heap: heapq's algorithm on _scheduled (in _sched.h) ----

    cdef int heap_push(self, list heap, object timer) except -1:
        ul_heap_native_lt(lt_pristine())
        return ul_heap_push(&self.timers, heap, timer)

    cdef object heap_pop(self, list heap):
        ul_heap_native_lt(lt_pristine())
        return ul_heap_pop(&self.timers, heap)

    cdef object schedule_at(self, object when, object callback, tuple args, object context):
        timer = new_handle(_TimerHandle, callback, args, self, context)
        ul_slot_set(timer, OFF_WHEN, when)
        ul_slot_set(timer, OFF_SCHEDULED, False)
        scheduled = self._scheduled
        if PyList_CheckExact(scheduled):
            self.heap_push(<list>scheduled, timer)
            if self.iterating:
                leave_gc(timer)       # until pop_due() or the clean-up takes it off the heap
        else:
            _heapq.heappush(scheduled, timer)
        ul_slot_set(timer, OFF_SCHEDULED, True)
        return timer

    def _timer_handle_cancelled(self, handle):
        """Notification that a TimerHandle has been cancelled."""
        cdef int flag = -1
        if self.fields_hidden:
            return _BaseEventLoop._timer_handle_cancelled(self, handle)
        if SLOTS_USABLE and type(handle) is _TimerHandle:
            flag = ul_slot_bool(handle, OFF_SCHEDULED)
        if flag < 0:
            flag = bool(handle._scheduled)
        if flag:
            self._timer_cancelled_count += 1

    def _run_once(self):
        """Run one full iteration of the event loop (BaseEventLoop._run_once, compiled)."""
        self.run_once(False)

    def run_forever(self):
        """Run until stop() is called."""
        if self.fields_hidden:
            return _BaseEventLoop.run_forever(self)
        if RUN_FOREVER_HOOKS:
            # 3.13+: BaseEventLoop's own setup and clean-up around our iterations.
            try:
                self._run_forever_setup()
                self.iterate_until_stopped()
            finally:
                self._run_forever_cleanup()
            return
        # 3.10-3.12 keep those steps inside run_forever itself; the same steps, in its order.
        self._check_closed()
        self._check_running()
        self._set_coroutine_origin_tracking(self._debug)
        old_agen_hooks = _sys.get_asyncgen_hooks()
        try:
            self._thread_id = _threading.get_ident()
            _sys.set_asyncgen_hooks(firstiter=self._asyncgen_firstiter_hook,
                                    finalizer=self._asyncgen_finalizer_hook)
            _events._set_running_loop(self)
            self.iterate_until_stopped()
        finally:
            self._stopping = False
            self._thread_id = None
            _events._set_running_loop(None)
            self._set_coroutine_origin_tracking(False)
            _sys.set_asyncgen_hooks(*old_agen_hooks)

    cdef int iterate_until_stopped(self) except -1:
        # Handles queued while the loop runs are kept off the cyclic GC's lists (leave_gc): the
        # running loop is referred to from outside (the running-loop slot) anyway.  Once it
        # stops they go back, with whatever is still queued: a handle refers to its loop, and
        # an untracked one hides that reference from the collector, so a loop dropped without
        # close() with a timer or a callback still queued (a background task asleep) would
        # never be collected -- its ring's descriptors kept for the life of the process.
        self.iterating = True
        try:
            while True:
                if self.own(NAME_RUN_ONCE, _own_run_once):
                    self.run_once(True)
                else:
                    self._run_once()        # replaced on the instance or in a subclass
                # The stock loop runs Python bytecode between iterations, where the interpreter
                # runs signal handlers (SIGINT's KeyboardInterrupt); so do we.
                PyErr_CheckSignals()
                if self._stopping:
                    return 0
        finally:
            self.iterating = False
            self._ul_gc_track_queued()

    # ---- one iteration ----

    cdef int run_once(self, bint in_run_forever) except -1:
        cdef list heap
        if (self.fields_hidden or not PyList_CheckExact(self._scheduled)
                or type(self.ready) is not _deque):
            self._ul_gc_track_queued()      # the stock code pops them
            return _BaseEventLoop._run_once(self) or 0

        # 1. Cancelled timers.
        heap = self._scheduled
        if heap:
            self.drop_cancelled()
            heap = self._scheduled

        selector = self._selector
        if type(selector) is not Proactor or not self.own(NAME_PROCESS_EVENTS, _own_process_events):
            # A selector of someone else's, or _process_events replaced: BaseEventLoop's steps.
            timeout = self.wait_timeout()
            event_list = selector.select(timeout)
            self._process_events(event_list)
            event_list = None
            due = self.pop_due()
            if due is not None:
                for timer in due:
                    self.append_ready(timer)
            return self.run_ready(len(self.ready))
        return self.proactor_iteration(<Proactor>selector, in_run_forever)

    # What one iteration runs, and in which order, is BaseEventLoop's: first the callbacks that
    # were ready when the iteration began, then the I/O callbacks of what the wait brought, then
    # the timers that were due when the wait returned; whatever those schedule runs in the next
    # iteration.  The stock loop gets that order by queueing everything behind the ready
    # callbacks.  Ours calls protocols and resolves futures straight from the completions, with
    # no handle in between, so it keeps the order by *when* it does things instead:
    #
    #   ready callbacks waiting?  --yes-->  note the due timers, run the ready callbacks, then
    #            |                           enter the kernel without waiting (*)
    #            no
    #            v
    #   enter the kernel: submit, and block until a completion or the first timer's deadline
    #            |
    #   after a blocking wait, note the timers that are due now
    #            |
    #   dispatch the completions (their protocol callbacks and future wake-ups run here)
    #            |
    #   run the handles they made ready for the I/O phase (add_reader/add_writer callbacks)
    #            |
    #   run the timers noted
    #            |
    #   queue what asked to follow this iteration's callbacks (Proactor.after_ready_pass)
    #
    # Dispatching before the ready callbacks would let a datagram_received() or data_received()
    # overtake a callback (a task's step, say) that was ready before the data arrived -- a
    # protocol would see data for a future that task had not created yet.  The timers are noted
    # before the completions run so that a timer the completions schedule for "now" waits for
    # the next iteration, as it does on the stock loop.  Running the ready callbacks *before* the
    # enter (where the stock loop polls first) lets the I/O they start reach the kernel one
    # iteration sooner -- and its completion come back one iteration sooner, ahead of callbacks
    # those same ready callbacks queued.  Where that is observable it is put right at the
    # source: a transport arms its first receive one pass after connection_made(), so that
    # what connection_made() schedules runs before the first data_received(), as on the stock
    # loop (SocketTransport._start_reading).  What the stock loop would find only at its *next*
    # poll -- an EOF that completed in the same batch as the bytes before it, bytes stashed
    # while reading was paused -- waits in after_ready_pass and is queued last: behind what
    # this iteration's callbacks queued, ahead of what the next iteration's queue.
    #
    # (*) Inside run_forever, when the ready callbacks leave nothing ready, nothing due, nothing
    # in after_ready_pass and no stop request, the enter may block as the next iteration's
    # would: the stock loop would poll without waiting, find nothing to run and come straight
    # back to a blocking poll, and nothing can happen in between.  That saves a system call per
    # request/response turn on a lightly loaded connection.  A _run_once() called by hand keeps
    # the stock contract: an iteration that starts with ready callbacks does not block.

    cdef int drop_cancelled(self) except -1:
        """Cancelled timers, as the stock loop's iteration begins: rebuild the heap when they are
        many, else pop them off its top.  (_scheduled is an exact list: run_once checked.)"""
        cdef list heap = self._scheduled
        cdef list kept
        cdef Py_ssize_t count = len(heap)
        if (count > 0 and count > _base_events_globals['_MIN_SCHEDULED_TIMER_HANDLES']
                and <double>self._timer_cancelled_count / <double>count
                > _base_events_globals['_MIN_CANCELLED_TIMER_HANDLES_FRACTION']):
            kept = []
            for timer in heap:
                if is_cancelled(timer):
                    back_to_gc(timer)
                    set_scheduled(timer, False)
                else:
                    kept.append(timer)
            ul_heap_native_lt(lt_pristine())
            ul_heap_heapify(&self.timers, kept)
            self._scheduled = heap = kept
            self._timer_cancelled_count = 0
        else:
            while heap and is_cancelled(heap[0]):
                self._timer_cancelled_count -= 1
                timer = self.heap_pop(heap)
                back_to_gc(timer)
                set_scheduled(timer, False)
        return 0

    cdef int proactor_iteration(self, Proactor proactor, bint may_wait_after_ready) except -1:
        cdef Py_ssize_t pending = len(self.ready)
        cdef Py_ssize_t ran = 0, count
        cdef list due = None            # the I/O phase's handles, then the timers due
        cdef list io_handles
        cdef bint blocking, inline_ok
        cdef bint due_noted = False
        self.batch_left = 0
        proactor.queued_by_ready_phase = 0
        proactor.io_deferred = 0
        if (proactor.after_ready_pass or proactor.after_next_ready_pass) and not pending:
            # Asked for while the loop was not running, or left by an iteration that an
            # exception ended (an iteration queues its own at its end), and nothing is ready to
            # run first: now.  (With callbacks ready, those go
            # first: queued at the end of this iteration, as the stock loop's poll would put
            # an I/O callback behind them.)
            self.queue_after_ready_pass(proactor)
            pending = len(self.ready)
        try:
            if pending or self._stopping:
                # Noted before the ready callbacks run: a timer they schedule waits for the next
                # iteration even when it is due by the time they return (call_later(0) after a
                # call_soon(): the stock loop runs the call_soon's callback first).  pop_due()
                # answers None for "nothing due", so whether the timers were noted is kept apart.
                due = self.pop_due()
                due_noted = True
                if pending:
                    # (A receive armed by these completes in this iteration: see
                    # Proactor.ready_pass_batch.)
                    proactor.ready_pass_batch = proactor.batches + 1
                    try:
                        self.run_ready(pending)
                    finally:
                        proactor.ready_pass_batch = 0
                    # (For the readiness callbacks: _readiness.Readiness.queue_io_handle.)
                    proactor.queued_by_ready_phase = len(self.ready)
                if (due or self.ready or self._stopping or proactor.after_ready_pass
                        or not may_wait_after_ready):
                    timeout = 0
                else:
                    if self._scheduled and PyList_CheckExact(self._scheduled):
                        self.drop_cancelled()   # what the stock loop's next iteration does first
                    timeout = self.wait_timeout()
            else:
                timeout = self.wait_timeout()
            blocking = timeout is None or timeout != 0
            proactor.enter_for(timeout)
            # A signal that ended the wait (EINTR) has its Python handler run now, as a
            # selector's select() would run it (PEP 475), before any callback of this iteration.
            PyErr_CheckSignals()
            if not due_noted:
                due = self.pop_due()
            elif blocking:
                # The blocking wait stood in for the next iteration's (see above): what fell due
                # during it runs now, as it would after the stock loop's next select().
                more = self.pop_due()
                if more is not None:
                    if due is None:
                        due = more
                    else:
                        due.extend(more)
            if blocking and self.ready:
                # Queued while we waited (nothing was ready before a blocking wait): by
                # call_soon_threadsafe() from another thread, or a signal's handler.  They are
                # in the stock loop's ready queue when it polls, so they run in this iteration,
                # before the I/O callbacks and the timers that fell due meanwhile -- not after
                # those timers, an iteration later.
                self.run_ready(len(self.ready))
            proactor.dispatch_completions()
            # The I/O phase's handles (add_reader/add_writer callbacks the completions made
            # ready) run first, then the timers due: the stock loop's order.
            io_handles = proactor.take_io_handles()
            if io_handles is not None:
                if due is not None:
                    io_handles.extend(due)
                due = io_handles
            if due:
                inline_ok = SLOTS_USABLE and run_pristine()
                count = len(due)
                while ran < count:
                    # Many due timers are many objects the cache no longer holds: start reading
                    # a few timers ahead, and the contexts of the nearer ones (whose handles
                    # should have arrived by now), so that running one overlaps those misses.
                    if ran + 8 < count:
                        ul_prefetch(PyList_GET_ITEM(due, ran + 8))
                    if ran + 4 < count and SLOTS_USABLE:
                        ahead = <object>PyList_GET_ITEM(due, ran + 4)
                        if type(ahead) is _TimerHandle:
                            ul_prefetch_slot(<PyObject *>ahead, OFF_CONTEXT)
                    timer = due[ran]
                    # Our reference in `due` goes now, so that a timer nobody else holds is
                    # freed while it is still in the cache (100k due timers are megabytes of
                    # objects: freeing them all at the end would read each one again).
                    due[ran] = None
                    ran += 1
                    if not is_cancelled(timer):
                        self.run_handle_now(timer, inline_ok)
            # What this iteration's callbacks and completions asked to follow its ready pass
            # goes behind everything they queued: where the stock loop's next poll would put
            # its I/O callback -- after this iteration's callbacks, before what the next
            # iteration's callbacks queue (see _receiveside.ReceiveSide.got_eof).
            if proactor.after_ready_pass or proactor.after_next_ready_pass:
                self.queue_after_ready_pass(proactor)
        finally:
            if due is not None and ran < len(due):
                # Interrupted (KeyboardInterrupt, SystemExit): the timers not yet run are not
                # lost; they run next, where they stood in the stock loop's ready queue -- after
                # the rest of the interrupted batch (batch_left), before whatever the batch's
                # callbacks scheduled.
                for i, timer in enumerate(due[ran:]):
                    self.ready.insert(self.batch_left + i, timer)
                self.batch_left = 0
        return 0

    cdef int queue_after_ready_pass(self, Proactor proactor) except -1:
        cdef list callbacks = proactor.take_after_ready_pass()
        if callbacks is not None:
            for callback, argument in callbacks:
                self.call_soon(callback, argument)
        return 0

    cdef object wait_timeout(self):
        """How long the wait may block: not at all with work ready, until the first deadline
        otherwise (at most MAXIMUM_SELECT_TIMEOUT), forever (None) with nothing scheduled."""
        cdef double when_d, timeout_d, maximum
        heap = self._scheduled
        if self.ready or self._stopping:
            return 0
        if not heap:
            return None
        maximum_obj = _base_events_globals['MAXIMUM_SELECT_TIMEOUT']
        if self.own_clock() and PyList_CheckExact(heap) \
                and ul_heap_head_when(&self.timers, <list>heap, &when_d):
            maximum = maximum_obj
            timeout_d = when_d - ul_monotonic()
            if not timeout_d > 0:
                return 0
            if timeout_d > maximum:
                return maximum_obj
            return timeout_d
        return min(max(0, deadline(heap[0]) - self.now()), maximum_obj)

    cdef list pop_due(self):
        """Take the timers whose deadline is within a clock tick off the heap, in order; None
        when none is due (most iterations of a busy server: no list is made for them)."""
        cdef list due = None
        cdef double when_d, end_d = 0
        cdef bint native_time
        cdef list heap = self._scheduled if PyList_CheckExact(self._scheduled) else None
        if heap is not None:
            if not heap:
                return None
            # With our own time() the deadlines compare as C doubles where the heap caches
            # them; a replaced time() is compared through Python, as heapq would.
            native_time = self.own_clock()
            if native_time:
                end_d = ul_monotonic() + self._clock_resolution
                end_time = end_d
            else:
                end_time = self.time() + self._clock_resolution
            while heap:
                if native_time and ul_heap_head_when(&self.timers, heap, &when_d):
                    if when_d >= end_d:
                        break
                    if ul_heap_head_moved(&self.timers, heap):
                        continue        # its _when was changed in place: re-sifted, look again
                elif PyObject_RichCompareBool(deadline(heap[0]), end_time, Py_GE):
                    break
                timer = self.heap_pop(heap)
                back_to_gc(timer)
                set_scheduled(timer, False)
                if due is None:
                    due = []
                due.append(timer)
        else:
            end_time = self.now() + self._clock_resolution
            while self._scheduled:
                if self._scheduled[0]._when >= end_time:
                    break
                timer = _heapq.heappop(self._scheduled)
                timer._scheduled = False
                if due is None:
                    due = []
                due.append(timer)
        return due

    cdef int run_ready(self, Py_ssize_t ntodo) except -1:
        """Run the first `ntodo` handles of the ready queue (not what they schedule)."""
        cdef Py_ssize_t i
        if ntodo == 0:
            return 0
        cdef bint inline_ok = SLOTS_USABLE and run_pristine()
        popleft = self.ready_popleft if self.ready_popleft is not None else self.ready.popleft
        self.batch_left = ntodo
        for i in range(ntodo):
            handle = popleft()
            self.batch_left -= 1
            back_to_gc(handle)
            if not is_cancelled(handle):
                self.run_handle_now(handle, inline_ok)
                # The stock loop runs bytecode of its own between two callbacks, where the
                # interpreter runs a pending signal's handler: SIGINT's KeyboardInterrupt leaves
                # the loop from there, with the rest of the batch still queued.  Without this
                # check it would be raised in the next callback's code instead -- a user's
                # task, which would end with it (seen on 3.10, whose signal.raise_signal() does
                # not run the handler itself).  The check is one flag read when none is pending.
                PyErr_CheckSignals()
        return 0

    cdef int run_handle_now(self, object handle, bint inline_ok) except -1:
        # inline_ok: asyncio's handle classes are usable in C and their _run is asyncio's own
        # (checked once per batch by the caller).
        if self._debug:
            self.run_debug(handle)
        elif inline_ok and (type(handle) is _Handle or type(handle) is _TimerHandle):
            run_handle(handle)
        else:
            handle._run()
        return 0

    cdef int run_debug(self, object handle) except -1:
        # Debug mode: BaseEventLoop's bookkeeping around the callback, with its warning.
        try:
            self._current_handle = handle
            t0 = self.time()
            handle._run()
            dt = self.time() - t0
            if dt >= self.slow_callback_duration:
                _base_events.logger.warning('Executing %s took %.3f seconds',
                                            _base_events._format_handle(handle), dt)
        finally:
            self._current_handle = None
        return 0


cdef extern from "Python.h":
    # PyObject_GenericSetAttr with a NULL value deletes the attribute.
    int _generic_setattr_raw "PyObject_GenericSetAttr" (object obj, object name,
                                                        PyObject *value) except -1


# The C fields' descriptors, as type(loop) must resolve them (see LoopCore.__cinit__).
cdef tuple _FIELD_DESCRIPTORS = tuple(
    (name, LoopCore.__dict__[name])
    for name in ('_ready', '_scheduled', '_stopping', '_debug', '_closed', '_selector',
                 '_timer_cancelled_count', '_clock_resolution'))

# Our own implementations, as the MRO lookups in LoopCore.own() find them.
cdef object _own_time = LoopCore.__dict__['time']
cdef tuple _HOOKS = tuple((name, LoopCore.__dict__[name]) for name in HOOK_NAMES)
cdef object _own_call_at = LoopCore.__dict__['call_at']
cdef object _own_write_to_self = LoopCore.__dict__['_write_to_self']
cdef object _own_process_events = LoopCore.__dict__['_process_events']
cdef object _own_run_once = LoopCore.__dict__['_run_once']
cdef object _own_check_closed = LoopCore.__dict__['_check_closed']
