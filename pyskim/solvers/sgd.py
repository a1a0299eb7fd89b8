"""SGDSolver: Caffe's update pipeline (``sgd_solver.cpp``) and the regularizer hooks.

``apply_update`` runs, as ``SGDSolver::ApplyUpdate``: the learning rate from ``lr_policy``, gradient
clipping over all learnable params, then per param Normalize (÷ ``iter_size``), Regularize and
ComputeUpdateValue, then the Net update ``w -= diff``. Subclasses (Nesterov, AdaGrad, RMSProp,
AdaDelta, Adam) override only :meth:`SGDSolver.compute_update_value` (and ``pre_solve`` for extra
history). All arithmetic is float32 on whole arrays, in Caffe's operation order.

Regularization is delegated to one :class:`Regularizer` per effective ``regularization_type``
(``ParamSpec.regularization_type`` when set, else the solver's). A regularizer adds its gradient at
the Regularize stage (returning the penalty) and may act before, instead of and after ``w -= diff``;
SkimCaffe's types (ISTA, DNS; ``skim.py``) plug in there through :func:`register_regularizer`, and
SkimCaffe's thresholded L1 explicitly replaces Caffe's ``L1`` (``skim.py`` is always imported with
this package). As SkimCaffe's ``Blob::Update``, the step is multiplied by the blob's
``connectivity_mask`` (when set) just before the update, for every solver type and regularizer, so
masked weights never move. On display iterations the SkimCaffe sparsity lines follow the lr line and
"Total regularization terms" ends the update.
"""
import math

import numpy as np

from ..core.layer import registration_names
from ..core.state import log
from ..errors import SolverError
from ..io.blobproto import array_to_blobproto, blobproto_to_array
from ..io.hdf5 import read_solver_state_hdf5, write_solver_state_hdf5
from ..io.protofiles import read_binary, write_binary
from ..kernels import dense
from ..proto import caffe_pb2
from ..sparse.sparsity import connectivity_mask, display_lines, regularization_line
from .base import F32, Solver, fmt

LR_POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")
REGULARIZERS = {}


# -- float32 BLAS-like helpers (caffe_cpu_* semantics) --------------------------------------------------
def axpby(alpha, x, beta, y):
    """y = alpha·x + beta·y in float32 (``caffe_cpu_axpby``); a zero alpha or beta drops its term, as
    BLAS ``saxpby`` does (so 0·inf never turns into NaN). One pass on pyskim's thread pool."""
    dense.axpby(alpha, x, beta, y)


def axpy(alpha, x, y):
    """y += alpha·x in float32 (``caffe_axpy``)."""
    dense.axpby(alpha, x, F32(1), y)


def sum_of_squares(x):
    """The float32 sum of ``x``'s squared values (``caffe_cpu_dot(x, x)``), computed by NumPy's own
    loops: no BLAS call, so no BLAS thread pool wakes up beside pyskim's."""
    flat = x.reshape(-1)
    return np.einsum("i,i->", flat, flat)


def powx(x, exponent, out):
    """Elementwise float32 ``pow`` (``caffe_powx``; numpy's ``power`` calls ``powf`` as Caffe's vsPowx)."""
    np.power(x, F32(exponent), out=out)


# -- regularizers -------------------------------------------------------------------------------------
def register_regularizer(*names, replaces=()):
    """Class decorator: make a :class:`Regularizer` subclass the handler of these regularization types.
    A type already registered is refused unless ``replaces`` names it (SkimCaffe's thresholded ``L1``
    replaces Caffe's, see ``skim.py``)."""
    names = registration_names(REGULARIZERS, "regularizer registry", names, replaces, error=SolverError)

    def decorate(cls):
        for name in names:
            REGULARIZERS[name] = cls
        return cls
    return decorate


class Regularizer:
    """Hooks of one regularization type in the update pipeline. One instance per solver and type.

    ``regularize`` runs at Caffe's Regularize stage, only when ``local_decay`` (weight_decay ×
    decay_mult) is nonzero, adds the penalty's gradient to ``blob.diff`` and returns the penalty
    (summed into "Total regularization terms"). ``before_update``, ``update`` (``w -= diff``, after
    the connectivity mask was applied to the diff) and ``after_update`` run for every param (the diff
    then holds the final step). ``weights_changed`` runs when the solver's weights were replaced
    (load, restore): drop state derived from the old weights.
    """

    def __init__(self, solver, name):
        self.solver = solver
        self.name = name

    def regularize(self, param_id, blob, local_decay):
        """Add the penalty gradient to ``blob.diff``; return the penalty (None counts as 0)."""

    def before_update(self, param_id, blob):
        """Adjust the step in ``blob.diff`` before the update."""

    def update(self, param_id, blob):
        """Apply the step: ``w -= diff`` (``Blob::Update``)."""
        data = blob.data
        np.subtract(data, blob.diff, out=data)

    def after_update(self, param_id, blob, rate, local_decay):
        """Act on the updated weights (e.g. thresholding)."""

    def weights_changed(self):
        """The weights were replaced (loaded or restored)."""


@register_regularizer("L2")
class L2Regularizer(Regularizer):
    """diff += local_decay · w (Caffe's L2 weight decay); penalty local_decay/2 · ‖w‖²."""

    def regularize(self, param_id, blob, local_decay):
        axpy(local_decay, blob.data, blob.diff)
        return F32(sum_of_squares(blob.data)) * (F32(local_decay) / F32(2))


@register_regularizer("L1")
class L1Regularizer(Regularizer):
    """diff += local_decay · sign(w), with sign(0) = 0 (Caffe's L1); penalty local_decay · ‖w‖₁."""

    def regularize(self, param_id, blob, local_decay):
        temp = self.solver.scratch(param_id, "temp")
        np.sign(blob.data, out=temp)
        np.multiply(temp, local_decay, out=temp)
        diff = blob.diff
        np.add(diff, temp, out=diff)
        return F32(np.abs(blob.data).sum(dtype=F32)) * F32(local_decay)


# -- the solver ---------------------------------------------------------------------------------------
def _pow(base, exponent):
    """``pow`` in double as C++'s: overflow gives inf instead of raising."""
    try:
        return math.pow(base, exponent)
    except OverflowError:
        return math.inf


class SGDSolver(Solver):
    """Stochastic gradient descent with momentum: history = momentum·history + local_rate·diff;
    w -= history (``SGDSolver``). ``history`` holds :attr:`history_sets` float32 arrays per learnable
    param: all of the first set, then all of the second (the order of Caffe's solverstate)."""

    type = "SGD"
    #: How many history arrays each learnable param keeps (AdaDelta and Adam keep two).
    history_sets = 1

    def pre_solve(self):
        p = self._param
        if p.lr_policy not in LR_POLICIES:
            raise SolverError(f"Unknown learning rate policy: '{p.lr_policy}' (known: {', '.join(LR_POLICIES)})")
        params = self.net.learnable_params
        self.history = [np.zeros(blob.shape, dtype=F32) for _ in range(self.history_sets) for blob in params]
        self._scratch = {}
        self.regularizers = {}
        self._param_regularizers = []
        for param_id in range(len(params)):
            name = self.net.params_regularization_type[param_id] or p.regularization_type
            if name not in self.regularizers:
                if name not in REGULARIZERS:
                    raise SolverError(f"Unknown regularization type: '{name}' (known: "
                                      f"{', '.join(sorted(REGULARIZERS))})")
                self.regularizers[name] = REGULARIZERS[name](self, name)
            self._param_regularizers.append(self.regularizers[name])
        self.lr = F32(0)
        self.total_regularization_term = F32(0)
        self._masks_checked = False

    def regularizer_of(self, param_id):
        """The regularizer hook applied to learnable param ``param_id`` (its ``ParamSpec``'s
        ``regularization_type``, else the solver's, as SkimCaffe's per-param regularization)."""
        return self._param_regularizers[param_id]

    def weights_changed(self):
        """Rebuild the connectivity masks and let the regularizers drop state derived from the old
        weights (e.g. DNS shadows, re-initialized from the new weights at the next update)."""
        super().weights_changed()
        self._masks_checked = True
        for regularizer in getattr(self, "regularizers", {}).values():
            regularizer.weights_changed()

    def second_history(self, param_id):
        """The second-set history array of learnable param ``param_id`` (``history_sets`` 2): Caffe
        keeps it at ``history_[param_id + learnable_params.size()]``."""
        return self.history[len(self.net.learnable_params) + param_id]

    def scratch(self, param_id, slot):
        """A float32 work array shaped like learnable param ``param_id`` (Caffe's update_/temp_)."""
        key = (slot, param_id)
        array = self._scratch.get(key)
        if array is None:
            array = self._scratch[key] = np.zeros(self.net.learnable_params[param_id].shape, dtype=F32)
        return array

    # -- learning rate (SGDSolver::GetLearningRate) ---------------------------------------------------
    def get_learning_rate(self):
        """The rate for the current ``iter`` under ``lr_policy`` (float32, as Caffe's Dtype); ``step``
        sets and ``multistep`` advances ``current_step``."""
        p = self._param
        policy, base, it = p.lr_policy, F32(p.base_lr), self.iter
        if policy == "fixed":
            return base
        if policy in ("step", "exp", "inv", "multistep", "sigmoid") and p.gamma < 0:
            raise SolverError(f"lr_policy '{policy}' needs gamma >= 0, got {p.gamma}")
        if policy in ("step", "sigmoid") and p.stepsize <= 0:
            raise SolverError(f"lr_policy '{policy}' needs stepsize > 0, got {p.stepsize}")
        if policy == "step":
            self.current_step = it // p.stepsize
            return F32(float(base) * _pow(p.gamma, self.current_step))
        if policy == "exp":
            return F32(float(base) * _pow(p.gamma, it))
        if policy == "inv":
            return base * np.power(F32(1) + F32(p.gamma) * F32(it), -F32(p.power))
        if policy == "multistep":
            if self.current_step < len(p.stepvalue) and it >= p.stepvalue[self.current_step]:
                self.current_step += 1
                log.info("MultiStep Status: Iteration %d, step = %d", it, self.current_step)
            return F32(float(base) * _pow(p.gamma, self.current_step))
        if policy == "poly":
            if p.max_iter <= 0:
                raise SolverError(f"lr_policy 'poly' needs max_iter > 0, got {p.max_iter}")
            return base * np.power(F32(1) - F32(it) / F32(p.max_iter), F32(p.power))
        if policy == "sigmoid":
            with np.errstate(over="ignore"):
                return base * (F32(1) / (F32(1) + np.exp(-F32(p.gamma) * (F32(it) - F32(p.stepsize)))))
        raise SolverError(f"Unknown learning rate policy: '{policy}' (known: {', '.join(LR_POLICIES)})")

    # -- the pipeline (SGDSolver::ApplyUpdate) ---------------------------------------------------------
    def apply_update(self):
        """One update from the accumulated diffs: lr, clip, then per param normalize, regularize,
        compute the update value, mask the step and ``w -= diff`` (or the regularizer's update).
        Does not advance ``iter`` (``step`` does). The first update of a solver rebuilds the
        connectivity masks, so weights copied in by ``solver.net.copy_from`` get theirs."""
        p = self._param
        if not self._masks_checked:
            self.weights_changed()
        rate = self.lr = self.get_learning_rate()
        params = self.net.learnable_params
        display = p.display and self.iter % p.display == 0
        if display:
            log.info("Iteration %d, lr = %s", self.iter, fmt(rate))
            for line in display_lines(params, p.measure_threshold):
                log.info(line)
        self.clip_gradients()
        decays = [F32(p.weight_decay) * F32(mult) for mult in self.net.params_weight_decay]
        total = F32(0)
        for param_id in range(len(params)):
            self.normalize(param_id)
            if decays[param_id]:
                term = self._param_regularizers[param_id].regularize(param_id, params[param_id],
                                                                     decays[param_id])
                if term is not None:
                    total += F32(term)
            self.compute_update_value(param_id, rate)
        self.total_regularization_term = total
        for param_id, blob in enumerate(params):
            regularizer = self._param_regularizers[param_id]
            regularizer.before_update(param_id, blob)
            mask = connectivity_mask(blob)
            if mask is not None:
                diff = blob.diff
                np.multiply(diff, mask, out=diff)
            regularizer.update(param_id, blob)
            regularizer.after_update(param_id, blob, rate, decays[param_id])
        if display:
            log.info(regularization_line(total, self._smoothed_loss))

    def clip_gradients(self):
        """Scale all diffs down when their global L2 norm exceeds ``clip_gradients`` (< 0: off)."""
        clip = F32(self._param.clip_gradients)
        if clip < 0:
            return
        params = self.net.learnable_params
        sumsq = F32(0)
        for blob in params:
            sumsq += F32(sum_of_squares(blob.diff))
        l2norm = F32(np.sqrt(sumsq))
        if l2norm > clip:
            scale = clip / l2norm
            log.info("Gradient clipping: scaling down gradients (L2 norm %s > %s) by scale factor %s",
                     fmt(l2norm), fmt(clip), fmt(scale))
            for blob in params:
                diff = blob.diff
                np.multiply(diff, scale, out=diff)

    def normalize(self, param_id):
        """diff /= iter_size, as a multiplication by 1/iter_size (``Normalize``); a data-parallel
        solver divides by iter_size times its processes (:attr:`batches_per_update`)."""
        batches = self.batches_per_update
        if batches != 1:
            diff = self.net.learnable_params[param_id].diff
            np.multiply(diff, F32(1) / F32(batches), out=diff)

    def local_rate(self, param_id, rate):
        return F32(rate) * F32(self.net.params_lr[param_id])

    def compute_update_value(self, param_id, rate):
        """history = momentum·history + local_rate·diff; diff = history."""
        diff = self.net.learnable_params[param_id].diff
        history = self.history[param_id]
        axpby(self.local_rate(param_id, rate), diff, F32(self._param.momentum), history)
        diff[...] = history

    # -- solver state (SnapshotSolverState, RestoreSolverStateFrom*) ----------------------------------
    def snapshot_solver_state(self, model_filename):
        """Write iter, learned_net (the model file name as given), current_step and the history."""
        if self._param.snapshot_format == caffe_pb2.SolverParameter.HDF5:
            filename = self._snapshot_filename(".solverstate.h5")
            log.info("Snapshotting solver state to HDF5 file %s", filename)
            write_solver_state_hdf5(filename, self.iter, model_filename, self.current_step, self.history)
            return filename
        state = caffe_pb2.SolverState(iter=self.iter, learned_net=model_filename,
                                      current_step=self.current_step)
        for history in self.history:
            state.history.add().CopyFrom(array_to_blobproto(history))
        filename = self._snapshot_filename(".solverstate")
        log.info("Snapshotting solver state to binary proto file %s", filename)
        write_binary(filename, state)
        return filename

    def restore_solver_state_from_binary_proto(self, state_file):
        state = read_binary(state_file, caffe_pb2.SolverState())
        history = [blobproto_to_array(blob) for blob in state.history]
        learned_net = state.learned_net if state.HasField("learned_net") else None
        self._set_state(state_file, state.iter, learned_net, state.current_step, history)

    def restore_solver_state_from_hdf5(self, state_file):
        iteration, learned_net, current_step, history = read_solver_state_hdf5(state_file)
        self._set_state(state_file, iteration, learned_net, current_step, history)

    def _set_state(self, state_file, iteration, learned_net, current_step, history):
        if len(history) != len(self.history):
            raise SolverError(f"{state_file}: Incorrect length of history blobs: {len(history)} in the file, "
                              f"{len(self.history)} expected by the {self.type} solver")
        for i, (saved, current) in enumerate(zip(history, self.history)):
            if saved.size != current.size:
                raise SolverError(f"{state_file}: history blob {i} has shape {list(saved.shape)}, expected "
                                  f"{list(current.shape)}")
        if learned_net:
            self.net.copy_from(learned_net)
        self.iter = int(iteration)
        self.current_step = int(current_step)
        log.info("SGDSolver: restoring history")
        for saved, current in zip(history, self.history):
            current[...] = saved.reshape(current.shape)

