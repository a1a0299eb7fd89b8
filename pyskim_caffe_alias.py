"""``import caffe`` gives pyskim when ``PYSKIM_CAFFE_ALIAS=1`` is set: the switch outside the code.

pyskim installs ``pyskim-caffe-alias.pth`` into site-packages. At every Python start that line only
reads the environment variable (cheap); when it is 1 (or true, yes, on) the line imports this module
and calls :func:`enable`, which appends :class:`CaffeAliasFinder` to ``sys.meta_path``, still without
importing pyskim. The finder comes after the regular ones, so a real Caffe on the path is always found
first; otherwise the first ``import caffe`` (or ``import caffe.proto.caffe_pb2`` ...) imports pyskim
and calls :func:`pyskim.install_caffe_alias`, which registers pyskim under pycaffe's module names.
Without the variable nothing happens: the alias is off by default.

This module stays outside the ``pyskim`` package so that the ``.pth`` line can import it without
importing pyskim, and it uses the standard library only.
"""
import importlib
import importlib.machinery
import sys

ENV_VAR = "PYSKIM_CAFFE_ALIAS"


class CaffeAliasFinder:
    """A last-resort meta path finder and loader for ``caffe``: loading it installs pyskim's alias and
    gives pyskim."""

    def __init__(self):
        self.installing = False
        self.original_spec = None

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "caffe" or self.installing:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec):
        """Install the alias and return pyskim (the import machinery then files it as ``caffe``)."""
        self.installing = True         # install_caffe_alias looks for a real caffe through sys.meta_path
        try:
            pyskim = importlib.import_module("pyskim")
            if not pyskim.install_caffe_alias():
                raise ImportError("PYSKIM_CAFFE_ALIAS: a real Caffe is importable; not aliasing pyskim",
                                  name=spec.name)
        finally:
            self.installing = False
        self.original_spec = pyskim.__spec__
        return pyskim

    def exec_module(self, module):
        module.__spec__ = self.original_spec    # the import machinery set it to the "caffe" spec


def enable():
    """Append the finder to ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, CaffeAliasFinder) for finder in sys.meta_path):
        sys.meta_path.append(CaffeAliasFinder())
