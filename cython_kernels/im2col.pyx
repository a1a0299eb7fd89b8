# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""im2col / col2im for 2-D convolution in Caffe's exact column layout (float32, OpenMP).

Row ``(c*kh + i)*kw + j`` of ``col`` holds input channel ``c`` sampled at kernel tap ``(i, j)``;
column ``oh*OW + ow`` is the output position. Taps that fall into the zero padding are 0.
This module also exposes the OpenMP thread-count controls used by :mod:`pyskim.kernels`.
Call them through :mod:`pyskim.kernels`, which validates and converts arguments; these
functions still re-check shapes and geometry, so they cannot index out of bounds.
"""

cimport openmp
from cython.parallel cimport prange
from libc.string cimport memcpy, memset

include "conv_geometry.pxi"


cdef extern from *:
    """
    /* d[i] += s[i]; restrict lets the compiler vectorise it */
    static inline void pyskim_add_row(float *__restrict d, const float *__restrict s, int n) {
        for (int i = 0; i < n; ++i) d[i] += s[i];
    }
    """
    void pyskim_add_row(float* d, const float* s, int n) nogil


def omp_set_num_threads(int n):
    """Set the OpenMP default thread count (``omp_set_num_threads``) for the calling thread."""
    openmp.omp_set_num_threads(n)


def omp_get_max_threads():
    """Return ``omp_get_max_threads()`` (follows ``OMP_NUM_THREADS`` until changed)."""
    return openmp.omp_get_max_threads()


def im2col(const float[:, :, ::1] img, int kh, int kw, int pad_h, int pad_w,
           int stride_h, int stride_w, int dil_h, int dil_w, float[:, ::1] col,
           int num_threads=1):
    """Fill ``col`` (C*kh*kw, OH*OW) from ``img`` (C, H, W) like Caffe's ``im2col_cpu``.

    OH, OW follow Caffe's formula; ``col``'s shape is checked against them. Parallel over the
    rows of ``col`` (independent writes).
    """
    cdef ConvGeometry g = _conv_geometry(1, img.shape[0], img.shape[1], img.shape[2], kh, kw, pad_h, pad_w,
                                         stride_h, stride_w, dil_h, dil_w, col.shape[0], col.shape[1])
    cdef int H = g.H, W = g.W, OH = g.OH, OW = g.OW
    cdef int row, c, i, j, oh, ow, ih, iw0, lo, hi
    cdef float* dst
    cdef const float* src
    for row in prange(g.C * kh * kw, nogil=True, schedule="static", num_threads=num_threads):
        c = row // (kh * kw)
        i = (row // kw) % kh
        j = row % kw
        iw0 = j * dil_w - pad_w
        lo = _lo(iw0, stride_w)
        hi = _hi(iw0, stride_w, W, OW)
        if lo > hi:
            lo = hi
        for oh in range(OH):
            dst = &col[row, oh * OW]
            ih = oh * stride_h - pad_h + i * dil_h
            if ih < 0 or ih >= H or lo >= hi:
                memset(dst, 0, OW * sizeof(float))
                continue
            src = &img[c, ih, 0]
            if lo > 0:
                memset(dst, 0, lo * sizeof(float))
            if stride_w == 1:
                memcpy(dst + lo, src + lo + iw0, (hi - lo) * sizeof(float))
            else:
                for ow in range(lo, hi):
                    dst[ow] = src[ow * stride_w + iw0]
            if hi < OW:
                memset(dst + hi, 0, (OW - hi) * sizeof(float))


def col2im_add(const float[:, ::1] col, int kh, int kw, int pad_h, int pad_w,
               int stride_h, int stride_w, int dil_h, int dil_w, float[:, :, ::1] img,
               int num_threads=1):
    """Accumulate (``+=``) ``col`` (C*kh*kw, OH*OW) back into ``img`` (C, H, W).

    Same sums as Caffe's ``col2im_cpu`` (which zeroes ``img`` first; the caller does that),
    and the same per-pixel addition order (kernel taps in ``(i, j)`` order), so results are
    bit-identical. Written as a gather over image rows, so it runs in parallel over
    ``(channel, image row)`` without write conflicts.
    """
    cdef ConvGeometry g = _conv_geometry(1, img.shape[0], img.shape[1], img.shape[2], kh, kw, pad_h, pad_w,
                                         stride_h, stride_w, dil_h, dil_w, col.shape[0], col.shape[1])
    cdef int H = g.H, W = g.W, OH = g.OH, OW = g.OW
    cdef int crow, c, ih, i, j, t, oh, ow, iw0, lo, hi
    cdef float* dst
    cdef const float* src
    for crow in prange(g.C * H, nogil=True, schedule="static", num_threads=num_threads):
        c = crow // H
        ih = crow % H
        dst = &img[c, ih, 0]
        for i in range(kh):
            t = ih + pad_h - i * dil_h
            if t < 0 or t % stride_h != 0:
                continue
            oh = t // stride_h
            if oh >= OH:
                continue
            for j in range(kw):
                iw0 = j * dil_w - pad_w
                lo = _lo(iw0, stride_w)
                hi = _hi(iw0, stride_w, W, OW)
                src = &col[(c * kh + i) * kw + j, oh * OW]
                if stride_w == 1:
                    if hi > lo:
                        pyskim_add_row(dst + lo + iw0, src + lo, hi - lo)
                else:
                    for ow in range(lo, hi):
                        dst[ow * stride_w + iw0] += src[ow]
