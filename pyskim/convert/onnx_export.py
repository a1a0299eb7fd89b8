"""Export a Caffe / pyskim net (prototxt + caffemodel) to ONNX (opset 17), for the layer types ONNX has.

The net is built by pyskim in the TEST phase (so include/exclude rules, split insertion, upgrades of
old formats and shape inference are Caffe's), then each layer becomes one or more ONNX nodes, with
the weights as initializers. With ``sparse_initializers``, a weight tensor that is mostly zeros (a
pruned net) is stored as an ONNX ``sparse_initializer`` instead: its nonzero values and their
linearized int64 indices, wherever that takes fewer bytes; onnxruntime loads such models as they are.
Shapes are static: the ONNX graph has the net's input shapes (override them with ``input_shapes``).
Caffe's in-place layers get fresh tensor names; every net output keeps its blob name. The per-type mapping, and how Caffe's semantics are kept (ceil pooling, the AVE pooling
divisor, BatchNorm's scale factor, LRN, ...), is in :mod:`pyskim.convert.onnx_layers`.

Layers that cannot be exported (data layers, losses, Python layers, ...) raise ConversionError
naming the layer, its type and the reason, before anything is built.
"""
import numpy as np

from ..core.netgraph import filter_net
from ..errors import ConversionError, NetError
from ..io.files import atomic_write
from ..io.upgrade import read_net_text, upgrade_net
from ..layers import LAYER_REGISTRY
from ..proto import caffe_pb2
from ..pycaffe.net import Net
from . import onnx_layers

OPSET = 17
IR_VERSION = 8  # the IR version that goes with opset 17

_DATA_TYPES = {"Data", "ImageData", "HDF5Data", "MemoryData", "WindowData", "DummyData"}
_REASONS = {
    "Python": "Python layers run arbitrary Python code, which ONNX cannot express",
    "HDF5Output": "it writes HDF5 files; ONNX graphs have no side effects",
    "SPP": "spatial pyramid pooling is not exported (no ONNX operator; write it as Pooling + Concat)",
    "Im2col": "im2col has no ONNX operator",
    "Filter": "its output shape depends on the data (the selector bottom), ONNX export needs static shapes",
    "BatchReindex": "its output depends on the index values at run time (not exported)",
}


def _onnx():
    try:
        import onnx
        import onnx.checker
        import onnx.helper
        import onnx.numpy_helper
    except ImportError:
        raise ConversionError("ONNX export needs the 'onnx' package (pip install 'pyskim[onnx]')") from None
    return onnx


def canonical_type(type_name):
    """The layer type an exporter handles: V1 upper-case names and aliases resolved."""
    cls = LAYER_REGISTRY.get(type_name)
    name = getattr(cls, "type", None) or type_name
    return onnx_layers.ALIASES.get(name, name)


def unsupported_reason(type_name):
    """Why a layer type cannot be exported, or None when it can."""
    t = canonical_type(type_name)
    if t in onnx_layers.EMITTERS:
        return None
    if t in _DATA_TYPES:
        return ("data layers read their data from files or memory; export a deploy prototxt whose "
                "inputs are Input layers")
    if t.endswith("Loss") or t == "Accuracy":
        return "loss and accuracy layers are for training and testing; export the deploy prototxt"
    if t in _REASONS:
        return _REASONS[t]
    if t not in LAYER_REGISTRY:
        return "unknown layer type"
    return "no ONNX export is implemented for this layer type"


def check_exportable(net_param, phase=caffe_pb2.TEST):
    """Raise ConversionError for the first layer (after phase filtering) that cannot be exported."""
    state = caffe_pb2.NetState()
    state.CopyFrom(net_param.state)
    state.phase = phase
    for lp in filter_net(net_param, state).layer:
        reason = unsupported_reason(lp.type)
        if reason:
            raise ConversionError(f"layer '{lp.name}' (type {lp.type}): cannot convert to ONNX: {reason}")


class GraphBuilder:
    """Collects ONNX nodes and initializers with unique names; with ``sparse_initializers``, float32
    initializers that are smaller stored sparse go to ``sparse_initializers``."""

    def __init__(self, onnx, reserved=(), sparse_initializers=False):
        self.onnx = onnx
        self.nodes, self.initializers, self.sparse_initializers = [], [], []
        self.sparse = sparse_initializers
        self.used = set(reserved)
        self._node_names = set()

    def unique(self, base):
        name, k = base, 1
        while name in self.used:
            name, k = f"{base}_{k}", k + 1
        self.used.add(name)
        return name

    def const(self, base, array, dtype=np.float32):
        """An initializer holding ``array`` (as ``dtype``); returns its name."""
        name = self.unique(base)
        array = np.ascontiguousarray(np.asarray(array, dtype=dtype))
        sparse = self._sparse_tensor(name, array) if self.sparse and array.dtype == np.float32 else None
        if sparse is not None:
            self.sparse_initializers.append(sparse)
        else:
            self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def _sparse_tensor(self, name, array):
        """``array`` as a SparseTensorProto (values named ``name``, linearized int64 indices in
        ascending order, the dense dims), or None when that is not smaller than the dense tensor.
        A value counts as zero when all its bits are (``-0.0`` is kept, so the weights stay exact)."""
        flat = array.reshape(-1)
        indices = np.flatnonzero(flat.view(np.uint32))
        if indices.size * (flat.itemsize + 8) >= flat.nbytes:
            return None
        helper = self.onnx.numpy_helper
        values = helper.from_array(flat[indices], name)
        return self.onnx.helper.make_sparse_tensor(values, helper.from_array(indices.astype(np.int64)),
                                                   list(array.shape))

    def ints(self, base, values):
        return self.const(base, np.asarray(values, np.int64).reshape(-1), np.int64)

    def emit(self, ctx):
        """Emit the nodes of one layer (:func:`emit_layer`); the emitters of fused layers call it for
        each stage."""
        emit_layer(self, ctx)

    def node(self, layer_name, op_type, inputs, outputs, **attrs):
        """Add a node; ``outputs`` is a list of names or a number of fresh ones. Returns the outputs."""
        if isinstance(outputs, int):
            outputs = [self.unique(f"{layer_name}/{op_type.lower()}") for _ in range(outputs)]
        name, k = layer_name, 1
        while name in self._node_names:
            name, k = f"{layer_name}/{op_type}_{k}", k + 1
        self._node_names.add(name)
        attrs = {key: value for key, value in attrs.items() if value is not None}
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), list(outputs), name=name, **attrs))
        return outputs


class LayerContext:
    """What an emitter gets for one layer: names, parameters, weights, tensor names and shapes."""

    def __init__(self, layer, x, y, in_shapes, out_shapes):
        self.layer = layer
        self.name = layer.name
        self.type = canonical_type(layer.type)
        self.param = layer.param
        self.blobs = [np.asarray(b.data, np.float32) for b in layer.blobs]
        self.x, self.y = list(x), list(y)
        self.in_shapes = [tuple(s) for s in in_shapes]
        self.out_shapes = [tuple(s) for s in out_shapes]

    def fail(self, reason):
        return ConversionError(f"layer '{self.name}' (type {self.param.type or self.type}): cannot convert "
                               f"to ONNX: {reason}")


def emit_layer(g, ctx):
    """Emit the nodes of one layer (dispatch on its type)."""
    emitter = onnx_layers.EMITTERS.get(ctx.type)
    if emitter is None:
        raise ctx.fail(unsupported_reason(ctx.type))
    emitter(g, ctx)


def net_to_onnx(net, model_name=None, opset=OPSET, check=True, doc="", outputs=None,
                sparse_initializers=False):
    """Convert a built pyskim Net (weights loaded, shapes set) to an ``onnx.ModelProto``.

    ``outputs``: blob names to expose as graph outputs (default: the net's outputs); a blob computed
    in place gives its final value, as ``net.blobs`` holds after a forward pass.
    ``sparse_initializers``: store mostly-zero weights as ONNX sparse initializers (module docstring)."""
    onnx = _onnx()
    if opset < 13:
        raise ConversionError(f"opset {opset} is too old; the exporter emits opset 13+ operators (use {OPSET})")
    blob_names, blobs, layer_names = net.blob_names(), net.blob_list(), net.layer_names()
    inputs = net.input_blob_indices()
    for name, layer in zip(layer_names, net.layers):
        reason = unsupported_reason(layer.type)
        if reason:
            raise ConversionError(f"layer '{name}' (type {layer.type}): cannot convert to ONNX: {reason}")
    g = GraphBuilder(onnx, reserved=set(blob_names), sparse_initializers=sparse_initializers)
    make_info = onnx.helper.make_tensor_value_info
    current, graph_inputs = {}, []
    for blob_id in inputs:
        current[blob_id] = blob_names[blob_id]
        graph_inputs.append(make_info(blob_names[blob_id], onnx.TensorProto.FLOAT, list(blobs[blob_id].shape)))
    last_writer = {}
    for li in range(len(net.layers)):
        for t in net.top_ids(li):
            last_writer[t] = li
    final_owner = {}
    for li, (name, layer) in enumerate(zip(layer_names, net.layers)):
        bottoms, tops = net.bottom_ids(li), net.top_ids(li)
        if canonical_type(layer.type) == "Input":
            continue
        out_names = []
        for t in tops:
            blob = blob_names[t]
            if last_writer[t] == li and t not in inputs and final_owner.setdefault(blob, t) == t:
                out_names.append(blob)
            else:
                out_names.append(g.unique(f"{blob}/{name}"))
        ctx = LayerContext(layer, [current[b] for b in bottoms], out_names,
                           [blobs[b].shape for b in bottoms], [blobs[t].shape for t in tops])
        emit_layer(g, ctx)
        for t, out in zip(tops, out_names):
            current[t] = out
    if outputs is None:
        output_ids = list(net.output_blob_indices())
    else:
        index = {name: i for i, name in enumerate(blob_names)}
        missing = [name for name in outputs if name not in index]
        if missing:
            raise ConversionError(f"requested outputs {missing} are not blobs of the net")
        output_ids = [index[name] for name in outputs]
    graph_outputs = [make_info(current[i], onnx.TensorProto.FLOAT, list(blobs[i].shape)) for i in output_ids]
    graph = onnx.helper.make_graph(g.nodes, model_name or net.name or "pyskim_net", graph_inputs, graph_outputs,
                                   initializer=g.initializers, sparse_initializer=g.sparse_initializers)
    model = onnx.helper.make_model(graph, producer_name="pyskim", doc_string=doc,
                                   opset_imports=[onnx.helper.make_opsetid("", opset)])
    model.ir_version = IR_VERSION if opset <= 17 else onnx.IR_VERSION
    if check:
        try:
            onnx.checker.check_model(model)
        except onnx.checker.ValidationError as e:
            raise ConversionError(f"the exported ONNX model does not validate: {e}") from None
    return model


def _apply_input_shapes(net_param, input_shapes):
    """Set the shapes of the Input layers' tops: a list (in top order) or a dict by blob name."""
    tops = [(lp, j, top) for lp in net_param.layer if canonical_type(lp.type) == "Input"
            for j, top in enumerate(lp.top)]
    if isinstance(input_shapes, dict):
        known = {top for _, _, top in tops}
        unknown = sorted(set(input_shapes) - known)
        if unknown:
            raise ConversionError(f"--input-shape names {unknown}, the net's inputs are {sorted(known)}")
        wanted = [input_shapes.get(top) for _, _, top in tops]
    else:
        wanted = list(input_shapes)
        if len(wanted) > len(tops):
            raise ConversionError(f"{len(wanted)} input shapes given, the net has {len(tops)} inputs "
                                  f"({[top for _, _, top in tops]})")
        wanted += [None] * (len(tops) - len(wanted))
    for (lp, j, top), shape in zip(tops, wanted):
        if shape is None:
            continue
        if any(int(d) <= 0 for d in shape):
            raise ConversionError(f"layer '{lp.name}' (type Input): input shape {list(shape)} for '{top}' "
                                  f"must have positive dims")
        ip = lp.input_param
        shapes = [list(s.dim) for s in ip.shape]
        shapes = shapes * len(lp.top) if len(shapes) == 1 else shapes + [[]] * (len(lp.top) - len(shapes))
        shapes[j] = [int(d) for d in shape]
        del ip.shape[:]
        for dims in shapes:
            ip.shape.add().dim.extend(dims)


def caffe_to_onnx(model, weights=None, input_shapes=None, opset=OPSET, check=True,
                  sparse_initializers=False):
    """Build the TEST-phase net of ``model`` (prototxt path or NetParameter) with ``weights``
    (caffemodel path, or None for the fillers) and convert it (:func:`net_to_onnx`); returns an
    ``onnx.ModelProto``."""
    _onnx()
    if isinstance(model, caffe_pb2.NetParameter):
        param = caffe_pb2.NetParameter()
        param.CopyFrom(model)
        upgrade_net(param, source=param.name or "<NetParameter>", strict=False)
    else:
        param = read_net_text(model)
    check_exportable(param)
    if input_shapes is not None:
        _apply_input_shapes(param, input_shapes)
    try:
        net = Net(param, caffe_pb2.TEST, weights=weights)
    except NetError as e:
        raise ConversionError(f"cannot build the net to convert: {e}") from e
    doc = f"Converted by pyskim from {model if not isinstance(model, caffe_pb2.NetParameter) else param.name}"
    return net_to_onnx(net, opset=opset, check=check, doc=doc, sparse_initializers=sparse_initializers)


def export_onnx(model, weights, out_path, input_shapes=None, opset=OPSET, sparse_initializers=False):
    """:func:`caffe_to_onnx`, written to ``out_path``; returns the ModelProto."""
    proto = caffe_to_onnx(model, weights, input_shapes=input_shapes, opset=opset,
                          sparse_initializers=sparse_initializers)
    atomic_write(out_path, proto.SerializeToString())
    return proto
