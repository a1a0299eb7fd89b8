"""Neuron and normalisation layers beyond the conformance cases: numeric gradient checks, in-place
equivalence, Caffe's accumulate/overwrite rules for param gradients, running statistics, bad params."""
import numpy as np
import pytest
from google.protobuf import text_format
from gradcheck import GradientChecker

import pyskim
from pyskim.core.blob import Blob
from pyskim.errors import NetError
from pyskim.layers import create_layer
from pyskim.proto import caffe_pb2


def make_layer(text, phase=caffe_pb2.TRAIN):
    param = text_format.Parse(text, caffe_pb2.LayerParameter())
    param.name = param.name or "under_test"
    param.phase = phase
    return create_layer(param)


def blob_of(array):
    blob = Blob(array.shape)
    blob.data[...] = array
    return blob


def away_from(x, kinks, margin=0.05):
    """Push values off non-differentiable points."""
    for k in kinks:
        near = np.abs(x - k) < margin
        x[near] = k + np.where(x[near] >= k, 2, -2) * margin
    return x


def set_up(text, inputs, phase=caffe_pb2.TRAIN):
    """The layer ``text`` describes, set up on float32 bottoms holding ``inputs``, with one top."""
    layer = make_layer(text, phase)
    bottom = [blob_of(np.asarray(x, np.float32)) for x in inputs]
    top = [Blob()]
    layer.setup(bottom, top)
    return layer, bottom, top


RNG = np.random.default_rng(1234)
X4 = RNG.standard_normal((2, 3, 4, 5))
POSITIVE = RNG.uniform(0.2, 2.0, (2, 3, 4))

# Caffe's checker settings for each type (test_neuron_layer.cpp, test_power_layer.cpp): stepsize,
# threshold 1e-3 and, for types with a kink at 0, the skipped range |x| <= 0.01. Power and Log have
# 1e-3 too, where Caffe has 1e-2: their estimates are good to 2e-4 and the check they replaced was
# as strict.
AT_ZERO_KINK = {"kink": 0.0, "kink_range": 0.01}
RELU_LIKE = GradientChecker(1e-2, 1e-3, **AT_ZERO_KINK)
SMOOTH = GradientChecker(1e-2, 1e-3)
POWER = GradientChecker(1e-3, 1e-3, **AT_ZERO_KINK)

# Element-wise types are checked as Caffe's CheckGradientEltwise does.
ELTWISE_CASES = [
    ('type: "ReLU" relu_param { negative_slope: 0.2 }', [X4], RELU_LIKE),
    ('type: "ELU" elu_param { alpha: 0.7 }', [X4], RELU_LIKE),
    ('type: "Sigmoid"', [X4], RELU_LIKE),
    ('type: "TanH"', [X4], SMOOTH),
    ('type: "AbsVal"', [X4], RELU_LIKE),
    ('type: "Power" power_param { power: 2 scale: 0.5 shift: 1 }', [X4], POWER),
    ('type: "Power" power_param { power: 3 scale: 0.5 }', [POSITIVE], POWER),
    ('type: "Power" power_param { power: 0.5 scale: 2 shift: 0.1 }', [POSITIVE], POWER),
    ('type: "Power" power_param { power: 1 scale: -1.5 shift: 0.3 }', [X4], POWER),
    ('type: "Power" power_param { power: 0 scale: 2 shift: 3 }', [X4], POWER),
    ('type: "Exp" exp_param { base: 2 scale: 0.5 shift: 0.1 }', [X4], SMOOTH),
    ('type: "Exp"', [X4], SMOOTH),
    ('type: "Log" log_param { base: 10 scale: 2 shift: 0.5 }', [POSITIVE], SMOOTH),
    ('type: "BNLL"', [X4 * 3], SMOOTH),
    # Two kinks, at -0.5 and 0.7, which Caffe's one |x| == kink region cannot describe: the inputs
    # stay 0.05 away from them instead.
    ('type: "Clip" clip_param { min: -0.5 max: 0.7 }', [away_from(X4.copy(), [-0.5, 0.7])], SMOOTH),
    ('type: "Swish" swish_param { beta: 1.5 }', [X4], RELU_LIKE),
    ('type: "Dropout" dropout_param { dropout_ratio: 0.3 }', [X4], SMOOTH),
]


@pytest.mark.parametrize("text,inputs,checker", ELTWISE_CASES,
                         ids=[c[0].split()[1] + str(i) for i, c in enumerate(ELTWISE_CASES)])
def test_neuron_gradients(text, inputs, checker):
    checker.check_gradient_eltwise(*set_up(text, inputs))


# Types with learnable parameters. Caffe runs these exhaustively (one check per top element); one
# check of every bottom and parameter element against random coefficients on all top elements
# covers the same Jacobian at a 120th of the cost.
BATCH_NORM = GradientChecker(1e-2, 5e-4)  # Caffe's 1e-4 is under the float32 rounding of the top here
PARAM_CASES = [
    ('type: "PReLU" prelu_param { filler { type: "uniform" min: 0.1 max: 0.5 } }', [X4], RELU_LIKE),
    ('type: "PReLU" prelu_param { channel_shared: true }', [X4], RELU_LIKE),
    ('type: "BatchNorm" batch_norm_param { eps: 1e-3 }', [X4], BATCH_NORM),
    ('type: "BatchNorm"', [RNG.standard_normal((6, 4))], BATCH_NORM),
    ('type: "MVN"', [X4], SMOOTH),
    # Caffe's MVN backward uses the top (x - mean) / (std + eps) where the exact gradient has
    # (x - mean) / std, so with eps 0.01 it is off by about eps / std: 0.7 % here.
    ('type: "MVN" mvn_param { across_channels: true eps: 0.01 }', [X4], GradientChecker(1e-2, 1e-2)),
    ('type: "MVN" mvn_param { normalize_variance: false }', [X4], SMOOTH),
    ('type: "Scale" scale_param { bias_term: true filler { type: "gaussian" } bias_filler { type: "gaussian" } }',
     [X4], SMOOTH),
    ('type: "Scale" scale_param { axis: 2 num_axes: 2 filler { type: "gaussian" } }', [X4], SMOOTH),
    ('type: "Scale" scale_param { axis: 0 num_axes: 1 filler { type: "gaussian" } }', [X4], SMOOTH),
    ('type: "Scale" scale_param { num_axes: 0 bias_term: true filler { type: "gaussian" } }', [X4], SMOOTH),
    ('type: "Scale" scale_param { axis: 0 num_axes: -1 filler { type: "gaussian" } }', [X4], SMOOTH),
    ('type: "Scale" scale_param { bias_term: true }', [X4, RNG.standard_normal((3, 4))], SMOOTH),
    ('type: "Scale"', [X4, RNG.standard_normal(())], SMOOTH),
    ('type: "Bias" bias_param { filler { type: "gaussian" } }', [X4], SMOOTH),
    ('type: "Bias" bias_param { axis: -2 num_axes: -1 filler { type: "gaussian" } }', [X4], SMOOTH),
    ('type: "Bias" bias_param { axis: 0 }', [X4, RNG.standard_normal((2, 3))], SMOOTH),
]


@pytest.mark.parametrize("text,inputs,checker", PARAM_CASES,
                         ids=[c[0].split()[1] + str(i) for i, c in enumerate(PARAM_CASES)])
def test_param_layer_gradients(text, inputs, checker):
    checker.check_gradient(*set_up(text, inputs))


def test_batchnorm_global_stats_gradient_and_values():
    layer = make_layer('type: "BatchNorm" batch_norm_param { use_global_stats: true eps: 0.01 }')
    bottom, top = [blob_of(X4.astype(np.float32))], [Blob()]
    layer.setup(bottom, top)
    layer.blobs[0].data[...] = [0.5, -1.0, 2.0]
    layer.blobs[1].data[...] = [1.0, 4.0, 0.5]
    layer.blobs[2].data[...] = 2.0
    layer.forward(bottom, top)
    mean = np.array([0.25, -0.5, 1.0])[None, :, None, None]
    var = np.array([0.5, 2.0, 0.25])[None, :, None, None]
    np.testing.assert_allclose(top[0].data, (X4 - mean) / np.sqrt(var + 0.01), rtol=1e-5, atol=1e-6)
    top[0].diff[...] = 1
    layer.backward(top, [True], bottom)
    np.testing.assert_allclose(bottom[0].diff, np.broadcast_to(1 / np.sqrt(var + 0.01), X4.shape), rtol=1e-5)
    layer.blobs[2].data[...] = 0  # a zero scale factor means zero statistics
    layer.forward(bottom, top)
    np.testing.assert_allclose(top[0].data, X4 / np.sqrt(0.01), rtol=1e-5)


def test_batchnorm_running_statistics_and_lr_mult():
    layer = make_layer('type: "BatchNorm" batch_norm_param { moving_average_fraction: 0.9 }')
    x = X4.astype(np.float32)
    bottom, top = [blob_of(x)], [Blob()]
    layer.setup(bottom, top)
    assert [blob.shape for blob in layer.blobs] == [(3,), (3,), (1,)]
    assert [spec.lr_mult for spec in layer.param.param] == [0, 0, 0]
    assert layer.param_propagate_down == [False, False, False]
    for _ in range(2):
        layer.forward(bottom, top)
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=(0, 2, 3))
    m = x.size // 3
    var = x64.var(axis=(0, 2, 3)) * m / (m - 1)
    np.testing.assert_allclose(layer.blobs[2].data, [1.9], rtol=1e-6)
    np.testing.assert_allclose(layer.blobs[0].data, 1.9 * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.blobs[1].data, 1.9 * var, rtol=1e-5)
    top[0].diff[...] = 1
    layer.backward(top, [True], bottom)
    assert not any(blob.diff.any() for blob in layer.blobs)


def test_batchnorm_rejects_learnable_statistics():
    with pytest.raises(NetError, match="'bn'.*lr_mult"):
        layer = make_layer('name: "bn" type: "BatchNorm" param { lr_mult: 0 } param { lr_mult: 1 }')
        layer.setup([blob_of(X4)], [Blob()])


def test_batchnorm_test_phase_defaults_to_global_stats():
    layer = make_layer('type: "BatchNorm"', caffe_pb2.TEST)
    layer.setup([blob_of(X4)], [Blob()])
    assert layer.use_global_stats
    layer = make_layer('type: "BatchNorm" batch_norm_param { use_global_stats: false }', caffe_pb2.TEST)
    layer.setup([blob_of(X4)], [Blob()])
    assert not layer.use_global_stats


def run_once(text, inputs, in_place, top_diff):
    layer = make_layer(text)
    bottom = [blob_of(np.asarray(x, np.float32)) for x in inputs]
    top = [bottom[0]] if in_place else [Blob()]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    out = top[0].data.copy()
    top[0].diff[...] = top_diff
    layer.backward(top, [True] * len(bottom), bottom)
    return out, bottom[0].diff.copy(), [blob.diff.copy() for blob in layer.blobs]


@pytest.mark.parametrize("text", [
    'type: "ReLU" relu_param { negative_slope: 0.1 }',
    'type: "PReLU" prelu_param { filler { type: "uniform" } }',
    'type: "ELU"', 'type: "Sigmoid"', 'type: "TanH"', 'type: "Swish"', 'type: "Exp" exp_param { base: 3 }',
    'type: "Dropout"', 'type: "BatchNorm"',
    'type: "Scale" scale_param { bias_term: true filler { type: "gaussian" } bias_filler { type: "gaussian" } }',
    'type: "Bias" bias_param { filler { type: "gaussian" } }',
])
def test_in_place_matches_out_of_place(text):
    """Layers whose Caffe in-place computation is exact give the same results either way."""
    x = away_from(X4.copy(), [0])
    dy = np.random.default_rng(5).standard_normal(X4.shape)
    pyskim.set_random_seed(3)  # same fillers and Dropout mask in both runs
    reference = run_once(text, [x], False, top_diff=dy)
    pyskim.set_random_seed(3)
    got = run_once(text, [x], True, top_diff=dy)
    np.testing.assert_allclose(got[0], reference[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got[1], reference[1], rtol=1e-5, atol=1e-6)
    for a, b in zip(got[2], reference[2]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_param_gradients_accumulate_or_overwrite_as_caffe():
    """PReLU, Bias and a learned Scale with outer dim > 1 accumulate; a Scale with outer dim 1 (or an
    eltwise one) overwrites its diff, as Caffe's GEMV with beta 0 does."""
    dy = np.ones(X4.shape)
    for text, accumulates in [('type: "PReLU"', True), ('type: "Bias"', True), ('type: "Scale"', True),
                              ('type: "Scale" scale_param { axis: 0 }', False),
                              ('type: "Scale" scale_param { axis: 0 num_axes: -1 }', False)]:
        layer = make_layer(text)
        bottom, top = [blob_of(away_from(X4.copy(), [0]))], [Blob()]
        layer.setup(bottom, top)
        layer.forward(bottom, top)
        top[0].diff[...] = dy
        layer.backward(top, [True], bottom)
        once = layer.blobs[0].diff.copy()
        assert once.any()
        layer.backward(top, [True], bottom)
        np.testing.assert_allclose(layer.blobs[0].diff, 2 * once if accumulates else once, rtol=1e-6)


def test_filler_defaults():
    layer = make_layer('type: "PReLU"')
    layer.setup([blob_of(X4)], [Blob()])
    np.testing.assert_array_equal(layer.blobs[0].data, [0.25] * 3)
    layer = make_layer('type: "Scale" scale_param { bias_term: true }')
    layer.setup([blob_of(X4)], [Blob()])
    np.testing.assert_array_equal(layer.blobs[0].data, [1, 1, 1])
    np.testing.assert_array_equal(layer.blobs[1].data, [0, 0, 0])
    assert layer.bias_layer.blobs[0] is layer.blobs[1]
    layer = make_layer('type: "Bias" bias_param { num_axes: 2 }')
    layer.setup([blob_of(X4)], [Blob()])
    assert layer.blobs[0].shape == (3, 4) and not layer.blobs[0].data.any()


def test_dropout_train_and_test():
    x = np.ones((50, 40), np.float32)
    layer = make_layer('type: "Dropout" dropout_param { dropout_ratio: 0.25 }')
    bottom, top = [blob_of(x)], [Blob()]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    values = np.unique(top[0].data)
    np.testing.assert_allclose(values, [0, 1 / 0.75], rtol=1e-6)
    assert abs((top[0].data == 0).mean() - 0.25) < 0.05
    layer = make_layer('type: "Dropout" dropout_param { dropout_ratio: 0.25 }', caffe_pb2.TEST)
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    np.testing.assert_array_equal(top[0].data, x)


def test_threshold_and_power_special_cases():
    layer = make_layer('type: "Threshold" threshold_param { threshold: 0.3 }')
    bottom, top = [blob_of(np.array([0.2, 0.3, 0.31, -1], np.float32))], [Blob()]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    np.testing.assert_array_equal(top[0].data, [0, 0, 1, 0])
    with pytest.raises(NetError):
        layer.backward(top, [True], bottom)
    layer = make_layer('type: "Power" power_param { power: 2 scale: 0 shift: 3 }')
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    np.testing.assert_array_equal(top[0].data, [9, 9, 9, 9])
    top[0].diff[...] = 1
    layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, 0)


def test_mvn_eps_added_after_sqrt():
    x = np.array([[[[1.0, 3.0]]]], np.float32)
    layer = make_layer('type: "MVN" mvn_param { eps: 0.5 }')
    bottom, top = [blob_of(x)], [Blob()]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    np.testing.assert_allclose(top[0].data.ravel(), [-1 / 1.5, 1 / 1.5], rtol=1e-6)


@pytest.mark.parametrize("text,shapes,in_place,match", [
    ('name: "abs" type: "AbsVal"', [(2, 3)], True, "'abs'.*in-place"),
    ('name: "e" type: "Exp" exp_param { base: -2 }', [(2, 3)], False, "'e'.*base"),
    ('name: "l" type: "Log" log_param { base: 1 }', [(2, 3)], False, "'l'.*base"),
    ('name: "d" type: "Dropout" dropout_param { dropout_ratio: 1 }', [(2, 3)], False, "'d'.*dropout_ratio"),
    ('name: "p" type: "PReLU"', [(5,)], False, "'p'.*axes"),
    ('name: "c" type: "Clip" clip_param { min: 0 }', [(2, 3)], False, "'c'.*max"),
    ('name: "s" type: "Scale" scale_param { axis: 1 }', [(2, 3, 4), (4,)], False, "'s'.*shape"),
    ('name: "s" type: "Scale" scale_param { axis: 2 num_axes: 2 }', [(2, 3, 4)], False, "'s'.*extends"),
    ('name: "s" type: "Scale" scale_param { num_axes: -2 }', [(2, 3, 4)], False, "'s'.*num_axes"),
    ('name: "b" type: "Bias" bias_param { axis: 3 }', [(2, 3, 4)], False, "'b'.*axis"),
    ('name: "m" type: "MVN"', [(1, 2, 3, 4, 5)], False, "'m'.*axes"),
])
def test_bad_parameters_name_the_layer(text, shapes, in_place, match):
    param = caffe_pb2.LayerParameter()
    text_format.Parse(text, param, allow_unknown_field=False)
    layer = create_layer(param)
    bottom = [Blob(shape) for shape in shapes]
    with pytest.raises(NetError, match=match):
        layer.setup(bottom, [bottom[0]] if in_place else [Blob()])


NET_TEMPLATE = """
force_backward: true
layer {{ name: "x" type: "Input" top: "x" input_param {{ shape {{ dim: 2 dim: 3 dim: 2 dim: 2 }} }} }}
layer {{ name: "t" type: "Input" top: "t" input_param {{ shape {{ dim: 2 dim: 3 dim: 2 dim: 2 }} }} }}
layer {{ name: "bias" type: "Bias" bottom: "x" top: "a" bias_param {{ filler {{ type: "gaussian" }} }} }}
layer {{ name: "bn" type: "BatchNorm" bottom: "a" top: "{0}" }}
layer {{ name: "sc" type: "Scale" bottom: "{0}" top: "{1}"
        scale_param {{ bias_term: true filler {{ type: "gaussian" }} bias_filler {{ type: "gaussian" }} }} }}
layer {{ name: "relu" type: "ReLU" bottom: "{1}" top: "{2}" }}
layer {{ name: "loss" type: "EuclideanLoss" bottom: "{2}" bottom: "t" top: "loss" }}
"""


@pytest.mark.parametrize("phase", [caffe_pb2.TRAIN, caffe_pb2.TEST])
def test_resnet_style_in_place_chain_in_a_net(phase):
    """BatchNorm -> Scale -> ReLU in place gives what the same chain with separate blobs gives."""
    results = []
    for names in (("a", "a", "a"), ("b", "c", "d")):
        pyskim.set_random_seed(7)
        param = text_format.Parse(NET_TEMPLATE.format(*names), caffe_pb2.NetParameter())
        net = pyskim.Net(param, phase)
        assert net.params_lr[1:4] == [0, 0, 0]
        net.blobs["x"].data[...] = X4[:, :, :2, :2] * 2
        net.blobs["t"].data[...] = X4[:, :, 2:4, 2:4]
        bn = net.params["bn"]
        bn[0].data[...], bn[1].data[...], bn[2].data[...] = [0.1, 0.2, -0.3], [1.0, 2.0, 0.5], [1.5]
        loss = net.forward_from_to(0, len(net.layers) - 1)
        net.clear_param_diffs()
        net.backward_from_to(len(net.layers) - 1, 0)
        results.append((loss, net.blobs["x"].diff.copy(), [b.data.copy() for b in bn],
                        [b.diff.copy() for name in ("bias", "sc") for b in net.params[name]]))
    (loss_a, dx_a, bn_a, pd_a), (loss_b, dx_b, bn_b, pd_b) = results
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    np.testing.assert_allclose(dx_a, dx_b, rtol=1e-5, atol=1e-6)
    for a, b in zip(bn_a + pd_a, bn_b + pd_b):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("slope", [0.0, 0.1])
@pytest.mark.parametrize("in_place", [False, True])
def test_relu_special_values_follow_caffes_formula(slope, in_place):
    """Caffe computes max(x, 0) + slope * min(x, 0), so a plain ReLU maps -inf to NaN (0 * -inf), and
    backward multiplies by (x > 0) + slope * (x <= 0)."""
    x = np.array([[-np.inf, -1.5, 0.0, 2.0, np.nan, np.inf, -0.0, 3.0]], np.float32)
    layer = make_layer(f'type: "ReLU" relu_param {{ negative_slope: {slope} }}')
    bottom = blob_of(x)
    top = bottom if in_place else Blob()
    layer.setup([bottom], [top])
    layer.reshape([bottom], [top])
    s = np.float32(slope)
    with np.errstate(invalid="ignore"):
        expected = np.maximum(x, np.float32(0)) + s * np.minimum(x, np.float32(0))
        layer.forward([bottom], [top])
        np.testing.assert_array_equal(top.data, expected)
        finite = np.nan_to_num(x, nan=1.0, posinf=5.0, neginf=-5.0)   # backward on finite inputs
        bottom.data[...] = finite
        if not in_place:
            top.data[...] = np.maximum(finite, 0) + s * np.minimum(finite, 0)
        top.diff[...] = np.arange(1, 9, dtype=np.float32)
        gate = top.data if in_place else finite
        want = np.arange(1, 9, dtype=np.float32) * ((gate > 0) + s * (gate <= 0))
        layer.backward([top], [True], [bottom])
    np.testing.assert_array_equal(bottom.diff, want)
