"""``upgrade_solver_proto IN OUT``: upgrade a solver prototxt that uses the deprecated ``solver_type``
enum.

Caffe's ``upgrade_solver_proto_text``: only the solver type is upgraded (the default snapshot_prefix is
filled when a solver is loaded for training, not here). Exit status: 0 on success, 1 when the solver
cannot be upgraded, 2 when the input cannot be read.
"""
import argparse
import logging

from ..errors import PyskimError
from ..io.protofiles import read_text, write_text
from ..io.upgrade import upgrade_solver
from ..proto import caffe_pb2

log = logging.getLogger("pyskim")


def build_parser():
    parser = argparse.ArgumentParser(prog="upgrade_solver_proto.py",
                                     description="Upgrade an old solver prototxt (solver_type enum).")
    parser.add_argument("input", help="solver prototxt to upgrade")
    parser.add_argument("output", help="where to write the upgraded solver prototxt")
    return parser


def run(args):
    """Read, upgrade and write the solver; log as Caffe's tool does when nothing needed upgrading."""
    try:
        solver = read_text(args.input, caffe_pb2.SolverParameter())
    except PyskimError as e:
        log.error("Failed to parse input text file as SolverParameter: %s", e)
        return 2
    if not upgrade_solver(solver, args.input):
        log.error("File already in latest proto format: %s", args.input)
    write_text(args.output, solver)
    log.info("Wrote upgraded SolverParameter text proto to %s", args.output)
    return 0
