"""An imported ONNX net trains: ``tools/convert.py from-onnx``, then :func:`train_test_net` adds Data
layers (an LMDB of random images made here) and the loss, and ``pyskim train``, ``tools/gsl.py`` and
``tools/time.py`` run on it (docs/onnx_import.md)."""
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper

from pyskim.apps.cli import run_tool
from pyskim.convert.onnx_import import train_test_net
from pyskim.data.db import LMDBWriter
from pyskim.errors import ConversionError
from pyskim.io.protofiles import write_text
from pyskim.io.upgrade import read_net_binary, read_net_text
from pyskim.proto import caffe_pb2

REPO = pathlib.Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(5)
IMAGES = 64


def _model():
    """conv -> BatchNormalization -> Relu -> MaxPool -> conv -> Relu -> GlobalAveragePool -> Flatten ->
    Gemm -> Softmax, on 3 x 16 x 16 images, 4 classes."""
    def w(*shape):
        return onnx.numpy_helper.from_array((RNG.standard_normal(shape) * 0.3).astype(np.float32))

    consts = {"w1": w(8, 3, 3, 3), "b1": w(8), "g": w(8), "beta": w(8), "mu": w(8),
              "var": onnx.numpy_helper.from_array(np.full(8, 1.5, np.float32)), "w2": w(8, 8, 3, 3),
              "b2": w(8),
              "fc": w(4, 8), "fcb": w(4)}
    for name, tensor in consts.items():
        tensor.name = name
    nodes = [helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "g", "beta", "mu", "var"], ["bn1"], name="bn1"),
             helper.make_node("Relu", ["bn1"], ["r1"], name="relu1"),
             helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
             helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "fc", "fcb"], ["logits"], name="fc", transB=1),
             helper.make_node("Softmax", ["logits"], ["prob"], name="prob", axis=1)]
    graph = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                             ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("prob", TensorProto.FLOAT, None)],
                              initializer=list(consts.values()))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _lmdb(path):
    """Random 3 x 16 x 16 uint8 images; the label is the brightest quadrant, so there is something to
    learn."""
    writer = LMDBWriter(str(path), commit_every=1000)
    datum = caffe_pb2.Datum(channels=3, height=16, width=16)
    for i in range(IMAGES):
        image = RNG.integers(0, 200, (3, 16, 16), dtype=np.uint8)
        label = i % 4
        image[:, 8 * (label // 2):8 * (label // 2) + 8, 8 * (label % 2):8 * (label % 2) + 8] += 55
        datum.data, datum.label = image.tobytes(), label
        writer.put(f"{i:08d}", datum.SerializeToString())
    writer.close()


DATA = """name: "data" type: "Data" transform_param {{ scale: 0.00390625 }}
          data_param {{ source: "{source}" batch_size: {batch} backend: LMDB }}"""


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """The model imported through tools/convert.py, a train/test net and solver around it, an LMDB."""
    work = tmp_path_factory.mktemp("onnx_train")
    onnx.save(_model(), str(work / "small.onnx"))
    assert run_tool("convert", ["from-onnx", "--onnx", str(work / "small.onnx"),
                                "--out-prototxt", str(work / "deploy.prototxt"),
                                "--out-weights", str(work / "imported.caffemodel"),
                                "--input-shape", "8,3,16,16"]) == 0
    _lmdb(work / "train_lmdb")
    deploy = read_net_text(str(work / "deploy.prototxt"))
    net = train_test_net(deploy, DATA.format(source=work / "train_lmdb", batch=16),
                         DATA.format(source=work / "train_lmdb", batch=16))
    write_text(work / "train_test.prototxt", net)
    solver = caffe_pb2.SolverParameter(net=str(work / "train_test.prototxt"), base_lr=0.05, momentum=0.9,
                                       lr_policy="fixed", max_iter=20, display=10, test_interval=20,
                                       snapshot_prefix=str(work / "small"), random_seed=1, weight_decay=1e-4)
    solver.test_iter.append(4)
    write_text(work / "solver.prototxt", solver)
    return work


def test_train_test_net_puts_data_and_loss_around_the_imported_layers(imported):
    net = read_net_text(str(imported / "train_test.prototxt"))
    types = [layer.type for layer in net.layer]
    assert types == ["Data", "Data", "Convolution", "BatchNorm", "Scale", "ReLU", "Pooling", "Convolution",
                     "ReLU", "Pooling", "Flatten", "InnerProduct", "SoftmaxWithLoss", "Accuracy"]
    assert [list(layer.top) for layer in net.layer[:2]] == [["image", "label"]] * 2
    assert list(net.layer[-2].bottom) == ["fc", "label"]          # the logits: the final Softmax is dropped
    assert net.layer[-1].include[0].phase == caffe_pb2.TEST


def test_pyskim_train_gsl_and_time_run_on_the_imported_net(imported, monkeypatch):
    monkeypatch.chdir(imported)
    assert run_tool("train", ["--solver", "solver.prototxt", "--weights", "imported.caffemodel"]) == 0
    trained = read_net_binary(str(imported / "small_iter_20.caffemodel"))
    start = read_net_binary(str(imported / "imported.caffemodel"))
    layers = {layer.name: layer for layer in trained.layer}
    for layer in start.layer:
        if layer.type in ("Convolution", "InnerProduct"):
            assert not np.array_equal(layers[layer.name].blobs[0].data, layer.blobs[0].data), layer.name
    assert run_tool("gsl", ["--solver", "solver.prototxt", "--weights", "small_iter_20.caffemodel",
                            "--out", "gsl", "--prune-iters", "4", "--finetune-iters", "4",
                            "--measure-iters", "1", "--batch", "8", "--min-density", "0.5"]) == 0
    assert (imported / "gsl" / "gsl_final.caffemodel").exists()
    assert run_tool("time", ["--model", "deploy.prototxt", "--weights", "gsl/gsl_final.caffemodel",
                             "--iterations", "2", "--forward_only"]) == 0


def test_train_test_net_refuses_nets_it_cannot_wrap():
    two_inputs = caffe_pb2.NetParameter(name="two")
    two_inputs.layer.add(name="a", type="Input", top=["a"])
    two_inputs.layer.add(name="b", type="Input", top=["b"])
    with pytest.raises(ConversionError, match=r"net 'two': train_test_net needs one Input layer"):
        train_test_net(two_inputs, DATA, DATA)


@pytest.mark.slow
def test_the_cifar10_example_runs_end_to_end(shared_dir, tmp_path):
    """examples/onnx_import_gsl.py with a small budget: every stage runs, the imported and exported
    nets agree with onnxruntime, and the table for RESULTS.md is printed."""
    pytest.importorskip("torch")
    command = [sys.executable, str(REPO / "examples" / "onnx_import_gsl.py"), "--work", str(tmp_path),
               "--data", str(shared_dir / "datasets" / "cifar10"),
               "--iters", "10", "--train-images", "500", "--test-images", "100", "--time-iters", "1",
               "--batch", "16"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1200, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    differences = [float(x) for x in re.findall(r"max \|difference\| (\S+)", done.stdout)]
    assert len(differences) == 3 and max(differences) < 1e-4
    assert re.search(r"^whole net +[\d.]+ +[\d.]+ +[\d.]+x$", done.stdout, re.MULTILINE)
    assert "test accuracy: dense" in done.stdout and (tmp_path / "pruned.onnx").exists()
