"""Data-parallel training over MPI (``mpirun -n N pyskim train``, docs/distributed.md): equivalence,
scaling on this machine, the allreduce's cost, and an alpha-beta projection to 8-64 nodes.

    python benchmarks/mpi_scaling.py [--work DIR] [--lenet-iters 2000] [--cifar-iters 300]
        [--cifar-train-images 50000] [--equivalence-iters 200] [--lenet-target 0.80]
        [--cifar-target 0.40] [--allreduce-reps 20] [--alpha-us A --beta-gbps B] [--quick]

Quick check (about a minute): ``--quick --work /tmp/mpi_bench``. Needs ``pip install -e ".[mpi]"``
(mpi4py and an MPI launcher: ``pyskim.solvers.distributed.local_mpirun`` finds it and adds Open
MPI's local-only options; the ranks talk through shared memory, ``--tcp`` makes Open MPI use TCP
over the loopback interface instead, closer to a network's software path).

1. **Equivalence** (issue 15): LeNet at batch 32, SkimCaffe's thresholded ``L1`` on conv2's weights
   and ``DISCONNECTED_ELTWISE`` masks on ip1 (starting weights with half of ip1 zero): 2 ranks x
   iter_size 1 (b) against 1 process x iter_size 2 (a), ``--equivalence-iters`` iterations, the
   weights compared at every quarter (max absolute difference, elements outside rtol 1e-5 /
   atol 1e-6, masked weights still zero). The floor beside it: 1 process x batch 64 (c) reads the
   same images as a and differs only in the order of its float32 sums; SGD amplifies such
   differences, so over hundreds of iterations a, b and c drift apart alike (docs/distributed.md).
   The update itself is checked from a's snapshots: one iteration of a and of b from the same state.
2. **Scaling on this machine**: LeNet on Fashion-MNIST (the t10k split embedded in pyskim: 8,000
   training images, 2,000 held out) and CIFAR-10 full (``prototxt/cifar10``; data from
   ``../shared/datasets/cifar10``, built as ``train_cifar.py`` builds it; skipped without it), each
   as 1 process x 2 threads (``iter_size 2``) and 2 ranks x 1 thread (``iter_size 1``): the same
   updates on the same batches, so the same learning curve and directly comparable iterations/s.
   Per run: iterations/s (test passes included, from the log's timestamps), the time to the first
   test score at or above the target accuracy, and the time in the gradient allreduce per
   iteration and its share of the iteration (the solver's "Gradient allreduce" line; it includes
   waiting for the slower rank).
3. **Allreduce alone**: under ``mpirun -n 2``, ``MPIGroup.sum_in_place`` on float32 buffers of
   1 float up to CaffeNet's 61 M (the gradient sizes of LeNet, CIFAR-10 full and CaffeNet among
   them), median of ``--allreduce-reps``; fitted to t(n) = alpha + 4n·beta for 2 ranks.
4. **Projection**: ring allreduce on p nodes, t(p, n) = 2(p-1)·alpha + 2(p-1)/p·4n·beta, with this
   machine's alpha and beta (loopback: optimistic) or a network's (``--alpha-us``, ``--beta-gbps``);
   against the per-image compute time measured in step 2, the parallel efficiency at the measured
   batch and the per-rank batch below which communication no longer hides behind compute
   (B* = t(p, n) / compute time per image: a synchronous step waits for the allreduce, so at B* the
   rank spends as long communicating as computing).

Prints a Markdown report. Numbers belong in benchmarks/RESULTS.md with the command that made them.
"""
import argparse
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
CIFAR_DATA = REPO.parent / "shared" / "datasets" / "cifar10"
#: Gradient sizes (float32 params) of the nets of step 3; LeNet and CIFAR-10 full are also counted
#: from their prototxts when step 2 runs.
CAFFENET_PARAMS = 60_965_224
SIZES = [1, 1_000, 10_000, 100_000, 1_000_000, 10_000_000, CAFFENET_PARAMS]
NODES = (8, 16, 32, 64)
TIMESTAMP = re.compile(r"^[IWEF](\d{4}) (\d\d):(\d\d):(\d\d\.\d+) ", re.MULTILINE)


# -- running pyskim ------------------------------------------------------------------------------------
#: Open MPI options added to every launch (``--tcp``: TCP over the loopback interface).
TRANSPORT = []


def mpirun(processes):
    """``local_mpirun(processes)`` with :data:`TRANSPORT` (Open MPI only: its launch has
    ``--oversubscribe``)."""
    from pyskim.solvers.distributed import local_mpirun
    argv, env = local_mpirun(processes)
    return (argv + TRANSPORT if "--oversubscribe" in argv else argv), env


def run(command, cwd, processes=1, threads=None):
    """Run ``command`` alone or under ``mpirun -n processes``; returns its stderr (the log)."""
    argv, env = mpirun(processes) if processes > 1 else ([], dict(os.environ))
    env.pop("OMP_NUM_THREADS", None)
    if threads:
        command = command + ["-threads", str(threads)]
    done = subprocess.run(argv + command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(argv + command)}\n{done.stderr[-4000:]}")
    return done.stderr


def seconds_since_start(log, line_pattern, start_marker="Starting Optimization"):
    """(seconds from the start marker, match) for every line matching ``line_pattern``."""
    def stamp(line):
        _, hours, minutes, secs = TIMESTAMP.match(line).groups()
        return int(hours) * 3600 + int(minutes) * 60 + float(secs)
    lines = [line for line in log.splitlines() if TIMESTAMP.match(line)]
    start = next(stamp(line) for line in lines if start_marker in line)
    found = []
    for line in lines:
        match = re.search(line_pattern, line)
        if match:
            found.append((stamp(line) - start, match))
    return found


def write_solver(path, net, **fields):
    from pyskim.io.protofiles import write_text
    from pyskim.proto import caffe_pb2
    solver = caffe_pb2.SolverParameter(net=str(net), **fields)
    write_text(path, solver)


# -- the jobs ----------------------------------------------------------------------------------------
def lenet_job(work, batch):
    """LeNet's train/test net on the embedded Fashion-MNIST split, train batch ``batch``; returns the
    net file and the number of its test batches (of 100) covering the held-out images once."""
    from pyskim.apps.convert_mnist_data import convert_arrays
    from pyskim.apps.demo import load_dataset
    from pyskim.io.protofiles import read_text, write_text
    from pyskim.proto import caffe_pb2
    train_db, test_db = work / "fmnist_train_lmdb", work / "fmnist_test_lmdb"
    _, train_x, train_y, test_x, test_y = load_dataset(None)
    if not (train_db / "data.mdb").exists():
        convert_arrays(train_x, train_y, train_db)
        convert_arrays(test_x, test_y, test_db)
    net = read_text(REPO / "prototxt" / "lenet" / "lenet_train_test.prototxt", caffe_pb2.NetParameter())
    for layer in net.layer:
        if layer.type == "Data":
            train = any(rule.phase == caffe_pb2.TRAIN for rule in layer.include)
            layer.data_param.source = str(train_db if train else test_db)
            if train:
                layer.data_param.batch_size = batch
    path = work / f"lenet_b{batch}.prototxt"
    write_text(path, net)
    return path, len(test_x) // 100


def cifar_job(work, n_train):
    """CIFAR-10 full's net on the LMDBs ``train_cifar.py`` builds (None without ../shared's data)."""
    if not CIFAR_DATA.is_dir():
        return None
    import train_cifar

    from pyskim.io.protofiles import read_text, write_text
    from pyskim.proto import caffe_pb2
    train_cifar.make_data(work, n_train)
    net = read_text(REPO / "prototxt" / "cifar10" / "cifar10_full_train_test.prototxt",
                    caffe_pb2.NetParameter())
    for layer in net.layer:
        if layer.type == "Data":
            train = any(rule.phase == caffe_pb2.TRAIN for rule in layer.include)
            layer.data_param.source = str(work / (f"{train_cifar.train_name(n_train)}_lmdb" if train
                                                  else "cifar10_test_lmdb"))
            layer.transform_param.mean_file = str(work / "mean.binaryproto")
    path = work / "cifar10_full.prototxt"
    write_text(path, net)
    return path


def param_count(net_file):
    import pyskim
    cwd = os.getcwd()
    os.chdir(net_file.parent)
    try:
        net = pyskim.Net(str(net_file), pyskim.TEST)
    finally:
        os.chdir(cwd)
    return sum(blob.count for blobs in net.params.values() for blob in blobs)


# -- 1. equivalence ----------------------------------------------------------------------------------
def equivalence_nets(work):
    """LeNet at train batch 32 and 64 with thresholded L1 on conv2 and masks on ip1, and starting
    weights with half of ip1 zero; returns (net32, net64, mask of ip1's zeros)."""
    import numpy as np

    import pyskim
    from pyskim.io.protofiles import read_text, write_text
    from pyskim.proto import caffe_pb2
    files = []
    for batch in (32, 64):
        net = read_text(lenet_job(work, batch)[0], caffe_pb2.NetParameter())
        for layer in net.layer:
            if layer.name == "conv2":
                layer.param[0].regularization_type = "L1"
            if layer.name == "ip1":
                layer.connectivity_mode = caffe_pb2.LayerParameter.DISCONNECTED_ELTWISE
        files.append(work / f"lenet_equivalence_b{batch}.prototxt")
        write_text(files[-1], net)
    pyskim.set_random_seed(1)
    start = pyskim.Net(str(files[0]), pyskim.TEST)
    ip1 = start.params["ip1"][0].data
    ip1[np.random.default_rng(0).random(ip1.shape) < 0.5] = 0
    start.save(str(work / "equivalence_init.caffemodel"))
    return files[0], files[1], ip1 == 0


def read_weights(path):
    from pyskim.io.blobproto import blobproto_to_array
    from pyskim.io.protofiles import read_binary
    from pyskim.proto import caffe_pb2
    model = read_binary(str(path), caffe_pb2.NetParameter())
    return {f"{layer.name}[{i}]": blobproto_to_array(blob)
            for layer in model.layer for i, blob in enumerate(layer.blobs)}


def deviation(left, right):
    """(max |difference|, elements outside rtol 1e-5 / atol 1e-6, elements) of two weight dicts."""
    import numpy as np
    worst = max(float(np.abs(left[k] - right[k]).max()) for k in left)
    outside = sum(int((~np.isclose(right[k], left[k], rtol=1e-5, atol=1e-6)).sum()) for k in left)
    return worst, outside, sum(v.size for v in left.values())


def equivalence(work, iters):
    """2 ranks x batch 32 (b) against one process x batch 32 x iter_size 2 (a) over ``iters``
    iterations, with one process x batch 64 (c) as the floor: c reads the same images as a, and
    differs only in the order of the float32 sums. Then single updates from a's snapshots."""
    net32, net64, masked = equivalence_nets(work)
    every = max(1, iters // 4)
    common = {"test_iter": [20], "test_interval": 10 ** 9, "test_initialization": False, "base_lr": 0.01,
              "momentum": 0.9, "weight_decay": 5e-4, "lr_policy": "inv", "gamma": 1e-4, "power": 0.75,
              "display": every, "random_seed": 1, "prune_threshold": 1e-4}
    configs = {"a": (net32, 1, 2), "b": (net32, 2, 1), "c": (net64, 1, 1)}
    for name, (net, processes, iter_size) in configs.items():
        write_solver(work / f"eq_{name}.prototxt", net, iter_size=iter_size, max_iter=iters, snapshot=every,
                     snapshot_prefix=str(work / f"eq_{name}"), **common)
        run([sys.executable, "-m", "pyskim", "train", "--solver", f"eq_{name}.prototxt", "--weights",
             "equivalence_init.caffemodel"], work, processes, threads=1)
    lines = ["## 1. Equivalence: 2 ranks x batch 32 vs 1 process x batch 32 x iter_size 2", "",
             (f"LeNet, thresholded L1 on conv2, masks on ip1 ({int(masked.sum())} masked weights). "
              "Whole runs: "
             "2 ranks (b) and one process x batch 64 (c, the same images: only the float32 summation order "
             "differs) against one process x iter_size 2 (a)."), "",
             ("| iteration | b vs a: max abs | b vs a: outside rtol 1e-5 | c vs a: max abs | c vs a: outside "
              "| "
             "ip1's masked weights 0 |"), "|---|---|---|---|---|---|"]
    for it in range(every, iters + 1, every):
        a, b, c = (read_weights(work / f"eq_{n}_iter_{it}.caffemodel") for n in "abc")
        (ab, ab_out, total), (ac, ac_out, _) = deviation(a, b), deviation(a, c)
        kept = all(not w["ip1[0]"].reshape(masked.shape)[masked].any() for w in (a, b, c))
        lines.append(f"| {it} | {ab:.3g} | {ab_out} / {total} | {ac:.3g} | {ac_out} / {total} | {kept} |")
    lines += ["", "Single updates from a's state (both resume one solverstate, or the start weights):", "",
              "| from iteration | max abs | outside rtol 1e-5, atol 1e-6 |", "|---|---|---|"]
    for it in range(0, iters, every):
        start = (["--weights", "equivalence_init.caffemodel"] if it == 0
                 else ["--snapshot", f"eq_a_iter_{it}.solverstate"])
        for name in "ab":
            net, processes, iter_size = configs[name]
            write_solver(work / f"step_{name}.prototxt", net, iter_size=iter_size, max_iter=it + 1,
                         snapshot=0, snapshot_prefix=str(work / f"step_{name}"), **common)
            run([sys.executable, "-m", "pyskim", "train", "--solver", f"step_{name}.prototxt", *start], work,
                processes, threads=1)
        worst, outside, total = deviation(read_weights(work / f"step_a_iter_{it + 1}.caffemodel"),
                                          read_weights(work / f"step_b_iter_{it + 1}.caffemodel"))
        lines.append(f"| {it} | {worst:.3g} | {outside} / {total} |")
    return [*lines, ""]


# -- 2. scaling --------------------------------------------------------------------------------------
def scaling_runs(work, name, net_file, iters, test_iter, test_interval, target, base_lr_fields):
    """Both configurations of one job; returns report lines and per-image compute seconds at 2 ranks."""
    rows, compute = [], None
    for processes, threads, iter_size in ((1, 2, 2), (2, 1, 1)):
        prefix = f"{name}_{processes}x{threads}"
        write_solver(work / f"{prefix}.prototxt", net_file, iter_size=iter_size, max_iter=iters,
                     test_iter=[test_iter], test_interval=test_interval, display=max(1, iters // 20),
                     snapshot_after_train=False, random_seed=1, **base_lr_fields)
        log = run([sys.executable, "-m", "pyskim", "train", "--solver", f"{prefix}.prototxt"], work,
                  processes, threads)
        done = seconds_since_start(log, r"Optimization Done")[0][0]
        tests = seconds_since_start(log, r"Test net output #0: accuracy = ([\d.]+)")
        reached = next((t for t, m in tests if float(m.group(1)) >= target), None)
        final = float(tests[-1][1].group(1)) if tests else float("nan")
        comm = re.search(r"Gradient allreduce: ([\d.]+) s in (\d+) iterations, ([\d.]+) ms", log)
        per_iter = done / iters
        comm_ms = float(comm.group(3)) if comm else 0.0
        if processes == 2:
            batch = batch_of(net_file)
            compute = max(per_iter - comm_ms / 1e3, 1e-9) / batch
        rows.append(f"| {name} | {processes} x {threads} | {iters / done:.2f} | "
                    f"{'-' if reached is None else f'{reached:.1f}'} | {final:.4f} | "
                    f"{comm_ms:.2f} | {100 * comm_ms / 1e3 / per_iter:.1f}% |")
    return rows, compute


def batch_of(net_file):
    from pyskim.io.protofiles import read_text
    from pyskim.proto import caffe_pb2
    net = read_text(net_file, caffe_pb2.NetParameter())
    return next(layer.data_param.batch_size for layer in net.layer if layer.type == "Data"
                and any(rule.phase == caffe_pb2.TRAIN for rule in layer.include))


# -- 3. allreduce alone ------------------------------------------------------------------------------
def allreduce_worker(sizes, reps):
    """Under mpirun: time ``MPIGroup.sum_in_place`` per size (median of ``reps``); rank 0 prints JSON."""
    import numpy as np

    from pyskim.solvers.distributed import MPIGroup
    group = MPIGroup()
    timings = {}
    for size in sizes:
        buffer = np.ones(size, np.float32)
        group.sum_in_place(buffer)                     # warm-up (connections, pinned pages)
        times = []
        for _ in range(reps):
            group.comm.Barrier()                       # start together
            start = time.perf_counter()
            group.sum_in_place(buffer)
            times.append(time.perf_counter() - start)
        timings[size] = statistics.median(times)
    if group.rank == 0:
        print(json.dumps({"processes": group.size, "library": group.library, "seconds": timings}))


def allreduce_table(work, sizes, reps):
    argv, env = mpirun(2)
    worker = [sys.executable, __file__, "--allreduce-worker", "--allreduce-reps", str(reps),
              "--allreduce-sizes", *map(str, sizes)]
    done = subprocess.run(argv + worker, cwd=work, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"allreduce worker failed: {done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    seconds = {int(k): v for k, v in result["seconds"].items()}
    alpha = seconds[min(seconds)]
    big = max(seconds)
    beta = max((seconds[big] - alpha) / (4 * big), 1e-15)            # seconds per byte
    lines = [f"## 3. Allreduce alone: {result['processes']} ranks, {result['library']}", "",
             "| floats | ms | GB/s (algorithm bandwidth) |", "|---|---|---|"]
    for size, value in sorted(seconds.items()):
        lines.append(f"| {size:,} | {1e3 * value:.3f} | {4 * size / value / 1e9:.2f} |")
    lines += ["", (f"Fit: alpha = {1e6 * alpha:.1f} us, beta = {1e9 * beta:.3f} ns/byte "
                  f"({1 / beta / 1e9:.2f} GB/s)."), ""]
    return lines, alpha, beta


# -- 4. projection ------------------------------------------------------------------------------------
def ring_allreduce_seconds(nodes, floats, alpha, beta):
    return 2 * (nodes - 1) * alpha + 2 * (nodes - 1) / nodes * 4 * floats * beta


def projection(jobs, alpha, beta, source):
    lines = [(f"## 4. Projection: ring allreduce on p nodes ({source}: alpha {1e6 * alpha:.1f} us, "
             f"{1 / beta / 1e9:.2f} GB/s)"), "",
             ("| net | params | compute ms/image | p | allreduce ms | efficiency at batch B | B* "
             "(comm = compute) |"),
             "|---|---|---|---|---|---|---|"]
    for name, params, per_image, batch in jobs:
        for nodes in NODES:
            comm = ring_allreduce_seconds(nodes, params, alpha, beta)
            if per_image is None:           # no measured compute: the allreduce alone
                lines.append(f"| {name} | {params:,} | - | {nodes} | {1e3 * comm:.2f} | - | - |")
                continue
            step = batch * per_image
            lines.append(f"| {name} | {params:,} | {1e3 * per_image:.3f} | {nodes} | {1e3 * comm:.2f} | "
                         f"{step / (step + comm):.2f} (B = {batch}) | {comm / per_image:.1f} |")
    return lines + [""]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="work/mpi_bench")
    parser.add_argument("--lenet-iters", type=int, default=2000)
    parser.add_argument("--lenet-target", type=float, default=0.80)
    parser.add_argument("--cifar-iters", type=int, default=300)
    parser.add_argument("--cifar-target", type=float, default=0.40)
    parser.add_argument("--cifar-train-images", type=int, default=50000)
    parser.add_argument("--equivalence-iters", type=int, default=200)
    parser.add_argument("--allreduce-reps", type=int, default=20)
    parser.add_argument("--allreduce-sizes", type=int, nargs="+", default=SIZES)
    parser.add_argument("--alpha-us", type=float,
                        help="network latency for the projection (default: measured)")
    parser.add_argument("--beta-gbps", type=float, help="network bandwidth in GB/s (default: measured)")
    parser.add_argument("--tcp", action="store_true", help="Open MPI: TCP over loopback, not shared memory")
    parser.add_argument("--quick", action="store_true", help="small settings: checks that every step runs")
    parser.add_argument("--allreduce-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.allreduce_worker:
        allreduce_worker(args.allreduce_sizes, args.allreduce_reps)
        return
    if args.tcp:
        TRANSPORT.extend(["--mca", "btl", "self,tcp"])
    if args.quick:
        args.lenet_iters, args.cifar_iters, args.equivalence_iters = 40, 10, 20
        args.cifar_train_images, args.allreduce_reps = 1000, 3
        args.allreduce_sizes = [1, 1_000, 100_000, 1_000_000]
    work = pathlib.Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    when = time.strftime("%Y-%m-%d %H:%M")
    report = [f"# Data-parallel training over MPI ({when}, {os.cpu_count()} CPUs)", "",
              "Command: `python benchmarks/mpi_scaling.py " + " ".join(sys.argv[1:]) + "`", ""]
    report += equivalence(work, args.equivalence_iters)
    lenet_net, lenet_test_iter = lenet_job(work, 64)
    lenet_fields = {"base_lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "lr_policy": "inv", "gamma": 1e-4,
                    "power": 0.75}
    rows, lenet_compute = scaling_runs(work, "LeNet", lenet_net, args.lenet_iters, lenet_test_iter,
                                       max(1, args.lenet_iters // 4), args.lenet_target, lenet_fields)
    jobs = [("LeNet", param_count(lenet_net), lenet_compute, 64)]
    cifar_net = cifar_job(work, args.cifar_train_images)
    if cifar_net is not None:
        cifar_fields = {"base_lr": 0.001, "momentum": 0.9, "weight_decay": 0.004, "lr_policy": "fixed"}
        more, cifar_compute = scaling_runs(work, "CIFAR-10 full", cifar_net, args.cifar_iters, 100,
                                           max(1, args.cifar_iters // 3), args.cifar_target, cifar_fields)
        rows += more
        jobs.append(("CIFAR-10 full", param_count(cifar_net), cifar_compute, 100))
    report += ["## 2. Scaling on this machine (same updates: 1 x 2 threads uses iter_size 2)", "",
               ("| job | ranks x threads | it/s | s to target accuracy | final accuracy | allreduce ms/it | "
               "allreduce share |"), "|---|---|---|---|---|---|---|", *rows, ""]
    if cifar_net is None:
        report += [f"(CIFAR-10 skipped: no {CIFAR_DATA})", ""]
    table, alpha, beta = allreduce_table(work, args.allreduce_sizes, args.allreduce_reps)
    report += table
    transport = "TCP over loopback" if TRANSPORT else "MPI's default, shared memory"
    source = f"measured on this machine, {transport}"
    if args.alpha_us is not None or args.beta_gbps is not None:
        source = "given"
        alpha = alpha if args.alpha_us is None else args.alpha_us * 1e-6
        beta = beta if args.beta_gbps is None else 1 / (args.beta_gbps * 1e9)
    jobs.append(("CaffeNet gradients", CAFFENET_PARAMS, None, 256))
    report += projection(jobs, alpha, beta, source)
    print("\n".join(report))


if __name__ == "__main__":
    main()
