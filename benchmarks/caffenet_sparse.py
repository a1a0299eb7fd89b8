"""pyskim's sparse engine against DeepSparse and the dense engines (onnxruntime, OpenVINO): the whole
pruned CaffeNet and AlexNet's convolutions at density 0.1, one process per framework, in rounds.

    python benchmarks/caffenet_sparse.py [--parts net layers] [--threads 1 2] [--batches 1 16]
        [--rounds 5] [--repeats 10] [--deepsparse-python PY] [--openvino-python PY] [--results FILE]

Peers run only when installed: onnxruntime and OpenVINO (``pip install openvino``) in this interpreter
or the one named by ``--openvino-python``; DeepSparse 1.8.0 in its own virtual environment (it needs
numpy 1.26: ``python -m venv ds && ds/bin/pip install numpy==1.26.4 deepsparse==1.8.0``) named by
``--deepsparse-python ds/bin/python``. Each framework runs in its own child process started from a
clean copy of this script's environment (:mod:`bench_common`); the parent imports none of them.

Part ``net``: CaffeNet (prototxt/caffenet/deploy.prototxt) with SkimCaffe's published densities
(benchmarks/make_pruned_caffenet.py's random weights). pyskim runs it built with ``--mode auto`` (the
performance model picks each layer's mode) and ``--mode dense``; the peers run
``pyskim.convert.onnx_export`` of the same net (the pyskim child writes the ONNX file). Printed per
batch and thread count: each method's median time over the rounds and pyskim AUTO's speedup against
it per round (median, then the rounds), against the best dense engine of each round (the faster of
onnxruntime and OpenVINO), the per-layer times (averages) of AUTO against pyskim dense with the mode AUTO chose,
and every output's largest relative error against pyskim dense.

Part ``layers``: AlexNet's conv1-5 (real groups) and group-1 versions of conv2, conv4 and conv5
(``conv2g1`` ...; DeepSparse does not accelerate grouped convolution), weights pruned to density 0.1
(:func:`bench_common.conv_arrays`). pyskim runs a one-layer Net in DIRECT_SCONV and, as a dense library,
in LOWERED_GEMM; the peers run one ONNX Conv node with the same pruned weights. Printed: per layer the
median times and pyskim's per-round speedups; conv1-5 summed per round against the best dense library
of each round (pyskim dense, onnxruntime, OpenVINO); the group-1 layers (conv2g1, conv3, conv4g1,
conv5g1) against DeepSparse.

Each timed value is the median of ``--repeats`` calls (a quarter of them at batch > 1, at least 3)
after one untimed call; rounds are interleaved (round r times every method once), each method
starting 0.3 s after the previous one ended so that a peer's spinning threads have gone to sleep. The
load average is printed before and after each configuration. ``--results`` appends the report to a
markdown file.
"""
import argparse
import datetime
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile

import bench_common as bench

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODEL = ROOT / "prototxt" / "caffenet" / "deploy.prototxt"
#: Weight density of the per-layer part (fraction kept).
LAYER_DENSITY = 0.1
REAL_GROUP_LAYERS = [conv[0] for conv in bench.ALEXNET_CONVS]
#: The per-layer comparison with DeepSparse: every AlexNet convolution with group 1.
GROUP1_LAYERS = ["conv2g1", "conv3", "conv4g1", "conv5g1"]
DENSE_ENGINES = ("onnxruntime", "openvino")
SETTLE = 0.3


def case_input(kind, batch, name=None):
    """The input of a case, the same in every process: CaffeNet's data blob (uniform in [-1, 1], seed 1)
    or the seeded input of AlexNet layer ``name``."""
    import numpy as np
    if kind == "net":
        return np.random.default_rng(1).uniform(-1, 1, (batch, 3, 227, 227)).astype(np.float32)
    return bench.conv_arrays(name, batch)[0]


def pruned_caffenets(batch):
    """pyskim's CaffeNet at ``batch`` built in dense mode and in AUTO mode, both with the pruned weights."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from make_pruned_caffenet import fill_pruned

    import pyskim
    from pyskim.apps.time_net import load_param
    dense = pyskim.Net(load_param(str(MODEL), "dense", batch), pyskim.TEST)
    fill_pruned(dense)
    auto = pyskim.Net(load_param(str(MODEL), "auto", batch), pyskim.TEST)
    for name, blobs in dense.params.items():
        for i, blob in enumerate(blobs):
            auto.params[name][i].data[...] = blob.data
    return dense, auto


class PyskimCases(bench.PyskimServer):
    """pyskim's child: the sparse and the dense Net of a case, and the ONNX file the peers run."""

    def build(self, kind, batch, onnx, name=None):
        x = case_input(kind, batch, name)
        if kind == "net":
            from pyskim.convert.onnx_export import net_to_onnx
            dense, sparse = pruned_caffenets(batch)
            model = net_to_onnx(dense, check=False)
            output = "prob"
        else:
            _, w, bias = bench.conv_arrays(name, batch, LAYER_DENSITY)
            dense = bench.pyskim_conv_net(name, batch, x, w, bias)
            sparse = bench.pyskim_conv_net(name, batch, x, w, bias, "DIRECT_SCONV")
            model = bench.conv_onnx_model(name, w, bias)
            output = "conv"
        with open(onnx, "wb") as f:
            f.write(model.SerializeToString())
        for net in (dense, sparse):
            net.blobs["data"].data[...] = x
        if kind == "net":
            from pyskim.sparse import settle_auto_trials
            settle_auto_trials(sparse)          # AUTO's close calls timed before the rounds start
        self.nets = {"dense": dense, "sparse": sparse}
        return {"pyskim sparse": (sparse.forward, lambda outputs: outputs[output]),
                "pyskim dense": (dense.forward, lambda outputs: outputs[output])}

    def layer_rows(self, repeats):
        """Per layer of the sparse Net: name, the mode it ran, weight density, average forward ms of the
        dense and of the sparse Net over ``repeats`` passes (:func:`pyskim.perf.timing.time_nets`)."""
        from pyskim.perf.timing import time_nets
        from pyskim.sparse import describe
        dense_times, sparse_times = time_nets([self.nets["dense"], self.nets["sparse"]], repeats)
        sparse = self.nets["sparse"]
        rows = []
        for i, layer in enumerate(sparse.layers):
            info = describe(layer, sparse.bottom_vec(i)) or {}
            rows.append([layer.name, info.get("used", "-"), info.get("density"), dense_times[i] * 1e3,
                         sparse_times[i] * 1e3])
        return rows

    def profile_text(self):
        """The machine profile the performance model used."""
        from pyskim.perf.profile import get_profile
        p = get_profile()
        return (f"{p.source}, bandwidth {p.bandwidth / 1e9:.1f} GB/s, e_d {p.dense_eff:.3f}, e_s0 {p.sparse_eff:.3f} "
                f"(batch 8: {p.batched_dense_eff:.3f}, {p.batched_sparse_eff:.3f}), "
                f"e_fc {p.fc_sparse_eff:.3f}, e_spmv {p.spmv_eff:.4f}")


def peer(base):
    """A peer's child: ``base`` (a :class:`bench_common.Server` with ``onnx_call``) running a case's ONNX file."""
    class Peer(base):
        def build(self, kind, batch, onnx, name=None):
            return {self.label: (self.onnx_call(onnx, case_input(kind, batch, name)), lambda y: y)}
    Peer.label = {"ort": "onnxruntime"}.get(base.framework, base.framework)
    return Peer


SERVERS = {"pyskim": PyskimCases, "onnxruntime": peer(bench.OrtServer), "openvino": peer(bench.OpenVinoServer),
           "deepsparse": peer(bench.DeepSparseServer)}


def importable(python, module):
    """Whether ``python -c 'import module'`` succeeds."""
    result = subprocess.run([python, "-c", f"import {module}"], capture_output=True, check=False,
                            env=bench.worker_environment())
    return result.returncode == 0


def start_workers(threads, args):
    """pyskim's child and one per installed peer."""
    workers = {"pyskim": bench.Worker(__file__, "pyskim", threads, bench.pyskim_environment(threads))}
    peers = [("onnxruntime", "onnxruntime", sys.executable), ("openvino", "openvino", args.openvino_python),
             ("deepsparse", "deepsparse", args.deepsparse_python)]
    for label, module, python in peers:
        if python and importable(python, module):
            workers[label] = bench.Worker(__file__, label, threads, bench.worker_environment(), python)
    return workers


def run_case(workers, case, rounds, repeats, folder):
    """Set up ``case`` in every worker (pyskim first: it writes the ONNX file), check every output
    against pyskim dense and time all methods in interleaved rounds. Returns (method -> seconds per
    round, method -> relative error)."""
    onnx = os.path.join(folder, "case.onnx")
    owners = {}
    for label, worker in workers.items():
        if label == "deepsparse" and case.get("name") in ("conv2", "conv4", "conv5"):
            continue                  # grouped: DeepSparse runs them dense (its group-1 versions are measured)
        for method in worker.call("setup", onnx=onnx, **case):
            owners[method] = worker

    def saved(method):
        path = os.path.join(folder, f"{method.replace(' ', '_')}.npy")
        owners[method].call("save", method=method, path=path)
        return path
    reference = saved("pyskim dense")
    errors = {method: bench.max_relative_error(saved(method), reference) for method in owners if method != "pyskim dense"}
    timers = {method: (lambda w=worker, m=method: w.call("time", method=m, repeats=repeats))
              for method, worker in owners.items()}
    return bench.interleaved_rounds(timers, rounds, settle=SETTLE), errors


def best_of(seconds, methods):
    """Per round, the fastest of ``methods`` (those measured)."""
    present = [m for m in methods if m in seconds]
    return [min(t) for t in zip(*(seconds[m] for m in present))] if present else None


def method_table(seconds, errors):
    """Markdown rows: each method's median ms, pyskim sparse's per-round speedup against it, its error."""
    sparse = seconds["pyskim sparse"]
    lines = ["| method | median ms | pyskim sparse speedup (per round) | max rel. error vs pyskim dense |",
             "|---|---|---|---|"]
    for method, times in seconds.items():
        ratio = "-" if method == "pyskim sparse" else bench.ratio_text(times, sparse)
        error = "reference" if method == "pyskim dense" else f"{errors[method]:.1e}"
        lines.append(f"| {method} | {statistics.median(times) * 1e3:.2f} | {ratio} | {error} |")
    return lines


def net_part(workers, batch, threads, args, folder):
    """Whole pruned CaffeNet at ``batch``: the report section."""
    repeats = args.repeats if batch == 1 else max(3, args.repeats // 4)
    seconds, errors = run_case(workers, {"kind": "net", "batch": batch}, args.rounds, repeats, folder)
    sparse = seconds["pyskim sparse"]
    lines = [f"#### Whole pruned CaffeNet, batch {batch}, {threads} thread(s)", ""] + method_table(seconds, errors)
    best_dense = best_of(seconds, DENSE_ENGINES)
    lines.append("")
    if best_dense:
        lines.append(f"pyskim AUTO vs the best dense engine per round: **{bench.ratio_text(best_dense, sparse)}** "
                     "(goal >= 2.5).")
    if "deepsparse" in seconds:
        lines.append(f"pyskim AUTO vs DeepSparse: **{bench.ratio_text(seconds['deepsparse'], sparse)}** (goal >= 1.2).")
    rows = workers["pyskim"].call("layer_rows", repeats=max(5, repeats))
    lines += ["", "| layer | AUTO mode | density | pyskim dense ms | pyskim AUTO ms | speedup |", "|---|---|---|---|---|---|"]
    for name, mode, density, dense_ms, sparse_ms in rows:
        if dense_ms < 0.05 and sparse_ms < 0.05:
            continue
        shown = "-" if density is None else f"{density:.3f}"
        lines.append(f"| {name} | {mode} | {shown} | {dense_ms:.3f} | {sparse_ms:.3f} | {dense_ms / sparse_ms:.2f}x |")
    total_dense, total_sparse = sum(r[3] for r in rows), sum(r[4] for r in rows)
    lines += [f"| **sum of layers** | | | {total_dense:.2f} | {total_sparse:.2f} | {total_dense / total_sparse:.2f}x |",
              "", f"Model profile: {workers['pyskim'].call('profile_text')}.", ""]
    return lines


def layers_part(workers, batch, threads, args, folder):
    """AlexNet's convolutions at density 0.1 and ``batch``: the report section."""
    repeats = args.repeats if batch == 1 else max(3, args.repeats // 4)
    lines = [f"#### AlexNet convolutions at density {LAYER_DENSITY}, batch {batch}, {threads} thread(s)", "",
             ("| layer | pyskim sparse ms | pyskim dense ms | onnxruntime ms | OpenVINO ms | DeepSparse ms | "
              "vs best dense (per round) | vs DeepSparse | max rel. error |"), "|---|---|---|---|---|---|---|---|---|"]
    measured = {}
    for name in REAL_GROUP_LAYERS + [n for n in GROUP1_LAYERS if n not in REAL_GROUP_LAYERS]:
        seconds, errors = run_case(workers, {"kind": "conv", "batch": batch, "name": name}, args.rounds, repeats,
                                   folder)
        seconds["best dense"] = best_of(seconds, ("pyskim dense",) + DENSE_ENGINES)
        measured[name] = seconds

        def ms(method, seconds=seconds):
            return f"{statistics.median(seconds[method]) * 1e3:.3f}" if method in seconds else "-"
        sparse = seconds["pyskim sparse"]
        versus_ds = bench.ratio_text(seconds["deepsparse"], sparse) if "deepsparse" in seconds else "-"
        lines.append(f"| {name} | {ms('pyskim sparse')} | {ms('pyskim dense')} | {ms('onnxruntime')} | "
                     f"{ms('openvino')} | {ms('deepsparse')} | {bench.ratio_text(seconds['best dense'], sparse)} | "
                     f"{versus_ds} | {max(errors.values()):.1e} |")

    def total(names, method):
        if not all(method in measured[n] for n in names):
            return None
        return [sum(t) for t in zip(*(measured[n][method] for n in names))]
    versus_dense = bench.ratio_text(total(REAL_GROUP_LAYERS, "best dense"), total(REAL_GROUP_LAYERS, "pyskim sparse"))
    lines += ["", (f"conv1-5 (real groups) summed per round, pyskim sparse vs the best dense library of each layer "
                   f"and round: **{versus_dense}** (goal >= 3.5).")]
    deepsparse = total(GROUP1_LAYERS, "deepsparse")
    if deepsparse:
        lines.append(f"Group-1 conv2-5 summed per round, pyskim sparse vs DeepSparse: "
                     f"**{bench.ratio_text(deepsparse, total(GROUP1_LAYERS, 'pyskim sparse'))}** (goal >= 1.2).")
    return lines + [""]


def cpu_text():
    """The CPU's model name, family and model (/proc/cpuinfo) and the vCPU count."""
    fields = {}
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    return (f"{fields.get('model name', platform.machine())} (family {fields.get('cpu family', '?')} model "
            f"{fields.get('model', '?')}), {os.cpu_count()} vCPUs")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=["net", "layers"], default=["net", "layers"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--deepsparse-python", default="", help="interpreter of DeepSparse's virtual environment")
    parser.add_argument("--openvino-python", default=sys.executable, help="interpreter that has OpenVINO")
    parser.add_argument("--results", default="", help="append the report to this markdown file")
    args = parser.parse_args(argv)
    command = " ".join(sys.argv[1:] if argv is None else argv)
    report = [(f"Machine: {cpu_text()}, Python {platform.python_version()}. Command: "
               f"`python benchmarks/caffenet_sparse.py {command}` ({datetime.date.today()})."), ""]
    print(report[0], flush=True)
    with tempfile.TemporaryDirectory(prefix="caffenet_sparse_") as folder:
        for threads in args.threads:
            print(f"\n=== {threads} thread(s); {bench.load_average_text()}", flush=True)
            workers = start_workers(threads, args)
            try:
                for worker in workers.values():
                    line = "  " + worker.call("info")
                    print(line, flush=True)
                    report.append(f"- {line.strip()}")
                report.append("")
                for part in args.parts:
                    for batch in args.batches:
                        section = (net_part if part == "net" else layers_part)(workers, batch, threads, args, folder)
                        print("\n".join(section), flush=True)
                        report += section
            finally:
                for worker in workers.values():
                    worker.close()
            tail = f"=== {threads} thread(s) done; {bench.load_average_text()}"
            print(tail, flush=True)
            report += [tail, ""]
    if args.results:
        with open(args.results, "a") as f:
            f.write("\n## Sparse engine vs DeepSparse and the dense engines (benchmarks/caffenet_sparse.py)\n\n"
                    + "\n".join(report) + "\n")
    return 0


if __name__ == "__main__":
    bench.serve_if_worker(SERVERS)
    sys.exit(main())
