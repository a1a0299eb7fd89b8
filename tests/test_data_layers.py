"""Data layers: Data (LMDB + DataTransformer + prefetch thread), ImageData, HDF5Data, MemoryData."""
import gc
import logging
import threading
import time

import numpy as np
import pytest
from google.protobuf import text_format

import pyskim as caffe
from pyskim.data import imgproc
from pyskim.data.db import LMDBWriter, iterate
from pyskim.errors import DataError, NetError
from pyskim.io.blobproto import array_to_blobproto
from pyskim.io.protofiles import write_binary
from pyskim.proto import caffe_pb2

SHAPE = (2, 4, 5)


def make_net(text, phase=caffe.TRAIN):
    return caffe.Net(text_format.Parse(text, caffe_pb2.NetParameter()), phase)


def data_net(source, batch=3, transform="", tops=("data", "label"), phase=caffe.TRAIN, extra=""):
    top_lines = " ".join(f'top: "{t}"' for t in tops)
    return make_net(f'layer {{ name: "d" type: "Data" {top_lines} transform_param {{ {transform} }} '
                    f'data_param {{ source: "{source}" batch_size: {batch} backend: LMDB {extra} }} }}', phase)


def forward(net):
    net._forward(0, len(net.layers) - 1)
    return {name: blob.data.copy() for name, blob in net.blobs.items()}


@pytest.fixture
def db(tmp_path):
    """Five uint8 records of shape 2 x 4 x 5 with labels 10..14."""
    images = np.random.default_rng(0).integers(0, 256, (5,) + SHAPE, dtype=np.uint8)
    writer = LMDBWriter(tmp_path / "db")
    for i, image in enumerate(images):
        datum = caffe_pb2.Datum(channels=2, height=4, width=5, data=image.tobytes(), label=10 + i)
        writer.put(f"{i:08d}", datum.SerializeToString())
    writer.close()
    return str(tmp_path / "db"), images.astype(np.float32)


def test_sgd_fixed_first_forward_loss(shared_dir, monkeypatch):
    case = shared_dir / "conformance" / "solvers" / "sgd_fixed"
    if not case.is_dir():
        pytest.skip("solver case not available")
    monkeypatch.chdir(case)                                  # data_lmdb is relative; only read here
    net = caffe.Net("net.prototxt", caffe.TRAIN, weights="init.caffemodel")
    loss = net._forward(0, len(net.layers) - 1)
    expected = float(np.load("trace.npz")["forward_loss"][0, 0])
    assert loss == pytest.approx(expected, rel=1e-4)
    records = list(iterate("data_lmdb"))[:16]
    scale = np.float32(0.00390625)
    expected_data = np.stack([np.frombuffer(d.data, np.uint8).reshape(1, 28, 28) for _, d in records]) * scale
    assert np.array_equal(net.blobs["data"].data, expected_data)
    assert np.array_equal(net.blobs["label"].data, [d.label for _, d in records])


def test_records_in_order_cycling_and_restart_log(db, caplog):
    source, images = db
    with caplog.at_level(logging.INFO, logger="pyskim"):
        net = data_net(source)                  # the prefetch thread starts reading at setup
        batches = [forward(net) for _ in range(4)]
    order = [i % 5 for i in range(12)]
    assert np.array_equal(np.concatenate([b["data"] for b in batches]), images[order])
    assert np.array_equal(np.concatenate([b["label"] for b in batches]), np.array(order) + 10)
    assert "Restarting data prefetching from start." in caplog.text


def test_scale_mean_value_and_single_top(db):
    source, images = db
    net = data_net(source, batch=2, transform="scale: 0.5 mean_value: 3", tops=("data",))
    assert list(net.blobs) == ["data"]
    out = forward(net)["data"]
    assert np.array_equal(out, (images[:2] - np.float32(3)) * np.float32(0.5))
    net = data_net(source, batch=2, transform="scale: 0.25 mean_value: 3 mean_value: 7")
    out = forward(net)["data"]
    mean = np.array([3, 7], np.float32)[:, None, None]
    assert np.array_equal(out, (images[:2] - mean) * np.float32(0.25))


def test_mean_file_and_centre_crop_in_test(db, tmp_path):
    source, images = db
    mean = np.random.default_rng(1).uniform(0, 255, (1,) + SHAPE).astype(np.float32)
    write_binary(tmp_path / "mean.binaryproto", array_to_blobproto(mean))
    net = data_net(source, batch=5, phase=caffe.TEST,
                   transform=f'crop_size: 3 mean_file: "{tmp_path / "mean.binaryproto"}" scale: 2')
    out = forward(net)["data"]
    assert out.shape == (5, 2, 3, 3)
    # TEST: centred window at ((4-3)//2, (5-3)//2) = (0, 1); the mean is taken at the same pixels.
    assert np.array_equal(out, (images[:, :, 0:3, 1:4] - mean[:, :, 0:3, 1:4]) * np.float32(2))


def test_random_crop_and_mirror_in_train(db):
    source, images = db
    caffe.set_random_seed(5)
    net = data_net(source, batch=5, transform="crop_size: 3 mirror: true")
    seen_offsets, seen_mirror = set(), set()
    for _ in range(4):
        out = forward(net)["data"]
        for item, image in zip(out, images):
            windows = {(h, w, m): image[:, h:h + 3, w:w + 3][:, :, ::-1] if m else image[:, h:h + 3, w:w + 3]
                       for h in range(2) for w in range(3) for m in (False, True)}
            hits = [k for k, v in windows.items() if np.array_equal(v, item)]
            assert hits, "output is not a (mirrored) 3x3 window of its record"
            seen_offsets.add(hits[0][:2])
            seen_mirror.add(hits[0][2])
    assert len(seen_offsets) > 1 and seen_mirror == {False, True}


def test_same_seed_same_random_batches(db):
    source, _ = db
    runs = []
    for _ in range(2):
        caffe.set_random_seed(42)
        net = data_net(source, batch=5, transform="crop_size: 2 mirror: true")
        runs.append([forward(net)["data"] for _ in range(3)])
    assert all(np.array_equal(a, b) for a, b in zip(*runs))


def test_train_and_test_nets_read_independently(db):
    source, images = db
    train, test = data_net(source, batch=2), data_net(source, batch=2, phase=caffe.TEST)
    forward(train)
    forward(train)
    assert np.array_equal(forward(test)["data"], images[:2])
    assert np.array_equal(forward(train)["data"], images[[4, 0]])


def test_float_and_encoded_datums(tmp_path):
    floats = np.random.default_rng(2).normal(size=(2,) + SHAPE).astype(np.float32)
    color = np.random.default_rng(3).integers(0, 256, (4, 5, 3), dtype=np.uint8)     # BGR
    writer = LMDBWriter(tmp_path / "f")
    for i, x in enumerate(floats):
        datum = caffe_pb2.Datum(channels=2, height=4, width=5, label=i)
        datum.float_data.extend(x.ravel().tolist())
        writer.put(f"{i}", datum.SerializeToString())
    writer.close()
    assert np.array_equal(forward(data_net(tmp_path / "f", batch=2))["data"], floats)
    writer = LMDBWriter(tmp_path / "e")
    writer.put("0", caffe_pb2.Datum(data=imgproc.encode(color, "png", "t"), encoded=True, label=7)
               .SerializeToString())
    writer.close()
    out = forward(data_net(tmp_path / "e", batch=1))
    assert np.array_equal(out["data"][0], color.transpose(2, 0, 1)) and out["label"][0] == 7
    gray = forward(data_net(tmp_path / "e", batch=1, transform="force_gray: true"))["data"]
    assert gray.shape == (1, 1, 4, 5)


def test_prefetch_thread_stops_when_net_is_dropped(db):
    source, _ = db
    before = threading.active_count()
    nets = [data_net(source, extra="prefetch: 2") for _ in range(5)]
    forward(nets[0])
    threads = [n.layers[0].prefetcher.thread for n in nets]
    assert all(t.is_alive() and t.daemon for t in threads)
    del nets
    gc.collect()
    deadline = time.time() + 5
    while any(t.is_alive() for t in threads) and time.time() < deadline:
        time.sleep(0.01)
    assert not any(t.is_alive() for t in threads)
    assert threading.active_count() <= before
    net = data_net(source)
    net.layers[0].close()                    # explicit shutdown
    assert not net.layers[0].prefetcher.thread.is_alive()


def test_data_errors(db, tmp_path):
    source, _ = db
    with pytest.raises(DataError, match="nothere"):
        data_net(tmp_path / "nothere")
    with pytest.raises(DataError, match=r"LevelDB is not supported.*'d'|'d'.*LevelDB is not supported"):
        make_net(f'layer {{ name: "d" type: "Data" top: "x" data_param {{ source: "{source}" batch_size: 1 '
                 f'backend: LEVELDB }} }}')
    writer = LMDBWriter(tmp_path / "mixed")
    writer.put("a", caffe_pb2.Datum(channels=1, height=2, width=2, data=bytes(4)).SerializeToString())
    writer.put("b", caffe_pb2.Datum(channels=1, height=3, width=2, data=bytes(6)).SerializeToString())
    writer.put("c", b"\xff\xff not a datum")
    writer.close()
    net = data_net(tmp_path / "mixed", batch=2)
    with pytest.raises(DataError, match=r"mixed.*'b'"):
        forward(net)
    net = data_net(tmp_path / "mixed", batch=1)
    forward(net)
    forward(net)                            # batch of one: each batch takes its own record's shape
    with pytest.raises(DataError, match=r"mixed.*'c'"):
        forward(net)
    with pytest.raises(DataError, match="smaller than crop_size"):
        data_net(tmp_path / "mixed", transform="crop_size: 3")
    with pytest.raises(NetError, match="mean_file and mean_value"):
        data_net(source, transform='mean_value: 1 mean_file: "x"')


# -- ImageData -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def imageset(shared_dir):
    path = shared_dir / "conformance" / "io" / "convert_imageset"
    if not path.is_dir():
        pytest.skip("conformance/io/convert_imageset is not available")
    return path


def image_net(imageset, extra="", batch=4, transform=""):
    return make_net(f'layer {{ name: "img" type: "ImageData" top: "data" top: "label" transform_param '
                    f'{{ {transform} }} image_data_param {{ source: "{imageset / "list.txt"}" '
                    f'root_folder: "{imageset}/images/" batch_size: {batch} {extra} }} }}')


@pytest.mark.parametrize("extra, lmdb", [("", "lmdb_plain"), ("new_height: 8 new_width: 10", "lmdb_resize"),
                                         ("is_color: false", "lmdb_gray")])
def test_image_data_matches_convert_imageset(imageset, extra, lmdb):
    records = [d for _, d in iterate(imageset / lmdb)]
    expected = np.stack([np.frombuffer(d.data, np.uint8).reshape(d.channels, d.height, d.width)
                         for d in records]).astype(np.float32)
    net = image_net(imageset, extra, batch=8)
    out = [forward(net) for _ in range(3)]                   # 24 items: wraps around the 20 images
    order = [i % 20 for i in range(24)]
    assert np.array_equal(np.concatenate([o["data"] for o in out]), expected[order])
    assert np.array_equal(np.concatenate([o["label"] for o in out]), [records[i].label for i in order])


def test_image_data_shuffle_reshuffles_each_epoch(imageset):
    caffe.set_random_seed(3)
    net = image_net(imageset, "shuffle: true", batch=10, transform="mean_value: 100 scale: 0.5")
    plain = [d for _, d in iterate(imageset / "lmdb_plain")]
    by_bytes = {(np.frombuffer(d.data, np.uint8).astype(np.float32) - 100).tobytes(): i for i, d in enumerate(plain)}
    epochs = []
    for _ in range(2):
        items = np.concatenate([forward(net)["data"] for _ in range(2)])
        epochs.append([by_bytes[(x / np.float32(0.5)).ravel().tobytes()] for x in items])
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(20))
    assert epochs[0] != list(range(20)) and epochs[0] != epochs[1]


def test_image_data_errors(imageset, tmp_path):
    bad = tmp_path / "list.txt"
    bad.write_text("img_00.png 0\nimg_01.jpg one\n")
    with pytest.raises(DataError, match=f"{bad}:2"):
        make_net(f'layer {{ name: "img" type: "ImageData" top: "data" top: "label" image_data_param '
                 f'{{ source: "{bad}" batch_size: 1 }} }}')
    with pytest.raises(NetError, match="new_height and new_width"):
        image_net(imageset, "new_height: 8")
    missing = tmp_path / "missing.txt"
    missing.write_text("nothere.png 1\n")
    with pytest.raises(DataError, match="nothere.png"):
        make_net(f'layer {{ name: "img" type: "ImageData" top: "data" top: "label" image_data_param '
                 f'{{ source: "{missing}" batch_size: 1 }} }}')


# -- HDF5Data --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def h5dir(shared_dir):
    path = shared_dir / "models" / "bvlc" / "src" / "caffe" / "test" / "test_data"
    if not (path / "sample_data.h5").is_file():
        pytest.skip("Caffe's HDF5 test data is not available")
    return path


def hdf5_net(tmp_path, files, batch, extra=""):
    (tmp_path / "h5list.txt").write_text("\n".join(str(f) for f in files) + "\n")
    return make_net(f'layer {{ name: "h" type: "HDF5Data" top: "data" top: "label" hdf5_data_param '
                    f'{{ source: "{tmp_path / "h5list.txt"}" batch_size: {batch} {extra} }} }}')


def test_hdf5_data_batches_across_files(h5dir, tmp_path):
    import h5py
    files = [h5dir / "sample_data.h5", h5dir / "sample_data_2_gzip.h5"]
    rows = [{k: np.asarray(h5py.File(f, "r")[k], np.float32) for k in ("data", "label")} for f in files]
    all_data = np.concatenate([r["data"] for r in rows])
    all_label = np.concatenate([r["label"] for r in rows])
    net = hdf5_net(tmp_path, files, batch=7)
    out = [forward(net) for _ in range(4)]                 # 28 rows over 2 files of 10: wraps around
    order = [i % 20 for i in range(28)]
    assert out[0]["data"].shape == (7, 8, 6, 5) and out[0]["label"].shape == (7, 1)
    assert np.array_equal(np.concatenate([o["data"] for o in out]), all_data[order])
    assert np.array_equal(np.concatenate([o["label"] for o in out]), all_label[order])


def test_hdf5_data_shuffle_and_errors(h5dir, tmp_path):
    caffe.set_random_seed(1)
    net = hdf5_net(tmp_path, [h5dir / "sample_data.h5"], batch=10, extra="shuffle: true")
    labels = [forward(net)["label"].ravel().tolist() for _ in range(2)]
    assert sorted(labels[0]) == sorted(labels[1]) == list(range(1, 11))
    assert labels[0] != list(range(1, 11))
    with pytest.raises(DataError, match="no dataset 'label'"):
        make_net(f'layer {{ name: "h" type: "HDF5Data" top: "data" top: "label" hdf5_data_param '
                 f'{{ source: "{_list(tmp_path, h5dir / "solver_data.h5")}" batch_size: 2 }} }}')
    with pytest.raises(NetError, match="does not transform"):
        make_net(f'layer {{ name: "h" type: "HDF5Data" top: "data" transform_param {{ scale: 2 }} '
                 f'hdf5_data_param {{ source: "{_list(tmp_path, h5dir / "solver_data.h5")}" batch_size: 2 }} }}')


def _list(tmp_path, *files):
    path = tmp_path / "other_list.txt"
    path.write_text("\n".join(str(f) for f in files))
    return path


# -- MemoryData, WindowData ---------------------------------------------------------------------------
MEMORY = ('layer { name: "m" type: "MemoryData" top: "data" top: "label" '
          'memory_data_param { batch_size: 2 channels: 1 height: 2 width: 3 } }')


def test_memory_data_set_input_arrays_and_cycling():
    net = make_net(MEMORY)
    data = np.arange(4 * 6, dtype=np.float32).reshape(4, 1, 2, 3)
    net.set_input_arrays(data, np.arange(4, dtype=np.float32))
    outs = [forward(net) for _ in range(3)]
    assert np.array_equal(outs[0]["data"], data[:2]) and np.array_equal(outs[1]["data"], data[2:])
    assert np.array_equal(outs[2]["label"], [0, 1]) and outs[2]["label"].shape == (2,)


@pytest.mark.parametrize("data, labels, message", [
    (np.zeros((4, 1, 2, 3)), np.zeros(4, np.float32), "float32"),
    (np.zeros((4, 1, 2, 3), np.float32)[:, :, :, ::-1], np.zeros(4, np.float32), "C contiguous"),
    (np.zeros((4, 2, 3), np.float32), np.zeros(4, np.float32), "4-d"),
    (np.zeros((4, 2, 2, 3), np.float32), np.zeros(4, np.float32), "number of channels"),
    (np.zeros((4, 1, 2, 3), np.float32), np.zeros(3, np.float32), "same first dimension"),
    (np.zeros((3, 1, 2, 3), np.float32), np.zeros(3, np.float32), "multiple of batch size"),
])
def test_memory_data_checks(data, labels, message):
    net = make_net(MEMORY)
    with pytest.raises(NetError, match=message):
        net.set_input_arrays(data, labels)


def test_memory_data_needs_arrays_and_first_layer():
    with pytest.raises(NetError, match="set_input_arrays"):
        forward(make_net(MEMORY))
    net = make_net('layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 } } }')
    with pytest.raises(NetError, match="first layer is a MemoryDataLayer"):
        net.set_input_arrays(np.zeros((2, 1, 2, 3), np.float32), np.zeros(2, np.float32))


def test_window_data_not_supported():
    with pytest.raises(NetError, match="'w'.*WindowData is not supported"):
        make_net('layer { name: "w" type: "WindowData" top: "data" top: "label" }')
