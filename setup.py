"""Build the Cython kernels in ``cython_kernels/*.pyx`` as ``pyskim._kernels.<name>``.

Project metadata lives in ``pyproject.toml``; this file only declares the extension modules.
Compiled with ``-O3 -fopenmp -fno-math-errno`` (lets ``sqrtf`` vectorise) and ``-march=native``
unless ``PYSKIM_NO_NATIVE=1`` is set (set it when building wheels meant for other machines).
"""

import glob
import os

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _extensions():
    compile_args = ["-O3", "-fopenmp", "-fno-math-errno"]
    if os.environ.get("PYSKIM_NO_NATIVE", "") != "1":
        compile_args.append("-march=native")
    link_args = ["-fopenmp"]
    exts = []
    for pyx in sorted(glob.glob(os.path.join(HERE, "cython_kernels", "*.pyx"))):
        name = os.path.splitext(os.path.basename(pyx))[0]
        exts.append(
            Extension(
                f"pyskim._kernels.{name}",
                [os.path.relpath(pyx, HERE)],
                include_dirs=[np.get_include()],
                define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
                extra_compile_args=compile_args,
                extra_link_args=link_args,
            )
        )
    return cythonize(
        exts,
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    )


setup(ext_modules=_extensions())
