#!/usr/bin/env python
"""Caffe's `convert_imageset` tool; see :mod:`pyskim.apps.convert_imageset`."""
import sys

from pyskim.apps.convert_imageset import main

if __name__ == "__main__":
    sys.exit(main())
