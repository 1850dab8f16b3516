"""NumPy backend: pyFFTW for small transforms, scipy.fft for large ones, batched LAPACK."""
import collections
import os
import threading

import numpy as np
import scipy.linalg
import scipy.linalg.blas
import scipy.fft

from .._threads import get_num_threads

try:
    import pyfftw
    import pyfftw.builders
except ImportError:  # pragma: no cover - exercised only without pyfftw
    pyfftw = None

# Transforms of fewer points than this run on pyFFTW, one thread, with plans kept in
# this module's own cache (pyFFTW's process-wide interface cache is left as the
# process has it); larger ones on scipy.fft (pocketfft), on the set number of
# threads. For small transforms a reused plan wins and threads cost more than they
# save (7.4 ms with 2 threads vs 0.8 ms with 1 for 1000 x 16 x 40 points on a busy
# 2-core machine); large ones run no faster on pyFFTW than on pocketfft (100 x 64 x
# 1460 and 36 x 256 x 251 real signals, one thread: 0.080 and 0.040 s against 0.071
# and 0.034 s), which plans nothing, keeps nothing and needs no OpenMP threads.
_FFT_SMALL_POINTS = 1 << 20
# Bytes of work arrays the plan cache may hold (least recently used plans go first).
_PLAN_CACHE_BYTES = 64 << 20


class _PlanCache:
    """pyFFTW plans by (kind, shape, dtype, axes), least recently used first out.

    Each plan owns its input and output arrays: a transform copies its input in
    (a complex-to-real transform destroys it) and its output out, so no caller
    ever shares an array with the cache. Thread-safe.
    """

    def __init__(self, max_bytes):
        self.max_bytes = max_bytes
        self._plans = collections.OrderedDict()
        self._lock = threading.Lock()

    def transform(self, kind, x, shape, axes, ortho):
        key = (kind, x.shape, x.dtype.str, shape, axes)
        with self._lock:
            entry = self._plans.pop(key, None)
        if entry is None:
            template = pyfftw.empty_aligned(x.shape, dtype=x.dtype)
            build = pyfftw.builders.irfftn if kind == "irfftn" else pyfftw.builders.rfftn
            plan = build(template, s=shape, axes=axes, threads=1,
                         planner_effort="FFTW_ESTIMATE", avoid_copy=False)
            entry = (plan, threading.Lock())
        plan, lock = entry
        with lock:  # one transform at a time per plan
            plan.input_array[...] = x
            plan(normalise_idft=not ortho, ortho=ortho)
            out = plan.output_array.copy()
        with self._lock:
            self._plans[key] = entry
            size = sum(p.input_array.nbytes + p.output_array.nbytes
                       for p, _ in self._plans.values())
            while size > self.max_bytes and len(self._plans) > 1:
                old, _ = self._plans.popitem(last=False)[1]
                size -= old.input_array.nbytes + old.output_array.nbytes
        return out


_plans = _PlanCache(_PLAN_CACHE_BYTES) if pyfftw is not None else None


def _small(x):
    return _plans is not None and x.size < _FFT_SMALL_POINTS


# Matrices at most this size are inverted by one batched LAPACK call; larger
# ones by block elimination on Schur complements (all batched BLAS-3).
_LEAF = 32


def _H(a):
    return np.conj(np.swapaxes(a, -1, -2))


def _cholesky(a):
    try:
        return np.linalg.cholesky(a)
    except np.linalg.LinAlgError as exc:
        raise np.linalg.LinAlgError(
            "a matrix that must be Hermitian positive definite is not "
            "(non-finite features, or eps2 too small for this precision?)"
        ) from exc


def _logdet_from_cholesky(l):
    diag = np.diagonal(l, axis1=-2, axis2=-1).real
    return 2.0 * np.log(diag).sum(axis=-1)


def _blocked_inverse_logdet(a):
    """Inverse and log-determinant of a batch of HPD matrices.

    Block elimination: with ``a = [[A11, A12], [A12^H, A22]]`` and the Schur
    complement ``S = A22 - A12^H A11^-1 A12`` (HPD as well),
    ``logdet a = logdet A11 + logdet S`` and the inverse follows from
    ``A11^-1`` and ``S^-1``.  The recursion stops at blocks of ``_LEAF``
    channels, which are factored by batched Cholesky.
    """
    n = a.shape[-1]
    if n <= _LEAF:
        l = _cholesky(a)
        l_inv = np.linalg.inv(l)
        return _H(l_inv) @ l_inv, _logdet_from_cholesky(l)
    h = n // 2
    a12 = a[..., :h, h:]
    b11, logdet1 = _blocked_inverse_logdet(a[..., :h, :h])
    x = b11 @ a12
    s = a[..., h:, h:] - _H(a12) @ x
    s = 0.5 * (s + _H(s))
    b22, logdet2 = _blocked_inverse_logdet(s)
    b12 = -(x @ b22)
    out = np.empty_like(a)
    out[..., :h, :h] = b11 - b12 @ _H(x)
    out[..., :h, h:] = b12
    out[..., h:, :h] = _H(b12)
    out[..., h:, h:] = b22
    return out, logdet1 + logdet2


def _refuse_ragged(Z, name):
    """ValueError for a sequence of signals of different shapes, saying how to pad them."""
    try:
        shapes = {np.shape(item) for item in Z}
    except TypeError:
        return
    if len(shapes) > 1:
        lengths = sorted({shape[-1] for shape in shapes if shape})
        raise ValueError(f"{name} holds signals of different shapes ({len(shapes)} shapes, "
                         f"lengths {lengths[0]} to {lengths[-1]}): the networks take signals of "
                         "one size; pad them to the longest (e.g. numpy.pad with zeros or the "
                         "edge value at the end of each signal) or resample them to one "
                         "length first") from None


class NumpyBackend:
    """Primitives on numpy arrays (CPU)."""

    name = "numpy"
    splits_threads = True

    def template(self, device, dtype):
        """A zero-size real array of ``dtype`` (a name); ``device`` must be the CPU."""
        return np.zeros(0, dtype=dtype)

    def real_template(self, x):
        """A zero-size real array of ``x``'s precision."""
        return np.zeros(0, dtype=self.real_dtype(x))

    def as_real_input(self, Z, name):
        """A user's array as a real float32/float64 numpy array (a copy only if converted).

        Integers, booleans and numeric object arrays become float64; complex,
        sparse, string and other arrays are refused with a TypeError/ValueError.
        """
        if hasattr(Z, "toarray") or type(Z).__module__.startswith("scipy.sparse"):
            raise TypeError(f"Sparse data is not supported: {name} must be a dense array "
                            f"(use {name}.toarray()), got {type(Z).__name__}")
        if not isinstance(Z, np.ndarray):
            try:
                Z = np.asarray(Z)
            except (TypeError, ValueError) as exc:
                _refuse_ragged(Z, name)
                raise TypeError(
                    f"{name} must be a numpy array or a torch tensor, got {type(Z).__name__}"
                ) from exc
            if Z.dtype == object:
                _refuse_ragged(Z, name)
        if np.iscomplexobj(Z):
            raise ValueError(f"Complex data not supported: {name} must be real, got complex "
                             f"dtype {Z.dtype}")
        if Z.dtype in (np.float32, np.float64):
            return Z
        if Z.dtype.kind in "biu":
            return Z.astype(np.float64)
        if Z.dtype.kind == "O":
            try:
                return Z.astype(np.float64)
            except (TypeError, ValueError) as exc:
                raise TypeError(f"{name} must hold numbers, got an object array that is "
                                f"not numeric ({exc})") from None
        raise TypeError(f"{name} must be a float32 or float64 array, got dtype {Z.dtype}")

    def all_finite(self, x):
        """True when every entry of ``x`` is finite."""
        return bool(np.isfinite(x).all())

    def finite_mask(self, x):
        """Elementwise finiteness of ``x`` as a numpy bool array."""
        return np.isfinite(x)

    # --- arrays --------------------------------------------------------------
    def asnumpy(self, x):
        return np.asarray(x)

    def from_numpy(self, x, like):
        return np.asarray(x)

    def device(self, x):
        return "cpu"

    def eye(self, n, like):
        return np.eye(n, dtype=like.dtype)

    def zeros(self, shape, like):
        return np.zeros(shape, dtype=like.dtype)

    def complex_dtype(self, x):
        return np.result_type(x.dtype, np.complex64)

    def real_dtype(self, x):
        return np.zeros((), dtype=x.dtype).real.dtype

    def max_exponent(self, like):
        """The largest binary exponent of ``like``'s precision (1024 for float64)."""
        return int(np.finfo(like.dtype).maxexp)

    def memory_bytes(self, like):
        """Physical memory of the machine ``like`` lives on (bytes), or None if unknown."""
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
            return None

    def real_dtype_name(self, x):
        """``"float64"`` or ``"float32"``: the real precision of ``x``."""
        return str(self.real_dtype(x))

    def astype(self, x, like):
        return np.asarray(x, dtype=like.dtype)

    def astype_complex(self, x, like):
        return np.asarray(x, dtype=self.complex_dtype(like))

    def as_dtype_of(self, x, like):
        return x.astype(like.dtype, copy=False)

    def einsum(self, spec, *operands):
        return np.einsum(spec, *operands)

    def add_to_diagonal(self, x, value):
        """``x[..., i, i] += value`` in place (``value`` broadcasts against ``x[..., 0]``)."""
        diagonal = np.einsum("...ii->...i", x)
        diagonal += value

    def concat(self, xs, axis=0):
        return np.concatenate(xs, axis=axis)

    def stack(self, xs, axis=0):
        return np.stack(xs, axis=axis)

    def permute(self, x, axes):
        return np.transpose(x, axes)

    def reshape(self, x, shape):
        return np.reshape(x, shape)

    def take(self, x, indices):
        return x[indices]

    def take_rows(self, x, indices):
        """``x[..., indices, :]``."""
        return x[..., indices, :]

    def gather(self, x, rows, cols):
        """``x[..., rows, cols]`` with broadcasting integer index arrays."""
        return x[..., rows, cols]

    def take_columns(self, x, indices):
        """``x[..., indices]``: samples of a spectrum ``(F, C, m)``."""
        return x[..., indices]

    def itemsize(self, x):
        return x.dtype.itemsize

    def contiguous(self, x):
        return np.ascontiguousarray(x)

    def to_float(self, x):
        return float(x)

    def abs2(self, x):
        """``|x|^2`` elementwise, real."""
        return x.real ** 2 + x.imag ** 2 if np.iscomplexobj(x) else x * x

    def channel_sq_norms(self, x):
        """``sum_c |x[f, c, b]|^2`` of ``(F, C, b)``, shape ``(F, b)``, real."""
        if not np.iscomplexobj(x):
            return np.einsum("fcb,fcb->fb", x, x)
        if x.strides[-1] != x.itemsize:
            x = np.ascontiguousarray(x)
        r = x.view(x.real.dtype)  # (F, C, 2b): re, im interleaved
        s = np.einsum("fcb,fcb->fb", r, r)
        return s[:, 0::2] + s[:, 1::2]

    def abs_(self, x):
        """``|x|`` in place (returns ``x``)."""
        return np.abs(x, out=x)

    def relu_(self, x):
        """``max(x, 0)`` in place (returns ``x``)."""
        return np.maximum(x, 0, out=x)

    def softmax(self, x, axis):
        shifted = x - x.max(axis=axis, keepdims=True)
        e = np.exp(shifted)
        return e / e.sum(axis=axis, keepdims=True)

    def sqrt(self, x):
        return np.sqrt(x)

    def flip(self, x, axis):
        return np.flip(x, axis=axis)

    def cumsum(self, x, axis):
        return np.cumsum(x, axis=axis)

    def where(self, condition, x, y):
        return np.where(condition, x, y)

    def maximum(self, x, value):
        return np.maximum(x, value)

    def argmax(self, x, axis):
        return np.argmax(x, axis=axis)

    def max_abs_columns(self, x):
        """``max |Re|, |Im|`` over all axes but the last, shape ``(b,)`` (a spectrum's samples)."""
        x = np.asarray(x)
        if np.iscomplexobj(x):
            return np.maximum(np.abs(x.real).max(axis=tuple(range(x.ndim - 1))),
                              np.abs(x.imag).max(axis=tuple(range(x.ndim - 1))))
        return np.abs(x).max(axis=tuple(range(x.ndim - 1)))

    def max_abs_rows(self, x):
        """``max_i |x[b, i]|`` of a 2D array, shape ``(b,)`` (0 for an all-zero row)."""
        return np.abs(x).max(axis=1)

    def pow2_scale(self, x, limit=None):
        """Powers of two ``s`` with ``x * s`` in ``[0.5, 1)`` (1 where ``x`` is 0).

        Scaling by a power of two is exact in floating point, so a scaled
        computation rounds exactly as the unscaled one would, without its
        overflow or underflow. ``limit`` caps ``|log2 s|`` (default: what
        ``x``'s dtype can hold).
        """
        _, exponent = np.frexp(x)
        limit = np.finfo(x.dtype).maxexp - 2 if limit is None else limit
        exponent = np.clip(exponent, -limit, limit)
        return np.ldexp(np.ones_like(x), -exponent).astype(x.dtype, copy=False)

    def softmin(self, x, scale, axis):
        """``softmax(-scale * x)`` along ``axis``, also where ``scale * x`` overflows.

        Where the product overflows, ``x`` is first shifted by its minimum (the
        softmax is unchanged by shifts) and what still overflows is a weight
        of exactly 0, as it would be in exact arithmetic.
        """
        with np.errstate(over="ignore"):
            scores = -scale * x
            if not np.isfinite(scores).all():
                scores = -scale * (x - x.min(axis=axis, keepdims=True))
                scores = np.maximum(scores, -np.finfo(x.dtype).max)
        return self.softmax(scores, axis)

    def class_sq_norms(self, x, weights):
        """``sum_f w_f sum_c |x[f, k, c, b]|^2``, shape ``(k, b)``."""
        if not np.iscomplexobj(x):
            return np.einsum("f,fkcb,fkcb->kb", weights, x, x)
        if x.strides[-1] != x.itemsize:
            x = np.ascontiguousarray(x)
        r = x.view(x.real.dtype)  # (F, k, C, 2b): re, im interleaved
        s = np.einsum("f,fkcb,fkcb->kb", weights, r, r)
        return s[:, 0::2] + s[:, 1::2]

    # --- FFT -----------------------------------------------------------------
    def rfft(self, x, ndim):
        """Unitary real FFT over the last ``ndim`` axes."""
        axes = tuple(range(-ndim, 0))
        if _small(x):
            return _plans.transform("rfftn", x, None, axes, ortho=True)
        return scipy.fft.rfftn(x, axes=axes, norm="ortho", workers=get_num_threads())

    def irfft(self, x_hat, shape, unitary=True):
        """Inverse of :meth:`rfft` (``unitary=False``: numpy's default 1/T)."""
        axes = tuple(range(-len(shape), 0))
        if _small(x_hat):
            return _plans.transform("irfftn", x_hat, tuple(shape), axes, ortho=unitary)
        return scipy.fft.irfftn(x_hat, s=shape, axes=axes,
                                norm="ortho" if unitary else "backward",
                                workers=get_num_threads())

    # --- linear algebra ------------------------------------------------------
    H = staticmethod(_H)

    def hmatmul(self, a, b):
        """``a^H @ b`` (batched) without copying ``a``: ``conj(a^T @ conj(b))``.

        ``a^T`` is a view BLAS reads as it is; only ``b`` and the result (sized
        by the batch of samples, not by the stored operator) are conjugated.
        """
        return np.conj(np.matmul(np.swapaxes(a, -1, -2), np.conj(b)))

    def gram(self, a):
        """``a^H a`` of a batch ``(..., n, w)``: Hermitian ``(..., w, w)``.

        One BLAS rank-k update (``zherk``/``dsyrk``) per matrix: half the
        products of a general ``a^H @ a``, then the other triangle mirrored.
        """
        lead, (n, w) = a.shape[:-2], a.shape[-2:]
        flat = np.reshape(a, (-1, n, w))
        complex_ = np.iscomplexobj(a)
        out = np.empty((flat.shape[0], w, w), dtype=a.dtype)
        if flat.shape[0] and n and w:
            herk = scipy.linalg.blas.get_blas_funcs("herk" if complex_ else "syrk", (flat,))
            trans = 2 if complex_ else 1  # A^H A (A^T A): the upper triangle is filled
            for i in range(flat.shape[0]):
                out[i] = herk(1.0, flat[i], trans=trans)
        else:
            out[...] = 0
            return np.reshape(out, lead + (w, w))
        # The strict lower triangles are zero (scipy starts from c = 0): add the mirror,
        # which doubles the diagonal, then halve it.
        out += np.conj(np.swapaxes(out, -1, -2)) if complex_ else np.swapaxes(out, -1, -2)
        np.einsum("...ii->...i", out)[...] *= 0.5
        return np.reshape(out, lead + (w, w))

    def eigh(self, a):
        """Eigenvalues (ascending, real) and eigenvectors of Hermitian matrices ``(..., n, n)``."""
        return np.linalg.eigh(a)

    def hpd_logdet(self, a):
        """log det of HPD matrices ``a`` (``(..., n, n)``), by Cholesky."""
        return _logdet_from_cholesky(_cholesky(a))

    def hpd_inverse_logdet(self, a):
        """Inverse and log det of HPD matrices ``a`` (``(..., n, n)``)."""
        if a.ndim == 2 and a.shape[-1] > 4 * _LEAF:
            # One large matrix (the dense spatial reference): LAPACK potrf/potri.
            c, lower = scipy.linalg.cho_factor(a, lower=True, check_finite=False)
            logdet = 2.0 * np.log(np.diagonal(c).real).sum()
            potri = scipy.linalg.get_lapack_funcs("potri", (c,))
            inv, info = potri(c, lower=True)
            if info != 0:  # pragma: no cover - cho_factor would have failed
                raise np.linalg.LinAlgError(f"potri failed with info={info}")
            inv = np.tril(inv) + _H(np.tril(inv, -1))
            return inv, logdet
        return _blocked_inverse_logdet(a)
