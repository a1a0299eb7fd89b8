"""The README's code blocks marked ``<!-- runnable -->`` work verbatim.

The fast tests check the blocks' shape and that the files and docs the README names exist; the slow
test runs every runnable block in order (bash blocks with ``bash -e``, python blocks with the
interpreter) from a temporary folder that mirrors the repository's top level through symlinks, so the
blocks' outputs (``work/``, ``pyskim-demo-*``) stay out of the checkout.
"""
import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
README = REPO / "README.md"
BLOCK = re.compile(r"<!-- runnable -->\n```(\w+)\n(.*?)\n```", re.DOTALL)


def runnable_blocks():
    return [(lang, code) for lang, code in BLOCK.findall(README.read_text())]


def test_readme_has_runnable_blocks_for_each_workflow():
    blocks = runnable_blocks()
    assert {lang for lang, _ in blocks} == {"bash", "python"}
    text = "\n".join(code for _, code in blocks)
    for command in ("pyskim demo", "pyskim train", "--snapshot", "pyskim test", "tools/gsl.py", "tools/time.py",
                    "to-sparse", "to-onnx", "upgrade_net_proto.py", "import pyskim as caffe"):
        assert command in text, command


def test_files_named_by_the_readme_exist():
    text = README.read_text()
    for path in sorted(set(re.findall(r"(?:\.\./\.\./)?((?:tools|examples|benchmarks)/\w+\.py)", text))):
        assert (REPO / path).is_file(), path
    for path in sorted(set(re.findall(r"\]\(((?:docs|benchmarks)/[\w.]+\.md)\)", text))):
        assert (REPO / path).is_file(), path
    for path in sorted(set(re.findall(r"(prototxt/[\w/]+\.prototxt)", text))):
        assert (REPO / path).is_file(), path


def test_readme_sample_table_is_a_real_demo_table():
    sample = re.search(r"```text\n(pyskim demo: .*?)\n```", README.read_text(), re.DOTALL)
    assert sample, "the README shows no demo table"
    lines = sample.group(1).splitlines()
    assert any(line.startswith("whole net") and line.rstrip().endswith("x") for line in lines)
    assert any(line.startswith("test accuracy: dense") for line in lines)


@pytest.mark.slow
def test_runnable_blocks_work(tmp_path):
    for entry in REPO.iterdir():
        if entry.name not in (".git", "work") and not entry.name.startswith("pyskim-demo-"):
            (tmp_path / entry.name).symlink_to(entry)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for i, (lang, code) in enumerate(runnable_blocks()):
        command = ["bash", "-e", "-o", "pipefail", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
        proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800,
                              check=False)
        assert proc.returncode == 0, f"block {i} ({lang}):\n{code}\n--- stderr:\n{proc.stderr[-4000:]}"
    assert list(tmp_path.glob("pyskim-demo-*/summary.json"))
    assert (tmp_path / "work/lenet/gsl/gsl_final.caffemodel").is_file()
    assert (tmp_path / "work/lenet.onnx").is_file()
