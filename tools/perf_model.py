#!/usr/bin/env python
"""Per-layer roofline predictions (dense vs sparse time, break-even and saturation densities) for a
net, and a speedup-vs-density plot; see :mod:`pyskim.apps.perf_model`."""
import sys

from pyskim.apps.perf_model import main

if __name__ == "__main__":
    sys.exit(main())
