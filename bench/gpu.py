"""The paper's 2D MNIST experiment end to end with the torch backend (CUDA when present).

Fit ReduNet2D on m=100 training digits (10 per class, 75 lifted channels,
9x9 kernels, 25 layers, 28x28), then transform and predict all held-out
digits of the MNIST test set, in float32 and float64. Records wall times with
CUDA synchronization around each timed step, the device name, and accuracy.

Usage: ``python bench/gpu.py [--device cuda] [--quick] [--out DIR] [--threads 1]``
(``--threads``: the host's setting, convredunet.num_threads).
"""
import sys

import numpy as np
import torch

import convredunet as crn
from convredunet.datasets import load_mnist, train_test_split_per_class

import harness  # bench/harness.py: this script's folder is first on sys.path


def run(device="cuda", quick=False, out_dir=harness.RESULTS, dtypes=("float32", "float64")):
    cuda = str(device).startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py: no CUDA device is available (pass --device cpu to "
                         "run the same code on the CPU)")
    # Wait for the queued CUDA work before reading the clock.
    sync = torch.cuda.synchronize if cuda else None
    machine = harness.machine_info()
    load_start = harness.load_average()
    X, y = load_mnist()
    X_train, y_train, X_test, y_test = train_test_split_per_class(X, y, 10, 20 if quick else None)
    n_layers = 3 if quick else 25
    rows = []
    for dtype in dtypes:
        net = crn.ReduNet2D(n_layers=n_layers, backend="torch", device=device, dtype=dtype)
        x_test = torch.as_tensor(X_test, dtype=getattr(torch, dtype), device=device)
        # Warm-up (CUDA context, cuFFT plans, kernels) on a tiny problem.
        crn.ReduNet2D(n_layers=1, backend="torch", device=device, dtype=dtype).fit(
            X_train[:20], np.arange(20) % 10).transform(X_test[:4])
        with harness.Timer(sync) as fit:
            net.fit(X_train, y_train)
        with harness.Timer(sync) as transform:
            features = net.transform(x_test)
        with harness.Timer(sync) as predict:
            proba = net.predict_proba(x_test)
        accuracy = float(np.mean(net.classes_[np.argmax(proba, 1)] == y_test))
        rows.append({"dtype": dtype, "n_layers": n_layers, "n_train": len(X_train),
                     "n_test": len(X_test), "fit_seconds": fit.seconds,
                     "transform_seconds": transform.seconds, "predict_seconds": predict.seconds,
                     "fit_plus_transform_seconds": fit.seconds + transform.seconds,
                     "test_accuracy": accuracy, "features_shape": list(features.shape)})
        print(f"{dtype}: fit {fit.seconds:.2f} s, transform {len(X_test)} digits "
              f"{transform.seconds:.2f} s, predict {predict.seconds:.2f} s, "
              f"accuracy {accuracy:.4f}", flush=True)
        del net, features, x_test
        if cuda:
            torch.cuda.empty_cache()
    name = torch.cuda.get_device_name(0) if cuda else machine["cpu_model"]
    result = {"machine": machine,
              "load_average": {"start": load_start, "end": harness.load_average()},
              "device": str(device), "device_name": name, "quick": quick, "rows": rows}
    stem = "gpu_quick" if quick else "gpu"
    harness.write_json(harness.output_dir(out_dir) / f"{stem}.json", result, indent=2)
    return result


def main(argv=None):
    parser = harness.arguments(__doc__.splitlines()[0],
                               quick_help="3 layers and 20 test digits per class")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)
    with harness.thread_setting(args.threads):
        run(args.device, args.quick, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
