"""``pyskim demo``: the whole workflow on embedded data (``--quick`` here; the full run is slow-marked)."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from pyskim.apps import demo
from pyskim.errors import DataError, PyskimError


def _run_demo(tmp_path, *args, timeout, env=None):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "pyskim", "demo", "--out", str(out), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=tmp_path, check=False,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def _check_run(out, proc, min_accuracy):
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dense_accuracy"] > min_accuracy          # chance is 0.1
    assert summary["pruned_accuracy"] > min_accuracy
    plan = json.loads((out / "gsl" / "gsl.json").read_text())["plan"]
    pruned = [p["name"] for p in plan if p["prune"]]
    assert pruned, "the performance model picked no layer to prune"
    for name in pruned:
        assert summary["layers"][name]["density"] < 1.0
    assert 0 < summary["sparsity"] < 1
    assert summary["dense_ms"] > 0 and summary["sparse_ms"] > 0
    assert np.isclose(summary["speedup"], summary["dense_ms"] / summary["sparse_ms"])
    table = proc.stdout
    whole = [line for line in table.splitlines() if line.startswith("whole net")]
    assert len(whole) == 1 and whole[0].endswith(f"{summary['speedup']:.2f}x")
    assert f"dense {summary['dense_accuracy']:.4f}, pruned {summary['pruned_accuracy']:.4f}" in table
    assert table.strip() == (out / "summary.txt").read_text().strip()
    for path in (summary["files"]["dense_caffemodel"], summary["files"]["pruned_caffemodel"],
                 *summary["files"]["logs"], *summary["files"]["plots"].values()):
        assert pathlib.Path(path).is_file() and pathlib.Path(path).stat().st_size > 0, path
    assert "Test net output #0: accuracy" in (out / "dense" / "train.log").read_text()
    assert "Whole net: dense" in (out / "time.log").read_text()
    return summary


def test_demo_quick(tmp_path):
    # The model's documented default profile instead of a calibration on a possibly busy test machine,
    # so that the plan (which layers GSL prunes) does not depend on the machine's load.
    out, proc = _run_demo(tmp_path, "--quick", timeout=600, env={"PYSKIM_PERFMODEL": "default"})
    summary = _check_run(out, proc, min_accuracy=0.5)
    assert summary["settings"]["train_images"] == 8000 and summary["settings"]["test_images"] == 2000
    assert not list(tmp_path.glob("pyskim-demo-*"))     # --out was honoured; LMDBs went to a temp folder
    assert not list(out.rglob("*_lmdb"))


@pytest.mark.slow
def test_demo_full(tmp_path):
    out, proc = _run_demo(tmp_path, timeout=1200)
    summary = _check_run(out, proc, min_accuracy=0.8)
    assert summary["speedup"] > 1.0


def test_embedded_data_is_the_fashion_mnist_test_split(shared_dir):
    from pyskim.io.idx import read_idx
    name, train_x, train_y, test_x, test_y = demo.load_dataset()
    assert "embedded" in name
    assert train_x.shape == (8000, 28, 28) and test_x.shape == (2000, 28, 28)
    assert (demo.EMBEDDED / "LICENSE").read_text().count("MIT") >= 1
    reference = shared_dir / "datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"
    if reference.is_file():
        np.testing.assert_array_equal(np.concatenate([train_x, test_x]), read_idx(reference))
        np.testing.assert_array_equal(np.concatenate([train_y, test_y]),
                                      read_idx(shared_dir / "datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz"))


def test_data_folder_with_train_and_test_files(shared_dir):
    folder = shared_dir / "datasets/fashion-mnist"
    if not (folder / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST not available")
    _, train_x, train_y, test_x, _ = demo.load_dataset(folder)
    assert train_x.shape == (60000, 28, 28) and len(train_y) == 60000 and test_x.shape == (10000, 28, 28)


def test_data_folder_with_only_a_test_split_is_split(shared_dir):
    folder = shared_dir / "datasets/mnist"
    if not (folder / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("MNIST not available")
    _, train_x, _, test_x, test_y = demo.load_dataset(folder)
    assert len(train_x) == 8000 and len(test_x) == 2000 and set(np.unique(test_y)) <= set(range(10))


def test_data_folder_without_idx_files_is_named(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path)):
        demo.load_dataset(tmp_path)
    with pytest.raises(DataError, match="not a folder"):
        demo.load_dataset(tmp_path / "missing")


def test_labels_beyond_ten_classes_are_refused(tmp_path):
    import gzip
    images = np.zeros((10, 28, 28), np.uint8)
    labels = np.arange(10, dtype=np.uint8) * 2
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + b"".join(int(d).to_bytes(4, "big") for d in images.shape) + images.tobytes())
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + labels.tobytes())
    with pytest.raises(DataError, match="labels must be 0-9"):
        demo.load_dataset(tmp_path)


def test_non_empty_output_folder_is_refused(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(PyskimError, match="not empty"):
        demo.run_demo(tmp_path, quick=True)
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_bad_data_folder_fails_before_writing_anything(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(DataError, match="no idx files"):
        demo.run_demo(out, quick=True, data_dir=tmp_path)
    assert not out.exists()
