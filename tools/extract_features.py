#!/usr/bin/env python
"""Caffe's extract_features tool: ``pyskim extract_features`` (see pyskim.apps.cli)."""
import sys

from pyskim.apps.cli import run_tool

if __name__ == "__main__":
    sys.exit(run_tool("extract_features"))
