# Included by every kernel module that runs work in parallel (not a module of its own): binds the
# module to pyskim's one thread pool (pool.pyx) and declares pk_parallel_for, see pool_api.h.

from libc.stdint cimport int64_t
from cpython.pycapsule cimport PyCapsule_GetPointer

from pyskim._kernels import pool as _pool_module


cdef extern from "pool_api.h" nogil:
    ctypedef void (*pk_task_fn)(void *ctx, int64_t task, int worker) noexcept nogil
    ctypedef struct pk_pool_api_t:
        int version
    void pk_pool_bind(const pk_pool_api_t *api)
    int pk_max_workers()
    int64_t pk_task_chunk(int64_t n, int threads)
    void pk_parallel_for(int64_t ntasks, pk_task_fn fn, void *ctx, int max_workers)


pk_pool_bind(<const pk_pool_api_t*>PyCapsule_GetPointer(_pool_module.C_API, b"pyskim._kernels.pool.C_API"))
