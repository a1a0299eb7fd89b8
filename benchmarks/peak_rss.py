"""Peak memory of a pruned CaffeNet forward: pyskim sparse (AUTO) and dense, loaded from a caffemodel
file, against onnxruntime on the same net exported to ONNX. No timing.

    python benchmarks/peak_rss.py [--batch 16] [--threads 2] [--folder DIR]

One child process writes the pruned CaffeNet (benchmarks/make_pruned_caffenet.py's weights: SkimCaffe's
published densities, ~240 MB) to a caffemodel and exports it to ONNX
(:func:`pyskim.convert.onnx_export.net_to_onnx`). Then every measurement runs in a fresh child of its
own (bench_common's :class:`~bench_common.Worker`), so that one framework's memory never counts for
another: pyskim builds ``prototxt/caffenet/deploy.prototxt`` at ``--batch`` with ``--mode auto`` or
``dense`` and the caffemodel as weights (``pyskim.Net(param, TEST, weights=...)``, the way a user loads
a model), onnxruntime opens the ONNX file; each then runs one forward on the same random input. Each
child reports its resident memory (``VmRSS``) after importing its framework, after loading, and after
the forward, and its peak (``ru_maxrss``) after loading and after the forward.
"""
import argparse
import os
import pathlib
import resource
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_common as bench

MODEL = ROOT / "prototxt" / "caffenet" / "deploy.prototxt"
MIB = 1 << 20


def resident_mib():
    """This process's resident memory now (``VmRSS``), in MiB; None where /proc is not there."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024 / MIB
    except OSError:
        return None
    return None


def peak_mib():
    """This process's peak resident memory so far (``ru_maxrss``: KiB on Linux, bytes on macOS), in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak * 1024 / MIB


def caffenet_input(batch):
    """The same seeded CaffeNet input in every process."""
    import numpy as np
    return np.random.default_rng(1).uniform(-1, 1, (batch, 3, 227, 227)).astype(np.float32)


class PrepareServer:
    """Writes the pruned caffemodel and its ONNX export (one child, before any measurement)."""

    def __init__(self, threads):
        import pyskim
        self.pyskim = pyskim

    def prepare(self, folder, batch):
        """Write ``folder``/pruned.caffemodel and ``folder``/caffenet.onnx; their paths."""
        from make_pruned_caffenet import fill_pruned

        from pyskim.apps.time_net import load_param
        from pyskim.convert.onnx_export import net_to_onnx
        caffemodel, onnx = os.path.join(folder, "pruned.caffemodel"), os.path.join(folder, "caffenet.onnx")
        net = self.pyskim.Net(load_param(str(MODEL), "dense", batch), self.pyskim.TEST)
        fill_pruned(net)
        net.save(caffemodel)
        with open(onnx, "wb") as f:
            f.write(net_to_onnx(net, check=False).SerializeToString())
        return {"caffemodel": caffemodel, "onnx": onnx}


class PyskimRss:
    """pyskim's child: the net built and loaded from the caffemodel in one mode, one forward."""

    def __init__(self, threads):
        import numpy  # noqa: F401  (numpy first, as in most user scripts)

        import pyskim
        import pyskim.kernels
        if threads:
            pyskim.kernels.set_num_threads(threads)
        self.pyskim = pyskim
        self.imported = resident_mib()

    def measure(self, caffemodel, batch, mode):
        from pyskim.apps.time_net import load_param
        net = self.pyskim.Net(load_param(str(MODEL), mode, batch), self.pyskim.TEST, weights=caffemodel)
        loaded, loaded_peak = resident_mib(), peak_mib()
        net.blobs["data"].data[...] = caffenet_input(batch)
        net.forward()
        released = [name for name, blobs in net.params.items() if blobs[0].data_released]
        return {"imported": self.imported, "loaded": loaded, "loaded_peak": loaded_peak,
                "forward": resident_mib(), "peak": peak_mib(), "note": f"dense weights released: {released}"}


class OrtRss:
    """onnxruntime's child: an InferenceSession on the ONNX file, one run."""

    def __init__(self, threads):
        import numpy  # noqa: F401
        import onnxruntime
        self.ort, self.threads = onnxruntime, threads
        self.imported = resident_mib()

    def measure(self, onnx, batch):
        options = self.ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        session = self.ort.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])
        loaded, loaded_peak = resident_mib(), peak_mib()
        session.run(None, {session.get_inputs()[0].name: caffenet_input(batch)})
        return {"imported": self.imported, "loaded": loaded, "loaded_peak": loaded_peak,
                "forward": resident_mib(), "peak": peak_mib(), "note": f"onnxruntime {self.ort.__version__}"}


SERVERS = {"prepare": PrepareServer, "pyskim": PyskimRss, "onnxruntime": OrtRss}


def in_child(name, threads, env, op, **kwargs):
    """Run ``op(**kwargs)`` in a fresh ``name`` child and end it."""
    worker = bench.Worker(__file__, name, threads, env)
    try:
        return worker.call(op, **kwargs)
    finally:
        worker.close()


def table(results, batch):
    """The report: one row per method, MiB, and each peak over onnxruntime's."""
    reference = results.get("onnxruntime", {}).get("peak")
    lines = [f"Peak memory, pruned CaffeNet forward at batch {batch} (MiB; ru_maxrss / VmRSS)", "",
             "| method | after import | after load | peak while loading | after forward | peak | peak / onnxruntime |",
             "|---|---|---|---|---|---|---|"]
    for method, r in results.items():
        ratio = f"{r['peak'] / reference:.2f}" if reference else "-"
        cells = [r["imported"], r["loaded"], r["loaded_peak"], r["forward"], r["peak"]]
        lines.append(f"| {method} | " + " | ".join("-" if c is None else f"{c:.0f}" for c in cells) + f" | {ratio} |")
    lines.append("")
    lines += [f"{method}: {r['note']}" for method, r in results.items()]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--folder", help="where the caffemodel and the ONNX file go (default: a temp folder)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="peak_rss_") as temp:
        folder = args.folder or temp
        pyskim_env = bench.pyskim_environment(args.threads)
        files = in_child("prepare", args.threads, pyskim_env, "prepare", folder=folder, batch=args.batch)
        results = {}
        for label, mode in (("pyskim sparse (AUTO)", "auto"), ("pyskim dense", "dense")):
            results[label] = in_child("pyskim", args.threads, pyskim_env, "measure", caffemodel=files["caffemodel"],
                                      batch=args.batch, mode=mode)
        try:
            results["onnxruntime"] = in_child("onnxruntime", args.threads, bench.worker_environment(), "measure",
                                              onnx=files["onnx"], batch=args.batch)
        except RuntimeError as error:           # not installed: the table has pyskim's rows only
            print(f"onnxruntime: {error}")
    print(table(results, args.batch))
    return 0


if __name__ == "__main__":
    bench.serve_if_worker(SERVERS)
    sys.exit(main())
