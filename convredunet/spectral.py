"""The spectral engine: per-frequency Gram matrices and Hermitian solves.

A batch of signals ``(b, C, *signal_shape)`` becomes its unitary half spectrum
laid out frequency first, ``(F, C, b)``, with ``F`` the number of stored
frequencies (``T//2 + 1`` in 1D, ``H * (W//2 + 1)`` in 2D, 1 for vectors).
Every later step is one batched call over all frequencies (and all classes):
Gram matrices ``V V^H`` accumulated over chunks of samples, then
``alpha (I + alpha V V^H)^-1`` and ``logdet(I + alpha V V^H)`` from Cholesky
factors, or through the Woodbury identity when a class has fewer samples than
channels.

Vectors ``(b, d)`` are the special case ``T = 1``: no FFT, real arithmetic.
"""
import math

import numpy as np

from . import _parallel

# Bytes of spectrum one chunk of samples may take when batch_size is None.
_CHUNK_BYTES = 64 << 20
# Bytes of matrices one batched solve may take (operators are solved in slices).
_SOLVE_BYTES = 256 << 20


def signal_layout(sample_shape):
    """``(n_channels, signal_shape, freq_shape)`` for one sample's shape.

    ``(d,)`` -> ``(d, (), ())``; ``(C, T)`` -> ``(C, (T,), (T//2+1,))``;
    ``(C, H, W)`` -> ``(C, (H, W), (H, W//2+1))``.
    """
    n_channels, signal_shape = sample_shape[0], tuple(sample_shape[1:])
    if not signal_shape:
        return n_channels, (), ()
    freq_shape = signal_shape[:-1] + (signal_shape[-1] // 2 + 1,)
    return n_channels, signal_shape, freq_shape


def half_spectrum_weights(signal_shape):
    """How often each stored frequency stands in the full spectrum, ``(F,)``.

    2 for every frequency whose conjugate twin is not stored; 1 for the
    last axis' zero frequency and, for even length, its Nyquist frequency.
    """
    if not signal_shape:
        return np.ones(1)
    last = signal_shape[-1]
    w = np.full(last // 2 + 1, 2.0)
    w[0] = 1.0
    if last % 2 == 0:
        w[-1] = 1.0
    rows = int(np.prod(signal_shape[:-1], dtype=np.int64))
    return np.tile(w, rows)


def spectrum(backend, x, signal_shape):
    """Unitary half spectrum of samples ``x`` ``(b, C, *S)``, as ``(F, C, b)``."""
    # Contiguous, so that batched products on it run as BLAS calls (numpy's
    # matmul falls back to a slow loop when neither inner axis has unit stride).
    if not signal_shape:  # vectors: (b, d) -> (1, d, b)
        return backend.contiguous(backend.permute(x, (1, 0))[None])
    x_hat = backend.rfft(x, len(signal_shape))
    b, c = x.shape[:2]
    return backend.contiguous(backend.permute(backend.reshape(x_hat, (b, c, -1)), (2, 1, 0)))


def inverse_spectrum(backend, v_hat, signal_shape):
    """Inverse of :func:`spectrum`: ``(F, C, b)`` -> real samples ``(b, C, *S)``."""
    if not signal_shape:
        return backend.permute(v_hat[0], (1, 0))
    f, c, b = v_hat.shape
    freq_shape = signal_shape[:-1] + (signal_shape[-1] // 2 + 1,)
    x_hat = backend.reshape(backend.permute(v_hat, (2, 1, 0)), (b, c) + freq_shape)
    return backend.irfft(x_hat, signal_shape, unitary=True)


def operator_kernels(backend, op_hat, signal_shape):
    """Real kernels of per-frequency operators: ``(..., F, C, C)`` -> ``(..., C, C, *S)``.

    The unnormalized inverse DFT over the (flattened) half spectrum: the
    kernel ``e[c, c']`` whose DFT at frequency ``p`` is ``op_hat[p, c, c']``.
    """
    if not signal_shape:
        return op_hat[..., 0, :, :] if op_hat.ndim > 2 and op_hat.shape[-3] == 1 else op_hat
    freq_shape = signal_shape[:-1] + (signal_shape[-1] // 2 + 1,)
    lead = tuple(op_hat.shape[:-3])
    c_out, c_in = op_hat.shape[-2:]
    shaped = backend.reshape(op_hat, lead + freq_shape + (c_out, c_in))
    nl, nd = len(lead), len(freq_shape)
    axes = tuple(range(nl)) + (nl + nd, nl + nd + 1) + tuple(range(nl, nl + nd))
    return backend.irfft(backend.permute(shaped, axes), signal_shape, unitary=False)


def default_batch_size(n_channels, n_freqs, itemsize):
    return max(1, _CHUNK_BYTES // (n_channels * n_freqs * 2 * itemsize))


def class_grams(backend, Z, labels, n_classes, batch_size=None, keep=(), grams_of=None,
                total=True):
    """Per-class and total per-frequency Gram matrices ``V_j(p) V_j(p)^H``.

    Parameters
    ----------
    Z : array, shape (m, C, *S) or (m, d)
    labels : numpy int array, shape (m,)
    keep : classes whose spectra ``V_j`` ``(F, C, m_j)`` are returned too.
    grams_of : classes whose Gram matrices are returned (default: all).
    total : also return the Gram matrix of all samples.

    Returns
    -------
    grams : dict class -> array (F, C, C)
    total_gram : array (F, C, C) or None
    kept : dict class -> array (F, C, m_j)
    """
    n_channels, signal_shape, _ = signal_layout(tuple(Z.shape[1:]))
    n_freqs = len(half_spectrum_weights(signal_shape))
    if batch_size is None:
        batch_size = default_batch_size(n_channels, n_freqs, backend.itemsize(Z))
    grams_of = set(range(n_classes)) if grams_of is None else set(grams_of)
    keep = set(keep)
    # Samples in class order, in chunks: one product per chunk gives the total
    # Gram matrix, and each class is a contiguous run of columns of the chunk.
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    grams, pieces, total_gram = {}, {j: [] for j in keep}, None
    for start in range(0, len(order), batch_size):
        stop = min(start + batch_size, len(order))
        v = spectrum(backend, backend.take(Z, order[start:stop]), signal_shape)
        if total:
            product = v @ backend.H(v)
            total_gram = product if total_gram is None else total_gram + product
        chunk_labels = sorted_labels[start:stop]
        for j in np.unique(chunk_labels):
            j = int(j)
            if j not in grams_of and j not in keep:
                continue
            lo, hi = np.searchsorted(chunk_labels, [j, j + 1])
            part = v[:, :, lo:hi]
            if j in grams_of:
                product = part @ backend.H(part)
                grams[j] = product if j not in grams else grams[j] + product
            if j in keep:
                pieces[j].append(part)
    kept = {j: backend.contiguous(backend.concat(p, axis=2)) for j, p in pieces.items()}
    return grams, total_gram, kept


def _slices(n_batch, matrix_bytes):
    step = max(1, _SOLVE_BYTES // max(matrix_bytes, 1))
    return [slice(s, min(s + step, n_batch)) for s in range(0, n_batch, step)]


def regularized_inverse(backend, grams, alphas, inverse=True):
    """``alpha (I + alpha G)^-1`` and ``logdet(I + alpha G)`` for a stack of Grams.

    Parameters
    ----------
    grams : array, shape (g, F, C, C), Hermitian positive semi-definite
    alphas : sequence of g floats
    inverse : when False only the log-determinants are computed.

    Returns
    -------
    ops : array (g, F, C, C) or None
    logdets : array (g, F), real
    """
    g, n_freqs, c, _ = grams.shape
    eye = backend.eye(c, like=grams)
    scale = backend.astype(np.asarray(alphas).reshape(g, 1, 1, 1), like=grams.real)
    flat_a = backend.reshape(eye + scale * grams, (g * n_freqs, c, c))
    invs, logdets = [], []
    for part in _slices(g * n_freqs, c * c * backend.itemsize(grams) * 4):
        block = flat_a[part]
        threads = _parallel.batch_slices(backend, block.shape[0], math.prod(block.shape) * c)
        solve = backend.hpd_inverse_logdet if inverse else backend.hpd_logdet
        results = _parallel.pmap(lambda s: solve(block[s]), threads)
        if inverse:
            invs += [r[0] for r in results]
            logdets += [r[1] for r in results]
        else:
            logdets += results
    logdets = backend.reshape(backend.concat(logdets), (g, n_freqs))
    if not inverse:
        return None, logdets
    return scale * backend.reshape(backend.concat(invs), (g, n_freqs, c, c)), logdets


def woodbury_factors(backend, spectra, alphas, inverse=True):
    """Woodbury factors of ``alpha (I + alpha V V^H)^-1`` for a list of spectra.

    With ``M = I_m + alpha V^H V`` (``m x m``), the Woodbury identity gives
    ``(I_C + alpha V V^H)^-1 = I_C - alpha V M^-1 V^H`` and
    ``logdet(I_C + alpha V V^H) = logdet M``: cheaper when ``m < C``.
    Spectra of different widths are padded with zero columns, which change
    neither result, so all groups are solved in one batch.

    Parameters
    ----------
    spectra : list of g arrays, shape (F, C, m_j)
    alphas : sequence of g floats

    Returns
    -------
    v : array (g, F, C, width), the padded spectra
    m_inv : array (g, F, width, width) or None, ``M^-1``
    logdets : array (g, F)
    """
    width = max(v.shape[-1] for v in spectra)
    padded = []
    for v in spectra:
        if v.shape[-1] < width:
            zeros = backend.zeros(v.shape[:-1] + (width - v.shape[-1],), like=v)
            v = backend.concat([v, zeros], axis=-1)
        padded.append(v)
    v = backend.stack(padded)  # (g, F, C, width)
    scale = backend.astype(np.asarray(alphas).reshape(-1, 1, 1, 1), like=v.real)
    small = backend.eye(width, like=v) + scale * (backend.H(v) @ v)
    if not inverse:
        return v, None, backend.hpd_logdet(small)
    m_inv, logdets = backend.hpd_inverse_logdet(small)
    return v, m_inv, logdets


def woodbury_dense(backend, v, m_inv, alphas):
    """``alpha (I - alpha V M^-1 V^H)`` from :func:`woodbury_factors`, ``(g, F, C, C)``."""
    scale = backend.astype(np.asarray(alphas).reshape(-1, 1, 1, 1), like=v.real)
    # Scale the small m x m factor, not the C x C result, and add alpha on the
    # diagonal in place: one pass over the (g, F, C, C) output.
    factor = v @ (m_inv * -(scale * scale))
    g, f, c = v.shape[:3]
    parts = _parallel.pmap(lambda fs: factor[:, fs] @ backend.H(v[:, fs]),
                           _parallel.batch_slices(backend, f, g * f * c * c))
    out = parts[0] if len(parts) == 1 else backend.concat(parts, axis=1)
    backend.add_to_diagonal(out, backend.reshape(scale, (-1, 1, 1)))
    return out
