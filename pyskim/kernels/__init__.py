"""The Python side of the compiled kernels (``pyskim._kernels``), the only way to them: validated
wrappers for the dense kernels (:mod:`.dense`: im2col/col2im, batched im2col/col2im, pooling, LRN,
the thread pool size in :mod:`.threads`), CSR packing (:mod:`.csr`) and the sparse kernels (:mod:`.sparse`), all checking
their arguments with :mod:`.validate`, with slow NumPy references beside them for the tests
(:mod:`.reference`, :mod:`.sparse_reference`)."""
from .threads import get_num_threads, set_num_threads

__all__ = ["get_num_threads", "set_num_threads"]
