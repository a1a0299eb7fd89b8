"""Per-layer-type ONNX emitters for :mod:`pyskim.convert.onnx_export`.

Each emitter gets the GraphBuilder ``g`` and a LayerContext ``c`` (name, param, weights, input tensor
names ``c.x``, output tensor names ``c.y`` it must produce, static shapes) and adds ONNX nodes; a
fused layer hands each stage back to ``g.emit``.
Caffe semantics kept:

* Convolution / Deconvolution -> Conv / ConvTranspose (group, dilation, pad, stride; Caffe's floor
  output size is ONNX's with explicit pads; Caffe's deconvolution weights are ONNX's layout).
* Pooling: Caffe rounds up (``round_mode: CEIL``, the default) and drops a last window that would
  start in the right padding. Rather than ``ceil_mode`` (whose tail rule differs between ONNX versions),
  the exporter uses floor mode with an explicit end pad chosen so the output size is Caffe's (the input
  is cropped instead when Caffe's floor leaves rows unused). MAX ignores padding, as Caffe's clipped
  windows do. AVE divides by the window clipped to the image plus ``pad`` (not beyond): the input is
  zero-padded by ``pad`` with a Pad node, then AveragePool with ``count_include_pad = 0`` counts the
  padded zeros but not the extra end pad, which is exactly Caffe's divisor. A MAX mask top is the ONNX
  index taken modulo the plane, re-based to ``h * W + w``.
* LRN ACROSS_CHANNELS -> LRN (both scale alpha by 1/size and centre the window alike);
  WITHIN_CHANNEL -> x * (1 + alpha * avgpool(x^2))^-beta (``k`` unused, as in Caffe).
* BatchNorm (global stats) -> BatchNormalization with mean and variance divided by the stored scale
  factor ``blobs[2]`` (0 -> 0, as Caffe); with ``use_global_stats: false`` the batch's statistics are
  computed with ReduceMean nodes.
* InnerProduct -> Flatten(axis) + Gemm (transB unless ``transpose``) + Reshape to Caffe's top shape.
* Scale / Bias broadcast their operand from ``axis`` (a reshape to trailing ones).
* Fused SkimCaffe types (ConvolutionReLU, ConvolutionReLUPool, ConvolutionReLUPoolLRN, ReLUPooling,
  InnerProductReLUDropout) are expanded into their stages; MKL* and Winograd aliases export as their
  plain type.
* ArgMax uses TopK; on ties ONNX ranks the smaller index first, Caffe the larger one.
"""
import numpy as np

from ..layers.convolution import conv_geometry
from ..proto import caffe_pb2

_POOL = caffe_pb2.PoolingParameter
_ELTWISE = caffe_pb2.EltwiseParameter
_REDUCTION = caffe_pb2.ReductionParameter
F32 = np.float32

EMITTERS = {}
ALIASES = {"Winograd": "Convolution", "MKLConvolution": "Convolution", "MKLReLU": "ReLU",
           "MKLPooling": "Pooling", "MKLLRN": "LRN"}
FUSED = ("ConvolutionReLU", "ConvolutionReLUPool", "ConvolutionReLUPoolLRN", "ReLUPooling",
         "InnerProductReLUDropout")


def emits(*types):
    def decorate(fn):
        for t in types:
            EMITTERS[t] = fn
        return fn
    return decorate


def _axis(c, axis, ndim, field):
    if not -ndim <= axis < ndim:
        raise c.fail(f"{field} {axis} out of range for an input of {ndim} axes")
    return axis + ndim if axis < 0 else axis


def _chain(g, c, x, steps, y):
    """Apply ``steps`` [(op, [extra inputs], attrs)] in turn to ``x``; the last one writes ``y``."""
    if not steps:
        return g.node(c.name, "Identity", [x], [y])[0]
    for i, (op, extra, attrs) in enumerate(steps):
        x = g.node(c.name, op, [x] + list(extra), [y] if i == len(steps) - 1 else 1, **attrs)[0]
    return x


def _scalar(g, c, what, value):
    return g.const(f"{c.name}/{what}", np.asarray(value, F32))


def _operand_shape(c, shape, axis_param, ndim):
    """Shape of a Scale/Bias operand broadcast from ``axis`` over an input of ``ndim`` axes."""
    if len(shape) == 0:
        return ()
    axis = _axis(c, axis_param, ndim, "axis")
    return tuple(shape) + (1,) * (ndim - axis - len(shape))


# --- plain wiring ---------------------------------------------------------------------------------

@emits("Split", "Dropout")
def _identity(g, c):
    """Split copies its bottom to every top; Dropout is the identity in TEST."""
    for y in c.y:
        g.node(c.name, "Identity", [c.x[0]], [y])


@emits("Silence", "Input")
def _nothing(g, c):
    """Silence only consumes its bottoms; Input tops are the graph's inputs."""


@emits("Parameter")
def _parameter(g, c):
    g.node(c.name, "Identity", [g.const(f"{c.name}/param", c.blobs[0])], [c.y[0]])


@emits("Flatten", "Reshape")
def _reshape(g, c):
    g.node(c.name, "Reshape", [c.x[0], g.ints(f"{c.name}/shape", c.out_shapes[0])], [c.y[0]])


@emits("Concat")
def _concat(g, c):
    if len(c.x) == 1:
        g.node(c.name, "Identity", c.x, c.y)
    else:
        g.node(c.name, "Concat", c.x, c.y, axis=int(c.layer.axis))


@emits("Slice")
def _slice(g, c):
    if len(c.y) == 1:
        g.node(c.name, "Identity", c.x, c.y)
        return
    bounds = c.layer.bounds
    sizes = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
    g.node(c.name, "Split", [c.x[0], g.ints(f"{c.name}/split", sizes)], c.y, axis=int(c.layer.axis))


@emits("Crop")
def _crop(g, c):
    index = c.layer.index
    axes = [i for i, s in enumerate(index) if s.start != 0 or s.stop != c.in_shapes[0][i]]
    if not axes:
        g.node(c.name, "Identity", [c.x[0]], c.y)
        return
    starts = g.ints(f"{c.name}/starts", [index[i].start for i in axes])
    ends = g.ints(f"{c.name}/ends", [index[i].stop for i in axes])
    g.node(c.name, "Slice", [c.x[0], starts, ends, g.ints(f"{c.name}/axes", axes)], c.y)


@emits("Tile")
def _tile(g, c):
    ndim = len(c.in_shapes[0])
    repeats = [1] * ndim
    repeats[_axis(c, c.param.tile_param.axis, ndim, "tile_param.axis")] = c.param.tile_param.tiles
    g.node(c.name, "Tile", [c.x[0], g.ints(f"{c.name}/repeats", repeats)], c.y)


@emits("Eltwise")
def _eltwise(g, c):
    op = c.param.eltwise_param.operation
    if op == _ELTWISE.SUM:
        coeffs = list(c.param.eltwise_param.coeff) or [1.0] * len(c.x)
        terms = [x if F32(k) == 1 else g.node(c.name, "Mul", [x, _scalar(g, c, f"coeff{i}", k)], 1)[0]
                 for i, (x, k) in enumerate(zip(c.x, coeffs))]
        g.node(c.name, "Sum", terms, c.y)
    elif op == _ELTWISE.PROD:
        product = c.x[0]
        for i, x in enumerate(c.x[1:], start=1):
            product = g.node(c.name, "Mul", [product, x], c.y if i == len(c.x) - 1 else 1)[0]
    elif op == _ELTWISE.MAX:
        g.node(c.name, "Max", c.x, c.y)
    else:
        raise c.fail(f"unknown eltwise operation {op}")


# --- neurons --------------------------------------------------------------------------------------

@emits("ReLU")
def _relu(g, c):
    slope = F32(c.param.relu_param.negative_slope)
    if slope == 0:
        g.node(c.name, "Relu", c.x, c.y)
    else:
        g.node(c.name, "LeakyRelu", c.x, c.y, alpha=float(slope))


_SIMPLE = {"Sigmoid": "Sigmoid", "TanH": "Tanh", "AbsVal": "Abs", "BNLL": "Softplus"}


@emits(*_SIMPLE)
def _simple(g, c):
    g.node(c.name, _SIMPLE[c.type], c.x, c.y)


@emits("ELU")
def _elu(g, c):
    g.node(c.name, "Elu", c.x, c.y, alpha=float(c.param.elu_param.alpha))


@emits("PReLU")
def _prelu(g, c):
    ndim = len(c.in_shapes[0])
    if ndim < 2:
        raise c.fail("PReLU needs an input with a channel axis (at least 2 axes)")
    slope = c.blobs[0].reshape(-1)
    if len(slope) > 1:
        slope = slope.reshape((len(slope),) + (1,) * (ndim - 2))
    g.node(c.name, "PRelu", [c.x[0], g.const(f"{c.name}/slope", slope)], c.y)


@emits("Threshold")
def _threshold(g, c):
    above = g.node(c.name, "Greater", [c.x[0], _scalar(g, c, "threshold", c.param.threshold_param.threshold)], 1)
    g.node(c.name, "Cast", above, c.y, to=1)


@emits("Clip")
def _clip(g, c):
    p = c.param.clip_param
    g.node(c.name, "Clip", [c.x[0], _scalar(g, c, "min", p.min), _scalar(g, c, "max", p.max)], c.y)


@emits("Swish")
def _swish(g, c):
    beta = F32(c.param.swish_param.beta)
    x = c.x[0]
    scaled = x if beta == 1 else g.node(c.name, "Mul", [x, _scalar(g, c, "beta", beta)], 1)[0]
    gate = g.node(c.name, "Sigmoid", [scaled], 1)
    g.node(c.name, "Mul", [x] + gate, c.y)


@emits("Power")
def _power(g, c):
    layer = c.layer
    power, scale, shift = F32(layer.power), F32(layer.scale), F32(layer.shift)
    if power * scale == 0:
        value = F32(1) if power == 0 else F32(np.power(shift, power))
        shape = g.node(c.name, "Shape", [c.x[0]], 1)
        g.node(c.name, "ConstantOfShape", shape, c.y,
               value=g.onnx.numpy_helper.from_array(np.asarray([value], F32)))
        return
    steps = []
    if scale != 1:
        steps.append(("Mul", [_scalar(g, c, "scale", scale)], {}))
    if shift != 0:
        steps.append(("Add", [_scalar(g, c, "shift", shift)], {}))
    if power != 1:
        steps.append(("Pow", [_scalar(g, c, "power", power)], {}))
    _chain(g, c, c.x[0], steps, c.y[0])


@emits("Exp")
def _exp(g, c):
    inner, outer = F32(c.layer.inner_scale), F32(c.layer.outer_scale)
    steps = [("Mul", [_scalar(g, c, "inner_scale", inner)], {})] if inner != 1 else []
    steps.append(("Exp", [], {}))
    if outer != 1:
        steps.append(("Mul", [_scalar(g, c, "outer_scale", outer)], {}))
    _chain(g, c, c.x[0], steps, c.y[0])


@emits("Log")
def _log(g, c):
    layer = c.layer
    steps = []
    if F32(layer.input_scale) != 1:
        steps.append(("Mul", [_scalar(g, c, "scale", layer.input_scale)], {}))
    if F32(layer.input_shift) != 0:
        steps.append(("Add", [_scalar(g, c, "shift", layer.input_shift)], {}))
    steps.append(("Log", [], {}))
    if F32(layer.base_scale) != 1:
        steps.append(("Mul", [_scalar(g, c, "base_scale", layer.base_scale)], {}))
    _chain(g, c, c.x[0], steps, c.y[0])


# --- vision ---------------------------------------------------------------------------------------

@emits("Convolution", "Deconvolution")
def _convolution(g, c):
    cp = c.param.convolution_param
    ndim = len(c.in_shapes[0])
    if _axis(c, cp.axis, ndim, "convolution_param.axis") != 1:
        raise c.fail("only convolution_param.axis 1 (N, C, spatial...) is exported")
    kernel, stride, pad, dilation = conv_geometry(c.name, cp, ndim - 2)
    inputs = [g.const(f"{c.name}/weight", c.blobs[0])]
    if cp.bias_term:
        inputs.append(g.const(f"{c.name}/bias", c.blobs[1]))
    op = "ConvTranspose" if c.type == "Deconvolution" else "Conv"
    for x, y in zip(c.x, c.y):
        g.node(c.name, op, [x] + inputs, [y], kernel_shape=list(kernel), strides=list(stride),
               pads=list(pad) * 2, dilations=list(dilation), group=int(cp.group))


@emits("InnerProduct")
def _inner_product(g, c):
    p = c.param.inner_product_param
    shape = c.in_shapes[0]
    axis = _axis(c, p.axis, len(shape), "inner_product_param.axis")
    x = c.x[0]
    if not (len(shape) == 2 and axis == 1):
        x = g.node(c.name, "Flatten", [x], 1, axis=axis)[0]
    inputs = [x, g.const(f"{c.name}/weight", c.blobs[0])]
    if p.bias_term:
        inputs.append(g.const(f"{c.name}/bias", c.blobs[1]))
    reshape = len(c.out_shapes[0]) != 2
    out = g.node(c.name, "Gemm", inputs, 1 if reshape else c.y, transB=0 if p.transpose else 1)
    if reshape:
        g.node(c.name, "Reshape", out + [g.ints(f"{c.name}/shape", c.out_shapes[0])], c.y)


@emits("Embed")
def _embed(g, c):
    index = g.node(c.name, "Cast", [c.x[0]], 1, to=7)  # int64, truncating as Caffe's static_cast
    rows = g.node(c.name, "Gather", [g.const(f"{c.name}/weight", c.blobs[0])] + index,
                  1 if c.layer.bias_term else c.y, axis=0)
    if c.layer.bias_term:
        g.node(c.name, "Add", rows + [g.const(f"{c.name}/bias", c.blobs[1])], c.y)


@emits("Pooling")
def _pooling(g, c):
    layer, (height, width) = c.layer, c.in_shapes[0][2:]
    method = c.param.pooling_param.pool
    if method not in (_POOL.MAX, _POOL.AVE):
        raise c.fail(f"{_POOL.PoolMethod.Name(method)} pooling has no ONNX operator")
    x, out_hw = c.x[0], c.out_shapes[0][2:]
    if c.param.pooling_param.global_pooling and len(c.y) == 1:
        g.node(c.name, "GlobalMaxPool" if method == _POOL.MAX else "GlobalAveragePool", [x], c.y)
        return
    kernel, stride, pad = layer.window
    sizes = [height, width]
    begin = list(pad)
    if method == _POOL.AVE and any(pad):
        x = g.node(c.name, "Pad", [x, g.ints(f"{c.name}/pads", [0, 0, *pad, 0, 0, *pad])], 1)[0]
        sizes = [s + 2 * p for s, p in zip(sizes, pad)]
        begin = [0, 0]
    ends, crop = [], []
    for size, k, s, b, o in zip(sizes, kernel, stride, begin, out_hw):
        extra = (o - 1) * s + k - (size + b)
        if extra >= k:
            raise c.fail(f"Caffe's last pooling window (kernel {k}, stride {s}) lies entirely outside "
                         f"the input of size {size}")
        crop.append(size + min(extra, 0))
        ends.append(max(extra, 0))
    if crop != sizes:
        x = g.node(c.name, "Slice", [x, g.ints(f"{c.name}/crop_starts", [0, 0]),
                                     g.ints(f"{c.name}/crop_ends", crop), g.ints(f"{c.name}/crop_axes", [2, 3])],
                   1)[0]
    attrs = {"kernel_shape": list(kernel), "strides": list(stride), "pads": begin + ends, "ceil_mode": 0}
    if method == _POOL.AVE:
        g.node(c.name, "AveragePool", [x], c.y, count_include_pad=0, **attrs)
        return
    if len(c.y) == 1:
        g.node(c.name, "MaxPool", [x], c.y, **attrs)
        return
    _, index = g.node(c.name, "MaxPool", [x], [c.y[0], g.unique(f"{c.name}/indices")], **attrs)
    plane_w = crop[1]
    plane = g.node(c.name, "Mod", [index, g.ints(f"{c.name}/plane", [crop[0] * plane_w])], 1)
    row = g.node(c.name, "Div", plane + [g.ints(f"{c.name}/plane_w", [plane_w])], 1)
    col = g.node(c.name, "Mod", plane + [g.ints(f"{c.name}/plane_w2", [plane_w])], 1)
    flat = g.node(c.name, "Mul", row + [g.ints(f"{c.name}/width", [width])], 1)
    mask = g.node(c.name, "Add", flat + col, 1)
    g.node(c.name, "Cast", mask, [c.y[1]], to=1)


@emits("LRN")
def _lrn(g, c):
    p = c.param.lrn_param
    if p.norm_region == caffe_pb2.LRNParameter.ACROSS_CHANNELS:
        g.node(c.name, "LRN", c.x, c.y, size=int(p.local_size), alpha=float(p.alpha), beta=float(p.beta),
               bias=float(p.k))
        return
    size, pre = int(p.local_size), (int(p.local_size) - 1) // 2
    x = c.x[0]
    square = g.node(c.name, "Mul", [x, x], 1)
    pooled = g.node(c.name, "AveragePool", square, 1, kernel_shape=[size, size], strides=[1, 1],
                    pads=[pre] * 4, count_include_pad=1)
    scale = _chain(g, c, pooled[0], [("Mul", [_scalar(g, c, "alpha", p.alpha)], {}),
                                     ("Add", [_scalar(g, c, "one", 1.0)], {}),
                                     ("Pow", [_scalar(g, c, "minus_beta", -F32(p.beta))], {})],
                   g.unique(f"{c.name}/scale"))
    g.node(c.name, "Mul", [x, scale], c.y)


# --- normalization and broadcasting ---------------------------------------------------------------

@emits("BatchNorm")
def _batch_norm(g, c):
    layer, ndim = c.layer, len(c.in_shapes[0])
    if ndim < 2:
        raise c.fail("BatchNorm needs an input with a channel axis (at least 2 axes)")
    eps = F32(layer.eps)
    if layer.use_global_stats:
        stored = F32(c.blobs[2].reshape(-1)[0])
        factor = F32(0) if stored == 0 else F32(1) / stored
        mean, var = factor * c.blobs[0], factor * c.blobs[1]
        channels = c.in_shapes[0][1]
        g.node(c.name, "BatchNormalization",
               [c.x[0], g.const(f"{c.name}/scale", np.ones(channels, F32)),
                g.const(f"{c.name}/bias", np.zeros(channels, F32)), g.const(f"{c.name}/mean", mean),
                g.const(f"{c.name}/var", var)], c.y, epsilon=float(eps))
        return
    axes = [0] + list(range(2, ndim))
    mean = g.node(c.name, "ReduceMean", [c.x[0]], 1, axes=axes, keepdims=1)
    centered = g.node(c.name, "Sub", [c.x[0]] + mean, 1)
    square = g.node(c.name, "Mul", centered + centered, 1)
    var = g.node(c.name, "ReduceMean", square, 1, axes=axes, keepdims=1)
    std = _chain(g, c, var[0], [("Add", [_scalar(g, c, "eps", eps)], {}), ("Sqrt", [], {})],
                 g.unique(f"{c.name}/std"))
    g.node(c.name, "Div", centered + [std], c.y)


@emits("MVN")
def _mvn(g, c):
    layer = c.layer
    x = g.node(c.name, "Reshape", [c.x[0], g.ints(f"{c.name}/shape", c.out_shapes[0])], 1)[0]
    axes = [1, 2, 3] if layer.across_channels else [2, 3]
    mean = g.node(c.name, "ReduceMean", [x], 1, axes=axes, keepdims=1)
    if not layer.normalize_variance:
        g.node(c.name, "Sub", [x] + mean, c.y)
        return
    centered = g.node(c.name, "Sub", [x] + mean, 1)
    square = g.node(c.name, "Mul", centered + centered, 1)
    var = g.node(c.name, "ReduceMean", square, 1, axes=axes, keepdims=1)
    std = _chain(g, c, var[0], [("Sqrt", [], {}), ("Add", [_scalar(g, c, "eps", layer.eps)], {})],
                 g.unique(f"{c.name}/std"))
    g.node(c.name, "Div", centered + [std], c.y)


def _constant_operand(g, c, axis_param, label, blob):
    """Parameter ``blob`` as the constant ``<layer>/<label>``, shaped to broadcast from ``axis`` over
    bottom 0 (Caffe's Scale/Bias)."""
    shape = _operand_shape(c, blob.shape, axis_param, len(c.in_shapes[0]))
    return g.const(f"{c.name}/{label}", blob.reshape(shape))


def _broadcast_operand(g, c, axis_param, label):
    """The Scale/Bias operand broadcast from ``axis`` over bottom 0: the second bottom reshaped when
    the layer has two bottoms (Caffe's factor/bias bottom), else parameter blob 0 as a constant."""
    if len(c.x) == 1:
        return _constant_operand(g, c, axis_param, label, c.blobs[0])
    shape = _operand_shape(c, c.in_shapes[1], axis_param, len(c.in_shapes[0]))
    return g.node(c.name, "Reshape", [c.x[1], g.ints(f"{c.name}/{label}_shape", shape)], 1)[0]


@emits("Scale")
def _scale(g, c):
    """Scale: Mul by the broadcast factor, then Add the learned bias (the next parameter blob) when
    ``bias_term``."""
    p = c.param.scale_param
    factor = _broadcast_operand(g, c, p.axis, "scale")
    bias = c.blobs[1 if len(c.x) == 1 else 0] if p.bias_term else None
    scaled = g.node(c.name, "Mul", [c.x[0], factor], 1 if bias is not None else c.y)
    if bias is not None:
        g.node(c.name, "Add", scaled + [_constant_operand(g, c, p.axis, "bias", bias)], c.y)


@emits("Bias")
def _bias(g, c):
    """Bias: Add the broadcast bias."""
    g.node(c.name, "Add", [c.x[0], _broadcast_operand(g, c, c.param.bias_param.axis, "bias")], c.y)


@emits("Softmax")
def _softmax(g, c):
    axis = _axis(c, c.param.softmax_param.axis, len(c.in_shapes[0]), "softmax_param.axis")
    g.node(c.name, "Softmax", c.x, c.y, axis=axis)


@emits("Reduction")
def _reduction(g, c):
    layer, ndim = c.layer, len(c.in_shapes[0])
    axes = list(range(_axis(c, c.param.reduction_param.axis, ndim, "reduction_param.axis"), ndim))
    coeff = F32(layer.coeff)
    scalar = len(c.out_shapes[0]) == 0  # onnxruntime may give shape (1,) for a full reduction
    out = 1 if coeff != 1 or scalar else c.y
    if layer.op in (_REDUCTION.SUM, _REDUCTION.MEAN):
        total = g.node(c.name, "ReduceSum", [c.x[0], g.ints(f"{c.name}/axes", axes)], out, keepdims=0)
    elif layer.op == _REDUCTION.ASUM:
        total = g.node(c.name, "ReduceL1", [c.x[0]], out, axes=axes, keepdims=0)
    elif layer.op == _REDUCTION.SUMSQ:
        total = g.node(c.name, "ReduceSumSquare", [c.x[0]], out, axes=axes, keepdims=0)
    else:
        raise c.fail(f"unknown reduction operation {layer.op}")
    if coeff != 1:
        total = g.node(c.name, "Mul", total + [_scalar(g, c, "coeff", coeff)], 1 if scalar else c.y)
    if scalar:
        g.node(c.name, "Reshape", total + [g.ints(f"{c.name}/scalar_shape", [])], c.y)


@emits("ArgMax")
def _argmax(g, c):
    layer = c.layer
    k = g.ints(f"{c.name}/k", [layer.top_k])
    if layer.axis is not None:
        values, index = g.node(c.name, "TopK", [c.x[0], k], 2, axis=int(layer.axis), largest=1, sorted=1)
        if layer.out_max_val:
            g.node(c.name, "Identity", [values], c.y)
        else:
            g.node(c.name, "Cast", [index], c.y, to=1)
        return
    flat = g.node(c.name, "Flatten", [c.x[0]], 1, axis=1)
    values, index = g.node(c.name, "TopK", flat + [k], 2, axis=1, largest=1, sorted=1)
    index = g.node(c.name, "Cast", [index], 1, to=1)
    if layer.out_max_val:
        index = g.node(c.name, "Concat", index + [values], 1, axis=1)
    g.node(c.name, "Reshape", index + [g.ints(f"{c.name}/shape", c.out_shapes[0])], c.y)


# --- SkimCaffe fused layers -----------------------------------------------------------------------

@emits(*FUSED)
def _fused(g, c):
    """Emit each stage of a fused layer with its own internal layer (same name, parameters, weights),
    through the builder's ``emit`` callback."""
    io = c.layer.stage_io
    names = {id(io[0][0][0]): c.x[0]}
    for i, (stage, (bottom, top)) in enumerate(zip(c.layer.stages, io)):
        last = i == len(io) - 1
        y = c.y[0] if last else g.unique(f"{c.name}/{stage.type.lower()}")
        sub = type(c)(stage, [names[id(b)] for b in bottom], [y], [b.shape for b in bottom],
                      [t.shape for t in top])
        sub.name = c.name if i == 0 else f"{c.name}/{stage.type.lower()}"
        g.emit(sub)
        names[id(top[0])] = y
