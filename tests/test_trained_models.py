"""Real trained caffemodels from ../shared/models/trained give the numbers the real Caffe computes.

Reference numbers are read from that folder's README (never copied here)."""
import re

import numpy as np
import pytest

import pyskim as caffe
from pyskim.io.idx import read_idx


@pytest.fixture(scope="module")
def trained(shared_dir):
    return shared_dir / "models" / "trained"


@pytest.fixture(scope="module")
def readme(trained):
    return (trained / "README.md").read_text()


def _readme_accuracy(readme, folder):
    row = next(line for line in readme.splitlines() if line.startswith(f"| `{folder}"))
    return float(re.findall(r"\*\*(0\.\d+)\*\*", row)[-1])


@pytest.fixture(scope="module")
def mnist_test(shared_dir):
    images = read_idx(shared_dir / "datasets" / "mnist" / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(shared_dir / "datasets" / "mnist" / "t10k-labels-idx1-ubyte.gz")
    return images.astype(np.float32)[:, None] * np.float32(0.00390625), labels


@pytest.mark.parametrize("folder, prototxt", [
    ("lenet_ethereon/", "lenet_ethereon/lenet.prototxt"),           # current (V2) format
    ("everpeace_caffe/mnist/", "everpeace_caffe/mnist/lenet.prototxt"),  # V1 net and weights
])
def test_lenet_mnist_accuracy(trained, readme, mnist_test, folder, prototxt):
    images, labels = mnist_test
    net = caffe.Net(str(trained / prototxt), caffe.TEST,
                    weights=str(trained / folder / "lenet_iter_10000.caffemodel"))
    probs = net.forward_all(data=images)["prob"].reshape(len(images), -1)
    accuracy = float(np.mean(probs.argmax(axis=1) == labels))
    assert accuracy == pytest.approx(_readme_accuracy(readme, folder), abs=1e-12)


def test_open_nsfw_probabilities(trained, readme):
    skimage_data = pytest.importorskip("skimage.data")
    row = next(line for line in readme.splitlines() if line.startswith("| `open_nsfw/"))
    expected = {name: [float(a), float(b)] for name, a, b in
                re.findall(r"(\w+) \[([\d.]+), ([\d.]+)\]", row)}
    assert set(expected) == {"astronaut", "coffee", "chelsea"}
    net = caffe.Net(str(trained / "open_nsfw" / "deploy.prototxt"), caffe.TEST,
                    weights=str(trained / "open_nsfw" / "resnet_50_1by2_nsfw.caffemodel"))
    for name, probs in expected.items():
        image = getattr(skimage_data, name)()
        top, left = (image.shape[0] - 224) // 2, (image.shape[1] - 224) // 2
        crop = image[top:top + 224, left:left + 224, ::-1].astype(np.float32)
        crop -= np.array([104, 117, 123], np.float32)
        out = net.forward(data=crop.transpose(2, 0, 1)[None])["prob"]
        np.testing.assert_allclose(out.ravel(), probs, atol=5e-5, err_msg=name)   # 4 decimals


@pytest.mark.parametrize("name, size, shapes", [
    ("det1", 12, {"prob1": (1, 2, 1, 1), "conv4-2": (1, 4, 1, 1)}),
    ("det2", 24, {"prob1": (1, 2), "conv5-2": (1, 4)}),
    ("det3", 48, {"prob1": (1, 2), "conv6-2": (1, 4), "conv6-3": (1, 10)}),
])
def test_mtcnn_output_shapes(trained, name, size, shapes):
    folder = trained / "mtcnn_kpzhang93"
    net = caffe.Net(str(folder / f"{name}.prototxt"), caffe.TEST, weights=str(folder / f"{name}.caffemodel"))
    assert net.blobs["data"].shape == (1, 3, size, size)
    net.blobs["data"].data[...] = np.random.default_rng(0).uniform(-1, 1, size=(1, 3, size, size))
    out = net.forward()
    for blob, shape in shapes.items():
        assert out[blob].shape == shape
    assert np.allclose(out["prob1"].reshape(-1).sum(), 1.0, atol=1e-5)


@pytest.mark.parametrize("name", ["RFB-320", "slim-320"])
def test_ultraface_ssd_layers_are_rejected_clearly(trained, name):
    with pytest.raises(caffe.PyskimError, match=r"(?i)permute") as info:
        caffe.Net(str(trained / "ultraface_linzaer" / f"{name}.prototxt"), caffe.TEST)
    assert f"{name}.prototxt" in str(info.value)
