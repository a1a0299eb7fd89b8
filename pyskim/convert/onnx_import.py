"""Import an ONNX model (opsets 11-21) as a Caffe net: a deploy NetParameter whose inputs are Input
layers, and a caffemodel NetParameter with the weights; :func:`import_onnx` writes both files.

The steps:

1. **Load and check**: a path or an ``onnx.ModelProto``; the default domain's opset must be 11-21, every
   node in the default domain, the graph inputs float32.
2. **Static shapes**: a symbolic first axis (the batch) becomes 1, or what ``input_shapes`` says (a
   list in input order or a dict by name); ONNX's shape inference (strict, with data propagation)
   then gives every tensor's shape.
3. **Constant folding**: Constant nodes, every node whose inputs are all constants (run by onnx's
   reference implementation) and Shape / Size of a tensor of known shape become constants. This
   removes the shape arithmetic exporters emit (Shape -> Gather -> Unsqueeze -> Concat -> Reshape)
   and the Identity nodes PyTorch puts on shared weights.
4. **Conversion**: each remaining node goes to its converter in
   :mod:`pyskim.convert.onnx_import_ops` (one Caffe layer or a few; the semantic matching of pads,
   pooling sizes, batch norm and broadcasting is described there). An op without a converter, an
   attribute a converter does not read or a value it cannot express, and an extra output that is used
   all raise ConversionError naming the node, the op and the attribute, input or output.
5. **Check**: pyskim builds the net (TEST phase, weights loaded) and every blob's shape is compared
   with the shape ONNX infers for its tensor; a difference is an error naming the node.

Names: a graph input or output keeps its ONNX name as blob name; a layer is named after its node
(a leading ``/`` dropped, made unique; ``<op><index>`` for a nameless node), its top after the layer.
Neurons, Dropout, BatchNorm and Scale compute in place (Caffe's habit, and what the sparse engines'
ReLU fusion looks for) when nothing else reads their input.

:func:`train_test_net` turns the imported deploy net into a train/test net (data layers in place of
the Input layer, SoftmaxWithLoss and Accuracy on the logits): ``docs/onnx_import.md``.
"""
import itertools
import math

import numpy as np
from google.protobuf.message import DecodeError

from ..core.net import Net
from ..errors import ConversionError, NetError
from ..io.blobproto import array_to_blobproto
from ..io.protofiles import parse_text, write_binary, write_text
from ..proto import caffe_pb2
from . import onnx_import_ops as ops

OPSETS = range(11, 22)
#: Ops whose result is not a function of their inputs: never folded.
_NOT_FOLDED = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
               "Bernoulli"}
#: Layer types that may compute in place (their backward reads only the top or keeps its own copy).
_IN_PLACE = {"ReLU", "Sigmoid", "TanH", "Dropout", "BatchNorm", "Scale"}


def _onnx():
    try:
        import onnx
        import onnx.checker
        import onnx.numpy_helper
        import onnx.reference
        import onnx.shape_inference
    except ImportError:
        raise ConversionError("ONNX import needs the 'onnx' package (pip install 'pyskim[onnx]')") from None
    return onnx


class _Record:
    """A Caffe layer being built: its LayerParameter and its weight arrays."""

    def __init__(self, param, arrays):
        self.param, self.arrays = param, [np.array(a, np.float32, order="C") for a in arrays]


def _load(onnx, model):
    """The ModelProto of ``model``: a ModelProto, the bytes of one, or a file path."""
    if isinstance(model, onnx.ModelProto):
        return model
    try:
        if isinstance(model, (bytes, bytearray)):
            return onnx.load_from_string(bytes(model))
        return onnx.load(str(model))
    except FileNotFoundError:
        raise ConversionError(f"{model}: no such ONNX file") from None
    except (OSError, DecodeError) as e:
        raise ConversionError(f"{model}: not a readable ONNX model ({type(e).__name__}: {e})") from None


def _opset(model):
    """The default domain's opset (11-21); every node must be in that domain."""
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            raise ConversionError(f"ONNX node '{node.name}' (op {node.op_type}, domain {node.domain}): "
                                  f"cannot import: pyskim imports ONNX's default domain only")
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not versions or versions[0] not in OPSETS:
        found = versions[0] if versions else "none"
        raise ConversionError(f"ONNX model opset {found}: pyskim imports opsets {OPSETS[0]}-{OPSETS[-1]} "
                              f"(onnx.version_converter can convert it)")
    return versions[0]


def _sparse_to_dense(onnx, sparse):
    """A SparseTensorProto (linearized or per-axis int64 indices) as a dense array."""
    values = onnx.numpy_helper.to_array(sparse.values)
    dense = np.zeros(math.prod(sparse.dims), values.dtype)
    indices = onnx.numpy_helper.to_array(sparse.indices)
    if indices.ndim == 2:
        indices = np.ravel_multi_index(tuple(indices.T), tuple(sparse.dims))
    dense[indices] = values
    return dense.reshape(tuple(sparse.dims))


def _fix_input_shapes(onnx, model, constants, input_shapes):
    """Give the graph inputs (those that are not initializers) static shapes, in place: ``input_shapes``
    (list in input order or dict by name), else the model's dims with a symbolic first axis as 1."""
    inputs = [i for i in model.graph.input if i.name not in constants]
    if isinstance(input_shapes, dict):
        unknown = sorted(set(input_shapes) - {i.name for i in inputs})
        if unknown:
            raise ConversionError(f"input shapes given for {unknown}; the model's inputs are "
                                  f"{[i.name for i in inputs]}")
        wanted = [input_shapes.get(i.name) for i in inputs]
    else:
        wanted = list(input_shapes or [])
        if len(wanted) > len(inputs):
            raise ConversionError(f"{len(wanted)} input shapes given; the model has {len(inputs)} inputs "
                                  f"{[i.name for i in inputs]}")
        wanted += [None] * (len(inputs) - len(wanted))
    for value, shape in zip(inputs, wanted):
        tensor = value.type.tensor_type
        if not value.type.HasField("tensor_type") or tensor.elem_type != onnx.TensorProto.FLOAT:
            raise ConversionError(f"ONNX graph input '{value.name}': pyskim's inputs are float32 tensors")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        if shape is None:
            if not tensor.HasField("shape"):
                raise ConversionError(f"ONNX graph input '{value.name}' has no shape: give --input-shape")
            shape = [1 if d is None and axis == 0 else d for axis, d in enumerate(dims)]
            if None in shape:
                raise ConversionError(f"ONNX graph input '{value.name}' has symbolic dims "
                                      f"{_dims_text(tensor)}: give --input-shape")
        if any(int(d) <= 0 for d in shape) or (dims and len(shape) != len(dims)):
            raise ConversionError(f"input shape {list(shape)} for ONNX graph input '{value.name}' (dims "
                                  f"{_dims_text(tensor)}): give one positive size per axis")
        tensor.shape.Clear()
        for d in shape:
            tensor.shape.dim.add().dim_value = int(d)


def _dims_text(tensor):
    return [d.dim_param or d.dim_value or "?" for d in tensor.shape.dim]


def _infer_shapes(onnx, model):
    """Every tensor's static shape (tuple) from ONNX's shape inference, None where it is not known."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError) as e:
        raise ConversionError(f"ONNX shape inference failed for these input shapes: {e}") from None
    shapes = {}
    graph = inferred.graph
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        tensor = value.type.tensor_type
        if value.type.HasField("tensor_type") and tensor.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
            shapes[value.name] = None if None in dims else tuple(dims)
    return shapes


def _evaluate(onnx, node, values, opsets):
    """Run one node on constant inputs with onnx's reference implementation; returns its outputs."""
    helper = onnx.helper
    names = dict.fromkeys(name for name in node.input if name)
    inputs = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(values[name].dtype),
                                            values[name].shape) for name in names]
    outputs = [helper.make_empty_tensor_value_info(name) for name in node.output if name]
    graph = helper.make_graph([node], "fold", inputs, outputs)
    model = helper.make_model(graph, opset_imports=opsets)
    try:
        results = onnx.reference.ReferenceEvaluator(model).run(None, {v.name: values[v.name] for v in inputs})
    except Exception as e:  # noqa: BLE001  (the reference ops raise whatever numpy raises)
        raise ConversionError(f"ONNX node '{node.name}' (op {node.op_type}): cannot fold this constant node: "
                              f"{type(e).__name__}: {e}") from None
    return [np.asarray(r) for r in results]


def _fold_constants(onnx, nodes, constants, shapes, opsets):
    """Fold what can be computed without the inputs into ``constants``; returns the remaining nodes."""
    kept = []
    for node in nodes:
        inputs = [name for name in node.input if name]
        if node.op_type in ("Shape", "Size") and inputs[0] not in constants and shapes.get(inputs[0]):
            shape = shapes[inputs[0]]
            attrs = {a.name: a.i for a in node.attribute}
            dims = np.asarray(shape[attrs.get("start", 0):attrs.get("end", len(shape))], np.int64)
            size = np.asarray(math.prod(shape), np.int64)
            constants[node.output[0]] = dims if node.op_type == "Shape" else size
        elif all(name in constants for name in inputs) and node.op_type not in _NOT_FOLDED:
            for name, value in zip(node.output, _evaluate(onnx, node, constants, opsets)):
                constants[name] = value
        else:
            kept.append(node)
    return kept


def _with_constants(onnx, model, nodes, constants):
    """``model`` with only ``nodes``, the constants they read as initializers (for shape inference)."""
    graph = model.graph
    used = {name for node in nodes for name in node.input if name in constants}
    used.update(value.name for value in graph.output if value.name in constants)
    initializers = [onnx.numpy_helper.from_array(np.asarray(constants[name]), name) for name in sorted(used)]
    inputs = [value for value in graph.input if value.name not in constants]
    folded = onnx.helper.make_graph(nodes, graph.name, inputs, list(graph.output), initializer=initializers)
    return onnx.helper.make_model(folded, opset_imports=list(model.opset_import), ir_version=model.ir_version)


def _static_graph(onnx, model, constants):
    """Shape inference and constant folding in turn until nothing more folds (a folded shape lets
    inference know the shapes after it); returns the remaining nodes and every tensor's shape."""
    nodes = list(model.graph.node)
    while True:
        shapes = _infer_shapes(onnx, _with_constants(onnx, model, nodes, constants))
        kept = _fold_constants(onnx, nodes, constants, shapes, list(model.opset_import))
        if len(kept) == len(nodes):
            return kept, shapes
        nodes = kept


def _unique(base, used):
    """``base``, or ``base_1``, ``base_2``, ... : the first not in ``used`` (which then holds it)."""
    candidates = itertools.chain([base], (f"{base}_{k}" for k in itertools.count(1)))
    name = next(n for n in candidates if n not in used)
    used.add(name)
    return name


def _attribute_value(onnx, attribute):
    """An attribute's value, strings decoded."""
    value = onnx.helper.get_attribute_value(attribute)
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _layer_name(node, index):
    return node.name.lstrip("/") or f"{node.op_type.lower()}{index}"


class _Importer:
    """The state of one import: constants, shapes, the blob of each ONNX tensor, the layers built.
    The converters in :mod:`onnx_import_ops` call its public methods."""

    def __init__(self, onnx, model, constants, shapes, nodes, opset, fold_batchnorm):
        self.onnx, self.constants, self.shapes, self.opset = onnx, constants, shapes, opset
        self.fold_batchnorm = fold_batchnorm
        self.nodes = nodes
        self.graph_outputs = [o.name for o in model.graph.output]
        self.graph_inputs = [i.name for i in model.graph.input if i.name not in constants]
        self.consumers = {}
        for node in nodes:
            for name in node.input:
                self.consumers[name] = self.consumers.get(name, 0) + 1
        for name in self.graph_outputs:
            self.consumers[name] = self.consumers.get(name, 0) + 1
        self.reads_left = dict(self.consumers)   # reads still to come, per tensor (graph outputs: never done)
        self.blobs, self.made_by, self.records = {}, {}, []
        self.producers = {}          # tensor -> _Record whose own (not in-place) top holds it
        self.layer_names, self.blob_names = set(), set(self.graph_inputs) | set(self.graph_outputs)
        self.current = None

    # -- used by the converters ------------------------------------------------------------------
    def shape(self, name):
        """The static shape of tensor ``name``."""
        shape = self.shapes.get(name)
        if shape is None:
            raise self.current.fail(f"the shape of tensor '{name}' is not known statically")
        return shape

    def maybe_const(self, name):
        return self.constants.get(name)

    def const(self, c, index, label):
        """Input ``index`` of node ``c`` (``label`` in ONNX's operator spec), which must be a constant."""
        name = c.input(index)
        if name is None or name not in self.constants:
            raise c.fail("missing" if name is None else "computed by the graph; pyskim needs a constant "
                         "(initializer)", input_name=label)
        return self.constants[name]

    def is_graph_output(self, name):
        return name in self.graph_outputs

    def layer(self, c, type_name, inputs, outputs, arrays=(), suffix=None, in_place=False):
        """Add a layer of ``type_name`` reading tensors ``inputs`` and computing tensors ``outputs``;
        returns its LayerParameter for the converter to fill in."""
        name = _unique(c.name if suffix is None else f"{c.name}/{suffix}", self.layer_names)
        param = caffe_pb2.LayerParameter(name=name, type=type_name)
        for name in inputs:
            if name in self.constants:
                raise c.fail("a constant here; pyskim's layers take computed tensors", input_name=name)
            if name not in self.blobs:
                raise c.fail(f"tensor '{name}' is not computed by any node pyskim imported", input_name=name)
            param.bottom.append(self.blobs[name])
        share = in_place and type_name in _IN_PLACE and self._may_overwrite(inputs[0], outputs[0])
        for name in outputs:
            top = param.bottom[0] if share else self._top_name(name, param.name)
            param.top.append(top)
            self.blobs[name] = top
            self.made_by[name] = c.node.name or c.name
        record = _Record(param, arrays)
        if not share and len(outputs) == 1:
            self.producers[outputs[0]] = record
        self.records.append(record)
        return param

    def producer(self, name):
        """The layer that computes tensor ``name`` into its own top, when its weights may absorb what the
        node reading ``name`` does: a Convolution / Deconvolution / InnerProduct read by that node only."""
        record = self.producers.get(name)
        if record is None or record.param.type not in ops.FOLD_TARGETS or self.consumers.get(name) != 1:
            return None
        return record

    def fold_into(self, c, record, arrays, output):
        """Node ``c`` is absorbed into ``record`` (new weights ``arrays``); its ``output`` is that layer's
        top."""
        record.arrays = [np.array(a, np.float32, order="C") for a in arrays]
        param = record.param
        if len(arrays) > 1 and param.type == "InnerProduct":
            param.inner_product_param.bias_term = True
        elif len(arrays) > 1:
            param.convolution_param.bias_term = True
        if self.is_graph_output(output):
            renamed = param.top[0]
            param.top[0] = output
            moved = [tensor for tensor, blob in self.blobs.items() if blob == renamed]
            self.blobs.update(dict.fromkeys(moved, output))
        self.blobs[output] = param.top[0]
        self.made_by[output] = c.node.name or c.name
        self.producers[output] = record

    def alias(self, output, source):
        """Tensor ``output`` is tensor ``source`` (an Identity-like node)."""
        if source in self.constants:
            raise self.current.fail("the identity of a constant", input_name=source)
        self.blobs[output] = self.blobs[source]
        self.made_by[output] = self.made_by.get(source, source)

    # -- internals --------------------------------------------------------------------------------
    def _may_overwrite(self, source, output):
        """Whether the node being converted may write ``output`` into the blob of ``source``: no later
        node reads that blob (under any tensor name), it is not a graph input and neither tensor is a
        graph output."""
        if source == output:
            return True
        blob = self.blobs[source]
        later = sum(self.reads_left.get(tensor, 0) for tensor, b in self.blobs.items() if b == blob) - 1
        return (later == 0 and blob not in self.graph_inputs and not self.is_graph_output(source)
                and not self.is_graph_output(output))

    def _top_name(self, tensor, layer_name):
        if self.is_graph_output(tensor) or tensor in self.graph_inputs:
            return tensor
        return _unique(layer_name, self.blob_names)

    def convert(self):
        """Input layers, then every node through its converter; returns the deploy NetParameter."""
        for name in self.graph_inputs:
            param = caffe_pb2.LayerParameter(name=name, type="Input", top=[name])
            param.input_param.shape.add().dim.extend(self.shapes[name])
            self.records.append(_Record(param, []))
            self.blobs[name] = name
            self.layer_names.add(name)
        for index, node in enumerate(self.nodes):
            converter = ops.CONVERTERS.get(node.op_type)
            attrs = {a.name: _attribute_value(self.onnx, a) for a in node.attribute}
            c = self.current = ops.NodeContext(node, attrs, self.opset, _layer_name(node, index))
            if converter is None:
                raise c.fail(f"pyskim has no Caffe layer for this op (imported ops: "
                             f"{', '.join(sorted(ops.CONVERTERS))})")
            for position, name in enumerate(node.output[1:], start=1):
                if name and self.consumers.get(name):
                    raise c.fail(f"output {position} ('{name}') is used; pyskim imports the first output "
                                 f"only")
            converter(self, c)
            for name in node.input:
                self.reads_left[name] = self.reads_left.get(name, 0) - 1
            unread = sorted(set(attrs) - c.read)
            if unread:
                raise c.fail("pyskim does not import this attribute", unread[0], attrs[unread[0]])
        for name in self.graph_outputs:
            if name not in self.blobs:
                raise ConversionError(f"ONNX graph output '{name}' is a constant; a Caffe net's outputs are "
                                      f"computed blobs")


def _split(records, name):
    """The deploy NetParameter (no weights) and the caffemodel NetParameter (layers with their blobs)."""
    deploy, weights = caffe_pb2.NetParameter(name=name), caffe_pb2.NetParameter(name=name)
    for record in records:
        deploy.layer.add().CopyFrom(record.param)
        layer = weights.layer.add()
        layer.CopyFrom(record.param)
        layer.blobs.extend(array_to_blobproto(a) for a in record.arrays)
    return deploy, weights


def _check_shapes(importer, deploy, weights):
    """Build the net with pyskim and compare each blob's shape with ONNX's inferred shape."""
    try:
        net = Net(deploy, phase=caffe_pb2.TEST)
        net.copy_trained_layers_from_param(weights, source_name="the imported weights")
    except NetError as e:
        raise ConversionError(f"the imported net does not build in pyskim: {e}") from e
    index = {name: i for i, name in enumerate(net.blob_names())}
    blobs = net.blob_list()
    for tensor, blob in importer.blobs.items():
        expected = importer.shapes.get(tensor)
        got = tuple(blobs[index[blob]].shape)
        if expected is not None and got != expected:
            node = importer.made_by.get(tensor, tensor)
            raise ConversionError(f"ONNX node '{node}': tensor '{tensor}' has "
                                  f"shape {list(expected)} in ONNX but {list(got)} as Caffe blob '{blob}'; "
                                  f"not imported")
    return net


def onnx_to_caffe(model, input_shapes=None, fold_batchnorm=False, check=True):
    """Convert ``model`` (an ``.onnx`` path, its bytes or an ``onnx.ModelProto``) to ``(deploy, weights)``:
    the NetParameter of the deploy net and that of its caffemodel. ``input_shapes``: a list (input order)
    or dict (by name) of shapes for the graph inputs; ``fold_batchnorm``: fold BatchNormalization into
    the Convolution / InnerProduct before it where possible; ``check``: build the net in pyskim and
    compare every blob's shape with ONNX's."""
    onnx = _onnx()
    source = _load(onnx, model)
    opset = _opset(source)
    model = onnx.ModelProto()
    model.CopyFrom(source)
    constants = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    constants.update((s.values.name, _sparse_to_dense(onnx, s)) for s in model.graph.sparse_initializer)
    _fix_input_shapes(onnx, model, constants, input_shapes)
    nodes, shapes = _static_graph(onnx, model, constants)
    importer = _Importer(onnx, model, constants, shapes, nodes, opset, fold_batchnorm)
    importer.convert()
    deploy, weights = _split(importer.records, model.graph.name or "onnx_import")
    if check:
        _check_shapes(importer, deploy, weights)
    return deploy, weights


def import_onnx(model, out_prototxt, out_weights, input_shapes=None, fold_batchnorm=False):
    """:func:`onnx_to_caffe`, written as a prototxt and a binary caffemodel; returns ``(deploy, weights)``."""
    deploy, weights = onnx_to_caffe(model, input_shapes=input_shapes, fold_batchnorm=fold_batchnorm)
    write_text(str(out_prototxt), deploy)
    write_binary(str(out_weights), weights)
    return deploy, weights


def _data_layer(layer, phase, image, label):
    param = caffe_pb2.LayerParameter()
    if isinstance(layer, str):
        param = parse_text(layer, param, source=f"{caffe_pb2.Phase.Name(phase)} data layer")
    else:
        param.CopyFrom(layer)
    del param.top[:], param.include[:]
    param.top.extend([image, label])
    param.include.add().phase = phase
    return param


def train_test_net(deploy, train_data, test_data, label="label"):
    """A train/test NetParameter from an imported ``deploy`` NetParameter with one Input layer: that
    layer replaced by the data layers ``train_data`` (TRAIN) and ``test_data`` (TEST) (LayerParameters
    or their prototxt text; their tops become the input blob and ``label``), a last Softmax dropped,
    then ``SoftmaxWithLoss`` (top ``loss``) and ``Accuracy`` (TEST, top ``accuracy``) on the logits."""
    inputs = [layer for layer in deploy.layer if layer.type == "Input"]
    if len(inputs) != 1 or len(inputs[0].top) != 1:
        raise ConversionError(f"net '{deploy.name}': train_test_net needs one Input layer with one top, "
                              f"found {[layer.name for layer in inputs]}")
    image = inputs[0].top[0]
    layers = [layer for layer in deploy.layer if layer.type != "Input"]
    read = {bottom for layer in layers for bottom in layer.bottom}
    outputs = [top for layer in layers for top in layer.top if top not in read]
    if len(outputs) != 1:
        raise ConversionError(f"net '{deploy.name}': train_test_net needs one output blob (the logits or "
                              f"their softmax), found {outputs}")
    logits = outputs[0]
    if layers and layers[-1].type == "Softmax" and layers[-1].top[0] == logits:
        logits = layers.pop().bottom[0]
    net = caffe_pb2.NetParameter(name=deploy.name)
    net.layer.extend([_data_layer(train_data, caffe_pb2.TRAIN, image, label),
                      _data_layer(test_data, caffe_pb2.TEST, image, label)])
    net.layer.extend(layers)
    net.layer.add(name="loss", type="SoftmaxWithLoss", bottom=[logits, label], top=["loss"])
    accuracy = net.layer.add(name="accuracy", type="Accuracy", bottom=[logits, label], top=["accuracy"])
    accuracy.include.add().phase = caffe_pb2.TEST
    return net

