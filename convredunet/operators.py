"""MCR^2 operators and rates: the public entry points of the engine.

The engine itself (Gram matrices, batched Hermitian solves, one layer's
solve in storage layout) is :mod:`convredunet.spectral`; this module
validates input and presents its results.
"""
import math

from . import spatial, spectral
from ._threads import thread_limits
from ._inputs import check_features, check_labels, is_dask
from ._validation import check_batch_size, check_choice, check_eps2
from .backend import get_backend
from .spectral import RateReduction

__all__ = ["RateReduction", "Operators", "rate_reduction", "construct_operators"]

DOMAINS = ("spectral", "spatial")


class Operators:
    """Expansion ``E`` and compressions ``C^j`` of one layer, with ``gamma``.

    Stored as the half spectrum: ``E_hat[p]`` is the ``C x C`` Hermitian
    positive definite block at frequency ``p``, frequency axes first.

    Attributes
    ----------
    E_hat : array, shape (*freq, C, C)
        ``alpha (I + alpha V(p) V(p)^H)^-1``; ``freq`` is ``(T//2+1,)`` in 1D,
        ``(H, W//2+1)`` in 2D and ``()`` for vectors (where it is ``E``).
    C_hat : array, shape (k, *freq, C, C)
        The same per class with ``alpha_j``.
    gamma : array, shape (k,)
        Class proportions ``m_j / m``.
    rates : RateReduction
        The rates of the features the operators were built from.
    eps2 : float
    signal_shape : tuple
        ``(T,)``, ``(H, W)`` or ``()`` for vectors.
    domain : str
        How they were built: ``"spectral"`` or ``"spatial"``.
    """

    def __init__(self, E_hat, C_hat, gamma, rates, eps2, signal_shape, domain):
        self.E_hat = E_hat
        self.C_hat = C_hat
        self.gamma = gamma
        self.rates = rates
        self.eps2 = eps2
        self.signal_shape = tuple(signal_shape)
        self.domain = domain

    @property
    def n_channels(self):
        return self.E_hat.shape[-1]

    @property
    def n_classes(self):
        return self.C_hat.shape[0]

    @property
    def freq_shape(self):
        return tuple(self.E_hat.shape[:-2])

    def kernels(self):
        """Real convolution kernels: the inverse DFT of the per-frequency blocks.

        Returns
        -------
        E : array, shape (C, C, *signal_shape)
            ``(E z)_c = sum_c' E[c, c'] (*) z_c'`` (circular convolution).
        C : array, shape (k, C, C, *signal_shape)
        For vectors, the matrices ``(d, d)`` and ``(k, d, d)``.
        """
        if not self.signal_shape:
            return self.E_hat, self.C_hat
        backend = get_backend(self.E_hat)
        c = self.n_channels
        return (spectral.operator_kernels(backend, backend.reshape(self.E_hat, (-1, c, c)),
                                          self.signal_shape),
                spectral.operator_kernels(
                    backend, backend.reshape(self.C_hat, (self.n_classes, -1, c, c)),
                    self.signal_shape))

    def __repr__(self):
        return (f"Operators(n_classes={self.n_classes}, n_channels={self.n_channels}, "
                f"signal_shape={self.signal_shape}, domain={self.domain!r}, "
                f"dtype={self.E_hat.dtype})")


def _validate(Z, y, eps2, domain, batch_size):
    Z = check_features(Z)
    labels, k = check_labels(y, Z.shape[0], Z=Z)
    eps2 = check_eps2(eps2, get_backend(Z).real_dtype_name(Z))
    check_choice(domain, "domain", DOMAINS)
    batch_size = check_batch_size(batch_size)
    return Z, labels, k, eps2, batch_size


def _spectral(backend, Z, labels, k, eps2, batch_size, woodbury, inverse):
    """Operators (or just the rates) by the spectral engine."""
    solution = spectral.solve_layer(backend, Z, labels, k, eps2, batch_size, woodbury,
                                    operators=inverse)
    if not inverse:
        return solution.rates
    n_channels, signal_shape, freq_shape = spectral.signal_layout(tuple(Z.shape[1:]))
    shape = freq_shape + (n_channels, n_channels)
    e_hat, c_hat = solution.dense_operators(backend)
    return Operators(
        E_hat=backend.reshape(e_hat, shape),
        C_hat=backend.reshape(c_hat, (k,) + shape),
        gamma=backend.astype(solution.gamma, like=Z),
        rates=solution.rates, eps2=eps2, signal_shape=signal_shape, domain="spectral",
    )


def _dask_solve(Z, y, eps2, domain, batch_size, woodbury, inverse):
    """Rates or operators of a Dask array ``Z`` (see :mod:`convredunet.distributed`).

    Operators come back as numpy arrays in ``Z``'s precision.
    """
    from . import distributed
    from .backend import resolve

    solution, Z, k, eps2 = distributed.solve(Z, y, eps2, domain, batch_size, woodbury, inverse)
    if not inverse:
        return solution.rates
    backend = resolve("numpy").backend
    n_channels, signal_shape, freq_shape = spectral.signal_layout(tuple(Z.shape[1:]))
    shape = freq_shape + (n_channels, n_channels)
    e_hat, c_hat = solution.dense_operators(backend)
    return Operators(
        E_hat=backend.reshape(e_hat, shape), C_hat=backend.reshape(c_hat, (k,) + shape),
        gamma=solution.gamma.astype(Z.dtype), rates=solution.rates, eps2=eps2,
        signal_shape=signal_shape, domain="spectral")


def _spatial(backend, Z, labels, k, eps2, inverse):
    """Operators (or just the rates) by the dense spatial reference."""
    dense = spatial.dense_operators(backend, Z, labels, k, eps2, inverse=inverse)
    result = RateReduction(dense["R"], dense["R_c"])
    if not inverse:
        return result
    sample_shape = tuple(Z.shape[1:])
    n_channels, signal_shape, freq_shape = spectral.signal_layout(sample_shape)
    t = math.prod(signal_shape)

    def to_hat(matrix):
        kernel = spatial.kernel_of(backend, matrix, sample_shape)
        if not signal_shape:
            return kernel
        # The unnormalized DFT of the kernel, channels last.
        hat = backend.rfft(kernel, len(signal_shape)) * math.sqrt(t)
        nd = len(signal_shape)
        return backend.permute(hat, tuple(range(2, 2 + nd)) + (0, 1))

    return Operators(
        E_hat=backend.contiguous(to_hat(dense["E"])),
        C_hat=backend.stack([to_hat(c) for c in dense["C"]]),
        gamma=backend.astype(dense["gamma"], like=Z),
        rates=result, eps2=eps2, signal_shape=signal_shape, domain="spatial",
    )


def rate_reduction(Z, y, eps2=0.1, domain="spectral", batch_size=None):
    """The coding rate reduction ``dR = R(Z) - R_c(Z)`` of features and labels.

    Parameters
    ----------
    Z : array or tensor, shape (m, d), (m, C, T) or (m, C, H, W)
        Features (vectors, 1D or 2D multi-channel signals), float32 or float64,
        numpy or torch (CPU or CUDA). Used as given (not normalized).
    y : array, shape (m,)
        Integer labels ``0..k-1``, every class present.
    eps2 : float, default 0.1
        Squared precision epsilon^2; positive and finite.
    domain : {"spectral", "spatial"}, default "spectral"
        ``"spatial"`` computes the same numbers with dense block-circulant
        matrices (slow; the reference).
    batch_size : int or None
        Samples per chunk when accumulating Gram matrices (bounds memory);
        None picks one that keeps a chunk's spectrum under 64 MiB.

    Returns
    -------
    RateReduction
        ``.expansion`` (R), ``.compression`` (R_c), ``.delta`` (their difference).

    Notes
    -----
    For signals these are the shift-invariant rates of SPEC.md:
    ``R_circ = 1/(2T) sum_p logdet(I + alpha V(p) V(p)^H)``,
    ``alpha = C / (m eps2)``, summed over the half spectrum with weights.
    """
    if is_dask(Z):
        return _dask_solve(Z, y, eps2, domain, batch_size, "auto", False)
    Z, labels, k, eps2, batch_size = _validate(Z, y, eps2, domain, batch_size)
    backend = get_backend(Z)
    with thread_limits(blas=None if domain == "spatial" else 1):
        if domain == "spatial":
            return _spatial(backend, Z, labels, k, eps2, inverse=False)
        return _spectral(backend, Z, labels, k, eps2, batch_size, "auto", inverse=False)


def construct_operators(Z, y, eps2=0.1, domain="spectral", batch_size=None, woodbury="auto"):
    """Build one layer's operators ``E``, ``C^1..C^k`` and ``gamma`` from features.

    Parameters
    ----------
    Z, y, eps2, domain, batch_size
        As in :func:`rate_reduction`.
    woodbury : {"auto", True, False}, default "auto"
        Solve through the ``m_j x m_j`` Woodbury form; "auto" does so exactly
        when a class (or the whole set) has fewer samples than channels.

    Returns
    -------
    Operators
        Half-spectrum blocks ``E_hat`` ``(*freq, C, C)``, ``C_hat``
        ``(k, *freq, C, C)``, ``gamma`` ``(k,)``, the ``rates`` of ``Z``, and
        ``kernels()`` for the real convolution kernels. Arrays come back in
        ``Z``'s library, device and precision.
    """
    if woodbury not in ("auto", True, False):
        raise ValueError(f"woodbury must be 'auto', True or False, got {woodbury!r}")
    if is_dask(Z):
        return _dask_solve(Z, y, eps2, domain, batch_size, woodbury, True)
    Z, labels, k, eps2, batch_size = _validate(Z, y, eps2, domain, batch_size)
    backend = get_backend(Z)
    with thread_limits(blas=None if domain == "spatial" else 1):
        if domain == "spatial":
            return _spatial(backend, Z, labels, k, eps2, inverse=True)
        return _spectral(backend, Z, labels, k, eps2, batch_size, woodbury, inverse=True)
