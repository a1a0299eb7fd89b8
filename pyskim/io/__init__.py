"""Model file I/O and pycaffe's ``caffe.io`` helpers.

Model files: :mod:`.protofiles` (text/binary protobuf), :mod:`.upgrade` (Caffe's V0/V1/solver
upgrades), :mod:`.hdf5` (HDF5 caffemodels), :mod:`.files` (every write: temp file + atomic rename,
``0666 & ~umask``, FileWriteError, removal of stale temp files). ``caffe.io`` names: blob/datum
conversions here, image helpers and ``Transformer`` from :mod:`.images`.
"""
from .blobproto import (
    array_to_blobproto,
    array_to_datum,
    arraylist_to_blobprotovector_str,
    blobproto_to_array,
    blobprotovector_str_to_arraylist,
    datum_to_array,
)
from .images import Transformer, load_image, oversample, resize_image

# pycaffe spells this name with a typo ("vecor"); keep it importable for old scripts.
arraylist_to_blobprotovecor_str = arraylist_to_blobprotovector_str

__all__ = [
    "Transformer",
    "array_to_blobproto",
    "array_to_datum",
    "arraylist_to_blobprotovecor_str",
    "arraylist_to_blobprotovector_str",
    "blobproto_to_array",
    "blobprotovector_str_to_arraylist",
    "datum_to_array",
    "load_image",
    "oversample",
    "resize_image",
]
