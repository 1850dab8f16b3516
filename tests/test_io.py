"""Model files, format 3: Hermitian packing, sizes, float32 files, older formats, fingerprints."""
import json

import numpy as np
import pytest

import convredunet as crn
from convredunet import io
from convredunet._fingerprints import fingerprints_in_order, sample_fingerprints, seen

from conftest import signals


def _entries(path):
    with np.load(path, allow_pickle=False) as handle:
        return {key: handle[key] for key in handle.files}


@pytest.fixture(scope="module")
def nets():
    """A dense network (1D), one with low-rank classes and E (1D), a 2D one, vectors."""
    X, y = signals(60, (1, 12), k=3)
    dense = crn.ReduNet1D(eps2=0.1, n_layers=2, n_channels=6, kernel_size=3,
                          n_components=2).fit(X, y)
    lowrank = crn.ReduNet1D(eps2=0.1, n_layers=2, n_channels=40, kernel_size=3,
                            n_components=4).fit(X[:30], y[:30])
    X2, y2 = signals(20, (1, 6, 5), k=2)
    net2d = crn.ReduNet2D(n_layers=1, n_channels=4, kernel_size=3, n_components=2).fit(X2, y2)
    Xv, yv = signals(40, (8,), k=2)
    vector = crn.ReduNetVector(n_layers=2, eps2=0.5).fit(Xv.reshape(40, 8), yv)
    return {"dense": (dense, X), "lowrank": (lowrank, X), "2d": (net2d, X2),
            "vector": (vector, Xv.reshape(40, 8))}


@pytest.mark.parametrize("shape", [(3, 5, 5), (2, 1, 1), (4, 7, 7)])
@pytest.mark.parametrize("kind", ["complex", "real"])
def test_pack_hermitian_keeps_one_triangle_and_unpacks_exactly(shape, kind):
    rng = np.random.default_rng(0)
    a = rng.standard_normal(shape)
    if kind == "complex":
        a = a + 1j * rng.standard_normal(shape)
    hermitian = (a + np.conj(np.swapaxes(a, -1, -2))) / 2
    packed = io.pack_hermitian(hermitian)
    n = shape[-1]
    if kind == "complex":
        assert packed.shape == shape and packed.dtype == np.float64  # n*n reals: half of 2 n*n
        back = io.unpack_hermitian(packed)
    else:
        assert packed.shape == shape[:-2] + (n * (n + 1) // 2,)
        back = io.unpack_hermitian(packed, n)
    np.testing.assert_array_equal(back, hermitian)
    np.testing.assert_array_equal(back, np.conj(np.swapaxes(back, -1, -2)))
    # Only the upper triangle is read: a perturbed lower one gives the same blocks.
    lower = np.tril(np.ones(shape[-2:]), -1).astype(bool)
    noisy = hermitian.copy()
    noisy[..., lower] += 1.0
    np.testing.assert_array_equal(io.pack_hermitian(noisy), packed)


@pytest.mark.parametrize("name", ["dense", "lowrank", "2d", "vector"])
def test_fitted_operators_are_hermitian_and_files_load_bit_for_bit(nets, tmp_path, name):
    net, X = nets[name]
    for layer in net.layers_:
        for key in ("stacked", "M_inv", "E_M_inv"):
            a = getattr(layer.solution, key)
            if a is None:
                continue
            if key == "stacked":
                a = a.reshape(a.shape[0], -1, a.shape[-1], a.shape[-1])
            np.testing.assert_array_equal(a, np.conj(np.swapaxes(a, -1, -2)))
    path = tmp_path / "m.npz"
    net.save(path)
    twin = crn.load(path)
    np.testing.assert_array_equal(twin.transform(X), net.transform(X))
    np.testing.assert_array_equal(twin.predict(X), net.predict(X))
    if net.classifier == "subspace":
        np.testing.assert_array_equal(twin.subspace_distances(X), net.subspace_distances(X))
    assert int(_entries(path)["format_version"]) == io.FORMAT_VERSION == 3
    # Saved again, the file holds the same numbers.
    twin.save(tmp_path / "again.npz")
    first, second = _entries(path), _entries(tmp_path / "again.npz")
    assert sorted(first) == sorted(second)
    for key in first:
        if key != "meta":
            np.testing.assert_array_equal(first[key], second[key], err_msg=key)


def test_hermitian_projection_is_idempotent_and_keeps_the_rates(nets):
    net, X = nets["dense"]
    before = list(net.network_.layers)
    features = net.transform(X)
    assert io.hermitian_network(net.network_) is net.network_  # layer by layer, in place
    for a, b in zip(before, net.network_.layers):
        assert a is not b
        np.testing.assert_array_equal(a.stacked, b.stacked)  # already exact: unchanged
        assert b.rates is a.rates
    np.testing.assert_array_equal(net.transform(X), features)


@pytest.mark.parametrize("name", ["dense", "lowrank", "2d"])
def test_each_operator_is_stored_in_at_most_half_the_numbers_of_dense_blocks(nets, tmp_path,
                                                                              name):
    net, _ = nets[name]
    path = tmp_path / "m.npz"
    net.save(path)
    arrays = _entries(path)
    for index, layer in enumerate(net.layers_):
        prefix = f"layer{index}/"
        stored = sum(arrays[key].size * (2 if arrays[key].dtype.kind == "c" else 1)
                     for key in arrays if key.startswith(prefix) and
                     key.split("/")[1] in ("stacked_packed", "V", "M_inv_packed",
                                           "E_M_inv_packed"))
        n_ops = layer.n_classes + 1
        dense_reals = n_ops * layer.n_freqs * layer.n_channels ** 2 * 2
        assert stored <= dense_reals / 2, (stored, dense_reals)
        for key in ("stacked", "M_inv", "E_M_inv"):  # no full complex blocks any more
            assert prefix + key not in arrays


def test_float32_files_are_half_the_size_and_load_as_float64_models(nets, tmp_path):
    net, X = nets["dense"]
    net.save(tmp_path / "m64.npz")
    net.save(tmp_path / "m32.npz", dtype="float32")
    arrays = _entries(tmp_path / "m32.npz")
    assert json.loads(str(arrays["meta"]))["storage_dtype"] == "float32"
    for key, value in arrays.items():
        if value.dtype.kind in "fc" and key.split("/")[-1] not in ("gamma", "alphas",
                                                                   "alpha_E", "bias"):
            assert value.dtype in (np.float32, np.complex64), key
    assert arrays["training/fingerprints"].dtype == np.uint64
    def numbers(arrays):  # bytes of the stored numbers (the headers of a tiny model aside)
        return sum(v.nbytes for v in arrays.values() if v.dtype.kind in "fc")

    assert numbers(arrays) < 0.52 * numbers(_entries(tmp_path / "m64.npz"))
    loaded = crn.load(tmp_path / "m32.npz")
    assert loaded.dtype == "float64" and loaded.network_.layers[0].stacked.dtype == np.complex128
    np.testing.assert_allclose(loaded.transform(X), net.transform(X), atol=1e-5)
    assert np.mean(loaded.predict(X) == net.predict(X)) >= 0.95
    with pytest.raises(ValueError, match=r"dtype must be one of 'float32', 'float64' or None "
                                         r"\(the model's own precision\), got 'float16'"):
        net.save(tmp_path / "m16.npz", dtype="float16")
    assert not (tmp_path / "m16.npz").exists()


def _write_version_2(net, path):
    """A model file as format 2 wrote it: full complex operators, no fingerprints."""
    meta = {"magic": "convredunet-model", "estimator": type(net).__name__,
            "params": net.get_params(), "input_shape": list(net.network_.input_shape),
            "signal_shape": list(net.network_.signal_shape),
            "n_layers": len(net.layers_),
            "layers": [{"eta": layer.eta, "lmbda": layer.lmbda} for layer in net.layers_],
            "history": net.history_,
            "nonlinearity": net.network_.lifting.nonlinearity if net.network_.lifting else None}
    arrays = {"format_version": np.array(2), "meta": np.array(json.dumps(meta)),
              "classes": np.asarray(net.classes_), **net.network_.to_arrays()}
    if net.subspaces_ is not None:
        arrays["classifier/bases"] = net.subspaces_
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


@pytest.mark.parametrize("name", ["dense", "lowrank", "2d"])
def test_format_2_files_still_load(nets, tmp_path, name):
    net, X = nets[name]
    path = tmp_path / "v2.npz"
    _write_version_2(net, path)
    assert "layer0/stacked" in _entries(path) or "layer0/V" in _entries(path)
    old = crn.load(path)
    np.testing.assert_array_equal(old.transform(X), net.transform(X))
    np.testing.assert_array_equal(old.predict(X), net.predict(X))
    assert old.training_fingerprints_ is None
    old.save(tmp_path / "v3.npz")  # and it saves in format 3
    assert int(_entries(tmp_path / "v3.npz")["format_version"]) == 3


def test_fingerprints_tell_training_signals_from_others(nets, tmp_path):
    net, X = nets["dense"]
    prints = net.training_fingerprints_
    assert prints.dtype == np.uint64 and len(prints) == len(X) and np.all(np.diff(prints) >= 0)
    assert seen(prints, X).all()
    other, _ = signals(20, (1, 12), k=3, seed=9)
    assert not seen(prints, other).any()
    # Equal values, whatever the array's type or precision; any change of a value shows.
    import torch

    assert seen(prints, torch.from_numpy(X)).all()
    assert seen(sample_fingerprints(X.astype(np.float32)), X.astype(np.float32)).all()
    nudged = X.copy()
    nudged[3, 0, 5] = np.nextafter(nudged[3, 0, 5], np.inf)
    assert seen(prints, nudged).tolist() == [i != 3 for i in range(len(X))]
    np.testing.assert_array_equal(np.sort(fingerprints_in_order(X)), prints)
    net.save(tmp_path / "m.npz")
    np.testing.assert_array_equal(crn.load(tmp_path / "m.npz").training_fingerprints_, prints)
    assert seen(None, X).tolist() == [False] * len(X)
