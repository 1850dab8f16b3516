"""Nearest-subspace classification of features, exactly invariant to cyclic shifts.

The ReduNet paper classifies its learned features by the nearest class
subspace: each class's training features span a principal subspace, and a
sample goes to the class whose subspace is closest. On flattened signals that
rule is not shift invariant. Here each class's subspace is the principal
subspace of its features *together with all their cyclic shifts*:

* the second-moment matrix of a class and all its shifts is block circulant,
  so the DFT splits it into one ``C x C`` Hermitian matrix per frequency,
  ``S_j(p) = V_j(p) V_j(p)^H`` (the class Gram matrices the layers use);
* the principal subspace keeps, at every frequency, the ``r`` leading
  eigenvectors ``U_j(p)`` (``C x r``) of ``S_j(p)``: ``r`` dimensions per
  frequency, i.e. ``r`` *cyclic families* of directions;
* the squared distance of a sample ``z`` (unitary half spectrum ``v(p)``) to
  the subspace of class ``j`` is

      d_j(z)^2 = ||z||^2 - sum_p w_p ||U_j(p)^H v(p)||^2

  with ``w_p`` the half-spectrum weights (SPEC.md).

Why it is exactly invariant: shifting ``z`` by ``s`` multiplies ``v(p)`` by the
unit-modulus number ``exp(-2 pi i p s / T)`` and changes nothing else, so
``||U_j(p)^H v(p)||`` and ``||z||`` are unchanged at every frequency. The
network's features are shift-equivariant, so the distances of a shifted
input equal those of the input, and so does the predicted class.
"""
import numpy as np

from . import spectral
from ._threads import thread_limits

__all__ = ["class_subspaces", "subspace_distances", "n_directions"]

#: ``n_components=None`` keeps this fraction of the feature channels (at least 1): the
#: ratio chosen on MNIST-1D validation (32 of 128 channels, ``bench/sweep_mnist1d.py``).
AUTO_FRACTION = 0.25


def n_directions(n_components, n_channels):
    """Directions per frequency of each class subspace: ``r``.

    ``None`` gives ``max(1, n_channels // 4)``; an integer is clipped to
    ``n_channels - 1``: with ``r >= C`` directions the subspace would be the
    whole space at every frequency, every distance zero, and the classifier
    would mean nothing.

    Raises
    ------
    ValueError
        When the features have a single channel (no subspace leaves a complement).
    """
    if n_channels < 2:
        raise ValueError(f"classifier='subspace' needs features of at least 2 channels, got "
                         f"{n_channels}; lift the input (n_channels=...) or use "
                         "classifier='membership'")
    if n_components is None:
        return max(1, int(n_channels * AUTO_FRACTION))
    return min(int(n_components), n_channels - 1)


def class_subspaces(backend, Z, labels, n_classes, n_components, batch_size=None):
    """Per-class, per-frequency principal directions of features ``Z``.

    Parameters
    ----------
    backend : the working arrays' backend
    Z : working array, shape (m, C, *signal_shape) or (m, d)
    labels : numpy int array (m,), classes ``0..n_classes-1``
    n_components : int or None
        Directions kept per frequency and class, fewer than ``C``
        (:func:`n_directions`; None: a quarter of the channels).
    batch_size : int or None
        Samples per chunk when the Gram matrices are accumulated.

    Returns
    -------
    bases : numpy array (n_classes, F, C, r), complex for signals, real for vectors
        ``bases[j, p]`` holds the ``r = n_directions(n_components, C)`` leading
        eigenvectors of ``V_j(p) V_j(p)^H`` as columns, the largest first.
    """
    with thread_limits():  # batched small products: one BLAS thread (see _threads)
        return _class_subspaces(backend, Z, labels, n_classes, n_components, batch_size)


def _class_subspaces(backend, Z, labels, n_classes, n_components, batch_size):
    n_channels = spectral.signal_layout(tuple(Z.shape[1:]))[0]
    grams = class_grams(backend, Z, labels, n_classes, batch_size)
    return bases_from_grams(grams, n_directions(n_components, n_channels))


def class_grams(backend, Z, labels, n_classes, batch_size=None):
    """Per-class, per-frequency Gram matrices ``V_j(p) V_j(p)^H`` of ``Z`` (numpy).

    A list of ``n_classes`` arrays ``(F, C, C)`` (0.0 for a class absent from
    ``Z``): partial sums over chunks of samples add up (the Dask path sums them
    over the workers' chunks, then calls :func:`bases_from_grams`).
    """
    n_channels, signal_shape, _ = spectral.signal_layout(tuple(Z.shape[1:]))
    n_freqs = len(spectral.half_spectrum_weights(signal_shape))
    if batch_size is None:
        batch_size = spectral.default_batch_size(n_channels, n_freqs, backend.itemsize(Z))
    grams = [0.0] * n_classes
    for start in range(0, Z.shape[0], batch_size):
        v = backend.asnumpy(spectral.spectrum(backend, Z[start:start + batch_size],
                                              signal_shape))  # (F, C, b)
        chunk = labels[start:start + batch_size]
        for j in np.unique(chunk):
            part = np.ascontiguousarray(v[:, :, chunk == j])
            # Contiguous operands: numpy's matmul runs BLAS only on unit-stride axes.
            grams[j] = grams[j] + part @ np.ascontiguousarray(np.conj(part).transpose(0, 2, 1))
    return grams


def bases_from_grams(grams, r):
    """The ``r`` leading eigenvectors per frequency of each class's Gram matrices.

    Returns ``(n_classes, F, C, r)``, the largest first.
    """
    bases = []
    for gram in grams:
        _, vectors = np.linalg.eigh(gram)  # (F, C, C), ascending eigenvalues
        bases.append(vectors[:, :, ::-1][:, :, :r])
    return np.ascontiguousarray(np.stack(bases))


def subspace_distances(backend, z, bases, signal_shape):
    """Squared distances of features to every class subspace, shape ``(b, k)``.

    Parameters
    ----------
    z : working array (b, C, *signal_shape) or (b, d)
    bases : numpy array (k, F, C, r), from :func:`class_subspaces`
    signal_shape : tuple, ``()`` for vectors
    """
    with thread_limits():  # batched small products: one BLAS thread (see _threads)
        return _subspace_distances(backend, z, bases, signal_shape)


def _subspace_distances(backend, z, bases, signal_shape):
    v = backend.asnumpy(spectral.spectrum(backend, z, tuple(signal_shape)))  # (F, C, b)
    weights = spectral.half_spectrum_weights(tuple(signal_shape))
    v = np.ascontiguousarray(v)
    total = weights @ (v.real ** 2 + v.imag ** 2).sum(1)
    captured = np.empty((bases.shape[0], v.shape[-1]))
    for j, basis in enumerate(bases):
        # Contiguous (F, r, C) operand: numpy's matmul runs BLAS only on unit-stride axes.
        basis_h = np.ascontiguousarray(np.conj(np.swapaxes(basis, -1, -2)), dtype=v.dtype)
        coeffs = basis_h @ v  # (F, r, b)
        captured[j] = weights @ (coeffs.real ** 2 + coeffs.imag ** 2).sum(1) \
            if np.iscomplexobj(coeffs) else weights @ (coeffs ** 2).sum(1)
    return np.maximum(total[None, :] - captured, 0.0).T
