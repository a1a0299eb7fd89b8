# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Caffe's level-1 float32 updates (``caffe_cpu_axpby``, ``caffe_axpy``) and its ReLU with slope 0, in one
pass over the arrays, on pyskim's thread pool, in runs of 16,384 elements.

``y = alpha*x + beta*y`` rounds each product to float32, then their sum (no fused multiply-add, as
NumPy's ``multiply`` / ``add`` sequence the solvers used and Caffe's reference); a zero ``alpha`` or
``beta`` drops its term, as BLAS ``saxpby`` does (so 0*inf never turns into NaN). Call it through
:func:`pyskim.kernels.dense.axpby`, which validates the arrays.

``relu`` is Caffe's ``max(x, 0) + 0 * min(x, 0)``: ``max(x, 0)``, except that NaN stays NaN and -inf
becomes NaN (0 * -inf), and -0.0 becomes +0.0 (through :func:`pyskim.kernels.dense.relu`).
"""

from libc.stdint cimport int64_t

include "pool_client.pxi"


cdef extern from *:
    """
    /* products and sum rounded separately: never contracted into a fused multiply-add */
    __attribute__((optimize("fp-contract=off")))
    static void pyskim_axpby_run(const float *x, float *y, int64_t n, float alpha, float beta) {
        if (beta == 0.0f) {
            for (int64_t i = 0; i < n; ++i) y[i] = alpha * x[i];
        } else if (alpha == 0.0f) {
            for (int64_t i = 0; i < n; ++i) y[i] = beta * y[i];
        } else if (beta == 1.0f) {
            for (int64_t i = 0; i < n; ++i) y[i] = y[i] + alpha * x[i];
        } else {
            for (int64_t i = 0; i < n; ++i) {
                const float a = alpha * x[i], b = beta * y[i];
                y[i] = b + a;
            }
        }
    }
    """
    void pyskim_axpby_run(const float* x, float* y, int64_t n, float alpha, float beta) noexcept nogil


cdef extern from *:
    """
    #include <math.h>
    /* Caffe's ReLU, negative_slope 0: max(x, 0) + 0 * min(x, 0) */
    static void pyskim_relu_run(const float *x, float *y, int64_t n) {
        for (int64_t i = 0; i < n; ++i) {
            const float v = x[i];
            y[i] = v > 0.0f ? v : (v != v ? v : (v == -INFINITY ? NAN : 0.0f));
        }
    }
    """
    void pyskim_relu_run(const float* x, float* y, int64_t n) noexcept nogil


cdef enum:
    RUN = 16384


cdef struct Axpby:
    const float* x
    float* y
    int64_t n
    float alpha, beta


cdef void _axpby_task(void* ctx, int64_t task, int worker) noexcept nogil:
    cdef Axpby* a = <Axpby*>ctx
    cdef int64_t start = task * RUN
    cdef int64_t n = a.n - start if a.n - start < RUN else RUN
    pyskim_axpby_run(a.x + start, a.y + start, n, a.alpha, a.beta)


def axpby(float alpha, const float[::1] x, float beta, float[::1] y, int num_threads=1):
    """y = alpha*x + beta*y (float32, in place)."""
    if x.shape[0] != y.shape[0]:
        raise ValueError("axpby: x and y differ in length")
    if y.shape[0] == 0:
        return
    cdef Axpby a
    a.x, a.y, a.n, a.alpha, a.beta = &x[0], &y[0], y.shape[0], alpha, beta
    with nogil:
        pk_parallel_for((a.n + RUN - 1) // RUN, _axpby_task, &a, num_threads)


cdef struct Relu:
    const float* x
    float* y
    int64_t n


cdef void _relu_task(void* ctx, int64_t task, int worker) noexcept nogil:
    cdef Relu* r = <Relu*>ctx
    cdef int64_t start = task * RUN
    cdef int64_t n = r.n - start if r.n - start < RUN else RUN
    pyskim_relu_run(r.x + start, r.y + start, n)


def relu(const float[::1] x, float[::1] y, int num_threads=1):
    """y = Caffe's ReLU of x (negative_slope 0); y may be x (in place)."""
    if x.shape[0] != y.shape[0]:
        raise ValueError("relu: x and y differ in length")
    if y.shape[0] == 0:
        return
    cdef Relu r
    r.x, r.y, r.n = &x[0], &y[0], y.shape[0]
    with nogil:
        pk_parallel_for((r.n + RUN - 1) // RUN, _relu_task, &r, num_threads)
