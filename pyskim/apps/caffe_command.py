"""What the actions of Caffe's ``caffe`` tool (``tools/caffe.cpp``: ``train``, ``test``, ``time``,
``device_query``) share: one gflags flag set, the CPU notice, the stage list, and the progress line
``train`` and ``test`` show while stderr is a terminal.

As in ``caffe.cpp``, every action accepts every flag and reads the ones it needs. Beside Caffe's flags
the set has SkimCaffe's ``-forward_only`` and pyskim's ``-batch``, ``-threads``, ``-mode`` and
``-compare`` (read by ``test`` and ``time``; see :mod:`pyskim.apps.time_net`).
"""
import contextlib
import logging
import sys

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ..errors import PyskimError
from ..kernels.threads import set_num_threads
from . import flags

log = logging.getLogger("pyskim")

DESCRIPTION = "Caffe's command line brew: pyskim train | test | time | device_query [flags]"


def build_parser():
    """The flag set of ``caffe.cpp`` (gflags spellings), shared by its four actions."""
    parser = flags.new_parser("pyskim", DESCRIPTION)
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
    flags.define(parser, "batch", 0, "Optional; batch size of the net's inputs (0: as in the prototxt).")
    flags.define(parser, "threads", 0, "Optional; threads of pyskim's thread pool (0: default, OMP_NUM_THREADS or the CPUs).")
    flags.define(parser, "mode", "auto", "Optional; dense, sparse or auto: conv_mode/gemm_mode of the "
                                         "convolution and inner-product layers (auto: the performance "
                                         "model picks, where the prototxt sets no mode).")
    flags.define(parser, "compare", False, "Optional; also time the net dense and sparse and print the "
                                           "per-layer speedups.")
    return parser


def apply_threads(threads):
    """``-threads T``: use ``T`` threads in pyskim's thread pool (0: leave it as it is)."""
    if threads < 0:
        raise PyskimError(f"threads must be positive, got {threads}")
    if threads:
        set_num_threads(threads)
        log.info("Using %d threads.", threads)


def stages(args):
    """The ``-stage`` list (``caffe.cpp``'s ``get_stages_from_flags``)."""
    return [s for s in args.stage.split(",") if s]


def use_cpu(args):
    """Caffe's "Use CPU." line; ``-gpu`` is accepted and ignored (pyskim runs on the CPU only)."""
    if args.gpu:
        log.warning("pyskim runs on the CPU only; ignoring -gpu %s", args.gpu)
    log.info("Use CPU.")


@contextlib.contextmanager
def terminal_progress(total, description, initial=0, enabled=True):
    """A progress line (iterations/s, time left) at the bottom of stderr while stderr is a terminal,
    with the log lines printed above it unchanged (tqdm's logging redirect); yields the bar, or None
    when stderr is not a terminal (log files, CI) or ``enabled`` is false (the ranks of a
    data-parallel run other than 0): nothing is added to the log there."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    with logging_redirect_tqdm(loggers=[log]), \
            tqdm(total=total, initial=initial, desc=description, unit="iter", file=sys.stderr,
                 dynamic_ncols=True) as bar:
        yield bar
