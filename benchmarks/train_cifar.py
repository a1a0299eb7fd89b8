"""CIFAR-10 "full" training speed: pyskim (its Solver on LMDBs) vs PyTorch CPU on the same job, one
process per framework, interleaved in rounds.

    python benchmarks/train_cifar.py [--iters 1000] [--rounds 3] [--threads 1 2] [--work DIR]
        [--train-images 50000] [--test-interval 1000] [--test-iter 100] [--no-torch]

Quick check: ``--iters 20 --rounds 1 --threads 1 --train-images 2000 --work /tmp/cifar_bench``.
Needs: pyskim, and for the peer torch (``pip install torch``); threadpoolctl for the thread-pool
report. Neither is a pyskim dependency.

The job is Caffe's ``cifar10_full_solver.prototxt`` / ``cifar10_full_train_test.prototxt``
(``prototxt/cifar10``): batch 100, SGD momentum 0.9, weight decay 0.004 (x250 on ip1's weights, none
on its bias), lr 0.001 ``fixed``, bias lr x2 (not on conv3), gaussian fillers, the mean file
subtracted, LRN ``WITHIN_CHANNEL``. It is cut to ``--iters`` iterations (default 1000), snapshots and
display off, ``random_seed: 1`` (PyTorch: ``manual_seed(1)``). Test passes are the solver's:
``--test-iter`` (default 100) x 100 test images at iteration 0 and every ``--test-interval`` (default
1000) iterations, the last one included; the default run (2 passes in 1000 iterations) thus spends
about twice the share of its time testing that the full 60,000-iteration job does (61 passes).

Data, built once into ``--work`` (kept when present): the JPEG tars of ``../shared/datasets/cifar10``
are extracted to a temporary folder there, listed (``--train-images`` N: the first N of a list that
takes the classes in turn, default all 50,000; the test LMDB always holds the 10,000 test images),
and converted as a Caffe user does, with ``tools/convert_imageset.py`` (``-shuffle`` for the train
list; about 15 s for all of it on 2 cores). That tool stores BGR planes, so
``mean_rgb_train.binaryproto`` (RGB) is written there with its channels reversed. The LMDBs' uint8
Datums (in key order, the order the Data layer reads them) and that BGR mean are also saved as .npy
files, which PyTorch's child reads: both frameworks see the same images, labels, order and mean.

* pyskim: ``pyskim.get_solver`` on a copy of the solver (net copy with absolute LMDB / mean paths);
  the timed part is ``Solver.solve()``, its Data layers reading the LMDBs (prefetch thread).
* PyTorch: the same net in ``torch.nn`` (ceil-mode pooling as Caffe; LRN within a channel as Caffe's
  Power -> AVE pool (padding counted) -> Power chain, i.e. alpha / local_size^2 on the sum of squares),
  the same fillers, lr / decay multipliers, SGD with momentum and fixed lr, batches cut in order from
  the same uint8 arrays minus the mean, and the same test passes (test cursor carried on as Caffe's).
  The pooled blob shapes of both are compared.

Each thread count in ``--threads`` (0: each framework's default) starts one child per framework from
a clean copy of this script's environment (see ``bench_common``; pyskim's child imports numpy
first). Round r trains pyskim, then PyTorch; then round r + 1. Prints each run's iterations/s (test
passes included) and final test accuracy, the per-round ratio pyskim / PyTorch iterations/s (> 1:
pyskim is faster) with its median, each child's thread pools and the load average before and after.
"""
import argparse
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time

from bench_common import (
    PyskimServer,
    TorchServer,
    Worker,
    load_average_text,
    pyskim_environment,
    ratio_text,
    serve_if_worker,
    training_rounds,
    training_workers,
)

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "datasets" / "cifar10"
PROTOTXT = REPO / "prototxt" / "cifar10"
TRAIN_IMAGES, TEST_IMAGES, BATCH = 50000, 10000, 100
# The solver and net values PyTorch copies (the pyskim child checks them against the prototxts).
SOLVER = {"type": "SGD", "lr_policy": "fixed", "base_lr": 0.001, "momentum": 0.9, "weight_decay": 0.004}
# layer -> gaussian std, (weight lr_mult, decay_mult), (bias lr_mult, decay_mult)
LAYERS = {"conv1": (1e-4, (1, 1), (2, 1)), "conv2": (0.01, (1, 1), (2, 1)),
          "conv3": (0.01, (1, 1), (1, 1)), "ip1": (0.01, (1, 250), (2, 0))}
LRN = (3, 5e-5, 0.75)        # local_size, alpha, beta


def train_name(n):
    return "cifar10_train" if n == TRAIN_IMAGES else f"cifar10_train{n}"


def make_data(work, n_train):
    """The LMDBs, the BGR mean and their .npy copies in ``work`` (made once, by a pyskim child)."""
    name = train_name(n_train)
    needed = [work / f"{name}_lmdb" / "data.mdb", work / "cifar10_test_lmdb" / "data.mdb",
              work / f"{name}_images.npy", work / "cifar10_test_images.npy", work / "mean_bgr.npy",
              work / "mean.binaryproto"]
    if all(p.exists() for p in needed):
        return
    start = time.perf_counter()
    prep = Worker(__file__, "pyskim", 0, pyskim_environment(0))
    try:
        prep.call("prepare", work=str(work), n_train=n_train)
    finally:
        prep.close()
    print(f"data built in {work} in {time.perf_counter() - start:.0f} s", flush=True)


class PyskimTrain(PyskimServer):
    def prepare(self, work, n_train):
        """Extract, list and convert (``tools/convert_imageset.py``) the JPEGs; the BGR mean; the .npy
        copies."""
        import numpy as np

        from pyskim.apps.cifar10_jpeg import bgr_mean, jpeg_lmdb
        work = pathlib.Path(work)
        convert = (sys.executable, str(REPO / "tools" / "convert_imageset.py"))
        for split, n, name in (("train", n_train, train_name(n_train)), ("test", TEST_IMAGES, "cifar10_test")):
            db = jpeg_lmdb(DATA / f"cifar10-{split}-jpeg.tar", split, work / f"{name}_lmdb", n,
                           shuffle=split == "train", convert=convert)
            if not (work / f"{name}_images.npy").exists():
                images, labels = read_lmdb(db)
                np.save(work / f"{name}_labels.npy", labels)
                np.save(work / "images.partial.npy", images)
                os.replace(work / "images.partial.npy", work / f"{name}_images.npy")
        bgr = bgr_mean(DATA / "mean_rgb_train.binaryproto", work / "mean.binaryproto")
        np.save(work / "mean_bgr.npy", bgr[0])

    def train(self, work, iters, n_train, test_interval, test_iter):
        """Seconds for Solver.solve() of the CIFAR-10 full solver cut to ``iters``; final accuracy; shapes."""
        import logging

        import pyskim
        from pyskim.io.protofiles import read_text, write_text
        from pyskim.proto import caffe_pb2
        work = pathlib.Path(work)
        net = read_text(PROTOTXT / "cifar10_full_train_test.prototxt", caffe_pb2.NetParameter())
        for layer in net.layer:
            if layer.type == "Data":
                name = train_name(n_train) if layer.include[0].phase == caffe_pb2.TRAIN else "cifar10_test"
                layer.data_param.source = str(work / f"{name}_lmdb")
                layer.transform_param.mean_file = str(work / "mean.binaryproto")
            elif layer.name in LAYERS:
                check_layer(layer)
        write_text(work / "bench_cifar10_full_train_test.prototxt", net)
        solver = read_text(PROTOTXT / "cifar10_full_solver.prototxt", caffe_pb2.SolverParameter())
        found = {key: getattr(solver, key) for key in SOLVER}
        if any(not close(v, SOLVER[k]) if isinstance(v, float) else v != SOLVER[k] for k, v in found.items()):
            raise ValueError(f"solver {found} differs from the one PyTorch copies {SOLVER}")
        solver.net = str(work / "bench_cifar10_full_train_test.prototxt")
        solver.max_iter = iters
        solver.test_interval = test_interval
        solver.test_iter[:] = [test_iter]
        solver.display = 0
        solver.snapshot = 0
        solver.snapshot_after_train = False
        solver.random_seed = 1                # repeatable fillers, as torch.manual_seed(1) on the other side
        write_text(work / "bench_cifar10_full_solver.prototxt", solver)
        logging.getLogger("pyskim").setLevel(logging.WARNING)
        s = pyskim.get_solver(str(work / "bench_cifar10_full_solver.prototxt"))
        start = time.perf_counter()
        s.solve()
        elapsed = time.perf_counter() - start
        accuracy = s.mean_scores[0][s.test_nets[0].outputs.index("accuracy")]
        shapes = {b: list(s.net.blobs[b].data.shape) for b in ("pool1", "pool2", "pool3")}
        return {"seconds": elapsed, "accuracy": float(accuracy), "shapes": shapes}


def read_lmdb(db):
    """The uint8 images (N x C x H x W) and labels of an LMDB of raw Datums, in key order."""
    import lmdb
    import numpy as np

    from pyskim.io import datum_to_array
    from pyskim.proto import caffe_pb2
    images, labels = [], []
    datum = caffe_pb2.Datum()
    with lmdb.open(str(db), readonly=True, lock=False) as env, env.begin() as txn:
        for _, raw in txn.cursor():
            datum.ParseFromString(raw)
            images.append(datum_to_array(datum).copy())
            labels.append(datum.label)
    return np.stack(images), np.array(labels, np.int64)


def close(value, expected):
    """Equal up to the prototxt's float32 rounding."""
    return abs(value - expected) <= 1e-6 * abs(expected)


def check_layer(layer):
    """Raise when ``layer``'s filler std or lr / decay multipliers differ from :data:`LAYERS`."""
    param = layer.convolution_param if layer.type == "Convolution" else layer.inner_product_param
    mults = [(p.lr_mult, p.decay_mult) for p in layer.param] + [(1.0, 1.0)] * (2 - len(layer.param))
    std, weight_mults, bias_mults = LAYERS[layer.name]
    if (param.weight_filler.type != "gaussian" or not close(param.weight_filler.std, std)
            or param.bias_filler.type != "constant" or param.bias_filler.value != 0
            or mults != [weight_mults, bias_mults]):
        raise ValueError(f"layer {layer.name} differs from the one PyTorch copies: {LAYERS[layer.name]}")


def torch_net():
    """cifar10_full_train_test's net in ``torch.nn`` (default init; :class:`TorchTrain` refills it)."""
    import torch.nn.functional as F
    from torch import nn
    size, alpha, beta = LRN

    class WithinChannelLRN(nn.Module):
        """Caffe's LRN WITHIN_CHANNEL: x * (1 + alpha * mean of x^2 over size x size, zero padded)
        ** -beta (the mean always over size^2, padding counted, as Caffe's AVE pooling there)."""
        def forward(self, x):
            pooled = F.avg_pool2d(x * x, size, 1, (size - 1) // 2, count_include_pad=True)
            return x * (1 + alpha * pooled).pow(-beta)

    return nn.Sequential(
        nn.Conv2d(3, 32, 5, padding=2), nn.MaxPool2d(3, 2, ceil_mode=True), nn.ReLU(), WithinChannelLRN(),
        nn.Conv2d(32, 32, 5, padding=2), nn.ReLU(), nn.AvgPool2d(3, 2, ceil_mode=True), WithinChannelLRN(),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.AvgPool2d(3, 2, ceil_mode=True),
        nn.Flatten(), nn.Linear(64 * 4 * 4, 10))


class TorchTrain(TorchServer):
    def train(self, work, iters, n_train, test_interval, test_iter):
        """Seconds for the same job in PyTorch; final accuracy; the pooled shapes."""
        import numpy as np
        import torch
        from torch import nn
        torch.manual_seed(1)
        work = pathlib.Path(work)
        train_x = np.load(work / f"{train_name(n_train)}_images.npy")
        train_y = torch.from_numpy(np.load(work / f"{train_name(n_train)}_labels.npy"))
        test_x = np.load(work / "cifar10_test_images.npy")
        test_y = torch.from_numpy(np.load(work / "cifar10_test_labels.npy"))
        mean = np.load(work / "mean_bgr.npy")
        net = torch_net()
        named = dict(zip(LAYERS, [m for m in net if isinstance(m, (nn.Conv2d, nn.Linear))]))
        base_lr, wd = SOLVER["base_lr"], SOLVER["weight_decay"]
        groups = []
        for name, module in named.items():
            std, (w_lr, w_decay), (b_lr, b_decay) = LAYERS[name]
            nn.init.normal_(module.weight, 0, std)
            nn.init.zeros_(module.bias)
            groups += [{"params": [module.weight], "lr": base_lr * w_lr, "weight_decay": wd * w_decay},
                       {"params": [module.bias], "lr": base_lr * b_lr, "weight_decay": wd * b_decay}]
        # Caffe's SGD: v = m v + lr (g + wd w), w -= v; with a fixed lr the same steps as torch's SGD
        optimizer = torch.optim.SGD(groups, lr=base_lr, momentum=SOLVER["momentum"])
        loss_fn = nn.CrossEntropyLoss()
        pools = [i for i, m in enumerate(net) if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d))]
        with torch.no_grad():
            shapes = {f"pool{k + 1}": list(net[:i + 1](torch.zeros(BATCH, 3, 32, 32)).shape)
                      for k, i in enumerate(pools)}

        def batch(images, labels, start):
            idx = np.arange(start, start + BATCH) % len(images)
            return torch.from_numpy(images[idx].astype(np.float32) - mean), labels[idx]

        test_cursor = 0

        def test():
            nonlocal test_cursor
            correct = 0
            with torch.no_grad():
                for _ in range(test_iter):
                    x, y = batch(test_x, test_y, test_cursor)
                    test_cursor += BATCH
                    correct += int((net(x).argmax(1) == y).sum())
            return correct / (test_iter * BATCH)

        start = time.perf_counter()
        accuracy = None
        for it in range(iters + 1):
            if it % test_interval == 0:
                accuracy = test()
            if it == iters:
                break
            x, y = batch(train_x, train_y, it * BATCH)
            optimizer.zero_grad(set_to_none=False)
            loss_fn(net(x), y).backward()
            optimizer.step()
        return {"seconds": time.perf_counter() - start, "accuracy": accuracy, "shapes": shapes}


SERVERS = {"pyskim": PyskimTrain, "torch": TorchTrain}


def measure(threads, args, work):
    """``args.rounds`` interleaved rounds at one thread count; prints each run and the ratios."""
    print(f"\n=== threads {threads or 'default'}; {load_average_text()}", flush=True)
    workers = training_workers(__file__, threads, args.no_torch)
    job = {"work": str(work), "iters": args.iters, "n_train": args.train_images,
           "test_interval": args.test_interval, "test_iter": args.test_iter}
    try:
        runs = training_rounds(workers, args.rounds, args.iters, lambda label: job)
    finally:
        for worker in workers.values():
            worker.close()
    seconds = {label: [run["seconds"] for run in done] for label, done in runs.items()}
    shapes = {label: done[-1]["shapes"] for label, done in runs.items()}
    if "torch" in shapes and shapes["torch"] != shapes["pyskim"]:
        print(f"WARNING: pooled shapes differ: pyskim {shapes['pyskim']}, PyTorch {shapes['torch']}")
    print(f"pyskim median {args.iters / statistics.median(seconds['pyskim']):.2f} iterations/s", end="")
    if "torch" in seconds:
        print(f", PyTorch median {args.iters / statistics.median(seconds['torch']):.2f}; pyskim/PyTorch "
              f"iterations/s per round {ratio_text(seconds['torch'], seconds['pyskim'])}", end="")
    print(f"\n=== threads {threads or 'default'} done; {load_average_text()}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds (one run of each framework)")
    parser.add_argument("--threads", type=int, nargs="+", default=[0],
                        help="thread counts, one pair of processes each (0: each framework's default)")
    parser.add_argument("--work", type=pathlib.Path, default=None,
                        help="folder for the LMDBs and arrays, kept (default: a temporary folder)")
    parser.add_argument("--train-images", type=int, default=TRAIN_IMAGES,
                        help=f"train images converted (at most {TRAIN_IMAGES})")
    parser.add_argument("--test-interval", type=int, default=1000, help="the solver's test_interval")
    parser.add_argument("--test-iter", type=int, default=100, help="the solver's test_iter (batches of 100)")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    args = parser.parse_args()
    if not 0 < args.train_images <= TRAIN_IMAGES or args.test_interval <= 0 or args.test_iter <= 0:
        parser.error("--train-images must be in 1..50000, --test-interval and --test-iter > 0")
    passes = args.iters // args.test_interval + 1
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}; {load_average_text()}")
    print(f"job: CIFAR-10 full, batch {BATCH}, {args.train_images} train images, {args.iters} iterations, "
          f"{passes} test pass(es) of {args.test_iter} x {BATCH}")
    with tempfile.TemporaryDirectory(prefix="train_cifar_") as tmp:
        work = (args.work or pathlib.Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        make_data(work, args.train_images)
        for threads in args.threads:
            measure(threads, args, work)


if __name__ == "__main__":
    serve_if_worker(SERVERS)
    main()
