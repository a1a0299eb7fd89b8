"""Solvers: every ../shared/conformance/solvers case against BVLC Caffe, plus unit tests of the lr
policies, snapshots (both formats, atomic writes), restore, NaN handling and configuration errors."""
import logging
import math
import os
import re

import numpy as np
import pytest
from conformance import CONFORMANCE, _compare, manifest_cases
from google.protobuf import text_format

import pyskim
from pyskim.errors import ModelFileError, SolverError
from pyskim.io.protofiles import read_binary
from pyskim.io.upgrade import read_solver_text
from pyskim.proto import caffe_pb2
from pyskim.solvers import REGULARIZERS, Regularizer, get_solver, register_regularizer

SOLVER_CASES = manifest_cases("solver") if (CONFORMANCE / "manifest.json").exists() else []
ITER_RE = re.compile(r"^Iteration (\d+) \([-+.\deinf]+ iter/s, [-+.\de]+s/\d+ iters\), loss = (\S+)$")
LR_RE = re.compile(r"^Iteration (\d+), lr = (\S+)$")
TEST_AT_RE = re.compile(r"^Iteration (\d+), Testing net \(#0\)$")
TEST_OUT_RE = re.compile(r"^    Test net output #\d+: (\S+) = (\S+)")


# -- conformance harness -------------------------------------------------------------------------------
class Recorder:
    """Collects the train net's loss blob after every forward pass and the solver's log lines."""

    def __init__(self):
        self.forward_loss, self.messages = [], []
        self.handler = logging.Handler(logging.INFO)
        self.handler.emit = lambda record: self.messages.append(record.getMessage())
        logger = logging.getLogger("pyskim")
        self.level = logger.level
        logger.addHandler(self.handler)
        logger.setLevel(logging.INFO)

    def attach(self, solver):
        net = solver.net
        last = len(net.layers) - 1
        net.after_forward(lambda i: self.forward_loss.append(float(net.blobs["loss"].data)) if i == last else None)

    def close(self):
        logging.getLogger("pyskim").removeHandler(self.handler)
        logging.getLogger("pyskim").setLevel(self.level)

    def matches(self, regex):
        return [m.groups() for m in map(regex.match, self.messages) if m]


def _solver_for_case(tmp_path, prefix="snap"):
    param = read_solver_text("solver.prototxt")
    param.snapshot_prefix = str(tmp_path / prefix)
    solver = get_solver(param)
    solver.net.copy_from("init.caffemodel")
    return solver


def _compare_params(solver, params_npz, tol, what):
    for name, blobs in solver.net.params.items():
        for i, blob in enumerate(blobs):
            _compare(f"{what} {name}/{i}", blob.data, params_npz[f"{name}/{i}"], tol)


def _compare_model_file(solver, path, tol, what):
    reference = read_binary(path, caffe_pb2.NetParameter())
    expected = {f"{layer.name}/{i}": np.asarray(b.data, np.float32).reshape(tuple(b.shape.dim))
                for layer in reference.layer for i, b in enumerate(layer.blobs)}
    _compare_params(solver, expected, tol, what)


def _compare_state(solver, state_path, tol, what):
    expected = read_binary(state_path, caffe_pb2.SolverState())
    assert solver.iter == expected.iter and solver.current_step == expected.current_step
    assert len(solver.history) == len(expected.history)
    for i, (got, blob) in enumerate(zip(solver.history, expected.history)):
        _compare(f"{what} history {i}", got, np.asarray(blob.data, np.float32).reshape(got.shape), tol)


def _check_traces(case, rec, trace, first_iter=0):
    tol = case["tolerance"]
    steps, iter_size = case["steps"], case["iter_size"]
    got = np.array(rec.forward_loss, dtype=np.float32).reshape(-1, iter_size)
    _compare("forward_loss", got, trace["forward_loss"][first_iter:first_iter + steps], tol["forward_loss"])
    lrs = rec.matches(LR_RE)
    assert [int(i) for i, _ in lrs] == list(range(first_iter, first_iter + steps))
    np.testing.assert_allclose([float(v) for _, v in lrs], trace["lr"], rtol=tol["lr"]["rtol"])
    losses = rec.matches(ITER_RE)
    assert [int(i) for i, _ in losses] == [int(i) for i, _ in lrs]
    # The logged loss has 6 significant digits on both sides.
    logged_tol = {"rtol": tol["forward_loss"]["rtol"] + 1e-5, "atol": tol["forward_loss"]["atol"]}
    _compare("logged loss", [float(v) for _, v in losses], trace["loss"], logged_tol)


@pytest.mark.parametrize("case", SOLVER_CASES, ids=[c["name"] for c in SOLVER_CASES])
def test_solver_case(case, tmp_path, monkeypatch, shared_dir):
    folder = CONFORMANCE / case["path"]
    monkeypatch.chdir(folder)
    tol = case["tolerance"]
    trace = np.load("trace.npz", allow_pickle=False)
    rec = Recorder()
    try:
        if case["name"] == "resume":
            _run_resume(case, tmp_path, rec, trace)
            return
        solver = _solver_for_case(tmp_path)
        rec.attach(solver)
        solver.step(1)
        _compare_model_file(solver, "step1.caffemodel", tol["final_params"], "after 1 step")
        solver.step(case["steps"] - 1)
        _check_traces(case, rec, trace)
        _compare_params(solver, np.load("final_params.npz"), tol["final_params"], "final")
        model_file, state_file = solver.snapshot()
        _compare_state(solver, "final.solverstate", tol["final_params"], "final")
        assert read_binary(state_file, caffe_pb2.SolverState()).learned_net == model_file
        if "test_iter_at" in trace:
            at = [int(i) for (i,) in rec.matches(TEST_AT_RE)]
            np.testing.assert_array_equal(at, trace["test_iter_at"])
            outputs = rec.matches(TEST_OUT_RE)
            accuracy = [float(v) for name, v in outputs if name == "accuracy"]
            loss = [float(v) for name, v in outputs if name == "loss"]
            np.testing.assert_allclose(accuracy, trace["test_accuracy"], rtol=1e-6)
            _compare("test loss", loss, trace["test_loss"],
                     {"rtol": tol["forward_loss"]["rtol"] + 1e-5, "atol": tol["forward_loss"]["atol"]})
        if case["name"] == "sgd_param_mults":
            init = pyskim.Net("net.prototxt", pyskim.TRAIN, weights="init.caffemodel")
            for got, before in zip(solver.net.params["conv1"], init.params["conv1"]):
                np.testing.assert_array_equal(got.data, before.data)
        if case["name"] == "sgd_clip_gradients":
            assert any(m.startswith("Gradient clipping: scaling down gradients (L2 norm ") for m in rec.messages)
        if case["name"] == "sgd_multistep":
            assert [m for m in rec.messages if m.startswith("MultiStep")] == [
                f"MultiStep Status: Iteration {i}, step = {k}" for k, i in enumerate((8, 15, 25), 1)]
    finally:
        rec.close()


def _run_resume(case, tmp_path, rec, trace):
    """README §2: step(1), step(9) (snapshot at 10), then a new solver restores snap_iter_10 and steps
    10 more; its Data layer starts again at record 0."""
    tol = case["tolerance"]["final_params"]
    first = _solver_for_case(tmp_path)
    rec.attach(first)
    first.step(1)
    first.step(9)
    prefix = tmp_path / "snap_iter_10"
    assert os.path.exists(f"{prefix}.caffemodel") and os.path.exists(f"{prefix}.solverstate")
    _compare_model_file(first, "snap_iter_10.caffemodel", tol, "snapshot 10")
    _compare_state(first, "snap_iter_10.solverstate", tol, "snapshot 10")
    second = _solver_for_case(tmp_path)
    rec.attach(second)
    second.restore(f"{prefix}.solverstate")
    assert second.iter == 10
    second.step(10)
    assert os.path.exists(tmp_path / "snap_iter_20.solverstate")
    _check_traces(dict(case, steps=20), rec, trace)
    _compare_params(second, np.load("final_params.npz"), tol, "final")
    _compare_state(second, "final.solverstate", tol, "final")
    # Restoring Caffe's own snapshot (learned_net is relative to the case folder) gives the same run.
    third = _solver_for_case(tmp_path, prefix="third")
    third.restore("snap_iter_10.solverstate")
    third.step(10)
    _compare_params(third, np.load("final_params.npz"), tol, "final from Caffe's snapshot")


# -- a tiny net for unit tests ------------------------------------------------------------------------
TINY_NET = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 3 } } }
layer { name: "target" type: "Input" top: "target" input_param { shape { dim: 4 dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" %s
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 }
                              bias_filler { type: "constant" value: 0.1 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "target" top: "loss" }
"""


def tiny_param(tmp_path=None, ip_extra="", **fields):
    param = caffe_pb2.SolverParameter(base_lr=0.1, lr_policy="fixed", momentum=0.9, weight_decay=0.01,
                                      display=1, max_iter=10, random_seed=3)
    text_format.Parse(TINY_NET % ip_extra, param.net_param)
    if tmp_path is not None:
        param.snapshot_prefix = str(tmp_path / "tiny")
    for key, value in fields.items():
        if isinstance(value, list):
            getattr(param, key).extend(value)
        else:
            setattr(param, key, value)
    return param


def tiny_solver(tmp_path=None, cls=None, ip_extra="", stop_on_nan=False, **fields):
    param = tiny_param(tmp_path, ip_extra, **fields)
    solver = (cls or get_solver)(param, stop_on_nan=stop_on_nan)
    rng = np.random.default_rng(0)
    solver.net.blobs["data"].data[...] = rng.standard_normal((4, 3))
    solver.net.blobs["target"].data[...] = rng.standard_normal((4, 2))
    return solver


def _weights(solver):
    return [blob.data.copy() for blob in solver.net.learnable_params]


# -- learning-rate policies ----------------------------------------------------------------------------
LR_CASES = [
    ("fixed", {}, lambda it: 0.1),
    ("step", {"gamma": 0.5, "stepsize": 4}, lambda it: 0.1 * 0.5 ** (it // 4)),
    ("exp", {"gamma": 0.95}, lambda it: 0.1 * 0.95 ** it),
    ("inv", {"gamma": 0.1, "power": 0.75}, lambda it: 0.1 * (1 + 0.1 * it) ** -0.75),
    ("poly", {"power": 2.0, "max_iter": 30}, lambda it: 0.1 * (1 - it / 30) ** 2),
    ("sigmoid", {"gamma": 0.3, "stepsize": 15}, lambda it: 0.1 / (1 + math.exp(-0.3 * (it - 15)))),
]


@pytest.mark.parametrize("policy,fields,formula", LR_CASES, ids=[c[0] for c in LR_CASES])
def test_lr_policy_formula(policy, fields, formula):
    solver = tiny_solver(lr_policy=policy, **fields)
    for it in (0, 1, 3, 4, 9, 15, 22, 29):
        solver.iter = it
        rate = solver.get_learning_rate()
        assert isinstance(rate, np.float32)
        assert rate == pytest.approx(formula(it), rel=1e-5), (policy, it)  # float32 as Caffe


def test_lr_multistep_advances_one_step_per_call(caplog):
    caplog.set_level(logging.INFO, logger="pyskim")
    solver = tiny_solver(lr_policy="multistep", gamma=0.3, stepvalue=[8, 15, 25])
    for it in range(30):
        solver.iter = it
        expected = 0.1 * 0.3 ** sum(it >= v for v in (8, 15, 25))
        assert solver.get_learning_rate() == pytest.approx(expected, rel=1e-6)
    assert solver.current_step == 3
    assert "MultiStep Status: Iteration 15, step = 2" in caplog.messages


def test_lr_policy_errors():
    with pytest.raises(SolverError, match="Unknown learning rate policy"):
        tiny_solver(lr_policy="cosine")
    solver = tiny_solver(lr_policy="step", gamma=0.5)
    with pytest.raises(SolverError, match="stepsize"):
        solver.get_learning_rate()


# -- the update pipeline -------------------------------------------------------------------------------
def _one_step_expected(solver, rule):
    """Run forward/backward by hand and return the weights after one update by ``rule(w, g)``."""
    net = solver.net
    net.clear_param_diffs()
    net.forward_from_to(0, len(net.layers) - 1)
    net.backward_from_to(len(net.layers) - 1, 0)
    expected = [rule(b.data.astype(np.float64), b.diff.astype(np.float64), i)
                for i, b in enumerate(net.learnable_params)]
    net.clear_param_diffs()
    return expected


@pytest.mark.parametrize("reg", ["L2", "L1"])
def test_regularization_first_step(reg):
    solver = tiny_solver(regularization_type=reg, momentum=0.0)
    penalty = (lambda w: w) if reg == "L2" else np.sign
    expected = _one_step_expected(solver, lambda w, g, i: w - 0.1 * (g + 0.01 * penalty(w)))
    solver.step(1)
    for got, want in zip(_weights(solver), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_param_spec_regularization_type_overrides_solver():
    extra = 'param { regularization_type: "L1" decay_mult: 2 } param { lr_mult: 2 decay_mult: 0 }'
    solver = tiny_solver(ip_extra=extra, regularization_type="L2", momentum=0.0)
    assert solver.net.params_regularization_type == ["L1", ""]
    assert type(solver.regularizers["L1"]).__name__ == "L1Regularizer"

    def rule(w, g, i):
        return w - 0.1 * (g + 0.02 * np.sign(w)) if i == 0 else w - 0.2 * g
    expected = _one_step_expected(solver, rule)
    solver.step(1)
    for got, want in zip(_weights(solver), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_unknown_regularization_type():
    with pytest.raises(SolverError, match="Unknown regularization type: 'L3'"):
        tiny_solver(regularization_type="L3")
    with pytest.raises(SolverError, match="L0"):
        tiny_solver(ip_extra='param { regularization_type: "L0" }')


def test_regularizer_hooks_plug_in(monkeypatch):
    calls = []

    class Probe(Regularizer):
        def regularize(self, param_id, blob, local_decay):
            calls.append(("regularize", param_id, float(local_decay)))

        def before_update(self, param_id, blob):
            calls.append(("before", param_id))

        def after_update(self, param_id, blob, rate, local_decay):
            blob.data[np.abs(blob.data) < 0.2] = 0
            calls.append(("after", param_id, float(rate)))

    monkeypatch.setitem(REGULARIZERS, "PROBE", None)          # removed again after the test
    register_regularizer("PROBE", replaces="PROBE")(Probe)
    solver = tiny_solver(regularization_type="PROBE", ip_extra='param { } param { decay_mult: 0 }')
    solver.step(1)
    assert calls == [("regularize", 0, pytest.approx(0.01)), ("before", 0), ("after", 0, pytest.approx(0.1)),
                     ("before", 1), ("after", 1, pytest.approx(0.1))]
    assert not np.any((np.abs(solver.net.learnable_params[0].data) < 0.2) &
                      (solver.net.learnable_params[0].data != 0))


def test_iter_size_accumulates_and_normalizes():
    one = tiny_solver(momentum=0.0, weight_decay=0.0)
    two = tiny_solver(momentum=0.0, weight_decay=0.0, iter_size=2)
    one.step(1)
    two.step(1)
    for a, b in zip(_weights(one), _weights(two)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_clip_gradients_bounds_the_step(caplog):
    caplog.set_level(logging.INFO, logger="pyskim")
    solver = tiny_solver(momentum=0.0, weight_decay=0.0, clip_gradients=1e-3, base_lr=1.0)
    before = _weights(solver)
    solver.step(1)
    steps = [w0 - w1 for w0, w1 in zip(before, _weights(solver))]
    assert math.sqrt(sum(float((s.astype(np.float64) ** 2).sum()) for s in steps)) == pytest.approx(1e-3, rel=1e-4)
    assert any("Gradient clipping: scaling down gradients" in m for m in caplog.messages)


@pytest.mark.parametrize("type_", ["SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"])
def test_every_solver_type_trains(type_):
    momentum = 0.0 if type_ in ("AdaGrad", "RMSProp") else 0.9
    solver = tiny_solver(type=type_, momentum=momentum, base_lr=1.0 if type_ == "AdaDelta" else 0.05)
    assert type(solver).type == type_
    history = 2 if type_ in ("AdaDelta", "Adam") else 1
    assert len(solver.history) == history * len(solver.net.learnable_params)
    first = float(solver.net.forward_from_to(0, 3))
    solver.step(20)
    assert float(solver.net.forward_from_to(0, 3)) < first


def test_momentum_rejected_for_adagrad_and_rmsprop():
    with pytest.raises(SolverError, match="Momentum cannot be used with AdaGrad"):
        tiny_solver(type="AdaGrad")
    with pytest.raises(SolverError, match="Momentum cannot be used with RMSProp"):
        tiny_solver(type="RMSProp")


# -- step / solve / logging ----------------------------------------------------------------------------
def test_display_lines_and_average_loss(caplog):
    caplog.set_level(logging.INFO, logger="pyskim")
    solver = tiny_solver(average_loss=3, display=2)
    losses = []
    net = solver.net
    net.after_forward(lambda i: losses.append(float(net.blobs["loss"].data)) if i == 3 else None)
    solver.step(6)
    shown = [(int(i), float(v)) for i, v in (ITER_RE.match(m).groups() for m in caplog.messages if ITER_RE.match(m))]
    assert [i for i, _ in shown] == [0, 2, 4]
    for it, value in shown:
        window = losses[max(0, it - 2):it + 1]
        assert value == pytest.approx(np.mean(window), rel=1e-5)
    assert any(re.match(r"^    Train net output #0: loss = \S+ \(\* 1 = \S+ loss\)$", m) for m in caplog.messages)
    assert [m for m in caplog.messages if LR_RE.match(m)] == ["Iteration 0, lr = 0.1", "Iteration 2, lr = 0.1",
                                                              "Iteration 4, lr = 0.1"]


def test_callbacks_and_share_weights():
    solver = tiny_solver()
    events = []
    solver.add_callback(lambda: events.append("start"), lambda: events.append("ready"))
    solver.step(2)
    assert events == ["start", "ready"] * 2 and solver.iter == 2
    other = pyskim.Net(solver.param.net_param, pyskim.TEST)
    solver.share_weights(other)
    np.testing.assert_array_equal(other.params["ip"][0].data, solver.net.params["ip"][0].data)
    assert other.params["ip"][0].shares_data_with(solver.net.params["ip"][0])
    solver.param.base_lr = 0.5
    solver.step(1)
    assert solver.lr == np.float32(0.5)


def test_solve_snapshots_and_tests(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="pyskim")
    solver = tiny_solver(tmp_path, max_iter=4, test_iter=[2], test_interval=2, snapshot=3)
    assert len(solver.test_nets) == 1 and solver.test_nets[0].phase == pyskim.TEST
    solver.solve()
    assert solver.iter == 4
    assert (tmp_path / "tiny_iter_3.caffemodel").exists() and (tmp_path / "tiny_iter_4.solverstate").exists()
    tests = [m for m in caplog.messages if TEST_AT_RE.match(m)]
    assert tests == [f"Iteration {i}, Testing net (#0)" for i in (0, 2, 4)]
    assert "Iteration 4, loss = " + f"{float(solver.smoothed_loss):g}" in caplog.messages
    assert caplog.messages[-1] == "Optimization Done."
    assert solver.mean_scores[0] and solver.test_nets[0].params["ip"][0].shares_data_with(
        solver.net.params["ip"][0])


def test_nan_loss(caplog):
    caplog.set_level(logging.INFO, logger="pyskim")
    solver = tiny_solver(stop_on_nan=True)
    solver.net.blobs["data"].data[0, 0] = np.nan
    before = _weights(solver)
    solver.step(5)
    assert solver.iter == 0 and solver.requested_early_exit
    for a, b in zip(before, _weights(solver)):
        np.testing.assert_array_equal(a, b)
    assert "Iteration 0 (" in caplog.messages[-3] and caplog.messages[-3].endswith("loss = nan")
    assert "stop_on_nan" in caplog.messages[-1]
    caplog.clear()
    plain = tiny_solver()
    plain.net.blobs["data"].data[0, 0] = np.nan
    plain.step(3)
    assert plain.iter == 3 and not plain.requested_early_exit
    assert np.isnan(plain.net.learnable_params[0].data).any()
    assert sum(m.endswith("loss = nan") for m in caplog.messages) == 3


# -- snapshots and restore -----------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["BINARYPROTO", "HDF5"])
@pytest.mark.parametrize("type_", ["SGD", "Adam"])
def test_snapshot_restore_round_trip(tmp_path, fmt, type_):
    fields = {"type": type_, "snapshot_format": getattr(caffe_pb2.SolverParameter, fmt),
              "lr_policy": "multistep", "gamma": 0.5, "stepvalue": [1, 2]}
    solver = tiny_solver(tmp_path, **fields)
    solver.step(3)
    model_file, state_file = solver.snapshot()
    ext = ".h5" if fmt == "HDF5" else ""
    assert model_file == str(tmp_path / "tiny_iter_3.caffemodel") + ext
    assert state_file == str(tmp_path / "tiny_iter_3.solverstate") + ext
    restored = tiny_solver(tmp_path, **fields)
    restored.restore(state_file)
    assert (restored.iter, restored.current_step) == (3, 2)
    for a, b in zip(solver.history, restored.history):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(_weights(solver), _weights(restored)):
        np.testing.assert_array_equal(a, b)
    solver.step(2)
    restored.step(2)
    for a, b in zip(_weights(solver), _weights(restored)):
        np.testing.assert_array_equal(a, b)


def test_snapshot_diff_and_restore_errors(tmp_path):
    solver = tiny_solver(tmp_path, snapshot_diff=True)
    solver.step(1)
    model_file, state_file = solver.snapshot()
    model = read_binary(model_file, caffe_pb2.NetParameter())
    assert len(model.layer[2].blobs[0].diff) == 6
    adam = tiny_solver(tmp_path, type="Adam")
    with pytest.raises(SolverError, match="Incorrect length of history blobs"):
        adam.restore(state_file)
    assert adam.iter == 0
    with pytest.raises(ModelFileError):
        solver.restore(str(tmp_path / "missing.solverstate"))


def _read(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.mark.parametrize("fmt", ["BINARYPROTO", "HDF5"])
def test_snapshot_is_atomic(tmp_path, monkeypatch, fmt):
    solver = tiny_solver(tmp_path, snapshot_format=getattr(caffe_pb2.SolverParameter, fmt))
    files = solver.snapshot()
    contents = [_read(f) for f in files]
    solver.net.learnable_params[0].data[...] += 1
    solver.history[0][...] = 7
    entries = set(os.listdir(tmp_path))

    def crash(*args, **kwargs):
        assert set(os.listdir(tmp_path)) - entries, "no temp file was created"
        raise OSError("simulated crash while writing")

    with monkeypatch.context() as m:
        m.setattr(os, "replace", crash)
        with pytest.raises(OSError, match="simulated crash"):
            solver.snapshot()
    assert [_read(f) for f in files] == contents
    assert set(os.listdir(tmp_path)) == entries, "a temp file was left behind"
    # A crash while writing the state file alone leaves the previous state file intact too.
    with monkeypatch.context() as m:
        m.setattr(os, "replace", crash)
        with pytest.raises(OSError, match="simulated crash"):
            solver.snapshot_solver_state(files[0])
    assert _read(files[1]) == contents[1]
    assert set(os.listdir(tmp_path)) == entries, "a temp file was left behind"


# -- configuration errors ------------------------------------------------------------------------------
def test_unknown_solver_type():
    with pytest.raises(SolverError, match=r"Unknown solver type: Adamax \(known types: AdaDelta, AdaGrad, Adam, "
                                          r"Nesterov, RMSProp, SGD\)"):
        get_solver(tiny_param(type="Adamax"))


def test_solver_without_or_with_two_nets(tmp_path):
    with pytest.raises(SolverError, match="must specify a train net"):
        pyskim.SGDSolver(caffe_pb2.SolverParameter(base_lr=0.1, lr_policy="fixed"))
    param = tiny_param(train_net="other.prototxt")
    with pytest.raises(SolverError, match="more than one"):
        get_solver(param)


def test_test_net_configuration_errors():
    with pytest.raises(SolverError, match="test_interval"):
        tiny_solver(test_iter=[1])
    with pytest.raises(SolverError, match="test_state"):
        tiny_solver(test_iter=[1, 1], test_interval=5, test_state=[caffe_pb2.NetState()])
    two = tiny_solver(test_iter=[1, 1], test_interval=5)
    assert len(two.test_nets) == 2


def test_solver_from_prototxt_paths_relative_to_cwd(tmp_path, monkeypatch):
    (tmp_path / "net.prototxt").write_text(TINY_NET % "")
    (tmp_path / "solver.prototxt").write_text('net: "net.prototxt" base_lr: 0.1 lr_policy: "fixed" '
                                              'type: "Nesterov" snapshot: 5')
    monkeypatch.chdir(tmp_path)
    solver = get_solver("solver.prototxt")
    assert isinstance(solver, pyskim.NesterovSolver)
    assert solver.param.snapshot_prefix == "solver"
    with pytest.raises(SolverError, match="Cannot write to snapshot prefix"):
        get_solver(tiny_param(snapshot=1, snapshot_prefix=str(tmp_path / "missing" / "x")))


def test_net_states_do_not_leak_between_nets():
    param = tiny_param(test_iter=[1, 1], test_interval=5, test_state=[
        caffe_pb2.NetState(stage=["a"]), caffe_pb2.NetState(stage=["b"], level=2)])
    param.train_state.stage.append("t")
    solver = get_solver(param)
    assert not solver.param.net_param.HasField("state")
    assert solver.net.phase == pyskim.TRAIN
    assert [net.phase for net in solver.test_nets] == [pyskim.TEST, pyskim.TEST]
