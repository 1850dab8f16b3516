"""Checks at the public API boundary; errors name the parameter, value and rule."""
import math
import numbers

import numpy as np

from .backend import get_backend, is_torch

_NDIM_RULE = "2 (n_samples, n_features), 3 (n_samples, n_channels, T) or 4 (n_samples, n_channels, H, W)"


def _describe(x):
    return f"shape {tuple(x.shape)}"


def check_features(Z, name="Z", ndims=(2, 3, 4)):
    """Validate a real feature array; returns it (never a modified input)."""
    if is_torch(Z):
        import torch

        if Z.is_complex():
            raise ValueError(f"Complex data not supported: {name} must be real, got a "
                             f"complex tensor of dtype {Z.dtype}")
        if Z.dtype not in (torch.float32, torch.float64):
            if Z.dtype.is_floating_point:
                raise TypeError(f"{name} must be float32 or float64, got {Z.dtype}")
            Z = Z.to(torch.float64)
    else:
        if hasattr(Z, "toarray") or type(Z).__module__.startswith("scipy.sparse"):
            raise TypeError(f"Sparse data is not supported: {name} must be a dense array "
                            f"(use {name}.toarray()), got {type(Z).__name__}")
        if not isinstance(Z, np.ndarray):
            try:
                Z = np.asarray(Z)
            except (TypeError, ValueError) as exc:
                raise TypeError(
                    f"{name} must be a numpy array or a torch tensor, got {type(Z).__name__}"
                ) from exc
        if np.iscomplexobj(Z):
            raise ValueError(f"Complex data not supported: {name} must be real, got complex "
                             f"dtype {Z.dtype}")
        if Z.dtype not in (np.float32, np.float64):
            if Z.dtype.kind in "biu":
                Z = Z.astype(np.float64)
            elif Z.dtype.kind == "O":
                try:
                    Z = Z.astype(np.float64)
                except (TypeError, ValueError) as exc:
                    raise TypeError(f"{name} must hold numbers, got an object array that is "
                                    f"not numeric ({exc})") from None
            else:
                raise TypeError(f"{name} must be a float32 or float64 array, got dtype {Z.dtype}")
    if Z.ndim not in ndims:
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
    finite = backend.asnumpy(_isfinite(Z))
    if not finite.all():
        bad = np.argwhere(~finite)
        raise ValueError(
            f"{name} must contain only finite values; found {len(bad)} NaN or infinite "
            f"entries (the first in sample {bad[0][0]})"
        )
    return Z


def _isfinite(Z):
    if is_torch(Z):
        import torch

        return torch.isfinite(Z)
    return np.isfinite(Z)


def check_labels(y, n_samples, Z=None, name="y", n_classes=None):
    """Validate labels ``0..k-1`` (every class present); returns (numpy int64 labels, k)."""
    if is_torch(y):
        if Z is not None and is_torch(Z) and y.device != Z.device:
            raise ValueError(
                f"{name} is on device {y.device} but Z is on device {Z.device}; "
                "put both on the same device"
            )
        if y.is_complex():
            raise TypeError(f"{name} must hold integer labels, got a complex tensor")
        y = y.detach().cpu().numpy()
    else:
        y = np.asarray(y)
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


def check_positive(value, name):
    """A positive finite real number (eps2, eta, ...)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive finite number, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    return value


def check_finite(value, name):
    """A finite real number."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a finite number or None, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number or None, got {value}")
    return value


def check_choice(value, name, choices):
    if value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {options}, got {value!r}")
    return value


def check_batch_size(batch_size, name="batch_size"):
    if batch_size is None:
        return None
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer or None, got {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"{name} must be a positive integer or None, got {batch_size}")
    return int(batch_size)
