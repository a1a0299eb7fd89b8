"""Training soak: memory stays flat (``benchmarks/soak_lenet.py``, run in a fresh process so that the
resident set size is the training's own).

The default run trains the conformance suite's small LeNet for 600 iterations (TEST passes included,
the LMDB cursor wrapping around many times) and checks that RSS does not grow after the first 100
iterations; the slow run is the full 10,000-iteration LeNet soak on a Fashion-MNIST subset.
"""
import json
import pathlib
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "soak_lenet.py"


def _soak(tmp_path, *args, timeout):
    out = tmp_path / "soak.json"
    subprocess.run([sys.executable, str(SCRIPT), "--json", str(out), "--work", str(tmp_path / "work"), *args],
                   check=True, capture_output=True, timeout=timeout)
    return json.loads(out.read_text())


def test_short_soak_has_flat_memory(shared_dir, tmp_path):
    if not (shared_dir / "conformance/solvers/test_interval/data_lmdb").is_dir():
        pytest.skip("conformance solver data not available")
    result = _soak(tmp_path, "--net", "small", "--iters", "600", "--sample-every", "100", timeout=300)
    assert [s["iter"] for s in result["samples"]] == list(range(0, 601, 100))
    assert result["max_above_warmup_mib"] < 8, result
    assert abs(result["growth_after_warmup_mib"]) < 8, result


@pytest.mark.slow
def test_lenet_10000_iteration_soak_has_flat_memory(shared_dir, tmp_path):
    if not (shared_dir / "datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST not available")
    result = _soak(tmp_path, "--iters", "10000", "--sample-every", "500", timeout=4 * 3600)
    assert len(result["samples"]) == 21
    assert result["max_above_warmup_mib"] < 32, result
    assert result["slope_mib_per_1000_iter"] < 2, result
