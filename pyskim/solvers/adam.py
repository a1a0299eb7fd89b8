"""AdamSolver: Kingma and Ba's Adam as Caffe's ``adam_solver.cpp``."""
import numpy as np

from .base import F32
from .sgd import SGDSolver, axpby, powx


class AdamSolver(SGDSolver):
    """m = β1·m + (1−β1)·g; v = β2·v + (1−β2)·g²; step = local_rate · sqrt(1−β2^t)/(1−β1^t) ·
    m / (sqrt(v) + delta) with t = iter + 1 (β1 = momentum, β2 = momentum2). The bias correction is
    folded into the rate and delta is added to the uncorrected sqrt(v), as Caffe. The solverstate
    holds all m blobs, then all v blobs."""

    type = "Adam"
    history_sets = 2

    def compute_update_value(self, param_id, rate):
        p = self._param
        beta1, beta2 = F32(p.momentum), F32(p.momentum2)
        t = self.iter + 1
        # Computed in double as Caffe's pow(float, int), then rounded to the float Dtype; with C's
        # semantics for out-of-range momenta (sqrt of a negative: NaN, overflow: inf, x/0: inf).
        with np.errstate(all="ignore"):
            correction = F32(np.sqrt(1.0 - np.power(np.float64(beta2), t))
                             / (1.0 - np.power(np.float64(beta1), t)))
        diff = self.net.learnable_params[param_id].diff
        m = self.history[param_id]
        v = self.second_history(param_id)
        temp = self.scratch(param_id, "temp")
        axpby(F32(1) - beta1, diff, beta1, m)
        np.multiply(diff, diff, out=temp)
        axpby(F32(1) - beta2, temp, beta2, v)
        powx(v, 0.5, temp)
        np.add(temp, F32(p.delta), out=temp)
        np.divide(m, temp, out=temp)
        np.multiply(temp, self.local_rate(param_id, rate) * correction, out=diff)
