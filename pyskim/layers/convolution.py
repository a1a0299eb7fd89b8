"""Convolution-family layers: Convolution, Deconvolution and Im2col (Caffe's ``base_conv_layer``,
``conv_layer``, ``deconv_layer``, ``im2col_layer``). Pooling and SPP live in :mod:`.pooling`, LRN
in :mod:`.lrn`.

Convolution's 2-D (and 1x1) dense path runs the whole batch through pyskim's own products
(:mod:`pyskim.kernels.gemm`, on pyskim's thread pool): im2col is fused into the packing of the
product, so no column matrix is written. Forward is one call (W_g . im2col(x)_g + bias per group);
backward is the weight gradient td_g . im2col(x)_g^T summed image by image as Caffe does, and the
bottom gradient col2im(W_g^T . td_g): for stride 1 (when it does not grow the work much) computed as
the convolution of the padded top diff with the flipped weights (no column matrix), otherwise
through a column matrix and col2im, in chunks of images bounded by :data:`BATCH_COL_BUFFER_BYTES`.
The layer keeps its weights packed for the product between forwards and packs them again whenever
they may have changed (:meth:`pyskim.core.blob.Blob.data_untouched_since`).

The other lowerings (N-d, Deconvolution, and the per-image path the tests compare with) follow
Caffe's loop: each image is unfolded by im2col (the 2-D Cython kernel, or the N-d one when
``force_nd_im2col`` is set or there are not two spatial axes) into a (group * K) x P column matrix,
K = in_channels/group * prod(kernel), P = output positions, and each group is one product
(:func:`pyskim.kernels.gemm.matmul`). Several images are lowered at once (bounded by
:data:`COL_BUFFER_BYTES`); the column buffers are per-thread scratch arrays shared by all
convolution layers (where Caffe keeps one ``col_buffer_`` per layer), so no pages are faulted in again
on every call.

Sparse modes. A Convolution has one engine slot, :attr:`BaseConvolutionLayer.engine`: ``None`` (the
dense path above), or an object that :mod:`pyskim.sparse` attaches after the Net is built for a
``conv_mode`` other than LOWERED_GEMM / DIRECT_DCONV (as Caffe's layer factory picks an engine outside
the layer). ``engine.forward(bottom, top)`` returns True when it computed the tops, False for the dense
path (an engine that times the modes runs :meth:`ConvolutionLayer.forward_dense` itself);
``weights_changed()`` tells it that new weights were loaded. The layer reads its weights through
``Blob.readonly_data`` and never writes them. When the engine links the in-place ReLU after the layer
(``engine.relu``, a :class:`~pyskim.layers.neuron.ReLUFusion`) and its mode resolves to dense, the
dense product applies that ReLU as it stores its tiles (whole-batch path) instead of the ReLU
layer's separate pass over the top.
"""
import threading

import numpy as np

from ..core.blob import check_allocation
from ..core.layer import Layer, register
from ..errors import NetError
from ..kernels import dense as kernels
from ..kernels import gemm
from ..kernels.validate import check_span

#: The fused convolution products (:mod:`pyskim.kernels.gemm`); None makes Convolution lower image by
#: image as Caffe's loop does (the tests compare both paths).
_fused = gemm

#: Upper bound on the column buffer of one chunk of images (the chunk holds at least one image).
COL_BUFFER_BYTES = 64 << 20
#: Bound on the column matrix of the fused path's bottom gradient (a chunk of images at a time, at
#: least one image).
BATCH_COL_BUFFER_BYTES = 32 << 20

_scratch = threading.local()


def _workspace(slot, shape):
    """A float32 array of ``shape`` backed by this thread's reusable buffer named ``slot``."""
    size = _prod(shape)
    buffers = _scratch.__dict__.setdefault("buffers", {})
    if slot not in buffers or buffers[slot].size < size:
        buffers[slot] = np.empty(size, np.float32)
    return buffers[slot][:size].reshape(shape)


def _prod(values):
    return int(np.prod(values, dtype=np.int64)) if len(values) else 1


def _axis_values(name, cp, field, n, default, minimum):
    """One geometry field of a ConvolutionParameter as a tuple of ``n`` ints: the ``<field>_h`` /
    ``<field>_w`` pair (2-D only), or the repeated field given once or once per spatial axis."""
    has_hw = field != "dilation" and (cp.HasField(f"{field}_h") or cp.HasField(f"{field}_w"))
    repeated = getattr(cp, "kernel_size" if field == "kernel" else field)
    label = "kernel_size" if field == "kernel" else field
    if has_hw:
        if n != 2:
            raise NetError(f"layer '{name}': {field}_h & {field}_w can only be used for 2D convolution")
        if len(repeated):
            raise NetError(f"layer '{name}': either {label} or {field}_h/w should be specified; not both")
        values = (getattr(cp, f"{field}_h"), getattr(cp, f"{field}_w"))
    else:
        allowed = (1, n) if default is None else (0, 1, n)
        if len(repeated) not in allowed:
            raise NetError(f"layer '{name}': {label} must be specified once, or once per spatial dimension "
                           f"({label} specified {len(repeated)} times; {n} spatial dims)")
        if not len(repeated):
            values = (default,) * n
        else:
            values = tuple(repeated[0 if len(repeated) == 1 else i] for i in range(n))
    if any(v < minimum for v in values):
        raise NetError(f"layer '{name}': {label} must be {'positive' if minimum else 'non-negative'} "
                       f"in every spatial dimension, got {list(values)}")
    return tuple(int(v) for v in values)


def conv_geometry(name, cp, num_spatial):
    """(kernel, stride, pad, dilation) tuples from a ConvolutionParameter (``LayerSetUp``)."""
    kernel = _axis_values(name, cp, "kernel", num_spatial, None, 1)
    stride = _axis_values(name, cp, "stride", num_spatial, 1, 1)
    pad = _axis_values(name, cp, "pad", num_spatial, 0, 0)
    dilation = _axis_values(name, cp, "dilation", num_spatial, 1, 1)
    return kernel, stride, pad, dilation


class Lowering:
    """im2col / col2im for one geometry: images (C, *S) <-> columns (C * prod(kernel), P)."""

    def __init__(self, name, kernel, stride, pad, dilation, force_nd):
        self.name = name
        self.kernel, self.stride, self.pad, self.dilation = kernel, stride, pad, dilation
        self.use_2d = len(kernel) == 2 and not force_nd
        #: Caffe's ``is_1x1_``: the column matrix is the image itself.
        self.identity = all(k == 1 and s == 1 and p == 0 for k, s, p in zip(kernel, stride, pad))

    def output_spatial(self, spatial):
        """Caffe's convolution output extent, floor((S + 2p - (d(k-1)+1)) / s) + 1 per axis."""
        out = []
        for size, k, s, p, d in zip(spatial, self.kernel, self.stride, self.pad, self.dilation):
            extent = d * (k - 1) + 1
            if size + 2 * p < extent:
                raise NetError(f"layer '{self.name}': kernel extent {extent} exceeds the padded input "
                               f"size {size + 2 * p}")
            out.append((size + 2 * p - extent) // s + 1)
        return tuple(out)

    def lower(self, images, out):
        """Unfold ``images`` (n, C, *S) into ``out`` (n, C * prod(kernel), P) (Caffe's ``im2col``)."""
        self._per_image(images, out, kernels.im2col, kernels.im2col_nd, ())

    def fold(self, cols, out):
        """Sum columns ``cols`` (n, C * prod(kernel), P) back into ``out`` (n, C, *S), overwriting it
        (Caffe's ``col2im``)."""
        self._per_image(cols, out, kernels.col2im, kernels.col2im_nd, (out.shape[1:],))

    def _per_image(self, source, out, kernel_2d, kernel_nd, leading_args):
        """Run the 2-D kernel (writing into ``out[i]``) or the N-D one (returning the result) on each
        item of ``source`` with ``leading_args`` and this geometry; a 1x1 identity lowering copies."""
        if self.identity:
            out[...] = source.reshape(out.shape)
            return
        geometry = (*leading_args, self.kernel, self.pad, self.stride, self.dilation)
        for i in range(source.shape[0]):
            if self.use_2d:
                kernel_2d(source[i], *geometry, out=out[i])
            else:
                out[i] = kernel_nd(source[i], *geometry)


class BaseConvolutionLayer(Layer):
    """Shared setup of Convolution and Deconvolution (``BaseConvolutionLayer``).

    Any number of bottoms of one shape, one top each, one set of weights. ``reverse`` (Deconvolution)
    swaps the roles of bottom and top in the lowered GEMMs. The weights are viewed as
    (group, conv_out_channels/group, K) and the columns as (n, group, K, P).
    """

    min_bottom = 1
    min_top = 1
    equal_num_bottom_top = True
    reverse = False
    #: The sparse engine running the forward pass, or None (see the module docstring).
    engine = None
    #: The bottom shape and the top shape of the last full reshape (None before the first).
    _reshaped_for = _top_shape = None

    def layer_setup(self, bottom, top):
        cp = self.param.convolution_param
        self._axis = bottom[0].canonical_axis(cp.axis)
        num_spatial = bottom[0].num_axes - self._axis - 1
        geometry = conv_geometry(self.name, cp, num_spatial)
        self._lowering = Lowering(self.name, *geometry, cp.force_nd_im2col)
        self._channels = bottom[0].shape[self._axis]
        self._num_output = cp.num_output
        self._group = cp.group
        if self._num_output <= 0:
            raise NetError(f"layer '{self.name}': convolution_param.num_output must be positive")
        if self._group <= 0 or self._channels % self._group or self._num_output % self._group:
            raise NetError(f"layer '{self.name}': convolution_param.group {self._group} must divide both "
                           f"the input channels ({self._channels}) and num_output ({self._num_output})")
        if self.reverse:
            self._conv_out, self._conv_in = self._channels, self._num_output
        else:
            self._conv_out, self._conv_in = self._num_output, self._channels
        weight_shape = (self._conv_out, self._conv_in // self._group) + geometry[0]
        self._bias_term = cp.bias_term
        specs = [(weight_shape, cp.weight_filler)]
        if self._bias_term:
            specs.append(((self._num_output,), cp.bias_filler))
        if self.blobs:
            if len(self.blobs) != len(specs):
                raise NetError(f"layer '{self.name}': incorrect number of weight blobs ({len(self.blobs)}, "
                               f"expected {len(specs)})")
            for blob, (shape, _), what in zip(self.blobs, specs, ("weight", "bias")):
                if tuple(blob.shape) != tuple(shape):
                    raise NetError(f"layer '{self.name}': incorrect {what} shape: expected {list(shape)}; "
                                   f"instead, shape was {list(blob.shape)}")
        self.make_param_blobs(specs)
        self._kdim = self._conv_in // self._group * _prod(geometry[0])
        self.weights_changed()

    def weights_changed(self):
        """Hook called after the weights were replaced (e.g. loaded from a caffemodel, as SkimCaffe's
        ``WeightAlign``): the attached engine, if any, repacks its weights. The dense path keeps nothing."""
        self._packed = None
        if self.engine is not None:
            self.engine.weights_changed()

    @property
    def axis(self):
        """The channel axis of the bottoms (``convolution_param.axis``, canonical)."""
        return self._axis

    @property
    def lowering(self):
        """This layer's :class:`Lowering` (kernel, stride, pad, dilation; im2col of images)."""
        return self._lowering

    def reshape(self, bottom, top):
        b0 = bottom[0]
        shape = b0.shape
        if shape == self._reshaped_for and all(t.shape == self._top_shape for t in top) \
                and all(b.shape == shape for b in bottom):
            return              # the shapes of the last reshape: every derived size still holds
        axis = self._axis
        if b0.num_axes != axis + 1 + len(self._lowering.kernel):
            raise NetError(f"layer '{self.name}': bottom num_axes may not change ({list(b0.shape)})")
        if b0.shape[axis] != self._channels:
            raise NetError(f"layer '{self.name}': input size incompatible with convolution kernel "
                           f"({b0.shape[axis]} channels, expected {self._channels})")
        for blob in bottom[1:]:
            if blob.shape != b0.shape:
                raise NetError(f"layer '{self.name}': all inputs must have the same shape "
                               f"({list(blob.shape)} vs {list(b0.shape)})")
        self._num = b0.count_range(0, axis)
        in_spatial = tuple(b0.shape[axis + 1:])
        out_spatial = self._output_spatial(in_spatial)
        self._in_spatial, self._out_spatial = in_spatial, out_spatial
        low = self._lowering      # the compiled kernels index in 32 bits: refuse wider geometry here
        for spatial in (in_spatial, out_spatial):
            check_span(f"layer '{self.name}'", spatial, low.kernel, low.pad, low.stride, low.dilation)
        for blob in top:
            blob.reshape(tuple(b0.shape[:axis]) + (self._num_output,) + out_spatial)
        # The image side of im2col is the bottom for Convolution and the top for Deconvolution.
        if self.reverse:
            self._col_image = (self._num_output,) + out_spatial
            self._positions = _prod(in_spatial)
        else:
            self._col_image = (self._channels,) + in_spatial
            self._positions = _prod(out_spatial)
        if not self._lowering.identity:
            check_allocation((self._group * self._kdim, self._positions), f"layer '{self.name}': im2col buffer")
        per_image = self._group * self._kdim * self._positions * 4
        self._chunk = max(1, min(self._num, COL_BUFFER_BYTES // max(per_image, 1)))
        self._batch_chunk = max(1, min(self._num, BATCH_COL_BUFFER_BYTES // max(per_image, 1)))
        self._reshaped_for, self._top_shape = shape, top[0].shape if top else None

    def _output_spatial(self, in_spatial):
        return self._lowering.output_spatial(in_spatial)

    # -- views and GEMMs -------------------------------------------------------------------------
    def _images(self, array):
        """``array`` of a bottom or top as (num, channels, P) (a view)."""
        return array.reshape(self._num, array.shape[self._axis], _prod(array.shape[self._axis + 1:]))

    def _weights(self, array):
        return array.reshape(self._group, self._conv_out // self._group, self._kdim)

    def _chunks(self, size=None):
        size = size or self._chunk
        return [(s, min(s + size, self._num)) for s in range(0, self._num, size)]

    def _lower(self, images):
        """im2col of ``images`` (n, C, P_img) on the im2col side -> columns (n, group, K, P)."""
        n = images.shape[0]
        if self._lowering.identity:
            return images.reshape(n, self._group, self._kdim, self._positions)
        cols = _workspace("cols", (n, self._group * self._kdim, self._positions))
        self._lowering.lower(images.reshape((n,) + self._col_image), cols)
        return cols.reshape(n, self._group, self._kdim, self._positions)

    def _fold(self, cols, images):
        """col2im of ``cols`` (n, group, K, P) into ``images`` (n, C, P_img), overwriting them."""
        n = cols.shape[0]
        self._lowering.fold(cols.reshape(n, self._group * self._kdim, self._positions),
                            images.reshape((n,) + self._col_image))

    def _dense_product(self, cols, out):
        """``out`` (n, group, conv_out/group, P) = W_g . col_g for every image and group."""
        weights = self._weights(self.blobs[0].readonly_data)
        for i, g in np.ndindex(out.shape[:2]):
            gemm.matmul(weights[g], cols[i, g], out=out[i, g])

    def _transposed_product(self, values):
        """W_g^T . values_g for ``values`` (n, group, conv_out/group, P) -> (n, group, K, P)."""
        out = _workspace("product", (values.shape[0], self._group, self._kdim, self._positions))
        weights = self._weights(self.blobs[0].readonly_data)
        for i, g in np.ndindex(out.shape[:2]):
            gemm.matmul(weights[g].T, values[i, g], out=out[i, g])
        return out

    def _accumulate_weight_diff(self, values, cols):
        """weight diff += values_g . col_g^T, image by image (one GEMM per image and group with
        Caffe's beta = 1)."""
        weight_diff = self._weights(self.blobs[0].diff)
        for i, g in np.ndindex(values.shape[:2]):
            gemm.matmul(values[i, g], cols[i, g].T, out=weight_diff[g], accumulate=True)

    def _add_bias(self, top_images):
        if self._bias_term:
            top_images += self.blobs[1].readonly_data[:, None]

    def _accumulate_bias_diff(self, top_diff_images):
        """bias diff += sum of the top diff over positions (per image), then over images."""
        if self._bias_term and self.param_propagate_down[1]:
            self.blobs[1].diff[...] += top_diff_images.sum(axis=2).sum(axis=0)

    def _grouped(self, images):
        """(n, C, P) -> (n, group, C/group, P) view."""
        return images.reshape(images.shape[0], self._group, -1, images.shape[2])

    def _gradient_pairs(self, top, propagate_down, bottom):
        """Caffe's backward loop over the (top, bottom) pairs: add each top's bias gradient, then
        yield ``(propagate_down, top diff, bottom data, bottom diff)``, as (num, C, P) views, for
        each pair that needs a weight or a bottom gradient."""
        weight_grad = self.param_propagate_down[0]
        for t, b, down in zip(top, bottom, propagate_down):
            top_diff = self._images(t.diff)
            self._accumulate_bias_diff(top_diff)
            if weight_grad or down:
                yield down, top_diff, self._images(b.data), self._images(b.diff)


@register("Convolution", "CONVOLUTION")
class ConvolutionLayer(BaseConvolutionLayer):
    """Caffe's ``ConvolutionLayer``: per image, im2col then top_g = W_g . col_g, then + bias.

    Weights are (num_output, channels/group, *kernel). Backward: bias diff += sum of the top diff over
    positions; weight diff += top_diff_g . col_g^T (accumulated); bottom diff =
    col2im(W_g^T . top_diff_g). An attached :attr:`engine` may run the forward instead.
    """

    def _batched(self):
        """Whether the fused whole-batch path applies: 2-D lowering or a 1x1 identity, and no empty
        axis (the per-image path handles empty blobs)."""
        return (_fused is not None and (self._lowering.use_2d or self._lowering.identity)
                and min(self._num, self._kdim, self._positions) > 0)

    def forward_cpu(self, bottom, top):
        engine = self.engine
        if engine is not None and engine.forward(bottom, top):
            return
        fusion = engine.relu if engine is not None else None
        if self.forward_dense(bottom, top, relu=fusion is not None):
            fusion.applied = True           # the linked ReLU's forward has nothing left to do

    def forward_dense(self, bottom, top, relu=False):
        """The dense forward (whatever the engine): the whole-batch product, or Caffe's per-image loop.
        With ``relu`` the whole-batch product of a single top also applies ``max(top, 0)``; returns
        whether it did."""
        batched = self._batched()
        relu = relu and batched and len(top) == 1
        for b, t in zip(bottom, top):
            if batched:
                self._forward_fused(b.data, t.data, relu=relu)
                continue
            x, y = self._images(b.data), self._images(t.data)
            for s, e in self._chunks():
                self._dense_product(self._lower(x[s:e]), self._grouped(y[s:e]))
                self._add_bias(y[s:e])
        return relu

    def backward_cpu(self, top, propagate_down, bottom):
        weight_grad = self.param_propagate_down[0]
        batched = self._batched()
        for down, top_diff, x, bottom_diff in self._gradient_pairs(top, propagate_down, bottom):
            if batched:
                self._backward_fused(top_diff, x, bottom_diff, weight_grad, down)
                continue
            for s, e in self._chunks():
                td = self._grouped(top_diff[s:e])
                if weight_grad:
                    self._accumulate_weight_diff(td, self._lower(x[s:e]))
                if down:
                    self._fold(self._transposed_product(td), bottom_diff[s:e])

    # -- the fused path: im2col inside the products, the whole batch per call ------------------------
    def _as_2d(self, array, channels, spatial):
        """(num, channels, H, W) view of a blob array; a 1x1 identity lowering of any number of
        spatial axes is a 2-D one over (P, 1)."""
        shape = spatial if len(spatial) == 2 else (_prod(spatial), 1)
        return array.reshape((self._num, channels) + tuple(shape))

    def _geometry_2d(self):
        low = self._lowering
        if len(low.kernel) == 2:
            return low.kernel, low.pad, low.stride, low.dilation
        return (1, 1), (0, 0), (1, 1), (1, 1)

    def _forward_fused(self, x, y, relu=False):
        """top = W_g . im2col(x)_g + bias for the whole batch in one product per call (then
        ``max(top, 0)`` with ``relu``)."""
        bias = self.blobs[1].readonly_data if self._bias_term else None
        weights = self.blobs[0].readonly_data
        _fused.conv2d_forward(self._as_2d(x, self._channels, self._in_spatial), weights, bias,
                              *self._geometry_2d(), group=self._group,
                              out=self._as_2d(y, self._num_output, self._out_spatial),
                              packed=self._packed_weights(weights), relu=relu)

    def _packed_weights(self, weights):
        """The weights packed for the product, packed again only when they may have changed since
        (:meth:`pyskim.core.blob.Blob.data_untouched_since`: exact, never a stale copy)."""
        blob = self.blobs[0]
        cached = getattr(self, "_packed", None)
        if cached is None or not blob.data_untouched_since(cached[0]):
            cached = self._packed = (blob.data_mark(), gemm.PackedConvWeights(weights, self._group))
        return cached[1]

    def _backward_fused(self, top_diff, x, bottom_diff, weight_grad, propagate_down):
        """weight diff += td_g . im2col(x)_g^T; bottom diff = col2im(W_g^T . td_g), in chunks of
        images that bound the packed top diff and the column matrix (:data:`BATCH_COL_BUFFER_BYTES`)."""
        x4 = self._as_2d(x, self._channels, self._in_spatial)
        b4 = self._as_2d(bottom_diff, self._channels, self._in_spatial)
        td4 = self._as_2d(top_diff, self._num_output, self._out_spatial)
        geometry = self._geometry_2d()
        flat_geometry = [v for pair in geometry for v in pair]
        input_grad = _fused.input_grad_applies(*geometry[1:], geometry[0], x4.shape[2:], td4.shape[2:])
        for s, e in self._chunks(self._batch_chunk):
            if weight_grad:
                _fused.conv2d_weight_grad(x4[s:e], td4[s:e], self.blobs[0].diff, *geometry, group=self._group)
            if propagate_down and input_grad:
                _fused.conv2d_input_grad(self.blobs[0].readonly_data, td4[s:e], geometry[0], geometry[1],
                                         geometry[3], group=self._group, out=b4[s:e])
            elif propagate_down:
                col = _workspace("batch_cols", (self._group * self._kdim, (e - s) * self._positions))
                _fused.conv2d_column_grad(self.blobs[0].readonly_data, td4[s:e], self._group, out=col)
                kernels.col2im_batch(col, *flat_geometry, b4[s:e])


@register("Deconvolution", "DECONVOLUTION")
class DeconvolutionLayer(BaseConvolutionLayer):
    """Caffe's ``DeconvolutionLayer``, the transpose of Convolution.

    Weights are (channels, num_output/group, *kernel); output extent is
    ``s(S - 1) + d(k - 1) + 1 - 2p``. Forward: top = col2im(W_g^T . x_g) + bias. Backward: bias diff
    += sum of the top diff; weight diff += x_g . im2col(top_diff)_g^T; bottom diff =
    W_g . im2col(top_diff)_g.
    """

    reverse = True

    def _output_spatial(self, in_spatial):
        low = self._lowering
        out = tuple(s * (size - 1) + d * (k - 1) + 1 - 2 * p
                    for size, k, s, p, d in zip(in_spatial, low.kernel, low.stride, low.pad, low.dilation))
        if any(o <= 0 for o in out):
            raise NetError(f"layer '{self.name}': deconvolution output size {list(out)} is not positive")
        return out

    def forward_cpu(self, bottom, top):
        for b, t in zip(bottom, top):
            x, y = self._images(b.data), self._images(t.data)
            for s, e in self._chunks():
                self._fold(self._transposed_product(self._grouped(x[s:e])), y[s:e])
                self._add_bias(y[s:e])

    def backward_cpu(self, top, propagate_down, bottom):
        weight_grad = self.param_propagate_down[0]
        for down, top_diff, x, bottom_diff in self._gradient_pairs(top, propagate_down, bottom):
            for s, e in self._chunks():
                cols = self._lower(top_diff[s:e])
                if weight_grad:
                    self._accumulate_weight_diff(self._grouped(x[s:e]), cols)
                if down:
                    self._dense_product(cols, self._grouped(bottom_diff[s:e]))


@register("Im2col", "IM2COL")
class Im2colLayer(Layer):
    """Caffe's ``Im2colLayer``: the top holds each image's im2col columns,
    (..., C * prod(kernel), *output spatial); backward is col2im of the top diff."""

    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        cp = self.param.convolution_param
        self._axis = bottom[0].canonical_axis(cp.axis)
        num_spatial = bottom[0].num_axes - self._axis - 1
        if num_spatial < 1:
            raise NetError(f"layer '{self.name}': Im2col needs at least one spatial axis after axis "
                           f"{self._axis} (bottom shape {list(bottom[0].shape)})")
        self._lowering = Lowering(self.name, *conv_geometry(self.name, cp, num_spatial),
                                   cp.force_nd_im2col)

    def reshape(self, bottom, top):
        b0, axis = bottom[0], self._axis
        if b0.num_axes != axis + 1 + len(self._lowering.kernel):
            raise NetError(f"layer '{self.name}': bottom num_axes may not change ({list(b0.shape)})")
        out_spatial = self._lowering.output_spatial(tuple(b0.shape[axis + 1:]))
        channels = b0.shape[axis] * _prod(self._lowering.kernel)
        top[0].reshape(tuple(b0.shape[:axis]) + (channels,) + out_spatial)
        self._num = b0.count_range(0, axis)

    def forward_cpu(self, bottom, top):
        b, t = bottom[0], top[0]
        images = b.data.reshape((self._num,) + tuple(b.shape[self._axis:]))
        self._lowering.lower(images, t.data.reshape(self._num, t.shape[self._axis], -1))

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            b, t = bottom[0], top[0]
            images = b.diff.reshape((self._num,) + tuple(b.shape[self._axis:]))
            self._lowering.fold(t.diff.reshape(self._num, t.shape[self._axis], -1), images)


