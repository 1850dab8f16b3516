"""scikit-learn style ReduNet classifiers: ``ReduNet1D``, ``ReduNet2D``, ``ReduNetVector``.

``__init__`` only stores hyper-parameters; ``fit`` validates, lifts the
training signals, then builds the layers one after the other in closed form
(SPEC.md, "One ReduNet layer"); learned attributes end in ``_``.
"""
import logging
import math
import numbers

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.exceptions import NotFittedError
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import column_or_1d

from ._threads import thread_limits
from ._validation import (check_batch_size, check_choice, check_features, check_finite,
                          check_positive)
from .backend import NumpyBackend, is_torch
from .network import Layer, Lifting, normalize
from .operators import spectral_solve

__all__ = ["ReduNet1D", "ReduNet2D", "ReduNetVector"]

log = logging.getLogger(__name__)

_NONLINEARITIES = ("relu", "abs", None)
_MEMBERSHIPS = ("estimated", "label")
_BACKENDS = ("numpy", "torch")
_DTYPES = ("float64", "float32")
# Bytes of features one chunk of samples may take in transform / predict.
_CHUNK_BYTES = 128 << 20


def _check_int(value, name, minimum, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        rule = f"an integer >= {minimum}" + (" or None" if allow_none else "")
        raise TypeError(f"{name} must be {rule}, got {value!r}")
    if value < minimum:
        rule = f"an integer >= {minimum}" + (" or None" if allow_none else "")
        raise ValueError(f"{name} must be {rule}, got {value}")
    return int(value)


class _ReduNet(ClassifierMixin, TransformerMixin, BaseEstimator):
    """Shared implementation; subclasses fix the signal dimension."""

    _signal_ndim = None  # 0 (vectors), 1 or 2

    # --- parameters ------------------------------------------------------------------
    def _validated_params(self):
        p = {
            "n_layers": _check_int(self.n_layers, "n_layers", 1),
            "eps2": check_positive(self.eps2, "eps2"),
            "eta": check_positive(self.eta, "eta"),
            "lmbda": check_positive(self.lmbda, "lmbda"),
            "membership": check_choice(self.membership, "membership", _MEMBERSHIPS),
            "backend": check_choice(self.backend, "backend", _BACKENDS),
            "dtype": check_choice(self.dtype, "dtype", _DTYPES),
            "batch_size": check_batch_size(self.batch_size),
        }
        if self._signal_ndim:
            p["n_channels"] = _check_int(self.n_channels, "n_channels", 1, allow_none=True)
            p["kernel_size"] = _check_int(self.kernel_size, "kernel_size", 1)
            p["nonlinearity"] = check_choice(self.nonlinearity, "nonlinearity",
                                             _NONLINEARITIES)
            if self.lifting_bias is not None:
                p["lifting_bias"] = check_finite(self.lifting_bias, "lifting_bias")
            else:
                p["lifting_bias"] = None
        device = getattr(self, "device", None)
        if p["backend"] == "numpy" and device not in (None, "cpu"):
            raise ValueError(f"device={device!r} needs backend='torch' (the numpy backend "
                             "runs on the CPU)")
        return p

    def _backend(self):
        if self.backend == "torch":
            from .backend import _torch

            return _torch()
        return NumpyBackend()

    def _like(self, backend):
        """A zero-size array of the working library, precision and device."""
        if backend.name == "torch":
            import torch

            device = getattr(self, "device", None) or "cpu"
            return torch.zeros(0, dtype=getattr(torch, self.dtype), device=device)
        return np.zeros(0, dtype=self.dtype)

    # --- input -------------------------------------------------------------------------
    def _check_X(self, X, name="X"):
        """Validate and reshape X to ``(m, C_in, *S)`` (vectors: ``(m, d)``)."""
        nd = self._signal_ndim
        ndims = (2,) if nd == 0 else (nd + 1, nd + 2)
        rules = {0: "(n_samples, n_features)",
                 1: "(n_samples, T) or (n_samples, n_channels, T)",
                 2: "(n_samples, H, W) or (n_samples, n_channels, H, W)"}
        try:
            X = check_features(X, name=name, ndims=ndims)
        except ValueError as exc:
            if "dimensions" in str(exc):
                shape = tuple(np.shape(X))
                raise ValueError(f"{name} must have shape {rules[nd]} for "
                                 f"{type(self).__name__}, got shape {shape}. Reshape your "
                                 "data") from None
            raise
        if nd and X.ndim == nd + 1:
            X = X[:, None]
        return X

    def _to_working(self, backend, like, X):
        """X in the working library, precision and device."""
        if is_torch(X):
            if backend.name == "torch":
                return X.to(dtype=like.dtype, device=like.device)
            return backend.astype(X.detach().cpu().numpy(), like=like)
        return backend.astype(X, like=like)

    def _output(self, backend, x, X_in):
        """``x`` in the library of the user's input ``X_in``."""
        if is_torch(X_in):
            import torch

            if backend.name == "torch":
                return x
            return torch.from_numpy(np.asarray(x))
        return backend.asnumpy(x)

    # --- fit ---------------------------------------------------------------------------
    def fit(self, X, y):
        """Build the network from labelled signals.

        Parameters
        ----------
        X : array, see the class docstring for its shape
        y : array, shape (n_samples,)
            Class labels (any sortable values; at least two classes).

        Returns
        -------
        self
        """
        params = self._validated_params()
        X = self._check_X(X)
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target "
                             "y is None")
        y_arr = np.asarray(y.detach().cpu().numpy() if is_torch(y) else y)
        if y_arr.ndim == 2 and y_arr.shape[1] == 1:
            y_arr = column_or_1d(y_arr, warn=True)
        if y_arr.ndim != 1:
            raise ValueError(f"y must be a 1D array of labels, got shape {y_arr.shape}")
        if len(y_arr) != X.shape[0]:
            raise ValueError(f"y must have one label per sample: X has {X.shape[0]} samples, "
                             f"y has {len(y_arr)}")
        if y_arr.dtype.kind == "f" and not np.all(np.isfinite(y_arr)):
            raise ValueError("y must not contain NaN or infinite labels")
        check_classification_targets(y_arr)
        classes, labels = np.unique(y_arr, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(f"y must hold at least 2 classes to build a classifier, got "
                             f"1 class ({classes[0]!r})")
        backend = self._backend()
        like = self._like(backend)
        sample_shape = tuple(X.shape[1:])
        signal_shape = sample_shape[1:] if self._signal_ndim else ()
        if self._signal_ndim:
            too_big = [n for n in signal_shape if params["kernel_size"] > n]
            if params["n_channels"] is not None and too_big:
                raise ValueError(f"kernel_size must be at most the signal size "
                                 f"{signal_shape}, got {params['kernel_size']}")

        self.classes_ = classes
        self.n_features_in_ = int(math.prod(sample_shape))
        self.input_shape_ = sample_shape
        self.signal_shape_ = signal_shape
        with thread_limits():
            X_work = self._to_working(backend, like, X)
            self.lifting_ = self._make_lifting(params, sample_shape)
            Z = self._lift(backend, X_work, params["batch_size"])
            self.layers_, self.history_ = [], []
            progress = _progress(params["n_layers"], self.verbose, type(self).__name__)
            for index in range(params["n_layers"]):
                solution = spectral_solve(backend, Z, labels, len(classes), params["eps2"],
                                          batch_size=params["batch_size"])
                layer = Layer(backend, solution, params["eta"], params["lmbda"],
                              signal_shape)
                Z, pi = self._apply_in_chunks(
                    backend, layer, Z,
                    labels if params["membership"] == "label" else None)
                accuracy = float(np.mean(backend.asnumpy(backend.argmax(pi, 1)) == labels))
                record = {"layer": index, "delta_R": solution.rates.delta,
                          "R": solution.rates.expansion, "R_c": solution.rates.compression,
                          "train_accuracy": accuracy}
                self.layers_.append(layer)
                self.history_.append(record)
                log.info("layer %d: delta_R=%.4f R=%.4f R_c=%.4f train_acc=%.4f", index,
                         record["delta_R"], record["R"], record["R_c"], accuracy)
                progress.update(1)
                progress.set_postfix(delta_R=f"{record['delta_R']:.3f}",
                                     acc=f"{accuracy:.3f}")
            progress.close()
        return self

    def _make_lifting(self, params, sample_shape):
        if not self._signal_ndim or params["n_channels"] is None:
            return None
        rng = np.random.default_rng(self.random_state)
        c_in = sample_shape[0]
        extra = 0 if params["lifting_bias"] is None else 1
        shape = (params["n_channels"], c_in + extra) + (params["kernel_size"],) * \
            self._signal_ndim
        kernels = rng.standard_normal(shape)
        bias = None
        if extra:
            # The kernel of a constant input channel of value lifting_bias: its
            # response is the constant lifting_bias * sum of its taps.
            taps = tuple(range(1, kernels.ndim - 1))
            bias = params["lifting_bias"] * kernels[:, c_in].sum(axis=taps)
        return Lifting(kernels[:, :c_in], params["nonlinearity"], sample_shape[1:], bias)

    def _lift(self, backend, X, batch_size):
        if self.lifting_ is None:
            return normalize(backend, X)
        size = batch_size or self._chunk(self.lifting_.kernels.shape[0], X)
        parts = [self.lifting_(backend, X[s:s + size]) for s in range(0, X.shape[0], size)]
        return parts[0] if len(parts) == 1 else backend.concat(parts)

    def _chunk(self, n_channels, X):
        per_sample = n_channels * max(1, math.prod(X.shape[2:] or (1,))) * 16 * 4
        return max(1, _CHUNK_BYTES // per_sample)

    def _apply_in_chunks(self, backend, layer, Z, labels):
        size = self.batch_size or self._chunk(Z.shape[1] if Z.ndim > 2 else 1, Z)
        outs, pis = [], []
        for s in range(0, Z.shape[0], size):
            z, pi = layer(backend, Z[s:s + size],
                          None if labels is None else labels[s:s + size])
            outs.append(z)
            pis.append(pi)
        if len(outs) == 1:
            return outs[0], pis[0]
        return backend.concat(outs), backend.concat(pis)

    # --- inference ---------------------------------------------------------------------
    def _check_fitted(self):
        if not hasattr(self, "layers_"):
            raise NotFittedError(f"This {type(self).__name__} instance is not fitted yet; "
                                 "call fit(X, y) first")

    def _forward(self, X, name="X"):
        """Features after the last layer and the last layer's membership."""
        self._check_fitted()
        X = self._check_X(X, name=name)
        if tuple(X.shape[1:]) != self.input_shape_:
            what = {0: "features", 1: "(channels, length)", 2: "(channels, H, W)"}
            raise ValueError(
                f"{name} has {math.prod(X.shape[1:])} features, but {type(self).__name__} is "
                f"expecting {self.n_features_in_} features as input: samples of shape "
                f"{tuple(X.shape[1:])} where the network was fitted on {self.input_shape_} "
                f"{what[self._signal_ndim]}; its operators are built for one signal size")
        backend = self._backend()
        like = self._like(backend)
        layers = self._layers_for(backend, like)
        size = self.batch_size or self._chunk(self.lifting_.kernels.shape[0]
                                              if self.lifting_ is not None
                                              else max(1, X.shape[1]), X)
        outs, pis = [], []
        with thread_limits():
            for s in range(0, X.shape[0], size):
                z = self._lift(backend, self._to_working(backend, like, X[s:s + size]),
                               None)
                pi = None
                for layer in layers:
                    z, pi = layer(backend, z)
                outs.append(z)
                pis.append(pi)
        Z = outs[0] if len(outs) == 1 else backend.concat(outs)
        P = pis[0] if len(pis) == 1 else backend.concat(pis)
        return self._output(backend, Z, X), backend.asnumpy(P)

    def _layers_for(self, backend, like):
        """The layers in the working library/precision/device (converted once, cached)."""
        first = self.layers_[0].stacked
        same = (backend.name == ("torch" if is_torch(first) else "numpy")
                and str(backend.device(first)) == str(backend.device(like))
                and backend.real_dtype(first) == backend.real_dtype(like))
        if same:
            return self.layers_
        return [layer.to(backend, like) for layer in self.layers_]

    def layer_features(self, X):
        """Features entering every layer and after the last: a list of ``n_layers + 1`` arrays.

        Holds every sample at every layer in memory: meant for analysis and
        figures on moderate sets (use :meth:`transform` for large ones).
        """
        self._check_fitted()
        X = self._check_X(X)
        backend = self._backend()
        like = self._like(backend)
        layers = self._layers_for(backend, like)
        with thread_limits():
            z = self._lift(backend, self._to_working(backend, like, X), self.batch_size)
            out = [self._output(backend, z, X)]
            for layer in layers:
                z, _ = self._apply_in_chunks(backend, layer, z, None)
                out.append(self._output(backend, z, X))
        return out

    def rate_history(self, X, y):
        """``RateReduction`` of labelled features entering every layer and after the last.

        Parameters
        ----------
        X : array, as for :meth:`transform`
        y : array (n_samples,), labels among ``classes_`` (every class present)

        Returns
        -------
        list of ``n_layers + 1`` :class:`convredunet.RateReduction`
        """
        from .operators import rate_reduction

        self._check_fitted()
        y = np.asarray(y)
        unknown = np.setdiff1d(np.unique(y), self.classes_)
        if len(unknown):
            raise ValueError(f"y holds labels the network was not fitted on: {unknown[:5]}")
        labels = np.searchsorted(self.classes_, y)
        return [rate_reduction(z, labels, eps2=self.eps2, batch_size=self.batch_size)
                for z in self.layer_features(X)]

    def transform(self, X):
        """Features after the last layer, shape ``(n_samples, C, *signal_shape)``.

        Vectors: ``(n_samples, d)``. Computed in batches of ``batch_size``.
        """
        return self._forward(X)[0]

    def transform_with_membership(self, X):
        """Features after the last layer and its membership ``pi``, in one pass.

        Returns
        -------
        Z : as :meth:`transform`
        pi : numpy array (n_samples, k), as :meth:`predict_proba`
        """
        return self._forward(X)

    def predict_proba(self, X):
        """The last layer's estimated membership ``pi``, shape ``(n_samples, k)``."""
        return self._forward(X)[1]

    def predict(self, X):
        """``argmax_j pi_j`` of the last layer, as the original class labels."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    def to_torch(self, dtype=None, kernel_size=None, conv="auto"):
        """Export to a ``torch.nn.Module`` of circular convolutions, run directly or by FFT.

        See :func:`convredunet.export.to_torch`; ``dtype`` defaults to
        ``torch.float32``, ``conv`` is ``"auto"``, ``"fft"`` or ``"direct"``.
        """
        import torch

        from .export import to_torch

        return to_torch(self, torch.float32 if dtype is None else dtype, kernel_size, conv)

    def save(self, path):
        """Write the fitted network to ``path`` (``.npz``, no pickle); see :func:`load`."""
        from .io import save

        save(self, path)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags


def _progress(total, verbose, name):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"{name} layers", unit="layer", disable=not verbose,
                leave=False)


class ReduNet1D(_ReduNet):
    """A ReduNet invariant to cyclic shifts of 1D multi-channel signals.

    Parameters
    ----------
    n_layers : int
        Layers to build.
    eps2 : float
        Squared precision epsilon^2 of the coding rates.
    eta : float
        Step size of each layer.
    lmbda : float
        Temperature of the estimated membership ``softmax(-lmbda ||C^j z||)``.
    n_channels : int or None
        Channels of the random lifting; None uses the input channels as they are.
    kernel_size : int
        Taps of each lifting kernel (centred).
    nonlinearity : {"relu", "abs", None}
        Applied after the lifting convolution.
    lifting_bias : float or None
        When set, the lifting sees one more input channel, constant and equal
        to ``lifting_bias``, with its own random kernel: each lifted channel
        gets the random bias ``lifting_bias * sum(taps)`` before ``sigma``.
        Constants are unchanged by shifts, so invariance is exact.
    membership : {"estimated", "label"}
        How the training features advance during construction: the
        estimated membership (as in the paper's experiments) or the true labels.
    random_state : int, numpy Generator or None
        Seeds the lifting kernels.
    backend : {"numpy", "torch"}
    device : str or None
        Torch device (``"cpu"``, ``"cuda"``) for ``backend="torch"``.
    dtype : {"float64", "float32"}
    batch_size : int or None
        Samples per chunk in construction and inference (bounds memory).
    verbose : bool
        Show a progress bar over the layers.

    Input ``X``: ``(n_samples, T)`` or ``(n_samples, C_in, T)``.

    The defaults are the configuration chosen by the MNIST-1D sweep
    (``bench/sweep_mnist1d.py``): 32 lifted channels, kernel 7, ``abs``,
    lifting bias 1.0, ``eps2=3e-4``, 12 layers; ``ReduNet1D(random_state=0)``
    reaches 0.856 test accuracy on MNIST-1D's default split (seeds 1 and 2:
    0.830, 0.854).
    """

    _signal_ndim = 1

    def __init__(self, n_layers=12, eps2=3e-4, eta=0.5, lmbda=500.0, n_channels=32,
                 kernel_size=7, nonlinearity="abs", lifting_bias=1.0, membership="estimated",
                 random_state=0, backend="numpy", device=None, dtype="float64",
                 batch_size=None, verbose=False):
        self.n_layers = n_layers
        self.eps2 = eps2
        self.eta = eta
        self.lmbda = lmbda
        self.n_channels = n_channels
        self.kernel_size = kernel_size
        self.nonlinearity = nonlinearity
        self.lifting_bias = lifting_bias
        self.membership = membership
        self.random_state = random_state
        self.backend = backend
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.verbose = verbose


class ReduNet2D(_ReduNet):
    """A ReduNet invariant to cyclic 2D shifts of multi-channel images.

    Parameters are those of :class:`ReduNet1D` (``kernel_size`` is the side of
    square kernels); defaults follow the paper's MNIST setting (75 channels,
    9x9 kernels, 25 layers). Input ``X``: ``(n_samples, H, W)`` or
    ``(n_samples, C_in, H, W)``.
    """

    _signal_ndim = 2

    def __init__(self, n_layers=25, eps2=0.1, eta=0.5, lmbda=500.0, n_channels=75,
                 kernel_size=9, nonlinearity="relu", lifting_bias=None, membership="estimated",
                 random_state=0, backend="numpy", device=None, dtype="float64",
                 batch_size=None, verbose=False):
        self.n_layers = n_layers
        self.eps2 = eps2
        self.eta = eta
        self.lmbda = lmbda
        self.n_channels = n_channels
        self.kernel_size = kernel_size
        self.nonlinearity = nonlinearity
        self.lifting_bias = lifting_bias
        self.membership = membership
        self.random_state = random_state
        self.backend = backend
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.verbose = verbose


class ReduNetVector(_ReduNet):
    """The plain (non-convolutional) ReduNet on vectors ``(n_samples, d)``.

    Parameters as in :class:`ReduNet1D`, without the lifting.
    """

    _signal_ndim = 0

    def __init__(self, n_layers=20, eps2=0.1, eta=0.5, lmbda=500.0, membership="estimated",
                 random_state=0, backend="numpy", device=None, dtype="float64",
                 batch_size=None, verbose=False):
        self.n_layers = n_layers
        self.eps2 = eps2
        self.eta = eta
        self.lmbda = lmbda
        self.membership = membership
        self.random_state = random_state
        self.backend = backend
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.verbose = verbose

