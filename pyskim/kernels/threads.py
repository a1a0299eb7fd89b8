"""The size of pyskim's thread pool: one pool of worker threads, owned by pyskim, runs every
parallel kernel (convolutions, products, pooling, LRN, sparse kernels). No BLAS library and no
OpenMP runtime is involved, so the pool does not depend on import order or on the environment, and
setting it changes no other library's threads.

The default is ``OMP_NUM_THREADS`` when the process starts with it set to a positive integer (its
first entry, as OpenMP reads a list), else the number of CPUs this process may run on. The ``pyskim``
command's ``-threads`` and the tools' ``--threads`` call :func:`set_num_threads`.
"""
import contextlib
import os

from .._kernels import pool as _pool
from .validate import positive_int

__all__ = ["default_num_threads", "get_num_threads", "set_num_threads", "using_threads"]

#: The most threads the pool takes.
MAX_THREADS = 512


def default_num_threads(environ=None):
    """The pool size a process starts with: ``OMP_NUM_THREADS`` (first entry) if it is a positive
    integer, else the CPUs in this process's affinity mask."""
    environ = os.environ if environ is None else environ
    first = environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if first.isdigit() and int(first) > 0:
        return min(int(first), MAX_THREADS)
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_THREADS))


def set_num_threads(n):
    """Use ``n`` threads (the calling thread included) in pyskim's kernels; 1 runs them on the
    calling thread only."""
    _pool.set_threads(positive_int("set_num_threads", "n", n, maximum=MAX_THREADS))


def get_num_threads():
    """The threads pyskim's kernels use (see :func:`set_num_threads`)."""
    return _pool.get_threads()


@contextlib.contextmanager
def using_threads(n):
    """``with using_threads(n):`` the block's kernels use ``n`` threads (None or 0: as set now); the
    count before it is restored after it, whatever happens inside."""
    previous = get_num_threads()
    if n:
        set_num_threads(n)
    try:
        yield
    finally:
        set_num_threads(previous)


set_num_threads(default_num_threads())
