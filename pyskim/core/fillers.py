"""Weight fillers with Caffe's semantics (``include/caffe/filler.hpp``).

The random stream is numpy's, seeded by :func:`pyskim.set_random_seed`; values follow the same
distributions as Caffe's fillers but are not bit-identical to Caffe's Boost stream.
"""
import numpy as np

from ..errors import NetError
from ..proto import caffe_pb2
from . import state as common


def fill(blob, filler_param, owner=""):
    """Fill ``blob.data`` in place according to a ``FillerParameter``."""
    kind = filler_param.type
    fn = _FILLERS.get(kind)
    if fn is None:
        raise NetError(f"layer '{owner}': unknown filler type '{kind}' (known: {', '.join(sorted(_FILLERS))})")
    if blob.count == 0:
        return
    try:
        values = fn(blob, filler_param)
    except (ValueError, OverflowError, ZeroDivisionError) as e:     # e.g. std < 0, infinite bounds
        raise NetError(f"layer '{owner}': cannot fill blob of shape {list(blob.shape)} with the "
                       f"'{kind}' filler: {e}") from None
    blob.data[...] = np.asarray(values, dtype=np.float32).reshape(blob.shape)


def _constant(blob, p):
    return np.full(blob.shape, p.value, dtype=np.float32)


def _uniform(blob, p):
    return common.rng().uniform(p.min, p.max, size=blob.shape)


def _gaussian(blob, p):
    values = common.rng().normal(p.mean, p.std, size=blob.shape)
    if p.sparse >= 0:
        # Caffe keeps each weight with probability sparse / num_outputs (num_outputs = shape[0]).
        num_outputs = blob.legacy_shape(0)
        keep = common.rng().random(blob.shape) < p.sparse / num_outputs
        values = values * keep
    return values


def _positive_unitball(blob, p):
    values = common.rng().uniform(0, 1, size=blob.count).reshape(blob.legacy_shape(0), -1)
    return values / values.sum(axis=1, keepdims=True)


def _fan(blob, p):
    """The n of Caffe's Xavier/MSRA fillers: fan_in, fan_out or their average."""
    fan_in = blob.count // max(blob.legacy_shape(0), 1)
    fan_out = blob.count // max(blob.legacy_shape(1), 1) if blob.num_axes > 1 else blob.count
    norm = p.variance_norm
    if norm == caffe_pb2.FillerParameter.AVERAGE:
        return (fan_in + fan_out) / 2.0
    if norm == caffe_pb2.FillerParameter.FAN_OUT:
        return float(fan_out)
    return float(fan_in)


def _xavier(blob, p):
    scale = np.sqrt(3.0 / _fan(blob, p))
    return common.rng().uniform(-scale, scale, size=blob.shape)


def _msra(blob, p):
    return common.rng().normal(0.0, np.sqrt(2.0 / _fan(blob, p)), size=blob.shape)


def _bilinear(blob, p):
    """Upsampling kernel for Deconvolution: ``(1 - |x/f - c|)(1 - |y/f - c|)``."""
    if blob.num_axes != 4 or blob.shape[2] != blob.shape[3]:
        raise NetError("bilinear filler needs a 4-D blob with square kernels")
    width = blob.shape[3]
    f = np.ceil(width / 2.0)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    idx = np.arange(blob.count)
    x = idx % width
    y = (idx // width) % blob.shape[2]
    return (1 - np.abs(x / f - c)) * (1 - np.abs(y / f - c))


_FILLERS = {
    "constant": _constant,
    "uniform": _uniform,
    "gaussian": _gaussian,
    "positive_unitball": _positive_unitball,
    "xavier": _xavier,
    "msra": _msra,
    "bilinear": _bilinear,
}
