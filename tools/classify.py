#!/usr/bin/env python
"""pycaffe's `python/classify.py`; see :mod:`pyskim.apps.classify`."""
import sys

from pyskim.apps.classify import main

if __name__ == "__main__":
    sys.exit(main())
