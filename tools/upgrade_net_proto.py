#!/usr/bin/env python
"""Upgrade a deprecated net definition or caffemodel to the current format.

Usage: python tools/upgrade_net_proto.py IN OUT [--binary]

Mirrors Caffe's upgrade_net_proto_text (prototxt, the default) and upgrade_net_proto_binary
(``--binary``, or an input named *.caffemodel): the input is read, every needed upgrade is applied
and the result is written in the same format. Exit status: 0 on success, 1 when some fields had to
be dropped or the net cannot be upgraded, 2 when the input cannot be read.
"""
import argparse
import logging
import sys

from pyskim.errors import PyskimError
from pyskim.io.protofiles import read_binary, read_text, write_binary, write_text
from pyskim.io.upgrade import net_needs_upgrade, upgrade_net_as_needed
from pyskim.proto import caffe_pb2

log = logging.getLogger("pyskim")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Upgrade a V0/V1 net prototxt or caffemodel.")
    parser.add_argument("input", help="net to upgrade (prototxt, or binary with --binary)")
    parser.add_argument("output", help="where to write the upgraded net")
    parser.add_argument("--binary", action="store_true",
                        help="read and write binary NetParameters (caffemodels); implied by *.caffemodel input")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname).1s %(asctime)s %(module)s] %(message)s")

    binary = args.binary or args.input.endswith(".caffemodel")
    kind = "binary" if binary else "text"
    try:
        net = (read_binary if binary else read_text)(args.input, caffe_pb2.NetParameter())
    except PyskimError as e:
        log.error("Failed to parse input %s file as NetParameter: %s", kind, e)
        return 2
    success = True
    try:
        if net_needs_upgrade(net):
            success = upgrade_net_as_needed(net, args.input)
            if not success:
                log.error("Encountered error(s) while upgrading prototxt; see details above.")
        else:
            log.error("File already in latest proto format: %s", args.input)
    except PyskimError as e:
        log.error("%s", e)
        return 1
    (write_binary if binary else write_text)(args.output, net)
    log.info("Wrote upgraded NetParameter %s proto to %s", kind, args.output)
    return 0 if success else 1


if __name__ == "__main__":
    sys.exit(main())
