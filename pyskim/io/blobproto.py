"""BlobProto and Datum <-> numpy conversions, with pycaffe's ``caffe.io`` names and semantics."""
import math

import numpy as np

from ..errors import BlobProtoError
from ..proto import caffe_pb2

#: The most values a Datum's dimensions may span (empty dimensions aside): Caffe's blob count limit,
#: INT_MAX; beyond it numpy cannot even shape an empty array.
MAX_DATUM_VALUES = 2**31 - 1


def blobproto_shape(blob):
    """The shape a BlobProto describes: the legacy 4-D num/channels/height/width when any of them is
    set, else ``shape.dim`` (as ``Blob::FromProto``)."""
    if any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        return (blob.num, blob.channels, blob.height, blob.width)
    return tuple(int(d) for d in blob.shape.dim)


def _varint(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def blobproto_to_array(blob, return_diff=False):
    """Convert a BlobProto to a float32 array of its shape (``data`` or ``double_data``)."""
    shape = blobproto_shape(blob)
    if return_diff:
        name = "diff" if len(blob.diff) else "double_diff"
    else:
        name = "data" if len(blob.data) else "double_data"
    count = math.prod(shape)
    length = len(getattr(blob, name))
    if any(d < 0 for d in shape) or length != count:
        raise BlobProtoError(f"blob of shape {list(shape)} holds {length} values, expected {count}")
    return np.asarray(getattr(blob, name), dtype=np.float32).reshape(shape)


def _packed_field(field_number, values):
    """Wire bytes of a packed float field (BlobProto ``data`` = 5, ``diff`` = 6): building them with
    numpy and merging is ~5x faster than extending the repeated field value by value."""
    raw = np.ascontiguousarray(values, dtype="<f4").tobytes()
    return _varint(field_number << 3 | 2) + _varint(len(raw)) + raw


def array_to_blobproto(arr, diff=None):
    """Convert an array (and optional diff) to a BlobProto with ``shape`` and float ``data``."""
    blob = caffe_pb2.BlobProto()
    arr = np.asarray(arr)
    blob.shape.dim.extend(arr.shape)
    payload = _packed_field(5, arr)
    if diff is not None:
        payload += _packed_field(6, diff)
    blob.MergeFromString(payload)
    return blob


def arraylist_to_blobprotovector_str(arraylist):
    """Serialize a list of arrays as a BlobProtoVector string."""
    vec = caffe_pb2.BlobProtoVector()
    vec.blobs.extend([array_to_blobproto(arr) for arr in arraylist])
    return vec.SerializeToString()


def blobprotovector_str_to_arraylist(text):
    """Parse a serialized BlobProtoVector into a list of arrays."""
    vec = caffe_pb2.BlobProtoVector()
    vec.ParseFromString(text)
    return [blobproto_to_array(blob) for blob in vec.blobs]


def array_to_datum(arr, label=None):
    """A 3-D array to a Datum: uint8 goes to ``data`` bytes, other dtypes to ``float_data``."""
    if arr.ndim != 3:
        raise ValueError("Incorrect array shape.")
    datum = caffe_pb2.Datum()
    datum.channels, datum.height, datum.width = arr.shape
    if arr.dtype == np.uint8:
        datum.data = arr.tobytes()
    else:
        datum.float_data.extend(arr.astype(float).flat)
    if label is not None:
        datum.label = label
    return datum


def datum_to_array(datum):
    """A (non-encoded) Datum to a C x H x W array: uint8 from ``data``, float from ``float_data``."""
    shape = (datum.channels, datum.height, datum.width)
    if min(shape) < 0:
        raise BlobProtoError(f"Datum has a negative dimension: {shape}")
    if math.prod(max(d, 1) for d in shape) > MAX_DATUM_VALUES:
        raise BlobProtoError(f"Datum dimensions {shape} are too large (more than {MAX_DATUM_VALUES} values, "
                             f"empty dimensions aside)")
    if len(datum.data):
        raw = np.frombuffer(datum.data, dtype=np.uint8)
        if raw.size != math.prod(shape):
            raise BlobProtoError(f"Datum holds {raw.size} bytes, expected {shape}")
        return raw.reshape(shape)
    values = np.array(datum.float_data).astype(float)
    if values.size != math.prod(shape):
        raise BlobProtoError(f"Datum holds {values.size} floats, expected {shape}")
    return values.reshape(shape)
