"""pycaffe's ``caffe.io`` through ``pyskim.io``: BVLC's python/caffe/test/test_io.py re-expressed,
plus the image helpers (load_image, resize_image, oversample) and Transformer."""
import pathlib

import numpy as np
import pytest
import skimage.io

import pyskim
from pyskim import io as cio
from pyskim.errors import NetError, PyskimError
from pyskim.proto import caffe_pb2


@pytest.fixture(scope="module")
def images_dir(shared_dir):
    path = shared_dir / "models" / "bvlc" / "examples" / "images"
    if not (path / "cat.jpg").exists():
        pytest.skip(f"BVLC example images not found under {path}")
    return path


def _legacy_blob(arr):
    """A BlobProto written the pre-``shape`` way: num/channels/height/width and float data."""
    blob = caffe_pb2.BlobProto()
    blob.num, blob.channels, blob.height, blob.width = arr.shape
    blob.data.extend(arr.astype(float).ravel().tolist())
    return blob


# ------------------------------------------------------------------ BlobProto (BVLC TestBlobProtoToArray)
def test_blobproto_old_format():
    blob = caffe_pb2.BlobProto()
    blob.data.extend(np.zeros(100).tolist())
    blob.num, blob.channels, blob.height, blob.width = (1, 1, 10, 10)
    assert cio.blobproto_to_array(blob).shape == (1, 1, 10, 10)


def test_blobproto_new_format():
    blob = caffe_pb2.BlobProto()
    blob.data.extend(np.zeros(100).tolist())
    blob.shape.dim.extend([10, 10])
    assert cio.blobproto_to_array(blob).shape == (10, 10)


def test_blobproto_no_shape():
    blob = caffe_pb2.BlobProto()
    blob.data.extend(np.zeros(100).tolist())
    with pytest.raises(ValueError):
        cio.blobproto_to_array(blob)


def test_blobproto_scalar():
    blob = caffe_pb2.BlobProto()
    blob.data.extend([123.0])
    assert cio.blobproto_to_array(blob) == 123


def test_blobproto_round_trip_nd_with_diff():
    rng = np.random.default_rng(0)
    for shape in [(2, 3, 4, 5), (7,), (3, 4), (2, 1, 3, 2, 2)]:
        arr = rng.standard_normal(shape).astype(np.float32)
        diff = rng.standard_normal(shape).astype(np.float32)
        blob = caffe_pb2.BlobProto.FromString(cio.array_to_blobproto(arr, diff).SerializeToString())
        assert list(blob.shape.dim) == list(shape)
        np.testing.assert_array_equal(cio.blobproto_to_array(blob), arr)
        np.testing.assert_array_equal(cio.blobproto_to_array(blob, return_diff=True), diff)


def test_blobproto_legacy_4d_round_trip():
    arr = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5) - 7.5
    blob = caffe_pb2.BlobProto.FromString(_legacy_blob(arr).SerializeToString())
    assert not blob.HasField("shape")
    out = cio.blobproto_to_array(blob)
    assert out.shape == (2, 3, 4, 5)
    np.testing.assert_array_equal(out, arr)
    # writing it back uses the modern shape field, and reads back the same
    np.testing.assert_array_equal(cio.blobproto_to_array(cio.array_to_blobproto(out)), arr)


def test_blobprotovector_round_trip():
    arrays = [np.full((1, 2, 3, 3), 0.5, np.float32), np.arange(6, dtype=np.float32).reshape(2, 3)]
    text = cio.arraylist_to_blobprotovector_str(arrays)
    assert isinstance(text, bytes)
    back = cio.blobprotovector_str_to_arraylist(text)
    assert len(back) == 2
    for a, b in zip(arrays, back):
        np.testing.assert_array_equal(a, b)
    # pycaffe's misspelt name still works
    assert cio.arraylist_to_blobprotovecor_str(arrays) == text


# ------------------------------------------------------------------ Datum (BVLC TestArrayToDatum)
def test_datum_label_none_size():
    with_label = cio.array_to_datum(np.ones((10, 10, 3)), label=1)
    without_label = cio.array_to_datum(np.ones((10, 10, 3)))
    assert len(with_label.SerializeToString()) > len(without_label.SerializeToString())


def test_datum_uint8_round_trip():
    arr = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    datum = caffe_pb2.Datum.FromString(cio.array_to_datum(arr, label=7).SerializeToString())
    assert (datum.channels, datum.height, datum.width, datum.label) == (3, 4, 5, 7)
    assert datum.data == arr.tobytes() and len(datum.float_data) == 0
    out = cio.datum_to_array(datum)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, arr)


def test_datum_float_round_trip():
    arr = np.linspace(-1.0, 2.0, 2 * 3 * 4).reshape(2, 3, 4).astype(np.float32)
    datum = caffe_pb2.Datum.FromString(cio.array_to_datum(arr).SerializeToString())
    assert len(datum.data) == 0 and len(datum.float_data) == arr.size
    out = cio.datum_to_array(datum)
    assert out.shape == (2, 3, 4) and np.issubdtype(out.dtype, np.floating)
    np.testing.assert_array_equal(out, arr)


def test_datum_needs_3d():
    with pytest.raises(ValueError):
        cio.array_to_datum(np.ones((10, 10)))


# ------------------------------------------------------------------ load_image
def test_load_image_color(images_dir):
    img = cio.load_image(str(images_dir / "cat.jpg"))
    raw = skimage.io.imread(images_dir / "cat.jpg")
    assert img.shape == raw.shape == (360, 480, 3)
    assert img.dtype == np.float32
    assert 0.0 <= img.min() and img.max() <= 1.0 and img.max() > 0.5
    np.testing.assert_allclose(img, raw / 255.0, atol=1e-6)


def test_load_image_gray_mode(images_dir):
    img = cio.load_image(images_dir / "cat.jpg", color=False)
    assert img.shape == (360, 480, 1) and img.dtype == np.float32
    assert 0.0 <= img.min() and img.max() <= 1.0
    # intensity is skimage's luminance of the RGB image
    rgb = skimage.io.imread(images_dir / "cat.jpg") / 255.0
    lum = rgb @ np.array([0.2125, 0.7154, 0.0721])
    np.testing.assert_allclose(img[:, :, 0], lum, atol=1e-5)


def test_load_image_gray_file(images_dir):
    gray = images_dir / "cat_gray.jpg"
    tiled = cio.load_image(gray)
    single = cio.load_image(gray, color=False)
    assert tiled.shape == (360, 480, 3) and single.shape == (360, 480, 1)
    for c in range(3):
        np.testing.assert_array_equal(tiled[:, :, c], single[:, :, 0])


def test_load_image_drops_alpha(tmp_path):
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 1] = np.arange(5, dtype=np.uint8) * 50
    rgba[..., 3] = 128
    path = tmp_path / "rgba.png"
    skimage.io.imsave(path, rgba, check_contrast=False)
    img = cio.load_image(path)
    assert img.shape == (4, 5, 3) and img.dtype == np.float32
    np.testing.assert_allclose(img, rgba[..., :3] / 255.0, atol=1e-6)


# ------------------------------------------------------------------ resize_image
@pytest.mark.parametrize("channels", [1, 3, 5])
def test_resize_image_shape_and_range(channels):
    rng = np.random.default_rng(channels)
    im = (rng.random((12, 9, channels)) * 7.0 - 2.0).astype(np.float32)
    for dims in [(5, 4), (20, 31)]:
        out = cio.resize_image(im, dims)
        assert out.shape == dims + (channels,) and out.dtype == np.float32
        assert out.min() >= im.min() - 1e-5 and out.max() <= im.max() + 1e-5


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_resize_image_same_size_is_identity(channels):
    # the [0, 1] stretch for skimage and back (1 and 3 channels) and ndimage.zoom (others) keep values
    im = np.linspace(-3.0, 250.0, 6 * 7 * channels, dtype=np.float32).reshape(6, 7, channels)
    np.testing.assert_allclose(cio.resize_image(im, (6, 7)), im, rtol=1e-5, atol=1e-4)


def test_resize_image_constant():
    out = cio.resize_image(np.full((4, 4, 3), 0.25), (7, 2))
    assert out.shape == (7, 2, 3) and out.dtype == np.float32
    assert np.all(out == np.float32(0.25))


def test_resize_image_zoom_keeps_corners():
    # scipy.ndimage.zoom (used for channel counts other than 1 and 3) aligns the corner pixels
    im = np.arange(4 * 4 * 2, dtype=np.float32).reshape(4, 4, 2)
    out = cio.resize_image(im, (7, 7))
    assert out.shape == (7, 7, 2)
    np.testing.assert_allclose(out[0, 0], im[0, 0])
    np.testing.assert_allclose(out[-1, -1], im[-1, -1])


# ------------------------------------------------------------------ oversample
def test_oversample_order_and_values():
    h, w, k = 6, 7, 2
    im = np.arange(h * w * k, dtype=np.float32).reshape(h, w, k)
    crops = cio.oversample([im], (4, 4))
    assert crops.shape == (10, 4, 4, 2) and crops.dtype == np.float32
    # corners: top-left, top-right, bottom-left, bottom-right; then the centre
    expected = [im[0:4, 0:4], im[0:4, 3:7], im[2:6, 0:4], im[2:6, 3:7], im[1:5, 1:5]]
    for i, e in enumerate(expected):
        np.testing.assert_array_equal(crops[i], e)
        np.testing.assert_array_equal(crops[i + 5], e[:, ::-1])
    # spot values: top-right crop starts at column 3; its mirror starts at the image's last column
    assert crops[1][0, 0, 0] == im[0, 3, 0]
    assert crops[6][0, 0, 0] == im[0, w - 1, 0]
    assert crops[6][3, 3, 1] == im[3, 3, 1]


@pytest.mark.parametrize("h, w, ch, cw", [(256, 256, 227, 227), (255, 256, 226, 227), (9, 10, 4, 3)])
def test_oversample_centre_matches_pycaffe_formula(h, w, ch, cw):
    # pycaffe: int(image centre - crop / 2) with the centre at shape / 2.0
    im = np.random.default_rng(0).random((h, w, 3)).astype(np.float32)
    y, x = int(h / 2.0 - ch / 2.0), int(w / 2.0 - cw / 2.0)
    crops = cio.oversample([im], (ch, cw))
    np.testing.assert_array_equal(crops[4], im[y:y + ch, x:x + cw])


def test_oversample_several_images():
    ims = [np.full((5, 5, 3), v, np.float32) for v in (1.0, 2.0, 3.0)]
    crops = cio.oversample(ims, (3, 3))
    assert crops.shape == (30, 3, 3, 3)
    for n, v in enumerate((1.0, 2.0, 3.0)):
        assert np.all(crops[10 * n:10 * (n + 1)] == v)


def test_oversample_crop_too_large():
    with pytest.raises(NetError):
        cio.oversample([np.zeros((4, 4, 3))], (5, 3))


# ------------------------------------------------------------------ Transformer
def test_transformer_errors_are_pyskim_value_errors():
    t = cio.Transformer({"data": (1, 3, 4, 4)})
    for call in (lambda: t.set_raw_scale("nope", 255),
                 lambda: t.preprocess("nope", np.zeros((4, 4, 3))),
                 lambda: t.set_transpose("data", (2, 0)),
                 lambda: t.set_channel_swap("data", (1, 0)),
                 lambda: t.set_mean("data", np.zeros(2)),
                 lambda: t.set_mean("data", np.zeros((1, 3, 4, 4))),
                 lambda: t.set_mean("data", np.zeros((2, 4, 4)))):
        with pytest.raises(PyskimError) as info:
            call()
        assert isinstance(info.value, ValueError) and isinstance(info.value, NetError)
    with pytest.raises(NetError, match="not one of the net inputs"):
        t.deprocess("nope", np.zeros((3, 4, 4)))


def test_preprocess_order_by_definition():
    # A tiny H x W x K image whose expected blob is computed elementwise from the stated order:
    # blob[c, i, j] = (image[i, j, swap[c]] * raw_scale - mean[c]) * input_scale
    image = np.arange(2 * 3 * 3, dtype=np.float64).reshape(2, 3, 3) / 17.0
    swap, raw_scale, mean, input_scale = (2, 0, 1), 255.0, np.array([10.0, 20.0, 30.0]), 0.5
    t = cio.Transformer({"data": (1, 3, 2, 3)})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", swap)
    t.set_raw_scale("data", raw_scale)
    t.set_mean("data", mean)
    t.set_input_scale("data", input_scale)
    before = image.copy()
    out = t.preprocess("data", image)
    expected = np.empty((3, 2, 3))
    for c in range(3):
        for i in range(2):
            for j in range(3):
                expected[c, i, j] = (np.float32(image[i, j, swap[c]]) * raw_scale - mean[c]) * input_scale
    assert out.dtype == np.float32 and out.shape == (3, 2, 3)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-4)
    np.testing.assert_array_equal(image, before)  # the caller's array is untouched


def test_preprocess_without_settings_only_converts():
    image = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    t = cio.Transformer({"data": (1, 3, 2, 2)})
    out = t.preprocess("data", image)
    np.testing.assert_array_equal(out, image)
    out *= 2  # a copy, never the caller's array
    assert image[0, 0, 1] == 1


def test_preprocess_resizes_to_input_dims():
    image = np.random.default_rng(1).random((10, 8, 3)).astype(np.float32)
    t = cio.Transformer({"data": (2, 3, 5, 6)})
    t.set_transpose("data", (2, 0, 1))
    out = t.preprocess("data", image)
    assert out.shape == (3, 5, 6)
    np.testing.assert_allclose(out, cio.resize_image(image, (5, 6)).transpose(2, 0, 1))


def test_preprocess_deprocess_round_trip():
    image = np.random.default_rng(2).random((4, 5, 3)).astype(np.float32)
    t = cio.Transformer({"data": (1, 3, 4, 5)})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255.0)
    t.set_mean("data", np.linspace(90.0, 130.0, 3 * 4 * 5).reshape(3, 4, 5))
    t.set_input_scale("data", 0.017)
    blob = t.preprocess("data", image)[np.newaxis]  # as in net.blobs['data'].data
    back = t.deprocess("data", blob)
    assert back.shape == image.shape
    np.testing.assert_allclose(back, image, atol=1e-5)


def test_set_mean_shapes():
    t = cio.Transformer({"data": (1, 3, 4, 4), "gray": (1, 1, 4, 4)})
    t.set_mean("data", np.array([1.0, 2.0, 3.0]))
    assert t.mean["data"].shape == (3, 1, 1)
    t.set_transpose("gray", (2, 0, 1))
    t.set_mean("gray", np.full((4, 4), 5.0))  # 2-D elementwise mean for a one-channel input
    np.testing.assert_array_equal(t.preprocess("gray", np.full((4, 4, 1), 7.0)), np.full((1, 4, 4), 2.0))
    # a full mean of other spatial size is resized to the input's H x W, per channel
    mean = np.stack([np.full((8, 6), v) for v in (10.0, 20.0, 30.0)])
    t.set_mean("data", mean)
    assert t.mean["data"].shape == (3, 4, 4)
    np.testing.assert_allclose(t.mean["data"], np.broadcast_to([[[10.0]], [[20.0]], [[30.0]]], (3, 4, 4)),
                               atol=1e-4)


def test_imagenet_mean_ships_with_package():
    path = pathlib.Path(pyskim.__file__).parent / "imagenet" / "ilsvrc_2012_mean.npy"
    mean = np.load(path, allow_pickle=False)
    assert mean.shape == (3, 256, 256)
    np.testing.assert_allclose(mean.mean(1).mean(1), [104.00698793, 116.66876762, 122.67891434], atol=1e-6)
    # 00-classification: per-channel BGR mean, [0, 255] pixels, RGB -> BGR, H x W x K -> K x H x W
    t = cio.Transformer({"data": (1, 3, 227, 227)})
    t.set_mean("data", mean)  # full mean, resized 256 -> 227
    assert t.mean["data"].shape == (3, 227, 227)
    np.testing.assert_allclose(t.mean["data"].mean(1).mean(1), mean.mean(1).mean(1), atol=0.5)
