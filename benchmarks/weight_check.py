"""Per-forward cost of the sparse engines' exact weight-change check on the pruned CaffeNet.

    python benchmarks/weight_check.py [--batches 1 16] [--iterations 20] [--keep-model DIR]

The net is prototxt/caffenet/deploy_sparse.prototxt (SkimCaffe's fused types) with every conv_mode /
gemm_mode set to AUTO, on one thread, loaded with benchmarks/make_pruned_caffenet.py's weights
(SkimCaffe's published densities; written to a temporary folder). Every sparse forward first checks
whether any weight changed since the engine packed it (pyskim.sparse.weights): a proof that no
writable array of the weights existed since the last check (about a microsecond), else a bitwise
compare against the packed copy. Two cases:

* ``no array held``: nothing outside the net holds a weight array (the fast path);
* ``arrays held``: the user holds ``net.params[name][0].data`` of every layer (the compare runs at
  every forward).

Per batch and case it prints the forward time, the time of the check alone (every engine's
``refresh()`` with unchanged weights, which is the check) and their ratio, the memory the checks
hold, and the load average before and after (the numbers mean something on an idle machine only).
"""
import argparse
import os
import pathlib
import statistics
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_common import call_times

MODEL = ROOT / "prototxt" / "caffenet" / "deploy_sparse.prototxt"


def auto_param(batch):
    """deploy_sparse.prototxt at ``batch`` with every conv_mode / gemm_mode AUTO."""
    from pyskim.apps.time_net import set_batch
    from pyskim.io.upgrade import read_net_text
    from pyskim.proto import caffe_pb2
    param = read_net_text(str(MODEL))
    set_batch(param, batch)
    for lp in param.layer:
        if lp.HasField("convolution_param"):
            lp.convolution_param.conv_mode = caffe_pb2.ConvolutionParameter.AUTO
        if lp.HasField("inner_product_param"):
            lp.inner_product_param.gemm_mode = caffe_pb2.InnerProductParameter.AUTO
    return param


def engines(net):
    from pyskim.sparse.modes import product_layer
    producers = (product_layer(layer) for layer in net.layers)
    return [p.engine for p in producers if p is not None and p.engine is not None]


def seconds(fn, iterations):
    """Median and minimum wall time of ``fn()`` over ``iterations`` calls (after one warm-up call)."""
    times = call_times(fn, iterations)
    return statistics.median(times), min(times)


def measure(net, iterations):
    """(forward median, forward min, check median, check min) in seconds."""
    attached = engines(net)

    def check():
        for engine in attached:
            if engine.refresh():
                raise RuntimeError(f"layer '{engine.layer.name}': weights changed during the benchmark")
    forward = seconds(net.forward, iterations)
    return forward + seconds(check, iterations)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--keep-model", default="", help="write the caffemodel here (default: a temp folder)")
    args = parser.parse_args(argv)
    from make_pruned_caffenet import main as make_model

    import pyskim
    from pyskim.kernels.threads import set_num_threads
    set_num_threads(1)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")
    with tempfile.TemporaryDirectory() as tmp:
        model = pathlib.Path(args.keep_model or tmp) / "caffenet_pruned.caffemodel"
        make_model([str(model)])
        print(f"\n{'batch':>5} {'case':<16} {'forward ms':>11} {'check ms':>9} {'check/forward':>14} "
              f"{'record MiB':>11} {'weights MiB':>12}")
        for batch in args.batches:
            net = pyskim.Net(auto_param(batch), pyskim.TEST, weights=str(model))
            rng = np.random.default_rng(0)
            net.blobs["data"].data[...] = rng.standard_normal(net.blobs["data"].data.shape)
            net.forward()                                   # pack, then no array of the weights is alive
            weights_mib = sum(e.layer.blobs[0].count * 4 for e in engines(net)) / 2**20
            for case in ("no array held", "arrays held"):
                held = [blobs[0].data for blobs in net.params.values()] if case == "arrays held" else []
                fwd_med, fwd_min, chk_med, chk_min = measure(net, args.iterations)
                record_mib = sum(e.weight_record_bytes for e in engines(net)) / 2**20
                print(f"{batch:>5} {case:<16} {fwd_med * 1e3:11.3f} {chk_med * 1e3:9.3f} {chk_med / fwd_med:13.1%} "
                      f"{record_mib:11.1f} {weights_mib:12.1f}   (min: forward {fwd_min * 1e3:.3f}, "
                      f"check {chk_min * 1e3:.3f} ms)")
                del held
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
