"""Transform benchmark: time to apply one layer, per 1,000 samples, and GFLOP/s.

Applying a layer is one batched product per frequency with ``E`` and every
dense ``C^j`` stacked, ``(F, (1+k_d) C, C) @ (F, C, b)``, plus the Woodbury
products of the classes kept low-rank, two real FFTs, the membership norms
and the weighted sum. This script times ``Layer.__call__`` on lifted features
of real data and reports achieved GFLOP/s against a float64 matmul measured
in the same run on the same machine.

Usage: ``python bench/transform.py [--quick] [--out DIR]``
"""
import argparse
import datetime
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

import convredunet as crn
from convredunet.backend import NumpyBackend
from convredunet.datasets import load_mnist, load_mnist1d, train_test_split_per_class

HERE = Path(__file__).resolve().parent


def layer_flops(layer, n_channels, signal_shape, n_samples):
    """Floating-point operations of one layer application (complex MAC = 8 flops).

    FFT pair: ``2 * 2.5 C T log2 T`` (real FFT and its inverse); stacked product:
    ``F (1+k_d) C^2``; low-rank classes: ``F (2 g w C + 2 g w^2)``; norms and
    weighted sum: ``F k C`` complex multiply-adds.
    """
    t = math.prod(signal_shape)
    f = t // signal_shape[-1] * (signal_shape[-1] // 2 + 1)
    k = layer.n_classes
    macs = f * layer.stacked.shape[1] * n_channels
    if layer.lowrank_classes:
        g, width = layer.M_inv.shape[1], layer.M_inv.shape[-1]
        macs += f * (2 * g * width * n_channels + 2 * g * width * width)
    macs += 2 * f * k * n_channels
    fft = 2 * 2.5 * n_channels * t * math.log2(t)
    return n_samples * (8 * macs + fft)


def matmul_peak(threads, n=1536, repeats=3):
    """Best GFLOP/s of a float64 n x n matmul with ``threads`` BLAS threads."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n)), rng.standard_normal((n, n))
    with threadpool_limits(threads, user_api="blas"):
        a @ b
        best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def cases(quick):
    X1, y1, _, _ = load_mnist1d()
    X, y = load_mnist()
    paper_X, paper_y, _, _ = train_test_split_per_class(X, y, 10, 1)
    big_X, big_y, _, _ = train_test_split_per_class(X, y, 100, 1)
    yield "MNIST-1D, ReduNet1D defaults", crn.ReduNet1D(n_layers=1), X1, y1
    yield ("MNIST 2D, paper (10/class, C=75, low-rank classes)",
           crn.ReduNet2D(n_layers=1), paper_X, paper_y)
    if not quick:
        yield ("MNIST 2D, 100/class (C=75, dense classes)", crn.ReduNet2D(n_layers=1),
               big_X, big_y)


def run(quick=False, out_dir=HERE / "results", batch=200, threads=(1, 2)):
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    backend = NumpyBackend()
    peaks = {n: matmul_peak(n) for n in threads}
    rows = []
    for name, net, X, y in cases(quick):
        net.fit(X, y)
        layer = net.layers_[0]
        z = net.lifting_(backend, net._check_X(X[:batch]))
        n_channels, signal_shape = z.shape[1], tuple(z.shape[2:])
        flops = layer_flops(layer, n_channels, signal_shape, len(z))
        for n in threads:
            with crn.num_threads(n):
                from convredunet._threads import thread_limits

                with thread_limits():
                    layer(backend, z)
                    best = min(_timed(lambda: layer(backend, z)) for _ in range(2 if quick else 4))
            rows.append({
                "case": name, "threads": n, "n_channels": n_channels,
                "signal_shape": list(signal_shape), "n_classes": layer.n_classes,
                "lowrank_classes": len(layer.lowrank_classes), "batch": len(z),
                "seconds_per_layer_per_1000": best * 1000 / len(z),
                "gflops": flops / best / 1e9, "peak_gflops": peaks[n],
                "fraction_of_peak": flops / best / 1e9 / peaks[n],
            })
    result = {"machine": machine(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "peaks_gflops": peaks, "rows": rows}
    (out_dir / "transform.json").write_text(json.dumps(result, indent=2))
    table = markdown(rows)
    (out_dir / "transform.md").write_text(table + "\n")
    print(table)
    return result


def markdown(rows):
    lines = ["| case | threads | s / layer / 1000 samples | GFLOP/s | matmul peak | % of peak |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['threads']} | {r['seconds_per_layer_per_1000']:.3f} | "
                     f"{r['gflops']:.1f} | {r['peak_gflops']:.1f} | "
                     f"{100 * r['fraction_of_peak']:.0f}% |")
    return "\n".join(lines)


def machine():
    from threadpoolctl import threadpool_info

    return {"platform": platform.platform(), "processor": platform.processor(),
            "python": sys.version.split()[0], "numpy": np.__version__,
            "cores": crn.get_num_threads(),
            "blas": [{k: i.get(k) for k in ("internal_api", "version", "architecture",
                                             "num_threads")} for i in threadpool_info()]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args(argv)
    run(args.quick, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
