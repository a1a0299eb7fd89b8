"""Shape sanity before allocation: anything asking for more than ``pyskim.get_max_blob_bytes()``
(default 8 GiB; ``pyskim.set_max_blob_bytes`` / ``PYSKIM_MAX_BLOB_BYTES``) fails with a clear
PyskimError naming the blob or layer, before memory is allocated, on every allocation path."""
import io
import os
import struct
import subprocess
import sys
import zlib

import h5py
import numpy as np
import pytest

import pyskim
from pyskim.core.blob import DEFAULT_MAX_BLOB_BYTES, Blob, check_allocation
from pyskim.errors import DataError, ModelFileError, NetError, PyskimError

HUGE = 100000000


@pytest.fixture
def limit():
    """A 64 MiB limit for the test, restored afterwards."""
    previous = pyskim.set_max_blob_bytes(64 << 20)
    yield 64 << 20
    pyskim.set_max_blob_bytes(previous)


def _net(tmp_path, text, phase=pyskim.TEST):
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    return pyskim.Net(str(path), phase)


INPUT = 'layer { name: "data" type: "Input" top: "data" input_param { shape { %s } } }\n'


def test_default_and_configuration(limit):
    assert DEFAULT_MAX_BLOB_BYTES == 8 << 30
    assert pyskim.get_max_blob_bytes() == 64 << 20
    assert pyskim.set_max_blob_bytes("2G") == 64 << 20
    assert pyskim.get_max_blob_bytes() == 2 << 30
    pyskim.set_max_blob_bytes(12345)
    assert pyskim.get_max_blob_bytes() == 12345
    for bad in (0, -1, "abc", "1.5G", True, None, 2.5):
        with pytest.raises(ValueError):
            pyskim.set_max_blob_bytes(bad)
    assert pyskim.get_max_blob_bytes() == 12345
    assert "PYSKIM_MAX_BLOB_BYTES" in pyskim.set_max_blob_bytes.__doc__


@pytest.mark.parametrize("value,expected", [("1048576", 1 << 20), ("512M", 512 << 20), ("2GiB", 2 << 30),
                                            ("bogus", 8 << 30), ("0", 8 << 30), ("", 8 << 30)])
def test_environment_variable_parsing(monkeypatch, caplog, value, expected):
    from pyskim.core.blob import _limit_from_env
    monkeypatch.setenv("PYSKIM_MAX_BLOB_BYTES", value)
    with caplog.at_level("WARNING", logger="pyskim"):
        assert _limit_from_env() == expected
    assert ("PYSKIM_MAX_BLOB_BYTES" in caplog.text) == (value in ("bogus", "0"))


def test_environment_variable_is_read_at_import():
    code = "import pyskim; print(pyskim.get_max_blob_bytes())"
    env = {**os.environ, "PYSKIM_MAX_BLOB_BYTES": "512M"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert int(out.stdout) == 512 << 20


def test_blob_reshape(limit):
    with pytest.raises(NetError, match=r"blob 'b' of shape \[100000000, 100000000\] needs .*GiB.*limit of 64.0 MiB"):
        Blob(HUGE, HUGE, name="b")
    with pytest.raises(NetError, match="INT_MAX"):
        Blob(2**40, 2**40, 0)                       # int64 overflow of the count is not a way around it
    with pytest.raises(NetError, match="negative"):
        Blob(-1, 5)
    blob = Blob(4, 4, name="ok")
    with pytest.raises(NetError):
        blob.reshape(HUGE, 10)
    assert blob.shape == (4, 4)                     # a refused reshape leaves the blob as it was
    assert check_allocation((1024, 1024), "x") == 4 << 20


def test_input_shape(tmp_path, limit):
    with pytest.raises(NetError, match="blob 'data'.*GiB"):
        _net(tmp_path, INPUT % f"dim: {HUGE} dim: 3 dim: 224 dim: 224")


def test_default_limit_refuses_absurd_input(tmp_path):
    with pytest.raises(NetError, match="GiB"):
        _net(tmp_path, INPUT % f"dim: {HUGE} dim: {HUGE}")


def test_dummy_data(tmp_path, limit):
    with pytest.raises(NetError, match="blob 'd'"):
        _net(tmp_path, 'layer { name: "d" type: "DummyData" top: "d" '
                       f'dummy_data_param {{ shape {{ dim: {HUGE} dim: 1000 }} }} }}')
    with pytest.raises(NetError, match="blob 'd'"):
        _net(tmp_path, 'layer { name: "d" type: "DummyData" top: "d" '
                       f'dummy_data_param {{ num: {HUGE} channels: 3 height: 100 width: 100 }} }}')


def test_layer_param_blobs(tmp_path, limit):
    base = INPUT % "dim: 2 dim: 784"
    with pytest.raises(NetError, match=r"blob 'ip/0' of shape \[1000000000, 784\]"):
        _net(tmp_path, base + 'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
                              'inner_product_param { num_output: 1000000000 } }')
    with pytest.raises(NetError, match="blob 'conv/0'"):
        _net(tmp_path, INPUT % "dim: 1 dim: 3 dim: 8 dim: 8" +
             'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
             'convolution_param { num_output: 100000 kernel_size: 8 } }')
    with pytest.raises(NetError, match="blob 'emb/0'"):
        _net(tmp_path, INPUT % "dim: 2" + 'layer { name: "emb" type: "Embed" bottom: "data" top: "emb" '
                                          f'embed_param {{ input_dim: {HUGE} num_output: 1000 }} }}')


def test_im2col_buffer_of_a_huge_convolution(tmp_path, limit):
    # top and weights are small; the (363 x 60516) column buffer of one image is 88 MB
    text = (INPUT % "dim: 1 dim: 3 dim: 256 dim: 256" +
            'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
            'convolution_param { num_output: 1 kernel_size: 11 } }')
    with pytest.raises(NetError, match="layer 'conv': im2col buffer"):
        _net(tmp_path, text)
    pyskim.set_max_blob_bytes(1 << 30)
    _net(tmp_path, text).forward()


def test_top_blobs_of_layers(tmp_path, limit):
    base = INPUT % "dim: 1000 dim: 1000"
    with pytest.raises(NetError, match="blob 't'"):
        _net(tmp_path, base + 'layer { name: "t" type: "Tile" bottom: "data" top: "t" '
                              f'tile_param {{ tiles: {HUGE} }} }}')
    with pytest.raises(NetError):
        _net(tmp_path, base + 'layer { name: "r" type: "Reshape" bottom: "data" top: "r" '
                              f'reshape_param {{ shape {{ dim: {HUGE} dim: {HUGE} }} }} }}')
    with pytest.raises(NetError, match="blob 'c'"):
        _net(tmp_path, INPUT % "dim: 1 dim: 1 dim: 8 dim: 8" +
             'layer { name: "c" type: "Deconvolution" bottom: "data" top: "c" '
             'convolution_param { num_output: 1 kernel_size: 1 stride: 30000 } }')


def test_data_layer_batch(tmp_path, limit, shared_dir):
    db = shared_dir / "conformance/solvers/sgd_fixed/data_lmdb"
    if not db.is_dir():
        pytest.skip("conformance LMDB not available")
    with pytest.raises(PyskimError, match="GiB"):
        _net(tmp_path, 'layer { name: "d" type: "Data" top: "d" top: "l" '
                       f'data_param {{ source: "{db}" batch_size: {HUGE} backend: LMDB }} }}')


def _png(width, height):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("size", [(20000, 20000), (100000, 100000), (2**31 - 1, 1)])
def test_encoded_image_declaring_a_huge_size(limit, size):
    from pyskim.data import imgproc
    with pytest.raises(DataError, match="img"):
        imgproc.decode(_png(*size), "img", color=True)


def test_hdf5_datasets_are_sized_before_reading(tmp_path, limit):
    from pyskim.io.hdf5 import read_float_dataset
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        f.create_dataset("big", shape=(HUGE, HUGE), dtype="f4")      # declared, never written
        f.create_dataset("text", data=np.array([b"abc"]))
    path = tmp_path / "x.h5"
    path.write_bytes(buffer.getvalue())
    with h5py.File(path, "r") as f:
        with pytest.raises(ModelFileError, match="big"):
            read_float_dataset(f["big"], str(path), "big")
        with pytest.raises(ModelFileError, match="text"):
            read_float_dataset(f["text"], str(path), "text")
