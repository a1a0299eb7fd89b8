"""InnerProduct (Caffe's ``inner_product_layer``): ``top = bottom . W^T + bias`` as one float32 GEMM
(:func:`pyskim.kernels.gemm.matmul`, on pyskim's thread pool), backward as two more.

Sparse modes. The layer has one engine slot, :attr:`InnerProductLayer.engine`: ``None`` (the dense
GEMM), or an object that :mod:`pyskim.sparse` attaches after the Net is built for a ``gemm_mode`` other
than GEMM. ``engine.forward(bottom, top)`` returns True when it computed the top, False for the dense
path (an engine that times the modes runs :meth:`InnerProductLayer.forward_dense` itself);
``weights_changed()`` tells it that new weights were loaded. The layer reads its weights through
``Blob.readonly_data`` and never writes them.
"""
import numpy as np

from ..core.layer import Layer, canonical_axis, layer_error, register
from ..kernels.gemm import matmul


@register("InnerProduct", "INNER_PRODUCT")
class InnerProductLayer(Layer):
    """``top = bottom(M x K) . W^T + bias`` with W of shape (N, K), or (K, N) when ``transpose``
    (``InnerProductLayer``). The axes from ``axis`` on are flattened into K."""

    exact_num_bottom = exact_num_top = 1
    #: The sparse engine running the forward pass, or None (see the module docstring).
    engine = None

    def layer_setup(self, bottom, top):
        p = self.param.inner_product_param
        if p.num_output <= 0:
            raise layer_error(self, "inner_product_param.num_output must be positive")
        self.num_output, self.bias_term, self.transpose = p.num_output, p.bias_term, p.transpose
        axis = canonical_axis(self, bottom[0], p.axis, "inner_product_param.axis")
        self.K = bottom[0].count_range(axis)
        weight_shape = (self.K, self.num_output) if self.transpose else (self.num_output, self.K)
        specs = [(weight_shape, p.weight_filler)]
        if self.bias_term:
            specs.append(((self.num_output,), p.bias_filler))
        self.make_param_blobs(specs)
        self._reshaped_for = self._top_shape = None
        if tuple(self.blobs[0].shape) != weight_shape:
            raise layer_error(self, f"weight blob has shape {list(self.blobs[0].shape)}, expected {list(weight_shape)}")
        self.weights_changed()

    def weights_changed(self):
        """Hook called when ``blobs[0]`` got new values (after setup, and whenever the net loads
        weights): the attached engine, if any, repacks its weights; the dense product keeps nothing."""
        if self.engine is not None:
            self.engine.weights_changed()

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if shape == self._reshaped_for and top[0].shape == self._top_shape:
            return              # the shapes of the last reshape: M still holds
        axis = canonical_axis(self, bottom[0], self.param.inner_product_param.axis, "inner_product_param.axis")
        if bottom[0].count_range(axis) != self.K:
            raise layer_error(self, f"input size incompatible with inner product parameters: bottom "
                                    f"{list(shape)} from axis {axis} is not K = {self.K}")
        self.M = bottom[0].count_range(0, axis)
        top[0].reshape(tuple(shape[:axis]) + (self.num_output,))
        self._reshaped_for, self._top_shape = shape, top[0].shape

    def _weight_as_kn(self, weight):
        """The weights as the (K, N) right-hand side of ``x . W^T`` (a view)."""
        return weight if self.transpose else weight.T

    def forward_cpu(self, bottom, top):
        if self.engine is None or not self.engine.forward(bottom, top):
            self.forward_dense(bottom, top)

    def forward_dense(self, bottom, top):
        """The dense GEMM, whatever the engine."""
        bias = self.blobs[1].readonly_data if self.bias_term else None
        matmul(bottom[0].data.reshape(self.M, self.K), self._weight_as_kn(self.blobs[0].readonly_data),
               out=top[0].data.reshape(self.M, self.num_output), bias=bias)

    def backward_cpu(self, top, propagate_down, bottom):
        top_diff = top[0].diff.reshape(self.M, self.num_output)
        x = bottom[0].data.reshape(self.M, self.K)
        if self.param_propagate_down[0]:
            weight_diff = self.blobs[0].diff
            if self.transpose:
                matmul(x.T, top_diff, out=weight_diff, accumulate=True)
            else:
                matmul(top_diff.T, x, out=weight_diff, accumulate=True)
        if self.bias_term and self.param_propagate_down[1]:
            self.blobs[1].diff[...] += top_diff.sum(axis=0, dtype=np.float32)
        if propagate_down[0]:
            weight = self.blobs[0].readonly_data
            matmul(top_diff, weight.T if self.transpose else weight, out=bottom[0].diff.reshape(self.M, self.K))
