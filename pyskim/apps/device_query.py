"""``pyskim device_query``: Caffe's ``caffe device_query``; pyskim runs on the CPU only, so it says so."""
import logging

from .caffe_command import build_parser

__all__ = ["build_parser", "run"]

log = logging.getLogger("pyskim")


def run(args):
    """Log that there are no GPU devices to query."""
    log.info("pyskim runs on the CPU only: there are no GPU devices to query.")
    return 0
