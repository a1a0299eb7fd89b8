#!/usr/bin/env python
"""BVLC's `tools/extra/plot_training_log.py.example`; see :mod:`pyskim.apps.plot_training_log`."""
import sys

from pyskim.apps.plot_training_log import main

if __name__ == "__main__":
    sys.exit(main())
