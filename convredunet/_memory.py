"""Handing freed memory back to the operating system between layers.

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
import sys

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
