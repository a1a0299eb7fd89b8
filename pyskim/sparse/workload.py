"""What a Convolution / InnerProduct (or fused type) computes, as the sparse engine and the roofline
model see it: :func:`layer_workload` (shape, density, column density) and :func:`describe` (what the
last forward ran, and the model's prediction for it). ``pyskim time`` and ``tools/perf_model.py`` report
these."""
from ..perf.model import predict
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


def describe(layer, bottom):
    """What ``layer`` (a Convolution, InnerProduct or fused type) ran in its last forward, as a
    dict: ``requested`` and ``used`` mode names, weight ``density``, ``flops`` (dense-equivalent),
    ``predicted`` seconds for the used mode (roofline model on :func:`pyskim.perf.profile.get_profile`),
    and ``prediction`` (the model's :class:`~pyskim.perf.model.Prediction`); None for other layers."""
    producer = product_layer(layer)
    if producer is None or not producer.blobs:
        return None
    kind, requested = requested_mode(producer)
    names = CONV_MODE_NAMES if kind == "conv" else GEMM_MODE_NAMES
    engine = producer.engine
    used = (engine.last_mode if engine is not None else None) or DENSE
    density = weight_density(producer.blobs[0].readonly_data)
    info = {"requested": names.get(requested, str(requested)), "used": USED_NAMES[(kind, used)],
            "density": density, "flops": None, "predicted": None, "prediction": None}
    workload = layer_workload(producer, bottom[0])
    if workload is None:
        return info
    shape, density, columns = workload
    p = predict(shape, density, get_profile(), column_density=columns)
    info.update(flops=shape.flops, prediction=p,
                predicted={DENSE: p.dense, SCONV: p.sparse, SPMDM: p.sparse, CCNMM: p.ccnmm}[used])
    return info
