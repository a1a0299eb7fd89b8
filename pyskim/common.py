"""Process-wide state, as Caffe's ``Caffe`` singleton: mode, random generator, logger."""
import logging

import numpy as np

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
