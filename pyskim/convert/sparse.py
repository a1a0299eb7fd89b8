"""A caffemodel as a compact sparse file (``.npz``), and back, bit for bit.

Format ``pyskim-sparse`` version 1
==================================

The file is a zip archive written by :func:`numpy.savez_compressed` (deflate), readable with
``numpy.load(path, allow_pickle=False)``: every member is a plain ``.npy`` array of a numeric dtype,
nothing is pickled. Members:

``header``
    uint8, UTF-8 JSON text::

        {"format": "pyskim-sparse", "version": 1, "blobs": [ENTRY, ...]}

    with one ENTRY per stored value array, in storage order::

        {"key": "b3.data",          # member prefix: b<blob index>.<field>
         "blob": 3,                 # index of the BlobProto in the walk order (below)
         "layer": "ip1",            # name of the layer holding it ("" when none)
         "param": 0,                # index of the blob in that layer's ``blobs``
         "field": "data",           # data | diff | double_data | double_diff
         "dtype": "float32",        # float32 (data, diff) or float64 (double_*)
         "shape": [500, 800],       # the blob's shape (legacy num/channels/height/width when set)
         "count": 400000,           # number of values in the field
         "encoding": "csr",         # "dense" or "csr"
         "nnz": 40000}              # values stored (count for dense)

``net``
    uint8: the serialized ``caffe.NetParameter`` with the four value fields (``data``, ``diff``,
    ``double_data``, ``double_diff``) of every ``BlobProto`` emptied. Everything else (layer
    definitions, ``shape``, the legacy ``num/channels/height/width``, unknown fields) is kept as is.

``<key>.dense`` (encoding ``dense``)
    the ``count`` values, of ``dtype``, flat.

``<key>.indptr``, ``<key>.indices``, ``<key>.values`` (encoding ``csr``)
    the values viewed as a matrix of ``rows = shape[0]`` and ``cols = count / rows`` (one row of
    ``count`` when the shape is empty, holds a 0 or does not match ``count``), in compressed sparse
    row form. ``indptr`` (rows + 1 entries) gives each row's range in ``indices``/``values``;
    ``values`` (``dtype``) holds the nonzero values in row-major order; ``indices`` holds their
    columns, delta-encoded within each row: the first entry of a row is its column, each following
    entry the column minus the previous column of the same row. ``indptr`` and ``indices`` use the
    smallest unsigned integer dtype (uint8, uint16, uint32, uint64) that holds their largest entry.
    "Nonzero" is decided on the bits, so ``-0.0`` and NaN payloads are stored and come back exactly.

Each field is stored dense or CSR, whichever takes fewer bytes (a CSR member costs ~200 bytes of zip
overhead, counted). Empty fields are not stored.

Walk order: the ``BlobProto`` messages of the ``NetParameter`` in depth-first order of its set fields
(``ListFields``, by field number, repeated fields in order): ``layer[i].blobs[j]`` for current
models, ``layers[i].blobs[j]`` for V1 ones and ``layers[i].layer.blobs[j]`` for V0 ones. A reader
parses ``net``, walks it in the same order and appends the values of each entry to blob ``blob``'s
``field``; serializing the result gives the bytes that pyskim writes for the original caffemodel.
"""
import io
import json

import numpy as np
from google.protobuf.message import DecodeError

from ..errors import ConversionError, ModelFileError
from ..io.blobproto import blobproto_shape
from ..io.files import atomic_write
from ..io.hdf5 import read_net_hdf5
from ..io.protofiles import is_hdf5, read_binary
from ..proto import caffe_pb2

FORMAT = "pyskim-sparse"
VERSION = 1
VALUE_FIELDS = (("data", np.float32, 5), ("diff", np.float32, 6),
                ("double_data", np.float64, 8), ("double_diff", np.float64, 9))
_DTYPES = {name: np.dtype(dtype).newbyteorder("<") for name, dtype, _ in VALUE_FIELDS}
_FIELD_NUMBERS = {name: number for name, _, number in VALUE_FIELDS}
_BITS = {4: np.uint32, 8: np.uint64}
#: Approximate zip + npy header bytes of one compressed member (used to choose dense vs CSR).
MEMBER_OVERHEAD = 200


# --- walking the message --------------------------------------------------------------------------

def walk_blobs(message, owner=("", 0)):
    """Yield ``(layer name, index in its parent's list, BlobProto)`` for every BlobProto in
    ``message``, in the format's walk order."""
    name = getattr(message, "name", "") if "name" in message.DESCRIPTOR.fields_by_name else owner[0]
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        items = value if field.is_repeated else [value]
        for j, item in enumerate(items):
            if field.message_type.full_name == "caffe.BlobProto":
                yield name, j, item
            else:
                yield from walk_blobs(item, (name, j))


def _unsigned_dtype(max_value):
    for dtype in (np.uint8, np.uint16, np.uint32, np.uint64):
        if max_value <= np.iinfo(dtype).max:
            return dtype
    raise ConversionError(f"index {max_value} does not fit 64 bits")


def _matrix_dims(shape, count):
    if len(shape) and shape[0] > 0 and int(np.prod(shape, dtype=np.int64)) == count:
        return int(shape[0]), count // int(shape[0])
    return 1, count


# --- encoding -------------------------------------------------------------------------------------

def encode_csr(values, rows, cols):
    """CSR of ``values`` (flat, ``rows * cols``) with delta-encoded columns: (indptr, indices, values)."""
    matrix = values.reshape(rows, cols)
    bits = matrix.view(_BITS[values.dtype.itemsize])
    row_index, col_index = np.nonzero(bits)
    nnz = len(col_index)
    counts = np.bincount(row_index, minlength=rows)
    indptr = np.zeros(rows + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    delta = col_index.astype(np.int64)
    if nnz:
        delta[1:] -= col_index[:-1]
        starts = indptr[:-1][counts > 0]
        delta[starts] = col_index[starts]
    indptr = indptr.astype(_unsigned_dtype(nnz))
    indices = delta.astype(_unsigned_dtype(int(delta.max()) if nnz else 0))
    return indptr, indices, matrix[row_index, col_index]


def decode_csr(indptr, indices, values, rows, cols, where="blob"):
    """Inverse of :func:`encode_csr`: the flat ``rows * cols`` array."""
    indptr = indptr.astype(np.int64)
    nnz = len(values)
    if indptr.shape != (rows + 1,) or indptr[0] != 0 or indptr[-1] != nnz or np.any(np.diff(indptr) < 0) \
            or len(indices) != nnz:
        raise ConversionError(f"{where}: inconsistent CSR arrays (indptr of {len(indptr)} entries for "
                              f"{rows} rows, {len(indices)} indices, {nnz} values)")
    counts = np.diff(indptr)
    row_index = np.repeat(np.arange(rows, dtype=np.int64), counts)
    total = np.cumsum(indices.astype(np.int64))
    starts = indptr[:-1][counts > 0]
    base = np.repeat(total[starts] - indices[starts].astype(np.int64), counts[counts > 0])
    col_index = total - base
    if nnz and (col_index.min() < 0 or col_index.max() >= cols):
        raise ConversionError(f"{where}: CSR column index out of range [0, {cols})")
    out = np.zeros(rows * cols, values.dtype)
    out[row_index * cols + col_index] = values
    return out


def _field_values(blob, field):
    return np.asarray(getattr(blob, field), dtype=_DTYPES[field])


def _set_field_values(blob, field, array):
    """Append ``array`` to the packed repeated ``field`` of ``blob`` through the wire format (fast and
    bit-exact: the bytes are copied, no float conversion)."""
    payload = np.ascontiguousarray(array, dtype=_DTYPES[field]).tobytes()
    tag = (_FIELD_NUMBERS[field] << 3) | 2
    length, size = bytearray(), len(payload)
    while True:
        byte = size & 0x7F
        size >>= 7
        length.append(byte | (0x80 if size else 0))
        if not size:
            break
    blob.MergeFromString(bytes([tag]) + bytes(length) + payload)


def encode_net(net_param):
    """The members of the sparse file for a NetParameter (a dict of arrays) and statistics."""
    skeleton = caffe_pb2.NetParameter()
    skeleton.CopyFrom(net_param)
    entries, arrays = [], {}
    total = nonzero = 0
    for index, ((layer, j, blob), (_, _, bare)) in enumerate(zip(walk_blobs(net_param), walk_blobs(skeleton))):
        for field, _, _ in VALUE_FIELDS:
            values = _field_values(blob, field)
            bare.ClearField(field)
            if not values.size:
                continue
            key = f"b{index}.{field}"
            shape = blobproto_shape(blob)
            rows, cols = _matrix_dims(shape, values.size)
            indptr, indices, nz = encode_csr(values, rows, cols)
            csr_bytes = indptr.nbytes + indices.nbytes + nz.nbytes + 2 * MEMBER_OVERHEAD
            dense = values.nbytes <= csr_bytes
            if dense:
                arrays[f"{key}.dense"] = values
            else:
                arrays.update({f"{key}.indptr": indptr, f"{key}.indices": indices, f"{key}.values": nz})
            total += values.size
            nonzero += len(nz)
            entries.append({"key": key, "blob": index, "layer": layer, "param": j, "field": field,
                            "dtype": _DTYPES[field].name, "shape": [int(d) for d in shape],
                            "count": int(values.size), "encoding": "dense" if dense else "csr",
                            "nnz": int(values.size if dense else len(nz))})
    header = {"format": FORMAT, "version": VERSION, "blobs": entries}
    arrays["header"] = np.frombuffer(json.dumps(header, indent=1).encode("utf-8"), np.uint8)
    arrays["net"] = np.frombuffer(skeleton.SerializeToString(), np.uint8)
    stats = {"values": total, "nonzero": nonzero, "density": nonzero / total if total else 0.0,
             "csr_fields": sum(e["encoding"] == "csr" for e in entries), "fields": len(entries)}
    return arrays, stats


def _member(members, name, where):
    if name not in members:
        raise ConversionError(f"{where}: member '{name}' is missing from the sparse file")
    return members[name]


def decode_net(members, source="<sparse file>"):
    """Rebuild the NetParameter from the members of a sparse file (a mapping of arrays)."""
    try:
        header = json.loads(bytes(_member(members, "header", source)).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConversionError(f"{source}: the header is not valid JSON: {e}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ConversionError(f"{source}: not a {FORMAT} file (header format {header.get('format')!r})"
                              if isinstance(header, dict) else f"{source}: malformed header")
    if header.get("version") != VERSION:
        raise ConversionError(f"{source}: {FORMAT} version {header.get('version')} is not supported "
                              f"(this reader knows version {VERSION})")
    net = caffe_pb2.NetParameter()
    try:
        net.ParseFromString(bytes(_member(members, "net", source)))
    except (DecodeError, RuntimeError, ValueError) as e:
        raise ConversionError(f"{source}: the stored NetParameter cannot be parsed: {e}") from None
    blobs = list(walk_blobs(net))
    for entry in header.get("blobs", []):
        try:
            index, field, key = int(entry["blob"]), entry["field"], entry["key"]
            count, encoding = int(entry["count"]), entry["encoding"]
        except (KeyError, TypeError, ValueError) as e:
            raise ConversionError(f"{source}: malformed header entry {entry!r} ({e})") from None
        where = f"{source}: layer '{entry.get('layer', '')}' blob {entry.get('param', '?')} {field}"
        if field not in _DTYPES or not 0 <= index < len(blobs):
            raise ConversionError(f"{where}: no such blob field (blob {index} of {len(blobs)}, field {field})")
        dtype = _DTYPES[field]
        if encoding == "dense":
            values = _member(members, f"{key}.dense", where)
        elif encoding == "csr":
            stored = [_member(members, f"{key}.{part}", where) for part in ("indptr", "indices", "values")]
            if any(a.dtype.kind != "u" for a in stored[:2]):
                raise ConversionError(f"{where}: CSR indptr/indices must be unsigned integers")
            rows, cols = _matrix_dims(tuple(entry.get("shape", ())), count)
            values = decode_csr(*stored[:2], stored[2].astype(dtype.newbyteorder("="), copy=False),
                                rows, cols, where)
        else:
            raise ConversionError(f"{where}: unknown encoding {encoding!r}")
        if values.dtype != dtype or values.size != count:
            raise ConversionError(f"{where}: holds {values.size} {values.dtype} values, the header says "
                                  f"{count} {dtype.name}")
        _set_field_values(blobs[index][2], field, values)
    return net


# --- files ----------------------------------------------------------------------------------------

def save_sparse(net_param, path):
    """Write ``net_param`` (a NetParameter with weights) as a sparse file; returns statistics."""
    arrays, stats = encode_net(net_param)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    data = buffer.getvalue()
    atomic_write(path, data)
    stats["bytes"] = len(data)
    return stats


ZIP_SIGNATURE = b"PK\x03\x04"


def load_sparse(path):
    """Read a sparse file back into a NetParameter. A file that is not a zip archive (a prototxt,
    a caffemodel, ...) is refused before numpy looks at it."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(ZIP_SIGNATURE))
    except OSError as e:
        raise ModelFileError(f"Could not open sparse file {path}: {e.strerror or e}") from None
    if head != ZIP_SIGNATURE:
        raise ConversionError(f"{path}: not a {FORMAT} file (a .npz zip archive written by 'convert.py "
                              f"to-sparse'); it starts with {head!r}")
    try:
        with np.load(path, allow_pickle=False) as members:
            return decode_net(dict(members.items()), source=str(path))
    except OSError as e:
        raise ModelFileError(f"Could not open sparse file {path}: {e.strerror or e}") from None
    except ValueError as e:  # not a valid zip / .npy, or an object array (pickle refused)
        if isinstance(e, ConversionError):
            raise
        raise ConversionError(f"{path}: not a {FORMAT} file: {e}") from None


def caffemodel_to_sparse(model_path, out_path):
    """Convert a caffemodel (read as is, not upgraded) into a sparse file; returns statistics,
    with ``dense_bytes`` (the caffemodel as pyskim writes it) and ``ratio`` (sparse / dense). An HDF5
    caffemodel is read as layers with names and blobs (:func:`pyskim.io.hdf5.read_net_hdf5`);
    :func:`sparse_to_caffemodel` then gives a binary caffemodel of the same weights."""
    if is_hdf5(model_path):
        net = read_net_hdf5(model_path)
    else:
        net = read_binary(model_path, caffe_pb2.NetParameter())
    stats = save_sparse(net, out_path)
    stats["dense_bytes"] = net.ByteSize()
    stats["ratio"] = stats["bytes"] / stats["dense_bytes"] if stats["dense_bytes"] else 0.0
    return stats


def sparse_to_caffemodel(sparse_path, out_path):
    """Convert a sparse file back into a caffemodel; returns the NetParameter written."""
    net = load_sparse(sparse_path)
    atomic_write(out_path, net.SerializeToString())
    return net
