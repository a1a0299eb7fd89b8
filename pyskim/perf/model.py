"""Roofline performance model: dense vs sparse time of a convolution or inner-product layer.

SkimCaffe's paper (Park et al., ICLR'17) guides pruning with a roofline-style model that SkimCaffe
itself never put in code. This module is that model, for pyskim's own kernels on the current machine.

Notation (one forward call of one layer; ``d`` = weight density, the fraction of nonzero weights)::

    convolution  F = 2·N·OC·(C/g)·kh·kw·OH·OW   (dense FLOPs)   W = OC·(C/g)·kh·kw   (weights)
    inner prod.  F = 2·M·N·K                                    W = N·K
    P  = peak FLOP/s of one thread, T = threads, BW = memory bandwidth of T threads (bytes/s)
    e_d, e_s0, e_fc, e_spmv = measured efficiencies (fraction of P·T) of pyskim's dense path, of the
         direct sparse convolution kernel, of the sparse inner product (SpMDM, batch > 1) and of its
         batch-1 SpMV; a convolution's e_d and e_s0 at batch N are e(1) + (e(8) − e(1))·min(1, (N−1)/7),
         both ends measured (several threads share one image's work, but run whole images apart:
         :func:`conv_efficiency`); o_d, o_s = per-call overheads of a layer inside a forward pass (a
         convolution's, or an inner product's: its Python path is shorter; :func:`call_overhead`)
    c_d, c_s = seconds per input value of the convolution's own pass over its input (packing or
         im2col; the sparse kernel's input preparation), which does not overlap with its compute
    (o and c as a layer of a net larger than the caches finds them, the other layers' data in its
    place; a small net's layers find their own: :func:`in_net`)

Dense (``LOWERED_GEMM`` / ``GEMM``)::

    t_d = max(F / (P·T·e_d·R/(R + 24)), B_act / BW) + 4·W / BW + c_d·I + o_d  (B_act: B_d without W,
          I = N·C·H·W the input values; c_d·I for convolutions only)
    R   = rows of the packed left operand (output channels per group; an inner product's batch): the
          product packs its right operand once per call, work worth about 24 of those rows
    B_d = 4·(inputs + outputs + W) + 8·N·g·K·OH·OW   (K = C/g·kh·kw; the last term is the im2col
                                                    matrix, written then read; absent for 1x1 / FC)
    FC at batch M <= 4 (dot products streaming W): the memory term is 4·W / BW_fc, the rate measured
    on a weight matrix larger than the caches

Sparse (``DIRECT_SCONV`` / ``SPMDM``)::

    t_s(d) = max(d·F / (P·T·e_s) + d·8·W / BW, (B_in + B_out + d·8·W) / BW) + o
    (an inner product at batch 1 prefetches its weights while it computes: max(d·F / (P·T·e_spmv),
    (B_in + B_out + d·6·W) / BW_fc) + o)
    B_in  = 4·N·C·H·W + 8·N·C·Hp·Wp   (the input, plus its zero-padded copy written then read; FC: 4·M·K)
    B_out = 4·outputs                 (a nonzero weight costs 8 bytes: a float and an int32 index)
    e_s   = e_s0 · u · σ · τ          (FC: e_fc · u for M > 1, e_spmv for M = 1)
    u     = OH·OW / (16·V),  V = ceil(((OH−1)·Wq + OW) / 16) vectors per output plane, Wq the row pitch
            the kernel's plan uses (:func:`pyskim.kernels.sparse.conv_plan_work`): the fraction of the
            16-float vector lanes that produce an output (the kernel runs flat over the padded row
            pitch, so short output rows and wide pads waste lanes);
            FC: u = M / (16·ceil(M/16)) (the SpMDM kernel's vectors run over the batch)
    τ     = V / (V + k·tiles): each nonzero costs each of the plan's register tiles ``k`` vector
            multiply-adds' worth besides its own (its value and offset loaded and broadcast);
    σ     = 1 for a plan with aligned loads (stride 1, few tap column offsets), ``plain_eff`` for a
            stride-1 plan without them, ``stride_eff`` for stride > 1 (stride phases, no aligned loads)
    o     = o_s + c_s·I + A / (P·T·e_s0),  A = 2·32·N·OC·V·NB: each output channel's accumulator
            vectors loaded and stored once per input-channel block (NB blocks per group), priced like
            multiply-adds; c_s·I the input preparation (convolutions only)

Lowered compressed-column GEMM (``LOWERED_CCNMM``, ``c`` = fraction of lowered weight columns that
are not all zero)::

    t_c = max(c·F / (P·T·e_d'), B_act / BW) + (c·4·W + 8·c·N·g·K·OH·OW + 8·outputs) / BW + c_d·I + o_d
          (the whole input lowered; the kept rows of the lowered matrix gathered, and the bias added,
          in passes of their own)

Inside a small net. Between two calls of a layer the rest of a forward pass goes through the caches;
a net that moves ``B`` bytes per forward (:func:`pyskim.sparse.forward_bytes`) leaves a fraction
``f = min(1, B / EVICTED_BYTES)`` of a layer's state evicted, and the layer pays
``o = o_warm + f·(o − o_warm)`` per call and ``f·c`` per input value (:func:`in_net`; ``o_warm`` is
the overhead of a layer called again and again; an input still in the caches costs its pass next to
nothing). LeNet at batch 1 moves 0.3 MB sparse, 1.9 MB dense: priced with the evicted overheads
alone, its layers were predicted 1.6-5.4x slower than they ran.

Write ``t_s(d) = max(a·d, b + m·d) + o`` with ``a = F/(P·T·e_s) + m`` (the batch-1 inner product:
``a = F/(P·T·e_spmv)``), ``b = (B_in + B_out)/BW`` and ``m = 8·W/BW``. Then:

* **break-even density** ``d_be``: the largest d in [0, 1] with ``t_s(d) <= t_d``; t_s is increasing,
  so ``d_be = min((t_d − o_s)/a, (t_d − o_s − b)/m)`` clipped to [0, 1] (0: sparse never wins,
  1: it wins even dense). Below ``d_be`` the sparse kernel is faster.
* **saturation density** ``d_sat``: where the compute term meets the memory term, ``a·d = b + m·d``,
  i.e. ``d_sat = b / (a − m)`` clipped to [0, 1] (1 when ``a <= m``). Below it the layer is bandwidth
  and overhead bound: pruning further saves at most ``m·d_sat``, and the speedup tends to
  ``t_d / (b + o_s)``.

This module is the pure model: shapes, :class:`MachineProfile`, the formulas, the predictions and
the documented default machine numbers; it reads no file and runs no kernel. Every prediction takes the
machine profile as an argument: :func:`pyskim.perf.profile.get_profile` gives the cached or default
profile of this machine, :func:`pyskim.perf.calibrate.calibrate` measures one. P is a documented
default per ISA (:func:`peak_gflops_for_isa`: 267 GFLOP/s per thread with AVX-512, measured on the
project machine: 2 FMAs × 16 lanes × 2 at 4.2 GHz; 134 with AVX2); a calibration measures BW and
the efficiencies, and fits the overheads and the input costs to a small net's layers, each timed
after other data went through the caches, as a layer of a real net finds them (holding the previous
layers' data, not its own: :mod:`pyskim.perf.net_costs`).
More in ``docs/perfmodel.md``.
"""
import dataclasses
import math

from ..kernels.sparse import conv_plan_work

VECTOR = 16                      # float32 lanes of one AVX-512 vector (the kernels' unit of work)
NNZ_BYTES = 8                    # one nonzero weight: float32 value + int32 column index / offset
CALIBRATION_DENSITY = 0.1        # the density the sparse kernel's efficiency is measured at
CALIBRATION_BATCH = 8            # the batch the convolution efficiencies are measured at again
DOT_BATCH = 4                    # the dense inner product streams its weights in dot products up to here
PACKING_ROWS = 24                # packing the product's right operand costs about this many rows of it
PEAK_GFLOPS_AVX512 = 267.0       # per thread, measured (research/peers.md): 64 FLOP/cycle at 4.2 GHz
PEAK_GFLOPS_AVX2 = 134.0
PEAK_GFLOPS_OTHER = 34.0
DEFAULT_BANDWIDTH_GBS = {1: 42.0, 2: 75.0}   # STREAM copy on the project machine
#: Bytes the calibration writes through the caches before each call it prices as a layer inside a net
#: (:mod:`pyskim.perf.net_costs`): about what the layers between two calls of one layer move in a net
#: larger than the caches (two L2 caches' worth).
EVICTED_BYTES = 4 << 20


@dataclasses.dataclass(frozen=True)
class MachineProfile:
    """The machine as the model sees it (all rates for ``threads`` threads unless said otherwise)."""

    threads: int = 1
    peak_flops: float = PEAK_GFLOPS_AVX512 * 1e9   # per thread
    bandwidth: float = DEFAULT_BANDWIDTH_GBS[1] * 1e9   # bytes/s, all threads together
    dense_eff: float = 0.6           # pyskim dense conv / GEMM, fraction of P·T
    sparse_eff: float = 0.2          # direct sparse conv at u = 1, stride 1 (useful FLOPs)
    batched_dense_eff: float = 0.0   # the two for a convolution at CALIBRATION_BATCH images (0: not
    batched_sparse_eff: float = 0.0  # measured, the batch-1 values at every batch; conv_efficiency)
    plain_eff: float = 0.8           # multiplier of sparse_eff for a stride-1 plan without aligned loads
    tile_overhead: float = 1.5       # k: a nonzero's cost to each register tile besides its multiply-adds,
                                     # in vector multiply-adds (tile_efficiency)
    stride_eff: float = 0.8          # multiplier of sparse_eff for stride > 1
    fc_sparse_eff: float = 0.1       # sparse inner product at u = 1 (batch a multiple of 16)
    spmv_eff: float = 0.01           # sparse inner product at batch 1 (SpMV)
    fc_bandwidth: float = 0.0        # bytes/s the dense inner product streams its weights at batch <= 4
                                     # (0: ``bandwidth``)
    dense_overhead: float = 45e-6    # seconds per call of a convolution inside the forward pass of a
    sparse_overhead: float = 40e-6   # net that moves at least EVICTED_BYTES
    dense_fc_overhead: float = 30e-6     # the same for an inner product (a shorter Python path:
    sparse_fc_overhead: float = 45e-6    # no geometry, no im2col)
    warm_dense_overhead: float = 20e-6   # the same four for a layer whose state is in the caches
    warm_sparse_overhead: float = 20e-6  # (called again and again)
    warm_dense_fc_overhead: float = 6e-6
    warm_sparse_fc_overhead: float = 11e-6
    dense_input_cost: float = 0.3e-9     # seconds per input value: the dense convolution's pass over its
                                         # input (im2col / packing), not overlapped with the product
    sparse_input_cost: float = 0.4e-9    # the same for the sparse convolution's input preparation
    cpu: str = ""
    source: str = "default"
    load: float = 0.0                # load average per CPU while calibrating (other jobs)
    consistent: bool = True          # every calibrated coefficient was measured twice alike
    spread: float = 0.0              # largest (max - min) / median of a coefficient over the rounds

    @property
    def compute(self):
        """P·T, FLOP/s of all threads at peak."""
        return self.peak_flops * self.threads

    def to_json(self):
        """The profile as a JSON-ready dict (the cache's entry)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data):
        """A profile from :meth:`to_json`'s dict; unknown keys are ignored and missing ones take the
        defaults (caches written by other pyskim versions)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclasses.dataclass(frozen=True)
class ConvShape:
    """A 2-D convolution: input (batch, channels, height, width), OC = num_output."""

    batch: int
    channels: int
    height: int
    width: int
    num_output: int
    kernel: tuple = (3, 3)
    stride: tuple = (1, 1)
    pad: tuple = (0, 0)
    dilation: tuple = (1, 1)
    group: int = 1

    @property
    def out_hw(self):
        return tuple(max(0, (s + 2 * p - (d * (k - 1) + 1)) // st + 1) for s, k, p, st, d in zip(
            (self.height, self.width), self.kernel, self.pad, self.stride, self.dilation))

    @property
    def padded_hw(self):
        return self.height + 2 * self.pad[0], self.width + 2 * self.pad[1]

    @property
    def weights(self):
        return self.num_output * (self.channels // self.group) * self.kernel[0] * self.kernel[1]

    @property
    def flops(self):
        oh, ow = self.out_hw
        return 2.0 * self.batch * self.weights * oh * ow

    @property
    def outputs(self):
        oh, ow = self.out_hw
        return self.batch * self.num_output * oh * ow

    @property
    def inputs(self):
        return self.batch * self.channels * self.height * self.width

    @property
    def is_1x1(self):
        return self.kernel == (1, 1) and self.stride == (1, 1) and self.pad == (0, 0)


@dataclasses.dataclass(frozen=True)
class FcShape:
    """An inner product: (batch M x num_input K) . (K x num_output N)."""

    batch: int
    num_input: int
    num_output: int

    @property
    def weights(self):
        return self.num_output * self.num_input

    @property
    def flops(self):
        return 2.0 * self.batch * self.weights

    @property
    def outputs(self):
        return self.batch * self.num_output

    @property
    def inputs(self):
        return self.batch * self.num_input


@dataclasses.dataclass(frozen=True)
class Prediction:
    """What the model says about one layer at one density (times in seconds)."""

    dense: float
    sparse: float
    ccnmm: float
    break_even: float
    saturation: float
    mode: str              # "dense", "sparse" or "ccnmm": the fastest predicted

    @property
    def speedup(self):
        """Predicted dense time / sparse time."""
        return self.dense / self.sparse if self.sparse > 0 else math.inf

    @property
    def best(self):
        return min(self.dense, self.sparse, self.ccnmm)


# -- the formulas ----------------------------------------------------------------------------------

def _lowered_values(shape):
    """Values of one image's and group's lowered (im2col) matrix: K·OH·OW, K = C/g·kh·kw."""
    oh, ow = shape.out_hw
    return shape.channels // shape.group * shape.kernel[0] * shape.kernel[1] * oh * ow


def _im2col_bytes(shape):
    if isinstance(shape, FcShape) or shape.is_1x1:
        return 0.0
    return 8.0 * shape.batch * shape.group * _lowered_values(shape)


def packed_rows(shape):
    """Rows of the product's packed left operand: output channels per group (convolution), the batch
    (inner product)."""
    return shape.batch if isinstance(shape, FcShape) else shape.num_output // shape.group


def input_pass(shape, cost):
    """Seconds of a convolution's own pass over its input at ``cost`` seconds per input value (the
    dense path's packing, the sparse kernel's preparation of a padded copy): a pass that runs before
    the compute, not beside it, so it adds to the roofline term; 0 for an inner product."""
    return 0.0 if isinstance(shape, FcShape) else cost * shape.inputs


def call_overhead(shape, profile, mode):
    """Per-call overhead of ``mode`` (``"dense"`` / ``"sparse"``) for a layer of ``shape``: the
    convolution's ``o_d`` / ``o_s`` or the inner product's."""
    if isinstance(shape, FcShape):
        return profile.dense_fc_overhead if mode == "dense" else profile.sparse_fc_overhead
    return profile.dense_overhead if mode == "dense" else profile.sparse_overhead


def conv_efficiency(single, batched, batch):
    """A convolution's efficiency at ``batch`` images from the one measured on one image (``single``)
    and on ``CALIBRATION_BATCH`` images (``batched``; 0 when not measured: ``single`` at every batch):
    linear in the batch in between, ``batched`` beyond. On several threads the kernels share one
    image's work out (the threads meet at every image) but run whole images apart: on the project
    machine's two threads a 256->256 3x3 layer at 13x13 ran 1.5x (dense) and 1.7x (sparse) faster
    per image at batch 8 than at batch 1, on one thread 1.1x."""
    if batched <= 0 or batch <= 1:
        return single
    return single + (batched - single) * min(1.0, (batch - 1) / (CALIBRATION_BATCH - 1))


def _at_batch(shape, single, batched):
    """A convolution's efficiency at this shape's batch (:func:`conv_efficiency`); an inner product's
    ``single`` (its efficiencies do not depend on the batch this way)."""
    if isinstance(shape, FcShape):
        return single
    return conv_efficiency(single, batched, shape.batch)


def dense_efficiency(shape, profile):
    """``e_d · R / (R + R_0)``: the product packs its right operand (the im2col columns, or an inner
    product's weights) once per call, work worth ``R_0 = PACKING_ROWS`` rows of the ``R`` rows that
    reuse it (:func:`packed_rows`); ``e_d`` at the shape's batch (:func:`conv_efficiency`)."""
    rows = max(packed_rows(shape), 1)
    return _at_batch(shape, profile.dense_eff, profile.batched_dense_eff) * rows / (rows + PACKING_ROWS)


def dense_time(shape, profile):
    """``t_d = max(F / (P·T·e_d'), B_act / BW) + 4·W / BW + c_d·I + o_d`` with ``e_d'`` from
    :func:`dense_efficiency`: the weights stream from memory on top of the compute (a forward pass
    finds them evicted by the other layers), and a convolution's packing of its input adds
    (:func:`input_pass`); an inner product at batch <= ``DOT_BATCH`` (dot products
    that stream the weights once, no packing) takes ``max(F / (P·T·e_d), 4·W / BW_fc) + o_d``
    (``o_d`` of :func:`call_overhead`)."""
    if isinstance(shape, FcShape) and shape.batch <= DOT_BATCH and profile.fc_bandwidth > 0:
        return max(shape.flops / (profile.compute * profile.dense_eff), 4.0 * shape.weights / profile.fc_bandwidth) \
            + call_overhead(shape, profile, "dense")
    activations = (4.0 * (shape.inputs + shape.outputs) + _im2col_bytes(shape)) / profile.bandwidth
    weights = 4.0 * shape.weights / profile.bandwidth
    return max(shape.flops / (profile.compute * dense_efficiency(shape, profile)), activations) + weights \
        + input_pass(shape, profile.dense_input_cost) + call_overhead(shape, profile, "dense")


def ccnmm_time(shape, column_density, profile):
    """Lowered GEMM on the fraction ``column_density`` of lowered weight columns that are not all zero:
    the whole input is lowered (im2col, none for 1x1), the kept rows of the lowered matrix are gathered
    into a new one and the bias added in passes of their own (written then read: 8 bytes per value),
    then the product runs on the kept columns."""
    c = min(max(float(column_density), 0.0), 1.0)
    activations = (4.0 * (shape.inputs + shape.outputs) + _im2col_bytes(shape)) / profile.bandwidth
    gathered = 8.0 * c * shape.batch * shape.group * _lowered_values(shape) + 8.0 * shape.outputs
    return max(c * shape.flops / (profile.compute * dense_efficiency(shape, profile)), activations) \
        + (c * 4.0 * shape.weights + gathered) / profile.bandwidth \
        + input_pass(shape, profile.dense_input_cost) + profile.dense_overhead


def conv_work(shape, aligned=None, threads=1):
    """The sparse kernel's plan for a convolution shape (its batch) on ``threads`` threads
    (:func:`pyskim.kernels.sparse.conv_plan_work`; ``aligned`` forces a layout), or None for an empty
    output."""
    oh, ow = shape.out_hw
    if oh <= 0 or ow <= 0:
        return None
    return conv_plan_work(shape.channels // shape.group, shape.num_output // shape.group,
                          (shape.height, shape.width), shape.kernel, shape.pad, shape.stride, shape.dilation,
                          CALIBRATION_DENSITY, aligned, threads, shape.batch)


def lane_utilization(shape, aligned=None, threads=1):
    """``u``: the fraction of vector lanes of the sparse kernel that compute an output."""
    if isinstance(shape, FcShape):
        m = max(shape.batch, 1)
        return m / (VECTOR * math.ceil(m / VECTOR))
    work = conv_work(shape, aligned, threads)
    if work is None:
        return 1.0
    oh, ow = shape.out_hw
    return oh * ow / (VECTOR * work.vectors)


def tile_efficiency(shape, tile_overhead, aligned=None, threads=1):
    """``τ = V / (V + k·tiles)``: the fraction of the sparse kernel's register-tile time that goes to
    multiply-adds. Every nonzero costs each register tile (``tiles`` per output plane, ``V`` vectors
    in all) about ``k = tile_overhead`` vector multiply-adds' worth of time besides its own (its value
    and offset loaded, the value broadcast): hidden behind a 13-vector tile, not behind the 4 or 1
    vectors of GoogLeNet's 7x7 and 4x4 planes. 1 for an inner product."""
    if isinstance(shape, FcShape):
        return 1.0
    work = conv_work(shape, aligned, threads)
    if work is None:
        return 1.0
    return work.vectors / (work.vectors + tile_overhead * work.tiles)


def sparse_efficiency(shape, profile):
    """``e_s``: fraction of P·T the sparse kernel reaches on useful FLOPs for this geometry (``e_s0`` at
    its batch: :func:`conv_efficiency`)."""
    u = lane_utilization(shape, threads=profile.threads)
    if isinstance(shape, FcShape):
        return profile.spmv_eff if shape.batch <= 1 else profile.fc_sparse_eff * u
    work = conv_work(shape, threads=profile.threads)
    if work is None or work.aligned:
        sigma = 1.0
    else:
        sigma = profile.plain_eff if shape.stride == (1, 1) else profile.stride_eff
    return _at_batch(shape, profile.sparse_eff, profile.batched_sparse_eff) * u * sigma * tile_efficiency(shape, profile.tile_overhead,
                                                                      threads=profile.threads)


def accumulator_flops(shape, aligned=None, threads=1):
    """The sparse convolution's register-tile traffic in FLOP equivalents: every output channel's
    accumulator vectors are loaded and stored once per input-channel block (blocks without a nonzero
    are skipped, which at the densities that matter is none of them), two vector memory operations
    each, priced as two 16-lane multiply-adds (the unit ``e_s0`` is measured in); 0 for an inner
    product. It does not depend on the density, so it is part of the fixed cost ``o``."""
    if isinstance(shape, FcShape):
        return 0.0
    work = conv_work(shape, aligned, threads)
    if work is None:
        return 0.0
    return 2.0 * 2 * VECTOR * shape.batch * shape.num_output * work.vectors * work.blocks


def sparse_terms(shape, profile):
    """(a, b, m, o) with ``t_s(d) = max(a·d, b + m·d) + o``: ``a`` is the compute time plus the time
    to stream the nonzeros from memory (a forward pass finds each layer's weights evicted by the
    others: they do not overlap with the compute of so short a call), except for an inner product at
    batch 1, whose dot products prefetch the weights while they compute (``a`` the compute alone:
    the time is the longer of the two), ``b`` the activations' traffic,
    ``m`` the nonzeros' (an inner product's at the measured ``fc_bandwidth``, 6 bytes each with its
    16-bit column indices), o the per-call overhead, the input preparation (:func:`input_pass`) and
    the accumulator traffic (:func:`accumulator_flops`)."""
    a = shape.flops / (profile.compute * sparse_efficiency(shape, profile))
    if isinstance(shape, FcShape):
        in_bytes = 4.0 * shape.inputs
    else:
        hp, wp = shape.padded_hw
        in_bytes = 4.0 * shape.inputs + 8.0 * shape.batch * shape.channels * hp * wp
    b = (in_bytes + 4.0 * shape.outputs) / profile.bandwidth
    m = NNZ_BYTES * shape.weights / profile.bandwidth
    if isinstance(shape, FcShape):       # 16-bit column indices; the weights stream like a dense FC's
        m = (4.0 + (2.0 if shape.num_input <= 65536 else 4.0)) * shape.weights / (profile.fc_bandwidth
                                                                                   or profile.bandwidth)
    o = call_overhead(shape, profile, "sparse") + input_pass(shape, profile.sparse_input_cost) \
        + accumulator_flops(shape, threads=profile.threads) / (profile.compute * _at_batch(shape, profile.sparse_eff, profile.batched_sparse_eff))
    overlapped = isinstance(shape, FcShape) and shape.batch <= 1
    return (a if overlapped else a + m), b, m, o


def sparse_time(shape, density, profile):
    """``t_s(d) = max(a·d, b + m·d) + o`` (:func:`sparse_terms`)."""
    a, b, m, o = sparse_terms(shape, profile)
    d = min(max(float(density), 0.0), 1.0)
    return max(a * d, b + m * d) + o


def break_even_density(shape, profile):
    """Largest density in [0, 1] at which the sparse time is at most the dense time."""
    a, b, m, o = sparse_terms(shape, profile)
    budget = dense_time(shape, profile) - o
    if budget < b:                       # even an all-zero layer is slower sparse
        return 0.0
    limits = [budget / a if a > 0 else math.inf, (budget - b) / m if m > 0 else math.inf]
    return min(1.0, max(0.0, min(limits)))


def saturation_density(shape, profile):
    """Density below which the sparse layer is bandwidth/overhead bound (compute = memory term)."""
    a, b, m, _ = sparse_terms(shape, profile)
    if a <= m:
        return 1.0
    return min(1.0, max(0.0, b / (a - m)))


def predict(shape, density, profile, column_density=None):
    """:class:`Prediction` for ``shape`` at weight ``density`` on the machine ``profile``
    (``column_density``: fraction of lowered weight columns that are not all zero, for LOWERED_CCNMM;
    default: no saving)."""
    dense = dense_time(shape, profile)
    sparse = sparse_time(shape, density, profile)
    ccnmm = math.inf if isinstance(shape, FcShape) else ccnmm_time(
        shape, 1.0 if column_density is None else column_density, profile)
    mode = fastest({"dense": dense, "sparse": sparse, "ccnmm": ccnmm})
    return Prediction(dense, sparse, ccnmm, break_even_density(shape, profile),
                      saturation_density(shape, profile), mode)


def fastest(times):
    """The mode of least time in ``times`` ({mode: seconds}); ties go to ``"dense"`` (no packing)."""
    return min(times, key=lambda mode: (times[mode], mode != "dense"))


def predicted_times(shape, density, profile, column_density=None):
    """{mode: predicted seconds} of the modes ``shape`` can run: ``"dense"``, ``"sparse"`` and, for a
    convolution, ``"ccnmm"`` (:func:`predict`)."""
    p = predict(shape, density, profile, column_density)
    times = {"dense": p.dense, "sparse": p.sparse}
    if not isinstance(shape, FcShape):
        times["ccnmm"] = p.ccnmm
    return times


def choose(shape, density, profile, column_density=None, candidates=("dense", "sparse", "ccnmm")):
    """The predicted fastest of ``candidates`` (``"dense"``, ``"sparse"``, ``"ccnmm"``) that ``shape``
    can run."""
    times = predicted_times(shape, density, profile, column_density)
    return fastest({mode: times[mode] for mode in candidates if mode in times})


def in_net(profile, forward_bytes):
    """``profile`` as a layer of a net that moves ``forward_bytes`` per forward pass sees it: with
    ``f = min(1, forward_bytes / EVICTED_BYTES)``, every per-call overhead ``o_warm + f·(o − o_warm)``
    and the input costs ``f·c`` (see the module docstring). ``forward_bytes`` None (not known) or
    at least ``EVICTED_BYTES`` gives ``profile`` itself."""
    if forward_bytes is None or forward_bytes >= EVICTED_BYTES:
        return profile
    f = max(float(forward_bytes), 0.0) / EVICTED_BYTES
    overheads = {name: getattr(profile, f"warm_{name}") + f * (getattr(profile, name) - getattr(profile, f"warm_{name}"))
                 for name in ("dense_overhead", "sparse_overhead", "dense_fc_overhead", "sparse_fc_overhead")}
    return dataclasses.replace(profile, **overheads, dense_input_cost=f * profile.dense_input_cost,
                               sparse_input_cost=f * profile.sparse_input_cost)


def speedup_curve(shape, densities, profile):
    """Predicted dense/sparse speedup at each density on the machine ``profile``."""
    dense = dense_time(shape, profile)
    return [dense / sparse_time(shape, d, profile) for d in densities]


# -- default machine numbers -----------------------------------------------------------------------

def peak_gflops_for_isa(cpu_flags):
    """Documented per-thread peak GFLOP/s for a CPU with these feature flags (see the module docstring)."""
    if "avx512f" in cpu_flags:
        return PEAK_GFLOPS_AVX512
    if "avx2" in cpu_flags and "fma" in cpu_flags:
        return PEAK_GFLOPS_AVX2
    return PEAK_GFLOPS_OTHER


def default_bandwidth(threads):
    """Documented copy bandwidth in bytes/s of ``threads`` threads (measured for 1 and 2 on the project
    machine; more threads scale the 2-thread figure, up to 4 threads)."""
    gbs = DEFAULT_BANDWIDTH_GBS.get(threads, DEFAULT_BANDWIDTH_GBS[2] * min(threads, 4) / 2)
    return gbs * 1e9
