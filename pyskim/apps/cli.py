"""``pyskim <command> [args]``: every pyskim command and tool behind one command table, as Caffe's
``tools/caffe.cpp`` registers its actions with ``RegisterBrewFunction``.

The convention every command module in ``pyskim.apps`` follows:

* ``build_parser()`` returns the command's ``argparse.ArgumentParser``. A tool that takes Caffe's
  gflags makes it with :func:`pyskim.apps.flags.new_parser` / :func:`~pyskim.apps.flags.define`
  (``-x v``, ``-x=v``, ``--x=v``, ``-nox``); a tool that takes a Python script's flags (pycaffe's
  ``classify.py``, ``parse_log.py``, ...) builds a plain parser. Caffe's ``train``, ``test``,
  ``time`` and ``device_query`` share one flag set: :func:`pyskim.apps.caffe_command.build_parser`.
* ``run(args)`` does the work with the parsed ``args`` and returns the exit code (0 on success). It
  raises :class:`pyskim.errors.PyskimError` (or lets an ``OSError`` through) for a failure the user
  can fix; it neither parses, sets up logging, nor catches those errors itself.
* No ``main`` and no ``if __name__ == "__main__"`` block: :func:`run_tool` is the one way to run a
  command. It parses the command line, sets up glog-format logging on stderr
  (:func:`pyskim.core.glog.init_logging`), calls ``run`` and turns a ``PyskimError`` or ``OSError``
  into one error log line and exit status 1 (argparse's usage errors exit 2, as before).

:data:`COMMANDS` maps each command name to its module and a one-line summary; ``pyskim`` with no
command prints the usage text listing them. ``tools/<name>.py`` are two-line wrappers:
``sys.exit(run_tool("<name>"))``. Modules are imported when their command runs, so a command's
optional dependencies (matplotlib, pydot, onnx) are needed only by that command.
"""
import importlib
import logging
import sys
from collections import namedtuple

from ..core.glog import init_logging
from ..errors import PyskimError
from . import caffe_command, flags

log = logging.getLogger("pyskim")

Command = namedtuple("Command", "module summary")

COMMANDS = {
    # Caffe's tools/caffe.cpp actions (one flag set: pyskim.apps.caffe_command)
    "train": Command("pyskim.apps.train", "train or finetune a model"),
    "test": Command("pyskim.apps.score", "score a model"),
    "device_query": Command("pyskim.apps.device_query", "show GPU diagnostic information"),
    "time": Command("pyskim.apps.time_net", "benchmark model execution time (with pyskim's sparse report)"),
    # pyskim's own commands
    "demo": Command("pyskim.apps.demo", "train, prune (GSL) and time LeNet on embedded data"),
    "calibrate": Command("pyskim.apps.calibrate", "measure this machine for the performance model"),
    "perf_model": Command("pyskim.apps.perf_model", "per-layer roofline predictions, dense vs sparse"),
    "sparsity": Command("pyskim.apps.sparsity_report", "per-layer weight density, fiber/slice sparsity"),
    "gsl": Command("pyskim.apps.gsl", "Guided Sparsity Learning: prune, fine-tune, report"),
    "convert": Command("pyskim.apps.convert", "caffemodel <-> sparse .npz, ONNX export, upgrade"),
    # Caffe's data and model tools
    "convert_imageset": Command("pyskim.apps.convert_imageset", "images to an LMDB of Datums"),
    "compute_image_mean": Command("pyskim.apps.compute_image_mean", "the mean image of an LMDB"),
    "convert_mnist_data": Command("pyskim.apps.convert_mnist_data", "MNIST idx files to an LMDB"),
    "convert_cifar_data": Command("pyskim.apps.convert_cifar_data", "CIFAR-10 binary batches to LMDBs"),
    "extract_features": Command("pyskim.apps.extract_features", "a net's blobs for a data set, to LMDBs"),
    "upgrade_net_proto": Command("pyskim.apps.upgrade_net_proto", "upgrade a V0/V1 net prototxt or "
                                                                  "caffemodel"),
    "upgrade_solver_proto": Command("pyskim.apps.upgrade_solver_proto", "upgrade an old solver prototxt"),
    # pycaffe's scripts and tools/extra
    "classify": Command("pyskim.apps.classify", "classify images (python/classify.py)"),
    "detect": Command("pyskim.apps.detect", "classify image windows (python/detect.py)"),
    "draw_net": Command("pyskim.apps.draw_net", "draw a net's graph (python/draw_net.py)"),
    "parse_log": Command("pyskim.apps.parse_log", "a training log to CSV files (tools/extra/parse_log.py)"),
    "plot_training_log": Command("pyskim.apps.plot_training_log", "plot training logs "
                                                                  "(tools/extra/plot_training_log.py)"),
    "plot_training": Command("pyskim.apps.plot_training", "loss, accuracy and sparsity curves of a log"),
}

HELP_FLAGS = ("-h", "-help", "--help", "-helpshort", "--helpshort")


def usage():
    """Caffe's usage text, with the commands of :data:`COMMANDS`."""
    width = max(map(len, COMMANDS)) + 2
    lines = ["command line brew", "usage: pyskim <command> <args>", "", "commands:"]
    lines += [f"  {name:<{width}}{command.summary}" for name, command in COMMANDS.items()]
    lines += ["", "pyskim <command> -help lists a command's flags."]
    return "\n".join(lines)


def load(name):
    """The module of command ``name``."""
    return importlib.import_module(COMMANDS[name].module)


def run_tool(name, argv=None):
    """Run command ``name`` on ``argv`` (default ``sys.argv[1:]``): parse with its parser, log in
    glog's format to stderr, call its ``run``; a ``PyskimError`` or ``OSError`` becomes one error log
    line and exit status 1. Returns the exit status."""
    module = load(name)
    args = flags.parse_command_line(module.build_parser(), argv)
    init_logging()
    try:
        return module.run(args)
    except (PyskimError, OSError) as e:
        log.error("%s", e)
        return 1


def split_command(argv):
    """``(command, other arguments)``: the first argument, or where the arguments start with a flag
    (gflags lets Caffe's flags come first: ``caffe -solver s.prototxt train``) the first one naming a
    command (None when none does)."""
    if not argv:
        return None, []
    if not argv[0].startswith("-"):
        return argv[0], argv[1:]
    value_flags = caffe_command.build_parser().gflags_values
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in COMMANDS:
            return arg, argv[:i] + argv[i + 1:]
        # the value of a Caffe flag written as "-flag value" is not a command (-stage test)
        i += 2 if arg.startswith("-") and "=" not in arg and arg.lstrip("-") in value_flags else 1
    return None, argv


def main(argv=None):
    """``pyskim <command> [args]``: dispatch through :data:`COMMANDS`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] and argv[0] in HELP_FLAGS:
        print(usage())
        return 0
    command, rest = split_command(argv)
    if command not in COMMANDS:
        print(usage() if command is None else f"Unknown action: {command}", file=sys.stderr)
        return 1
    return run_tool(command, rest)
