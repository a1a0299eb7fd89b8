"""pyskim's one thread pool: its size follows pyskim.set_num_threads and OMP_NUM_THREADS, importing
pyskim changes no environment variable whatever the import order, and a net computes the same
values on 1 and 2 threads."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import pyskim as caffe
from pyskim.errors import KernelArgumentError
from pyskim.io.protofiles import parse_text
from pyskim.kernels import gemm
from pyskim.kernels import threads as pool_threads
from pyskim.proto import caffe_pb2

_REPORT = """
import json, os, sys
before = dict(os.environ)
tasks_before = len(os.listdir('/proc/self/task'))
for name in sys.argv[1].split(','):
    __import__(name)
import numpy as np
import pyskim
changed = {k: v for k, v in os.environ.items() if before.get(k) != v}
removed = sorted(set(before) - set(os.environ))
threads = pyskim.get_num_threads()
if len(sys.argv) > 2:
    pyskim.set_num_threads(int(sys.argv[2]))
x = np.ones((2, 16, 40, 40), np.float32)
w = np.ones((32, 16, 3, 3), np.float32)
from pyskim.kernels import gemm
y = gemm.conv2d_forward(x, w, None, 3, 1)
print(json.dumps({"changed": changed, "removed": removed, "threads": threads,
                  "pool": pyskim.get_num_threads(), "value": float(y[0, 0, 5, 5]),
                  "new_tasks": len(os.listdir('/proc/self/task')) - tasks_before}))
"""


def _report(order, env_extra=None, drop=(), threads=None):
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(env_extra or {})
    args = [sys.executable, "-c", _REPORT, order] + ([str(threads)] if threads else [])
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_sets_no_environment_variable_in_either_order():
    drop = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT")
    numpy_first = _report("numpy,pyskim", drop=drop)
    pyskim_first = _report("pyskim,numpy", drop=drop)
    for report in (numpy_first, pyskim_first):
        assert report["changed"] == {} and report["removed"] == []
    assert numpy_first["threads"] == pyskim_first["threads"] == len(os.sched_getaffinity(0))
    assert numpy_first["value"] == pyskim_first["value"] == 144.0


def test_omp_num_threads_sets_the_default_and_set_num_threads_overrides_it():
    report = _report("numpy,pyskim", env_extra={"OMP_NUM_THREADS": "3"}, threads=None)
    assert report["threads"] == 3 and report["changed"] == {}
    report = _report("pyskim", env_extra={"OMP_NUM_THREADS": "3,2"}, threads=4)
    assert report["threads"] == 3 and report["pool"] == 4
    # the pool really started its threads: 3 more than the caller
    assert report["new_tasks"] >= 3
    report = _report("pyskim", env_extra={"OMP_NUM_THREADS": "junk"})
    assert report["threads"] == len(os.sched_getaffinity(0))


def test_default_from_environment_mapping():
    assert pool_threads.default_num_threads({"OMP_NUM_THREADS": "5"}) == 5
    assert pool_threads.default_num_threads({"OMP_NUM_THREADS": "0"}) == len(os.sched_getaffinity(0))
    assert pool_threads.default_num_threads({}) == len(os.sched_getaffinity(0))


def test_set_num_threads_is_validated_and_honoured():
    previous = caffe.get_num_threads()
    try:
        caffe.set_num_threads(2)
        assert caffe.get_num_threads() == 2
        caffe.set_num_threads(1)
        assert caffe.get_num_threads() == 1
        for bad in (0, -1, 2.5, "2", None):
            with pytest.raises(KernelArgumentError):
                caffe.set_num_threads(bad)
        assert caffe.get_num_threads() == 1
    finally:
        caffe.set_num_threads(previous)


_NET = """
force_backward: true
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 8 dim: 3 dim: 32 dim: 32 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 32 kernel_size: 5 pad: 2 weight_filler { type: "gaussian" std: 0.05 }
                            bias_filler { type: "constant" value: 0.1 } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "relu1" type: "ReLU" bottom: "pool1" top: "pool1" }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1" lrn_param { local_size: 3 alpha: 5e-05 beta: 0.75 } }
layer { name: "conv2" type: "Convolution" bottom: "norm1" top: "conv2"
        convolution_param { num_output: 32 kernel_size: 3 pad: 1 group: 2 weight_filler { type: "gaussian" std: 0.05 } } }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2" pooling_param { pool: AVE kernel_size: 3 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1"
        inner_product_param { num_output: 10 weight_filler { type: "gaussian" std: 0.05 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss" }
"""


def _train_step_values(threads, monkeypatch):
    monkeypatch.setattr(gemm, "PARALLEL_MIN_MACS", 0)
    caffe.set_num_threads(threads)
    caffe.set_random_seed(7)
    param = caffe_pb2.NetParameter()
    parse_text(_NET, param)
    net = caffe.Net(param, caffe.TRAIN)
    rng = np.random.default_rng(0)
    net.blobs["data"].data[...] = rng.standard_normal(net.blobs["data"].shape)
    net.blobs["label"].data[...] = rng.integers(0, 10, 8)
    net.forward()
    net.backward()
    values = {name: blob.data.copy() for name, blob in net.blobs.items()}
    values.update({f"{name} diff": blob.diff.copy() for name, blob in net.blobs.items()})
    values.update({f"{name} param {i}": p.diff.copy() for name, ps in net.params.items() for i, p in enumerate(ps)})
    return values


def test_net_values_are_the_same_on_one_and_two_threads(monkeypatch):
    previous = caffe.get_num_threads()
    try:
        one = _train_step_values(1, monkeypatch)
        two = _train_step_values(2, monkeypatch)
    finally:
        caffe.set_num_threads(previous)
    assert one.keys() == two.keys()
    for key in one:
        np.testing.assert_allclose(two[key], one[key], rtol=1e-6, atol=1e-7, err_msg=key)


def test_threads_flag_of_the_caffe_commands(caplog):
    """``-threads T`` of ``pyskim train/test/time`` sizes the pool; 0 leaves it; negative is refused."""
    from pyskim.apps.caffe_command import apply_threads
    from pyskim.errors import PyskimError
    previous = caffe.get_num_threads()
    try:
        apply_threads(3)
        assert caffe.get_num_threads() == 3
        apply_threads(0)
        assert caffe.get_num_threads() == 3
        with pytest.raises(PyskimError, match="threads"):
            apply_threads(-2)
    finally:
        caffe.set_num_threads(previous)


def _child_conv(queue, x, w):
    queue.put(gemm.conv2d_forward(x, w, None, 3))


def test_the_pool_works_in_a_forked_child(monkeypatch):
    """A child forked after the pool's threads started (multiprocessing's default on Linux) gets a
    pool of its own on its first parallel call, with the same results."""
    import multiprocessing
    monkeypatch.setattr(gemm, "PARALLEL_MIN_MACS", 0)
    previous = caffe.get_num_threads()
    caffe.set_num_threads(2)
    try:
        rng = np.random.default_rng(3)
        x = rng.standard_normal((4, 8, 20, 20)).astype(np.float32)
        w = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
        parent = gemm.conv2d_forward(x, w, None, 3)
        context = multiprocessing.get_context("fork")
        queue = context.Queue()
        child = context.Process(target=_child_conv, args=(queue, x, w))
        child.start()
        try:
            np.testing.assert_array_equal(queue.get(timeout=60), parent)
        finally:
            child.join(timeout=60)
        assert child.exitcode == 0
    finally:
        caffe.set_num_threads(previous)
