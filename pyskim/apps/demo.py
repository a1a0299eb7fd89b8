"""``pyskim demo [--quick] [--data DIR] [--out DIR] [--threads T]``: SkimCaffe's whole workflow in one
command, on data shipped with pyskim.

1. **data**: the Fashion-MNIST test split embedded in the package (10,000 28x28 images, MIT licence,
   ``pyskim/datasets/fashion_mnist``), split into the first 8,000 images for training and the last
   2,000 held out, converted to LMDBs in a temporary folder with :mod:`pyskim.apps.convert_mnist_data`.
   ``--data DIR`` reads idx files instead: ``train-*`` for training and ``t10k-*`` held out when both
   are there (e.g. all of Fashion-MNIST or MNIST), else the ``t10k-*`` pair split 80/20.
2. **train** LeNet dense with Caffe's ``prototxt/lenet`` solver and net (SGD, ``inv`` policy), fewer
   iterations than Caffe's 10,000.
3. **prune** it with Guided Sparsity Learning (:func:`pyskim.prune.gsl.run_gsl`): L1 with a pruning
   threshold on the layers the performance model says pruning makes faster, then masked fine-tuning.
4. **time** the pruned net dense and sparse at batch 64, alternating, layer by layer (the time tool's
   ``--compare``).
5. **report**: a table (accuracies, per-layer density, dense vs sparse forward time and speedup) on
   stdout and in ``summary.txt``/``summary.json``, with caffemodels, Caffe-format logs and PNG plots in
   the output folder (default ``pyskim-demo-<date>-<time>`` in the current folder).

``--quick`` runs a cut-down schedule (a few hundred iterations per stage) that finishes in under a
minute; the full demo takes a few minutes on 2 cores.
"""
import argparse
import json
import math
import pathlib
import sys
import tempfile
import time

import numpy as np

from ..core.glog import LogToFile, progress_bar
from ..core.state import log
from ..errors import DataError, PyskimError
from ..io.idx import read_idx
from ..io.protofiles import write_text
from ..io.upgrade import read_net_text, read_solver_text
from ..kernels.threads import set_num_threads
from ..proto import caffe_pb2
from ..prune import gsl
from ..prune import plan as gsl_perf
from ..solvers import get_solver
from .convert_mnist_data import convert_arrays
from .plot_training import plot_training

__all__ = ["SCHEDULES", "DemoResult", "build_parser", "idx_pair", "load_dataset", "run", "run_demo"]

EMBEDDED = pathlib.Path(__file__).resolve().parents[1] / "datasets" / "fashion_mnist"
LENET = pathlib.Path(__file__).resolve().parents[2] / "prototxt" / "lenet"
TRAIN_SPLIT = 0.8
TIMING_BATCH = 64
#: Iterations per stage and the GSL settings that fit them (tuned by hand: docs/demo.md).
SCHEDULES = {
    "full": {"train_iters": 2000, "prune_iters": 1000, "finetune_iters": 1000, "time_iters": 100,
             "base_lr": 0.002, "l1_decay": 4e-3},
    "quick": {"train_iters": 400, "prune_iters": 250, "finetune_iters": 250, "time_iters": 30,
              "base_lr": 0.003, "l1_decay": 8e-3},
}
CLASSES = 10


class DemoResult(dict):
    """What :func:`run_demo` returns (also ``summary.json``): ``dense_accuracy``, ``pruned_accuracy``,
    ``layers`` (per layer: density, mode, dense_ms, sparse_ms, speedup), ``dense_ms``, ``sparse_ms``,
    ``speedup``, ``out_dir``, ``files``, ``settings``."""

    def table(self):
        """The final report as text."""
        lines = [(f"pyskim demo: LeNet on {self['settings']['data']}, "
                 f"{self['settings']['train_images']} training / {self['settings']['test_images']} held-out "
                 f"images, forward batch {TIMING_BATCH}, {self['settings']['threads']} thread(s)"), "",
                 f"{'layer':<10}{'density':>9}  {'mode':<20}{'dense ms':>10}{'sparse ms':>11}{'speedup':>9}"]
        for name, row in self["layers"].items():
            density = "-" if row["density"] is None else f"{row['density']:.3f}"
            lines.append(f"{name:<10}{density:>9}  {row['mode']:<20}{row['dense_ms']:>10.3f}"
                         f"{row['sparse_ms']:>11.3f}{row['speedup']:>8.2f}x")
        lines.append(f"{'whole net':<10}{'':>9}  {'':<20}{self['dense_ms']:>10.3f}{self['sparse_ms']:>11.3f}"
                     f"{self['speedup']:>8.2f}x")
        lines += ["", (f"test accuracy: dense {self['dense_accuracy']:.4f}, pruned {self['pruned_accuracy']:.4f} "
                      f"({100 * (self['pruned_accuracy'] - self['dense_accuracy']):+.2f} points); "
                      f"{100 * self['sparsity']:.1f}% of the weights are zero"),
                  f"output: {self['out_dir']}"]
        return "\n".join(lines)


# -- data --------------------------------------------------------------------------------------------

def idx_pair(folder, split):
    """The (images, labels) idx files of ``split`` ("train" or "t10k") in ``folder``, or None."""
    found = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        paths = [folder / f"{split}-{kind}{ext}" for ext in ("", ".gz")]
        found.append(next((p for p in paths if p.is_file()), None))
    return tuple(found) if all(found) else None


def _read_pair(pair):
    images, labels = read_idx(pair[0]), read_idx(pair[1])
    if images.ndim != 3 or images.dtype != np.uint8 or labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{pair[0]} / {pair[1]}: expected N x rows x cols unsigned-byte images and N "
                        f"labels, got shapes {list(images.shape)} and {list(labels.shape)}")
    if labels.size and labels.max() >= CLASSES:
        raise DataError(f"{pair[1]}: labels must be 0-{CLASSES - 1} for LeNet's {CLASSES} outputs, "
                        f"found {int(labels.max())}")
    return images, labels


def load_dataset(data_dir=None):
    """``(name, train_images, train_labels, test_images, test_labels)`` from ``data_dir`` (see the module
    docstring) or the embedded Fashion-MNIST test split."""
    folder = pathlib.Path(data_dir) if data_dir else EMBEDDED
    if not folder.is_dir():
        raise DataError(f"--data {folder}: not a folder")
    train, test = idx_pair(folder, "train"), idx_pair(folder, "t10k")
    name = "Fashion-MNIST t10k (embedded)" if data_dir is None else str(folder)
    if train and test:
        return (name, *_read_pair(train), *_read_pair(test))
    pair = test or train
    if pair is None:
        raise DataError(f"{folder}: no idx files (train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz], "
                        "or t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz])")
    images, labels = _read_pair(pair)
    cut = round(len(images) * TRAIN_SPLIT)
    if cut < 1 or cut >= len(images):
        raise DataError(f"{pair[0]}: {len(images)} images are too few to split into training and held-out sets")
    return name, images[:cut], labels[:cut], images[cut:], labels[cut:]


def _write_lmdbs(folder, train_images, train_labels, test_images, test_labels, log_file):
    paths = {"train": folder / "train_lmdb", "test": folder / "test_lmdb"}
    with LogToFile(log_file, quiet_console=True):
        convert_arrays(train_images, train_labels, paths["train"])
        convert_arrays(test_images, test_labels, paths["test"])
    return paths


# -- training ----------------------------------------------------------------------------------------

def _lenet_files(prototxt_dir):
    folder = pathlib.Path(prototxt_dir) if prototxt_dir else LENET
    files = {"solver": folder / "lenet_solver.prototxt", "net": folder / "lenet_train_test.prototxt"}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise PyskimError(f"LeNet prototxt not found: {', '.join(missing)} (the demo uses the repository's "
                          "prototxt/lenet; install pyskim from a checkout with pip install -e . or pass "
                          "--prototxt DIR)")
    return files


def _dense_solver(files, lmdbs, stage_dir, iters, test_images):
    """Caffe's LeNet solver and net, with the demo's LMDBs, iterations and snapshot folder."""
    net = read_net_text(str(files["net"]))
    test_batch = None
    for lp in net.layer:
        if lp.type == "Data":
            is_test = any(rule.phase == caffe_pb2.TEST for rule in lp.include)
            lp.data_param.source = str(lmdbs["test" if is_test else "train"])
            test_batch = lp.data_param.batch_size if is_test else test_batch
    net_file = stage_dir / "lenet_train_test.prototxt"
    write_text(net_file, net)
    solver = read_solver_text(str(files["solver"]))
    solver.net = str(net_file)
    solver.max_iter = iters
    del solver.test_iter[:]
    solver.test_iter.append(math.ceil(test_images / (test_batch or 100)))
    solver.test_interval = max(1, iters // 4)
    solver.display = max(1, min(solver.display or 100, iters // 10))
    solver.snapshot = 0
    solver.snapshot_prefix = str(stage_dir / "lenet")
    solver_file = stage_dir / "lenet_solver.prototxt"
    write_text(solver_file, solver)
    return solver, solver_file


def _train_dense(solver_param, log_file):
    """Train from scratch with a progress bar, Caffe's log lines in ``log_file``; returns the final caffemodel."""
    bar = progress_bar(solver_param.max_iter, "train dense")
    with LogToFile(log_file, quiet_console=True):
        solver = get_solver(solver_param)
        solver.add_callback(lambda: bar.update(solver.iter - bar.n), lambda: None)
        try:
            solver.solve()
        finally:
            bar.update(solver.iter - bar.n)
            bar.close()
    return pathlib.Path(f"{solver_param.snapshot_prefix}_iter_{solver.iter}.caffemodel")


# -- report ------------------------------------------------------------------------------------------

def _layer_rows(gsl_result, timing):
    densities = gsl_result.final.densities
    rows = {}
    for name, t in timing["layers"].items():
        mode = t["mode"].replace("AUTO>", "")
        rows[name] = {"density": densities.get(name), "mode": mode if mode != "-" else "",
                      "dense_ms": t["dense_ms"], "sparse_ms": t["sparse_ms"],
                      "speedup": t["dense_ms"] / t["sparse_ms"] if t["sparse_ms"] > 0 else float("inf")}
    return rows


def _plots(out, logs, result):
    """Training curves of each log and per-layer density / time bars, as PNGs in ``out``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = {}
    for name, path in logs.items():
        made[name] = str(out / f"{name}_curves.png")
        plot_training(str(path), made[name], title=f"{name}: {path.name}")
    layers = {k: v for k, v in result["layers"].items() if v["density"] is not None}
    names = list(layers)
    x = np.arange(len(names))
    figure, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    try:
        ax1.bar(x, [layers[n]["density"] for n in names], color="tab:green")
        ax1.set_xticks(x, names)
        ax1.set_ylim(0, 1.05)
        ax1.set_ylabel("weight density (nonzero fraction)")
        ax1.set_title(f"after GSL: {100 * result['sparsity']:.1f}% zeros")
        ax2.bar(x - 0.2, [layers[n]["dense_ms"] for n in names], 0.4, label="dense")
        ax2.bar(x + 0.2, [layers[n]["sparse_ms"] for n in names], 0.4, label="sparse (AUTO)")
        ax2.set_xticks(x, names)
        ax2.set_ylabel(f"forward ms, batch {TIMING_BATCH}")
        ax2.set_title(f"whole net {result['speedup']:.2f}x faster")
        ax2.legend()
        figure.tight_layout()
        made["layers"] = str(out / "density_and_time.png")
        figure.savefig(made["layers"], dpi=110)
    finally:
        plt.close(figure)
    return made


# -- the run -----------------------------------------------------------------------------------------

def _default_out():
    return pathlib.Path.cwd() / time.strftime("pyskim-demo-%Y%m%d-%H%M%S")


def run_demo(out_dir=None, quick=False, data_dir=None, threads=1, prototxt_dir=None):
    """Run the demo (see the module docstring); returns a :class:`DemoResult`."""
    schedule = SCHEDULES["quick" if quick else "full"]
    out = pathlib.Path(out_dir) if out_dir else _default_out()
    if out.exists() and any(out.iterdir()):
        raise PyskimError(f"output folder {out} is not empty; name another with --out")
    files = _lenet_files(prototxt_dir)             # bad inputs fail before anything is written
    data_name, train_x, train_y, test_x, test_y = load_dataset(data_dir)
    out.mkdir(parents=True, exist_ok=True)
    out = out.resolve()
    if threads:
        set_num_threads(int(threads))
    started = time.perf_counter()
    log.info("pyskim demo (%s): writing to %s", "quick" if quick else "full", out)

    log.info("Step 1/4: data: %s; %d training and %d held-out images to LMDB", data_name, len(train_x),
             len(test_x))
    with tempfile.TemporaryDirectory(prefix="pyskim-demo-") as tmp:
        lmdbs = _write_lmdbs(pathlib.Path(tmp), train_x, train_y, test_x, test_y, out / "data.log")

        dense_dir = out / "dense"
        dense_dir.mkdir()
        solver_param, solver_file = _dense_solver(files, lmdbs, dense_dir, schedule["train_iters"], len(test_x))
        log.info("Step 2/4: train LeNet dense, %d iterations (log: %s)", solver_param.max_iter,
                 dense_dir / "train.log")
        dense_model = _train_dense(solver_param, dense_dir / "train.log")

        log.info("Step 3/4: prune with GSL: %d + %d iterations (logs: %s)", schedule["prune_iters"],
                 schedule["finetune_iters"], out / "gsl")
        result = gsl.run_gsl(str(solver_file), str(dense_model), out / "gsl", threads=None, measure_iters=0,
                             batch=TIMING_BATCH, prune_iters=schedule["prune_iters"],
                             finetune_iters=schedule["finetune_iters"], base_lr=schedule["base_lr"],
                             l1_decay=schedule["l1_decay"])
    training_logs = {"dense": dense_dir / "train.log", "prune": out / "gsl" / "prune" / "train.log",
                     "finetune": out / "gsl" / "finetune" / "train.log"}
    pruned_model = out / "gsl" / "gsl_final.caffemodel"
    deploy = out / "gsl" / "deploy.prototxt"
    log.info("Step 4/4: time the pruned net dense vs sparse, batch %d, %d iterations (same as: pyskim time "
             "-model %s -weights %s -forward_only -compare)", TIMING_BATCH, schedule["time_iters"], deploy,
             pruned_model)
    with LogToFile(out / "time.log", quiet_console=True):
        timing = gsl_perf.measure_compare(deploy, pruned_model, iterations=schedule["time_iters"])

    summary = DemoResult(
        dense_accuracy=result.stages["dense"].accuracy, pruned_accuracy=result.final.accuracy,
        sparsity=result.final.sparsity, layers=_layer_rows(result, timing), dense_ms=timing["dense_ms"],
        sparse_ms=timing["sparse_ms"], speedup=timing["speedup"], out_dir=str(out),
        settings={**schedule, "quick": bool(quick), "data": data_name, "train_images": len(train_x),
                  "test_images": len(test_x), "threads": threads or "default"},
        files={"dense_caffemodel": str(dense_model), "pruned_caffemodel": str(pruned_model),
               "deploy": str(deploy), "gsl_report": str(out / "gsl" / "gsl.json"),
               "logs": [str(p) for p in (*training_logs.values(), out / "time.log")]})
    summary["files"]["plots"] = _plots(out, training_logs, summary)
    summary["seconds"] = time.perf_counter() - started
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    (out / "summary.txt").write_text(summary.table() + "\n")
    log.info("pyskim demo done in %.0f s", summary["seconds"])
    return summary


def build_parser():
    p = argparse.ArgumentParser(prog="pyskim demo", description=(
        "SkimCaffe's whole workflow in one command, on data shipped with pyskim: train LeNet dense, prune it "
        "with Guided Sparsity Learning, time it dense vs sparse (docs/demo.md)."))
    p.add_argument("--quick", action="store_true", help="a cut-down schedule that runs in under a minute")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="idx files to use instead of the embedded Fashion-MNIST test split")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output folder (default: pyskim-demo-<date>-<time> in the current folder)")
    p.add_argument("--threads", type=int, default=1,
                   help="kernel and BLAS threads (default: %(default)s; 0: as the environment sets)")
    p.add_argument("--prototxt", default=None, metavar="DIR",
                   help="folder with lenet_solver.prototxt and lenet_train_test.prototxt "
                        "(default: the repository's prototxt/lenet)")
    return p


def run(args):
    """Run the demo and print its report."""
    try:
        result = run_demo(args.out, args.quick, args.data, args.threads, args.prototxt)
    except KeyboardInterrupt:
        print("pyskim demo: interrupted", file=sys.stderr)
        return 130
    print(result.table())
    return 0
