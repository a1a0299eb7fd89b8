#!/usr/bin/env python
"""Train Caffe's LeNet (``prototxt/lenet``) on Fashion-MNIST with ``pyskim train``, as ``caffe train``
would: convert the idx files to LMDBs, then run the solver in a work folder and write its log there.

    python examples/train_fashion_mnist.py                      # work/fashion_mnist, 10,000 iterations
    python examples/train_fashion_mnist.py --max-iter 500       # a short try
    python examples/train_fashion_mnist.py --data pyskim/datasets/fashion_mnist --max-iter 1000

``--data`` names a folder of idx files: ``train-*`` and ``t10k-*`` (all of Fashion-MNIST, or MNIST) are
converted with ``tools/convert_mnist_data.py``; a folder with only the ``t10k-*`` pair (such as the test split
embedded in pyskim for ``pyskim demo``) is split as the demo does, 8,000 images for training and 2,000
held out (and the solver's ``test_iter`` is cut to cover those 2,000 once).

The work folder gets ``fashion_mnist_{train,test}_lmdb`` (made once, reused later), copies of the
prototxts, ``train.log`` (Caffe's log format, so Caffe's ``parse_log.py`` reads it) and the
snapshots ``lenet_iter_<N>.caffemodel`` / ``.solverstate``. The last test accuracy is printed at the end.
"""
import argparse
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "fashion-mnist"
SPLITS = (("train", "train"), ("test", "t10k"))


def convert(data, work):
    """Make the two LMDBs in ``work`` unless they exist; returns the number of held-out images."""
    dbs = {split: work / f"fashion_mnist_{split}_lmdb" for split, _ in SPLITS}
    if all((db / "data.mdb").exists() for db in dbs.values()):
        print(f"Using the existing {dbs['train']} and {dbs['test']}")
        return _count(dbs["test"])
    for db in dbs.values():
        shutil.rmtree(db, ignore_errors=True)
    from pyskim.apps.convert_mnist_data import convert_arrays
    from pyskim.apps.demo import idx_pair, load_dataset
    pairs = {split: idx_pair(data, prefix) for split, prefix in SPLITS}
    if all(pairs.values()):
        for split, (images, labels) in pairs.items():
            print(f"Converting {images} and {labels} to {dbs[split]}")
            subprocess.run([sys.executable, str(REPO / "tools" / "convert_mnist_data.py"), str(images), str(labels),
                            str(dbs[split])], check=True)
        return _count(dbs["test"])
    if not pairs["test"]:
        sys.exit(f"error: no train-*/t10k-* idx files in {data} (download Fashion-MNIST there, or pass --data)")
    _, train_x, train_y, test_x, test_y = load_dataset(data)
    print(f"Splitting {data} t10k: {len(train_x)} images to {dbs['train']}, {len(test_x)} to {dbs['test']}")
    convert_arrays(train_x, train_y, dbs["train"])
    convert_arrays(test_x, test_y, dbs["test"])
    return len(test_x)


def _count(db):
    import lmdb
    with lmdb.open(str(db), readonly=True, lock=False) as env:
        return env.stat()["entries"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=pathlib.Path, default=DEFAULT_DATA,
                        help="folder with the Fashion-MNIST idx files (default: %(default)s)")
    parser.add_argument("--work", type=pathlib.Path, default=REPO / "work" / "fashion_mnist",
                        help="folder for the LMDBs, the log and the snapshots (default: %(default)s)")
    parser.add_argument("--max-iter", type=int, default=None,
                        help="stop after this many iterations instead of the solver's 10,000")
    parser.add_argument("--snapshot", type=int, default=None,
                        help="snapshot every this many iterations instead of the solver's 5,000")
    parser.add_argument("--blas-threads", type=int, default=None,
                        help="OpenBLAS threads for the run (default: the environment's OPENBLAS_NUM_THREADS; "
                             "if unset, 1 when the machine is busy, else OpenBLAS's own default)")
    args = parser.parse_args(argv)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    held_out = convert(args.data.resolve(), work)
    shutil.copy(REPO / "prototxt" / "lenet" / "lenet_train_test.prototxt", work)
    solver_text = (REPO / "prototxt" / "lenet" / "lenet_solver.prototxt").read_text()
    if args.max_iter is not None:
        solver_text = re.sub(r"(?m)^max_iter: \d+", f"max_iter: {args.max_iter}", solver_text)
    if args.snapshot is not None:
        solver_text = re.sub(r"(?m)^snapshot: \d+", f"snapshot: {args.snapshot}", solver_text)
    if held_out < 10000:    # the solver's test_iter covers 10,000 test images at batch 100
        solver_text = re.sub(r"(?m)^test_iter: \d+", f"test_iter: {-(-held_out // 100)}", solver_text)
    (work / "lenet_solver.prototxt").write_text(solver_text)
    env = dict(os.environ)
    if args.blas_threads is not None:
        env["OPENBLAS_NUM_THREADS"] = str(args.blas_threads)
    elif "OPENBLAS_NUM_THREADS" not in env and os.getloadavg()[0] >= (os.cpu_count() or 1) - 0.5:
        # Multi-threaded GEMMs stall when a worker thread waits for a busy core: on a loaded machine
        # one thread per GEMM trains several times faster (benchmarks/RESULTS.md).
        print(f"The machine is busy (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores): "
              "running with OPENBLAS_NUM_THREADS=1 (override with --blas-threads)")
        env["OPENBLAS_NUM_THREADS"] = "1"
    log_path = work / "train.log"
    print(f"Training: pyskim train --solver lenet_solver.prototxt (in {work}); log: {log_path}")
    start = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "pyskim", "train", "--solver", "lenet_solver.prototxt"],
                                   cwd=work, stderr=subprocess.STDOUT, stdout=subprocess.PIPE, text=True, env=env)
        for line in process.stdout:
            log.write(line)
            if "Test net output" in line or "Iteration" in line and "loss" in line:
                print(line, end="", flush=True)
        code = process.wait()
    elapsed = time.perf_counter() - start
    if code:
        sys.exit(f"pyskim train failed (exit code {code}); see {log_path}")
    accuracies = re.findall(r"Test net output #\d+: accuracy = ([\d.]+)", log_path.read_text())
    print(f"Done in {elapsed:.0f} s; final test accuracy: {accuracies[-1] if accuracies else 'n/a'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
