"""fine_tune: distillation, label training, determinism, invariance, validation."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import convredunet as crn  # noqa: E402
from convredunet.finetune import distillation_loss, fine_tune  # noqa: E402
from convredunet.testing import assert_shift_invariant  # noqa: E402

from conftest import signals  # noqa: E402


@pytest.fixture(scope="module")
def toy():
    X, y = signals(60, (1, 12), k=3)
    net = crn.ReduNet1D(eps2=0.1, n_layers=3, n_channels=6, kernel_size=3).fit(X, y)
    return net, X, y


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.slow
def test_distillation_lowers_teacher_loss(toy):
    net, X, y = toy
    student = net.to_torch(dtype=torch.float64, kernel_size=3)
    before = distillation_loss(student, net, X, y)
    tuned = fine_tune(student, X, y, teacher=net, epochs=6, lr=1e-2, batch_size=16,
                      validation_fraction=0)
    assert distillation_loss(tuned, net, X, y) < before


@pytest.mark.slow
def test_fine_tune_is_deterministic_and_leaves_its_input_alone(toy):
    net, X, y = toy
    module = net.to_torch(dtype=torch.float64, kernel_size=5)
    X_before, original = X.copy(), _state(module)
    runs = [fine_tune(module, X, y, epochs=2, lr=1e-2, batch_size=16, random_state=3,
                      validation_fraction=0) for _ in range(2)]
    for key, value in runs[0].state_dict().items():
        assert torch.equal(value, runs[1].state_dict()[key]), key
    for a, b in zip(runs[0].fine_tune_history, runs[1].fine_tune_history):
        np.testing.assert_equal({k: v for k, v in a.items() if k != "seconds"},
                                {k: v for k, v in b.items() if k != "seconds"})  # NaN == NaN
    for key, value in module.state_dict().items():
        assert torch.equal(value, original[key]), key
    np.testing.assert_array_equal(X, X_before)
    assert runs[0].conv == module.conv
    other = fine_tune(module, X, y, epochs=2, lr=1e-2, batch_size=16, random_state=4,
                      validation_fraction=0)  # the last epoch: the batch order shows
    assert any(not torch.equal(v, other.state_dict()[k])
               for k, v in runs[0].state_dict().items())


@pytest.mark.parametrize("conv", ["fft", pytest.param("direct", marks=pytest.mark.slow)])
def test_prediction_invariant_to_every_shift_after_training(toy, conv):
    net, X, y = toy
    module = net.to_torch(dtype=torch.float64, conv=conv)
    tuned = fine_tune(module, X, y, epochs=2, lr=1e-2, batch_size=16, validation_fraction=0)
    assert any(not torch.equal(a, b) for a, b in zip(module.parameters(), tuned.parameters()))
    with torch.no_grad():
        assert_shift_invariant(lambda a: tuned.predict(torch.from_numpy(a)).numpy(), X,
                               ndim=1)


@pytest.mark.slow
def test_fine_tune_2d_invariance():
    X, y = signals(24, (1, 6, 5), k=2)
    net = crn.ReduNet2D(n_layers=2, n_channels=4, kernel_size=3).fit(X, y)
    tuned = fine_tune(net.to_torch(dtype=torch.float64), X, y, epochs=2, lr=1e-2,
                      batch_size=8, validation_fraction=0)
    with torch.no_grad():
        assert_shift_invariant(lambda a: tuned.predict(torch.from_numpy(a)).numpy(), X,
                               ndim=2)
    torch.jit.script(tuned)


def test_one_channel_signals_without_channel_axis(toy):
    net, X, y = toy
    tuned = fine_tune(net.to_torch(dtype=torch.float64), X[:, 0], y, epochs=1,
                      validation_fraction=0)
    assert len(tuned.fine_tune_history) == 2


@pytest.mark.parametrize("kwargs, error, match", [
    ({"epochs": 0}, ValueError, "epochs must be a positive integer, got 0"),
    ({"lr": -1.0}, ValueError, r"lr must be a number in \(0, 1\] \(a relative step\), got -1.0"),
    ({"batch_size": 2.5}, TypeError, "batch_size must be a positive integer, got 2.5"),
    ({"validation_fraction": 1.0}, ValueError,
     r"validation_fraction must be a number in \[0, 1\), got 1.0"),
    ({"label_weight": 2}, ValueError, r"label_weight must be a number in \[0, 1\], got 2"),
])
def test_bad_arguments(toy, kwargs, error, match):
    net, X, y = toy
    with pytest.raises(error, match=match):
        fine_tune(net.to_torch(), X, y, **kwargs)


def test_bad_data(toy):
    net, X, y = toy
    module = net.to_torch()
    with pytest.raises(TypeError, match="module must be a ReduNetModule"):
        fine_tune(torch.nn.Linear(2, 2), X, y)
    with pytest.raises(ValueError, match="X must hold samples of shape"):
        fine_tune(module, X[..., :5], y)
    with pytest.raises(ValueError, match="y must be a 1D array with one label per sample"):
        fine_tune(module, X, y[:-1])
    with pytest.raises(ValueError, match="y holds labels the module does not know"):
        fine_tune(module, X, y + 10)


# --- command line ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    from convredunet import cli

    folder = tmp_path_factory.mktemp("finetune")
    X, y = signals(30, (1, 10), k=3)
    X_test, y_test = signals(9, (1, 10), k=3, seed=1)
    data = folder / "toy.npz"
    np.savez(data, X=X, y=y, X_test=X_test, y_test=y_test)
    model = folder / "model.npz"
    assert cli.main(["fit", "--data", str(data), "--n-layers", "2", "--n-channels", "4",
                     "--kernel-size", "3", "--quiet", "--out", str(model)]) == 0
    return folder, data, model


@pytest.mark.slow
def test_cli_finetune_writes_a_scripted_module(cli_files, capsys, tmp_path):
    from convredunet import cli

    folder, data, model = cli_files
    out = folder / "module.pt"
    held_out = tmp_path / "val.npz"
    np.savez(held_out, **dict(zip("Xy", signals(12, (1, 10), k=3, seed=2))))
    status = cli.main(["finetune", str(model), "--data", str(data), "--out", str(out),
                       "--kernel-size", "3", "--epochs", "1", "--quiet",
                       "--validation-data", str(held_out)])
    printed = capsys.readouterr().out
    assert status == 0 and "distill" in printed and "test accuracy" in printed
    assert "validation accuracy" in printed
    loaded = torch.jit.load(str(out))
    X = np.load(data)["X_test"]
    assert loaded.predict(torch.from_numpy(X).float()).shape == (len(X),)
    assert sorted(p.name for p in folder.iterdir()) == ["model.npz", "module.pt", "toy.npz"]


def test_cli_finetune_on_the_fitted_signals_asks_for_held_out_ones(cli_files, capsys):
    from convredunet import cli

    folder, data, model = cli_files
    out = folder / "never.pt"
    status = cli.main(["finetune", str(model), "--data", str(data), "--out", str(out),
                       "--epochs", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and not out.exists()
    assert "fitted on all 30 training signals" in err[0]
    assert "--validation-data" in err[0] and "--validation-fraction 0" in err[0]
    status = cli.main(["finetune", str(model), "--data", str(data), "--out", str(out),
                       "--epochs", "1", "--quiet", "--validation-fraction", "0"])
    printed = capsys.readouterr().out
    assert status == 0 and "kept epoch 1 of 1 (the last: no validation signals)" in printed
    out.unlink()


def test_cli_finetune_bad_input_and_interrupt(cli_files, capsys, monkeypatch):
    from convredunet import cli, finetune

    folder, data, model = cli_files
    out = folder / "never.pt"
    status = cli.main(["finetune", str(model), "--data", str(data), "--out", str(out),
                       "--epochs", "0", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "epochs must be a positive integer" in err[0]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(finetune, "fine_tune", interrupted)
    status = cli.main(["finetune", str(model), "--data", str(data), "--out", str(out),
                       "--quiet", "--validation-fraction", "0"])
    assert status == 130
    assert not out.exists()
    assert not [p for p in folder.iterdir() if p.name.endswith(".partial")]


# --- validation signals the closed form never saw -----------------------------------------------
def test_a_teacher_fitted_on_x_is_refused_a_split_of_x(toy):
    net, X, y = toy
    student = net.to_torch(dtype=torch.float64, kernel_size=3)
    with pytest.raises(ValueError, match=r"X holds only signals the closed-form network was "
                                         r"fitted on \(all 60\).*validation_data=\(X_val, "
                                         r"y_val\).*validation_fraction=0"):
        fine_tune(student, X, y, teacher=net, epochs=1)
    # The module alone remembers its network's training signals (labels only).
    with pytest.raises(ValueError, match="X holds only signals the closed-form network"):
        fine_tune(student, X, y, epochs=1)
    held_out, _ = signals(9, (1, 12), k=3, seed=5)
    with pytest.raises(ValueError, match="validation_data holds 4 of its 13 signals that the "
                                         "closed-form network was fitted on"):
        fine_tune(student, X, y, teacher=net, epochs=1,
                  validation_data=(np.concatenate([held_out, X[:4]]), np.r_[y[:9], y[:4]]))


def test_held_out_validation_chooses_the_epoch(toy):
    net, X, y = toy
    X_val, y_val = signals(30, (1, 12), k=3, seed=7)
    student = net.to_torch(dtype=torch.float64, kernel_size=3)
    tuned = fine_tune(student, X, y, teacher=net, epochs=3, lr=1e-2, batch_size=16,
                      validation_data=(X_val, y_val))
    history = tuned.fine_tune_history
    start = float(np.mean(student.predict(torch.from_numpy(X_val)).numpy() == y_val))
    assert history[0]["validation_accuracy"] == pytest.approx(start)
    best = max(range(len(history)), key=lambda e: (history[e]["validation_accuracy"], -e))
    assert tuned.fine_tune_best_epoch == best
    kept = float(np.mean(tuned.predict(torch.from_numpy(X_val)).numpy() == y_val))
    assert kept == pytest.approx(history[best]["validation_accuracy"])


def test_the_split_is_drawn_among_signals_the_network_never_saw():
    from convredunet.finetune import _split

    labels = np.repeat(np.arange(3), 20)
    allowed = np.zeros(60, dtype=bool)
    allowed[::4] = True
    train, val = _split(60, labels, 0.25, 0, allowed)
    assert len(val) == 15 and allowed[val].all()
    assert sorted(np.r_[train, val].tolist()) == list(range(60))
    X, y = signals(60, (1, 12), k=3)
    net = crn.ReduNet1D(eps2=0.1, n_layers=1, n_channels=6, kernel_size=3).fit(X[:45], y[:45])
    module = net.to_torch(dtype=torch.float64)
    # The start's validation accuracy is the module's on the split of the unseen signals.
    never_seen = np.arange(60) >= 45
    _, val = _split(60, y, 0.2, 0, never_seen)
    assert len(val) and never_seen[val].all()
    with torch.no_grad():
        start = np.mean(module.predict(torch.from_numpy(X[val])).numpy() == y[val])
    tuned = fine_tune(module, X, y, teacher=net, epochs=1, validation_fraction=0.2)
    assert tuned.fine_tune_history[0]["validation_accuracy"] == pytest.approx(start)


def test_progress_bar_by_default_only_for_long_runs(toy, capsys):
    net, X, y = toy
    module = net.to_torch(dtype=torch.float64)
    fine_tune(module, X, y, epochs=1, validation_fraction=0)  # well under 2 s: quiet
    assert "fine-tuning" not in capsys.readouterr().err
    fine_tune(module, X, y, epochs=1, validation_fraction=0, verbose=True)
    assert "fine-tuning" in capsys.readouterr().err
    with pytest.raises(TypeError, match="verbose must be True or False"):
        fine_tune(module, X, y, epochs=1, validation_fraction=0, verbose="yes")


def test_student_step_sizes_each_layer_the_same_in_both_modes(toy):
    from convredunet.finetune import _gentle_steps

    net, X, y = toy
    x = torch.from_numpy(X)
    etas = {}
    for conv in ("fft", "direct"):
        student = net.to_torch(dtype=torch.float64, kernel_size=3, conv=conv)
        _gentle_steps(student, x, 0.05)
        etas[conv] = [layer.eta for layer in student.layers]
        # The update of each layer is 5 % of its features' norm (mean over samples).
        with torch.no_grad():
            z = student.lift(student.check_input(x))
            for layer in student.layers:
                if conv == "fft":
                    z = student.spectrum(z)
                z_next, _ = layer.step(z, layer.operators()) if conv == "fft" else layer(z)
                if conv == "fft":
                    z, z_next = student.layer_output(z), student.layer_output(z_next)
                assert torch.isfinite(z_next).all()
                z = z_next
    np.testing.assert_allclose(etas["fft"], etas["direct"], rtol=1e-9)
    tuned = fine_tune(net.to_torch(dtype=torch.float64, kernel_size=3), X, y, teacher=net,
                      student_step=0.05, epochs=1, validation_fraction=0)
    np.testing.assert_allclose([layer.eta for layer in tuned.layers], etas["fft"], rtol=1e-9)
