"""LMDB databases of serialized Datums, as Caffe's ``db_lmdb`` (LevelDB is not supported).

:class:`LMDBReader` walks the records in key order and starts again at the first record after the
last one (``DataLayer::Next``); :class:`LMDBWriter` puts records in transactions (``db::Transaction``).
"""
import os
import threading
import weakref

import lmdb
from google.protobuf.message import DecodeError

from ..common import log
from ..errors import DataError
from ..proto import caffe_pb2

LMDB = caffe_pb2.DataParameter.LMDB
LEVELDB = caffe_pb2.DataParameter.LEVELDB
#: Map size used when writing: LMDB reserves address space only, so a large value is harmless.
WRITE_MAP_SIZE = 1 << 40
# LMDB allows one environment per database per process: readers of the same database (a TRAIN and
# a TEST net, several Data layers) share it; it closes when its last reader is dropped.
_READ_ENVS = weakref.WeakValueDictionary()
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
    """Open an LMDB directory: read-only without locking or read-ahead, or for writing."""
    source = os.fspath(source)
    try:
        if write:
            return lmdb.open(source, map_size=WRITE_MAP_SIZE, subdir=True, meminit=False)
        if not os.path.isdir(source):
            raise DataError(f"LMDB '{source}' does not exist (or is not a directory)")
        key = os.path.realpath(source)
        with _READ_ENVS_LOCK:
            env = _READ_ENVS.get(key)
            if env is None:
                env = lmdb.open(source, readonly=True, lock=False, readahead=False, subdir=True,
                                max_readers=1024)
                _READ_ENVS[key] = env
            return env
    except lmdb.Error as e:
        raise DataError(f"Could not open LMDB '{source}': {e}") from None


class LMDBReader:
    """Cycle through an LMDB's ``(key, Datum)`` records in key order (Caffe's LMDB cursor).

    ``peek`` reads the first record; ``next`` returns the record under the cursor and advances,
    logging "Restarting data prefetching from start." when it wraps around.
    """

    def __init__(self, source):
        self.source = os.fspath(source)
        self.env = open_env(self.source)
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
            if self._cursor is None:
                self._txn = self.env.begin(buffers=False)
                self._cursor = self._txn.cursor()
                self._cursor.first()
            key, raw = self._cursor.key(), self._cursor.value()
            if not self._cursor.next():
                log.info("Restarting data prefetching from start.")
                self._cursor.first()
        except lmdb.Error as e:
            raise DataError(f"LMDB '{self.source}' is corrupt: {e}") from None
        return key, parse_datum(raw, self.source, key)

    def close(self):
        """End the read transaction (the shared environment closes with its last reader)."""
        if self._txn is not None:
            self._txn.abort()
            self._txn = self._cursor = None


def iterate(source):
    """Yield every ``(key, Datum)`` of an LMDB once, in key order (``compute_image_mean``)."""
    env = open_env(source)
    try:
        with env.begin() as txn:
            for key, raw in txn.cursor():
                yield bytes(key), parse_datum(bytes(raw), os.fspath(source), bytes(key))
    except lmdb.Error as e:
        raise DataError(f"LMDB '{os.fspath(source)}' is corrupt: {e}") from None


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
