"""Guided Sparsity Learning: the performance-model plan (:mod:`.plan`), the prune / masked fine-tune
stages (:mod:`.gsl`), the pruning methods GESL, GDNS and the magnitude baseline (:mod:`.methods`) and
the reports (:mod:`.report`)."""
