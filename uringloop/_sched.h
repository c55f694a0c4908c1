/* The C side of _sched.pyx: direct access to the __slots__ of asyncio.Handle / TimerHandle.
 *
 * asyncio.events.Handle is a Python class with __slots__; each slot is a member descriptor
 * (T_OBJECT_EX) that stores a PyObject* at a fixed offset of the instance.  _sched.pyx reads
 * those offsets once, from the descriptors themselves, and then creates and reads handles
 * without going through the Python-level __init__ or attribute protocol.  Nothing here assumes
 * an offset: ul_member_offset() returns -1 unless the descriptor really is a writable
 * T_OBJECT_EX member, and the module then keeps to the stock (Python) paths.
 */
#ifndef URINGLOOP_SCHED_H
#define URINGLOOP_SCHED_H

#include <Python.h>
#include <structmember.h>
#include <time.h>

/* Offset of a writable object slot described by `descr`, or -1 if it is not one. */
static inline Py_ssize_t ul_member_offset(PyObject *descr)
{
    PyMemberDef *m;
    if (Py_TYPE(descr) != &PyMemberDescr_Type)
        return -1;
    m = ((PyMemberDescrObject *)descr)->d_member;
    if (m->type != T_OBJECT_EX || (m->flags & READONLY))
        return -1;
    return m->offset;
}

/* d[key], borrowed, or NULL when absent -- for the per-call checks whether a module attribute
 * or an instance attribute was replaced.  PyDict_GetItem saves and restores the error state
 * around the lookup (about as much work again as the lookup of a str key, whose hash is
 * cached); an error here can only be a failed comparison of an odd key, taken as absent. */
static inline PyObject *ul_dict_get(PyObject *d, PyObject *key)
{
    PyObject *value = PyDict_GetItemWithError(d, key);
    if (value == NULL && PyErr_Occurred())
        PyErr_Clear();
    return value;
}

/* Whether a module attribute is still the object it was at import (time.monotonic,
 * asyncio.events.Handle...), asked on hot paths: BaseEventLoop looks those names up on every
 * call, so a program that replaces one (freezegun, a profiler's Handle subclass) must see the
 * replacement used -- but a dict lookup per call_soon() would cost more than the rest of it.
 * The module dict's version tag changes with every change to the dict, and a module's dict
 * hardly ever changes after import: the lookup is made again only when the tag moved.
 * (ma_version_tag is deprecated as an API from 3.12 but still maintained on every change in
 * 3.10-3.13, which is what this needs; a later Python would go through ul_dict_get always.) */
typedef struct {
    PyObject *dict;         /* the module's __dict__ (a strong reference, held for good) */
    PyObject *name;
    PyObject *expected;
    uint64_t tag;
    int same;
} ul_attr_watch;

static inline uint64_t ul_dict_tag(PyObject *d)
{
#if PY_VERSION_HEX < 0x030E0000
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    return ((PyDictObject *)d)->ma_version_tag;
#pragma GCC diagnostic pop
#else
    (void)d;
    return 0;
#endif
}

static void ul_attr_watch_init(ul_attr_watch *w, PyObject *dict, PyObject *name, PyObject *expected)
{
    Py_INCREF(dict);
    Py_INCREF(name);
    Py_INCREF(expected);
    w->dict = dict;
    w->name = name;
    w->expected = expected;
    w->tag = ul_dict_tag(dict);
    w->same = ul_dict_get(dict, name) == expected;
}

static inline int ul_attr_unchanged(ul_attr_watch *w)
{
    uint64_t tag = ul_dict_tag(w->dict);
    if (tag != w->tag || PY_VERSION_HEX >= 0x030E0000) {
        w->tag = tag;
        w->same = ul_dict_get(w->dict, w->name) == w->expected;
    }
    return w->same;
}

/* The descriptor of a _socket.socket (or subclass) instance, without a method call -- asked
 * before anything goes to the kernel by a socket's number, to see whether its owner closed it:
 * the object's C struct begins with it (Modules/socketmodule.h, PySocketSockObject:
 * PyObject_HEAD, then SOCKET_T sock_fd -- an int on POSIX, -1 once the socket is closed), and
 * has since the module's first version.  The caller checks the type. */
typedef struct { PyObject_HEAD int sock_fd; } ul_socket_head;

static inline int ul_socket_fd(PyObject *sock)
{
    return ((ul_socket_head *)sock)->sock_fd;
}

/* Borrowed reference to the slot's value; NULL when the slot is unset. */
static inline PyObject *ul_slot_get(PyObject *obj, Py_ssize_t offset)
{
    return *(PyObject **)((char *)obj + offset);
}

/* Store a new reference to `value` in the slot, releasing the previous value (if any). */
static inline void ul_slot_set(PyObject *obj, Py_ssize_t offset, PyObject *value)
{
    PyObject **slot = (PyObject **)((char *)obj + offset);
    PyObject *old = *slot;
    Py_INCREF(value);
    *slot = value;
    Py_XDECREF(old);
}

/* A new, zeroed instance of `type` exactly as object.__new__(type) makes one (tp_alloc); the
 * caller fills the slots. */
static inline PyObject *ul_alloc_instance(PyObject *type)
{
    return ((PyTypeObject *)type)->tp_alloc((PyTypeObject *)type, 0);
}

/* The cyclic GC and queued handles.  A handle waiting in the ready queue or the timer heap is
 * reachable from the loop, so no collection can free it -- yet every collection walks it (and a
 * burst of 100k call_soon() makes the full collections walk 100k handles several times over).
 * _sched.pyx takes the handles it queues out of the collector's lists while they wait and puts
 * them back the moment it takes them off the queue, before anything else can see them.
 * Only asyncio's Handle/TimerHandle instances are untracked: their type is a heap type whose
 * dealloc (subtype_dealloc) copes with an untracked instance.  Their contexts stay tracked --
 * a Context's own dealloc assumes it is tracked on some Python versions. */
static inline void ul_gc_untrack(PyObject *obj)
{
    if (PyObject_GC_IsTracked(obj))
        PyObject_GC_UnTrack(obj);
}

static inline void ul_gc_retrack(PyObject *obj)
{
    if (!PyObject_GC_IsTracked(obj))
        PyObject_GC_Track(obj);
}

/* Parking a queued handle's context.
 *
 * Untracking the handles is not enough: each call_soon() also copies the current context, and a
 * burst of them leaves as many Contexts in the collector's lists as handles (perf: ~45% of a
 * 500k call_soon burst in gc_collect_main after the handles were untracked).  A Context cannot
 * simply be untracked: its dealloc unlinks it from the collector's list with the unchecked
 * _PyObject_GC_UNTRACK (3.10-3.13), which would crash on an untracked object if the last
 * reference went away before we tracked it again (the loop's queue dropped by code not ours,
 * say).  So a queued context is *parked*: moved from the collector's generation lists onto a list
 * of our own, `ul_parked`.  To CPython it still looks tracked (its _gc_next is not 0), its
 * dealloc unlinks it from our list as it would from a generation, and the collector never walks
 * it because no generation's list leads to it.  When the handle leaves the queue the context is
 * unparked (tracked again, in the youngest generation).  A context left parked by a handle that
 * someone else dropped is not lost or crashed on; it is only outside cycle collection.
 *
 * This needs CPython's GC header layout, which is internal: two words before the object,
 * _gc_next (0 = untracked) and _gc_prev (a pointer whose two low bits are flags) -- the same in
 * 3.10 through 3.13 for the default (GIL) build.  ul_gc_parking_check() verifies it on a live
 * object when the module is imported; anything unexpected, another version, or a free-threaded
 * build, and parking is a no-op. */
#if !defined(Py_GIL_DISABLED) && PY_VERSION_HEX >= 0x030A0000 && PY_VERSION_HEX < 0x030E0000
#define UL_GC_PARKING_POSSIBLE 1
#else
#define UL_GC_PARKING_POSSIBLE 0
#endif

typedef struct {
    uintptr_t next;     /* CPython's PyGC_Head._gc_next */
    uintptr_t prev;     /* CPython's PyGC_Head._gc_prev: pointer | two flag bits */
} ul_gc_head;

#define UL_GC_PREV_FLAGS ((uintptr_t)3)

static ul_gc_head ul_parked = {(uintptr_t)&ul_parked, (uintptr_t)&ul_parked};
static int ul_gc_parking_enabled = 0;

static inline ul_gc_head *ul_gc_head_of(PyObject *obj)
{
    return ((ul_gc_head *)obj) - 1;
}

/* Move a tracked object from the collector's lists onto ours (no-op when parking is off). */
static inline void ul_gc_park(PyObject *obj)
{
    ul_gc_head *head, *last;
    if (!ul_gc_parking_enabled || !PyObject_GC_IsTracked(obj))
        return;
    PyObject_GC_UnTrack(obj);                       /* leaves next = 0, prev = flags only */
    head = ul_gc_head_of(obj);
    last = (ul_gc_head *)(ul_parked.prev & ~UL_GC_PREV_FLAGS);
    head->next = (uintptr_t)&ul_parked;
    head->prev = (uintptr_t)last | (head->prev & UL_GC_PREV_FLAGS);
    last->next = (uintptr_t)head;
    ul_parked.prev = (uintptr_t)head | (ul_parked.prev & UL_GC_PREV_FLAGS);
}

/* Back into the collector's youngest generation.  An object that was never parked but is
 * tracked moves there too, which costs the collector a look at it and nothing else. */
static inline void ul_gc_unpark(PyObject *obj)
{
    if (!ul_gc_parking_enabled || !PyObject_GC_IsTracked(obj))
        return;
    PyObject_GC_UnTrack(obj);                       /* unlinks from whichever list holds it */
    PyObject_GC_Track(obj);
}

/* Check the layout on a fresh list (tracked at birth), enable parking if it holds: the header's
 * first word is non-zero while tracked and 0 once untracked; a parked object counts as tracked;
 * freeing it while parked leaves our list empty again.  Returns whether parking is on. */
static inline int ul_gc_parking_check(void)
{
    PyObject *probe;
    ul_gc_head *head;
    int ok;
    if (!UL_GC_PARKING_POSSIBLE)
        return 0;
    probe = PyList_New(0);
    if (probe == NULL) {
        PyErr_Clear();
        return 0;
    }
    head = ul_gc_head_of(probe);
    ok = PyObject_GC_IsTracked(probe) && head->next != 0
         && (head->prev & ~UL_GC_PREV_FLAGS) != 0;
    if (ok) {
        PyObject_GC_UnTrack(probe);
        ok = head->next == 0 && !PyObject_GC_IsTracked(probe);
        PyObject_GC_Track(probe);
    }
    if (ok) {
        ul_gc_parking_enabled = 1;
        ul_gc_park(probe);
        ok = PyObject_GC_IsTracked(probe)
             && ul_parked.next == (uintptr_t)head
             && (ul_parked.prev & ~UL_GC_PREV_FLAGS) == (uintptr_t)head;
    }
    Py_DECREF(probe);                               /* its dealloc unlinks it from ul_parked */
    ok = ok && ul_parked.next == (uintptr_t)&ul_parked
            && (ul_parked.prev & ~UL_GC_PREV_FLAGS) == (uintptr_t)&ul_parked;
    ul_gc_parking_enabled = ok;
    return ok;
}

/* 1 with *out set when the slot holds an exact float (a loop-time deadline), else 0. */
static inline int ul_slot_double(PyObject *obj, Py_ssize_t offset, double *out)
{
    PyObject *value = *(PyObject **)((char *)obj + offset);
    if (value == NULL || !PyFloat_CheckExact(value))
        return 0;
    *out = PyFloat_AS_DOUBLE(value);
    return 1;
}

/* Truth of the slot without a call when it holds True/False: 1, 0, or -1 for "ask Python"
 * (unset slot, or any other object). */
static inline int ul_slot_bool(PyObject *obj, Py_ssize_t offset)
{
    PyObject *value = *(PyObject **)((char *)obj + offset);
    if (value == Py_True)
        return 1;
    if (value == Py_False)
        return 0;
    return -1;
}

/* What type(obj).<name> resolves to through the MRO (borrowed, NULL if nothing; never raises). */
static inline PyObject *ul_type_lookup(PyObject *obj, PyObject *name)
{
    return _PyType_Lookup(Py_TYPE(obj), name);
}

/* The same for a class itself: what cls.<name> resolves to through cls's MRO. */
static inline PyObject *ul_class_lookup(PyObject *cls, PyObject *name)
{
    return _PyType_Lookup((PyTypeObject *)cls, name);
}

/* callback(*args) for a tuple `args`, as Context.run makes the call: one vectorcall. */
static inline PyObject *ul_call_with_tuple(PyObject *callback, PyObject *args)
{
    return PyObject_Vectorcall(callback, &PyTuple_GET_ITEM(args, 0),
                               (size_t)PyTuple_GET_SIZE(args), NULL);
}

/* time.monotonic() without the call: CLOCK_MONOTONIC converted to seconds the way CPython's
 * _PyTime_AsSecondsDouble does (whole seconds exactly, otherwise ns / 1e9). */
static inline double ul_monotonic(void)
{
    struct timespec ts;
    long long ns;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ns = (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    if (ns % 1000000000LL == 0)
        return (double)(ns / 1000000000LL);
    return (double)ns / 1e9;
}


/* ---- the timer heap ------------------------------------------------------------------------
 *
 * heapq's algorithm on the list loop._scheduled, so that the list always ends up in exactly the
 * order heapq would leave it in: push appends and moves the new item toward the root while it is
 * smaller than its parent; pop moves the last item into the root's place and restores the
 * invariant by walking the hole down to a leaf along the smaller children and then moving the
 * item back up (heapq's choice: fewer comparisons than stopping early).  "Smaller" is what heapq
 * asks, a < b.  For two asyncio TimerHandles whose deadlines are floats that is a comparison of
 * the deadlines (what TimerHandle.__lt__ computes); any other pair is compared through Python,
 * with heapq's precautions: both items held while arbitrary code runs, and the list checked for
 * a change of size afterwards, since that code may touch the list.
 *
 * Why a key array: a heap of 100k timers is a few megabytes of scattered objects, and every
 * comparison of two TimerHandles would read both handles and both float objects -- four cache
 * misses, about 17 times per pop.  So the loop keeps, next to the list, a plain array with one
 * entry per position: the item seen there and its deadline.  Comparisons read the array; list
 * and array are permuted together.  The array is only a cache and is never trusted blindly:
 *   - an entry counts only while the list still holds the very same object at that position
 *     (anyone may assign into loop._scheduled: such a position is simply re-read);
 *   - every operation first checks that the list is the one the keys describe and has the size
 *     we left it with, and re-reads all of it otherwise (a list replaced or resized behind our
 *     back -- so a freed handle's address reused by a new one can never inherit a stale key);
 *   - a TimerHandle's deadline never changes while it is scheduled (asyncio sets _when once).
 */

typedef struct {
    PyObject *item;     /* the object this entry describes (borrowed; identity only) */
    double when;        /* its deadline, when `exact` */
    int exact;          /* an asyncio TimerHandle with a float deadline: compare `when` in C */
} ul_heap_key;

typedef struct {
    ul_heap_key *keys;
    Py_ssize_t capacity;
    PyObject *list;     /* the list the keys describe (borrowed; identity only) */
    Py_ssize_t size;    /* its size when an operation last left it */
} ul_timer_heap;

static PyTypeObject *ul_timer_type = NULL;     /* asyncio.TimerHandle while its slots are usable */
static Py_ssize_t ul_when_offset = -1;
/* TimerHandle.__lt__ is asyncio's own (it compares _when): set before every heap operation.  When
 * someone has replaced it, every comparison goes through Python. */
static int ul_native_lt = 1;

static inline void ul_heap_native_lt(int native)
{
    ul_native_lt = native;
}

static void ul_heap_configure(PyObject *timer_type, Py_ssize_t when_offset)
{
    ul_timer_type = (PyTypeObject *)timer_type;
    ul_when_offset = when_offset;
}

static void ul_heap_free(ul_timer_heap *heap)
{
    PyMem_Free(heap->keys);
    heap->keys = NULL;
    heap->capacity = 0;
    heap->list = NULL;
    heap->size = 0;
}

static inline void ul_heap_read_key(ul_heap_key *key, PyObject *item)
{
    PyObject *when;
    key->item = item;
    key->exact = 0;
    if (Py_TYPE(item) == ul_timer_type) {
        when = ul_slot_get(item, ul_when_offset);
        if (when != NULL && PyFloat_CheckExact(when)) {
            key->when = PyFloat_AS_DOUBLE(when);
            key->exact = 1;
        }
    }
}

/* Start an operation on `list`: room for one more entry, and keys that describe this list. */
static int ul_heap_begin(ul_timer_heap *heap, PyObject *list)
{
    Py_ssize_t size = PyList_GET_SIZE(list), i, capacity;
    ul_heap_key *keys;
    if (size + 1 > heap->capacity) {
        capacity = heap->capacity ? heap->capacity : 64;
        while (capacity < size + 1)
            capacity *= 2;
        keys = PyMem_Realloc(heap->keys, (size_t)capacity * sizeof(ul_heap_key));
        if (keys == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        heap->keys = keys;
        heap->capacity = capacity;
    }
    if (list != heap->list || size != heap->size) {
        for (i = 0; i < size; i++)
            ul_heap_read_key(&heap->keys[i], PyList_GET_ITEM(list, i));
        heap->list = list;
        heap->size = size;
    }
    return 0;
}

static inline void ul_heap_end(ul_timer_heap *heap, PyObject *list)
{
    heap->list = list;
    heap->size = PyList_GET_SIZE(list);
}

/* The key of position i, re-read if the list holds another object there now. */
static inline ul_heap_key *ul_heap_key_at(ul_timer_heap *heap, PyObject *list, Py_ssize_t i)
{
    ul_heap_key *key = &heap->keys[i];
    PyObject *item = PyList_GET_ITEM(list, i);
    if (key->item != item)
        ul_heap_read_key(key, item);
    return key;
}

/* list[i] < list[j]: 1 or 0; -1 with an exception set (including a list resized meanwhile). */
static int ul_heap_lt(ul_timer_heap *heap, PyObject *list, Py_ssize_t i, Py_ssize_t j)
{
    Py_ssize_t size = PyList_GET_SIZE(list);
    ul_heap_key *a = ul_heap_key_at(heap, list, i), *b = ul_heap_key_at(heap, list, j);
    PyObject *left, *right, *when_left, *when_right;
    int result;
    if (a->exact && b->exact && ul_native_lt)
        return a->when < b->when;
    left = PyList_GET_ITEM(list, i);
    right = PyList_GET_ITEM(list, j);
    when_left = Py_TYPE(left) == ul_timer_type ? ul_slot_get(left, ul_when_offset) : NULL;
    when_right = Py_TYPE(right) == ul_timer_type ? ul_slot_get(right, ul_when_offset) : NULL;
    if (when_left != NULL && when_right != NULL && ul_native_lt) {
        /* TimerHandle.__lt__ between two TimerHandles is exactly this */
        left = when_left;
        right = when_right;
    }
    Py_INCREF(left);
    Py_INCREF(right);
    result = PyObject_RichCompareBool(left, right, Py_LT);
    Py_DECREF(left);
    Py_DECREF(right);
    if (result >= 0 && PyList_GET_SIZE(list) != size) {
        PyErr_SetString(PyExc_RuntimeError, "list changed size during iteration");
        return -1;
    }
    return result;
}

/* Start reading an object that will be needed soon (a hint: never faults, may be ignored). */
static inline void ul_prefetch(PyObject *obj)
{
    __builtin_prefetch(obj);
}

/* Start reading the object in a slot of `obj` -- which should itself be in the cache by now. */
static inline void ul_prefetch_slot(PyObject *obj, Py_ssize_t offset)
{
    PyObject *value = ul_slot_get(obj, offset);
    if (value != NULL)
        __builtin_prefetch(value);
}

static inline void ul_heap_swap(ul_timer_heap *heap, PyObject *list, Py_ssize_t i, Py_ssize_t j)
{
    PyObject **items = ((PyListObject *)list)->ob_item, *item = items[i];
    ul_heap_key key = heap->keys[i];
    items[i] = items[j];
    items[j] = item;
    heap->keys[i] = heap->keys[j];
    heap->keys[j] = key;
}

/* Move list[pos] toward the root (not above `start`) while it is smaller than its parent. */
static int ul_heap_sift_rootward(ul_timer_heap *heap, PyObject *list, Py_ssize_t start,
                                 Py_ssize_t pos)
{
    Py_ssize_t parent;
    int smaller;
    while (pos > start) {
        parent = (pos - 1) >> 1;
        smaller = ul_heap_lt(heap, list, pos, parent);
        if (smaller < 0)
            return -1;
        if (!smaller)
            break;
        ul_heap_swap(heap, list, pos, parent);
        pos = parent;
    }
    return 0;
}

/* Restore the heap below `pos` after list[pos] was replaced: the hole walks down along the
 * smaller children to a leaf, then the item rises back to its place. */
static int ul_heap_sift_leafward(ul_timer_heap *heap, PyObject *list, Py_ssize_t pos)
{
    Py_ssize_t size = PyList_GET_SIZE(list), start = pos, child;
    int left_smaller;
    while ((child = 2 * pos + 1) < size) {
        /* The next level's comparison reads the grandchildren's keys and list slots: ask for
         * them now, so that their cache misses overlap this level's instead of following it
         * (a heap of 100k timers does not fit in the L2 cache; ~17 levels per pop). */
        if (4 * pos + 3 < size) {
            __builtin_prefetch(&heap->keys[4 * pos + 3]);
            __builtin_prefetch(&heap->keys[4 * pos + 6]);
            __builtin_prefetch(&((PyListObject *)list)->ob_item[4 * pos + 3]);
        }
        if (child + 1 < size) {
            left_smaller = ul_heap_lt(heap, list, child, child + 1);
            if (left_smaller < 0)
                return -1;
            child += left_smaller ^ 1;
        }
        ul_heap_swap(heap, list, pos, child);
        pos = child;
    }
    return ul_heap_sift_rootward(heap, list, start, pos);
}

/* heapq.heappush(list, item) */
static int ul_heap_push(ul_timer_heap *heap, PyObject *list, PyObject *item)
{
    int result;
    if (ul_heap_begin(heap, list) < 0 || PyList_Append(list, item) < 0)
        return -1;
    ul_heap_read_key(&heap->keys[heap->size], item);
    heap->size++;
    result = ul_heap_sift_rootward(heap, list, 0, PyList_GET_SIZE(list) - 1);
    ul_heap_end(heap, list);
    return result;
}

/* heapq.heappop(list): a new reference, NULL with an exception set. */
static PyObject *ul_heap_pop(ul_timer_heap *heap, PyObject *list)
{
    Py_ssize_t size = PyList_GET_SIZE(list);
    PyObject **items, *first, *last;
    if (size == 0) {
        PyErr_SetString(PyExc_IndexError, "index out of range");
        return NULL;
    }
    if (ul_heap_begin(heap, list) < 0)
        return NULL;
    items = ((PyListObject *)list)->ob_item;
    last = items[size - 1];
    if (size - 1 >= ((PyListObject *)list)->allocated / 2) {
        /* Drop the last position and take over the list's reference to its item: what
         * PyList_SetSlice would do when the list keeps its allocation (list_resize shrinks only
         * below half of it), minus the Py_INCREF/Py_DECREF pair -- which would read the item,
         * a cache miss on a large heap, for nothing. */
        Py_SET_SIZE(list, size - 1);
    }
    else {
        Py_INCREF(last);
        if (PyList_SetSlice(list, size - 1, size, NULL) < 0) {     /* drop it, shrinking */
            Py_DECREF(last);
            return NULL;
        }
    }
    heap->size = --size;
    if (size == 0)
        return last;
    /* the last item takes the root's place; our reference to the root goes to the caller */
    items = ((PyListObject *)list)->ob_item;
    first = items[0];
    items[0] = last;
    heap->keys[0] = heap->keys[size];
    if (ul_heap_sift_leafward(heap, list, 0) < 0) {
        ul_heap_end(heap, list);
        Py_DECREF(first);
        return NULL;
    }
    ul_heap_end(heap, list);
    /* The next pop_due() step reads the new root object (is it due, and its GC header): start
     * that miss while the caller deals with this one. */
    __builtin_prefetch(((PyListObject *)list)->ob_item[0]);
    return first;
}

/* heapq.heapify(list) */
static int ul_heap_heapify(ul_timer_heap *heap, PyObject *list)
{
    Py_ssize_t i;
    int result = 0;
    if (ul_heap_begin(heap, list) < 0)
        return -1;
    for (i = PyList_GET_SIZE(list) / 2 - 1; i >= 0 && result == 0; i--)
        result = ul_heap_sift_leafward(heap, list, i);
    ul_heap_end(heap, list);
    return result;
}

/* The head's deadline without touching the handle: 1 with *when set when it is an exact
 * (float) deadline, 0 when it must be compared through Python, -1 with an exception set. */
static int ul_heap_head_when(ul_timer_heap *heap, PyObject *list, double *when)
{
    ul_heap_key *key;
    if (ul_heap_begin(heap, list) < 0)
        return -1;
    key = ul_heap_key_at(heap, list, 0);
    if (!key->exact)
        return 0;
    *when = key->when;
    return 1;
}

/* Whether the head's deadline was changed in place since its key was cached: 1 after putting
 * it where it belongs now (the caller looks at the new head), 0 if it is unchanged, -1 with an
 * exception set.
 *
 * The keys cache each timer's deadline so that sifting need not read the handles -- but code
 * outside the loop sometimes moves a scheduled timer by assigning its _when in place (caches
 * that extend an expiry, fake clocks; the stock heap compares the live value every time).  So
 * a head about to be run as due is read again first (pop_due): a timer postponed in place runs
 * at its new deadline, as with the stock loop.  The handle is read then anyway, to run it. */
static int ul_heap_head_moved(ul_timer_heap *heap, PyObject *list)
{
    ul_heap_key *key, before;
    int result;
    if (ul_heap_begin(heap, list) < 0)
        return -1;
    key = ul_heap_key_at(heap, list, 0);
    before = *key;
    ul_heap_read_key(key, PyList_GET_ITEM(list, 0));
    /* (A NaN deadline equals no deadline, itself included: compared with ==, a NaN head read
     * "moved" on every pass and pop_due() spun forever.  Unchanged NaN is unchanged; it is then
     * popped as due -- nothing compares >= it -- as the stock loop of 3.10-3.12 runs it.) */
    if (key->exact == before.exact
            && (!key->exact || key->when == before.when
                || (key->when != key->when && before.when != before.when)))
        return 0;
    result = ul_heap_sift_leafward(heap, list, 0);
    ul_heap_end(heap, list);
    return result < 0 ? -1 : 1;
}

#endif
