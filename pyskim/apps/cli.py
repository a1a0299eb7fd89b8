"""``pyskim <command> [flags]``: Caffe's ``caffe`` tool (``tools/caffe.cpp``) with its flags and log lines.

Commands: ``train`` (``-solver``, ``-weights`` or ``-snapshot``, ``-level``/``-stage``,
``-sigint_effect``/``-sighup_effect``), ``test`` (``-model -weights -iterations``), ``time``
(``-model [-weights] -iterations [-phase] [-forward_only]``) and ``device_query``. Flags take gflags'
spellings (``-x v``, ``-x=v``, ``--x=v``); logs go to stderr in glog's format, so Caffe's
``parse_log.py`` reads them. ``test`` and ``time`` also take pyskim's ``-mode dense|sparse|auto``
(default auto: the performance model picks each layer's conv_mode / gemm_mode where the prototxt
sets none), ``-threads T`` and ``-batch B``; ``time`` also ``-compare`` (see
:mod:`pyskim.apps.time_net`).
"""
import logging
import sys

from ..core.glog import init_logging
from ..errors import PyskimError
from ..solvers.signals import SignalHandler
from . import flags
from . import time_net as time_tool

log = logging.getLogger("pyskim")

USAGE = """command line brew
usage: pyskim <command> <args>

commands:
  train           train or finetune a model
  test            score a model
  device_query    show GPU diagnostic information
  time            benchmark model execution time
  demo            train, prune (GSL) and time LeNet on embedded data (pyskim demo --help)"""



def build_parser():
    parser = flags.new_parser("pyskim", USAGE)
    parser.add_argument("command", nargs="?", help="train, test, time or device_query")
    flags.define(parser, "solver", "", "The solver definition protocol buffer text file.")
    flags.define(parser, "model", "", "The model definition protocol buffer text file.")
    flags.define(parser, "phase", "", "Optional; network phase (TRAIN or TEST). Only used for 'time'.")
    flags.define(parser, "level", 0, "Optional; network level.")
    flags.define(parser, "stage", "", "Optional; network stages (not to be confused with phase), "
                                      "separated by ','.")
    flags.define(parser, "snapshot", "", "Optional; the snapshot solver state to resume training.")
    flags.define(parser, "weights", "", "Optional; the pretrained weights to initialize finetuning, "
                                        "separated by ','. Cannot be set simultaneously with snapshot.")
    flags.define(parser, "iterations", 50, "The number of iterations to run.")
    flags.define(parser, "gpu", "", "Not available in pyskim (CPU only); accepted for compatibility.")
    flags.define(parser, "sigint_effect", "stop", "Optional; action to take when a SIGINT signal is "
                                                  "received: snapshot, stop or none.")
    flags.define(parser, "sighup_effect", "snapshot", "Optional; action to take when a SIGHUP signal is "
                                                      "received: snapshot, stop or none.")
    flags.define(parser, "forward_only", False, "Optional; time the forward pass only (SkimCaffe).")
    time_tool.define_flags(parser)   # -batch -threads -mode -compare (pyskim)
    return parser


def _stages(args):
    return [s for s in args.stage.split(",") if s]


def _use_cpu(args):
    if args.gpu:
        log.warning("pyskim runs on the CPU only; ignoring -gpu %s", args.gpu)
    log.info("Use CPU.")


def train(args):
    from ..io.upgrade import read_solver_text
    from ..solvers import get_solver
    if not args.solver:
        raise PyskimError("Need a solver definition to train.")
    if args.snapshot and args.weights:
        raise PyskimError("Give a snapshot to resume training or weights to finetune but not both.")
    param = read_solver_text(args.solver)
    param.train_state.level = args.level
    param.train_state.stage.extend(_stages(args))
    _use_cpu(args)
    del param.weights[:]
    if args.weights and not args.snapshot:
        param.weights.append(args.weights)
    handler = SignalHandler(args.sigint_effect, args.sighup_effect)
    try:
        solver = get_solver(param)
        solver.action_function = handler.action
        if args.snapshot:
            log.info("Resuming from %s", args.snapshot)
            solver.restore(args.snapshot)
        log.info("Starting Optimization")
        solver.solve()
    finally:
        handler.restore()
    log.info("Optimization Done.")
    return 0


def _fmt(value):
    return f"{float(value):g}"


def test(args):
    import numpy as np

    from ..pycaffe.net import Net
    if not args.model:
        raise PyskimError("Need a model definition to score.")
    if not args.weights:
        raise PyskimError("Need model weights to score.")
    _use_cpu(args)
    time_tool.apply_threads(args.threads)
    param = time_tool.load_param(args.model, args.mode, args.batch)
    net = Net(param, 1, level=args.level, stages=_stages(args), weights=args.weights)
    log.info("Running for %d iterations.", args.iterations)
    loss = np.float32(0)
    scores, owners = None, []
    names, output_ids = net.blob_names(), net.output_blob_indices()
    for i in range(args.iterations):
        outputs, iter_loss = net.forward_prefilled()
        loss += np.float32(iter_loss)
        values = []
        for j, blob in enumerate(outputs):
            name = names[output_ids[j]]
            for score in blob.data.ravel():
                values.append(score)
                if i == 0:
                    owners.append(j)
                log.info("Batch %d, %s = %s", i, name, _fmt(score))
        values = np.asarray(values, dtype=np.float32)
        scores = values if scores is None else scores + values
    loss /= np.float32(max(args.iterations, 1))
    log.info("Loss: %s", _fmt(loss))
    for score, j in zip(scores if scores is not None else [], owners):
        blob_id = output_ids[j]
        weight = net.blob_loss_weight(blob_id)
        mean = np.float32(score) / np.float32(args.iterations)
        note = f" (* {_fmt(weight)} = {_fmt(np.float32(weight) * mean)} loss)" if weight else ""
        log.info("%s = %s%s", names[blob_id], _fmt(mean), note)
    return 0


def time_net(args):
    """``time``: Caffe's benchmark lines plus the per-layer sparse report (:mod:`pyskim.apps.time_net`)."""
    return time_tool.run(args)


def device_query(args):
    log.info("pyskim runs on the CPU only: there are no GPU devices to query.")
    return 0


COMMANDS = {"train": train, "test": test, "time": time_net, "device_query": device_query}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["demo"]:
        from .demo import main as demo_main
        return demo_main(argv[1:])
    parser = build_parser()
    args = flags.parse(parser, argv)
    init_logging()
    command = COMMANDS.get(args.command)
    if command is None:
        print(parser.format_help() if args.command is None else f"Unknown action: {args.command}",
              file=sys.stderr)
        return 1
    try:
        return command(args)
    except PyskimError as e:
        log.error("%s", e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
