"""Model conversion: caffemodel <-> compact sparse file, caffemodel -> ONNX, caffemodel upgrade.

The ONNX exporter needs the optional ``onnx`` package only when it runs (a ConversionError says so).
"""
from .onnx_export import caffe_to_onnx, export_onnx, net_to_onnx
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
