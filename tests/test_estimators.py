"""ReduNet1D / ReduNet2D / ReduNetVector: construction, invariance, save/load, bad input."""
import numpy as np
import pytest
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks

import convredunet as crn
from convredunet.backend import NumpyBackend
from convredunet.testing import assert_shift_equivariant, assert_shift_invariant

from conftest import rel_err, signals

BACKEND = NumpyBackend()


# --- scikit-learn conventions ------------------------------------------------------------
# check_classifiers_train asks for > 0.83 training accuracy on 2-feature Gaussian blobs
# with 3 classes. A ReduNet classifies by compression onto class subspaces of the
# normalized features; in 2 dimensions 3 classes cannot occupy separate subspaces
# (measured: 0.72 for every eps2 in 0.1..0.001), so that check does not apply.
_NOT_APPLICABLE = {"check_classifiers_train": "3 classes cannot hold separate subspaces "
                                              "of a 2-dimensional feature space"}


@parametrize_with_checks(
    [crn.ReduNetVector(n_layers=3), crn.ReduNet1D(eps2=0.1, n_layers=3, n_channels=4, kernel_size=1),
     crn.ReduNet1D(eps2=0.1, n_layers=3, n_channels=None, classifier="membership")],
    expected_failed_checks=lambda est: _NOT_APPLICABLE,
)
def test_sklearn_conventions(estimator, check):
    check(estimator)


def test_clone_and_params():
    from sklearn.base import clone

    net = crn.ReduNet1D(n_layers=3, eps2=0.01)
    twin = clone(net)
    assert twin.get_params() == net.get_params()
    twin.set_params(n_channels=8)
    assert twin.n_channels == 8 and net.n_channels == "auto"


# --- invariance ----------------------------------------------------------------------
def test_lifting_bias_is_a_constant_input_channel():
    """lifting_bias=b equals lifting with an extra constant input channel of value b."""
    X, y = signals(30, (1, 10), k=3)
    with_bias = crn.ReduNet1D(eps2=0.1, n_layers=2, n_channels=5, kernel_size=3, lifting_bias=0.8)
    with_bias.fit(X, y)
    constant = np.concatenate([X, np.full_like(X, 0.8)], axis=1)
    explicit = crn.ReduNet1D(eps2=0.1, n_layers=2, n_channels=5, kernel_size=3,
                             lifting_bias=None).fit(constant, y)
    assert rel_err(with_bias.transform(X), explicit.transform(constant)) < 1e-10


def test_1d_equivariance_and_invariance_on_all_shifts():
    X, y = signals(60, (2, 12), k=3)
    net = crn.ReduNet1D(eps2=0.1, n_layers=4, n_channels=6, kernel_size=5).fit(X, y)
    X_test, _ = signals(6, (2, 12), k=3, seed=1)
    assert_shift_equivariant(net.transform, X_test, ndim=1, rtol=1e-9)
    assert_shift_invariant(net.predict, X_test, ndim=1)
    assert_shift_invariant(lambda x: np.round(net.predict_proba(x), 12), X_test, ndim=1)


def test_2d_equivariance_and_invariance_on_all_shifts():
    X, y = signals(40, (6, 5), k=2)
    net = crn.ReduNet2D(n_layers=3, n_channels=5, kernel_size=3, lifting_bias=0.5).fit(X, y)
    assert net.lifting_.bias.shape == (5,)
    X_test, _ = signals(4, (6, 5), k=2, seed=1)
    assert_shift_equivariant(net.transform, X_test, ndim=2, rtol=1e-9)
    assert_shift_invariant(net.predict, X_test, ndim=2)


def test_equivariance_helper_catches_a_non_equivariant_map():
    X = np.random.default_rng(0).standard_normal((3, 8))
    with pytest.raises(AssertionError, match=r"not shift-equivariant: shift \(1,\)"):
        assert_shift_equivariant(lambda x: x * np.arange(8), X, ndim=1)
    with pytest.raises(AssertionError, match="not shift-invariant"):
        assert_shift_invariant(lambda x: x[:, 0] > 0, X, ndim=1)


# --- construction ----------------------------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda: (crn.ReduNetVector(n_layers=6, eps2=0.5), signals(60, (12,), k=3)),
    lambda: (crn.ReduNet1D(eps2=0.1, n_layers=6, n_channels=None), signals(60, (3, 10), k=3)),
], ids=["vector", "1d"])
def test_delta_R_increases_over_first_layers(make):
    net, (X, y) = make()
    net.fit(X, y)
    delta = [h["delta_R"] for h in net.history_]
    assert all(b > a for a, b in zip(delta[:4], delta[1:5])), delta
    assert set(net.history_[0]) == {"layer", "delta_R", "R", "R_c", "train_accuracy"}
    assert net.history_[0]["delta_R"] == pytest.approx(
        net.history_[0]["R"] - net.history_[0]["R_c"])


def _circular_apply(kernel, z):
    out = np.zeros((kernel.shape[0],) + z.shape[1:])
    for s in range(z.shape[-1]):
        out += np.einsum("ab,bt->at", kernel[:, :, s], np.roll(z, s, axis=-1))
    return out


def test_first_layer_by_hand_with_label_membership():
    X, y = signals(12, (2, 7), k=2)
    eta, lmbda, eps2 = 0.5, 20.0, 0.2
    net = crn.ReduNet1D(n_layers=2, n_channels=None, membership="label", eta=eta,
                        lmbda=lmbda, eps2=eps2).fit(X, y)
    Z0 = X / np.linalg.norm(X.reshape(12, -1), axis=1)[:, None, None]
    ops = crn.construct_operators(Z0, y, eps2=eps2, domain="spatial")
    E, C = ops.kernels()
    gamma = np.bincount(y) / len(y)
    Z1 = np.empty_like(Z0)
    for i, z in enumerate(Z0):
        c = np.stack([_circular_apply(C[j], z) for j in range(2)])
        norms = np.linalg.norm(c.reshape(2, -1), axis=1)
        pi = np.exp(-lmbda * norms) / np.exp(-lmbda * norms).sum()
        step = z + eta * (_circular_apply(E, z) - gamma[y[i]] * c[y[i]])
        Z1[i] = step / np.linalg.norm(step)
        # The layer's estimated membership on the same features.
        _, pi_layer = net.layers_[0](BACKEND, Z0[i:i + 1])
        np.testing.assert_allclose(pi_layer[0], pi, rtol=1e-9, atol=1e-12)
    got, _ = net.layers_[0](BACKEND, Z0, labels=y)
    np.testing.assert_allclose(got, Z1, rtol=1e-10, atol=1e-12)
    # The second layer was built from exactly these features.
    second = crn.construct_operators(Z1, y, eps2=eps2)
    e_hat, c_hat = net.layers_[1].operators_hat(BACKEND)
    assert rel_err(e_hat, second.E_hat) < 1e-10
    assert rel_err(c_hat, second.C_hat) < 1e-10
    assert net.history_[1]["delta_R"] == pytest.approx(second.rates.delta, rel=1e-10)


def test_torch_backend_matches_numpy():
    torch = pytest.importorskip("torch")
    X, y = signals(30, (2, 10), k=3)
    a = crn.ReduNet1D(eps2=0.1, n_layers=3, n_channels=5, kernel_size=3).fit(X, y)
    b = crn.ReduNet1D(eps2=0.1, n_layers=3, n_channels=5, kernel_size=3, backend="torch").fit(X, y)
    assert rel_err(b.transform(X), a.transform(X)) < 1e-9
    np.testing.assert_array_equal(a.predict(X), b.predict(X))
    out = b.transform(torch.from_numpy(X))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64


def test_float32_close_to_float64():
    X, y = signals(30, (2, 10), k=3)
    a = crn.ReduNet1D(eps2=0.1, n_layers=3, n_channels=5, kernel_size=3).fit(X, y)
    b = crn.ReduNet1D(eps2=0.1, n_layers=3, n_channels=5, kernel_size=3, dtype="float32").fit(X, y)
    Zb = b.transform(X)
    assert Zb.dtype == np.float32
    assert rel_err(Zb, a.transform(X)) < 1e-4


def test_string_labels_and_proba():
    X, y = signals(30, (2, 10), k=3)
    names = np.array(["cat", "dog", "eel"])[y]
    net = crn.ReduNet1D(eps2=0.1, n_layers=3, n_channels=5, kernel_size=3,
                        classifier="membership").fit(X, names)
    assert set(net.predict(X)) <= set(names)
    proba = net.predict_proba(X)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    np.testing.assert_array_equal(net.classes_[proba.argmax(1)], net.predict(X))


# --- save / load ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fitted():
    X, y = signals(30, (2, 10), k=3)
    return crn.ReduNet1D(eps2=0.1, n_layers=3, n_channels=8, kernel_size=3).fit(X, y), X


def test_save_load_round_trip_bit_for_bit(fitted, tmp_path):
    net, X = fitted
    net.save(tmp_path / "model.npz")
    twin = crn.load(tmp_path / "model.npz")
    assert type(twin) is type(net) and twin.get_params() == net.get_params()
    np.testing.assert_array_equal(twin.transform(X), net.transform(X))
    np.testing.assert_array_equal(twin.predict_proba(X), net.predict_proba(X))
    assert twin.history_ == net.history_
    X2, y2 = signals(20, (1, 6, 5), k=2)
    net2 = crn.ReduNet2D(n_layers=2, n_channels=3, kernel_size=3, lifting_bias=1.0).fit(X2, y2)
    net2.save(tmp_path / "m2.npz")
    np.testing.assert_array_equal(crn.load(tmp_path / "m2.npz").transform(X2), net2.transform(X2))


def test_damaged_model_files(fitted, tmp_path):
    net, _ = fitted
    good = tmp_path / "good.npz"
    net.save(good)
    data = good.read_bytes()
    with pytest.raises(FileNotFoundError, match="model file '.*missing.npz' does not exist"):
        crn.load(tmp_path / "missing.npz")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated.npz' is not a readable convredunet model"):
        crn.load(truncated)
    corrupted = tmp_path / "corrupted.npz"
    middle = len(data) // 2
    corrupted.write_bytes(data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 64])
                          + data[middle + 64:])
    with pytest.raises(ValueError, match="corrupted.npz'"):
        crn.load(corrupted)
    other = tmp_path / "other.npz"
    np.savez(other, X=np.zeros(3))
    with pytest.raises(ValueError, match="other.npz' is not a convredunet model"):
        crn.load(other)
    with np.load(good) as handle:
        arrays = {key: handle[key] for key in handle.files}
    newer = tmp_path / "newer.npz"
    np.savez(newer, **{**arrays, "format_version": np.array(99)})
    with pytest.raises(ValueError, match="newer.npz' has format version 99; this convredunet "
                                         "reads versions 1, 2, 3"):
        crn.load(newer)
    lacking = tmp_path / "lacking.npz"
    np.savez(lacking, **{k: v for k, v in arrays.items() if k != "layer1/stacked_packed"})
    with pytest.raises(ValueError, match="lacking.npz' lacks the entry 'layer1/stacked_packed'"):
        crn.load(lacking)
    text = tmp_path / "text.npz"
    text.write_text("hello")
    with pytest.raises(ValueError, match="text.npz' is not a readable convredunet model"):
        crn.load(text)


def test_save_refuses_unfitted(tmp_path):
    with pytest.raises(NotFittedError):
        crn.ReduNet1D().save(tmp_path / "x.npz")
    assert not (tmp_path / "x.npz").exists()


# --- bad input ------------------------------------------------------------------------------
def test_bad_input_to_fit_and_predict(fitted):
    net, X = fitted
    y = np.arange(len(X)) % 3
    fresh = crn.ReduNet1D(eps2=0.1, n_layers=2, n_channels=4, kernel_size=3)
    with pytest.raises(ValueError, match=r"X must have shape \(n_samples, T\) or \(n_samples, "
                                         r"n_channels, T\) for ReduNet1D, got shape \(30,\)"):
        fresh.fit(X[:, 0, 0], y)
    with pytest.raises(ValueError, match="X must contain only finite values"):
        fresh.fit(np.where(X > 2, np.nan, X), y)
    with pytest.raises(ValueError, match="y must have one label per sample: X has 30 samples, "
                                         "y has 29"):
        fresh.fit(X, y[:-1])
    with pytest.raises(ValueError, match="y must hold at least 2 classes .* got 1 class"):
        fresh.fit(X, np.zeros(30, dtype=int))
    with pytest.raises(ValueError, match="Unknown label type: continuous"):
        fresh.fit(X, np.linspace(0, 1, 30))
    with pytest.raises(ValueError, match=r"X has 18 features, but ReduNet1D is expecting 20 "
                                         r"features as input"):
        net.predict(X[:, :, :9])
    with pytest.raises(ValueError, match="X must contain only finite values"):
        net.predict(np.full_like(X, np.inf))
    with pytest.raises(NotFittedError, match="ReduNet1D instance is not fitted yet"):
        fresh.predict(X)
    with pytest.raises(ValueError, match=r"X must have shape \(n_samples, H, W\)"):
        crn.ReduNet2D().fit(X[:, 0], y)


@pytest.mark.parametrize("params, error, match", [
    (dict(eps2=0), ValueError, "eps2 must be a positive finite number, got 0.0"),
    (dict(eta=-1), ValueError, "eta must be a positive finite number, got -1.0"),
    (dict(lmbda=float("nan")), ValueError, "lmbda must be a positive finite number, got nan"),
    (dict(n_layers=-1), ValueError, "n_layers must be an integer >= 0, got -1"),
    (dict(n_layers=2.5), TypeError, "n_layers must be an integer >= 0, got 2.5"),
    (dict(n_layers=0, classifier="membership"), ValueError,
     "n_layers=0 needs classifier='subspace'"),
    (dict(n_channels=0), ValueError, "n_channels must be an integer >= 1, 'auto' or None, got 0"),
    (dict(dilations=[1, 9], kernel_size=3), ValueError,
     r"dilations must be at most 4 for kernels of 3 taps on signals of size \(10,\)"),
    (dict(dilations=[0]), ValueError, "dilations must be None, 'auto' or a non-empty list"),
    (dict(dilations="x"), TypeError, "dilations must be None, 'auto' or a non-empty list"),
    (dict(nonlinearity="tanh"), ValueError,
     "nonlinearity must be one of 'relu', 'abs', None, got 'tanh'"),
    (dict(membership="oracle"), ValueError,
     "membership must be one of 'estimated', 'label', got 'oracle'"),
    (dict(backend="jax"), ValueError, "backend must be one of 'numpy', 'torch', got 'jax'"),
    (dict(dtype="float16"), ValueError, "dtype must be one of 'float64', 'float32'"),
    (dict(device="cuda"), ValueError, "device='cuda' needs backend='torch'"),
    (dict(batch_size=0), ValueError, "batch_size must be a positive integer or None, got 0"),
    (dict(lifting_bias=float("inf")), ValueError,
     "lifting_bias must be a finite number or None, got inf"),
])
def test_bad_parameters(params, error, match):
    X, y = signals(12, (2, 10), k=2)
    with pytest.raises(error, match=match):
        crn.ReduNet1D(**params).fit(X, y)


def test_inputs_not_modified():
    X, y = signals(20, (2, 10), k=2)
    X_copy, y_copy = X.copy(), y.copy()
    net = crn.ReduNet1D(eps2=0.1, n_layers=2, n_channels=4, kernel_size=3).fit(X, y)
    assert net.classifier == "subspace"
    net.transform(X)
    net.predict(X)
    net.subspace_distances(X)
    np.testing.assert_array_equal(X, X_copy)
    np.testing.assert_array_equal(y, y_copy)


@pytest.mark.parametrize("counts", [(4, 4, 4), (3, 9, 2), (3, 20, 12)],
                         ids=["all-lowrank", "mixed", "mixed-dense"])
def test_layer_application_matches_dense_operators(counts):
    """The layer (dense + low-rank paths) against every C^j applied densely, per frequency."""
    from convredunet import spectral

    y = np.repeat(np.arange(3), counts)
    X, _ = signals(len(y), (1, 9), k=3)
    net = crn.ReduNet1D(eps2=0.1, n_layers=1, n_channels=16, kernel_size=3, lmbda=30.0).fit(X, y)
    layer = net.layers_[0]
    # Woodbury for the solve when m_j < C; kept low-rank when cheaper to apply.
    assert layer.lowrank_classes == [j for j in range(3)
                                     if 2 * 16 * counts[j] + 2 * counts[j] ** 2 < 16 ** 2]
    assert sorted(layer.lowrank_classes + layer.dense_classes) == [0, 1, 2]
    Z0 = net.lifting_(BACKEND, net._check_X(X))
    e_hat, c_hat = layer.operators_hat(BACKEND)
    v = spectral.spectrum(BACKEND, Z0, (9,))
    cj = c_hat @ v[None]  # (k, F, C, b)
    w = spectral.half_spectrum_weights((9,))
    norms = np.sqrt(np.einsum("f,kfcb->kb", w, np.abs(cj) ** 2))
    pi = np.exp(-30.0 * norms) / np.exp(-30.0 * norms).sum(0)
    step = v + net.eta * (e_hat @ v - np.einsum("kfcb,kb->fcb", cj, layer.gamma[:, None] * pi))
    expected = spectral.inverse_spectrum(BACKEND, step, (9,))
    expected /= np.linalg.norm(expected.reshape(len(y), -1), axis=1)[:, None, None]
    got, got_pi = layer(BACKEND, Z0)
    np.testing.assert_allclose(got_pi, pi.T, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    # Label membership through the same paths.
    step = v + net.eta * (e_hat @ v - np.einsum("kfcb,kb->fcb", cj,
                                                layer.gamma[:, None] * np.eye(3)[y].T))
    expected = spectral.inverse_spectrum(BACKEND, step, (9,))
    expected /= np.linalg.norm(expected.reshape(len(y), -1), axis=1)[:, None, None]
    np.testing.assert_allclose(layer(BACKEND, Z0, labels=y)[0], expected, rtol=1e-9,
                               atol=1e-12)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype, tol", [("float64", 1e-9), ("float32", 1e-4)])
def test_cuda_backend_matches_numpy(dtype, tol):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    X, y = signals(40, (1, 8, 7), k=4)
    ref = crn.ReduNet2D(n_layers=3, n_channels=6, kernel_size=3).fit(X, y)
    net = crn.ReduNet2D(n_layers=3, n_channels=6, kernel_size=3, backend="torch",
                        device="cuda", dtype=dtype).fit(X, y)
    out = net.transform(torch.as_tensor(X, device="cuda"))
    assert out.device.type == "cuda"
    assert rel_err(out, ref.transform(X)) < tol
    np.testing.assert_array_equal(net.predict(X), ref.predict(X))
    module = net.to_torch(dtype=torch.float64).cuda()
    with torch.no_grad():
        got = module(torch.as_tensor(X, device="cuda"))
    assert rel_err(got, ref.transform(X)) < max(tol, 1e-9)


@pytest.mark.parametrize("counts", [(4, 4, 4), (3, 9, 2), (9, 9, 9)])
def test_frequency_split_threads_give_the_same_layer(counts, monkeypatch):
    from convredunet import _parallel, network

    y = np.repeat(np.arange(3), counts)
    X, _ = signals(len(y), (1, 11), k=3)
    net = crn.ReduNet1D(eps2=0.1, n_layers=2, n_channels=6, kernel_size=3).fit(X, y)
    Z0 = net.lifting_(BACKEND, net._check_X(X))
    with crn.num_threads(1):
        one, pi_one = net.layers_[0](BACKEND, Z0)
    monkeypatch.setattr(_parallel, "MIN_ELEMENTS", 0)
    with crn.num_threads(3):
        assert len(network._frequency_slices(BACKEND, np.zeros((6, 6, 5)))) == 3
        split, pi_split = net.layers_[0](BACKEND, Z0)
    np.testing.assert_allclose(split, one, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(pi_split, pi_one, rtol=1e-12, atol=1e-14)


def test_rate_history_reproduces_training_history():
    X, y = signals(30, (1, 10), k=3)
    net = crn.ReduNet1D(eps2=0.1, n_layers=3, n_channels=5, kernel_size=3).fit(X, y)
    rates = net.rate_history(X, y)
    assert len(rates) == 4
    for record, r in zip(net.history_, rates):
        assert r.delta == pytest.approx(record["delta_R"], rel=1e-10)
        assert r.expansion == pytest.approx(record["R"], rel=1e-10)
    features = net.layer_features(X)
    np.testing.assert_allclose(features[-1], net.transform(X), rtol=1e-12, atol=1e-14)
    Z, pi = net.transform_with_membership(X)
    np.testing.assert_array_equal(Z, net.transform(X))
    np.testing.assert_array_equal(pi, net.predict_proba(X))
    with pytest.raises(ValueError, match="y holds labels the network was not fitted on"):
        net.rate_history(X, y + 5)
