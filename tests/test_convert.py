"""Tests for pyskim.convert: the sparse file (bit-exact round trip, size bound), the ONNX export
(onnxruntime against pyskim's forward) and the caffemodel upgrade, plus tools/convert.py."""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import pyskim as caffe
from pyskim.convert import sparse
from pyskim.convert.upgrade import upgrade_caffemodel
from pyskim.errors import ConversionError
from pyskim.io.protofiles import parse_text, read_binary
from pyskim.io.upgrade import read_net_text
from pyskim.proto import caffe_pb2

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
TOOL = REPO_ROOT / "tools" / "convert.py"


@pytest.fixture(scope="module")
def lenet(shared_dir):
    folder = shared_dir / "models" / "trained" / "lenet_ethereon"
    return folder / "lenet.prototxt", folder / "lenet_iter_10000.caffemodel"


def _read(path):
    return read_binary(path, caffe_pb2.NetParameter())


def _run_tool(*args, cwd):
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=300, check=False)


def _round_trip(net, tmp_path):
    path = tmp_path / "model.npz"
    stats = sparse.save_sparse(net, path)
    back = sparse.load_sparse(path)
    assert back == net
    assert back.SerializeToString() == net.SerializeToString()
    for (_, _, a), (_, _, b) in zip(sparse.walk_blobs(net), sparse.walk_blobs(back)):
        for field in ("data", "diff", "double_data", "double_diff"):
            dtype = np.float64 if field.startswith("double") else np.float32
            assert np.asarray(getattr(a, field), dtype).tobytes() == np.asarray(getattr(b, field), dtype).tobytes()
    return stats, path


def _prune(net, density, rng=None):
    """Copy of ``net`` with every weight blob (blobs[0]) pruned by magnitude to ``density``."""
    pruned = caffe_pb2.NetParameter()
    pruned.CopyFrom(net)
    for layer in list(pruned.layer) + list(pruned.layers):
        if len(layer.blobs):
            w = np.asarray(layer.blobs[0].data, np.float32).copy()
            keep = max(1, round(density * w.size))
            w[np.argsort(np.abs(w))[:-keep]] = 0
            del layer.blobs[0].data[:]
            layer.blobs[0].data.extend(w.tolist())
    return pruned


# --- sparse file ----------------------------------------------------------------------------------

def test_sparse_round_trip_trained_lenet_is_bit_exact(lenet, tmp_path):
    model = lenet[1]
    net = _read(model)
    _, path = _round_trip(net, tmp_path)
    out = tmp_path / "back.caffemodel"
    sparse.sparse_to_caffemodel(path, out)
    assert out.read_bytes() == model.read_bytes() == net.SerializeToString()


@pytest.mark.parametrize("density", [0.1, 0.02, 0.3, 0.6])
def test_sparse_size_bound_on_pruned_lenet(lenet, tmp_path, density):
    pruned = _prune(_read(lenet[1]), density)
    model = tmp_path / "pruned.caffemodel"
    model.write_bytes(pruned.SerializeToString())
    stats = sparse.caffemodel_to_sparse(model, tmp_path / "pruned.npz")
    real_density = stats["density"]
    assert abs(real_density - density) < 0.01
    size = (tmp_path / "pruned.npz").stat().st_size
    assert size == stats["bytes"]
    assert size <= 2.2 * real_density * model.stat().st_size, (size, real_density)
    if density == 0.1:  # measured: ~1.06 x density x dense
        assert size <= 1.2 * real_density * model.stat().st_size
    _round_trip(pruned, tmp_path)


def test_sparse_picks_small_index_dtypes_and_no_pickle(lenet, tmp_path):
    pruned = _prune(_read(lenet[1]), 0.1)
    path = tmp_path / "p.npz"
    sparse.save_sparse(pruned, path)
    with np.load(path, allow_pickle=False) as members:
        header = json.loads(bytes(members["header"]).decode())
        assert header["format"] == "pyskim-sparse" and header["version"] == 1
        entries = {(e["layer"], e["param"]): e for e in header["blobs"]}
        ip1 = entries[("ip1", 0)]
        assert ip1["encoding"] == "csr" and ip1["shape"] == [500, 800] and ip1["count"] == 400000
        assert members["b4.data.indices"].dtype in (np.uint8, np.uint16)
        assert members["b4.data.indptr"].dtype == np.uint16
        assert members["b4.data.values"].dtype == np.float32
        assert entries[("ip1", 1)]["encoding"] == "dense"  # the bias is dense
        for name in members.files:
            assert members[name].dtype.kind in "uif"
    with zipfile.ZipFile(path) as archive:
        assert all(info.compress_type == zipfile.ZIP_DEFLATED for info in archive.infolist())


def test_sparse_round_trip_legacy_fields_double_data_and_special_values(tmp_path):
    net = caffe_pb2.NetParameter(name="odd")
    layer = net.layer.add(name="a", type="InnerProduct")
    legacy = layer.blobs.add(num=1, channels=1, height=3, width=70)
    values = np.zeros(210, np.float32)
    values[[0, 5, 69, 70, 139, 209]] = [1.5, -0.0, np.nan, np.inf, -3e-38, 7]
    legacy.data.extend(values.tolist())
    legacy.diff.extend(np.arange(210, dtype=np.float32).tolist())
    double = layer.blobs.add()
    double.shape.dim.extend([4, 300])
    d = np.zeros(1200)
    d[::97] = np.pi
    double.double_data.extend(d.tolist())
    double.double_diff.extend([1e-300, -2.0])
    layer.blobs.add().shape.dim.extend([0])  # an empty blob
    both = net.layer.add(name="b", type="Scale").blobs.add(num=2, channels=3)
    both.shape.dim.extend([6])
    both.data.extend([0, 0, 0, 0, 0, 1])
    stats, path = _round_trip(net, tmp_path)
    assert stats["csr_fields"] >= 2
    back = sparse.load_sparse(path)
    assert back.layer[0].blobs[0].HasField("num") and back.layer[0].blobs[0].width == 70
    assert np.signbit(back.layer[0].blobs[0].data[5])


def test_sparse_round_trip_v1_and_v0_models(shared_dir, tmp_path):
    v1 = _read(shared_dir / "models" / "trained" / "everpeace_caffe" / "mnist" / "lenet_iter_10000.caffemodel")
    assert len(v1.layers) and not len(v1.layer)
    _round_trip(_prune(v1, 0.1), tmp_path)
    v0 = parse_text('layers { layer { name: "conv" type: "conv" num_output: 2 } }', caffe_pb2.NetParameter())
    blob = v0.layers[0].layer.blobs.add(num=2, channels=1, height=2, width=2)
    blob.data.extend([0, 1, 0, 0, 0, 0, 2, 0])
    stats, _ = _round_trip(v0, tmp_path)
    assert stats["values"] == 8 and stats["nonzero"] == 2


def test_sparse_errors_name_the_file_and_blob(lenet, tmp_path):
    path = tmp_path / "p.npz"
    sparse.save_sparse(_prune(_read(lenet[1]), 0.1), path)
    with np.load(path) as f:
        members = dict(f.items())
    broken = dict(members)
    del broken["b4.data.values"]
    with pytest.raises(ConversionError, match=r"layer 'ip1' blob 0 data.*b4\.data\.values.*missing"):
        sparse.decode_net(broken, source="x.npz")
    broken = dict(members, **{"b4.data.indices": members["b4.data.indices"][:-1]})
    with pytest.raises(ConversionError, match="layer 'ip1' blob 0 data: inconsistent CSR"):
        sparse.decode_net(broken)
    header = json.loads(bytes(members["header"]).decode())
    header["version"] = 9
    broken = dict(members, header=np.frombuffer(json.dumps(header).encode(), np.uint8))
    with pytest.raises(ConversionError, match="version 9 is not supported"):
        sparse.decode_net(broken)
    not_npz = tmp_path / "bad.npz"
    not_npz.write_bytes(b"not a zip file")
    with pytest.raises(ConversionError, match="bad.npz"):
        sparse.load_sparse(not_npz)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, header=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ConversionError, match="pickled.npz"):
        sparse.load_sparse(pickled)


def test_tool_sparse_round_trip_and_upgrade(lenet, shared_dir, tmp_path):
    model = tmp_path / "pruned.caffemodel"
    model.write_bytes(_prune(_read(lenet[1]), 0.1).SerializeToString())
    result = _run_tool("to-sparse", model, "p.npz", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "density 0.10" in result.stdout
    result = _run_tool("from-sparse", "p.npz", "back.caffemodel", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "back.caffemodel").read_bytes() == model.read_bytes()
    old = shared_dir / "models" / "trained" / "everpeace_caffe" / "mnist" / "lenet_iter_10000.caffemodel"
    result = _run_tool("upgrade", old, "new.caffemodel", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    new = _read(tmp_path / "new.caffemodel")
    assert [layer.type for layer in new.layer][:3] == ["Data", "Convolution", "Pooling"] and not len(new.layers)
    assert list(new.layer[1].blobs[0].shape.dim) == [20, 1, 5, 5] or new.layer[1].blobs[0].num == 20
    result = _run_tool("from-sparse", "missing.npz", "x.caffemodel", cwd=tmp_path)
    assert result.returncode == 1 and "missing.npz" in result.stderr


def test_tool_from_sparse_refuses_a_text_file_clearly(lenet, tmp_path):
    """A prototxt given to from-sparse: 'not a pyskim-sparse file', not numpy's 'pickled data'."""
    result = _run_tool("from-sparse", lenet[0], "out.caffemodel", cwd=tmp_path)
    assert result.returncode == 1
    assert f"{lenet[0]}: not a pyskim-sparse file" in result.stderr and "pickle" not in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out.caffemodel").exists()


def test_tool_to_sparse_reads_hdf5_caffemodels(lenet, tmp_path):
    """An HDF5 caffemodel in Caffe's layout (written here with h5py) -> sparse -> binary caffemodel:
    the net loads the same weights as from the HDF5 file."""
    h5py = pytest.importorskip("h5py")
    pruned = _prune(_read(lenet[1]), 0.1)
    arrays = {layer.name: [np.asarray(b.data, np.float32).reshape(b.shape.dim) for b in layer.blobs]
              for layer in pruned.layer}
    with h5py.File(tmp_path / "pruned.caffemodel.h5", "w") as f:
        for name, blobs in arrays.items():
            group = f.create_group(f"data/{name}")
            for j, array in enumerate(blobs):
                group.create_dataset(str(j), data=array)
    result = _run_tool("to-sparse", "pruned.caffemodel.h5", "p.npz", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "density 0.10" in result.stdout
    result = _run_tool("from-sparse", "p.npz", "back.caffemodel", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    net = caffe.Net(str(lenet[0]), caffe.TEST, weights=str(tmp_path / "back.caffemodel"))
    assert sorted(net.params) == sorted(name for name, blobs in arrays.items() if blobs)
    for name, blobs in net.params.items():
        for blob, expected in zip(blobs, arrays[name]):
            np.testing.assert_array_equal(blob.data, expected)


def test_upgrade_v1_caffemodel_loads_like_the_original(shared_dir, tmp_path):
    folder = shared_dir / "models" / "trained" / "everpeace_caffe" / "mnist"
    out = tmp_path / "upgraded.caffemodel"
    assert upgrade_caffemodel(folder / "lenet_iter_10000.caffemodel", out)
    assert not upgrade_caffemodel(out, tmp_path / "again.caffemodel")
    assert (tmp_path / "again.caffemodel").read_bytes() == out.read_bytes()
    x = np.random.default_rng(0).normal(size=(64, 1, 28, 28)).astype(np.float32)
    old = caffe.Net(str(folder / "lenet.prototxt"), caffe.TEST, weights=str(folder / "lenet_iter_10000.caffemodel"))
    new = caffe.Net(str(folder / "lenet.prototxt"), caffe.TEST, weights=str(out))
    np.testing.assert_array_equal(old.forward(data=x)["prob"], new.forward(data=x)["prob"])


# --- ONNX -----------------------------------------------------------------------------------------

def _randomize(net, rng):
    """Random weights ~ N(0, 1/fan_in); BatchNorm statistics with a scale factor to fold."""
    for name, blobs in net.params.items():
        if net.layer_dict[name].type == "BatchNorm":
            blobs[0].data[...] = rng.normal(size=blobs[0].shape) * 2.5 * 0.1
            blobs[1].data[...] = rng.uniform(0.5, 1.5, size=blobs[1].shape) * 2.5
            blobs[2].data[...] = 2.5
            continue
        for blob in blobs:
            fan_in = int(np.prod(blob.shape[1:])) if len(blob.shape) > 1 else 1
            blob.data[...] = rng.standard_normal(size=blob.shape, dtype=np.float32) / np.float32(np.sqrt(fan_in))


def _check_onnx(net, rng, all_blobs=True, tol=1e-4):
    """Export ``net``, run it in onnxruntime on random inputs, compare with pyskim's forward."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from pyskim.convert.onnx_export import net_to_onnx

    names = [n for n in net.blobs if n not in net.inputs] if all_blobs else net.outputs
    model = net_to_onnx(net, outputs=names)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {n: rng.normal(size=net.blobs[n].data.shape).astype(np.float32) for n in net.inputs}
    net.forward(**feeds)
    for name, value in zip(names, session.run(None, feeds)):
        ref = net.blobs[name].data
        assert value.shape == ref.shape, name
        np.testing.assert_allclose(value, ref, rtol=tol, atol=tol * max(1.0, float(np.abs(ref).max())),
                                   err_msg=f"blob {name}")
    return model


def test_onnx_lenet_trained(lenet):
    net = caffe.Net(str(lenet[0]), caffe.TEST, weights=str(lenet[1]))
    _check_onnx(net, np.random.default_rng(0))


def test_onnx_cifar10_quick_random_weights_through_the_tool(shared_dir, tmp_path):
    """Random weights saved with net.save, converted by tools/convert.py, run in onnxruntime."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    prototxt = shared_dir / "models" / "bvlc" / "examples" / "cifar10" / "cifar10_quick.prototxt"
    net = caffe.Net(str(prototxt), caffe.TEST)
    _randomize(net, np.random.default_rng(1))
    weights = tmp_path / "cifar.caffemodel"
    net.save(str(weights))
    result = _run_tool("to-onnx", "--model", prototxt, "--weights", weights, "net.onnx", "--input-shape", "3,3,32,32",
                       cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    session = ort.InferenceSession(str(tmp_path / "net.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [3, 3, 32, 32]
    net = caffe.Net(str(prototxt), caffe.TEST, weights=str(weights))
    net.blobs["data"].reshape(3, 3, 32, 32)
    net.reshape()
    x = np.random.default_rng(2).normal(size=(3, 3, 32, 32)).astype(np.float32)
    ref = net.forward(data=x)["prob"].copy()
    (out,) = session.run(["prob"], {"data": x})
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-6)
    _check_onnx(net, np.random.default_rng(3))  # every hidden blob too


def test_onnx_caffenet_random_weights_batch1(shared_dir):
    """CaffeNet at batch 1: LRN, ceil pooling, grouped convolutions, dropout, softmax."""
    prototxt = shared_dir / "models" / "bvlc" / "models" / "bvlc_reference_caffenet" / "deploy.prototxt"
    param = read_net_text(prototxt)
    param.layer[0].input_param.shape[0].dim[0] = 1
    net = caffe.Net(param, caffe.TEST)
    _randomize(net, np.random.default_rng(4))
    model = _check_onnx(net, np.random.default_rng(5))
    assert {"LRN", "MaxPool", "Conv", "Gemm", "Softmax"} <= {node.op_type for node in model.graph.node}


def test_onnx_open_nsfw_resnet(shared_dir):
    folder = shared_dir / "models" / "trained" / "open_nsfw"
    net = caffe.Net(str(folder / "deploy.prototxt"), caffe.TEST, weights=str(folder / "resnet_50_1by2_nsfw.caffemodel"))
    model = _check_onnx(net, np.random.default_rng(6))
    assert {"BatchNormalization", "Sum", "Mul", "Add"} <= {node.op_type for node in model.graph.node}


def test_onnx_sparse_initializers_for_a_pruned_lenet(lenet, tmp_path):
    """--sparse-initializers on a 90%-zero LeNet: every weight is an ONNX sparse_initializer holding
    exactly the pruned weights, the file is far smaller than the dense export, and onnxruntime loads
    it as it is and computes what it computes from the dense export."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pruned = _prune(_read(lenet[1]), 0.1)
    weights = tmp_path / "pruned.caffemodel"
    weights.write_bytes(pruned.SerializeToString())
    for name, flags in (("dense.onnx", []), ("sparse.onnx", ["--sparse-initializers"])):
        result = _run_tool("to-onnx", "--model", lenet[0], "--weights", weights, *flags, name, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    dense, sparse_model = (onnx.load(str(tmp_path / name)) for name in ("dense.onnx", "sparse.onnx"))
    onnx.checker.check_model(sparse_model)
    stored = {t.values.name: t for t in sparse_model.graph.sparse_initializer}
    assert sorted(stored) == ["conv1/weight", "conv2/weight", "ip1/weight", "ip2/weight"]
    blobs = {layer.name: np.asarray(layer.blobs[0].data, np.float32) for layer in pruned.layer if len(layer.blobs)}
    for name, tensor in stored.items():
        expected = blobs[name.split("/")[0]]
        values = onnx.numpy_helper.to_array(tensor.values)
        indices = onnx.numpy_helper.to_array(tensor.indices)
        assert indices.dtype == np.int64 and np.all(np.diff(indices) > 0)
        rebuilt = np.zeros(int(np.prod(tensor.dims)), np.float32)
        rebuilt[indices] = values
        np.testing.assert_array_equal(rebuilt, expected)
    dense_size, sparse_size = ((tmp_path / name).stat().st_size for name in ("dense.onnx", "sparse.onnx"))
    assert sparse_size < 0.4 * dense_size, (sparse_size, dense_size)
    x = np.random.default_rng(11).normal(size=(64, 1, 28, 28)).astype(np.float32)
    outputs = [ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"data": x})
               for model in (dense, sparse_model)]
    np.testing.assert_allclose(outputs[1][0], outputs[0][0], rtol=1e-6, atol=1e-7)


_HEAD = 'name: "zoo" layer { name: "data" type: "Input" top: "data" input_param { shape { %s } } }\n'
_DATA = "dim: 2 dim: 4 dim: 8 dim: 8"
ZOO = {
    "conv_group_dilation": 'layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { '
                           'num_output: 6 kernel_size: 3 stride: 2 pad: 2 dilation: 2 group: 2 } }',
    "conv_rect_nobias": 'layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { '
                        'num_output: 3 kernel_h: 3 kernel_w: 2 pad_h: 1 pad_w: 0 stride_h: 2 stride_w: 1 bias_term: false } }',
    "deconv": 'layer { name: "d" type: "Deconvolution" bottom: "data" top: "d" convolution_param { '
              'num_output: 6 kernel_size: 4 stride: 2 pad: 1 group: 2 } }',
    "ip_axis2": 'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { '
                'num_output: 5 axis: 2 } }',
    "ip_transpose": 'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { '
                    'num_output: 5 transpose: true } }',
    "neurons": """
        layer { name: "r" type: "ReLU" bottom: "data" top: "r" relu_param { negative_slope: 0.1 } }
        layer { name: "p" type: "PReLU" bottom: "r" top: "r" }
        layer { name: "p2" type: "PReLU" bottom: "data" top: "p2" prelu_param { channel_shared: true } }
        layer { name: "s" type: "Sigmoid" bottom: "data" top: "s" }
        layer { name: "t" type: "TanH" bottom: "data" top: "t" }
        layer { name: "e" type: "ELU" bottom: "data" top: "e" elu_param { alpha: 0.7 } }
        layer { name: "a" type: "AbsVal" bottom: "data" top: "a" }
        layer { name: "pw" type: "Power" bottom: "a" top: "pw" power_param { power: 1.5 scale: 0.5 shift: 1 } }
        layer { name: "pw0" type: "Power" bottom: "data" top: "pw0" power_param { power: 0 } }
        layer { name: "pwc" type: "Power" bottom: "data" top: "pwc" power_param { power: 3 scale: 0 shift: 2 } }
        layer { name: "x" type: "Exp" bottom: "data" top: "x" exp_param { base: 2 scale: 0.5 shift: 1 } }
        layer { name: "x2" type: "Exp" bottom: "data" top: "x2" }
        layer { name: "l" type: "Log" bottom: "a" top: "l" log_param { base: 10 scale: 2 shift: 0.5 } }
        layer { name: "b" type: "BNLL" bottom: "data" top: "b" }
        layer { name: "dr" type: "Dropout" bottom: "data" top: "dr" }
        layer { name: "th" type: "Threshold" bottom: "data" top: "th" threshold_param { threshold: 0.2 } }
        layer { name: "cl" type: "Clip" bottom: "data" top: "cl" clip_param { min: -0.5 max: 0.7 } }
        layer { name: "sw" type: "Swish" bottom: "data" top: "sw" swish_param { beta: 1.5 } }""",
    "lrn": """
        layer { name: "n1" type: "LRN" bottom: "data" top: "n1" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 } }
        layer { name: "n2" type: "LRN" bottom: "data" top: "n2"
                lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL } }""",
    "pooling": """
        layer { name: "p1" type: "Pooling" bottom: "data" top: "p1" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
        layer { name: "p2" type: "Pooling" bottom: "data" top: "p2" top: "mask"
                pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
        layer { name: "p3" type: "Pooling" bottom: "data" top: "p3" pooling_param { pool: AVE kernel_size: 3 stride: 2 } }
        layer { name: "p4" type: "Pooling" bottom: "data" top: "p4" pooling_param { pool: MAX global_pooling: true } }
        layer { name: "p5" type: "Pooling" bottom: "data" top: "p5" pooling_param { pool: AVE global_pooling: true } }
        layer { name: "p6" type: "Pooling" bottom: "data" top: "p6"
                pooling_param { pool: MAX kernel_size: 3 stride: 3 round_mode: FLOOR } }
        layer { name: "p7" type: "Pooling" bottom: "data" top: "p7"
                pooling_param { pool: AVE kernel_h: 2 kernel_w: 3 stride_h: 3 stride_w: 2 pad_h: 1 pad_w: 2 } }""",
    "plumbing": """
        layer { name: "sl" type: "Slice" bottom: "data" top: "s1" top: "s2" top: "s3" slice_param { slice_point: 1 slice_point: 3 } }
        layer { name: "cat" type: "Concat" bottom: "s3" bottom: "s1" top: "cat" }
        layer { name: "sum" type: "Eltwise" bottom: "cat" bottom: "s2" top: "sum" eltwise_param { coeff: 0.5 coeff: -2 } }
        layer { name: "prod" type: "Eltwise" bottom: "sum" bottom: "cat" bottom: "s2" top: "prod" eltwise_param { operation: PROD } }
        layer { name: "max" type: "Eltwise" bottom: "sum" bottom: "prod" bottom: "cat" top: "max" eltwise_param { operation: MAX } }
        layer { name: "fl" type: "Flatten" bottom: "max" top: "fl" flatten_param { axis: 1 end_axis: 2 } }
        layer { name: "rs" type: "Reshape" bottom: "fl" top: "rs" reshape_param { shape { dim: 0 dim: -1 dim: 4 } } }
        layer { name: "sm" type: "Softmax" bottom: "rs" top: "sm" softmax_param { axis: -1 } }
        layer { name: "tile" type: "Tile" bottom: "data" top: "tile" tile_param { axis: 1 tiles: 2 } }
        layer { name: "crop" type: "Crop" bottom: "data" bottom: "s2" top: "crop" crop_param { axis: 1 offset: 1 offset: 0 offset: 0 } }
        layer { name: "sil" type: "Silence" bottom: "crop" }
        layer { name: "par" type: "Parameter" top: "par" parameter_param { shape { dim: 2 dim: 4 dim: 8 dim: 8 } } }
        layer { name: "addp" type: "Eltwise" bottom: "par" bottom: "data" top: "addp" }""",
    "normalization": """
        layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" }
        layer { name: "bn2" type: "BatchNorm" bottom: "data" top: "bn2" batch_norm_param { use_global_stats: false } }
        layer { name: "sc" type: "Scale" bottom: "bn" top: "bn" scale_param { bias_term: true } }
        layer { name: "gap" type: "Pooling" bottom: "data" top: "gap" pooling_param { pool: AVE global_pooling: true } }
        layer { name: "flat" type: "Reshape" bottom: "gap" top: "flat" reshape_param { shape { dim: 2 dim: 4 } } }
        layer { name: "sc2" type: "Scale" bottom: "data" bottom: "flat" top: "sc2" scale_param { axis: 0 bias_term: true } }
        layer { name: "bi" type: "Bias" bottom: "data" top: "bi" bias_param { axis: 1 num_axes: 2 } }
        layer { name: "bi2" type: "Bias" bottom: "data" bottom: "flat" top: "bi2" bias_param { axis: 0 } }
        layer { name: "mvn" type: "MVN" bottom: "data" top: "mvn" }
        layer { name: "mvn2" type: "MVN" bottom: "data" top: "mvn2" mvn_param { across_channels: true normalize_variance: false } }""",
    "reductions": """
        layer { name: "r1" type: "Reduction" bottom: "data" top: "r1" reduction_param { axis: 1 } }
        layer { name: "r2" type: "Reduction" bottom: "data" top: "r2" reduction_param { operation: ASUM axis: 2 } }
        layer { name: "r3" type: "Reduction" bottom: "data" top: "r3" reduction_param { operation: SUMSQ axis: -1 coeff: 3 } }
        layer { name: "r4" type: "Reduction" bottom: "data" top: "r4" reduction_param { operation: MEAN coeff: 2 } }
        layer { name: "am" type: "ArgMax" bottom: "data" top: "am" argmax_param { axis: 1 top_k: 2 } }
        layer { name: "am2" type: "ArgMax" bottom: "data" top: "am2" argmax_param { top_k: 3 out_max_val: true } }
        layer { name: "am3" type: "ArgMax" bottom: "data" top: "am3" argmax_param { axis: 3 out_max_val: true } }
        layer { name: "th" type: "Threshold" bottom: "data" top: "th" }
        layer { name: "em" type: "Embed" bottom: "th" top: "em" embed_param { num_output: 3 input_dim: 2 } }""",
    "skimcaffe_fused": """
        layer { name: "c1" type: "ConvolutionReLU" bottom: "data" top: "c1" convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
        layer { name: "c2" type: "ConvolutionReLUPool" bottom: "c1" top: "c2" convolution_param { num_output: 4 kernel_size: 3 pad: 1 }
                relu_param { negative_slope: 0.2 } pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
        layer { name: "c3" type: "ConvolutionReLUPoolLRN" bottom: "data" top: "c3" convolution_param { num_output: 4 kernel_size: 3 }
                pooling_param { pool: MAX kernel_size: 2 stride: 2 } lrn_param { local_size: 3 } }
        layer { name: "rp" type: "ReLUPooling" bottom: "data" top: "rp" pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
        layer { name: "w" type: "Winograd" bottom: "rp" top: "w" convolution_param { num_output: 2 kernel_size: 3 pad: 1 } }
        layer { name: "mp" type: "MKLPooling" bottom: "w" top: "mp" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
        layer { name: "ipr" type: "InnerProductReLUDropout" bottom: "c2" top: "ipr" inner_product_param { num_output: 7 } }""",
}


@pytest.mark.parametrize("case", sorted(ZOO))
def test_onnx_layer_zoo_matches_pyskim(case, tmp_path):
    net = caffe.Net(parse_text(_HEAD % _DATA + ZOO[case], caffe_pb2.NetParameter()), caffe.TEST)
    _randomize(net, np.random.default_rng(7))
    _check_onnx(net, np.random.default_rng(8))


@pytest.mark.parametrize("size,kernel,stride,pad,method", [
    (5, 2, 2, 1, "MAX"), (5, 2, 2, 1, "AVE"),    # Caffe drops a last window starting in the padding
    (6, 3, 2, 1, "AVE"), (16, 3, 2, 0, "AVE"),   # ceil: the last window runs past image + pad
    (7, 3, 2, 0, "MAX"), (13, 3, 2, 1, "AVE"), (9, 4, 3, 2, "MAX"), (9, 4, 3, 2, "AVE"), (10, 3, 3, 0, "AVE"),
])
def test_onnx_pooling_geometry_matches_caffe(size, kernel, stride, pad, method):
    text = _HEAD % f"dim: 1 dim: 3 dim: {size} dim: {size + 1}" + (
        f'layer {{ name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param {{ pool: {method} '
        f'kernel_size: {kernel} stride: {stride} pad: {pad} }} }}')
    _check_onnx(caffe.Net(parse_text(text, caffe_pb2.NetParameter()), caffe.TEST), np.random.default_rng(9))


def test_onnx_errors_name_the_layer_and_reason(shared_dir, tmp_path):
    pytest.importorskip("onnx")
    from pyskim.convert.onnx_export import caffe_to_onnx

    train = shared_dir / "models" / "trained" / "everpeace_caffe" / "mnist" / "lenet_train_test.prototxt"
    with pytest.raises(ConversionError, match=r"layer 'mnist' \(type Data\).*Input layers"):
        caffe_to_onnx(str(train))
    net = parse_text(_HEAD % "dim: 2 dim: 3" + """
        layer { name: "lbl" type: "Input" top: "label" input_param { shape { dim: 2 } } }
        layer { name: "loss" type: "SoftmaxWithLoss" bottom: "data" bottom: "label" top: "loss" }""",
                     caffe_pb2.NetParameter())
    with pytest.raises(ConversionError, match=r"layer 'loss' \(type SoftmaxWithLoss\).*loss"):
        caffe_to_onnx(net)
    net = parse_text(_HEAD % "dim: 1 dim: 1 dim: 4 dim: 4" + """
        layer { name: "sp" type: "Pooling" bottom: "data" top: "sp" pooling_param { pool: STOCHASTIC kernel_size: 2 } }""",
                     caffe_pb2.NetParameter())
    with pytest.raises(ConversionError, match=r"layer 'sp' \(type Pooling\).*STOCHASTIC"):
        caffe_to_onnx(net)
    net = parse_text(_HEAD % "dim: 1 dim: 2" + 'layer { name: "py" type: "Python" bottom: "data" top: "y" }',
                     caffe_pb2.NetParameter())
    with pytest.raises(ConversionError, match=r"layer 'py' \(type Python\)"):
        caffe_to_onnx(net)
    net = parse_text(_HEAD % "dim: 1 dim: 2", caffe_pb2.NetParameter())
    with pytest.raises(ConversionError, match="input shape"):
        caffe_to_onnx(net, input_shapes=[[1, 0]])
    with pytest.raises(ConversionError, match=r"names \['nope'\]"):
        caffe_to_onnx(net, input_shapes={"nope": [1, 2]})
    result = _run_tool("to-onnx", "--model", train, "x.onnx", cwd=tmp_path)
    assert result.returncode == 1 and "layer 'mnist' (type Data)" in result.stderr
    assert not (tmp_path / "x.onnx").exists()
