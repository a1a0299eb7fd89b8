#!/usr/bin/env python
"""Caffe's `compute_image_mean` tool; see :mod:`pyskim.apps.compute_image_mean`."""
import sys

from pyskim.apps.compute_image_mean import main

if __name__ == "__main__":
    sys.exit(main())
