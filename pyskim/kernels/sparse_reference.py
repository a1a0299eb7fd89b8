"""Straightforward NumPy references for the sparse operators (float64 accumulation, slow).

* :func:`conv_forward_dense_ref`: the textbook dense convolution (Caffe semantics: groups,
  stride, pad, dilation), one kernel tap at a time.
* :func:`sparse_conv_forward_ref`: the packed format taken literally: for every nonzero,
  ``y[:, oc, y, x] += value * padded[:, offset + y*stride_h*Wp + x*stride_w]``.
* :func:`unpack_conv_weights` / :func:`unpack_fc_weights`: the dense weights back from the CSR.
* :func:`fc_forward_ref`: ``x . W^T + bias``.
"""
import numpy as np

from .csr import conv_out_hw

__all__ = [
    "conv_forward_dense_ref",
    "fc_forward_ref",
    "sparse_conv_forward_ref",
    "unpack_conv_weights",
    "unpack_fc_weights",
]


def _pairs(*values):
    return [(v, v) if np.isscalar(v) else tuple(v) for v in values]


def _relu(y, relu):
    return np.maximum(y, 0) if relu else y


def conv_forward_dense_ref(x, weight, bias=None, stride=1, pad=0, dilation=1, groups=1, relu=False):
    """Dense 2-D convolution of ``x`` (N, C, H, W) with ``weight`` (OC, C/groups, kh, kw)."""
    x = np.asarray(x, dtype=np.float64)
    weight = np.asarray(weight, dtype=np.float64)
    (sh, sw), (ph, pw), (dh, dw) = _pairs(stride, pad, dilation)
    n, c, h, w = x.shape
    oc, icg, kh, kw = weight.shape
    oh, ow = conv_out_hw((h, w), (kh, kw), (ph, pw), (sh, sw), (dh, dw))
    padded = np.zeros((n, c, h + 2 * ph, w + 2 * pw))
    padded[:, :, ph:ph + h, pw:pw + w] = x
    ocg = oc // groups
    y = np.zeros((n, oc, oh, ow))
    for g in range(groups):
        xs = padded[:, g * icg:(g + 1) * icg]
        ws = weight[g * ocg:(g + 1) * ocg]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i * dh:i * dh + (oh - 1) * sh + 1:sh, j * dw:j * dw + (ow - 1) * sw + 1:sw]
                y[:, g * ocg:(g + 1) * ocg] += np.einsum("ncyx,oc->noyx", patch, ws[:, :, i, j])
    if bias is not None:
        y += np.asarray(bias, dtype=np.float64)[None, :, None, None]
    return _relu(y, relu)


def unpack_conv_weights(csr):
    """Dense (OC, C/groups, kh, kw) float32 weights of a :class:`ConvCSR`."""
    kh, kw = csr.kernel
    w = np.zeros((csr.num_output, csr.in_channels_per_group, kh, kw), dtype=np.float32)
    rows = np.repeat(np.arange(csr.num_output), np.diff(csr.rowptr))
    ic, r, c = csr.offsets_to_taps(csr.colidx)
    w[rows, ic, r, c] = csr.values
    return w


def sparse_conv_forward_ref(x, csr, bias=None, stride=1, relu=False):
    """The packed offsets used literally on a flattened zero-padded copy of each group's input."""
    x = np.asarray(x, dtype=np.float64)
    ((sh, sw),) = _pairs(stride)
    n, c, h, w = x.shape
    ph, pw = csr.pad
    hp, wp = csr.padded_hw
    oh, ow = conv_out_hw((h, w), csr.kernel, csr.pad, (sh, sw), csr.dilation)
    padded = np.zeros((n, c, hp, wp))
    padded[:, :, ph:ph + h, pw:pw + w] = x
    icg, ocg = csr.in_channels_per_group, csr.out_channels_per_group
    pos = (np.arange(oh)[:, None] * sh * wp + np.arange(ow)[None, :] * sw).ravel()
    y = np.zeros((n, csr.num_output, oh * ow))
    for g in range(csr.groups):
        flat = padded[:, g * icg:(g + 1) * icg].reshape(n, -1)
        rp, col, val = csr.group(g)
        for r in range(ocg):
            lo, hi = rp[r], rp[r + 1]
            if hi > lo:
                taps = flat[:, col[lo:hi, None].astype(np.int64) + pos[None, :]]   # (n, nnz, P)
                y[:, g * ocg + r] = np.einsum("njp,j->np", taps, val[lo:hi].astype(np.float64))
    y = y.reshape(n, csr.num_output, oh, ow)
    if bias is not None:
        y += np.asarray(bias, dtype=np.float64)[None, :, None, None]
    return _relu(y, relu)


def unpack_fc_weights(csr):
    """Dense (N, K) float32 weights of an :class:`FcCSR`."""
    w = np.zeros((csr.num_output, csr.num_input), dtype=np.float32)
    rows = np.repeat(np.arange(csr.num_output), np.diff(csr.rowptr))
    w[rows, csr.colidx] = csr.values
    return w


def fc_forward_ref(x, weight, bias=None, relu=False):
    """``x (M, K) . weight (N, K)^T + bias`` in float64."""
    y = np.asarray(x, dtype=np.float64) @ np.asarray(weight, dtype=np.float64).T
    if bias is not None:
        y = y + np.asarray(bias, dtype=np.float64)
    return _relu(y, relu)
