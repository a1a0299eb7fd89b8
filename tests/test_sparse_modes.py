"""conv_mode / gemm_mode (pyskim.sparse): every mode equals the dense path (within 1e-4
relative) on the conformance convolution / inner-product cases at densities 1 .. 0, on random conv
geometries (hypothesis) and on whole nets with pruned random weights; weight changes are noticed;
unusable modes fall back with one log line; backward equals dense backward; ReLU fusion is exact."""
import logging
import pathlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from one_layer_nets import SPARSE_WINS_PROFILE

import pyskim
from pyskim.io.upgrade import read_net_text
from pyskim.proto import caffe_pb2

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
LAYERS = SHARED / "conformance" / "layers"
CONV = caffe_pb2.ConvolutionParameter
IP = caffe_pb2.InnerProductParameter
CONV_MODES = [CONV.LOWERED_CCNMM, CONV.DIRECT_SCONV, CONV.DIRECT_DCONV, CONV.AUTO]
IP_MODES = [IP.SPMDM, IP.SPGEMM, IP.AUTO]
DENSITIES = [1.0, 0.5, 0.1, 0.01, 0.0]
# Listed at collection time; none without ../shared (their tests then skip through ``shared_dir``).
CASES = sorted(p.name for p in LAYERS.iterdir() if p.name.startswith(("conv_", "ip_"))) if LAYERS.is_dir() else []
PUBLISHED = {"conv2": 0.144, "conv3": 0.069, "conv4": 0.082, "conv5": 0.115, "fc6": 0.097, "fc7": 0.156,
             "fc8": 0.262}
# AUTO decisions must not depend on this machine: a profile where sparse wins below ~30%.
PROFILE = SPARSE_WINS_PROFILE


pytestmark = pytest.mark.usefixtures("sparse_wins_profile")


@pytest.fixture
def layers(shared_dir):
    """The conformance layer cases recorded by BVLC Caffe (``../shared/conformance/layers``)."""
    return shared_dir / "conformance" / "layers"


def _close(got, ref, what=""):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape, what
    scale = np.abs(ref).max() if ref.size else 0.0
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * scale + 1e-6, err_msg=what)


def _set_mode(param, conv_mode=None, gemm_mode=None):
    for lp in param.layer:
        if conv_mode is not None and lp.type in ("Convolution", "ConvolutionReLU", "ConvolutionReLUPool",
                                                  "ConvolutionReLUPoolLRN"):
            lp.convolution_param.conv_mode = conv_mode
        if gemm_mode is not None and lp.type in ("InnerProduct", "InnerProductReLUDropout"):
            lp.inner_product_param.gemm_mode = gemm_mode
    return param


def _prune(net, density, seed=0, densities=None):
    rng = np.random.default_rng(seed)
    for name, blobs in net.params.items():
        d = density if densities is None else densities.get(name, 1.0)
        w = blobs[0].data
        w[...] = w * (rng.random(w.shape) < d)


def _case_net(layers, case, mode, density, force_backward=False):
    param = read_net_text(str(layers / case / "net.prototxt"))
    param.force_backward = force_backward
    kind = "conv" if case.startswith("conv") else "ip"
    _set_mode(param, conv_mode=mode if kind == "conv" else None, gemm_mode=mode if kind == "ip" else None)
    net = pyskim.Net(param, pyskim.TRAIN, weights=str(layers / case / "weights.caffemodel"))
    inputs = np.load(layers / case / "inputs.npz")
    for name in inputs.files:
        net.blobs[name].data[...] = inputs[name]
    _prune(net, density)
    return net


def _layer(net, case):
    return net.layer_dict["conv" if case.startswith("conv") else "ip"]


@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("case", CASES)
def test_conformance_cases_every_mode(layers, case, density):
    ref = _case_net(layers, case, 0, density)
    ref.forward()
    modes = CONV_MODES if case.startswith("conv") else IP_MODES
    for mode in modes:
        net = _case_net(layers, case, mode, density)
        net.forward()
        for name, blob in ref.blobs.items():
            _close(net.blobs[name].data, blob.data, f"{case} mode {mode} density {density}: {name}")
        engine = _layer(net, case).engine
        if mode == CONV.DIRECT_SCONV and case.startswith("conv") and case != "conv_3d":
            assert engine.last_mode == "sparse"
        if mode == IP.SPMDM and case.startswith("ip"):
            assert engine.last_mode == "spmdm"
        if mode == CONV.LOWERED_CCNMM and case.startswith("conv"):
            assert engine.last_mode == "ccnmm"


@pytest.mark.parametrize("case", ["conv_group", "conv_pad_stride", "conv_rect", "conv_3d", "ip_basic",
                                  "ip_transpose", "ip_axis2"])
def test_backward_in_sparse_modes_equals_dense(layers, case):
    modes = [CONV.DIRECT_SCONV, CONV.LOWERED_CCNMM, CONV.AUTO] if case.startswith("conv") else [IP.SPMDM, IP.AUTO]
    ref = _case_net(layers, case, 0, 0.3, force_backward=True)
    ref.forward()
    ref.clear_param_diffs()
    ref.backward()
    for mode in modes:
        net = _case_net(layers, case, mode, 0.3, force_backward=True)
        net.forward()
        net.clear_param_diffs()
        net.backward()
        for name, blob in ref.blobs.items():
            _close(net.blobs[name].diff, blob.diff, f"{case} {mode}: diff of {name}")
        for name, blobs in ref.params.items():
            for i, blob in enumerate(blobs):
                _close(net.params[name][i].diff, blob.diff, f"{case} {mode}: param diff {name}/{i}")


def test_weight_changes_are_noticed(layers):
    ref = _case_net(layers, "conv_pad_stride", 0, 1.0)
    net = _case_net(layers, "conv_pad_stride", CONV.DIRECT_SCONV, 1.0)
    rng = np.random.default_rng(3)

    def check():
        ref.forward()
        net.forward()
        _close(net.blobs["y"].data, ref.blobs["y"].data)
        assert net.layer_dict["conv"].engine.last_mode == "sparse"
    check()
    new = rng.standard_normal(ref.params["conv"][0].data.shape) * (rng.random((4, 3, 3, 3)) < 0.3)
    for n in (ref, net):
        n.params["conv"][0].data[...] = new                 # through net.params
    check()
    held = net.params["conv"][0].data                         # a reference kept across a forward
    check()
    held *= 2.0
    ref.params["conv"][0].data[...] *= 2.0
    check()
    single = net.params["conv"][0].data
    single[1, 2, 0, 0] += 7.0                                 # one weight, through a fresh hand-out
    ref.params["conv"][0].data[1, 2, 0, 0] += 7.0
    check()
    x = rng.standard_normal((2, 3, 11, 9))
    for n in (ref, net):                                      # new input size: offsets repacked
        n.blobs["x"].reshape(2, 3, 11, 9)
        n.blobs["x"].data[...] = x
        n.blobs["y_target"].reshape(2, 4, 6, 5)
        n.reshape()
    check()
    weights = str(layers / "conv_pad_stride" / "weights.caffemodel")
    for n in (ref, net):                                      # loading weights (weights_changed)
        n.copy_from(weights)
    check()


def test_geometry_fallback_logs_once(layers, caplog):
    net = _case_net(layers, "conv_3d", CONV.DIRECT_SCONV, 0.5)
    ref = _case_net(layers, "conv_3d", 0, 0.5)
    with caplog.at_level(logging.WARNING, logger="pyskim"):
        for _ in range(3):
            net.forward()
    ref.forward()
    _close(net.blobs["y"].data, ref.blobs["y"].data)
    lines = [r.getMessage() for r in caplog.records if "falling back" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "'conv'" in lines[0] and "DIRECT_SCONV" in lines[0] and "LOWERED_GEMM" in lines[0]


def test_spgemm_falls_back_with_one_line(layers, caplog):
    net = _case_net(layers, "ip_basic", IP.SPGEMM, 0.5)
    with caplog.at_level(logging.WARNING, logger="pyskim"):
        net.forward()
        net.forward()
    lines = [r.getMessage() for r in caplog.records if "falling back" in r.getMessage()]
    assert len(lines) == 1 and "SPGEMM" in lines[0] and "GEMM" in lines[0]


def _conv_relu_net(mode, fused_type=False, slope=0.0):
    param = caffe_pb2.NetParameter(force_backward=True)
    param.layer.add(name="x", type="Input", top=["x"]).input_param.shape.add().dim.extend([2, 6, 9, 9])
    lp = param.layer.add(name="conv", type="ConvolutionReLU" if fused_type else "Convolution", bottom=["x"],
                         top=["y"])
    cp = lp.convolution_param
    cp.num_output, cp.conv_mode = 8, mode
    cp.kernel_size.append(3)
    cp.pad.append(1)
    cp.weight_filler.type = cp.bias_filler.type = "gaussian"
    lp.relu_param.negative_slope = slope
    if not fused_type:
        relu = param.layer.add(name="relu", type="ReLU", bottom=["y"], top=["y"])
        relu.relu_param.negative_slope = slope
    loss = param.layer.add(name="loss", type="EuclideanLoss", bottom=["y", "t"], top=["loss"])
    param.layer.insert(1, caffe_pb2.LayerParameter(name="t", type="Input", top=["t"]))
    param.layer[1].input_param.shape.add().dim.extend([2, 8, 9, 9])
    del loss
    pyskim.set_random_seed(5)
    net = pyskim.Net(param, pyskim.TRAIN)
    rng = np.random.default_rng(0)
    net.blobs["x"].data[...] = rng.standard_normal((2, 6, 9, 9))
    net.blobs["t"].data[...] = rng.standard_normal((2, 8, 9, 9))
    _prune(net, 0.3)
    return net


@pytest.mark.parametrize("fused_type", [False, True])
def test_relu_fusion_is_exact(fused_type):
    ref = _conv_relu_net(CONV.LOWERED_GEMM, fused_type)
    net = _conv_relu_net(CONV.DIRECT_SCONV, fused_type)
    assert ref.fused_relus == [] and len(net.fused_relus) == 1
    for n in (ref, net):
        n.forward()
        n.clear_param_diffs()
        n.backward()
    for name, blob in ref.blobs.items():
        # the GEMM and the sparse kernel add each output's 54 products in different orders: float32
        # rounding is about eps * sum |product| (~3e-6 here, and in the diffs that follow from it),
        # so atol is 1e-5, not bit-exactness
        np.testing.assert_allclose(net.blobs[name].data, blob.data, rtol=1e-6, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(net.blobs[name].diff, blob.diff, rtol=1e-5, atol=1e-5, err_msg=name)
    for name, blobs in ref.params.items():
        for i, blob in enumerate(blobs):
            np.testing.assert_allclose(net.params[name][i].diff, blob.diff, rtol=1e-5, atol=1e-5)
    # the same net switched to a dense mode at run time: the dense product applies the linked ReLU as
    # it stores its tiles, bit for bit what the plain net's product and ReLU layer give
    producer = net.layers[2] if not fused_type else net.layers[2].stages[0]
    producer.param.convolution_param.conv_mode = CONV.LOWERED_GEMM
    net.forward()
    np.testing.assert_array_equal(net.blobs["y"].data, ref.blobs["y"].data)
    if not fused_type:
        ref.forward(end="conv")
        net.forward(end="conv")
        assert (ref.blobs["y"].data < 0).any()          # the plain net's top before its ReLU ran
        assert not (net.blobs["y"].data < 0).any()      # already rectified: the documented caveat


def test_leaky_relu_is_not_fused():
    net = _conv_relu_net(CONV.DIRECT_SCONV, slope=0.1)
    ref = _conv_relu_net(CONV.LOWERED_GEMM, slope=0.1)
    assert net.fused_relus == []
    net.forward()
    ref.forward()
    _close(net.blobs["y"].data, ref.blobs["y"].data)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_random_geometries_sparse_modes_equal_dense(data):
    group = data.draw(st.sampled_from([1, 1, 2, 3]))
    cin = group * data.draw(st.integers(1, 4))
    cout = group * data.draw(st.integers(1, 4))
    kh, kw = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5))
    dh, dw = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    ph, pw = data.draw(st.integers(0, 3)), data.draw(st.integers(0, 3))
    sh, sw = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    h = data.draw(st.integers(max(1, dh * (kh - 1) + 1 - 2 * ph), 20))
    w = data.draw(st.integers(max(1, dw * (kw - 1) + 1 - 2 * pw), 40))
    batch = data.draw(st.integers(1, 3))
    density = data.draw(st.sampled_from([1.0, 0.5, 0.2, 0.05, 0.0]))
    bias = data.draw(st.booleans())
    seed = data.draw(st.integers(0, 2**16))
    outs = []
    for mode in (CONV.LOWERED_GEMM, CONV.DIRECT_SCONV, CONV.LOWERED_CCNMM):
        param = caffe_pb2.NetParameter()
        param.layer.add(name="x", type="Input", top=["x"]).input_param.shape.add().dim.extend([batch, cin, h, w])
        cp = param.layer.add(name="conv", type="Convolution", bottom=["x"], top=["y"]).convolution_param
        cp.num_output, cp.group, cp.bias_term, cp.conv_mode = cout, group, bias, mode
        cp.kernel_h, cp.kernel_w, cp.stride_h, cp.stride_w, cp.pad_h, cp.pad_w = kh, kw, sh, sw, ph, pw
        cp.dilation.extend([dh, dw])
        net = pyskim.Net(param, pyskim.TEST)
        rng = np.random.default_rng(seed)
        for blob in net.params["conv"]:
            blob.data[...] = rng.standard_normal(blob.data.shape)
        _prune(net, density, seed)
        net.blobs["x"].data[...] = rng.standard_normal((batch, cin, h, w))
        net.forward()
        outs.append(net.blobs["y"].data.copy())
        if mode != CONV.LOWERED_GEMM:
            assert net.layer_dict["conv"].engine.last_mode == ("sparse" if mode == CONV.DIRECT_SCONV else "ccnmm")
    _close(outs[1], outs[0], "DIRECT_SCONV")
    _close(outs[2], outs[0], "LOWERED_CCNMM")


# -- whole nets --------------------------------------------------------------------------------------

def data_to_input(param, batch=1):
    """Replace the Data layers (TEST phase) by one Input layer with the same tops."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    for lp in param.layer:
        if lp.type != "Data":
            out.layer.add().CopyFrom(lp)
            continue
        if any(rule.phase == caffe_pb2.TRAIN for rule in lp.include):
            continue
        crop = lp.transform_param.crop_size or 227
        new = out.layer.add(name=lp.name, type="Input", top=list(lp.top))
        new.input_param.shape.add().dim.extend([batch, 3, crop, crop])
        if len(lp.top) > 1:
            new.input_param.shape.add().dim.extend([batch])
    return out


_WEIGHTS = {}


def _random_weights(name, shape, index, density):
    """He-scaled Gaussian weights pruned to ``density`` (biases: uniform [0, 0.1)), cached per
    (layer, shape, blob, density) so the big nets are filled once per test session."""
    key = (name, tuple(shape), index, density)
    if key not in _WEIGHTS:
        rng = np.random.default_rng(len(_WEIGHTS))
        if index:
            value = rng.uniform(0, 0.1, shape).astype(np.float32)
        else:
            fan_in = max(int(np.prod(shape[1:])), 1)
            value = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in / max(density, 1e-3)))
            value *= rng.random(shape, dtype=np.float32) < density
        _WEIGHTS[key] = value
    return _WEIGHTS[key]


def _compare_nets(param, densities, outputs, seed=0, default_density=1.0):
    """Build ``param`` sparse as written and all-dense, fill the same pruned weights, compare outputs."""
    dense_param = caffe_pb2.NetParameter()
    dense_param.CopyFrom(param)
    from pyskim.sparse import apply_mode
    apply_mode(dense_param, "dense")
    nets = [pyskim.Net(p, pyskim.TEST) for p in (param, dense_param)]
    rng = np.random.default_rng(seed)
    for name, blobs in nets[0].params.items():
        d = densities.get(name, default_density)
        for i, blob in enumerate(blobs):
            value = _random_weights(name, blob.data.shape, i, d)
            for net in nets:
                net.params[name][i].data[...] = value
    for name in nets[0].inputs:
        value = rng.uniform(-1, 1, nets[0].blobs[name].data.shape)
        if name == "label":
            value = np.zeros(value.shape)
        for net in nets:
            net.blobs[name].data[...] = value
    for net in nets:
        net.forward()
    for name in outputs:
        _close(nets[0].blobs[name].data, nets[1].blobs[name].data, name)
    return nets


def test_caffenet_deploy_sparse_batch_1():
    param = read_net_text(str(ROOT / "prototxt" / "caffenet" / "deploy_sparse.prototxt"))
    from pyskim.apps.time_net import set_batch
    set_batch(param, 1)
    sparse, _ = _compare_nets(param, PUBLISHED, ["fc8", "prob", "conv2", "conv5", "fc6"])
    modes = {n: sparse.layer_dict[n].stages[0].engine.last_mode
             for n in ("conv2", "conv3", "conv4", "conv5", "fc6", "fc7")}
    assert set(modes.values()) <= {"sparse", "spmdm"}, modes
    assert len(sparse.fused_relus) == 6


def test_caffenet_deploy_auto_batch_1():
    param = read_net_text(str(ROOT / "prototxt" / "caffenet" / "deploy.prototxt"))
    from pyskim.apps.time_net import set_batch
    from pyskim.sparse import apply_mode
    set_batch(param, 1)
    assert len(apply_mode(param, "auto")) == 8
    sparse, _ = _compare_nets(param, PUBLISHED, ["fc8", "prob"])
    assert sparse.layer_dict["conv3"].engine.last_mode == "sparse"
    assert sparse.layer_dict["conv1"].engine.last_mode == "dense"
    assert ("conv3", "relu3") in sparse.fused_relus


@pytest.mark.parametrize("path", [
    pytest.param("bvlc_reference_caffenet/test_direct_sconv.prototxt", marks=pytest.mark.slow),
    pytest.param("bvlc_reference_caffenet/test_direct_sconv_mkl.prototxt", marks=pytest.mark.slow),
    pytest.param("bvlc_reference_caffenet/test_direct_sconv_mkl_1.prototxt", marks=pytest.mark.slow),
    pytest.param("bvlc_googlenet/test_direct_sconv.prototxt", marks=pytest.mark.slow),
])
def test_skimcaffe_direct_sconv_prototxts(shared_dir, path):
    """SkimCaffe's own DIRECT_SCONV test nets (``../shared/models/skimcaffe/models/<path>``)."""
    param = data_to_input(read_net_text(str(shared_dir / "models" / "skimcaffe" / "models" / path)))
    densities = PUBLISHED if "caffenet" in path else {}
    default = 1.0 if "caffenet" in path else 0.15
    outputs = [lp.top[0] for lp in param.layer if lp.type in ("InnerProduct", "Softmax")]
    _compare_nets(param, densities, outputs, default_density=default)


def test_googlenet_prototxt_in_repo():
    param = read_net_text(str(ROOT / "prototxt" / "googlenet" / "deploy_sparse.prototxt"))
    from pyskim.apps.time_net import set_batch
    set_batch(param, 1)
    outputs = [lp.top[0] for lp in param.layer if lp.type in ("InnerProduct", "Softmax")]
    sparse, _ = _compare_nets(param, {}, outputs, default_density=0.15)
    used = [layer.stages[0].engine.last_mode for layer in sparse.layers if layer.type == "ConvolutionReLU"
            and layer.stages[0].param.convolution_param.conv_mode == CONV.DIRECT_SCONV]
    assert used and set(used) == {"sparse"}


# -- AUTO: one rule for the engine and the GSL planner ------------------------------------------------

def _auto_net(kind, shape, density, dropped_columns, seed=0):
    """One AUTO layer ``layer`` on an Input of ``shape``, weights pruned at random to ``density`` with
    a fraction ``dropped_columns`` of the lowered weight columns (convolutions) all zero."""
    param = caffe_pb2.NetParameter()
    param.layer.add(name="x", type="Input", top=["x"]).input_param.shape.add().dim.extend(shape)
    if kind == "conv":
        cp = param.layer.add(name="layer", type="Convolution", bottom=["x"], top=["y"]).convolution_param
        cp.num_output, cp.conv_mode, cp.group = 32, CONV.AUTO, 2 if shape[1] % 2 == 0 and shape[2] > 8 else 1
        cp.kernel_size.append(3)
        cp.pad.append(1)
    else:
        ip = param.layer.add(name="layer", type="InnerProduct", bottom=["x"], top=["y"]).inner_product_param
        ip.num_output, ip.gemm_mode = 256, IP.AUTO
    net = pyskim.Net(param, pyskim.TEST)
    rng = np.random.default_rng(seed)
    w = net.params["layer"][0].data
    values = rng.standard_normal(w.shape) * (rng.random(w.shape) < density)
    lowered = values.reshape(w.shape[0], -1)
    lowered[:, rng.random(lowered.shape[1]) < dropped_columns] = 0
    w[...] = values
    net.blobs["x"].data[...] = rng.standard_normal(shape)
    return net


def test_planner_mode_is_the_engine_mode():
    """GSL's plan (prune.plan.predict_layers) predicts the mode AUTO runs, from the same rule."""
    from pyskim.prune.plan import layer_shapes, predict_layers
    from pyskim.sparse import layer_workload
    cases = [("conv", [1, 32, 14, 14], d, 0.0) for d in (0.02, 0.1, 0.3, 0.45, 0.6, 1.0)]
    cases += [("conv", [4, 16, 15, 15], d, drop) for d in (0.05, 0.55, 0.8) for drop in (0.0, 0.5)]
    cases += [("conv", [4, 15, 15, 15], 0.9, 0.5), ("conv", [8, 15, 8, 8], 0.9, 0.7)]    # group 1: CCNMM
    cases += [("fc", [b, 512], d, 0.0) for b in (1, 16) for d in (0.01, 0.1, 0.4, 0.7)]
    seen = set()
    for kind, shape, density, drop in cases:
        net = _auto_net(kind, shape, density, drop)
        net.forward()
        used = {"spmdm": "sparse"}.get(net.layer_dict["layer"].engine.last_mode,
                                        net.layer_dict["layer"].engine.last_mode)
        _, measured, columns = layer_workload(net.layer_dict["layer"], net.blobs["x"])
        plan = predict_layers(layer_shapes(net), {"layer": measured}, PROFILE, {"layer": columns})["layer"]
        assert plan.mode == used, (kind, shape, density, drop)
        seen.add(used)
    assert seen == {"dense", "sparse", "ccnmm"}, seen


def test_deconvolution_stays_dense_with_one_warning(caplog):
    """A Deconvolution has no sparse mode: asked for one it runs dense, warns once, gets no engine."""
    def deconv_net(mode):
        param = caffe_pb2.NetParameter()
        param.layer.add(name="x", type="Input", top=["x"]).input_param.shape.add().dim.extend([2, 3, 5, 5])
        cp = param.layer.add(name="up", type="Deconvolution", bottom=["x"], top=["y"]).convolution_param
        cp.num_output, cp.conv_mode, cp.stride[:] = 4, mode, [2]
        cp.kernel_size.append(3)
        cp.weight_filler.type = "gaussian"
        pyskim.set_random_seed(3)
        net = pyskim.Net(param, pyskim.TEST)
        net.blobs["x"].data[...] = np.random.default_rng(4).standard_normal((2, 3, 5, 5))
        return net
    with caplog.at_level(logging.WARNING, logger="pyskim"):
        net = deconv_net(CONV.DIRECT_SCONV)
        net.forward()
        net.forward()
    ref = deconv_net(CONV.LOWERED_GEMM)
    ref.forward()
    np.testing.assert_array_equal(net.blobs["y"].data, ref.blobs["y"].data)
    assert net.layer_dict["up"].engine is None
    lines = [r.getMessage() for r in caplog.records if "falling back" in r.getMessage()]
    expected = "layer 'up': conv_mode DIRECT_SCONV is not available for Deconvolution; falling back to LOWERED_GEMM"
    assert lines == [expected]


def test_fallback_decided_at_build_is_logged_by_the_forward(caplog):
    """A net without backward packs its sparse layers when built, without logging; the fallback of a
    3-D convolution in DIRECT_SCONV must still be logged once, by the first forward."""
    param = caffe_pb2.NetParameter()
    param.layer.add(name="x", type="Input", top=["x"]).input_param.shape.add().dim.extend([1, 2, 4, 5, 5])
    conv = param.layer.add(name="conv", type="Convolution", bottom=["x"], top=["y"])
    conv.convolution_param.num_output = 3
    conv.convolution_param.kernel_size.extend([3])
    conv.convolution_param.weight_filler.type = "gaussian"
    conv.convolution_param.conv_mode = CONV.DIRECT_SCONV
    with caplog.at_level(logging.WARNING, logger="pyskim"):
        net = pyskim.Net(param, pyskim.TEST)
        assert not [r for r in caplog.records if "falling back" in r.getMessage()]
        net.forward()
        net.forward()
    lines = [r.getMessage() for r in caplog.records if "falling back" in r.getMessage()]
    assert len(lines) == 1 and "'conv'" in lines[0] and "LOWERED_GEMM" in lines[0], lines


@pytest.mark.parametrize("conv_mode, sparse_conv", [(CONV.DIRECT_SCONV, True), (CONV.LOWERED_GEMM, False)])
def test_forward_bytes_counts_blobs_and_stored_weights(conv_mode, sparse_conv):
    """What a forward pass moves: every blob once, 4 bytes a value, and each layer's parameters as
    stored: 8 bytes per nonzero weight of a layer that ran a sparse mode, else 4 per value."""
    from pyskim.sparse import forward_bytes
    param = caffe_pb2.NetParameter()
    param.layer.add(name="x", type="Input", top=["x"]).input_param.shape.add().dim.extend([2, 3, 8, 8])
    conv = param.layer.add(name="conv", type="Convolution", bottom=["x"], top=["c"])
    conv.convolution_param.num_output, conv.convolution_param.conv_mode = 5, conv_mode
    conv.convolution_param.kernel_size.append(3)
    param.layer.add(name="relu", type="ReLU", bottom=["c"], top=["c"])
    fc = param.layer.add(name="fc", type="InnerProduct", bottom=["c"], top=["y"])
    fc.inner_product_param.num_output, fc.inner_product_param.gemm_mode = 4, IP.GEMM
    net = pyskim.Net(param, pyskim.TEST)
    w = net.params["conv"][0].data
    w[...] = np.arange(w.size).reshape(w.shape) % 3 == 0            # 45 of 135 weights nonzero
    del w
    net.forward()
    blobs = 2 * 3 * 8 * 8 + 2 * 5 * 6 * 6 + 2 * 4                  # x, c (ReLU in place), y
    conv_weights = 8 * 45 if sparse_conv else 4 * 135
    conv_blob = net.layer_dict["conv"].blobs[0]
    assert conv_blob.data_released == sparse_conv                 # a net without backward drops them
    assert forward_bytes(net) == 4 * blobs + conv_weights + 4 * 5 + 4 * (4 * 180 + 4)
    assert conv_blob.data_released == sparse_conv                 # counted without reading them back
