"""pyskim: a Caffe-compatible framework for sparse CNNs (a reimplementation of SkimCaffe).

``import pyskim as caffe`` gives pycaffe's API: ``caffe.Net``, ``caffe.TRAIN``/``caffe.TEST``,
``caffe.io``, ``caffe.layer_type_list()`` and the mode/seed functions. ``set_num_threads(n)`` /
``get_num_threads()`` size pyskim's one thread pool (default: ``OMP_NUM_THREADS``, else the CPUs the
process may use); importing pyskim sets no environment variable and changes no other library's
threads.
"""
import importlib

from . import io, sparse  # noqa: F401  (sparse attaches its engines to every Net built)
from .core.blob import get_max_blob_bytes, set_max_blob_bytes
from .core.state import (
    has_nccl,
    init_log,
    set_device,
    set_mode_cpu,
    set_mode_gpu,
    set_multiprocess,
    set_random_seed,
    set_solver_count,
    set_solver_rank,
    solver_count,
    solver_rank,
)
from .core.state import log_info as log
from .errors import PyskimError
from .kernels.threads import get_num_threads, set_num_threads
from .layers import layer_type_list
from .layers.python_layer import Layer
from .proto import caffe_pb2
from .pycaffe.classifier import Classifier
from .pycaffe.compat import install_caffe_alias
from .pycaffe.detector import Detector
from .pycaffe.net import Net
from .pycaffe.net_spec import NetSpec, layers, params, to_proto
from .pycaffe.timer import Timer
from .solvers import (
    AdaDeltaSolver,
    AdaGradSolver,
    AdamSolver,
    NesterovSolver,
    RMSPropSolver,
    SGDSolver,
    get_solver,
)

__version__ = "0.1.0"

TRAIN = caffe_pb2.TRAIN
TEST = caffe_pb2.TEST

#: pycaffe's submodules that live in :mod:`pyskim.pycaffe`, reachable as ``caffe.draw`` etc. (imported
#: on first use: ``draw`` needs the optional pydot).
_PYCAFFE_MODULES = ("classifier", "coord_map", "detector", "draw", "net_spec")


def __getattr__(name):
    if name in _PYCAFFE_MODULES:
        return importlib.import_module(f"{__name__}.pycaffe.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "TEST",
    "TRAIN",
    "AdaDeltaSolver",
    "AdaGradSolver",
    "AdamSolver",
    "Classifier",
    "Detector",
    "Layer",
    "NesterovSolver",
    "Net",
    "NetSpec",
    "PyskimError",
    "RMSPropSolver",
    "SGDSolver",
    "Timer",
    "get_max_blob_bytes",
    "get_num_threads",
    "get_solver",
    "has_nccl",
    "init_log",
    "install_caffe_alias",
    "io",
    "layer_type_list",
    "layers",
    "log",
    "params",
    "set_device",
    "set_max_blob_bytes",
    "set_mode_cpu",
    "set_mode_gpu",
    "set_multiprocess",
    "set_num_threads",
    "set_random_seed",
    "set_solver_count",
    "set_solver_rank",
    "solver_count",
    "solver_rank",
    "to_proto",
]
