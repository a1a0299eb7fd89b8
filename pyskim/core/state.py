"""Process-wide state, as Caffe's ``Caffe`` singleton: mode, random generator, logger."""
import logging

import numpy as np

from .glog import glog_level, init_logging

log = logging.getLogger("pyskim")

_state = {"rng": np.random.default_rng(), "mode": "CPU"}


def set_random_seed(seed):
    """Seed the generator used by fillers, Dropout and data shuffling (``caffe.set_random_seed``)."""
    _state["rng"] = np.random.default_rng(int(seed) & 0xFFFFFFFFFFFFFFFF)


def rng():
    return _state["rng"]


def set_mode_cpu():
    _state["mode"] = "CPU"


def set_mode_gpu():
    """pyskim runs on the CPU only; GPU mode is accepted for script compatibility and logged."""
    log.warning("pyskim has no GPU mode; running on the CPU")
    _state["mode"] = "CPU"


def set_device(device_id):
    log.warning("pyskim has no GPU devices; ignoring set_device(%s)", device_id)


# -- pycaffe's multi-process / logging functions: pyskim trains in one process on the CPU ---------------
def has_nccl():
    """pyskim has no NCCL (multi-GPU) support."""
    return False


def solver_count():
    return 1


def solver_rank():
    return 0


def set_solver_count(count):
    if int(count) != 1:
        log.warning("pyskim trains in a single process; ignoring set_solver_count(%s)", count)


def set_solver_rank(rank):
    if int(rank) != 0:
        log.warning("pyskim trains in a single process; ignoring set_solver_rank(%s)", rank)


def set_multiprocess(multiprocess):
    if multiprocess:
        log.warning("pyskim trains in a single process; ignoring set_multiprocess(True)")


def init_log(level=None, stderr=None):
    """Log pyskim's messages in glog's format (pycaffe's ``caffe.init_log``). ``level``: glog's minimum
    severity (0 INFO, 1 WARNING, 2 ERROR, 3 FATAL), as ``FLAGS_minloglevel``; ``stderr``: true for no
    log file, as ``FLAGS_logtostderr``. Either left out follows ``GLOG_minloglevel`` /
    ``GLOG_logtostderr`` (see :mod:`pyskim.core.glog`)."""
    init_logging(None if level is None else glog_level(level), None if stderr is None else bool(stderr))


def log_info(message):
    """pycaffe's ``caffe.log``: one INFO line."""
    log.info("%s", message)
