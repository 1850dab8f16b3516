"""The paper's 2D MNIST experiment end to end with the torch backend (CUDA when present).

Fit ReduNet2D on m=100 training digits (10 per class, 75 lifted channels,
9x9 kernels, 25 layers, 28x28), then transform and predict all held-out
digits of the MNIST test set, in float32 and float64. Records wall times with
CUDA synchronization around each timed step, the device name, and accuracy.

Usage: ``python bench/gpu.py [--device cuda] [--quick] [--out DIR]``
"""
import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

import convredunet as crn
from convredunet.datasets import load_mnist, train_test_split_per_class

HERE = Path(__file__).resolve().parent


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def run(device="cuda", quick=False, out_dir=HERE / "results", dtypes=("float32", "float64")):
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py: no CUDA device is available (pass --device cpu to "
                         "run the same code on the CPU)")
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
        _sync(device)
        t0 = time.perf_counter()
        net.fit(X_train, y_train)
        _sync(device)
        t1 = time.perf_counter()
        features = net.transform(x_test)
        _sync(device)
        t2 = time.perf_counter()
        proba = net.predict_proba(x_test)
        _sync(device)
        t3 = time.perf_counter()
        accuracy = float(np.mean(net.classes_[np.argmax(proba, 1)] == y_test))
        rows.append({"dtype": dtype, "n_layers": n_layers, "n_train": len(X_train),
                     "n_test": len(X_test), "fit_seconds": t1 - t0,
                     "transform_seconds": t2 - t1, "predict_seconds": t3 - t2,
                     "fit_plus_transform_seconds": t2 - t0, "test_accuracy": accuracy,
                     "features_shape": list(features.shape)})
        print(f"{dtype}: fit {t1 - t0:.2f} s, transform {len(X_test)} digits {t2 - t1:.2f} s, "
              f"predict {t3 - t2:.2f} s, accuracy {accuracy:.4f}", flush=True)
        del net, features, x_test
        if str(device).startswith("cuda"):
            torch.cuda.empty_cache()
    name = torch.cuda.get_device_name(0) if str(device).startswith("cuda") else platform.processor()
    result = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "device": str(device),
              "device_name": name, "torch": torch.__version__, "quick": quick, "rows": rows}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "gpu_quick" if quick else "gpu"
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=2))
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args(argv)
    run(args.device, args.quick, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
