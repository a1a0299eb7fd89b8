"""``python tools/perf_model.py --model M [--weights W] [--batch B] [--threads T] [--plot out.png]
[--default_profile] [--recalibrate]``:
the roofline model's per-layer predictions for a net (:mod:`pyskim.perf.model`).

For every convolution and inner-product layer: its shape, weight density, the predicted dense,
sparse and (convolutions) LOWERED_CCNMM times at that density, the predicted speedup, the
break-even density (below it sparse wins) and the saturation density (below it the sparse layer is
bandwidth / overhead bound), and the mode AUTO would pick. ``--plot`` draws the predicted speedup
(dense time / sparse time) against density, one curve per layer, with each layer's current density
marked, into a PNG (needs matplotlib: ``pip install 'pyskim[plot]'``). Layers are priced as layers of
this net (:func:`pyskim.perf.model.in_net`: a net that stays in the caches pays less per call than
one that does not). The machine profile is the cached calibration, else the default one (:func:`pyskim.perf.profile.get_profile`; the tool does not
calibrate by itself); ``--default_profile`` uses the documented default profile even where one is
cached; ``--recalibrate`` measures the machine (progress on stderr) and caches the result, as
``pyskim calibrate`` does.
"""
import logging

import numpy as np

from ..errors import PyskimError
from ..perf.calibrate import calibrate_and_save
from ..perf.model import FcShape, in_net, predict, speedup_curve
from ..perf.profile import default_profile, get_profile, resolve_threads
from ..proto import caffe_pb2
from ..pycaffe.net import Net
from ..sparse import forward_bytes, layer_workload
from . import flags
from .caffe_command import apply_threads
from .time_net import load_param

log = logging.getLogger("pyskim")


def build_parser():
    parser = flags.new_parser("perf_model.py", "Per-layer roofline predictions of dense vs sparse time.")
    flags.define(parser, "model", "", "The model definition protocol buffer text file.")
    flags.define(parser, "weights", "", "Optional; the weights (caffemodel) whose densities are used.")
    flags.define(parser, "batch", 0, "Optional; batch size (0: as in the prototxt).")
    flags.define(parser, "threads", 0, "Optional; threads (0: pyskim's default).")
    flags.define(parser, "phase", "TEST", "Optional; network phase (TRAIN or TEST).")
    flags.define(parser, "plot", "", "Optional; write the speedup-vs-density plot to this PNG file.")
    flags.define(parser, "default_profile", False, "Optional; use the default machine profile (no calibration).")
    flags.define(parser, "recalibrate", False, "Optional; calibrate the machine profile again and cache it.")
    return parser


def layer_predictions(net, profile):
    """[(layer name, shape, density, column density, Prediction)] for the net's conv / IP layers
    (their workload as the sparse engine sees it: :func:`pyskim.sparse.layer_workload`)."""
    rows = []
    for i, layer in enumerate(net.layers):
        bottoms = net.bottom_vec(i)
        workload = layer_workload(layer, bottoms[0]) if bottoms else None
        if workload is None:
            continue
        shape, density, column_density = workload
        rows.append((layer.name, shape, density, column_density, predict(shape, density, profile, column_density)))
    return rows


def _describe(shape):
    if isinstance(shape, FcShape):
        return f"fc {shape.batch}x{shape.num_input}->{shape.num_output}"
    kh, kw = shape.kernel
    g = f" g{shape.group}" if shape.group > 1 else ""
    return (f"{shape.batch}x{shape.channels}x{shape.height}x{shape.width} k{kh}x{kw} "
            f"s{shape.stride[0]}{g} ->{shape.num_output}")


def format_table(rows, profile):
    machine = (f"machine: {profile.cpu or 'unknown CPU'}, {profile.threads} thread(s), peak "
               f"{profile.peak_flops / 1e9:.0f} GFLOP/s/thread, bandwidth {profile.bandwidth / 1e9:.1f} GB/s, "
               f"e_d {profile.dense_eff:.3f}, e_s0 {profile.sparse_eff:.3f} (batch 8: {profile.batched_dense_eff:.3f}, "
               f"{profile.batched_sparse_eff:.3f}), stride {profile.stride_eff:.2f}, "
               f"e_fc {profile.fc_sparse_eff:.3f}, e_spmv {profile.spmv_eff:.4f} ({profile.source})")
    header = (f"{'layer':<16} {'shape':<36} {'density':>8} {'dense ms':>9} {'sparse ms':>9} {'ccnmm ms':>9} "
              f"{'speedup':>8} {'break-even':>10} {'saturation':>10} {'AUTO':>7}")
    lines = [machine, header]
    for name, shape, density, _, p in rows:
        ccnmm = "-" if p.ccnmm == float("inf") else f"{p.ccnmm * 1e3:.3f}"
        lines.append(f"{name:<16} {_describe(shape):<36} {density:8.4f} {p.dense * 1e3:9.3f} "
                     f"{p.sparse * 1e3:9.3f} {ccnmm:>9} {p.speedup:7.2f}x {p.break_even:10.3f} "
                     f"{p.saturation:10.3f} {p.mode:>7}")
    return "\n".join(lines)


def plot(rows, profile, path):
    """Predicted speedup vs density per layer, into the PNG ``path``."""
    try:
        import matplotlib
    except ImportError:
        raise PyskimError("--plot needs matplotlib (pip install 'pyskim[plot]')") from None
    if matplotlib.get_backend().lower() not in ("agg", "pdf", "svg", "ps"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    densities = np.geomspace(0.005, 1.0, 120)
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for name, shape, density, _, p in rows:
        line, = ax.plot(densities, speedup_curve(shape, densities, profile), label=name)
        ax.plot([density], [p.speedup], "o", color=line.get_color())
    ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("weight density (fraction of nonzero weights)")
    ax.set_ylabel("predicted speedup (dense time / sparse time)")
    ax.set_title(f"Roofline model, {profile.threads} thread(s); dots: current densities")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args):
    """Build the net, pick the machine profile (default, freshly calibrated or cached), print the
    table and draw the plot; returns the exit code."""
    if not args.model:
        raise PyskimError("Need a model definition (--model).")
    phase = {"TRAIN": caffe_pb2.TRAIN, "TEST": caffe_pb2.TEST}.get(args.phase)
    if phase is None:
        raise PyskimError(f"phase must be \"TRAIN\" or \"TEST\", got \"{args.phase}\"")
    apply_threads(args.threads)
    net = Net(load_param(args.model, "auto", args.batch), phase, weights=args.weights or None)
    if args.default_profile:
        profile = default_profile(resolve_threads(None))
    elif args.recalibrate:
        profile = calibrate_and_save()
    else:
        profile = get_profile()
    profile = in_net(profile, forward_bytes(net))      # its layers as this net leaves the caches
    rows = layer_predictions(net, profile)
    print(format_table(rows, profile))
    if args.plot:
        plot(rows, profile, args.plot)
        print(f"wrote {args.plot}")
    return 0
