"""``pyskim train -solver S [-weights W | -snapshot S] [-level L] [-stage a,b] [-sigint_effect E]
[-sighup_effect E]``: Caffe's ``caffe train`` (``tools/caffe.cpp``), with its log lines.

As in Caffe, the solver file's ``weights:`` are kept unless ``-snapshot`` (which clears them) or
``-weights`` (which replaces them) is given. While stderr is a terminal a progress line shows the
iterations per second and the time left below the log lines; log files get Caffe's lines only.

Under ``mpirun -n N`` / ``mpiexec -n N`` (N > 1) the N processes train one model data-parallel
(:mod:`pyskim.solvers.distributed`): rank 0 logs and snapshots, each rank uses cores / N threads
unless ``-threads`` or ``OMP_NUM_THREADS`` says otherwise, and an error on any rank ends them all.
"""
import logging

from ..errors import PyskimError
from ..io.upgrade import read_solver_text
from ..solvers import get_solver
from ..solvers.distributed import launched_group
from ..solvers.signals import SignalHandler
from .caffe_command import apply_threads, build_parser, stages, terminal_progress, use_cpu

__all__ = ["build_parser", "run"]

log = logging.getLogger("pyskim")


def solver_parameter(args):
    """The SolverParameter of ``-solver`` with the flags applied as ``caffe.cpp``'s ``train`` does."""
    if not args.solver:
        raise PyskimError("Need a solver definition to train.")
    if args.snapshot and args.weights:
        raise PyskimError("Give a snapshot to resume training or weights to finetune but not both.")
    param = read_solver_text(args.solver)
    param.train_state.level = args.level
    param.train_state.stage.extend(stages(args))
    if args.snapshot or args.weights:
        del param.weights[:]
    if args.weights:
        param.weights.append(args.weights)
    return param


def run(args):
    """Train (or resume, or fine-tune) until the solver's ``max_iter`` or a stop signal; data-parallel
    when an MPI launcher started several processes."""
    param = solver_parameter(args)
    group = launched_group()
    if group is None:
        return _train(args, param, None)
    with group.fail_together():
        return _train(args, param, group)


def _train(args, param, group):
    use_cpu(args)
    apply_threads(args.threads)
    handler = SignalHandler(args.sigint_effect, args.sighup_effect)
    try:
        solver = get_solver(param, group=group)
        solver.action_function = handler.action
        if args.snapshot:
            log.info("Resuming from %s", args.snapshot)
            solver.restore(args.snapshot)
        log.info("Starting Optimization")
        with terminal_progress(param.max_iter, "train", initial=solver.iter,
                               enabled=group is None or group.rank == 0) as bar:
            if bar is not None:
                solver.add_callback(lambda: bar.update(solver.iter - bar.n), lambda: None)
            solver.solve()
            if bar is not None:
                bar.update(solver.iter - bar.n)
    finally:
        handler.restore()
    log.info("Optimization Done.")
    return 0
