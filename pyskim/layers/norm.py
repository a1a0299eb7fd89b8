"""Normalisation and affine layers: BatchNorm, MVN, Scale, Bias (Caffe's ``batch_norm_layer``,
``mvn_layer``, ``scale_layer``, ``bias_layer``).

Per-group sums use float32 arrays as Caffe's GEMV reductions do; the update order of running statistics,
the place where eps enters and which gradients overwrite or accumulate follow Caffe's code.
"""
import numpy as np

from ..core.layer import Layer, register
from ..errors import NetError
from ..proto import caffe_pb2

F32 = np.float32


@register("BatchNorm")
class BatchNormLayer(Layer):
    """Normalise each channel (axis 1) by batch statistics (TRAIN) or stored ones (``use_global_stats``,
    default in TEST). Three blobs hold the running mean sum, variance sum and their scale factor; they
    are statistics, not parameters: lr_mult 0 and no gradient. SkimCaffe's extra fields
    (``use_weight_bias``, ``bias_term``, fillers) are ignored, as BVLC Caffe has no such fields."""

    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.batch_norm_param
        self.moving_average_fraction = F32(p.moving_average_fraction)
        self.use_global_stats = p.use_global_stats if p.HasField("use_global_stats") \
            else self.phase == caffe_pb2.TEST
        if bottom[0].num_axes == 0:
            raise NetError(f"layer '{self.name}': BatchNorm needs a bottom with at least one axis")
        self.channels = 1 if bottom[0].num_axes == 1 else bottom[0].shape[1]
        self.eps = F32(p.eps)
        c = self.channels
        self.make_param_blobs([((c,), None), ((c,), None), ((1,), None)])
        # Caffe masks the statistics from the solver: a missing ParamSpec becomes lr_mult 0, a given one
        # must say lr_mult 0.
        for i in range(len(self.blobs)):
            if len(self.param.param) == i:
                self.param.param.add().lr_mult = 0.0
            elif self.param.param[i].lr_mult != 0:
                raise NetError(f"layer '{self.name}' (BatchNorm): param {i} has lr_mult "
                               f"{self.param.param[i].lr_mult}; cannot configure batch normalization "
                               f"statistics as layer parameters (lr_mult must be 0)")
        self.param_propagate_down = [False] * len(self.blobs)

    def reshape(self, bottom, top):
        if bottom[0].num_axes > 1 and bottom[0].shape[1] != self.channels:
            raise NetError(f"layer '{self.name}' (BatchNorm): bottom has {bottom[0].shape[1]} channels, "
                           f"the layer was set up for {self.channels}")
        top[0].reshape(bottom[0].shape)

    def _view(self, array):
        """(num, channels, spatial) view of a bottom-shaped array."""
        return array.reshape(array.shape[0], self.channels, -1)

    def forward_cpu(self, bottom, top):
        x = self._view(bottom[0].data)
        num, _, spatial = x.shape
        inv_m = F32(1.0 / (num * spatial))
        mean_blob, var_blob, factor_blob = (b.data for b in self.blobs)
        if self.use_global_stats:
            stored = factor_blob[0]
            factor = F32(0) if stored == 0 else F32(1) / stored
            mean, var = factor * mean_blob, factor * var_blob
        else:
            mean = (x.sum(axis=2) * inv_m).sum(axis=0)
        centered = x - mean[None, :, None]
        if not self.use_global_stats:
            var = ((centered * centered).sum(axis=2) * inv_m).sum(axis=0)  # E[(X - EX)^2]
            maf = self.moving_average_fraction
            factor_blob[0] = factor_blob[0] * maf + F32(1)
            mean_blob[...] = mean + maf * mean_blob
            m = bottom[0].count // self.channels
            correction = F32(m) / F32(m - 1) if m > 1 else F32(1)
            var_blob[...] = correction * var + maf * var_blob
        self._std = np.sqrt(var + self.eps)[None, :, None]
        self._x_norm = centered / self._std
        top[0].data[...] = self._x_norm.reshape(top[0].shape)

    def backward_cpu(self, top, propagate_down, bottom):
        """Caffe writes the bottom diff whatever ``propagate_down`` says; so does this."""
        dy = self._view(top[0].diff).copy()  # Caffe copies it first when computing in place
        if self.use_global_stats:
            grad = dy / self._std
        else:
            y = self._x_norm
            num, _, spatial = y.shape
            grad = y * (y * dy).sum(axis=2).sum(axis=0)[None, :, None]
            grad = grad + dy.sum(axis=2).sum(axis=0)[None, :, None]
            grad = dy + F32(-1.0 / (num * spatial)) * grad
            grad = grad / self._std
        bottom[0].diff[...] = grad.reshape(bottom[0].shape)


@register("MVN", "MVN")
class MVNLayer(Layer):
    """Subtract the mean of each (num, channel) slice, or each num across channels, and optionally
    divide by ``std + eps`` (eps added after the square root) (``MVNLayer``). As Caffe, the top is
    4-D (num, channels, height, width) and backward ignores ``propagate_down``; backward repeats
    Caffe's passes over the bottom diff, so in place it gives Caffe's result."""

    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.mvn_param
        self.normalize_variance, self.across_channels = p.normalize_variance, p.across_channels
        self.eps = F32(p.eps)

    def reshape(self, bottom, top):
        if bottom[0].num_axes > 4:
            raise NetError(f"layer '{self.name}' (MVN): bottom has {bottom[0].num_axes} axes; MVN uses "
                           f"legacy 4-D (num, channels, height, width) shapes")
        b = bottom[0]
        top[0].reshape(b.num, b.channels, b.height, b.width)

    def _groups(self, blob):
        return blob.num if self.across_channels else blob.num * blob.channels

    def forward_cpu(self, bottom, top):
        groups = self._groups(bottom[0])
        x = bottom[0].data.reshape(groups, -1)
        inv_dim = F32(1.0 / x.shape[1])
        centered = x + (-(x.sum(axis=1) * inv_dim))[:, None]
        if self.normalize_variance:
            var = (centered * centered).sum(axis=1) * inv_dim
            self._std = np.power(var, F32(0.5)) + self.eps
            centered = centered / self._std[:, None]
        top[0].data[...] = centered.reshape(top[0].shape)

    def backward_cpu(self, top, propagate_down, bottom):
        groups = self._groups(bottom[0])
        y = top[0].data.reshape(groups, -1)
        dy = top[0].diff.reshape(groups, -1)
        dx = bottom[0].diff.reshape(groups, -1)
        inv_dim = F32(1.0 / y.shape[1])
        if not self.normalize_variance:
            dx[...] = dy + (-(dy.sum(axis=1) * inv_dim))[:, None]
            return
        dx[...] = y * dy
        dx[...] = dx.sum(axis=1)[:, None]
        dx *= y
        dx += dy.sum(axis=1)[:, None]
        dx[...] = dy + F32(-1.0 / y.shape[1]) * dx
        dx /= self._std[:, None]


def _canonical_axis(layer, blob, axis, field):
    n = blob.num_axes
    if not -n <= axis < n:
        raise NetError(f"layer '{layer.name}' ({layer.type}): {field} {axis} out of range for bottom shape "
                       f"{list(blob.shape)}")
    return axis + n if axis < 0 else axis


def _learned_shape(layer, bottom0, axis_param, num_axes, what):
    """Shape of a learned operand covering ``num_axes`` axes (-1: to the end) of bottom[0] from ``axis``."""
    axis = _canonical_axis(layer, bottom0, axis_param, f"{what}_param.axis")
    if num_axes < -1:
        raise NetError(f"layer '{layer.name}' ({layer.type}): {what}_param.num_axes must be non-negative, "
                       f"or -1 to extend to the end of bottom[0]; got {num_axes}")
    if num_axes >= 0 and bottom0.num_axes < axis + num_axes:
        raise NetError(f"layer '{layer.name}' ({layer.type}): {what} blob's shape extends past bottom[0]'s "
                       f"shape {list(bottom0.shape)} when applied starting with bottom[0] axis {axis}")
    return bottom0.shape[axis:] if num_axes == -1 else bottom0.shape[axis:axis + num_axes]


def _broadcast_dims(layer, bottom0, operand, axis_param, what):
    """(outer, operand count, inner) for an operand applied along bottom[0] from ``axis``; a scalar
    operand always uses axis 0 (Caffe's choice, equivalent for any axis)."""
    axis = 0 if operand.num_axes == 0 else _canonical_axis(layer, bottom0, axis_param, f"{what}_param.axis")
    if bottom0.num_axes < axis + operand.num_axes or \
            bottom0.shape[axis:axis + operand.num_axes] != operand.shape:
        raise NetError(f"layer '{layer.name}' ({layer.type}): {what} shape {list(operand.shape)} does not "
                       f"match bottom[0] shape {list(bottom0.shape)} from axis {axis}")
    return (bottom0.count_range(0, axis), operand.count, bottom0.count_range(axis + operand.num_axes))


@register("Bias")
class BiasLayer(Layer):
    """Add a bias broadcast along bottom[0] from ``axis``: a learned blob (filler default 0) or a second
    bottom (``BiasLayer``). The learned bias's gradient accumulates, a bottom's is overwritten."""

    min_bottom = 1
    max_bottom = 2
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        if len(bottom) == 1 and not self.blobs:
            p = self.param.bias_param
            self.make_param_blobs([(_learned_shape(self, bottom[0], p.axis, p.num_axes, "bias"), p.filler)])
        elif len(bottom) == 1 and len(self.blobs) != 1:
            raise NetError(f"layer '{self.name}' (Bias): {len(self.blobs)} parameter blobs given, 1 expected")
        self.param_propagate_down = [True] * len(self.blobs)

    def reshape(self, bottom, top):
        bias = bottom[1] if len(bottom) > 1 else self.blobs[0]
        self._dims = _broadcast_dims(self, bottom[0], bias, self.param.bias_param.axis, "bias")
        if bottom[0] is not top[0]:
            top[0].reshape(bottom[0].shape)

    def forward_cpu(self, bottom, top):
        bias = (bottom[1] if len(bottom) > 1 else self.blobs[0]).data.reshape(1, -1, 1)
        outer, dim, inner = self._dims
        top[0].data[...] = (bottom[0].data.reshape(outer, dim, inner) + bias).reshape(top[0].shape)

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0] and bottom[0] is not top[0]:
            bottom[0].diff[...] = top[0].diff
        learned = len(bottom) == 1
        if (learned and self.param_propagate_down[0]) or (not learned and propagate_down[1]):
            total = top[0].diff.reshape(self._dims).sum(axis=2).sum(axis=0)
            target = self.blobs[0] if learned else bottom[1]
            if learned:
                target.diff[...] += total.reshape(target.shape)
            else:
                target.diff[...] = total.reshape(target.shape)


@register("Scale")
class ScaleLayer(Layer):
    """Multiply by a scale broadcast along bottom[0] from ``axis``: a learned blob (filler default 1) or
    a second bottom; ``bias_term`` adds an internal Bias layer whose blob is this layer's last blob
    (``ScaleLayer``). In place, forward keeps a copy of the bottom for the scale gradient. The scale
    gradient follows Caffe's reductions: accumulated into a learned scale, except that an eltwise scale
    (same count as bottom[0]) or a multi-element scale with outer dimension 1 gets it overwritten."""

    min_bottom = 1
    max_bottom = 2
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.scale_param
        given = bool(self.blobs)
        expected = (len(bottom) == 1) + p.bias_term
        if given and len(self.blobs) != expected:
            raise NetError(f"layer '{self.name}' (Scale): {len(self.blobs)} parameter blobs given, "
                           f"{expected} expected")
        if len(bottom) == 1 and not given:
            filler = p.filler if p.HasField("filler") else caffe_pb2.FillerParameter(type="constant", value=1)
            self.make_param_blobs([(_learned_shape(self, bottom[0], p.axis, p.num_axes, "scale"), filler)])
        self.bias_layer = None
        if p.bias_term:
            bias_param = caffe_pb2.LayerParameter()
            bias_param.CopyFrom(self.param)
            bias_param.type = "Bias"
            del bias_param.blobs[:]
            bias_param.bias_param.axis = p.axis
            bias_param.bias_param.num_axes = bottom[1].num_axes if len(bottom) > 1 else p.num_axes
            bias_param.bias_param.filler.CopyFrom(p.bias_filler)
            self.bias_layer = BiasLayer(bias_param)
            if given:
                self.bias_layer.blobs = [self.blobs[-1]]
            self.bias_layer.setup([bottom[0]], top)
            if not given:
                self.blobs.append(self.bias_layer.blobs[0])
        self.param_propagate_down = [True] * len(self.blobs)

    def _scale(self, bottom):
        return bottom[1] if len(bottom) > 1 else self.blobs[0]

    def reshape(self, bottom, top):
        self._dims = _broadcast_dims(self, bottom[0], self._scale(bottom), self.param.scale_param.axis, "scale")
        if bottom[0] is not top[0]:
            top[0].reshape(bottom[0].shape)
        if self.bias_layer is not None:
            self.bias_layer.reshape([top[0]], top)

    def forward_cpu(self, bottom, top):
        x = bottom[0].data
        if bottom[0] is top[0]:
            self._bottom_copy = x.copy()
        scale = self._scale(bottom).data.reshape(1, -1, 1)
        top[0].data[...] = (x.reshape(self._dims) * scale).reshape(top[0].shape)
        if self.bias_layer is not None:
            self.bias_layer.forward_cpu([top[0]], top)

    def backward_cpu(self, top, propagate_down, bottom):
        if self.bias_layer is not None and self.param_propagate_down[-1]:
            self.bias_layer.backward_cpu(top, [False], [top[0]])
        learned = len(bottom) == 1
        scale = self._scale(bottom)
        if (learned and self.param_propagate_down[0]) or (not learned and propagate_down[1]):
            x = self._bottom_copy if bottom[0] is top[0] else bottom[0].data
            product = top[0].diff * x
            outer, dim, _ = self._dims
            if bottom[0].count == scale.count:
                scale.diff[...] = product.reshape(scale.shape)
            elif outer * dim == 1 or outer > 1:
                total = product.reshape(self._dims).sum(axis=2).sum(axis=0).reshape(scale.shape)
                if learned:
                    scale.diff[...] += total
                else:
                    scale.diff[...] = total
            else:
                scale.diff[...] = product.reshape(self._dims).sum(axis=2).reshape(scale.shape)
        if propagate_down[0]:
            factor = scale.data.reshape(1, -1, 1)
            bottom[0].diff[...] = (top[0].diff.reshape(self._dims) * factor).reshape(bottom[0].shape)
