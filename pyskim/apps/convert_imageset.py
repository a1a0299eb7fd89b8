"""``convert_imageset [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME``: images to an LMDB of Datums (Caffe's
``tools/convert_imageset.cpp``).

Each LISTFILE line is ``<path> <label>`` (split at the last space); the image ``ROOTFOLDER + path`` is
read in colour (BGR) or grey (``-gray``), resized when ``-resize_height`` and ``-resize_width`` are
both set, and stored under the key ``%08d_<path>`` (the line number) as a channel-planar uint8
Datum, or with ``-encoded`` / ``-encode_type`` as an encoded image: the file's own bytes when no
resize is asked, the channel count already fits and the extension matches the encoding, otherwise
the re-encoded pixels. Unreadable images are logged and skipped. Transactions commit every 1000
images.
"""
import logging

from ..core.state import rng
from ..data import imgproc
from ..data.db import LMDBWriter, check_backend
from ..data.sources import read_image_list
from ..errors import DataError
from ..proto import caffe_pb2
from . import flags

log = logging.getLogger("pyskim")

USAGE = """Convert a set of images to the leveldb/lmdb
format used as input for Caffe.
Usage:
    convert_imageset [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME
The ImageNet dataset for the training demo is at
    http://www.image-net.org/download-images"""

COMMIT_EVERY = 1000


def _matches_extension(filename, encoding):
    """``matchExt``: does the file's extension (lower-cased) name ``encoding`` (jpg also covers jpeg)?"""
    dot = filename.rfind(".")
    ext = (filename[dot + 1:] if dot >= 0 else filename).lower()
    encoding = encoding.lower()
    return ext == encoding or (encoding == "jpg" and ext == "jpeg")


def image_to_datum(path, label, height, width, is_color, encoding):
    """``ReadImageToDatum``: the Datum for one image file (None when it cannot be read)."""
    try:
        image = imgproc.read_image(path, height, width, is_color)
    except DataError as e:
        log.error("Could not open or find file %s (%s)", path, e)
        return None
    datum = caffe_pb2.Datum()
    if encoding:
        if (image.shape[2] == 3) == bool(is_color) and not height and not width \
                and _matches_extension(path, encoding):
            with open(path, "rb") as f:
                datum.data = f.read()
        else:
            datum.data = imgproc.encode(image, encoding, f"image '{path}'")
        datum.label = label
        datum.encoded = True
        return datum
    datum.channels, datum.height, datum.width = image.shape[2], image.shape[0], image.shape[1]
    datum.data = imgproc.hwc_to_chw(image).tobytes()
    datum.label = label
    datum.encoded = False
    return datum


def build_parser():
    parser = flags.new_parser("convert_imageset", USAGE, [
        ("root_folder", "prefix of every listed path (usually ends with '/')"),
        ("listfile", "text file of '<path> <label>' lines"),
        ("db_name", "the LMDB directory to create")])
    flags.define(parser, "gray", False, "When this option is on, treat images as grayscale ones")
    flags.define(parser, "shuffle", False, "Randomly shuffle the order of images and their labels")
    flags.define(parser, "backend", "lmdb", "The backend {lmdb, leveldb} for storing the result")
    flags.define(parser, "resize_width", 0, "Width images are resized to")
    flags.define(parser, "resize_height", 0, "Height images are resized to")
    flags.define(parser, "check_size", False, "When this option is on, check that all the datum have the "
                 "same size")
    flags.define(parser, "encoded", False, "When this option is on, the encoded image will be save in datum")
    flags.define(parser, "encode_type", "", "Optional: What type should we encode the image as ('png','jpg',...).")
    return parser


def convert(args):
    check_backend(args.backend, args.db_name, "convert_imageset")
    lines = read_image_list(args.listfile, "convert_imageset")
    if args.shuffle:
        log.info("Shuffling data")
        lines = [lines[i] for i in rng().permutation(len(lines))]
    log.info("A total of %d images.", len(lines))
    if args.encode_type and not args.encoded:
        log.info("encode_type specified, assuming encoded=true.")
    height, width = max(0, args.resize_height), max(0, args.resize_width)
    writer = LMDBWriter(args.db_name, commit_every=COMMIT_EVERY)
    count, data_size = 0, None
    try:
        for line_id, (name, label) in enumerate(lines):
            encoding = args.encode_type
            if args.encoded and not encoding:
                dot = name.rfind(".")
                if dot < 0:
                    log.warning("Failed to guess the encoding of '%s'", name)
                encoding = name[dot + 1:].lower()
            datum = image_to_datum(args.root_folder + name, label, height, width, not args.gray, encoding)
            if datum is None:
                continue
            if args.check_size and not datum.encoded:
                if data_size is None:
                    data_size = datum.channels * datum.height * datum.width
                elif len(datum.data) != data_size:
                    raise DataError(f"convert_imageset: {args.root_folder + name} (line {line_id + 1}): "
                                    f"Incorrect data field size {len(datum.data)}, expected {data_size}")
            writer.put(f"{line_id:08d}_{name}", datum.SerializeToString())
            count += 1
            if count % COMMIT_EVERY == 0:
                log.info("Processed %d files.", count)
    finally:
        writer.close()
    if count % COMMIT_EVERY:
        log.info("Processed %d files.", count)
    return count


def run(args):
    """Convert the listed images."""
    convert(args)
    return 0
