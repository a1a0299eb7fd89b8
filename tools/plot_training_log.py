#!/usr/bin/env python
"""BVLC's tools/extra/plot_training_log.py.example: ``pyskim plot_training_log`` (see pyskim.apps.cli)."""
import sys

from pyskim.apps.cli import run_tool

if __name__ == "__main__":
    sys.exit(run_tool("plot_training_log"))
