#!/usr/bin/env python
"""pycaffe's `python/detect.py`; see :mod:`pyskim.tools.detect`."""
import sys

from pyskim.tools.detect import main

if __name__ == "__main__":
    sys.exit(main())
