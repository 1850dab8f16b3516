"""The command line through its entry point, in temporary folders."""
import json
import subprocess
import sys

import numpy as np
import pytest

import convredunet as crn
from convredunet import cli

from conftest import signals


def run(capsys, *argv):
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def assert_usage_error(status, err, pattern):
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err  # one line, no traceback
    assert "Traceback" not in err
    import re

    assert re.search(pattern, lines[0]), lines[0]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    X, y = signals(40, (2, 12), k=3)
    X_test, y_test = signals(12, (2, 12), k=3, seed=1)
    path = folder / "toy.npz"
    np.savez(path, X=X, y=y, X_test=X_test, y_test=y_test)
    return path


@pytest.fixture(scope="module")
def model(dataset, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.npz"
    assert cli.main(["fit", "--data", str(dataset), "--n-layers", "3", "--n-channels", "6",
                     "--kernel-size", "3", "--quiet", "--out", str(path)]) == 0
    return path


def test_fit_writes_a_loadable_model(model, dataset, capsys):
    net = crn.load(model)
    assert len(net.layers_) == 3 and net.n_channels == 6
    status, out, _ = run(capsys, "fit", "--data", dataset, "--n-layers", "2",
                         "--n-channels", "none", "--quiet", "--out", model.parent / "b.npz")
    assert status == 0 and "test accuracy" in out
    assert crn.load(model.parent / "b.npz").lifting_ is None


def test_evaluate_json_and_table(model, dataset, capsys):
    status, out, _ = run(capsys, "evaluate", model, "--data", dataset, "--json", "--all-shifts")
    assert status == 0
    report = json.loads(out)
    assert report["accuracy"] == report["shifted_accuracy"]
    assert report["changed_by_any_shift"] == 0 and report["shifts_checked"] == 12
    assert report["signals_checked_under_all_shifts"] == report["n_test"]
    # The reference classifiers are opt-in.
    baselines = {"svm_features", "knn5_features", "svm_raw", "knn5_raw"}
    assert not baselines & set(report)
    status, out, _ = run(capsys, "evaluate", model, "--data", dataset)
    assert status == 0 and "network's own prediction" in out and "5-NN" not in out
    status, out, _ = run(capsys, "evaluate", model, "--data", dataset, "--json", "--baselines")
    assert status == 0 and baselines <= set(json.loads(out))
    status, out, _ = run(capsys, "evaluate", model, "--data", dataset, "--baselines")
    assert status == 0 and "5-NN on raw input" in out and "linear SVM on features" in out


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_export_formats(model, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    net = crn.load(model)
    X, _ = signals(5, (2, 12), k=3, seed=2)
    for fmt, name, dtype in (("torchscript", "m.pt", "float64"), ("onnx", "m.onnx", "float32"),
                             ("state_dict", "m.sd", "float64")):
        status, out, err = run(capsys, "export", model, "--format", fmt, "--dtype", dtype,
                               "--out", tmp_path / name)
        assert status == 0, err
    scripted = torch.jit.load(str(tmp_path / "m.pt"))
    np.testing.assert_allclose(scripted(torch.from_numpy(X)).detach().numpy(), net.transform(X),
                               atol=1e-10)
    module = net.to_torch(dtype=torch.float64)
    module.load_state_dict(torch.load(str(tmp_path / "m.sd")))
    assert (tmp_path / "m.onnx").stat().st_size > 0
    status, _, err = run(capsys, "export", model, "--out", tmp_path / "m.pt")
    assert_usage_error(status, err, r"output '.*m.pt' exists; pass --force to overwrite it")


@pytest.mark.slow
def test_demo_quick_writes_files_that_load(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    out_dir = tmp_path / "demo"
    status, out, err = run(capsys, "demo", "--quick", "--quiet", "--out", out_dir)
    assert status == 0, err
    assert "invariance: 0 of 4000 predictions changed under all 40 cyclic shifts of 100 " \
        "test signals" in out and "predictions identical" in out
    names = {p.name for p in out_dir.iterdir()}
    assert names == {"model.npz", "module.pt", "rates.png", "cosine.png", "summary.json"}
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["test"]["changed_by_any_shift"] == 0
    net = crn.load(out_dir / "model.npz")
    module = torch.jit.load(str(out_dir / "module.pt"))
    X, _ = signals(4, (40,), k=2)
    np.testing.assert_array_equal(module.predict(torch.from_numpy(X).float()).numpy(),
                                  net.predict(X))
    assert not list(tmp_path.glob(".*partial*"))
    # An existing output is refused and left untouched.
    before = (out_dir / "summary.json").read_bytes()
    status, _, err = run(capsys, "demo", "--quick", "--out", out_dir)
    assert_usage_error(status, err, r"output folder '.*demo' exists; pass --force")
    assert (out_dir / "summary.json").read_bytes() == before


@pytest.mark.parametrize("argv, pattern", [
    (["fit", "--data", "imagenet", "--out", "{tmp}/m.npz"], r"unknown --data 'imagenet'"),
    (["fit", "--data", "{tmp}/missing.npz", "--out", "{tmp}/m.npz"],
     r"--data file '.*missing.npz' does not exist"),
    (["fit", "--data", "{noy}", "--out", "{tmp}/m.npz"], r"--data file '.*noy.npz' lacks y"),
    (["fit", "--data", "{text}", "--out", "{tmp}/m.npz"], r"is not a readable .npz"),
    (["fit", "--data", "{flat}", "--out", "{tmp}/m.npz"],
     r"X must have shape \(n_samples, T\) or \(n_samples, n_channels, T\)"),
    (["fit", "--data", "{data}", "--eps2", "-1", "--out", "{tmp}/m.npz"],
     r"eps2 must be a positive finite number, got -1.0"),
    (["fit", "--data", "{data}", "--eps2", "abc", "--out", "{tmp}/m.npz"],
     r"argument --eps2: invalid float value: 'abc'"),
    (["fit", "--data", "{data}", "--nonlinearity", "tanh", "--out", "{tmp}/m.npz"],
     r"nonlinearity must be one of 'relu', 'abs', None, got 'tanh'"),
    (["fit", "--data", "{data}", "--model", "vector", "--kernel-size", "3", "--out",
      "{tmp}/m.npz"], r"--kernel-size does not apply to ReduNetVector"),
    (["fit", "--data", "{data}", "--out", "{tmp}/nofolder/m.npz"],
     r"output folder '.*nofolder' does not exist"),
    (["evaluate", "{tmp}/missing.npz", "--data", "{data}"],
     r"model file '.*missing.npz' does not exist"),
    (["evaluate", "{text}", "--data", "{data}"], r"is not a readable convredunet model"),
    (["export", "{tmp}/missing.npz", "--out", "{tmp}/x.pt"], r"does not exist"),
    (["export", "{text}", "--format", "pdf", "--out", "{tmp}/x.pt"],
     r"argument --format: invalid choice: 'pdf'"),
    (["bench", "speed"], r"argument which: invalid choice: 'speed'"),
    (["frobnicate"], r"invalid choice: 'frobnicate'"),
    ([], r"the following arguments are required: command"),
])
def test_bad_input_exits_2_with_one_line(argv, pattern, tmp_path, dataset, capsys):
    np.savez(tmp_path / "noy.npz", X=np.zeros((4, 8)))
    np.savez(tmp_path / "flat.npz", X=np.zeros(4), y=np.zeros(4))
    (tmp_path / "text.npz").write_text("not a zip")
    names = {"tmp": tmp_path, "noy": tmp_path / "noy.npz", "flat": tmp_path / "flat.npz",
             "text": tmp_path / "text.npz", "data": dataset}
    argv = [a.format(**names) for a in argv]
    before = sorted(p.name for p in tmp_path.iterdir())
    status, _, err = run(capsys, *argv)
    assert_usage_error(status, err, pattern)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


@pytest.mark.parametrize("argv, command", [
    (["bench", "construction"], "python3 bench/construction.py"),
    (["bench", "accuracy", "--quick", "--out", "res"], "python3 bench/accuracy.py --quick --out res"),
])
def test_bench_names_the_script_of_a_source_checkout(argv, command, tmp_path, monkeypatch,
                                                     capsys):
    # The bench/ scripts are not installed: one line saying so and what to run, exit 2.
    monkeypatch.chdir(tmp_path)
    status, out, err = run(capsys, *argv)
    assert_usage_error(status, err, r"^convredunet bench needs a source checkout \(the bench/ "
                                    r"scripts are not installed\); from a clone")
    assert err.strip().endswith(command)
    assert out == "" and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_interrupt_leaves_no_partial_output(dataset, tmp_path, capsys, monkeypatch):
    def interrupted(self, X, y):
        raise KeyboardInterrupt

    monkeypatch.setattr(crn.ReduNet1D, "fit", interrupted)
    status, _, err = run(capsys, "demo", "--quick", "--out", tmp_path / "d")
    assert status == 130 and "interrupted" in err
    assert list(tmp_path.iterdir()) == []


def test_dash_m_module_runs_the_command_line(monkeypatch, capsys):
    """convredunet/__main__.py in this process (the subprocess test below is slow)."""
    import runpy

    monkeypatch.setattr(sys, "argv", ["convredunet", "fit"])
    with pytest.raises(SystemExit) as info:
        runpy.run_module("convredunet", run_name="__main__", alter_sys=False)
    assert info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.slow
def test_python_dash_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "convredunet", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "demo" in result.stdout
    result = subprocess.run([sys.executable, "-m", "convredunet", "fit"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("quiet", [False, True])
def test_every_inference_pass_of_the_cli_has_progress_unless_quiet(model, dataset, tmp_path,
                                                                     capsys, monkeypatch, quiet):
    from convredunet import estimators

    calls = []
    original = estimators.sample_progress

    def recording(total, verbose, name):
        calls.append((total, verbose))
        return original(total, verbose, name)

    monkeypatch.setattr(estimators, "sample_progress", recording)
    flag = ["--quiet"] if quiet else []
    assert run(capsys, "evaluate", model, "--data", dataset, *flag)[0] == 0
    assert run(capsys, "fit", "--data", dataset, "--n-layers", "1", "--n-channels", "4",
               "--kernel-size", "3", "--out", tmp_path / "m.npz", *flag)[0] == 0
    # evaluate: the test set and its random shifts; fit: the test accuracy.
    n_test = len(np.load(dataset)["X_test"])
    assert calls == [(n_test, not quiet)] * 3


def test_sample_progress_is_shown_when_verbose(capsys):
    from convredunet.estimators import sample_progress

    bar = sample_progress(10, True, "ReduNet1D")
    bar.update(10)
    bar.refresh()
    bar.close()
    assert "ReduNet1D inference" in capsys.readouterr().err
    assert sample_progress(10, False, "ReduNet1D").disable


def test_shift_report_reuses_the_check_for_random_shifts():
    from convredunet.cli import _shift_report
    from convredunet.datasets import random_cyclic_shift

    X, y = signals(30, (1, 8), k=3)
    net = crn.ReduNet1D(n_layers=1, n_channels=4, kernel_size=3, eps2=0.1).fit(X, y)
    shifted, _ = random_cyclic_shift(X, 1, random_state=3)
    expected = net.predict(shifted)
    for check in (False, 10, True):
        report = _shift_report(net, X, y, seed=3, all_shifts=check, quiet=True)
        assert report["shifted_accuracy"] == pytest.approx(np.mean(expected == y))
        assert report["changed_by_random_shift"] == int(np.sum(expected != net.predict(X)))
        if check:
            assert report["signals_checked_under_all_shifts"] == (30 if check is True else 10)
            assert report["changed_by_any_shift"] == 0


def test_export_shows_its_steps_unless_quiet(model, tmp_path, capsys, monkeypatch):
    pytest.importorskip("torch")
    shown = []
    original = cli.step_progress

    class recording(original):
        def __init__(self, names, quiet):
            super().__init__(names, quiet)
            self.bar.delay = 0  # small models export in well under the bar's delay
            shown.append((names, quiet))

    monkeypatch.setattr(cli, "step_progress", recording)
    status, _, err = run(capsys, "export", model, "--out", tmp_path / "a.pt")
    assert status == 0 and shown[-1] == (["read the model", "export to PyTorch",
                                          "write torchscript"], False)
    status, _, err = run(capsys, "export", model, "--out", tmp_path / "b.pt", "--quiet")
    assert status == 0 and err == "" and shown[-1][1] is True
