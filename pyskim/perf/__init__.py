"""Performance: the pure roofline model (:mod:`.model`), this machine's profile and its cache
(:mod:`.profile`), the calibration that measures a profile (:mod:`.calibrate`) and the per-layer
timing of built nets (:mod:`.timing`). Prediction and measurement only; it attaches no engine."""
