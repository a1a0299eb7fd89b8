"""Sparse inference kernels (SkimCaffe's direct sparse convolution and sparse fully-connected).

* :func:`pack_conv_weights` / :func:`pack_fc_weights`: pruned dense weights -> CSR with
  padded-input offsets (:class:`ConvCSR`) or plain CSR (:class:`FcCSR`).
* :func:`sparse_conv_forward` / :func:`sparse_fc_forward`: the compiled forward kernels (OpenMP,
  bias and ReLU fused).
* :mod:`pyskim.sparse.reference`: NumPy references used by the tests.
"""
from .csr import ConvCSR, FcCSR, conv_out_hw, conv_out_size, pack_conv_weights, pack_fc_weights
from .ops import choose_conv_blocking, sparse_conv_forward, sparse_fc_forward

__all__ = [
    "ConvCSR",
    "FcCSR",
    "choose_conv_blocking",
    "conv_out_hw",
    "conv_out_size",
    "pack_conv_weights",
    "pack_fc_weights",
    "sparse_conv_forward",
    "sparse_fc_forward",
]
