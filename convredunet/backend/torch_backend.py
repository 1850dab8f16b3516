"""Torch backend: torch.fft and batched Cholesky on the tensor's device."""
import math

import numpy as np
import torch


def _H(a):
    return a.transpose(-1, -2).conj()


def _cholesky(a):
    l, info = torch.linalg.cholesky_ex(a)
    if bool((info != 0).any()):
        raise np.linalg.LinAlgError(
            "a matrix that must be Hermitian positive definite is not "
            "(non-finite features, or eps2 too small for this precision?)"
        )
    return l


def _logdet_from_cholesky(l):
    return 2.0 * torch.log(torch.diagonal(l, dim1=-2, dim2=-1).real).sum(dim=-1)


class TorchBackend:
    """Primitives on torch tensors (CPU or CUDA)."""

    name = "torch"
    splits_threads = False

    def template(self, device, dtype):
        """A zero-size real tensor of ``dtype`` (a name) on ``device``.

        Raises ValueError for a device torch does not know, a device type other
        than CPU or CUDA, and CUDA when torch sees no GPU.
        """
        try:
            dev = torch.device("cpu" if device is None else device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda', got "
                             f"{device!r} ({exc})") from None
        if dev.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be a CPU or CUDA device, got {device!r} (device "
                             f"type {dev.type!r} cannot run the solves)")
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise ValueError(f"device={device!r} needs CUDA, but torch sees no GPU "
                                 "(use device='cpu')")
            if dev.index is not None and dev.index >= torch.cuda.device_count():
                raise ValueError(f"device={device!r} does not exist: torch sees "
                                 f"{torch.cuda.device_count()} GPU(s)")
        return torch.zeros(0, dtype=getattr(torch, dtype), device=dev)

    def real_template(self, x):
        """A zero-size real tensor of ``x``'s precision on ``x``'s device."""
        return torch.zeros(0, dtype=self.real_dtype(x), device=x.device)

    def as_real_input(self, Z, name):
        """A user's tensor as a real float32/float64 tensor, detached from autograd.

        Other real dtypes become float64; complex tensors are refused, and so
        are tensors on devices that cannot run the computation (``meta``).
        """
        if Z.is_complex():
            raise ValueError(f"Complex data not supported: {name} must be real, got a "
                             f"complex tensor of dtype {Z.dtype}")
        if Z.device.type not in ("cpu", "cuda"):
            raise ValueError(f"{name} is on device {Z.device}; convredunet computes on CPU "
                             "or CUDA tensors")
        Z = Z.detach()
        if Z.dtype in (torch.float32, torch.float64):
            return Z
        if Z.dtype.is_floating_point:
            raise TypeError(f"{name} must be float32 or float64, got {Z.dtype}")
        return Z.to(torch.float64)

    def all_finite(self, x):
        """True when every entry of ``x`` is finite."""
        return bool(torch.isfinite(x).all())

    def finite_mask(self, x):
        """Elementwise finiteness of ``x`` as a numpy bool array."""
        return torch.isfinite(x).cpu().numpy()

    # --- arrays --------------------------------------------------------------
    def asnumpy(self, x):
        return x.detach().cpu().resolve_conj().resolve_neg().numpy()

    def from_numpy(self, x, like):
        return torch.as_tensor(np.asarray(x), device=like.device)

    def device(self, x):
        return x.device

    def eye(self, n, like):
        return torch.eye(n, dtype=like.dtype, device=like.device)

    def zeros(self, shape, like):
        return torch.zeros(shape, dtype=like.dtype, device=like.device)

    def complex_dtype(self, x):
        return torch.complex128 if x.dtype in (torch.float64, torch.complex128) else torch.complex64

    def real_dtype(self, x):
        return torch.float64 if x.dtype in (torch.float64, torch.complex128) else torch.float32

    def max_exponent(self, like):
        """The largest binary exponent of ``like``'s precision (1024 for float64)."""
        return math.frexp(torch.finfo(like.dtype).max)[1]

    def memory_bytes(self, like):
        """Memory of ``like``'s device (bytes): the GPU's, or the machine's for the CPU."""
        if like.device.type == "cuda":
            return torch.cuda.get_device_properties(like.device).total_memory
        from .numpy_backend import NumpyBackend

        return NumpyBackend().memory_bytes(like)

    def real_dtype_name(self, x):
        """``"float64"`` or ``"float32"``: the real precision of ``x``."""
        return str(self.real_dtype(x)).replace("torch.", "")

    def astype(self, x, like):
        return torch.as_tensor(x, dtype=like.dtype, device=like.device)

    def astype_complex(self, x, like):
        return torch.as_tensor(np.asarray(x), dtype=self.complex_dtype(like), device=like.device)

    def as_dtype_of(self, x, like):
        return x.to(like.dtype)

    def einsum(self, spec, *operands):
        return torch.einsum(spec, *operands)

    def add_to_diagonal(self, x, value):
        """``x[..., i, i] += value`` in place (``value`` broadcasts against ``x[..., 0]``)."""
        x.diagonal(dim1=-2, dim2=-1).add_(value)

    def concat(self, xs, axis=0):
        return torch.cat(xs, dim=axis)

    def stack(self, xs, axis=0):
        return torch.stack(xs, dim=axis)

    def permute(self, x, axes):
        return x.permute(*axes)

    def reshape(self, x, shape):
        return x.reshape(shape)

    def take(self, x, indices):
        return x[torch.as_tensor(indices, device=x.device)]

    def take_rows(self, x, indices):
        """``x[..., indices, :]``."""
        return x[..., torch.as_tensor(indices, device=x.device), :]

    def gather(self, x, rows, cols):
        """``x[..., rows, cols]`` with broadcasting integer index arrays."""
        return x[..., torch.as_tensor(rows, device=x.device), torch.as_tensor(cols,
                                                                              device=x.device)]

    def take_columns(self, x, indices):
        """``x[..., indices]``: samples of a spectrum ``(F, C, m)``."""
        return x[..., torch.as_tensor(indices, device=x.device)]

    def itemsize(self, x):
        return x.element_size()

    def contiguous(self, x):
        return x.contiguous()

    def to_float(self, x):
        return float(x)

    def abs2(self, x):
        """``|x|^2`` elementwise, real."""
        return x.real ** 2 + x.imag ** 2 if x.is_complex() else x * x

    def channel_sq_norms(self, x):
        """``sum_c |x[f, c, b]|^2`` of ``(F, C, b)``, shape ``(F, b)``, real."""
        r = torch.view_as_real(x) if x.is_complex() else x.unsqueeze(-1)
        return torch.einsum("fcbr,fcbr->fb", r, r)

    def abs_(self, x):
        """``|x|`` in place (returns ``x``)."""
        return x.abs_()

    def relu_(self, x):
        """``max(x, 0)`` in place (returns ``x``)."""
        return x.clamp_(min=0)

    def softmax(self, x, axis):
        return torch.softmax(x, dim=axis)

    def sqrt(self, x):
        return torch.sqrt(x)

    def flip(self, x, axis):
        return torch.flip(x, dims=(axis,))

    def cumsum(self, x, axis):
        return torch.cumsum(x, dim=axis)

    def where(self, condition, x, y):
        return torch.where(condition, x, y)

    def maximum(self, x, value):
        return torch.clamp(x, min=value)

    def argmax(self, x, axis):
        return torch.argmax(x, dim=axis)

    def max_abs_columns(self, x):
        """``max |Re|, |Im|`` over all axes but the last, shape ``(b,)`` (a spectrum's samples)."""
        r = torch.view_as_real(x) if x.is_complex() else x.unsqueeze(-1)
        return r.abs().amax(dim=-1).reshape(-1, x.shape[-1]).amax(dim=0)

    def max_abs_rows(self, x):
        """``max_i |x[b, i]|`` of a 2D tensor, shape ``(b,)``."""
        return x.abs().amax(dim=1)

    def pow2_scale(self, x, limit=None):
        """Powers of two ``s`` with ``x * s`` in ``[0.5, 1)`` (1 where ``x`` is 0).

        ``limit`` caps ``|log2 s|`` (default: what ``x``'s dtype can hold).
        """
        _, exponent = torch.frexp(x)
        if limit is None:
            limit = math.frexp(torch.finfo(x.dtype).max)[1] - 2
        exponent = exponent.clamp(-limit, limit)
        return torch.ldexp(torch.ones_like(x), -exponent)

    def softmin(self, x, scale, axis):
        """``softmax(-scale * x)`` along ``axis``, also where ``scale * x`` overflows."""
        scores = -scale * x
        shifted = (-scale * (x - x.amin(dim=axis, keepdim=True))).clamp(
            min=-torch.finfo(x.dtype).max)
        scores = torch.where(torch.isfinite(scores).all(), scores, shifted)
        return torch.softmax(scores, dim=axis)

    def class_sq_norms(self, x, weights):
        """``sum_f w_f sum_c |x[f, k, c, b]|^2``, shape ``(k, b)``."""
        if not x.is_complex():
            return torch.einsum("f,fkcb,fkcb->kb", weights, x, x)
        r = torch.view_as_real(x)
        return torch.einsum("f,fkcbr,fkcbr->kb", weights, r, r)

    # --- FFT -----------------------------------------------------------------
    def rfft(self, x, ndim):
        return torch.fft.rfftn(x, dim=tuple(range(-ndim, 0)), norm="ortho")

    def irfft(self, x_hat, shape, unitary=True):
        norm = "ortho" if unitary else "backward"
        return torch.fft.irfftn(x_hat, s=tuple(shape), dim=tuple(range(-len(shape), 0)),
                                norm=norm)

    # --- linear algebra ------------------------------------------------------
    H = staticmethod(_H)

    def hmatmul(self, a, b):
        """``a^H @ b`` (batched); the conjugate transpose stays a lazy view."""
        return _H(a) @ b

    def gram(self, a):
        """``a^H a`` of a batch ``(..., n, w)``: Hermitian ``(..., w, w)``."""
        return _H(a) @ a

    def eigh(self, a):
        """Eigenvalues (ascending, real) and eigenvectors of Hermitian matrices ``(..., n, n)``."""
        return torch.linalg.eigh(a)

    def hpd_logdet(self, a):
        return _logdet_from_cholesky(_cholesky(a))

    def hpd_inverse_logdet(self, a):
        l = _cholesky(a)
        return torch.cholesky_inverse(l), _logdet_from_cholesky(l)
