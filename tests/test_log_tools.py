"""tools/parse_log.py and tools/plot_training_log.py on real Caffe logs and on pyskim's own logs."""
import csv
import datetime
import os
import shutil
import subprocess
import sys

import pytest
from conformance import CONFORMANCE

from pyskim.apps import parse_log, plot_training_log
from pyskim.apps.cli import run_tool

CAFFE_LOG = CONFORMANCE / "io" / "caffe_cli" / "train_test" / "caffe_train.log"
CLI_CASE = CONFORMANCE / "io" / "caffe_cli" / "train_test"
DATA_LMDB = CONFORMANCE / "solvers" / "test_interval" / "data_lmdb"


def _tool(name):
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", name)


def _read_csv(path, delimiter=","):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter=delimiter))


@pytest.fixture(scope="module")
def pyskim_log(tmp_path_factory, shared_dir):
    """A training log written by ``pyskim train`` (stderr, glog format) on the caffe_cli case."""
    work = tmp_path_factory.mktemp("train")
    for name in ("net.prototxt", "solver.prototxt"):
        shutil.copy(CLI_CASE / name, work / name)
    os.symlink(DATA_LMDB, work / "data_lmdb")
    result = subprocess.run([sys.executable, "-m", "pyskim", "train", "-solver", "solver.prototxt"], cwd=work,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    path = work / "pyskim_train.log"
    path.write_text(result.stderr)
    return path


def test_caffe_log_new_glog_stamps(shared_dir):
    """Caffe's log uses newer glog's I<yyyymmdd> stamps; rows match its display and test lines."""
    train, test = parse_log.parse_log(str(CAFFE_LOG))
    assert len(train) == 30 and len(test) == 4
    assert list(train[0]) == ["NumIters", "Seconds", "LearningRate", "loss"]
    assert list(test[0]) == ["NumIters", "Seconds", "LearningRate", "accuracy", "loss"]
    assert [row["NumIters"] for row in test] == [0.0, 10.0, 20.0, 30.0]
    assert train[0]["loss"] == 2.21313 and train[29]["loss"] == 1.35003
    assert test[0]["accuracy"] == 0.15625 and test[3]["loss"] == 1.61848
    assert all(row["LearningRate"] == 0.05 for row in train + test)  # first row's NaN fixed up
    # Seconds count from the "Solving" line at 20:54:39.017714 to the row's first output line.
    assert train[0]["Seconds"] == pytest.approx(0.020877 - 0.017714, abs=1e-9)
    assert all(b["Seconds"] >= a["Seconds"] for a, b in zip(train, train[1:]))


def test_pyskim_log_parses_like_caffes(pyskim_log, shared_dir):
    """pyskim's log (old-style I<mmdd> glog stamps) gives the same rows, iterations and columns as
    Caffe's log of the same run (values differ: pyskim drew its own initial weights)."""
    ours_train, ours_test = parse_log.parse_log(str(pyskim_log))
    caffe_train, caffe_test = parse_log.parse_log(str(CAFFE_LOG))
    assert [list(r) for r in ours_train] == [list(r) for r in caffe_train]
    assert [list(r) for r in ours_test] == [list(r) for r in caffe_test]
    assert [r["NumIters"] for r in ours_train] == [r["NumIters"] for r in caffe_train]
    assert [r["NumIters"] for r in ours_test] == [r["NumIters"] for r in caffe_test]
    assert all(r["LearningRate"] == 0.05 for r in ours_train)
    assert 0 <= ours_train[0]["Seconds"] < 60


def test_pyskim_log_with_caffes_weights_gives_caffes_numbers(tmp_path, shared_dir):
    """Trained from Caffe's initial weights, pyskim's log parses to Caffe's losses and accuracies."""
    for name in ("net.prototxt", "solver.prototxt"):
        shutil.copy(CLI_CASE / name, tmp_path / name)
    os.symlink(DATA_LMDB, tmp_path / "data_lmdb")
    shutil.copy(CONFORMANCE / "solvers" / "test_interval" / "init.caffemodel", tmp_path / "init.caffemodel")
    result = subprocess.run([sys.executable, "-m", "pyskim", "train", "-solver", "solver.prototxt",
                             "-weights", "init.caffemodel"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    log = tmp_path / "ours.log"
    log.write_text(result.stderr)
    ours_train, ours_test = parse_log.parse_log(str(log))
    caffe_train, caffe_test = parse_log.parse_log(str(CAFFE_LOG))
    for ours, theirs in ((ours_train, caffe_train), (ours_test, caffe_test)):
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            for key in b:
                if key != "Seconds":
                    assert a[key] == pytest.approx(b[key], rel=2e-4, abs=2e-5), key


def test_cli_writes_csv_files(pyskim_log, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    assert run_tool("parse_log", [str(pyskim_log), str(out), "--verbose"]) == 0
    printed = capsys.readouterr().out
    assert f"Wrote {out / 'pyskim_train.log.train'}" in printed
    train = _read_csv(out / "pyskim_train.log.train")
    test = _read_csv(out / "pyskim_train.log.test")
    assert list(train[0]) == ["NumIters", "Seconds", "LearningRate", "loss"]
    assert len(train) == 30 and len(test) == 4
    assert float(train[3]["NumIters"]) == 3.0


def test_cli_delimiter_and_script(tmp_path, shared_dir):
    """The tools/parse_log.py script, with a tab delimiter."""
    result = subprocess.run([sys.executable, _tool("parse_log.py"), str(CAFFE_LOG), str(tmp_path),
                             "--delimiter", "\t"], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "caffe_train.log.test").read_text().splitlines()
    assert lines[0] == "NumIters\tSeconds\tLearningRate\taccuracy\tloss"
    assert lines[1].split("\t")[3] == "0.15625"


def test_no_rows_no_files(tmp_path, capsys):
    log = tmp_path / "empty.log"
    log.write_text("I1127 20:54:38.651667 30994 cli.py:89] Use CPU.\n")
    assert run_tool("parse_log", [str(log), str(tmp_path), "--verbose"]) == 0
    assert "Not writing" in capsys.readouterr().out
    assert not (tmp_path / "empty.log.train").exists()
    assert run_tool("parse_log", [str(tmp_path / "missing.log"), str(tmp_path)]) == 1


def test_year_less_log_crossing_new_year(tmp_path):
    """Old glog stamps have no year: a December-to-January log keeps counting forward."""
    lines = [
        "I1231 23:59:58.000000 1 solver.cpp:289] Solving net",
        "I1231 23:59:59.000000 1 solver.cpp:239] Iteration 0 (0 iter/s, 0s/1 iters), loss = 2",
        "I1231 23:59:59.000000 1 solver.cpp:258]     Train net output #0: loss = 2 (* 1 = 2 loss)",
        "I1231 23:59:59.500000 1 sgd_solver.cpp:112] Iteration 0, lr = 0.01",
        "I0101 00:00:01.000000 1 solver.cpp:239] Iteration 1 (1 iter/s, 1s/1 iters), loss = 1.5",
        "I0101 00:00:01.000000 1 solver.cpp:258]     Train net output #0: loss = 1.5 (* 1 = 1.5 loss)",
        "garbage line without a stamp: Iteration 1, Train net output #0: loss = 9",
        "I0101 00:00:01.500000 1 sgd_solver.cpp:112] Iteration 1, lr = 0.005",
        "I0101 00:00:02.000000 1 solver.cpp:239] Iteration 2 (1 iter/s, 1s/1 iters), loss = 1",
        "I0101 00:00:02.000000 1 solver.cpp:258]     Train net output #0: loss = 1 (* 1 = 1 loss)",
    ]
    log = tmp_path / "newyear.log"
    log.write_text("\n".join(lines) + "\n")
    train, test = parse_log.parse_log(str(log))
    assert test == []
    assert [r["Seconds"] for r in train] == [1.0, 3.0, 4.0]
    assert [r["loss"] for r in train] == [2.0, 1.5, 1.0]
    assert [r["LearningRate"] for r in train] == [0.01, 0.01, 0.005]


def test_datetime_forms():
    old = parse_log.extract_datetime_from_line("I0210 13:39:22.381027 25210 solver.cpp:204] x", 2015)
    assert old == datetime.datetime(2015, 2, 10, 13, 39, 22, 381027)
    new = parse_log.extract_datetime_from_line("I20261127 20:54:39.015174 31002 caffe.cpp:197] x", 1999)
    assert new == datetime.datetime(2026, 11, 27, 20, 54, 39, 15174)
    with pytest.raises(ValueError):
        parse_log.extract_datetime_from_line("    Test net output #0: accuracy = 1", 2015)


def test_chart_types_are_bvlcs():
    assert plot_training_log.get_supported_chart_types() == [
        "Test accuracy  vs. Iters", "Test accuracy  vs. Seconds", "Test loss  vs. Iters",
        "Test loss  vs. Seconds", "Train learning rate  vs. Iters", "Train learning rate  vs. Seconds",
        "Train loss  vs. Iters", "Train loss  vs. Seconds"]


@pytest.mark.parametrize("chart_type", range(8))
def test_plot_every_chart_type(chart_type, pyskim_log, tmp_path, shared_dir):
    pytest.importorskip("matplotlib")
    caffe_log = tmp_path / "caffe.log"
    shutil.copy(CAFFE_LOG, caffe_log)
    png = tmp_path / f"chart{chart_type}.png"
    assert run_tool("plot_training_log", [str(chart_type), str(png), str(pyskim_log), str(caffe_log)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    xs, ys = plot_training_log.load_data(str(caffe_log), chart_type)
    assert len(xs) == len(ys) == (4 if chart_type < 4 else 30)


def test_plot_script_and_errors(tmp_path, pyskim_log):
    pytest.importorskip("matplotlib")
    png = tmp_path / "loss.png"
    result = subprocess.run([sys.executable, _tool("plot_training_log.py"), "6", str(png), str(pyskim_log)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert png.exists()
    assert run_tool("plot_training_log", []) == 1
    assert run_tool("plot_training_log", ["8", str(png), str(pyskim_log)]) == 1
    assert run_tool("plot_training_log", ["0", str(tmp_path / "x.jpg"), str(pyskim_log)]) == 1
    assert run_tool("plot_training_log", ["0", str(png), str(tmp_path / "missing.log")]) == 1
    not_log = tmp_path / "train.txt"
    shutil.copy(pyskim_log, not_log)
    assert run_tool("plot_training_log", ["0", str(png), str(not_log)]) == 1
    empty = tmp_path / "empty.log"
    empty.write_text("nothing here\n")
    assert run_tool("plot_training_log", ["0", str(png), str(empty)]) == 1
