"""Caffe's layer library. Importing this package registers every layer family."""
from . import common, data, loss, neuron, norm, python_layer, skim, vision  # noqa: F401  (registration)
from .base import LAYER_REGISTRY, Layer, create_layer, layer_type_list, register

__all__ = ["LAYER_REGISTRY", "Layer", "create_layer", "layer_type_list", "register"]
