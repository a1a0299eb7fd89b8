"""HDF5 caffemodels in Caffe's layout: ``data/<layer>/<i>`` (and ``diff/`` when asked).

Mirrors ``Net::ToHDF5`` / ``Net::CopyTrainedLayersFromHDF5``: shared params are stored by their owner
only, a group exists for every layer, and a missing dataset is allowed only for a shared param.
Writes go through a temp file and an atomic rename.
"""
import os
import tempfile

import h5py
import numpy as np

from ..core.blob import check_allocation
from ..core.state import log
from ..errors import ModelFileError, PyskimError, WeightsMismatchError


def save_net_hdf5(net, path, write_diff=False):
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp_" + os.path.basename(path), dir=folder)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            data = f.create_group("data")
            diff = f.create_group("diff") if write_diff else None
            owners = _owner_table(net)
            for layer_index, layer in enumerate(net.layers):
                group = data.create_group(layer.name)
                diff_group = diff.create_group(layer.name) if write_diff else None
                for j, blob in enumerate(layer.blobs):
                    if owners.get((layer_index, j), -1) == -1:
                        group.create_dataset(str(j), data=blob.data)
                    if write_diff:
                        diff_group.create_dataset(str(j), data=blob.diff)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_net_hdf5(net, path):
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as e:
        raise ModelFileError(f"Could not open HDF5 weights file {path}: {e}") from None
    with f:
        try:
            _load_layers(net, f, path)
        except PyskimError:
            raise
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as e:   # h5py on a malformed file
            raise ModelFileError(f"{path}: malformed HDF5 weights file: {e}") from None
    for layer in net.layers:
        if hasattr(layer, "weights_changed"):
            layer.weights_changed()


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
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as e:
        raise ModelFileError(f"Could not open HDF5 solver state {path}: {e}") from None
    with f:
        try:
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
        except PyskimError:
            raise
        except (OSError, KeyError, ValueError, TypeError, RuntimeError, OverflowError) as e:
            raise ModelFileError(f"{path}: malformed HDF5 solver state: {e}") from None
    return iteration, learned_net, current_step, history


def _owner_table(net):
    """(layer index, blob index) -> owner net-param id, or -1 for owners."""
    return {loc: owner for loc, owner in zip(net.param_layer_indices(), net.param_owners())}
