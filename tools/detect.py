#!/usr/bin/env python
"""pycaffe's python/detect.py: ``pyskim detect`` (see pyskim.apps.cli)."""
import sys

from pyskim.apps.cli import run_tool

if __name__ == "__main__":
    sys.exit(run_tool("detect"))
