"""NesterovSolver: Nesterov's accelerated gradient as Caffe's ``nesterov_solver.cpp``."""
from .base import F32
from .sgd import SGDSolver, axpby


class NesterovSolver(SGDSolver):
    """history' = momentum·history + local_rate·diff; step = (1+momentum)·history' − momentum·history."""

    type = "Nesterov"

    def compute_update_value(self, param_id, rate):
        momentum = F32(self._param.momentum)
        diff = self.net.learnable_params[param_id].diff
        history = self.history[param_id]
        update = self.scratch(param_id, "update")
        update[...] = history
        axpby(self.local_rate(param_id, rate), diff, momentum, history)
        axpby(F32(1) + momentum, history, -momentum, update)
        diff[...] = update
