"""The reliability promises of the newer surfaces (docs/guide.md, "Reliability"): exported modules,
ONNX files, fine_tune, Dask input, the command line's --scheduler, and the files written.

Each test is named after the promise it holds; each compares with the in-process numpy path
(the reference) or pins the refusal's message.
"""
import http.server
import os
import socket
import stat
import threading
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import convredunet as crn  # noqa: E402
from convredunet import cli  # noqa: E402
from convredunet.export import export_onnx  # noqa: E402
from convredunet.finetune import fine_tune  # noqa: E402

warnings.filterwarnings("ignore", category=DeprecationWarning)


def _sinusoids(m=120, length=16, k=3, seed=0):
    """Noisy sinusoids of ``length`` samples, class ``c`` of frequency ``c + 1``."""
    rng = np.random.default_rng(seed)
    y = np.arange(m) % k
    t = np.arange(length)
    X = np.sin(2 * np.pi * (y[:, None] + 1) * t / length + rng.uniform(0, 6, (m, 1)))
    return X + 0.3 * rng.standard_normal((m, length)), y


def _net(**params):
    defaults = dict(n_layers=1, n_channels=8, kernel_size=3, n_components=2)
    return crn.ReduNet1D(**{**defaults, **params})


@pytest.fixture(scope="module")
def data():
    return _sinusoids()


@pytest.fixture(scope="module")
def net(data):
    return _net().fit(*data)


@pytest.fixture(scope="module")
def net2d():
    rng = np.random.default_rng(1)
    y = np.arange(30) % 2
    X = rng.standard_normal((30, 4, 4)) + y[:, None, None]
    return crn.ReduNet2D(n_layers=1, n_channels=4, kernel_size=3, n_components=2).fit(X, y), X


def _one_line_usage_error(status, err, pattern=None):
    import re

    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("convredunet: error: "), err
    if pattern:
        assert re.search(pattern, lines[0]), lines[0]


def _run_cli(capsys, *argv):
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


# --- 1. exported modules refuse wrong shapes -----------------------------------------------
def _accepted(module, shape):
    """The documented shapes: (b, *input_shape), or (b, *signal_shape) for one input channel."""
    tail = list(shape[1:])
    return tail == module.input_shape or (module.input_shape[0] == 1 and module.signal_ndim
                                          and tail == module.signal_shape)


@pytest.mark.slow
@pytest.mark.parametrize("classifier", ["subspace", "membership"])
@pytest.mark.parametrize("conv", ["fft", "direct"])
def test_module_refuses_shapes_the_network_refuses(data, conv, classifier):
    X, y = data
    net = _net(classifier=classifier).fit(X, y)
    module = net.to_torch(conv=conv)
    scripted = torch.jit.script(module)
    good = torch.from_numpy(X[:4]).float()
    for bad in (torch.randn(4, 17), torch.randn(4, 5), torch.randn(4, 40), torch.randn(4, 100),
                torch.randn(4, 2, 16), torch.randn(4, 8), torch.randn(16), torch.randn(4, 1, 1, 16)):
        with pytest.raises(ValueError):
            net.predict(bad.numpy())  # the reference refuses every one of them
        for method in ("predict", "forward", "class_scores", "membership", "logits"):
            with pytest.raises(ValueError, match=r"x must have shape \(batch, 1, 16\) or "
                                                 r"\(batch, 16\), got"):
                getattr(module, method)(bad)
            with pytest.raises(torch.jit.Error, match=r"x must have shape \(batch, 1, 16\)"):
                getattr(scripted, method)(bad)
    with torch.no_grad():
        for x in (good, good[:, None]):
            np.testing.assert_array_equal(module.predict(x).numpy(), net.predict(X[:4]))
            np.testing.assert_array_equal(scripted.predict(x).numpy(), net.predict(X[:4]))


def test_module_refuses_other_dtypes_and_non_finite_input(net, data):
    X, _ = data
    module = net.to_torch()
    with pytest.raises(ValueError, match="x must be a float32 tensor .* got float64"):
        module.predict(torch.from_numpy(X))
    with pytest.raises(ValueError, match="got non-float"):
        module.predict(torch.ones(2, 16, dtype=torch.int64))
    bad = torch.from_numpy(X[:5]).float()
    bad[3, 7] = float("nan")
    with pytest.raises(ValueError, match="only finite values; found 1 NaN .* sample 3"):
        module.predict(bad)
    with torch.no_grad():
        assert module.predict(torch.zeros(0, 16)).shape == (0,)
        assert module(torch.zeros(0, 1, 16)).shape == (0, 8, 16)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=st.lists(st.integers(0, 18), min_size=1, max_size=4))
def test_module_accepts_exactly_the_documented_shapes(net, net2d, shape):
    for fitted in (net, net2d[0]):
        module = fitted.to_torch(conv="direct")
        x = torch.randn(*shape)
        if _accepted(module, shape) and shape[0] > 0:
            with torch.no_grad():
                assert module.predict(x).shape == (shape[0],)
        elif not _accepted(module, shape):
            with pytest.raises(ValueError, match="x must have shape"):
                module.predict(x)


def test_module_2d_refuses_another_image_size(net2d):
    net, X = net2d
    for conv in ("fft", "direct"):
        module = net.to_torch(conv=conv)
        with pytest.raises(ValueError, match=r"\(batch, 1, 4, 4\) or \(batch, 4, 4\), got \(3, 4, 5\)"):
            module.predict(torch.randn(3, 4, 5))
        with torch.no_grad():
            np.testing.assert_array_equal(module.predict(torch.from_numpy(X).float()).numpy(),
                                          net.predict(X))


# --- 2. ONNX refuses wrong shapes and keeps the documented ones ----------------------------
def _session(path):
    ort = pytest.importorskip("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 4  # the refusal is the test's, not a log line
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("which", ["1d", "2d"])
def test_onnx_refuses_wrong_shapes_and_keeps_the_documented_ones(net, net2d, data, which,
                                                                  tmp_path):
    pytest.importorskip("onnx")
    fitted, X = (net, data[0]) if which == "1d" else net2d
    path = tmp_path / "net.onnx"
    export_onnx(fitted.to_torch(), path)
    session = _session(path)
    x = X[:6].astype(np.float32)
    n = len(x)
    documented = [x, x[:, None], x.reshape(n, -1)]
    for xi in documented:
        features, scores, labels = session.run(None, {"x": xi})
        np.testing.assert_array_equal(labels, fitted.predict(X[:6]))
        np.testing.assert_allclose(features, fitted.transform(X[:6]), rtol=1e-4, atol=1e-5)
    flat = x.reshape(n, -1)
    wrong = [flat[:, :8], flat.reshape(n, 2, -1), flat.reshape(n // 2, 2, -1), flat[0],
             np.zeros((n, 2) + x.shape[1:], np.float32), x[:, None, None],
             np.zeros((n, 17), np.float32)]
    rule = "x must have shape" + (" (batch, 1, 16) or (batch, 16)" if which == "1d" else
                                  " (batch, 1, 4, 4), (batch, 4, 4) or (batch, 16)")
    for xi in wrong:
        with pytest.raises(Exception) as info:
            session.run(None, {"x": xi})
        assert rule in str(info.value), (xi.shape, str(info.value))


# --- 3. export_onnx writes atomically --------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_interrupted_export_onnx_keeps_the_previous_file(net, tmp_path, monkeypatch, error):
    pytest.importorskip("onnx")
    path = tmp_path / "net.onnx"
    export_onnx(net.to_torch(), path)
    before = path.read_bytes()
    real_export = torch.onnx.export

    def interrupted(*args, **kwargs):
        real_export(*args, **kwargs)
        with open(args[2], "r+b") as handle:  # half written
            handle.truncate(100)
        raise error("interrupted")

    monkeypatch.setattr(torch.onnx, "export", interrupted)
    with pytest.raises(error):
        export_onnx(net.to_torch(), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.onnx"]


# --- 4. float64 ONNX is refused ----------------------------------------------------------------
def test_float64_onnx_is_refused(net, tmp_path, capsys):
    with pytest.raises(ValueError, match="export_onnx needs a float32 module: onnxruntime "
                                         "implements no float64 Conv"):
        export_onnx(net.to_torch(dtype=torch.float64), tmp_path / "m.onnx")
    model = tmp_path / "model.npz"
    net.save(model)
    status, _, err = _run_cli(capsys, "export", model, "--format", "onnx", "--dtype", "float64",
                              "--out", tmp_path / "m.onnx")
    _one_line_usage_error(status, err, "--format onnx needs --dtype float32")
    assert not (tmp_path / "m.onnx").exists()


# --- 5. the opset is validated -------------------------------------------------------------------
@pytest.mark.parametrize("opset, error, match", [
    (5, ValueError, "opset must be an integer from 9 to 20 .* got 5"),
    (21, ValueError, "opset must be an integer from 9 to 20 .* got 21"),
    ("x", TypeError, "opset must be an integer from 9 to 20, got 'x'"),
    (True, TypeError, "opset must be an integer from 9 to 20, got True"),
    (17.0, TypeError, "opset must be an integer from 9 to 20, got 17.0"),
])
def test_onnx_opset_is_validated(net, tmp_path, opset, error, match):
    with pytest.raises(error, match=match):
        export_onnx(net.to_torch(), tmp_path / "m.onnx", opset=opset)
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("opset", [9, 20])
def test_supported_opsets_run_with_the_library_numbers(net, data, tmp_path, opset):
    pytest.importorskip("onnx")
    X, _ = data
    export_onnx(net.to_torch(), tmp_path / "m.onnx", opset=opset)
    _, _, labels = _session(tmp_path / "m.onnx").run(None, {"x": X.astype(np.float32)})
    np.testing.assert_array_equal(labels, net.predict(X))


# --- 6. extreme inputs: the library's numerics; fine_tune without NaN ------------------------
@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(exponent=st.integers(-45, 38), conv=st.sampled_from(["fft", "direct"]))
def test_module_keeps_the_library_numerics_at_any_float32_scale(data, exponent, conv):
    X, y = data
    net32 = _float32_net(X, y)
    x = (X[:8] * 10.0 ** exponent).astype(np.float32)
    if not np.any(x):
        return
    module = net32.to_torch(conv=conv)
    with torch.no_grad():
        features = module(torch.from_numpy(x)).numpy()
        labels = module.predict(torch.from_numpy(x)).numpy()
    reference = net32.transform(x)
    assert np.isfinite(features).all()
    np.testing.assert_allclose(features, reference, atol=2e-4)
    np.testing.assert_array_equal(labels, net32.predict(x))


_NET32 = {}


def _float32_net(X, y):
    if "net" not in _NET32:
        _NET32["net"] = _net(dtype="float32").fit(X, y)
    return _NET32["net"]


def test_power_of_two_scales_are_exact(data):
    X, y = data
    module = _net(lifting_bias=None).fit(X, y).to_torch(dtype=torch.float64)
    x = torch.from_numpy(X[:10])
    with torch.no_grad():
        reference = module(x)
        for power in (-600, -100, 100, 600):
            assert torch.equal(module(x * 2.0 ** power), reference)
    _, scale = module.prescale(x * 2.0 ** 300)
    mantissa, _ = np.frexp(scale.numpy())
    assert np.all(mantissa == 0.5)


@pytest.mark.slow
def test_fine_tune_on_extreme_inputs_stays_finite(data):
    X, y = data
    net32 = _float32_net(X, y)
    x = (X * 1e38).astype(np.float32)
    for fraction in (0, 0.2):
        tuned = fine_tune(net32.to_torch(), x, y, epochs=1, validation_fraction=fraction)
        assert all(torch.isfinite(p).all() for p in tuned.parameters())
        assert all(np.isfinite(h["loss"]) for h in tuned.fine_tune_history[1:])
        with torch.no_grad():
            predicted = tuned.predict(torch.from_numpy(x)).numpy()
        assert len(np.unique(predicted)) > 1  # not every prediction class 0
    with pytest.raises(ValueError, match=r"X holds values up to [\d.]+e\+300, beyond the range of "
                                         "the module's dtype float32"):
        fine_tune(net32.to_torch(), X * 1e300, y, epochs=1)


def test_fine_tune_refuses_a_non_finite_loss(net, data, monkeypatch):
    from convredunet import finetune

    X, y = data
    module = net.to_torch(dtype=torch.float64)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    real = finetune._class_scores
    calls = []

    def poisoned(m, x):
        calls.append(1)
        scores = real(m, x)
        return scores * float("nan") if m.training and len(calls) > 3 else scores

    monkeypatch.setattr(finetune, "_class_scores", poisoned)
    with pytest.raises(ValueError, match=r"the training loss is nan at epoch 1, batch \d+.*"
                                         "The module passed in is unchanged"):
        fine_tune(module, X, y, epochs=2, batch_size=16, validation_fraction=0)
    for key, value in module.state_dict().items():
        assert torch.equal(value, before[key])


def test_fine_tune_refuses_weights_that_become_non_finite(net, data, monkeypatch):
    X, y = data
    real_step = torch.optim.Adam.step
    steps = []

    def last_step_overflows(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        steps.append(1)
        if len(steps) == 2:  # the epoch's last batch: no loss sees it
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("inf"))
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", last_step_overflows)
    with pytest.raises(ValueError, match="fine_tune stopped: epoch 1 left non-finite weights "
                                         r"\(lifting\.conv\.\S+\)"):
        fine_tune(net.to_torch(), X, y, epochs=1, batch_size=64, validation_fraction=0)


# --- 7. fine_tune's parameters are validated --------------------------------------------------
@pytest.mark.parametrize("kwargs, error, match", [
    ({"student_step": float("nan")}, ValueError,
     "student_step must be a positive finite number or None, got nan"),
    ({"student_step": -1}, ValueError,
     "student_step must be a positive finite number or None, got -1.0"),
    ({"student_step": "x"}, TypeError,
     "student_step must be a positive finite number or None, got 'x'"),
    ({"lr": float("nan")}, ValueError, r"lr must be a number in \(0, 1\] .*got nan"),
    ({"lr": 1e38}, ValueError, r"lr must be a number in \(0, 1\] .*got 1e\+38"),
    ({"lr": "fast"}, TypeError, r"lr must be a number in \(0, 1\] .*got 'fast'"),
    ({"epochs": 2.0}, TypeError, "epochs must be a positive integer, got 2.0"),
    ({"epochs": -3}, ValueError, "epochs must be a positive integer, got -3"),
    ({"validation_fraction": float("nan")}, ValueError,
     r"validation_fraction must be a number in \[0, 1\), got nan"),
    ({"label_weight": "half"}, TypeError, r"label_weight must be a number in \[0, 1\]"),
    ({"trainable_layers": 5}, ValueError,
     r"trainable_layers must be at most the module's 1 layer\(s\), got 5"),
    ({"verbose": "yes"}, TypeError, "verbose must be True or False, got 'yes'"),
    ({"callback": 3}, TypeError, "callback must be a callable or None, got int"),
    ({"teacher": "net"}, TypeError, "teacher must be a fitted ReduNet1D, ReduNet2D or "
                                    "ReduNetVector"),
])
def test_fine_tune_names_each_bad_parameter(net, data, kwargs, error, match):
    X, y = data
    with pytest.raises(error, match=match):
        fine_tune(net.to_torch(), X, y, **kwargs)


# --- 8. a teacher of another shape -------------------------------------------------------------
@pytest.mark.parametrize("shape", [(120, 17), (120, 2, 16)])
def test_fine_tune_refuses_a_teacher_of_another_shape(net, data, shape):
    X, y = data
    rng = np.random.default_rng(0)
    teacher = _net().fit(rng.standard_normal(shape), y)
    with pytest.raises(ValueError, match=r"teacher was fitted on samples of shape "
                                         rf"{tuple(teacher.input_shape_)}".replace("(", r"\(")
                                         .replace(")", r"\)")):
        fine_tune(net.to_torch(), X, y, teacher=teacher, epochs=1)
    other = _net().fit(X, y + 1)
    with pytest.raises(ValueError, match=r"teacher must have the module's classes \(\[0, 1, 2\]"):
        fine_tune(net.to_torch(), X, y, teacher=other, epochs=1)


# --- 9. complex X, empty X, bad seeds ------------------------------------------------------------
def test_fine_tune_refuses_complex_and_empty_x(net, data):
    X, y = data
    with pytest.raises(ValueError, match="Complex data not supported: X must be real"):
        fine_tune(net.to_torch(), X + 1j, y, epochs=1)
    with pytest.raises(ValueError, match=r"X is empty: found array with 0 sample\(s\)"):
        fine_tune(net.to_torch(), X[:0], y[:0], epochs=1)
    bad = X.copy()
    bad[5, 2] = np.inf
    with pytest.raises(ValueError, match="X must contain only finite values.*sample 5"):
        fine_tune(net.to_torch(), bad, y, epochs=1)
    tuned = fine_tune(net.to_torch(), X, y[:, None], epochs=1,
                      validation_fraction=0)  # (n, 1) labels, as numpy
    assert len(tuned.fine_tune_history) == 2


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.one_of(st.integers(-2 ** 70, -1), st.integers(2 ** 63, 2 ** 70),
                      st.floats(allow_nan=True), st.text(max_size=3), st.just(True)))
def test_fine_tune_names_a_bad_random_state(net, data, seed):
    X, y = data
    with pytest.raises((TypeError, ValueError), match="random_state must be a non-negative "
                                                      "integer seed below 2\\*\\*63"):
        fine_tune(net.to_torch(), X, y, epochs=1, random_state=seed)


# --- 10-13. Dask -----------------------------------------------------------------------------------
da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, memory_limit="4GiB") as cluster, \
            distributed.Client(cluster) as c:
        yield c


def _sync():
    import dask

    return dask.config.set(scheduler="sync")


def _chunks(draw_sizes, n):
    """Chunk sizes summing to ``n``, zeros allowed, from a list of cut points."""
    cuts = sorted(min(c, n) for c in draw_sizes)
    edges = [0] + cuts + [n]
    return tuple(b - a for a, b in zip(edges, edges[1:]))


@pytest.mark.slow
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(0, 60), min_size=1, max_size=5))
def test_dask_blocks_of_any_size_including_zero(data, cuts):
    X, y = data
    X, y = X[:60], y[:60]
    chunks = _chunks(cuts, 60)
    reference = _net(n_layers=2).fit(X, y)
    with _sync():
        model = _net(n_layers=2).fit(da.from_array(X, chunks=(chunks, 16)),
                                     da.from_array(y, chunks=(chunks,)))
        for a, b in zip(reference.history_, model.history_):
            assert abs(a["R"] - b["R"]) <= 1e-12 * abs(a["R"])
            assert a["train_accuracy"] == b["train_accuracy"]
        Xd = da.from_array(X, chunks=(chunks, 16))
        np.testing.assert_array_equal(model.predict(Xd).compute(), reference.predict(X))
        np.testing.assert_allclose(model.transform(Xd).compute(), reference.transform(X),
                                   atol=1e-12)


@pytest.mark.slow
def test_dask_empty_leading_block_after_boolean_indexing(client, data):
    X, y = data
    keep = np.arange(120) >= 30
    Xd = da.from_array(X, chunks=30)[da.from_array(keep, chunks=30)]
    yd = da.from_array(y, chunks=30)[da.from_array(keep, chunks=30)]
    Xd.compute_chunk_sizes()
    yd.compute_chunk_sizes()
    assert Xd.chunks[0][0] == 0
    reference = _net().fit(X[30:], y[30:])
    for labels in (y[30:], yd):
        model = _net().fit(Xd, labels)
        assert model.history_[0]["R"] == pytest.approx(reference.history_[0]["R"], rel=1e-12)
        np.testing.assert_array_equal(model.predict(Xd).compute(), reference.predict(X[30:]))


@pytest.mark.slow
def test_dask_memory_refusal_comes_before_any_work(data):
    X, y = data
    ran = []

    def watched(block):
        ran.append(len(block))
        return block

    # The sync scheduler runs every task here, where ``ran`` sees it.
    Xd = da.from_array(X, chunks=30).map_blocks(watched, dtype=X.dtype,
                                                meta=np.empty((0, 16)))
    with _sync():
        with pytest.raises(ValueError, match="n_channels=20000 .* needs about .* GiB .* of "
                                             "operators per layer"):
            crn.ReduNet1D(n_layers=1, n_channels=20000, kernel_size=3).fit(Xd, y)
        with pytest.raises(ValueError, match="needs features of at least 2 channels"):
            crn.ReduNet1D(n_layers=1, n_channels=1, kernel_size=3).fit(Xd, y)
        assert not ran
        _net().fit(Xd, y)  # the same array does run when the fit is possible
        assert sum(ran) >= 120


@pytest.mark.slow
def test_dask_fit_refuses_a_layer_beyond_a_worker_memory_limit(client, data):
    X, y = data
    # One layer of 4000 channels: about 9 GiB of operators, beyond the workers' 4 GiB.
    with pytest.raises(ValueError, match=r"n_channels=4000 .* GiB of operators per layer\), "
                                         r"more than the .* GiB (memory limit of worker "
                                         r"tcp://|of memory of cpu)"):
        crn.ReduNet1D(n_layers=1, n_channels=4000, kernel_size=3).fit(
            da.from_array(X, chunks=30), y)


def _cluster_state(c):
    return (sum(c.run(lambda dask_worker: len(dask_worker.data)).values()), len(c.futures))


def _settled(c, expected, tries=200):
    import time

    state = _cluster_state(c)
    for _ in range(tries):  # the releases travel to the workers asynchronously
        if state == expected:
            break
        time.sleep(0.05)
        state = _cluster_state(c)
    return state


@pytest.mark.slow
def test_failed_dask_fits_leave_nothing_on_the_cluster(client, data, monkeypatch):
    from convredunet import distributed as dask_paths

    X, y = data
    baseline = _settled(client, (0, 0))
    assert baseline == (0, 0)

    def fail(block, block_info=None):
        if block_info[0]["chunk-location"][0] == 2:
            raise RuntimeError("sensor 2 is unplugged")
        return block

    errors = []
    for _ in range(3):  # a worker's error, after the input and labels were persisted
        broken = da.from_array(X, chunks=30).map_blocks(fail, dtype=X.dtype)
        with pytest.raises(RuntimeError, match="sensor 2 is unplugged") as info:
            _net(n_layers=2).fit(broken, da.from_array(y, chunks=30))
        errors.append(info.value)  # kept, as an interactive Python keeps sys.last_value
    real_solve = dask_paths._solve
    calls = []

    def second_layer_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) % 2 == 0:
            raise KeyboardInterrupt
        return real_solve(*args, **kwargs)

    monkeypatch.setattr(dask_paths, "_solve", second_layer_fails)
    for _ in range(2):  # Ctrl-C on the client, with features and a layer on the workers
        with pytest.raises(KeyboardInterrupt) as info:
            _net(n_layers=2).fit(da.from_array(X, chunks=30), y)
        errors.append(info.value)
    assert _settled(client, (0, 0)) == (0, 0)
    assert len(errors) == 5


@pytest.mark.slow
def test_dask_score_checks_sample_weight(client, data, net):
    X, y = data
    Xd = da.from_array(X, chunks=50)
    weight = np.linspace(0, 1, 120)
    assert net.score(Xd, y, sample_weight=weight) == pytest.approx(
        net.score(X, y, sample_weight=weight), rel=1e-12)
    assert net.score(Xd, y, sample_weight=da.from_array(weight, chunks=7)) == pytest.approx(
        net.score(X, y, sample_weight=weight), rel=1e-12)
    with pytest.raises(ValueError, match=r"sample_weight must have one weight per sample: X has "
                                         r"120 samples, sample_weight has shape \(50,\)"):
        net.score(Xd, y, sample_weight=np.ones(50))
    with pytest.raises(ValueError, match="sample_weight sums to 0"):
        net.score(Xd, y, sample_weight=np.zeros(120))
    with pytest.raises(ValueError, match="sample_weight must contain only finite values"):
        net.score(Xd, y, sample_weight=np.full(120, np.nan))


@pytest.mark.slow
def test_dask_rate_reduction_missing_class_names_the_class(client, data):
    X, y = data
    labels = np.where(y == 1, 2, y)
    Zd = da.from_array(X[:, None], chunks=30)
    message = (r"class 1 has no samples; y must use labels 0..2 with every class present "
               r"\(k=3 inferred from the largest label\)")
    with pytest.raises(ValueError, match=message):
        crn.rate_reduction(X[:, None], labels)
    with pytest.raises(ValueError, match=message):
        crn.rate_reduction(Zd, da.from_array(labels, chunks=30))
    with pytest.raises(ValueError, match="the largest label of 120 samples is at most 119"):
        crn.rate_reduction(Zd, da.from_array(np.where(y == 1, 500, y), chunks=30))


@pytest.mark.slow
def test_dask_refuses_float16_and_accepts_column_labels_as_in_memory(client, data):
    from sklearn.exceptions import DataConversionWarning

    X, y = data
    with pytest.raises(TypeError, match="X must be a float32 or float64 array, got dtype float16"):
        _net().fit(X.astype(np.float16), y)
    with pytest.raises(TypeError, match="X must be a float32 or float64 array, got dtype float16"):
        _net().fit(da.from_array(X.astype(np.float16), chunks=30), y)
    with pytest.warns(DataConversionWarning, match="column-vector y"):
        reference = _net().fit(X, y[:, None])
    with pytest.warns(DataConversionWarning, match="column-vector y"):
        model = _net().fit(da.from_array(X, chunks=30), da.from_array(y[:, None], chunks=30))
    assert model.history_[0]["R"] == pytest.approx(reference.history_[0]["R"], rel=1e-12)


@pytest.mark.slow
def test_dask_analysis_methods_are_lazy_and_never_load_x_whole(client, data, net, monkeypatch):
    X, y = data
    Xd = da.from_array(X, chunks=25)
    expected_distances = net.subspace_distances(X)
    expected_layers = net.layer_features(X)
    expected_rates = net.rate_history(X, y)

    def loaded(*args, **kwargs):
        raise AssertionError("the Dask input was brought to the client whole")

    monkeypatch.setattr(da.Array, "__array__", loaded)
    distances = net.subspace_distances(Xd)
    layers = net.layer_features(Xd)
    assert isinstance(distances, da.Array) and all(isinstance(z, da.Array) for z in layers)
    rates = net.rate_history(Xd, da.from_array(y, chunks=40))
    np.testing.assert_allclose(distances.compute(), expected_distances, rtol=1e-10)
    for got, want in zip(layers, expected_layers):
        np.testing.assert_allclose(got.compute(), want, atol=1e-12)
    for got, want in zip(rates, expected_rates):
        assert got.expansion == pytest.approx(want.expansion, rel=1e-12)
        assert got.compression == pytest.approx(want.compression, rel=1e-12)
    with pytest.raises(ValueError, match="y holds labels the network was not fitted on"):
        net.rate_history(Xd, y + 5)


# --- 14-16. the command line's --scheduler ---------------------------------------------------
def _silent_server():
    """A TCP server that accepts and never says anything."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held = []

    def serve():
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=serve, daemon=True).start()
    return server, server.getsockname()[1]


def _http_400_server():
    """A TCP server that answers anything with ``HTTP/1.1 400`` and hangs up."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)

    def serve():
        while True:
            try:
                conn = server.accept()[0]
            except OSError:
                return
            conn.recv(64)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return server, server.getsockname()[1]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["nothing", "http", "http400"])
def test_scheduler_address_without_a_dask_scheduler_is_one_line(kind, tmp_path, capsys):
    if kind == "nothing":
        server, port = _silent_server()
        close = server.close
    elif kind == "http400":
        server, port = _http_400_server()
        close = server.close
    else:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _QuietHandler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.server_address[1]

        def close():
            server.shutdown()
            server.server_close()
    try:
        status, _, err = _run_cli(capsys, "fit", "--data", "mnist1d:100", "--scheduler",
                                  f"tcp://127.0.0.1:{port}", "--connect-timeout", "1",
                                  "--out", tmp_path / "m.npz")
    finally:
        close()
    _one_line_usage_error(status, err, rf"--scheduler 'tcp://127.0.0.1:{port}': no Dask "
                                       "scheduler answered")
    assert not (tmp_path / "m.npz").exists()


@pytest.mark.slow
def test_scheduler_that_is_a_worker_is_named(client, tmp_path, capsys):
    worker = next(iter(client.scheduler_info()["workers"]))
    status, _, err = _run_cli(capsys, "fit", "--data", "mnist1d:100", "--scheduler", worker,
                              "--out", tmp_path / "m.npz")
    _one_line_usage_error(status, err, "is not a Dask scheduler .* it is Worker")


@pytest.fixture()
def no_cluster(monkeypatch):
    """Any LocalCluster started fails the test."""
    def started(*args, **kwargs):
        raise AssertionError("a cluster was started")

    monkeypatch.setattr(distributed, "LocalCluster", started)


@pytest.mark.parametrize("command", ["fit", "evaluate"])
def test_impossible_sizes_are_refused_before_a_cluster_starts(command, net, tmp_path, capsys,
                                                              no_cluster):
    model = tmp_path / "model.npz"
    net.save(model)
    argv = (["fit", "--out", tmp_path / "new.npz"] if command == "fit" else
            ["evaluate", model])
    status, _, err = _run_cli(capsys, *argv, "--data", "mnist1d:1000000000000", "--scheduler",
                              "local:1")
    _one_line_usage_error(status, err, r"--data mnist1d:1000000000000.* needs about [\d,.]+ GiB")


def test_torch_backend_with_scheduler_is_refused_before_a_cluster_starts(tmp_path, capsys,
                                                                         no_cluster):
    status, _, err = _run_cli(capsys, "fit", "--data", "mnist1d:1000", "--scheduler", "local:2",
                              "--backend", "torch", "--out", tmp_path / "m.npz")
    _one_line_usage_error(status, err, "--backend torch is not available with --scheduler")
    status, _, err = _run_cli(capsys, "fit", "--data", "mnist1d:5", "--scheduler", "local:2",
                              "--out", tmp_path / "m.npz")
    _one_line_usage_error(status, err, "needs N >= 10 signals, got 5")


# --- 17. file modes honour the umask ---------------------------------------------------------
@pytest.fixture()
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.slow
def test_written_files_honour_the_umask_and_force_keeps_the_mode(net, data, tmp_path, capsys,
                                                                 umask_022):
    pytest.importorskip("onnx")
    X, y = data
    model = tmp_path / "model.npz"
    net.save(model)
    assert _mode(model) == 0o644
    np.savez(tmp_path / "data.npz", X=X, y=y)
    outputs = []
    for fmt, name in (("torchscript", "m.pt"), ("state_dict", "m.sd"), ("onnx", "m.onnx")):
        status, _, err = _run_cli(capsys, "export", model, "--format", fmt,
                                  "--out", tmp_path / name)
        assert status == 0, err
        outputs.append(tmp_path / name)
    status, _, err = _run_cli(capsys, "fit", "--data", tmp_path / "data.npz", "--n-layers", "1",
                              "--n-channels", "4", "--n-components", "2", "--quiet",
                              "--out", tmp_path / "fit.npz")
    assert status == 0, err
    status, _, err = _run_cli(capsys, "finetune", model, "--data", tmp_path / "data.npz",
                              "--epochs", "1", "--quiet", "--validation-fraction", "0",
                              "--out", tmp_path / "tuned.pt")
    assert status == 0, err
    outputs += [tmp_path / "fit.npz", tmp_path / "tuned.pt"]
    from convredunet._files import atomic_dir
    from convredunet.figures import plot_rates

    plot_rates(net.history_, tmp_path / "rates.png")
    with atomic_dir(tmp_path / "run") as folder:
        net.save(folder / "model.npz")
    outputs += [tmp_path / "rates.png", tmp_path / "run" / "model.npz"]
    assert {p.name: _mode(p) for p in outputs} == {p.name: 0o644 for p in outputs}
    assert _mode(tmp_path / "run") == 0o755
    # --force (and any rewrite) keeps the replaced file's permission bits.
    for path, mode in ((model, 0o600), (tmp_path / "m.onnx", 0o640)):
        os.chmod(path, mode)
    net.save(model)
    status, _, err = _run_cli(capsys, "export", model, "--format", "onnx", "--force",
                              "--out", tmp_path / "m.onnx")
    assert status == 0, err
    assert (_mode(model), _mode(tmp_path / "m.onnx")) == (0o600, 0o640)
    os.chmod(tmp_path / "run", 0o700)
    with atomic_dir(tmp_path / "run", replace=True) as folder:
        (folder / "a.txt").write_text("new")
    assert _mode(tmp_path / "run") == 0o700 and (tmp_path / "run" / "a.txt").exists()


def test_umask_077_gives_private_files(net, tmp_path):
    previous = os.umask(0o077)
    try:
        net.save(tmp_path / "model.npz")
    finally:
        os.umask(previous)
    assert _mode(tmp_path / "model.npz") == 0o600


# --- 18. the operator cache sees every edit ----------------------------------------------------
@pytest.mark.parametrize("edit", ["data_mul", "data_copy", "set_data", "in_place"])
def test_operator_cache_sees_edits_through_data(net, data, edit):
    X, _ = data
    module = net.to_torch(dtype=torch.float64, conv="fft")
    x = torch.from_numpy(X[:10])
    with torch.no_grad():
        first = module.class_scores(x)
        assert module._ops_cache is not None
        weight = module.layers[0].conv.weight
        if edit == "data_mul":
            weight.data.mul_(0)
        elif edit == "data_copy":
            weight.data.copy_(torch.flip(weight.data, dims=[0]))
        elif edit == "set_data":
            weight.data = weight.data * 0.5
        else:
            weight.mul_(-1)
        after = module.class_scores(x)
    fresh = module.class_scores(x).detach()  # autograd on: operators rebuilt, never cached
    torch.testing.assert_close(after, fresh, rtol=0, atol=0)
    assert not torch.equal(after, first)
