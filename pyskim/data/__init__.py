"""Data plumbing behind Caffe's data layers and data tools.

:mod:`.db` reads and writes LMDB databases of Datums, :mod:`.transformer` is Caffe's
DataTransformer, :mod:`.imgproc` decodes, resizes and encodes images as Caffe's OpenCV helpers do,
:mod:`.sources` loads batches (LMDB, image lists, HDF5 files) and :mod:`.prefetch` runs a layer's
batch loading in a background thread.
"""
