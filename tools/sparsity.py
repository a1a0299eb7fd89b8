#!/usr/bin/env python
"""per-layer weight density and fiber/slice sparsity: ``pyskim sparsity`` (see pyskim.apps.cli)."""
import sys

from pyskim.apps.cli import run_tool

if __name__ == "__main__":
    sys.exit(run_tool("sparsity"))
