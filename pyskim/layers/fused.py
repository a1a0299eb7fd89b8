"""SkimCaffe's extra layer types, built from the plain layers.

Fused types (SkimCaffe runs them as one sparse kernel, inference only) reuse the plain layers'
parameter messages and are composed here from the plain layers, forward and backward:

* ``ConvolutionReLU``: Convolution -> ReLU (``relu_param``).
* ``ConvolutionReLUPool``: Convolution -> ReLU -> Pooling (``pooling_param``); one top.
* ``ConvolutionReLUPoolLRN``: Convolution -> ReLU -> Pooling -> LRN (``lrn_param``); one top.
* ``ReLUPooling``: ReLU -> Pooling; the bottom is left unchanged.
* ``InnerProductReLUDropout``: InnerProduct -> ReLU. SkimCaffe's dropout in this layer is a no-op
  in every phase, so ``dropout_param`` is ignored in TRAIN as well as TEST.

The first stage (Convolution / InnerProduct) is named like the fused layer and its parameter blobs
are the fused layer's, so a caffemodel trained with separate Convolution + ReLU + Pooling layers
loads into the fused layer by name. Unlike SkimCaffe (which accepts only ``negative_slope: 0`` in
the fused convolutions and has no backward), any ReLU slope is accepted and backward works.

Aliases: ``Winograd`` and ``MKLConvolution`` run as Convolution, ``MKLReLU`` as ReLU,
``MKLPooling`` as Pooling, ``MKLLRN`` as LRN.
"""
from ..core.blob import Blob
from ..core.layer import LAYER_REGISTRY, Layer, create_layer, register
from ..proto import caffe_pb2


class FusedLayer(Layer):
    """A chain of internal plain layers: bottom -> stage 0 -> ... -> top.

    ``stage_specs`` lists ``(layer type, LayerParameter field copied into it)``. A ReLU after the
    first stage runs in place on its input; the other stages write internal blobs, the last one the
    top. After setup, :attr:`stages` are the internal layers and :attr:`stage_io` their blobs.
    """

    exact_num_bottom = 1
    exact_num_top = 1
    stage_specs = ()
    _layers = _vectors = ()

    def layer_setup(self, bottom, top):
        count = len(self.stage_specs)
        in_place = [type_name == "ReLU" and i > 0 for i, (type_name, _) in enumerate(self.stage_specs)]
        last_writer = max(i for i in range(count) if not in_place[i])
        layers, vectors = [], []
        current = bottom[0]
        for i, (type_name, field) in enumerate(self.stage_specs):
            lp = caffe_pb2.LayerParameter(name=self.name if i == 0 else f"{self.name}/{type_name.lower()}",
                                          type=type_name, phase=self.phase)
            getattr(lp, field).CopyFrom(getattr(self.param, field))
            layer = create_layer(lp)
            if i == 0:
                layer.blobs = self.blobs  # the first stage owns the fused layer's parameters
            if in_place[i]:
                out = current
            elif i == last_writer:
                out = top[0]
            else:
                out = Blob(name=f"{self.name}/{type_name.lower()}")
            layers.append(layer)
            vectors.append(([current], [out]))
            layer.setup([current], [out])
            current = out
        self._layers, self._vectors = layers, vectors
        self.blobs = self._layers[0].blobs
        self.param_propagate_down = [True] * len(self.blobs)

    @property
    def stages(self):
        """The internal layers, in order (the first owns the parameters)."""
        return tuple(self._layers)

    @property
    def stage_io(self):
        """Per stage, its ``(bottoms, tops)`` as tuples of blobs: the fused bottom, internal blobs,
        the fused top. A stage whose top is its bottom runs in place."""
        return tuple((tuple(layer_bottom), tuple(layer_top)) for layer_bottom, layer_top in self._vectors)

    def weights_changed(self):
        """Pass the hook on to the stage that owns the weights (a sparse engine may use it)."""
        self._layers[0].weights_changed()

    def reshape(self, bottom, top):
        for layer, (layer_bottom, layer_top) in zip(self._layers, self._vectors):
            layer.reshape(layer_bottom, layer_top)

    def forward_cpu(self, bottom, top):
        for layer, (layer_bottom, layer_top) in zip(self._layers, self._vectors):
            layer.forward_cpu(layer_bottom, layer_top)

    def backward_cpu(self, top, propagate_down, bottom):
        first = self._layers[0]
        first.param_propagate_down = list(self.param_propagate_down)
        if not (propagate_down[0] or any(first.param_propagate_down)):
            return
        for i in range(len(self._layers) - 1, -1, -1):
            layer_bottom, layer_top = self._vectors[i]
            self._layers[i].backward_cpu(layer_top, [propagate_down[0]] if i == 0 else [True], layer_bottom)


@register("ConvolutionReLU")
class ConvolutionReLULayer(FusedLayer):
    """SkimCaffe's ``ConvolutionReLU``: Convolution then ReLU (``relu_param.negative_slope``)."""

    stage_specs = (("Convolution", "convolution_param"), ("ReLU", "relu_param"))


@register("ConvolutionReLUPool")
class ConvolutionReLUPoolLayer(FusedLayer):
    """SkimCaffe's ``ConvolutionReLUPool``: Convolution, ReLU, then ``pooling_param`` pooling."""

    stage_specs = (("Convolution", "convolution_param"), ("ReLU", "relu_param"), ("Pooling", "pooling_param"))


@register("ConvolutionReLUPoolLRN")
class ConvolutionReLUPoolLRNLayer(FusedLayer):
    """SkimCaffe's ``ConvolutionReLUPoolLRN``: Convolution, ReLU, Pooling, then LRN (``lrn_param``).
    SkimCaffe's fused kernel exists only for AlexNet's conv2 geometry; any geometry works here."""

    stage_specs = (("Convolution", "convolution_param"), ("ReLU", "relu_param"), ("Pooling", "pooling_param"),
                   ("LRN", "lrn_param"))


@register("ReLUPooling")
class ReLUPoolingLayer(FusedLayer):
    """SkimCaffe's ``ReLUPooling``: ReLU into an internal blob, then ``pooling_param`` pooling."""

    stage_specs = (("ReLU", "relu_param"), ("Pooling", "pooling_param"))


@register("InnerProductReLUDropout")
class InnerProductReLUDropoutLayer(FusedLayer):
    """SkimCaffe's ``InnerProductReLUDropout``: InnerProduct then ReLU; its dropout is a no-op (as in
    SkimCaffe, in TRAIN too), so the top is the ReLU output."""

    stage_specs = (("InnerProduct", "inner_product_param"), ("ReLU", "relu_param"))


class AliasLayer(Layer):
    """A type name that runs another registered type: instantiating it gives a subclass of the
    target class whose ``type`` is the alias (so ``isinstance`` and type reporting both work)."""

    target = None

    def __new__(cls, param):
        resolved = cls.__dict__.get("_resolved")
        if resolved is None:
            base = LAYER_REGISTRY[cls.target]
            resolved = type(cls.__name__, (base,), {"type": cls.type, "__doc__": cls.__doc__,
                                                    "__module__": __name__})
            cls._resolved = resolved
        return resolved(param)


def register_alias(alias, target, description):
    """Register type name ``alias`` as running the registered type ``target``: an :class:`AliasLayer`
    subclass named ``<alias>Layer`` with the docstring ``description``, which is returned."""
    cls = type(f"{alias}Layer", (AliasLayer,), {"target": target, "__doc__": description, "__module__": __name__})
    return register(alias)(cls)


#: The alias types: (alias, the type it runs, what it is).
ALIASES = (
    ("Winograd", "Convolution", ("SkimCaffe's ``Winograd`` convolution, computed as a plain Convolution "
                                 "(same parameters and blob shapes as Convolution).")),
    ("MKLConvolution", "Convolution", "Intel Caffe's ``MKLConvolution``: a Convolution."),
    ("MKLReLU", "ReLU", "Intel Caffe's ``MKLReLU``: a ReLU."),
    ("MKLPooling", "Pooling", "Intel Caffe's ``MKLPooling``: a Pooling."),
    ("MKLLRN", "LRN", "Intel Caffe's ``MKLLRN``: an LRN."),
)
#: The registered alias classes, by alias.
ALIAS_LAYERS = {alias: register_alias(alias, target, description) for alias, target, description in ALIASES}
