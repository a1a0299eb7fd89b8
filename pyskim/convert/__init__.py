"""Model conversion: caffemodel <-> compact sparse file, caffemodel -> ONNX, caffemodel upgrade.

The ONNX exporter is imported lazily (it needs the optional ``onnx`` package).
"""
from .sparse import (
    caffemodel_to_sparse,
    decode_net,
    encode_net,
    load_sparse,
    save_sparse,
    sparse_to_caffemodel,
)
from .upgrade import upgrade_caffemodel

__all__ = ["caffe_to_onnx", "caffemodel_to_sparse", "decode_net", "encode_net", "export_onnx", "load_sparse",
           "net_to_onnx", "save_sparse", "sparse_to_caffemodel", "upgrade_caffemodel"]


def __getattr__(name):
    if name in ("caffe_to_onnx", "net_to_onnx", "export_onnx"):
        from . import onnx_export
        return getattr(onnx_export, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
