"""``pyskim test -model M -weights W [-iterations N] [-level L] [-stage a,b] [-mode dense|sparse|auto]
[-threads T] [-batch B]``: Caffe's ``caffe test`` (``tools/caffe.cpp``), with its log lines.

Runs the TEST-phase net ``-iterations`` times, logs every output value of every batch, then the mean
loss and each output's mean (with its loss contribution for a loss output). ``-mode``, ``-threads``
and ``-batch`` are pyskim's (see :mod:`pyskim.apps.time_net`). While stderr is a terminal a progress
line shows the iterations per second and the time left below the log lines.
"""
import logging

import numpy as np

from ..errors import PyskimError
from ..pycaffe.net import Net
from .caffe_command import apply_threads, build_parser, stages, terminal_progress, use_cpu
from .time_net import load_param

__all__ = ["build_parser", "run"]

log = logging.getLogger("pyskim")


def _fmt(value):
    return f"{float(value):g}"


def run(args):
    """Score the model as ``caffe test`` does (float32 sums, means over the iterations)."""
    if not args.model:
        raise PyskimError("Need a model definition to score.")
    if not args.weights:
        raise PyskimError("Need model weights to score.")
    use_cpu(args)
    apply_threads(args.threads)
    param = load_param(args.model, args.mode, args.batch)
    net = Net(param, 1, level=args.level, stages=stages(args), weights=args.weights)
    log.info("Running for %d iterations.", args.iterations)
    loss = np.float32(0)
    scores, owners = None, []
    names, output_ids = net.blob_names(), net.output_blob_indices()
    with terminal_progress(args.iterations, "test") as bar:
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
            if bar is not None:
                bar.update(1)
    loss /= np.float32(max(args.iterations, 1))
    log.info("Loss: %s", _fmt(loss))
    for score, j in zip(scores if scores is not None else [], owners):
        blob_id = output_ids[j]
        weight = net.blob_loss_weight(blob_id)
        mean = np.float32(score) / np.float32(args.iterations)
        note = f" (* {_fmt(weight)} = {_fmt(np.float32(weight) * mean)} loss)" if weight else ""
        log.info("%s = %s%s", names[blob_id], _fmt(mean), note)
    return 0
