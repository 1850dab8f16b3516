"""Real signals side by side: ReduNet1D() against MiniRocket and a 1-NN, in one process.

The sets: five UCR/UEA classification sets that ship inside ``aeon`` (GunPoint, ArrowHead,
ItalyPowerDemand, BasicMotions, ACSF1: their default train/test splits) and MNIST-1D.
OSULeaf, a contour set of 200 training signals of length 427 in 6 classes, is reported
beside them (``--no-extra`` skips it); its training split, like the five sets' and
MNIST-1D's, is part of the cross-validation that chose the defaults, its test split is not; it is
left out of the five sets' mean.

For every set, in this one process and on one thread (``--threads``):

* ``ReduNet1D()`` with its defaults, for lifting seeds 0, 1, 2 (``random_state``): test
  accuracy (mean and range over the seeds), fit time and predict time of the test split;
* ``MiniRocketClassifier(random_state=0)`` of ``aeon`` (random dilated kernels + ridge,
  the field's fast standard), its numba code compiled on a small fit before any timing:
  test accuracy, fit and predict times;
* a 1-NN with Euclidean distance on the raw signals (scikit-learn): test accuracy;
* the ratios of ReduNet's fit and predict times to MiniRocket's (each the fastest of its
  timed calls: the three seed fits, the three MiniRocket fits);
* the invariance check: the seed-0 network's prediction of every test signal under every
  cyclic shift of that signal, against its unshifted prediction (the number that
  changed must be 0). On sets where every shift of every test signal would take more
  than ``--shift-budget`` predictions, the first test signals up to that budget are
  checked under every shift (the count checked is recorded).

Defaults were chosen by ``bench/sweep_ucr.py`` on the training splits only; the test
splits are read here, once, to report. Writes ``ucr.json`` (with the machine and its
load), ``ucr.md`` and ``ucr.png`` (accuracy against MiniRocket per set; fit time against
``m T``) to ``--out`` (default ``bench/results/``). Needs ``aeon``
(``pip install -e '.[ucr]'``).

Usage: ``python3 bench/ucr.py [--quick] [--threads 1] [--out DIR]``.
"""
import sys

import numpy as np
from sklearn.neighbors import KNeighborsClassifier

import convredunet as crn
from convredunet.datasets import cyclic_shifts, load_mnist1d, load_ucr

import harness

SETS = ("GunPoint", "ArrowHead", "ItalyPowerDemand", "BasicMotions", "ACSF1")
EXTRA_SETS = ("OSULeaf",)
SEEDS = (0, 1, 2)
#: The targets each set is checked against, reported (not asserted).
TARGETS = {"accuracy_gap": 0.05, "mean_gap": 0.03, "fit_ratio": 3.0}


def load(name):
    if name == "MNIST-1D":
        return load_mnist1d()
    return load_ucr(name)


def _minirocket():
    from aeon.classification.convolution_based import MiniRocketClassifier

    return MiniRocketClassifier(random_state=0, n_jobs=1)


def warm_up_minirocket():
    """Compile MiniRocket's numba code (univariate and multivariate) before any timing."""
    rng = np.random.default_rng(0)
    for channels in (1, 3):
        X = rng.standard_normal((20, channels, 30))
        _minirocket().fit(X, np.arange(20) % 2).predict(X)


def invariance(net, X_test, budget):
    """Signals checked and predictions changed, every cyclic shift of each checked signal."""
    T = X_test.shape[-1]
    n = max(1, min(len(X_test), budget // T))
    want = net.predict(X_test[:n])
    step = max(1, 2_000 // n)  # shifts per predict call
    changed = 0
    for start in range(0, T, step):
        shifts = list(range(start, min(T, start + step)))
        shifted = cyclic_shifts(X_test[:n], 1, shifts)  # (s, n, C, T)
        got = net.predict(shifted.reshape((-1,) + X_test.shape[1:]))
        changed += int(np.sum(got != np.tile(want, len(shifts))))
    return {"signals": n, "shifts": T, "predictions": n * T, "changed": changed}


def measure(name, quick, shift_budget, seeds):
    X, y, X_test, y_test = load(name)
    if quick and name == "MNIST-1D":
        X, y, X_test, y_test = X[:800], y[:800], X_test[:200], y_test[:200]
    if X.ndim == 2:
        X, X_test = X[:, None], X_test[:, None]
    row = {"set": name, "train_shape": list(X.shape), "test_shape": list(X_test.shape),
           "n_classes": int(len(np.unique(y)))}
    # ReduNet1D(), one fit per seed (a warm-up fit first: FFT plans, imports).
    crn.ReduNet1D(random_state=0).fit(X, y)
    accs, fits, preds, nets = [], [], [], []
    for seed in seeds:
        net = crn.ReduNet1D(random_state=seed)
        with harness.Timer() as t_fit:
            net.fit(X, y)
        with harness.Timer() as t_pred:
            p = net.predict(X_test)
        accs.append(float(np.mean(p == y_test)))
        fits.append(t_fit.seconds)
        preds.append(t_pred.seconds)
        nets.append(net)
    row["redunet"] = {"accuracy": accs, "accuracy_mean": float(np.mean(accs)),
                      "fit_s": fits, "predict_s": preds,
                      "n_channels": nets[0].network_.n_channels,
                      "dilations": None if nets[0].lifting_.dilations is None else
                      sorted(set(nets[0].lifting_.dilations.tolist())),
                      "subspace_rank": int(nets[0].subspaces_.shape[-1]),
                      "rank_scores": {str(r): a for r, a in nets[0].rank_scores_.items()},
                      "fit_stages": nets[0].fit_stages_}
    # MiniRocket: three timed fits, then the predict of the last.
    mr_fits, mr = [], None
    for _ in range(3):
        mr = _minirocket()
        with harness.Timer() as t:
            mr.fit(X, y)
        mr_fits.append(t.seconds)
    mr_pred = harness.time_call(lambda: mr.predict(X_test), repeats=2).times
    row["minirocket"] = {"accuracy": float(np.mean(mr.predict(X_test) == y_test)),
                         "fit_s": mr_fits, "predict_s": mr_pred}
    knn = KNeighborsClassifier(1).fit(X.reshape(len(X), -1), y)
    row["nn1_ed"] = {"accuracy": float(np.mean(knn.predict(X_test.reshape(len(X_test), -1))
                                               == y_test))}
    row["fit_ratio"] = min(fits) / min(mr_fits)
    row["predict_ratio"] = min(preds) / min(mr_pred)
    row["invariance"] = invariance(nets[0], X_test, shift_budget)
    row["m_T"] = int(X.shape[0] * X.shape[-1])
    return row


def targets(rows):
    """Each target: met or missed, with the numbers."""
    suite = [r for r in rows if r["set"] in SETS]
    out = {}
    for r in suite:
        gap = r["minirocket"]["accuracy"] - r["redunet"]["accuracy_mean"]
        out[r["set"]] = {
            "accuracy_vs_minirocket": {"gap": gap, "met": gap <= TARGETS["accuracy_gap"]},
            "accuracy_vs_1nn": {"margin": r["redunet"]["accuracy_mean"] - r["nn1_ed"]["accuracy"],
                                "met": r["redunet"]["accuracy_mean"] >= r["nn1_ed"]["accuracy"]},
            "fit_ratio": {"ratio": r["fit_ratio"], "met": r["fit_ratio"] <= TARGETS["fit_ratio"]},
            "invariance": {"changed": r["invariance"]["changed"],
                           "met": r["invariance"]["changed"] == 0},
        }
    if suite:
        ours = float(np.mean([r["redunet"]["accuracy_mean"] for r in suite]))
        theirs = float(np.mean([r["minirocket"]["accuracy"] for r in suite]))
        out["mean"] = {"redunet": ours, "minirocket": theirs,
                       "met": ours >= theirs - TARGETS["mean_gap"]}
    return out


def table(rows):
    header = ["set (train shape)", "ReduNet1D()", "fit", "predict", "MiniRocket", "fit",
              "predict", "fit ratio", "predict ratio", "1-NN ED", "shift changes"]
    out = []
    for r in rows:
        red, mr = r["redunet"], r["minirocket"]
        inv = r["invariance"]
        out.append([
            f"{r['set']} {tuple(r['train_shape'])}",
            f"{red['accuracy_mean']:.3f} [{min(red['accuracy']):.3f}-{max(red['accuracy']):.3f}]",
            f"{min(red['fit_s']):.2f} s", f"{min(red['predict_s']):.2f} s",
            f"{mr['accuracy']:.3f}", f"{min(mr['fit_s']):.2f} s",
            f"{min(mr['predict_s']):.2f} s", f"{r['fit_ratio']:.1f}x",
            f"{r['predict_ratio']:.1f}x", f"{r['nn1_ed']['accuracy']:.3f}",
            f"{inv['changed']} of {inv['predictions']:,}"])
    return header, out


def plot(rows, path):
    fig = harness.figure(11, 4.2)
    ax1, ax2 = fig.subplots(1, 2)
    names = [r["set"] for r in rows]
    x = np.arange(len(rows))
    red = [r["redunet"]["accuracy_mean"] for r in rows]
    lo = [r["redunet"]["accuracy_mean"] - min(r["redunet"]["accuracy"]) for r in rows]
    hi = [max(r["redunet"]["accuracy"]) - r["redunet"]["accuracy_mean"] for r in rows]
    ax1.bar(x - 0.27, red, 0.27, yerr=[lo, hi], label="ReduNet1D() (seeds 0-2)")
    ax1.bar(x, [r["minirocket"]["accuracy"] for r in rows], 0.27, label="MiniRocket")
    ax1.bar(x + 0.27, [r["nn1_ed"]["accuracy"] for r in rows], 0.27, label="1-NN ED")
    ax1.set_xticks(x, names, rotation=30, ha="right")
    ax1.set_ylim(0.3, 1.02)
    ax1.set_ylabel("test accuracy")
    ax1.legend(fontsize=8, loc="lower left")
    ax1.set_title("test accuracy per set")
    for r in rows:
        ax2.scatter(r["m_T"], min(r["redunet"]["fit_s"]), color="C0")
        ax2.scatter(r["m_T"], min(r["minirocket"]["fit_s"]), color="C1", marker="s")
        ax2.annotate(r["set"], (r["m_T"], min(r["redunet"]["fit_s"])), fontsize=7,
                     xytext=(3, 3), textcoords="offset points")
    ax2.scatter([], [], color="C0", label="ReduNet1D() fit")
    ax2.scatter([], [], color="C1", marker="s", label="MiniRocket fit")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("training samples x length (m T)")
    ax2.set_ylabel("fit time (s), one thread")
    ax2.legend(fontsize=8)
    ax2.set_title("fit time against the data's size")
    harness.save_figure(fig, path)


def main(argv=None):
    parser = harness.arguments(__doc__.splitlines()[0],
                               quick_help="two UCR sets and MNIST-1D, one seed, 2,000 shifted "
                                          "predictions per set")
    parser.add_argument("--shift-budget", type=int, default=40_000,
                        help="most shifted predictions per set for the invariance check")
    parser.add_argument("--no-extra", action="store_true",
                        help="skip the sixth set (OSULeaf)")
    args = parser.parse_args(argv)
    out = harness.output_dir(args.out)
    names = list(SETS[:2] if args.quick else SETS) + ["MNIST-1D"]
    if not args.no_extra and not args.quick:
        names += list(EXTRA_SETS)
    seeds = SEEDS[:1] if args.quick else SEEDS
    rows = []
    with harness.thread_setting(args.threads):
        machine = harness.machine_info()
        load_before = harness.load_average()
        peak = harness.matmul_peak(args.threads)
        warm_up_minirocket()
        for name in names:
            rows.append(measure(name, args.quick, 2_000 if args.quick else args.shift_budget,
                                seeds))
            r = rows[-1]
            harness.log(True, f"{name}: ReduNet {r['redunet']['accuracy_mean']:.3f} "
                              f"fit {min(r['redunet']['fit_s']):.2f} s | MiniRocket "
                              f"{r['minirocket']['accuracy']:.3f} fit "
                              f"{min(r['minirocket']['fit_s']):.2f} s | 1-NN "
                              f"{r['nn1_ed']['accuracy']:.3f} | shifts changed "
                              f"{r['invariance']['changed']}")
    result = {"protocol": __doc__, "machine": machine, "load_before": load_before,
              "load_after": harness.load_average(), "matmul_peak_flops": peak,
              "defaults": crn.ReduNet1D().get_params(), "rows": rows,
              "targets": targets(rows), "quick": args.quick}
    harness.write_json(out / "ucr.json", result)
    header, body = table(rows)
    t = result["targets"]
    lines = ["# Real signals: ReduNet1D() beside MiniRocket and 1-NN", "",
             f"One process, {args.threads} thread(s), {machine['cpu_model']}, "
             f"{machine['date']}; load {load_before} before, {result['load_after']} after. "
             "Accuracy on the test splits (ReduNet: mean [min-max] over lifting seeds 0-2); "
             "times are the fastest of the timed calls; ratios are ReduNet over MiniRocket. "
             "Shift changes: predictions that changed under every cyclic shift of the test "
             "signals checked (see `ucr.json` for how many).", "",
             harness.markdown_table(header, body), ""]
    if "mean" in t:
        lines.append(f"Mean over the five sets: ReduNet1D() {t['mean']['redunet']:.3f}, "
                     f"MiniRocket {t['mean']['minirocket']:.3f}.")
    harness.write_text(out / "ucr.md", "\n".join(lines))
    plot(rows, out / "ucr.png")
    print(harness.text_table(header, body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
