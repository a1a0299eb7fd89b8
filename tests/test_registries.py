"""The three registries (layer types, solver types, regularization types) refuse a duplicate name
unless the registration says it replaces one, as Caffe's registries CHECK-fail on "already
registered"; and the real registries hold the expected classes whatever the import order."""
import subprocess
import sys

import pytest

import pyskim  # noqa: F401  (registers every layer, solver and regularizer type)
from pyskim.core.layer import LAYER_REGISTRY, Layer, create_layer, register, registration_names
from pyskim.errors import NetError, SolverError
from pyskim.layers.convolution import ConvolutionLayer, DeconvolutionLayer
from pyskim.layers.lrn import LRNLayer
from pyskim.layers.pooling import PoolingLayer
from pyskim.proto import caffe_pb2
from pyskim.solvers import (
    REGULARIZERS,
    SOLVER_REGISTRY,
    AdaDeltaSolver,
    AdaGradSolver,
    AdamSolver,
    NesterovSolver,
    Regularizer,
    RMSPropSolver,
    SGDSolver,
    register_regularizer,
    register_solver,
    sgd,
    skim,
)


@pytest.fixture
def registries():
    """The three registries, restored to their contents after the test."""
    saved = [(registry, dict(registry)) for registry in (LAYER_REGISTRY, SOLVER_REGISTRY, REGULARIZERS)]
    yield
    for registry, contents in saved:
        registry.clear()
        registry.update(contents)


# -- the shared rule ---------------------------------------------------------------------------------

def test_registration_names_rule():
    registry = {"A": int}
    assert registration_names(registry, "test registry", ("B", "C", "B")) == ("B", "C")   # repeats collapse
    with pytest.raises(NetError, match=r"test registry: 'A' is already registered \(int\); pass replaces='A'"):
        registration_names(registry, "test registry", ("B", "A"))
    assert registration_names(registry, "test registry", ("A", "B"), replaces="A") == ("A", "B")
    assert registration_names(registry, "test registry", ("A",), replaces=("A",)) == ("A",)
    with pytest.raises(NetError, match="replaces 'B', which is not registered"):
        registration_names(registry, "test registry", ("B",), replaces="B")
    with pytest.raises(NetError, match=r"replaces 'A', which is not one of the names \['B'\]"):
        registration_names(registry, "test registry", ("B",), replaces="A")
    with pytest.raises(SolverError):
        registration_names(registry, "test registry", ("A",), error=SolverError)
    assert registry == {"A": int}                   # checking registers nothing


# -- layers --------------------------------------------------------------------------------------------

def test_layer_registry_refuses_a_duplicate(registries):
    with pytest.raises(NetError, match="layer registry: 'Convolution' is already registered"):
        @register("Convolution")
        class Shadow(Layer):
            pass
    with pytest.raises(NetError, match="layer registry: 'POOLING' is already registered"):
        register("MyPooling", "POOLING")            # the V1 name collides: nothing is registered
    assert "MyPooling" not in LAYER_REGISTRY
    assert LAYER_REGISTRY["Convolution"] is ConvolutionLayer


def test_layer_registry_explicit_replacement(registries):
    @register("Convolution", replaces="Convolution")
    class MyConvolution(ConvolutionLayer):
        pass

    assert LAYER_REGISTRY["Convolution"] is MyConvolution
    assert LAYER_REGISTRY["CONVOLUTION"] is ConvolutionLayer     # only the named entry is replaced
    param = caffe_pb2.LayerParameter(name="c", type="Convolution")
    param.convolution_param.num_output = 1
    assert type(create_layer(param)) is MyConvolution


def test_layer_registry_new_type_and_equal_v1_name(registries):
    @register("Probe", "Probe")                     # type string and V1 name may be the same
    class ProbeLayer(Layer):
        pass

    assert LAYER_REGISTRY["Probe"] is ProbeLayer and ProbeLayer.type == "Probe"


def test_real_layer_registry():
    for name, cls in (("Convolution", ConvolutionLayer), ("CONVOLUTION", ConvolutionLayer),
                      ("Deconvolution", DeconvolutionLayer), ("Pooling", PoolingLayer),
                      ("POOLING", PoolingLayer), ("LRN", LRNLayer)):
        assert LAYER_REGISTRY[name] is cls, name
    for name, cls in LAYER_REGISTRY.items():        # every class is registered under its own type
        assert issubclass(cls, Layer), name
        assert LAYER_REGISTRY[cls.type] is cls, name


# -- solvers -------------------------------------------------------------------------------------------

def test_solver_registry_refuses_a_duplicate(registries):
    class OtherSGD(SGDSolver):
        pass

    with pytest.raises(SolverError, match="solver registry: 'SGD' is already registered"):
        register_solver(OtherSGD)
    assert SOLVER_REGISTRY["SGD"] is SGDSolver


def test_solver_registry_explicit_replacement_and_new_type(registries):
    @register_solver(replaces="SGD")
    class OtherSGD(SGDSolver):
        pass

    assert SOLVER_REGISTRY["SGD"] is OtherSGD

    @register_solver
    class ProbeSolver(SGDSolver):
        type = "Probe"

    assert SOLVER_REGISTRY["Probe"] is ProbeSolver


def test_real_solver_registry():
    assert SOLVER_REGISTRY == {"SGD": SGDSolver, "Nesterov": NesterovSolver, "AdaGrad": AdaGradSolver,
                               "RMSProp": RMSPropSolver, "AdaDelta": AdaDeltaSolver, "Adam": AdamSolver}


# -- regularizers --------------------------------------------------------------------------------------

def test_regularizer_registry_refuses_a_duplicate(registries):
    with pytest.raises(SolverError, match="regularizer registry: 'L2' is already registered"):
        @register_regularizer("L2")
        class OtherL2(Regularizer):
            pass
    assert REGULARIZERS["L2"] is sgd.L2Regularizer


def test_regularizer_registry_explicit_replacement(registries):
    @register_regularizer("L2", replaces="L2")
    class OtherL2(Regularizer):
        pass

    assert REGULARIZERS["L2"] is OtherL2


def test_real_regularizer_registry():
    assert REGULARIZERS["L1"] is skim.L1Regularizer            # SkimCaffe's thresholded L1
    assert issubclass(skim.L1Regularizer, sgd.L1Regularizer)   # ... which extends Caffe's
    assert REGULARIZERS["L2"] is sgd.L2Regularizer
    assert REGULARIZERS["ISTA"] is skim.ISTARegularizer
    assert REGULARIZERS["L1_DNS"] is skim.L1DNSRegularizer
    assert REGULARIZERS["L2_DNS"] is skim.L2DNSRegularizer
    for name in skim.WINOGRAD_TYPES:
        assert REGULARIZERS[name] is skim.WinogradRegularizer


@pytest.mark.parametrize("first_import", ["pyskim.solvers.sgd", "pyskim.solvers.skim", "pyskim.solvers",
                                          "pyskim"])
def test_l1_is_skimcaffes_whatever_the_import_order(first_import):
    code = (f"import {first_import}\n"
            "from pyskim.solvers.sgd import REGULARIZERS\n"
            "cls = REGULARIZERS['L1']\n"
            "print(cls.__module__ + '.' + cls.__qualname__)\n")
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "pyskim.solvers.skim.L1Regularizer"
