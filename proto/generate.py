"""Generate ``pyskim/proto/caffe_pb2.py`` from ``proto/caffe.proto``.

Usage::

    python proto/generate.py          # (re)write the committed bindings
    python proto/generate.py --check  # exit 1 if the committed file is stale

Uses the ``protoc`` bundled with grpcio-tools, so no system protoc is needed.
"""

from __future__ import annotations

import argparse
import ast
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = REPO_ROOT / "proto"
PROTO_FILE = PROTO_DIR / "caffe.proto"
OUTPUT = REPO_ROOT / "pyskim" / "proto" / "caffe_pb2.py"


def generate_source() -> str:
    """Run protoc on caffe.proto and return the generated Python source."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        rc = protoc.main(
            [
                "grpc_tools.protoc",
                f"--proto_path={PROTO_DIR}",
                f"--python_out={tmp}",
                PROTO_FILE.name,
            ]
        )
        if rc != 0:
            raise RuntimeError(f"protoc failed with exit code {rc}")
        return (Path(tmp) / "caffe_pb2.py").read_text()


def serialized_descriptor(source: str) -> bytes:
    """The serialized FileDescriptorProto embedded in generated ``*_pb2.py`` source."""
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "AddSerializedFile"
        ):
            return ast.literal_eval(node.args[0])
    raise ValueError("no AddSerializedFile(...) call in generated source")


def is_current() -> bool:
    """True when the committed bindings describe exactly the schema in caffe.proto.

    The embedded descriptor is compared rather than the whole text, so a different
    grpcio-tools release (which changes only the version stamp) does not count as stale.
    """
    if not OUTPUT.is_file():
        return False
    committed, fresh = OUTPUT.read_text(), generate_source()
    return committed == fresh or serialized_descriptor(committed) == serialized_descriptor(fresh)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed file is stale")
    args = parser.parse_args(argv)

    if args.check:
        if is_current():
            print(f"{OUTPUT.relative_to(REPO_ROOT)} is up to date")
            return 0
        print(
            f"{OUTPUT.relative_to(REPO_ROOT)} is stale; run `python proto/generate.py`",
            file=sys.stderr,
        )
        return 1

    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(generate_source())
    print(f"wrote {OUTPUT.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
