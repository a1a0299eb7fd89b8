"""``extract_features pretrained_net_param feature_extraction_proto_file extract_feature_blob_name1[,name2,...]
save_feature_dataset_name1[,name2,...] num_mini_batches db_type [CPU/GPU] [DEVICE_ID=0]``
(Caffe's ``tools/extract_features.cpp``).

Loads the TEST-phase net of ``feature_extraction_proto_file`` (its data layer feeds the images) with
the weights of ``pretrained_net_param``, runs ``num_mini_batches`` forward passes and stores, for each
named blob, one Datum per image in a new database: ``float_data`` holds the image's features,
``channels``/``height``/``width`` are the blob's legacy C/H/W (1 where the blob has fewer axes), and
keys are the running image index as ten digits (``%010d``, Caffe's ``format_int(i, 10)``). Commits
every 1000 images. ``db_type`` must be ``lmdb`` (pyskim has no LevelDB). ``GPU`` is accepted and
runs on the CPU.
"""
import argparse
import logging

from ..core.state import set_mode_cpu, set_mode_gpu
from ..data.db import LMDBWriter, check_backend
from ..errors import NetError, PyskimError
from ..proto import caffe_pb2
from ..pycaffe.net import Net

log = logging.getLogger("pyskim")

USAGE = ("This program takes in a trained network and an input data layer, and then extract features "
         "of the input data produced by the net.\n"
         "Usage: extract_features  pretrained_net_param  feature_extraction_proto_file  "
         "extract_feature_blob_name1[,name2,...]  save_feature_dataset_name1[,name2,...]  "
         "num_mini_batches  db_type  [CPU/GPU] [DEVICE_ID=0]\n"
         "Note: you can extract multiple features in one pass by specifying multiple feature blob names "
         "and dataset names separated by ','. The names cannot contain white space characters and the "
         "number of blobs and datasets must be equal.")
NUM_REQUIRED_ARGS = 6
COMMIT_EVERY = 1000


def legacy_shape(shape):
    """Caffe's ``Blob::LegacyShape`` for axes 0-3: N, C, H, W with 1 for missing axes."""
    if len(shape) > 4:
        raise NetError(f"a {len(shape)}-axis blob has no legacy N x C x H x W shape; extract_features "
                       "stores blobs of up to 4 axes")
    return tuple(shape) + (1,) * (4 - len(shape))


def extract_features(pretrained, proto, blob_names, dataset_names, num_mini_batches, db_type="lmdb"):
    """Run the extraction; returns ``{blob name: number of images stored}``."""
    if len(blob_names) != len(dataset_names):
        raise PyskimError(f"the number of blob names ({len(blob_names)}) and dataset names "
                          f"({len(dataset_names)}) must be equal")
    net = Net(proto, caffe_pb2.TEST, weights=pretrained)
    for name in blob_names:
        if name not in net.blobs:
            raise NetError(f"Unknown feature blob name {name} in the network {proto}")
    for dataset in dataset_names:
        check_backend(db_type, dataset, "extract_features")
    writers = []
    try:
        for dataset in dataset_names:
            log.info("Opening dataset %s", dataset)
            writers.append(LMDBWriter(dataset, commit_every=COMMIT_EVERY))
        log.info("Extracting Features")
        image_indices = [0] * len(blob_names)
        datum = caffe_pb2.Datum()
        for _ in range(num_mini_batches):
            net.forward()
            for i, name in enumerate(blob_names):
                data = net.blobs[name].data
                num, channels, height, width = legacy_shape(data.shape)
                features = data.reshape(num, -1)
                for n in range(num):
                    datum.Clear()
                    datum.channels, datum.height, datum.width = channels, height, width
                    datum.float_data.extend(features[n].tolist())
                    writers[i].put(f"{image_indices[i]:010d}", datum.SerializeToString())
                    image_indices[i] += 1
                    if image_indices[i] % COMMIT_EVERY == 0:
                        log.info("Extracted features of %d query images for feature blob %s",
                                 image_indices[i], name)
        for i, name in enumerate(blob_names):
            log.info("Extracted features of %d query images for feature blob %s", image_indices[i], name)
    finally:
        for writer in writers:
            writer.close()
    log.info("Successfully extracted the features!")
    return dict(zip(blob_names, image_indices))


def build_parser():
    """Caffe's tool reads its arguments itself: they are kept as given, ``-h``/``-help``/``--help`` asks for
    the usage."""
    parser = argparse.ArgumentParser(prog="extract_features", usage=USAGE, add_help=False)
    parser.add_argument("-h", "-help", "--help", action="store_true", help="log the usage")
    parser.add_argument("arguments", nargs="*", help="see the usage")
    return parser


def run(args):
    """Check the arguments as Caffe's tool does (the usage is logged as an error, exit 1) and extract."""
    argv = args.arguments
    if args.help or len(argv) < NUM_REQUIRED_ARGS:
        log.error("%s", USAGE)
        return 1
    if len(argv) > NUM_REQUIRED_ARGS and argv[NUM_REQUIRED_ARGS] == "GPU":
        log.info("Using GPU")
        device_id = argv[NUM_REQUIRED_ARGS + 1] if len(argv) > NUM_REQUIRED_ARGS + 1 else "0"
        log.info("Using Device_id=%s", device_id)
        set_mode_gpu()
    else:
        log.info("Using CPU")
        set_mode_cpu()
    pretrained, proto, blobs, datasets, num_batches, db_type = argv[:NUM_REQUIRED_ARGS]
    try:
        num_mini_batches = int(num_batches)
    except ValueError:
        log.error("num_mini_batches must be an integer, not %r", num_batches)
        return 1
    extract_features(pretrained, proto, blobs.split(","), datasets.split(","), num_mini_batches, db_type)
    return 0
