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


def run(args):
    """Read, upgrade and write the net; log as Caffe's tools do when nothing needed upgrading."""
    binary = args.binary or args.input.endswith(".caffemodel")
    kind = "binary" if binary else "text"
    try:
        net = (read_binary if binary else read_text)(args.input, caffe_pb2.NetParameter())
    except PyskimError as e:
        log.error("Failed to parse input %s file as NetParameter: %s", kind, e)
        return 2
    success = True
    if net_needs_upgrade(net):
        success = upgrade_net_as_needed(net, args.input)
        if not success:
            log.error("Encountered error(s) while upgrading prototxt; see details above.")
    else:
        log.error("File already in latest proto format: %s", args.input)
    (write_binary if binary else write_text)(args.output, net)
    log.info("Wrote upgraded NetParameter %s proto to %s", kind, args.output)
    return 0 if success else 1
