"""Validation sweep of ReduNet1D on MNIST-1D: every choice is made inside the training set.

Protocol (``bench/protocol.py``): the 4000 training signals of
:func:`convredunet.datasets.load_mnist1d` are split, stratified with seed 0, into
3200 signals to fit and 800 to validate. **The test set is never loaded here**; the
accuracy benchmark (``bench/accuracy.py``) measures it once, for the chosen
configuration. One fit scores every depth and both classifiers at once (a network of
``L`` layers is the first ``L`` layers of a deeper one): the membership of each layer,
and the nearest-subspace classifier on the features after each layer with
``n_components`` in :data:`protocol.RANKS`.

Stages (each centred on the best validation point so far):

1. ``lifting``  channels, nonlinearity, kernel size, lifting bias (3 layers, eps2 0.1);
2. ``dynamics`` eps2 at the best lifting (eta and the construction membership only
   matter for deeper networks, which the validation scores below show do not help);
3. ``seeds``    the best point again with lifting seeds 1 and 2 (and the best one whose
   fit is estimated within the budget, if it is another);
4. ``wide``     one layer (the depth the earlier stages chose) at 128, 192 and 256
   channels, lifting seeds 0-2, scoring subspace ranks up to 128 (a wider lifting
   costs more per layer; one layer is all the budget allows); then, around the best
   width within the budget, kernel size, lifting bias and eps2 again (seed 0; seeds
   1 and 2 for a point that beats it); the lifting bias again around the new best;
   and 384 channels at the best point (seeds 0-2, at any cost).

The choice (:func:`choose`): the highest validation accuracy averaged over lifting
seeds 0-2, among the choices whose fit on the 4000 training signals is estimated at
60 s or less on this machine (the fit time of the point, per layer, times 4000/3200),
and the best at any cost. Each point is appended to ``mnist1d_sweep.json`` in ``--out``
when done (a rerun skips the points it holds). ``--quick``: three lifting seeds of one
small point (16 channels, one layer) on 1000 training signals, in
``mnist1d_sweep_quick.json``.

Usage::

    python3 bench/sweep_mnist1d.py [--budget-min 40] [--threads 1] [--out DIR] [--quick]
                                   [--table-only]
"""
import datetime
import json
import sys
import time
from pathlib import Path

import numpy as np

from convredunet import ReduNet1D
from convredunet.datasets import load_mnist1d

import harness  # bench/harness.py: this script's folder is first on sys.path
import protocol

RECORD = "mnist1d_sweep.json"
QUICK_RECORD = "mnist1d_sweep_quick.json"
FIT_BUDGET_S = 60.0
#: Subspace ranks scored (directions per frequency; those below the channels).
RANKS = (4, 8, 16, 32, 48, 64, 96, 128)
#: Scale from the 3200 fitting signals to the 4000 of the full training set.
FULL_SCALE = 4000 / 3200

NET_KEYS = ("n_layers", "eps2", "eta", "lmbda", "n_channels", "kernel_size",
            "nonlinearity", "lifting_bias", "membership", "random_state", "dtype")
BASE = {"n_layers": 3, "eps2": 0.1, "eta": 0.5, "lmbda": 500.0, "n_channels": 32,
        "kernel_size": 7, "nonlinearity": "abs", "membership": "estimated",
        "random_state": 0, "dtype": "float64", "lifting_bias": 1.0}


def point_key(params):
    """A canonical string naming a point (for resuming)."""
    full = {**BASE, **params}
    return json.dumps({k: full[k] for k in sorted(full)}, sort_keys=True)


def evaluate(params, split):
    """Fit one point on the fitting part and score every depth on the validation part."""
    full = {**BASE, **params}
    record = protocol.layer_scores(lambda: ReduNet1D(**{k: full[k] for k in NET_KEYS}),
                                   *split, ranks=RANKS, train=False)
    record["params"] = full
    return record


class Sweep:
    """Runs points under a time budget, persisting every result."""

    def __init__(self, out, budget_s, split, threads):
        self.out = Path(out)
        self.budget_s = budget_s
        self.split = split
        self.threads = threads
        self.start = time.perf_counter()
        self.records = json.loads(self.out.read_text()) if self.out.is_file() else []
        self.done = {point_key(r["params"]): r for r in self.records}

    def run(self, stage, points):
        for params in points:
            key = point_key(params)
            if key in self.done:
                continue
            if time.perf_counter() - self.start > self.budget_s:
                print(f"[budget spent: skipping the rest of stage {stage}]", flush=True)
                return
            record = evaluate(params, self.split)
            record.update(stage=stage, threads=self.threads,
                          date=datetime.datetime.now().isoformat(timespec="seconds"))
            self.records.append(record)
            self.done[key] = record
            harness.output_dir(self.out.parent)
            harness.write_json(self.out, self.records)
            print(_row(record), flush=True)

    def best(self, stages, seed=0):
        """Parameters of the best point (validation) of the given stages."""
        ok = [r for r in self.records if r.get("stage") in stages
              and r["params"]["random_state"] == seed]
        return max(ok, key=lambda r: protocol.best_choice(r)[0])["params"]


def _vary(center, **changes):
    return [{**center, key: value} for key, values in changes.items() for value in values
            if center.get(key) != value]


def stages(sweep):
    sweep.run("lifting", [BASE] + _vary(BASE, n_channels=[64, 128], nonlinearity=["relu"],
                                        kernel_size=[5, 9], lifting_bias=[None, 2.0]))
    center = sweep.best(["lifting"])
    sweep.run("dynamics", _vary(center, eps2=[1e-2, 1.0]))
    ranked = sorted((r for r in sweep.records if r["params"]["random_state"] == 0),
                    key=lambda r: -protocol.best_choice(r)[0])
    # the best point, and the best whose fit stays within the budget if it is another
    within = [r for r in ranked if _estimated_full_fit_s(r, 1) <= FIT_BUDGET_S]
    for record in {id(r): r for r in ranked[:1] + within[:1]}.values():
        sweep.run("seeds", _vary(record["params"], random_state=[1, 2]))
    center = {**sweep.best(["lifting", "dynamics"]), "n_layers": 1}
    sweep.run("wide", [{**center, "n_channels": c, "random_state": s}
                       for c in (128, 192, 256) for s in (0, 1, 2)])
    # the lifting again around the best width within the budget (seed 0), the seeds of
    # any point that beats it, and one wider lifting (at any cost)
    best = choose(sweep.records)["within_budget"]["params"]
    center = {**BASE, **{k: v for k, v in best.items() if k in NET_KEYS}, "random_state": 0}
    sweep.run("wide", _vary(center, kernel_size=[5, 9], lifting_bias=[0.5, 2.0], eps2=[1.0]))
    score = protocol.best_choice(sweep.done[point_key(center)])[0]
    for record in [r for r in sweep.records if r.get("stage") == "wide"
                   and r["params"]["random_state"] == 0
                   and protocol.best_choice(r)[0] > score]:
        sweep.run("wide", _vary(record["params"], random_state=[1, 2]))
    # the lifting bias once more around the new best (seed 0; seeds 1 and 2 if it beats
    # it), then the wider lifting at the best point
    best = choose(sweep.records)["within_budget"]["params"]
    center = {**BASE, **{k: v for k, v in best.items() if k in NET_KEYS}, "random_state": 0}
    score = protocol.best_choice(sweep.done[point_key(center)])[0]
    sweep.run("wide", _vary(center, lifting_bias=[0.25, 0.75]))
    for record in [r for r in sweep.records if r.get("stage") == "wide"
                   and r["params"]["random_state"] == 0
                   and r["params"]["lifting_bias"] in (0.25, 0.75)
                   and protocol.best_choice(r)[0] > score]:
        sweep.run("wide", _vary(record["params"], random_state=[1, 2]))
    best = choose(sweep.records)["within_budget"]["params"]
    center = {**BASE, **{k: v for k, v in best.items() if k in NET_KEYS}}
    sweep.run("wide", [{**center, "n_channels": 384, "random_state": s} for s in (0, 1, 2)])


def quick_stages(sweep):
    """The smoke run: one small point at lifting seeds 0-2 (enough for :func:`choose`)."""
    sweep.run("quick", [{"n_layers": 1, "n_channels": 16, "random_state": s}
                        for s in (0, 1, 2)])


def _estimated_full_fit_s(record, n_layers):
    return record["fit_s"] * max(n_layers, 1) / record["params"]["n_layers"] * FULL_SCALE


def choose(records, budget_s=FIT_BUDGET_S):
    """Mean validation accuracy over lifting seeds of every choice; the best within budget.

    Returns
    -------
    dict
        ``within_budget`` and ``any_cost``: each the estimator parameters, the mean and
        per-seed validation accuracies and the estimated fit seconds; ``table``: every
        choice available for all three seeds, best first.
    """
    groups = {}
    for r in records:
        params = {k: v for k, v in r["params"].items() if k not in ("random_state",
                                                                      "n_layers")}
        groups.setdefault(json.dumps(params, sort_keys=True), []).append(r)
    rows = []
    for key, group in groups.items():
        if not {0, 1, 2} <= {r["params"]["random_state"] for r in group}:
            continue
        # Records of one seed at different depths score the same shallow choices (a
        # network of L layers is the first L layers of a deeper one): merge them.
        per_seed = {0: {}, 1: {}, 2: {}}
        for r in group:
            if r["params"]["random_state"] in per_seed:
                per_seed[r["params"]["random_state"]].update(
                    {c[1:]: c[0] for c in protocol.choices(r)})
        for choice in per_seed[0]:
            if not all(choice in per_seed[s] for s in (1, 2)):
                continue
            accs = [per_seed[s][choice] for s in (0, 1, 2)]
            n_layers, classifier, n_components = choice
            fit_s = max(_estimated_full_fit_s(r, n_layers) for r in group
                        if r["params"]["n_layers"] >= n_layers)
            params = {**json.loads(key), "n_layers": n_layers, "classifier": classifier}
            if n_components is not None:
                params["n_components"] = n_components
            rows.append({"params": params, "mean": float(np.mean(accs)),
                         "per_seed": accs, "estimated_fit_s": round(fit_s, 1)})
    rows.sort(key=lambda row: (-row["mean"], row["params"]["n_layers"]))
    if not rows:
        return {"within_budget": None, "any_cost": None, "table": []}
    within = [row for row in rows if row["estimated_fit_s"] <= budget_s]
    return {"within_budget": within[0] if within else None, "any_cost": rows[0],
            "table": rows}


def _row(r):
    acc, n_layers, classifier, rank = protocol.best_choice(r)
    p = r["params"]
    bias = "-" if p["lifting_bias"] is None else f"{p['lifting_bias']:g}"
    what = f"{classifier}" + (f" r={rank}" if rank else "")
    return (f"{r.get('stage', ''):9s} C={p['n_channels']:<3} k={p['kernel_size']} "
            f"{p['nonlinearity']:4s} bias={bias:3s} eps2={p['eps2']:<6g} eta={p['eta']:<4g} "
            f"{p['membership'][:3]} seed={p['random_state']} fit {r['fit_s']:6.1f} s | "
            f"best val {acc:.3f} at L={n_layers} {what}")


def main(argv=None):
    parser = harness.arguments(__doc__.splitlines()[0],
                               quick_help="one small point at seeds 0-2 on 1000 training "
                                          f"signals (written to {QUICK_RECORD})")
    parser.add_argument("--budget-min", type=float, default=40.0,
                        help="stop starting new points after this many minutes")
    parser.add_argument("--table-only", action="store_true",
                        help="print the choice from the record in --out and exit")
    args = parser.parse_args(argv)
    out = Path(args.out) / (QUICK_RECORD if args.quick else RECORD)
    if not args.table_only:
        X, y, _, _ = load_mnist1d()  # the test part is not used
        if args.quick:
            X, y = X[:1000], y[:1000]
        split = protocol.validation_split(X, y, 0.2, seed=0)
        print(f"MNIST-1D validation sweep: fit {len(split[1])}, validate {len(split[3])}; "
              f"load average {harness.load_average()} -> {out}", flush=True)
        sweep = Sweep(out, args.budget_min * 60.0, split, args.threads)
        try:
            with harness.thread_setting(args.threads):
                (quick_stages if args.quick else stages)(sweep)
        except KeyboardInterrupt:
            print("[interrupted]")
        records = sweep.records
    else:
        records = json.loads(out.read_text())
    chosen = choose(records)
    for row in chosen["table"][:15]:
        print(f"{row['mean']:.4f} {row['per_seed']} fit~{row['estimated_fit_s']} s "
              f"{row['params']}")
    print("within budget:", chosen["within_budget"])
    print("any cost:", chosen["any_cost"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
