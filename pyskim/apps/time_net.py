"""``pyskim time`` and ``python tools/time.py``: Caffe's ``caffe time``, plus a per-layer sparse report.

    pyskim time -model M [-weights W] ...   (Caffe's flags: :mod:`pyskim.apps.caffe_command`)
    python tools/time.py --model M [--weights W] [--iterations N] [--forward_only] [--phase TRAIN|TEST]
                         [--batch B] [--threads T] [--mode dense|sparse|auto] [--compare] [--recalibrate]

The benchmark lines are ``caffe time``'s (``Average time per layer``, ``<layer>\\tforward: X ms.``,
``Average Forward pass``, ... ``*** Benchmark ends ***``), with the same averages. After them comes a
table with, for every convolution / inner-product layer: the conv_mode / gemm_mode it ran (``AUTO>``
marks the performance model's pick), its weight density, its forward time, its dense-equivalent
GFLOP/s (dense FLOPs / time, SkimCaffe's "effective GF/s") and the roofline model's predicted time
for the mode it ran (:mod:`pyskim.perf.model`); the timing itself is :mod:`pyskim.perf.timing`.

* ``--mode auto`` (default) sets ``AUTO`` on every convolution / inner-product layer whose prototxt
  sets no conv_mode / gemm_mode, so the model picks dense or sparse per layer (a layer with dense
  weights stays dense); ``--mode sparse`` forces DIRECT_SCONV / SPMDM and ``--mode dense``
  LOWERED_GEMM / GEMM on every such layer.
* ``--batch B`` replaces the batch size of the inputs (Input, DummyData, data layers).
* ``--threads T`` sets the size of pyskim's thread pool.
* The performance model's machine profile: when none is cached for this machine and thread count (or
  the cached one was measured on a busy machine that is quiet now), or with ``--recalibrate``, the
  tool first calibrates it (:mod:`pyskim.perf.calibrate`, about a second, a progress line on stderr)
  and caches it, as ``pyskim calibrate`` does; ``PYSKIM_PERFMODEL=default`` skips that and uses the
  default profile.
* ``--compare`` then runs the same net (same weights) dense and in the sparse mode (``--mode``, or
  ``auto`` when that is ``dense``), forward only, alternating the two each iteration, and prints each
  layer's average dense and sparse time, their ratio, and the whole-net speedup.
* ``--accuracy`` runs the net forced dense, forced sparse and AUTO (the dense build's weights in all
  three), alternating, and prints for every convolution / inner-product layer the measured and the
  predicted time of both modes with the model's error, the mode AUTO ran (after timing its close
  calls, :mod:`pyskim.sparse.trial`) and how much slower that was than the faster mode
  (:mod:`pyskim.perf.accuracy`), then how many predictions were within 25% and how many AUTO picks
  within 10%. A ReLU fused into a sparse layer is timed with that layer.
"""
import logging

from ..errors import PyskimError
from ..io.upgrade import read_net_text
from ..perf.accuracy import AUTO_REGRET_LIMIT, PREDICTION_TOLERANCE, LayerAccuracy, summarize
from ..perf.calibrate import calibrate_and_save
from ..perf.profile import default_profile_forced, get_profile, needs_calibration
from ..perf.timing import compare_nets, time_layers, time_nets
from ..proto import caffe_pb2
from ..pycaffe.net import Net
from ..sparse import apply_mode, describe, forward_bytes, settle_auto_trials
from . import caffe_command, flags

log = logging.getLogger("pyskim")

MODES = ("dense", "sparse", "auto")
#: The mode kind of each mode a layer can run (AUTO's pick in the accuracy table).
PICKS = {"LOWERED_GEMM": "dense", "GEMM": "dense", "DIRECT_SCONV": "sparse", "SPMDM": "sparse",
         "LOWERED_CCNMM": "ccnmm"}
_BATCH_FIELDS = ("data_param", "image_data_param", "memory_data_param", "hdf5_data_param",
                 "window_data_param")


def build_parser():
    """``caffe.cpp``'s flag set (:func:`pyskim.apps.caffe_command.build_parser`) plus ``-recalibrate``."""
    parser = caffe_command.build_parser()
    flags.define(parser, "recalibrate", False, "Optional; measure this machine for the performance model "
                                               "again (done anyway when no profile is cached).")
    flags.define(parser, "accuracy", False, "Optional; also time the net dense, sparse and AUTO and print "
                                            "the model's predicted vs measured time per layer.")
    return parser


def _fmt(value):
    return f"{float(value):g}"


def set_batch(param, batch):
    """Set the batch size (first dimension) of every input of a NetParameter."""
    for shape in param.input_shape:
        if len(shape.dim):
            shape.dim[0] = batch
    for i in range(0, len(param.input_dim), 4):
        param.input_dim[i] = batch
    for lp in param.layer:
        if lp.type == "Input":
            for shape in lp.input_param.shape:
                if len(shape.dim):
                    shape.dim[0] = batch
        elif lp.type == "DummyData":
            dp = lp.dummy_data_param
            for shape in dp.shape:
                if len(shape.dim):
                    shape.dim[0] = batch
            for i in range(len(dp.num)):
                dp.num[i] = batch
        for field in _BATCH_FIELDS:
            if lp.HasField(field) and getattr(lp, field).batch_size:
                getattr(lp, field).batch_size = batch


def load_param(model, mode="auto", batch=0):
    """The NetParameter of ``model`` with ``mode`` applied (see the module docstring) and the batch set."""
    if mode not in MODES:
        raise PyskimError(f"mode must be dense, sparse or auto, got \"{mode}\"")
    param = read_net_text(model)
    apply_mode(param, mode)
    if batch < 0:
        raise PyskimError(f"batch must be positive, got {batch}")
    if batch:
        set_batch(param, batch)
    return param


def _phase(args):
    phase = {"": caffe_pb2.TRAIN, "TRAIN": caffe_pb2.TRAIN, "TEST": caffe_pb2.TEST}.get(args.phase)
    if phase is None:
        raise PyskimError(f"phase must be \"TRAIN\" or \"TEST\", got \"{args.phase}\"")
    return phase


def build_net(args, mode):
    """The net of ``args.model`` (``-phase``, ``-level``, ``-stage``, ``-weights``, ``-batch``) with
    conv_mode / gemm_mode ``mode`` applied."""
    return Net(load_param(args.model, mode, args.batch), _phase(args), level=args.level,
               stages=caffe_command.stages(args), weights=args.weights or None)


def caffe_time(net, iterations, forward_only):
    """Caffe's ``time``: a warm-up forward (and backward) pass, then the timed loop
    (:func:`pyskim.perf.timing.time_layers`) with ``caffe time``'s log lines; returns its
    :class:`~pyskim.perf.timing.NetTiming`. Before the loop, AUTO layers time their close calls
    (:func:`pyskim.sparse.settle_auto_trials`), so that the loop times the modes they settle on."""
    log.info("Performing Forward")
    _, initial_loss = net.forward_prefilled()
    log.info("Initial loss: %s", _fmt(initial_loss))
    if not forward_only:
        log.info("Performing Backward")
        net.backward_from_to(len(net.layers) - 1, 0)
    settle_auto_trials(net)                 # AUTO's close calls timed before the benchmark (not Caffe's)
    log.info("*** Benchmark begins ***")
    log.info("Testing for %d iterations.", iterations)
    kind = "forward" if forward_only else "forward-backward"

    def log_iteration(index, seconds):
        log.info("Iteration: %d %s time: %d ms.", index + 1, kind, int(seconds * 1e3))
    timing = time_layers(net, iterations, forward_only, log_iteration)
    log.info("Average time per layer: ")
    for i, name in enumerate(timing.layer_names):
        log.info("%10s\tforward: %s ms.", name, _fmt(timing.forward[i] * 1e3))
        if not forward_only:
            log.info("%10s\tbackward: %s ms.", name, _fmt(timing.backward[i] * 1e3))
    total_ms = int(timing.wall_seconds * 1e3)
    log.info("Average Forward pass: %s ms.", _fmt(timing.forward_pass * 1e3))
    if not forward_only:
        log.info("Average Backward pass: %s ms.", _fmt(timing.backward_pass * 1e3))
        log.info("Average Forward-Backward: %s ms.", _fmt(total_ms / max(iterations, 1)))
    log.info("Total Time: %s ms.", _fmt(total_ms))
    log.info("*** Benchmark ends ***")
    return timing


def layer_rows(net, forward_seconds):
    """Per conv / IP layer: (name, mode, density, forward s, dense-equivalent GFLOP/s, predicted s)."""
    rows, net_bytes = [], forward_bytes(net)
    for i, layer in enumerate(net.layers):
        info = describe(layer, net.bottom_vec(i), net_bytes)
        if info is None:
            continue
        mode = info["used"] if info["requested"] != "AUTO" else f"AUTO>{info['used']}"
        t = forward_seconds[i]
        gflops = info["flops"] / t / 1e9 if info["flops"] and t > 0 else None
        rows.append((layer.name, mode, info["density"], t, gflops, info["predicted"]))
    return rows


def log_layer_table(rows):
    if not rows:
        return
    profile = get_profile()
    log.info("Sparse modes per layer (model: %s, %d thread(s)):", profile.source, profile.threads)
    log.info("  %-22s %-22s %8s %11s %9s %13s", "layer", "mode", "density", "forward ms", "GFLOP/s",
             "predicted ms")
    for name, mode, density, t, gflops, predicted in rows:
        log.info("  %-22s %-22s %8.4f %11.3f %9s %13s", name, mode, density, t * 1e3,
                 "-" if gflops is None else f"{gflops:.1f}", "-" if predicted is None else f"{predicted * 1e3:.3f}")


def log_comparison(comparison, sparse_net, sparse_mode):
    """Log a :class:`~pyskim.perf.timing.NetComparison`: per layer its mode in the sparse net, dense and
    sparse ms and their ratio, then the whole-net times and speedup."""
    modes = {row[0]: row[1] for row in layer_rows(sparse_net, [row.sparse for row in comparison.layers])}
    log.info("Dense vs %s, average forward time per layer over %d iterations:", sparse_mode,
             comparison.iterations)
    log.info("  %-22s %-22s %10s %10s %8s", "layer", "mode", "dense ms", "sparse ms", "speedup")
    for row in comparison.layers:
        ratio = "-" if row.speedup is None else f"{row.speedup:.2f}x"
        log.info("  %-22s %-22s %10.3f %10.3f %8s", row.name, modes.get(row.name, "-"), row.dense * 1e3,
                 row.sparse * 1e3, ratio)
    log.info("Whole net: dense %.3f ms, %s %.3f ms, speedup %.2fx", comparison.dense_total * 1e3, sparse_mode,
             comparison.sparse_total * 1e3, comparison.speedup)


def accuracy_rows(args):
    """:class:`~pyskim.perf.accuracy.LayerAccuracy` of every convolution / inner-product layer of
    ``args.model``: built forced dense, forced sparse and AUTO with the same weights (the dense build's,
    copied), timed alternating over ``args.iterations`` forwards once AUTO has timed its close calls;
    each mode's time predicted for a layer of its own net (:func:`pyskim.sparse.forward_bytes`)."""
    nets = [build_net(args, mode) for mode in ("dense", "sparse", "auto")]
    for other in nets[1:]:
        for name, blobs in nets[0].params.items():
            for mine, theirs in zip(other.params[name], blobs):
                mine.data[...] = theirs.data
    settle_auto_trials(nets[2])             # AUTO's close calls timed before its own timing starts
    dense, sparse, auto = time_nets(nets, args.iterations)
    dense_bytes, sparse_bytes = forward_bytes(nets[0]), forward_bytes(nets[1])
    rows = []
    for i, layer in enumerate(nets[0].layers):
        info = describe(layer, nets[0].bottom_vec(i), dense_bytes)
        if info is None or info["prediction"] is None:
            continue
        # the same layer of the dense net (its weights in memory), priced as a layer of the sparse net
        as_sparse = describe(layer, nets[0].bottom_vec(i), sparse_bytes)["prediction"]
        used = describe(nets[2].layers[i], nets[2].bottom_vec(i))["used"]
        rows.append(LayerAccuracy(layer.name, info["density"], {"dense": dense[i], "sparse": sparse[i]},
                                  {"dense": info["prediction"].dense, "sparse": as_sparse.sparse},
                                  PICKS.get(used, used), auto[i]))
    return rows


def log_accuracy(rows, iterations):
    """Log the model-accuracy table of ``rows`` and its summary."""
    profile = get_profile()
    log.info("Model accuracy, average forward ms over %d iterations (model: %s, %d thread(s)):", iterations,
             profile.source, profile.threads)
    log.info("  %-22s %8s %9s %9s %7s %9s %9s %7s  %-16s %8s %7s", "layer", "density", "dense ms", "predicted",
             "error", "sparse ms", "predicted", "error", "AUTO picked", "AUTO ms", "regret")
    for row in rows:
        log.info("  %-22s %8.4f %9.3f %9.3f %+6.0f%% %9.3f %9.3f %+6.0f%%  %-16s %8.3f %+6.0f%%", row.name,
                 row.density, row.measured["dense"] * 1e3, row.predicted["dense"] * 1e3, 100 * row.error("dense"),
                 row.measured["sparse"] * 1e3, row.predicted["sparse"] * 1e3, 100 * row.error("sparse"),
                 row.auto_pick, row.auto_seconds * 1e3, 100 * row.regret)
    summary = summarize(rows)
    log.info("Model within %d%%: %d of %d layer times (%.0f%%); AUTO within %d%% of the faster mode on %d of %d "
             "layers (worst %+.0f%%)", 100 * PREDICTION_TOLERANCE, summary.predictions_within, summary.predictions,
             100 * summary.prediction_share, 100 * AUTO_REGRET_LIMIT, summary.auto_within, summary.layers,
             100 * summary.worst_regret)


def ensure_profile(recalibrate):
    """Calibrate the performance model now (progress on stderr, result cached) when ``recalibrate`` or
    when this machine has no usable cached profile for the current thread count (none, or one measured
    on a busy machine that is quiet now), unless ``PYSKIM_PERFMODEL=default`` asks for the default
    profile: ``pyskim time`` measures the machine anyway, and its AUTO picks and predicted times are
    then this machine's."""
    if recalibrate or (not default_profile_forced() and needs_calibration()):
        calibrate_and_save()


def run(args):
    """The ``time`` command (``pyskim time`` and ``tools/time.py``)."""
    if not args.model:
        raise PyskimError("Need a model definition to time.")
    _phase(args)
    caffe_command.use_cpu(args)
    caffe_command.apply_threads(args.threads)
    ensure_profile(args.recalibrate)
    net = build_net(args, args.mode)
    timing = caffe_time(net, args.iterations, args.forward_only)
    log_layer_table(layer_rows(net, timing.forward))
    if args.compare:
        sparse_mode = "auto" if args.mode == "dense" else args.mode
        dense_net = net if args.mode == "dense" else build_net(args, "dense")
        sparse_net = net if args.mode != "dense" else build_net(args, sparse_mode)
        settle_auto_trials(sparse_net)
        log_comparison(compare_nets(dense_net, sparse_net, args.iterations), sparse_net, sparse_mode)
    if args.accuracy:
        log_accuracy(accuracy_rows(args), args.iterations)
    return 0
