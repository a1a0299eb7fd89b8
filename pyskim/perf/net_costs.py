"""The costs a forward pass adds to a convolution's own work, fitted to a small net's layers.

A layer timed alone, called again and again, finds its weights, its buffers, its input and the
interpreter's state for it in the caches. Inside the forward pass of a net larger than the caches it
finds the other layers' data there instead: each call pays some tens of microseconds more, and the
pass a convolution makes over its input before computing (the dense path's packing, the sparse
kernel's padded copy) reads it from farther away. On GoogLeNet's small 1x1 layers these costs are as
large as the compute the roofline model predicts, so the model measures them as a net sees them:
:func:`measure_net_costs` times every convolution of :data:`CHAIN` (small 1x1, 3x3 and 5x5 layers of
Inception-like sizes that are not GoogLeNet's), once built dense and once sparse, each call after
:data:`~pyskim.perf.model.EVICTED_BYTES` of other data went through every thread's caches, and
:func:`fit_fixed_costs` finds per mode the per-call overhead ``o`` and the cost per input value
``c`` that best explain what the model's other terms leave over (relative least squares, both >= 0).
The same layers timed warm, each on its second call in a row, give the overheads ``o_warm`` of a
layer whose net stays in the caches (LeNet's; :func:`pyskim.perf.model.in_net`).
"""
import dataclasses
import time

import numpy as np
from scipy.optimize import nnls

from ..core.net import Net
from ..kernels.dense import relu
from ..proto import caffe_pb2
from .model import EVICTED_BYTES, ConvShape, FcShape, dense_time, sparse_time

#: The calibration net: an input of ``CHAIN_INPUT`` (channels, height, width) at batch 1, then in order
#: convolutions ``(kernel, num_output)`` (pad kernel // 2, stride 1), inner products
#: ``("fc", num_output)`` (each of those followed by an in-place ReLU) and ``"pool"`` (2x2 MAX
#: pooling, stride 2).
CHAIN_INPUT = (160, 24, 24)
CHAIN = ((1, 32), (3, 96), (1, 224), "pool", (1, 48), (3, 160), (1, 384), "pool", (1, 64), (5, 128), (1, 512),
         "pool", ("fc", 64), ("fc", 10))
#: Fraction of nonzero weights of the chain's convolutions (in both builds).
CHAIN_DENSITY = 0.2
#: Timed calls per layer and build.
CHAIN_ITERATIONS = 20

_MODES = {"dense": (caffe_pb2.ConvolutionParameter.LOWERED_GEMM, caffe_pb2.InnerProductParameter.GEMM),
          "sparse": (caffe_pb2.ConvolutionParameter.DIRECT_SCONV, caffe_pb2.InnerProductParameter.SPMDM)}
_PRODUCTS = ("Convolution", "InnerProduct")


def chain_param(mode):
    """The NetParameter of :data:`CHAIN` with every convolution and inner product in ``mode``
    (``"dense"`` or ``"sparse"``)."""
    param = caffe_pb2.NetParameter(name="calibration_chain")
    data = param.layer.add(name="data", type="Input", top=["data"])
    data.input_param.shape.add().dim.extend((1,) + CHAIN_INPUT)
    bottom = "data"
    for i, step in enumerate(CHAIN):
        if step == "pool":
            pool = param.layer.add(name=f"pool{i}", type="Pooling", bottom=[bottom], top=[f"pool{i}"])
            pool.pooling_param.kernel_size = 2
            pool.pooling_param.stride = 2
            bottom = f"pool{i}"
            continue
        kernel, num_output = step
        if kernel == "fc":
            fc = param.layer.add(name=f"fc{i}", type="InnerProduct", bottom=[bottom], top=[f"fc{i}"])
            fc.inner_product_param.num_output = num_output
            fc.inner_product_param.gemm_mode = _MODES[mode][1]
            bottom = f"fc{i}"
        else:
            conv = param.layer.add(name=f"conv{i}", type="Convolution", bottom=[bottom], top=[f"conv{i}"])
            cp = conv.convolution_param
            cp.num_output = num_output
            cp.kernel_size.append(kernel)
            cp.pad.append(kernel // 2)
            cp.conv_mode = _MODES[mode][0]
            bottom = f"conv{i}"
        param.layer.add(name=f"relu{i}", type="ReLU", bottom=[bottom], top=[bottom])
    return param


def _random_weights(net, rng):
    """``{layer name: weights}``: random weights at :data:`CHAIN_DENSITY` for every convolution and
    inner product of ``net``."""
    weights = {}
    for layer in net.layers:
        if layer.type in _PRODUCTS:
            w = rng.standard_normal(layer.blobs[0].shape).astype(np.float32)
            w *= rng.random(w.shape) < CHAIN_DENSITY
            weights[layer.name] = w
    return weights


def _time_evicted(net, iterations):
    """Average seconds of each layer's forward over ``iterations`` passes through ``net``, each call
    after :data:`~pyskim.perf.model.EVICTED_BYTES` were written on the kernels' threads (a ReLU over a
    buffer: it also leaves the thread pool awake, as the previous layer of a net does)."""
    source = np.ones(EVICTED_BYTES // 4, np.float32)
    scratch = np.empty_like(source)
    totals = [0.0] * len(net.layers)
    for _ in range(iterations):
        for i, layer in enumerate(net.layers):
            relu(source, out=scratch)
            start = time.perf_counter()
            layer.forward(net.bottom_vec(i), net.top_vec(i))
            totals[i] += time.perf_counter() - start
    return [t / iterations for t in totals]


def _time_warm(net, iterations):
    """Average seconds of each layer's forward over ``iterations`` passes through ``net``, each call
    timed right after an untimed call of the same layer (its state in the caches)."""
    totals = [0.0] * len(net.layers)
    for _ in range(iterations):
        for i, layer in enumerate(net.layers):
            bottom, top = net.bottom_vec(i), net.top_vec(i)
            layer.forward(bottom, top)
            start = time.perf_counter()
            layer.forward(bottom, top)
            totals[i] += time.perf_counter() - start
    return [t / iterations for t in totals]


def fit_fixed_costs(rows):
    """``(o, c)`` >= 0 minimizing the relative error of ``measured = rest + o + c·inputs`` over ``rows``
    of ``(measured seconds, rest of the model's seconds, input values)``."""
    measured = np.array([r[0] for r in rows], float)
    left = np.array([r[0] - r[1] for r in rows], float) / measured
    design = np.column_stack([np.ones(len(rows)), [float(r[2]) for r in rows]]) / measured[:, None]
    scale = np.abs(design).max(axis=0)
    scale[scale == 0] = 1.0
    solution, _ = nnls(design / scale, left)
    overhead, per_input = solution / scale
    return float(overhead), float(per_input)


def fit_overhead(rows):
    """``o`` >= 0 minimizing the relative error of ``measured = rest + o`` over ``rows`` of
    ``(measured seconds, rest of the model's seconds)``."""
    weights = np.array([1.0 / r[0] ** 2 for r in rows])
    left = np.array([r[0] - r[1] for r in rows])
    return float(max(0.0, (weights * left).sum() / weights.sum()))


def _conv_shape(net, i):
    """The :class:`ConvShape` of the chain's convolution ``i``."""
    n, c, h, w = net.bottom_vec(i)[0].shape
    cp = net.layers[i].param.convolution_param
    k = cp.kernel_size[0]
    return ConvShape(batch=n, channels=c, height=h, width=w, num_output=cp.num_output, kernel=(k, k),
                     pad=(k // 2, k // 2))


def measure_net_costs(profile, iterations=CHAIN_ITERATIONS, seed=0):
    """Fit the per-call costs of ``profile`` (whose other coefficients are measured) to the chain's
    layers on the current kernel thread count, each call timed evicted and warm: per mode (dense,
    sparse) the convolutions' ``*_overhead`` and ``*_input_cost`` and ``warm_*_overhead``, the inner
    products' ``*_fc_overhead`` and ``warm_*_fc_overhead``; returns them as a dict."""
    nets = {mode: Net(chain_param(mode), caffe_pb2.TEST) for mode in _MODES}
    weights = _random_weights(nets["dense"], np.random.default_rng(seed))
    data = np.random.default_rng(seed + 1).standard_normal((1,) + CHAIN_INPUT).astype(np.float32)
    for net in nets.values():
        for name, w in weights.items():
            net.layer_by_name(name).blobs[0].data[...] = w
        net.blob_by_name("data").data[...] = data
        net.forward_prefilled()
    timed = {"": {mode: _time_evicted(net, iterations) for mode, net in nets.items()},
             "warm_": {mode: _time_warm(net, iterations) for mode, net in nets.items()}}
    bare = dataclasses.replace(profile, dense_overhead=0.0, sparse_overhead=0.0, dense_input_cost=0.0,
                               sparse_input_cost=0.0, dense_fc_overhead=0.0, sparse_fc_overhead=0.0)
    net = nets["dense"]
    convs, fcs = [], []         # (layer index, {mode: rest of the model's time}, input values)
    for i, layer in enumerate(net.layers):
        if layer.type in _PRODUCTS:
            w = weights[layer.name]
            shape = _conv_shape(net, i) if layer.type == "Convolution" else FcShape(1, w.shape[1], w.shape[0])
            rest = {"dense": dense_time(shape, bare), "sparse": sparse_time(shape, np.count_nonzero(w) / w.size, bare)}
            (convs if layer.type == "Convolution" else fcs).append((i, rest, shape.inputs))
    costs = {}
    for mode in _MODES:
        for prefix, times in timed.items():
            t = times[mode]
            overhead, input_cost = fit_fixed_costs([(t[i], rest[mode], n) for i, rest, n in convs])
            costs[f"{prefix}{mode}_overhead"] = overhead
            if not prefix:
                costs[f"{mode}_input_cost"] = input_cost
            costs[f"{prefix}{mode}_fc_overhead"] = fit_overhead([(t[i], rest[mode]) for i, rest, _ in fcs])
    return costs
