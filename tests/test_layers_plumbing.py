"""Plumbing layers, InnerProduct and DummyData beyond the conformance cases: numeric gradient checks over
several parameter settings, Caffe's tie rules, blob sharing, the sparse-engine hooks, and errors."""
import numpy as np
import pytest
from gradcheck import GradientChecker, build_layer

import pyskim
from pyskim.core.blob import Blob
from pyskim.errors import NetError
from pyskim.io.protofiles import parse_text
from pyskim.layers import create_layer
from pyskim.layers.inner_product import InnerProductLayer
from pyskim.proto import caffe_pb2


def randn(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def checked(text, arrays, checker, num_top=1, check_bottom=None, eltwise=False):
    """Build the layer, run ``checker`` over it (Caffe's CheckGradient, or CheckGradientEltwise when
    ``eltwise``) and return ``(layer, bottom, top)`` as the unperturbed inputs leave them."""
    layer, bottom, top = build_layer(text, arrays, num_top)
    if eltwise:
        checker.check_gradient_eltwise(layer, bottom, top)
    else:
        checker.check_gradient(layer, bottom, top, check_bottom)
    return layer, bottom, top


# -- gradients -----------------------------------------------------------------------------------------
# Caffe's stepsize for each type: 1e-4 for Eltwise MAX and BatchReindex, 1e-3 for Crop, 1e-2 otherwise.
# The threshold is 1e-3 throughout: Caffe's for InnerProduct, Eltwise, Slice, Filter, Embed and Crop,
# tighter than its 1e-2 (Concat, Tile, Flatten, BatchReindex) and 2e-3 (Reduction), since these copy
# or sum values (the estimates are exact to 1e-5) and the check they replaced was as strict.
CHECKER = GradientChecker(1e-2, 1e-3)
SMALL_STEP_CHECKER = GradientChecker(1e-4, 1e-3)
IP_FILLERS = "weight_filler { type: 'gaussian' std: 0.5 } bias_filler { type: 'gaussian' std: 0.5 }"


@pytest.mark.parametrize("extra, shape", [
    ("", (3, 4, 2)),
    ("transpose: true", (3, 4, 2)),
    ("axis: 2", (2, 3, 4, 2)),
    ("axis: -1 bias_term: false", (2, 3, 5)),
])
def test_inner_product_gradient(extra, shape):
    text = f"name: 'ip' type: 'InnerProduct' inner_product_param {{ num_output: 3 {extra} {IP_FILLERS} }}"
    layer = checked(text, [randn(*shape)], CHECKER)[0]
    assert len(layer.blobs) == (1 if "bias_term: false" in extra else 2)
    k = int(np.prod(shape[(2 if "axis: 2" in extra else len(shape) - 1 if "-1" in extra else 1):]))
    assert layer.blobs[0].shape == ((k, 3) if "transpose" in extra else (3, k))


def test_inner_product_param_diff_accumulates():
    text = f"name: 'ip' type: 'InnerProduct' inner_product_param {{ num_output: 2 {IP_FILLERS} }}"
    layer, bottom, top = build_layer(text, [randn(3, 4)])
    layer.forward(bottom, top)
    top[0].diff[...] = randn(3, 2, seed=2)
    layer.backward(top, [True], bottom)
    once = [b.diff.copy() for b in layer.blobs]
    layer.backward(top, [True], bottom)
    for blob, first in zip(layer.blobs, once):
        np.testing.assert_allclose(blob.diff, 2 * first, rtol=1e-6)


def test_inner_product_engine_slot():
    """The slot the sparse package fills: an engine computes the top when its forward says it did,
    the dense product runs when it declines, and the engine is told when the net loads weights."""
    class DoublingEngine:
        def __init__(self, layer):
            self.layer, self.computes, self.repacks = layer, True, 0

        def weights_changed(self):
            self.repacks += 1

        def forward(self, bottom, top):
            if self.computes:
                weight, bias = (blob.data for blob in self.layer.blobs)
                top[0].data[...] = 2 * bottom[0].data @ weight.T + bias
            return self.computes

    net = pyskim.Net(parse_text(
        "layer { name: 'x' type: 'Input' top: 'x' input_param { shape { dim: 3 dim: 4 } } } "
        f"layer {{ name: 'ip' type: 'InnerProduct' bottom: 'x' top: 'y' inner_product_param {{ num_output: 2 "
        f"{IP_FILLERS} }} }}", caffe_pb2.NetParameter()), pyskim.TEST)
    layer = net.layer_by_name("ip")
    assert isinstance(layer, InnerProductLayer)
    engine = layer.engine = DoublingEngine(layer)
    net.copy_trained_layers_from_param(net.to_proto())
    assert engine.repacks == 1
    x = randn(3, 4)
    net.blobs["x"].data[...] = x
    weight, bias = (blob.data.astype(np.float64) for blob in layer.blobs)
    for computes, factor in ((True, 2), (False, 1)):
        engine.computes = computes
        net.forward_prefilled()
        np.testing.assert_allclose(net.blobs["y"].data, factor * x @ weight.T + bias, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("extra, checker", [
    ("operation: PROD", CHECKER),
    ("operation: PROD stable_prod_grad: false", CHECKER),
    ("operation: SUM coeff: 0.5 coeff: -2 coeff: 1", CHECKER),
    ("operation: MAX", SMALL_STEP_CHECKER),
])
def test_eltwise_gradient(extra, checker):
    arrays = [randn(2, 3, 4, seed=s) for s in range(3)]
    checked(f"name: 'e' type: 'Eltwise' eltwise_param {{ {extra} }}", arrays, checker, eltwise=True)


@pytest.mark.parametrize("text, shapes, num_top", [
    ("type: 'Concat' concat_param { axis: 0 }", [(2, 3), (1, 3)], 1),
    ("type: 'Concat' concat_param { concat_dim: 1 }", [(2, 3, 2), (2, 1, 2), (2, 2, 2)], 1),
    ("type: 'Concat' concat_param { axis: -1 }", [(2, 3), (2, 4)], 1),
    ("type: 'Slice' slice_param { axis: -1 slice_point: 1 slice_point: 3 }", [(2, 3, 5)], 3),
    ("type: 'Slice' slice_param { slice_dim: 0 }", [(4, 3)], 2),
    ("type: 'Tile' tile_param { axis: 1 tiles: 3 }", [(2, 3, 2)], 1),
    ("type: 'Tile' tile_param { axis: 0 tiles: 2 }", [(2, 3)], 1),
    ("type: 'Reduction' reduction_param { operation: SUM axis: 1 coeff: 2 }", [(2, 3, 2)], 1),
    ("type: 'Reduction' reduction_param { operation: ASUM axis: 0 }", [(2, 3, 2)], 1),
    ("type: 'Reduction' reduction_param { operation: SUMSQ axis: 2 coeff: -0.5 }", [(2, 3, 2)], 1),
    ("type: 'Reduction' reduction_param { operation: MEAN axis: -1 coeff: 3 }", [(2, 3, 2)], 1),
])
def test_plumbing_gradient(text, shapes, num_top):
    """Caffe checks these against each top element in turn; one check against random coefficients on
    all top elements covers the same Jacobian at a fraction of the cost."""
    arrays = [randn(*shape, seed=i) for i, shape in enumerate(shapes)]
    checked(f"name: 'l' {text}", arrays, CHECKER, num_top=num_top)


@pytest.mark.parametrize("text, shape", [
    ("type: 'Flatten' flatten_param { axis: 1 end_axis: 2 }", (2, 3, 2, 2)),
    ("type: 'Reshape' reshape_param { shape { dim: 0 dim: -1 } axis: 1 }", (2, 3, 2, 2)),
])
def test_flatten_and_reshape_gradient(text, shape):
    """Copies of the bottom, element by element: Caffe's Flatten test checks them as such."""
    checked(f"name: 'l' {text}", [randn(*shape)], CHECKER, eltwise=True)


def test_crop_gradient_and_reference():
    text = "name: 'c' type: 'Crop' crop_param { axis: 1 offset: 1 offset: 0 offset: 2 }"
    layer, bottom, top = checked(text, [randn(2, 4, 3, 5), np.zeros((9, 2, 3, 2))], GradientChecker(1e-3, 1e-3),
                                 check_bottom=0)
    np.testing.assert_array_equal(top[0].data, bottom[0].data[:, 1:3, 0:3, 2:4])
    bottom[1].diff[...] = 7
    layer.backward(top, [True, True], bottom)
    assert (bottom[1].diff == 7).all()  # the reference bottom never gets a gradient


def test_batch_reindex_and_filter_gradients():
    index = np.array([2, 0, 2, 1], dtype=np.float32)
    _, bottom, top = checked("name: 'r' type: 'BatchReindex'", [randn(3, 2, 2), index],
                             SMALL_STEP_CHECKER, check_bottom=0)
    np.testing.assert_array_equal(top[0].data, bottom[0].data[[2, 0, 2, 1]])
    selector = np.array([1, 0, 0, 2.5, 1], dtype=np.float32)
    _, bottom, top = checked("name: 'f' type: 'Filter'", [randn(5, 3), randn(5, 2), selector],
                             CHECKER, num_top=2, check_bottom=(0, 1))
    assert top[0].shape == (3, 3) and top[1].shape == (3, 2)
    assert (bottom[0].diff[[1, 2]] == 0).all()


def test_filter_setup_keeps_the_full_batch():
    layer, bottom, top = build_layer("name: 'f' type: 'Filter'", [randn(4, 2), np.array([0, 1, 0, 0])])
    assert top[0].shape == (4, 2)  # Caffe's first Reshape ignores the selector
    layer.forward(bottom, top)
    assert top[0].shape == (1, 2)


def test_embed_gradient_accumulates_repeated_indices():
    text = ("name: 'e' type: 'Embed' embed_param { input_dim: 5 num_output: 3 "
            "weight_filler { type: 'gaussian' } bias_filler { type: 'gaussian' } }")
    index = np.array([[1, 4], [1, 1]], dtype=np.float32)
    layer, bottom, top = checked(text, [index], CHECKER, check_bottom=())
    top[0].diff[...] = 1
    layer.blobs[0].diff[...] = 0
    layer.backward(top, [False], bottom)
    np.testing.assert_array_equal(layer.blobs[0].diff[:, 0], [0, 3, 0, 0, 1])


# -- Caffe's tie rules ---------------------------------------------------------------------------------
def test_argmax_ties_rank_larger_index_first():
    x = np.array([[1, 3, 3, 0, 3], [2, 2, 2, 2, 2]], dtype=np.float32)
    layer, bottom, top = build_layer("name: 'a' type: 'ArgMax' argmax_param { top_k: 3 out_max_val: true }", [x])
    layer.forward(bottom, top)
    assert top[0].shape == (2, 2, 3)
    np.testing.assert_array_equal(top[0].data[:, 0], [[4, 2, 1], [4, 3, 2]])
    np.testing.assert_array_equal(top[0].data[:, 1], [[3, 3, 3], [2, 2, 2]])
    layer, bottom, top = build_layer("name: 'a' type: 'ArgMax' argmax_param { axis: 0 top_k: 2 }", [x.T.copy()])
    layer.forward(bottom, top)
    np.testing.assert_array_equal(top[0].data, [[4, 4], [2, 3]])


def test_eltwise_max_ties():
    """Bottom 1 wins a tie with bottom 0 (Caffe tests ``a > b``); later bottoms need a strictly larger value."""
    a = np.array([1, 2, 5], dtype=np.float32)
    b = np.array([1, 0, 5], dtype=np.float32)
    c = np.array([0, 2, 5], dtype=np.float32)
    layer, bottom, top = build_layer("name: 'm' type: 'Eltwise' eltwise_param { operation: MAX }", [a, b, c])
    layer.forward(bottom, top)
    top[0].diff[...] = 1
    layer.backward(top, [True] * 3, bottom)
    np.testing.assert_array_equal([blob.diff for blob in bottom], [[0, 1, 0], [1, 0, 1], [0, 0, 0]])


# -- sharing -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, shape", [
    ("type: 'Flatten'", (2, 12)),
    ("type: 'Flatten' flatten_param { axis: 0 end_axis: 1 }", (6, 4)),
    ("type: 'Reshape' reshape_param { shape { dim: -1 dim: 2 } }", (12, 2)),
    ("type: 'Reshape' reshape_param { shape { dim: 3 dim: 1 } axis: 1 num_axes: 1 }", (2, 3, 1, 4)),
    ("type: 'Reshape' reshape_param { shape { dim: 1 } axis: -1 num_axes: 0 }", (2, 3, 4, 1)),
    ("type: 'Concat'", (2, 3, 4)),
    ("type: 'Slice'", (2, 3, 4)),
])
def test_alias_tops_share_data_and_diff(text, shape):
    layer, bottom, top = build_layer(f"name: 'l' {text}", [randn(2, 3, 4)])
    layer.forward(bottom, top)
    assert top[0].shape == shape
    bottom[0].data[...] = 5
    top[0].diff[...] = 3
    assert (top[0].data == 5).all() and (bottom[0].diff == 3).all()


def test_parameter_top_is_the_blob():
    layer, bottom, top = build_layer("name: 'p' type: 'Parameter' parameter_param { shape { dim: 2 dim: 3 } }", [])
    assert layer.blobs[0].shape == (2, 3) and (layer.blobs[0].data == 0).all()
    layer.forward(bottom, top)
    layer.blobs[0].data[...] = 4
    top[0].diff[...] = 2
    assert (top[0].data == 4).all() and (layer.blobs[0].diff == 2).all()


def test_silence_zeroes_diffs():
    layer, bottom, top = build_layer("name: 's' type: 'Silence'", [randn(2), randn(3)], num_top=0)
    for blob in bottom:
        blob.diff[...] = 9
    layer.backward(top, [True, False], bottom)
    assert (bottom[0].diff == 0).all() and (bottom[1].diff == 9).all()


# -- DummyData -----------------------------------------------------------------------------------------
def test_dummy_data_refills_only_non_constant_tops():
    pyskim.set_random_seed(3)
    text = ("name: 'd' type: 'DummyData' dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 4 } "
            "data_filler { type: 'constant' value: 1.5 } data_filler { type: 'gaussian' } }")
    layer, bottom, top = build_layer(text, [], num_top=2)
    assert top[0].shape == (2, 3) and top[1].shape == (4,)
    assert (top[0].data == 1.5).all() and (top[1].data == 0).all()  # gaussian tops wait for forward
    top[0].data[...] = 7
    layer.forward(bottom, top)
    first = top[1].data.copy()
    layer.forward(bottom, top)
    assert (top[0].data == 7).all()
    assert first.std() > 0 and not np.array_equal(first, top[1].data)


def test_dummy_data_legacy_dims_and_default_filler():
    text = "name: 'd' type: 'DummyData' dummy_data_param { num: 2 channels: 3 height: 1 width: 4 width: 5 }"
    layer, bottom, top = build_layer(text, [], num_top=2)
    layer.forward(bottom, top)
    assert top[0].shape == (2, 3, 1, 4) and top[1].shape == (2, 3, 1, 5)
    assert (top[0].data == 0).all() and (top[1].data == 0).all()


# -- errors --------------------------------------------------------------------------------------------
BAD = [
    ("type: 'InnerProduct'", [(2, 3)], 1, "num_output"),
    ("type: 'InnerProduct' inner_product_param { num_output: 2 axis: 3 }", [(2, 3)], 1, "axis"),
    ("type: 'Concat' concat_param { axis: 1 concat_dim: 1 }", [(2, 3), (2, 3)], 1, "concat_dim"),
    ("type: 'Concat'", [(2, 3), (3, 3)], 1, "same shape"),
    ("type: 'Concat' concat_param { concat_dim: 2 }", [(2, 3), (2, 3)], 1, "concat_dim"),
    ("type: 'Slice' slice_param { slice_point: 1 }", [(2, 3)], 3, "slice_point"),
    ("type: 'Slice' slice_param { slice_point: 2 slice_point: 2 }", [(2, 3)], 3, "slice_point"),
    ("type: 'Slice'", [(2, 3)], 2, "evenly divide"),
    ("type: 'Eltwise' eltwise_param { coeff: 1 }", [(2,), (2,)], 1, "coeff"),
    ("type: 'Eltwise' eltwise_param { operation: PROD coeff: 1 coeff: 2 }", [(2,), (2,)], 1, "SUM"),
    ("type: 'Eltwise'", [(2,), (3,)], 1, "shape"),
    ("type: 'Flatten' flatten_param { axis: 2 end_axis: 1 }", [(2, 3, 4)], 1, "end_axis"),
    ("type: 'Reshape' reshape_param { shape { dim: -1 dim: -1 } }", [(2, 3)], 1, "-1"),
    ("type: 'Reshape' reshape_param { shape { dim: 4 dim: -1 } }", [(2, 3)], 1, "divisible"),
    ("type: 'Reshape' reshape_param { shape { dim: 5 } }", [(2, 3)], 1, "count"),
    ("type: 'Reshape' reshape_param { shape { dim: 0 dim: 0 dim: 0 } }", [(2, 3)], 1, "copy"),
    ("type: 'Crop' crop_param { offset: 3 }", [(1, 1, 4, 4), (1, 1, 2, 2)], 1, "out-of-bounds"),
    ("type: 'Crop' crop_param { offset: 1 offset: 1 offset: 1 }", [(1, 1, 4, 4), (1, 1, 2, 2)], 1, "offset"),
    ("type: 'Tile'", [(2, 3)], 1, "tiles"),
    ("type: 'Tile' tile_param { tiles: 2 axis: 2 }", [(2, 3)], 1, "tile_param.axis"),
    ("type: 'Reduction' reduction_param { axis: 3 }", [(2, 3)], 1, "reduction_param.axis"),
    ("type: 'ArgMax' argmax_param { top_k: 4 }", [(2, 3)], 1, "top_k"),
    ("type: 'ArgMax' argmax_param { top_k: 3 axis: 0 }", [(2, 3)], 1, "top_k"),
    ("type: 'Embed' embed_param { input_dim: 3 }", [(2,)], 1, "num_output"),
    ("type: 'Filter'", [(2, 3), (2, 3), (2,)], 1, "one top per"),
    ("type: 'Filter'", [(2, 3), (2, 3)], 1, "selector"),
    ("type: 'BatchReindex'", [(2, 3), (2, 2)], 1, "1-D"),
    ("type: 'DummyData' dummy_data_param { shape { dim: 1 } data_filler { } data_filler { } }", [], 3,
     "data_filler"),
    ("type: 'DummyData' dummy_data_param { shape { dim: 1 } num: 1 }", [], 1, "legacy"),
    ("type: 'DummyData' dummy_data_param { num: 1 channels: 1 height: 1 }", [], 1, "width"),
    ("type: 'DummyData' dummy_data_param { shape { dim: 1 } shape { dim: 2 } }", [], 3, "shape"),
]


@pytest.mark.parametrize("text, shapes, num_top, field", BAD, ids=[f"{b[0][7:20]}-{b[3]}" for b in BAD])
def test_bad_parameters_name_layer_and_field(text, shapes, num_top, field):
    with pytest.raises(NetError, match=field) as info:
        build_layer(f"name: 'bad' {text}", [np.zeros(s, dtype=np.float32) for s in shapes], num_top)
    assert "'bad'" in str(info.value)


def test_in_place_and_backward_refusals():
    with pytest.raises(NetError, match="in-place"):
        layer = create_layer(parse_text("name: 'f' type: 'Flatten'", caffe_pb2.LayerParameter()))
        blob = Blob((2, 3))
        layer.setup([blob], [blob])
    cases = [
        ("type: 'Embed' embed_param { input_dim: 3 num_output: 2 }", [np.array([0, 2.0])], [True], "index"),
        ("type: 'Filter'", [randn(2, 3), np.array([1.0, 0])], [False, True], "selector"),
        ("type: 'BatchReindex'", [randn(2, 3), np.array([1.0])], [True, True], "index"),
    ]
    for text, arrays, down, word in cases:
        layer, bottom, top = build_layer(f"name: 'x' {text}", arrays)
        layer.forward(bottom, top)
        with pytest.raises(NetError, match=word):
            layer.backward(top, down, bottom)


@pytest.mark.parametrize("text, arrays", [
    ("type: 'Embed' embed_param { input_dim: 3 num_output: 2 }", [np.array([0, 3.0])]),
    ("type: 'Embed' embed_param { input_dim: 3 num_output: 2 }", [np.array([0.5])]),
    ("type: 'BatchReindex'", [np.zeros((2, 3)), np.array([-1.0])]),
    ("type: 'BatchReindex'", [np.zeros((2, 3)), np.array([2.0])]),
])
def test_bad_indices(text, arrays):
    layer, bottom, top = build_layer(f"name: 'bad' {text}", arrays)
    with pytest.raises(NetError, match="'bad'.*indices"):
        layer.forward(bottom, top)
