"""Slow, obviously-correct NumPy references for :mod:`pyskim.kernels.dense` (used by the tests).

They follow the definitions in Caffe's CPU code with plain loops over output positions (or kernel
taps), vectorised only over the batch/channel axes. No argument checking. ``im2col``, ``col2im``
and the pooling references add in Caffe's order in float32, so the kernels must match them
exactly; the LRN references compute the window sums directly in float64.
"""

import itertools

import numpy as np

FLT_MAX = float(np.finfo(np.float32).max)


def _out(size, k, p, s, d):
    return (size + 2 * p - (d * (k - 1) + 1)) // s + 1


def im2col_nd_ref(img, kernel, pad, stride, dilation):
    """Caffe im2col for ``img`` (C, S1..SD): one column per output position, built from the
    zero-padded input window (taps in C order, channel-major rows)."""
    img = np.asarray(img, np.float32)
    c, spatial = img.shape[0], img.shape[1:]
    out = [_out(*a) for a in zip(spatial, kernel, pad, stride, dilation)]
    padded = np.pad(img, [(0, 0)] + [(p, p) for p in pad])
    col = np.zeros((c * int(np.prod(kernel)), int(np.prod(out))), np.float32)
    for idx, pos in enumerate(itertools.product(*[range(o) for o in out])):
        window = tuple(slice(q * s, q * s + d * (k - 1) + 1, d)
                       for q, s, d, k in zip(pos, stride, dilation, kernel))
        col[:, idx] = padded[(slice(None),) + window].reshape(-1)
    return col


def col2im_nd_ref(col, img_shape, kernel, pad, stride, dilation):
    """Caffe col2im for (C, S1..SD): for each kernel tap (C order), then each output position,
    add the column value at that tap's input position if it lies inside the image."""
    col = np.asarray(col, np.float32)
    c, spatial = img_shape[0], tuple(img_shape[1:])
    out = [_out(*a) for a in zip(spatial, kernel, pad, stride, dilation)]
    img = np.zeros((c,) + spatial, np.float32)
    taps = col.reshape((c, -1, int(np.prod(out))))
    for t, tap in enumerate(itertools.product(*[range(k) for k in kernel])):
        for idx, pos in enumerate(itertools.product(*[range(o) for o in out])):
            src = tuple(q * s - p + i * d for q, s, p, i, d in zip(pos, stride, pad, tap, dilation))
            if all(0 <= x < n for x, n in zip(src, spatial)):
                img[(slice(None),) + src] += taps[:, t, idx]
    return img


def im2col_ref(img, kernel, pad, stride, dilation):
    """2-D Caffe im2col; ``kernel`` etc. are (h, w) pairs."""
    return im2col_nd_ref(img, kernel, pad, stride, dilation)


def col2im_ref(col, img_shape, kernel, pad, stride, dilation):
    """2-D Caffe col2im (the image is zeroed first, as ``col2im_cpu`` does)."""
    return col2im_nd_ref(col, img_shape, kernel, pad, stride, dilation)


def im2col_batch_ref(images, kernel, pad, stride, dilation):
    """Batched 2-D im2col of ``images`` (N, C, H, W): each image's Caffe columns, side by side
    (image ``b`` in columns ``b*P .. (b+1)*P``)."""
    return np.concatenate([im2col_ref(img, kernel, pad, stride, dilation) for img in images], axis=1)


def col2im_batch_ref(col, images_shape, kernel, pad, stride, dilation):
    """Batched 2-D col2im: image ``b`` of ``images_shape`` (N, C, H, W) is Caffe's col2im of its
    block of columns."""
    blocks = np.split(col, images_shape[0], axis=1)
    return np.stack([col2im_ref(block, images_shape[1:], kernel, pad, stride, dilation) for block in blocks])


def _pool_windows(h, w, kernel, stride, pad, out_hw):
    """Yield ``(ph, pw, hs, he, ws, we, pool_size)`` as Caffe's AVE loop computes them; the
    ranges are already clipped to the image."""
    kh, kw = kernel
    sh, sw = stride
    pdh, pdw = pad
    for ph in range(out_hw[0]):
        for pw in range(out_hw[1]):
            hs, ws = ph * sh - pdh, pw * sw - pdw
            he, we = min(hs + kh, h + pdh), min(ws + kw, w + pdw)
            pool_size = (he - hs) * (we - ws)
            yield ph, pw, max(hs, 0), min(he, h), max(ws, 0), min(we, w), pool_size


def max_pool_forward_ref(x, kernel, stride, pad, out_hw):
    """Caffe MAX pooling: start at ``-FLT_MAX``/``-1``, scan the clipped window row-major and
    keep a value only if strictly greater (so NaNs and values <= -FLT_MAX never win)."""
    x = np.asarray(x, np.float32)
    n, c, h, w = x.shape
    top = np.full((n, c) + tuple(out_hw), -FLT_MAX, np.float32)
    mask = np.full((n, c) + tuple(out_hw), -1, np.int32)
    for ph in range(out_hw[0]):
        for pw in range(out_hw[1]):
            hs, ws = ph * stride[0] - pad[0], pw * stride[1] - pad[1]
            he, we = min(hs + kernel[0], h), min(ws + kernel[1], w)
            for hh in range(max(hs, 0), he):
                for ww in range(max(ws, 0), we):
                    v = x[:, :, hh, ww]
                    better = v > top[:, :, ph, pw]
                    top[:, :, ph, pw] = np.where(better, v, top[:, :, ph, pw])
                    mask[:, :, ph, pw] = np.where(better, hh * w + ww, mask[:, :, ph, pw])
    return top, mask


def max_pool_backward_ref(top_diff, mask, in_hw):
    """Caffe MAX backward: zero, then add each top diff at its mask index (in output order)."""
    top_diff = np.asarray(top_diff, np.float32)
    n, c, oh, ow = top_diff.shape
    h, w = in_hw
    bottom = np.zeros((n, c, h * w), np.float32)
    for i in range(n):
        for j in range(c):
            for ph in range(oh):
                for pw in range(ow):
                    idx = mask[i, j, ph, pw]
                    if 0 <= idx < h * w:
                        bottom[i, j, idx] += top_diff[i, j, ph, pw]
    return bottom.reshape(n, c, h, w)


def ave_pool_forward_ref(x, kernel, stride, pad, out_hw):
    """Caffe AVE pooling: float32 sum over the clipped window (row-major), divided by the
    window size clipped only to the padded image."""
    x = np.asarray(x, np.float32)
    n, c, h, w = x.shape
    top = np.zeros((n, c) + tuple(out_hw), np.float32)
    for ph, pw, hs, he, ws, we, pool_size in _pool_windows(h, w, kernel, stride, pad, out_hw):
        acc = np.zeros((n, c), np.float32)
        for hh in range(hs, he):
            for ww in range(ws, we):
                acc += x[:, :, hh, ww]
        top[:, :, ph, pw] = acc / np.float32(pool_size)
    return top


def ave_pool_backward_ref(top_diff, kernel, stride, pad, in_hw):
    """Caffe AVE backward: add ``top_diff / pool_size`` to every input of the clipped window."""
    top_diff = np.asarray(top_diff, np.float32)
    n, c, oh, ow = top_diff.shape
    bottom = np.zeros((n, c) + tuple(in_hw), np.float32)
    for ph, pw, hs, he, ws, we, pool_size in _pool_windows(*in_hw, kernel, stride, pad, (oh, ow)):
        g = top_diff[:, :, ph, pw] / np.float32(pool_size)
        for hh in range(hs, he):
            for ww in range(ws, we):
                bottom[:, :, hh, ww] += g
    return bottom


def _window_sum(a, size):
    """Sum of ``a`` (N, C, ...) over channels ``[c - pre, c + size - 1 - pre]`` for every ``c``."""
    pre = (size - 1) // 2
    out = np.zeros_like(a)
    for c in range(a.shape[1]):
        lo, hi = max(c - pre, 0), min(c + size - pre, a.shape[1])
        out[:, c] = a[:, lo:hi].sum(axis=1)
    return out


def lrn_across_forward_ref(x, size, alpha, beta, k):
    """LRN across channels by definition (float64): ``scale = k + alpha/size * window sum of
    x**2``, ``top = x * scale**-beta``; returns float32 ``(top, scale)``."""
    x = np.asarray(x, np.float64)
    scale = k + alpha / size * _window_sum(x * x, size)
    top = x * scale ** -beta
    return top.astype(np.float32), scale.astype(np.float32)


def lrn_across_backward_ref(x, top, scale, top_diff, size, alpha, beta):
    """LRN across-channel gradient by Caffe's formula (float64): ``top_diff * scale**-beta -
    2*alpha*beta/size * x * window sum of (top_diff * top / scale)``."""
    x, top, scale, top_diff = (np.asarray(a, np.float64) for a in (x, top, scale, top_diff))
    ratio = _window_sum(top_diff * top / scale, size)
    out = top_diff * scale ** -beta - 2.0 * alpha * beta / size * x * ratio
    return out.astype(np.float32)


def conv2d_forward_ref(x, weights, bias, kernel, pad, stride, dilation, group):
    """Caffe's Convolution forward through explicit im2col columns and one NumPy product per image
    and group (float64 accumulation, rounded to float32)."""
    n, m = x.shape[0], weights.shape[0]
    w = weights.reshape(group, m // group, -1).astype(np.float64)
    tops = []
    for img in x:
        cols = im2col_ref(img, kernel, pad, stride, dilation)
        cols = cols.reshape(group, -1, cols.shape[1]).astype(np.float64)
        tops.append(np.matmul(w, cols).reshape(m, -1))
    out = np.stack(tops)
    if bias is not None:
        out = out + np.asarray(bias, np.float64)[None, :, None]
    spatial = [_out(s, k, p, st, d) for s, k, p, st, d in zip(x.shape[2:], kernel, pad, stride, dilation)]
    return out.reshape((n, m, *spatial)).astype(np.float32)


def conv2d_weight_grad_ref(x, top_diff, kernel, pad, stride, dilation, group):
    """sum over images of top_diff_g . im2col(x)_g^T, as (M, C/group*kh*kw), float64 then float32."""
    m = top_diff.shape[1]
    total = 0.0
    for img, td in zip(x, top_diff):
        cols = im2col_ref(img, kernel, pad, stride, dilation)
        cols = cols.reshape(group, -1, cols.shape[1]).astype(np.float64)
        total = total + np.matmul(td.reshape(group, m // group, -1).astype(np.float64), cols.transpose(0, 2, 1))
    return np.asarray(total).reshape(m, -1).astype(np.float32)


def conv2d_column_grad_ref(weights, top_diff, group):
    """The bottom gradient's column matrix: group g's rows W_g^T . top_diff_g, images side by side."""
    m = top_diff.shape[1]
    w = weights.reshape(group, m // group, -1).astype(np.float64)
    blocks = [np.matmul(w.transpose(0, 2, 1), td.reshape(group, m // group, -1).astype(np.float64))
              .reshape(-1, td[0].size) for td in top_diff]
    return np.concatenate(blocks, axis=1).astype(np.float32)


def lrn_within_forward_ref(x, size, alpha, beta):
    """LRN within a channel in float64: ``x * (1 + alpha * avepool(x**2)) ** -beta`` with Caffe's
    AVE pooling (size x size, pad (size-1)/2, padding counted in the divisor); (top, pooled, power)."""
    x = np.asarray(x, np.float64)
    pad = (size - 1) // 2
    pooled = ave_pool_forward_ref(x * x, (size, size), (1, 1), (pad, pad), x.shape[2:])
    power = (1.0 + alpha * pooled) ** -beta
    return x * power, pooled, power


def lrn_within_backward_ref(x, top_diff, size, alpha, beta):
    """The gradient of :func:`lrn_within_forward_ref` in float64 (the chain rule through the pooling)."""
    x, top_diff = np.asarray(x, np.float64), np.asarray(top_diff, np.float64)
    _, pooled, power = lrn_within_forward_ref(x, size, alpha, beta)
    pad = (size - 1) // 2
    power_diff = x * top_diff * (-beta * alpha) * power / (1.0 + alpha * pooled)
    pooled_diff = ave_pool_backward_ref(power_diff, (size, size), (1, 1), (pad, pad), x.shape[2:])
    return power * top_diff + pooled_diff * 2.0 * x
