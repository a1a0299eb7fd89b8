"""The errors pyskim raises. Every one derives from :class:`PyskimError`.

Caffe aborts the process with a glog ``CHECK`` failure; pyskim raises one of these instead, always
naming the file, layer, blob or field at fault.
"""


class PyskimError(Exception):
    """Base class of every error pyskim raises on bad input."""


class ParseError(PyskimError, ValueError):
    """A prototxt or binary protobuf file could not be parsed (names file, line, column)."""


class ModelFileError(PyskimError, IOError):
    """A model file is missing, truncated or not what it claims to be."""


class BlobProtoError(ModelFileError, ValueError):
    """A BlobProto or Datum whose values do not fit its declared shape."""


class FileWriteError(PyskimError, OSError):
    """A file could not be written (disk full, file size limit, permissions): names the file and why.
    The previous file of that name, if any, is left as it was."""


class NetError(PyskimError, ValueError):
    """A net definition is inconsistent: missing bottom, bad arity, bad shape, unknown layer type."""


class UnknownLayerTypeError(NetError, KeyError):
    """A layer type that pyskim does not register. The message lists the closest known types."""

    def __str__(self):
        return str(self.args[0]) if self.args else ""


class WeightsMismatchError(NetError):
    """Weights loaded from a file do not fit the net (blob count or shape)."""


class OutOfMemoryError(PyskimError, MemoryError):
    """An allocation failed below pyskim's blob-size cap: names the layer, the blob (where known) and
    the bytes asked for."""


class SolverError(PyskimError, ValueError):
    """A solver definition or solver state is inconsistent."""


class DataError(PyskimError, IOError):
    """A data source (LMDB, list file, HDF5, mean file) is missing or holds bad records."""


class KernelArgumentError(PyskimError, ValueError):
    """A kernel was called with arguments of the wrong rank, shape, dtype or geometry."""


class ConversionError(PyskimError, ValueError):
    """A model cannot be converted (sparse file, ONNX export): names the layer (or file) and why."""
