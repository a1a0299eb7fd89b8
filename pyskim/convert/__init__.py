"""Model conversion: caffemodel <-> compact sparse file, caffemodel -> ONNX, ONNX import (an ONNX graph
-> deploy prototxt + caffemodel), caffemodel upgrade.

The ONNX exporter and importer need the optional ``onnx`` package only when they run (a
ConversionError says so).
"""
from .onnx_export import caffe_to_onnx, export_onnx, net_to_onnx
from .onnx_import import import_onnx, onnx_to_caffe, train_test_net
from .sparse import (
    caffemodel_to_sparse,
    decode_net,
    encode_net,
    load_sparse,
    save_sparse,
    sparse_to_caffemodel,
)
from .upgrade import upgrade_caffemodel

__all__ = ["caffe_to_onnx", "caffemodel_to_sparse", "decode_net", "encode_net", "export_onnx", "import_onnx",
           "load_sparse", "net_to_onnx", "onnx_to_caffe", "save_sparse", "sparse_to_caffemodel", "train_test_net",
           "upgrade_caffemodel"]
