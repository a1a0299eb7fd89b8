"""Python layers, re-expressing BVLC ``python/caffe/test/test_python_layer.py`` and
``test_python_layer_with_param_str.py`` against ``import pyskim as caffe``, plus learnable blobs
(saved, loaded, shared, HDF5), Python loss layers and the import errors.

The prototxts name this module by ``__name__``: pytest puts ``tests/`` on ``sys.path``, so the layers
are imported from ``sys.path`` exactly as Caffe imports them.
"""
import logging
import os
import sys
import tempfile

import numpy as np
import pytest

import pyskim as caffe
from pyskim import layers as L
from pyskim.errors import NetError

MODULE = __name__


class SimpleLayer(caffe.Layer):
    """A layer that just multiplies by ten"""

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = 10 * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = 10 * top[0].diff


class ExceptionLayer(caffe.Layer):
    """A layer for checking exceptions from Python"""

    def setup(self, bottom, top):
        raise RuntimeError


class ParameterLayer(caffe.Layer):
    """A layer with one learnable blob whose diff backward sets to 1"""

    def setup(self, bottom, top):
        self.blobs.add_blob(1)
        self.blobs[0].data[0] = 0

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[0] = 1


class PhaseLayer(caffe.Layer):
    """A layer for checking attribute `phase`"""

    def setup(self, bottom, top):
        pass

    def reshape(self, bootom, top):
        top[0].reshape()

    def forward(self, bottom, top):
        top[0].data[()] = self.phase


class SimpleParamLayer(caffe.Layer):
    """A layer that just multiplies by the numeric value of its param string"""

    def setup(self, bottom, top):
        try:
            self.value = float(self.param_str)
        except ValueError:
            raise ValueError("Parameter string must be a legible float") from None

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.value * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = self.value * top[0].diff


DATA_LAYER_MAX = 1000
DATA_LAYER_BATCH_SIZE = 10


class SimpleDataLayer(caffe.Layer):
    """Outputs 0, 1, 2, ... DATA_LAYER_MAX - 1, 0, 1, ... in batches (older BVLC test)."""

    def setup(self, bottom, top):
        top[0].reshape(DATA_LAYER_BATCH_SIZE)
        self.reset()

    def reset(self):
        self.current_index = 0

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        next_index = self.current_index + DATA_LAYER_BATCH_SIZE
        top[0].data[...] = [x % DATA_LAYER_MAX for x in range(self.current_index, next_index)]
        self.current_index = next_index % DATA_LAYER_MAX


class ScaleParamLayer(caffe.Layer):
    """top = w * bottom with one learnable scalar w (initialised from param_str)."""

    def setup(self, bottom, top):
        self.blobs.add_blob(1)
        self.blobs[0].data[0] = float(self.param_str or 1)

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.blobs[0].data[0] * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[0] += np.sum(top[0].diff * bottom[0].data)
        if propagate_down[0]:
            bottom[0].diff[...] = self.blobs[0].data[0] * top[0].diff


class EuclideanLossLayer(caffe.Layer):
    """Python Euclidean loss: sum((a - b)^2) / (2 num), scaled by the top's loss weight."""

    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise ValueError("Need two inputs to compute distance.")

    def reshape(self, bottom, top):
        if bottom[0].count != bottom[1].count:
            raise ValueError("Inputs must have the same dimension.")
        self.diff = np.zeros_like(bottom[0].data, dtype=np.float32)
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        top[0].data[...] = np.sum(self.diff ** 2) / bottom[0].num / 2.0

    def backward(self, top, propagate_down, bottom):
        for i, sign in enumerate((1, -1)):
            if propagate_down[i]:
                bottom[i].diff[...] = sign * top[0].diff[0] * self.diff / bottom[i].num


NotALayer = object


def _net_file(text):
    with tempfile.NamedTemporaryFile(mode="w+", suffix=".prototxt", delete=False) as f:
        f.write(text)
        return f.name


def _net(text, phase=caffe.TRAIN):
    path = _net_file(text)
    try:
        return caffe.Net(path, phase)
    finally:
        os.remove(path)


def _python_layer(name, cls, bottom="", top=None, extra=""):
    bottom = f"bottom: '{bottom}'" if bottom else ""
    return (f"layer {{ type: 'Python' name: '{name}' {bottom} top: '{top or name}' "
            f"python_param {{ module: '{MODULE}' layer: '{cls}' {extra} }} }}\n")


INPUT = "name: 'pythonnet' force_backward: true input: 'data' input_shape { dim: 10 dim: 9 dim: 8 }\n"
PYTHON_NET = (INPUT + _python_layer("one", "SimpleLayer", "data") + _python_layer("two", "SimpleLayer", "one")
              + _python_layer("three", "SimpleLayer", "two"))
PARAM_STR_NET = (INPUT + _python_layer("mul10", "SimpleParamLayer", "data", extra="param_str: '10'")
                 + _python_layer("mul2", "SimpleParamLayer", "mul10", extra="param_str: '2'"))
PARAMETER_NET = INPUT + _python_layer("layer", "ParameterLayer", "data", top="top")


@pytest.fixture
def net():
    return _net(PYTHON_NET)


# -- BVLC test_python_layer.py ---------------------------------------------------------------------------
def test_python_layer_registered():
    assert "Python" in caffe.layer_type_list()


def test_forward(net):
    x = 8
    net.blobs["data"].data[...] = x
    net.forward()
    for y in net.blobs["three"].data.flat:
        assert y == 10 ** 3 * x


def test_backward(net):
    x = 7
    net.blobs["three"].diff[...] = x
    net.backward()
    for y in net.blobs["data"].diff.flat:
        assert y == 10 ** 3 * x


def test_reshape(net):
    s = 4
    net.blobs["data"].reshape(s, s, s, s)
    net.forward()
    for blob in net.blobs.values():
        for d in blob.data.shape:
            assert s == d


def test_exception():
    with pytest.raises(RuntimeError):
        _net(INPUT + _python_layer("layer", "ExceptionLayer", "data", top="top"), caffe.TEST)


def test_parameter(tmp_path):
    path = _net_file(PARAMETER_NET)
    net = caffe.Net(path, caffe.TRAIN)
    # forward and backward
    net.forward()
    net.backward()
    layer = net.layers[list(net._layer_names).index("layer")]
    assert layer.blobs[0].data[0] == 0
    assert layer.blobs[0].diff[0] == 1
    layer.blobs[0].data[0] += layer.blobs[0].diff[0]
    assert layer.blobs[0].data[0] == 1
    # saving and loading
    caffemodel = str(tmp_path / "parameter.caffemodel")
    net.save(caffemodel)
    layer.blobs[0].data[0] = -1
    assert layer.blobs[0].data[0] == -1
    net.copy_from(caffemodel)
    assert layer.blobs[0].data[0] == 1
    # weight sharing
    net2 = caffe.Net(path, caffe.TRAIN)
    net2.share_with(net)
    layer2 = net2.layers[list(net2._layer_names).index("layer")]
    assert layer2.blobs[0].data[0] == 1
    layer.blobs[0].data[0] = 5
    assert layer2.blobs[0].data[0] == 5
    os.remove(path)


def test_phase():
    text = "name: 'pythonnet' force_backward: true\n" + _python_layer("layer", "PhaseLayer", top="phase")
    for phase in caffe.TRAIN, caffe.TEST:
        assert _net(text, phase).forward()["phase"] == phase


# -- BVLC test_python_layer_with_param_str.py -----------------------------------------------------------
def test_param_str_forward():
    net = _net(PARAM_STR_NET)
    x = 8
    net.blobs["data"].data[...] = x
    net.forward()
    for y in net.blobs["mul2"].data.flat:
        assert y == 2 * 10 * x


def test_param_str_backward():
    net = _net(PARAM_STR_NET)
    x = 7
    net.blobs["mul2"].diff[...] = x
    net.backward()
    for y in net.blobs["data"].diff.flat:
        assert y == 2 * 10 * x


def test_bad_param_str_raises_from_setup():
    text = INPUT + _python_layer("bad", "SimpleParamLayer", "data", extra="param_str: 'ten'")
    with pytest.raises(ValueError, match="legible float"):
        _net(text)


# -- data layers and attribute access through net.layers ---------------------------------------------------
def test_data_layer_forward_and_layer_attributes():
    net = _net("name: 'pythondatanet'\n" + _python_layer("pythondata", "SimpleDataLayer"))
    batches = []
    for iter_num in range(150):
        net.forward()
        start = (iter_num * DATA_LAYER_BATCH_SIZE) % DATA_LAYER_MAX
        expected = [x % DATA_LAYER_MAX for x in range(start, start + DATA_LAYER_BATCH_SIZE)]
        assert np.all(net.blobs["pythondata"].data == expected)
        batches.append(net.blobs["pythondata"].data.copy())
    layer = net.layers[0]
    assert layer.type == "Python" and layer.current_index == 1500 % DATA_LAYER_MAX
    layer.reset()                                # methods of the user's layer are reachable
    net.forward()
    np.testing.assert_array_equal(net.blobs["pythondata"].data, batches[0])


# -- learnable blobs ------------------------------------------------------------------------------------------
SCALE_NET = (INPUT + _python_layer("scale", "ScaleParamLayer", "data", extra="param_str: '3'")
             + "layer { type: 'Reduction' name: 'sum' bottom: 'scale' top: 'sum' loss_weight: 1 }\n")


def test_learnable_blobs_are_net_params(tmp_path):
    net = _net(SCALE_NET)
    assert list(net.params) == ["scale"]
    assert net.params["scale"][0].data[0] == 3
    assert any(blob is net.params["scale"][0] for blob in net.learnable_params)
    net.blobs["data"].data[...] = np.arange(720, dtype=np.float32).reshape(10, 9, 8) / 720
    loss = net.forward()["sum"]
    np.testing.assert_allclose(loss, 3 * net.blobs["data"].data.sum(), rtol=1e-5)
    net.clear_param_diffs()
    net.backward()
    # d(sum(w x))/dw = sum(x); d/dx = w
    np.testing.assert_allclose(net.params["scale"][0].diff[0], net.blobs["data"].data.sum(), rtol=1e-5)
    np.testing.assert_allclose(net.blobs["data"].diff, 3.0)
    # binary and HDF5 round trips
    net.params["scale"][0].data[0] = 1.5
    net.save(str(tmp_path / "scale.caffemodel"))
    net.save_hdf5(str(tmp_path / "scale.h5"))
    fresh = _net(SCALE_NET)
    fresh.copy_from(str(tmp_path / "scale.caffemodel"))
    assert fresh.params["scale"][0].data[0] == 1.5
    fresh.params["scale"][0].data[0] = 0
    fresh.load_hdf5(str(tmp_path / "scale.h5"))
    assert fresh.params["scale"][0].data[0] == 1.5


def test_lr_mult_zero_freezes_python_layer_blob():
    text = SCALE_NET.replace("param_str: '3' }", "param_str: '3' } param { lr_mult: 0 }")
    text = text.replace("force_backward: true", "")
    net = _net(text)
    layer = net.layer_dict["scale"]
    assert layer.param_propagate_down == [False]
    assert net.params_lr == [0.0]


# -- Python loss layers ---------------------------------------------------------------------------------------
def _regression_net(loss_type, loss_weight, python_param=""):
    n = caffe.NetSpec()
    n.x = L.Input(shape={"dim": [4, 3, 2]})
    n.y = L.Input(shape={"dim": [4, 5]})
    n.ipx = L.InnerProduct(n.x, num_output=5, weight_filler={"type": "gaussian", "std": 0.5})
    if python_param:
        n.loss = L.Python(n.ipx, n.y, python_param=python_param, loss_weight=loss_weight)
    else:
        n.loss = getattr(L, loss_type)(n.ipx, n.y, loss_weight=loss_weight)
    return n.to_proto()


def _run(proto, weights, x, y):
    path = _net_file(str(proto))
    try:
        net = caffe.Net(path, caffe.TRAIN)
    finally:
        os.remove(path)
    for blob, value in zip(net.params["ipx"], weights):
        blob.data[...] = value
    out = net.forward(x=x, y=y)
    net.clear_param_diffs()
    net.backward()
    return net, out["loss"].item()


@pytest.mark.parametrize("loss_weight", [1.0, 2.5])
def test_python_loss_layer_matches_builtin(loss_weight):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 2)).astype(np.float32)
    y = rng.standard_normal((4, 5)).astype(np.float32)
    weights = [rng.standard_normal((5, 6)).astype(np.float32), rng.standard_normal(5).astype(np.float32)]
    py_proto = _regression_net("", loss_weight, {"module": MODULE, "layer": "EuclideanLossLayer"})
    py_net, py_loss = _run(py_proto, weights, x, y)
    ref_net, ref_loss = _run(_regression_net("EuclideanLoss", loss_weight), weights, x, y)
    assert py_net.blob_loss_weights["loss"] == loss_weight
    np.testing.assert_allclose(py_loss, ref_loss, rtol=1e-5)
    for py_blob, ref_blob in zip(py_net.params["ipx"], ref_net.params["ipx"]):
        np.testing.assert_allclose(py_blob.diff, ref_blob.diff, rtol=1e-4, atol=1e-6)


def test_python_layer_without_loss_weight_is_not_a_loss():
    proto = _regression_net("", 0.0, {"module": MODULE, "layer": "EuclideanLossLayer"})
    del proto.layer[-1].loss_weight[:]
    path = _net_file(str(proto))
    net = caffe.Net(path, caffe.TRAIN)
    os.remove(path)
    assert net.blob_loss_weights["loss"] == 0
    assert not any(net._layer_need_backward)


def test_bvlc_linreg_example(shared_dir, tmp_path, monkeypatch):
    """BVLC examples/pycaffe/linreg.prototxt: a Python loss (module 'pyloss') with loss_weight: 1."""
    (tmp_path / "pyloss.py").write_text(f"from {MODULE} import EuclideanLossLayer  # noqa: F401\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    net = caffe.Net(str(shared_dir / "models/bvlc/examples/pycaffe/linreg.prototxt"), caffe.TRAIN)
    assert net.layer_dict["loss"].type == "Python"
    assert net.blob_loss_weights["loss"] == 1
    loss = net.forward()["loss"].item()
    ipx, ipy = net.blobs["ipx"].data, net.blobs["ipy"].data
    np.testing.assert_allclose(loss, np.sum((ipx - ipy) ** 2) / ipx.shape[0] / 2, rtol=1e-5)
    net.clear_param_diffs()
    net.backward()
    assert np.abs(net.params["ipx"][0].diff).sum() > 0


# -- import errors --------------------------------------------------------------------------------------------
def _python_net(module, cls):
    return INPUT + ("layer { type: 'Python' name: 'pyl' bottom: 'data' top: 'out' "
                    f"python_param {{ module: '{module}' layer: '{cls}' }} }}\n")


def test_missing_module_names_layer_module_and_class():
    with pytest.raises(NetError, match=r"'pyl'.*no_such_module_xyz.*SimpleLayer.*sys\.path"):
        _net(_python_net("no_such_module_xyz", "SimpleLayer"))


def test_missing_class_names_layer_module_and_class():
    with pytest.raises(NetError, match=rf"'pyl'.*{MODULE}.*NoSuchLayer"):
        _net(_python_net(MODULE, "NoSuchLayer"))


def test_class_must_derive_from_caffe_layer():
    with pytest.raises(NetError, match="caffe.Layer"):
        _net(_python_net(MODULE, "NotALayer"))


@pytest.mark.parametrize("module,cls", [("", "SimpleLayer"), ("os; rm", "SimpleLayer"), ("../evil", "X"),
                                        (MODULE, "Simple.Layer")])
def test_module_and_class_must_be_python_names(module, cls):
    with pytest.raises(NetError, match="'pyl'"):
        _net(_python_net(module, cls))


def test_failing_import_inside_module_propagates(tmp_path, monkeypatch):
    (tmp_path / "broken_layer_mod.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_xyz"):
        _net(_python_net("broken_layer_mod", "Layer"))
    sys.modules.pop("broken_layer_mod", None)


def test_import_is_logged(caplog):
    with caplog.at_level(logging.INFO, logger="pyskim"):
        _net(PYTHON_NET)
    assert any(MODULE in r.getMessage() and "SimpleLayer" in r.getMessage() and r.levelno == logging.INFO
               for r in caplog.records)


def test_blobvec_add_blob_shapes():
    layer = caffe.Layer()
    layer.blobs.add_blob(2, 3)
    layer.blobs.add_blob((4,))
    assert [b.shape for b in layer.blobs] == [(2, 3), (4,)]
    assert not layer.blobs[0].data.any()
    assert layer.type == "Python"
