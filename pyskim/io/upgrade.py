"""Upgrading deprecated net and solver definitions to the current format, as Caffe does on every read.

Caffe (``src/caffe/util/upgrade_proto.cpp``) upgrades each NetParameter it reads, prototxt or
caffemodel, in memory. The steps run in this order, each only when its test says it is needed:

1. V0 -> V1: ``layers { layer { type: "conv" ... } }`` (V0LayerParameter inside a V1 entry). Padding
   layers fold into the conv/pool layer that reads them; flat fields move into the typed params.
2. Data transformation: scale/mean_file/crop_size/mirror left in data_param, image_data_param or
   window_data_param move into transform_param.
3. V1 -> V2: ``layers`` (enum types, blobs_lr, weight_decay, ...) become ``layer`` (string types,
   ParamSpec). A net using both ``layer`` and ``layers`` is refused.
4. Input fields: ``input`` with ``input_shape`` or ``input_dim`` becomes a leading Input layer named
   "input"; without any shape (old caffemodels) the fields are just dropped.
5. BatchNorm: a BatchNorm layer declaring exactly 3 ParamSpecs gets lr_mult 0 and decay_mult 0 on each.

Solvers: the ``solver_type`` enum becomes the ``type`` string; reading a solver file also fills a
missing ``snapshot_prefix`` (Caffe's ``ReadSolverParamsFromTextFileOrDie``).

Caffe aborts on a fatal problem; pyskim raises :class:`~pyskim.errors.NetError` or
:class:`~pyskim.errors.SolverError` naming the file and the layer. Caffe merely logs a V0 field it
cannot place and goes on without it; pyskim raises for that too unless ``strict=False``.
"""
import logging
import os
from collections import namedtuple

from ..errors import NetError, SolverError
from ..proto import caffe_pb2
from .protofiles import read_binary, read_text
from .upgrade_tables import (
    DATA_TRANSFORM_FIELDS,
    DATA_TRANSFORM_LAYERS,
    SOLVER_TYPE_NAMES,
    V0_DIRECT_FIELDS,
    V0_DROPPED_FIELDS,
    V0_LAYER_TYPES,
    V0_TRANSFORM_FIELDS,
    V0_TYPED_FIELDS,
    V1_TYPE_NAMES,
)

__all__ = [
    "V1_TYPE_NAMES",
    "net_needs_upgrade",
    "read_net_binary",
    "read_net_text",
    "read_solver_text",
    "upgrade_net",
    "upgrade_net_as_needed",
    "upgrade_snapshot_prefix",
    "upgrade_solver",
    "v1_type_to_string",
]

log = logging.getLogger("pyskim")

_V1Enum = caffe_pb2.V1LayerParameter.LayerType
_V0Pool = caffe_pb2.V0LayerParameter.PoolMethod
_Pool = caffe_pb2.PoolingParameter.PoolMethod
_V1ShareMode = caffe_pb2.V1LayerParameter.DimCheckMode
_ShareMode = caffe_pb2.ParamSpec.DimCheckMode
_SolverEnum = caffe_pb2.SolverParameter.SolverType

# Every typed-param message of a V1 layer that the current LayerParameter also has; all are copied.
_V1_PARAM_FIELDS = tuple(
    f.name for f in caffe_pb2.V1LayerParameter.DESCRIPTOR.fields
    if f.name.endswith("_param") and f.name in caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
)


def _src(source):
    return str(source) if source else "<net>"


def v1_type_to_string(enum_value):
    """The current type string of a V1 layer type, given as enum number or name ("INNER_PRODUCT")."""
    try:
        name = enum_value if isinstance(enum_value, str) else _V1Enum.Name(int(enum_value))
        return V1_TYPE_NAMES[name]
    except (KeyError, ValueError, TypeError):
        raise NetError(f"Unknown V1LayerParameter layer type: {enum_value!r}") from None


# --- step 1: V0 -> V1 ------------------------------------------------------------------------------

def _needs_v0(net):
    return any(entry.HasField("layer") for entry in net.layers)


def _fold_padding_layers(net, source):
    """Copies of ``net.layers`` without "padding" layers, their pad moved into the layer reading them.

    A padding layer may only feed a conv or pool layer with a single bottom, and must itself have one
    bottom and one top; the reader then takes the padding layer's bottom directly.
    """
    producer = {name: None for name in net.input}  # blob -> index of the layer that last wrote it
    kept = []
    for i, entry in enumerate(net.layers):
        v0 = entry.layer
        current = None
        if v0.type != "padding":
            current = caffe_pb2.V1LayerParameter()
            current.CopyFrom(entry)
            kept.append(current)
        for j, blob in enumerate(entry.bottom):
            if blob not in producer:
                raise NetError(f"{_src(source)}: V0 layer '{v0.name}' reads unknown blob '{blob}'")
            idx = producer[blob]
            if idx is None or net.layers[idx].layer.type != "padding":
                continue
            pad_layer = net.layers[idx]
            where = f"{_src(source)}: V0 layer '{v0.name}'"
            if v0.type not in ("conv", "pool"):
                raise NetError(f"{where}: padding layer '{pad_layer.layer.name}' feeds a "
                               f"non-convolutional / non-pooling layer of type '{v0.type}'")
            if len(entry.bottom) != 1:
                raise NetError(f"{where}: a layer fed by a padding layer must take a single bottom")
            if len(pad_layer.bottom) != 1 or len(pad_layer.top) != 1:
                raise NetError(f"{_src(source)}: padding layer '{pad_layer.layer.name}' must have "
                               "exactly one bottom and one top")
            current.layer.pad = pad_layer.layer.pad
            current.bottom[j] = pad_layer.bottom[0]
        for blob in entry.top:
            producer[blob] = i
    return kept


def _put(param, field, value):
    """Store a scalar in ``param.field``, appending when the field is repeated (conv pad/stride)."""
    current = getattr(param, field)
    if hasattr(current, "append"):
        current.append(value)
    else:
        setattr(param, field, value)


def _v0_layer_to_v1(entry, out, source, problems):
    """Fill V1 layer ``out`` from the V0 ``entry``; fields it cannot place are added to ``problems``."""
    out.bottom.extend(entry.bottom)
    out.top.extend(entry.top)
    if not entry.HasField("layer"):
        return
    v0 = entry.layer
    if v0.HasField("name"):
        out.name = v0.name
    v0_type = v0.type
    if v0.HasField("type"):
        if v0_type not in V0_LAYER_TYPES:
            raise NetError(f"{_src(source)}: V0 layer '{v0.name}' has unknown layer type '{v0_type}'")
        out.type = _V1Enum.Value(V0_LAYER_TYPES[v0_type])
    out.blobs.extend(v0.blobs)
    out.blobs_lr.extend(v0.blobs_lr)
    out.weight_decay.extend(v0.weight_decay)
    for fd, value in v0.ListFields():
        name = fd.name
        if name in V0_DIRECT_FIELDS or name in V0_DROPPED_FIELDS:
            continue
        if name in V0_TRANSFORM_FIELDS:
            setattr(out.transform_param, V0_TRANSFORM_FIELDS[name], value)
            continue
        target = V0_TYPED_FIELDS.get(name, {}).get(v0_type)
        if target is None:
            log.error("Unknown parameter %s for layer type %s", name, v0_type)
            problems.append(f"layer '{v0.name}': unknown parameter {name} for layer type '{v0_type}'")
            continue
        param_name, field = target
        param = getattr(out, param_name)
        if field is None:
            param.CopyFrom(value)
        elif name == "pool":
            param.pool = _Pool.Value(_V0Pool.Name(value))
        elif fd.message_type is not None:
            getattr(param, field).CopyFrom(value)
        else:
            _put(param, field, value)


def _apply_v0(net, source, strict):
    """Fold padding layers and turn every V0 layer into a V1 one; False when a field was dropped."""
    kept = _fold_padding_layers(net, source)
    # Like Caffe, the V1 net keeps only name, layers, input, input_dim and force_backward.
    out = caffe_pb2.NetParameter()
    if net.HasField("name"):
        out.name = net.name
    problems = []
    for entry in kept:
        _v0_layer_to_v1(entry, out.layers.add(), source, problems)
    out.input.extend(net.input)
    out.input_dim.extend(net.input_dim)
    if net.HasField("force_backward"):
        out.force_backward = net.force_backward
    if problems and strict:
        raise NetError(f"{_src(source)}: cannot upgrade V0 net: " + "; ".join(problems))
    net.CopyFrom(out)
    return not problems


# --- step 2: data transformation fields ------------------------------------------------------------

def _data_param_name(layer):
    return DATA_TRANSFORM_LAYERS.get(_V1Enum.Name(layer.type))


def _needs_data(net):
    for layer in net.layers:
        param_name = _data_param_name(layer)
        if param_name and any(getattr(layer, param_name).HasField(f) for f in DATA_TRANSFORM_FIELDS):
            return True
    return False


def _apply_data(net, source, strict):
    """Move the transformation fields of data layers into transform_param; always compatible."""
    for layer in net.layers:
        param_name = _data_param_name(layer)
        if not param_name:
            continue
        param = getattr(layer, param_name)
        # Caffe touches both messages of every such layer, so they end up present even when empty.
        param.SetInParent()
        layer.transform_param.SetInParent()
        for field in DATA_TRANSFORM_FIELDS:
            if param.HasField(field):
                setattr(layer.transform_param, field, getattr(param, field))
                param.ClearField(field)
    return True


# --- step 3: V1 -> V2 ------------------------------------------------------------------------------

def _needs_v1(net):
    return len(net.layers) > 0


def _check_not_mixed(net, source):
    if len(net.layer) and len(net.layers) and not _needs_v0(net):
        raise NetError(
            f"{_src(source)}: refusing to upgrade an inconsistent net that has both 'layer' fields "
            f"(first: '{net.layer[0].name}') and deprecated 'layers' fields (first: '{net.layers[0].name}'). "
            "Write every layer in the current form, layer { type: \"Layer\" ... }, not "
            "layers { type: LAYER ... }.")


def _param_spec(layer, i):
    while len(layer.param) <= i:
        layer.param.add()
    return layer.param[i]


def _v1_layer_to_v2(v1, out, source):
    """Fill LayerParameter ``out`` from V1 layer ``v1``; False when something had to be ignored."""
    out.bottom.extend(v1.bottom)
    out.top.extend(v1.top)
    if v1.HasField("name"):
        out.name = v1.name
    out.include.extend(v1.include)
    out.exclude.extend(v1.exclude)
    if v1.HasField("type"):
        try:
            out.type = v1_type_to_string(v1.type)
        except NetError as e:
            raise NetError(f"{_src(source)}: layer '{v1.name}': {e}") from None
    out.blobs.extend(v1.blobs)
    for i, name in enumerate(v1.param):
        _param_spec(out, i).name = name
    for i, mode in enumerate(v1.blob_share_mode):
        _param_spec(out, i).share_mode = _ShareMode.Value(_V1ShareMode.Name(mode))
    for i, lr in enumerate(v1.blobs_lr):
        _param_spec(out, i).lr_mult = lr
    for i, decay in enumerate(v1.weight_decay):
        _param_spec(out, i).decay_mult = decay
    out.loss_weight.extend(v1.loss_weight)
    for field in _V1_PARAM_FIELDS:
        if v1.HasField(field):
            getattr(out, field).CopyFrom(getattr(v1, field))
    if v1.HasField("layer"):
        log.error("Input NetParameter has V0 layer -- ignoring.")
        return False
    return True


def _apply_v1(net, source, strict):
    """Turn every V1 ``layers`` entry into a ``layer``; False when a V0 layer had to be ignored."""
    _check_not_mixed(net, source)
    ok = True
    for i, v1 in enumerate(net.layers):
        if not _v1_layer_to_v2(v1, net.layer.add(), source):
            if strict:
                del net.layer[:]
                raise NetError(f"{_src(source)}: layer {i} ('{v1.name}') still holds a V0 layer")
            log.error("Upgrade of input layer %d failed.", i)
            ok = False
    del net.layers[:]
    return ok


# --- step 4: input fields --------------------------------------------------------------------------

def _needs_input(net):
    return len(net.input) > 0


def _apply_input(net, source, strict):
    """Replace the input fields by a leading Input layer (or just drop them when they carry no
    shape); always compatible."""
    has_shape, has_dim = len(net.input_shape) > 0, len(net.input_dim) > 0
    if has_shape or has_dim:
        layer = caffe_pb2.LayerParameter(name="input", type="Input")
        for i, top in enumerate(net.input):
            layer.top.append(top)
            shape = layer.input_param.shape.add()
            if has_shape:
                if i >= len(net.input_shape):
                    raise NetError(f"{_src(source)}: input '{top}' has no input_shape "
                                   f"({len(net.input)} inputs, {len(net.input_shape)} input_shape)")
                shape.CopyFrom(net.input_shape[i])
            else:
                dims = net.input_dim[4 * i:4 * i + 4]
                if len(dims) != 4:
                    raise NetError(f"{_src(source)}: input '{top}' needs 4 input_dim values "
                                   f"({len(net.input)} inputs, {len(net.input_dim)} input_dim)")
                shape.dim.extend(dims)
        net.layer.insert(0, layer)  # first, so every later layer can read the inputs
    net.ClearField("input")
    net.ClearField("input_shape")
    net.ClearField("input_dim")
    return True


# --- step 5: BatchNorm with three ParamSpecs -------------------------------------------------------

def _old_batch_norms(net):
    return [layer for layer in net.layer if layer.type == "BatchNorm" and len(layer.param) == 3]


def _needs_batch_norm(net):
    return bool(_old_batch_norms(net))


def _apply_batch_norm(net, source, strict):
    """Freeze the 3 statistics blobs of old BatchNorm definitions; always compatible."""
    # The old BatchNorm definition asked users to freeze its 3 statistics blobs by hand; they are
    # never learned, so the multipliers are forced to 0 and the rest of each ParamSpec is kept.
    for layer in _old_batch_norms(net):
        for spec in layer.param:
            spec.lr_mult = 0.0
            spec.decay_mult = 0.0
    return True


# --- driver ----------------------------------------------------------------------------------------

#: One upgrade step: its test, its action ``apply(net, source, strict)`` (False when something had to
#: be dropped), and Caffe's log lines: the attempt (``%s`` is the source), the success, the failure
#: and the deprecation note that follows (None where Caffe logs none).
_UpgradeStep = namedtuple("_UpgradeStep", "needed apply attempt success failure note")

_NET_UPGRADE_STEPS = (
    _UpgradeStep(
        _needs_v0, _apply_v0,
        "Attempting to upgrade input file specified using deprecated V0LayerParameter: %s",
        "Successfully upgraded file specified using deprecated V0LayerParameter",
        "Warning: had one or more problems upgrading V0NetParameter to NetParameter (see above); "
        "continuing anyway.",
        "Note that future Caffe releases will not support V0NetParameter; use "
        "tools/upgrade_net_proto.py for prototxt and tools/upgrade_net_proto.py --binary for model "
        "weights to upgrade this and any other net protos to the new format."),
    _UpgradeStep(
        _needs_data, _apply_data,
        "Attempting to upgrade input file specified using deprecated transformation parameters: %s",
        "Successfully upgraded file specified using deprecated data transformation parameters.",
        None,
        "Note that future Caffe releases will only support transform_param messages for "
        "transformation fields."),
    _UpgradeStep(
        _needs_v1, _apply_v1,
        "Attempting to upgrade input file specified using deprecated V1LayerParameter: %s",
        "Successfully upgraded file specified using deprecated V1LayerParameter",
        "Warning: had one or more problems upgrading V1LayerParameter (see above); continuing anyway.",
        None),
    _UpgradeStep(
        _needs_input, _apply_input,
        "Attempting to upgrade input file specified using deprecated input fields: %s",
        "Successfully upgraded file specified using deprecated input fields.",
        None,
        "Note that future Caffe releases will only support input layers and not input fields."),
    _UpgradeStep(
        _needs_batch_norm, _apply_batch_norm,
        "Attempting to upgrade batch norm layers using deprecated params: %s",
        "Successfully upgraded batch norm layers using deprecated params.",
        None,
        None),
)


def net_needs_upgrade(net_param):
    """Whether any upgrade step applies to ``net_param`` (Caffe's ``NetNeedsUpgrade``)."""
    return any(step.needed(net_param) for step in _NET_UPGRADE_STEPS)


def _run_net_upgrades(net, source, strict):
    """Run every needed step in Caffe's order (``UpgradeNetAsNeeded``), logging Caffe's lines for each.
    Returns (changed, fully_compatible)."""
    _check_not_mixed(net, source)
    changed, ok = False, True
    for step in _NET_UPGRADE_STEPS:
        if not step.needed(net):
            continue
        changed = True
        log.info(step.attempt, source)
        if step.apply(net, source, strict):
            log.info(step.success)
        else:
            ok = False
            log.error(step.failure)
        if step.note:
            log.warning(step.note)
    return changed, ok


def upgrade_net(net_param, source="", strict=True):
    """Upgrade ``net_param`` in place to the current format; True when any step changed it.

    ``source`` (the file it came from) is used in log lines and error messages. Fatal problems
    (unknown V0 layer type, misplaced padding layer, both ``layer`` and ``layers``, an ``input``
    without enough dims) raise NetError. A V0 field that cannot be placed raises NetError too when
    ``strict``; with ``strict=False`` it is logged and dropped, as Caffe does.
    """
    return _run_net_upgrades(net_param, source, strict)[0]


def upgrade_net_as_needed(net_param, source=""):
    """Caffe's ``UpgradeNetAsNeeded``: upgrade leniently; False if something had to be dropped.

    Fatal problems still raise NetError.
    """
    return _run_net_upgrades(net_param, source, strict=False)[1]


def read_net_text(path, strict=False):
    """Read a prototxt NetParameter and upgrade it (Caffe's ``ReadNetParamsFromTextFileOrDie``)."""
    net = read_text(path, caffe_pb2.NetParameter())
    upgrade_net(net, source=str(path), strict=strict)
    return net


def read_net_binary(path, strict=False):
    """Read a binary NetParameter (caffemodel) and upgrade it (``ReadNetParamsFromBinaryFileOrDie``)."""
    net = read_binary(path, caffe_pb2.NetParameter())
    upgrade_net(net, source=str(path), strict=strict)
    return net


# --- solvers ---------------------------------------------------------------------------------------

def upgrade_solver(solver_param, source=""):
    """Turn the deprecated ``solver_type`` enum into the ``type`` string; True when it did.

    Setting both fields is an error (SolverError), as in Caffe.
    """
    if not solver_param.HasField("solver_type"):
        return False
    log.info("Attempting to upgrade input file specified using deprecated 'solver_type' field (enum)': %s",
             source)
    if solver_param.HasField("type"):
        raise SolverError(f"{source or '<solver>'}: failed to upgrade solver: the old solver_type field "
                          "(enum) and the new type field (string) cannot both be specified")
    solver_param.type = SOLVER_TYPE_NAMES[_SolverEnum.Name(solver_param.solver_type)]
    solver_param.ClearField("solver_type")
    log.info("Successfully upgraded file specified using deprecated 'solver_type' field (enum) to "
             "'type' field (string).")
    log.warning("Note that future Caffe releases will only support 'type' field (string) for a solver's type.")
    return True


def _split_ext(filename):
    """(stem, extension) of a file name, the extension starting at the last dot (boost v3 rules)."""
    if filename in (".", ".."):
        return filename, ""
    dot = filename.rfind(".")
    return (filename, "") if dot < 0 else (filename[:dot], filename[dot:])


def upgrade_snapshot_prefix(solver_param, path):
    """Caffe's default ``snapshot_prefix``, applied when a solver file is read; True when changed.

    Unset: the solver file path without its extension. An existing directory (checked relative to
    the working directory): ``<dir>/<solver file stem>``.
    """
    path = os.fspath(path)
    folder, filename = os.path.split(path)
    stem = _split_ext(filename)[0]
    if not solver_param.HasField("snapshot_prefix"):
        solver_param.snapshot_prefix = os.path.join(folder, stem) if folder else stem
        log.info("snapshot_prefix was not specified and is set to %s", solver_param.snapshot_prefix)
        return True
    if os.path.isdir(solver_param.snapshot_prefix):
        solver_param.snapshot_prefix = os.path.join(solver_param.snapshot_prefix, stem)
        log.info("snapshot_prefix was a directory and is replaced to %s", solver_param.snapshot_prefix)
        return True
    return False


def read_solver_text(path):
    """Read a solver prototxt, upgrade it and fill the default snapshot_prefix
    (Caffe's ``ReadSolverParamsFromTextFileOrDie``)."""
    solver = read_text(path, caffe_pb2.SolverParameter())
    upgrade_solver(solver, source=str(path))
    upgrade_snapshot_prefix(solver, path)
    return solver
