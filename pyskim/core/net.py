"""Net: a DAG of layers built from a NetParameter, with forward and backward sweeps (``net.cpp``).

Building filters layers by NetState and inserts Split layers (``netgraph``), then wires blobs by name:
a top named like the bottom at the same index is computed in place, shared params (``ParamSpec.name``)
share data and diff with their owner. Backward need is decided like Caffe: from the losses down,
``propagate_down``, ``lr_mult`` and ``force_backward``.
"""
import contextlib
import os

from ..errors import NetError, OutOfMemoryError, WeightsMismatchError
from ..io.blobproto import array_to_blobproto, blobproto_shape
from ..io.caffemodel import BlobValues, CaffemodelWeights
from ..io.hdf5 import load_net_hdf5
from ..io.protofiles import is_hdf5
from ..proto import caffe_pb2
from .blob import Blob
from .layer import create_layer
from .netgraph import filter_net, insert_splits
from .state import log

_POST_BUILD_HOOKS = []


def add_post_build_hook(hook):
    """Run ``hook(net)`` at the end of every Net build, after weights are shared.

    This is how engines are chosen outside the layers, as Caffe's layer factory picks CAFFE or CUDNN:
    :mod:`pyskim.sparse` attaches its convolution / inner-product engines this way. Adding the same
    hook twice is refused."""
    if hook in _POST_BUILD_HOOKS:
        raise NetError(f"post-build hook {hook!r} is already registered")
    _POST_BUILD_HOOKS.append(hook)


class _ListCopy:
    """Declares a read-API method of :class:`Net` that returns a tuple copy of the internal list
    ``field``, or with ``per_layer`` of its entry ``i`` (a layer index). When the class is created,
    the declaration puts in its place a plain method of that name, documented by ``doc``."""

    def __init__(self, field, doc, per_layer=False):
        self.field, self.doc, self.per_layer = field, doc, per_layer

    def __set_name__(self, owner, name):
        field = self.field
        if self.per_layer:
            def method(net, i):
                return tuple(getattr(net, field)[i])
        else:
            def method(net):
                return tuple(getattr(net, field))
        method.__name__, method.__qualname__, method.__doc__ = name, f"{owner.__qualname__}.{name}", self.doc
        setattr(owner, name, method)


class Net:
    """A Caffe network: layers, blobs, learnable params, and the forward/backward sweeps.

    Other modules read a built net through the public accessors below (Caffe's ``net.hpp`` read
    API: ``blob_names()``, ``layer_names()``, ``top_ids(i)``, ...), never through its fields."""

    def __init__(self, param, phase=None, level=None, stages=None):
        param_copy = caffe_pb2.NetParameter()
        param_copy.CopyFrom(param)
        if phase is not None:
            param_copy.state.phase = phase
        if level is not None:
            param_copy.state.level = level
        if stages is not None:
            del param_copy.state.stage[:]
            param_copy.state.stage.extend(stages)
        self.name = param_copy.name
        self.phase = param_copy.state.phase
        self._callbacks = {"before_forward": [], "after_forward": [], "before_backward": [],
                           "after_backward": []}
        self._build(insert_splits(filter_net(param_copy, param_copy.state)))

    # -- construction ------------------------------------------------------------------------------
    def _build(self, param):
        self.layers, self._layer_names = [], []
        self._blobs, self._blob_names, self._blob_need_backward = [], [], []
        self._bottom_ids, self._top_ids, self._bottom_need_backward = [], [], []
        self._layer_need_backward, self._loss_weight_of_blob = [], []
        self._inputs = []
        self._params, self._param_owners, self._param_display_names = [], [], []
        self._param_layer_indices = []
        self.learnable_params, self.params_lr, self.params_weight_decay = [], [], []
        self.params_regularization_type = []
        self._learnable_index, self._param_specs = [], []
        name_to_blob = {}
        available = []
        owner_by_param_name = {}
        for layer_index, lp in enumerate(param.layer):
            if not lp.HasField("phase"):
                lp.phase = self.phase
            if len(lp.propagate_down) not in (0, len(lp.bottom)):
                raise NetError(f"layer '{lp.name}': propagate_down must be given 0 or {len(lp.bottom)} times")
            layer = create_layer(lp)
            self.layers.append(layer)
            self._layer_names.append(lp.name)
            need_backward = False
            bottom_ids, bottom_need = [], []
            for j, blob_name in enumerate(lp.bottom):
                if blob_name not in available:
                    raise NetError(f"Unknown bottom blob '{blob_name}' (layer '{lp.name}', bottom index {j})")
                blob_id = name_to_blob[blob_name]
                available.remove(blob_name)
                bottom_ids.append(blob_id)
                blob_need = self._blob_need_backward[blob_id]
                bottom_need.append(bool(lp.propagate_down[j]) if len(lp.propagate_down) else blob_need)
                need_backward |= blob_need
            top_ids = [self._append_top(lp, j, name_to_blob, available) for j in range(len(lp.top))]
            if layer.auto_top_blobs:
                needed = max(layer.min_top or 0, layer.exact_num_top or 0)
                top_ids += [self._append_top(lp, j, None, None) for j in range(len(top_ids), needed)]
            self._bottom_ids.append(bottom_ids)
            self._bottom_need_backward.append(bottom_need)
            self._top_ids.append(top_ids)
            if lp.type == "Input":
                self._inputs.extend(top_ids)
            with _naming_layer_on_oom(layer):
                layer.setup([self._blobs[b] for b in bottom_ids], [self._blobs[t] for t in top_ids])
            for j, blob_id in enumerate(top_ids):
                self._loss_weight_of_blob[blob_id] = layer.loss(j)
                log.debug("Top shape: %s", self._blobs[blob_id].shape)
            if len(lp.param) > len(layer.blobs):
                raise NetError(f"Too many params specified for layer '{lp.name}' "
                               f"({len(lp.param)} param specs, {len(layer.blobs)} blobs)")
            for param_id in range(len(layer.blobs)):
                spec = lp.param[param_id] if param_id < len(lp.param) else caffe_pb2.ParamSpec()
                layer.param_propagate_down[param_id] = spec.lr_mult != 0
                need_backward |= spec.lr_mult != 0
                self._append_param(layer_index, param_id, spec, owner_by_param_name)
            self._layer_need_backward.append(need_backward)
            if need_backward:
                for blob_id in top_ids:
                    self._blob_need_backward[blob_id] = True
        self._decide_backward(param.force_backward)
        self._outputs = [name_to_blob[name] for name in available]
        self._share_weights()
        # the blob vectors of each layer, built once (Caffe's bottom_vecs_ / top_vecs_)
        self._bottom_vecs = [[self._blobs[b] for b in ids] for ids in self._bottom_ids]
        self._top_vecs = [[self._blobs[t] for t in ids] for ids in self._top_ids]
        for hook in _POST_BUILD_HOOKS:
            hook(self)

    def _append_top(self, lp, j, name_to_blob, available):
        blob_name = lp.top[j] if j < len(lp.top) else "(automatic)"
        if name_to_blob is not None and j < len(lp.bottom) and lp.bottom[j] == blob_name:
            blob_id = name_to_blob[blob_name]
        elif name_to_blob is not None and blob_name in name_to_blob:
            raise NetError(f"Top blob '{blob_name}' produced by multiple sources (layer '{lp.name}')")
        else:
            blob_id = len(self._blobs)
            self._blobs.append(Blob(name=blob_name))
            self._blob_names.append(blob_name)
            self._blob_need_backward.append(False)
            self._loss_weight_of_blob.append(0.0)
            if name_to_blob is not None:
                name_to_blob[blob_name] = blob_id
        if available is not None:
            available.append(blob_name)
        return blob_id

    def _append_param(self, layer_index, param_id, spec, owner_by_param_name):
        layer = self.layers[layer_index]
        net_param_id = len(self._params)
        self._params.append(layer.blobs[param_id])
        self._param_layer_indices.append((layer_index, param_id))
        self._param_specs.append(spec)
        display = spec.name or str(param_id)
        self._param_display_names.append(display)
        if not spec.name or spec.name not in owner_by_param_name:
            if spec.name:
                owner_by_param_name[spec.name] = net_param_id
            self._param_owners.append(-1)
            self._learnable_index.append(len(self.learnable_params))
            self.learnable_params.append(layer.blobs[param_id])
            self.params_lr.append(spec.lr_mult if spec.HasField("lr_mult") else 1.0)
            self.params_weight_decay.append(spec.decay_mult if spec.HasField("decay_mult") else 1.0)
            self.params_regularization_type.append(spec.regularization_type)
            return
        owner_id = owner_by_param_name[spec.name]
        owner_layer = self._param_layer_indices[owner_id][0]
        owner_blob, this_blob = self._params[owner_id], layer.blobs[param_id]
        permissive = spec.share_mode == caffe_pb2.ParamSpec.PERMISSIVE
        if permissive and owner_blob.count != this_blob.count:
            raise NetError(f"Cannot share param '{spec.name}' owned by layer '{self._layer_names[owner_layer]}'"
                           f" with layer '{layer.name}'; count mismatch. Owner layer param shape is "
                           f"{list(owner_blob.shape)}; sharing layer shape is {list(this_blob.shape)}")
        if not permissive and owner_blob.shape != this_blob.shape:
            raise NetError(f"Cannot share param '{spec.name}' owned by layer '{self._layer_names[owner_layer]}'"
                           f" with layer '{layer.name}'; shape mismatch. Owner layer param shape is "
                           f"{list(owner_blob.shape)}; sharing layer expects shape {list(this_blob.shape)}")
        self._param_owners.append(owner_id)
        learnable_id = self._learnable_index[owner_id]
        self._learnable_index.append(learnable_id)
        if spec.HasField("lr_mult"):
            owner_spec = self._param_specs[owner_id]
            if owner_spec.HasField("lr_mult") and owner_spec.lr_mult != spec.lr_mult:
                raise NetError(f"Shared param '{spec.name}' has mismatched lr_mult (layer '{layer.name}')")
            self.params_lr[learnable_id] = spec.lr_mult
        if spec.HasField("decay_mult"):
            owner_spec = self._param_specs[owner_id]
            if owner_spec.HasField("decay_mult") and owner_spec.decay_mult != spec.decay_mult:
                raise NetError(f"Shared param '{spec.name}' has mismatched decay_mult (layer '{layer.name}')")
            self.params_weight_decay[learnable_id] = spec.decay_mult
        if spec.regularization_type:
            self.params_regularization_type[learnable_id] = spec.regularization_type

    def _decide_backward(self, force_backward):
        """Prune backward work not leading to a loss, then apply ``force_backward`` (Net::Init)."""
        under_loss, skip_backprop = set(), set()
        for i in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[i]
            top_names = [self._blob_names[t] for t in self._top_ids[i]]
            contributes = any(layer.loss(j) or name in under_loss for j, name in enumerate(top_names))
            skip = all(name in skip_backprop for name in top_names)
            if self._layer_need_backward[i] and skip:
                self._layer_need_backward[i] = False
                self._bottom_need_backward[i] = [False] * len(self._bottom_ids[i])
            if not contributes:
                self._layer_need_backward[i] = False
            for j, blob_id in enumerate(self._bottom_ids[i]):
                name = self._blob_names[blob_id]
                if contributes:
                    under_loss.add(name)
                else:
                    self._bottom_need_backward[i][j] = False
                if not self._bottom_need_backward[i][j]:
                    skip_backprop.add(name)
        if force_backward:
            for i, layer in enumerate(self.layers):
                self._layer_need_backward[i] = True
                for j, blob_id in enumerate(self._bottom_ids[i]):
                    need = self._bottom_need_backward[i][j] or layer.allow_force_backward(j)
                    self._bottom_need_backward[i][j] = need
                    self._blob_need_backward[blob_id] = self._blob_need_backward[blob_id] or need
                layer.param_propagate_down = [True] * len(layer.blobs)

    def _share_weights(self):
        for net_param_id, owner in enumerate(self._param_owners):
            if owner >= 0:
                self._params[net_param_id].share_data(self._params[owner])
                self._params[net_param_id].share_diff(self._params[owner])

    # -- public read API (Caffe's Net accessors) ----------------------------------------------------
    # Each returns a tuple copy of one internal list (or of one layer's entry in it), so that a
    # caller cannot rewire the net through it.
    blob_names = _ListCopy("_blob_names", "Names of all blobs, by blob id (``Net::blob_names``).")
    layer_names = _ListCopy("_layer_names", "Names of all layers, by layer index (``Net::layer_names``).")
    blob_list = _ListCopy("_blobs", "All blobs, by blob id (``Net::blobs``).")
    bottom_ids = _ListCopy("_bottom_ids", "Blob ids of layer ``i``'s bottoms (``Net::bottom_ids``).", per_layer=True)
    top_ids = _ListCopy("_top_ids", "Blob ids of layer ``i``'s tops (``Net::top_ids``).", per_layer=True)
    bottom_need_backward = _ListCopy("_bottom_need_backward", "Per bottom of layer ``i``, whether its diff is "
                                     "computed (``Net::bottom_need_backward``).", per_layer=True)
    input_blob_indices = _ListCopy("_inputs", "Blob ids of the net's inputs (``Input`` layer tops; "
                                   "``Net::input_blob_indices``).")
    output_blob_indices = _ListCopy("_outputs", "Blob ids of the net's outputs, tops nothing consumes "
                                    "(``Net::output_blob_indices``).")
    param_layer_indices = _ListCopy("_param_layer_indices", "Per net param, its (layer index, blob index) "
                                    "(``Net::param_layer_indices``).")
    param_owners = _ListCopy("_param_owners", "Per net param, the net param id owning its data, or -1 "
                             "(``Net::param_owners``).")
    learnable_param_ids = _ListCopy("_learnable_index", "Per net param, its index in ``learnable_params`` "
                                    "(``Net::learnable_param_ids``).")

    def blob_by_name(self, name):
        """The blob called ``name`` (``Net::blob_by_name``); NetError if there is none."""
        try:
            return self._blobs[self._blob_names.index(name)]
        except ValueError:
            raise NetError(f"Unknown blob name '{name}'") from None

    def layer_by_name(self, name):
        """The layer called ``name`` (``Net::layer_by_name``); NetError if there is none."""
        return self.layers[self.layer_index(name)]

    def layer_index(self, name):
        """Index of the layer called ``name``; NetError if there is none."""
        try:
            return self._layer_names.index(name)
        except ValueError:
            raise NetError(f"Unknown layer name '{name}'") from None

    def bottom_vec(self, i):
        """Layer ``i``'s bottom blobs (``Net::bottom_vecs()[i]``; the net's own list: do not modify it)."""
        return self._bottom_vecs[i]

    def top_vec(self, i):
        """Layer ``i``'s top blobs (``Net::top_vecs()[i]``; the net's own list: do not modify it)."""
        return self._top_vecs[i]

    def layer_need_backward(self, i):
        """Whether layer ``i`` runs backward (``Net::layer_need_backward``)."""
        return self._layer_need_backward[i]

    def blob_loss_weight(self, blob_id):
        """The loss weight of blob ``blob_id`` (``Net::blob_loss_weights()[id]``)."""
        return self._loss_weight_of_blob[blob_id]

    def add_callback(self, when, fn):
        """Call ``fn(layer_index)`` around each layer's pass; ``when`` is ``before_forward``,
        ``after_forward``, ``before_backward`` or ``after_backward`` (pycaffe's net callbacks)."""
        if when not in self._callbacks:
            raise NetError(f"unknown callback point '{when}' (expected one of {sorted(self._callbacks)})")
        self._callbacks[when].append(fn)


    # -- running -----------------------------------------------------------------------------------
    def forward_from_to(self, start, end):
        """Run layers start..end inclusive and return the summed weighted loss (``ForwardFromTo``)."""
        loss = 0.0
        layers, bottoms, tops = self.layers, self._bottom_vecs, self._top_vecs
        before, after = self._callbacks["before_forward"], self._callbacks["after_forward"]
        i = start
        try:        # one handler around the loop: a with-block per layer costs a small net 10% of its time
            for i in range(start, end + 1):
                for fn in before:
                    fn(i)
                loss += layers[i].forward(bottoms[i], tops[i])
                for fn in after:
                    fn(i)
        except MemoryError as e:
            _raise_naming_layer(layers[i], e)
        return loss

    def backward_from_to(self, start, end):
        """Back-propagate through layers start down to end inclusive (``BackwardFromTo``)."""
        for i in range(start, end - 1, -1):
            for fn in self._callbacks["before_backward"]:
                fn(i)
            if self._layer_need_backward[i]:
                with _naming_layer_on_oom(self.layers[i]):
                    self.layers[i].backward(self.top_vec(i), self._bottom_need_backward[i], self.bottom_vec(i))
            for fn in self._callbacks["after_backward"]:
                fn(i)

    _forward = forward_from_to
    _backward = backward_from_to

    def forward_prefilled(self):
        """Forward the whole net; returns (output blobs, loss), as ``Net::Forward(&loss)``."""
        loss = self.forward_from_to(0, len(self.layers) - 1)
        return [self._blobs[i] for i in self._outputs], loss

    def reshape(self):
        for i, layer in enumerate(self.layers):
            with _naming_layer_on_oom(layer):
                layer.reshape(self.bottom_vec(i), self.top_vec(i))

    def clear_param_diffs(self):
        for blob in self.learnable_params:
            blob.diff[...] = 0

    # -- weights -----------------------------------------------------------------------------------
    def copy_trained_layers_from(self, path):
        """Copy the weights of a caffemodel file by layer name (``CopyTrainedLayersFrom``): HDF5 when
        the file has HDF5's signature, else binary, read one blob at a time straight into the net
        (:class:`~pyskim.io.caffemodel.CaffemodelWeights`: the file's bytes, a parsed copy and the
        net's arrays are never all in memory)."""
        path = os.fspath(path)
        if is_hdf5(path):
            load_net_hdf5(self, path)
            return
        with CaffemodelWeights(path) as weights:
            self._copy_trained_layers(weights.layers(), path)

    def copy_trained_layers_from_param(self, source, source_name="weights"):
        """Copy blobs from a NetParameter by layer name (``CopyTrainedLayersFrom``)."""
        source_layers = source.layer if len(source.layer) else source.layers
        self._copy_trained_layers(((lp, [BlobValues(proto) for proto in lp.blobs]) for lp in source_layers),
                                  source_name)

    def _copy_trained_layers(self, source_layers, source_name):
        """Copy ``(LayerParameter, [BlobValues])`` pairs into the same-named layers, telling each
        layer at once that its weights changed (a sparse engine may pack them and release the dense
        copy before the next layer is read)."""
        index = {name: i for i, name in enumerate(self._layer_names)}
        for source_layer, values in source_layers:
            if source_layer.name not in index:
                log.info("Ignoring source layer %s", source_layer.name)
                continue
            target = self.layers[index[source_layer.name]]
            if len(values) != len(target.blobs):
                raise WeightsMismatchError(
                    f"{source_name}: incompatible number of blobs for layer '{source_layer.name}': "
                    f"{len(values)} in the file, {len(target.blobs)} in the net")
            for j, blob_values in enumerate(values):
                _copy_blob(blob_values, target.blobs[j], source_name, source_layer.name, j)
            target.weights_changed()

    def to_proto(self, write_diff=False):
        """NetParameter holding every layer (Split layers too) with its blobs (``Net::ToProto``)."""
        param = caffe_pb2.NetParameter(name=self.name)
        for layer in self.layers:
            lp = param.layer.add()
            lp.CopyFrom(layer.param)
            del lp.blobs[:]
            for blob in layer.blobs:
                lp.blobs.add().CopyFrom(array_to_blobproto(blob.readonly_data, blob.diff if write_diff else None))
        return param

    def share_trained_layers_with(self, other):
        """Share param data with the same-named layers of ``other`` (``ShareTrainedLayersWith``:
        loops over the source net's layers, ignoring those this net lacks)."""
        index = {layer.name: layer for layer in self.layers}
        for source in other.layers:
            target = index.get(source.name)
            if target is None:
                log.info("Ignoring source layer %s", source.name)
                continue
            if len(source.blobs) != len(target.blobs):
                raise WeightsMismatchError(f"Incompatible number of blobs for layer '{source.name}'")
            for target_blob, source_blob in zip(target.blobs, source.blobs):
                if target_blob.shape != source_blob.shape:
                    raise WeightsMismatchError(f"layer '{source.name}': cannot share blob of shape "
                                               f"{list(source_blob.shape)} with {list(target_blob.shape)}")
                target_blob.share_data(source_blob)


@contextlib.contextmanager
def _naming_layer_on_oom(layer):
    """Turn a failed allocation inside ``layer`` into one :class:`OutOfMemoryError` line naming the
    layer (Caffe would abort in ``SyncedMemory``); the memory error's own text names the blob or the
    bytes and shape asked for."""
    try:
        yield
    except MemoryError as e:
        _raise_naming_layer(layer, e)


def _raise_naming_layer(layer, error):
    """Raise the memory ``error`` raised inside ``layer`` as an :class:`OutOfMemoryError` naming it."""
    if isinstance(error, OutOfMemoryError):
        if str(error).startswith("layer '"):
            raise error
        raise OutOfMemoryError(f"layer '{layer.name}' ({layer.type}): {error}") from None
    raise OutOfMemoryError(f"layer '{layer.name}' ({layer.type}): out of memory: {error}") from None


def _copy_blob(values, blob, source_name, layer_name, j):
    """Copy one blob's :class:`~pyskim.io.caffemodel.BlobValues` into ``blob``, comparing shapes like
    ``Blob::ShapeEquals`` (legacy dims right-aligned)."""
    proto = values.proto
    source_shape = blobproto_shape(proto)
    legacy = any(proto.HasField(f) for f in ("num", "channels", "height", "width"))
    if legacy:
        target4 = tuple(blob.legacy_shape(k) for k in (-4, -3, -2, -1))
        fits = blob.num_axes <= 4 and target4 == source_shape
    else:
        fits = tuple(blob.shape) == source_shape
    if not fits:
        raise WeightsMismatchError(
            f"{source_name}: cannot copy param {j} weights from layer '{layer_name}'; shape mismatch. "
            f"Source param shape is {list(source_shape)}; target param shape is {list(blob.shape)}. To "
            f"learn this layer's parameters from scratch rather than copying from a saved net, rename "
            f"the layer.")
    if values.count != blob.count:
        raise WeightsMismatchError(f"{source_name}: layer '{layer_name}' blob {j} holds {values.count} "
                                   f"values for shape {list(source_shape)}")
    values.read_into(blob.data)
