"""Validated Python entry points to the compiled float32 kernels (``pyskim._kernels``).

Every wrapper checks its arguments at the boundary (rank, shape, dtype, contiguity, geometry) and
raises :class:`KernelArgumentError` (a :class:`ValueError`) on bad input, so no call from Python
can make a kernel read or write out of bounds. Inputs are converted with
``np.ascontiguousarray(x, dtype=np.float32)``; ``out=`` arrays must already be C-contiguous,
writeable float32 of the exact shape (they are never silently copied) and must not overlap the
inputs. The checks are those of :mod:`.validate`; :mod:`.reference` holds slow NumPy references
for the same functions.

Geometry arguments (``kernel``, ``pad``, ``stride``, ``dilation``) take an int or a (h, w) pair
(a length-D sequence for the ``_nd`` functions); the batched im2col/col2im take the compiled
functions' scalar arguments (``kh, kw, pad_h, pad_w, stride_h, stride_w, dil_h, dil_w``).
"""

import math

import numpy as np

from .._kernels import batch_kernels as _batch
from .._kernels import blas1 as _blas1
from .._kernels import im2col as _im2col
from .._kernels import lrn as _lrn
from .._kernels import pooling as _pool
from ..core.blob import check_allocation
from .threads import get_num_threads, set_num_threads
from .validate import (
    INT_MAX,
    KernelArgumentError,
    check_span,
    conv_geometry,
    conv_out_size,
    finite,
    float_input,
    int_tuple,
    output_array,
    positive_int,
    scalar_ints,
)

__all__ = [
    "KernelArgumentError",
    "LRNWithinPlan",
    "PoolingPlan",
    "ave_pool_backward",
    "ave_pool_forward",
    "axpby",
    "col2im",
    "col2im_batch",
    "col2im_nd",
    "conv_output_size",
    "get_num_threads",
    "im2col",
    "im2col_batch",
    "im2col_nd",
    "lrn_across_backward",
    "lrn_across_forward",
    "lrn_within_backward",
    "lrn_within_forward",
    "lrn_within_fused",
    "max_pool_backward",
    "max_pool_forward",
    "pooled_output_size",
    "relu",
    "set_num_threads",
]

# -- threads ----------------------------------------------------------------------------------------

#: Below this many output elements a kernel runs on one thread: waking the pool's threads costs more
#: than the work. (At 1 << 20, CaffeNet's pooling, LRN and ReLU layers ran on one thread at batch 1;
#: at 1 << 16 two threads take them from 0.45 to 0.32 ms on the project's 2-vCPU Xeon.)
PARALLEL_MIN_ELEMENTS = 1 << 16


def _threads_for(elements):
    return get_num_threads() if elements >= PARALLEL_MIN_ELEMENTS else 1


# -- plans: a layer's constant arguments checked once -----------------------------------------------
#
# A layer calls a kernel with the same geometry and array shapes on every pass. A plan checks those
# once, when it is made (in the layer's reshape), exactly as the wrapper function checks them, and
# owns the arrays the kernel writes beside the top (the max-pooling mask, the LRN intermediates), so
# a pass checks only that each array has the planned shape and that the top overlaps no input; the
# compiled call's typed buffers refuse another dtype or layout, or a read-only output.

def _planned_shape(fn, name, shape):
    """``shape`` as a 4-tuple of positive ints whose product the kernels can index."""
    shape = int_tuple(fn, name, shape, 4, 1)
    if math.prod(shape) > INT_MAX:
        raise KernelArgumentError(f"{fn}: {name} {shape} has too many elements")
    return shape


def _check_planned(fn, x, out, in_shape, out_shape):
    """Refuse ``x`` / ``out`` unless numpy arrays of the planned shapes, ``out`` not overlapping ``x``."""
    if type(x) is not np.ndarray or x.shape != in_shape:
        raise KernelArgumentError(f"{fn}: x must be a numpy array of shape {in_shape}, "
                                  f"got {getattr(x, 'shape', type(x).__name__)}")
    if type(out) is not np.ndarray or out.shape != out_shape:
        raise KernelArgumentError(f"{fn}: out must be a numpy array of shape {out_shape}, "
                                  f"got {getattr(out, 'shape', type(out).__name__)}")
    if np.may_share_memory(out, x):
        raise KernelArgumentError(f"{fn}: out must not overlap an input array")


def _planned_call(fn, kernel, *args):
    """``kernel(*args)``, its refusal of an array (dtype, layout, read-only) as a KernelArgumentError."""
    try:
        kernel(*args)
    except (ValueError, BufferError) as e:
        raise KernelArgumentError(f"{fn}: {e}") from None


def conv_output_size(in_size, kernel, pad, stride, dilation):
    """Caffe's convolution output extent: ``(in + 2*pad - (dil*(k-1)+1)) // stride + 1``."""
    return conv_out_size(*scalar_ints("conv_output_size", ("in_size", in_size, 0), ("kernel", kernel, 1),
                                      ("pad", pad, 0), ("stride", stride, 1), ("dilation", dilation, 1)))


def pooled_output_size(in_size, kernel, stride, pad):
    """Caffe's pooled extent: ``ceil((in + 2*pad - k) / stride) + 1``, then, when padded, one less
    if the last window would start in the padding (``PoolingLayer::Reshape``)."""
    in_size, kernel, stride, pad = scalar_ints("pooled_output_size", ("in_size", in_size, 0),
                                               ("kernel", kernel, 1), ("stride", stride, 1), ("pad", pad, 0))
    out = -(-(in_size + 2 * pad - kernel) // stride) + 1
    if pad and (out - 1) * stride >= in_size + pad:
        out -= 1
    return out


# -- im2col / col2im --------------------------------------------------------------------------------

def im2col(img, kernel, pad=0, stride=1, dilation=1, out=None):
    """Unfold ``img`` (C, H, W) into ``col`` (C*kh*kw, OH*OW), Caffe's ``im2col_cpu`` layout:
    row ``(c*kh + i)*kw + j``, column ``oh*OW + ow``, padding taps are 0."""
    fn = "im2col"
    img = float_input(fn, "img", img, 3)
    (kh, kw), (ph, pw), (sh, sw), (dh, dw), (oh, ow) = conv_geometry(
        fn, img.shape[1:], kernel, pad, stride, dilation)
    col = output_array(fn, "out", out, (img.shape[0] * kh * kw, oh * ow), [img])
    _im2col.im2col(img, kh, kw, ph, pw, sh, sw, dh, dw, col, _threads_for(col.size))
    return col


def col2im(col, img_shape, kernel, pad=0, stride=1, dilation=1, out=None, accumulate=False):
    """Fold ``col`` (C*kh*kw, OH*OW) back into an image of ``img_shape`` (C, H, W), summing
    overlapping taps, as Caffe's ``col2im_cpu`` (same per-pixel addition order, bit-identical).
    With ``accumulate=True`` the sums are added to ``out`` instead of overwriting it."""
    fn = "col2im"
    col = float_input(fn, "col", col, 2)
    img_shape = int_tuple(fn, "img_shape", img_shape, 3, 1)
    (kh, kw), (ph, pw), (sh, sw), (dh, dw), (oh, ow) = conv_geometry(
        fn, img_shape[1:], kernel, pad, stride, dilation)
    expect = (img_shape[0] * kh * kw, oh * ow)
    if col.shape != expect:
        raise KernelArgumentError(f"{fn}: col must have shape {expect} for image {img_shape}, "
                                  f"got {col.shape}")
    if accumulate and out is None:
        raise KernelArgumentError(f"{fn}: accumulate=True needs out=")
    img = output_array(fn, "out", out, img_shape, [col])
    if not accumulate:
        img.fill(0)
    _im2col.col2im_add(col, kh, kw, ph, pw, sh, sw, dh, dw, img, _threads_for(col.size))
    return img


#: The scalar geometry arguments of the batched kernels, with their minimum.
_BATCH_GEOMETRY = (("kh", 1), ("kw", 1), ("pad_h", 0), ("pad_w", 0), ("stride_h", 1), ("stride_w", 1),
                   ("dil_h", 1), ("dil_w", 1))


def _batch_geometry(fn, images, values):
    """The geometry of the batched kernels for ``images`` (N, C, H, W) from their eight scalar
    arguments: ``(kernel, pad, stride, dilation)`` pairs and the column matrix's shape
    (C*kh*kw, N*OH*OW)."""
    kh, kw, ph, pw, sh, sw, dh, dw = scalar_ints(
        fn, *((name, value, minimum) for (name, minimum), value in zip(_BATCH_GEOMETRY, values)))
    n, c, h, w = images.shape
    *pairs, (oh, ow) = conv_geometry(fn, (h, w), (kh, kw), (ph, pw), (sh, sw), (dh, dw))
    return pairs, (c * kh * kw, n * oh * ow)


def _batch_threads(fn, num_threads, elements):
    if num_threads is None:
        return _threads_for(elements)
    return positive_int(fn, "num_threads", num_threads, maximum=4096)


def im2col_batch(img, kh, kw, pad_h, pad_w, stride_h, stride_w, dil_h, dil_w, col=None, num_threads=None):
    """im2col of a whole batch ``img`` (N, C, H, W) into ``col`` (C*kh*kw, N*OH*OW): image ``b``'s
    columns are ``b*OH*OW .. (b+1)*OH*OW``, each exactly Caffe's ``im2col_cpu`` column, so one GEMM
    per group covers the batch. Returns ``col`` (allocated when None). ``num_threads`` defaults to
    the kernels' threads for large outputs, one thread for small ones."""
    fn = "im2col_batch"
    img = float_input(fn, "img", img, 4)
    (kernel, pad, stride, dilation), col_shape = _batch_geometry(
        fn, img, (kh, kw, pad_h, pad_w, stride_h, stride_w, dil_h, dil_w))
    col = output_array(fn, "col", col, col_shape, [img])
    threads = _batch_threads(fn, num_threads, col.size)
    _batch.im2col_batch(img, *kernel, *pad, *stride, *dilation, col, threads)
    return col


def col2im_batch(col, kh, kw, pad_h, pad_w, stride_h, stride_w, dil_h, dil_w, img, num_threads=None):
    """Fold ``col`` (C*kh*kw, N*OH*OW), laid out as :func:`im2col_batch` writes it, into ``img``
    (N, C, H, W), overwriting it: every pixel is the sum of its taps in Caffe's ``col2im_cpu`` order
    (bit-identical per image). ``img`` is required (written, returned)."""
    fn = "col2im_batch"
    col = float_input(fn, "col", col, 2)
    if not isinstance(img, np.ndarray) or img.ndim != 4:
        raise KernelArgumentError(f"{fn}: img (the output) must be a 4-D numpy array (N, C, H, W), "
                                  f"got {getattr(img, 'shape', type(img).__name__)}")
    img = output_array(fn, "img", img, img.shape, [col])
    (kernel, pad, stride, dilation), col_shape = _batch_geometry(
        fn, img, (kh, kw, pad_h, pad_w, stride_h, stride_w, dil_h, dil_w))
    if col.shape != col_shape:
        raise KernelArgumentError(f"{fn}: col must have shape {col_shape} for images {img.shape}, "
                                  f"got {col.shape}")
    threads = _batch_threads(fn, num_threads, col.size)
    _batch.col2im_batch(col, *kernel, *pad, *stride, *dilation, img, threads)
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
    img = float_input(fn, "img", img, None)
    if img.ndim < 2:
        raise KernelArgumentError(f"{fn}: img must be (C, S1, ..., SD) with D >= 1, got {img.shape}")
    kernel, pad, stride, dilation, out_sz = conv_geometry(
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
        if math.prod(shape) > INT_MAX:
            raise KernelArgumentError(f"{fn}: {what} would have too many elements {list(shape)}")
        check_allocation(shape, f"{fn}: {what}", error=KernelArgumentError)


def col2im_nd(col, img_shape, kernel, pad=0, stride=1, dilation=1):
    """N-d col2im: fold ``col`` back into ``img_shape`` (C, S1..SD), summing overlapping taps in
    tap order as Caffe's ``col2im_nd_cpu``; vectorised NumPy (one slice-add per kernel tap)."""
    fn = "col2im_nd"
    col = float_input(fn, "col", col, 2)
    try:
        n_dims = len(img_shape)
    except TypeError:
        n_dims = 0
    if n_dims < 2:
        raise KernelArgumentError(f"{fn}: img_shape must be (C, S1, ..., SD) with D >= 1, got {img_shape!r}")
    img_shape = int_tuple(fn, "img_shape", img_shape, n_dims, 1)
    kernel, pad, stride, dilation, out_sz = conv_geometry(
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


# -- level-1 updates ------------------------------------------------------------------------------

def axpby(alpha, x, beta, y):
    """``y = alpha*x + beta*y`` in place, float32 (Caffe's ``caffe_cpu_axpby``; ``beta = 1`` is
    ``caffe_axpy``): each product rounded, then the sum (no fused multiply-add); a zero ``alpha`` or
    ``beta`` drops its term as BLAS ``saxpby`` does. ``y`` must be a writeable C-contiguous float32
    array and ``x`` an array of the same shape. Returns ``y``."""
    fn = "axpby"
    if not (isinstance(y, np.ndarray) and y.dtype == np.float32 and y.flags.c_contiguous and y.flags.writeable):
        raise KernelArgumentError(f"{fn}: y must be a writeable C-contiguous float32 array")
    x = float_input(fn, "x", x, y.ndim)
    if x.shape != y.shape:
        raise KernelArgumentError(f"{fn}: x has shape {x.shape}, y {y.shape}")
    _blas1.axpby(float(np.float32(alpha)), x.reshape(-1), float(np.float32(beta)), y.reshape(-1),
                 _threads_for(y.size))
    return y


def relu(x, out=None):
    """``out = max(x, 0)`` as Caffe's ReLU with ``negative_slope`` 0 computes it (``max(x, 0) + 0 *
    min(x, 0)``: NaN stays NaN, -inf becomes NaN, -0.0 becomes +0.0), in one pass on the thread pool.
    ``out`` (checked as every kernel's output, or allocated when None) may be ``x`` itself (in place)
    but must not overlap it otherwise. Returns ``out``."""
    fn = "relu"
    if (out is x and type(x) is np.ndarray and x.dtype == np.float32 and 0 < x.size <= INT_MAX
            and x.flags.c_contiguous):                      # in place, checked cheaply
        flat = x.reshape(-1)
        _planned_call(fn, _blas1.relu, flat, flat, _threads_for(x.size))
        return x
    x = float_input(fn, "x", x, None)
    in_place = (isinstance(out, np.ndarray) and out.shape == x.shape
                and out.__array_interface__["data"][0] == x.__array_interface__["data"][0])
    out = output_array(fn, "out", out, x.shape, [] if in_place else [x])
    _blas1.relu(x.reshape(-1), out.reshape(-1), _threads_for(out.size))
    return out


# -- pooling ----------------------------------------------------------------------------------------

def _pool_geometry(fn, in_hw, kernel, stride, pad, out_hw):
    kh, kw = int_tuple(fn, "kernel", kernel, 2, 1)
    sh, sw = int_tuple(fn, "stride", stride, 2, 1)
    ph, pw = int_tuple(fn, "pad", pad, 2, 0)
    oh, ow = int_tuple(fn, "out_hw", out_hw, 2, 1)
    h, w = in_hw
    if ph >= kh or pw >= kw:
        raise KernelArgumentError(f"{fn}: pad {(ph, pw)} must be smaller than kernel {(kh, kw)}")
    check_span(fn, (h, w), (kh, kw), (ph, pw), (sh, sw), (1, 1))
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
    x = float_input(fn, "x", x, 4)
    n, c, h, w = x.shape
    kh, kw, sh, sw, ph, pw, oh, ow = _pool_geometry(fn, (h, w), kernel, stride, pad, out_hw)
    top = output_array(fn, "out", out, (n, c, oh, ow), [x])
    mask = output_array(fn, "mask_out", mask_out, (n, c, oh, ow), [x, top], dtype=np.int32)
    _pool.max_forward(x, kh, kw, ph, pw, sh, sw, top, mask, _threads_for(x.size))
    return top, mask


class PoolingPlan:
    """MAX or AVE pooling (Caffe's ``PoolingLayer``) of inputs of one shape ``in_shape`` (N, C, H, W)
    to ``out_hw`` with one window, checked once as :func:`max_pool_forward` / :func:`ave_pool_forward`
    check it (see the plans above; errors are named as theirs); :meth:`forward` gives the same results
    as they do. For MAX the plan owns the int32 ``mask`` of the last forward (:func:`max_pool_forward`'s
    second result)."""

    def __init__(self, method, in_shape, kernel, stride, pad, out_hw):
        if method not in ("MAX", "AVE"):
            raise KernelArgumentError(f"PoolingPlan: method must be 'MAX' or 'AVE', got {method!r}")
        self.method, self._fn = method, f"{method.lower()}_pool_forward"
        n, c, h, w = _planned_shape(self._fn, "in_shape", in_shape)
        kh, kw, sh, sw, ph, pw, oh, ow = _pool_geometry(self._fn, (h, w), kernel, stride, pad, out_hw)
        self.in_shape, self.out_shape = (n, c, h, w), (n, c, oh, ow)
        self._window = (kh, kw, ph, pw, sh, sw)
        self._elements = n * c * h * w
        self.mask = (output_array(self._fn, "mask", None, self.out_shape, [], dtype=np.int32)
                     if method == "MAX" else None)

    def forward(self, x, out):
        """Pool ``x`` (``in_shape``, float32, C-contiguous) into ``out`` (``out_shape``, not
        overlapping ``x``); MAX also writes :attr:`mask`. Returns ``out``."""
        fn = self._fn
        _check_planned(fn, x, out, self.in_shape, self.out_shape)
        threads = _threads_for(self._elements)
        if self.mask is None:
            _planned_call(fn, _pool.ave_forward, x, *self._window, out, threads)
        else:
            _planned_call(fn, _pool.max_forward, x, *self._window, out, self.mask, threads)
        return out


def max_pool_backward(top_diff, mask, in_hw, out=None):
    """Gradient of max pooling: ``bottom_diff`` (N, C, H, W) is zero except that each top diff is
    added at its ``mask`` index (Caffe's MAX ``Backward_cpu``). Indices outside the plane are
    ignored."""
    fn = "max_pool_backward"
    top_diff = float_input(fn, "top_diff", top_diff, 4)
    if not isinstance(mask, np.ndarray) or mask.dtype.kind not in "iu":
        raise KernelArgumentError(f"{fn}: mask must be an integer numpy array")
    if mask.shape != top_diff.shape:
        raise KernelArgumentError(f"{fn}: mask shape {mask.shape} != top_diff shape {top_diff.shape}")
    if mask.dtype != np.int32 and mask.size and (mask.min() < -1 or mask.max() > INT_MAX):
        raise KernelArgumentError(f"{fn}: mask values do not fit int32")
    mask = np.ascontiguousarray(mask, dtype=np.int32)
    h, w = int_tuple(fn, "in_hw", in_hw, 2, 1)
    n, c = top_diff.shape[:2]
    bottom = output_array(fn, "out", out, (n, c, h, w), [top_diff, mask])
    _pool.max_backward(top_diff, mask, bottom, _threads_for(bottom.size))
    return bottom


def ave_pool_forward(x, kernel, stride, pad, out_hw, out=None):
    """Average pooling of ``x`` (N, C, H, W) to (N, C, PH, PW), as Caffe's ``PoolingLayer`` AVE:
    the divisor counts the window clipped to the padded image (padding counts as zeros)."""
    fn = "ave_pool_forward"
    x = float_input(fn, "x", x, 4)
    n, c, h, w = x.shape
    kh, kw, sh, sw, ph, pw, oh, ow = _pool_geometry(fn, (h, w), kernel, stride, pad, out_hw)
    top = output_array(fn, "out", out, (n, c, oh, ow), [x])
    _pool.ave_forward(x, kh, kw, ph, pw, sh, sw, top, _threads_for(x.size))
    return top


def ave_pool_backward(top_diff, kernel, stride, pad, in_hw, out=None):
    """Gradient of average pooling: each top diff, divided by its window's Caffe divisor, is added
    to every input of the window clipped to the image (Caffe's AVE ``Backward_cpu``)."""
    fn = "ave_pool_backward"
    top_diff = float_input(fn, "top_diff", top_diff, 4)
    n, c, oh, ow = top_diff.shape
    h, w = int_tuple(fn, "in_hw", in_hw, 2, 1)
    kh, kw, sh, sw, ph, pw, _, _ = _pool_geometry(fn, (h, w), kernel, stride, pad, (oh, ow))
    bottom = output_array(fn, "out", out, (n, c, h, w), [top_diff])
    _pool.ave_backward(top_diff, kh, kw, ph, pw, sh, sw, bottom, _threads_for(bottom.size))
    return bottom


# -- LRN --------------------------------------------------------------------------------------------

def _lrn_size(fn, size):
    (size,) = scalar_ints(fn, ("size", size, 1))
    if size % 2 != 1:
        raise KernelArgumentError(f"{fn}: LRN only supports odd values for local_size, got {size}")
    return size


def lrn_across_forward(x, size, alpha, beta, k, out=None, scale_out=None):
    """LRN across channels of ``x`` (N, C, H, W), Caffe's ``CrossChannelForward_cpu``.

    ``scale = k + alpha/size * sum_{window} x**2`` over ``size`` channels centred on each
    channel (zero beyond the ends) and ``top = x * scale**-beta``. Returns ``(top, scale)``; keep
    ``scale`` for :func:`lrn_across_backward`. The running channel sums follow Caffe's order;
    ``scale**-beta`` is ``powf`` except for ``beta == 0.75``, which uses a vectorised sqrt form
    (within ~3 ulp).
    """
    fn = "lrn_across_forward"
    x = float_input(fn, "x", x, 4)
    size = _lrn_size(fn, size)
    finite(fn, alpha=alpha, beta=beta, k=k)
    scale = output_array(fn, "scale_out", scale_out, x.shape, [x])
    top = output_array(fn, "out", out, x.shape, [x, scale])
    alpha_over_size = np.float32(alpha) / np.float32(size)     # float32, as Caffe's Dtype
    _lrn.across_forward(x, size, float(alpha_over_size), float(np.float32(beta)),
                        float(np.float32(k)), scale, top, _threads_for(x.size))
    return top, scale


def lrn_across_backward(x, top, scale, top_diff, size, alpha, beta, out=None):
    """Gradient of LRN across channels, Caffe's ``CrossChannelBackward_cpu``:
    ``bottom_diff = top_diff * scale**-beta - 2*alpha*beta/size * x * sum_{window}(top_diff * top
    / scale)``. ``top`` and ``scale`` are those returned by :func:`lrn_across_forward`."""
    fn = "lrn_across_backward"
    x = float_input(fn, "x", x, 4)
    arrays = {}
    for name, value in (("top", top), ("scale", scale), ("top_diff", top_diff)):
        arrays[name] = a = float_input(fn, name, value, 4)
        if a.shape != x.shape:
            raise KernelArgumentError(f"{fn}: {name} shape {a.shape} != x shape {x.shape}")
    size = _lrn_size(fn, size)
    finite(fn, alpha=alpha, beta=beta)
    bottom = output_array(fn, "out", out, x.shape, [x, *arrays.values()])
    # Caffe: Dtype cache_ratio_value = 2. * alpha_ * beta_ / size_ (double arithmetic on floats)
    cache_ratio = np.float32(2.0 * float(np.float32(alpha)) * float(np.float32(beta)) / size)
    _lrn.across_backward(x, arrays["top"], arrays["scale"], arrays["top_diff"], size,
                         float(np.float32(beta)), float(cache_ratio), bottom, _threads_for(x.size))
    return bottom


def lrn_within_fused(alpha, beta):
    """Whether :func:`lrn_within_forward` / :func:`lrn_within_backward` take these parameters: Caffe's
    PowerLayer special cases (a zero scale or power, a power of 1 or 2) stay with the layer's NumPy
    steps."""
    power = -np.float32(beta)
    return np.float32(alpha) != 0 and power not in (0, 1, 2)


def _within_arrays(fn, x, size):
    x = float_input(fn, "x", x, 4)
    size = _lrn_size(fn, size)
    return x, size, (size - 1) // 2


def _within_constants(fn, alpha, beta):
    """``alpha`` and ``-beta`` as the float32 values the WITHIN_CHANNEL kernels take (Python floats),
    refused unless finite and :func:`lrn_within_fused`."""
    finite(fn, alpha=alpha, beta=beta)
    if not lrn_within_fused(alpha, beta):
        raise KernelArgumentError(f"{fn}: alpha {alpha}, beta {beta} are PowerLayer special cases")
    return float(np.float32(alpha)), float(-np.float32(beta))


def lrn_within_forward(x, size, alpha, beta, out=None, pooled_out=None, power_out=None):
    """LRN within a channel of ``x`` (N, C, H, W), Caffe's internal chain: squares, AVE pooling over
    ``size`` x ``size`` (pad (size-1)/2, Caffe's divisor), ``power = (1 + alpha * pooled) ** -beta``,
    ``top = x * power``, each float32 step rounded as Caffe's, in one compiled pass per plane
    (``**`` is ``powf``, except for ``beta == 0.75``: the vectorised sqrt form of
    :func:`lrn_across_forward`). ``top``, ``pooled`` and ``power`` are written into ``out``,
    ``pooled_out`` and ``power_out`` when given. Returns ``(top, pooled, power)`` (keep ``pooled`` and
    ``power`` for :func:`lrn_within_backward`). Only for :func:`lrn_within_fused` parameters."""
    fn = "lrn_within_forward"
    x, size, _ = _within_arrays(fn, x, size)
    alpha, nbeta = _within_constants(fn, alpha, beta)
    pooled = output_array(fn, "pooled_out", pooled_out, x.shape, [x])
    power = output_array(fn, "power_out", power_out, x.shape, [x, pooled])
    top = output_array(fn, "out", out, x.shape, [x, pooled, power])
    _lrn.within_forward(x, size, alpha, nbeta, pooled, power, top, _threads_for(x.size))
    return top, pooled, power


def lrn_within_backward(x, pooled, power, top_diff, size, alpha, beta, out=None):
    """Gradient of :func:`lrn_within_forward` through Caffe's chain, each float32 step as Caffe's:
    ``bottom_diff = power * top_diff + pool_back((x * top_diff) * power / (1 + alpha * pooled) *
    (-beta * alpha)) * 2x``."""
    fn = "lrn_within_backward"
    x, size, pad = _within_arrays(fn, x, size)
    arrays = {}
    for name, value in (("pooled", pooled), ("power", power), ("top_diff", top_diff)):
        arrays[name] = a = float_input(fn, name, value, 4)
        if a.shape != x.shape:
            raise KernelArgumentError(f"{fn}: {name} shape {a.shape} != x shape {x.shape}")
    alpha, nbeta = _within_constants(fn, alpha, beta)
    bottom = output_array(fn, "out", out, x.shape, [x, *arrays.values()])
    threads = _threads_for(x.size)
    flat, td, pw = x.reshape(-1), arrays["top_diff"].reshape(-1), arrays["power"].reshape(-1)
    power_diff = np.empty_like(x)
    _lrn.within_backward_step(0, flat, td, pw, arrays["pooled"].reshape(-1), power_diff.reshape(-1), alpha,
                              nbeta, threads)
    pooled_diff = ave_pool_backward(power_diff, size, 1, pad, x.shape[2:])
    _lrn.within_backward_step(1, flat, td, pw, pooled_diff.reshape(-1), bottom.reshape(-1), 0.0, 0.0, threads)
    return bottom


class LRNWithinPlan:
    """WITHIN_CHANNEL LRN forward (:func:`lrn_within_forward`) of inputs of one shape (N, C, H, W)
    with one ``size``, ``alpha`` and ``beta`` (:func:`lrn_within_fused` ones), checked once (see the
    plans above; errors are named as the function's), with the same results. The plan owns ``pooled``
    and ``power``, written by each :meth:`forward` for :func:`lrn_within_backward`."""

    def __init__(self, shape, size, alpha, beta):
        fn = "lrn_within_forward"
        self.shape = _planned_shape(fn, "shape", shape)
        self.size = _lrn_size(fn, size)
        self._alpha, self._nbeta = _within_constants(fn, alpha, beta)
        self.pooled = output_array(fn, "pooled", None, self.shape, [])
        self.power = output_array(fn, "power", None, self.shape, [])
        self._elements = math.prod(self.shape)

    def forward(self, x, out):
        """Normalise ``x`` (``shape``, float32, C-contiguous) into ``out`` (same shape, not overlapping
        ``x``), writing :attr:`pooled` and :attr:`power`. Returns ``out``."""
        fn = "lrn_within_forward"
        _check_planned(fn, x, out, self.shape, self.shape)
        _planned_call(fn, _lrn.within_forward, x, self.size, self._alpha, self._nbeta, self.pooled, self.power,
                      out, _threads_for(self._elements))
        return out
