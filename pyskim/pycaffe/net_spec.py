"""Write nets in Python: pycaffe's ``caffe.net_spec`` (``layers`` as ``L``, ``params`` as ``P``, ``NetSpec``).

``L.Convolution(bottom, kernel_size=3, num_output=8)`` returns a :class:`Top`; a layer with ``ntop=k``
returns a tuple of ``k`` Tops (``ntop=0`` returns the :class:`Function` itself) and ``in_place=True``
makes the tops the bottoms. Other keywords fill ``<type>_param`` (found through the LayerParameter
descriptor: ``Convolution`` -> ``convolution_param``, ``Python`` -> ``python_param``) and fall back to
LayerParameter's own fields (``param=[dict(lr_mult=1)]``, ``include=dict(phase=0)``, ``loss_weight``);
keywords ending in ``param`` always go to the LayerParameter. Dicts become messages, lists repeated
fields, and a scalar given to a repeated field becomes a one-element list.

``P.Pooling.MAX`` is ``caffe_pb2.PoolingParameter.MAX``. :class:`NetSpec` attribute names become top
(and layer) names; :func:`to_proto` and ``NetSpec.to_proto`` name every other layer and top
``<Type><n>`` with one counter per type, visiting layers depth-first from the requested tops, exactly
as BVLC's ``net_spec.py`` does, so ``str(net_spec.to_proto())`` matches its output for the same calls.
"""
import importlib
import importlib.util
import sys
from collections import Counter, OrderedDict

from google.protobuf.message import Message

from ..proto import caffe_pb2

__all__ = ["Function", "NetSpec", "Top", "layers", "params", "to_proto"]


def param_name_dict():
    """Map each layer type to its ``*_param`` field stem, e.g. ``'InnerProduct': 'inner_product'``.

    Built from LayerParameter's ``*_param`` fields and their message types, as pycaffe does: the
    type name is the message name without ``Parameter`` (so ``transform_param`` maps
    ``'Transformation'``, and types without a message of their own, e.g. Deconvolution, map nothing).
    """
    names = {}
    for field in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        if field.name.endswith("_param") and field.message_type is not None:
            type_name = field.message_type.name
            if type_name.endswith("Parameter"):
                names[type_name[:-len("Parameter")]] = field.name[:-len("_param")]
    return names


_param_names = param_name_dict()


def assign_proto(proto, name, val):
    """Set field ``name`` of message ``proto`` from a Python value, recursively.

    Lists (and tuples) fill repeated fields, items that are dicts adding sub-messages; dicts fill
    message fields; protobuf messages are copied in; anything else is assigned. A non-list value
    for a repeated field is treated as a one-element list. Raises AttributeError for unknown fields.
    """
    field = getattr(proto, name)
    is_repeated = hasattr(field, "extend")
    if is_repeated and not isinstance(val, (list, tuple)):
        val = [val]
    if isinstance(val, (list, tuple)):
        if not is_repeated:
            raise AttributeError(f"field '{name}' of {type(proto).__name__} is not repeated")
        for item in val:
            if isinstance(item, dict):
                sub = field.add()
                for k, v in item.items():
                    assign_proto(sub, k, v)
            elif isinstance(item, Message):
                field.add().CopyFrom(item)
            else:
                field.append(item)
    elif isinstance(val, dict):
        for k, v in val.items():
            assign_proto(field, k, v)
    elif isinstance(val, Message):
        field.CopyFrom(val)
    else:
        setattr(proto, name, val)


def to_proto(*tops):
    """NetParameter holding every layer needed to compute ``tops``, all auto-named ``<Type><n>``."""
    layers_ = OrderedDict()
    autonames = Counter()
    for top in tops:
        top.fn._to_proto(layers_, {}, autonames)
    net = caffe_pb2.NetParameter()
    net.layer.extend(layers_.values())
    return net


class Top:
    """One output blob of a layer: top ``n`` of :class:`Function` ``fn``."""

    def __init__(self, fn, n):
        self.fn = fn
        self.n = n

    def to_proto(self):
        """NetParameter of every layer needed to compute this top."""
        return to_proto(self)

    def _update(self, params):
        self.fn._update(params)

    def _to_proto(self, layers_, names, autonames):
        return self.fn._to_proto(layers_, names, autonames)

    def __repr__(self):
        return f"<Top {self.n} of {self.fn.type_name}>"


class Function:
    """A layer: its type, its input Tops and its keyword parameters (``ntop`` and ``in_place`` taken out)."""

    def __init__(self, type_name, inputs, params):
        self.type_name = type_name
        for index, inp in enumerate(inputs):
            if not isinstance(inp, Top):
                raise TypeError(f"{type_name} input {index} is not a Top (type is {type(inp)})")
        self.inputs = inputs
        self.params = dict(params)
        self.ntop = self.params.pop("ntop", 1)
        self.in_place = self.params.pop("in_place", False)
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def _get_name(self, names, autonames):
        """The layer name: the name of its first top, else ``<Type><n>`` for a top-less layer."""
        if self not in names:
            if self.ntop > 0:
                names[self] = self._get_top_name(self.tops[0], names, autonames)
            else:
                autonames[self.type_name] += 1
                names[self] = f"{self.type_name}{autonames[self.type_name]}"
        return names[self]

    def _get_top_name(self, top, names, autonames):
        if top not in names:
            autonames[top.fn.type_name] += 1
            names[top] = f"{top.fn.type_name}{autonames[top.fn.type_name]}"
        return names[top]

    def _update(self, params):
        self.params.update(params)

    def _to_proto(self, layers_, names, autonames):
        if self in layers_:
            return
        bottom_names = []
        for inp in self.inputs:
            inp._to_proto(layers_, names, autonames)
            bottom_names.append(layers_[inp.fn].top[inp.n])
        layer = caffe_pb2.LayerParameter()
        layer.type = self.type_name
        layer.bottom.extend(bottom_names)
        if self.in_place:
            layer.top.extend(layer.bottom)
        else:
            for top in self.tops:
                layer.top.append(self._get_top_name(top, names, autonames))
        layer.name = self._get_name(names, autonames)
        for key, value in self.params.items():
            self._assign(layer, key, value)
        layers_[self] = layer

    def _assign(self, layer, key, value):
        # '*param' keywords (param, convolution_param, ...) belong to the LayerParameter itself;
        # anything else goes to this type's *_param message when that has the field.
        if not key.endswith("param"):
            stem = _param_names.get(self.type_name)
            if stem is not None:
                try:
                    assign_proto(getattr(layer, stem + "_param"), key, value)
                    return
                except AttributeError:
                    pass
        try:
            assign_proto(layer, key, value)
        except AttributeError:
            where = f"{_param_names[self.type_name]}_param or " if self.type_name in _param_names else ""
            raise AttributeError(f"{self.type_name} layer: no field '{key}' in {where}LayerParameter") from None


class NetSpec:
    """Tops assigned as attributes (or items); ``to_proto()`` emits the layers computing them, using
    the attribute names as top names and as the names of the layers producing them."""

    def __init__(self):
        super().__setattr__("tops", OrderedDict())

    def __setattr__(self, name, value):
        self.tops[name] = value

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self.tops[name]
        except KeyError:
            raise AttributeError(f"NetSpec has no top '{name}'") from None

    def __delattr__(self, name):
        del self.tops[name]

    def __setitem__(self, key, value):
        self.tops[key] = value

    def __getitem__(self, key):
        return self.tops[key]

    def __delitem__(self, key):
        del self.tops[key]

    def __contains__(self, key):
        return key in self.tops

    def keys(self):
        return list(self.tops)

    def vals(self):
        return list(self.tops.values())

    def update(self, name, params):
        """Add keyword parameters to the layer producing top ``name``."""
        self.tops[name]._update(params)

    def to_proto(self):
        names = {value: key for key, value in self.tops.items()}
        autonames = Counter()
        layers_ = OrderedDict()
        for top in self.tops.values():
            top._to_proto(layers_, names, autonames)
        net = caffe_pb2.NetParameter()
        net.layer.extend(layers_.values())
        return net


class Layers:
    """``L.<Type>(*bottoms, **kwargs)``: any attribute is a layer type.

    ``import pyskim`` binds ``pyskim.layers`` to this object, as pycaffe binds ``caffe.layers``, although
    pyskim also has a ``pyskim.layers`` package. Names that package defines (its submodules,
    ``create_layer``, ``register``, ...; no Caffe layer type is spelled like them) resolve to the
    package, so ``import pyskim.core.layer as base`` and ``pyskim.layers.create_layer`` keep working.
    """

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        package_attr = _layer_package_attr(name)
        if package_attr is not None:
            return package_attr

        def layer_fn(*args, **kwargs):
            fn = Function(name, args, kwargs)
            if fn.ntop == 0:
                return fn
            if fn.ntop == 1:
                return fn.tops[0]
            return fn.tops

        layer_fn.__name__ = name
        return layer_fn


def _layer_package_attr(name):
    package = sys.modules.get(__package__.rsplit('.', 1)[0] + '.layers')
    if package is None:
        return None
    if hasattr(package, name):
        return getattr(package, name)
    if name[:1].islower() and importlib.util.find_spec(f"{package.__name__}.{name}") is not None:
        return importlib.import_module(f"{package.__name__}.{name}")
    return None


class _ParamEnums:
    def __init__(self, message_name):
        self._message = getattr(caffe_pb2, message_name)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._message, name)


class Parameters:
    """``P.<Type>.<VALUE>``: enum values of ``caffe_pb2.<Type>Parameter``, e.g. ``P.Pooling.MAX``."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        if not hasattr(caffe_pb2, name + "Parameter"):
            raise AttributeError(f"caffe_pb2 has no message {name}Parameter")
        return _ParamEnums(name + "Parameter")


layers = Layers()
params = Parameters()
