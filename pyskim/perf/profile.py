"""The machine profile the roofline model (:mod:`pyskim.perf.model`) runs on: this machine's identity,
its default profile, the JSON cache of calibrated profiles and the profile lookup.

:func:`get_profile` never measures anything: it returns the injected profile (:func:`use_profile`),
else the cached calibration for this CPU, thread count and pyskim version, else
:func:`default_profile` (documented peak and bandwidth, typical efficiencies), and logs once per
process and thread count which one it uses. A calibration (:mod:`pyskim.perf.calibrate`) runs only
when asked: ``pyskim calibrate``, ``pyskim time`` / ``tools/time.py`` (``--recalibrate``, or no cache
yet) and ``tools/perf_model.py --recalibrate``.

The cache is ``$PYSKIM_CACHE_DIR/perfmodel.json`` (default ``~/.cache/pyskim``), one entry per
:func:`profile_key`. ``PYSKIM_PERFMODEL=default`` makes :func:`get_profile` use the default profile
even where a cache exists (reproducible plans, as tests/test_demo.py wants). A profile calibrated on a
busy machine (load average per CPU above ``BUSY_LOAD``) is still used; :func:`needs_calibration` says
it should be measured again once the machine is quiet (below ``QUIET_LOAD``).
"""
import contextlib
import importlib.metadata
import json
import os
import pathlib
import platform
import threading

from ..core.state import log
from ..kernels import build_fingerprint
from ..kernels.threads import get_num_threads
from .model import MachineProfile, default_bandwidth, peak_gflops_for_isa

CACHE_FILE = "perfmodel.json"
#: A cached profile calibrated at a load average per CPU above BUSY_LOAD should be calibrated again
#: once the machine is below QUIET_LOAD (see :func:`needs_calibration`).
BUSY_LOAD = 1.0
QUIET_LOAD = 0.5

_lock = threading.Lock()
_memory_cache = {}          # {(threads, PYSKIM_PERFMODEL=default): profile}
_logged_threads = set()
_injected = None


# -- this machine ----------------------------------------------------------------------------------

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


def cpu_flags():
    """The CPU's feature flags (``/proc/cpuinfo``; empty where the OS does not list them)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def current_load():
    """The 1-minute load average per CPU (0 where the OS does not report it)."""
    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except (AttributeError, OSError):
        return 0.0


def resolve_threads(threads):
    """``threads`` as a positive int; None: the thread count pyskim's kernels use now."""
    return max(1, int(get_num_threads() if threads is None else threads))


def default_profile(threads=1):
    """This machine's profile without any measurement: the documented peak of its ISA, the documented
    bandwidth for ``threads`` and the typical efficiencies and overheads of :class:`MachineProfile`."""
    return MachineProfile(threads=threads, peak_flops=peak_gflops_for_isa(cpu_flags()) * 1e9,
                          bandwidth=default_bandwidth(threads), cpu=cpu_model(), source="default")


# -- the JSON cache --------------------------------------------------------------------------------

def _version():
    """pyskim's installed version (the package metadata: ``pyproject.toml``'s ``version``)."""
    try:
        return importlib.metadata.version("pyskim")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def cache_path():
    """``$PYSKIM_CACHE_DIR/perfmodel.json`` (default ``~/.cache/pyskim/perfmodel.json``)."""
    root = os.environ.get("PYSKIM_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "pyskim")
    return pathlib.Path(root) / CACHE_FILE


def profile_key(threads):
    """The cache key of a profile: ``"<CPU model>|threads=<T>|pyskim=<version>+<kernels>"``, where
    ``<kernels>`` fingerprints the compiled kernels (:func:`pyskim.kernels.build_fingerprint`): a
    profile measured on other kernels (a rebuild, another pyskim) is not used."""
    return f"{cpu_model()}|threads={threads}|pyskim={_version()}+{build_fingerprint()}"


def _read_cache(path):
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def load_cached_profile(threads):
    """The cached profile of this machine for ``threads``, or None (no cache, no entry, bad entry)."""
    entry = _read_cache(cache_path()).get(profile_key(threads))
    if not isinstance(entry, dict):
        return None
    try:
        return MachineProfile.from_json(entry)
    except TypeError:
        return None


def save_profile(profile):
    """Store ``profile`` in the JSON cache (replacing the entries of other pyskim builds for this CPU
    and thread count) and make it this process's profile for its thread count;
    returns False where the cache cannot be written (not an error: the profile still serves this
    process)."""
    with _lock:
        _memory_cache[profile.threads, False] = profile
    path = cache_path()
    data = _read_cache(path)
    key = profile_key(profile.threads)
    stale = key.rsplit("|pyskim=", 1)[0] + "|pyskim="           # this CPU and thread count, another build
    data = {k: v for k, v in data.items() if not k.startswith(stale)}
    data[key] = profile.to_json()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        return False
    return True


def needs_calibration(threads=None):
    """True when this machine has no cached profile for ``threads`` (for this CPU, thread count and
    pyskim build: :func:`profile_key`), or only one calibrated on a busy machine (load per CPU above
    ``BUSY_LOAD``) or whose coefficients never agreed between rounds, while the machine is quiet now
    (below ``QUIET_LOAD``)."""
    profile = load_cached_profile(resolve_threads(threads))
    return profile is None or ((profile.load > BUSY_LOAD or not profile.consistent)
                               and current_load() < QUIET_LOAD)


# -- the lookup ------------------------------------------------------------------------------------

def default_profile_forced():
    """True when ``PYSKIM_PERFMODEL=default`` asks for the default profile, cached or not."""
    return os.environ.get("PYSKIM_PERFMODEL", "").lower() == "default"


def _log_choice(profile, threads):
    if threads in _logged_threads:
        return
    _logged_threads.add(threads)
    if profile.source == "default":
        why = "PYSKIM_PERFMODEL=default" if default_profile_forced() else f"no calibration cached in {cache_path()}"
        log.info("Performance model: default machine profile for %d thread(s) (%s); `pyskim calibrate` "
                 "measures this machine", threads, why)
    else:
        log.info("Performance model: machine profile %s for %d thread(s)", profile.source, threads)


def get_profile(threads=None):
    """The machine profile for ``threads`` (default: pyskim's kernel thread count): the injected one
    (:func:`use_profile`), else this process's, else the JSON cache's, else :func:`default_profile`
    (always the default with ``PYSKIM_PERFMODEL=default``). Never calibrates; logs once per process
    and thread count which profile it uses."""
    if _injected is not None:
        return _injected
    threads, forced = resolve_threads(threads), default_profile_forced()
    profile = _memory_cache.get((threads, forced))      # every sparse layer asks at every forward:
    if profile is not None and threads in _logged_threads:      # the common case without the lock
        return profile
    with _lock:
        profile = _memory_cache.get((threads, forced))
        if profile is None:
            profile = (None if forced else load_cached_profile(threads)) or default_profile(threads)
            _memory_cache[threads, forced] = profile
        _log_choice(profile, threads)
        return profile


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
    """Forget this process's profiles (and which ones were logged): the next :func:`get_profile`
    reads the JSON cache again."""
    with _lock:
        _memory_cache.clear()
        _logged_threads.clear()
