"""Small training sets and real signals: rank-correct subspaces, the low-rank fit, dilated
lifting, inputs of any size, the UCR/UEA loader. Every fast path against a slow reference."""
import numpy as np
import pytest

import convredunet as crn
from convredunet import cli, spectral
from convredunet.backend import NumpyBackend
from convredunet.network import Lifting, lifting_geometry
from convredunet.subspace import (RANK_RTOL, class_subspaces, subspace_distances,
                                  subspaces_from_grams)
from convredunet.testing import assert_shift_equivariant, assert_shift_invariant

from conftest import dense_subspace_distances, signals

BACKEND = NumpyBackend()


# --- rank-correct subspaces ----------------------------------------------------------------
@pytest.mark.parametrize("counts", [(1, 2, 3), (2, 2, 2), (1, 5, 9)],
                         ids=["one-two-three", "equal", "mixed-thin-thick"])
def test_rank_deficient_classes_match_the_dense_reference(counts):
    # 6 channels: classes of fewer samples span fewer directions than asked for (r=5).
    y = np.repeat(np.arange(3), counts)
    Z, _ = signals(len(y), (6, 8), k=3, seed=3, noise=0.5)
    bases = class_subspaces(BACKEND, Z, y, 3, 5)
    z = signals(7, (6, 8), k=3, seed=4, noise=0.5)[0]
    got = subspace_distances(BACKEND, z, bases, (8,))
    np.testing.assert_allclose(got, dense_subspace_distances(Z, y, 3, 5, z, rtol=RANK_RTOL["float64"]), rtol=1e-8, atol=1e-10)


def test_a_class_never_keeps_more_directions_than_its_samples():
    y = np.repeat(np.arange(3), (1, 2, 4))
    Z, _ = signals(len(y), (6, 8), k=3, seed=5, noise=0.5)
    bases = class_subspaces(BACKEND, Z, y, 3, 5)
    used = (np.abs(bases) ** 2).sum(2) > 0  # (k, F, r): which columns are directions
    for j, m_j in enumerate((1, 2, 4)):
        assert used[j].sum(-1).max() <= m_j
        # orthonormal where used, zero elsewhere
        gram = np.conj(np.swapaxes(bases[j], -1, -2)) @ bases[j]
        eye = np.stack([np.diag(u.astype(float)) for u in used[j]])
        np.testing.assert_allclose(gram, eye, atol=1e-10)


def test_a_class_of_one_signal_is_the_line_of_its_spectrum():
    y = np.array([0, 1, 1, 1])
    Z, _ = signals(4, (5, 6), k=2, seed=6, noise=0.5)
    bases = class_subspaces(BACKEND, Z, y, 2, 3)
    v = spectral.spectrum(BACKEND, Z[:1], (6,))[:, :, 0]  # (F, C)
    u = bases[0, :, :, 0]
    # The one direction is v / |v| (up to a phase) at every frequency.
    overlap = np.abs(np.einsum("fc,fc->f", np.conj(u), v)) / np.linalg.norm(v, axis=1)
    np.testing.assert_allclose(overlap, 1.0, rtol=1e-10)
    assert np.abs(bases[0, :, :, 1:]).max() == 0


def test_thin_factorization_and_channel_grams_agree():
    # The in-process thin path (m_j x m_j Grams) and the C x C path the Dask fit uses.
    y = np.repeat(np.arange(3), (2, 3, 4))
    Z, _ = signals(len(y), (7, 10), k=3, seed=7, noise=0.5)
    thin = class_subspaces(BACKEND, Z, y, 3, 6)
    from convredunet.subspace import class_grams

    wide = subspaces_from_grams(BACKEND, class_grams(BACKEND, Z, y, 3), 6)
    z = signals(5, (7, 10), k=3, seed=8, noise=0.5)[0]
    np.testing.assert_allclose(subspace_distances(BACKEND, z, thin, (10,)),
                               subspace_distances(BACKEND, z, wide, (10,)), rtol=1e-9,
                               atol=1e-12)


def _brute_force_rank_scores(Z, y, candidates, n_folds):
    """Each fold's subspaces fitted from scratch (class_subspaces), held-out signals scored."""
    counts = np.bincount(y)
    fold = np.concatenate([np.arange(n) % n_folds for n in counts])  # y sorted
    correct = dict.fromkeys(candidates, 0)
    for f in range(n_folds):
        fit, held = fold != f, fold == f
        for r in candidates:
            bases = class_subspaces(BACKEND, Z[fit], y[fit], len(counts), r)
            d = subspace_distances(BACKEND, Z[held], bases, Z.shape[2:])
            correct[r] += int(np.sum(np.argmin(d, 1) == y[held]))
    return {r: c / len(y) for r, c in correct.items()}


@pytest.mark.parametrize("with_gram", [True, False])
def test_cross_validated_rank_equals_refitting_every_fold(with_gram):
    from convredunet.subspace import cross_validated_rank, rank_candidates

    y = np.repeat(np.arange(3), (7, 5, 6))
    Z, _ = signals(len(y), (12, 10), k=3, seed=20, noise=0.5)
    V = spectral.spectrum(BACKEND, Z, (10,))
    gram = BACKEND.gram(V) if with_gram else None
    candidates = rank_candidates(np.bincount(y), 12, 5)
    assert candidates == [1, 2, 4, 11]
    rank, scores = cross_validated_rank(BACKEND, V, y, 3, (12, 10), gram)
    want = _brute_force_rank_scores(Z, y, candidates, 5)
    assert scores == pytest.approx(want, abs=1e-12)
    best = max(want.values())
    assert rank == min(r for r, acc in want.items() if acc == best)
    # with a default, it is kept unless more than one standard error below the best
    rank, scores = cross_validated_rank(BACKEND, V, y, 3, (12, 10), gram, default=3)
    assert 3 in scores
    error = np.sqrt(max(best * (1 - best), 1 / 18) / 18)
    assert rank == (3 if scores[3] >= max(scores.values()) - error else
                    min(r for r, acc in scores.items() if acc == max(scores.values())))


def test_auto_rank_is_cross_validated_on_small_classes_and_a_rule_on_large_ones():
    X, y = signals(36, (1, 12), k=3, seed=9, noise=0.5)
    net = crn.ReduNet1D(n_channels=32, kernel_size=3).fit(X, y)
    scores = net.rank_scores_
    assert set(scores) == {1, 2, 4, 8, 31}  # powers of two, the whole span, the rule (4)
    best = max(scores.values())
    error = np.sqrt(max(best * (1 - best), 1 / 36) / 36)
    chosen = 4 if scores[4] >= best - error else min(r for r, a in scores.items() if a == best)
    assert net.subspaces_.shape[-1] == min(chosen, 12)
    assert "rank" in net.fit_stages_
    # classes of more signals than channels: the rule (an eighth of the channels)
    big = crn.ReduNet1D(n_channels=16, kernel_size=3).fit(*signals(60, (1, 12), k=3, noise=0.5))
    assert big.rank_scores_ == {} and big.subspaces_.shape[-1] == 2
    # an integer is used as given
    fixed = crn.ReduNet1D(n_channels=32, kernel_size=3, n_components=3).fit(X, y)
    assert fixed.rank_scores_ == {} and fixed.subspaces_.shape[-1] == 3


def test_auto_channels_follow_the_signal_length():
    rng = np.random.default_rng(19)
    for length, channels in ((24, 256), (512, 256), (600, 128), (1460, 64), (8000, 32)):
        X = rng.standard_normal((6, length))
        net = crn.ReduNet1D(kernel_size=3).fit(X, np.arange(6) % 2)
        assert net.network_.n_channels == channels


# --- the fit in low-rank form --------------------------------------------------------------
@pytest.mark.parametrize("counts", [(4, 4, 4), (2, 5, 3)], ids=["equal", "unequal"])
@pytest.mark.parametrize("n_layers", [1, 2])
def test_fit_in_low_rank_form_equals_the_layers_applied_again(counts, n_layers):
    """The fit's shortcut (V^H V reused, one product with V) against the plain layer path."""
    y = np.repeat(np.arange(3), counts)
    X, _ = signals(len(y), (1, 9), k=3, seed=10, noise=0.5)
    net = crn.ReduNet1D(eps2=0.5, n_layers=n_layers, n_channels=16, kernel_size=3,
                        n_components=5, lmbda=30.0).fit(X, y)
    assert all(layer.solution.e_lowrank for layer in net.layers_)
    # The training features again, through Layer.__call__ (FFTs, V^H v formed), and
    # their subspaces, against those the fit computed from its own spectra.
    z = net.lifting_(BACKEND, net._check_X(X))
    for layer in net.layers_:
        z, _ = layer(BACKEND, z)
    again = class_subspaces(BACKEND, z, y, 3, 5)
    probe = signals(6, (16, 9), k=3, seed=11, noise=0.5)[0]
    np.testing.assert_allclose(subspace_distances(BACKEND, probe, net.subspaces_, (9,)),
                               subspace_distances(BACKEND, probe, again, (9,)),
                               rtol=1e-9, atol=1e-12)


def test_low_rank_e_matches_the_spatial_reference():
    # 3 classes of 3 samples, 12 lifted channels: E and every class stored as Woodbury
    # factors (no dense block), checked against the dense spatial construction.
    X, y = signals(9, (1, 8), k=3, seed=12, noise=0.5)
    net = crn.ReduNet1D(eps2=0.5, n_layers=1, n_channels=12, kernel_size=3).fit(X, y)
    layer = net.layers_[0]
    assert layer.solution.e_lowrank and layer.stacked is None
    assert layer.lowrank_classes == [0, 1, 2] and layer.dense_classes == []
    Z0 = net.lifting_(BACKEND, net._check_X(X))
    ops = crn.construct_operators(Z0, y, eps2=0.5, domain="spatial")
    e_hat, c_hat = layer.operators_hat(BACKEND)
    np.testing.assert_allclose(e_hat, ops.E_hat.reshape(e_hat.shape), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(c_hat, ops.C_hat.reshape(c_hat.shape), rtol=1e-9, atol=1e-12)


def test_low_rank_model_round_trip_and_export(tmp_path):
    X, y = signals(9, (1, 8), k=3, seed=13, noise=0.5)
    net = crn.ReduNet1D(eps2=0.5, n_layers=2, n_channels=12, kernel_size=3,
                        dilations=[1, 2]).fit(X, y)
    net.save(tmp_path / "m.npz")
    again = crn.load(tmp_path / "m.npz")
    assert again.layers_[0].solution.e_lowrank
    np.testing.assert_array_equal(again.transform(X), net.transform(X))
    np.testing.assert_array_equal(again.subspace_distances(X), net.subspace_distances(X))
    import torch

    module = net.to_torch(dtype=torch.float64)
    with torch.no_grad():
        got = module(torch.from_numpy(X)).numpy()
        distances = module.subspace_distances(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(got, net.transform(X), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(distances, net.subspace_distances(X), rtol=1e-8, atol=1e-10)


# --- dilated lifting -----------------------------------------------------------------------
def _dilated_reference(kernels, dilations, x):
    """``sum_c' sum_r K[c, c', r] x_c'[t - d_c (r - (K-1)//2)]`` with np.roll."""
    c_out, _, k = kernels.shape
    out = np.zeros((x.shape[0], c_out, x.shape[-1]))
    for c in range(c_out):
        for r in range(k):
            shifted = np.roll(x, dilations[c] * (r - (k - 1) // 2), axis=-1)
            out[:, c] += np.einsum("i,bit->bt", kernels[c, :, r], shifted)
    return out


def test_dilated_lifting_is_the_dilated_circular_convolution():
    rng = np.random.default_rng(14)
    kernels = rng.standard_normal((6, 2, 3))
    dilations = np.array([1, 1, 2, 2, 5, 5])
    x = rng.standard_normal((4, 2, 11))
    lifting = Lifting(kernels, None, (11,), None, dilations)
    got = lifting.response(BACKEND, x, np.ones(4))
    np.testing.assert_allclose(got, _dilated_reference(kernels, dilations, x), rtol=1e-10,
                               atol=1e-12)


def test_auto_dilations_cover_the_signal():
    size, dilations = lifting_geometry(7, "auto", 10, (100,))
    assert size == 7 and sorted(set(dilations.tolist())) == [1, 2, 4, 8, 16]
    assert list(dilations) == sorted(dilations)  # runs of equal dilation, smallest first
    assert np.bincount(dilations)[[1, 2, 4, 8, 16]].tolist() == [2, 2, 2, 2, 2]
    assert lifting_geometry(9, None, 10, (40,)) == (9, None)
    assert lifting_geometry(9, None, 10, (8, 8)) == (8, None)  # kernels cut to the signal


@pytest.mark.parametrize("shape, nd", [((2, 24), 1), ((1, 9, 10), 2)])
def test_dilated_networks_are_exactly_invariant_to_every_shift(shape, nd):
    X, y = signals(30, shape, k=3, seed=15, noise=0.5)
    make = crn.ReduNet1D if nd == 1 else crn.ReduNet2D
    net = make(n_layers=1, n_channels=12, kernel_size=3, dilations="auto").fit(X, y)
    assert net.lifting_.dilations is not None and len(set(net.lifting_.dilations)) > 1
    assert_shift_equivariant(net.transform, X[:4], ndim=nd)
    assert_shift_invariant(net.predict, X[:10], ndim=nd)
    from convredunet.datasets import all_shifts, cyclic_shifts

    want = net.subspace_distances(X[:4])
    for shift in all_shifts(X.shape[-nd:]):
        got = net.subspace_distances(cyclic_shifts(X[:4], nd, [shift])[0])
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


# --- defaults that fit the input --------------------------------------------------------------
def test_default_2d_network_takes_8x8_images():
    rng = np.random.default_rng(16)
    X = rng.standard_normal((20, 8, 8))
    y = np.arange(20) % 2
    net = crn.ReduNet2D().fit(X, y)
    assert net.lifting_.kernels.shape[-2:] == (8, 8)
    assert_shift_invariant(net.predict, X[:3], ndim=2)


def test_default_1d_network_takes_very_short_signals():
    rng = np.random.default_rng(17)
    X = rng.standard_normal((12, 4))
    y = np.arange(12) % 3
    net = crn.ReduNet1D().fit(X, y)
    assert net.lifting_.kernels.shape[-1] == 4
    assert_shift_invariant(net.predict, X, ndim=1)


def test_ten_signals_per_class_work():
    X, y = signals(30, (1, 32), k=3, seed=18, noise=0.5)
    net = crn.ReduNet1D().fit(X, y)
    assert net.score(X, y) == 1.0  # each training signal lies in its class's span
    assert net.subspaces_.shape[-1] <= 10


# --- data -------------------------------------------------------------------------------------
aeon = pytest.importorskip("aeon")


def test_load_ucr_reads_the_bundled_split():
    from convredunet.datasets import load_ucr, ucr_names

    assert {"GunPoint", "ArrowHead", "ItalyPowerDemand", "BasicMotions", "ACSF1"} <= set(
        ucr_names())
    X, y, X_test, y_test = load_ucr("GunPoint")
    assert X.shape == (50, 1, 150) and X_test.shape == (150, 1, 150)
    assert X.dtype == np.float64 and set(np.unique(y)) == set(np.unique(y_test))


def test_load_ucr_refuses_what_is_not_bundled_and_unequal_lengths():
    from convredunet.datasets import load_ucr

    with pytest.raises(ValueError, match="name must be one of the classification sets bundled"):
        load_ucr("NoSuchSet")
    with pytest.raises(ValueError, match="unequal length .* pad them to the longest"):
        load_ucr("JapaneseVowels")
    with pytest.raises(TypeError, match="name must be the name of a data set"):
        load_ucr(3)


def test_unequal_signals_given_to_fit_say_how_to_pad():
    X = [np.zeros((1, 10)), np.ones((1, 12)), np.ones((1, 10))]
    with pytest.raises(ValueError, match="different shapes .* lengths 10 to 12.*numpy.pad"):
        crn.ReduNet1D().fit(X, [0, 1, 0])


def test_cli_reads_ucr_sets(tmp_path, capsys):
    status = cli.main(["fit", "--data", "ucr:ItalyPowerDemand", "--quiet",
                       "--out", str(tmp_path / "m.npz")])
    assert status == 0 and (tmp_path / "m.npz").is_file()
    status = cli.main(["fit", "--data", "ucr:JapaneseVowels", "--quiet",
                       "--out", str(tmp_path / "j.npz")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "pad them" in err[0]
    status = cli.main(["fit", "--data", "ucr:Nope", "--out", str(tmp_path / "n.npz")])
    assert status == 2


@pytest.mark.slow
def test_every_gunpoint_prediction_is_invariant_to_every_shift():
    from convredunet.datasets import load_ucr

    X, y, X_test, _ = load_ucr("GunPoint")
    net = crn.ReduNet1D().fit(X, y)
    assert_shift_invariant(net.predict, X_test[:20], ndim=1)


def test_dask_fit_cross_validates_the_rank_as_in_process():
    da = pytest.importorskip("dask.array")
    X, y = signals(36, (1, 12), k=3, seed=21, noise=0.5)
    here = crn.ReduNet1D(n_channels=32, kernel_size=3).fit(X, y)
    there = crn.ReduNet1D(n_channels=32, kernel_size=3).fit(da.from_array(X, chunks=10), y)
    assert there.rank_scores_ == pytest.approx(here.rank_scores_, abs=1e-12)
    assert there.subspaces_.shape == here.subspaces_.shape
    np.testing.assert_allclose(there.subspace_distances(X), here.subspace_distances(X),
                               rtol=1e-8, atol=1e-12)
