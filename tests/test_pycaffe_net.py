"""BVLC's python/caffe/test/test_net.py (TestNet, TestLevels, TestStages, TestAllInOne), re-expressed
against ``import pyskim as caffe``, plus the pycaffe Net surface the notebooks use."""
import numpy as np
import pytest

import pyskim as caffe

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
    param { decay_mult: 1 } param { decay_mult: 0 } }
layer { type: 'InnerProduct' name: 'ip' bottom: 'conv' top: 'ip_blob'
  inner_product_param { num_output: %d
    weight_filler { type: 'gaussian' std: 2.5 }
    bias_filler { type: 'constant' value: -3 } } }
layer { type: 'SoftmaxWithLoss' name: 'loss' bottom: 'ip_blob' bottom: 'label' top: 'loss' }
"""
NUM_OUTPUT = 13


@pytest.fixture
def net_file(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(SIMPLE_NET % NUM_OUTPUT)
    return str(path)


@pytest.fixture
def net(net_file):
    net = caffe.Net(net_file, caffe.TRAIN)
    net.blobs["label"].data[...] = np.random.default_rng(0).integers(NUM_OUTPUT, size=(5, 1, 1, 1))
    return net


def test_memory_outlives_net(net):
    params = [blob for blobs in net.params.values() for blob in blobs]
    blobs = list(net.blobs.values())
    del net
    total = sum(float(p.data.sum() + p.diff.sum()) for p in params)
    total += sum(float(b.data.sum() + b.diff.sum()) for b in blobs)
    assert np.isfinite(total)


def test_layer_dict(net):
    layer_dict = net.layer_dict
    assert list(layer_dict) == list(net._layer_names)
    for i, name in enumerate(net._layer_names):
        assert layer_dict[name].type == net.layers[i].type


def test_forward_backward(net):
    out = net.forward()
    assert set(out) == {"loss"} and out["loss"].shape == ()
    assert np.isfinite(out["loss"])
    diffs = net.backward()
    assert diffs == {}
    assert np.abs(net.params["conv"][0].diff).sum() > 0


def test_forward_start_end(net):
    conv_blob = net.blobs["conv"]
    ip_blob = net.blobs["ip_blob"]
    sample = net.forward(start="conv", end="conv")["conv"]
    reference = sample.copy()
    net.forward(start="ip", end="ip")
    expected = (net.params["ip"][0].data @ reference.reshape(5, -1).T).T + net.params["ip"][1].data
    np.testing.assert_allclose(ip_blob.data, expected, rtol=1e-4, atol=1e-3)
    assert np.shares_memory(sample, conv_blob.data)


def test_backward_start_end(net):
    conv_blob = net.blobs["conv"]
    ip_blob = net.blobs["ip_blob"]
    net.forward()
    ip_blob.diff[...] = 1.0
    sample = net.backward(start="ip", end="ip")["conv"]
    expected = np.ones((5, NUM_OUTPUT), np.float32) @ net.params["ip"][0].data
    np.testing.assert_allclose(sample.reshape(5, -1), expected, rtol=1e-5, atol=1e-4)
    assert np.shares_memory(sample, conv_blob.diff)


def test_clear_param_diffs(net):
    net.forward()
    net.backward()
    assert np.abs(net.params["conv"][0].diff).sum() > 0
    net.clear_param_diffs()
    assert all((blob.diff == 0).all() for blobs in net.params.values() for blob in blobs)


def test_param_diffs_accumulate(net):
    net.forward()
    net.clear_param_diffs()
    net.backward()
    once = net.params["ip"][0].diff.copy()
    net.backward()
    np.testing.assert_allclose(net.params["ip"][0].diff, 2 * once, rtol=1e-5, atol=1e-6)


def test_inputs_outputs(net):
    assert net.inputs == []
    assert net.outputs == ["loss"]


def test_top_bottom_names(net):
    assert net.top_names == {"data": ["data", "label"], "conv": ["conv"], "ip": ["ip_blob"],
                             "loss": ["loss"]}
    assert net.bottom_names == {"data": [], "conv": ["data"], "ip": ["conv"],
                                "loss": ["ip_blob", "label"]}


def test_blob_loss_weights(net):
    weights = net.blob_loss_weights
    assert weights["loss"] == 1.0
    assert all(weights[name] == 0.0 for name in ("data", "label", "conv", "ip_blob"))


def test_save_and_read(net, net_file, tmp_path):
    path = str(tmp_path / "w.caffemodel")
    net.save(path)
    net2 = caffe.Net(net_file, path, caffe.TRAIN)   # legacy 3-argument form
    net3 = caffe.Net(net_file, caffe.TRAIN, weights=path)
    for name in net.params:
        for i in range(len(net.params[name])):
            assert np.array_equal(net.params[name][i].data, net2.params[name][i].data)
            assert np.array_equal(net.params[name][i].data, net3.params[name][i].data)


def test_save_hdf5(net, net_file, tmp_path):
    path = str(tmp_path / "w.caffemodel.h5")
    net.save_hdf5(path)
    net2 = caffe.Net(net_file, caffe.TRAIN)
    net2.load_hdf5(path)
    for name in net.params:
        for i in range(len(net.params[name])):
            assert np.array_equal(net.params[name][i].data, net2.params[name][i].data)
    net3 = caffe.Net(net_file, caffe.TRAIN)
    net3.copy_from(path)   # copy_from detects HDF5 by signature
    assert np.array_equal(net3.params["conv"][0].data, net.params["conv"][0].data)


def test_share_with(net, net_file):
    net2 = caffe.Net(net_file, caffe.TEST)
    net2.share_with(net)
    net.params["ip"][0].data[...] = 7.0
    assert (net2.params["ip"][0].data == 7.0).all()


def test_blob_views_are_live(net):
    blob = net.blobs["data"]
    blob.data[...] = 3.0
    assert (net.blobs["data"].data == 3.0).all()
    assert blob.data.dtype == np.float32
    assert (blob.num, blob.channels, blob.height, blob.width) == (5, 2, 3, 4)
    assert blob.count == 120 and blob.shape == (5, 2, 3, 4)


def test_forward_all_pads_and_strips(tmp_path):
    path = tmp_path / "deploy.prototxt"
    path.write_text("""input: 'x' input_shape { dim: 4 dim: 3 }
      layer { name: 'ip' type: 'InnerProduct' bottom: 'x' top: 'y'
        inner_product_param { num_output: 2 weight_filler { type: 'gaussian' std: 1 } } }""")
    net = caffe.Net(str(path), caffe.TEST)
    x = np.random.default_rng(1).normal(size=(10, 3)).astype(np.float32)
    out = net.forward_all(x=x)["y"]
    assert out.shape == (10, 2)
    np.testing.assert_allclose(out, x @ net.params["ip"][0].data.T, rtol=1e-5, atol=1e-5)
    with pytest.raises(caffe.PyskimError):
        net.forward(wrong=x[:4])


def test_reshape_then_forward(tmp_path):
    path = tmp_path / "deploy.prototxt"
    path.write_text("""layer { name: 'x' type: 'Input' top: 'x' input_param { shape { dim: 2 dim: 1 dim: 5 dim: 5 } } }
      layer { name: 'conv' type: 'Convolution' bottom: 'x' top: 'y'
        convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: 'gaussian' std: 1 } } }""")
    net = caffe.Net(str(path), caffe.TEST)
    net.blobs["x"].reshape(4, 1, 7, 7)
    net.blobs["x"].data[...] = 1.0
    out = net.forward()["y"]
    assert out.shape == (4, 3, 5, 5)


# -- NetState rules: levels and stages (TestLevels, TestStages, TestAllInOne) ---------------------
LEVELS_NET = """layer { name: 'data' type: 'DummyData' top: 'data'
  dummy_data_param { shape { dim: 1 dim: 1 dim: 10 dim: 10 } } }
layer { name: 'NoLevel' type: 'InnerProduct' bottom: 'data' top: 'NoLevel'
  inner_product_param { num_output: 1 } }
layer { name: 'Level0Only' type: 'InnerProduct' bottom: 'data' top: 'Level0Only'
  include { min_level: 0 max_level: 0 } inner_product_param { num_output: 1 } }
layer { name: 'Level1Only' type: 'InnerProduct' bottom: 'data' top: 'Level1Only'
  include { min_level: 1 max_level: 1 } inner_product_param { num_output: 1 } }
layer { name: 'Level>=0' type: 'InnerProduct' bottom: 'data' top: 'Level>=0'
  include { min_level: 0 } inner_product_param { num_output: 1 } }
layer { name: 'Level>=1' type: 'InnerProduct' bottom: 'data' top: 'Level>=1'
  include { min_level: 1 } inner_product_param { num_output: 1 } }
"""

STAGES_NET = """layer { name: 'data' type: 'DummyData' top: 'data'
  dummy_data_param { shape { dim: 1 dim: 1 dim: 10 dim: 10 } } }
layer { name: 'A' type: 'InnerProduct' bottom: 'data' top: 'A'
  include { stage: 'A' } inner_product_param { num_output: 1 } }
layer { name: 'B' type: 'InnerProduct' bottom: 'data' top: 'B'
  include { stage: 'B' } inner_product_param { num_output: 1 } }
layer { name: 'AorB' type: 'InnerProduct' bottom: 'data' top: 'AorB'
  include { stage: 'A' } include { stage: 'B' } inner_product_param { num_output: 1 } }
layer { name: 'AandB' type: 'InnerProduct' bottom: 'data' top: 'AandB'
  include { stage: 'A' stage: 'B' } inner_product_param { num_output: 1 } }
"""

ALL_IN_ONE_NET = """layer { name: 'train_data' type: 'DummyData' top: 'data' top: 'label'
  dummy_data_param { shape { dim: 1 dim: 1 dim: 10 dim: 10 } shape { dim: 1 dim: 1 dim: 1 dim: 1 } }
  include { phase: TRAIN stage: 'train' } }
layer { name: 'val_data' type: 'DummyData' top: 'data' top: 'label'
  dummy_data_param { shape { dim: 1 dim: 1 dim: 10 dim: 10 } shape { dim: 1 dim: 1 dim: 1 dim: 1 } }
  include { phase: TEST stage: 'val' } }
layer { name: 'deploy_data' type: 'Input' top: 'data'
  input_param { shape { dim: 1 dim: 1 dim: 10 dim: 10 } } include { phase: TEST stage: 'deploy' } }
layer { name: 'ip' type: 'InnerProduct' bottom: 'data' top: 'pred' inner_product_param { num_output: 2 } }
layer { name: 'loss' type: 'SoftmaxWithLoss' bottom: 'pred' bottom: 'label' top: 'loss'
  include { phase: TRAIN stage: 'train' } include { phase: TEST stage: 'val' } }
layer { name: 'pred' type: 'Softmax' bottom: 'pred' top: 'prob' include { phase: TEST stage: 'deploy' } }
"""


def _layers_of(tmp_path, text, phase, **kwargs):
    path = tmp_path / "n.prototxt"
    path.write_text(text)
    net = caffe.Net(str(path), phase, **kwargs)
    return [n for n in net._layer_names if n != "data" and not n.endswith("_split")], net


@pytest.mark.parametrize("level, expected", [
    (0, ["NoLevel", "Level0Only", "Level>=0"]),
    (1, ["NoLevel", "Level1Only", "Level>=0", "Level>=1"]),
])
def test_levels(tmp_path, level, expected):
    names, _ = _layers_of(tmp_path, LEVELS_NET, caffe.TEST, level=level)
    assert names == expected


@pytest.mark.parametrize("stages, expected", [
    (["A"], ["A", "AorB"]),
    (["B"], ["B", "AorB"]),
    (["A", "B"], ["A", "B", "AorB", "AandB"]),
])
def test_stages(tmp_path, stages, expected):
    names, _ = _layers_of(tmp_path, STAGES_NET, caffe.TEST, stages=stages)
    assert names == expected


@pytest.mark.parametrize("phase, stages, inputs, outputs", [
    (caffe.TRAIN, ["train"], [], ["loss"]),
    (caffe.TEST, ["val"], [], ["loss"]),
    (caffe.TEST, ["deploy"], ["data"], ["prob"]),
])
def test_all_in_one(tmp_path, phase, stages, inputs, outputs):
    _, net = _layers_of(tmp_path, ALL_IN_ONE_NET, phase, stages=stages)
    assert net.inputs == inputs
    assert net.outputs == outputs
