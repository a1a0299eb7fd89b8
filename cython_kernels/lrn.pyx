# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Local response normalisation across channels, forward and backward (Caffe's CPU code).

Arrays are (N, C, H, W) float32. Caffe walks the channels with a running window sum built from
``axpy`` calls; these kernels perform the same float32 operations in the same order for every
pixel, so they reproduce Caffe's ``CrossChannelForward_cpu`` / ``CrossChannelBackward_cpu`` up
to FMA contraction and the power function: ``scale**-beta`` is ``powf``, except for
``beta == 0.75`` (CaffeNet, GoogLeNet) where it is ``r*sqrtf(r)``, ``r = 1/sqrtf(scale)``
(vectorisable, at most ~3 ulp from the exact value, deterministic across machines).
Work is split over (image, block of ``_BLOCK`` pixels), one task of pyskim's thread pool each;
the channel walk inside a block is sequential, with the pixel loop innermost (contiguous,
``restrict``-qualified C helpers so that it vectorises). The constants ``alpha_over_size`` and
``cache_ratio`` are computed by the caller exactly as Caffe computes them. Call them through
:mod:`pyskim.kernels`; these functions re-check that all arrays have the same shape.
"""

import numpy as np

from libc.stdint cimport int64_t

include "pool_client.pxi"


cdef extern from *:
    """
    #include <math.h>
    /* s = s + a * (x*x)   (Caffe: sqr, then axpy) */
    static inline void pyskim_lrn_axpy_sq(float *__restrict s, const float *__restrict x,
                                          float a, int n) {
        for (int i = 0; i < n; ++i) { float v = x[i] * x[i]; s[i] = s[i] + a * v; }
    }
    /* s = (sp + a*head^2) + (-a)*tail^2   (Caffe: copy, axpy head, axpy tail); head/tail may
       be NULL for a zero term of the channel padding. */
    static inline void pyskim_lrn_step(float *__restrict s, const float *__restrict sp,
                                       const float *__restrict h, const float *__restrict t,
                                       float a, int n) {
        float na = -a;
        if (h && t) {
            for (int i = 0; i < n; ++i) {
                float vh = h[i] * h[i], vt = t[i] * t[i];
                float u = sp[i] + a * vh;
                s[i] = u + na * vt;
            }
        } else if (h) {
            for (int i = 0; i < n; ++i) { float vh = h[i] * h[i]; s[i] = sp[i] + a * vh; }
        } else if (t) {
            for (int i = 0; i < n; ++i) { float vt = t[i] * t[i]; s[i] = sp[i] + na * vt; }
        } else {
            for (int i = 0; i < n; ++i) s[i] = sp[i];
        }
    }
    /* y = s**nbeta * m  (Caffe: powx, then mul) */
    static inline void pyskim_lrn_pow_mul(float *__restrict y, const float *__restrict s,
                                          const float *__restrict m, float nbeta, int n) {
        if (nbeta == -0.75f) {
            for (int i = 0; i < n; ++i) {
                float r = 1.0f / sqrtf(s[i]);
                y[i] = (r * sqrtf(r)) * m[i];
            }
        } else {
            for (int i = 0; i < n; ++i) y[i] = powf(s[i], nbeta) * m[i];
        }
    }
    /* acc = acc + sign * ((g*y)/s)   (Caffe: mul, div, axpy with +-1) */
    static inline void pyskim_lrn_ratio(float *__restrict acc, const float *__restrict g,
                                        const float *__restrict y, const float *__restrict s,
                                        int sub, int n) {
        if (sub) {
            for (int i = 0; i < n; ++i) { float r = (g[i] * y[i]) / s[i]; acc[i] = acc[i] - r; }
        } else {
            for (int i = 0; i < n; ++i) { float r = (g[i] * y[i]) / s[i]; acc[i] = acc[i] + r; }
        }
    }
    /* d = d + ncr * (x*acc)   (Caffe: mul, then axpy with -cache_ratio) */
    static inline void pyskim_lrn_diff(float *__restrict d, const float *__restrict x,
                                       const float *__restrict acc, float ncr, int n) {
        for (int i = 0; i < n; ++i) { float v = x[i] * acc[i]; d[i] = d[i] + ncr * v; }
    }
    """
    void pyskim_lrn_axpy_sq(float* s, const float* x, float a, int n) nogil
    void pyskim_lrn_step(float* s, const float* sp, const float* h, const float* t, float a,
                         int n) nogil
    void pyskim_lrn_pow_mul(float* y, const float* s, const float* m, float nbeta, int n) nogil
    void pyskim_lrn_ratio(float* acc, const float* g, const float* y, const float* s, int sub,
                          int n) nogil
    void pyskim_lrn_diff(float* d, const float* x, const float* acc, float ncr, int n) nogil


cdef enum:
    _BLOCK = 256


cdef _check_same(Py_ssize_t* a, Py_ssize_t* b):
    cdef int i
    for i in range(4):
        if a[i] != b[i]:
            raise ValueError("LRN arrays must all have the same shape")


cdef inline int _block_length(int HW, int p0) noexcept nogil:
    """Pixels in the block of an image's ``HW`` that starts at ``p0``: ``_BLOCK``, less for the last.
    (Task ``t`` of ``N * nblk`` is image ``t // nblk``, block start ``(t % nblk) * _BLOCK``.)"""
    return HW - p0 if HW - p0 < _BLOCK else _BLOCK


cdef struct ForwardJob:
    const float* bottom
    float* scale
    float* top
    int C, HW, nblk, size, pre_pad
    float alpha_over_size, k, nbeta


cdef struct BackwardJob:
    const float* bottom
    const float* top
    const float* scale
    const float* top_diff
    float* bottom_diff
    float* acc_rows         # one running-sum row of _BLOCK floats per worker
    int C, HW, nblk, size, pre_pad
    float nbeta, ncr


cdef void _forward_task(void* ctx, int64_t t, int worker) noexcept nogil:
    """Block ``t`` of :func:`across_forward`; channel ``c`` of its pixels is at ``o + c*HW``."""
    cdef const ForwardJob* j = <const ForwardJob*>ctx
    cdef int C = j.C, size = j.size, pre_pad = j.pre_pad
    cdef Py_ssize_t HW = j.HW
    cdef int p0 = (t % j.nblk) * _BLOCK
    cdef int m = _block_length(j.HW, p0)
    cdef Py_ssize_t o = (t // j.nblk) * C * HW + p0
    cdef int p, c, cc
    cdef const float* head
    cdef const float* tail
    # channel 0: k plus the window terms in padded-channel order
    cdef float* s = j.scale + o
    for p in range(m):
        s[p] = j.k
    for cc in range(size):
        c = cc - pre_pad
        if c >= 0 and c < C:
            pyskim_lrn_axpy_sq(s, j.bottom + o + c * HW, j.alpha_over_size, m)
    # the running window: copy previous, add head, subtract tail
    for c in range(1, C):
        cc = c + size - 1 - pre_pad
        head = j.bottom + o + cc * HW if cc < C else NULL
        cc = c - 1 - pre_pad
        tail = j.bottom + o + cc * HW if cc >= 0 else NULL
        pyskim_lrn_step(j.scale + o + c * HW, j.scale + o + (c - 1) * HW, head, tail, j.alpha_over_size, m)
    for c in range(C):
        pyskim_lrn_pow_mul(j.top + o + c * HW, j.scale + o + c * HW, j.bottom + o + c * HW, j.nbeta, m)


cdef void _backward_task(void* ctx, int64_t t, int worker) noexcept nogil:
    """Block ``t`` of :func:`across_backward`, its running sum in the worker's row of ``acc_rows``."""
    cdef const BackwardJob* j = <const BackwardJob*>ctx
    cdef int C = j.C, size = j.size, pre_pad = j.pre_pad
    cdef Py_ssize_t HW = j.HW
    cdef int p0 = (t % j.nblk) * _BLOCK
    cdef int m = _block_length(j.HW, p0)
    cdef Py_ssize_t o = (t // j.nblk) * C * HW + p0
    cdef float* acc = j.acc_rows + <Py_ssize_t>worker * _BLOCK
    cdef int p, c, cc
    for c in range(C):
        pyskim_lrn_pow_mul(j.bottom_diff + o + c * HW, j.scale + o + c * HW, j.top_diff + o + c * HW,
                           j.nbeta, m)
    for p in range(m):
        acc[p] = 0
    for cc in range(size - 1):
        c = cc - pre_pad
        if c >= 0 and c < C:
            pyskim_lrn_ratio(acc, j.top_diff + o + c * HW, j.top + o + c * HW, j.scale + o + c * HW, 0, m)
    for c in range(C):
        cc = c + size - 1 - pre_pad
        if cc < C:
            pyskim_lrn_ratio(acc, j.top_diff + o + cc * HW, j.top + o + cc * HW, j.scale + o + cc * HW, 0,
                             m)
        pyskim_lrn_diff(j.bottom_diff + o + c * HW, j.bottom + o + c * HW, acc, j.ncr, m)
        cc = c - pre_pad
        if cc >= 0:
            pyskim_lrn_ratio(acc, j.top_diff + o + cc * HW, j.top + o + cc * HW, j.scale + o + cc * HW, 1,
                             m)


def across_forward(const float[:, :, :, ::1] bottom, int size, float alpha_over_size,
                   float beta, float k, float[:, :, :, ::1] scale, float[:, :, :, ::1] top,
                   int num_threads=1):
    """``scale = k + alpha/size * (sum of squares over the channel window)``, ``top =
    bottom * scale**-beta``.

    The window of channel ``c`` is ``[c - pre_pad, c + size - 1 - pre_pad]`` with
    ``pre_pad = (size - 1) // 2``. Like Caffe: ``scale[0]`` adds the ``size`` window terms one
    by one to ``k``; ``scale[c] = scale[c-1] + a*head - a*tail`` (zero terms from the channel
    padding are skipped, which does not change any value).
    """
    if size <= 0:
        raise ValueError("size must be positive")
    _check_same(bottom.shape, scale.shape)
    _check_same(bottom.shape, top.shape)
    cdef int N = bottom.shape[0]
    cdef ForwardJob j
    j.bottom, j.scale, j.top = &bottom[0, 0, 0, 0], &scale[0, 0, 0, 0], &top[0, 0, 0, 0]
    j.C, j.HW, j.size, j.pre_pad = bottom.shape[1], bottom.shape[2] * bottom.shape[3], size, (size - 1) // 2
    j.nblk = (j.HW + _BLOCK - 1) // _BLOCK
    j.alpha_over_size, j.k, j.nbeta = alpha_over_size, k, -beta
    with nogil:
        pk_parallel_for(<int64_t>N * j.nblk, _forward_task, &j, num_threads)


def across_backward(const float[:, :, :, ::1] bottom, const float[:, :, :, ::1] top,
                    const float[:, :, :, ::1] scale, const float[:, :, :, ::1] top_diff,
                    int size, float beta, float cache_ratio, float[:, :, :, ::1] bottom_diff,
                    int num_threads=1):
    """``bottom_diff = top_diff * scale**-beta - cache_ratio * bottom * sum_window(top_diff *
    top / scale)`` with ``cache_ratio = 2*alpha*beta/size``.

    Like Caffe: the ratio window sum starts with the first ``size - 1`` padded terms, then per
    channel adds the head, updates ``bottom_diff`` and subtracts the tail.
    """
    if size <= 0:
        raise ValueError("size must be positive")
    _check_same(bottom.shape, top.shape)
    _check_same(bottom.shape, scale.shape)
    _check_same(bottom.shape, top_diff.shape)
    _check_same(bottom.shape, bottom_diff.shape)
    if num_threads < 1:
        num_threads = 1
    # one running-sum row per worker (the pool's worker ids are below num_threads)
    cdef float[:, ::1] acc_rows = np.empty((num_threads, _BLOCK), dtype=np.float32)
    cdef int N = bottom.shape[0]
    cdef BackwardJob j
    j.bottom, j.top, j.scale = &bottom[0, 0, 0, 0], &top[0, 0, 0, 0], &scale[0, 0, 0, 0]
    j.top_diff, j.bottom_diff, j.acc_rows = &top_diff[0, 0, 0, 0], &bottom_diff[0, 0, 0, 0], &acc_rows[0, 0]
    j.C, j.HW, j.size = bottom.shape[1], bottom.shape[2] * bottom.shape[3], size
    j.pre_pad = size - (size + 1) // 2
    j.nblk = (j.HW + _BLOCK - 1) // _BLOCK
    j.nbeta, j.ncr = -beta, -cache_ratio
    with nogil:
        pk_parallel_for(<int64_t>N * j.nblk, _backward_task, &j, num_threads)


# -- WITHIN_CHANNEL: the elementwise steps around the AVE pooling of Caffe's internal chain -----------

cdef extern from *:
    """
    #include <math.h>
    /* Caffe's float32 steps, each rounded (never a fused multiply-add), on elements [i0, i1):
     *   step 0 (forward, before pooling):  sq = x * x
     *   step 1 (forward, after pooling):   power = powf(pooled * alpha + 1, nbeta); top = x * power
     *   step 2 (backward, before pooling): power_diff = (x * top_diff) * ((power / (pooled * alpha + 1)) * ds)
     *   step 3 (backward, after pooling):  bottom_diff = power * top_diff + pooled_diff * (2 * x)
     * (steps 2 and 3 read power from c and write out2)
     * (ds = nbeta * alpha, Caffe's PowerLayer diff_scale; a factor equal to 1 is skipped, as Caffe's
     * PowerLayer skips it.) */
    __attribute__((optimize("fp-contract=off")))
    static void pyskim_lrn_within_run(int step, int64_t i0, int64_t i1, const float *x, const float *a,
                                      const float *b, const float *c, float *out, float *out2, float alpha,
                                      float nbeta, float ds) {
        for (int64_t i = i0; i < i1; ++i) {
            if (step == 0) {
                out[i] = x[i] * x[i];
            } else if (step == 1) {               /* a: pooled */
                float t = alpha != 1.0f ? a[i] * alpha : a[i];
                const float p = powf(t + 1.0f, nbeta);
                out[i] = p;
                out2[i] = x[i] * p;
            } else if (step == 2) {               /* a: top_diff, b: pooled */
                float d = alpha != 1.0f ? b[i] * alpha : b[i];
                d = d + 1.0f;
                d = c[i] / d;
                if (ds != 1.0f) d = d * ds;
                out2[i] = (x[i] * a[i]) * d;
            } else {                              /* a: top_diff, b: pooled diff */
                out2[i] = c[i] * a[i] + b[i] * (2.0f * x[i]);
            }
        }
    }
    """
    void pyskim_lrn_within_run(int step, int64_t i0, int64_t i1, const float* x, const float* a, const float* b,
                               const float* c, float* out, float* out2, float alpha, float nbeta,
                               float ds) noexcept nogil


cdef struct WithinJob:
    int step
    int64_t n
    const float* x
    const float* a
    const float* b
    const float* c
    float* out
    float* out2
    float alpha, nbeta, ds


cdef void _within_task(void* ctx, int64_t t, int worker) noexcept nogil:
    cdef const WithinJob* j = <const WithinJob*>ctx
    cdef int64_t i0 = t * _WITHIN_RUN
    cdef int64_t i1 = i0 + _WITHIN_RUN if i0 + _WITHIN_RUN < j.n else j.n
    pyskim_lrn_within_run(j.step, i0, i1, j.x, j.a, j.b, j.c, j.out, j.out2, j.alpha, j.nbeta, j.ds)


cdef enum:
    _WITHIN_RUN = 16384


def within_step(int step, const float[::1] x, a, b, c, out, out2, float alpha, float nbeta, int num_threads=1):
    """One elementwise step of WITHIN_CHANNEL LRN (see ``pyskim_lrn_within_run``) over flat float32
    arrays of one length: inputs ``x``, ``a``, ``b``, ``c``, outputs ``out``, ``out2``; any the step
    does not use may be None."""
    cdef Py_ssize_t n = x.shape[0]
    cdef const float[::1] av = a if a is not None else x
    cdef const float[::1] bv = b if b is not None else x
    cdef const float[::1] cv = c if c is not None else x
    cdef float[::1] o1, o2
    if out is not None:
        o1 = out
    if out2 is not None:
        o2 = out2
    if out is None and out2 is None:
        raise ValueError("within_step: no output")
    if out is None:
        o1 = o2
    if out2 is None:
        o2 = o1
    if av.shape[0] != n or bv.shape[0] != n or cv.shape[0] != n or o1.shape[0] != n or o2.shape[0] != n \
            or not 0 <= step <= 3:
        raise ValueError("within_step: arrays differ in length (or bad step)")
    if n == 0:
        return
    cdef WithinJob j
    j.step, j.n, j.x, j.a, j.b, j.c, j.out, j.out2 = step, n, &x[0], &av[0], &bv[0], &cv[0], &o1[0], &o2[0]
    j.alpha, j.nbeta, j.ds = alpha, nbeta, nbeta * alpha
    with nogil:
        pk_parallel_for((n + _WITHIN_RUN - 1) // _WITHIN_RUN, _within_task, &j, num_threads)
