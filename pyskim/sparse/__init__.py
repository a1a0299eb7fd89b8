"""The sparse engine: SkimCaffe's ``conv_mode`` / ``gemm_mode`` dispatch attached to a built Net,
AUTO's decision, ReLU fusion (:mod:`.engine`) and SkimCaffe's sparsity measures and connectivity
masks (:mod:`.sparsity`)."""
from ..core.net import add_post_build_hook
from .engine import fuse_relus


def _link_relus(net):
    net.fused_relus = fuse_relus(net)   # sparse conv/IP kernels apply the next in-place ReLU


add_post_build_hook(_link_relus)
