"""Roofline performance model: dense vs sparse time of a convolution or inner-product layer.

SkimCaffe's paper (Park et al., ICLR'17) guides pruning with a roofline-style model that SkimCaffe
itself never put in code. This module is that model, for pyskim's own kernels on the current machine.

Notation (one forward call of one layer; ``d`` = weight density, the fraction of nonzero weights)::

    convolution  F = 2·N·OC·(C/g)·kh·kw·OH·OW   (dense FLOPs)   W = OC·(C/g)·kh·kw   (weights)
    inner prod.  F = 2·M·N·K                                    W = N·K
    P  = peak FLOP/s of one thread, T = threads, BW = memory bandwidth of T threads (bytes/s)
    e_d, e_s0, e_fc, e_spmv = measured efficiencies (fraction of P·T) of pyskim's dense path, of the
         direct sparse convolution kernel, of the sparse inner product (SpMDM, batch > 1) and of its
         batch-1 SpMV; o_d, o_s = per-call overheads

Dense (``LOWERED_GEMM`` / ``GEMM``)::

    t_d = max(F / (P·T·e_d), B_d / BW) + o_d
    B_d = 4·(inputs + outputs + W) + 8·N·g·K·OH·OW   (K = C/g·kh·kw; the last term is the im2col
                                                    matrix, written then read; absent for 1x1 / FC)

Sparse (``DIRECT_SCONV`` / ``SPMDM``)::

    t_s(d) = max(d·F / (P·T·e_s), (B_in + B_out + d·8·W) / BW) + o_s
    B_in  = 4·N·C·H·W + 8·N·C·Hp·Wp   (the input, plus its zero-padded copy written then read; FC: 4·M·K)
    B_out = 4·outputs                 (a nonzero weight costs 8 bytes: a float and an int32 index)
    e_s   = e_s0 · u · σ              (FC: e_fc · u for M > 1, e_spmv for M = 1)
    u     = OH·OW / (16·ceil(((OH−1)·Wq + OW) / 16)),  Wq = ceil(Wp / stride_w):
            the fraction of the 16-float vector lanes that produce an output (the kernel runs flat over
            the padded row pitch, so short output rows and wide pads waste lanes);
            FC: u = M / (16·ceil(M/16)) (the SpMDM kernel's vectors run over the batch)
    σ     = 1 for stride 1, ``stride_eff`` for stride > 1 (stride-phase split of the input)

Lowered compressed-column GEMM (``LOWERED_CCNMM``, ``c`` = fraction of lowered weight columns that
are not all zero)::

    t_c = max(c·F / (P·T·e_d), B_c / BW) + o_d,   B_c = B_d with W and the im2col term scaled by c

Write ``t_s(d) = max(a·d, b + m·d) + o_s`` with ``a = F/(P·T·e_s)``, ``b = (B_in + B_out)/BW`` and
``m = 8·W/BW``. Then:

* **break-even density** ``d_be``: the largest d in [0, 1] with ``t_s(d) <= t_d``; t_s is increasing,
  so ``d_be = min((t_d − o_s)/a, (t_d − o_s − b)/m)`` clipped to [0, 1] (0: sparse never wins,
  1: it wins even dense). Below ``d_be`` the sparse kernel is faster.
* **saturation density** ``d_sat``: where the compute term meets the memory term, ``a·d = b + m·d``,
  i.e. ``d_sat = b / (a − m)`` clipped to [0, 1] (1 when ``a <= m``). Below it the layer is bandwidth
  and overhead bound: pruning further saves at most ``m·d_sat``, and the speedup tends to
  ``t_d / (b + o_s)``.

The machine (:class:`MachineProfile`) comes from :func:`get_profile`: P is a documented default per
ISA (267 GFLOP/s per thread with AVX-512, measured on the project machine: 2 FMAs × 16 lanes × 2 at
4.2 GHz; 134 with AVX2), BW from a short copy benchmark, and the efficiencies and overheads from
short micro-benchmarks of pyskim's own kernels on a mid-size layer (:func:`calibrate`, in
:mod:`pyskim.perf.calibrate`, about a second). The result is cached as JSON in ``$PYSKIM_CACHE_DIR``
(default ``~/.cache/pyskim``), keyed by CPU model, thread count and pyskim version; a profile
calibrated on a busy machine is calibrated again once the machine is quiet.
``PYSKIM_PERFMODEL=default`` skips the calibration and uses :func:`default_profile`. Tests inject a
fixed profile with :func:`use_profile`. More in ``docs/perfmodel.md``.
"""
import contextlib
import dataclasses
import json
import math
import os
import pathlib
import platform
import threading

VECTOR = 16                      # float32 lanes of one AVX-512 vector (the kernels' unit of work)
NNZ_BYTES = 8                    # one nonzero weight: float32 value + int32 column index / offset
PEAK_GFLOPS_AVX512 = 267.0       # per thread, measured (research/peers.md): 64 FLOP/cycle at 4.2 GHz
PEAK_GFLOPS_AVX2 = 134.0
PEAK_GFLOPS_OTHER = 34.0
DEFAULT_BANDWIDTH_GBS = {1: 42.0, 2: 75.0}   # STREAM copy on the project machine
CACHE_FILE = "perfmodel.json"
#: A cached profile calibrated at a load average per CPU above BUSY_LOAD is calibrated again by the
#: first process that finds the machine below QUIET_LOAD.
BUSY_LOAD = 1.0
QUIET_LOAD = 0.5

_lock = threading.Lock()
_memory_cache = {}
_injected = None


@dataclasses.dataclass(frozen=True)
class MachineProfile:
    """The machine as the model sees it (all rates for ``threads`` threads unless said otherwise)."""

    threads: int = 1
    peak_flops: float = PEAK_GFLOPS_AVX512 * 1e9   # per thread
    bandwidth: float = DEFAULT_BANDWIDTH_GBS[1] * 1e9   # bytes/s, all threads together
    dense_eff: float = 0.6           # pyskim dense conv / GEMM, fraction of P·T
    sparse_eff: float = 0.2          # direct sparse conv at u = 1, stride 1 (useful FLOPs)
    stride_eff: float = 0.8          # multiplier of sparse_eff for stride > 1
    fc_sparse_eff: float = 0.1       # sparse inner product at u = 1 (batch a multiple of 16)
    spmv_eff: float = 0.01           # sparse inner product at batch 1 (SpMV)
    dense_overhead: float = 30e-6    # seconds per call
    sparse_overhead: float = 15e-6
    cpu: str = ""
    source: str = "default"
    load: float = 0.0                # load average per CPU while calibrating (other jobs)

    @property
    def compute(self):
        """P·T, FLOP/s of all threads at peak."""
        return self.peak_flops * self.threads

    def to_json(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclasses.dataclass(frozen=True)
class ConvShape:
    """A 2-D convolution: input (batch, channels, height, width), OC = num_output."""

    batch: int
    channels: int
    height: int
    width: int
    num_output: int
    kernel: tuple = (3, 3)
    stride: tuple = (1, 1)
    pad: tuple = (0, 0)
    dilation: tuple = (1, 1)
    group: int = 1

    @property
    def out_hw(self):
        return tuple(max(0, (s + 2 * p - (d * (k - 1) + 1)) // st + 1) for s, k, p, st, d in zip(
            (self.height, self.width), self.kernel, self.pad, self.stride, self.dilation))

    @property
    def padded_hw(self):
        return self.height + 2 * self.pad[0], self.width + 2 * self.pad[1]

    @property
    def weights(self):
        return self.num_output * (self.channels // self.group) * self.kernel[0] * self.kernel[1]

    @property
    def flops(self):
        oh, ow = self.out_hw
        return 2.0 * self.batch * self.weights * oh * ow

    @property
    def outputs(self):
        oh, ow = self.out_hw
        return self.batch * self.num_output * oh * ow

    @property
    def inputs(self):
        return self.batch * self.channels * self.height * self.width

    @property
    def is_1x1(self):
        return self.kernel == (1, 1) and self.stride == (1, 1) and self.pad == (0, 0)


@dataclasses.dataclass(frozen=True)
class FcShape:
    """An inner product: (batch M x num_input K) . (K x num_output N)."""

    batch: int
    num_input: int
    num_output: int

    @property
    def weights(self):
        return self.num_output * self.num_input

    @property
    def flops(self):
        return 2.0 * self.batch * self.weights

    @property
    def outputs(self):
        return self.batch * self.num_output

    @property
    def inputs(self):
        return self.batch * self.num_input


@dataclasses.dataclass(frozen=True)
class Prediction:
    """What the model says about one layer at one density (times in seconds)."""

    dense: float
    sparse: float
    ccnmm: float
    break_even: float
    saturation: float
    mode: str              # "dense", "sparse" or "ccnmm": the fastest predicted

    @property
    def speedup(self):
        """Predicted dense time / sparse time."""
        return self.dense / self.sparse if self.sparse > 0 else math.inf

    @property
    def best(self):
        return min(self.dense, self.sparse, self.ccnmm)


# -- the formulas ----------------------------------------------------------------------------------

def _im2col_bytes(shape):
    if isinstance(shape, FcShape) or shape.is_1x1:
        return 0.0
    oh, ow = shape.out_hw
    k = shape.channels // shape.group * shape.kernel[0] * shape.kernel[1]
    return 8.0 * shape.batch * shape.group * k * oh * ow


def dense_time(shape, profile):
    """``t_d = max(F / (P·T·e_d), B_d / BW) + o_d``."""
    bytes_ = 4.0 * (shape.inputs + shape.outputs + shape.weights) + _im2col_bytes(shape)
    return max(shape.flops / (profile.compute * profile.dense_eff), bytes_ / profile.bandwidth) \
        + profile.dense_overhead


def ccnmm_time(shape, column_density, profile):
    """Lowered GEMM on the fraction ``column_density`` of lowered weight columns that are not all zero."""
    c = min(max(float(column_density), 0.0), 1.0)
    bytes_ = 4.0 * (shape.inputs + shape.outputs + c * shape.weights) + c * _im2col_bytes(shape)
    return max(c * shape.flops / (profile.compute * profile.dense_eff), bytes_ / profile.bandwidth) \
        + profile.dense_overhead


def lane_utilization(shape):
    """``u``: the fraction of vector lanes of the sparse kernel that compute an output."""
    if isinstance(shape, FcShape):
        m = max(shape.batch, 1)
        return m / (VECTOR * math.ceil(m / VECTOR))
    oh, ow = shape.out_hw
    if oh <= 0 or ow <= 0:
        return 1.0
    wq = math.ceil(shape.padded_hw[1] / shape.stride[1])
    return oh * ow / (VECTOR * math.ceil(((oh - 1) * wq + ow) / VECTOR))


def sparse_efficiency(shape, profile):
    """``e_s``: fraction of P·T the sparse kernel reaches on useful FLOPs for this geometry."""
    u = lane_utilization(shape)
    if isinstance(shape, FcShape):
        return profile.spmv_eff if shape.batch <= 1 else profile.fc_sparse_eff * u
    sigma = 1.0 if shape.stride == (1, 1) else profile.stride_eff
    return profile.sparse_eff * u * sigma


def sparse_terms(shape, profile):
    """(a, b, m, o) with ``t_s(d) = max(a·d, b + m·d) + o``."""
    a = shape.flops / (profile.compute * sparse_efficiency(shape, profile))
    if isinstance(shape, FcShape):
        in_bytes = 4.0 * shape.inputs
    else:
        hp, wp = shape.padded_hw
        in_bytes = 4.0 * shape.inputs + 8.0 * shape.batch * shape.channels * hp * wp
    b = (in_bytes + 4.0 * shape.outputs) / profile.bandwidth
    m = NNZ_BYTES * shape.weights / profile.bandwidth
    return a, b, m, profile.sparse_overhead


def sparse_time(shape, density, profile):
    """``t_s(d) = max(d·F / (P·T·e_s), (B_in + B_out + d·8·W) / BW) + o_s``."""
    a, b, m, o = sparse_terms(shape, profile)
    d = min(max(float(density), 0.0), 1.0)
    return max(a * d, b + m * d) + o


def break_even_density(shape, profile):
    """Largest density in [0, 1] at which the sparse time is at most the dense time."""
    a, b, m, o = sparse_terms(shape, profile)
    budget = dense_time(shape, profile) - o
    if budget < b:                       # even an all-zero layer is slower sparse
        return 0.0
    limits = [budget / a if a > 0 else math.inf, (budget - b) / m if m > 0 else math.inf]
    return min(1.0, max(0.0, min(limits)))


def saturation_density(shape, profile):
    """Density below which the sparse layer is bandwidth/overhead bound (compute = memory term)."""
    a, b, m, _ = sparse_terms(shape, profile)
    if a <= m:
        return 1.0
    return min(1.0, max(0.0, b / (a - m)))


def predict(shape, density, profile=None, column_density=None):
    """:class:`Prediction` for ``shape`` at weight ``density`` (``column_density``: fraction of
    lowered weight columns that are not all zero, for LOWERED_CCNMM; default: no saving)."""
    profile = profile or get_profile()
    dense = dense_time(shape, profile)
    sparse = sparse_time(shape, density, profile)
    ccnmm = math.inf if isinstance(shape, FcShape) else ccnmm_time(
        shape, 1.0 if column_density is None else column_density, profile)
    times = {"dense": dense, "sparse": sparse, "ccnmm": ccnmm}
    # Ties go to dense: no packing, and backward-compatible.
    mode = min(("dense", "sparse", "ccnmm"), key=lambda k: (times[k], k != "dense"))
    return Prediction(dense, sparse, ccnmm, break_even_density(shape, profile),
                      saturation_density(shape, profile), mode)


def choose(shape, density, profile=None, column_density=None, candidates=("dense", "sparse", "ccnmm")):
    """The predicted fastest of ``candidates`` (``"dense"``, ``"sparse"``, ``"ccnmm"``)."""
    p = predict(shape, density, profile, column_density)
    times = {"dense": p.dense, "sparse": p.sparse, "ccnmm": p.ccnmm}
    return min(candidates, key=lambda k: (times[k], k != "dense"))


def speedup_curve(shape, densities, profile=None):
    """Predicted dense/sparse speedup at each density."""
    profile = profile or get_profile()
    dense = dense_time(shape, profile)
    return [dense / sparse_time(shape, d, profile) for d in densities]


# -- the machine -----------------------------------------------------------------------------------

def cpu_model():
    """The CPU's model name (``/proc/cpuinfo``), or the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def default_peak_gflops():
    """Documented per-thread peak by ISA (see the module docstring)."""
    flags = _cpu_flags()
    if "avx512f" in flags:
        return PEAK_GFLOPS_AVX512
    if "avx2" in flags and "fma" in flags:
        return PEAK_GFLOPS_AVX2
    return PEAK_GFLOPS_OTHER


def default_profile(threads=1):
    """The profile without any measurement: documented peak and bandwidth, typical efficiencies."""
    bw = DEFAULT_BANDWIDTH_GBS.get(threads, DEFAULT_BANDWIDTH_GBS[2] * min(threads, 4) / 2)
    return MachineProfile(threads=threads, peak_flops=default_peak_gflops() * 1e9, bandwidth=bw * 1e9,
                          cpu=cpu_model(), source="default")


def _version():
    from .. import __version__
    return __version__


def cache_path():
    """``$PYSKIM_CACHE_DIR/perfmodel.json`` (default ``~/.cache/pyskim/perfmodel.json``)."""
    root = os.environ.get("PYSKIM_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "pyskim")
    return pathlib.Path(root) / CACHE_FILE


def profile_key(threads):
    return f"{cpu_model()}|threads={threads}|pyskim={_version()}"


def _read_cache(path):
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def load_cached_profile(threads):
    entry = _read_cache(cache_path()).get(profile_key(threads))
    if not isinstance(entry, dict):
        return None
    try:
        return MachineProfile.from_json(entry)
    except TypeError:
        return None


def save_profile(profile):
    """Store ``profile`` in the JSON cache (best effort: an unwritable cache is not an error)."""
    path = cache_path()
    data = _read_cache(path)
    data[profile_key(profile.threads)] = profile.to_json()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass


def _threads(threads):
    if threads is None:
        from ..kernels.dense import get_num_threads
        threads = get_num_threads()
    return max(1, int(threads))


def get_profile(threads=None, calibrate_if_missing=True):
    """The machine profile for ``threads`` (default: pyskim's kernel thread count): the injected one
    (:func:`use_profile`), else this process's, else the JSON cache's, else a fresh calibration
    (saved), or the default profile when ``PYSKIM_PERFMODEL=default`` or calibration is off. A
    cached profile calibrated on a busy machine (load > ``BUSY_LOAD`` per CPU) is calibrated again
    when the machine is quiet (load < ``QUIET_LOAD``)."""
    if _injected is not None:
        return _injected
    threads = _threads(threads)
    with _lock:
        profile = _memory_cache.get(threads)
        if profile is not None:
            return profile
        if os.environ.get("PYSKIM_PERFMODEL", "").lower() == "default" or not calibrate_if_missing:
            profile = load_cached_profile(threads) or default_profile(threads)
        else:
            profile = load_cached_profile(threads)
            # a profile measured on a busy machine is redone once the machine is quiet
            if profile is None or (profile.load > BUSY_LOAD and current_load() < QUIET_LOAD):
                profile = calibrate(threads)
                save_profile(profile)
        _memory_cache[threads] = profile
        return profile


def current_load():
    """The 1-minute load average per CPU (0 where the OS does not report it)."""
    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except (AttributeError, OSError):
        return 0.0


def set_profile(profile):
    """Make every prediction use ``profile`` (None: back to :func:`get_profile`'s lookup); returns
    the previous injected profile."""
    global _injected
    previous, _injected = _injected, profile
    return previous


@contextlib.contextmanager
def use_profile(profile):
    """``with use_profile(p):`` predictions (and AUTO modes) use ``p``."""
    previous = set_profile(profile)
    try:
        yield profile
    finally:
        set_profile(previous)


def clear_memory_cache():
    with _lock:
        _memory_cache.clear()


CALIBRATION_CONV = ConvShape(batch=1, channels=128, height=14, width=14, num_output=128, kernel=(3, 3),
                             pad=(1, 1))
CALIBRATION_FC = FcShape(batch=16, num_input=1024, num_output=1024)
CALIBRATION_DENSITY = 0.1


# calibration and threads live in pyskim.perf.calibrate (re-exported here)
from .calibrate import calibrate, measure_bandwidth, set_blas_threads, set_threads  # noqa: F401
