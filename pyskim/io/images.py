"""pycaffe's ``caffe.io`` image helpers: ``load_image``, ``resize_image``, ``oversample``, ``Transformer``.

Behaviour follows BVLC ``python/caffe/io.py``: images are H x W x K float32 arrays with values in
[0, 1] (RGB order as skimage reads them); a :class:`Transformer` turns one into the K x H x W array
a net's input blob expects (typically BGR, scaled to [0, 255], mean-subtracted) and back.
"""
import numpy as np
import skimage.io
import skimage.transform
from skimage.util import img_as_float

from ..errors import NetError

__all__ = ["Transformer", "load_image", "oversample", "resize_image"]


# --------------------------------------------------------------------------------------------- image IO
def load_image(filename, color=True):
    """Read an image file as float32 in [0, 1], shaped H x W x 3 (RGB) or H x W x 1 (intensity).

    As pycaffe: ``color=True`` tiles a grayscale image to three channels; ``color=False`` reads the
    file as intensity (skimage's ``as_gray``, which converts colour images by luminance). An alpha
    channel is dropped.
    """
    img = img_as_float(skimage.io.imread(filename, as_gray=not color)).astype(np.float32)
    if img.ndim == 2:
        img = img[:, :, np.newaxis]
    elif img.shape[2] == 4:        # RGBA: drop alpha
        img = img[:, :, :3]
    elif img.shape[2] == 2:        # gray + alpha (pycaffe leaves both channels; we drop alpha)
        img = img[:, :, :1]
    if color and img.shape[2] == 1:
        img = np.tile(img, (1, 1, 3))
    return img


def resize_image(im, new_dims, interp_order=1):
    """Resize an H x W x K image to ``new_dims`` = (height, width), keeping K; returns float32.

    As pycaffe: images with 1 or 3 channels are stretched to [0, 1], resized with
    ``skimage.transform.resize`` (spline order ``interp_order``; skimage's defaults for edge mode and
    anti-aliasing) and mapped back to their original range; a constant image is returned filled with
    its value. Any other channel count goes through ``scipy.ndimage.zoom``.
    """
    im = np.asarray(im)
    new_dims = tuple(int(d) for d in new_dims)
    if im.shape[-1] in (1, 3):
        lo, hi = im.min(), im.max()
        if not hi > lo:
            return np.full(new_dims + (im.shape[-1],), lo, dtype=np.float32)
        unit = (im - lo) / (hi - lo)
        resized = skimage.transform.resize(unit, new_dims, order=interp_order) * (hi - lo) + lo
    else:
        from scipy.ndimage import zoom  # a dependency of scikit-image

        factors = tuple(n / float(o) for n, o in zip(new_dims, im.shape[:2])) + (1.0,) * (im.ndim - 2)
        resized = zoom(im, factors, order=interp_order)
    return resized.astype(np.float32)


def oversample(images, crop_dims):
    """Ten crops per image: the four corners and the centre, then the same five mirrored left-right.

    As pycaffe: ``images`` is a sequence of H x W x K arrays and ``crop_dims`` is (height, width).
    Per image the order is top-left, top-right, bottom-left, bottom-right, centre, then their
    mirrors in that order. Returns a float32 array of shape (10 * N, height, width, K).
    """
    images = [np.asarray(im) for im in images]
    if not images:
        raise NetError("oversample needs at least one image")
    ch, cw = (int(d) for d in crop_dims)
    crops = np.empty((10 * len(images), ch, cw, images[0].shape[-1]), dtype=np.float32)
    for n, im in enumerate(images):
        if im.ndim != 3:
            raise NetError(f"oversample expects H x W x K images, got shape {im.shape}")
        h, w = im.shape[:2]
        if ch > h or cw > w:
            raise NetError(f"crop {(ch, cw)} is larger than image {(h, w)}")
        # The centre crop starts at floor((h - ch) / 2), as pycaffe's truncated centre +- half crop.
        origins = [(0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw), ((h - ch) // 2, (w - cw) // 2)]
        base = 10 * n
        for k, (y, x) in enumerate(origins):
            crops[base + k] = im[y:y + ch, x:x + cw, :]
        crops[base + 5:base + 10] = crops[base:base + 5, :, ::-1, :]
    return crops


# --------------------------------------------------------------------------------------------- Transformer
class Transformer:
    """Prepare images for a net's inputs and undo it, as pycaffe's ``caffe.io.Transformer``.

    ``inputs`` maps each input blob name to its shape (N, K, H, W), e.g.
    ``{'data': net.blobs['data'].data.shape}``. Per input one may set a transpose, a channel swap,
    a raw scale, a mean and an input scale; the settings live in the public dicts ``transpose``,
    ``channel_swap``, ``raw_scale``, ``mean`` and ``input_scale`` as in pycaffe.
    """

    def __init__(self, inputs):
        self.inputs = inputs
        self.transpose = {}
        self.channel_swap = {}
        self.raw_scale = {}
        self.mean = {}
        self.input_scale = {}

    def _shape(self, in_):
        if in_ not in self.inputs:
            raise NetError(f"{in_!r} is not one of the net inputs: {list(self.inputs)}")
        return tuple(int(d) for d in self.inputs[in_])

    def preprocess(self, in_, data):
        """Format an H' x W' x K image for input ``in_``; returns a float32 K x H x W array.

        Steps, in pycaffe's order: convert to float32; resize to the input's H x W (keeping K);
        transpose; reorder channels; multiply by raw_scale; subtract the mean; multiply by
        input_scale. Unlike pycaffe, the caller's array is never modified in place.
        """
        in_dims = self._shape(in_)[2:]
        x = np.array(data, dtype=np.float32)  # always a copy
        if len(in_dims) == 2 and x.shape[:2] != in_dims:
            x = resize_image(x, in_dims)
        transpose = self.transpose.get(in_)
        if transpose is not None:
            x = x.transpose(transpose)
        channel_swap = self.channel_swap.get(in_)
        if channel_swap is not None:
            x = x[np.asarray(channel_swap)]
        raw_scale = self.raw_scale.get(in_)
        if raw_scale is not None:
            x *= raw_scale
        mean = self.mean.get(in_)
        if mean is not None:
            x -= mean
        input_scale = self.input_scale.get(in_)
        if input_scale is not None:
            x *= input_scale
        return x

    def deprocess(self, in_, data):
        """Invert :meth:`preprocess` (except the resize) on a copy of ``data``, squeezed as in pycaffe.

        Divides by input_scale, adds the mean, divides by raw_scale, undoes the channel swap and the
        transpose; a net's 1 x K x H x W blob comes back as H x W x K.
        """
        self._shape(in_)
        x = np.array(data, copy=True).squeeze()
        if not np.issubdtype(x.dtype, np.floating):
            x = x.astype(np.float32)
        input_scale = self.input_scale.get(in_)
        if input_scale is not None:
            x /= input_scale
        mean = self.mean.get(in_)
        if mean is not None:
            x += mean
        raw_scale = self.raw_scale.get(in_)
        if raw_scale is not None:
            x /= raw_scale
        channel_swap = self.channel_swap.get(in_)
        if channel_swap is not None:
            x = x[np.argsort(channel_swap)]
        transpose = self.transpose.get(in_)
        if transpose is not None:
            x = x.transpose(np.argsort(transpose))
        return x

    def set_transpose(self, in_, order):
        """Set the axis order applied to the H x W x K image, e.g. ``(2, 0, 1)`` for K x H x W."""
        shape = self._shape(in_)
        order = tuple(int(a) for a in order)
        if len(order) != len(shape) - 1:
            raise NetError("Transpose order needs to have the same number of dimensions as the input.")
        if sorted(order) != list(range(len(order))):
            raise NetError(f"Transpose order {order} is not a permutation of the input's axes.")
        self.transpose[in_] = order

    def set_channel_swap(self, in_, order):
        """Set the channel order taken after the transpose, e.g. ``(2, 1, 0)`` for RGB to BGR."""
        shape = self._shape(in_)
        order = tuple(int(c) for c in order)
        if len(order) != shape[1]:
            raise NetError("Channel swap needs to have the same number of dimensions as the input channels.")
        self.channel_swap[in_] = order

    def set_raw_scale(self, in_, scale):
        """Set the factor applied before mean subtraction (255 for models trained on [0, 255] pixels)."""
        self._shape(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_, mean):
        """Set the mean subtracted from the (transposed, swapped, raw-scaled) input.

        A 1-D mean is per channel and must have K entries. A 2-D (H x W) or 3-D (K x H x W) mean is
        elementwise; when its H x W differ from the input's it is resized to them with
        :func:`resize_image`, as pycaffe's widely used patched ``set_mean`` does (BVLC master raises
        instead). Its channel count must match the input's.
        """
        shape = self._shape(in_)
        mean = np.asarray(mean)
        if mean.ndim == 1:
            if mean.shape[0] != shape[1]:
                raise NetError("Mean channels incompatible with input.")
            mean = mean[:, np.newaxis, np.newaxis]
        else:
            ms = (1,) + mean.shape if mean.ndim == 2 else mean.shape
            if len(ms) != 3:
                raise NetError("Mean shape invalid")
            if ms != shape[1:]:
                if len(shape) != 4 or ms[0] != shape[1]:
                    raise NetError(f"Mean shape incompatible with input shape: mean {mean.shape}, "
                                   f"input {shape}.")
                mean = resize_image(mean.reshape(ms).transpose(1, 2, 0), shape[2:]).transpose(2, 0, 1)
        self.mean[in_] = mean

    def set_input_scale(self, in_, scale):
        """Set the factor applied last, after mean subtraction."""
        self._shape(in_)
        self.input_scale[in_] = scale


def input_transformer(net, owner, model_file, mean=None, input_scale=None, raw_scale=None, channel_swap=None):
    """A Transformer for ``net``'s first input as pycaffe's Classifier and Detector configure it:
    HxWxK images transposed to KxHxW, then the optional mean, input scale, raw scale, channel swap."""
    if not net.inputs:
        raise NetError(f"{model_file}: a {owner} needs a net with an input blob")
    in_ = net.inputs[0]
    transformer = Transformer({in_: net.blobs[in_].data.shape})
    transformer.set_transpose(in_, (2, 0, 1))
    for setter, value in (("set_mean", mean), ("set_input_scale", input_scale),
                          ("set_raw_scale", raw_scale), ("set_channel_swap", channel_swap)):
        if value is not None:
            getattr(transformer, setter)(in_, value)
    return transformer
