"""``caffe.draw``, re-expressing BVLC ``python/caffe/test/test_draw.py`` (draw every net prototxt under
``models/`` and ``examples/``) against ``import pyskim as caffe``.

Images are rendered only where Graphviz's ``dot`` is installed; otherwise the tests check the DOT
source (``.raw``) that would be rendered, so they assert on the graph either way.
"""
import shutil
import sys

import pytest
from google.protobuf import text_format

import pyskim as caffe
import pyskim.pycaffe.draw as caffe_draw
from pyskim.errors import PyskimError
from pyskim.proto import caffe_pb2

pydot = pytest.importorskip("pydot")
HAVE_DOT = shutil.which("dot") is not None


def net_files(shared_dir):
    """Net prototxts of the BVLC source tree (models/ and examples/), solvers excluded."""
    root = shared_dir / "models" / "bvlc"
    files = []
    for dirname in ("models", "examples"):
        assert (root / dirname).exists()
        files += sorted(p for p in (root / dirname).rglob("*.prototxt") if "solver" not in p.name)
    assert files
    return files


def read_net(path):
    net = caffe_pb2.NetParameter()
    text_format.Merge(path.read_text(), net)
    return net


def node_names(graph):
    return {node.get_name().strip('"') for node in graph.get_nodes()}


def test_draw_net(shared_dir):
    """Every net in the BVLC tree becomes a graph with a node per layer and per blob."""
    for filename in net_files(shared_dir):
        net = read_net(filename)
        graph = caffe.draw.get_pydot_graph(net, "LR")
        names = node_names(graph)
        for layer in net.layer:
            label = caffe.draw.get_layer_label(layer, "LR").strip('"')
            assert label in names, f"{filename}: layer {layer.name} not drawn"
            assert set(layer.bottom) | set(layer.top) <= names, f"{filename}: blobs of {layer.name} missing"
        assert len(graph.get_edges()) == sum(len(layer.bottom) + len(layer.top) for layer in net.layer)


def test_draw_net_renders(shared_dir, tmp_path):
    """draw_net / draw_net_to_file as BVLC calls them: an image when dot exists, DOT source otherwise."""
    net = read_net(shared_dir / "models/bvlc/examples/mnist/lenet_train_test.prototxt")
    raw = caffe.draw.draw_net(net, "LR", ext="raw").decode()
    assert raw.startswith("digraph LeNet {") and "rankdir=LR" in raw
    assert '"conv1\\n(Convolution)\\nkernel size: 5\\nstride: 1\\npad: 0"' in raw
    assert '[label="Batch 64"]' in raw and "[label=20]" in raw
    caffe.draw.draw_net_to_file(net, str(tmp_path / "lenet.raw"))
    assert (tmp_path / "lenet.raw").read_text() == raw
    if HAVE_DOT:
        assert caffe.draw.draw_net(net, "LR").startswith(b"\x89PNG")
        caffe.draw.draw_net_to_file(net, str(tmp_path / "lenet.png"), rankdir="TB")
        assert (tmp_path / "lenet.png").read_bytes().startswith(b"\x89PNG")
        caffe.draw.draw_net_to_file(net, str(tmp_path / "lenet.svg"))
        svg = (tmp_path / "lenet.svg").read_text()
        assert "<svg" in svg and "conv1" in svg and "(SoftmaxWithLoss)" in svg
    else:
        with pytest.raises(PyskimError, match="graphviz"):
            caffe.draw.draw_net_to_file(net, str(tmp_path / "lenet.png"))


def test_missing_dot_is_a_clear_error(shared_dir, tmp_path, monkeypatch):
    net = read_net(shared_dir / "models/bvlc/examples/mnist/lenet.prototxt")
    monkeypatch.setattr(caffe_draw.shutil, "which", lambda name: None)
    with pytest.raises(PyskimError, match="Graphviz's 'dot'.*'.raw'"):
        caffe.draw.draw_net_to_file(net, str(tmp_path / "lenet.png"))


def test_missing_pydot_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydot", None)
    with pytest.raises(PyskimError, match="pip install pydot"):
        caffe.draw.get_pydot_graph(caffe_pb2.NetParameter(), "LR")


def test_phase_filter(shared_dir):
    net = read_net(shared_dir / "models/bvlc/examples/mnist/lenet_train_test.prototxt")
    all_layers = node_names(caffe.draw.get_pydot_graph(net, "LR"))
    train = node_names(caffe.draw.get_pydot_graph(net, "LR", phase=caffe.TRAIN))
    test = node_names(caffe.draw.get_pydot_graph(net, "LR", phase=caffe.TEST))
    assert any(name.startswith("accuracy") for name in test)
    assert not any(name.startswith("accuracy") for name in train)
    assert sum(name.startswith("mnist") for name in all_layers) == 1   # same label for both data layers
    layer = caffe_pb2.LayerParameter(name="x", type="ReLU")
    layer.include.add(phase=caffe.TRAIN)
    layer.exclude.add(phase=caffe.TEST)
    both = caffe_pb2.NetParameter()
    both.layer.add().CopyFrom(layer)
    with pytest.raises(ValueError, match="both include and exclude"):
        caffe.draw.get_pydot_graph(both, "LR", phase=caffe.TRAIN)


def test_labels_rankdir_and_lr_mult():
    layer = caffe_pb2.LayerParameter(name="conv", type="Convolution")
    layer.convolution_param.kernel_size.append(3)
    layer.convolution_param.pad.append(1)
    layer.param.add(lr_mult=0)
    layer.param.add(lr_mult=2)
    assert caffe.draw.get_layer_label(layer, "TB") == '"conv (Convolution) kernel size: 3 stride: 1 pad: 1"'
    assert caffe.draw.get_layer_label(layer, "LR", display_lrm=True) == (
        '"conv\\n(Convolution)\\nkernel size: 3\\nstride: 1\\npad: 1\\nlr mult: 0.0, 2.0"')
    assert caffe.draw.get_layer_lr_mult(caffe_pb2.LayerParameter(type="InnerProduct")) == (1.0, 1.0)
    with pytest.raises(ValueError):
        caffe.draw.get_layer_lr_mult(caffe_pb2.LayerParameter(type="ReLU"))
    pool = caffe_pb2.LayerParameter(name="p", type="Pooling")
    pool.pooling_param.pool = caffe_pb2.PoolingParameter.AVE
    assert caffe.draw.get_layer_label(pool, "BT").startswith('"p (Pooling AVE) kernel size: 0')
    assert caffe.draw.choose_color_by_layertype("Pooling") == "#FF9900"


def test_v1_net_is_upgraded(shared_dir):
    net = read_net(shared_dir / "models/skimcaffe/models/vgg/vgg_16_orig_train_val.prototxt")
    assert len(net.layers) and not len(net.layer)
    names = node_names(caffe.draw.get_pydot_graph(net, "LR"))
    assert "conv1_1\\n(Convolution)\\nkernel size: 3\\nstride: 1\\npad: 1" in names
    assert "loss\\n(SoftmaxWithLoss)" in names and "loss/loss" in names
