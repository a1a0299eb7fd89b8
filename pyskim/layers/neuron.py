"""Element-wise ("neuron") layers: one bottom, one top of the same shape (Caffe's ``NeuronLayer`` family).

Arithmetic stays in float32 except where Caffe's C++ promotes to double (a ``double`` literal or a libm
call on a float); there the value is computed in float64 and rounded once, as Caffe stores it. Layers
whose Caffe backward makes several passes over ``bottom_diff`` do the same passes here, so an in-place
layer (top == bottom, diffs aliased) gives what Caffe gives.
"""
import numpy as np

from ..core import state as common
from ..core.layer import Layer, register
from ..errors import NetError
from ..kernels.dense import relu
from ..proto import caffe_pb2

F32 = np.float32
F64 = np.float64


class NeuronLayer(Layer):
    """One bottom, one top reshaped like it; in-place allowed (``NeuronLayer``)."""

    exact_num_bottom = 1
    exact_num_top = 1

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if top[0].shape != shape:       # else in place, or as on the last pass: nothing to resize
            top[0].reshape(shape)


def _sigmoid(x):
    """Caffe's ``0.5 * tanh(0.5 * x) + 0.5``, evaluated in double and stored as float."""
    return (0.5 * np.tanh(0.5 * x.astype(F64)) + 0.5).astype(F32)


class ReLUFusion:
    """The link between an in-place ReLU and the layer before it whose kernel can apply ``max(x, 0)``
    in its store (SkimCaffe fuses ReLU into the sparse convolution). The producer sets ``applied``
    when its forward already rectified the blob; the ReLU's next forward then only clears it."""

    __slots__ = ("applied",)

    def __init__(self):
        self.applied = False


@register("ReLU", "RELU")
class ReLULayer(NeuronLayer):
    """``max(x, 0) + negative_slope * min(x, 0)``; backward tests ``x > 0`` on the bottom data, which
    in place is the output (same sign)."""

    #: A :class:`ReLUFusion` when the producer may apply this ReLU (set by :mod:`pyskim.sparse` after
    #: the Net is built; only for an in-place ReLU with ``negative_slope: 0``), else None.
    fusion = None

    def layer_setup(self, bottom, top):
        self.negative_slope = F32(self.param.relu_param.negative_slope)
        self._rectify = self.negative_slope == 0       # max(x, 0): the compiled pass

    def forward_cpu(self, bottom, top):
        fusion = self.fusion
        if fusion is not None and fusion.applied:
            fusion.applied = False      # the producer's kernel wrote max(x, 0) already
            return
        x = bottom[0].data
        if self._rectify:               # one compiled pass, Caffe's NaN / -inf results included
            relu(x, x if bottom[0] is top[0] else top[0].data)     # in place: the kernel's cheap path
        else:
            top[0].data[...] = np.maximum(x, F32(0)) + self.negative_slope * np.minimum(x, F32(0))

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            x = bottom[0].data
            if self.negative_slope == 0:
                np.multiply(top[0].diff, x > 0, out=bottom[0].diff)
            else:
                bottom[0].diff[...] = top[0].diff * ((x > 0) + self.negative_slope * (x <= 0))


@register("PReLU")
class PReLULayer(NeuronLayer):
    """ReLU with learned negative slopes, one per channel (axis 1) or one shared (``PReLULayer``).
    In place, forward keeps a copy of the bottom for backward; the slope gradient accumulates."""

    def layer_setup(self, bottom, top):
        if bottom[0].num_axes < 2:
            raise NetError(f"layer '{self.name}' (PReLU): bottom must have at least 2 axes, "
                           f"got shape {list(bottom[0].shape)}")
        p = self.param.prelu_param
        self.channel_shared = p.channel_shared
        channels = bottom[0].shape[1]
        filler = p.filler if p.HasField("filler") else caffe_pb2.FillerParameter(type="constant", value=0.25)
        self.make_param_blobs([((), filler) if self.channel_shared else ((channels,), filler)])
        expected = 1 if self.channel_shared else channels
        if self.blobs[0].count != expected:
            raise NetError(f"layer '{self.name}' (PReLU): negative slope blob holds {self.blobs[0].count} "
                           f"values, prelu_param (channel_shared: {self.channel_shared}) needs {expected}")

    def reshape(self, bottom, top):
        if bottom[0].num_axes < 2:
            raise NetError(f"layer '{self.name}' (PReLU): bottom must have at least 2 axes, "
                           f"got shape {list(bottom[0].shape)}")
        top[0].reshape(bottom[0].shape)

    def forward_cpu(self, bottom, top):
        shape = bottom[0].shape
        x = bottom[0].data.reshape(shape[0], shape[1], -1)
        if bottom[0] is top[0]:
            self._bottom_memory = x.copy()
        slope = self.blobs[0].data.reshape(1, -1, 1)  # per channel, or one shared slope
        top[0].data[...] = (np.maximum(x, F32(0)) + slope * np.minimum(x, F32(0))).reshape(shape)

    def backward_cpu(self, top, propagate_down, bottom):
        shape = bottom[0].shape
        x = self._bottom_memory if bottom[0] is top[0] else bottom[0].data.reshape(shape[0], shape[1], -1)
        dy = top[0].diff.reshape(x.shape)
        if self.param_propagate_down[0]:
            contrib = dy * x * (x <= 0)
            total = contrib.sum(axis=(0, 2)) if not self.channel_shared else contrib.sum()
            self.blobs[0].diff[...] += total.astype(F32).reshape(self.blobs[0].shape)
        if propagate_down[0]:
            slope = self.blobs[0].data.reshape(1, -1, 1)
            bottom[0].diff[...] = (dy * ((x > 0) + slope * (x <= 0))).reshape(shape)


@register("ELU")
class ELULayer(NeuronLayer):
    """``x`` for x > 0, ``alpha (exp(x) - 1)`` otherwise; backward ``dy (alpha + y)`` where x <= 0."""

    def layer_setup(self, bottom, top):
        self.alpha = F32(self.param.elu_param.alpha)

    def forward_cpu(self, bottom, top):
        x = bottom[0].data
        neg = float(self.alpha) * (np.exp(np.minimum(x, F32(0)).astype(F64)) - 1.0)
        top[0].data[...] = (np.maximum(x, F32(0)) + neg).astype(F32)

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            x, y = bottom[0].data, top[0].data
            bottom[0].diff[...] = top[0].diff * ((x > 0) + (self.alpha + y) * (x <= 0))


@register("Sigmoid", "SIGMOID")
class SigmoidLayer(NeuronLayer):
    """``0.5 tanh(0.5 x) + 0.5``; backward ``dy * y * (1 - y)`` from the top data."""

    def forward_cpu(self, bottom, top):
        top[0].data[...] = _sigmoid(bottom[0].data)

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            y = top[0].data
            bottom[0].diff[...] = ((top[0].diff * y) * (1.0 - y.astype(F64))).astype(F32)


@register("TanH", "TANH")
class TanHLayer(NeuronLayer):
    """``tanh(x)``; backward ``dy * (1 - y^2)`` from the top data."""

    def forward_cpu(self, bottom, top):
        top[0].data[...] = np.tanh(bottom[0].data.astype(F64)).astype(F32)

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            y = top[0].data
            bottom[0].diff[...] = top[0].diff * (F32(1) - y * y)


@register("AbsVal", "ABSVAL")
class AbsValLayer(NeuronLayer):
    """``|x|``; backward ``sign(x) * dy`` with sign(0) = 0. Caffe refuses in-place computation."""

    def layer_setup(self, bottom, top):
        if bottom[0] is top[0]:
            raise NetError(f"layer '{self.name}' (AbsVal) does not allow in-place computation")

    def forward_cpu(self, bottom, top):
        top[0].data[...] = np.abs(bottom[0].data)

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            x = bottom[0].data
            sign = (x > 0).astype(F32) - (x < 0)
            bottom[0].diff[...] = sign * top[0].diff


@register("Power", "POWER")
class PowerLayer(NeuronLayer):
    """``(shift + scale x)^power`` with Caffe's special cases: a constant when ``power * scale == 0``,
    a constant gradient when power is 1, ``2 scale (shift + scale x)`` when power is 2, ``power y / x``
    when shift is 0, ``power scale y / (shift + scale x)`` otherwise (``PowerLayer``)."""

    def layer_setup(self, bottom, top):
        p = self.param.power_param
        self.power, self.scale, self.shift = F32(p.power), F32(p.scale), F32(p.shift)
        self.diff_scale = self.power * self.scale

    def forward_cpu(self, bottom, top):
        if self.diff_scale == 0:
            top[0].data[...] = F32(1) if self.power == 0 else np.power(self.shift, self.power)
            return
        y = bottom[0].data.copy()
        if self.scale != 1:
            y *= self.scale
        if self.shift != 0:
            y += self.shift
        if self.power != 1:
            y = np.power(y, self.power)
        top[0].data[...] = y

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        diff = bottom[0].diff
        x = bottom[0].data
        if self.diff_scale == 0 or self.power == 1:
            diff[...] = self.diff_scale
        elif self.power == 2:
            grad = (self.diff_scale * self.scale) * x
            if self.shift != 0:
                grad += self.diff_scale * self.shift
            diff[...] = grad
        elif self.shift == 0:
            diff[...] = (top[0].data / x) * self.power
        else:
            base = x * self.scale if self.scale != 1 else x.copy()
            base += self.shift
            grad = top[0].data / base
            if self.diff_scale != 1:
                grad *= self.diff_scale
            diff[...] = grad
        if self.diff_scale != 0:
            diff *= top[0].diff


def _checked_log_base(layer, base):
    """``log(base)`` (1 for base -1, meaning e) after Caffe's checks on ``base``."""
    if base != -1 and not base > 0:
        raise NetError(f"layer '{layer.name}' ({layer.type}): base must be strictly positive (or -1 for e), "
                       f"got {base}")
    log_base = F32(1) if base == -1 else F32(np.log(F64(base)))
    if not np.isfinite(log_base):
        raise NetError(f"layer '{layer.name}' ({layer.type}): log(base) = log({base}) is not finite")
    return log_base


@register("Exp", "EXP")
class ExpLayer(NeuronLayer):
    """``base^(shift + scale x)`` computed as ``outer * exp(inner x)`` with ``inner = scale ln(base)``,
    ``outer = base^shift``; backward ``dy * y * inner`` (``ExpLayer``)."""

    def layer_setup(self, bottom, top):
        p = self.param.exp_param
        base, shift = F32(p.base), F32(p.shift)
        self.inner_scale = _checked_log_base(self, base) * F32(p.scale)
        if shift == 0:
            self.outer_scale = F32(1)
        elif base != -1:
            self.outer_scale = F32(np.power(F64(base), F64(shift)))
        else:
            self.outer_scale = F32(np.exp(F64(shift)))

    def forward_cpu(self, bottom, top):
        x = bottom[0].data
        inner = x if self.inner_scale == 1 else self.inner_scale * x
        y = np.exp(inner.astype(F64)).astype(F32)
        if self.outer_scale != 1:
            y *= self.outer_scale
        top[0].data[...] = y

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            grad = top[0].data * top[0].diff
            if self.inner_scale != 1:
                grad *= self.inner_scale
            bottom[0].diff[...] = grad


@register("Log")
class LogLayer(NeuronLayer):
    """``log_base(shift + scale x)``; backward ``dy * scale / (ln(base) (shift + scale x))`` (``LogLayer``)."""

    def layer_setup(self, bottom, top):
        p = self.param.log_param
        log_base = _checked_log_base(self, F32(p.base))
        with np.errstate(divide="ignore"):
            self.base_scale = F32(1) / log_base
        if not np.isfinite(self.base_scale):
            raise NetError(f"layer '{self.name}' (Log): 1 / log(base) is not finite for base {p.base}")
        self.input_scale, self.input_shift = F32(p.scale), F32(p.shift)
        self.backward_num_scale = self.input_scale / log_base

    def _affine(self, x):
        y = x * self.input_scale if self.input_scale != 1 else x.copy()
        if self.input_shift != 0:
            y += self.input_shift
        return y

    def forward_cpu(self, bottom, top):
        y = np.log(self._affine(bottom[0].data).astype(F64)).astype(F32)
        if self.base_scale != 1:
            y *= self.base_scale
        top[0].data[...] = y

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        diff = bottom[0].diff
        grad = np.power(self._affine(bottom[0].data), F32(-1))
        if self.backward_num_scale != 1:
            grad *= self.backward_num_scale
        diff[...] = grad
        diff *= top[0].diff


@register("BNLL", "BNLL")
class BNLLLayer(NeuronLayer):
    """``log(1 + exp(x))`` as Caffe writes it (``x + log(1 + exp(-x))`` for x > 0); backward
    ``dy * e / (e + 1)`` with ``e = exp(min(x, 50))`` (kBNLL_THRESHOLD)."""

    THRESHOLD = 50.0

    def forward_cpu(self, bottom, top):
        x = bottom[0].data.astype(F64)
        top[0].data[...] = (np.maximum(x, 0.0) + np.log(1.0 + np.exp(-np.abs(x)))).astype(F32)

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            e = np.exp(np.minimum(bottom[0].data, F32(self.THRESHOLD)).astype(F64)).astype(F32)
            bottom[0].diff[...] = ((top[0].diff * e) / (e.astype(F64) + 1.0)).astype(F32)


@register("Threshold", "THRESHOLD")
class ThresholdLayer(NeuronLayer):
    """``1`` where ``x > threshold``, else ``0``. Caffe has no backward for it."""

    def layer_setup(self, bottom, top):
        self.threshold = F32(self.param.threshold_param.threshold)

    def forward_cpu(self, bottom, top):
        top[0].data[...] = bottom[0].data > self.threshold


@register("Dropout", "DROPOUT")
class DropoutLayer(NeuronLayer):
    """Inverted dropout (``DropoutLayer``): in TRAIN, keep each value with probability ``1 - ratio`` and
    scale kept ones by ``1 / (1 - ratio)``, back-propagating through the same mask; in TEST, identity."""

    def layer_setup(self, bottom, top):
        ratio = self.param.dropout_param.dropout_ratio
        if not 0 <= ratio < 1:
            raise NetError(f"layer '{self.name}' (Dropout): dropout_param.dropout_ratio must be in [0, 1), "
                           f"got {ratio}")
        self.ratio = F32(ratio)
        self.scale = F32(1.0 / (1.0 - F64(self.ratio)))

    def forward_cpu(self, bottom, top):
        if self.phase == caffe_pb2.TRAIN:
            keep = 1.0 - F64(self.ratio)
            self._mask = (common.rng().random(bottom[0].shape) < keep).astype(F32)
            top[0].data[...] = bottom[0].data * self._mask * self.scale
        elif bottom[0] is not top[0]:
            top[0].data[...] = bottom[0].data

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        if self.phase == caffe_pb2.TRAIN:
            bottom[0].diff[...] = top[0].diff * self._mask * self.scale
        elif bottom[0] is not top[0]:
            bottom[0].diff[...] = top[0].diff


@register("Clip")
class ClipLayer(NeuronLayer):
    """``max(min, min(x, max))``; the gradient passes where ``min <= x <= max`` (bounds included)."""

    def layer_setup(self, bottom, top):
        p = self.param.clip_param
        for field in ("min", "max"):
            if not p.HasField(field):
                raise NetError(f"layer '{self.name}' (Clip): clip_param.{field} is required")
        self.min, self.max = F32(p.min), F32(p.max)

    def forward_cpu(self, bottom, top):
        top[0].data[...] = np.maximum(self.min, np.minimum(bottom[0].data, self.max))

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            x = bottom[0].data
            bottom[0].diff[...] = top[0].diff * ((x >= self.min) & (x <= self.max))


@register("Swish")
class SwishLayer(NeuronLayer):
    """``x * sigmoid(beta x)`` through an internal sigmoid; backward
    ``dy * (beta y + s (1 - beta y))`` with ``s`` the sigmoid output (``SwishLayer``)."""

    def layer_setup(self, bottom, top):
        self.beta = F32(self.param.swish_param.beta)

    def forward_cpu(self, bottom, top):
        x = bottom[0].data
        self._sigmoid_output = _sigmoid(x * self.beta)
        top[0].data[...] = x * self._sigmoid_output

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            beta_y = (self.beta * top[0].data).astype(F64)
            local = beta_y + self._sigmoid_output * (1.0 - beta_y)
            bottom[0].diff[...] = (top[0].diff * local).astype(F32)
