#!/usr/bin/env python
"""per-layer roofline predictions, dense vs sparse: ``pyskim perf_model`` (see pyskim.apps.cli)."""
import sys

from pyskim.apps.cli import run_tool

if __name__ == "__main__":
    sys.exit(run_tool("perf_model"))
