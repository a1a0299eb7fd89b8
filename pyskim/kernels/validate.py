"""The argument checks shared by every wrapper over the compiled kernels (:mod:`.dense`, :mod:`.csr`,
:mod:`.sparse`).

The compiled kernels index in 32 bits and trust their arguments, so each wrapper checks them here
first (rank, shape, dtype, contiguity, geometry, 32-bit spans, sizes over the blob limit) and
raises :class:`KernelArgumentError` (a ``ValueError``) naming the function and the argument.
Inputs are converted with ``np.ascontiguousarray(x, dtype=np.float32)``; ``out=`` arrays are never
copied, so they must already have the exact shape, dtype and layout and must not overlap an input.
The checks take fast paths for the common argument types: layers call the wrappers on every pass.
"""
import math
import numbers

import numpy as np

from ..core.blob import check_allocation
from ..errors import KernelArgumentError

__all__ = [
    "INT_MAX",
    "KernelArgumentError",
    "check_span",
    "conv_geometry",
    "conv_out_size",
    "conv_output_shape",
    "finite",
    "flag",
    "float_input",
    "int_tuple",
    "output_array",
    "positive_int",
    "scalar_ints",
]

#: The largest index, extent or element count the compiled kernels accept (int32).
INT_MAX = 2**31 - 1

_INTEGRAL = (numbers.Integral, np.integer)


def _is_int(value):
    return isinstance(value, _INTEGRAL) and not isinstance(value, (bool, np.bool_))


def int_tuple(fn, name, value, n, minimum):
    """``value`` (an int, or a sequence of ``n`` ints) as a tuple of ``n`` Python ints, each at least
    ``minimum`` and at most :data:`INT_MAX` (the kernels' ``int`` arguments)."""
    kind = type(value)
    if kind is int:
        values = (value,) * n
    elif kind is tuple and len(value) == n and all(type(v) is int for v in value):
        values = value
    elif _is_int(value):
        values = (int(value),) * n
    else:
        try:
            values = tuple(value)
        except TypeError:
            raise KernelArgumentError(f"{fn}: {name} must be an int or a sequence of {n} ints, "
                                      f"got {value!r}") from None
        if len(values) != n or not all(_is_int(v) for v in values):
            raise KernelArgumentError(f"{fn}: {name} must be an int or a sequence of {n} ints, got {value!r}")
        values = tuple(int(v) for v in values)
    for v in values:
        if v < minimum:
            what = "positive" if minimum == 1 else "non-negative"
            raise KernelArgumentError(f"{fn}: {name} must be {what}, got {value!r}")
        if v > INT_MAX:
            raise KernelArgumentError(f"{fn}: {name} is too large: {value!r}")
    return values


def scalar_ints(fn, *triples):
    """Validate ``(name, value, minimum)`` triples, each a single int (see :func:`int_tuple`);
    returns the values in order."""
    return tuple(int_tuple(fn, name, value, 1, minimum)[0] for name, value, minimum in triples)


def positive_int(fn, name, value, maximum=INT_MAX):
    """``value`` as a Python int in [1, ``maximum``] (bools refused)."""
    if not _is_int(value) or not 1 <= value <= maximum:
        raise KernelArgumentError(f"{fn}: {name} must be an int in [1, {maximum}], got {value!r}")
    return int(value)


def flag(fn, name, value):
    """``value`` as a bool; anything but ``bool`` / ``np.bool_`` is refused."""
    if not isinstance(value, (bool, np.bool_)):
        raise KernelArgumentError(f"{fn}: {name} must be a bool, got {value!r}")
    return bool(value)


def finite(fn, **values):
    """Refuse any of ``values`` that is not a finite number once rounded to float32."""
    for name, v in values.items():
        if not np.isfinite(np.float32(v)):
            raise KernelArgumentError(f"{fn}: {name} must be a finite number, got {v!r}")


def float_input(fn, name, x, ndim):
    """``x`` as a C-contiguous float32 array of rank ``ndim`` (any rank for None). A real numeric
    array of another dtype or layout is converted (after checking the copy against the blob limit);
    anything else, or more than :data:`INT_MAX` elements, is refused."""
    ready = type(x) is np.ndarray and x.dtype == np.float32 and x.flags.c_contiguous
    a = x if ready else _real_array(fn, name, x)
    if ndim is not None and a.ndim != ndim:
        raise KernelArgumentError(f"{fn}: {name} must be {ndim}-D, got shape {a.shape}")
    if a.size > INT_MAX:                        # checked before a converted copy is made
        raise KernelArgumentError(f"{fn}: {name} has too many elements ({a.size})")
    if not ready and not (a.dtype == np.float32 and a.flags.c_contiguous):
        check_allocation(a.shape, f"{fn}: float32 copy of {name}", error=KernelArgumentError)
    return np.ascontiguousarray(a, dtype=np.float32)


def bias_input(fn, bias, n):
    """``bias`` as a float32 (n,) array, or None (no bias)."""
    if bias is None or (type(bias) is np.ndarray and bias.shape == (n,) and bias.dtype == np.float32
                        and bias.flags.c_contiguous):
        return bias
    b = float_input(fn, "bias", bias, 1)
    if b.shape != (n,):
        raise KernelArgumentError(f"{fn}: bias must have shape ({n},), got {b.shape}")
    return b


def _real_array(fn, name, x):
    """``np.asarray(x)``, refused unless it holds real numbers (float, signed or unsigned int)."""
    try:
        a = np.asarray(x)
    except (TypeError, ValueError) as e:
        raise KernelArgumentError(f"{fn}: {name} is not an array: {e}") from None
    if a.dtype.kind not in "fiu":
        raise KernelArgumentError(f"{fn}: {name} must be a real numeric array (float32 preferred), "
                                  f"got dtype {a.dtype}")
    return a


def output_array(fn, name, out, shape, inputs, dtype=np.float32):
    """A fresh array of ``shape`` when ``out`` is None, else ``out`` checked: a numpy array of exactly
    this shape and dtype, C-contiguous, writeable, sharing no memory with ``inputs`` (None entries
    are skipped). Empty or oversized shapes are refused before anything is allocated."""
    ready = (type(out) is np.ndarray and out.shape == shape and out.dtype == dtype and 0 < out.size <= INT_MAX
             and out.flags.c_contiguous and out.flags.writeable)        # the common case, checked cheaply
    if not ready:
        shape = tuple(map(int, shape))
        if min(shape, default=1) <= 0:
            raise KernelArgumentError(f"{fn}: {name} would have an empty shape {shape}")
        size = math.prod(shape)
        if size > INT_MAX:
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
        if x is not None and np.may_share_memory(out, x):
            raise KernelArgumentError(f"{fn}: {name} must not overlap an input array")
    return out


def check_span(fn, sizes, kernel, pad, stride, dilation):
    """Refuse a geometry whose padded extent or output index arithmetic overflows int32 (the
    kernels compute ``size + 2*pad``, window ends and strided starts in 32 bits)."""
    for s, k, p, st, d in zip(sizes, kernel, pad, stride, dilation):
        if s + 2 * p + st + d * (k - 1) + 1 > INT_MAX:
            raise KernelArgumentError(f"{fn}: geometry too large for 32-bit indexing")


def conv_out_size(size, kernel, pad, stride, dilation):
    """Caffe's convolution output extent ``(size + 2*pad - (dilation*(kernel-1) + 1)) // stride + 1``
    (may be <= 0 when the kernel does not fit)."""
    return (size + 2 * pad - (dilation * (kernel - 1) + 1)) // stride + 1


def conv_output_shape(fn, sizes, kernel, pad, stride, dilation):
    """Caffe's output extent along every spatial axis of already validated geometry; refused
    unless every extent is positive (the kernel, dilated, must fit the padded input)."""
    out = tuple(conv_out_size(*axis) for axis in zip(sizes, kernel, pad, stride, dilation))
    if min(out) <= 0:
        raise KernelArgumentError(f"{fn}: kernel {tuple(kernel)} (dilation {tuple(dilation)}) does not fit "
                                  f"input {tuple(sizes)} with pad {tuple(pad)}")
    return out


def conv_geometry(fn, spatial, kernel, pad, stride, dilation):
    """Validate convolution geometry for an input of ``spatial`` extents: ``kernel``, ``pad``,
    ``stride`` and ``dilation`` as tuples of one int per axis (an int applies to all), the 32-bit
    span check and the output extents. Returns ``(kernel, pad, stride, dilation, out)``."""
    n = len(spatial)
    kernel = int_tuple(fn, "kernel", kernel, n, 1)
    pad = int_tuple(fn, "pad", pad, n, 0)
    stride = int_tuple(fn, "stride", stride, n, 1)
    dilation = int_tuple(fn, "dilation", dilation, n, 1)
    if min(spatial) <= 0:
        raise KernelArgumentError(f"{fn}: spatial size must be positive, got {tuple(spatial)}")
    check_span(fn, spatial, kernel, pad, stride, dilation)
    return kernel, pad, stride, dilation, conv_output_shape(fn, spatial, kernel, pad, stride, dilation)
