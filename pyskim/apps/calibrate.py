"""``pyskim calibrate [-threads T] [-quick]``: measure this machine for the performance model and cache it.

The roofline model (:mod:`pyskim.perf.model`) that picks AUTO modes and plans GSL runs on a machine
profile. A forward pass never measures one: it uses the cached profile, else the documented default
(:func:`pyskim.perf.profile.get_profile`). This command measures pyskim's own kernels on this machine
(:func:`pyskim.perf.calibrate.calibrate`, five to eight seconds; ``-quick``: a fraction of it, noisier) with
``T`` threads (default: pyskim's kernel thread count), with a progress line on stderr, and stores the
profile in ``$PYSKIM_CACHE_DIR/perfmodel.json`` (default ``~/.cache/pyskim``) under this CPU, thread
count and pyskim build. Every coefficient is measured in at least two rounds that must agree
(:func:`pyskim.perf.calibrate.calibrate`). Calibrate on a quiet machine: the load average at
calibration time is kept in the profile.
"""
import logging

from ..errors import PyskimError
from ..perf.calibrate import calibrate_and_save
from . import flags

log = logging.getLogger("pyskim")


def build_parser():
    parser = flags.new_parser("pyskim calibrate", "Measure this machine for the performance model and "
                                                  "cache the profile.")
    flags.define(parser, "threads", 0, "Optional; threads for pyskim's kernels and the BLAS (0: default).")
    flags.define(parser, "quick", False, "Optional; fewer calls per measurement (faster, noisier).")
    return parser


def run(args):
    """Calibrate for ``args.threads`` threads, cache the profile and log what was measured."""
    if args.threads < 0:
        raise PyskimError(f"threads must be positive, got {args.threads}")
    profile = calibrate_and_save(args.threads or None, quick=args.quick)
    log.info("Machine profile for %d thread(s) (%s): bandwidth %.1f GB/s, e_d %.3f, e_s0 %.3f (batch 8: %.3f, "
             "%.3f), plain %.2f, stride %.2f, tile overhead %.2f, e_fc %.3f, e_spmv %.4f, FC weights %.1f GB/s, o_d %.1f us, "
             "o_s %.1f us (warm %.1f, %.1f us; inner product %.1f, %.1f us, warm %.1f, %.1f us), c_d %.2f ns, "
             "c_s %.2f ns; rounds %s (largest spread %.0f%%)", profile.threads, profile.source, profile.bandwidth / 1e9, profile.dense_eff,
             profile.sparse_eff, profile.batched_dense_eff, profile.batched_sparse_eff, profile.plain_eff,
             profile.stride_eff, profile.tile_overhead, profile.fc_sparse_eff, profile.spmv_eff,
             profile.fc_bandwidth / 1e9, profile.dense_overhead * 1e6, profile.sparse_overhead * 1e6,
             profile.warm_dense_overhead * 1e6, profile.warm_sparse_overhead * 1e6, profile.dense_fc_overhead * 1e6,
             profile.sparse_fc_overhead * 1e6, profile.warm_dense_fc_overhead * 1e6,
             profile.warm_sparse_fc_overhead * 1e6, profile.dense_input_cost * 1e9, profile.sparse_input_cost * 1e9,
             "agreed" if profile.consistent else "DISAGREED", 100 * profile.spread)
    return 0
