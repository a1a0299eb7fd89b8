"""Machinery of the fuzz test (``test_fuzz.py``): seed corpora from ``../shared``, mutators, and a
sandboxed worker process that feeds each mutated input through pyskim.

Every example runs in a long-lived worker process (``multiprocessing`` spawn), so that a segfault, a
hang (per-example time limit) or an absurd allocation (the worker runs under ``RLIMIT_DATA`` and a
small :func:`pyskim.set_max_blob_bytes`) is caught and reported instead of taking the test run
down. The worker answers each case with ``ok``, ``error`` (a :class:`pyskim.errors.PyskimError`, the
documented outcome for bad input) or ``bad`` (any other exception, with its traceback); the parent adds
``crash`` (the worker died) and ``hang`` (no answer in time) and restarts the worker.

Mutations are small programs of tuples (drawn by hypothesis, so failures shrink and print readably):

* bytes: ``("flip", pos, bit)``, ``("set", pos, byte)``, ``("insert", pos, data)``,
  ``("delete", pos, n)``, ``("truncate", pos)``, ``("dup", pos, n, times)``;
* prototxt text: ``("number", k, value)`` (replace the k-th number: huge, negative, NaN, a string ...),
  ``("string", k, value)``, ``("enum", k, value)``, ``("field", k, line)`` (insert a field after the
  k-th ``{``), ``("dupline", k, times)``, ``("delline", k)``, ``("nest", pos, depth, opener)`` (deep
  nesting), ``("wrongtype", k, form)``, ``("dims", k, dims)`` (a shape's dims, e.g. 100000000);
* binary protobuf (caffemodel, solverstate, binaryproto, Datum): ``("pfield", k, action, value)`` on
  the k-th field set anywhere in the parsed message, ``("pdims", k, dims)`` on the k-th BlobShape
  or legacy blob, ``("pnest", depth)`` (a deeply nested unknown group appended);
* V1 caffemodels (``layers`` of V1LayerParameter, upgraded on read): ``("v1text", k, how, payload)``
  rewrites the bytes of the k-th layer or blob name (name, bottom, top, param) with bytes that may
  not be UTF-8, ``("v1type", k, number)`` sets a layer's type enum to any number (unknown ones too),
  ``("v1lists", k, field, values)`` sets a layer's blobs_lr / weight_decay / loss_weight /
  blob_share_mode lists, ``("v1drop", k, field)`` clears one of its fields;
  positions and indices wrap modulo the input's size.
"""
import gc
import logging
import multiprocessing
import os
import re
import shutil
import tempfile
import time
import traceback
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
CONF = SHARED / "conformance"

# -- seed corpora ------------------------------------------------------------------------------------

#: Big models whose prototxt is fuzzed but whose build is cut short by the worker's blob limit.
_SKIP_MODEL_DIRS = ("/logs/",)


def _net_prototxts():
    paths = sorted(CONF.glob("layers/*/net.prototxt"))
    paths += sorted(CONF.glob("solvers/*/net.prototxt"))[:4]
    paths += [CONF / "io/upgrade_v0_net/v0.prototxt", CONF / "io/upgrade_v1_net/v1.prototxt",
              CONF / "io/upgrade_v1_caffemodel/v1_deploy.prototxt", CONF / "io/caffe_cli/lenet.prototxt"]
    models = [p for p in sorted((SHARED / "models").rglob("*.prototxt"))
              if "solver" not in p.name and not any(s in str(p) for s in _SKIP_MODEL_DIRS)]
    return [p for p in paths + models if p.is_file()]


def _solver_prototxts():
    paths = sorted(CONF.glob("solvers/*/solver.prototxt"))
    paths += sorted(CONF.glob("io/upgrade_solver/*.prototxt"))
    paths += [p for p in sorted((SHARED / "models").rglob("*solver*.prototxt"))
              if not any(s in str(p) for s in _SKIP_MODEL_DIRS)][:40]
    return [p for p in paths if p.is_file()]


def _weights_pairs():
    """(prototxt, caffemodel) pairs; small caffemodels only."""
    pairs = [(p.parent / "net.prototxt", p) for p in sorted(CONF.glob("layers/*/weights.caffemodel"))]
    pairs += [(p.parent / "net.prototxt", p) for p in sorted(CONF.glob("solvers/*/final.caffemodel"))[:3]]
    trained = SHARED / "models/trained"
    pairs += [
        (trained / "lenet_ethereon/lenet.prototxt", trained / "lenet_ethereon/lenet_iter_10000.caffemodel"),
        (trained / "everpeace_caffe/mnist/lenet.prototxt",
         trained / "everpeace_caffe/mnist/lenet_iter_10000.caffemodel"),
        (trained / "mtcnn_kpzhang93/det1.prototxt", trained / "mtcnn_kpzhang93/det1.caffemodel"),
        (CONF / "io/upgrade_v1_caffemodel/v1_deploy.prototxt", CONF / "io/upgrade_v1_caffemodel/v1.caffemodel"),
        (CONF / "io/upgrade_v1_caffemodel/net.prototxt", CONF / "io/upgrade_v1_caffemodel/upgraded.caffemodel"),
    ]
    return [(a, b) for a, b in pairs if a.is_file() and b.is_file()]


def _v1_weights_pairs():
    """(deploy prototxt, caffemodel) pairs whose caffemodel has V1 layers (``layers``)."""
    trained = SHARED / "models/trained/everpeace_caffe"
    pairs = [
        (trained / "mnist/lenet.prototxt", trained / "mnist/lenet_iter_10000.caffemodel"),
        (trained / "cifar10/cifar10_quick.prototxt", trained / "cifar10/cifar10_quick_iter_5000.caffemodel"),
        (trained / "cifar10/cifar10_full.prototxt", trained / "cifar10/cifar10_full_iter_60000.caffemodel"),
        (CONF / "io/upgrade_v1_caffemodel/v1_deploy.prototxt", CONF / "io/upgrade_v1_caffemodel/v1.caffemodel"),
    ]
    return [(a, b) for a, b in pairs if a.is_file() and b.is_file()]


def _solverstates():
    paths = sorted(CONF.glob("solvers/*/final.solverstate")) + sorted(CONF.glob("solvers/resume/snap_*.solverstate"))
    return [p for p in paths if p.is_file()]


def _binaryprotos():
    paths = sorted(CONF.glob("io/convert_imageset/mean_*.binaryproto"))
    paths.append(SHARED / "datasets/cifar10/mean_rgb_train.binaryproto")
    return [p for p in paths if p.is_file()]


def _lmdbs():
    paths = sorted(p for p in CONF.glob("io/convert_imageset/lmdb_*") if p.is_dir())
    paths.append(CONF / "solvers/sgd_fixed/data_lmdb")
    return [p for p in paths if (p / "data.mdb").is_file()]


class Corpus:
    """The seed files, found lazily (``available`` is False when ``../shared`` is missing)."""

    def __init__(self):
        self.available = (CONF / "layers").is_dir()
        self._cache = {}

    def _get(self, key, fn):
        if key not in self._cache:
            self._cache[key] = fn() if self.available else []
        return self._cache[key]

    nets = property(lambda self: self._get("nets", _net_prototxts))
    solvers = property(lambda self: self._get("solvers", _solver_prototxts))
    weights = property(lambda self: self._get("weights", _weights_pairs))
    v1_weights = property(lambda self: self._get("v1_weights", _v1_weights_pairs))
    states = property(lambda self: self._get("states", _solverstates))
    binaryprotos = property(lambda self: self._get("binaryprotos", _binaryprotos))
    lmdbs = property(lambda self: self._get("lmdbs", _lmdbs))

    def records(self, lmdb_dir, limit=64):
        """The first ``limit`` (key, value) records of a seed LMDB (read-only, no lock)."""
        key = ("records", str(lmdb_dir))
        if key not in self._cache:
            import lmdb
            env = lmdb.open(str(lmdb_dir), readonly=True, lock=False, readahead=False, subdir=True)
            try:
                with env.begin() as txn:
                    out = []
                    for k, v in txn.cursor():
                        out.append((bytes(k), bytes(v)))
                        if len(out) >= limit:
                            break
            finally:
                env.close()
            self._cache[key] = out
        return self._cache[key]

    def all_files(self):
        """Every seed file of every kind (for swapped-kind inputs)."""
        files = list(self.nets[:40]) + list(self.solvers[:10]) + [b for _, b in self.weights[:20]]
        files += list(self.states) + list(self.binaryprotos)
        files += [p / "data.mdb" for p in self.lmdbs[:2]]
        return files


CORPUS = Corpus()


def read_seed(path):
    return Path(path).read_bytes()


def data_net_prototxt(text, db="db"):
    """A training prototxt made runnable in TEST phase: TRAIN-only includes dropped, Data sources
    pointed at ``db`` (the LMDB the worker creates or links next to the net)."""
    text = re.sub(r"include\s*\{\s*phase\s*:\s*TRAIN\s*\}", "", text)
    return re.sub(r'source\s*:\s*"[^"]*"', f'source: "{db}"', text)


# -- byte mutations ----------------------------------------------------------------------------------

def mutate_bytes(data, program):
    data = bytearray(data)
    for op in program:
        name, args = op[0], op[1:]
        n = len(data)
        if name == "flip" and n:
            pos, bit = args
            data[pos % n] ^= 1 << (bit % 8)
        elif name == "set" and n:
            pos, value = args
            data[pos % n] = value & 0xFF
        elif name == "insert":
            pos, chunk = args
            pos = pos % (n + 1)
            data[pos:pos] = chunk
        elif name == "delete" and n:
            pos, count = args
            pos = pos % n
            del data[pos:pos + count]
        elif name == "truncate":
            (pos,) = args
            del data[pos % (n + 1):]
        elif name == "dup" and n:
            pos, count, times = args
            pos = pos % n
            chunk = bytes(data[pos:pos + count])
            data[pos:pos] = chunk * times
    return bytes(data)


# -- prototxt text mutations -------------------------------------------------------------------------

_NUMBER = re.compile(r"(?<=:)\s*-?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+)\b")
_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"')
_ENUM = re.compile(r"(?<=:)\s*[A-Za-z_][A-Za-z_0-9]*\b")
_FIELD = re.compile(r"^(\s*)([a-z_0-9]+)\s*:\s*(.+?)\s*$", re.MULTILINE)
_SHAPE = re.compile(r"(?:shape|input_shape)\s*\{[^{}]*\}")


def _nth(matches, k):
    matches = list(matches)
    return matches[k % len(matches)] if matches else None


def _replace(text, m, value):
    return text[:m.start()] + value + text[m.end():]


def mutate_text(text, program):
    for op in program:
        name, args = op[0], op[1:]
        if name == "number":
            k, value = args
            m = _nth(_NUMBER.finditer(text), k)
            if m:
                text = _replace(text, m, " " + value)
        elif name == "string":
            k, value = args
            m = _nth(_STRING.finditer(text), k)
            if m:
                text = _replace(text, m, '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"')
        elif name == "enum":
            k, value = args
            m = _nth((m for m in _ENUM.finditer(text) if m.group().strip() not in ("true", "false")), k)
            if m:
                text = _replace(text, m, " " + value)
        elif name == "field":
            k, line = args
            m = _nth(re.finditer(r"\{", text), k)
            pos = m.end() if m else len(text)
            text = text[:pos] + "\n" + line + "\n" + text[pos:]
        elif name == "dupline":
            k, times = args
            lines = text.split("\n")
            i = k % len(lines)
            lines[i:i + 1] = [lines[i]] * (times + 1)
            text = "\n".join(lines)
        elif name == "delline":
            (k,) = args
            lines = text.split("\n")
            del lines[k % len(lines)]
            text = "\n".join(lines)
        elif name == "nest":
            pos, depth, opener = args
            pos = pos % (len(text) + 1)
            closer = "}" * depth if opener.endswith("{") else ""
            text = text[:pos] + opener * depth + closer + text[pos:]
        elif name == "wrongtype":
            k, form = args
            m = _nth(_FIELD.finditer(text), k)
            if m:
                indent, field, value = m.groups()
                new = {"message": f"{field} {{ }}", "quoted": f'{field}: "{value.strip(chr(34))}"',
                       "list": f"{field}: [{value}, {value}]", "nested": f"{field} {{ {field}: {value} }}",
                       "bare": f"{field}: {value.strip(chr(34))}x", "empty": f"{field}:"}[form]
                text = text[:m.start()] + indent + new + text[m.end():]
        elif name == "dims":
            k, dims = args
            m = _nth(_SHAPE.finditer(text), k)
            if m:
                head = m.group().split("{")[0]
                text = _replace(text, m, head + "{ " + " ".join(f"dim: {d}" for d in dims) + " }")
        else:
            text = mutate_bytes(text.encode(), [op]).decode("utf-8", "replace")
    return text


# -- protobuf structure mutations --------------------------------------------------------------------

def _walk(message, out):
    """Append (message, field descriptor, value) for every field set anywhere in ``message``."""
    for field, value in message.ListFields():
        out.append((message, field, value))
        if field.message_type is not None and not field.message_type.GetOptions().map_entry:
            if field.is_repeated:
                for item in value:
                    _walk(item, out)
            else:
                _walk(value, out)


_INTS = [0, 1, -1, 2, 3, 255, 65535, 2**31 - 1, -2**31, 2**32 - 1, 2**63 - 1, -2**63, 100000000, 10**9]
_FLOATS = [0.0, -1.0, 1e30, -1e30, float("nan"), float("inf"), float("-inf"), 1e-45, 0.5]
_STRINGS = ["", "x", "data", "label", "conv1", "ip1", "loss", "../nonexistent", "A" * 5000, "\x00\xff",
            "Convolution", "Deconvolution", "Pooling", "InnerProduct", "Input", "DummyData", "Reshape", "Split",
            "Slice", "Concat", "Eltwise", "Crop", "Tile", "Embed", "BatchNorm", "Scale", "SPP", "LRN",
            "Flatten", "Softmax", "SoftmaxWithLoss", "Accuracy", "ArgMax", "Reduction", "Filter", "Parameter",
            "Data", "HDF5Data", "ImageData", "MemoryData", "Python", "xavier", "msra", "bilinear", "step",
            "multistep", "poly", "SGD", "Adam", "L1", "Bogus"]


def _scalar_values(field, value):
    from google.protobuf.descriptor import FieldDescriptor as F
    t = field.type
    if t in (F.TYPE_FLOAT, F.TYPE_DOUBLE):
        return _FLOATS
    if t == F.TYPE_BOOL:
        return [True, False]
    if t == F.TYPE_STRING:
        return _STRINGS
    if t == F.TYPE_BYTES:
        return [b"", b"\x00", bytes(value[: len(value) // 2]) if isinstance(value, bytes) else b"x",
                b"\x89PNG\r\n\x1a\n" + b"\x00" * 16, b"\xff\xd8\xff" + b"\x00" * 16]
    if t == F.TYPE_ENUM:
        return [v.number for v in field.enum_type.values] + [99]
    return _INTS


def _assign(message, field, value):
    try:
        setattr(message, field.name, value)
    except (ValueError, TypeError, OverflowError, AttributeError):
        pass


_PARAM_INTS = [0, 1, 2, 3, 5, -1, 7, 100, 2**31 - 1, 100000000, -2**31, 2**32 - 1]
_PARAM_FLOATS = [0.0, -1.0, 0.5, 2.0, float("nan"), float("inf"), -float("inf"), 1e-8, 1e30]


def _mutate_layer_param(net, k, which, pick):
    """Set any field (set or not) of a layer's type-specific ``*_param`` message (or of the layer
    itself) to a value near the edges: the fields Caffe checks, and those it does not."""
    from google.protobuf.descriptor import FieldDescriptor as F
    names = net.DESCRIPTOR.fields_by_name
    layers = list(net.layer if "layer" in names else []) or list(net.layers if "layers" in names else [])
    layer = layers[k % len(layers)] if layers else net       # a SolverParameter: its own fields
    targets = [layer] + [value for field, value in layer.ListFields()
                         if field.message_type is not None and not field.is_repeated
                         and field.name.endswith("_param")]
    target = targets[which % len(targets)]
    fields = [f for f in target.DESCRIPTOR.fields if f.message_type is None]
    if not fields:
        return
    field = fields[pick % len(fields)]
    if field.type in (F.TYPE_FLOAT, F.TYPE_DOUBLE):
        values = _PARAM_FLOATS
    elif field.type == F.TYPE_BOOL:
        values = [True, False]
    elif field.type == F.TYPE_ENUM:
        values = [v.number for v in field.enum_type.values]
    elif field.type in (F.TYPE_STRING, F.TYPE_BYTES):
        values = [v.encode() if field.type == F.TYPE_BYTES else v for v in _STRINGS[:12]]
    else:
        values = _PARAM_INTS
    value = values[(pick // len(fields)) % len(values)]
    try:
        if field.is_repeated:
            getattr(target, field.name).append(value)
        else:
            setattr(target, field.name, value)
    except (ValueError, TypeError, OverflowError):
        pass


def mutate_proto(message, program):
    """Apply structure mutations in place to a parsed protobuf ``message``; returns extra bytes to
    append (deep nesting) or b""."""
    tail = b""
    for op in program:
        name, args = op[0], op[1:]
        if name == "pfield":
            k, action, pick = args
            fields = []
            _walk(message, fields)
            if not fields:
                continue
            owner, field, value = fields[k % len(fields)]
            repeated = field.is_repeated
            if action == "clear" or (field.message_type is not None and not repeated):
                owner.ClearField(field.name)
            elif repeated:
                container = getattr(owner, field.name)
                if action == "truncate":
                    del container[len(container) // 2 + (pick % 2):]
                elif action == "extend" and field.message_type is None:
                    extra = list(container[: pick % 8 + 1]) or [_scalar_values(field, None)[0]]
                    try:
                        container.extend(extra)
                    except (ValueError, TypeError):
                        pass
                elif action == "extend":
                    for item in list(container[: pick % 3 + 1]):
                        container.add().CopyFrom(item)
                elif field.message_type is None and len(container):
                    values = _scalar_values(field, None)
                    try:
                        container[pick % len(container)] = values[pick % len(values)]
                    except (ValueError, TypeError, OverflowError):
                        pass
            else:
                values = _scalar_values(field, value)
                _assign(owner, field, values[pick % len(values)])
        elif name == "pdims":
            k, dims = args
            blobs = []
            _walk(message, blobs)
            shapes = [v for _, f, v in blobs if f.message_type is not None and f.message_type.name == "BlobShape"
                      and not f.is_repeated]
            legacy = [m for m, f, _ in blobs if f.name == "num" and m.DESCRIPTOR.name == "BlobProto"]
            targets = shapes + legacy
            if not targets:
                continue
            target = targets[k % len(targets)]
            try:
                if target.DESCRIPTOR.name == "BlobShape":
                    del target.dim[:]
                    target.dim.extend(dims)
                else:
                    for f, d in zip(("num", "channels", "height", "width"), list(dims) + [1, 1, 1, 1]):
                        setattr(target, f, d)
            except (ValueError, TypeError, OverflowError):
                pass
        elif name == "pparam":
            k, which, pick = args
            _mutate_layer_param(message, k, which, pick)
        elif name == "pimg":
            width, height = args
            if message.DESCRIPTOR.name == "Datum" and message.data:
                message.data = patch_image_size(message.data, width, height)
        elif name == "pnest":
            (depth,) = args
            # unknown field 1999 as a group (wire type 3) nested ``depth`` times, then its end tags
            tail += varint(1999 << 3 | 3) * depth + varint(1999 << 3 | 4) * depth
    return tail


def mutate_text_proto(text, message_cls, proto_program, text_program):
    """Structure-aware prototxt mutation: parse ``text`` as ``message_cls``, apply ``proto_program``
    (:func:`mutate_proto`), print it back as prototxt, then apply ``text_program``. Text that does not
    parse gets the text mutations only."""
    if proto_program:
        from google.protobuf import text_format
        message = message_cls()
        try:
            text_format.Merge(text, message)
        except Exception:  # noqa: BLE001
            message = None
        if message is not None:
            mutate_proto(message, proto_program)
            text = text_format.MessageToString(message)
    return mutate_text(text, text_program)


def varint(value):
    """Protobuf's base-128 varint of ``value`` (negative values as their 64-bit two's complement)."""
    value &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def patch_image_size(data, width, height):
    """Rewrite the size an encoded PNG (IHDR, CRC fixed) or JPEG (SOFn) declares."""
    import struct
    import zlib
    data = bytearray(data)
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
        data[16:24] = struct.pack(">II", width & 0xFFFFFFFF, height & 0xFFFFFFFF)
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    elif data.startswith(b"\xff\xd8"):
        i = 2
        while i + 9 < len(data) and data[i] == 0xFF:
            marker, length = data[i + 1], int.from_bytes(data[i + 2:i + 4], "big")
            if marker in (0xC0, 0xC1, 0xC2):
                data[i + 5:i + 9] = struct.pack(">HH", height & 0xFFFF, width & 0xFFFF)
                break
            i += 2 + length
    return bytes(data)


def mutate_message_bytes(data, message_cls, proto_program, byte_program):
    """Parse ``data`` as ``message_cls`` (when it parses), apply ``proto_program``, serialize, then
    apply ``byte_program`` to the bytes."""
    if proto_program:
        message = message_cls()
        try:
            message.ParseFromString(data)
        except Exception:  # noqa: BLE001  (not parseable: only the byte mutations apply)
            message = None
        if message is not None:
            tail = mutate_proto(message, proto_program)
            data = message.SerializePartialToString() + tail
    return mutate_bytes(data, byte_program)


# -- V1 caffemodel mutations ---------------------------------------------------------------------------

#: The text fields of a V1LayerParameter (a layer name, blob names, shared param names).
V1_TEXT_FIELDS = ("name", "bottom", "top", "param")
V1_LIST_FIELDS = ("blobs_lr", "weight_decay", "loss_weight", "blob_share_mode")


def _v1_texts(net):
    """(layer, field, index or None) for every text value set in the V1 layers of ``net``."""
    spots = []
    for layer in net.layers:
        for field in V1_TEXT_FIELDS:
            if field == "name":
                if layer.HasField("name"):
                    spots.append((layer, field, None))
            else:
                spots += [(layer, field, i) for i in range(len(getattr(layer, field)))]
    return spots


def _raw_string_field(number, payload):
    """The wire bytes of a length-delimited field ``number`` holding ``payload`` (any bytes)."""
    return varint((number << 3) | 2) + varint(len(payload)) + payload


def _set_raw_text(layer, field, index, payload):
    """Store ``payload`` bytes (UTF-8 or not) as text field ``field`` (element ``index`` of a repeated
    one) of ``layer``, through the wire format: the Python API refuses bytes that are not UTF-8."""
    number = layer.DESCRIPTOR.fields_by_name[field].number
    if index is None:
        layer.ClearField(field)
        layer.MergeFromString(_raw_string_field(number, payload))
        return
    values = [v if isinstance(v, bytes) else v.encode("utf-8") for v in getattr(layer, field)]
    values[index] = payload
    layer.ClearField(field)
    layer.MergeFromString(b"".join(_raw_string_field(number, v) for v in values))


def _edit_text(value, how, payload):
    if how == "first":
        return payload + value[1:]
    if how == "last":
        return value[:-1] + payload
    if how == "insert":
        return value[:len(value) // 2] + payload + value[len(value) // 2:]
    if how == "replace":
        return payload
    return value + payload                                   # "append"


def mutate_v1(data, program):
    """Apply V1-layer mutations (module docstring) to a V1 caffemodel's bytes; an input that does
    not parse or has no V1 layers is returned unchanged."""
    from google.protobuf.message import DecodeError

    from pyskim.proto import caffe_pb2
    net = caffe_pb2.NetParameter()
    try:
        net.ParseFromString(data)
    except DecodeError:
        return data
    if not len(net.layers):
        return data
    for op in program:
        name, k, args = op[0], op[1], op[2:]
        layer = net.layers[k % len(net.layers)]
        if name == "v1text":
            spots = _v1_texts(net)
            if spots:
                target, field, index = spots[k % len(spots)]
                current = getattr(target, field) if index is None else getattr(target, field)[index]
                current = current if isinstance(current, bytes) else current.encode("utf-8")
                _set_raw_text(target, field, index, _edit_text(current, *args))
        elif name == "v1type":
            layer.ClearField("type")
            layer.MergeFromString(varint(5 << 3) + varint(args[0] & 0xFFFFFFFFFFFFFFFF))
        elif name == "v1lists":
            field, values = args
            layer.ClearField(field)
            number = layer.DESCRIPTOR.fields_by_name[field].number
            for value in values:
                if field == "blob_share_mode":               # enum values, unknown ones too: on the wire
                    layer.MergeFromString(varint(number << 3) + varint(int(value) & 0xFFFFFFFFFFFFFFFF))
                else:
                    getattr(layer, field).append(float(value))
        elif name == "v1drop":
            layer.ClearField(args[0])
    return net.SerializePartialToString()


# -- worker side -------------------------------------------------------------------------------------

class _LogErrors(logging.Handler):
    """Formats every pyskim log record (so a bad format string is noticed) and keeps the errors."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.errors = []

    def emit(self, record):
        try:
            self.format(record)
        except Exception:  # noqa: BLE001
            self.errors.append(traceback.format_exc())


class _Session:
    def __init__(self):
        self.nets = []
        self.solvers = []
        self.stage = "parse"

    def track(self, obj):
        (self.solvers if hasattr(obj, "test_nets") else self.nets).append(obj)
        return obj

    def close(self):
        nets = list(self.nets)
        for s in self.solvers:
            nets += [s.net, *s.test_nets]
        for net in nets:
            for layer in getattr(net, "layers", []):
                close = getattr(layer, "close", None)
                if close is not None:
                    try:
                        close()
                    except Exception:  # noqa: BLE001, S110  (closing is best effort)
                        pass
        self.nets.clear()
        self.solvers.clear()


def _small(net, max_elements=4_000_000, max_work=3e8):
    """True when one forward of ``net`` is cheap enough for a fuzz example."""
    blobs = net.blob_list()
    elements = sum(b.count for b in blobs) + sum(b.count for b in net.learnable_params)
    work = 0
    for index, layer in enumerate(net.layers):
        tops = net.top_ids(index)
        if layer.blobs and tops:
            top = blobs[tops[0]]
            work += layer.blobs[0].count * max(1, top.count // max(1, top.shape[1] if top.num_axes > 1 else 1))
        elif tops:
            work += 8 * blobs[tops[0]].count
    return elements <= max_elements and work <= max_work


def _scenario_net(session, params):
    import pyskim
    net = session.track(pyskim.Net(params["net"], params.get("phase", pyskim.TEST)))
    session.stage = "built"
    if _small(net):
        session.stage = "forward"
        net.forward()
        if params.get("backward"):
            session.stage = "backward"
            net.backward()


def _scenario_weights(session, params):
    import pyskim
    from pyskim.io.upgrade import read_net_binary
    if not params["weights"].endswith(".h5"):
        read_net_binary(params["weights"])
    net = session.track(pyskim.Net(params["net"], pyskim.TEST, weights=params["weights"]))
    session.stage = "loaded"
    if _small(net):
        session.stage = "forward"
        net.forward()


def _sane_solver(solver):
    p = solver.param
    return (all(t <= 8 for t in p.test_iter) and p.iter_size <= 4 and _small(solver.net)
            and all(_small(n) for n in solver.test_nets))


def _scenario_solver(session, params):
    from pyskim.solvers import get_solver
    solver = session.track(get_solver(params["solver"]))
    session.stage = "built"
    if "state" in params:
        solver.restore(params["state"])
        session.stage = "restored"
    if _sane_solver(solver):
        session.stage = "step"
        solver.step(1)


def _scenario_binaryproto(session, params):
    import pyskim
    from pyskim.io.blobproto import blobproto_to_array
    from pyskim.io.protofiles import read_binary
    blobproto_to_array(read_binary(params["file"], pyskim.caffe_pb2.BlobProto()))
    session.stage = "read"
    if "net" in params:
        net = session.track(pyskim.Net(params["net"], pyskim.TEST))
        session.stage = "forward"
        net.forward()


def _scenario_datum(session, params):
    from google.protobuf.message import DecodeError

    import pyskim
    for raw in params.get("raw_records", []):
        try:
            datum = pyskim.caffe_pb2.Datum.FromString(raw)
        except DecodeError:
            continue
        if not datum.encoded:
            pyskim.io.datum_to_array(datum)
    net = session.track(pyskim.Net(params["net"], params.get("phase", pyskim.TEST)))
    session.stage = "forward"
    for _ in range(params.get("forwards", 2)):
        net.forward()


def _scenario_selftest(session, params):
    """Misbehaviours the harness must catch (``test_fuzz.py::test_harness_detects_failures``)."""
    what = params["what"]
    if what == "pyskim":
        from pyskim.errors import NetError
        raise NetError("a documented error")
    if what == "raw":
        raise KeyError("a raw exception")
    if what == "memory":
        import numpy as np
        np.ones(1 << 40, np.uint8)
    if what == "crash":
        import ctypes
        ctypes.string_at(0)
    if what == "hang":
        time.sleep(3600)


SCENARIOS = {
    "selftest": _scenario_selftest,
    "net": _scenario_net,
    "weights": _scenario_weights,
    "solver": _scenario_solver,
    "binaryproto": _scenario_binaryproto,
    "datum": _scenario_datum,
}


def _materialize(case, folder):
    for name, data in case.get("files", {}).items():
        path = os.path.join(folder, name)
        with open(path, "wb") as f:
            f.write(data)
    for name, target in case.get("links", {}).items():
        os.symlink(target, os.path.join(folder, name))
    for name, records in case.get("lmdbs", {}).items():
        import lmdb
        env = lmdb.open(os.path.join(folder, name), map_size=64 << 20, subdir=True)
        with env.begin(write=True) as txn:
            for key, value in records:
                txn.put(key, value)
        env.close()


def run_case(case, root, log_errors):
    """Run one case in a fresh folder (the working directory meanwhile); returns the outcome dict."""
    from pyskim.errors import PyskimError
    folder = tempfile.mkdtemp(dir=root)
    cwd = os.getcwd()
    session = _Session()
    del log_errors.errors[:]
    try:
        _materialize(case, folder)
        os.chdir(folder)
        SCENARIOS[case["scenario"]](session, case.get("params", {}))
        outcome = {"status": "ok"}
    except PyskimError as e:
        outcome = {"status": "error", "type": type(e).__name__, "message": str(e)[:300]}
    except BaseException as e:  # noqa: BLE001  (anything else is a finding)
        outcome = {"status": "bad", "type": type(e).__name__, "message": str(e)[:500],
                   "traceback": traceback.format_exc()[-4000:]}
    finally:
        outcome["stage"] = session.stage
        session.close()
        gc.collect()
        os.chdir(cwd)
        shutil.rmtree(folder, ignore_errors=True)
    if outcome["status"] != "bad" and log_errors.errors:
        outcome = {"status": "bad", "type": "LoggingError", "message": "a log call failed to format",
                   "traceback": log_errors.errors[0][-4000:]}
    return outcome


def _block_python_layer_imports():
    """Fuzzed prototxts may name any module in python_param: import none of them."""
    import types

    from pyskim.layers import python_layer

    def refuse(name, package=None):
        raise ModuleNotFoundError(f"No module named {name!r} (imports disabled while fuzzing)", name=name)
    python_layer.importlib = types.SimpleNamespace(import_module=refuse)


def worker_main(conn, root, max_blob_bytes, data_limit):
    """The worker loop: receive cases, answer outcomes; ``None`` ends it."""
    import resource
    if data_limit:
        resource.setrlimit(resource.RLIMIT_DATA, (data_limit, data_limit))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import warnings

    import pyskim
    from pyskim.kernels import dense as kernels
    warnings.simplefilter("ignore")
    pyskim.set_max_blob_bytes(max_blob_bytes)
    kernels.set_num_threads(1)
    _block_python_layer_imports()
    log = logging.getLogger("pyskim")
    log.handlers[:] = []
    handler = _LogErrors()
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    logging.raiseExceptions = False
    conn.send("ready")
    while True:
        case = conn.recv()
        if case is None:
            return
        conn.send(run_case(case, root, handler))


# -- parent side -------------------------------------------------------------------------------------

class Worker:
    """A spawned worker process, restarted after a crash, a hang or ``recycle`` cases."""

    def __init__(self, root, timeout=30.0, max_blob_bytes=64 << 20, data_limit=3 << 30, recycle=400,
                 startup_timeout=300.0):
        self.root = str(root)
        self.startup_timeout = startup_timeout
        self.timeout = timeout
        self.max_blob_bytes = max_blob_bytes
        self.data_limit = data_limit
        self.recycle = recycle
        self.process = self.conn = None
        self.cases = 0
        self.restarts = 0

    def _start(self):
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        self.process = ctx.Process(target=worker_main, args=(child, self.root, self.max_blob_bytes,
                                                             self.data_limit), daemon=True)
        self.process.start()
        child.close()
        self.conn = parent
        self.cases = 0
        # the per-example time limit starts once pyskim is imported in the worker
        if not parent.poll(self.startup_timeout) or parent.recv() != "ready":
            raise RuntimeError("the fuzz worker did not start")

    def stop(self):
        if self.process is None:
            return
        try:
            self.conn.send(None)
            self.process.join(5)
        except (OSError, EOFError, BrokenPipeError):
            pass
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self.conn.close()
        self.process = self.conn = None

    def _kill(self):
        if self.process is not None and self.process.is_alive():
            self.process.kill()
        if self.process is not None:
            self.process.join(5)
            self.conn.close()
        self.process = self.conn = None
        self.restarts += 1

    def run(self, case, timeout=None):
        """Run one case; returns its outcome dict (status ok / error / bad / crash / hang) and the
        seconds it took."""
        if self.process is None or self.cases >= self.recycle:
            self.stop()
            self._start()
        self.cases += 1
        limit = timeout or self.timeout
        start = time.monotonic()
        try:
            self.conn.send(case)
            ready = self.conn.poll(limit)
            if ready:
                outcome = self.conn.recv()
            else:
                outcome = {"status": "hang", "type": "Timeout", "message": f"no answer in {limit:.0f} s"}
                self._kill()
        except (EOFError, OSError, BrokenPipeError):
            self.process.join(5)
            code = self.process.exitcode
            outcome = {"status": "crash", "type": "WorkerDied",
                       "message": f"worker exited with code {code}" + (
                           f" (signal {-code})" if code is not None and code < 0 else "")}
            self._kill()
        return outcome, time.monotonic() - start


# -- HDF5 trees (caffemodel.h5 / solverstate.h5) --------------------------------------------------------

class Huge:
    """A dataset declared with a (possibly absurd) shape and no data written (HDF5 allocates lazily)."""

    def __init__(self, shape, dtype="f4"):
        self.shape, self.dtype = tuple(shape), dtype


def hdf5_weights_tree(caffemodel):
    """``{"data": {layer: {"0": array, ...}}}`` from a binary caffemodel (Caffe's HDF5 layout)."""
    import numpy as np

    from pyskim.io.blobproto import blobproto_to_array
    from pyskim.proto import caffe_pb2
    net = caffe_pb2.NetParameter.FromString(read_seed(caffemodel))
    return {"data": {layer.name: {str(i): blobproto_to_array(b).astype(np.float32) for i, b in enumerate(layer.blobs)}
                     for layer in net.layer}}


def hdf5_state_tree(solverstate):
    import numpy as np

    from pyskim.io.blobproto import blobproto_to_array
    from pyskim.proto import caffe_pb2
    state = caffe_pb2.SolverState.FromString(read_seed(solverstate))
    return {"iter": np.int32(state.iter), "learned_net": np.bytes_(state.learned_net.encode()),
            "current_step": np.int32(state.current_step),
            "history": {str(i): blobproto_to_array(h) for i, h in enumerate(state.history)}}


def _nodes(tree, out):
    for key in list(tree):
        out.append((tree, key))
        if isinstance(tree[key], dict):
            _nodes(tree[key], out)
    return out


def mutate_hdf5_tree(tree, program):
    import numpy as np
    for op in program:
        name, args = op[0], op[1:]
        nodes = _nodes(tree, [])
        if not nodes:
            break
        parent, key = nodes[args[0] % len(nodes)]
        value = parent[key]
        if name == "drop":
            del parent[key]
        elif name == "shape":
            dims = [abs(int(d)) for d in args[1]]
            if all(d <= 4096 for d in dims) and int(np.prod(dims, dtype=object)) <= 1 << 20:
                parent[key] = np.zeros(dims, np.float32)
            else:
                parent[key] = Huge(dims)
        elif name == "dtype" and isinstance(value, np.ndarray):
            kind = args[1]
            if kind == "S":
                parent[key] = np.full(value.shape or (1,), b"abc")
            else:
                import warnings
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")           # complex -> real drops the imaginary part
                    try:
                        parent[key] = value.astype(kind)
                    except (TypeError, ValueError):           # e.g. bytes "abc" to a number: keep the value
                        pass
        elif name == "to_group":
            parent[key] = {}
        elif name == "to_dataset":
            parent[key] = np.zeros(3, np.float32)
        elif name == "scalar":
            parent[key] = np.float32(args[1]) if not isinstance(args[1], str) else np.bytes_(args[1].encode())
        elif name == "add":
            target = value if isinstance(value, dict) else parent
            target[args[1]] = np.zeros(2, np.float32)
        elif name == "fill" and isinstance(value, np.ndarray) and value.dtype.kind == "f":
            parent[key] = np.full_like(value, args[1])
    return tree


def hdf5_bytes(tree):
    """Serialize a tree of dicts / arrays / :class:`Huge` into an HDF5 file's bytes."""
    import io

    import h5py
    buffer = io.BytesIO()

    def write(group, node):
        for key, value in node.items():
            if isinstance(value, dict):
                write(group.create_group(key), value)
            elif isinstance(value, Huge):
                try:
                    group.create_dataset(key, shape=value.shape, dtype=value.dtype)
                except ValueError:       # more elements than HDF5 can count
                    group.create_dataset(key, shape=(10**9, 10**9), dtype=value.dtype)
            else:
                group.create_dataset(key, data=value)
    with h5py.File(buffer, "w") as f:
        write(f, tree)
    return buffer.getvalue()
