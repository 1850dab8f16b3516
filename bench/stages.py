"""Where the fit's and the predict's time goes, stage by stage, against each stage's flops.

For ``ReduNet1D()`` (the defaults, no layer) and ``ReduNet1D(n_layers=1)`` on the five UCR
sets of ``bench/ucr.py`` and MNIST-1D, one thread: the seconds of every stage of the fit
(``fit_stages_``: ``lift``, ``layer{i}/solve``, ``layer{i}/apply``, ``subspaces``) and of
predicting the test split, beside each stage's floating-point operations counted from the
shapes (below), and the time those flops would take at the machine's complex
matrix-product rate measured in the same run (a batched ``(F, C, m) @ (F, m, m)``
complex128 product of the set's own sizes: the product the fit's heaviest stages are
made of). ``ratio`` = seconds / (flops / rate): 1 is the rate of that product, 3 the
budget this script reports against.

Flop counts (complex multiply-add = 8 flops; a real FFT of N points ~ 2.5 N log2 N):

* lift: FFT of the input, the per-frequency product with the kernels' spectra
  (``F C C_in m``), the inverse FFT and the FFT of the lifted features
  (``2 x 2.5 m C T log2 T``);
* layer solve, when every class has fewer than ``C`` signals (low rank): ``V^H V`` (a
  rank-k update, ``4 F C m^2``)
  and the inverses of ``I + alpha V^H V`` and of each class's block (``~ 8 F m^3 / 3``
  each, Cholesky and inversion);
* layer apply: the step as one product ``V A`` (``8 F C m^2``) and ``A`` from the
  Gram's columns (``8 F m^2 (m + w)``); with larger classes (dense ``C x C`` operators,
  MNIST-1D) the class Grams (``4 F C^2 m``) and ``1 + k`` inverses (``8 F C^3 / 3`` each)
  to solve, ``1 + k`` products (``8 F C^2`` per signal each) to apply or predict;
* rank (the rank cross-validated in ``fit``): the Gram ``V^H V`` of every training signal
  (``4 F C m^2``), per fold (5) and class the eigenproblem of its training part
  (``~ 36 F (0.8 m_j)^3``), and every signal's coordinates in each class's eigenvectors
  from the Gram (``8 F m m_j^2`` per class);
* subspaces: each class's Gram ``4 F C m_j^2``, its eigenproblem (``~ 36 F m_j^3``), the
  bases ``8 F C m_j r_j``; a class of more than ``C`` signals: its ``C x C`` Gram
  (``4 F C^2 m_j``) and eigenproblem (``~ 36 F C^3``);
* predict: the lift of the test signals (as above), then per layer ``8 F (2 C m + 2 m^2)``
  per signal (low rank; dense: as applying), then the projections ``8 F C k r`` per signal.

Writes ``stages.json`` and ``stages.md``. Usage: ``python3 bench/stages.py [--quick]
[--threads 1] [--out DIR]``.
"""
import math
import sys

import numpy as np

import convredunet as crn
from convredunet.datasets import load_mnist1d, load_ucr

import harness

SETS = ("GunPoint", "ArrowHead", "ItalyPowerDemand", "BasicMotions", "ACSF1", "MNIST-1D")
BUDGET = 3.0


def _fft(n_points, length):
    return 2.5 * n_points * math.log2(max(2, length))


def flops(net, m, counts, n_test):
    """Flops of each fit stage and of the predict of ``n_test`` signals."""
    c_in, t = net.input_shape_[0], int(np.prod(net.signal_shape_))
    c = net.network_.n_channels
    f = t // net.signal_shape_[-1] * (net.signal_shape_[-1] // 2 + 1)
    lift = lambda n: _fft(n * c_in * t, t) + 8 * f * c * c_in * n + 2 * _fft(n * c * t, t)
    out = {"lift": lift(m)}
    predict = lift(n_test)
    k = len(counts)
    lowrank = counts.max() < c  # every class (and E) in the low-rank form
    for i, layer in enumerate(net.layers_):
        w = layer.solution.width
        if lowrank:
            out[f"layer{i}/solve"] = 4 * f * c * m * m + 8 * f * (m ** 3 + k * w ** 3) / 3
            out[f"layer{i}/apply"] = 8 * f * c * m * m + 8 * f * m * m * (m + w)
            predict += 8 * f * (2 * c * m + 2 * m * m) * n_test
        else:  # dense C x C operators: class Grams, one inverse each, (1 + k) products
            out[f"layer{i}/solve"] = 4 * f * c * c * m + 8 * f * (k + 1) * c ** 3 / 3
            out[f"layer{i}/apply"] = 8 * f * (k + 1) * c * c * m
            predict += 8 * f * (k + 1) * c * c * n_test
    if "rank" in net.fit_stages_ and counts.max() <= c:  # cross-validated: classes <= C
        out["rank"] = 4 * f * c * m * m + sum(5 * 36 * f * (0.8 * n) ** 3 + 8 * f * m * n * n
                                              for n in counts)
    elif "rank" in net.fit_stages_:  # larger classes: the C/8 rule, nothing computed
        out["rank"] = None
    r = net.subspaces_.shape[-1] if net.subspaces_ is not None else 0
    # A class of n <= C signals: its n x n Gram, eigenproblem and bases; a larger class:
    # its C x C Gram and eigenproblem.
    out["subspaces"] = sum(4 * f * c * n * min(n, c) + 36 * f * min(n, c) ** 3
                           + (8 * f * c * n * min(n, r) if n <= c else 0) for n in counts)
    predict += 8 * f * c * len(counts) * r * n_test
    return out, predict


def _x(ratio):
    return "no flops counted" if ratio is None else f"{ratio:.1f}x"


def product_rate(f, c, m):
    """Complex128 flops/s of ``(F, C, m) @ (F, m, m)``, this set's sizes (best of 3)."""
    rng = np.random.default_rng(0)
    m = max(m, 8)
    a = rng.standard_normal((f, c, m)) + 1j * rng.standard_normal((f, c, m))
    b = rng.standard_normal((f, m, m)) + 1j * rng.standard_normal((f, m, m))
    best = harness.time_call(lambda: a @ b, repeats=3, budget_s=3).best
    return 8 * f * c * m * m / best


def measure(name, params, quick):
    if name == "MNIST-1D":
        X, y, X_test, _ = load_mnist1d()
        if quick:
            X, y, X_test = X[:600], y[:600], X_test[:100]
    else:
        X, y, X_test, _ = load_ucr(name)
    net = crn.ReduNet1D(**params)
    net.fit(X, y)  # warm-up: plans, imports
    net.fit(X, y)
    with harness.Timer() as t:
        net.predict(X_test)
    counts = np.unique(y, return_counts=True)[1]
    stage_flops, predict_flops = flops(net, len(X), counts, len(X_test))
    t_len = int(np.prod(net.signal_shape_))
    f = t_len // net.signal_shape_[-1] * (net.signal_shape_[-1] // 2 + 1)
    rate = product_rate(f, net.network_.n_channels, min(len(X), 256))
    rows = []
    for stage, seconds in list(net.fit_stages_.items()) + [("predict", t.seconds)]:
        fl = predict_flops if stage == "predict" else stage_flops[stage]
        rows.append({"stage": stage, "seconds": seconds,
                     "gflop": None if fl is None else fl / 1e9,
                     "ratio": None if fl is None else seconds / (fl / rate)})
    return {"set": name, "params": params, "n_channels": net.network_.n_channels,
            "m": len(X), "T": t_len, "rate_gflops": rate / 1e9, "stages": rows}


def main(argv=None):
    parser = harness.arguments(__doc__.splitlines()[0],
                               quick_help="GunPoint and 600 MNIST-1D signals only")
    args = parser.parse_args(argv)
    out = harness.output_dir(args.out)
    sets = ("GunPoint", "MNIST-1D") if args.quick else SETS
    configs = ({}, {"n_layers": 1})
    results = []
    with harness.thread_setting(args.threads):
        machine = harness.machine_info()
        for name in sets:
            for params in configs:
                results.append(measure(name, params, args.quick))
                harness.log(True, f"{name} {params}: " + ", ".join(
                    f"{r['stage']} {r['seconds']:.3f} s ({_x(r['ratio'])})"
                    for r in results[-1]["stages"]))
    harness.write_json(out / "stages.json", {"protocol": __doc__, "machine": machine,
                                             "load": harness.load_average(),
                                             "results": results, "quick": args.quick})
    header = ["set", "network", "stage", "seconds", "GFLOP", "x the product rate"]
    body = []
    for res in results:
        label = "ReduNet1D()" if not res["params"] else "ReduNet1D(n_layers=1)"
        for r in res["stages"]:
            body.append([res["set"], label, r["stage"], f"{r['seconds']:.3f}",
                         "-" if r["gflop"] is None else f"{r['gflop']:.2f}",
                         "-" if r["ratio"] is None else f"{r['ratio']:.1f}"])
    worst = max((r for res in results for r in res["stages"] if r["ratio"] is not None),
                key=lambda r: r["ratio"])
    text = ["# Fit and predict, stage by stage", "",
            f"{machine['threads']} thread(s), {machine['cpu_model']}, {machine['date']}. "
            "Seconds of each stage "
            "against its flops at the complex matrix-product rate measured on each set's "
            f"own sizes (see `stages.py`); the budget is {BUDGET:g}x.", "",
            harness.markdown_table(header, body, n_left=3), "",
            f"Slowest against its flops: {worst['stage']} at {worst['ratio']:.1f}x."]
    harness.write_text(out / "stages.md", "\n".join(text))
    print(harness.text_table(header, body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
