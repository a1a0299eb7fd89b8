"""HDF5 caffemodels in Caffe's layout: ``data/<layer>/<i>`` (and ``diff/`` when asked).

Mirrors ``Net::ToHDF5`` / ``Net::CopyTrainedLayersFromHDF5``: shared params are stored by their owner
only, a group exists for every layer, and a missing dataset is allowed only for a shared param.
Files are built in memory and written with :func:`~pyskim.io.files.atomic_write` (temp file +
atomic rename, mode 0666 & ~umask; a failed write is a :class:`~pyskim.errors.FileWriteError`, and
HDF5's own file I/O never meets a full disk).
"""
import contextlib
import io

import h5py
import numpy as np

from ..core.blob import check_allocation
from ..core.state import log
from ..errors import ModelFileError, PyskimError, WeightsMismatchError
from ..proto import caffe_pb2
from .blobproto import array_to_blobproto
from .files import atomic_write


def _write_hdf5(path, fill):
    """Build an HDF5 file in memory with ``fill(h5py.File)`` and write it atomically to ``path``."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        fill(f)
    atomic_write(path, buffer.getbuffer())


def save_net_hdf5(net, path, write_diff=False):
    """Write ``net``'s learned blobs to ``path`` in Caffe's HDF5 caffemodel layout (``Net::ToHDF5``):
    ``data/<layer>/<i>`` for every param a layer owns, and ``diff/<layer>/<i>`` when ``write_diff``."""
    owners = _owner_table(net)

    def fill(f):
        data = f.create_group("data")
        diff = f.create_group("diff") if write_diff else None
        for layer_index, layer in enumerate(net.layers):
            group = data.create_group(layer.name)
            diff_group = diff.create_group(layer.name) if write_diff else None
            for j, blob in enumerate(layer.blobs):
                if owners.get((layer_index, j), -1) == -1:
                    group.create_dataset(str(j), data=blob.data)
                if write_diff:
                    diff_group.create_dataset(str(j), data=blob.diff)
    _write_hdf5(path, fill)


def write_solver_state_hdf5(path, iteration, model_filename, current_step, history):
    """Write a solver state in Caffe's HDF5 layout (``SGDSolver::SnapshotSolverStateToHDF5``):
    ``iter``, ``learned_net`` (the model file name), ``current_step`` and ``history/<i>``."""
    def fill(f):
        f.create_dataset("iter", data=np.int32(iteration))
        f.create_dataset("learned_net", data=np.bytes_(model_filename.encode()))
        f.create_dataset("current_step", data=np.int32(current_step))
        group = f.create_group("history")
        for i, array in enumerate(history):
            group.create_dataset(str(i), data=array)
    _write_hdf5(path, fill)


@contextlib.contextmanager
def _reading(path, what):
    """Open the HDF5 file ``path`` (a ``what``: weights file, solver state) for reading; failing to
    open it, or h5py failing on a malformed file inside the block, is a ModelFileError naming it.
    PyskimErrors raised in the block pass unchanged."""
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as e:
        raise ModelFileError(f"Could not open HDF5 {what} {path}: {e}") from None
    with f:
        try:
            yield f
        except PyskimError:
            raise
        except (OSError, KeyError, ValueError, TypeError, RuntimeError, OverflowError) as e:
            raise ModelFileError(f"{path}: malformed HDF5 {what}: {e}") from None


def load_net_hdf5(net, path):
    """Copy the weights of an HDF5 caffemodel into ``net``'s layers by name
    (``Net::CopyTrainedLayersFromHDF5``), telling each layer its weights changed once they are in."""
    with _reading(path, "weights file") as f:
        _load_layers(net, f, path)


def _load_layers(net, f, path):
    data = f.get("data")
    if not isinstance(data, h5py.Group):
        raise ModelFileError(f"{path}: HDF5 weights file has no 'data' group")
    owners = _owner_table(net)
    for layer_index, layer in enumerate(net.layers):
        if not layer.name or layer.name not in data:
            log.info("Ignoring source layer %s", layer.name)
            continue
        group = data[layer.name]
        if not isinstance(group, h5py.Group):
            raise ModelFileError(f"{path}: 'data/{layer.name}' is not a group of blobs")
        if len(group) > len(layer.blobs):
            raise WeightsMismatchError(f"{path}: incompatible number of blobs for layer '{layer.name}'")
        for j, blob in enumerate(layer.blobs):
            if str(j) not in group:
                if owners.get((layer_index, j), -1) != -1:
                    continue
                raise WeightsMismatchError(f"{path}: incompatible number of blobs for layer '{layer.name}'")
            node = group[str(j)]
            shape = dataset_shape(node, path, f"data/{layer.name}/{j}")
            if shape != tuple(blob.shape):
                raise WeightsMismatchError(
                    f"{path}: cannot copy param {j} weights from layer '{layer.name}'; shape mismatch. "
                    f"Source param shape is {list(shape)}; target param shape is {list(blob.shape)}")
            blob.data[...] = read_float_dataset(node, path, f"data/{layer.name}/{j}")
        layer.weights_changed()


def read_net_hdf5(path):
    """An HDF5 caffemodel as a NetParameter: for every layer group under ``data/`` (in the file's name
    order; a name with ``/`` is a nested group, as HDF5 stores it) a layer of that name with its
    blobs ``0, 1, ...`` (shape and float data, and the ``diff/`` values when the file has them). An
    HDF5 caffemodel holds no layer definitions, so the layers have only names and blobs: what
    ``CopyTrainedLayersFrom`` reads."""
    net = caffe_pb2.NetParameter()
    with _reading(path, "weights file") as f:
        data = f.get("data")
        if not isinstance(data, h5py.Group):
            raise ModelFileError(f"{path}: HDF5 weights file has no 'data' group")
        diff = f.get("diff")
        for name, group in _layer_groups(data, ""):
            _add_hdf5_layer(net, path, name, group, diff if isinstance(diff, h5py.Group) else None)
    return net


def _layer_groups(group, prefix):
    """(layer name, group) for each layer group below ``group``: one holding datasets, or nothing."""
    children = list(group.items())
    if not children or any(isinstance(node, h5py.Dataset) for _, node in children):
        yield prefix, group
    for key, node in children:
        if isinstance(node, h5py.Group):
            yield from _layer_groups(node, f"{prefix}/{key}" if prefix else key)


def _add_hdf5_layer(net, path, name, group, diff):
    keys = sorted((key for key, node in group.items() if isinstance(node, h5py.Dataset)),
                  key=lambda key: (len(key), key))
    if keys != [str(j) for j in range(len(keys))]:
        raise ModelFileError(f"{path}: the blobs of 'data/{name}' are not numbered 0..{len(keys) - 1} "
                             f"(found {keys})")
    layer = net.layer.add(name=name)
    for key in keys:
        values = read_float_dataset(group[key], path, f"data/{name}/{key}")
        stored = diff.get(f"{name}/{key}") if diff is not None else None
        grad = None if stored is None else read_float_dataset(stored, path, f"diff/{name}/{key}")
        if grad is not None and grad.shape != values.shape:
            raise ModelFileError(f"{path}: 'diff/{name}/{key}' has shape {list(grad.shape)}, its data "
                                 f"{list(values.shape)}")
        layer.blobs.add().CopyFrom(array_to_blobproto(values, grad))


def dataset_shape(node, path, name, error=ModelFileError):
    """The shape of a numeric HDF5 dataset ``node``; ``error`` when it is a group, holds no
    dataspace or non-numeric values."""
    if not isinstance(node, h5py.Dataset):
        raise error(f"{path}: '{name}' is not a dataset")
    if node.shape is None or node.dtype.kind not in "fiub":
        raise error(f"{path}: '{name}' does not hold numbers (dtype {node.dtype}, shape {node.shape})")
    return tuple(int(d) for d in node.shape)


def read_float_dataset(node, path, name, error=ModelFileError):
    """A numeric HDF5 dataset as float32, its size checked against the blob limit before reading."""
    shape = dataset_shape(node, path, name, error)
    check_allocation(shape, f"{path}: dataset '{name}'", error=error)
    try:
        return np.asarray(node[()], dtype=np.float32)
    except (OSError, ValueError, TypeError) as e:
        raise error(f"{path}: cannot read dataset '{name}': {e}") from None


def _scalar_int(f, name, path):
    node = f.get(name)
    if node is None:
        raise ModelFileError(f"{path}: not a solver state (no '{name}')")
    value = read_float_dataset(node, path, name)
    if value.size != 1 or not np.isfinite(value).all():
        raise ModelFileError(f"{path}: '{name}' must be a single number, got shape {list(value.shape)}")
    return int(np.asarray(node[()]).reshape(-1)[0])


def read_solver_state_hdf5(path):
    """(iter, learned_net or None, current_step, history arrays) of an HDF5 solverstate (Caffe's
    ``SnapshotSolverStateToHDF5`` layout), every field validated; errors are ModelFileError."""
    with _reading(path, "solver state") as f:
        learned_net = None
        if "learned_net" in f:
            node = f["learned_net"]
            value = node[()] if isinstance(node, h5py.Dataset) and node.shape == () else None
            if isinstance(value, np.bytes_):
                value = bytes(value)
            if not isinstance(value, (bytes, str)):
                raise ModelFileError(f"{path}: 'learned_net' must be a string")
            learned_net = value.rstrip(b"\0").decode("utf-8", "replace") if isinstance(value, bytes) else value
        group = f.get("history")
        if not isinstance(group, h5py.Group):
            raise ModelFileError(f"{path}: not a solver state (no 'history' group)")
        history = []
        for i in range(len(group)):
            if str(i) not in group:
                raise ModelFileError(f"{path}: history dataset '{i}' is missing")
            history.append(read_float_dataset(group[str(i)], path, f"history/{i}"))
        iteration, current_step = _scalar_int(f, "iter", path), _scalar_int(f, "current_step", path)
    return iteration, learned_net, current_step, history


def _owner_table(net):
    """(layer index, blob index) -> owner net-param id, or -1 for owners."""
    return {loc: owner for loc, owner in zip(net.param_layer_indices(), net.param_owners())}
