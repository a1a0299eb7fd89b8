"""Caffe's log output: glog's line format on stderr, log files and progress lines for long runs
(training, GSL stages, ``pyskim demo``).

:func:`init_logging` honours glog's environment variables, which Caffe users set to quiet or
redirect a tool's log:

``GLOG_minloglevel``
    0 INFO (default), 1 WARNING, 2 ERROR, 3 FATAL: messages below it are dropped everywhere (progress
    lines are INFO messages too).
``GLOG_log_dir``
    also write the log to a file there, named as glog names it:
    ``<program>.<host>.<user>.log.INFO.<yyyymmdd>-<hhmmss>.<pid>``, with glog's three header lines and
    a ``<program>.INFO`` symlink to the newest one. Unlike glog, no file is written when it is unset
    (glog would write to /tmp), nor by the ranks other than 0 of an MPI job.
``GLOG_logtostderr``
    1/true: stderr only, no log file even with ``GLOG_log_dir``.

The log always goes to stderr as well, as Caffe's ``caffe`` tool sets ``FLAGS_alsologtostderr``.
"""
import getpass
import logging
import os
import socket
import sys
import time

log = logging.getLogger("pyskim")

__all__ = ["GlogFormatter", "LogToFile", "TextProgress", "glog_level", "init_logging", "progress_bar"]

#: glog's severities (GLOG_minloglevel values) as logging levels.
GLOG_LEVELS = {0: logging.INFO, 1: logging.WARNING, 2: logging.ERROR, 3: logging.CRITICAL}
_TRUE = ("1", "t", "true", "y", "yes")

#: The log file handler :func:`init_logging` added for ``GLOG_log_dir`` (one per process).
_log_file = {"handler": None}


class GlogFormatter(logging.Formatter):
    """glog's line prefix: ``I1127 20:54:38.651667 30994 module.py:89] message``."""

    def format(self, record):
        seconds = int(record.created)
        stamp = time.strftime("%m%d %H:%M:%S", time.localtime(seconds))
        micros = int((record.created - seconds) * 1e6)
        prefix = (f"{record.levelname[0]}{stamp}.{micros:06d} {os.getpid()} "
                  f"{os.path.basename(record.pathname)}:{record.lineno}] ")
        return prefix + record.getMessage()


def glog_level(severity):
    """The logging level of glog severity ``severity`` (0 INFO ... 3 FATAL; above 3 counts as FATAL)."""
    return GLOG_LEVELS[min(max(int(severity), 0), 3)]


def _env_level():
    text = os.environ.get("GLOG_minloglevel", "").strip()
    if not text:
        return logging.INFO
    try:
        return glog_level(text)
    except ValueError:
        log.warning("Ignoring GLOG_minloglevel=%r: not a number (0 INFO, 1 WARNING, 2 ERROR, 3 FATAL)", text)
        return logging.INFO


def program_name():
    """The program's name as glog takes it from ``argv[0]``: ``pyskim`` for the ``pyskim`` command
    (also under ``python -m pyskim``), ``classify`` for ``tools/classify.py``."""
    name = os.path.basename(sys.argv[0] if sys.argv and sys.argv[0] else "python")
    name = name.removesuffix(".py")
    return "pyskim" if name in ("__main__", "-c", "") else name


def init_logging(level=None, logtostderr=None):
    """Log pyskim's messages to stderr in glog's format (as Caffe's tools do), unless the application
    configured logging already; with ``GLOG_log_dir`` set, also to a log file there (see the module
    docstring). ``level``: a logging level (default: ``GLOG_minloglevel``); ``logtostderr``: no log
    file (default: ``GLOG_logtostderr``)."""
    logger = logging.getLogger("pyskim")
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(GlogFormatter())
        logger.addHandler(handler)
    logger.setLevel(_env_level() if level is None else level)
    if logtostderr is None:
        logtostderr = os.environ.get("GLOG_logtostderr", "").strip().lower() in _TRUE
    log_dir = os.environ.get("GLOG_log_dir", "").strip()
    if log_dir and not logtostderr and _log_file["handler"] is None and _launcher_rank() in (None, "0"):
        _open_log_file(logger, log_dir)


def _launcher_rank():
    """This process's rank as an MPI launcher tells it (Open MPI, MPICH/Hydra), or None: under
    ``mpirun`` rank 0 alone writes the log file, as it alone logs."""
    for name in ("OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        if os.environ.get(name, "").strip():
            return os.environ[name].strip()
    return None


def _open_log_file(logger, log_dir):
    """Add a handler writing glog's INFO log file in ``log_dir`` (a warning when it cannot be created,
    as glog prints one and goes on)."""
    now = time.time()
    program = program_name()
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "invalid-user"
    name = (f"{program}.{socket.gethostname()}.{user}.log.INFO."
            f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}.{os.getpid()}")
    path = os.path.join(log_dir, name)
    try:
        handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    except OSError as e:
        logger.warning("Could not create log file %s: %s", path, e.strerror or e)
        return
    handler.stream.write(f"Log file created at: {time.strftime('%Y/%m/%d %H:%M:%S', time.localtime(now))}\n"
                         f"Running on machine: {socket.gethostname()}\n"
                         "Log line format: [IWEF]mmdd hh:mm:ss.uuuuuu threadid file:line] msg\n")
    handler.setFormatter(GlogFormatter())
    logger.addHandler(handler)
    _log_file["handler"] = handler
    link = os.path.join(log_dir, f"{program}.INFO")
    try:
        if os.path.islink(link):
            os.unlink(link)
        os.symlink(name, link)
    except OSError:
        pass                            # glog also goes on without the symlink


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
        if not log.isEnabledFor(logging.INFO):      # GLOG_minloglevel above INFO
            return
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
