#!/usr/bin/env python
"""Guided pruning at CIFAR-10 scale: Caffe's trained ``cifar10_full`` pruned with GESL, GDNS and the
plain magnitude baseline, from the JPEG tars to one comparison table.

    python examples/gsl_cifar10.py                                   # work/gsl_cifar10, all three methods
    python examples/gsl_cifar10.py --methods gesl --prune-iters 100 --finetune-iters 100 \\
        --train-images 2000 --test-images 1000 --measure-iters 5        # a quick try

Needs ``../shared`` (``--shared``): ``datasets/cifar10`` (the JPEG tars and ``mean_rgb_train.binaryproto``)
and ``models/trained/everpeace_caffe/cifar10`` (the V1 prototxts and ``cifar10_full_iter_60000.caffemodel``).
The steps, all in ``--work`` (data and finished runs are kept and reused):

1. **Data**: the first ``--train-images`` / ``--test-images`` JPEGs (the classes in turn) are
   extracted and converted with ``tools/convert_imageset.py`` (``-shuffle`` for training:
   ``cifar10_train_lmdb``, ``cifar10_test_lmdb``; :mod:`pyskim.apps.cifar10_jpeg`). That tool stores
   BGR planes, as Caffe's, so the RGB mean is written with its channels reversed (``mean_bgr.binaryproto``).
2. **Model**: the model was trained on RGB planes (Caffe's ``convert_cifar_data``), so its conv1
   weights get their input channels reversed (``cifar10_full_bgr.caffemodel``): conv1 then computes on
   BGR planes minus the BGR mean exactly what it computed on RGB ones. The V1 train/test prototxt is
   upgraded and pointed at the LMDBs and the mean (``cifar10_full_train_test.prototxt``); the solver is
   Caffe's (``base_lr`` 0.001 fixed, momentum 0.9, ``weight_decay`` 0.004), its test pass covering the
   test LMDB once (``cifar10_full_solver.prototxt``).
3. **Dense accuracy**: ``pyskim test`` on the test LMDB; on all 10,000 test images BVLC Caffe gives
   0.7697 (``../shared/models/trained/README.md``).
4. **Prune**: ``tools/gsl.py --method M`` for each of ``--methods`` into ``gsl_<M>/`` with the same
   budget (``--prune-iters``, ``--finetune-iters``; magnitude has no prune training, only the
   fine-tune), the final model timed dense vs sparse at ``--measure-batches`` x ``--measure-threads``.
   The guided runs get :data:`GSL_SETTINGS` (each a flag of this script too); the magnitude run
   prunes every layer to ``--sparsity``, by default the share of all weights the guided run before it
   zeroed (Han et al.'s baseline at the same total sparsity). Flags this script does not know are
   passed to every ``tools/gsl.py`` run as they are.
5. **Table**: the runs side by side (:func:`pyskim.prune.report.methods_table`), printed and written
   to ``methods.txt``; each run's own report is ``gsl_<M>/report.txt``, its numbers ``gsl_<M>/gsl.json``.
"""
import argparse
import pathlib
import re
import subprocess
import sys
import time

import pyskim
from pyskim.apps.cifar10_jpeg import bgr_mean, jpeg_lmdb
from pyskim.io.protofiles import write_text
from pyskim.io.upgrade import read_net_text, read_solver_text
from pyskim.proto import caffe_pb2
from pyskim.prune.report import GSLResult, methods_table

REPO = pathlib.Path(__file__).resolve().parents[1]
MODEL = "cifar10_full_iter_60000.caffemodel"
BVLC_ACCURACY = 0.7697          # BVLC Caffe on the 10,000 test JPEGs (../shared/models/trained/README.md)
TEST_BATCH = 100
#: The tools/gsl.py settings of the recorded runs (benchmarks/RESULTS.md): a strong L1 pull that takes
#: the guided layers to their floors within the first thousand iterations (the defaults of tools/gsl.py
#: are sized for LeNet), a fine-tune whose last quarter runs at a tenth of the learning rate, and a
#: plan for what issue 16 measures: batch 1 on one thread.
GSL_SETTINGS = (("--base-lr", "0.001", "prune-stage base_lr"),
                ("--weight-decay", "0.01", "prune-stage L1 strength"),
                ("--finetune-lr-drop", "0.75", "fraction of fine-tuning before the learning rate drops"),
                ("--batch", "1", "batch the performance model plans for"),
                ("--plan-threads", "1", "threads the performance model plans for"))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--work", type=pathlib.Path, default=REPO / "work" / "gsl_cifar10")
    p.add_argument("--shared", type=pathlib.Path, default=REPO.parent / "shared",
                   help="the folder holding datasets/cifar10 and models/trained (default: %(default)s)")
    p.add_argument("--methods", default="gesl,gdns,magnitude", help="comma-separated (default: %(default)s)")
    p.add_argument("--train-images", type=int, default=50000, help="training JPEGs converted (default: all)")
    p.add_argument("--test-images", type=int, default=10000,
                   help=f"test JPEGs converted, a multiple of {TEST_BATCH} (default: all)")
    p.add_argument("--prune-iters", type=int, default=3000, help="default: %(default)s")
    p.add_argument("--finetune-iters", type=int, default=8000, help="default: %(default)s")
    for flag, value, what in GSL_SETTINGS:
        p.add_argument(flag, default=value, help=f"{what} (tools/gsl.py's {flag}; default: %(default)s)")
    p.add_argument("--sparsity", type=float, default=None,
                   help="magnitude: the fraction of each layer's weights zeroed (default: the share of all "
                        "weights the guided method run before it zeroed, else tools/gsl.py's 0.9)")
    p.add_argument("--threads", type=int, default=0, help="pyskim's threads (default: as set)")
    p.add_argument("--measure-iters", type=int, default=20, help="timed forwards per measurement")
    p.add_argument("--measure-batches", default="1,100", help="default: %(default)s")
    p.add_argument("--measure-threads", default="1,2", help="default: %(default)s")
    args, gsl_flags = p.parse_known_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    if not methods or set(methods) - {"gesl", "gdns", "magnitude"}:
        p.error(f"--methods takes gesl, gdns and magnitude, got '{args.methods}'")
    if not 0 < args.test_images <= 10000 or args.test_images % TEST_BATCH:
        p.error(f"--test-images must be a multiple of {TEST_BATCH} in 100..10000")
    if not 0 < args.train_images <= 50000:
        p.error("--train-images must be in 1..50000")
    return args, methods, gsl_flags


def make_data(args, work):
    """The LMDBs and the BGR mean (step 1); returns (train LMDB, test LMDB, mean file)."""
    data = args.shared / "datasets" / "cifar10"
    convert = [sys.executable, str(REPO / "tools" / "convert_imageset.py")]
    suffix = {"train": "" if args.train_images == 50000 else str(args.train_images),
              "test": "" if args.test_images == 10000 else str(args.test_images)}
    dbs = {}
    for split, count in (("train", args.train_images), ("test", args.test_images)):
        db = work / f"cifar10_{split}{suffix[split]}_lmdb"
        if not (db / "data.mdb").exists():
            print(f"Converting {count} {split} JPEGs to {db} (tools/convert_imageset.py"
                  f"{' -shuffle' if split == 'train' else ''})", flush=True)
        dbs[split] = jpeg_lmdb(data / f"cifar10-{split}-jpeg.tar", split, db, count, shuffle=split == "train",
                               convert=convert)
    mean = work / "mean_bgr.binaryproto"
    bgr_mean(data / "mean_rgb_train.binaryproto", mean)
    return dbs["train"], dbs["test"], mean


def make_model(args, work, train_db, test_db, mean):
    """The BGR caffemodel, the train/test prototxt and the solver (step 2); returns (solver, caffemodel)."""
    models = args.shared / "models" / "trained" / "everpeace_caffe" / "cifar10"
    bgr_model = work / "cifar10_full_bgr.caffemodel"
    if not bgr_model.exists():
        net = pyskim.Net(str(models / "cifar10_full.prototxt"), pyskim.TEST, weights=str(models / MODEL))
        conv1 = net.params["conv1"][0].data
        conv1[...] = conv1[:, ::-1].copy()              # input channels RGB -> BGR
        net.save(str(bgr_model))
    net = read_net_text(str(models / "cifar10_full_train_test.prototxt"))       # V1, upgraded on read
    for layer in net.layer:
        if layer.type == "Data":
            train = any(rule.phase == caffe_pb2.TRAIN for rule in layer.include)
            layer.data_param.source = str(train_db if train else test_db)
            layer.data_param.backend = caffe_pb2.DataParameter.LMDB
            layer.transform_param.mean_file = str(mean)
    net_file = work / "cifar10_full_train_test.prototxt"
    write_text(net_file, net)
    solver = read_solver_text(str(models / "cifar10_full_solver.prototxt"))
    solver.net = str(net_file)
    solver.test_iter[:] = [args.test_images // TEST_BATCH]
    solver.solver_mode = caffe_pb2.SolverParameter.CPU
    solver.snapshot_prefix = str(work / "cifar10_full")
    solver.random_seed = 1
    solver_file = work / "cifar10_full_solver.prototxt"
    write_text(solver_file, solver)
    return solver_file, bgr_model


def dense_accuracy(args, work, model):
    """``pyskim test`` of ``model`` over the test LMDB once (step 3)."""
    command = [sys.executable, "-m", "pyskim", "test", "-model", str(work / "cifar10_full_train_test.prototxt"),
               "-weights", str(model), "-iterations", str(args.test_images // TEST_BATCH)]
    if args.threads:
        command += ["-threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    found = re.findall(r"\] accuracy = ([0-9.]+)", done.stderr)
    if done.returncode or not found:
        sys.exit(f"pyskim test failed:\n{done.stderr[-3000:]}")
    return float(found[-1])


def prune(args, work, method, solver, model, gsl_flags, sparsity=None):
    """``tools/gsl.py --method method`` into ``gsl_<method>`` (step 4; ``sparsity``: the magnitude
    baseline's); resumes an unfinished run."""
    out = work / f"gsl_{method}"
    if (out / "report.txt").exists() and (out / "gsl_final.sparse.npz").exists():
        print(f"{method}: using the finished run in {out}")
        return out
    command = [sys.executable, str(REPO / "tools" / "gsl.py"), "--solver", str(solver), "--weights", str(model),
               "--out", str(out), "--method", method, "--prune-iters", str(args.prune_iters),
               "--finetune-iters", str(args.finetune_iters), "--measure-iters", str(args.measure_iters),
               "--measure-batches", args.measure_batches, "--measure-threads", args.measure_threads]
    for flag, _, _ in GSL_SETTINGS:
        command += [flag, str(getattr(args, flag[2:].replace("-", "_")))]
    command += gsl_flags
    if args.threads:
        command += ["--threads", str(args.threads)]
    if method == "magnitude" and sparsity is not None:
        command += ["--sparsity", f"{sparsity:.4f}"]
    if (out / "gsl.json").exists():
        command.append("--resume")
    print(f"\n{method}: {' '.join(command[1:])}", flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    print(f"{method}: done in {time.perf_counter() - start:.0f} s", flush=True)
    return out


def main(argv=None):
    args, methods, gsl_flags = parse_args(argv)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    train_db, test_db, mean = make_data(args, work)
    solver, model = make_model(args, work, train_db, test_db, mean)
    accuracy = dense_accuracy(args, work, model)
    reference = f" (BVLC Caffe: {BVLC_ACCURACY})" if args.test_images == 10000 else ""
    print(f"dense cifar10_full: test accuracy {accuracy:.4f} on {args.test_images} images{reference}", flush=True)
    outs = []
    for method in methods:
        sparsity = args.sparsity
        if method == "magnitude" and sparsity is None and outs:     # the guided run's share of zeros
            sparsity = GSLResult.load(outs[0] / "gsl.json").stages["finetune"].sparsity
        outs.append(prune(args, work, method, solver, model, gsl_flags, sparsity))

    table = methods_table([GSLResult.load(out / "gsl.json") for out in outs])
    (work / "methods.txt").write_text(table + "\n")
    print(f"\n{table}\n\n(table: {work / 'methods.txt'})")


if __name__ == "__main__":
    main()
