"""Regression tests for the bad inputs the fuzzer (``test_fuzz.py``) found raising raw exceptions;
each must now raise a documented :class:`pyskim.errors.PyskimError` (or work, as Caffe does)."""
import io

import h5py
import numpy as np
import pytest

import pyskim
from pyskim.errors import BlobProtoError, DataError, ModelFileError, NetError, PyskimError
from pyskim.proto import caffe_pb2


def _net(tmp_path, text, phase=pyskim.TEST, name="net.prototxt"):
    path = tmp_path / name
    path.write_text(text)
    return pyskim.Net(str(path), phase)


def _input(shape, name="data"):
    dims = " ".join(f"dim: {d}" for d in shape)
    return f'layer {{ name: "{name}" type: "Input" top: "{name}" input_param {{ shape {{ {dims} }} }} }}\n'


def test_prefetch_zero_is_refused(tmp_path, shared_dir):
    db = shared_dir / "conformance/solvers/sgd_fixed/data_lmdb"
    if not db.is_dir():
        pytest.skip("conformance LMDB not available")
    with pytest.raises(NetError, match="layer 'd': data_param.prefetch must be at least 1"):
        _net(tmp_path, f'layer {{ name: "d" type: "Data" top: "d" data_param {{ source: "{db}" batch_size: 2 '
                       f'backend: LMDB prefetch: 0 }} }}')


@pytest.mark.parametrize("filler", ['type: "gaussian" std: -1', 'type: "uniform" min: -inf max: inf'])
def test_bad_filler_parameters(tmp_path, filler):
    with pytest.raises(NetError, match="layer 'ip'.*filler"):
        _net(tmp_path, _input([2, 3]) + 'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
                                        f'inner_product_param {{ num_output: 4 weight_filler {{ {filler} }} }} }}')


@pytest.mark.parametrize("filler", ['type: "xavier"', 'type: "msra"', 'type: "positive_unitball"',
                                    'type: "gaussian" sparse: 2'])
def test_fillers_on_empty_blobs(tmp_path, filler):
    """An empty bottom axis gives an empty weight blob (Caffe allows it): nothing to fill, no division
    by a zero fan-in."""
    net = _net(tmp_path, _input([2, 0]) + 'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
                                          f'inner_product_param {{ num_output: 4 weight_filler {{ {filler} }} }} }}')
    assert net.params["ip"][0].shape == (4, 0)
    np.testing.assert_array_equal(net.forward()["ip"], 0)


def test_empty_blobs_flow_through_layers(tmp_path):
    """A zero-sized batch (Input dim 0) runs forward and backward without raw numpy errors."""
    text = ('force_backward: true\n' + _input([0, 3, 4, 5]) + _input([0, 1, 1, 1], "label") +
            'layer { name: "prelu" type: "PReLU" bottom: "data" top: "prelu" }\n'
            'layer { name: "am" type: "ArgMax" bottom: "prelu" top: "am" }\n'
            'layer { name: "ip" type: "InnerProduct" bottom: "prelu" top: "ip" inner_product_param { num_output: 2 } }\n'
            'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }\n')
    net = _net(tmp_path, text)
    out = net.forward()
    assert float(out["loss"]) == 0.0 and out["am"].size == 0
    net.backward()


def test_batchnorm_on_a_scalar_blob(tmp_path):
    with pytest.raises(NetError, match="layer 'bn'"):
        _net(tmp_path, _input([]) + 'layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" }')


def test_contrastive_loss_label_count(tmp_path):
    text = (_input([6, 4, 1, 1], "a") + _input([6, 4, 1, 1], "b") + _input([7, 1, 1, 1], "y") +
            'layer { name: "loss" type: "ContrastiveLoss" bottom: "a" bottom: "b" bottom: "y" top: "loss" }')
    with pytest.raises(NetError, match="layer 'loss'.*similarity label"):
        _net(tmp_path, text)


@pytest.mark.parametrize("shapes", [([6, 3, 1, 1, 2], [6, 3, 1, 1, 2]), ([6, 3, 1, 1], [6, 3, 1, 1, 2]),
                                    ([6, 3, 1, 1, 6, 3, 1, 1], [6, 3, 1, 1])])
def test_contrastive_loss_bottoms_of_more_than_four_axes(tmp_path, shapes):
    text = (_input(shapes[0], "a") + _input(shapes[1], "b") + _input([6, 1, 1, 1], "y") +
            'layer { name: "loss" type: "ContrastiveLoss" bottom: "a" bottom: "b" bottom: "y" top: "loss" }')
    with pytest.raises(NetError, match="layer 'loss'"):
        _net(tmp_path, text).forward()


def test_multinomial_logistic_loss_label_of_more_than_four_axes(tmp_path):
    text = (_input([6, 4], "p") + _input([6, 1, 1, 1, 2], "l") +
            'layer { name: "loss" type: "MultinomialLogisticLoss" bottom: "p" bottom: "l" top: "loss" }')
    with pytest.raises(NetError, match="layer 'loss'"):
        _net(tmp_path, text).forward()


def test_kernel_errors_name_the_layer(tmp_path):
    from pyskim.errors import KernelArgumentError
    with pytest.raises(KernelArgumentError, match=r"layer 'norm' \(LRN\): lrn_across_forward: k must be a finite number"):
        _net(tmp_path, _input([1, 3, 4, 4]) + 'layer { name: "norm" type: "LRN" bottom: "data" top: "norm" '
                                              'lrn_param { k: -inf } }').forward()


def _conformance_solver(shared_dir, tmp_path, monkeypatch, name, **fields):
    """A solver on a conformance case's net and LMDB, run from ``tmp_path`` (nothing written to ../shared)."""
    case = shared_dir / "conformance/solvers" / name
    if not case.is_dir():
        pytest.skip("conformance solver data not available")
    from google.protobuf import text_format
    param = text_format.Merge((case / "solver.prototxt").read_text(), caffe_pb2.SolverParameter())
    param.net = str(case / "net.prototxt")
    for key, value in fields.items():
        setattr(param, key, value)
    (tmp_path / "data_lmdb").symlink_to(case / "data_lmdb")
    monkeypatch.chdir(tmp_path)
    return pyskim.get_solver(param)


def test_learning_rate_overflow_is_inf(shared_dir, tmp_path, monkeypatch):
    solver = _conformance_solver(shared_dir, tmp_path, monkeypatch, "sgd_fixed", lr_policy="exp", gamma=1e30)
    solver.iter = 1000
    assert solver.get_learning_rate() == np.inf


@pytest.mark.parametrize("momenta", [(0.9, 4294967296.0), (1.0, 0.999), (2.0, 1e30), (0.9, -3.0)])
def test_adam_with_out_of_range_momenta(shared_dir, tmp_path, monkeypatch, momenta):
    """Caffe computes the bias correction in C (NaN / inf); it must not raise a math error."""
    momentum, momentum2 = momenta
    solver = _conformance_solver(shared_dir, tmp_path, monkeypatch, "adam", momentum=momentum,
                                 momentum2=momentum2)
    with np.errstate(all="ignore"):
        solver.step(2)


@pytest.mark.parametrize("path", ["a\0b.prototxt", "\0"])
def test_nul_byte_in_paths(tmp_path, path):
    from pyskim.io.upgrade import read_net_text
    with pytest.raises(ModelFileError):
        read_net_text(path)
    with pytest.raises(ModelFileError):
        pyskim.Net(path, pyskim.TEST)
    net = _net(tmp_path, _input([1, 2]))
    with pytest.raises(ModelFileError):
        net.copy_from(path)
    with pytest.raises(DataError):
        _net(tmp_path, 'layer { name: "d" type: "ImageData" top: "d" top: "l" '
                       f'image_data_param {{ source: "{path}" batch_size: 1 }} }}'.replace("\0", "\\000"))


@pytest.mark.parametrize("shape", [(0, 2**31 - 1, 2**31 - 1), (2, 2**16, 2**15)])
def test_datum_with_dimensions_too_large(shape):
    """An empty or short Datum whose dimensions span more than INT_MAX values (the fuzzer's edits)."""
    datum = caffe_pb2.Datum(channels=shape[0], height=shape[1], width=shape[2])
    with pytest.raises(BlobProtoError, match="too large"):
        pyskim.io.datum_to_array(datum)


@pytest.mark.parametrize("shape", [(1, -2, -2), (-1, 2, -2), (-3, -1, 1)])
def test_datum_with_negative_dimensions(shape):
    datum = caffe_pb2.Datum(channels=shape[0], height=shape[1], width=shape[2], data=bytes(4))
    with pytest.raises(BlobProtoError):
        pyskim.io.datum_to_array(datum)
    from pyskim.data.transformer import DataTransformer
    transformer = DataTransformer(caffe_pb2.TransformationParameter(), pyskim.TEST, "d")
    with pytest.raises(DataError, match="invalid shape"):
        transformer.datum_to_chw(datum, "record")


def test_blobproto_shape_overflowing_int64():
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend([2**62, 4, 0, 2**62])
    blob.data.extend([1.0])
    with pytest.raises(BlobProtoError):
        pyskim.io.blobproto_to_array(blob)


# -- HDF5 caffemodels and solver states --------------------------------------------------------------

LENET_LIKE = _input([1, 1, 6, 6]) + ('layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
                                     'convolution_param { num_output: 2 kernel_size: 3 } }')


def _h5(tmp_path, build, name="w.caffemodel.h5"):
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        build(f)
    path = tmp_path / name
    path.write_bytes(buffer.getvalue())
    return str(path)


BAD_WEIGHTS = {
    "scalar_layer": lambda f: f.create_dataset("data/conv", data=1.0),
    "group_blob": lambda f: f.create_group("data/conv/0"),
    "string_blob": lambda f: f.create_dataset("data/conv/0", data=np.array([b"x"] * 18).reshape(2, 1, 3, 3)),
    "complex_blob": lambda f: f.create_dataset("data/conv/0", data=np.zeros((2, 1, 3, 3), np.complex64)),
    "huge_blob": lambda f: f.create_dataset("data/conv/0", shape=(10**9, 10**9), dtype="f4"),
    "data_is_dataset": lambda f: f.create_dataset("data", data=np.zeros(3)),
    "too_many_blobs": lambda f: [f.create_dataset(f"data/conv/{i}", data=np.zeros(2)) for i in range(3)],
}


@pytest.mark.parametrize("case", sorted(BAD_WEIGHTS))
def test_malformed_hdf5_weights(tmp_path, case):
    path = _h5(tmp_path, BAD_WEIGHTS[case])
    net = _net(tmp_path, LENET_LIKE)
    with pytest.raises(PyskimError, match="w.caffemodel.h5"):
        net.copy_from(path)


def _state(**overrides):
    def build(f):
        values = {"iter": np.int32(3), "current_step": np.int32(0), "learned_net": np.bytes_(b"")}
        values.update(overrides)
        for key, value in values.items():
            if value is not None:
                f.create_dataset(key, data=value)
        group = f.create_group("history")
        for i, shape in enumerate(overrides.get("_history", [(2, 1, 3, 3), (2,)])):
            group.create_dataset(str(i), data=np.zeros(shape, np.float32))
    return build


BAD_STATES = {
    "iter_string": {"iter": np.bytes_(b"x")},
    "iter_array": {"iter": np.zeros(3)},
    "iter_missing": {"iter": None},
    "learned_net_number": {"learned_net": np.float32(1.5)},
}


@pytest.mark.parametrize("case", sorted(BAD_STATES))
def test_malformed_hdf5_solver_state(tmp_path, case):
    from pyskim.io.hdf5 import read_solver_state_hdf5
    path = _h5(tmp_path, _state(**{k: v for k, v in BAD_STATES[case].items()}), "s.solverstate.h5")
    with pytest.raises(ModelFileError, match="s.solverstate.h5"):
        read_solver_state_hdf5(path)


def test_hdf5_solver_state_round_trip_fields(tmp_path):
    from pyskim.io.hdf5 import read_solver_state_hdf5
    path = _h5(tmp_path, _state(learned_net=np.bytes_(b"model.caffemodel")), "s.solverstate.h5")
    iteration, learned_net, current_step, history = read_solver_state_hdf5(path)
    assert (iteration, learned_net, current_step) == (3, "model.caffemodel", 0)
    assert [h.shape for h in history] == [(2, 1, 3, 3), (2,)]


# -- every layer on odd bottom shapes ----------------------------------------------------------------

SWEEP_PARAMS = {
    "Convolution": "convolution_param { num_output: 2 kernel_size: 1 }",
    "Deconvolution": "convolution_param { num_output: 2 kernel_size: 1 }",
    "Pooling": "pooling_param { kernel_size: 1 }", "InnerProduct": "inner_product_param { num_output: 2 }",
    "LRN": "", "Im2col": "convolution_param { kernel_size: 1 }", "SPP": "spp_param { pyramid_height: 1 }",
    "Embed": "embed_param { input_dim: 5 num_output: 2 }", "Tile": "tile_param { tiles: 2 }",
    "Reshape": "reshape_param { shape { dim: -1 } }", "Slice": "", "Crop": "", "Filter": "", "BatchReindex": "",
    "Reduction": "", "ArgMax": "", "Softmax": "", "Flatten": "", "Concat": "", "Eltwise": "", "Scale": "",
    "Bias": "", "BatchNorm": "", "MVN": "", "PReLU": "", "Dropout": "", "Power": "", "Exp": "", "Log": "",
    "ELU": "", "Threshold": "", "Sigmoid": "", "TanH": "", "ReLU": "", "AbsVal": "", "BNLL": "",
    "Clip": "clip_param { min: 0 max: 1 }", "Swish": "", "Split": "", "Silence": "",
    "SoftmaxWithLoss": "", "EuclideanLoss": "", "SigmoidCrossEntropyLoss": "", "HingeLoss": "",
    "MultinomialLogisticLoss": "", "InfogainLoss": "", "Accuracy": "", "ContrastiveLoss": "",
}
SWEEP_BOTTOMS = {"Concat": 2, "Eltwise": 2, "Scale": 2, "Bias": 2, "Crop": 2, "Filter": 2, "BatchReindex": 2,
                 "SoftmaxWithLoss": 2, "EuclideanLoss": 2, "SigmoidCrossEntropyLoss": 2, "HingeLoss": 2,
                 "MultinomialLogisticLoss": 2, "Accuracy": 2, "InfogainLoss": 3, "ContrastiveLoss": 3}
SWEEP_SHAPES = [(), (3,), (0,), (2, 0), (2, 3), (2, 3, 4), (2, 3, 4, 5), (1, 2, 3, 4, 5), (2, 0, 4, 5),
                (2, 3, 0, 5), (1, 1, 1, 1), (2, 3, 1, 1, 1)]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")         # log(0) and the like on zero inputs
@pytest.mark.parametrize("layer_type", sorted(SWEEP_PARAMS))
def test_layers_on_odd_bottom_shapes(tmp_path, layer_type):
    """Scalar, empty, 1-D and 5-D bottoms (and mismatched pairs): each layer works or raises a
    PyskimError, in both phases, forward and backward."""
    import itertools
    n = SWEEP_BOTTOMS.get(layer_type, 1)
    combos = (itertools.product(SWEEP_SHAPES, repeat=n) if n <= 2
              else [(s, s, s) for s in SWEEP_SHAPES] + [((2, 3, 4), (2, 0), (3,))])
    top = "" if layer_type == "Silence" else 'top: "x" '
    for shapes in combos:
        names = [f"b{i}" for i in range(n)]
        text = "force_backward: true\n" + "".join(_input(s, name) for name, s in zip(names, shapes))
        text += (f'layer {{ name: "x" type: "{layer_type}" ' + "".join(f'bottom: "{b}" ' for b in names) + top
                 + SWEEP_PARAMS[layer_type] + " }\n")
        for phase in (pyskim.TEST, pyskim.TRAIN):
            try:
                net = _net(tmp_path, text, phase)
                net.forward()
                net.backward()
            except PyskimError:
                pass


@pytest.mark.parametrize("layer", [
    'type: "Pooling" pooling_param { pool: MAX kernel_size: 2 stride: 4294967295 }',
    'type: "Pooling" pooling_param { pool: AVE kernel_size: 1073741825 pad: 1073741824 stride: 2147483647 }',
    'type: "Convolution" convolution_param { num_output: 1 kernel_size: 2 stride: 4294967295 }',
    'type: "Deconvolution" convolution_param { num_output: 1 kernel_size: 2 stride: 2147483647 }',
])
def test_geometry_beyond_32_bits_is_refused_before_the_kernels(tmp_path, layer):
    """Layers that call the compiled kernels directly check the geometry as the wrappers do."""
    with pytest.raises(PyskimError, match="layer 'x'.*32-bit"):
        _net(tmp_path, _input([1, 1, 28, 28]) + f'layer {{ name: "x" bottom: "data" top: "x" {layer} }}').forward()
