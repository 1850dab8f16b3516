"""The slow reference: dense block-circulant matrices in the spatial domain.

For 1D signals ``circ(z)`` is the ``CT x T`` matrix whose column ``s`` is the
sample cyclically shifted by ``s``; 2D signals use every shift ``(s1, s2)``
with ``T = H * W``.  Then (SPEC.md)

    R_circ(Z) = 1/(2T) logdet(I_CT + (alpha/T) circ(Z) circ(Z)^T)
    E         = alpha (I_CT + (alpha/T) circ(Z) circ(Z)^T)^-1

and likewise per class.  Nothing here uses an FFT: Gram matrices are dense
products of the shifted copies and inverses are dense Cholesky inversions,
``O(m T (CT)^2)`` and ``O((CT)^3)``.  It exists so the spectral engine has an
independent reference to be tested against, and as the benchmark's baseline.
"""
import numpy as np

from .spectral import signal_layout

#: Largest dense matrix (bytes) the reference agrees to build by default.
DEFAULT_MAX_BYTES = 2 << 30


def shift_indices(signal_shape):
    """``idx[t, s]``: flat position of ``t - s`` (cyclically), shape ``(T, T)``."""
    if not signal_shape:
        return np.zeros((1, 1), dtype=np.int64)
    size = np.array(signal_shape).reshape(-1, 1, 1)
    grid = np.indices(signal_shape).reshape(len(signal_shape), -1)
    diff = (grid[:, :, None] - grid[:, None, :]) % size
    return np.ravel_multi_index(tuple(diff), signal_shape)


def circulant(backend, z, idx):
    """``circ(z)`` for a batch: ``(b, C, *S)`` -> ``(b, C*T, T)``."""
    b, c = z.shape[:2]
    flat = backend.reshape(z, (b, c, -1))
    shifted = flat[:, :, backend.from_numpy(idx, like=z)]  # (b, C, T, T)
    return backend.reshape(shifted, (b, c * idx.shape[0], idx.shape[0]))


def check_dense_size(sample_shape, itemsize, max_bytes=DEFAULT_MAX_BYTES):
    """Refuse a dense reference whose matrices would not fit in ``max_bytes``."""
    n_channels, signal_shape, _ = signal_layout(sample_shape)
    t = int(np.prod(signal_shape, dtype=np.int64))
    n = n_channels * t
    size = n * n * itemsize
    if size > max_bytes:
        raise ValueError(
            f"domain='spatial' needs dense {n} x {n} matrices (C={n_channels} channels x "
            f"T={t} positions), {size / 2**30:.1f} GiB each, over the limit of "
            f"{max_bytes / 2**30:.1f} GiB; use domain='spectral' for this size"
        )
    return n


def dense_gram(backend, Z, members, batch_size=16):
    """``circ(Z_j) circ(Z_j)^T`` over the samples ``members``, shape ``(CT, CT)``."""
    _, signal_shape, _ = signal_layout(tuple(Z.shape[1:]))
    idx = shift_indices(signal_shape)
    gram = None
    for start in range(0, len(members), batch_size):
        circ = circulant(backend, backend.take(Z, members[start:start + batch_size]), idx)
        b, n, t = circ.shape
        columns = backend.reshape(backend.permute(circ, (1, 0, 2)), (n, b * t))
        product = columns @ backend.permute(columns, (1, 0))
        gram = product if gram is None else gram + product
    return gram


def dense_operators(backend, Z, labels, n_classes, eps2, inverse=True,
                    max_bytes=DEFAULT_MAX_BYTES):
    """Dense ``E``, ``C^j`` (``CT x CT``) and the rates, straight from SPEC.md.

    Returns
    -------
    dict with ``E`` (CT, CT) or None, ``C`` list of k (CT, CT) or None,
    ``R`` and ``R_c`` (floats), ``gamma`` (numpy, (k,)).
    """
    sample_shape = tuple(Z.shape[1:])
    n_channels, signal_shape, _ = signal_layout(sample_shape)
    check_dense_size(sample_shape, backend.itemsize(Z), max_bytes)
    t = int(np.prod(signal_shape, dtype=np.int64))
    m = Z.shape[0]
    counts = np.bincount(labels, minlength=n_classes)
    groups = [np.arange(m)] + [np.flatnonzero(labels == j) for j in range(n_classes)]
    sizes = [m] + list(counts)
    ops, rates = [], []
    for members, size in zip(groups, sizes):
        alpha = n_channels / (size * eps2)
        gram = dense_gram(backend, Z, members)
        a = backend.eye(gram.shape[0], like=gram) + (alpha / t) * gram
        if inverse:
            inv, logdet = backend.hpd_inverse_logdet(a)
            ops.append(alpha * inv)
        else:
            logdet = backend.hpd_logdet(a)
        rates.append(backend.to_float(logdet) / (2 * t))
    gamma = counts / m
    return {
        "E": ops[0] if inverse else None,
        "C": ops[1:] if inverse else None,
        "R": rates[0],
        "R_c": float(np.dot(gamma, rates[1:])),
        "gamma": gamma,
    }


def kernel_of(backend, dense, sample_shape):
    """Real kernels ``e[c, c']`` ``(C, C, *S)`` of a block-circulant matrix.

    Block ``(c, c')`` of ``dense`` is circulant; its first column is the kernel.
    """
    n_channels, signal_shape, _ = signal_layout(sample_shape)
    if not signal_shape:
        return dense
    t = int(np.prod(signal_shape, dtype=np.int64))
    first = backend.reshape(dense, (n_channels, t, n_channels, t))[:, :, :, 0]
    return backend.reshape(backend.permute(first, (0, 2, 1)),
                           (n_channels, n_channels) + tuple(signal_shape))
