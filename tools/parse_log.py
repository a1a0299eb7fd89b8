#!/usr/bin/env python
"""BVLC's tools/extra/parse_log.py: ``pyskim parse_log`` (see pyskim.apps.cli)."""
import sys

from pyskim.apps.cli import run_tool

if __name__ == "__main__":
    sys.exit(run_tool("parse_log"))
