#!/usr/bin/env python
"""pycaffe's `python/draw_net.py`; see :mod:`pyskim.apps.draw_net`."""
import sys

from pyskim.apps.draw_net import main

if __name__ == "__main__":
    sys.exit(main())
