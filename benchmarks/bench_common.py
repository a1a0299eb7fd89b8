"""What the benchmark scripts share: AlexNet's convolution shapes, a one-Convolution pyskim net and the
timing loop.

pyskim (and so numpy) is imported only when a net is built, so that a script can still set the
OpenBLAS / OpenMP thread variables after importing this module.
"""
import time

# AlexNet (bvlc_alexnet/deploy.prototxt): name, input C, H(=W), num_output, kernel, stride, pad, group
ALEXNET_CONVS = [
    ("conv1", 3, 227, 96, 11, 4, 0, 1),
    ("conv2", 96, 27, 256, 5, 1, 2, 2),
    ("conv3", 256, 13, 384, 3, 1, 1, 1),
    ("conv4", 384, 13, 384, 3, 1, 1, 2),
    ("conv5", 384, 13, 256, 3, 1, 1, 2),
]


def conv_net(batch, channels, size, num_output, kernel, stride, pad, group):
    """A TEST-phase pyskim Net: an Input "data" of batch x channels x size x size into one Convolution
    "conv" with the given geometry (weights Gaussian, std 0.01; bias 0.1)."""
    import pyskim
    from pyskim.io.protofiles import parse_text
    from pyskim.proto import caffe_pb2
    param = caffe_pb2.NetParameter()
    parse_text(f"""
        layer {{ name: "data" type: "Input" top: "data"
                 input_param {{ shape {{ dim: {batch} dim: {channels} dim: {size} dim: {size} }} }} }}
        layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
                 convolution_param {{ num_output: {num_output} kernel_size: {kernel} stride: {stride}
                   pad: {pad} group: {group} weight_filler {{ type: "gaussian" std: 0.01 }}
                   bias_filler {{ type: "constant" value: 0.1 }} }} }}""", param)
    return pyskim.Net(param, pyskim.TEST)


def call_times(fn, repeats):
    """The wall time, in seconds, of each of ``repeats`` calls of ``fn()`` after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times
