"""Validated entry points to pyskim's dense float32 products (``pyskim._kernels.gemm``): the matrix
product of the inner-product layer and the three products of a 2-D convolution, each run on
pyskim's thread pool (:mod:`.threads`) without a BLAS library.

The convolution products never write a column matrix: im2col is fused into the packing of the
product (the column matrix is Caffe's ``im2col_cpu`` layout for every image of the batch side by
side, ``col[(c*kh + i)*kw + j, b*OH*OW + oh*OW + ow]``). Every element of every result is the same
sum in the same order whatever the thread count. Arguments are checked here (:mod:`.validate`) and
refused with :class:`KernelArgumentError`; :mod:`.reference` has the NumPy references.
"""
import numpy as np

from .._kernels import gemm as _gemm
from .threads import get_num_threads
from .validate import (
    INT_MAX,
    KernelArgumentError,
    bias_input,
    conv_geometry,
    float_input,
    output_array,
    positive_int,
)

__all__ = ["PackedConvWeights", "conv2d_column_grad", "conv2d_forward", "conv2d_input_grad", "conv2d_weight_grad",
           "input_grad_applies", "matmul"]

#: Below this many multiply-adds a product runs on the calling thread alone.
PARALLEL_MIN_MACS = 1 << 18
#: The longest run of output positions the weight gradient sums in one register (the runs' sums are
#: then added up): its sums of products largely cancel, and short runs keep them as accurate as
#: Caffe's (Caffe's own conformance cases need runs of at most about 32).
WEIGHT_GRAD_BLOCK = 32


def _threads(macs):
    return get_num_threads() if macs >= PARALLEL_MIN_MACS else 1


def _matrix(fn, name, a):
    """``a`` as a 2-D float32 array with element strides (any layout is kept, e.g. a transpose)."""
    if not (isinstance(a, np.ndarray) and a.dtype == np.float32 and a.ndim == 2
            and a.strides[0] % 4 == 0 and a.strides[1] % 4 == 0):
        a = float_input(fn, name, a, 2)
    if a.size > INT_MAX:
        raise KernelArgumentError(f"{fn}: {name} has too many elements ({a.size})")
    return a


def matmul(a, b, out=None, accumulate=False, bias=None):
    """``out`` (M, N) = ``a`` (M, K) . ``b`` (K, N) [+ ``bias`` (N) on every row]; with
    ``accumulate`` the product is added to ``out`` (Caffe's ``caffe_cpu_gemm`` with beta = 1).
    ``a`` and ``b`` may be transposed views. Returns ``out``."""
    fn = "matmul"
    a, b = _matrix(fn, "a", a), _matrix(fn, "b", b)
    (m, k), (k2, n) = a.shape, b.shape
    if k != k2:
        raise KernelArgumentError(f"{fn}: a {a.shape} and b {b.shape} do not chain")
    if accumulate and out is None:
        raise KernelArgumentError(f"{fn}: accumulate=True needs out=")
    if 0 in (m, n, k):                 # Caffe allows empty blobs: an empty sum is 0
        return _empty_product(fn, out, (m, n), accumulate, bias_input(fn, bias, n))
    out = output_array(fn, "out", out, (m, n), [a, b])
    _gemm.matmul(a, b, out, bool(accumulate), bias_input(fn, bias, n), _threads(m * n * k))
    return out


def _empty_product(fn, out, shape, accumulate, bias):
    """The product of an empty sum (K = 0) or an empty result: 0 [+ out] [+ bias]."""
    if out is None:
        out = np.zeros(shape, np.float32)
    elif not (isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == shape):
        raise KernelArgumentError(f"{fn}: out must be a float32 array of shape {shape}")
    elif not accumulate:
        out[...] = 0
    if bias is not None:
        out += bias
    return out


def _conv_setup(fn, x, kernel, pad, stride, dilation, group):
    """Validated (x, geometry tuple (kh, kw, ph, pw, sh, sw, dh, dw), group, (OH, OW))."""
    x = float_input(fn, "x", x, 4)
    kernel, pad, stride, dilation, out_hw = conv_geometry(fn, x.shape[2:], kernel, pad, stride, dilation)
    group = positive_int(fn, "group", group)
    if x.shape[1] % group:
        raise KernelArgumentError(f"{fn}: group {group} must divide the {x.shape[1]} input channels")
    flat = (kernel[0], kernel[1], pad[0], pad[1], stride[0], stride[1], dilation[0], dilation[1])
    return x, flat, group, out_hw


def _weights(fn, name, weights, x, kernel, group, rows=None):
    """Weights as (M, C/group*kh*kw) float32 (any (M, C/group, kh, kw) array is flattened)."""
    weights = float_input(fn, name, weights, None)
    k = x.shape[1] // group * kernel[0] * kernel[1]
    if weights.ndim < 2 or weights.size % k or weights.shape[0] * k != weights.size:
        raise KernelArgumentError(f"{fn}: {name} must have {k} values per output channel, got {weights.shape}")
    w = weights.reshape(weights.shape[0], k)
    if w.shape[0] % group or (rows is not None and w.shape[0] != rows):
        raise KernelArgumentError(f"{fn}: {name} has {w.shape[0]} output channels, which group {group} "
                                  f"must divide" + ("" if rows is None else f" and which must be {rows}"))
    return w


class PackedConvWeights:
    """A copy of convolution weights (M, K) in the layout :func:`conv2d_forward` multiplies with
    (``packed=``), for a layer that runs many forwards with the same weights: the copy does not
    follow later changes of the weights; the caller makes a new one then."""

    def __init__(self, weights, group=1):
        fn = "PackedConvWeights"
        weights = float_input(fn, "weights", weights, None)
        group = positive_int(fn, "group", group)
        if weights.ndim < 2 or weights.shape[0] % group:
            raise KernelArgumentError(f"{fn}: weights {weights.shape} need output channels divisible by {group}")
        self.weights_shape = (weights.shape[0], weights.size // weights.shape[0])
        self.group = group
        self.array = np.empty(_gemm.packed_weights_size(*self.weights_shape, group), np.float32)
        _gemm.pack_weights(weights.reshape(self.weights_shape), group, self.array, get_num_threads())


def conv2d_forward(x, weights, bias, kernel, pad=0, stride=1, dilation=1, group=1, out=None, packed=None,
                   relu=False):
    """Caffe's Convolution forward for a batch ``x`` (N, C, H, W): ``out`` (N, M, OH, OW) with
    ``out_g = weights_g . im2col(x)_g + bias`` per group (``weights`` (M, C/group, kh, kw) or
    flattened, ``bias`` (M) or None). ``packed``: a :class:`PackedConvWeights` of these weights,
    used instead of packing them again. ``relu``: ``out = max(out, 0)`` as Caffe's ReLU computes it
    (NaN and -0.0 unchanged), applied as the product stores each tile. Returns ``out``."""
    fn = "conv2d_forward"
    x, geo, group, (oh, ow) = _conv_setup(fn, x, kernel, pad, stride, dilation, group)
    w = _weights(fn, "weights", weights, x, geo[:2], group)
    y = output_array(fn, "out", out, (x.shape[0], w.shape[0], oh, ow), [x, w, bias])
    if packed is not None and (not isinstance(packed, PackedConvWeights) or packed.weights_shape != w.shape
                               or packed.group != group):
        raise KernelArgumentError(f"{fn}: packed must be a PackedConvWeights of weights {w.shape}, group {group}")
    macs = y.size * w.shape[1]
    _gemm.conv_forward(x, w, bias_input(fn, bias, w.shape[0]), *geo, group, y, _threads(macs),
                       None if packed is None else packed.array, bool(relu))
    return y


def conv2d_weight_grad(x, top_diff, weight_diff, kernel, pad=0, stride=1, dilation=1, group=1):
    """Add Caffe's Convolution weight gradient ``top_diff_g . im2col(x)_g^T`` (summed over the
    batch) to ``weight_diff`` (M, C/group, kh, kw) or flattened, in place. Returns ``weight_diff``."""
    fn = "conv2d_weight_grad"
    x, geo, group, out_hw = _conv_setup(fn, x, kernel, pad, stride, dilation, group)
    top_diff = float_input(fn, "top_diff", top_diff, 4)
    if not (isinstance(weight_diff, np.ndarray) and weight_diff.dtype == np.float32
            and weight_diff.flags.c_contiguous and weight_diff.flags.writeable):
        raise KernelArgumentError(f"{fn}: weight_diff must be a writeable C-contiguous float32 array")
    w = _weights(fn, "weight_diff", weight_diff, x, geo[:2], group, rows=top_diff.shape[1])
    if top_diff.shape != (x.shape[0], w.shape[0]) + tuple(out_hw):
        raise KernelArgumentError(f"{fn}: top_diff must have shape {(x.shape[0], w.shape[0]) + tuple(out_hw)}, "
                                  f"got {top_diff.shape}")
    for name, a in (("x", x), ("top_diff", top_diff)):
        if np.may_share_memory(weight_diff, a):
            raise KernelArgumentError(f"{fn}: weight_diff must not overlap {name}")
    _gemm.conv_weight_grad(x, top_diff, *geo, group, w, _threads(top_diff.size * w.shape[1]), WEIGHT_GRAD_BLOCK)
    return weight_diff


def conv2d_column_grad(weights, top_diff, group=1, out=None):
    """The column matrix of Caffe's Convolution bottom gradient, ``out`` (C*kh*kw, N*OH*OW) with
    group g's rows ``weights_g^T . top_diff_g`` (fold it with ``col2im_batch``); ``weights`` (M,
    C/group, kh, kw), ``top_diff`` (N, M, OH, OW). Returns ``out``."""
    fn = "conv2d_column_grad"
    weights = float_input(fn, "weights", weights, None)
    top_diff = float_input(fn, "top_diff", top_diff, 4)
    group = positive_int(fn, "group", group)
    if weights.ndim < 2 or weights.shape[0] != top_diff.shape[1] or weights.shape[0] % group:
        raise KernelArgumentError(f"{fn}: weights {weights.shape} must have the {top_diff.shape[1]} output "
                                  f"channels of top_diff, a multiple of group {group}")
    w = weights.reshape(weights.shape[0], -1)
    n, _, oh, ow = top_diff.shape
    col = output_array(fn, "out", out, (w.shape[1] * group, n * oh * ow), [w, top_diff])
    _gemm.conv_column_grad(w, top_diff, group, col, _threads(col.size * (w.shape[0] // group)))
    return col


#: The flipped convolution of :func:`conv2d_input_grad` runs over every input position, taps in the
#: padding included; above this many input positions per output position the column path (column
#: gradient + col2im) does less work.
INPUT_GRAD_MAX_GROWTH = 1.25


def input_grad_applies(pad, stride, dilation, kernel, in_hw=None, out_hw=None):
    """Whether :func:`conv2d_input_grad` handles this geometry: stride 1 and a pad no larger than the
    dilated kernel's reach ((kernel - 1) * dilation) on both axes; given the input and output
    extents, also whether it is the cheaper way (:data:`INPUT_GRAD_MAX_GROWTH`)."""
    if not all(st == 1 and 0 <= p <= (k - 1) * d for p, st, d, k in zip(pad, stride, dilation, kernel)):
        return False
    return in_hw is None or in_hw[0] * in_hw[1] <= INPUT_GRAD_MAX_GROWTH * out_hw[0] * out_hw[1]


def conv2d_input_grad(weights, top_diff, kernel, pad=0, dilation=1, group=1, out=None):
    """The bottom gradient of a stride-1 Caffe Convolution, ``out`` (N, C, H, W) = col2im(W_g^T .
    top_diff_g) per group, computed as the convolution of ``top_diff`` (padded by (k-1)*dilation -
    pad) with the weights flipped in space and transposed: no column matrix, no col2im. ``weights``
    (M, C/group, kh, kw); ``out`` is required (its shape gives H, W and C) and overwritten."""
    fn = "conv2d_input_grad"
    top_diff = float_input(fn, "top_diff", top_diff, 4)
    if not isinstance(out, np.ndarray) or out.ndim != 4:
        raise KernelArgumentError(f"{fn}: out must be the 4-D bottom diff array (N, C, H, W)")
    n, c, h, w = out.shape
    kernel, pad, _, dilation, out_hw = conv_geometry(fn, (h, w), kernel, pad, 1, dilation)
    if not input_grad_applies(pad, (1, 1), dilation, kernel):
        raise KernelArgumentError(f"{fn}: pad {pad} exceeds the dilated kernel reach")
    group = positive_int(fn, "group", group)
    if c % group:
        raise KernelArgumentError(f"{fn}: group {group} must divide the {c} input channels")
    weights = float_input(fn, "weights", weights, None)
    k = c // group * kernel[0] * kernel[1]
    if weights.ndim < 2 or weights.size != weights.shape[0] * k or weights.shape[0] % group:
        raise KernelArgumentError(f"{fn}: weights {weights.shape} do not fit {c} channels, kernel {kernel}, "
                                  f"group {group}")
    if top_diff.shape != (n, weights.shape[0]) + tuple(out_hw):
        raise KernelArgumentError(f"{fn}: top_diff must have shape {(n, weights.shape[0]) + tuple(out_hw)}, "
                                  f"got {top_diff.shape}")
    out = output_array(fn, "out", out, (n, c, h, w), [weights, top_diff])
    _gemm.conv_input_grad(weights.reshape(-1, k), top_diff, *kernel, *pad, *dilation, group, out,
                          _threads(out.size * weights.shape[0] // group * kernel[0] * kernel[1]))
    return out
