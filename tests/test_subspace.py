"""The nearest-subspace classifier: dense reference, exact invariance, model selection, files."""
import json
import zipfile

import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV, cross_val_score

import convredunet as crn
from convredunet.backend import NumpyBackend
from convredunet.subspace import class_subspaces, subspace_distances
from convredunet.testing import assert_shift_invariant

from conftest import dense_subspace_distances, signals

BACKEND = NumpyBackend()


@pytest.mark.parametrize("r", [1, 2])
def test_distances_match_dense_reference(r):
    Z, y = signals(24, (3, 8), k=3, seed=1, noise=0.5)
    bases = class_subspaces(BACKEND, Z, y, 3, r)
    assert bases.shape == (3, 5, 3, r)
    z = signals(7, (3, 8), k=3, seed=2, noise=0.5)[0]
    got = subspace_distances(BACKEND, z, bases, (8,))
    np.testing.assert_allclose(got, dense_subspace_distances(Z, y, 3, r, z), rtol=1e-9, atol=1e-9)


def test_bases_are_orthonormal_per_frequency():
    Z, y = signals(30, (4, 6, 5), k=3, noise=0.5)
    bases = class_subspaces(BACKEND, Z, y, 3, 2)
    gram = np.conj(np.swapaxes(bases, -1, -2)) @ bases
    np.testing.assert_allclose(gram, np.broadcast_to(np.eye(2), gram.shape), atol=1e-12)


@pytest.mark.parametrize("make, shape, nd", [
    (lambda: crn.ReduNet1D(eps2=0.1, n_layers=2, n_channels=5, kernel_size=3,
                           classifier="subspace", n_components=2), (2, 12), 1),
    (lambda: crn.ReduNet1D(eps2=0.1, n_layers=2, n_channels=None,
                           classifier="subspace", n_components=1), (3, 9), 1),
    (lambda: crn.ReduNet2D(eps2=0.1, n_layers=2, n_channels=4, kernel_size=3,
                           classifier="subspace", n_components=2), (1, 6, 5), 2),
])
def test_subspace_prediction_invariant_under_every_shift(make, shape, nd):
    X, y = signals(36, shape, k=3, noise=0.5)
    net = make().fit(X, y)
    X_test = signals(12, shape, k=3, seed=3, noise=0.5)[0]
    assert_shift_invariant(net.predict, X_test, ndim=nd)
    distances = net.subspace_distances(X_test)
    for s in [(1,) * nd, (3,) * nd, tuple(n - 1 for n in shape[-nd:])]:
        rolled = np.roll(X_test, s, axis=tuple(range(-nd, 0)))
        np.testing.assert_allclose(net.subspace_distances(rolled), distances, rtol=1e-9,
                                   atol=1e-12)


def test_subspace_classifier_separates_shifted_templates():
    X, y = signals(90, (2, 16), k=3, noise=0.5)
    X, y, X_test, y_test = X[:60], y[:60], X[60:], y[60:]
    net = crn.ReduNet1D(eps2=0.1, n_layers=2, n_channels=8, kernel_size=5,
                        classifier="subspace", n_components=2).fit(X, y)
    assert net.score(X_test, y_test) >= 0.9
    # predict follows the classifier; predict_proba stays the membership
    np.testing.assert_array_equal(net.predict(X_test),
                                  np.argmin(net.subspace_distances(X_test), axis=1))
    assert net.predict_proba(X_test).shape == (30, 3)


def test_vector_estimator_subspace_is_class_pca():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((45, 6))
    y = np.arange(45) % 3
    net = crn.ReduNetVector(n_layers=1, classifier="subspace", n_components=2).fit(X, y)
    Z = net.transform(X)
    for j in range(3):
        _, _, vt = np.linalg.svd(Z[y == j], full_matrices=False)
        expected = (Z ** 2).sum(1) - ((Z @ vt[:2].T) ** 2).sum(1)
        np.testing.assert_allclose(net.subspace_distances(X)[:, j], expected, atol=1e-10)


def test_model_selection_grid_search_and_cross_val_score():
    X, y = signals(36, (1, 10), k=3, noise=0.5)
    base = crn.ReduNet1D(eps2=0.1, n_layers=2, n_channels=4, kernel_size=3)
    search = GridSearchCV(base, {"classifier": ["membership", "subspace"],
                                 "n_components": [1, 2]}, cv=3).fit(X, y)
    assert search.best_params_["classifier"] in ("membership", "subspace")
    assert 0.0 <= search.best_score_ <= 1.0
    assert len(search.cv_results_["mean_test_score"]) == 4
    scores = cross_val_score(base.set_params(classifier="subspace"), X, y, cv=3)
    assert scores.shape == (3,) and np.all((scores >= 0) & (scores <= 1))
    assert base.get_params()["classifier"] == "subspace"  # the template itself is not fitted
    assert not hasattr(base, "network_")


@pytest.mark.parametrize("params, error, match", [
    (dict(classifier="nearest"), ValueError,
     "classifier must be one of 'membership', 'subspace', got 'nearest'"),
    (dict(n_components=0), ValueError, "n_components must be an integer >= 1, 'auto' or None, got 0"),
    (dict(n_components=1.5), TypeError,
     "n_components must be an integer >= 1, 'auto' or None, got 1.5"),
    (dict(n_channels=None), ValueError,
     "classifier='subspace' needs features of at least 2 channels, got 1"),
])
def test_bad_parameters(params, error, match):
    X, y = signals(12, (1, 10), k=2, noise=0.5)
    with pytest.raises(error, match=match):
        crn.ReduNet1D(**{"classifier": "subspace", **params}).fit(X, y)


def test_default_rank_is_an_eighth_of_the_channels():
    X, y = signals(60, (1, 10), k=3, noise=0.5)
    assert crn.ReduNet1D().classifier == "subspace"
    net = crn.ReduNet1D(eps2=0.1, n_layers=1, n_channels=16, kernel_size=3,
                        n_components=None).fit(X, y)
    assert net.subspaces_.shape[-1] == 2
    # an integer is clipped to C - 1: the subspace leaves a complement
    net = crn.ReduNet1D(eps2=0.1, n_layers=1, n_channels=3, kernel_size=3,
                        n_components=8).fit(X, y)
    assert net.subspaces_.shape[-1] == 2


def test_distances_need_a_subspace_fit():
    X, y = signals(12, (1, 10), k=2, noise=0.5)
    net = crn.ReduNet1D(eps2=0.1, n_layers=1, n_channels=3, kernel_size=3,
                        classifier="membership").fit(X, y)
    with pytest.raises(ValueError, match="classifier='subspace' needs the class subspaces"):
        net.subspace_distances(X)
    net.set_params(classifier="subspace")
    with pytest.raises(ValueError, match="set classifier='subspace' before calling fit"):
        net.predict(X)


def test_torch_and_float32_agree_with_numpy():
    X, y = signals(30, (2, 12), k=3, noise=0.5)
    params = dict(eps2=0.1, n_layers=2, n_channels=4, kernel_size=3, classifier="subspace",
                  n_components=2)
    reference = crn.ReduNet1D(**params).fit(X, y).subspace_distances(X)
    torch_net = crn.ReduNet1D(backend="torch", **params).fit(X, y)
    np.testing.assert_allclose(torch_net.subspace_distances(X), reference, atol=1e-9)
    single = crn.ReduNet1D(dtype="float32", **params).fit(X, y)
    np.testing.assert_allclose(single.subspace_distances(X), reference, atol=1e-4)


def test_save_load_round_trip(tmp_path):
    X, y = signals(30, (2, 12), k=3, noise=0.5)
    net = crn.ReduNet1D(eps2=0.1, n_layers=2, n_channels=4, kernel_size=3,
                        classifier="subspace", n_components=2).fit(X, y)
    net.save(tmp_path / "m.npz")
    twin = crn.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(twin.subspaces_, net.subspaces_)
    np.testing.assert_array_equal(twin.subspace_distances(X), net.subspace_distances(X))
    np.testing.assert_array_equal(twin.predict(X), net.predict(X))
    # a subspace model without its bases is refused, naming the entry
    with np.load(tmp_path / "m.npz") as handle:
        arrays = {key: handle[key] for key in handle.files if key != "classifier/bases"}
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match="lacks the entry 'classifier/bases'"):
        crn.load(tmp_path / "bad.npz")


def test_files_written_before_the_parameter_still_load(tmp_path):
    X, y = signals(30, (2, 12), k=3, noise=0.5)
    net = crn.ReduNet1D(eps2=0.1, n_layers=2, n_channels=4, kernel_size=3,
                        classifier="membership").fit(X, y)
    net.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as handle:
        arrays = {key: handle[key] for key in handle.files}
    meta = json.loads(str(arrays["meta"]))
    for key in ("classifier", "n_components"):
        del meta["params"][key]
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "old.npz", **arrays)
    assert zipfile.is_zipfile(tmp_path / "old.npz")
    old = crn.load(tmp_path / "old.npz")
    assert old.classifier == "membership" and old.subspaces_ is None
    np.testing.assert_array_equal(old.predict(X), net.predict(X))


@pytest.mark.slow
@pytest.mark.parametrize("make, shape", [
    (lambda: crn.ReduNet1D(eps2=0.1, n_layers=2, n_channels=5, kernel_size=3,
                           classifier="subspace", n_components=2), (2, 12)),
    (lambda: crn.ReduNet2D(eps2=0.1, n_layers=1, n_channels=4, kernel_size=3,
                           classifier="subspace", n_components=2), (6, 5)),
    (lambda: crn.ReduNetVector(n_layers=2, classifier="subspace", n_components=2), (7,)),
])
def test_export_carries_the_subspace_classifier(make, shape):
    import torch

    if len(shape) > 1:
        X, y = signals(30, (1,) + shape if shape[0] == 6 else shape, k=3, noise=0.5)
    else:
        X, y = np.random.default_rng(0).standard_normal((30,) + shape), np.arange(30) % 3
    net = make().fit(X, y)
    module = net.to_torch(dtype=torch.float64)
    x = torch.from_numpy(X)
    with torch.no_grad():
        np.testing.assert_allclose(module.subspace_distances(x).numpy(),
                                   net.subspace_distances(X), atol=1e-10)
        np.testing.assert_array_equal(module.predict(x).numpy(), net.predict(X))
        scripted = torch.jit.script(module)
        np.testing.assert_array_equal(scripted.predict(x).numpy(), net.predict(X))
