#!/usr/bin/env python
"""A PyTorch CNN through pyskim: exported to ONNX, imported, trained, pruned with GSL on CIFAR-10,
timed dense vs sparse, and exported back to ONNX.

    python examples/onnx_import_gsl.py                         # work/onnx_gsl, 2000 iterations a stage
    python examples/onnx_import_gsl.py --iters 20 --train-images 1000 --test-images 200   # a quick try

Needs torch (to build and export the model; not a pyskim dependency), onnx and onnxruntime, and the
CIFAR-10 JPEG tars of ``../shared/datasets/cifar10`` (``--data``). The steps, all in ``--work``:

1. **Data** (made once, reused): the first ``--train-images`` / ``--test-images`` JPEGs (the classes
   in turn) are extracted and converted with ``tools/convert_imageset.py`` (``-shuffle`` for training;
   BGR planes, as Caffe), and ``tools/compute_image_mean.py`` writes the training mean.
2. **Export**: a small CNN (4 conv + BatchNorm + ReLU blocks, two max-pools, global average pooling,
   a linear classifier), random weights, eval mode, exported by ``torch.onnx`` (opset 17, BatchNorm
   nodes kept, a dynamic batch axis) to ``cnn.onnx``.
3. **Import**: ``tools/convert.py from-onnx`` -> ``deploy.prototxt`` + ``imported.caffemodel``; pyskim's
   outputs are checked against onnxruntime's on random inputs.
4. **Train**: :func:`pyskim.convert.onnx_import.train_test_net` puts Data layers (mean subtracted,
   scaled by 1/64) and SoftmaxWithLoss / Accuracy around the imported layers (``train_test.prototxt``),
   and ``pyskim train`` runs ``--iters`` SGD iterations from the imported weights (``dense/``).
5. **GSL**: :func:`pyskim.prune.gsl.run_gsl` (``tools/gsl.py``'s machinery) prunes the layers the
   performance model says pruning makes faster, ``--iters`` iterations of L1 pruning then ``--iters``
   of masked fine-tuning (``gsl/``).
6. **Time**: the pruned deploy net forward, dense and with the sparse engines (AUTO), layer by layer,
   ``--time-iters`` passes at batch ``--batch`` on ``--threads`` threads.
7. **Export back**: ``tools/convert.py to-onnx --sparse-initializers`` -> ``pruned.onnx``, checked
   against pyskim's outputs with onnxruntime.

It ends with a table for ``benchmarks/RESULTS.md``: per layer the density, the mode AUTO picked and
the dense and sparse forward times, then the whole net, the test accuracies and the ONNX file sizes.
Timings are only meaningful on a quiet machine.
"""
import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import warnings

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]


def tool(name, *args):
    """Run ``tools/<name>.py`` with ``args``; returns what it printed on stdout (exits on a failure)."""
    done = subprocess.run([sys.executable, str(REPO / "tools" / f"{name}.py"), *map(str, args)],
                          capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"tools/{name}.py failed:\n{done.stdout[-2000:]}{done.stderr[-4000:]}")
    return done.stdout.strip()


def make_lmdb(data, split, count, db):
    """The first ``count`` images of ``split`` (the classes in turn) as an LMDB, unless it exists
    (:func:`pyskim.apps.cifar10_jpeg.jpeg_lmdb` with ``tools/convert_imageset.py``)."""
    from pyskim.apps.cifar10_jpeg import jpeg_lmdb
    from pyskim.errors import DataError
    try:
        jpeg_lmdb(data / f"cifar10-{split}-jpeg.tar", split, db, count, shuffle=split == "train",
                  convert=(sys.executable, str(REPO / "tools" / "convert_imageset.py")))
    except DataError as e:
        sys.exit(f"--{split}-images: {e}")
    print(f"{db}: {count} {split} images")


def build_cnn():
    """The PyTorch model: conv-BN-ReLU blocks, max-pools, global average pooling, a linear layer; the
    module names become the Caffe layer names (``conv1/Conv``, ``bn1/BatchNormalization``, ...)."""
    from collections import OrderedDict

    from torch import nn
    modules = []
    for i, (cin, cout) in enumerate(((3, 32), (32, 32), (32, 64), (64, 64)), start=1):
        modules += [(f"conv{i}", nn.Conv2d(cin, cout, 3, padding=1, bias=False)),
                    (f"bn{i}", nn.BatchNorm2d(cout)), (f"relu{i}", nn.ReLU())]
        if i in (2, 3):
            modules.append((f"pool{i}", nn.MaxPool2d(2)))
    modules += [("gap", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()), ("fc", nn.Linear(64, 10))]
    return nn.Sequential(OrderedDict(modules))


def export_cnn(path, seed):
    import torch
    torch.manual_seed(seed)
    model = build_cnn().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17,
                          training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
                          input_names=["image"], output_names=["logits"], dynamic_axes={"image": {0: "N"}})


def max_difference(onnx_file, prototxt, weights, images):
    """Largest |pyskim - onnxruntime| over the outputs for ``images``."""
    import onnxruntime

    import pyskim
    net = pyskim.Net(str(prototxt), pyskim.TEST, weights=str(weights))
    ours = net.forward(**{net.inputs[0]: images})[net.outputs[0]]
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    theirs = session.run(None, {session.get_inputs()[0].name: images})[0]
    return float(np.abs(ours - theirs).max())


def write_training_files(work, data, args):
    """``train_test.prototxt`` (the imported layers between Data layers and the loss) and
    ``solver.prototxt``; ``data``: the train LMDB, the test LMDB and the mean file."""
    from pyskim.convert.onnx_import import train_test_net
    from pyskim.io.protofiles import write_text
    from pyskim.io.upgrade import read_net_text
    from pyskim.proto import caffe_pb2
    train_db, test_db, mean = data
    layer = ('name: "data" type: "Data" '
             'transform_param {{ scale: 0.015625 mean_file: "{mean}" mirror: {mirror} }} '
             'data_param {{ source: "{source}" batch_size: {batch} backend: LMDB }}')
    net = train_test_net(read_net_text(str(work / "deploy.prototxt")),
                         layer.format(mean=mean, mirror="true", source=train_db, batch=64),
                         layer.format(mean=mean, mirror="false", source=test_db, batch=100))
    write_text(work / "train_test.prototxt", net)
    solver = caffe_pb2.SolverParameter(net=str(work / "train_test.prototxt"), base_lr=0.05, momentum=0.9,
                                       weight_decay=5e-4, lr_policy="fixed", max_iter=args.iters,
                                       display=max(args.iters // 10, 1), test_interval=args.iters,
                                       snapshot_prefix=str(work / "dense" / "cnn"), random_seed=1)
    solver.test_iter.append(max(args.test_images // 100, 1))
    write_text(work / "solver.prototxt", solver)


def densities(weights):
    """Fraction of nonzero weights of each Convolution / InnerProduct layer of a caffemodel."""
    from pyskim.io.blobproto import blobproto_to_array
    from pyskim.io.upgrade import read_net_binary
    arrays = {layer.name: blobproto_to_array(layer.blobs[0]) for layer in read_net_binary(str(weights)).layer
              if layer.type in ("Convolution", "InnerProduct") and layer.blobs}
    return {name: np.count_nonzero(array) / array.size for name, array in arrays.items()}


def result_table(result, timing, density, onnx_sizes, args):
    """The text for benchmarks/RESULTS.md."""
    final, dense = result.final, result.stages["dense"]
    width = max(len(name) for name in timing["layers"]) + 2
    title = (f"onnx_import_gsl: PyTorch CNN -> ONNX -> pyskim, CIFAR-10 ({args.train_images} training / "
             f"{args.test_images} test images, {args.iters} iterations a stage), forward batch {args.batch}, "
             f"{args.threads} thread(s)")
    header = f"{'layer':<{width}}{'density':>8}  {'mode':<22}{'dense ms':>9}{'sparse ms':>10}{'speedup':>9}"
    lines = [title, "", header]
    for name, row in timing["layers"].items():
        shown = f"{density[name]:.3f}" if name in density else "-"
        speedup = row["dense_ms"] / row["sparse_ms"] if row["sparse_ms"] > 0 else float("nan")
        lines.append(f"{name:<{width}}{shown:>8}  {row['mode']:<22}{row['dense_ms']:>9.3f}"
                     f"{row['sparse_ms']:>10.3f}{speedup:>8.2f}x")
    lines.append(f"{'whole net':<{width + 32}}{timing['dense_ms']:>9.3f}{timing['sparse_ms']:>10.3f}"
                 f"{timing['speedup']:>8.2f}x")
    accuracy = (f"test accuracy: dense {dense.accuracy:.4f}, pruned {final.accuracy:.4f}; "
                f"{100 * final.sparsity:.1f}% of the weights are zero")
    sizes = (f"ONNX: imported {onnx_sizes[0] / 1024:.0f} KiB, pruned export {onnx_sizes[1] / 1024:.0f} KiB "
             f"(sparse initializers)")
    return "\n".join([*lines, "", accuracy, sizes])


def prepare_data(args, work):
    """The train and test LMDBs and the training mean (made once per image count)."""
    train_db = work / f"cifar10_train{args.train_images}_lmdb"
    test_db = work / f"cifar10_test{args.test_images}_lmdb"
    make_lmdb(args.data, "train", args.train_images, train_db)
    make_lmdb(args.data, "test", args.test_images, test_db)
    mean = work / f"mean_train{args.train_images}.binaryproto"
    if not mean.exists():
        tool("compute_image_mean", train_db, mean)
    return train_db, test_db, mean


def train_dense(work, imported, iters):
    """``pyskim train`` from the imported weights; returns the last snapshot."""
    shutil.rmtree(work / "dense", ignore_errors=True)
    (work / "dense").mkdir()
    print(f"pyskim train: {iters} iterations (log: {work / 'dense' / 'train.log'})")
    with open(work / "dense" / "train.log", "w") as log_file:
        subprocess.run([sys.executable, "-m", "pyskim", "train", "--solver", str(work / "solver.prototxt"),
                        "--weights", str(imported)], stderr=log_file, check=True, cwd=work)
    return work / "dense" / f"cnn_iter_{iters}.caffemodel"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=pathlib.Path, default=REPO / "work" / "onnx_gsl")
    parser.add_argument("--data", type=pathlib.Path, default=REPO.parent / "shared" / "datasets" / "cifar10")
    parser.add_argument("--iters", type=int, default=2000,
                        help="iterations of dense training, of pruning and of fine-tuning")
    parser.add_argument("--train-images", type=int, default=20000)
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=64, help="batch of the timed forward passes")
    parser.add_argument("--time-iters", type=int, default=20, help="timed forward passes")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not (args.data / "cifar10-train-jpeg.tar").exists():
        sys.exit(f"error: no CIFAR-10 JPEG tars in {args.data} (pass --data)")
    import pyskim
    from pyskim.prune.gsl import run_gsl
    from pyskim.prune.plan import measure_compare
    pyskim.set_num_threads(args.threads)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    data = prepare_data(args, work)

    export_cnn(work / "cnn.onnx", args.seed)
    deploy, imported = work / "deploy.prototxt", work / "imported.caffemodel"
    print(tool("convert", "from-onnx", "--onnx", work / "cnn.onnx", "--out-prototxt", deploy,
               "--out-weights", imported, "--input-shape", f"{args.batch},3,32,32"))
    probe = np.random.default_rng(args.seed).standard_normal((args.batch, 3, 32, 32)).astype(np.float32)
    print(f"imported net vs onnxruntime: max |difference| "
          f"{max_difference(work / 'cnn.onnx', deploy, imported, probe):.2e}")

    write_training_files(work, data, args)
    dense_weights = train_dense(work, imported, args.iters)
    shutil.rmtree(work / "gsl", ignore_errors=True)
    result = run_gsl(str(work / "solver.prototxt"), str(dense_weights), str(work / "gsl"),
                     prune_iters=args.iters, finetune_iters=args.iters, batch=args.batch,
                     measure_iters=min(args.time_iters, 5), threads=args.threads, use_bar=False)
    print(result.table())
    pruned = pathlib.Path(result.out_dir) / "gsl_final.caffemodel"

    print(tool("convert", "to-onnx", "--model", deploy, "--weights", pruned, "--sparse-initializers",
               work / "pruned.onnx"))
    print(f"pruned export vs pyskim: max |difference| "
          f"{max_difference(work / 'pruned.onnx', deploy, pruned, probe):.2e}")
    # the deploy net to time: the pruned export imported again with BatchNorm folded into the
    # convolutions (a per-channel scale keeps every zero weight zero)
    folded, folded_weights = work / "pruned_folded.prototxt", work / "pruned_folded.caffemodel"
    print(tool("convert", "from-onnx", "--onnx", work / "pruned.onnx", "--out-prototxt", folded,
               "--out-weights", folded_weights, "--fold-batchnorm"))
    print(f"folded net vs onnxruntime: max |difference| "
          f"{max_difference(work / 'pruned.onnx', folded, folded_weights, probe):.2e}")
    timing = measure_compare(folded, folded_weights, iterations=args.time_iters)
    sizes = [os.path.getsize(work / name) for name in ("cnn.onnx", "pruned.onnx")]
    print()
    print(result_table(result, timing, densities(folded_weights), sizes, args))


if __name__ == "__main__":
    main()
