"""What a Convolution / InnerProduct (or fused type) computes, as the sparse engine and the roofline
model see it: :func:`layer_workload` (shape, density, column density), :func:`describe` (what the
last forward ran, and the model's prediction for it) and :func:`forward_bytes` (what a forward pass of
the whole net moves, which sets how much of a layer's state the others leave in the caches).
``pyskim time`` and ``tools/perf_model.py`` report these."""
from ..perf.model import in_net, predict
from ..perf.profile import get_profile
from .engine import column_density, conv_shape, fc_shape, weight_density
from .modes import (
    CCNMM,
    CONV_MODE_NAMES,
    DENSE,
    GEMM_MODE_NAMES,
    SCONV,
    SPMDM,
    USED_NAMES,
    product_layer,
    requested_mode,
)


def layer_workload(layer, bottom0):
    """``(shape, density, column_density)`` of ``layer``'s product on its first bottom ``bottom0``:
    a :class:`~pyskim.perf.model.ConvShape` (2-D convolutions) or
    :class:`~pyskim.perf.model.FcShape`, the fraction of nonzero weights, and the fraction of lowered
    weight columns that are not all zero (None for an InnerProduct). None for a layer without a
    convolution / inner product, without weights, or a convolution with other than two spatial axes."""
    producer = product_layer(layer)
    if producer is None or not producer.blobs:
        return None
    weights = producer.blobs[0].readonly_data
    if requested_mode(producer)[0] == "fc":
        return fc_shape(producer), weight_density(weights), None
    shape = conv_shape(producer, bottom0)
    if shape is None:
        return None
    return shape, weight_density(weights), column_density(weights, producer.param.convolution_param.group)


def _used_mode(producer):
    """The mode ``producer`` (a Convolution / InnerProduct) ran in its last forward (dense before any)."""
    engine = producer.engine
    return (engine.last_mode if engine is not None else None) or DENSE


def forward_bytes(net):
    """About the bytes a forward pass of ``net`` reads and writes: every blob's values once and every
    layer's parameters as they are stored (8 bytes per nonzero weight of a layer that last ran a
    sparse mode, a value and its index, counted by its engine: released dense weights are not read
    back; 4 per value otherwise). The performance model's :func:`~pyskim.perf.model.in_net` prices
    the net's layers by it."""
    total = sum(4 * blob.count for blob in net.blob_list())
    for layer in net.layers:
        producer = product_layer(layer)
        for k, blob in enumerate(layer.blobs):
            if k == 0 and producer is not None and _used_mode(producer) in (SCONV, SPMDM):
                total += 8 * round(producer.engine.density * blob.count)
            else:
                total += 4 * blob.count
    return total


def describe(layer, bottom, net_bytes=None):
    """What ``layer`` (a Convolution, InnerProduct or fused type) ran in its last forward, as a
    dict: ``requested`` and ``used`` mode names, weight ``density``, ``flops`` (dense-equivalent),
    ``predicted`` seconds for the used mode (roofline model on :func:`pyskim.perf.profile.get_profile`,
    as a layer of a net moving ``net_bytes`` per forward sees it: :func:`forward_bytes`; None: a net
    larger than the caches), and ``prediction`` (the model's
    :class:`~pyskim.perf.model.Prediction`); None for other layers."""
    producer = product_layer(layer)
    if producer is None or not producer.blobs:
        return None
    kind, requested = requested_mode(producer)
    names = CONV_MODE_NAMES if kind == "conv" else GEMM_MODE_NAMES
    used = _used_mode(producer)
    density = weight_density(producer.blobs[0].readonly_data)
    info = {"requested": names.get(requested, str(requested)), "used": USED_NAMES[(kind, used)],
            "density": density, "flops": None, "predicted": None, "prediction": None}
    workload = layer_workload(producer, bottom[0])
    if workload is None:
        return info
    shape, density, columns = workload
    p = predict(shape, density, in_net(get_profile(), net_bytes), column_density=columns)
    info.update(flops=shape.flops, prediction=p,
                predicted={DENSE: p.dense, SCONV: p.sparse, SPMDM: p.sparse, CCNMM: p.ccnmm}[used])
    return info
