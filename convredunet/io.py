"""Save and load fitted networks: one ``.npz`` file, no pickle.

The file holds a format version, every hyper-parameter, the classes, the
lifting kernels and, per layer, the half-spectrum operators (``stacked``:
``E`` over the dense ``C^j``; Woodbury factors for small classes) and
``gamma``. Loading reproduces ``transform`` bit for bit.
"""
import json
import os
import zipfile
from pathlib import Path

import numpy as np

from .network import Layer, Lifting

__all__ = ["save", "load", "FORMAT_VERSION"]

FORMAT_VERSION = 1
_MAGIC = "convredunet-model"


def _estimators():
    from .estimators import ReduNet1D, ReduNet2D, ReduNetVector

    return {cls.__name__: cls for cls in (ReduNet1D, ReduNet2D, ReduNetVector)}


def save(estimator, path):
    """Write a fitted estimator to ``path`` (a ``.npz`` file, written atomically).

    Raises
    ------
    sklearn.exceptions.NotFittedError
        When the estimator has not been fitted.
    TypeError
        When a hyper-parameter cannot be stored (e.g. a Generator as random_state).
    """
    from .backend import get_backend

    estimator._check_fitted()
    params = estimator.get_params()
    try:
        json.dumps(params)
    except TypeError as exc:
        raise TypeError(f"cannot save {type(estimator).__name__}: every parameter must be a "
                        f"number, string, bool or None ({exc}); use an int random_state") from None
    classes = np.asarray(estimator.classes_)
    if classes.dtype == object:
        classes = classes.astype(str)
    meta = {
        "magic": _MAGIC,
        "estimator": type(estimator).__name__,
        "params": params,
        "input_shape": list(estimator.input_shape_),
        "signal_shape": list(estimator.signal_shape_),
        "n_layers": len(estimator.layers_),
        "layers": [{"eta": layer.eta, "lmbda": layer.lmbda} for layer in estimator.layers_],
        "history": estimator.history_,
        "nonlinearity": None if estimator.lifting_ is None else estimator.lifting_.nonlinearity,
    }
    arrays = {"format_version": np.array(FORMAT_VERSION), "meta": np.array(json.dumps(meta)),
              "classes": classes}
    if estimator.lifting_ is not None:
        arrays["lifting/kernels"] = estimator.lifting_.kernels
        if estimator.lifting_.bias is not None:
            arrays["lifting/bias"] = estimator.lifting_.bias
    for index, layer in enumerate(estimator.layers_):
        for key, value in layer.to_arrays(get_backend(layer.stacked)).items():
            arrays[f"layer{index}/{key}"] = value
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _bad(path, why):
    return ValueError(f"model file '{path}' {why}")


def load(path):
    """Read a network written by :func:`save` (or ``estimator.save``).

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    ValueError
        When the file is truncated, corrupted, not a convredunet model, or of
        another format version; the message names the file and the problem.
    """
    from .backend import NumpyBackend

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file '{path}' does not exist")
    try:
        with np.load(path, allow_pickle=False) as handle:
            arrays = {key: handle[key] for key in handle.files}
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError) as exc:
        raise _bad(path, f"is not a readable convredunet model (truncated or corrupted: {exc})"
                   ) from None
    if "format_version" not in arrays or "meta" not in arrays:
        raise _bad(path, "is not a convredunet model (no format_version/meta entries)")
    version = int(arrays["format_version"])
    if version != FORMAT_VERSION:
        raise _bad(path, f"has format version {version}; this convredunet reads version "
                   f"{FORMAT_VERSION}")
    try:
        meta = json.loads(str(arrays["meta"]))
    except json.JSONDecodeError as exc:
        raise _bad(path, f"has an unreadable meta entry ({exc})") from None
    if not isinstance(meta, dict) or meta.get("magic") != _MAGIC:
        raise _bad(path, "is not a convredunet model (wrong magic)")
    classes_by_name = _estimators()
    if meta.get("estimator") not in classes_by_name:
        raise _bad(path, f"names an unknown estimator {meta.get('estimator')!r}")
    try:
        estimator = classes_by_name[meta["estimator"]](**meta["params"])
        estimator.classes_ = arrays["classes"]
        estimator.input_shape_ = tuple(meta["input_shape"])
        estimator.signal_shape_ = tuple(meta["signal_shape"])
        estimator.n_features_in_ = int(np.prod(estimator.input_shape_))
        estimator.history_ = meta["history"]
        estimator.lifting_ = None
        if "lifting/kernels" in arrays:
            estimator.lifting_ = Lifting(arrays["lifting/kernels"], meta["nonlinearity"],
                                         estimator.signal_shape_, arrays.get("lifting/bias"))
        backend = NumpyBackend()
        layers = []
        for index, info in enumerate(meta["layers"]):
            prefix = f"layer{index}/"
            layer_arrays = {key[len(prefix):]: value for key, value in arrays.items()
                            if key.startswith(prefix)}
            if "stacked" not in layer_arrays:
                raise KeyError(f"{prefix}stacked")
            layers.append(Layer.from_arrays(backend, layer_arrays, info["eta"], info["lmbda"],
                                            estimator.signal_shape_))
    except KeyError as exc:
        raise _bad(path, f"lacks the entry {exc}") from None
    except (TypeError, ValueError) as exc:
        raise _bad(path, f"holds inconsistent data ({exc})") from None
    if estimator.backend == "torch":
        backend_ = estimator._backend()
        like = estimator._like(backend_)
        layers = [layer.to(backend_, like) for layer in layers]
    estimator.layers_ = layers
    return estimator
