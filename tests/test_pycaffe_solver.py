"""BVLC's python/caffe/test/test_solver.py (master: test_solve, test_apply_update, test_net_memory,
test_snapshot), re-expressed against ``import pyskim as caffe`` with every assertion kept.

The solver and net are BVLC's: the ``simple_net_file`` net of test_net.py (DummyData, Convolution,
InnerProduct, SoftmaxWithLoss) and the same solver text, written to a temporary folder.
"""
import os

import numpy as np
import pytest

import pyskim as caffe

NUM_OUTPUT = 13

SIMPLE_NET = """name: 'testnet' force_backward: true
layer { type: 'DummyData' name: 'data' top: 'data' top: 'label'
  dummy_data_param { num: 5 channels: 2 height: 3 width: 4
    num: 5 channels: 1 height: 1 width: 1
    data_filler { type: 'gaussian' std: 1 }
    data_filler { type: 'constant' } } }
layer { type: 'Convolution' name: 'conv' bottom: 'data' top: 'conv'
  convolution_param { num_output: 11 kernel_size: 2 pad: 3
    weight_filler { type: 'gaussian' std: 1 }
    bias_filler { type: 'constant' value: 2 } }
    param { decay_mult: 1 } param { decay_mult: 0 }
    }
layer { type: 'InnerProduct' name: 'ip' bottom: 'conv' top: 'ip_blob'
  inner_product_param { num_output: %d
    weight_filler { type: 'gaussian' std: 2.5 }
    bias_filler { type: 'constant' value: -3 } } }
layer { type: 'SoftmaxWithLoss' name: 'loss' bottom: 'ip_blob' bottom: 'label'
  top: 'loss' }"""

SOLVER = """net: '%s'
test_iter: 10 test_interval: 10 base_lr: 0.01 momentum: 0.9
weight_decay: 0.0005 lr_policy: 'inv' gamma: 0.0001 power: 0.75
display: 100 max_iter: 100 snapshot_after_train: false
snapshot_prefix: "model" """


@pytest.fixture
def solver(tmp_path, monkeypatch):
    """TestSolver.setUp: an SGDSolver on the simple net, labels filled with valid class indices; the
    prototxt files are removed again (the solver must not need them after construction)."""
    monkeypatch.chdir(tmp_path)     # snapshots land here
    net_f = tmp_path / "net.prototxt"
    net_f.write_text(SIMPLE_NET % NUM_OUTPUT)
    solver_f = tmp_path / "solver.prototxt"
    solver_f.write_text(SOLVER % net_f.as_posix())
    solver = caffe.SGDSolver(str(solver_f))
    # also make sure get_solver runs
    caffe.get_solver(str(solver_f))
    caffe.set_mode_cpu()
    # fill in valid labels
    rng = np.random.default_rng(0)
    solver.net.blobs['label'].data[...] = rng.integers(
        NUM_OUTPUT, size=solver.net.blobs['label'].data.shape)
    solver.test_nets[0].blobs['label'].data[...] = rng.integers(
        NUM_OUTPUT, size=solver.test_nets[0].blobs['label'].data.shape)
    os.remove(solver_f)
    os.remove(net_f)
    return solver


def test_solve(solver):
    assert solver.iter == 0
    solver.solve()
    assert solver.iter == 100


def test_solve_none_resume_file(solver):
    # test_solver.py of some BVLC branches calls solve(None)
    solver.solve(None)
    assert solver.iter == 100


def test_apply_update(solver):
    net = solver.net
    data = net.layers[1].blobs[0].data[...]
    # Reset the weights of that layer to 0
    data[...] = 0
    net.layers[1].blobs[0].diff[...] = 1
    # Apply the update, the initial learning rate should be 0.01
    solver.apply_update()
    # Check that the new weights are -0.01, with a precision of 1e-7
    assert (data - -0.01 * np.ones(data.shape)).max() < 1e-7


def test_net_memory(solver):
    """Check that nets survive after the solver is destroyed."""
    nets = [solver.net] + list(solver.test_nets)
    assert len(nets) == 2
    del solver

    total = 0
    for net in nets:
        for ps in net.params.values():
            for p in ps:
                total += p.data.sum() + p.diff.sum()
        for bl in net.blobs.values():
            total += bl.data.sum() + bl.diff.sum()
    assert np.isfinite(total)


def test_snapshot(solver):
    solver.snapshot()
    # Check that these files exist and then remove them
    files = ['model_iter_0.caffemodel', 'model_iter_0.solverstate']
    for fn in files:
        assert os.path.isfile(fn)
        os.remove(fn)


def test_solver_type_classes_share_the_path_constructor(tmp_path):
    """pycaffe's five other solver classes take the same solver path (types set explicitly)."""
    net_f = tmp_path / "net.prototxt"
    net_f.write_text(SIMPLE_NET % NUM_OUTPUT)
    for cls, type_, extra in [(caffe.NesterovSolver, "Nesterov", "momentum: 0.9"),
                              (caffe.AdaGradSolver, "AdaGrad", ""),
                              (caffe.RMSPropSolver, "RMSProp", ""),
                              (caffe.AdaDeltaSolver, "AdaDelta", "momentum: 0.95"),
                              (caffe.AdamSolver, "Adam", "momentum: 0.9")]:
        solver_f = tmp_path / f"{type_}.prototxt"
        solver_f.write_text(f"net: '{net_f.as_posix()}' base_lr: 0.01 lr_policy: 'fixed' max_iter: 2 "
                            f"type: '{type_}' {extra}")
        solver = cls(str(solver_f))
        solver.net.blobs['label'].data[...] = 0
        solver.step(2)
        assert solver.iter == 2
        assert isinstance(caffe.get_solver(str(solver_f)), cls)
