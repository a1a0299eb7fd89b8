#!/usr/bin/env python
"""Caffe's caffe time with pyskim's sparse report: ``pyskim time`` (see pyskim.apps.cli)."""
import sys

from pyskim.apps.cli import run_tool

if __name__ == "__main__":
    sys.exit(run_tool("time"))
