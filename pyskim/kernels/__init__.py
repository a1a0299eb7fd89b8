"""The Python side of the compiled kernels (``pyskim._kernels``), the only way to them: validated
wrappers for the dense kernels (:mod:`.dense`: im2col/col2im, batched im2col/col2im, pooling, LRN,
the thread pool size in :mod:`.threads`), CSR packing (:mod:`.csr`) and the sparse kernels (:mod:`.sparse`), all checking
their arguments with :mod:`.validate`, with slow NumPy references beside them for the tests
(:mod:`.reference`, :mod:`.sparse_reference`)."""
import functools
import hashlib
import pathlib

from .. import _kernels
from .threads import get_num_threads, set_num_threads

__all__ = ["build_fingerprint", "get_num_threads", "set_num_threads"]


@functools.lru_cache(maxsize=1)
def build_fingerprint():
    """12 hex digits that change whenever the compiled kernels do: a hash of the compiled module
    files of ``pyskim._kernels`` (measurements of one build, e.g. a machine profile, are not valid
    for another)."""
    digest = hashlib.sha1()
    for path in sorted(pathlib.Path(_kernels.__file__).parent.iterdir()):
        if path.suffix in (".so", ".pyd"):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]
