"""LeNet training speed: pyskim (``pyskim train`` path) vs PyTorch CPU on the same job, in one run.

    python benchmarks/train_lenet.py [--iters 2000] [--repeats 1] [--work DIR] [--no-torch]

The job is Caffe's ``lenet_solver.prototxt`` (``prototxt/lenet``): batch 64, SGD momentum 0.9, weight
decay 5e-4, ``inv`` lr policy, bias lr x2, Xavier init, a test pass of 100 x 100 images every 500
iterations and at the start, here cut to ``--iters`` iterations (default 2000: 5 test passes, the
same share of test work as the full 10,000-iteration job's 21).

* pyskim reads Fashion-MNIST from LMDBs made by ``tools/convert_mnist_data.py`` through its Data layer
  (prefetch thread), exactly as ``pyskim train`` does; the timed part is ``Solver.solve()``.
* PyTorch runs the same net (conv 20 5x5, max pool, conv 50 5x5, max pool, fc 500, ReLU, fc 10),
  optimizer and schedule on batches cut from the same uint8 arrays (scaled by 1/256 per batch).

Prints iterations/s (test passes included) for both and the ratio pyskim / PyTorch (> 1: pyskim is
faster), with the machine, thread counts and OPENBLAS_* settings. Reference: the real BVLC Caffe
(OpenBLAS, 2 cores) ran the whole 10,000-iteration job in 3 min 21 s on this kind of machine
(about 50 iterations/s).
"""
import argparse
import logging
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "datasets" / "fashion-mnist"
CAFFE_REFERENCE = (10000, 201.0)    # iterations, seconds (issue 3)
BATCH, TEST_BATCH, TEST_ITER, TEST_INTERVAL = 64, 100, 100, 500


def make_lmdbs(work):
    for split, prefix in (("train", "train"), ("test", "t10k")):
        db = work / f"fashion_mnist_{split}_lmdb"
        if not (db / "data.mdb").exists():
            subprocess.run([sys.executable, str(REPO / "tools" / "convert_mnist_data.py"),
                            str(DATA / f"{prefix}-images-idx3-ubyte.gz"), str(DATA / f"{prefix}-labels-idx1-ubyte.gz"),
                            str(db)], check=True, capture_output=True)


def run_pyskim(work, iters):
    """Seconds for Solver.solve() of the LeNet solver cut to ``iters`` iterations; final accuracy."""
    import pyskim
    from pyskim.io.protofiles import read_text, write_text
    from pyskim.proto import caffe_pb2
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
    return elapsed, s.mean_scores[0][0]


def run_torch(iters, threads):
    """Seconds for the same job in PyTorch; final accuracy."""
    import torch
    from torch import nn

    from pyskim.io.idx import read_idx
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(1)
    train_x = read_idx(DATA / "train-images-idx3-ubyte.gz")[:, None]
    train_y = torch.from_numpy(read_idx(DATA / "train-labels-idx1-ubyte.gz").astype(np.int64))
    test_x = read_idx(DATA / "t10k-images-idx3-ubyte.gz")[:, None]
    test_y = torch.from_numpy(read_idx(DATA / "t10k-labels-idx1-ubyte.gz").astype(np.int64))
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
    return time.perf_counter() - start, accuracy


def blas_info():
    try:
        config = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{config.get('name')} {config.get('version')}"
    except Exception:  # noqa: BLE001  (older numpy)
        return "unknown"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each framework (best is reported)")
    parser.add_argument("--work", type=pathlib.Path, default=None, help="folder for the LMDBs (default: temp)")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    parser.add_argument("--torch-threads", type=int, default=0, help="torch.set_num_threads (0: default)")
    args = parser.parse_args()
    tmp = None
    if args.work is None:
        tmp = tempfile.TemporaryDirectory(prefix="train_lenet_")
        args.work = pathlib.Path(tmp.name)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    make_lmdbs(work)
    tests = args.iters // TEST_INTERVAL + 1
    env = {k: v for k, v in os.environ.items() if k.startswith(("OPENBLAS", "OMP_", "MKL_"))}
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f}; numpy {np.__version__} with {blas_info()}; env {env or '{}'}")
    print(f"job: LeNet, batch {BATCH}, {args.iters} iterations, {tests} test passes of {TEST_ITER} x {TEST_BATCH}")
    results = {}
    best = min(run_pyskim(work, args.iters) for _ in range(args.repeats))
    results["pyskim"] = best
    print(f"pyskim : {best[0]:7.1f} s  {args.iters / best[0]:6.1f} iterations/s  final test accuracy "
          f"{best[1]:.4f}", flush=True)
    if not args.no_torch:
        import torch
        best = min(run_torch(args.iters, args.torch_threads) for _ in range(args.repeats))
        results["torch"] = best
        print(f"PyTorch: {best[0]:7.1f} s  {args.iters / best[0]:6.1f} iterations/s  final test accuracy "
              f"{best[1]:.4f}  (torch {torch.__version__}, {torch.get_num_threads()} threads)")
        print(f"ratio pyskim/PyTorch (iterations/s): {results['torch'][0] / results['pyskim'][0]:.2f}")
    iters, seconds = CAFFE_REFERENCE
    print(f"BVLC Caffe reference (issue 3): {iters} iterations in {seconds:.0f} s = {iters / seconds:.1f} "
          f"iterations/s; pyskim/Caffe: {(args.iters / results['pyskim'][0]) / (iters / seconds):.2f}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
