#!/usr/bin/env python
"""Guided Sparsity Learning: ``pyskim gsl`` (see pyskim.apps.cli)."""
import sys

from pyskim.apps.cli import run_tool

if __name__ == "__main__":
    sys.exit(run_tool("gsl"))
