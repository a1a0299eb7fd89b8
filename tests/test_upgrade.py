"""Tests for pyskim.io.upgrade (Caffe's upgrade_proto) and the two upgrade tools.

The conformance cases in shared/conformance/io/upgrade_* hold Caffe's own output; upgraded nets are
compared as parsed messages (Python's text printer writes 1.0 where C++ writes 1).
"""

from __future__ import annotations

import logging
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from pyskim.errors import NetError, ParseError, SolverError
from pyskim.io.protofiles import parse_text, read_binary, read_text, write_text
from pyskim.io.upgrade import (
    V1_TYPE_NAMES,
    net_needs_upgrade,
    read_net_binary,
    read_net_text,
    read_solver_text,
    upgrade_net,
    upgrade_net_as_needed,
    upgrade_snapshot_prefix,
    upgrade_solver,
    v1_type_to_string,
)
from pyskim.proto import caffe_pb2

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
NET_TOOL = REPO_ROOT / "tools" / "upgrade_net_proto.py"
SOLVER_TOOL = REPO_ROOT / "tools" / "upgrade_solver_proto.py"

# (folder, old file, Caffe's upgraded file, Caffe's log)
NET_CASES = [
    ("upgrade_v0_net", "v0.prototxt", "upgraded.prototxt", "upgrade.log"),
    ("upgrade_v1_net", "v1.prototxt", "upgraded.prototxt", "upgrade.log"),
    ("upgrade_v1_caffemodel", "v1_deploy.prototxt", "net.prototxt", "upgrade_text.log"),
]
SOLVER_TYPES = ["adam", "nesterov"]


@pytest.fixture(scope="module")
def io_dir(shared_dir):
    return shared_dir / "conformance" / "io"


def _net(text):
    return parse_text(text, caffe_pb2.NetParameter())


def _caffe_upgrade_messages(log_path):
    """The messages Caffe's upgrade_proto.cpp logged, without the glog prefix."""
    lines = log_path.read_text().splitlines()
    return [line.split("] ", 1)[1] for line in lines if "upgrade_proto.cpp:" in line]


def _run_tool(tool, *args):
    return subprocess.run([sys.executable, str(tool), *map(str, args)], check=False, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)


def _same_messages(ours, caffes):
    """Equal log messages, except the V0 note, whose tool hint names pyskim's tool."""
    assert len(ours) == len(caffes)
    for a, b in zip(ours, caffes):
        if b.startswith("Note that future Caffe releases will not support V0NetParameter"):
            assert a.startswith("Note that future Caffe releases will not support V0NetParameter")
        else:
            assert a == b


# --- conformance: nets ---------------------------------------------------------------------------

@pytest.mark.parametrize("folder,old,new,logname", NET_CASES)
def test_net_upgrade_matches_caffe(io_dir, folder, old, new, logname, caplog):
    case = io_dir / folder
    expected = read_text(case / new, caffe_pb2.NetParameter())
    assert read_net_text(case / old) == expected

    net = read_text(case / old, caffe_pb2.NetParameter())
    assert net_needs_upgrade(net)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pyskim"):
        assert upgrade_net(net, source=old) is True
    assert net == expected
    ours = [r.getMessage() for r in caplog.records if r.name == "pyskim"]
    _same_messages(ours, _caffe_upgrade_messages(case / logname))
    # Already current: nothing more to do.
    assert not net_needs_upgrade(net)
    assert upgrade_net(net) is False
    assert net == expected


@pytest.mark.parametrize("folder,old,new,logname", NET_CASES)
def test_net_tool_matches_caffe(io_dir, tmp_path, folder, old, new, logname):
    case = io_dir / folder
    out = tmp_path / "out.prototxt"
    proc = _run_tool(NET_TOOL, case / old, out)
    assert proc.returncode == 0, proc.stderr
    assert read_text(out, caffe_pb2.NetParameter()) == read_text(case / new, caffe_pb2.NetParameter())
    assert "Wrote upgraded NetParameter text proto to" in proc.stderr


def _check_lenet_blobs(net, params):
    by_name = {layer.name: layer for layer in net.layer}
    seen = set()
    for key, expected in params.items():
        name, index = key.rsplit("/", 1)
        blob = by_name[name].blobs[int(index)]
        values = np.asarray(blob.data, dtype=np.float32)
        assert values.size == expected.size
        np.testing.assert_array_equal(values.reshape(expected.shape), expected)
        seen.add(name)
    assert seen == {layer.name for layer in net.layer if len(layer.blobs)}


def test_v1_caffemodel_upgrade_matches_caffe(io_dir, caplog):
    case = io_dir / "upgrade_v1_caffemodel"
    expected = read_binary(case / "upgraded.caffemodel", caffe_pb2.NetParameter())
    with caplog.at_level(logging.INFO, logger="pyskim"):
        net = read_net_binary(case / "v1.caffemodel")
    assert net == expected
    assert len(net.layers) == 0 and len(net.input) == 0 and net.layer[0].type == "Input"
    with np.load(case / "params.npz", allow_pickle=False) as params:
        _check_lenet_blobs(net, dict(params))
    # Same layers (minus blobs) as the upgraded deploy prototxt.
    deploy = read_text(case / "net.prototxt", caffe_pb2.NetParameter())
    for layer in net.layer:
        del layer.blobs[:]
    assert net == deploy
    ours = [r.getMessage().replace(str(case / "v1.caffemodel"), "v1.caffemodel")
            for r in caplog.records if r.name == "pyskim"]
    _same_messages(ours, _caffe_upgrade_messages(case / "upgrade_binary.log"))


@pytest.mark.parametrize("flag", [[], ["--binary"]])
def test_v1_caffemodel_tool(io_dir, tmp_path, flag):
    case = io_dir / "upgrade_v1_caffemodel"
    src = case / "v1.caffemodel"
    if not flag:  # detection by extension; use a copy with another extension for --binary
        out = tmp_path / "out.caffemodel"
    else:
        src = tmp_path / "v1.bin"
        src.write_bytes((case / "v1.caffemodel").read_bytes())
        out = tmp_path / "out.bin"
    proc = _run_tool(NET_TOOL, src, out, *flag)
    assert proc.returncode == 0, proc.stderr
    net = read_binary(out, caffe_pb2.NetParameter())
    assert net == read_binary(case / "upgraded.caffemodel", caffe_pb2.NetParameter())
    with np.load(case / "params.npz", allow_pickle=False) as params:
        _check_lenet_blobs(net, dict(params))


# --- conformance: solvers ------------------------------------------------------------------------

@pytest.mark.parametrize("name", SOLVER_TYPES)
def test_solver_upgrade_matches_caffe(io_dir, name, caplog):
    case = io_dir / "upgrade_solver"
    solver = read_text(case / f"old_{name}.prototxt", caffe_pb2.SolverParameter())
    with caplog.at_level(logging.INFO, logger="pyskim"):
        assert upgrade_solver(solver, source=f"old_{name}.prototxt") is True
    assert solver == read_text(case / f"upgraded_{name}.prototxt", caffe_pb2.SolverParameter())
    assert not solver.HasField("solver_type")
    ours = [r.getMessage() for r in caplog.records if r.name == "pyskim"]
    assert ours == _caffe_upgrade_messages(case / f"upgrade_{name}.log")
    assert upgrade_solver(solver) is False


@pytest.mark.parametrize("name", SOLVER_TYPES)
def test_solver_tool_matches_caffe(io_dir, tmp_path, name):
    case = io_dir / "upgrade_solver"
    out = tmp_path / "solver.prototxt"
    proc = _run_tool(SOLVER_TOOL, case / f"old_{name}.prototxt", out)
    assert proc.returncode == 0, proc.stderr
    expected = read_text(case / f"upgraded_{name}.prototxt", caffe_pb2.SolverParameter())
    assert read_text(out, caffe_pb2.SolverParameter()) == expected


@pytest.mark.parametrize("name", SOLVER_TYPES)
def test_read_solver_text_upgrades(io_dir, name):
    case = io_dir / "upgrade_solver"
    solver = read_solver_text(case / f"old_{name}.prototxt")
    assert solver == read_text(case / f"upgraded_{name}.prototxt", caffe_pb2.SolverParameter())


# --- errors --------------------------------------------------------------------------------------

MIXED = """
name: "Mixed"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 } } }
layers { name: "ip" type: INNER_PRODUCT bottom: "data" top: "ip" inner_product_param { num_output: 2 } }
"""


def test_mixing_layer_and_layers_is_an_error(tmp_path):
    path = tmp_path / "mixed.prototxt"
    path.write_text(MIXED)
    with pytest.raises(NetError) as err:
        read_net_text(path, strict=True)
    assert str(path) in str(err.value) and "'ip'" in str(err.value)
    net = _net(MIXED)
    with pytest.raises(NetError):
        upgrade_net_as_needed(net, "mixed.prototxt")
    assert net == _net(MIXED)  # untouched
    proc = _run_tool(NET_TOOL, path, tmp_path / "out.prototxt")
    assert proc.returncode == 1 and not (tmp_path / "out.prototxt").exists()


def test_solver_with_both_types_is_an_error(tmp_path):
    path = tmp_path / "solver.prototxt"
    path.write_text('base_lr: 0.1\nsolver_type: ADAM\ntype: "Adam"\nsnapshot_prefix: "x"\n')
    with pytest.raises(SolverError) as err:
        read_solver_text(path)
    assert str(path) in str(err.value)
    proc = _run_tool(SOLVER_TOOL, path, tmp_path / "out.prototxt")
    assert proc.returncode == 1


def test_tools_report_unreadable_input(tmp_path):
    bad = tmp_path / "bad.prototxt"
    bad.write_text("layer { name: ")
    assert _run_tool(NET_TOOL, bad, tmp_path / "o").returncode == 2
    assert _run_tool(SOLVER_TOOL, bad, tmp_path / "o").returncode == 2
    with pytest.raises(ParseError):
        read_net_text(bad)


V0_BAD_FIELD = """
input: "data" input_dim: 1 input_dim: 1 input_dim: 4 input_dim: 4
layers { layer { name: "relu" type: "relu" num_output: 3 } bottom: "data" top: "relu" }
"""


def test_v0_unknown_field_strict_and_lenient(tmp_path, caplog):
    path = tmp_path / "v0.prototxt"
    path.write_text(V0_BAD_FIELD)
    with pytest.raises(NetError) as err:
        read_net_text(path, strict=True)
    assert str(path) in str(err.value) and "'relu'" in str(err.value) and "num_output" in str(err.value)
    net = _net(V0_BAD_FIELD)
    with caplog.at_level(logging.INFO, logger="pyskim"):
        assert upgrade_net_as_needed(net, "v0.prototxt") is False
    assert "Unknown parameter num_output for layer type relu" in caplog.text
    assert [layer.type for layer in net.layer] == ["Input", "ReLU"]
    assert read_net_text(path) == net   # readers follow Caffe: log, drop the field, go on
    # The tool writes the result anyway and exits 1, like Caffe's.
    out = tmp_path / "out.prototxt"
    assert _run_tool(NET_TOOL, path, out).returncode == 1
    assert read_text(out, caffe_pb2.NetParameter()) == net


@pytest.mark.parametrize("text,fragment", [
    ('layers { layer { name: "x" type: "bogus" } }', "bogus"),
    ('layers { layer { name: "c" type: "conv" } bottom: "nowhere" top: "c" }', "nowhere"),
    (('input: "d" layers { layer { name: "p" type: "padding" pad: 1 } bottom: "d" top: "p" }'
      ' layers { layer { name: "r" type: "relu" } bottom: "p" top: "r" }'), "padding"),
    ('input: "a" input: "b" input_dim: 1 input_dim: 1 input_dim: 1 input_dim: 1', "'b'"),
])
def test_fatal_upgrade_problems(text, fragment):
    with pytest.raises(NetError, match=re.escape(fragment)):
        upgrade_net(_net(text), source="f.prototxt")


# --- individual steps ----------------------------------------------------------------------------

def test_v0_padding_and_data_fields():
    net = _net("""
        name: "v0" input: "img" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8
        layers { layer { name: "data" type: "data" source: "db" batchsize: 4 meanfile: "m.binaryproto"
                         cropsize: 7 mirror: true scale: 0.5 rand_skip: 3 } top: "x" top: "label" }
        layers { layer { name: "pad" type: "padding" pad: 2 } bottom: "img" top: "padded" }
        layers { layer { name: "pool" type: "pool" pool: AVE kernelsize: 3 stride: 2 } bottom: "padded"
                 top: "pool" }
        layers { layer { name: "drop" type: "dropout" dropout_ratio: 0.3 } bottom: "pool" top: "pool" }
        force_backward: true
    """)
    assert upgrade_net(net)
    types = [layer.type for layer in net.layer]
    assert types == ["Input", "Data", "Pooling", "Dropout"]
    data, pool, drop = net.layer[1], net.layer[2], net.layer[3]
    assert (data.data_param.source, data.data_param.batch_size, data.data_param.rand_skip) == ("db", 4, 3)
    t = data.transform_param
    assert (t.mean_file, t.crop_size, t.mirror, t.scale) == ("m.binaryproto", 7, True, 0.5)
    assert list(pool.bottom) == ["img"]
    p = pool.pooling_param
    assert (p.pool, p.pad, p.kernel_size, p.stride) == (caffe_pb2.PoolingParameter.AVE, 2, 3, 2)
    assert drop.dropout_param.dropout_ratio == pytest.approx(0.3)
    assert net.force_backward and net.name == "v0"


def test_data_transformation_upgrade(caplog):
    net = _net("""
        layers { name: "d" type: DATA top: "x" data_param { source: "s" scale: 0.25 mean_file: "m"
                 crop_size: 5 mirror: true } }
        layers { name: "w" type: WINDOW_DATA top: "y" window_data_param { source: "w" } }
    """)
    with caplog.at_level(logging.INFO, logger="pyskim"):
        upgrade_net(net, source="d.prototxt")
    assert "deprecated transformation parameters: d.prototxt" in caplog.text
    d, w = net.layer
    assert d.type == "Data" and d.data_param == caffe_pb2.DataParameter(source="s")
    assert d.transform_param == caffe_pb2.TransformationParameter(scale=0.25, mean_file="m", crop_size=5,
                                                                  mirror=True)
    # Like Caffe, every data layer of such a net gets a (possibly empty) transform_param.
    assert w.HasField("transform_param") and w.transform_param.ByteSize() == 0


def test_v1_param_specs_and_params():
    net = _net("""
        layers { name: "c" type: CONVOLUTION bottom: "a" top: "b" param: "w" param: "" blobs_lr: 1
                 blobs_lr: 2 weight_decay: 1 weight_decay: 0 blob_share_mode: PERMISSIVE
                 include { phase: TRAIN } exclude { stage: "s" } loss_weight: 0.5
                 convolution_param { num_output: 3 } transform_param { scale: 2 }
                 blobs { num: 1 channels: 1 height: 1 width: 1 data: 7 } }
        layers { name: "n" top: "z" }
    """)
    upgrade_net(net)
    c, n = net.layer
    assert c.type == "Convolution" and not n.HasField("type")
    assert [(s.name, s.lr_mult, s.decay_mult) for s in c.param] == [("w", 1, 1), ("", 2, 0)]
    assert c.param[0].share_mode == caffe_pb2.ParamSpec.PERMISSIVE and not c.param[1].HasField("share_mode")
    assert c.include[0].phase == caffe_pb2.TRAIN and list(c.exclude[0].stage) == ["s"]
    assert list(c.loss_weight) == [0.5] and c.convolution_param.num_output == 3
    assert c.transform_param.scale == 2 and list(c.blobs[0].data) == [7]


def test_v1_type_names():
    enum = caffe_pb2.V1LayerParameter.LayerType
    assert set(V1_TYPE_NAMES) == set(enum.keys())
    assert len([v for v in V1_TYPE_NAMES.values() if v]) == 39
    assert v1_type_to_string(enum.Value("INNER_PRODUCT")) == "InnerProduct"
    assert v1_type_to_string("SOFTMAX_LOSS") == "SoftmaxWithLoss"
    with pytest.raises(NetError):
        v1_type_to_string(999)


def test_input_shape_and_shapeless_inputs():
    net = _net('input: "a" input: "b" input_shape { dim: 1 dim: 2 } input_shape { dim: 3 }'
               ' layer { name: "l" type: "Eltwise" bottom: "a" bottom: "b" top: "c" }')
    upgrade_net(net)
    first = net.layer[0]
    assert (first.name, first.type, list(first.top)) == ("input", "Input", ["a", "b"])
    assert [list(s.dim) for s in first.input_param.shape] == [[1, 2], [3]]
    assert net.layer[1].name == "l" and not net.input and not net.input_shape
    # A caffemodel's input without any shape: the fields are just dropped.
    net = _net('input: "data" layer { name: "l" type: "ReLU" bottom: "data" top: "data" }')
    assert upgrade_net(net)
    assert not net.input and [layer.name for layer in net.layer] == ["l"]


def test_batch_norm_with_three_param_specs(caplog):
    net = _net("""
        layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x"
                param { lr_mult: 1 decay_mult: 1 name: "m" } param { lr_mult: 1 } param { decay_mult: 2 } }
        layer { name: "bn2" type: "BatchNorm" bottom: "x" top: "x" param { lr_mult: 1 } }
    """)
    with caplog.at_level(logging.INFO, logger="pyskim"):
        assert upgrade_net(net, source="bn.prototxt")
    assert "Attempting to upgrade batch norm layers using deprecated params: bn.prototxt" in caplog.text
    bn, bn2 = net.layer
    assert [(s.lr_mult, s.decay_mult) for s in bn.param] == [(0, 0)] * 3
    assert all(s.HasField("lr_mult") and s.HasField("decay_mult") for s in bn.param)
    assert bn.param[0].name == "m"
    assert bn2.param[0].lr_mult == 1


def test_snapshot_prefix_rules(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "snaps").mkdir()
    solver_file = tmp_path / "cfg" / "my_solver.prototxt"
    solver_file.parent.mkdir()
    solver_file.write_text('base_lr: 0.1\ntype: "SGD"\n')
    assert read_solver_text(solver_file).snapshot_prefix == str(tmp_path / "cfg" / "my_solver")
    solver_file.write_text('base_lr: 0.1\nsnapshot_prefix: "snaps"\n')
    assert read_solver_text(solver_file).snapshot_prefix == "snaps/my_solver"
    solver_file.write_text('base_lr: 0.1\nsnapshot_prefix: "snaps/run"\n')
    assert read_solver_text(solver_file).snapshot_prefix == "snaps/run"
    s = caffe_pb2.SolverParameter()
    assert upgrade_snapshot_prefix(s, "solver") and s.snapshot_prefix == "solver"


# --- real models in shared/models ----------------------------------------------------------------

LEGACY = re.compile(r"^\s*(layers\s*\{|input(_dim|_shape)?\s*[:{])", re.MULTILINE)
NET_FIELDS = ("net_param", "train_net_param", "test_net_param")


def _model_prototxts(shared_dir):
    root = shared_dir / "models"
    return sorted(p for p in root.rglob("*.prototxt") if "ultraface_linzaer" not in p.parts)


def _assert_current(net):
    assert not net.layers and not net.input and not net.input_dim and not net.input_shape
    assert all(layer.type for layer in net.layer)
    # Upgrading is idempotent (a net with 3-ParamSpec BatchNorm layers always "needs" step 5, as in Caffe).
    again = caffe_pb2.NetParameter()
    again.CopyFrom(net)
    upgrade_net(again)
    assert again == net


def test_legacy_model_prototxts_upgrade(shared_dir):
    legacy = [p for p in _model_prototxts(shared_dir) if LEGACY.search(p.read_text())]
    assert len(legacy) >= 10
    for path in legacy:
        if "solver" in path.name:
            solver = read_solver_text(path)
            nets = [solver.net_param, solver.train_net_param, *solver.test_net_param]
            nets = [n for n in nets if n.ByteSize()]
            assert nets, path
            for net in nets:
                upgrade_net(net, source=str(path))
                _assert_current(net)
        else:
            _assert_current(read_net_text(path))


def test_every_model_prototxt_upgrades(shared_dir):
    """Every net prototxt that parses upgrades without error (a no-op for most)."""
    count = 0
    for path in _model_prototxts(shared_dir):
        if "solver" in path.name:
            continue
        try:
            net = read_text(path, caffe_pb2.NetParameter())
        except ParseError:
            continue  # templates and fork-specific files are test_proto's business
        upgrade_net(net, source=str(path))
        _assert_current(net)
        count += 1
    assert count >= 50


def test_real_caffemodels_upgrade(shared_dir):
    root = shared_dir / "models" / "trained"
    paths = sorted(p for p in root.rglob("*.caffemodel") if "ultraface_linzaer" not in p.parts)
    assert len(paths) >= 9
    for path in paths:
        raw = read_binary(path, caffe_pb2.NetParameter())
        was_v1 = len(raw.layers) > 0
        net = read_net_binary(path)
        _assert_current(net)
        if was_v1:
            assert [layer.name for layer in net.layer if layer.type != "Input"] == [x.name for x in raw.layers]
            for old, new in zip(raw.layers, (x for x in net.layer if x.type != "Input")):
                assert list(old.blobs) == list(new.blobs)


def test_v1_deploy_and_weights_agree(shared_dir, tmp_path):
    """everpeace's V1 deploy prototxt and V1 caffemodel upgrade to matching layer names and types."""
    folder = shared_dir / "models" / "trained" / "everpeace_caffe" / "mnist"
    deploy = read_net_text(folder / "lenet.prototxt")
    weights = read_net_binary(folder / "lenet_iter_10000.caffemodel")
    types = {layer.name: layer.type for layer in weights.layer}
    for layer in deploy.layer:
        if layer.name in types:
            assert types[layer.name] == layer.type
    # Round trip through a file written by pyskim: nothing left to upgrade.
    out = tmp_path / "lenet.prototxt"
    write_text(out, deploy)
    again = read_text(out, caffe_pb2.NetParameter())
    assert again == deploy and not upgrade_net(again)
