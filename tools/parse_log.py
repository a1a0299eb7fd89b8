#!/usr/bin/env python
"""BVLC's `tools/extra/parse_log.py`; see :mod:`pyskim.apps.parse_log`."""
import sys

from pyskim.apps.parse_log import main

if __name__ == "__main__":
    sys.exit(main())
