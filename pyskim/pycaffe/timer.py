"""pycaffe's ``caffe.Timer``: a wall-clock stopwatch with ``start()``, ``stop()`` and ``ms``.

Follows Caffe's CPU ``Timer`` (``src/caffe/util/benchmark.cpp``): ``start`` on a running timer does
nothing, ``stop`` on a stopped one does nothing, and reading ``ms`` (or ``seconds``) stops a running
timer first; reading a timer never started gives 0.
"""
import time

from ..core.state import log

__all__ = ["Timer"]


class Timer:
    """Stopwatch: ``t = caffe.Timer(); t.start(); ...; t.stop(); t.ms``."""

    def __init__(self):
        self._start = None
        self._elapsed_ns = 0
        self.running = False
        self.has_run_at_least_once = False

    def start(self):
        if not self.running:
            self._start = time.perf_counter_ns()
            self.running = True
            self.has_run_at_least_once = True

    def stop(self):
        if self.running:
            self._elapsed_ns = time.perf_counter_ns() - self._start
            self.running = False

    def _elapsed(self, scale):
        if not self.has_run_at_least_once:
            log.warning("Timer has never been run before reading time.")
            return 0.0
        self.stop()
        return self._elapsed_ns / scale

    @property
    def ms(self):
        """Milliseconds between the last ``start`` and ``stop``."""
        return self._elapsed(1e6)

    @property
    def microseconds(self):
        return self._elapsed(1e3)

    @property
    def seconds(self):
        return self._elapsed(1e9)
