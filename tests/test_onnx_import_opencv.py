"""An imported ONNX model runs in OpenCV's Caffe importer too (issue 17: "pyskim, and where the layers
allow OpenCV and BVLC Caffe, compute the same outputs as onnxruntime"): a small CNN with the layers
OpenCV's ``readNetFromCaffe`` knows (Convolution, BatchNorm + Scale, ReLU, Pooling, InnerProduct,
Eltwise, Concat, Softmax) is imported with ``tools/convert.py from-onnx``'s function, written as a
prototxt and a caffemodel, loaded by OpenCV and compared with onnxruntime on the original model."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
cv2 = pytest.importorskip("cv2")
if int(cv2.__version__.split(".")[0]) >= 5:     # 5.x dropped the Caffe importer
    pytest.skip(f"OpenCV {cv2.__version__} has no Caffe importer (need 4.x)", allow_module_level=True)

from onnx import TensorProto, helper, numpy_helper

from pyskim.convert.onnx_import import import_onnx


def small_cnn(rng):
    """Conv-BN-ReLU, max pooling, two branches added and concatenated, global average pooling, Gemm,
    Softmax: an ONNX model (opset 13) with input "x" (2, 3, 16, 16) and output "prob"."""
    def w(*shape):
        return rng.standard_normal(shape).astype(np.float32) * np.float32(0.3)
    consts = {"w1": w(8, 3, 3, 3), "b1": w(8), "scale": np.abs(w(8)) + 0.5, "shift": w(8), "mean": w(8),
              "var": np.abs(w(8)) + 0.5, "w2": w(8, 8, 3, 3), "b2": w(8), "w3": w(8, 8, 1, 1), "b3": w(8),
              "wf": w(10, 16), "bf": w(10)}
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("BatchNormalization", ["c1", "scale", "shift", "mean", "var"], ["n1"], epsilon=1e-5),
        helper.make_node("Relu", ["n1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Conv", ["p1", "w3", "b3"], ["c3"], kernel_shape=[1, 1]),
        helper.make_node("Add", ["c2", "c3"], ["s"]),
        helper.make_node("Relu", ["s"], ["r2"]),
        helper.make_node("Concat", ["r2", "p1"], ["cat"], axis=1),
        helper.make_node("GlobalAveragePool", ["cat"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["prob"], axis=1),
    ]
    graph = helper.make_graph(nodes, "small_cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 16, 16])],
                              [helper.make_tensor_value_info("prob", TensorProto.FLOAT, None)],
                              initializer=[numpy_helper.from_array(v, k) for k, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model


def test_imported_cnn_runs_in_opencv_as_in_onnxruntime(tmp_path):
    rng = np.random.default_rng(5)
    model = small_cnn(rng)
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, {"x": x})
    deploy, caffemodel = tmp_path / "small_cnn.prototxt", tmp_path / "small_cnn.caffemodel"
    import_onnx(model, deploy, caffemodel)
    theirs = cv2.dnn.readNetFromCaffe(str(deploy), str(caffemodel))
    theirs.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    theirs.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    theirs.setInput(x)
    got = np.asarray(theirs.forward()).reshape(expected.shape)          # the last layer: the softmax
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    assert abs(float(expected.std())) > 1e-3           # the check compares something that varies
