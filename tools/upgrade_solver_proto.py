#!/usr/bin/env python
"""Caffe's upgrade_solver_proto_text: ``pyskim upgrade_solver_proto`` (see pyskim.apps.cli)."""
import sys

from pyskim.apps.cli import run_tool

if __name__ == "__main__":
    sys.exit(run_tool("upgrade_solver_proto"))
