#!/usr/bin/env python
"""Upgrade a solver prototxt that uses the deprecated ``solver_type`` enum.

Usage: python tools/upgrade_solver_proto.py IN OUT

Mirrors Caffe's upgrade_solver_proto_text: only the solver type is upgraded (the default
snapshot_prefix is filled when a solver is loaded for training, not here). Exit status: 0 on
success, 1 when the solver cannot be upgraded, 2 when the input cannot be read.
"""
import argparse
import logging
import sys

from pyskim.errors import PyskimError
from pyskim.io.protofiles import read_text, write_text
from pyskim.io.upgrade import upgrade_solver
from pyskim.proto import caffe_pb2

log = logging.getLogger("pyskim")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Upgrade an old solver prototxt (solver_type enum).")
    parser.add_argument("input", help="solver prototxt to upgrade")
    parser.add_argument("output", help="where to write the upgraded solver prototxt")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname).1s %(asctime)s %(module)s] %(message)s")

    try:
        solver = read_text(args.input, caffe_pb2.SolverParameter())
    except PyskimError as e:
        log.error("Failed to parse input text file as SolverParameter: %s", e)
        return 2
    try:
        if not upgrade_solver(solver, args.input):
            log.error("File already in latest proto format: %s", args.input)
    except PyskimError as e:
        log.error("%s", e)
        return 1
    write_text(args.output, solver)
    log.info("Wrote upgraded SolverParameter text proto to %s", args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
