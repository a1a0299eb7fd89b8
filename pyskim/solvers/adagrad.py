"""AdaGradSolver: Duchi et al.'s AdaGrad as Caffe's ``adagrad_solver.cpp``."""
import numpy as np

from ..errors import SolverError
from .base import F32
from .sgd import SGDSolver, powx


class AdaGradSolver(SGDSolver):
    """history += diff²; step = local_rate · diff / (sqrt(history) + delta). Needs momentum 0."""

    type = "AdaGrad"

    def pre_solve(self):
        if self._param.momentum != 0:
            raise SolverError("Momentum cannot be used with AdaGrad.")
        super().pre_solve()

    def compute_update_value(self, param_id, rate):
        diff = self.net.learnable_params[param_id].diff
        history = self.history[param_id]
        update = self.scratch(param_id, "update")
        powx(diff, 2, update)
        np.add(update, history, out=history)
        powx(history, 0.5, update)
        np.add(update, F32(self._param.delta), out=update)
        np.divide(diff, update, out=update)
        np.multiply(update, self.local_rate(param_id, rate), out=diff)
