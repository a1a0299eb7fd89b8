"""Attaching the sparse engines to a built Net, ReLU fusion, and what a net's engines do together
(:func:`keep_dense_weights`, :func:`settle_auto_trials`).

:func:`attach_engines` runs after every Net build (:func:`pyskim.core.net.add_post_build_hook`), as
Caffe's layer factory picks an engine outside the layers: every Convolution / InnerProduct whose
conv_mode / gemm_mode is not plain dense, and the first stage of SkimCaffe's fused types, gets a
:class:`~.engine.ConvEngine` / :class:`~.engine.FcEngine` in its ``engine`` slot. A Deconvolution has
no sparse mode: it runs dense, with one warning when it asks for another.

ReLU fusion. An engine is then linked to the ReLU (``negative_slope: 0``) that consumes its top next,
in place, directly or inside a fused type: the ReLU's ``fusion`` is a
:class:`~pyskim.layers.neuron.ReLUFusion` that is set whenever the layer's product applied
``max(x, 0)`` in its store (the sparse kernels, and a Convolution's whole-batch dense product when
its mode resolves to dense), and the ReLU's forward then does nothing; otherwise (an InnerProduct
run dense, a Convolution on its per-image path) the ReLU runs as usual. The values are identical,
and backward is unchanged (an in-place ReLU's backward reads its output). Caveat:
``net.forward(end=<conv>)`` then shows the conv's top after the ReLU; a plain LOWERED_GEMM / GEMM
layer has no engine and no link, so Caffe's own nets behave as in Caffe. ``net.fused_relus`` lists
the linked (producer, ReLU) layer names.

The dense weights. In a net that runs no backward (no layer needs one: a deploy prototxt, a net
without a loss), the engines release the dense array of the weights while their sparse structures
hold them (:attr:`~.engine._Engine.drops_dense`), packing right after the build and after every load
(:meth:`~.engine._Engine.settle`). :func:`keep_dense_weights` turns that off for a net, or on for one
that has a loss but is used for inference only.
"""
import logging

from ..layers.convolution import DeconvolutionLayer
from ..layers.fused import FusedLayer
from ..layers.neuron import ReLUFusion, ReLULayer
from .engine import ConvEngine, FcEngine
from .modes import CONV, CONV_MODE_NAMES, IP, is_plain, requested_mode
from .trial import auto_trials_enabled

log = logging.getLogger("pyskim")


def attach_engine(layer, bottom=None):
    """Put a new engine in the ``engine`` slot of a Convolution / InnerProduct whose requested mode
    is not plain dense, and return it; None (slot untouched) for any other layer. ``bottom``: the
    blobs the layer reads (lets the engine pack before the first forward)."""
    requested = requested_mode(layer)
    if requested is None or is_plain(*requested):
        return None
    layer.engine = (ConvEngine if requested[0] == "conv" else FcEngine)(layer, bottom)
    return layer.engine


def _engines(net):
    """The engines attached to ``net``'s layers (a fused type's in its first stage)."""
    for layer in net.layers:
        stages = layer.stages if isinstance(layer, FusedLayer) else [layer]
        engine = getattr(stages[0], "engine", None) if stages else None
        if engine is not None:
            yield engine


def keep_dense_weights(net, keep=True):
    """Whether the sparse engines of ``net`` keep the dense array of their weights beside the sparse
    structures (``keep``), or release it while the structures hold the weights (``keep=False``: the
    default for nets that run no backward). Released weights come back, bit for bit, when read."""
    for engine in _engines(net):
        engine.drops_dense = not keep
        if keep:
            engine.layer.blobs[0].restore_data()
        else:
            engine.settle()


def settle_auto_trials(net, max_forwards=16):
    """Forward ``net`` (:meth:`~pyskim.core.net.Net.forward_prefilled`: the inputs as they are) once,
    then again while an AUTO engine still has a close call to time (:mod:`.trial`), at most
    ``max_forwards`` forwards in all; returns how many ran (none in a net without AUTO layers, or
    with trials off). For timing what AUTO settles on."""
    auto = [engine for engine in _engines(net) if requested_mode(engine.layer)[1] in (CONV.AUTO, IP.AUTO)]
    if not auto or not auto_trials_enabled():
        return 0
    for count in range(1, max_forwards + 1):
        net.forward_prefilled()
        if not any(engine.trial_running for engine in auto):
            return count
    return max_forwards


def link_relu(engine, relu):
    """Let ``engine``'s sparse kernel apply ``relu`` (an in-place ReLU right after its layer); False
    for a leaky ReLU or one already linked."""
    if relu.negative_slope != 0 or relu.fusion is not None:
        return False
    relu.fusion = engine.relu = ReLUFusion()
    return True


def _next_in_place_relu(net, i):
    """The ReLU that consumes layer ``i``'s only top next, in place, or None."""
    tops = net.top_ids(i)
    if len(tops) != 1:
        return None
    consumers = (j for j in range(i + 1, len(net.layers)) if tops[0] in net.bottom_ids(j))
    j = next(consumers, None)
    if j is None or not isinstance(net.layers[j], ReLULayer):
        return None
    return net.layers[j] if net.bottom_ids(j) == tops and net.top_ids(j) == tops else None


def _fused_relu(layer):
    """The in-place ReLU stage right after a fused layer's first stage, or None."""
    stages, io = layer.stages, layer.stage_io
    if len(stages) < 2 or not isinstance(stages[1], ReLULayer):
        return None
    bottoms, tops = io[1]
    return stages[1] if bottoms[0] is tops[0] else None


def _warn_deconvolution(layer):
    mode = layer.param.convolution_param.conv_mode
    if not is_plain("conv", mode):
        log.warning("layer '%s': conv_mode %s is not available for %s; falling back to LOWERED_GEMM", layer.name,
                    CONV_MODE_NAMES.get(mode, mode), layer.type)


def attach_engines(net):
    """The post-build hook: attach engines (see the module docstring), link the ReLUs they may apply,
    set ``net.fused_relus`` to the linked (producer, ReLU) layer names, and in a net that runs no
    backward let the engines release the dense weights."""
    pairs = []
    for i, layer in enumerate(net.layers):
        if isinstance(layer, DeconvolutionLayer):
            _warn_deconvolution(layer)
            continue
        if isinstance(layer, FusedLayer):
            engine = attach_engine(layer.stages[0], layer.stage_io[0][0]) if layer.stages else None
            relu = _fused_relu(layer) if engine is not None else None
        else:
            engine = attach_engine(layer, net.bottom_vec(i))
            relu = _next_in_place_relu(net, i) if engine is not None else None
        if relu is not None and link_relu(engine, relu):
            pairs.append((layer.name, relu.name))
    net.fused_relus = pairs
    if not any(net.layer_need_backward(i) for i in range(len(net.layers))):
        keep_dense_weights(net, keep=False)
