"""Which share of a data source this process reads when several processes train one model
(data-parallel training, :mod:`pyskim.solvers.distributed`).

A source (an LMDB, an image list, a list of HDF5 files) is one endless stream of records: the order a
single process reads, wrapping around at the end (and reshuffling there where the layer shuffles).
Cut it into blocks of ``batch_size`` records: global batch ``k`` is records ``k·B .. k·B + B - 1``.
Rank ``r`` of ``N`` reads global batches ``r, r + N, r + 2N, ...``: it skips ``r·B`` records before
its first batch and ``(N - 1)·B`` records after each batch. So in every iteration the N ranks read
global batches ``k·N .. k·N + N - 1`` between them, the batches one process with ``iter_size N``
reads in that iteration (rank ``r``'s batch is that process's ``r``-th forward pass), and with
``iter_size I`` each the N·I batches of one process with ``iter_size N·I``. The shares are disjoint
and every record is read once per pass over the data, as by one process.

The hook: the data layers' sources (:mod:`pyskim.data.sources`) take the shard in force when they are
built (:func:`data_shard`), so a solver builds its nets inside ``with use_data_shard(rank, size):``.
The default is the whole stream (rank 0 of 1). Layers fed from outside (Input, MemoryData) and
DummyData are not sharded.
"""
import contextlib
import dataclasses
import threading

__all__ = ["Shard", "data_shard", "use_data_shard"]


@dataclasses.dataclass(frozen=True)
class Shard:
    """Rank ``rank`` of ``size`` processes reading one source (see the module docstring)."""

    rank: int = 0
    size: int = 1

    def __post_init__(self):
        if not 0 <= self.rank < self.size:
            raise ValueError(f"data shard: rank {self.rank} is not one of 0..{self.size - 1}")

    def records_before_first(self, batch_size):
        """Records to skip before this rank's first batch."""
        return self.rank * batch_size

    def records_between(self, batch_size):
        """Records to skip after each of this rank's batches (the other ranks' batches)."""
        return (self.size - 1) * batch_size


WHOLE = Shard()
_current = {"shard": WHOLE}
_lock = threading.Lock()


def data_shard():
    """The shard a data source built now reads (the whole stream unless :func:`use_data_shard` is active)."""
    return _current["shard"]


@contextlib.contextmanager
def use_data_shard(rank, size):
    """Data sources built inside the block read rank ``rank`` of ``size``'s share; sources keep the
    shard they were built with."""
    shard = Shard(int(rank), int(size))
    with _lock:
        previous, _current["shard"] = _current["shard"], shard
    try:
        yield shard
    finally:
        with _lock:
            _current["shard"] = previous
