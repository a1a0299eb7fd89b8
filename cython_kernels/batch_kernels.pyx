# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Batched im2col / col2im for 2-D convolution: a whole batch of images against one column matrix.

``col`` is (C*kh*kw, n*OH*OW): row ``(c*kh + i)*kw + j`` as in Caffe's ``im2col_cpu``, column
``b*OH*OW + oh*OW + ow`` for image ``b``. With this layout a convolution layer runs one GEMM per
group for the whole batch (W_g . col_g) instead of one per image; every column of the matrix is
exactly Caffe's column for that image and output position, so every product is the same dot
product Caffe computes. ``col2im_batch`` sums the taps in Caffe's per-pixel order (bit-identical to
``col2im_cpu`` on each image). Shapes are re-checked here, so no call can index out of bounds.
"""

from cython.parallel cimport prange
from libc.string cimport memset


cdef inline int _lo(int off, int stride) noexcept nogil:
    if off >= 0:
        return 0
    return (-off + stride - 1) // stride


cdef inline int _hi(int off, int stride, int size, int n_out) noexcept nogil:
    cdef int b
    if size - 1 - off < 0:
        return 0
    b = (size - 1 - off) // stride + 1
    return b if b < n_out else n_out


cdef _check(int N, int C, int H, int W, int kh, int kw, int pad_h, int pad_w, int stride_h,
            int stride_w, int dil_h, int dil_w, Py_ssize_t rows, Py_ssize_t cols, int* OH, int* OW):
    if kh <= 0 or kw <= 0 or stride_h <= 0 or stride_w <= 0 or dil_h <= 0 or dil_w <= 0 \
            or pad_h < 0 or pad_w < 0:
        raise ValueError("kernel, stride and dilation must be positive and pad non-negative")
    OH[0] = (H + 2 * pad_h - (dil_h * (kh - 1) + 1)) // stride_h + 1
    OW[0] = (W + 2 * pad_w - (dil_w * (kw - 1) + 1)) // stride_w + 1
    if OH[0] <= 0 or OW[0] <= 0 or rows != <Py_ssize_t>C * kh * kw \
            or cols != <Py_ssize_t>N * OH[0] * OW[0]:
        raise ValueError(f"col shape ({rows}, {cols}) does not fit {N} images of {C} x {H} x {W} with "
                         f"kernel ({kh}, {kw}), output ({OH[0]}, {OW[0]})")


cdef void _im2col_plane(const float* plane, float* dst, Py_ssize_t ld, int H, int W, int OH, int OW,
                       int kh, int kw, int pad_h, int pad_w, int stride_h, int stride_w, int dil_h,
                       int dil_w) noexcept nogil:
    """One channel plane (H, W) into kh*kw column runs of OH*OW values, ``ld`` apart."""
    cdef int i, j, oh, ow, ih, iw0, lo, hi
    cdef float* out
    cdef const float* src
    for i in range(kh):
        for j in range(kw):
            iw0 = j * dil_w - pad_w
            lo = _lo(iw0, stride_w)
            hi = _hi(iw0, stride_w, W, OW)
            if lo > hi:
                lo = hi
            out = dst + (i * kw + j) * ld
            for oh in range(OH):
                ih = oh * stride_h - pad_h + i * dil_h
                if ih < 0 or ih >= H:
                    for ow in range(OW):
                        out[ow] = 0
                else:
                    src = plane + ih * W + iw0
                    for ow in range(lo):
                        out[ow] = 0
                    if stride_w == 1:
                        for ow in range(lo, hi):
                            out[ow] = src[ow]
                    else:
                        for ow in range(lo, hi):
                            out[ow] = src[ow * stride_w]
                    for ow in range(hi, OW):
                        out[ow] = 0
                out = out + OW


cdef void _col2im_plane(const float* src0, float* plane, Py_ssize_t ld, int H, int W, int OH, int OW,
                        int kh, int kw, int pad_h, int pad_w, int stride_h, int stride_w, int dil_h,
                        int dil_w) noexcept nogil:
    """Overwrite one channel plane (H, W) with the sum of its kh*kw column runs, taps in (i, j)
    order for every pixel (Caffe's ``col2im_cpu`` order)."""
    cdef int i, j, oh, ow, ih, iw0, lo, hi
    cdef float* dst
    cdef const float* src
    memset(plane, 0, H * W * sizeof(float))
    for i in range(kh):
        for j in range(kw):
            iw0 = j * dil_w - pad_w
            lo = _lo(iw0, stride_w)
            hi = _hi(iw0, stride_w, W, OW)
            if lo >= hi:
                continue
            src = src0 + (i * kw + j) * ld
            for oh in range(OH):
                ih = oh * stride_h - pad_h + i * dil_h
                if ih >= 0 and ih < H:
                    dst = plane + ih * W + iw0
                    if stride_w == 1:
                        for ow in range(lo, hi):
                            dst[ow] = dst[ow] + src[ow]
                    else:
                        for ow in range(lo, hi):
                            dst[ow * stride_w] = dst[ow * stride_w] + src[ow]
                src = src + OW


def im2col_batch(const float[:, :, :, ::1] img, int kh, int kw, int pad_h, int pad_w,
                 int stride_h, int stride_w, int dil_h, int dil_w, float[:, ::1] col,
                 int num_threads=1):
    """Fill ``col`` (C*kh*kw, N*OH*OW) from ``img`` (N, C, H, W). One task per (image, channel):
    it reads one small plane and writes kh*kw contiguous runs of OH*OW columns."""
    cdef int N = img.shape[0]
    cdef int C = img.shape[1]
    cdef int H = img.shape[2]
    cdef int W = img.shape[3]
    cdef int OH, OW
    _check(N, C, H, W, kh, kw, pad_h, pad_w, stride_h, stride_w, dil_h, dil_w,
           col.shape[0], col.shape[1], &OH, &OW)
    cdef Py_ssize_t ld = col.shape[1]
    cdef float* col0 = &col[0, 0]
    cdef const float* img0 = &img[0, 0, 0, 0]
    cdef int task
    cdef bint unit = stride_h == 1 and stride_w == 1 and dil_h == 1 and dil_w == 1
    if num_threads <= 1:
        with nogil:
            for task in range(N * C):
                if unit:   # constant strides let the compiler vectorise the row copies
                    _im2col_plane(img0 + <Py_ssize_t>task * H * W,
                                  col0 + (task % C) * kh * kw * ld + <Py_ssize_t>(task // C) * OH * OW,
                                  ld, H, W, OH, OW, kh, kw, pad_h, pad_w, 1, 1, 1, 1)
                else:
                    _im2col_plane(img0 + <Py_ssize_t>task * H * W,
                                  col0 + (task % C) * kh * kw * ld + <Py_ssize_t>(task // C) * OH * OW,
                                  ld, H, W, OH, OW, kh, kw, pad_h, pad_w, stride_h, stride_w, dil_h, dil_w)
        return
    for task in prange(N * C, nogil=True, schedule="static", num_threads=num_threads):
        _im2col_plane(img0 + <Py_ssize_t>task * H * W,
                      col0 + (task % C) * kh * kw * ld + <Py_ssize_t>(task // C) * OH * OW,
                      ld, H, W, OH, OW, kh, kw, pad_h, pad_w, stride_h, stride_w, dil_h, dil_w)


def col2im_batch(const float[:, ::1] col, int kh, int kw, int pad_h, int pad_w,
                 int stride_h, int stride_w, int dil_h, int dil_w, float[:, :, :, ::1] img,
                 int num_threads=1):
    """Overwrite ``img`` (N, C, H, W) with the fold of ``col`` (C*kh*kw, N*OH*OW): each pixel is the
    sum of its taps in Caffe's ``(i, j)`` order. One task per (image, channel) plane."""
    cdef int N = img.shape[0]
    cdef int C = img.shape[1]
    cdef int H = img.shape[2]
    cdef int W = img.shape[3]
    cdef int OH, OW
    _check(N, C, H, W, kh, kw, pad_h, pad_w, stride_h, stride_w, dil_h, dil_w,
           col.shape[0], col.shape[1], &OH, &OW)
    cdef Py_ssize_t ld = col.shape[1]
    cdef const float* col0 = &col[0, 0]
    cdef float* img0 = &img[0, 0, 0, 0]
    cdef int task
    cdef bint unit = stride_h == 1 and stride_w == 1 and dil_h == 1 and dil_w == 1
    if num_threads <= 1:
        with nogil:
            for task in range(N * C):
                if unit:   # constant strides let the compiler vectorise the row sums
                    _col2im_plane(col0 + (task % C) * kh * kw * ld + <Py_ssize_t>(task // C) * OH * OW,
                                  img0 + <Py_ssize_t>task * H * W,
                                  ld, H, W, OH, OW, kh, kw, pad_h, pad_w, 1, 1, 1, 1)
                else:
                    _col2im_plane(col0 + (task % C) * kh * kw * ld + <Py_ssize_t>(task // C) * OH * OW,
                                  img0 + <Py_ssize_t>task * H * W,
                                  ld, H, W, OH, OW, kh, kw, pad_h, pad_w, stride_h, stride_w, dil_h, dil_w)
        return
    for task in prange(N * C, nogil=True, schedule="static", num_threads=num_threads):
        _col2im_plane(col0 + (task % C) * kh * kw * ld + <Py_ssize_t>(task // C) * OH * OW,
                      img0 + <Py_ssize_t>task * H * W,
                      ld, H, W, OH, OW, kh, kw, pad_h, pad_w, stride_h, stride_w, dil_h, dil_w)

