"""Shared by the sparse-engine tests: a NetParameter of one Convolution or InnerProduct (or a fused
SkimCaffe type) in a given conv_mode / gemm_mode between an Input and its top."""
from pyskim.proto import caffe_pb2


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
