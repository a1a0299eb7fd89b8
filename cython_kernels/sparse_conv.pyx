# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Direct sparse convolution and sparse x dense fully-connected kernels (float32, OpenMP).

The C side is ``sconv_impl.h`` (vector-extension register tiles; AVX-512 with -march=native).
Call these through :mod:`pyskim.sparse.ops`, which packs the weights and picks the blocking.
The plan objects copy and validate their index arrays once, when they are built, and keep them
private; ``forward`` then checks every array it is given against the plan's geometry, so no call
from Python can make the kernels read or write out of bounds.
"""

import numpy as np

from libc.stdint cimport int32_t, int64_t


cdef extern from "sconv_impl.h" nogil:
    int SC_VL
    int sc_max_tile()
    int64_t sc_num_vectors(int OH, int OW, int Wq)
    void sc_prepare(const float *x, int N, int C, int H, int W, int ph, int pw, int sh, int sw,
                    int Hq, int Wq, int64_t img_stride, float *buf, int nthreads)
    int sc_conv(const float *buf, int64_t img_stride, int64_t grp_stride, int N, int G, int OCg,
                int NB, const int32_t *blk, const int32_t *col, const float *val,
                const float *bias, int OH, int OW, int Wq, int tile, int OCB, int relu,
                float *out, int nthreads)
    int sc_fc(const float *x, int M, int K, int N, const int32_t *rowptr, const int32_t *col,
              const float *val, const float *bias, int relu, float *y, int nthreads)


_INT_MAX = 2**31 - 1


def max_tile_vectors():
    """Largest register tile (in vectors of ``vector_length()`` floats) this build supports."""
    return sc_max_tile()


def vector_length():
    """Floats per tile vector (the unit of the flat output tiles)."""
    return SC_VL


cdef _check_csr(const int32_t[::1] rowptr, const int32_t[::1] col, const float[::1] val,
                Py_ssize_t rows, int64_t ncols):
    """rowptr (rows+1) starts at 0, never decreases and ends at nnz; 0 <= col < ncols."""
    cdef Py_ssize_t r, j, nnz = col.shape[0]
    if rowptr.shape[0] != rows + 1:
        raise ValueError(f"rowptr must have {rows + 1} entries, got {rowptr.shape[0]}")
    if val.shape[0] != nnz:
        raise ValueError(f"values ({val.shape[0]}) and column indices ({nnz}) differ in length")
    if rowptr[0] != 0 or rowptr[rows] != nnz:
        raise ValueError(f"rowptr must run from 0 to nnz={nnz}, got {rowptr[0]}..{rowptr[rows]}")
    for r in range(rows):
        if rowptr[r + 1] < rowptr[r]:
            raise ValueError(f"rowptr decreases at row {r}")
    for j in range(nnz):
        if col[j] < 0 or col[j] >= ncols:
            raise ValueError(f"column index {col[j]} at position {j} is outside [0, {ncols})")


cdef class ConvPlan:
    """A validated, immutable direct sparse convolution for one input geometry and stride.

    ``rowptr`` (G*OCg + 1), ``col``, ``val``: CSR over all output channels (group-major); each
    column is an offset into one group's prepared input (see ``sconv_impl.h``): channel block
    ``ic*S*Hq*Wq`` plus phase/row/column, with S = sh*sw, Hq = ceil(Hp/sh), Wq = ceil(Wp/sw).
    Columns must be sorted within each row. ``icb`` input channels form one cache block,
    ``tile`` vectors one register tile, ``ocb`` output channels one work item.
    """
    cdef int32_t[::1] _blk
    cdef int32_t[::1] _col
    cdef float[::1] _val
    cdef readonly int groups, ocg, channels, height, width, pad_h, pad_w, stride_h, stride_w
    cdef readonly int hq, wq, out_h, out_w, icb, nblocks, tile, ocb
    cdef readonly int64_t chan_stride, grp_stride, img_stride, nnz

    def __cinit__(self, rowptr, col, val, int groups, int ocg, int channels, int height, int width,
                  int pad_h, int pad_w, int stride_h, int stride_w, int out_h, int out_w,
                  int icb, int tile, int ocb):
        if groups < 1 or ocg < 1 or channels < 1 or height < 1 or width < 1:
            raise ValueError("groups, output channels per group, channels, height and width "
                             "must be positive")
        if channels % groups:
            raise ValueError(f"channels {channels} not divisible by groups {groups}")
        if pad_h < 0 or pad_w < 0 or stride_h < 1 or stride_w < 1:
            raise ValueError("pad must be non-negative and stride positive")
        if icb < 1 or tile < 1 or ocb < 1:
            raise ValueError("icb, tile and ocb must be positive")
        cdef int icg = channels // groups
        cdef int64_t hq = (height + 2 * <int64_t>pad_h + stride_h - 1) // stride_h
        cdef int64_t wq = (width + 2 * <int64_t>pad_w + stride_w - 1) // stride_w
        if not (1 <= out_h <= hq and 1 <= out_w <= wq):
            raise ValueError(f"output ({out_h}, {out_w}) does not fit the prepared input "
                             f"({hq}, {wq})")
        cdef int64_t chan = <int64_t>stride_h * stride_w * hq * wq
        cdef int64_t nv = sc_num_vectors(out_h, out_w, <int>wq)
        cdef int64_t img = ((groups * icg * chan + nv * SC_VL + 64) + 15) // 16 * 16
        if img > _INT_MAX or <int64_t>groups * ocg > _INT_MAX:
            raise ValueError("geometry too large for 32-bit offsets")
        cdef const int32_t[::1] rp = np.ascontiguousarray(rowptr, dtype=np.int32)
        self._col = np.array(col, dtype=np.int32, copy=True, order="C").reshape(-1)
        self._val = np.array(val, dtype=np.float32, copy=True, order="C").reshape(-1)
        cdef Py_ssize_t rows = <Py_ssize_t>groups * ocg
        _check_csr(rp, self._col, self._val, rows, icg * chan)
        cdef Py_ssize_t r, j
        for r in range(rows):
            for j in range(rp[r] + 1, rp[r + 1]):
                if self._col[j] < self._col[j - 1]:
                    raise ValueError(f"column indices of row {r} are not sorted")
        if icb > icg:
            icb = icg
        cdef int nb = (icg + icb - 1) // icb
        # blk[r, b]: first nonzero of row r in input-channel block b (columns are sorted)
        blk = np.empty((rows, nb + 1), dtype=np.int32)
        cdef int32_t[:, ::1] bv = blk
        cdef int b
        cdef int64_t bound
        for r in range(rows):
            j = rp[r]
            for b in range(nb):
                bv[r, b] = <int32_t>j
                bound = (b + 1) * <int64_t>icb * chan
                while j < rp[r + 1] and self._col[j] < bound:
                    j += 1
            bv[r, nb] = rp[r + 1]
        self._blk = blk.reshape(-1)
        self.groups, self.ocg, self.channels = groups, ocg, channels
        self.height, self.width, self.pad_h, self.pad_w = height, width, pad_h, pad_w
        self.stride_h, self.stride_w, self.hq, self.wq = stride_h, stride_w, <int>hq, <int>wq
        self.out_h, self.out_w, self.icb, self.nblocks = out_h, out_w, icb, nb
        self.tile, self.ocb = tile, ocb
        self.chan_stride, self.grp_stride, self.img_stride = chan, icg * chan, img
        self.nnz = self._col.shape[0]

    def buffer_size(self, int n):
        """Floats of prepared input needed for ``n`` images."""
        return n * self.img_stride

    def forward(self, const float[:, :, :, ::1] x, float[::1] buf, const float[::1] bias,
                float[:, :, :, ::1] out, bint relu, int num_threads):
        """``out`` (N, G*OCg, OH, OW) = conv(x (N, C, H, W)) + bias, ReLU if ``relu``.

        ``buf`` (at least ``buffer_size(N)`` floats) receives the prepared input; ``bias`` may be
        None. The three arrays must not overlap (not checked: overlap gives wrong values only).
        """
        cdef int n = x.shape[0]
        if n < 1 or x.shape[1] != self.channels or x.shape[2] != self.height \
                or x.shape[3] != self.width:
            raise ValueError(f"x must have shape (N>=1, {self.channels}, {self.height}, "
                             f"{self.width}), got {tuple(x.shape[i] for i in range(4))}")
        if buf.shape[0] < n * self.img_stride:
            raise ValueError(f"buf needs {n * self.img_stride} floats, got {buf.shape[0]}")
        if out.shape[0] != n or out.shape[1] != self.groups * self.ocg \
                or out.shape[2] != self.out_h or out.shape[3] != self.out_w:
            raise ValueError(f"out must have shape ({n}, {self.groups * self.ocg}, {self.out_h}, "
                             f"{self.out_w}), got {tuple(out.shape[i] for i in range(4))}")
        cdef const float *bp = NULL
        if bias is not None:
            if bias.shape[0] != self.groups * self.ocg:
                raise ValueError(f"bias must have {self.groups * self.ocg} entries, "
                                 f"got {bias.shape[0]}")
            bp = &bias[0]
        if num_threads < 1:
            num_threads = 1
        cdef int rc
        cdef const int32_t *colp = &self._col[0] if self.nnz else NULL
        cdef const float *valp = &self._val[0] if self.nnz else NULL
        with nogil:
            sc_prepare(&x[0, 0, 0, 0], n, self.channels, self.height, self.width, self.pad_h,
                       self.pad_w, self.stride_h, self.stride_w, self.hq, self.wq,
                       self.img_stride, &buf[0], num_threads)
            rc = sc_conv(&buf[0], self.img_stride, self.grp_stride, n, self.groups, self.ocg,
                         self.nblocks, &self._blk[0], colp, valp, bp, self.out_h, self.out_w,
                         self.wq, self.tile, self.ocb, relu, &out[0, 0, 0, 0], num_threads)
        if rc:
            raise MemoryError("sparse convolution: could not allocate the per-thread scratch")
        return out


cdef class FcPlan:
    """A validated, immutable sparse fully-connected layer: weights (N x K) as CSR."""
    cdef int32_t[::1] _rowptr
    cdef int32_t[::1] _col
    cdef float[::1] _val
    cdef readonly int num_output, num_input
    cdef readonly int64_t nnz

    def __cinit__(self, rowptr, col, val, int num_output, int num_input):
        if num_output < 1 or num_input < 1:
            raise ValueError("num_output and num_input must be positive")
        self._rowptr = np.array(rowptr, dtype=np.int32, copy=True, order="C").reshape(-1)
        self._col = np.array(col, dtype=np.int32, copy=True, order="C").reshape(-1)
        self._val = np.array(val, dtype=np.float32, copy=True, order="C").reshape(-1)
        _check_csr(self._rowptr, self._col, self._val, num_output, num_input)
        self.num_output, self.num_input = num_output, num_input
        self.nnz = self._col.shape[0]

    def forward(self, const float[:, ::1] x, const float[::1] bias, float[:, ::1] out, bint relu,
                int num_threads):
        """``out`` (M, N) = x (M, K) . W^T + bias (None allowed), ReLU if ``relu``."""
        cdef int m = x.shape[0]
        if m < 1 or x.shape[1] != self.num_input:
            raise ValueError(f"x must have shape (M>=1, {self.num_input}), got {(x.shape[0], x.shape[1])}")
        if out.shape[0] != m or out.shape[1] != self.num_output:
            raise ValueError(f"out must have shape ({m}, {self.num_output}), got {(out.shape[0], out.shape[1])}")
        cdef const float *bp = NULL
        if bias is not None:
            if bias.shape[0] != self.num_output:
                raise ValueError(f"bias must have {self.num_output} entries, got {bias.shape[0]}")
            bp = &bias[0]
        if num_threads < 1:
            num_threads = 1
        cdef int rc
        cdef const int32_t *colp = &self._col[0] if self.nnz else NULL
        cdef const float *valp = &self._val[0] if self.nnz else NULL
        with nogil:
            rc = sc_fc(&x[0, 0], m, self.num_input, self.num_output, &self._rowptr[0], colp, valp,
                       bp, relu, &out[0, 0], num_threads)
        if rc:
            raise MemoryError("sparse fully-connected: could not allocate the transposed input")
        return out
