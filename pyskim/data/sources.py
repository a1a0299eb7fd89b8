"""Batch loaders behind the prefetching data layers (each one's ``load_batch`` runs in the
prefetch thread and must not reference its layer).

Each loader reads the share of its source given by the data shard in force when it is built
(:mod:`pyskim.data.shard`): in a data-parallel run, rank r of N reads global batches r, r + N, ...
of the stream one process would read; alone, the whole stream."""
import numpy as np

from ..core.blob import check_allocation
from ..errors import DataError
from ..io.hdf5 import read_float_dataset
from .db import LMDBReader
from .imgproc import hwc_to_chw, read_image
from .shard import data_shard


class DatumBatches:
    """Batches from an LMDB of Datums, as ``DataLayer::load_batch``: records in key order, wrapping
    around at the end; the batch shape comes from its first record, every other record must fit it."""

    def __init__(self, source, batch_size, transformer, output_labels, owner):
        self.reader = LMDBReader(source)
        self.batch_size = batch_size
        self.transformer = transformer
        self.output_labels = output_labels
        self.owner = owner
        self.shard = data_shard()
        self.skip_next = self.shard.records_before_first(batch_size)

    def _where(self, key):
        return f"layer '{self.owner}': LMDB '{self.reader.source}' record {key.decode('utf-8', 'replace')!r}"

    def first_shape(self):
        """The N x C x H x W top shape the first record implies (``DataLayerSetUp``)."""
        key, datum = self.reader.peek()
        where = self._where(key)
        shape = self.transformer.infer_shape(self.transformer.datum_to_chw(datum, where), where)
        return (self.batch_size,) + shape[1:]

    def load_batch(self):
        if self.skip_next:
            self.reader.skip(self.skip_next)
        self.skip_next = self.shard.records_between(self.batch_size)
        records = [self.reader.next() for _ in range(self.batch_size)]
        labels = None
        if self.output_labels:
            labels = np.fromiter((datum.label for _, datum in records), np.float32, self.batch_size)
        if self.transformer.elementwise:
            data = self._plain_batch(records)
            if data is not None:
                return data, labels
        data = None
        for item, (key, datum) in enumerate(records):
            where = self._where(key)
            chw = self.transformer.datum_to_chw(datum, where)
            if data is None:
                data = _batch_array(self.batch_size, self.transformer.infer_shape(chw, where), where)
            self.transformer.transform(chw, data[item], where)
        return data, labels

    def _plain_batch(self, records):
        """The whole batch in one vectorised transform when every record is a raw uint8 Datum of the
        first one's shape (the common case: convert_mnist, convert_imageset without -encoded); else
        None, and the records go through the per-item path (which also reports bad records)."""
        first = records[0][1]
        c, h, w = first.channels, first.height, first.width
        count = c * h * w
        if min(c, h, w) <= 0:
            return None
        for _, datum in records:
            if (datum.encoded or len(datum.data) != count or datum.channels != c or datum.height != h
                    or datum.width != w):
                return None
        pixels = np.frombuffer(b"".join([datum.data for _, datum in records]), np.uint8)
        data = _batch_array(self.batch_size, (1, c, h, w), self._where(records[0][0]))
        self.transformer.transform_batch(pixels.reshape(data.shape), data)
        return data


def _batch_array(batch_size, item_shape, where):
    """The float32 batch array, refused (DataError) before allocating when over the blob limit."""
    shape = (batch_size,) + tuple(item_shape[1:])
    check_allocation(shape, f"{where}: data batch", error=DataError)
    return np.empty(shape, np.float32)


def check_batch_size(batch_size, owner, field):
    if batch_size <= 0:
        raise DataError(f"layer '{owner}': {field} must be positive, got {batch_size}")


def read_image_list(path, context):
    """Parse an image list file (ImageData, convert_imageset): one ``<path> <label>`` per line, split
    at the LAST space (so paths may contain spaces), the label an integer; blank lines are skipped.
    ``context`` (e.g. "layer 'data'") starts the error messages."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, ValueError) as e:       # ValueError: a NUL byte in the path
        raise DataError(f"{context}: cannot open image list '{path}': {e}") from None
    lines = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        name, space, label = line.rpartition(" ")
        if not space or not name or not _is_int(label):
            raise DataError(f"{context}: {path}:{number}: expected '<path> <integer label>', got {line!r}")
        lines.append((name, int(label)))
    if not lines:
        raise DataError(f"{context}: image list '{path}' is empty")
    return lines


def _is_int(text):
    try:
        int(text)
    except ValueError:
        return False
    return True


class ImageListBatches:
    """Batches of images named by a list file, as ``ImageDataLayer::load_batch``: each image is read
    (colour or grey), resized when ``new_height``/``new_width`` are set, transformed, and labelled;
    after the last line reading restarts at the first, reshuffling when ``shuffle`` is set."""

    def __init__(self, lines, root_folder, batch_size, new_height, new_width, is_color, shuffle,
                 transformer, rng, owner):
        self.lines = list(lines)
        self.root_folder = root_folder
        self.batch_size = batch_size
        self.new_height, self.new_width = new_height, new_width
        self.is_color = is_color
        self.shuffle = shuffle
        self.transformer = transformer
        self.rng = rng
        self.owner = owner
        self.position = 0
        self.shard = data_shard()
        self.skip_next = self.shard.records_before_first(batch_size)
        if shuffle:
            self._shuffle()

    def _shuffle(self):
        self.lines = [self.lines[i] for i in self.rng.permutation(len(self.lines))]

    def read(self, index):
        """Image ``index`` of the list as a C x H x W uint8 array, and where it came from."""
        name = self.lines[index][0]
        where = f"layer '{self.owner}': image '{self.root_folder + name}'"
        # Caffe concatenates root_folder and the listed path as strings.
        image = read_image(self.root_folder + name, self.new_height, self.new_width, self.is_color, where)
        return hwc_to_chw(image), where

    def first_shape(self):
        chw, where = self.read(self.position)
        return (self.batch_size,) + self.transformer.infer_shape(chw, where)[1:]

    def _advance(self):
        """Move to the next line; after the last one restart at the first, reshuffling if asked."""
        self.position += 1
        if self.position >= len(self.lines):
            self.position = 0
            if self.shuffle:
                self._shuffle()

    def load_batch(self):
        for _ in range(self.skip_next):
            self._advance()
        self.skip_next = self.shard.records_between(self.batch_size)
        data = None
        labels = np.empty(self.batch_size, dtype=np.float32)
        for item in range(self.batch_size):
            chw, where = self.read(self.position)
            if data is None:
                data = _batch_array(self.batch_size, self.transformer.infer_shape(chw, where), where)
            self.transformer.transform(chw, data[item], where)
            labels[item] = self.lines[self.position][1]
            self._advance()
        return data, labels


class HDF5Rows:
    """Rows of the HDF5 files listed in a source file, as ``HDF5DataLayer``: one file in memory at a
    time, its datasets named by the tops; batches run across file boundaries; after the last file
    reading restarts at the first. With ``shuffle`` the file order is reshuffled at every pass over
    the files and the row order whenever a file is (re)entered."""

    def __init__(self, source, tops, batch_size, shuffle, rng, owner):
        import h5py  # noqa: F401  (fail early when missing)
        self.owner = owner
        self.tops = list(tops)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.rng = rng
        try:
            with open(source, encoding="utf-8") as f:
                self.files = f.read().split()
        except (OSError, ValueError) as e:   # ValueError: a NUL byte in the path
            raise DataError(f"layer '{owner}': failed to open source file '{source}': {e}") from None
        if not self.files:
            raise DataError(f"layer '{owner}': must have at least 1 HDF5 filename listed in '{source}'")
        self.file_order = np.arange(len(self.files))
        if shuffle:
            self.file_order = rng.permutation(len(self.files))
        self.current_file = 0
        self.shard = data_shard()
        self.skip_next = self.shard.records_before_first(batch_size)
        self._load(self.files[self.file_order[0]])

    def _load(self, path):
        import h5py
        arrays = []
        where = f"layer '{self.owner}': HDF5 file"
        try:
            with h5py.File(path, "r") as f:
                for name in self.tops:
                    if not name or name not in f:
                        raise DataError(f"layer '{self.owner}': HDF5 file '{path}' has no dataset '{name}'")
                    arrays.append(read_float_dataset(f[name], f"{where} '{path}'", name, error=DataError))
        except DataError:
            raise
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as e:
            raise DataError(f"layer '{self.owner}': failed opening HDF5 file '{path}': {e}") from None
        for name, array in zip(self.tops, arrays):
            if array.ndim < 1 or array.shape[0] != arrays[0].shape[0]:
                raise DataError(f"layer '{self.owner}': HDF5 file '{path}': dataset '{name}' of shape "
                                f"{list(array.shape)} does not have the {arrays[0].shape[0]} rows of "
                                f"dataset '{self.tops[0]}'")
        if arrays[0].shape[0] == 0:
            raise DataError(f"layer '{self.owner}': HDF5 file '{path}' holds no rows")
        self.arrays, self.path = arrays, path
        self.row_order = np.arange(arrays[0].shape[0])
        if self.shuffle:
            self.row_order = self.rng.permutation(arrays[0].shape[0])
        self.current_row = 0

    def top_shapes(self):
        return [(self.batch_size,) + a.shape[1:] for a in self.arrays]

    def fill(self, tops):
        """Copy the next ``batch_size`` rows into the top arrays (``HDF5DataLayer::Forward_cpu``)."""
        self._skip_rows(self.skip_next)
        self.skip_next = self.shard.records_between(self.batch_size)
        filled = 0
        while filled < self.batch_size:
            take = min(self.batch_size - filled, len(self.row_order) - self.current_row)
            rows = self.row_order[self.current_row:self.current_row + take]
            for top, array in zip(tops, self.arrays):
                if top.shape[1:] != array.shape[1:]:
                    raise DataError(f"layer '{self.owner}': HDF5 file '{self.path}' holds rows of shape "
                                    f"{list(array.shape[1:])}, the first file's were {list(top.shape[1:])}")
                top[filled:filled + take] = array[rows]
            filled += take
            self.current_row += take
            if self.current_row == len(self.row_order):
                self._next_file()

    def _skip_rows(self, count):
        """Move on ``count`` rows without copying them, across file boundaries as :meth:`fill`."""
        while count:
            take = min(count, len(self.row_order) - self.current_row)
            count -= take
            self.current_row += take
            if self.current_row == len(self.row_order):
                self._next_file()

    def _next_file(self):
        if len(self.files) > 1:
            self.current_file += 1
            if self.current_file == len(self.files):
                self.current_file = 0
                if self.shuffle:
                    self.file_order = self.rng.permutation(len(self.files))
            self._load(self.files[self.file_order[self.current_file]])
        else:
            self.current_row = 0
            if self.shuffle:
                self.row_order = self.rng.permutation(len(self.row_order))
