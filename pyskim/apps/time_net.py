"""``pyskim time`` and ``python tools/time.py``: Caffe's ``caffe time``, plus a per-layer sparse report.

    python tools/time.py --model M [--weights W] [--iterations N] [--forward_only] [--phase TRAIN|TEST]
                         [--batch B] [--threads T] [--mode dense|sparse|auto] [--compare]

The benchmark lines are ``caffe time``'s (``Average time per layer``, ``<layer>\\tforward: X ms.``,
``Average Forward pass``, ... ``*** Benchmark ends ***``), with the same averages. After them comes a
table with, for every convolution / inner-product layer: the conv_mode / gemm_mode it ran (``AUTO>``
marks the performance model's pick), its weight density, its forward time, its dense-equivalent
GFLOP/s (dense FLOPs / time, SkimCaffe's "effective GF/s") and the roofline model's predicted time
for the mode it ran (:mod:`pyskim.perf.model`).

* ``--mode auto`` (default) sets ``AUTO`` on every convolution / inner-product layer whose prototxt
  sets no conv_mode / gemm_mode, so the model picks dense or sparse per layer (a layer with dense
  weights stays dense); ``--mode sparse`` forces DIRECT_SCONV / SPMDM and ``--mode dense``
  LOWERED_GEMM / GEMM on every such layer.
* ``--batch B`` replaces the batch size of the inputs (Input, DummyData, data layers).
* ``--threads T`` sets the threads of pyskim's kernels and of the BLAS.
* ``--compare`` then runs the same net (same weights) dense and in the sparse mode (``--mode``, or
  ``auto`` when that is ``dense``), forward only, alternating the two each iteration, and prints each
  layer's average dense and sparse time, their ratio, and the whole-net speedup.
"""
import logging
import sys
import time

from ..core.glog import init_logging
from ..errors import PyskimError
from . import flags

log = logging.getLogger("pyskim")

MODES = ("dense", "sparse", "auto")
_BATCH_FIELDS = ("data_param", "image_data_param", "memory_data_param", "hdf5_data_param",
                 "window_data_param")


def define_flags(parser):
    """The flags this tool adds to ``caffe time``'s."""
    flags.define(parser, "batch", 0, "Optional; batch size of the net's inputs (0: as in the prototxt).")
    flags.define(parser, "threads", 0, "Optional; threads for pyskim's kernels and the BLAS (0: default).")
    flags.define(parser, "mode", "auto", "Optional; dense, sparse or auto: conv_mode/gemm_mode of the "
                                         "convolution and inner-product layers (auto: the performance "
                                         "model picks, where the prototxt sets no mode).")
    flags.define(parser, "compare", False, "Optional; also time the net dense and sparse and print the "
                                           "per-layer speedups.")


def build_parser():
    parser = flags.new_parser("time.py", "Time a model's execution, layer by layer (caffe time).")
    flags.define(parser, "model", "", "The model definition protocol buffer text file.")
    flags.define(parser, "weights", "", "Optional; the pretrained weights (caffemodel).")
    flags.define(parser, "iterations", 50, "The number of iterations to run.")
    flags.define(parser, "phase", "", "Optional; network phase (TRAIN or TEST).")
    flags.define(parser, "level", 0, "Optional; network level.")
    flags.define(parser, "stage", "", "Optional; network stages, separated by ','.")
    flags.define(parser, "forward_only", False, "Optional; time the forward pass only (SkimCaffe).")
    flags.define(parser, "gpu", "", "Not available in pyskim (CPU only); accepted for compatibility.")
    define_flags(parser)
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
    from ..io.upgrade import read_net_text
    from ..sparse.engine import apply_mode
    if mode not in MODES:
        raise PyskimError(f"mode must be dense, sparse or auto, got \"{mode}\"")
    param = read_net_text(model)
    apply_mode(param, mode)
    if batch < 0:
        raise PyskimError(f"batch must be positive, got {batch}")
    if batch:
        set_batch(param, batch)
    return param


def apply_threads(threads):
    if threads < 0:
        raise PyskimError(f"threads must be positive, got {threads}")
    if threads:
        from ..perf.model import set_threads
        set_threads(threads)
        log.info("Using %d threads.", threads)


def _phase(args):
    from ..proto import caffe_pb2
    phase = {"": caffe_pb2.TRAIN, "TRAIN": caffe_pb2.TRAIN, "TEST": caffe_pb2.TEST}.get(args.phase)
    if phase is None:
        raise PyskimError(f"phase must be \"TRAIN\" or \"TEST\", got \"{args.phase}\"")
    return phase


def build_net(args, mode):
    from ..pycaffe.net import Net
    stages = [s for s in args.stage.split(",") if s]
    return Net(load_param(args.model, mode, args.batch), _phase(args), level=args.level, stages=stages,
               weights=args.weights or None)


def caffe_time(net, iterations, forward_only):
    """Caffe's ``time`` loop and log lines; returns the per-layer forward seconds (averages)."""
    layers = net.layers
    log.info("Performing Forward")
    _, initial_loss = net.forward_prefilled()
    log.info("Initial loss: %s", _fmt(initial_loss))
    if not forward_only:
        log.info("Performing Backward")
        net.backward_from_to(len(layers) - 1, 0)
    log.info("*** Benchmark begins ***")
    log.info("Testing for %d iterations.", iterations)
    forward_per_layer = [0.0] * len(layers)
    backward_per_layer = [0.0] * len(layers)
    forward_total = backward_total = 0.0
    total_start = time.perf_counter()
    for j in range(iterations):
        iter_start = time.perf_counter()
        for i, layer in enumerate(layers):
            start = time.perf_counter()
            layer.forward(net.bottom_vec(i), net.top_vec(i))
            forward_per_layer[i] += time.perf_counter() - start
        forward_total += time.perf_counter() - iter_start
        if not forward_only:
            backward_start = time.perf_counter()
            for i in range(len(layers) - 1, -1, -1):
                start = time.perf_counter()
                layers[i].backward(net.top_vec(i), net.bottom_need_backward(i), net.bottom_vec(i))
                backward_per_layer[i] += time.perf_counter() - start
            backward_total += time.perf_counter() - backward_start
        kind = "forward" if forward_only else "forward-backward"
        log.info("Iteration: %d %s time: %d ms.", j + 1, kind, int((time.perf_counter() - iter_start) * 1e3))
    n = max(iterations, 1)
    log.info("Average time per layer: ")
    for i, layer in enumerate(layers):
        log.info("%10s\tforward: %s ms.", layer.name, _fmt(forward_per_layer[i] * 1e3 / n))
        if not forward_only:
            log.info("%10s\tbackward: %s ms.", layer.name, _fmt(backward_per_layer[i] * 1e3 / n))
    total_ms = int((time.perf_counter() - total_start) * 1e3)
    log.info("Average Forward pass: %s ms.", _fmt(forward_total * 1e3 / n))
    if not forward_only:
        log.info("Average Backward pass: %s ms.", _fmt(backward_total * 1e3 / n))
        log.info("Average Forward-Backward: %s ms.", _fmt(total_ms / n))
    log.info("Total Time: %s ms.", _fmt(total_ms))
    log.info("*** Benchmark ends ***")
    return [t / n for t in forward_per_layer]


def layer_rows(net, forward_seconds):
    """Per conv / IP layer: (name, mode, density, forward s, dense-equivalent GFLOP/s, predicted s)."""
    from ..sparse.engine import describe
    rows = []
    for i, layer in enumerate(net.layers):
        info = describe(layer, net.bottom_vec(i))
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
    from ..perf.model import get_profile
    profile = get_profile()
    log.info("Sparse modes per layer (model: %s, %d thread(s)):", profile.source, profile.threads)
    log.info("  %-22s %-22s %8s %11s %9s %13s", "layer", "mode", "density", "forward ms", "GFLOP/s",
             "predicted ms")
    for name, mode, density, t, gflops, predicted in rows:
        log.info("  %-22s %-22s %8.4f %11.3f %9s %13s", name, mode, density, t * 1e3,
                 "-" if gflops is None else f"{gflops:.1f}", "-" if predicted is None else f"{predicted * 1e3:.3f}")


def compare(args, dense_net, sparse_net, sparse_mode):
    """Forward both nets ``args.iterations`` times, alternating; log per-layer speedups."""
    for net in (dense_net, sparse_net):
        net.forward_prefilled()
    times = {id(net): [0.0] * len(net.layers) for net in (dense_net, sparse_net)}
    for _ in range(max(args.iterations, 1)):
        for net in (dense_net, sparse_net):
            acc = times[id(net)]
            for i, layer in enumerate(net.layers):
                start = time.perf_counter()
                layer.forward(net.bottom_vec(i), net.top_vec(i))
                acc[i] += time.perf_counter() - start
    n = max(args.iterations, 1)
    dense_t = [t / n for t in times[id(dense_net)]]
    sparse_t = [t / n for t in times[id(sparse_net)]]
    modes = {row[0]: row[1] for row in layer_rows(sparse_net, sparse_t)}
    log.info("Dense vs %s, average forward time per layer over %d iterations:", sparse_mode, n)
    log.info("  %-22s %-22s %10s %10s %8s", "layer", "mode", "dense ms", "sparse ms", "speedup")
    for layer, td, ts in zip(sparse_net.layers, dense_t, sparse_t):
        ratio = f"{td / ts:.2f}x" if ts > 0 else "-"
        log.info("  %-22s %-22s %10.3f %10.3f %8s", layer.name, modes.get(layer.name, "-"), td * 1e3, ts * 1e3,
                 ratio)
    total_d, total_s = sum(dense_t), sum(sparse_t)
    log.info("Whole net: dense %.3f ms, %s %.3f ms, speedup %.2fx", total_d * 1e3, sparse_mode, total_s * 1e3,
             total_d / total_s if total_s > 0 else float("inf"))
    return dense_t, sparse_t


def run(args):
    """The ``time`` command (``pyskim time`` and ``tools/time.py``)."""
    if not args.model:
        raise PyskimError("Need a model definition to time.")
    _phase(args)
    if args.gpu:
        log.warning("pyskim runs on the CPU only; ignoring -gpu %s", args.gpu)
    log.info("Use CPU.")
    apply_threads(args.threads)
    net = build_net(args, args.mode)
    forward_seconds = caffe_time(net, args.iterations, args.forward_only)
    log_layer_table(layer_rows(net, forward_seconds))
    if args.compare:
        sparse_mode = "auto" if args.mode == "dense" else args.mode
        dense_net = net if args.mode == "dense" else build_net(args, "dense")
        sparse_net = net if args.mode != "dense" else build_net(args, sparse_mode)
        compare(args, dense_net, sparse_net, sparse_mode)
    return 0


def main(argv=None):
    parser = build_parser()
    args = flags.parse(parser, argv)
    init_logging()
    try:
        return run(args)
    except PyskimError as e:
        log.error("%s", e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
