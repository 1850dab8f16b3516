"""PyTorch export: speed of each mode, compact kernels by distillation, fine-tuning.

The MNIST-1D network is ``ReduNet1D(random_state=0)`` built on 90 % of the training
set (stratified, seed 0); the other 10 % chooses ``fine_tune``'s epoch and
temperature. The test set is only measured.

1. Speed. ``predict`` of the exported module (``conv="fft"``, ``"direct"``,
   ``"auto"``; float32 and float64) against ``net.predict`` (numpy, float64),
   on that network (1,000 test signals) and on ``ReduNet2D(random_state=0)``
   (10 digits per class, 200 test digits), same number of threads
   (``--threads``, default 1), best of ``--repeats`` after a warm-up call.
   Slow cells (direct convolutions with full-size kernels) are timed on a
   subset and reported per signal. Each cell also checks that its predictions
   equal ``net.predict``. Then the ONNX file's labels (onnxruntime) against
   ``net.predict`` on the 1,000 test signals.
2. Compact kernels. For K in ``--sizes``: the truncated module (the K central
   taps of every layer kernel), then ``fine_tune(..., teacher=net)``
   (distillation; ``--distill-epochs`` epochs, except the sizes in
   ``--default-sizes``, distilled with the default arguments); test accuracy,
   parameters, ms per signal (``conv="auto"``, float32), predictions changed
   under all 40 cyclic shifts of the test set.
3. Fine-tuning on labels from the same network, epoch and temperature chosen on
   the 10 % it never saw: test accuracy before and after, predictions changed
   under all 40 cyclic shifts, and a figure of the training curves. The 2D MNIST
   translation network (``ReduNet2D()``, 10 digits per class: 9 build it, 1
   validates) is fine-tuned the same way.
``--lr-sweep LR ...`` first records the validation curves of ``fine_tune`` for each
step (labels, and distillation at each ``--default-sizes``): how its default step
was chosen.

Usage: ``python bench/export_mnist1d.py [--quick] [--threads 1] [--out DIR]
[--epochs N] [--distill-epochs N] [--sizes 3 5 7 9 15] [--default-sizes 7]
[--lr-sweep 1e-4 3e-4] [--skip-speed] [--skip-sizes] [--skip-finetune] [--tag SUFFIX]``

The 2D network's invariance check runs every one of the 784 shifts on 20 test
digits (each shift is a full prediction); MNIST-1D's on every test signal.
"""
import sys

import numpy as np
import torch

import convredunet as crn
from convredunet import datasets
from convredunet.export import kernel_energy_kept

import harness  # bench/harness.py: this script's folder is first on sys.path
import protocol


def _best_time(fn, repeats):
    """Best of ``repeats`` timed calls after one warm-up (harness.time_call)."""
    return harness.time_call(fn, repeats=repeats).best


def _predict(module, X, dtype):
    with torch.no_grad():
        return module.predict(torch.as_tensor(X, dtype=dtype)).numpy()


def speed_rows(name, net, X, repeats, slow_subset):
    """Seconds for ``net.predict`` and each exported mode on ``X``."""
    reference = net.predict(X)
    base = _best_time(lambda: net.predict(X), repeats)
    rows = [{"network": name, "what": "net.predict (numpy float64)", "n": len(X),
             "seconds": base, "ms_per_signal": 1e3 * base / len(X), "ratio": 1.0,
             "same_predictions": True}]
    print(f"{name}: net.predict {base:.3f} s for {len(X)}", flush=True)
    for dtype in (torch.float32, torch.float64):
        for conv in ("auto", "fft", "direct"):
            module = net.to_torch(dtype=dtype, conv=conv).eval()
            subset = X if module.conv == "fft" else X[:slow_subset]
            seconds = _best_time(lambda: _predict(module, subset, dtype),
                                 repeats if module.conv == "fft" else 1)
            same = bool(np.array_equal(_predict(module, subset, dtype),
                                       reference[:len(subset)]))
            per = 1e3 * seconds / len(subset)
            rows.append({"network": name, "what": f"module {conv} ({module.conv}), "
                                                  f"{str(dtype).split('.')[-1]}",
                         "n": len(subset), "seconds": seconds, "ms_per_signal": per,
                         "ratio": per / rows[0]["ms_per_signal"], "same_predictions": same})
            print(f"  {rows[-1]['what']}: {per:.3f} ms/signal on {len(subset)} "
                  f"(x{rows[-1]['ratio']:.2f} net.predict), same predictions: {same}",
                  flush=True)
    return rows


def _opset(path):
    """The (default domain) opset the ONNX file declares; None without the ``onnx`` package."""
    try:
        import onnx
    except ImportError:
        return None
    return next((o.version for o in onnx.load(str(path)).opset_import
                 if o.domain in ("", "ai.onnx")), None)


def onnx_check(net, X, out_dir):
    """Export to ONNX and compare onnxruntime's labels with ``net.predict`` on ``X``."""
    try:
        import onnxruntime as ort
    except ImportError:
        return {"skipped": "onnxruntime is not installed"}
    from convredunet.export import export_onnx

    path = out_dir / "export_mnist1d.onnx"
    export_onnx(net.to_torch(dtype=torch.float32), path)
    opset = _opset(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    features, scores, labels = session.run(None, {"x": X[:, None].astype(np.float32)})
    expected = net.predict(X)
    result = {"opset": opset, "outputs": [o.name for o in session.get_outputs()],
              "n": len(X), "labels_equal_net_predict": bool(np.array_equal(labels, expected)),
              "labels_differing": int(np.sum(labels != expected)),
              "max_abs_feature_error": float(np.max(np.abs(features - net.transform(X))))}
    path.unlink()
    print(f"ONNX (opset {opset}, onnxruntime): labels equal net.predict on {len(X)}: "
          f"{result['labels_equal_net_predict']} ({result['labels_differing']} differ)",
          flush=True)
    return result


def accuracy(module, X, y, dtype=torch.float32):
    return float(np.mean(_predict(module, X, dtype) == y))


def changed_under_shifts(module, X):
    """Predictions changed by any cyclic shift of ``X`` (0: exactly invariant)."""
    nd = len(module.signal_shape)
    base = _predict(module, X, torch.float32)
    changed = 0
    for shift in np.ndindex(*module.signal_shape):
        rolled = np.roll(X, shift, axis=tuple(range(-nd, 0)))
        changed += int((_predict(module, rolled, torch.float32) != base).sum())
    return changed


def size_rows(net, X_fit, y_fit, validation, X_test, y_test, sizes, epochs, repeats,
              default_sizes=()):
    """Truncated and distilled module for each K (``epochs``; ``default_sizes`` with defaults)."""
    rows = []
    for k in sizes:
        module = net.to_torch(dtype=torch.float32, kernel_size=k).eval()
        truncated = accuracy(module, X_test, y_test)
        kwargs = {} if epochs is None or k in default_sizes else {"epochs": epochs}
        with harness.Timer() as training:
            tuned = crn.fine_tune(module, X_fit, y_fit, teacher=net,
                                  validation_data=validation, **kwargs)
        train_seconds = training.seconds
        seconds = _best_time(lambda: _predict(tuned, X_test, torch.float32), repeats)
        rows.append({"kernel_size": k, "energy_kept": kernel_energy_kept(net, k),
                     "truncated_accuracy": truncated,
                     "distilled_accuracy": accuracy(tuned, X_test, y_test),
                     "epochs": len(tuned.fine_tune_history) - 1,
                     "default_arguments": not kwargs,
                     "parameters": int(sum(p.numel() for p in tuned.parameters())),
                     "layer_parameters": int(sum(p.numel() for p in tuned.layers.parameters())),
                     "ms_per_signal": 1e3 * seconds / len(X_test), "conv": tuned.conv,
                     "train_seconds": train_seconds,
                     "best_epoch": tuned.fine_tune_best_epoch,
                     "changed_under_all_shifts": changed_under_shifts(tuned, X_test),
                     "history": tuned.fine_tune_history})
        print(f"K={k}: truncated {truncated:.4f}, distilled "
              f"{rows[-1]['distilled_accuracy']:.4f} ({rows[-1]['epochs']} epochs, epoch "
              f"{tuned.fine_tune_best_epoch} kept), {rows[-1]['parameters']} parameters, "
              f"{rows[-1]['ms_per_signal']:.3f} ms/signal ({train_seconds:.0f} s training)",
              flush=True)
    return rows


def _split(y, fraction=0.1, seed=0):
    """Stratified (fit, validation) indices: the split ``fine_tune`` itself makes."""
    return protocol.per_class_split(y, fraction, seed)


def label_finetune(name, net, X_fit, y_fit, validation, X_test, y_test, epochs,
                   shift_check):
    """``fine_tune`` on labels from ``net`` (built on ``X_fit``), epoch chosen on ``validation``."""
    module = net.to_torch(dtype=torch.float32)
    before = accuracy(module, X_test, y_test)
    kwargs = {} if epochs is None else {"epochs": epochs}
    with harness.Timer() as training:
        tuned = crn.fine_tune(module, X_fit, y_fit, validation_data=validation, **kwargs)
    seconds = training.seconds
    result = {"network": name, "net_test_accuracy": float(net.score(X_test, y_test)),
              "before": before, "after": accuracy(tuned, X_test, y_test),
              "best_epoch": tuned.fine_tune_best_epoch, "seconds": seconds,
              "n_fit": len(X_fit), "n_validation": len(validation[0]),
              "changed_under_all_shifts": changed_under_shifts(tuned, X_test[:shift_check]),
              "shifts_checked": int(np.prod(tuned.signal_shape)),
              "signals_shift_checked": min(shift_check, len(X_test)),
              "history": tuned.fine_tune_history}
    print(f"{name}: fine-tuning on labels: test {before:.4f} -> {result['after']:.4f} "
          f"(epoch {result['best_epoch']} kept, {seconds:.0f} s); predictions changed under "
          f"all {result['shifts_checked']} shifts of {result['signals_shift_checked']} test "
          f"signals: {result['changed_under_all_shifts']}",
          flush=True)
    return result


def plot_curves(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.6), squeeze=False)
    for ax, result in zip(axes[0], results):
        history = result["history"]
        epochs = [h["epoch"] for h in history]
        ax.plot(epochs, [h["train_accuracy"] for h in history], "o-", label="train (running)")
        ax.plot(epochs, [h["validation_accuracy"] for h in history], "s-", label="validation")
        ax.axhline(result["before"], color="gray", ls="--", label="closed form (test)")
        ax.plot([0], [history[0]["validation_accuracy"]], "k*", ms=12,
                label="closed-form start")
        ax.axvline(result["best_epoch"], color="C3", ls=":", label="epoch kept")
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{result['network']}: test {result['before']:.3f} -> "
                     f"{result['after']:.3f}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(result):
    lines = []
    if result.get("speed"):
        lines += ["| network | predict with | signals timed | ms per signal | × net.predict "
                  "| same predictions |", "|---|---|---:|---:|---:|---|"]
        lines += [f"| {r['network']} | {r['what']} | {r['n']} | {r['ms_per_signal']:.3f} | "
                  f"{r['ratio']:.2f} | {'yes' if r['same_predictions'] else 'NO'} |"
                  for r in result["speed"]]
        lines.append("")
    if result.get("onnx") and "n" in result["onnx"]:
        o = result["onnx"]
        lines += [f"ONNX (opset {o['opset']}, outputs {', '.join(o['outputs'])}; onnxruntime "
                  f"CPU): labels equal `net.predict` on {o['n']} MNIST-1D test signals: "
                  f"{'yes' if o['labels_equal_net_predict'] else 'NO'} "
                  f"({o['labels_differing']} differ); max |feature error| "
                  f"{o['max_abs_feature_error']:.1e} (float32).", ""]
    if result.get("lr_sweep"):
        lines += ["| fine_tune | lr | validation accuracy by epoch (0 = start) | best |",
                  "|---|---:|---|---:|"]
        lines += [f"| {'distill K=' + str(r['kernel_size']) if r['teacher'] else 'labels'} | "
                  f"{r['lr']:g} | {' '.join(f'{a:.3f}' for a in r['validation_accuracy'])} | "
                  f"{max(r['validation_accuracy']):.4f} |" for r in result["lr_sweep"]]
        lines.append("")
    if result.get("sizes"):
        lines += ["| K | kernel energy kept | truncated accuracy | distilled accuracy "
                  "(epochs) | parameters (layers) | ms per signal (conv) | changed by shifts |",
                  "|---:|---:|---:|---:|---:|---|---:|"]
        lines += [f"| {r['kernel_size']} | {r['energy_kept']:.4f} | "
                  f"{r['truncated_accuracy']:.4f} | {r['distilled_accuracy']:.4f} "
                  f"({r['epochs']}{', defaults' if r['default_arguments'] else ''}) | "
                  f"{r['parameters']} ({r['layer_parameters']}) | "
                  f"{r['ms_per_signal']:.3f} ({r['conv']}) | {r['changed_under_all_shifts']} |"
                  for r in result["sizes"]]
        lines.append("")
    for r in result.get("finetune", []):
        lines.append(f"Fine-tuning on labels, {r['network']}: network built on {r['n_fit']} "
                     f"training samples, epoch chosen on {r['n_validation']} held-out ones; "
                     f"test accuracy {r['before']:.4f} → {r['after']:.4f} (epoch "
                     f"{r['best_epoch']} of {len(r['history']) - 1} kept, {r['seconds']:.0f} s); "
                     f"predictions changed under all {r['shifts_checked']} cyclic shifts of "
                     f"{r['signals_shift_checked']} test signals: "
                     f"{r['changed_under_all_shifts']}.")
    return "\n".join(lines) + "\n"


def lr_sweep(net, X_fit, y_fit, validation, lrs, teacher_sizes, epochs):
    """Validation accuracy per epoch of ``fine_tune`` for each ``lr`` (the test set unused).

    On labels from ``net``, and distilling ``net`` into modules truncated to each of
    ``teacher_sizes``: how ``fine_tune``'s default steps were chosen.
    """
    rows = []
    for k in (None,) + tuple(teacher_sizes):
        for lr in lrs:
            module = net.to_torch(dtype=torch.float32, kernel_size=k)
            kwargs = {} if epochs is None else {"epochs": epochs}
            tuned = crn.fine_tune(module, X_fit, y_fit, validation_data=validation, lr=lr,
                                  teacher=None if k is None else net, **kwargs)
            curve = [h["validation_accuracy"] for h in tuned.fine_tune_history]
            rows.append({"kernel_size": k, "teacher": k is not None, "lr": lr,
                         "validation_accuracy": curve,
                         "best_epoch": tuned.fine_tune_best_epoch})
            print(f"lr sweep: K={k}, lr={lr}: validation {curve[0]:.4f} -> best "
                  f"{max(curve):.4f} (epoch {tuned.fine_tune_best_epoch} of "
                  f"{len(curve) - 1})", flush=True)
    return rows


def _describe(net):
    return (f"{net.n_channels} ch, {len(net.layers_)} layer{'s' if len(net.layers_) > 1 else ''}"
            f", {net.classifier}")


def run(quick=False, out_dir=harness.RESULTS, threads=1, repeats=3, epochs=None,
        distill_epochs=None, sizes=(3, 5, 7, 9, 15), skip=(), tag="", default_sizes=(7,),
        lrs=()):
    torch.set_num_threads(threads)  # the modules' own torch calls
    with crn.num_threads(threads):
        out_dir = harness.output_dir(out_dir)
        X_train, y_train, X_test, y_test = datasets.load_mnist1d()
        small = {}
        if quick:
            X_train, y_train, X_test, y_test = X_train[:800], y_train[:800], X_test[:200], \
                y_test[:200]
            epochs, distill_epochs, sizes, repeats, default_sizes = 1, 1, (7,), 1, ()
            small = {"n_channels": 16}
        result = {"machine": harness.machine_info(), "threads": threads,
                  "load_average": {"start": harness.load_average()},
                  "quick": quick, "epochs": epochs, "distill_epochs": distill_epochs}
        # The network is built on 90 % of the training set; the other 10 % (stratified,
        # seed 0) chooses fine_tune's epoch and temperature. The test set is only measured.
        fit, val = _split(y_train)
        X_fit, y_fit, validation = X_train[fit], y_train[fit], (X_train[val], y_train[val])
        net = crn.ReduNet1D(random_state=0, **small).fit(X_fit, y_fit)
        result["own_test_accuracy"] = float(net.score(X_test, y_test))
        result["network"] = repr(net)
        print(f"MNIST-1D {net!r} on {len(fit)} signals: test accuracy "
              f"{result['own_test_accuracy']:.4f}", flush=True)
        if lrs:
            result["lr_sweep"] = lr_sweep(net, X_fit, y_fit, validation, lrs, default_sizes,
                                          epochs)
        X2, y2 = datasets.load_mnist()
        X2_train, y2_train, X2_test, y2_test = datasets.train_test_split_per_class(
            X2, y2, 10, 50 if quick else 100, random_state=0)
        if "speed" not in skip:
            rows = speed_rows(f"MNIST-1D ReduNet1D() ({_describe(net)})", net, X_test,
                              repeats, 100)
            net2 = crn.ReduNet2D(random_state=0, **small).fit(X2_train, y2_train)
            rows += speed_rows(f"MNIST 28x28 ReduNet2D() ({_describe(net2)})", net2,
                               X2_test[:200], repeats, 4)
            result["speed"] = rows
            result["onnx"] = onnx_check(net, X_test, out_dir)
        if "sizes" not in skip:
            result["sizes"] = size_rows(net, X_fit, y_fit, validation, X_test, y_test, sizes,
                                        distill_epochs, repeats, default_sizes)
        if "finetune" not in skip:
            tuned = [label_finetune("MNIST-1D ReduNet1D()", net, X_fit, y_fit, validation,
                                    X_test, y_test, epochs, len(X_test))]
            fit2, val2 = _split(y2_train)
            shifted, _ = datasets.random_cyclic_shift(X2_test, 2, random_state=0)
            net2 = crn.ReduNet2D(random_state=0, **small).fit(X2_train[fit2], y2_train[fit2])
            tuned.append(label_finetune(
                "MNIST translation ReduNet2D() (10/class)", net2, X2_train[fit2], y2_train[fit2],
                (X2_train[val2], y2_train[val2]), shifted, y2_test, epochs, 20))
            result["finetune"] = tuned
            plot_curves(tuned, out_dir / (("export_finetune_quick" if quick
                                           else "export_finetune") + tag + ".png"))
        name = ("export_mnist1d_quick" if quick else "export_mnist1d") + tag
        result["load_average"]["end"] = harness.load_average()
        harness.write_json(out_dir / f"{name}.json", result, indent=2)
        harness.write_text(out_dir / f"{name}.md", markdown(result))
        print(markdown(result))
        return result


def main(argv=None):
    parser = harness.arguments(__doc__.splitlines()[0],
                               quick_help="800 training signals, 16 channels, one epoch, "
                                          "K=7 only (export_mnist1d_quick*)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=None,
                        help="label fine-tuning epochs (default: fine_tune's)")
    parser.add_argument("--distill-epochs", type=int, default=None,
                        help="distillation epochs (default: fine_tune's)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[3, 5, 7, 9, 15])
    parser.add_argument("--default-sizes", type=int, nargs="*", default=[7],
                        help="sizes distilled with fine_tune's default arguments even when "
                             "--distill-epochs is given")
    parser.add_argument("--lr-sweep", type=float, nargs="*", default=[],
                        help="first record fine_tune's validation curves for these steps "
                             "(labels, and distillation at each --default-sizes)")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-sizes", action="store_true")
    parser.add_argument("--skip-finetune", action="store_true")
    parser.add_argument("--tag", default="", help="suffix of the output files' names")
    args = parser.parse_args(argv)
    skip = {name for name in ("speed", "sizes", "finetune") if getattr(args, f"skip_{name}")}
    run(args.quick, args.out, args.threads, args.repeats, args.epochs, args.distill_epochs,
        tuple(args.sizes), skip, args.tag, tuple(args.default_sizes), tuple(args.lr_sweep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
