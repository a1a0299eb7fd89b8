"""Dense forward time of AlexNet's conv layers: pyskim vs PyTorch CPU, measured in one run.

    python benchmarks/dense_layers.py [--batches 1 16] [--repeats 5] [--threads N]

Prints, per layer and batch, the best-of-N forward time of pyskim's Convolution layer (im2col + BLAS
GEMM) and of ``torch.nn.functional.conv2d`` on the same weights and input, the useful GFLOP/s and the
ratio torch_time / pyskim_time (> 1 means pyskim is faster). Both use their default thread counts
(OMP/OpenBLAS: all cores) unless ``--threads N`` limits both (OpenBLAS, OpenMP and torch) to N; the
environment's OPENBLAS_* variables are reported.
"""
import argparse
import os
import platform
import sys

# Thread counts of OpenBLAS and OpenMP are read when the libraries load: set them before numpy.
if "--threads" in sys.argv[1:-1]:
    _threads = sys.argv[sys.argv.index("--threads") + 1]
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = _threads

import numpy as np
from bench_common import ALEXNET_CONVS, call_times, conv_net


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="threads for both (default: all)")
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        torch = None
    if args.threads and torch is not None:
        torch.set_num_threads(args.threads)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')} "
          f"OPENBLAS_L2_SIZE={os.environ.get('OPENBLAS_L2_SIZE', '(unset)')}; "
          f"torch {torch.__version__ if torch else 'not installed'} "
          f"({torch.get_num_threads() if torch else '-'} threads)")
    print(f"{'layer':8s} {'batch':>5s} {'pyskim ms':>10s} {'GFLOP/s':>8s} {'torch ms':>9s} {'GFLOP/s':>8s} "
          f"{'torch/pyskim':>12s}")
    totals = {}
    for batch in args.batches:
        for name, channels, size, num_output, kernel, stride, pad, group in ALEXNET_CONVS:
            net = conv_net(batch, channels, size, num_output, kernel, stride, pad, group)
            x = np.random.default_rng(0).standard_normal((batch, channels, size, size)).astype(np.float32)
            net.blobs["data"].data[...] = x
            out = net.blobs["conv"]
            pyskim_s = min(call_times(net.forward, args.repeats))
            flops = 2.0 * out.count * (channels // group) * kernel * kernel
            line = f"{name:8s} {batch:5d} {pyskim_s * 1e3:10.2f} {flops / pyskim_s / 1e9:8.1f}"
            totals.setdefault(batch, [0.0, 0.0])[0] += pyskim_s
            if torch is not None:
                weight = torch.from_numpy(net.params["conv"][0].data.copy())
                bias = torch.from_numpy(net.params["conv"][1].data.copy())
                tx = torch.from_numpy(x)
                with torch.no_grad():
                    def torch_conv(tx=tx, weight=weight, bias=bias, stride=stride, pad=pad, group=group):
                        return torch.nn.functional.conv2d(tx, weight, bias, stride, pad, 1, group)
                    torch_s = min(call_times(torch_conv, args.repeats))
                    np.testing.assert_allclose(torch_conv().numpy(), out.data, rtol=1e-3, atol=1e-3)
                totals[batch][1] += torch_s
                line += f" {torch_s * 1e3:9.2f} {flops / torch_s / 1e9:8.1f} {torch_s / pyskim_s:12.2f}"
            print(line)
    for batch, (pyskim_s, torch_s) in totals.items():
        ratio = f"{torch_s / pyskim_s:.2f}" if torch_s else "-"
        print(f"conv1-5 batch {batch}: pyskim {pyskim_s * 1e3:.2f} ms, torch {torch_s * 1e3:.2f} ms, "
              f"torch/pyskim {ratio}")


if __name__ == "__main__":
    main()
