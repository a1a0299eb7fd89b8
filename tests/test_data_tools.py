"""Caffe's data tools (convert_imageset, compute_image_mean, convert_mnist_data) against the LMDBs and
mean files Caffe wrote (conformance/io/convert_imageset), plus the gflags-style flag parser."""
import gzip
import json
import logging
import re
import shlex
import struct

import numpy as np
import pytest

from pyskim.apps import convert_imageset, flags
from pyskim.apps.cli import run_tool
from pyskim.data import imgproc
from pyskim.data.db import iterate, open_env, release_env
from pyskim.proto import caffe_pb2

CASES = ["lmdb_plain", "lmdb_resize", "lmdb_gray", "lmdb_encoded", "lmdb_encoded_png_resize"]


@pytest.fixture(scope="module")
def case_dir(shared_dir):
    path = shared_dir / "conformance" / "io" / "convert_imageset"
    if not path.is_dir():
        pytest.skip("conformance/io/convert_imageset is not available")
    return path


def raw_records(path):
    env = open_env(path)            # shared with any Data layer still reading this database
    try:
        with env.begin() as txn:
            return [(bytes(k), bytes(v)) for k, v in txn.cursor()]
    finally:
        release_env(path)


def caffe_args(log_path):
    """The flags and positional arguments Caffe's tool ran with, from the ``$ ...`` first log line."""
    first = log_path.read_text().splitlines()[0]
    assert first.startswith("$ ")
    return shlex.split(first[2:])[1:]


@pytest.mark.parametrize("name", CASES)
def test_convert_imageset_matches_caffe(name, case_dir, tmp_path, monkeypatch):
    args = caffe_args(case_dir / f"{name}.log")
    assert args[-1] == name
    monkeypatch.chdir(case_dir)                          # the log's paths are relative; we only read here
    out = tmp_path / name
    assert run_tool("convert_imageset", args[:-1] + [str(out)]) == 0
    ours, theirs = raw_records(out), raw_records(case_dir / name)
    summary = json.loads((case_dir / "lmdb_contents.json").read_text())[name]["records"]
    assert [k for k, _ in ours] == [k for k, _ in theirs] == [r["key"].encode() for r in summary]
    for (key, mine), (_, caffe), expected in zip(ours, theirs, summary):
        datum, ref = caffe_pb2.Datum(), caffe_pb2.Datum()
        datum.ParseFromString(mine)
        ref.ParseFromString(caffe)
        assert (datum.label, datum.channels, datum.height, datum.width, datum.encoded) == \
            (expected["label"], expected["channels"], expected["height"], expected["width"], expected["encoded"])
        # Decoding (libjpeg/libpng via Pillow), OpenCV's fixed-point resize, OpenCV's grey conversions
        # and OpenCV's default PNG encoder are all reproduced exactly: whole records are identical.
        assert mine == caffe, f"{name}: record {key!r} differs"
        if datum.encoded:
            assert np.array_equal(imgproc.decode(datum.data, key, None), imgproc.decode(ref.data, key, None))


@pytest.mark.parametrize("name", ["lmdb_plain", "lmdb_resize", "lmdb_encoded"])
def test_compute_image_mean_matches_caffe(name, case_dir, tmp_path, caplog):
    log_path = case_dir / f"mean_{name}.log"
    args = caffe_args(log_path)
    out = tmp_path / "mean.binaryproto"
    with caplog.at_level(logging.INFO, logger="pyskim"):
        assert run_tool("compute_image_mean", args[:-2] + [str(case_dir / name), str(out)]) == 0
    # Sums and the division are float32 as in Caffe: the file is byte-identical.
    assert out.read_bytes() == (case_dir / f"mean_{name}.binaryproto").read_bytes()
    expected = re.findall(r"mean_value channel \[\d\]: [\d.]+", log_path.read_text())
    assert expected and re.findall(r"mean_value channel \[\d\]: [\d.]+", caplog.text) == expected


def test_mean_of_our_own_lmdb(case_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(case_dir)
    assert run_tool("convert_imageset", ["-resize_height=8", "--resize_width", "10", "images/", "list.txt",
                                  str(tmp_path / "db")]) == 0
    assert run_tool("compute_image_mean", [str(tmp_path / "db"), str(tmp_path / "mean.binaryproto")]) == 0
    assert (tmp_path / "mean.binaryproto").read_bytes() == \
        (case_dir / "mean_lmdb_resize.binaryproto").read_bytes()


def test_convert_imageset_shuffle_gray_and_check_size(case_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(case_dir)
    assert run_tool("convert_imageset", ["images/", "list.txt", str(tmp_path / "db"), "--gray", "-shuffle",
                                  "-check_size"]) == 0
    records = list(iterate(tmp_path / "db"))
    reference = {k.decode().split("_", 1)[1]: d for k, d in iterate(case_dir / "lmdb_gray")}
    assert len(records) == 20
    names = [k.decode().split("_", 1)[1] for k, _ in records]
    assert sorted(names) == sorted(reference)
    for key, datum in records:
        ref = reference[key.decode().split("_", 1)[1]]
        assert (datum.data, datum.label) == (ref.data, ref.label)


def test_convert_imageset_errors(case_dir, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(case_dir)
    with caplog.at_level(logging.ERROR, logger="pyskim"):
        assert run_tool("convert_imageset",
                        ["-backend", "leveldb", "images/", "list.txt", str(tmp_path / "a")]) == 1
    assert "LevelDB is not supported" in caplog.text
    bad = tmp_path / "bad.txt"
    bad.write_text("img_00.png 0\nimg_01.jpg\n")
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="pyskim"):
        assert run_tool("convert_imageset", ["images/", str(bad), str(tmp_path / "b")]) == 1
    assert f"{bad}:2" in caplog.text
    missing = tmp_path / "missing.txt"
    missing.write_text("nothere.png 3\nimg_00.png 0\n")
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="pyskim"):
        assert run_tool("convert_imageset", ["images/", str(missing), str(tmp_path / "c")]) == 0
    assert "Could not open or find file images/nothere.png" in caplog.text
    assert [k for k, _ in iterate(tmp_path / "c")] == [b"00000001_img_00.png"]   # keys keep line numbers
    with caplog.at_level(logging.ERROR, logger="pyskim"):
        assert run_tool("convert_imageset", ["images/", "list.txt", str(tmp_path / "c")]) == 1
    assert "already exists" in caplog.text


def test_compute_image_mean_errors(tmp_path, caplog):
    with caplog.at_level(logging.ERROR, logger="pyskim"):
        assert run_tool("compute_image_mean", [str(tmp_path / "nothing")]) == 1
    assert str(tmp_path / "nothing") in caplog.text


def _write_idx(path, array, magic, compress=False):
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    (gzip.open if compress else open)(path, "wb").write(header + array.tobytes())


def test_convert_mnist_matches_caffe_lmdb(shared_dir, tmp_path):
    """Rebuild the solver cases' MNIST-style LMDB from idx files: every record is byte-identical."""
    source = shared_dir / "conformance" / "solvers" / "sgd_fixed" / "data_lmdb"
    if not source.is_dir():
        pytest.skip("solver data not available")
    records = list(iterate(source))
    images = np.stack([np.frombuffer(d.data, np.uint8).reshape(d.height, d.width) for _, d in records])
    labels = np.array([d.label for _, d in records], np.uint8)
    _write_idx(tmp_path / "images.idx", images, 2051)
    _write_idx(tmp_path / "labels.idx.gz", labels, 2049, compress=True)
    assert run_tool("convert_mnist_data", [str(tmp_path / "images.idx"), str(tmp_path / "labels.idx.gz"),
                                    str(tmp_path / "db"), "--backend=lmdb"]) == 0
    assert raw_records(tmp_path / "db") == raw_records(source)


def test_convert_mnist_errors(tmp_path, caplog):
    _write_idx(tmp_path / "images.idx", np.zeros((3, 4, 4), np.uint8), 2051)
    _write_idx(tmp_path / "labels.idx", np.zeros(2, np.uint8), 2049)
    with caplog.at_level(logging.ERROR, logger="pyskim"):
        assert run_tool("convert_mnist_data", [str(tmp_path / "images.idx"), str(tmp_path / "labels.idx"),
                                        str(tmp_path / "db")]) == 1
    assert "3 items" in caplog.text and "2 labels" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="pyskim"):
        assert run_tool("convert_mnist_data", [str(tmp_path / "labels.idx"), str(tmp_path / "labels.idx"),
                                        str(tmp_path / "db")]) == 1
    assert "magic" in caplog.text


def test_png_encoder_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    for channels in (1, 3, 4):
        image = rng.integers(0, 256, (70, 90, channels), dtype=np.uint8)   # > 16 KiB: several IDATs
        data = imgproc.encode(image, "png", "test")
        assert np.array_equal(imgproc.decode(data, "test", None), image)


def test_resize_matches_opencv_rules():
    image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3) * 3
    assert np.array_equal(imgproc.resize(image, 4, 6), image)
    halved = imgproc.resize(image, 2, 3)                    # exact 2x: OpenCV's INTER_AREA shortcut
    expected = (image.reshape(2, 2, 3, 2, 3).astype(int).sum(axis=(1, 3)) + 2) >> 2
    assert np.array_equal(halved, expected)
    flat = np.full((5, 7, 1), 77, np.uint8)
    assert np.array_equal(imgproc.resize(flat, 11, 3), np.full((11, 3, 1), 77, np.uint8))


@pytest.mark.parametrize("argv, gray, height, backend", [
    (["-gray", "r", "l", "d"], True, 0, "lmdb"),
    (["r", "--gray", "-resize_height=32", "l", "d"], True, 32, "lmdb"),
    (["-resize_height", "32", "r", "l", "d", "-nogray"], False, 32, "lmdb"),
    (["--gray=false", "--backend", "leveldb", "r", "l", "d"], False, 0, "leveldb"),
    (["-gray=1", "--resize_height=7", "--", "r", "l", "d"], True, 7, "lmdb"),
])
def test_gflags_spellings(argv, gray, height, backend):
    args = flags.parse(convert_imageset.build_parser(), argv)
    assert (args.gray, args.resize_height, args.backend) == (gray, height, backend)
    assert (args.root_folder, args.listfile, args.db_name) == ("r", "l", "d")


def test_gflags_rejects_unknown_flags():
    with pytest.raises(SystemExit):
        flags.parse(convert_imageset.build_parser(), ["-colour", "r", "l", "d"])
