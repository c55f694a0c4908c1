"""Build the compiled core.  Every extension includes _sys.h, the only file that knows the kernel
ABI; nothing is vendored and nothing but gcc and the Python headers is needed."""

import pathlib

from Cython.Build import cythonize
from setuptools import Extension, setup

# Every .pyx in the package is one extension module (cross-module cimports go through .pxd).
MODULES = sorted(p.stem for p in pathlib.Path(__file__).parent.glob("uringloop/*.pyx"))

extensions = [
    Extension(
        f"uringloop.{name}",
        [f"uringloop/{name}.pyx"],
        include_dirs=["uringloop"],
        extra_compile_args=["-O2", "-Wall", "-Wno-unused-function"],
    )
    for name in MODULES
]

ext_modules = cythonize(
    extensions,
    compiler_directives={
        "language_level": "3",
        "boundscheck": False,
        "wraparound": False,
        "embedsignature": True,
        # No object of the loop's is meant to be pickled or copied (a loop, a transport, a ring
        # operation: each stands for kernel state), and without this Cython writes pickling
        # methods and an unpickling function for every cdef class: ~11% of the modules' text,
        # ~0.2 MiB of a server's resident memory.  Pickling one raises TypeError ("cannot pickle
        # '...' object"), as pickling the stock loop's transports does (their socket refuses).
        "auto_pickle": False,
    },
)

# Cython's coroutine type (3.x, up to at least 3.3.1) keeps the frame object it makes the first
# time a coroutine's cr_frame is read -- asyncio reads it to repr a task -- but its tp_traverse
# does not show that reference to the garbage collector.  On Python 3.10 that frame's f_back
# chain holds the frames that were running when it was made (the task's repr inside the
# exception handler that reports "Task was destroyed but it is pending!", or any function
# holding the task), and through them the task and the coroutine itself: a cycle the collector
# cannot see as one.  The coroutine, its task, the loop they reference and its sockets were
# never freed (seen as closed loops piling up, with their sockets open, where loops were closed
# with sock_* calls pending).  So the generated traverse is given the missing Py_VISIT.  If a
# Cython release writes its traverse differently, the text is not found and nothing changes.
_TRAVERSE_END = "    Py_VISIT(gen->yieldfrom);\n    return __Pyx_Coroutine_traverse_excstate("
_TRAVERSE_END_WITH_FRAME = ("    Py_VISIT(gen->yieldfrom);\n    Py_VISIT(gen->gi_frame);\n"
                            "    return __Pyx_Coroutine_traverse_excstate(")
for extension in ext_modules:
    for source in extension.sources:
        path = pathlib.Path(source)
        if path.suffix == ".c" and path.exists():
            text = path.read_text()
            if _TRAVERSE_END in text:
                path.write_text(text.replace(_TRAVERSE_END, _TRAVERSE_END_WITH_FRAME))

setup(ext_modules=ext_modules)
