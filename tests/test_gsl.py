"""Guided Sparsity Learning, short: LeNet on a small Fashion-MNIST subset (LMDBs made in tmp_path), a
short dense run, then GSL's prune and fine-tune stages; plus the sparsity report and the plots."""
import json
import pathlib
import shutil

import numpy as np
import pytest

from pyskim.apps import plot_training, sparsity_report
from pyskim.apps.cli import run_tool
from pyskim.data.db import LMDBWriter
from pyskim.io.blobproto import blobproto_to_array
from pyskim.io.idx import read_idx
from pyskim.io.protofiles import read_text, write_text
from pyskim.io.upgrade import read_net_binary, read_net_text
from pyskim.perf import model as perfmodel
from pyskim.perf import profile as perfprofile
from pyskim.proto import caffe_pb2
from pyskim.prune import gsl
from pyskim.prune import plan as gsl_perf
from pyskim.solvers import get_solver

REPO = pathlib.Path(__file__).resolve().parents[1]
LENET = REPO / "prototxt" / "lenet"
TRAIN, TEST = 1280, 300
SETTINGS = {"prune_iters": 160, "finetune_iters": 100, "base_lr": 0.01, "l1_decay": 0.01,
            "measure_iters": 2, "snapshots": 2, "tests": 1}


def _lmdb(images, labels, path):
    writer = LMDBWriter(str(path), commit_every=1000)
    datum = caffe_pb2.Datum(channels=1, height=28, width=28)
    for i, (image, label) in enumerate(zip(images, labels)):
        datum.data, datum.label = image.tobytes(), int(label)
        writer.put(f"{i:08d}", datum.SerializeToString())
    writer.close()


pytestmark = pytest.mark.usefixtures("one_kernel_thread")       # small runs, maybe a busy machine


@pytest.fixture(scope="module")
def work(tmp_path_factory, shared_dir):
    """LMDBs of the first 1280 train / 300 test images, LeNet's prototxts, and dense weights after
    200 iterations."""
    data = shared_dir / "datasets" / "fashion-mnist"
    if not (data / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST not in ../shared/datasets")
    work = tmp_path_factory.mktemp("gsl")
    for split, prefix, n in (("train", "train", TRAIN), ("test", "t10k", TEST)):
        _lmdb(read_idx(data / f"{prefix}-images-idx3-ubyte.gz")[:n], read_idx(data / f"{prefix}-labels-idx1-ubyte.gz")[:n],
              work / f"fashion_mnist_{split}_lmdb")
    shutil.copy(LENET / "lenet_train_test.prototxt", work)
    solver = read_text(LENET / "lenet_solver.prototxt", caffe_pb2.SolverParameter())
    solver.net = str(work / "lenet_train_test.prototxt")
    solver.test_iter[0] = 3
    solver.max_iter, solver.snapshot, solver.display = 200, 0, 0
    solver.snapshot_prefix = str(work / "dense")
    write_text(work / "lenet_solver.prototxt", solver)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        s = get_solver(str(work / "lenet_solver.prototxt"))
        s.step(200)
        s.net.save(str(work / "dense.caffemodel"))
    return work


@pytest.fixture(scope="module")
def run(work):
    """One short GSL run with the default (uncalibrated) performance model."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        result = gsl.run_gsl("lenet_solver.prototxt", "dense.caffemodel", work / "out",
                             profile=perfprofile.default_profile(1), use_bar=False, **SETTINGS)
    return result


def _weights(path):
    return {lp.name: blobproto_to_array(lp.blobs[0]) for lp in read_net_binary(path).layer if len(lp.blobs)}


def test_plan_follows_the_model(run):
    plan = {p.name: p for p in run.plan}
    assert set(plan) == {"conv1", "conv2", "ip1", "ip2"}
    total = sum(p.dense_ms for p in plan.values())
    for p in plan.values():
        assert 0 <= p.saturation <= 1 and 0 <= p.break_even <= 1
        share = (p.dense_ms - p.dense_ms / p.speedup_at_floor) / total
        assert p.prune == (p.speedup_at_floor >= gsl.MIN_LAYER_SPEEDUP and p.break_even > p.floor
                           and share >= gsl.MIN_TIME_SHARE)
    assert plan["ip1"].prune and plan["conv2"].prune and not plan["ip2"].prune   # ip2: ~1% of the time


def test_stage_prototxts(run):
    pruned = {p.name for p in run.plan if p.prune}
    prune_net = read_net_text(run.stages["prune"].files["net"])
    ft_net = read_net_text(run.stages["finetune"].files["net"])
    for lp in prune_net.layer:
        if lp.type in ("Convolution", "InnerProduct"):
            assert lp.param[0].regularization_type == ("L1" if lp.name in pruned else "")
            assert all(not spec.regularization_type for spec in lp.param[1:])
    for lp in ft_net.layer:
        if lp.type in ("Convolution", "InnerProduct"):
            assert all(not spec.regularization_type for spec in lp.param)
            masked = lp.connectivity_mode == caffe_pb2.LayerParameter.DISCONNECTED_ELTWISE
            assert masked == (lp.name in pruned)
    prune_solver = read_text(run.stages["prune"].files["solver"], caffe_pb2.SolverParameter())
    assert prune_solver.regularization_type == "L2" and prune_solver.max_iter == SETTINGS["prune_iters"]
    assert prune_solver.weight_decay == pytest.approx(SETTINGS["l1_decay"])
    assert prune_solver.prune_threshold == pytest.approx(1e-4) and prune_solver.max_threshold_factor == 10
    ft_solver = read_text(run.stages["finetune"].files["solver"], caffe_pb2.SolverParameter())
    assert ft_solver.regularization_type == "L2" and ft_solver.prune_threshold == 0


def test_sparsity_rises_while_pruning(run):
    dense, pruned = run.stages["dense"], run.stages["prune"]
    for p in run.plan:
        if p.prune and p.name != "conv1":
            assert pruned.densities[p.name] < dense.densities[p.name] - 0.05, p.name
    assert pruned.sparsity > 0.2
    iterations, rows, _ = plot_training.parse_sparsity(pruned.files["log"])
    assert iterations == sorted(iterations) and len(rows) >= 3
    ip1 = [row[2] for row in rows]
    assert ip1[-1] > ip1[0] + 10 and all(b >= a - 1 for a, b in zip(ip1, ip1[1:]))


def test_masks_hold_while_finetuning(run):
    before = _weights(run.stages["prune"].files["caffemodel"])
    after = _weights(run.stages["finetune"].files["caffemodel"])
    for p in run.plan:
        if p.prune:
            zero = before[p.name] == 0
            assert np.all(after[p.name][zero] == 0), p.name
            assert run.stages["finetune"].densities[p.name] <= run.stages["prune"].densities[p.name]
    assert not np.array_equal(before["ip1"], after["ip1"])      # it did train


def test_report(run, work):
    assert list(run.stages) == ["dense", "prune", "finetune"]
    for s in run.stages.values():
        assert 0.3 < s.accuracy <= 1.0                           # well above chance (0.1)
        assert s.measured["dense_ms"] > 0 and s.measured_speedup > 0 and s.predicted_speedup > 0
        assert set(s.densities) == {"conv1", "conv2", "ip1", "ip2"}
    ft = run.stages["finetune"]
    assert ft.predicted_speedup > 1.0
    for key in ("caffemodel", "log", "net", "solver", "deploy", "time_log"):
        assert pathlib.Path(ft.files[key]).exists(), key
    stored = json.loads((work / "out" / "gsl.json").read_text())
    assert stored["stages"]["finetune"]["accuracy"] == pytest.approx(ft.accuracy)
    assert "measured speedup" in (work / "out" / "report.txt").read_text()
    assert (work / "out" / "gsl_final.caffemodel").exists()
    with open(ft.files["log"]) as f:
        log = f.read()
    assert "Solving LeNet" in log and "Element Sparsity %" in log and "Test net output #0: accuracy" in log


def test_resume(run, work):
    out = work / "out"
    with pytest.raises(gsl.GSLError, match="resume"):
        gsl.run_gsl(work / "lenet_solver.prototxt", work / "dense.caffemodel", out, use_bar=False, **SETTINGS)
    # a fine-tune stage stopped after its first snapshot: drop what came after it
    ft = out / "finetune"
    last = SETTINGS["finetune_iters"]
    for suffix in ("caffemodel", "solverstate"):
        (ft / f"gsl_finetune_iter_{last}.{suffix}").unlink()
    (ft / "result.json").unlink()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        again = gsl.run_gsl("lenet_solver.prototxt", "dense.caffemodel", out, resume=True,
                            profile=perfprofile.default_profile(1), use_bar=False)
    assert "resuming the finetune stage from" in (ft / "train.log").read_text()
    assert again.stages["prune"].accuracy == run.stages["prune"].accuracy      # not rerun
    assert again.stages["finetune"].iterations == last
    prune = _weights(again.stages["prune"].files["caffemodel"])
    final = _weights(out / "gsl_final.caffemodel")
    assert np.all(final["ip1"][prune["ip1"] == 0] == 0)


def test_target_speedup_prunes_fewer_layers():
    shapes = {"conv1": ("Convolution", perfmodel.ConvShape(64, 1, 28, 28, 20, (5, 5))),
              "conv2": ("Convolution", perfmodel.ConvShape(64, 20, 12, 12, 50, (5, 5))),
              "ip1": ("InnerProduct", perfmodel.FcShape(64, 800, 500)),
              "ip2": ("InnerProduct", perfmodel.FcShape(64, 500, 10))}
    counts = {"conv1": 500, "conv2": 25000, "ip1": 400000, "ip2": 5000}
    profile = perfprofile.default_profile(1)
    everything = gsl.plan_layers(shapes, counts, profile=profile)
    few = gsl.plan_layers(shapes, counts, target_speedup=1.2, profile=profile)
    n_all, n_few = sum(p.prune for p in everything), sum(p.prune for p in few)
    assert 1 <= n_few < n_all
    chosen = [p for p in few if p.prune]
    saved = {p.name: p.dense_ms - p.dense_ms / p.speedup_at_floor for p in everything if p.prune}
    assert max(saved, key=saved.get) in {p.name for p in chosen}


def test_sparsity_report_and_plots(run, work):
    ft = run.stages["finetune"]
    rows = sparsity_report.layer_rows(work / "lenet_train_test.prototxt", ft.files["caffemodel"])
    assert [r["name"] for r in rows] == ["conv1", "conv2", "ip1", "ip2"]
    for r in rows:
        assert r["density"] == pytest.approx(ft.densities[r["name"]])
    assert "OC-fiber" in rows[1] and "OC-fiber" not in rows[2]
    total = sparsity_report.total_row(rows)
    assert 1 - total["density"] == pytest.approx(ft.sparsity)
    deploy = read_net_text(ft.files["deploy"])
    with perfprofile.use_profile(perfprofile.default_profile(1)):
        perfs = sparsity_report.predicted_speedups(deploy, rows)
    assert perfs["ip1"].density == pytest.approx(ft.densities["ip1"])
    text = sparsity_report.format_table(rows, perfs)
    assert "ip1" in text and "total" in text and "d_be" in text
    pytest.importorskip("matplotlib")
    png = work / "density.png"
    sparsity_report.plot_density(rows, perfs, str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    curves = plot_training.plot_training(ft.files["log"], str(work / "curves.png"))
    assert curves["sparsity"] == ["conv1", "conv2", "ip1", "ip2"] and curves["train"] >= 1
    assert (work / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_deploy_param_drops_the_label_path():
    net = read_net_text(LENET / "lenet_train_test.prototxt")
    deploy = gsl_perf.deploy_param(net, 64, input_shape=(1, 28, 28))
    types = [lp.type for lp in deploy.layer]
    assert types[0] == "Input" and list(deploy.layer[0].input_param.shape[0].dim) == [64, 1, 28, 28]
    assert "Accuracy" not in types and "SoftmaxWithLoss" not in types and "Data" not in types


def test_command_lines(run, work, capsys, caplog):
    out = work / "out"
    with perfprofile.use_profile(perfprofile.default_profile(1)):
        assert run_tool("gsl", ["--solver", str(work / "lenet_solver.prototxt"), "--weights",
                                str(work / "dense.caffemodel"), "--out", str(out), "--resume"]) == 0
        text = capsys.readouterr().out
        assert "measured speedup" in text and "gsl_final.caffemodel" in text
        caplog.clear()
        assert run_tool("gsl", ["--solver", str(work / "lenet_solver.prototxt"), "--weights",
                                str(work / "dense.caffemodel"), "--out", str(out)]) == 1     # not --resume
        assert any("resume" in r.getMessage() for r in caplog.records if r.levelname == "ERROR")
        final = str(out / "gsl_final.caffemodel")
        png = work / "cli_density.png"
        assert run_tool("sparsity", ["--model", str(work / "lenet_train_test.prototxt"), "--weights", final,
                                     "--measure-threshold", "1e-3", "--plot", str(png)]) == 0
    text = capsys.readouterr().out
    assert "conv2" in text and "total" in text and png.exists()
    assert run_tool("plot_training", [str(out / "prune" / "train.log"), "--out",
                                      str(work / "cli_curves.png")]) == 0
    assert (work / "cli_curves.png").exists()
    assert run_tool("sparsity", ["--model", str(work / "missing.prototxt"), "--weights", final]) == 1
