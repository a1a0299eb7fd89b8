#!/usr/bin/env python
"""pycaffe's `python/detect.py`; see :mod:`pyskim.apps.detect`."""
import sys

from pyskim.apps.detect import main

if __name__ == "__main__":
    sys.exit(main())
