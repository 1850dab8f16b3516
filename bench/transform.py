"""Transform benchmark: time to apply one layer, per 1,000 samples, and GFLOP/s.

Applying a layer is one batched product per frequency with ``E`` and every
dense ``C^j`` stacked, ``(F, (1+k_d) C, C) @ (F, C, b)``, plus the Woodbury
products of the classes kept low-rank, two real FFTs, the membership norms
and the weighted sum. This script times ``Layer.__call__`` on lifted features
of real data and reports achieved GFLOP/s against a float64 matmul measured
in the same run on the same machine.

Usage: ``python bench/transform.py [--quick] [--out DIR]``
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
        layer = net.layers_[0]
        z = net.lifting_(backend, net._check_X(X[:batch]))
        n_channels, signal_shape = z.shape[1], tuple(z.shape[2:])
        flops = layer_flops(layer, n_channels, signal_shape, len(z))
        for n in threads:
            with crn.num_threads(n):
                from convredunet._threads import thread_limits

                with thread_limits():
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
              "peaks_gflops": peaks, "rows": rows}
    harness.write_json(out_dir / "transform.json", result, indent=2)
    table = markdown(rows)
    harness.write_text(out_dir / "transform.md", table)
    print(table)
    return result


def markdown(rows):
    header = ["case", "threads", "s / layer / 1000 samples", "GFLOP/s", "matmul peak",
              "% of peak"]
    return harness.markdown_table(header, [
        [r["case"], str(r["threads"]), f"{r['seconds_per_layer_per_1000']:.3f}",
         f"{r['gflops']:.1f}", f"{r['peak_gflops']:.1f}", f"{100 * r['fraction_of_peak']:.0f}%"]
        for r in rows])


def main(argv=None):
    parser = harness.arguments(__doc__.splitlines()[0],
                               quick_help="two of the three cases, fewer repeats")
    args = parser.parse_args(argv)
    run(args.quick, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
