"""Image decoding and resizing as Caffe's OpenCV helpers (``cv::imread``/``cv::imdecode``, ``cv::resize``).

Images are returned as OpenCV holds them: H x W x C uint8 with colour channels in BGR order.
``color=True`` gives 3 channels (``IMREAD_COLOR``: grey files are replicated), ``color=False`` one
(``IMREAD_GRAYSCALE``), ``color=None`` the file's own channels (``imdecode(-1)``). Decoding uses
Pillow, the codec library behind scikit-image's ``imread``; both link libjpeg(-turbo) and libpng like
OpenCV, and JPEG greyscale decoding asks the codec for its luma plane directly as OpenCV's does.
Resizing uses scikit-image (bilinear, no anti-aliasing), which approximates OpenCV's INTER_LINEAR:
see :func:`resize`.
"""
import io

import numpy as np
import skimage.transform
from PIL import Image, UnidentifiedImageError

from ..errors import DataError


def _open(source, where):
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
        image.load()
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"{where}: could not decode image ({e})") from None
    return image


def _gray_from_rgb(rgb):
    """OpenCV's RGB -> grey weights in its 14-bit fixed point (``cvtColor``, rounded)."""
    rgb = rgb.astype(np.uint32)
    return ((rgb[..., 0] * 4899 + rgb[..., 1] * 9617 + rgb[..., 2] * 1868 + (1 << 13)) >> 14).astype(np.uint8)


def decode(source, where, color=True):
    """Decode an image file path or its bytes into H x W x C uint8 (BGR or grey); see the module doc."""
    image = _open(source, where)
    if image.format == "JPEG" and color is False and image.mode in ("RGB", "YCbCr"):
        image.close()
        image = _open(source, where)
        image.draft("L", image.size)       # libjpeg outputs its luma plane, as OpenCV's decoder
        image.load()
    if image.mode in ("I;16", "I;16B", "I", "F"):
        raise DataError(f"{where}: {image.mode} images (more than 8 bits per sample) are not supported")
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    native_channels = 1 if image.mode in ("L", "1", "LA") else (4 if has_alpha else 3)
    if color is None:
        color_out = native_channels
    else:
        color_out = 3 if color else 1
    if image.mode == "L" and color_out == 1:
        pixels = np.asarray(image)[:, :, None]
    elif color_out == 1:
        pixels = _gray_from_rgb(np.asarray(image.convert("RGB")))[:, :, None]
    elif color_out == 4:
        rgba = np.asarray(image.convert("RGBA"))
        pixels = rgba[:, :, [2, 1, 0, 3]]
    else:
        pixels = np.asarray(image.convert("RGB"))[:, :, ::-1]
    return np.ascontiguousarray(pixels)


def read_image(path, height=0, width=0, is_color=True, where=None):
    """``ReadImageToCVMat``: decode a file (colour or grey) and resize it when height and width > 0."""
    image = decode(path, where or f"image '{path}'", color=bool(is_color))
    if height > 0 and width > 0:
        image = resize(image, height, width)
    return image


def resize(image, height, width):
    """Bilinear resize of H x W x C uint8 to ``height`` x ``width`` (``cv::resize`` INTER_LINEAR).

    scikit-image's order-1 resize without anti-aliasing samples at the same pixel centres as OpenCV
    (half-pixel offsets, edges clamped); OpenCV computes in 11-bit fixed point and rounds, so a value
    may differ by a level or two from OpenCV's.
    """
    if image.shape[:2] == (height, width):
        return image
    out = skimage.transform.resize(image.astype(np.float64), (height, width), order=1, mode="edge",
                                   anti_aliasing=False, preserve_range=True)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def hwc_to_chw(image):
    """H x W x C (OpenCV layout) to C x H x W (Datum layout)."""
    return np.ascontiguousarray(image.transpose(2, 0, 1))
