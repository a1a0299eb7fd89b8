"""AdaDeltaSolver: Zeiler's AdaDelta as Caffe's ``adadelta_solver.cpp``."""
import numpy as np

from .base import F32
from .sgd import SGDSolver, axpby, powx


class AdaDeltaSolver(SGDSolver):
    """Running means of squared gradients (history[i]) and squared updates (history[n+i]), with decay
    ``momentum``: step = local_rate · diff · sqrt((E[Δ²] + delta) / (E[g²] + delta)). The solverstate
    holds all gradient blobs, then all update blobs."""

    type = "AdaDelta"
    history_sets = 2

    def compute_update_value(self, param_id, rate):
        momentum, delta = F32(self._param.momentum), F32(self._param.delta)
        diff = self.net.learnable_params[param_id].diff
        grad_history = self.history[param_id]
        update_history = self.second_history(param_id)
        update, temp = self.scratch(param_id, "update"), self.scratch(param_id, "temp")
        powx(diff, 2, update)
        axpby(F32(1) - momentum, update, momentum, grad_history)
        temp.fill(delta)
        np.add(temp, update_history, out=update)
        np.add(temp, grad_history, out=temp)
        np.divide(update, temp, out=update)
        powx(update, 0.5, update)
        np.multiply(diff, update, out=diff)
        powx(diff, 2, update)
        axpby(F32(1) - momentum, update, momentum, update_history)
        np.multiply(diff, self.local_rate(param_id, rate), out=diff)
