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

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "embedsignature": True,
        },
    ),
)
