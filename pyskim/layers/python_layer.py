"""Python layers: ``type: "Python"`` with ``python_param { module layer param_str }``.

Mirrors Caffe's ``PythonLayer`` (``python_layer.hpp``) and ``GetPythonLayer`` (``layer_factory.cpp``):
the net imports ``module``, calls ``module.<layer>(layer_param)`` and drives the object it gets, which
subclasses :class:`Layer` (``caffe.Layer`` for scripts, i.e. ``pyskim.Layer``)::

    class Scale10(caffe.Layer):
        def setup(self, bottom, top): ...            # self.param_str, self.phase are set
        def reshape(self, bottom, top): top[0].reshape(*bottom[0].data.shape)
        def forward(self, bottom, top): top[0].data[...] = 10 * bottom[0].data
        def backward(self, top, propagate_down, bottom): bottom[0].diff[...] = 10 * top[0].diff

``bottom``/``top`` are lists of :class:`~pyskim.core.blob.Blob`. ``self.blobs.add_blob(*shape)`` (in
``setup``) adds a zero-filled learnable blob: the net lists it in ``net.params``, solvers update it,
``net.save``/``copy_from``/``share_with`` include it. Like any Caffe layer a Python layer has no
loss weight by default; a Python loss layer sets ``loss_weight: 1`` in the prototxt, and its top's
diff then holds that weight when ``backward`` runs. ``share_in_parallel`` is accepted and ignored
(pyskim runs one net per process).

Security: a prototxt naming a Python layer runs code. ``module`` is imported with the ordinary import
system, so only modules importable from ``sys.path`` (the script's directory, ``PYTHONPATH``,
installed packages) are loaded, as Caffe does; pyskim never loads code from a path written in the
prototxt, checks that ``module`` and ``layer`` are plain dotted Python names, and logs at INFO which
module and class each Python layer imports. Only open prototxts whose Python modules you trust.

Inside pyskim the net drives an adapter, :class:`PythonLayer` (registered as ``"Python"``), which
forwards pyskim's layer contract (``layer_setup``/``reshape``/``forward_cpu``/``backward_cpu``) to the
user object's ``setup``/``reshape``/``forward``/``backward``. ``net.layers[i]`` is that adapter; it
shares the user object's ``blobs`` and passes other attribute reads on to it, so
``net.layers[i].my_attribute`` works as in pycaffe.
"""
import importlib
import re

from ..core import layer as base
from ..core.blob import Blob
from ..core.state import log
from ..errors import NetError

__all__ = ["BlobVec", "Layer", "PythonLayer"]

_DOTTED_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class BlobVec(list):
    """A layer's learnable blobs: a list of Blob with pycaffe's ``add_blob(*shape)``."""

    def __init__(self, blobs=(), owner=""):
        super().__init__(blobs)
        self.owner = owner

    def add_blob(self, *shape):
        """Append a zero-filled blob of the given shape (``add_blob(2, 3)`` or ``add_blob((2, 3))``)."""
        blob = Blob(*shape, name=f"{self.owner}/{len(self)}")
        self.append(blob)
        return blob


def _undefined(layer, signature):
    """The error for a method the user's Python ``layer`` needed but its class does not define."""
    return NotImplementedError(f"Python layer {type(layer).__name__} defines no {signature}")


class Layer:
    """Base class of Python layers, pycaffe's ``caffe.Layer`` (exported as ``pyskim.Layer``).

    Subclasses define ``setup(bottom, top)``, ``reshape(bottom, top)``, ``forward(bottom, top)`` and
    ``backward(top, propagate_down, bottom)``. Before ``setup`` the net sets ``self.param_str`` (the
    prototxt's ``python_param.param_str``) and ``self.phase`` (``caffe.TRAIN`` or ``caffe.TEST``).
    ``self.blobs`` holds the learnable blobs; ``self.type`` is ``"Python"``.
    """

    def __init__(self, param=None):
        self.param_str = param.python_param.param_str if param is not None else ""
        self.phase = int(param.phase) if param is not None else 0
        self.blobs = BlobVec(owner=param.name if param is not None else "")

    @property
    def type(self):
        return "Python"

    @property
    def blobs(self):
        # Created on first use, so subclasses whose __init__ skips super().__init__ still work.
        blobs = self.__dict__.get("_blobs")
        if blobs is None:
            blobs = self.__dict__["_blobs"] = BlobVec()
        return blobs

    @blobs.setter
    def blobs(self, value):
        self.__dict__["_blobs"] = value if isinstance(value, BlobVec) else BlobVec(value)

    def setup(self, bottom, top):
        """Read ``self.param_str``, check the bottoms, create blobs. Default: nothing."""

    def reshape(self, bottom, top):
        """Size the tops from the bottoms; the subclass must define it."""
        raise _undefined(self, "reshape(bottom, top)")

    def forward(self, bottom, top):
        """Compute the tops from the bottoms; the subclass must define it."""
        raise _undefined(self, "forward(bottom, top)")

    def backward(self, top, propagate_down, bottom):
        """Default: nothing to do for a layer with no gradients to give; an error otherwise."""
        if any(propagate_down) or len(self.blobs):
            raise _undefined(self, "backward(top, propagate_down, bottom)")

@base.register("Python")
class PythonLayer(base.Layer):
    """Adapter the net drives for a ``"Python"`` layer; owns the user's :class:`Layer` as ``impl``."""

    type = "Python"

    def __init__(self, param):
        super().__init__(param)
        self.impl = _instantiate(param)
        # Blobs carried by the prototxt come first, then those setup() adds (Caffe's Layer ctor).
        blobs = self.impl.blobs
        if not blobs.owner:
            blobs.owner = param.name
        blobs[:0] = self.blobs
        self.blobs = blobs

    def layer_setup(self, bottom, top):
        impl = self.impl
        impl.param_str = self.param.python_param.param_str
        impl.phase = int(self.phase)
        impl.setup(bottom, top)
        self._sync_param_blobs()

    def reshape(self, bottom, top):
        self.impl.reshape(bottom, top)

    def forward_cpu(self, bottom, top):
        self.impl.forward(bottom, top)

    def backward_cpu(self, top, propagate_down, bottom):
        self.impl.backward(top, list(propagate_down), bottom)

    def _sync_param_blobs(self):
        if self.impl.blobs is not self.blobs:      # setup() replaced self.blobs wholesale
            self.blobs = self.impl.blobs
        missing = len(self.blobs) - len(self.param_propagate_down)
        self.param_propagate_down += [True] * max(missing, 0)

    def __getattr__(self, name):
        # Only reached for attributes the adapter lacks: pass reads on to the user's layer object.
        impl = self.__dict__.get("impl")
        if impl is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(impl, name)

    def __repr__(self):
        return f"<PythonLayer '{self.name}' ({type(self.impl).__module__}.{type(self.impl).__name__})>"


def _instantiate(param):
    """Import ``python_param.module``, look up ``python_param.layer`` and call it with ``param``."""
    pp = param.python_param
    module_name, class_name = pp.module, pp.layer
    where = f"Python layer '{param.name}' (module '{module_name}', class '{class_name}')"
    if not _DOTTED_NAME.fullmatch(module_name):
        raise NetError(f"{where}: python_param.module must be a dotted Python module name")
    if not _NAME.fullmatch(class_name):
        raise NetError(f"{where}: python_param.layer must be a Python class name")
    log.info("Python layer '%s': importing class %s from module %s", param.name, class_name, module_name)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        parts = module_name.split(".")
        if exc.name not in {".".join(parts[:i]) for i in range(1, len(parts) + 1)}:
            raise                           # the module exists but one of its own imports failed
        raise NetError(f"{where}: cannot import module '{module_name}': it is not importable from "
                       f"sys.path (add its directory to PYTHONPATH or sys.path)") from exc
    cls = getattr(module, class_name, None)
    if cls is None:
        raise NetError(f"{where}: module '{module_name}' ({getattr(module, '__file__', '?')}) has no "
                       f"attribute '{class_name}'")
    if not (isinstance(cls, type) and issubclass(cls, Layer)):
        raise NetError(f"{where}: {module_name}.{class_name} must be a class derived from caffe.Layer "
                       f"(pyskim.Layer)")
    layer = cls(param)
    if not hasattr(layer, "param_str"):         # __init__ overridden without calling Layer.__init__
        layer.param_str = pp.param_str
        layer.phase = int(param.phase)
    return layer
