"""Calibration of the roofline model's machine profile (:mod:`pyskim.perf.model`).

:func:`calibrate` measures, on this machine and thread count, the copy bandwidth and the
efficiencies of pyskim's own kernels on a mid-size layer: pyskim's dense Convolution layer (its own
product, im2col fused into the packing), less the per-call overhead of a tiny 1x1 one, the direct
sparse convolution at density 0.1 with stride 1 and 2, less that of a tiny sparse layer (both at
stride 1 again at batch 8, where several threads run whole images apart), the sparse
inner product at batch 16 and 1 and the dense one at batch 1 (weights streamed: the matrices are
larger than L2). Then it fits the per-call overheads and input costs of layers inside a forward pass
to a small calibration net (:mod:`pyskim.perf.net_costs`). Two to three seconds per round.
Each time is the best of several calls; a busy machine still slows them (the profile's ``source``
records the load average per CPU at calibration time). :func:`calibrate_and_save` adds a progress
line on stderr and stores the result in the cache of :mod:`pyskim.perf.profile`; only the commands
that are asked to measure call it (``pyskim calibrate``, ``pyskim time``, ``tools/perf_model.py
--recalibrate``), never a forward pass.
"""
import concurrent.futures
import dataclasses
import math
import statistics
import sys
import time

import numpy as np

from ..core.blob import Blob
from ..core.net import Net
from ..kernels.csr import pack_conv_weights, pack_fc_weights
from ..kernels.gemm import matmul
from ..kernels.sparse import sparse_conv_forward, sparse_fc_forward
from ..kernels.threads import using_threads
from ..layers import create_layer
from ..proto import caffe_pb2
from .model import (
    CALIBRATION_BATCH,
    CALIBRATION_DENSITY,
    PACKING_ROWS,
    ConvShape,
    FcShape,
    accumulator_flops,
    conv_work,
    lane_utilization,
    packed_rows,
    tile_efficiency,
)
from .net_costs import CHAIN_ITERATIONS, measure_net_costs
from .profile import cache_path, current_load, default_profile, resolve_threads, save_profile

#: The convolution measured (AlexNet's conv4 / conv5 without groups: a mid-size 3x3 layer).
CALIBRATION_CONV = ConvShape(batch=1, channels=256, height=13, width=13, num_output=256, kernel=(3, 3),
                             pad=(1, 1))
#: The inner products: sparse at batch 16 and 1, and dense at batch 1 on weights larger than L2 (fc7
#: of AlexNet is 4096 x 4096), so that the rates are those of weights streamed from L3 or memory.
CALIBRATION_FC = FcShape(batch=16, num_input=4096, num_output=4096)
CALIBRATION_DENSE_FC = FcShape(batch=1, num_input=4096, num_output=4096)
#: Calls per measurement (the best one counts): full calibration, quick one (``quick=True``).
REPEATS = {False: (20, 50), True: (3, 5)}
#: The largest per-tile overhead ``k`` a calibration reports (vector multiply-adds per nonzero and tile).
TILE_OVERHEAD_MAX = 8.0
#: Two rounds agree on a coefficient within this fraction (per-call overheads, microseconds that a
#: thread's wake-up can double: OVERHEAD_AGREEMENT); at most MAX_ROUNDS rounds are measured.
AGREEMENT = 0.15
OVERHEAD_AGREEMENT = 0.5
MAX_ROUNDS = 4

# -- calibration -----------------------------------------------------------------------------------

def _best(fn, repeats, untimed=None):
    """The shortest of up to ``repeats`` timed calls of ``fn`` after one warm-up call (at least 3,
    then stopping once 0.4 s of calls have passed); ``untimed()`` runs before each call, untimed."""
    fn()
    best = math.inf
    spent = 0.0
    for i in range(repeats):
        if untimed is not None:
            untimed()
        t0 = time.perf_counter()
        fn()
        seconds = time.perf_counter() - t0
        best, spent = min(best, seconds), spent + seconds
        if i >= 2 and spent > 0.4:
            break
    return best


def _dense_efficiency_ratio(shape):
    """e_d / (the efficiency measured on ``shape``): the model's packing factor undone."""
    rows = packed_rows(shape)
    return (rows + PACKING_ROWS) / rows


def _evictor(megabytes=64):
    """A call that streams ``megabytes`` through the caches, so that the next call finds its weights
    where a forward pass finds them: after the other layers evicted them."""
    src = np.ones(megabytes * (1 << 20) // 4, np.float32)
    dst = np.empty_like(src)
    return lambda: np.copyto(dst, src)


def _kernel_work(shape, density, tile_overhead, aligned, threads=1):
    """The sparse kernel's work on ``shape`` at ``density`` in the unit ``e_s0`` counts (FLOPs at
    ``e_s0``): the useful ones over the lanes and the register-tile time that compute them (``u``,
    ``τ``), plus the accumulator traffic (see the model)."""
    return density * shape.flops / (lane_utilization(shape, aligned, threads)
                                    * tile_efficiency(shape, tile_overhead, aligned, threads)) \
        + accumulator_flops(shape, aligned, threads)


def _tile_overhead(vectors, tiles, ratio):
    """``k`` from a plan of ``vectors`` vectors in ``tiles`` register tiles and the same plan in
    one-vector tiles taking ``ratio`` times as long: ``ratio = (V + k·V) / (V + k·tiles)``."""
    spare = vectors - ratio * tiles
    return TILE_OVERHEAD_MAX if spare <= 0 else (ratio - 1.0) * vectors / spare


def _sigma(shape, density, work_time, aligned, tile_overhead):
    """The efficiency multiplier sigma of a plan of ``shape`` at ``density`` whose measured time is
    ``work_time`` in units of 1 / (P·T·e_s0) seconds (time x P·T·e_s0): its useful FLOPs over the
    FLOPs it took beyond its accumulator traffic and its tiles' overhead."""
    useful = work_time - accumulator_flops(shape, aligned)
    return density * shape.flops / (lane_utilization(shape, aligned) * tile_efficiency(shape, tile_overhead, aligned)
                                    * max(useful, 1e-3 * work_time))


def measure_bandwidth(threads=1, megabytes=64):
    """Copy bandwidth in bytes/s (2 × bytes per copied element, no write-allocate), ``threads``
    threads each copying its share (numpy releases the GIL while copying)."""
    n = megabytes * (1 << 20) // 4
    src = np.ones(n, np.float32)
    dst = np.empty_like(src)
    bounds = np.linspace(0, n, threads + 1).astype(int)
    parts = [(dst[a:b], src[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    if threads == 1:
        def run():
            np.copyto(dst, src)
        return 8.0 * n / _best(run, 5)
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        def run():
            list(pool.map(lambda p: np.copyto(*p), parts))
        return 8.0 * n / _best(run, 5)


def _conv_layer(channels, num_output, size, kernel, pad, stride=1, batch=1):
    lp = caffe_pb2.LayerParameter(name="calibration", type="Convolution")
    cp = lp.convolution_param
    cp.num_output = num_output
    cp.kernel_size.append(kernel)
    cp.pad.append(pad)
    cp.stride.append(stride)
    cp.weight_filler.type = "gaussian"
    layer = create_layer(lp)
    bottom, top = Blob(batch, channels, size, size), Blob()
    layer.setup([bottom], [top])
    bottom.data[...] = 1.0
    return layer, bottom, top


def _sparse_layer_net():
    """A built Net of one 1x1 Convolution (1 channel, 4x4) in DIRECT_SCONV: its layer's forward costs
    what a sparse layer's forward costs besides the kernel's work (the engine's weight check and mode
    dispatch, the kernel call), the per-call overhead ``o_s``. (The engine is attached by
    :mod:`pyskim.sparse`'s post-build hook, as in every Net.)"""
    param = caffe_pb2.NetParameter()
    data = param.layer.add(name="data", type="Input", top=["data"])
    data.input_param.shape.add().dim.extend([1, 1, 4, 4])
    conv = param.layer.add(name="conv", type="Convolution", bottom=["data"], top=["conv"])
    conv.convolution_param.num_output = 1
    conv.convolution_param.kernel_size.append(1)
    conv.convolution_param.conv_mode = caffe_pb2.ConvolutionParameter.DIRECT_SCONV
    net = Net(param, caffe_pb2.TEST)
    net.layers[1].blobs[0].data[...] = 1.0
    net.forward_prefilled()
    return net


def _net(seconds, overhead):
    """A measured time less the per-call overhead, never below half of it: with several threads the
    tiny layer that measures the overhead also pays the workers' wake-up, which can exceed a whole
    batch-1 call."""
    return max(seconds - overhead, 0.5 * seconds, 1e-7)


def _measure(threads, quick, report):
    """One round of measurements: the profile's coefficients (name -> value) on ``threads`` threads."""
    repeats, overhead_repeats = REPEATS[bool(quick)]
    with using_threads(threads):
        base = default_profile(threads)
        report("bandwidth")
        bandwidth = measure_bandwidth(threads, 16 if quick else 64)
        compute = base.peak_flops * threads
        rng = np.random.default_rng(0)
        s = CALIBRATION_CONV
        # dense: pyskim's Convolution layer (its own product), and its per-call overhead on a tiny layer
        report("dense convolution")
        layer, bottom, top = _conv_layer(s.channels, s.num_output, s.height, 3, 1)
        t_dense = _best(lambda: layer.forward([bottom], [top]), repeats)
        tiny, tb, tt = _conv_layer(1, 1, 4, 1, 0)
        o_d = _best(lambda: tiny.forward([tb], [tt]), overhead_repeats)
        dense_eff = s.flops / (compute * _net(t_dense, o_d)) * _dense_efficiency_ratio(s)
        # sparse conv: stride 1 and stride 2, density 0.1; overhead from a tiny layer
        report("sparse convolution")
        x = rng.standard_normal((1, s.channels, s.height, s.width)).astype(np.float32)
        w = rng.standard_normal((s.num_output, s.channels, 3, 3)).astype(np.float32)
        w *= rng.random(w.shape) < CALIBRATION_DENSITY
        density = np.count_nonzero(w) / w.size
        csr = pack_conv_weights(w, 1, (s.height, s.width), 1, 1)
        out = np.empty((1, s.num_output) + s.out_hw, np.float32)
        # e_s0 is the aligned plan's (on several threads a single image runs plain plans by default:
        # this one is forced, and the plain plan's sigma below is relative to it at every thread count)
        aligned = {"aligned": 1}
        t_sparse = _best(lambda: sparse_conv_forward(x, csr, None, 1, 1, 1, s.out_hw, out=out, blocking=aligned),
                         repeats)
        tiny_net = _sparse_layer_net()
        o_s = _best(lambda: tiny_net.layers[1].forward(tiny_net.bottom_vec(1), tiny_net.top_vec(1)),
                    overhead_repeats)
        # k: the same plan in one-vector register tiles
        t_tiny_tiles = _best(lambda: sparse_conv_forward(x, csr, None, 1, 1, 1, s.out_hw, out=out,
                                                         blocking={"aligned": 1, "tile": 1}), repeats)
        plan = conv_work(s, True, threads)
        tile_overhead = _tile_overhead(plan.vectors, plan.tiles, _net(t_tiny_tiles, o_s) / _net(t_sparse, o_s))
        # e_s0 prices the useful multiply-adds and the accumulator traffic alike (see the model)
        sparse_eff = _kernel_work(s, density, tile_overhead, True, threads) / (compute * _net(t_sparse, o_s))
        # sigma of the plain layout at stride 1, and of stride 2
        t_plain = _best(lambda: sparse_conv_forward(x, csr, None, 1, 1, 1, s.out_hw, out=out,
                                                    blocking={"aligned": 0}), repeats)
        plain_eff = _sigma(s, density, compute * sparse_eff * _net(t_plain, o_s), False, tile_overhead)
        s2 = dataclasses.replace(s, stride=(2, 2))
        out2 = np.empty((1, s.num_output) + s2.out_hw, np.float32)
        t_stride = _best(lambda: sparse_conv_forward(x, csr, None, 2, 1, 1, s2.out_hw, out=out2), repeats)
        stride_eff = _sigma(s2, density, compute * sparse_eff * _net(t_stride, o_s), False, tile_overhead)
        # the dense and the sparse stride-1 efficiency again at CALIBRATION_BATCH images
        sb = dataclasses.replace(s, batch=CALIBRATION_BATCH)
        layer_b, bottom_b, top_b = _conv_layer(s.channels, s.num_output, s.height, 3, 1, batch=sb.batch)
        t_dense_b = _best(lambda: layer_b.forward([bottom_b], [top_b]), repeats)
        batched_dense_eff = sb.flops / (compute * _net(t_dense_b, o_d)) * _dense_efficiency_ratio(sb)
        xb = rng.standard_normal((sb.batch, s.channels, s.height, s.width)).astype(np.float32)
        outb = np.empty((sb.batch, s.num_output) + s.out_hw, np.float32)
        t_sparse_b = _best(lambda: sparse_conv_forward(xb, csr, None, 1, 1, 1, s.out_hw, out=outb, blocking=aligned),
                           repeats)
        batched_sparse_eff = _kernel_work(sb, density, tile_overhead, True, threads) / (compute * _net(t_sparse_b, o_s))
        # sparse inner product at batch 16 and 1
        report("sparse inner product")
        f = CALIBRATION_FC
        wf = rng.standard_normal((f.num_output, f.num_input)).astype(np.float32)
        wf *= rng.random(wf.shape) < CALIBRATION_DENSITY
        fc = pack_fc_weights(wf)
        xf = rng.standard_normal((f.batch, f.num_input)).astype(np.float32)
        yf = np.empty((f.batch, f.num_output), np.float32)
        t_fc = _best(lambda: sparse_fc_forward(xf, fc, None, out=yf), repeats)
        fc_eff = fc.density * f.flops / (compute * lane_utilization(f) * _net(t_fc, o_s))
        t_mv = _best(lambda: sparse_fc_forward(xf[:1], fc, None, out=yf[:1]), repeats)
        spmv_eff = fc.density * f.flops / f.batch / (compute * _net(t_mv, o_s))
        report("dense inner product")
        g = CALIBRATION_DENSE_FC
        wd = rng.standard_normal((g.num_output, g.num_input)).astype(np.float32)   # as InnerProduct stores it
        yd = np.empty((1, g.num_output), np.float32)
        evict = _evictor()           # a forward pass reads each layer's weights after the others ran
        t_gemv = _best(lambda: matmul(xf[:1, :g.num_input], wd.T, out=yd), repeats, untimed=evict)
        fc_bandwidth = 4.0 * g.weights / _net(t_gemv, o_d)

        def clip(v, lo, hi):
            return float(min(max(v, lo), hi))
        coefficients = {"bandwidth": float(bandwidth), "dense_eff": clip(dense_eff, 0.05, 1.0),
                        "sparse_eff": clip(sparse_eff, 0.005, 1.0), "plain_eff": clip(plain_eff, 0.1, 1.5),
                        "batched_dense_eff": clip(batched_dense_eff, 0.05, 1.0),
                        "batched_sparse_eff": clip(batched_sparse_eff, 0.005, 1.0),
                        "tile_overhead": clip(tile_overhead, 0.0, TILE_OVERHEAD_MAX),
                        "stride_eff": clip(stride_eff, 0.1, 1.5),
                        "fc_sparse_eff": clip(fc_eff, 0.002, 1.0), "spmv_eff": clip(spmv_eff, 0.0005, 1.0),
                        "fc_bandwidth": float(fc_bandwidth)}
        # the overheads and input costs of layers inside a forward pass, fitted to the chain's layers
        report("layers in a net")
        costs = measure_net_costs(dataclasses.replace(base, **coefficients), 8 if quick else CHAIN_ITERATIONS)
    coefficients.update({name: clip(value, 0.0, 1e-2 if name.endswith("overhead") else 1e-6)
                         for name, value in costs.items()})
    return coefficients


def _spread(values):
    """(max - min) / median of a coefficient's measurements (0 for a single one)."""
    middle = statistics.median(values)
    return (max(values) - min(values)) / middle if middle > 0 else 0.0


def _agreeing(values, tolerance):
    """Whether two of ``values`` agree within ``tolerance`` of their mean (the coefficient was seen
    twice; any other round is an outlier the median ignores)."""
    ordered = sorted(values)
    return any(b - a <= tolerance * (a + b) / 2 for a, b in zip(ordered, ordered[1:]))


def calibrate(threads=None, quick=False, progress=None):
    """Measure BW, e_d, e_s0 (at batch 1 and 8), k, the two σ, e_fc, e_spmv, BW_fc, o_d, o_s, c_d, c_s
    and the warm o_d, o_s on this machine with ``threads`` threads (default: pyskim's kernel thread
    count); two to three seconds per round, less with ``quick`` (fewer calls per measurement, a smaller
    copy: noisier). ``progress(stage)`` is called as
    each stage starts.

    Every coefficient is checked against a second measurement: the rounds repeat (at least 2, at most
    ``MAX_ROUNDS``) until each coefficient was measured twice within ``AGREEMENT`` of each other
    (per-call overheads within ``OVERHEAD_AGREEMENT``), and the profile takes each coefficient's
    median. A profile whose coefficients never agreed is marked ``consistent=False`` (logged; it is
    used, and :func:`pyskim.perf.profile.needs_calibration` asks for a new one)."""
    threads = resolve_threads(threads)
    report = progress or (lambda stage: None)
    rounds = []
    while len(rounds) < MAX_ROUNDS:
        rounds.append(_measure(threads, quick, report))
        if len(rounds) >= 2 and all(_agreeing([r[name] for r in rounds], _tolerance(name)) for name in rounds[0]):
            break
    values = {name: [r[name] for r in rounds] for name in rounds[0]}
    consistent = all(_agreeing(v, _tolerance(name)) for name, v in values.items())
    load = current_load()
    return dataclasses.replace(
        default_profile(threads), **{name: float(statistics.median(v)) for name, v in values.items()},
        source=f"calibrated {time.strftime('%Y-%m-%d %H:%M:%S')}, load {load:.1f}/CPU, {len(rounds)} rounds",
        load=float(load), consistent=consistent,
        spread=float(max(_spread(v) for name, v in values.items() if _tolerance(name) == AGREEMENT)))


def _tolerance(name):
    return OVERHEAD_AGREEMENT if name.endswith(("overhead", "input_cost")) else AGREEMENT


def calibrate_and_save(threads=None, quick=False, stream=None):
    """:func:`calibrate` with a progress line on ``stream`` (default stderr), then store the profile in
    the cache (:func:`pyskim.perf.profile.save_profile`, which also makes it this process's profile);
    returns it."""
    stream = stream or sys.stderr
    threads = resolve_threads(threads)
    start = time.perf_counter()
    stream.write(f"Calibrating the performance model for {threads} thread(s):")
    stream.flush()

    def progress(stage):
        stream.write(f" {stage}...")
        stream.flush()
    profile = calibrate(threads, quick, progress)
    saved = "cached in" if save_profile(profile) else "could not write the cache"
    stream.write(f" done in {time.perf_counter() - start:.1f} s, {saved} {cache_path()}\n")
    if not profile.consistent:
        stream.write(f"Warning: the calibration's rounds disagreed (spread {profile.spread:.0%}); the machine is "
                     "probably busy: `pyskim calibrate` again on a quiet machine\n")
    stream.flush()
    return profile
