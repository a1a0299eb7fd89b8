"""``upgrade_net_proto IN OUT [--binary]``: upgrade a deprecated (V0/V1) net definition or caffemodel to
the current format.

Caffe's ``upgrade_net_proto_text`` (prototxt, the default) and ``upgrade_net_proto_binary``
(``--binary``, or an input named ``*.caffemodel``) in one tool: the input is read, every needed upgrade
is applied and the result is written in the same format. Exit status: 0 on success, 1 when some fields
had to be dropped or the net cannot be upgraded, 2 when the input cannot be read.
"""
import argparse
import logging

from ..errors import PyskimError
from ..io.protofiles import read_binary, read_text, write_binary, write_text
from ..io.upgrade import net_needs_upgrade, upgrade_net_as_needed
from ..proto import caffe_pb2

log = logging.getLogger("pyskim")


def build_parser():
    parser = argparse.ArgumentParser(prog="upgrade_net_proto.py",
                                     description="Upgrade a V0/V1 net prototxt or caffemodel.")
    parser.add_argument("input", help="net to upgrade (prototxt, or binary with --binary)")
    parser.add_argument("output", help="where to write the upgraded net")
    parser.add_argument("--binary", action="store_true",
                        help="read and write binary NetParameters (caffemodels); implied by *.caffemodel "
                             "input")
    return parser


def upgrade_proto_file(input_path, output_path, message, binary, upgrade):
    """Read ``message`` (a NetParameter or SolverParameter) from ``input_path``, upgrade it and write
    it to ``output_path`` in the same format, as Caffe's ``upgrade_*_proto_*`` tools do (and log).

    ``upgrade(message, source)`` returns (whether it needed an upgrade, whether the upgrade kept
    every field). Returns the exit status: 0 on success, 1 when fields had to be dropped, 2 when
    the input cannot be parsed."""
    kind = "binary" if binary else "text"
    message_type = message.DESCRIPTOR.name
    try:
        (read_binary if binary else read_text)(input_path, message)
    except PyskimError as e:
        log.error("Failed to parse input %s file as %s: %s", kind, message_type, e)
        return 2
    needed, success = upgrade(message, input_path)
    if not needed:
        log.error("File already in latest proto format: %s", input_path)
    (write_binary if binary else write_text)(output_path, message)
    log.info("Wrote upgraded %s %s proto to %s", message_type, kind, output_path)
    return 0 if success else 1


def _upgrade_net(net, source):
    """(needed, success) of upgrading ``net``; logs Caffe's line when some fields were dropped."""
    if not net_needs_upgrade(net):
        return False, True
    success = upgrade_net_as_needed(net, source)
    if not success:
        log.error("Encountered error(s) while upgrading prototxt; see details above.")
    return True, success


def run(args):
    """Read, upgrade and write the net; log as Caffe's tools do when nothing needed upgrading."""
    binary = args.binary or args.input.endswith(".caffemodel")
    return upgrade_proto_file(args.input, args.output, caffe_pb2.NetParameter(), binary, _upgrade_net)
