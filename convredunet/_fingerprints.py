"""Which signals a network was fitted on: one 64-bit fingerprint per training sample.

A closed-form network holds its training signals inside its class subspaces,
so it scores them (near) perfectly: they cannot tell how well it, or anything
fine-tuned from it, does on new signals. :func:`sample_fingerprints` gives
each sample a 64-bit hash of its values (as float64), :func:`seen` says which
samples of another array have a fingerprint in a fitted set. Identical values
give identical fingerprints whatever the input's dtype or library (float32
values are exact in float64); two different samples share one with
probability about 2^-64 per pair.

The hash mixes each value's 64 bits (splitmix64's finalizer), weights it by
a fixed odd constant per position and sums modulo 2^64, then mixes the sum:
vectorized over samples, one pass over the data.
"""
import numpy as np

from .backend import to_numpy

__all__ = ["sample_fingerprints", "fingerprints_in_order", "seen"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x):
    """splitmix64's finalizer, elementwise on uint64 arrays (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


_as_numpy = to_numpy


def fingerprints_in_order(X, chunk=4096):
    """One uint64 per sample of ``X`` ``(n, ...)`` (numpy or torch), in sample order.

    The values are read as float64, ``-0.0`` as ``0.0``.
    """
    X = _as_numpy(X)
    n = X.shape[0]
    flat = X.reshape(n, -1)
    width = flat.shape[1]
    weights = _mix(np.arange(1, width + 1, dtype=np.uint64) * _GOLDEN) | np.uint64(1)
    out = np.empty(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for start in range(0, n, chunk):
            block = np.asarray(flat[start:start + chunk], dtype=np.float64) + 0.0
            bits = _mix(np.ascontiguousarray(block).view(np.uint64))
            out[start:start + len(block)] = _mix(
                (bits * weights).sum(axis=1, dtype=np.uint64) + np.uint64(width))
    return out


def sample_fingerprints(X):
    """:func:`fingerprints_in_order` of ``X``, sorted ascending (what a fitted network keeps)."""
    return np.sort(fingerprints_in_order(X))


def seen(fingerprints, X):
    """Boolean ``(n,)``: whether each sample of ``X`` has a fingerprint in ``fingerprints``.

    ``fingerprints``: sorted, from :func:`sample_fingerprints` (None: nothing seen).
    """
    n = X.shape[0]
    if fingerprints is None or len(fingerprints) == 0 or n == 0:
        return np.zeros(n, dtype=bool)
    mine = fingerprints_in_order(X)
    index = np.minimum(np.searchsorted(fingerprints, mine), len(fingerprints) - 1)
    return fingerprints[index] == mine
