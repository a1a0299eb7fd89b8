#!/usr/bin/env python
"""Convert Caffe models: caffemodel <-> compact sparse file, caffemodel -> ONNX, old-format upgrade.

Usage:
    python tools/convert.py to-sparse MODEL.caffemodel OUT.npz
    python tools/convert.py from-sparse IN.npz OUT.caffemodel
    python tools/convert.py to-onnx --model deploy.prototxt --weights W.caffemodel OUT.onnx [--input-shape 1,3,227,227]
    python tools/convert.py upgrade IN.caffemodel OUT.caffemodel

The sparse format is described in docs/sparse_format.md; the logic lives in pyskim.convert.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pyskim.apps.convert import main

if __name__ == "__main__":
    sys.exit(main())
