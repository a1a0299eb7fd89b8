"""The Cython kernels against their NumPy references, and the wrappers' argument checking."""

import numpy as np
import pytest

from pyskim.kernels import dense as K
from pyskim.kernels import reference as R

RNG = np.random.default_rng(1234)


def rand(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


# -- im2col / col2im --------------------------------------------------------------------------------

# (C, H, W, kernel, pad, stride, dilation)
CONV_CASES = [
    (1, 5, 5, (1, 1), (0, 0), (1, 1), (1, 1)),
    (3, 7, 9, (3, 3), (1, 1), (1, 1), (1, 1)),
    (2, 8, 6, (2, 3), (0, 2), (2, 1), (1, 2)),
    (4, 9, 7, (3, 1), (2, 0), (3, 2), (2, 1)),
    (2, 5, 5, (5, 5), (2, 2), (1, 1), (1, 1)),
    (3, 11, 10, (3, 3), (2, 2), (2, 3), (2, 2)),
    (1, 3, 4, (4, 4), (2, 1), (1, 1), (1, 1)),     # kernel larger than the image
    (2, 6, 6, (1, 2), (3, 3), (4, 5), (1, 1)),     # stride > kernel, big pad
    (5, 4, 13, (2, 2), (0, 0), (2, 2), (3, 4)),
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_im2col_col2im_match_reference(case):
    c, h, w, kern, pad, stride, dil = case
    img = rand(c, h, w)
    col = K.im2col(img, kern, pad, stride, dil)
    oh = K.conv_output_size(h, kern[0], pad[0], stride[0], dil[0])
    ow = K.conv_output_size(w, kern[1], pad[1], stride[1], dil[1])
    assert col.shape == (c * kern[0] * kern[1], oh * ow) and col.dtype == np.float32
    np.testing.assert_array_equal(col, R.im2col_ref(img, kern, pad, stride, dil))
    # col2im of an arbitrary column matrix, summed in Caffe's order: bit-identical
    cols = rand(*col.shape)
    back = K.col2im(cols, img.shape, kern, pad, stride, dil)
    np.testing.assert_array_equal(back, R.col2im_ref(cols, img.shape, kern, pad, stride, dil))
    # the N-d NumPy version agrees exactly in 2-D
    np.testing.assert_array_equal(K.im2col_nd(img, kern, pad, stride, dil), col)
    np.testing.assert_array_equal(K.col2im_nd(cols, img.shape, kern, pad, stride, dil), back)


def test_im2col_out_and_col2im_accumulate():
    img = rand(3, 6, 5)
    col = np.full((27, 30), 7.0, np.float32)
    assert K.im2col(img, 3, 1, 1, 1, out=col) is col
    np.testing.assert_array_equal(col, R.im2col_ref(img, (3, 3), (1, 1), (1, 1), (1, 1)))
    base = rand(3, 6, 5)
    acc = base.copy()
    K.col2im(col, (3, 6, 5), 3, 1, 1, 1, out=acc, accumulate=True)
    np.testing.assert_allclose(acc, base + K.col2im(col, (3, 6, 5), 3, 1, 1, 1), rtol=1e-6, atol=1e-6)
    K.col2im(col, (3, 6, 5), 3, 1, 1, 1, out=acc)      # overwrite, not accumulate
    np.testing.assert_array_equal(acc, K.col2im(col, (3, 6, 5), 3, 1, 1, 1))


def test_col2im_is_adjoint_of_im2col():
    img, kern, pad, stride, dil = rand(3, 8, 7), (3, 2), (1, 2), (2, 1), (1, 2)
    col = K.im2col(img, kern, pad, stride, dil)
    y = rand(*col.shape)
    lhs = float(np.dot(col.ravel().astype(np.float64), y.ravel()))
    rhs = float(np.dot(img.ravel().astype(np.float64), K.col2im(y, img.shape, kern, pad, stride, dil).ravel()))
    assert lhs == pytest.approx(rhs, rel=1e-5)


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("batch", [1, 3])
def test_batched_im2col_col2im_match_reference(case, batch):
    rng = np.random.default_rng(batch)          # own stream: the other tests' data stay as they were
    c, h, w, kern, pad, stride, dil = case
    images = rng.standard_normal((batch, c, h, w)).astype(np.float32)
    geometry = (*kern, *pad, *stride, *dil)
    expected = R.im2col_batch_ref(images, kern, pad, stride, dil)
    col = np.full(expected.shape, np.nan, np.float32)
    assert K.im2col_batch(images, *geometry, col) is col
    np.testing.assert_array_equal(col, expected)
    np.testing.assert_array_equal(K.im2col_batch(images, *geometry), expected)    # allocated
    # the fold overwrites its output and sums in Caffe's order: bit-identical
    cols = rng.standard_normal(col.shape).astype(np.float32)
    back = np.full(images.shape, np.nan, np.float32)
    assert K.col2im_batch(cols, *geometry, back) is back
    np.testing.assert_array_equal(back, R.col2im_batch_ref(cols, images.shape, kern, pad, stride, dil))


def test_batched_im2col_col2im_threads_do_not_change_results():
    rng = np.random.default_rng(5)
    images, geometry = rng.standard_normal((4, 3, 17, 15)).astype(np.float32), (3, 2, 1, 0, 2, 1, 1, 2)
    one = K.im2col_batch(images, *geometry, num_threads=1)
    np.testing.assert_array_equal(K.im2col_batch(images, *geometry, num_threads=3), one)
    cols = rng.standard_normal(one.shape).astype(np.float32)
    folded = [K.col2im_batch(cols, *geometry, np.empty_like(images), num_threads=n) for n in (1, 3)]
    np.testing.assert_array_equal(folded[0], folded[1])


@pytest.mark.parametrize("case", [
    ((2, 5, 6, 4), (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1)),
    ((1, 4, 7, 5), (2, 3, 1), (0, 1, 2), (2, 1, 3), (1, 2, 1)),
    ((3, 6, 3, 3), (1, 2, 2), (2, 0, 1), (3, 2, 1), (2, 1, 1)),
])
def test_nd_3d_matches_reference(case):
    shape, kern, pad, stride, dil = case
    img = rand(*shape)
    col = K.im2col_nd(img, kern, pad, stride, dil)
    np.testing.assert_array_equal(col, R.im2col_nd_ref(img, kern, pad, stride, dil))
    cols = rand(*col.shape)
    np.testing.assert_array_equal(K.col2im_nd(cols, shape, kern, pad, stride, dil),
                                  R.col2im_nd_ref(cols, shape, kern, pad, stride, dil))


def test_nd_1d():
    img = rand(2, 9)
    col = K.im2col_nd(img, 3, 1, 2, 2)
    np.testing.assert_array_equal(col, R.im2col_nd_ref(img, (3,), (1,), (2,), (2,)))


# -- pooling ----------------------------------------------------------------------------------------

# (N, C, H, W, kernel, stride, pad)
POOL_CASES = [
    (2, 3, 7, 8, (3, 3), (2, 2), (1, 1)),     # AlexNet-like, last window runs into the padding
    (1, 2, 6, 6, (3, 3), (2, 2), (0, 0)),     # ceil without pad: last window clipped by the image
    (2, 2, 4, 4, (3, 3), (3, 3), (2, 2)),     # ceil puts a window start in the padding -> dropped
    (1, 3, 5, 9, (2, 3), (1, 2), (1, 2)),
    (2, 1, 9, 7, (3, 2), (3, 1), (2, 1)),
    (1, 2, 2, 3, (3, 3), (2, 2), (0, 0)),     # kernel larger than the image
    (1, 2, 8, 8, (2, 2), (2, 2), (0, 0)),
    (1, 1, 5, 5, (1, 1), (3, 3), (0, 0)),     # Caffe quirk: last window starts outside the image
]
#: Geometries of the 16-outputs-at-a-time paths of MAX pooling.
VECTOR_POOL_CASES = [
    (2, 3, 24, 24, (2, 2), (2, 2), (0, 0)),   # LeNet: every window inside, 16 outputs at a time
    (1, 2, 27, 27, (3, 3), (2, 2), (0, 0)),   # AlexNet-like interior plane with a partial last 16
    (1, 2, 9, 40, (3, 3), (2, 1), (1, 1)),    # padded: runs of 16 inner outputs along a row
    (1, 1, 6, 70, (2, 3), (1, 3), (0, 1)),
]


def _pooled(h, w, kern, stride, pad):
    return (K.pooled_output_size(h, kern[0], stride[0], pad[0]),
            K.pooled_output_size(w, kern[1], stride[1], pad[1]))


def test_pooled_output_size_caffe_rounding():
    assert K.pooled_output_size(7, 3, 2, 1) == 4
    assert K.pooled_output_size(6, 3, 2, 0) == 3       # ceil
    assert K.pooled_output_size(4, 3, 3, 2) == 2       # ceil gives 3, clipped (start 4 >= 4)
    assert K.pooled_output_size(227, 3, 2, 0) == 113
    assert K.pooled_output_size(13, 3, 2, 0) == 6


@pytest.mark.parametrize("case", POOL_CASES)
def test_max_pool_matches_reference(case):
    n, c, h, w, kern, stride, pad = case
    x = rand(n, c, h, w)
    x[0, 0, 0, :2] = x[0, 0, 0, 0]                     # ties: the first one must win
    out_hw = _pooled(h, w, kern, stride, pad)
    top, mask = K.max_pool_forward(x, kern, stride, pad, out_hw)
    top_r, mask_r = R.max_pool_forward_ref(x, kern, stride, pad, out_hw)
    assert mask.dtype == np.int32
    np.testing.assert_array_equal(top, top_r)
    np.testing.assert_array_equal(mask, mask_r)
    g = rand(*top.shape)
    np.testing.assert_array_equal(K.max_pool_backward(g, mask, (h, w)),
                                  R.max_pool_backward_ref(g, mask, (h, w)))


@pytest.mark.parametrize("case", POOL_CASES + VECTOR_POOL_CASES)
def test_ave_pool_matches_reference(case):
    n, c, h, w, kern, stride, pad = case
    x = rand(n, c, h, w)
    out_hw = _pooled(h, w, kern, stride, pad)
    top = K.ave_pool_forward(x, kern, stride, pad, out_hw)
    np.testing.assert_array_equal(top, R.ave_pool_forward_ref(x, kern, stride, pad, out_hw))
    g = rand(*top.shape)
    np.testing.assert_array_equal(K.ave_pool_backward(g, kern, stride, pad, (h, w)),
                                  R.ave_pool_backward_ref(g, kern, stride, pad, (h, w)))


def test_ave_pool_divisor_counts_padding():
    x = np.ones((1, 1, 3, 3), np.float32)
    top = K.ave_pool_forward(x, 3, 2, 1, (2, 2))
    # window rows/cols [-1, 2) and [1, 4): 4 of 9 inputs inside the image, divisor 9
    np.testing.assert_allclose(top, np.full((1, 1, 2, 2), 4 / 9, np.float32), rtol=1e-6)


@pytest.mark.parametrize("case", VECTOR_POOL_CASES)
def test_max_pool_ties_and_nans_in_vector_paths(case):
    """Many equal values (the first maximum in (h, w) order wins) and NaNs (never a maximum, as
    Caffe's strict ``>``) where outputs go 16 at a time."""
    n, c, h, w, kern, stride, pad = case
    x = np.round(np.random.default_rng(7).standard_normal((n, c, h, w)) * 2).astype(np.float32)
    x[..., ::5, ::3] = np.nan
    out_hw = _pooled(h, w, kern, stride, pad)
    top, mask = K.max_pool_forward(x, kern, stride, pad, out_hw)
    top_r, mask_r = R.max_pool_forward_ref(x, kern, stride, pad, out_hw)
    np.testing.assert_array_equal(top, top_r)
    np.testing.assert_array_equal(mask, mask_r)


def test_max_pool_special_values():
    x = np.full((1, 1, 2, 2), -np.inf, np.float32)
    x[0, 0, 1, 1] = np.nan
    top, mask = K.max_pool_forward(x, 2, 2, 0, (1, 1))
    assert top[0, 0, 0, 0] == -np.finfo(np.float32).max and mask[0, 0, 0, 0] == -1
    x[0, 0, 0, 1] = 3.0
    top, mask = K.max_pool_forward(x, 2, 2, 0, (1, 1))
    assert top[0, 0, 0, 0] == 3.0 and mask[0, 0, 0, 0] == 1
    # out-of-plane mask entries are ignored by the backward pass
    bd = K.max_pool_backward(np.ones((1, 1, 1, 3), np.float32), np.array([[[[-1, 4, 2]]]], np.int32), (2, 2))
    np.testing.assert_array_equal(bd.ravel(), [0, 0, 1, 0])


def test_pool_out_arrays_reused():
    x = rand(2, 3, 7, 8)
    top = np.empty((2, 3, 4, 4), np.float32)
    mask = np.empty((2, 3, 4, 4), np.int32)
    t, m = K.max_pool_forward(x, 3, 2, 1, (4, 4), out=top, mask_out=mask)
    assert t is top and m is mask
    bd = np.full(x.shape, 5.0, np.float32)
    assert K.max_pool_backward(rand(2, 3, 4, 4), mask, (7, 8), out=bd) is bd
    assert K.ave_pool_backward(rand(2, 3, 4, 4), 3, 2, 1, (7, 8), out=bd) is bd
    assert not np.any(bd == 5.0)


# -- LRN --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size,alpha,beta,k", [
    (5, 1e-4, 0.75, 1.0), (3, 2.0, 0.5, 2.0), (1, 1.0, 0.75, 1.0), (7, 0.5, 0.75, 1.0), (9, 1e-3, 1.5, 0.5),
])
@pytest.mark.parametrize("shape", [(2, 16, 5, 7), (1, 3, 17, 19), (3, 1, 4, 4)])
def test_lrn_across_matches_reference(shape, size, alpha, beta, k):
    x = rand(*shape, scale=3.0)
    top, scale = K.lrn_across_forward(x, size, alpha, beta, k)
    top_r, scale_r = R.lrn_across_forward_ref(x, size, alpha, beta, k)
    np.testing.assert_allclose(scale, scale_r, rtol=1e-5)
    np.testing.assert_allclose(top, top_r, rtol=1e-5, atol=1e-6 * np.abs(top_r).max())
    g = rand(*shape)
    bd = K.lrn_across_backward(x, top, scale, g, size, alpha, beta)
    bd_r = R.lrn_across_backward_ref(x, top, scale, g, size, alpha, beta)
    np.testing.assert_allclose(bd, bd_r, rtol=1e-5, atol=1e-5 * np.abs(bd_r).max())


def test_lrn_backward_is_gradient():
    x = rand(1, 6, 2, 3).astype(np.float64)
    size, alpha, beta, k = 3, 0.7, 0.75, 1.5
    g = rand(1, 6, 2, 3).astype(np.float64)
    top, scale = K.lrn_across_forward(x, size, alpha, beta, k)
    bd = K.lrn_across_backward(x, top, scale, g, size, alpha, beta)
    eps = 1e-5
    for idx in [(0, 0, 0, 0), (0, 2, 1, 1), (0, 5, 1, 2)]:
        xp, xm = x.copy(), x.copy()
        xp[idx] += eps
        xm[idx] -= eps
        fp = np.sum(R.lrn_across_forward_ref(xp, size, alpha, beta, k)[0].astype(np.float64) * g)
        fm = np.sum(R.lrn_across_forward_ref(xm, size, alpha, beta, k)[0].astype(np.float64) * g)
        assert bd[idx] == pytest.approx((fp - fm) / (2 * eps), rel=2e-2, abs=1e-3)


# -- threads ----------------------------------------------------------------------------------------

def _threaded_run(x, g):
    col = K.im2col(x[0], 3, 1, 1)
    top, mask = K.max_pool_forward(x, 3, 2, 1, (17, 16))
    ltop, scale = K.lrn_across_forward(x, 5, 1e-2, 0.75, 1.0)
    return (col, K.col2im(col, x[0].shape, 3, 1, 1), top, mask, K.max_pool_backward(top, mask, (33, 31)),
            K.ave_pool_forward(x, 3, 2, 1, (17, 16)), K.ave_pool_backward(top, 3, 2, 1, (33, 31)),
            ltop, scale, K.lrn_across_backward(x, ltop, scale, g, 5, 1e-2, 0.75))


def test_threads_do_not_change_results(monkeypatch):
    monkeypatch.setattr(K, "PARALLEL_MIN_ELEMENTS", 0)   # run these small arrays multi-threaded
    old = K.get_num_threads()
    x, g = rand(2, 8, 33, 31), rand(2, 8, 33, 31)
    try:
        K.set_num_threads(1)
        one = _threaded_run(x, g)
        K.set_num_threads(3)
        assert K.get_num_threads() == 3
        three = _threaded_run(x, g)
    finally:
        K.set_num_threads(old)
    for a, b in zip(one, three):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError):
        K.set_num_threads(0)


# -- argument checking ------------------------------------------------------------------------------

IMG = rand(2, 5, 5)
X4 = rand(1, 2, 5, 5)
COL = K.im2col(IMG, 3, 1, 1)
TOP, MASK = K.max_pool_forward(X4, 2, 2, 0, (2, 2))
LTOP, LSCALE = K.lrn_across_forward(X4, 3, 1e-4, 0.75, 1.0)

BAD_CALLS = {
    # wrong dtype
    "im2col_complex": lambda: K.im2col(IMG.astype(np.complex64), 3),
    "im2col_str": lambda: K.im2col(np.array([[["a"]]]), 1),
    "im2col_out_f64": lambda: K.im2col(IMG, 3, 1, out=np.empty(COL.shape, np.float64)),
    "max_mask_float": lambda: K.max_pool_backward(TOP, MASK.astype(np.float32), (5, 5)),
    "lrn_obj": lambda: K.lrn_across_forward(np.empty((1, 1, 1, 1), object), 3, 1e-4, 0.75, 1.0),
    # wrong ndim
    "im2col_2d": lambda: K.im2col(IMG[0], 3),
    "col2im_3d": lambda: K.col2im(COL[None], IMG.shape, 3, 1),
    "maxf_3d": lambda: K.max_pool_forward(IMG, 2, 2, 0, (2, 2)),
    "maxb_3d": lambda: K.max_pool_backward(TOP[0], MASK[0], (5, 5)),
    "avef_5d": lambda: K.ave_pool_forward(X4[None], 2, 2, 0, (2, 2)),
    "aveb_3d": lambda: K.ave_pool_backward(TOP[0], 2, 2, 0, (5, 5)),
    "lrnf_3d": lambda: K.lrn_across_forward(IMG, 3, 1e-4, 0.75, 1.0),
    "lrnb_3d": lambda: K.lrn_across_backward(IMG, LTOP, LSCALE, LTOP, 3, 1e-4, 0.75),
    "im2col_nd_1d": lambda: K.im2col_nd(IMG[0, 0], 3),
    "col2im_nd_shape": lambda: K.col2im_nd(COL, (2,), 3, 1),
    # wrong shape
    "col2im_shape": lambda: K.col2im(COL[:, :-1], IMG.shape, 3, 1),
    "col2im_out_shape": lambda: K.col2im(COL, IMG.shape, 3, 1, out=np.empty((2, 5, 4), np.float32)),
    "col2im_nd_cols": lambda: K.col2im_nd(COL[:-1], IMG.shape, 3, 1),
    "im2col_kernel_too_big": lambda: K.im2col(IMG, 7),
    "im2col_kernel_len": lambda: K.im2col(IMG, (3, 3, 3)),
    "im2col_nd_kernel_len": lambda: K.im2col_nd(IMG, (3, 3, 3)),
    "maxb_mask_shape": lambda: K.max_pool_backward(TOP, MASK[:, :, :1], (5, 5)),
    "maxf_out_too_big": lambda: K.max_pool_forward(X4, 2, 2, 0, (4, 2)),
    "maxf_out_zero": lambda: K.max_pool_forward(X4, 2, 2, 0, (0, 2)),
    "maxf_out_shape": lambda: K.max_pool_forward(X4, 2, 2, 0, (2, 2), out=np.empty((1, 2, 3, 2), np.float32)),
    "maxf_mask_dtype": lambda: K.max_pool_forward(X4, 2, 2, 0, (2, 2), mask_out=np.empty(TOP.shape, np.int64)),
    "aveb_in_too_small": lambda: K.ave_pool_backward(TOP, 2, 2, 0, (2, 2)),
    "lrnb_shape": lambda: K.lrn_across_backward(X4, LTOP[:, :1], LSCALE, LTOP, 3, 1e-4, 0.75),
    "lrn_even_size": lambda: K.lrn_across_forward(X4, 4, 1e-4, 0.75, 1.0),
    "lrn_nan_alpha": lambda: K.lrn_across_forward(X4, 3, float("nan"), 0.75, 1.0),
    # negative pad / non-positive kernel, stride, dilation
    "im2col_neg_pad": lambda: K.im2col(IMG, 3, -1),
    "col2im_neg_pad": lambda: K.col2im(COL, IMG.shape, 3, (1, -1)),
    "im2col_nd_neg_pad": lambda: K.im2col_nd(IMG, 3, -1),
    "col2im_nd_neg_pad": lambda: K.col2im_nd(COL, IMG.shape, 3, -1),
    "im2col_zero_stride": lambda: K.im2col(IMG, 3, 1, 0),
    "im2col_zero_dil": lambda: K.im2col(IMG, 3, 1, 1, 0),
    "im2col_zero_kernel": lambda: K.im2col(IMG, 0),
    "im2col_float_kernel": lambda: K.im2col(IMG, 2.5),
    "maxf_neg_pad": lambda: K.max_pool_forward(X4, 2, 2, -1, (2, 2)),
    "maxf_pad_ge_kernel": lambda: K.max_pool_forward(X4, 2, 2, 2, (2, 2)),
    "avef_neg_pad": lambda: K.ave_pool_forward(X4, 2, 2, (0, -1), (2, 2)),
    "avef_zero_stride": lambda: K.ave_pool_forward(X4, 2, 0, 0, (2, 2)),
    "aveb_neg_pad": lambda: K.ave_pool_backward(TOP, 2, 2, -1, (5, 5)),
    # out= must not alias an input, must be contiguous
    "im2col_out_alias": lambda: K.im2col(COL[:2, :25].reshape(2, 5, 5), 1, out=COL[:2, :25]),
    "col2im_out_noncontig": lambda: K.col2im(COL, IMG.shape, 3, 1,
                                             out=np.empty((2, 5, 10), np.float32)[:, :, ::2]),
    "col2im_accumulate_no_out": lambda: K.col2im(COL, IMG.shape, 3, 1, accumulate=True),
    # the batched im2col/col2im: the column matrix must match the images and the geometry
    "im2col_batch_col_shape": lambda: K.im2col_batch(X4, 3, 3, 1, 1, 1, 1, 1, 1, np.empty((18, 49), np.float32)),
    "col2im_batch_col_shape": lambda: K.col2im_batch(np.empty((18, 49), np.float32), 3, 3, 1, 1, 1, 1, 1, 1,
                                                     np.empty_like(X4)),
    "col2im_batch_no_img": lambda: K.col2im_batch(np.empty((18, 25), np.float32), 3, 3, 1, 1, 1, 1, 1, 1, None),
    "im2col_batch_neg_pad": lambda: K.im2col_batch(X4, 3, 3, -1, 1, 1, 1, 1, 1),
    "im2col_batch_zero_threads": lambda: K.im2col_batch(X4, 3, 3, 1, 1, 1, 1, 1, 1, num_threads=0),
    "im2col_batch_bool_threads": lambda: K.im2col_batch(X4, 3, 3, 1, 1, 1, 1, 1, 1, num_threads=True),
    "col2im_batch_float_threads": lambda: K.col2im_batch(np.empty((18, 25), np.float32), 3, 3, 1, 1, 1, 1, 1, 1,
                                                         np.empty_like(X4), num_threads=2.0),
}


@pytest.mark.parametrize("name", sorted(BAD_CALLS))
def test_wrappers_reject_bad_arguments(name):
    with pytest.raises(ValueError):
        BAD_CALLS[name]()


def test_inputs_are_converted():
    col = K.im2col(IMG.astype(np.float64)[:, ::-1], 3, 1, 1)       # float64, non-contiguous
    np.testing.assert_array_equal(col, K.im2col(np.ascontiguousarray(IMG[:, ::-1]), 3, 1, 1))
    top, _ = K.max_pool_forward(X4.tolist(), 2, 2, 0, (2, 2))
    np.testing.assert_array_equal(top, TOP)
    bd = K.max_pool_backward(TOP, MASK.astype(np.int64), (5, 5))
    np.testing.assert_array_equal(bd, K.max_pool_backward(TOP, MASK, (5, 5)))


@pytest.mark.parametrize("alpha, beta", [(0.01, 0.9), (-1.0, 1.0), (0.5, 0.0), (0.0, 0.7), (3.0, -0.25)])
@pytest.mark.parametrize("threads", [1, 2])
def test_axpby_matches_caffe_rounding(alpha, beta, threads, monkeypatch):
    """y = alpha*x + beta*y with each product rounded to float32 (no fused multiply-add), bit for bit;
    a zero coefficient drops its term (0 * inf stays out)."""
    monkeypatch.setattr(K, "PARALLEL_MIN_ELEMENTS", 0)
    previous = K.get_num_threads()
    K.set_num_threads(threads)
    try:
        rng = np.random.default_rng(11)
        x = rng.standard_normal(100_003).astype(np.float32)
        y = rng.standard_normal(100_003).astype(np.float32)
        x[5], y[7] = np.inf, np.inf
        a, b = np.float32(alpha), np.float32(beta)
        with np.errstate(invalid="ignore"):
            if b == 0:
                expected = a * x
            elif a == 0:
                expected = b * y
            else:
                expected = (b * y) + (a * x)
        got = y.copy()
        assert K.axpby(alpha, x, beta, got) is got
        np.testing.assert_array_equal(got, expected)
    finally:
        K.set_num_threads(previous)
    with pytest.raises(K.KernelArgumentError, match="y must"):
        K.axpby(1.0, x, 1.0, y.astype(np.float64))
    with pytest.raises(K.KernelArgumentError, match="shape"):
        K.axpby(1.0, x[:5], 1.0, y)


@pytest.mark.parametrize("threads", [1, 2])
def test_relu_is_caffes_formula(threads, monkeypatch):
    """Caffe's ReLU with slope 0, max(x, 0) + 0 * min(x, 0), bit for bit: NaN stays NaN, -inf becomes
    NaN, -0.0 becomes +0.0; in place or into another array; overlapping arrays refused."""
    monkeypatch.setattr(K, "PARALLEL_MIN_ELEMENTS", 0)
    previous = K.get_num_threads()
    K.set_num_threads(threads)
    try:
        rng = np.random.default_rng(3)
        x = rng.standard_normal((3, 50_001)).astype(np.float32)
        x[0, :6] = [np.nan, -np.inf, np.inf, -0.0, 0.0, -1e-45]
        zero = np.float32(0)
        with np.errstate(invalid="ignore"):
            expected = np.maximum(x, zero) + zero * np.minimum(x, zero)
        out = np.empty_like(x)
        assert K.relu(x, out) is out
        np.testing.assert_array_equal(out, expected)
        assert not np.signbit(out[0, 3]) and np.isnan(out[0, 1])
        inplace = x.copy()
        K.relu(inplace, inplace)
        np.testing.assert_array_equal(inplace, expected)
    finally:
        K.set_num_threads(previous)
    with pytest.raises(K.KernelArgumentError, match="overlap"):
        K.relu(x.reshape(-1)[1:], x.reshape(-1)[:-1])
    with pytest.raises(K.KernelArgumentError, match="out must"):
        K.relu(x, x.astype(np.float64))


@pytest.mark.parametrize("size, alpha, beta", [(3, 5e-5, 0.75), (5, 0.5, 0.75), (1, 1.0, 0.5), (3, 2.0, 1.5)])
@pytest.mark.parametrize("shape", [(2, 3, 7, 9), (1, 32, 16, 16)])
def test_lrn_within_matches_reference(shape, size, alpha, beta):
    x = np.random.default_rng(5).standard_normal(shape).astype(np.float32) * 3
    top, pooled, power = K.lrn_within_forward(x, size, alpha, beta)
    top_r, pooled_r, power_r = R.lrn_within_forward_ref(x, size, alpha, beta)
    np.testing.assert_allclose(pooled, pooled_r, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(power, power_r, rtol=1e-5)
    np.testing.assert_allclose(top, top_r, rtol=1e-5, atol=1e-6 * np.abs(top_r).max())
    g = np.random.default_rng(6).standard_normal(shape).astype(np.float32)
    got = K.lrn_within_backward(x, pooled, power, g, size, alpha, beta)
    want = R.lrn_within_backward_ref(x, g, size, alpha, beta)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    assert K.lrn_within_fused(alpha, beta) and not K.lrn_within_fused(0.0, beta)
    assert not K.lrn_within_fused(alpha, -1.0) and not K.lrn_within_fused(alpha, 0.0)
