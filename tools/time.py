#!/usr/bin/env python
"""Caffe's `caffe time` with pyskim's sparse report (`--mode`, `--compare`, ...); see
:mod:`pyskim.apps.time_net`."""
import sys

from pyskim.apps.time_net import main

if __name__ == "__main__":
    sys.exit(main())
