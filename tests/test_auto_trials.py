"""AUTO's close calls settled by timing (pyskim.sparse.trial, issue 14): the candidate modes take turns
on the next forwards, the model's pick first, every forward gives the dense result, the mode with the
fastest run is kept, a weight change starts again, and the dense weights of a net without backward
are released only once a sparse mode has won.

Expected outputs come from the same net in LOWERED_GEMM / GEMM; which mode wins depends on this
machine's timings, so the tests check that the engine keeps the mode its own recorded runs say is
fastest, whichever it is."""
import numpy as np
import pytest
from one_layer_nets import SPARSE_WINS_PROFILE, one_layer_param, with_dense_twin

from pyskim.perf.model import ConvShape, FcShape, predict
from pyskim.proto import caffe_pb2
from pyskim.sparse import engine as engine_module
from pyskim.sparse import settle_auto_trials
from pyskim.sparse.modes import CCNMM, DENSE, SCONV, auto_candidates, decide_mode
from pyskim.sparse.trial import TRIAL_RUNS, ModeTrial, auto_trials_enabled, set_auto_trials

CONV = caffe_pb2.ConvolutionParameter
IP = caffe_pb2.InnerProductParameter
PROFILE = SPARSE_WINS_PROFILE


pytestmark = pytest.mark.usefixtures("sparse_wins_profile")


@pytest.fixture
def every_call_close(monkeypatch):
    """Every layer the model decides is a close call: all its modes are timed."""
    monkeypatch.setattr(engine_module, "TRIAL_MARGIN", 1e9)


# -- the trial itself -----------------------------------------------------------------------------------

def test_trial_takes_turns_and_keeps_the_fastest_run():
    trial = ModeTrial("key", ("sparse", "dense"), runs=2)
    order = []
    for seconds in (3.0, 2.0, 1.0, 5.0):
        mode = trial.next_mode()
        order.append(mode)
        assert not trial.done
        trial.record(mode, seconds)
    assert order == ["sparse", "dense", "sparse", "dense"]
    assert trial.done and trial.winner == "sparse"            # 1.0 beats 2.0: the fastest run counts


def test_trial_tie_goes_to_the_models_pick():
    trial = ModeTrial("key", ("dense", "sparse", "ccnmm"), runs=1)
    for mode in ("dense", "sparse", "ccnmm"):
        assert trial.next_mode() == mode
        trial.record(mode, 1.0)
    assert trial.winner == "dense"


@pytest.mark.parametrize("modes, runs", [(("dense",), 3), (("dense", "sparse"), 0)])
def test_trial_needs_two_modes_and_a_run(modes, runs):
    with pytest.raises(ValueError, match="two or more modes"):
        ModeTrial("key", modes, runs)


@pytest.mark.parametrize("shape", [ConvShape(batch=2, channels=64, height=14, width=14, num_output=64, kernel=(3, 3),
                                             stride=(1, 1), pad=(1, 1), dilation=(1, 1), group=1),
                                   FcShape(batch=16, num_input=1024, num_output=512)])
@pytest.mark.parametrize("density", [0.01, 0.1, 0.2, 0.3, 0.45])
@pytest.mark.parametrize("margin", [1.0, 1.2, 1.5, 3.0])
def test_candidates_are_the_modes_predicted_within_the_margin(shape, density, margin):
    """The model's pick first, then exactly the other modes predicted at most margin x its time,
    fastest first."""
    columns = 0.8 if isinstance(shape, ConvShape) else None
    modes = auto_candidates(shape, density, columns, PROFILE, margin)
    p = predict(shape, density, PROFILE, columns)
    times = {DENSE: p.dense, SCONV: p.sparse, CCNMM: p.ccnmm}
    assert modes[0] == min(times, key=lambda m: (times[m], m != DENSE))
    for mode in (DENSE, SCONV) if isinstance(shape, FcShape) else (DENSE, SCONV, CCNMM):
        assert (mode in modes) == (times[mode] <= margin * times[modes[0]]), mode
    assert [times[m] for m in modes[1:]] == sorted(times[m] for m in modes[1:])


def test_no_model_and_a_mostly_dense_layer_picked_dense_have_one_candidate():
    """A convolution the model does not cover, and a mostly dense layer for which the model picks dense
    (timing a sparse mode would pack its dense weights), are never timed."""
    assert auto_candidates(None, 0.1, 0.5, PROFILE, 1e9) == (CCNMM,)
    assert auto_candidates(None, 0.1, 1.0, PROFILE, 1e9) == (DENSE,)
    big = FcShape(batch=16, num_input=4096, num_output=4096)
    for density in (0.7, 0.9, 1.0):
        assert predict(big, density, PROFILE).mode == DENSE
        assert auto_candidates(big, density, None, PROFILE, 1e9) == (DENSE,)


def test_a_mostly_dense_layer_the_model_predicts_faster_sparse_runs_sparse():
    """No density shortcut: a tiny layer whose sparse run the model predicts faster at density 0.6
    (LeNet's conv1: 20 output channels of one input channel) is AUTO's sparse pick, with dense as
    its close call."""
    lenet_conv1 = ConvShape(batch=1, channels=1, height=28, width=28, num_output=20, kernel=(5, 5))
    p = predict(lenet_conv1, 0.6, PROFILE, 1.0)
    assert p.sparse < p.dense
    assert decide_mode(lenet_conv1, 0.6, 1.0, PROFILE) == SCONV
    assert auto_candidates(lenet_conv1, 0.6, 1.0, PROFILE, 2.0)[:2] == (SCONV, DENSE)


# -- in the engine ---------------------------------------------------------------------------------------

def _nets(type_name, mode, density=0.15, relu=False):
    """(AUTO net, dense net) of one layer (tests/one_layer_nets.py) with the same pruned weights, bias
    and input; ``relu`` adds an in-place ReLU after the layer."""
    param = one_layer_param("trial", type_name, mode)
    if relu:
        param.layer.add(name="relu", type="ReLU", bottom=["y"], top=["y"])
    return with_dense_twin(param, density)


def _forward_matches(auto, dense):
    auto.forward()
    dense.forward()
    ref = dense.blobs["y"].data
    np.testing.assert_allclose(auto.blobs["y"].data, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max() + 1e-6)


CASES = [("Convolution", CONV.AUTO, False), ("Convolution", CONV.AUTO, True), ("InnerProduct", IP.AUTO, False),
         ("InnerProduct", IP.AUTO, True)]


@pytest.mark.parametrize("type_name, mode, relu", CASES)
def test_close_call_is_timed_then_settled(every_call_close, type_name, mode, relu):
    auto, dense = _nets(type_name, mode, relu=relu)
    engine = auto.layer_dict["layer"].engine
    ran = []
    for _ in range(3 * TRIAL_RUNS):
        _forward_matches(auto, dense)
        ran.append(engine.last_mode)
        if engine.last_trial.done:
            break
    trial = engine.last_trial
    assert trial is not None and trial.done
    assert ran == list(trial.modes) * TRIAL_RUNS          # in turn, the model's pick first
    fastest = min(trial.modes, key=lambda m: min(trial.seconds[m]))
    for _ in range(2):                                    # settled: the fastest recorded run's mode
        _forward_matches(auto, dense)
        assert engine.last_mode == fastest
    assert engine.last_trial is trial


def test_weight_change_starts_a_new_trial(every_call_close):
    auto, dense = _nets("Convolution", CONV.AUTO)
    engine = auto.layer_dict["layer"].engine
    for _ in range(3 * TRIAL_RUNS):
        _forward_matches(auto, dense)
    first = engine.last_trial
    assert first.done
    for net in (auto, dense):
        net.params["layer"][0].data[...] *= 2.0
    _forward_matches(auto, dense)
    assert engine.last_trial is not first and not engine.last_trial.done
    assert engine.last_mode == engine.last_trial.modes[0]


@pytest.mark.parametrize("type_name, mode", [("Convolution", CONV.AUTO), ("InnerProduct", IP.AUTO)])
def test_weights_changing_every_forward_run_the_models_pick(every_call_close, type_name, mode):
    """As in training: each forward starts a new trial, so each runs the model's pick."""
    auto, dense = _nets(type_name, mode)
    engine = auto.layer_dict["layer"].engine
    trials = []
    for step in range(2 * TRIAL_RUNS):
        for net in (auto, dense):
            net.params["layer"][0].data[...] *= 1.0 + 0.01 * (step + 1)
        _forward_matches(auto, dense)
        trials.append(engine.last_trial)
        assert engine.last_mode == engine.last_trial.modes[0] and not engine.last_trial.done
    assert len({id(trial) for trial in trials}) == len(trials)


def test_dense_weights_are_released_once_a_sparse_mode_wins(every_call_close):
    """A net without backward keeps the dense weights while the trial may still run dense."""
    auto, dense = _nets("InnerProduct", IP.AUTO)
    blob, engine = auto.params["layer"][0], auto.layer_dict["layer"].engine
    while engine.last_trial is None or not engine.last_trial.done:
        _forward_matches(auto, dense)
        if not engine.last_trial.done:
            assert not blob.data_released
    _forward_matches(auto, dense)
    assert blob.data_released == (engine.last_trial.winner != DENSE)


def test_trials_off_runs_the_models_pick(every_call_close, no_auto_trials):
    assert not auto_trials_enabled()
    auto, dense = _nets("Convolution", CONV.AUTO)
    engine = auto.layer_dict["layer"].engine
    modes = set()
    for _ in range(2 * TRIAL_RUNS):
        _forward_matches(auto, dense)
        modes.add(engine.last_mode)
    assert engine.last_trial is None and len(modes) == 1


def test_set_auto_trials_returns_the_previous_setting():
    assert set_auto_trials(False) is True
    try:
        assert set_auto_trials(False) is False
    finally:
        set_auto_trials(True)
    assert auto_trials_enabled()


def test_settle_auto_trials_runs_until_every_close_call_is_timed(every_call_close):
    auto, dense = _nets("Convolution", CONV.AUTO, relu=True)
    engine = auto.layer_dict["layer"].engine
    ran = settle_auto_trials(auto)
    trial = engine.last_trial
    assert trial.done and not engine.trial_running and ran == len(trial.modes) * TRIAL_RUNS
    assert settle_auto_trials(auto) == 1                  # nothing left to time: one forward
    _forward_matches(auto, dense)
    assert settle_auto_trials(dense) == 0                 # no AUTO layer: no forward
    set_auto_trials(False)
    try:
        assert settle_auto_trials(auto) == 0
    finally:
        set_auto_trials(True)
