"""Bounds checking at the Python boundary of every public wrapper in :mod:`pyskim.kernels.dense`.

A table describes each wrapper (a valid call, its array arguments with their ranks, its geometry
arguments with their minimum, its ``out=`` arguments); the tests derive the bad calls from it: wrong
ndim, wrong dtype, non-contiguous inputs (converted, same result), zero/negative/non-int/huge
geometry, ``out=`` of the wrong shape, dtype, layout, writeability or overlapping an input, and
huge sizes (refused before anything is allocated). Every rejection is a
:class:`pyskim.errors.KernelArgumentError` (a PyskimError and a ValueError). Guard-zone tests then
run the compiled kernels on random geometries with ``out=`` placed between sentinel regions and check
that nothing outside the output is written.
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pyskim
from pyskim.errors import KernelArgumentError, PyskimError
from pyskim.kernels import dense as K

RNG = np.random.default_rng(7)


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


IMG = rand(2, 6, 5)
COL = K.im2col(IMG, 3, 1, 1)
IMG3 = rand(2, 4, 5, 3)
COL3 = K.im2col_nd(IMG3, 2, 1, 1)
X4 = rand(2, 3, 6, 5)
TOP, MASK = K.max_pool_forward(X4, 2, 2, 0, (3, 3))
ATOP = K.ave_pool_forward(X4, 3, 2, 1, (3, 3))
LTOP, LSCALE = K.lrn_across_forward(X4, 3, 1e-4, 0.75, 1.0)
WTOP, WPOOLED, WPOWER = K.lrn_within_forward(X4, 3, 1e-4, 0.75)
BATCH_GEOMETRY = {"kh": 3, "kw": 2, "pad_h": 1, "pad_w": 0, "stride_h": 1, "stride_w": 2, "dil_h": 1, "dil_w": 1}
BCOL = K.im2col_batch(X4, **BATCH_GEOMETRY)
BATCH_LIMITS = {"kh": (1, 1), "kw": (1, 1), "pad_h": (0, 1), "pad_w": (0, 1), "stride_h": (1, 1),
                "stride_w": (1, 1), "dil_h": (1, 1), "dil_w": (1, 1)}


class Spec:
    """One wrapper: ``fn(**args)`` is a valid call; ``arrays`` maps array arguments to their rank
    (None: any rank >= 2), ``geometry`` maps geometry arguments to their minimum and the number of
    values a sequence must have, ``outs`` lists the ``out=``-style arguments."""

    def __init__(self, fn, args, arrays, geometry, outs=(), int_arrays=()):
        self.fn, self.args, self.arrays, self.geometry = fn, args, arrays, geometry
        self.outs, self.int_arrays = tuple(outs), tuple(int_arrays)

    def __call__(self, **changes):
        return self.fn(**{**self.args, **changes})


def args(**kwargs):
    return kwargs


SPECS = {
    "im2col": Spec(K.im2col, args(img=IMG, kernel=3, pad=1, stride=1, dilation=1), {"img": 3},
                   {"kernel": (1, 2), "pad": (0, 2), "stride": (1, 2), "dilation": (1, 2)}, outs=["out"]),
    "col2im": Spec(K.col2im, args(col=COL, img_shape=IMG.shape, kernel=3, pad=1, stride=1, dilation=1),
                   {"col": 2}, {"img_shape": (1, 3), "kernel": (1, 2), "pad": (0, 2), "stride": (1, 2),
                                "dilation": (1, 2)}, outs=["out"]),
    "im2col_batch": Spec(K.im2col_batch, args(img=X4, **BATCH_GEOMETRY, col=np.empty_like(BCOL)), {"img": 4},
                         BATCH_LIMITS, outs=["col"]),
    "col2im_batch": Spec(K.col2im_batch, args(col=BCOL, **BATCH_GEOMETRY, img=np.empty_like(X4)), {"col": 2},
                         BATCH_LIMITS, outs=["img"]),
    "im2col_nd": Spec(K.im2col_nd, args(img=IMG3, kernel=2, pad=1, stride=1, dilation=1), {"img": None},
                      {"kernel": (1, 3), "pad": (0, 3), "stride": (1, 3), "dilation": (1, 3)}),
    "col2im_nd": Spec(K.col2im_nd, args(col=COL3, img_shape=IMG3.shape, kernel=2, pad=1, stride=1, dilation=1),
                      {"col": 2}, {"img_shape": (1, 4), "kernel": (1, 3), "pad": (0, 3), "stride": (1, 3),
                                   "dilation": (1, 3)}),
    "max_pool_forward": Spec(K.max_pool_forward, args(x=X4, kernel=2, stride=2, pad=0, out_hw=(3, 3)),
                             {"x": 4}, {"kernel": (1, 2), "stride": (1, 2), "pad": (0, 2), "out_hw": (1, 2)},
                             outs=["out", "mask_out"]),
    "max_pool_backward": Spec(K.max_pool_backward, args(top_diff=TOP, mask=MASK, in_hw=(6, 5)),
                              {"top_diff": 4, "mask": 4}, {"in_hw": (1, 2)}, outs=["out"], int_arrays=["mask"]),
    "ave_pool_forward": Spec(K.ave_pool_forward, args(x=X4, kernel=3, stride=2, pad=1, out_hw=(3, 3)),
                             {"x": 4}, {"kernel": (1, 2), "stride": (1, 2), "pad": (0, 2), "out_hw": (1, 2)},
                             outs=["out"]),
    "ave_pool_backward": Spec(K.ave_pool_backward, args(top_diff=ATOP, kernel=3, stride=2, pad=1, in_hw=(6, 5)),
                              {"top_diff": 4}, {"kernel": (1, 2), "stride": (1, 2), "pad": (0, 2),
                                                "in_hw": (1, 2)}, outs=["out"]),
    "lrn_across_forward": Spec(K.lrn_across_forward, args(x=X4, size=3, alpha=1e-4, beta=0.75, k=1.0),
                               {"x": 4}, {"size": (1, 1)}, outs=["out", "scale_out"]),
    "lrn_across_backward": Spec(K.lrn_across_backward, args(x=X4, top=LTOP, scale=LSCALE, top_diff=LTOP,
                                                            size=3, alpha=1e-4, beta=0.75),
                                {"x": 4, "top": 4, "scale": 4, "top_diff": 4}, {"size": (1, 1)}, outs=["out"]),
    "lrn_within_forward": Spec(K.lrn_within_forward, args(x=X4, size=3, alpha=1e-4, beta=0.75), {"x": 4},
                               {"size": (1, 1)}, outs=["out", "pooled_out", "power_out"]),
    "lrn_within_backward": Spec(K.lrn_within_backward, args(x=X4, pooled=WPOOLED, power=WPOWER, top_diff=WTOP,
                                                            size=3, alpha=1e-4, beta=0.75),
                                {"x": 4, "pooled": 4, "power": 4, "top_diff": 4}, {"size": (1, 1)}, outs=["out"]),
    "lrn_within_fused": Spec(K.lrn_within_fused, args(alpha=1e-4, beta=0.75), {}, {}),
    "conv_output_size": Spec(K.conv_output_size, args(in_size=7, kernel=3, pad=1, stride=2, dilation=1), {},
                             {"in_size": (0, 1), "kernel": (1, 1), "pad": (0, 1), "stride": (1, 1),
                              "dilation": (1, 1)}),
    "pooled_output_size": Spec(K.pooled_output_size, args(in_size=7, kernel=3, stride=2, pad=1), {},
                               {"in_size": (0, 1), "kernel": (1, 1), "stride": (1, 1), "pad": (0, 1)}),
    "axpby": Spec(K.axpby, args(alpha=0.5, x=X4, beta=0.0, y=np.ones_like(X4)), {"x": 4}, {}),   # y = x/2 each call
    "relu": Spec(K.relu, args(x=X4, out=np.empty_like(X4)), {"x": 4}, {}),
    "set_num_threads": Spec(K.set_num_threads, args(n=K.get_num_threads()), {},
                            {"n": (1, 1)}),
}


def test_every_public_wrapper_is_in_the_table():
    functions = {name for name in K.__all__ if callable(getattr(K, name)) and not isinstance(getattr(K, name), type)}
    assert functions - {"get_num_threads"} == set(SPECS)


def _outputs(result):
    return result if isinstance(result, tuple) else (result,)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_valid_call(name):
    _outputs(SPECS[name]())


def _cases(kind):
    cases = []
    for name, spec in sorted(SPECS.items()):
        if kind == "arrays":
            cases += [(name, arg) for arg in spec.arrays]
        elif kind == "geometry":
            cases += [(name, arg) for arg in spec.geometry]
        elif kind == "outs":
            cases += [(name, arg) for arg in spec.outs]
    return cases


def _rejects(spec, **changes):
    with pytest.raises(KernelArgumentError) as info:
        spec(**changes)
    assert isinstance(info.value, PyskimError) and isinstance(info.value, ValueError)
    return info.value


# -- wrong ndim / dtype / layout of the array arguments ----------------------------------------------

@pytest.mark.parametrize("name,arg", _cases("arrays"))
def test_wrong_ndim(name, arg):
    spec = SPECS[name]
    a = spec.args[arg]
    if spec.arrays[arg] is not None:
        _rejects(spec, **{arg: a[..., None]})      # one axis too many
        _rejects(spec, **{arg: a[0]})              # one axis too few
    else:                                          # N-d: (C, S1, ..., SD) with D >= 1 and kernel of D values
        _rejects(spec, **{arg: a[..., None], "kernel": (2,) * (a.ndim - 1)})
        _rejects(spec, **{arg: a.reshape(-1)})
    _rejects(spec, **{arg: np.float32(1.0)})       # a scalar


BAD_DTYPES = [np.complex64, np.bool_, object, "U3", "datetime64[s]", "S2"]


@pytest.mark.parametrize("name,arg", _cases("arrays"))
@pytest.mark.parametrize("dtype", BAD_DTYPES, ids=str)
def test_wrong_dtype(name, arg, dtype):
    spec = SPECS[name]
    a = spec.args[arg]
    _rejects(spec, **{arg: np.zeros(a.shape, dtype=dtype)})
    if arg in spec.int_arrays:                     # an index array must hold integers
        _rejects(spec, **{arg: a.astype(np.float32)})


@pytest.mark.parametrize("name,arg", _cases("arrays"))
def test_non_contiguous_and_other_numeric_inputs_are_converted(name, arg):
    spec = SPECS[name]
    a = spec.args[arg]
    expected = _outputs(spec())
    strided = np.repeat(a, 2, axis=-1)[..., ::2]    # same values, non-contiguous
    assert not strided.flags.c_contiguous
    for variant in (strided, np.asfortranarray(a), a.astype(np.float64) if a.dtype.kind == "f" else a.astype(np.int64)):
        for got, want in zip(_outputs(spec(**{arg: variant})), expected):
            np.testing.assert_array_equal(got, want)


# -- geometry ----------------------------------------------------------------------------------------

def _bad_geometry(minimum, length):
    bad = [minimum - 1, -(2**31), 2**31, 2**63, 2.5, "3", None, True, object()]
    if length > 1:
        bad += [(minimum,) * (length + 1), (minimum,) * (length - 1) or [], (minimum, -1) + (minimum,) * (length - 2)]
    return bad


@pytest.mark.parametrize("name,arg", _cases("geometry"))
def test_bad_geometry(name, arg):
    spec = SPECS[name]
    minimum, length = spec.geometry[arg]
    for bad in _bad_geometry(minimum, length):
        if arg == "n" and bad == 2**31:
            bad = 4097
        _rejects(spec, **{arg: bad})


def test_geometry_that_does_not_fit():
    _rejects(SPECS["im2col"], kernel=9)                                   # kernel larger than padded image
    _rejects(SPECS["im2col_nd"], kernel=(2, 2, 9))
    _rejects(SPECS["col2im"], img_shape=(2, 6, 6))                        # col does not match the image
    _rejects(SPECS["col2im_nd"], img_shape=(2, 4, 5, 4))
    _rejects(SPECS["max_pool_forward"], out_hw=(4, 3))                    # more windows than the input has
    _rejects(SPECS["max_pool_forward"], pad=2)                            # pad >= kernel
    _rejects(SPECS["ave_pool_forward"], pad=(0, 3))
    _rejects(SPECS["ave_pool_backward"], in_hw=(2, 2))
    _rejects(SPECS["max_pool_backward"], mask=MASK[:, :, :2])
    _rejects(SPECS["lrn_across_forward"], size=4)                         # even window
    _rejects(SPECS["lrn_across_forward"], alpha=float("nan"))
    _rejects(SPECS["lrn_across_forward"], beta=float("inf"))
    _rejects(SPECS["lrn_across_backward"], top=LTOP[:, :2])
    _rejects(SPECS["lrn_within_forward"], beta=-1.0)                      # PowerLayer special case
    _rejects(SPECS["lrn_within_backward"], power=WPOWER[:, :2])
    _rejects(SPECS["col2im"], accumulate=True)                            # accumulate needs out=
    _rejects(SPECS["im2col_batch"], kh=9)                                 # kernel larger than padded image
    _rejects(SPECS["col2im_batch"], img=np.empty((2, 3, 6, 6), np.float32))   # col does not match the images


# -- out= arguments ----------------------------------------------------------------------------------

def _good_out(spec, arg):
    """A valid array for ``arg``: the matching result of a valid call."""
    results = _outputs(spec())
    index = spec.outs.index(arg)
    return np.empty_like(results[index])


@pytest.mark.parametrize("name,arg", _cases("outs"))
def test_out_accepted_and_returned(name, arg):
    spec = SPECS[name]
    out = _good_out(spec, arg)
    results = _outputs(spec(**{arg: out}))
    assert any(r is out for r in results)


@pytest.mark.parametrize("name,arg", _cases("outs"))
def test_bad_out(name, arg):
    spec = SPECS[name]
    good = _good_out(spec, arg)
    other = np.float64 if good.dtype == np.float32 else np.int64
    read_only = good.copy()
    read_only.flags.writeable = False
    bad = {
        "shape": np.empty(good.shape[:-1] + (good.shape[-1] + 1,), good.dtype),
        "ndim": np.empty(good.shape + (1,), good.dtype),
        "flat": np.empty(good.size, good.dtype),
        "dtype": np.empty(good.shape, other),
        "non_contiguous": np.empty(good.shape[:-1] + (2 * good.shape[-1],), good.dtype)[..., ::2],
        "fortran": np.asfortranarray(np.empty(good.shape, good.dtype)) if good.ndim > 1 and good.shape[0] > 1
        else np.empty(good.shape[:-1] + (2 * good.shape[-1],), good.dtype)[..., ::2],
        "read_only": read_only,
        "list": good.tolist(),
    }
    for variant, value in bad.items():
        error = _rejects(spec, **{arg: value})
        assert arg in str(error) or variant in ("shape", "ndim", "flat", "dtype", "non_contiguous", "fortran",
                                                "read_only", "list")


@pytest.mark.parametrize("name,arg", _cases("outs"))
def test_out_overlapping_an_input(name, arg):
    spec = SPECS[name]
    good = _good_out(spec, arg)
    for array_arg in spec.arrays:
        source = spec.args[array_arg]
        if source.dtype != good.dtype or not source.flags.c_contiguous:
            continue
        # a view of the same memory as the input, with the output's shape (as far as sizes allow)
        if source.size >= good.size:
            alias = source.reshape(-1)[:good.size].reshape(good.shape)
            _rejects(spec, **{arg: alias, array_arg: source})


def test_two_outputs_may_not_share_memory():
    top = np.empty_like(TOP)
    mask = np.empty(TOP.shape, np.int32)
    _rejects(SPECS["max_pool_forward"], out=top, mask_out=top.view(np.int32))
    scale = np.empty_like(LSCALE)
    _rejects(SPECS["lrn_across_forward"], out=scale, scale_out=scale)
    assert K.max_pool_forward(X4, 2, 2, 0, (3, 3), out=top, mask_out=mask)[1] is mask


# -- huge sizes: refused before allocating -----------------------------------------------------------

def _huge(shape, dtype=np.float32):
    """An array of ``shape`` that occupies one element of memory (zero strides)."""
    return np.broadcast_to(np.zeros((), dtype), shape)


@pytest.mark.parametrize("name,arg", _cases("arrays"))
def test_huge_inputs_are_refused_without_a_copy(name, arg):
    spec = SPECS[name]
    rank = spec.arrays[arg] or 3
    shape = (2**11,) * (rank - 2) + (2**11, 2**11) if rank >= 2 else (2**32,)
    dtype = np.int32 if arg in spec.int_arrays else np.float64       # float64: a copy would be needed
    _rejects(spec, **{arg: _huge(shape, dtype)})


@pytest.fixture
def small_limit():
    previous = pyskim.set_max_blob_bytes(16 << 20)
    yield 16 << 20
    pyskim.set_max_blob_bytes(previous)


def test_huge_outputs_are_refused_before_allocating(small_limit):
    img = rand(1, 4, 4)
    _rejects(SPECS["im2col"], img=img, kernel=1, pad=2000)                       # 4000^2 columns
    _rejects(SPECS["im2col_nd"], img=rand(1, 4, 4, 4), kernel=1, pad=200)        # padded 404^3
    _rejects(SPECS["col2im_nd"], col=np.zeros((1, 4), np.float32), img_shape=(1, 2, 2), kernel=1, pad=4000)
    big = _huge((1, 1, 3000, 3000))
    _rejects(SPECS["max_pool_forward"], x=big, kernel=1, stride=1, pad=0, out_hw=(3000, 3000))
    _rejects(SPECS["max_pool_backward"], top_diff=_huge((1, 1, 1, 1)), mask=np.zeros((1, 1, 1, 1), np.int32),
             in_hw=(30000, 30000))
    _rejects(SPECS["ave_pool_backward"], top_diff=rand(1, 1, 1, 1), kernel=1, stride=30000, pad=0,
             in_hw=(30000, 30000))
    _rejects(SPECS["lrn_across_forward"], x=_huge((1, 1, 3000, 3000), np.float64))
    # 32-bit indexing: refused whatever the limit
    pyskim.set_max_blob_bytes(1 << 60)
    _rejects(SPECS["im2col"], img=img, kernel=1, pad=2**30)
    _rejects(SPECS["im2col"], img=img, kernel=1, pad=30000)                       # 60004^2 > INT_MAX columns
    _rejects(SPECS["max_pool_backward"], top_diff=rand(1, 1, 1, 1), mask=np.zeros((1, 1, 1, 1), np.int32),
             in_hw=(2**16, 2**16))


# -- no write outside the output: guard zones around out= --------------------------------------------

GUARD = 64


def _guarded(shape, dtype=np.float32, fill=np.nan):
    """A C-contiguous array of ``shape`` inside a larger buffer whose margins hold ``fill``."""
    size = math.prod(shape)
    buffer = np.full(size + 2 * GUARD, fill, dtype)
    return buffer, buffer[GUARD:GUARD + size].reshape(shape)


def _margins_intact(buffer, fill=np.nan):
    margins = np.concatenate([buffer[:GUARD], buffer[-GUARD:]])
    return np.isnan(margins).all() if isinstance(fill, float) and np.isnan(fill) else (margins == fill).all()


GEOMETRY = st.tuples(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9),     # C, H, W
                     st.integers(1, 4), st.integers(1, 4),                        # kernel
                     st.integers(0, 3), st.integers(0, 3),                        # pad
                     st.integers(1, 4), st.integers(1, 4),                        # stride
                     st.integers(1, 3), st.integers(1, 3))                        # dilation


@settings(max_examples=60, deadline=None, derandomize=True)
@given(GEOMETRY)
def test_im2col_col2im_write_only_their_output(g):
    c, h, w, kh, kw, ph, pw, sh, sw, dh, dw = g
    img = rand(c, h, w)
    oh, ow = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1, (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    if oh <= 0 or ow <= 0:
        with pytest.raises(KernelArgumentError):
            K.im2col(img, (kh, kw), (ph, pw), (sh, sw), (dh, dw))
        return
    buffer, col = _guarded((c * kh * kw, oh * ow))
    K.im2col(img, (kh, kw), (ph, pw), (sh, sw), (dh, dw), out=col)
    assert _margins_intact(buffer) and np.isfinite(col).all()
    buffer, back = _guarded(img.shape)
    K.col2im(col, img.shape, (kh, kw), (ph, pw), (sh, sw), (dh, dw), out=back)
    assert _margins_intact(buffer) and np.isfinite(back).all()


@settings(max_examples=60, deadline=None, derandomize=True)
@given(GEOMETRY, st.integers(-5, 200))
def test_pooling_writes_only_its_output(g, mask_value):
    c, h, w, kh, kw, ph, pw, sh, sw, _, _ = g
    ph, pw = min(ph, kh - 1), min(pw, kw - 1)
    x = rand(2, c, h, w)
    out_hw = (K.pooled_output_size(h, kh, sh, ph), K.pooled_output_size(w, kw, sw, pw))
    if min(out_hw) <= 0:                     # kernel larger than the padded input
        with pytest.raises(KernelArgumentError):
            K.max_pool_forward(x, (kh, kw), (sh, sw), (ph, pw), out_hw)
        return
    top_buffer, top = _guarded((2, c) + out_hw)
    mask_buffer, mask = _guarded((2, c) + out_hw, np.int32, fill=-7)
    K.max_pool_forward(x, (kh, kw), (sh, sw), (ph, pw), out_hw, out=top, mask_out=mask)
    assert _margins_intact(top_buffer) and _margins_intact(mask_buffer, fill=-7)
    assert ((mask >= -1) & (mask < h * w)).all()
    # backward with arbitrary (also out-of-plane) mask indices: nothing outside bottom is touched
    mask[...] = mask_value
    buffer, bottom = _guarded(x.shape)
    K.max_pool_backward(top, mask, (h, w), out=bottom)
    assert _margins_intact(buffer)
    ave_buffer, ave = _guarded((2, c) + out_hw)
    K.ave_pool_forward(x, (kh, kw), (sh, sw), (ph, pw), out_hw, out=ave)
    assert _margins_intact(ave_buffer)
    buffer, bottom = _guarded(x.shape)
    K.ave_pool_backward(ave, (kh, kw), (sh, sw), (ph, pw), (h, w), out=bottom)
    assert _margins_intact(buffer) and np.isfinite(bottom).all()


@settings(max_examples=30, deadline=None, derandomize=True)
@given(st.integers(1, 7), st.integers(1, 4), st.sampled_from([1, 3, 5, 7, 9]))
def test_lrn_writes_only_its_output(channels, width, size):
    x = rand(2, channels, 3, width)
    top_buffer, top = _guarded(x.shape)
    scale_buffer, scale = _guarded(x.shape)
    K.lrn_across_forward(x, size, 1e-4, 0.75, 1.0, out=top, scale_out=scale)
    assert _margins_intact(top_buffer) and _margins_intact(scale_buffer)
    buffer, bottom = _guarded(x.shape)
    K.lrn_across_backward(x, top, scale, rand(*x.shape), size, 1e-4, 0.75, out=bottom)
    assert _margins_intact(buffer) and np.isfinite(bottom).all()
