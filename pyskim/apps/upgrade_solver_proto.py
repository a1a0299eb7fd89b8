"""``upgrade_solver_proto IN OUT``: upgrade a solver prototxt that uses the deprecated ``solver_type``
enum.

Caffe's ``upgrade_solver_proto_text``: only the solver type is upgraded (the default snapshot_prefix is
filled when a solver is loaded for training, not here). Exit status: 0 on success, 1 when the solver
cannot be upgraded, 2 when the input cannot be read.
"""
import argparse

from ..io.upgrade import upgrade_solver
from ..proto import caffe_pb2
from .upgrade_net_proto import upgrade_proto_file


def build_parser():
    parser = argparse.ArgumentParser(prog="upgrade_solver_proto.py",
                                     description="Upgrade an old solver prototxt (solver_type enum).")
    parser.add_argument("input", help="solver prototxt to upgrade")
    parser.add_argument("output", help="where to write the upgraded solver prototxt")
    return parser


def run(args):
    """Read, upgrade and write the solver; log as Caffe's tool does when nothing needed upgrading.
    A solver setting both ``solver_type`` and ``type`` cannot be upgraded (SolverError)."""
    return upgrade_proto_file(args.input, args.output, caffe_pb2.SolverParameter(), False,
                              lambda solver, source: (upgrade_solver(solver, source), True))
