# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Direct sparse convolution and sparse x dense fully-connected kernels (float32, on pyskim's thread
pool).

The C side is ``sconv_impl.h`` and ``sfc_impl.h`` (vector-extension register tiles; AVX-512 with -march=native).
Call these through :mod:`pyskim.sparse.ops`, which packs the weights and picks the blocking.
The plan objects copy and validate their index arrays once, when they are built, and keep them
private; ``forward`` then checks every array it is given against the plan's geometry, so no call
from Python can make the kernels read or write out of bounds.
"""

import numpy as np

from libc.stdint cimport int32_t, int64_t, uint16_t

include "pool_client.pxi"


cdef extern from "sconv_impl.h" nogil:
    int SC_VL
    int SC_PASS_BYTES
    ctypedef struct sc_prep_t:
        const float *x
        int N, C, H, W, ph, pw, sh, sw, Hq, Wq
        int64_t img_stride
        int copies
        int shift[16]
    int sc_max_tile()
    int sc_split_loads_cost()
    int64_t sc_num_vectors(int OH, int OW, int Wq)
    int sc_il_tile_max(int OH, int OW, int Wq, int tile)
    int sc_conv(const sc_prep_t *prep, float *buf, int64_t grp_stride, int G, int OCg, int NB,
                const int32_t *blk, const int32_t *col, const float *val, const float *bias, int OH,
                int OW, int tile, int OCB, int relu, int interleaved, int icb, float *out, int nthreads)
    int sc_by_image(int64_t N, int nthreads)


cdef extern from "sfc_impl.h" nogil:
    int sc_fc(const float *x, int M, int K, int N, const int32_t *rowptr, const uint16_t *col16,
              const int32_t *col32, const float *val, const float *bias, int relu, float *y,
              int nthreads)


_INT_MAX = 2**31 - 1


def max_tile_vectors():
    """Largest register tile (in vectors of ``vector_length()`` floats) this build supports."""
    return sc_max_tile()


def split_loads_cost():
    """Whether this CPU's loads that cross a cache line cost two L1 accesses (Intel's cores), which
    the aligned plans of the sparse convolution avoid; AMD's Zen cores split them cheaply."""
    return bool(sc_split_loads_cost())


def il_tile_positions(int out_h, int out_w, int wq, int tile):
    """Largest tile (output positions) of the batch-interleaved variant for this geometry."""
    if out_h < 1 or out_w < 1 or wq < out_w or tile < 1:
        raise ValueError("il_tile_positions: bad geometry")
    return sc_il_tile_max(out_h, out_w, wq, tile)


def by_image(int64_t n, int num_threads):
    """Whether the one-image-at-a-time variant runs a batch of ``n`` images on ``num_threads``
    threads image by image (each thread preparing and convolving whole images, block by block of
    input channels) rather than in passes whose items the threads share (``sconv_impl.h``)."""
    return bool(sc_by_image(n, max(num_threads, 1)))


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


cdef _checked_rows(const int32_t[::1] rp, col, val, Py_ssize_t rows, int icg, int64_t chan):
    """Private copies of ``col`` / ``val`` after checking them against ``rp`` (:func:`_check_csr`,
    ``icg`` channels of ``chan`` floats) and that each row's input channels are sorted."""
    cdef int32_t[::1] c = np.array(col, dtype=np.int32, copy=True, order="C").reshape(-1)
    cdef float[::1] v = np.array(val, dtype=np.float32, copy=True, order="C").reshape(-1)
    _check_csr(rp, c, v, rows, icg * chan)
    cdef Py_ssize_t r, j
    for r in range(rows):
        for j in range(rp[r] + 1, rp[r + 1]):
            if c[j] // chan < c[j - 1] // chan:
                raise ValueError(f"input channels of row {r} are not sorted")
    return c, v


cdef _blocks(const int32_t[::1] rp, const int32_t[::1] col, Py_ssize_t rows, int icg, int icb,
             int64_t chan):
    """(rows * (nb+1)) int32, nb = ceil(icg/icb): entry [r, b] is the first nonzero of row r in
    input-channel block b (input channels ``col // chan`` sorted within rows), entry [r, nb] the
    end of the row."""
    cdef int nb = (icg + icb - 1) // icb
    blk = np.empty((rows, nb + 1), dtype=np.int32)
    cdef int32_t[:, ::1] bv = blk
    cdef Py_ssize_t r, j
    cdef int b
    cdef int64_t bound
    for r in range(rows):
        j = rp[r]
        for b in range(nb):
            bv[r, b] = <int32_t>j
            bound = (b + 1) * <int64_t>icb * chan
            while j < rp[r + 1] and col[j] < bound:
                j += 1
        bv[r, nb] = rp[r + 1]
    return blk.reshape(-1)


cdef class ConvPlan:
    """A validated, immutable direct sparse convolution for one input geometry and stride.

    ``rowptr`` (G*OCg + 1), ``col``, ``val``: CSR over all output channels (group-major); each
    column is an offset into one group's prepared input (see ``sconv_impl.h``): channel block
    ``ic*S*Hq*Wq`` plus phase/row/column, with S = sh*sw, Hq = ceil(Hp/sh), Wq = ceil(Wp/sw).
    Columns must be sorted within each row. ``icb`` input channels form one cache block,
    ``tile`` vectors one register tile, ``ocb`` output channels one work item. The ``i*``
    parameters are the same for the batch-interleaved variant (``sconv_impl.h``), which runs groups
    of 16 images, plus a last group of at least ``il_min`` images (``il_min`` > 16 disables it).

    ``pitch`` is the row pitch Wq of the prepared input (0: ceil(Wp/sw)); the column offsets must
    use it. A pitch below ceil(Wp/sw) drops right-hand zero columns that the next row's left-hand
    zeros can stand in for (SkimCaffe's one-sided padding; the caller checks that they can); one
    above it (at most 15 more) adds zero columns, e.g. to make rows whole vectors.

    ``shifts`` (at most 16 distinct values in [0, 16), the first 0) lays out each prepared input
    channel of the one-image-at-a-time variant as ``len(shifts)`` copies, copy k moved down by
    ``shifts[k]`` floats; ``col`` then addresses channel ``ic``'s copy ``k`` at ``(ic * len(shifts) +
    k) * chan_stride``. The batch-interleaved variant keeps one copy: ``il_col`` / ``il_val`` are its
    columns and values (the same rows, in the plain layout; required when there are copies and the
    interleaved variant is enabled).
    """
    cdef int32_t[::1] _blk
    cdef int32_t[::1] _iblk
    cdef int32_t[::1] _col
    cdef float[::1] _val
    cdef int32_t[::1] _il_col
    cdef float[::1] _il_val
    cdef int _shift[16]
    cdef readonly int copies
    cdef readonly int groups, ocg, channels, height, width, pad_h, pad_w, stride_h, stride_w
    cdef readonly int hq, wq, out_h, out_w, icb, nblocks, tile, ocb
    cdef readonly int iicb, inblocks, itile, iocb, il_min
    cdef readonly int64_t chan_stride, grp_stride, img_stride, il_stride, nnz

    def __cinit__(self, rowptr, col, val, int groups, int ocg, int channels, int height, int width,
                  int pad_h, int pad_w, int stride_h, int stride_w, int out_h, int out_w,
                  int icb, int tile, int ocb, int iicb=1, int itile=1, int iocb=1, int il_min=99,
                  int pitch=0, shifts=(0,), il_col=None, il_val=None):
        if groups < 1 or ocg < 1 or channels < 1 or height < 1 or width < 1:
            raise ValueError("groups, output channels per group, channels, height and width "
                             "must be positive")
        if channels % groups:
            raise ValueError(f"channels {channels} not divisible by groups {groups}")
        if pad_h < 0 or pad_w < 0 or stride_h < 1 or stride_w < 1:
            raise ValueError("pad must be non-negative and stride positive")
        if icb < 1 or tile < 1 or ocb < 1 or iicb < 1 or itile < 1 or iocb < 1 or il_min < 1:
            raise ValueError("icb, tile, ocb (and their i* versions) and il_min must be positive")
        cdef int icg = channels // groups
        cdef int64_t hq = (height + 2 * <int64_t>pad_h + stride_h - 1) // stride_h
        cdef int64_t wq = (width + 2 * <int64_t>pad_w + stride_w - 1) // stride_w
        # every phase's data columns j (pad_w <= j*sw + rw < pad_w + width) must fit the pitch
        cdef int64_t data_end = (width + <int64_t>pad_w + stride_w - 1) // stride_w
        if pitch:
            if not min(data_end, wq) <= pitch <= wq + 15:
                raise ValueError(f"pitch {pitch} must be in [{min(data_end, wq)}, {wq + 15}]")
            wq = pitch
        shifts = tuple(int(v) for v in shifts)
        if not 1 <= len(shifts) <= SC_VL or shifts[0] != 0 or len(set(shifts)) != len(shifts) \
                or not all(0 <= v < SC_VL for v in shifts):
            raise ValueError(f"shifts must be 1 to {SC_VL} distinct values in [0, {SC_VL}) starting "
                             f"with 0, got {shifts}")
        if not (1 <= out_h <= hq and 1 <= out_w <= wq):
            raise ValueError(f"output ({out_h}, {out_w}) does not fit the prepared input "
                             f"({hq}, {wq})")
        cdef int64_t chan = <int64_t>stride_h * stride_w * hq * wq
        cdef int copies = len(shifts)
        cdef int64_t nv = sc_num_vectors(out_h, out_w, <int>wq)
        cdef int64_t img = ((groups * icg * chan * copies + nv * SC_VL + 64) + 15) // 16 * 16
        cdef int64_t il = (groups * icg * chan + hq * wq + 16) * SC_VL
        if il > _INT_MAX:
            il_min = SC_VL + 1                 # too big for one interleaved group: disabled
        if img > _INT_MAX or <int64_t>groups * ocg > _INT_MAX:
            raise ValueError("geometry too large for 32-bit offsets")
        cdef const int32_t[::1] rp = np.ascontiguousarray(rowptr, dtype=np.int32)
        cdef Py_ssize_t rows = <Py_ssize_t>groups * ocg
        self._col, self._val = _checked_rows(rp, col, val, rows, icg, chan * copies)
        cdef int64_t il_chan = chan * copies     # with copies, the interleaved blocks are never run ...
        self._il_col, self._il_val = self._col, self._val
        if copies > 1 and il_min <= SC_VL:      # ... unless the interleaved variant has its columns
            if il_col is None or il_val is None:
                raise ValueError("il_col and il_val are required with shifted copies and the "
                                 "interleaved variant enabled")
            self._il_col, self._il_val = _checked_rows(rp, il_col, il_val, rows, icg, chan)
            il_chan = chan
        for j in range(copies):
            self._shift[j] = shifts[j]
        self.copies = copies
        if icb > icg:
            icb = icg
        if iicb > icg:
            iicb = icg
        self._blk = _blocks(rp, self._col, rows, icg, icb, chan * copies)
        self._iblk = _blocks(rp, self._il_col, rows, icg, iicb, il_chan)
        self.nblocks = (icg + icb - 1) // icb
        self.inblocks = (icg + iicb - 1) // iicb
        self.iicb, self.itile, self.iocb, self.il_min = iicb, itile, iocb, il_min
        self.il_stride = il
        self.groups, self.ocg, self.channels = groups, ocg, channels
        self.height, self.width, self.pad_h, self.pad_w = height, width, pad_h, pad_w
        self.stride_h, self.stride_w, self.hq, self.wq = stride_h, stride_w, <int>hq, <int>wq
        self.out_h, self.out_w, self.icb = out_h, out_w, icb
        self.tile, self.ocb = tile, ocb
        self.chan_stride, self.grp_stride, self.img_stride = chan, icg * chan * copies, img
        self.nnz = self._col.shape[0]

    cdef int _n_il(self, int n):
        """Images of a batch of ``n`` that the interleaved variant runs (a multiple of 16, or all)."""
        if self.il_min > SC_VL:
            return 0
        cdef int full = n // SC_VL * SC_VL
        return n if n - full >= self.il_min else full

    def split(self, int n):
        """(images run batch-interleaved, images run one by one) for a batch of ``n``."""
        cdef int k = self._n_il(n)
        return k, n - k

    def buffer_size(self, int n, int num_threads=1):
        """Floats of prepared input needed for ``n`` images on ``num_threads`` threads (plus 16 for
        64-byte alignment): the interleaved groups, and for the one-image-at-a-time variant one
        image per thread when it runs the batch image by image (:func:`by_image`), else one pass
        (``sconv_impl.h``)."""
        cdef int k = self._n_il(n)
        cdef int64_t slots = min(n - k, max(1, SC_PASS_BYTES // (self.img_stride * 4)))
        if sc_by_image(n - k, max(num_threads, 1)):
            slots = max(num_threads, 1)
        return (k + SC_VL - 1) // SC_VL * self.il_stride + slots * self.img_stride + SC_VL

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
        if num_threads < 1:
            num_threads = 1
        need = self.buffer_size(n, num_threads)
        if buf.shape[0] < need:
            raise ValueError(f"buf needs {need} floats, got {buf.shape[0]}")
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
        cdef int rc = 0, rc2 = 0
        cdef const int32_t *colp = &self._col[0] if self.nnz else NULL
        cdef const float *valp = &self._val[0] if self.nnz else NULL
        cdef int k = self._n_il(n)
        cdef int64_t il_floats = (k + SC_VL - 1) // SC_VL * self.il_stride
        cdef int64_t x_img = <int64_t>self.channels * self.height * self.width
        cdef int64_t out_img = <int64_t>self.groups * self.ocg * self.out_h * self.out_w
        cdef const float *xp = &x[0, 0, 0, 0]
        cdef float *op = &out[0, 0, 0, 0]
        cdef float *bufp = &buf[0]
        bufp += ((64 - (<size_t>bufp) % 64) % 64) // sizeof(float)      # 64-byte aligned start
        cdef sc_prep_t prep
        prep.C, prep.H, prep.W = self.channels, self.height, self.width
        prep.ph, prep.pw, prep.sh, prep.sw = self.pad_h, self.pad_w, self.stride_h, self.stride_w
        prep.Hq, prep.Wq = self.hq, self.wq
        cdef const int32_t *il_colp = &self._il_col[0] if self.nnz else NULL
        cdef const float *il_valp = &self._il_val[0] if self.nnz else NULL
        cdef int j
        with nogil:
            if k:
                prep.x, prep.N, prep.img_stride, prep.copies = xp, k, self.il_stride, 1
                rc = sc_conv(&prep, bufp, self.grp_stride // self.copies, self.groups, self.ocg,
                             self.inblocks, &self._iblk[0], il_colp, il_valp, bp, self.out_h,
                             self.out_w, self.itile, self.iocb, relu, 1, self.iicb, op, num_threads)
            if n > k:
                prep.copies = self.copies
                for j in range(self.copies):
                    prep.shift[j] = self._shift[j]
                prep.x, prep.N, prep.img_stride = xp + k * x_img, n - k, self.img_stride
                rc2 = sc_conv(&prep, bufp + il_floats, self.grp_stride, self.groups, self.ocg,
                              self.nblocks, &self._blk[0], colp, valp, bp, self.out_h, self.out_w,
                              self.tile, self.ocb, relu, 0, self.icb, op + k * out_img, num_threads)
        if rc or rc2:
            raise MemoryError("sparse convolution: could not allocate the per-thread scratch")
        return out


cdef class FcPlan:
    """A validated, immutable sparse fully-connected layer: weights (N x K) as CSR, its column indices
    kept in 16 bits when K <= 65536 (``index_bytes``: a batch-1 product streams 6 instead of 8 bytes
    per nonzero)."""
    cdef int32_t[::1] _rowptr
    cdef int32_t[::1] _col
    cdef uint16_t[::1] _col16
    cdef float[::1] _val
    cdef readonly int num_output, num_input, index_bytes
    cdef readonly int64_t nnz

    def __cinit__(self, rowptr, col, val, int num_output, int num_input):
        if num_output < 1 or num_input < 1:
            raise ValueError("num_output and num_input must be positive")
        self._rowptr = np.array(rowptr, dtype=np.int32, copy=True, order="C").reshape(-1)
        cdef int32_t[::1] col32 = np.array(col, dtype=np.int32, copy=True, order="C").reshape(-1)
        self._val = np.array(val, dtype=np.float32, copy=True, order="C").reshape(-1)
        _check_csr(self._rowptr, col32, self._val, num_output, num_input)
        self.num_output, self.num_input = num_output, num_input
        self.nnz = col32.shape[0]
        if num_input <= 65536:          # checked: every index is in [0, num_input)
            self._col16 = np.asarray(col32).astype(np.uint16)
            self.index_bytes = 2
        else:
            self._col = col32
            self.index_bytes = 4

    def forward(self, const float[:, ::1] x, const float[::1] bias, float[:, ::1] out, bint relu,
                int num_threads):
        """``out`` (M, N) = x (M, K) . W^T + bias (None allowed), ReLU if ``relu``."""
        cdef int m = x.shape[0]
        if m < 1 or x.shape[1] != self.num_input:
            raise ValueError(f"x must have shape (M>=1, {self.num_input}), got {(x.shape[0], x.shape[1])}")
        if out.shape[0] != m or out.shape[1] != self.num_output:
            raise ValueError(f"out must have shape ({m}, {self.num_output}), "
                             f"got {(out.shape[0], out.shape[1])}")
        cdef const float *bp = NULL
        if bias is not None:
            if bias.shape[0] != self.num_output:
                raise ValueError(f"bias must have {self.num_output} entries, got {bias.shape[0]}")
            bp = &bias[0]
        cdef int rc
        cdef const uint16_t *col16 = NULL
        cdef const int32_t *col32 = NULL
        cdef uint16_t no_column = 0
        if self.index_bytes == 2:
            col16 = &self._col16[0] if self.nnz else &no_column
        else:
            col32 = &self._col[0] if self.nnz else NULL
        cdef const float *valp = &self._val[0] if self.nnz else NULL
        with nogil:
            rc = sc_fc(&x[0, 0], m, self.num_input, self.num_output, &self._rowptr[0], col16, col32,
                       valp, bp, relu, &out[0, 0], num_threads)
        if rc:
            raise MemoryError("sparse fully-connected: could not allocate the transposed input")
        return out
