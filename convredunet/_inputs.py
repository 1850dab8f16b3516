"""Checks of input arrays at the public API boundary (features and labels).

The array's own backend converts it (:meth:`as_real_input`); shapes,
emptiness and finiteness are checked here for every library. Errors name the
argument, the value and the rule.
"""
import sys

import numpy as np

from .backend import get_backend

_NDIM_RULE = "2 (n_samples, n_features), 3 (n_samples, n_channels, T) or 4 (n_samples, n_channels, H, W)"


def is_dask(x):
    """True when ``x`` is a ``dask.array.Array`` (without importing dask)."""
    da = sys.modules.get("dask.array")
    return da is not None and isinstance(x, da.Array)


def _describe(x):
    return f"shape {tuple(x.shape)}"


def check_features(Z, name="Z", ndims=(2, 3, 4), shape_rule=None):
    """Validate a real feature array; returns it (never a modified input).

    The array's own library converts it (:meth:`as_real_input` of its
    backend: numbers to float64, complex, sparse and other types refused);
    shape and finiteness are checked here for every library. ``shape_rule``:
    the accepted shapes in words, for the message when ``Z.ndim`` is not in
    ``ndims`` (default: the numbers of dimensions).
    """
    Z = get_backend(Z).as_real_input(Z, name)
    if Z.ndim not in ndims:
        if shape_rule is not None:
            raise ValueError(f"{name} must have shape {shape_rule}, got shape "
                             f"{tuple(Z.shape)}. Reshape your data")
        raise ValueError(
            f"{name} must have {_NDIM_RULE if ndims == (2, 3, 4) else ' or '.join(map(str, ndims))}"
            f" dimensions, got {Z.ndim} ({_describe(Z)}). Reshape your data"
        )
    if Z.shape[0] == 0:
        raise ValueError(f"{name} is empty: found array with 0 sample(s) "
                         f"(shape={tuple(Z.shape)}) while a minimum of 1 is required.")
    if any(s == 0 for s in Z.shape[1:]):
        raise ValueError(f"{name} is empty: found array with 0 feature(s) "
                         f"(shape={tuple(Z.shape)}) while a minimum of 1 is required.")
    backend = get_backend(Z)
    if not backend.all_finite(Z):
        bad = np.argwhere(~backend.finite_mask(Z))
        raise ValueError(
            f"{name} must contain only finite values; found {len(bad)} NaN or infinite "
            f"entries (the first in sample {bad[0][0]})"
        )
    return Z


def check_labels(y, n_samples, Z=None, name="y", n_classes=None):
    """Validate labels ``0..k-1`` (every class present); returns (numpy int64 labels, k)."""
    y_backend = get_backend(y)
    if Z is not None and y_backend is get_backend(Z) and \
            str(y_backend.device(y)) != str(y_backend.device(Z)):
        raise ValueError(
            f"{name} is on device {y_backend.device(y)} but Z is on device "
            f"{y_backend.device(Z)}; put both on the same device"
        )
    y = y_backend.asnumpy(y)
    if y.dtype.kind == "c":
        raise TypeError(f"{name} must hold integer labels, got a complex array")
    if y.ndim != 1:
        raise ValueError(f"{name} must be a 1D array of labels, got shape {y.shape}")
    if len(y) != n_samples:
        raise ValueError(
            f"{name} must have one label per sample: Z has {n_samples} samples, "
            f"{name} has {len(y)}"
        )
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise ValueError(f"{name} must hold integer labels 0..k-1, got non-integer values")
        y = y.astype(np.int64)
    elif y.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer labels 0..k-1, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.min() < 0:
        raise ValueError(f"{name} must hold labels 0..k-1, got negative label {y.min()}")
    if n_classes is None and y.max() >= n_samples:
        # Every class must be present, so k <= m: refuse before counting k classes.
        raise ValueError(f"{name} has label {y.max()}, but with every class 0..k-1 present "
                         f"the largest label of {n_samples} samples is at most "
                         f"{n_samples - 1}")
    k = int(y.max()) + 1 if n_classes is None else n_classes
    if y.max() >= k:
        raise ValueError(f"{name} has label {y.max()} but n_classes={k}")
    counts = np.bincount(y, minlength=k)
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        raise ValueError(
            f"class {empty[0]} has no samples; {name} must use labels 0..{k - 1} with "
            f"every class present (k={k} inferred from the largest label)"
        )
    return y, k
