"""pyskim's dense products (pyskim.kernels.gemm) against their NumPy references: the fused-im2col
convolution products over Caffe's geometries, the strided matrix product, identical results on 1
and several threads, and the argument checks."""
import numpy as np
import pytest

from pyskim.errors import KernelArgumentError
from pyskim.kernels import gemm
from pyskim.kernels import reference as ref
from pyskim.kernels.threads import get_num_threads, set_num_threads

# (N, C, H, W, M, group, kernel, pad, stride, dilation)
GEOMETRIES = [
    (2, 1, 28, 28, 20, 1, (5, 5), (0, 0), (1, 1), (1, 1)),     # LeNet conv1
    (3, 20, 12, 12, 50, 1, (5, 5), (0, 0), (1, 1), (1, 1)),    # LeNet conv2
    (2, 3, 32, 32, 32, 1, (5, 5), (2, 2), (1, 1), (1, 1)),     # CIFAR conv1
    (1, 3, 35, 35, 16, 1, (11, 11), (0, 0), (4, 4), (1, 1)),   # AlexNet conv1, smaller
    (2, 8, 13, 13, 40, 2, (3, 3), (1, 1), (1, 1), (1, 1)),     # grouped 3x3
    (2, 3, 17, 13, 7, 1, (3, 2), (1, 0), (2, 3), (1, 1)),      # rectangular, strided
    (2, 4, 11, 9, 5, 1, (3, 3), (2, 1), (1, 2), (2, 1)),       # dilated
    (2, 3, 9, 9, 4, 1, (3, 3), (2, 2), (1, 1), (2, 2)),        # Caffe's conv_dilation case
    (3, 6, 7, 6, 9, 3, (1, 1), (0, 0), (1, 1), (1, 1)),        # 1x1, groups
    (1, 2, 5, 5, 3, 1, (5, 5), (1, 1), (2, 2), (1, 1)),
    (5, 2, 40, 3, 13, 1, (3, 3), (1, 1), (1, 1), (1, 1)),      # panels spanning images
    (2, 3, 67, 70, 16, 1, (11, 11), (2, 3), (4, 4), (1, 1)),   # stride 4, padded, rows across panels
    (1, 2, 12, 150, 8, 1, (7, 3), (3, 1), (2, 3), (1, 1)),     # stride 3, rows longer than a panel
    (2, 2, 20, 90, 6, 1, (3, 2), (1, 1), (1, 8), (1, 1)),      # stride 8 > kernel (gaps between taps)
    (1, 2, 9, 60, 5, 1, (2, 3), (0, 1), (1, 9), (1, 1)),       # stride 9: gathered, not row runs
]


def _case(geometry, seed=0):
    n, c, h, w, m, group, kernel, pad, stride, dilation = geometry
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    weights = rng.standard_normal((m, c // group) + kernel).astype(np.float32)
    bias = rng.standard_normal(m).astype(np.float32)
    return x, weights, bias, (kernel, pad, stride, dilation), group


def _close(got, expected, scale):
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * scale)


@pytest.fixture(params=[1, 2, 3], ids=lambda t: f"{t}threads")
def threads(request, monkeypatch):
    previous = get_num_threads()
    monkeypatch.setattr(gemm, "PARALLEL_MIN_MACS", 0)      # small cases multi-threaded too
    set_num_threads(request.param)
    yield request.param
    set_num_threads(previous)


@pytest.mark.parametrize("geometry", GEOMETRIES[:5] + [(2, 64, 9, 9, 24, 1, (3, 3), (1, 1), (1, 1), (1, 1))])
def test_conv_forward_with_relu_is_the_product_then_caffes_relu(geometry, threads):
    """``relu=True``: exactly the product then Caffe's ReLU (x < 0 ? 0 : x), applied once, after the
    last block of the sum (the last geometry's K = 576 runs in two blocks, whose partial sums may
    be negative where the whole is not); NaN passes through as Caffe's ReLU leaves it."""
    x, weights, bias, geo, group = _case(geometry)
    x[0, 0, 0, :2] = np.nan                                     # NaN outputs near the first position
    plain = gemm.conv2d_forward(x, weights, bias, *geo, group=group)
    rectified = gemm.conv2d_forward(x, weights, bias, *geo, group=group, relu=True)
    expected = np.where(plain < 0, np.float32(0), plain)
    np.testing.assert_array_equal(rectified, expected)           # NaN positions compare equal too
    assert np.isnan(rectified).any() and not (rectified < 0).any() and (rectified > 0).any()


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_conv_products_match_references(geometry, threads):
    x, weights, bias, geo, group = _case(geometry)
    y = gemm.conv2d_forward(x, weights, bias, *geo, group=group)
    expected = ref.conv2d_forward_ref(x, weights, bias, *geo, group)
    _close(y, expected, np.abs(expected).max())
    y_nobias = gemm.conv2d_forward(x, weights, None, *geo, group=group)
    _close(y_nobias, expected - bias[None, :, None, None], np.abs(expected).max())

    top_diff = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
    weight_diff = np.full(weights.shape, 0.5, np.float32)           # accumulated into, as Caffe
    gemm.conv2d_weight_grad(x, top_diff, weight_diff, *geo, group=group)
    expected_w = ref.conv2d_weight_grad_ref(x, top_diff, *geo, group).reshape(weights.shape) + 0.5
    _close(weight_diff, expected_w, np.abs(expected_w).max())

    col = gemm.conv2d_column_grad(weights, top_diff, group)
    expected_col = ref.conv2d_column_grad_ref(weights, top_diff, group)
    _close(col, expected_col, np.abs(expected_col).max())


@pytest.mark.parametrize("geometry", [GEOMETRIES[1], GEOMETRIES[4], GEOMETRIES[10]])
def test_results_do_not_depend_on_threads(geometry, monkeypatch):
    """Every element is the same sum in the same order on any number of threads: bit-identical."""
    monkeypatch.setattr(gemm, "PARALLEL_MIN_MACS", 0)
    x, weights, bias, geo, group = _case(geometry, seed=3)
    top_diff = np.random.default_rng(4).standard_normal(
        gemm.conv2d_forward(x, weights, bias, *geo, group=group).shape).astype(np.float32)
    previous = get_num_threads()
    results = []
    try:
        for t in (1, 2, 4):
            set_num_threads(t)
            weight_diff = np.zeros(weights.shape, np.float32)
            gemm.conv2d_weight_grad(x, top_diff, weight_diff, *geo, group=group)
            results.append((gemm.conv2d_forward(x, weights, bias, *geo, group=group), weight_diff,
                            gemm.conv2d_column_grad(weights, top_diff, group),
                            gemm.matmul(x.reshape(x.shape[0], -1), x.reshape(x.shape[0], -1).T)))
    finally:
        set_num_threads(previous)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("m, k, n", [(1, 1, 1), (5, 7, 3), (64, 800, 500), (13, 33, 47), (1, 300, 1000),
                                     (100, 20, 17)])
@pytest.mark.parametrize("layout", ["nn", "tn", "nt", "tt"])
def test_matmul_matches_numpy(m, k, n, layout, threads):
    rng = np.random.default_rng(m * 1000 + k + n)
    a = rng.standard_normal((k, m) if layout[0] == "t" else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if layout[1] == "t" else (k, n)).astype(np.float32)
    a = a.T if layout[0] == "t" else a
    b = b.T if layout[1] == "t" else b
    bias = rng.standard_normal(n).astype(np.float32)
    expected = a.astype(np.float64) @ b.astype(np.float64)
    scale = np.abs(expected).max() + 1
    _close(gemm.matmul(a, b), expected, scale)
    _close(gemm.matmul(a, b, bias=bias), expected + bias, scale)
    out = np.ones((m, n), np.float32)
    gemm.matmul(a, b, out=out, accumulate=True)
    _close(out, expected + 1, scale)


def test_arguments_are_checked():
    x = np.zeros((2, 4, 8, 8), np.float32)
    w = np.zeros((6, 2, 3, 3), np.float32)
    with pytest.raises(KernelArgumentError, match="group"):
        gemm.conv2d_forward(x, w, None, 3, group=3)
    with pytest.raises(KernelArgumentError, match="values per output channel"):
        gemm.conv2d_forward(x, w, None, 3, group=1)
    with pytest.raises(KernelArgumentError, match="bias"):
        gemm.conv2d_forward(x, w, np.zeros(5, np.float32), 3, group=2)
    with pytest.raises(KernelArgumentError, match="out"):
        gemm.conv2d_forward(x, w, None, 3, group=2, out=np.zeros((2, 6, 5, 5), np.float32))
    with pytest.raises(KernelArgumentError, match="does not fit"):
        gemm.conv2d_forward(x, w, None, 9, group=2)
    with pytest.raises(KernelArgumentError, match="top_diff"):
        gemm.conv2d_weight_grad(x, np.zeros((2, 6, 5, 5), np.float32), np.zeros_like(w), 3, group=2)
    with pytest.raises(KernelArgumentError, match="writeable"):
        gemm.conv2d_weight_grad(x, np.zeros((2, 6, 6, 6), np.float32), np.zeros((6, 18), np.float64), 3, group=2)
    with pytest.raises(KernelArgumentError, match="overlap"):
        gemm.conv2d_weight_grad(x, np.zeros((2, 6, 6, 6), np.float32), x.reshape(-1)[:108].reshape(6, 18), 3,
                                group=2)
    a = np.zeros((3, 4), np.float32)
    with pytest.raises(KernelArgumentError, match="do not chain"):
        gemm.matmul(a, np.zeros((5, 2), np.float32))
    with pytest.raises(KernelArgumentError, match="accumulate"):
        gemm.matmul(a, np.zeros((4, 2), np.float32), accumulate=True)
    with pytest.raises(KernelArgumentError, match="overlap"):
        gemm.matmul(a, np.zeros((4, 4), np.float32), out=a)


@pytest.mark.parametrize("geometry", [g for g in GEOMETRIES if gemm.input_grad_applies(g[7], g[8], g[9], g[6])])
def test_input_grad_matches_column_grad_and_col2im(geometry, threads):
    """The stride-1 bottom gradient as a flipped convolution equals col2im of the column gradient."""
    x, weights, _, (kernel, pad, stride, dilation), group = _case(geometry, seed=5)
    oh, ow = [ref._out(s, k, p, st, d) for s, k, p, st, d in zip(x.shape[2:], kernel, pad, stride, dilation)]
    top_diff = np.random.default_rng(6).standard_normal((x.shape[0], weights.shape[0], oh, ow)).astype(np.float32)
    got = gemm.conv2d_input_grad(weights, top_diff, kernel, pad, dilation, group, out=np.empty_like(x))
    col = ref.conv2d_column_grad_ref(weights, top_diff, group).astype(np.float64)
    expected = ref.col2im_batch_ref(col, x.shape, kernel, pad, stride, dilation)
    _close(got, expected, np.abs(expected).max())


def test_input_grad_refuses_other_geometry():
    w = np.zeros((4, 2, 3, 3), np.float32)
    with pytest.raises(KernelArgumentError, match="pad"):
        gemm.conv2d_input_grad(w, np.zeros((1, 4, 9, 9), np.float32), 3, pad=3,
                               out=np.zeros((1, 2, 5, 5), np.float32))
    with pytest.raises(KernelArgumentError, match="top_diff"):
        gemm.conv2d_input_grad(w, np.zeros((1, 4, 4, 4), np.float32), 3, pad=1,
                               out=np.zeros((1, 2, 5, 5), np.float32))
