"""Bad input gives a PyskimError naming the file, line, layer, blob or field; never a raw traceback
from protobuf or numpy."""
import shutil
from pathlib import Path

import numpy as np
import pytest

import pyskim as caffe
from pyskim.errors import (
    ModelFileError,
    NetError,
    ParseError,
    PyskimError,
    UnknownLayerTypeError,
    WeightsMismatchError,
)

GOOD_NET = """name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "ip1" type: "InnerProduct" bottom: "conv1" top: "ip1"
  inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
"""


def _write(tmp_path, text, name="net.prototxt"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_malformed_prototxt_names_file_line_and_column(tmp_path):
    path = _write(tmp_path, GOOD_NET.replace('type: "ReLU"', 'type: "ReLU" bogus_field: 3'))
    with pytest.raises(ParseError) as info:
        caffe.Net(path, caffe.TEST)
    message = str(info.value)
    assert message.startswith(f"{path}:5:")
    assert "bogus_field" in message


def test_unclosed_brace(tmp_path):
    path = _write(tmp_path, GOOD_NET + "layer { name: 'x' ")
    with pytest.raises(ParseError, match=r"net\.prototxt:\d+:\d+"):
        caffe.Net(path, caffe.TEST)


def test_unknown_layer_type_lists_closest(tmp_path):
    path = _write(tmp_path, GOOD_NET.replace('type: "Convolution"', 'type: "Convolutoin"'))
    with pytest.raises(UnknownLayerTypeError) as info:
        caffe.Net(path, caffe.TEST)
    message = str(info.value)
    assert "'conv1'" in message and "'Convolutoin'" in message and "Convolution" in message.split(":")[-1]


def test_missing_bottom_names_layer_and_blob(tmp_path):
    path = _write(tmp_path, GOOD_NET.replace('bottom: "conv1" top: "ip1"', 'bottom: "conv9" top: "ip1"'))
    with pytest.raises(NetError, match=r"Unknown bottom blob 'conv9' \(layer 'ip1', bottom index 0\)"):
        caffe.Net(path, caffe.TEST)


def test_missing_prototxt_file(tmp_path):
    with pytest.raises(ModelFileError, match="Could not open file"):
        caffe.Net(str(tmp_path / "nope.prototxt"), caffe.TEST)


def test_bad_layer_param_names_layer(tmp_path):
    path = _write(tmp_path, GOOD_NET.replace("kernel_size: 3", "kernel_size: 30"))
    with pytest.raises(PyskimError, match="conv1"):
        caffe.Net(path, caffe.TEST)


@pytest.fixture
def saved_weights(tmp_path):
    net = caffe.Net(_write(tmp_path, GOOD_NET), caffe.TEST)
    path = str(tmp_path / "tiny.caffemodel")
    net.save(path)
    return path


def test_truncated_caffemodel(tmp_path, saved_weights):
    data = Path(saved_weights).read_bytes()
    truncated = tmp_path / "truncated.caffemodel"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated.caffemodel"):
        caffe.Net(_write(tmp_path, GOOD_NET), caffe.TEST, weights=str(truncated))


def test_text_file_as_caffemodel(tmp_path):
    not_a_model = tmp_path / "notes.caffemodel"
    not_a_model.write_text("this is not a caffemodel, just some text\n" * 20)
    with pytest.raises(ModelFileError, match="notes.caffemodel"):
        caffe.Net(_write(tmp_path, GOOD_NET), caffe.TEST, weights=str(not_a_model))


def test_caffemodel_as_prototxt(tmp_path, saved_weights):
    with pytest.raises(ParseError, match="tiny.caffemodel"):
        caffe.Net(saved_weights, caffe.TEST)


def test_weight_shape_mismatch_names_layer_blob_and_shapes(tmp_path, saved_weights):
    path = _write(tmp_path, GOOD_NET.replace("num_output: 5", "num_output: 6"), "other.prototxt")
    with pytest.raises(WeightsMismatchError) as info:
        caffe.Net(path, caffe.TEST, weights=saved_weights)
    message = str(info.value)
    assert "layer 'ip1'" in message and "param 0" in message
    assert "[5, 144]" in message and "[6, 144]" in message


def test_weight_blob_count_mismatch(tmp_path, saved_weights):
    path = _write(tmp_path, GOOD_NET.replace("num_output: 5", "num_output: 5 bias_term: false"), "nb.prototxt")
    with pytest.raises(WeightsMismatchError, match="number of blobs for layer 'ip1'"):
        caffe.Net(path, caffe.TEST, weights=saved_weights)


def test_unknown_source_layers_are_ignored(tmp_path, saved_weights, caplog):
    path = _write(tmp_path, GOOD_NET.replace('name: "ip1"', 'name: "ip_renamed"'), "renamed.prototxt")
    with caplog.at_level("INFO", logger="pyskim"):
        net = caffe.Net(path, caffe.TEST, weights=saved_weights)
    assert "Ignoring source layer ip1" in caplog.text
    source = caffe.Net(_write(tmp_path, GOOD_NET), caffe.TEST, weights=saved_weights)
    assert np.array_equal(net.params["conv1"][0].data, source.params["conv1"][0].data)


def test_legacy_4d_weight_shapes_compare_right_aligned(tmp_path, saved_weights):
    """A V1 caffemodel stores an InnerProduct weight as 1 x 1 x M x N; it loads into an M x N blob."""
    model = caffe.caffe_pb2.NetParameter.FromString(Path(saved_weights).read_bytes())
    ip = next(layer for layer in model.layer if layer.name == "ip1")
    rows, cols = ip.blobs[0].shape.dim
    ip.blobs[0].ClearField("shape")
    ip.blobs[0].num, ip.blobs[0].channels, ip.blobs[0].height, ip.blobs[0].width = 1, 1, rows, cols
    legacy = tmp_path / "legacy.caffemodel"
    legacy.write_bytes(model.SerializeToString())
    net = caffe.Net(_write(tmp_path, GOOD_NET), caffe.TEST, weights=str(legacy))
    assert net.params["ip1"][0].shape == (rows, cols)
    assert np.array_equal(net.params["ip1"][0].data.ravel(), np.asarray(ip.blobs[0].data, np.float32))


def test_huge_blob_is_refused_before_allocation(tmp_path):
    path = _write(tmp_path, GOOD_NET.replace("dim: 2 dim: 3 dim: 8 dim: 8", "dim: 100000 dim: 3 dim: 800 dim: 800"))
    with pytest.raises(NetError, match="GiB"):
        caffe.Net(path, caffe.TEST)


def test_input_array_of_wrong_shape(tmp_path):
    net = caffe.Net(_write(tmp_path, GOOD_NET), caffe.TEST)
    with pytest.raises(NetError, match="blob 'data'"):
        net.forward(data=np.zeros((2, 3, 9, 9), np.float32))


def test_share_mode_strict_shape_mismatch(tmp_path):
    text = """layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 6 } } }
    layer { name: "a" type: "InnerProduct" bottom: "data" top: "a" param { name: "w" }
            inner_product_param { num_output: 4 bias_term: false } }
    layer { name: "b" type: "InnerProduct" bottom: "a" top: "b" param { name: "w" }
            inner_product_param { num_output: 6 bias_term: false } }"""
    with pytest.raises(NetError, match=r"Cannot share param 'w' owned by layer 'a' with layer 'b'"):
        caffe.Net(_write(tmp_path, text), caffe.TEST)


def test_shared_readonly_files_are_not_modified(shared_dir, tmp_path):
    """Loading from ../shared never writes there: copy a case, load it, compare bytes."""
    case = shared_dir / "conformance" / "layers" / "conv_basic"
    before = (case / "weights.caffemodel").read_bytes()
    shutil.copy(case / "net.prototxt", tmp_path / "net.prototxt")
    caffe.Net(str(tmp_path / "net.prototxt"), caffe.TRAIN, weights=str(case / "weights.caffemodel"))
    assert (case / "weights.caffemodel").read_bytes() == before
