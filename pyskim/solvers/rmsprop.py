"""RMSPropSolver: Tieleman and Hinton's RMSProp as Caffe's ``rmsprop_solver.cpp``."""
import numpy as np

from ..errors import SolverError
from .base import F32
from .sgd import SGDSolver, axpby, powx


class RMSPropSolver(SGDSolver):
    """history = rms_decay·history + (1−rms_decay)·diff²; step = local_rate · diff / (sqrt(history) +
    delta). Needs momentum 0 and 0 <= rms_decay < 1."""

    type = "RMSProp"

    def pre_solve(self):
        if self._param.momentum != 0:
            raise SolverError("Momentum cannot be used with RMSProp.")
        if not 0 <= self._param.rms_decay < 1:
            raise SolverError(f"rms_decay should lie between 0 and 1, got {self._param.rms_decay}")
        super().pre_solve()

    def compute_update_value(self, param_id, rate):
        rms_decay = F32(self._param.rms_decay)
        diff = self.net.learnable_params[param_id].diff
        history = self.history[param_id]
        update = self.scratch(param_id, "update")
        powx(diff, 2, update)
        axpby(F32(1) - rms_decay, update, rms_decay, history)
        powx(history, 0.5, update)
        np.add(update, F32(self._param.delta), out=update)
        np.divide(diff, update, out=update)
        np.multiply(update, self.local_rate(param_id, rate), out=diff)
