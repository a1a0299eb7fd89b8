"""`pyskim train/test/time` reproduce `caffe train/test/time`: same flags, same log lines, same numbers
as the real Caffe's logs in ../shared/conformance/io/caffe_cli; the command table behind `pyskim` and
tools/*.py; the progress line on a terminal."""
import ast
import fcntl
import os
import pathlib
import pty
import re
import select
import shutil
import struct
import subprocess
import sys
import termios
import time

import pytest
from conformance import CONFORMANCE

from pyskim.apps import cli

CLI_CASE = CONFORMANCE / "io" / "caffe_cli"
SOLVER_CASE = CONFORMANCE / "solvers" / "test_interval"
# The values in a glog line: "...] <message>"; numbers compared at Caffe's 6 printed digits.
NUMBER = r"(-?[\d.]+(?:e[-+]?\d+)?)"
TRAIN_PATTERNS = (rf"Iteration \d+ \(.*\), loss = {NUMBER}", rf"Iteration \d+, lr = {NUMBER}",
                  rf"    Test net output #\d: \w+ = {NUMBER}(?: \(.*\))?", rf"Iteration 30, loss = {NUMBER}")
TEST_PREFIXES = ("Batch ", "Loss: ", "accuracy = ", "loss = ")
ROOT = pathlib.Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools"
#: The repository's copy of Caffe's examples/mnist/lenet.prototxt (the same bytes as CLI_CASE's).
LENET_DEPLOY = ROOT / "prototxt" / "lenet" / "lenet_deploy.prototxt"
#: A solver and net of the tests' own, for the flag checks that need no recorded Caffe run.
TINY_SOLVER = 'net: "net.prototxt"\nbase_lr: 0.01\nlr_policy: "fixed"\nmax_iter: 1\nsolver_mode: CPU\n'
TINY_NET = """name: "tiny"
layer { name: "data" type: "DummyData" top: "data" top: "label"
        dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 2 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def _messages(log_text):
    return [line.split("] ", 1)[1] for line in log_text.splitlines() if "] " in line]


def _run(args, cwd):
    result = subprocess.run([sys.executable, "-m", "pyskim", *args], cwd=cwd, capture_output=True, text=True,
                            timeout=300, check=False)
    return result.returncode, result.stderr


@pytest.fixture
def case_dir(tmp_path, shared_dir):
    """The caffe_cli train/test case with its LMDB (from ``../shared``), in a writable folder."""
    for name in ("net.prototxt", "solver.prototxt"):
        shutil.copy(CLI_CASE / "train_test" / name, tmp_path / name)
    os.symlink(SOLVER_CASE / "data_lmdb", tmp_path / "data_lmdb")
    return tmp_path


def _values(messages, pattern):
    return [float(m.group(1)) for m in map(re.compile(pattern).fullmatch, messages) if m]


def _assert_train_matches_caffe(messages):
    """The loss, lr and test-output lines of ``messages`` are those of Caffe's run from init.caffemodel."""
    caffe = _messages((CLI_CASE / "train_test" / "caffe_train.log").read_text())
    for pattern in TRAIN_PATTERNS:
        expected, got = _values(caffe, pattern), _values(messages, pattern)
        assert len(got) == len(expected) > 0, pattern
        assert got == pytest.approx(expected, rel=2e-4, abs=2e-5), pattern
    assert "Optimization Done." in messages


def _assert_test_matches_caffe(messages):
    """The batch, loss and output lines of ``messages`` are those of ``caffe test`` on final.caffemodel."""
    ours = [m for m in messages if m.startswith(TEST_PREFIXES)]
    caffe = [m for m in _messages((CLI_CASE / "train_test" / "caffe_test.log").read_text())
             if m.startswith(TEST_PREFIXES)]
    assert [re.sub(NUMBER, "#", m) for m in ours] == [re.sub(NUMBER, "#", m) for m in caffe]
    for a, b in zip(ours, caffe):
        assert [float(x) for x in re.findall(NUMBER + "$", a)] == pytest.approx(
            [float(x) for x in re.findall(NUMBER + "$", b)], rel=2e-4, abs=1e-5)


def test_train_log_matches_caffe(case_dir):
    # Caffe drew the initial weights with its own RNG; they are in init.caffemodel.
    shutil.copy(SOLVER_CASE / "init.caffemodel", case_dir / "init.caffemodel")
    code, log = _run(["train", "-solver", "solver.prototxt", "-weights", "init.caffemodel"], case_dir)
    assert code == 0, log
    _assert_train_matches_caffe(_messages(log))
    assert (case_dir / "snap_iter_30.caffemodel").exists()
    assert (case_dir / "snap_iter_30.solverstate").exists()
    # stderr is no terminal here: Caffe's lines only, no progress line
    assert "\r" not in log and "iter/s]" not in log and "/30 iterations" not in log


def test_test_log_matches_caffe(case_dir):
    shutil.copy(SOLVER_CASE / "final.caffemodel", case_dir / "final.caffemodel")
    code, log = _run(["test", "-model", "net.prototxt", "-weights", "final.caffemodel", "-iterations", "3"],
                     case_dir)
    assert code == 0, log
    _assert_test_matches_caffe(_messages(log))
    assert "\r" not in log and "iter/s]" not in log


def _solver_with_weights(case_dir, weights):
    """solver.prototxt plus a ``weights:`` field, as solver_weights.prototxt."""
    text = (case_dir / "solver.prototxt").read_text() + f'weights: "{weights}"\n'
    (case_dir / "solver_weights.prototxt").write_text(text)
    return "solver_weights.prototxt"


def test_train_keeps_the_solver_weights(case_dir):
    """Caffe's ``train`` clears the solver's ``weights:`` only for ``-snapshot`` or ``-weights``."""
    shutil.copy(SOLVER_CASE / "init.caffemodel", case_dir / "init.caffemodel")
    code, log = _run(["train", "-solver", _solver_with_weights(case_dir, "init.caffemodel")], case_dir)
    assert code == 0, log
    _assert_train_matches_caffe(_messages(log))       # started from init.caffemodel, as Caffe did
    # -weights replaces the solver's weights (the missing file is never read) ...
    solver = _solver_with_weights(case_dir, "missing.caffemodel")
    code, log = _run(["train", "-solver", solver, "-weights", "init.caffemodel"], case_dir)
    assert code == 0, log
    _assert_train_matches_caffe(_messages(log))
    # ... and -snapshot clears them: the run resumes at iteration 30 without reading them
    code, log = _run(["train", "-solver", solver, "-snapshot", "snap_iter_30.solverstate"], case_dir)
    assert code == 0, log
    assert "Resuming from snap_iter_30.solverstate" in log and "missing.caffemodel" not in log
    # without either flag the solver's weights are read
    code, log = _run(["train", "-solver", solver], case_dir)
    assert code == 1 and "missing.caffemodel" in log


GLOG_LINE = re.compile(r"[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ [\w.]+:\d+\] (.*)")
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _run_on_terminal(args, cwd, timeout=300):
    """Run ``pyskim`` with stderr on a pseudo-terminal (120 columns); returns (exit code, what it wrote)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "pyskim", *args], cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not select.select([master], [], [], 1.0)[0]:
                continue
            try:
                data = os.read(master, 1 << 16)
            except OSError:          # EIO: the process closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return code, b"".join(chunks).decode("utf-8", "replace")


def _terminal_messages(output):
    """The glog messages among the terminal's lines, where the progress line redraws itself with CR."""
    segments = re.split(r"\r\n|\r|\n", ANSI_ESCAPE.sub("", output))
    return [m.group(1) for m in map(GLOG_LINE.fullmatch, segments) if m]


def test_progress_line_on_a_terminal(case_dir):
    shutil.copy(SOLVER_CASE / "init.caffemodel", case_dir / "init.caffemodel")
    code, output = _run_on_terminal(["train", "-solver", "solver.prototxt", "-weights", "init.caffemodel"],
                                    case_dir)
    assert code == 0, output
    assert re.search(r"train: +100%.*30/30 \[[\d:]+<[\d:]+, +[\d.]+(iter/s|s/iter)\]", output), output[-2000:]
    _assert_train_matches_caffe(_terminal_messages(output))   # Caffe's lines intact above the bar

    shutil.copy(SOLVER_CASE / "final.caffemodel", case_dir / "final.caffemodel")
    code, output = _run_on_terminal(["test", "-model", "net.prototxt", "-weights", "final.caffemodel",
                                     "-iterations", "3"], case_dir)
    assert code == 0, output
    assert re.search(r"test: +100%.*3/3 \[[\d:]+<[\d:]+, +[\d.]+(iter/s|s/iter)\]", output), output[-2000:]
    _assert_test_matches_caffe(_terminal_messages(output))


def test_time_log_lines(tmp_path, shared_dir):
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
    shutil.copy(LENET_DEPLOY, tmp_path / "lenet.prototxt")
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
def test_errors_are_clear(tmp_path, args, message):
    (tmp_path / "solver.prototxt").write_text(TINY_SOLVER)
    (tmp_path / "net.prototxt").write_text(TINY_NET)
    code, log = _run(args, tmp_path)
    assert code == 1
    assert message in log
    assert "Traceback" not in log


def test_unknown_command(tmp_path):
    code, log = _run(["fly"], tmp_path)
    assert code == 1 and "Unknown action: fly" in log


def test_usage_lists_the_command_table(capsys):
    assert cli.main([]) == 1
    usage = capsys.readouterr().err
    assert usage.startswith("command line brew")
    for name, command in cli.COMMANDS.items():
        assert re.search(rf"^  {name} +{re.escape(command.summary)}$", usage, re.MULTILINE), name
    assert cli.main(["-help"]) == 0 and "commands:" in capsys.readouterr().out


def test_every_command_follows_the_convention():
    """Each command is a module with ``build_parser()`` and ``run(args)``, and no ``main`` of its own."""
    for name in cli.COMMANDS:
        module = cli.load(name)
        assert callable(module.run), name
        assert module.build_parser().format_help(), name
        assert not hasattr(module, "main"), name
    assert {"train", "test", "time", "device_query", "demo", "calibrate", "convert", "sparsity", "gsl",
            "upgrade_net_proto", "upgrade_solver_proto", "convert_mnist_data"} <= set(cli.COMMANDS)


def test_tools_are_two_line_wrappers():
    """tools/<name>.py only runs ``run_tool("<name>")`` (a table command): no logic, no sys.path edits."""
    assert not (TOOLS / "convert_mnist.py").exists()      # the duplicate of convert_mnist_data.py
    wrapper = ["import sys", "from pyskim.apps.cli import run_tool",
               "if __name__ == '__main__':\n    sys.exit(run_tool('{}'))"]
    for path in sorted(TOOLS.glob("*.py")):
        body = ast.parse(path.read_text()).body
        if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]                                  # the docstring
        assert [ast.unparse(node) for node in body] == [line.format(path.stem) for line in wrapper], path
        assert path.stem in cli.COMMANDS, path


def test_flags_may_come_before_the_command(caplog):
    """As with gflags: ``caffe -model m.prototxt device_query``."""
    assert cli.split_command(["-model", "m.prototxt", "device_query", "-gpu=0"]) == \
        ("device_query", ["-model", "m.prototxt", "-gpu=0"])
    assert cli.main(["-model", "m.prototxt", "device_query"]) == 0
    assert "no GPU devices to query" in caplog.text
    # a flag's value that happens to name a command is the value, not the command
    assert cli.split_command(["-stage", "test", "time", "-model", "m.prototxt"]) == \
        ("time", ["-stage", "test", "-model", "m.prototxt"])
    assert cli.split_command(["-stage=test", "time"]) == ("time", ["-stage=test"])


def test_a_tool_error_is_one_log_line(tmp_path):
    result = subprocess.run([sys.executable, str(TOOLS / "draw_net.py"), str(tmp_path / "missing.prototxt"),
                             str(tmp_path / "net.raw")], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("E")]
    assert len(errors) == 1 and "missing.prototxt" in errors[0] and GLOG_LINE.fullmatch(errors[0])
    assert "Traceback" not in result.stderr
