#!/usr/bin/env python
"""Caffe's `convert_mnist_data` tool; see :mod:`pyskim.apps.convert_mnist_data`."""
import sys

from pyskim.apps.convert_mnist_data import main

if __name__ == "__main__":
    sys.exit(main())
