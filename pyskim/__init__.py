"""pyskim: a Caffe-compatible framework for sparse CNNs (a reimplementation of SkimCaffe).

``import pyskim as caffe`` gives pycaffe's API: ``caffe.Net``, ``caffe.TRAIN``/``caffe.TEST``,
``caffe.io``, ``caffe.layer_type_list()`` and the mode/seed functions.
"""
import os

# Worker threads that spin after a parallel region compete with the other pool's threads for the same
# cores: OpenBLAS's GEMM workers spin for about 0.1 s after each call, and a multi-threaded sparse
# kernel that starts meanwhile runs at the speed of its slowest thread (a 2-thread DIRECT_SCONV right
# after a GEMM measured 1.8x slower). Both pools sleep right away instead. Each variable takes effect
# only if set before its library loads: OpenMP's with the kernels, OpenBLAS's with numpy (so only when
# pyskim is imported before numpy, as the ``pyskim`` command and tools do).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from . import io
from .blob import get_max_blob_bytes, set_max_blob_bytes
from .classifier import Classifier
from .common import (
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
from .common import log_info as log
from .compat import install_caffe_alias
from .detector import Detector
from .errors import PyskimError
from .layers import layer_type_list
from .layers.python_layer import Layer
from .net_spec import NetSpec, layers, params, to_proto
from .proto import caffe_pb2
from .pycaffe import Net
from .solvers import (
                     AdaDeltaSolver,
                     AdaGradSolver,
                     AdamSolver,
                     NesterovSolver,
                     RMSPropSolver,
                     SGDSolver,
                     get_solver,
)
from .timer import Timer

__version__ = "0.1.0"

TRAIN = caffe_pb2.TRAIN
TEST = caffe_pb2.TEST

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
                     "set_random_seed",
                     "set_solver_count",
                     "set_solver_rank",
                     "solver_count",
                     "solver_rank",
                     "to_proto",
]
