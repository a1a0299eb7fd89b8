"""How well the performance model predicts this machine: ``pyskim time -accuracy`` over three pruned nets
at batch 1 and 16 on 1 and 2 threads, summarized in one table.

    python benchmarks/model_accuracy.py [--nets caffenet googlenet lenet] [--batches 1 16]
        [--threads 1 2] [--iterations 10] [--recalibrate] [--results FILE]

Nets and weights (written once to a temporary folder):

* ``caffenet``: prototxt/caffenet/deploy.prototxt with benchmarks/make_pruned_caffenet.py's weights
  (SkimCaffe's published densities, conv1 dense);
* ``googlenet``: prototxt/googlenet/deploy_sparse.prototxt (SkimCaffe's GoogLeNet) with random
  He-scaled weights kept at density ``GOOGLENET_DENSITY`` in every convolution and the classifier
  except the first convolution (SkimCaffe's pruned GoogLeNet is not available here);
* ``lenet``: the trained LeNet of ../shared/models/trained/lenet_ethereon, each layer pruned by weight
  magnitude to ``LENET_DENSITIES`` (as GSL leaves it: the large layers sparsest).

Each (net, batch, threads) runs ``tools/time.py --accuracy`` in its own process (``--threads``, forward
only, ``--iterations``; the model's profile for that thread count is calibrated first when none is
cached, or with ``--recalibrate``). Printed per configuration: predictions within 25% of the
measurement (of the dense and the sparse time of every convolution / inner-product layer), AUTO picks
within 10% of the faster mode, the worst AUTO pick, and then every layer's row of ``pyskim time``'s
table; the totals over all configurations last. ``--results`` appends the report to a markdown file.
"""
import argparse
import datetime
import os
import pathlib
import re
import subprocess
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_common import load_average_text
from make_pruned_caffenet import fill_pruned, pruned_weights

SHARED = ROOT.parent / "shared"
GOOGLENET_DENSITY = 0.2
LENET_DENSITIES = {"conv1": 0.6, "conv2": 0.1, "ip1": 0.05, "ip2": 0.3}
MODELS = {"caffenet": ROOT / "prototxt" / "caffenet" / "deploy.prototxt",
          "googlenet": ROOT / "prototxt" / "googlenet" / "deploy_sparse.prototxt",
          "lenet": SHARED / "models" / "trained" / "lenet_ethereon" / "lenet.prototxt"}
SUMMARY = re.compile(r"Model within 25%: (\d+) of (\d+) layer times .* AUTO within 10% of the faster mode on "
                     r"(\d+) of (\d+) layers \(worst ([+-]\d+)%\)")


def write_weights(name, path):
    """Write ``name``'s pruned caffemodel to ``path``."""
    import pyskim
    net = pyskim.Net(str(MODELS[name]), pyskim.TEST)
    if name == "caffenet":
        fill_pruned(net)
    elif name == "googlenet":
        rng = np.random.default_rng(0)
        first = next(iter(net.params))
        for layer, blobs in net.params.items():
            blobs[0].data[...] = pruned_weights(blobs[0].data.shape, 1.0 if layer == first else GOOGLENET_DENSITY, rng)
            for b in blobs[1:]:
                b.data[...] = 0.01
    else:
        net.copy_from(str(SHARED / "models" / "trained" / "lenet_ethereon" / "lenet_iter_10000.caffemodel"))
        for layer, blobs in net.params.items():
            w = blobs[0].data
            keep = max(1, round(LENET_DENSITIES[layer] * w.size))
            threshold = np.sort(np.abs(w).ravel())[-keep]
            w[np.abs(w) < threshold] = 0
    net.save(str(path))


def run_config(name, weights, batch, threads, args):
    """``tools/time.py --accuracy`` for one configuration: (summary numbers or None, table lines, log)."""
    command = [sys.executable, str(ROOT / "tools" / "time.py"), "--model", str(MODELS[name]), "--weights",
               str(weights), "--batch", str(batch), "--threads", str(threads), "--iterations", str(args.iterations),
               "--forward_only", "--accuracy"] + (["--recalibrate"] if args.recalibrate else [])
    env = {k: v for k, v in os.environ.items() if k != "PYSKIM_PERFMODEL"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False, cwd=ROOT)
    messages = [line.split("] ", 1)[1] for line in (result.stdout + result.stderr).splitlines() if "] " in line]
    start = next((i for i, m in enumerate(messages) if m.startswith("Model accuracy")), None)
    if result.returncode or start is None:
        return None, [], result.stdout + result.stderr
    table = messages[start:]
    match = SUMMARY.search(table[-1])
    return (tuple(int(g) for g in match.groups()) if match else None), table, ""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nets", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--recalibrate", action="store_true", help="calibrate each thread count's profile first")
    parser.add_argument("--results", default="", help="append the report to this markdown file")
    args = parser.parse_args(argv)
    command = " ".join(sys.argv[1:] if argv is None else argv)
    report = [(f"Command: `python benchmarks/model_accuracy.py {command}` ({datetime.date.today()}); "
               f"{load_average_text()}."), "",
              "| net | batch | threads | predictions within 25% | AUTO within 10% | worst AUTO pick |",
              "|---|---|---|---|---|---|"]
    details, totals = [], [0, 0, 0, 0]
    with tempfile.TemporaryDirectory(prefix="model_accuracy_") as folder:
        for name in args.nets:
            weights = pathlib.Path(folder) / f"{name}.caffemodel"
            write_weights(name, weights)
            for threads in args.threads:
                for batch in args.batches:
                    numbers, table, failure = run_config(name, weights, batch, threads, args)
                    if numbers is None:
                        raise SystemExit(f"{name} batch {batch} threads {threads} failed:\n{failure}")
                    within, predictions, auto_within, layers, worst = numbers
                    totals = [a + b for a, b in zip(totals, (within, predictions, auto_within, layers))]
                    row = (f"| {name} | {batch} | {threads} | {within} of {predictions} ({within / predictions:.0%}) | "
                           f"{auto_within} of {layers} | {worst:+d}% |")
                    print(row, flush=True)
                    report.append(row)
                    details += ["", f"{name}, batch {batch}, {threads} thread(s):", "", "```"] + table + ["```"]
    within, predictions, auto_within, layers = totals
    report += ["", (f"All: predictions within 25% {within} of {predictions} ({within / predictions:.0%}; goal 80%), "
                    f"AUTO within 10% of the faster mode on {auto_within} of {layers} layers (goal all); "
                    f"{load_average_text()}.")] + details
    print("\n".join(report[-len(details) - 1:]), flush=True)
    if args.results:
        with open(args.results, "a") as f:
            f.write("\n## Performance-model accuracy (benchmarks/model_accuracy.py)\n\n" + "\n".join(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
