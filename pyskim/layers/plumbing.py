"""Blob plumbing layers (Split, Concat, Slice, Eltwise, Flatten, Reshape, Crop, Tile, ...)."""
import functools

import numpy as np

from ..core.layer import Layer, canonical_axis, layer_error, register
from ..proto import caffe_pb2

_ELTWISE = caffe_pb2.EltwiseParameter
_REDUCTION = caffe_pb2.ReductionParameter


def _need_axes(layer, blob, what="bottom"):
    """Caffe's ``shape(0)`` CHECK: the layer indexes the first axis, a 0-axis (scalar) blob has none."""
    if blob.num_axes < 1:
        raise layer_error(layer, f"the {what} needs at least one axis, got a scalar blob")


def _refuse_axis_and_legacy(layer, param_name, legacy_field):
    """Concat/Slice LayerSetUp: ``axis`` and the legacy ``*_dim`` may not both be given."""
    param = getattr(layer.param, param_name)
    if param.HasField("axis") and param.HasField(legacy_field):
        raise layer_error(layer, f"either {param_name}.axis or {param_name}.{legacy_field} should be specified; "
                                 "not both")


def _legacy_axis(layer, blob, param, axis_field, legacy_field):
    """Concat/Slice axis: the legacy uint32 ``*_dim`` (no negative indexing) or the canonical ``axis``."""
    if param.HasField(legacy_field):
        dim = getattr(param, legacy_field)
        if dim >= blob.num_axes:
            raise layer_error(layer, f"{legacy_field} {dim} out of range for a bottom of shape "
                                     f"{list(blob.shape)}")
        return dim
    return canonical_axis(layer, blob, getattr(param, axis_field), axis_field)


def _share(top, bottom):
    """Top aliases the bottom's data and diff (``ShareData`` + ``ShareDiff``)."""
    top.share_data(bottom)
    top.share_diff(bottom)


def _nothing(self, *blobs):
    """Nothing to do: the tops alias other blobs, or there is nothing to compute or to reshape."""


def _along(axis, start, stop):
    """Index selecting [start, stop) on ``axis``."""
    return (slice(None),) * axis + (slice(start, stop),)


@register("Split", "SPLIT")
class SplitLayer(Layer):
    """Every top shares its bottom's data; backward sums the top diffs (``SplitLayer``)."""

    exact_num_bottom = 1
    min_top = 1

    def reshape(self, bottom, top):
        for blob in top:
            blob.reshape(bottom[0].shape)
            blob.share_data(bottom[0])

    def forward_cpu(self, bottom, top):
        """Tops share the bottom's data (as Caffe's ShareData), so there is nothing to copy."""

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            diff = bottom[0].diff
            diff[...] = top[0].diff
            for blob in top[1:]:
                diff += blob.diff


@register("Concat", "CONCAT")
class ConcatLayer(Layer):
    """Join bottoms along ``axis`` (or legacy ``concat_dim``); one bottom is shared (``ConcatLayer``)."""

    min_bottom = exact_num_top = 1

    def layer_setup(self, bottom, top):
        _refuse_axis_and_legacy(self, "concat_param", "concat_dim")

    def reshape(self, bottom, top):
        self.axis = _legacy_axis(self, bottom[0], self.param.concat_param, "axis", "concat_dim")
        shape = list(bottom[0].shape)
        for blob in bottom[1:]:
            if blob.num_axes != len(shape) or any(
                    d != e for j, (d, e) in enumerate(zip(shape, blob.shape)) if j != self.axis):
                raise layer_error(self, f"inputs must have the same shape except at axis {self.axis}: "
                                        f"{list(bottom[0].shape)} vs {list(blob.shape)}")
            shape[self.axis] += blob.shape[self.axis]
        top[0].reshape(shape)
        if len(bottom) == 1:
            _share(top[0], bottom[0])

    def forward_cpu(self, bottom, top):
        if len(bottom) > 1:
            np.concatenate([b.data for b in bottom], axis=self.axis, out=top[0].data)

    def backward_cpu(self, top, propagate_down, bottom):
        offset = 0
        for blob, down in zip(bottom, propagate_down):
            size = blob.shape[self.axis]
            if down and len(bottom) > 1:
                blob.diff[...] = top[0].diff[_along(self.axis, offset, offset + size)]
            offset += size


@register("Slice", "SLICE")
class SliceLayer(Layer):
    """Cut the bottom along ``axis`` (or legacy ``slice_dim``) at ``slice_point``s, or into equal
    parts when none are given; one top is shared (``SliceLayer``)."""

    exact_num_bottom = min_top = 1

    def layer_setup(self, bottom, top):
        _refuse_axis_and_legacy(self, "slice_param", "slice_dim")

    def reshape(self, bottom, top):
        p = self.param.slice_param
        self.axis = _legacy_axis(self, bottom[0], p, "axis", "slice_dim")
        length = bottom[0].shape[self.axis]
        points = list(p.slice_point)
        if points:
            if len(points) != len(top) - 1:
                raise layer_error(self, f"slice_param.slice_point gives {len(points)} points for "
                                        f"{len(top)} tops")
            if len(top) > length:
                raise layer_error(self, f"{len(top)} tops exceed the slice axis length {length}")
            bounds = [0] + points + [length]
            if any(b <= a for a, b in zip(bounds[:-2], bounds[1:-1])) or bounds[-2] > length:
                raise layer_error(self, f"slice_param.slice_point {points} must increase within (0, "
                                        f"{length}]")
        else:
            if length % len(top):
                raise layer_error(self, f"{len(top)} tops should evenly divide the slice axis ({length})")
            bounds = [i * (length // len(top)) for i in range(len(top) + 1)]
        self.bounds = bounds
        shape = list(bottom[0].shape)
        for blob, start, end in zip(top, bounds[:-1], bounds[1:]):
            shape[self.axis] = end - start
            blob.reshape(shape)
        if len(top) == 1:
            _share(top[0], bottom[0])

    def forward_cpu(self, bottom, top):
        if len(top) > 1:
            for i, blob in enumerate(top):
                blob.data[...] = bottom[0].data[_along(self.axis, self.bounds[i], self.bounds[i + 1])]

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0] and len(top) > 1:
            for i, blob in enumerate(top):
                bottom[0].diff[_along(self.axis, self.bounds[i], self.bounds[i + 1])] = blob.diff


@register("Eltwise", "ELTWISE")
class EltwiseLayer(Layer):
    """Element-wise PROD, SUM (with per-bottom ``coeff``) or MAX of equal-shaped bottoms
    (``EltwiseLayer``). MAX keeps the winning bottom per element: bottom 1 beats bottom 0 on ties
    (Caffe tests ``a > b``), later bottoms win only when strictly greater."""

    min_bottom, exact_num_top = 2, 1

    def layer_setup(self, bottom, top):
        p = self.param.eltwise_param
        if len(p.coeff) not in (0, len(bottom)):
            raise layer_error(self, f"eltwise_param.coeff needs one value per bottom ({len(bottom)}), got "
                                    f"{len(p.coeff)}")
        if p.operation == _ELTWISE.PROD and len(p.coeff):
            raise layer_error(self, "eltwise_param.coeff is only allowed for SUM")
        self.op = p.operation
        self.coeffs = [np.float32(c) for c in p.coeff] if len(p.coeff) else [np.float32(1)] * len(bottom)
        self.stable_prod_grad = p.stable_prod_grad

    def reshape(self, bottom, top):
        for blob in bottom[1:]:
            if blob.shape != bottom[0].shape:
                raise layer_error(self, f"bottoms must have one shape: {list(bottom[0].shape)} vs "
                                        f"{list(blob.shape)}")
        top[0].reshape(bottom[0].shape)

    def forward_cpu(self, bottom, top):
        out = top[0].data
        if self.op == _ELTWISE.PROD:
            np.multiply(bottom[0].data, bottom[1].data, out=out)
            for blob in bottom[2:]:
                out *= blob.data
        elif self.op == _ELTWISE.SUM:
            out[...] = 0
            for coeff, blob in zip(self.coeffs, bottom):
                out += blob.data if coeff == 1 else coeff * blob.data
        else:
            self.max_idx = (~(bottom[0].data > bottom[1].data)).astype(np.int32)
            out[...] = np.where(self.max_idx, bottom[1].data, bottom[0].data)
            for k, blob in enumerate(bottom[2:], start=2):
                better = blob.data > out
                self.max_idx[better] = k
                out[better] = blob.data[better]

    def backward_cpu(self, top, propagate_down, bottom):
        top_diff = top[0].diff
        for i, blob in enumerate(bottom):
            if not propagate_down[i]:
                continue
            if self.op == _ELTWISE.PROD:
                if self.stable_prod_grad:
                    grad = functools.reduce(np.multiply, [b.data for j, b in enumerate(bottom) if j != i])
                else:
                    grad = top[0].data / blob.data
                blob.diff[...] = grad * top_diff
            elif self.op == _ELTWISE.SUM:
                coeff = self.coeffs[i]
                blob.diff[...] = top_diff if coeff == 1 else coeff * top_diff
            else:
                blob.diff[...] = np.where(self.max_idx == i, top_diff, np.float32(0))


class _AliasLayer(Layer):
    """A top that views the bottom under another shape, sharing data and diff (Flatten, Reshape)."""

    exact_num_bottom = exact_num_top = 1

    def layer_setup(self, bottom, top):
        if top[0] is bottom[0]:
            raise layer_error(self, "this layer does not allow in-place computation")

    def top_shape(self, bottom):
        raise NotImplementedError

    def reshape(self, bottom, top):
        shape = self.top_shape(bottom[0])
        top[0].reshape(shape)
        if top[0].count != bottom[0].count:
            raise layer_error(self, f"output count must match input count: {list(shape)} vs "
                                    f"{list(bottom[0].shape)}")
        _share(top[0], bottom[0])

    forward_cpu = backward_cpu = _nothing


@register("Flatten", "FLATTEN")
class FlattenLayer(_AliasLayer):
    """Merge axes ``axis``..``end_axis`` (inclusive) into one (``FlattenLayer``)."""

    def top_shape(self, bottom):
        p = self.param.flatten_param
        start = canonical_axis(self, bottom, p.axis, "flatten_param.axis")
        end = canonical_axis(self, bottom, p.end_axis, "flatten_param.end_axis")
        if end < start:
            raise layer_error(self, f"flatten_param.end_axis ({end}) precedes flatten_param.axis ({start})")
        shape = bottom.shape
        return shape[:start] + (bottom.count_range(start, end + 1),) + shape[end + 1:]


@register("Reshape")
class ReshapeLayer(_AliasLayer):
    """Replace axes [axis, axis + num_axes) by ``shape``; a 0 copies the bottom's dim, one -1 is
    inferred (``ReshapeLayer``)."""

    def layer_setup(self, bottom, top):
        super().layer_setup(bottom, top)
        dims = list(self.param.reshape_param.shape.dim)
        if dims.count(-1) > 1:
            raise layer_error(self, "reshape_param.shape contains multiple -1 dims; at most one may be given")
        if any(d < -1 for d in dims):
            raise layer_error(self, f"reshape_param.shape {dims} holds a dim below -1")
        self.dims = dims

    def top_shape(self, bottom):
        p = self.param.reshape_param
        n = bottom.num_axes
        start = p.axis if p.axis >= 0 else n + p.axis + 1
        if not 0 <= start <= n:
            raise layer_error(self, f"reshape_param.axis {p.axis} out of range for bottom "
                                    f"{list(bottom.shape)}")
        if p.num_axes < -1:
            raise layer_error(self, "reshape_param.num_axes must be >= 0, or -1 for all")
        end = n if p.num_axes == -1 else start + p.num_axes
        if end > n:
            raise layer_error(self, f"reshape_param axis + num_axes = {end} out of range for "
                                    f"{list(bottom.shape)}")
        new = []
        for i, d in enumerate(self.dims):
            if d == 0:
                if start + i >= n:
                    raise layer_error(self, "reshape_param.shape has a 0 with no corresponding bottom axis "
                                            "to copy")
                d = bottom.shape[start + i]
            new.append(d)
        if -1 in new:
            known = bottom.count_range(0, start) * bottom.count_range(end) * int(
                np.prod([d for d in new if d != -1], dtype=np.int64))
            if known == 0 or bottom.count % known:
                raise layer_error(self, f"bottom count ({bottom.count}) must be divisible by the product of "
                                        f"the given dims ({known})")
            new[new.index(-1)] = bottom.count // known
        return bottom.shape[:start] + tuple(new) + bottom.shape[end:]


@register("Crop")
class CropLayer(Layer):
    """Crop bottom 0 from axis ``axis`` on to the shape of bottom 1 at ``offset``s (one for all axes
    or one per cropped axis); bottom 1 only gives the size and gets no gradient (``CropLayer``)."""

    exact_num_bottom, exact_num_top = 2, 1

    def layer_setup(self, bottom, top):
        p = self.param.crop_param
        start = canonical_axis(self, bottom[0], p.axis, "crop_param.axis")
        if len(p.offset) > 1 and start + len(p.offset) != bottom[0].num_axes:
            raise layer_error(self, f"crop_param.offset needs one value, or one per axis from {start} on")

    def reshape(self, bottom, top):
        p = self.param.crop_param
        start = canonical_axis(self, bottom[0], p.axis, "crop_param.axis")
        if bottom[1].num_axes < bottom[0].num_axes:
            raise layer_error(self, f"reference {list(bottom[1].shape)} has fewer axes than "
                                    f"{list(bottom[0].shape)}")
        offsets, shape = [0] * bottom[0].num_axes, list(bottom[0].shape)
        for i in range(start, bottom[0].num_axes):
            offsets[i] = p.offset[0] if len(p.offset) == 1 else p.offset[i - start] if len(p.offset) else 0
            shape[i] = bottom[1].shape[i]
            if bottom[0].shape[i] - offsets[i] < shape[i]:
                raise layer_error(self, f"the crop for dimension {i} is out-of-bounds with size {shape[i]} "
                                        f"and offset {offsets[i]}")
        self.index = tuple(slice(o, o + s) for o, s in zip(offsets, shape))
        top[0].reshape(shape)

    def forward_cpu(self, bottom, top):
        top[0].data[...] = bottom[0].data[self.index]

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = 0
            bottom[0].diff[self.index] = top[0].diff


@register("Tile")
class TileLayer(Layer):
    """Repeat the block from ``axis`` on ``tiles`` times; backward sums the copies (``TileLayer``)."""

    exact_num_bottom = exact_num_top = 1

    def reshape(self, bottom, top):
        p = self.param.tile_param
        if not p.HasField("tiles"):
            raise layer_error(self, "tile_param.tiles must be specified")
        if p.tiles <= 0:
            raise layer_error(self, f"tile_param.tiles must be positive, got {p.tiles}")
        axis = canonical_axis(self, bottom[0], p.axis, "tile_param.axis")
        self.outer, self.tiles, self.inner = bottom[0].count_range(0, axis), p.tiles, bottom[0].count_range(axis)
        shape = list(bottom[0].shape)
        shape[axis] *= p.tiles
        top[0].reshape(shape)

    def forward_cpu(self, bottom, top):
        top[0].data.reshape(self.outer, self.tiles, -1)[...] = bottom[0].data.reshape(self.outer, 1, -1)

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            copies = top[0].diff.reshape(self.outer, self.tiles, self.inner)
            diff = bottom[0].diff.reshape(self.outer, self.inner)
            diff[...] = copies[:, 0]
            for t in range(1, self.tiles):
                diff += copies[:, t]


@register("Reduction")
class ReductionLayer(Layer):
    """SUM, ASUM, SUMSQ or MEAN over all axes from ``axis`` on, times ``coeff``; the top keeps the
    leading axes (``ReductionLayer``)."""

    exact_num_bottom = exact_num_top = 1

    def reshape(self, bottom, top):
        p = self.param.reduction_param
        self.op = p.operation
        axis = canonical_axis(self, bottom[0], p.axis, "reduction_param.axis")
        top[0].reshape(bottom[0].shape[:axis])
        self.num, self.dim = bottom[0].count_range(0, axis), bottom[0].count_range(axis)
        self.coeff = np.float32(p.coeff)
        if self.op == _REDUCTION.MEAN:
            self.coeff = self.coeff / np.float32(self.dim)

    def forward_cpu(self, bottom, top):
        x = bottom[0].data.reshape(self.num, self.dim)
        if self.op == _REDUCTION.SUMSQ:
            values = np.einsum("ij,ij->i", x, x)
        else:
            values = (np.abs(x) if self.op == _REDUCTION.ASUM else x) @ np.ones(self.dim, dtype=np.float32)
        top[0].data.reshape(self.num)[...] = values * self.coeff if self.coeff != 1 else values

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        scale = top[0].diff.reshape(self.num, 1) * self.coeff
        diff = bottom[0].diff.reshape(self.num, self.dim)
        x = bottom[0].data.reshape(self.num, self.dim)
        if self.op in (_REDUCTION.SUM, _REDUCTION.MEAN):
            diff[...] = scale
        elif self.op == _REDUCTION.ASUM:
            diff[...] = np.sign(x) * scale
        else:
            diff[...] = x * (np.float32(2) * scale)


@register("ArgMax", "ARGMAX")
class ArgMaxLayer(Layer):
    """Indices (and with ``out_max_val`` the values) of the ``top_k`` largest entries, per item or
    along ``axis`` (``ArgMaxLayer``). Ties rank as Caffe's ``partial_sort`` of (value, index) pairs
    under ``std::greater``: the larger index first. No backward."""

    exact_num_bottom = exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.argmax_param
        self.top_k, self.out_max_val = p.top_k, p.out_max_val
        if self.top_k < 1:
            raise layer_error(self, "argmax_param.top_k must not be less than 1")
        self.axis = (canonical_axis(self, bottom[0], p.axis, "argmax_param.axis") if p.HasField("axis")
                     else None)
        limit = bottom[0].count_range(1) if self.axis is None else bottom[0].shape[self.axis]
        if self.top_k > limit:
            raise layer_error(self, f"argmax_param.top_k ({self.top_k}) must be at most the size it ranks "
                                    f"({limit})")

    def reshape(self, bottom, top):
        _need_axes(self, bottom[0])
        if self.axis is not None:
            shape = list(bottom[0].shape)
            shape[self.axis] = self.top_k
        else:
            shape = [1] * max(bottom[0].num_axes, 3)
            shape[0], shape[1], shape[2] = bottom[0].shape[0], 2 if self.out_max_val else 1, self.top_k
        top[0].reshape(shape)

    def _rank(self, x):
        """Top-k indices and values along the last axis, largest value first, ties by larger index."""
        index = x.shape[-1] - 1 - np.argsort(-x[..., ::-1], axis=-1, kind="stable")[..., :self.top_k]
        return index, np.take_along_axis(x, index, axis=-1)

    def forward_cpu(self, bottom, top):
        if self.axis is None:
            x = bottom[0].data.reshape(bottom[0].shape[0], -1)
            index, values = self._rank(x)
            out = top[0].data.reshape(x.shape[0], -1)
            out[:, :self.top_k] = index
            if self.out_max_val:
                out[:, self.top_k:] = values
        else:
            index, values = self._rank(np.moveaxis(bottom[0].data, self.axis, -1))
            result = values if self.out_max_val else index
            top[0].data[...] = np.moveaxis(result, -1, self.axis)


@register("Embed")
class EmbedLayer(Layer):
    """Look up rows of a (input_dim, num_output) table by the indices in the bottom (stored as floats),
    plus a bias; no gradient to the indices (``EmbedLayer``)."""

    exact_num_bottom = exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.embed_param
        if p.num_output <= 0:
            raise layer_error(self, "embed_param.num_output must be positive")
        if p.input_dim <= 0:
            raise layer_error(self, "embed_param.input_dim must be positive")
        self.N, self.K, self.bias_term = p.num_output, p.input_dim, p.bias_term
        specs = [((self.K, self.N), p.weight_filler)]
        if self.bias_term:
            specs.append(((self.N,), p.bias_filler))
        self.make_param_blobs(specs)

    def reshape(self, bottom, top):
        top[0].reshape(tuple(bottom[0].shape) + (self.N,))

    def _indices(self, bottom):
        values = bottom[0].data.ravel()
        index = values.astype(np.int64)
        if index.size and (index.min() < 0 or index.max() >= self.K or np.any(index != values)):
            raise layer_error(self, f"indices must be integers in [0, input_dim = {self.K}), got "
                                    f"{values.min()} to {values.max()}")
        return index

    def forward_cpu(self, bottom, top):
        out = top[0].data.reshape(-1, self.N)
        out[...] = self.blobs[0].data[self._indices(bottom)]
        if self.bias_term:
            out += self.blobs[1].data

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            raise layer_error(self, "can't backpropagate to the Embed layer's index input")
        top_diff = top[0].diff.reshape(-1, self.N)
        if self.param_propagate_down[0]:
            np.add.at(self.blobs[0].diff, self._indices(bottom), top_diff)
        if self.bias_term and self.param_propagate_down[1]:
            self.blobs[1].diff[...] += top_diff.sum(axis=0, dtype=np.float32)


@register("Silence", "SILENCE")
class SilenceLayer(Layer):
    """Consumes bottoms and produces nothing; backward zeroes the bottom diffs (``SilenceLayer``)."""

    min_bottom, exact_num_top = 1, 0

    reshape = forward_cpu = _nothing

    def backward_cpu(self, top, propagate_down, bottom):
        for blob, down in zip(bottom, propagate_down):
            if down:
                blob.diff[...] = 0


@register("Filter")
class FilterLayer(Layer):
    """Keep the items (along axis 0) whose selector, the last bottom, is nonzero; filtered-out items
    get zero diff and the selector gets no gradient (``FilterLayer``). As Caffe, the setup reshape
    keeps the full batch; later reshapes use the selector's values."""

    min_bottom, min_top = 2, 1

    def layer_setup(self, bottom, top):
        if len(top) != len(bottom) - 1:
            raise layer_error(self, f"needs one top per filtered bottom ({len(bottom) - 1}), got {len(top)}")
        self.first_reshape = True

    def reshape(self, bottom, top):
        selector = bottom[-1]
        for blob in bottom:
            _need_axes(self, blob)
        if any(d != 1 for d in selector.shape[1:]):
            raise layer_error(self, f"selector dims must be 1 except the first, got {list(selector.shape)}")
        for blob in bottom[:-1]:
            if blob.shape[:1] != selector.shape[:1]:
                raise layer_error(self, f"bottom {list(blob.shape)} and selector {list(selector.shape)} "
                                        "differ in axis 0")
        self.indices = np.flatnonzero(selector.data.reshape(-1))
        num = bottom[0].shape[0] if self.first_reshape else len(self.indices)
        self.first_reshape = False
        for blob, source in zip(top, bottom):
            blob.reshape((num,) + tuple(source.shape[1:]))

    def forward_cpu(self, bottom, top):
        for blob, source in zip(top, bottom):
            blob.data[...] = source.data[self.indices]

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[-1]:
            raise layer_error(self, "cannot backpropagate to the filter selector (the last bottom)")
        for blob, source, down in zip(top, bottom, propagate_down):
            if down:
                source.diff[...] = 0
                source.diff[self.indices] = blob.diff


@register("Parameter")
class ParameterLayer(Layer):
    """One learnable blob of ``parameter_param.shape`` (zero-initialised), exposed as the top, which
    shares its data and diff (``ParameterLayer``)."""

    exact_num_bottom, exact_num_top = 0, 1

    def layer_setup(self, bottom, top):
        shape = tuple(self.param.parameter_param.shape.dim)
        self.make_param_blobs([(shape, None)])
        top[0].reshape(shape)

    reshape = backward_cpu = _nothing

    def forward_cpu(self, bottom, top):
        _share(top[0], self.blobs[0])


@register("BatchReindex")
class BatchReindexLayer(Layer):
    """``top = bottom0[bottom1]`` along axis 0 (indices stored as floats); backward accumulates into
    bottom 0 and refuses the indices (``BatchReindexLayer``)."""

    exact_num_bottom, exact_num_top = 2, 1

    def reshape(self, bottom, top):
        if bottom[1].num_axes != 1:
            raise layer_error(self, f"the index bottom must be 1-D, got shape {list(bottom[1].shape)}")
        _need_axes(self, bottom[0])
        top[0].reshape((bottom[1].shape[0],) + tuple(bottom[0].shape[1:]))

    def _indices(self, bottom):
        values = bottom[1].data
        if values.size and (values.min() < 0 or values.max() >= bottom[0].shape[0]):
            raise layer_error(self, f"indices must lie in [0, {bottom[0].shape[0]}), got {values.min()} to "
                                    f"{values.max()}")
        return values.astype(np.int64)

    def forward_cpu(self, bottom, top):
        top[0].data[...] = bottom[0].data[self._indices(bottom)]

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[1]:
            raise layer_error(self, "cannot backprop to the index bottom")
        if propagate_down[0]:
            bottom[0].diff[...] = 0
            np.add.at(bottom[0].diff, self._indices(bottom), top[0].diff)
