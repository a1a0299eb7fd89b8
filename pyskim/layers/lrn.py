"""LRN (Caffe's ``lrn_layer``): across channels on the compiled LRN kernel, within a channel as
Caffe's internal Power -> average Pooling -> Power chain (forward: one compiled pass, planned in the
reshape; backward: the compiled within-channel steps around the pooling kernel; NumPy steps for
PowerLayer's special cases)."""
import numpy as np

from ..core.layer import Layer, layer_error, register
from ..errors import KernelArgumentError, NetError
from ..kernels import dense as kernels
from ..proto import caffe_pb2


def _power_forward(x, power, scale, shift):
    """Caffe's ``PowerLayer`` forward, (shift + scale * x) ** power, in its float32 steps."""
    if power * scale == 0:
        return np.full_like(x, 1.0 if power == 0 else np.float32(shift) ** np.float32(power))
    y = x * np.float32(scale) if scale != 1 else x.copy()
    if shift != 0:
        y += np.float32(shift)
    if power != 1:
        y = np.power(y, np.float32(power), dtype=np.float32)
    return y


def _power_backward(x, y, dy, power, scale, shift):
    """Caffe's ``PowerLayer`` backward: dy * power * scale * (shift + scale * x) ** (power - 1),
    through the same special cases and float32 steps."""
    diff_scale = np.float32(power) * np.float32(scale)
    if diff_scale == 0:
        return np.zeros_like(x)
    if power == 1:
        d = np.full_like(x, diff_scale)
    elif power == 2:
        d = np.float32(diff_scale * np.float32(scale)) * x
        if shift != 0:
            d += np.float32(diff_scale * np.float32(shift))
    elif shift == 0:
        d = (y / x) * np.float32(power)
    else:
        d = x * np.float32(scale) if scale != 1 else x.copy()
        d += np.float32(shift)
        d = y / d
        if diff_scale != 1:
            d *= diff_scale
    return dy * d


@register("LRN", "LRN")
class LRNLayer(Layer):
    """Caffe's ``LRNLayer``.

    ACROSS_CHANNELS: ``x * (k + alpha/size * sum of x^2 over size channels) ** -beta`` (kernels).
    WITHIN_CHANNEL: Caffe's internal chain Split -> Power(power 2) -> Pooling(AVE, kernel size,
    pad (size-1)/2) -> Power(power -beta, scale alpha, shift 1) -> Eltwise PROD, reproduced step by
    step in float32 (``k`` is ignored there, as in Caffe).
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        lp = self.param.lrn_param
        self._size = lp.local_size
        if self._size % 2 != 1:
            raise NetError(f"layer '{self.name}': LRN only supports odd values for local_size, got {self._size}")
        self._alpha, self._beta, self._k = lp.alpha, lp.beta, lp.k
        self._within = lp.norm_region == caffe_pb2.LRNParameter.WITHIN_CHANNEL
        self._fused = self._within and kernels.lrn_within_fused(self._alpha, self._beta)
        self._pre_pad = (self._size - 1) // 2
        self._scale = None              # ACROSS_CHANNELS: the scale kept for the backward
        self._plan = None               # fused WITHIN_CHANNEL: the kernels' plan (owns pooled and power)
        self._reshaped_for = None

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if shape == self._reshaped_for and top[0].shape == shape:
            return              # the shape of the last reshape: the buffers still fit
        if len(shape) != 4:
            raise NetError(f"layer '{self.name}': input must have 4 axes, corresponding to (num, channels, "
                           f"height, width); got shape {list(shape)}")
        top[0].reshape(shape)
        if not self._within:
            self._scale = np.empty(shape, np.float32)
        elif self._fused:
            try:
                self._plan = kernels.LRNWithinPlan(shape, self._size, self._alpha, self._beta)
            except KernelArgumentError as e:
                raise layer_error(self, str(e)) from None
        self._reshaped_for = shape

    def forward_cpu(self, bottom, top):
        x = bottom[0].data
        if not self._within:
            kernels.lrn_across_forward(x, self._size, self._alpha, self._beta, self._k,
                                       out=top[0].data, scale_out=self._scale)
            return
        if self._fused:
            self._plan.forward(x, top[0].data)
            return
        size, pad = self._size, self._pre_pad
        self._pooled = kernels.ave_pool_forward(np.square(x), size, 1, pad, x.shape[2:])
        self._power = _power_forward(self._pooled, -np.float32(self._beta), self._alpha, 1.0)
        top[0].data[...] = x * self._power

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x, top_diff = bottom[0].data, top[0].diff
        if not self._within:
            kernels.lrn_across_backward(x, top[0].data, self._scale, top_diff, self._size, self._alpha,
                                        self._beta, out=bottom[0].diff)
            return
        if self._fused:
            kernels.lrn_within_backward(x, self._plan.pooled, self._plan.power, top_diff, self._size, self._alpha,
                                        self._beta, out=bottom[0].diff)
            return
        product_diff = self._power * top_diff
        power_diff = _power_backward(self._pooled, self._power, x * top_diff, -np.float32(self._beta),
                                     self._alpha, 1.0)
        square_top_diff = kernels.ave_pool_backward(power_diff, self._size, 1, self._pre_pad, x.shape[2:])
        square_diff = square_top_diff * (np.float32(2) * x)
        bottom[0].diff[...] = product_diff + square_diff
