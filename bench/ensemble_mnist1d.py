"""Validation probe: ensembles of random liftings on MNIST-1D, against one wider lifting.

Same protocol as ``bench/sweep_mnist1d.py`` (3200 fit / 800 validate inside the training
set, stratified seed 0; **the test set is never loaded**). Each member is a
``ReduNet1D`` with its own lifting seed; an ensemble of ``n`` members averages their
squared subspace distances (each member's features have unit norm, so the distances lie
in [0, 1] and are comparable) and predicts the nearest class. The ensembles of lifting
seeds ``{s, s+3, s+6, ...}`` for ``s`` in 0, 1, 2 give the spread (disjoint seeds, so the
three estimates are distinct networks). Fit seconds are the members' sum (one thread),
scaled to the 4000 training signals. Each run appends its rows to ``mnist1d_ensemble.json``
in ``--out`` (``mnist1d_ensemble_quick.json`` for ``--quick``: 600 training signals, 16
channels, one member, rank 4).

Usage::

    python3 bench/ensemble_mnist1d.py [--channels 128] [--members 3] [--ranks 32,48,64]
                                      [--quick] [--out DIR] [--threads 1]
"""
import datetime
import json
import sys

import numpy as np

from convredunet import ReduNet1D
from convredunet.backend import NumpyBackend
from convredunet.datasets import load_mnist1d
from convredunet.subspace import subspace_distances

import harness
import protocol
from sweep_mnist1d import FULL_SCALE

BACKEND = NumpyBackend()


def member_distances(params, seed, split, ranks):
    """Validation distances ``{rank: (n_val, k)}`` of one member and its fit seconds.

    One fit keeps the largest rank; the leading ``r`` directions of its bases are the
    rank-``r`` subspaces (eigenvectors sorted, largest first).
    """
    X_fit, y_fit, X_val, _ = split
    net = ReduNet1D(**params, n_components=max(ranks), random_state=seed)
    with harness.Timer() as fit:
        net.fit(X_fit, y_fit)
    features = net.transform(X_val)
    out = {r: subspace_distances(BACKEND, features, net.subspaces_[..., :r],
                                 net.signal_shape_) for r in ranks}
    return out, fit.seconds


def main(argv=None):
    parser = harness.arguments(__doc__.splitlines()[0],
                               quick_help="600 training signals, 16 channels, one member, "
                                          "rank 4 (written to mnist1d_ensemble_quick.json)")
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--ranks", default="32,48")
    args = parser.parse_args(argv)
    if args.quick:
        args.channels, args.members, args.ranks = 16, 1, "4"
    ranks = [int(r) for r in args.ranks.split(",")]
    params = {"n_layers": 1, "n_channels": args.channels}
    X, y, _, _ = load_mnist1d()  # the test part is not used
    if args.quick:
        X, y = X[:600], y[:600]
    split = protocol.validation_split(X, y, 0.2, seed=0)
    y_val = split[3]
    classes = np.unique(split[1])
    seeds = range(3 * args.members)
    with harness.thread_setting(args.threads):
        members = {s: member_distances(params, s, split, ranks) for s in seeds}
    rows = []
    for rank in ranks:
        for n in range(1, args.members + 1):
            accs = []
            for start in range(3):
                group = [start + 3 * i for i in range(n)]
                mean = np.mean([members[s][0][rank] for s in group], axis=0)
                accs.append(float(np.mean(classes[np.argmin(mean, 1)] == y_val)))
            fit_s = max(sum(members[start + 3 * i][1] for i in range(n)) for start in range(3))
            rows.append({"n_channels": args.channels, "n_components": rank, "members": n,
                         "mean": float(np.mean(accs)), "per_start_seed": accs,
                         "estimated_fit_s": round(fit_s * FULL_SCALE, 1)})
            print(f"C={args.channels} r={rank} members={n}: {np.mean(accs):.4f} "
                  f"[{min(accs):.4f}-{max(accs):.4f}] fit~{fit_s * FULL_SCALE:.1f} s",
                  flush=True)
    out = harness.output_dir(args.out) / ("mnist1d_ensemble_quick.json" if args.quick
                                          else "mnist1d_ensemble.json")
    records = json.loads(out.read_text()) if out.is_file() else []
    records.append({"date": datetime.datetime.now().isoformat(timespec="seconds"),
                    "threads": args.threads, "load_average": harness.load_average(),
                    "rows": rows})
    harness.write_json(out, records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
