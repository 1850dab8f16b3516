"""One thread setting for the FFT, BLAS/LAPACK and torch together.

On small machines two thread pools that both spin (OpenBLAS's and an OpenMP
pool, say) can make batched small-matrix work orders of magnitude slower than
a single thread.  Every heavy computation in convredunet therefore runs inside
:func:`thread_limits`: the FFT and torch get the threads set with
:func:`set_num_threads` (default: the cores this process may use); batched
BLAS products run on one thread each (see :func:`thread_limits`), and the
limits are restored when the computation returns. Importing convredunet
changes no setting of the process: no environment variable, no library's
thread pool (the FFTs that use threads run on scipy.fft's own, not OpenMP).
"""
import contextlib
import os
import sys
import threading

from ._validation import check_int

__all__ = ["get_num_threads", "set_num_threads", "num_threads"]

_setting = None


def available_cores():
    """Number of cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


# A setting for the calling thread only (e.g. one Dask task), before the process's.
_local = threading.local()


def get_num_threads():
    """Threads used by the FFT, BLAS and torch inside convredunet."""
    local = getattr(_local, "setting", None)
    if local is not None:
        return local
    return available_cores() if _setting is None else _setting


def set_num_threads(n_threads):
    """Set the threads used by the FFT, BLAS and torch (``None``: all cores)."""
    global _setting
    _setting = None if n_threads is None else check_int(n_threads, "n_threads",
                                                         rule="a positive integer")


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
def thread_num_threads(n_threads):
    """Context manager: this thread (only) uses ``n_threads``; restored on exit.

    What a task among many in one process (a Dask worker's) wants: its own
    setting, leaving the process's and the other tasks' alone.
    """
    previous = getattr(_local, "setting", None)
    _local.setting = check_int(n_threads, "n_threads", rule="a positive integer")
    try:
        yield
    finally:
        _local.setting = previous


_blas_controller = None


def _controller():
    """A cached threadpoolctl controller: scanning the loaded libraries costs
    about 2.7 ms, which a fresh ``threadpool_limits`` pays on every call."""
    global _blas_controller
    if _blas_controller is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - threadpoolctl is a dependency
            return None
        _blas_controller = ThreadpoolController()
    return _blas_controller


# thread_limits changes process-wide settings; calls from several threads
# share one change: the first to enter applies it, the last to leave restores
# it, so no caller ever runs under limits another caller has just restored.
_limits_lock = threading.Lock()
_limits_users = 0
_limits_restore = []


@contextlib.contextmanager
def thread_limits(blas=1):
    """Apply the thread setting while inside (safe to use from many threads).

    torch and the FFT get :func:`get_num_threads` threads. BLAS gets ``blas``
    threads, 1 by default: the engine's products are batches of small
    matrices, which OpenBLAS splits badly across threads. Measured on a busy
    2-core machine, a batch of 420 complex 75x75 by 75x34 products took
    0.015 s on one thread and a median of 0.6-2.5 s on two, whose threads
    spin waiting for each other. ``blas=None`` gives BLAS the setting too
    (for the dense spatial reference's few large matrices); while another
    thread is inside, the limits in force are kept.
    """
    global _limits_users
    n = get_num_threads()
    with _limits_lock:
        if _limits_users == 0:
            _apply_limits(n, n if blas is None else blas)
        _limits_users += 1
    try:
        yield n
    finally:
        with _limits_lock:
            _limits_users -= 1
            if _limits_users == 0:
                while _limits_restore:
                    _limits_restore.pop()()


def _take_control(lib):
    """Let the calling thread set ``lib``'s limit (threadpoolctl >= 3.6 guards it)."""
    clear = getattr(lib, "clear_controlling_thread", None)
    if clear is not None:
        clear(force=True)


def _apply_limits(n, blas):
    controller = _controller()
    if controller is not None:
        # threadpoolctl lets only the first thread that ever set an OpenBLAS
        # limit (pthreads layer) change it again, and silently ignores the
        # others; the thread that applies the shared limit here may be any
        # thread, so it takes control first (under _limits_lock).
        for lib in controller.lib_controllers:
            if lib.user_api == "blas":
                _take_control(lib)
                previous_blas = lib.num_threads
                lib.set_num_threads(blas)
                _limits_restore.append(lambda lib=lib, n=previous_blas: (
                    _take_control(lib), lib.set_num_threads(n)))
    torch = sys.modules.get("torch")
    if torch is not None:
        previous = torch.get_num_threads()
        if previous != n:
            torch.set_num_threads(n)
            _limits_restore.append(lambda: torch.set_num_threads(previous))
