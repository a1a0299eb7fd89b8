# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""im2col / col2im for 2-D convolution in Caffe's exact column layout (float32, on pyskim's thread
pool).

Row ``(c*kh + i)*kw + j`` of ``col`` holds input channel ``c`` sampled at kernel tap ``(i, j)``;
column ``oh*OW + ow`` is the output position. Taps that fall into the zero padding are 0.
Call them through :mod:`pyskim.kernels`, which validates and converts arguments; these
functions still re-check shapes and geometry, so they cannot index out of bounds.
"""

from libc.stdint cimport int64_t
from libc.string cimport memcpy, memset

include "pool_client.pxi"
include "conv_geometry.pxi"


cdef extern from *:
    """
    /* d[i] += s[i]; restrict lets the compiler vectorise it */
    static inline void pyskim_add_row(float *__restrict d, const float *__restrict s, int n) {
        for (int i = 0; i < n; ++i) d[i] += s[i];
    }
    """
    void pyskim_add_row(float* d, const float* s, int n) nogil


cdef struct ColJob:
    ConvGeometry g
    const float* src        # the image (im2col) or the column matrix (col2im)
    float* dst              # the column matrix (im2col) or the image (col2im)
    int rows                # rows of the loop: of col (im2col), of the image, C*H (col2im)
    int chunk               # rows per task


cdef void _im2col_task(void* ctx, int64_t task, int worker) noexcept nogil:
    """Rows ``[task*chunk, (task+1)*chunk)`` of ``col``: one channel sampled at one kernel tap."""
    cdef const ColJob* jb = <const ColJob*>ctx
    cdef int H = jb.g.H, W = jb.g.W, OH = jb.g.OH, OW = jb.g.OW, kh = jb.g.kh, kw = jb.g.kw
    cdef int pad_h = jb.g.pad_h, pad_w = jb.g.pad_w, stride_h = jb.g.stride_h, stride_w = jb.g.stride_w
    cdef int row, c, i, j, oh, ow, ih, iw0, lo, hi
    cdef int end = (task + 1) * jb.chunk if (task + 1) * jb.chunk < jb.rows else jb.rows
    cdef float* dst
    cdef const float* src
    for row in range(task * jb.chunk, end):
        c = row // (kh * kw)
        i = (row // kw) % kh
        j = row % kw
        iw0 = j * jb.g.dil_w - pad_w
        lo = _lo(iw0, stride_w)
        hi = _hi(iw0, stride_w, W, OW)
        if lo > hi:
            lo = hi
        for oh in range(OH):
            dst = jb.dst + (<Py_ssize_t>row * OH + oh) * OW
            ih = oh * stride_h - pad_h + i * jb.g.dil_h
            if ih < 0 or ih >= H or lo >= hi:
                memset(dst, 0, OW * sizeof(float))
                continue
            src = jb.src + (<Py_ssize_t>c * H + ih) * W
            if lo > 0:
                memset(dst, 0, lo * sizeof(float))
            if stride_w == 1:
                memcpy(dst + lo, src + lo + iw0, (hi - lo) * sizeof(float))
            else:
                for ow in range(lo, hi):
                    dst[ow] = src[ow * stride_w + iw0]
            if hi < OW:
                memset(dst + hi, 0, (OW - hi) * sizeof(float))


cdef void _col2im_task(void* ctx, int64_t task, int worker) noexcept nogil:
    """Image rows ``(c, ih)`` number ``[task*chunk, (task+1)*chunk)``: each gathers its taps from
    ``col``, in ``(i, j)`` order."""
    cdef const ColJob* jb = <const ColJob*>ctx
    cdef int H = jb.g.H, W = jb.g.W, OH = jb.g.OH, OW = jb.g.OW, kh = jb.g.kh, kw = jb.g.kw
    cdef int pad_h = jb.g.pad_h, pad_w = jb.g.pad_w, stride_h = jb.g.stride_h, stride_w = jb.g.stride_w
    cdef int crow, c, ih, i, j, t, oh, ow, iw0, lo, hi
    cdef int end = (task + 1) * jb.chunk if (task + 1) * jb.chunk < jb.rows else jb.rows
    cdef float* dst
    cdef const float* src
    for crow in range(task * jb.chunk, end):
        c = crow // H
        ih = crow % H
        dst = jb.dst + <Py_ssize_t>crow * W
        for i in range(kh):
            t = ih + pad_h - i * jb.g.dil_h
            if t < 0 or t % stride_h != 0:
                continue
            oh = t // stride_h
            if oh >= OH:
                continue
            for j in range(kw):
                iw0 = j * jb.g.dil_w - pad_w
                lo = _lo(iw0, stride_w)
                hi = _hi(iw0, stride_w, W, OW)
                src = jb.src + (<Py_ssize_t>(c * kh + i) * kw + j) * OH * OW + <Py_ssize_t>oh * OW
                if stride_w == 1:
                    if hi > lo:
                        pyskim_add_row(dst + lo + iw0, src + lo, hi - lo)
                else:
                    for ow in range(lo, hi):
                        dst[ow * stride_w + iw0] += src[ow]


cdef void _run(pk_task_fn fn, ConvGeometry g, const float* src, float* dst, int rows,
               int num_threads) noexcept:
    """Run ``fn`` over ``rows`` rows on up to ``num_threads`` threads: about four tasks per thread
    (rows can be short), one task on one thread."""
    if rows <= 0:
        return
    cdef ColJob jb
    jb.g, jb.src, jb.dst, jb.rows, jb.chunk = g, src, dst, rows, pk_task_chunk(rows, num_threads)
    with nogil:
        pk_parallel_for((rows + jb.chunk - 1) // jb.chunk, fn, &jb, num_threads)


def im2col(const float[:, :, ::1] img, int kh, int kw, int pad_h, int pad_w,
           int stride_h, int stride_w, int dil_h, int dil_w, float[:, ::1] col,
           int num_threads=1):
    """Fill ``col`` (C*kh*kw, OH*OW) from ``img`` (C, H, W) like Caffe's ``im2col_cpu``.

    OH, OW follow Caffe's formula; ``col``'s shape is checked against them. Parallel over the
    rows of ``col`` (independent writes).
    """
    cdef ConvGeometry g = _conv_geometry(1, img.shape[0], img.shape[1], img.shape[2], kh, kw, pad_h, pad_w,
                                         stride_h, stride_w, dil_h, dil_w, col.shape[0], col.shape[1])
    _run(_im2col_task, g, &img[0, 0, 0], &col[0, 0], g.C * kh * kw, num_threads)


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
    _run(_col2im_task, g, &col[0, 0], &img[0, 0, 0], g.C * g.H, num_threads)
