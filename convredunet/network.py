"""The pieces of a ReduNet: normalization, the lifting, and one layer.

Everything here runs on validated backend arrays of one precision; the
estimators in :mod:`convredunet.estimators` do the validation and batching.

Layout: a batch of samples is ``(b, C, *signal_shape)`` (vectors: ``(b, d)``);
inside a layer it becomes its unitary half spectrum ``(F, C, b)``
(:func:`convredunet.spectral.spectrum`), frequency first, so that every
operator is applied by one batched matrix product over all frequencies.
"""
import dataclasses
import math
import threading

import numpy as np

from . import _parallel, spectral
from .backend import get_backend, resolve, workspace_of

# Guards the per-layer caches of constants (layers are shared between threads).
_CONSTANTS_LOCK = threading.Lock()
# Samples whose norm is below this are left as they are by normalize().
_TINY = 1e-30


def normalize(backend, z):
    """Scale every sample of ``z`` ``(b, ...)`` to unit Frobenius norm.

    Each sample is first scaled by a power of two that brings its largest
    entry into ``[0.5, 1)``: exact, so the result rounds as the plain
    ``z / ||z||`` would, but the sum of squares can neither overflow nor
    underflow, whatever the scale of ``z``. All-zero samples stay zero.
    """
    b = z.shape[0]
    flat = backend.reshape(z, (b, -1))
    flat = flat * backend.reshape(backend.pow2_scale(backend.max_abs_rows(flat)), (b, 1))
    sq = backend.abs2(flat).sum(1)
    norms = backend.maximum(backend.sqrt(sq), _TINY)
    return backend.reshape(flat / backend.reshape(norms, (b, 1)), tuple(z.shape))


def normalize_spectrum(backend, v, weights, inplace=False):
    """Scale every sample of a half spectrum ``v`` ``(F, C, b)`` to unit norm (Parseval).

    ``||z||^2 = sum_p w_p ||v(p)||^2`` with the half-spectrum ``weights``
    ``(F,)``. Squares are summed as they are when every sample's largest real
    or imaginary part lies within a quarter of the precision's exponent range
    (``2^-256 .. 2^256`` in float64, ``2^-32 .. 2^32`` in float32); otherwise, as in
    :func:`normalize`, each sample is first scaled by the power of two that
    brings that part into ``[0.5, 1)``, so squares neither overflow nor
    underflow. All-zero samples stay zero. ``inplace``: ``v`` is a work array
    the result may overwrite.
    """
    peak = backend.max_abs_columns(v)  # (b,)
    bound = 2.0 ** (backend.max_exponent(peak) // 4)
    safe = backend.to_float(peak.max()) < bound and \
        backend.to_float(backend.where(peak > 0, peak, 1.0).min()) > 1 / bound
    if not safe:
        scale = backend.as_dtype_of(backend.pow2_scale(peak), v)[None, None, :]
        if inplace:
            v *= scale
        else:
            v, inplace = v * scale, True
    sq = backend.einsum("f,fb->b", weights, backend.channel_sq_norms(v))
    factor = backend.as_dtype_of(1.0 / backend.maximum(backend.sqrt(sq), _TINY), v)
    if inplace:
        v *= factor[None, None, :]
        return v
    return v * factor[None, None, :]


def rescale_samples(x, limit=None):
    """Each sample of ``x`` (numpy or torch, ``(b, ...)``) times a power of two.

    Returns ``(x * scale, scale)``: the power brings each sample's largest
    entry into ``[0.5, 1)``. Scaling by a power of two is exact, and the
    network undoes it (:meth:`Network.forward` takes the scale: the lifting's
    bias is scaled along and the features are normalized), so no result
    changes, while finite inputs of any scale pass a cast to float32 without
    overflow or underflow. ``limit`` caps ``|log2 scale|``: half the working
    precision's exponent range keeps both ``x * scale`` and the lifting's
    ``bias * scale`` inside it.
    """
    backend = get_backend(x)
    b = x.shape[0]
    scale = backend.pow2_scale(backend.max_abs_rows(backend.reshape(x, (b, -1))), limit)
    return x * backend.reshape(scale, (b,) + (1,) * (x.ndim - 1)), scale


def _nonlinearity(backend, name, z):
    """``sigma(z)`` in place (``z`` is a fresh work array)."""
    if name is None:
        return z
    if name == "relu":
        return backend.relu_(z)
    if name == "abs":
        return backend.abs_(z)
    raise ValueError(f"nonlinearity must be 'relu', 'abs' or None, got {name!r}")


#: ``n_channels="auto"``: lifted features per sample (channels x positions) at most this
#: many, as a power of two of channels between AUTO_CHANNELS_MIN and AUTO_CHANNELS_MAX.
AUTO_FEATURES = 1 << 17
AUTO_CHANNELS_MAX = 256
AUTO_CHANNELS_MIN = 32


def lifting_channels(n_channels, signal_shape):
    """The lifted channels for a signal size: ``n_channels`` itself, or the ``"auto"`` rule.

    ``"auto"``: the largest power of two ``C <= 256`` with ``C * prod(signal_shape) <=
    AUTO_FEATURES`` (``2^17``), at least 32. Fit and predict cost and the model's
    size grow with the lifted features per sample, so long signals get fewer
    channels: 256 up to 512 positions, 64 for 1,460.
    """
    if n_channels != "auto":
        return n_channels
    size = max(1, math.prod(signal_shape))
    fitting = 2 ** max(0, int(math.floor(math.log2(max(1, AUTO_FEATURES // size)))))
    return int(min(AUTO_CHANNELS_MAX, max(AUTO_CHANNELS_MIN, fitting)))


def lifting_geometry(kernel_size, dilations, n_channels, signal_shape):
    """The lifting's taps per axis and each output channel's dilation, for a signal size.

    The one place these rules live (the estimators' fit, the Dask fit and the
    model files use it).

    Parameters
    ----------
    kernel_size : int
        Taps per axis asked for; a signal shorter than that gets kernels of its
        own size (every offset once), so the defaults fit small inputs.
    dilations : None, "auto" or sorted list of ints
        None: 1 everywhere. ``"auto"``: 1, 2, 4, ... up to the largest ``d``
        with ``d (K - 1) < min(signal_shape)`` (one dilation when ``K = 1``).
    n_channels : int
        Output channels, split into runs of equal dilation, as evenly as they
        go (the first runs take one more channel), smallest dilation first.
    signal_shape : tuple

    Returns
    -------
    kernel_size : int
    dilations : numpy int array (n_channels,) or None

    Raises
    ------
    ValueError
        When a listed dilation sends the taps around the signal more than once
        (``d (K - 1) >= min(signal_shape)``), or there are more dilations than channels.
    """
    size = min(signal_shape)
    k = min(int(kernel_size), size)
    largest = (size - 1) // (k - 1) if k > 1 else 1
    if dilations is None:
        return k, None
    if isinstance(dilations, str):  # "auto"
        values = [2 ** i for i in range(int(math.log2(largest)) + 1)]
    else:
        values = list(dilations)
        if max(values) > largest:
            raise ValueError(f"dilations must be at most {largest} for kernels of {k} taps "
                             f"on signals of size {tuple(signal_shape)} (d (kernel_size - 1) "
                             f"< {size}: the taps fit in the signal once), got {values}")
    if len(values) > n_channels:
        raise ValueError(f"dilations must not outnumber the {n_channels} lifted channels "
                         f"(n_channels), got {len(values)} dilations {values}")
    if values == [1]:
        return k, None
    counts = [n_channels // len(values) + (i < n_channels % len(values))
              for i in range(len(values))]
    return k, np.repeat(np.asarray(values, dtype=np.int64), counts)


class Lifting:
    """``z = normalize(sigma(K (*) x + b))``: random circular convolution, then ``sigma``.

    Parameters
    ----------
    kernels : numpy array, shape (C, C_in, *kernel_shape)
        Tap ``r`` of a kernel axis of size ``K`` sits at offset
        ``d (r - (K - 1) // 2)`` (the kernel is centred; ``d`` its channel's
        dilation), so
        ``(K (*) x)_c[t] = sum_c' sum_r K[c, c', r] x_c'[t - d_c (r - (K-1)//2)]``.
    nonlinearity : {"relu", "abs", None}
    signal_shape : tuple, ``(T,)`` or ``(H, W)``
    bias : numpy array (C,) or None
        Added to every position of each lifted channel before ``sigma``; a
        constant is unchanged by shifts, so equivariance is kept.
    dilations : numpy int array (C,) or None
        Spacing of each output channel's taps (the same on every axis), in
        non-decreasing order; None: 1 for every channel. A dilated kernel is
        still a circular convolution (with a sparse kernel of span
        ``d (K - 1) + 1``), so invariance is exact.
    """

    def __init__(self, kernels, nonlinearity, signal_shape, bias=None, dilations=None):
        self.kernels = np.asarray(kernels)
        self.nonlinearity = nonlinearity
        self.signal_shape = tuple(signal_shape)
        self.bias = None if bias is None else np.asarray(bias, dtype=np.float64)
        self.dilations = None if dilations is None else np.asarray(dilations, dtype=np.int64)
        self._hat = {}

    def groups(self):
        """``(dilation, channel slice)`` per run of equal dilations, in channel order."""
        c_out = self.kernels.shape[0]
        if self.dilations is None:
            return [(1, slice(0, c_out))]
        starts = [0] + [i for i in range(1, c_out) if self.dilations[i] != self.dilations[i - 1]]
        ends = starts[1:] + [c_out]
        return [(int(self.dilations[a]), slice(a, b)) for a, b in zip(starts, ends)]

    def full_kernels(self):
        """The kernels zero-padded to the signal size, ``(C, C_in, *signal_shape)``.

        Taps that a dilation sends around the signal more than once add up.
        """
        c_out, c_in = self.kernels.shape[:2]
        full = np.zeros((c_out, c_in) + self.signal_shape, dtype=self.kernels.dtype)
        offsets = [np.arange(k) - (k - 1) // 2 for k in self.kernels.shape[2:]]
        for dilation, channels in self.groups():
            index = np.ix_(*[(dilation * o) % n for o, n in zip(offsets, self.signal_shape)])
            if dilation == 1 or all(len(np.unique(i)) == len(i) for i in index):
                full[(channels, slice(None)) + index] = self.kernels[channels]
            else:
                np.add.at(full, (channels, slice(None)) + index, self.kernels[channels])
        return full

    def kernel_hat(self, backend, like):
        """Unnormalized DFT of the full kernels, ``(F, C, C_in)``, cached per dtype/device."""
        key = (backend.name, str(like.dtype), str(backend.device(like)))
        if key not in self._hat:
            full = backend.astype(self.full_kernels(), like=like)
            hat = backend.rfft(full, len(self.signal_shape)) * math.sqrt(
                math.prod(self.signal_shape))
            c_out, c_in = self.kernels.shape[:2]
            self._hat[key] = backend.contiguous(
                backend.permute(backend.reshape(hat, (c_out, c_in, -1)), (2, 0, 1)))
        return self._hat[key]

    def bytes_per_sample(self, itemsize):
        """Bytes of work arrays one sample takes in :meth:`__call__` (real ``itemsize``)."""
        c_out, c_in = self.kernels.shape[:2]
        n = math.prod(self.signal_shape)
        return (c_out + c_in) * (n // 2 + 1) * 2 * itemsize * 2 + 2 * c_out * n * itemsize

    def __call__(self, backend, x, scale=None):
        """Lift ``x`` ``(b, C_in, *S)`` to unit-norm features ``(b, C, *S)``.

        ``scale`` ``(b,)``: ``x`` was already multiplied by these powers of two
        (see :func:`rescale_samples`); the bias is scaled along. Without it,
        every sample is scaled here by the power of two that brings its
        largest entry into ``[0.5, 1)``. ``sigma`` is positively homogeneous
        and the output is normalized, so the features equal those of
        ``sigma(K (*) x + b)`` bit for bit (the scaling is exact), while
        inputs of any finite scale neither overflow nor underflow.
        """
        return normalize(backend, self.response(backend, x, scale))

    def response(self, backend, x, scale=None):
        """``sigma(K (*) x + b)`` before normalization, ``(b, C, *S)``: see :meth:`__call__`."""
        b = x.shape[0]
        lead = (b,) + (1,) * (x.ndim - 1)
        if scale is None:
            x, scale = rescale_samples(x)
        v = spectral.spectrum(backend, x, self.signal_shape)
        z = spectral.inverse_spectrum(backend, self.kernel_hat(backend, x) @ v,
                                      self.signal_shape)
        if self.bias is not None:
            shape = (1, -1) + (1,) * len(self.signal_shape)
            z += backend.reshape(backend.astype(self.bias, like=z), shape) * \
                backend.reshape(scale, lead)
        return _nonlinearity(backend, self.nonlinearity, z)

    def spectrum(self, backend, x, scale=None, out=None):
        """The unitary half spectra ``(F, C, b)`` of :meth:`__call__`'s features.

        Normalized in the frequency domain (Parseval), one FFT after ``sigma``;
        written into ``out`` when given.
        """
        v = spectral.spectrum(backend, self.response(backend, x, scale), self.signal_shape,
                              out)
        weights = backend.astype(spectral.half_spectrum_weights(self.signal_shape), like=v.real)
        return normalize_spectrum(backend, v, weights, inplace=True)


class Layer:
    """One ReduNet layer: ``z+ = normalize(z + eta (E z - sum_j gamma_j pi_j C^j z))``.

    Stores the engine's :class:`convredunet.spectral.LayerSolution` as it
    comes (each operator once, in the layout it is applied in) and applies it;
    it decides nothing about storage.

    Parameters
    ----------
    solution : convredunet.spectral.LayerSolution
        The engine's output for the features entering this layer.
    eta, lmbda : float
        Step size and membership temperature.
    signal_shape : tuple
    """

    def __init__(self, backend, solution, eta, lmbda, signal_shape):
        self.solution = solution
        self.eta = float(eta)
        self.lmbda = float(lmbda)
        self.signal_shape = tuple(signal_shape)
        self._prepare()

    # The solution's fields, read-only.
    gamma = property(lambda self: self.solution.gamma)
    rates = property(lambda self: self.solution.rates)
    stacked = property(lambda self: self.solution.stacked)
    dense_classes = property(lambda self: list(self.solution.dense_classes))
    lowrank_classes = property(lambda self: list(self.solution.lowrank_classes))
    M_inv = property(lambda self: self.solution.M_inv)
    alphas = property(lambda self: self.solution.alphas)

    @classmethod
    def from_arrays(cls, backend, arrays, eta, lmbda, signal_shape, rates=None):
        """Rebuild a layer from :meth:`to_arrays` (backend arrays or numpy).

        ``V`` is given per class, ``(F, g, C, w)`` (the file layout).
        """
        lowrank = tuple(int(j) for j in arrays["lowrank_classes"])
        v = m_inv = None
        if lowrank:
            f, g, c, w = arrays["V"].shape
            v = backend.contiguous(backend.reshape(
                backend.permute(arrays["V"], (0, 2, 1, 3)), (f, c, g * w)))
            m_inv = arrays["M_inv"]
        solution = spectral.LayerSolution(
            rates=rates, gamma=np.asarray(arrays["gamma"], dtype=np.float64),
            stacked=arrays.get("stacked"),
            dense_classes=tuple(int(j) for j in arrays["dense_classes"]),
            lowrank_classes=lowrank, V=v, M_inv=m_inv,
            alphas=np.asarray(arrays.get("alphas", np.zeros(0)), dtype=np.float64),
            E_M_inv=arrays.get("E_M_inv"),
            alpha_E=float(arrays.get("alpha_E", 0.0)))
        return cls(backend, solution, eta, lmbda, signal_shape)

    def to_arrays(self, backend):
        """The layer's numbers as numpy arrays (for saving); ``V`` as ``(F, g, C, w)``."""
        out = {
            "gamma": self.gamma,
            "dense_classes": np.asarray(self.dense_classes, dtype=np.int64),
            "lowrank_classes": np.asarray(self.lowrank_classes, dtype=np.int64),
            "alphas": self.alphas,
        }
        if self.stacked is not None:
            out["stacked"] = backend.asnumpy(self.stacked)
        if self.lowrank_classes:
            out["V"] = backend.asnumpy(self.solution.lowrank_blocks(backend))
            out["M_inv"] = backend.asnumpy(self.M_inv)
        if self.solution.e_lowrank:
            out["E_M_inv"] = backend.asnumpy(self.solution.E_M_inv)
            out["alpha_E"] = np.asarray(self.solution.alpha_E, dtype=np.float64)
        return out

    def to(self, source, workspace):
        """The same layer with its arrays in ``workspace`` (from ``source``'s backend)."""
        backend = workspace.backend
        convert = (lambda x: None if x is None else backend.astype_complex(
            source.asnumpy(x), like=workspace.like)) if self.signal_shape else \
            (lambda x: None if x is None else backend.astype(source.asnumpy(x),
                                                              like=workspace.like))
        solution = dataclasses.replace(self.solution, stacked=convert(self.stacked),
                                       V=convert(self.solution.V), M_inv=convert(self.M_inv),
                                       E_M_inv=convert(self.solution.E_M_inv))
        return Layer(backend, solution, self.eta, self.lmbda, self.signal_shape)

    def _prepare(self):
        self.n_classes = len(self.gamma)
        self.n_channels = self.solution.n_channels
        self.n_freqs = self.solution.n_freqs
        order = self.dense_classes + self.lowrank_classes
        self._order = np.argsort(order)  # class j sits at position _order[j]
        self._identity_order = list(order) == list(range(self.n_classes))
        self._constants = {}
        self._sorted = np.asarray(order)  # sorted position i holds class _sorted[i]

    def bytes_per_sample(self, itemsize):
        """Bytes of work arrays one sample takes inside :meth:`__call__` (real ``itemsize``)."""
        g, w = len(self.lowrank_classes), self.solution.width
        rows = 0 if self.stacked is None else self.stacked.shape[1]
        extra = g * w if self.solution.e_lowrank else 0
        rows += 3 * self.n_channels + 4 * g * w + 2 * extra
        return self.n_freqs * rows * 2 * itemsize

    def constants(self, backend, like):
        """Small per-layer arrays on ``like``'s device and precision, made once.

        Keeps host-to-device copies out of every application of the layer.
        """
        key = (backend.name, str(backend.real_dtype(like)), str(backend.device(like)))
        consts = self._constants.get(key)
        if consts is None:
            real = backend.zeros((0,), like=like.real)
            consts = {
                "gamma": backend.astype(self.gamma, like=real),
                "alphas": backend.astype(self.alphas.reshape(1, -1, 1, 1), like=real),
                "weights": backend.astype(spectral.half_spectrum_weights(self.signal_shape),
                                          like=real),
                "order": backend.from_numpy(self._order, like=like),
                "sorted": backend.from_numpy(self._sorted, like=like),
                "eye": backend.astype(np.eye(self.n_classes), like=real),
            }
            with _CONSTANTS_LOCK:
                consts = self._constants.setdefault(key, consts)
        return consts

    # --- application -----------------------------------------------------------
    def operators_hat(self, backend):
        """Dense ``E_hat`` ``(F, C, C)`` and ``C_hat`` ``(k, F, C, C)``."""
        return self.solution.dense_operators(backend)

    def __call__(self, backend, z, labels=None):
        """Apply the layer to ``z`` ``(b, C, *S)``.

        Parameters
        ----------
        labels : numpy int array (b,) or None
            With labels, ``pi`` is their one-hot encoding (construction with
            ``membership="label"``); otherwise it is estimated.

        Returns
        -------
        z_next : array (b, C, *S), unit norm per sample
        pi : array (b, k), the estimated membership (even when labels are given)

        Notes
        -----
        Dense operators: ``E v`` and ``C^j v`` come from the stacked product and
        their norms are taken directly. Low-rank classes never form ``C^j v``
        (that would be a ``(F, k, C, b)`` array): with ``p = V^H v``,
        ``q = M^-1 p``, ``C^j v = alpha (v - alpha V q)``, so
        ``||C^j v||^2 = alpha^2 sum_p w_p (|v|^2 - 2 alpha Re p^H q + alpha^2 q^H (V^H V) q)``,
        where ``M q = p`` (``M = I + alpha V^H V``) turns the last two terms into
        ``- alpha (Re p^H q + |q|^2)``: no ``V^H V`` is stored or formed; and
        ``sum_j g_j C^j v = (sum_j g_j alpha_j) v - V (alpha^2 g q)``. A low-rank
        ``E`` shares ``p``: ``E v = alpha_E (v - alpha_E V q_E)``,
        ``q_E = M_E^-1 p``, so the whole step takes one product with ``V^H``
        and one with ``V``.
        """
        v, pi = self.apply_spectrum(backend, spectral.spectrum(backend, z, self.signal_shape),
                                    labels)
        return spectral.inverse_spectrum(backend, v, self.signal_shape), pi

    def apply_spectrum(self, backend, v, labels=None, vh_v=None, columns=None):
        """:meth:`__call__` in the frequency domain: ``(F, C, b)`` half spectra in and out.

        The output is normalized by Parseval (:func:`normalize_spectrum`); the
        features never go back to the signal domain. ``vh_v``: ``V^H v``
        ``(F, g w, b)`` when already known (the fit's training samples, from
        the solve's Gram matrix), so that product is not formed again.
        ``columns``: with ``vh_v``, where each sample of ``v`` sits among
        ``V``'s columns (``v`` is those columns): the whole step is then one
        product with ``V``.
        """
        consts = self.constants(backend, v)
        slices = _frequency_slices(backend, v)
        # Phase 1, per frequency: responses and each frequency's share of ||C^j z||^2.
        parts = _map(lambda fs: self._responses(backend, v, fs, consts, vh_v), slices)
        sq = parts[0][1]
        for _, more in parts[1:]:
            sq = sq + more
        if not self._identity_order:
            sq = sq[consts["order"]]  # (k, b) in class order
        norms = backend.sqrt(backend.maximum(sq, 0.0))
        pi = backend.permute(backend.softmin(norms, self.lmbda, axis=0), (1, 0))  # (b, k)

        weight = pi
        if labels is not None:
            weight = consts["eye"][backend.from_numpy(labels, like=pi)]
        weight = backend.permute(weight * consts["gamma"], (1, 0))  # (k, b)
        if not self._identity_order:
            weight = weight[consts["sorted"]]  # rows in dense-then-low-rank order
        # Phase 2, per frequency: the step z + eta (E z - sum_j gamma_j pi_j C^j z).
        steps = _map(lambda item: self._step(backend, v, item[0], item[1][0], weight, consts,
                                             columns),
                     list(zip(slices, parts)))
        step = steps[0] if len(steps) == 1 else backend.concat(steps, axis=0)
        return normalize_spectrum(backend, step, consts["weights"], inplace=True), pi

    def _responses(self, backend, v, fs, consts, vh_v=None):
        """Products for the frequencies ``fs``; returns (state, partial squared norms (k, b))."""
        v = v[fs]
        f, c, b = v.shape
        freq_weights = consts["weights"][fs]
        solution = self.solution
        kd = len(self.dense_classes)
        state = {}
        sq = []
        if self.stacked is not None:
            w = self.stacked[fs] @ v
            rows = 0 if solution.e_lowrank else c
            if not solution.e_lowrank:
                state["u"] = w[:, :c]
            if kd:
                state["dense"] = backend.reshape(w[:, rows:], (f, kd, c, b))
                sq.append(backend.class_sq_norms(state["dense"], freq_weights))
        if self.lowrank_classes:
            g, width = self.M_inv.shape[1], self.M_inv.shape[-1]
            alpha = consts["alphas"][0, :, 0]  # (g, 1)
            # V_j^H v for every class at once: one (g*w x C) product per frequency.
            p = backend.hmatmul(solution.V[fs], v) if vh_v is None else vh_v[fs]  # (F, g w, b)
            q = self.M_inv[fs] @ backend.reshape(p, (f, g, width, b))  # (F, g, w, b)
            vv = backend.channel_sq_norms(v)  # (F, b)
            pq = (backend.reshape(p, (f, g, width, b)).conj() * q).real.sum(2)  # (F, g, b)
            qq = backend.abs2(q).sum(2)
            # M q = p with M = I + alpha V^H V, so alpha^2 q^H V^H V q = alpha (p^H q - |q|^2).
            inner = vv[:, None] - alpha * (pq + qq)
            sq.append(alpha * alpha * backend.einsum("f,fgb->gb", freq_weights, inner))
            state["q"] = q
            if solution.e_lowrank:
                state["q_E"] = solution.E_M_inv[fs] @ p  # (F, g w, b)
        return state, (sq[0] if len(sq) == 1 else backend.concat(sq, axis=0))

    def _step(self, backend, v, fs, state, weight, consts, columns=None):
        """``v + eta (E v - sum_j weight_j C^j v)`` for the frequencies ``fs``.

        ``columns``: ``v`` is ``V[:, :, columns]``, so ``v`` itself is ``V``
        times a selection and the step is ``V`` times one small matrix.
        """
        v = v[fs]
        f, c, b = v.shape
        solution = self.solution
        kd = len(self.dense_classes)
        # E v - sum_j weight_j C^j v = coef v + direct + V back.
        direct = state.get("u")
        coef = back = None
        if kd:
            dense = state["dense"]
            compress = backend.einsum("fkcb,kb->fcb", dense,
                                      backend.as_dtype_of(weight[:kd], dense))
            direct = -compress if direct is None else direct - compress
        if self.lowrank_classes:
            g, width = self.M_inv.shape[1], self.M_inv.shape[-1]
            alpha = consts["alphas"][0, :, 0]
            gw = weight[kd:]  # (g, b)
            coef = -(alpha * gw).sum(0)  # (b,)
            back = backend.reshape(state["q"] * (alpha * alpha * gw)[None, :, None, :],
                                   (f, g * width, b))
            if solution.e_lowrank:
                coef = coef + solution.alpha_E
                back = back - (solution.alpha_E ** 2) * state["q_E"]
        if coef is None:
            return v + self.eta * direct
        if columns is not None and direct is None:
            back = back * self.eta
            diagonal = 1.0 + self.eta * coef
            index = backend.from_numpy(np.arange(b), like=coef)
            back[:, backend.from_numpy(np.asarray(columns), like=coef), index] += \
                backend.as_dtype_of(diagonal, back)[None, :]
            return solution.V[fs] @ back
        # Work arrays of the batch's size: the product, then in-place updates.
        out = solution.V[fs] @ back
        out *= self.eta
        out += v * (1.0 + self.eta * coef)[None, None, :]
        if direct is not None:
            out += self.eta * direct
        return out


def _frequency_slices(backend, v):
    """Frequency slices of ``v`` ``(F, C, b)`` for the threads (one when small)."""
    return _parallel.batch_slices(backend, v.shape[0], math.prod(v.shape))


_map = _parallel.pmap


def array_chunks(X, size):
    """``X[s:s + size]`` for consecutive ``s``: the in-memory chunk source.

    Any iterable of sample blocks can stand in its place in
    :meth:`Network.stream` (a reader of files, the blocks of a Dask array).
    """
    for start in range(0, X.shape[0], size):
        yield X[start:start + size]


class Network:
    """A fitted ReduNet: the lifting and the layers, and the forward pass.

    Parameters
    ----------
    lifting : Lifting or None
        None for vectors, or for signals used with their own channels.
    layers : list of Layer
    input_shape : tuple
        One sample's shape, ``(C_in, *signal_shape)`` or ``(d,)``.
    workspace : convredunet.backend.Workspace
        Where the layers' arrays live (library, precision, device).

    Notes
    -----
    Samples flow through in chunks (:meth:`chunk_size` bounds their work
    arrays by the one budget :data:`convredunet.spectral.CHUNK_BYTES`);
    :meth:`forward` is one chunk, :meth:`stream` any source of chunks.
    """

    def __init__(self, lifting, layers, input_shape, workspace):
        self.lifting = lifting
        self.layers = list(layers)
        self.input_shape = tuple(input_shape)
        self.workspace = workspace

    @property
    def signal_shape(self):
        return self.input_shape[1:]

    @property
    def n_channels(self):
        """Channels of the features (after the lifting)."""
        if self.layers:
            return self.layers[0].n_channels
        return self.lifting.kernels.shape[0] if self.lifting is not None else \
            self.input_shape[0]

    @property
    def feature_shape(self):
        """One sample's feature shape, ``(C, *signal_shape)`` or ``(d,)``."""
        return (self.n_channels,) + tuple(self.signal_shape)

    def __len__(self):
        return len(self.layers)

    # --- placement -------------------------------------------------------------------
    def to(self, workspace):
        """The network with its layers in ``workspace`` (``self`` when already there)."""
        if workspace.key == self.workspace.key:
            return self
        source = self.workspace.backend
        layers = [layer.to(source, workspace) for layer in self.layers]
        return Network(self.lifting, layers, self.input_shape, workspace)

    def to_arrays(self):
        """Every number as numpy arrays, keyed as in the model file.

        ``lifting/kernels``, ``lifting/bias`` and ``layer{i}/...`` (see
        :meth:`Layer.to_arrays`).
        """
        out = {}
        if self.lifting is not None:
            out["lifting/kernels"] = self.lifting.kernels
            if self.lifting.bias is not None:
                out["lifting/bias"] = self.lifting.bias
            if self.lifting.dilations is not None:
                out["lifting/dilations"] = self.lifting.dilations
        backend = self.workspace.backend
        for index, layer in enumerate(self.layers):
            for key, value in layer.to_arrays(backend).items():
                out[f"layer{index}/{key}"] = value
        return out

    @classmethod
    def from_arrays(cls, arrays, input_shape, nonlinearity, steps, workspace):
        """Rebuild from :meth:`to_arrays`.

        Parameters
        ----------
        arrays : dict of numpy arrays
        input_shape : tuple
        nonlinearity : str or None
            The lifting's.
        steps : list of (eta, lmbda), one per layer
        workspace : convredunet.backend.Workspace
        """
        input_shape = tuple(input_shape)
        lifting = None
        if "lifting/kernels" in arrays:
            lifting = Lifting(arrays["lifting/kernels"], nonlinearity, input_shape[1:],
                              arrays.get("lifting/bias"), arrays.get("lifting/dilations"))
        first = arrays.get("layer0/stacked")
        numpy_ws = workspace_of(first) if first is not None else resolve("numpy")
        layers = []
        for index, (eta, lmbda) in enumerate(steps):
            prefix = f"layer{index}/"
            layer_arrays = {key[len(prefix):]: value for key, value in arrays.items()
                            if key.startswith(prefix)}
            layers.append(Layer.from_arrays(numpy_ws.backend, layer_arrays, eta, lmbda,
                                            input_shape[1:]))
        return cls(lifting, layers, input_shape, numpy_ws).to(workspace)

    # --- forward pass ----------------------------------------------------------------
    def operator_bytes(self):
        """Bytes of every layer's stored operators."""
        backend = self.workspace.backend
        total = 0
        for layer in self.layers:
            solution = layer.solution
            for x in (solution.stacked, solution.V, solution.M_inv, solution.E_M_inv):
                if x is not None:
                    total += math.prod(x.shape) * backend.itemsize(x)
        return total

    def chunk_size(self, batch_size=None, itemsize=8, budget=None):
        """Samples per chunk: ``batch_size``, or what fits the memory budget.

        The budget is :data:`convredunet.spectral.CHUNK_BYTES`, or the bytes of
        the layers' operators when they are larger: every chunk reads the
        operators once, so chunks whose work arrays are far smaller than the
        operators would spend their time reading them (``budget`` raises it
        further, e.g. to the size of features already held).
        """
        if batch_size is not None:
            return batch_size
        per_sample = [layer.bytes_per_sample(itemsize) for layer in self.layers]
        if self.lifting is not None:
            per_sample.append(self.lifting.bytes_per_sample(itemsize))
        per_sample.append(2 * math.prod(self.input_shape) * itemsize)
        budget = max(spectral.CHUNK_BYTES, self.operator_bytes(), budget or 0)
        return max(1, int(budget // max(per_sample)))

    def working(self, x):
        """A chunk of the user's samples in :attr:`workspace`, scaled: ``(x * scale, scale)``.

        The powers of two (:func:`rescale_samples`, at most half the working
        precision's exponent range) are applied in the input's own precision,
        before any cast, so any finite input fits; :meth:`lift` and
        :meth:`forward` take the pair and undo the scale.
        """
        ws = self.workspace
        x, scale = rescale_samples(x, ws.backend.max_exponent(ws.like) // 2)
        return ws.to_working(x), ws.to_working(scale)

    def lift(self, x, scale=None):
        """Unit-norm features of working-array samples ``x`` ``(b, *input_shape)``.

        ``scale``: the powers of two ``x`` was multiplied by, if it was (see
        :func:`rescale_samples`).
        """
        backend = self.workspace.backend
        if self.lifting is None:
            return normalize(backend, x)
        return self.lifting(backend, x, scale)

    def lift_spectrum(self, x, scale=None, out=None):
        """The unitary half spectra ``(F, C, b)`` of :meth:`lift`'s features (into ``out``)."""
        if self.lifting is None:
            return spectral.spectrum(self.workspace.backend, self.lift(x, scale),
                                     self.signal_shape, out)
        return self.lifting.spectrum(self.workspace.backend, x, scale, out)

    def forward_spectrum(self, x, scale=None, n_layers=None):
        """:meth:`forward` with the features as half spectra ``(F, C, b)``.

        The layers run in the frequency domain from the lifting's one FFT on:
        what the classifiers need (the membership, the subspace distances)
        without an inverse FFT.
        """
        backend = self.workspace.backend
        v, pi = self.lift_spectrum(x, scale), None
        for layer in self.layers[:n_layers]:
            v, pi = layer.apply_spectrum(backend, v)
        return v, pi

    def forward(self, x, scale=None, n_layers=None):
        """Features after the layers and the last layer's membership, for one chunk.

        Parameters
        ----------
        x : working array (b, *input_shape), in :attr:`workspace`
        scale : working array (b,) or None
            The powers of two ``x`` was multiplied by, if it was.
        n_layers : int or None
            Stop after this many layers (None: all).

        Returns
        -------
        z : working array (b, *feature_shape)
        pi : working array (b, k), or None when no layer ran
        """
        if not self.layers[:n_layers]:
            return self.lift(x, scale), None
        v, pi = self.forward_spectrum(x, scale, n_layers)
        return spectral.inverse_spectrum(self.workspace.backend, v, self.signal_shape), pi

    def stream(self, chunks, spectra=False):
        """``forward`` over every chunk of a source: yields ``(z, pi)`` per chunk.

        ``chunks`` yields working arrays ``(b, *input_shape)``, or pairs
        ``(x, scale)`` (see :func:`rescale_samples`), e.g. from
        :func:`array_chunks`; only one chunk's work arrays exist at a time.
        With ``spectra``, ``z`` is the half spectrum ``(F, C, b)``
        (:meth:`forward_spectrum`).
        """
        run = self.forward_spectrum if spectra else self.forward
        for chunk in chunks:
            yield run(*chunk) if isinstance(chunk, tuple) else run(chunk)


def build_layers(network, training, params, name, lap=None):
    """The fit loop, one owner for every kind of training data: append ``n_layers`` layers.

    ``training`` is the strategy that holds the training features (in memory:
    their spectra; on a Dask cluster: persisted chunks): ``solve()`` returns
    the next layer's :class:`convredunet.spectral.LayerSolution` from them,
    ``apply(layer)`` moves them through the new layer and returns the
    training accuracy of its membership. ``params``: the estimator's
    validated parameters (``n_layers``, ``eta``, ``lmbda``, ``verbose``);
    ``name`` labels the progress bar; ``lap(stage)``, when given, is called
    after each solve and apply (the fit's stage timer). Returns the history:
    one record per layer (``delta_R``, ``R``, ``R_c``, ``train_accuracy``),
    each also logged on ``convredunet.estimators``.
    """
    import logging

    log = logging.getLogger("convredunet.estimators")
    lap = lap or (lambda stage: None)
    history = []
    progress = layer_progress(params["n_layers"], params["verbose"], name)
    try:
        for index in range(params["n_layers"]):
            solution = training.solve()
            layer = Layer(network.workspace.backend, solution, params["eta"], params["lmbda"],
                          network.signal_shape)
            network.layers.append(layer)
            lap(f"layer{index}/solve")
            accuracy = training.apply(layer)
            lap(f"layer{index}/apply")
            record = {"layer": index, "delta_R": solution.rates.delta,
                      "R": solution.rates.expansion, "R_c": solution.rates.compression,
                      "train_accuracy": accuracy}
            history.append(record)
            log.info("layer %d: delta_R=%.4f R=%.4f R_c=%.4f train_acc=%.4f", index,
                     record["delta_R"], record["R"], record["R_c"], accuracy)
            progress.update(1)
            progress.set_postfix(delta_R=f"{record['delta_R']:.3f}", acc=f"{accuracy:.3f}")
    finally:
        progress.close()
    return history


def layer_progress(total, verbose, name):
    """A progress bar over the layers being built (shown only when ``verbose``)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"{name} layers", unit="layer",
                disable=not verbose or total == 0, leave=False)
