"""Caffe's core: :class:`~pyskim.core.blob.Blob`, fillers, process state, the layer contract and
registry (:mod:`~pyskim.core.layer`), NetState filtering and Split insertion
(:mod:`~pyskim.core.netgraph`) and the :class:`~pyskim.core.net.Net` graph. Nothing here imports a
layer type, an engine or a solver."""
