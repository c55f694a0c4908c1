/* The instance dict of the compiled transports (SocketTransport in _transports.pyx,
 * SSLTransport in _sslproto.pyx).
 *
 * The stock transports are Python objects: programs and tests set attributes on them and
 * replace their methods on the instance (`transport.write = ...`, mock.patch.object()), as
 * uvicorn's and aiohttp's own test suites do.  So ours have a `__dict__` slot too -- but Cython's
 * tp_new fills it with an empty dict for every object, and that costs twice: an idle connection
 * carries 64 B more, and method calls on the transport from Python code get slower while the
 * dict exists.  Measured, ns per transport.is_closing() called from Python on 3.10 / 3.11 /
 * 3.12 / 3.13: no dict slot at all ~26 / ~19 / ~22 / ~19; the dict Cython makes ~31 / ~19 / ~42
 * / ~38 (3.10 looks the method up in it first; 3.12+ do not specialize a method call on an
 * object whose dict exists); the slot NULL ~25 / ~26 / ~20 / ~20 (3.11's specializer leaves
 * that case unspecialized).  NULL on every version: 3.11's ~7 ns per call is the price of not
 * carrying an empty dict with every connection, idle ones included.
 *
 * So __cinit__ drops the dict tp_new made, leaving the slot NULL: CPython makes it again on
 * the first attribute set (PyObject_GenericSetAttr) or __dict__/vars() (Cython's getter), and
 * traverses, clears and frees a NULL slot. */

#ifndef URINGLOOP_INSTANCE_DICT_H
#define URINGLOOP_INSTANCE_DICT_H

#include <Python.h>

static inline void ul_drop_instance_dict(PyObject *o)
{
    Py_ssize_t offset = Py_TYPE(o)->tp_dictoffset;
    if (offset > 0)
        Py_CLEAR(*(PyObject **)((char *)o + offset));
}

#endif
