"""Memory: the size check made before any work, and freed memory handed back to the system.

:func:`check_size` refuses, before any work, a network whose features and one
layer of operators cannot fit (the in-process fit and, per block and worker,
the Dask fit use it).

Handing freed memory back to the operating system between layers:

Building a deep network allocates, per layer, operators that stay (tens of
MB) between transients of similar size that are freed. glibc's allocator
serves arrays of that size from its heap once its mmap threshold has risen,
and the holes the transients leave are not returned to the system by
themselves: measured on the 2D paper network (6 layers), resident memory
after the fit was 1.25 GB against 1.06 GB with a fixed mmap threshold.
``malloc_trim(0)`` gives those free pages back; Dask's workers do the same.
"""
import ctypes
import ctypes.util
import math
import sys

from . import spectral

_trim = None
if sys.platform.startswith("linux"):
    try:
        _trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        _trim = None


def release_memory():
    """Return free heap pages to the system (glibc); a no-op elsewhere."""
    if _trim is not None:
        _trim(0)


def check_size(params, workspace, n_samples, sample_shape, n_classes, total=None,
               where=None):
    """Refuse, before any work, a network whose features or one layer cannot fit in memory.

    The features of the training set are held twice while a layer is
    applied, and one layer's operators (``E`` and at most every ``C^j``
    dense) are held on top of that. ``total`` (bytes) and ``where`` (words)
    replace the memory of the workspace's device (a Dask worker's limit).
    """
    backend, like = workspace.backend, workspace.like
    if total is None:
        total = backend.memory_bytes(like)
        where = f"of memory of {backend.device(like)}"
    if total is None:
        return
    itemsize = backend.itemsize(like)
    n_channels = sample_shape[0]
    if len(sample_shape) > 1 and params.get("n_channels") is not None:
        n_channels = params["n_channels"]
    signal = sample_shape[1:]
    n_freqs = spectral.n_freqs(signal)
    features = 2 * n_samples * n_channels * max(1, math.prod(signal)) * itemsize
    operators = (1 + n_classes) * n_freqs * n_channels ** 2 * 2 * itemsize
    if features + operators > total:
        raise ValueError(
            f"n_channels={n_channels} with {n_samples} samples of shape {sample_shape} needs "
            f"about {(features + operators) / 2 ** 30:.1f} GiB ({features / 2 ** 30:.1f} GiB "
            f"of features, {operators / 2 ** 30:.1f} GiB of operators per layer), more than "
            f"the {total / 2 ** 30:.1f} GiB {where}; use fewer channels or samples, or "
            "float32")
