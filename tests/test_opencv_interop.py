"""A caffemodel written by pyskim loads in OpenCV's dnn module (its Caffe importer, OpenCV 4.x) and
gives the same outputs as pyskim, within 1e-4.

Two files: the snapshot ``pyskim train``'s solver writes after training LeNet (``prototxt/lenet``) a
few iterations on Fashion-MNIST, and the real trained LeNet (lenet_ethereon) re-saved by
``Net.save``."""
import pathlib

import numpy as np
import pytest

import pyskim as caffe
from pyskim.apps.convert_mnist_data import convert
from pyskim.io.idx import read_idx
from pyskim.io.protofiles import read_text, write_text
from pyskim.proto import caffe_pb2

cv2 = pytest.importorskip("cv2")
if int(cv2.__version__.split(".")[0]) >= 5:     # 5.x dropped the Caffe importer
    pytest.skip(f"OpenCV {cv2.__version__} has no Caffe importer (need 4.x)", allow_module_level=True)

REPO = pathlib.Path(__file__).resolve().parents[1]
LENET = REPO / "prototxt" / "lenet"
ATOL = 1e-4


def _write_idx(array, path):
    magic = bytes([0, 0, 0x08, array.ndim])
    path.write_bytes(magic + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
                     + np.ascontiguousarray(array, dtype=np.uint8).tobytes())
    return path


@pytest.fixture(scope="module")
def fashion(shared_dir):
    folder = shared_dir / "datasets" / "fashion-mnist"
    return read_idx(folder / "train-images-idx3-ubyte.gz"), read_idx(folder / "train-labels-idx1-ubyte.gz")


def _inputs(fashion, count=16, offset=1000):
    images = fashion[0][offset:offset + count]
    return images[:, None].astype(np.float32) * np.float32(0.00390625)


def _compare_with_opencv(deploy, caffemodel, data):
    ours = caffe.Net(str(deploy), caffe.TEST, weights=str(caffemodel))
    ours.blobs["data"].reshape(*data.shape)
    ours.reshape()
    ours.blobs["data"].data[...] = data
    ours.forward()
    theirs = cv2.dnn.readNetFromCaffe(str(deploy), str(caffemodel))
    theirs.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    theirs.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    theirs.setInput(data)
    outputs = theirs.forward(["ip2", "prob"])
    for name, got in zip(["ip2", "prob"], outputs):
        expected = ours.blobs[name].data
        np.testing.assert_allclose(np.asarray(got).reshape(expected.shape), expected, rtol=0, atol=ATOL,
                                   err_msg=f"blob {name}")
    return ours.blobs["prob"].data


def test_trained_snapshot_loads_in_opencv(fashion, tmp_path, monkeypatch):
    images, labels = fashion
    _write_idx(images[:640], tmp_path / "images")
    _write_idx(labels[:640], tmp_path / "labels")
    for split in ("train", "test"):
        convert(tmp_path / "images", tmp_path / "labels", tmp_path / f"fashion_mnist_{split}_lmdb")
    write_text(tmp_path / "lenet_train_test.prototxt",
               read_text(LENET / "lenet_train_test.prototxt", caffe_pb2.NetParameter()))
    solver_param = read_text(LENET / "lenet_solver.prototxt", caffe_pb2.SolverParameter())
    solver_param.max_iter = 20
    solver_param.test_interval = 1000
    solver_param.test_initialization = False
    solver_param.display = 0
    solver_param.snapshot = 0
    solver_param.snapshot_prefix = "lenet"
    write_text(tmp_path / "lenet_solver.prototxt", solver_param)
    monkeypatch.chdir(tmp_path)       # relative LMDB sources, as with pyskim train
    solver = caffe.get_solver("lenet_solver.prototxt")
    solver.solve()
    snapshot = tmp_path / "lenet_iter_20.caffemodel"
    assert snapshot.exists()
    probs = _compare_with_opencv(LENET / "lenet_deploy.prototxt", snapshot, _inputs(fashion))
    assert probs.argmax(axis=1).tolist() != [0] * len(probs)      # 20 iterations did learn something


def test_resaved_trained_lenet_loads_in_opencv(shared_dir, fashion, tmp_path):
    folder = shared_dir / "models" / "trained" / "lenet_ethereon"
    net = caffe.Net(str(folder / "lenet.prototxt"), caffe.TEST,
                    weights=str(folder / "lenet_iter_10000.caffemodel"))
    resaved = tmp_path / "lenet_resaved.caffemodel"
    net.save(str(resaved))
    _compare_with_opencv(folder / "lenet.prototxt", resaved, _inputs(fashion, count=64))
