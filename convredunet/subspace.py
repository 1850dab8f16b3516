"""Nearest-subspace classification of features, exactly invariant to cyclic shifts.

The ReduNet paper classifies its learned features by the nearest class
subspace: each class's training features span a principal subspace, and a
sample goes to the class whose subspace is closest. On flattened signals that
rule is not shift invariant. Here each class's subspace is the principal
subspace of its features *together with all their cyclic shifts*:

* the second-moment matrix of a class and all its shifts is block circulant,
  so the DFT splits it into one ``C x C`` Hermitian matrix per frequency,
  ``S_j(p) = V_j(p) V_j(p)^H`` (the class Gram matrices the layers use);
* the principal subspace keeps, at every frequency, the leading left singular
  vectors ``U_j(p)`` of the class spectra ``V_j(p)`` (``C x m_j``): at most
  ``r`` of them (``n_components``), and never more than the class's data span
  (its numerical rank, see below);
* the squared distance of a sample ``z`` (unitary half spectrum ``v(p)``) to
  the subspace of class ``j`` is

      d_j(z)^2 = ||z||^2 - sum_p w_p ||U_j(p)^H v(p)||^2

  with ``w_p`` the half-spectrum weights (SPEC.md).

Rank. A class of ``m_j`` samples spans at most ``m_j`` directions per
frequency. A direction is kept when its energy (eigenvalue of ``S_j(p)``)
exceeds :data:`RANK_RTOL` times the class's largest eigenvalue over all
frequencies, so the null space of a small class never enters the distances;
the stored bases carry zero columns where a class or frequency has fewer
directions. When ``m_j <= C`` the directions come from the thin factorization
of the class spectra (the ``m_j x m_j`` Gram ``V_j^H V_j``: ``U = V_j W s^-1/2``),
otherwise from the ``C x C`` matrix ``S_j(p)``.

Why it is exactly invariant: shifting ``z`` by ``s`` multiplies ``v(p)`` by the
unit-modulus number ``exp(-2 pi i p s / T)`` and changes nothing else, so
``||U_j(p)^H v(p)||`` and ``||z||`` are unchanged at every frequency. The
network's features are shift-equivariant, so the distances of a shifted
input equal those of the input, and so does the predicted class.
"""
import math

import numpy as np

from . import spectral
from ._threads import thread_limits
from .backend import numpy_dtype

__all__ = ["class_subspaces", "subspace_distances", "prepare_bases", "subspaces_from_grams",
           "n_directions", "AUTO_FRACTION", "RANK_RTOL"]

#: ``n_components="auto"`` allows this fraction of the feature channels (at least 1) per
#: frequency, and never more than a class's data span (see :func:`n_directions`); chosen
#: by cross-validation inside the training splits (``bench/sweep_ucr.py``).
AUTO_FRACTION = 0.125

#: A direction belongs to a class's span when its eigenvalue exceeds this fraction of the
#: class's largest one (over all frequencies), per working precision.
RANK_RTOL = {"float64": 1e-10, "float32": 1e-5}


def n_directions(n_components, n_channels):
    """At most this many directions per frequency and class: ``r``.

    ``"auto"`` (or None) gives ``max(1, floor(n_channels * AUTO_FRACTION))``;
    an integer is clipped to ``n_channels - 1``: with ``r >= C`` directions the
    subspace would be the whole space at every frequency, every distance zero,
    and the classifier would mean nothing. A class keeps fewer directions
    where its data span fewer (its numerical rank at that frequency).

    Raises
    ------
    ValueError
        When the features have a single channel (no subspace leaves a complement).
    """
    if n_channels < 2:
        raise ValueError(f"classifier='subspace' needs features of at least 2 channels, got "
                         f"{n_channels}; lift the input (n_channels=...) or use "
                         "classifier='membership'")
    if n_components is None or n_components == "auto":
        return max(1, int(n_channels * AUTO_FRACTION))
    return min(int(n_components), n_channels - 1)


def class_subspaces(backend, Z, labels, n_classes, n_components, batch_size=None,
                    sample_shape=None, gram=None):
    """Per-class, per-frequency principal directions of features ``Z``, rank-correct.

    Parameters
    ----------
    backend : the working arrays' backend
    Z : working array, shape (m, C, *signal_shape) or (m, d)
    labels : numpy int array (m,), classes ``0..n_classes-1``
    n_components : int, "auto" or None
        At most this many directions per frequency and class (:func:`n_directions`).
    batch_size : int or None
        Samples per chunk when the spectra are gathered.
    sample_shape : tuple or None
        Given when ``Z`` holds the features' half spectra ``(F, C, m)``
        (classes in runs of columns) rather than the features.
    gram : array (F, m, m) or None
        ``Z^H Z`` of such spectra, when already formed: every class of at most
        ``C`` signals is then factored from its diagonal block.

    Returns
    -------
    bases : numpy array (n_classes, F, C, r), complex for signals, real for vectors
        ``bases[j, p]`` holds class ``j``'s orthonormal directions at frequency
        ``p`` as columns, the largest first, then zero columns: ``r`` is the
        largest number of directions any class keeps at any frequency.
    """
    with thread_limits():  # batched small products: one BLAS thread (see _threads)
        shape = tuple(Z.shape[1:]) if sample_shape is None else tuple(sample_shape)
        n_channels = spectral.signal_layout(shape)[0]
        r = n_directions(n_components, n_channels)
        counts = np.bincount(labels, minlength=n_classes)
        thin = [j for j in range(n_classes) if counts[j] <= n_channels]
        thick = [j for j in range(n_classes) if counts[j] > n_channels]
        grams, _, kept = spectral.class_grams(backend, Z, labels, n_classes, batch_size,
                                              keep=thin, grams_of=thick, total=False,
                                              sample_shape=sample_shape)
        rtol = RANK_RTOL[backend.real_dtype_name(Z)]
        parts = {}
        if thin and gram is not None and len(thin) == n_classes:
            return _stack_bases(backend, _bases_from_gram(backend, Z, gram, counts, r, rtol))
        if thin:
            if sample_shape is not None and len(thin) == n_classes and \
                    len(set(counts)) == 1 and bool(np.all(np.diff(labels) >= 0)):
                # Spectra of classes of one size in runs: the blocks are views of Z.
                blocks = spectral.group_blocks(backend, Z, n_classes)  # (F, k, C, w)
            else:
                blocks = backend.permute(_padded(backend, [kept.pop(j) for j in thin]),
                                         (1, 0, 2, 3))
            parts.update(zip(thin, _thin_bases(backend, blocks, r, rtol)))
        if thick:
            parts.update(zip(thick, bases_from_grams(backend, [grams.pop(j) for j in thick],
                                                     r, rtol)))
        return _stack_bases(backend, [parts[j] for j in range(n_classes)])


#: Folds of the rank's cross-validation (fewer when a class has fewer samples).
RANK_FOLDS = 5


def rank_candidates(counts, n_channels, n_folds):
    """Ranks the cross-validation tries: powers of two, and every direction a class has.

    The largest candidate, ``n_channels - 1``, keeps each class's whole span
    (the numerical rank caps it); the powers of two stop below the largest
    fold-training class.
    """
    largest = int(max(counts)) - int(math.ceil(max(counts) / n_folds))
    top = max(1, min(largest, n_channels - 1))
    powers = [2 ** i for i in range(int(math.log2(top)) + 1) if 2 ** i < top]
    return powers + [n_channels - 1]


def gram_fits(V, budget_bytes=None):
    """Whether ``V^H V`` ``(F, m, m)`` of spectra ``(F, C, m)`` is worth holding.

    It replaces every product with ``V`` in the rank's cross-validation and the
    thin bases; held when it takes at most twice the spectra's own memory (or
    ``budget_bytes``).
    """
    f, c, m = V.shape
    budget = 2 * f * c * m if budget_bytes is None else budget_bytes // 16
    return f * m * m <= max(budget, 1 << 24)


def cross_validated_rank(backend, V, labels, n_classes, sample_shape, gram=None,
                         candidates=None, n_folds=RANK_FOLDS, default=None):
    """The subspace rank that cross-validation on the training spectra supports.

    Each class's signals are dealt to ``n_folds`` folds in turn; for each fold,
    every class's subspace is factored from its other signals (thin: the
    ``m_j x m_j`` Gram) and the held-out signals are classified with the first
    ``r`` directions, for every candidate ``r`` at once (the captured energy is
    a cumulative sum over directions sorted by eigenvalue).

    The choice keeps ``default`` (the rule of :func:`n_directions`, a candidate)
    unless it scores more than one standard error below the best candidate
    (``sqrt(max(a (1 - a), 1/m) / m)`` at the best accuracy ``a``, ``m``
    signals): with ten signals per
    class, a few held-out signals must not move the rank; a clearly better one
    does. Without ``default``, the best (ties: the smaller rank).

    Parameters
    ----------
    V : array (F, C, m), the training features' half spectra, classes in runs
    labels : numpy int array (m,), sorted
    sample_shape : tuple, one sample's feature shape
    gram : array (F, m, m) or None
        ``V^H V`` (:func:`gram_fits`); without it the products are formed per fold.
    candidates : list of int or None (:func:`rank_candidates`)

    Returns
    -------
    rank : int or None
    scores : dict rank -> accuracy
        Empty (and ``rank`` None) when a class has a single signal or a class
        has more signals than channels (no thin factorization: use the rule of
        :func:`n_directions`).
    """
    counts = np.bincount(labels, minlength=n_classes)
    n_channels = V.shape[1]
    n_folds = min(n_folds, int(counts.min()))
    if n_folds < 2 or counts.max() > n_channels:
        return None, {}
    if candidates is None:
        candidates = rank_candidates(counts, n_channels, n_folds)
    if default is not None:
        candidates = sorted(set(candidates) | {int(default)})
    signal_shape = tuple(sample_shape[1:])
    weights = backend.astype(spectral.half_spectrum_weights(signal_shape), like=V.real)
    rtol = RANK_RTOL[backend.real_dtype_name(V)]
    starts = np.concatenate([[0], np.cumsum(counts)])
    fold = np.concatenate([np.arange(n) % n_folds for n in counts])
    correct = np.zeros(len(candidates))
    with thread_limits():
        for f in range(n_folds):
            held = np.flatnonzero(fold == f)
            # Every class's fold-training signals, padded to one width w: (k, w)
            # indices (padding points at sample 0 and is masked to zero).
            own = [starts[j] + np.flatnonzero(fold[starts[j]:starts[j + 1]] != f)
                   for j in range(n_classes)]
            width = max(len(o) for o in own)
            index = np.zeros((n_classes, width), dtype=np.int64)
            mask = np.zeros((n_classes, width))
            for j, o in enumerate(own):
                index[j, :len(o)] = o
                mask[j, :len(o)] = 1.0
            mask = backend.as_dtype_of(backend.from_numpy(mask, like=weights), V)
            if gram is None:
                v_held = backend.take_columns(V, held)  # (F, C, h)
                total = backend.einsum("f,fb->b", weights, backend.channel_sq_norms(v_held))
                v_own = backend.reshape(backend.take_columns(V, index.reshape(-1)),
                                        tuple(V.shape[:2]) + (n_classes, width))
                v_own = backend.permute(v_own, (0, 2, 1, 3)) * mask[None, :, None, :]
                own_gram = backend.gram(v_own)  # (F, k, w, w)
                cross = backend.hmatmul(v_own, v_held[:, None])  # (F, k, w, h)
            else:
                diagonal = backend.einsum("fbb->fb", gram)  # (F, m) = |v_i(p)|^2
                total = backend.einsum("f,fb->b", weights,
                                       backend.take_columns(diagonal, held).real)
                pair = mask[:, :, None] * mask[:, None, :]
                own_gram = backend.gather(gram, index[:, :, None], index[:, None, :]) * \
                    pair[None]  # (F, k, w, w)
                cross = backend.gather(gram, index[:, :, None], held[None, None, :]) * \
                    mask[None, :, :, None]  # (F, k, w, h): V_j^H v_held
            values, vectors = backend.eigh(own_gram)  # ascending
            values = backend.permute(backend.flip(values, -1), (1, 0, 2))  # (k, F, w)
            vectors = backend.flip(vectors, -1)
            keep = _keep_mask(backend, values, n_channels, rtol)
            inverse = backend.where(keep, 1.0 / backend.maximum(values, 1e-300), 0.0)
            energy = backend.abs2(backend.hmatmul(vectors, cross)) * \
                backend.permute(inverse, (1, 0, 2))[:, :, :, None]  # (F, k, w, h)
            cumulative = backend.einsum("f,fkwh->kwh", weights, backend.cumsum(energy, 2))
            captured = backend.stack([cumulative[:, min(r, width) - 1] for r in candidates],
                                     axis=1)  # (k, R, h)
            distances = total[None, None, :] - captured
            guess = backend.asnumpy(backend.argmax(-distances, 0))  # (R, h)
            correct += (guess == labels[held][None, :]).sum(1)
    scores = dict(zip(candidates, (correct / len(labels)).tolist()))
    best = max(scores.values())
    if default is not None:
        m = len(labels)
        error = math.sqrt(max(best * (1 - best), 1 / m) / m)
        if scores[int(default)] >= best - error - 1e-12:
            return int(default), scores
    return min(r for r, acc in scores.items() if acc >= best - 1e-12), scores


def _bases_from_gram(backend, V, gram, counts, r, rtol):
    """Thin bases of classes in runs of ``V`` from the diagonal blocks of ``V^H V``.

    Classes of one size are factored in one batched eigenproblem (the blocks
    are views); otherwise class by class.
    """
    k = len(counts)
    if len(set(int(n) for n in counts)) == 1:
        f, m = gram.shape[0], gram.shape[-1]
        w = m // k
        blocks = backend.einsum("fjajb->fjab", backend.reshape(gram, (f, k, w, k, w)))
        return _thin_from_blocks(backend, spectral.group_blocks(backend, V, k), blocks, r,
                                 rtol)
    starts = np.concatenate([[0], np.cumsum(counts)])
    parts = []
    for j in range(k):
        lo, hi = starts[j], starts[j + 1]
        parts += _thin_from_blocks(backend, V[:, None, :, lo:hi], gram[:, None, lo:hi, lo:hi],
                                   r, rtol)
    return parts


def _thin_from_blocks(backend, blocks, grams, r, rtol):
    """``U = V W s^-1/2`` of classes' spectra ``(F, g, C, w)`` and Grams ``(F, g, w, w)``."""
    values, vectors = backend.eigh(grams)  # ascending
    values = backend.permute(backend.flip(values, -1), (1, 0, 2))  # (g, F, w)
    vectors = backend.flip(vectors, -1)
    n = min(r, values.shape[-1])
    values, vectors = values[..., :n], vectors[..., :n]
    keep = _keep_mask(backend, values, r, rtol)
    inv_sqrt = backend.where(keep, 1.0 / backend.sqrt(backend.maximum(values, 1e-300)), 0.0)
    scaled = vectors * backend.as_dtype_of(backend.permute(inv_sqrt, (1, 0, 2))[:, :, None, :],
                                           vectors)
    bases = blocks @ scaled  # (F, g, C, n)
    return [bases[:, i] for i in range(bases.shape[1])]


def _padded(backend, spectra):
    """Spectra ``(F, C, m_j)`` as one array ``(g, F, C, w)``, zero columns to width ``w``."""
    f, c = spectra[0].shape[:2]
    width = max(v.shape[-1] for v in spectra)
    out = backend.zeros((len(spectra), f, c, width), like=spectra[0])
    for i, v in enumerate(spectra):
        out[i, :, :, :v.shape[-1]] = v
    return out


def _keep_mask(backend, values, r, rtol):
    """Which of the descending eigenvalues ``(g, F, n)`` to keep: the first ``r`` above the floor.

    The floor is ``rtol`` times each group's largest eigenvalue (over all frequencies).
    """
    g, _, n = values.shape
    top = backend.max_abs_rows(backend.reshape(values[:, :, 0], (g, -1)))  # (g,)
    floor = backend.reshape(top, (g, 1, 1)) * rtol
    keep = values > floor
    if n > r:
        keep[:, :, r:] = False
    return keep


def _thin_bases(backend, blocks, r, rtol):
    """Directions of classes with ``m_j <= C``: from the ``m_j x m_j`` Gram of their spectra.

    ``blocks``: the classes' spectra ``(F, g, C, w)`` (zero columns pad the
    narrower ones). ``V = U s^1/2 W^H`` (thin SVD) gives ``U = V W s^-1/2``
    from the eigenpairs ``(s, W)`` of ``V^H V``. Zero columns have zero
    eigenvalues and are never kept. Returns a list of ``(F, C, n)`` arrays.
    """
    return _thin_from_blocks(backend, blocks, backend.gram(blocks), r, rtol)


def bases_from_grams(backend, grams, r, rtol):
    """Directions from per-class ``C x C`` matrices ``S_j(p)`` (``(F, C, C)`` each).

    Returns a list of ``(F, C, n)`` arrays (``n <= r``), directions beyond the
    class's numerical rank set to zero. The Dask path sums ``S_j`` over the
    workers' chunks (:func:`class_grams`), then calls this.
    """
    stack = backend.stack(list(grams))  # (g, F, C, C)
    values, vectors = backend.eigh(stack)
    n = min(r, values.shape[-1])
    values = backend.flip(values, -1)[..., :n]
    vectors = backend.flip(vectors, -1)[..., :n]
    keep = _keep_mask(backend, values, r, rtol)
    return list(vectors * backend.as_dtype_of(keep[:, :, None, :], vectors))


def subspaces_from_grams(backend, grams, n_components):
    """:func:`class_subspaces` from summed per-class ``C x C`` matrices (the Dask path).

    ``grams``: one ``(F, C, C)`` array per class, in the working precision.
    """
    r = n_directions(n_components, grams[0].shape[-1])
    rtol = RANK_RTOL[backend.real_dtype_name(grams[0])]
    return _stack_bases(backend, bases_from_grams(backend, grams, r, rtol))


def _stack_bases(backend, parts):
    """Per-class bases ``(F, C, n_j)`` as one numpy array ``(k, F, C, r)``.

    ``r`` is the largest number of non-zero columns of any class at any
    frequency; the others are dropped (they are zero everywhere).
    """
    used = 1
    for part in parts:
        nonzero = backend.asnumpy(backend.abs2(part).sum(axis=1) > 0)  # (F, n)
        if nonzero.any():
            used = max(used, int(np.flatnonzero(nonzero.any(axis=0)).max()) + 1)
    out = np.zeros((len(parts),) + tuple(parts[0].shape[:2]) + (used,),
                   dtype=numpy_dtype(parts[0]))
    for j, part in enumerate(parts):
        width = min(used, part.shape[-1])
        out[j, :, :, :width] = backend.asnumpy(part[..., :width])
    return out


def class_grams(backend, Z, labels, n_classes, batch_size=None):
    """Per-class, per-frequency Gram matrices ``V_j(p) V_j(p)^H`` of ``Z``.

    A list of ``n_classes`` backend arrays ``(F, C, C)`` (None for a class
    absent from ``Z``): partial sums over chunks of samples add up (the Dask
    path sums them over the workers' chunks, then calls :func:`bases_from_grams`).
    """
    grams, _, _ = spectral.class_grams(backend, Z, labels, n_classes, batch_size,
                                       total=False)
    return [grams.get(j) for j in range(n_classes)]


def prepare_bases(backend, bases, like):
    """``bases`` ``(k, F, C, r)`` as the one operand of :func:`subspace_distances`.

    Returns ``U^H`` of every class stacked, ``(F, k r, C)``, contiguous, in
    ``like``'s backend, precision and device (complex for signals).
    """
    k, f, c, r = bases.shape
    stacked = np.ascontiguousarray(np.conj(np.transpose(bases, (1, 0, 3, 2))).reshape(
        f, k * r, c))
    return backend.contiguous(backend.as_dtype_of(backend.from_numpy(stacked, like=like),
                                                  like))


def subspace_distances(backend, z, bases, signal_shape, prepared=None):
    """Squared distances of features to every class subspace, shape ``(b, k)``.

    Parameters
    ----------
    z : working array (b, C, *signal_shape) or (b, d)
    bases : numpy array (k, F, C, r), from :func:`class_subspaces`
    signal_shape : tuple, ``()`` for vectors
    prepared : array or None
        :func:`prepare_bases` of ``bases`` for ``z``'s working arrays (made
        here when None).

    Returns
    -------
    numpy array (b, k)
    """
    with thread_limits():  # batched small products: one BLAS thread (see _threads)
        v = spectral.spectrum(backend, z, tuple(signal_shape))  # (F, C, b)
        if prepared is None:
            prepared = prepare_bases(backend, bases, v)
        return spectrum_distances(backend, v, prepared, signal_shape, bases.shape[0])


def spectrum_distances(backend, v, prepared, signal_shape, n_classes):
    """:func:`subspace_distances` from the features' half spectra ``v`` ``(F, C, b)``.

    ``prepared``: :func:`prepare_bases` of the bases, ``(F, k r, C)``.
    Returns a numpy array ``(b, k)``.
    """
    f, b = v.shape[0], v.shape[-1]
    # Contiguous, so that the product runs as BLAS calls (numpy's matmul falls back to a
    # slow loop on other layouts: 60 times slower on the 2D MNIST network's spectra).
    v = backend.contiguous(v)
    coeffs = prepared @ v  # (F, k r, b)
    weights = backend.astype(spectral.half_spectrum_weights(tuple(signal_shape)), like=v.real)
    total = backend.einsum("f,fb->b", weights, backend.abs2(v).sum(1))
    captured = backend.einsum("f,fkb->kb", weights, backend.reshape(
        backend.abs2(coeffs), (f, n_classes, -1, b)).sum(2))
    return backend.asnumpy(backend.maximum(total[None, :] - captured, 0.0)).T
