"""Data-providing layers: Input, DummyData (and later the database and file readers)."""
from ..errors import NetError
from ..fillers import fill
from ..proto import caffe_pb2
from .base import Layer, register


@register("Input")
class InputLayer(Layer):
    """Tops shaped by ``input_param.shape`` (one shape for all tops, or one per top); the caller
    fills them (``InputLayer``)."""

    exact_num_bottom = 0
    min_top = 1

    def layer_setup(self, bottom, top):
        shapes = self.param.input_param.shape
        if len(shapes) not in (0, 1, len(top)):
            raise_shape_count(self.name, len(shapes), len(top))
        for i, blob in enumerate(top):
            if len(shapes):
                blob.reshape(tuple(shapes[0 if len(shapes) == 1 else i].dim))

    def reshape(self, bottom, top):
        """Inputs keep whatever shape the user gave them."""

    def forward_cpu(self, bottom, top):
        """Nothing to compute: the tops are filled from outside."""

    def backward_cpu(self, top, propagate_down, bottom):
        """No bottoms."""


@register("DummyData", "DUMMY_DATA")
class DummyDataLayer(Layer):
    """Tops of fixed shapes (``shape``, or legacy ``num``/``channels``/``height``/``width``; once for
    all tops or once per top) filled by ``data_filler`` (none: constant 0; one for all tops, or one
    per top). As Caffe's ``refill_``, constant fillers fill their tops once at setup; the others refill
    on every forward (``DummyDataLayer``)."""

    exact_num_bottom = 0
    min_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.dummy_data_param
        num_top = len(top)
        if len(p.data_filler) not in (0, 1, num_top):
            raise NetError(f"layer '{self.name}': number of data fillers (dummy_data_param.data_filler) must "
                           f"be 0, 1 or equal to the number of tops: {num_top}; you specified "
                           f"{len(p.data_filler)} data fillers")
        legacy = ("num", "channels", "height", "width")
        legacy_dims = any(len(getattr(p, f)) for f in legacy)
        if legacy_dims and len(p.shape):
            raise NetError(f"layer '{self.name}': both dummy_data_param.shape and legacy fields were specified")
        for field in legacy if legacy_dims else ("shape",):
            given = len(getattr(p, field))
            if given not in (1, num_top):
                raise NetError(f"layer '{self.name}': must specify dummy_data_param.{field} once, or once per "
                               f"top blob ({num_top}); specified {given}")
        if len(p.data_filler) > 1:
            self.fillers = list(p.data_filler)
        else:
            self.fillers = [p.data_filler[0] if len(p.data_filler) else
                            caffe_pb2.FillerParameter(type="constant", value=0)]
        for i, blob in enumerate(top):
            if legacy_dims:
                blob.reshape(tuple(_pick(getattr(p, f), i) for f in legacy))
            else:
                blob.reshape(tuple(_pick(p.shape, i).dim))
        # Fill the constant tops now; from then on refill only the others.
        self.refill = [f.type == "constant" for f in self.fillers]
        self.forward_cpu(bottom, top)
        self.refill = [not r for r in self.refill]

    def reshape(self, bottom, top):
        """The tops keep the shapes given at setup."""

    def forward_cpu(self, bottom, top):
        for i, blob in enumerate(top):
            k = i if len(self.fillers) > 1 else 0
            if self.refill[k]:
                fill(blob, self.fillers[k], owner=self.name)

    def backward_cpu(self, top, propagate_down, bottom):
        """No bottoms."""


def _pick(values, i):
    """The one value given for all tops, or top ``i``'s own."""
    return values[0] if len(values) == 1 else values[i]


def raise_shape_count(name, num_shapes, num_tops):
    from ..errors import NetError
    raise NetError(f"layer '{name}': input_param must give 0, 1 or {num_tops} shapes, got {num_shapes}")


__all__ = ["DummyDataLayer", "InputLayer", "caffe_pb2"]
