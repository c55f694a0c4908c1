from cpython.object cimport PyObject

from uringloop._proactor cimport Proactor


cdef extern from "_sched.h":
    Py_ssize_t ul_member_offset(object descr)
    PyObject *ul_slot_get(object obj, Py_ssize_t offset)
    void ul_slot_set(object obj, Py_ssize_t offset, object value)
    int ul_slot_double(object obj, Py_ssize_t offset, double *out)
    int ul_slot_bool(object obj, Py_ssize_t offset)
    void ul_prefetch(PyObject *obj)
    void ul_prefetch_slot(PyObject *obj, Py_ssize_t offset)
    object ul_alloc_instance(object type)
    void ul_gc_untrack(object obj)
    void ul_gc_retrack(object obj)
    void ul_gc_park(PyObject *obj)
    void ul_gc_unpark(PyObject *obj)
    int ul_gc_parking_check()
    PyObject *ul_type_lookup(object obj, object name)
    PyObject *ul_class_lookup(object cls, object name)
    int ul_socket_fd(object sock)
    ctypedef struct ul_attr_watch:
        pass
    void ul_attr_watch_init(ul_attr_watch *w, object dict, object name, object expected)
    bint ul_attr_unchanged(ul_attr_watch *w)
    double ul_monotonic() nogil
    object ul_call_with_tuple(object callback, object args)

    ctypedef struct ul_timer_heap:
        pass
    void ul_heap_configure(object timer_type, Py_ssize_t when_offset)
    void ul_heap_free(ul_timer_heap *heap)
    void ul_heap_native_lt(bint native)
    int ul_heap_push(ul_timer_heap *heap, list items, object item) except -1
    object ul_heap_pop(ul_timer_heap *heap, list items)
    int ul_heap_heapify(ul_timer_heap *heap, list items) except -1
    int ul_heap_head_when(ul_timer_heap *heap, list items, double *when) except -1
    int ul_heap_head_moved(ul_timer_heap *heap, list items) except -1


cdef class LoopCore:
    """The compiled base of uringloop.Loop: BaseEventLoop's scheduling state as C fields (still
    reachable under their BaseEventLoop names) and its hot methods compiled."""
    cdef object ready                   # loop._ready: the collections.deque of ready handles
    cdef object ready_append            # ready.append, bound once while ready is a deque
    cdef object ready_popleft           # ready.popleft, likewise
    cdef dict future_kwargs             # {'loop': self}, for create_future()
    cdef public object _scheduled       # the timer heap: a list ordered as heapq orders it
    cdef public object _stopping
    cdef public object _debug
    cdef public object _closed
    cdef public object _selector
    cdef public Py_ssize_t _timer_cancelled_count
    cdef public double _clock_resolution
    # Not BaseEventLoop's: the loop's tables of transports (a TransportTable, see
    # _transport_table) and of the sockets that sock_* calls use (descriptor -> SocketState,
    # and the timer of their sweep; see _sockio), set in Loop.__init__ -- C fields so that
    # every sock_* call reaches them without a lookup in the instance's dictionary.
    cdef public object _transports
    cdef public dict _ul_sock_states
    cdef public object _ul_sock_sweep
    cdef bint shadowed                  # an instance attribute hides one of our own methods
    cdef bint fields_hidden             # a subclass hides a field: BaseEventLoop's methods only
    cdef bint iterating                 # inside run_forever: queued handles may leave the GC
    cdef bint hooks_replaced            # _call_soon or get_debug replaced: BaseEventLoop's paths
    cdef Py_ssize_t batch_left          # handles of the running ready batch not yet taken
    cdef ul_timer_heap timers           # the deadlines of _scheduled's entries (see _sched.h)

    cdef bint own(self, str name, object implementation) noexcept
    cdef object now(self)
    cdef int append_ready(self, object handle) except -1
    cdef dict loop_kwargs(self)
    cdef int queue_ready(self, object handle) except -1
    cdef int wake_waiting_loop(self) except -1
    cdef int heap_push(self, list heap, object timer) except -1
    cdef object heap_pop(self, list heap)
    cdef object schedule_at(self, object when, object callback, tuple args, object context)
    cdef int run_once(self, bint in_run_forever) except -1
    cdef int drop_cancelled(self) except -1
    cdef bint own_clock(self) except -1
    cdef int iterate_until_stopped(self) except -1
    cdef int proactor_iteration(self, Proactor proactor, bint may_wait_after_ready) except -1
    cdef int queue_after_ready_pass(self, Proactor proactor) except -1
    cdef object wait_timeout(self)
    cdef list pop_due(self)
    cdef int run_ready(self, Py_ssize_t ntodo) except -1
    cdef int run_handle_now(self, object handle, bint inline_ok) except -1
    cdef int run_debug(self, object handle) except -1
