"""Caffe's layer library: one module per layer type or tight family. Importing this package
registers every type in :data:`pyskim.core.layer.LAYER_REGISTRY` (Caffe's ``REGISTER_LAYER_CLASS``)."""
from ..core.layer import LAYER_REGISTRY, Layer, create_layer, layer_type_list, register
from . import (  # noqa: F401  (imported for their registrations)
    convolution,
    data,
    fused,
    inner_product,
    loss,
    lrn,
    neuron,
    norm,
    plumbing,
    pooling,
    python_layer,
)

__all__ = ["LAYER_REGISTRY", "Layer", "create_layer", "layer_type_list", "register"]
