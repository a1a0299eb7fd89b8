"""Writing output files safely: a temp file beside the target, renamed into place when complete.

Every file pyskim writes (caffemodels, solver states, means, prototxts, ``.npz``/``.onnx`` exports,
HDF5 files, built in memory first) goes through :func:`atomic_write`, so that an interrupted or
failed write never destroys the previous file. What it mirrors of Caffe, and what it adds:

* Permissions: the file is created with mode ``0666 & ~umask``, as Caffe's ``std::ofstream`` /
  ``fopen`` create theirs (not the 0600 of :func:`tempfile.mkstemp`).
* Failures: Caffe aborts with a ``CHECK`` failure when a write fails; pyskim raises
  :class:`FileWriteError`, one line naming the file and the cause (``No space left on device``,
  ``File too large``, ...), after removing the temp file.
* Temp files are named ``.<final name>.pyskim-tmp-<pid>-<random>``. A process killed while writing
  (``kill -9``) leaves one behind; :func:`remove_stale_temp_files` removes those of a name prefix
  (the solver calls it before each snapshot), skipping the ones this process is writing and those
  of a process still running.
"""
import os
import re
import secrets

from ..core.state import log
from ..errors import FileWriteError

__all__ = ["atomic_write", "remove_stale_temp_files", "temp_name"]

TEMP_MARKER = ".pyskim-tmp-"
_TEMP_PATTERN = re.compile(r"^\.(?P<name>.+)" + re.escape(TEMP_MARKER) + r"(?P<pid>\d+)-[0-9a-f]+$")

#: Temp files this process is writing now (absolute paths); never removed as stale.
_writing = set()


def temp_name(path):
    """The temp file name used while writing ``path``: ``.<name>.pyskim-tmp-<pid>-<random>``, in the
    same folder (so the final rename stays on one file system and is atomic)."""
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    return os.path.join(folder, f".{name}{TEMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}")


def atomic_write(path, data, mode="wb"):
    """Write ``data`` (bytes; str with ``mode="w"``, as UTF-8) to ``path``: into a new temp file beside
    it (mode 0666 & ~umask), synced to disk, then renamed onto ``path``. On any error the temp file is
    removed and ``path`` left as it was; an ``OSError`` becomes :class:`FileWriteError` naming
    ``path`` and the cause."""
    path = os.fspath(path)
    if "b" not in mode:
        data = data.encode("utf-8")
    tmp, fd = _create_temp(path)
    _writing.add(tmp)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise FileWriteError(f"Could not write {path}: {e.strerror or e}") from None
    finally:
        _writing.discard(tmp)
        if os.path.lexists(tmp):
            os.unlink(tmp)


def _create_temp(path):
    """Create a new temp file for ``path`` with mode 0666 & ~umask (the kernel applies the umask, as
    for the files Caffe's ``std::ofstream`` creates); returns (its path, an open descriptor)."""
    for _ in range(100):
        tmp = temp_name(path)
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except FileExistsError:
            continue
        except (OSError, ValueError) as e:     # ValueError: a NUL byte in the path
            raise FileWriteError(f"Could not write {path}: {getattr(e, 'strerror', None) or e}") from None
    raise FileWriteError(f"Could not write {path}: no free temp file name in its folder")


def remove_stale_temp_files(prefix):
    """Remove the temp files that interrupted writes of files named ``<prefix>...`` left behind:
    ``.<name>.pyskim-tmp-<pid>-<random>`` in ``prefix``'s folder where ``<name>`` starts with
    ``prefix``'s last part, unless this process is writing it or process ``<pid>`` is still running.
    Logs one line per file removed; returns the paths removed. A file that cannot be removed is
    left (and logged as a warning)."""
    folder, start = os.path.split(os.path.abspath(os.fspath(prefix)))
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    removed = []
    for name in sorted(names):
        match = _TEMP_PATTERN.match(name)
        if match is None or not match.group("name").startswith(start):
            continue
        path = os.path.join(folder, name)
        if path in _writing or _process_running(int(match.group("pid"))):
            continue
        try:
            size = os.path.getsize(path)
            os.unlink(path)
        except OSError as e:
            log.warning("Could not remove stale temp file %s: %s", path, e.strerror or e)
            continue
        log.info("Removed stale temp file %s (%d bytes) left by an interrupted write of %s",
                 path, size, os.path.join(folder, match.group("name")))
        removed.append(path)
    return removed


def _process_running(pid):
    """True when another process with this id exists (this process's own leftovers are stale)."""
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except PermissionError:             # it exists, owned by another user
        return True
    except (ProcessLookupError, OverflowError):
        return False
    return True
