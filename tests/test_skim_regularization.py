"""SkimCaffe's solver-side pruning (skimcaffe.md §4): L1 hard thresholds (static and step-dependent),
ISTA, L1_DNS / L2_DNS with regrowth, connectivity masks through every solver type, the sparsity
report and display lines, Winograd types refused, and the published SkimCaffe prototxts training
on DummyData with their solvers' settings. Expectations are derived by hand from the semantics."""
import logging
import re

import numpy as np
import pytest
from google.protobuf import text_format

import pyskim
from pyskim.errors import SolverError
from pyskim.io.upgrade import read_net_text, read_solver_text
from pyskim.proto import caffe_pb2
from pyskim.solvers import get_solver
from pyskim.solvers.skim import WINOGRAD_TYPES
from pyskim.sparse import sparsity

SOLVER_TYPES = ["SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"]

# Two weights: y = w · x (InnerProduct, 2-D weight) or a 1×1 convolution over 2 channels (4-D).
IP_NET = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 } } }
layer { name: "target" type: "Input" top: "target" input_param { shape { dim: 1 dim: 1 } } }
layer { name: "w" type: "InnerProduct" bottom: "data" top: "y" %s
        inner_product_param { num_output: 1 bias_term: false } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "target" top: "loss" }
"""
CONV_NET = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 1 dim: 1 } } }
layer { name: "target" type: "Input" top: "target" input_param { shape { dim: 1 dim: 1 dim: 1 dim: 1 } } }
layer { name: "w" type: "Convolution" bottom: "data" top: "y" %s
        convolution_param { num_output: 1 kernel_size: 1 bias_term: false } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "target" top: "loss" }
"""


def two_weight_solver(net, w, x, y, spec="", **fields):
    param = caffe_pb2.SolverParameter(lr_policy="fixed", momentum=0.0, display=0, max_iter=100)
    text_format.Parse(net % spec, param.net_param)
    for key, value in fields.items():
        setattr(param, key, value)
    solver = get_solver(param)
    solver.net.blobs["data"].data[...] = np.reshape(x, solver.net.blobs["data"].shape)
    solver.net.blobs["target"].data[...] = y
    solver.net.params["w"][0].data[...] = np.reshape(w, solver.net.params["w"][0].shape)
    return solver


def weights(solver):
    return solver.net.params["w"][0].data.ravel().astype(np.float64)


def gradient(w, x, y):
    """d/dw of EuclideanLoss ½(w·x − y)² at batch 1."""
    return (np.dot(w, x) - y) * np.asarray(x, np.float64)


# -- L1 with a hard threshold ---------------------------------------------------------------------------
def test_l1_static_threshold():
    w, x, y, lr, decay = [0.5, 0.00015], [1.0, 0.0], 0.0, 0.1, 0.001
    step = lr * (gradient(w, x, y) + decay * np.sign(w))    # [0.0501, 0.0001]
    updated = np.asarray(w) - step                           # [0.4499, 0.00005]
    solver = two_weight_solver(IP_NET, w, x, y, base_lr=lr, weight_decay=decay, regularization_type="L1",
                               prune_threshold=1e-4)
    solver.step(1)
    got = weights(solver)
    assert got[1] == 0.0                                     # |0.00005| <= 1e-4: pruned
    assert got[0] == pytest.approx(updated[0], rel=1e-6)
    # Without prune_threshold / max_threshold_factor in the solver, L1 is BVLC Caffe's L1.
    plain = two_weight_solver(IP_NET, w, x, y, base_lr=lr, weight_decay=decay, regularization_type="L1")
    plain.step(1)
    np.testing.assert_allclose(weights(plain), updated, rtol=1e-5)


def test_l1_step_dependent_threshold():
    """max_threshold_factor f >= 2: t_i = f·t0/(1 + f·|d_i|), d_i the step after ComputeUpdateValue.
    Both weights end at 0.0005; the one that took a large step keeps it, the other is pruned."""
    t0, f, lr, decay = 1e-4, 10.0, 1.0, 0.001
    w, x, y = [0.5005, 0.0015], [1.0, 0.0], 0.0015
    step = lr * (gradient(w, x, y) + decay * np.sign(w))    # [0.5, 0.001]
    updated = np.asarray(w) - step                           # [0.0005, 0.0005]
    thresholds = f * t0 / (1 + f * np.abs(step))             # [1.67e-4, 9.9e-4]
    expected = np.where(np.abs(updated) <= thresholds, 0.0, updated)
    assert expected[0] != 0 and expected[1] == 0
    solver = two_weight_solver(IP_NET, w, x, y, base_lr=lr, weight_decay=decay, regularization_type="L1",
                               prune_threshold=t0, max_threshold_factor=f)
    solver.step(1)
    got = weights(solver)
    assert got[1] == 0.0
    assert got[0] == pytest.approx(expected[0], rel=1e-4)
    # f < 2: the static threshold t0 keeps both.
    static = two_weight_solver(IP_NET, w, x, y, base_lr=lr, weight_decay=decay, regularization_type="L1",
                               prune_threshold=t0, max_threshold_factor=1.9)
    static.step(1)
    assert np.all(weights(static) != 0)


def test_l1_threshold_uses_the_momentum_step():
    t0, f, lr, decay, momentum = 1e-3, 4.0, 0.05, 0.01, 0.9
    w, x, y = np.array([0.3, -0.002]), np.array([1.0, 0.0]), 0.1
    history = np.zeros(2)
    solver = two_weight_solver(IP_NET, w, x, y, base_lr=lr, weight_decay=decay, momentum=momentum,
                               regularization_type="L1", prune_threshold=t0, max_threshold_factor=f)
    for i in range(12):
        history = momentum * history + lr * (gradient(w, x, y) + decay * np.sign(w))
        w = w - history
        if i == 0:     # w[1] = -0.0015: above t0, below its threshold f·t0/(1 + f·0.0005) = 0.00399
            assert t0 < abs(w[1]) <= f * t0 / (1 + f * abs(history[1]))
        w = np.where(np.abs(w) <= f * t0 / (1 + f * np.abs(history)), 0.0, w)
        solver.step(1)
        np.testing.assert_allclose(weights(solver), w, rtol=2e-5, atol=1e-7)
    # The history keeps moving the pruned weight, and the threshold keeps it at zero.
    assert w[1] == 0 and weights(solver)[1] == 0 and w[0] != 0


# -- ISTA ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("w,x,expected", [
    ([0.5, 0.003], [1.0, 0.0], [0.448, 0.001]),      # update: [0.449, 0.002]; shrink by 0.001
    ([-0.003, 0.0015], [0.0, 0.0], [-0.001, 0.0]),   # update: [-0.002, 0.0005]; 0.0005 <= 0.001 -> 0
])
def test_ista_soft_threshold_pulls_twice(w, x, expected):
    """lr 0.1, decay 0.01: the gradient's sign term moves w by 0.001 and the soft threshold
    (rate·local_decay = 0.001) by another 0.001 (SkimCaffe's double L1 pull)."""
    solver = two_weight_solver(IP_NET, w, x, 0.0, base_lr=0.1, weight_decay=0.01, regularization_type="ISTA")
    solver.step(1)
    np.testing.assert_allclose(weights(solver), expected, rtol=1e-5, atol=1e-8)
    assert (weights(solver) == 0).sum() == expected.count(0.0)


def test_ista_threshold_uses_global_rate_and_local_decay():
    """lr_mult 2, decay_mult 3: the step uses 2·lr·(g + 3·decay·sign w), the shrinkage lr·3·decay."""
    spec = "param { lr_mult: 2 decay_mult: 3 }"
    solver = two_weight_solver(IP_NET, [-0.02, 0.01], [0.0, 0.0], 0.0, spec, base_lr=0.1, weight_decay=0.01,
                               regularization_type="ISTA")
    solver.step(1)
    # step 0.2·0.03 = 0.006 -> [-0.014, 0.004]; shrink 0.1·0.03 = 0.003 -> [-0.011, 0.001]
    np.testing.assert_allclose(weights(solver), [-0.011, 0.001], rtol=1e-5)


# -- DNS -------------------------------------------------------------------------------------------------
def simulate_dns(w, x, y, lr, decay, t0, steps, l2=False, shadow=None):
    """shadow -= lr·(g + decay·(w or sign w)); w = shadow with |shadow| <= t0 zeroed."""
    w = np.asarray(w, np.float64)
    shadow = w.copy() if shadow is None else shadow
    trace = []
    for _ in range(steps):
        shadow = shadow - lr * (gradient(w, x, y) + decay * (w if l2 else np.sign(w)))
        w = np.where(np.abs(shadow) <= t0, 0.0, shadow)
        trace.append((w, shadow))
    return trace


@pytest.mark.parametrize("reg", ["L1_DNS", "L2_DNS"])
def test_dns_prunes_then_regrows_on_conv_weights(reg, caplog):
    caplog.set_level(logging.INFO, logger="pyskim")
    w, x, y, lr, decay, t0 = [0.5, -0.01], [1.0, 1.0], 2.0, 0.01, 0.001, 0.01
    trace = simulate_dns(w, x, y, lr, decay, t0, 6, l2=reg == "L2_DNS")
    assert trace[0][0][1] == 0 and trace[1][0][1] != 0      # pruned at step 1, back at step 2
    solver = two_weight_solver(CONV_NET, w, x, y, base_lr=lr, weight_decay=decay, regularization_type=reg,
                               prune_threshold=t0)
    for i, (expected, shadow) in enumerate(trace):
        solver.step(1)
        got = weights(solver)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(solver.regularizers[reg].shadows[0].ravel(), shadow, rtol=1e-5, atol=1e-8)
        if i == 0:
            assert got[1] == 0.0
    assert caplog.messages.count("DNS initialized") == 1


def test_dns_shadow_is_reinitialized_after_restore(tmp_path):
    """SkimCaffe does not save the shadow: after restore it restarts from the (thresholded) weights."""
    w, x, y, lr, decay, t0 = [0.5, -0.01], [1.0, 1.0], 2.0, 0.01, 0.001, 0.01
    fields = {"base_lr": lr, "weight_decay": decay, "regularization_type": "L1_DNS", "prune_threshold": t0,
              "snapshot_prefix": str(tmp_path / "dns")}
    solver = two_weight_solver(CONV_NET, w, x, y, **fields)
    solver.step(1)
    (w1, _), = simulate_dns(w, x, y, lr, decay, t0, 1)
    _, state = solver.snapshot()
    restored = two_weight_solver(CONV_NET, [0.0, 0.0], x, y, **fields)
    restored.restore(state)
    np.testing.assert_allclose(weights(restored), w1, rtol=1e-6)
    assert restored.regularizers["L1_DNS"].shadows == {}
    restored.step(1)
    (expected, _), = simulate_dns(w1, x, y, lr, decay, t0, 1)     # shadow restarts from w1 (w1[1] = 0)
    np.testing.assert_allclose(weights(restored), expected, rtol=1e-5, atol=1e-8)
    solver.step(1)
    assert not np.allclose(weights(solver), expected)             # the kept shadow gives another value


@pytest.mark.parametrize("dns,plain", [("L1_DNS", "L1"), ("L2_DNS", "L2")])
def test_dns_on_non_4d_params_is_the_plain_type(dns, plain, caplog):
    caplog.set_level(logging.WARNING, logger="pyskim")
    args = ([0.5, 0.00015], [1.0, -0.5], 0.2)
    fields = {"base_lr": 0.1, "weight_decay": 0.001, "momentum": 0.9, "prune_threshold": 1e-3,
              "max_threshold_factor": 3}
    a = two_weight_solver(IP_NET, *args, regularization_type=dns, **fields)
    b = two_weight_solver(IP_NET, *args, regularization_type=plain, **fields)
    a.step(5)
    b.step(5)
    np.testing.assert_array_equal(weights(a), weights(b))
    assert [m for m in caplog.messages if "but not for convolution" in m] == [
        f"{dns} but not for convolution (param 0: [1, 2] behaves as {plain})"]


def test_l1_dns_fallback_uses_the_default_threshold():
    """Plain L1 without threshold fields is BVLC's L1; L1_DNS's L1 fallback prunes at the 1e-4 default."""
    args = ([0.5, 0.00015], [1.0, 0.0], 0.0)
    plain = two_weight_solver(IP_NET, *args, base_lr=0.1, weight_decay=0.001, regularization_type="L1")
    dns = two_weight_solver(IP_NET, *args, base_lr=0.1, weight_decay=0.001, regularization_type="L1_DNS")
    plain.step(1)
    dns.step(1)
    assert weights(plain)[1] == pytest.approx(5e-5, rel=1e-3) and weights(dns)[1] == 0


# -- types, overrides, errors ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", WINOGRAD_TYPES)
def test_winograd_types_are_refused(name):
    with pytest.raises(SolverError, match=f"regularization_type '{name}' is not supported"):
        two_weight_solver(CONV_NET, [1, 1], [1, 1], 0, base_lr=0.1, regularization_type=name)
    with pytest.raises(SolverError, match="not supported"):
        two_weight_solver(CONV_NET, [1, 1], [1, 1], 0, f'param {{ regularization_type: "{name}" }}', base_lr=0.1)


def test_param_spec_override_and_empty_inherits():
    net = """
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 3 dim: 3 } } }
    layer { name: "t" type: "Input" top: "t" input_param { shape { dim: 1 dim: 1 } } }
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
            param { regularization_type: "L1_DNS" } param { regularization_type: "" }
            convolution_param { num_output: 2 kernel_size: 3 } }
    layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip" param { regularization_type: "L2" }
            inner_product_param { num_output: 1 } }
    layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "t" top: "loss" }
    """
    param = caffe_pb2.SolverParameter(base_lr=0.1, lr_policy="fixed", regularization_type="ISTA")
    text_format.Parse(net, param.net_param)
    solver = get_solver(param)
    assert solver.net.params_regularization_type == ["L1_DNS", "", "L2", ""]
    assert [solver.regularizer_of(i).name for i in range(4)] == ["L1_DNS", "ISTA", "L2", "ISTA"]
    assert type(solver.regularizers["L1_DNS"]).__name__ == "L1DNSRegularizer"


# -- connectivity masks ----------------------------------------------------------------------------------
MASK_NET = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 2 dim: 4 dim: 4 } } }
layer { name: "target" type: "Input" top: "target" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" connectivity_mode: %s
        convolution_param { num_output: 4 kernel_size: 2 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip" connectivity_mode: %s
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "target" top: "loss" }
"""
SOLVER_SETTINGS = {
    "SGD": {"base_lr": 0.01, "momentum": 0.9}, "Nesterov": {"base_lr": 0.01, "momentum": 0.9},
    "AdaGrad": {"base_lr": 0.01, "momentum": 0.0},
    "RMSProp": {"base_lr": 0.001, "momentum": 0.0, "rms_decay": 0.98},
    "AdaDelta": {"base_lr": 1.0, "momentum": 0.95, "delta": 1e-6}, "Adam": {"base_lr": 0.001, "momentum": 0.9},
}


def pruned_model(tmp_path, modes=("DISCONNECTED_ELTWISE", "DISCONNECTED_ELTWISE"), tiny=()):
    """A caffemodel of MASK_NET with about half of each weight zero, bias 0 of conv zero, and the
    values in ``tiny`` (layer, flat index, value) set."""
    param = caffe_pb2.NetParameter()
    text_format.Parse(MASK_NET % modes, param)
    net = pyskim.Net(param, pyskim.TRAIN)
    rng = np.random.default_rng(5)
    for name in ("conv", "ip"):
        w = net.params[name][0].data
        w[rng.random(w.shape) < 0.5] = 0
    net.params["conv"][1].data[0] = 0
    for name, index, value in tiny:
        net.params[name][0].data.flat[index] = value
    path = tmp_path / "pruned.caffemodel"
    net.save(str(path))
    return param, net, str(path)


def mask_solver(param, weights_path=None, type_="SGD", **fields):
    p = caffe_pb2.SolverParameter(type=type_, lr_policy="fixed", weight_decay=1e-3, display=0, max_iter=10**6,
                                  random_seed=1)
    p.net_param.CopyFrom(param)
    if weights_path:
        p.weights.append(weights_path)
    for key, value in {**SOLVER_SETTINGS[type_], **fields}.items():
        setattr(p, key, value)
    solver = get_solver(p)
    rng = np.random.default_rng(7)
    solver.net.blobs["data"].data[...] = rng.standard_normal((2, 2, 4, 4))
    solver.net.blobs["target"].data[...] = rng.standard_normal((2, 3))
    return solver


@pytest.mark.parametrize("type_", SOLVER_TYPES)
def test_masks_hold_through_1000_steps(tmp_path, type_):
    param, start, path = pruned_model(tmp_path)
    solver = mask_solver(param, path, type_)
    zeros = {name: start.params[name][0].data == 0 for name in ("conv", "ip")}
    solver.step(1000)
    for name, zero in zeros.items():
        w = solver.net.params[name][0].data
        assert np.all(w[zero] == 0), name
        assert np.all(w[~zero] != start.params[name][0].data[~zero]), name
        np.testing.assert_array_equal(solver.net.params[name][0].connectivity_mask, (~zero).astype(np.float32))
    assert solver.net.params["conv"][1].data[0] != 0          # biases are never masked
    assert getattr(solver.net.params["conv"][1], "connectivity_mask", None) is None
    if type_ == "SGD":   # the mask acts on the step, so the momentum history of masked weights moves
        assert np.any(solver.history[0][zeros["conv"]] != 0)


def test_eltwise_mask_threshold_is_the_solvers_prune_threshold(tmp_path):
    param, _, path = pruned_model(tmp_path, tiny=[("conv", 1, 5e-5), ("ip", 2, -5e-5)])
    default = mask_solver(param, path)                        # prune_threshold default 1e-4
    assert default.net.params["conv"][0].data.flat[1] == 0 and default.net.params["ip"][0].data.flat[2] == 0
    default.step(20)
    assert default.net.params["conv"][0].data.flat[1] == 0 and default.net.params["ip"][0].data.flat[2] == 0
    zero = mask_solver(param, path, prune_threshold=0.0)      # mask = w != 0
    assert zero.net.params["conv"][0].data.flat[1] == np.float32(5e-5)
    zero.step(20)
    assert zero.net.params["conv"][0].data.flat[1] != np.float32(5e-5)


def test_masks_follow_weights_copied_in_before_the_first_step(tmp_path):
    """pycaffe flow: build the solver, then ``solver.net.copy_from``: the first update rebuilds the masks."""
    param, start, path = pruned_model(tmp_path)
    solver = mask_solver(param, None, prune_threshold=0.0)
    solver.net.copy_from(path)
    solver.step(30)
    zero = start.params["conv"][0].data == 0
    assert np.all(solver.net.params["conv"][0].data[zero] == 0)


def test_connected_layers_and_grpwise(tmp_path):
    param, start, path = pruned_model(tmp_path, modes=("DISCONNECTED_GRPWISE", "CONNECTED"))
    w0 = start.params["conv"][0].data.copy()
    w0[:] = np.where(w0 == 0, 0.1, w0)       # no zero except the groups below and one isolated zero
    w0[1] = 0                                  # filter 1: a whole row of the 4 × 8 view
    w0.reshape(4, 8)[:, 3] = 0                 # column 3: (ic 0, kernel position 3)
    w0.reshape(4, 8)[0, 5] = 0                 # isolated zero: not masked
    start.params["conv"][0].data[...] = w0
    start.save(path)
    solver = mask_solver(param, path, prune_threshold=0.0)
    expected = np.ones((4, 8), np.float32)
    expected[1, :] = 0
    expected[:, 3] = 0
    np.testing.assert_array_equal(solver.net.params["conv"][0].connectivity_mask.reshape(4, 8), expected)
    assert getattr(solver.net.params["ip"][0], "connectivity_mask", None) is None
    solver.step(50)
    view = solver.net.params["conv"][0].data.reshape(4, 8)
    assert np.all(view[expected == 0] == 0)
    assert view[0, 5] != 0
    ip_zero = start.params["ip"][0].data == 0                 # CONNECTED: zeros may move
    assert np.any(solver.net.params["ip"][0].data[ip_zero] != 0)


def test_groupwise_mask_per_group():
    w = np.arange(1, 17, dtype=np.float32).reshape(4, 1, 2, 2)   # conv with 2 groups: views 2 × 4 each
    w[0] = 0                         # group 0, row 0
    w[2:, 0, 1, 0] = 0               # group 1, column 2
    w[3, 0, 0, 0] = 0                # isolated (row 2 of its column is not zero)
    mask = sparsity.groupwise_mask(w, group=2)
    expected = np.ones((4, 4), np.float32)
    expected[0] = 0
    expected[2:, 2] = 0
    np.testing.assert_array_equal(mask.reshape(4, 4), expected)
    # As one 4 × 4 group, column 2 is not all zero (row 1 holds 7): only row 0 is masked.
    whole = sparsity.groupwise_mask(w, group=1).reshape(4, 4)
    assert np.all(whole[0] == 0) and np.all(whole[1:] == 1)
    np.testing.assert_array_equal(sparsity.eltwise_mask([0.5, -1e-5, 0.0, 2e-4], 1e-4), [1, 0, 0, 1])


# -- sparsity report -------------------------------------------------------------------------------------
def report_array():
    """W[OC=2][IC=3][k=4]: filter 1 zero, input channel 2 zero, kernel positions 1 and 3 zero."""
    w = np.zeros((2, 3, 2, 2), np.float32)
    w[0, 0].flat[:] = [1, 0, 2, 0]
    w[0, 1].flat[:] = [0, 0, 3, 0]
    return w


def test_sparsity_report_values():
    w = report_array()
    report = sparsity.sparsity_report(w)
    assert report["nnz"] == 3 and report["count"] == 24 and report["density"] == pytest.approx(3 / 24)
    assert report["element"] == pytest.approx(87.5)
    assert report["OC-fiber"] == pytest.approx(75.0)        # 9 of 12 (ic, k) zero for every oc
    assert report["IC-fiber"] == pytest.approx(75.0)        # 6 of 8 (oc, k) zero for every ic
    assert report["kernel-fiber"] == pytest.approx(400 / 6, rel=1e-6)   # 4 of 6 (oc, ic) kernels
    assert report["OC-slice"] == pytest.approx(50.0)        # filter 1
    assert report["IC-slice"] == pytest.approx(100 / 3, rel=1e-6)       # input channel 2
    assert report["kernel-slice"] == pytest.approx(50.0)    # positions 1 and 3
    # measure threshold: |w| <= t counts as zero.
    w[0, 2, 0, 1] = 5e-5
    assert sparsity.slice_sparsity(w, 1) == pytest.approx(0.0)
    assert sparsity.slice_sparsity(w, 1, 1e-4) == pytest.approx(100 / 3, rel=1e-6)
    assert sparsity.element_sparsity(w, 1e-4) == np.float32(87.5)
    assert sparsity.element_sparsity(w) == pytest.approx(2000 / 24)
    assert "OC-fiber" not in sparsity.sparsity_report(np.ones((3, 4)))


def test_layer_densities():
    param = caffe_pb2.NetParameter()
    text_format.Parse(MASK_NET % ("CONNECTED", "CONNECTED"), param)
    net = pyskim.Net(param, pyskim.TRAIN)
    net.params["conv"][0].data[:2] = 0
    rows = sparsity.layer_densities(net)
    assert [r[0] for r in rows] == ["conv", "ip"]
    _, type_, shape, nnz, count, dens = rows[0]
    assert (type_, shape, nnz, count, dens) == ("Convolution", (4, 2, 2, 2), 16, 32, 0.5)


# -- display and init lines ------------------------------------------------------------------------------
def test_display_lines(caplog):
    caplog.set_level(logging.INFO, logger="pyskim")
    param = caffe_pb2.NetParameter()
    text_format.Parse(MASK_NET % ("CONNECTED", "CONNECTED"), param)
    solver = mask_solver(param, None, weight_decay=0.01, display=1, measure_threshold=0.05,
                         max_threshold_factor=10)
    assert "prune_threshold = 0.0001 measure_threshold = 0.05" in caplog.messages
    assert "max_threshold_factor = 10" in caplog.messages
    assert "winograd_adjust_threshold = 1" in caplog.messages
    conv, ip = (solver.net.params[n][0].data.copy() for n in ("conv", "ip"))
    before = [b.data.astype(np.float64) for b in solver.net.learnable_params]
    caplog.clear()
    solver.step(1)
    msgs = caplog.messages
    start = msgs.index("Iteration 0, lr = 0.01")
    values = f"{sparsity.element_sparsity(conv, 0.05):g}\t{sparsity.element_sparsity(ip, 0.05):g}\t"
    assert msgs[start + 1] == "    Element Sparsity %: \n" + values
    names = [f"        {n}-{k} Sparsity %: " for k in ("fiber", "slice") for n in ("OC", "IC", "kernel")]
    for i, header in enumerate(names):
        head, value = msgs[start + 2 + i].split("\n")
        assert head == header and re.fullmatch(r"[\d.e+-]+\t", value)
    assert msgs[start + 2].split("\n")[1] == f"{sparsity.fiber_sparsity(conv, 0, 0.05):g}\t"
    last = msgs[start + 8]
    m = re.fullmatch(r"    Total regularization terms: (\S+) loss\+regular\. : (\S+)", last)
    assert m, last
    penalty = sum(0.01 / 2 * float((w ** 2).sum()) for w in before)     # L2 on every param (decay_mult 1)
    assert float(m.group(1)) == pytest.approx(penalty, rel=1e-4)
    loss = float(re.search(r"loss = (\S+)$", msgs[0]).group(1))
    assert float(m.group(2)) == pytest.approx(loss + penalty, rel=1e-4)


def test_total_regularization_l1():
    solver = two_weight_solver(IP_NET, [0.5, -0.25], [1.0, 1.0], 0.0, base_lr=0.1, weight_decay=0.02,
                               regularization_type="L1")
    solver.step(1)
    assert solver.total_regularization_term == pytest.approx(0.02 * 0.75)


# -- the published SkimCaffe prototxts ------------------------------------------------------------------
@pytest.fixture
def skim_models(shared_dir):
    """SkimCaffe's published models, prototxts and solvers (``../shared/models/skimcaffe/models``)."""
    return shared_dir / "models" / "skimcaffe" / "models"


def dummy_data(net_path, batch, size):
    """The net with every Data layer replaced by DummyData: (batch, 3, size, size) images and labels 0."""
    net = read_net_text(str(net_path))
    for layer in net.layer:
        if layer.type == "Data":
            layer.type = "DummyData"
            layer.ClearField("data_param")
            layer.ClearField("transform_param")
            dummy = layer.dummy_data_param
            dummy.shape.add().dim.extend([batch, 3, size, size])
            dummy.shape.add().dim.extend([batch])
            dummy.data_filler.add(type="gaussian", std=1.0)
            dummy.data_filler.add(type="constant", value=0.0)
    return net


def published_solver(models, solver_file, net_file, batch, size, **fields):
    """The solver ``models/solver_file`` on ``models/net_file`` with DummyData, CPU, no snapshots or tests."""
    p = read_solver_text(str(models / solver_file))
    p.ClearField("net")
    p.net_param.CopyFrom(dummy_data(models / net_file, batch, size))
    for name in ("test_iter", "test_interval", "snapshot_prefix"):
        p.ClearField(name)
    p.snapshot, p.display, p.random_seed = 0, 1, 3
    p.solver_mode = caffe_pb2.SolverParameter.CPU
    for key, value in fields.items():
        setattr(p, key, value)
    return get_solver(p)


def effective_types(solver):
    """Layer name -> the regularization type of each of its params, as the solver resolved them."""
    net, types = solver.net, {}
    names, learnable_ids = net.layer_names(), net.learnable_param_ids()
    for k, (layer_index, _) in enumerate(net.param_layer_indices()):
        regularizer = solver.regularizer_of(learnable_ids[k])
        types.setdefault(names[layer_index], []).append(regularizer.name)
    return types


CAFFENET_LOGS = "bvlc_reference_caffenet/logs/"
CAFFENET_PRUNE = CAFFENET_LOGS + "acc_57.5_0.001_5e-5_ft_0.001_5e-5/0.001_5e-05_0.0001_10_0_0_0_0_Sun_Dec_25_18-16-56_PST_2016/"
CAFFENET_FT = CAFFENET_LOGS + "acc_57.5_0.001_5e-5_ft_0.001_5e-5/0.001_5e-05_0_1_0_0_0_0_Sun_Jan__8_07-35-54_PST_2017/"
CAFFENET_FC = CAFFENET_LOGS + "fc_0.1_ft_caffenet_0.57368_5e-05/0.001_0.00005_0.0_0.0_0.0_Tue_May_17_08-20-09_PDT_2016/"


@pytest.mark.parametrize("solver_file,net_file,fields", [
    # The published prune run (L1, t0 1e-4, factor 10) on the fc_0.1 net (conv2-5, fc6, fc7 L1).
    (CAFFENET_PRUNE + "solver.prototxt", CAFFENET_FC + "train_val_fc_0.1.prototxt", {}),
    # template_l1_solver with train_script.sh's settings, on train_val_convl1l2 (conv2-5 L1).
    ("bvlc_reference_caffenet/template_l1_solver.prototxt", "bvlc_reference_caffenet/train_val_convl1l2.prototxt",
     {"base_lr": 1e-3, "weight_decay": 5e-5, "prune_threshold": 1e-4, "max_threshold_factor": 10}),
], ids=["caffenet_prune_fc0.1", "caffenet_convl1l2"])
def test_caffenet_prune_stage_trains(skim_models, solver_file, net_file, fields):
    """At 67×67 input (pool5 1×1, fc6 256 → 4096), batch 2: the L1 layers lose their small weights
    under the step-dependent threshold (about f·t0 = 1e-3 at these tiny steps), the L2 ones do not."""
    solver = published_solver(skim_models, solver_file, net_file, 2, 67, **fields)
    types = effective_types(solver)
    assert types["conv1"][0] == "L2" and types["conv3"][0] == "L1" and types["fc8"][0] == "L2"
    small = {n: float(np.mean(np.abs(solver.net.params[n][0].data) <= 1e-3)) for n in ("conv1", "conv3")}
    assert small["conv3"] > 0.05 and small["conv1"] > 0.05
    solver.step(2)
    assert np.isfinite(solver.smoothed_loss)
    w3, w1 = solver.net.params["conv3"][0].data, solver.net.params["conv1"][0].data
    assert np.mean(w3 == 0) > 0.5 * small["conv3"]
    assert np.mean(w1 == 0) < 1e-3


def test_caffenet_finetune_keeps_pruned_weights(skim_models):
    """The published fine-tune run: L2, prune_threshold 0, DISCONNECTED_ELTWISE on conv1-5."""
    solver = published_solver(skim_models, CAFFENET_FT + "solver.prototxt",
                              "bvlc_reference_caffenet/train_val_ft.prototxt", 2, 67, base_lr=0.01)
    assert solver.param.prune_threshold == 0 and solver.param.regularization_type == "L2"
    rng = np.random.default_rng(0)
    zeros = {}
    for name in ("conv2", "conv5", "fc6"):
        w = solver.net.params[name][0].data
        zeros[name] = rng.random(w.shape) < 0.6
        w[zeros[name]] = 0
    solver.weights_changed()
    solver.step(2)
    for name in ("conv2", "conv5"):
        assert np.all(solver.net.params[name][0].data[zeros[name]] == 0), name
    assert np.any(solver.net.params["fc6"][0].data[zeros["fc6"]] != 0)     # fc6-8 are not masked


GOOGLENET_LOGS = "bvlc_googlenet/logs/gesl_0.686639_0.001_0.00005_ft_0.001_0.0001/"
GESL = {"conv1/7x7_s2": "L2", "conv2/3x3": "L1", "inception_3a/1x1": "L2", "inception_3a/5x5": "L1",
        "loss3/classifier": "L1"}
BIG_NETS = [
    pytest.param(GOOGLENET_LOGS + "0.001_0.00005_0.0001_10_0_Thu_Nov__3_18-19-01_PDT_2016/solver.prototxt",
                 "bvlc_googlenet/train_val_gesl.prototxt", GESL, 0, id="googlenet_gesl"),
    pytest.param("resnet/logs/0.0001_0.00005_0.0001_10_0_0_0_0_2017-04-02-22-29-02/solver.prototxt",
                 "resnet/ResNet-50-train-val-gesl.prototxt",
                 {"conv1": "L2", "res2a_branch2a": "L2", "res2a_branch2b": "L1", "fc1000": "L1"}, 0,
                 id="resnet50_gesl", marks=pytest.mark.slow),
    pytest.param(GOOGLENET_LOGS + "0.001_0.0001_0.0001_1_0_Wed_Nov__9_07-43-55_PST_2016/solver.prototxt",
                 "bvlc_googlenet/train_val_ft.prototxt", {"conv2/3x3": "L2"}, 24, id="googlenet_ft",
                 marks=pytest.mark.slow),
    pytest.param("bvlc_googlenet/template_l1_long_solver.prototxt", "bvlc_googlenet/train_val_esl.prototxt",
                 {"inception_3a/1x1": "L1"}, 0, id="googlenet_esl", marks=pytest.mark.slow),
    pytest.param(CAFFENET_PRUNE + "solver.prototxt", CAFFENET_FC + "train_val_fc_0.1.prototxt",
                 {"conv1": "L2", "fc6": "L1"}, 0, id="caffenet_prune_227", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("solver_file,net_file,expected_types,masked", BIG_NETS)
def test_big_published_nets_train(skim_models, solver_file, net_file, expected_types, masked):
    """GoogLeNet / ResNet-50 (224×224) and CaffeNet (227×227) at batch 1, two iterations (GoogLeNet GESL
    runs by default; the others take 5-15 s each and are marked slow)."""
    solver = published_solver(skim_models, solver_file, net_file, 1, 227 if "caffenet" in net_file else 224)
    types = effective_types(solver)
    for name, expected in expected_types.items():
        assert types[name][0] == expected, name
    assert {t for ts in types.values() for t in ts} <= {"L1", "L2"}
    has_mask = [b for b in solver.net.learnable_params if getattr(b, "connectivity_mask", None) is not None]
    assert len(has_mask) == masked
    solver.step(2)
    assert np.isfinite(solver.smoothed_loss)
