"""``convert_mnist_data [FLAGS] IMAGES LABELS DB``: MNIST idx files to an LMDB (Caffe's
``examples/mnist/convert_mnist_data.cpp``).

Reads an idx3-ubyte image file and an idx1-ubyte label file (``.gz`` accepted) and stores item ``i``
under the key ``%08d`` as a 1 x rows x cols uint8 Datum with its label, committing every 1000 items.
"""
import logging

import numpy as np

from ..data.db import LMDBWriter, check_backend
from ..errors import DataError
from ..io.idx import read_idx
from ..proto import caffe_pb2
from . import flags

log = logging.getLogger("pyskim")

USAGE = """This script converts the MNIST dataset to
the lmdb/leveldb format used by Caffe to load data.
Usage:
    convert_mnist_data [FLAGS] input_image_file input_label_file output_db_file
The MNIST dataset could be downloaded at
    http://yann.lecun.com/exdb/mnist/
You should gunzip them after downloading,or directly use data/mnist/get_mnist.sh"""

COMMIT_EVERY = 1000


def convert(image_file, label_file, db_path):
    """Convert an idx image file and its idx label file into the LMDB ``db_path``; returns the item count."""
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{image_file}: Incorrect image file magic (expected 3-d unsigned bytes, got "
                        f"{images.ndim}-d {images.dtype})")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DataError(f"{label_file}: Incorrect label file magic (expected 1-d unsigned bytes, got "
                        f"{labels.ndim}-d {labels.dtype})")
    if len(images) != len(labels):
        raise DataError(f"{image_file} holds {len(images)} items but {label_file} {len(labels)} labels")
    return convert_arrays(images, labels, db_path)


def convert_arrays(images, labels, db_path):
    """Write N x rows x cols uint8 ``images`` with their uint8 ``labels`` into the LMDB ``db_path`` as
    Caffe's tool does (keys ``%08d``, 1 x rows x cols Datums, a commit every 1000 items)."""
    num, rows, cols = images.shape
    writer = LMDBWriter(db_path, commit_every=COMMIT_EVERY)
    log.info("A total of %d items.", num)
    log.info("Rows: %d Cols: %d", rows, cols)
    datum = caffe_pb2.Datum(channels=1, height=rows, width=cols)
    try:
        for item in range(num):
            datum.data = images[item].tobytes()
            datum.label = int(labels[item].astype(np.int8))   # Caffe reads the label as a (signed) char
            writer.put(f"{item:08d}", datum.SerializeToString())
    finally:
        writer.close()
    log.info("Processed %d files.", num)
    return num


def build_parser():
    parser = flags.new_parser("convert_mnist_data", USAGE, [("image_file", "idx3-ubyte images (optionally .gz)"),
                                                           ("label_file", "idx1-ubyte labels (optionally .gz)"),
                                                           ("db_path", "the LMDB directory to create")])
    flags.define(parser, "backend", "lmdb", "The backend {lmdb, leveldb} for storing the result")
    return parser


def run(args):
    """Convert the idx pair into the LMDB."""
    check_backend(args.backend, args.db_path, "convert_mnist_data")
    convert(args.image_file, args.label_file, args.db_path)
    return 0
