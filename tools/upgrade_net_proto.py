#!/usr/bin/env python
"""Caffe's upgrade_net_proto_text / _binary: ``pyskim upgrade_net_proto`` (see pyskim.apps.cli)."""
import sys

from pyskim.apps.cli import run_tool

if __name__ == "__main__":
    sys.exit(run_tool("upgrade_net_proto"))
