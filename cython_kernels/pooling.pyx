# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""MAX and AVE pooling, forward and backward, with Caffe's ``PoolingLayer`` CPU semantics.

Arrays are (N, C, H, W) / (N, C, PH, PW) float32; the output size is chosen by the caller.
Every plane ``(n, c)`` is independent, so all four kernels run in parallel over ``N*C``.
Windows are clipped to the image, so any positive output size is memory-safe.
Call them through :mod:`pyskim.kernels`, which validates and converts arguments; these
functions still re-check shapes and geometry, so they cannot index out of bounds.
"""

from cython.parallel cimport prange
from libc.float cimport FLT_MAX
from libc.string cimport memset


cdef _check_pool(Py_ssize_t* bottom_shape, Py_ssize_t* top_shape, int kh, int kw, int pad_h,
                 int pad_w, int stride_h, int stride_w):
    if kh <= 0 or kw <= 0 or stride_h <= 0 or stride_w <= 0 or pad_h < 0 or pad_w < 0:
        raise ValueError("kernel and stride must be positive and pad non-negative")
    if bottom_shape[0] != top_shape[0] or bottom_shape[1] != top_shape[1]:
        raise ValueError("bottom and top differ in N or C")


cdef _check_mask(Py_ssize_t* mask_shape, Py_ssize_t* top_shape):
    cdef int i
    for i in range(4):
        if mask_shape[i] != top_shape[i]:
            raise ValueError("mask and top shapes differ")


def max_forward(const float[:, :, :, ::1] bottom, int kh, int kw, int pad_h, int pad_w,
                int stride_h, int stride_w, float[:, :, :, ::1] top, int[:, :, :, ::1] mask,
                int num_threads=1):
    """Max pooling forward: ``top`` = window max, ``mask`` = flat ``h*W + w`` of the max.

    Mirrors Caffe: the max starts at ``-FLT_MAX`` and the index at ``-1``, the window is
    ``[ph*stride - pad, +kernel)`` clipped to the image, and the comparison is strict ``>``
    (first maximum in row-major order wins; NaNs never win).
    """
    cdef int N = bottom.shape[0]
    cdef int C = bottom.shape[1]
    cdef int H = bottom.shape[2]
    cdef int W = bottom.shape[3]
    cdef int PH = top.shape[2]
    cdef int PW = top.shape[3]
    cdef int p, n, c, ph, pw, hs, ws, he, we, h, w, best_i
    _check_pool(bottom.shape, top.shape, kh, kw, pad_h, pad_w, stride_h, stride_w)
    _check_mask(mask.shape, top.shape)
    cdef float best, v
    for p in prange(N * C, nogil=True, schedule="static", num_threads=num_threads):
        n = p // C
        c = p % C
        for ph in range(PH):
            hs = ph * stride_h - pad_h
            he = hs + kh
            if he > H:
                he = H
            if hs < 0:
                hs = 0
            for pw in range(PW):
                ws = pw * stride_w - pad_w
                we = ws + kw
                if we > W:
                    we = W
                if ws < 0:
                    ws = 0
                best = -FLT_MAX
                best_i = -1
                for h in range(hs, he):
                    for w in range(ws, we):
                        v = bottom[n, c, h, w]
                        if v > best:
                            best = v
                            best_i = h * W + w
                top[n, c, ph, pw] = best
                mask[n, c, ph, pw] = best_i


def max_backward(const float[:, :, :, ::1] top_diff, const int[:, :, :, ::1] mask,
                 float[:, :, :, ::1] bottom_diff, int num_threads=1):
    """Max pooling backward: zero ``bottom_diff``, then add each top diff at its mask index.

    Caffe's loop exactly; mask entries outside ``[0, H*W)`` (``-1`` from an empty window)
    are skipped instead of writing out of bounds.
    """
    cdef int N = top_diff.shape[0]
    cdef int C = top_diff.shape[1]
    cdef int PH = top_diff.shape[2]
    cdef int PW = top_diff.shape[3]
    cdef int H = bottom_diff.shape[2]
    cdef int W = bottom_diff.shape[3]
    cdef int HW = H * W
    cdef int p, n, c, ph, pw, idx
    _check_pool(bottom_diff.shape, top_diff.shape, 1, 1, 0, 0, 1, 1)
    _check_mask(mask.shape, top_diff.shape)
    cdef float* bd
    for p in prange(N * C, nogil=True, schedule="static", num_threads=num_threads):
        n = p // C
        c = p % C
        bd = &bottom_diff[n, c, 0, 0]
        memset(bd, 0, HW * sizeof(float))
        for ph in range(PH):
            for pw in range(PW):
                idx = mask[n, c, ph, pw]
                if idx >= 0 and idx < HW:
                    bd[idx] += top_diff[n, c, ph, pw]


def ave_forward(const float[:, :, :, ::1] bottom, int kh, int kw, int pad_h, int pad_w,
                int stride_h, int stride_w, float[:, :, :, ::1] top, int num_threads=1):
    """Average pooling forward, Caffe style.

    ``pool_size`` counts the window clipped to the *padded* image (``hend = min(hstart + kh,
    H + pad_h)``, before clipping to the image), so padding counts as zeros; the sum runs over
    the window clipped to the image, accumulated in float32 in row-major order, then divided.
    """
    cdef int N = bottom.shape[0]
    cdef int C = bottom.shape[1]
    cdef int H = bottom.shape[2]
    cdef int W = bottom.shape[3]
    cdef int PH = top.shape[2]
    cdef int PW = top.shape[3]
    cdef int p, n, c, ph, pw, hs, ws, he, we, h, w, pool_size
    cdef float acc
    _check_pool(bottom.shape, top.shape, kh, kw, pad_h, pad_w, stride_h, stride_w)
    for p in prange(N * C, nogil=True, schedule="static", num_threads=num_threads):
        n = p // C
        c = p % C
        for ph in range(PH):
            for pw in range(PW):
                hs = ph * stride_h - pad_h
                ws = pw * stride_w - pad_w
                he = hs + kh
                if he > H + pad_h:
                    he = H + pad_h
                we = ws + kw
                if we > W + pad_w:
                    we = W + pad_w
                pool_size = (he - hs) * (we - ws)
                if hs < 0:
                    hs = 0
                if ws < 0:
                    ws = 0
                if he > H:
                    he = H
                if we > W:
                    we = W
                acc = 0
                for h in range(hs, he):
                    for w in range(ws, we):
                        acc = acc + bottom[n, c, h, w]
                top[n, c, ph, pw] = acc / <float>pool_size


def ave_backward(const float[:, :, :, ::1] top_diff, int kh, int kw, int pad_h, int pad_w,
                 int stride_h, int stride_w, float[:, :, :, ::1] bottom_diff, int num_threads=1):
    """Average pooling backward: zero ``bottom_diff``, then add ``top_diff / pool_size`` over
    each window clipped to the image (same ``pool_size`` as :func:`ave_forward`, as in Caffe).
    """
    cdef int N = top_diff.shape[0]
    cdef int C = top_diff.shape[1]
    cdef int PH = top_diff.shape[2]
    cdef int PW = top_diff.shape[3]
    cdef int H = bottom_diff.shape[2]
    cdef int W = bottom_diff.shape[3]
    cdef int p, n, c, ph, pw, hs, ws, he, we, h, w, pool_size
    cdef float g
    _check_pool(bottom_diff.shape, top_diff.shape, kh, kw, pad_h, pad_w, stride_h, stride_w)
    for p in prange(N * C, nogil=True, schedule="static", num_threads=num_threads):
        n = p // C
        c = p % C
        memset(&bottom_diff[n, c, 0, 0], 0, H * W * sizeof(float))
        for ph in range(PH):
            for pw in range(PW):
                hs = ph * stride_h - pad_h
                ws = pw * stride_w - pad_w
                he = hs + kh
                if he > H + pad_h:
                    he = H + pad_h
                we = ws + kw
                if we > W + pad_w:
                    we = W + pad_w
                pool_size = (he - hs) * (we - ws)
                if hs < 0:
                    hs = 0
                if ws < 0:
                    ws = 0
                if he > H:
                    he = H
                if we > W:
                    we = W
                g = top_diff[n, c, ph, pw] / <float>pool_size
                for h in range(hs, he):
                    for w in range(ws, we):
                        bottom_diff[n, c, h, w] += g
