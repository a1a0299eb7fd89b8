"""The gradient checker itself (tests/gradcheck.py): it passes correct layers in every mode, fails
layers whose backward is wrong by a factor, by one element or by a cross term, skips kinks only where
told, and leaves the layer's inputs as it found them."""
import numpy as np
import pytest
from gradcheck import GradientChecker

from pyskim.core.blob import Blob
from pyskim.io.protofiles import parse_text
from pyskim.layers import create_layer
from pyskim.proto import caffe_pb2

INNER_PRODUCT = ("name: 'ip' type: 'InnerProduct' inner_product_param { num_output: 3 "
                 "weight_filler { type: 'gaussian' std: 0.5 } bias_filler { type: 'gaussian' std: 0.5 } }")
RELU = "name: 'relu' type: 'ReLU'"


def build(text, *arrays):
    """The layer ``text`` describes, set up on bottoms holding ``arrays``, with one top."""
    layer = create_layer(parse_text(text, caffe_pb2.LayerParameter()))
    bottom = []
    for array in arrays:
        blob = Blob(np.shape(array))
        blob.data[...] = array
        bottom.append(blob)
    top = [Blob()]
    layer.setup(bottom, top)
    return layer, bottom, top


def randn(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def corrupt_backward(layer, change):
    """Make ``layer``'s backward call ``change(layer, bottom)`` after computing the right diffs."""
    right = layer.backward_cpu

    def wrong(top, propagate_down, bottom):
        right(top, propagate_down, bottom)
        change(layer, bottom)

    layer.backward_cpu = wrong


def scale_bottom_diff(factor):
    def change(layer, bottom):
        bottom[0].diff[...] *= np.float32(factor)
    return change


# -- correct layers pass ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["per element", "directional", "exhaustive"])
def test_correct_layer_passes(mode):
    layer, bottom, top = build(INNER_PRODUCT, randn(2, 4))
    if mode == "exhaustive":
        GradientChecker(1e-2, 1e-3).check_gradient_exhaustive(layer, bottom, top)
    else:
        GradientChecker(1e-2, 1e-3, directions=3 if mode == "directional" else 0).check_gradient(
            layer, bottom, top)


def test_correct_eltwise_layer_passes():
    GradientChecker(1e-2, 1e-3, kink=0, kink_range=0.01).check_gradient_eltwise(*build(RELU, randn(3, 5)))


# -- wrong backwards fail ----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["per element", "directional", "exhaustive", "single"])
def test_bottom_diff_off_by_a_factor_fails(mode):
    layer, bottom, top = build(INNER_PRODUCT, randn(2, 4))
    corrupt_backward(layer, scale_bottom_diff(1.01))
    checker = GradientChecker(1e-2, 1e-3, directions=2 if mode == "directional" else 0)
    with pytest.raises(AssertionError, match="'ip'.*InnerProduct") as info:
        if mode == "exhaustive":
            checker.check_gradient_exhaustive(layer, bottom, top)
        elif mode == "single":
            checker.check_gradient_single(layer, bottom, top, 0, 0, 4)
        else:
            checker.check_gradient(layer, bottom, top)
    assert "bottom 0" in str(info.value)


def test_param_diff_off_by_a_factor_fails():
    def change(layer, bottom):
        layer.blobs[0].diff[...] *= np.float32(0.99)

    layer, bottom, top = build(INNER_PRODUCT, randn(2, 4))
    corrupt_backward(layer, change)
    with pytest.raises(AssertionError) as info:
        GradientChecker(1e-2, 1e-3).check_gradient(layer, bottom, top)
    assert "param 0" in str(info.value) and "bottom 0" not in str(info.value)
    assert "param 1" not in str(info.value)


def test_one_wrong_element_is_found_and_named():
    def change(layer, bottom):
        bottom[0].diff[1, 2] += np.float32(0.01)

    layer, bottom, top = build(INNER_PRODUCT, randn(2, 4))
    corrupt_backward(layer, change)
    with pytest.raises(AssertionError, match=r"failed for 1 value\(s\)") as info:
        GradientChecker(1e-2, 1e-3).check_gradient(layer, bottom, top)
    assert "bottom 0 at (1, 2)" in str(info.value)


def test_an_element_backward_leaves_unwritten_fails():
    def change(layer, bottom):
        bottom[0].diff[0, 0] = np.nan

    layer, bottom, top = build(INNER_PRODUCT, randn(2, 4))
    corrupt_backward(layer, change)
    with pytest.raises(AssertionError, match=r"bottom 0 at \(0, 0\).*backward nan"):
        GradientChecker(1e-2, 1e-3).check_gradient(layer, bottom, top)


def test_wrong_eltwise_backward_fails():
    layer, bottom, top = build("name: 'sig' type: 'Sigmoid'", randn(3, 5))
    corrupt_backward(layer, scale_bottom_diff(1.01))
    with pytest.raises(AssertionError, match="'sig'"):
        GradientChecker(1e-2, 1e-3).check_gradient_eltwise(layer, bottom, top)


def test_eltwise_mode_fails_a_layer_that_mixes_elements():
    """Softmax's top_i depends on every bottom_j of its row: the eltwise check must not pass it."""
    with pytest.raises(AssertionError, match="Softmax"):
        GradientChecker(1e-2, 1e-3).check_gradient_eltwise(*build("name: 'sm' type: 'Softmax'", randn(3, 5)))


def test_threshold_is_relative_to_the_larger_magnitude_or_one():
    """Caffe's test is ``|a - b| <= threshold * max(|a|, |b|, 1)``. Weight gradients of about 10 that
    are 0.5 % off pass 1e-2 and fail 1e-3 although the absolute error is far above both; bottom
    gradients below 1 that are 5e-3 off are judged against ``threshold * 1``, the same way."""
    def scale_weight_diff(layer, bottom):
        layer.blobs[0].diff[...] *= np.float32(1.005)

    def shift_bottom_diff(layer, bottom):
        bottom[0].diff[...] += np.float32(5e-3)

    for change, inputs, check_bottom in ((scale_weight_diff, randn(2, 4) * 10, ()),
                                         (shift_bottom_diff, randn(2, 4), 0)):
        layer, bottom, top = build(INNER_PRODUCT, inputs)
        corrupt_backward(layer, change)
        GradientChecker(1e-2, 1e-2).check_gradient(layer, bottom, top, check_bottom)
        with pytest.raises(AssertionError):
            GradientChecker(1e-2, 1e-3).check_gradient(layer, bottom, top, check_bottom)


# -- kinks ---------------------------------------------------------------------------------------------------
def test_kink_skipping():
    """An input 0.004 from ReLU's kink makes the central difference straddle it: the check fails
    there unless the kink region covers it, and then still checks every other element."""
    leaky_relu = "name: 'relu' type: 'ReLU' relu_param { negative_slope: 0.5 }"
    x = randn(3, 5)
    x[1, 1] = 0.004
    with pytest.raises(AssertionError, match=r"failed for 1 value\(s\).*\n.*bottom 0 at \(1, 1\)"):
        GradientChecker(1e-2, 1e-3).check_gradient_eltwise(*build(leaky_relu, x))
    with_kink = GradientChecker(1e-2, 1e-3, kink=0, kink_range=0.01)
    with_kink.check_gradient_eltwise(*build(leaky_relu, x))
    with_kink.check_gradient(*build(leaky_relu, x))
    layer, bottom, top = build(leaky_relu, x)
    corrupt_backward(layer, scale_bottom_diff(1.01))
    with pytest.raises(AssertionError) as info:
        with_kink.check_gradient_eltwise(layer, bottom, top)
    assert "bottom 0 at (0, 0)" in str(info.value) and "(1, 1)" not in str(info.value)


def test_kink_region_is_symmetric_in_the_value():
    """Caffe's region is ``kink - range <= |x| <= kink + range``: HingeLoss's kinks at +1 and -1."""
    checker = GradientChecker(1e-2, 1e-3, kink=1, kink_range=0.01)
    values = np.array([-1.02, -1.005, -0.5, 0.0, 0.995, 1.0, 1.5], np.float32)
    np.testing.assert_array_equal(checker.near_kink(values), [False, True, False, False, True, True, False])
    assert not GradientChecker(1e-2, 1e-3).near_kink(np.zeros(3, np.float32)).any()


# -- side effects --------------------------------------------------------------------------------------------
def test_inputs_are_restored_and_tops_recomputed():
    layer, bottom, top = build(INNER_PRODUCT, randn(2, 4))
    x, weights = bottom[0].data.copy(), [blob.data.copy() for blob in layer.blobs]
    GradientChecker(1e-2, 1e-3).check_gradient(layer, bottom, top)
    np.testing.assert_array_equal(bottom[0].data, x)
    for blob, before in zip(layer.blobs, weights):
        np.testing.assert_array_equal(blob.data, before)
    expected = x.astype(np.float64) @ weights[0].T.astype(np.float64) + weights[1]
    np.testing.assert_allclose(top[0].data, expected, rtol=1e-5, atol=1e-6)


def test_refusals():
    """Eltwise mode takes no layer with parameters; no mode takes an in-place layer."""
    with pytest.raises(ValueError, match="parameter"):
        GradientChecker(1e-2, 1e-3).check_gradient_eltwise(*build(INNER_PRODUCT, randn(2, 4)))
    layer = create_layer(parse_text(RELU, caffe_pb2.LayerParameter()))
    blob = Blob((2, 3))
    layer.setup([blob], [blob])
    for check in (GradientChecker(1e-2, 1e-3).check_gradient, GradientChecker(1e-2, 1e-3).check_gradient_eltwise):
        with pytest.raises(ValueError, match="in-place"):
            check(layer, [blob], [blob])
