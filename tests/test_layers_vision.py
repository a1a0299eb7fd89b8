"""Vision layers (Convolution, Deconvolution, Im2col, Pooling, LRN, SPP) and SkimCaffe's fused and
alias types: gradient checks, path consistency and parameter errors the conformance cases miss."""
import numpy as np
import pytest
from google.protobuf import text_format
from gradcheck import GradientChecker

import pyskim
from pyskim.errors import NetError
from pyskim.layers import convolution as vision
from pyskim.proto import caffe_pb2


def make_net(body, inputs, phase=pyskim.TRAIN):
    """A force_backward net: one Input layer per ``inputs`` entry (name -> shape), then ``body``."""
    text = "force_backward: true\n"
    for name, shape in inputs.items():
        dims = " ".join(f"dim: {d}" for d in shape)
        text += f'layer {{ name: "{name}" type: "Input" top: "{name}" input_param {{ shape {{ {dims} }} }} }}\n'
    param = text_format.Parse(text + body, caffe_pb2.NetParameter())
    return pyskim.Net(param, phase)


def run(net, inputs, top_diffs):
    """Forward with ``inputs``, preset the given top diffs, backward; returns the net."""
    for name, value in inputs.items():
        net.blobs[name].data[...] = value
    net.forward_from_to(0, len(net.layers) - 1)
    net.clear_param_diffs()
    for name, value in top_diffs.items():
        net.blobs[name].diff[...] = value
    net.backward_from_to(len(net.layers) - 1, 0)
    return net


def rand(rng, shape):
    return rng.standard_normal(shape).astype(np.float32)


# -- gradient checks ----------------------------------------------------------------------------------

def check_layer_gradient(layer_text, x_shape, checker, seed=0):
    """Run ``checker`` over the last layer of a net feeding it random ``x`` (the layer the Net set up,
    with the engine the Net attached), for its bottom and every parameter blob."""
    net = make_net(layer_text, {"x": x_shape})
    net.blobs["x"].data[...] = rand(np.random.default_rng(seed), x_shape)
    last = len(net.layers) - 1
    checker.check_gradient(net.layers[last], net.bottom_vec(last), net.top_vec(last))


# Caffe checks these types against each top element in turn; one check of every bottom and weight
# element against random coefficients on all top elements covers the same Jacobian. Stepsizes are
# Caffe's: 1e-4 for MAX pooling and SPP (a step must not move the argmax), 1e-2 for the others. The
# threshold is Caffe's convolution one, 1e-3, also for pooling, LRN and Im2col, where Caffe has 1e-2:
# the single-direction check this replaced was as strict.
CHECKER = GradientChecker(1e-2, 1e-3)
MAX_CHECKER = GradientChecker(1e-4, 1e-3)
# Layers whose forward costs 0.25 to 0.5 ms here (the 3-D convolution and Im2col run the N-d kernels,
# SPP a pyramid of poolings) are checked along 4 random directions per blob instead of per element
# (16 forwards instead of 500 to 800), to 1e-4 of the directional derivative: the bound of the
# single-direction check this replaced, which they now meet in four directions.
DIRECTIONAL_CHECKER = GradientChecker(1e-2, 1e-4, directions=4)
MAX_DIRECTIONAL_CHECKER = GradientChecker(1e-4, 1e-4, directions=4)

CONV = 'layer {{ name: "c" type: "{type}" bottom: "x" top: "y" convolution_param {{ {p} ' \
       'weight_filler {{ type: "gaussian" std: 0.3 }} bias_filler {{ type: "gaussian" std: 0.3 }} }} }}'


@pytest.mark.parametrize("params, shape, checker", [
    ("num_output: 4 kernel_size: 3 pad: 1 stride: 2", (2, 3, 7, 6), CHECKER),
    ("num_output: 4 kernel_size: 3 group: 2 dilation: 2 pad: 2", (2, 4, 7, 7), CHECKER),
    ("num_output: 3 kernel_size: 2 kernel_size: 3 kernel_size: 2 stride: 2 pad: 1", (2, 2, 4, 5, 4),
     DIRECTIONAL_CHECKER),
    ("num_output: 2 kernel_size: 3 force_nd_im2col: true", (1, 2, 5, 5), CHECKER),
    ("num_output: 2 kernel_size: 3 stride: 2", (3, 2, 9), CHECKER),
    ("num_output: 5 kernel_size: 1", (2, 3, 4, 4), CHECKER),
])
def test_convolution_gradients(params, shape, checker):
    check_layer_gradient(CONV.format(type="Convolution", p=params), shape, checker)


@pytest.mark.parametrize("params, shape", [
    ("num_output: 3 kernel_size: 3 stride: 2 pad: 1", (2, 2, 4, 4)),
    ("num_output: 4 kernel_size: 2 group: 2 stride: 2", (2, 4, 3, 3)),
])
def test_deconvolution_gradients(params, shape):
    check_layer_gradient(CONV.format(type="Deconvolution", p=params), shape, CHECKER)


@pytest.mark.parametrize("layer, checker", [
    ('type: "Pooling" pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 }', MAX_CHECKER),
    ('type: "Pooling" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }', CHECKER),
    ('type: "Pooling" pooling_param { pool: AVE kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2 round_mode: FLOOR }',
     CHECKER),
    ('type: "LRN" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 }', CHECKER),
    ('type: "LRN" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL }', CHECKER),
    ('type: "SPP" spp_param { pyramid_height: 3 pool: AVE }', DIRECTIONAL_CHECKER),
    ('type: "SPP" spp_param { pyramid_height: 2 pool: MAX }', MAX_DIRECTIONAL_CHECKER),
    ('type: "Im2col" convolution_param { kernel_size: 2 stride: 2 pad: 1 }', DIRECTIONAL_CHECKER),
])
def test_pooling_lrn_spp_im2col_gradients(layer, checker):
    check_layer_gradient(f'layer {{ name: "l" bottom: "x" top: "y" {layer} }}', (2, 3, 7, 6), checker)


# -- path consistency -----------------------------------------------------------------------------

def conv_results(text, x_shape, x, r, weights=None):
    net = make_net(text, {"x": x_shape})
    if weights is not None:
        for blob, value in zip(net.layers[-1].blobs, weights):
            blob.data[...] = value.reshape(blob.shape)
    run(net, {"x": x.reshape(x_shape)}, {"y": r.reshape(net.blobs["y"].shape)})
    layer = net.layers[-1]
    return (net.blobs["y"].data.copy(), net.blobs["x"].diff.copy(),
            [b.data.copy() for b in layer.blobs], [b.diff.copy() for b in layer.blobs])


def test_nd_and_2d_im2col_paths_agree():
    """The same convolution through the 2-D kernels, the N-d kernels (force_nd_im2col) and as a 3-D
    convolution over a depth-1 volume gives the same top, bottom diff and parameter diffs."""
    rng = np.random.default_rng(1)
    x = rand(rng, (2, 3, 8, 7))
    geometry = "num_output: 4 group: 1 pad: {p} stride: {s} dilation: {d} kernel_size: {k}"
    two_d = CONV.format(type="Convolution", p=geometry.format(p=1, s=2, d=2, k=3))
    y2, dx2, w2, dw2 = conv_results(two_d, x.shape, x, rand(rng, (2, 4, 3, 3)))
    r = rand(rng, y2.shape)
    y2, dx2, w2, dw2 = conv_results(two_d, x.shape, x, r, w2)
    nd = CONV.format(type="Convolution", p=geometry.format(p=1, s=2, d=2, k=3) + " force_nd_im2col: true")
    three_d = CONV.format(type="Convolution", p="num_output: 4 kernel_size: 1 kernel_size: 3 kernel_size: 3 "
                                                "pad: 0 pad: 1 pad: 1 stride: 1 stride: 2 stride: 2 "
                                                "dilation: 1 dilation: 2 dilation: 2")
    for text, shape in ((nd, x.shape), (three_d, (2, 3, 1, 8, 7))):
        y, dx, _, dw = conv_results(text, shape, x, r, w2)
        np.testing.assert_allclose(y.reshape(y2.shape), y2, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(dx.reshape(dx2.shape), dx2, rtol=1e-6, atol=1e-6)
        for got, want in zip(dw, dw2):
            np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-5, atol=1e-5)


def test_chunked_lowering_matches_whole_batch(monkeypatch):
    """Lowering one image per chunk gives the same results as lowering the whole batch at once."""
    rng = np.random.default_rng(2)
    x = rand(rng, (5, 4, 6, 6))
    text = CONV.format(type="Convolution", p="num_output: 6 kernel_size: 3 pad: 1 group: 2")
    y, dx, w, dw = conv_results(text, x.shape, x, rand(rng, (5, 6, 6, 6)))
    r = rand(rng, y.shape)
    y, dx, w, dw = conv_results(text, x.shape, x, r, w)
    monkeypatch.setattr(vision, "COL_BUFFER_BYTES", 1)
    y1, dx1, _, dw1 = conv_results(text, x.shape, x, r, w)
    np.testing.assert_allclose(y1, y, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dx1, dx, rtol=1e-6, atol=1e-6)
    for got, want in zip(dw1, dw):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_convolution_matches_direct_sum_and_shares_weights_across_bottoms():
    """Two bottoms share one set of weights; the weight diff accumulates both, and the top equals a
    direct float64 convolution."""
    rng = np.random.default_rng(3)
    text = ('layer { name: "c" type: "Convolution" bottom: "x" bottom: "z" top: "y" top: "yz" '
            'convolution_param { num_output: 2 kernel_size: 2 stride: 1 '
            'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 } } }')
    net = make_net(text, {"x": (1, 2, 3, 3), "z": (1, 2, 3, 3)})
    x, z = rand(rng, (1, 2, 3, 3)), rand(rng, (1, 2, 3, 3))
    ry, rz = rand(rng, (1, 2, 2, 2)), rand(rng, (1, 2, 2, 2))
    run(net, {"x": x, "z": z}, {"y": ry, "yz": rz})
    w, b = (blob.data.astype(np.float64) for blob in net.layers[-1].blobs)
    windows = np.lib.stride_tricks.sliding_window_view(x.astype(np.float64)[0], (2, 2), axis=(1, 2))
    direct = np.einsum("chwij,ocij->ohw", windows, w) + b[:, None, None]
    np.testing.assert_allclose(net.blobs["y"].data[0], direct, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.layers[-1].blobs[1].diff, (ry + rz).sum(axis=(0, 2, 3)), rtol=1e-5)


# -- SkimCaffe fused layers == plain compositions -------------------------------------------------

CONV_P = ('convolution_param { num_output: 4 kernel_size: 3 pad: 1 '
          'weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 0.3 } }')
POOL_MAX = "pooling_param { pool: MAX kernel_size: 3 stride: 2 }"
POOL_AVE = "pooling_param { pool: AVE kernel_size: 2 stride: 2 pad: 1 }"
LRN_P = "lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 }"
IP_P = ('inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.3 } '
        'bias_filler { type: "gaussian" std: 0.3 } }')
RELU_P = "relu_param { negative_slope: 0.1 }"

FUSED = {
    "ConvolutionReLU": (
        f'layer {{ name: "conv" type: "ConvolutionReLU" bottom: "x" top: "y" {CONV_P} {RELU_P} }}',
        (f'layer {{ name: "conv" type: "Convolution" bottom: "x" top: "y" {CONV_P} }}'
         f'layer {{ name: "relu" type: "ReLU" bottom: "y" top: "y" {RELU_P} }}')),
    "ConvolutionReLUPool": (
        f'layer {{ name: "conv" type: "ConvolutionReLUPool" bottom: "x" top: "y" {CONV_P} {POOL_MAX} }}',
        (f'layer {{ name: "conv" type: "Convolution" bottom: "x" top: "c" {CONV_P} }}'
         'layer { name: "relu" type: "ReLU" bottom: "c" top: "c" }'
         f'layer {{ name: "pool" type: "Pooling" bottom: "c" top: "y" {POOL_MAX} }}')),
    "ConvolutionReLUPoolLRN": (
        (f'layer {{ name: "conv" type: "ConvolutionReLUPoolLRN" bottom: "x" top: "y" {CONV_P} {POOL_MAX} '
         f'{LRN_P} }}'),
        (f'layer {{ name: "conv" type: "Convolution" bottom: "x" top: "c" {CONV_P} }}'
         'layer { name: "relu" type: "ReLU" bottom: "c" top: "c" }'
         f'layer {{ name: "pool" type: "Pooling" bottom: "c" top: "p" {POOL_MAX} }}'
         f'layer {{ name: "norm" type: "LRN" bottom: "p" top: "y" {LRN_P} }}')),
    "ReLUPooling": (
        f'layer {{ name: "rp" type: "ReLUPooling" bottom: "x" top: "y" {POOL_AVE} }}',
        ('layer { name: "relu" type: "ReLU" bottom: "x" top: "r" }'
         f'layer {{ name: "pool" type: "Pooling" bottom: "r" top: "y" {POOL_AVE} }}')),
    "InnerProductReLUDropout": (
        (f'layer {{ name: "fc" type: "InnerProductReLUDropout" bottom: "x" top: "y" {IP_P} '
         'dropout_param { dropout_ratio: 0.5 } }'),
        (f'layer {{ name: "fc" type: "InnerProduct" bottom: "x" top: "y" {IP_P} }}'
         'layer { name: "relu" type: "ReLU" bottom: "y" top: "y" }'
         'layer { name: "drop" type: "Dropout" bottom: "y" top: "y" dropout_param { dropout_ratio: 0.5 } }')),
}


@pytest.mark.parametrize("fused_type", sorted(FUSED))
@pytest.mark.parametrize("phase", [pyskim.TRAIN, pyskim.TEST])
def test_fused_layer_equals_plain_composition(fused_type, phase):
    """Forward and backward of the fused type equal the plain layers built as a separate net (the
    plain net runs in TEST so its Dropout is the identity, SkimCaffe's no-op dropout). The plain net's
    weights load into the fused net by layer name."""
    fused_text, plain_text = FUSED[fused_type]
    shape = (2, 3, 7, 7)
    pyskim.set_random_seed(5)
    plain = make_net(plain_text, {"x": shape}, pyskim.TEST)
    fused = make_net(fused_text, {"x": shape}, phase)
    fused.copy_trained_layers_from_param(plain.to_proto())
    assert fused.layers[-1].type == fused_type
    rng = np.random.default_rng(4)
    x = rand(rng, shape)
    for net in (plain, fused):
        net.blobs["x"].data[...] = x
        net.forward_from_to(0, len(net.layers) - 1)
    r = rand(rng, plain.blobs["y"].shape)
    run(plain, {"x": x}, {"y": r})
    run(fused, {"x": x}, {"y": r})
    np.testing.assert_array_equal(fused.blobs["y"].data, plain.blobs["y"].data)
    np.testing.assert_array_equal(fused.blobs["x"].diff, plain.blobs["x"].diff)
    np.testing.assert_array_equal(fused.blobs["x"].data, x)  # the bottom is never modified
    assert list(fused.params) == [name for name in plain.params]
    for name, blobs in plain.params.items():
        for got, want in zip(fused.params[name], blobs):
            np.testing.assert_array_equal(got.data, want.data)
            np.testing.assert_array_equal(got.diff, want.diff)


@pytest.mark.parametrize("alias, target, body", [
    ("MKLConvolution", "Convolution", CONV_P),
    ("Winograd", "Convolution", CONV_P),
    ("MKLReLU", "ReLU", RELU_P),
    ("MKLPooling", "Pooling", POOL_MAX),
    ("MKLLRN", "LRN", LRN_P),
])
def test_aliases_run_their_target(alias, target, body):
    shape = (2, 3, 6, 6)
    plain = make_net(f'layer {{ name: "l" type: "{target}" bottom: "x" top: "y" {body} }}', {"x": shape})
    other = make_net(f'layer {{ name: "l" type: "{alias}" bottom: "x" top: "y" {body} }}', {"x": shape})
    other.copy_trained_layers_from_param(plain.to_proto())
    layer = other.layers[-1]
    assert layer.type == alias and isinstance(layer, type(plain.layers[-1]))
    rng = np.random.default_rng(6)
    x = rand(rng, shape)
    run(plain, {"x": x}, {})
    r = rand(rng, plain.blobs["y"].shape)
    for net in (plain, other):
        run(net, {"x": x}, {"y": r})
    np.testing.assert_array_equal(other.blobs["y"].data, plain.blobs["y"].data)
    np.testing.assert_array_equal(other.blobs["x"].diff, plain.blobs["x"].diff)


# -- parameter errors name the layer --------------------------------------------------------------

@pytest.mark.parametrize("layer, match", [
    ('type: "Convolution" convolution_param { num_output: 3 kernel_size: 3 group: 2 }', "group"),
    ('type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 kernel_h: 2 kernel_w: 2 }',
     "kernel_size or kernel_h/w"),
    ('type: "Convolution" convolution_param { num_output: 4 kernel_size: 2 kernel_size: 2 kernel_size: 2 }',
     "once per spatial dimension"),
    ('type: "Convolution" convolution_param { kernel_size: 3 }', "num_output"),
    ('type: "Convolution" convolution_param { num_output: 2 kernel_size: 9 }', "kernel extent"),
    ('type: "Deconvolution" convolution_param { num_output: 2 kernel_size: 3 stride: 0 }', "stride"),
    ('type: "Pooling" pooling_param { pool: MAX global_pooling: true kernel_size: 2 }', "global_pooling"),
    ('type: "Pooling" pooling_param { pool: AVE kernel_size: 2 pad: 2 }', "smaller than the kernel"),
    ('type: "Pooling" pooling_param { pool: MAX }', "kernel_size"),
    ('type: "Pooling" pooling_param { pool: MAX kernel_size: 2 pad_h: 1 }', "pad_h and pad_w"),
    ('type: "LRN" lrn_param { local_size: 4 }', "odd"),
    ('type: "SPP" spp_param { pool: MAX }', "pyramid_height"),
    ('type: "SPP" spp_param { pyramid_height: 3 pool: MAX }', "pyramid_height 3 needs 4 bins"),
    ('type: "SPP" spp_param { pyramid_height: 237 pool: MAX }', "pyramid_height 237"),
])
def test_bad_parameters_name_the_layer(layer, match):
    with pytest.raises(NetError, match=match) as info:
        make_net(f'layer {{ name: "bad_layer" bottom: "x" top: "y" {layer} }}', {"x": (1, 2, 5, 5)})
    assert "bad_layer" in str(info.value)


def test_stochastic_pooling_has_no_cpu_forward():
    net = make_net('layer { name: "sto" type: "Pooling" bottom: "x" top: "y" '
                   'pooling_param { pool: STOCHASTIC kernel_size: 2 stride: 2 } }', {"x": (1, 1, 4, 4)},
                   pyskim.TEST)
    with pytest.raises(NetError, match="'sto'.*STOCHASTIC"):
        net.forward_from_to(0, len(net.layers) - 1)


def test_pooling_mask_top_and_output_sizes():
    """CEIL vs FLOOR extents, and the MAX mask top holds the argmax's flat index in its plane."""
    x = np.arange(30, dtype=np.float32).reshape(1, 1, 5, 6)
    body = 'layer {{ name: "p" type: "Pooling" bottom: "x" top: "y" top: "m" pooling_param {{ {} }} }}'
    ceil = make_net(body.format("pool: MAX kernel_size: 2 stride: 2"), {"x": x.shape})
    floor = make_net(body.format("pool: MAX kernel_size: 2 stride: 2 round_mode: FLOOR"), {"x": x.shape})
    run(ceil, {"x": x}, {})
    assert ceil.blobs["y"].shape == (1, 1, 3, 3) and floor.blobs["y"].shape == (1, 1, 2, 3)
    np.testing.assert_array_equal(ceil.blobs["m"].data, ceil.blobs["y"].data)
