"""Sizes of the files a fitted network is written to, and what a float32 model file costs.

Networks (seed 0): ``ReduNet1D()`` on the 4,000 MNIST-1D training signals (the demo's
network: no layer, so its file holds the lifting and the class bases),
``ReduNet1D(n_layers=1)`` on the same signals (one layer of operators) and ``ReduNet2D()``
on 10 MNIST digits per class. For each: the model
file (``net.save``, format 3) in its own precision and with ``dtype="float32"``; the same
network in format 2 (every operator a full complex ``C x C`` block per frequency, as
written before format 3); the bytes of the layers' operators as dense complex blocks
(``(1 + k) F C^2`` complex128 per layer), the yardstick of the format; the TorchScript
module (``torch.jit.script(net.to_torch())``, float32) and the ONNX file
(``export_onnx``). The float32 file's effect: test accuracy of the model it loads against
the original's, predictions that differ, largest feature difference (1,000 MNIST-1D test
signals; 9,900 MNIST test digits).

Usage: ``python3 bench/model_size.py [--quick] [--out DIR] [--threads N]``; writes
``model_size.json`` and ``model_size.md``. ``--threads`` defaults to every core, as the
recorded ``model_size.json`` ran.
"""
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import convredunet as crn
from convredunet import datasets

import harness  # bench/harness.py: this script's folder is first on sys.path


def write_format_2(net, path):
    """The network as format 2 stored it: full complex operators."""
    network = net.network_
    meta = {"magic": "convredunet-model", "estimator": type(net).__name__,
            "params": net.get_params(), "input_shape": list(network.input_shape),
            "signal_shape": list(network.signal_shape), "n_layers": len(network.layers),
            "layers": [{"eta": layer.eta, "lmbda": layer.lmbda} for layer in network.layers],
            "history": net.history_,
            "nonlinearity": network.lifting.nonlinearity if network.lifting else None}
    arrays = {"format_version": np.array(2), "meta": np.array(json.dumps(meta)),
              "classes": np.asarray(net.classes_), **network.to_arrays()}
    if net.subspaces_ is not None:
        arrays["classifier/bases"] = net.subspaces_
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def sizes(name, net, X_test, y_test, folder):
    folder = Path(folder)
    files = {}
    net.save(folder / "model.npz")
    net.save(folder / "model32.npz", dtype="float32")
    write_format_2(net, folder / "format2.npz")
    module = net.to_torch(dtype=torch.float32)
    torch.jit.script(module).save(str(folder / "module.pt"))
    from convredunet.export import export_onnx

    export_onnx(module, folder / "model.onnx")
    for key, file in (("model_npz_float64", "model.npz"), ("model_npz_float32", "model32.npz"),
                      ("format_2_npz", "format2.npz"), ("torchscript_float32", "module.pt"),
                      ("onnx_float32", "model.onnx")):
        files[key] = (folder / file).stat().st_size
    dense = sum((layer.n_classes + 1) * layer.n_freqs * layer.n_channels ** 2 * 16
                for layer in net.layers_)
    with np.load(folder / "model.npz") as handle:
        entries = {key: handle[key].nbytes for key in handle.files}
    operators = sum(v for k, v in entries.items() if k.startswith("layer") and
                    k.split("/")[1] in ("stacked_packed", "V", "M_inv_packed",
                                        "E_M_inv_packed"))
    small = crn.load(folder / "model32.npz")
    small.verbose = net.verbose = False
    own, rounded = net.predict(X_test), small.predict(X_test)
    row = {"network": name, "files": files, "dense_operator_bytes": dense,
           "stored_operator_bytes": operators,
           "bases_bytes": entries.get("classifier/bases", 0),
           "fingerprint_bytes": entries.get("training/fingerprints", 0),
           "accuracy_float64_file": float(np.mean(own == y_test)),
           "accuracy_float32_file": float(np.mean(rounded == y_test)),
           "predictions_differing": int(np.sum(own != rounded)), "n_test": len(X_test),
           "max_feature_difference": float(np.max(np.abs(
               small.transform(X_test[:500]) - net.transform(X_test[:500]))))}
    print(json.dumps(row, indent=1), flush=True)
    return row


def main(argv=None):
    parser = harness.arguments(__doc__.splitlines()[0],
                               quick_help="500 MNIST-1D training signals, 100 test signals "
                                          "of each set",
                               threads_default=None,
                               threads_help="as the recorded model_size.json ran")
    args = parser.parse_args(argv)
    out_dir = harness.output_dir(args.out)
    X_train, y_train, X_test, y_test = datasets.load_mnist1d()
    if args.quick:
        X_train, y_train, X_test, y_test = X_train[:500], y_train[:500], X_test[:100], \
            y_test[:100]
    with harness.thread_setting(args.threads), tempfile.TemporaryDirectory() as folder:
        record = {"machine": harness.machine_info(), "rows": []}
        net = crn.ReduNet1D(random_state=0).fit(X_train, y_train)
        record["rows"].append(sizes("MNIST-1D ReduNet1D()", net, X_test, y_test, folder))
        net = crn.ReduNet1D(n_layers=1, random_state=0).fit(X_train, y_train)
        record["rows"].append(sizes("MNIST-1D ReduNet1D(n_layers=1)", net, X_test, y_test,
                                    folder))
        X, y = datasets.load_mnist()
        X2, y2, X2_test, y2_test = datasets.train_test_split_per_class(X, y, 10,
                                                                         random_state=0)
        if args.quick:
            X2_test, y2_test = X2_test[:100], y2_test[:100]
        net2 = crn.ReduNet2D(random_state=0).fit(X2, y2)
        record["rows"].append(sizes("MNIST 28x28 ReduNet2D()", net2, X2_test, y2_test, folder))
    harness.write_json(out_dir / "model_size.json", record)

    def mb(n):
        return f"{n / 1e6:.1f}"

    table = harness.markdown_table(
        ["network", "operators as dense complex blocks (MB)", "stored operators (MB)",
         "model.npz float64 (MB)", "model.npz float32 (MB)", "format 2 (MB)",
         "TorchScript float32 (MB)", "ONNX (MB)", "test accuracy float64 / float32 file",
         "predictions changed by float32"],
        [[r["network"], mb(r["dense_operator_bytes"]), mb(r["stored_operator_bytes"]),
          mb(r["files"]["model_npz_float64"]), mb(r["files"]["model_npz_float32"]),
          mb(r["files"]["format_2_npz"]), mb(r["files"]["torchscript_float32"]),
          mb(r["files"]["onnx_float32"]),
          f"{r['accuracy_float64_file']:.4f} / {r['accuracy_float32_file']:.4f}",
          f"{r['predictions_differing']} of {r['n_test']}"] for r in record["rows"]])
    harness.write_text(out_dir / "model_size.md", table + "\n\nGenerated by "
                       "`bench/model_size.py`.")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
