"""tools/time.py / ``pyskim time`` with pyskim's flags (-mode, -batch, -threads, -compare), the
per-layer sparse table, tools/perf_model.py (table and plot) and the NetParameter helpers."""
import os
import pathlib
import subprocess
import sys

import pytest

from pyskim.apps.time_net import load_param, set_batch
from pyskim.io.upgrade import read_net_text
from pyskim.proto import caffe_pb2
from pyskim.sparse.engine import apply_mode

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
