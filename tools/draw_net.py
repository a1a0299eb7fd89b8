#!/usr/bin/env python
"""pycaffe's `python/draw_net.py`; see :mod:`pyskim.tools.draw_net`."""
import sys

from pyskim.tools.draw_net import main

if __name__ == "__main__":
    sys.exit(main())
