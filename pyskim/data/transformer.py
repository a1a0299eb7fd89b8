"""Caffe's DataTransformer: crop, mirror, mean subtraction and scaling of one image.

Every input becomes a C x H x W array first (a Datum's uint8 ``data`` or ``float_data``, or a decoded
image), then, per ``transform_param`` and in Caffe's order: draw the mirror flag (``mirror`` and a
coin flip, in both phases), draw the crop offsets (random in TRAIN, centred in TEST), and compute
``(pixel - mean) * scale`` in float32, where the mean is the ``mean_file`` pixel at the same
(uncropped) position or the channel's ``mean_value``; mirroring reverses the columns.
"""
import numpy as np

from ..core.state import rng
from ..errors import DataError, NetError
from ..io.blobproto import blobproto_to_array
from ..io.protofiles import read_binary
from ..proto import caffe_pb2
from . import imgproc


def load_mean_file(path, owner):
    """A mean ``.binaryproto`` as a float32 C x H x W array (its leading num axis dropped)."""
    try:
        mean = blobproto_to_array(read_binary(path, caffe_pb2.BlobProto()))
    except (OSError, ValueError) as e:
        raise DataError(f"layer '{owner}': cannot read mean_file '{path}': {e}") from None
    if mean.ndim == 4 and mean.shape[0] == 1:
        mean = mean[0]
    if mean.ndim != 3:
        raise DataError(f"layer '{owner}': mean_file '{path}' holds a blob of shape {list(mean.shape)}, "
                        f"expected 1 x C x H x W")
    return mean


class DataTransformer:
    """Apply a TransformationParameter as Caffe's ``DataTransformer<float>`` (one per data layer).

    Random draws (mirror, TRAIN crop) come from the transformer's own generator, seeded from
    :func:`pyskim.core.state.rng` when the layer is set up (as Caffe's ``InitRand``), so that a prefetch
    thread draws reproducibly.
    """

    def __init__(self, param, phase, owner):
        self.owner = owner
        self.phase = phase
        self.crop_size = int(param.crop_size)
        self.mirror = bool(param.mirror)
        self.scale = np.float32(param.scale)
        self.force_color = bool(param.force_color)
        self.force_gray = bool(param.force_gray)
        if self.force_color and self.force_gray:
            raise NetError(f"layer '{owner}': cannot set both transform_param.force_color and force_gray")
        if param.HasField("mean_file") and len(param.mean_value):
            raise NetError(f"layer '{owner}': cannot specify transform_param.mean_file and mean_value at "
                           f"the same time")
        self.mean = load_mean_file(param.mean_file, owner) if param.HasField("mean_file") else None
        self.mean_values = np.asarray(param.mean_value, dtype=np.float32) if len(param.mean_value) else None
        needs_rand = self.mirror or (phase == caffe_pb2.TRAIN and self.crop_size > 0)
        #: No crop, no mirror: every pixel is transformed on its own (``transform_batch`` applies).
        self.elementwise = not self.crop_size and not self.mirror
        self.rng = np.random.default_rng(int(rng().integers(1 << 32))) if needs_rand else None

    # -- decoding ------------------------------------------------------------------------------------
    def datum_to_chw(self, datum, where):
        """A Datum's pixels as a C x H x W array: decoded (``encoded``), uint8 ``data`` or float32
        ``float_data``. ``where`` names the record in error messages."""
        if datum.encoded:
            image = imgproc.decode(datum.data, where, color=self._decode_color())
            return imgproc.hwc_to_chw(image)
        shape = (datum.channels, datum.height, datum.width)
        count = datum.channels * datum.height * datum.width
        if datum.channels <= 0 or datum.height < 0 or datum.width < 0:
            raise DataError(f"{where}: Datum has an invalid shape {list(shape)}")
        if len(datum.data):
            if len(datum.data) != count:
                raise DataError(f"{where}: Datum of shape {list(shape)} holds {len(datum.data)} bytes, "
                                f"expected {count}")
            return np.frombuffer(datum.data, dtype=np.uint8).reshape(shape)
        if len(datum.float_data) != count:
            raise DataError(f"{where}: Datum of shape {list(shape)} holds {len(datum.float_data)} "
                            f"float_data values, expected {count}")
        return np.asarray(datum.float_data, dtype=np.float32).reshape(shape)

    def _decode_color(self):
        """True/False to force 3 channels or 1; None keeps the file's own (``DecodeDatumToCVMatNative``)."""
        if self.force_color:
            return True
        return False if self.force_gray else None

    # -- shapes --------------------------------------------------------------------------------------
    def infer_shape(self, chw, where):
        """The 1 x C x H' x W' shape one item takes (``InferBlobShape``)."""
        c, h, w = chw.shape
        if self.crop_size and (h < self.crop_size or w < self.crop_size):
            raise DataError(f"{where}: image of size {h} x {w} is smaller than crop_size {self.crop_size}")
        if self.crop_size:
            return (1, c, self.crop_size, self.crop_size)
        return (1, c, h, w)

    # -- the transform -------------------------------------------------------------------------------
    def transform(self, chw, out, where):
        """Transform one C x H x W item into ``out`` (a float32 C x H' x W' view); ``where`` names the
        record when its size does not fit the batch (Caffe's CHECKs in ``Transform``)."""
        c, h, w = chw.shape
        oc, oh, ow = out.shape
        if c != oc or (self.crop_size and (h < oh or w < ow)) or (not self.crop_size and (h, w) != (oh, ow)):
            raise DataError(f"{where}: item of shape {[c, h, w]} does not match the batch item shape "
                            f"{[oc, oh, ow]} taken from the first item of the batch")
        do_mirror = self.mirror and bool(self.rng.integers(2))
        h_off = w_off = 0
        if self.crop_size:
            if self.phase == caffe_pb2.TRAIN:
                h_off = int(self.rng.integers(h - self.crop_size + 1))
                w_off = int(self.rng.integers(w - self.crop_size + 1))
            else:
                h_off = (h - self.crop_size) // 2
                w_off = (w - self.crop_size) // 2
        window = (slice(None), slice(h_off, h_off + oh), slice(w_off, w_off + ow))
        pixels = chw[window].astype(np.float32)
        if self.mean is not None:
            if self.mean.shape != chw.shape:
                raise DataError(f"{where}: mean_file of shape {list(self.mean.shape)} does not match the "
                                f"image shape {[c, h, w]}")
            pixels -= self.mean[window]
        elif self.mean_values is not None:
            if len(self.mean_values) not in (1, c):
                raise DataError(f"layer '{self.owner}': specify either 1 mean_value or as many as "
                                f"channels: {c}")
            pixels -= self.mean_values[:, None, None] if len(self.mean_values) == c else self.mean_values[0]
        pixels *= self.scale
        out[...] = pixels[:, :, ::-1] if do_mirror else pixels

    def transform_batch(self, pixels, out):
        """``transform`` of a whole N x C x H x W batch at once, for an ``elementwise`` transformer:
        ``(pixel - mean) * scale`` in float32, the same operations and results as item by item."""
        c, h, w = pixels.shape[1:]
        where = f"layer '{self.owner}'"
        if self.mean is not None and self.mean.shape != (c, h, w):
            raise DataError(f"{where}: mean_file of shape {list(self.mean.shape)} does not match the image "
                            f"shape {[c, h, w]}")
        if self.mean_values is not None and len(self.mean_values) not in (1, c):
            raise DataError(f"{where}: specify either 1 mean_value or as many as channels: {c}")
        np.copyto(out, pixels)
        if self.mean is not None:
            out -= self.mean
        elif self.mean_values is not None:
            out -= self.mean_values[:, None, None] if len(self.mean_values) == c else self.mean_values[0]
        out *= self.scale
