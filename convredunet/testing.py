"""Assertions for shift equivariance and invariance, for your models and ours.

>>> from convredunet.testing import assert_shift_equivariant
>>> assert_shift_equivariant(net.transform, X_test[:8], ndim=1)   # doctest: +SKIP
"""

import numpy as np

from .backend import to_numpy

__all__ = ["assert_shift_equivariant", "assert_shift_invariant", "all_shifts"]


def all_shifts(signal_shape):
    """Every cyclic shift of a signal of shape ``signal_shape``, as tuples (one per axis).

    The shifts of :func:`convredunet.datasets.all_shifts`, in its order, with a 1D
    shift ``s`` written ``(s,)``.
    """
    from .datasets import all_shifts as shifts

    return [s if isinstance(s, tuple) else (s,) for s in shifts(tuple(signal_shape))]


_as_numpy = to_numpy


def _roll(x, shift):
    nd = len(shift)
    return np.roll(x, shift, axis=tuple(range(-nd, 0)))


def _shifts(X, ndim, shifts):
    if ndim not in (1, 2):
        raise ValueError(f"ndim must be 1 or 2 (trailing signal axes), got {ndim!r}")
    signal_shape = np.shape(X)[-ndim:]
    if shifts is None:
        return all_shifts(signal_shape)
    return [tuple(np.atleast_1d(s).astype(int)) for s in shifts]


def assert_shift_equivariant(fn, X, ndim=1, shifts=None, rtol=1e-9, atol=1e-12):
    """Assert ``fn(roll(X, s)) == roll(fn(X), s)`` for every cyclic shift ``s``.

    Parameters
    ----------
    fn : callable
        Maps signals ``(m, ..., *signal_shape)`` to features whose last
        ``ndim`` axes are the same signal positions.
    X : array, shape (m, ..., *signal_shape)
    ndim : {1, 2}
        Number of trailing signal axes.
    shifts : list or None
        The shifts to try (ints in 1D, pairs in 2D); None tries all of them.
    rtol, atol : float
        Tolerance relative to the largest feature value, and absolute.

    Raises
    ------
    AssertionError
        Naming the first shift that breaks equivariance and the error.
    """
    X = _as_numpy(X)
    reference = _as_numpy(fn(X))
    scale = float(np.max(np.abs(reference))) or 1.0
    for shift in _shifts(X, ndim, shifts):
        got = _as_numpy(fn(_roll(X, shift)))
        expected = _roll(reference, shift)
        err = float(np.max(np.abs(got - expected)))
        if not err <= atol + rtol * scale:
            raise AssertionError(
                f"not shift-equivariant: shift {shift} changes the features by {err:.3g} "
                f"(tolerance {atol + rtol * scale:.3g})")


def assert_shift_invariant(fn, X, ndim=1, shifts=None):
    """Assert ``fn(roll(X, s)) == fn(X)`` exactly, for every cyclic shift ``s``.

    Meant for predictions (labels): they must not change at all.

    Raises
    ------
    AssertionError
        Naming the first shift that changes an output, and how many changed.
    """
    X = _as_numpy(X)
    reference = _as_numpy(fn(X))
    for shift in _shifts(X, ndim, shifts):
        got = _as_numpy(fn(_roll(X, shift)))
        changed = int(np.sum(got != reference))
        if changed:
            raise AssertionError(f"not shift-invariant: shift {shift} changes {changed} of "
                                 f"{reference.size} outputs")
