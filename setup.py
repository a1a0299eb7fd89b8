"""Build the Cython kernels in ``cython_kernels/*.pyx`` as ``pyskim._kernels.<name>``, and install
``pyskim-caffe-alias.pth`` into site-packages.

Project metadata lives in ``pyproject.toml``; this file only declares the extension modules and the
``.pth`` file. Compiled with ``-O3 -fno-math-errno`` (lets ``sqrtf`` vectorise), ``-pthread`` (pyskim's
thread pool, ``pool_impl.h``; no OpenMP) and ``-march=native`` unless ``PYSKIM_NO_NATIVE=1`` is set (set
it when building wheels meant for other machines). Each extension depends on every header and ``.pxi``
include, so editing one rebuilds them.

The ``.pth`` file (the opt-in ``PYSKIM_CAFFE_ALIAS=1`` switch, see ``pyskim_caffe_alias.py``) is a data
file whose target is site-packages relative to the installation prefix, as the building interpreter
lays it out. Editable installs (``pip install -e .``) install data files too, but setuptools'
``editable_wheel`` asks the distribution ``has_data()`` where distutils names it ``has_data_files()``:
:class:`Distribution` answers both.
"""

import glob
import os
import sysconfig

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.dist import Distribution as SetuptoolsDistribution

HERE = os.path.dirname(os.path.abspath(__file__))


def _extensions():
    compile_args = ["-O3", "-fno-math-errno", "-pthread"]
    if os.environ.get("PYSKIM_NO_NATIVE", "") != "1":
        compile_args.append("-march=native")
    link_args = ["-pthread"]
    headers = sorted(glob.glob(os.path.join(HERE, "cython_kernels", "*.h"))
                     + glob.glob(os.path.join(HERE, "cython_kernels", "*.pxi")))
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
                depends=[os.path.relpath(h, HERE) for h in headers],
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


def _site_packages():
    """site-packages (purelib) relative to the data root (the prefix): ``lib/python3.11/site-packages``."""
    paths = sysconfig.get_paths()
    return os.path.relpath(paths["purelib"], paths["data"])


class Distribution(SetuptoolsDistribution):
    """setuptools' Distribution, answering ``has_data`` (asked by ``editable_wheel`` before it installs
    the data files of an editable install) as ``has_data_files``."""

    def has_data(self):
        return self.has_data_files()


setup(ext_modules=_extensions(), data_files=[(_site_packages(), ["pyskim-caffe-alias.pth"])],
      distclass=Distribution)
