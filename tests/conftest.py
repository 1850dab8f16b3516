import os

import numpy as np
import pytest

# Tolerances per precision: float64 results are compared to 1e-10 relative,
# float32 ones (against a float64 reference) to 1e-4.
RTOL = {np.float64: 1e-10, np.float32: 1e-4}


@pytest.fixture(params=[np.float64, np.float32], ids=["float64", "float32"])
def dtype(request):
    return request.param


def make_features(m, sample_shape, k, seed=0, dtype=np.float64):
    """Random unit-norm samples with balanced labels 0..k-1."""
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((m,) + tuple(sample_shape))
    Z /= np.linalg.norm(Z.reshape(m, -1), axis=1).reshape((m,) + (1,) * len(sample_shape))
    y = np.arange(m) % k
    rng.shuffle(y)
    return Z.astype(dtype), y


def signals(m, shape, k, seed=0, *, noise=0.3, shifts_first=False, kind="shifted"):
    """Labelled signals for ``k`` classes, drawn from ``numpy.random.default_rng(seed)``.

    Parameters
    ----------
    m : int
        Number of samples.
    shape : tuple of int
        One sample's shape: ``(T,)``, ``(C, T)`` or ``(C, H, W)``.
    k : int
        Number of classes; the labels are ``0, 1, ..., k-1, 0, 1, ...`` in this order.
    seed : int
        Seed of the local generator.
    noise : float
        Standard deviation of the Gaussian noise added to the shifted templates.
    shifts_first : bool
        Draw every sample's shift before any noise (one noise draw for all samples)
        instead of each sample's shift and then its noise.
    kind : {"shifted", "mean"}
        ``"shifted"``: class ``j`` is a random template (one per class) cyclically
        shifted at random along its last axis (the last two for ``(C, H, W)``), plus
        noise. ``"mean"``: class ``j`` is standard normal noise plus ``0.5 j`` (a class
        the layers separate by its mean), the labels shuffled; ``noise`` and
        ``shifts_first`` do not apply.

    Returns
    -------
    X : ndarray of shape (m, *shape), float64
    y : ndarray of shape (m,), int
    """
    shape = tuple(shape)
    rng = np.random.default_rng(seed)
    if kind == "mean":
        y = np.arange(m) % k
        rng.shuffle(y)
        X = rng.standard_normal((m,) + shape) + 0.5 * y.reshape((m,) + (1,) * len(shape))
        return X, y
    if kind != "shifted":
        raise ValueError(f"kind must be 'shifted' or 'mean', got {kind!r}")
    templates = rng.standard_normal((k,) + shape)
    y = np.arange(m) % k
    axes = (-2, -1) if len(shape) == 3 else (-1,)
    X = np.empty((m,) + shape)
    for i in range(m):
        shift = tuple(rng.integers(shape[a]) for a in axes)
        X[i] = np.roll(templates[y[i]], shift, axis=axes)
        if not shifts_first:
            X[i] += noise * rng.standard_normal(shape)
    if shifts_first:
        X += noise * rng.standard_normal(X.shape)
    return X, y


def dense_subspace_distances(Z, labels, k, r, z, rtol=None):
    """Spatial-domain reference for the subspace classifier's squared distances ``(b, k)``.

    The ``CT x CT`` second-moment matrix of each class and all its cyclic shifts is
    decomposed densely; each eigenvector belongs to one frequency pair ``{p, T - p}`` (its
    DFT energy), and per frequency the ``r`` largest eigenvalues are kept (``2 r`` for a
    pair of conjugate frequencies); with ``rtol``, only those above ``rtol`` times the
    class's largest (the numerical rank).
    """
    m, c, t = Z.shape
    out = np.empty((len(z), k))
    for j in range(k):
        shifted = np.stack([np.roll(Z[labels == j], s, axis=-1) for s in range(t)], 1)
        A = shifted.reshape(-1, c * t)
        values, vectors = np.linalg.eigh(A.T @ A)
        energy = np.abs(np.fft.fft(vectors.T.reshape(-1, c, t), axis=-1)) ** 2
        freq = energy.sum(1).argmax(1)
        folded = np.minimum(freq, t - freq)
        keep = []
        for q in np.unique(folded):
            idx = np.flatnonzero(folded == q)
            if rtol is not None:
                idx = idx[values[idx] > rtol * values.max()]
            twins = 1 if q == 0 or 2 * q == t else 2
            keep.extend(idx[np.argsort(values[idx])[::-1][:twins * min(r, c)]])
        basis = vectors[:, keep]
        flat = z.reshape(len(z), -1)
        out[:, j] = (flat ** 2).sum(1) - ((flat @ basis) ** 2).sum(1)
    return out


def rel_err(a, b):
    """max |a - b| / max |b|, on numpy copies."""
    a = np.asarray(a.detach().cpu() if hasattr(a, "detach") else a)
    b = np.asarray(b.detach().cpu() if hasattr(b, "detach") else b)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


def load_bench(filename):
    """Import a script of bench/ (not a package) as a module, once.

    The scripts import their neighbours (``harness``, ``baselines``) as ``python3
    bench/X.py`` lets them, with bench/ first on ``sys.path``; it is put there while the
    script is imported, and those neighbours stay in ``sys.modules``.
    """
    import importlib.util
    import sys

    name = "convredunet_bench_" + filename[:-3]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, os.path.join(BENCH, filename))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, BENCH)
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    finally:
        sys.path.remove(BENCH)
    return module
