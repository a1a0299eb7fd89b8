#!/usr/bin/env python
"""Caffe's convert_mnist_data tool: ``pyskim convert_mnist_data`` (see pyskim.apps.cli)."""
import sys

from pyskim.apps.cli import run_tool

if __name__ == "__main__":
    sys.exit(run_tool("convert_mnist_data"))
