"""How the ReduNet1D defaults were chosen: cross-validation inside the training splits only.

The sets: the five UCR/UEA sets of ``bench/ucr.py`` (bundled in ``aeon``), MNIST-1D, and
OSULeaf's training split (a contour set with imbalanced classes, 15 to 53 signals; it first
served as a held-out check of ``bench/ucr.py``, where the fixed rank C/8 scored 0.48 on its
test split and its training split showed why: added here, it is no longer held out).
Each candidate network is scored

* on a UCR set (OSULeaf included), by repeated stratified 5-fold cross-validation on its
  *training* split
  (2 repeats; each fold fits on four fifths and scores the fifth);
* on MNIST-1D, on the validation split of ``bench/protocol.py`` (3200 of the 4000
  training signals to fit, 800 to score).

No test split is read. The subspace rank ``n_components`` is scored from one fit per
fold: the bases hold each frequency's directions largest first, so the first ``r``
columns are the rank-``r`` subspace; "cv" is ``n_components="auto"``, the rank
cross-validated inside each fit on that fit's own training part (nested). The fit times (one thread, one fit on the whole
training split) are recorded beside MiniRocket's (``aeon``, numba compiled first), so
that the choice can respect the fit-time budget: at most ``FIT_RATIO`` times
MiniRocket's fit on every UCR set, and at most ``MNIST1D_FIT_S`` seconds on MNIST-1D.

Run: ``python3 bench/sweep_ucr.py [--quick] [--threads 1] [--out DIR]``; writes
``ucr_sweep.json`` (every candidate, every set) and ``ucr_sweep.md`` (the ranking and the
choice) to ``--out``. Needs ``aeon`` (``pip install -e '.[ucr]'``).
"""
import itertools
import sys
import time

import numpy as np
from sklearn.model_selection import RepeatedStratifiedKFold

import convredunet as crn
from convredunet import subspace
from convredunet.backend import resolve
from convredunet.datasets import load_mnist1d, load_ucr

import harness
import protocol

UCR_SETS = ("GunPoint", "ArrowHead", "ItalyPowerDemand", "BasicMotions", "ACSF1")
#: Validation sets scored for accuracy only (no fit-time budget): OSULeaf's training split,
#: six classes of 15 to 53 signals (imbalanced, unlike the others).
EXTRA_SETS = ("OSULeaf",)
#: The choice's fit-time budget: this many times MiniRocket's fit on every UCR set...
FIT_RATIO = 3.0
#: ... and at most this many seconds on MNIST-1D (4000 signals), one thread.
MNIST1D_FIT_S = 60.0
#: Fractions of the feature channels tried as n_components, and "cv": n_components="auto",
#: the rank cross-validated inside each fit (fold) on its own training part.
RANK_FRACTIONS = (0.125, 0.25, 0.5)
RANKS = RANK_FRACTIONS + ("cv",)

GRID = {
    "n_channels": (64, 128, 256, "auto"),
    "kernel_size": (7, 9),
    "dilations": (None, "auto"),
    "n_layers": (0, 1),
}
QUICK_GRID = {"n_channels": (64,), "kernel_size": (7,), "dilations": (None, "auto"),
              "n_layers": (0, 1)}
FIXED = {"eps2": 1.0, "nonlinearity": "abs", "lifting_bias": 0.25, "classifier": "subspace",
         "random_state": 0}


def candidates(grid):
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*grid.values())]


def _ranks(params, X):
    """``{fraction: r}``: the subspace ranks tried, for the channels ``params`` give ``X``."""
    channels = protocol.lifted_channels(params["n_channels"], X.shape[2:])
    return {f: max(1, int(channels * f)) for f in RANK_FRACTIONS}


def _scores(net, X_val, y_val, ranks):
    """Validation accuracy of ``net`` with the first ``r`` directions, per rank fraction."""
    backend = resolve("numpy").backend
    z = net.transform(X_val)
    if z.shape[1] != protocol.lifted_channels(net.n_channels, z.shape[2:]):
        raise RuntimeError(f"n_channels={net.n_channels!r} lifted {z.shape[1]} channels, not "
                           "protocol.lifted_channels'; update it to the library's rule")
    bases = net.subspaces_
    out = {}
    for fraction, r in ranks.items():
        d = subspace.subspace_distances(backend, z, bases[..., :r], net.signal_shape_)
        out[fraction] = float(np.mean(net.classes_[np.argmin(d, axis=1)] == y_val))
    return out


def evaluate(params, splits):
    """Mean validation accuracy per rank fraction over ``[(X_fit, y_fit, X_val, y_val)]``."""
    per_rank = {f: [] for f in RANKS}
    fit_s, chosen = [], []
    ranks = _ranks(params, splits[0][0])
    for X_fit, y_fit, X_val, y_val in splits:
        net = crn.ReduNet1D(**FIXED, **params, n_components=max(ranks.values()))
        with harness.Timer() as t:
            net.fit(X_fit, y_fit)
        fit_s.append(t.seconds)
        for f, acc in _scores(net, X_val, y_val, ranks).items():
            per_rank[f].append(acc)
        cv = crn.ReduNet1D(**FIXED, **params, n_components="auto").fit(X_fit, y_fit)
        per_rank["cv"].append(float(np.mean(cv.predict(X_val) == y_val)))
        chosen.append(int(cv.subspaces_.shape[-1]))
    return {"accuracy": {str(f): float(np.mean(v)) for f, v in per_rank.items()},
            "ranks": {**{str(f): r for f, r in ranks.items()}, "cv": chosen},
            "fold_fit_s": float(np.mean(fit_s))}


def ucr_splits(X, y, repeats=2, seed=0):
    cv = RepeatedStratifiedKFold(n_splits=5, n_repeats=repeats, random_state=seed)
    return [(X[a], y[a], X[b], y[b]) for a, b in cv.split(X.reshape(len(X), -1), y)]


def full_fit_s(params, X, y, rank=None):
    """One thread, the whole training split: fastest of up to 3 fits (after a warm-up)."""
    if rank == "cv":
        net = crn.ReduNet1D(**FIXED, **params, n_components="auto")
    else:
        net = crn.ReduNet1D(**FIXED, **params, n_components=max(_ranks(params, X).values()))
    return harness.time_call(lambda: net.fit(X, y), repeats=3, budget_s=3.0).best


def minirocket_fit_s(X, y):
    from aeon.classification.convolution_based import MiniRocketClassifier

    def fit():
        return MiniRocketClassifier(random_state=0, n_jobs=1).fit(X, y)
    return harness.time_call(fit, repeats=3, budget_s=5).best


def choose(records, sets, minirocket):
    """The best mean accuracy over ``sets`` within the fit-time budget.

    Ties go to the fewer subspace directions (a smaller model, a faster predict),
    then to the faster fit.
    """
    rows = []
    for rec in records:
        for f in RANKS:
            if any(s not in rec["sets"] or str(f) not in rec["sets"][s]["accuracy"]
                   for s in sets):
                continue  # a candidate of an earlier run that did not try it
            accs = [rec["sets"][s]["accuracy"][str(f)] for s in sets]
            fit = {s: rec["sets"][s]["fit_cv_s" if f == "cv" else "fit_s"] for s in sets}
            ratios = [fit[s] / minirocket[s] for s in sets if s in minirocket]
            within = all(x <= FIT_RATIO for x in ratios) and \
                fit.get("MNIST-1D", 0.0) <= MNIST1D_FIT_S
            rows.append({"params": {**rec["params"], "rank_fraction": f},
                         "ranks": {s: rec["sets"][s]["ranks"][str(f)] for s in sets},
                         "mean": float(np.mean(accs)),
                         "accuracies": dict(zip(sets, accs)),
                         "worst_fit_ratio": max(ratios) if ratios else None,
                         "within_budget": within,
                         "total_fit_s": sum(fit.values())})
    # Ties: the fixed fraction with fewer directions, then "cv" (it costs a fit's CV).
    order = {f: i for i, f in enumerate(RANKS)}
    rows.sort(key=lambda row: (-round(row["mean"], 9), order[row["params"]["rank_fraction"]],
                               row["total_fit_s"]))
    chosen = next((row for row in rows if row["within_budget"]), None)
    return rows, chosen


def main(argv=None):
    parser = harness.arguments(__doc__.splitlines()[0],
                               quick_help="two UCR sets, 600 MNIST-1D signals, 64 channels, "
                                          "one CV repeat")
    parser.add_argument("--complete", default=None,
                        type=lambda text: __import__("json").loads(text),
                        help="with --extend: JSON list of earlier candidates (parameter dicts) "
                             "to complete: the sets and rank choices they lack")
    parser.add_argument("--retime", default=None,
                        help="a previous ucr_sweep.json: keep its accuracies (nothing is "
                             "cross-validated again), measure MiniRocket's and every "
                             "candidate's fit times again, choose again")
    parser.add_argument("--extend", default=None,
                        help="a previous ucr_sweep.json: keep its candidates, evaluate the "
                             "grid's others (its MiniRocket times are kept too)")
    args = parser.parse_args(argv)
    out = harness.output_dir(args.out)
    grid = QUICK_GRID if args.quick else GRID
    sets = UCR_SETS[:2] if args.quick else UCR_SETS
    extra = () if args.quick else EXTRA_SETS
    data = {name: load_ucr(name)[:2] for name in sets + extra}
    X, y, _, _ = load_mnist1d()
    if args.quick:
        X, y = X[:600], y[:600]
    data["MNIST-1D"] = (X, y)
    records, previous = [], None
    if args.extend or args.retime:
        import json

        with open(args.extend or args.retime) as handle:
            previous = json.load(handle)
        records = list(previous["records"])
    done = [rec["params"] for rec in records]
    with harness.thread_setting(args.threads):
        machine = harness.machine_info()
        minirocket = previous["minirocket_fit_s"] if previous and not args.retime else \
            {name: minirocket_fit_s(*data[name]) for name in sets}
        harness.log(True, f"MiniRocket fit (s): {minirocket}")
        splits = {name: ucr_splits(*data[name], repeats=1 if args.quick else 2)
                  for name in sets + extra}
        X_fit, y_fit, X_val, y_val = protocol.validation_split(*data["MNIST-1D"])
        splits["MNIST-1D"] = [(X_fit, y_fit, X_val, y_val)]
        all_sets = list(sets) + ["MNIST-1D"] + list(extra)
        if args.retime:
            for rec in records:
                for name, result in rec["sets"].items():
                    result["fit_s"] = full_fit_s(rec["params"], *data[name])
                    result["fit_cv_s"] = full_fit_s(rec["params"], *data[name], "cv")
                harness.log(True, f"{rec['params']}: fits timed again")
        todo = [rec for rec in records if args.complete and rec["params"] in args.complete]
        for params in ([] if args.retime else candidates(grid)):
            if params not in done:
                records.append({"params": params, "sets": {}})
                todo.append(records[-1])
        for rec in todo:
            params = rec["params"]
            start = time.perf_counter()
            for name in all_sets:
                have = rec["sets"].get(name)
                if have is not None and "cv" in have["accuracy"]:
                    continue
                result = evaluate(params, splits[name])
                result["fit_s"] = full_fit_s(params, *data[name]) if have is None \
                    else have["fit_s"]
                result["fit_cv_s"] = full_fit_s(params, *data[name], "cv")
                rec["sets"][name] = result
            means = {f: np.mean([rec["sets"][s]["accuracy"][str(f)] for s in rec["sets"]])
                     for f in RANKS}
            best = max(means, key=means.get)
            harness.log(True, f"{params}: rank {best} mean {means[best]:.3f} "
                              f"({time.perf_counter() - start:.0f} s)")
    rows, chosen = choose(records, all_sets, minirocket)
    harness.write_json(out / "ucr_sweep.json", {
        "protocol": __doc__, "machine": machine, "minirocket_fit_s": minirocket,
        "fixed": FIXED, "fit_ratio_budget": FIT_RATIO, "mnist1d_fit_budget_s": MNIST1D_FIT_S,
        "records": records, "ranking": rows, "chosen": chosen, "quick": args.quick})
    header = ["n_channels", "kernel", "dilations", "layers", "rank / C"] + all_sets + \
        ["mean", "worst fit / MiniRocket", "within budget"]
    table = [[str(r["params"]["n_channels"]), str(r["params"]["kernel_size"]),
              str(r["params"]["dilations"]), str(r["params"]["n_layers"]),
              str(r["params"]["rank_fraction"])]
             + [f"{r['accuracies'][s]:.3f}" for s in all_sets]
             + [f"{r['mean']:.3f}",
                "" if r["worst_fit_ratio"] is None else f"{r['worst_fit_ratio']:.1f}x",
                "yes" if r["within_budget"] else "no"] for r in rows[:25]]
    text = ["# ReduNet1D defaults: cross-validation inside the training splits", "",
            "Validation accuracy (UCR sets: 2 x stratified 5-fold CV on the training split; "
            "MNIST-1D: 800 of its 4000 training signals held out), the 25 best candidates; "
            f"fit times measured on the whole training splits, one thread; budget: at most "
            f"{FIT_RATIO:g}x MiniRocket's fit on every UCR set and {MNIST1D_FIT_S:g} s on "
            "MNIST-1D. No test split was read.", "",
            harness.markdown_table(header, table, n_left=5), "",
            f"Chosen: {chosen['params'] if chosen else 'none within the budget'}"]
    harness.write_text(out / "ucr_sweep.md", "\n".join(text))
    print(harness.text_table(header, table))
    print("chosen:", chosen["params"] if chosen else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
