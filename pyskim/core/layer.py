"""The Layer contract and the layer registry (Caffe's ``layer.hpp`` and ``layer_factory``).

A layer subclass implements ``layer_setup`` (read params, create learnable blobs), ``reshape`` (size
the tops from the bottoms), ``forward_cpu`` and ``backward_cpu``; it declares its arity with class
attributes that ``setup`` checks. Subclasses register under their type string and V1 enum name with
:func:`register`. :func:`layer_error` and :func:`canonical_axis` are the error and axis helpers the
layers share.
"""
import difflib
import operator

import numpy as np

from ..errors import KernelArgumentError, NetError, UnknownLayerTypeError
from ..io.blobproto import blobproto_to_array
from .blob import Blob
from .fillers import fill

LAYER_REGISTRY = {}


def registration_names(registry, registry_name, names, replaces=(), error=NetError):
    """The distinct ``names`` under which something may be added to ``registry`` (a dict), as Caffe's
    registries: a name already registered is refused (Caffe CHECK-fails "... already registered")
    unless ``replaces`` (a name or a tuple of names) names it, the explicit way to override an entry.
    A name in ``replaces`` must be one of ``names`` and registered already. Errors are ``error``,
    naming the registry and the name. Shared by the layer, solver and regularizer registries."""
    names = tuple(dict.fromkeys(names))
    replaced = (replaces,) if isinstance(replaces, str) else tuple(replaces)
    for name in replaced:
        if name not in names:
            raise error(f"{registry_name}: replaces '{name}', which is not one of the names {list(names)}")
        if name not in registry:
            raise error(f"{registry_name}: replaces '{name}', which is not registered")
    for name in names:
        if name in registry and name not in replaced:
            holder = getattr(registry[name], "__qualname__", repr(registry[name]))
            raise error(f"{registry_name}: '{name}' is already registered ({holder}); "
                        f"pass replaces='{name}' to replace it")
    return names


def register(*type_names, replaces=()):
    """Class decorator: register a Layer subclass under each given type name (its type string and,
    where Caffe has one, its V1 enum name; the two may be equal), as Caffe's ``REGISTER_LAYER_CLASS``.
    A name already registered is refused unless ``replaces`` names it (see
    :func:`registration_names`)."""
    names = registration_names(LAYER_REGISTRY, "layer registry", type_names, replaces)

    def decorate(cls):
        for name in names:
            LAYER_REGISTRY[name] = cls
        if cls.__dict__.get("type") is None:
            cls.type = names[0]
        return cls
    return decorate


def layer_type_list():
    """Registered type strings, sorted (``caffe.layer_type_list``)."""
    return sorted(LAYER_REGISTRY)


def create_layer(param):
    """Instantiate the layer a LayerParameter names; unknown types list the closest known ones."""
    cls = LAYER_REGISTRY.get(param.type)
    if cls is None:
        close = difflib.get_close_matches(param.type, LAYER_REGISTRY, n=3, cutoff=0.5)
        hint = f"; closest known types: {', '.join(close)}" if close else ""
        raise UnknownLayerTypeError(f"layer '{param.name}': unknown layer type '{param.type}'{hint}")
    return cls(param)


def layer_error(layer, message):
    """A :class:`NetError` naming the layer and its type: ``layer 'name' of type T: message``."""
    return NetError(f"layer '{layer.name}' of type {layer.type}: {message}")


def canonical_axis(layer, blob, axis, field):
    """Caffe's ``Blob::CanonicalAxisIndex``: ``axis`` in [-num_axes, num_axes) as a non-negative
    index; out of range raises :func:`layer_error` naming the parameter ``field``."""
    n = blob.num_axes
    if not -n <= axis < n:
        raise layer_error(layer, f"{field} {axis} out of range for a bottom of shape {list(blob.shape)}")
    return axis + n if axis < 0 else axis


#: The arity checks of ``Layer::CheckBlobCounts``, in Caffe's order: (class attribute holding the
#: limit, the blobs it counts, the test that fails, Caffe's wording with ``{}`` for the limit).
_BLOB_COUNT_RULES = (
    ("exact_num_bottom", "bottom", operator.ne, "takes {} bottom blob(s) as input"),
    ("min_bottom", "bottom", operator.lt, "takes at least {} bottom blob(s) as input"),
    ("max_bottom", "bottom", operator.gt, "takes at most {} bottom blob(s) as input"),
    ("exact_num_top", "top", operator.ne, "produces {} top blob(s) as output"),
    ("min_top", "top", operator.lt, "produces at least {} top blob(s) as output"),
    ("max_top", "top", operator.gt, "produces at most {} top blob(s) as output"),
)


class Layer:
    """Base of every layer. Mirrors Caffe's Layer: SetUp, Reshape, Forward, Backward, loss weights."""

    type = None
    exact_num_bottom = None
    min_bottom = None
    max_bottom = None
    exact_num_top = None
    min_top = None
    max_top = None
    equal_num_bottom_top = False
    auto_top_blobs = False
    #: loss weight given to top 0 when the prototxt sets none (1 for loss layers, as LossLayer).
    default_loss_weight = 0.0

    def __init__(self, param):
        self.param = param
        self.name = param.name
        self.phase = param.phase
        self.blobs = [_blob_from_proto(b, f"{param.name}/{i}") for i, b in enumerate(param.blobs)]
        self.param_propagate_down = [True] * len(self.blobs)
        self.loss_weights = []
        self._weighted_tops = []        # (top index, loss weight) of the tops with a nonzero weight

    # -- the contract ------------------------------------------------------------------------------
    def layer_setup(self, bottom, top):
        """Read parameters and create learnable blobs (``LayerSetUp``)."""

    def weights_changed(self):
        """Called after ``blobs`` got new values from outside (a caffemodel load); a layer that keeps
        state derived from its weights (an attached sparse engine) drops it here. Nothing by default."""

    def reshape(self, bottom, top):
        """Size the tops (and internal buffers) from the bottoms (``Reshape``); every layer defines it."""
        raise NotImplementedError(f"{type(self).__name__}.reshape")

    def forward_cpu(self, bottom, top):
        """Compute the tops from the bottoms (``Forward_cpu``); every layer defines it."""
        raise NotImplementedError(f"{type(self).__name__}.forward_cpu")

    def backward_cpu(self, top, propagate_down, bottom):
        """Default for layers Caffe gives no backward: refuse to propagate anything."""
        if any(propagate_down):
            raise NetError(f"layer '{self.name}' of type {self.type} cannot back-propagate to its bottoms")

    def allow_force_backward(self, bottom_index):
        return True

    # -- driver ----------------------------------------------------------------------------------
    def setup(self, bottom, top):
        """Check arity, run ``layer_setup`` and ``reshape``, set loss weights (``Layer::SetUp``)."""
        self.check_blob_counts(bottom, top)
        self.layer_setup(bottom, top)
        self.reshape(bottom, top)
        self.set_loss_weights(top)

    def forward(self, bottom, top):
        """Reshape, compute, and return the weighted loss of the tops (``Layer::Forward``)."""
        self.reshape(bottom, top)
        if top and all(blob.count == 0 for blob in top):
            return 0.0          # nothing to compute (Caffe's loops run over zero items)
        weighted = self._weighted_tops
        if weighted and any(blob.count == 0 for blob in bottom):
            for blob in top:    # a loss over an empty batch: zero, as Caffe's sums over no items
                blob.data[...] = 0
            return 0.0
        try:
            self.forward_cpu(bottom, top)
        except KernelArgumentError as e:        # name the layer whose parameters the kernel refused
            raise KernelArgumentError(f"layer '{self.name}' ({self.type}): {e}") from None
        loss = 0.0
        for j, weight in weighted:
            loss += float(np.dot(top[j].data.ravel(), top[j].diff.ravel()))
        return loss

    def backward(self, top, propagate_down, bottom):
        if bottom and all(blob.count == 0 for blob in bottom):
            return              # no bottom diff to write and no item to add to the param diffs
        try:
            self.backward_cpu(top, propagate_down, bottom)
        except KernelArgumentError as e:
            raise KernelArgumentError(f"layer '{self.name}' ({self.type}): {e}") from None

    def loss(self, top_index):
        return self.loss_weights[top_index] if top_index < len(self.loss_weights) else 0.0

    def set_loss_weights(self, top):
        """Store per-top loss weights and preset each weighted top's diff to its weight."""
        weights = list(self.param.loss_weight)
        if not weights and self.default_loss_weight and top:
            weights = [self.default_loss_weight]
        if weights and len(weights) != len(top):
            if len(weights) < len(top) and len(self.param.loss_weight) == 0:
                weights += [0.0] * (len(top) - len(weights))
            else:
                raise NetError(f"layer '{self.name}': loss_weight must be unspecified or given once per "
                               f"top ({len(top)} tops, {len(weights)} weights)")
        self.loss_weights = weights or [0.0] * len(top)
        self._weighted_tops = [(j, w) for j, w in enumerate(self.loss_weights) if w]
        for top_blob, weight in zip(top, self.loss_weights):
            if weight:
                top_blob.diff[...] = weight

    def check_blob_counts(self, bottom, top):
        """Caffe's ``Layer::CheckBlobCounts``: the arity the class attributes declare, checked in
        Caffe's order; the first violation raises a NetError in Caffe's words."""
        counts = {"bottom": len(bottom), "top": len(top)}
        for attribute, side, violated, wording in _BLOB_COUNT_RULES:
            limit = getattr(self, attribute)
            if limit is not None and violated(counts[side], limit):
                raise NetError(f"layer '{self.name}' of type {self.type} {wording.format(limit)}, got {counts[side]}")
        if self.equal_num_bottom_top and counts["bottom"] != counts["top"]:
            raise NetError(f"layer '{self.name}' of type {self.type} needs as many top blobs as bottom blobs")

    # -- helpers for subclasses --------------------------------------------------------------------
    def make_param_blobs(self, specs):
        """Create learnable blobs from ``[(shape, filler_param or None), ...]`` unless the prototxt
        carried them already (Caffe logs "Skipping parameter initialization" then). Checks shapes of
        pre-existing blobs."""
        if self.blobs:
            if len(self.blobs) != len(specs):
                raise NetError(f"layer '{self.name}': {len(self.blobs)} parameter blobs given, "
                               f"{len(specs)} expected")
            return
        for i, (shape, filler) in enumerate(specs):
            blob = Blob(shape, name=f"{self.name}/{i}")
            if filler is not None:
                fill(blob, filler, owner=self.name)
            self.blobs.append(blob)
        self.param_propagate_down = [True] * len(self.blobs)

    def __repr__(self):
        return f"<{type(self).__name__} '{self.name}' ({self.type})>"


def _blob_from_proto(proto, name):
    array = blobproto_to_array(proto)
    blob = Blob(array.shape, name=name)
    blob.data[...] = array
    return blob
