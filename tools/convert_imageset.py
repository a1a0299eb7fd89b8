#!/usr/bin/env python
"""Caffe's convert_imageset tool: ``pyskim convert_imageset`` (see pyskim.apps.cli)."""
import sys

from pyskim.apps.cli import run_tool

if __name__ == "__main__":
    sys.exit(run_tool("convert_imageset"))
