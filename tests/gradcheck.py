"""Caffe's ``GradientChecker`` for pyskim layers (``test_gradient_check_util.hpp``), a tests-only helper.

The checker compares what a layer's backward writes with central differences of an objective built on
its tops, for every element of the checked bottoms and learnable params:

* the objective is linear in the tops: ``sum(c * top)`` with random coefficients ``c`` over all tops
  (or over ``top[top_id]`` only), or ``2 * top[top_id].flat[top_data_id]`` for a single element, as
  Caffe's ``GetObjAndGradient`` with a top index; the coefficients are the top diffs backward receives;
* the layer runs in float32, the objective is summed in float64, and the step is the float32 step
  really applied (``float32(x + h) - float32(x - h)``), so rounding of the step does not enter;
* an estimate and a computed value agree when ``|a - b| <= threshold * max(|a|, |b|, 1)`` (Caffe's
  scale-relative threshold); every disagreement is collected and one ``AssertionError`` lists them;
* an element whose value ``x`` has ``kink - kink_range <= |x| <= kink + kink_range`` is skipped, as
  Caffe skips the non-differentiable points of ReLU-like layers (the default range, -1, skips none);
* the random generator is reseeded before every forward, so Dropout draws the same mask each time.

Unlike Caffe, the checker does not call ``setup``: the caller sets the layer up (or takes it, set up,
from a Net), so a layer built inside a Net is checked with the bottoms and tops the Net gave it. With
``directions=k`` it checks ``k`` random directions per blob instead of every element (cheaper for big
layers; the same threshold applies to the directional derivative).
"""
import numpy as np

from pyskim.core.blob import Blob
from pyskim.core.state import set_random_seed
from pyskim.io.protofiles import parse_text
from pyskim.layers import create_layer
from pyskim.proto import caffe_pb2

#: Caffe's ``GetObjAndGradient`` weighs a single checked top element by 2.
SINGLE_ELEMENT_WEIGHT = 2.0
#: How many disagreements the failure message lists.
REPORTED_FAILURES = 8


class GradientChecker:
    """Numeric gradient checks of one layer with Caffe's options.

    ``stepsize`` is the central-difference step ``h``, ``threshold`` the scale-relative tolerance,
    ``seed`` seeds the objective's coefficients, the directions and every forward's random draws,
    ``kink``/``kink_range`` describe the skipped non-smooth region, ``directions`` (0: per element)
    the number of random directions checked per blob."""

    def __init__(self, stepsize, threshold, seed=1701, kink=0.0, kink_range=-1.0, directions=0):
        self.stepsize = float(stepsize)
        self.threshold = float(threshold)
        self.seed = int(seed)
        self.kink = float(kink)
        self.kink_range = float(kink_range)
        self.directions = int(directions)

    # -- Caffe's entry points ----------------------------------------------------------------------
    def check_gradient(self, layer, bottom, top, check_bottom=None, top_id=None):
        """Check every checked bottom and every learnable param against ``sum(c * top)`` over all
        tops, or over ``top[top_id]`` only (``CheckGradient``). ``check_bottom`` is None for every
        bottom, an index for one, or a sequence of indices (empty: params only, Caffe's ``-2``)."""
        bottom_indices = self._bottom_indices(bottom, top, check_bottom)
        self._forward(layer, bottom, top)   # a top's shape may depend on the data (Filter)
        rng = np.random.default_rng(self.seed)
        coefficients = [rng.standard_normal(t.shape).astype(np.float32) if top_id in (None, i)
                        else np.zeros(t.shape, np.float32) for i, t in enumerate(top)]
        self._check(layer, bottom, top, bottom_indices, coefficients,
                    f"objective sum(c * top{'' if top_id is None else f'[{top_id}]'})")

    def check_gradient_single(self, layer, bottom, top, check_bottom, top_id, top_data_id):
        """Check against one top element, ``2 * top[top_id].flat[top_data_id]``
        (``CheckGradientSingle``)."""
        bottom_indices = self._bottom_indices(bottom, top, check_bottom)
        self._forward(layer, bottom, top)
        coefficients = [np.zeros(t.shape, np.float32) for t in top]
        coefficients[top_id].flat[top_data_id] = SINGLE_ELEMENT_WEIGHT
        self._check(layer, bottom, top, bottom_indices, coefficients,
                    f"objective 2 * top[{top_id}].flat[{top_data_id}]")

    def check_gradient_exhaustive(self, layer, bottom, top, check_bottom=None):
        """Check against every element of every top in turn (``CheckGradientExhaustive``); costs a
        full check per top element, so it suits small tops such as a loss."""
        if not top:
            raise ValueError("exhaustive mode needs at least one top blob")
        for top_id, blob in enumerate(top):
            for top_data_id in range(blob.count):
                self.check_gradient_single(layer, bottom, top, check_bottom, top_id, top_data_id)

    def check_gradient_eltwise(self, layer, bottom, top):
        """Check a layer computing element-wise only (``top_i`` depends on ``bottom_i`` alone), such as
        a neuron layer (``CheckGradientEltwise``). Because the Jacobian is diagonal, the
        central differences of all elements of a bottom come from one pair of forwards that steps
        them all at once; backward gets random top diffs, so a non-zero off-diagonal term in the
        layer's backward shows up as a wrong element."""
        if layer.blobs:
            raise ValueError("eltwise mode checks layers without parameter blobs")
        if not top or any(b.count != t.count for b in bottom for t in top):
            raise ValueError("eltwise mode needs tops and bottoms of one element count")
        bottom_indices = self._bottom_indices(bottom, top, None)
        self._forward(layer, bottom, top)
        rng = np.random.default_rng(self.seed)
        coefficients = [rng.standard_normal(t.shape).astype(np.float32) for t in top]
        computed = self._backward(layer, bottom, top, bottom_indices, coefficients)
        failures = []
        for index, blob in enumerate(bottom):
            start = blob.data.copy()
            plus, minus = self._stepped(start, np.ones(start.shape))
            tops_plus = self._forward_tops(layer, bottom, top, blob, plus)
            tops_minus = self._forward_tops(layer, bottom, top, blob, minus)
            blob.data[...] = start
            step = plus.astype(np.float64) - minus.astype(np.float64)
            change = sum(c.ravel() * (p - m).ravel() for c, p, m in zip(coefficients, tops_plus, tops_minus))
            estimated = change.reshape(start.shape) / step
            failures += self._compare(f"bottom {index}", start, computed[index], estimated)
        self._forward(layer, bottom, top)
        self._report(layer, failures, "element-wise objective c_i * top_i")

    # -- the work ----------------------------------------------------------------------------------
    def _check(self, layer, bottom, top, bottom_indices, coefficients, objective_name):
        """Backward once, then compare every checked blob's diff with central differences."""
        computed = self._backward(layer, bottom, top, bottom_indices, coefficients)
        targets = [(f"bottom {i}", bottom[i]) for i in bottom_indices]
        targets += [(f"param {j}", blob) for j, blob in enumerate(layer.blobs)
                    if layer.param_propagate_down[j]]
        rng = np.random.default_rng([self.seed, 1])
        failures = []
        for (label, blob), grad in zip(targets, computed):
            if self.directions:
                failures += self._check_directions(layer, bottom, top, coefficients, label, blob, grad, rng)
            else:
                failures += self._check_elements(layer, bottom, top, coefficients, label, blob, grad)
        self._forward(layer, bottom, top)   # leave the tops as the unperturbed inputs give them
        self._report(layer, failures, objective_name)

    def _check_elements(self, layer, bottom, top, coefficients, label, blob, grad):
        """Central difference of the objective for each element of ``blob`` alone."""
        start = blob.data.copy()
        estimated = np.zeros(start.shape)
        checked = ~self.near_kink(start)
        for k in np.flatnonzero(checked):
            x = start.flat[k]
            plus, minus = np.float32(x + self.stepsize), np.float32(x - self.stepsize)
            blob.data.flat[k] = plus
            objective_plus = self._objective(layer, bottom, top, coefficients)
            blob.data.flat[k] = minus
            objective_minus = self._objective(layer, bottom, top, coefficients)
            blob.data.flat[k] = x
            estimated.flat[k] = (objective_plus - objective_minus) / (np.float64(plus) - np.float64(minus))
        return self._compare(label, start, grad, estimated)

    def _check_directions(self, layer, bottom, top, coefficients, label, blob, grad, rng):
        """Central difference of the objective along random directions through all of ``blob``
        (elements near the kink stay put); compares ``<grad, step> / 2h`` with ``(f+ - f-) / 2h``."""
        start = blob.data.copy()
        failures = []
        for d in range(self.directions):
            direction = rng.standard_normal(start.shape) * ~self.near_kink(start)
            plus, minus = self._stepped(start, direction)
            blob.data[...] = plus
            objective_plus = self._objective(layer, bottom, top, coefficients)
            blob.data[...] = minus
            objective_minus = self._objective(layer, bottom, top, coefficients)
            blob.data[...] = start
            step = plus.astype(np.float64) - minus.astype(np.float64)
            along = float(np.sum(grad * step)) / (2 * self.stepsize)
            estimated = (objective_plus - objective_minus) / (2 * self.stepsize)
            if self._disagree(np.array(along), np.array(estimated)):
                failures.append((f"{label} along random direction {d}", along, estimated))
        return failures

    def _compare(self, label, values, computed, estimated):
        """Per element of ``values``, Caffe's test, skipping kink elements; returns
        ``(where, computed, estimated)`` per disagreement."""
        failures = []
        for k in np.flatnonzero(self._disagree(computed, estimated) & ~self.near_kink(values)):
            index = tuple(int(i) for i in np.unravel_index(k, values.shape))
            where = f"{label} at {index} (x = {values.flat[k]:.6g})"
            failures.append((where, float(computed.flat[k]), float(estimated.flat[k])))
        return failures

    def _disagree(self, computed, estimated):
        """Caffe's test fails: ``|a - b| > threshold * max(|a|, |b|, 1)`` (NaN fails too)."""
        scale = np.maximum(np.maximum(np.abs(computed), np.abs(estimated)), 1.0)
        return ~(np.abs(computed - estimated) <= self.threshold * scale)

    def near_kink(self, values):
        """Per value, whether it lies in the skipped region ``kink - kink_range <= |x| <= kink + kink_range``."""
        magnitude = np.abs(values.astype(np.float64))
        return (self.kink - self.kink_range <= magnitude) & (magnitude <= self.kink + self.kink_range)

    def _stepped(self, start, direction):
        """``start +- h * direction`` as the float32 values a blob can hold."""
        shift = self.stepsize * direction
        return ((start + shift).astype(np.float32), (start - shift).astype(np.float32))

    # -- one pass ----------------------------------------------------------------------------------
    def _forward(self, layer, bottom, top):
        set_random_seed(self.seed)
        layer.forward(bottom, top)

    def _objective(self, layer, bottom, top, coefficients):
        self._forward(layer, bottom, top)
        return sum(float(np.dot(w.ravel().astype(np.float64), t.data.ravel().astype(np.float64)))
                   for w, t in zip(coefficients, top))

    def _forward_tops(self, layer, bottom, top, blob, values):
        """The tops (float64 copies) after a forward with ``blob`` holding ``values``."""
        blob.data[...] = values
        self._forward(layer, bottom, top)
        return [t.data.astype(np.float64) for t in top]

    def _backward(self, layer, bottom, top, bottom_indices, coefficients):
        """Forward, then backward with the objective's coefficients as top diffs; param diffs start at
        zero and checked bottom diffs at NaN before the forward (so an element neither pass writes
        fails; Caffe's HingeLoss keeps its forward's margins in the bottom diff). Returns the diffs of
        the checked bottoms, then of the learnable params."""
        for i in bottom_indices:
            bottom[i].diff[...] = np.nan
        self._forward(layer, bottom, top)
        for blob in layer.blobs:
            blob.diff[...] = 0
        for blob, w in zip(top, coefficients):
            blob.diff[...] = w
        layer.backward(top, [i in bottom_indices for i in range(len(bottom))], bottom)
        diffs = [bottom[i].diff.astype(np.float64) for i in bottom_indices]
        return diffs + [blob.diff.astype(np.float64) for j, blob in enumerate(layer.blobs)
                        if layer.param_propagate_down[j]]

    @staticmethod
    def _bottom_indices(bottom, top, check_bottom):
        """The checked bottoms' indices; refuses an in-place layer, whose forward overwrites the
        values the differences step (Caffe's checker cannot check one either)."""
        if any(t is b for t in top for b in bottom):
            raise ValueError("cannot check an in-place layer: give it a top of its own")
        if check_bottom is None:
            return list(range(len(bottom)))
        if isinstance(check_bottom, (int, np.integer)):
            return [int(check_bottom)]
        return list(check_bottom)

    def _report(self, layer, failures, objective_name):
        if not failures:
            return
        lines = [f"  {where}: backward {computed:.6g}, numeric {estimated:.6g}"
                 for where, computed, estimated in failures[:REPORTED_FAILURES]]
        more = len(failures) - REPORTED_FAILURES
        raise AssertionError(
            f"gradient check of layer '{layer.name}' ({layer.type}) failed for {len(failures)} value(s) "
            f"({objective_name}, stepsize {self.stepsize:g}, threshold {self.threshold:g}):\n"
            + "\n".join(lines) + (f"\n  ... and {more} more" if more > 0 else ""))


def build_layer(text, arrays, num_top=1):
    """Set up the layer a LayerParameter text describes on bottoms holding ``arrays`` (and ``num_top``
    empty tops), as Caffe's layer tests do before checking forward values and gradients."""
    layer = create_layer(parse_text(text, caffe_pb2.LayerParameter()))
    bottom = []
    for i, array in enumerate(arrays):
        blob = Blob(np.shape(array), name=f"b{i}")
        blob.data[...] = array
        bottom.append(blob)
    top = [Blob(name=f"t{i}") for i in range(num_top)]
    layer.setup(bottom, top)
    return layer, bottom, top
