"""Performance: the roofline model (:mod:`.model`), the machine profile and its calibration
(:mod:`.calibrate`). Pure prediction and measurement; it attaches no engine."""
