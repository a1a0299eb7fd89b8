"""Image decoding and resizing that reproduce Caffe's OpenCV helpers (``cv::imread``/``cv::imdecode``,
``cv::resize`` with INTER_LINEAR) byte for byte on 8-bit images.

Images are returned as OpenCV holds them: H x W x C uint8, colour channels in BGR order. ``color=True``
gives 3 channels (``IMREAD_COLOR``: grey files are replicated, alpha dropped), ``color=False`` one
(``IMREAD_GRAYSCALE``), ``color=None`` the file's own channel count (``imdecode(-1)``).

Decoding uses Pillow, the codec library behind scikit-image's ``imread``; like OpenCV it decodes with
libjpeg(-turbo) and libpng defaults, so colour pixels agree exactly. Greyscale follows OpenCV's
decoders: a JPEG is decoded straight to its luma plane, a colour PNG converted as libpng's
``png_set_rgb_to_gray(0.299, 0.587)`` (15-bit fixed point, truncated), other formats as
``cvtColor`` (14-bit fixed point, rounded).
"""
import io
import struct
import zlib

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..core.blob import check_allocation
from ..errors import DataError

# OpenCV's INTER_LINEAR for 8-bit images: 11-bit fixed-point weights (INTER_RESIZE_COEF_BITS).
_COEF_SCALE = 2048


def _open(source, where):
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{where}: could not decode image ({e})") from None
    # Refuse an image whose declared size is over the blob limit before decoding it (as float32, the
    # form it takes in a batch), rather than letting a forged header exhaust memory.
    width, height = image.size
    check_allocation((height, width, len(image.getbands())), f"{where}: image", error=DataError)
    return image


def _load(image, where):
    try:
        image.load()
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{where}: could not decode image ({e})") from None
    return image


def _to_gray(image):
    """One 8-bit channel from a colour image, as OpenCV's decoder for its format would."""
    rgb = np.asarray(image.convert("RGB")).astype(np.uint32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    if image.format == "PNG":
        gray = (r * 9797 + g * 19234 + b * (32768 - 9797 - 19234)) >> 15
        gray = np.where((r == g) & (g == b), r, gray)
    else:
        gray = (r * 4899 + g * 9617 + b * 1868 + (1 << 13)) >> 14
    return gray.astype(np.uint8)


def decode(source, where, color=True):
    """Decode an image file path or its bytes into H x W x C uint8 (BGR or grey); see the module doc."""
    image = _open(source, where)
    if image.format == "JPEG" and color is False and image.mode in ("RGB", "YCbCr"):
        image.draft("L", image.size)      # libjpeg's greyscale output: the luma plane, as OpenCV
    _load(image, where)
    if image.mode.startswith("I;16"):    # 16-bit grey: keep the high byte, as libpng's strip_16
        image = Image.fromarray((np.asarray(image).astype(np.uint32) >> 8).astype(np.uint8))
    elif image.mode in ("I", "F"):
        raise DataError(f"{where}: {image.mode} images (32-bit samples) are not supported")
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    native = 1 if image.mode in ("L", "1", "LA") else (4 if has_alpha else 3)
    channels = native if color is None else (3 if color else 1)
    if channels == 1:
        pixels = np.asarray(image.convert("L"))[:, :, None] if native == 1 else _to_gray(image)[:, :, None]
    elif channels == 4:
        pixels = np.asarray(image.convert("RGBA"))[:, :, [2, 1, 0, 3]]
    else:
        pixels = np.asarray(image.convert("RGB"))[:, :, ::-1]
    return np.ascontiguousarray(pixels)


def read_image(path, height=0, width=0, is_color=True, where=None):
    """``ReadImageToCVMat``: decode a file (colour or grey) and resize it when height and width > 0."""
    image = decode(path, where or f"image '{path}'", color=bool(is_color))
    if height > 0 and width > 0:
        image = resize(image, height, width)
    return image


def _linear_taps(src, dst):
    """Source indices and 11-bit weights per destination pixel (OpenCV's ``resize`` tables)."""
    f = ((np.arange(dst) + 0.5) * (src / dst) - 0.5).astype(np.float32)
    s = np.floor(f).astype(np.int64)
    f = (f - s).astype(np.float32)
    clamp = (s < 0) | (s >= src - 1)
    f[clamp] = 0
    s = np.clip(s, 0, src - 1)
    w1 = np.rint(f * _COEF_SCALE).astype(np.int64)
    w0 = np.rint((np.float32(1) - f) * _COEF_SCALE).astype(np.int64)
    return s, np.minimum(s + 1, src - 1), w0, w1


def resize(image, height, width):
    """Resize H x W x C uint8 to ``height`` x ``width`` exactly as OpenCV's ``cv::resize`` INTER_LINEAR.

    OpenCV samples at half-pixel centres with clamped edges; it interpolates rows in 11-bit fixed
    point into int32, then columns as ``((b0*(S0>>4))>>16 + (b1*(S1>>4))>>16 + 2) >> 2``. An exact
    2x downscale takes OpenCV's INTER_AREA shortcut (mean of each 2 x 2 block, rounded).
    """
    src_h, src_w, channels = image.shape
    if (src_h, src_w) == (height, width):
        return image
    pixels = image.astype(np.int64)
    if src_h == 2 * height and src_w == 2 * width:
        blocks = pixels.reshape(height, 2, width, 2, channels).sum(axis=(1, 3))
        return ((blocks + 2) >> 2).astype(np.uint8)
    x0, x1, a0, a1 = _linear_taps(src_w, width)
    y0, y1, b0, b1 = _linear_taps(src_h, height)
    rows = pixels[:, x0, :] * a0[None, :, None] + pixels[:, x1, :] * a1[None, :, None]
    top, bottom = rows[y0] >> 4, rows[y1] >> 4
    out = ((top * b0[:, None, None]) >> 16) + ((bottom * b1[:, None, None]) >> 16)
    return np.clip((out + 2) >> 2, 0, 255).astype(np.uint8)


def encode(image, encoding, where):
    """``cv::imencode('.' + encoding)``: H x W x C uint8 (BGR, BGRA or grey) to an image file's bytes.

    PNG is written as OpenCV 4 writes it by default (:func:`encode_png`), byte for byte. Other formats
    go through Pillow (JPEG at OpenCV's default quality 95): the pixels are OpenCV's for lossless
    formats, the bytes may differ.
    """
    encoding = encoding.lower().lstrip(".")
    if encoding == "png":
        return encode_png(image)
    formats = {"jpg": "JPEG", "jpeg": "JPEG", "jpe": "JPEG", "bmp": "BMP", "tif": "TIFF", "tiff": "TIFF",
               "ppm": "PPM", "pgm": "PPM", "pbm": "PPM", "webp": "WEBP"}
    fmt = formats.get(encoding)
    if fmt is None:
        raise DataError(f"{where}: unsupported encode_type '{encoding}'")
    channels = image.shape[2]
    pixels = image[:, :, 0] if channels == 1 else image[:, :, [2, 1, 0, 3][:channels]]
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _png_chunk(kind, payload):
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def encode_png(image):
    """PNG bytes as OpenCV's default ``imencode('.png')``: 8-bit grey/RGB/RGBA, every row with the
    Sub filter, zlib level 1 with the RLE strategy, the zlib header's window size shrunk to fit the
    data (libpng's ``optimize_cmf``), 8192-byte IDAT chunks, no ancillary chunks."""
    height, width, channels = image.shape
    pixels = image if channels == 1 else image[:, :, [2, 1, 0, 3][:channels]]
    rows = pixels.reshape(height, width * channels)
    filtered = rows.copy()
    filtered[:, channels:] = rows[:, channels:] - rows[:, :-channels]        # uint8 wraps: Sub filter
    raw = np.concatenate([np.ones((height, 1), np.uint8), filtered], axis=1).tobytes()
    compressor = zlib.compressobj(1, zlib.DEFLATED, 15, 8, zlib.Z_RLE)
    stream = bytearray(compressor.compress(raw) + compressor.flush())
    if len(raw) <= 16384:
        cinfo = stream[0] >> 4
        half_window = 1 << (cinfo + 7)
        while cinfo > 0 and len(raw) <= half_window:
            half_window >>= 1
            cinfo -= 1
        stream[0] = (stream[0] & 0x0F) | (cinfo << 4)
        flags = stream[1] & 0xE0
        stream[1] = flags + 0x1F - ((stream[0] << 8) + flags) % 0x1F
    color_type = {1: 0, 3: 2, 4: 6}[channels]
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    chunks = [_png_chunk(b"IHDR", header)]
    chunks += [_png_chunk(b"IDAT", bytes(stream[i:i + 8192])) for i in range(0, len(stream), 8192)]
    chunks.append(_png_chunk(b"IEND", b""))
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def hwc_to_chw(image):
    """H x W x C (OpenCV layout) to C x H x W (Datum layout)."""
    return np.ascontiguousarray(image.transpose(2, 0, 1))
