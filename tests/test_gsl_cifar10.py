"""GSL at CIFAR-10 scale. Fast: the data path (:mod:`pyskim.apps.cifar10_jpeg`) on a small tar of
JPEGs made here. Slow: end to end on a reduced budget, ``examples/gsl_cifar10.py`` from ../shared's
JPEG tars (``tools/convert_imageset.py``), Caffe's trained ``cifar10_full`` (its accuracy reproduced on
all 10,000 test images first: BVLC Caffe's 0.7697), then GESL with a short prune and fine-tune,
checked against accuracy and density thresholds."""
import io
import json
import os
import pathlib
import re
import subprocess
import sys
import tarfile

import lmdb
import numpy as np
import pytest
from PIL import Image

from pyskim.apps import cifar10_jpeg
from pyskim.errors import DataError
from pyskim.io.blobproto import array_to_blobproto, blobproto_to_array, datum_to_array
from pyskim.io.protofiles import read_binary, write_binary
from pyskim.proto import caffe_pb2

REPO = pathlib.Path(__file__).resolve().parents[1]
#: The reduced budget (about 2 minutes on one thread): a 5,000-image training LMDB, 300 prune and 200
#: fine-tune iterations with the example's own GSL settings (the strong L1 pull of its GSL_SETTINGS
#: prunes within 300 iterations; the plan is for batch 1 on one thread).
BUDGET = ["--methods", "gesl", "--train-images", "5000", "--test-images", "10000", "--prune-iters", "300",
          "--finetune-iters", "200", "--measure-iters", "3", "--measure-batches", "1", "--measure-threads", "1",
          "--threads", "1"]


def _jpeg_tar(path, per_class):
    """A tar laid out as CIFAR-10's (``./<class>/<NNNN>.jpg``) of random 32x32 JPEGs; returns
    ``{member path: RGB pixels as PIL decodes the stored bytes}``."""
    rng = np.random.default_rng(0)
    decoded = {}
    with tarfile.open(path, "w") as tar:
        for c in cifar10_jpeg.CLASSES:
            for i in range(per_class):
                buffer = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, "JPEG")
                data = buffer.getvalue()
                info = tarfile.TarInfo(f"./{c}/{i:04d}.jpg")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                decoded[f"{c}/{i:04d}.jpg"] = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return decoded


def test_jpeg_lmdb_and_bgr_mean(tmp_path, monkeypatch):
    monkeypatch.setitem(cifar10_jpeg.IMAGES, "test", 20)           # a 20-image "test split": 2 per class
    decoded = _jpeg_tar(tmp_path / "test.tar", 2)
    lines = cifar10_jpeg.image_list("test", 12)
    assert [label for _, label in lines] == [*range(10), 0, 1]       # the classes in turn
    db = cifar10_jpeg.jpeg_lmdb(tmp_path / "test.tar", "test", tmp_path / "test_lmdb", 12)
    datum = caffe_pb2.Datum()
    with lmdb.open(str(db), readonly=True, lock=False) as env, env.begin() as txn:
        records = list(txn.cursor())
    assert [key.decode() for key, _ in records] == [f"{i:08d}_{path}" for i, (path, _) in enumerate(lines)]
    for (key, raw), (path, label) in zip(records, lines):
        datum.ParseFromString(raw)
        assert datum.label == label
        assert np.array_equal(datum_to_array(datum), decoded[path][:, :, ::-1].transpose(2, 0, 1))   # BGR planes
    assert not (tmp_path / "test_lmdb.partial").exists()
    with pytest.raises(DataError, match="asked for 21 images"):
        cifar10_jpeg.image_list("test", 21)
    with pytest.raises(DataError, match="no airplane/0002.jpg"):
        cifar10_jpeg.jpeg_lmdb(tmp_path / "test.tar", "train", tmp_path / "train_lmdb", 30)

    rgb = np.arange(3 * 4 * 4, dtype=np.float32).reshape(1, 3, 4, 4)
    write_binary(tmp_path / "mean_rgb.binaryproto", array_to_blobproto(rgb))
    cifar10_jpeg.bgr_mean(tmp_path / "mean_rgb.binaryproto", tmp_path / "mean_bgr.binaryproto")
    bgr = blobproto_to_array(read_binary(tmp_path / "mean_bgr.binaryproto", caffe_pb2.BlobProto()))
    assert np.array_equal(bgr[0], rgb[0, ::-1])


def _readme_accuracy(shared_dir):
    text = (shared_dir / "models" / "trained" / "README.md").read_text()
    row = next(line for line in text.splitlines() if "cifar10_full_iter_60000" in line and line.startswith("|"))
    return float(re.findall(r"\*\*(0\.\d+)\*\*", row)[-1])


@pytest.mark.slow
def test_gsl_cifar10_reduced_budget(tmp_path, shared_dir):
    work = tmp_path / "work"
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(REPO / "examples" / "gsl_cifar10.py"), "--work", str(work),
                           "--shared", str(shared_dir), *BUDGET], capture_output=True, text=True, env=env,
                          timeout=1800, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    dense = float(re.search(r"dense cifar10_full: test accuracy ([0-9.]+) on 10000 images", done.stdout).group(1))
    assert round(dense, 4) == _readme_accuracy(shared_dir)

    result = json.loads((work / "gsl_gesl" / "gsl.json").read_text())
    stages = result["stages"]
    assert stages["dense"]["accuracy"] == pytest.approx(dense, abs=1e-6)     # GSL's own test pass agrees
    pruned = [p["name"] for p in result["plan"] if p["prune"]]
    assert pruned, "the model picked no layer of cifar10_full"
    final = stages["finetune"]
    for name in pruned:
        assert final["densities"][name] < 0.85, (name, final["densities"][name])
    for p in result["plan"]:
        if not p["prune"]:
            assert final["densities"][p["name"]] == 1.0, p["name"]
    assert final["sparsity"] > 0.3                          # of all conv + FC weights
    assert final["accuracy"] >= dense - 0.10                # a short, strong prune on 5,000 images
    assert final["accuracy"] >= stages["prune"]["accuracy"] - 0.02      # fine-tuning does not lose more
    assert [(t["batch"], t["threads"]) for t in result["timings"]] == [(1, 1)]
    config = result["config"]
    assert (config["batch"], config["plan_threads"], config["finetune_lr_drop"]) == (1, 1, 0.75)
    assert result["sizes"]["final_npz"] < result["sizes"]["dense_npz"]
    table = (work / "methods.txt").read_text()
    assert table.splitlines()[0].split() == ["gesl"] and "final accuracy" in table
