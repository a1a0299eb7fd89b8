"""Whole CaffeNet forward with SkimCaffe's published densities: pyskim sparse (AUTO) vs pyskim dense vs
PyTorch (same weights) vs onnxruntime (pyskim.convert.onnx_export of the same net), in one run.

    python benchmarks/caffenet_sparse.py [--batches 1 16] [--threads 2] [--rounds 5] [--reps 5]
                                         [--results benchmarks/RESULTS.md]

Weights: benchmarks/make_pruned_caffenet.py's random weights (conv2 14.4%, conv3 6.9%, conv4 8.2%,
conv5 11.5%, fc6 9.7%, fc7 15.6%, fc8 26.2% nonzero; conv1 dense). The pyskim nets are
prototxt/caffenet/deploy.prototxt built with ``--mode auto`` (the roofline model picks each layer's
conv_mode / gemm_mode; the ReLUs after sparse layers are fused) and ``--mode dense``. Each method runs
``--reps`` forwards per round, round-robin over ``--rounds`` rounds, and keeps its fastest forward
(the machine may be shared: the best time is the least disturbed one). All outputs are checked
against pyskim dense (max |prob difference| printed). ``--results`` appends a markdown section.
"""
import argparse
import datetime
import os
import pathlib
import platform
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from make_pruned_caffenet import fill_pruned

MODEL = ROOT / "prototxt" / "caffenet" / "deploy.prototxt"


def pyskim_nets(batch, seed=0):
    import pyskim
    from pyskim.apps.time_net import load_param
    dense = pyskim.Net(load_param(str(MODEL), "dense", batch), pyskim.TEST)
    fill_pruned(dense, seed=seed)
    auto = pyskim.Net(load_param(str(MODEL), "auto", batch), pyskim.TEST)
    for name, blobs in dense.params.items():
        for i, blob in enumerate(blobs):
            auto.params[name][i].data[...] = blob.data
    return dense, auto


def torch_model(net):
    import torch
    from torch import nn
    p = {name: [torch.from_numpy(b.data.copy()) for b in blobs] for name, blobs in net.params.items()}

    def conv(name, stride=1, pad=0, groups=1):
        w, b = p[name]
        layer = nn.Conv2d(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride, pad, groups=groups)
        layer.weight.data, layer.bias.data = w, b
        return layer

    def fc(name):
        w, b = p[name]
        layer = nn.Linear(w.shape[1], w.shape[0])
        layer.weight.data, layer.bias.data = w, b
        return layer

    def lrn():
        return nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)

    def pool():
        return nn.MaxPool2d(3, 2, ceil_mode=True)
    model = nn.Sequential(conv("conv1", 4), nn.ReLU(), pool(), lrn(), conv("conv2", 1, 2, 2), nn.ReLU(), pool(), lrn(),
                          conv("conv3", 1, 1), nn.ReLU(), conv("conv4", 1, 1, 2), nn.ReLU(), conv("conv5", 1, 1, 2),
                          nn.ReLU(), pool(), nn.Flatten(), fc("fc6"), nn.ReLU(), fc("fc7"), nn.ReLU(), fc("fc8"),
                          nn.Softmax(dim=1))
    return model.eval()


def ort_session(net, threads):
    import onnxruntime as ort

    from pyskim.convert.onnx_export import net_to_onnx
    model = net_to_onnx(net, check=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _best(fn, reps):
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def per_layer(net, reps):
    """Fastest forward time of each layer over ``reps`` passes."""
    best = [float("inf")] * len(net.layers)
    for _ in range(reps):
        for i, layer in enumerate(net.layers):
            t0 = time.perf_counter()
            layer.forward(net.bottom_vec(i), net.top_vec(i))
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def run_config(batch, threads, rounds, reps):
    import torch

    from pyskim.kernels.threads import set_num_threads
    from pyskim.perf.profile import get_profile
    from pyskim.sparse import describe
    set_num_threads(threads)
    torch.set_num_threads(threads)
    dense, auto = pyskim_nets(batch)
    x = np.random.default_rng(1).uniform(-1, 1, (batch, 3, 227, 227)).astype(np.float32)
    for net in (dense, auto):
        net.blobs["data"].data[...] = x
        net.forward()
    ref = dense.blobs["prob"].data.copy()
    methods = {"pyskim sparse (AUTO)": lambda: auto.forward(), "pyskim dense": lambda: dense.forward()}
    errors = {"pyskim sparse (AUTO)": float(np.abs(auto.blobs["prob"].data - ref).max())}
    model = torch_model(dense)
    tx = torch.from_numpy(x)
    with torch.inference_mode():
        errors["PyTorch"] = float(np.abs(model(tx).numpy() - ref).max())
    methods["PyTorch"] = lambda: _torch_forward(model, tx)
    try:
        sess = ort_session(dense, threads)
        errors["onnxruntime"] = float(np.abs(sess.run(None, {"data": x})[0] - ref).max())
        methods["onnxruntime"] = lambda: sess.run(None, {"data": x})
    except ImportError:
        pass
    best = dict.fromkeys(methods, float("inf"))
    for _ in range(rounds):
        for name, fn in methods.items():
            fn()
            best[name] = min(best[name], _best(fn, reps))
    layers_auto = per_layer(auto, reps * rounds)
    layers_dense = per_layer(dense, reps * rounds)
    modes = {}
    for i, layer in enumerate(auto.layers):
        info = describe(layer, auto.bottom_vec(i))
        if info:
            modes[layer.name] = (info["used"], info["density"])
    rows = [(layer.name, modes.get(layer.name, ("-", None)), d, s)
            for layer, d, s in zip(auto.layers, layers_dense, layers_auto)]
    return best, errors, rows, get_profile()


def _torch_forward(model, x):
    import torch
    with torch.inference_mode():
        return model(x)


def report(batch, threads, best, errors, rows, profile):
    sparse = best["pyskim sparse (AUTO)"]
    peers = {k: v for k, v in best.items() if k in ("PyTorch", "onnxruntime")}
    best_peer = min(peers, key=peers.get) if peers else None
    lines = [f"#### batch {batch}, {threads} thread(s)", "",
             "| method | best forward ms | sparse speedup vs it | max abs prob diff vs pyskim dense |",
             "|---|---|---|---|"]
    for name, t in best.items():
        ratio = "-" if name.startswith("pyskim sparse") else f"{t / sparse:.2f}x"
        err = f"{errors[name]:.1e}" if name in errors else "0 (reference)"
        lines.append(f"| {name} | {t * 1e3:.2f} | {ratio} | {err} |")
    if best_peer:
        lines += ["", (f"pyskim sparse vs best dense peer ({best_peer}): **{best[best_peer] / sparse:.2f}x**; "
                      f"vs pyskim dense: **{best['pyskim dense'] / sparse:.2f}x**.")]
    lines += ["", "| layer | AUTO mode | density | pyskim dense ms | pyskim sparse ms | speedup |", "|---|---|---|---|---|---|"]
    for name, (mode, density), d, s in rows:
        if d < 5e-5 and s < 5e-5:
            continue
        dens = "-" if density is None else f"{density:.3f}"
        lines.append(f"| {name} | {mode} | {dens} | {d * 1e3:.3f} | {s * 1e3:.3f} | {d / s:.2f}x |")
    total_d, total_s = sum(r[2] for r in rows), sum(r[3] for r in rows)
    lines.append(f"| **sum of layers** | | | {total_d * 1e3:.2f} | {total_s * 1e3:.2f} | {total_d / total_s:.2f}x |")
    lines += ["", (f"Model profile: {profile.source}, bandwidth {profile.bandwidth / 1e9:.1f} GB/s, "
                  f"e_d {profile.dense_eff:.3f}, e_s0 {profile.sparse_eff:.3f}, e_fc {profile.fc_sparse_eff:.3f}, "
                  f"e_spmv {profile.spmv_eff:.4f}."), ""]
    return "\n".join(lines)


def machine():
    import numpy

    from pyskim.perf.profile import cpu_model
    try:
        import torch
        tv = torch.__version__
    except ImportError:
        tv = "-"
    try:
        import onnxruntime
        ov = onnxruntime.__version__
    except ImportError:
        ov = "-"
    return (f"{cpu_model()}, {os.cpu_count()} vCPUs, Python {platform.python_version()}, numpy {numpy.__version__}, "
            f"torch {tv}, onnxruntime {ov}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--threads", type=int, nargs="+", default=[os.cpu_count() or 1])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--results", default="", help="append a markdown section to this file")
    args = parser.parse_args(argv)
    sections = [(f"Machine: {machine()}. Command: `python benchmarks/caffenet_sparse.py "
                f"{' '.join(sys.argv[1:] if argv is None else argv)}` ({datetime.date.today()})."), ""]
    for threads in args.threads:
        for batch in args.batches:
            best, errors, rows, profile = run_config(batch, threads, args.rounds, args.reps)
            text = report(batch, threads, best, errors, rows, profile)
            print(text, flush=True)
            sections.append(text)
    if args.results:
        with open(args.results, "a") as f:
            f.write("\n## Whole pruned CaffeNet (benchmarks/caffenet_sparse.py)\n\n" + "\n".join(sections) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
