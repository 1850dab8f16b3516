"""Construction benchmark: how fast one layer's operators ``E``, ``C^j`` are built.

Three ways of building the same objects (SPEC.md) from the same data, in one run:

``spectral``
    :func:`convredunet.construct_operators` with ``domain="spectral"``: half
    spectrum, batched per-frequency Grams and Hermitian positive definite solves.
``spatial``
    ``domain="spatial"``: dense block-circulant ``CT x CT`` matrices.
``loop``
    :func:`baselines.loop_operators`: the approach of the original research
    code (full complex FFT, a Python loop over every frequency and group with
    the generic ``numpy.linalg.inv`` and ``numpy.linalg.slogdet``).

Every timed call delivers the same things: the real convolution kernels of
``E`` and of every ``C^j`` and the two rates (``construct_operators(...)``
followed by ``.kernels()``), so the times compare like with like.  The
spectral engine's time without the inverse FFT to kernels (its own
deliverable, the half-spectrum operators) is recorded too
(``construct_only_s``).  Before a cell is timed, the outputs of its warm-up
call are checked against the spectral engine's (max relative difference at
most ``1e-8`` in float64); the benchmark stops with an error otherwise, and
the differences are recorded in the JSON.

The machine's matmul peak is measured in the same run; GFLOP/s count each
method's own arithmetic (:func:`spectral_flops`, :func:`spatial_flops`,
:func:`loop_flops`), and the load average at start and end is saved, since
other processes on the machine distort the times.

Usage::

    python3 bench/construction.py [--quick] [--out DIR] [--threads 1,2]

or, from Python, :func:`run`.
Writes ``construction.json``, ``construction.md`` and ``construction.png`` to
the output directory (default ``bench/results/``).
"""
import contextlib
import dataclasses
import math
import sys

import numpy as np
from threadpoolctl import threadpool_limits

import convredunet
from convredunet import spatial

import baselines  # bench/ modules: this script's folder is first on sys.path
import harness

__all__ = ["Case", "run", "main", "full_grid", "quick_grid", "spectral_flops",
           "spatial_flops", "loop_flops"]

DEFAULT_OUT = str(harness.RESULTS)
METHODS = ("spectral", "spatial", "loop")
EPS2 = 0.1
#: Largest max relative difference to the spectral engine that a timed cell accepts.
AGREEMENT_RTOL = 1e-8
#: Spatial cells whose estimated time per call exceeds this many seconds are skipped.
SPATIAL_TIME_LIMIT_S = 60.0
#: Side of the float64 matrices whose product measures the machine's peak.
PEAK_SIZE = 2048


@dataclasses.dataclass(frozen=True)
class Case:
    """One cell of the grid: ``n_samples`` samples of shape ``(C, *signal_shape)``."""

    n_samples: int
    n_classes: int
    n_channels: int
    signal_shape: tuple
    methods: tuple = METHODS
    label: str = ""

    @property
    def is_2d(self):
        return len(self.signal_shape) == 2

    @property
    def size(self):
        """``T``: positions per channel (``H * W`` in 2D)."""
        return math.prod(self.signal_shape)

    def describe(self):
        shape = "x".join(str(s) for s in self.signal_shape)
        return (f"m={self.n_samples} k={self.n_classes} C={self.n_channels} "
                f"{'HxW' if self.is_2d else 'T'}={shape}")


MNIST_CASE = Case(100, 10, 75, (28, 28), label="2D MNIST size")
#: The 1D setting of the paper's experiments: 20 channels, length 200, 10 classes.
PAPER_1D_CASE = Case(100, 10, 20, (200,), label="1D paper setting")


def full_grid():
    """1D: m=100, k=4, C in {4, 8, 16}, T in {16, ..., 256}; the 1D paper setting (m=100,
    k=10, C=20, T=200); and the 2D MNIST size."""
    cases = [Case(100, 4, c, (t,)) for c in (4, 8, 16) for t in (16, 32, 64, 128, 256)]
    return cases + [PAPER_1D_CASE, MNIST_CASE]


def quick_grid():
    """A reduced grid that keeps the headline cells."""
    return [Case(100, 4, 8, (32,)), Case(100, 4, 8, (128,)), PAPER_1D_CASE, MNIST_CASE]


# --- data --------------------------------------------------------------------

def make_data(case, seed=0):
    """Gaussian samples, each of unit Frobenius norm, float64; equal class counts."""
    rng = np.random.default_rng(seed)
    shape = (case.n_samples, case.n_channels) + tuple(case.signal_shape)
    Z = rng.standard_normal(shape)
    Z /= np.linalg.norm(Z.reshape(case.n_samples, -1), axis=1).reshape(
        (case.n_samples,) + (1,) * (len(shape) - 1))
    y = np.arange(case.n_samples) % case.n_classes
    return Z, y


def _class_sizes(case):
    counts = np.bincount(np.arange(case.n_samples) % case.n_classes)
    return [int(c) for c in counts]


# --- flop counts ---------------------------------------------------------------

def _fft_flops(n_signals, size, complex_input=False):
    """``5 N log2 N`` per complex FFT of length ``N``, half that for a real one."""
    per = 5.0 * size * math.log2(size) if size > 1 else 0.0
    return n_signals * (per if complex_input else per / 2)


def spectral_flops(case):
    """Useful real floating-point operations of the spectral engine on ``case``.

    A complex multiply-add is 8 real flops (4 multiplies, 4 additions).  With
    ``T`` positions, ``F`` stored frequencies (``T//2 + 1`` in 1D,
    ``H (W//2 + 1)`` in 2D), ``m`` samples, ``m_j`` per class and ``C``
    channels:

    - ``fft``: real FFTs of the ``m C`` signals, ``2.5 T log2 T`` each (half of
      the usual ``5 N log2 N`` for a complex FFT).
    - ``gram``: per stored frequency and class, the ``C x C`` product
      ``V_j V_j^H`` over ``m_j`` columns, ``8 m_j C^2``; in all ``8 m C^2 F``
      (a full product is counted, as computed; a Hermitian rank-k update would
      need half).  ``E``'s Gram is the sum of the class Grams (``C^2`` adds per
      class and frequency, not counted).
    - ``inverse``: per frequency, for ``E`` and every class with ``m_j >= C``,
      the inverse of a Hermitian positive definite matrix by Cholesky: in real
      arithmetic dpotrf costs ``C^3/3`` and dpotri ``2 C^3/3`` flops, complex
      arithmetic four times as much, so ``4 C^3``; the log-determinant comes
      free with the factor.  The engine's own kernels do more (a general
      inverse of the triangular factor and a full product), which is not
      counted: this is the useful work, not the executed work.
    - ``woodbury``: for a group with ``n = m_j < C`` (the engine then solves the
      ``n x n`` system instead): ``V^H V`` (``8 C n^2``), its inverse
      (``4 n^3``), ``V M^-1`` (``8 C n^2``) and ``(V M^-1) V^H`` (``8 C^2 n``),
      per frequency.
    - ``kernels``: inverse real FFTs of the ``(k + 1) C^2`` operator entries.

    Returns
    -------
    dict of the parts above and ``total``, in flops.
    """
    c, t = case.n_channels, case.size
    shape = tuple(case.signal_shape)
    n_freqs = math.prod(shape[:-1]) * (shape[-1] // 2 + 1)
    parts = {
        "fft": _fft_flops(case.n_samples * c, t),
        "gram": 8.0 * case.n_samples * c * c * n_freqs,
        "inverse": 0.0,
        "woodbury": 0.0,
        "kernels": _fft_flops((case.n_classes + 1) * c * c, t),
    }
    for n in [case.n_samples] + _class_sizes(case):
        if n >= c:
            parts["inverse"] += 4.0 * c ** 3 * n_freqs
        else:
            parts["woodbury"] += (16.0 * c * n * n + 4.0 * n ** 3 + 8.0 * c * c * n) * n_freqs
    parts["total"] = sum(parts.values())
    return parts


def spatial_flops(case):
    """Real flops of the dense spatial construction on ``case``.

    With ``N = C T``: the Gram ``circ(Z_j) circ(Z_j)^T`` of ``m_j T`` columns
    is a symmetric rank-k update, ``N^2 m_j T`` flops, for ``E`` (``m``
    samples) and every class (``m`` in all): ``2 m T N^2``.  Each of the
    ``k + 1`` inverses by Cholesky (dpotrf ``N^3/3``, dpotri ``2 N^3/3``):
    ``N^3``.
    """
    n = case.n_channels * case.size
    parts = {
        "gram": 2.0 * case.n_samples * case.size * n * n,
        "inverse": (case.n_classes + 1) * float(n) ** 3,
    }
    parts["total"] = sum(parts.values())
    return parts


def loop_flops(case):
    """Real flops of the per-frequency loop baseline on ``case``.

    Full complex FFT of the ``m C`` signals (``5 T log2 T`` each); for each of
    the ``T`` frequencies and each group of ``n`` samples: the Gram
    ``8 n C^2`` (``n`` sums to ``2 m`` over ``E`` and the classes), a general
    complex inverse (zgetrf + zgetri: ``2 C^3`` flops in real arithmetic, four
    times that in complex, ``8 C^3``) and ``slogdet`` (another zgetrf,
    ``8/3 C^3``); inverse complex FFTs of the ``(k + 1) C^2`` kernels.
    """
    c, t = case.n_channels, case.size
    parts = {
        "fft": _fft_flops(case.n_samples * c, t, complex_input=True),
        "gram": 8.0 * 2 * case.n_samples * c * c * t,
        "inverse": (case.n_classes + 1) * t * 8.0 * c ** 3,
        "slogdet": (case.n_classes + 1) * t * (8.0 / 3.0) * c ** 3,
        "kernels": _fft_flops((case.n_classes + 1) * c * c, t, complex_input=True),
    }
    parts["total"] = sum(parts.values())
    return parts


FLOPS = {"spectral": spectral_flops, "spatial": spatial_flops, "loop": loop_flops}


# --- the three methods -----------------------------------------------------------

def _engine(domain):
    def build(Z, y):
        ops = convredunet.construct_operators(Z, y, eps2=EPS2, domain=domain)
        E, C = ops.kernels()
        return {"E": E, "C": C, "R": ops.rates.expansion, "R_c": ops.rates.compression}
    return build


def _loop(Z, y):
    return baselines.loop_operators(Z, y, eps2=EPS2)


BUILDERS = {"spectral": _engine("spectral"), "spatial": _engine("spatial"), "loop": _loop}


def _threads(method, n):
    """The thread setting for ``method``: convredunet's, plus threadpoolctl for the loop."""
    stack = contextlib.ExitStack()
    stack.enter_context(convredunet.num_threads(n))
    if method == "loop":
        stack.enter_context(threadpool_limits(limits=n))
    return stack


def differences(got, ref):
    """Relative differences of kernels (``max|a-b| / max|b|``) and rates to ``ref``."""
    def rel(a, b):
        a, b = np.asarray(a), np.asarray(b)
        return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))

    out = {"E": rel(got["E"], ref["E"]), "C": rel(got["C"], ref["C"]),
           "R": rel(got["R"], ref["R"]), "R_c": rel(got["R_c"], ref["R_c"])}
    out["max"] = max(out.values())
    return out


def measure_peak(threads, repeats, size=PEAK_SIZE):
    """Best float64 ``size x size`` matmul rate (flops/s) for each thread count."""
    return {n: harness.matmul_peak(n, size, repeats, budget_s=5.0) for n in threads}


# --- the run ------------------------------------------------------------------

def _spatial_estimate(case, n, records):
    """Seconds a spatial call on ``case`` should take, from the costliest one measured."""
    done = [r for r in records if r["method"] == "spatial" and r["threads"] == n
            and r["status"] == "ok"]
    if not done:
        return None
    ref = max(done, key=lambda r: r["flops"]["total"])
    return ref["seconds"] * spatial_flops(case)["total"] / ref["flops"]["total"]


def _cell(case, method, n):
    return {
        "m": case.n_samples, "k": case.n_classes, "C": case.n_channels,
        "signal_shape": list(case.signal_shape), "T": case.size, "is_2d": case.is_2d,
        "label": case.label, "method": method, "threads": n, "status": "pending",
    }


def run(quick=False, out_dir=DEFAULT_OUT, threads=(1, 2), grid=None, repeats=None,
        verbose=True, spatial_time_limit=SPATIAL_TIME_LIMIT_S, peak_size=PEAK_SIZE):
    """Time the three constructions on a grid and write the results.

    Parameters
    ----------
    quick : bool
        The reduced grid (:func:`quick_grid`) and fewer repeats.
    out_dir : str
        Where ``construction.json``, ``construction.md`` and
        ``construction.png`` are written (created if missing).
    threads : sequence of int
        Thread settings (``convredunet.num_threads``) each method is timed under.
    grid : list of Case or None
        Cells to time instead of the full or quick grid.
    repeats : int or None
        Timed calls after the warm-up (best one reported); default 5, quick 2.
    verbose : bool
        Print progress and the table.
    spatial_time_limit : float
        Spatial cells estimated to take longer (seconds per call) are skipped.
    peak_size : int
        Side of the matmul that measures the machine's peak.

    Returns
    -------
    dict
        What ``construction.json`` holds: ``machine``, ``settings``,
        ``peak_flops``, ``cells`` (one per case, method and thread count) and
        ``headline`` ratios.
    """
    threads = tuple(int(n) for n in threads)
    if not threads or any(n < 1 for n in threads):
        raise ValueError(f"threads must be positive integers, got {threads!r}")
    if grid is None:
        grid = quick_grid() if quick else full_grid()
    if repeats is None:
        repeats = 2 if quick else 5
    budget_s = 1.0 if quick else 10.0
    machine = harness.machine_info()
    load_start = harness.load_average()
    harness.log(verbose, f"machine: {machine['cpu_model']}, {machine['cores_available']} cores; "
                  f"load average {load_start}")

    peaks = measure_peak(threads, repeats=2 if quick else 3, size=peak_size)
    for n, p in peaks.items():
        harness.log(verbose, f"peak ({peak_size}x{peak_size} float64 matmul), {n} thread(s): "
                      f"{p / 1e9:.1f} GFLOP/s")

    records = []
    for case in grid:
        Z, y = make_data(case)
        for n in threads:
            _time_case(case, n, Z, y, records, peaks[n], repeats, budget_s,
                       spatial_time_limit, verbose)

    result = {
        "machine": machine,
        "load_average": {"start": load_start, "end": harness.load_average()},
        "settings": {"quick": bool(quick), "threads": list(threads), "repeats": repeats,
                     "repeat_budget_s": budget_s, "eps2": EPS2, "dtype": "float64",
                     "seed": 0, "agreement_rtol": AGREEMENT_RTOL,
                     "spatial_time_limit_s": spatial_time_limit, "peak_size": peak_size},
        "peak_flops": {str(n): p for n, p in peaks.items()},
        "cells": records,
    }
    result["headline"] = headline(result)
    out = harness.output_dir(out_dir)
    harness.write_json(out / "construction.json", result)
    harness.write_text(out / "construction.md", markdown_report(result))
    plot(result, out / "construction.png")
    if verbose:
        print()
        print(format_table(result))
        print()
        for line in _headline_lines(result):
            print(line)
        print(f"\nwrote construction.json, construction.md, construction.png to {out_dir}")
    return result


def _time_case(case, n, Z, y, records, peak, repeats, budget_s, spatial_time_limit,
               verbose):
    """Time every method of ``case`` under ``n`` threads; append the cells to ``records``."""
    reference = None
    for method in METHODS:
        if method not in case.methods:
            continue
        cell = _cell(case, method, n)
        cell["flops"] = FLOPS[method](case)
        cell["load_average_before"] = harness.load_average()
        records.append(cell)
        if method == "spatial":
            reason = _spatial_skip(case, n, cell, records, spatial_time_limit)
            if reason is not None:
                cell.update(status="skipped", reason=reason)
                harness.log(verbose, f"{case.describe()} spatial threads={n}: {reason}")
                continue
        with _threads(method, n):
            try:
                out, warmup, times = harness.time_call(
                    lambda: BUILDERS[method](Z, y), repeats, budget_s)
            except ValueError as exc:  # the dense reference's size limit
                if method != "spatial":
                    raise
                cell.update(status="skipped", reason="too large", detail=str(exc))
                continue
        best = min(times)
        cell.update(status="ok", seconds=best, times=times, warmup_s=warmup,
                    gflops=cell["flops"]["total"] / best / 1e9,
                    peak_fraction=cell["flops"]["total"] / best / peak)
        if method == "spectral":
            reference = out
            # The engine's own deliverable (half-spectrum operators), without
            # the inverse FFT to kernels.
            with _threads(method, n):
                _, _, only = harness.time_call(lambda: convredunet.construct_operators(
                    Z, y, eps2=EPS2, domain="spectral"), repeats, budget_s)
            cell["construct_only_s"] = min(only)
        else:
            if reference is None:  # spectral not timed on this case
                with _threads("spectral", n):
                    reference = BUILDERS["spectral"](Z, y)
            diff = differences(out, reference)
            cell["rel_diff_vs_spectral"] = diff
            if not diff["max"] <= AGREEMENT_RTOL:
                raise RuntimeError(
                    f"{method} disagrees with the spectral engine on {case.describe()} "
                    f"(threads={n}): max relative difference {diff['max']:.3g} > "
                    f"{AGREEMENT_RTOL:g}; details {diff}")
        harness.log(verbose, f"{case.describe()} {method} threads={n}: {best:.4g} s "
                      f"(warm-up {warmup:.3g} s, {len(times)} repeats)")


def _spatial_skip(case, n, cell, records, limit):
    """Why a spatial cell is not run (too large, or too slow), or None."""
    try:
        spatial.check_dense_size((case.n_channels,) + tuple(case.signal_shape), 8)
    except ValueError as exc:
        cell["detail"] = str(exc)
        return "too large"
    estimate = _spatial_estimate(case, n, records)
    if estimate is not None and estimate > limit:
        cell["estimated_s"] = estimate
        return f"estimated {estimate:.0f} s > {limit:.0f} s"
    return None


# --- reporting -------------------------------------------------------------------

def _find(cells, case_key, method, n):
    for cell in cells:
        if _case_key(cell) == case_key and cell["method"] == method and cell["threads"] == n:
            return cell
    return None


def _case_key(cell):
    return (cell["m"], cell["k"], cell["C"], tuple(cell["signal_shape"]))


def _ok(cell):
    return cell is not None and cell.get("status") == "ok"


def _ratio(cells, key, other, n_other, n_spectral):
    a = _find(cells, key, other, n_other)
    b = _find(cells, key, "spectral", n_spectral)
    if _ok(a) and _ok(b):
        return a["seconds"] / b["seconds"]
    return None


def _best(cells, key, method):
    """The fastest ``ok`` cell of ``method`` over thread counts, or None."""
    found = [c for c in cells if _case_key(c) == key and c["method"] == method and _ok(c)]
    return min(found, key=lambda c: c["seconds"]) if found else None


def headline(result):
    """Spectral vs spatial at C=8, T=128 (m=100, k=4); spectral vs loop in the 1D paper
    setting and at the 2D MNIST size."""
    cells = result["cells"]
    out = {}
    for name, key, other in (("spectral_vs_spatial_C8_T128", (100, 4, 8, (128,)), "spatial"),
                             ("spectral_vs_loop_1d_paper", (100, 10, 20, (200,)), "loop"),
                             ("spectral_vs_loop_2d_mnist", (100, 10, 75, (28, 28)), "loop")):
        entry = {"per_threads": {}}
        for n in result["settings"]["threads"]:
            ratio = _ratio(cells, key, other, n, n)
            if ratio is not None:
                entry["per_threads"][str(n)] = ratio
        fast, slow = _best(cells, key, "spectral"), _best(cells, key, other)
        if fast is not None and slow is not None:
            entry["best_vs_best"] = slow["seconds"] / fast["seconds"]
            only = min(c["construct_only_s"] for c in cells if _case_key(c) == key
                       and c["method"] == "spectral" and _ok(c))
            entry["best_vs_best_without_kernels"] = slow["seconds"] / only
            entry["spectral_threads"] = fast["threads"]
            entry["spectral_seconds"] = fast["seconds"]
            entry[f"{other}_threads"] = slow["threads"]
            entry[f"{other}_seconds"] = slow["seconds"]
        out[name] = entry
    return out


def _headline_lines(result):
    lines = []
    names = {"spectral_vs_spatial_C8_T128": ("spatial", "1D C=8, T=128, m=100, k=4", 100),
             "spectral_vs_loop_1d_paper": ("loop", "1D paper setting C=20, T=200, m=100, k=10",
                                           10),
             "spectral_vs_loop_2d_mnist": ("loop", "2D MNIST size C=75, 28x28, m=100, k=10",
                                           10)}
    for name, (other, where, target) in names.items():
        entry = result["headline"].get(name, {})
        per = ", ".join(f"{r:.1f}x at {n} thread(s)" for n, r in entry.get("per_threads", {}).items())
        if "best_vs_best" in entry:
            lines.append(
                f"spectral vs {other}, {where}: {entry['best_vs_best']:.1f}x best vs best "
                f"(spectral {entry['spectral_seconds']:.4g} s at {entry['spectral_threads']} "
                f"thread(s), {other} {entry[f'{other}_seconds']:.4g} s at "
                f"{entry[f'{other}_threads']} thread(s)); same threads: {per or 'n/a'} "
                f"[target >= {target}x]; {entry['best_vs_best_without_kernels']:.1f}x if the "
                f"spectral side stops at construct_operators (no inverse FFT to kernels)")
        else:
            lines.append(f"spectral vs {other}, {where}: not measured in this run")
    return lines


def table_rows(result):
    """Header and rows (strings) of the results table."""
    header = ["method", "C", "T", "2D", "threads", "seconds", "spectral x vs spatial",
              "spectral x vs loop", "GFLOP/s", "% of peak"]
    rows = []
    cells = result["cells"]
    for cell in cells:
        key, n = _case_key(cell), cell["threads"]
        shape = "x".join(str(s) for s in cell["signal_shape"])
        if cell["status"] == "ok":
            seconds = f"{cell['seconds']:.4g}"
            gflops = f"{cell['gflops']:.2f}"
            peak = f"{100 * cell['peak_fraction']:.1f}%"
        else:
            seconds = f"skipped ({cell['reason']})"
            gflops = peak = ""
        vs_spatial = vs_loop = ""
        if cell["method"] == "spectral" and cell["status"] == "ok":
            r = _ratio(cells, key, "spatial", n, n)
            vs_spatial = f"{r:.1f}x" if r is not None else ""
            r = _ratio(cells, key, "loop", n, n)
            vs_loop = f"{r:.1f}x" if r is not None else ""
        rows.append([cell["method"], str(cell["C"]), shape, "yes" if cell["is_2d"] else "no",
                     str(n), seconds, vs_spatial, vs_loop, gflops, peak])
    return header, rows


def format_table(result):
    return harness.text_table(*table_rows(result))


def markdown_report(result):
    """``construction.md``: machine, headline ratios, peak and the table."""
    machine = result["machine"]
    header, rows = table_rows(result)
    peaks = ", ".join(f"{float(p) / 1e9:.1f} GFLOP/s at {n} thread(s)"
                      for n, p in result["peak_flops"].items())
    load = result["load_average"]
    lines = [
        "# Construction benchmark",
        "",
        "Time to build one layer's operators (kernels of `E` and every `C^j`, and the rates) "
        "from the same float64 data: `spectral` is `construct_operators(domain=\"spectral\")`, "
        "`spatial` the dense block-circulant reference, `loop` the per-frequency "
        "`numpy.linalg.inv`/`slogdet` loop of the original research code "
        "(`bench/baselines.py`). Best of the timed calls after a warm-up; speedups compare "
        "times at the same thread count. GFLOP/s counts each method's own arithmetic "
        "(see the docstrings of `bench/construction.py`); % of peak is against a "
        "float64 matmul measured in the same run. Generated by `bench/construction.py`.",
        "",
        f"Machine: {machine['cpu_model']}, {machine['cores_available']} cores, "
        f"{machine['platform']}; numpy {machine['numpy']}, scipy {machine['scipy']}, "
        f"pyfftw {machine['pyfftw']}, torch {machine['torch']}; {machine['date']}. "
        f"Load average at start/end: {_fmt_load(load['start'])} / {_fmt_load(load['end'])}.",
        "",
        f"Measured peak: {peaks}.",
        "",
    ]
    lines += [f"- {line}" for line in _headline_lines(result)]
    lines += ["", harness.markdown_table(header, rows)]
    return "\n".join(lines) + "\n"


def _fmt_load(load):
    return "n/a" if load is None else ", ".join(f"{x:.2f}" for x in load)


def plot(result, path):
    """Log-log time vs T: one line per method and C (best thread count); 2D as stars."""
    from matplotlib.ticker import NullFormatter

    cells = [c for c in result["cells"] if _ok(c)]
    fig = harness.figure(10.0, 5.0)
    ax = fig.subplots()
    colors = {"spectral": "tab:blue", "spatial": "tab:red", "loop": "tab:green"}
    markers = ["o", "s", "^", "v", "D", "P"]
    channels = sorted({c["C"] for c in cells if not c["is_2d"]})
    for method in METHODS:
        for i, n_channels in enumerate(channels):
            keys = sorted({_case_key(c) for c in cells if c["method"] == method
                           and c["C"] == n_channels and not c["is_2d"]}, key=lambda k: k[3])
            points = [(_best(cells, key, method)["T"], _best(cells, key, method)["seconds"])
                      for key in keys]
            if points:
                t, s = zip(*points)
                ax.plot(t, s, color=colors[method], marker=markers[i % len(markers)],
                        label=f"{method}, C={n_channels}")
        for key in sorted({_case_key(c) for c in cells if c["method"] == method
                           and c["is_2d"]}):
            best = _best(cells, key, method)
            shape = "x".join(str(s) for s in key[3])
            ax.plot([best["T"]], [best["seconds"]], color=colors[method], marker="*",
                    markersize=14, linestyle="none",
                    label=f"{method}, 2D C={key[2]} {shape} (m={key[0]}, k={key[1]})")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    sizes = sorted({c["T"] for c in cells})
    if sizes:
        ax.set_xticks(sizes, [str(t) for t in sizes])
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("T (positions; H*W in 2D)")
    ax.set_ylabel("seconds (best thread count)")
    ax.set_title("Building one layer's operators (float64)")
    ax.grid(True, which="both", alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=8)
    harness.save_figure(fig, path, dpi=120)


def main(argv=None):
    parser = harness.arguments(
        "Time the construction of one layer's operators: spectral engine, dense spatial "
        "reference and the per-frequency loop baseline.",
        quick_help="reduced grid and fewer repeats (under a minute)",
        several_threads=True, threads_default=(1, 2),
        threads_help="every method is timed at each setting, as in the recorded "
                     "construction.json")
    args = parser.parse_args(argv)
    run(quick=args.quick, out_dir=args.out, threads=args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
