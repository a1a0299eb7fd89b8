"""Caffe's ``SignalHandler`` (``include/caffe/util/signal_handler.h``): SIGINT and SIGHUP become
solver actions (stop, snapshot or none), asked for by the solver loop between iterations."""
import signal

from ..errors import SolverError

ACTIONS = ("stop", "snapshot", "none")


class SignalHandler:
    """Turns SIGINT/SIGHUP into solver actions, as Caffe's ``SignalHandler``."""

    def __init__(self, sigint_effect, sighup_effect):
        for name, effect in (("sigint_effect", sigint_effect), ("sighup_effect", sighup_effect)):
            if effect not in ACTIONS:
                raise SolverError(f"Invalid signal effect \"{effect}\" was specified for -{name} "
                                  f"(use snapshot, stop or none)")
        self.effects = {signal.SIGINT: sigint_effect}
        if hasattr(signal, "SIGHUP"):
            self.effects[signal.SIGHUP] = sighup_effect
        self.pending = []
        self.previous = {sig: signal.signal(sig, self._on_signal) for sig in self.effects}

    def _on_signal(self, signum, frame):
        self.pending.append(signum)

    def action(self):
        """The action of the oldest signal not yet handled, else "none" (``GetRequestedAction``)."""
        return self.effects[self.pending.pop(0)] if self.pending else "none"

    def restore(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
