"""CIFAR-10's JPEG tars to Caffe's LMDBs, as a Caffe user makes them (not a command: the helper of
``examples/gsl_cifar10.py``; ``benchmarks/train_cifar.py`` builds its LMDBs the same way).

The tars (``cifar10-train-jpeg.tar``: 50,000 images, ``cifar10-test-jpeg.tar``: 10,000) hold
``<class>/<NNNN>.jpg`` per class in :data:`CLASSES` order (label = index). :func:`jpeg_lmdb` extracts
the listed images to a temporary folder, writes a ``<path> <label>`` list file and runs
``convert_imageset`` on it (``-shuffle`` for a training set); that tool stores BGR planes (OpenCV's
decode), so :func:`bgr_mean` turns the RGB ``mean_rgb_train.binaryproto`` into the mean of those
planes.
"""
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile

import numpy as np

from ..errors import DataError
from ..io.blobproto import array_to_blobproto, blobproto_to_array
from ..io.protofiles import read_binary, write_binary
from ..proto import caffe_pb2

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGES = {"train": 50000, "test": 10000}
#: ``convert_imageset``'s command line prefix: the same tool as ``tools/convert_imageset.py``.
CONVERT_IMAGESET = (sys.executable, "-m", "pyskim", "convert_imageset")


def image_list(split, count=None):
    """``(path, label)`` of the first ``count`` (default all) images of ``split`` ("train" or "test"),
    the classes taken in turn (so any prefix is balanced)."""
    if split not in IMAGES:
        raise DataError(f"CIFAR-10 split must be 'train' or 'test', got '{split}'")
    total = IMAGES[split]
    count = total if count is None else int(count)
    if not 0 < count <= total:
        raise DataError(f"CIFAR-10 {split}: asked for {count} images, it has {total}")
    per_class = total // len(CLASSES)
    return [(f"{c}/{i:04d}.jpg", label) for i in range(per_class) for label, c in enumerate(CLASSES)][:count]


def jpeg_lmdb(tar_path, split, db, count=None, shuffle=False, convert=CONVERT_IMAGESET):
    """Make the LMDB ``db`` of the first ``count`` images of ``split`` (:func:`image_list`) from the
    tar ``tar_path`` with ``convert`` (``convert_imageset``'s command line prefix), ``-shuffle``d when
    ``shuffle``. The LMDB is built as ``<db>.partial`` and renamed when complete; an existing ``db`` is
    kept. Returns ``db``."""
    db = pathlib.Path(db)
    if (db / "data.mdb").exists():
        return db
    lines = image_list(split, count)
    db.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"jpeg_{split}_", dir=db.parent) as tmp:
        try:
            with tarfile.open(tar_path) as tar:
                members = {m.name.removeprefix("./"): m for m in tar.getmembers()}
                missing = [path for path, _ in lines if path not in members]
                if missing:
                    raise DataError(f"{tar_path}: no {missing[0]} (not CIFAR-10's {split} JPEG tar?)")
                tar.extractall(tmp, [members[path] for path, _ in lines], filter="data")
        except (OSError, tarfile.TarError) as e:
            raise DataError(f"cannot read {tar_path}: {e}") from None
        listfile = pathlib.Path(tmp) / "list.txt"
        listfile.write_text("".join(f"{path} {label}\n" for path, label in lines))
        partial = db.with_name(db.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        flags = ["-shuffle"] if shuffle else []
        done = subprocess.run([*convert, *flags, tmp + "/", str(listfile), str(partial)], check=False,
                              capture_output=True, text=True)
        if done.returncode:
            raise DataError(f"convert_imageset failed on {tar_path}: {done.stderr[-2000:]}")
        partial.rename(db)
    return db


def bgr_mean(rgb_mean_path, out_path):
    """Write the mean blob of ``rgb_mean_path`` (1 x 3 x H x W, RGB planes) with its channels reversed
    (BGR, the order ``convert_imageset`` stores) to ``out_path``; returns the BGR array."""
    mean = blobproto_to_array(read_binary(rgb_mean_path, caffe_pb2.BlobProto()))
    if mean.ndim != 4 or mean.shape[1] != 3:
        raise DataError(f"{rgb_mean_path}: expected a 1 x 3 x H x W mean, got shape {list(mean.shape)}")
    bgr = np.ascontiguousarray(mean[:, ::-1], dtype=np.float32)
    write_binary(out_path, array_to_blobproto(bgr))
    return bgr
