"""Caffe parity in fault handling (issue 12): failed snapshot writes, file modes, interrupted
snapshots, corrupt V1 caffemodels and glog's environment variables.

* A snapshot that cannot be written (file size limit, full disk) ends ``pyskim train`` with one error
  line naming the file and the cause and exit status 1; the earlier snapshot stays as it was.
* Every file pyskim writes has mode ``0666 & ~umask``, as the files Caffe's ``std::ofstream`` creates.
* A temp file left by a write killed with ``kill -9`` is removed at the next snapshot, with a log line.
* A caffemodel whose layer or blob name holds bytes that are not UTF-8 gives a PyskimError naming the
  file (Python's protobuf cannot hand such a name out as text).
* ``GLOG_minloglevel``, ``GLOG_log_dir`` and ``GLOG_logtostderr`` act on the ``pyskim`` command and
  the tools as on Caffe's.
"""
import getpass
import logging
import os
import re
import resource
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pyskim as caffe
from pyskim.errors import FileWriteError, ModelFileError
from pyskim.io import files
from pyskim.io.protofiles import read_binary, write_text
from pyskim.io.upgrade import read_net_binary
from pyskim.proto import caffe_pb2
from pyskim.solvers import get_solver

ROOT = Path(__file__).resolve().parents[1]

SOLVER = """net: "net.prototxt"
type: "SGD"
base_lr: 0.05
momentum: 0.9
lr_policy: "fixed"
display: 1
max_iter: 2
snapshot: 2
snapshot_prefix: "snap"
random_seed: 1701
"""
#: glog's line prefix: severity letter, mmdd hh:mm:ss.uuuuuu, thread id, file:line]
GLOG_LINE = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ [\w.]+:\d+\] ")


@pytest.fixture
def training_dir(tmp_path, shared_dir):
    """A folder with the small LeNet of the sgd_fixed solver case, its LMDB and a 2-iteration solver
    that snapshots at iteration 2 under the prefix ``snap``."""
    case = shared_dir / "conformance" / "solvers" / "sgd_fixed"
    shutil.copy(case / "net.prototxt", tmp_path / "net.prototxt")
    (tmp_path / "data_lmdb").symlink_to(case / "data_lmdb")
    (tmp_path / "solver.prototxt").write_text(SOLVER)
    return tmp_path


def _env(**extra):
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    for name in ("GLOG_minloglevel", "GLOG_log_dir", "GLOG_logtostderr", "PYSKIM_CAFFE_ALIAS"):
        env.pop(name, None)
    env.update(extra)
    return env


def _pyskim(args, cwd, preexec_fn=None, **env):
    return subprocess.run([sys.executable, "-m", "pyskim", *args], cwd=cwd, env=_env(**env), text=True,
                          capture_output=True, timeout=300, preexec_fn=preexec_fn, check=False)


def _error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("E")]


def _file_size_limit(limit):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)        # EFBIG instead of death by SIGXFSZ
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


# -- a failed snapshot write ---------------------------------------------------------------------------

@pytest.mark.parametrize("snapshot_format,model_name", [("BINARYPROTO", "snap_iter_2.caffemodel"),
                                                         ("HDF5", "snap_iter_2.caffemodel.h5")])
def test_snapshot_over_the_file_size_limit_is_one_error_line(training_dir, snapshot_format, model_name):
    """``ulimit -f`` below the snapshot's size: exit status 1, one error line naming the file and
    'File too large', no traceback, the earlier snapshot of the same name unchanged, no temp file."""
    solver = training_dir / "solver.prototxt"
    solver.write_text(SOLVER + f"snapshot_format: {snapshot_format}\n")
    first = _pyskim(["train", "-solver", "solver.prototxt"], training_dir)
    assert first.returncode == 0, first.stderr
    before = {p.name: p.read_bytes() for p in training_dir.glob("snap_iter_2.*")}
    assert model_name in before and len(before[model_name]) > 20000

    failed = _pyskim(["train", "-solver", "solver.prototxt"], training_dir,
                     preexec_fn=_file_size_limit(10000))
    assert failed.returncode == 1, failed.stderr
    assert "Traceback" not in failed.stderr
    errors = _error_lines(failed.stderr)
    assert len(errors) == 1, failed.stderr
    assert GLOG_LINE.match(errors[0]) and f"Could not write {model_name}: File too large" in errors[0]
    assert {p.name: p.read_bytes() for p in training_dir.glob("snap_iter_2.*")} == before
    assert not [p for p in os.listdir(training_dir) if files.TEMP_MARKER in p]


def test_snapshot_on_a_full_disk_is_one_error_line(training_dir):
    """A full tmpfs (mounted in a private mount namespace, where root may): 'No space left on device'
    in one error line, exit status 1, the earlier snapshot intact."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.skip("needs unshare and mount (util-linux) to mount a small tmpfs")
    disk = training_dir / "disk"
    disk.mkdir()
    script = f"""
set -u
mount -t tmpfs -o size=1m tmpfs {disk} 2>/dev/null || exit 77
cp {training_dir}/net.prototxt {training_dir}/solver.prototxt {disk}/
ln -s "$(readlink {training_dir}/data_lmdb)" {disk}/data_lmdb
cd {disk}
"{sys.executable}" -m pyskim train -solver solver.prototxt 2>first.log || {{ cat first.log >&2; exit 70; }}
sha256sum snap_iter_2.caffemodel snap_iter_2.solverstate > before.sha
dd if=/dev/zero of=filler bs=4k 2>/dev/null
"{sys.executable}" -m pyskim train -solver solver.prototxt
echo "exit=$?"
sha256sum -c --quiet before.sha && echo "snapshot intact"
ls -a
"""
    try:
        result = subprocess.run(["unshare", "-m", "bash", "-c", script], env=_env(), text=True,
                                capture_output=True, timeout=300, check=False)
    except OSError as e:
        pytest.skip(f"cannot run unshare: {e}")
    if result.returncode == 77 or "unshare:" in result.stderr[:200]:
        pytest.skip(f"mounting a tmpfs is not allowed here: {result.stderr.strip()[:200]}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "exit=1" in result.stdout and "snapshot intact" in result.stdout, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    errors = _error_lines(result.stderr)
    assert len(errors) == 1, result.stderr
    assert "Could not write snap_iter_2.caffemodel: No space left on device" in errors[0]
    assert files.TEMP_MARKER not in result.stdout          # the listing of the tmpfs


# -- file modes ------------------------------------------------------------------------------------

@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield 0o644
    os.umask(old)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_files_honour_the_umask(training_dir, shared_dir, umask_022, monkeypatch):
    """Under umask 022 every writer gives 0644 (not mkstemp's 0600): caffemodels (binary, HDF5),
    solver states, prototxts, sparse .npz, upgraded caffemodels, ONNX."""
    from pyskim.convert.sparse import save_sparse
    from pyskim.convert.upgrade import upgrade_caffemodel

    monkeypatch.chdir(training_dir)
    solver = get_solver("solver.prototxt")
    written = list(solver.snapshot())
    solver.net.save("saved.caffemodel")
    solver.net.save_hdf5("saved.caffemodel.h5")
    write_text("net_copy.prototxt", solver.net.to_proto())
    save_sparse(read_binary("saved.caffemodel", caffe_pb2.NetParameter()), "saved.npz")
    v1 = shared_dir / "models" / "trained" / "everpeace_caffe" / "mnist" / "lenet_iter_10000.caffemodel"
    upgrade_caffemodel(v1, "upgraded.caffemodel")
    written += ["saved.caffemodel", "saved.caffemodel.h5", "net_copy.prototxt", "saved.npz",
                "upgraded.caffemodel"]
    if _has_onnx():
        from pyskim.convert.onnx_export import export_onnx
        export_onnx(ROOT / "prototxt" / "lenet" / "lenet_deploy.prototxt", None, "lenet.onnx")
        written.append("lenet.onnx")
    assert {name: oct(_mode(name)) for name in written} == {name: oct(umask_022) for name in written}
    os.umask(0o027)
    solver.net.save("private.caffemodel")
    assert _mode("private.caffemodel") == 0o640


def test_hdf5_solver_state_honours_the_umask(training_dir, umask_022, monkeypatch):
    """``snapshot_format: HDF5`` writes ``.caffemodel.h5`` and ``.solverstate.h5`` with mode 0644."""
    monkeypatch.chdir(training_dir)
    (training_dir / "solver.prototxt").write_text(SOLVER + "snapshot_format: HDF5\n")
    model, state = get_solver("solver.prototxt").snapshot()
    assert (oct(_mode(model)), oct(_mode(state))) == (oct(umask_022), oct(umask_022))


def test_tools_write_files_that_honour_the_umask(tmp_path, shared_dir):
    """compute_image_mean's mean file and upgrade_net_proto's prototxt, run as commands under umask 022."""
    lmdb_dir = shared_dir / "conformance" / "solvers" / "sgd_fixed" / "data_lmdb"
    v1 = shared_dir / "conformance" / "io" / "upgrade_v1_net" / "v1.prototxt"

    def umask():
        os.umask(0o022)
    mean = _pyskim(["compute_image_mean", str(lmdb_dir), "mean.binaryproto"], tmp_path, preexec_fn=umask)
    assert mean.returncode == 0, mean.stderr
    upgraded = _pyskim(["upgrade_net_proto", str(v1), "upgraded.prototxt"], tmp_path, preexec_fn=umask)
    assert upgraded.returncode == 0, upgraded.stderr
    modes = {oct(_mode(tmp_path / name)) for name in ("mean.binaryproto", "upgraded.prototxt")}
    assert modes == {oct(0o644)}


def _has_onnx():
    try:
        import onnx  # noqa: F401
    except ImportError:
        return False
    return True


# -- a snapshot interrupted by kill -9 ----------------------------------------------------------------

HANGING_WRITER = """
import os, sys, time
from pyskim.io import files
def hang(fd):                      # the data is written; stop before the rename, as a kill -9 would
    open(sys.argv[2], "w").close()
    time.sleep(600)
os.fsync = hang
files.atomic_write(sys.argv[1], b"w" * 200000)
"""


def _temp_files(folder):
    return sorted(name for name in os.listdir(folder) if files.TEMP_MARKER in name)


def test_stale_temp_file_of_a_killed_write_is_removed_at_the_next_snapshot(training_dir, monkeypatch, caplog):
    """A writer killed with SIGKILL mid-write leaves ``.snap_iter_2.caffemodel.pyskim-tmp-<pid>-...``;
    the next snapshot of prefix ``snap`` removes it and logs one line naming it. Temp files of another
    prefix, of a live process and foreign dot files stay."""
    marker = training_dir / "writing"
    target = training_dir / "snap_iter_2.caffemodel"
    writer = subprocess.Popen([sys.executable, "-c", HANGING_WRITER, str(target), str(marker)], env=_env())
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert writer.poll() is None and time.monotonic() < deadline, "the writer did not start writing"
            time.sleep(0.05)
    finally:
        writer.kill()
        writer.wait()
    (stale,) = _temp_files(training_dir)
    assert stale.startswith(".snap_iter_2.caffemodel.pyskim-tmp-")
    assert (training_dir / stale).stat().st_size == 200000 and not target.exists()

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        live = f".snap_iter_4.caffemodel.pyskim-tmp-{sleeper.pid}-0123abcd"
        other_prefix = f".other_iter_2.caffemodel.pyskim-tmp-{writer.pid}-0123abcd"
        kept = [live, other_prefix, ".snap_iter_2.caffemodel.tmp"]
        for name in kept:
            (training_dir / name).write_bytes(b"x")
        monkeypatch.chdir(training_dir)
        solver = get_solver("solver.prototxt")
        with caplog.at_level(logging.INFO, logger="pyskim"):
            solver.snapshot()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not (training_dir / stale).exists()
    assert all((training_dir / name).exists() for name in kept)
    removed = [r.getMessage() for r in caplog.records if "stale temp file" in r.getMessage()]
    assert len(removed) == 1 and str(training_dir / stale) in removed[0], removed
    assert "snap_iter_2.caffemodel" in removed[0].rsplit("write of", 1)[-1]


def test_temp_files_are_named_after_the_file_and_removed_after_a_failed_write(tmp_path):
    target = tmp_path / "model.caffemodel"
    name = os.path.basename(files.temp_name(target))
    assert re.fullmatch(rf"\.model\.caffemodel\.pyskim-tmp-{os.getpid()}-[0-9a-f]+", name)
    with pytest.raises(FileWriteError, match=r"Could not write .*/missing/model\.caffemodel: No such "):
        files.atomic_write(tmp_path / "missing" / "model.caffemodel", b"data")
    target.write_bytes(b"old")
    with pytest.raises(TypeError):
        files.atomic_write(target, "text is not bytes")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["model.caffemodel"]


# -- a corrupt V1 caffemodel -------------------------------------------------------------------------

def _corrupt_text(data, field, text):
    """``data`` with the first byte of the string ``text`` stored after the field key and length bytes
    ``field`` replaced by 0xFF (never valid in UTF-8)."""
    data = bytearray(data)
    data[data.index(field + text) + len(field)] = 0xFF
    return bytes(data)


def test_v1_caffemodel_with_a_non_utf8_blob_name(shared_dir, tmp_path):
    """The issue's repro: the top name of V1 layer conv1 gets byte 0xFF. ``pyskim test`` prints one
    error line naming the file (no UnicodeDecodeError traceback); the reader raises ModelFileError."""
    folder = shared_dir / "models" / "trained" / "everpeace_caffe" / "mnist"
    original = (folder / "lenet_iter_10000.caffemodel").read_bytes()
    bad = tmp_path / "bad.caffemodel"
    bad.write_bytes(_corrupt_text(original, b"\x1a\x05", b"conv1"))
    with pytest.raises(ModelFileError, match=r"bad\.caffemodel: corrupt NetParameter: the text field "
                                             r"layers\[1\]\.top\[0\] holds bytes that are not UTF-8"):
        read_net_binary(bad)
    result = _pyskim(["test", "-model", str(folder / "lenet.prototxt"), "-weights", str(bad),
                      "-iterations", "1"], tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    (error,) = _error_lines(result.stderr)
    assert str(bad) in error and "not UTF-8" in error


def test_current_caffemodel_with_a_non_utf8_layer_name(shared_dir, tmp_path):
    """The same for a current-format caffemodel (layer name) and a solver state (learned_net)."""
    model = shared_dir / "conformance" / "layers" / "net_lenet" / "weights.caffemodel"
    bad = tmp_path / "bad.caffemodel"
    bad.write_bytes(_corrupt_text(model.read_bytes(), b"\x0a\x05", b"conv1"))
    with pytest.raises(ModelFileError,
                       match=r"bad\.caffemodel: corrupt NetParameter: the text field layer\[\d+\]\.name"):
        caffe.Net(str(model.parent / "net.prototxt"), caffe.TEST, weights=str(bad))
    state = caffe_pb2.SolverState(iter=1, learned_net="snap_iter_1.caffemodel")
    bad_state = tmp_path / "bad.solverstate"
    bad_state.write_bytes(_corrupt_text(state.SerializeToString(), b"\x12\x16", b"snap_iter_1"))
    with pytest.raises(ModelFileError,
                       match=r"bad\.solverstate: corrupt SolverState: the text field learned_net"):
        read_binary(bad_state, caffe_pb2.SolverState())


# -- GLOG_* environment variables ------------------------------------------------------------------------

def _severities(stderr):
    return "".join(sorted({m.group(1) for m in map(GLOG_LINE.match, stderr.splitlines()) if m}))


@pytest.mark.parametrize("level,shown", [("0", "EIW"), ("1", "EW"), ("2", "E"), ("3", "")])
def test_glog_minloglevel(tmp_path, level, shown):
    """An INFO, a WARNING (-gpu) and an ERROR line (a missing model): GLOG_minloglevel drops the
    severities below it; the exit status stays 1."""
    result = _pyskim(["test", "-model", "missing.prototxt", "-weights", "w.caffemodel", "-gpu", "0"],
                     tmp_path, GLOG_minloglevel=level)
    assert result.returncode == 1
    assert _severities(result.stderr) == shown, result.stderr


def test_glog_log_dir_writes_glogs_log_file(tmp_path):
    """GLOG_log_dir: ``<program>.<host>.<user>.log.INFO.<yyyymmdd>-<hhmmss>.<pid>`` with glog's header
    and the lines stderr shows, a ``<program>.INFO`` symlink; GLOG_logtostderr=1 writes no file."""
    logs = tmp_path / "logs"
    logs.mkdir()
    result = _pyskim(["test", "-model", "missing.prototxt", "-weights", "w.caffemodel"], tmp_path,
                     GLOG_log_dir=str(logs))
    assert result.returncode == 1
    (log_file,) = [p for p in logs.iterdir() if not p.is_symlink()]
    host, user = re.escape(socket.gethostname()), re.escape(getpass.getuser())
    pattern = rf"pyskim\.{host}\.{user}\.log\.INFO\.\d{{8}}-\d{{6}}\.\d+"
    assert re.fullmatch(pattern, log_file.name), log_file.name
    assert os.readlink(logs / "pyskim.INFO") == log_file.name
    text = log_file.read_text().splitlines()
    assert text[0].startswith("Log file created at: ") and text[1].startswith("Running on machine: ")
    assert text[2].startswith("Log line format: [IWEF]mmdd hh:mm:ss.uuuuuu threadid file:line] msg")
    logged = [line for line in result.stderr.splitlines() if GLOG_LINE.match(line)]
    assert logged and text[3:] == logged

    quiet = tmp_path / "quiet"
    quiet.mkdir()
    result = _pyskim(["device_query"], tmp_path, GLOG_log_dir=str(quiet), GLOG_logtostderr="1")
    assert result.returncode == 0 and GLOG_LINE.match(result.stderr) and not list(quiet.iterdir())


def test_glog_variables_act_on_the_tools(tmp_path):
    """A tool (tools/convert_cifar_data.py) logs under its own program name and honours the level."""
    logs = tmp_path / "logs"
    logs.mkdir()
    tool = [sys.executable, str(ROOT / "tools" / "convert_cifar_data.py"), "nowhere", "out", "lmdb"]
    result = subprocess.run(tool, cwd=tmp_path, env=_env(GLOG_log_dir=str(logs)), capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 1 and "Unable to open train file #1" in result.stderr
    assert (logs / "convert_cifar_data.INFO").is_symlink()
    quiet = subprocess.run(tool, cwd=tmp_path, env=_env(GLOG_minloglevel="3"), capture_output=True, text=True,
                           timeout=120, check=False)
    assert quiet.returncode == 1 and not GLOG_LINE.search(quiet.stderr)


def test_pycaffe_init_log_sets_the_level():
    """``caffe.init_log(level)`` as pycaffe's ``FLAGS_minloglevel``."""
    logger = logging.getLogger("pyskim")
    level = logger.level
    try:
        caffe.init_log(2)
        assert logger.level == logging.ERROR
        caffe.init_log(1, True)
        assert logger.level == logging.WARNING
    finally:
        logger.setLevel(level)


def test_progress_lines_follow_the_level(capsys):
    from pyskim.core.glog import TextProgress
    logger = logging.getLogger("pyskim")
    level = logger.level
    try:
        logger.setLevel(logging.WARNING)
        progress = TextProgress(10, "quiet")
        progress.update(10)
        progress.close()
        assert capsys.readouterr().err == ""
        logger.setLevel(logging.INFO)
        progress = TextProgress(10, "shown")
        progress.update(10)
        progress.close()
        assert "shown: 10/10 iterations" in capsys.readouterr().err
    finally:
        logger.setLevel(level)
