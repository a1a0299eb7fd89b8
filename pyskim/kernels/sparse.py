"""Sparse forward operators: direct sparse convolution and sparse x dense fully-connected.

Both run the compiled kernels in ``pyskim._kernels.sparse_conv`` with the thread count of
:func:`pyskim.kernels.dense.set_num_threads`. All arguments are validated here (``ValueError``); the
compiled plans re-check the arrays they are given, so no call can read or write out of bounds.

Convolution strategy (SkimCaffe's direct sparse convolution, see ``cython_kernels/sconv_impl.h``):
the input is copied once into a zero-padded buffer (for stride s > 1, split into its s_h*s_w
stride phases so that every tap becomes a unit-stride run again; rows share their zero padding as
in SkimCaffe), each output plane is computed as flat runs of 16-float vectors over the row pitch,
and every nonzero weight is one broadcast multiply-add per vector into a register tile. Bias and
ReLU are fused into the store. Batches of 16+ images of dense-ish layers use a variant with 16
images per vector instead. The plans (offsets remapped for the stride and pitch, per-block
pointers) are cached on the ConvCSR per (stride, output size, blocking).
"""
import collections
import numbers

import numpy as np

from .._kernels import sparse_conv as _sc
from .csr import ConvCSR, FcCSR
from .threads import get_num_threads
from .validate import (
    KernelArgumentError,
    bias_input,
    conv_output_shape,
    flag,
    float_input,
    int_tuple,
    output_array,
)

__all__ = ["SparseConv", "choose_conv_blocking", "conv_plan_work", "sparse_conv_forward", "sparse_fc_forward"]

VECTOR = _sc.vector_length()
MAX_TILE = _sc.max_tile_vectors()
# Cache block: input channels whose tile footprint fits this many bytes form one block.
L1_BUDGET_BYTES = 24 * 1024
# Output channels per work item of the spatial variant: the largest of OC_BLOCKS whose items share
# out evenly on the kernel's threads (OC_BALANCE). A block of input channels stays in L1 while the
# item's output channels sweep it, so larger items reuse it more: 64 channels were 3-10% faster than
# 16 on AlexNet's conv2-5 and GoogLeNet's layers at batch 1 and 16 on 1 and 2 threads (the 2-core
# Xeon, density 0.1), except where 2 threads got 3 items against 1 (208 channels at batch 1: 7%
# slower).
OC_BLOCKS = (64, 32, 16)
OC_BALANCE = 1.1
# The batch-interleaved variant runs groups of 16 images (a last group needs INTERLEAVE_MIN) and is
# used only for layers at least this dense: its 16-image input slices need 16x the cache of the
# spatial variant, so input-channel blocks hold few nonzeros and sparse layers run slower in it
# (measured: 1.5x faster than the spatial variant at density 1, equal at 0.3, 2x slower at 0.1).
INTERLEAVE_MIN = 12
INTERLEAVE_MIN_DENSITY = 0.5
# Aligned plans (shifted copies, rows of whole vectors) are the default on Intel CPUs, whose loads that
# cross a cache line cost two L1 accesses (SPLIT_LOADS_COST); on an AMD Zen 3 (AVX2) they ran AlexNet's
# conv2, conv3 and conv5 1.1-1.25x slower than the plain layout at batch 1 and 16 (Zen 5: no faster).
# There they are the default for stride-1 layers that need
# at most ALIGNED_FREE_COPIES copies, with input-channel blocks of all copies fitting ALIGNED_BUDGET_BYTES.
# Measured on a 2-core Xeon (family 6 model 207) at density 0.1: AlexNet's 3x3 layers 1.06-1.15x
# faster (3 copies); conv1 (stride 4, 12% more positions) 0.75x, so it keeps the plain layout.
# Loads that cross a cache line cost two L1 accesses on these cores; the copies trade that for more
# cache per input channel and a longer preparation. Four or five copies (5x5 kernels) pay where each
# input value feeds at least ALIGNED_WORK_PER_COPY multiply-adds per copy (output channels per group
# x density x taps; session 11, the same Xeon, register tiles of at most ALIGNED_MAX_TILE vectors):
# AlexNet's conv2 (460 per input value) 1.15-1.31x faster at batch 1 and 16 on 1 and 2 threads,
# GoogLeNet's 5x5 layer at 14x14 (240) 1.12-1.30x, LeNet's conv2 (125) 0.99-1.09x, GoogLeNet's 5x5
# layer at 28x28 (160, 32 output channels) 0.91-0.94x.
# An aligned plan's register tiles hold at most ALIGNED_MAX_TILE vectors: AlexNet's conv2 aligned ran
# 1.07-1.10x faster in tiles of 14-24 vectors than of 27, GoogLeNet's 3x3 layers at 28x28 and 56x56
# 1.03-1.06x (plain plans: no difference).
# Rows of whole vectors also add lanes whose outputs are thrown away: an aligned plan may compute at
# most ALIGNED_MAX_GROWTH times the vectors of the tightest pitch (13x13 and 14x14 outputs: 1.07-1.08;
# 7x7: 1.75, plain). On two threads the copies cost more than the alignment saves (the same Xeon:
# AlexNet's conv3-5 1.02-1.33x faster plain at batch 1 and 16, items shared by the threads), so aligned
# plans are for one thread and for batches each thread runs image by image (``by_image``: its prepared
# input read one block of channels at a time: conv3-5 at batch 16 on two threads 1.07-1.22x faster).
# A batched sparse inner product of fewer multiply-adds than this (nonzeros x the batch rounded up to
# a vector) runs on one thread: on the 2-vCPU Xeon two threads ran 0.77x one at 0.3 M (LeNet's ip1 at
# batch 16), 1.01x at 0.5 M, 1.12x at 1 M and 1.37x at 3.3 M (GoogLeNet's classifier). Batch 1 streams
# its weights and gains from two threads even on LeNet's layers.
FC_PARALLEL_MIN_WORK = 1 << 19
SPLIT_LOADS_COST = _sc.split_loads_cost()
ALIGNED_FREE_COPIES = 3
ALIGNED_MAX_COPIES = 5
ALIGNED_WORK_PER_COPY = 40
ALIGNED_MAX_TILE = 14
ALIGNED_MAX_GROWTH = 1.15
ALIGNED_BUDGET_BYTES = 48 * 1024


def _phase_geometry(csr, stride, out_hw=None, aligned=False):
    """(Hq, Wq) of the prepared input: rows per stride phase and row pitch. With ``out_hw`` the
    pitch is the smallest that still gives correct outputs (SkimCaffe's one-sided padding): the
    zero columns at the right of a row are dropped as far as the next row's left zero columns (or
    the next phase plane's) can stand in for them, i.e. pitch >= OW + qw - j0 for every tap column
    offset qw and every phase's first data column j0; this saves up to 2*pad/(W + 2*pad) of the
    flat output vectors. Every tap's first read stays inside its phase plane (a kernel reaching the
    plane's last row keeps its columns: a 1-row output of a dilated kernel as tall as the padded
    input). ``aligned``: that pitch rounded up to whole vectors (for shifted copies)."""
    hp, wp = csr.padded_hw
    sh, sw = stride
    hq, wq = -(-hp // sh), -(-wp // sw)
    if out_hw is None:
        return hq, wq
    (w, pw), ow = (csr.input_hw[1], csr.pad[1]), out_hw[1]
    (kh, kw), (dh, dw) = csr.kernel, csr.dilation
    j0_min = min(max(0, -(-(pw - rw) // sw)) for rw in range(sw))
    data_end = -(-(w + pw) // sw)
    reach = max(kw_ * dw // sw for kw_ in range(kw))
    rows_from_lowest_tap = hq - max(kh_ * dh // sh for kh_ in range(kh))
    pitch = min(wq, max(ow, data_end, ow + reach - j0_min, reach // rows_from_lowest_tap + 1))
    return hq, -(-pitch // VECTOR) * VECTOR if aligned else pitch


def _plane_vectors(out_hw, pitch):
    """16-float vectors of one output plane computed flat over rows of ``pitch`` positions."""
    return -(-((out_hw[0] - 1) * pitch + out_hw[1]) // VECTOR)


def _tap_shifts(csr, stride):
    """The distinct column offsets, modulo a vector, of the taps in one stride phase: the shifted
    copies an aligned plan needs (0 first)."""
    kw, dw, sw = csr.kernel[1], csr.dilation[1], stride[1]
    return sorted({(k * dw // sw) % VECTOR for k in range(kw)})


def _copies_pay(csr, stride):
    """Whether an aligned plan's shifted copies of the input pay for themselves: at most
    ``ALIGNED_FREE_COPIES``, or at most ``ALIGNED_MAX_COPIES`` where each input value feeds
    ``ALIGNED_WORK_PER_COPY`` multiply-adds per copy."""
    copies = len(_tap_shifts(csr, stride))
    work = csr.out_channels_per_group * csr.density * csr.kernel[0] * csr.kernel[1]
    return copies <= ALIGNED_FREE_COPIES or (copies <= ALIGNED_MAX_COPIES and work >= ALIGNED_WORK_PER_COPY * copies)


_BLOCKING_KEYS = ("tile", "icb", "ocb", "itile", "iicb", "iocb", "interleave_min", "aligned")


def _icb_for(csr, stride, hq, wq, positions, budget):
    """Input channels whose slice of the prepared input for one tile (``positions`` output
    positions plus the kernel's reach, for every stride phase) fits ``budget`` bytes."""
    kh, kw = csr.kernel
    dh, dw = csr.dilation
    sh, sw = stride
    span = ((dh * (kh - 1)) // sh) * wq + (dw * (kw - 1)) // sw + 1
    per_channel = sh * sw * min(hq * wq, positions + span)
    return max(1, budget // per_channel)


def choose_conv_blocking(csr, stride, out_hw, threads=1, by_image=False, **overrides):
    """Blocking for :func:`sparse_conv_forward` as a dict (``overrides`` replace entries):

    * ``tile`` / ``itile``: register tile, in 16-float vectors (spatial variant, batch < 16) or
      in output positions (batch-interleaved variant), at most ``MAX_TILE`` (an aligned plan's
      ``ALIGNED_MAX_TILE`` unless given);
    * ``icb`` / ``iicb``: input channels per cache block (the block's part of the prepared input
      for one tile fits ``L1_BUDGET_BYTES``);
    * ``ocb`` / ``iocb``: output channels per work item (:func:`_oc_block`, balanced over the threads
      unless each runs whole images; the interleaved variant ``OC_BLOCKS[-1]``);
    * ``interleave_min``: a batch's last group of fewer than 16 images runs interleaved when it has
      at least this many images, else one image at a time (``INTERLEAVE_MIN``; > 16 disables the
      interleaved variant, the default below ``INTERLEAVE_MIN_DENSITY``);
    * ``aligned``: 1 gives the one-image variant rows of whole vectors and a shifted copy of the input
      per distinct tap column offset modulo a vector, so that every load of the register tiles is
      64-byte aligned; 0 keeps one copy and the tightest row pitch. The default is 1 on CPUs whose
      split loads cost two (``SPLIT_LOADS_COST``), where it pays (``ALIGNED_*``) and the kernel runs on
      one thread (``threads``) or image by image (``by_image``: :func:`runs_by_image`).
    """
    oh, ow = out_hw
    aligned = (SPLIT_LOADS_COST and (threads == 1 or by_image) and stride == (1, 1)
               and _copies_pay(csr, stride) and _plane_vectors(out_hw, _phase_geometry(csr, stride, out_hw, True)[1])
               <= ALIGNED_MAX_GROWTH * _plane_vectors(out_hw, _phase_geometry(csr, stride, out_hw)[1]))
    b = {"tile": None, "itile": MAX_TILE, "ocb": None, "iocb": OC_BLOCKS[-1], "aligned": int(aligned),
         "interleave_min": INTERLEAVE_MIN if csr.density >= INTERLEAVE_MIN_DENSITY else VECTOR + 1}
    b.update({k: v for k, v in overrides.items() if v is not None})
    b["aligned"] = int(b["aligned"] > 0)
    if b["tile"] is None:
        b["tile"] = ALIGNED_MAX_TILE if b["aligned"] else MAX_TILE
    hq, wq = _phase_geometry(csr, stride, out_hw, b["aligned"])
    b["tile"] = min(b["tile"], MAX_TILE)
    b["itile"] = min(b["itile"], MAX_TILE)
    nv = _plane_vectors(out_hw, wq)
    ntile = -(-nv // b["tile"])
    if b["ocb"] is None:
        b["ocb"] = _oc_block(csr.out_channels_per_group, ntile, 1 if by_image else threads)
    if b.get("icb") is None:
        budget = L1_BUDGET_BYTES // 4
        if b["aligned"]:
            budget = ALIGNED_BUDGET_BYTES // (4 * len(_tap_shifts(csr, stride)))
        b["icb"] = _icb_for(csr, stride, hq, wq, -(-nv // ntile) * VECTOR, budget)
    if b.get("iicb") is None:
        positions = _sc.il_tile_positions(oh, ow, wq, b["itile"])
        b["iicb"] = _icb_for(csr, stride, hq, wq, positions, L1_BUDGET_BYTES // (4 * VECTOR))
    for key in ("icb", "iicb"):
        b[key] = min(b[key], csr.in_channels_per_group)
    for key in ("ocb", "iocb"):
        b[key] = min(b[key], csr.out_channels_per_group)
    return b


def _oc_block(out_channels, tiles, threads):
    """Output channels per work item of the spatial variant: the largest of ``OC_BLOCKS`` whose items
    of one image (``tiles`` tiles of every block of output channels, the last block short) share out
    on ``threads`` threads with the busiest thread at most ``OC_BALANCE`` times the mean work."""
    for block in OC_BLOCKS:
        full, rest = divmod(out_channels, block)
        items = sorted([block] * full + ([rest] if rest else []), reverse=True) * tiles
        loads = [0] * threads
        for size in items:                  # the pool hands the next item to the first free thread
            loads[loads.index(min(loads))] += size
        if max(loads) <= OC_BALANCE * out_channels * tiles / threads:
            return min(block, out_channels)
    return min(OC_BLOCKS[-1], out_channels)


def runs_by_image(batch, threads):
    """Whether a batch of ``batch`` images on ``threads`` threads runs image by image, each thread
    preparing and convolving whole images one block of input channels at a time (the kernel's rule:
    several threads, at least 4 images per thread, shared out within 10% of evenly), rather than in
    passes whose items the threads share."""
    return _sc.by_image(batch, threads)


#: The geometry :func:`choose_conv_blocking` reads from a ConvCSR, for a convolution not packed yet.
_ConvGeometry = collections.namedtuple("_ConvGeometry", "input_hw pad kernel dilation padded_hw "
                                                        "in_channels_per_group out_channels_per_group density")
#: What the one-image-at-a-time plan of a convolution does per image and group (:func:`conv_plan_work`).
ConvPlanWork = collections.namedtuple("ConvPlanWork", "aligned pitch vectors tiles blocks copies")


def conv_plan_work(in_channels_per_group, out_channels_per_group, input_hw, kernel, pad, stride, dilation,
                   density, aligned=None, threads=1, batch=1):
    """The work of :func:`sparse_conv_forward`'s one-image-at-a-time plan for a convolution of this
    geometry at weight ``density``, without packing anything (the performance model's view of the
    kernel): whether its loads are aligned (shifted copies), the row pitch of the prepared input,
    the 16-float vectors of one output plane and the register tiles they are cut into, the
    input-channel cache blocks per group (every output channel's accumulators are loaded and stored
    once per block and tile) and the copies of each input channel, for ``batch`` images on ``threads``
    threads.
    ``aligned`` overrides the choice of layout (``blocking={"aligned": ...}``)."""
    pad, kernel, dilation, stride = (tuple(v) for v in (pad, kernel, dilation, stride))
    geo = _ConvGeometry(tuple(input_hw), pad, kernel, dilation,
                        (input_hw[0] + 2 * pad[0], input_hw[1] + 2 * pad[1]), in_channels_per_group,
                        out_channels_per_group, density)
    out_hw = conv_output_shape("conv_plan_work", geo.input_hw, kernel, pad, stride, dilation)
    b = choose_conv_blocking(geo, stride, out_hw, threads, runs_by_image(batch, threads),
                             aligned=None if aligned is None else int(aligned))
    _, wq = _phase_geometry(geo, stride, out_hw, b["aligned"])
    vectors = _plane_vectors(out_hw, wq)
    return ConvPlanWork(bool(b["aligned"]), wq, vectors, -(-vectors // b["tile"]),
                        -(-in_channels_per_group // b["icb"]),
                        len(_tap_shifts(geo, stride)) if b["aligned"] else 1)


def _blocking_arg(fn, blocking):
    if blocking is None:
        return ()
    if not isinstance(blocking, dict) or not set(blocking) <= set(_BLOCKING_KEYS):
        raise KernelArgumentError(f"{fn}: blocking must be a dict with keys from {_BLOCKING_KEYS}, "
                                  f"got {blocking!r}")
    for k, v in blocking.items():
        low = 0 if k == "aligned" else 1
        if v is not None and (isinstance(v, bool) or not isinstance(v, (numbers.Integral, np.integer))
                              or not low <= v <= 2**30):
            kind = "a non-negative" if low == 0 else "a positive"
            raise KernelArgumentError(f"{fn}: blocking[{k!r}] must be {kind} int or None, got {v!r}")
    return tuple(sorted((k, None if v is None else int(v)) for k, v in blocking.items()))


def _build_conv_plan(csr, stride, out_hw, blocking, threads, by_image):
    """The compiled plan of ``csr`` for this stride, output size, blocking, thread count and way of
    running a batch: the padded-input offsets re-expressed for the stride-phase buffer and its row
    pitch, each row re-sorted."""
    b = choose_conv_blocking(csr, stride, out_hw, threads, by_image, **dict(blocking))
    rowptr, col, val = csr.rowptr, csr.colidx, csr.values
    hp, wp = csr.padded_hw
    hq, wq = _phase_geometry(csr, stride, out_hw, b["aligned"])
    sh, sw = stride
    rows = np.repeat(np.arange(csr.num_output), np.diff(rowptr))
    if (stride != (1, 1) or wq != wp) and csr.nnz:
        # Re-express each padded-input offset in the stride-phase buffer and re-sort each row.
        ic, rem = np.divmod(col.astype(np.int64), hp * wp)
        r, c = np.divmod(rem, wp)
        new = ((ic * (sh * sw) + (r % sh) * sw + c % sw) * hq + r // sh) * wq + c // sw
        order = np.lexsort((new, rows))
        col, val = new[order], val[order]
    shifts = _tap_shifts(csr, stride) if b["aligned"] else [0]
    il_col, il_val = col, val
    if len(shifts) > 1 and csr.nnz:
        # Tap column offset r (mod a vector) reads channel ic's copy shifted by r, r floats earlier.
        chan = sh * sw * hq * wq
        ic, within = np.divmod(col.astype(np.int64), chan)
        residue = within % VECTOR
        copy = np.searchsorted(shifts, residue)
        shifted = (ic * len(shifts) + copy) * chan + within - residue
        order = np.lexsort((shifted, rows))
        col, val = shifted[order], val[order]
    g = csr.groups
    return _sc.ConvPlan(rowptr, col, val, g, csr.num_output // g, csr.channels, csr.input_hw[0],
                        csr.input_hw[1], csr.pad[0], csr.pad[1], stride[0], stride[1], out_hw[0],
                        out_hw[1], b["icb"], b["tile"], b["ocb"], b["iicb"], b["itile"], b["iocb"],
                        b["interleave_min"], wq, shifts, il_col, il_val)


class SparseConv:
    """:func:`sparse_conv_forward` bound to its weights and geometry: everything but the input, the
    bias values and the output is validated once, here, so that a layer calling it at every forward
    pays only for the checks of ``x``, ``bias`` and ``out`` (the validators' cheap paths when they are
    already C-contiguous float32 arrays of the bound shapes). Arguments as :func:`sparse_conv_forward`'s;
    the compiled plan is looked up again only when the thread count changes between one and more, or
    the batch between one that several threads run image by image and one they share."""

    def __init__(self, conv_csr, stride, pad, dilation, out_hw, relu=False, blocking=None):
        fn = "sparse_conv_forward"
        if not isinstance(conv_csr, ConvCSR):
            raise KernelArgumentError(f"{fn}: conv_csr must be a ConvCSR (pack_conv_weights), "
                                      f"got {type(conv_csr).__name__}")
        csr = self.csr = conv_csr
        stride = int_tuple(fn, "stride", stride, 2, 1)
        pad = int_tuple(fn, "pad", pad, 2, 0)
        dilation = int_tuple(fn, "dilation", dilation, 2, 1)
        if pad != csr.pad or dilation != csr.dilation:
            raise KernelArgumentError(f"{fn}: pad {pad} / dilation {dilation} differ from the packed weights' "
                                      f"{csr.pad} / {csr.dilation}")
        expect = conv_output_shape(fn, csr.input_hw, csr.kernel, pad, stride, dilation)
        if int_tuple(fn, "out_hw", out_hw, 2, 1) != expect:
            raise KernelArgumentError(f"{fn}: out_hw must be {expect} for this geometry, got {out_hw!r}")
        self.stride, self.out_hw = stride, expect
        self.relu = flag(fn, "relu", relu)
        self.blocking = _blocking_arg(fn, blocking)
        self._image = (csr.channels,) + csr.input_hw
        self._out_image = (csr.num_output,) + expect
        self._plan_kind = self._plan_obj = None

    def _plan(self, threads, batch):
        """The compiled plan for ``batch`` images on ``threads`` threads (the default layout depends
        on whether that is one thread, several that run the batch image by image, or several that
        share each image's items)."""
        by_image = runs_by_image(batch, threads)
        kind = "one" if threads == 1 else "images" if by_image else "shared"
        if kind != self._plan_kind:
            csr, stride, expect, blocking = self.csr, self.stride, self.out_hw, self.blocking
            self._plan_obj = csr.plan((stride, expect, blocking, kind),
                                      lambda: _build_conv_plan(csr, stride, expect, blocking, threads, by_image))
            self._plan_kind = kind
        return self._plan_obj

    def __call__(self, x, bias=None, out=None):
        """``conv(x) + bias`` (ReLU if bound with ``relu``) into ``out`` (fresh when None); returns it."""
        fn = "sparse_conv_forward"
        x = float_input(fn, "x", x, 4)
        if x.shape[0] < 1 or x.shape[1:] != self._image:
            raise KernelArgumentError(f"{fn}: x must have shape (N>=1, {', '.join(map(str, self._image))}) "
                                      f"for these packed weights, got {x.shape}")
        bias = bias_input(fn, bias, self.csr.num_output)
        y = output_array(fn, "out", out, (x.shape[0],) + self._out_image, [x, bias])
        threads = get_num_threads()
        plan = self._plan(threads, x.shape[0])
        with self.csr.input_buffer(plan.buffer_size(x.shape[0], threads)) as buffer:
            plan.forward(x, buffer, bias, y, self.relu, threads)
        return y


def sparse_conv_forward(x, conv_csr, bias, stride, pad, dilation, out_hw, relu=False, out=None,
                        blocking=None):
    """Direct sparse convolution: ``y (N, OC, OH, OW) = conv(x (N, C, H, W), W) + bias``.

    ``conv_csr`` comes from :func:`pyskim.sparse.pack_conv_weights` for this input size, ``pad``
    and ``dilation`` (both must match the packing); ``stride`` is free; ``out_hw`` must be Caffe's
    output size. ``bias`` (OC,) or None; ``relu=True`` fuses ``max(y, 0)``. ``out`` optionally
    receives the result (C-contiguous float32). ``blocking`` is a tuning knob: a dict overriding
    entries of :func:`choose_conv_blocking` (results do not depend on it beyond rounding).
    A caller that runs the same convolution repeatedly binds it once with :class:`SparseConv`.
    """
    return SparseConv(conv_csr, stride, pad, dilation, out_hw, relu, blocking)(x, bias, out)


def sparse_fc_forward(x, fc_csr, bias, relu=False, out=None):
    """Sparse fully-connected: ``y (M, N) = x (M, K) . W^T + bias`` with W packed by
    :func:`pyskim.sparse.pack_fc_weights`. SpMV for M == 1, otherwise a transposed-input SpMDM
    (each nonzero is a contiguous multiply-add over the batch; on one thread below
    ``FC_PARALLEL_MIN_WORK`` multiply-adds). ``relu=True`` fuses ``max(y, 0)``."""
    fn = "sparse_fc_forward"
    if not isinstance(fc_csr, FcCSR):
        raise KernelArgumentError(f"{fn}: fc_csr must be an FcCSR (pack_fc_weights), "
                                  f"got {type(fc_csr).__name__}")
    x = float_input(fn, "x", x, 2)
    if x.shape[0] < 1 or x.shape[1] != fc_csr.num_input:
        raise KernelArgumentError(f"{fn}: x must have shape (M>=1, {fc_csr.num_input}), got {x.shape}")
    relu = flag(fn, "relu", relu)
    b = bias_input(fn, bias, fc_csr.num_output)
    y = output_array(fn, "out", out, (x.shape[0], fc_csr.num_output), [x, b])
    plan = fc_csr.plan(lambda: _sc.FcPlan(fc_csr.rowptr, fc_csr.colidx, fc_csr.values,
                                          fc_csr.num_output, fc_csr.num_input))
    batch = x.shape[0]
    work = fc_csr.nnz * -(-batch // VECTOR) * VECTOR
    plan.forward(x, b, y, relu, get_num_threads() if batch == 1 or work >= FC_PARALLEL_MIN_WORK else 1)
    return y
