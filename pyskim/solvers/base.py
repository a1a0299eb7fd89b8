"""Solver: the training driver of Caffe's ``solver.cpp`` (nets, step loop, tests, logging, snapshots).

The update rule itself (learning rate, history, regularization) lives in :class:`SGDSolver` and its
subclasses; this class owns what every solver shares: building the train and test nets from the
SolverParameter, ``step`` with ``iter_size`` accumulation and ``average_loss`` smoothing, the test
passes, ``solve`` and the snapshot file names. Log lines match Caffe's, so ``parse_log.py`` works.
"""
import contextlib
import math
import os
import time

import numpy as np
from google.protobuf import text_format

from ..core.state import log, set_random_seed
from ..errors import SolverError
from ..io import hdf5
from ..io.files import remove_stale_temp_files
from ..io.protofiles import write_binary
from ..io.upgrade import read_net_text, read_solver_text, upgrade_solver
from ..proto import caffe_pb2
from ..pycaffe.net import Net
from ..sparse.sparsity import build_connectivity_masks

F32 = np.float32
TRAIN_NET_FIELDS = ("net", "net_param", "train_net", "train_net_param")


def fmt(value):
    """A number as C++'s default ostream prints it (6 significant digits, like ``%g``)."""
    return f"{float(value):g}"


class Solver:
    """Caffe's ``Solver``: ``Solver(solver_prototxt_or_SolverParameter, stop_on_nan=False)``.

    Relative net paths (``net``, ``train_net``, ``test_net``) and the Data layers' sources are opened
    relative to the current working directory, as Caffe does. ``stop_on_nan`` (a pyskim extension,
    SolverParameter has no field for it) ends ``step`` early, before the update, when an
    iteration's loss is NaN or infinite; ``requested_early_exit`` is then set, as for Caffe's STOP
    action.
    """

    type = ""

    def __init__(self, param, stop_on_nan=False):
        if isinstance(param, caffe_pb2.SolverParameter):
            self._param = caffe_pb2.SolverParameter()
            self._param.CopyFrom(param)
            upgrade_solver(self._param)
        else:
            self._param = read_solver_text(os.fspath(param))
        self.stop_on_nan = bool(stop_on_nan)
        self.requested_early_exit = False
        #: Called after every iteration (and test batch); returns "stop", "snapshot" or "none", as
        #: Caffe's SolverAction from its signal handler (``SetActionFunction``).
        self.action_function = None
        self._callbacks = []
        self._losses = []
        self._smoothed_loss = F32(0)
        self._iterations_last = 0
        self._timer = time.perf_counter()
        self._init()
        self.pre_solve()

    # -- construction (Solver::Init, InitTrainNet, InitTestNets) ------------------------------------
    def _init(self):
        p = self._param
        log.info("Initializing solver from parameters: \n%s", text_format.MessageToString(p))
        if p.average_loss < 1:
            raise SolverError(f"average_loss should be at least 1, got {p.average_loss}")
        if p.iter_size < 1:
            raise SolverError(f"iter_size should be at least 1, got {p.iter_size}")
        self.iter = 0
        self.current_step = 0
        self._check_snapshot_write_permissions()
        if p.random_seed >= 0:
            set_random_seed(p.random_seed)
        self._init_train_net()
        self._init_test_nets()
        for models in p.weights:
            self.load_weights(models)
        if not p.weights:
            self.weights_changed()
        log.info("Solver scaffolding done.")
        log.info("prune_threshold = %s measure_threshold = %s", fmt(F32(p.prune_threshold)),
                 fmt(F32(p.measure_threshold)))
        log.info("max_threshold_factor = %s", fmt(p.max_threshold_factor))
        log.info("winograd_adjust_threshold = %d", p.winograd_adjust_threshold)

    def load_weights(self, models):
        """Copy weights from a comma-separated list of caffemodels into the train and test nets
        (Caffe's ``LoadNetWeights`` for ``SolverParameter.weights`` and ``caffe train -weights``)."""
        for path in (m.strip() for m in models.split(",")):
            if path:
                log.info("Finetuning from %s", path)
                for net in [self.net, *self.test_nets]:
                    net.copy_from(path)
        self.weights_changed()

    def weights_changed(self):
        """Rebuild the train net's connectivity masks from its current weights (SkimCaffe's
        ``WeightAlign`` on load, with the solver's ``prune_threshold``). Runs after the solver's own
        weight loads and ``restore``; call it after replacing weights by other means mid-training."""
        build_connectivity_masks(self.net, self._param.prune_threshold)

    def requested_action(self):
        return self.action_function() if self.action_function is not None else "none"

    def _check_snapshot_write_permissions(self):
        p = self._param
        if not p.snapshot:
            return
        if not p.HasField("snapshot_prefix"):
            raise SolverError("In solver params, snapshot is specified but snapshot_prefix is not")
        probe = self._snapshot_filename(".tempfile")
        try:
            with open(probe, "w"):
                pass
        except (OSError, ValueError):       # ValueError: a NUL byte in the prefix
            raise SolverError(f"Cannot write to snapshot prefix '{p.snapshot_prefix}'.  Make sure that the "
                              "directory exists and is writeable.") from None
        # As Caffe, the removal's outcome is not checked: the processes of a data-parallel run probe
        # the same name at once, and one may remove the probe another made.
        with contextlib.suppress(OSError):
            os.remove(probe)

    def _init_train_net(self):
        p = self._param
        given = [name for name in TRAIN_NET_FIELDS if p.HasField(name)]
        if not given:
            raise SolverError("SolverParameter must specify a train net using one of these fields: "
                              + ", ".join(TRAIN_NET_FIELDS))
        if len(given) > 1:
            raise SolverError("SolverParameter must not contain more than one of these fields specifying a "
                              f"train_net: {', '.join(TRAIN_NET_FIELDS)} (got {', '.join(given)})")
        source = given[0]
        if source.endswith("_param"):
            log.info("Creating training net specified in %s.", source)
            net_param = _copy_net_param(getattr(p, source))
        else:
            log.info("Creating training net from %s file: %s", source, getattr(p, source))
            net_param = read_net_text(getattr(p, source))
        state = caffe_pb2.NetState(phase=caffe_pb2.TRAIN)
        state.MergeFrom(net_param.state)
        state.MergeFrom(p.train_state)
        self.net = _make_net(net_param, state)

    def _init_test_nets(self):
        p = self._param
        has_net_param, has_net_file = p.HasField("net_param"), p.HasField("net")
        if has_net_param and has_net_file:
            raise SolverError("Both net_param and net_file may not be specified.")
        generic = has_net_param or has_net_file
        num_test_nets = len(p.test_net_param) + len(p.test_net)
        if len(p.test_iter) < num_test_nets or (not generic and len(p.test_iter) != num_test_nets):
            raise SolverError(f"test_iter must be specified for each test network ({len(p.test_iter)} "
                              f"test_iter for {num_test_nets} test_net/test_net_param)")
        num_instances = len(p.test_iter) if generic else num_test_nets
        if len(p.test_state) and len(p.test_state) != num_instances:
            raise SolverError("test_state must be unspecified or specified once per test net.")
        if num_instances and p.test_interval <= 0:
            raise SolverError(f"test_interval must be > 0 when there are test nets (got {p.test_interval})")
        sources, params = [], []
        for net_param in p.test_net_param:
            sources.append("test_net_param")
            params.append(_copy_net_param(net_param))
        for path in p.test_net:
            sources.append("test_net file: " + path)
            params.append(read_net_text(path))
        remaining = num_instances - len(params)
        for _ in range(remaining):
            if has_net_param:
                sources.append("net_param")
                params.append(_copy_net_param(p.net_param))
            else:
                sources.append("net file: " + p.net)
                params.append(read_net_text(p.net))
        self.test_nets = []
        for i, (source, net_param) in enumerate(zip(sources, params)):
            state = caffe_pb2.NetState(phase=caffe_pb2.TEST)
            state.MergeFrom(net_param.state)
            if len(p.test_state):
                state.MergeFrom(p.test_state[i])
            log.info("Creating test net (#%d) specified by %s", i, source)
            self.test_nets.append(_make_net(net_param, state))
        self.mean_scores = [[] for _ in self.test_nets]

    def pre_solve(self):
        """Allocate the update rule's state (``PreSolve``); subclasses override."""

    # -- pycaffe surface -----------------------------------------------------------------------------
    @property
    def param(self):
        """The SolverParameter in use (live: writing ``base_lr`` changes the next updates)."""
        return self._param

    def add_callback(self, on_start, on_gradients_ready):
        """Call ``on_start()`` before each iteration's forward passes and ``on_gradients_ready()``
        before its update, as pycaffe's ``Solver.add_callback``."""
        self._callbacks.append((on_start, on_gradients_ready))

    def share_weights(self, net):
        """Make ``net`` use the train net's weights (pycaffe ``share_weights``)."""
        net.share_trained_layers_with(self.net)

    def apply_update(self):
        raise NotImplementedError(f"{type(self).__name__}.apply_update")

    # -- training (Solver::Step, Solve) ---------------------------------------------------------------
    def step(self, iters):
        """Run ``iters`` iterations: test when due, forward/backward ``iter_size`` times, display,
        update, snapshot when due (``Solver::Step``)."""
        p = self._param
        start_iter, stop_iter = self.iter, self.iter + int(iters)
        self._losses = []
        self._smoothed_loss = F32(0)
        self._timer = time.perf_counter()
        self._iterations_last = self.iter
        while self.iter < stop_iter:
            self.net.clear_param_diffs()
            if p.test_interval and self.iter % p.test_interval == 0 and (self.iter > 0 or p.test_initialization):
                self.test_all()
                if self.requested_early_exit:
                    break
            for on_start, _ in self._callbacks:
                on_start()
            display = p.display and self.iter % p.display == 0
            loss = self.accumulate_gradients() / F32(self.batches_per_update)
            self._update_smoothed_loss(loss, start_iter, p.average_loss)
            if display:
                self._display()
            if self.stop_on_nan and not math.isfinite(loss):
                log.error("Iteration %d, loss = %s is not finite; stopping before the update (stop_on_nan)",
                          self.iter, fmt(loss))
                self.requested_early_exit = True
                break
            for _, on_gradients_ready in self._callbacks:
                on_gradients_ready()
            self.apply_update()
            # iter counts the updates made so far.
            self.iter += 1
            action = self.requested_action()
            if (p.snapshot and self.iter % p.snapshot == 0) or action == "snapshot":
                self.snapshot()
            if action == "stop":
                self.requested_early_exit = True
                break

    def accumulate_gradients(self):
        """Run ``iter_size`` forward/backward passes of the train net, the param diffs adding up, and
        return the sum of their losses (float32). A data-parallel solver then also sums the diffs and
        the losses over its processes (:mod:`pyskim.solvers.distributed`)."""
        last_layer = len(self.net.layers) - 1
        loss = F32(0)
        for _ in range(self._param.iter_size):
            loss += F32(self.net.forward_from_to(0, last_layer))
            self.net.backward_from_to(last_layer, 0)
        return loss

    @property
    def batches_per_update(self):
        """How many batches the diffs of one update add up: ``iter_size`` (times the processes of a
        data-parallel solver). The loss and the diffs are divided by it, as Caffe's Normalize."""
        return self._param.iter_size

    def _display(self):
        p = self._param
        lapse = F32(time.perf_counter() - self._timer)
        per_s = F32(self.iter - self._iterations_last) / (lapse if lapse else F32(1))
        log.info("Iteration %d (%s iter/s, %ss/%d iters), loss = %s", self.iter, fmt(per_s), fmt(lapse),
                 p.display, fmt(self._smoothed_loss))
        self._timer = time.perf_counter()
        self._iterations_last = self.iter
        for index, (name, value, weight) in enumerate(output_values(self.net)):
            log.info("    Train net output #%d: %s = %s%s", index, name, fmt(value),
                     _loss_note(weight, value))

    def _update_smoothed_loss(self, loss, start_iter, average_loss):
        """Running mean of the last ``average_loss`` losses (``UpdateSmoothedLoss``)."""
        if len(self._losses) < average_loss:
            self._losses.append(loss)
            size = len(self._losses)
            self._smoothed_loss = (self._smoothed_loss * F32(size - 1) + loss) / F32(size)
        else:
            idx = (self.iter - start_iter) % average_loss
            self._smoothed_loss += (loss - self._losses[idx]) / F32(average_loss)
            self._losses[idx] = loss

    @property
    def smoothed_loss(self):
        return float(self._smoothed_loss)

    def solve(self, resume_file=None):
        """Train to ``max_iter`` (optionally restoring ``resume_file`` first), snapshot after training,
        then one display forward and one test pass (``Solver::Solve``)."""
        p = self._param
        log.info("Solving %s", self.net.name)
        log.info("Learning Rate Policy: %s", p.lr_policy)
        self.requested_early_exit = False
        if resume_file:
            log.info("Restoring previous solver status from %s", resume_file)
            self.restore(resume_file)
        start_iter = self.iter
        self.step(p.max_iter - self.iter)
        if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0):
            self.snapshot()
        if self.requested_early_exit:
            log.info("Optimization stopped early.")
            return
        if p.display and self.iter % p.display == 0:
            loss = F32(self.net.forward_from_to(0, len(self.net.layers) - 1))
            self._update_smoothed_loss(loss, start_iter, p.average_loss)
            log.info("Iteration %d, loss = %s", self.iter, fmt(self._smoothed_loss))
        if p.test_interval and self.iter % p.test_interval == 0:
            self.test_all()
        log.info("Optimization Done.")

    # -- testing (Solver::TestAll, Test) --------------------------------------------------------------
    def test_all(self):
        for test_net_id in range(len(self.test_nets)):
            if self.requested_early_exit:
                break
            self.test(test_net_id)

    def test(self, test_net_id=0):
        """Average each test net output over ``test_iter`` forward passes and log it (``Solver::Test``);
        the test net first shares the train net's weights. Returns the mean scores."""
        p = self._param
        log.info("Iteration %d, Testing net (#%d)", self.iter, test_net_id)
        test_net = self.test_nets[test_net_id]
        test_net.share_trained_layers_with(self.net)
        test_iter = p.test_iter[test_net_id]
        loss, scores, labels = F32(0), None, []
        for run_batch in self.test_batches(test_net_id):
            action = self.requested_action()
            while action != "none":
                if action == "snapshot":
                    self.snapshot()
                elif action == "stop":
                    self.requested_early_exit = True
                    break
                action = self.requested_action()
            if self.requested_early_exit:
                log.info("Test interrupted.")
                return self.mean_scores[test_net_id]
            if not run_batch:
                continue
            iter_loss = F32(test_net.forward_from_to(0, len(test_net.layers) - 1))
            if p.test_compute_loss:
                loss += iter_loss
            outputs = output_values(test_net)
            values = np.array([value for _, value, _ in outputs], dtype=F32)
            if scores is None:
                scores, labels = values, [(name, weight) for name, _, weight in outputs]
            else:
                scores += values
        loss, scores, labels = self.combine_test_results(test_net_id, loss, scores, labels)
        if p.test_compute_loss:
            loss /= F32(test_iter)
            log.info("Test loss: %s", fmt(loss))
        mean_scores = [] if scores is None else list(scores / F32(test_iter))
        for index, ((name, weight), mean) in enumerate(zip(labels, mean_scores)):
            log.info("    Test net output #%d: %s = %s%s", index, name, fmt(mean), _loss_note(weight, mean))
        self.mean_scores[test_net_id] = [float(v) for v in mean_scores]
        return self.mean_scores[test_net_id]

    def test_batches(self, test_net_id):
        """One flag per test batch of a test pass: run it here? (``test_iter`` times True; the
        processes of a data-parallel solver split the batches between them.) The solver asks for its
        action once per flag, as Caffe once per test batch."""
        return [True] * self._param.test_iter[test_net_id]

    def combine_test_results(self, test_net_id, loss, scores, labels):
        """The test loss, scores (summed over the pass's batches; None when none ran here) and output
        labels of a test pass: this process's own (a data-parallel solver sums them over its processes)."""
        return loss, scores, labels

    # -- snapshots (Solver::Snapshot, Restore) --------------------------------------------------------
    def _snapshot_filename(self, extension):
        return f"{self._param.snapshot_prefix}_iter_{self.iter}{extension}"

    def snapshot(self):
        """Write ``<prefix>_iter_<N>.caffemodel`` + ``.solverstate`` (``.caffemodel.h5`` +
        ``.solverstate.h5`` for ``snapshot_format: HDF5``), each through a temp file and an atomic
        rename. Returns (model file, state file).

        First removes the temp files an interrupted earlier snapshot of this prefix left behind
        (a ``kill -9`` mid-write), logging each. A write that fails (full disk, file size limit)
        raises :class:`~pyskim.errors.FileWriteError` naming the file and the cause; training stops
        there, and the earlier snapshots are left intact (Caffe aborts on a failed write)."""
        p = self._param
        remove_stale_temp_files(f"{p.snapshot_prefix}_iter_")
        if p.snapshot_format == caffe_pb2.SolverParameter.BINARYPROTO:
            model_filename = self._snapshot_filename(".caffemodel")
            log.info("Snapshotting to binary proto file %s", model_filename)
            write_binary(model_filename, self.net.to_proto(write_diff=p.snapshot_diff))
        elif p.snapshot_format == caffe_pb2.SolverParameter.HDF5:
            model_filename = self._snapshot_filename(".caffemodel.h5")
            log.info("Snapshotting to HDF5 file %s", model_filename)
            hdf5.save_net_hdf5(self.net, model_filename, write_diff=p.snapshot_diff)
        else:
            raise SolverError(f"Unsupported snapshot format {p.snapshot_format}.")
        return model_filename, self.snapshot_solver_state(model_filename)

    def snapshot_solver_state(self, model_filename):
        raise NotImplementedError(f"{type(self).__name__}.snapshot_solver_state")

    def restore(self, state_file):
        """Restore iter, current_step, the update history and the learned weights from a solverstate
        (HDF5 when the name ends in ``.h5``, else binary), as ``Solver::Restore``; then rebuild the
        connectivity masks from the restored weights (:meth:`weights_changed`)."""
        state_file = os.fspath(state_file)
        if state_file.endswith(".h5"):
            self.restore_solver_state_from_hdf5(state_file)
        else:
            self.restore_solver_state_from_binary_proto(state_file)
        self.weights_changed()

    def restore_solver_state_from_binary_proto(self, state_file):
        raise NotImplementedError(f"{type(self).__name__}.restore_solver_state_from_binary_proto")

    def restore_solver_state_from_hdf5(self, state_file):
        raise NotImplementedError(f"{type(self).__name__}.restore_solver_state_from_hdf5")


def _copy_net_param(net_param):
    copy = caffe_pb2.NetParameter()
    copy.CopyFrom(net_param)
    return copy


def _make_net(net_param, state):
    net_param.state.CopyFrom(state)
    return Net(net_param, phase=state.phase, level=state.level, stages=list(state.stage))


def output_values(net):
    """(output blob name, value, loss weight) for every element of every net output, in order."""
    values = []
    names, blobs = net.blob_names(), net.blob_list()
    for blob_id in net.output_blob_indices():
        name, weight = names[blob_id], net.blob_loss_weight(blob_id)
        values.extend((name, value, weight) for value in blobs[blob_id].data.ravel())
    return values


def _loss_note(weight, value):
    return f" (* {fmt(weight)} = {fmt(F32(weight) * F32(value))} loss)" if weight else ""
