"""MAX pooling forward's vector path (``cython_kernels/maxpool_impl.h``: 16 or 8 outputs of a row at
a time for horizontal strides 1 and 2, several output rows together) against the NumPy reference of
Caffe's loop, bit for bit in the top (signs of zero included) and in the mask: many geometries (row
widths that are and are not multiples of 16, clipped windows at every border, padding, tiny planes,
windows wider than the vector path takes), NaN, infinities, -FLT_MAX and +-0 where they decide the
result, 1 and 3 threads, and no read or write past the arrays (inputs and outputs against a guard
page, in a child process)."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import pyskim
from pyskim.kernels import dense as K
from pyskim.kernels import reference as R

FLT_MAX = np.finfo(np.float32).max


def special_values(rng, shape):
    """Small integers (many ties), +-0 (ties of either sign), NaN, +-inf and -FLT_MAX scattered."""
    x = rng.integers(-3, 4, size=shape).astype(np.float32)
    pick = rng.random(shape)
    x[pick < 0.06] = np.nan
    x[(pick >= 0.06) & (pick < 0.09)] = -np.inf
    x[(pick >= 0.09) & (pick < 0.11)] = np.inf
    x[(pick >= 0.11) & (pick < 0.15)] = -FLT_MAX
    zero = x == 0
    x[zero] = rng.choice(np.array([0.0, -0.0], np.float32), size=int(zero.sum()))
    return x


def assert_caffes(x, kernel, stride, pad, out_hw):
    top, mask = K.max_pool_forward(x, kernel, stride, pad, out_hw)
    top_r, mask_r = R.max_pool_forward_ref(x, kernel, stride, pad, out_hw)
    np.testing.assert_array_equal(top.view(np.int32), top_r.view(np.int32))   # bits: -0 is not +0
    np.testing.assert_array_equal(mask, mask_r)


def caffe_out_hw(h, w, kernel, stride, pad):
    return (K.pooled_output_size(h, kernel[0], stride[0], pad[0]),
            K.pooled_output_size(w, kernel[1], stride[1], pad[1]))


def random_geometries(count, seed):
    """(h, w, kernel, stride, pad, out_hw): kernels 1-5 (sometimes up to 17 wide), strides 1-3, pads
    below the kernel, widths 1-70, and now and then the largest output the wrapper accepts (Caffe's
    extent before its padding clip: last windows that start in the padding or hold nothing)."""
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < count:
        h, w = int(rng.integers(1, 24)), int(rng.integers(1, 71))
        kernel = (int(rng.integers(1, 6)), int(rng.integers(1, 18 if rng.random() < 0.15 else 6)))
        stride = (int(rng.integers(1, 4)), int(rng.choice([1, 2, 2, 3])))
        pad = tuple(int(rng.integers(0, 3)) % k for k in kernel)
        if h + 2 * pad[0] < kernel[0] or w + 2 * pad[1] < kernel[1]:
            continue
        out_hw = caffe_out_hw(h, w, kernel, stride, pad)
        if rng.random() < 0.25:
            out_hw = tuple(-(-(n + 2 * p - k) // s) + 1 for n, k, s, p in zip((h, w), kernel, stride, pad))
        if min(out_hw) > 0:
            cases.append((h, w, kernel, stride, pad, out_hw))
    return cases


@pytest.mark.parametrize("h, w, kernel, stride, pad, out_hw", random_geometries(160, 2017))
def test_random_geometries_are_caffes_loop(h, w, kernel, stride, pad, out_hw):
    x = special_values(np.random.default_rng(h * 1000 + w), (2, 3, h, w))
    assert_caffes(x, kernel, stride, pad, out_hw)


#: The nets' pooling layers and the edges of the vector path: groups of 16 (8) outputs, a last group
#: clipped at the right, a row of fewer than 16 outputs, taps made from a third load (stride 2, kw > 3)
#: or only from permutes (stride 1), kw at and over the widest the vector path takes (16).
NAMED = {
    "cifar_pool1": ((1, 32, 32, 32), 3, 2, 0),
    "alexnet_pool1": ((1, 4, 55, 55), 3, 2, 0),
    "alexnet_pool2": ((1, 4, 27, 27), 3, 2, 0),
    "alexnet_pool5": ((1, 4, 13, 13), 3, 2, 0),
    "googlenet_inception": ((1, 4, 28, 28), 3, 1, 1),
    "lenet_pool": ((2, 4, 24, 24), 2, 2, 0),
    "width_33_stride_2": ((1, 3, 9, 33), 3, 2, 0),
    "width_64_stride_1_pad_2": ((1, 2, 7, 64), (3, 5), 1, 2),
    "stride_2_kw_5": ((1, 2, 8, 70), (2, 5), 2, (0, 2)),
    "stride_2_kw_16": ((1, 2, 5, 70), (2, 16), 2, 0),
    "stride_1_kw_16": ((1, 2, 4, 40), (1, 16), 1, 0),
    "stride_1_kw_17": ((1, 2, 4, 40), (2, 17), 1, (0, 3)),
    "stride_2_kw_1": ((1, 2, 6, 35), (2, 1), 2, 0),
    "one_column": ((1, 2, 9, 1), (3, 1), (2, 1), (1, 0)),
    "one_pixel": ((1, 1, 1, 1), 1, 1, 0),
}


@pytest.mark.parametrize("name", sorted(NAMED))
def test_named_geometries_are_caffes_loop(name):
    shape, kernel, stride, pad = NAMED[name]
    kernel, stride, pad = (tuple(v) if isinstance(v, tuple) else (v, v) for v in (kernel, stride, pad))
    rng = np.random.default_rng(len(name))
    out_hw = caffe_out_hw(shape[2], shape[3], kernel, stride, pad)
    assert_caffes(rng.standard_normal(shape).astype(np.float32), kernel, stride, pad, out_hw)
    assert_caffes(special_values(rng, shape), kernel, stride, pad, out_hw)


def test_windows_that_take_nothing_keep_minus_flt_max_and_index_minus_one():
    """NaN, -inf and -FLT_MAX are never taken (Caffe's strict ``>`` from -FLT_MAX): windows of only
    those give -FLT_MAX and -1, in every lane of a group and at the clipped border."""
    x = np.full((1, 2, 7, 40), -FLT_MAX, np.float32)
    x[0, 0, ::2] = np.nan
    x[0, 1, :, ::3] = -np.inf
    top, mask = K.max_pool_forward(x, 3, 2, 0, caffe_out_hw(7, 40, (3, 3), (2, 2), (0, 0)))
    assert (top == -FLT_MAX).all() and (mask == -1).all()


def test_first_nan_then_values_and_ties_of_zero_signs():
    """A window starting with NaN takes the first value after it; -0 then +0 keeps -0 (not greater),
    +0 then -0 keeps +0: the first of equal maxima, with its sign."""
    x = np.full((1, 1, 3, 34), -5, np.float32)
    x[0, 0, 0, 0::2] = np.nan          # every window's first tap
    x[0, 0, 1, 0::4] = -0.0
    x[0, 0, 1, 2::4] = 0.0
    x[0, 0, 2, 1::4] = 0.0
    x[0, 0, 2, 3::4] = -0.0
    assert_caffes(x, (3, 3), (1, 2), (0, 0), (1, 16))
    assert_caffes(x, (3, 3), (1, 1), (0, 1), (1, 34))


def test_threads_give_the_same_results():
    """Planes split over pyskim's pool (3 threads) compute what one thread does, and Caffe's."""
    x = special_values(np.random.default_rng(5), (3, 24, 33, 37))    # above the parallel threshold
    out_hw = caffe_out_hw(33, 37, (3, 3), (2, 2), (1, 1))
    previous = pyskim.get_num_threads()
    try:
        pyskim.set_num_threads(3)
        top3, mask3 = K.max_pool_forward(x, 3, 2, 1, out_hw)
        pyskim.set_num_threads(1)
        top1, mask1 = K.max_pool_forward(x, 3, 2, 1, out_hw)
    finally:
        pyskim.set_num_threads(previous)
    top_r, mask_r = R.max_pool_forward_ref(x, (3, 3), (2, 2), (1, 1), out_hw)
    for top, mask in ((top1, mask1), (top3, mask3)):
        np.testing.assert_array_equal(top.view(np.int32), top_r.view(np.int32))
        np.testing.assert_array_equal(mask, mask_r)


_GUARDED = textwrap.dedent("""
    import ctypes, mmap
    import numpy as np
    from pyskim.kernels import dense as K, reference as R

    libc = ctypes.CDLL(None, use_errno=True)

    def before_guard_page(shape, dtype):
        # an array whose last byte is the last one before a page that may not be read or written
        nbytes = int(np.prod(shape)) * 4
        pages = -(-nbytes // mmap.PAGESIZE) + 1
        buf = mmap.mmap(-1, pages * mmap.PAGESIZE)
        start = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        guard = ctypes.c_void_p(start + (pages - 1) * mmap.PAGESIZE)
        assert libc.mprotect(guard, mmap.PAGESIZE, 0) == 0, ctypes.get_errno()
        return np.frombuffer(buf, dtype, int(np.prod(shape)), (pages - 1) * mmap.PAGESIZE - nbytes).reshape(shape)

    rng = np.random.default_rng(3)
    checked = 0
    for h, w, kernel, stride, pad in GEOMETRIES:
        out_hw = tuple(K.pooled_output_size(n, k, s, p) for n, k, s, p in zip((h, w), kernel, stride, pad))
        x = before_guard_page((1, 2, h, w), np.float32)
        x[...] = rng.standard_normal(x.shape)
        top = before_guard_page((1, 2) + out_hw, np.float32)
        mask = before_guard_page((1, 2) + out_hw, np.int32)
        K.max_pool_forward(x, kernel, stride, pad, out_hw, out=top, mask_out=mask)
        top_r, mask_r = R.max_pool_forward_ref(x, kernel, stride, pad, out_hw)
        assert np.array_equal(top, top_r) and np.array_equal(mask, mask_r), (h, w, kernel, stride, pad)
        checked += 1
    print(checked)
""")


def test_no_read_or_write_past_the_arrays():
    """Inputs, tops and masks that end where an unreadable page begins (a child process: a stray
    access kills it, not the test run): rows ending at every offset from a vector's end, the last
    plane's last rows read by the last group."""
    geometries = [(h, w, (kh, kw), (sh, sw), (0, 0))
                  for h, w in ((1, 1), (3, 15), (5, 16), (4, 17), (7, 31), (6, 33), (9, 47), (3, 48), (5, 50))
                  for kh, kw, sh, sw in ((1, 1, 1, 1), (3, 3, 2, 2), (3, 3, 1, 1), (2, 2, 2, 2), (2, 5, 1, 2),
                                         (2, 16, 1, 1), (2, 16, 2, 2))
                  if kh <= h and kw <= w]
    script = f"GEOMETRIES = {geometries!r}\n" + _GUARDED
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         check=False)
    assert run.returncode == 0, (run.returncode, run.stderr[-2000:])
    assert int(run.stdout.split()[-1]) == len(geometries)
