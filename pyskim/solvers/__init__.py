"""Solvers by type string, as Caffe's SolverRegistry, and pycaffe's ``get_solver``."""
import os

from ..core.layer import registration_names
from ..errors import SolverError
from ..io.upgrade import read_solver_text, upgrade_solver
from ..proto import caffe_pb2
from .adadelta import AdaDeltaSolver
from .adagrad import AdaGradSolver
from .adam import AdamSolver
from .base import Solver
from .distributed import data_parallel_class, default_group
from .nesterov import NesterovSolver
from .rmsprop import RMSPropSolver
from .sgd import REGULARIZERS, Regularizer, SGDSolver, register_regularizer
from .skim import WINOGRAD_TYPES  # noqa: F401  (registers SkimCaffe's regularization types)

SOLVER_REGISTRY = {}


def register_solver(cls=None, *, replaces=None):
    """Class decorator (``@register_solver`` or ``@register_solver(replaces="SGD")``): register a
    Solver subclass under its ``type``, as Caffe's ``REGISTER_SOLVER_CLASS``. A type already
    registered is refused unless ``replaces`` names it."""
    def add(solver_cls):
        (name,) = registration_names(SOLVER_REGISTRY, "solver registry", (solver_cls.type,),
                                     replaces or (), error=SolverError)
        SOLVER_REGISTRY[name] = solver_cls
        return solver_cls
    return add if cls is None else add(cls)


for _builtin in (SGDSolver, NesterovSolver, AdaGradSolver, RMSPropSolver, AdaDeltaSolver, AdamSolver):
    register_solver(_builtin)


def solver_type_list():
    return sorted(SOLVER_REGISTRY)


def get_solver(path_or_param, group=None, **kwargs):
    """Build the solver a prototxt path or SolverParameter names by ``type`` (default SGD), after
    Caffe's solver upgrades; keyword arguments go to the solver (e.g. ``stop_on_nan``).

    ``group``: an :class:`~pyskim.solvers.distributed.MPIGroup` of more than one process (e.g.
    ``distributed.mpi_world()`` under ``mpirun``) makes the solver data-parallel over it
    (:mod:`pyskim.solvers.distributed`); left out, the group of
    :func:`~pyskim.solvers.distributed.use_default_group` if one is active, else one process."""
    if isinstance(path_or_param, caffe_pb2.SolverParameter):
        param = caffe_pb2.SolverParameter()
        param.CopyFrom(path_or_param)
        upgrade_solver(param)
    else:
        param = read_solver_text(os.fspath(path_or_param))
    cls = SOLVER_REGISTRY.get(param.type)
    if cls is None:
        raise SolverError(f"Unknown solver type: {param.type} (known types: {', '.join(solver_type_list())})")
    group = default_group() if group is None else group
    if group is not None and group.size > 1:
        return data_parallel_class(cls)(param, group, **kwargs)
    return cls(param, **kwargs)


__all__ = [
    "REGULARIZERS",
    "SOLVER_REGISTRY",
    "AdaDeltaSolver",
    "AdaGradSolver",
    "AdamSolver",
    "NesterovSolver",
    "RMSPropSolver",
    "Regularizer",
    "SGDSolver",
    "Solver",
    "get_solver",
    "register_regularizer",
    "register_solver",
    "solver_type_list",
]
