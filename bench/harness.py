"""What every benchmark script shares: the machine record, a timer and the writers.

The scripts of ``bench/`` run from a source checkout (``python3 bench/construction.py``),
so Python puts ``bench/`` first on ``sys.path`` and they ``import harness`` like any other
module; ``tests/conftest.py`` does the same when it loads a script for a test.

* :func:`machine_info`, :func:`load_average` -- what ran the benchmark and how busy it was;
* :class:`Timer`, :func:`time_call`, :func:`matmul_peak` -- wall-clock times (with an
  optional synchronization for asynchronous devices) and the machine's float64 matmul rate;
* :func:`arguments`, :func:`thread_setting`, :func:`one_blas_thread` -- the command line
  every script shares (``--quick``, ``--out DIR``, ``--threads N``) and the thread
  settings it runs under;
* :func:`output_dir`, :func:`write_json`, :func:`write_text`, :func:`markdown_table`,
  :func:`text_table`, :func:`figure`, :func:`save_figure` -- the output folder
  (``bench/results/`` by default) and the files, each written under a temporary name
  and renamed when complete.

The scripts use convredunet's public names only (``tests/test_bench_contract.py``).
"""
import argparse
import contextlib
import datetime
import json
import os
import platform
import secrets
import time
import typing
from pathlib import Path

import numpy as np

import convredunet

__all__ = ["RESULTS", "machine_info", "load_average", "Timer", "Timing", "time_call",
           "matmul_peak", "arguments", "thread_setting", "one_blas_thread", "output_dir",
           "write_json", "write_text", "markdown_table", "text_table", "figure",
           "save_figure", "log"]

#: Where the recorded results live (``bench/results/``).
RESULTS = Path(__file__).resolve().parent / "results"


# --- the machine -------------------------------------------------------------------------------
def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module_name):
    """``module.__version__``, or None when the module is not installed."""
    try:
        module = __import__(module_name)
    except ImportError:
        return None
    return getattr(module, "__version__", None)


def load_average():
    """The 1, 5 and 15 minute load averages, or None where the system has none."""
    try:
        return list(os.getloadavg())
    except (AttributeError, OSError):  # pragma: no cover - not Linux/macOS
        return None


def machine_info():
    """Platform, CPU, cores, thread settings, library versions, BLAS/OpenMP pools, date.

    ``threads`` is convredunet's thread setting when called (call it inside a
    ``convredunet.num_threads(n)`` block to record ``n``); ``date`` is UTC.
    """
    from threadpoolctl import threadpool_info

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count()
    try:
        import torch

        torch_threads = torch.get_num_threads()
    except ImportError:  # pragma: no cover - torch is a dependency
        torch_threads = None
    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cores_available": cores,
        "threads": convredunet.get_num_threads(),
        "torch_threads": torch_threads,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": _version("scipy"),
        "sklearn": _version("sklearn"),
        "torch": _version("torch"),
        "pyfftw": _version("pyfftw"),
        "convredunet": convredunet.__version__,
        "threadpool_info": threadpool_info(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


# --- timing ------------------------------------------------------------------------------------
class Timer:
    """Wall-clock seconds of a block: ``with Timer() as t: ...``, then ``t.seconds``.

    Parameters
    ----------
    sync : callable or None
        Called before the clock starts and before it stops, e.g.
        ``torch.cuda.synchronize``, so that work queued on a device is counted.
    """

    def __init__(self, sync=None):
        self.sync = sync
        self.seconds = None

    def __enter__(self):
        if self.sync is not None:
            self.sync()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.sync is not None and exc[0] is None:
            self.sync()
        self.seconds = time.perf_counter() - self._start
        return False


class Timing(typing.NamedTuple):
    """What :func:`time_call` measured; unpacks as ``output, warmup_s, times``."""

    output: object
    warmup_s: float
    times: list

    @property
    def best(self):
        """The fastest timed call, in seconds."""
        return min(self.times)


def time_call(fn, repeats=5, budget_s=None, sync=None):
    """A warm-up call of ``fn()``, then up to ``repeats`` timed calls (at least one).

    Stops repeating once the timed calls have taken ``budget_s`` seconds (None: no
    budget). ``sync`` is passed to :class:`Timer`.

    Returns
    -------
    Timing
        The warm-up call's output, its seconds, and the seconds of each timed call.
    """
    with Timer(sync) as warmup:
        output = fn()
    times = []
    while len(times) < max(1, repeats):
        with Timer(sync) as timer:
            fn()
        times.append(timer.seconds)
        if budget_s is not None and sum(times) >= budget_s:
            break
    return Timing(output, warmup.seconds, times)


def matmul_peak(threads, size=2048, repeats=3, budget_s=5.0):
    """Best rate (flops/s) of a float64 ``size x size`` matmul with ``threads`` threads."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(1)
    a = rng.standard_normal((size, size))
    b = rng.standard_normal((size, size))
    with threadpool_limits(limits=threads):
        best = time_call(lambda: a @ b, repeats, budget_s).best
    return 2.0 * size ** 3 / best


# --- command line and files --------------------------------------------------------------------
class _Threads(argparse.Action):
    """``--threads N`` (or ``N,M,...`` where the script times several settings): positive."""

    def __init__(self, option_strings, dest, several=False, **kwargs):
        self.several = several
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        what = "comma-separated positive integers" if self.several else "a positive integer"
        try:
            counts = tuple(int(n) for n in values.split(",")) if self.several else (int(values),)
        except ValueError:
            counts = ()
        if not counts or any(n < 1 for n in counts):
            parser.error(f"--threads must be {what}, got {values!r}")
        setattr(namespace, self.dest, counts if self.several else counts[0])


class _Folder(argparse.Action):
    """``--out DIR``: a folder (created when the script writes), never a file."""

    def __call__(self, parser, namespace, values, option_string=None):
        path = Path(values)
        if path.exists() and not path.is_dir():
            parser.error(f"--out must be a folder, got the file {values!r}; the script "
                         "writes its files into the folder")
        if path.suffix == ".json":
            parser.error(f"--out must be a folder, got {values!r}; the script writes its "
                         "JSON record into the folder under its own name")
        setattr(namespace, self.dest, str(path))


def arguments(description, quick_help="a reduced run (a smoke test, not the result)",
              threads_default=1, threads_help=None, several_threads=False):
    """An argument parser with the options every script takes.

    ``--quick``
        a reduced run (``quick_help`` says what it reduces);
    ``--out DIR``
        the output folder (default ``bench/results/``), created if missing; any
        earlier record the script reads is read from it too;
    ``--threads N``
        the script runs under ``convredunet.num_threads(N)`` (:func:`thread_setting`).
        Default 1, the protocol of the recorded results. A script that measured at
        another setting keeps it as ``threads_default`` (None: the library's default,
        every available core) and says why in ``threads_help``; with
        ``several_threads`` the option takes ``N,M,...`` (a tuple) for a script that
        times each setting in turn.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--out", default=str(RESULTS), action=_Folder, metavar="DIR",
                        help=f"output folder, created if missing (default {RESULTS})")
    if threads_default is None:
        default_text = "every available core, the library's default"
    elif several_threads:
        threads_default = tuple(int(n) for n in threads_default)
        default_text = ",".join(map(str, threads_default))
    else:
        default_text = f"{threads_default}, the protocol of the recorded results"
    what = ("thread settings timed in turn, comma-separated (convredunet.num_threads)"
            if several_threads else "the thread setting the run uses (convredunet.num_threads)")
    parser.add_argument("--threads", default=threads_default, action=_Threads,
                        several=several_threads, metavar="N,M,..." if several_threads else "N",
                        help=f"{what}; default {default_text}"
                             + (f" ({threads_help})" if threads_help else ""))
    return parser


def thread_setting(n_threads):
    """``convredunet.num_threads(n_threads)``; None leaves the library's setting as it is."""
    if n_threads is None:
        return contextlib.nullcontext()
    return convredunet.num_threads(n_threads)


def one_blas_thread():
    """BLAS on one thread while inside, as convredunet runs its batched small products.

    For a script that calls a fitted network's pieces itself (a layer, the subspace
    distances) and times them as the estimators run them.
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def output_dir(path=RESULTS):
    """``path`` as a ``Path``, created with its parents if missing."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _replace_when_done(path, write):
    """Call ``write(tmp)`` then rename ``tmp`` to ``path``; no partial file is ever left.

    ``tmp`` is a fresh name in ``path``'s folder, created exclusively with the mode
    ``open()`` gives a new file (``0o666 & ~umask``); on any error or interruption it is
    removed and ``path`` is left as it was.
    """
    path = Path(path)
    while True:
        tmp = path.parent / f".{path.name[:32]}.{secrets.token_hex(6)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:  # pragma: no cover - a 48-bit random name taken
            continue
        break
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return path


def _jsonable(x):
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"cannot write {type(x).__name__} to JSON")


def write_json(path, data, indent=1):
    """Write ``data`` as JSON (numpy scalars and arrays as numbers and lists)."""
    text = json.dumps(data, indent=indent, default=_jsonable) + "\n"
    return _replace_when_done(path, lambda tmp: tmp.write_text(text))


def write_text(path, text):
    """Write ``text`` (a Markdown report, a table), ending it with one newline."""
    text = text.rstrip("\n") + "\n"
    return _replace_when_done(path, lambda tmp: tmp.write_text(text))


def markdown_table(header, rows, n_left=1):
    """A Markdown table; the first ``n_left`` columns are left-aligned, the rest right."""
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i < n_left else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(header, rows):
    """A fixed-width table for the terminal: first column left-aligned, the rest right."""
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]

    def line(row):
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                         for i, (cell, w) in enumerate(zip(row, widths)))

    return "\n".join([line(header), "  ".join("-" * w for w in widths)]
                     + [line(row) for row in rows])


def figure(width=10.0, height=5.0):
    """A matplotlib ``Figure`` (no pyplot, so no display is needed)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def save_figure(fig, path, dpi=120):
    """Save ``fig``; the format follows the file's extension."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    return _replace_when_done(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format=fmt))


def log(verbose, message):
    """Print ``message`` at once when ``verbose``."""
    if verbose:
        print(message, flush=True)

