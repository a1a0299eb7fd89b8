"""Packing of pruned weights into SkimCaffe's sparse formats, and 2-D convolution geometry.

Convolution weights (OC, IC/g, kh, kw) become one CSR matrix per group (``ConvCSR``): row = output
channel of the group, and each nonzero's column index is an *offset into the zero-padded input*
of the group, ``(ic*Hp + kh*dil_h)*Wp + kw*dil_w`` with ``Hp = H + 2*pad_h``, ``Wp = W + 2*pad_w``
(SkimCaffe's ``WeightAlign``; it pads only one side, we pad conventionally). For stride 1, output
``(oc, y, x) = bias[oc] + sum value * padded[offset + y*Wp + x]``, so each nonzero is one
contiguous multiply-add along an output row. Fully-connected weights (N, K) become a plain CSR
matrix (``FcCSR``). Weights with ``w == 0`` exactly (including -0.0) are dropped; NaNs are kept.
Bad arguments raise :class:`pyskim.errors.KernelArgumentError` (a ``ValueError``), checked by
:mod:`.validate`.
"""
import numbers
import threading

import numpy as np

from .validate import INT_MAX, KernelArgumentError, conv_out_size, conv_output_shape, float_input, int_tuple

__all__ = [
    "ConvCSR",
    "FcCSR",
    "conv_out_hw",
    "conv_out_size",
    "pack_conv_weights",
    "pack_fc_weights",
]

#: Kernel plans a ConvCSR keeps (one per stride, output size and blocking used).
MAX_CACHED_PLANS = 8


def conv_out_hw(input_hw, kernel, pad=0, stride=1, dilation=1):
    """Output (OH, OW) of a 2-D convolution; ``ValueError`` unless both are positive."""
    fn = "conv_out_hw"
    return conv_output_shape(fn, int_tuple(fn, "input_hw", input_hw, 2, 1),
                             int_tuple(fn, "kernel", kernel, 2, 1), int_tuple(fn, "pad", pad, 2, 0),
                             int_tuple(fn, "stride", stride, 2, 1), int_tuple(fn, "dilation", dilation, 2, 1))


def _weights(fn, weight, ndim):
    w = float_input(fn, "weight", weight, ndim)
    if w.size == 0:
        raise KernelArgumentError(f"{fn}: weight is empty, shape {w.shape}")
    return w


def _readonly(a):
    a = np.ascontiguousarray(a)
    a.flags.writeable = False
    return a


def _csr_rows(mask):
    """Row pointer (int32) and (row, column) indices of the True entries of a 2-D mask, row-major."""
    rows, cols = np.nonzero(mask)
    if rows.size > INT_MAX:
        raise KernelArgumentError("too many nonzero weights for 32-bit indices")
    rowptr = np.zeros(mask.shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=mask.shape[0]), out=rowptr[1:])
    return rowptr.astype(np.int32), rows, cols


class _BufferLease:
    """``with csr.input_buffer(size) as buffer``: a plain class rather than a generator, because a
    sparse convolution at batch 1 takes a few microseconds and enters one at every call."""

    __slots__ = ("_csr", "_held", "_size")

    def __init__(self, csr, size):
        self._csr, self._size, self._held = csr, size, False

    def __enter__(self):
        buffer, self._held = self._csr._lease(self._size)
        return buffer

    def __exit__(self, *exc):
        if self._held:
            self._csr._end_lease()
        return False


class ConvCSR:
    """Group-wise CSR convolution weights with padded-input column offsets (see module docstring).

    ``rowptr`` (OC + 1, int32), ``colidx`` (nnz, int32) and ``values`` (nnz, float32) hold all
    groups one after the other: rows ``g*OCg .. (g+1)*OCg`` are group ``g`` and their offsets are
    relative to that group's first input channel. :meth:`group` gives one group's own CSR.
    The arrays are read-only. ``density`` is nnz / (OC * IC/g * kh * kw).
    """

    def __init__(self, rowptr, colidx, values, *, num_output, channels, groups, kernel, input_hw,
                 pad, dilation):
        self.num_output = num_output
        self.channels = channels
        self.groups = groups
        self.kernel = kernel
        self.input_hw = input_hw
        self.pad = pad
        self.dilation = dilation
        self.padded_hw = (input_hw[0] + 2 * pad[0], input_hw[1] + 2 * pad[1])
        self.rowptr = _readonly(rowptr)
        self.colidx = _readonly(colidx)
        self.values = _readonly(values)
        self.nnz = int(self.colidx.size)
        dense = num_output * (channels // groups) * kernel[0] * kernel[1]
        self.density = self.nnz / dense
        # Caches used by pyskim.kernels.sparse: validated kernel plans and a reusable input buffer.
        self._plans = {}
        self._buffer = None
        self._lock = threading.Lock()

    def plan(self, key, build):
        """The kernel plan cached under ``key``, made by ``build()`` on a miss. At most
        :data:`MAX_CACHED_PLANS` are kept: a full cache is emptied before the new plan goes in."""
        plan = self._plans.get(key)
        if plan is None:
            plan = build()
            if len(self._plans) >= MAX_CACHED_PLANS:
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def cached_plans(self):
        """The kernel plans cached now (a tuple)."""
        return tuple(self._plans.values())

    def input_buffer(self, size):
        """A context manager giving a float32 scratch array of at least ``size`` elements for the
        duration of the ``with``: the cached buffer (grown when too small) when no other thread holds
        it, else a fresh one."""
        return _BufferLease(self, size)

    def _lease(self, size):
        if not self._lock.acquire(blocking=False):      # another thread is using the cached buffer
            return np.empty(size, dtype=np.float32), False
        if self._buffer is None or self._buffer.size < size:
            try:
                self._buffer = np.empty(size, dtype=np.float32)
            except BaseException:
                self._lock.release()
                raise
        return self._buffer, True

    def _end_lease(self):
        self._lock.release()

    @property
    def buffer_size(self):
        """Elements of the cached input buffer (0 when none)."""
        return 0 if self._buffer is None else self._buffer.size

    def clear_cache(self):
        """Drop the cached kernel plans and input buffer (they are rebuilt on the next call)."""
        with self._lock:
            self._plans.clear()
            self._buffer = None

    @property
    def out_channels_per_group(self):
        return self.num_output // self.groups

    @property
    def in_channels_per_group(self):
        return self.channels // self.groups

    def group(self, g):
        """``(rowptr, colidx, values)`` of group ``g`` alone (rowptr rebased to start at 0)."""
        if isinstance(g, bool) or not isinstance(g, (numbers.Integral, np.integer)) \
                or not 0 <= g < self.groups:
            raise KernelArgumentError(f"group index must be in [0, {self.groups}), got {g!r}")
        ocg = self.out_channels_per_group
        rp = self.rowptr[g * ocg:(g + 1) * ocg + 1]
        lo, hi = int(rp[0]), int(rp[-1])
        return rp - rp[0], self.colidx[lo:hi], self.values[lo:hi]

    def offsets_to_taps(self, colidx):
        """Decode column offsets into (ic within the group, kernel row, kernel column) arrays."""
        hp, wp = self.padded_hw
        dh, dw = self.dilation
        colidx = np.asarray(colidx, dtype=np.int64)
        ic, rem = np.divmod(colidx, hp * wp)
        r, c = np.divmod(rem, wp)
        return ic, r // dh, c // dw

    def __repr__(self):
        return (f"ConvCSR(num_output={self.num_output}, channels={self.channels}, groups={self.groups}, "
                f"kernel={self.kernel}, input_hw={self.input_hw}, pad={self.pad}, "
                f"dilation={self.dilation}, nnz={self.nnz}, density={self.density:.4f})")


class FcCSR:
    """CSR fully-connected weights (``num_output`` x ``num_input``), read-only arrays."""

    def __init__(self, rowptr, colidx, values, *, num_output, num_input):
        self.num_output = num_output
        self.num_input = num_input
        self.rowptr = _readonly(rowptr)
        self.colidx = _readonly(colidx)
        self.values = _readonly(values)
        self.nnz = int(self.colidx.size)
        self.density = self.nnz / (num_output * num_input)
        self._plan = None

    def plan(self, build):
        """The kernel plan, made by ``build()`` on first use and kept."""
        if self._plan is None:
            self._plan = build()
        return self._plan

    def __repr__(self):
        return (f"FcCSR(num_output={self.num_output}, num_input={self.num_input}, nnz={self.nnz}, "
                f"density={self.density:.4f})")


def pack_conv_weights(weight, groups, input_hw, pad=0, dilation=1):
    """Pack convolution weights (OC, IC/g, kh, kw) for an input of ``input_hw`` (H, W).

    ``pad`` and ``dilation`` are ints or (h, w) pairs; the packed offsets depend on them and on the
    input size, so :func:`pyskim.kernels.sparse.sparse_conv_forward` accepts only the same values.
    Any stride can be used at forward time.
    """
    fn = "pack_conv_weights"
    w = _weights(fn, weight, 4)
    if isinstance(groups, bool) or not isinstance(groups, (numbers.Integral, np.integer)) or groups < 1:
        raise KernelArgumentError(f"{fn}: groups must be a positive int, got {groups!r}")
    groups = int(groups)
    oc, icg, kh, kw = (int(s) for s in w.shape)
    if oc % groups:
        raise KernelArgumentError(f"{fn}: {oc} output channels are not divisible by groups={groups}")
    h, wd = int_tuple(fn, "input_hw", input_hw, 2, 1)
    ph, pw = int_tuple(fn, "pad", pad, 2, 0)
    dh, dw = int_tuple(fn, "dilation", dilation, 2, 1)
    hp, wp = h + 2 * ph, wd + 2 * pw
    if dh * (kh - 1) + 1 > hp or dw * (kw - 1) + 1 > wp:
        raise KernelArgumentError(f"{fn}: kernel {(kh, kw)} with dilation {(dh, dw)} does not fit input "
                                  f"{(h, wd)} padded by {(ph, pw)}")
    if icg * hp * wp > INT_MAX // 2:
        raise KernelArgumentError(f"{fn}: input too large for 32-bit offsets")
    rowptr, rows, cols = _csr_rows(w.reshape(oc, -1) != 0)
    ic, tap = np.divmod(cols, kh * kw)
    r, c = np.divmod(tap, kw)
    offsets = (ic * hp + r * dh) * wp + c * dw
    values = w.reshape(oc, -1)[rows, cols]
    return ConvCSR(rowptr, offsets.astype(np.int32), values.astype(np.float32),
                   num_output=oc, channels=icg * groups, groups=groups, kernel=(kh, kw),
                   input_hw=(h, wd), pad=(ph, pw), dilation=(dh, dw))


def pack_fc_weights(weight):
    """Pack fully-connected weights (N, K) (``InnerProduct`` layout, ``y = x . W^T``) as CSR."""
    fn = "pack_fc_weights"
    w = _weights(fn, weight, 2)
    n, k = (int(s) for s in w.shape)
    if n > INT_MAX or k > INT_MAX:
        raise KernelArgumentError(f"{fn}: weight too large for 32-bit indices, shape {w.shape}")
    rowptr, rows, cols = _csr_rows(w != 0)
    return FcCSR(rowptr, cols.astype(np.int32), w[rows, cols].astype(np.float32),
                 num_output=n, num_input=k)
