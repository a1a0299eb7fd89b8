"""Validated Python entry points to the compiled float32 kernels (``pyskim._kernels``).

Every wrapper checks its arguments at the boundary (rank, shape, dtype, contiguity, geometry) and
raises :class:`KernelArgumentError` (a :class:`ValueError`) on bad input, so no call from Python
can make a kernel read or write out of bounds. Inputs are converted with
``np.ascontiguousarray(x, dtype=np.float32)``; ``out=`` arrays must already be C-contiguous,
writeable float32 of the exact shape (they are never silently copied) and must not overlap the
inputs. ``kernels_ref`` holds slow NumPy references for the same functions.

Geometry arguments (``kernel``, ``pad``, ``stride``, ``dilation``) take an int or a (h, w) pair
(a length-D sequence for the ``_nd`` functions).
"""

import math
import numbers

import numpy as np

from .._kernels import im2col as _im2col
from .._kernels import lrn as _lrn
from .._kernels import pooling as _pool
from ..core.blob import check_allocation
from ..errors import KernelArgumentError

__all__ = [
    "KernelArgumentError",
    "ave_pool_backward",
    "ave_pool_forward",
    "col2im",
    "col2im_nd",
    "conv_output_size",
    "get_num_threads",
    "im2col",
    "im2col_nd",
    "lrn_across_backward",
    "lrn_across_forward",
    "max_pool_backward",
    "max_pool_forward",
    "pooled_output_size",
    "set_num_threads",
]

_INT_MAX = 2**31 - 1


# -- threads ----------------------------------------------------------------------------------------

_num_threads = max(1, int(_im2col.omp_get_max_threads()))


def set_num_threads(n):
    """Set the number of OpenMP threads the kernels use (and ``omp_set_num_threads``)."""
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 1 <= n <= 4096:
        raise KernelArgumentError(f"set_num_threads: n must be an int in [1, 4096], got {n!r}")
    _num_threads = int(n)
    _im2col.omp_set_num_threads(_num_threads)


#: Below this many output elements a kernel runs on one thread: waking OpenMP workers costs more than
#: the work, and on a busy machine a descheduled worker stalls the whole region.
PARALLEL_MIN_ELEMENTS = 1 << 20


def _threads_for(elements):
    return _num_threads if elements >= PARALLEL_MIN_ELEMENTS else 1


def get_num_threads():
    """Threads used by the kernels; defaults to ``omp_get_max_threads()`` (``OMP_NUM_THREADS``)."""
    return _num_threads


# -- argument checking ------------------------------------------------------------------------------

def _ints(fn, name, value, n, minimum):
    """``value`` (int or length-``n`` sequence) as a tuple of ``n`` ints, each >= ``minimum``."""
    if isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, bool):
        vals = (int(value),) * n
    else:
        try:
            vals = tuple(value)
        except TypeError:
            raise KernelArgumentError(f"{fn}: {name} must be an int or a sequence of {n} ints, "
                                      f"got {value!r}") from None
        if len(vals) != n or any(isinstance(v, bool) or not isinstance(v, (numbers.Integral, np.integer))
                                 for v in vals):
            raise KernelArgumentError(f"{fn}: {name} must be an int or a sequence of {n} ints, "
                                      f"got {value!r}")
        vals = tuple(int(v) for v in vals)
    for v in vals:
        if v < minimum:
            what = "positive" if minimum == 1 else "non-negative"
            raise KernelArgumentError(f"{fn}: {name} must be {what}, got {value!r}")
        if v > _INT_MAX:
            raise KernelArgumentError(f"{fn}: {name} is too large: {value!r}")
    return vals


def _input(fn, name, x, ndim):
    """``x`` as a C-contiguous float32 array of rank ``ndim``."""
    try:
        a = np.asarray(x)
    except (TypeError, ValueError) as e:
        raise KernelArgumentError(f"{fn}: {name} is not an array: {e}") from None
    if a.dtype.kind not in "fiu":
        raise KernelArgumentError(f"{fn}: {name} must be a real numeric array (float32 preferred), "
                                  f"got dtype {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise KernelArgumentError(f"{fn}: {name} must be {ndim}-D, got shape {a.shape}")
    if a.size > _INT_MAX:       # checked before a converted copy is made
        raise KernelArgumentError(f"{fn}: {name} has too many elements ({a.size})")
    if not (a.dtype == np.float32 and a.flags.c_contiguous):
        check_allocation(a.shape, f"{fn}: float32 copy of {name}", error=KernelArgumentError)
    return np.ascontiguousarray(a, dtype=np.float32)


def _output(fn, name, out, shape, inputs, dtype=np.float32):
    """A fresh array of ``shape`` or the validated ``out``; ``out`` must not overlap ``inputs``."""
    shape = tuple(int(s) for s in shape)
    if any(s <= 0 for s in shape):
        raise KernelArgumentError(f"{fn}: {name} would have an empty shape {shape}")
    size = int(np.prod(shape, dtype=object))
    if size > _INT_MAX:
        raise KernelArgumentError(f"{fn}: {name} would have too many elements ({size})")
    if out is None:
        check_allocation(shape, f"{fn}: {name}", itemsize=np.dtype(dtype).itemsize, error=KernelArgumentError)
        return np.empty(shape, dtype=dtype)
    if not isinstance(out, np.ndarray):
        raise KernelArgumentError(f"{fn}: {name} must be a numpy array, got {type(out).__name__}")
    if out.dtype != dtype:
        raise KernelArgumentError(f"{fn}: {name} must have dtype {np.dtype(dtype)}, got {out.dtype}")
    if out.shape != shape:
        raise KernelArgumentError(f"{fn}: {name} must have shape {shape}, got {out.shape}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise KernelArgumentError(f"{fn}: {name} must be C-contiguous and writeable")
    for x in inputs:
        if np.may_share_memory(out, x):
            raise KernelArgumentError(f"{fn}: {name} must not overlap an input array")
    return out


def _check_span(fn, sizes, kernel, pad, stride, dilation):
    """Reject geometries whose padded extent or output index arithmetic overflows int32."""
    for s, k, p, st, d in zip(sizes, kernel, pad, stride, dilation):
        if s + 2 * p + st + d * (k - 1) + 1 > _INT_MAX:
            raise KernelArgumentError(f"{fn}: geometry too large for 32-bit indexing")


def conv_output_size(in_size, kernel, pad, stride, dilation):
    """Caffe's convolution output extent: ``(in + 2*pad - (dil*(k-1)+1)) // stride + 1``."""
    fn = "conv_output_size"
    (in_size,), (kernel,), (pad,) = _ints(fn, "in_size", in_size, 1, 0), _ints(fn, "kernel", kernel, 1, 1), \
        _ints(fn, "pad", pad, 1, 0)
    (stride,), (dilation,) = _ints(fn, "stride", stride, 1, 1), _ints(fn, "dilation", dilation, 1, 1)
    return (in_size + 2 * pad - (dilation * (kernel - 1) + 1)) // stride + 1


def pooled_output_size(in_size, kernel, stride, pad):
    """Caffe's pooled extent: ``ceil((in + 2*pad - k) / stride) + 1``, then, when padded, one less
    if the last window would start in the padding (``PoolingLayer::Reshape``)."""
    fn = "pooled_output_size"
    (in_size,), (kernel,), (pad,) = _ints(fn, "in_size", in_size, 1, 0), _ints(fn, "kernel", kernel, 1, 1), \
        _ints(fn, "pad", pad, 1, 0)
    (stride,) = _ints(fn, "stride", stride, 1, 1)
    out = -(-(in_size + 2 * pad - kernel) // stride) + 1
    if pad and (out - 1) * stride >= in_size + pad:
        out -= 1
    return out


# -- im2col / col2im --------------------------------------------------------------------------------

def _conv_geometry(fn, spatial, kernel, pad, stride, dilation):
    n = len(spatial)
    kernel = _ints(fn, "kernel", kernel, n, 1)
    pad = _ints(fn, "pad", pad, n, 0)
    stride = _ints(fn, "stride", stride, n, 1)
    dilation = _ints(fn, "dilation", dilation, n, 1)
    if any(s <= 0 for s in spatial):
        raise KernelArgumentError(f"{fn}: spatial size must be positive, got {tuple(spatial)}")
    _check_span(fn, spatial, kernel, pad, stride, dilation)
    out = tuple(conv_output_size(s, k, p, st, d)
                for s, k, p, st, d in zip(spatial, kernel, pad, stride, dilation))
    if any(o <= 0 for o in out):
        raise KernelArgumentError(f"{fn}: kernel {kernel} (dilation {dilation}) does not fit "
                                  f"input {tuple(spatial)} with pad {pad}")
    return kernel, pad, stride, dilation, out


def im2col(img, kernel, pad=0, stride=1, dilation=1, out=None):
    """Unfold ``img`` (C, H, W) into ``col`` (C*kh*kw, OH*OW), Caffe's ``im2col_cpu`` layout:
    row ``(c*kh + i)*kw + j``, column ``oh*OW + ow``, padding taps are 0."""
    fn = "im2col"
    img = _input(fn, "img", img, 3)
    (kh, kw), (ph, pw), (sh, sw), (dh, dw), (oh, ow) = _conv_geometry(
        fn, img.shape[1:], kernel, pad, stride, dilation)
    col = _output(fn, "out", out, (img.shape[0] * kh * kw, oh * ow), [img])
    _im2col.im2col(img, kh, kw, ph, pw, sh, sw, dh, dw, col, _threads_for(col.size))
    return col


def col2im(col, img_shape, kernel, pad=0, stride=1, dilation=1, out=None, accumulate=False):
    """Fold ``col`` (C*kh*kw, OH*OW) back into an image of ``img_shape`` (C, H, W), summing
    overlapping taps, as Caffe's ``col2im_cpu`` (same per-pixel addition order, bit-identical).
    With ``accumulate=True`` the sums are added to ``out`` instead of overwriting it."""
    fn = "col2im"
    col = _input(fn, "col", col, 2)
    img_shape = _ints(fn, "img_shape", img_shape, 3, 1)
    (kh, kw), (ph, pw), (sh, sw), (dh, dw), (oh, ow) = _conv_geometry(
        fn, img_shape[1:], kernel, pad, stride, dilation)
    expect = (img_shape[0] * kh * kw, oh * ow)
    if col.shape != expect:
        raise KernelArgumentError(f"{fn}: col must have shape {expect} for image {img_shape}, "
                                  f"got {col.shape}")
    if accumulate and out is None:
        raise KernelArgumentError(f"{fn}: accumulate=True needs out=")
    img = _output(fn, "out", out, img_shape, [col])
    if not accumulate:
        img.fill(0)
    _im2col.col2im_add(col, kh, kw, ph, pw, sh, sw, dh, dw, img, _threads_for(col.size))
    return img


def _strided_windows(padded, kernel, stride, dilation, out_sz):
    """Read-only view (C, k1..kD, o1..oD) of ``padded`` (C, S1..SD): tap x output position."""
    st = padded.strides
    shape = (padded.shape[0],) + tuple(kernel) + tuple(out_sz)
    strides = ((st[0],) + tuple(s * d for s, d in zip(st[1:], dilation))
               + tuple(s * t for s, t in zip(st[1:], stride)))
    return np.lib.stride_tricks.as_strided(padded, shape, strides, writeable=False)


def im2col_nd(img, kernel, pad=0, stride=1, dilation=1):
    """N-d im2col for ``img`` (C, S1..SD) in Caffe's ``im2col_nd_cpu`` layout: row
    ``c*prod(k) + flat tap``, column = flat output position (C order); vectorised NumPy."""
    fn = "im2col_nd"
    img = _input(fn, "img", img, None)
    if img.ndim < 2:
        raise KernelArgumentError(f"{fn}: img must be (C, S1, ..., SD) with D >= 1, got {img.shape}")
    kernel, pad, stride, dilation, out_sz = _conv_geometry(
        fn, img.shape[1:], kernel, pad, stride, dilation)
    rows = img.shape[0] * math.prod(kernel)
    _check_nd_buffers(fn, img.shape, pad, (rows, math.prod(out_sz)))
    padded = np.pad(img, [(0, 0)] + [(p, p) for p in pad]) if any(pad) else img
    win = _strided_windows(padded, kernel, stride, dilation, out_sz)
    return np.ascontiguousarray(win).reshape(rows, math.prod(out_sz))


def _check_nd_buffers(fn, img_shape, pad, col_shape):
    """The N-d functions allocate the padded image and the column matrix with NumPy: refuse sizes
    over the blob limit (or 32-bit indexing) before allocating."""
    padded = (img_shape[0],) + tuple(s + 2 * p for s, p in zip(img_shape[1:], pad))
    for what, shape in (("padded image", padded), ("column matrix", col_shape)):
        if math.prod(shape) > _INT_MAX:
            raise KernelArgumentError(f"{fn}: {what} would have too many elements {list(shape)}")
        check_allocation(shape, f"{fn}: {what}", error=KernelArgumentError)


def col2im_nd(col, img_shape, kernel, pad=0, stride=1, dilation=1):
    """N-d col2im: fold ``col`` back into ``img_shape`` (C, S1..SD), summing overlapping taps in
    tap order as Caffe's ``col2im_nd_cpu``; vectorised NumPy (one slice-add per kernel tap)."""
    fn = "col2im_nd"
    col = _input(fn, "col", col, 2)
    try:
        n_dims = len(img_shape)
    except TypeError:
        n_dims = 0
    if n_dims < 2:
        raise KernelArgumentError(f"{fn}: img_shape must be (C, S1, ..., SD) with D >= 1, got {img_shape!r}")
    img_shape = _ints(fn, "img_shape", img_shape, n_dims, 1)
    kernel, pad, stride, dilation, out_sz = _conv_geometry(
        fn, img_shape[1:], kernel, pad, stride, dilation)
    n_taps = math.prod(kernel)
    expect = (img_shape[0] * n_taps, math.prod(out_sz))
    if col.shape != expect:
        raise KernelArgumentError(f"{fn}: col must have shape {expect} for image {img_shape}, "
                                  f"got {col.shape}")
    _check_nd_buffers(fn, img_shape, pad, expect)
    c = img_shape[0]
    padded = np.zeros((c,) + tuple(s + 2 * p for s, p in zip(img_shape[1:], pad)), np.float32)
    taps = col.reshape((c, n_taps) + tuple(out_sz))
    for t, tap in enumerate(np.ndindex(*kernel)):
        sl = tuple(slice(i * d, i * d + (o - 1) * s + 1, s)
                   for i, d, o, s in zip(tap, dilation, out_sz, stride))
        padded[(slice(None),) + sl] += taps[:, t]
    crop = tuple(slice(p, p + s) for p, s in zip(pad, img_shape[1:]))
    return np.ascontiguousarray(padded[(slice(None),) + crop])


# -- pooling ----------------------------------------------------------------------------------------

def _pool_geometry(fn, in_hw, kernel, stride, pad, out_hw):
    kh, kw = _ints(fn, "kernel", kernel, 2, 1)
    sh, sw = _ints(fn, "stride", stride, 2, 1)
    ph, pw = _ints(fn, "pad", pad, 2, 0)
    oh, ow = _ints(fn, "out_hw", out_hw, 2, 1)
    h, w = in_hw
    if ph >= kh or pw >= kw:
        raise KernelArgumentError(f"{fn}: pad {(ph, pw)} must be smaller than kernel {(kh, kw)}")
    _check_span(fn, (h, w), (kh, kw), (ph, pw), (sh, sw), (1, 1))
    # Caffe's ceil-rounded extent (before its padding clip) bounds every window start.
    max_h = -(-(h + 2 * ph - kh) // sh) + 1
    max_w = -(-(w + 2 * pw - kw) // sw) + 1
    if oh > max_h or ow > max_w:
        raise KernelArgumentError(f"{fn}: out_hw {(oh, ow)} exceeds the largest pooled size "
                                  f"{(max_h, max_w)} for input {(h, w)}")
    return kh, kw, sh, sw, ph, pw, oh, ow


def max_pool_forward(x, kernel, stride, pad, out_hw, out=None, mask_out=None):
    """Max pooling of ``x`` (N, C, H, W) to (N, C, PH, PW), as Caffe's ``PoolingLayer`` MAX.

    Returns ``(top, mask)``; ``mask`` (int32) holds the flat ``h*W + w`` index of each maximum
    within its input plane (first maximum wins, ``-1`` for a window with no value above
    ``-FLT_MAX``). ``out_hw`` is chosen by the caller (see :func:`pooled_output_size`).
    """
    fn = "max_pool_forward"
    x = _input(fn, "x", x, 4)
    n, c, h, w = x.shape
    kh, kw, sh, sw, ph, pw, oh, ow = _pool_geometry(fn, (h, w), kernel, stride, pad, out_hw)
    top = _output(fn, "out", out, (n, c, oh, ow), [x])
    mask = _output(fn, "mask_out", mask_out, (n, c, oh, ow), [x, top], dtype=np.int32)
    _pool.max_forward(x, kh, kw, ph, pw, sh, sw, top, mask, _threads_for(x.size))
    return top, mask


def max_pool_backward(top_diff, mask, in_hw, out=None):
    """Gradient of max pooling: ``bottom_diff`` (N, C, H, W) is zero except that each top diff is
    added at its ``mask`` index (Caffe's MAX ``Backward_cpu``). Indices outside the plane are
    ignored."""
    fn = "max_pool_backward"
    top_diff = _input(fn, "top_diff", top_diff, 4)
    if not isinstance(mask, np.ndarray) or mask.dtype.kind not in "iu":
        raise KernelArgumentError(f"{fn}: mask must be an integer numpy array")
    if mask.shape != top_diff.shape:
        raise KernelArgumentError(f"{fn}: mask shape {mask.shape} != top_diff shape {top_diff.shape}")
    if mask.dtype != np.int32 and mask.size and (mask.min() < -1 or mask.max() > _INT_MAX):
        raise KernelArgumentError(f"{fn}: mask values do not fit int32")
    mask = np.ascontiguousarray(mask, dtype=np.int32)
    h, w = _ints(fn, "in_hw", in_hw, 2, 1)
    n, c = top_diff.shape[:2]
    bottom = _output(fn, "out", out, (n, c, h, w), [top_diff, mask])
    _pool.max_backward(top_diff, mask, bottom, _threads_for(bottom.size))
    return bottom


def ave_pool_forward(x, kernel, stride, pad, out_hw, out=None):
    """Average pooling of ``x`` (N, C, H, W) to (N, C, PH, PW), as Caffe's ``PoolingLayer`` AVE:
    the divisor counts the window clipped to the padded image (padding counts as zeros)."""
    fn = "ave_pool_forward"
    x = _input(fn, "x", x, 4)
    n, c, h, w = x.shape
    kh, kw, sh, sw, ph, pw, oh, ow = _pool_geometry(fn, (h, w), kernel, stride, pad, out_hw)
    top = _output(fn, "out", out, (n, c, oh, ow), [x])
    _pool.ave_forward(x, kh, kw, ph, pw, sh, sw, top, _threads_for(x.size))
    return top


def ave_pool_backward(top_diff, kernel, stride, pad, in_hw, out=None):
    """Gradient of average pooling: each top diff, divided by its window's Caffe divisor, is added
    to every input of the window clipped to the image (Caffe's AVE ``Backward_cpu``)."""
    fn = "ave_pool_backward"
    top_diff = _input(fn, "top_diff", top_diff, 4)
    n, c, oh, ow = top_diff.shape
    h, w = _ints(fn, "in_hw", in_hw, 2, 1)
    kh, kw, sh, sw, ph, pw, _, _ = _pool_geometry(fn, (h, w), kernel, stride, pad, (oh, ow))
    bottom = _output(fn, "out", out, (n, c, h, w), [top_diff])
    _pool.ave_backward(top_diff, kh, kw, ph, pw, sh, sw, bottom, _threads_for(bottom.size))
    return bottom


# -- LRN --------------------------------------------------------------------------------------------

def _lrn_size(fn, size):
    (size,) = _ints(fn, "size", size, 1, 1)
    if size % 2 != 1:
        raise KernelArgumentError(f"{fn}: LRN only supports odd values for local_size, got {size}")
    return size


def _finite(fn, **vals):
    for name, v in vals.items():
        if not np.isfinite(np.float32(v)):
            raise KernelArgumentError(f"{fn}: {name} must be a finite number, got {v!r}")


def lrn_across_forward(x, size, alpha, beta, k, out=None, scale_out=None):
    """LRN across channels of ``x`` (N, C, H, W), Caffe's ``CrossChannelForward_cpu``.

    ``scale = k + alpha/size * sum_{window} x**2`` over ``size`` channels centred on each
    channel (zero beyond the ends) and ``top = x * scale**-beta``. Returns ``(top, scale)``; keep
    ``scale`` for :func:`lrn_across_backward`. The running channel sums follow Caffe's order;
    ``scale**-beta`` is ``powf`` except for ``beta == 0.75``, which uses a vectorised sqrt form
    (within ~3 ulp).
    """
    fn = "lrn_across_forward"
    x = _input(fn, "x", x, 4)
    size = _lrn_size(fn, size)
    _finite(fn, alpha=alpha, beta=beta, k=k)
    scale = _output(fn, "scale_out", scale_out, x.shape, [x])
    top = _output(fn, "out", out, x.shape, [x, scale])
    alpha_over_size = np.float32(alpha) / np.float32(size)     # float32, as Caffe's Dtype
    _lrn.across_forward(x, size, float(alpha_over_size), float(np.float32(beta)),
                        float(np.float32(k)), scale, top, _threads_for(x.size))
    return top, scale


def lrn_across_backward(x, top, scale, top_diff, size, alpha, beta, out=None):
    """Gradient of LRN across channels, Caffe's ``CrossChannelBackward_cpu``:
    ``bottom_diff = top_diff * scale**-beta - 2*alpha*beta/size * x * sum_{window}(top_diff * top
    / scale)``. ``top`` and ``scale`` are those returned by :func:`lrn_across_forward`."""
    fn = "lrn_across_backward"
    x = _input(fn, "x", x, 4)
    arrays = {}
    for name, value in (("top", top), ("scale", scale), ("top_diff", top_diff)):
        arrays[name] = a = _input(fn, name, value, 4)
        if a.shape != x.shape:
            raise KernelArgumentError(f"{fn}: {name} shape {a.shape} != x shape {x.shape}")
    size = _lrn_size(fn, size)
    _finite(fn, alpha=alpha, beta=beta)
    bottom = _output(fn, "out", out, x.shape, [x, *arrays.values()])
    # Caffe: Dtype cache_ratio_value = 2. * alpha_ * beta_ / size_ (double arithmetic on floats)
    cache_ratio = np.float32(2.0 * float(np.float32(alpha)) * float(np.float32(beta)) / size)
    _lrn.across_backward(x, arrays["top"], arrays["scale"], arrays["top_diff"], size,
                         float(np.float32(beta)), float(cache_ratio), bottom, _threads_for(x.size))
    return bottom
