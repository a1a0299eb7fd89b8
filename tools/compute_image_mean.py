#!/usr/bin/env python
"""Caffe's compute_image_mean tool: ``pyskim compute_image_mean`` (see pyskim.apps.cli)."""
import sys

from pyskim.apps.cli import run_tool

if __name__ == "__main__":
    sys.exit(run_tool("compute_image_mean"))
