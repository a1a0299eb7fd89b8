#!/usr/bin/env python
"""Caffe's `extract_features` tool; see :mod:`pyskim.apps.extract_features`."""
import sys

from pyskim.apps.extract_features import main

if __name__ == "__main__":
    sys.exit(main())
