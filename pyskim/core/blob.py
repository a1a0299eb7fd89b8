"""Blob: an N-d float32 array with its gradient, as Caffe's ``Blob<float>``.

Data and diff live in flat buffers of a given capacity; ``data``/``diff`` are live views of the first
``count`` elements in the current shape. Like Caffe, reshaping to a smaller or equal count keeps the
buffers (and their values), a larger count reallocates zeroed ones. Sharing (``share_data``,
``share_diff``) makes two blobs use the same buffer, as Caffe does for in-place layers' params and
shared weights.

Hand-outs. ``data`` returns a writable view and counts the hand-out; :meth:`Blob.data_mark` and
:meth:`Blob.data_untouched_since` use that count, and whether any array of the buffer is alive, to
prove that nobody wrote the data in between (the sparse engines skip their bitwise weight compare
then). ``readonly_data`` reads the data without a hand-out: NumPy refuses to make it writeable.

Released data. :meth:`Blob.release_data` drops the data array of a buffer no array refers to and
keeps a callback that gives the same values back; the next read of the data (``data``,
``readonly_data``) calls it and puts the array back. The sparse engines use it to drop the dense copy
of weights they hold in sparse form (``pyskim.sparse``); the blob looks the same to everyone else.
"""
import dataclasses
import logging
import math
import os
import sys

import numpy as np

from ..errors import NetError, OutOfMemoryError

MAX_BLOB_AXES = 32
_INT_MAX = 2**31 - 1
DEFAULT_MAX_BLOB_BYTES = 8 << 30
_UNITS = {"": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MB": 1 << 20, "MIB": 1 << 20,
          "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30, "T": 1 << 40, "TB": 1 << 40, "TIB": 1 << 40}


def _parse_bytes(text):
    """``"1073741824"``, ``"512M"``, ``"8GiB"`` ... as a positive int (binary units), else None."""
    text = str(text).strip().upper().replace(" ", "")
    digits = text.rstrip("KMGTIB")
    unit = text[len(digits):]
    if not digits.isdigit() or unit not in _UNITS:
        return None
    value = int(digits) * _UNITS[unit]
    return value if value > 0 else None


def _limit_from_env():
    text = os.environ.get("PYSKIM_MAX_BLOB_BYTES")
    if text is None or not text.strip():
        return DEFAULT_MAX_BLOB_BYTES
    value = _parse_bytes(text)
    if value is None:
        logging.getLogger("pyskim").warning(
            "ignoring PYSKIM_MAX_BLOB_BYTES=%r (expected a positive number of bytes, e.g. 8589934592 or "
            "8G); using the default of 8 GiB", text)
        return DEFAULT_MAX_BLOB_BYTES
    return value


#: Largest allocation (in bytes) that a blob, a data batch or a layer's scratch buffer may ask for;
#: anything larger is refused with a NetError/DataError *before* allocating. Default 8 GiB; set it
#: with :func:`set_max_blob_bytes` or the ``PYSKIM_MAX_BLOB_BYTES`` environment variable (read at
#: import; a number of bytes, optionally with a K/M/G/T suffix, binary units: ``PYSKIM_MAX_BLOB_BYTES=2G``).
max_blob_bytes = _limit_from_env()


def set_max_blob_bytes(limit):
    """Set the largest blob (in bytes; an int, or a string such as ``"2G"``) pyskim allocates and
    return the previous limit. A prototxt, weight file or data record asking for more (Input or
    DummyData shapes, a layer's weights such as InnerProduct ``num_output: 1000000000``, a
    convolution's im2col buffer, a data batch, a Reshape) fails with a clear
    :class:`~pyskim.errors.NetError` (or :class:`~pyskim.errors.DataError` for data batches) that names
    the blob, instead of exhausting memory. Also settable with ``PYSKIM_MAX_BLOB_BYTES``."""
    global max_blob_bytes
    value = limit if isinstance(limit, int) and not isinstance(limit, bool) else None
    if isinstance(limit, str):
        value = _parse_bytes(limit)
    if value is None or value <= 0:
        raise ValueError(f"set_max_blob_bytes: expected a positive number of bytes, got {limit!r}")
    previous, max_blob_bytes = max_blob_bytes, int(value)
    return previous


def get_max_blob_bytes():
    """The current allocation limit in bytes (see :func:`set_max_blob_bytes`)."""
    return max_blob_bytes


def shape_count(shape):
    """Exact element count of ``shape`` (Python ints: no int64 overflow for absurd dims)."""
    return math.prod(int(d) for d in shape)


def check_allocation(shape, what, itemsize=4, error=NetError):
    """Raise ``error`` naming ``what`` when an array of ``shape`` would exceed :data:`max_blob_bytes`."""
    nbytes = shape_count(shape) * itemsize
    if nbytes > max_blob_bytes:
        raise error(f"{what} of shape {list(shape)} needs {_human(nbytes)}, over the limit of "
                    f"{_human(max_blob_bytes)} (pyskim.set_max_blob_bytes / PYSKIM_MAX_BLOB_BYTES)")
    return nbytes


def _human(nbytes):
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= size:
            return f"{nbytes / size:.1f} {unit}"
    return f"{nbytes} bytes"


class _Buffer:
    """A flat float32 buffer of ``size`` elements that several blobs may share. ``handouts`` counts the
    writable views ``Blob.data`` gave out; ``readonly()`` is a read-only array over the same memory
    whose base is a read-only memoryview, so neither it nor any view of it can be made writeable.
    ``array`` is None while the values are released (:meth:`release`); :meth:`restore` brings them
    back."""

    __slots__ = ("_provider", "_readonly", "array", "handouts", "size")

    def __init__(self, size):
        self.array = np.zeros(size, dtype=np.float32)
        self.size = size
        self.handouts = 0
        self._readonly = None
        self._provider = None

    def readonly(self):
        """The read-only array over the whole buffer (made at the first call)."""
        if self.array is None:
            self.restore()
        if self._readonly is None:
            self._readonly = np.frombuffer(memoryview(self.array).toreadonly(), np.float32)
        return self._readonly

    def unshared(self):
        """True when no array but this buffer's own (and read-only views of ``readonly()``) refers to
        the memory: every NumPy view of ``array``, a view of a view included, holds ``array`` alive.
        A released buffer has no array at all."""
        return self.array is None or _references(self) <= _OWN_REFERENCES[self._readonly is not None]

    def release(self, provider):
        """Drop the array; ``provider()`` returns the same values (``size`` float32) when needed."""
        self.array = self._readonly = None
        self._provider = provider

    def restore(self):
        """Put the released values back, from the provider given to :meth:`release`. The array must
        own its memory (the hand-out proofs count references to it), so anything else is copied."""
        values = np.asarray(self._provider())
        if values.size != self.size:
            raise NetError(f"released blob data came back with {values.size} values, expected {self.size}")
        if values.dtype != np.float32 or values.ndim != 1 or values.base is not None:
            values = values.reshape(-1).astype(np.float32)         # a new array of its own
        self.array, self._provider = values, None


def _references(buffer):
    return sys.getrefcount(buffer.array)


def _own_references():
    """(references to a buffer's array without, with its read-only array), measured on a fresh one."""
    probe = _Buffer(1)
    alone = _references(probe)
    probe.readonly()
    return alone, _references(probe)


_OWN_REFERENCES = _own_references()


@dataclasses.dataclass(frozen=True, eq=False)
class DataMark:
    """The state of a blob's data at :meth:`Blob.data_mark`: its buffer, shape, hand-out count and
    whether any writable array of it was alive."""

    buffer: _Buffer
    shape: tuple
    handouts: int
    unshared: bool


class Blob:
    """A float32 tensor with data and diff, indexing and legacy accessors as Caffe's Blob."""

    #: SkimCaffe's connectivity mask (float32, the blob's shape) or None: the solver multiplies the
    #: update by it, so masked weights stay fixed (set by ``pyskim.sparse.sparsity.build_connectivity_masks``).
    connectivity_mask = None

    def __init__(self, *shape, name=""):
        self.name = name
        self._shape = ()
        self._count = 1
        self._data = _Buffer(0)
        self._diff = _Buffer(0)
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        self.reshape(*shape)

    # -- shape -----------------------------------------------------------------------------------
    def reshape(self, *shape):
        """Set a new shape; keeps the memory when the new count fits the current capacity."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list, np.ndarray)):
            shape = tuple(shape[0])
        shape = tuple(int(d) for d in shape)
        if shape == self._shape and self._count <= self._data.size:
            return              # every layer reshapes its tops on every forward: mostly to the same shape
        if len(shape) > MAX_BLOB_AXES:
            raise NetError(f"blob '{self.name}': {len(shape)} axes exceed the maximum of {MAX_BLOB_AXES}")
        if any(d < 0 for d in shape):
            raise NetError(f"blob '{self.name}': negative dimension in shape {list(shape)}")
        if any(d > _INT_MAX for d in shape):
            raise NetError(f"blob '{self.name}': dimension over INT_MAX in shape {list(shape)}")
        count = shape_count(shape)
        check_allocation(shape, f"blob '{self.name}'")
        self._shape = shape
        self._count = count
        if count > self._data.size:
            try:
                data, diff = _Buffer(count), _Buffer(count)
            except MemoryError:
                raise OutOfMemoryError(f"blob '{self.name}': cannot allocate {_human(8 * count)} for data and "
                                       f"diff of shape {list(shape)}: out of memory") from None
            self._data, self._diff = data, diff

    def reshape_like(self, other):
        self.reshape(other.shape)

    @property
    def shape(self):
        return self._shape

    @property
    def count(self):
        return self._count        # shape_count(self._shape), kept by reshape (read on every access)

    def count_range(self, start, end=None):
        """Product of the dims in [start, end), like ``Blob::count(start, end)``."""
        return math.prod(self._shape[start:end])

    @property
    def num_axes(self):
        return len(self._shape)

    def canonical_axis(self, axis):
        """Map a possibly negative axis to [0, num_axes), as ``Blob::CanonicalAxisIndex``."""
        n = len(self._shape)
        if not -n <= axis < max(n, 1):
            raise NetError(f"axis {axis} out of range for blob '{self.name}' with shape {list(self._shape)}")
        return axis + n if axis < 0 else axis

    def legacy_shape(self, index):
        """Caffe's LegacyShape: dims indexed from the leading axes, 1 where the axis does not exist."""
        n = len(self._shape)
        if index >= n or index < -n:
            return 1
        return self._shape[index]

    num = property(lambda self: self.legacy_shape(0))
    channels = property(lambda self: self.legacy_shape(1))
    height = property(lambda self: self.legacy_shape(2))
    width = property(lambda self: self.legacy_shape(3))

    # -- data ------------------------------------------------------------------------------------
    @property
    def data(self):
        """The data as a writable view (counted as a hand-out, see the module docstring)."""
        buffer = self._data
        if buffer.array is None:
            buffer.restore()
        buffer.handouts += 1
        return buffer.array[: self._count].reshape(self._shape)

    @property
    def readonly_data(self):
        """The data as a read-only view that NumPy refuses to make writeable; not a hand-out."""
        return self._data.readonly()[: self._count].reshape(self._shape)

    def data_mark(self):
        """A :class:`DataMark` of the data now, for :meth:`data_untouched_since`."""
        buffer = self._data
        return DataMark(buffer, self._shape, buffer.handouts, buffer.unshared())

    def data_untouched_since(self, mark):
        """True when the data provably was not written since ``mark`` (from :meth:`data_mark`): the
        same buffer and shape, no writable view handed out since, and none alive when the mark was
        taken (so none existed in between: a new one comes from ``data`` or from a live one). False
        means the data may have changed; comparing the values tells. Writes through raw pointers
        (``ctypes``) are not arrays and are not seen."""
        buffer = self._data
        return (mark.unshared and mark.buffer is buffer and mark.handouts == buffer.handouts
                and mark.shape == self._shape)

    @data.setter
    def data(self, value):
        self.data[...] = value

    def release_data(self, provider):
        """Drop the data array until the data is read again, when ``provider()`` must return the
        same values (an array of ``count`` float32, any shape); a mark of :meth:`data_mark` stays
        valid across the release. Refused (False) unless the blob fills its buffer and no array of
        the data is alive (a view kept by anyone would no longer be the blob's data); True when
        released. Blobs sharing the buffer (:meth:`share_data`) see the same released data."""
        buffer = self._data
        if buffer.array is None or buffer.size != self._count or not buffer.unshared():
            return False
        buffer.release(provider)
        return True

    def restore_data(self):
        """Put released data back now (nothing when it is not released)."""
        if self._data.array is None:
            self._data.restore()

    @property
    def data_released(self):
        """Whether the data array is released now (:meth:`release_data`)."""
        return self._data.array is None

    @property
    def diff(self):
        return self._diff.array[: self._count].reshape(self._shape)

    @diff.setter
    def diff(self, value):
        self.diff[...] = value

    def share_data(self, other):
        """Use ``other``'s data buffer (counts must agree), as ``Blob::ShareData``."""
        self._check_same_count(other)
        self._data = other._data

    def share_diff(self, other):
        """Use ``other``'s diff buffer (counts must agree), as ``Blob::ShareDiff``."""
        self._check_same_count(other)
        self._diff = other._diff

    def shares_data_with(self, other):
        return self._data is other._data

    def _check_same_count(self, other):
        if self.count != other.count:
            raise NetError(f"cannot share blob '{other.name}' {list(other.shape)} with '{self.name}' "
                           f"{list(self.shape)}: counts differ")

    def __repr__(self):
        return f"Blob({self.name!r}, shape={list(self._shape)})"
