# Included by im2col.pyx and batch_kernels.pyx (not a module of its own): the 2-D convolution
# geometry both check, and the column range of one kernel tap.


cdef struct ConvGeometry:
    int N, C, H, W             # images (N, C, H, W)
    int kh, kw, pad_h, pad_w, stride_h, stride_w, dil_h, dil_w
    int OH, OW                 # Caffe's output size


cdef ConvGeometry _conv_geometry(int N, int C, int H, int W, int kh, int kw, int pad_h, int pad_w,
                                 int stride_h, int stride_w, int dil_h, int dil_w, Py_ssize_t rows,
                                 Py_ssize_t cols) except *:
    """The checked geometry of ``N`` images (C, H, W) against a column matrix (rows, cols): kernel,
    stride and dilation positive, pad non-negative, Caffe's output size ``OH = (H + 2*pad_h -
    (dil_h*(kh - 1) + 1)) // stride_h + 1`` (likewise OW) positive, and the matrix
    (C*kh*kw, N*OH*OW)."""
    if kh <= 0 or kw <= 0 or stride_h <= 0 or stride_w <= 0 or dil_h <= 0 or dil_w <= 0 \
            or pad_h < 0 or pad_w < 0:
        raise ValueError("kernel, stride and dilation must be positive and pad non-negative")
    cdef int OH = (H + 2 * pad_h - (dil_h * (kh - 1) + 1)) // stride_h + 1
    cdef int OW = (W + 2 * pad_w - (dil_w * (kw - 1) + 1)) // stride_w + 1
    if OH <= 0 or OW <= 0 or rows != <Py_ssize_t>C * kh * kw or cols != <Py_ssize_t>N * OH * OW:
        raise ValueError(f"col shape ({rows}, {cols}) does not fit {N} image(s) of {C} x {H} x {W} "
                         f"with kernel ({kh}, {kw}), output ({OH}, {OW})")
    return ConvGeometry(N=N, C=C, H=H, W=W, kh=kh, kw=kw, pad_h=pad_h, pad_w=pad_w, stride_h=stride_h,
                        stride_w=stride_w, dil_h=dil_h, dil_w=dil_w, OH=OH, OW=OW)


cdef inline int _lo(int off, int stride) noexcept nogil:
    """Smallest ``o >= 0`` with ``o*stride + off >= 0``."""
    if off >= 0:
        return 0
    return (-off + stride - 1) // stride


cdef inline int _hi(int off, int stride, int size, int n_out) noexcept nogil:
    """One past the largest ``o < n_out`` with ``o*stride + off < size`` (0 if none)."""
    cdef int b
    if size - 1 - off < 0:
        return 0
    b = (size - 1 - off) // stride + 1
    return b if b < n_out else n_out
