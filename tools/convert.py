#!/usr/bin/env python
"""Model conversion (sparse .npz, ONNX export and import, old-format upgrade): ``pyskim convert``
(see pyskim.apps.cli)."""
import sys

from pyskim.apps.cli import run_tool

if __name__ == "__main__":
    sys.exit(run_tool("convert"))
