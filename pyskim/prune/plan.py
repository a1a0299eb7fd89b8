"""The performance-model and timing calls that GSL and ``tools/sparsity.py`` make, in one place.

* :func:`deploy_param`: a train/test net as a deploy net (``Input`` of batch ``batch``, no label path,
  no loss or accuracy layers), the net that is timed and modelled.
* :func:`layer_shapes`: the conv / inner-product layers of a built net as :mod:`pyskim.perf.model` shapes.
* :func:`predict_layers` / :func:`predicted_net_speedup`: :func:`pyskim.perf.model.predict` per layer
  at given weight densities (break-even and saturation densities included); the net figure is
  Σ dense / Σ time in the mode AUTO picks (sparse where predicted faster and the density is below
  ``AUTO_DENSE_DENSITY``) over the modelled layers (other layers are not modelled).
* :func:`measure_compare`: measured forward time per layer, dense vs sparse (``AUTO`` modes), at the
  deploy batch, through the time tool's compare (:mod:`pyskim.apps.time_net`).
"""
import dataclasses

import numpy as np

from ..core.netgraph import filter_net
from ..proto import caffe_pb2

CONV_TYPES = ("Convolution", "ConvolutionReLU", "ConvolutionReLUPool", "ConvolutionReLUPoolLRN")
FC_TYPES = ("InnerProduct", "InnerProductReLUDropout")
DATA_TYPES = ("Data", "ImageData", "HDF5Data", "MemoryData", "DummyData", "WindowData", "Input")


@dataclasses.dataclass
class LayerPerf:
    """The model's verdict on one layer at one density (times in ms)."""

    name: str
    type: str
    density: float
    dense_ms: float
    sparse_ms: float
    break_even: float
    saturation: float
    mode: str

    @property
    def speedup(self):
        return self.dense_ms / self.sparse_ms if self.sparse_ms > 0 else float("inf")

    @property
    def auto_speedup(self):
        """Dense time / time in the mode AUTO would run (1.0 where it stays dense)."""
        return self.dense_ms / self.best_ms if self.best_ms > 0 else float("inf")

    @property
    def best_ms(self):
        """The predicted time in the mode AUTO would run."""
        return self.sparse_ms if self.mode == "sparse" else self.dense_ms

    def to_dict(self):
        return {**dataclasses.asdict(self), "speedup": self.speedup, "auto_speedup": self.auto_speedup}


def deploy_param(net_param, batch=64, phase=caffe_pb2.TEST, input_shape=None):
    """``net_param`` (a train/test NetParameter) as a deploy net: its ``phase`` layers, data layers
    replaced by one ``Input`` ``data`` of shape (batch, C, H, W), every layer that depends on a label
    (the data layers' other tops: Accuracy, losses) dropped. ``input_shape`` (C, H, W) is read from
    the data layer (an Input/DummyData/MemoryData shape, else by building the ``phase`` net, which
    opens its data source) unless given."""
    filtered = filter_net(net_param, caffe_pb2.NetState(phase=phase))
    data_layers = [lp for lp in filtered.layer if lp.type in DATA_TYPES or (not lp.bottom and lp.top)]
    if not data_layers:
        raise ValueError(f"net '{net_param.name}' has no data layer to turn into an Input")
    data_top = data_layers[0].top[0]
    shape = tuple(input_shape) if input_shape else _data_shape(filtered, data_layers[0])
    out = caffe_pb2.NetParameter(name=net_param.name)
    inp = out.layer.add(name="data", type="Input")
    inp.top.append(data_top)
    inp.input_param.shape.add().dim.extend([int(batch), *[int(d) for d in shape]])
    tainted = {t for lp in data_layers for t in lp.top} - {data_top}
    for lp in filtered.layer:
        if lp in data_layers:
            continue
        if any(b in tainted for b in lp.bottom) or "Loss" in lp.type or lp.type == "Accuracy":
            tainted.update(lp.top)
            continue
        layer = out.layer.add()
        layer.CopyFrom(lp)
        del layer.include[:]
        del layer.exclude[:]
    return out


def _data_shape(net_param, data_layer):
    if data_layer.type == "Input" and data_layer.input_param.shape:
        return tuple(data_layer.input_param.shape[0].dim[1:])
    if data_layer.type == "DummyData" and data_layer.dummy_data_param.shape:
        return tuple(data_layer.dummy_data_param.shape[0].dim[1:])
    if data_layer.type == "MemoryData":
        m = data_layer.memory_data_param
        return (m.channels, m.height, m.width)
    from ..core.net import Net
    net = Net(net_param, phase=net_param.state.phase)
    return tuple(net.blob_by_name(data_layer.top[0]).shape[1:])


def layer_shapes(net):
    """``{layer name: (type, ConvShape | FcShape)}`` of the conv (2-D) and inner-product layers of a
    built :class:`pyskim.core.net.Net`, in net order."""
    from ..layers.convolution import conv_geometry
    from ..perf.model import ConvShape, FcShape
    shapes = {}
    for i, (name, layer) in enumerate(zip(net.layer_names(), net.layers)):
        bottoms = net.bottom_vec(i)
        if not bottoms or not layer.blobs:
            continue
        shape = tuple(bottoms[0].shape)
        lp = layer.param
        if layer.type in CONV_TYPES and len(shape) == 4:
            cp = lp.convolution_param
            kernel, stride, pad, dilation = conv_geometry(name, cp, 2)
            shapes[name] = (layer.type, ConvShape(shape[0], shape[1], shape[2], shape[3], int(cp.num_output),
                                                  kernel, stride, pad, dilation, max(int(cp.group), 1)))
        elif layer.type in FC_TYPES:
            axis = lp.inner_product_param.axis % len(shape)
            m, k = int(np.prod(shape[:axis])), int(np.prod(shape[axis:]))
            shapes[name] = (layer.type, FcShape(m, k, int(lp.inner_product_param.num_output)))
    return shapes


def model_profile():
    """The machine profile the model uses (calibrated once, cached; see :mod:`pyskim.perf.model`)."""
    from ..perf.model import get_profile
    return get_profile()


def predict_layers(shapes, densities=None, profile=None):
    """``{name: LayerPerf}`` for ``shapes`` (from :func:`layer_shapes`) at ``densities`` (name →
    fraction of nonzero weights; missing names are dense)."""
    from ..perf.model import predict
    from ..sparse.engine import AUTO_DENSE_DENSITY
    profile = profile or model_profile()
    densities = densities or {}
    out = {}
    for name, (kind, shape) in shapes.items():
        d = float(densities.get(name, 1.0))
        p = predict(shape, d, profile)
        sparse = p.sparse < p.dense and d < AUTO_DENSE_DENSITY     # as conv_mode/gemm_mode AUTO decide
        out[name] = LayerPerf(name, kind, d, p.dense * 1e3, p.sparse * 1e3, p.break_even, p.saturation,
                              "sparse" if sparse else "dense")
    return out


def predicted_net_speedup(perfs):
    """Σ dense / Σ predicted time in each layer's AUTO mode, over the modelled layers."""
    dense = sum(p.dense_ms for p in perfs.values())
    best = sum(p.best_ms for p in perfs.values())
    return dense / best if best > 0 else 1.0


# -- measured ---------------------------------------------------------------------------------------

def measure_compare(deploy_file, weights, iterations=20):
    """The time tool's ``--compare`` (:func:`pyskim.apps.time_net.compare`: the deploy net dense and
    with ``AUTO`` modes, same weights, forward only, alternating): ``{"layers": {name: {"dense_ms",
    "sparse_ms", "mode"}}, "dense_ms", "sparse_ms", "speedup"}`` (whole-net sums, ms)."""
    import types

    from ..apps import time_net
    args = types.SimpleNamespace(model=str(deploy_file), weights=str(weights) if weights else "", batch=0,
                                 phase="TEST", level=0, stage="", iterations=int(iterations))
    dense_net, sparse_net = time_net.build_net(args, "dense"), time_net.build_net(args, "auto")
    dense_t, sparse_t = time_net.compare(args, dense_net, sparse_net, "auto")
    modes = {row[0]: row[1] for row in time_net.layer_rows(sparse_net, sparse_t)}
    layers = {layer.name: {"dense_ms": td * 1e3, "sparse_ms": ts * 1e3, "mode": modes.get(layer.name, "-")}
              for layer, td, ts in zip(sparse_net.layers, dense_t, sparse_t)}
    dense_ms, sparse_ms = sum(dense_t) * 1e3, sum(sparse_t) * 1e3
    return {"layers": layers, "dense_ms": dense_ms, "sparse_ms": sparse_ms,
            "speedup": dense_ms / sparse_ms if sparse_ms > 0 else 1.0}
