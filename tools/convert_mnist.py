#!/usr/bin/env python
"""``convert_mnist IMAGES LABELS DB [--backend lmdb]``: MNIST idx files to an LMDB of Datums, as Caffe's
``convert_mnist_data`` (same tool as ``tools/convert_mnist_data.py``)."""
import sys

from pyskim.apps.convert_mnist_data import main

if __name__ == "__main__":
    sys.exit(main())
