"""Every net prototxt in ../shared/models without a data-source layer builds in the TEST phase and
runs forward at batch 1 with random weights (VGG, GoogLeNet, CaffeNet, R-CNN, ResNet, MTCNN...)."""
import pathlib

import numpy as np
import pytest

import pyskim as caffe
from pyskim.io.upgrade import read_net_text

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"
NEEDS_SHARED = True   # every test here runs ../shared's models (skipped by conftest when it is absent)
DATA_SOURCES = {"Data", "ImageData", "HDF5Data", "WindowData", "MemoryData", "Python"}


def _net_files():
    files = []
    for path in sorted((SHARED / "models").rglob("*.prototxt")):
        if "solver" in path.name or "ultraface" in str(path):
            continue
        files.append(path)
    return files


def _has_data_source(param):
    return any(layer.type in DATA_SOURCES for layer in param.layer)


NET_FILES = [p for p in _net_files() if not _has_data_source(read_net_text(p))]


def test_enough_nets_found():
    assert len(NET_FILES) >= 30


@pytest.mark.parametrize("path", NET_FILES, ids=[str(p.relative_to(SHARED / "models")) for p in NET_FILES])
def test_builds_and_runs_forward_at_batch_1(path):
    net = caffe.Net(str(path), caffe.TEST)
    rng = np.random.default_rng(0)
    for layer in net.layers:
        if layer.type == "BatchNorm":   # mean 0, variance 1, scale factor 1
            for blob, value in zip(layer.blobs, (0.0, 1.0, 1.0)):
                blob.data[...] = value
            continue
        for blob in layer.blobs:
            fan_in = max(blob.count // max(blob.shape[0], 1), 1) if blob.shape else 1
            blob.data[...] = rng.normal(0, 1 / np.sqrt(fan_in), size=blob.shape)
    for name in net.inputs:
        blob = net.blobs[name]
        blob.reshape(1, *blob.shape[1:])
        blob.data[...] = rng.uniform(-1, 1, size=blob.shape)
    net.forward()
    for name in net.outputs:
        out = net.blobs[name].data
        assert out.shape[:1] in ((1,), ()), f"{name}: {out.shape}"
        assert np.isfinite(out).all(), f"{name} has non-finite values"
