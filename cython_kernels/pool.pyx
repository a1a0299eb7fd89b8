# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""pyskim's one thread pool (``pool_impl.h``): its size, and the capsule through which every other
kernel module runs its parallel work on it (``pool_client.pxi``).

Call :func:`pyskim.set_num_threads` rather than these: it validates its argument.
"""

from cpython.pycapsule cimport PyCapsule_New


cdef extern from "pool_impl.h" nogil:
    ctypedef struct pk_pool_api_t:
        int version
    const pk_pool_api_t pk_pool_api
    int pk_threads()
    void pk_set_threads(int n)


C_API = PyCapsule_New(<void*>&pk_pool_api, b"pyskim._kernels.pool.C_API", NULL)


def set_threads(int n):
    """Use ``n`` threads (the caller's included) for pyskim's parallel kernels."""
    pk_set_threads(n)


def get_threads():
    """The pool's thread count."""
    return pk_threads()
