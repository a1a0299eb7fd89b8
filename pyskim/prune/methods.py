"""How each of ``tools/gsl.py``'s methods prunes: the prune stage's regularization per layer, its
solver fields, and the one-shot magnitude pruning of the baseline.

* ``gesl`` (guided element-wise sparsity learning, SkimCaffe's GESL): the layers the performance
  model picks get SkimCaffe's ``L1`` (L1 gradient term, then the step-dependent hard threshold
  ``f·t0/(1 + f·|step|)``), the others the solver's L2; then masked fine-tuning.
* ``gdns`` (guided dynamic network surgery, the paper's GDNS): the picked convolutions get
  ``L1_DNS`` or ``L2_DNS`` (``dns_type``): a dense shadow of the weights takes every step and the
  weights are the shadow with ``|shadow| <= t0`` zeroed, so a pruned weight whose shadow grows back
  past ``t0`` returns (:mod:`pyskim.solvers.skim`). SkimCaffe's DNS works on 4-D weights only; on an
  inner product ``L1_DNS`` is ``L1`` with the threshold (no regrowth) and ``L2_DNS`` plain L2 (no
  pruning at all), so the picked inner products get ``L1_DNS`` whatever ``dns_type`` says: every
  layer the plan picks is pruned. ``max_threshold_factor`` is 1 (one threshold ``t0``, also for those
  inner products). ``t0`` defaults to :func:`dns_threshold` of the dense weights: the largest
  threshold that zeroes at the first step at most the share of each picked layer that its plan
  floor ``d*`` asks for (``1 - d*``, at least ``DNS_START_SPARSITY``), so DNS prunes at once toward
  the densities where the layers get faster (then regrows what the loss needs) instead of waiting
  for the L1 pull to bring weights down to SkimCaffe's 1e-4. Then masked fine-tuning, as GESL.
* ``magnitude`` (the unguided baseline, Han et al. 2015): every convolution and inner product
  loses the fraction ``sparsity`` of its weights of smallest magnitude at once
  (:func:`magnitude_prune`), whatever the model says; then masked fine-tuning.
"""
import numpy as np

from ..proto import caffe_pb2
from ..sparse.modes import CONV_TYPES, IP_TYPES

METHODS = ("gesl", "gdns", "magnitude")
DNS_TYPES = ("L1_DNS", "L2_DNS")
#: GDNS's default threshold zeroes at most this share of any picked layer's weights at the start.
DNS_START_SPARSITY = 0.5


def check_settings(cfg):
    """Raise ``ValueError`` naming the setting when ``method``, ``dns_type``, ``sparsity``,
    ``dns_threshold``, ``finetune_lr_drop``, ``saving_share`` or ``plan_threads`` is out of range."""
    if cfg["method"] not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got '{cfg['method']}'")
    if cfg["dns_type"] not in DNS_TYPES:
        raise ValueError(f"dns_type must be one of {', '.join(DNS_TYPES)}, got '{cfg['dns_type']}'")
    if not 0.0 <= float(cfg["sparsity"]) < 1.0:
        raise ValueError(f"sparsity (the fraction of weights zeroed) must be in [0, 1), got {cfg['sparsity']}")
    if cfg["dns_threshold"] is not None and not float(cfg["dns_threshold"]) > 0:
        raise ValueError(f"dns_threshold must be > 0, got {cfg['dns_threshold']}")
    drop = cfg.get("finetune_lr_drop")
    if drop is not None and not 0.0 < float(drop) < 1.0:
        raise ValueError(f"finetune_lr_drop (the fraction of fine-tuning before the learning rate drops "
                         f"tenfold) must be in (0, 1), got {drop}")
    share = cfg.get("saving_share")
    if share is not None and not 0.0 < float(share) <= 1.0:
        raise ValueError(f"saving_share (the share of a layer's possible time saving its floor gives) must be "
                         f"in (0, 1], got {share}")
    threads = cfg.get("plan_threads")
    if threads is not None and not int(threads) >= 1:
        raise ValueError(f"plan_threads must be >= 1, got {threads}")


def prune_regularization(method, layer_type, dns_type):
    """The ``regularization_type`` the prune stage gives the weights of a picked layer."""
    if method == "gdns":
        return dns_type if layer_type in CONV_TYPES else "L1_DNS"
    return "L1"


def stage_net(net_param, pruned, stage, method="gesl", dns_type="L1_DNS"):
    """The ``stage`` ("prune" or "finetune") train/test net: the ``pruned`` layers' weight ParamSpec
    gets :func:`prune_regularization` (prune), or the layers ``connectivity_mode:
    DISCONNECTED_ELTWISE`` (finetune); every other weight and bias follows the solver's type (L2)."""
    net = caffe_pb2.NetParameter()
    net.CopyFrom(net_param)
    for lp in net.layer:
        if lp.type not in CONV_TYPES + IP_TYPES:
            continue
        if not len(lp.param):
            lp.param.add()
        for spec in lp.param:
            spec.ClearField("regularization_type")
        if lp.name in pruned:
            if stage == "prune":
                lp.param[0].regularization_type = prune_regularization(method, lp.type, dns_type)
            else:
                lp.connectivity_mode = caffe_pb2.LayerParameter.DISCONNECTED_ELTWISE
    return net


def prune_thresholds(method, cfg):
    """``(prune_threshold, max_threshold_factor)`` of the prune stage's solver (GDNS with no
    ``dns_threshold``, which happens only when no layer is pruned: GESL's ``prune_threshold``)."""
    if method == "gdns":
        return float(cfg["dns_threshold"] if cfg["dns_threshold"] is not None else cfg["prune_threshold"]), 1.0
    return float(cfg["prune_threshold"]), float(cfg["max_threshold_factor"])


def dns_threshold(weights, start_sparsity=DNS_START_SPARSITY):
    """GDNS's default ``prune_threshold``: the smallest, over the arrays of ``weights`` (the picked
    layers' dense weights), of the ``start_sparsity`` quantile of ``|w|`` (one share for all arrays,
    or one per array). One threshold serves all layers (the solver has one), so the layer it prunes
    first to its share sets it."""
    arrays = [np.abs(np.asarray(w, dtype=np.float64)).ravel() for w in weights]
    shares = [float(s) for s in start_sparsity] if np.ndim(start_sparsity) else [float(start_sparsity)] * len(arrays)
    if len(shares) != len(arrays):
        raise ValueError(f"dns_threshold: {len(shares)} start sparsities for {len(arrays)} weight arrays")
    pairs = [(a, share) for a, share in zip(arrays, shares) if a.size]
    if not pairs:
        raise ValueError("dns_threshold: no weights to take a threshold from")
    threshold = min(float(np.quantile(a, share)) for a, share in pairs)
    if not threshold > 0:
        raise ValueError("dns_threshold: a picked layer has as many zero weights as the threshold should prune "
                         "already; give the threshold (--dns-threshold)")
    return threshold


def magnitude_prune(weights, sparsity):
    """Zero, in place, the ``round(sparsity · count)`` elements of ``weights`` of smallest magnitude
    (exactly that many: ties at the cut are broken arbitrarily); returns the number zeroed."""
    k = round(float(sparsity) * weights.size)
    if k:
        weights.flat[np.argpartition(np.abs(weights), k - 1, axis=None)[:k]] = 0
    return k
