"""``tools/convert_cifar_data.py`` against the records Caffe's ``convert_cifar_data`` writes.

The test builds CIFAR-10 binary batches (label byte, then the red, green and blue 32 x 32 planes) from
a few JPEGs of the shared CIFAR-10 tars and checks every LMDB record byte for byte against a Datum
serialized by hand in Caffe's field order (channels 3, height 32, width 32, data, label as a signed
char), under Caffe's keys (``%05d`` of ``(batch - 1) * 10000 + item``) and database names.
"""
import io
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from fuzz_harness import varint

NEEDS_SHARED = True
ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "convert_cifar_data.py"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PER_BATCH = 3


def _images(tar_path, count, skip=0):
    """``count`` (label, 32 x 32 x 3 RGB uint8) pairs from a CIFAR-10 JPEG tar, classes in turn."""
    image_module = pytest.importorskip("PIL.Image")
    out = []
    with tarfile.open(tar_path) as tar:
        members = {m.name.lstrip("./"): m for m in tar.getmembers() if m.name.endswith(".jpg")}
        for i in range(skip, skip + count):
            label = i % len(CLASSES)
            member = members[f"{CLASSES[label]}/{i // len(CLASSES):04d}.jpg"]
            with image_module.open(io.BytesIO(tar.extractfile(member).read())) as image:
                out.append((label, np.asarray(image.convert("RGB"), np.uint8)))
    return out


def _record(label, rgb):
    """A CIFAR binary record: the label byte, then the R, G and B planes."""
    return bytes([label & 0xFF]) + rgb.transpose(2, 0, 1).tobytes()


def _caffe_datum(label_byte, rgb):
    """The bytes of Caffe's Datum for one record: channels, height, width, data, label (fields 1-5)."""
    data = rgb.transpose(2, 0, 1).tobytes()
    signed = label_byte - 256 if label_byte > 127 else label_byte      # Caffe reads it into a char
    return (b"\x08\x03\x10\x20\x18\x20" + b"\x22" + varint(len(data)) + data + b"\x28" + varint(signed))


@pytest.fixture(scope="module")
def batches(tmp_path_factory, shared_dir):
    """Five train batches of 3 records and a test batch of 4 (one with label byte 200), and the
    expected records of each database."""
    folder = tmp_path_factory.mktemp("cifar_bin")
    cifar = shared_dir / "datasets" / "cifar10"
    train = _images(cifar / "cifar10-train-jpeg.tar", 5 * PER_BATCH)
    test = _images(cifar / "cifar10-test-jpeg.tar", 4, skip=7)
    test[1] = (200, test[1][1])
    expected = {"train": {}, "test": {}}
    for batch in range(5):
        items = train[batch * PER_BATCH:(batch + 1) * PER_BATCH]
        (folder / f"data_batch_{batch + 1}.bin").write_bytes(b"".join(_record(*item) for item in items))
        for i, (label, rgb) in enumerate(items):
            expected["train"][b"%05d" % (batch * 10000 + i)] = _caffe_datum(label, rgb)
    (folder / "test_batch.bin").write_bytes(b"".join(_record(*item) for item in test))
    expected["test"] = {b"%05d" % i: _caffe_datum(label, rgb) for i, (label, rgb) in enumerate(test)}
    return folder, expected


def _run(*args, cwd):
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300, check=False)


def _records(db):
    import lmdb
    env = lmdb.open(str(db), readonly=True, lock=False, subdir=True)
    try:
        with env.begin() as txn:
            return [(bytes(k), bytes(v)) for k, v in txn.cursor()]
    finally:
        env.close()


def test_records_are_caffes_bytes(batches, tmp_path):
    folder, expected = batches
    result = _run(folder, tmp_path, "lmdb", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar10_test_lmdb", "cifar10_train_lmdb"]
    for name in ("train", "test"):
        assert _records(tmp_path / f"cifar10_{name}_lmdb") == sorted(expected[name].items()), name
    assert "Writing Training data" in result.stderr and "Writing Testing data" in result.stderr


def test_data_layer_reads_the_records_in_rgb_order(batches, tmp_path):
    """pyskim's Data layer gives the stored planes back: channel 0 is red (Caffe's tool does not
    reorder to BGR)."""
    import pyskim as caffe
    from pyskim.io.protofiles import parse_text
    from pyskim.proto import caffe_pb2

    folder, expected = batches
    assert _run(folder, tmp_path, "lmdb", cwd=tmp_path).returncode == 0
    net = caffe.Net(parse_text(f"""layer {{ name: "d" type: "Data" top: "data" top: "label"
        data_param {{ source: "{tmp_path / 'cifar10_test_lmdb'}" batch_size: 4 backend: LMDB }} }}""",
                               caffe_pb2.NetParameter()), caffe.TEST)
    out = net.forward()
    first = caffe_pb2.Datum.FromString(expected["test"][b"00000"])
    red = np.frombuffer(first.data, np.uint8)[:1024].reshape(32, 32)
    np.testing.assert_array_equal(out["data"][0, 0], red)
    assert out["label"].tolist() == [7, -56, 9, 0]          # label byte 200 is the char -56


def test_errors_name_the_file(batches, tmp_path):
    folder, _ = batches
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    for batch in range(1, 6):
        name = f"data_batch_{batch}.bin"
        (incomplete / name).write_bytes((folder / name).read_bytes())
    result = _run(incomplete, tmp_path / "out", "lmdb", cwd=tmp_path)
    assert result.returncode == 1 and "Unable to open test file" in result.stderr
    assert str(incomplete / "test_batch.bin") in result.stderr and not (tmp_path / "out").exists()

    (incomplete / "test_batch.bin").write_bytes(b"\x01" * 3080)
    result = _run(incomplete, tmp_path / "out2", "lmdb", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{incomplete / 'test_batch.bin'}: 3080 bytes is not a whole number of 3073-byte" in result.stderr

    result = _run(folder, tmp_path / "out3", "leveldb", cwd=tmp_path)
    assert result.returncode == 1 and "LevelDB is not supported" in result.stderr
