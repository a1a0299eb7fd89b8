"""Draw a NetParameter as a graph: pycaffe's ``caffe.draw`` (BVLC ``python/caffe/draw.py``).

Layers become record nodes labelled with name, type and (for Convolution, Deconvolution and Pooling)
kernel size, stride and pad, and optionally the learning-rate multipliers; blobs become octagons;
in-place layers are drawn green. ``phase`` keeps only the layers a phase includes.

Needs ``pydot`` (``pip install pydot``, or ``pip install pyskim[draw]``) to build the graph, and
Graphviz's ``dot`` program on PATH to render images. A ``.raw`` file name writes the graph's DOT
source without Graphviz. Old V1 nets (``layers`` instead of ``layer``) are upgraded before drawing.
"""
import shutil

from ..errors import PyskimError
from ..io.upgrade import upgrade_net_as_needed
from ..proto import caffe_pb2

__all__ = ["draw_net", "draw_net_to_file", "get_pydot_graph"]

LAYER_STYLE_DEFAULT = {"shape": "record", "fillcolor": "#6495ED", "style": "filled"}
NEURON_LAYER_STYLE = {"shape": "record", "fillcolor": "#90EE90", "style": "filled"}
BLOB_STYLE = {"shape": "octagon", "fillcolor": "#E0E0E0", "style": "filled"}
_LEARNING_TYPES = ("Convolution", "Deconvolution", "InnerProduct")


def _pydot():
    try:
        import pydot
    except ImportError:
        raise PyskimError("pyskim.pycaffe.draw needs pydot: pip install pydot (or pip install 'pyskim[draw]'); "
                          "rendering images also needs Graphviz's 'dot' program (e.g. apt-get install "
                          "graphviz)") from None
    return pydot


def get_pooling_types_dict():
    """Pooling method number -> name, e.g. ``{0: 'MAX', 1: 'AVE', 2: 'STOCHASTIC'}``."""
    return {v.number: k for k, v in caffe_pb2.PoolingParameter.PoolMethod.DESCRIPTOR.values_by_name.items()}


def get_edge_label(layer):
    """Label of a layer's top edges: batch size of Data layers, num_output of Convolution,
    Deconvolution and InnerProduct, empty otherwise."""
    if layer.type == "Data":
        return f"Batch {layer.data_param.batch_size}"
    if layer.type in ("Convolution", "Deconvolution"):
        return str(layer.convolution_param.num_output)
    if layer.type == "InnerProduct":
        return str(layer.inner_product_param.num_output)
    return '""'


def get_layer_lr_mult(layer):
    """(weights, bias) learning-rate multipliers of a Convolution, Deconvolution or InnerProduct layer."""
    if layer.type not in _LEARNING_TYPES:
        raise ValueError(f"{layer.type} layers do not have a learning rate multiplier")
    specs = list(layer.param)
    if len(specs) > 2:
        raise ValueError("Could not parse the learning rate multiplier")
    mults = [spec.lr_mult for spec in specs] + [1.0] * (2 - len(specs))
    return tuple(mults)


def get_layer_label(layer, rankdir, display_lrm=False):
    """Quoted node label: name, type, spatial parameters, optionally ``lr mult``; words are separated
    by spaces for vertical layouts (``TB``/``BT``) and by newlines otherwise."""
    separator = " " if rankdir in ("TB", "BT") else r"\n"
    parts = [layer.name]
    if layer.type == "Pooling":
        parts.append(f"({layer.type} {get_pooling_types_dict()[layer.pooling_param.pool]})")
    else:
        parts.append(f"({layer.type})")
    if layer.type in ("Convolution", "Deconvolution", "Pooling"):
        if layer.type == "Pooling":
            pp = layer.pooling_param
            kernel, stride, pad = pp.kernel_size, pp.stride, pp.pad
        else:
            cp = layer.convolution_param
            kernel = cp.kernel_size[0] if len(cp.kernel_size) else 1
            stride = cp.stride[0] if len(cp.stride) else 1
            pad = cp.pad[0] if len(cp.pad) else 0
        parts.append(separator.join([f"kernel size: {kernel}", f"stride: {stride}", f"pad: {pad}"]))
    if display_lrm and layer.type in _LEARNING_TYPES:
        lrm0, lrm1 = get_layer_lr_mult(layer)
        if lrm0 or lrm1:
            parts.append(f"lr mult: {lrm0:.1f}, {lrm1:.1f}")
    # The outer quotes keep Graphviz from parsing the colons.
    return f'"{separator.join(parts)}"'


def choose_color_by_layertype(layertype):
    """Fill colour of a layer node by type."""
    return {"Convolution": "#FF5050", "Deconvolution": "#FF5050", "Pooling": "#FF9900",
            "InnerProduct": "#CC33FF"}.get(layertype, "#6495ED")


def _included(layer, phase):
    if len(layer.include) and len(layer.exclude):
        raise ValueError(f"layer {layer.name} has both include and exclude specified.")
    included = not len(layer.include) or any(rule.phase == phase for rule in layer.include)
    return included and not any(rule.phase == phase for rule in layer.exclude)


def _layers_of(caffe_net):
    if not len(caffe_net.layer) and len(caffe_net.layers):
        upgraded = caffe_pb2.NetParameter()
        upgraded.CopyFrom(caffe_net)
        upgrade_net_as_needed(upgraded, caffe_net.name)
        return upgraded.layer
    return caffe_net.layer


def get_pydot_graph(caffe_net, rankdir="LR", label_edges=True, phase=None, display_lrm=False):
    """A ``pydot.Dot`` digraph of the NetParameter ``caffe_net``.

    ``phase`` (``caffe.TRAIN``/``caffe.TEST``) keeps only layers included in that phase, judged by
    their ``include``/``exclude`` phase rules; None keeps all. ``label_edges`` labels top edges with
    :func:`get_edge_label`.
    """
    pydot = _pydot()
    graph = pydot.Dot(caffe_net.name or "Net", graph_type="digraph", rankdir=rankdir)
    nodes, edges = {}, []
    for layer in _layers_of(caffe_net):
        if phase is not None and not _included(layer, phase):
            continue
        node_name = f"{layer.name}_{layer.type}"
        label = get_layer_label(layer, rankdir, display_lrm=display_lrm)
        if len(layer.bottom) == 1 and len(layer.top) == 1 and layer.bottom[0] == layer.top[0]:
            nodes[node_name] = pydot.Node(label, **NEURON_LAYER_STYLE)
        else:
            style = dict(LAYER_STYLE_DEFAULT, fillcolor=choose_color_by_layertype(layer.type))
            nodes[node_name] = pydot.Node(label, **style)
        for bottom in layer.bottom:
            nodes[bottom + "_blob"] = pydot.Node(bottom, **BLOB_STYLE)
            edges.append((bottom + "_blob", node_name, '""'))
        for top in layer.top:
            nodes[top + "_blob"] = pydot.Node(top)
            edges.append((node_name, top + "_blob", get_edge_label(layer) if label_edges else '""'))
    for node in nodes.values():
        graph.add_node(node)
    for src, dst, label in edges:
        graph.add_edge(pydot.Edge(nodes[src], nodes[dst], label=label))
    return graph


def draw_net(caffe_net, rankdir, ext="png", phase=None, display_lrm=False):
    """Render ``caffe_net`` with Graphviz and return the bytes of the image in format ``ext``
    (``'raw'`` returns the DOT source without running Graphviz)."""
    graph = get_pydot_graph(caffe_net, rankdir, phase=phase, display_lrm=display_lrm)
    if ext == "raw":
        return graph.to_string().encode()
    if shutil.which("dot") is None:
        raise PyskimError(f"drawing a net as '{ext}' needs Graphviz's 'dot' program on PATH (e.g. apt-get "
                          "install graphviz); a '.raw' file name writes the DOT source instead")
    return graph.create(format=ext)


def draw_net_to_file(caffe_net, filename, rankdir="LR", phase=None, display_lrm=False):
    """Draw ``caffe_net`` into ``filename``, in the format its extension names (``.png``, ``.svg``,
    ``.pdf``, ...; ``.raw`` writes the DOT source)."""
    filename = str(filename)
    ext = filename[filename.rfind(".") + 1:]
    data = draw_net(caffe_net, rankdir, ext, phase, display_lrm)
    with open(filename, "wb") as fid:
        fid.write(data)
