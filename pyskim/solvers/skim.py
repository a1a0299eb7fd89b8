"""SkimCaffe's pruning regularizers (``sgd_solver.cpp`` ``Regularize`` and ``ApplyUpdate``).

Registered into the solver pipeline's regularizer registry (``L1`` explicitly replacing Caffe's
plain L1, which it extends), so every solver type (SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam)
runs them: they only add to the gradient at the Regularize stage and act around the update, after
ComputeUpdateValue has turned ``diff`` into the step.
``local_decay`` is weight_decay × decay_mult; ``t0`` is ``SolverParameter.prune_threshold``.

* ``L1``: diff += local_decay·sign(w); after ``w -= diff`` a hard threshold: |w| ≤ t0 → 0. With
  ``max_threshold_factor`` f ≥ 2 the threshold is per element, t_i = 1/(|d_i|/t0 + 1/(f·t0)) =
  f·t0/(1 + f·|d_i|), d_i the step (the diff after ComputeUpdateValue, lr and momentum included):
  f·t0 where the step is 0, smaller where it is large. Applied to every L1 param, biases too, even
  when local_decay is 0 (as SkimCaffe). Difference: the threshold is applied only when the
  SolverParameter sets ``prune_threshold`` or ``max_threshold_factor`` (SkimCaffe's runs always set
  them, through ``train_script.sh``); without either, L1 is BVLC Caffe's L1, so BVLC solvers train
  exactly as in Caffe (SkimCaffe would prune at the default 1e-4 there). The SkimCaffe-only types
  (ISTA, DNS and L1_DNS's L1 fallback) always use the fields, defaults included.
* ``ISTA``: the L1 sign term in Regularize, then after the update a soft threshold with
  thr = rate·local_decay (the global rate, not lr_mult-scaled): |w| ≤ thr → 0, else w moves thr
  toward 0. The L1 pull is therefore applied twice per step (once through the gradient, once by the
  shrinkage); SkimCaffe does exactly this, and so do we.
* ``L1_DNS`` / ``L2_DNS`` on 4-D weights (dynamic network surgery): the L1 / L2 gradient term, then
  a dense shadow copy takes the step (shadow -= diff) and w = shadow with |shadow| ≤ t0 zeroed, so
  a pruned weight whose shadow grows back past t0 returns. One threshold (no DNS hysteresis). The
  shadow starts from the current weights at the first update ("DNS initialized"). SkimCaffe
  allocates 3×3/5×5 shadows zeroed in PreSolve instead (pretrained weights are lost at the first
  step) and never allocates the L2_DNS shadow (L2_DNS on conv weights crashes there); here both
  work. The shadow is not saved in snapshots (as SkimCaffe): after ``restore`` or a weight load it
  restarts from the weights, so the shadows of pruned weights restart at 0.
  On params that are not 4-D, L1_DNS is L1 and L2_DNS is L2 (SkimCaffe warns "L1_DNS but not for
  convolution"; logged once per param here).
* ``L1_Winograd``, ``L2_Winograd``, ``L1_DNS_Winograd``, ``L2_DNS_Winograd`` (Winograd-domain
  pruning, experimental in SkimCaffe) raise :class:`SolverError` "not supported".

Connectivity masks multiply the step in the shared pipeline (``sgd.py``) before ``update``, for the
DNS types too (SkimCaffe's DNS path bypasses ``Blob::Update`` and so ignores the mask; here masked
weights stay zero whatever the type).
"""
import numpy as np

from ..core.state import log
from ..errors import SolverError
from .base import F32
from .sgd import L1Regularizer as CaffeL1Regularizer
from .sgd import L2Regularizer, Regularizer, register_regularizer

WINOGRAD_TYPES = ("L1_Winograd", "L2_Winograd", "L1_DNS_Winograd", "L2_DNS_Winograd")


def hard_threshold(data, threshold):
    """Zero, in place, every element with -threshold ≤ w ≤ threshold (array or scalar threshold)."""
    with np.errstate(invalid="ignore"):
        data[np.abs(data) <= threshold] = 0


def step_thresholds(step, t0, factor, out):
    """Per-element thresholds 1/(α·|d| + β) with α = 1/t0, β = 1/(f·t0), in float32 and SkimCaffe's
    order (abs, scale, add, invert) = f·t0/(1 + f·|d|)."""
    t0 = F32(t0)
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = F32(1) / t0
        beta = F32(1) / (F32(factor) * t0)
        np.abs(step, out=out)
        np.multiply(out, alpha, out=out)
        np.add(out, beta, out=out)
        np.divide(F32(1), out, out=out)
    return out


@register_regularizer("L1", replaces="L1")
class L1Regularizer(CaffeL1Regularizer):
    """SkimCaffe's L1: Caffe's L1 gradient term, then a hard threshold after the update (step-
    dependent when ``max_threshold_factor`` ≥ 2). ``bvlc_unless_set``: skip the threshold when the
    solver sets neither threshold field (plain ``L1``; not for L1_DNS's fallback)."""

    bvlc_unless_set = True

    def after_update(self, param_id, blob, rate, local_decay):
        p = self.solver.param
        if self.bvlc_unless_set and not (p.HasField("prune_threshold") or p.HasField("max_threshold_factor")):
            return
        data = blob.data
        if p.max_threshold_factor >= 2:
            thresholds = step_thresholds(blob.diff, p.prune_threshold, p.max_threshold_factor,
                                         self.solver.scratch(param_id, "temp"))
            hard_threshold(data, thresholds)
        else:
            hard_threshold(data, F32(p.prune_threshold))


@register_regularizer("ISTA")
class ISTARegularizer(CaffeL1Regularizer):
    """L1 gradient term plus soft thresholding by rate·local_decay after the update (the double L1
    pull of SkimCaffe)."""

    def after_update(self, param_id, blob, rate, local_decay):
        thr = F32(rate) * F32(local_decay)
        data = blob.data
        small = (data <= thr) & (data >= -thr)
        shrink = np.where(data > 0, -thr, thr).astype(F32)
        np.add(data, shrink, out=data)
        data[small] = 0


class _DNSRegularizer(Regularizer):
    """Dynamic network surgery on 4-D weights: a dense shadow takes the steps, the weights are the
    thresholded shadow. Other params fall back to the plain type (L1 or L2)."""

    def __init__(self, solver, name):
        super().__init__(solver, name)
        cls, plain_name = DNS_FALLBACKS[name]
        self.plain = cls(solver, plain_name)
        self.plain.bvlc_unless_set = False
        self.shadows = {}
        self._warned = set()

    def regularize(self, param_id, blob, local_decay):
        return self.plain.regularize(param_id, blob, local_decay)

    def update(self, param_id, blob):
        if blob.num_axes != 4:
            if param_id not in self._warned:
                log.warning("%s but not for convolution (param %d: %s behaves as %s)", self.name, param_id,
                            list(blob.shape), self.plain.name)
                self._warned.add(param_id)
            self.plain.update(param_id, blob)
            return
        shadow = self.shadows.get(param_id)
        if shadow is None or shadow.shape != blob.shape:
            shadow = self.shadows[param_id] = blob.data.astype(F32, copy=True)
            log.info("DNS initialized")
        np.subtract(shadow, blob.diff, out=shadow)
        data = blob.data
        data[...] = shadow
        hard_threshold(data, F32(self.solver.param.prune_threshold))

    def after_update(self, param_id, blob, rate, local_decay):
        if blob.num_axes != 4:
            self.plain.after_update(param_id, blob, rate, local_decay)

    def weights_changed(self):
        self.shadows.clear()


@register_regularizer("L1_DNS")
class L1DNSRegularizer(_DNSRegularizer):
    """L1_DNS: L1 gradient term; DNS update on 4-D weights, thresholded L1 elsewhere."""


@register_regularizer("L2_DNS")
class L2DNSRegularizer(_DNSRegularizer):
    """L2_DNS: L2 weight decay; DNS update on 4-D weights (works, unlike SkimCaffe), L2 elsewhere."""


DNS_FALLBACKS = {"L1_DNS": (L1Regularizer, "L1"), "L2_DNS": (L2Regularizer, "L2")}


@register_regularizer(*WINOGRAD_TYPES)
class WinogradRegularizer(Regularizer):
    """SkimCaffe's Winograd-domain pruning types: refused when the solver is built."""

    def __init__(self, solver, name):
        super().__init__(solver, name)
        raise SolverError(f"regularization_type '{name}' is not supported: pyskim does not implement "
                          "SkimCaffe's Winograd-domain pruning (use L1, ISTA, L1_DNS or L2_DNS)")
