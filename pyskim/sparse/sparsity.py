"""Sparsity measures and connectivity masks, as SkimCaffe computes them (plain numpy functions).

Reports (SkimCaffe's ``SGDSolver::GetSparsity``, ``caffe_cpu_fiber_sparsity``,
``caffe_cpu_slice_sparsity``): a value counts as zero when ``|w| <= threshold``. For a weight
``W[OC][IC][k]`` (a 4-D conv weight viewed as OC × IC × kh·kw):

* OC-fiber: the (ic, k) positions that are zero for every oc;
* IC-fiber: the (oc, k) positions that are zero for every ic;
* kernel-fiber: the (oc, ic) kernels that are all zero;
* OC-slice: the whole filters (oc) that are zero;
* IC-slice: the input channels (ic) that are zero in every filter;
* kernel-slice: the kernel positions (k) that are zero for every (oc, ic).

All percentages are float32, computed in SkimCaffe's order, so the display lines print the same
digits. Masks (``Blob::Disconnect``, built by the conv/IP ``WeightAlign`` when weights are loaded):
``DISCONNECTED_ELTWISE`` zeroes ``|w| <= t`` and masks those weights; ``DISCONNECTED_GRPWISE``
zeroes ``|w| <= t`` and masks the rows and columns of the per-group 2-D view (OC/g × IC/g·kh·kw)
that are all zero. Only ``blobs[0]`` is masked, never the bias. SkimCaffe's ``t`` is the solver's
``prune_threshold``; the Solver builds the masks with it after building the nets and loading
``weights``, after ``restore`` and at its first update (masks only matter for training, so a plain
``Net`` has none). Called directly, :func:`build_connectivity_masks` defaults to t = 0 (mask = w ≠ 0).
"""
import numpy as np

from ..core.state import log
from ..proto import caffe_pb2

F32 = np.float32
FIBER_SLICE_NAMES = ("OC", "IC", "kernel")


def _fmt(value):
    return f"{float(value):g}"


def _zero(array, threshold):
    """Boolean array: ``|w| <= threshold`` (SkimCaffe's ``caffe_cpu_if_zerout``)."""
    return np.abs(np.asarray(array, dtype=F32)) <= F32(threshold)


def element_sparsity(array, threshold=0.0):
    """Percent of elements with ``|w| <= threshold`` (float32: zeros · 100 / count)."""
    array = np.asarray(array)
    if array.size == 0:
        return F32(0)
    return F32(np.count_nonzero(_zero(array, threshold))) * F32(100) / F32(array.size)


def density(array, threshold=0.0):
    """Fraction of elements with ``|w| > threshold`` (1.0 for an empty array)."""
    array = np.asarray(array)
    if array.size == 0:
        return 1.0
    return float(np.count_nonzero(~_zero(array, threshold))) / array.size


def _ijk(array):
    """The OC × IC × (rest) view SkimCaffe uses for fibers and slices (any array with ≥ 2 axes)."""
    array = np.asarray(array)
    if array.ndim < 2:
        raise ValueError(f"fiber/slice sparsity needs at least 2 axes, got shape {list(array.shape)}")
    i, j = array.shape[0], array.shape[1]
    return array.reshape(i, j, -1)


def fiber_sparsity(array, mode, threshold=0.0):
    """Percent of all-zero fibers: mode 0 OC-fibers (over oc, for each (ic, k)), 1 IC-fibers (over
    ic, for each (oc, k)), 2 kernel-fibers (over k, for each (oc, ic))."""
    nonzero = ~_zero(_ijk(array), threshold)
    zero_fibers = ~nonzero.any(axis=mode)
    if zero_fibers.size == 0:
        return F32(0)
    return F32(100) * (F32(np.count_nonzero(zero_fibers)) / F32(zero_fibers.size))


def slice_sparsity(array, mode, threshold=0.0):
    """Percent of all-zero slices: mode 0 whole filters (oc), 1 input channels (ic), 2 kernel
    positions (k)."""
    nonzero = ~_zero(_ijk(array), threshold)
    axes = tuple(a for a in range(3) if a != mode)
    zero_slices = ~nonzero.any(axis=axes)
    if zero_slices.size == 0:
        return F32(0)
    return F32(100) * (F32(np.count_nonzero(zero_slices)) / F32(zero_slices.size))


def sparsity_report(array, threshold=0.0):
    """A dict of one weight's measures: ``element`` (percent zero), ``density`` (fraction nonzero),
    ``nnz``, ``count`` and, for a 4-D weight, ``OC-fiber``, ``IC-fiber``, ``kernel-fiber``,
    ``OC-slice``, ``IC-slice``, ``kernel-slice`` (percent)."""
    array = np.asarray(array)
    nnz = int(np.count_nonzero(~_zero(array, threshold)))
    report = {"count": int(array.size), "nnz": nnz, "density": density(array, threshold),
              "element": float(element_sparsity(array, threshold))}
    if array.ndim == 4:
        for mode, name in enumerate(FIBER_SLICE_NAMES):
            report[f"{name}-fiber"] = float(fiber_sparsity(array, mode, threshold))
        for mode, name in enumerate(FIBER_SLICE_NAMES):
            report[f"{name}-slice"] = float(slice_sparsity(array, mode, threshold))
    return report


def layer_densities(net, threshold=0.0):
    """Per layer with parameters, in net order: ``(layer name, layer type, weight shape, nnz, count,
    density)`` of its ``blobs[0]`` (the weights; biases are not counted)."""
    rows = []
    for name, layer in zip(net.layer_names(), net.layers):
        if not layer.blobs:
            continue
        weights = layer.blobs[0].data
        nnz = int(np.count_nonzero(~_zero(weights, threshold)))
        rows.append((name, layer.type, tuple(weights.shape), nnz, int(weights.size),
                     density(weights, threshold)))
    return rows


# -- the solver's display lines (SGDSolver::ApplyUpdate when display) ----------------------------------
def display_lines(params, threshold):
    """SkimCaffe's sparsity messages for the learnable params: "Element Sparsity %" over params with
    ≥ 2 axes, then the fiber and slice sparsities over 4-D params. Each message is the header, a
    newline, and the values each followed by a tab (SkimCaffe's format; plot scripts read the line
    after the header). The Winograd-domain lines are not printed (pyskim has no Winograd pruning)."""
    arrays = [np.asarray(getattr(p, "data", p)) for p in params]
    lines = ["    Element Sparsity %: \n"
             + "".join(_fmt(element_sparsity(a, threshold)) + "\t" for a in arrays if a.ndim >= 2)]
    four_d = [a for a in arrays if a.ndim == 4]
    for kind, function in (("fiber", fiber_sparsity), ("slice", slice_sparsity)):
        for mode, name in enumerate(FIBER_SLICE_NAMES):
            values = "".join(_fmt(function(a, mode, threshold)) + "\t" for a in four_d)
            lines.append(f"        {name}-{kind} Sparsity %: \n{values}")
    return lines


def regularization_line(total, smoothed_loss):
    """``Solver::Step``'s display line: the summed penalty and loss + penalty (float32)."""
    total = F32(total)
    return f"    Total regularization terms: {_fmt(total)} loss+regular. : {_fmt(total + F32(smoothed_loss))}"


# -- connectivity masks (Blob::Disconnect) -------------------------------------------------------------
def zerout(array, threshold):
    """Zero, in place, the elements with ``|w| <= threshold`` (``Blob::Zerout``)."""
    array[_zero(array, threshold)] = 0


def eltwise_mask(array, threshold=0.0):
    """float32 mask: 1 where ``|w| > threshold``, else 0."""
    return (~_zero(array, threshold)).astype(F32)


def groupwise_mask(array, group=1):
    """float32 mask: 0 on the rows and columns of each group's 2-D view (shape[0]/group rows ×
    count/shape[0] columns) that are all exactly zero, else 1 (``caffe_cpu_all_zero_mask``)."""
    array = np.asarray(array)
    rows = array.shape[0] if array.ndim else 1
    if group < 1 or rows % group:
        raise ValueError(f"cannot split {rows} rows of shape {list(array.shape)} into {group} groups")
    view = array.reshape(group, rows // group, -1) != 0
    keep = view.any(axis=2, keepdims=True) & view.any(axis=1, keepdims=True)
    return np.broadcast_to(keep, view.shape).astype(F32).reshape(array.shape)


def _group_of(layer_param):
    if layer_param.HasField("convolution_param"):
        return max(int(layer_param.convolution_param.group), 1)
    return 1


def build_connectivity_masks(net, prune_threshold=0.0):
    """Set ``connectivity_mask`` on the weights (``blobs[0]``) of every layer whose
    ``connectivity_mode`` is DISCONNECTED_ELTWISE or DISCONNECTED_GRPWISE, after zeroing
    ``|w| <= prune_threshold`` as SkimCaffe's ``Disconnect`` does; with threshold 0 the mask is
    ``w != 0``. The mask goes on the learnable blob that owns the weights (shared params). Layers
    left CONNECTED keep whatever mask they have. Returns the names of the masked layers."""
    LP = caffe_pb2.LayerParameter
    masked = []
    owner_of = {}
    learnable_ids = net.learnable_param_ids()
    for k, (layer_index, blob_index) in enumerate(net.param_layer_indices()):
        if blob_index == 0:
            owner_of[layer_index] = net.learnable_params[learnable_ids[k]]
    for layer_index, (name, layer) in enumerate(zip(net.layer_names(), net.layers)):
        mode = layer.param.connectivity_mode
        if mode == LP.CONNECTED or not layer.blobs:
            continue
        blob = layer.blobs[0]
        weights = blob.data
        zerout(weights, prune_threshold)
        if mode == LP.DISCONNECTED_ELTWISE:
            log.info("all zero weights of %s are frozen", name)
            mask = eltwise_mask(weights, prune_threshold)
        else:
            log.info("weights lying in all-zero groups of %s are frozen", name)
            mask = groupwise_mask(weights, _group_of(layer.param))
        for target in {id(b): b for b in (blob, owner_of.get(layer_index, blob))}.values():
            target.connectivity_mask = mask
        masked.append(name)
    return masked


def connectivity_mask(blob):
    """The blob's connectivity mask, or None (no mask: every weight is updated)."""
    return getattr(blob, "connectivity_mask", None)
