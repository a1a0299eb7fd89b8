"""How well the performance model predicts this machine: predicted vs measured layer times, and how
much AUTO's picks cost against the faster mode.

The rows come from timing one model three times, layer by layer (:func:`pyskim.perf.timing.time_nets`):
forced dense, forced sparse and AUTO (``pyskim time -accuracy``). For each convolution and
inner-product layer a :class:`LayerAccuracy` holds the measured and the predicted seconds of the dense
and the sparse mode and the measured seconds of the layer in the AUTO net. Issue 14's bars are the
defaults here: the model's time within +-25% of the measurement, and AUTO no more than 10% slower
than the faster of the two modes it chooses between.
"""
import dataclasses

#: A prediction is "within" when measured / predicted is in [1 - t, 1 + t].
PREDICTION_TOLERANCE = 0.25
#: AUTO's pick may cost this much more than the faster mode.
AUTO_REGRET_LIMIT = 0.10


@dataclasses.dataclass(frozen=True)
class LayerAccuracy:
    """One layer: weight density, measured and predicted seconds per mode (``"dense"``, ``"sparse"``),
    the mode AUTO picked (``"dense"``, ``"sparse"`` or another, e.g. ``"ccnmm"``) and the seconds the
    AUTO net spent in the layer."""

    name: str
    density: float
    measured: dict
    predicted: dict
    auto_pick: str
    auto_seconds: float

    def error(self, mode):
        """measured / predicted - 1 of ``mode`` (positive: the model was optimistic)."""
        return self.measured[mode] / self.predicted[mode] - 1.0

    def within(self, mode, tolerance=PREDICTION_TOLERANCE):
        """Whether ``mode``'s prediction is within ``tolerance`` (relative) of its measurement."""
        return abs(self.error(mode)) <= tolerance

    @property
    def fastest(self):
        """The faster measured mode."""
        return min(self.measured, key=self.measured.get)

    @property
    def regret(self):
        """How much slower AUTO's pick is than the faster measured mode (0.1 = 10%): the pick's time in
        the forced runs (the same measurement as the faster mode's), or the AUTO net's time for a
        mode that was not forced."""
        picked = self.measured.get(self.auto_pick, self.auto_seconds)
        return picked / self.measured[self.fastest] - 1.0


@dataclasses.dataclass(frozen=True)
class AccuracySummary:
    """Counts over the layers: predictions within the tolerance, AUTO picks within the regret limit."""

    predictions: int
    predictions_within: int
    layers: int
    auto_within: int
    worst_regret: float

    @property
    def prediction_share(self):
        return self.predictions_within / self.predictions if self.predictions else 1.0


def summarize(rows, tolerance=PREDICTION_TOLERANCE, regret_limit=AUTO_REGRET_LIMIT):
    """The :class:`AccuracySummary` of :class:`LayerAccuracy` rows."""
    predictions = [(row, mode) for row in rows for mode in row.measured]
    return AccuracySummary(
        predictions=len(predictions),
        predictions_within=sum(row.within(mode, tolerance) for row, mode in predictions),
        layers=len(rows), auto_within=sum(row.regret <= regret_limit for row in rows),
        worst_regret=max((row.regret for row in rows), default=0.0))
