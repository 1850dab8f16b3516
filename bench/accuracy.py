"""Accuracy benchmark: what the networks predict, and that shifts do not change it.

For every configuration the benchmark fits the network, then records

* the fit time, and the time of one forward pass over the test set;
* the test accuracy of the network's own prediction (``argmax_j pi_j`` of the
  last layer, ``net.predict``);
* the same on the test set with every sample cyclically shifted by its own
  random shift (:func:`convredunet.datasets.random_cyclic_shift`; 2D shifts
  for images, shifts along the angle axis for polar images, i.e. rotations by
  multiples of ``360 / n_angles`` degrees).  The predictions must be
  identical sample by sample: the benchmark counts the samples whose
  prediction changed, records it, and raises ``AssertionError`` after writing
  its files if any did.  The largest deviation of the features of the shifted
  samples from the equally shifted features of the samples (equivariance,
  absolute, features of unit norm) is recorded too;
* for reference, a linear SVM (``StandardScaler`` + ``LinearSVC``) and a 5-NN
  classifier on the learned features (``net.transform``, flattened) and on
  the network's input, each on the unshifted and on the shifted test set.

Configurations (:func:`full_configs`):

* MNIST-1D (4000 / 1000) with ``ReduNet1D`` defaults (whatever they are when run;
  the JSON records them), and with the best configuration of
  ``bench/sweep_mnist1d.py`` (:data:`MNIST1D_BEST`);
* MNIST translation: the paper's ``ReduNet2D(n_layers=25, n_channels=75,
  kernel_size=9, eps2=0.1, eta=0.5)`` on 10 training digits per class, and on
  a larger training set, tested on held-out digits of the local MNIST test set;
* MNIST rotation: digits resampled on a 15 x 200 polar grid
  (:func:`convredunet.datasets.to_polar`), the 15 radii as input channels of a
  ``ReduNet1D`` (20 channels, kernel 5, 40 layers), with the paper's lifting (ReLU, no
  bias) and with ``abs`` and a lifting bias.

Sizes: on the 2-core machine of the recorded run, one 2D forward pass costs
80-100 ms per digit (25 layers, 1 thread), so the full run tests on 1000
held-out digits (100 per class; quick: 10 per class and 3 layers), and the
larger translation set is 30 digits per class in float32 (its 25 layers hold
Woodbury factors of ~250 MB each in float64).  The full run takes about 17
minutes on one thread; ``--quick`` about 75 seconds.

Usage::

    python3 bench/accuracy.py [--quick] [--out DIR] [--threads N]

or, from Python, :func:`run`.
Writes ``accuracy.json`` and ``accuracy.md`` to the output directory
(default ``bench/results/``) and prints the table.
"""
import contextlib
import copy
import sys
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

import convredunet
from convredunet import ReduNet1D, ReduNet2D
from convredunet.datasets import (load_mnist, load_mnist1d, random_cyclic_shift, to_polar,
                                  train_test_split_per_class)

import harness  # bench/harness.py: this script's folder is first on sys.path

__all__ = ["run", "main", "make_config", "full_configs", "quick_configs", "MNIST1D_BEST"]

DEFAULT_OUT = str(harness.RESULTS)
ESTIMATORS = {"ReduNet1D": ReduNet1D, "ReduNet2D": ReduNet2D}
#: Seed of the train/test splits and of the random test shifts.
SPLIT_SEED = 0
SHIFT_SEED = 1

#: Best MNIST-1D point of ``bench/sweep_mnist1d.py`` (see ``results/mnist1d_sweep.json``):
#: 0.892 test accuracy with ``random_state=0`` (lifting seeds 0-4: 0.881-0.895).
MNIST1D_BEST = {"n_layers": 6, "eps2": 3e-4, "n_channels": 128, "kernel_size": 7,
                "nonlinearity": "relu", "lifting_bias": 1.0}

# --------------------------------------------------------------------------------------------
# configurations
# --------------------------------------------------------------------------------------------
# The paper's settings, every lifting and layer parameter pinned (the estimators'
# defaults may change: ReduNet1D's now hold the MNIST-1D sweep's choice).
_PAPER = {"eta": 0.5, "lmbda": 500.0, "nonlinearity": "relu", "lifting_bias": None,
          "membership": "estimated"}
PAPER_TRANSLATION = {"n_layers": 25, "n_channels": 75, "kernel_size": 9, "eps2": 0.1, **_PAPER}
PAPER_ROTATION = {"n_layers": 40, "n_channels": 20, "kernel_size": 5, "eps2": 0.1, **_PAPER}
#: The rotation network with the lifting of ReduNet1D's MNIST-1D defaults.
ROTATION_BIAS_ABS = {**PAPER_ROTATION, "nonlinearity": "abs", "lifting_bias": 1.0}


def make_config(name, data, estimator, params, n_train_per_class=None, n_test_per_class=None,
                n_reference_train_per_class=None, note=""):
    """One configuration.

    ``data`` is ``"mnist1d"`` (the 4000/1000 split; ``n_*_per_class`` take the first
    samples of each class of it when set), ``"mnist-translation"`` (28 x 28 digits) or
    ``"mnist-rotation"`` (15 x 200 polar images); for the last two the local MNIST test
    set is split with :func:`train_test_split_per_class`.  ``n_reference_train_per_class``
    fits the reference SVM and 5-NN on the first samples of each training class only
    (None: all of them), which bounds their cost in quick runs.
    """
    return {"name": name, "data": data, "estimator": estimator,
            "params": {"random_state": 0, **params},
            "n_train_per_class": n_train_per_class, "n_test_per_class": n_test_per_class,
            "n_reference_train_per_class": n_reference_train_per_class, "note": note}


def full_configs():
    """The configurations of the full run (about 17 minutes on one thread, 2-core machine)."""
    return [
        make_config("MNIST-1D, ReduNet1D defaults", "mnist1d", "ReduNet1D", {}),
        make_config("MNIST-1D, best of sweep", "mnist1d", "ReduNet1D", MNIST1D_BEST),
        make_config("MNIST translation, 10/class (paper)", "mnist-translation", "ReduNet2D",
                    PAPER_TRANSLATION, 10, 100),
        make_config("MNIST translation, 30/class (float32)", "mnist-translation",
                    "ReduNet2D", {**PAPER_TRANSLATION, "dtype": "float32"}, 30, 100,
                    note="float32 halves the memory (a layer holds ~250 MB in float64)"),
        make_config("MNIST rotation, 10/class (paper)", "mnist-rotation", "ReduNet1D",
                    PAPER_ROTATION, 10, 100),
        make_config("MNIST rotation, 100/class", "mnist-rotation", "ReduNet1D",
                    PAPER_ROTATION, 100, 100),
        make_config("MNIST rotation, 100/class, abs + lifting bias", "mnist-rotation",
                    "ReduNet1D", ROTATION_BIAS_ABS, 100, 100),
    ]


def quick_configs():
    """A reduced run (under 2 minutes): fewer layers and test samples, smaller references."""
    return [
        make_config("MNIST-1D, ReduNet1D defaults", "mnist1d", "ReduNet1D", {},
                    n_reference_train_per_class=100),
        make_config("MNIST-1D, best of sweep", "mnist1d", "ReduNet1D", MNIST1D_BEST,
                    n_reference_train_per_class=100),
        make_config("MNIST translation, 10/class (paper, 3 layers)", "mnist-translation",
                    "ReduNet2D", {**PAPER_TRANSLATION, "n_layers": 3}, 10, 10),
        make_config("MNIST rotation, 10/class (paper)", "mnist-rotation", "ReduNet1D",
                    PAPER_ROTATION, 10, 20),
    ]


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
def _first_indices(y, n):
    """Indices of the first ``n`` samples of every class (all of them when n is None)."""
    if n is None:
        return np.arange(len(y))
    return np.sort(np.concatenate([np.flatnonzero(y == c)[:n] for c in np.unique(y)]))


def _first_per_class(X, y, n):
    keep = _first_indices(y, n)
    return X[keep], y[keep]


def load_data(config):
    """``X_train, y_train, X_test, y_test, ndim`` as the network takes them."""
    if config["data"] == "mnist1d":
        X_train, y_train, X_test, y_test = load_mnist1d()
        X_train, y_train = _first_per_class(X_train, y_train, config["n_train_per_class"])
        X_test, y_test = _first_per_class(X_test, y_test, config["n_test_per_class"])
        return X_train, y_train, X_test, y_test, 1
    X, y = load_mnist()
    X_train, y_train, X_test, y_test = train_test_split_per_class(
        X, y, config["n_train_per_class"], config["n_test_per_class"], random_state=SPLIT_SEED)
    if config["data"] == "mnist-translation":
        return X_train, y_train, X_test, y_test, 2
    if config["data"] == "mnist-rotation":
        return to_polar(X_train), y_train, to_polar(X_test), y_test, 1
    raise ValueError(f"config data must be 'mnist1d', 'mnist-translation' or "
                     f"'mnist-rotation', got {config['data']!r}")


# --------------------------------------------------------------------------------------------
# one configuration
# --------------------------------------------------------------------------------------------
def _forward(net, X):
    """Features and predictions in one pass.

    ``transform`` and ``predict`` would each run the whole network; the estimator's
    ``transform_with_membership`` returns both the features and the membership of one pass.
    """
    features, proba = net.transform_with_membership(X)
    return np.asarray(features), net.classes_[np.argmax(proba, axis=1)]


def _roll_each(Z, shifts, ndim):
    """``Z[i]`` rolled by ``shifts[i]`` along its last ``ndim`` axes."""
    out = np.empty_like(Z)
    axes = tuple(range(-ndim, 0))
    for i, s in enumerate(shifts):
        out[i] = np.roll(Z[i], tuple(np.atleast_1d(s)), axis=axes)
    return out


def _references(train, tests, y_train, y_tests):
    """Linear SVM and 5-NN accuracies on flattened inputs (one per test set)."""
    flat = lambda a: np.asarray(a, dtype=np.float32).reshape(len(a), -1)  # noqa: E731
    A = flat(train)
    out = {}
    models = {
        "svm": make_pipeline(StandardScaler(), LinearSVC(C=0.1, max_iter=2000)),
        "knn5": KNeighborsClassifier(n_neighbors=5),
    }
    for key, model in models.items():
        with harness.Timer() as timer:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                model.fit(A, y_train)
            scores = [float(np.mean(model.predict(flat(T)) == y))
                      for T, y in zip(tests, y_tests)]
        out[key] = {"accuracy": scores[0], "shifted_accuracy": scores[1],
                    "seconds": round(timer.seconds, 2)}
    return out


def evaluate(config, verbose=True):
    """Fit one configuration and measure it; returns its record."""
    X_train, y_train, X_test, y_test, ndim = load_data(config)
    X_shifted, shifts = random_cyclic_shift(X_test, ndim, random_state=SHIFT_SEED)
    net = ESTIMATORS[config["estimator"]](**config["params"])
    harness.log(verbose, f"  {config['name']}: fit on {X_train.shape}, test {X_test.shape}")

    with harness.Timer() as fit:
        net.fit(X_train, y_train)
    fit_s = fit.seconds

    with harness.Timer() as forward:
        F_test, pred = _forward(net, X_test)
    forward_s = forward.seconds
    F_shifted, pred_shifted = _forward(net, X_shifted)
    ref = _first_indices(y_train, config["n_reference_train_per_class"])
    X_ref, y_ref = X_train[ref], y_train[ref]
    F_ref = np.asarray(net.transform(X_ref))

    mismatches = int(np.sum(pred_shifted != pred))
    expected = _roll_each(F_test, shifts, ndim)
    equivariance_error = float(np.max(np.abs(F_shifted - expected)))

    harness.log(verbose, f"    fit {fit_s:.1f} s, test forward {forward_s:.1f} s; references...")
    refs = {"features": _references(F_ref, (F_test, F_shifted), y_ref, (y_test, y_test)),
            "input": _references(X_ref, (X_test, X_shifted), y_ref, (y_test, y_test)),
            "n_train": int(len(y_ref))}
    return {
        "name": config["name"],
        "config": copy.deepcopy(config),
        "estimator_params": dict(net.get_params()),
        "n_train": int(len(y_train)),
        "n_test": int(len(y_test)),
        "input_shape": list(X_train.shape[1:]),
        "feature_shape": list(F_test.shape[1:]),
        "fit_s": round(fit_s, 2),
        "test_forward_s": round(forward_s, 2),
        "forward_ms_per_sample": round(1000 * forward_s / len(y_test), 3),
        "train_membership_accuracy": float(net.history_[-1]["train_accuracy"]),
        "accuracy": float(np.mean(pred == y_test)),
        "shifted_accuracy": float(np.mean(pred_shifted == y_test)),
        "shift_prediction_mismatches": mismatches,
        "shift_feature_max_error": equivariance_error,
        "delta_R_last": float(net.history_[-1]["delta_R"]),
        "references": refs,
    }


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------
#: Estimator parameters listed under the Markdown table.
_SHOWN = ("n_layers", "eps2", "eta", "lmbda", "n_channels", "kernel_size", "nonlinearity",
          "lifting_bias", "membership", "dtype", "random_state")
COLUMNS = ("configuration", "train", "test", "fit s", "fwd ms/sample", "train memb.",
           "ReduNet", "ReduNet shifted", "SVM feat.", "5-NN feat.", "SVM input",
           "5-NN input")


def table_rows(result):
    """One row of strings per configuration (see :data:`COLUMNS`)."""
    rows = []
    for r in result["records"]:
        ref = r["references"]

        def pair(d):
            return f"{d['accuracy']:.3f} / {d['shifted_accuracy']:.3f}"

        rows.append([r["name"], str(r["n_train"]), str(r["n_test"]), f"{r['fit_s']:.1f}",
                     f"{r['forward_ms_per_sample']:.2f}",
                     f"{r['train_membership_accuracy']:.3f}", f"{r['accuracy']:.3f}",
                     f"{r['shifted_accuracy']:.3f}", pair(ref["features"]["svm"]),
                     pair(ref["features"]["knn5"]), pair(ref["input"]["svm"]),
                     pair(ref["input"]["knn5"])])
    return rows


def format_table(result):
    return harness.text_table(list(COLUMNS), table_rows(result))


def markdown_report(result):
    machine = result["machine"]
    lines = [
        "# Accuracy benchmark",
        "",
        f"Machine: {machine['cpu_model']}, {machine['cores_available']} cores, "
        f"{machine['threads']} thread(s); numpy {machine['numpy']}, sklearn "
        f"{machine['sklearn']}; {machine['date']}"
        f"{' (quick run)' if result['settings']['quick'] else ''}.",
        "",
        "ReduNet: accuracy of the network's own prediction (argmax of the last layer's "
        "membership). *Shifted*: every test sample cyclically shifted by its own random "
        "shift (2D shifts for translation, shifts along the angle axis = rotations by "
        "multiples of 1.8 degrees for rotation); the predictions are identical sample by "
        "sample. Reference columns give *unshifted / shifted* accuracy of a linear SVM "
        "(standardized, C=0.1) and a 5-NN classifier on the learned features "
        "(flattened) and on the network's input. *train memb.*: accuracy of the estimated "
        "membership on the training set after the last layer.",
        "",
        harness.markdown_table(COLUMNS, table_rows(result)),
        "",
    ]
    for r in result["records"]:
        used = r["estimator_params"]
        params = ", ".join(f"{k}={used[k]!r}" for k in _SHOWN if k in used)
        given = "defaults: " if not set(r["config"]["params"]) - {"random_state"} else ""
        refs = (f"; references fitted on {r['references']['n_train']} training samples"
                if r["references"]["n_train"] != r["n_train"] else "")
        lines.append(f"- **{r['name']}**: {given}{r['config']['estimator']}({params}); "
                     f"input {tuple(r['input_shape'])}{refs}.")
    lines.append("")
    return "\n".join(lines)


def run(quick=False, out_dir=DEFAULT_OUT, configs=None, threads=None, verbose=True):
    """Run the configurations and write ``accuracy.json`` and ``accuracy.md``.

    Parameters
    ----------
    quick : bool
        The reduced configurations (:func:`quick_configs`) instead of the full ones.
    out_dir : str
        Output folder (created if missing).
    configs : list of dict or None
        Configurations to run instead (as built by :func:`make_config`), e.g. tiny ones for tests.
    threads : int or None
        Threads for the FFT / BLAS (``convredunet.set_num_threads``); None keeps the
        library's setting.
    verbose : bool
        Print progress and the table.

    Returns
    -------
    dict
        What ``accuracy.json`` holds: ``machine``, ``settings``, ``records``.

    Raises
    ------
    AssertionError
        After writing the files, if a cyclic shift changed any prediction.
    """
    if configs is None:
        configs = quick_configs() if quick else full_configs()
    setting = (convredunet.num_threads(threads) if threads is not None
               else contextlib.nullcontext())
    with setting:
        machine = harness.machine_info()  # inside the setting: records its thread count
        load_start = harness.load_average()
        harness.log(verbose, f"machine: {machine['cpu_model']}, {machine['cores_available']} "
                             f"cores, {machine['threads']} thread(s); load average {load_start}")
        with harness.Timer() as total:
            records = [evaluate(config, verbose) for config in configs]
    total_s = total.seconds
    result = {"machine": machine,
              "load_average": {"start": load_start, "end": harness.load_average()},
              "settings": {"quick": bool(quick), "split_seed": SPLIT_SEED,
                           "shift_seed": SHIFT_SEED, "total_s": round(total_s, 1)},
              "records": records}
    out = harness.output_dir(out_dir)
    harness.write_json(out / "accuracy.json", result)
    harness.write_text(out / "accuracy.md", markdown_report(result))
    if verbose:
        print()
        print(format_table(result))
        print(f"\ntotal {total_s:.0f} s; wrote accuracy.json, accuracy.md to {out_dir}")
    broken = [(r["name"], r["shift_prediction_mismatches"]) for r in records
              if r["shift_prediction_mismatches"]]
    if broken:
        raise AssertionError(f"cyclic shifts changed predictions: {broken}")
    return result


def main(argv=None):
    parser = harness.arguments(
        "Accuracy of ReduNets on MNIST-1D, MNIST translation and rotation, unshifted and "
        "randomly shifted, with linear SVM and 5-NN references.",
        quick_help="reduced configurations (under 2 minutes)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for FFT/BLAS (default: every available core)")
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be a positive integer, got {args.threads}")
    run(quick=args.quick, out_dir=args.out, threads=args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
