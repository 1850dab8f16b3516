"""The accuracy benchmark runs end to end on tiny configurations and writes its files.

``bench/accuracy.py`` (run from a clone: ``python3 bench/accuracy.py``); here every kind
of configuration (MNIST-1D with and without a lifting bias, MNIST
translation, MNIST rotation) is run with a few samples and two layers, so the
test takes seconds, and the shifted predictions must equal the unshifted ones.
"""
import json

import pytest

from conftest import load_bench

accuracy = load_bench("accuracy.py")


def _tiny_configs():
    small = {"n_layers": 2, "n_channels": 4}
    make = accuracy.make_config
    return [
        make("1d", "mnist1d", "ReduNet1D", {**small, "kernel_size": 5, "lifting_bias": None},
             6, 3),
        make("1d bias", "mnist1d", "ReduNet1D",
             {**small, "kernel_size": 5, "lifting_bias": 1.0, "nonlinearity": "relu"}, 6, 3),
        make("translation", "mnist-translation", "ReduNet2D",
             {**small, "kernel_size": 3, "eps2": 0.1}, 6, 2),
        make("rotation", "mnist-rotation", "ReduNet1D", {**small, "kernel_size": 3}, 6, 2),
    ]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("accuracy")
    result = accuracy.run(quick=True, out_dir=str(out), configs=_tiny_configs(),
                          verbose=False)
    return out, result


@pytest.mark.slow
def test_writes_json_and_markdown(tiny_run):
    out, result = tiny_run
    saved = json.loads((out / "accuracy.json").read_text())
    assert saved["settings"]["quick"] is True
    assert {"cpu_model", "cores_available", "threads", "date"} <= set(saved["machine"])
    assert [r["name"] for r in saved["records"]] == ["1d", "1d bias", "translation",
                                                     "rotation"]
    markdown = (out / "accuracy.md").read_text()
    assert markdown.startswith("# Accuracy benchmark")
    for name in ("1d bias", "translation", "rotation"):
        assert f"| {name} |" in markdown
    assert saved == json.loads(json.dumps(result))


@pytest.mark.slow
def test_shifted_accuracy_equals_unshifted(tiny_run):
    _, result = tiny_run
    for record in result["records"]:
        assert record["shift_prediction_mismatches"] == 0, record["name"]
        assert record["shifted_accuracy"] == record["accuracy"], record["name"]
        assert record["shift_feature_max_error"] < 1e-9, record["name"]


@pytest.mark.slow
def test_records_hold_every_number(tiny_run):
    _, result = tiny_run
    shapes = {"1d": [40], "1d bias": [40], "translation": [28, 28],
              "rotation": [15, 200]}
    for record in result["records"]:
        assert record["n_train"] == 60
        assert record["input_shape"] == shapes[record["name"]]
        assert record["feature_shape"][0] == 4
        bias = 1.0 if record["name"] == "1d bias" else None
        if record["name"].startswith("1d"):
            assert record["estimator_params"]["lifting_bias"] == bias
        assert record["fit_s"] >= 0 and record["forward_ms_per_sample"] >= 0
        for where in ("features", "input"):
            for model in ("svm", "knn5"):
                ref = record["references"][where][model]
                assert 0.0 <= ref["accuracy"] <= 1.0
                assert 0.0 <= ref["shifted_accuracy"] <= 1.0


def test_main_rejects_bad_threads(capsys):
    with pytest.raises(SystemExit):
        accuracy.main(["--threads", "0"])
    assert "--threads must be a positive integer" in capsys.readouterr().err
