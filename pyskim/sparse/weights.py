"""Exact weight-change detection for the sparse engines.

An engine packs ``blobs[0]`` into its sparse structures and must repack before its next forward
whenever any bit of any weight changed, whatever array the change went through: ``net.params[n][0]
.data[...] = w``, an array taken earlier and kept (``w = net.params[n][0].data; w[7] += 3``), a view
of a view of it, a caffemodel load. :class:`WeightWatch` decides it in two steps:

1. The fast path, exact by construction: :meth:`pyskim.core.blob.Blob.data_untouched_since` proves
   that nobody could write the weights since the last check (no writable array was handed out since,
   and none was alive then). This costs about a microsecond.
2. Otherwise a bitwise compare against :class:`WeightRecord`, the bits the structures were packed
   from (so ``0.0 -> -0.0`` and a NaN's payload count as changes, and rewriting equal values does
   not). The record is sparse (the nonzero words' bits and their positions inside blocks of 65536
   words: 6 bytes each) when that is smaller than a dense copy, so it never holds more than one copy
   of the weights; the compare runs block by block, each block read once while it is in cache.

While an engine has released the dense weights (:meth:`pyskim.core.blob.Blob.release_data`) the watch
keeps no record: nothing can write weights that have no array, and reading them back rebuilds both
the array and the record (:meth:`WeightWatch.record_values`).
"""
import numpy as np

#: Words per block of the compare: a position inside a block fits in 16 bits, a block in the L2 cache.
BLOCK = 1 << 16
#: Bytes of a sparse record per nonzero word: the word (4) and its position in its block (2).
_SPARSE_BYTES = 6


#: The bits of -0.0 as a float32 word.
_NEGATIVE_ZERO = np.uint32(0x80000000)


def _words(weights):
    return weights.reshape(-1).view(np.uint32)


def negative_zeros(weights):
    """Where ``weights`` holds ``-0.0`` (the sparse structures keep only nonzeros): one bit per word
    (``np.packbits``; pruning by a mask leaves ``-0.0`` wherever it zeroed a negative weight), or
    None when there is none."""
    found = _words(weights) == _NEGATIVE_ZERO
    return np.packbits(found) if found.any() else None


def put_negative_zeros(weights, bits):
    """Write ``-0.0`` where :func:`negative_zeros` found it (``weights`` flat, ``bits`` its result)."""
    if bits is not None:
        weights[np.unpackbits(bits, count=weights.size).view(bool)] = -0.0


class WeightRecord:
    """The exact bits of a weight array: its shape, and either its nonzero words with their positions
    (per block of :data:`BLOCK` words: where each block's words start, their offsets in the block) or,
    when that would be larger, a copy of all words."""

    def __init__(self, weights):
        words = _words(weights)
        self.shape = weights.shape
        nonzero = np.flatnonzero(words)
        if nonzero.size * _SPARSE_BYTES < words.size * 4:
            self.words = words[nonzero]
            self.offsets = (nonzero % BLOCK).astype(np.uint16)
            edges = np.append(np.arange(0, words.size, BLOCK), words.size)
            self.starts = np.searchsorted(nonzero, edges)      # block i's words: starts[i]:starts[i + 1]
        else:
            self.words = words.copy()
            self.offsets = self.starts = None

    @property
    def nbytes(self):
        """Memory the record holds."""
        return self.words.nbytes + (0 if self.offsets is None else self.offsets.nbytes + self.starts.nbytes)

    def matches(self, weights):
        """Whether ``weights`` has exactly the recorded bits."""
        if weights.shape != self.shape:
            return False
        words = _words(weights)
        for block, start in enumerate(range(0, words.size, BLOCK)):
            current = words[start:start + BLOCK]
            if self.offsets is None:
                if not np.array_equal(current, self.words[start:start + BLOCK]):
                    return False
                continue
            # the recorded words still hold their (nonzero) bits, and no other word of the block is nonzero
            lo, hi = self.starts[block], self.starts[block + 1]
            if np.count_nonzero(current) != hi - lo or not np.array_equal(current.take(self.offsets[lo:hi]),
                                                                          self.words[lo:hi]):
                return False
        return True


class WeightWatch:
    """Tells an engine whether a weight blob changed since its structures were packed from it."""

    def __init__(self):
        self.mark = None
        self.record = None

    @property
    def nbytes(self):
        """Memory the record of the packed weights holds."""
        return 0 if self.record is None else self.record.nbytes

    def forget(self):
        """The next :meth:`changed` answers True (e.g. after a caffemodel was loaded)."""
        self.mark = self.record = None

    def changed(self, blob):
        """True when ``blob``'s weights differ, bit for bit, from the last :meth:`remember` (or
        nothing was remembered); False when they provably or verifiably did not change."""
        if self.mark is not None and blob.data_untouched_since(self.mark):
            return False
        if self.record is None or not self.record.matches(blob.readonly_data):
            return True
        self.mark = blob.data_mark()
        return False

    def remember(self, blob):
        """Record ``blob``'s weights as the ones the structures were packed from."""
        self.record = WeightRecord(blob.readonly_data)
        self.mark = blob.data_mark()

    def untouched(self, blob):
        """True when ``blob``'s weights provably are the remembered ones (no writable array of them
        existed since): the condition for releasing their dense array."""
        return self.mark is not None and blob.data_untouched_since(self.mark)

    def drop_record(self):
        """Free the record (the weights were released: the mark alone proves them unchanged)."""
        self.record = None

    def record_values(self, weights):
        """Record ``weights``, the exact values the structures hold (the mark is kept)."""
        self.record = WeightRecord(weights)
