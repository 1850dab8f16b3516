"""bench/export_speed.py and bench/model_size.py on a small network (the recorded runs use
the default networks)."""
import numpy as np
import pytest

import convredunet as crn
from conftest import load_bench, signals

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def small():
    X, y = signals(40, (1, 16), k=2)
    return crn.ReduNet1D(n_layers=1, n_channels=6, kernel_size=3, n_components=2).fit(X, y), X, y


@pytest.mark.slow
def test_speed_rows_compare_every_export_with_net_predict(small, tmp_path):
    pytest.importorskip("onnxruntime")
    bench = load_bench("export_speed.py")
    net, X, _ = small
    rows, onnx_bytes = bench.speed_rows("small", net, X, threads=1, repeats=2, folder=tmp_path)
    assert [r["what"] for r in rows] == ["net.predict (numpy, float64)",
                                         "to_torch(float64).predict (fft)",
                                         "to_torch(float32).predict (fft)",
                                         "ONNX (onnxruntime, float32)"]
    assert all(r["same_labels"] for r in rows) and onnx_bytes > 0
    assert rows[0]["ratio_median"] == 1.0 and all(len(r["seconds"]) == 2 for r in rows)


@pytest.mark.slow
def test_fine_tune_row_times_epochs_against_predict(small):
    bench = load_bench("export_speed.py")
    net, X, y = small
    X_val, y_val = signals(10, (1, 16), k=2, seed=4)
    row = bench.fine_tune_row(net, X, y, X_val, y_val, epochs=1, repeats=1)
    assert len(row["epoch_seconds"]) == 1 and row["epoch_over_predict"][0] > 0


@pytest.mark.slow
def test_model_sizes_and_format_2_yardstick(small, tmp_path):
    pytest.importorskip("onnx")
    bench = load_bench("model_size.py")
    net, X, y = small
    row = bench.sizes("small", net, X, y, tmp_path)
    assert set(row["files"]) == {"model_npz_float64", "model_npz_float32", "format_2_npz",
                                 "torchscript_float32", "onnx_float32"}
    assert row["stored_operator_bytes"] <= row["dense_operator_bytes"] / 2
    assert crn.load(tmp_path / "format2.npz").predict(X).tolist() == net.predict(X).tolist()
    assert row["predictions_differing"] == int(np.sum(
        crn.load(tmp_path / "model32.npz").predict(X) != net.predict(X)))
