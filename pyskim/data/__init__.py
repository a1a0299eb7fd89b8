"""Data plumbing behind Caffe's data layers and data tools.

:mod:`.db` reads and writes LMDB databases of Datums, :mod:`.transformer` is Caffe's
DataTransformer, :mod:`.imgproc` decodes and resizes images as Caffe's OpenCV helpers do, and
:mod:`.prefetch` runs a layer's batch loading in a background thread.
"""
