"""Training soak: LeNet for many iterations with the resident set size (RSS) sampled, to show that
memory stays flat (no leak in the solver, the nets, the Data layers' prefetch threads, LMDB
transactions or the kernels' scratch buffers).

    python benchmarks/soak_lenet.py [--net lenet|small] [--iters 10000] [--sample-every 500]
                                    [--train-images 10000] [--test-images 1000] [--work DIR] [--json FILE]

``--net lenet`` (default): Caffe's LeNet solver (``prototxt/lenet``: batch 64, SGD momentum 0.9,
``inv`` lr policy, a TEST pass every 500 iterations, here of ``--test-images`` images) on a
Fashion-MNIST subset (the first ``--train-images`` / ``--test-images`` images of
``../shared/datasets/fashion-mnist``) converted with ``tools/convert_mnist_data.py`` into LMDBs in a
temporary folder. ``--net small``: the same solver settings on the conformance suite's small LeNet
(``../shared/conformance/solvers/test_interval``: conv 4 and 8 maps, fc 32, batch 16/32) and its
512-record LMDB, about 20 times cheaper per iteration. Either way data comes through the Data
layer (prefetch thread, LMDB cursor wrapping around), exactly as ``pyskim train``. No snapshots.

RSS is read with psutil when installed, else from ``/proc/self/statm``. It is sampled before the
first iteration and after every ``--sample-every`` iterations. The report gives the samples, the
growth over the whole run and after warm-up (the first sample after the first chunk, once the
buffers, the prefetch queue and the allocator's arenas have reached their working size), and the
least-squares slope after warm-up in MiB per 1000 iterations.
"""
import argparse
import gzip
import json
import logging
import os
import pathlib
import struct
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "datasets" / "fashion-mnist"
LENET = REPO / "prototxt" / "lenet"
SMALL = REPO.parent / "shared" / "conformance" / "solvers" / "test_interval"


def rss_bytes():
    """The process's resident set size in bytes (psutil, else /proc/self/statm)."""
    try:
        import psutil
        return psutil.Process().memory_info().rss
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _idx_subset(source, target, count):
    """Write the first ``count`` items of a (gzipped) idx file as a new gzipped idx file."""
    with gzip.open(source, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = list(struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim]))
    item = 1
    for d in dims[1:]:
        item *= d
    count = min(count, dims[0])
    header = data[:4] + struct.pack(f">{ndim}I", count, *dims[1:])
    body = data[4 + 4 * ndim: 4 + 4 * ndim + count * item]
    with gzip.open(target, "wb") as f:
        f.write(header + body)


def make_lmdbs(work, train_images, test_images):
    """Fashion-MNIST subsets as LMDBs (``tools/convert_mnist_data.py``) named as the LeNet prototxt expects."""
    for split, prefix, count in (("train", "train", train_images), ("test", "t10k", test_images)):
        db = work / f"fashion_mnist_{split}_lmdb"
        if (db / "data.mdb").exists():
            continue
        images, labels = work / f"{split}-images.gz", work / f"{split}-labels.gz"
        _idx_subset(DATA / f"{prefix}-images-idx3-ubyte.gz", images, count)
        _idx_subset(DATA / f"{prefix}-labels-idx1-ubyte.gz", labels, count)
        subprocess.run([sys.executable, str(REPO / "tools" / "convert_mnist_data.py"), str(images), str(labels),
                        str(db)], check=True, capture_output=True)


def link_small_lmdb(work):
    """The small LeNet reads ``data_lmdb`` (relative): link the conformance LMDB into ``work``."""
    target = work / "data_lmdb"
    if not target.exists():
        target.symlink_to(SMALL / "data_lmdb")
    return SMALL / "net.prototxt"


def soak(work, iters=10000, sample_every=500, test_iter=10, net=None, log=print):
    """Train for ``iters`` iterations in ``work`` (holding the LMDBs), sampling RSS; returns the report
    dict. ``net`` overrides the train/test prototxt (default: LeNet)."""
    import pyskim
    from pyskim.io.protofiles import read_text, write_text
    from pyskim.proto import caffe_pb2
    solver_param = read_text(LENET / "lenet_solver.prototxt", caffe_pb2.SolverParameter())
    solver_param.net = str(net or LENET / "lenet_train_test.prototxt")
    solver_param.max_iter = iters
    solver_param.snapshot = 0
    solver_param.snapshot_after_train = False
    solver_param.display = 0
    solver_param.test_iter[:] = [test_iter]
    write_text(work / "soak_solver.prototxt", solver_param)
    cwd = os.getcwd()
    os.chdir(work)                        # the Data layers' sources are relative, as in Caffe
    samples = []
    try:
        logging.getLogger("pyskim").setLevel(logging.WARNING)
        solver = pyskim.get_solver(str(work / "soak_solver.prototxt"))
        start = time.perf_counter()
        samples.append({"iter": 0, "rss_mib": rss_bytes() / 2**20, "seconds": 0.0})
        while solver.iter < iters:
            solver.step(min(sample_every, iters - solver.iter))
            sample = {"iter": solver.iter, "rss_mib": rss_bytes() / 2**20,
                      "seconds": time.perf_counter() - start, "loss": solver.smoothed_loss}
            samples.append(sample)
            log(f"iter {sample['iter']:6d}  RSS {sample['rss_mib']:8.1f} MiB  {sample['seconds']:7.1f} s")
        solver.test_all()
        scores = solver.mean_scores[0] if solver.mean_scores else []
        accuracy = round(scores[0], 4) if scores else None
    finally:
        os.chdir(cwd)
    return report(samples, iters, sample_every, accuracy)


def report(samples, iters, sample_every, accuracy=None):
    warm = samples[1] if len(samples) > 1 else samples[0]
    after = [s for s in samples if s["iter"] >= warm["iter"]]
    slope = 0.0
    if len(after) > 1:
        xs = [s["iter"] / 1000 for s in after]
        ys = [s["rss_mib"] for s in after]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        var = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0
    return {
        "iterations": iters,
        "sample_every": sample_every,
        "samples": [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in s.items()} for s in samples],
        "rss_start_mib": round(samples[0]["rss_mib"], 1),
        "rss_after_warmup_mib": round(warm["rss_mib"], 1),
        "rss_end_mib": round(samples[-1]["rss_mib"], 1),
        "rss_max_mib": round(max(s["rss_mib"] for s in samples), 1),
        "growth_total_mib": round(samples[-1]["rss_mib"] - samples[0]["rss_mib"], 1),
        "growth_after_warmup_mib": round(samples[-1]["rss_mib"] - warm["rss_mib"], 1),
        "max_above_warmup_mib": round(max(s["rss_mib"] for s in after) - warm["rss_mib"], 1),
        "slope_mib_per_1000_iter": round(slope, 3),
        "seconds": round(samples[-1]["seconds"], 1),
        "test_accuracy": accuracy,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", choices=["lenet", "small"], default="lenet")
    parser.add_argument("--iters", type=int, default=10000)
    parser.add_argument("--sample-every", type=int, default=500)
    parser.add_argument("--train-images", type=int, default=10000)
    parser.add_argument("--test-images", type=int, default=1000)
    parser.add_argument("--work", type=pathlib.Path, help="folder for the LMDBs (default: a temp folder)")
    parser.add_argument("--json", type=pathlib.Path, help="write the report here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pyskim_soak_") as tmp:
        work = (args.work or pathlib.Path(tmp)).resolve()   # soak() runs from inside it
        work.mkdir(parents=True, exist_ok=True)
        if args.net == "small":
            result = soak(work, args.iters, args.sample_every, test_iter=2, net=link_small_lmdb(work))
            result["data"] = "conformance/solvers/test_interval/data_lmdb (512 records)"
        else:
            make_lmdbs(work, args.train_images, args.test_images)
            result = soak(work, args.iters, args.sample_every, test_iter=max(1, args.test_images // 100))
            result["data"] = f"Fashion-MNIST {args.train_images} train / {args.test_images} test images"
    result["net"] = args.net
    summary = {k: v for k, v in result.items() if k != "samples"}
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
