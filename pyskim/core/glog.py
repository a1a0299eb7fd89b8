"""Caffe's log output: glog's line format on stderr, log files and progress lines for long runs
(training, GSL stages, ``pyskim demo``)."""
import logging
import os
import sys
import time

from .state import log

__all__ = ["GlogFormatter", "LogToFile", "TextProgress", "init_logging", "progress_bar"]


class GlogFormatter(logging.Formatter):
    """glog's line prefix: ``I1127 20:54:38.651667 30994 module.py:89] message``."""

    def format(self, record):
        seconds = int(record.created)
        stamp = time.strftime("%m%d %H:%M:%S", time.localtime(seconds))
        micros = int((record.created - seconds) * 1e6)
        prefix = (f"{record.levelname[0]}{stamp}.{micros:06d} {os.getpid()} "
                  f"{os.path.basename(record.pathname)}:{record.lineno}] ")
        return prefix + record.getMessage()


def init_logging(level=logging.INFO):
    """Log pyskim's messages to stderr in glog's format (as Caffe's tools with GLOG_logtostderr=1),
    unless the application configured logging already."""
    logger = logging.getLogger("pyskim")
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(GlogFormatter())
        logger.addHandler(handler)
    logger.setLevel(level)


class LogToFile:
    """While active, also write the ``pyskim`` logger to ``path`` (glog's format, as Caffe's log files,
    appended); ``quiet_console``: keep INFO lines off the terminal meanwhile (a progress bar shows there)."""

    def __init__(self, path, quiet_console):
        self.handler = logging.FileHandler(path, mode="a")
        self.handler.setFormatter(GlogFormatter())
        self.quiet = quiet_console

    def __enter__(self):
        self.level = log.level
        log.setLevel(logging.INFO)
        log.addHandler(self.handler)
        self.console = [(h, h.level) for h in log.handlers + logging.getLogger().handlers
                        if h is not self.handler and self.quiet]
        for h, _ in self.console:
            h.setLevel(logging.WARNING)
        return self

    def __exit__(self, *exc):
        for h, level in self.console:
            h.setLevel(level)
        log.removeHandler(self.handler)
        self.handler.close()
        log.setLevel(self.level)


class TextProgress:
    """A progress bar's stand-in where stderr is no terminal: a glog-style line on stderr at every tenth
    of ``total`` (and at the end), with the elapsed time and an estimate of the time left."""

    def __init__(self, total, desc, initial=0):
        self.total, self.desc, self.n, self.start_n = total, desc, initial, initial
        self.step = max(1, total // 10)
        self.next = (initial // self.step + 1) * self.step
        self.start = time.perf_counter()
        self.formatter = GlogFormatter()
        self.closed = False

    def update(self, count):
        self.n += count
        if self.n >= self.next and self.n < self.total:
            self._emit()
            self.next = (self.n // self.step + 1) * self.step

    def close(self):
        if not self.closed:
            self.closed = True
            self._emit()

    def _emit(self):
        elapsed = time.perf_counter() - self.start
        done = self.n - self.start_n
        left = elapsed / done * (self.total - self.n) if done > 0 else float("nan")
        message = (f"{self.desc}: {self.n}/{self.total} iterations ({100 * self.n / max(1, self.total):.0f}%), "
                   f"{elapsed:.0f} s" + (f", about {left:.0f} s left" if self.n < self.total and done else ""))
        record = log.makeRecord(log.name, logging.INFO, __file__, sys._getframe().f_lineno, message, (), None)
        sys.stderr.write(self.formatter.format(record) + "\n")
        sys.stderr.flush()


def progress_bar(total, desc, initial=0):
    """A tqdm bar on stderr when it is a terminal, else a :class:`TextProgress`."""
    if not sys.stderr.isatty():
        return TextProgress(total, desc, initial)
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, desc=desc, unit="it", leave=True)
