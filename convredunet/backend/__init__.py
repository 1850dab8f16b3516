"""Array backends: the handful of primitives the algorithms need.

The algorithms in :mod:`convredunet.spectral`, :mod:`convredunet.spatial` and
the network code are written once against this interface; an input's array
library picks the backend (:func:`get_backend`).

Every backend provides
    ``rfft(x, ndim)`` / ``irfft(x_hat, shape, unitary)``: real FFTs over the last axes,
    ``H(a)``: conjugate transpose of the last two axes,
    ``hpd_inverse_logdet(a)`` / ``hpd_logdet(a)``: batched Hermitian positive
    definite inverse and log-determinant through Cholesky factors,
plus small helpers (``eye``, ``zeros``, ``asnumpy``, ...).
"""
import sys

from .numpy_backend import NumpyBackend

__all__ = ["get_backend", "NumpyBackend", "is_torch"]

_numpy_backend = NumpyBackend()
_torch_backend = None


def is_torch(x):
    """True when ``x`` is a torch tensor (without importing torch)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _torch():
    global _torch_backend
    if _torch_backend is None:
        from .torch_backend import TorchBackend

        _torch_backend = TorchBackend()
    return _torch_backend


def get_backend(x):
    """The backend for array ``x``: torch for tensors, numpy otherwise."""
    return _torch() if is_torch(x) else _numpy_backend
