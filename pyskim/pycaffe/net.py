"""pycaffe's ``caffe.Net``: the constructor forms, dict views and forward/backward helpers.

Follows BVLC ``python/caffe/pycaffe.py`` and ``_caffe.cpp``: ``blobs``/``params`` are ordered dicts of
live blobs, ``forward``/``backward`` return live views, ``forward_all`` pads the last batch.
"""
import os
from collections import OrderedDict

import numpy as np

from ..core import net as _net
from ..core.state import log
from ..errors import ModelFileError, NetError
from ..io import hdf5
from ..io.protofiles import write_binary
from ..io.upgrade import read_net_text
from ..proto import caffe_pb2


class Net(_net.Net):
    """``Net(prototxt, phase, level=0, stages=None, weights=None)`` or the legacy
    ``Net(prototxt, caffemodel, phase)``; a NetParameter may stand for the prototxt path."""

    def __init__(self, network_file, *args, phase=None, level=0, stages=None, weights=None):
        if args and isinstance(args[0], (str, os.PathLike)):
            weights, args = args[0], args[1:]
            log.warning("DEPRECATION WARNING - deprecated use of Python interface; use "
                        "caffe.Net('%s', caffe.TEST, weights='%s')", network_file, weights)
        if args:
            phase = args[0]
            if len(args) > 1:
                level = args[1]
            if len(args) > 2:
                stages = args[2]
        if phase is None:
            raise NetError("caffe.Net needs a phase (caffe.TRAIN or caffe.TEST)")
        if isinstance(network_file, caffe_pb2.NetParameter):
            param = network_file
        else:
            if not os.path.isfile(network_file):
                raise ModelFileError(f"Could not open file {network_file}")
            param = read_net_text(network_file)
        super().__init__(param, phase=phase, level=level, stages=list(stages or []))
        if weights:
            self.copy_from(weights)

    # -- views -----------------------------------------------------------------------------------
    @property
    def blobs(self):
        return OrderedDict(zip(self.blob_names(), self.blob_list()))

    @property
    def params(self):
        return OrderedDict((name, layer.blobs) for name, layer in zip(self.layer_names(), self.layers)
                           if layer.blobs)

    @property
    def layer_dict(self):
        return OrderedDict(zip(self.layer_names(), self.layers))

    @property
    def blob_loss_weights(self):
        names = self.blob_names()
        return OrderedDict((name, self.blob_loss_weight(i)) for i, name in enumerate(names))

    @property
    def _blob_loss_weights(self):
        return [self.blob_loss_weight(i) for i in range(len(self.blob_names()))]

    @property
    def inputs(self):
        names = self.blob_names()
        return [names[i] for i in self.input_blob_indices()]

    @property
    def outputs(self):
        names = self.blob_names()
        return [names[i] for i in self.output_blob_indices()]

    @property
    def top_names(self):
        names = self.blob_names()
        return OrderedDict((name, [names[t] for t in self.top_ids(i)])
                           for i, name in enumerate(self.layer_names()))

    @property
    def bottom_names(self):
        names = self.blob_names()
        return OrderedDict((name, [names[b] for b in self.bottom_ids(i)])
                           for i, name in enumerate(self.layer_names()))

    # -- running ---------------------------------------------------------------------------------
    def forward(self, blobs=None, start=None, end=None, **kwargs):
        """Forward (optionally from layer ``start`` to ``end`` inclusive) with inputs given as
        keyword arrays; returns live views of the outputs (or ``end``'s tops) plus ``blobs``."""
        blobs = list(blobs or [])
        start_index = self.layer_index(start) if start is not None else 0
        if end is not None:
            end_index = self.layer_index(end)
            outputs = set(self.top_names[end] + blobs)
        else:
            end_index = len(self.layers) - 1
            outputs = set(self.outputs + blobs)
        self._set_arrays(kwargs, self.inputs, "data", "Input blob arguments do not match net inputs.")
        self._forward(start_index, end_index)
        all_blobs = self.blobs
        return {name: all_blobs[name].data for name in outputs}

    def backward(self, diffs=None, start=None, end=None, **kwargs):
        """Backward from ``start`` down to ``end`` with output diffs given as keyword arrays; returns
        live views of the input diffs (or ``end``'s bottoms) plus ``diffs``."""
        diffs = list(diffs or [])
        start_index = self.layer_index(start) if start is not None else len(self.layers) - 1
        if end is not None:
            end_index = self.layer_index(end)
            outputs = set(self.bottom_names[end] + diffs)
        else:
            end_index = 0
            outputs = set(self.inputs + diffs)
        self._set_arrays(kwargs, self.outputs, "diff", "Top diff arguments do not match net outputs.")
        self._backward(start_index, end_index)
        all_blobs = self.blobs
        return {name: all_blobs[name].diff for name in outputs}

    def _set_arrays(self, arrays, expected_names, field, mismatch_message):
        if not arrays:
            return
        if set(arrays) != set(expected_names):
            raise NetError(f"{mismatch_message} Got {sorted(arrays)}, expected {sorted(expected_names)}")
        all_blobs = self.blobs
        for name, value in arrays.items():
            blob = all_blobs[name]
            value = np.asarray(value)
            if value.shape[:1] != blob.shape[:1]:
                raise NetError(f"blob '{name}': array of batch {value.shape[:1]} is not batch sized "
                               f"({blob.shape[:1]})")
            try:
                getattr(blob, field)[...] = value
            except ValueError:
                raise NetError(f"blob '{name}': cannot assign array of shape {value.shape} to blob of "
                               f"shape {blob.shape}") from None

    def forward_all(self, blobs=None, **kwargs):
        """Forward a whole dataset in batches (last batch zero-padded) and stack the outputs."""
        outs = {name: [] for name in set(self.outputs + list(blobs or []))}
        for batch in self._batches(kwargs):
            for name, value in self.forward(blobs=blobs, **batch).items():
                outs[name].extend(value.copy())
        return self._unpad(outs, kwargs)

    def forward_backward_all(self, blobs=None, diffs=None, **kwargs):
        """forward_all and backward_all in one sweep over batches; returns (outputs, diffs)."""
        outs = {name: [] for name in set(self.outputs + list(blobs or []))}
        grads = {name: [] for name in set(self.inputs + list(diffs or []))}
        forward_args = {k: v for k, v in kwargs.items() if k in self.inputs}
        backward_args = {k: v for k, v in kwargs.items() if k in self.outputs}
        for fb, bb in zip(self._batches(forward_args), self._batches(backward_args)):
            for name, value in self.forward(blobs=blobs, **fb).items():
                outs[name].extend(value.copy())
            for name, value in self.backward(diffs=diffs, **bb).items():
                grads[name].extend(value.copy())
        return self._unpad(outs, forward_args), self._unpad(grads, forward_args)

    def _batches(self, arrays):
        if not arrays:
            return
        num = len(next(iter(arrays.values())))
        batch_size = next(iter(self.blobs.values())).shape[0]
        for i in range(0, num - num % batch_size, batch_size):
            yield {name: value[i:i + batch_size] for name, value in arrays.items()}
        remainder = num % batch_size
        if remainder:
            yield {name: np.concatenate([value[-remainder:],
                                         np.zeros((batch_size - remainder,) + value.shape[1:])])
                   for name, value in arrays.items()}

    @staticmethod
    def _unpad(outs, arrays):
        outs = {name: np.asarray(values) for name, values in outs.items()}
        if outs and arrays:
            pad = len(next(iter(outs.values()))) - len(next(iter(arrays.values())))
            if pad:
                outs = {name: values[:-pad] for name, values in outs.items()}
        return outs

    def set_input_arrays(self, data, labels):
        """Hand arrays to the net's first layer, which must be MemoryData (pycaffe's
        ``Net.set_input_arrays``); 1-D labels become N x 1 x 1 x 1."""
        labels = np.asarray(labels) if not isinstance(labels, np.ndarray) else labels
        if labels.ndim == 1:
            labels = np.ascontiguousarray(labels[:, np.newaxis, np.newaxis, np.newaxis])
        if not self.layers or not hasattr(self.layers[0], "set_input_arrays"):
            raise NetError("set_input_arrays may only be called if the first layer is a MemoryDataLayer")
        self.layers[0].set_input_arrays(data, labels)

    # -- weights ---------------------------------------------------------------------------------
    def copy_from(self, path):
        """Load weights by layer name from a binary or HDF5 caffemodel (HDF5 detected by signature)."""
        self.copy_trained_layers_from(path)

    def save(self, path):
        write_binary(path, self.to_proto(write_diff=False))

    def save_hdf5(self, path):
        hdf5.save_net_hdf5(self, os.fspath(path))

    def load_hdf5(self, path):
        hdf5.load_net_hdf5(self, os.fspath(path))

    def share_with(self, other):
        self.share_trained_layers_with(other)

    # -- callbacks -------------------------------------------------------------------------------
    def before_forward(self, fn):
        self.add_callback("before_forward", fn)

    def after_forward(self, fn):
        self.add_callback("after_forward", fn)

    def before_backward(self, fn):
        self.add_callback("before_backward", fn)

    def after_backward(self, fn):
        self.add_callback("after_backward", fn)
