"""ONNX import (pyskim.convert.onnx_import): small graphs built with onnx.helper, one per op and
variant, imported and run by pyskim, compared with onnxruntime on the original model (rtol 1e-4), and
exported back (to-onnx) to check the round trip; refused ops and attributes give the named error."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper

from pyskim.convert.onnx_export import net_to_onnx
from pyskim.convert.onnx_import import onnx_to_caffe
from pyskim.errors import ConversionError
from pyskim.proto import caffe_pb2
from pyskim.pycaffe.net import Net

RNG = np.random.default_rng(17)


def weight(*shape, positive=False):
    values = RNG.standard_normal(shape).astype(np.float32)
    return np.abs(values) + 0.5 if positive else values


def make(nodes, inputs, outputs=("y",), consts=None, opset=17):
    """A model of ``nodes`` with float inputs ``{name: shape}``, outputs and initializers
    ``{name: array}``."""
    graph = helper.make_graph(
        nodes, "test", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        initializer=[onnx.numpy_helper.from_array(np.asarray(v), n) for n, v in (consts or {}).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset <= 17 else onnx.IR_VERSION
    return model


def run_ort(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def imported_net(model, **kwargs):
    deploy, weights = onnx_to_caffe(model, **kwargs)
    net = Net(deploy, caffe_pb2.TEST)
    net.copy_trained_layers_from_param(weights)
    return deploy, net


def check(model, round_trip=True, rtol=1e-4, atol=1e-5, **kwargs):
    """Import ``model``, compare pyskim's outputs with onnxruntime's, and (``round_trip``) export the
    imported net back to ONNX and compare again; returns the deploy NetParameter."""
    deploy, net = imported_net(model, **kwargs)
    feeds = {}
    for value in model.graph.input:
        shape = [net.blobs[value.name].shape[i] for i in range(len(value.type.tensor_type.shape.dim))]
        feeds[value.name] = RNG.standard_normal(shape).astype(np.float32)
    expected = run_ort(model, feeds)
    got = net.forward(**feeds)
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=rtol, atol=atol, err_msg=name)
    if round_trip:
        back = run_ort(net_to_onnx(net, outputs=list(expected)), feeds)
        for name, value in expected.items():
            np.testing.assert_allclose(back[name], value, rtol=rtol, atol=atol, err_msg=f"round trip {name}")
    return deploy


def layer_types(deploy):
    return [layer.type for layer in deploy.layer]


X = {"x": [2, 4, 9, 9]}


def node(op, inputs, output="y", **attrs):
    return helper.make_node(op, list(inputs), [output], **attrs)


def conv(name="c", inputs=("x", "w", "b"), output="y", **attrs):
    return node("Conv", inputs, output, name=name, **attrs)


def case(types, *nodes, consts=None, inputs=None, opset=17):
    """A model of ``nodes`` (input ``x`` of shape X unless ``inputs``) and the layer types it imports as."""
    return make(list(nodes), inputs or X, consts=consts, opset=opset), types


def scalar(value):
    return np.float32(value)


def ints(*values):
    return np.array(values, np.int64)


PADS1 = [1, 1, 1, 1]
CONV = ["Convolution"]
POOL = ["Pooling"]
CASES = {
    "conv_bias_stride_pad": case(CONV, conv(strides=[2, 2], pads=PADS1), consts={"w": weight(6, 4, 3, 3),
                                                                                   "b": weight(6)}),
    "conv_group_dilation_no_bias": case(CONV, conv(inputs=("x", "w"), group=2, dilations=[2, 1],
                                                   pads=[2, 1, 2, 1]), consts={"w": weight(6, 2, 3, 3)}),
    "conv_depthwise_rect_kernel": case(CONV, conv(group=4, kernel_shape=[3, 1], pads=[1, 0, 1, 0]),
                                       consts={"w": weight(4, 1, 3, 1), "b": weight(4)}),
    "conv_unused_end_pad": case(CONV, conv(strides=[2, 2], pads=[1, 1, 0, 0]), inputs={"x": [1, 4, 8, 8]},
                                consts={"w": weight(3, 4, 3, 3), "b": weight(3)}),
    "conv_auto_pad_same_upper": case(CONV, conv(auto_pad="SAME_UPPER"), consts={"w": weight(3, 4, 3, 3),
                                                                               "b": weight(3)}),
    "conv_1d": case(CONV, conv(), inputs={"x": [2, 3, 11]}, consts={"w": weight(5, 3, 3), "b": weight(5)}),
    "conv_transpose": case(["Deconvolution"],
                           node("ConvTranspose", ["x", "w", "b"], strides=[2, 2], pads=PADS1),
                           consts={"w": weight(4, 3, 4, 4), "b": weight(3)}),
    "conv_transpose_group": case(["Deconvolution"],
                                 node("ConvTranspose", ["x", "w"], group=2, strides=[2, 1]),
                                 consts={"w": weight(4, 2, 3, 3)}),
    "gemm_transb": case(["InnerProduct"], node("Gemm", ["x", "w", "b"], transB=1), inputs={"x": [3, 7]},
                        consts={"w": weight(5, 7), "b": weight(5)}),
    "gemm_alpha_beta_row_bias": case(["InnerProduct"], node("Gemm", ["x", "w", "b"], alpha=0.5, beta=2.0),
                                     inputs={"x": [3, 7]}, consts={"w": weight(7, 5), "b": weight(1, 5)}),
    "gemm_scalar_bias": case(["InnerProduct"], node("Gemm", ["x", "w", "b"], transB=1), inputs={"x": [3, 7]},
                             consts={"w": weight(5, 7), "b": scalar(0.25)}),
    "matmul_add": case(["InnerProduct"], node("MatMul", ["x", "w"], "m"), node("Add", ["m", "b"]),
                       inputs={"x": [3, 7]}, consts={"w": weight(7, 5), "b": weight(5)}),
    "matmul_rank3_add": case(["InnerProduct"], node("MatMul", ["x", "w"], "m"), node("Add", ["b", "m"]),
                             inputs={"x": [2, 3, 7]}, consts={"w": weight(7, 5), "b": weight(5)}),
    "conv_add_bias": case(CONV, conv(inputs=("x", "w"), output="c"), node("Add", ["c", "b"]),
                          consts={"w": weight(6, 4, 3, 3), "b": weight(1, 6, 1, 1)}),
    "relu": case(["ReLU"], node("Relu", ["x"])),
    "leaky_relu": case(["ReLU"], node("LeakyRelu", ["x"], alpha=0.2)),
    "prelu_per_channel": case(["PReLU"], node("PRelu", ["x", "s"]), consts={"s": weight(4, 1, 1)}),
    "prelu_shared": case(["PReLU"], node("PRelu", ["x", "s"]), consts={"s": weight(1)}),
    "sigmoid": case(["Sigmoid"], node("Sigmoid", ["x"])),
    "tanh": case(["TanH"], node("Tanh", ["x"])),
    "clip_relu6": case(["Clip"], node("Clip", ["x", "lo", "hi"]), consts={"lo": scalar(0), "hi": scalar(6)}),
    "clip_min_zero_is_relu": case(["ReLU"], node("Clip", ["x", "lo"]), consts={"lo": scalar(0)}),
    "clip_max_only": case(["Clip"], node("Clip", ["x", "", "hi"]), consts={"hi": scalar(0.5)}),
    "max_pool_floor": case(POOL, node("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=PADS1)),
    "max_pool_ceil": case(POOL, node("MaxPool", ["x"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)),
    "max_pool_rect": case(POOL, node("MaxPool", ["x"], kernel_shape=[3, 2], strides=[1, 2])),
    "average_pool_count_pad": case(POOL, node("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2],
                                              pads=PADS1, count_include_pad=1)),
    "average_pool_no_pad_ceil": case(POOL, node("AveragePool", ["x"], kernel_shape=[2, 2], strides=[2, 2],
                                                ceil_mode=1)),
    "global_average_pool": case(POOL, node("GlobalAveragePool", ["x"])),
    "global_max_pool": case(POOL, node("GlobalMaxPool", ["x"])),
    "add_mul_max_sub_sum": case(["ReLU"] + ["Eltwise"] * 5, node("Relu", ["x"], "r"),
                                node("Add", ["x", "r"], "a"), node("Mul", ["a", "x"], "m"),
                                node("Max", ["m", "r"], "mx"), node("Sub", ["mx", "a"], "s"),
                                node("Sum", ["s", "x", "r"])),
    "add_channel_constant": case(["Bias"], node("Add", ["x", "b"]), consts={"b": weight(4, 1, 1)}),
    "mul_block_constant": case(["Scale"], node("Mul", ["k", "x"]), consts={"k": weight(1, 4, 9, 1)}),
    "mul_div_sub_scalars": case(["Power"] * 4, node("Mul", ["x", "k"], "a"), node("Div", ["a", "k"], "d"),
                                node("Sub", ["d", "k"], "s"), node("Sub", ["k", "s"]),
                                consts={"k": scalar(1.5)}),
    "concat": case(["ReLU", "Concat"], node("Relu", ["x"], "r"), node("Concat", ["x", "r"], axis=-3)),
    "flatten": case(["Flatten"], node("Flatten", ["x"])),
    "flatten_axis2": case(["Reshape"], node("Flatten", ["x"], axis=2)),
    "flatten_axis0": case(["Reshape"], node("Flatten", ["x"], axis=0)),
    "reshape_flatten_kind": case(["Flatten"], node("Reshape", ["x", "s"]), consts={"s": ints(0, -1)}),
    "reshape_general": case(["Reshape"], node("Reshape", ["x", "s"]), consts={"s": ints(0, 2, -1, 9)}),
    "softmax_opset13_axis1": case(["Softmax"], node("Softmax", ["x"], axis=1)),
    "softmax_opset11_2d": case(["Softmax"], node("Softmax", ["x"]), inputs={"x": [3, 10]}, opset=11),
    "dropout_opset11": case(["Dropout"], node("Dropout", ["x"], ratio=0.3), opset=11),
    "dropout_opset13_ratio_input": case(["Dropout"], node("Dropout", ["x", "p"]), opset=13,
                                        consts={"p": scalar(0.25)}),
    "identity_read_in_place_and_again": case(["ReLU", "Sigmoid", "Eltwise"], node("Identity", ["x"], "i"),
                                             node("Relu", ["i"], "r"), node("Sigmoid", ["x"], "s"),
                                             node("Add", ["r", "s"])),
    "identity_inside_and_to_output": case(["ReLU", "Split"], node("Identity", ["x"], "i"),
                                          node("Relu", ["i"], "r"), node("Identity", ["r"])),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_op_matches_onnxruntime(case):
    model, types = CASES[case]
    deploy = check(model)
    assert layer_types(deploy) == ["Input"] + types


@pytest.mark.parametrize("fold", [False, True])
def test_batch_normalization_after_conv(fold):
    model = make([conv(inputs=("x", "w"), output="c"),
                  helper.make_node("BatchNormalization", ["c", "g", "be", "mu", "var"], ["bn"], epsilon=1e-3,
                                   momentum=0.8),
                  helper.make_node("Relu", ["bn"], ["y"])], X,
                 consts={"w": weight(6, 4, 3, 3), "g": weight(6), "be": weight(6), "mu": weight(6),
                         "var": weight(6, positive=True)})
    deploy = check(model, fold_batchnorm=fold)
    if fold:
        assert layer_types(deploy) == ["Input", "Convolution", "ReLU"]
        assert deploy.layer[1].convolution_param.bias_term
    else:
        assert layer_types(deploy) == ["Input", "Convolution", "BatchNorm", "Scale", "ReLU"]
        norm = deploy.layer[2].batch_norm_param
        assert norm.eps == pytest.approx(1e-3) and norm.moving_average_fraction == pytest.approx(0.8)
        # BatchNorm and Scale work in place on the convolution's top (Caffe's habit); the ReLU writes
        # the graph output
        assert [list(layer.top) for layer in deploy.layer[1:]] == [["c"], ["c"], ["c"], ["y"]]


@pytest.mark.parametrize("opset", range(11, 22))
def test_every_opset_from_11_to_21(opset):
    """A small CNN in each supported opset: Conv, BatchNormalization, Clip, MaxPool, AveragePool,
    Dropout, Reshape, Gemm, Softmax (whose default axis changes at 13)."""
    ratio = {"ratio": 0.5} if opset < 12 else {}
    dropout = node("Dropout", ["p2"] if opset < 12 else ["p2", "ratio"], "d", **ratio)
    model = make([conv(inputs=("x", "w"), output="c", pads=PADS1),
                  node("BatchNormalization", ["c", "g", "be", "mu", "var"], "bn"),
                  node("Clip", ["bn", "lo", "hi"], "r"),
                  node("MaxPool", ["r"], "p1", kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
                  node("AveragePool", ["p1"], "p2", kernel_shape=[3, 3], pads=PADS1, count_include_pad=1),
                  dropout, node("Reshape", ["d", "shape"], "f"),
                  node("Gemm", ["f", "k", "kb"], "fc", transB=1), node("Softmax", ["fc"])], X, opset=opset,
                 consts={"w": weight(6, 4, 3, 3), "g": weight(6), "be": weight(6), "mu": weight(6),
                         "var": weight(6, positive=True), "lo": scalar(0), "hi": scalar(6),
                         "ratio": scalar(0.5), "shape": ints(2, -1), "k": weight(5, 150), "kb": weight(5)})
    if opset < 12:
        del model.graph.initializer[[t.name for t in model.graph.initializer].index("ratio")]
    assert layer_types(check(model)) == ["Input", "Convolution", "BatchNorm", "Scale", "Clip", "Pooling",
                                         "Pooling", "Dropout", "Flatten", "InnerProduct", "Softmax"]


def test_batch_normalization_folds_into_deconvolution_and_gemm_but_not_a_shared_input():
    bn = {f"{p}{i}": (weight(n, positive=True) if p == "v" else weight(n)) for i, n in ((1, 6), (2, 5))
          for p in ("g", "b", "m", "v")}
    model = make([helper.make_node("ConvTranspose", ["x", "w"], ["d"], group=2, strides=[2, 2]),
                  helper.make_node("BatchNormalization", ["d", "g1", "b1", "m1", "v1"], ["y"]),
                  helper.make_node("Flatten", ["x"], ["f"]),
                  helper.make_node("Gemm", ["f", "k"], ["h"], transB=1),
                  helper.make_node("BatchNormalization", ["h", "g2", "b2", "m2", "v2"], ["z"]),
                  helper.make_node("BatchNormalization", ["x", "g3", "b3", "m3", "v3"], ["u"])],
                 X, outputs=("y", "z", "u"),
                 consts={"w": weight(4, 3, 3, 3), "k": weight(5, 4 * 81), **bn, "g3": weight(4),
                         "b3": weight(4), "m3": weight(4), "v3": weight(4, positive=True)})
    deploy = check(model, fold_batchnorm=True)
    assert layer_types(deploy) == ["Input", "Deconvolution", "Flatten", "InnerProduct", "BatchNorm", "Scale"]


def test_reimported_export_folds_batchnorm_and_its_scale_into_the_convolution():
    """pyskim's export writes BatchNorm + Scale as BatchNormalization, Mul and Add; imported again with
    fold_batchnorm all three fold into the convolution, and the pruned zeros stay zeros."""
    weights = weight(6, 4, 3, 3)
    weights[weights < 0.3] = 0
    model = make([conv(inputs=("x", "w"), output="c"),
                  node("BatchNormalization", ["c", "g", "be", "mu", "var"], "bn"), node("Relu", ["bn"])], X,
                 consts={"w": weights, "g": weight(6), "be": weight(6), "mu": weight(6),
                         "var": weight(6, positive=True)})
    _, net = imported_net(model)
    exported = net_to_onnx(net)
    assert [n.op_type for n in exported.graph.node] == ["Conv", "BatchNormalization", "Mul", "Add", "Relu"]
    plain = ["Input", "Convolution", "BatchNorm", "Scale", "Scale", "Bias", "ReLU"]
    assert layer_types(check(exported)) == plain
    _, folded = imported_net(exported, fold_batchnorm=True)
    assert layer_types(check(exported, fold_batchnorm=True)) == ["Input", "Convolution", "ReLU"]
    assert np.array_equal(folded.params["c"][0].data == 0, weights == 0)


def test_pruned_export_with_sparse_initializers_comes_back_exactly():
    """to-onnx --sparse-initializers stores mostly-zero weights as values + indices; the import reads
    them back bit for bit."""
    weights = weight(6, 4, 3, 3)
    weights[np.abs(weights) < 1.2] = 0
    _, net = imported_net(make([conv(inputs=("x", "w"))], X, consts={"w": weights}))
    exported = net_to_onnx(net, sparse_initializers=True)
    assert len(exported.graph.sparse_initializer) == 1
    check(exported)
    _, again = imported_net(exported)
    assert np.array_equal(again.params["c"][0].data, weights)


def test_a_constant_graph_output_is_refused():
    model = make([node("Shape", ["x"], "s"), node("Cast", ["s"], to=TensorProto.FLOAT)], X)
    assert "ONNX graph output 'y' is a constant" in refusal(model)


def test_symbolic_batch_and_shape_arithmetic_are_folded():
    """PyTorch's ``x.view(x.size(0), -1)`` with a dynamic batch: Shape -> Gather -> Unsqueeze ->
    Concat -> Reshape, folded to a Flatten; the symbolic batch is 1, or what input_shapes says."""
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Shape", ["r"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
             helper.make_node("Concat", ["n1", "minus_one"], ["target"], axis=0),
             helper.make_node("Reshape", ["r", "target"], ["y"])]
    consts = {"zero": np.array(0, np.int64), "axes": ints(0), "minus_one": ints(-1)}
    model = make(nodes, {"x": ["N", 4, 9, 9]}, consts=consts)
    deploy = check(model)
    assert layer_types(deploy) == ["Input", "ReLU", "Flatten"]
    assert list(deploy.layer[0].input_param.shape[0].dim) == [1, 4, 9, 9]
    deploy, net = imported_net(model, input_shapes=[[3, 4, 9, 9]])
    assert net.blobs["y"].shape == (3, 324)
    deploy, net = imported_net(model, input_shapes={"x": [5, 4, 9, 9]})
    assert net.blobs["y"].shape == (5, 324)


def test_pytorch_style_weight_identities_and_constant_nodes_fold():
    nodes = [helper.make_node("Identity", ["w0"], ["w"]),
             node("Constant", [], "lo", value=onnx.numpy_helper.from_array(scalar(0), "lo")),
             helper.make_node("Constant", [], ["hi"], value_float=6.0),
             conv(inputs=("x", "w"), output="c"), helper.make_node("Clip", ["c", "lo", "hi"], ["y"])]
    deploy = check(make(nodes, X, consts={"w0": weight(3, 4, 1, 1)}, opset=13))
    assert layer_types(deploy) == ["Input", "Convolution", "Clip"]


def test_names_follow_the_onnx_graph():
    hidden = "/features/conv1/Conv_output_0"
    model = make([conv(name="/features/conv1/Conv", output=hidden, inputs=("x", "w")),
                  node("Relu", [hidden], name="/features/relu/Relu")], X, consts={"w": weight(3, 4, 3, 3)})
    deploy = check(model)
    assert [layer.name for layer in deploy.layer] == ["x", "features/conv1/Conv", "features/relu/Relu"]
    assert [list(layer.top) for layer in deploy.layer] == [["x"], ["features/conv1/Conv"], ["y"]]


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool0", "AveragePool1"])
def test_pooling_geometry_is_exact_or_refused(op):
    """Every small geometry: imported with onnxruntime's output (shape and values), or refused with an
    error that names the node, the op and the attribute; the common ones must be imported."""
    imported, refused = set(), 0
    for size in (5, 6, 7):
        for kernel, stride in ((2, 2), (3, 1), (3, 2), (3, 3), (2, 1)):
            for begin, end in ((0, 0), (1, 1), (0, 1), (1, 0)):
                for ceil in (0, 1):
                    if begin >= kernel or end >= kernel:
                        continue
                    attrs = {"kernel_shape": [kernel, kernel], "strides": [stride, stride],
                                 "pads": [begin, begin, end, end], "ceil_mode": ceil}
                    if op != "MaxPool":
                        attrs["count_include_pad"] = int(op[-1])
                    model = make([helper.make_node(op.rstrip("01"), ["x"], ["y"], name="pool", **attrs)],
                                 {"x": [1, 2, size, size]}, opset=19)
                    try:
                        deploy = check(model, round_trip=False)
                    except ConversionError as e:
                        refused += 1
                        assert "ONNX node 'pool' (op " in str(e) and "attribute '" in str(e), str(e)
                        continue
                    assert layer_types(deploy) == ["Input", "Pooling"]
                    imported.add((size, kernel, stride, begin, end, ceil))
    assert refused and imported
    common = {(size, 3, 2, 1, 1, 0) for size in (5, 6, 7)} | {(size, 2, 2, 0, 0, ceil) for size in (5, 6, 7)
                                                             for ceil in (0, 1)}
    if op == "AveragePool0":   # count_include_pad 0: the same as Caffe's only without padding
        common = {g for g in common if g[3] == 0}
    assert common <= imported


def refusal(model, **kwargs):
    with pytest.raises(ConversionError) as info:
        onnx_to_caffe(model, **kwargs)
    return str(info.value)


@pytest.mark.parametrize("nodes, consts, expected", [
    ([conv(kernel_shape=[2, 2], auto_pad="SAME_UPPER")], {"w": weight(3, 4, 2, 2), "b": weight(3)},
     "ONNX node 'c' (op Conv), attribute 'auto_pad' = 'SAME_UPPER': cannot import: Caffe pads both ends"),
    ([conv(pads=[0, 0, 1, 1])], {"w": weight(3, 4, 2, 2), "b": weight(3)},
     "ONNX node 'c' (op Conv), attribute 'pads' = [0, 0, 1, 1]"),
    ([node("MaxPool", ["x"], name="p", kernel_shape=[2, 2], dilations=[2, 2])], {},
     "ONNX node 'p' (op MaxPool), attribute 'dilations' = [2, 2]: cannot import: Caffe's pooling has"),
    ([helper.make_node("AveragePool", ["x"], ["y"], name="p", kernel_shape=[3, 3], pads=[1, 1, 1, 1])], {},
     "ONNX node 'p' (op AveragePool), attribute 'count_include_pad' = 0"),
    ([node("MaxPool", ["x"], name="p", kernel_shape=[2, 2], strides=[2, 2], pads=PADS1, ceil_mode=1)], {},
     ("ONNX node 'p' (op MaxPool), attribute 'ceil_mode' = 1: cannot import: ONNX's shape inference gives "
      "[6, 6], onnxruntime [5, 5]")),
    ([node("Flatten", ["x"], "f"), node("Gemm", ["f", "w"], name="g", transA=1)],
     {"w": weight(2, 3)}, "ONNX node 'g' (op Gemm), attribute 'transA' = 1"),
    ([helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="d", strides=[2, 2], output_shape=[18, 18])],
     {"w": weight(4, 2, 2, 2)}, "ONNX node 'd' (op ConvTranspose), attribute 'output_shape' = [18, 18]"),
    ([helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="d", strides=[2, 2], pads=[1, 1, 1, 1],
                       output_padding=[1, 1])],
     {"w": weight(4, 2, 3, 3)}, "ONNX node 'd' (op ConvTranspose), attribute 'pads' = [1, 1, 1, 1]"),
    ([helper.make_node("Relu", ["x"], ["y"], name="r", foo=3)], {},
     "ONNX node 'r' (op Relu), attribute 'foo' = 3: cannot import: pyskim does not import this attribute"),
    ([node("Reshape", ["x", "s"], name="s", allowzero=1)], {"s": ints(2, 0, 324)},
     "ONNX node 's' (op Reshape), attribute 'allowzero' = 1"),
    ([helper.make_node("Erf", ["x"], ["y"], name="e")], {},
     "ONNX node 'e' (op Erf): cannot import: pyskim has no Caffe layer for this op"),
    ([node("GlobalAveragePool", ["x"], "p"), node("Mul", ["x", "p"], name="m")], {},
     "ONNX node 'm' (op Mul), input 'p': cannot import: Eltwise needs inputs of one shape"),
    ([helper.make_node("Add", ["x", "b"], ["y"], name="a")], {"b": weight(4, 1, 9)},
     "ONNX node 'a' (op Add), input 'b': cannot import: a constant of shape [4, 1, 9]"),
    ([helper.make_node("PRelu", ["x", "s"], ["y"], name="p")], {"s": weight(4, 9, 9)},
     "ONNX node 'p' (op PRelu), input 'slope'"),
    ([helper.make_node("Relu", ["x"], ["w"]), helper.make_node("Conv", ["x", "w"], ["y"], name="c")], {},
     "ONNX node 'c' (op Conv), input 'W': cannot import: computed by the graph"),
    ([helper.make_node("Dropout", ["x"], ["y", "mask"], name="d"),
      helper.make_node("Cast", ["mask"], ["z"], to=TensorProto.FLOAT)], {},
     "ONNX node 'd' (op Dropout): cannot import: output 1 ('mask') is used"),
])
def test_refusals_name_node_op_and_attribute(nodes, consts, expected):
    message = refusal(make(nodes, X, outputs=(nodes[-1].output[0],), consts=consts, opset=13))
    assert expected in message, message


def test_softmax_before_opset_13_over_several_axes_is_refused():
    message = refusal(make([helper.make_node("Softmax", ["x"], ["y"], name="s")], X, opset=11))
    assert "ONNX node 's' (op Softmax), attribute 'axis' = 1: cannot import: before opset 13" in message


def test_model_level_refusals(tmp_path):
    relu = [helper.make_node("Relu", ["x"], ["y"])]
    assert "opset 10: pyskim imports opsets 11-21" in refusal(make(relu, X, opset=10))
    custom = make([helper.make_node("Foo", ["x"], ["y"], name="f", domain="com.example")], X)
    assert "ONNX node 'f' (op Foo, domain com.example)" in refusal(custom)
    assert "symbolic dims ['N', 'C', 9, 9]" in refusal(make(relu, {"x": ["N", "C", 9, 9]}))
    assert "input shapes given for ['z']" in refusal(make(relu, X), input_shapes={"z": [1, 2]})
    graph = helper.make_graph(relu, "g", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)])
    double = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert "ONNX graph input 'x': pyskim's inputs are float32" in refusal(double)
    (tmp_path / "bad.onnx").write_bytes(b"\x0a\xff\xff not a model")
    assert "not a readable ONNX model" in refusal(tmp_path / "bad.onnx")
    assert "no such ONNX file" in refusal(tmp_path / "missing.onnx")
