"""AUTO's close calls, settled by timing: when the performance model predicts another mode of a layer
within :data:`TRIAL_MARGIN` times the time of the mode it would pick, the engine runs the candidate
modes in turn on the layer's next forward passes (its own input, inside the net, :data:`TRIAL_RUNS`
times each), times each run and keeps the mode with the fastest run; the model alone decides the other
layers. This is what cuDNN's benchmark mode does for its algorithms. The model's layer times are
within +-25% of the measurement for about four layers in five, so two predictions closer than a
factor 1.67 do not order the modes reliably, and the fifth layer is off by more: on GoogLeNet's 1x1
reductions the model's pick was up to 50% slower than the other mode, on its 4x4 ``loss*/conv``
layers the sparse time 1.3-2.5x the prediction.

Every candidate computes the same result up to float rounding, so the outputs of a trial's forwards
differ from each other only by rounding. A decision lasts as long as AUTO's model decision would: until
the weights, the input shape or the machine profile change. A net whose weights change before every
forward (training) therefore never finishes a trial: each forward runs the model's pick, and the
other candidates are not even packed. :func:`set_auto_trials` turns the trials
off (the model's pick runs at once, as the GSL planner predicts it).
"""

#: Modes predicted at most this many times slower than the model's pick are timed too.
TRIAL_MARGIN = 2.0
#: Timed runs of each candidate; the fastest run counts (a mode's first run may also pack its weights
#: and build its kernel plan).
TRIAL_RUNS = 3

_enabled = True


def set_auto_trials(enabled):
    """Turn AUTO's timing of close calls on or off for engines deciding from now on; returns the
    previous setting."""
    global _enabled
    previous, _enabled = _enabled, bool(enabled)
    return previous


def auto_trials_enabled():
    """Whether AUTO times its close calls (:func:`set_auto_trials`)."""
    return _enabled


class ModeTrial:
    """The timing of one layer's candidate ``modes`` (the model's pick first) for the decision
    remembered under ``key``: :meth:`next_mode` is the mode to run next, :meth:`record` takes its
    time; when :attr:`done`, :attr:`winner` is the mode with the fastest run (ties to the earlier
    candidate)."""

    def __init__(self, key, modes, runs=TRIAL_RUNS):
        if len(modes) < 2 or runs < 1:
            raise ValueError(f"a trial needs two or more modes and one or more runs, got {modes!r}, {runs}")
        self.key = key
        self.modes = tuple(modes)
        self.runs = runs
        #: Seconds of every timed run, per mode.
        self.seconds = {mode: [] for mode in self.modes}

    def next_mode(self):
        """The candidate with the fewest timed runs (candidates take turns)."""
        return min(self.modes, key=lambda mode: len(self.seconds[mode]))

    def record(self, mode, seconds):
        """Add one run of ``mode`` that took ``seconds``."""
        self.seconds[mode].append(seconds)

    @property
    def done(self):
        return all(len(times) >= self.runs for times in self.seconds.values())

    @property
    def winner(self):
        """The mode with the fastest run (only meaningful when :attr:`done`)."""
        return min(self.modes, key=lambda mode: min(self.seconds[mode], default=float("inf")))

    def __repr__(self):
        best = {mode: round(min(times) * 1e3, 3) for mode, times in self.seconds.items() if times}
        return f"ModeTrial({self.key!r}, fastest ms {best}, {'done' if self.done else 'running'})"
