"""Data-providing layers: Input, DummyData, and the readers of databases, image lists, HDF5 files
and memory (Data, ImageData, HDF5Data, MemoryData). The reading, decoding and transforming live in
:mod:`pyskim.data`; the prefetching layers run it in a background thread (:mod:`pyskim.data.prefetch`).
"""
import numpy as np

from ..core.fillers import fill
from ..core.layer import Layer, register
from ..core.state import log, rng
from ..data.db import check_backend
from ..data.prefetch import Prefetcher
from ..data.sources import DatumBatches, HDF5Rows, ImageListBatches, check_batch_size, read_image_list
from ..data.transformer import DataTransformer
from ..errors import DataError, NetError
from ..proto import caffe_pb2


@register("Input")
class InputLayer(Layer):
    """Tops shaped by ``input_param.shape`` (one shape for all tops, or one per top); the caller
    fills them (``InputLayer``)."""

    exact_num_bottom = 0
    min_top = 1

    def layer_setup(self, bottom, top):
        shapes = self.param.input_param.shape
        if len(shapes) not in (0, 1, len(top)):
            raise_shape_count(self.name, len(shapes), len(top))
        for i, blob in enumerate(top):
            if len(shapes):
                blob.reshape(tuple(shapes[0 if len(shapes) == 1 else i].dim))

    def reshape(self, bottom, top):
        """Inputs keep whatever shape the user gave them."""

    def forward_cpu(self, bottom, top):
        """Nothing to compute: the tops are filled from outside."""

    def backward_cpu(self, top, propagate_down, bottom):
        """No bottoms."""


@register("DummyData", "DUMMY_DATA")
class DummyDataLayer(Layer):
    """Tops of fixed shapes (``shape``, or legacy ``num``/``channels``/``height``/``width``; once for
    all tops or once per top) filled by ``data_filler`` (none: constant 0; one for all tops, or one
    per top). As Caffe's ``refill_``, constant fillers fill their tops once at setup; the others refill
    on every forward (``DummyDataLayer``)."""

    exact_num_bottom = 0
    min_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.dummy_data_param
        num_top = len(top)
        if len(p.data_filler) not in (0, 1, num_top):
            raise NetError(f"layer '{self.name}': number of data fillers (dummy_data_param.data_filler) must "
                           f"be 0, 1 or equal to the number of tops: {num_top}; you specified "
                           f"{len(p.data_filler)} data fillers")
        legacy = ("num", "channels", "height", "width")
        legacy_dims = any(len(getattr(p, f)) for f in legacy)
        if legacy_dims and len(p.shape):
            raise NetError(f"layer '{self.name}': both dummy_data_param.shape and legacy fields were specified")
        for field in legacy if legacy_dims else ("shape",):
            given = len(getattr(p, field))
            if given not in (1, num_top):
                raise NetError(f"layer '{self.name}': must specify dummy_data_param.{field} once, or once per "
                               f"top blob ({num_top}); specified {given}")
        if len(p.data_filler) > 1:
            self.fillers = list(p.data_filler)
        else:
            self.fillers = [p.data_filler[0] if len(p.data_filler) else
                            caffe_pb2.FillerParameter(type="constant", value=0)]
        for i, blob in enumerate(top):
            if legacy_dims:
                blob.reshape(tuple(_pick(getattr(p, f), i) for f in legacy))
            else:
                blob.reshape(tuple(_pick(p.shape, i).dim))
        # Fill the constant tops now; from then on refill only the others.
        self.refill = [f.type == "constant" for f in self.fillers]
        self.forward_cpu(bottom, top)
        self.refill = [not r for r in self.refill]

    def reshape(self, bottom, top):
        """The tops keep the shapes given at setup."""

    def forward_cpu(self, bottom, top):
        for i, blob in enumerate(top):
            k = i if len(self.fillers) > 1 else 0
            if self.refill[k]:
                fill(blob, self.fillers[k], owner=self.name)

    def backward_cpu(self, top, propagate_down, bottom):
        """No bottoms."""


class PrefetchingDataLayer(Layer):
    """Base of the layers that load batches in a background thread (``BasePrefetchingDataLayer``).

    Subclasses set ``self.loader`` (whose ``load_batch()`` returns ``(data, labels or None)``) in
    ``layer_setup`` and size the tops; :meth:`start_prefetch` then starts the thread. Forward copies
    the next batch into the tops, reshaping them to the batch's shape. Labels are output when the
    layer has a second top.
    """

    exact_num_bottom = 0
    min_top = 1
    max_top = 2
    prefetcher = None

    def start_prefetch(self, count):
        if count < 1:       # Caffe would wait forever for a batch that no slot can hold
            raise NetError(f"layer '{self.name}': data_param.prefetch must be at least 1, got {count}")
        self.prefetcher = Prefetcher(self.loader.load_batch, int(count), self.name)

    def reshape(self, bottom, top):
        """Data layers shape their tops on the fly in forward."""

    def forward_cpu(self, bottom, top):
        data, labels = self.prefetcher.next()
        top[0].reshape(data.shape)
        top[0].data[...] = data
        if len(top) > 1:
            top[1].reshape(labels.shape)
            top[1].data[...] = labels

    def backward_cpu(self, top, propagate_down, bottom):
        """No bottoms."""

    def close(self):
        """Stop the prefetch thread now (it also stops when the layer is garbage-collected)."""
        if self.prefetcher is not None:
            self.prefetcher.close()


@register("Data", "DATA")
class DataLayer(PrefetchingDataLayer):
    """Batches of Datums read from an LMDB (``data_param.source``) in key order, cycling; each record
    goes through ``transform_param`` (:class:`pyskim.data.transformer.DataTransformer`). A TEST net's
    Data layer reads its database independently of the TRAIN net's. LevelDB is not supported."""

    def layer_setup(self, bottom, top):
        p = self.param.data_param
        check_backend(p.backend, p.source, f"layer '{self.name}'")
        check_batch_size(p.batch_size, self.name, "data_param.batch_size")
        transformer = DataTransformer(self.param.transform_param, self.phase, self.name)
        self.loader = DatumBatches(p.source, p.batch_size, transformer, len(top) > 1, self.name)
        shape = self.loader.first_shape()
        top[0].reshape(shape)
        log.info("output data size: %s", ",".join(str(d) for d in shape))
        if len(top) > 1:
            top[1].reshape((p.batch_size,))
        self.start_prefetch(p.prefetch)


@register("ImageData", "IMAGE_DATA")
class ImageDataLayer(PrefetchingDataLayer):
    """Images named in a list file (``<path> <label>`` per line) read from ``root_folder + path``,
    resized to ``new_height`` x ``new_width`` when both are set, colour (BGR) or grey (``is_color``),
    then transformed; tops: data and label (``ImageDataLayer``). ``shuffle`` shuffles the list at setup
    and at every restart (in either phase, as Caffe); ``rand_skip`` skips a random number of lines
    at the start."""

    exact_num_top = 2
    min_top = max_top = None

    def layer_setup(self, bottom, top):
        p = self.param.image_data_param
        if (p.new_height > 0) != (p.new_width > 0) or p.new_height < 0 or p.new_width < 0:
            raise NetError(f"layer '{self.name}': image_data_param.new_height and new_width must be set "
                           f"together (both positive)")
        check_batch_size(p.batch_size, self.name, "image_data_param.batch_size")
        transformer = DataTransformer(self.param.transform_param, self.phase, self.name)
        log.info("Opening file %s", p.source)
        lines = read_image_list(p.source, f"layer '{self.name}'")
        shuffle_rng = np.random.default_rng(int(rng().integers(1 << 32))) if p.shuffle else None
        if p.shuffle:
            log.info("Shuffling data")
        self.loader = ImageListBatches(lines, p.root_folder, p.batch_size, p.new_height, p.new_width,
                                       p.is_color, p.shuffle, transformer, shuffle_rng, self.name)
        log.info("A total of %d images.", len(lines))
        if p.rand_skip:
            skip = int(rng().integers(1 << 32)) % p.rand_skip
            log.info("Skipping first %d data points.", skip)
            if skip >= len(lines):
                raise DataError(f"layer '{self.name}': not enough images in '{p.source}' to skip {skip}")
            self.loader.position = skip
        shape = self.loader.first_shape()
        top[0].reshape(shape)
        log.info("output data size: %s", ",".join(str(d) for d in shape))
        top[1].reshape((p.batch_size,))
        self.start_prefetch(self.param.data_param.prefetch)


@register("HDF5Data", "HDF5_DATA")
class HDF5DataLayer(Layer):
    """Rows of the HDF5 files listed (whitespace-separated, paths as written) in ``source``; one
    dataset per top, named like the top; ``batch_size`` rows per forward, running across file
    boundaries; ``shuffle`` shuffles files and rows (``HDF5DataLayer``). No transform_param."""

    exact_num_bottom = 0
    min_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.hdf5_data_param
        if self.param.HasField("transform_param"):
            raise NetError(f"layer '{self.name}': {self.type} does not transform data (remove transform_param)")
        check_batch_size(p.batch_size, self.name, "hdf5_data_param.batch_size")
        log.info("Loading list of HDF5 filenames from: %s", p.source)
        shuffle_rng = np.random.default_rng(int(rng().integers(1 << 32))) if p.shuffle else None
        self.rows = HDF5Rows(p.source, self.param.top, p.batch_size, p.shuffle, shuffle_rng, self.name)
        log.info("Number of HDF5 files: %d", len(self.rows.files))
        for blob, shape in zip(top, self.rows.top_shapes()):
            blob.reshape(shape)

    def reshape(self, bottom, top):
        """The tops keep the shapes of the first file's datasets."""

    def forward_cpu(self, bottom, top):
        self.rows.fill([blob.data for blob in top])

    def backward_cpu(self, top, propagate_down, bottom):
        """No bottoms."""


@register("MemoryData", "MEMORY_DATA")
class MemoryDataLayer(Layer):
    """Batches from arrays handed over with :meth:`set_input_arrays` (``MemoryDataLayer``): tops data
    (batch_size x channels x height x width) and label (batch_size), advancing ``batch_size`` rows per
    forward and wrapping around. The arrays are read at forward time, not copied, as Caffe's tops
    alias them; no transform is applied."""

    exact_num_bottom = 0
    exact_num_top = 2

    def layer_setup(self, bottom, top):
        p = self.param.memory_data_param
        self.batch_size, self.channels, self.height, self.width = p.batch_size, p.channels, p.height, p.width
        if min(self.batch_size, self.channels, self.height, self.width) <= 0:
            raise NetError(f"layer '{self.name}': batch_size, channels, height, and width must be specified "
                           f"and positive in memory_data_param")
        self.data = self.labels = None
        self.pos = 0
        top[0].reshape((self.batch_size, self.channels, self.height, self.width))
        top[1].reshape((self.batch_size,))

    def set_input_arrays(self, data, labels):
        """Use ``data`` (N x C x H x W) and ``labels`` (N x 1 x 1 x 1), float32 and C-contiguous, N a
        multiple of batch_size; checked as pycaffe's ``Net.set_input_arrays``."""
        for array, name, dims in ((data, "data array", (self.channels, self.height, self.width)),
                                  (labels, "labels array", (1, 1, 1))):
            if not isinstance(array, np.ndarray) or not array.flags.c_contiguous:
                raise NetError(f"layer '{self.name}': {name} must be C contiguous")
            if array.ndim != 4:
                raise NetError(f"layer '{self.name}': {name} must be 4-d")
            if array.dtype != np.float32:
                raise NetError(f"layer '{self.name}': {name} must be float32")
            for axis, what in enumerate(("number of channels", "height", "width"), start=1):
                if array.shape[axis] != dims[axis - 1]:
                    raise NetError(f"layer '{self.name}': {name} has wrong {what}")
        if data.shape[0] != labels.shape[0]:
            raise NetError(f"layer '{self.name}': data and labels must have the same first dimension")
        if data.shape[0] == 0 or data.shape[0] % self.batch_size:
            raise NetError(f"layer '{self.name}': first dimensions of input arrays must be a multiple of "
                           f"batch size ({self.batch_size}), got {data.shape[0]}")
        if self.param.HasField("transform_param"):
            log.warning("%s does not transform array data on Reset()", self.type)
        self.data, self.labels, self.pos = data, labels, 0

    def reshape(self, bottom, top):
        """Shaped in forward."""

    def forward_cpu(self, bottom, top):
        if self.data is None:
            raise NetError(f"layer '{self.name}': MemoryDataLayer needs to be initialized by calling "
                           f"set_input_arrays")
        top[0].reshape((self.batch_size, self.channels, self.height, self.width))
        top[1].reshape((self.batch_size,))
        top[0].data[...] = self.data[self.pos:self.pos + self.batch_size]
        top[1].data[...] = self.labels[self.pos:self.pos + self.batch_size].reshape(-1)
        self.pos = (self.pos + self.batch_size) % len(self.data)

    def backward_cpu(self, top, propagate_down, bottom):
        """No bottoms."""


@register("WindowData", "WINDOW_DATA")
class WindowDataLayer(Layer):
    """Caffe's R-CNN window reader; pyskim does not support it."""

    def layer_setup(self, bottom, top):
        raise NetError(f"layer '{self.name}': layer type WindowData is not supported by pyskim")


def _pick(values, i):
    """The one value given for all tops, or top ``i``'s own."""
    return values[0] if len(values) == 1 else values[i]


def raise_shape_count(name, num_shapes, num_tops):
    raise NetError(f"layer '{name}': input_param must give 0, 1 or {num_tops} shapes, got {num_shapes}")


__all__ = ["DataLayer", "DummyDataLayer", "HDF5DataLayer", "ImageDataLayer", "InputLayer", "MemoryDataLayer",
           "PrefetchingDataLayer", "WindowDataLayer", "caffe_pb2"]
