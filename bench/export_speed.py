"""Exports against the library, side by side in one run: PyTorch, ONNX, one fine-tuning epoch.

Networks (seed 0): ``ReduNet1D()`` (the defaults: no layer) and ``ReduNet1D(n_layers=1)``
fitted on the first 3,600 MNIST-1D training signals (the other 400 validate fine-tuning),
and ``ReduNet2D()`` on 10 MNIST digits per class. At one thread count (``--threads``, default 1: convredunet, torch and onnxruntime
alike), each method predicts the same test signals (1,000 MNIST-1D, ``--n-2d`` digits) in
``--repeats`` rounds; within a round the methods run one after the other, so a change of
the machine's load reaches all of them, and each ratio is the median over rounds of
(method's seconds / ``net.predict``'s seconds in the same round). Each method's labels are
compared with ``net.predict``'s.

Methods: ``net.predict`` (numpy, float64); ``net.to_torch()`` in float64 and float32
(``conv="auto"``), ``module.predict`` without autograd; the ONNX file of the float32
module in onnxruntime (CPU, ``intra_op_num_threads`` = threads).

Fine-tuning, for both 1D networks: ``fine_tune(net.to_torch(kernel_size=7), X, y,
teacher=net, validation_data=(the 400 held-out signals), epochs=--epochs)`` on 3,200 of the
network's training signals (``kernel_size`` truncates the layers' kernels; the default
network has none, so its lifting and class bases are trained); each epoch's seconds (its training and its validation) against
``net.predict`` of the same 3,200 signals, timed just before and after the run (median).

Usage: ``python3 bench/export_speed.py [--threads 1] [--repeats 5] [--n-2d 500]
[--epochs 2] [--quick] [--out DIR]``; writes ``export_speed.json`` and ``export_speed.md``.
"""
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import convredunet as crn
from convredunet import datasets

import harness  # bench/harness.py: this script's folder is first on sys.path


def _onnx_session(module, folder, threads):
    import onnxruntime as ort

    from convredunet.export import export_onnx

    path = Path(folder) / "model.onnx"
    export_onnx(module, path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session, path.stat().st_size


def speed_rows(name, net, X, threads, repeats, folder):
    """Median ratios to ``net.predict`` over interleaved rounds, and equal labels."""
    reference = net.predict(X)
    methods = {"net.predict (numpy, float64)": lambda: net.predict(X)}
    labels = {}
    for dtype in (torch.float64, torch.float32):
        module = net.to_torch(dtype=dtype).eval()
        x = torch.as_tensor(np.asarray(X), dtype=dtype)

        def run(module=module, x=x):
            with torch.no_grad():
                return module.predict(x).numpy()

        methods[f"to_torch({str(dtype)[6:]}).predict ({module.conv})"] = run
    session = onnx_bytes = None
    try:
        session, onnx_bytes = _onnx_session(net.to_torch(dtype=torch.float32), folder, threads)
    except ImportError:
        pass
    if session is not None:
        x32 = np.asarray(X, dtype=np.float32)
        methods["ONNX (onnxruntime, float32)"] = \
            lambda: session.run(["labels"], {"x": x32})[0]
    for what, fn in methods.items():  # warm-up: caches, plans, the first allocation
        labels[what] = np.asarray(fn())
    seconds = {what: [] for what in methods}
    for _ in range(repeats):
        for what, fn in methods.items():
            t0 = time.perf_counter()
            fn()
            seconds[what].append(time.perf_counter() - t0)
    base = np.asarray(seconds["net.predict (numpy, float64)"])
    rows = []
    for what in methods:
        times = np.asarray(seconds[what])
        rows.append({"network": name, "what": what, "n": len(X),
                     "median_seconds": float(np.median(times)),
                     "ms_per_signal": 1e3 * float(np.median(times)) / len(X),
                     "ratio_median": float(np.median(times / base)),
                     "ratio_range": [float(np.min(times / base)), float(np.max(times / base))],
                     "seconds": times.tolist(),
                     "same_labels": bool(np.array_equal(labels[what], reference))})
        print(f"{name}: {what}: {rows[-1]['ms_per_signal']:.3f} ms/signal, "
              f"x{rows[-1]['ratio_median']:.2f} net.predict, same labels "
              f"{rows[-1]['same_labels']}", flush=True)
    return rows, onnx_bytes


def fine_tune_row(net, X, y, X_val, y_val, epochs, repeats):
    """Seconds of each epoch against ``net.predict`` of the same signals."""
    before = [harness.time_call(lambda: net.predict(X), repeats=repeats).times]
    tuned = crn.fine_tune(net.to_torch(kernel_size=7), X, y, teacher=net, epochs=epochs,
                          validation_data=(X_val, y_val), verbose=False)
    after = harness.time_call(lambda: net.predict(X), repeats=repeats).times
    predict = float(np.median(before[0] + after))
    epochs_s = [h["seconds"] for h in tuned.fine_tune_history[1:]]
    row = {"n_train": len(X), "n_validation": len(X_val), "predict_seconds": predict,
           "predict_times": before[0] + after, "epoch_seconds": epochs_s,
           "epoch_over_predict": [s / predict for s in epochs_s],
           "history": tuned.fine_tune_history, "best_epoch": tuned.fine_tune_best_epoch}
    print(f"fine_tune: epochs of {[round(s, 1) for s in epochs_s]} s against net.predict "
          f"{predict:.1f} s: x{[round(r, 2) for r in row['epoch_over_predict']]}", flush=True)
    return row


def main(argv=None):
    parser = harness.arguments(__doc__.splitlines()[0],
                               quick_help="400 fitting signals, 200 + 50 test signals, 2 "
                                          "rounds, one fine-tuning epoch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--n-2d", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--skip-finetune", action="store_true")
    args = parser.parse_args(argv)
    out_dir = harness.output_dir(args.out)
    repeats = 2 if args.quick else args.repeats
    record = {"load_average_start": harness.load_average(), "threads": args.threads}
    torch.set_num_threads(args.threads)
    with crn.num_threads(args.threads), tempfile.TemporaryDirectory() as folder:
        record["machine"] = harness.machine_info()
        X_train, y_train, X_test, y_test = datasets.load_mnist1d()
        n_fit = 400 if args.quick else 3600
        X_fit, y_fit = X_train[:n_fit], y_train[:n_fit]
        X_val, y_val = X_train[3600:], y_train[3600:]
        net = crn.ReduNet1D(random_state=0).fit(X_fit, y_fit)
        rows, onnx_1d = speed_rows("MNIST-1D ReduNet1D()", net,
                                   X_test[:200] if args.quick else X_test, args.threads,
                                   repeats, folder)
        net_layer = crn.ReduNet1D(n_layers=1, random_state=0).fit(X_fit, y_fit)
        more, _ = speed_rows("MNIST-1D ReduNet1D(n_layers=1)", net_layer,
                             X_test[:200] if args.quick else X_test, args.threads, repeats,
                             folder)
        rows += more
        if not args.skip_finetune:
            n_tune = 200 if args.quick else 3200
            for key, network in (("fine_tune", net), ("fine_tune_n_layers_1", net_layer)):
                record[key] = fine_tune_row(network, X_fit[:n_tune], y_fit[:n_tune], X_val,
                                            y_val, 1 if args.quick else args.epochs, repeats)
        X, y = datasets.load_mnist()
        X2, y2, X2_test, _ = datasets.train_test_split_per_class(X, y, 10, random_state=0)
        net2 = crn.ReduNet2D(random_state=0).fit(X2, y2)
        more, onnx_2d = speed_rows("MNIST 28x28 ReduNet2D()", net2,
                                   X2_test[:50 if args.quick else args.n_2d], args.threads,
                                   repeats, folder)
        rows += more
    record.update(rows=rows, onnx_bytes={"mnist1d": onnx_1d, "mnist2d": onnx_2d},
                  load_average_end=harness.load_average())
    harness.write_json(out_dir / "export_speed.json", record)
    table = harness.markdown_table(
        ["network", "predict with", "signals", "ms per signal", "x net.predict (median, range)",
         "same labels"],
        [[r["network"], r["what"], str(r["n"]), f"{r['ms_per_signal']:.3f}",
          f"{r['ratio_median']:.2f} ({r['ratio_range'][0]:.2f}-{r['ratio_range'][1]:.2f})",
          "yes" if r["same_labels"] else "NO"] for r in rows], n_left=2)
    lines = [table, ""]
    for key, what in (("fine_tune", "ReduNet1D(): the lifting and the class bases"),
                      ("fine_tune_n_layers_1", "ReduNet1D(n_layers=1): distillation into "
                                               "7-tap kernels")):
        if key not in record:
            continue
        ft = record[key]
        lines.append(f"One epoch of fine_tune ({what}; {ft['n_train']} signals, "
                     f"{ft['n_validation']} validating): "
                     + ", ".join(f"{s:.1f} s" for s in ft["epoch_seconds"])
                     + f"; net.predict of the same signals {ft['predict_seconds']:.1f} s: "
                     + ", ".join(f"{r:.2f}x" for r in ft["epoch_over_predict"]) + ".\n")
    machine = record["machine"]
    load = [[round(v, 2) for v in a] for a in (record["load_average_start"],
                                               record["load_average_end"]) if a]
    lines.append(f"Machine: {machine['cpu_model']}, {machine['cores_available']} cores (shared "
                 f"with other jobs), {args.threads} thread(s), {machine['date']}; load average "
                 f"at start / end {' / '.join(map(str, load))}. Generated by "
                 "`bench/export_speed.py`.")
    harness.write_text(out_dir / "export_speed.md", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
