"""Background batch loading, as Caffe's ``BasePrefetchingDataLayer``.

A daemon thread calls a ``load_batch`` function and queues its results; at most ``count`` batches
(``data_param.prefetch``, default 4) wait ahead of the consumer. The thread holds no reference to
the layer, so dropping the layer (or the net) stops it: a ``weakref.finalize`` on the
:class:`Prefetcher` sets the stop flag and wakes the thread. An exception in ``load_batch`` is
handed to the consumer, which re-raises it on its next :meth:`Prefetcher.next`.
"""
import queue
import threading
import weakref

_STOP = object()


def _run(load_batch, free, full, stop):
    while True:
        token = free.get()
        if token is _STOP or stop.is_set():
            return
        try:
            batch = load_batch()
        except BaseException as e:  # noqa: BLE001  (handed over to the consumer thread)
            full.put(_Failure(e))
            return
        full.put(batch)


class _Failure:
    def __init__(self, error):
        self.error = error


def _shutdown(free, stop):
    stop.set()
    free.put(_STOP)


class Prefetcher:
    """Run ``load_batch()`` in a background thread, ``count`` batches ahead."""

    def __init__(self, load_batch, count, name):
        if count < 1:
            raise ValueError(f"{name}: prefetch count must be at least 1, got {count}")
        self._free, self._full, self._stop = queue.Queue(), queue.Queue(), threading.Event()
        for _ in range(count):
            self._free.put(True)
        self.thread = threading.Thread(target=_run, args=(load_batch, self._free, self._full, self._stop),
                                       name=f"prefetch-{name}", daemon=True)
        self._finalizer = weakref.finalize(self, _shutdown, self._free, self._stop)
        self.thread.start()

    def next(self):
        """The next batch (waits for the thread); re-raises the thread's error if it failed."""
        batch = self._full.get()
        if isinstance(batch, _Failure):
            self._full.put(batch)          # keep failing on later calls
            raise batch.error
        self._free.put(True)
        return batch

    def close(self, timeout=5.0):
        """Stop the thread and wait for it to finish its current batch."""
        self._finalizer()
        self.thread.join(timeout)
