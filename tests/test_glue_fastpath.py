"""The batch-1 fast paths of the glue layers: the one-pass WITHIN_CHANNEL LRN kernel against Caffe's
float32 chain done step by step in NumPy, the kernels' plans (:class:`PoolingPlan`,
:class:`LRNWithinPlan`) against the checked wrappers, the in-place ReLU path, and the layers' reshape
short cut (a net run at one batch size, then reshaped, computes what a net built at the new size does)."""
import numpy as np
import pytest
from google.protobuf import text_format
from hypothesis import given, settings
from hypothesis import strategies as st

import pyskim
from pyskim.errors import KernelArgumentError
from pyskim.kernels import dense as K
from pyskim.kernels import reference as R
from pyskim.proto import caffe_pb2

RNG = np.random.default_rng(11)


def rand(*shape, scale=3.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def ulps(got, exact):
    """|got - exact| in units of the float32 spacing at ``exact``."""
    exact = np.asarray(exact, np.float64)
    return np.abs(got.astype(np.float64) - exact) / np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)


def caffe_within_pooled(x, size):
    """Caffe's AVE pooling of the float32 squares (size x size, stride 1, pad (size-1)/2): every window
    summed from 0 in float32 over its rows, each left to right, then divided by size*size (no window
    reaches past the padded image); padding taps add +0, which leaves the sums of squares unchanged."""
    pad = (size - 1) // 2
    n, c, h, w = x.shape
    squares = np.zeros((n, c, h + 2 * pad, w + 2 * pad), np.float32)
    squares[:, :, pad:pad + h, pad:pad + w] = x * x
    acc = np.zeros(x.shape, np.float32)
    for i in range(size):
        for j in range(size):
            acc = acc + squares[:, :, i:i + h, j:j + w]
    return acc / np.float32(size * size)


# -- the one-pass WITHIN_CHANNEL kernel ------------------------------------------------------------

@pytest.mark.parametrize("shape, size", [((1, 32, 16, 16), 3), ((2, 3, 8, 8), 3), ((1, 2, 5, 37), 5),
                                         ((2, 2, 3, 4), 7), ((1, 1, 1, 19), 3), ((1, 3, 9, 17), 1)])
@pytest.mark.parametrize("alpha, beta", [(5e-5, 0.75), (0.5, 0.75), (1.0, 0.6), (2.0, 1.5)])
def test_lrn_within_forward_is_caffes_chain(shape, size, alpha, beta):
    x = rand(*shape)
    top, pooled, power = K.lrn_within_forward(x, size, alpha, beta)
    np.testing.assert_array_equal(pooled, caffe_within_pooled(x, size))      # Caffe's sums, bit for bit
    a = np.float32(alpha)
    base = (pooled * a if a != 1 else pooled) + np.float32(1)               # PowerLayer: scale, then shift
    exact = base.astype(np.float64) ** -np.float64(np.float32(beta))
    # beta 0.75: r * sqrtf(r), r = 1 / sqrtf(base) (within ~3 ulp); other betas: powf (within 1 ulp)
    assert ulps(power, exact).max() <= (3 if beta == 0.75 else 1)
    np.testing.assert_array_equal(top, x * power)                           # Eltwise PROD, float32


def test_lrn_within_forward_writes_given_buffers_and_threads_agree():
    x = rand(2, 64, 24, 24)                                 # over the single-thread limit
    buffers = [np.full_like(x, np.nan) for _ in range(3)]
    previous = K.get_num_threads()
    try:
        K.set_num_threads(1)
        one = K.lrn_within_forward(x, 3, 1e-4, 0.75)
        K.set_num_threads(2)
        top, pooled, power = K.lrn_within_forward(x, 3, 1e-4, 0.75, out=buffers[0], pooled_out=buffers[1],
                                                  power_out=buffers[2])
    finally:
        K.set_num_threads(previous)
    assert top is buffers[0] and pooled is buffers[1] and power is buffers[2]
    for got, want in zip((top, pooled, power), one):
        np.testing.assert_array_equal(got, want)


def test_lrn_within_forward_refuses_overlapping_buffers():
    x = rand(1, 2, 4, 4)
    pooled = np.empty_like(x)
    with pytest.raises(KernelArgumentError, match="power_out must not overlap"):
        K.lrn_within_forward(x, 3, 1e-4, 0.75, pooled_out=pooled, power_out=pooled)
    with pytest.raises(KernelArgumentError, match="out must not overlap"):
        K.lrn_within_forward(x, 3, 1e-4, 0.75, out=x)


GUARD = 64


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.integers(1, 3), st.integers(1, 9), st.integers(1, 40), st.sampled_from([1, 3, 5, 7, 9]))
def test_lrn_within_forward_writes_only_its_outputs(channels, height, width, size):
    """Planes of any width (the kernel works on 16 outputs of a row at a time) and windows wider than the
    plane: nothing outside top, pooled and power is written."""
    x = rand(2, channels, height, width)
    buffers = [np.full(x.size + 2 * GUARD, np.nan, np.float32) for _ in range(3)]
    outs = [buffer[GUARD:GUARD + x.size].reshape(x.shape) for buffer in buffers]
    K.lrn_within_forward(x, size, 1e-4, 0.75, out=outs[0], pooled_out=outs[1], power_out=outs[2])
    for buffer, out in zip(buffers, outs):
        assert np.isnan(buffer[:GUARD]).all() and np.isnan(buffer[-GUARD:]).all() and np.isfinite(out).all()
    np.testing.assert_array_equal(outs[1], caffe_within_pooled(x, size))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.integers(1, 8), st.integers(1, 48), st.integers(1, 4), st.integers(1, 4), st.integers(1, 3),
       st.sampled_from([1, 2]), st.integers(0, 3), st.integers(0, 3))
def test_max_pool_row_loads_are_caffes_loop(h, w, kh, kw, sh, sw, ph, pw):
    """MAX pooling with stride_w 1 or 2 loads the taps of up to 16 outputs of a row at a time: the same
    maxima, signs of zero and first-maximum indices as Caffe's loop (NaNs never win), the clipped
    windows at the row ends included."""
    ph, pw = min(ph, kh - 1), min(pw, kw - 1)
    x = np.round(RNG.standard_normal((2, 2, h, w))).astype(np.float32)
    x[x == 0] = RNG.choice([0.0, -0.0], size=int((x == 0).sum()))      # ties between +0 and -0
    x[..., ::3, ::4] = np.nan
    out_hw = (K.pooled_output_size(h, kh, sh, ph), K.pooled_output_size(w, kw, sw, pw))
    if min(out_hw) <= 0:
        return
    top, mask = K.max_pool_forward(x, (kh, kw), (sh, sw), (ph, pw), out_hw)
    top_r, mask_r = R.max_pool_forward_ref(x, (kh, kw), (sh, sw), (ph, pw), out_hw)
    np.testing.assert_array_equal(top.view(np.int32), top_r.view(np.int32))
    np.testing.assert_array_equal(mask, mask_r)


# -- plans ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape, kernel, stride, pad", [((1, 32, 32, 32), 3, 2, 0), ((2, 3, 9, 11), 3, 2, 1),
                                                         ((2, 4, 7, 9), (2, 3), (1, 2), (1, 0))])
@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_pooling_plan_matches_the_wrappers(shape, kernel, stride, pad, method):
    x = rand(*shape)
    k, s, p = (np.broadcast_to(v, 2) for v in (kernel, stride, pad))
    out_hw = tuple(K.pooled_output_size(shape[2 + i], int(k[i]), int(s[i]), int(p[i])) for i in range(2))
    plan = K.PoolingPlan(method, shape, kernel, stride, pad, out_hw)
    top = np.empty(plan.out_shape, np.float32)
    assert plan.forward(x, top) is top and plan.out_shape == shape[:2] + out_hw
    if method == "MAX":
        want, mask = K.max_pool_forward(x, kernel, stride, pad, out_hw)
        np.testing.assert_array_equal(plan.mask, mask)
    else:
        want = K.ave_pool_forward(x, kernel, stride, pad, out_hw)
        assert plan.mask is None
    np.testing.assert_array_equal(top, want)


def test_lrn_within_plan_matches_the_wrapper():
    x = rand(2, 5, 9, 20)
    plan = K.LRNWithinPlan(x.shape, 5, 0.3, 0.75)
    top = plan.forward(x, np.empty_like(x))
    for got, want in zip((top, plan.pooled, plan.power), K.lrn_within_forward(x, 5, 0.3, 0.75)):
        np.testing.assert_array_equal(got, want)


def _refused(call, match):
    with pytest.raises(KernelArgumentError, match=match):
        call()


def test_plans_refuse_bad_arguments():
    x = rand(1, 2, 6, 6)
    plan = K.PoolingPlan("MAX", x.shape, 2, 2, 0, (3, 3))
    top = np.empty(plan.out_shape, np.float32)
    _refused(lambda: plan.forward(x[:, :1], top), r"max_pool_forward: x must be a numpy array of shape \(1, 2, 6, 6\)")
    _refused(lambda: plan.forward(x, top[..., :2]), "out must be a numpy array of shape")
    _refused(lambda: plan.forward(x.tolist(), top), "x must be a numpy array")
    _refused(lambda: plan.forward(x.astype(np.float64), top), "dtype mismatch")
    _refused(lambda: plan.forward(np.asfortranarray(x), top), "contiguous")
    read_only = top.copy()
    read_only.flags.writeable = False
    _refused(lambda: plan.forward(x, read_only), "read-only")
    shared = np.empty(x.size + top.size, np.float32)
    _refused(lambda: plan.forward(shared[:x.size].reshape(x.shape), shared[x.size - 1:-1].reshape(top.shape)),
             "overlap")
    _refused(lambda: K.PoolingPlan("STOCHASTIC", x.shape, 2, 2, 0, (3, 3)), "method must be")
    _refused(lambda: K.PoolingPlan("AVE", x.shape, 2, 2, 2, (3, 3)), "pad .* must be smaller than kernel")
    _refused(lambda: K.PoolingPlan("AVE", x.shape, 2, 2, 0, (4, 3)), "exceeds the largest pooled size")
    _refused(lambda: K.PoolingPlan("AVE", (1, 2, 6), 2, 2, 0, (3, 3)), "in_shape")
    _refused(lambda: K.LRNWithinPlan(x.shape, 4, 1e-4, 0.75), "odd")
    _refused(lambda: K.LRNWithinPlan(x.shape, 3, 1e-4, -2.0), "PowerLayer special cases")
    _refused(lambda: K.LRNWithinPlan(x.shape, 3, float("inf"), 0.75), "finite")
    lrn = K.LRNWithinPlan(x.shape, 3, 1e-4, 0.75)
    _refused(lambda: lrn.forward(x, x), "lrn_within_forward: out must not overlap")
    _refused(lambda: lrn.forward(x, np.empty((1, 2, 6, 5), np.float32)), "out must be a numpy array of shape")


# -- ReLU in place -----------------------------------------------------------------------------------

def test_relu_in_place_matches_the_out_of_place_pass():
    x = rand(2, 3, 8, 8)
    x.reshape(-1)[:4] = [np.nan, -np.inf, -0.0, np.inf]
    want = K.relu(x, np.empty_like(x))
    inplace = x.copy()
    assert K.relu(inplace, inplace) is inplace
    np.testing.assert_array_equal(inplace, want)
    assert not np.signbit(inplace.reshape(-1)[2]) and np.isnan(inplace.reshape(-1)[1])
    strided = rand(4, 6)[:, ::2]                # not contiguous: refused, never rectified in a copy
    _refused(lambda: K.relu(strided, strided), "C-contiguous")
    read_only = rand(3, 4)
    read_only.flags.writeable = False
    _refused(lambda: K.relu(read_only, read_only), "writeable|read-only")


# -- the layers' reshape short cut -----------------------------------------------------------------

GLUE_NET = """
layer { name: "pool1" type: "Pooling" bottom: "x" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "relu1" type: "ReLU" bottom: "pool1" top: "pool1" }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1"
        lrn_param { local_size: 3 alpha: 5e-05 beta: 0.75 norm_region: WITHIN_CHANNEL } }
layer { name: "pool2" type: "Pooling" bottom: "norm1" top: "pool2" top: "mask2"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "pool3" type: "Pooling" bottom: "pool2" top: "pool3" pooling_param { pool: AVE kernel_size: 3 stride: 1 pad: 1 } }
layer { name: "relu3" type: "ReLU" bottom: "pool3" top: "relu3" }
layer { name: "norm3" type: "LRN" bottom: "relu3" top: "norm3" lrn_param { local_size: 3 alpha: 0.1 beta: 0.6 } }
layer { name: "ip" type: "InnerProduct" bottom: "norm3" top: "ip"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "gaussian" std: 1 } } }
"""


def make_net(body, shape, phase=pyskim.TEST):
    """A net of an Input ``x`` of ``shape`` and ``body``; force_backward in TRAIN."""
    dims = " ".join(f"dim: {d}" for d in shape)
    text = (f"force_backward: {str(phase == pyskim.TRAIN).lower()}\n"
            f'layer {{ name: "x" type: "Input" top: "x" input_param {{ shape {{ {dims} }} }} }}\n{body}')
    return pyskim.Net(text_format.Parse(text, caffe_pb2.NetParameter()), phase)


def glue_net(shape):
    pyskim.set_random_seed(3)
    return make_net(GLUE_NET, shape, pyskim.TRAIN)


def forward_backward(net, x, top_diff):
    net.blobs["x"].data[...] = x
    net.forward()
    net.blobs["ip"].diff[...] = top_diff
    net.backward()
    return {name: blob.data.copy() for name, blob in net.blobs.items()}, net.blobs["x"].diff.copy()


# (2, 3, 17, 17) and (1, 3, 7, 31) both pool to 3 x 2 x 8 = 48 inputs of the InnerProduct.
@pytest.mark.parametrize("first, second", [((1, 3, 17, 17), (3, 3, 17, 17)), ((2, 3, 17, 17), (1, 3, 7, 31))])
def test_glue_layers_follow_a_reshape(first, second):
    """A net used at one shape, then reshaped, computes what a net built at the new shape computes (the
    plans and buffers of the reshape short cut are rebuilt); the same shape twice gives the same
    results."""
    net = glue_net(first)
    x1, x2 = rand(*first), rand(*second)
    d1, d2 = rand(first[0], 5), rand(second[0], 5)
    once = forward_backward(net, x1, d1)
    again = forward_backward(net, x1, d1)
    net.blobs["x"].reshape(second)
    net.reshape()
    got = forward_backward(net, x2, d2)
    fresh = glue_net(second)
    for mine, theirs in zip(net.params["ip"], fresh.params["ip"]):
        theirs.data[...] = mine.data
    want = forward_backward(fresh, x2, d2)
    for (blobs_a, diff_a), (blobs_b, diff_b) in ((once, again), (got, want)):
        assert blobs_a.keys() == blobs_b.keys()
        for name in blobs_a:
            np.testing.assert_array_equal(blobs_a[name], blobs_b[name], err_msg=name)
        np.testing.assert_array_equal(diff_a, diff_b)


def test_layers_name_themselves_when_a_plan_refuses():
    with pytest.raises(pyskim.errors.NetError, match="layer 'norm' of type LRN: lrn_within_forward: alpha must be"):
        make_net('layer { name: "norm" type: "LRN" bottom: "x" top: "y" '
                 'lrn_param { local_size: 3 alpha: inf beta: 0.75 norm_region: WITHIN_CHANNEL } }', (1, 2, 5, 5))
    net = make_net('layer { name: "pool" type: "Pooling" bottom: "x" top: "x" '
                   'pooling_param { pool: MAX kernel_size: 2 stride: 2 } }', (1, 2, 6, 6))
    with pytest.raises(KernelArgumentError, match="layer 'pool' .*max_pool_forward: x must be"):
        net.forward()                       # an in-place pooling would overwrite inputs still to be read

