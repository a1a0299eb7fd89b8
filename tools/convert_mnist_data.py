#!/usr/bin/env python
"""Caffe's `convert_mnist_data` tool; see :mod:`pyskim.tools.convert_mnist_data`."""
import sys

from pyskim.tools.convert_mnist_data import main

if __name__ == "__main__":
    sys.exit(main())
