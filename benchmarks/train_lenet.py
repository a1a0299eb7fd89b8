"""LeNet training speed: pyskim (``pyskim train`` path) vs PyTorch CPU on the same job, one process per
framework, interleaved in rounds.

    python benchmarks/train_lenet.py [--iters 2000] [--rounds 3] [--threads 1 2] [--work DIR] [--no-torch]

Needs: pyskim, and for the peer torch (``pip install torch``); threadpoolctl (``pip install
threadpoolctl``) for the thread-pool report. Neither is a pyskim dependency.

The job is Caffe's ``lenet_solver.prototxt`` (``prototxt/lenet``): batch 64, SGD momentum 0.9, weight
decay 5e-4, ``inv`` lr policy, bias lr x2, Xavier init, a test pass of 100 x 100 images every 500
iterations and at the start, here cut to ``--iters`` iterations (default 2000: 5 test passes, the
same share of test work as the full 10,000-iteration job's 21).

* pyskim reads Fashion-MNIST from LMDBs made by ``tools/convert_mnist_data.py`` through its Data layer
  (prefetch thread), exactly as ``pyskim train`` does; the timed part is ``Solver.solve()``.
* PyTorch runs the same net (conv 20 5x5, max pool, conv 50 5x5, max pool, fc 500, ReLU, fc 10),
  optimizer and schedule on batches cut from the same uint8 arrays (scaled by 1/256 per batch).

Each thread count in ``--threads`` (0: each framework's default) starts one child per framework from a
clean copy of this script's environment (the parent never imports a framework, so PyTorch never sees
what pyskim sets at import; pyskim's child imports numpy first, as most user scripts do). Threads:
``pyskim.kernels.set_num_threads`` + ``OMP_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS`` for pyskim,
``torch.set_num_threads`` for PyTorch. Round r trains pyskim, then PyTorch, once each; then round r + 1.
Prints each run's iterations/s (test passes included) and final test accuracy, the ratio pyskim /
PyTorch iterations/s per round (> 1: pyskim is faster) with its median, each child's thread pools
(threadpoolctl) and the load average before and after. Reference: the real BVLC Caffe (OpenBLAS,
2 cores) ran the whole 10,000-iteration job in 3 min 21 s on this kind of machine (about 50
iterations/s).
"""
import argparse
import gzip
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

from bench_common import (
    PyskimServer,
    TorchServer,
    load_average_text,
    ratio_text,
    serve_if_worker,
    training_rounds,
    training_workers,
    worker_environment,
)

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "datasets" / "fashion-mnist"
CAFFE_REFERENCE = (10000, 201.0)    # iterations, seconds (issue 3)
BATCH, TEST_BATCH, TEST_ITER, TEST_INTERVAL = 64, 100, 100, 500


def make_lmdbs(work):
    """Fashion-MNIST train / test LMDBs in ``work`` (kept when already there)."""
    for split, prefix in (("train", "train"), ("test", "t10k")):
        db = work / f"fashion_mnist_{split}_lmdb"
        if not (db / "data.mdb").exists():
            subprocess.run([sys.executable, str(REPO / "tools" / "convert_mnist_data.py"),
                            str(DATA / f"{prefix}-images-idx3-ubyte.gz"), str(DATA / f"{prefix}-labels-idx1-ubyte.gz"),
                            str(db)], check=True, capture_output=True, env=worker_environment())


def read_idx_ubyte(path):
    """A gzipped IDX file of unsigned bytes (MNIST's format: 0, 0, type 0x08, ndim, then ndim big-endian
    uint32 sizes and the data) as a uint8 array; read here so that PyTorch's child never imports pyskim."""
    import numpy as np
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if raw[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    shape = tuple(int(v) for v in np.frombuffer(raw, ">u4", ndim, 4))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


class PyskimTrain(PyskimServer):
    def train(self, work, iters):
        """Seconds for Solver.solve() of the LeNet solver cut to ``iters`` iterations; final accuracy."""
        import logging

        import pyskim
        from pyskim.io.protofiles import read_text, write_text
        from pyskim.proto import caffe_pb2
        work = pathlib.Path(work)
        solver = read_text(REPO / "prototxt" / "lenet" / "lenet_solver.prototxt", caffe_pb2.SolverParameter())
        solver.max_iter = iters
        solver.snapshot = 0
        solver.snapshot_after_train = False
        solver.net = str(REPO / "prototxt" / "lenet" / "lenet_train_test.prototxt")
        write_text(work / "bench_solver.prototxt", solver)
        cwd = os.getcwd()
        os.chdir(work)                       # the Data layers' sources are relative, as in Caffe
        try:
            logging.getLogger("pyskim").setLevel(logging.WARNING)
            s = pyskim.get_solver(str(work / "bench_solver.prototxt"))
            start = time.perf_counter()
            s.solve()
            elapsed = time.perf_counter() - start
        finally:
            os.chdir(cwd)
        return {"seconds": elapsed, "accuracy": float(s.mean_scores[0][0])}


class TorchTrain(TorchServer):
    def train(self, iters):
        """Seconds for the same job in PyTorch; final accuracy."""
        import numpy as np
        import torch
        from torch import nn
        torch.manual_seed(1)
        train_x = read_idx_ubyte(DATA / "train-images-idx3-ubyte.gz")[:, None]
        train_y = torch.from_numpy(read_idx_ubyte(DATA / "train-labels-idx1-ubyte.gz").astype(np.int64))
        test_x = read_idx_ubyte(DATA / "t10k-images-idx3-ubyte.gz")[:, None]
        test_y = torch.from_numpy(read_idx_ubyte(DATA / "t10k-labels-idx1-ubyte.gz").astype(np.int64))
        net = nn.Sequential(nn.Conv2d(1, 20, 5), nn.MaxPool2d(2, 2), nn.Conv2d(20, 50, 5), nn.MaxPool2d(2, 2),
                            nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10))
        for module in net:
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()            # Caffe's xavier: U(-sqrt(3/fan_in), +)
                nn.init.uniform_(module.weight, -np.sqrt(3 / fan_in), np.sqrt(3 / fan_in))
                nn.init.zeros_(module.bias)
        weights = [p for n, p in net.named_parameters() if n.endswith("weight")]
        biases = [p for n, p in net.named_parameters() if n.endswith("bias")]
        base_lr = 0.01
        optimizer = torch.optim.SGD([{"params": weights, "lr": base_lr}, {"params": biases, "lr": 2 * base_lr}],
                                    lr=base_lr, momentum=0.9, weight_decay=5e-4)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: (1 + 1e-4 * it) ** -0.75)
        loss_fn = nn.CrossEntropyLoss()
        scale = np.float32(0.00390625)

        def batch(images, labels, start, size):
            idx = np.arange(start, start + size) % len(images)
            return torch.from_numpy(images[idx].astype(np.float32) * scale), labels[idx]

        def test():
            net.eval()
            correct = 0
            with torch.no_grad():
                for i in range(TEST_ITER):
                    x, y = batch(test_x, test_y, i * TEST_BATCH, TEST_BATCH)
                    correct += int((net(x).argmax(1) == y).sum())
            net.train()
            return correct / (TEST_ITER * TEST_BATCH)

        start = time.perf_counter()
        accuracy = None
        for it in range(iters + 1):
            if it % TEST_INTERVAL == 0:
                accuracy = test()
            if it == iters:
                break
            x, y = batch(train_x, train_y, it * BATCH, BATCH)
            optimizer.zero_grad(set_to_none=False)
            loss_fn(net(x), y).backward()
            optimizer.step()
            schedule.step()
        return {"seconds": time.perf_counter() - start, "accuracy": accuracy}


SERVERS = {"pyskim": PyskimTrain, "torch": TorchTrain}


def measure(threads, args, work):
    """``args.rounds`` interleaved rounds at one thread count; prints each run and the ratios."""
    print(f"\n=== threads {threads or 'default'}; {load_average_text()}", flush=True)
    workers = training_workers(__file__, threads, args.no_torch)
    try:   # pyskim reads its LMDBs in work
        runs = training_rounds(workers, args.rounds, args.iters,
                               lambda label: {"iters": args.iters, **({"work": str(work)} if label == "pyskim" else {})})
    finally:
        for worker in workers.values():
            worker.close()
    seconds = {label: [run["seconds"] for run in done] for label, done in runs.items()}
    pyskim_rate = args.iters / statistics.median(seconds["pyskim"])
    print(f"pyskim median {pyskim_rate:.1f} iterations/s", end="")
    if "torch" in seconds:
        print(f", PyTorch median {args.iters / statistics.median(seconds['torch']):.1f}; pyskim/PyTorch "
              f"iterations/s per round {ratio_text(seconds['torch'], seconds['pyskim'])}", end="")
    iters, caffe_seconds = CAFFE_REFERENCE
    print(f"\nBVLC Caffe reference (issue 3, 2 cores): {iters / caffe_seconds:.1f} iterations/s; "
          f"pyskim/Caffe {pyskim_rate / (iters / caffe_seconds):.2f}")
    print(f"=== threads {threads or 'default'} done; {load_average_text()}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (one run of each framework)")
    parser.add_argument("--threads", type=int, nargs="+", default=[0],
                        help="thread counts, one pair of processes each (0: each framework's default)")
    parser.add_argument("--work", type=pathlib.Path, default=None, help="folder for the LMDBs (default: temp)")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}; {load_average_text()}")
    print(f"job: LeNet, batch {BATCH}, {args.iters} iterations, {args.iters // TEST_INTERVAL + 1} test passes "
          f"of {TEST_ITER} x {TEST_BATCH}")
    with tempfile.TemporaryDirectory(prefix="train_lenet_") as tmp:
        work = (args.work or pathlib.Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        make_lmdbs(work)
        for threads in args.threads:
            measure(threads, args, work)


if __name__ == "__main__":
    serve_if_worker(SERVERS)
    main()
