"""Guided Sparsity Learning: the performance-model plan (:mod:`.plan`) and the prune / masked
fine-tune stages (:mod:`.gsl`)."""
