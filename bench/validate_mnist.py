"""Cross-validated choices for MNIST translation (ReduNet2D) and rotation (polar ReduNet1D).

Protocol (``bench/protocol.py``): only the 10 training digits per class of the
accuracy benchmark's split (:func:`convredunet.datasets.train_test_split_per_class`,
seed 0) are used; 5-fold stratified cross-validation inside them (8 digits per class
to fit, 2 to validate, every digit validated once) scores every depth, both
classifiers and every subspace rank with one fit per fold. The held-out test digits
are never touched here; ``bench/accuracy.py`` measures them once for the chosen
configuration. Results: ``mnist_validation.json`` in ``--out`` (``bench/results/``), one
record per point, appended when done (a rerun skips the points it holds). ``--quick``: the
two paper points with 2 layers and 8 channels, 2 folds, in ``mnist_validation_quick.json``.

Usage::

    python3 bench/validate_mnist.py [--threads 1] [--out DIR] [--only translation|rotation]
                                    [--quick]
"""
import json
import sys

from convredunet import ReduNet1D, ReduNet2D
from convredunet.datasets import load_mnist, to_polar, train_test_split_per_class

import harness
import protocol

RECORD = "mnist_validation.json"
QUICK_RECORD = "mnist_validation_quick.json"
#: Depths at which the 2D subspace classifier is scored (each costs one eigendecomposition
#: per class and frequency, 420 frequencies of 75 x 75); the membership is scored at all.
DEPTHS = (0, 1, 2, 3, 4, 6, 8, 12, 18, 25)
SPLIT_SEED = 0
_PAPER = {"eta": 0.5, "lmbda": 500.0, "nonlinearity": "relu", "lifting_bias": None}
#: (name, data, estimator, parameters) of every cross-validated point.
POINTS = [
    ("translation, paper", "translation", ReduNet2D,
     {"n_layers": 25, "n_channels": 75, "kernel_size": 9, "eps2": 0.1, **_PAPER}),
    ("translation, gentle layers (eps2=10)", "translation", ReduNet2D,
     {"n_layers": 3, "n_channels": 75, "kernel_size": 9, "eps2": 10.0, **_PAPER}),
    ("rotation, paper", "rotation", ReduNet1D,
     {"n_layers": 40, "n_channels": 20, "kernel_size": 5, "eps2": 0.1, **_PAPER}),
    ("rotation, abs + bias", "rotation", ReduNet1D,
     {"n_layers": 40, "n_channels": 20, "kernel_size": 5, "eps2": 0.1, **_PAPER,
      "nonlinearity": "abs", "lifting_bias": 1.0}),
    ("rotation, abs + bias, gentle layers (eps2=10)", "rotation", ReduNet1D,
     {"n_layers": 5, "n_channels": 20, "kernel_size": 5, "eps2": 10.0, **_PAPER,
      "nonlinearity": "abs", "lifting_bias": 1.0}),
]


def training_digits(data, n_per_class=10):
    """The accuracy benchmark's training digits (its test digits are dropped here)."""
    X, y = load_mnist()
    X_train, y_train, _, _ = train_test_split_per_class(X, y, n_per_class, 100,
                                                        random_state=SPLIT_SEED)
    return (to_polar(X_train) if data == "rotation" else X_train), y_train


def quick_points():
    """The smoke run's points: the two paper points, 2 layers of 8 channels."""
    return [(name, data, cls, {**params, "n_layers": 2, "n_channels": 8})
            for name, data, cls, params in POINTS if name.endswith(", paper")]


def main(argv=None):
    parser = harness.arguments(__doc__.splitlines()[0],
                               quick_help="the two paper points with 2 layers and 8 "
                                          f"channels, 2 folds (written to {QUICK_RECORD})")
    parser.add_argument("--only", choices=("translation", "rotation"), default=None)
    args = parser.parse_args(argv)
    out = harness.output_dir(args.out) / (QUICK_RECORD if args.quick else RECORD)
    records = json.loads(out.read_text()) if out.is_file() else []
    done = {r["name"] for r in records}
    n_folds = 2 if args.quick else 5
    for name, data, cls, params in (quick_points() if args.quick else POINTS):
        if name in done or (args.only and data != args.only):
            continue
        X, y = training_digits(data)
        harness.log(True, f"{name}: {n_folds}-fold CV on {X.shape}")
        depths = None if data == "rotation" else DEPTHS
        with harness.thread_setting(args.threads):
            scores = protocol.cross_validated(
                lambda: cls(random_state=0, classifier="membership", **params), X, y,
                n_folds=n_folds, seed=0, verbose=True, depths=depths)
        best = protocol.best_choice(scores)
        records.append({"name": name, "data": data, "estimator": cls.__name__,
                        "params": params, "scores": scores, "best": best})
        harness.write_json(out, records)
        print(f"  best CV accuracy {best[0]:.3f} at n_layers={best[1]}, {best[2]}"
              f"{'' if best[3] is None else f', n_components={best[3]}'}; membership per "
              f"layer {[round(a, 2) for a in scores['membership'][::5]]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
