"""Per-op converters of :mod:`pyskim.convert.onnx_import`: each turns one ONNX node into Caffe layers.

A converter gets the importer ``b`` (tensor -> blob names, constants, inferred shapes, layer creation)
and a :class:`NodeContext` ``c`` (the node, its attributes, its layer name) and adds layers through
``b.layer``. Every attribute a converter does not read, and every value it cannot express, makes the
import fail with a ConversionError naming the node, the op and the attribute (or input). How ONNX and
Caffe semantics are matched:

* Conv / ConvTranspose -> Convolution / Deconvolution (group, dilation, N-D). Caffe pads both ends of
  an axis alike: ONNX pads ``(begin, end)`` map to ``pad = begin`` when the output size stays ONNX's
  (the windows then start at the same places; an unused end pad is dropped), else they are refused.
  ``auto_pad`` SAME_UPPER / SAME_LOWER / VALID are resolved to pads first (Conv only).
* MaxPool / AveragePool -> Pooling, 2-D. ONNX's output size (``ceil_mode``; in ceil mode a window
  that would start in the end padding is dropped, as onnxruntime, PyTorch and Caffe do) must equal
  Caffe's with ``round_mode`` FLOOR or CEIL; AVE must divide every window by the same count as
  ``count_include_pad`` does (Caffe counts the padding up to ``pad`` past the image), checked per
  output position; anything else is refused. GlobalAveragePool / GlobalMaxPool -> global Pooling.
* Gemm -> InnerProduct (``alpha`` folded into the weights, ``beta`` into the bias; ``transA`` refused);
  MatMul with a constant matrix -> InnerProduct over the last axis, and a following Add of a constant
  vector becomes its bias. An Add of a per-channel constant after a Convolution is folded the same way.
* BatchNormalization -> BatchNorm (global statistics, ``momentum`` as ``moving_average_fraction``) +
  Scale, or, with ``fold_batchnorm``, folded into the weights and bias of the Convolution /
  InnerProduct before it when nothing else reads that layer's output; with ``fold_batchnorm`` a Mul
  by a per-channel constant there (a BatchNorm's scale as pyskim's own export writes it) is folded
  too. Folding multiplies each output channel's weights by one number: pruned zeros stay zero.
* Add / Sub / Mul / Max / Sum of computed tensors of one shape -> Eltwise (Sub: coefficients 1, -1);
  with a constant operand: a scalar -> Power, a broadcast block -> Bias / Scale (``axis``,
  ``num_axes``). Broadcasting between two computed tensors is refused.
* Relu, LeakyRelu -> ReLU; PRelu -> PReLU (one slope per channel, or one for all); Sigmoid; Tanh ->
  TanH; Clip -> Clip (pyskim registers Caffe 1.0's Clip layer; ReLU6 is Clip 0..6; a missing bound is
  +-FLT_MAX, and Clip with only ``min`` 0 is a ReLU); Dropout -> Dropout (the identity in TEST);
  Identity -> nothing (or a Split when it names a graph output).
* Concat; Flatten and Reshape -> Flatten when the result is ``(N, rest)``, else Reshape (ONNX's 0 and -1
  mean what Caffe's do; ``allowzero`` with a 0 is refused); Softmax over one axis (before opset 13 only
  where ONNX's 2-D coercion is that).
"""
import math

import numpy as np

from ..errors import ConversionError
from ..layers.pooling import pooled_extent
from ..proto import caffe_pb2

_POOL = caffe_pb2.PoolingParameter
_ELTWISE = caffe_pb2.EltwiseParameter
F32 = np.float32
FLT_MAX = float(np.finfo(F32).max)
#: Layer types whose single top may take the bias or batch-norm factors of the node after them.
FOLD_TARGETS = ("Convolution", "Deconvolution", "InnerProduct")

CONVERTERS = {}


def converts(*ops):
    """Register the decorated function as the converter of the ONNX ops ``ops``."""
    def decorate(fn):
        CONVERTERS.update(dict.fromkeys(ops, fn))
        return fn
    return decorate


class NodeContext:
    """One ONNX node being converted: its attributes (the ones a converter reads are recorded), its
    inputs and outputs, the model's opset and the Caffe layer name chosen for it."""

    def __init__(self, node, attrs, opset, name):
        self.node, self.op, self.attrs, self.opset, self.name = node, node.op_type, attrs, opset, name
        self.read = set()

    def attr(self, key, default=None):
        self.read.add(key)
        return self.attrs.get(key, default)

    def input(self, i):
        """Name of input ``i``, or None when it is absent (an optional input)."""
        return self.node.input[i] if i < len(self.node.input) and self.node.input[i] else None

    @property
    def output(self):
        return self.node.output[0]

    def fail(self, reason, attribute=None, value=None, input_name=None):
        """A ConversionError naming the node, the op and (when given) the attribute or input."""
        where = f"ONNX node '{self.node.name or self.name}' (op {self.op})"
        if attribute is not None:
            where += f", attribute '{attribute}'" + ("" if value is None else f" = {_show(value)}")
        elif input_name is not None:
            where += f", input '{input_name}'"
        return ConversionError(f"{where}: cannot import: {reason}")


def _show(value):
    if isinstance(value, (list, tuple)):
        return str([_show(v) for v in value]).replace("'", "")
    return repr(value)


def _scalar(c, value, input_name):
    """The one number held by a constant input (any shape of size 1)."""
    if value.size != 1:
        raise c.fail(f"expected one value, got shape {list(value.shape)}", input_name=input_name)
    return float(value.reshape(-1)[0])


def _ints(c, key, default):
    return [int(v) for v in c.attr(key, default)]


def _axis(c, axis, rank, key="axis"):
    if not -rank <= axis < rank:
        raise c.fail(f"out of range for a tensor of rank {rank}", key, axis)
    return axis % rank


def _same_or_list(values):
    """Caffe's repeated geometry fields: one value when all axes agree."""
    return [values[0]] if len(set(values)) == 1 else list(values)


def _explicit_pads(c, in_spatial, extents, strides):
    """(begin, end) pads per spatial axis from ``pads`` or ``auto_pad`` (ONNX's SAME rule: the output
    is ceil(in / stride), the odd pad at the end for SAME_UPPER, at the beginning for SAME_LOWER)."""
    n = len(in_spatial)
    auto = c.attr("auto_pad", "NOTSET")
    pads = _ints(c, "pads", [0] * 2 * n)
    if auto in ("NOTSET", ""):
        return pads[:n], pads[n:]
    if auto == "VALID":
        return [0] * n, [0] * n
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise c.fail("unknown auto_pad value", "auto_pad", auto)
    begin, end = [], []
    for size, extent, stride in zip(in_spatial, extents, strides):
        total = max((-(-size // stride) - 1) * stride + extent - size, 0)
        first = total // 2 if auto == "SAME_UPPER" else total - total // 2
        begin.append(first)
        end.append(total - first)
    return begin, end


# --- convolution and inner product ----------------------------------------------------------------

@converts("Conv", "ConvTranspose")
def _convolution(b, c):
    """Conv / ConvTranspose -> Convolution / Deconvolution with Caffe's symmetric pads (module doc)."""
    transpose = c.op == "ConvTranspose"
    weights = b.const(c, 1, "W")
    in_shape, out_shape = b.shape(c.input(0)), b.shape(c.output)
    spatial = len(in_shape) - 2
    if spatial < 1 or weights.ndim != len(in_shape):
        raise c.fail(f"input of shape {list(in_shape)} with weights of shape {list(weights.shape)}",
                     input_name="W")
    kernel = _ints(c, "kernel_shape", weights.shape[2:])
    if tuple(kernel) != weights.shape[2:]:
        raise c.fail(f"the weights have spatial shape {list(weights.shape[2:])}", "kernel_shape", kernel)
    strides, dilations = _ints(c, "strides", [1] * spatial), _ints(c, "dilations", [1] * spatial)
    group = int(c.attr("group", 1))
    extents = [d * (k - 1) + 1 for k, d in zip(kernel, dilations)]
    if transpose:
        if c.attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            raise c.fail("give ConvTranspose explicit pads", "auto_pad", c.attrs["auto_pad"])
        if c.attr("output_shape") is not None:
            raise c.fail("give ConvTranspose pads and output_padding instead", "output_shape",
                         c.attrs["output_shape"])
        c.attr("output_padding")    # its effect is in ONNX's output shape, checked below
        begin, _ = _explicit_pads(c, in_shape[2:], extents, strides)
        caffe_out = [s * (size - 1) + e - 2 * p
                     for size, s, e, p in zip(in_shape[2:], strides, extents, begin)]
        num_output = weights.shape[1] * group
    else:
        begin, _ = _explicit_pads(c, in_shape[2:], extents, strides)
        caffe_out = [(size + 2 * p - e) // s + 1
                     for size, s, e, p in zip(in_shape[2:], strides, extents, begin)]
        num_output = weights.shape[0]
    if caffe_out != list(out_shape[2:]):
        key = "pads" if "pads" in c.attrs else "auto_pad" if "auto_pad" in c.attrs else "output_padding"
        raise c.fail(f"Caffe pads both ends of an axis alike (pad = the begin pads {begin}): its output "
                     f"{caffe_out} would differ from ONNX's {list(out_shape[2:])}", key, c.attrs.get(key))
    blobs = [weights]
    if c.input(2):
        blobs.append(b.const(c, 2, "B"))
    layer = b.layer(c, "Deconvolution" if transpose else "Convolution", [c.input(0)], [c.output], blobs)
    cp = layer.convolution_param
    cp.num_output, cp.bias_term = num_output, len(blobs) == 2
    cp.kernel_size.extend(_same_or_list(kernel))
    if any(begin):
        cp.pad.extend(_same_or_list(begin))
    if any(s != 1 for s in strides):
        cp.stride.extend(_same_or_list(strides))
    if any(d != 1 for d in dilations):
        cp.dilation.extend(_same_or_list(dilations))
    if group != 1:
        cp.group = group


def _inner_product(b, c, weights, bias, axis):
    layer = b.layer(c, "InnerProduct", [c.input(0)], [c.output],
                    [weights] if bias is None else [weights, bias])
    p = layer.inner_product_param
    p.num_output, p.bias_term = weights.shape[0], bias is not None
    if axis != 1:
        p.axis = axis


@converts("Gemm")
def _gemm(b, c):
    """Gemm(A, B, C) with constant B (and C) -> InnerProduct: weights alpha * B (as N x K), bias beta * C."""
    if c.attr("transA", 0):
        raise c.fail("InnerProduct cannot transpose its input", "transA", c.attrs["transA"])
    if len(b.shape(c.input(0))) != 2:
        raise c.fail("Gemm takes a matrix", input_name="A")
    matrix = b.const(c, 1, "B")
    weights = (matrix if c.attr("transB", 0) else matrix.T) * F32(c.attr("alpha", 1.0))
    bias = None
    if c.input(2):
        offset = b.const(c, 2, "C")
        n = weights.shape[0]
        if offset.size not in (1, n) or (offset.ndim and offset.shape[-1] != offset.size):
            raise c.fail(f"shape {list(offset.shape)}: InnerProduct adds one bias per output ({n})",
                         input_name="C")
        bias = np.broadcast_to(offset.reshape(-1), (n,)) * F32(c.attr("beta", 1.0))
    _inner_product(b, c, np.ascontiguousarray(weights, F32), bias, 1)


@converts("MatMul")
def _matmul(b, c):
    """MatMul(X, W) with a constant 2-D W -> InnerProduct over X's last axis (weights W transposed)."""
    matrix = b.const(c, 1, "B")
    rank = len(b.shape(c.input(0)))
    if matrix.ndim != 2 or rank < 2:
        raise c.fail(f"InnerProduct needs a constant matrix and an input of rank >= 2 (got "
                     f"{list(matrix.shape)} and rank {rank})", input_name="B")
    _inner_product(b, c, np.ascontiguousarray(matrix.T, F32), None, rank - 1)


def _scale_outputs(param, weights, factor):
    """``weights`` of a Convolution / Deconvolution / InnerProduct layer with output channel ``o``
    multiplied by ``factor[o]`` (a Deconvolution's outputs are axis 1 of each group's block)."""
    tail = [1] * (weights.ndim - 2)
    if param.type != "Deconvolution":
        return weights * factor.reshape(-1, 1, *tail)
    group = param.convolution_param.group
    blocks = weights.reshape(group, weights.shape[0] // group, *weights.shape[1:])
    return (blocks * factor.reshape(group, 1, -1, *tail)).reshape(weights.shape)


# --- normalization --------------------------------------------------------------------------------

@converts("BatchNormalization")
def _batch_norm(b, c):
    """Inference BatchNormalization -> folded into the previous layer (``fold_batchnorm``) or BatchNorm
    (mean, variance, scale factor 1) + Scale (gamma, beta)."""
    if c.attr("training_mode", 0):
        raise c.fail("only inference batch normalization is imported", "training_mode",
                     c.attrs["training_mode"])
    gamma, beta, mean, var = (b.const(c, i, label) for i, label in ((1, "scale"), (2, "B"), (3, "input_mean"),
                                                                    (4, "input_var")))
    eps, momentum = F32(c.attr("epsilon", 1e-5)), F32(c.attr("momentum", 0.9))
    x = c.input(0)
    factor = gamma / np.sqrt(var + eps)
    channels = factor.reshape(-1, *[1] * (len(b.shape(x)) - 2))
    target = _output_channel_layer(b, x, channels) if b.fold_batchnorm else None
    if target is not None:
        old_bias = target.arrays[1] if len(target.arrays) > 1 else np.zeros_like(mean)
        b.fold_into(c, target, [_scale_outputs(target.param, target.arrays[0], factor),
                                (old_bias - mean) * factor + beta], c.output)
        return
    norm = b.layer(c, "BatchNorm", [x], [c.output], [mean, var, np.ones(1, F32)], in_place=True)
    norm.batch_norm_param.eps = eps
    norm.batch_norm_param.moving_average_fraction = momentum
    scale = b.layer(c, "Scale", [c.output], [c.output], [gamma, beta], suffix="scale", in_place=True)
    scale.scale_param.bias_term = True


# --- elementwise ----------------------------------------------------------------------------------

def _broadcast_block(const_shape, shape):
    """Where a constant of ``const_shape`` broadcasts over a tensor of ``shape`` without enlarging it:
    ``(axis, block)`` with ``block`` the constant's dims from ``axis`` on (its other dims are 1), ``(0, ())``
    for a single value, or None when Caffe's Bias / Scale cannot express the broadcast (a 1 inside
    the block against a longer axis, or a dim that is neither 1 nor the tensor's)."""
    if len(const_shape) > len(shape):
        return None
    dims = [1] * (len(shape) - len(const_shape)) + list(const_shape)
    kept = [i for i, d in enumerate(dims) if d != 1]
    if not kept:
        return 0, ()
    first, last = kept[0], kept[-1]
    if any(dims[i] != shape[i] for i in range(first, last + 1)):
        return None
    return first, tuple(dims[first:last + 1])


def _output_channel_layer(b, x, value):
    """The layer computing ``x`` when it may absorb ``value``: one number per output channel of that
    Convolution / Deconvolution / InnerProduct, broadcast over ``x``; else None."""
    target = b.producer(x)
    if target is None:
        return None
    shape = b.shape(x)
    axis = target.param.inner_product_param.axis if target.param.type == "InnerProduct" else 1
    block = _broadcast_block(value.shape, shape)
    if block is None or block[0] != axis % len(shape) or len(block[1]) != 1:
        return None
    return target


def _fold_constant(b, c, x, value, multiply):
    """Fold ``x + value`` into the bias, or ``x * value`` (with ``fold_batchnorm``: a BatchNorm's scale
    exported as Mul + Add) into the weights and bias, of the layer computing ``x``; True when done."""
    target = _output_channel_layer(b, x, value)
    if target is None or (multiply and not b.fold_batchnorm):
        return False
    per_channel = value.reshape(-1)
    weights, bias = target.arrays[0], target.arrays[1] if len(target.arrays) > 1 else None
    if multiply:
        arrays = [_scale_outputs(target.param, weights, per_channel)]
        arrays += [] if bias is None else [bias * per_channel]
    else:
        arrays = [weights, per_channel if bias is None else bias + per_channel]
    b.fold_into(c, target, arrays, c.output)
    return True


def _with_constant(b, c, x, value, multiply):
    """``x + value`` or ``x * value`` for a constant ``value``: folded into the layer before
    (:func:`_fold_constant`), a Power layer (one value) or a Bias / Scale layer holding the broadcast
    block."""
    if _fold_constant(b, c, x, value, multiply):
        return
    block = _broadcast_block(value.shape, b.shape(x))
    if block is None:
        raise c.fail(f"a constant of shape {list(value.shape)} does not broadcast over {list(b.shape(x))} as "
                     f"Caffe's {'Scale' if multiply else 'Bias'} does (one block of consecutive axes)",
                     input_name=c.node.input[1 if c.node.input[0] == x else 0])
    axis, dims = block
    if not dims:
        layer = b.layer(c, "Power", [x], [c.output])
        setattr(layer.power_param, "scale" if multiply else "shift", float(value.reshape(-1)[0]))
        return
    layer = b.layer(c, "Scale" if multiply else "Bias", [x], [c.output], [value.reshape(dims)])
    p = layer.scale_param if multiply else layer.bias_param
    p.axis, p.num_axes = axis, len(dims)


@converts("Add", "Sub", "Mul", "Div", "Max", "Sum")
def _elementwise(b, c):
    """Computed tensors of one shape -> Eltwise; one constant operand -> :func:`_with_constant`."""
    names = list(c.node.input)
    values = [b.maybe_const(name) for name in names]
    computed = [name for name, v in zip(names, values) if v is None]
    if len(computed) == len(names):
        _eltwise(b, c, names)
        return
    if len(names) != 2 or len(computed) != 1 or c.op in ("Max", "Sum"):
        raise c.fail(f"{c.op} with constant operands other than one of two", input_name=names[0])
    x = computed[0]
    value = values[1 - names.index(x)].astype(F32)
    constant_first = names[0] != x
    if c.op in ("Sub", "Div") and constant_first:
        if c.op == "Div" or value.size != 1:
            raise c.fail(f"{c.op} of a constant by a computed tensor has no Caffe layer", input_name=names[0])
        layer = b.layer(c, "Power", [x], [c.output])
        layer.power_param.scale, layer.power_param.shift = -1.0, float(value.reshape(-1)[0])
        return
    if c.op == "Sub":
        value = -value
    elif c.op == "Div":
        value = F32(1) / value
    _with_constant(b, c, x, value, multiply=c.op in ("Mul", "Div"))


def _eltwise(b, c, names):
    shapes = [b.shape(name) for name in names]
    if len(set(shapes + [b.shape(c.output)])) != 1:
        raise c.fail(f"Eltwise needs inputs of one shape, not broadcasting ({[list(s) for s in shapes]})",
                     input_name=names[-1])
    if c.op == "Div":
        raise c.fail("division of two computed tensors has no Caffe layer", input_name=names[1])
    if len(names) == 1:
        b.alias(c.output, names[0])
        return
    operation = {"Add": _ELTWISE.SUM, "Sum": _ELTWISE.SUM, "Sub": _ELTWISE.SUM, "Mul": _ELTWISE.PROD,
                 "Max": _ELTWISE.MAX}[c.op]
    p = b.layer(c, "Eltwise", names, [c.output]).eltwise_param
    p.operation = operation
    if c.op == "Sub":
        p.coeff.extend([1.0, -1.0])


# --- neurons --------------------------------------------------------------------------------------

_NEURONS = {"Relu": "ReLU", "Sigmoid": "Sigmoid", "Tanh": "TanH"}


@converts(*_NEURONS)
def _neuron(b, c):
    b.layer(c, _NEURONS[c.op], [c.input(0)], [c.output], in_place=True)


@converts("LeakyRelu")
def _leaky_relu(b, c):
    layer = b.layer(c, "ReLU", [c.input(0)], [c.output], in_place=True)
    layer.relu_param.negative_slope = float(c.attr("alpha", 0.01))


@converts("PRelu")
def _prelu(b, c):
    slope = b.const(c, 1, "slope")
    shape = b.shape(c.input(0))
    block = _broadcast_block(slope.shape, shape)
    if block is None or (block[1] and (block[0] != 1 or len(block[1]) != 1)) or len(shape) < 2:
        raise c.fail(f"slope of shape {list(slope.shape)} over {list(shape)}: Caffe's PReLU has one slope "
                     f"per channel (axis 1) or one for all", input_name="slope")
    layer = b.layer(c, "PReLU", [c.input(0)], [c.output], [slope.reshape(block[1])])
    layer.prelu_param.channel_shared = not block[1]


@converts("Clip")
def _clip(b, c):
    low, high = (b.const(c, i, label) if c.input(i) else None for i, label in ((1, "min"), (2, "max")))
    if low is not None and high is None and _scalar(c, low, "min") == 0:
        b.layer(c, "ReLU", [c.input(0)], [c.output], in_place=True)
        return
    p = b.layer(c, "Clip", [c.input(0)], [c.output]).clip_param
    p.min = -FLT_MAX if low is None else _scalar(c, low, "min")
    p.max = FLT_MAX if high is None else _scalar(c, high, "max")


@converts("Dropout")
def _dropout(b, c):
    """Dropout -> Dropout (ratio from the attribute before opset 12, the input after); identity in TEST."""
    if c.input(2) is not None and _scalar(c, b.const(c, 2, "training_mode"), "training_mode"):
        raise c.fail("a Dropout in training mode is not a fixed function", input_name="training_mode")
    c.attr("seed")
    ratio = _scalar(c, b.const(c, 1, "ratio"), "ratio") if c.input(1) else float(c.attr("ratio", 0.5))
    b.layer(c, "Dropout", [c.input(0)], [c.output], in_place=True).dropout_param.dropout_ratio = ratio


@converts("Identity")
def _identity(b, c):
    """Identity -> the same blob, or a Split that gives a graph output its name."""
    if b.is_graph_output(c.output):
        b.layer(c, "Split", [c.input(0)], [c.output])
    else:
        b.alias(c.output, c.input(0))


@converts("Softmax")
def _softmax(b, c):
    shape = b.shape(c.input(0))
    axis = _axis(c, int(c.attr("axis", 1 if c.opset < 13 else -1)), len(shape))
    if c.opset < 13 and math.prod(shape[axis + 1:]) != 1:
        raise c.fail(f"before opset 13 Softmax normalizes over all axes from {axis} on "
                     f"({list(shape[axis:])}); Caffe's over one", "axis", c.attrs.get("axis", 1))
    b.layer(c, "Softmax", [c.input(0)], [c.output]).softmax_param.axis = axis


# --- pooling --------------------------------------------------------------------------------------

def _onnx_pooled_extent(size, kernel, stride, begin, end, ceil):
    """ONNX's pooled size as onnxruntime computes it: floor or ceil of (S + pads - k) / s, plus one; in
    ceil mode a last window that would start in the end padding is dropped."""
    span = size + begin + end - kernel
    out = (-(-span // stride) if ceil else span // stride) + 1
    if ceil and (out - 1) * stride >= size + begin:
        out -= 1
    return out


def _divisors(size, kernel, stride, pad, end_limit, out, image_only):
    """Per-output window sizes of an average: the window clipped to [-pad, end_limit), or to the image
    [0, size) with ``image_only``."""
    starts = [i * stride - pad for i in range(out)]
    if image_only:
        return [min(s + kernel, size) - max(s, 0) for s in starts]
    return [min(s + kernel, end_limit) - s for s in starts]


@converts("MaxPool", "AveragePool")
def _pooling(b, c):
    """MaxPool / AveragePool -> Pooling with the round mode and pad that give ONNX's windows (module doc)."""
    in_shape, out_shape = b.shape(c.input(0)), b.shape(c.output)
    if len(in_shape) != 4:
        raise c.fail(f"Caffe pools 2-D images (input of shape {list(in_shape)})", "kernel_shape",
                     c.attrs.get("kernel_shape"))
    kernel, strides = _ints(c, "kernel_shape", []), _ints(c, "strides", [1, 1])
    if any(d != 1 for d in _ints(c, "dilations", [1, 1])):
        raise c.fail("Caffe's pooling has no dilation", "dilations", c.attrs["dilations"])
    if c.op == "MaxPool" and c.attr("storage_order", 0) and len(c.node.output) > 1:
        raise c.fail("column-major indices", "storage_order", c.attrs["storage_order"])
    ceil = bool(c.attr("ceil_mode", 0))
    begin, end = _explicit_pads(c, in_shape[2:], kernel, strides)
    onnx_out = [_onnx_pooled_extent(*g, ceil) for g in zip(in_shape[2:], kernel, strides, begin, end)]
    pad_key = "pads" if "pads" in c.attrs else "auto_pad"
    if onnx_out != list(out_shape[2:]):
        raise c.fail(f"ONNX's shape inference gives {list(out_shape[2:])}, onnxruntime {onnx_out} (a last "
                     f"window starting in the end padding); not imported", "ceil_mode", int(ceil))
    if any(p >= k for p, k in zip(begin, kernel)):
        raise c.fail(f"Caffe needs pads smaller than the kernel {kernel}", pad_key, c.attrs.get(pad_key))
    round_mode = _round_mode(c, in_shape[2:], kernel, strides, begin, onnx_out, pad_key)
    for size, k, s, p, out in zip(in_shape[2:], kernel, strides, begin, onnx_out):
        if (out - 1) * s - p >= size:
            raise c.fail("a pooling window lies wholly in the padding", pad_key, c.attrs.get(pad_key))
    if c.op == "AveragePool":
        include = bool(c.attr("count_include_pad", 0))
        for size, k, s, p, e, out in zip(in_shape[2:], kernel, strides, begin, end, onnx_out):
            onnx_divisors = _divisors(size, k, s, p, size + e, out, not include)
            if onnx_divisors != _divisors(size, k, s, p, size + p, out, False):
                raise c.fail(f"Caffe divides each window by its size clipped to pad {p} past the image; "
                             f"ONNX's divisors differ here", "count_include_pad", int(include))
    p = b.layer(c, "Pooling", [c.input(0)], [c.output]).pooling_param
    p.pool = _POOL.MAX if c.op == "MaxPool" else _POOL.AVE
    _set_hw(p, "kernel", "kernel_size", kernel)
    if strides != [1, 1]:
        _set_hw(p, "stride", "stride", strides)
    if any(begin):
        _set_hw(p, "pad", "pad", begin)
    if round_mode != _POOL.CEIL:
        p.round_mode = round_mode


def _round_mode(c, sizes, kernel, strides, pads, onnx_out, pad_key):
    """The round_mode under which Caffe's pooled size is ONNX's on both axes: CEIL, Caffe's default (so
    that the prototxt needs no ``round_mode``, which Caffe builds before 2017 and OpenCV's importer do
    not know; the windows are the same whenever the sizes are), else FLOOR."""
    for mode in (_POOL.CEIL, _POOL.FLOOR):
        caffe_out = [pooled_extent(c.name, *g, mode) for g in zip(sizes, kernel, strides, pads)]
        if caffe_out == onnx_out:
            return mode
    raise c.fail(f"no Caffe round_mode gives ONNX's output {onnx_out} with pad {pads} (Caffe pads both ends "
                 f"alike)", pad_key if any(pads) or pad_key in c.attrs else "ceil_mode",
                 c.attrs.get(pad_key, c.attr("ceil_mode", 0)))


def _set_hw(p, prefix, square, values):
    if values[0] == values[1]:
        setattr(p, square, values[0])
    else:
        setattr(p, f"{prefix}_h", values[0])
        setattr(p, f"{prefix}_w", values[1])


@converts("GlobalAveragePool", "GlobalMaxPool")
def _global_pooling(b, c):
    if len(b.shape(c.input(0))) != 4:
        raise c.fail("Caffe pools 2-D images", input_name="X")
    p = b.layer(c, "Pooling", [c.input(0)], [c.output]).pooling_param
    p.pool = _POOL.AVE if c.op == "GlobalAveragePool" else _POOL.MAX
    p.global_pooling = True


# --- shapes and plumbing --------------------------------------------------------------------------

@converts("Concat")
def _concat(b, c):
    axis = _axis(c, int(c.attr("axis")), len(b.shape(c.output)))
    b.layer(c, "Concat", list(c.node.input), [c.output]).concat_param.axis = axis


def _to_shape(b, c, dims):
    """A Flatten layer when the output is (N, rest), else a Reshape to ``dims`` (Caffe's Reshape reads
    0 as "copy this axis" and -1 as "infer it", as ONNX does)."""
    in_shape, out_shape = b.shape(c.input(0)), b.shape(c.output)
    if len(in_shape) >= 2 and out_shape == (in_shape[0], math.prod(in_shape[1:])):
        b.layer(c, "Flatten", [c.input(0)], [c.output])
        return
    b.layer(c, "Reshape", [c.input(0)], [c.output]).reshape_param.shape.dim.extend(int(d) for d in dims)


@converts("Flatten")
def _flatten(b, c):
    rank = len(b.shape(c.input(0)))
    axis = int(c.attr("axis", 1))
    if not -rank <= axis <= rank:
        raise c.fail(f"out of range for a tensor of rank {rank}", "axis", axis)
    axis %= rank + 1
    _to_shape(b, c, [1, -1] if axis == 0 else [-1, math.prod(b.shape(c.input(0))[axis:])])


@converts("Reshape")
def _reshape(b, c):
    """Reshape by a constant (or folded) shape -> Flatten or Reshape (0 and -1 as in Caffe)."""
    dims = [int(d) for d in b.const(c, 1, "shape").reshape(-1)]
    if c.attr("allowzero", 0) and 0 in dims:
        raise c.fail("a 0 that means an empty axis, not a copied one", "allowzero", c.attrs["allowzero"])
    _to_shape(b, c, dims)
