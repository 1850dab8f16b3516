"""The spectral engine against the dense spatial reference and closed forms."""
import numpy as np
import pytest

import convredunet as crn
from convredunet import spatial
from convredunet.backend import NumpyBackend

from conftest import RTOL, make_features, rel_err

SHAPES = {
    "vector": (6,),
    "1d-even": (3, 8),
    "1d-odd": (3, 7),
    "2d-even": (2, 6, 4),
    "2d-odd": (2, 5, 3),
    "2d-mixed": (2, 4, 5),
}


@pytest.fixture(params=list(SHAPES), ids=list(SHAPES))
def sample_shape(request):
    return SHAPES[request.param]


def test_spectral_matches_spatial(sample_shape, dtype):
    Z, y = make_features(15, sample_shape, k=3, dtype=dtype)
    Z64 = Z.astype(np.float64)
    ref = crn.construct_operators(Z64, y, eps2=0.1, domain="spatial")
    ops = crn.construct_operators(Z, y, eps2=0.1)
    rates = crn.rate_reduction(Z, y, eps2=0.1)
    ref_rates = crn.rate_reduction(Z64, y, eps2=0.1, domain="spatial")
    rtol = RTOL[dtype]
    for got in (ops.rates, rates):
        assert got.expansion == pytest.approx(ref_rates.expansion, rel=rtol)
        assert got.compression == pytest.approx(ref_rates.compression, rel=rtol)
        assert got.delta == pytest.approx(ref_rates.delta, rel=rtol, abs=rtol)
    assert ref.rates.delta == pytest.approx(ref_rates.delta, rel=1e-12)
    E, C = ops.kernels()
    E_ref, C_ref = ref.kernels()
    assert E.dtype == dtype and C.dtype == dtype
    assert rel_err(E, E_ref) < rtol
    assert rel_err(C, C_ref) < rtol
    assert rel_err(ops.E_hat, ref.E_hat) < rtol
    assert rel_err(ops.C_hat, ref.C_hat) < rtol
    np.testing.assert_allclose(ops.gamma, np.bincount(y) / len(y))


def test_shapes_and_layout():
    Z, y = make_features(12, (3, 10), k=4)
    ops = crn.construct_operators(Z, y)
    assert ops.E_hat.shape == (6, 3, 3) and ops.C_hat.shape == (4, 6, 3, 3)
    E, C = ops.kernels()
    assert E.shape == (3, 3, 10) and C.shape == (4, 3, 3, 10)
    Z2, y2 = make_features(12, (2, 5, 6), k=3)
    ops2 = crn.construct_operators(Z2, y2)
    assert ops2.E_hat.shape == (5, 4, 2, 2) and ops2.C_hat.shape == (3, 5, 4, 2, 2)
    E2, C2 = ops2.kernels()
    assert E2.shape == (2, 2, 5, 6) and C2.shape == (3, 2, 2, 5, 6)
    assert ops2.freq_shape == (5, 4) and ops2.signal_shape == (5, 6)
    Zv, yv = make_features(12, (7,), k=2)
    Ev, Cv = crn.construct_operators(Zv, yv).kernels()
    assert Ev.shape == (7, 7) and Cv.shape == (2, 7, 7)


def test_blocks_are_hermitian_and_conjugate_symmetric():
    Z, y = make_features(10, (3, 9), k=2)
    ops = crn.construct_operators(Z, y)
    np.testing.assert_allclose(ops.E_hat, np.conj(np.swapaxes(ops.E_hat, -1, -2)), atol=1e-14)
    # The kernels' full DFT is the per-frequency operator (SPEC.md: e = ifft(E_hat)).
    E, _ = ops.kernels()
    full = np.moveaxis(np.fft.fft(E, axis=-1), -1, 0)  # (T, C, C)
    np.testing.assert_allclose(full[:5], ops.E_hat, atol=1e-13)
    np.testing.assert_allclose(full[5:], np.conj(ops.E_hat[1:5][::-1]), atol=1e-13)


def _circular_apply(kernel, z):
    """(K z)_c = sum_c' kernel[c, c'] (*) z_c' by an explicit sum over shifts."""
    c_out, c_in = kernel.shape[:2]
    signal_shape = z.shape[1:]
    out = np.zeros((c_out,) + signal_shape)
    for shift in np.ndindex(*signal_shape):
        rolled = np.roll(z, shift, axis=tuple(range(1, 1 + len(signal_shape))))
        out += np.einsum("ab,b...->a...", kernel[(slice(None), slice(None)) + shift], rolled)
    return out


@pytest.mark.parametrize("sample_shape", [(2, 5), (2, 6), (2, 3, 4), (5,)],
                         ids=["1d-odd", "1d-even", "2d", "vector"])
def test_gradient_identity_against_autograd(sample_shape):
    """E z_i - gamma_j C^j z_i = T * d dR / d z_i (SPEC.md), dR from its dense definition."""
    torch = pytest.importorskip("torch")
    m, k, eps2 = 7, 2, 0.1
    Z, y = make_features(m, sample_shape, k=k, seed=3)
    n_channels, signal_shape = sample_shape[0], sample_shape[1:]
    t = int(np.prod(signal_shape)) if signal_shape else 1
    idx = spatial.shift_indices(signal_shape)

    def rate(z):  # R_circ from the dense circulant matrix, autograd-able
        n = z.shape[0]
        flat = z.reshape(n, n_channels, -1)
        circ = flat[:, :, torch.as_tensor(idx)].reshape(n, -1, t)
        cols = circ.permute(1, 0, 2).reshape(n_channels * t, n * t)
        alpha = n_channels / (n * eps2)
        eye = torch.eye(n_channels * t, dtype=z.dtype)
        return torch.logdet(eye + alpha / t * cols @ cols.T) / (2 * t)

    zt = torch.tensor(Z, requires_grad=True)
    delta = rate(zt) - sum((y == j).mean() * rate(zt[torch.as_tensor(y == j)]) for j in range(k))
    (grad,) = torch.autograd.grad(delta, zt)

    ops = crn.construct_operators(Z, y, eps2=eps2)
    E, C = ops.kernels()
    for i in range(m):
        j = y[i]
        if signal_shape:
            step = _circular_apply(E, Z[i]) - ops.gamma[j] * _circular_apply(C[j], Z[i])
        else:
            step = E @ Z[i] - ops.gamma[j] * C[j] @ Z[i]
        np.testing.assert_allclose(step, t * grad[i].numpy(), rtol=1e-9, atol=1e-11)


def test_woodbury_matches_direct(dtype):
    # 8 channels; classes of 3, 5 and 9 samples; the whole set (17) > 8.
    rng = np.random.default_rng(1)
    Z, _ = make_features(17, (8, 6), k=1, dtype=dtype)
    y = np.array([0] * 3 + [1] * 5 + [2] * 9)
    rng.shuffle(y)
    ref = crn.construct_operators(Z.astype(np.float64), y, woodbury=False)
    for mode in ("auto", True):
        ops = crn.construct_operators(Z, y, woodbury=mode)
        assert rel_err(ops.C_hat, ref.C_hat) < RTOL[dtype]
        assert rel_err(ops.E_hat, ref.E_hat) < RTOL[dtype]
        assert ops.rates.delta == pytest.approx(ref.rates.delta, rel=RTOL[dtype])
    # Fewer samples than channels in total: E itself through Woodbury.
    Zs, ys = make_features(5, (8, 6), k=2)
    small = crn.construct_operators(Zs, ys)
    dense = crn.construct_operators(Zs, ys, domain="spatial")
    assert rel_err(small.E_hat, dense.E_hat) < 1e-10
    assert small.rates.delta == pytest.approx(dense.rates.delta, rel=1e-10)


def test_batch_size_does_not_change_results():
    Z, y = make_features(23, (3, 7), k=3)
    a = crn.construct_operators(Z, y, batch_size=1)
    b = crn.construct_operators(Z, y, batch_size=1000)
    assert rel_err(a.E_hat, b.E_hat) < 1e-13
    assert rel_err(a.C_hat, b.C_hat) < 1e-13


def test_numpy_matches_torch_cpu(dtype):
    torch = pytest.importorskip("torch")
    Z, y = make_features(14, (3, 6, 5), k=3, dtype=dtype)
    ref = crn.construct_operators(Z, y)
    ops = crn.construct_operators(torch.from_numpy(Z), torch.from_numpy(y))
    assert isinstance(ops.E_hat, torch.Tensor) and isinstance(ops.gamma, torch.Tensor)
    assert ops.E_hat.dtype == (torch.complex128 if dtype == np.float64 else torch.complex64)
    assert ops.gamma.dtype == torch.from_numpy(Z).dtype
    E, C = ops.kernels()
    assert E.dtype == torch.from_numpy(Z).dtype
    E_ref, C_ref = ref.kernels()
    assert rel_err(E, E_ref) < RTOL[dtype]
    assert rel_err(C, C_ref) < RTOL[dtype]
    assert ops.rates.delta == pytest.approx(ref.rates.delta, rel=RTOL[dtype])
    r = crn.rate_reduction(torch.from_numpy(Z), y)
    assert r.delta == pytest.approx(ref.rates.delta, rel=RTOL[dtype])
    sp = crn.construct_operators(torch.from_numpy(Z.astype(np.float64)), y, domain="spatial")
    assert rel_err(sp.C_hat, ref.C_hat) < RTOL[dtype]


@pytest.mark.cuda
def test_torch_cuda_matches_numpy(dtype):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    Z, y = make_features(20, (4, 8, 7), k=3, dtype=dtype)
    ref = crn.construct_operators(Z, y)
    ops = crn.construct_operators(torch.from_numpy(Z).cuda(), torch.from_numpy(y).cuda())
    assert ops.E_hat.device.type == "cuda"
    E, C = ops.kernels()
    E_ref, C_ref = ref.kernels()
    assert rel_err(C, C_ref) < RTOL[dtype]
    assert ops.rates.delta == pytest.approx(ref.rates.delta, rel=RTOL[dtype])


def _shift_each(Z, rng):
    out = np.empty_like(Z)
    axes = tuple(range(1, Z.ndim - 1))
    for i, z in enumerate(Z):
        shift = tuple(int(rng.integers(n)) for n in z.shape[1:])
        out[i] = np.roll(z, shift, axis=axes)
    return out


@pytest.mark.parametrize("sample_shape", [(3, 11), (2, 5, 6)], ids=["1d", "2d"])
def test_rates_are_shift_invariant(sample_shape):
    Z, y = make_features(12, sample_shape, k=3)
    shifted = _shift_each(Z, np.random.default_rng(5))
    assert not np.allclose(shifted, Z)
    a, b = crn.rate_reduction(Z, y), crn.rate_reduction(shifted, y)
    assert b.expansion == pytest.approx(a.expansion, rel=1e-12)
    assert b.compression == pytest.approx(a.compression, rel=1e-12)


def test_closed_form_orthogonal_subspaces():
    # Class j: m_j copies of the basis vector e_j. Then
    # R = 1/2 sum_j log(1 + alpha m_j), R_c = sum_j gamma_j/2 log(1 + alpha_j m_j).
    d, eps2, counts = 6, 0.3, np.array([2, 3, 5])
    y = np.repeat(np.arange(3), counts)
    Z = np.eye(d)[y]
    m = len(y)
    alpha = d / (m * eps2)
    expected_R = 0.5 * np.sum(np.log1p(alpha * counts))
    expected_Rc = np.sum(counts / m * 0.5 * np.log1p(d / eps2))
    for domain in ("spectral", "spatial"):
        r = crn.rate_reduction(Z, y, eps2=eps2, domain=domain)
        assert r.expansion == pytest.approx(expected_R, rel=1e-13)
        assert r.compression == pytest.approx(expected_Rc, rel=1e-13)
    ops = crn.construct_operators(Z, y, eps2=eps2)
    # E = alpha (I + alpha Z^T Z)^-1 is diagonal: alpha / (1 + alpha m_j) on e_j, alpha elsewhere.
    diag = np.full(d, alpha)
    diag[:3] = alpha / (1 + alpha * counts)
    np.testing.assert_allclose(ops.E_hat, np.diag(diag), rtol=1e-13, atol=1e-15)


def test_inputs_not_modified():
    torch = pytest.importorskip("torch")
    Z, y = make_features(9, (2, 6), k=3)
    Z_copy, y_copy = Z.copy(), y.copy()
    for domain in ("spectral", "spatial"):
        crn.construct_operators(Z, y, domain=domain)
        crn.rate_reduction(Z, y, domain=domain)
    np.testing.assert_array_equal(Z, Z_copy)
    np.testing.assert_array_equal(y, y_copy)
    Zt = torch.from_numpy(Z.copy())
    crn.construct_operators(Zt, y)
    np.testing.assert_array_equal(Zt.numpy(), Z_copy)


def test_spatial_refuses_huge_dense_matrices():
    with pytest.raises(ValueError, match=r"needs dense 58800 x 58800 matrices .*C=75.*T=784"):
        spatial.check_dense_size((75, 28, 28), 8)
    Z, y = make_features(4, (4, 16), k=2)
    with pytest.raises(ValueError, match="domain='spectral'"):
        spatial.dense_operators(NumpyBackend(), Z, y, 2, 0.1, max_bytes=1000)


def test_threads_setting():
    with crn.num_threads(1):
        assert crn.get_num_threads() == 1
        Z, y = make_features(10, (2, 8), k=2)
        one = crn.construct_operators(Z, y)
    two = crn.construct_operators(Z, y)
    assert rel_err(one.C_hat, two.C_hat) < 1e-13
    with pytest.raises(ValueError, match="n_threads must be a positive integer, got 0"):
        crn.set_num_threads(0)
    with pytest.raises(TypeError, match="n_threads must be a positive integer"):
        crn.set_num_threads(1.5)


def test_scipy_fft_fallback_without_pyfftw(monkeypatch):
    from convredunet.backend import numpy_backend

    Z, y = make_features(10, (3, 12), k=2)
    with_fftw = crn.construct_operators(Z, y)
    monkeypatch.setattr(numpy_backend, "_plans", None)
    without = crn.construct_operators(Z, y)
    assert rel_err(without.C_hat, with_fftw.C_hat) < 1e-13
    E, _ = without.kernels()
    assert rel_err(E, with_fftw.kernels()[0]) < 1e-13


def test_threaded_construction_matches_single_thread(monkeypatch):
    from convredunet import _parallel

    rng = np.random.default_rng(2)
    Z, _ = make_features(17, (8, 6), k=1)
    y = np.array([0] * 3 + [1] * 5 + [2] * 9)
    rng.shuffle(y)
    with crn.num_threads(1):
        one = crn.construct_operators(Z, y)
    monkeypatch.setattr(_parallel, "MIN_ELEMENTS", 0)
    with crn.num_threads(3):
        split = crn.construct_operators(Z, y)
    assert rel_err(split.E_hat, one.E_hat) < 1e-13
    assert rel_err(split.C_hat, one.C_hat) < 1e-13
    assert split.rates.delta == pytest.approx(one.rates.delta, rel=1e-13)


def test_small_transforms_leave_the_callers_arrays_alone():
    from convredunet.backend import NumpyBackend

    backend = NumpyBackend()
    x = np.random.default_rng(3).standard_normal((6, 2, 10))
    first = backend.rfft(x, 1)
    again = backend.rfft(2 * x, 1)  # the same plan: the first result must not change
    np.testing.assert_allclose(first, np.fft.rfft(x, axis=-1, norm="ortho"), atol=1e-15)
    spectrum = first.copy()
    back = backend.irfft(first, (10,))
    np.testing.assert_array_equal(first, spectrum)  # c2r destroys its input: not the caller's
    np.testing.assert_allclose(back, x, atol=1e-14)
    np.testing.assert_allclose(again, 2 * first, atol=1e-14)
