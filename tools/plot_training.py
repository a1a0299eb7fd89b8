#!/usr/bin/env python
"""loss, accuracy and sparsity curves of a training log: ``pyskim plot_training`` (see pyskim.apps.cli)."""
import sys

from pyskim.apps.cli import run_tool

if __name__ == "__main__":
    sys.exit(run_tool("plot_training"))
