"""The reliability promises (docs/guide.md, "Reliability"): each test fails if its promise breaks."""
import json
import signal
import subprocess
import sys
import textwrap
import threading
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.exceptions import NotFittedError

import convredunet as crn
from convredunet import cli, spectral
from convredunet.backend import NumpyBackend
from convredunet.network import normalize

from conftest import signals


def _small(**params):
    defaults = dict(n_layers=2, n_channels=6, kernel_size=3, eps2=0.1)
    return crn.ReduNet1D(**{**defaults, **params})


@pytest.fixture(scope="module")
def data():
    return signals(60, (16,), 3, shifts_first=True)


@pytest.fixture(scope="module")
def fitted(data):
    return _small().fit(*data)


# --- 1. no silent NaN ---------------------------------------------------------------------
@pytest.mark.parametrize("dtype, scale", [("float32", 1e38), ("float64", 1e307),
                                          ("float32", 1e-40), ("float64", 1e-300)])
def test_any_finite_scale_gives_finite_output(data, dtype, scale):
    X, y = data
    net = _small(dtype=dtype).fit(X * scale, y)
    proba = net.predict_proba(X * scale)
    assert np.isfinite(proba).all()
    assert np.isfinite(net.transform(X * scale)).all()
    assert all(np.isfinite(h["delta_R"]) for h in net.history_)


def test_without_bias_the_network_is_scale_invariant(data):
    X, y = data
    net = _small(lifting_bias=None, dtype="float32").fit(X, y)
    assert np.array_equal(net.predict(X), net.predict(X * 1e38))
    # Powers of two are exact: memberships identical bit for bit.
    assert np.array_equal(net.predict_proba(X), net.predict_proba(X * 2.0 ** 100))


def test_normalize_is_scale_robust():
    z = np.full((3, 4), 1e30, dtype=np.float32)
    out = normalize(NumpyBackend(), z)
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0)
    tiny = np.full((2, 5), 1e-40)
    assert np.allclose(np.linalg.norm(normalize(NumpyBackend(), tiny), axis=1), 1.0)
    assert not normalize(NumpyBackend(), np.zeros((1, 3))).any()


@pytest.mark.parametrize("dtype, scale", [(np.float32, 1e20), (np.float64, 1e200)])
def test_rates_that_would_overflow_are_refused(dtype, scale):
    Z, y = signals(30, (8,), 3, shifts_first=True)
    Z = Z.astype(dtype)[:, None]
    with pytest.raises(ValueError, match=f"would overflow {np.dtype(dtype).name}"):
        crn.rate_reduction(Z * scale, y)
    with pytest.raises(ValueError, match="would overflow"):
        crn.construct_operators(Z * scale, y)


@pytest.mark.parametrize("dtype, eps2", [("float64", 5e-324), ("float32", 1e-40)])
def test_unrepresentable_eps2_is_refused_with_the_bound(data, dtype, eps2):
    with pytest.raises(ValueError, match=r"eps2 must be at least .* \(the smallest normal"):
        _small(dtype=dtype, eps2=eps2).fit(*data)


@pytest.mark.slow
def test_cli_refuses_unrepresentable_eps2(tmp_path, capsys):
    status = cli.main(["fit", "--data", "mnist1d", "--eps2", "1e-320", "--n-layers", "1",
                       "--out", str(tmp_path / "m.npz"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "eps2 must be at least" in err[0]
    assert not any(tmp_path.iterdir())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(eps2=st.floats(1e-37, 1.0), repeats=st.integers(1, 6))
def test_float32_rank_deficient_construction_is_finite_or_refused(eps2, repeats):
    Z, y = signals(12, (8,), 3, shifts_first=True)
    Z = np.repeat(Z.astype(np.float32)[:, None], repeats, axis=0)
    y = np.repeat(y, repeats)
    try:
        ops = crn.construct_operators(Z, y, eps2=eps2)
    except ValueError as exc:
        assert "eps2" in str(exc)
    else:
        assert np.isfinite(ops.E_hat).all() and np.isfinite(ops.C_hat).all()
        assert np.isfinite(ops.rates.delta)


def test_huge_lmbda_gives_a_finite_membership(data):
    X, y = data
    net = _small(lmbda=1e308).fit(X, y)
    assert np.isfinite(net.predict_proba(X)).all()


# --- 2. model files are checked whole -------------------------------------------------------
def _entries(path):
    with np.load(path, allow_pickle=False) as handle:
        return {key: handle[key] for key in handle.files}


def _write(path, arrays):
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def _meta_edit(edit):
    def apply(arrays):
        meta = json.loads(str(arrays["meta"]))
        edit(meta)
        arrays["meta"] = np.array(json.dumps(meta))
    return apply


def _set(key, value):
    def apply(arrays):
        arrays[key] = value(arrays[key]) if callable(value) else value
    return apply


def _drop(key):
    return lambda arrays: arrays.pop(key)


DAMAGE = {
    "no lifting bias": _drop("lifting/bias"),
    "layers cut short": lambda a: [a.pop(k) for k in list(a) if k.startswith("layer1/")],
    "layer records cut short": _meta_edit(lambda m: m["layers"].pop()),
    "eta NaN": _meta_edit(lambda m: m["layers"][0].update(eta=float("nan"))),
    "gamma NaN": _set("layer0/gamma", lambda g: g * np.nan),
    "stacked NaN": _set("layer0/stacked_packed", lambda s: s * np.nan),
    "kernels NaN": _set("lifting/kernels", lambda k: k * np.nan),
    "stacked complex": _set("layer0/stacked_packed", lambda s: s.astype(np.complex128)),
    "stacked int": _set("layer0/stacked_packed", lambda s: s.astype(np.int64)),
    "stacked float32 in a float64 file": _set("layer0/stacked_packed",
                                              lambda s: s.astype(np.float32)),
    "stacked not square": _set("layer0/stacked_packed", lambda s: s[..., :-1].copy()),
    "storage dtype float16": _meta_edit(lambda m: m.update(storage_dtype="float16")),
    "fingerprints unsorted": _set("training/fingerprints", lambda f: f[::-1].copy()),
    "fingerprints float": _set("training/fingerprints", lambda f: f.astype(np.float64)),
    "duplicated dense class": _set("layer0/dense_classes", lambda d: np.r_[d[:-1], d[0]]),
    "dense class out of range": _set("layer0/dense_classes", lambda d: d + 10),
    "four classes": _set("classes", np.arange(4)),
    "kernels longer than the signal": _meta_edit(
        lambda m: m["params"].update(kernel_size=99)),
    "n_layers -3": _meta_edit(lambda m: m["params"].update(n_layers=-3)),
    "eps2 -1": _meta_edit(lambda m: m["params"].update(eps2=-1)),
    "dtype float16": _meta_edit(lambda m: m["params"].update(dtype="float16")),
    "version 1.9": _set("format_version", np.array(1.9)),
    "version True": _set("format_version", np.array(True)),
    "version abc": _set("format_version", np.array("abc")),
    "version [1, 1]": _set("format_version", np.array([1, 1])),
    "unknown estimator": _meta_edit(lambda m: m.update(estimator="ReduNet3D")),
    "meta not json": _set("meta", np.array("{")),
    "input shape wrong": _meta_edit(lambda m: m.update(input_shape=[1, 0])),
}


@pytest.mark.parametrize("name", list(DAMAGE))
def test_inconsistent_model_files_are_refused(fitted, tmp_path, name):
    path = tmp_path / "model.npz"
    fitted.save(path)
    arrays = _entries(path)
    DAMAGE[name](arrays)
    _write(path, arrays)
    with pytest.raises(ValueError, match=f"model file '{path}'"):
        crn.load(path)


def test_lowrank_without_V_is_refused(tmp_path):
    X, y = signals(12, (16,), 3, shifts_first=True)
    net = _small(n_channels=12, n_layers=1).fit(X, y)
    assert net.layers_[0].lowrank_classes
    path = tmp_path / "m.npz"
    net.save(path)
    arrays = _entries(path)
    arrays.pop("layer0/V")
    _write(path, arrays)
    with pytest.raises(ValueError, match="lacks the entry 'layer0/V'"):
        crn.load(path)


def test_declared_huge_entry_is_refused_before_allocating(fitted, tmp_path):
    path = tmp_path / "model.npz"
    fitted.save(path)
    arrays = _entries(path)
    _write(path, arrays)
    # Rewrite the header of one entry to declare 10^12 elements.
    with zipfile.ZipFile(path) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    raw = members["layer0/gamma.npy"]
    header_end = raw.index(b"\n") + 1
    fake = raw[:header_end].replace(b"(3,)", b"(1000000000000,)")
    fake = fake[:-1].ljust(header_end - 1) + b"\n" if len(fake) <= header_end else fake
    members["layer0/gamma.npy"] = fake + raw[header_end:]
    with zipfile.ZipFile(path, "w") as zf:
        for name, blob in members.items():
            zf.writestr(name, blob)
    with pytest.raises(ValueError, match="declares shape .* but holds"):
        crn.load(path)


def test_unknown_entries_are_never_read(fitted, tmp_path):
    path = tmp_path / "model.npz"
    fitted.save(path)
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("junk.npy", b"not an array at all")
    assert np.array_equal(crn.load(path).predict_proba(signals(60, (16,), 3, shifts_first=True)[0]),
                          fitted.predict_proba(signals(60, (16,), 3, shifts_first=True)[0]))


@pytest.mark.parametrize("make, match", [
    (lambda p: np.save(p.with_suffix(".npy"), np.ones(3)) or p.with_suffix(".npy"),
     "not a readable convredunet model"),
    (lambda p: p.parent, "is a directory"),
])
def test_wrong_kinds_of_path(tmp_path, make, match):
    path = make(tmp_path / "model.npz")
    with pytest.raises(ValueError, match=match):
        crn.load(path)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_random_damage_is_a_value_error_or_an_identical_model(fitted, tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "model.npz"
    fitted.save(path)
    arrays = _entries(path)
    key = data.draw(st.sampled_from(sorted(arrays)))
    value = arrays[key]
    action = data.draw(st.sampled_from(["drop", "nan", "shape", "dtype", "scale"]))
    if action == "drop":
        arrays.pop(key)
    elif action == "nan" and value.dtype.kind in "fc" and value.size:
        value = value.copy()
        value.flat[data.draw(st.integers(0, value.size - 1))] = np.nan
        arrays[key] = value
    elif action == "shape":
        arrays[key] = np.concatenate([value.ravel(), value.ravel()[:1]]) if value.size \
            else np.zeros(1)
    elif action == "dtype" and value.dtype.kind in "fciu":
        with np.errstate(over="ignore"):  # large operators overflow float16: also damage
            arrays[key] = (value if value.dtype.kind != "c" else value.real).astype(
                np.float16 if value.dtype.kind != "c" else np.float32)
    elif action == "scale" and value.dtype.kind in "fc":
        arrays[key] = value * -1.0
    _write(path, arrays)
    try:
        net = crn.load(path)
    except ValueError as exc:
        assert str(path) in str(exc)
    else:  # the change was harmless or numerically legal: the model must still work
        assert np.isfinite(net.predict_proba(signals(60, (16,), 3, shifts_first=True)[0])).all()


@pytest.mark.parametrize("params", [
    dict(), dict(lifting_bias=None), dict(n_channels=None, classifier="membership"),
    dict(classifier="membership"), dict(dtype="float32"),
    dict(n_channels=12, n_layers=1), dict(nonlinearity=None), dict(membership="label"),
])
def test_every_saved_file_loads(tmp_path, params):
    X, y = signals(12, (16,), 3, shifts_first=True)
    net = _small(**params).fit(X, y)
    path = tmp_path / "m.npz"
    net.save(path)
    assert np.array_equal(crn.load(path).transform(X), net.transform(X))


# --- 3. writes never touch what is not theirs -------------------------------------------------
def test_save_leaves_bystanders_alone(fitted, tmp_path):
    bystanders = [tmp_path / "model.npz.tmp", tmp_path / ".model.npz.partial"]
    for path in bystanders:
        path.write_text("mine")
    fitted.save(tmp_path / "model.npz")
    assert all(p.read_text() == "mine" for p in bystanders)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [p.name for p in bystanders] + ["model.npz"])


def test_cli_export_leaves_bystanders_alone(fitted, tmp_path, capsys):
    model = tmp_path / "m.npz"
    fitted.save(model)
    mine = tmp_path / ".module.pt.partial"
    mine.write_text("mine")
    status = cli.main(["export", str(model), "--out", str(tmp_path / "module.pt")])
    assert status == 0 and mine.read_text() == "mine"


def test_long_file_name(fitted, tmp_path):
    path = tmp_path / ("m" * 251 + ".npz")
    fitted.save(path)
    assert crn.load(path).n_features_in_ == fitted.n_features_in_


def test_concurrent_saves_each_write_a_whole_model(data, tmp_path):
    X, y = data
    nets = [_small(random_state=seed).fit(X, y) for seed in (1, 2)]
    path = tmp_path / "same.npz"
    errors = []

    def save(net):
        try:
            for _ in range(5):
                net.save(path)
        except Exception as exc:  # pragma: no cover - the failure being tested
            errors.append(exc)

    threads = [threading.Thread(target=save, args=(net,)) for net in nets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    got = crn.load(path).predict_proba(X)
    assert any(np.array_equal(got, net.predict_proba(X)) for net in nets)
    assert [p.name for p in tmp_path.iterdir()] == ["same.npz"]


@pytest.mark.slow
def test_sigterm_during_save_leaves_nothing(fitted, tmp_path):
    model = tmp_path / "m.npz"
    fitted.save(model)
    script = textwrap.dedent(f"""
        import os, signal
        import numpy as np
        import convredunet as crn
        from convredunet import io
        net = crn.load({str(model)!r})
        real = np.savez
        def slow(handle, **arrays):
            real(handle, **arrays)
            os.kill(os.getpid(), signal.SIGTERM)
        io.np.savez = slow
        net.save({str(tmp_path / 'out.npz')!r})
        print("not reached")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == -signal.SIGTERM, done.stderr
    assert "not reached" not in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]


def test_write_errors_are_one_line(fitted, tmp_path, capsys):
    model = tmp_path / "m.npz"
    fitted.save(model)
    status = cli.main(["export", str(model), "--out", "/proc/x.pt"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "cannot write '/proc/x.pt'" in err[0]
    status = cli.main(["fit", "--data", "mnist1d", "--out", str(tmp_path / "a" / "b.npz")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1
    assert f"folder '{tmp_path / 'a'}' does not exist" in err[0]
    assert "folder folder" not in err[0]


# --- 4. memory bounded by batch_size ---------------------------------------------------------
@pytest.mark.slow
def test_predict_memory_does_not_grow_with_the_number_of_samples(tmp_path):
    script = textwrap.dedent("""
        import resource, sys
        import numpy as np
        import convredunet as crn
        rng = np.random.default_rng(0)
        X = rng.standard_normal((20000, 64)).astype(np.float32)
        y = np.arange(len(X)) % 4
        net = crn.ReduNet1D(n_layers=2, n_channels=32, eps2=0.1, dtype="float32",
                            batch_size=100).fit(X[:400], y[:400])
        n = int(sys.argv[1])
        net.predict(X[:200])  # warm caches
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        net.predict(X[:n]); net.predict_proba(X[:n])
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
    """)
    grown = {}
    for n in (2000, 20000):
        done = subprocess.run([sys.executable, "-c", script, str(n)], capture_output=True,
                              text=True, timeout=300, check=True)
        grown[n] = int(done.stdout.split()[-1]) / 1024  # MiB
    # The input itself is there already; 10x the samples adds no more than a few MiB.
    assert grown[20000] - grown[2000] < 40, grown


def test_huge_label_is_refused_before_counting():
    Z, y = signals(20, (8,), 3, shifts_first=True)
    y = y.copy()
    y[0] = 50_000_000
    with pytest.raises(ValueError, match="largest label of 20 samples is at most 19"):
        crn.rate_reduction(Z[:, None], y)


# --- 5. thread safety --------------------------------------------------------------------------
def test_concurrent_inference_is_bit_identical_and_restores_threads(fitted, data):
    from threadpoolctl import threadpool_info

    X, _ = data
    X = np.tile(X, (20, 1))
    want = fitted.predict_proba(X)
    before = [(p["internal_api"], p["num_threads"]) for p in threadpool_info()]
    torch_before = torch.get_num_threads()
    results, errors = [], []

    def work():
        try:
            for _ in range(10):
                results.append(fitted.predict_proba(X))
        except Exception as exc:  # pragma: no cover - the failure being tested
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(results) == 40
    assert all(np.array_equal(r, want) for r in results)
    assert [(p["internal_api"], p["num_threads"]) for p in threadpool_info()] == before
    assert torch.get_num_threads() == torch_before


# --- 6. the torch backend speaks the same language -------------------------------------------
@pytest.mark.parametrize("device, match", [
    ("bogus", "device must be a torch device such as 'cpu' or 'cuda'"),
    ("meta", "device must be a CPU or CUDA device"),
])
def test_torch_devices_are_refused_with_value_errors(data, device, match):
    with pytest.raises(ValueError, match=match):
        _small(backend="torch", device=device).fit(*data)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_gpu_is_a_value_error(data):
    with pytest.raises(ValueError, match="needs CUDA, but torch sees no GPU"):
        _small(backend="torch", device="cuda").fit(*data)


def test_meta_tensor_input_is_refused(data):
    X, y = data
    with pytest.raises(ValueError, match="is on device meta"):
        _small(backend="torch").fit(torch.empty(X.shape, device="meta"), y)


def test_failed_cholesky_on_torch_is_a_value_error():
    Z, y = signals(12, (8,), 3, shifts_first=True)
    Z = torch.from_numpy(np.repeat(Z[:, None], 4, axis=0).astype(np.float32))
    with pytest.raises(ValueError, match="not numerically positive definite|would overflow"):
        crn.construct_operators(Z, torch.from_numpy(np.repeat(y, 4)), eps2=1e-36)


def test_fit_detaches_its_inputs(data):
    X, y = data
    Xt = torch.tensor(X, requires_grad=True)
    net = _small(backend="torch").fit(Xt, y)
    assert not any(layer.stacked.requires_grad for layer in net.layers_)
    out = net.transform(Xt)
    assert out.grad_fn is None and not out.requires_grad


def test_sizes_that_cannot_fit_are_refused_up_front(data):
    X, y = data
    with pytest.raises(ValueError, match=r"n_channels=50000 .* needs about .* GiB"):
        _small(n_channels=50000).fit(X, y)


def test_cli_oversized_network_is_one_line(capsys, tmp_path):
    status = cli.main(["fit", "--data", "mnist1d", "--n-channels", "50000", "--quiet",
                       "--out", str(tmp_path / "m.npz")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "GiB" in err[0]


# --- 7. fit is all or nothing ----------------------------------------------------------------
@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_failed_refit_keeps_the_previous_fit(data, monkeypatch, error):
    X, y = data
    net = _small(n_layers=3).fit(X, y)
    want = net.predict_proba(X)
    calls = []
    real = spectral.solve_spectra

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(spectral, "solve_spectra", flaky)
    with pytest.raises(type(error)):
        net.fit(X[::-1], y[::-1])
    assert len(net.layers_) == 3 and len(net.history_) == 3
    assert np.array_equal(net.predict_proba(X), want)


def test_failed_first_fit_leaves_the_estimator_unfitted(data, monkeypatch):
    X, y = data
    monkeypatch.setattr(spectral, "solve_spectra",
                        lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    net = _small()
    with pytest.raises(KeyboardInterrupt):
        net.fit(X, y)
    with pytest.raises(NotFittedError):
        net.predict(X)


# --- 8. words ----------------------------------------------------------------------------------
def test_mixed_label_types_are_named(data):
    X, _ = data
    y = np.array(["a", 1.0] * (len(X) // 2), dtype=object)
    with pytest.raises(TypeError, match="y must hold labels of one type"):
        _small().fit(X, y)


@pytest.mark.parametrize("seed, error", [(-1, ValueError), ("x", TypeError), (1.5, TypeError)])
def test_bad_random_state_is_named(data, seed, error):
    with pytest.raises(error, match="random_state must be"):
        _small(random_state=seed).fit(*data)


def test_cli_checks_the_test_set_before_fitting(tmp_path, capsys):
    X, y = signals(30, (16,), 3, shifts_first=True)
    data = tmp_path / "d.npz"
    np.savez(data, X=X, y=y, X_test=X[:, :8], y_test=y)
    status = cli.main(["fit", "--data", str(data), "--out", str(tmp_path / "m.npz"),
                       "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "X_test samples have shape (8,)" in err[0]
    assert not (tmp_path / "m.npz").exists()
