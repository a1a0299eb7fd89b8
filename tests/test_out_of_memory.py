"""Running out of memory below the blob-size cap gives one PyskimError line naming the layer, the blob
and the bytes asked for (issue: numpy's ``_ArrayMemoryError`` traceback came out of the Blob)."""
import pathlib
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[1]
LENET = ROOT / "prototxt" / "lenet" / "lenet_deploy.prototxt"

# The child limits its own address space to what it uses now plus 1 GiB, then asks LeNet for an
# input of 64 x 1 x 4000 x 4000 floats (3.8 GiB, below the 8 GiB cap).
CHILD = textwrap.dedent("""
    import os, resource, sys, tempfile
    import pyskim
    from pyskim.errors import OutOfMemoryError
    model, where = sys.argv[1], sys.argv[2]
    if where == "layer":
        text = open(model).read().replace("dim: 64 dim: 1 dim: 28 dim: 28", "dim: 64 dim: 1 dim: 4000 dim: 4000")
        model = os.path.join(tempfile.mkdtemp(), "big.prototxt")
        open(model, "w").write(text)
    with open("/proc/self/statm") as f:
        used = int(f.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (used + (1 << 30), resource.RLIM_INFINITY))
    try:
        net = pyskim.Net(model, pyskim.TEST)
        if where == "blob":
            net.blobs["data"].reshape(64, 1, 4000, 4000)
    except OutOfMemoryError as e:
        print("ERROR:", e)
        sys.exit(3)
    print("no error")
""")


def _run(where):
    return subprocess.run([sys.executable, "-c", CHILD, str(LENET), where], capture_output=True, text=True, check=False,
                          timeout=120, cwd=ROOT)


def test_blob_reshape_out_of_memory_names_blob_and_bytes():
    result = _run("blob")
    assert result.returncode == 3, result.stdout + result.stderr
    line = result.stdout.strip()
    assert "blob 'data'" in line and "GiB" in line and "64, 1, 4000, 4000" in line
    assert "Traceback" not in result.stderr


def test_layer_reshape_out_of_memory_names_the_layer_too():
    result = _run("layer")
    assert result.returncode == 3, result.stdout + result.stderr
    line = result.stdout.strip()
    assert line.startswith("ERROR: layer 'data' (Input): ") and "blob 'data'" in line and "GiB" in line
