"""LMDB databases of serialized Datums, as Caffe's ``db_lmdb`` (LevelDB is not supported).

:class:`LMDBReader` walks the records in key order and starts again at the first record after the
last one (``DataLayer::Next``); :class:`LMDBWriter` puts records in transactions (``db::Transaction``).
"""
import os
import threading
import weakref

import lmdb
from google.protobuf.message import DecodeError

from ..core.state import log
from ..errors import DataError
from ..proto import caffe_pb2

LMDB = caffe_pb2.DataParameter.LMDB
LEVELDB = caffe_pb2.DataParameter.LEVELDB
#: Map size used when writing: LMDB reserves address space only, so a large value is harmless.
WRITE_MAP_SIZE = 1 << 40
# LMDB allows one environment per database per process: readers of the same database (a TRAIN and
# a TEST net, several Data layers) share it, counted; it is closed when its last reader lets go.
_READ_ENVS = {}
_READ_ENVS_LOCK = threading.Lock()


def check_backend(backend, source, owner):
    """Refuse LevelDB (``backend`` is a DataParameter.DB value or a tool's "lmdb"/"leveldb" string)."""
    if backend in (LEVELDB, "leveldb"):
        raise DataError(f"{owner}: LevelDB is not supported by pyskim (source '{source}'); convert the "
                        f"database to LMDB")
    if backend not in (LMDB, "lmdb"):
        raise DataError(f"{owner}: unknown database backend {backend!r} (source '{source}')")


def parse_datum(raw, source, key):
    """Deserialize one record, naming the database and key when it is not a Datum."""
    datum = caffe_pb2.Datum()
    try:
        datum.ParseFromString(raw)
    except DecodeError as e:
        raise DataError(f"LMDB '{source}': record {_show_key(key)} is not a valid Datum ({e})") from None
    return datum


def _show_key(key):
    return repr(key.decode("utf-8", "replace"))


def open_env(source, write=False):
    """Open an LMDB directory for writing, or take a reference to its shared read-only environment
    (no locking, no read-ahead); give that back with :func:`release_env`."""
    source = os.fspath(source)
    try:
        if write:
            return lmdb.open(source, map_size=WRITE_MAP_SIZE, subdir=True, meminit=False, mode=0o664)
        if not os.path.isdir(source):
            raise DataError(f"LMDB '{source}' does not exist (or is not a directory)")
        with _READ_ENVS_LOCK:
            entry = _READ_ENVS.get(os.path.realpath(source))
            if entry is None:
                env = lmdb.open(source, readonly=True, lock=False, readahead=False, subdir=True,
                                max_readers=1024)
                entry = _READ_ENVS[os.path.realpath(source)] = [env, 0]
            entry[1] += 1
            return entry[0]
    except lmdb.Error as e:
        raise DataError(f"Could not open LMDB '{source}': {e}") from None


def release_env(source):
    """Give back a reference taken by ``open_env(source)``; the last one closes the environment
    (which ends any transaction still open on it)."""
    with _READ_ENVS_LOCK:
        key = os.path.realpath(source)
        entry = _READ_ENVS.get(key)
        if entry is not None:
            entry[1] -= 1
            if entry[1] <= 0:
                del _READ_ENVS[key]
                entry[0].close()


class LMDBReader:
    """Cycle through an LMDB's ``(key, Datum)`` records in key order (Caffe's LMDB cursor).

    ``peek`` reads the first record; ``next`` returns the record under the cursor and advances,
    logging "Restarting data prefetching from start." when it wraps around.
    """

    def __init__(self, source):
        self.source = os.fspath(source)
        self.env = open_env(self.source)
        # Released by absolute path: the working directory may change before the reader is collected.
        weakref.finalize(self, release_env, os.path.realpath(self.source))
        log.info("Opened lmdb %s", self.source)
        self._txn = None
        self._cursor = None
        try:
            with self.env.begin() as txn:
                self.entries = txn.stat()["entries"]
        except lmdb.Error as e:
            raise DataError(f"LMDB '{self.source}' is corrupt: {e}") from None
        if not self.entries:
            raise DataError(f"LMDB '{self.source}' holds no records")

    def peek(self):
        """The first record as ``(key, Datum)``."""
        try:
            with self.env.begin() as txn:
                cursor = txn.cursor()
                cursor.first()
                key, raw = bytes(cursor.key()), bytes(cursor.value())
        except lmdb.Error as e:
            raise DataError(f"LMDB '{self.source}' is corrupt: {e}") from None
        return key, parse_datum(raw, self.source, key)

    def next(self):
        """The record under the cursor as ``(key, Datum)``; then move on, wrapping around at the end."""
        try:
            cursor = self._open_cursor()
            key, raw = cursor.key(), cursor.value()
            self._advance(cursor)
        except lmdb.Error as e:
            raise DataError(f"LMDB '{self.source}' is corrupt: {e}") from None
        return key, parse_datum(raw, self.source, key)

    def skip(self, count):
        """Move on ``count`` records without reading them, wrapping around as :meth:`next` does (the
        records of the other processes of a data-parallel run, :mod:`pyskim.data.shard`)."""
        try:
            cursor = self._open_cursor()
            for _ in range(count):
                self._advance(cursor)
        except lmdb.Error as e:
            raise DataError(f"LMDB '{self.source}' is corrupt: {e}") from None

    def _open_cursor(self):
        if self._cursor is None:
            self._txn = self.env.begin(buffers=False)
            self._cursor = self._txn.cursor()
            self._cursor.first()
        return self._cursor

    @staticmethod
    def _advance(cursor):
        if not cursor.next():
            log.info("Restarting data prefetching from start.")
            cursor.first()


def iterate(source):
    """Yield every ``(key, Datum)`` of an LMDB once, in key order (``compute_image_mean``)."""
    env_key = os.path.realpath(os.fspath(source))   # released by absolute path (the cwd may change)
    env = open_env(source)
    log.info("Opened lmdb %s", os.fspath(source))
    try:
        with env.begin() as txn:
            for key, raw in txn.cursor():
                yield bytes(key), parse_datum(bytes(raw), os.fspath(source), bytes(key))
    except lmdb.Error as e:
        raise DataError(f"LMDB '{os.fspath(source)}' is corrupt: {e}") from None
    finally:
        release_env(env_key)


class LMDBWriter:
    """Write records into a new LMDB, committing every ``commit_every`` puts (Caffe's tools use 1000)."""

    def __init__(self, path, commit_every=1000):
        path = os.fspath(path)
        if os.path.exists(path):
            raise DataError(f"LMDB '{path}' already exists; remove it first")
        os.makedirs(path)
        self.path = path
        self.env = open_env(path, write=True)
        log.info("Opened lmdb %s", path)
        self.commit_every = commit_every
        self._txn = self.env.begin(write=True)
        self._pending = 0

    def put(self, key, value):
        self._txn.put(key.encode() if isinstance(key, str) else key, value)
        self._pending += 1
        if self._pending >= self.commit_every:
            self.commit()

    def commit(self):
        self._txn.commit()
        self._txn = self.env.begin(write=True)
        self._pending = 0

    def close(self):
        self._txn.commit()
        self.env.close()
