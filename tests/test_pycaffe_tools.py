"""tools/classify.py, tools/detect.py, tools/draw_net.py and tools/extract_features.py: pycaffe's and
Caffe's command-line tools, with their flags, on small nets with random weights."""
import os
import shutil
import subprocess
import sys

import lmdb
import numpy as np
import pytest

import pyskim as caffe
from pyskim.apps import classify, extract_features
from pyskim.apps.cli import run_tool
from pyskim.proto import caffe_pb2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
IMAGES = os.path.join(SHARED, "models", "bvlc", "examples", "images")    # read by tests given ``shared_dir``

CLASSIFY_NET = """name: 'tiny'
layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 10 dim: 3 dim: 32 dim: 32 } } }
layer { name: 'conv' type: 'Convolution' bottom: 'data' top: 'conv'
  convolution_param { num_output: 4 kernel_size: 5 stride: 2
    weight_filler { type: 'gaussian' std: 0.01 } bias_filler { type: 'constant' value: 0.1 } } }
layer { name: 'relu' type: 'ReLU' bottom: 'conv' top: 'conv' }
layer { name: 'pool' type: 'Pooling' bottom: 'conv' top: 'pool' pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: 'fc' type: 'InnerProduct' bottom: 'pool' top: 'fc'
  inner_product_param { num_output: 5 weight_filler { type: 'gaussian' std: 0.1 } } }
layer { name: 'prob' type: 'Softmax' bottom: 'fc' top: 'prob' }
"""

FEATURE_NET = """name: 'features'
layer { name: 'data' type: 'Data' top: 'data' top: 'label'
  transform_param { scale: 0.00390625 }
  data_param { source: '%s' batch_size: 4 backend: LMDB } }
layer { name: 'ip' type: 'InnerProduct' bottom: 'data' top: 'ip'
  inner_product_param { num_output: 3 weight_filler { type: 'gaussian' std: 0.1 }
    bias_filler { type: 'constant' value: 0.5 } } }
layer { name: 'conv' type: 'Convolution' bottom: 'data' top: 'conv'
  convolution_param { num_output: 2 kernel_size: 3 weight_filler { type: 'gaussian' std: 0.1 } } }
"""


def _tool(name):
    return os.path.join(ROOT, "tools", name)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    model_def = folder / "deploy.prototxt"
    model_def.write_text(CLASSIFY_NET)
    caffe.set_random_seed(7)
    weights = folder / "tiny.caffemodel"
    caffe.Net(str(model_def), caffe.TEST).save(str(weights))
    return str(model_def), str(weights)


def _image_files():
    return sorted(os.path.join(IMAGES, name) for name in os.listdir(IMAGES) if name.endswith(".jpg"))


def test_classify_folder_matches_classifier(tiny_model, tmp_path, capsys, shared_dir):
    model_def, weights = tiny_model
    out = tmp_path / "out.npy"
    assert run_tool("classify", [IMAGES, str(out), "--model_def", model_def, "--pretrained_model", weights,
                          "--images_dim", "40,40"]) == 0
    printed = capsys.readouterr().out
    assert "CPU mode" in printed and "Classifying 3 inputs." in printed
    predictions = np.load(out)
    assert predictions.shape == (3, 5)
    np.testing.assert_allclose(predictions.sum(1), 1, rtol=1e-5)
    # The same as caffe.Classifier with classify.py's defaults (bundled ImageNet mean, raw scale 255,
    # BGR channel swap, ten-crop oversampling).
    mean = np.load(classify.DEFAULT_MEAN)
    classifier = caffe.Classifier(model_def, weights, image_dims=[40, 40], mean=mean, raw_scale=255.0,
                                  channel_swap=[2, 1, 0])
    expected = classifier.predict([caffe.io.load_image(f) for f in _image_files()], True)
    np.testing.assert_allclose(predictions, expected, rtol=1e-5, atol=1e-7)


def test_classify_center_only_no_mean_and_npy_input(tiny_model, tmp_path, shared_dir):
    model_def, weights = tiny_model
    images = np.stack([caffe.io.resize_image(caffe.io.load_image(f), (48, 48)) for f in _image_files()])
    inputs = tmp_path / "images.npy"
    np.save(inputs, images)
    out = tmp_path / "out.npy"
    assert run_tool("classify", [str(inputs), str(out), "--model_def", model_def, "--pretrained_model", weights,
                          "--center_only", "--mean_file", "", "--images_dim", "32,32", "--raw_scale", "1",
                          "--input_scale", "2", "--channel_swap", "0,1,2"]) == 0
    classifier = caffe.Classifier(model_def, weights, image_dims=[32, 32], raw_scale=1.0, input_scale=2.0,
                                  channel_swap=[0, 1, 2])
    np.testing.assert_allclose(np.load(out), classifier.predict(list(images), False), rtol=1e-5, atol=1e-7)


def test_classify_script_single_image_and_refused_pickle(tiny_model, tmp_path, shared_dir):
    model_def, weights = tiny_model
    out = tmp_path / "cat.npy"
    result = subprocess.run([sys.executable, _tool("classify.py"), os.path.join(IMAGES, "cat.jpg"), str(out),
                             "--model_def", model_def, "--pretrained_model", weights, "--gpu"],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "GPU mode" in result.stdout
    assert np.load(out).shape == (1, 5)
    # A pickled .npy (it could run code when loaded) is refused, as input and as mean file.
    pickled = tmp_path / "evil.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert run_tool("classify", [str(pickled), str(out), "--model_def", model_def,
                                 "--pretrained_model", weights]) == 1
    assert run_tool("classify", [os.path.join(IMAGES, "cat.jpg"), str(out), "--model_def", model_def,
                          "--pretrained_model", weights, "--mean_file", str(pickled)]) == 1
    assert run_tool("classify", [os.path.join(IMAGES, "cat.jpg"), str(out), "--model_def",
                          str(tmp_path / "missing.prototxt"), "--pretrained_model", weights]) == 1
    assert run_tool("classify", [os.path.join(IMAGES, "cat.jpg"), str(out), "--model_def", model_def,
                          "--pretrained_model", weights, "--images_dim", "a,b"]) == 1


def test_detect_csv_windows(tiny_model, tmp_path, shared_dir):
    model_def, weights = tiny_model
    windows = tmp_path / "windows.csv"
    cat, fish = os.path.join(IMAGES, "cat.jpg"), os.path.join(IMAGES, "fish-bike.jpg")
    windows.write_text(f"filename,xmin,ymin,xmax,ymax\n{cat},0,0,100,80\n{fish},10,20,60,90\n{cat},50,40,200,150\n")
    out = tmp_path / "dets.csv"
    assert run_tool("detect", [str(windows), str(out), "--crop_mode", "list", "--model_def", model_def,
                        "--pretrained_model", weights, "--context_pad", "4"]) == 0
    rows = out.read_text().splitlines()
    assert rows[0] == "filename,ymin,xmin,ymax,xmax,class0,class1,class2,class3,class4"
    assert len(rows) == 4
    assert rows[1].startswith(f"{cat},0.0,0.0,80.0,100.0,") and rows[2].startswith(f"{cat},40.0,50.0,150.0,200.0,")
    detector = caffe.Detector(model_def, weights, mean=np.load(classify.DEFAULT_MEAN).mean(1).mean(1),
                              raw_scale=255.0, channel_swap=[2, 1, 0], context_pad=4)
    expected = detector.detect_windows([(cat, [(0, 0, 80, 100), (40, 50, 150, 200)]), (fish, [(20, 10, 90, 60)])])
    got = np.array([[float(v) for v in row.split(",")[5:]] for row in rows[1:]])
    np.testing.assert_allclose(got, np.array([d["prediction"] for d in expected]), rtol=1e-5, atol=1e-7)
    h5 = tmp_path / "dets.h5"
    assert run_tool("detect", [str(windows), str(h5), "--crop_mode", "list", "--model_def", model_def,
                        "--pretrained_model", weights, "--context_pad", "0"]) == 0
    import h5py
    with h5py.File(h5, "r") as f:
        assert f["window"].shape == (3, 4) and f["prediction"].shape == (3, 5)
        assert [name.decode() for name in f["filename"][:]] == [cat, cat, fish]


def test_detect_selective_search_needs_its_package(tiny_model, tmp_path, caplog):
    model_def, weights = tiny_model
    listing = tmp_path / "images.txt"
    listing.write_text(os.path.join(IMAGES, "cat.jpg") + "\n")
    assert run_tool("detect", [str(listing), str(tmp_path / "o.csv"), "--model_def", model_def,
                        "--pretrained_model", weights]) == 1
    assert "selective_search_ijcv_with_python" in caplog.text
    assert run_tool("detect", [str(tmp_path / "in.json"), str(tmp_path / "o.csv"), "--model_def", model_def,
                        "--pretrained_model", weights]) == 1


def test_draw_net(tmp_path, capsys, shared_dir):
    pytest.importorskip("pydot")
    src = str(shared_dir / "models" / "bvlc" / "examples" / "mnist" / "lenet_train_test.prototxt")
    raw = tmp_path / "lenet.raw"
    assert run_tool("draw_net", [src, str(raw), "--rankdir", "TB", "--phase", "TEST", "--display_lrm"]) == 0
    assert f"Drawing net to {raw}" in capsys.readouterr().out
    dot = raw.read_text()
    assert "rankdir=TB" in dot and "accuracy" in dot
    assert run_tool("draw_net", [src, str(tmp_path / "train.raw"), "--phase", "TRAIN"]) == 0
    assert "accuracy" not in (tmp_path / "train.raw").read_text()
    with pytest.raises(SystemExit):
        run_tool("draw_net", [src, str(raw), "--phase", "VAL"])
    assert run_tool("draw_net", [str(tmp_path / "missing.prototxt"), str(raw)]) == 1
    if shutil.which("dot"):
        png = tmp_path / "lenet.png"
        result = subprocess.run([sys.executable, _tool("draw_net.py"), src, str(png)], capture_output=True,
                                text=True, timeout=120, check=False)
        assert result.returncode == 0, result.stderr
        assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.fixture
def feature_case(tmp_path):
    """An LMDB of 10 random 1 x 6 x 6 uint8 Datums, the feature net and random weights for it."""
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(10, 1, 6, 6), dtype=np.uint8)
    env = lmdb.open(str(tmp_path / "images_lmdb"), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i, image in enumerate(images):
            datum = caffe.io.array_to_datum(image, label=i)
            txn.put(f"{i:08d}".encode(), datum.SerializeToString())
    env.close()
    proto = tmp_path / "features.prototxt"
    proto.write_text(FEATURE_NET % (tmp_path / "images_lmdb").as_posix())
    caffe.set_random_seed(5)
    net = caffe.Net(str(proto), caffe.TEST)
    weights = tmp_path / "features.caffemodel"
    net.save(str(weights))
    ip_w, ip_b = net.params["ip"][0].data.copy(), net.params["ip"][1].data.copy()
    return tmp_path, images, str(proto), str(weights), (ip_w, ip_b)


def _records(path):
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        records = [(bytes(k).decode(), caffe_pb2.Datum.FromString(bytes(v))) for k, v in txn.cursor()]
    env.close()
    return records


def test_extract_features(feature_case):
    folder, images, proto, weights, (ip_w, ip_b) = feature_case
    ip_db, conv_db = folder / "ip_features", folder / "conv_features"
    result = subprocess.run([sys.executable, _tool("extract_features.py"), weights, proto, "ip,conv",
                             f"{ip_db},{conv_db}", "3", "lmdb", "CPU"], capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert "Extracted features of 12 query images for feature blob ip" in result.stderr
    assert "Successfully extracted the features!" in result.stderr
    ip_records, conv_records = _records(ip_db), _records(conv_db)
    # 3 batches of 4: the Data layer wraps around after the 10 images
    assert [k for k, _ in ip_records] == [f"{i:010d}" for i in range(12)]
    order = [i % 10 for i in range(12)]
    x = images[order].reshape(12, -1).astype(np.float32) * np.float32(0.00390625)
    expected_ip = x @ ip_w.T + ip_b
    for (_, datum), expected in zip(ip_records, expected_ip):
        assert (datum.channels, datum.height, datum.width) == (3, 1, 1)
        assert len(datum.data) == 0 and not datum.HasField("label")
        np.testing.assert_allclose(datum.float_data, expected, rtol=1e-5, atol=1e-6)
    assert len(conv_records) == 12
    assert (conv_records[0][1].channels, conv_records[0][1].height, conv_records[0][1].width) == (2, 4, 4)
    assert len(conv_records[0][1].float_data) == 32
    np.testing.assert_array_equal(conv_records[0][1].float_data, conv_records[10][1].float_data)


def test_extract_features_errors(feature_case, caplog):
    folder, _, proto, weights, _ = feature_case
    assert run_tool("extract_features", [weights, proto, "ip"]) == 1
    assert "Usage: extract_features" in caplog.text
    assert run_tool("extract_features", [weights, proto, "ip,conv", str(folder / "one"), "1", "lmdb"]) == 1
    assert run_tool("extract_features", [weights, proto, "nope", str(folder / "two"), "1", "lmdb"]) == 1
    assert "Unknown feature blob name nope" in caplog.text
    assert run_tool("extract_features", [weights, proto, "ip", str(folder / "three"), "1", "leveldb"]) == 1
    assert run_tool("extract_features", [weights, proto, "ip", str(folder / "four"), "x", "lmdb"]) == 1
    five = str(folder / "five")
    assert run_tool("extract_features", [weights, proto, "ip", five, "1", "lmdb", "GPU", "0"]) == 0
    assert run_tool("extract_features", [weights, proto, "ip", five, "1", "lmdb"]) == 1  # exists
    assert extract_features.legacy_shape((7, 3)) == (7, 3, 1, 1)
