"""Loss layers (``LossLayer`` subclasses), Softmax and Accuracy, as BVLC Caffe master computes them.

Labels arrive as float32 blobs holding integers; like Caffe's ``static_cast<int>`` they are truncated
toward zero. Caffe only DCHECKs label ranges (undefined reads in release builds); pyskim raises a
NetError naming the layer for a non-ignored label outside ``[0, classes)``.
"""
import numpy as np

from ..core.blob import Blob
from ..core.layer import Layer, register
from ..errors import NetError
from ..io.blobproto import blobproto_to_array
from ..io.protofiles import read_binary
from ..proto import caffe_pb2

FLT_MIN = np.float32(np.finfo(np.float32).tiny)
#: Caffe's ``kLOG_THRESHOLD`` (loss_layer.hpp): probabilities are clamped to it before the log.
LOG_THRESHOLD = np.float32(1e-20)
_MODES = caffe_pb2.LossParameter


class LossLayer(Layer):
    """Two bottoms (prediction, target/label) of equal num, a scalar top with loss weight 1 by default;
    the label bottom gets no forced backward (``LossLayer``). ``outer_num``/``inner_num`` (set by the
    subclasses' reshape) feed :meth:`get_normalizer`."""

    exact_num_bottom = 2
    exact_num_top = 1
    auto_top_blobs = True
    default_loss_weight = 1.0
    outer_num = 1
    inner_num = 1

    def reshape(self, bottom, top):
        if bottom[0].shape[:1] != bottom[1].shape[:1]:
            raise NetError(f"layer '{self.name}': the data and label should have the same first dimension "
                           f"({list(bottom[0].shape)} vs {list(bottom[1].shape)})")
        top[0].reshape(())

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1

    def read_normalization(self, default):
        """``loss_param.normalization`` if set, else the deprecated ``normalize`` (true: VALID, false:
        BATCH_SIZE), else ``default`` (VALID for SoftmaxWithLoss, BATCH_SIZE for SigmoidCrossEntropy)."""
        lp = self.param.loss_param
        if lp.HasField("normalization"):
            return lp.normalization
        if lp.HasField("normalize"):
            return _MODES.VALID if lp.normalize else _MODES.BATCH_SIZE
        return default

    def ignore_label(self):
        lp = self.param.loss_param
        return lp.ignore_label if lp.HasField("ignore_label") else None

    def get_normalizer(self, mode, valid_count=-1):
        """Divisor of the loss (``LossLayer::GetNormalizer``): FULL outer*inner, VALID the non-ignored
        count (outer*inner when -1), BATCH_SIZE outer, NONE 1; at least 1 so that an all-ignored
        batch gives 0 rather than NaN."""
        if mode == _MODES.FULL or (mode == _MODES.VALID and valid_count == -1):
            normalizer = self.outer_num * self.inner_num
        elif mode == _MODES.VALID:
            normalizer = valid_count
        elif mode == _MODES.BATCH_SIZE:
            normalizer = self.outer_num
        elif mode == _MODES.NONE:
            normalizer = 1
        else:
            raise NetError(f"layer '{self.name}': unknown loss_param.normalization mode {mode}")
        return np.float32(max(1.0, np.float32(normalizer)))

    def no_label_backward(self, propagate_down, index=1, what="label"):
        if len(propagate_down) > index and propagate_down[index]:
            raise NetError(f"layer '{self.name}' of type {self.type} cannot backpropagate to {what} inputs")


def _int_labels(layer, blob, shape, num_classes, ignore_label):
    """Labels truncated to int in ``shape``, and the mask of non-ignored ones; ignored entries are
    replaced by 0 so the result can index safely."""
    label = blob.data.reshape(shape).astype(np.int64)
    valid = np.ones(shape, dtype=bool) if ignore_label is None else label != ignore_label
    bad = valid & ((label < 0) | (label >= num_classes))
    if bad.any():
        raise NetError(f"layer '{layer.name}': label {int(label[bad][0])} outside [0, {num_classes}) in "
                       f"bottom '{blob.name}'")
    return np.where(valid, label, 0), valid


def _axis_split(layer, blob, axis):
    """(outer, channels, inner) around the canonical ``axis`` of ``blob``."""
    try:
        axis = blob.canonical_axis(axis)
    except NetError as e:
        raise NetError(f"layer '{layer.name}': {e}") from None
    return blob.count_range(0, axis), blob.shape[axis], blob.count_range(axis + 1), axis


def _internal_softmax(layer, bottom, axis):
    """Caffe's internal Softmax of SoftmaxWithLoss/InfogainLoss: a copy of the layer's param, typed
    Softmax, without loss weights, writing into a private ``prob`` blob."""
    param = caffe_pb2.LayerParameter()
    param.CopyFrom(layer.param)
    param.type = "Softmax"
    del param.loss_weight[:]
    del param.blobs[:]
    param.softmax_param.axis = axis
    softmax = SoftmaxLayer(param)
    prob = Blob(name=f"{layer.name}/prob")
    softmax.setup([bottom], [prob])
    return softmax, prob


@register("EuclideanLoss", "EUCLIDEAN_LOSS")
class EuclideanLossLayer(LossLayer):
    """``sum((a - b)^2) / (2 num)``; back-propagates to both bottoms (``EuclideanLossLayer``)."""

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        if bottom[0].count_range(1) != bottom[1].count_range(1):
            raise NetError(f"layer '{self.name}': inputs must have the same dimension "
                           f"({list(bottom[0].shape)} vs {list(bottom[1].shape)})")

    def forward_cpu(self, bottom, top):
        self._difference = (bottom[0].data - bottom[1].data.reshape(bottom[0].shape)).ravel()
        dot = np.dot(self._difference, self._difference)
        top[0].data[...] = dot / np.float32(bottom[0].num) / np.float32(2)

    def backward_cpu(self, top, propagate_down, bottom):
        for i, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[i]:
                alpha = np.float32(sign * top[0].diff.item() / bottom[i].num)
                bottom[i].diff[...] = (alpha * self._difference).reshape(bottom[i].shape)

    def allow_force_backward(self, bottom_index):
        return True


@register("Softmax", "SOFTMAX")
class SoftmaxLayer(Layer):
    """Softmax over ``softmax_param.axis``: subtract the per-position max, exp, divide by the sum.
    Backward: ``(top_diff - sum_c(top_diff * top)) * top`` (``SoftmaxLayer``); in-place safe."""

    exact_num_bottom = 1
    exact_num_top = 1

    def reshape(self, bottom, top):
        outer, channels, inner, _ = _axis_split(self, bottom[0], self.param.softmax_param.axis)
        self._split = (outer, channels, inner)
        top[0].reshape(bottom[0].shape)

    def forward_cpu(self, bottom, top):
        x = bottom[0].data.reshape(self._split)
        e = np.exp(x - x.max(axis=1, keepdims=True))
        top[0].data[...] = (e / e.sum(axis=1, keepdims=True)).reshape(top[0].shape)

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        y = top[0].data.reshape(self._split)
        dy = top[0].diff.reshape(self._split)
        dx = (dy - (dy * y).sum(axis=1, keepdims=True)) * y
        bottom[0].diff[...] = dx.reshape(bottom[0].shape)


class SoftmaxProbabilityLossLayer(LossLayer):
    """What SoftmaxWithLoss and InfogainLoss share (Caffe writes it in each): an internal Softmax over
    the ``axis`` of the message :attr:`axis_param`, the prediction split around it into outer x
    channels x inner with one label per (outer, inner) position, and an optional second top that
    shares the probabilities."""

    exact_num_top = None
    min_top = 1
    max_top = 2
    #: The parameter message whose ``axis`` the softmax runs over.
    axis_param = "softmax_param"
    #: What the label-count error adds to Caffe's message.
    label_count_hint = ""

    def softmax_axis(self):
        """The softmax axis as the prototxt gives it (``<axis_param>.axis``, may be negative)."""
        return getattr(self.param, self.axis_param).axis

    def layer_setup(self, bottom, top):
        self._softmax, self._prob = _internal_softmax(self, bottom[0], self.softmax_axis())
        self._ignore = self.ignore_label()

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        self._softmax.reshape([bottom[0]], [self._prob])
        self.outer_num, self._channels, self.inner_num, _ = _axis_split(self, bottom[0], self.softmax_axis())
        if self.outer_num * self.inner_num != bottom[1].count:
            raise NetError(f"layer '{self.name}': number of labels ({bottom[1].count}) must match number of "
                           f"predictions ({self.outer_num * self.inner_num}){self.label_count_hint}")
        if len(top) >= 2:
            top[1].reshape(bottom[0].shape)

    def probabilities(self):
        """The internal Softmax's output as (outer, channels, inner)."""
        return self._prob.data.reshape(self.outer_num, self._channels, self.inner_num)


@register("SoftmaxWithLoss", "SOFTMAX_LOSS")
class SoftmaxWithLossLayer(SoftmaxProbabilityLossLayer):
    """Softmax (internal layer, ``softmax_param.axis``) then ``-sum log(max(p[label], FLT_MIN))`` over
    non-ignored positions, divided by the normalizer (default VALID). Optional second top: the
    probabilities (sharing the internal blob's data, loss weight 0). Backward: ``prob - onehot(label)``,
    zero at ignored positions, times ``top_diff / normalizer`` (``SoftmaxWithLossLayer``)."""

    label_count_hint = "; e.g. with softmax axis 1 and prediction shape (N, C, H, W) the label count must be N*H*W"

    def layer_setup(self, bottom, top):
        super().layer_setup(bottom, top)
        self._mode = self.read_normalization(_MODES.VALID)

    def _labels(self, bottom):
        return _int_labels(self, bottom[1], (self.outer_num, 1, self.inner_num), self._channels, self._ignore)

    def forward_cpu(self, bottom, top):
        self._softmax.forward([bottom[0]], [self._prob])
        label, valid = self._labels(bottom)
        prob = self.probabilities()
        picked = np.take_along_axis(prob, label, axis=1)[valid]
        loss = -np.sum(np.log(np.maximum(picked, FLT_MIN)), dtype=np.float32)
        top[0].data[...] = loss / self.get_normalizer(self._mode, int(valid.sum()))
        if len(top) == 2:
            top[1].share_data(self._prob)

    def backward_cpu(self, top, propagate_down, bottom):
        self.no_label_backward(propagate_down)
        if not propagate_down[0]:
            return
        label, valid = self._labels(bottom)
        diff = self.probabilities().copy()
        np.put_along_axis(diff, label, np.take_along_axis(diff, label, axis=1) - np.float32(1), axis=1)
        diff *= valid
        scale = top[0].diff.flat[0] / self.get_normalizer(self._mode, int(valid.sum()))
        bottom[0].diff[...] = (diff * scale).reshape(bottom[0].shape)


@register("SigmoidCrossEntropyLoss", "SIGMOID_CROSS_ENTROPY_LOSS")
class SigmoidCrossEntropyLossLayer(LossLayer):
    """Cross entropy of sigmoid(x) against targets in [0, 1], in Caffe's stable form
    ``-(x (t - [x>=0]) - log(1 + exp(x - 2 x [x>=0])))``; entries whose int-truncated target equals
    ``ignore_label`` are skipped. Normalization defaults to BATCH_SIZE when neither ``normalization``
    nor ``normalize`` is given. Backward: ``(sigmoid(x) - t) * top_diff / normalizer``
    (``SigmoidCrossEntropyLossLayer``)."""

    def layer_setup(self, bottom, top):
        self._ignore = self.ignore_label()
        self._mode = self.read_normalization(_MODES.BATCH_SIZE)

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        if bottom[0].num_axes < 1:
            raise NetError(f"layer '{self.name}': the prediction bottom needs at least one axis")
        self.outer_num = bottom[0].shape[0]
        self.inner_num = bottom[0].count_range(1)
        if bottom[0].count != bottom[1].count:
            raise NetError(f"layer '{self.name}': SIGMOID_CROSS_ENTROPY_LOSS layer inputs must have the same "
                           f"count ({list(bottom[0].shape)} vs {list(bottom[1].shape)})")

    def _valid(self, target):
        if self._ignore is None:
            return np.ones(target.shape, dtype=bool)
        return target.astype(np.int64) != self._ignore

    def forward_cpu(self, bottom, top):
        x = bottom[0].data.ravel()
        target = bottom[1].data.ravel()
        # Caffe's sigmoid: 0.5 * tanh(0.5 x) + 0.5 evaluated in double, rounded to float.
        self._sigmoid = (0.5 * np.tanh(0.5 * x.astype(np.float64)) + 0.5).astype(np.float32)
        valid = self._valid(target)
        positive = (x >= 0).astype(np.float32)
        terms = x * (target - positive) - np.log(np.float32(1) + np.exp(x - np.float32(2) * x * positive))
        loss = -np.sum(terms[valid], dtype=np.float32)
        self._normalizer = self.get_normalizer(self._mode, int(valid.sum()))
        top[0].data[...] = loss / self._normalizer

    def backward_cpu(self, top, propagate_down, bottom):
        self.no_label_backward(propagate_down)
        if not propagate_down[0]:
            return
        target = bottom[1].data.ravel()
        diff = (self._sigmoid - target) * self._valid(target)
        scale = top[0].diff.flat[0] / self._normalizer
        bottom[0].diff[...] = (diff * scale).reshape(bottom[0].shape)


@register("ContrastiveLoss", "CONTRASTIVE_LOSS")
class ContrastiveLossLayer(LossLayer):
    """Bottoms a, b (N x C x 1 x 1) and similarity y (N x 1 x 1 x 1). Similar pairs (int(y) != 0) add
    ``d^2``; dissimilar ones ``max(margin - d, 0)^2`` (legacy_version: ``max(margin - d^2, 0)``); the sum
    is divided by 2N. Gradients reach a and b, not y (``ContrastiveLossLayer``)."""

    exact_num_bottom = 3

    def layer_setup(self, bottom, top):
        a, b, y = bottom
        checks = [(a.channels == b.channels, "bottoms 0 and 1 must have the same channels"),
                  (a.height == 1 and a.width == 1, "bottom 0 must be N x C x 1 x 1"),
                  (b.height == 1 and b.width == 1, "bottom 1 must be N x C x 1 x 1"),
                  (y.channels == 1 and y.height == 1 and y.width == 1, "bottom 2 must be N x 1 x 1 x 1")]
        for ok, message in checks:
            if not ok:
                raise NetError(f"layer '{self.name}': {message} (shapes {list(a.shape)}, {list(b.shape)}, "
                               f"{list(y.shape)})")
        param = self.param.contrastive_loss_param
        self._margin = np.float32(param.margin)
        self._legacy = param.legacy_version

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        a, b = bottom[0], bottom[1]
        if a.shape != b.shape or a.num_axes > 4 or a.count != a.num * a.channels:
            raise NetError(f"layer '{self.name}': bottoms 0 and 1 must both be N x C x 1 x 1 (shapes "
                           f"{list(a.shape)}, {list(b.shape)})")
        if bottom[2].count != bottom[0].num:
            raise NetError(f"layer '{self.name}': bottom 2 must hold one similarity label per pair "
                           f"({list(bottom[2].shape)} for {bottom[0].num} pairs)")

    def forward_cpu(self, bottom, top):
        num, channels = bottom[0].num, bottom[0].channels
        self._diff = (bottom[0].data - bottom[1].data).reshape(num, channels)
        self._dist_sq = np.einsum("ij,ij->i", self._diff, self._diff)
        self._similar = bottom[2].data.ravel().astype(np.int64) != 0
        if self._legacy:
            dissimilar = np.maximum(self._margin - self._dist_sq, np.float32(0))
        else:
            dissimilar = np.maximum(self._margin - np.sqrt(self._dist_sq), np.float32(0)) ** 2
        loss = np.sum(np.where(self._similar, self._dist_sq, dissimilar), dtype=np.float32)
        top[0].data[...] = loss / np.float32(num) / np.float32(2)

    def backward_cpu(self, top, propagate_down, bottom):
        if self._legacy:
            mdist = self._margin - self._dist_sq
        else:
            dist = np.sqrt(self._dist_sq)
            mdist = self._margin - dist
        for i, sign in ((0, np.float32(1)), (1, np.float32(-1))):
            if not propagate_down[i]:
                continue
            alpha = sign * top[0].diff.flat[0] / np.float32(bottom[i].num)
            beta = np.full_like(mdist, -alpha) if self._legacy else -alpha * mdist / (dist + np.float32(1e-4))
            beta = np.where(mdist > 0, beta, np.float32(0))
            coeff = np.where(self._similar, alpha, beta).astype(np.float32)
            bottom[i].diff[...] = (coeff[:, None] * self._diff).reshape(bottom[i].shape)

    def allow_force_backward(self, bottom_index):
        return bottom_index != 2


@register("HingeLoss", "HINGE_LOSS")
class HingeLossLayer(LossLayer):
    """One-vs-all hinge: ``m = max(0, 1 - s_k x_k)`` with ``s_k = +1`` at the label, -1 elsewhere; loss
    ``sum|m| / N`` (L1) or ``sum m^2 / N`` (L2). As Caffe, forward keeps the margins in the bottom's
    diff, which backward turns into the gradient (``HingeLossLayer``)."""

    def layer_setup(self, bottom, top):
        self._norm = self.param.hinge_loss_param.norm

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        if bottom[1].count != bottom[0].num:
            raise NetError(f"layer '{self.name}': needs one label per item ({bottom[0].num}), got "
                           f"{list(bottom[1].shape)}")

    def _label_index(self, bottom, num, dim):
        label, _ = _int_labels(self, bottom[1], (num,), dim, None)
        return np.arange(num), label

    def forward_cpu(self, bottom, top):
        num = bottom[0].num
        dim = bottom[0].count // num
        rows, label = self._label_index(bottom, num, dim)
        margin = bottom[0].data.reshape(num, dim).copy()
        margin[rows, label] *= np.float32(-1)
        margin = np.maximum(np.float32(0), np.float32(1) + margin)
        bottom[0].diff[...] = margin.reshape(bottom[0].shape)
        if self._norm == caffe_pb2.HingeLossParameter.L1:
            loss = np.sum(np.abs(margin), dtype=np.float32)
        else:
            loss = np.dot(margin.ravel(), margin.ravel())
        top[0].data[...] = loss / np.float32(num)

    def backward_cpu(self, top, propagate_down, bottom):
        self.no_label_backward(propagate_down)
        if not propagate_down[0]:
            return
        num = bottom[0].num
        dim = bottom[0].count // num
        rows, label = self._label_index(bottom, num, dim)
        diff = bottom[0].diff.reshape(num, dim)
        diff[rows, label] *= np.float32(-1)
        loss_weight = top[0].diff.flat[0]
        if self._norm == caffe_pb2.HingeLossParameter.L1:
            diff[...] = np.sign(diff) * (loss_weight / np.float32(num))
        else:
            diff *= loss_weight * np.float32(2) / np.float32(num)


@register("InfogainLoss", "INFOGAIN_LOSS")
class InfogainLossLayer(SoftmaxProbabilityLossLayer):
    """Softmax over ``infogain_loss_param.axis`` (internal layer), then
    ``-sum_k H[label, k] log(max(p_k, 1e-20))`` over non-ignored positions / normalizer (default
    VALID). H (classes x classes) is the third bottom or the BlobProto ``infogain_loss_param.source``.
    Optional second top: the probabilities. Backward: ``p * rowsum(H)[label] - H[label]`` times
    ``top_diff / normalizer``; no gradient to the label or H (``InfogainLossLayer``, BVLC master)."""

    exact_num_bottom = None
    min_bottom = 2
    max_bottom = 3
    axis_param = "infogain_loss_param"

    def layer_setup(self, bottom, top):
        super().layer_setup(bottom, top)
        param = self.param.infogain_loss_param
        if self.param.loss_param.HasField("normalize"):
            raise NetError(f"layer '{self.name}': loss_param.normalize is deprecated for InfogainLoss; use "
                           f"loss_param.normalization")
        self._mode = self.param.loss_param.normalization
        self._infogain = None
        if len(bottom) < 3:
            if not param.source:
                raise NetError(f"layer '{self.name}': infogain_loss_param.source (the infogain matrix) must "
                               f"be specified when there is no third bottom")
            self._infogain = blobproto_to_array(read_binary(param.source, caffe_pb2.BlobProto()))

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        h_count = self._infogain.size if self._infogain is not None else bottom[2].count
        if h_count != self._channels ** 2:
            raise NetError(f"layer '{self.name}': the infogain matrix H must be {self._channels}x"
                           f"{self._channels} ({h_count} values given)")

    def _matrix(self, bottom):
        h = self._infogain if self._infogain is not None else bottom[2].data
        return h.reshape(self._channels, self._channels)

    def _labels(self, bottom):
        return _int_labels(self, bottom[1], (self.outer_num, self.inner_num), self._channels, self._ignore)

    def forward_cpu(self, bottom, top):
        self._softmax.forward([bottom[0]], [self._prob])
        label, valid = self._labels(bottom)
        prob = self.probabilities()
        log_prob = np.log(np.maximum(prob, LOG_THRESHOLD))
        rows = self._matrix(bottom)[label]                      # (outer, inner, classes)
        terms = np.einsum("ijk,ikj->ij", rows, log_prob)
        loss = -np.sum(terms[valid], dtype=np.float32)
        top[0].data[...] = loss / self.get_normalizer(self._mode, int(valid.sum()))
        if len(top) == 2:
            top[1].share_data(self._prob)

    def backward_cpu(self, top, propagate_down, bottom):
        self.no_label_backward(propagate_down)
        self.no_label_backward(propagate_down, 2, "infogain")
        if not propagate_down[0]:
            return
        label, valid = self._labels(bottom)
        h = self._matrix(bottom)
        row_sums = h.sum(axis=1, dtype=np.float32)
        prob = self.probabilities()
        diff = prob * row_sums[label][:, None, :] - h[label].transpose(0, 2, 1)
        diff *= valid[:, None, :]
        scale = top[0].diff.flat[0] / self.get_normalizer(self._mode, int(valid.sum()))
        bottom[0].diff[...] = (diff * scale).reshape(bottom[0].shape)


@register("MultinomialLogisticLoss", "MULTINOMIAL_LOGISTIC_LOSS")
class MultinomialLogisticLossLayer(LossLayer):
    """``-sum log(max(p[label], 1e-20)) / N`` on probabilities (N x dim); backward
    ``-top_diff / N / max(p[label], 1e-20)`` at the label, 0 elsewhere (``MultinomialLogisticLossLayer``)."""

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        label = bottom[1]
        if not (label.channels == 1 and label.height == 1 and label.width == 1) or label.count != label.num:
            raise NetError(f"layer '{self.name}': the label bottom must be N x 1 x 1 x 1, got {list(label.shape)}")

    def _picked(self, bottom):
        num = bottom[0].num
        dim = bottom[0].count // num
        label, _ = _int_labels(self, bottom[1], (num,), dim, None)
        rows = np.arange(num)
        probs = np.maximum(bottom[0].data.reshape(num, dim)[rows, label], LOG_THRESHOLD)
        return num, dim, rows, label, probs

    def forward_cpu(self, bottom, top):
        num, _, _, _, probs = self._picked(bottom)
        top[0].data[...] = -np.sum(np.log(probs), dtype=np.float32) / np.float32(num)

    def backward_cpu(self, top, propagate_down, bottom):
        self.no_label_backward(propagate_down)
        if not propagate_down[0]:
            return
        num, dim, rows, label, probs = self._picked(bottom)
        scale = -top[0].diff.flat[0] / np.float32(num)
        diff = np.zeros((num, dim), dtype=np.float32)
        diff[rows, label] = scale / probs
        bottom[0].diff[...] = diff.reshape(bottom[0].shape)


@register("Accuracy", "ACCURACY")
class AccuracyLayer(Layer):
    """Top-k accuracy along ``accuracy_param.axis``: a position counts as correct when fewer than
    ``top_k`` other classes score ``>=`` the true class (ties count against it), ignored labels are
    skipped, and 0 is reported when nothing is counted. Optional second top: per-class accuracy (0 for
    classes absent from the labels). Forward only (``AccuracyLayer``)."""

    exact_num_bottom = 2
    min_top = 1
    max_top = 2

    def layer_setup(self, bottom, top):
        param = self.param.accuracy_param
        self._top_k = param.top_k
        self._ignore = param.ignore_label if param.HasField("ignore_label") else None

    def reshape(self, bottom, top):
        if bottom[1].count == 0 or self._top_k > bottom[0].count // bottom[1].count:
            raise NetError(f"layer '{self.name}': accuracy_param.top_k ({self._top_k}) must be less than or "
                           f"equal to the number of classes")
        self._outer, self._channels, self._inner, _ = _axis_split(self, bottom[0], self.param.accuracy_param.axis)
        if self._outer * self._inner != bottom[1].count:
            raise NetError(f"layer '{self.name}': number of labels ({bottom[1].count}) must match number of "
                           f"predictions ({self._outer * self._inner})")
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape((self._channels,))

    def forward_cpu(self, bottom, top):
        label, valid = _int_labels(self, bottom[1], (self._outer, 1, self._inner), self._channels, self._ignore)
        scores = bottom[0].data.reshape(self._outer, self._channels, self._inner)
        true_score = np.take_along_axis(scores, label, axis=1)
        better = np.count_nonzero(scores >= true_score, axis=1) - 1
        valid = valid[:, 0, :]
        correct = valid & (better < self._top_k)
        count = int(valid.sum())
        top[0].data[...] = np.float32(correct.sum()) / np.float32(count) if count else 0
        if len(top) > 1:
            label = label[:, 0, :]
            totals = np.bincount(label[valid], minlength=self._channels).astype(np.float32)
            hits = np.bincount(label[correct], minlength=self._channels).astype(np.float32)
            top[1].data[...] = np.where(totals == 0, np.float32(0), hits / np.maximum(totals, 1))
