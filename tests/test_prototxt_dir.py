"""Every ready model file under ``prototxt/`` parses and builds, without its datasets.

- Deploy nets (no data-reading layer) build with ``pyskim.Net(path, pyskim.TEST)`` and run forward at
  batch 1.
- Train/test nets: per phase, NetState filtering must leave exactly one data layer, reading a plain
  relative LMDB name (no folder) as the README's layout needs; the data layers are then swapped for
  ``Input`` layers of the shape the deploy net next to it declares (batch 2) and the net builds and
  runs forward + backward. Its learnable blobs must have the deploy net's shapes (so trained weights
  load into the deploy net).
- Solvers parse with Caffe's solver upgrade, name a net file in the same folder, a relative
  ``snapshot_prefix``, and build (with the Input version of their net) and take one step.
"""
import pathlib

import numpy as np
import pytest

import pyskim
from pyskim.core.netgraph import filter_net
from pyskim.io.upgrade import read_net_text, read_solver_text
from pyskim.proto import caffe_pb2
from pyskim.solvers import get_solver

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROTOTXT = ROOT / "prototxt"
FILES = sorted(PROTOTXT.rglob("*.prototxt"))
SOLVERS = [p for p in FILES if "solver" in p.name]
NETS = [p for p in FILES if p not in SOLVERS]
DATA_TYPES = {"Data", "ImageData", "HDF5Data", "WindowData", "MemoryData"}
BATCH = 2


def _id(path):
    return str(path.relative_to(PROTOTXT))


def _data_layers(param):
    return [lp for lp in param.layer if lp.type in DATA_TYPES]


TRAIN_TEST = [p for p in NETS if _data_layers(read_net_text(str(p)))]
DEPLOY = [p for p in NETS if p not in TRAIN_TEST]


def _deploy_for(path):
    """The deploy net next to a train/test net: ``X_train_test`` -> ``X`` or ``X_deploy``."""
    stem = path.stem.replace("_train_test", "")
    for name in (f"{stem}.prototxt", f"{stem}_deploy.prototxt"):
        if (path.parent / name).is_file():
            return path.parent / name
    raise AssertionError(f"{_id(path)}: no deploy net ({stem}.prototxt or {stem}_deploy.prototxt) next to it")


def _input_shape(deploy_path, top):
    param = read_net_text(str(deploy_path))
    for lp in param.layer:
        if lp.type == "Input" and top in lp.top:
            shape = lp.input_param.shape[min(list(lp.top).index(top), len(lp.input_param.shape) - 1)]
            return list(shape.dim)
    raise AssertionError(f"{_id(deploy_path)}: no Input layer produces '{top}'")


def _with_inputs(path, batch=BATCH):
    """The train/test net with each data layer replaced by an Input layer (same name, tops, rules)."""
    param = read_net_text(str(path))
    data_shape = _input_shape(_deploy_for(path), "data")[1:]
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    for lp in param.layer:
        if lp.type not in DATA_TYPES:
            out.layer.add().CopyFrom(lp)
            continue
        new = out.layer.add(name=lp.name, type="Input", top=list(lp.top))
        new.include.extend(lp.include)
        new.exclude.extend(lp.exclude)
        new.input_param.shape.add().dim.extend([batch, *data_shape])
        for _ in lp.top[1:]:
            new.input_param.shape.add().dim.extend([batch])
    return out


def test_the_ready_models_are_all_there():
    names = {_id(p) for p in FILES}
    for name in ("lenet/lenet_train_test.prototxt", "lenet/lenet_solver.prototxt",
                 "caffenet/deploy.prototxt", "googlenet/deploy_sparse.prototxt",
                 "cifar10/cifar10_quick_train_test.prototxt", "cifar10/cifar10_quick_solver.prototxt",
                 "cifar10/cifar10_quick_solver_lr1.prototxt", "cifar10/cifar10_quick.prototxt",
                 "cifar10/cifar10_full_train_test.prototxt", "cifar10/cifar10_full_solver.prototxt",
                 "cifar10/cifar10_full_solver_lr1.prototxt", "cifar10/cifar10_full_solver_lr2.prototxt",
                 "cifar10/cifar10_full.prototxt"):
        assert name in names


@pytest.mark.parametrize("path", DEPLOY, ids=_id)
def test_deploy_net_builds_and_runs(path):
    net = pyskim.Net(str(path), pyskim.TEST)
    assert net.inputs
    rng = np.random.default_rng(0)
    for name in net.inputs:
        blob = net.blobs[name]
        blob.reshape(1, *blob.shape[1:])
    net.reshape()
    for name in net.inputs:
        net.blobs[name].data[...] = 0 if name == "label" else rng.uniform(-1, 1, net.blobs[name].shape)
    out = net.forward()
    for name, value in out.items():
        assert np.all(np.isfinite(value)), name
        assert value.ndim == 0 or value.shape[0] == 1, (name, value.shape)     # losses are scalars


@pytest.mark.parametrize("path", TRAIN_TEST, ids=_id)
def test_train_test_net_filters_builds_and_matches_its_deploy_net(path):
    param = read_net_text(str(path))
    for phase in (caffe_pb2.TRAIN, caffe_pb2.TEST):
        data = _data_layers(filter_net(param, caffe_pb2.NetState(phase=phase)))
        assert len(data) == 1, (caffe_pb2.Phase.Name(phase), [lp.name for lp in data])
        for field in ("data_param", "image_data_param"):
            if data[0].HasField(field):
                assert "/" not in getattr(data[0], field).source
        if data[0].transform_param.HasField("mean_file"):
            assert "/" not in data[0].transform_param.mean_file
    deploy = pyskim.Net(str(_deploy_for(path)), pyskim.TEST)
    for phase in (pyskim.TRAIN, pyskim.TEST):
        net = pyskim.Net(_with_inputs(path), phase)
        assert net.inputs == ["data", "label"]
        net.blobs["data"].data[...] = np.random.default_rng(0).uniform(-1, 1, net.blobs["data"].shape)
        net.blobs["label"].data[...] = np.arange(BATCH) % 10
        out = net.forward()
        assert np.isfinite(out["loss"]).all()
        if phase == pyskim.TRAIN:
            net.backward()
            assert {name: [b.shape for b in blobs] for name, blobs in net.params.items()} == \
                {name: [b.shape for b in blobs] for name, blobs in deploy.params.items()}
        else:
            assert 0 <= float(out["accuracy"]) <= 1


@pytest.mark.parametrize("path", SOLVERS, ids=_id)
def test_solver_parses_and_takes_a_step(path, tmp_path, monkeypatch):
    solver_param = read_solver_text(str(path))
    assert solver_param.net and "/" not in solver_param.net
    net_path = path.parent / solver_param.net
    assert net_path.is_file(), f"{_id(path)} names {solver_param.net}, which is not next to it"
    assert solver_param.snapshot_prefix and "/" not in solver_param.snapshot_prefix
    assert solver_param.solver_mode == caffe_pb2.SolverParameter.CPU
    solver_param.ClearField("net")
    solver_param.net_param.CopyFrom(_with_inputs(net_path))
    solver_param.test_initialization = False
    monkeypatch.chdir(tmp_path)           # nothing should be written, but never into the repository
    solver = get_solver(solver_param)
    solver.step(1)
    assert solver.iter == 1
    assert not list(tmp_path.iterdir())
