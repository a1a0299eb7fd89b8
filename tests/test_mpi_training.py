"""Data-parallel training under a real ``mpirun -n 2`` on this machine (loopback only; see
``pyskim.solvers.distributed.local_mpirun``): the same updates as one process with ``iter_size 2``
(with a SkimCaffe regularizer and connectivity masks), bitwise-identical replicas, rank 0 alone
logging and snapshotting, resume with another number of ranks, signals, and a rank that dies or
raises ending the job with a clear message while earlier snapshots stay intact.

Skipped when mpi4py or an MPI launcher is missing (``pip install -e ".[mpi]"``; the test extra pulls
them in)."""
import os
import pathlib
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import pyskim as caffe
from pyskim.data.db import LMDBWriter
from pyskim.io.blobproto import blobproto_to_array
from pyskim.io.protofiles import read_binary
from pyskim.proto import caffe_pb2

pytest.importorskip("mpi4py", reason="needs mpi4py (pip install -e \".[mpi]\")")
from pyskim.solvers.distributed import DistributedError, local_mpirun

try:
    LAUNCH, LAUNCH_ENV = local_mpirun(2)
except DistributedError as e:        # pragma: no cover - depends on the installation
    pytest.skip(str(e), allow_module_level=True)

PYSKIM = [sys.executable, "-m", "pyskim"]
TIMEOUT = 180
GLOG_LINE = re.compile(r"^[IWEF]\d{4} [\d:.]+ +(\d+) ", re.MULTILINE)

NET = """name: "tiny"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { scale: 0.00390625 } data_param { source: "train_lmdb" batch_size: 8 backend: LMDB } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { scale: 0.00390625 } data_param { source: "test_lmdb" batch_size: 4 backend: LMDB } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" param { regularization_type: "L1" }
  convolution_param { num_output: 6 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1" connectivity_mode: DISCONNECTED_ELTWISE
  inner_product_param { num_output: 16 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
%(extra_layer)s
layer { name: "ip2" type: "InnerProduct" bottom: "%(ip2_bottom)s" top: "ip2"
  inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }
layer { name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy"
  include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""
#: A Python layer that raises on rank 1 at its ``param_str``-th forward pass.
FAULTY_LAYER = '''
import os

import pyskim as caffe
from pyskim.errors import PyskimError


class Fault(caffe.Layer):
    def setup(self, bottom, top):
        self.calls, self.fail_at = 0, int(self.param_str)

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        self.calls += 1
        rank = os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("PMI_RANK"))
        if rank == "1" and self.calls == self.fail_at:
            raise PyskimError("injected fault in the forward pass")
        top[0].data[...] = bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = top[0].diff
'''
#: The Python API under mpirun: train, save each rank's weights, check who snapshots; "drift" changes
#: rank 1's weights behind the solver's back first.
API_SCRIPT = '''
import sys

import numpy as np

from pyskim.solvers import distributed, get_solver

solver_file, iterations, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
world = distributed.mpi_world()
with world.fail_together():
    solver = get_solver(solver_file, group=world)
    solver.step(1)
    if mode == "drift" and world.rank == 1:
        solver.net.params["ip2"][0].data[0, 0] += 1e-3
    solver.step(iterations - 1)
    weights = np.concatenate([blob.readonly_data.ravel() for blob in solver.net.learnable_params])
    np.save(f"api_rank{world.rank}.npy", weights)
    written = solver.snapshot()
    assert (written is None) == (world.rank != 0), written
    assert solver.communication_seconds > 0
'''


def solver_text(prefix, iter_size, max_iter, snapshot=10, net="net.prototxt", display=5, solver_type="SGD",
                test_interval=10):
    return textwrap.dedent(f"""\
        net: "{net}"
        type: "{solver_type}"
        test_iter: 5
        test_interval: {test_interval}
        base_lr: 0.05
        momentum: 0.9
        weight_decay: 0.001
        lr_policy: "fixed"
        display: {display}
        max_iter: {max_iter}
        iter_size: {iter_size}
        snapshot: {snapshot}
        snapshot_prefix: "{prefix}"
        random_seed: 7
        prune_threshold: 0.001
        """)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A tiny LeNet-like problem: LMDBs of 12x12 images of 4 classes, a net with SkimCaffe's L1
    (thresholded) on conv1 and connectivity masks on ip1, and starting weights with ip1 a third zero."""
    work = tmp_path_factory.mktemp("mpi")
    rng = np.random.default_rng(0)
    for name, count in (("train_lmdb", 96), ("test_lmdb", 40)):
        writer = LMDBWriter(work / name)
        for i in range(count):
            label = int(rng.integers(4))
            image = (rng.integers(0, 50, (1, 12, 12)) + 40 * label).astype(np.uint8)
            writer.put(f"{i:08d}", caffe_pb2.Datum(channels=1, height=12, width=12, data=image.tobytes(),
                                                   label=label).SerializeToString())
        writer.close()
    (work / "net.prototxt").write_text(NET % {"extra_layer": "", "ip2_bottom": "ip1"})
    fault = ('layer { name: "fault" type: "Python" bottom: "ip1" top: "ipf" '
             'python_param { module: "faulty_layer" layer: "Fault" param_str: "25" } }')
    (work / "faulty.prototxt").write_text(NET % {"extra_layer": fault, "ip2_bottom": "ipf"})
    (work / "faulty_layer.py").write_text(FAULTY_LAYER)
    (work / "api.py").write_text(API_SCRIPT)
    caffe.set_random_seed(3)
    cwd = os.getcwd()
    os.chdir(work)                 # the net's LMDB paths are relative, as in Caffe
    try:
        net = caffe.Net("net.prototxt", caffe.TEST)
        net.params["ip1"][0].data.reshape(-1)[::3] = 0
        net.save("init.caffemodel")
    finally:
        os.chdir(cwd)
    return work


def run(command, cwd, processes=2, timeout=TIMEOUT, env=None):
    """Run ``command`` (a list) alone or under ``mpirun -n processes``; returns the completed process."""
    argv = (LAUNCH[:2] + [str(processes)] + LAUNCH[3:] + command) if processes > 1 else command
    environment = {**LAUNCH_ENV, "PYTHONPATH": str(cwd), **(env or {})}
    return subprocess.run(argv, check=False, cwd=cwd, env=environment, capture_output=True, text=True,
                          timeout=timeout)


def start(command, cwd, log_file):
    """``mpirun -n 2 command`` in the background, its output going to ``log_file``."""
    with open(log_file, "w") as out:
        return subprocess.Popen(LAUNCH + command, cwd=cwd, env={**LAUNCH_ENV, "PYTHONPATH": str(cwd)},
                                stdout=out, stderr=subprocess.STDOUT)


def finish(job, timeout=60):
    """Wait for a background job (killing it if it outlives ``timeout``)."""
    try:
        job.wait(timeout)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()


def weights(work, model):
    """``{layer[i]: array}`` of a caffemodel, read straight from the file."""
    net = read_binary(str(work / model), caffe_pb2.NetParameter())
    return {f"{layer.name}[{i}]": blobproto_to_array(blob)
            for layer in net.layer for i, blob in enumerate(layer.blobs)}


def assert_close(left, right):
    """Weights equal within rtol 1e-5 (atol 1e-6 for the elements near zero)."""
    assert left.keys() == right.keys()
    for key in left:
        np.testing.assert_allclose(left[key], right[key], rtol=1e-5, atol=1e-6, err_msg=key)


def log_values(text, pattern):
    return [float(v) for v in re.findall(pattern, text)]


def rank_pid(launcher_pid, rank):
    """The pid of MPI rank ``rank`` among the descendants of ``launcher_pid`` (from /proc)."""
    children = {}
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    todo, found = [launcher_pid], []
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            environ = pathlib.Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"OMPI_COMM_WORLD_RANK={rank}".encode() in environ or f"PMI_RANK={rank}".encode() in environ:
            found.append(pid)
    return found[-1] if found else None


def wait_for(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting after {timeout} s")


@pytest.fixture(scope="module")
def equivalent_runs(work):
    """30 iterations from init.caffemodel: one process with iter_size 2, and 2 ranks with iter_size 1."""
    (work / "one.prototxt").write_text(solver_text("one", 2, 30))
    (work / "two.prototxt").write_text(solver_text("two", 1, 30))
    single = run(PYSKIM + ["train", "--solver", "one.prototxt", "--weights", "init.caffemodel"], work, 1)
    assert single.returncode == 0, single.stderr[-3000:]
    multi = run(PYSKIM + ["train", "--solver", "two.prototxt", "--weights", "init.caffemodel"], work)
    assert multi.returncode == 0, multi.stdout[-2000:] + multi.stderr[-3000:]
    return single.stderr, multi.stderr


def test_two_ranks_update_as_one_process_with_iter_size_2(work, equivalent_runs):
    single_log, multi_log = equivalent_runs
    one, two = weights(work, "one_iter_30.caffemodel"), weights(work, "two_iter_30.caffemodel")
    assert_close(one, two)
    start = weights(work, "init.caffemodel")
    assert not np.array_equal(start["ip1[0]"], two["ip1[0]"])                  # it trained
    masked = start["ip1[0]"] == 0
    assert masked.sum() > 100 and not two["ip1[0]"][masked].any() and not one["ip1[0]"][masked].any()
    for pattern in (r"Iteration \d+ \(.*?\), loss = ([\d.e+-]+)", r"Test net output #0: accuracy = ([\d.]+)",
                    r"Test net output #1: loss = ([\d.e+-]+)"):
        expected, got = log_values(single_log, pattern), log_values(multi_log, pattern)
        assert len(got) == len(expected) > 2 and got == pytest.approx(expected, rel=1e-4), pattern


def test_rank_zero_alone_logs_and_snapshots(work, equivalent_runs):
    _, multi_log = equivalent_runs
    assert len(set(GLOG_LINE.findall(multi_log))) == 1                         # one process logged
    assert "Data-parallel training on 2 MPI processes" in multi_log
    assert multi_log.count("Snapshotting to binary proto file two_iter_10.caffemodel") == 1
    snapshots = sorted(p.name for p in work.glob("two_iter_*"))
    assert snapshots == [f"two_iter_{i}.{kind}" for i in (10, 20, 30)
                         for kind in ("caffemodel", "solverstate")]
    (work / "two.log").write_text(multi_log)
    parsed = run([sys.executable, str(pathlib.Path(__file__).parents[1] / "tools" / "parse_log.py"),
                  "two.log", "."], work, 1)
    assert parsed.returncode == 0, parsed.stderr
    rows = (work / "two.log.train").read_text().splitlines()
    assert rows[0].startswith("NumIters") and len(rows) == 1 + 6          # header, iterations 0, 5, ..., 25


def test_replicas_stay_bitwise_identical_through_the_python_api(work):
    (work / "nesterov.prototxt").write_text(solver_text("api", 1, 40, snapshot=0, display=4,
                                                          solver_type="Nesterov"))
    done = run([sys.executable, "api.py", "nesterov.prototxt", "13", "same"], work)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    rank0, rank1 = np.load(work / "api_rank0.npy"), np.load(work / "api_rank1.npy")
    assert rank0.view(np.uint32).tolist() == rank1.view(np.uint32).tolist()
    start = np.concatenate([w.ravel() for w in weights(work, "init.caffemodel").values()])
    assert not np.array_equal(rank0, start)                                      # it trained


def test_replicas_that_drift_stop_the_job(work):
    (work / "drift.prototxt").write_text(solver_text("drift", 1, 40, snapshot=0, display=4))
    done = run([sys.executable, "api.py", "drift.prototxt", "13", "drift"], work)
    assert done.returncode != 0
    assert "the weights differ from rank 0's (rank 1: ip2[0])" in done.stderr
    assert "Iteration 4:" in done.stderr


def test_resume_with_another_number_of_ranks(work, equivalent_runs):
    """One process's snapshot at iteration 10, resumed by 2 ranks and by one process (iter_size 2):
    the same 10 more updates."""
    (work / "resume_one.prototxt").write_text(solver_text("resume_one", 2, 20))
    (work / "resume_two.prototxt").write_text(solver_text("resume_two", 1, 20))
    resume = ["--snapshot", "one_iter_10.solverstate"]
    multi = run(PYSKIM + ["train", "--solver", "resume_two.prototxt", *resume], work)
    assert multi.returncode == 0, multi.stderr[-3000:]
    assert "Resuming from one_iter_10.solverstate" in multi.stderr
    single = run(PYSKIM + ["train", "--solver", "resume_one.prototxt", *resume], work, 1)
    assert single.returncode == 0, single.stderr[-3000:]
    assert not (work / "resume_two_iter_10.caffemodel").exists()
    assert_close(weights(work, "resume_one_iter_20.caffemodel"),
                 weights(work, "resume_two_iter_20.caffemodel"))


def test_a_failing_rank_stops_the_job_naming_it(work):
    (work / "faulty_solver.prototxt").write_text(solver_text("faulty", 1, 1000, net="faulty.prototxt"))
    began = time.monotonic()
    done = run(PYSKIM + ["train", "--solver", "faulty_solver.prototxt"], work, timeout=60)
    assert time.monotonic() - began < 45
    assert done.returncode != 0
    assert "rank 1 of 2 failed, stopping all 2: injected fault in the forward pass" in done.stderr
    assert not (work / "faulty_iter_30.caffemodel").exists()
    assert weights(work, "faulty_iter_20.caffemodel")["ip2[0]"].any()          # intact


def test_a_killed_rank_stops_the_job(work, monkeypatch):
    (work / "long.prototxt").write_text(solver_text("long", 1, 10 ** 7, snapshot=20, display=0,
                                                      test_interval=10 ** 7))
    job = start(PYSKIM + ["train", "--solver", "long.prototxt"], work, work / "long.log")
    try:
        wait_for(lambda: (work / "long_iter_40.solverstate").exists())
        victim = wait_for(lambda: rank_pid(job.pid, 1), timeout=10)
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
    finally:
        finish(job)
    assert time.monotonic() - killed < 20
    output = (work / "long.log").read_text(errors="replace")
    assert job.returncode != 0
    assert re.search(r"rank 1\b.*\n?.*(signal 9|Killed|KILLED)", output), output[-3000:]
    latest = max(work.glob("long_iter_*.solverstate"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    monkeypatch.chdir(work)
    solver = caffe.get_solver("long.prototxt")
    solver.restore(latest.name)                                                # intact and resumable
    assert solver.iter == int(latest.stem.rsplit("_", 1)[1]) >= 40


def test_signals_to_one_rank_act_on_the_whole_job(work):
    """SIGHUP (snapshot) then SIGINT (stop) sent to rank 1 only: rank 0 writes both snapshots."""
    # no test pass after the start: a stop inside one would end on the snapshot's iteration
    (work / "signals.prototxt").write_text(solver_text("signals", 1, 10 ** 7, snapshot=0, display=0,
                                                         test_interval=10 ** 7))
    log_file = work / "signals.log"
    job = start(PYSKIM + ["train", "--solver", "signals.prototxt"], work, log_file)
    try:
        # rank 0 logs this once every rank has built its solver, its signal handler installed before
        wait_for(lambda: "Starting Optimization" in log_file.read_text(errors="replace"))
        victim = wait_for(lambda: rank_pid(job.pid, 1), timeout=10)
        os.kill(victim, signal.SIGHUP)
        first = wait_for(lambda: list(work.glob("signals_iter_*.solverstate")))
        os.kill(victim, signal.SIGINT)
    finally:
        finish(job)
    output = log_file.read_text(errors="replace")
    assert job.returncode == 0, output[-3000:]
    assert "Optimization stopped early." in output
    states = sorted(work.glob("signals_iter_*.solverstate"))
    assert len(states) == 2 and first[0] in states
    assert len(set(GLOG_LINE.findall(output))) == 1


def test_gsl_stages_train_data_parallel(work, equivalent_runs):
    """``mpirun -n 2 python tools/gsl.py``: its prune and fine-tune stages are data-parallel training;
    rank 0 alone prints the report and writes the stage logs and snapshots."""
    (work / "gsl_user.prototxt").write_text(solver_text("gsl_user", 1, 30))
    tool = pathlib.Path(__file__).parents[1] / "tools" / "gsl.py"
    done = run([sys.executable, str(tool), "--solver", "gsl_user.prototxt", "--weights", "two_iter_30.caffemodel",
                "--out", "gsl", "--prune-iters", "12", "--finetune-iters", "8", "--measure-iters", "0"], work)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stdout.count("Pruned model:") == 1
    prune_log = (work / "gsl" / "prune" / "train.log").read_text()
    assert "Data-parallel training on 2 MPI processes" in prune_log
    assert len(set(GLOG_LINE.findall(prune_log))) == 1
    assert (work / "gsl" / "gsl_final.caffemodel").is_file()
