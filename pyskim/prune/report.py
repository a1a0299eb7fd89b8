"""What a GSL run reports: the plan per layer, the result of each stage, and the run as a whole, with
their text tables (:mod:`pyskim.prune.gsl` fills them; ``<out>/gsl.json`` stores them).

* :class:`LayerPlan`: the performance model's verdict on one layer before pruning.
* :class:`StageResult`: one stage (``dense``, ``prune``, ``finetune``): test accuracy, per-layer
  density, predicted and measured speedup.
* :class:`GSLResult`: the run: settings, plan, stages, the final model's timing grid (forward time
  dense vs sparse per batch and thread count), model sizes and wall time; :meth:`GSLResult.report`
  is the text ``tools/gsl.py`` prints, :meth:`GSLResult.load` reads a ``gsl.json`` back.
* :func:`methods_table`: several runs side by side (GESL, GDNS and the magnitude baseline).
"""
import dataclasses
import json
import os
import pathlib


@dataclasses.dataclass
class LayerPlan:
    """The model's verdict on one layer, before pruning."""

    name: str
    type: str
    count: int
    prune: bool
    break_even: float
    saturation: float
    floor: float            # the density pruning stops at (d*)
    dense_ms: float
    speedup_at_floor: float
    reason: str


@dataclasses.dataclass
class StageResult:
    """One stage's outcome (``dense`` is the starting model)."""

    stage: str
    accuracy: float
    loss: float
    iterations: int
    seconds: float
    densities: dict
    sparsity: float                       # fraction of all weights (conv + FC) that are zero
    predicted: dict                       # layer -> LayerPerf.to_dict()
    predicted_speedup: float
    measured: dict = None                 # pyskim.prune.plan.measure_compare result
    files: dict = dataclasses.field(default_factory=dict)

    @property
    def measured_speedup(self):
        return self.measured["speedup"] if self.measured else None


@dataclasses.dataclass
class GSLResult:
    """What :func:`pyskim.prune.gsl.run_gsl` returns (also written to ``<out>/gsl.json``).

    ``timings``: the final model measured dense vs sparse, one dict per (batch, threads) with
    ``batch``, ``threads``, ``dense_ms``, ``sparse_ms``, ``speedup`` and ``layers``; ``sizes``: file
    sizes in bytes (``tools/gsl.py`` adds the caffemodels' and their sparse ``.npz``'s);
    ``seconds``: the wall time of the run (all stages, tests and timing; summed over resumed tries)."""

    out_dir: str
    config: dict
    plan: list
    stages: dict                          # "dense", "prune", "finetune" -> StageResult
    timings: list = dataclasses.field(default_factory=list)
    sizes: dict = dataclasses.field(default_factory=dict)
    seconds: float = 0.0

    @property
    def method(self):
        return self.config.get("method", "gesl")

    @property
    def final(self):
        return self.stages.get("finetune") or self.stages.get("prune") or self.stages["dense"]

    def to_dict(self):
        return {"out_dir": self.out_dir, "config": self.config,
                "plan": [dataclasses.asdict(p) for p in self.plan],
                "stages": {k: {**dataclasses.asdict(s), "measured_speedup": s.measured_speedup}
                           for k, s in self.stages.items()},
                "timings": self.timings, "sizes": self.sizes, "seconds": self.seconds}

    @classmethod
    def load(cls, path):
        """The result stored in ``path`` (a ``gsl.json``)."""
        data = json.loads(pathlib.Path(path).read_text())
        stages = {}
        for name, stage in data["stages"].items():
            stage = dict(stage)
            stage.pop("measured_speedup", None)
            stages[name] = StageResult(**stage)
        return cls(data["out_dir"], data["config"], [LayerPlan(**p) for p in data["plan"]], stages,
                   data.get("timings", []), data.get("sizes", {}), data.get("seconds", 0.0))

    def save(self):
        """Write ``gsl.json`` (through a temp file per process: MPI ranks save alike, at once) and,
        once the dense start is measured, ``report.txt`` in :attr:`out_dir`."""
        out = pathlib.Path(self.out_dir)
        tmp = out / f".gsl.json.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(self.to_dict(), indent=1, default=float))
        os.replace(tmp, out / "gsl.json")
        if "dense" in self.stages:
            (out / "report.txt").write_text(self.report() + "\n")

    def table(self):
        """The stages as text: one column per stage."""
        names = [p.name for p in self.plan]
        stages = list(self.stages.values())
        width = 12
        lines = [f"{'method ' + self.method:<22}" + "".join(f"{s.stage:>{width}}" for s in stages)]

        def row(label, fn):
            lines.append(f"{label:<22}" + "".join(f"{fn(s):>{width}}" for s in stages))
        row("test accuracy", lambda s: f"{s.accuracy:.4f}")
        row("weights zero", lambda s: f"{100 * s.sparsity:.2f}%")
        for n in names:
            row(f"density {n}", lambda s, n=n: f"{s.densities.get(n, 1.0):.4f}")
        row("predicted speedup", lambda s: f"{s.predicted_speedup:.2f}x")
        row("measured dense ms", lambda s: f"{s.measured['dense_ms']:.2f}" if s.measured else "-")
        row("measured sparse ms", lambda s: f"{s.measured['sparse_ms']:.2f}" if s.measured else "-")
        row("measured speedup", lambda s: f"{s.measured_speedup:.2f}x" if s.measured else "-")
        row("iterations", lambda s: str(s.iterations))
        row("seconds", lambda s: f"{s.seconds:.0f}")
        return "\n".join(lines)

    def layer_table(self):
        """The final model per layer: density, the model's prediction (the mode AUTO picks, dense and
        predicted ms, speedup) next to the measurement (the mode run, dense and sparse ms, speedup) at
        the plan's batch."""
        final = self.final
        header = (f"{'layer':<10}{'density':>9}  {'predicted mode':<15}{'dense ms':>9}{'AUTO ms':>9}{'pred.':>8}"
                  f"  {'measured mode':<22}{'dense ms':>9}{'sparse ms':>10}{'meas.':>8}")
        lines = [header]
        measured = (final.measured or {}).get("layers", {})
        for p in self.plan:
            pred = final.predicted.get(p.name)
            meas = measured.get(p.name)
            if pred is None:
                continue
            best = pred["dense_ms"] / pred["auto_speedup"] if pred["auto_speedup"] else float("nan")
            text = (f"{p.name:<10}{final.densities.get(p.name, 1.0):>9.4f}  {pred['mode']:<15}"
                    f"{pred['dense_ms']:>9.3f}{best:>9.3f}{pred['auto_speedup']:>7.2f}x")
            if meas:
                ratio = meas["dense_ms"] / meas["sparse_ms"] if meas["sparse_ms"] > 0 else float("inf")
                text += f"  {meas['mode']:<22}{meas['dense_ms']:>9.3f}{meas['sparse_ms']:>10.3f}{ratio:>7.2f}x"
            lines.append(text)
        return "\n".join(lines)

    def timing_table(self):
        """The final model's whole-net forward time, dense vs sparse, per batch and thread count."""
        lines = [f"{'batch':>6}{'threads':>9}{'dense ms':>11}{'sparse ms':>11}{'speedup':>9}"]
        for t in self.timings:
            lines.append(f"{t['batch']:>6}{t['threads']:>9}{t['dense_ms']:>11.3f}{t['sparse_ms']:>11.3f}"
                         f"{t['speedup']:>8.2f}x")
        return "\n".join(lines)

    def report(self):
        """Everything as text: the stages, the final model per layer, the timing grid, sizes, wall time."""
        batch = self.config.get("batch", "-")
        parts = [self.table(), "", f"final model per layer (batch {batch}): prediction vs measurement",
                 self.layer_table()]
        if self.timings:
            parts += ["", "final model, whole-net forward (dense vs AUTO sparse modes)", self.timing_table()]
        if self.sizes:
            parts += ["", "sizes: " + ", ".join(f"{k} {v / 1024:.1f} KiB" for k, v in self.sizes.items())]
        parts += ["", f"wall time of the run: {self.seconds:.0f} s"]
        return "\n".join(parts)


def methods_table(results):
    """Several runs side by side (one column per :class:`GSLResult`, headed by its method): dense and
    final accuracy, zero weights, per-layer density, the timing grid's speedups, sparse npz size,
    wall time."""
    width = 14
    names = list(dict.fromkeys(p.name for r in results for p in r.plan))
    grid = list(dict.fromkeys((t["batch"], t["threads"]) for r in results for t in r.timings))
    lines = [f"{'':<30}" + "".join(f"{r.method:>{width}}" for r in results)]

    def row(label, fn):
        lines.append(f"{label:<30}" + "".join(f"{fn(r):>{width}}" for r in results))
    row("dense accuracy", lambda r: f"{r.stages['dense'].accuracy:.4f}")
    row("final accuracy", lambda r: f"{r.final.accuracy:.4f}")
    row("weights zero", lambda r: f"{100 * r.final.sparsity:.2f}%")
    for n in names:
        row(f"density {n}", lambda r, n=n: f"{r.final.densities.get(n, 1.0):.4f}")
    row("predicted speedup", lambda r: f"{r.final.predicted_speedup:.2f}x")
    for batch, threads in grid:
        row(f"ms dense/sparse b{batch} t{threads}",
            lambda r, key=(batch, threads): _timing_cell(r, key, "{dense_ms:.2f}/{sparse_ms:.2f}"))
        row(f"  speedup b{batch} t{threads}",
            lambda r, key=(batch, threads): _timing_cell(r, key, "{speedup:.2f}x"))
    row("sparse npz KiB", lambda r: f"{r.sizes['final_npz'] / 1024:.1f}" if "final_npz" in r.sizes else "-")
    row("fine-tune iterations", lambda r: str(r.stages["finetune"].iterations) if "finetune" in r.stages else "-")
    row("wall time s", lambda r: f"{r.seconds:.0f}")
    return "\n".join(lines)


def _timing_cell(result, key, template):
    """``template`` filled from ``result``'s timing at ``key`` = (batch, threads), or "-" when none."""
    timing = next((t for t in result.timings if (t["batch"], t["threads"]) == key), None)
    return template.format(**timing) if timing else "-"
