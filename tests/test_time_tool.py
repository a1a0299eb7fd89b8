"""tools/time.py / ``pyskim time`` with pyskim's flags (-mode, -batch, -threads, -compare), the
per-layer sparse table, when it calibrates, tools/perf_model.py (table and plot), the NetParameter
helpers, and the timing behind them (pyskim.perf.timing)."""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import pyskim
from pyskim.apps import time_net
from pyskim.apps.time_net import load_param, set_batch
from pyskim.io.upgrade import read_net_text
from pyskim.perf import profile as perfprofile
from pyskim.perf.timing import compare_nets, time_layers
from pyskim.proto import caffe_pb2
from pyskim.sparse import apply_mode

ROOT = pathlib.Path(__file__).resolve().parents[1]
LENET = ROOT / "prototxt" / "lenet" / "lenet_deploy.prototxt"
CAFFENET_SPARSE = ROOT / "prototxt" / "caffenet" / "deploy_sparse.prototxt"


def _run(args, tmp_path):
    env = dict(os.environ, PYSKIM_PERFMODEL="default", PYSKIM_CACHE_DIR=str(tmp_path))
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env=env, check=False)
    return result.returncode, result.stdout + result.stderr


def _messages(log):
    return [line.split("] ", 1)[1] for line in log.splitlines() if "] " in line]


def test_time_tool_sparse_compare(tmp_path):
    code, log = _run(["tools/time.py", "--model", str(LENET), "--batch", "3", "--iterations", "2", "--forward_only",
                      "--mode", "sparse", "--threads", "1", "--compare"], tmp_path)
    assert code == 0, log
    messages = _messages(log)
    for line in ("*** Benchmark begins ***", "Testing for 2 iterations.", "Average time per layer: ",
                 "*** Benchmark ends ***", "Using 1 threads."):
        assert line in messages, line
    assert any(m.startswith("Average Forward pass: ") for m in messages)
    assert any(m.strip().startswith("conv1\tforward: ") for m in messages)
    table = [m for m in messages if m.startswith(("  conv", "  ip"))]
    assert any("DIRECT_SCONV" in m for m in table) and any("SPMDM" in m for m in table)
    assert any(m.startswith("Whole net: dense ") and "speedup" in m for m in messages)
    assert not any("\t" in m for m in messages if "forward:" not in m and "backward:" not in m)


def test_pyskim_time_auto_and_backward(tmp_path):
    code, log = _run(["-m", "pyskim", "time", "-model", str(LENET), "-batch", "2", "-iterations", "1"], tmp_path)
    assert code == 0, log
    messages = _messages(log)
    assert any(m.startswith("Average Forward-Backward: ") for m in messages)
    assert any("AUTO>LOWERED_GEMM" in m for m in messages)     # dense (filler) weights stay dense


def test_time_bad_mode(tmp_path):
    code, log = _run(["tools/time.py", "--model", str(LENET), "--mode", "fast"], tmp_path)
    assert code == 1 and "mode must be dense, sparse or auto" in log and "Traceback" not in log


def test_perf_model_tool(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "speedup.png"
    code, log = _run(["tools/perf_model.py", "--model", str(CAFFENET_SPARSE), "--batch", "1", "--plot", str(out)],
                     tmp_path)
    assert code == 0, log
    lines = log.splitlines()
    assert lines[0].startswith("machine: ") and "break-even" in lines[1]
    assert [line.split()[0] for line in lines[2:10]] == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7",
                                                         "fc8"]
    assert out.stat().st_size > 10000


def test_apply_mode_and_batch():
    param = read_net_text(str(CAFFENET_SPARSE))
    assert apply_mode(param, "auto") == []                 # every layer sets its mode explicitly
    conv = caffe_pb2.ConvolutionParameter
    assert {lp.convolution_param.conv_mode for lp in param.layer if lp.name.startswith("conv")} == \
        {conv.DIRECT_DCONV, conv.DIRECT_SCONV}
    assert len(apply_mode(param, "dense")) == 8
    assert {lp.convolution_param.conv_mode for lp in param.layer if lp.name.startswith("conv")} == {conv.LOWERED_GEMM}
    assert len(apply_mode(param, "sparse")) == 8
    assert {lp.inner_product_param.gemm_mode for lp in param.layer if lp.name.startswith("fc")} == \
        {caffe_pb2.InnerProductParameter.SPMDM}
    set_batch(param, 4)
    assert list(param.layer[0].input_param.shape[0].dim) == [4, 3, 227, 227]
    lenet = load_param(str(LENET), "auto", 5)
    assert lenet.layer[0].input_param.shape[0].dim[0] == 5
    assert lenet.layer[1].convolution_param.conv_mode == conv.AUTO
    with pytest.raises(ValueError):
        apply_mode(param, "fast")


def _tiny_net(mode):
    """Input -> Convolution -> ReLU -> InnerProduct, half the weights zero, ``mode`` applied."""
    param = caffe_pb2.NetParameter()
    data = param.layer.add(name="data", type="Input", top=["data"])
    data.input_param.shape.add().dim.extend([2, 3, 8, 8])
    conv = param.layer.add(name="conv", type="Convolution", bottom=["data"], top=["conv"])
    conv.convolution_param.num_output = 4
    conv.convolution_param.kernel_size.append(3)
    param.layer.add(name="relu", type="ReLU", bottom=["conv"], top=["conv"])
    ip = param.layer.add(name="ip", type="InnerProduct", bottom=["conv"], top=["ip"])
    ip.inner_product_param.num_output = 5
    apply_mode(param, mode)
    net = pyskim.Net(param, pyskim.TEST)
    rng = np.random.default_rng(0)
    for name in ("conv", "ip"):
        w = net.params[name][0].data
        w[...] = rng.standard_normal(w.shape) * (rng.random(w.shape) < 0.5)
    net.blobs["data"].data[...] = rng.standard_normal(net.blobs["data"].data.shape)
    return net


def test_compare_nets_has_one_row_per_layer():
    dense, sparse = _tiny_net("dense"), _tiny_net("sparse")
    result = compare_nets(dense, sparse, iterations=2)
    assert [row.name for row in result.layers] == ["data", "conv", "relu", "ip"]
    assert result.iterations == 2
    assert all(row.dense >= 0 and row.sparse >= 0 for row in result.layers)
    assert result.dense_total == pytest.approx(sum(row.dense for row in result.layers))
    assert result.sparse_total == pytest.approx(sum(row.sparse for row in result.layers))
    assert result.speedup == pytest.approx(result.dense_total / result.sparse_total)
    lenet = pyskim.Net(read_net_text(str(LENET)), pyskim.TEST)
    with pytest.raises(ValueError, match="layers"):
        compare_nets(lenet, sparse, iterations=1)


def test_time_layers_times_every_layer_and_iteration():
    net = _tiny_net("auto")
    net.forward()
    seen = []
    timing = time_layers(net, 3, forward_only=False, on_iteration=lambda i, s: seen.append((i, s >= 0)))
    assert seen == [(0, True), (1, True), (2, True)]
    assert timing.layer_names == ["data", "conv", "relu", "ip"] and timing.iterations == 3
    assert len(timing.forward) == len(timing.backward) == 4
    assert sum(timing.forward) <= timing.forward_pass * (1 + 1e-9)
    assert timing.wall_seconds >= 3 * (timing.forward_pass + timing.backward_pass) * (1 - 1e-9)
    forward_only = time_layers(net, 1, forward_only=True)
    assert forward_only.backward == [] and forward_only.backward_pass == 0.0


@pytest.mark.parametrize("forced, cached, recalibrate, calibrates", [
    (False, False, False, True),        # no profile yet: pyskim time measures the machine first
    (False, True, False, False),
    (False, True, True, True),          # --recalibrate
    (True, False, False, False),        # PYSKIM_PERFMODEL=default
    (True, False, True, True),
])
def test_time_calibrates_only_without_a_cache_or_when_asked(tmp_path, monkeypatch, forced, cached, recalibrate,
                                                             calibrates):
    monkeypatch.setenv("PYSKIM_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("PYSKIM_PERFMODEL", "default" if forced else "")
    perfprofile.clear_memory_cache()
    if cached:
        perfprofile.save_profile(perfprofile.default_profile(perfprofile.resolve_threads(None)))
    calls = []
    monkeypatch.setattr(time_net, "calibrate_and_save", lambda: calls.append("calibrated"))
    try:
        time_net.ensure_profile(recalibrate)
    finally:
        perfprofile.clear_memory_cache()
    assert calls == (["calibrated"] if calibrates else [])


def test_time_tool_model_accuracy_table(tmp_path):
    """-accuracy: one row per conv / IP layer with measured and predicted times of both modes, the
    error between them, AUTO's pick and its regret, and a summary whose counts are those of the rows."""
    net = pyskim.Net(str(LENET), pyskim.TEST)
    rng = np.random.default_rng(0)
    for blobs in net.params.values():
        w = blobs[0].data
        w[...] = rng.standard_normal(w.shape) * (rng.random(w.shape) < 0.2)
    weights = tmp_path / "lenet_pruned.caffemodel"
    net.save(str(weights))
    code, log = _run(["tools/time.py", "--model", str(LENET), "--weights", str(weights), "--batch", "4",
                      "--iterations", "2", "--forward_only", "--threads", "1", "--accuracy"], tmp_path)
    assert code == 0, log
    messages = _messages(log)
    start = next(i for i, m in enumerate(messages) if m.startswith("Model accuracy, average forward ms"))
    rows = [m.split() for m in messages[start + 2:start + 6]]
    assert [r[0] for r in rows] == ["conv1", "conv2", "ip1", "ip2"]
    within, borderline, auto_within, auto_borderline = 0, 0, 0, 0    # (printed rounded to whole percents)
    for r in rows:
        assert 0.15 < float(r[1]) < 0.25                        # the saved density
        for measured, predicted, error in ((r[2], r[3], r[4]), (r[5], r[6], r[7])):
            percent = float(error.rstrip("%"))
            if abs(float(measured) - float(predicted)) > 0.002:   # beyond the printed rounding
                assert (percent > 0) == (float(measured) > float(predicted))
            within += abs(percent) < 25
            borderline += abs(percent) == 25
        assert r[8] in ("dense", "sparse", "ccnmm")
        regret = float(r[10].rstrip("%"))
        assert regret >= 0 or r[8] == "ccnmm"                   # a forced mode is never beaten by itself
        auto_within += regret < 10
        auto_borderline += regret == 10
    summary = messages[start + 6].split()
    assert summary[:3] == ["Model", "within", "25%:"] and summary[4:8] == ["of", "8", "layer", "times"], summary
    assert within <= int(summary[3]) <= within + borderline, summary
    counts = " ".join(summary).split("AUTO within 10% of the faster mode on ")[1].split()
    assert counts[1:4] == ["of", "4", "layers"] and auto_within <= int(counts[0]) <= auto_within + auto_borderline
