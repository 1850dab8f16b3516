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
import dataclasses
import math

import numpy as np

from . import _parallel

# The one memory budget: bytes of per-sample work arrays one chunk of samples
# may take when batch_size is None (Gram accumulation, lifting, layers).
CHUNK_BYTES = 256 << 20
# Bytes of matrices one batched solve may take (operators are solved in slices).
_SOLVE_BYTES = 256 << 20


def freq_shape(signal_shape):
    """Shape of the stored half spectrum: ``(T//2+1,)`` in 1D, ``(H, W//2+1)`` in 2D; ``()``."""
    signal_shape = tuple(signal_shape)
    if not signal_shape:
        return ()
    return signal_shape[:-1] + (signal_shape[-1] // 2 + 1,)


def n_freqs(signal_shape):
    """Stored frequencies of the half spectrum of signals of ``signal_shape`` (1 for vectors)."""
    return math.prod(freq_shape(signal_shape))


def signal_layout(sample_shape):
    """``(n_channels, signal_shape, freq_shape)`` for one sample's shape.

    ``(d,)`` -> ``(d, (), ())``; ``(C, T)`` -> ``(C, (T,), (T//2+1,))``;
    ``(C, H, W)`` -> ``(C, (H, W), (H, W//2+1))``.
    """
    n_channels, signal_shape = sample_shape[0], tuple(sample_shape[1:])
    return n_channels, signal_shape, freq_shape(signal_shape)


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


def spectrum(backend, x, signal_shape, out=None):
    """Unitary half spectrum of samples ``x`` ``(b, C, *S)``, as ``(F, C, b)``.

    ``out``: an array ``(F, C, b)`` (a slice of a larger one, say) to write
    the result into; it is returned.
    """
    # Contiguous, so that batched products on it run as BLAS calls (numpy's
    # matmul falls back to a slow loop when neither inner axis has unit stride).
    if not signal_shape:  # vectors: (b, d) -> (1, d, b)
        v = backend.permute(x, (1, 0))[None]
    else:
        x_hat = backend.rfft(x, len(signal_shape))
        b, c = x.shape[:2]
        v = backend.permute(backend.reshape(x_hat, (b, c, -1)), (2, 1, 0))
    if out is None:
        return backend.contiguous(v)
    out[...] = v
    return out


def inverse_spectrum(backend, v_hat, signal_shape):
    """Inverse of :func:`spectrum`: ``(F, C, b)`` -> real samples ``(b, C, *S)``."""
    if not signal_shape:
        return backend.permute(v_hat[0], (1, 0))
    f, c, b = v_hat.shape
    x_hat = backend.reshape(backend.permute(v_hat, (2, 1, 0)), (b, c) + freq_shape(signal_shape))
    return backend.irfft(x_hat, signal_shape, unitary=True)


def operator_kernels(backend, op_hat, signal_shape):
    """Real kernels of per-frequency operators: ``(..., F, C, C)`` -> ``(..., C, C, *S)``.

    The unnormalized inverse DFT over the (flattened) half spectrum: the
    kernel ``e[c, c']`` whose DFT at frequency ``p`` is ``op_hat[p, c, c']``.
    """
    if not signal_shape:
        return op_hat[..., 0, :, :] if op_hat.ndim > 2 and op_hat.shape[-3] == 1 else op_hat
    half = freq_shape(signal_shape)
    lead = tuple(op_hat.shape[:-3])
    c_out, c_in = op_hat.shape[-2:]
    shaped = backend.reshape(op_hat, lead + half + (c_out, c_in))
    nl, nd = len(lead), len(half)
    axes = tuple(range(nl)) + (nl + nd, nl + nd + 1) + tuple(range(nl, nl + nd))
    return backend.irfft(backend.permute(shaped, axes), signal_shape, unitary=False)


def samples_per_chunk(bytes_per_sample):
    """Samples per chunk so that a chunk's work arrays stay within :data:`CHUNK_BYTES`."""
    return max(1, CHUNK_BYTES // max(1, int(bytes_per_sample)))


def default_batch_size(n_channels, n_freqs, itemsize):
    """Samples per chunk of a spectrum ``(F, C, b)`` of complex ``2 * itemsize`` entries."""
    return samples_per_chunk(n_channels * n_freqs * 2 * itemsize)


def class_grams(backend, Z, labels, n_classes, batch_size=None, keep=(), grams_of=None,
                total=True, sample_shape=None):
    """Per-class and total per-frequency Gram matrices ``V_j(p) V_j(p)^H``.

    Parameters
    ----------
    Z : array, shape (m, C, *S) or (m, d); or the spectra themselves,
        ``(F, C, m)``, when ``sample_shape`` is given
    labels : numpy int array, shape (m,)
    keep : classes whose spectra ``V_j`` ``(F, C, m_j)`` are returned too.
    grams_of : classes whose Gram matrices are returned (default: all).
    total : also return the Gram matrix of all samples.

    Returns
    -------
    grams : dict class -> array (F, C, C)
    total_gram : array (F, C, C) or None
    kept : dict class -> array (F, C, m_j)
        A view of ``Z`` when ``Z`` holds spectra whose class is a contiguous run.
    """
    spectra = sample_shape is not None
    if not spectra:
        sample_shape = tuple(Z.shape[1:])
    n_channels, signal_shape, _ = signal_layout(tuple(sample_shape))
    n_freqs = len(half_spectrum_weights(signal_shape))
    if batch_size is None:
        batch_size = default_batch_size(n_channels, n_freqs, backend.itemsize(Z))
    grams_of = set(range(n_classes)) if grams_of is None else set(grams_of)
    keep = set(keep)
    # Samples in class order, in chunks: one product per chunk gives the total
    # Gram matrix, and each class is a contiguous run of columns of the chunk.
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    in_order = bool(np.all(np.diff(order) == 1))
    if spectra and in_order:
        # Each kept class is one run of columns: a view, never copied.
        bounds = np.searchsorted(sorted_labels, np.arange(n_classes + 1))
        views = {j: Z[:, :, bounds[j]:bounds[j + 1]] for j in keep}
        keep = set()
    grams, pieces, total_gram = {}, {j: [] for j in keep}, None
    for start in range(0, len(order), batch_size):
        stop = min(start + batch_size, len(order))
        if not total and not keep and not (grams_of & set(sorted_labels[start:stop].tolist())):
            continue
        if spectra:
            v = Z[:, :, start:stop] if in_order else backend.take_columns(
                Z, order[start:stop])
        else:
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
    if spectra and in_order:
        kept.update(views)
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
    scale = backend.astype(np.asarray(alphas).reshape(g, 1, 1, 1), like=grams.real)
    # I + alpha G, formed in one new array.
    flat_a = backend.reshape(scale * grams, (g * n_freqs, c, c))
    backend.add_to_diagonal(flat_a, 1.0)
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
    del flat_a
    if not inverse:
        return None, logdets
    ops = backend.reshape(backend.concat(invs) if len(invs) > 1 else invs[0],
                          (g, n_freqs, c, c))
    del invs
    ops *= scale
    return ops, logdets


def side_by_side(backend, spectra, width=None):
    """Spectra ``(F, C, m_j)`` side by side, each padded with zero columns to ``width``.

    Returns ``(F, C, g w)`` (``w`` = ``width`` or the widest ``m_j``), filled
    group by group: one allocation, no stacked intermediate. Zero columns
    change neither ``(I + alpha V V^H)^-1`` nor its log-determinant.
    """
    width = max(v.shape[-1] for v in spectra) if width is None else width
    f, c = spectra[0].shape[:2]
    out = backend.zeros((f, c, len(spectra) * width), like=spectra[0])
    for i, v in enumerate(spectra):
        n = min(width, v.shape[-1])
        out[:, :, i * width:i * width + n] = v[..., :n]
    return out


def group_blocks(backend, v, n_groups):
    """``(F, C, g w)`` as ``(F, g, C, w)``: a strided view, unit stride on the last axis."""
    f, c, n = v.shape
    return backend.permute(backend.reshape(v, (f, c, n_groups, n // n_groups)), (0, 2, 1, 3))


def woodbury_factors(backend, v, n_groups, alphas, gram=None, inverse=True):
    """Woodbury factors of ``alpha_j (I + alpha_j V_j V_j^H)^-1`` for groups side by side.

    With ``M = I_m + alpha V^H V`` (``m x m``), the Woodbury identity gives
    ``(I_C + alpha V V^H)^-1 = I_C - alpha V M^-1 V^H`` and
    ``logdet(I_C + alpha V V^H) = logdet M``: cheaper when ``m < C``.

    Parameters
    ----------
    v : array (F, C, g w), the groups' spectra side by side (:func:`side_by_side`)
    n_groups : int, ``g``
    alphas : sequence of g floats
    gram : array (F, g w, g w) or None
        ``V^H V`` when already computed (its diagonal blocks are the groups');
        otherwise each group's block is formed on its own.

    Returns
    -------
    m_inv : array (F, g, w, w) or None, ``M_j^-1``
    logdets : array (g, F)
    """
    f, _, n = v.shape
    w = n // n_groups
    if gram is None:
        blocks = group_blocks(backend, v, n_groups)
        small = backend.hmatmul(blocks, blocks)  # (F, g, w, w)
    else:
        small = backend.stack([gram[:, i * w:(i + 1) * w, i * w:(i + 1) * w]
                               for i in range(n_groups)], axis=1)
    small = small * backend.astype(np.asarray(alphas).reshape(1, -1, 1, 1), like=small.real)
    backend.add_to_diagonal(small, 1.0)
    if not inverse:
        return None, backend.permute(backend.hpd_logdet(small), (1, 0))
    m_inv, logdets = backend.hpd_inverse_logdet(small)
    return m_inv, backend.permute(logdets, (1, 0))


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


# --- one layer's solve ---------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RateReduction:
    """Coding rates of features ``Z`` with labels ``y`` (nats).

    Attributes
    ----------
    expansion : float
        ``R(Z)`` (``R_circ`` for signals).
    compression : float
        ``R_c(Z) = sum_j gamma_j R(Z_j)``.
    delta : float
        ``expansion - compression``, the rate reduction.
    """

    expansion: float
    compression: float

    @property
    def delta(self):
        return self.expansion - self.compression


@dataclasses.dataclass(frozen=True, eq=False)
class LayerSolution:
    """The engine's result for one set of features, in the layout a layer stores.

    Each operator is kept in exactly one form, decided once by the solve:
    dense, stacked so that one batched product applies them all, or low rank
    as Woodbury factors ``C^j = alpha_j (I - alpha_j V_j M_j^-1 V_j^H)`` that
    share one matrix of spectra ``V``. ``E`` is low rank too when every class
    is and the whole set has fewer samples than channels:
    ``E = alpha (I - alpha V M^-1 V^H)`` on all of ``V``'s columns.

    Attributes
    ----------
    rates : RateReduction
    gamma : numpy array (k,)
        Class proportions ``m_j / m``.
    stacked : array (F, n C, C), complex (real for vectors), or None
        The dense operators on top of each other: ``E`` (unless low rank),
        then the dense classes' operators in ``dense_classes`` order. None
        when only the rates were asked for, or when nothing is dense.
    dense_classes, lowrank_classes : tuple of int
        Which class sits where; together a permutation of ``0..k-1``.
    V : array (F, C, g w) or None
        The low-rank classes' spectra side by side, each padded with zero
        columns to the width ``w``.
    M_inv : array (F, g, w, w) or None
        ``(I + alpha_j V_j^H V_j)^-1`` per low-rank class.
    alphas : numpy array (g,)
        ``alpha_j`` of the low-rank classes.
    E_M_inv : array (F, g w, g w) or None
        ``(I + alpha V^H V)^-1`` when ``E`` is low rank (None when it is dense).
    alpha_E : float
        ``alpha`` of ``E`` (used when ``E`` is low rank).
    gram : array (F, g w, g w) or None
        ``V^H V``, when the solve formed it and ``V`` holds every training
        sample (E low rank): the products ``V^H v`` of the training samples,
        which the fit reuses once (:func:`without_gram` drops it).
    """

    rates: RateReduction
    gamma: np.ndarray
    stacked: object = None
    dense_classes: tuple = ()
    lowrank_classes: tuple = ()
    V: object = None
    M_inv: object = None
    alphas: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    E_M_inv: object = None
    alpha_E: float = 0.0
    gram: object = dataclasses.field(default=None, repr=False)

    @property
    def n_classes(self):
        return len(self.gamma)

    @property
    def n_channels(self):
        return self.stacked.shape[-1] if self.stacked is not None else self.V.shape[1]

    @property
    def n_freqs(self):
        return (self.stacked if self.stacked is not None else self.V).shape[0]

    @property
    def e_lowrank(self):
        """Whether ``E`` is held as Woodbury factors on ``V``."""
        return self.E_M_inv is not None

    @property
    def width(self):
        """Columns of each low-rank factor (0 without low-rank classes)."""
        return 0 if self.M_inv is None else self.M_inv.shape[-1]

    def lowrank_blocks(self, backend):
        """``V`` as ``(F, g, C, w)`` (a contiguous copy: one class per block)."""
        return backend.contiguous(group_blocks(backend, self.V, len(self.lowrank_classes)))

    def dense_operators(self, backend):
        """Dense ``E_hat`` ``(F, C, C)`` and ``C_hat`` ``(k, F, C, C)`` in class order."""
        c = self.n_channels
        f = self.n_freqs
        parts = {}
        rows = 0 if self.e_lowrank else c  # E's rows at the top of ``stacked``
        if self.dense_classes:
            dense = backend.reshape(self.stacked[:, rows:], (f, -1, c, c))
            parts.update(zip(self.dense_classes, backend.permute(dense, (1, 0, 2, 3))))
        if self.lowrank_classes:
            g = len(self.lowrank_classes)
            v = backend.permute(group_blocks(backend, self.V, g), (1, 0, 2, 3))
            m_inv = backend.permute(self.M_inv, (1, 0, 2, 3))
            parts.update(zip(self.lowrank_classes, woodbury_dense(backend, v, m_inv,
                                                                  self.alphas)))
        if self.e_lowrank:
            e_hat = woodbury_dense(backend, self.V[None], self.E_M_inv[None],
                                   [self.alpha_E])[0]
        else:
            e_hat = self.stacked[:, :c]
        return e_hat, backend.stack([parts[j] for j in range(self.n_classes)])


def without_gram(solution):
    """``solution`` without its transient ``gram`` (what a layer keeps)."""
    return solution if solution.gram is None else dataclasses.replace(solution, gram=None)


def training_columns(counts, width):
    """Where each training sample (classes in runs) sits among ``V``'s padded columns."""
    return np.concatenate([j * width + np.arange(n) for j, n in enumerate(counts)])


def uses_woodbury(woodbury, n_samples, n_channels):
    """Whether a group of ``n_samples`` is solved through the Woodbury identity."""
    if woodbury == "auto":
        return n_samples < n_channels
    return bool(woodbury)


def stays_lowrank(n_samples, n_channels):
    """Whether a class solved by Woodbury is stored and applied in low-rank form.

    Low-rank application costs about ``2 C m_j + 2 m_j^2`` per frequency and
    sample, a dense operator ``C^2``: past that crossover the class is stored dense.
    """
    return 2 * n_channels * n_samples + 2 * n_samples ** 2 < n_channels ** 2


def e_stays_lowrank(n_columns, n_channels):
    """Whether ``E`` solved by Woodbury is kept low rank, every class being low rank.

    The classes' low-rank products ``V^H v`` and ``V x`` already run; ``E``
    adds one ``(g w) x (g w)`` product per frequency against ``C x C`` dense.
    """
    return n_columns < n_channels


def gram_request(counts, n_channels, woodbury="auto"):
    """What :func:`class_grams` must return for a layer's solve, from the class sizes alone.

    Parameters
    ----------
    counts : sequence of k ints, samples per class
    n_channels : int
    woodbury : {"auto", True, False}

    Returns
    -------
    keep : list of classes whose spectra ``V_j`` are needed (Woodbury groups)
    grams_of : list of classes whose Gram matrices are needed
    total : bool, whether the Gram matrix of all samples is needed
    """
    k = len(counts)
    sizes = [int(np.sum(counts))] + [int(c) for c in counts]
    by_woodbury = [uses_woodbury(woodbury, size, n_channels) for size in sizes]
    keep = list(range(k)) if by_woodbury[0] else [j for j in range(k) if by_woodbury[j + 1]]
    grams_of = [j for j in range(k) if not by_woodbury[j + 1]]
    return keep, grams_of, not by_woodbury[0]


def solve_layer(backend, Z, labels, k, eps2, batch_size=None, woodbury="auto",
                operators=True):
    """Rates and (optionally) operators of validated features, in storage layout.

    Parameters
    ----------
    Z : array (m, C, *S) or (m, d)
    labels : numpy int array (m,), values ``0..k-1``, every class present
    k : int
    eps2 : float
    batch_size : int or None
        Samples per chunk of the Gram accumulation.
    woodbury : {"auto", True, False}
        Which groups are solved through the ``m_j x m_j`` Woodbury form.
    operators : bool
        False computes only the rates.

    Returns
    -------
    LayerSolution

    Notes
    -----
    Three steps, each usable alone: :func:`check_scale` (from the largest
    ``|entry|``, :func:`peak_abs`), :func:`class_grams` (sums over samples, as
    asked by :func:`gram_request`), then :func:`solve_grams` (no sample is
    touched). Out-of-core and distributed fits (:mod:`convredunet.distributed`)
    take the peak and the sums over chunks of samples and call the others.
    """
    counts = np.bincount(labels, minlength=k)
    check_scale(peak_abs(backend, Z, batch_size), counts, tuple(Z.shape[1:]), eps2,
                backend.real_dtype_name(Z))
    keep, grams_of, total = gram_request(counts, Z.shape[1], woodbury)
    grams, total_gram, kept = class_grams(
        backend, Z, labels, k, batch_size, keep=set(keep), grams_of=grams_of, total=total)
    return solve_grams(backend, grams, total_gram, kept, counts, tuple(Z.shape[1:]), eps2,
                       woodbury, operators)


def solve_spectra(backend, V, counts, sample_shape, eps2, batch_size=None, woodbury="auto"):
    """:func:`solve_layer` for unit-norm features given by their spectra, classes in runs.

    What a network's fit calls: its features never leave the frequency domain.

    Parameters
    ----------
    V : array (F, C, m), the unitary half spectra of unit-norm features, the
        samples of class 0 first, then class 1, ... (each class a run of columns)
    counts : sequence of k ints, samples per class (every class present)
    sample_shape : tuple, one sample's shape ``(C, *S)`` or ``(d,)``
    eps2, batch_size, woodbury : as in :func:`solve_layer`

    Returns
    -------
    LayerSolution
    """
    counts = np.asarray(counts, dtype=np.int64)
    labels = np.repeat(np.arange(len(counts)), counts)
    # Unit-norm samples: every Gram entry is at most m (the peak that gives that bound).
    check_scale(1 / math.sqrt(math.prod(sample_shape)), counts, tuple(sample_shape), eps2,
                backend.real_dtype_name(V))
    keep, grams_of, total = gram_request(counts, V.shape[1], woodbury)
    grams, total_gram, kept = class_grams(backend, V, labels, len(counts), batch_size,
                                          keep=set(keep), grams_of=grams_of, total=total,
                                          sample_shape=sample_shape)
    return solve_grams(backend, grams, total_gram, kept, counts, tuple(sample_shape), eps2,
                       woodbury, spectra=V)


# What to do about features whose Gram matrices or rates overflow.
SCALE_HINT = ("the rates depend on the scale of the features, so rescale them (e.g. "
              "each sample to unit norm) or use float64")


def peak_abs(backend, Z, batch_size=None):
    """The largest ``|entry|`` of ``Z``, a float (read chunk by chunk)."""
    m = Z.shape[0]
    size = batch_size or samples_per_chunk(math.prod(Z.shape[1:]) * backend.itemsize(Z))
    return max(backend.to_float(backend.max_abs_rows(backend.reshape(Z[s:s + size], (1, -1)))[0])
               for s in range(0, m, size))


def check_scale(peak, counts, sample_shape, eps2, dtype):
    """Refuse features whose Gram matrices or ``I + alpha G`` would overflow ``dtype``.

    With the unitary DFT every entry of a Gram matrix (and of ``V^H V``) is at
    most ``m C T max|Z|^2``; the bound is checked in logarithms, before any
    product is formed, so nothing overflows silently.

    Parameters
    ----------
    peak : float, the largest ``|entry|`` of the features (:func:`peak_abs`)
    counts : sequence of k ints, samples per class
    sample_shape : tuple, one sample's shape
    eps2 : float
    dtype : str, ``"float64"`` or ``"float32"``
    """
    if peak == 0.0:
        return
    m = int(np.sum(counts))
    alpha = sample_shape[0] / (min(int(c) for c in counts) * eps2)
    log_max = math.log(float(np.finfo(dtype).max))
    log_gram = math.log(m * math.prod(sample_shape)) + 2 * math.log(peak)
    if log_gram > log_max - 1:
        raise ValueError(f"the Gram matrices of the features would overflow {dtype} "
                         f"(largest |entry| {peak:.3g}, {m} samples): {SCALE_HINT}")
    if log_gram + math.log(alpha) > log_max - 1:
        raise ValueError(f"alpha G = C/(m_j eps2) G would overflow {dtype} with "
                         f"eps2={eps2:g} (alpha up to {alpha:.3g}, largest |entry| "
                         f"{peak:.3g}): use a larger eps2, smaller features or float64")


def _require_finite(backend, x, what, dtype, hint):
    if not backend.all_finite(x):
        raise ValueError(f"{what} overflowed {dtype}: {hint}")


def solve_grams(backend, grams, total_gram, kept, counts, sample_shape, eps2,
                woodbury="auto", operators=True, spectra=None):
    """Rates and (optionally) operators from the sums :func:`gram_request` asks for.

    Parameters
    ----------
    grams : dict class -> array (F, C, C), the classes of ``grams_of``
    total_gram : array (F, C, C) or None (when ``total`` is False)
    kept : dict class -> array (F, C, m_j), the classes of ``keep``
    counts : sequence of k ints, samples per class (every class present)
    sample_shape : tuple, one sample's shape ``(C, *S)`` or ``(d,)``
    eps2 : float
    woodbury, operators : as in :func:`solve_layer`
    spectra : array (F, C, m) or None
        Every sample's spectrum, classes in runs (:func:`solve_spectra`):
        used as the Woodbury factors as it is when the classes are of one size.

    Returns
    -------
    LayerSolution

    Notes
    -----
    Groups (the whole set, then each class) solved by Woodbury keep their
    factors; a class stays low rank when :func:`stays_lowrank` says so, and
    is densified otherwise, so the layer never decides again.
    """
    any_sum = total_gram if total_gram is not None else next(
        iter(grams.values()), None)
    if any_sum is None:
        any_sum = next(iter(kept.values()))
    dtype = backend.real_dtype_name(any_sum)
    try:
        return _solve_grams(backend, grams, total_gram, kept, counts, sample_shape, eps2,
                            woodbury, operators, dtype, spectra)
    except np.linalg.LinAlgError:
        raise ValueError(
            f"the regularized Gram matrices I + alpha V V^H are not numerically positive "
            f"definite in {dtype} with eps2={eps2:g}: the features are too "
            f"close to rank deficient for this precision; use a larger eps2 or float64"
        ) from None


def _solve_grams(backend, grams, total_gram, kept, counts, sample_shape, eps2, woodbury,
                 operators, dtype, spectra=None):
    scale_hint = SCALE_HINT
    counts = np.asarray(counts, dtype=np.int64)
    k = len(counts)
    m = int(counts.sum())
    n_channels, signal_shape, _ = signal_layout(tuple(sample_shape))
    t = math.prod(signal_shape)
    sizes = [m] + list(counts)
    alphas = [n_channels / (size * eps2) for size in sizes]
    by_woodbury = [uses_woodbury(woodbury, size, n_channels) for size in sizes]
    direct = [g for g in range(k + 1) if not by_woodbury[g]]
    small = [g for g in range(k + 1) if by_woodbury[g]]
    dense, logdets = {}, {}
    if direct:
        stack = backend.stack([total_gram if g == 0 else grams[g - 1] for g in direct])
        _require_finite(backend, stack, "the Gram matrices of the features", dtype,
                        scale_hint)
        del grams, total_gram  # only the stacked copy is needed from here
        out, det = regularized_inverse(backend, stack, [alphas[g] for g in direct],
                                       inverse=operators)
        del stack
        for i, g in enumerate(direct):
            dense[g] = out[i] if operators else None
            logdets[g] = det[i]
    # Woodbury groups: the classes' spectra side by side, padded to one width
    # (with E among them, every class is: m < C implies m_j < C).
    members = [g - 1 for g in small if g > 0]
    e_small = 0 in small
    if e_small:
        members = list(range(k))
    v = m_inv = e_m_inv = gram = None
    if members:
        if spectra is not None and members == list(range(k)) and len(set(counts)) == 1:
            v = spectra  # already side by side, every class of one width
        else:
            v = side_by_side(backend, [kept[j] for j in members])
        del kept  # V holds the spectra from here
        gram = backend.gram(v) if e_small else None  # (F, g w, g w)
        m_inv, det = woodbury_factors(backend, v, len(members),
                                      [alphas[j + 1] for j in members], gram,
                                      inverse=operators)
        for i, j in enumerate(members):
            logdets[j + 1] = det[i]
        if e_small:
            big = gram * alphas[0]
            backend.add_to_diagonal(big, 1.0)
            if operators:
                e_m_inv, logdets[0] = backend.hpd_inverse_logdet(big)
            else:
                logdets[0] = backend.hpd_logdet(big)
            del big
    weights = backend.astype(half_spectrum_weights(signal_shape), like=logdets[0])
    rates = [backend.to_float((weights * logdets[g]).sum()) / (2 * t) for g in range(k + 1)]
    if not all(map(math.isfinite, rates)):
        raise ValueError(f"the coding rates overflowed {dtype} (alpha = C/(m eps2) with "
                         f"eps2={eps2:g}): {scale_hint}, or use a larger eps2")
    gamma = counts / m
    result = RateReduction(rates[0], float(np.dot(gamma, rates[1:])))
    if not operators:
        return LayerSolution(rates=result, gamma=gamma)

    # Storage, decided once: a Woodbury class stays low rank when that is
    # cheaper to apply (stays_lowrank); E stays low rank when every class does
    # and V is narrower than the channels; everything else is densified.
    lowrank = [j for j in members if stays_lowrank(int(counts[j]), n_channels)]
    e_lowrank = e_small and len(lowrank) == k and e_stays_lowrank(v.shape[-1], n_channels)
    if e_small and not e_lowrank:
        dense[0] = woodbury_dense(backend, v[None], e_m_inv[None], [alphas[0]])[0]
        e_m_inv = None
    densified = [j for j in members if j not in lowrank]
    if densified:
        blocks = backend.permute(group_blocks(backend, v, len(members)), (1, 0, 2, 3))
        m_blocks = backend.permute(m_inv, (1, 0, 2, 3))
        index = [members.index(j) for j in densified]
        for j, op in zip(densified, woodbury_dense(
                backend, backend.stack([blocks[i] for i in index]),
                backend.stack([m_blocks[i] for i in index]),
                [alphas[j + 1] for j in densified])):
            dense[j + 1] = op
    # Classes solved directly first, then densified ones: the order the
    # stacked rows follow (any order works; this one is fixed here, once).
    dense_classes = [g - 1 for g in direct if g > 0] + densified
    rows = ([] if e_lowrank else [dense[0]]) + [dense[j + 1] for j in dense_classes]
    stacked = None
    if rows:
        stacked = backend.stack(rows, axis=1)
        f = stacked.shape[0]
        stacked = backend.contiguous(backend.reshape(stacked, (f, -1, n_channels)))
    dense.clear()
    V = M_inv = None
    if lowrank:
        if len(lowrank) == len(members):
            V, M_inv = v, backend.contiguous(m_inv)
        else:  # only some classes stay low rank: their blocks, at their own width
            width = int(counts[lowrank].max())
            blocks = group_blocks(backend, v, len(members))
            index = [members.index(j) for j in lowrank]
            V = side_by_side(backend, [blocks[:, i] for i in index], width)
            M_inv = backend.contiguous(backend.stack(
                [m_inv[:, i, :width, :width] for i in index], axis=1))
    del v, m_inv
    for name, x in (("E and C^j", stacked), ("V", V), ("M^-1", M_inv), ("M^-1", e_m_inv)):
        if x is not None:
            _require_finite(backend, x, f"the operators ({name})", dtype,
                            f"eps2={eps2:g} is too small for this precision; use a larger "
                            "eps2 or float64")
    return LayerSolution(rates=result, gamma=gamma, stacked=stacked,
                         dense_classes=tuple(dense_classes), lowrank_classes=tuple(lowrank),
                         V=V, M_inv=M_inv,
                         alphas=np.asarray([alphas[j + 1] for j in lowrank], dtype=np.float64),
                         E_M_inv=e_m_inv, alpha_E=float(alphas[0]),
                         gram=gram if e_lowrank else None)
