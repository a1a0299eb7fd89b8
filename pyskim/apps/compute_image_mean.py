"""``compute_image_mean [FLAGS] INPUT_DB [OUTPUT_FILE]``: the mean image of an LMDB of Datums, written
as a BlobProto (1 x C x H x W), with the per-channel means logged (Caffe's
``tools/compute_image_mean.cpp``).

Encoded Datums are decoded with their own channel count. As Caffe, the sum is accumulated in float32
record by record and divided by the record count in float32; every record must have the size of the
first.
"""
import logging

import numpy as np

from ..data import imgproc
from ..data.db import check_backend, iterate
from ..errors import DataError
from ..io.protofiles import write_binary
from ..proto import caffe_pb2
from . import flags

log = logging.getLogger("pyskim")

USAGE = """Compute the mean_image of a set of images given by a leveldb/lmdb
Usage:
    compute_image_mean [FLAGS] INPUT_DB [OUTPUT_FILE]"""


def datum_values(datum, where):
    """A Datum's values, flat, as float32 (decoding an encoded image natively) and its C, H, W."""
    if datum.encoded:
        image = imgproc.decode(datum.data, where, color=None)
        return image.transpose(2, 0, 1).astype(np.float32).ravel(), image.shape[2], *image.shape[:2]
    values = np.frombuffer(datum.data, np.uint8) if len(datum.data) else np.asarray(datum.float_data)
    return values.astype(np.float32), datum.channels, datum.height, datum.width


def compute_mean(source):
    """The mean BlobProto of an LMDB (``num``/``channels``/``height``/``width`` + ``data``)."""
    total = count = None
    shape = None
    for key, datum in iterate(source):
        where = f"LMDB '{source}' record {key.decode('utf-8', 'replace')!r}"
        values, channels, height, width = datum_values(datum, where)
        if total is None:
            if datum.encoded:
                log.info("Decoding Datum")
            shape = (channels, height, width)
            total = np.zeros(values.size, dtype=np.float32)
            count = 0
            log.info("Starting iteration")
        if values.size != total.size or channels * height * width != total.size:
            raise DataError(f"{where}: Incorrect data field size {values.size}, expected {total.size}")
        total += values
        count += 1
        if count % 10000 == 0:
            log.info("Processed %d files.", count)
    if total is None:
        raise DataError(f"LMDB '{source}' holds no records")
    if count % 10000:
        log.info("Processed %d files.", count)
    blob = caffe_pb2.BlobProto(num=1, channels=shape[0], height=shape[1], width=shape[2])
    blob.data.extend((total / np.float32(count)).tolist())
    return blob


def log_channel_means(blob):
    """Log each channel's mean as Caffe does (a float32 running sum over the channel's pixels)."""
    dim = blob.height * blob.width
    values = np.asarray(blob.data, dtype=np.float32)
    log.info("Number of channels: %d", blob.channels)
    for c in range(blob.channels):
        channel_sum = np.cumsum(values[c * dim:(c + 1) * dim], dtype=np.float32)[-1] if dim else np.float32(0)
        log.info("mean_value channel [%d]: %.6g", c, channel_sum / np.float32(dim))


def build_parser():
    parser = flags.new_parser("compute_image_mean", USAGE)
    flags.define(parser, "backend", "lmdb", "The backend {leveldb, lmdb} containing the images")
    parser.add_argument("input_db", help="the LMDB of Datums")
    parser.add_argument("output_file", nargs="?", help="where to write the mean .binaryproto")
    return parser


def run(args):
    """Compute the mean, write it when an output file is named, log the channel means."""
    check_backend(args.backend, args.input_db, "compute_image_mean")
    blob = compute_mean(args.input_db)
    if args.output_file:
        log.info("Write to %s", args.output_file)
        write_binary(args.output_file, blob)
    log_channel_means(blob)
    return 0
