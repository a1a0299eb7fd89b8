"""The sparse engine, attached to every built Net: SkimCaffe's ``conv_mode`` / ``gemm_mode`` names and
AUTO's one decision rule (:mod:`.modes`) and its timed close calls (:mod:`.trial`), the convolution and inner-product engines (:mod:`.engine`)
with exact weight-change detection (:mod:`.weights`), attaching them after the build and ReLU fusion
(:mod:`.fusion`; :func:`keep_dense_weights`), what a layer computes and ran (:mod:`.workload`), and SkimCaffe's sparsity measures
and connectivity masks (:mod:`.sparsity`)."""
from ..core.net import add_post_build_hook
from .fusion import attach_engines, keep_dense_weights, settle_auto_trials
from .modes import AUTO_DENSE_DENSITY, apply_mode, decide_mode
from .trial import set_auto_trials
from .workload import describe, forward_bytes, layer_workload

__all__ = ["AUTO_DENSE_DENSITY", "apply_mode", "decide_mode", "describe", "forward_bytes", "keep_dense_weights",
           "layer_workload", "set_auto_trials", "settle_auto_trials"]

add_post_build_hook(attach_engines)
