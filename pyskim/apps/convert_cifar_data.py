"""``convert_cifar_data INPUT_FOLDER OUTPUT_FOLDER DB_TYPE``: the CIFAR-10 binary batches to LMDBs
(Caffe's ``examples/cifar10/convert_cifar_data.cpp``).

Reads ``data_batch_1.bin`` ... ``data_batch_5.bin`` into ``OUTPUT_FOLDER/cifar10_train_lmdb`` and
``test_batch.bin`` into ``OUTPUT_FOLDER/cifar10_test_lmdb``. A batch file is a sequence of 3073-byte
records: the label byte, then the 32 x 32 image as its red, green and blue planes. Each record becomes
a Datum of 3 x 32 x 32 with the image bytes as they are (so the channels are in R, G, B order, not the
B, G, R of images read by OpenCV) and the label read as a signed char, stored under the key ``%05d``
of its index (train: ``(batch - 1) * 10000 + item``; test: ``item``), as Caffe's tool writes them.

Caffe reads exactly 10000 records per batch; pyskim reads the whole records a batch holds, up to
10000 (more are ignored, with a warning), so a smaller batch converts too. DB_TYPE ``leveldb`` is
refused (pyskim reads LMDB only).
"""
import logging
import os

import numpy as np

from ..data.db import LMDBWriter, check_backend
from ..errors import DataError
from ..proto import caffe_pb2
from . import flags

log = logging.getLogger("pyskim")

USAGE = """This script converts the CIFAR dataset to the leveldb format used
by caffe to perform classification.
Usage:
    convert_cifar_data input_folder output_folder db_type
Where the input folder should contain the binary batch files.
The CIFAR dataset could be downloaded at
    http://www.cs.toronto.edu/~kriz/cifar.html
You should gunzip them after downloading."""

CIFAR_SIZE = 32
IMAGE_BYTES = 3 * CIFAR_SIZE * CIFAR_SIZE
RECORD_BYTES = 1 + IMAGE_BYTES
BATCH_SIZE = 10000
TRAIN_BATCHES = 5


def read_batch(path, what):
    """The (labels as int8, images as N x 3072 uint8) of a CIFAR binary batch file, at most
    :data:`BATCH_SIZE` records."""
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise DataError(f"Unable to open {what} {path}: {e.strerror or e}") from None
    if raw.size % RECORD_BYTES:
        raise DataError(f"{path}: {raw.size} bytes is not a whole number of {RECORD_BYTES}-byte CIFAR "
                        f"records (a label byte and a 3 x 32 x 32 image)")
    records = raw.reshape(-1, RECORD_BYTES)
    if len(records) > BATCH_SIZE:
        log.warning("%s holds %d records; reading the first %d, as Caffe", path, len(records), BATCH_SIZE)
        records = records[:BATCH_SIZE]
    return records[:, 0].view(np.int8), records[:, 1:]


def write_records(db_path, batches):
    """Write ``(first index, labels, images)`` batches into the new LMDB ``db_path`` as Caffe's tool
    does; returns the record count."""
    datum = caffe_pb2.Datum(channels=3, height=CIFAR_SIZE, width=CIFAR_SIZE)
    writer = LMDBWriter(db_path, commit_every=BATCH_SIZE)
    count = 0
    try:
        for first, labels, images in batches:
            for item, (label, image) in enumerate(zip(labels, images)):
                datum.label = int(label)
                datum.data = image.tobytes()
                writer.put(f"{first + item:05d}", datum.SerializeToString())
                count += 1
    finally:
        writer.close()
    return count


def convert_dataset(input_folder, output_folder, db_type="lmdb"):
    """Convert the CIFAR-10 binary batches of ``input_folder`` into ``cifar10_train_<db_type>`` and
    ``cifar10_test_<db_type>`` in ``output_folder``; returns (train count, test count)."""
    check_backend(db_type, output_folder, "convert_cifar_data")
    train_files = [(f"train file #{batch}", os.path.join(input_folder, f"data_batch_{batch}.bin"))
                   for batch in range(1, TRAIN_BATCHES + 1)]
    test_file = os.path.join(input_folder, "test_batch.bin")
    for what, path in [*train_files, ("test file", test_file)]:      # before any database is created
        if not os.path.isfile(path):
            raise DataError(f"Unable to open {what}: {path} does not exist")

    def train_batches():
        for batch, (what, path) in enumerate(train_files):
            log.info("Training Batch %d", batch + 1)
            yield (batch * BATCH_SIZE, *read_batch(path, what))

    log.info("Writing Training data")
    train = write_records(os.path.join(output_folder, f"cifar10_train_{db_type}"), train_batches())
    log.info("Writing Testing data")
    test_batch = (0, *read_batch(test_file, "test file"))
    test = write_records(os.path.join(output_folder, f"cifar10_test_{db_type}"), [test_batch])
    return train, test


def build_parser():
    return flags.new_parser("convert_cifar_data", USAGE, [
        ("input_folder", "the folder of data_batch_1.bin ... data_batch_5.bin and test_batch.bin"),
        ("output_folder", "where cifar10_train_<db_type> and cifar10_test_<db_type> go"),
        ("db_type", "lmdb (leveldb is not supported by pyskim)")])


def run(args):
    """Convert the batches into the two LMDBs."""
    train, test = convert_dataset(args.input_folder, args.output_folder, args.db_type)
    log.info("Wrote %d training and %d test records", train, test)
    return 0
