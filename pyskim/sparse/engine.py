"""The sparse engines: what a Convolution (:class:`ConvEngine`) or InnerProduct (:class:`FcEngine`)
runs in its ``conv_mode`` / ``gemm_mode`` (names in :mod:`.modes`). :mod:`.fusion` attaches one to a
layer's ``engine`` slot after the Net is built; the layer calls ``engine.forward(bottom, top)`` and runs
its dense path when that returns False.

* ``DIRECT_SCONV``: direct sparse convolution (:func:`pyskim.kernels.sparse.sparse_conv_forward`): the
  weights as CSR with padded-input offsets, bias added once in the kernel's store (SkimCaffe adds it
  twice on a plain Convolution), ReLU fused when a ReLU follows (:mod:`.fusion`). 2-D convolutions of
  any kernel, stride, pad, dilation and group; an N-d convolution falls back to LOWERED_GEMM with one
  warning.
* ``LOWERED_CCNMM``: im2col, then a GEMM over the lowered weight columns that are not all zero
  (SkimCaffe's squeezed GEMM; any dimensionality).
* ``SPMDM``: CSR weights x dense activations (:func:`pyskim.kernels.sparse.sparse_fc_forward`; SpMV at
  batch 1; ``transpose: true`` weights are packed transposed, where SkimCaffe fell back to GEMM).
* ``AUTO``: :func:`.modes.decide_mode` on the layer's input shape, weight density and column density,
  with the machine profile :func:`pyskim.perf.profile.get_profile` returns (cached or default: a forward
  never calibrates). Close calls (:func:`.modes.auto_candidates`) are settled by timing the candidate
  modes on the next forwards (:mod:`.trial`).
* The dense modes (LOWERED_GEMM, DIRECT_DCONV, GEMM; a layer switched to one after the build) return
  False; ``SPGEMM`` (never implemented upstream) and unknown modes too, with one warning per layer.

Weights. The sparse structures are packed from ``blobs[0]`` at the first forward in a sparse mode and
again whenever any weight changed (exactly, :mod:`.weights`), after ``weights_changed()`` (the Net
calls it after loading a caffemodel), and when the input size changes (the convolution offsets depend
on H x W). Backward always runs the dense path, in every mode.

The dense copy. An engine whose :attr:`~_Engine.drops_dense` is set (:mod:`.fusion` sets it in nets
that run no backward) releases the dense array of ``blobs[0]`` once its sparse structures hold the
weights and no array of them is alive (:meth:`pyskim.core.blob.Blob.release_data`), and packs at
once when the net is built and when weights are loaded, so that the dense weights of a whole net are
never in memory together. Reading the weights (``net.params[name][0].data``, a backward, a save)
rebuilds the dense array from the structures, bit for bit (where ``-0.0`` was, which the structures
drop, is kept beside them: one bit per weight, only when there is any).
"""
import functools
import logging
import math
import time

import numpy as np

from ..errors import KernelArgumentError
from ..kernels.csr import ConvCSR, pack_conv_weights, pack_fc_weights
from ..kernels.gemm import matmul
from ..kernels.sparse import SparseConv, sparse_fc_forward
from ..perf.model import ConvShape, FcShape
from ..perf.profile import get_profile
from .modes import (
    CCNMM,
    CONV,
    DENSE,
    GEMM_MODE_NAMES,
    IP,
    PLAIN_CONV_MODES,
    PLAIN_GEMM_MODES,
    SCONV,
    SPMDM,
    auto_candidates,
    decide_mode,
)
from .trial import TRIAL_MARGIN, ModeTrial, auto_trials_enabled
from .weights import WeightWatch, negative_zeros, put_negative_zeros

log = logging.getLogger("pyskim")

#: Upper bound on the im2col buffer of one chunk of images in LOWERED_CCNMM.
COL_BUFFER_BYTES = 64 << 20


def weight_density(weights):
    """Fraction of nonzero weights (0 for an empty array)."""
    return np.count_nonzero(weights) / max(weights.size, 1)


def nonzero_columns(weights, group):
    """Per group, the indices of the lowered weight columns (over ``channels/group x kernel``) that
    are not all zero, for weights (num_output, channels/group, *kernel)."""
    lowered = weights.reshape(group, weights.shape[0] // group, -1)
    return [np.flatnonzero(np.any(lowered[g] != 0, axis=0)) for g in range(group)]


def column_density(weights, group):
    """Fraction of the lowered weight columns of a convolution that are not all zero."""
    kept = nonzero_columns(weights, group)
    columns = group * math.prod(weights.shape[1:])
    return sum(len(c) for c in kept) / max(columns, 1)


def conv_shape(layer, bottom0):
    """The :class:`~pyskim.perf.model.ConvShape` of a Convolution on ``bottom0``; None unless it has
    two spatial axes."""
    axis, low = layer.axis, layer.lowering
    if len(low.kernel) != 2:
        return None
    cp = layer.param.convolution_param
    s = bottom0.shape
    return ConvShape(batch=bottom0.count_range(0, axis), channels=s[axis], height=s[axis + 1], width=s[axis + 2],
                     num_output=cp.num_output, kernel=low.kernel, stride=low.stride, pad=low.pad,
                     dilation=low.dilation, group=cp.group)


def fc_shape(layer):
    """The :class:`~pyskim.perf.model.FcShape` of an InnerProduct at its current batch."""
    return FcShape(batch=layer.M, num_input=layer.K, num_output=layer.num_output)


class _Engine:
    """What both engines share: the weight watch, AUTO's cached decision, fallbacks, the ReLU link,
    the release of the dense weights."""

    def __init__(self, layer, bottom=None):
        self.layer = layer
        #: The blobs the layer reads (its bottom vector), for packing before a forward; or None.
        self.bottom = bottom
        #: Whether the dense array of the weights is released while the sparse structures hold them
        #: (see the module docstring; :func:`pyskim.sparse.keep_dense_weights` changes it).
        self.drops_dense = False
        #: The :class:`~pyskim.layers.neuron.ReLUFusion` of the in-place ReLU this engine's kernel may
        #: apply, or None (set by :mod:`.fusion`).
        self.relu = None
        #: What the last forward ran (:data:`.modes.DENSE`, ``SCONV``, ``CCNMM``, ``SPMDM``), or None.
        self.last_mode = None
        self.density = 1.0
        #: How many times the structures were (re)built from the weights.
        self.repacks = 0
        self._watch = WeightWatch()
        self._warned = set()
        # The mode resolved per (requested mode, input shape), with the profile AUTO decided it by: a
        # layer whose mode, input and weights are unchanged since its last forward skips the decision.
        # For an AUTO close call the entry is a ModeTrial until the trial is done.
        self._resolved = {}
        #: AUTO's latest :class:`~.trial.ModeTrial` on this layer (running or done), or None.
        self.last_trial = None

    @property
    def weight_record_bytes(self):
        """Memory held to detect weight changes (at most one copy of the weights, :mod:`.weights`)."""
        return self._watch.nbytes

    def weights_changed(self):
        """The layer's ``weights_changed`` hook: repack at the next use, or now (:meth:`settle`)."""
        self._watch.forget()
        self.settle()

    def settle(self):
        """With :attr:`drops_dense` and known bottoms, pack the weights for the layer's current input
        now and release their dense array (after the build and after a load: one layer's dense
        weights in memory at a time). Fallbacks are left to the forward, which logs them."""
        if self.drops_dense and self.bottom is not None and self.prepare(self.bottom, warn=False) != DENSE:
            self.release_dense()

    def release_dense(self):
        """Release the dense array of ``blobs[0]`` when :attr:`drops_dense` is set, the sparse
        structures were packed from exactly its values and no array of them is alive; True if
        released now."""
        blob = self.layer.blobs[0]
        structure = self._packed_structure()
        if not self.drops_dense or structure is None or blob.data_released or not self._watch.untouched(blob):
            return False
        restore = functools.partial(self._restore, structure, negative_zeros(blob.readonly_data), blob.shape)
        if not blob.release_data(restore):
            return False
        self._watch.drop_record()           # the mark proves the weights unchanged while released
        return True

    def _restore(self, structure, negative_zero_bits, shape):
        """The dense weights (flat) rebuilt from ``structure``; the watch records them, so that a
        read that writes nothing costs the next forward a compare, not a repack."""
        weights = self._dense_from(structure, shape)
        put_negative_zeros(weights, negative_zero_bits)
        self._watch.record_values(weights.reshape(shape))
        return weights

    def refresh(self):
        """Rebuild everything derived from ``blobs[0]`` if any weight changed; True when it did."""
        blob = self.layer.blobs[0]
        if not self._watch.changed(blob):
            return False
        weights = blob.readonly_data
        self.density = weight_density(weights)
        self._rebuild(weights)
        self._resolved.clear()
        self._watch.remember(blob)
        self.repacks += 1
        return True

    def fallback(self, requested, reason, used, warn=True):
        """Log once per layer and reason (if ``warn``) that ``requested`` cannot run and ``used`` runs
        instead."""
        key = (requested, reason)
        if warn and key not in self._warned:
            self._warned.add(key)
            log.warning("layer '%s': %s %s; falling back to %s", self.layer.name, requested, reason, used)

    def bias(self):
        return self.layer.blobs[1].readonly_data if len(self.layer.blobs) > 1 else None

    def finish(self, used, relu_applied=False):
        self.last_mode = used
        if self.relu is not None:
            self.relu.applied = relu_applied

    def remembered(self, key, auto, decide, warn=True):
        """The mode ``decide()`` returned for ``key`` since the weights last changed (for ``auto``
        keys: under the same machine profile), else ``decide()``'s answer, remembered unless it was
        decided without ``warn`` (the forward that decides it again logs its fallback, once).
        ``decide()`` may return a tuple of modes, an AUTO close call: remembered, it becomes a
        :class:`~.trial.ModeTrial` (returned until the trial is done); not, its first mode."""
        profile = get_profile() if auto else None
        known = self._resolved.get(key)
        if known is not None and known[0] is profile:
            return known[1]
        used = decide()
        if isinstance(used, tuple):
            used = ModeTrial(key, used) if warn and len(used) > 1 else used[0]
            if isinstance(used, ModeTrial):
                self.last_trial = used
        if warn:
            self._resolved[key] = (profile, used)
        return used

    @property
    def trial_running(self):
        """Whether an AUTO close call of this layer is still being timed (a trial that is not done
        among its remembered decisions)."""
        return any(isinstance(used, ModeTrial) and not used.done for _, used in self._resolved.values())

    def auto(self, shape, column_density=None):
        """AUTO's modes for ``shape`` at the current weights and machine profile: its pick, or with
        trials on, the candidates of a close call (a tuple; :meth:`remembered` times them)."""
        if not auto_trials_enabled():
            return decide_mode(shape, self.density, column_density, get_profile())
        modes = auto_candidates(shape, self.density, column_density, get_profile(), TRIAL_MARGIN)
        return modes if len(modes) > 1 else modes[0]

    def timed(self, used, run):
        """Run ``run(mode)`` for ``used``, a mode or a running :class:`~.trial.ModeTrial` (then for its
        next mode, timed; a done trial's winner is remembered in its place). Returns whether the dense
        weights may be released now (no trial running)."""
        if not isinstance(used, ModeTrial):
            run(used)
            return True
        mode = used.next_mode()
        start = time.perf_counter()
        run(mode)
        used.record(mode, time.perf_counter() - start)
        if not used.done:
            return False
        known = self._resolved.get(used.key)
        if known is not None and known[1] is used:
            self._resolved[used.key] = (known[0], used.winner)
        return True


class ConvEngine(_Engine):
    """conv_mode dispatch of one ConvolutionLayer."""

    def __init__(self, layer, bottom=None):
        super().__init__(layer, bottom)
        self._csr = None
        self._cc = None
        self.column_density = 1.0
        #: The direct sparse convolution bound to the current CSR, output size and ReLU.
        self._bound = None

    def _rebuild(self, weights):
        self._csr = self._cc = self._bound = None
        self.column_density = column_density(weights, self.layer.param.convolution_param.group)

    def _squeezed_weights(self):
        """LOWERED_CCNMM's weights (built at its first use after a repack): the indices of the lowered
        columns that are not all zero, where each group's start, and per group its kept columns."""
        if self._cc is None:
            weights = self.layer.blobs[0].readonly_data
            group = self.layer.param.convolution_param.group
            keep = nonzero_columns(weights, group)
            lowered = weights.reshape(group, weights.shape[0] // group, -1)
            k = lowered.shape[2]
            rows = np.concatenate([c + i * k for i, c in enumerate(keep)]).astype(np.intp)
            bounds = np.cumsum([0] + [len(c) for c in keep])
            self._cc = (rows, bounds, [np.ascontiguousarray(lowered[i][:, c]) for i, c in enumerate(keep)])
        return self._cc

    def resolve(self, mode, bottom0, warn=True):
        """The mode to run (DENSE, SCONV or CCNMM) for the requested ``mode``."""
        two_d = len(self.layer.lowering.kernel) == 2
        if mode in PLAIN_CONV_MODES:
            return DENSE
        if mode == CONV.DIRECT_SCONV:
            if not two_d:
                spatial = len(self.layer.lowering.kernel)
                self.fallback("conv_mode DIRECT_SCONV", f"cannot run a {spatial}-D convolution (direct sparse "
                              "convolution is 2-D only)", "LOWERED_GEMM", warn)
                return DENSE
            return SCONV
        if mode == CONV.LOWERED_CCNMM:
            return CCNMM
        if mode == CONV.AUTO:
            return self.auto(conv_shape(self.layer, bottom0), self.column_density)
        self.fallback(f"conv_mode {mode}", "is unknown", "LOWERED_GEMM", warn)
        return DENSE

    def prepare(self, bottom, warn=True):
        """Check the weights, pick the mode for ``bottom`` and build its structures; the mode to run
        (DENSE, SCONV or CCNMM)."""
        mode = self.layer.param.convolution_param.conv_mode
        if mode in PLAIN_CONV_MODES:
            return DENSE
        self.refresh()                      # the one weight check of this forward
        return self.remembered((mode, bottom[0].shape), mode == CONV.AUTO,
                               lambda: self._prepare_mode(mode, bottom, warn), warn)

    def _prepare_mode(self, mode, bottom, warn):
        used = self.resolve(mode, bottom[0], warn)
        if isinstance(used, tuple):
            # An AUTO close call: the pick's structures now, the other candidates' before their first
            # timed run (a training net, whose weights change every iteration, never gets that far).
            modes = tuple(dict.fromkeys((self._ready(used[0], bottom, warn),) + used[1:]))
            return modes if len(modes) > 1 else modes[0]
        return self._ready(used, bottom, warn)

    def _ready(self, used, bottom, warn):
        """Build ``used``'s structures for ``bottom``; the mode that will run (DENSE where
        DIRECT_SCONV cannot)."""
        if used == SCONV:
            low = self.layer.lowering
            try:
                self._csr_for(tuple(bottom[0].shape[self.layer.axis + 1:]), low.pad, low.dilation)
            except KernelArgumentError as e:
                self.fallback("conv_mode DIRECT_SCONV", f"cannot run this input ({e})", "LOWERED_GEMM", warn)
                return DENSE
        elif used == CCNMM:
            self._squeezed_weights()
        return used

    def forward(self, bottom, top):
        """Run the forward in the layer's conv_mode; False means "run the dense path" (during an AUTO
        trial the engine runs the layer's dense path itself, to time it)."""
        used = self.prepare(bottom)
        if used == DENSE:
            self.finish(DENSE)
            return False
        trial = isinstance(used, ModeTrial)

        def run(mode):                      # a trial's candidate gets its structures before its first run
            self._run(self._ready(mode, bottom, True) if trial else mode, bottom, top)
        if self.timed(used, run):
            self.release_dense()
        return True

    def _run(self, mode, bottom, top):
        if mode == SCONV:
            self._sconv(bottom, top)
        elif mode == CCNMM:
            self._ccnmm(bottom, top)
        else:
            self.finish(DENSE, self.layer.forward_dense(bottom, top, relu=self.relu is not None))

    def _packed_structure(self):
        return self._csr if self._csr is not None else self._cc

    def _dense_from(self, structure, shape):
        """Flat weights of ``shape`` from a ConvCSR or LOWERED_CCNMM's squeezed columns (zeros elsewhere)."""
        weights = np.zeros(math.prod(shape), np.float32)
        num_output, per_output = shape[0], math.prod(shape[1:])
        if isinstance(structure, ConvCSR):
            rows = np.repeat(np.arange(num_output), np.diff(structure.rowptr))
            channel, tap_row, tap_column = structure.offsets_to_taps(structure.colidx)
            kernel_h, kernel_w = structure.kernel
            weights[rows * per_output + (channel * kernel_h + tap_row) * kernel_w + tap_column] = structure.values
            return weights
        kept, bounds, columns = structure
        group = len(columns)
        lowered = weights.reshape(group, num_output // group, per_output)
        for g in range(group):
            lowered[g][:, kept[bounds[g]:bounds[g + 1]] - g * per_output] = columns[g]
        return weights

    def _csr_for(self, in_hw, pad, dilation):
        csr = self._csr
        if csr is None or csr.input_hw != in_hw:
            cp = self.layer.param.convolution_param
            csr = self._csr = pack_conv_weights(self.layer.blobs[0].readonly_data, cp.group, in_hw, pad, dilation)
        return csr

    def _sconv(self, bottom, top):
        axis, low = self.layer.axis, self.layer.lowering
        b0 = bottom[0]
        in_hw = b0.shape[axis + 1:]
        csr = self._csr_for(in_hw, low.pad, low.dilation)
        relu = self.relu is not None
        bias = self.bias()
        num, channels = b0.count_range(0, axis), b0.shape[axis]
        for b, t in zip(bottom, top):
            out_hw = t.shape[axis + 1:]
            conv = self._bound
            if conv is None or conv.csr is not csr or conv.out_hw != out_hw:
                conv = self._bound = SparseConv(csr, low.stride, low.pad, low.dilation, out_hw, relu=relu)
            x = b.data.reshape(num, channels, *in_hw)
            y = t.data.reshape(num, t.shape[axis], *out_hw)
            if np.may_share_memory(x, y):
                y[...] = conv(x, bias)
            else:
                conv(x, bias, out=y)
        self.finish(SCONV, relu)

    def _ccnmm(self, bottom, top):
        rows, bounds, columns = self._squeezed_weights()
        axis, lowering = self.layer.axis, self.layer.lowering
        g = len(columns)
        b0 = bottom[0]
        num, channels = b0.count_range(0, axis), b0.shape[axis]
        in_spatial = tuple(b0.shape[axis + 1:])
        kdim = channels * math.prod(lowering.kernel)
        bias = self.bias()
        for b, t in zip(bottom, top):
            positions = math.prod(t.shape[axis + 1:])
            x = b.data.reshape((num, channels) + in_spatial)
            y = t.data.reshape(num, t.shape[axis], positions)
            ocg = y.shape[1] // g
            chunk = max(1, min(num, COL_BUFFER_BYTES // max(kdim * positions * 4, 1)))
            for s in range(0, num, chunk):
                e = min(num, s + chunk)
                if lowering.identity:
                    cols = x[s:e].reshape(e - s, kdim, positions)
                else:
                    cols = np.empty((e - s, kdim, positions), np.float32)
                    lowering.lower(x[s:e], cols)
                taken = np.take(cols, rows, axis=1)
                for i in range(g):
                    block = y[s:e, i * ocg:(i + 1) * ocg]
                    if bounds[i + 1] > bounds[i]:
                        for n in range(e - s):
                            matmul(columns[i], taken[n, bounds[i]:bounds[i + 1]], out=block[n])
                    else:
                        block[...] = 0
            if bias is not None:
                y += bias[:, None]
        self.finish(CCNMM)


class FcEngine(_Engine):
    """gemm_mode dispatch of one InnerProductLayer."""

    def __init__(self, layer, bottom=None):
        super().__init__(layer, bottom)
        self._csr = None

    def _rebuild(self, weights):
        self._csr = None

    def resolve(self, mode, warn=True):
        """The mode to run (DENSE or SPMDM) for the requested ``mode``."""
        if mode in PLAIN_GEMM_MODES:
            return DENSE
        if mode == IP.SPMDM:
            return SPMDM
        if mode == IP.AUTO:
            used = self.auto(fc_shape(self.layer))
            spmdm = {SCONV: SPMDM, DENSE: DENSE}
            return tuple(spmdm[m] for m in used) if isinstance(used, tuple) else spmdm[used]
        name = GEMM_MODE_NAMES.get(mode, str(mode))
        self.fallback(f"gemm_mode {name}", "is not implemented" if name == "SPGEMM" else "is unknown", "GEMM",
                      warn)
        return DENSE

    def prepare(self, bottom, warn=True):
        """Check the weights, pick the mode and pack the CSR for it; the mode to run (DENSE or SPMDM).
        The layer's own shapes say the batch, so ``bottom`` is not read."""
        layer = self.layer
        mode = layer.param.inner_product_param.gemm_mode
        if mode in PLAIN_GEMM_MODES:
            return DENSE
        self.refresh()                      # the one weight check of this forward
        used = self.remembered((mode, layer.M), mode == IP.AUTO, lambda: self.resolve(mode, warn), warn)
        if (used.modes[0] if isinstance(used, ModeTrial) else used) == SPMDM:
            self._pack()                    # a trial's other candidate packs before its first run
        return used

    def _pack(self):
        """The CSR of the weights (packed at its first use after a repack)."""
        if self._csr is None:
            weights = self.layer.blobs[0].readonly_data
            self._csr = pack_fc_weights(weights.T if self.layer.transpose else weights)
        return self._csr

    def _packed_structure(self):
        return self._csr

    def _dense_from(self, csr, shape):
        """Flat weights of ``shape`` from the FcCSR (packed from the transposed weights with
        ``transpose: true``)."""
        weights = np.zeros(math.prod(shape), np.float32)
        rows = np.repeat(np.arange(csr.num_output), np.diff(csr.rowptr))
        columns = csr.colidx
        if self.layer.transpose:
            rows, columns = columns, rows
        weights.reshape(shape)[rows, columns] = csr.values
        return weights

    def forward(self, bottom, top):
        """Run the forward in the layer's gemm_mode; False means "run the dense GEMM" (during an AUTO
        trial the engine runs the layer's GEMM itself, to time it)."""
        used = self.prepare(bottom)
        if used == DENSE:
            self.finish(DENSE)
            return False
        if self.timed(used, lambda mode: self._run(mode, bottom, top)):
            self.release_dense()
        return True

    def _run(self, mode, bottom, top):
        layer = self.layer
        if mode == DENSE:
            layer.forward_dense(bottom, top)
            self.finish(DENSE)
            return
        relu = self.relu is not None
        x = bottom[0].data.reshape(layer.M, layer.K)
        y = top[0].data.reshape(layer.M, layer.num_output)
        bias = self.bias() if layer.bias_term else None
        csr = self._pack()
        if np.may_share_memory(x, y):
            y[...] = sparse_fc_forward(x, csr, bias, relu=relu)
        else:
            sparse_fc_forward(x, csr, bias, relu=relu, out=y)
        self.finish(SPMDM, relu)
