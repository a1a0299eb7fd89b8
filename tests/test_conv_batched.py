"""The fused convolution path (im2col inside pyskim's products, the whole batch per call, batched
col2im) against the per-image path Caffe's loop follows: the batched im2col/col2im kernels bit for
bit, the layer within float32 rounding."""
import numpy as np
import pytest

import pyskim as caffe
from pyskim.io.protofiles import parse_text
from pyskim.kernels import dense as kernels
from pyskim.layers import convolution as vision
from pyskim.proto import caffe_pb2

batch_kernels = pytest.importorskip("pyskim._kernels.batch_kernels")

# (N, C, H, W, kernel (h, w), pad (h, w), stride (h, w), dilation (h, w))
GEOMETRIES = [
    (4, 1, 28, 28, (5, 5), (0, 0), (1, 1), (1, 1)),       # LeNet conv1
    (3, 20, 12, 12, (5, 5), (0, 0), (1, 1), (1, 1)),      # LeNet conv2
    (2, 3, 32, 32, (5, 5), (2, 2), (1, 1), (1, 1)),       # CIFAR conv1
    (2, 3, 17, 13, (3, 2), (1, 0), (2, 3), (1, 1)),
    (2, 4, 11, 9, (3, 3), (2, 1), (1, 2), (2, 1)),
    (1, 2, 5, 5, (5, 5), (1, 1), (2, 2), (1, 1)),
    (3, 2, 7, 6, (1, 1), (0, 0), (1, 1), (1, 1)),
]


@pytest.mark.parametrize("n, c, h, w, kernel, pad, stride, dilation", GEOMETRIES)
def test_batched_im2col_col2im_match_per_image(n, c, h, w, kernel, pad, stride, dilation):
    rng = np.random.default_rng(0)
    images = rng.standard_normal((n, c, h, w)).astype(np.float32)
    cols = [kernels.im2col(image, kernel, pad, stride, dilation) for image in images]
    k, p = cols[0].shape
    batched = np.full((k, n * p), np.nan, np.float32)
    batch_kernels.im2col_batch(images, *kernel, *pad, *stride, *dilation, batched, 1)
    np.testing.assert_array_equal(batched.reshape(k, n, p).transpose(1, 0, 2), np.stack(cols))
    col_values = rng.standard_normal((n, k, p)).astype(np.float32)
    folded = np.full_like(images, np.nan)
    batch_kernels.col2im_batch(np.ascontiguousarray(col_values.transpose(1, 0, 2)).reshape(k, n * p),
                               *kernel, *pad, *stride, *dilation, folded, 2)
    expected = np.stack([kernels.col2im(v, (c, h, w), kernel, pad, stride, dilation) for v in col_values])
    np.testing.assert_array_equal(folded, expected)


def test_batched_kernels_check_shapes():
    images = np.zeros((2, 3, 8, 8), np.float32)
    with pytest.raises(ValueError, match="col shape"):
        batch_kernels.im2col_batch(images, 3, 3, 0, 0, 1, 1, 1, 1, np.zeros((27, 2 * 36 - 1), np.float32), 1)
    with pytest.raises(ValueError, match="col shape"):
        batch_kernels.col2im_batch(np.zeros((26, 72), np.float32), 3, 3, 0, 0, 1, 1, 1, 1, images, 1)


def _conv_net(n, c, h, w, num_output, group, kernel, pad, stride, dilation, phase):
    param = caffe_pb2.NetParameter()
    parse_text(f"""
        force_backward: true
        layer {{ name: "data" type: "Input" top: "data"
                 input_param {{ shape {{ dim: {n} dim: {c} dim: {h} dim: {w} }} }} }}
        layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
                 convolution_param {{ num_output: {num_output} group: {group}
                   kernel_h: {kernel[0]} kernel_w: {kernel[1]} pad_h: {pad[0]} pad_w: {pad[1]}
                   stride_h: {stride[0]} stride_w: {stride[1]} dilation: {dilation[0]} dilation: {dilation[1]}
                   weight_filler {{ type: "gaussian" std: 0.1 }} bias_filler {{ type: "gaussian" std: 1 }} }} }}
    """, param)
    return caffe.Net(param, phase)


def _run(net, x, top_diff):
    net.blobs["data"].data[...] = x
    net.forward()
    net.blobs["conv"].diff[...] = top_diff
    net.params["conv"][0].diff[...] = 0
    net.params["conv"][1].diff[...] = 0
    net.backward()
    return [net.blobs["conv"].data.copy(), net.blobs["data"].diff.copy(),
            net.params["conv"][0].diff.copy(), net.params["conv"][1].diff.copy()]


@pytest.mark.parametrize("phase", [caffe.TRAIN, caffe.TEST])
@pytest.mark.parametrize("group, geometry", [(1, GEOMETRIES[1]), (2, GEOMETRIES[4]), (1, GEOMETRIES[3]),
                                             (2, GEOMETRIES[6])])
def test_batched_layer_matches_per_image_path(monkeypatch, phase, group, geometry):
    n, c, h, w, kernel, pad, stride, dilation = geometry
    c *= group
    net = _conv_net(n, c, h, w, 4 * group, group, kernel, pad, stride, dilation, phase)
    layer = net.layers[net._layer_names.index("conv")]
    assert layer._batched()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    top_diff = rng.standard_normal(net.blobs["conv"].shape).astype(np.float32)
    batched = _run(net, x, top_diff)
    if phase == caffe.TRAIN:
        # Backward reads the bottom as it is now, not as forward saw it (as Caffe).
        net.blobs["data"].data[...] = x[::-1]
        net.params["conv"][0].diff[...] = 0
        net.backward()
        changed = net.params["conv"][0].diff.copy()
    monkeypatch.setattr(vision, "_fused", None)
    assert not layer._batched()
    per_image = _run(net, x, top_diff)
    for name, got, expected in zip(("top", "bottom diff", "weight diff", "bias diff"), batched, per_image):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5, err_msg=name)
    if phase == caffe.TRAIN:
        net.blobs["data"].data[...] = x[::-1]
        net.params["conv"][0].diff[...] = 0
        net.backward()
        np.testing.assert_allclose(changed, net.params["conv"][0].diff, rtol=1e-5, atol=1e-5)


def test_packed_weights_follow_every_change_of_the_weights():
    """The fused forward keeps its weights packed between calls; any write to them, through any
    array handed out before or after, is seen by the next forward."""
    net = _conv_net(2, 3, 9, 9, 4, 1, (3, 3), (1, 1), (1, 1), (1, 1), caffe.TEST)
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 9)).astype(np.float32)
    net.blobs["data"].data[...] = x
    bias = net.params["conv"][1].data.copy()
    first = net.forward()["conv"].copy()
    assert np.array_equal(net.forward()["conv"], first)            # packed once, reused
    held = net.params["conv"][0].data                               # kept alive across forwards
    held *= 2
    np.testing.assert_allclose(net.forward()["conv"] - bias[:, None, None], 2 * (first - bias[:, None, None]),
                               rtol=1e-6, atol=1e-6)
    held[0] = 0
    assert np.allclose(net.forward()["conv"][:, 0], bias[0])
    del held
    net.params["conv"][0].data[...] = 0
    assert np.allclose(net.forward()["conv"], bias[:, None, None])
