#!/usr/bin/env python
"""Caffe's examples/cifar10/convert_cifar_data: ``pyskim convert_cifar_data`` (see pyskim.apps.cli)."""
import sys

from pyskim.apps.cli import run_tool

if __name__ == "__main__":
    sys.exit(run_tool("convert_cifar_data"))
