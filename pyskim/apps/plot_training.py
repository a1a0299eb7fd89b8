"""``plot_training.py LOG [--out out.png] [--labels a,b,...]``: loss, accuracy and sparsity curves of a
Caffe-format training log (pyskim's or Caffe's/SkimCaffe's) in one PNG.

Three panels: train loss (display lines) and test loss against iterations; test accuracy; and, when the
log has SkimCaffe's ``Element Sparsity %`` lines (one value per weight blob, on the line after the
header), the element sparsity of each weight blob. Loss and accuracy come from
:func:`pyskim.apps.parse_log.parse_log`. The sparsity curves are labelled with ``--labels``, else with
the names of the weighted layers of the ``net:`` file the log's solver names (when it can be read
and has as many such layers as there are values), else ``w0``, ``w1``, ...
"""
import argparse
import os
import re

from ..errors import PyskimError
from ..io.upgrade import read_net_text
from .parse_log import parse_log

__all__ = ["build_parser", "parse_sparsity", "plot_training", "run"]

_ITERATION = re.compile(r"Iteration (\d+)")
_NET_FILE = re.compile(r'^\s*(?:net|train_net): "([^"]+)"')
#: layer types whose first blob is a ≥ 2-axis weight (the blobs "Element Sparsity %" reports)
WEIGHTED_TYPES = ("Convolution", "Deconvolution", "InnerProduct", "Embed", "ConvolutionReLU",
                  "ConvolutionReLUPool", "ConvolutionReLUPoolLRN", "InnerProductReLUDropout")


class PlotError(PyskimError):
    """A log without anything to plot, or a bad output path."""


def parse_sparsity(path):
    """``(iterations, rows, net_file)``: the iteration of each "Element Sparsity %" message, its values
    (percent, one list per message) and the ``net:`` path of the logged solver parameters (or None)."""
    iterations, rows, net_file = [], [], None
    iteration, expect = None, False
    with open(path, errors="replace") as f:
        for line in f:
            if expect:
                expect = False
                try:
                    values = [float(v) for v in line.split()]
                except ValueError:
                    values = None
                if values and iteration is not None:
                    iterations.append(iteration)
                    rows.append(values)
                continue
            if net_file is None:
                match = _NET_FILE.match(line)
                if match:
                    net_file = match.group(1)
            if "Element Sparsity %" in line:
                expect = True
                continue
            match = _ITERATION.search(line)
            if match:
                iteration = int(match.group(1))
    return iterations, rows, net_file


def _net_labels(net_file, log_path, count):
    """Names of the weighted layers of the solver's train net (TRAIN phase), if they number ``count``."""
    if not net_file:
        return None
    for base in ("", os.path.dirname(os.path.abspath(log_path))):
        candidate = os.path.join(base, net_file)
        if os.path.isfile(candidate):
            try:
                net = read_net_text(candidate)
            except (OSError, ValueError, PyskimError):
                return None
            names = [lp.name for lp in net.layer if lp.type in WEIGHTED_TYPES
                     and not any(rule.HasField("phase") and rule.phase == 1 for rule in lp.include)]
            return names if len(names) == count else None
    return None


def _column(rows, *hints):
    for hint in hints:
        for name in rows[0]:
            if name not in ("NumIters", "Seconds", "LearningRate") and hint in name.lower():
                return name
    return None


def plot_training(log_path, out_path=None, labels=None, title=None):
    """Draw the curves of ``log_path`` into ``out_path`` (default: the log's name with ``.png``).
    Returns a dict of what was plotted: ``out``, ``train`` and ``test`` row counts, ``sparsity`` labels."""
    out_path = out_path or os.path.splitext(log_path)[0] + ".png"
    if not out_path.endswith(".png"):
        raise PlotError(f"the output must be a .png file, got {out_path}")
    train_rows, test_rows = parse_log(log_path)
    sp_iters, sp_rows, net_file = parse_sparsity(log_path)
    if not train_rows and not test_rows and not sp_rows:
        raise PlotError(f"{log_path}: no training, test or sparsity lines to plot (is it a training log?)")
    width = max((len(r) for r in sp_rows), default=0)
    if labels and len(labels) != width and sp_rows:
        raise PlotError(f"{len(labels)} labels given for {width} sparsity values per line")
    labels = labels or _net_labels(net_file, log_path, width) or [f"w{i}" for i in range(width)]

    import matplotlib
    if "MPLBACKEND" not in os.environ:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 3 if sp_rows else 2
    figure, axes = plt.subplots(panels, 1, figsize=(7, 2.6 * panels), sharex=True)
    try:
        ax = axes[0]
        for rows, kind, style in ((train_rows, "train", "-"), (test_rows, "test", "o-")):
            col = _column(rows, "loss") if rows else None
            if col:
                ax.plot([r["NumIters"] for r in rows if col in r], [r[col] for r in rows if col in r], style,
                        label=f"{kind} {col}", linewidth=0.9, markersize=3)
        ax.set_ylabel("loss")
        ax.legend(loc="upper right", fontsize=8)
        ax = axes[1]
        col = _column(test_rows, "acc") if test_rows else None
        if col:
            ax.plot([r["NumIters"] for r in test_rows if col in r], [r[col] for r in test_rows if col in r],
                    "o-", color="tab:green", label=f"test {col}", linewidth=0.9, markersize=3)
            ax.legend(loc="lower right", fontsize=8)
        ax.set_ylabel("accuracy")
        if sp_rows:
            ax = axes[2]
            for i, label in enumerate(labels):
                pts = [(it, row[i]) for it, row in zip(sp_iters, sp_rows) if i < len(row)]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label, linewidth=0.9)
            ax.set_ylabel("element sparsity %")
            ax.set_ylim(-2, 102)
            ax.legend(loc="lower right", fontsize=8, ncol=min(len(labels), 4))
        axes[-1].set_xlabel("iterations")
        parent = os.path.basename(os.path.dirname(os.path.abspath(log_path)))
        figure.suptitle(title or os.path.join(parent, os.path.basename(log_path)))
        figure.tight_layout()
        figure.savefig(out_path, dpi=100)
    finally:
        plt.close(figure)
    return {"out": out_path, "train": len(train_rows), "test": len(test_rows),
            "sparsity": labels if sp_rows else []}


def build_parser():
    parser = argparse.ArgumentParser(prog="plot_training.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("log", help="a Caffe-format training log")
    parser.add_argument("--out", default=None, help="PNG to write (default: LOG with .png)")
    parser.add_argument("--labels", default="", help="comma-separated names of the weight blobs")
    parser.add_argument("--title", default=None, help="figure title (default: the log's name)")
    return parser


def run(args):
    """Plot the log and say what was drawn."""
    labels = [s for s in args.labels.split(",") if s] or None
    result = plot_training(args.log, args.out, labels, args.title)
    print(f"Wrote {result['out']} ({result['train']} train rows, {result['test']} test rows, "
          f"{len(result['sparsity'])} sparsity curves)")
    return 0

