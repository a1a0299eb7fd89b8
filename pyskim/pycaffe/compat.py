"""Opt-in ``caffe`` alias: let code that does ``import caffe`` get pyskim.

pycaffe scripts can simply ``import pyskim as caffe``, but Python-layer modules named in a prototxt,
helper libraries and unpickled objects import ``caffe`` themselves. :func:`install_caffe_alias`
registers pyskim under pycaffe's module names in ``sys.modules`` (``caffe``, ``caffe.proto``,
``caffe.proto.caffe_pb2``, ``caffe.io``, ``caffe.draw``, ``caffe.net_spec``, ...), unless a real
Caffe is importable: then nothing is changed, and ``import caffe`` keeps giving the real one. It is
never done implicitly by ``import pyskim``.
"""
import importlib
import importlib.util
import logging
import sys

log = logging.getLogger("pyskim")

__all__ = ["CAFFE_MODULES", "install_caffe_alias", "uninstall_caffe_alias"]

#: pycaffe's module names and the pyskim modules that stand for them.
CAFFE_MODULES = {
    "caffe": "pyskim",
    "caffe._caffe": "pyskim",
    "caffe.pycaffe": "pyskim.pycaffe.net",
    "caffe.proto": "pyskim.proto",
    "caffe.proto.caffe_pb2": "pyskim.proto.caffe_pb2",
    "caffe.io": "pyskim.io",
    "caffe.net_spec": "pyskim.pycaffe.net_spec",
    "caffe.classifier": "pyskim.pycaffe.classifier",
    "caffe.detector": "pyskim.pycaffe.detector",
    "caffe.draw": "pyskim.pycaffe.draw",
    "caffe.coord_map": "pyskim.pycaffe.coord_map",
    "caffe.imagenet": "pyskim.imagenet",
}


def _real_caffe_location():
    """Where a real (non-pyskim) ``caffe`` would be imported from, or None."""
    module = sys.modules.get("caffe")
    if module is not None:
        return None if module is sys.modules.get("pyskim") else getattr(module, "__file__", "<loaded>")
    try:
        spec = importlib.util.find_spec("caffe")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    return spec.origin or (list(spec.submodule_search_locations or []) or ["<namespace>"])[0]


def install_caffe_alias(force=False):
    """Register pyskim as ``caffe`` (and pycaffe's submodule names) in ``sys.modules``.

    Does nothing when a real Caffe is importable (or already imported), unless ``force`` is true.
    Returns True when ``import caffe`` now gives pyskim, False when a real Caffe was left in place.
    Logs what it did. Calling it again is harmless.
    """
    pyskim = importlib.import_module("pyskim")
    if sys.modules.get("caffe") is pyskim:
        log.info("'caffe' is already an alias of pyskim")
        return True
    real = _real_caffe_location()
    if real is not None and not force:
        log.info("A real Caffe is importable (%s); not registering pyskim as 'caffe'", real)
        return False
    aliased = []
    for caffe_name, pyskim_name in CAFFE_MODULES.items():
        sys.modules[caffe_name] = importlib.import_module(pyskim_name)
        aliased.append(caffe_name)
    log.info("Registered pyskim as 'caffe'%s: %s", " (replacing a real Caffe)" if real else "",
             ", ".join(aliased))
    return True


def uninstall_caffe_alias():
    """Remove the ``sys.modules`` entries :func:`install_caffe_alias` made (those still pointing
    into pyskim). Returns the names removed."""
    removed = []
    for caffe_name, pyskim_name in CAFFE_MODULES.items():
        if sys.modules.get(caffe_name) is not None and sys.modules.get(caffe_name) is sys.modules.get(pyskim_name):
            del sys.modules[caffe_name]
            removed.append(caffe_name)
    if removed:
        log.info("Removed the 'caffe' alias of pyskim: %s", ", ".join(removed))
    return removed
