"""Guided Sparsity Learning (SkimCaffe's GSL): prune where the performance model says it pays, with
the paper's two variants (GESL, GDNS) and the unguided magnitude baseline (:mod:`.methods`).

:func:`run_gsl` takes a Caffe solver (its ``net`` a train/test net) and dense weights, and:

1. **plan**: builds the deploy net (batch ``batch``) and asks :mod:`pyskim.perf.model` (through
   :mod:`pyskim.prune.plan`) for each conv / inner-product layer's break-even density ``d_be`` (below it
   the sparse kernel beats dense) and saturation density ``d_sat`` (below it the layer is bandwidth /
   overhead bound: more pruning buys no speed). Its floor ``d* = max(d_k, min_density)``, where ``d_k``
   (:func:`knee_density`) gives the layer the share ``saving_share`` (default ``SAVING_SHARE``) of the
   time pruning to ``d_sat`` would save.
   A layer is pruned when the predicted speedup at ``d*`` is at least ``MIN_LAYER_SPEEDUP`` and the
   time it saves there is at least ``MIN_TIME_SHARE`` of the modelled net's dense time (the model at
   ``plan_threads``); with ``target_speedup`` only
   the layers that save the most time at ``d*`` are taken, until the predicted net speedup reaches it.
   ``method="magnitude"`` prunes every layer instead (the plan is still reported).
2. **prune** stage: ``gesl``: the net with ``regularization_type: "L1"`` on the weight ParamSpec of
   the pruned layers and the solver's L2 elsewhere (as SkimCaffe's hand-made ``train_val_gesl``
   files), the user's solver with ``base_lr``/``weight_decay``/``prune_threshold``/
   ``max_threshold_factor`` overridden; ``gdns``: ``L1_DNS``/``L2_DNS`` there instead (dynamic
   network surgery: pruned weights can regrow), with one threshold ``dns_threshold``. A pruned layer
   whose density falls to its ``d*`` stops being pulled to zero (its weight decay multiplier is set
   to 0; the threshold still holds its zeros), so layers are not pruned past their useful range.
   ``magnitude``: no training; every conv / inner-product layer loses its ``sparsity`` smallest
   weights at once.
3. **finetune** stage: the pruned layers get ``connectivity_mode: DISCONNECTED_ELTWISE`` (masks
   w ≠ 0, so pruned weights stay exactly zero), plain L2 everywhere.

Each stage (and the dense start) is reported: test accuracy, per-layer density, predicted speedup
and measured forward speedup (dense vs sparse, at batch ``batch``); the final model is also timed
at each of ``measure_batches`` × ``measure_threads`` (:mod:`.report`). Everything goes to
``out_dir``: ``gsl.json`` (settings, plan, results), ``report.txt``, ``deploy.prototxt``, and per
stage ``net.prototxt``, ``solver.prototxt``, ``train.log`` (Caffe's log format), snapshots and
``result.json``. ``resume=True`` continues a stopped run from its last solverstate and skips
finished stages.
"""
import contextlib
import dataclasses
import json
import os
import pathlib
import shutil
import time

from ..core.glog import LogToFile, progress_bar
from ..core.net import Net
from ..core.state import log
from ..errors import PyskimError
from ..io.protofiles import write_text
from ..io.upgrade import read_net_text, read_solver_text
from ..kernels.threads import get_num_threads, set_num_threads, using_threads
from ..perf.model import predict
from ..perf.profile import get_profile, use_profile
from ..proto import caffe_pb2
from ..pycaffe.net import Net as WeightsNet
from ..solvers import get_solver
from ..solvers.signals import SignalHandler
from ..sparse.sparsity import density
from . import methods
from . import plan as gsl_perf
from .report import GSLResult, LayerPlan, StageResult

__all__ = ["DEFAULTS", "GSLError", "GSLResult", "LayerPlan", "StageResult", "plan_layers", "run_gsl"]

#: A layer is pruned when the model predicts at least this speedup at its floor ...
MIN_LAYER_SPEEDUP = 1.2
#: ... and when the time it saves there is at least this share of the modelled net's dense time.
MIN_TIME_SHARE = 0.05
#: A layer's floor is by default the density at which it has this share of the time pruning can save
#: it (the saving at its saturation density): the last stretch down to saturation buys little time
#: and costs the most accuracy.
SAVING_SHARE = 0.8
STAGES = ("prune", "finetune")
#: Settings found by experiment on LeNet / Fashion-MNIST (docs/pruning.md); ``None``: from the user's
#: solver (``base_lr``: ``lr_scale`` x its base_lr; ``finetune_lr``: its base_lr; ``weight_decay``: its
#: weight_decay, fine-tuning's L2), GDNS's ``dns_threshold`` from the dense weights
#: (:func:`pyskim.prune.methods.dns_threshold`), ``measure_batches``: [``batch``],
#: ``measure_threads``: [the current thread count], ``plan_threads``: the current thread count,
#: ``finetune_lr_drop``: the solver's own learning-rate policy.
DEFAULTS = {"method": "gesl", "prune_iters": 4000, "finetune_iters": 4000, "base_lr": None, "lr_scale": 0.1,
            "l1_decay": 2e-3, "prune_threshold": 1e-4, "max_threshold_factor": 10.0, "finetune_lr": None,
            "weight_decay": None, "min_density": 0.02, "target_speedup": None, "batch": 64,
            "dns_type": "L1_DNS", "dns_threshold": None, "sparsity": 0.9,
            "measure_iters": 50, "measure_batches": None, "measure_threads": None, "snapshots": 4, "tests": 4,
            "plan_threads": None, "finetune_lr_drop": None, "saving_share": SAVING_SHARE}
SOURCE_FIELDS = (("data_param", "source"), ("image_data_param", "source"), ("hdf5_data_param", "source"),
                 ("window_data_param", "source"), ("transform_param", "mean_file"))


class GSLError(PyskimError):
    """A solver, net or output folder GSL cannot work with."""


# -- the plan ---------------------------------------------------------------------------------------

def knee_density(shape, saturation, break_even, profile, share=SAVING_SHARE):
    """The density between ``saturation`` and ``break_even`` at which the predicted sparse time of
    ``shape`` has come down ``share`` of the way from the dense time to the time at saturation
    (``saturation`` itself when sparse never wins above it)."""
    if break_even <= saturation:
        return saturation

    at_saturation = predict(shape, saturation, profile)
    goal = at_saturation.sparse + (1 - share) * (at_saturation.dense - at_saturation.sparse)
    low, high = saturation, min(1.0, break_even)
    for _ in range(40):                 # the sparse time increases with the density
        middle = 0.5 * (low + high)
        low, high = (middle, high) if predict(shape, middle, profile).sparse <= goal else (low, middle)
    return low


def plan_layers(shapes, counts, min_density=0.02, target_speedup=None, profile=None, saving_share=SAVING_SHARE):
    """:class:`LayerPlan` per modelled layer (see the module docstring for the rule)."""
    profile = profile or get_profile()
    perfs = gsl_perf.predict_layers(shapes, None, profile)
    total_dense = sum(p.dense_ms for p in perfs.values())
    plans = []
    for name, (kind, shape) in shapes.items():
        p = perfs[name]
        knee = knee_density(shape, p.saturation, p.break_even, profile, saving_share)
        floor = max(knee, min_density)
        at_floor = predict(shape, floor, profile)
        gain = at_floor.dense / at_floor.sparse
        share = (p.dense_ms - p.dense_ms / gain) / total_dense if total_dense else 0.0
        ok = gain >= MIN_LAYER_SPEEDUP and p.break_even > floor and share >= MIN_TIME_SHARE
        reason = (f"sparse wins below density {p.break_even:.3f}, saturates at {p.saturation:.3f}, "
                  f"{100 * saving_share:.0f}% of the saving at {knee:.3f}: {gain:.2f}x at {floor:.3f}, "
                  f"saving {100 * share:.0f}% of the net's time")
        if gain < MIN_LAYER_SPEEDUP or p.break_even <= floor:
            reason = f"too little gain: {reason}"
        elif share < MIN_TIME_SHARE:
            reason = f"too small a share of the time: {reason}"
        plans.append(LayerPlan(name, kind, int(counts.get(name, 0)), ok, p.break_even, p.saturation, floor,
                               p.dense_ms, gain, reason))
    if target_speedup:
        chosen = set()
        best = {p.name: p.dense_ms for p in plans}
        for p in sorted((p for p in plans if p.prune), key=lambda p: p.dense_ms / p.speedup_at_floor - p.dense_ms):
            if total_dense / sum(best.values()) >= target_speedup:
                break
            chosen.add(p.name)
            best[p.name] = p.dense_ms / p.speedup_at_floor
        if total_dense / sum(best.values()) < target_speedup:
            log.warning("GSL: the model predicts at most %.2fx for this net; target %.2fx is out of reach",
                        total_dense / sum(best.values()), target_speedup)
        for p in plans:
            if p.prune and p.name not in chosen:
                p.prune, p.reason = False, f"not needed for the {target_speedup:g}x target ({p.reason})"
    return plans


# -- prototxt writing --------------------------------------------------------------------------------

def _resolve(path, bases):
    if not path or os.path.isabs(path):
        return path
    for base in bases:
        candidate = os.path.join(base, path)
        if os.path.exists(candidate):
            return os.path.abspath(candidate)
    return path


def _absolute_sources(net_param, bases):
    for lp in net_param.layer:
        for message, field in SOURCE_FIELDS:
            if lp.HasField(message) and getattr(getattr(lp, message), field):
                sub = getattr(lp, message)
                setattr(sub, field, _resolve(getattr(sub, field), bases))


def _read_user_solver(solver_path):
    param = read_solver_text(solver_path)
    bases = [os.getcwd(), os.path.dirname(os.path.abspath(solver_path))]
    if param.HasField("net_param"):
        net = caffe_pb2.NetParameter()
        net.CopyFrom(param.net_param)
    elif param.HasField("net"):
        net_path = _resolve(param.net, bases)
        if not os.path.exists(net_path):
            raise GSLError(f"net file '{param.net}' of {solver_path} not found (looked in {', '.join(bases)})")
        net = read_net_text(net_path)
        bases.append(os.path.dirname(net_path))
    else:
        raise GSLError(f"{solver_path}: GSL needs a solver with one train/test net ('net' or 'net_param'), "
                       "not train_net/test_net")
    _absolute_sources(net, bases)
    if not len(param.test_iter):
        raise GSLError(f"{solver_path}: GSL needs a test net (test_iter) to report accuracy")
    return param, net


def stage_solver(user, stage, net_file, stage_dir, cfg):
    """The stage's SolverParameter: the user's, with GSL's net, iterations, learning settings,
    snapshots in ``stage_dir`` and regularization (L2; the prune stage's L1 / DNS types come per
    ParamSpec, :func:`pyskim.prune.methods.stage_net`)."""
    s = caffe_pb2.SolverParameter()
    s.CopyFrom(user)
    for field in ("net_param", "train_net", "test_net", "train_net_param", "test_net_param", "weights"):
        s.ClearField(field)
    s.net = str(net_file)
    iters = int(cfg[f"{stage}_iters"])
    s.max_iter = iters
    s.regularization_type = "L2"
    lr = cfg["base_lr"] if cfg["base_lr"] is not None else user.base_lr * cfg["lr_scale"]
    if stage == "prune":
        s.base_lr = lr
        s.weight_decay = cfg["l1_decay"]
        s.prune_threshold, s.max_threshold_factor = methods.prune_thresholds(cfg["method"], cfg)
    else:
        s.base_lr = cfg["finetune_lr"] if cfg["finetune_lr"] is not None else user.base_lr
        s.weight_decay = cfg["weight_decay"] if cfg["weight_decay"] is not None else user.weight_decay
        if cfg["finetune_lr_drop"]:         # Caffe's multistep: base_lr, then a tenth of it
            s.lr_policy, s.gamma = "multistep", 0.1
            s.ClearField("stepvalue")
            s.stepvalue.append(max(1, round(float(cfg["finetune_lr_drop"]) * iters)))
        s.prune_threshold = 0.0           # masks: w != 0
        s.max_threshold_factor = 1.0
    s.test_interval = max(1, iters // max(1, cfg["tests"]))
    s.test_initialization = False
    s.display = min(user.display or 100, max(1, iters // 10))
    s.snapshot = max(1, iters // max(1, cfg["snapshots"]))
    s.snapshot_prefix = str(stage_dir / f"gsl_{stage}")
    s.snapshot_format = caffe_pb2.SolverParameter.BINARYPROTO
    s.snapshot_after_train = True
    return s


# -- running -----------------------------------------------------------------------------------------

def _weight_index(net):
    """``{layer name: learnable param index of its weights}``."""
    out = {}
    names, learnable_ids = net.layer_names(), net.learnable_param_ids()
    for k, (layer_index, blob_index) in enumerate(net.param_layer_indices()):
        if blob_index == 0:
            out.setdefault(names[layer_index], learnable_ids[k])
    return out


def _densities(net, names):
    """``{name: fraction of nonzero weights}`` of the named layers of ``net``."""
    out = {}
    for n in names:
        out[n] = density(net.layer_by_name(n).blobs[0].readonly_data)
    return out


def _latest_state(stage_dir, stage):
    states = sorted(stage_dir.glob(f"gsl_{stage}_iter_*.solverstate"),
                    key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    return states[-1] if states else None


def _run_stage(stage, solver_param, weights, stage_dir, plan, show_progress, use_bar, on_iteration):
    """Train one stage; returns (solver, seconds). ``weights`` are loaded unless a solverstate of an
    earlier try is there (then it is restored)."""
    floors = {p.name: p.floor for p in plan if p.prune} if stage == "prune" else {}
    bar = progress_bar(solver_param.max_iter, f"GSL {stage}", 0) if use_bar else None
    start = time.perf_counter()
    with LogToFile(stage_dir / "train.log", quiet_console=bar is not None):
        solver = get_solver(solver_param)
        state = _latest_state(stage_dir, stage)
        if state is not None:
            log.info("GSL: resuming the %s stage from %s", stage, state)
            solver.restore(str(state))
        else:
            solver.load_weights(str(weights))
        index = _weight_index(solver.net)
        frozen = set()
        total = solver_param.max_iter
        every = max(1, min(solver_param.display, total // 10 or 1))

        def on_start():
            it = solver.iter
            if bar is not None:
                bar.update(it - bar.n)
            if on_iteration is not None:
                on_iteration(stage, it, total)
            shown = it % every == 0
            pulled = {name: floor for name, floor in floors.items() if shown or name not in frozen}
            # every iteration while a layer is pulled: the L1 pull takes it past its floor in a few
            dens = _densities(solver.net, pulled)
            for name, floor in pulled.items():
                if name not in frozen and dens[name] <= floor:
                    solver.net.params_weight_decay[index[name]] = 0.0
                    frozen.add(name)
                    log.info("GSL: %s reached density %.4f <= %.4f (its useful floor): L1 pull off", name,
                             dens[name], floor)
            if not shown:
                return
            if show_progress and bar is None and it:
                log.info("GSL %s: iteration %d/%d, %.0f s%s", stage, it, total, time.perf_counter() - start,
                         "".join(f", {n} {d:.3f}" for n, d in dens.items()))
        solver.add_callback(on_start, lambda: None)
        try:     # Ctrl-C: snapshot and stop (Caffe's -sigint_effect stop); main thread only
            handler = SignalHandler("stop", "snapshot")
            solver.action_function = handler.action
        except ValueError:
            handler = None
        try:
            solver.solve()
        finally:
            if handler is not None:
                handler.restore()
            if bar is not None:
                bar.update(solver.iter - bar.n)
                bar.close()
    if solver.requested_early_exit:
        raise GSLError(f"the {stage} stage was stopped at iteration {solver.iter} (snapshot in {stage_dir}); "
                       "rerun with --resume to continue")
    return solver, time.perf_counter() - start


def _test_scores(solver, reuse=False):
    """``{output name: mean}`` of test net 0: its last test when ``reuse``, else a new test pass."""
    scores = solver.mean_scores[0] if reuse and solver.mean_scores[0] else solver.test(0)
    net = solver.test_nets[0]
    blob_names, blobs = net.blob_names(), net.blob_list()
    names = [blob_names[b] for b in net.output_blob_indices() for _ in range(blobs[b].count)]
    return dict(zip(names, scores))


def _accuracy(scores):
    for key in ("accuracy", *[k for k in scores if "acc" in k.lower()]):
        if key in scores:
            return float(scores[key])
    return float("nan")


def _loss(scores):
    return float(next((v for k, v in scores.items() if "loss" in k.lower()), float("nan")))


def _evaluate(user, net_param, weights, stage_dir):
    """Test accuracy of ``weights`` with the user's test settings (no training)."""
    s = caffe_pb2.SolverParameter()
    s.CopyFrom(user)
    for field in ("net", "train_net", "test_net", "train_net_param", "test_net_param", "weights"):
        s.ClearField(field)
    s.net_param.CopyFrom(net_param)
    s.snapshot = 0
    with LogToFile(stage_dir / "test.log", quiet_console=True):
        solver = get_solver(s)
        solver.load_weights(str(weights))
        return solver, _test_scores(solver)


def _stage_result(stage, solver, scores, seconds, names, shapes, deploy_file, weights, cfg, files, stage_dir):
    densities = _densities(solver.net, names)
    counts = {n: solver.net.layer_by_name(n).blobs[0].count for n in names}
    zeros = sum(counts[n] * (1 - densities[n]) for n in names)
    perfs = gsl_perf.predict_layers(shapes, densities, get_profile(cfg["plan_threads"]))
    measured = None
    if cfg["measure_iters"]:
        with LogToFile(stage_dir / "time.log", quiet_console=True), using_threads(cfg["plan_threads"]):
            measured = gsl_perf.measure_compare(deploy_file, weights, iterations=cfg["measure_iters"])
        files = {**files, "time_log": str(stage_dir / "time.log")}
    return StageResult(stage, _accuracy(scores), _loss(scores), int(solver.iter), seconds, densities,
                       zeros / max(1, sum(counts.values())), {k: v.to_dict() for k, v in perfs.items()},
                       gsl_perf.predicted_net_speedup(perfs), measured, files)


def _load_stage(path):
    data = json.loads(path.read_text())
    data.pop("measured_speedup", None)
    return StageResult(**data)


def _write_stage(stage_dir, result):
    (stage_dir / "result.json").write_text(json.dumps(dataclasses.asdict(result), default=float))


def run_gsl(solver, weights, out_dir, *, resume=False, threads=None, progress=True, use_bar=True,
            on_iteration=None, profile=None, **settings):
    """Run GSL (see the module docstring) and return a :class:`GSLResult`.

    ``solver``: the user's solver prototxt (relative net and data paths: from the current folder, else
    the solver's folder); ``weights``: the dense caffemodel; ``settings``: any of :data:`DEFAULTS`
    (``method``: gesl, gdns or magnitude; ``prune_iters``, ``finetune_iters``, ``base_lr`` (default
    ``lr_scale`` × the solver's), ``l1_decay``, ``prune_threshold``, ``max_threshold_factor`` (GESL),
    ``dns_type`` (L1_DNS or L2_DNS) and ``dns_threshold`` (GDNS), ``sparsity`` (magnitude: the
    fraction of each layer's weights zeroed), ``finetune_lr``, ``weight_decay`` (fine-tuning's L2),
    ``min_density``, ``target_speedup``, ``batch``, ``measure_iters`` (0: no timing),
    ``measure_batches`` and ``measure_threads`` (the final model's timing grid), ``snapshots``,
    ``tests``). ``threads``: kernel and BLAS threads (default: as set).
    ``progress``: log GSL's progress lines; ``use_bar``: a progress bar per stage (tqdm on a terminal,
    else a line at every tenth), Caffe's log lines then going to the stage's log file only;
    ``on_iteration(stage, iteration, max_iter)``: called before every training iteration (e.g. a
    caller's own progress bar). ``profile``: a :class:`pyskim.perf.model.MachineProfile` to use
    instead of the calibrated one. ``resume``: continue the run in ``out_dir`` with its stored
    settings."""
    unknown = set(settings) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"run_gsl: unknown settings {', '.join(sorted(unknown))}")
    out = pathlib.Path(out_dir).resolve()
    state_file = out / "gsl.json"
    stored = json.loads(state_file.read_text()) if state_file.exists() else None
    if stored and resume:
        cfg = {**DEFAULTS, **stored["config"]}
        log.info("GSL: resuming the run in %s with its stored settings", out)
    else:
        if stored:
            raise GSLError(f"{out} already holds a GSL run: pass resume=True (--resume) or another folder")
        cfg = {**DEFAULTS, **{k: v for k, v in settings.items() if v is not None},
               "solver": os.path.abspath(solver), "weights": os.path.abspath(weights)}
    try:
        methods.check_settings(cfg)
    except ValueError as e:
        raise GSLError(f"GSL: {e}") from None
    out.mkdir(parents=True, exist_ok=True)
    if threads:
        set_num_threads(int(threads))
    with use_profile(profile) if profile is not None else contextlib.nullcontext():
        return _run(cfg, out, stored if resume else None, progress, use_bar, on_iteration)


def _run(cfg, out, stored, progress, use_bar, on_iteration):
    started = time.perf_counter()
    user, net_param = _read_user_solver(cfg["solver"])
    deploy = gsl_perf.deploy_param(net_param, cfg["batch"])
    deploy_file = out / "deploy.prototxt"
    write_text(deploy_file, deploy)
    deploy_net = Net(deploy)
    shapes = gsl_perf.layer_shapes(deploy_net)
    names = list(shapes)
    counts = {n: deploy_net.layer_by_name(n).blobs[0].count for n in names}
    if stored:
        plan = [LayerPlan(**p) for p in stored["plan"]]
    else:
        plan = _method_plan(plan_layers(shapes, counts, cfg["min_density"], cfg["target_speedup"],
                                        get_profile(cfg["plan_threads"]), cfg["saving_share"]), cfg)
    for p in plan:
        log.info("GSL plan: %-8s %s (%s)", p.name, "prune" if p.prune else "keep dense", p.reason)
    pruned = [p.name for p in plan if p.prune]
    if not pruned:
        log.warning("GSL: the performance model finds no layer that pruning makes faster on this machine")
    if cfg["method"] == "gdns" and cfg["dns_threshold"] is None and pruned:
        dense = WeightsNet(deploy, caffe_pb2.TEST, weights=cfg["weights"])
        shares = [max(methods.DNS_START_SPARSITY, 1 - p.floor) for p in plan if p.prune]
        cfg["dns_threshold"] = methods.dns_threshold([dense.params[n][0].data for n in pruned], shares)
        log.info("GDNS: prune_threshold %.6g (below it: at most 1 - d* of each pruned layer's dense weights, "
                 "at least %.0f%%)", cfg["dns_threshold"], 100 * methods.DNS_START_SPARSITY)
    result = GSLResult(str(out), cfg, plan, {})
    earlier = stored.get("seconds", 0.0) if stored else 0.0       # wall time of the tries before this one

    def save():
        result.seconds = earlier + time.perf_counter() - started
        result.save()
    save()
    dense_dir = out / "dense"
    dense_dir.mkdir(exist_ok=True)
    if (dense_dir / "result.json").exists():
        result.stages["dense"] = _load_stage(dense_dir / "result.json")
    else:
        start = time.perf_counter()
        solver, scores = _evaluate(user, net_param, cfg["weights"], dense_dir)
        result.stages["dense"] = _stage_result("dense", solver, scores, time.perf_counter() - start, names,
                                               shapes, deploy_file, cfg["weights"], cfg,
                                               {"caffemodel": cfg["weights"], "log": str(dense_dir / "test.log"),
                                                "deploy": str(deploy_file)}, dense_dir)
        _write_stage(dense_dir, result.stages["dense"])
    _report_stage(result.stages["dense"], progress)
    weights = cfg["weights"]
    for stage in STAGES:
        stage_dir = out / stage
        stage_dir.mkdir(exist_ok=True)
        if (stage_dir / "result.json").exists():
            result.stages[stage] = _load_stage(stage_dir / "result.json")
        elif stage == "prune" and cfg["method"] == "magnitude":
            result.stages[stage] = _magnitude_stage(user, net_param, deploy, weights, stage_dir, names, shapes,
                                                    deploy_file, cfg)
            _write_stage(stage_dir, result.stages[stage])
        else:
            result.stages[stage] = _train_stage(stage, user, net_param, pruned, weights, stage_dir, plan, names,
                                                shapes, deploy_file, cfg, progress, use_bar, on_iteration)
            _write_stage(stage_dir, result.stages[stage])
        weights = result.stages[stage].files["caffemodel"]
        _report_stage(result.stages[stage], progress)
        save()
    final = out / "gsl_final.caffemodel"
    shutil.copyfile(weights, final)
    if cfg["measure_iters"]:
        result.timings = _timing_grid(deploy_file, final, cfg, out)
    save()
    return result


def _method_plan(plan, cfg):
    """The model's ``plan``, or for the magnitude baseline every layer pruned to ``1 - sparsity``."""
    if cfg["method"] != "magnitude":
        return plan
    keep = 1.0 - float(cfg["sparsity"])
    return [dataclasses.replace(p, prune=True, floor=keep,
                                reason=f"magnitude baseline: density {keep:g} (model: {p.reason})") for p in plan]


def _train_stage(stage, user, net_param, pruned, weights, stage_dir, plan, names, shapes, deploy_file, cfg,
                 progress, use_bar, on_iteration):
    """Write the stage's net and solver, train it from ``weights``, test and measure it."""
    net_file = stage_dir / "net.prototxt"
    write_text(net_file, methods.stage_net(net_param, pruned, stage, cfg["method"], cfg["dns_type"]))
    param = stage_solver(user, stage, net_file, stage_dir, cfg)
    write_text(stage_dir / "solver.prototxt", param)
    if progress:
        log.info("GSL: %s stage, %d iterations (log: %s)", stage, param.max_iter, stage_dir / "train.log")
    solver, seconds = _run_stage(stage, param, weights, stage_dir, plan, progress, use_bar, on_iteration)
    caffemodel = stage_dir / f"gsl_{stage}_iter_{solver.iter}.caffemodel"
    tested = param.test_interval and solver.iter % param.test_interval == 0
    with LogToFile(stage_dir / "train.log", quiet_console=True):
        scores = _test_scores(solver, reuse=tested)
    files = {"caffemodel": str(caffemodel), "log": str(stage_dir / "train.log"), "net": str(net_file),
             "solver": str(stage_dir / "solver.prototxt"), "deploy": str(deploy_file)}
    return _stage_result(stage, solver, scores, seconds, names, shapes, deploy_file, caffemodel, cfg, files,
                         stage_dir)


def _magnitude_stage(user, net_param, deploy, weights, stage_dir, names, shapes, deploy_file, cfg):
    """The baseline's prune stage: each conv / inner-product layer of ``weights`` loses its
    ``sparsity`` smallest-magnitude weights (:func:`pyskim.prune.methods.magnitude_prune`), no
    training; the result is saved as ``gsl_prune_iter_0.caffemodel`` and tested."""
    start = time.perf_counter()
    net = WeightsNet(deploy, caffe_pb2.TEST, weights=str(weights))
    for name in names:
        zeroed = methods.magnitude_prune(net.params[name][0].data, cfg["sparsity"])
        log.info("magnitude pruning: %s: %d of %d weights zeroed", name, zeroed, net.params[name][0].count)
    caffemodel = stage_dir / "gsl_prune_iter_0.caffemodel"
    net.save(str(caffemodel))
    solver, scores = _evaluate(user, net_param, caffemodel, stage_dir)
    files = {"caffemodel": str(caffemodel), "log": str(stage_dir / "test.log"), "deploy": str(deploy_file)}
    return _stage_result("prune", solver, scores, time.perf_counter() - start, names, shapes, deploy_file,
                         caffemodel, cfg, files, stage_dir)


def _timing_grid(deploy_file, weights, cfg, out):
    """The final model timed dense vs sparse at each batch of ``measure_batches`` and thread count of
    ``measure_threads`` (log: ``<out>/time_grid.log``); the thread count is restored afterwards."""
    batches = cfg["measure_batches"] or [cfg["batch"]]
    rows = []
    with LogToFile(out / "time_grid.log", quiet_console=True):
        for count in cfg["measure_threads"] or [get_num_threads()]:
            with using_threads(count):
                for batch in batches:
                    log.info("GSL timing: batch %d, %d thread(s)", batch, count)
                    measured = gsl_perf.measure_compare(deploy_file, weights, iterations=cfg["measure_iters"],
                                                        batch=int(batch))
                    rows.append({"batch": int(batch), "threads": int(count), **measured})
    return rows


def _report_stage(s, progress):
    if not progress:
        return
    measured = f", measured {s.measured_speedup:.2f}x" if s.measured else ""
    log.info("GSL %s: accuracy %.4f, %.2f%% of weights zero, predicted %.2fx%s; densities %s", s.stage,
             s.accuracy, 100 * s.sparsity, s.predicted_speedup, measured,
             ", ".join(f"{n} {d:.4f}" for n, d in s.densities.items()))
