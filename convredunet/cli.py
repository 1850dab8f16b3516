"""The command line: ``convredunet demo | fit | evaluate | export | finetune | bench``.

``bench`` only names the command to run: the benchmark scripts live in ``bench/`` of a
source checkout, not in the installed package.

Bad input prints one line (``convredunet: error: ...``) and exits with status
2; outputs are written to temporary names and renamed when complete, so an
error or Ctrl-C leaves no partial files and never touches existing ones. A new
output gets the umask's mode (``0644`` under umask 022); ``--force`` keeps the
replaced file's (or folder's) mode.
"""
import argparse
import datetime
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from ._files import Terminated, atomic_dir, atomic_path, sigterm_raises
from .backend import runs_on_dask_workers

__all__ = ["main"]

EXIT_USAGE = 2
# Test signals on which the demo compares the exported module with transform.
EXPORT_CHECK_SAMPLES = 250
# Test signals whose every prediction the demo checks under every cyclic shift (40 each).
SHIFT_CHECK_SAMPLES = 250
# Test signals of the demo's similarity figure, per class.
FIGURE_PER_CLASS = 30
# demo --quick: a small network on part of the data (a smoke run, not the result).
QUICK_CHANNELS, QUICK_COMPONENTS, QUICK_TRAIN, QUICK_TEST = 16, 4, 500, 100


class CLIError(Exception):
    """A problem with the user's input: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise CLIError(f"{self.prog}: {message}")


# The scripts of bench/ (in a source checkout) that take --quick and --out DIR.
BENCHMARKS = ("construction", "accuracy", "transform", "export_mnist1d", "gpu")


# --- data ------------------------------------------------------------------------------------
DATASETS = ("mnist1d", "mnist", "mnist-polar")


def load_data(spec, model=None, n_train_per_class=10, n_test_per_class=None, seed=0,
              n_radii=15, n_angles=200):
    """``(X_train, y_train, X_test, y_test, model_kind)`` for a ``--data`` value.

    ``X_test``/``y_test`` are None for an ``.npz`` without them.
    """
    from . import datasets

    if spec == "mnist1d":
        X_train, y_train, X_test, y_test = datasets.load_mnist1d()
        return X_train, y_train, X_test, y_test, model or "1d"
    if spec in ("mnist", "mnist-polar"):
        X, y = datasets.load_mnist()
        X_train, y_train, X_test, y_test = datasets.train_test_split_per_class(
            X, y, n_train_per_class, n_test_per_class, random_state=seed)
        if spec == "mnist-polar":
            X_train = datasets.to_polar(X_train, n_radii, n_angles)
            X_test = datasets.to_polar(X_test, n_radii, n_angles)
            return X_train, y_train, X_test, y_test, model or "1d"
        return X_train, y_train, X_test, y_test, model or "2d"
    if spec.startswith("ucr:"):
        try:
            X_train, y_train, X_test, y_test = datasets.load_ucr(spec[4:])
        except (ImportError, ValueError, TypeError) as exc:
            raise CLIError(f"--data {spec}: {exc}") from None
        return X_train, y_train, X_test, y_test, model or "1d"
    path = Path(spec)
    if path.suffix != ".npz":
        raise CLIError(f"unknown --data {spec!r}: use one of {', '.join(DATASETS)}, "
                       "ucr:NAME (a set bundled in aeon, e.g. ucr:GunPoint) or a PATH.npz "
                       "holding X and y")
    if not path.is_file():
        raise CLIError(f"--data file '{path}' does not exist")
    try:
        with np.load(path, allow_pickle=False) as handle:
            arrays = {key: handle[key] for key in handle.files}
    except Exception as exc:  # any unreadable file is the user's input problem
        raise CLIError(f"--data file '{path}' is not a readable .npz ({exc})") from None
    missing = [key for key in ("X", "y") if key not in arrays]
    if missing:
        raise CLIError(f"--data file '{path}' lacks {' and '.join(missing)} (it holds: "
                       f"{', '.join(sorted(arrays)) or 'nothing'})")
    has_test = "X_test" in arrays and "y_test" in arrays
    X = arrays["X"]
    if model is None:
        model = "2d" if X.ndim == 4 else "1d"
    return (X, arrays["y"], arrays.get("X_test") if has_test else None,
            arrays.get("y_test") if has_test else None, model)


# --- estimator options -----------------------------------------------------------------------
# Every hyper-parameter in convredunet._validation.PARAMETERS becomes an option
# (verbose is --quiet); defaults are the estimator's own.
_NOT_OPTIONS = ("verbose",)


def _add_estimator_options(parser):
    from ._validation import PARAMETERS

    group = parser.add_argument_group("network (defaults: the estimator's own)",
                                      argument_default=argparse.SUPPRESS)
    group.add_argument("--model", choices=("1d", "2d", "vector"), default=None,
                       help="estimator: ReduNet1D, ReduNet2D or ReduNetVector "
                            "(default from the data)")
    for name, param in PARAMETERS.items():
        if name not in _NOT_OPTIONS:
            group.add_argument("--" + name.replace("_", "-"), dest=name, type=param.parse,
                               help=param.help)


def _add_data_options(parser, required=True):
    group = parser.add_argument_group("data")
    group.add_argument("--data", required=required,
                       help=f"{', '.join(DATASETS)}, ucr:NAME (a UCR/UEA set bundled in "
                            "aeon, e.g. ucr:GunPoint; needs the ucr extra) or PATH.npz (X, y, "
                            "optional X_test, y_test)")
    group.add_argument("--n-train-per-class", type=int, default=10,
                       help="mnist / mnist-polar: training digits per class (default 10)")
    group.add_argument("--n-test-per-class", type=int, default=None,
                       help="mnist / mnist-polar: test digits per class (default: the rest)")
    group.add_argument("--seed", type=int, default=0, help="seed of the split and the shifts")


def make_estimator(kind, args):
    from ._validation import PARAMETERS
    from .estimators import ReduNet1D, ReduNet2D, ReduNetVector

    cls = {"1d": ReduNet1D, "2d": ReduNet2D, "vector": ReduNetVector}[kind]
    est = cls(verbose=not args.quiet)
    given = {name: getattr(args, name) for name in PARAMETERS if hasattr(args, name)}
    for name in given:
        if name not in est.get_params():
            raise CLIError(f"--{name.replace('_', '-')} does not apply to {cls.__name__}")
    return est.set_params(**given)


# --- output files ----------------------------------------------------------------------------
def _check_new(path, force, what="output"):
    path = Path(path)
    if path.exists() and not force:
        raise CLIError(f"{what} '{path}' exists; pass --force to overwrite it")
    if not path.parent.is_dir():
        raise CLIError(f"cannot write {what} '{path}': output folder '{path.parent}' does not "
                       "exist")
    return path


# A fresh, uniquely named temporary file (or folder) beside the target, renamed when
# complete and removed on any error, Ctrl-C or SIGTERM; new outputs get the umask's
# mode, a replaced one keeps its own (see convredunet._files).
_atomic_file = atomic_path


def _atomic_dir(path, force):
    return atomic_dir(path, replace=force)


# --- reports ----------------------------------------------------------------------------------
class step_progress:
    """A progress bar over named steps (stderr), the current one's name beside it.

    Shown after one second, so that input refused at once stays one line.
    """

    def __init__(self, names, quiet):
        from tqdm.auto import tqdm

        self.names = list(names)
        self.bar = tqdm(total=len(self.names), unit="step", disable=quiet, leave=False,
                        desc=self.names[0], delay=1.0)

    def update(self, n):
        self.bar.update(n)
        if self.bar.n < len(self.names):
            self.bar.set_description(self.names[self.bar.n], refresh=False)

    def close(self):
        self.bar.close()



def _print(args, *lines):
    if not getattr(args, "json", False):
        for line in lines:
            print(line)


def layer_table(history, net=None):
    """The fit's per-layer record as lines; a network without a layer gets one line
    saying how it classifies (and the subspace rank cross-validation chose)."""
    if not history:
        text = "no layer (n_layers=0): the nearest class subspace of the lifted features"
        if net is not None and getattr(net, "subspaces_", None) is not None:
            text += f", {net.subspaces_.shape[-1]} directions per class and frequency"
            if getattr(net, "rank_scores_", None):
                scores = ", ".join(f"{r}: {s:.3f}" for r, s in sorted(net.rank_scores_.items()))
                text += f" (cross-validated accuracy per rank: {scores})"
        return [text]
    lines = [f"{'layer':>5}  {'delta_R':>9}  {'R':>9}  {'R_c':>9}  {'train acc':>9}"]
    for h in history:
        lines.append(f"{h['layer']:>5}  {h['delta_R']:>9.4f}  {h['R']:>9.4f}  {h['R_c']:>9.4f}"
                     f"  {h['train_accuracy']:>9.4f}")
    return lines


def _shift_report(net, X_test, y_test, seed, all_shifts=False, quiet=False):
    """Accuracy, accuracy on randomly shifted test signals, and the invariance check.

    ``all_shifts``: True checks every test signal under every cyclic shift, an
    integer ``n`` the first ``n`` test signals; each prediction is compared
    with the signal's own. The randomly shifted copy of a checked signal is
    one of its shifts, so its prediction is taken from the check.
    """
    from .datasets import random_cyclic_shift

    X_test = np.asarray(X_test)
    ndim = len(net.signal_shape_)
    predictions = net.predict(X_test)
    report = {"accuracy": float(np.mean(predictions == y_test)), "predictions": predictions}
    if ndim == 0:
        return report
    shifted, offsets = random_cyclic_shift(X_test, ndim, random_state=seed)
    n = 0
    if all_shifts:
        from tqdm.auto import tqdm

        from .testing import all_shifts as every

        n = len(X_test) if all_shifts is True else min(int(all_shifts), len(X_test))
        checked = X_test[:n]
        shifts = every(net.signal_shape_)
        axes = tuple(range(-ndim, 0))
        under = np.empty((n, len(shifts)), dtype=predictions.dtype)  # prediction per shift
        verbose = net.verbose
        net.verbose = False  # one bar over the shifts instead of one per prediction
        try:
            for index, shift in enumerate(tqdm(
                    shifts, desc=f"predictions under all {len(shifts)} shifts", unit="shift",
                    disable=quiet, leave=False, delay=0.5)):
                under[:, index] = net.predict(np.roll(checked, shift, axis=axes))
        finally:
            net.verbose = verbose
        report["shifts_checked"] = len(shifts)
        report["signals_checked_under_all_shifts"] = n
        report["changed_by_any_shift"] = int(np.sum(under != predictions[:n, None]))
        position = {tuple(int(v) for v in np.atleast_1d(s)): i for i, s in enumerate(shifts)}
        keys = offsets[:n, None] if ndim == 1 else offsets[:n]
        own_shift = np.array([position[tuple(int(v) for v in k)] for k in keys], dtype=int)
    if n:
        parts = [under[np.arange(n), own_shift]]
        if n < len(X_test):
            parts.append(net.predict(shifted[n:]))
        shifted_pred = np.concatenate(parts)
    else:
        shifted_pred = net.predict(shifted)
    report["shifted_accuracy"] = float(np.mean(shifted_pred == y_test))
    report["changed_by_random_shift"] = int(np.sum(shifted_pred != predictions))
    return report


def _reference_classifiers(net, X_train, y_train, X_test, y_test):
    """Linear SVM and 5-NN accuracies on the raw input and on the learned features."""
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import LinearSVC

    def flat(a):
        return np.asarray(a).reshape(len(a), -1)

    out = {}
    for name, train, test in (("raw", flat(X_train), flat(X_test)),
                              ("features", flat(net.transform(X_train)),
                               flat(net.transform(X_test)))):
        svm = LinearSVC(dual="auto", max_iter=5000, random_state=0).fit(train, y_train)
        knn = KNeighborsClassifier(5).fit(train, y_train)
        out[f"svm_{name}"] = float(svm.score(test, y_test))
        out[f"knn5_{name}"] = float(knn.score(test, y_test))
    return out


# --- commands ---------------------------------------------------------------------------------
def cmd_demo(args):
    import torch

    from .datasets import load_mnist1d
    from .estimators import ReduNet1D
    from .figures import plot_cosine_similarity, plot_rates

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else Path("runs") / f"demo-{stamp}"
    if not args.out:
        out.parent.mkdir(exist_ok=True)
    _check_new(out, args.force, "output folder")
    started = time.perf_counter()
    X_train, y_train, X_test, y_test = load_mnist1d()
    if args.quick:
        X_train, y_train = X_train[:QUICK_TRAIN], y_train[:QUICK_TRAIN]
        X_test, y_test = X_test[:QUICK_TEST], y_test[:QUICK_TEST]
    print(f"MNIST-1D: {len(X_train)} training and {len(X_test)} test signals of length "
          f"{X_train.shape[-1]}, {len(np.unique(y_train))} classes")
    seconds = {}
    with _atomic_dir(out, args.force) as tmp:
        net = ReduNet1D(random_state=0, verbose=not args.quiet)
        if args.quick:
            net.set_params(n_channels=QUICK_CHANNELS, n_components=QUICK_COMPONENTS)
        params = {k: v for k, v in net.get_params().items() if k != "verbose"}
        print("ReduNet1D(" + ", ".join(f"{k}={v!r}" for k, v in params.items()) + ")")
        t0 = time.perf_counter()
        net.fit(X_train, y_train)
        seconds["fit"] = time.perf_counter() - t0
        print(f"fitted in {seconds['fit']:.1f} s ({len(net.layers_)} layer(s))")
        for line in layer_table(net.history_, net):
            print(line)
        t0 = time.perf_counter()
        n_check = min(SHIFT_CHECK_SAMPLES, len(X_test))
        report = _shift_report(net, X_test, y_test, seed=0, all_shifts=n_check,
                               quiet=args.quiet)
        seconds["predict_and_shift_check"] = time.perf_counter() - t0
        # The export check runs in float64 on a subset of the test signals; the
        # network's own predictions of them are the report's.
        t0 = time.perf_counter()
        module = net.to_torch(dtype=torch.float64)
        subset = X_test[:EXPORT_CHECK_SAMPLES]
        with torch.no_grad():
            x = torch.from_numpy(subset)
            export_error = float(np.max(np.abs(module(x).numpy() - net.transform(subset))))
            export_same = bool(np.array_equal(module.predict(x).numpy(),
                                              report.pop("predictions")[:len(subset)]))
        seconds["export_check"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        net.save(tmp / "model.npz")
        torch.jit.script(module.float()).save(str(tmp / "module.pt"))  # float32
        seconds["save"] = time.perf_counter() - t0
        # Figures from FIGURE_PER_CLASS test signals of each class: the test rates
        # and the features come from one pass (layer_features).
        t0 = time.perf_counter()
        shown = np.concatenate([np.flatnonzero(y_test == c)[:FIGURE_PER_CLASS]
                                for c in np.unique(y_test)])
        features = net.layer_features(X_test[shown])
        from .operators import rate_reduction

        labels = np.searchsorted(net.classes_, y_test[shown])
        test_rates = [rate_reduction(z, labels, eps2=net.eps2) for z in features]
        plot_rates(net.history_, tmp / "rates.png", test=test_rates,
                   title=f"MNIST-1D: rates entering each layer, 0 = the lifted features\n"
                         f"(train: solid; test, {len(shown)} signals: dashed)")
        plot_cosine_similarity(X_test[shown], features[-1], y_test[shown],
                               tmp / "cosine.png", titles=("before (input)", "after the network"))
        seconds["figures"] = time.perf_counter() - t0
        summary = {
            "dataset": "mnist1d", "params": params, "fit_seconds": seconds["fit"],
            "seconds": seconds, "test": report,
            "shift_check_seconds": seconds["predict_and_shift_check"],
            "export": {"max_abs_error_float64": export_error, "same_predictions": export_same,
                       "samples_checked": len(subset)},
            "history": net.history_,
            "files": ["model.npz", "module.pt", "rates.png", "cosine.png", "summary.json"],
        }
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
    total = time.perf_counter() - started
    print(f"test accuracy (network's own prediction): {report['accuracy']:.4f}")
    print(f"test accuracy on randomly shifted signals: {report['shifted_accuracy']:.4f}")
    print(f"invariance: {report['changed_by_any_shift']} of "
          f"{report['shifts_checked'] * n_check} predictions changed under all "
          f"{report['shifts_checked']} cyclic shifts of {n_check} test signals")
    print(f"PyTorch export (Conv1d, circular): max |difference| {export_error:.2e} in float64,"
          f" predictions {'identical' if export_same else 'DIFFERENT'} on "
          f"{len(subset)} test signals")
    print(f"wrote {out}/ (model.npz, module.pt, rates.png, cosine.png, summary.json) "
          f"in {total:.0f} s")
    return 0 if export_same and report["changed_by_any_shift"] == 0 else 1


def _itemsize(params):
    return 4 if params["dtype"] == "float32" else 8


def cmd_fit(args):
    from . import _dask_cli
    from ._validation import validate_params

    out = _check_new(args.out, args.force)
    # Everything that can be refused is refused before a cluster starts or data are made.
    plan = _dask_cli.plan(args)
    if plan.n_generated is None:
        X_train, y_train, X_test, y_test, kind = load_data(
            args.data, args.model, args.n_train_per_class, args.n_test_per_class, args.seed)
        _check_test_data(args.data, X_train, X_test, y_test)
    else:
        kind = args.model or "1d"
    net = make_estimator(kind, args)
    params = validate_params(net.get_params())
    cluster_bytes = None
    if plan.scheduler is not None:
        if not runs_on_dask_workers(params["backend"]):
            raise CLIError(f"--backend {params['backend']} is not available with --scheduler: "
                           "the Dask workers run the numpy backend; use --backend numpy")
        from .network import lifting_channels

        channels = lifting_channels(params.get("n_channels"),
                                    (_dask_cli.SIGNAL_LENGTH,)) or 1
        cluster_bytes = _dask_cli.fit_bytes(plan.n_generated or 0, channels, _itemsize(params))
        _dask_cli.check_local_cluster_bytes(plan, cluster_bytes)
    with _dask_cli.session(args, plan, cluster_bytes) as dist:
        if plan.n_generated is not None:  # made on the workers
            X_train, y_train, X_test, y_test = dist.generate(args.seed)
        t0 = time.perf_counter()
        net.fit(dist.array(X_train), dist.array(y_train))
        seconds = time.perf_counter() - t0
        for line in layer_table(net.history_, net):
            print(line)
        print(f"built {len(net.layers_)} layers on {len(X_train)} samples in {seconds:.1f} s")
        if X_test is not None:
            print(f"test accuracy (network's own prediction): "
                  f"{net.score(dist.array(X_test), y_test):.4f}")
    net.save(out)
    print(f"wrote {out}")
    return 0


def _check_test_data(spec, X_train, X_test, y_test):
    """Refuse a test set that cannot be evaluated, before any expensive work."""
    if X_test is None:
        return
    train_shape, test_shape = np.shape(X_train)[1:], np.shape(X_test)[1:]
    if train_shape != test_shape:
        raise CLIError(f"--data '{spec}': X_test samples have shape {test_shape}, but X "
                       f"samples have shape {train_shape}; they must match")
    if np.shape(y_test)[:1] != np.shape(X_test)[:1] or np.ndim(y_test) != 1:
        raise CLIError(f"--data '{spec}': y_test must hold one label per X_test sample "
                       f"({np.shape(X_test)[0]}), got shape {np.shape(y_test)}")


def cmd_evaluate(args):
    from .estimators import load

    from . import _dask_cli

    plan = _dask_cli.plan(args)
    model = load(args.model_file)
    model.verbose = not args.quiet  # progress over the predictions (the file's setting aside)
    if plan.n_generated is None:
        X_train, y_train, X_test, y_test, _ = load_data(
            args.data, None, args.n_train_per_class, args.n_test_per_class, args.seed)
    if plan.scheduler is not None:
        if not runs_on_dask_workers(model.backend):
            raise CLIError(f"model '{args.model_file}' has backend={model.backend!r}, which "
                           "cannot run on a Dask cluster (its workers run numpy)")
        itemsize = 4 if model.dtype == "float32" else 8
        channels = model.network_.n_channels
        # The signals and their features come back here (for the reference classifiers).
        _dask_cli.check_client_bytes(plan, _dask_cli.evaluate_bytes(
            plan.n_generated or 0, channels, itemsize), "evaluate")
        _dask_cli.check_local_cluster_bytes(plan, _dask_cli.fit_bytes(
            plan.n_generated or 0, 0, itemsize))
    with _dask_cli.session(args, plan) as dist:  # --scheduler: the network's passes on the cluster
        net = dist.wrap(model)
        if plan.n_generated is not None:
            X_train, y_train, X_test, y_test = dist.generate(args.seed)
        X_train, y_train, X_test, y_test = (dist.compute(a) for a in
                                            (X_train, y_train, X_test, y_test))
        if X_test is None:
            raise CLIError(f"--data '{args.data}' has no X_test/y_test to evaluate on")
        report = _shift_report(net, X_test, y_test, args.seed, all_shifts=args.all_shifts,
                               quiet=args.quiet)
        report.pop("predictions")
        if args.baselines:
            report.update(_reference_classifiers(net, X_train, y_train, X_test, y_test))
    report["n_test"] = int(len(X_test))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    rows = [("network's own prediction", report["accuracy"])]
    if "shifted_accuracy" in report:
        rows.append(("own prediction, randomly shifted test", report["shifted_accuracy"]))
    if args.baselines:
        rows += [("linear SVM on features", report["svm_features"]),
                 ("5-NN on features", report["knn5_features"]),
                 ("linear SVM on raw input", report["svm_raw"]),
                 ("5-NN on raw input", report["knn5_raw"])]
    width = max(len(r[0]) for r in rows)
    print(f"{'classifier':<{width}}  accuracy   ({report['n_test']} test samples)")
    for name, value in rows:
        print(f"{name:<{width}}  {value:.4f}")
    if "changed_by_random_shift" in report:
        print(f"predictions changed by a random cyclic shift: {report['changed_by_random_shift']}")
    if "changed_by_any_shift" in report:
        print(f"predictions changed by any of {report['shifts_checked']} shifts: "
              f"{report['changed_by_any_shift']} of "
              f"{report['shifts_checked'] * report['signals_checked_under_all_shifts']}")
    return 0


def cmd_export(args):
    import torch

    from .estimators import load

    out = _check_new(args.out, args.force)
    if args.format == "onnx" and args.dtype != "float32":
        raise CLIError(f"--format onnx needs --dtype float32: onnxruntime implements no "
                       f"{args.dtype} Conv, so the file could not run")
    steps = step_progress(["read the model", "export to PyTorch", f"write {args.format}"],
                          args.quiet)
    try:
        net = load(args.model_file)
        steps.update(1)
        dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
        module = net.to_torch(dtype=dtype, kernel_size=args.kernel_size, conv=args.conv).eval()
        steps.update(1)
        with _atomic_file(out) as tmp:
            if args.format == "torchscript":
                torch.jit.script(module).save(str(tmp))
            elif args.format == "state_dict":
                torch.save(module.state_dict(), str(tmp))
            else:
                from .export import export_onnx

                # Outputs "features", "scores" and "labels"; real per-frequency products.
                export_onnx(module, tmp)
        steps.update(1)
    finally:
        steps.close()
    print(f"wrote {out} ({args.format}, {args.dtype}"
          f"{'' if args.kernel_size is None else f', kernel_size={args.kernel_size}'})")
    return 0


def cmd_finetune(args):
    import torch

    from .finetune import fine_tune
    from .estimators import load

    out = _check_new(args.out, args.force)
    net = load(args.model_file)
    X_train, y_train, X_test, y_test, _ = load_data(
        args.data, None, args.n_train_per_class, args.n_test_per_class, args.seed)
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    module = net.to_torch(dtype=dtype, kernel_size=args.kernel_size, conv=args.conv)
    mode = args.mode
    if mode == "auto":
        mode = "labels" if args.kernel_size is None else "distill"

    def test_accuracy(m):
        if X_test is None:
            return None
        with torch.no_grad():
            x = torch.as_tensor(np.asarray(X_test), dtype=dtype)
            return float(np.mean(m.predict(x).numpy() == np.asarray(y_test)))

    # fine_tune's own checks of these first: a bad value is named before anything else.
    from ._validation import check_int, check_real

    if args.epochs is not None:
        check_int(args.epochs, "epochs", rule="a positive integer")
    check_real(args.validation_fraction, "validation_fraction", "a number in [0, 1)",
               lambda v: 0 <= v < 1)
    validation = None
    if args.validation_data is not None:
        X_val, y_val, _, _, _ = load_data(args.validation_data)
        validation = (X_val, y_val)
    elif args.validation_fraction > 0:
        from ._fingerprints import seen

        fitted = seen(getattr(net, "training_fingerprints_", None), np.asarray(X_train))
        if fitted.all():
            raise CLIError(f"model '{args.model_file}' was fitted on all {len(X_train)} "
                           f"training signals of --data {args.data}, so a validation split "
                           "of them would keep the start; pass --validation-data PATH.npz "
                           "(X, y held out from the fit) or --validation-fraction 0 (keep the "
                           "last epoch)")
    before = test_accuracy(module)
    epochs = {} if args.epochs is None else {"epochs": args.epochs}
    tuned = fine_tune(module, X_train, y_train, teacher=net if mode == "distill" else None,
                      lr=args.lr, batch_size=args.batch_size, **epochs,
                      validation_fraction=args.validation_fraction,
                      validation_data=validation, random_state=args.seed,
                      verbose=not args.quiet)
    after = test_accuracy(tuned)
    with _atomic_file(out) as tmp:
        torch.jit.script(tuned).save(str(tmp))
    best = tuned.fine_tune_best_epoch
    record = tuned.fine_tune_history[best]
    n_epochs = len(tuned.fine_tune_history) - 1
    if np.isnan(record["validation_accuracy"]):
        print(f"{mode}: kept epoch {best} of {n_epochs} (the last: no validation signals)")
    else:
        print(f"{mode}: kept epoch {best} of {n_epochs} (validation accuracy "
              f"{record['validation_accuracy']:.4f})")
    if before is not None:
        print(f"test accuracy (module's own prediction): {before:.4f} -> {after:.4f}")
    print(f"wrote {out} (TorchScript, {args.dtype}"
          f"{'' if args.kernel_size is None else f', kernel_size={args.kernel_size}'})")
    return 0


def cmd_bench(args):
    """Say how to run a benchmark: the bench/ scripts are not part of the installed package.

    They live next to their recorded results in a source checkout and are run from there;
    an installed convredunet cannot know where a checkout is, so it names the command.
    """
    flags = (" --quick" if args.quick else "") + (f" --out {args.out}" if args.out else "")
    raise CLIError("convredunet bench needs a source checkout (the bench/ scripts are not "
                   f"installed); from a clone of convredunet run: "
                   f"python3 bench/{args.which}.py{flags}")


# --- entry point ------------------------------------------------------------------------------
def _add_scheduler_options(parser):
    from ._dask_cli import add_options

    add_options(parser)


def build_parser():
    parser = _Parser(prog="convredunet",
                     description="Shift-invariant ReduNets built in closed form.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = sub.add_parser("demo", help="build, evaluate and export a ReduNet on MNIST-1D")
    demo.add_argument("--out", help="output folder (default: a new runs/demo-<time>)")
    demo.add_argument("--force", action="store_true", help="replace an existing --out")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.add_argument("--quick", action="store_true",
                      help=f"smoke run: {QUICK_CHANNELS} channels, {QUICK_TRAIN} training and "
                           f"{QUICK_TEST} test signals")
    demo.set_defaults(func=cmd_demo)

    fit = sub.add_parser("fit", help="build a network and save it")
    _add_data_options(fit)
    _add_estimator_options(fit)
    fit.add_argument("--out", required=True, help="model file to write (.npz)")
    fit.add_argument("--force", action="store_true", help="overwrite --out")
    fit.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_scheduler_options(fit)
    fit.set_defaults(func=cmd_fit)

    evaluate = sub.add_parser("evaluate", help="accuracy and invariance of a saved model")
    evaluate.add_argument("model_file")
    _add_data_options(evaluate)
    evaluate.add_argument("--all-shifts", action="store_true",
                          help="check predictions under every cyclic shift")
    evaluate.add_argument("--baselines", action="store_true",
                          help="also fit reference classifiers (linear SVM and 5-NN) on the raw "
                               "input and on the network's features (slower)")
    evaluate.add_argument("--json", action="store_true", help="machine-readable output")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_scheduler_options(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)

    export = sub.add_parser("export", help="export a saved model to PyTorch / ONNX")
    export.add_argument("model_file")
    export.add_argument("--format", choices=("torchscript", "onnx", "state_dict"),
                        default="torchscript")
    export.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="float32 (default) or float64; ONNX files are float32 only "
                             "(onnxruntime has no float64 Conv)")
    export.add_argument("--kernel-size", type=int, default=None,
                        help="keep only the central taps of each layer kernel")
    export.add_argument("--conv", choices=("auto", "fft", "direct"), default="auto",
                        help="how the layers run: direct convolutions, FFT, or chosen by cost "
                             "(ONNX files always use direct)")
    export.add_argument("--out", required=True)
    export.add_argument("--force", action="store_true")
    export.add_argument("--quiet", action="store_true", help="no progress bar")
    export.set_defaults(func=cmd_export)

    finetune = sub.add_parser("finetune", help="fine-tune an exported model by backprop "
                                               "(distill a compact one, or train on labels)")
    finetune.add_argument("model_file")
    _add_data_options(finetune)
    finetune.add_argument("--out", required=True, help="TorchScript module to write (.pt)")
    finetune.add_argument("--kernel-size", type=int, default=None,
                          help="train a compact module keeping this many central taps")
    finetune.add_argument("--mode", choices=("auto", "distill", "labels"), default="auto",
                          help="distill the closed-form network (default with --kernel-size) "
                               "or train on the labels only (default without)")
    finetune.add_argument("--epochs", type=int, default=None,
                          help="passes over the training split (default: fine_tune's)")
    finetune.add_argument("--lr", type=float, default=None,
                          help="relative Adam step (default: fine_tune's, by mode)")
    finetune.add_argument("--batch-size", type=int, default=64)
    finetune.add_argument("--validation-fraction", type=float, default=0.1,
                          help="share of the training signals, among those the model was not "
                               "fitted on, that chooses the epoch kept (0: the last epoch)")
    finetune.add_argument("--validation-data", default=None,
                          help="PATH.npz (X, y) of signals held out from the model's fit that "
                               "choose the epoch kept (replaces --validation-fraction)")
    finetune.add_argument("--conv", choices=("auto", "fft", "direct"), default="auto")
    finetune.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    finetune.add_argument("--force", action="store_true", help="overwrite --out")
    finetune.add_argument("--quiet", action="store_true", help="no progress bar")
    finetune.set_defaults(func=cmd_finetune)

    bench = sub.add_parser("bench", help="how to run a benchmark (the bench/ scripts of a "
                                         "source checkout; they are not installed)")
    bench.add_argument("which", choices=BENCHMARKS)
    bench.add_argument("--quick", action="store_true")
    bench.add_argument("--out", help="output folder (default bench/results)")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv=None):
    """Run the command line; returns the exit status.

    The warning filters and the SIGTERM handler it sets are restored when it returns.
    """
    from sklearn.exceptions import NotFittedError

    with warnings.catch_warnings(), sigterm_raises():
        # torch 2.9+ calls TorchScript and the TorchScript ONNX exporter deprecated; they
        # remain the formats of record here, so keep their warnings off the terminal.
        warnings.filterwarnings("ignore", message=".*torch.jit.* is deprecated",
                                category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch.onnx.*")
        try:
            args = build_parser().parse_args(argv)
            return args.func(args)
        except CLIError as exc:
            message = str(exc)
            if not message.startswith("convredunet"):
                message = f"convredunet: error: {message}"
            print(message, file=sys.stderr)
            return EXIT_USAGE
        except (ValueError, TypeError, FileNotFoundError, NotFittedError, OSError) as exc:
            print(f"convredunet: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:
            print("convredunet: interrupted; no partial output was kept", file=sys.stderr)
            return 130
        except Terminated:
            print("convredunet: terminated; no partial output was kept", file=sys.stderr)
            return 143


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
