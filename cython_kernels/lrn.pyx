# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Local response normalisation across channels and within a channel, forward and backward (Caffe's CPU).

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

WITHIN_CHANNEL (Caffe builds it from Power, AVE Pooling, Power and Eltwise layers): the forward is
one pass per plane that writes the pooled squares and the power (the backward reads both) beside
the top, the planes in tasks of the pool; the backward is two elementwise steps around the caller's
AVE pooling backward.
"""

import numpy as np

from libc.stdint cimport int64_t
from libc.stdlib cimport calloc, free

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


# -- WITHIN_CHANNEL: Caffe's internal chain Power -> AVE Pooling -> Power -> Eltwise PROD ----------------

cdef extern from *:
    """
    #include <math.h>
    /* One (H, W) plane of WITHIN_CHANNEL LRN forward, each float32 step rounded as Caffe's chain rounds
     * it (never a fused multiply-add):
     *   pooled = (sum of x*x over the size x size window) / (size*size)   (Caffe's AVE pooling, pad
     *            (size-1)/2, stride 1: no window reaches past the padded image, so the divisor is
     *            size*size everywhere; the sum runs from 0 over the window's rows, each left to right)
     *   power  = (pooled * alpha + 1) ** nbeta   (PowerLayer: the product skipped when alpha is 1)
     *   top    = x * power
     * The squares go into the interior of sq, a zero-bordered scratch plane of scratch_rows x
     * scratch_width floats whose border is never written (a tap in the padding adds +0, which leaves
     * Caffe's sum of non-negative squares unchanged, as its clipped loop skipping the tap). Then a
     * register's width of outputs of a row at a time (16 with AVX-512, 8 with AVX, 4 otherwise) sum
     * their taps in one vector register (GCC's vector extension; the lanes past the row end are
     * computed and dropped). ** is powf, except for nbeta = -0.75:
     * r * sqrtf(r), r = 1 / sqrtf(.), as the ACROSS_CHANNELS kernels (within ~3 ulp of powf). */
    #if defined(__AVX512F__)
    #define PYSKIM_LRN_LANES 16
    #elif defined(__AVX__)
    #define PYSKIM_LRN_LANES 8      /* a register's width: wider vectors of GCC's extension live on the stack */
    #else
    #define PYSKIM_LRN_LANES 4
    #endif
    typedef float pyskim_lrn_lanes __attribute__((vector_size(PYSKIM_LRN_LANES * sizeof(float))));
    static inline int64_t pyskim_lrn_scratch_width(int W, int size) {
        return ((int64_t)W + PYSKIM_LRN_LANES - 1) / PYSKIM_LRN_LANES * PYSKIM_LRN_LANES + size - 1;
    }
    static inline int64_t pyskim_lrn_scratch_rows(int H, int size) { return (int64_t)H + size - 1; }
    __attribute__((optimize("fp-contract=off")))
    static void pyskim_lrn_within_plane(const float *__restrict x, float *__restrict sq,
                                        float *__restrict pooled, float *__restrict power,
                                        float *__restrict top, int H, int W, int size, float alpha,
                                        float nbeta) {
        const int pad = (size - 1) / 2;
        const int64_t SW = pyskim_lrn_scratch_width(W, size);
        const float divisor = (float)(size * size);
        for (int h = 0; h < H; ++h) {
            const float *__restrict xr = x + (int64_t)h * W;
            float *__restrict sr = sq + (h + pad) * SW + pad;
            for (int w = 0; w < W; ++w) sr[w] = xr[w] * xr[w];
        }
        for (int h = 0; h < H; ++h) {
            for (int w0 = 0; w0 < W; w0 += PYSKIM_LRN_LANES) {
                pyskim_lrn_lanes acc = {0.0f}, tap;
                for (int i = 0; i < size; ++i) {
                    const float *sr = sq + (h + i) * SW + w0;
                    for (int j = 0; j < size; ++j) {
                        __builtin_memcpy(&tap, sr + j, sizeof tap);
                        acc = acc + tap;
                    }
                }
                acc = acc / divisor;
                float p[PYSKIM_LRN_LANES], q[PYSKIM_LRN_LANES];
                __builtin_memcpy(p, &acc, sizeof p);
                if (nbeta == -0.75f) {
                    for (int l = 0; l < PYSKIM_LRN_LANES; ++l) {
                        const float r = 1.0f / sqrtf((alpha != 1.0f ? p[l] * alpha : p[l]) + 1.0f);
                        q[l] = r * sqrtf(r);
                    }
                } else {
                    for (int l = 0; l < PYSKIM_LRN_LANES; ++l)
                        q[l] = powf((alpha != 1.0f ? p[l] * alpha : p[l]) + 1.0f, nbeta);
                }
                const int64_t o = (int64_t)h * W + w0;
                if (W - w0 >= PYSKIM_LRN_LANES) {
                    for (int l = 0; l < PYSKIM_LRN_LANES; ++l) {
                        pooled[o + l] = p[l];
                        power[o + l] = q[l];
                        top[o + l] = x[o + l] * q[l];
                    }
                } else {
                    for (int l = 0; l < W - w0; ++l) {
                        pooled[o + l] = p[l];
                        power[o + l] = q[l];
                        top[o + l] = x[o + l] * q[l];
                    }
                }
            }
        }
    }
    /* The elementwise steps of WITHIN_CHANNEL LRN backward around the AVE pooling backward, Caffe's
     * float32 steps each rounded, on elements [i0, i1) (p: power, d: pooled, g: top_diff):
     *   step 0 (before pooling): out = (x * g) * ((p / (d * alpha + 1)) * ds)
     *   step 1 (after pooling):  out = p * g + e * (2 * x)    (e: the pooled diff)
     * (ds = nbeta * alpha, Caffe's PowerLayer diff_scale; a factor equal to 1 is skipped, as Caffe's
     * PowerLayer skips it.) */
    __attribute__((optimize("fp-contract=off")))
    static void pyskim_lrn_within_back_run(int step, int64_t i0, int64_t i1, const float *x,
                                           const float *g, const float *p, const float *d, float *out,
                                           float alpha, float ds) {
        for (int64_t i = i0; i < i1; ++i) {
            if (step == 0) {
                float q = alpha != 1.0f ? d[i] * alpha : d[i];
                q = q + 1.0f;
                q = p[i] / q;
                if (ds != 1.0f) q = q * ds;
                out[i] = (x[i] * g[i]) * q;
            } else {
                out[i] = p[i] * g[i] + d[i] * (2.0f * x[i]);
            }
        }
    }
    """
    int64_t pyskim_lrn_scratch_width(int W, int size) noexcept nogil
    int64_t pyskim_lrn_scratch_rows(int H, int size) noexcept nogil
    void pyskim_lrn_within_plane(const float* x, float* sq, float* pooled, float* power, float* top, int H,
                                 int W, int size, float alpha, float nbeta) noexcept nogil
    void pyskim_lrn_within_back_run(int step, int64_t i0, int64_t i1, const float* x, const float* g,
                                    const float* p, const float* d, float* out, float alpha,
                                    float ds) noexcept nogil


cdef struct WithinForwardJob:
    const float* x
    float* pooled
    float* power
    float* top
    float* squares          # one zero-bordered scratch plane of ``square_plane`` floats per worker
    Py_ssize_t planes, chunk, plane, square_plane
    int H, W, size
    float alpha, nbeta


cdef void _within_forward_task(void* ctx, int64_t t, int worker) noexcept nogil:
    """Planes ``[t*chunk, (t+1)*chunk)`` of :func:`within_forward`, on the worker's scratch plane."""
    cdef const WithinForwardJob* j = <const WithinForwardJob*>ctx
    cdef Py_ssize_t p, o
    cdef Py_ssize_t end = (t + 1) * j.chunk if (t + 1) * j.chunk < j.planes else j.planes
    cdef float* sq = j.squares + worker * j.square_plane
    for p in range(t * j.chunk, end):
        o = p * j.plane
        pyskim_lrn_within_plane(j.x + o, sq, j.pooled + o, j.power + o, j.top + o, j.H, j.W, j.size, j.alpha,
                                j.nbeta)


def within_forward(const float[:, :, :, ::1] x, int size, float alpha, float nbeta,
                   float[:, :, :, ::1] pooled, float[:, :, :, ::1] power, float[:, :, :, ::1] top,
                   int num_threads=1):
    """WITHIN_CHANNEL LRN forward of ``x`` (N, C, H, W), one pass per plane (see
    ``pyskim_lrn_within_plane``): writes ``pooled``, ``power`` (kept for the backward) and ``top``,
    the planes in tasks of pyskim's thread pool. ``size`` is odd; ``nbeta`` is ``-beta``."""
    if size <= 0 or size % 2 == 0:
        raise ValueError("size must be positive and odd")
    _check_same(x.shape, pooled.shape)
    _check_same(x.shape, power.shape)
    _check_same(x.shape, top.shape)
    cdef WithinForwardJob j
    j.planes, j.plane = x.shape[0] * x.shape[1], x.shape[2] * x.shape[3]
    if j.planes == 0 or j.plane == 0:
        return
    if num_threads < 1:
        num_threads = 1
    j.x, j.pooled, j.power, j.top = &x[0, 0, 0, 0], &pooled[0, 0, 0, 0], &power[0, 0, 0, 0], &top[0, 0, 0, 0]
    j.H, j.W, j.size, j.alpha, j.nbeta = x.shape[2], x.shape[3], size, alpha, nbeta
    j.chunk = pk_task_chunk(j.planes, num_threads)
    j.square_plane = pyskim_lrn_scratch_rows(j.H, size) * pyskim_lrn_scratch_width(j.W, size)
    # one scratch plane per worker (the pool's worker ids are below num_threads), zero once: the
    # planes write only its interior
    j.squares = <float*>calloc(<size_t>num_threads * j.square_plane, sizeof(float))
    if j.squares == NULL:
        raise MemoryError("LRN within_forward: no memory for the scratch planes")
    try:
        with nogil:
            pk_parallel_for((j.planes + j.chunk - 1) // j.chunk, _within_forward_task, &j, num_threads)
    finally:
        free(j.squares)


cdef struct WithinBackJob:
    int step
    int64_t n
    const float* x
    const float* g
    const float* p
    const float* d
    float* out
    float alpha, ds


cdef enum:
    _WITHIN_RUN = 16384


cdef void _within_back_task(void* ctx, int64_t t, int worker) noexcept nogil:
    cdef const WithinBackJob* j = <const WithinBackJob*>ctx
    cdef int64_t i0 = t * _WITHIN_RUN
    cdef int64_t i1 = i0 + _WITHIN_RUN if i0 + _WITHIN_RUN < j.n else j.n
    pyskim_lrn_within_back_run(j.step, i0, i1, j.x, j.g, j.p, j.d, j.out, j.alpha, j.ds)


def within_backward_step(int step, const float[::1] x, const float[::1] top_diff, const float[::1] power,
                         const float[::1] d, float[::1] out, float alpha, float nbeta, int num_threads=1):
    """One elementwise step of WITHIN_CHANNEL LRN backward (see ``pyskim_lrn_within_back_run``) over flat
    float32 arrays of one length; ``d`` is ``pooled`` (step 0) or the pooled diff (step 1)."""
    cdef Py_ssize_t n = x.shape[0]
    if top_diff.shape[0] != n or power.shape[0] != n or d.shape[0] != n or out.shape[0] != n \
            or not 0 <= step <= 1:
        raise ValueError("within_backward_step: arrays differ in length (or bad step)")
    if n == 0:
        return
    cdef WithinBackJob j
    j.step, j.n, j.x, j.g, j.p, j.d, j.out = step, n, &x[0], &top_diff[0], &power[0], &d[0], &out[0]
    j.alpha, j.ds = alpha, nbeta * alpha
    with nogil:
        pk_parallel_for((n + _WITHIN_RUN - 1) // _WITHIN_RUN, _within_back_task, &j, num_threads)
