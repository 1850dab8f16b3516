"""Array backends: the one place that knows which array library is in use.

The algorithms in :mod:`convredunet.spectral`, :mod:`convredunet.spatial` and
:mod:`convredunet.network` are written once against the primitives below; no
code outside this package asks which library an array belongs to.

Resolving
    :func:`resolve` turns ``(name, device, dtype)`` (an estimator's settings)
    into a :class:`Workspace`: the backend and a zero-size template array that
    fixes library, precision and device; :func:`workspace_of` does the same
    from an array. ``Workspace.to_working(X)`` converts a user's numpy array or
    torch tensor into the workspace (detached from any autograd graph), and
    ``Workspace.to_user(x, X)`` converts a result back into ``X``'s library.

The primitives every backend provides (tested against numpy, one by one, in
``tests/test_backend.py``)
    arrays: ``asnumpy``, ``from_numpy``, ``device``, ``eye``, ``zeros``,
    ``astype``, ``astype_complex``, ``as_dtype_of``, ``complex_dtype``,
    ``real_dtype``, ``itemsize``, ``concat``, ``stack``, ``permute``, ``reshape``,
    ``take``, ``take_rows``, ``take_columns``, ``gather``, ``contiguous``, ``to_float``, ``all_finite``, ``finite_mask``,
    ``real_dtype_name``, ``template``, ``real_template``, ``memory_bytes``,
    ``as_real_input`` (a user's array checked and converted);
    elementwise and reductions: ``abs2``, ``sqrt``, ``maximum``, ``flip``, ``where``, ``cumsum``, ``softmax``, ``softmin``,
    ``max_abs_rows``, ``max_abs_columns``, ``pow2_scale`` (exact power-of-two rescaling), ``max_exponent``,
    ``argmax``, ``einsum``, ``class_sq_norms``, ``channel_sq_norms``, ``abs_``/``relu_``
    (in place), ``add_to_diagonal`` (in place);
    FFT: ``rfft(x, ndim)`` / ``irfft(x_hat, shape, unitary)``, unitary real
    FFTs over the last axes;
    linear algebra: ``H`` (conjugate transpose of the last two axes), ``hmatmul``
    (``a^H @ b`` without copying ``a``), ``gram`` (``a^H a``, Hermitian), ``eigh`` (batched Hermitian eigenproblems),
    ``hpd_inverse_logdet`` / ``hpd_logdet`` (batched Hermitian positive
    definite inverse and log-determinant through Cholesky factors; a matrix
    that is not HPD raises ``numpy.linalg.LinAlgError``);
    attributes: ``name``, ``splits_threads`` (whether convredunet may split
    work over Python threads: numpy releases the GIL in BLAS; torch threads
    itself).
"""
import dataclasses
import sys

import numpy as np

from .numpy_backend import NumpyBackend

__all__ = ["get_backend", "NumpyBackend", "is_torch", "to_numpy", "numpy_dtype", "Workspace",
           "resolve", "workspace_of", "runs_on_dask_workers", "BACKENDS", "DTYPES"]

BACKENDS = ("numpy", "torch")
DTYPES = ("float64", "float32")

_numpy_backend = NumpyBackend()
_torch_backend = None


def is_torch(x):
    """True when ``x`` is a torch tensor (without importing torch)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def runs_on_dask_workers(name):
    """Whether the backend called ``name`` runs on Dask workers (they run numpy only)."""
    return name == "numpy"


def to_numpy(x):
    """``x`` as a numpy array: tensors detached and copied to the CPU, the rest as ``np.asarray``."""
    return get_backend(x).asnumpy(x)


def numpy_dtype(x):
    """The numpy dtype of array ``x`` (``float64`` for a ``torch.float64`` tensor), no copy."""
    return get_backend(x).asnumpy(x.reshape(-1)[:0]).dtype


def _torch():
    global _torch_backend
    if _torch_backend is None:
        from .torch_backend import TorchBackend

        _torch_backend = TorchBackend()
    return _torch_backend


def get_backend(x):
    """The backend for array ``x``: torch for tensors, numpy otherwise."""
    return _torch() if is_torch(x) else _numpy_backend


def by_name(name):
    """The backend called ``name`` (one of :data:`BACKENDS`)."""
    if name == "torch":
        return _torch()
    if name == "numpy":
        return _numpy_backend
    raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {name!r}")


@dataclasses.dataclass(frozen=True)
class Workspace:
    """A backend and a zero-size template array: library, precision and device.

    Attributes
    ----------
    backend : NumpyBackend or TorchBackend
    like : array of shape (0,), real, of the working precision and device
    """

    backend: object
    like: object

    @property
    def key(self):
        """Hashable identity (library, real dtype, device), for caches."""
        return (self.backend.name, str(self.like.dtype), str(self.backend.device(self.like)))

    def holds(self, x):
        """True when array ``x`` is in this workspace's library, precision and device."""
        backend = get_backend(x)
        return (backend is self.backend
                and str(backend.real_dtype(x)) == str(self.like.dtype)
                and str(backend.device(x)) == str(self.backend.device(self.like)))

    def to_working(self, X):
        """``X`` (numpy array or torch tensor, real) in this workspace, detached.

        A tensor that requires grad is detached: nothing the library stores
        keeps an autograd graph alive.
        """
        if is_torch(X):
            X = X.detach()
            if self.backend.name == "torch":
                return X.to(dtype=self.like.dtype, device=self.like.device)
            X = X.cpu().numpy()
        return self.backend.astype(X, like=self.like)

    def to_user(self, x, X_in):
        """Result ``x`` of this workspace in the library of the user's input ``X_in``."""
        if is_torch(X_in):
            if self.backend.name == "torch":
                return x
            import torch

            return torch.from_numpy(np.asarray(x))
        return self.backend.asnumpy(x)

    def user_empty(self, shape, X_in):
        """An uninitialized array of ``shape`` in ``X_in``'s library, for :meth:`to_user` results.

        numpy input: a numpy array; a tensor: a tensor on this workspace's
        device (torch backend) or the CPU (numpy backend). Working precision.
        """
        dtype = self.backend.real_dtype_name(self.like)
        if is_torch(X_in):
            import torch

            device = self.backend.device(self.like)
            return torch.empty(shape, dtype=getattr(torch, dtype), device=str(device))
        return np.empty(shape, dtype=dtype)


def resolve(name="numpy", device=None, dtype="float64"):
    """The :class:`Workspace` for a backend name, device and dtype name.

    Raises
    ------
    ValueError
        For an unknown backend or dtype, a device other than the CPU with
        numpy, a device torch does not know, or CUDA when it is unavailable.
    """
    backend = by_name(name)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(map(repr, DTYPES))}, got {dtype!r}")
    if name == "numpy":
        if device not in (None, "cpu"):
            raise ValueError(f"device={device!r} needs backend='torch' (the numpy backend "
                             "runs on the CPU)")
        return Workspace(backend, np.zeros(0, dtype=dtype))
    return Workspace(backend, backend.template(device, dtype))


def workspace_of(x):
    """The :class:`Workspace` of array ``x`` (its library, real precision and device)."""
    backend = get_backend(x)
    return Workspace(backend, backend.real_template(x))
