"""The performance-model and timing calls that GSL and ``tools/sparsity.py`` make, in one place.

* :func:`deploy_param`: a train/test net as a deploy net (``Input`` of batch ``batch``, no label path,
  no loss or accuracy layers), the net that is timed and modelled.
* :func:`layer_shapes`: the conv / inner-product layers of a built net as :mod:`pyskim.perf.model` shapes
  (the shapes the sparse engine sees, :func:`pyskim.sparse.layer_workload`).
* :func:`predict_layers` / :func:`predicted_net_speedup`: :func:`pyskim.perf.model.predict` per layer
  at given weight densities (break-even and saturation densities included) and the mode AUTO runs,
  from the engine's own rule (:func:`pyskim.sparse.decide_mode`); the net figure is Σ dense / Σ time
  in that mode over the modelled layers (other layers are not modelled). The machine profile is the
  cached calibration or the default one (:func:`pyskim.perf.profile.get_profile`; never calibrates).
* :func:`measure_compare`: measured forward time per layer, dense vs sparse (``AUTO`` modes), at the
  deploy batch or another (:func:`pyskim.perf.timing.compare_nets`).
"""
import dataclasses

import numpy as np

from ..core.netgraph import filter_net
from ..core.state import log
from ..errors import NetError
from ..io.upgrade import read_net_text
from ..perf.model import predict
from ..perf.profile import get_profile
from ..perf.timing import compare_nets
from ..proto import caffe_pb2
from ..pycaffe.net import Net
from ..sparse import apply_mode, decide_mode, describe, layer_workload
from ..sparse.modes import CONV_TYPES, IP_TYPES

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
    ccnmm_ms: float = None       # LOWERED_CCNMM (convolutions only)

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
        return {"sparse": self.sparse_ms, "ccnmm": self.ccnmm_ms}.get(self.mode, self.dense_ms)

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
        raise NetError(f"net '{net_param.name}' has no data layer to turn into an Input")
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
    net = Net(net_param, phase=net_param.state.phase)
    return tuple(net.blob_by_name(data_layer.top[0]).shape[1:])


def layer_shapes(net):
    """``{layer name: (type, ConvShape | FcShape)}`` of the conv (2-D) and inner-product layers
    (:data:`pyskim.sparse.modes.CONV_TYPES`, ``IP_TYPES``) of a built :class:`pyskim.core.net.Net`, in net order, as
    the sparse engine sees them (:func:`pyskim.sparse.layer_workload`)."""
    shapes = {}
    for i, (name, layer) in enumerate(zip(net.layer_names(), net.layers)):
        bottoms = net.bottom_vec(i)
        modelled = bottoms and layer.type in CONV_TYPES + IP_TYPES
        workload = layer_workload(layer, bottoms[0]) if modelled else None
        if workload is not None:
            shapes[name] = (layer.type, workload[0])
    return shapes


def predict_layers(shapes, densities=None, profile=None, column_densities=None):
    """``{name: LayerPerf}`` for ``shapes`` (from :func:`layer_shapes`) at ``densities`` (name →
    fraction of nonzero weights; missing names are dense). ``column_densities`` (name → fraction of
    lowered weight columns that are not all zero, convolutions) refines AUTO's choice as the engine
    makes it; missing names have no all-zero columns."""
    profile = profile or get_profile()
    densities = densities or {}
    column_densities = column_densities or {}
    out = {}
    for name, (kind, shape) in shapes.items():
        d = float(densities.get(name, 1.0))
        columns = column_densities.get(name)
        p = predict(shape, d, profile, columns)
        mode = decide_mode(shape, d, columns, profile)          # what conv_mode / gemm_mode AUTO runs
        out[name] = LayerPerf(name, kind, d, p.dense * 1e3, p.sparse * 1e3, p.break_even, p.saturation, mode,
                              None if np.isinf(p.ccnmm) else p.ccnmm * 1e3)
    return out


def predicted_net_speedup(perfs):
    """Σ dense / Σ predicted time in each layer's AUTO mode, over the modelled layers."""
    dense = sum(p.dense_ms for p in perfs.values())
    best = sum(p.best_ms for p in perfs.values())
    return dense / best if best > 0 else 1.0


# -- measured ---------------------------------------------------------------------------------------

def measure_compare(deploy_file, weights, iterations=20, batch=None):
    """Measured forward time of the deploy net dense and with ``AUTO`` modes (same weights, TEST phase,
    alternating: :func:`pyskim.perf.timing.compare_nets`), as ``pyskim time -compare``: ``{"layers":
    {name: {"dense_ms", "sparse_ms", "mode"}}, "dense_ms", "sparse_ms", "speedup"}`` (whole-net sums,
    ms; ``mode`` as ``pyskim time`` prints it, ``AUTO>DIRECT_SCONV``, or ``-`` for other layers).
    ``batch``: the batch of the net's ``Input`` layers (default: the deploy file's)."""
    param = read_net_text(str(deploy_file))
    if batch:
        for lp in param.layer:
            if lp.type == "Input":
                for shape in lp.input_param.shape:
                    shape.dim[0] = int(batch)
    nets = []
    for mode in ("dense", "auto"):
        mode_param = caffe_pb2.NetParameter()
        mode_param.CopyFrom(param)
        apply_mode(mode_param, mode)
        nets.append(Net(mode_param, caffe_pb2.TEST, weights=str(weights) if weights else None))
    dense_net, sparse_net = nets
    comparison = compare_nets(dense_net, sparse_net, int(iterations))
    layers = {}
    for i, row in enumerate(comparison.layers):
        info = describe(sparse_net.layers[i], sparse_net.bottom_vec(i))
        mode = "-" if info is None else info["used"] if info["requested"] != "AUTO" else f"AUTO>{info['used']}"
        layers[row.name] = {"dense_ms": row.dense * 1e3, "sparse_ms": row.sparse * 1e3, "mode": mode}
        log.info("%-22s %-22s dense %9.3f ms  sparse %9.3f ms", row.name, mode, row.dense * 1e3, row.sparse * 1e3)
    dense_ms, sparse_ms = comparison.dense_total * 1e3, comparison.sparse_total * 1e3
    log.info("Whole net: dense %.3f ms, sparse %.3f ms over %d iterations", dense_ms, sparse_ms, comparison.iterations)
    return {"layers": layers, "dense_ms": dense_ms, "sparse_ms": sparse_ms,
            "speedup": dense_ms / sparse_ms if sparse_ms > 0 else 1.0}
