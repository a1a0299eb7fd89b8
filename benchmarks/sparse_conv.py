"""AlexNet conv1-5: pyskim direct sparse conv vs pyskim dense (Net Convolution: im2col + BLAS GEMM)
vs PyTorch CPU (oneDNN) vs onnxruntime (CPU provider, MLAS), all measured in the same process.

    python benchmarks/sparse_conv.py [--threads 1 2] [--batches 1 16] [--openblas env unset]
                                     [--densities 1.0 0.3 0.2 0.1 0.05] [--layers conv1 ...]

Each (OpenBLAS environment, thread count) runs in its own subprocess, because OpenBLAS reads
``OPENBLAS_*`` only when numpy loads: ``env`` keeps ``OPENBLAS_CORETYPE`` / ``OPENBLAS_L2_SIZE`` as
they are in the environment, ``unset`` removes both, ``haswell`` sets ``OPENBLAS_CORETYPE=Haswell``
and ``OPENBLAS_L2_SIZE=512`` (what research/peers.md found set). OMP/OpenBLAS/MKL thread counts are
set in the child's environment, and pyskim.kernels.dense.set_num_threads / torch.set_num_threads are
called too.

Weights: Gaussian, pruned by a uniform random element-wise mask (density d = kept fraction).
Times are medians of ``--repeats`` calls after a warm-up; all methods of a layer are timed
round-robin for ``--rounds`` rounds and each keeps its fastest median, so that they all see the same
background load. "useful GF/s" counts only the nonzero MACs (2 * nnz * output positions); "dense GF/s"
counts all of them. Speedups are relative to the
pyskim dense layer, to torch, to onnxruntime ("ort") and to the fastest of the three ("best"). Before each measurement the
script waits (up to --quiet-wait s) for the machine to be idle and reports, per row, the CPU time
other processes used while it was timing ("others", in CPUs; anything above ~0.05 means the row
was measured on a shared machine).
"""
import argparse
import os
import platform
import subprocess
import sys
import time

from bench_common import ALEXNET_CONVS, conv_net

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


# -- machine load -----------------------------------------------------------------------------------

def _jiffies():
    """(busy jiffies of the whole machine, jiffies of this process)."""
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    busy = sum(vals) - vals[3] - vals[4]          # minus idle and iowait
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return busy, int(fields[11]) + int(fields[12])  # utime + stime


class Load:
    """CPU used by other processes between start() and stop(), in CPUs (1.0 = one busy core)."""

    def __init__(self):
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def start(self):
        self.t0, self.j0 = time.perf_counter(), _jiffies()

    def stop(self):
        busy, mine = _jiffies()
        dt = time.perf_counter() - self.t0
        others = (busy - self.j0[0]) - (mine - self.j0[1])
        return max(0.0, others / self.hz / dt) if dt > 0 else 0.0


def wait_quiet(max_wait, threshold=0.05):
    """Wait until other processes use < threshold CPUs over 0.5 s (at most max_wait s)."""
    end = time.perf_counter() + max_wait
    load = Load()
    while True:
        load.start()
        time.sleep(0.5)
        if load.stop() < threshold or time.perf_counter() > end:
            return


def median_time(fn, repeats, load):
    """(median of ``repeats`` timed calls after a warm-up, CPUs used by others meanwhile)."""
    fn()
    times = []
    load.start()
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    others = load.stop()
    times.sort()
    return times[len(times) // 2], others


def race(methods, repeats, rounds, quiet_wait, load):
    """Time every method of ``methods`` (name -> callable) once per round, round-robin, so that
    all of them see the same background load; keep each method's fastest median and the others'
    CPU load of that round."""
    best = {name: (float("inf"), 0.0) for name in methods}
    for _ in range(rounds):
        for name, fn in methods.items():
            if quiet_wait:
                wait_quiet(quiet_wait)
            best[name] = min(best[name], median_time(fn, repeats, load))
    return best


# -- one configuration (child process) --------------------------------------------------------------

def ort_conv(x, w, bias, stride, pad, group, threads):
    """An onnxruntime session running one Conv node (opset 17) on ``x``; returns the call to time."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], strides=[stride] * 2, pads=[pad] * 4, group=group,
                            kernel_shape=list(w.shape[2:]))
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lambda: session.run(None, {"x": x})[0]


def run_child(args):
    import numpy as np
    import onnxruntime
    import torch

    import pyskim.kernels.dense as pk
    from pyskim.kernels.csr import conv_out_hw, pack_conv_weights
    from pyskim.kernels.sparse import sparse_conv_forward

    nt = args.child_threads
    pk.set_num_threads(nt)
    torch.set_num_threads(nt)
    blas = os.environ.get("OPENBLAS_CORETYPE", "(unset)"), os.environ.get("OPENBLAS_L2_SIZE", "(unset)")
    print(f"\n=== threads={nt}  OPENBLAS_CORETYPE={blas[0]} OPENBLAS_L2_SIZE={blas[1]}  "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads)  onnxruntime {onnxruntime.__version__}  "
          f"numpy {np.__version__}")
    print(f"{'layer':6s} {'batch':>5s} {'dens':>5s} {'sparse ms':>9s} {'useful':>7s} {'dense':>7s} "
          f"{'pysk-dense ms':>13s} {'torch ms':>9s} {'ort ms':>8s} {'vs pysk':>7s} {'vs torch':>8s} "
          f"{'vs ort':>6s} {'vs best':>7s} {'others':>6s} {'err':>8s}")
    rng = np.random.default_rng(0)
    layers = [c for c in ALEXNET_CONVS if c[0] in args.layers]
    load = Load()
    for batch in args.batches:
        reps = args.repeats if batch == 1 else max(3, args.repeats // 4)
        totals = {}
        for name, c, hw, oc, k, s, p, g in layers:
            x = rng.standard_normal((batch, c, hw, hw)).astype(np.float32)
            w = rng.standard_normal((oc, c // g, k, k)).astype(np.float32)
            bias = rng.standard_normal(oc).astype(np.float32)
            ohw = conv_out_hw((hw, hw), k, p, s, 1)
            dense_flops = 2.0 * batch * oc * ohw[0] * ohw[1] * (c // g) * k * k
            net = conv_net(batch, c, hw, oc, k, s, p, g)
            net.blobs["data"].data[...] = x
            net.params["conv"][1].data[...] = bias
            tx, tb = torch.from_numpy(x), torch.from_numpy(bias)
            out = np.empty((batch, oc) + ohw, np.float32)
            net.params["conv"][0].data[...] = w

            tw = torch.from_numpy(w)

            def torch_conv(tx=tx, tw=tw, tb=tb, s=s, p=p, g=g):
                with torch.inference_mode():
                    return torch.nn.functional.conv2d(tx, tw, tb, s, p, 1, g)

            methods = {"dense": net.forward, "torch": torch_conv, "ort": ort_conv(x, w, bias, s, p, g, nt)}
            pruned = {}
            for d in args.densities:
                wd = w * (rng.random(w.shape) < d) if d < 1.0 else w
                csr = pack_conv_weights(wd, g, (hw, hw), p, 1)
                pruned[d] = wd, csr

                def sparse(x=x, csr=csr, bias=bias, s=s, p=p, ohw=ohw, out=out):
                    return sparse_conv_forward(x, csr, bias, s, p, 1, ohw, out=out)

                methods[d] = sparse
            res = race(methods, reps, args.rounds, args.quiet_wait, load)
            (td, o_dense), (tt, o_torch), (to, o_ort) = res["dense"], res["torch"], res["ort"]
            best = min(td, tt, to)
            for d in args.densities:
                wd, csr = pruned[d]
                ts, others = res[d]
                tw = torch.from_numpy(wd)
                with torch.inference_mode():
                    ref = torch.nn.functional.conv2d(tx, tw, tb, s, p, 1, g).numpy()
                err = float(np.abs(methods[d]() - ref).max() / max(1e-30, np.abs(ref).max()))
                net.params["conv"][0].data[...] = wd
                net.forward()
                err = max(err, float(np.abs(net.blobs["conv"].data - ref).max() / np.abs(ref).max()))
                useful = dense_flops * csr.density
                print(f"{name:6s} {batch:5d} {d:5.2f} {ts * 1e3:9.3f} {useful / ts / 1e9:7.1f} "
                      f"{dense_flops / ts / 1e9:7.1f} {td * 1e3:13.3f} {tt * 1e3:9.3f} {to * 1e3:8.3f} "
                      f"{td / ts:7.2f} {tt / ts:8.2f} {to / ts:6.2f} {best / ts:7.2f} "
                      f"{max(others, o_dense, o_torch, o_ort):6.2f} {err:8.1e}", flush=True)
                totals[name, d] = (ts, td, tt, to, best)
        names = [c[0] for c in layers]
        for i, subset in enumerate((names, [n for n in names if n != "conv1"])):
            if len(subset) < 2 or (i and len(subset) == len(names)):
                continue
            for d in args.densities:
                ts, td, tt, to, best = (sum(totals[n, d][i] for n in subset) for i in range(5))
                print(f"sum {'+'.join(subset)} batch {batch} d={d:.2f}: sparse {ts * 1e3:.2f} ms, "
                      f"pyskim dense {td * 1e3:.2f}, torch {tt * 1e3:.2f}, ort {to * 1e3:.2f}, per-layer best "
                      f"dense {best * 1e3:.2f}; speedup vs pyskim {td / ts:.2f}x, vs torch {tt / ts:.2f}x, "
                      f"vs ort {to / ts:.2f}x, vs best {best / ts:.2f}x")


# -- driver -----------------------------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--densities", type=float, nargs="+", default=[1.0, 0.3, 0.2, 0.1, 0.05])
    parser.add_argument("--layers", nargs="+", default=[c[0] for c in ALEXNET_CONVS])
    parser.add_argument("--openblas", nargs="+", choices=["env", "unset", "haswell"],
                        default=["env", "unset"])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--quiet-wait", type=float, default=10.0,
                        help="seconds to wait for an idle machine before each measurement")
    parser.add_argument("--rounds", type=int, default=3,
                        help="round-robin rounds over the methods; each method's fastest median is kept")
    parser.add_argument("--child-threads", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_threads:
        run_child(args)
        return
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"python {platform.python_version()}; environment: "
          + ", ".join(f"{v}={os.environ.get(v, '(unset)')}" for v in OPENBLAS_VARS))
    argv = [a for a in sys.argv[1:]]
    for blas in args.openblas:
        for nt in args.threads:
            env = dict(os.environ)
            for v in THREAD_VARS:
                env[v] = str(nt)
            if blas == "unset":
                for v in OPENBLAS_VARS:
                    env.pop(v, None)
            elif blas == "haswell":
                env.update(OPENBLAS_CORETYPE="Haswell", OPENBLAS_L2_SIZE="512")
            what = {"env": "as in the environment", "unset": "unset", "haswell": "set to Haswell / 512"}
            print(f"\n##### OpenBLAS variables: {what[blas]}", flush=True)
            subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--child-threads", str(nt)],
                           env=env, check=True)


if __name__ == "__main__":
    main()
