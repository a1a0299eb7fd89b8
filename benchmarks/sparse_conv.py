"""AlexNet conv1-5: pyskim's direct sparse conv (through the Net, and the raw kernel) vs pyskim dense vs
PyTorch CPU (oneDNN) vs onnxruntime (CPU provider, MLAS), one process per framework, interleaved in rounds.

    python benchmarks/sparse_conv.py [--threads 1 2] [--batches 1 16] [--openblas env unset]
                                     [--densities 1.0 0.3 0.2 0.1 0.05] [--layers conv1 ...]
                                     [--rounds 3] [--repeats 20] [--quiet-wait 10]

Needs: pyskim, torch (``pip install torch``), onnxruntime and onnx; threadpoolctl (``pip install
threadpoolctl``) for the thread-pool report. None of them is a pyskim dependency.

Methods, all on the same seeded input, weights and bias (:func:`bench_common.conv_arrays`; weights
pruned by a uniform random element-wise mask, density d = kept fraction):

* ``net``: a one-Convolution deploy prototxt with ``conv_mode: DIRECT_SCONV`` loaded as a pycaffe
  ``Net`` with the pruned weights; timed call ``net.forward()`` (the engine packs at the first forward;
  later forwards include its weight-change check).
* ``kernel``: :func:`pyskim.kernels.sparse.sparse_conv_forward` on weights packed once, allocating its
  output per call as the peers do.
* ``pyskim dense``: the same Net in LOWERED_GEMM (im2col + BLAS GEMM) with the unpruned weights;
  ``torch``: ``F.conv2d`` under ``inference_mode``; ``ort``: one Conv node. The dense peers do not skip
  zeros, so they run the unpruned weights.

Each (``--openblas`` setting, thread count) starts fresh children, one per framework, from a clean
copy of this script's environment (the parent never imports a framework). ``--openblas`` changes only
the pyskim child's OpenBLAS variables: ``env`` keeps ``OPENBLAS_CORETYPE`` / ``OPENBLAS_L2_SIZE`` as
they are, ``unset`` removes both, ``haswell`` sets ``OPENBLAS_CORETYPE=Haswell OPENBLAS_L2_SIZE=512``.
Threads: ``pyskim.kernels.set_num_threads`` + ``OMP_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS`` for
pyskim, ``torch.set_num_threads``, ``intra_op_num_threads``. Per layer and batch, round r times every
method once (median of ``--repeats`` calls after a warm-up; batch > 1 uses a quarter of them, at
least 3), after waiting up to ``--quiet-wait`` s for an idle machine; then round r + 1.

Printed per row: median ms over the rounds, useful GF/s of the Net (2 * nonzero MACs / time), the
speedup of the Net against the best dense of each round (the fastest of pyskim dense, torch and ort
in that round) per round with its median, the median per-round speedups of the kernel against the
best dense and of the Net against each dense method, and the largest relative error against PyTorch
with the same pruned weights. Then conv1-5 (and conv2-5) summed per round. Each child's thread pools
(threadpoolctl) and the load average before and after each configuration are printed too.
"""
import argparse
import os
import platform
import statistics
import tempfile

import bench_common as bench

OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
OPENBLAS_SETTINGS = {"env": "as in the environment", "unset": "unset", "haswell": "Haswell / 512"}
DENSE_METHODS = ("pyskim dense", "torch", "ort")


class PyskimSparse(bench.PyskimServer):
    def build(self, name, batch, densities):
        from pyskim.kernels.csr import conv_out_hw, pack_conv_weights
        from pyskim.kernels.sparse import sparse_conv_forward
        _, _, size, _, kernel, stride, pad, group = bench.alexnet_conv(name)
        out_hw = conv_out_hw((size, size), kernel, pad, stride, 1)
        x, w, bias = bench.conv_arrays(name, batch)
        dense = bench.pyskim_conv_net(name, batch, x, w, bias)
        methods = {"pyskim dense": (dense.forward, lambda outputs: outputs["conv"])}
        self.densities = {}
        for d in densities:
            wd = bench.conv_arrays(name, batch, d)[1]
            net = bench.pyskim_conv_net(name, batch, x, wd, bias, "DIRECT_SCONV")
            csr = pack_conv_weights(wd, group, (size, size), pad, 1)
            self.densities[str(d)] = csr.density

            def kernel_call(csr=csr):
                return sparse_conv_forward(x, csr, bias, stride, pad, 1, out_hw)
            methods[f"net {d}"] = (net.forward, lambda outputs: outputs["conv"])
            methods[f"kernel {d}"] = (kernel_call, lambda y: y)
        return methods

    def weight_densities(self):
        """Fraction of nonzero weights per requested density (as packed)."""
        return self.densities


class TorchConv(bench.TorchServer):
    def build(self, name, batch, densities):
        x, w, bias = bench.conv_arrays(name, batch)
        methods = {"torch": (bench.torch_conv_call(name, x, w, bias), lambda y: y.numpy())}
        for d in densities:      # references for the output check, not timed
            methods[f"pruned {d}"] = (bench.torch_conv_call(name, x, bench.conv_arrays(name, batch, d)[1], bias),
                                      lambda y: y.numpy())
        return methods


class OrtConv(bench.OrtServer):
    def build(self, name, batch, densities):
        return {"ort": (bench.ort_conv_call(name, *bench.conv_arrays(name, batch), self.threads), lambda y: y)}


SERVERS = {"pyskim": PyskimSparse, "torch": TorchConv, "ort": OrtConv}


def start_workers(threads, openblas):
    """The three children: pyskim with its thread variables and ``openblas`` setting, the peers in
    their default environment."""
    if openblas == "unset":
        pyskim_env = bench.pyskim_environment(threads, drop=OPENBLAS_VARS)
    elif openblas == "haswell":
        pyskim_env = bench.pyskim_environment(threads, extra={"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "512"})
    else:
        pyskim_env = bench.pyskim_environment(threads)
    return {"pyskim": bench.Worker(__file__, "pyskim", threads, pyskim_env),
            "torch": bench.Worker(__file__, "torch", threads, bench.worker_environment()),
            "ort": bench.Worker(__file__, "ort", threads, bench.worker_environment())}


def check_errors(workers, densities, folder):
    """Largest relative error, per density, of the Net and the kernel against PyTorch with the same
    pruned weights (and of each dense method against PyTorch's dense output)."""
    def saved(worker, method):
        path = os.path.join(folder, f"{method.replace(' ', '_')}.npy")
        worker.call("save", method=method, path=path)
        return path
    torch_dense = saved(workers["torch"], "torch")
    error = max(bench.max_relative_error(saved(workers["pyskim"], "pyskim dense"), torch_dense),
                bench.max_relative_error(saved(workers["ort"], "ort"), torch_dense))
    errors = {}
    for d in densities:
        ref = saved(workers["torch"], f"pruned {d}")
        errors[d] = max(error, *(bench.max_relative_error(saved(workers["pyskim"], f"{m} {d}"), ref)
                                 for m in ("net", "kernel")))
    return errors


def measure(threads, openblas, args, folder):
    """Every layer, batch and density in one (OpenBLAS setting, thread count) configuration."""
    print(f"\n=== threads {threads}, pyskim's OpenBLAS variables {OPENBLAS_SETTINGS[openblas]}; "
          f"{bench.load_average_text()}", flush=True)
    workers = start_workers(threads, openblas)
    try:
        reported = False
        for batch in args.batches:
            repeats = args.repeats if batch == 1 else max(3, args.repeats // 4)
            rows = {}
            for name in args.layers:
                methods = {label: worker.call("setup", name=name, batch=batch, densities=args.densities)
                           for label, worker in workers.items()}
                if not reported:
                    for worker in workers.values():
                        print("  " + worker.call("info"))
                    print(f"{'layer':6s} {'batch':>5s} {'dens':>5s} {'net ms':>8s} {'kernel ms':>9s} {'useful':>6s} "
                          f"{'pysk-dense':>10s} {'torch ms':>8s} {'ort ms':>8s}  {'net vs best dense per round':>28s} "
                          f"{'kernel':>6s} {'vs pysk':>7s} {'vs torch':>8s} {'vs ort':>6s} {'err':>7s}")
                    reported = True
                errors = check_errors(workers, args.densities, folder)
                kept = workers["pyskim"].call("weight_densities")
                timers = {}
                for label, worker in workers.items():
                    for method in methods[label]:
                        if not method.startswith("pruned"):
                            timers[method] = (lambda w=worker, m=method, r=repeats: w.call("time", method=m, repeats=r))
                seconds = bench.interleaved_rounds(timers, args.rounds, args.quiet_wait)
                best = [min(t) for t in zip(*(seconds[m] for m in DENSE_METHODS))]
                seconds["best dense"] = best
                rows[name] = seconds
                median = {m: statistics.median(s) for m, s in seconds.items()}
                flops = bench.conv_flops(name, batch)
                for d in args.densities:
                    net, kernel = seconds[f"net {d}"], seconds[f"kernel {d}"]

                    def speedup(dense, sparse=net):
                        return f"{bench.median_ratio(dense, sparse):.2f}"
                    print(f"{name:6s} {batch:5d} {d:5.2f} {median[f'net {d}'] * 1e3:8.3f} "
                          f"{median[f'kernel {d}'] * 1e3:9.3f} {flops * kept[str(d)] / median[f'net {d}'] / 1e9:6.1f} "
                          f"{median['pyskim dense'] * 1e3:10.3f} {median['torch'] * 1e3:8.3f} "
                          f"{median['ort'] * 1e3:8.3f}  {bench.ratio_text(best, net):>28s} {speedup(best, kernel):>6s} "
                          f"{speedup(seconds['pyskim dense']):>7s} {speedup(seconds['torch']):>8s} "
                          f"{speedup(seconds['ort']):>6s} {errors[d]:7.1e}", flush=True)
            print_sums(rows, batch, args)
    finally:
        for worker in workers.values():
            worker.close()
    print(f"=== threads {threads}, OpenBLAS {OPENBLAS_SETTINGS[openblas]} done; {bench.load_average_text()}", flush=True)


def print_sums(rows, batch, args):
    """conv1-5 and conv2-5 (when measured) summed per round: the Net and the kernel against each dense
    method and against the sum of each round's per-layer best dense."""
    names = list(rows)
    for subset in (names, [n for n in names if n != "conv1"]):
        if len(subset) < 2 or (subset is not names and len(subset) == len(names)):
            continue

        def total(method, subset=subset):
            return [sum(t) for t in zip(*(rows[n][method] for n in subset))]
        best = total("best dense")
        for d in args.densities:
            net, kernel = total(f"net {d}"), total(f"kernel {d}")
            print(f"sum {'+'.join(subset)} batch {batch} d={d:.2f}: net {statistics.median(net) * 1e3:.2f} ms, "
                  f"kernel {statistics.median(kernel) * 1e3:.2f}, pyskim dense "
                  f"{statistics.median(total('pyskim dense')) * 1e3:.2f}, torch "
                  f"{statistics.median(total('torch')) * 1e3:.2f}, ort {statistics.median(total('ort')) * 1e3:.2f}, "
                  f"per-layer best dense {statistics.median(best) * 1e3:.2f}; net vs best {bench.ratio_text(best, net)}, "
                  f"kernel vs best {bench.ratio_text(best, kernel)}, net vs pyskim dense "
                  f"{bench.ratio_text(total('pyskim dense'), net)}, vs torch {bench.ratio_text(total('torch'), net)}, "
                  f"vs ort {bench.ratio_text(total('ort'), net)}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--densities", type=float, nargs="+", default=[1.0, 0.3, 0.2, 0.1, 0.05])
    parser.add_argument("--layers", nargs="+", default=[c[0] for c in bench.ALEXNET_CONVS],
                        choices=[c[0] for c in bench.ALEXNET_CONVS])
    parser.add_argument("--openblas", nargs="+", choices=list(OPENBLAS_SETTINGS), default=["env", "unset"])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--quiet-wait", type=float, default=10.0,
                        help="seconds to wait for an idle machine before each round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds over the methods")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"python {platform.python_version()}; environment: "
          + ", ".join(f"{v}={os.environ.get(v, '(unset)')}" for v in OPENBLAS_VARS) + f"; {bench.load_average_text()}")
    with tempfile.TemporaryDirectory(prefix="sparse_conv_") as folder:
        for openblas in args.openblas:
            for threads in args.threads:
                measure(threads, openblas, args, folder)


if __name__ == "__main__":
    bench.serve_if_worker(SERVERS)
    main()
