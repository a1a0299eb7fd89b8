"""`pyskim train/test/time` reproduce `caffe train/test/time`: same flags, same log lines, same numbers
as the real Caffe's logs in ../shared/conformance/io/caffe_cli."""
import os
import re
import shutil
import subprocess
import sys

import pytest
from conformance import CONFORMANCE

CLI_CASE = CONFORMANCE / "io" / "caffe_cli"
SOLVER_CASE = CONFORMANCE / "solvers" / "test_interval"
# The values in a glog line: "...] <message>"; numbers compared at Caffe's 6 printed digits.
NUMBER = r"(-?[\d.]+(?:e[-+]?\d+)?)"


def _messages(log_text):
    return [line.split("] ", 1)[1] for line in log_text.splitlines() if "] " in line]


def _run(args, cwd):
    result = subprocess.run([sys.executable, "-m", "pyskim", *args], cwd=cwd, capture_output=True, text=True,
                            timeout=300, check=False)
    return result.returncode, result.stderr


@pytest.fixture
def case_dir(tmp_path):
    """The caffe_cli train/test case with its LMDB, in a writable folder."""
    for name in ("net.prototxt", "solver.prototxt"):
        shutil.copy(CLI_CASE / "train_test" / name, tmp_path / name)
    os.symlink(SOLVER_CASE / "data_lmdb", tmp_path / "data_lmdb")
    return tmp_path


def _values(messages, pattern):
    return [float(m.group(1)) for m in map(re.compile(pattern).fullmatch, messages) if m]


def test_train_log_matches_caffe(case_dir):
    # Caffe drew the initial weights with its own RNG; they are in init.caffemodel.
    shutil.copy(SOLVER_CASE / "init.caffemodel", case_dir / "init.caffemodel")
    code, log = _run(["train", "-solver", "solver.prototxt", "-weights", "init.caffemodel"], case_dir)
    assert code == 0, log
    ours = _messages(log)
    caffe = _messages((CLI_CASE / "train_test" / "caffe_train.log").read_text())
    for pattern in (rf"Iteration \d+ \(.*\), loss = {NUMBER}", rf"Iteration \d+, lr = {NUMBER}",
                    rf"    Test net output #\d: \w+ = {NUMBER}(?: \(.*\))?", rf"Iteration 30, loss = {NUMBER}"):
        expected, got = _values(caffe, pattern), _values(ours, pattern)
        assert len(got) == len(expected) > 0, pattern
        assert got == pytest.approx(expected, rel=2e-4, abs=2e-5), pattern
    assert "Optimization Done." in ours
    assert (case_dir / "snap_iter_30.caffemodel").exists()
    assert (case_dir / "snap_iter_30.solverstate").exists()


def test_test_log_matches_caffe(case_dir):
    shutil.copy(SOLVER_CASE / "final.caffemodel", case_dir / "final.caffemodel")
    code, log = _run(["test", "-model", "net.prototxt", "-weights", "final.caffemodel", "-iterations", "3"],
                     case_dir)
    assert code == 0, log
    ours = [m for m in _messages(log) if m.startswith(("Batch ", "Loss: ", "accuracy = ", "loss = "))]
    caffe = [m for m in _messages((CLI_CASE / "train_test" / "caffe_test.log").read_text())
             if m.startswith(("Batch ", "Loss: ", "accuracy = ", "loss = "))]
    assert [re.sub(NUMBER, "#", m) for m in ours] == [re.sub(NUMBER, "#", m) for m in caffe]
    for a, b in zip(ours, caffe):
        assert [float(x) for x in re.findall(NUMBER + "$", a)] == pytest.approx(
            [float(x) for x in re.findall(NUMBER + "$", b)], rel=2e-4, abs=1e-5)


def test_time_log_lines(tmp_path):
    shutil.copy(CLI_CASE / "lenet.prototxt", tmp_path / "lenet.prototxt")
    code, log = _run(["time", "--model=lenet.prototxt", "-iterations=2"], tmp_path)
    assert code == 0, log
    ours = _messages(log)
    caffe = _messages((CLI_CASE / "caffe_time.log").read_text())

    def shape(messages):
        keep = ("***", "Testing for", "Iteration:", "Average", "Total Time", "forward:", "backward:")
        return [re.sub(NUMBER, "#", m) for m in messages if m.startswith(keep) or "\t" in m]
    caffe_shape = [line for line in shape(caffe) if not line.startswith("Iteration: #") or line.endswith("#")]
    assert [s for s in shape(ours) if not s.startswith("Iteration:")] == \
        [s for s in caffe_shape if not s.startswith("Iteration:")]
    assert sum(s.startswith("Iteration:") for s in shape(ours)) == 2


def test_forward_only_time(tmp_path):
    shutil.copy(CLI_CASE / "lenet.prototxt", tmp_path / "lenet.prototxt")
    code, log = _run(["time", "-model", "lenet.prototxt", "-iterations", "1", "-forward_only"], tmp_path)
    assert code == 0, log
    assert "Iteration: 1 forward time:" in log and "backward:" not in log


@pytest.mark.parametrize("args, message", [
    (["train"], "Need a solver definition to train."),
    (["train", "-solver", "solver.prototxt", "-weights", "a", "-snapshot", "b"], "not both"),
    (["test", "-model", "net.prototxt"], "Need model weights to score."),
    (["train", "-solver", "missing.prototxt"], "missing.prototxt"),
    (["train", "-solver", "solver.prototxt", "-sigint_effect", "explode"], "Invalid signal effect"),
])
def test_errors_are_clear(case_dir, args, message):
    code, log = _run(args, case_dir)
    assert code == 1
    assert message in log
    assert "Traceback" not in log


def test_unknown_command(tmp_path):
    code, log = _run(["fly"], tmp_path)
    assert code == 1 and "Unknown action: fly" in log
