"""HDF5 caffemodels in Caffe's layout: ``data/<layer>/<i>`` (and ``diff/`` when asked).

Mirrors ``Net::ToHDF5`` / ``Net::CopyTrainedLayersFromHDF5``: shared params are stored by their owner
only, a group exists for every layer, and a missing dataset is allowed only for a shared param.
Writes go through a temp file and an atomic rename.
"""
import os
import tempfile

import h5py
import numpy as np

from ..common import log
from ..errors import ModelFileError, WeightsMismatchError


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
    except OSError as e:
        raise ModelFileError(f"Could not open HDF5 weights file {path}: {e}") from None
    with f:
        if "data" not in f:
            raise ModelFileError(f"{path}: HDF5 weights file has no 'data' group")
        data = f["data"]
        owners = _owner_table(net)
        for layer_index, layer in enumerate(net.layers):
            if layer.name not in data:
                log.info("Ignoring source layer %s", layer.name)
                continue
            group = data[layer.name]
            if len(group) > len(layer.blobs):
                raise WeightsMismatchError(f"{path}: incompatible number of blobs for layer '{layer.name}'")
            for j, blob in enumerate(layer.blobs):
                if str(j) not in group:
                    if owners.get((layer_index, j), -1) != -1:
                        continue
                    raise WeightsMismatchError(f"{path}: incompatible number of blobs for layer '{layer.name}'")
                values = np.asarray(group[str(j)], dtype=np.float32)
                if values.shape != tuple(blob.shape):
                    raise WeightsMismatchError(
                        f"{path}: cannot copy param {j} weights from layer '{layer.name}'; shape mismatch. "
                        f"Source param shape is {list(values.shape)}; target param shape is {list(blob.shape)}")
                blob.data[...] = values
    for layer in net.layers:
        if hasattr(layer, "weights_changed"):
            layer.weights_changed()


def _owner_table(net):
    """(layer index, blob index) -> owner net-param id, or -1 for owners."""
    return {loc: owner for loc, owner in zip(net._param_layer_indices, net._param_owners)}
