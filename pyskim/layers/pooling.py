"""Pooling and SPP (Caffe's ``pooling_layer``, ``spp_layer``), on the validated pooling kernels of
:mod:`pyskim.kernels.dense`."""
import numpy as np

from ..core.blob import Blob
from ..core.layer import Layer, layer_error, register
from ..errors import KernelArgumentError, NetError
from ..kernels import dense as kernels
from ..kernels.validate import check_span
from ..proto import caffe_pb2

_POOL = caffe_pb2.PoolingParameter


def pooled_extent(name, size, kernel, stride, pad, round_mode):
    """Caffe's pooled extent: ceil (or floor, ``round_mode: FLOOR``) of (S + 2p - k) / s, plus one;
    with padding, one less when the last window would start at or beyond S + p."""
    span = size + 2 * pad - kernel
    out = (-(-span // stride) if round_mode == _POOL.CEIL else span // stride) + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    if out <= 0:
        raise NetError(f"layer '{name}': pooling kernel {kernel} does not fit input size {size} with pad {pad}")
    return out


@register("Pooling", "POOLING")
class PoolingLayer(Layer):
    """Caffe's ``PoolingLayer`` (MAX / AVE; STOCHASTIC has no CPU implementation in Caffe).

    MAX may have a second top: the argmax mask (flat ``h * W + w`` index in the input plane, as
    float). AVE divides by the window clipped to the padded image, so padding counts as zeros.
    ``global_pooling`` uses the whole plane as the kernel.
    """

    exact_num_bottom = 1
    min_top = 1

    def __init__(self, param):
        super().__init__(param)
        self.max_top = 2 if param.pooling_param.pool == _POOL.MAX else 1

    def layer_setup(self, bottom, top):
        pp = self.param.pooling_param
        has = pp.HasField
        self._global = pp.global_pooling
        if self._global:
            if has("kernel_size") or has("kernel_h") or has("kernel_w"):
                raise NetError(f"layer '{self.name}': with global_pooling: true the filter size cannot be "
                               f"specified")
            self._kernel = None
        elif has("kernel_size") == (has("kernel_h") and has("kernel_w")):
            raise NetError(f"layer '{self.name}': filter size is kernel_size OR kernel_h and kernel_w "
                           f"(both kernel_h and kernel_w for non-square filters); not both")
        else:
            self._kernel = ((pp.kernel_size,) * 2 if has("kernel_size") else (pp.kernel_h, pp.kernel_w))
            if min(self._kernel) <= 0:
                raise NetError(f"layer '{self.name}': filter dimensions cannot be zero")
        for field in ("pad", "stride"):
            if not ((not has(field) and has(f"{field}_h") and has(f"{field}_w"))
                    or (not has(f"{field}_h") and not has(f"{field}_w"))):
                raise NetError(f"layer '{self.name}': {field} is {field} OR {field}_h and {field}_w")
        self._pad = (pp.pad_h, pp.pad_w) if has("pad_h") else (pp.pad,) * 2
        self._stride = (pp.stride_h, pp.stride_w) if has("stride_h") else (pp.stride,) * 2
        if min(self._stride) <= 0:
            raise NetError(f"layer '{self.name}': pooling stride must be positive")
        if self._global and (any(self._pad) or self._stride != (1, 1)):
            raise NetError(f"layer '{self.name}': with global_pooling: true only pad = 0 and stride = 1 "
                           f"are allowed")
        if any(self._pad):
            if pp.pool not in (_POOL.AVE, _POOL.MAX):
                raise NetError(f"layer '{self.name}': padding is implemented only for average and max "
                               f"pooling")
            if self._pad[0] >= self._kernel[0] or self._pad[1] >= self._kernel[1]:
                raise NetError(f"layer '{self.name}': pad {list(self._pad)} must be smaller than the "
                               f"kernel {list(self._kernel)}")
        self._method = pp.pool
        self._plan = None               # the kernels' plan for the bottom shape of the last reshape
        self._reshaped_for = self._top_shape = None

    @property
    def window(self):
        """The pooling window as ``(kernel, stride, pad)``, each an ``(h, w)`` pair (for global pooling
        the kernel is the bottom's H x W, known after the first reshape)."""
        return tuple(self._kernel), tuple(self._stride), tuple(self._pad)

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if shape == self._reshaped_for and top[0].shape == top[-1].shape == self._top_shape:
            return              # the shapes of the last reshape (of both tops): the plan still holds
        if len(shape) != 4:
            raise NetError(f"layer '{self.name}': input must have 4 axes, corresponding to (num, channels, "
                           f"height, width); got shape {list(shape)}")
        n, c, h, w = shape
        if self._global:
            self._kernel = (h, w)
        # the compiled kernels index in 32 bits: refuse wider geometry before sizing the tops
        check_span(f"layer '{self.name}' (Pooling)", (h, w), self._kernel, self._pad, self._stride, (1, 1))
        round_mode = self.param.pooling_param.round_mode
        self._out = tuple(pooled_extent(self.name, size, k, s, p, round_mode)
                          for size, k, s, p in zip((h, w), self._kernel, self._stride, self._pad))
        for blob in top:
            blob.reshape(n, c, *self._out)
        if self._method in (_POOL.MAX, _POOL.AVE):
            try:
                self._plan = kernels.PoolingPlan(_POOL.PoolMethod.Name(self._method), shape, self._kernel,
                                                 self._stride, self._pad, self._out)
            except KernelArgumentError as e:
                raise layer_error(self, str(e)) from None
        self._reshaped_for, self._top_shape = shape, top[0].shape

    def _check_method(self):
        if self._method not in (_POOL.MAX, _POOL.AVE):
            raise NetError(f"layer '{self.name}': pooling method "
                           f"{_POOL.PoolMethod.Name(self._method)} has no CPU implementation (as in Caffe)")

    def forward_cpu(self, bottom, top):
        """The plan of the last reshape pools (it refuses an in-place top, which would overwrite inputs
        still to be read); a second MAX top gets the plan's mask as float."""
        self._check_method()
        self._plan.forward(bottom[0].data, top[0].data)
        if len(top) > 1:
            top[1].data[...] = self._plan.mask

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        self._check_method()
        in_hw = bottom[0].shape[2:]
        if self._method == _POOL.AVE:
            kernels.ave_pool_backward(top[0].diff, self._kernel, self._stride, self._pad, in_hw,
                                      out=bottom[0].diff)
            return
        mask = top[1].data.astype(np.int32) if len(top) > 1 else self._plan.mask
        kernels.max_pool_backward(top[0].diff, mask, in_hw, out=bottom[0].diff)


def spp_pooling_param(level, height, width, method):
    """Caffe's ``SPPLayer::GetPoolingParam``: 2^level bins per side, kernel = stride =
    ceil(S / bins), pad = (kernel * bins - S + 1) / 2."""
    bins = 2 ** level
    pp = caffe_pb2.PoolingParameter(pool=method)
    for axis, size in (("h", height), ("w", width)):
        kernel = -(-size // bins)
        setattr(pp, f"kernel_{axis}", kernel)
        setattr(pp, f"stride_{axis}", kernel)
        setattr(pp, f"pad_{axis}", (kernel * bins - size + 1) // 2)
    return pp


@register("SPP")
class SPPLayer(Layer):
    """Caffe's ``SPPLayer``: one pooling per pyramid level over the shared input, each flattened,
    concatenated along axis 1: top (N, sum over levels of C * bins). With ``pyramid_height: 1``
    the single pooling's 4-D top is the output. The bottom diff sums the levels' diffs in order."""

    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        self._height = self.param.spp_param.pyramid_height
        if self._height < 1:
            raise NetError(f"layer '{self.name}': spp_param.pyramid_height must be at least 1")
        self._shape = None

    def _check_levels(self, shape):
        """Caffe's pooling check (pad < kernel) for the top level first: its 2^(height-1) bins per side
        are the most a side may hold, and a huge pyramid_height would not even fit the parameters."""
        bins = 2 ** (self._height - 1)
        for size in shape[2:]:
            kernel = -(-size // bins)
            if (kernel * bins - size + 1) // 2 >= kernel:
                raise NetError(f"layer '{self.name}': spp_param.pyramid_height {self._height} needs {bins} bins "
                               f"per side, too many for an input of {shape[2]}x{shape[3]}: the pooling's pad "
                               f"must be smaller than the kernel")

    def _build_levels(self, shape):
        self._check_levels(shape)
        self._levels = []
        for level in range(self._height):
            lp = caffe_pb2.LayerParameter(name=f"{self.name}/pool{level}", type="Pooling", phase=self.phase)
            lp.pooling_param.CopyFrom(spp_pooling_param(level, shape[2], shape[3],
                                                        self.param.spp_param.pool))
            inner = Blob(shape, name=f"{self.name}/split{level}")
            self._levels.append((PoolingLayer(lp), inner, Blob(name=f"{self.name}/pool{level}")))
        for layer, inner, out in self._levels:
            layer.setup([inner], [out])

    def reshape(self, bottom, top):
        b = bottom[0]
        if b.num_axes != 4:
            raise NetError(f"layer '{self.name}': input must have 4 axes, corresponding to (num, channels, "
                           f"height, width); got shape {list(b.shape)}")
        if b.shape != self._shape:
            self._build_levels(b.shape)
            self._shape = b.shape
        if self._height == 1:
            self._levels[0][0].reshape(bottom, top)
            return
        for layer, inner, out in self._levels:
            inner.reshape(b.shape)
            inner.share_data(b)
            layer.reshape([inner], [out])
        top[0].reshape(b.shape[0], sum(out.count_range(1) for _, _, out in self._levels))

    def forward_cpu(self, bottom, top):
        if self._height == 1:
            self._levels[0][0].forward_cpu(bottom, top)
            return
        offset = 0
        for layer, inner, out in self._levels:
            layer.forward_cpu([inner], [out])
            size = out.count_range(1)
            top[0].data[:, offset:offset + size] = out.data.reshape(out.shape[0], size)
            offset += size

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        if self._height == 1:
            self._levels[0][0].backward_cpu(top, propagate_down, bottom)
            return
        offset = 0
        for index, (layer, inner, out) in enumerate(self._levels):
            size = out.count_range(1)
            out.diff[...] = top[0].diff[:, offset:offset + size].reshape(out.shape)
            offset += size
            layer.backward_cpu([out], [True], [inner])
            if index == 0:
                bottom[0].diff[...] = inner.diff
            else:
                bottom[0].diff[...] += inner.diff
