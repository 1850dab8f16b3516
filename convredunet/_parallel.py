"""Splitting batched numpy work across threads.

numpy releases the GIL inside BLAS calls and large ufuncs, so independent
frequencies can be processed by several Python threads, each with
single-threaded BLAS (see :func:`convredunet._threads.thread_limits` for why
BLAS itself stays single-threaded). torch arrays are left to torch.
"""
import threading

import numpy as np

from ._threads import get_num_threads

# Below this many array elements of work, one thread: splitting costs more.
MIN_ELEMENTS = 1 << 18

_executor = None
_executor_lock = threading.Lock()


def batch_slices(backend, n_batch, n_elements):
    """Slices of ``range(n_batch)``: one per thread when worth it, else one."""
    n = get_num_threads()
    if not backend.splits_threads or n < 2 or n_batch < 2 or n_elements < MIN_ELEMENTS:
        return [slice(0, n_batch)]
    n = min(n, n_batch)
    bounds = np.linspace(0, n_batch, n + 1).round().astype(int)
    return [slice(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]


def pmap(fn, items):
    """``[fn(item) for item in items]``, on a thread pool when there are several."""
    global _executor
    items = list(items)
    if len(items) == 1:
        return [fn(items[0])]
    with _executor_lock:
        if _executor is None or _executor._max_workers < len(items):
            from concurrent.futures import ThreadPoolExecutor

            # An older, smaller pool is left to finish what it runs and is
            # collected; callers already inside it keep their reference.
            _executor = ThreadPoolExecutor(max_workers=len(items),
                                           thread_name_prefix="convredunet")
        executor = _executor
    return list(executor.map(fn, items))
