"""The official notebooks' code cells, as the scripts under examples/, run with pyskim.

Each script runs in a fresh interpreter with its work folder (a Caffe-root-like layout made by
examples/_caffe_root.py) under tmp_path. The quick LeNet run (fewer iterations through the scripts'
variables) is in the default suite; full-length runs and the CaffeNet notebooks are marked slow.
"""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
QUICK_LENET = {"PYSKIM_LENET_NITER": "10", "PYSKIM_LENET_TEST_ITERS": "5", "PYSKIM_LENET_CUSTOM_NITER": "10"}


def run_example(name, work, cwd, timeout, **env_vars):
    env = dict(os.environ, MPLBACKEND="Agg", **env_vars)
    env.pop("PYSKIM_EXAMPLES_ROOT", None)
    result = subprocess.run([sys.executable, str(EXAMPLES / name), str(work)], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result.stdout


@pytest.fixture(scope="module")
def caffenet_root(tmp_path_factory, shared_dir):
    """One work folder for the CaffeNet runs (BVLC's prototxts from ``../shared``): its random-weights
    caffemodel is made once."""
    root = tmp_path_factory.mktemp("caffe_root")
    code = "import _caffe_root, sys; _caffe_root.prepare('setup', caffenet=True)"
    result = subprocess.run([sys.executable, "-c", code, str(root)], cwd=EXAMPLES, capture_output=True,
                            text=True, timeout=1200, check=False)
    assert result.returncode == 0, result.stderr
    return root


def test_scripts_carry_the_licence_note():
    for name in ("00_classification.py", "01_learning_lenet.py", "net_surgery.py"):
        head = (EXAMPLES / name).read_text()[:600]
        assert "BVLC Caffe's examples/" in head and "BSD 2-Clause" in head, name
        assert "import pyskim as caffe" in (EXAMPLES / name).read_text()


def test_learning_lenet_quick(tmp_path, shared_dir):
    """The LeNet notebook with fewer iterations, on LMDBs the script makes from ../shared's Fashion-MNIST."""
    out = run_example("01_learning_lenet.py", tmp_path / "caffe_root", tmp_path, 600, **QUICK_LENET)
    examples = tmp_path / "caffe_root" / "examples"
    assert (examples / "mnist" / "mnist_train_lmdb" / "data.mdb").exists()
    train_proto = (examples / "mnist" / "lenet_auto_train.prototxt").read_text()
    assert 'source: "mnist/mnist_train_lmdb"' in train_proto and 'name: "fc1"' in train_proto
    assert 'type: "SoftmaxWithLoss"' in (examples / "mnist" / "custom_auto_test.prototxt").read_text()
    assert 'random_seed: 831486' in (examples / "mnist" / "custom_auto_solver.prototxt").read_text()
    assert "train labels:" in out and "test labels:" in out
    assert "Iteration 0 testing..." in out and "Iteration 9 testing..." in out
    figures = sorted(p.name for p in (examples / "figures").iterdir())
    assert len(figures) == 35 and "01_learning_lenet_1.png" in figures


@pytest.mark.slow
def test_learning_lenet_full_length(tmp_path, shared_dir):
    """The notebook's own iteration counts (200 LeNet steps, 250 linear-classifier steps)."""
    out = run_example("01_learning_lenet.py", tmp_path / "caffe_root", tmp_path, 3600)
    assert "Iteration 175 testing..." in out and "Iteration 225 testing..." in out


@pytest.mark.slow
def test_classification(caffenet_root, tmp_path):
    out = run_example("00_classification.py", caffenet_root, tmp_path, 1200)
    assert "predicted class is:" in out and "output label: n00000" in out
    assert "fc6\t(50, 4096)" in out and "conv2\t(256, 48, 5, 5) (256,)" in out
    figures = list((caffenet_root / "examples" / "figures").glob("00_classification_*.png"))
    assert figures


@pytest.mark.slow
def test_net_surgery(caffenet_root, tmp_path):
    out = run_example("net_surgery.py", caffenet_root, tmp_path, 1200)
    assert "post-surgery output mean" in out
    assert "fc6-conv weights are (4096, 256, 6, 6) dimensional" in out
    assert (caffenet_root / "examples" / "net_surgery" / "bvlc_caffenet_full_conv.caffemodel").exists()
    # the 8 x 8 classification map printed by the last cell
    rows = [line for line in out.splitlines() if line.lstrip("[ ").rstrip("]").replace(" ", "").isdigit()]
    assert len(rows) == 8


@pytest.mark.slow
def test_classify_tool_with_default_model(caffenet_root, tmp_path, shared_dir):
    """tools/classify.py with its default flags, run from the Caffe root (the random-weights CaffeNet,
    the bundled ImageNet mean, ten crops) on BVLC's example images."""
    out = tmp_path / "predictions.npy"
    images = shared_dir / "models" / "bvlc" / "examples" / "images"
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "classify.py"), str(images), str(out)],
                            cwd=caffenet_root, capture_output=True, text=True, timeout=1200, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Classifying 3 inputs." in result.stdout
    predictions = np.load(out)
    assert predictions.shape == (3, 1000)
    np.testing.assert_allclose(predictions.sum(1), 1, rtol=1e-4)
