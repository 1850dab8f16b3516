"""Baselines that the construction benchmark compares the spectral engine with.

:func:`loop_operators` builds the same layer operators as
:func:`convredunet.construct_operators` the way the original research code
did: a full complex FFT of every sample (all ``T`` frequencies, not the half
spectrum of a real FFT), then a Python ``for`` loop over every frequency and,
inside it, over ``E`` and every class, with the generic
:func:`numpy.linalg.inv` and :func:`numpy.linalg.slogdet` on each ``C x C``
matrix ``I + alpha V(p) V(p)^H``.  Nothing uses the fact that those matrices
are Hermitian positive definite, nor that real signals need only half of the
spectrum.  The operators are then brought back to real convolution kernels by
an inverse FFT.

It computes the numbers of SPEC.md exactly (up to rounding), so the benchmark
can check that the fast engine and the baseline agree on every timed cell.
It is written from the formulas of SPEC.md, not taken from that code.
"""
import math

import numpy as np

__all__ = ["loop_operators"]


def loop_operators(Z, y, eps2=0.1):
    """Layer operators and rates by a per-frequency loop of generic inverses.

    Parameters
    ----------
    Z : numpy array, shape (m, C, T) or (m, C, H, W)
        Real features (used as given, not normalized).
    y : numpy int array, shape (m,)
        Labels ``0..k-1``, every class present.
    eps2 : float, default 0.1
        Squared precision epsilon^2.

    Returns
    -------
    dict with
        ``E_hat`` : complex array, shape (*S, C, C)
            ``alpha (I + alpha V(p) V(p)^H)^-1`` at every frequency ``p``
            (the full spectrum, ``S = (T,)`` or ``(H, W)``).
        ``C_hat`` : complex array, shape (k, *S, C, C)
            The same per class with ``alpha_j``.
        ``E`` : real array, shape (C, C, *S)
            Convolution kernels ``e[c, c']`` (inverse DFT of ``E_hat``).
        ``C`` : real array, shape (k, C, C, *S)
        ``R``, ``R_c`` : float
            ``R_circ(Z)`` and ``R_c,circ(Z)`` (nats).
        ``gamma`` : array, shape (k,)

    Notes
    -----
    With the unitary DFT ``v_i(p)`` of each sample and ``V(p)`` the ``C x m``
    matrix of the ``v_i(p)`` (SPEC.md)::

        E_hat(p) = alpha (I_C + alpha V(p) V(p)^H)^-1,   alpha = C / (m eps2)
        R_circ   = 1/(2T) sum_p logdet(I_C + alpha V(p) V(p)^H)
        e        = ifft(E_hat)   (unnormalized DFT convention for kernels)

    and likewise for class ``j`` with ``V_j(p)`` and ``alpha_j = C / (m_j eps2)``.
    """
    Z = np.asarray(Z)
    if Z.ndim not in (3, 4):
        raise ValueError(f"Z must have 3 (m, C, T) or 4 (m, C, H, W) dimensions, got {Z.ndim}")
    labels = np.asarray(y).astype(np.int64)
    m, n_channels = Z.shape[:2]
    signal_shape = tuple(Z.shape[2:])
    t = math.prod(signal_shape)
    if Z.ndim == 3:
        v_all = np.fft.fft(Z, axis=-1, norm="ortho")
    else:
        v_all = np.fft.fft2(Z, axes=(-2, -1), norm="ortho")
    # (m, C, T) -> (T, C, m): V(p) is v_all[p], a C x m matrix.
    v_all = np.ascontiguousarray(np.transpose(v_all.reshape(m, n_channels, t), (2, 1, 0)))

    n_classes = int(labels.max()) + 1
    counts = np.bincount(labels, minlength=n_classes)
    groups = [np.arange(m)] + [np.flatnonzero(labels == j) for j in range(n_classes)]
    sizes = [m] + list(counts)
    alphas = [n_channels / (size * eps2) for size in sizes]
    spectra = [np.ascontiguousarray(v_all[:, :, members]) for members in groups]

    ops_hat = np.empty((n_classes + 1, t, n_channels, n_channels), dtype=v_all.dtype)
    logdets = np.zeros(n_classes + 1)
    eye = np.eye(n_channels)
    for p in range(t):
        for g in range(n_classes + 1):
            v = spectra[g][p]
            a = eye + alphas[g] * (v @ v.conj().T)
            ops_hat[g, p] = alphas[g] * np.linalg.inv(a)
            _, logdet = np.linalg.slogdet(a)
            logdets[g] += logdet

    rates = logdets / (2 * t)
    gamma = counts / m
    # Frequency axes back to the signal shape, then the inverse DFT over them.
    ops_hat = ops_hat.reshape((n_classes + 1,) + signal_shape + (n_channels, n_channels))
    nd = len(signal_shape)
    channels_first = np.moveaxis(ops_hat, (-2, -1), (1, 2))  # (k+1, C, C, *S)
    if nd == 1:
        kernels = np.fft.ifft(channels_first, axis=-1).real
    else:
        kernels = np.fft.ifft2(channels_first, axes=(-2, -1)).real
    return {
        "E_hat": ops_hat[0],
        "C_hat": ops_hat[1:],
        "E": kernels[0],
        "C": kernels[1:],
        "R": float(rates[0]),
        "R_c": float(np.dot(gamma, rates[1:])),
        "gamma": gamma,
    }
