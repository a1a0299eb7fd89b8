"""SkimCaffe's ``conv_mode`` / ``gemm_mode``: the mode names, which layers have one, AUTO's decision
rule (:func:`decide_mode`, the one rule both the engine and the GSL planner use) and
:func:`apply_mode` for NetParameters.

Convolution (``convolution_param.conv_mode``; also the fused ``ConvolutionReLU*`` types, whose first
stage is a Convolution with the same parameter): ``LOWERED_GEMM`` (default, pyskim's dense path),
``DIRECT_SCONV`` (direct sparse convolution), ``LOWERED_CCNMM`` (GEMM over the lowered weight columns
that are not all zero), ``DIRECT_DCONV`` (SkimCaffe's libxsmm dense convolution; pyskim's dense path)
and ``AUTO`` (pyskim extension: :func:`decide_mode`). InnerProduct (``inner_product_param.gemm_mode``;
also ``InnerProductReLUDropout``): ``GEMM`` (dense), ``SPMDM`` (CSR weights x dense activations),
``SPGEMM`` (never implemented upstream: GEMM with one warning) and ``AUTO``.
"""
from ..layers.convolution import ConvolutionLayer
from ..layers.fused import FusedLayer
from ..layers.inner_product import InnerProductLayer
from ..perf.model import fastest, predicted_times
from ..proto import caffe_pb2

CONV = caffe_pb2.ConvolutionParameter
IP = caffe_pb2.InnerProductParameter
#: What a layer ran: the dense path, DIRECT_SCONV, LOWERED_CCNMM or SPMDM.
DENSE, SCONV, CCNMM, SPMDM = "dense", "sparse", "ccnmm", "spmdm"
CONV_MODE_NAMES = {v: k for k, v in CONV.ConvMode.items()}
GEMM_MODE_NAMES = {v: k for k, v in IP.GemmMode.items()}
#: The mode name of what ran, per (kind, used).
USED_NAMES = {("conv", DENSE): "LOWERED_GEMM", ("conv", SCONV): "DIRECT_SCONV", ("conv", CCNMM): "LOWERED_CCNMM",
              ("fc", DENSE): "GEMM", ("fc", SPMDM): "SPMDM"}
#: The requested modes that run the dense path without an engine.
PLAIN_CONV_MODES = (CONV.LOWERED_GEMM, CONV.DIRECT_DCONV)
PLAIN_GEMM_MODES = (IP.GEMM,)
#: Layer types whose parameter carries a conv_mode / gemm_mode (:func:`apply_mode`).
CONV_TYPES = ("Convolution", "CONVOLUTION", "ConvolutionReLU", "ConvolutionReLUPool", "ConvolutionReLUPoolLRN",
              "Winograd", "MKLConvolution")
IP_TYPES = ("InnerProduct", "INNER_PRODUCT", "InnerProductReLUDropout")
#: A layer at least this dense, with at least AUTO_DENSE_COLUMN_DENSITY of its lowered weight columns
#: not all zero, is "mostly dense": when the model picks dense for it, AUTO times no other mode.
AUTO_DENSE_DENSITY = 0.5
AUTO_DENSE_COLUMN_DENSITY = 0.9


def _mostly_dense(density, column_density):
    """Whether a layer's weights are mostly dense (see :func:`auto_candidates`)."""
    return density >= AUTO_DENSE_DENSITY and (column_density is None or column_density >= AUTO_DENSE_COLUMN_DENSITY)


def decide_mode(shape, density, column_density, profile):
    """AUTO's choice for one layer: :data:`DENSE`, :data:`SCONV` (DIRECT_SCONV, or SPMDM for an
    InnerProduct) or :data:`CCNMM` (LOWERED_CCNMM).

    ``shape``: a :class:`~pyskim.perf.model.ConvShape` or :class:`~pyskim.perf.model.FcShape`, or None
    for a convolution with other than two spatial axes (no model: LOWERED_CCNMM when fewer than
    ``AUTO_DENSE_COLUMN_DENSITY`` of the lowered columns are nonzero, else dense). ``density``: the
    fraction of nonzero weights; ``column_density``: the fraction of lowered weight columns that are
    not all zero (None: not known, or an InnerProduct). The roofline model on ``profile`` picks the
    fastest of dense, sparse and (convolutions) CCNMM, ties going to dense, at every density: a small
    layer whose dense product packs more than it computes (LeNet's conv1, 20 output channels of one
    input channel) runs faster sparse even at density 0.6."""
    if shape is None:
        return CCNMM if column_density < AUTO_DENSE_COLUMN_DENSITY else DENSE
    return fastest(predicted_times(shape, density, profile, column_density))


def auto_candidates(shape, density, column_density, profile, margin):
    """AUTO's modes worth timing on the machine: :func:`decide_mode`'s pick first, then every other mode
    the model predicts at most ``margin`` times slower than it, fastest first. One mode where the rule
    needs no model (``shape`` None), where the model sees no close call, and where it picks dense for
    a mostly dense layer (at least ``AUTO_DENSE_DENSITY`` of nonzero weights, ``AUTO_DENSE_COLUMN_DENSITY``
    of nonzero columns): timing a sparse mode would pack its dense weights into sparse structures up
    to twice their size."""
    if shape is None:
        return (decide_mode(shape, density, column_density, profile),)
    times = predicted_times(shape, density, profile, column_density)
    pick = fastest(times)
    if pick == DENSE and _mostly_dense(density, column_density):
        return (DENSE,)
    others = sorted((m for m in times if m != pick and times[m] <= margin * times[pick]), key=times.get)
    return (pick, *others)


def requested_mode(layer):
    """``("conv", conv_mode)`` of a Convolution, ``("fc", gemm_mode)`` of an InnerProduct, else None
    (a Deconvolution has no sparse mode)."""
    if isinstance(layer, ConvolutionLayer):
        return "conv", layer.param.convolution_param.conv_mode
    if isinstance(layer, InnerProductLayer):
        return "fc", layer.param.inner_product_param.gemm_mode
    return None


def product_layer(layer):
    """The Convolution / InnerProduct computing ``layer``'s product: the layer itself, or a fused
    SkimCaffe type's first stage; None for other layers."""
    if isinstance(layer, FusedLayer):
        stages = layer.stages
        layer = stages[0] if stages else None
    return layer if requested_mode(layer) is not None else None


def is_plain(kind, mode):
    """Whether the requested ``mode`` of a ``kind`` ("conv" / "fc") layer is plain dense."""
    return mode in (PLAIN_CONV_MODES if kind == "conv" else PLAIN_GEMM_MODES)


def apply_mode(net_param, mode):
    """Set the conv_mode / gemm_mode of every convolution and inner-product layer of a NetParameter:
    ``"auto"`` sets AUTO where the prototxt set no mode; ``"sparse"`` sets DIRECT_SCONV / SPMDM and
    ``"dense"`` LOWERED_GEMM / GEMM on every such layer. Returns the names of the layers changed."""
    if mode not in ("auto", "sparse", "dense"):
        raise ValueError(f"mode must be dense, sparse or auto, got {mode!r}")
    conv = {"auto": CONV.AUTO, "sparse": CONV.DIRECT_SCONV, "dense": CONV.LOWERED_GEMM}[mode]
    fc = {"auto": IP.AUTO, "sparse": IP.SPMDM, "dense": IP.GEMM}[mode]
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
