"""NetSpec, re-expressing BVLC ``python/caffe/test/test_net_spec.py`` against ``import pyskim as caffe``,
plus text output checked against a prototxt BVLC's net_spec generated
(``examples/hdf5_classification/nonlinear_auto_train.prototxt``, from the brewing-logreg notebook)."""
import re
import sys

import pytest
from google.protobuf import text_format

import pyskim as caffe
from pyskim import layers as L
from pyskim import params as P
from pyskim.proto import caffe_pb2


def lenet(batch_size):
    n = caffe.NetSpec()
    n.data, n.label = L.DummyData(shape=[{"dim": [batch_size, 1, 28, 28]}, {"dim": [batch_size, 1, 1, 1]}],
                                  transform_param={"scale": 1. / 255}, ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20, weight_filler={"type": "xavier"})
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.conv2 = L.Convolution(n.pool1, kernel_size=5, num_output=50, weight_filler={"type": "xavier"})
    n.pool2 = L.Pooling(n.conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.ip1 = L.InnerProduct(n.pool2, num_output=500, weight_filler={"type": "xavier"})
    n.relu1 = L.ReLU(n.ip1, in_place=True)
    n.ip2 = L.InnerProduct(n.relu1, num_output=10, weight_filler={"type": "xavier"})
    n.loss = L.SoftmaxWithLoss(n.ip2, n.label)
    return n.to_proto()


def anon_lenet(batch_size):
    data, label = L.DummyData(shape=[{"dim": [batch_size, 1, 28, 28]}, {"dim": [batch_size, 1, 1, 1]}],
                              transform_param={"scale": 1. / 255}, ntop=2)
    conv1 = L.Convolution(data, kernel_size=5, num_output=20, weight_filler={"type": "xavier"})
    pool1 = L.Pooling(conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    conv2 = L.Convolution(pool1, kernel_size=5, num_output=50, weight_filler={"type": "xavier"})
    pool2 = L.Pooling(conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    ip1 = L.InnerProduct(pool2, num_output=500, weight_filler={"type": "xavier"})
    relu1 = L.ReLU(ip1, in_place=True)
    ip2 = L.InnerProduct(relu1, num_output=10, weight_filler={"type": "xavier"})
    loss = L.SoftmaxWithLoss(ip2, label)
    return loss.to_proto()


def silent_net():
    n = caffe.NetSpec()
    n.data, n.data2 = L.DummyData(shape={"dim": 3}, ntop=2)
    n.silence_data = L.Silence(n.data, ntop=0)
    n.silence_data2 = L.Silence(n.data2, ntop=0)
    return n.to_proto()


def load_net(net_proto, tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(str(net_proto))
    return caffe.Net(str(path), caffe.TEST)


# -- BVLC test_net_spec.py ---------------------------------------------------------------------------------
def test_lenet(tmp_path):
    """Construct and build the Caffe version of LeNet."""
    net_proto = lenet(50)
    # check that relu is in-place
    assert net_proto.layer[6].bottom == net_proto.layer[6].top
    net = load_net(net_proto, tmp_path)
    # check that all layers are present
    assert len(net.layers) == 9
    # now the version with automatically-generated layer names
    net_proto = anon_lenet(50)
    assert net_proto.layer[6].bottom == net_proto.layer[6].top
    net = load_net(net_proto, tmp_path)
    assert len(net.layers) == 9


def test_zero_tops(tmp_path):
    """Net construction for top-less layers."""
    net = load_net(silent_net(), tmp_path)
    assert len(net.forward()) == 0


def test_type_error():
    """A TypeError is raised when a Function input isn't a Top."""
    data = L.DummyData(ntop=2)  # a 2-tuple of Tops
    r = r"^Silence input 0 is not a Top \(type is <(type|class) 'tuple'>\)$"
    with pytest.raises(TypeError, match=r):
        L.Silence(data, ntop=0)
    L.Silence(*data, ntop=0)  # each element of data is a Top


# -- text output as BVLC's net_spec writes it ------------------------------------------------------------------
def nonlinear_net(hdf5, batch_size):
    """The brewing-logreg notebook's net, which wrote nonlinear_auto_train.prototxt."""
    n = caffe.NetSpec()
    n.data, n.label = L.HDF5Data(batch_size=batch_size, source=hdf5, ntop=2)
    n.ip1 = L.InnerProduct(n.data, num_output=40, weight_filler={"type": "xavier"})
    n.relu1 = L.ReLU(n.ip1, in_place=True)
    n.ip2 = L.InnerProduct(n.ip1, num_output=2, weight_filler={"type": "xavier"})
    n.accuracy = L.Accuracy(n.ip2, n.label)
    n.loss = L.SoftmaxWithLoss(n.ip2, n.label)
    return n.to_proto()


@pytest.mark.parametrize("split", ["train", "test"])
def test_text_equals_bvlc_generated_prototxt(shared_dir, split):
    expected = (shared_dir / f"models/bvlc/examples/hdf5_classification/nonlinear_auto_{split}.prototxt")
    proto = nonlinear_net(f"examples/hdf5_classification/data/{split}.txt", 10)
    assert str(proto) == expected.read_text()


def test_anonymous_names_use_one_counter_per_type():
    proto = anon_lenet(5)
    assert [layer.name for layer in proto.layer] == [
        "DummyData1", "Convolution1", "Pooling1", "Convolution2", "Pooling2", "InnerProduct1", "ReLU1",
        "InnerProduct2", "SoftmaxWithLoss1"]
    assert list(proto.layer[0].top) == ["DummyData1", "DummyData2"]
    relu, ip2, loss = proto.layer[6], proto.layer[7], proto.layer[8]
    assert list(relu.bottom) == list(relu.top) == ["InnerProduct1"]
    assert list(ip2.bottom) == ["InnerProduct1"]
    assert list(loss.bottom) == ["InnerProduct2", "DummyData2"]
    assert list(loss.top) == ["SoftmaxWithLoss1"]


def test_anonymous_text():
    top = L.InnerProduct(L.Input(shape={"dim": [2, 3]}), num_output=4, bias_term=False)
    assert str(top.to_proto()) == (
        'layer {\n  name: "Input1"\n  type: "Input"\n  top: "Input1"\n  input_param {\n    shape {\n'
        '      dim: 2\n      dim: 3\n    }\n  }\n}\n'
        'layer {\n  name: "InnerProduct1"\n  type: "InnerProduct"\n  bottom: "Input1"\n'
        '  top: "InnerProduct1"\n  inner_product_param {\n    num_output: 4\n    bias_term: false\n  }\n}\n')


def test_to_proto_of_several_tops_shares_layers():
    data = L.Input(shape={"dim": [1, 2]})
    a = L.ReLU(data)
    b = L.Sigmoid(data)
    proto = caffe.to_proto(a, b)
    assert [layer.name for layer in proto.layer] == ["Input1", "ReLU1", "Sigmoid1"]
    assert list(proto.layer[2].bottom) == ["Input1"]


def test_named_in_place_layer_keeps_blob_name():
    n = caffe.NetSpec()
    n.data = L.Input(shape={"dim": [1, 3]})
    n.act = L.ReLU(n.data, in_place=True)
    n.out = L.InnerProduct(n.act, num_output=2)
    proto = n.to_proto()
    assert proto.layer[1].name == "act"
    assert list(proto.layer[1].top) == ["data"]
    assert list(proto.layer[2].bottom) == ["data"]


# -- keyword placement --------------------------------------------------------------------------------------------
def test_params_fall_back_to_layer_parameter():
    n = caffe.NetSpec()
    n.data = L.Input(shape={"dim": [2, 3, 8, 8]})
    n.conv = L.Convolution(n.data, num_output=4, kernel_size=3, pad=1,
                           param=[{"lr_mult": 1, "decay_mult": 1}, {"lr_mult": 2, "decay_mult": 0}],
                           include={"phase": caffe.TRAIN}, propagate_down=[True], loss_weight=0)
    layer = n.to_proto().layer[1]
    assert layer.convolution_param.num_output == 4
    assert list(layer.convolution_param.kernel_size) == [3]     # scalar -> repeated
    assert list(layer.convolution_param.pad) == [1]
    assert [(p.lr_mult, p.decay_mult) for p in layer.param] == [(1, 1), (2, 0)]
    assert layer.include[0].phase == caffe.TRAIN
    assert list(layer.propagate_down) == [True]
    assert list(layer.loss_weight) == [0]


def test_param_field_names_derived_from_descriptor():
    proto = L.Python(L.Input(shape={"dim": [1]}), module="mymod", layer="MyLayer", param_str="x=1",
                     ntop=2)[0].to_proto()
    pp = proto.layer[1].python_param
    assert (pp.module, pp.layer, pp.param_str) == ("mymod", "MyLayer", "x=1")
    assert list(proto.layer[1].top) == ["Python1", "Python2"]
    lrn = L.LRN(L.Input(shape={"dim": [1]}), local_size=3).to_proto().layer[1]
    assert lrn.lrn_param.local_size == 3
    data = L.ImageData(source="list.txt", batch_size=2, ntop=2)[0].to_proto().layer[0]
    assert data.image_data_param.source == "list.txt"
    explicit = L.Deconvolution(L.Input(shape={"dim": [1]}), convolution_param={"num_output": 3})
    assert explicit.to_proto().layer[1].convolution_param.num_output == 3


def test_enum_values_and_messages():
    assert P.Pooling.MAX == caffe_pb2.PoolingParameter.MAX
    assert P.Pooling.AVE == caffe_pb2.PoolingParameter.AVE
    assert P.Eltwise.SUM == caffe_pb2.EltwiseParameter.SUM
    filler = caffe_pb2.FillerParameter(type="constant", value=0.5)
    layer = L.InnerProduct(L.Input(shape={"dim": [1]}), num_output=1, weight_filler=filler).to_proto().layer[1]
    assert layer.inner_product_param.weight_filler.value == 0.5
    with pytest.raises(AttributeError):
        _ = P.NoSuchLayerType.X


def test_unknown_keyword_raises():
    with pytest.raises(AttributeError, match="no_such_field"):
        L.ReLU(L.Input(shape={"dim": [1]}), no_such_field=3).to_proto()


def test_netspec_item_access_and_round_trip(tmp_path):
    n = caffe.NetSpec()
    n["data"] = L.Input(shape={"dim": [2, 3]})
    n.ip = L.InnerProduct(n["data"], num_output=5)
    assert n.keys() == ["data", "ip"] and n.vals()[1] is n.ip
    n.update("ip", {"bias_term": False})
    text = str(n.to_proto())
    parsed = text_format.Parse(text, caffe_pb2.NetParameter())
    assert parsed == n.to_proto()
    net = load_net(n.to_proto(), tmp_path)
    assert net.params["ip"][0].data.shape == (5, 3) and len(net.params["ip"]) == 1
    del n["ip"]
    assert n.keys() == ["data"]


def test_layers_package_still_importable():
    """``pyskim.layers`` is L, as pycaffe's ``caffe.layers``; the layer package stays reachable."""
    import pyskim.layers.convolution
    from pyskim.core import layer as base

    convolution = sys.modules["pyskim.layers.convolution"]
    assert pyskim.layers.convolution is convolution       # attribute chain through L
    assert caffe.layers is L and callable(L.Convolution)
    assert caffe.layers.create_layer is base.create_layer
    assert "Convolution" in caffe.layers.LAYER_REGISTRY
    assert re.match(r"<Top 0 of ReLU>", repr(L.ReLU(L.Input())))
