"""One thread setting for the FFT, BLAS/LAPACK and torch together.

On small machines two thread pools that both spin (OpenBLAS's and torch's
OpenMP pool, say) can make batched small-matrix work orders of magnitude
slower than a single thread.  Every heavy computation in convredunet therefore
runs inside :func:`thread_limits`, which gives every pool the same number of
threads: the one set with :func:`set_num_threads` (default: the cores this
process may use).
"""
import contextlib
import os
import sys

__all__ = ["get_num_threads", "set_num_threads", "num_threads"]

_setting = None


def available_cores():
    """Number of cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def _check_threads(n):
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n_threads must be a positive integer, got {n!r}")
    if n < 1:
        raise ValueError(f"n_threads must be a positive integer, got {n}")
    return n


def get_num_threads():
    """Threads used by the FFT, BLAS and torch inside convredunet."""
    return available_cores() if _setting is None else _setting


def set_num_threads(n_threads):
    """Set the threads used by the FFT, BLAS and torch (``None``: all cores)."""
    global _setting
    _setting = None if n_threads is None else _check_threads(n_threads)


@contextlib.contextmanager
def num_threads(n_threads):
    """Context manager: ``with num_threads(1): ...`` runs single-threaded."""
    global _setting
    previous = _setting
    set_num_threads(n_threads)
    try:
        yield
    finally:
        _setting = previous


@contextlib.contextmanager
def thread_limits():
    """Apply the thread setting to BLAS/OpenMP pools and torch while inside."""
    n = get_num_threads()
    with contextlib.ExitStack() as stack:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # pragma: no cover - threadpoolctl is a dependency
            pass
        else:
            stack.enter_context(threadpool_limits(limits=n))
        torch = sys.modules.get("torch")
        if torch is not None:
            previous = torch.get_num_threads()
            if previous != n:
                torch.set_num_threads(n)
                stack.callback(torch.set_num_threads, previous)
        yield n
