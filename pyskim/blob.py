"""Blob: an N-d float32 array with its gradient, as Caffe's ``Blob<float>``.

Data and diff live in flat buffers of a given capacity; ``data``/``diff`` are live views of the first
``count`` elements in the current shape. Like Caffe, reshaping to a smaller or equal count keeps the
buffers (and their values), a larger count reallocates zeroed ones. Sharing (``share_data``,
``share_diff``) makes two blobs use the same buffer, as Caffe does for in-place layers' params and
shared weights.
"""
import numpy as np

from .errors import NetError

MAX_BLOB_AXES = 32
#: A blob larger than this many bytes is refused before allocating (configurable at run time).
max_blob_bytes = 8 << 30


class _Buffer:
    """A flat float32 buffer that several blobs may share."""

    __slots__ = ("array",)

    def __init__(self, size):
        self.array = np.zeros(size, dtype=np.float32)


class Blob:
    """A float32 tensor with data and diff, indexing and legacy accessors as Caffe's Blob."""

    def __init__(self, *shape, name=""):
        self.name = name
        self._shape = ()
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
        if len(shape) > MAX_BLOB_AXES:
            raise NetError(f"blob '{self.name}': {len(shape)} axes exceed the maximum of {MAX_BLOB_AXES}")
        if any(d < 0 for d in shape):
            raise NetError(f"blob '{self.name}': negative dimension in shape {list(shape)}")
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if count * 4 > max_blob_bytes:
            raise NetError(
                f"blob '{self.name}' of shape {list(shape)} needs {count * 4 / 2**30:.1f} GiB, over the "
                f"limit of {max_blob_bytes / 2**30:.1f} GiB (pyskim.blob.max_blob_bytes)")
        self._shape = shape
        if count > self._data.array.size:
            self._data = _Buffer(count)
            self._diff = _Buffer(count)

    def reshape_like(self, other):
        self.reshape(other.shape)

    @property
    def shape(self):
        return self._shape

    @property
    def count(self):
        return int(np.prod(self._shape, dtype=np.int64)) if self._shape else 1

    def count_range(self, start, end=None):
        """Product of the dims in [start, end), like ``Blob::count(start, end)``."""
        return int(np.prod(self._shape[start:end], dtype=np.int64))

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
        return self._data.array[: self.count].reshape(self._shape)

    @data.setter
    def data(self, value):
        self.data[...] = value

    @property
    def diff(self):
        return self._diff.array[: self.count].reshape(self._shape)

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
