"""Every backend primitive against plain numpy, and backend resolution."""
import numpy as np
import pytest
import torch

from convredunet.backend import NumpyBackend, get_backend, resolve, workspace_of
from convredunet.backend.torch_backend import TorchBackend

BACKENDS = [NumpyBackend(), TorchBackend()]
DTYPES = [np.float64, np.float32]
TOL = {np.float64: 1e-12, np.float32: 1e-5}


def _rng():
    return np.random.default_rng(0)


def _put(backend, x):
    return torch.from_numpy(np.ascontiguousarray(x)) if backend.name == "torch" else x


def _get(x):
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().resolve_conj().resolve_neg().numpy()
    return np.asarray(x)


def _close(got, want, dtype):
    got, want = _get(got), np.asarray(want)
    assert got.shape == want.shape
    scale = max(1.0, float(np.abs(want).max())) if want.size else 1.0
    assert np.abs(got - want).max(initial=0.0) <= TOL[dtype] * scale


def _hpd(rng, shape, n, dtype):
    a = rng.standard_normal(shape + (n, n)) + 1j * rng.standard_normal(shape + (n, n))
    a = a @ np.conj(np.swapaxes(a, -1, -2)) + n * np.eye(n)
    return a.astype(np.complex128 if dtype == np.float64 else np.complex64)


@pytest.fixture(params=BACKENDS, ids=lambda b: b.name)
def backend(request):
    return request.param


@pytest.fixture(params=DTYPES, ids=["float64", "float32"])
def real(request):
    return request.param


def test_fft_roundtrip_and_against_numpy(backend, real):
    x = _rng().standard_normal((3, 2, 8, 6)).astype(real)
    got = backend.rfft(_put(backend, x), 2)
    _close(got, np.fft.rfftn(x, axes=(-2, -1), norm="ortho"), real)
    back = backend.irfft(got, (8, 6), unitary=True)
    _close(back, x, real)
    plain = backend.irfft(got, (8, 6), unitary=False)
    _close(plain, np.fft.irfftn(_get(got), s=(8, 6), axes=(-2, -1)), real)


def test_linear_algebra_against_numpy(backend, real):
    rng = _rng()
    a = _hpd(rng, (4,), 5, real)
    inv, logdet = backend.hpd_inverse_logdet(_put(backend, a))
    _close(inv, np.linalg.inv(a), real)
    _close(logdet, np.linalg.slogdet(a)[1], real)
    _close(backend.hpd_logdet(_put(backend, a)), np.linalg.slogdet(a)[1], real)
    _close(backend.H(_put(backend, a)), np.conj(np.swapaxes(a, -1, -2)), real)
    b = a[..., :3]
    _close(backend.hmatmul(_put(backend, a), _put(backend, b)),
           np.conj(np.swapaxes(a, -1, -2)) @ b, real)


def test_not_positive_definite_is_linalg_error(backend):
    a = -np.eye(3, dtype=np.complex128)[None]
    with pytest.raises(np.linalg.LinAlgError):
        backend.hpd_inverse_logdet(_put(backend, a))


def test_elementwise_and_reductions(backend, real):
    rng = _rng()
    x = rng.standard_normal((4, 3)).astype(real)
    bx = _put(backend, x)
    _close(backend.abs2(bx), x * x, real)
    _close(backend.sqrt(_put(backend, np.abs(x))), np.sqrt(np.abs(x)), real)
    _close(backend.maximum(bx, 0.0), np.maximum(x, 0.0), real)
    e = np.exp(x - x.max(0))
    _close(backend.softmax(bx, 0), e / e.sum(0), real)
    assert np.array_equal(_get(backend.argmax(bx, 1)), np.argmax(x, 1))
    _close(backend.einsum("ab,ab->a", bx, bx), np.einsum("ab,ab->a", x, x), real)
    c = (rng.standard_normal((5, 2, 3, 4)) + 1j * rng.standard_normal((5, 2, 3, 4)))
    c = c.astype(np.complex128 if real == np.float64 else np.complex64)
    w = rng.random(5).astype(real)
    _close(backend.class_sq_norms(_put(backend, c), _put(backend, w)),
           np.einsum("f,fkcb->kb", w, np.abs(c) ** 2), real)
    _close(backend.abs2(_put(backend, c)), np.abs(c) ** 2, real)


def test_array_helpers(backend, real):
    x = np.arange(24, dtype=real).reshape(2, 3, 4)
    bx = _put(backend, x)
    _close(backend.permute(bx, (2, 0, 1)), np.transpose(x, (2, 0, 1)), real)
    _close(backend.reshape(bx, (6, 4)), x.reshape(6, 4), real)
    _close(backend.concat([bx, bx], axis=1), np.concatenate([x, x], 1), real)
    _close(backend.stack([bx, bx]), np.stack([x, x]), real)
    _close(backend.take(bx, np.array([1, 0])), x[[1, 0]], real)
    _close(backend.contiguous(backend.permute(bx, (1, 0, 2))), x.transpose(1, 0, 2), real)
    _close(backend.eye(3, like=bx), np.eye(3), real)
    _close(backend.zeros((2, 2), like=bx), np.zeros((2, 2)), real)
    assert backend.itemsize(bx) == np.dtype(real).itemsize
    assert backend.to_float(bx[1, 2, 3]) == 23.0
    m = np.ones((2, 3, 3), dtype=real)
    bm = _put(backend, m.copy())
    backend.add_to_diagonal(bm, _put(backend, np.array([[1.0], [2.0]], dtype=real)))
    want = m + np.eye(3) * np.array([1.0, 2.0])[:, None, None]
    _close(bm, want, real)
    complex_x = backend.astype_complex(x, like=bx)
    assert _get(complex_x).dtype == (np.complex128 if real == np.float64 else np.complex64)
    assert backend.all_finite(bx)
    y = x.copy()
    y[0, 0, 0] = np.nan
    assert not backend.all_finite(_put(backend, y))
    assert not _get(backend.finite_mask(_put(backend, y)))[0, 0, 0]


def test_as_real_input_converts_and_refuses(backend):
    ints = np.arange(6).reshape(2, 3)
    got = backend.as_real_input(_put(backend, ints), "X")
    assert _get(got).dtype == np.float64 and np.array_equal(_get(got), ints)
    with pytest.raises(ValueError, match="Complex data not supported: X must be real"):
        backend.as_real_input(_put(backend, np.ones((2, 2), dtype=complex)), "X")


def test_torch_input_is_detached():
    x = torch.ones(2, 3, dtype=torch.float64, requires_grad=True)
    got = TorchBackend().as_real_input(x, "X")
    assert not got.requires_grad
    ws = resolve("torch", "cpu", "float64")
    assert not ws.to_working(x).requires_grad
    assert isinstance(resolve("numpy").to_working(x), np.ndarray)


def test_resolve_and_workspace_of():
    ws = resolve("numpy", None, "float32")
    assert ws.backend.name == "numpy" and ws.like.dtype == np.float32
    assert workspace_of(np.zeros(3, dtype=np.complex64)).key == ws.key
    assert get_backend(torch.zeros(1)).name == "torch"
    t = resolve("torch", "cpu", "float64")
    assert t.holds(torch.zeros(2, dtype=torch.float64))
    assert not t.holds(np.zeros(2))


@pytest.mark.parametrize("args, match", [
    (("jax", None, "float64"), "backend must be one of 'numpy', 'torch', got 'jax'"),
    (("numpy", None, "float16"), "dtype must be one of 'float64', 'float32', got 'float16'"),
    (("numpy", "cuda", "float64"), "device='cuda' needs backend='torch'"),
    (("torch", "bogus", "float64"), "device must be a torch device such as 'cpu' or 'cuda'"),
    (("torch", "meta", "float64"), "device must be a CPU or CUDA device, got 'meta'"),
])
def test_resolve_refuses(args, match):
    with pytest.raises(ValueError, match=match):
        resolve(*args)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_resolve_cuda_without_gpu():
    with pytest.raises(ValueError, match="needs CUDA, but torch sees no GPU"):
        resolve("torch", "cuda", "float64")


def test_scaling_primitives(backend, real):
    x = np.array([[3.0, -1e-3, 0.5], [0.0, 0.0, 0.0], [1e30, 2.0, -4e30]]).astype(real)
    bx = _put(backend, x)
    _close(backend.max_abs_rows(bx), np.abs(x).max(1), real)
    scale = _get(backend.pow2_scale(backend.max_abs_rows(bx)))
    assert np.all(np.log2(scale) == np.round(np.log2(scale)))  # exact powers of two
    top = np.abs(x).max(1) * scale
    assert np.all((top == 0) | ((top >= 0.5) & (top < 1)))
    assert _get(backend.pow2_scale(backend.max_abs_rows(bx), limit=3)).max() <= 8
    assert backend.max_exponent(bx) == np.finfo(real).maxexp
    assert backend.real_dtype_name(bx) == np.dtype(real).name


def test_softmin_matches_numpy_and_survives_overflow(backend, real):
    x = _rng().random((3, 5)).astype(real)
    e = np.exp(-2.0 * x + 2.0 * x.min(0))
    _close(backend.softmin(_put(backend, x), 2.0, 0), e / e.sum(0), real)
    big = _get(backend.softmin(_put(backend, x + 1), float(np.finfo(real).max), 0))
    assert np.isfinite(big).all()
    assert np.array_equal(big.argmax(0), x.argmin(0))
