#!/usr/bin/env python
"""``sparsity.py --model M --weights W [--measure-threshold t] [--plot out.png]``: per-layer density,
fiber/slice sparsity and predicted speedup (see :mod:`pyskim.apps.sparsity_report`)."""
import sys

from pyskim.apps.sparsity_report import main

if __name__ == "__main__":
    sys.exit(main())
