#!/usr/bin/env python
"""``plot_training.py LOG [--out out.png]``: loss, accuracy and sparsity curves of a Caffe-format log
(see :mod:`pyskim.apps.plot_training`)."""
import sys

from pyskim.apps.plot_training import main

if __name__ == "__main__":
    sys.exit(main())
