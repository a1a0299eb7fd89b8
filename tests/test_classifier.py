"""pycaffe's helpers on a small random-weight net: ``caffe.Classifier`` (BVLC ``classifier.py``),
``caffe.Detector`` (``detector.py``) and ``caffe.Timer``, on BVLC's example images."""
import time

import numpy as np
import pytest

import pyskim as caffe
from pyskim import layers as L
from pyskim.errors import PyskimError

NUM_CLASSES = 5
INPUT_HW = (24, 24)
MEAN = np.array([104.0, 117.0, 123.0])


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A deploy prototxt (batch 10, 3 x 24 x 24 input, softmax output) and random weights for it."""
    tmp = tmp_path_factory.mktemp("classifier")
    n = caffe.NetSpec()
    n.data = L.Input(shape={"dim": [10, 3, *INPUT_HW]})
    n.conv = L.Convolution(n.data, num_output=4, kernel_size=5, stride=2, weight_filler={"type": "xavier"},
                           bias_filler={"type": "constant", "value": 0.1})
    n.relu = L.ReLU(n.conv, in_place=True)
    n.pool = L.Pooling(n.conv, kernel_size=2, stride=2, pool=caffe.params.Pooling.MAX)
    n.ip = L.InnerProduct(n.pool, num_output=NUM_CLASSES, weight_filler={"type": "gaussian", "std": 0.05})
    n.prob = L.Softmax(n.ip)
    deploy = tmp / "deploy.prototxt"
    deploy.write_text("name: 'tiny'\n" + str(n.to_proto()))
    caffe.set_random_seed(7)
    net = caffe.Net(str(deploy), caffe.TEST)
    weights = tmp / "tiny.caffemodel"
    net.save(str(weights))
    return str(deploy), str(weights), {name: [b.data.copy() for b in blobs] for name, blobs in net.params.items()}


@pytest.fixture(scope="module")
def images(shared_dir):
    folder = shared_dir / "models/bvlc/examples/images"
    return [caffe.io.load_image(str(folder / name)) for name in ("cat.jpg", "fish-bike.jpg", "cat_gray.jpg")]


def make_classifier(model, **kwargs):
    deploy, weights, _ = model
    return caffe.Classifier(deploy, weights, mean=MEAN, raw_scale=255, channel_swap=(2, 1, 0), **kwargs)


def forward_crops(clf, crops):
    """Net output for H x W x K crops, preprocessed by the classifier's transformer."""
    batch = np.stack([clf.transformer.preprocess("data", crop) for crop in crops])
    return clf.forward_all(data=batch)["prob"]


def test_loads_weights_and_configures_transformer(model):
    clf = make_classifier(model, image_dims=(32, 40))
    for name, arrays in model[2].items():
        for blob, array in zip(clf.params[name], arrays):
            np.testing.assert_array_equal(blob.data, array)
    assert list(clf.crop_dims) == list(INPUT_HW)
    assert tuple(clf.image_dims) == (32, 40)
    assert clf.transformer.transpose["data"] == (2, 0, 1)
    assert clf.transformer.channel_swap["data"] == (2, 1, 0)
    assert clf.transformer.raw_scale["data"] == 255


@pytest.mark.parametrize("oversample", [True, False])
def test_predict_shape_and_probabilities(model, images, oversample):
    clf = make_classifier(model, image_dims=(32, 40))
    predictions = clf.predict(images, oversample=oversample)
    assert predictions.shape == (len(images), NUM_CLASSES)
    assert np.all(predictions >= 0)
    np.testing.assert_allclose(predictions.sum(axis=1), 1.0, rtol=1e-5)


def test_oversample_and_center_only_are_consistent(model, images):
    """oversample=True is the mean over the ten crops of caffe.io.oversample; oversample=False is the
    centre crop, which is crop 4 of those ten."""
    image_dims = (32, 40)
    clf = make_classifier(model, image_dims=image_dims)
    resized = np.stack([caffe.io.resize_image(im, image_dims) for im in images])
    crops = caffe.io.oversample(resized, INPUT_HW)
    per_crop = forward_crops(clf, crops).reshape(len(images), 10, NUM_CLASSES)
    np.testing.assert_allclose(clf.predict(images), per_crop.mean(axis=1), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(clf.predict(images, oversample=False), per_crop[:, 4], rtol=1e-5, atol=1e-7)
    center = resized[:, 4:28, 8:32]                     # (32 - 24) / 2, (40 - 24) / 2
    np.testing.assert_allclose(forward_crops(clf, center), per_crop[:, 4], rtol=1e-5, atol=1e-7)


def test_default_image_dims_is_input_size(model, images):
    clf = make_classifier(model)
    assert list(clf.image_dims) == list(INPUT_HW)
    resized = [caffe.io.resize_image(im, INPUT_HW) for im in images]
    np.testing.assert_allclose(clf.predict(images, oversample=False), forward_crops(clf, resized), rtol=1e-5,
                               atol=1e-7)
    # With image_dims equal to the crop, the ten crops are the image and its mirror.
    over = clf.predict(images[:1])
    plain = forward_crops(clf, [resized[0], resized[0][:, ::-1]]).mean(axis=0)
    np.testing.assert_allclose(over[0], plain, rtol=1e-5, atol=1e-7)


# -- Detector ---------------------------------------------------------------------------------------------
def test_detect_windows(model, shared_dir):
    deploy, weights, _ = model
    image_file = str(shared_dir / "models/bvlc/examples/images/cat.jpg")
    det = caffe.Detector(deploy, weights, mean=MEAN, raw_scale=255, channel_swap=(2, 1, 0))
    windows = [np.array([0, 0, 100, 120]), np.array([50, 60, 250, 300])]
    detections = det.detect_windows([(image_file, windows)])
    assert [d["filename"] for d in detections] == [image_file] * 2
    assert all(d["window"] is w for d, w in zip(detections, windows))
    image = caffe.io.load_image(image_file)
    crops = [image[w[0]:w[2], w[1]:w[3]] for w in windows]
    expected = forward_crops(det, crops)
    for detection, probs in zip(detections, expected):
        assert detection["prediction"].shape == (NUM_CLASSES,)
        np.testing.assert_allclose(detection["prediction"], probs, rtol=1e-5, atol=1e-7)


def test_context_pad_crop(model, shared_dir):
    deploy, weights, _ = model
    det = caffe.Detector(deploy, weights, mean=MEAN, raw_scale=255, channel_swap=(2, 1, 0), context_pad=4)
    assert list(det.crop_dims) == [*INPUT_HW, 3]
    # The mean back in raw RGB space: undo the BGR swap and the 255 scale.
    np.testing.assert_allclose(det.crop_mean.reshape(3), MEAN[::-1] / 255)
    image = caffe.io.load_image(str(shared_dir / "models/bvlc/examples/images/cat.jpg"))
    crop = det.crop(image, np.array([0, 0, 60, 60]))   # at the corner: context above/left is padding
    assert crop.shape == (*INPUT_HW, 3)
    np.testing.assert_allclose(crop[0, 0], MEAN[::-1] / 255, rtol=1e-6)
    inner = det.crop(image, np.array([100, 100, 160, 160]))
    assert not np.allclose(inner[0, 0], MEAN[::-1] / 255)
    assert len(det.detect_windows([(str(shared_dir / "models/bvlc/examples/images/cat.jpg"),
                                    [np.array([0, 0, 60, 60])])])) == 1


def test_selective_search_unavailable_is_a_clear_error(model):
    det = caffe.Detector(model[0], model[1])
    with pytest.raises(PyskimError, match="selective_search_ijcv_with_python.*detect_windows"):
        det.detect_selective_search(["cat.jpg"])


# -- Timer ------------------------------------------------------------------------------------------------
def test_timer():
    timer = caffe.Timer()
    assert timer.ms == 0                       # never started
    timer.start()
    time.sleep(0.02)
    timer.stop()
    elapsed = timer.ms
    assert 15 <= elapsed < 2000
    time.sleep(0.01)
    assert timer.ms == elapsed                 # stopped: the reading does not move
    assert timer.seconds == pytest.approx(elapsed / 1000)
    timer.start()
    assert timer.ms < elapsed                  # reading a running timer stops it
    assert not timer.running
