"""Transform benchmark: time to apply one layer, per 1,000 samples, and GFLOP/s.

Applying a layer is one batched product per frequency with ``E`` and every
dense ``C^j`` stacked, ``(F, (1+k_d) C, C) @ (F, C, b)``, plus the Woodbury
products of the classes kept low-rank, two real FFTs, the membership norms
and the weighted sum. This script times ``Layer.__call__`` on lifted features
of real data and reports achieved GFLOP/s against a float64 matmul measured
in the same run on the same machine.

The layer is timed at each thread setting of ``--threads`` (default ``1,2``, as the
recorded ``transform.json``), with BLAS on one thread as inside the estimators.

It also fits the 2D paper network (``ReduNet2D()``, 10 digits per class, float64)
in a fresh process and records its peak resident memory.

Usage: ``python bench/transform.py [--quick] [--out DIR] [--threads 1,2] [--memory-only]``
"""
import math
import sys

import convredunet as crn
from convredunet.backend import NumpyBackend
from convredunet.datasets import load_mnist, load_mnist1d, train_test_split_per_class

import harness  # bench/harness.py: this script's folder is first on sys.path


def layer_flops(layer, n_channels, signal_shape, n_samples):
    """Floating-point operations of one layer application (complex MAC = 8 flops).

    FFT pair: ``2 * 2.5 C T log2 T`` (real FFT and its inverse); stacked product:
    ``F (1+k_d) C^2``; low-rank classes: ``F (2 g w C + g w^2)`` (``V^H v``, ``V (.)``
    and ``M^-1 p``; the norms need no ``V^H V``); norms and
    weighted sum: ``F k C`` complex multiply-adds.
    """
    t = math.prod(signal_shape)
    f = t // signal_shape[-1] * (signal_shape[-1] // 2 + 1)
    k = layer.n_classes
    macs = 0 if layer.stacked is None else f * layer.stacked.shape[1] * n_channels
    if layer.lowrank_classes:
        g, width = layer.M_inv.shape[1], layer.M_inv.shape[-1]
        macs += f * (2 * g * width * n_channels + g * width * width)
        if layer.solution.e_lowrank:  # M_E^-1 p
            macs += f * (g * width) ** 2
    macs += 2 * f * k * n_channels
    fft = 2 * 2.5 * n_channels * t * math.log2(t)
    return n_samples * (8 * macs + fft)


def cases(quick):
    X1, y1, _, _ = load_mnist1d()
    X, y = load_mnist()
    paper_X, paper_y, _, _ = train_test_split_per_class(X, y, 10, 1)
    big_X, big_y, _, _ = train_test_split_per_class(X, y, 100, 1)
    yield ("MNIST-1D, 32 channels (the previous defaults)",
           crn.ReduNet1D(n_layers=1, n_channels=32, eps2=3e-4, classifier="membership"), X1, y1)
    yield ("MNIST 2D, paper (10/class, C=75, low-rank classes)",
           crn.ReduNet2D(n_layers=1, eps2=0.1, classifier="membership"), paper_X, paper_y)
    if not quick:
        yield ("MNIST 2D, 100/class (C=75, dense classes)",
               crn.ReduNet2D(n_layers=1, eps2=0.1, classifier="membership"),
               big_X, big_y)


def run(quick=False, out_dir=harness.RESULTS, batch=200, threads=(1, 2)):
    out_dir = harness.output_dir(out_dir)
    machine = harness.machine_info()
    load_start = harness.load_average()
    backend = NumpyBackend()
    # Best GFLOP/s of a float64 1536 x 1536 matmul with n threads.
    peaks = {n: harness.matmul_peak(n, size=1536, repeats=3) / 1e9 for n in threads}
    rows = []
    for name, net, X, y in cases(quick):
        net.fit(X, y)
        network = net.network_
        layer = network.layers[0]
        z = network.lift(network.workspace.to_working(X[:batch, None]))
        n_channels, signal_shape = z.shape[1], tuple(z.shape[2:])
        flops = layer_flops(layer, n_channels, signal_shape, len(z))
        for n in threads:
            with crn.num_threads(n), harness.one_blas_thread():
                best = harness.time_call(lambda: layer(backend, z),
                                         repeats=2 if quick else 4).best
            rows.append({
                "case": name, "threads": n, "n_channels": n_channels,
                "signal_shape": list(signal_shape), "n_classes": layer.n_classes,
                "lowrank_classes": len(layer.lowrank_classes), "batch": len(z),
                "seconds_per_layer_per_1000": best * 1000 / len(z),
                "gflops": flops / best / 1e9, "peak_gflops": peaks[n],
                "fraction_of_peak": flops / best / 1e9 / peaks[n],
            })
    result = {"machine": machine,
              "load_average": {"start": load_start, "end": harness.load_average()},
              "peaks_gflops": peaks, "rows": rows,
              "fit_memory": fit_peak_memory(n_layers=3 if quick else 25)}
    return write(result, out_dir)


def write(result, out_dir):
    harness.write_json(out_dir / "transform.json", result, indent=2)
    table = markdown(result["rows"]) + "\n\n" + memory_markdown(result["fit_memory"])
    harness.write_text(out_dir / "transform.md", table)
    print(table)
    return result


_FIT_MEMORY = """
import time
import numpy as np
import convredunet as crn
from convredunet.datasets import load_mnist, train_test_split_per_class
X, y = load_mnist()
X, y, _, _ = train_test_split_per_class(X, y, 10, 1)
def peak_kib():  # VmHWM: this process's peak (ru_maxrss would carry the parent's over exec)
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("VmHWM")).split()[1])
before = peak_kib()
start = time.perf_counter()
net = crn.ReduNet2D(n_layers={n_layers}, eps2=0.1, classifier="membership").fit(X, y)
seconds = time.perf_counter() - start
stored = sum(a.nbytes for layer in net.layers_
             for a in (layer.stacked, layer.solution.V, layer.M_inv) if a is not None)
print(before, peak_kib(), stored, seconds)
"""


def fit_peak_memory(n_layers=25):
    """Peak resident memory of fitting the 2D paper network (float64) in a fresh process.

    The paper's setting (75 channels, 9x9 kernels, ``eps2=0.1``), 10 MNIST digits per
    class, ``n_layers`` layers; peak from ``getrusage`` (includes Python, the
    libraries and the loaded MNIST set, measured before the fit); Linux only
    (``/proc/self/status``).
    """
    import subprocess

    done = subprocess.run([sys.executable, "-c", _FIT_MEMORY.format(n_layers=n_layers)],
                          capture_output=True, text=True, check=True)
    before, peak, stored, seconds = done.stdout.split()[-4:]
    return {"n_layers": n_layers, "peak_gb": int(peak) * 1024 / 1e9,
            "before_fit_gb": int(before) * 1024 / 1e9, "operators_gb": int(stored) / 1e9,
            "fit_seconds": float(seconds)}


def memory_markdown(memory):
    return harness.markdown_table(
        ["fit (2D paper network, float64)", "layers", "peak resident memory",
         "before the fit", "stored operators"],
        [["paper setting (eps2=0.1, membership), 10 digits per class", str(memory["n_layers"]),
          f"{memory['peak_gb']:.2f} GB", f"{memory['before_fit_gb']:.2f} GB",
          f"{memory['operators_gb']:.2f} GB"]])


def markdown(rows):
    header = ["case", "threads", "s / layer / 1000 samples", "GFLOP/s", "matmul peak",
              "% of peak"]
    return harness.markdown_table(header, [
        [r["case"], str(r["threads"]), f"{r['seconds_per_layer_per_1000']:.3f}",
         f"{r['gflops']:.1f}", f"{r['peak_gflops']:.1f}", f"{100 * r['fraction_of_peak']:.0f}%"]
        for r in rows])


def main(argv=None):
    parser = harness.arguments(__doc__.splitlines()[0],
                               quick_help="two of the three cases, fewer repeats",
                               several_threads=True, threads_default=(1, 2),
                               threads_help="the layer is timed at each setting, as in the "
                                            "recorded transform.json")
    parser.add_argument("--memory-only", action="store_true",
                        help="measure only the fit's peak memory; keep the timings of "
                             "transform.json in --out")
    args = parser.parse_args(argv)
    if args.memory_only:
        import json

        out_dir = harness.output_dir(args.out)
        result = json.loads((out_dir / "transform.json").read_text())
        result["fit_memory"] = fit_peak_memory(n_layers=3 if args.quick else 25)
        result["fit_memory"]["machine"] = harness.machine_info()
        write(result, out_dir)
        return 0
    run(args.quick, args.out, threads=args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
