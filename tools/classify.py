#!/usr/bin/env python
"""pycaffe's `python/classify.py`; see :mod:`pyskim.tools.classify`."""
import sys

from pyskim.tools.classify import main

if __name__ == "__main__":
    sys.exit(main())
