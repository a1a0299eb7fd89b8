"""Shared harness: run one conformance layer case through pyskim and compare with Caffe's arrays."""
import json
import pathlib

import numpy as np

import pyskim

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"
CONFORMANCE = SHARED / "conformance"


def manifest_cases(kind):
    """The conformance cases of one kind; none when ``../shared`` is absent (the tests that use them
    declare ``NEEDS_SHARED`` and are skipped by conftest)."""
    if not (CONFORMANCE / "manifest.json").is_file():
        return []
    manifest = json.loads((CONFORMANCE / "manifest.json").read_text())
    return [case for case in manifest["cases"] if case["kind"] == kind]


def _compare(key, got, expected, tol):
    got = np.asarray(got, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert got.shape == expected.shape, f"{key}: shape {got.shape} != Caffe's {expected.shape}"
    err = np.abs(got - expected)
    bound = tol["atol"] + tol["rtol"] * np.abs(expected)
    bad = ~(err <= bound)
    if bad.any():
        i = np.unravel_index(np.argmax(np.where(bad, err - bound, -np.inf)), err.shape) if err.ndim else ()
        raise AssertionError(f"{key}: {int(bad.sum())}/{bad.size} values off; worst at {i}: pyskim "
                             f"{got[i]!r} vs Caffe {expected[i]!r} (max abs err {err.max():.3g})")


def run_layer_case(case):
    """Run the case's documented procedure and compare every expected array."""
    folder = CONFORMANCE / case["path"]
    expected = np.load(folder / "expected.npz", allow_pickle=False)
    inputs = np.load(folder / "inputs.npz", allow_pickle=False)
    tol = case["tolerance"]
    phase = pyskim.TRAIN if case["phase"] == "TRAIN" else pyskim.TEST
    pyskim.set_random_seed(case["seed"])
    net = pyskim.Net(str(folder / "net.prototxt"), phase, weights=str(folder / "weights.caffemodel"))
    blobs = net.blobs
    for name in inputs.files:
        blobs[name].data[...] = inputs[name]
    pyskim.set_random_seed(case["seed"])
    loss = net._forward(0, len(net.layers) - 1)
    _compare("loss", loss, expected["loss"], tol)
    for key in expected.files:
        if key.startswith("data/"):
            _compare(key, blobs[key[5:]].data, expected[key], tol)
        elif key.startswith("param_after/"):
            layer, index = key.split("/")[1:]
            _compare(key, net.params[layer][int(index)].data, expected[key], tol)
    if case["forward_only"]:
        return
    net.clear_param_diffs()
    net._backward(len(net.layers) - 1, 0)
    for key in expected.files:
        if key.startswith("diff/"):
            _compare(key, blobs[key[5:]].diff, expected[key], tol)
        elif key.startswith("param_diff/"):
            layer, index = key.split("/")[1:]
            _compare(key, net.params[layer][int(index)].diff, expected[key], tol)
