"""``gsl.py --solver S --weights W [--method gesl|gdns|magnitude] [--sparsity S] [--target-speedup X]
[--prune-iters N] [--finetune-iters M] [--out DIR] [--resume]``: Guided Sparsity Learning
(:mod:`pyskim.prune.gsl`): prune the layers the performance model says pruning makes faster (GESL: L1 +
threshold; GDNS: dynamic network surgery), or every layer by magnitude (the baseline), fine-tune with
masks, and report accuracy, density, speedup and model size.

Under ``mpirun -n N python tools/gsl.py ...`` (N > 1) every stage trains data-parallel on the N
processes (:mod:`pyskim.solvers.distributed`); rank 0 logs, snapshots and prints the report."""
import argparse
import json
import os
import sys

from ..convert.sparse import caffemodel_to_sparse
from ..errors import PyskimError
from ..prune.gsl import DEFAULTS, run_gsl
from ..prune.methods import DNS_START_SPARSITY, DNS_TYPES, METHODS
from ..solvers.distributed import launched_group, use_default_group


def _int_list(text):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1, got '{text}'")
    return values


def build_parser():
    p = argparse.ArgumentParser(prog="gsl.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--solver", required=True, help="the training solver prototxt (its net: a train/test net)")
    p.add_argument("--weights", required=True, help="the dense caffemodel to prune")
    p.add_argument("--out", default="gsl_out", help="output folder (default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    p.add_argument("--method", choices=METHODS, default=DEFAULTS["method"],
                   help="gesl: L1 + threshold on the layers the model picks; gdns: L1_DNS/L2_DNS (pruned "
                        "weights can regrow) there; magnitude: every conv/IP layer to --sparsity by weight "
                        "magnitude at once (the unguided baseline); each then fine-tunes with masks "
                        "(default: %(default)s)")
    p.add_argument("--sparsity", type=float, default=None,
                   help=f"magnitude: the fraction of each layer's weights zeroed (default: {DEFAULTS['sparsity']:g})")
    p.add_argument("--dns-type", choices=DNS_TYPES, default=DEFAULTS["dns_type"],
                   help="gdns: the regularizer of the pruned convolutions (default: %(default)s)")
    p.add_argument("--dns-threshold", type=float, default=None,
                   help="gdns: the pruning threshold on |w| (default: the largest that zeroes at most "
                        "the share 1 - d* of each pruned layer's dense weights its plan floor d* asks for, "
                        f"at least {100 * DNS_START_SPARSITY:g}%%)")
    p.add_argument("--target-speedup", type=float, default=None,
                   help="prune only the layers needed for this predicted net speedup (default: all that gain)")
    p.add_argument("--prune-iters", type=int, default=DEFAULTS["prune_iters"],
                   help="default: %(default)s (magnitude: no prune training)")
    p.add_argument("--finetune-iters", type=int, default=DEFAULTS["finetune_iters"], help="default: %(default)s")
    p.add_argument("--base-lr", type=float, default=None,
                   help=f"prune-stage base_lr (default: {DEFAULTS['lr_scale']:g} x the solver's)")
    p.add_argument("--weight-decay", type=float, default=DEFAULTS["l1_decay"], dest="l1_decay",
                   help="prune-stage weight_decay, the L1 (L2_DNS: L2) strength on pruned layers "
                        "(default: %(default)g)")
    p.add_argument("--prune-threshold", type=float, default=DEFAULTS["prune_threshold"],
                   help="gesl (default: %(default)g)")
    p.add_argument("--max-threshold-factor", type=float, default=DEFAULTS["max_threshold_factor"],
                   help="gesl (default: %(default)g)")
    p.add_argument("--finetune-lr", type=float, default=None, help="fine-tune base_lr (default: the solver's)")
    p.add_argument("--finetune-weight-decay", type=float, default=None, dest="weight_decay",
                   help="fine-tune L2 weight_decay (default: the solver's)")
    p.add_argument("--saving-share", type=float, default=DEFAULTS["saving_share"], metavar="S",
                   help="a pruned layer's floor: the density at which the model gives it the share S of the "
                        "time pruning it to saturation would save (default: %(default)g)")
    p.add_argument("--min-density", type=float, default=DEFAULTS["min_density"],
                   help="lowest density a layer is expected to reach (default: %(default)g)")
    p.add_argument("--finetune-lr-drop", type=float, default=None, metavar="F",
                   help="fine-tune at base_lr for the fraction F of the iterations, then at a tenth of it "
                        "(default: the solver's lr_policy)")
    p.add_argument("--batch", type=int, default=DEFAULTS["batch"], help="batch of the speedup model and timing")
    p.add_argument("--plan-threads", type=int, default=None,
                   help="thread count the model plans for and each stage is timed with (default: --threads)")
    p.add_argument("--measure-iters", type=int, default=DEFAULTS["measure_iters"],
                   help="timed forward passes per layer and stage (0: no timing; default: %(default)s)")
    p.add_argument("--measure-batches", type=_int_list, default=None, metavar="B1,B2",
                   help="batches the final model is timed at, dense vs sparse (default: --batch)")
    p.add_argument("--measure-threads", type=_int_list, default=None, metavar="T1,T2",
                   help="thread counts the final model is timed with (default: the current one)")
    p.add_argument("--threads", type=int, default=0, help="kernel and BLAS threads (default: as set)")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    return p


def run(args):
    """Run GSL and print its report (a table, or JSON with ``--json``); its training stages are
    data-parallel when an MPI launcher started several processes."""
    if args.sparsity is not None and args.method != "magnitude":
        raise PyskimError(f"gsl.py: --sparsity applies to --method magnitude only (got --method {args.method})")
    group = launched_group()
    if group is None:
        return _gsl(args, None)
    with group.fail_together(), use_default_group(group):
        return _gsl(args, group)


def model_sizes(result):
    """Bytes of the dense and final caffemodels and of their sparse ``.npz`` (``pyskim convert
    to-sparse``; the final one is kept as ``<out>/gsl_final.sparse.npz``, the dense one is written to
    ``<out>/dense/dense.sparse.npz``)."""
    sizes = {}
    for key, model, npz in (("dense", result.stages["dense"].files["caffemodel"], "dense/dense.sparse.npz"),
                            ("final", os.path.join(result.out_dir, "gsl_final.caffemodel"),
                             "gsl_final.sparse.npz")):
        sizes[f"{key}_caffemodel"] = os.path.getsize(model)
        sizes[f"{key}_npz"] = caffemodel_to_sparse(model, os.path.join(result.out_dir, npz))["bytes"]
    return sizes


def _gsl(args, group):
    settings = {k: getattr(args, k) for k in DEFAULTS if hasattr(args, k)}
    show = group is None or group.rank == 0       # progress lines and bars: rank 0's only
    try:
        result = run_gsl(args.solver, args.weights, args.out, resume=args.resume, threads=args.threads or None,
                         progress=show, use_bar=show, **settings)
    except KeyboardInterrupt:
        if group is not None:       # one rank interrupted: fail_together ends them all
            raise
        print(f"gsl.py: interrupted; rerun with --resume --out {args.out} to continue", file=sys.stderr)
        return 130
    if group is None or group.rank == 0:
        result.sizes = model_sizes(result)
        result.save()
        print(json.dumps(result.to_dict(), indent=1, default=float) if args.json else result.report())
        print(f"Pruned model: {result.out_dir}/gsl_final.caffemodel (report: {result.out_dir}/gsl.json)")
    return 0
