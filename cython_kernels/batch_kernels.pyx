# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Batched im2col / col2im for 2-D convolution: a whole batch of images against one column matrix.

``col`` is (C*kh*kw, n*OH*OW): row ``(c*kh + i)*kw + j`` as in Caffe's ``im2col_cpu``, column
``b*OH*OW + oh*OW + ow`` for image ``b``. With this layout a convolution layer runs one GEMM per
group for the whole batch (W_g . col_g) instead of one per image; every column of the matrix is
exactly Caffe's column for that image and output position, so every product is the same dot
product Caffe computes. ``col2im_batch`` sums the taps in Caffe's per-pixel order (bit-identical to
``col2im_cpu`` on each image). Both run on pyskim's thread pool, one (image, channel) plane per task
or a run of them. Shapes are re-checked here, so no call can index out of bounds.
"""

from libc.stdint cimport int64_t
from libc.string cimport memset

include "pool_client.pxi"
include "conv_geometry.pxi"


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


cdef inline void _task(bint to_col, const float* src0, float* dst0, int task, Py_ssize_t ld, int C,
                       int H, int W, int OH, int OW, int kh, int kw, int pad_h, int pad_w, int stride_h,
                       int stride_w, int dil_h, int dil_w) noexcept nogil:
    """Task ``task`` = (image ``task // C``, channel ``task % C``): unfold its image plane into its
    kh*kw column runs (``to_col``; ``src0`` is the images, ``dst0`` the column matrix) or fold them
    back into the plane (``src0`` is the column matrix, ``dst0`` the images)."""
    cdef Py_ssize_t plane_at = <Py_ssize_t>task * H * W
    cdef Py_ssize_t runs_at = (task % C) * kh * kw * ld + <Py_ssize_t>(task // C) * OH * OW
    if to_col:
        _im2col_plane(src0 + plane_at, dst0 + runs_at, ld, H, W, OH, OW, kh, kw, pad_h, pad_w, stride_h,
                      stride_w, dil_h, dil_w)
    else:
        _col2im_plane(src0 + runs_at, dst0 + plane_at, ld, H, W, OH, OW, kh, kw, pad_h, pad_w, stride_h,
                      stride_w, dil_h, dil_w)


cdef struct BatchJob:
    bint to_col             # im2col (else col2im)
    const float* src0
    float* dst0
    ConvGeometry g
    Py_ssize_t ld           # columns of the column matrix: N*OH*OW
    int chunk               # (image, channel) planes per task


cdef void _batch_task(void* ctx, int64_t task, int worker) noexcept nogil:
    """Planes ``[task*chunk, (task+1)*chunk)`` of the ``N*C`` (image, channel) planes of :func:`_task`."""
    cdef const BatchJob* jb = <const BatchJob*>ctx
    cdef ConvGeometry g = jb.g
    cdef int plane
    cdef int end = (task + 1) * jb.chunk if (task + 1) * jb.chunk < g.N * g.C else g.N * g.C
    cdef bint unit = g.stride_h == 1 and g.stride_w == 1 and g.dil_h == 1 and g.dil_w == 1
    for plane in range(task * jb.chunk, end):
        if unit:   # constant strides let the compiler vectorise the row loops
            _task(jb.to_col, jb.src0, jb.dst0, plane, jb.ld, g.C, g.H, g.W, g.OH, g.OW, g.kh, g.kw, g.pad_h,
                  g.pad_w, 1, 1, 1, 1)
        else:
            _task(jb.to_col, jb.src0, jb.dst0, plane, jb.ld, g.C, g.H, g.W, g.OH, g.OW, g.kh, g.kw, g.pad_h,
                  g.pad_w, g.stride_h, g.stride_w, g.dil_h, g.dil_w)


cdef void _run_tasks(bint to_col, const float* src0, float* dst0, ConvGeometry g,
                     int num_threads) noexcept nogil:
    """Every (image, channel) task of :func:`_task` on up to ``num_threads`` threads: about four
    pool tasks per thread (planes can be small), one on one thread."""
    cdef int planes = g.N * g.C
    if planes <= 0:
        return
    cdef BatchJob jb
    jb.to_col, jb.src0, jb.dst0, jb.g = to_col, src0, dst0, g
    jb.ld, jb.chunk = <Py_ssize_t>g.N * g.OH * g.OW, pk_task_chunk(planes, num_threads)
    pk_parallel_for((planes + jb.chunk - 1) // jb.chunk, _batch_task, &jb, num_threads)


def im2col_batch(const float[:, :, :, ::1] img, int kh, int kw, int pad_h, int pad_w,
                 int stride_h, int stride_w, int dil_h, int dil_w, float[:, ::1] col,
                 int num_threads=1):
    """Fill ``col`` (C*kh*kw, N*OH*OW) from ``img`` (N, C, H, W). One task per (image, channel):
    it reads one small plane and writes kh*kw contiguous runs of OH*OW columns."""
    cdef ConvGeometry g = _conv_geometry(img.shape[0], img.shape[1], img.shape[2], img.shape[3], kh, kw,
                                         pad_h, pad_w, stride_h, stride_w, dil_h, dil_w, col.shape[0],
                                         col.shape[1])
    with nogil:
        _run_tasks(True, &img[0, 0, 0, 0], &col[0, 0], g, num_threads)


def col2im_batch(const float[:, ::1] col, int kh, int kw, int pad_h, int pad_w,
                 int stride_h, int stride_w, int dil_h, int dil_w, float[:, :, :, ::1] img,
                 int num_threads=1):
    """Overwrite ``img`` (N, C, H, W) with the fold of ``col`` (C*kh*kw, N*OH*OW): each pixel is the
    sum of its taps in Caffe's ``(i, j)`` order. One task per (image, channel) plane."""
    cdef ConvGeometry g = _conv_geometry(img.shape[0], img.shape[1], img.shape[2], img.shape[3], kh, kw,
                                         pad_h, pad_w, stride_h, stride_w, dil_h, dil_w, col.shape[0],
                                         col.shape[1])
    with nogil:
        _run_tasks(False, &col[0, 0], &img[0, 0, 0, 0], g, num_threads)
