"""SkimCaffe's ``conv_mode`` / ``gemm_mode``: which algorithm a Convolution or InnerProduct runs.

Convolution (``convolution_param.conv_mode``; also the fused ``ConvolutionReLU*`` types, whose first
stage is a Convolution with the same parameter):

* ``LOWERED_GEMM`` (default): pyskim's dense path (im2col + BLAS GEMM).
* ``DIRECT_SCONV``: direct sparse convolution (:func:`pyskim.sparse.sparse_conv_forward`): the
  weights as CSR with padded-input offsets, bias added once in the kernel's store (SkimCaffe adds it
  twice on a plain Convolution), ReLU fused when a ReLU follows (see below). 2-D convolutions of
  any kernel, stride, pad, dilation and group; an N-d convolution falls back to LOWERED_GEMM with
  one warning.
* ``LOWERED_CCNMM``: im2col, then a GEMM over the lowered weight columns that are not all zero
  (SkimCaffe's squeezed GEMM; any dimensionality).
* ``DIRECT_DCONV``: SkimCaffe's libxsmm direct dense convolution; in pyskim it runs pyskim's dense
  convolution (the same as LOWERED_GEMM).
* ``AUTO`` (pyskim extension): the roofline model (:mod:`pyskim.perf.model`) picks the fastest of
  dense, DIRECT_SCONV and LOWERED_CCNMM per layer, for its input shape and weight density. A layer
  with density >= 0.5 and fewer than 10% all-zero columns is dense without asking the model.

InnerProduct (``inner_product_param.gemm_mode``; also ``InnerProductReLUDropout``): ``GEMM``
(dense), ``SPMDM`` (CSR weights x dense activations, :func:`pyskim.sparse.sparse_fc_forward`; SpMV
at batch 1; ``transpose: true`` weights are packed transposed, where SkimCaffe fell back to GEMM),
``SPGEMM`` (never implemented upstream: falls back to GEMM with one warning) and ``AUTO``.

Weights. The sparse structures are packed from ``blobs[0]`` at the first forward in a sparse mode,
and again whenever the weights change: after ``weights_changed()`` (which the Net calls after
loading a caffemodel), when ``blobs[0]``'s buffer was handed out by ``Blob.data`` since the last
check and its contents' fingerprint moved (so ``net.params[name][0].data[...] = w`` is seen), when
a sample of 64 weights changed (writes through an array obtained earlier), or when the input size
changes (the convolution offsets depend on H x W). Backward always runs the dense path, in every
mode.

ReLU fusion. :func:`fuse_relus` (run by the Net after building) links a Convolution or
InnerProduct whose mode is not plain dense to the ReLU (``negative_slope: 0``) that follows it in
place, directly or inside a fused SkimCaffe type. When the sparse kernel ran, it applied the ReLU
in its store and the ReLU's forward does nothing; in any other mode the ReLU runs as usual. The
values are identical (``max(x, 0)``), and backward is unchanged (an in-place ReLU's backward reads
its output). Caveat: ``net.forward(end=<conv>)`` then shows the conv's top after the ReLU.
"""
import logging
import math

import numpy as np

from ..proto import caffe_pb2

log = logging.getLogger("pyskim")

_CONV = caffe_pb2.ConvolutionParameter
_IP = caffe_pb2.InnerProductParameter
DENSE, SCONV, CCNMM, SPMDM = "dense", "sparse", "ccnmm", "spmdm"
CONV_MODE_NAMES = {v: k for k, v in _CONV.ConvMode.items()}
GEMM_MODE_NAMES = {v: k for k, v in _IP.GemmMode.items()}
_USED_NAMES = {("conv", DENSE): "LOWERED_GEMM", ("conv", SCONV): "DIRECT_SCONV",
               ("conv", CCNMM): "LOWERED_CCNMM", ("fc", DENSE): "GEMM", ("fc", SPMDM): "SPMDM"}
CONV_TYPES = ("Convolution", "CONVOLUTION", "ConvolutionReLU", "ConvolutionReLUPool",
              "ConvolutionReLUPoolLRN", "Winograd", "MKLConvolution")
IP_TYPES = ("InnerProduct", "INNER_PRODUCT", "InnerProductReLUDropout")
#: AUTO's shortcut: at least this dense (and with few all-zero columns) runs dense without the model.
AUTO_DENSE_DENSITY = 0.5
SAMPLES = 64
COL_BUFFER_BYTES = 64 << 20
_ATTR = "_sparse_modes"


def _fingerprint(flat):
    bits = flat.view(np.uint32)
    return int(bits.sum(dtype=np.uint64)), int(bits[1::7].sum(dtype=np.uint64)), bits.size


def _weights_of(blob):
    """``blob``'s data without counting as a hand-out (see :class:`_WeightWatch`)."""
    return blob._data.array[:blob.count].reshape(blob.shape)


class _WeightWatch:
    """Notices changes of a weight blob cheaply (see the module docstring)."""

    def __init__(self):
        self.buffer = None
        self.version = -1
        self.fingerprint = None
        self.index = self.sample = None

    def reset(self):
        self.buffer = None

    def stale(self, blob):
        buf = blob._data
        if buf is not self.buffer:
            return True
        flat = buf.array[:blob.count]
        if buf.version != self.version:
            if _fingerprint(flat) != self.fingerprint:
                return True
            self.version = buf.version
        return flat.take(self.index).tobytes() != self.sample     # bitwise: NaN and -0.0 safe

    def record(self, blob):
        buf = blob._data
        flat = buf.array[:blob.count]
        self.buffer, self.version, self.fingerprint = buf, buf.version, _fingerprint(flat)
        self.index = np.unique(np.linspace(0, max(flat.size - 1, 0), min(flat.size, SAMPLES)).astype(np.intp))
        self.sample = flat.take(self.index).tobytes()


class _ReluLink:
    """Set by the producer when its sparse kernel applied the following in-place ReLU."""

    __slots__ = ("applied", "relu_name")

    def __init__(self, relu_name):
        self.applied = False
        self.relu_name = relu_name


class _Engine:
    kind = None

    def __init__(self, layer):
        self.layer = layer
        self.watch = _WeightWatch()
        self.relu = None
        self.last_mode = None
        self.last_shape = None
        self.density = 1.0
        self._warned = set()
        self._auto = {}

    def invalidate(self):
        self.watch.reset()

    def refresh(self):
        """Re-derive everything from ``blobs[0]`` if it changed; True when it did."""
        blob = self.layer.blobs[0]
        if not self.watch.stale(blob):
            return False
        w = _weights_of(blob)
        self.density = np.count_nonzero(w) / max(w.size, 1)
        self._rebuild(w)
        self._auto.clear()
        self.watch.record(blob)
        return True

    def fallback(self, requested, reason, used):
        key = (requested, reason)
        if key not in self._warned:
            self._warned.add(key)
            log.warning("layer '%s': %s %s; falling back to %s", self.layer.name, requested, reason, used)

    def bias(self):
        return self.layer.blobs[1].data if len(self.layer.blobs) > 1 else None

    def finish(self, used, relu_applied=False):
        self.last_mode = used
        if self.relu is not None:
            self.relu.applied = relu_applied

    def auto(self, shape, candidates, column_density=None):
        from ..perf import model as perfmodel
        if self.density >= AUTO_DENSE_DENSITY and (column_density is None or column_density >= 0.9):
            return DENSE
        profile = perfmodel.get_profile()
        key = (shape, candidates, id(profile))
        choice = self._auto.get(key)
        if choice is None:
            choice = perfmodel.choose(shape, self.density, profile, column_density, candidates)
            self._auto[key] = choice
        return choice


class ConvEngine(_Engine):
    """conv_mode dispatch of one ConvolutionLayer."""

    kind = "conv"

    def __init__(self, layer):
        super().__init__(layer)
        self._geometry = {}
        self._csr = None
        self._cc = None
        self.column_density = 1.0

    def _rebuild(self, w):
        self._csr = None
        g = self.layer.param.convolution_param.group
        lowered = w.reshape(g, w.shape[0] // g, -1)
        keep = [np.flatnonzero(np.any(lowered[i] != 0, axis=0)) for i in range(g)]
        k = lowered.shape[2]
        self.column_density = sum(len(c) for c in keep) / max(g * k, 1)
        rows = np.concatenate([c + i * k for i, c in enumerate(keep)]).astype(np.intp)
        bounds = np.cumsum([0] + [len(c) for c in keep])
        weights = [np.ascontiguousarray(lowered[i][:, c]) for i, c in enumerate(keep)]
        self._cc = (rows, bounds, weights)

    def geometry(self, bottom0):
        key = bottom0.num_axes
        geo = self._geometry.get(key)
        if geo is None:
            from ..layers.convolution import conv_geometry
            cp = self.layer.param.convolution_param
            axis = bottom0.canonical_axis(cp.axis)
            geo = (axis,) + conv_geometry(self.layer.name, cp, bottom0.num_axes - axis - 1)
            self._geometry[key] = geo
        return geo

    def shape(self, bottom0):
        """:class:`pyskim.perf.model.ConvShape` of this layer on ``bottom0`` (2-D only, else None)."""
        from ..perf.model import ConvShape
        axis, kernel, stride, pad, dilation = self.geometry(bottom0)
        if len(kernel) != 2:
            return None
        cp = self.layer.param.convolution_param
        s = bottom0.shape
        return ConvShape(batch=bottom0.count_range(0, axis), channels=s[axis], height=s[axis + 1],
                         width=s[axis + 2], num_output=cp.num_output, kernel=kernel, stride=stride, pad=pad,
                         dilation=dilation, group=cp.group)

    def resolve(self, mode, bottom0):
        two_d = len(self.geometry(bottom0)[1]) == 2
        if mode in (_CONV.LOWERED_GEMM, _CONV.DIRECT_DCONV):
            return DENSE
        if mode == _CONV.DIRECT_SCONV:
            if not two_d:
                spatial = bottom0.num_axes - self.geometry(bottom0)[0] - 1
                self.fallback("conv_mode DIRECT_SCONV", f"cannot run a {spatial}-D convolution (direct sparse "
                              "convolution is 2-D only)", "LOWERED_GEMM")
                return DENSE
            return SCONV
        if mode == _CONV.LOWERED_CCNMM:
            return CCNMM
        if mode == _CONV.AUTO:
            self.refresh()
            if not two_d:
                return CCNMM if self.column_density < 0.9 else DENSE
            return self.auto(self.shape(bottom0), (DENSE, SCONV, CCNMM), self.column_density)
        self.fallback(f"conv_mode {mode}", "is unknown", "LOWERED_GEMM")
        return DENSE

    def forward(self, mode, bottom, top):
        used = self.resolve(mode, bottom[0])
        self.last_shape = tuple(bottom[0].shape)
        if used == SCONV:
            used = self._sconv(bottom, top)
        elif used == CCNMM:
            self._ccnmm(bottom, top)
        if used == DENSE:
            self.finish(DENSE)
            return False
        return True

    def _csr_for(self, in_hw, pad, dilation):
        from ..kernels.csr import pack_conv_weights
        self.refresh()
        csr = self._csr
        if csr is None or csr.input_hw != in_hw:
            cp = self.layer.param.convolution_param
            csr = self._csr = pack_conv_weights(_weights_of(self.layer.blobs[0]), cp.group, in_hw, pad, dilation)
        return csr

    def _sconv(self, bottom, top):
        from ..kernels.dense import KernelArgumentError
        from ..kernels.sparse import sparse_conv_forward
        axis, _, stride, pad, dilation = self.geometry(bottom[0])
        b0 = bottom[0]
        in_hw = tuple(b0.shape[axis + 1:])
        try:
            csr = self._csr_for(in_hw, pad, dilation)
        except KernelArgumentError as e:
            self.fallback("conv_mode DIRECT_SCONV", f"cannot run this input ({e})", "LOWERED_GEMM")
            return DENSE
        relu = self.relu is not None
        bias = self.bias()
        num, channels = b0.count_range(0, axis), b0.shape[axis]
        for b, t in zip(bottom, top):
            out_hw = tuple(t.shape[axis + 1:])
            x = b.data.reshape(num, channels, *in_hw)
            y = t.data.reshape(num, t.shape[axis], *out_hw)
            if np.may_share_memory(x, y):
                y[...] = sparse_conv_forward(x, csr, bias, stride, pad, dilation, out_hw, relu=relu)
            else:
                sparse_conv_forward(x, csr, bias, stride, pad, dilation, out_hw, relu=relu, out=y)
        self.finish(SCONV, relu)
        return SCONV

    def _ccnmm(self, bottom, top):
        self.refresh()
        layer = self.layer
        rows, bounds, weights = self._cc
        axis = self.geometry(bottom[0])[0]
        lowering = layer._lowering
        g = len(weights)
        b0 = bottom[0]
        num, channels = b0.count_range(0, axis), b0.shape[axis]
        in_spatial = tuple(b0.shape[axis + 1:])
        kdim = channels * math.prod(lowering.kernel)
        bias = self.bias()
        for b, t in zip(bottom, top):
            positions = math.prod(t.shape[axis + 1:])
            x = b.data.reshape((num, channels) + in_spatial)
            y = t.data.reshape(num, t.shape[axis], positions)
            ocg = y.shape[1] // g
            chunk = max(1, min(num, COL_BUFFER_BYTES // max(kdim * positions * 4, 1)))
            for s in range(0, num, chunk):
                e = min(num, s + chunk)
                if lowering.identity:
                    cols = x[s:e].reshape(e - s, kdim, positions)
                else:
                    cols = np.empty((e - s, kdim, positions), np.float32)
                    lowering.lower(x[s:e], cols)
                taken = np.take(cols, rows, axis=1)
                for i in range(g):
                    block = y[s:e, i * ocg:(i + 1) * ocg]
                    if bounds[i + 1] > bounds[i]:
                        np.matmul(weights[i], taken[:, bounds[i]:bounds[i + 1]], out=block)
                    else:
                        block[...] = 0
            if bias is not None:
                y += bias[:, None]
        self.finish(CCNMM)


class FcEngine(_Engine):
    """gemm_mode dispatch of one InnerProductLayer."""

    kind = "fc"

    def __init__(self, layer):
        super().__init__(layer)
        self._csr = None

    def _rebuild(self, w):
        self._csr = None

    def shape(self, bottom0=None):
        from ..perf.model import FcShape
        layer = self.layer
        return FcShape(batch=getattr(layer, "M", 1), num_input=layer.K, num_output=layer.num_output)

    def resolve(self, mode):
        if mode == _IP.GEMM:
            return DENSE
        if mode == _IP.SPMDM:
            return SPMDM
        if mode == _IP.AUTO:
            self.refresh()
            return SPMDM if self.auto(self.shape(), (DENSE, SCONV)) == SCONV else DENSE
        name = GEMM_MODE_NAMES.get(mode, str(mode))
        self.fallback(f"gemm_mode {name}", "is not implemented" if name == "SPGEMM" else "is unknown", "GEMM")
        return DENSE

    def forward(self, mode, bottom, top):
        from ..kernels.csr import pack_fc_weights
        from ..kernels.sparse import sparse_fc_forward
        used = self.resolve(mode)
        layer = self.layer
        self.last_shape = tuple(bottom[0].shape)
        if used == DENSE:
            self.finish(DENSE)
            return False
        self.refresh()
        if self._csr is None:
            w = _weights_of(layer.blobs[0])
            self._csr = pack_fc_weights(w.T if layer.transpose else w)
        relu = self.relu is not None
        x = bottom[0].data.reshape(layer.M, layer.K)
        y = top[0].data.reshape(layer.M, layer.num_output)
        bias = self.bias() if layer.bias_term else None
        if np.may_share_memory(x, y):
            y[...] = sparse_fc_forward(x, self._csr, bias, relu=relu)
        else:
            sparse_fc_forward(x, self._csr, bias, relu=relu, out=y)
        self.finish(SPMDM, relu)
        return True


def _engine(layer, cls):
    engine = layer.__dict__.get(_ATTR)
    if engine is None:
        engine = cls(layer)
        setattr(layer, _ATTR, engine)
    return engine


# -- hooks called by the layers ----------------------------------------------------------------------

def conv_weights_changed(layer):
    """``BaseConvolutionLayer.weights_changed``: drop the packed weights (repacked at next use).
    A Deconvolution runs dense in every conv_mode (one warning when it asks for another)."""
    engine = layer.__dict__.get(_ATTR)
    if engine is not None:
        engine.invalidate()
    mode = layer.param.convolution_param.conv_mode
    if getattr(layer, "reverse", False) and mode not in (_CONV.LOWERED_GEMM, _CONV.DIRECT_DCONV) \
            and not layer.__dict__.get("_conv_mode_warned"):
        layer._conv_mode_warned = True
        log.warning("layer '%s': conv_mode %s is not available for %s; falling back to LOWERED_GEMM", layer.name,
                    CONV_MODE_NAMES.get(mode, mode), layer.type)


def conv_forward(layer, bottom, top):
    """Run the forward of a Convolution in its conv_mode; False means "run the dense path"."""
    mode = layer.param.convolution_param.conv_mode
    engine = layer.__dict__.get(_ATTR)
    if engine is None:
        if mode == _CONV.LOWERED_GEMM:
            return False
        engine = _engine(layer, ConvEngine)
    return engine.forward(mode, bottom, top)


ip_weights_changed = conv_weights_changed


def ip_forward(layer, bottom, top):
    """Run the forward of an InnerProduct in its gemm_mode; False means "run the dense GEMM"."""
    mode = layer.param.inner_product_param.gemm_mode
    engine = layer.__dict__.get(_ATTR)
    if engine is None:
        if mode == _IP.GEMM:
            return False
        engine = _engine(layer, FcEngine)
    return engine.forward(mode, bottom, top)


# -- net-level helpers -----------------------------------------------------------------------------

def _requested(layer):
    """(kind, requested mode value) of a Convolution / InnerProduct layer, else None."""
    from ..layers.convolution import ConvolutionLayer
    from ..layers.inner_product import InnerProductLayer
    if isinstance(layer, ConvolutionLayer):
        return "conv", layer.param.convolution_param.conv_mode
    if isinstance(layer, InnerProductLayer):
        return "fc", layer.param.inner_product_param.gemm_mode
    return None


def link_relu(producer, relu):
    """Let ``producer``'s sparse kernel apply the in-place ``relu`` (see the module docstring)."""
    from ..layers.inner_product import InnerProductLayer
    if relu.param.relu_param.negative_slope != 0 or _ATTR in relu.__dict__:
        return False
    engine = _engine(producer, FcEngine if isinstance(producer, InnerProductLayer) else ConvEngine)
    link = engine.relu = _ReluLink(relu.name)
    original = relu.forward_cpu

    def forward_cpu(bottom, top):
        if link.applied:
            link.applied = False
            return
        original(bottom, top)
    relu.forward_cpu = forward_cpu
    relu.__dict__[_ATTR] = link
    return True


def fuse_relus(net):
    """Link every Convolution / InnerProduct in a non-dense mode to the in-place ReLU that consumes
    its top next (also inside the fused SkimCaffe types); returns the (producer, relu) name pairs."""
    from ..layers.fused import FusedLayer
    from ..layers.neuron import ReLULayer
    plain = (_CONV.LOWERED_GEMM, _CONV.DIRECT_DCONV)     # GEMM == LOWERED_GEMM == 0
    pairs = []
    for i, layer in enumerate(net.layers):
        if isinstance(layer, FusedLayer):
            stages = getattr(layer, "_layers", [])
            vectors = getattr(layer, "_vectors", [])
            req = _requested(stages[0]) if stages else None
            if req and req[1] not in plain and len(stages) > 1 and isinstance(stages[1], ReLULayer) \
                    and vectors[1][0][0] is vectors[1][1][0] and link_relu(stages[0], stages[1]):
                pairs.append((layer.name, stages[1].name))
            continue
        req = _requested(layer)
        if req is None or req[1] in plain or len(net._top_ids[i]) != 1:
            continue
        top = net._top_ids[i][0]
        j = next((j for j in range(i + 1, len(net.layers)) if top in net._bottom_ids[j]), None)
        if j is not None and isinstance(net.layers[j], ReLULayer) and net._bottom_ids[j] == [top] \
                and net._top_ids[j] == [top] and link_relu(layer, net.layers[j]):
            pairs.append((layer.name, net.layers[j].name))
    return pairs


def apply_mode(net_param, mode):
    """Set the conv_mode / gemm_mode of every convolution and inner-product layer of a NetParameter:
    ``"auto"`` sets AUTO where the prototxt set no mode; ``"sparse"`` sets DIRECT_SCONV / SPMDM and
    ``"dense"`` LOWERED_GEMM / GEMM on every such layer. Returns the names of the layers changed."""
    if mode not in ("auto", "sparse", "dense"):
        raise ValueError(f"mode must be dense, sparse or auto, got {mode!r}")
    conv = {"auto": _CONV.AUTO, "sparse": _CONV.DIRECT_SCONV, "dense": _CONV.LOWERED_GEMM}[mode]
    fc = {"auto": _IP.AUTO, "sparse": _IP.SPMDM, "dense": _IP.GEMM}[mode]
    changed = []
    for lp in net_param.layer:
        if lp.type in CONV_TYPES:
            p, field, value = lp.convolution_param, "conv_mode", conv
        elif lp.type in IP_TYPES:
            p, field, value = lp.inner_product_param, "gemm_mode", fc
        else:
            continue
        if mode == "auto" and p.HasField(field):
            continue
        setattr(p, field, value)
        changed.append(lp.name)
    return changed


def producer_of(layer):
    """The Convolution / InnerProduct doing ``layer``'s product (itself, or a fused type's first
    stage), or None."""
    if _requested(layer):
        return layer
    stages = getattr(layer, "_layers", None)
    if stages and _requested(stages[0]):
        return stages[0]
    return None


def describe(layer, bottom):
    """What ``layer`` (a Convolution, InnerProduct or fused type) ran in its last forward, as a
    dict: ``requested`` and ``used`` mode names, weight ``density``, ``flops`` (dense-equivalent),
    ``predicted`` seconds for the used mode (roofline model), and ``prediction`` (the model's
    :class:`~pyskim.perf.model.Prediction`); None for other layers."""
    from ..perf import model as perfmodel
    producer = producer_of(layer)
    if producer is None or not producer.blobs:
        return None
    kind, requested = _requested(producer)
    names = CONV_MODE_NAMES if kind == "conv" else GEMM_MODE_NAMES
    engine = producer.__dict__.get(_ATTR) or (ConvEngine if kind == "conv" else FcEngine)(producer)
    engine.refresh()
    used = engine.last_mode or DENSE
    bottom0 = bottom[0]
    shape = engine.shape(bottom0)
    info = {"requested": names.get(requested, str(requested)), "used": _USED_NAMES[(kind, used)],
            "density": engine.density, "flops": None, "predicted": None, "prediction": None}
    if shape is None:
        return info
    column_density = engine.column_density if kind == "conv" else None
    p = perfmodel.predict(shape, engine.density, column_density=column_density)
    info.update(flops=shape.flops, prediction=p,
                predicted={DENSE: p.dense, SCONV: p.sparse, SPMDM: p.sparse, CCNMM: p.ccnmm}[used])
    return info
