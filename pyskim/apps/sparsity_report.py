"""``sparsity.py --model M --weights W [--measure-threshold t] [--batch 64] [--plot out.png]``: per-layer
weight density and SkimCaffe's fiber/slice sparsities of a caffemodel, with the performance model's
predicted speedup of each conv / inner-product layer at that density.

The table has one row per layer of ``M`` that has weights in ``W`` (its ``blobs[0]``; biases are not
counted): shape, count, nonzeros, density, element sparsity %, and for 4-D weights the OC/IC/kernel
fiber and slice sparsities (:mod:`pyskim.sparse.sparsity`; a weight counts as zero when ``|w| <= t``),
then the break-even and saturation densities and the predicted speedup (dense time / time in the mode
``AUTO`` picks, at batch ``--batch``; :mod:`pyskim.prune.plan`). The last row totals all weights. ``--plot`` writes a PNG of the
density per layer and the predicted speedup (needs matplotlib: ``pip install pyskim[plot]``).
"""
import argparse
import os
import sys

import numpy as np

from ..core.net import Net
from ..errors import NetError, PyskimError
from ..io.blobproto import blobproto_to_array
from ..io.upgrade import read_net_binary, read_net_text
from ..kernels.threads import set_num_threads
from ..prune.plan import deploy_param, layer_shapes, predict_layers
from ..sparse.sparsity import FIBER_SLICE_NAMES, sparsity_report

__all__ = ["build_parser", "format_table", "layer_rows", "plot_density", "predicted_speedups", "run",
           "total_row"]

FIBERS = [f"{n}-fiber" for n in FIBER_SLICE_NAMES] + [f"{n}-slice" for n in FIBER_SLICE_NAMES]


def _weights_by_layer(weights):
    param = read_net_binary(weights) if isinstance(weights, (str, os.PathLike)) else weights
    return {lp.name: lp.blobs[0] for lp in param.layer if len(lp.blobs)}


def layer_rows(model, weights, threshold=0.0):
    """Rows (dicts) of the layers of ``model`` (prototxt path or NetParameter) with weights in
    ``weights`` (caffemodel path or NetParameter), in model order: ``name``, ``type``, ``shape`` and
    the measures of :func:`pyskim.sparse.sparsity.sparsity_report`."""
    net = read_net_text(model) if isinstance(model, (str, os.PathLike)) else model
    blobs = _weights_by_layer(weights)
    rows, seen = [], set()
    for lp in net.layer:
        if lp.name in seen or lp.name not in blobs:
            continue
        seen.add(lp.name)
        array = blobproto_to_array(blobs[lp.name])
        rows.append({"name": lp.name, "type": lp.type, "shape": list(array.shape),
                     **sparsity_report(array, threshold)})
    if not rows:
        raise NetError(f"no layer of {_source(model)} has weights in {_source(weights)} "
                       f"(do the layer names match?)")
    return rows


def _source(item):
    """How an error names a model or weights argument: its path, else the net's name."""
    return os.fspath(item) if isinstance(item, (str, os.PathLike)) else f"net '{item.name}'"


def total_row(rows):
    """All weights together: count, nnz, density and element sparsity %."""
    count = sum(r["count"] for r in rows)
    nnz = sum(r["nnz"] for r in rows)
    density = nnz / count if count else 1.0
    return {"name": "total", "type": "", "shape": [], "count": count, "nnz": nnz, "density": density,
            "element": 100.0 * (1.0 - density)}


def predicted_speedups(model, rows, batch=64, input_shape=None):
    """``{layer name: LayerPerf}`` of the modelled layers at the rows' densities (None when the
    model's input shape cannot be found, e.g. a Data layer whose source is not there)."""
    net_param = read_net_text(model) if isinstance(model, (str, os.PathLike)) else model
    deploy = deploy_param(net_param, batch, input_shape=input_shape)
    net = Net(deploy)
    return predict_layers(layer_shapes(net), {r["name"]: r["density"] for r in rows})


def _pct(value):
    return f"{value:6.2f}"


def format_table(rows, perfs=None):
    """The report as fixed-width text."""
    perfs = perfs or {}
    head = (f"{'layer':<12} {'type':<14} {'shape':<16} {'count':>9} {'nnz':>9} {'density':>8} {'elem%':>6}  "
            + " ".join(f"{f.split('-')[0][:6] + f.split('-')[1][0]:>7}" for f in FIBERS)
            + f"  {'d_be':>5} {'d_sat':>5} {'pred.x':>6}")
    lines = [head, "-" * len(head)]
    for r in rows + [total_row(rows)]:
        shape = "x".join(str(d) for d in r["shape"])
        fib = " ".join(f"{r[f]:7.2f}" if f in r else f"{'':>7}" for f in FIBERS)
        p = perfs.get(r["name"])
        model = f"  {p.break_even:5.3f} {p.saturation:5.3f} {p.auto_speedup:6.2f}" if p else ""
        lines.append(f"{r['name']:<12} {r['type']:<14} {shape:<16} {r['count']:>9} {r['nnz']:>9} "
                     f"{r['density']:8.4f} {_pct(r['element'])}  {fib}{model}")
    lines.append("fibers/slices (4-D weights, %): OCf/ICf/kerf = OC-, IC-, kernel-fibers all zero; "
                 "OCs/ICs/kers = whole filters, input channels, kernel positions all zero")
    if perfs:
        lines.append("d_be / d_sat: break-even and saturation densities of the performance model; pred.x: "
                     "predicted dense time / time in the mode conv_mode/gemm_mode AUTO picks at this density")
    return "\n".join(lines)


def plot_density(rows, perfs, out, title=None):
    """Bar chart of the density per layer (left axis) with the predicted speedup (right axis) and
    the model's useful density range (break-even to saturation) drawn on each bar."""
    import matplotlib
    if "MPLBACKEND" not in os.environ:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [r["name"] for r in rows]
    xs = np.arange(len(rows))
    figure, ax = plt.subplots(figsize=(max(5, 1.1 * len(rows) + 2), 4.6))
    try:
        ax.bar(xs, [r["density"] for r in rows], color="tab:blue", width=0.6, label="density (nonzero fraction)")
        for x, name in zip(xs, names):
            p = (perfs or {}).get(name)
            if p:
                ax.plot([x - 0.3, x + 0.3], [p.break_even] * 2, color="tab:red", linewidth=1.5)
                ax.plot([x - 0.3, x + 0.3], [p.saturation] * 2, color="tab:gray", linewidth=1.5, linestyle="--")
        ax.plot([], [], color="tab:red", label="break-even density")
        ax.plot([], [], color="tab:gray", linestyle="--", label="saturation density")
        ax.set_xticks(xs)
        ax.set_xticklabels(names, rotation=30 if len(rows) > 8 else 0)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("weight density")
        handles, labels = ax.get_legend_handles_labels()
        if perfs:
            ax2 = ax.twinx()
            sx = [x for x, n in zip(xs, names) if n in perfs]
            ax2.plot(sx, [perfs[n].auto_speedup for n in names if n in perfs], "o-", color="tab:orange",
                     label="predicted speedup (AUTO mode)")
            ax2.axhline(1.0, color="tab:orange", linewidth=0.5, linestyle=":")
            ax2.set_ylabel("predicted speedup (dense / sparse)")
            ax2.set_ylim(bottom=0)
            h2, l2 = ax2.get_legend_handles_labels()
            handles, labels = handles + h2, labels + l2
        total = total_row(rows)
        ax.set_title(title or f"weight density per layer (total {total['density']:.4f}, "
                              f"{total['element']:.1f}% zero)")
        ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize=8,
                  frameon=False)
        figure.tight_layout()
        figure.savefig(out, dpi=100)
    finally:
        plt.close(figure)
    return out


def build_parser():
    parser = argparse.ArgumentParser(prog="sparsity.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="net prototxt (deploy or train_test)")
    parser.add_argument("--weights", required=True, help="caffemodel")
    parser.add_argument("--measure-threshold", type=float, default=0.0,
                        help="a weight counts as zero when |w| <= this (default 0: exact zeros)")
    parser.add_argument("--batch", type=int, default=64, help="batch size of the speedup prediction")
    parser.add_argument("--threads", type=int, default=0,
                        help="threads of the kernels and BLAS the model is calibrated for (default: as set)")
    parser.add_argument("--no-predict", action="store_true", help="skip the performance model")
    parser.add_argument("--plot", default=None, help="write a PNG of density and predicted speedup")
    return parser


def run(args):
    """Print the table (and write the plot with ``--plot``)."""
    if args.threads > 0:
        set_num_threads(args.threads)
    model = read_net_text(args.model)
    rows = layer_rows(model, args.weights, args.measure_threshold)
    perfs = None
    if not args.no_predict:
        try:
            perfs = predicted_speedups(model, rows, args.batch)
        except (OSError, PyskimError) as e:   # the table is still useful without the model
            print(f"sparsity.py: no speedup prediction ({e})", file=sys.stderr)
    print(format_table(rows, perfs))
    if args.plot:
        try:
            plot_density(rows, perfs, args.plot)
        except ImportError:
            print("sparsity.py: --plot needs matplotlib (pip install pyskim[plot])", file=sys.stderr)
            return 1
        print(f"Wrote {args.plot}")
    return 0

