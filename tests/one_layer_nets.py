"""Shared by the sparse-engine tests: a NetParameter of one Convolution or InnerProduct (or a fused
SkimCaffe type) in a given conv_mode / gemm_mode between an Input and its top, and that net built
beside its dense twin with the same weights."""
import numpy as np

import pyskim
from pyskim.perf.model import MachineProfile
from pyskim.proto import caffe_pb2
from pyskim.sparse import apply_mode

#: A machine profile on which sparse modes win at low density (AUTO's picks then do not depend on the
#: machine running the tests; its inner products pay the same per-call overhead dense and sparse).
SPARSE_WINS_PROFILE = MachineProfile(threads=1, dense_eff=0.5, sparse_eff=0.2, sparse_fc_overhead=30e-6, cpu="test",
                                     source="test")


def one_layer_param(name, type_name, mode, loss=False):
    """Input ``x`` -> layer ``layer`` (``type_name`` in ``mode``) -> ``y`` [-> EuclideanLoss against
    ``t``]: a grouped 3x3 convolution (6 outputs) on (2, 4, 9, 9), or an inner product (24 outputs;
    ``transpose`` when ``name`` says so) on (3, 40), with Gaussian biases."""
    param = caffe_pb2.NetParameter(name=name)
    conv = "Convolution" in type_name
    shape = [2, 4, 9, 9] if conv else [3, 40]
    param.layer.add(name="x", type="Input", top=["x"]).input_param.shape.add().dim.extend(shape)
    lp = param.layer.add(name="layer", type=type_name, bottom=["x"], top=["y"])
    if conv:
        cp = lp.convolution_param
        cp.num_output, cp.group, cp.conv_mode = 6, 2, mode
        cp.kernel_size.append(3)
        cp.pad.append(1)
        cp.bias_filler.type = "gaussian"
        top_shape = [2, 6, 9, 9]
    else:
        ip = lp.inner_product_param
        ip.num_output, ip.gemm_mode, ip.transpose = 24, mode, "transpose" in name
        ip.bias_filler.type = "gaussian"
        top_shape = [3, 24]
    if loss:
        param.layer.add(name="t", type="Input", top=["t"]).input_param.shape.add().dim.extend(top_shape)
        param.layer.add(name="loss", type="EuclideanLoss", bottom=["y", "t"], top=["loss"])
    return param


def with_dense_twin(param, density, seed=0):
    """(the net of ``param``, the same net with every mode dense) in TEST, both with the same Gaussian
    weights of ``layer`` kept at random with probability ``density``, Gaussian bias and input ``x``."""
    dense_param = caffe_pb2.NetParameter()
    dense_param.CopyFrom(param)
    apply_mode(dense_param, "dense")
    nets = [pyskim.Net(p, pyskim.TEST) for p in (param, dense_param)]
    rng = np.random.default_rng(seed)
    shape = nets[0].params["layer"][0].data.shape
    weights = rng.standard_normal(shape) * (rng.random(shape) < density)
    bias = rng.standard_normal(nets[0].params["layer"][1].data.shape)
    x = rng.standard_normal(nets[0].blobs["x"].data.shape)
    for net in nets:
        net.params["layer"][0].data[...] = weights
        net.params["layer"][1].data[...] = bias
        net.blobs["x"].data[...] = x
    return nets
