"""Memory of sparse inference (issue 14): a net that runs no backward releases the dense weights its
sparse engines hold in sparse form, and reads them back bit for bit (-0.0, NaN payloads, infinities,
denormals); writing them repacks; backward and save work on released weights; a caffemodel is loaded
one blob at a time, straight into the net (the same weights as protobuf's whole-file parse, V1 and
double-precision blobs, unpacked values, old input fields), with errors naming the file.

Expected values come from NumPy (the arrays written), from protobuf's own parse, or from the same
net in a dense mode."""
import gc
import tracemalloc

import numpy as np
import pytest
from one_layer_nets import one_layer_param

import pyskim
from pyskim.errors import ModelFileError, PyskimError, WeightsMismatchError
from pyskim.io.caffemodel import CaffemodelWeights
from pyskim.io.upgrade import read_net_binary
from pyskim.proto import caffe_pb2
from pyskim.sparse import keep_dense_weights
from pyskim.sparse.modes import apply_mode

CONV = caffe_pb2.ConvolutionParameter
IP = caffe_pb2.InnerProductParameter

CASES = {
    "conv DIRECT_SCONV": ("Convolution", CONV.DIRECT_SCONV),
    "conv LOWERED_CCNMM": ("Convolution", CONV.LOWERED_CCNMM),
    "conv AUTO": ("Convolution", CONV.AUTO),
    "ConvolutionReLU DIRECT_SCONV": ("ConvolutionReLU", CONV.DIRECT_SCONV),
    "ip SPMDM": ("InnerProduct", IP.SPMDM),
    "ip transpose SPMDM": ("InnerProduct", IP.SPMDM),
    "ip AUTO": ("InnerProduct", IP.AUTO),
}


# The fixed profile, and AUTO decided by it alone (a trial of close calls keeps the dense weights until
# it is done: tests/test_auto_trials.py).
pytestmark = pytest.mark.usefixtures("sparse_wins_profile", "no_auto_trials")


def _param(case, loss=False):
    """Input ``x`` -> ``layer`` (the case's type and mode) -> ``y`` [-> EuclideanLoss against ``t``]."""
    type_name, mode = CASES[case]
    return one_layer_param(case, type_name, mode, loss)


def _dense(param):
    dense = caffe_pb2.NetParameter()
    dense.CopyFrom(param)
    apply_mode(dense, "dense")
    return dense


def _odd_weights(shape, seed=0):
    """Pruned weights (10% nonzero) holding -0.0, NaNs with two payloads, infinities and a denormal."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal(shape) * (rng.random(shape) < 0.1)).astype(np.float32)
    bits = w.reshape(-1).view(np.uint32)
    zeros = np.flatnonzero(bits == 0)
    bits[zeros[:5]] = 0x80000000                                  # -0.0
    bits[zeros[5]], bits[zeros[6]] = 0x7FC00001, 0xFFC12345       # NaNs with payloads
    bits[zeros[7]], bits[zeros[8]] = 0x7F800000, 0xFF800000       # +inf, -inf
    bits[zeros[9]] = 0x00000003                                   # a denormal
    return w


def _finite_weights(shape, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * (rng.random(shape) < 0.1)).astype(np.float32)


def _nets(case, weights_fn=_finite_weights, loss=False):
    """(sparse net, dense net) of ``case`` with the same weights, bias and input."""
    param = _param(case, loss)
    nets = [pyskim.Net(p, pyskim.TEST) for p in (param, _dense(param))]
    rng = np.random.default_rng(1)
    weights = weights_fn(nets[0].params["layer"][0].data.shape)
    bias = rng.standard_normal(nets[0].params["layer"][1].data.shape)
    inputs = {name: rng.standard_normal(nets[0].blobs[name].data.shape) for name in nets[0].inputs}
    for net in nets:
        net.params["layer"][0].data[...] = weights
        net.params["layer"][1].data[...] = bias
        for name, value in inputs.items():
            net.blobs[name].data[...] = value
    return nets


def _engine(net):
    layer = net.layer_dict["layer"]
    return (layer.stages[0] if hasattr(layer, "stages") else layer).engine


def _assert_same_outputs(sparse, dense):
    sparse.forward()
    dense.forward()
    got, ref = sparse.blobs["y"].data, dense.blobs["y"].data
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max() + 1e-6)


def _bits(array):
    return np.ascontiguousarray(array).view(np.uint32)


@pytest.mark.parametrize("case", CASES)
def test_released_weights_read_back_bit_for_bit(case):
    sparse, _ = _nets(case)
    weights = _odd_weights(sparse.params["layer"][0].data.shape)
    sparse.params["layer"][0].data[...] = weights
    sparse.forward()
    blob, engine = sparse.params["layer"][0], _engine(sparse)
    assert engine.last_mode != "dense" and blob.data_released and engine.weight_record_bytes == 0
    np.testing.assert_array_equal(_bits(blob.readonly_data), _bits(weights))
    np.testing.assert_array_equal(_bits(blob.data), _bits(weights))
    assert not blob.data_released


@pytest.mark.parametrize("case", CASES)
def test_released_weights_give_the_dense_result_forward_after_forward(case):
    sparse, dense = _nets(case)
    for _ in range(3):
        _assert_same_outputs(sparse, dense)
        assert sparse.params["layer"][0].data_released


@pytest.mark.parametrize("case", ["conv DIRECT_SCONV", "conv LOWERED_CCNMM", "ip SPMDM", "ip transpose SPMDM"])
def test_writing_released_weights_repacks(case):
    sparse, dense = _nets(case)
    _assert_same_outputs(sparse, dense)
    engine, blob = _engine(sparse), sparse.params["layer"][0]
    packed = engine.repacks
    new = _finite_weights(blob.shape, seed=5)
    for net in (sparse, dense):
        net.params["layer"][0].data[...] = new
    _assert_same_outputs(sparse, dense)
    assert engine.repacks == packed + 1 and blob.data_released
    held = blob.data                        # a kept array: the dense copy stays while it is alive
    held.reshape(-1)[3] = 7.0
    dense.params["layer"][0].data.reshape(-1)[3] = 7.0
    _assert_same_outputs(sparse, dense)
    assert engine.repacks == packed + 2 and not blob.data_released
    del held
    _assert_same_outputs(sparse, dense)
    assert blob.data_released and engine.repacks == packed + 2


@pytest.mark.parametrize("case", ["conv DIRECT_SCONV", "ip SPMDM"])
def test_reading_released_weights_costs_no_repack(case):
    sparse, dense = _nets(case)
    _assert_same_outputs(sparse, dense)
    engine, blob = _engine(sparse), sparse.params["layer"][0]
    packed = engine.repacks
    assert blob.data.shape == blob.shape        # a writable hand-out that writes nothing
    _assert_same_outputs(sparse, dense)
    assert engine.repacks == packed and blob.data_released


@pytest.mark.parametrize("case", ["conv DIRECT_SCONV", "ConvolutionReLU DIRECT_SCONV", "ip SPMDM",
                                  "ip transpose SPMDM"])
def test_backward_on_released_weights(case):
    """A net with a loss keeps its dense weights; told to release them, its backward still equals the
    dense net's (the weights come back), and the dense copy stays while backward may need it."""
    sparse, dense = _nets(case, loss=True)
    _assert_same_outputs(sparse, dense)
    assert not sparse.params["layer"][0].data_released
    keep_dense_weights(sparse, keep=False)
    assert sparse.params["layer"][0].data_released
    for net in (sparse, dense):
        net.forward()
        net.clear_param_diffs()
        net.backward()
    for got, ref in zip(sparse.params["layer"], dense.params["layer"]):
        np.testing.assert_allclose(got.diff, ref.diff, rtol=1e-4, atol=1e-4 * np.abs(ref.diff).max())
    np.testing.assert_allclose(sparse.blobs["x"].diff, dense.blobs["x"].diff, rtol=1e-4,
                               atol=1e-4 * np.abs(dense.blobs["x"].diff).max())


def test_keep_dense_weights_restores_and_keeps_them():
    sparse, dense = _nets("ip SPMDM")
    _assert_same_outputs(sparse, dense)
    keep_dense_weights(sparse)
    assert not sparse.params["layer"][0].data_released
    _assert_same_outputs(sparse, dense)
    assert not sparse.params["layer"][0].data_released and _engine(sparse).weight_record_bytes > 0


@pytest.mark.parametrize("case", ["conv DIRECT_SCONV", "ip transpose SPMDM"])
def test_save_of_released_weights_writes_the_same_caffemodel(case, tmp_path):
    sparse, _ = _nets(case, weights_fn=_odd_weights)
    sparse.save(str(tmp_path / "before.caffemodel"))
    sparse.forward()
    assert sparse.params["layer"][0].data_released
    sparse.save(str(tmp_path / "after.caffemodel"))
    assert (tmp_path / "after.caffemodel").read_bytes() == (tmp_path / "before.caffemodel").read_bytes()


def test_an_inference_net_releases_its_weights_when_built_and_loaded(tmp_path):
    """Packing happens right after the build (zero weights) and after each load, so that the dense
    weights of a net are never all in memory; the loaded weights are exact."""
    param = _param("ip SPMDM")
    net = pyskim.Net(param, pyskim.TEST)
    blob = net.params["layer"][0]
    assert blob.data_released and not blob.readonly_data.any()
    weights = _odd_weights(blob.shape)
    source = pyskim.Net(_dense(param), pyskim.TEST)
    source.params["layer"][0].data[...] = weights
    source.save(str(tmp_path / "w.caffemodel"))
    loaded = pyskim.Net(param, pyskim.TEST, weights=str(tmp_path / "w.caffemodel"))
    assert loaded.params["layer"][0].data_released
    np.testing.assert_array_equal(_bits(loaded.params["layer"][0].data), _bits(weights))


def _traced_after_forward(param, weights):
    """Bytes tracemalloc sees held after building ``param``, setting ``weights`` and a forward."""
    gc.collect()
    tracemalloc.start()
    try:
        net = pyskim.Net(param, pyskim.TEST)
        net.params["ip"][0].data[...] = weights
        net.forward()
        gc.collect()
        return tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()


def test_a_released_layer_holds_about_one_sparse_copy():
    """A 1024 x 4096 InnerProduct at 5% density: with SPMDM the net holds less than the dense-mode
    net minus 0.6 dense copies (the dense array and the change record are gone; what is left is the
    CSR, 8 bytes per nonzero = 0.1 dense copy, and the kernel's plan)."""
    param = caffe_pb2.NetParameter()
    param.layer.add(name="x", type="Input", top=["x"]).input_param.shape.add().dim.extend([16, 4096])
    param.layer.add(name="ip", type="InnerProduct", bottom=["x"], top=["y"]).inner_product_param.num_output = 1024
    rng = np.random.default_rng(0)
    weights = (rng.standard_normal((1024, 4096)) * (rng.random((1024, 4096)) < 0.05)).astype(np.float32)
    dense_bytes = weights.nbytes
    apply_mode(param, "dense")
    dense_mode = _traced_after_forward(param, weights)
    apply_mode(param, "sparse")
    sparse_mode = _traced_after_forward(param, weights)
    assert sparse_mode < dense_mode - 0.6 * dense_bytes, (sparse_mode, dense_mode, dense_bytes)


# -- loading a caffemodel ------------------------------------------------------------------------------

def _fc_param(num_output=1000, num_input=1000):
    param = caffe_pb2.NetParameter(name="fc")
    param.layer.add(name="x", type="Input", top=["x"]).input_param.shape.add().dim.extend([1, num_input])
    param.layer.add(name="ip", type="InnerProduct", bottom=["x"], top=["y"]).inner_product_param.num_output = \
        num_output
    return param


def test_loading_holds_no_second_copy_of_the_weights(tmp_path):
    """Loading a 4 MB caffemodel allocates less than a quarter of the weights' size on top of the net
    (the whole-file parse held the file's bytes and an array per blob: more than the weights)."""
    param = _fc_param()
    weights = np.random.default_rng(0).standard_normal((1000, 1000)).astype(np.float32)
    source = pyskim.Net(param, pyskim.TEST)
    source.params["ip"][0].data[...] = weights
    path = tmp_path / "fc.caffemodel"
    source.save(str(path))
    net = pyskim.Net(param, pyskim.TEST)
    gc.collect()
    tracemalloc.start()
    try:
        net.copy_from(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < weights.nbytes / 4, (peak, weights.nbytes)
    np.testing.assert_array_equal(net.params["ip"][0].data, weights)


def _varint(value):
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number, payload):
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def test_odd_encodings_load_as_protobuf_parses_them(tmp_path):
    """A V1 caffemodel with old input fields (the upgrade adds a blob-less Input layer): a weight blob
    in ``double_data``, a bias whose ``data`` comes in two packed runs with unpacked values between
    them, and a packed diff; the loaded weights are what protobuf's parse of the whole file holds."""
    rng = np.random.default_rng(3)
    weights, bias = rng.standard_normal((4, 6)), rng.standard_normal(4).astype(np.float32)
    shape = _field(7, _field(1, b"".join(_varint(d) for d in (4, 6))))
    weight_blob = shape + _field(8, weights.astype("<f8").tobytes()) + _field(6, np.ones(24, "<f4").tobytes())
    unpacked = b"".join(b"\x2d" + bias[i:i + 1].astype("<f4").tobytes() for i in (1, 2))   # key 5 << 3 | 5
    bias_blob = (_field(7, _field(1, _varint(4))) + _field(5, bias[:1].astype("<f4").tobytes()) + unpacked
                 + _field(5, bias[3:].astype("<f4").tobytes()))
    v1 = caffe_pb2.V1LayerParameter(name="ip", type=caffe_pb2.V1LayerParameter.INNER_PRODUCT, bottom=["x"],
                                    top=["y"])
    v1.inner_product_param.num_output = 4
    layer = v1.SerializeToString() + _field(6, weight_blob) + _field(6, bias_blob)
    header = caffe_pb2.NetParameter(name="v1", input=["x"], input_dim=[1, 6, 1, 1]).SerializeToString()
    path = tmp_path / "v1.caffemodel"
    path.write_bytes(header + _field(2, layer))
    whole = read_net_binary(path)
    assert [lp.type for lp in whole.layer] == ["Input", "InnerProduct"]
    net = pyskim.Net(_fc_param(4, 6), pyskim.TEST, weights=str(path))
    expected = [np.asarray(b.double_data if not len(b.data) else b.data, np.float32) for b in whole.layer[1].blobs]
    np.testing.assert_array_equal(net.params["ip"][0].data.reshape(-1), expected[0])
    np.testing.assert_array_equal(net.params["ip"][1].data, expected[1])
    np.testing.assert_array_equal(expected[1], bias)


def test_bad_files_name_themselves(tmp_path):
    param = _fc_param(10, 10)
    source = pyskim.Net(param, pyskim.TEST)
    source.params["ip"][0].data[...] = 1.5
    source.save(str(tmp_path / "good.caffemodel"))
    data = (tmp_path / "good.caffemodel").read_bytes()
    (tmp_path / "cut.caffemodel").write_bytes(data[:len(data) - 100])      # inside the weights
    with pytest.raises(ModelFileError, match=r"cut\.caffemodel is not a valid binary NetParameter"):
        pyskim.Net(param, pyskim.TEST, weights=str(tmp_path / "cut.caffemodel"))
    blob = _field(7, _field(1, _varint(10) + _varint(10))) + _field(5, bytes(399))     # 399 bytes of floats
    layer = caffe_pb2.LayerParameter(name="ip").SerializeToString() + _field(7, blob)
    (tmp_path / "odd.caffemodel").write_bytes(_field(100, layer))
    with pytest.raises(ModelFileError, match=r"odd\.caffemodel is not a valid binary NetParameter"):
        read_net_binary(tmp_path / "odd.caffemodel")                          # protobuf refuses it too
    with pytest.raises(ModelFileError, match=r"odd\.caffemodel .*not a multiple of 4"):
        pyskim.Net(param, pyskim.TEST, weights=str(tmp_path / "odd.caffemodel"))
    source.save_hdf5(str(tmp_path / "w.h5"))
    with pytest.raises(ModelFileError, match=r"w\.h5 is an HDF5 file"):
        CaffemodelWeights(tmp_path / "w.h5")
    with pytest.raises(ModelFileError, match="Could not open file"):
        CaffemodelWeights(tmp_path / "missing.caffemodel")


def _mutated(data, rng):
    """``data`` with one to three random byte edits (flip, set, insert, delete, truncate, duplicate)."""
    data = bytearray(data)
    for _ in range(int(rng.integers(1, 4))):
        op, pos = rng.integers(6), int(rng.integers(len(data)))
        if op == 0:
            data[pos] ^= 1 << int(rng.integers(8))
        elif op == 1:
            data[pos] = int(rng.choice([0, 0x7F, 0x80, 0xFF, 0x0A, 0x2A, 0x3A, 0x0D]))
        elif op == 2:
            data[pos:pos] = rng.bytes(int(rng.integers(1, 9)))
        elif op == 3:
            del data[pos:pos + int(rng.integers(1, 65))]
        elif op == 4:
            del data[pos:]
        else:
            data[pos:pos] = data[pos:pos + int(rng.integers(1, 65))] * int(rng.choice([1, 10]))
    return bytes(data)


def _outcome(load):
    try:
        return load()
    except PyskimError as e:
        return type(e)


@pytest.mark.parametrize("model", ["everpeace_caffe/mnist/lenet", "lenet_ethereon/lenet"])
def test_mutated_caffemodels_load_as_the_whole_file_parse_reads_them(shared_dir, tmp_path, model):
    """60 seeded byte mutations of a trained V1 / current LeNet caffemodel: where protobuf's parse of
    the whole file (with Caffe's upgrade) gives weights, the loader puts exactly those in the net;
    where it fails, the loader fails with the same error class."""
    folder = shared_dir / "models" / "trained"
    prototxt = folder / f"{model}.prototxt"
    original = next((folder / model).parent.glob("*.caffemodel")).read_bytes()
    rng = np.random.default_rng(14)
    path = tmp_path / "m.caffemodel"
    agreed = {True: 0, False: 0}
    for case in range(60):
        path.write_bytes(_mutated(original, rng) if case else original)

        def whole_file():
            return {lp.name: [np.asarray(b.data if len(b.data) else b.double_data, np.float32) for b in lp.blobs]
                    for lp in read_net_binary(path).layer}

        def loaded():
            net = pyskim.Net(str(prototxt), pyskim.TEST, weights=str(path))
            return {name: [b.data.reshape(-1) for b in blobs] for name, blobs in net.params.items()}
        expected, got = _outcome(whole_file), _outcome(loaded)
        if isinstance(expected, dict) and isinstance(got, dict):
            for name, blobs in got.items():
                for a, b in zip(blobs, expected.get(name, blobs)):
                    np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32), err_msg=f"{case} {name}")
        elif isinstance(expected, dict):
            assert issubclass(got, WeightsMismatchError), (case, got)   # the net refuses them
        else:
            assert got is expected, (case, expected, got)
        agreed[isinstance(got, dict)] += 1
    assert agreed[True] >= 5 and agreed[False] >= 20, agreed          # both outcomes were met


def test_a_v0_caffemodel_loads_as_protobuf_parses_it(tmp_path):
    """A V0 net (``layers { layer { type: "innerproduct" blobs ... } }``, upgraded through V1): the
    values stay in the parsed layers, and the net gets what protobuf's parse holds."""
    rng = np.random.default_rng(4)
    weights, bias = rng.standard_normal((4, 6)).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    net_param = caffe_pb2.NetParameter(name="v0", input=["x"], input_dim=[1, 6, 1, 1])
    entry = net_param.layers.add(bottom=["x"], top=["y"])
    entry.layer.name, entry.layer.type, entry.layer.num_output = "ip", "innerproduct", 4
    for values, (height, width) in ((weights, (4, 6)), (bias, (1, 4))):     # legacy 4-D shapes
        entry.layer.blobs.add(num=1, channels=1, height=height, width=width).data.extend(values.reshape(-1).tolist())
    path = tmp_path / "v0.caffemodel"
    path.write_bytes(net_param.SerializeToString())
    whole = read_net_binary(path)
    net = pyskim.Net(_fc_param(4, 6), pyskim.TEST, weights=str(path))
    for got, proto in zip(net.params["ip"], whole.layer[-1].blobs):
        np.testing.assert_array_equal(got.data.reshape(-1), np.asarray(proto.data, np.float32))
    np.testing.assert_array_equal(net.params["ip"][0].data, weights)
