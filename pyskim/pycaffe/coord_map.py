"""Spatial coordinate maps between the tops of a :mod:`~pyskim.pycaffe.net_spec` graph (pycaffe's
``caffe.coord_map``, used by FCN to align and crop score maps).

A map is ``(axis, a, b)``: output coordinate ``y`` relates to input coordinate ``x`` by ``y = a * x + b``
on every axis from ``axis`` on (``a`` and ``b`` are per-axis arrays, or scalars for the identity).
``axis`` None means the layer works pointwise and fits any axis. Maps compose along the graph, so
:func:`coord_map_from_to` relates two tops through their nearest common ancestor, and :func:`crop`
spells the ``Crop`` layer that cuts one top down to the region of another.

The semantics (layer tables, defaults, error types) follow BVLC's ``python/caffe/coord_map.py``
(BSD-2 licence, (c) the BVLC contributors), so FCN net-spec scripts give the same Crop offsets.
"""
import numpy as np

from .net_spec import layers as L

__all__ = ["AxisMismatchException", "UndefinedMapException", "compose", "coord_map",
           "coord_map_from_to", "crop", "inverse"]

#: Layers whose output at a position depends only on the input at that position.
PASS_THROUGH_LAYERS = ['AbsVal', 'BatchNorm', 'Bias', 'BNLL', 'Dropout', 'Eltwise', 'ELU', 'Log', 'LRN',
                       'Exp', 'MVN', 'Power', 'ReLU', 'PReLU', 'Scale', 'Sigmoid', 'Split', 'TanH',
                       'Threshold']


class UndefinedMapException(Exception):
    """The layer has no coordinate mapping (e.g. InnerProduct: every output sees every input)."""


class AxisMismatchException(Exception):
    """Two maps act on different axes and cannot be composed."""


def _vector(value):
    return np.array(value, ndmin=1)


def conv_params(fn):
    """``(axis, stride, effective kernel extent, pad)`` of a Convolution/Deconvolution/Pooling/Im2col
    layer, as arrays; the effective extent of a dilated kernel is ``(k - 1) * dilation + 1``."""
    params = fn.params.get('convolution_param', fn.params)
    axis = params.get('axis', 1)
    legacy = {'pad_h', 'pad_w', 'kernel_h', 'kernel_w', 'stride_h', 'stride_w'} & set(fn.params)
    if legacy:
        raise AssertionError('cropping does not support legacy _h/_w params')
    kernel = _vector(params['kernel_size'])
    dilation = _vector(params.get('dilation', 1))
    return (axis, _vector(params.get('stride', 1)), (kernel - 1) * dilation + 1,
            _vector(params.get('pad', 0)))


def crop_params(fn):
    """``(axis, offset)`` of a Crop layer, with Caffe's defaults (axis 2, offset 0)."""
    params = fn.params.get('crop_param', fn.params)
    return params.get('axis', 2), _vector(params.get('offset', 0))


def coord_map(fn):
    """The map ``(axis, a, b)`` of one layer (a :class:`~pyskim.pycaffe.net_spec.Function`).

    Convolution-like layers scale by ``1 / stride`` and shift by ``(pad - (k - 1) / 2) / stride``;
    Deconvolution is their inverse; Crop shifts by ``-offset``; pointwise layers are the identity
    ``(None, 1, 0)``. Anything else raises :class:`UndefinedMapException`.
    """
    kind = fn.type_name
    if kind in ('Convolution', 'Pooling', 'Im2col'):
        axis, stride, extent, pad = conv_params(fn)
        return axis, 1 / stride, (pad - (extent - 1) / 2) / stride
    if kind == 'Deconvolution':
        axis, stride, extent, pad = conv_params(fn)
        return axis, stride, (extent - 1) / 2 - pad
    if kind in PASS_THROUGH_LAYERS:
        return None, 1, 0
    if kind == 'Crop':
        axis, offset = crop_params(fn)
        return axis - 1, 1, -offset     # Crop's axis counts the first cropped axis; maps count the one before
    raise UndefinedMapException(kind)


def compose(base_map, next_map):
    """Apply ``next_map`` after ``base_map``: scales multiply, and the next shift is scaled by the
    base scale."""
    ax1, a1, b1 = base_map
    ax2, a2, b2 = next_map
    if ax1 is None:
        axis = ax2
    elif ax2 is None or ax1 == ax2:
        axis = ax1
    else:
        raise AxisMismatchException(f"cannot compose maps on axes {ax1} and {ax2}")
    return axis, a1 * a2, a1 * b2 + b1


def inverse(coord_map):
    """The map back from output to input coordinates."""
    axis, a, b = coord_map
    return axis, 1 / a, -b / a


def _mappable_bottoms(top):
    # A Crop layer's second bottom only gives the reference size: coordinates flow from the first.
    bottoms = top.fn.inputs
    return bottoms[:1] if top.fn.type_name == 'Crop' else bottoms


def _ancestor_maps(start):
    """Walk the graph back from ``start`` through layers with a coordinate map, yielding each top as
    it is reached with the composed map from ``start``'s coordinates to that top's."""
    maps = {start: (None, 1, 0)}
    frontier = {start}
    while frontier:
        top = frontier.pop()
        yield top, maps[top]
        try:
            step = coord_map(top.fn)
        except UndefinedMapException:
            continue
        for bottom in _mappable_bottoms(top):
            maps[bottom] = compose(maps[top], step)
            frontier.add(bottom)


def coord_map_from_to(top_from, top_to):
    """The map from coordinates of ``top_from`` to those of ``top_to``.

    Walks the graph back from ``top_from`` recording the composed map to every ancestor, then back
    from ``top_to`` until it meets one of them, and joins the two halves. Raises RuntimeError when the
    tops share no ancestor through spatial layers.
    """
    from_maps = dict(_ancestor_maps(top_from))
    for top, to_map in _ancestor_maps(top_to):
        if top in from_maps:
            return compose(to_map, inverse(from_maps[top]))
    raise RuntimeError('Could not compute map between tops; are they connected by spatial layers?')


def crop(top_from, top_to):
    """A ``Crop`` layer (net-spec Top) cutting ``top_from`` to the region and size of ``top_to``.

    Raises AssertionError (even under ``python -O``) when the tops differ in scale, or the offset is
    negative (``top_from`` smaller than ``top_to``) or fractional.
    """
    axis, a, b = coord_map_from_to(top_from, top_to)
    if not np.all(np.asarray(a) == 1):
        raise AssertionError(f'scale mismatch on crop (a = {a})')
    if not np.all(np.asarray(b) <= 0):
        raise AssertionError(f'cannot crop negative offset (b = {b})')
    if not np.all(np.round(b) == b):
        raise AssertionError(f'cannot crop noninteger offset (b = {b})')
    offset = [int(v) for v in -np.round(_vector(b)).astype(int)]
    return L.Crop(top_from, top_to, crop_param={"axis": axis + 1, "offset": offset})
