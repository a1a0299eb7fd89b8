"""Measured time of built nets, layer by layer: the loop of Caffe's ``caffe time`` (``tools/caffe.cpp``)
and a dense-vs-sparse comparison of two builds of the same net.

:func:`time_layers` times every layer's forward (and backward) pass over ``iterations`` iterations, as
``caffe time`` does after its warm-up pass. :func:`compare_nets` times two nets with the same layers
(the dense and the sparse build of one model, same weights), forward only, alternating the two every
block of iterations so that both see the same machine. Both return plain result objects and print nothing:
``pyskim time`` (:mod:`pyskim.apps.time_net`) formats them, GSL reads them. The callers build the nets
(with :func:`pyskim.sparse.apply_mode` for the sparse one).
"""
import dataclasses
import time


@dataclasses.dataclass(frozen=True)
class NetTiming:
    """Average seconds per iteration of each layer's forward and backward pass (``backward`` is empty
    when only the forward pass was timed), of the whole forward and backward passes, and the wall
    time of the whole timed loop."""

    layer_names: list
    forward: list
    backward: list
    forward_pass: float
    backward_pass: float
    wall_seconds: float
    iterations: int


@dataclasses.dataclass(frozen=True)
class LayerComparison:
    """One layer's average forward seconds in the dense and in the sparse net."""

    name: str
    dense: float
    sparse: float

    @property
    def speedup(self):
        """Dense time / sparse time (None when the sparse time is zero)."""
        return self.dense / self.sparse if self.sparse > 0 else None


@dataclasses.dataclass(frozen=True)
class NetComparison:
    """Per-layer and whole-net average forward seconds of a dense and a sparse net."""

    layers: list
    iterations: int

    @property
    def dense_total(self):
        return sum(row.dense for row in self.layers)

    @property
    def sparse_total(self):
        return sum(row.sparse for row in self.layers)

    @property
    def speedup(self):
        """Whole-net dense time / sparse time (inf when the sparse time is zero)."""
        return self.dense_total / self.sparse_total if self.sparse_total > 0 else float("inf")


def time_layers(net, iterations, forward_only=False, on_iteration=None):
    """Time ``net``'s layers over ``iterations`` iterations as ``caffe time``'s loop does: each layer's
    ``Forward`` in order, then (unless ``forward_only``) each layer's ``Backward`` in reverse order,
    every layer whether it needs backward or not. ``on_iteration(index, seconds)`` is called after
    each iteration (0-based index, its wall time). Averages divide by ``max(iterations, 1)``;
    returns a :class:`NetTiming`."""
    layers = net.layers
    forward = [0.0] * len(layers)
    backward = [0.0] * len(layers)
    forward_pass = backward_pass = 0.0
    loop_start = time.perf_counter()
    for j in range(iterations):
        iteration_start = time.perf_counter()
        for i, layer in enumerate(layers):
            start = time.perf_counter()
            layer.forward(net.bottom_vec(i), net.top_vec(i))
            forward[i] += time.perf_counter() - start
        forward_pass += time.perf_counter() - iteration_start
        if not forward_only:
            backward_start = time.perf_counter()
            for i in range(len(layers) - 1, -1, -1):
                start = time.perf_counter()
                layers[i].backward(net.top_vec(i), net.bottom_need_backward(i), net.bottom_vec(i))
                backward[i] += time.perf_counter() - start
            backward_pass += time.perf_counter() - backward_start
        if on_iteration is not None:
            on_iteration(j, time.perf_counter() - iteration_start)
    wall = time.perf_counter() - loop_start
    n = max(iterations, 1)
    return NetTiming(layer_names=list(net.layer_names()), forward=[t / n for t in forward],
                     backward=[] if forward_only else [t / n for t in backward], forward_pass=forward_pass / n,
                     backward_pass=backward_pass / n, wall_seconds=wall, iterations=iterations)


def time_nets(nets, iterations, block=5):
    """Forward each of ``nets`` (builds of one model: the same layers in the same order)
    ``max(iterations, 1)`` times, timing every layer; returns per net the average seconds of each
    layer's forward. The nets take turns in blocks of ``block`` timed forwards, each block after one
    untimed forward, so that all see the same machine and each is timed with its own data in the
    caches (a net whose weights exceed them would otherwise evict the next one's)."""
    count = len(nets[0].layers)
    for net in nets:
        if len(net.layers) != count:
            raise ValueError(f"the nets differ in length: {[len(n.layers) for n in nets]} layers")
    totals = [[0.0] * count for _ in nets]
    n = max(iterations, 1)
    for start in range(0, n, block):
        for net, acc in zip(nets, totals):
            net.forward_prefilled()
            for _ in range(min(block, n - start)):
                for i, layer in enumerate(net.layers):
                    t0 = time.perf_counter()
                    layer.forward(net.bottom_vec(i), net.top_vec(i))
                    acc[i] += time.perf_counter() - t0
    return [[t / n for t in acc] for acc in totals]


def compare_nets(dense_net, sparse_net, iterations):
    """:func:`time_nets` of ``dense_net`` and ``sparse_net``: a :class:`NetComparison` with one row per
    layer (the sparse net's layer names)."""
    names = list(sparse_net.layer_names())
    if len(dense_net.layers) != len(names):
        raise ValueError(f"the dense net has {len(dense_net.layers)} layers, the sparse net {len(names)}")
    dense, sparse = time_nets((dense_net, sparse_net), iterations)
    rows = [LayerComparison(name, d, s) for name, d, s in zip(names, dense, sparse)]
    return NetComparison(layers=rows, iterations=max(iterations, 1))
