# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""MAX and AVE pooling, forward and backward, with Caffe's ``PoolingLayer`` CPU semantics.

Arrays are (N, C, H, W) / (N, C, PH, PW) float32; the output size is chosen by the caller.
Every plane ``(n, c)`` is independent, so each kernel checks the geometry once and runs its
plane function over the ``N*C`` planes on pyskim's thread pool, in tasks of contiguous planes.
Windows are clipped to the image (:func:`_window`, shared by all four; ``maxpool_impl.h`` clips
rows the same way), so any positive output size is memory-safe. MAX forward with a horizontal stride
of 1 or 2 and rows of at least 8 outputs runs 16 (AVX-512) or 8 (AVX2) outputs of a row at a time
from row loads (``maxpool_impl.h``), Caffe's loop where a window starts left of the image. In AVX-512
builds the other MAX forwards and AVE forward / backward run 16 outputs (AVE backward: 16 input
pixels) at a time from window tables built once per call for all planes (:func:`_window_table`),
their taps gathered. Every vector path gives Caffe's results bit for bit: per output, Caffe's
comparisons or sums in Caffe's order.
Call them through :mod:`pyskim.kernels`, which validates and converts arguments; these
functions still re-check shapes and geometry, so they cannot index out of bounds.
"""

from libc.float cimport FLT_MAX
from libc.stdint cimport int64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memset

include "pool_client.pxi"


cdef struct PoolGeometry:
    Py_ssize_t planes       # N*C independent planes
    Py_ssize_t in_plane     # H*W floats per bottom plane
    Py_ssize_t out_plane    # PH*PW values per top plane
    int H, W, PH, PW, kh, kw, pad_h, pad_w, stride_h, stride_w


cdef struct WindowTable:
    # per output: its clipped window (corner h*W + w, rows, columns) and Caffe's pool_size
    int* start
    int* hlen
    int* wlen
    float* size
    # per input pixel: the outputs whose clipped windows cover it (rows ph0 .. ph0 + nph - 1, likewise
    # columns), and the most of either over the plane
    int* ph0
    int* nph
    int* pw0
    int* npw
    int max_h, max_w


cdef struct PoolJob:
    PoolGeometry g
    const float* src        # bottom (forward) or top diff (backward)
    float* dst              # top (forward) or bottom diff (backward)
    int* mask               # MAX only: written forward, read backward
    Py_ssize_t chunk        # planes per task
    WindowTable* windows    # with AVX-512: the window tables (else NULL)


cdef PoolGeometry _geometry(Py_ssize_t* bottom_shape, Py_ssize_t* top_shape, int kh, int kw, int pad_h,
                           int pad_w, int stride_h, int stride_w) except *:
    """The checked geometry of pooling bottom (N, C, H, W) into top (N, C, PH, PW)."""
    if kh <= 0 or kw <= 0 or stride_h <= 0 or stride_w <= 0 or pad_h < 0 or pad_w < 0:
        raise ValueError("kernel and stride must be positive and pad non-negative")
    if bottom_shape[0] != top_shape[0] or bottom_shape[1] != top_shape[1]:
        raise ValueError("bottom and top differ in N or C")
    return PoolGeometry(planes=bottom_shape[0] * bottom_shape[1],
                        in_plane=bottom_shape[2] * bottom_shape[3], out_plane=top_shape[2] * top_shape[3],
                        H=bottom_shape[2], W=bottom_shape[3], PH=top_shape[2], PW=top_shape[3],
                        kh=kh, kw=kw, pad_h=pad_h, pad_w=pad_w, stride_h=stride_h, stride_w=stride_w)


cdef _check_mask(Py_ssize_t* mask_shape, Py_ssize_t* top_shape):
    cdef int i
    for i in range(4):
        if mask_shape[i] != top_shape[i]:
            raise ValueError("mask and top shapes differ")


cdef inline int _window(int o, int stride, int pad, int kernel, int size, int* start,
                        int* end) noexcept nogil:
    """Caffe's window of output ``o`` along one axis: ``[o*stride - pad, +kernel)`` clipped to the
    image, into ``[start, end)``. Returns its length clipped to the *padded* image only,
    ``min(o*stride - pad + kernel, size + pad) - (o*stride - pad)``: Caffe's AVE ``pool_size``
    factor, which counts the padding as zeros."""
    cdef int s = o * stride - pad
    cdef int e = s + kernel
    if e > size + pad:
        e = size + pad
    cdef int padded_length = e - s
    if s < 0:
        s = 0
    if e > size:
        e = size
    start[0] = s
    end[0] = e
    return padded_length


cdef extern from *:
    """
    #if defined(__AVX512F__)
    #include <immintrin.h>
    #include <float.h>
    /* MAX forward of outputs [o, o + n) (n <= 16) of one plane: lane l runs Caffe's loop over its
     * clipped window (corner start[o+l], hlen x wlen taps, row-major; from -FLT_MAX and index -1,
     * strict >), the taps gathered. */
    static inline void pyskim_max16(const float *x, int W, int kh, int kw, const int *start, const int *hlen,
                                    const int *wlen, int n, float *top, int *mask) {
        const __mmask16 lanes = (__mmask16)(n >= 16 ? 0xffff : (1u << n) - 1);
        const __m512i s0 = _mm512_maskz_loadu_epi32(lanes, start), hl = _mm512_maskz_loadu_epi32(lanes, hlen),
                      wl = _mm512_maskz_loadu_epi32(lanes, wlen);
        __m512 best = _mm512_set1_ps(-FLT_MAX);
        __m512i best_i = _mm512_set1_epi32(-1);
        for (int i = 0; i < kh; ++i)
            for (int j = 0; j < kw; ++j) {
                const __mmask16 m = _mm512_cmpgt_epi32_mask(hl, _mm512_set1_epi32(i)) &
                                    _mm512_cmpgt_epi32_mask(wl, _mm512_set1_epi32(j));
                const __m512i idx = _mm512_add_epi32(s0, _mm512_set1_epi32(i * W + j));
                const __m512 v = _mm512_mask_i32gather_ps(best, m, idx, x, 4);
                const __mmask16 gt = _mm512_mask_cmp_ps_mask(m, v, best, _CMP_GT_OQ);
                best = _mm512_mask_mov_ps(best, gt, v);
                best_i = _mm512_mask_mov_epi32(best_i, gt, idx);
            }
        _mm512_mask_storeu_ps(top, lanes, best);
        _mm512_mask_storeu_epi32(mask, lanes, best_i);
    }
    /* AVE forward of outputs [o, o + n) (n <= 16) of one plane: lane l sums the taps of its clipped
     * window (corner start[o+l], hlen x wlen taps) in row-major order, then divides by its pool size:
     * Caffe's arithmetic per output, taps gathered (masked-off taps add nothing). */
    static inline void pyskim_ave16(const float *x, int W, int kh, int kw, const int *start, const int *hlen,
                                    const int *wlen, const float *size, int n, float *top) {
        const __mmask16 lanes = (__mmask16)(n >= 16 ? 0xffff : (1u << n) - 1);
        const __m512i s0 = _mm512_maskz_loadu_epi32(lanes, start), hl = _mm512_maskz_loadu_epi32(lanes, hlen),
                      wl = _mm512_maskz_loadu_epi32(lanes, wlen);
        __m512 acc = _mm512_setzero_ps();
        for (int i = 0; i < kh; ++i)
            for (int j = 0; j < kw; ++j) {
                const __mmask16 m = _mm512_cmpgt_epi32_mask(hl, _mm512_set1_epi32(i)) &
                                    _mm512_cmpgt_epi32_mask(wl, _mm512_set1_epi32(j));
                const __m512i idx = _mm512_add_epi32(s0, _mm512_set1_epi32(i * W + j));
                acc = _mm512_add_ps(acc, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, x, 4));
            }
        _mm512_mask_storeu_ps(top, lanes, _mm512_div_ps(acc, _mm512_mask_loadu_ps(_mm512_set1_ps(1.0f), lanes, size)));
    }
    /* AVE backward of pixels [p, p + n) (n <= 16) of one plane: lane l adds top_diff / pool_size of
     * the outputs whose clipped windows cover it, in Caffe's (ph, pw) order, starting from 0. */
    static inline void pyskim_ave_back16(const float *top_diff, const float *size, int PW, int max_h, int max_w,
                                         const int *ph0, const int *nph, const int *pw0, const int *npw, int n,
                                         float *bottom) {
        const __mmask16 lanes = (__mmask16)(n >= 16 ? 0xffff : (1u << n) - 1);
        const __m512i h0 = _mm512_maskz_loadu_epi32(lanes, ph0), hn = _mm512_maskz_loadu_epi32(lanes, nph),
                      w0 = _mm512_maskz_loadu_epi32(lanes, pw0), wn = _mm512_maskz_loadu_epi32(lanes, npw);
        __m512 acc = _mm512_setzero_ps();
        for (int a = 0; a < max_h; ++a)
            for (int b = 0; b < max_w; ++b) {
                const __mmask16 m = _mm512_cmpgt_epi32_mask(hn, _mm512_set1_epi32(a)) &
                                    _mm512_cmpgt_epi32_mask(wn, _mm512_set1_epi32(b));
                const __m512i idx = _mm512_add_epi32(
                    _mm512_mullo_epi32(_mm512_add_epi32(h0, _mm512_set1_epi32(a)), _mm512_set1_epi32(PW)),
                    _mm512_add_epi32(w0, _mm512_set1_epi32(b)));
                const __m512 g = _mm512_div_ps(_mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, top_diff, 4),
                                               _mm512_mask_i32gather_ps(_mm512_set1_ps(1.0f), m, idx, size, 4));
                acc = _mm512_add_ps(acc, g);
            }
        _mm512_mask_storeu_ps(bottom, lanes, acc);
    }
    #define PYSKIM_POOL16 1
    #else
    static inline void pyskim_max16(const float *x, int W, int kh, int kw, const int *start, const int *hlen,
                                    const int *wlen, int n, float *top, int *mask) {}
    static inline void pyskim_ave16(const float *x, int W, int kh, int kw, const int *start, const int *hlen,
                                    const int *wlen, const float *size, int n, float *top) {}
    static inline void pyskim_ave_back16(const float *top_diff, const float *size, int PW, int max_h, int max_w,
                                         const int *ph0, const int *nph, const int *pw0, const int *npw, int n,
                                         float *bottom) {}
    #define PYSKIM_POOL16 0
    #endif
    """
    bint PYSKIM_POOL16
    void pyskim_max16(const float* x, int W, int kh, int kw, const int* start, const int* hlen, const int* wlen,
                      int n, float* top, int* mask) noexcept nogil
    void pyskim_ave16(const float* x, int W, int kh, int kw, const int* start, const int* hlen, const int* wlen,
                      const float* size, int n, float* top) noexcept nogil
    void pyskim_ave_back16(const float* top_diff, const float* size, int PW, int max_h, int max_w, const int* ph0,
                           const int* nph, const int* pw0, const int* npw, int n, float* bottom) noexcept nogil


cdef extern from "maxpool_impl.h" nogil:
    ctypedef struct mp_plane_t:
        const float* x
        float* top
        int* mask
        int H, W, PH, PW, kh, kw, pad_h, pad_w, stride_h, stride_w
    int MP_MAX_K
    int mp_max_plane(const mp_plane_t* p, int pw0)


cdef inline void _max_outputs(const float* x, PoolGeometry g, int ph, int pw0, int pw1, float* top,
                              int* mask) noexcept nogil:
    """Outputs ``(ph, [pw0, pw1))`` of one plane of MAX forward: Caffe's loop (max from ``-FLT_MAX``,
    index ``-1``, strict ``>``)."""
    cdef int pw, hs, he, ws, we, h, w, best_i
    cdef float best
    cdef const float* row
    _window(ph, g.stride_h, g.pad_h, g.kh, g.H, &hs, &he)
    for pw in range(pw0, pw1):
        _window(pw, g.stride_w, g.pad_w, g.kw, g.W, &ws, &we)
        best = -FLT_MAX
        best_i = -1
        for h in range(hs, he):
            row = x + <Py_ssize_t>h * g.W
            for w in range(ws, we):
                if row[w] > best:
                    best = row[w]
                    best_i = h * g.W + w
        top[ph * g.PW + pw] = best
        mask[ph * g.PW + pw] = best_i


cdef inline int _first_row_output(PoolGeometry g) noexcept nogil:
    """The first output of a row from which ``mp_max_plane`` may run (its window starts inside the
    image), ``PW`` for strides it does not take."""
    return min(g.PW, (g.pad_w + g.stride_w - 1) // g.stride_w) if g.stride_w <= 2 else g.PW


cdef inline void _max_forward_plane(const float* x, float* top, int* mask, PoolGeometry g) noexcept nogil:
    """One plane of MAX forward. With ``stride_w`` 1 or 2 the columns of outputs whose windows start
    inside the image go to ``mp_max_plane`` (``maxpool_impl.h``: 16 or 8 outputs of a row at a time in
    vector builds), the others and what it leaves to Caffe's loop (:func:`_max_outputs`); other
    strides all to the loop."""
    cdef int first = _first_row_output(g)
    cdef int ph, done = g.PW
    cdef mp_plane_t plane
    if first < g.PW:
        plane.x, plane.top, plane.mask = x, top, mask
        plane.H, plane.W, plane.PH, plane.PW, plane.kh, plane.kw = g.H, g.W, g.PH, g.PW, g.kh, g.kw
        plane.pad_h, plane.pad_w, plane.stride_h, plane.stride_w = g.pad_h, g.pad_w, g.stride_h, g.stride_w
        done = mp_max_plane(&plane, first)
    for ph in range(g.PH):
        _max_outputs(x, g, ph, 0, first, top, mask)
        _max_outputs(x, g, ph, done, g.PW, top, mask)


cdef inline void _max_forward_plane_gathered(const float* x, float* top, int* mask, PoolGeometry g,
                                             const WindowTable* t) noexcept nogil:
    """One plane of MAX forward (AVX-512: ``stride_w`` > 2, rows of fewer than 8 outputs from the
    first output :func:`_max_forward_plane` would vectorise, or windows wider than ``MP_MAX_K``), 16
    consecutive outputs of the plane at a time, their taps gathered (``pyskim_max16``): the same
    comparisons in the same order as Caffe's loop."""
    cdef int o, n = g.PH * g.PW
    for o in range(0, n, 16):
        pyskim_max16(x, g.W, g.kh, g.kw, t.start + o, t.hlen + o, t.wlen + o, min(16, n - o), top + o,
                     mask + o)


cdef inline void _max_backward_plane(const float* top_diff, const int* mask, float* bottom_diff,
                                     PoolGeometry g) noexcept nogil:
    """One plane of MAX backward: zero it, then add each top diff at its mask index (indices
    outside the plane are skipped)."""
    cdef int i, idx
    cdef int HW = g.H * g.W
    memset(bottom_diff, 0, g.in_plane * sizeof(float))
    for i in range(g.PH * g.PW):
        idx = mask[i]
        if idx >= 0 and idx < HW:
            bottom_diff[idx] += top_diff[i]


cdef inline void _ave_forward_plane(const float* x, float* top, PoolGeometry g) noexcept nogil:
    """One plane of AVE forward: float32 sum over the clipped window in row-major order, divided
    by Caffe's ``pool_size``."""
    cdef int ph, pw, hs, he, ws, we, h, w, pool_h, pool_size
    cdef float acc
    cdef const float* row
    for ph in range(g.PH):
        pool_h = _window(ph, g.stride_h, g.pad_h, g.kh, g.H, &hs, &he)
        for pw in range(g.PW):
            pool_size = pool_h * _window(pw, g.stride_w, g.pad_w, g.kw, g.W, &ws, &we)
            acc = 0
            for h in range(hs, he):
                row = x + <Py_ssize_t>h * g.W
                for w in range(ws, we):
                    acc = acc + row[w]
            top[ph * g.PW + pw] = acc / <float>pool_size


cdef inline void _ave_backward_plane(const float* top_diff, float* bottom_diff,
                                     PoolGeometry g) noexcept nogil:
    """One plane of AVE backward: zero it, then add ``top_diff / pool_size`` over each clipped
    window."""
    cdef int ph, pw, hs, he, ws, we, h, w, pool_h, pool_size
    cdef float grad
    cdef float* row
    memset(bottom_diff, 0, g.in_plane * sizeof(float))
    for ph in range(g.PH):
        pool_h = _window(ph, g.stride_h, g.pad_h, g.kh, g.H, &hs, &he)
        for pw in range(g.PW):
            pool_size = pool_h * _window(pw, g.stride_w, g.pad_w, g.kw, g.W, &ws, &we)
            grad = top_diff[ph * g.PW + pw] / <float>pool_size
            for h in range(hs, he):
                row = bottom_diff + <Py_ssize_t>h * g.W
                for w in range(ws, we):
                    row[w] += grad


cdef inline void _ave_forward_plane16(const float* x, float* top, PoolGeometry g, const WindowTable* t) noexcept nogil:
    """One plane of AVE forward, 16 outputs at a time (``pyskim_ave16``): the same sums and divisions."""
    cdef int o, n = g.PH * g.PW
    for o in range(0, n, 16):
        pyskim_ave16(x, g.W, g.kh, g.kw, t.start + o, t.hlen + o, t.wlen + o, t.size + o, min(16, n - o), top + o)


cdef inline void _ave_backward_plane16(const float* top_diff, float* bottom_diff, PoolGeometry g,
                                       const WindowTable* t) noexcept nogil:
    """One plane of AVE backward, 16 pixels at a time (``pyskim_ave_back16``): each pixel sums its
    outputs' ``top_diff / pool_size`` in Caffe's order, from 0."""
    cdef int p, n = g.H * g.W
    for p in range(0, n, 16):
        pyskim_ave_back16(top_diff, t.size, g.PW, t.max_h, t.max_w, t.ph0 + p, t.nph + p, t.pw0 + p, t.npw + p,
                          min(16, n - p), bottom_diff + p)


cdef int _covering(int size, int n_out, int stride, int pad, int kernel, int* first, int* count) noexcept nogil:
    """For each input index along one axis, the run of outputs whose clipped windows hold it
    (``first``, ``count``); returns the longest run."""
    cdef int i, o, s, e, longest = 0
    for i in range(size):
        first[i] = 0
        count[i] = 0
    for o in range(n_out):
        _window(o, stride, pad, kernel, size, &s, &e)
        for i in range(max(s, 0), min(e, size)):
            if count[i] == 0:
                first[i] = o
            count[i] += 1
    for i in range(size):
        longest = max(longest, count[i])
    return longest


cdef WindowTable* _window_table(PoolGeometry g, bint covering) noexcept nogil:
    """The window tables of this geometry (malloc'd, :func:`_free_window_table`), the per-pixel
    ``covering`` part only when asked (AVE backward); NULL when the build has no 16-lane kernels or
    the memory is not there."""
    if not PYSKIM_POOL16:
        return NULL
    cdef int P = g.PH * g.PW, HW = g.H * g.W, ph, pw, h, w, hs, he, ws, we, pool_h, pool_w
    cdef WindowTable* t = <WindowTable*>calloc(1, sizeof(WindowTable))
    if t == NULL:
        return NULL
    t.start, t.hlen, t.wlen = <int*>malloc(P * sizeof(int)), <int*>malloc(P * sizeof(int)), <int*>malloc(P * sizeof(int))
    t.size = <float*>malloc(P * sizeof(float))
    if not (t.start and t.hlen and t.wlen and t.size):
        _free_window_table(t)
        return NULL
    for ph in range(g.PH):
        pool_h = _window(ph, g.stride_h, g.pad_h, g.kh, g.H, &hs, &he)
        for pw in range(g.PW):
            pool_w = _window(pw, g.stride_w, g.pad_w, g.kw, g.W, &ws, &we)
            t.start[ph * g.PW + pw] = hs * g.W + ws
            t.hlen[ph * g.PW + pw] = he - hs
            t.wlen[ph * g.PW + pw] = we - ws
            t.size[ph * g.PW + pw] = <float>(pool_h * pool_w)
    if not covering:
        return t
    cdef int* rows = <int*>malloc(2 * (g.H + g.W) * sizeof(int))
    t.ph0, t.nph = <int*>malloc(HW * sizeof(int)), <int*>malloc(HW * sizeof(int))
    t.pw0, t.npw = <int*>malloc(HW * sizeof(int)), <int*>malloc(HW * sizeof(int))
    if not (rows and t.ph0 and t.nph and t.pw0 and t.npw):
        free(rows)
        _free_window_table(t)
        return NULL
    t.max_h = _covering(g.H, g.PH, g.stride_h, g.pad_h, g.kh, rows, rows + g.H)
    t.max_w = _covering(g.W, g.PW, g.stride_w, g.pad_w, g.kw, rows + 2 * g.H, rows + 2 * g.H + g.W)
    for h in range(g.H):
        for w in range(g.W):
            t.ph0[h * g.W + w], t.nph[h * g.W + w] = rows[h], rows[g.H + h]
            t.pw0[h * g.W + w], t.npw[h * g.W + w] = rows[2 * g.H + w], rows[2 * g.H + g.W + w]
    free(rows)
    return t


cdef void _free_window_table(WindowTable* t) noexcept nogil:
    if t != NULL:
        free(t.start)
        free(t.hlen)
        free(t.wlen)
        free(t.size)
        free(t.ph0)
        free(t.nph)
        free(t.pw0)
        free(t.npw)
        free(t)


# The pool's tasks: task ``t`` runs its plane function over planes ``[t*chunk, (t+1)*chunk)``.

cdef inline Py_ssize_t _last(const PoolJob* j, int64_t task) noexcept nogil:
    """One past the last plane of ``task``."""
    cdef Py_ssize_t end = (task + 1) * j.chunk
    return end if end < j.g.planes else j.g.planes


cdef void _max_forward_task(void* ctx, int64_t task, int worker) noexcept nogil:
    cdef const PoolJob* j = <const PoolJob*>ctx
    cdef Py_ssize_t p
    for p in range(task * j.chunk, _last(j, task)):
        if j.windows != NULL:
            _max_forward_plane_gathered(j.src + p * j.g.in_plane, j.dst + p * j.g.out_plane,
                                        j.mask + p * j.g.out_plane, j.g, j.windows)
        else:
            _max_forward_plane(j.src + p * j.g.in_plane, j.dst + p * j.g.out_plane,
                               j.mask + p * j.g.out_plane, j.g)


cdef void _max_backward_task(void* ctx, int64_t task, int worker) noexcept nogil:
    cdef const PoolJob* j = <const PoolJob*>ctx
    cdef Py_ssize_t p
    for p in range(task * j.chunk, _last(j, task)):
        _max_backward_plane(j.src + p * j.g.out_plane, j.mask + p * j.g.out_plane, j.dst + p * j.g.in_plane,
                            j.g)


cdef void _ave_forward_task(void* ctx, int64_t task, int worker) noexcept nogil:
    cdef const PoolJob* j = <const PoolJob*>ctx
    cdef Py_ssize_t p
    for p in range(task * j.chunk, _last(j, task)):
        if j.windows != NULL:
            _ave_forward_plane16(j.src + p * j.g.in_plane, j.dst + p * j.g.out_plane, j.g, j.windows)
        else:
            _ave_forward_plane(j.src + p * j.g.in_plane, j.dst + p * j.g.out_plane, j.g)


cdef void _ave_backward_task(void* ctx, int64_t task, int worker) noexcept nogil:
    cdef const PoolJob* j = <const PoolJob*>ctx
    cdef Py_ssize_t p
    for p in range(task * j.chunk, _last(j, task)):
        if j.windows != NULL:
            _ave_backward_plane16(j.src + p * j.g.out_plane, j.dst + p * j.g.in_plane, j.g, j.windows)
        else:
            _ave_backward_plane(j.src + p * j.g.out_plane, j.dst + p * j.g.in_plane, j.g)


cdef enum Windows:
    NO_WINDOWS, OUTPUT_WINDOWS, COVERING_WINDOWS


cdef void _run(pk_task_fn fn, PoolGeometry g, const float* src, float* dst, int* mask,
               int num_threads, Windows windows=NO_WINDOWS) noexcept:
    """Run ``fn`` over all planes on up to ``num_threads`` threads: about four tasks per thread
    (planes are often tiny), one task on one thread. ``windows``: the window tables to build once for
    all planes (the outputs' windows; with ``COVERING_WINDOWS`` also each pixel's covering outputs;
    without tables the planes run the scalar loops)."""
    if g.planes <= 0:
        return
    cdef PoolJob j
    j.g, j.src, j.dst, j.mask, j.chunk = g, src, dst, mask, pk_task_chunk(g.planes, num_threads)
    with nogil:
        j.windows = _window_table(g, windows == COVERING_WINDOWS) if windows != NO_WINDOWS else NULL
        pk_parallel_for((g.planes + j.chunk - 1) // j.chunk, fn, &j, num_threads)
        _free_window_table(j.windows)


def max_forward(const float[:, :, :, ::1] bottom, int kh, int kw, int pad_h, int pad_w,
                int stride_h, int stride_w, float[:, :, :, ::1] top, int[:, :, :, ::1] mask,
                int num_threads=1):
    """Max pooling forward: ``top`` = window max, ``mask`` = flat ``h*W + w`` of the max.

    Mirrors Caffe: the max starts at ``-FLT_MAX`` and the index at ``-1``, the window is
    ``[ph*stride - pad, +kernel)`` clipped to the image, and the comparison is strict ``>``
    (first maximum in row-major order wins; NaNs never win).
    """
    cdef PoolGeometry g = _geometry(bottom.shape, top.shape, kh, kw, pad_h, pad_w, stride_h, stride_w)
    _check_mask(mask.shape, top.shape)
    # narrow rows fill few lanes, wide windows are not loaded by rows: gathered from the window tables
    # where the build has them
    cdef bint gathered = g.PW - _first_row_output(g) < 8 or kw > MP_MAX_K
    _run(_max_forward_task, g, &bottom[0, 0, 0, 0], &top[0, 0, 0, 0], &mask[0, 0, 0, 0], num_threads,
         OUTPUT_WINDOWS if gathered else NO_WINDOWS)


def max_backward(const float[:, :, :, ::1] top_diff, const int[:, :, :, ::1] mask,
                 float[:, :, :, ::1] bottom_diff, int num_threads=1):
    """Max pooling backward: zero ``bottom_diff``, then add each top diff at its mask index.

    Caffe's loop exactly; mask entries outside ``[0, H*W)`` (``-1`` from an empty window)
    are skipped instead of writing out of bounds.
    """
    cdef PoolGeometry g = _geometry(bottom_diff.shape, top_diff.shape, 1, 1, 0, 0, 1, 1)
    _check_mask(mask.shape, top_diff.shape)
    _run(_max_backward_task, g, &top_diff[0, 0, 0, 0], &bottom_diff[0, 0, 0, 0], <int*>&mask[0, 0, 0, 0],
         num_threads)


def ave_forward(const float[:, :, :, ::1] bottom, int kh, int kw, int pad_h, int pad_w,
                int stride_h, int stride_w, float[:, :, :, ::1] top, int num_threads=1):
    """Average pooling forward, Caffe style.

    ``pool_size`` counts the window clipped to the *padded* image (``hend = min(hstart + kh,
    H + pad_h)``, before clipping to the image), so padding counts as zeros; the sum runs over
    the window clipped to the image, accumulated in float32 in row-major order, then divided.
    """
    cdef PoolGeometry g = _geometry(bottom.shape, top.shape, kh, kw, pad_h, pad_w, stride_h, stride_w)
    _run(_ave_forward_task, g, &bottom[0, 0, 0, 0], &top[0, 0, 0, 0], NULL, num_threads, OUTPUT_WINDOWS)


def ave_backward(const float[:, :, :, ::1] top_diff, int kh, int kw, int pad_h, int pad_w,
                 int stride_h, int stride_w, float[:, :, :, ::1] bottom_diff, int num_threads=1):
    """Average pooling backward: zero ``bottom_diff``, then add ``top_diff / pool_size`` over
    each window clipped to the image (same ``pool_size`` as :func:`ave_forward`, as in Caffe).
    """
    cdef PoolGeometry g = _geometry(bottom_diff.shape, top_diff.shape, kh, kw, pad_h, pad_w, stride_h,
                                    stride_w)
    _run(_ave_backward_task, g, &top_diff[0, 0, 0, 0], &bottom_diff[0, 0, 0, 0], NULL, num_threads,
         COVERING_WINDOWS)
