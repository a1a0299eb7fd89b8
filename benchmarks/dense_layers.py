"""Dense forward (and backward) time of AlexNet's conv layers: pyskim's Net vs PyTorch and onnxruntime,
one process per framework, interleaved in rounds.

    python benchmarks/dense_layers.py [--batches 1 16] [--threads 1 2] [--rounds 5] [--repeats 5]
                                      [--passes forward backward] [--layers conv1 ...] [--peers torch ort]

Needs: pyskim, and for the peers torch (``pip install torch``), onnxruntime and onnx; threadpoolctl
(``pip install threadpoolctl``) for the thread-pool report. None of them is a pyskim dependency.

* pyskim: a one-Convolution deploy prototxt (LOWERED_GEMM: pyskim's dense products) loaded as a
  pycaffe ``Net`` with the layer's weights; the timed call is ``net.forward()``, or for the backward
  pass ``net.clear_param_diffs(); net.backward()`` of the same net with ``force_backward`` (weight,
  bias and bottom gradients, as a training iteration does).
* PyTorch: ``torch.nn.functional.conv2d`` under ``inference_mode`` (oneDNN); onnxruntime: one Conv node,
  CPU provider (MLAS). Both allocate their output per call; same weights, input and bias as pyskim
  (seeded in each process, :func:`bench_common.conv_arrays`); every output is checked against pyskim's.
  PyTorch's backward is ``torch.autograd.grad`` of the conv2d output (input, weight and bias gradients;
  the forward runs once, untimed); onnxruntime has none.

Each thread count in ``--threads`` (0: each framework's default) starts fresh children, one per
framework, from a clean copy of this script's environment (see bench_common: the parent never imports
a framework; pyskim's child imports numpy first, as most user scripts do). Per layer and batch, round r
times pyskim, then each peer once (median of ``--repeats`` calls after one warm-up), then round r + 1.
Each framework's timing starts ``--settle`` seconds after the previous one ended (the
peers' OpenMP / onnxruntime pools spin-wait after a call and would take the next framework's cores).
Printed: median times over the rounds, useful GFLOP/s, and the ratio peer_time / pyskim_time (> 1: pyskim
is faster) per round with its median; conv1-5 summed per round the same way. Each child's thread pools
(threadpoolctl) and the load average before and after are printed too.
"""
import argparse
import os
import platform
import statistics
import tempfile

import bench_common as bench

PEERS = ("torch", "ort")


class PyskimConv(bench.PyskimServer):
    def build(self, name, batch):
        x, w, bias = bench.conv_arrays(name, batch)
        net = bench.pyskim_conv_net(name, batch, x, w, bias)
        train = bench.pyskim_conv_net(name, batch, x, w, bias, backward=True)
        train.forward()
        train.blobs["conv"].diff[...] = bench.top_diff_array(name, batch)

        def backward():          # as a solver iteration: clear the parameter diffs, then backward
            train.clear_param_diffs()
            train.backward()
            return train
        grads = lambda n: bench.np_concat(n.blobs["data"].diff, n.params["conv"][0].diff)
        return {"conv": (net.forward, lambda outputs: outputs["conv"]), "conv_backward": (backward, grads)}


class TorchConv(bench.TorchServer):
    def build(self, name, batch):
        arrays = bench.conv_arrays(name, batch)
        return {"conv": (bench.torch_conv_call(name, *arrays), lambda y: y.numpy()),
                "conv_backward": bench.torch_conv_backward_call(name, *arrays, bench.top_diff_array(name, batch))}


class OrtConv(bench.OrtServer):
    def build(self, name, batch):
        return {"conv": (bench.ort_conv_call(name, *bench.conv_arrays(name, batch), self.threads), lambda y: y)}


SERVERS = {"pyskim": PyskimConv, "torch": TorchConv, "ort": OrtConv}


def start_workers(threads, peers):
    """One child per framework: pyskim with its thread variables, each peer in its default environment."""
    workers = {"pyskim": bench.Worker(__file__, "pyskim", threads, bench.pyskim_environment(threads))}
    for peer in peers:
        workers[peer] = bench.Worker(__file__, peer, threads, bench.worker_environment())
    return workers


#: The timed method of each pass, and the peers that have it (onnxruntime has no backward).
PASSES = {"forward": ("conv", ("torch", "ort")), "backward": ("conv_backward", ("torch",))}


def measure(threads, args, folder):
    """All passes, layers and batches at one thread count; prints the rows and the conv1-5 sums."""
    print(f"\n=== threads {threads or 'default'}; {bench.load_average_text()}", flush=True)
    workers = start_workers(threads, args.peers)
    try:
        reported = False
        for pass_name in args.passes:
            method, able = PASSES[pass_name]
            peers = [p for p in args.peers if p in able]
            labels = ["pyskim", *peers]
            header = f"{pass_name}\n{'layer':6s} {'batch':>5s} " + " ".join(f"{f + ' ms':>10s} {'GF/s':>6s}" for f in labels)
            header += "".join(f"  {p + '/pyskim per round (median first)':>36s}  {'err':>7s}" for p in peers)
            for batch in args.batches:
                sums = {label: [0.0] * args.rounds for label in labels}
                for name in args.layers:
                    for label in labels:
                        workers[label].call("setup", name=name, batch=batch)
                    if not reported:
                        for worker in workers.values():
                            print("  " + worker.call("info"))
                        reported = True
                    if header:
                        print(header)
                        header = ""
                    sums = _layer_row(workers, labels, peers, method, name, batch, args, folder, sums)
                if len(args.layers) > 1:
                    medians = ", ".join(f"{label} {statistics.median(s) * 1e3:.2f} ms" for label, s in sums.items())
                    print(f"{'+'.join(args.layers)} batch {batch} {pass_name}: {medians}; " + "; ".join(
                        f"{peer}/pyskim {bench.ratio_text(sums[peer], sums['pyskim'])}" for peer in peers), flush=True)
    finally:
        for worker in workers.values():
            worker.close()
    print(f"=== threads {threads or 'default'} done; {bench.load_average_text()}", flush=True)


def _layer_row(workers, labels, peers, method, name, batch, args, folder, sums):
    """Time ``method`` of one layer and batch in interleaved rounds, print its row; the sums with it."""
    paths = {label: os.path.join(folder, f"{label}.npy") for label in labels}
    for label in labels:
        workers[label].call("save", method=method, path=paths[label])
    seconds = bench.interleaved_rounds(
        {label: (lambda w=workers[label]: w.call("time", method=method, repeats=args.repeats)) for label in labels},
        args.rounds, settle=args.settle)
    flops = bench.conv_flops(name, batch) * (2 if method == "conv_backward" else 1)
    line = f"{name:6s} {batch:5d} "
    line += " ".join(f"{statistics.median(s) * 1e3:10.3f} {flops / statistics.median(s) / 1e9:6.1f}"
                     for s in seconds.values())
    for peer in peers:
        error = bench.max_relative_error(paths[peer], paths["pyskim"])
        line += f"  {bench.ratio_text(seconds[peer], seconds['pyskim']):>36s}  {error:7.1e}"
    print(line, flush=True)
    return {label: [a + b for a, b in zip(sums[label], seconds[label])] for label in labels}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--threads", type=int, nargs="+", default=[0],
                        help="thread counts, one set of processes each (0: each framework's default)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds over the frameworks")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per framework and round (median)")
    parser.add_argument("--passes", nargs="+", default=["forward"], choices=list(PASSES),
                        help="forward (net.forward) and/or backward (net.backward: weight and bottom gradients)")
    parser.add_argument("--settle", type=float, default=0.3,
                        help="seconds between one framework's timing and the next (their pools go to sleep)")
    parser.add_argument("--layers", nargs="+", default=[c[0] for c in bench.ALEXNET_CONVS],
                        choices=[c[0] for c in bench.ALEXNET_CONVS])
    parser.add_argument("--peers", nargs="*", default=list(PEERS), choices=PEERS)
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, python "
          f"{platform.python_version()}; {bench.load_average_text()}")
    with tempfile.TemporaryDirectory(prefix="dense_layers_") as folder:
        for threads in args.threads:
            measure(threads, args, folder)


if __name__ == "__main__":
    bench.serve_if_worker(SERVERS)
    main()
