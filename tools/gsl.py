#!/usr/bin/env python
"""``gsl.py --solver S --weights W [--target-speedup X] [--prune-iters N] [--finetune-iters M] [--out DIR]
[--resume]``: Guided Sparsity Learning (see :mod:`pyskim.apps.gsl` and :mod:`pyskim.prune.gsl`)."""
import sys

from pyskim.apps.gsl import main

if __name__ == "__main__":
    sys.exit(main())
