"""``tools/gsl.py --method gdns`` and ``--method magnitude`` on a small LeNet, in seconds: LeNet trained
briefly on the Fashion-MNIST test split embedded in pyskim (no ../shared), then a short GDNS run and a
short magnitude-baseline run from it. Expected values come from NumPy on the caffemodels pyskim
writes (read back with protobuf), never from pyskim's own report."""
import contextlib
import io
import json
import pathlib
import re

import numpy as np
import pytest

from pyskim.apps.cli import run_tool
from pyskim.apps.convert_mnist_data import convert_arrays
from pyskim.apps.demo import load_dataset
from pyskim.io.blobproto import blobproto_to_array
from pyskim.io.protofiles import read_text, write_text
from pyskim.io.upgrade import read_net_binary, read_net_text
from pyskim.kernels.threads import get_num_threads
from pyskim.perf import model as perfmodel
from pyskim.perf import profile as perfprofile
from pyskim.proto import caffe_pb2
from pyskim.prune import gsl, methods
from pyskim.prune.report import GSLResult, methods_table
from pyskim.solvers import get_solver

REPO = pathlib.Path(__file__).resolve().parents[1]
LENET = REPO / "prototxt" / "lenet"
TRAIN, TEST, DENSE_ITERS = 960, 200, 120
GDNS = {"method": "gdns", "prune_iters": 60, "finetune_iters": 30, "snapshots": 2, "tests": 1,
        "measure_iters": 1, "batch": 16, "measure_batches": [1, 8], "measure_threads": [1],
        "finetune_lr_drop": 0.5}
SPARSITY = 0.75
CONV_IP = ("conv1", "conv2", "ip1", "ip2")


pytestmark = pytest.mark.usefixtures("one_kernel_thread")       # small runs, maybe a busy machine


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """LMDBs of the embedded data (960 train / 200 test images), LeNet's prototxts and dense weights
    after 120 iterations."""
    work = tmp_path_factory.mktemp("gsl_methods")
    _, train_x, train_y, test_x, test_y = load_dataset()
    convert_arrays(train_x[:TRAIN], train_y[:TRAIN], work / "fashion_mnist_train_lmdb")
    convert_arrays(test_x[:TEST], test_y[:TEST], work / "fashion_mnist_test_lmdb")
    net = read_net_text(LENET / "lenet_train_test.prototxt")
    for layer in net.layer:
        if layer.type == "Data":
            layer.data_param.source = str(work / layer.data_param.source)
    write_text(work / "lenet_train_test.prototxt", net)
    solver = read_text(LENET / "lenet_solver.prototxt", caffe_pb2.SolverParameter())
    solver.net = str(work / "lenet_train_test.prototxt")
    solver.test_iter[0] = TEST // 100
    solver.max_iter, solver.snapshot, solver.display = DENSE_ITERS, 0, 0
    solver.snapshot_prefix = str(work / "dense")
    write_text(work / "lenet_solver.prototxt", solver)
    s = get_solver(str(work / "lenet_solver.prototxt"))
    s.step(DENSE_ITERS)
    s.net.save(str(work / "dense.caffemodel"))
    return work


def _weights(path):
    """``{layer: weight array}`` of a caffemodel, read with protobuf."""
    return {lp.name: blobproto_to_array(lp.blobs[0]) for lp in read_net_binary(str(path)).layer if len(lp.blobs)}


@pytest.fixture(scope="module")
def gdns(work):
    return gsl.run_gsl(work / "lenet_solver.prototxt", work / "dense.caffemodel", work / "gdns",
                       profile=perfprofile.default_profile(1), use_bar=False, **GDNS)


@pytest.fixture(scope="module")
def magnitude(work):
    """The baseline through the command line, with the same fine-tune budget as the GDNS run; returns
    (exit status, printed report, the stored result)."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = run_tool("gsl", ["--solver", str(work / "lenet_solver.prototxt"), "--weights",
                                str(work / "dense.caffemodel"), "--out", str(work / "magnitude"), "--method",
                                "magnitude", "--sparsity", str(SPARSITY), "--finetune-iters",
                                str(GDNS["finetune_iters"]), "--measure-iters", "1", "--batch", "16",
                                "--measure-batches", "1,8"])
    return code, printed.getvalue(), GSLResult.load(work / "magnitude" / "gsl.json")


# -- the pieces, against NumPy -------------------------------------------------------------------------

def test_magnitude_prune_zeroes_the_smallest():
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(20, 3, 5, 5)).astype(np.float32)
    original = weights.copy()
    zeroed = methods.magnitude_prune(weights, 0.9)
    assert zeroed == round(0.9 * weights.size) == np.count_nonzero(weights == 0)
    cut = np.sort(np.abs(original).ravel())[zeroed - 1]
    assert np.all(np.abs(original[weights == 0]) <= cut)
    assert np.array_equal(weights[weights != 0], original[np.abs(original) > cut])
    untouched = original.copy()
    assert methods.magnitude_prune(untouched, 0.0) == 0 and np.array_equal(untouched, original)


def test_dns_threshold_is_the_smallest_layer_quantile():
    small = np.linspace(-0.01, 0.01, 101)
    large = np.linspace(-1.0, 1.0, 1001)
    t0 = methods.dns_threshold([large, small])
    assert t0 == pytest.approx(np.quantile(np.abs(small), methods.DNS_START_SPARSITY))
    assert np.mean(np.abs(small) <= t0) <= methods.DNS_START_SPARSITY + 0.01
    with pytest.raises(ValueError, match="zero weights"):
        methods.dns_threshold([np.zeros(10), large])
    per_layer = methods.dns_threshold([large, small], [0.9, 0.2])         # a share per layer
    assert per_layer == pytest.approx(np.quantile(np.abs(small), 0.2))
    assert methods.dns_threshold([large, small], [0.002, 0.9]) == pytest.approx(np.quantile(np.abs(large), 0.002))
    with pytest.raises(ValueError, match="2 start sparsities for 1"):
        methods.dns_threshold([large], [0.5, 0.5])


@pytest.mark.parametrize("method, dns_type, conv, ip", [
    ("gesl", "L1_DNS", "L1", "L1"), ("gdns", "L1_DNS", "L1_DNS", "L1_DNS"), ("gdns", "L2_DNS", "L2_DNS", "L1_DNS")])
def test_stage_net_per_method(method, dns_type, conv, ip):
    net = read_net_text(LENET / "lenet_train_test.prototxt")
    prune = methods.stage_net(net, ["conv2", "ip1"], "prune", method, dns_type)
    finetune = methods.stage_net(net, ["conv2", "ip1"], "finetune", method, dns_type)
    types = {lp.name: lp.param[0].regularization_type for lp in prune.layer if lp.name in CONV_IP}
    assert types == {"conv1": "", "conv2": conv, "ip1": ip, "ip2": ""}
    masked = {lp.name for lp in finetune.layer if lp.connectivity_mode == caffe_pb2.LayerParameter.DISCONNECTED_ELTWISE}
    assert masked == {"conv2", "ip1"}


def test_bad_settings_are_one_clear_error(work, caplog):
    with pytest.raises(gsl.GSLError, match="method must be one of"):
        gsl.run_gsl(work / "lenet_solver.prototxt", work / "dense.caffemodel", work / "bad", method="dns")
    with pytest.raises(gsl.GSLError, match=r"finetune_lr_drop .* \(0, 1\), got 1.5"):
        gsl.run_gsl(work / "lenet_solver.prototxt", work / "dense.caffemodel", work / "bad", finetune_lr_drop=1.5)
    with pytest.raises(gsl.GSLError, match=r"saving_share .* \(0, 1\], got 0"):
        gsl.run_gsl(work / "lenet_solver.prototxt", work / "dense.caffemodel", work / "bad", saving_share=0)
    with pytest.raises(gsl.GSLError, match="plan_threads must be >= 1"):
        gsl.run_gsl(work / "lenet_solver.prototxt", work / "dense.caffemodel", work / "bad", plan_threads=0)
    with pytest.raises(gsl.GSLError, match=r"sparsity .* \[0, 1\)"):
        gsl.run_gsl(work / "lenet_solver.prototxt", work / "dense.caffemodel", work / "bad", method="magnitude",
                    sparsity=1.0)
    caplog.clear()
    assert run_tool("gsl", ["--solver", str(work / "lenet_solver.prototxt"), "--weights",
                            str(work / "dense.caffemodel"), "--out", str(work / "bad"), "--sparsity", "0.5"]) == 1
    assert any("--sparsity applies to --method magnitude only" in r.getMessage() for r in caplog.records)
    assert not (work / "bad" / "gsl.json").exists()


# -- GDNS -----------------------------------------------------------------------------------------------

def test_gdns_prunes_at_once_with_the_dense_threshold(gdns, work):
    pruned = [p.name for p in gdns.plan if p.prune]
    assert {"conv2", "ip1"} <= set(pruned)
    dense = _weights(work / "dense.caffemodel")
    shares = {p.name: max(0.5, 1 - p.floor) for p in gdns.plan if p.prune}       # each layer toward its floor
    expected = min(np.quantile(np.abs(dense[n]).astype(np.float64), shares[n]) for n in pruned)
    solver = read_text(gdns.stages["prune"].files["solver"], caffe_pb2.SolverParameter())
    assert solver.prune_threshold == pytest.approx(expected, rel=1e-6) and solver.max_threshold_factor == 1
    assert gdns.config["dns_threshold"] == pytest.approx(expected, rel=1e-6)
    net = read_net_text(gdns.stages["prune"].files["net"])
    assert {lp.name: lp.param[0].regularization_type for lp in net.layer if lp.name in pruned} == \
        {n: "L1_DNS" for n in pruned}
    after = _weights(gdns.stages["prune"].files["caffemodel"])
    zero = {name: np.mean(after[name] == 0) for name in pruned}
    assert all(share > 0.05 for share in zero.values()), zero              # every picked layer pruned,
    setter = min(pruned, key=lambda n: np.quantile(np.abs(dense[n]), shares[n]))
    assert zero[setter] > 0.3, zero                                         # the threshold's layer by > 30%,
    assert sum(zero[n] * after[n].size for n in pruned) / sum(after[n].size for n in pruned) > 0.3  # in all
    assert np.mean(after["ip2"] == 0) == 0                                # not in the plan: dense
    assert "DNS initialized" in pathlib.Path(gdns.stages["prune"].files["log"]).read_text()


def test_gdns_pruned_convolution_weights_regrow(gdns):
    """DNS: a conv weight zeroed at the first snapshot can be nonzero at the second (its shadow grew
    back past the threshold); L1 on ip1 (2-D) keeps what it zeroed, as SkimCaffe's L1."""
    stage = pathlib.Path(gdns.stages["prune"].files["caffemodel"]).parent
    half, last = GDNS["prune_iters"] // 2, GDNS["prune_iters"]
    first, second = _weights(stage / f"gsl_prune_iter_{half}.caffemodel"), _weights(stage / f"gsl_prune_iter_{last}.caffemodel")
    regrown = (first["conv2"] == 0) & (second["conv2"] != 0)
    assert regrown.sum() > 0
    assert np.all(np.abs(second["conv2"][second["conv2"] != 0]) > gdns.config["dns_threshold"])


def test_gdns_finetune_holds_the_masks_and_recovers(gdns):
    before = _weights(gdns.stages["prune"].files["caffemodel"])
    after = _weights(gdns.stages["finetune"].files["caffemodel"])
    for p in gdns.plan:
        if p.prune:
            assert np.all(after[p.name][before[p.name] == 0] == 0), p.name
    assert gdns.final.accuracy > 0.5                                    # chance: 0.1
    assert gdns.final.sparsity == pytest.approx(
        sum(np.sum(after[n] == 0) for n in CONV_IP) / sum(after[n].size for n in CONV_IP), abs=1e-6)


def test_gdns_finetune_learning_rate_drops_tenfold(gdns, work):
    """``finetune_lr_drop``: Caffe's multistep policy, base_lr for half of the 30 iterations, then a tenth
    (read from the solver GSL wrote and from the lr Caffe's log shows)."""
    solver = read_text(gdns.stages["finetune"].files["solver"], caffe_pb2.SolverParameter())
    user = read_text(work / "lenet_solver.prototxt", caffe_pb2.SolverParameter())
    assert (solver.lr_policy, solver.gamma, list(solver.stepvalue)) == ("multistep", pytest.approx(0.1), [15])
    assert solver.base_lr == pytest.approx(user.base_lr)
    rates = {int(it): float(lr) for it, lr in re.findall(r"Iteration (\d+), lr = ([0-9.e-]+)",
                                                         pathlib.Path(gdns.stages["finetune"].files["log"]).read_text())}
    assert rates and all(lr == pytest.approx(user.base_lr * (0.1 if it >= 15 else 1)) for it, lr in rates.items())
    assert any(it >= 15 for it in rates) and any(it < 15 for it in rates)
    prune = read_text(gdns.stages["prune"].files["solver"], caffe_pb2.SolverParameter())
    assert prune.lr_policy == user.lr_policy                                 # the prune stage keeps the user's


def test_floors_follow_the_saving_share():
    """A layer's floor gives it ``saving_share`` of the time pruning to saturation saves: the model's
    sparse time there is that far from dense toward its time at saturation; a smaller share, a higher floor."""
    shapes = {"conv2": ("Convolution", perfmodel.ConvShape(1, 32, 16, 16, 32, (5, 5), pad=(2, 2)))}
    profile = perfprofile.default_profile(1)
    plans = {share: gsl.plan_layers(shapes, {"conv2": 25600}, min_density=0.0, profile=profile,
                                    saving_share=share)[0] for share in (0.6, 0.8, 1.0)}
    p = plans[0.8]
    assert p.saturation < p.floor < p.break_even and plans[0.6].floor > p.floor
    assert plans[1.0].floor == pytest.approx(p.saturation, rel=1e-6)
    dense = perfmodel.predict(shapes["conv2"][1], 1.0, profile).dense
    at_saturation = perfmodel.predict(shapes["conv2"][1], p.saturation, profile).sparse
    at_floor = perfmodel.predict(shapes["conv2"][1], p.floor, profile).sparse
    assert (dense - at_floor) / (dense - at_saturation) == pytest.approx(0.8, abs=1e-3)
    assert gsl.plan_layers(shapes, {"conv2": 25600}, min_density=0.5, profile=profile)[0].floor == 0.5


def test_gdns_timing_grid_and_report(gdns, work):
    assert [(t["batch"], t["threads"]) for t in gdns.timings] == [(1, 1), (8, 1)]
    for t in gdns.timings:
        assert t["dense_ms"] > 0 and t["sparse_ms"] > 0
        assert t["speedup"] == pytest.approx(t["dense_ms"] / t["sparse_ms"])
    stored = json.loads((work / "gdns" / "gsl.json").read_text())
    assert stored["config"]["method"] == "gdns" and len(stored["timings"]) == 2 and stored["seconds"] > 0
    report = (work / "gdns" / "report.txt").read_text()
    assert "method gdns" in report and "prediction vs measurement" in report and "conv2" in report


# -- the magnitude baseline -----------------------------------------------------------------------------

def test_magnitude_prunes_every_layer_to_the_same_sparsity(magnitude, work):
    code, _, result = magnitude
    assert code == 0 and result.method == "magnitude"
    assert all(p.prune for p in result.plan) and {p.name for p in result.plan} == set(CONV_IP)
    assert result.stages["prune"].iterations == 0
    dense = _weights(work / "dense.caffemodel")
    pruned = _weights(result.stages["prune"].files["caffemodel"])
    for name in CONV_IP:
        k = round(SPARSITY * dense[name].size)
        assert np.count_nonzero(pruned[name] == 0) == k, name
        cut = np.sort(np.abs(dense[name]).ravel())[k - 1]
        kept = pruned[name] != 0
        assert np.all(np.abs(dense[name][~kept]) <= cut) and np.array_equal(pruned[name][kept], dense[name][kept])


def test_magnitude_finetunes_with_masks_for_the_same_budget(magnitude):
    _, _, result = magnitude
    before = _weights(result.stages["prune"].files["caffemodel"])
    after = _weights(result.stages["finetune"].files["caffemodel"])
    assert result.stages["finetune"].iterations == GDNS["finetune_iters"]
    for name in CONV_IP:
        assert np.all(after[name][before[name] == 0] == 0), name
    assert not np.array_equal(before["ip1"], after["ip1"])                 # it did train
    assert result.final.accuracy > 0.3


def test_magnitude_command_line_report_and_sizes(magnitude, work):
    _, out, result = magnitude
    assert "method magnitude" in out and "whole-net forward" in out and "sizes:" in out
    npz = work / "magnitude" / "gsl_final.sparse.npz"
    assert npz.exists() and result.sizes["final_npz"] == npz.stat().st_size
    assert result.sizes["final_npz"] < 0.6 * result.sizes["dense_npz"]         # 75% zeros: much smaller
    assert [(t["batch"], t["threads"]) for t in result.timings] == [(1, get_num_threads()), (8, get_num_threads())]


def test_methods_table(gdns, magnitude):
    _, _, result = magnitude
    text = methods_table([gdns, result])
    header = text.splitlines()[0].split()
    assert header == ["gdns", "magnitude"]
    density = next(line for line in text.splitlines() if line.startswith("density ip2")).split()
    assert density[2:] == ["1.0000", f"{1 - SPARSITY:.4f}"]
    assert "speedup b1 t1" in text and "sparse npz KiB" in text
