#!/usr/bin/env python
"""Train Caffe's LeNet (``prototxt/lenet``) on Fashion-MNIST with ``pyskim train``, as ``caffe train``
would: convert the idx files to LMDBs with ``tools/convert_mnist.py``, then run the solver in a work
folder and write its log there.

    python examples/train_fashion_mnist.py                      # work/fashion_mnist, 10,000 iterations
    python examples/train_fashion_mnist.py --max-iter 500       # a short try

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


def idx_file(data, prefix, kind):
    """``<prefix>-<kind>-idx?-ubyte`` in ``data``, gzipped or not."""
    for name in (f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte.gz",
                 f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"):
        if (data / name).exists():
            return data / name
    sys.exit(f"error: no {prefix} {kind} idx file in {data} (download Fashion-MNIST there, or pass --data)")


def convert(data, work):
    for split, prefix in SPLITS:
        db = work / f"fashion_mnist_{split}_lmdb"
        if (db / "data.mdb").exists():
            print(f"Using the existing {db}")
            continue
        shutil.rmtree(db, ignore_errors=True)
        print(f"Converting Fashion-MNIST {split} to {db}")
        subprocess.run([sys.executable, str(REPO / "tools" / "convert_mnist.py"), str(idx_file(data, prefix, "images")),
                        str(idx_file(data, prefix, "labels")), str(db)], check=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=pathlib.Path, default=DEFAULT_DATA,
                        help="folder with the Fashion-MNIST idx files (default: %(default)s)")
    parser.add_argument("--work", type=pathlib.Path, default=REPO / "work" / "fashion_mnist",
                        help="folder for the LMDBs, the log and the snapshots (default: %(default)s)")
    parser.add_argument("--max-iter", type=int, default=None,
                        help="stop after this many iterations instead of the solver's 10,000")
    parser.add_argument("--blas-threads", type=int, default=None,
                        help="OpenBLAS threads for the run (default: the environment's OPENBLAS_NUM_THREADS; "
                             "if unset, 1 when the machine is busy, else OpenBLAS's own default)")
    args = parser.parse_args(argv)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    convert(args.data.resolve(), work)
    shutil.copy(REPO / "prototxt" / "lenet" / "lenet_train_test.prototxt", work)
    solver_text = (REPO / "prototxt" / "lenet" / "lenet_solver.prototxt").read_text()
    if args.max_iter is not None:
        solver_text = re.sub(r"(?m)^max_iter: \d+", f"max_iter: {args.max_iter}", solver_text)
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
