# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Dense float32 products of the convolution and inner-product layers (``gemm_impl.h``), on
pyskim's thread pool; no BLAS library is called.

Call these through :mod:`pyskim.kernels.gemm`, which validates shapes, geometry and aliasing and
holds the NumPy references; these entry points re-check the shapes they index with, so no call can
read or write out of bounds.
"""

from libc.stdint cimport int64_t
from libc.string cimport memset

include "pool_client.pxi"
include "conv_geometry.pxi"


cdef extern from "gemm_impl.h" nogil:
    int GM_DENSE, GM_IM2COL, GM_IM2COL_T
    ctypedef struct gm_operand_t:
        int kind
        const float *base
        int64_t gstride, rs, cs, cblk, cbs
        int C, H, W, kh, kw, ph, pw, sh, sw, dh, dw, OH, OW
        int64_t img_stride
    ctypedef struct gm_job_t:
        int64_t M, N, K
        int G
        gm_operand_t a, b
        float *c
        int64_t c_gstride, c_rs, c_cblk, c_cbs
        const float *bias
        int bias_cols, beta
        int64_t kseg, kc_max, ksub
        const float *apacked
        int relu
    int gm_run(gm_job_t *jb, int threads)
    int64_t gm_packed_size(int64_t M, int64_t K, int G)
    int GM_DOT_MAX_M
    ctypedef struct gm_dot_t:
        int64_t M, N, K, lda, ldw, ldc
        const float *a
        const float *w
        const float *bias
        float *c
        int beta
    void gm_dot_run(gm_dot_t *d, int threads)
    void gm_pack_a_all(gm_job_t *jb, float *dst, int threads)


cdef int64_t _UNBLOCKED = 1 << 62


cdef gm_operand_t _dense(const float *base, int64_t gstride, int64_t rs, int64_t cs, int64_t cblk=_UNBLOCKED,
                         int64_t cbs=0) noexcept nogil:
    """A strided view: element (r, c) of group g at base + g*gstride + r*rs + (c // cblk)*cbs + (c % cblk)*cs."""
    cdef gm_operand_t o
    memset(&o, 0, sizeof(o))
    o.kind = GM_DENSE
    o.base = base
    o.gstride, o.rs, o.cs, o.cblk, o.cbs = gstride, rs, cs, cblk, cbs
    return o


cdef gm_operand_t _images(int kind, const float *x, ConvGeometry g, int group) noexcept nogil:
    """The implicit column matrix of images x (N, C, H, W) for one of ``group`` channel groups."""
    cdef gm_operand_t o
    cdef int cg = g.C // group
    o.kind = kind
    o.base = x
    o.gstride = <int64_t>cg * g.H * g.W
    o.C, o.H, o.W = cg, g.H, g.W
    o.kh, o.kw, o.ph, o.pw, o.sh, o.sw, o.dh, o.dw = g.kh, g.kw, g.pad_h, g.pad_w, g.stride_h, g.stride_w, \
        g.dil_h, g.dil_w
    o.OH, o.OW = g.OH, g.OW
    o.img_stride = <int64_t>g.C * g.H * g.W
    o.rs = o.cs = o.cbs = 0
    o.cblk = _UNBLOCKED
    return o


cdef _run(gm_job_t *jb, int threads):
    cdef int failed
    with nogil:
        failed = gm_run(jb, threads)
    if failed:
        raise MemoryError("gemm: could not allocate the packing buffers")


cdef ConvGeometry _checked(Py_ssize_t *shape, int kh, int kw, int pad_h, int pad_w, int stride_h, int stride_w,
                           int dil_h, int dil_w, int group, Py_ssize_t out_h, Py_ssize_t out_w) except *:
    cdef ConvGeometry g = _conv_geometry(shape[0], shape[1], shape[2], shape[3], kh, kw, pad_h, pad_w,
                                         stride_h, stride_w, dil_h, dil_w, shape[1] * kh * kw,
                                         <Py_ssize_t>shape[0] * out_h * out_w)
    if group < 1 or g.C % group:
        raise ValueError(f"group {group} must divide the {g.C} input channels")
    return g


def packed_weights_size(Py_ssize_t m, Py_ssize_t k, int group):
    """Floats of convolution weights (m, k) packed for ``group`` groups by :func:`pack_weights`."""
    if m < 1 or k < 1 or group < 1 or m % group:
        raise ValueError("packed_weights_size: bad shape")
    return gm_packed_size(m // group, k, group)


def pack_weights(const float[:, ::1] w, int group, float[::1] out, int threads=1):
    """Pack convolution weights ``w`` (M, K) for :func:`conv_forward` (``packed=``) into ``out``."""
    if w.shape[0] % group or out.shape[0] != packed_weights_size(w.shape[0], w.shape[1], group):
        raise ValueError("pack_weights: shapes do not match")
    cdef gm_job_t jb
    jb.relu = 0
    jb.M, jb.K, jb.G = w.shape[0] // group, w.shape[1], group
    jb.a = _dense(&w[0, 0], jb.M * jb.K, jb.K, 1)
    with nogil:
        gm_pack_a_all(&jb, &out[0], threads)


def conv_forward(const float[:, :, :, ::1] x, const float[:, ::1] w, bias, int kh, int kw, int pad_h,
                 int pad_w, int stride_h, int stride_w, int dil_h, int dil_w, int group,
                 float[:, :, :, ::1] y, int threads=1, const float[::1] packed=None, bint relu=False):
    """y (N, M, OH, OW) = conv(x (N, C, H, W), w (M, C/group*kh*kw)) + bias (M or None), per group:
    y_g = w_g . im2col(x)_g; ``packed``: ``w`` as :func:`pack_weights` packed it; ``relu``: then
    y = max(y, 0) as each tile is stored (Caffe's ReLU: NaN and -0.0 pass)."""
    cdef ConvGeometry g = _checked(x.shape, kh, kw, pad_h, pad_w, stride_h, stride_w, dil_h, dil_w,
                                   group, y.shape[2], y.shape[3])
    cdef int64_t mg = w.shape[0] // group, kg = (g.C // group) * kh * kw, p = <int64_t>g.OH * g.OW
    if w.shape[0] % group or w.shape[1] != kg or (y.shape[0], y.shape[1], y.shape[2], y.shape[3]) != (g.N, w.shape[0], g.OH, g.OW):
        raise ValueError("conv_forward: weights or output do not match the geometry")
    cdef const float[::1] b
    cdef gm_job_t jb
    jb.bias = NULL
    if bias is not None:
        b = bias
        if b.shape[0] != w.shape[0]:
            raise ValueError("conv_forward: bias must have one value per output channel")
        jb.bias = &b[0]
    jb.M, jb.N, jb.K, jb.G = mg, g.N * p, kg, group
    jb.a = _dense(&w[0, 0], mg * kg, kg, 1)
    jb.b = _images(GM_IM2COL, &x[0, 0, 0, 0], g, group)
    jb.c = &y[0, 0, 0, 0]
    jb.c_gstride, jb.c_rs, jb.c_cblk, jb.c_cbs = mg * p, p, p, w.shape[0] * p
    jb.bias_cols, jb.beta, jb.kseg, jb.kc_max, jb.ksub = 0, 0, 0, 0, 0
    jb.apacked = NULL
    jb.relu = relu
    if packed is not None:
        if packed.shape[0] != gm_packed_size(mg, kg, group):
            raise ValueError("conv_forward: packed weights do not match the weights")
        jb.apacked = &packed[0]
    _run(&jb, threads)


def conv_weight_grad(const float[:, :, :, ::1] x, const float[:, :, :, ::1] top_diff, int kh, int kw, int pad_h,
                     int pad_w, int stride_h, int stride_w, int dil_h, int dil_w, int group,
                     float[:, ::1] weight_diff, int threads=1, int block=32):
    """weight_diff (M, C/group*kh*kw) += top_diff_g . im2col(x)_g^T, per group (Caffe accumulates),
    summed image by image in blocks of at most ``block`` positions."""
    cdef ConvGeometry g = _checked(x.shape, kh, kw, pad_h, pad_w, stride_h, stride_w, dil_h, dil_w,
                                   group, top_diff.shape[2], top_diff.shape[3])
    cdef int64_t m = weight_diff.shape[0], mg = m // group, kg = (g.C // group) * kh * kw
    cdef int64_t p = <int64_t>g.OH * g.OW
    if m % group or weight_diff.shape[1] != kg or (top_diff.shape[0], top_diff.shape[1], top_diff.shape[2], top_diff.shape[3]) != (g.N, m, g.OH, g.OW):
        raise ValueError("conv_weight_grad: weight diff or top diff do not match the geometry")
    cdef gm_job_t jb
    jb.relu = 0
    jb.M, jb.N, jb.K, jb.G = mg, kg, g.N * p, group
    jb.a = _dense(&top_diff[0, 0, 0, 0], mg * p, p, 1, p, m * p)
    jb.b = _images(GM_IM2COL_T, &x[0, 0, 0, 0], g, group)
    jb.c = &weight_diff[0, 0]
    jb.c_gstride, jb.c_rs, jb.c_cblk, jb.c_cbs = mg * kg, kg, _UNBLOCKED, 0
    jb.bias, jb.bias_cols, jb.beta = NULL, 0, 1
    # image by image, as Caffe accumulates, in short sums: the gradient is a long sum of products
    # that largely cancel, and a long sum in one register loses the accuracy Caffe has
    jb.kseg, jb.kc_max, jb.ksub, jb.apacked = p, 0, max(1, block), NULL
    _run(&jb, threads)


def conv_column_grad(const float[:, ::1] w, const float[:, :, :, ::1] top_diff, int group, float[:, ::1] col,
                     int threads=1):
    """col (C*kh*kw, N*OH*OW) = w_g^T . top_diff_g per group: the column matrix of the bottom diff
    (fold it with col2im)."""
    cdef int64_t m = w.shape[0], kg = w.shape[1], n = top_diff.shape[0]
    cdef int64_t p = <int64_t>top_diff.shape[2] * top_diff.shape[3]
    if group < 1 or m % group or top_diff.shape[1] != m or col.shape[0] != kg * group or col.shape[1] != n * p:
        raise ValueError("conv_column_grad: shapes do not match")
    cdef int64_t mg = m // group
    cdef gm_job_t jb
    jb.relu = 0
    jb.M, jb.N, jb.K, jb.G = kg, n * p, mg, group
    jb.a = _dense(&w[0, 0], mg * kg, 1, kg)
    jb.b = _dense(&top_diff[0, 0, 0, 0], mg * p, p, 1, p, m * p)
    jb.c = &col[0, 0]
    jb.c_gstride, jb.c_rs, jb.c_cblk, jb.c_cbs = kg * n * p, n * p, _UNBLOCKED, 0
    jb.bias, jb.bias_cols, jb.beta, jb.kseg, jb.kc_max, jb.ksub, jb.apacked = NULL, 0, 0, 0, 0, 0, NULL
    _run(&jb, threads)


def conv_input_grad(const float[:, ::1] w, const float[:, :, :, ::1] top_diff, int kh, int kw, int pad_h,
                    int pad_w, int dil_h, int dil_w, int group, float[:, :, :, ::1] bottom_diff, int threads=1):
    """bottom_diff (N, C, H, W) = the gradient of a stride-1 convolution with weights w (M, C/group*kh*kw)
    for top_diff (N, M, OH, OW): per group, the convolution of top_diff, padded by (k-1)*dil - pad,
    with the weights flipped in space and transposed (no column matrix, no col2im)."""
    cdef int64_t n = bottom_diff.shape[0], c = bottom_diff.shape[1], m = w.shape[0]
    cdef int ph = (kh - 1) * dil_h - pad_h, pw = (kw - 1) * dil_w - pad_w
    if ph < 0 or pw < 0:
        raise ValueError("conv_input_grad: pad larger than the dilated kernel")
    # the flipped convolution's geometry over top_diff, producing (H, W)
    cdef ConvGeometry g = _checked(top_diff.shape, kh, kw, ph, pw, 1, 1, dil_h, dil_w, group,
                                   bottom_diff.shape[2], bottom_diff.shape[3])
    if group < 1 or m % group or c % group or top_diff.shape[0] != n or top_diff.shape[1] != m \
            or w.shape[1] != (c // group) * kh * kw:
        raise ValueError("conv_input_grad: shapes do not match")
    cdef int64_t mg = m // group, cg = c // group, taps = kh * kw, p = <int64_t>g.OH * g.OW
    cdef gm_job_t jb
    jb.relu = 0
    jb.M, jb.N, jb.K, jb.G = cg, n * p, mg * taps, group
    # a(c, (m, t)) = w[g*mg + m, c, taps - 1 - t]: tap order reversed inside each output channel's block
    jb.a = _dense(&w[0, 0] + taps - 1, mg * cg * taps, taps, -1, taps, cg * taps)
    jb.b = _images(GM_IM2COL, &top_diff[0, 0, 0, 0], g, group)
    jb.c = &bottom_diff[0, 0, 0, 0]
    jb.c_gstride, jb.c_rs, jb.c_cblk, jb.c_cbs = cg * p, p, p, c * p
    jb.bias, jb.bias_cols, jb.beta, jb.kseg, jb.kc_max, jb.ksub, jb.apacked = NULL, 0, 0, 0, 0, 0, NULL
    _run(&jb, threads)


def matmul(const float[:, :] a, const float[:, :] b, float[:, ::1] c, bint accumulate=False, bias=None,
           int threads=1):
    """c (M, N) = [c +] a (M, K) . b (K, N) [+ bias (N), added to every row]; ``a`` and ``b`` may be
    any strided views (transposes included); K >= 1."""
    cdef int64_t M = a.shape[0], K = a.shape[1], N = b.shape[1]
    if b.shape[0] != K or c.shape[0] != M or c.shape[1] != N or K < 1:
        raise ValueError("matmul: shapes do not match")
    if M == 0 or N == 0:
        return
    cdef const float[::1] bv
    cdef gm_job_t jb
    jb.relu = 0
    jb.bias = NULL
    if bias is not None:
        bv = bias
        if bv.shape[0] != N:
            raise ValueError("matmul: bias must have one value per column")
        jb.bias = &bv[0]
    cdef gm_dot_t d
    if M <= GM_DOT_MAX_M and a.strides[1] == 4 and b.strides[0] == 4:
        # a few rows against a transposed row-major matrix (the inner product at a small batch)
        d.M, d.N, d.K = M, N, K
        d.lda, d.ldw, d.ldc = a.strides[0] // 4, b.strides[1] // 4, N
        d.a, d.w, d.bias, d.c, d.beta = &a[0, 0], &b[0, 0], jb.bias, &c[0, 0], 1 if accumulate else 0
        with nogil:
            gm_dot_run(&d, threads)
        return
    jb.M, jb.N, jb.K, jb.G = M, N, K, 1
    jb.a = _dense(&a[0, 0], 0, a.strides[0] // 4, a.strides[1] // 4)
    jb.b = _dense(&b[0, 0], 0, b.strides[0] // 4, b.strides[1] // 4)
    jb.c = &c[0, 0]
    jb.c_gstride, jb.c_rs, jb.c_cblk, jb.c_cbs = 0, N, _UNBLOCKED, 0
    jb.bias_cols, jb.beta, jb.kseg, jb.kc_max, jb.ksub, jb.apacked = 1, 1 if accumulate else 0, 0, 0, 0, NULL
    _run(&jb, threads)

