"""The pieces of a ReduNet: normalization, the lifting, and one layer.

Everything here runs on validated backend arrays of one precision; the
estimators in :mod:`convredunet.estimators` do the validation and batching.

Layout: a batch of samples is ``(b, C, *signal_shape)`` (vectors: ``(b, d)``);
inside a layer it becomes its unitary half spectrum ``(F, C, b)``
(:func:`convredunet.spectral.spectrum`), frequency first, so that every
operator is applied by one batched matrix product over all frequencies.
"""
import math

import numpy as np

from . import _parallel, spectral

# Samples whose norm is below this are left as they are by normalize().
_TINY = 1e-30


def normalize(backend, z):
    """Scale every sample of ``z`` ``(b, ...)`` to unit Frobenius norm."""
    b = z.shape[0]
    sq = backend.abs2(backend.reshape(z, (b, -1))).sum(1)
    norms = backend.maximum(backend.sqrt(sq), _TINY)
    return z / backend.reshape(norms, (b,) + (1,) * (z.ndim - 1))


def _nonlinearity(backend, name, z):
    if name is None:
        return z
    if name == "relu":
        return backend.maximum(z, 0.0)
    if name == "abs":
        return abs(z)
    raise ValueError(f"nonlinearity must be 'relu', 'abs' or None, got {name!r}")


class Lifting:
    """``z = normalize(sigma(K (*) x + b))``: random circular convolution, then ``sigma``.

    Parameters
    ----------
    kernels : numpy array, shape (C, C_in, *kernel_shape)
        Tap ``r`` of a kernel axis of size ``K`` sits at offset
        ``r - (K - 1) // 2`` (the kernel is centred), so
        ``(K (*) x)_c[t] = sum_c' sum_r K[c, c', r] x_c'[t - (r - (K-1)//2)]``.
    nonlinearity : {"relu", "abs", None}
    signal_shape : tuple, ``(T,)`` or ``(H, W)``
    bias : numpy array (C,) or None
        Added to every position of each lifted channel before ``sigma``; a
        constant is unchanged by shifts, so equivariance is kept.
    """

    def __init__(self, kernels, nonlinearity, signal_shape, bias=None):
        self.kernels = np.asarray(kernels)
        self.nonlinearity = nonlinearity
        self.signal_shape = tuple(signal_shape)
        self.bias = None if bias is None else np.asarray(bias, dtype=np.float64)
        self._hat = {}

    def full_kernels(self):
        """The kernels zero-padded to the signal size, ``(C, C_in, *signal_shape)``."""
        c_out, c_in = self.kernels.shape[:2]
        full = np.zeros((c_out, c_in) + self.signal_shape, dtype=self.kernels.dtype)
        offsets = [np.arange(k) - (k - 1) // 2 for k in self.kernels.shape[2:]]
        index = np.ix_(*[o % n for o, n in zip(offsets, self.signal_shape)])
        full[(slice(None), slice(None)) + index] = self.kernels
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

    def __call__(self, backend, x):
        """Lift ``x`` ``(b, C_in, *S)`` to unit-norm features ``(b, C, *S)``."""
        v = spectral.spectrum(backend, x, self.signal_shape)
        z = spectral.inverse_spectrum(backend, self.kernel_hat(backend, x) @ v,
                                      self.signal_shape)
        if self.bias is not None:
            shape = (1, -1) + (1,) * len(self.signal_shape)
            z = z + backend.reshape(backend.astype(self.bias, like=z), shape)
        return normalize(backend, _nonlinearity(backend, self.nonlinearity, z))


class Layer:
    """One ReduNet layer: ``z+ = normalize(z + eta (E z - sum_j gamma_j pi_j C^j z))``.

    The operators are stored per frequency: ``stacked`` ``(F, (1+k_d) C, C)``
    holds ``E`` on top of every class operator kept dense, so that one
    batched product applies them all; classes with fewer samples than
    channels keep their Woodbury factors instead (``C^j = alpha_j I -
    alpha_j^2 V_j M_j^-1 V_j^H``), which are cheaper to store and apply.

    Parameters
    ----------
    solution : convredunet.operators.SpectralSolution
        The engine's output for the features entering this layer.
    eta, lmbda : float
        Step size and membership temperature.
    signal_shape : tuple
    """

    def __init__(self, backend, solution, eta, lmbda, signal_shape):
        self.eta = float(eta)
        self.lmbda = float(lmbda)
        self.signal_shape = tuple(signal_shape)
        self.gamma = np.asarray(solution.gamma, dtype=np.float64)
        self.rates = solution.rates
        self.dense_classes = list(solution.dense_classes)
        self.lowrank_classes = list(solution.lowrank_classes)
        parts = [solution.E[:, None]]
        if self.dense_classes:
            parts.append(backend.permute(solution.C_dense, (1, 0, 2, 3)))
        f, c = solution.E.shape[:2]
        v, m_inv = solution.V, solution.M_inv
        alphas = np.asarray(solution.alphas, dtype=np.float64)
        # Low-rank application costs about 2 C m_j + 2 m_j^2 per frequency and
        # sample, a dense operator C^2: classes past the crossover are stored dense.
        counts = np.asarray(solution.counts)
        wide = [i for i, j in enumerate(self.lowrank_classes)
                if 2 * c * counts[j] + 2 * counts[j] ** 2 >= c * c]
        if wide:
            dense = spectral.woodbury_dense(backend, v[wide], m_inv[wide], alphas[wide])
            parts.append(backend.permute(dense, (1, 0, 2, 3)))
            self.dense_classes += [self.lowrank_classes[i] for i in wide]
            keep = [i for i in range(len(self.lowrank_classes)) if i not in wide]
            self.lowrank_classes = [self.lowrank_classes[i] for i in keep]
            if keep:
                v, m_inv, alphas = v[keep], m_inv[keep], alphas[keep]
                width = int(counts[self.lowrank_classes].max())
                v, m_inv = v[..., :width], m_inv[..., :width, :width]
        self.stacked = backend.contiguous(
            backend.reshape(backend.concat(parts, axis=1), (f, -1, c)))
        if self.lowrank_classes:
            self.V = backend.contiguous(backend.permute(v, (1, 0, 2, 3)))
            self.M_inv = backend.contiguous(backend.permute(m_inv, (1, 0, 2, 3)))
            self.alphas = alphas
        else:
            self.V = self.M_inv = None
            self.alphas = np.zeros(0)
        self._prepare(backend)

    @classmethod
    def from_arrays(cls, backend, arrays, eta, lmbda, signal_shape, rates=None):
        """Rebuild a layer from :meth:`to_arrays` (backend arrays or numpy)."""
        layer = cls.__new__(cls)
        layer.eta, layer.lmbda = float(eta), float(lmbda)
        layer.signal_shape = tuple(signal_shape)
        layer.gamma = np.asarray(arrays["gamma"], dtype=np.float64)
        layer.rates = rates
        layer.dense_classes = [int(j) for j in arrays["dense_classes"]]
        layer.lowrank_classes = [int(j) for j in arrays["lowrank_classes"]]
        layer.stacked = arrays["stacked"]
        layer.V = arrays.get("V") if layer.lowrank_classes else None
        layer.M_inv = arrays.get("M_inv") if layer.lowrank_classes else None
        layer.alphas = np.asarray(arrays.get("alphas", np.zeros(0)), dtype=np.float64)
        layer._prepare(backend)
        return layer

    def to_arrays(self, backend):
        """The layer's numbers as numpy arrays (for saving)."""
        out = {
            "gamma": self.gamma,
            "dense_classes": np.asarray(self.dense_classes, dtype=np.int64),
            "lowrank_classes": np.asarray(self.lowrank_classes, dtype=np.int64),
            "stacked": backend.asnumpy(self.stacked),
            "alphas": self.alphas,
        }
        if self.lowrank_classes:
            out["V"] = backend.asnumpy(self.V)
            out["M_inv"] = backend.asnumpy(self.M_inv)
        return out

    def to(self, backend, like):
        """The same layer with its arrays in ``like``'s library, precision and device."""
        from .backend import get_backend

        arrays = self.to_arrays(get_backend(self.stacked))
        for key in ("stacked", "V", "M_inv"):
            if key in arrays:
                arrays[key] = (backend.astype_complex(arrays[key], like=like)
                               if self.signal_shape else backend.astype(arrays[key], like=like))
        return Layer.from_arrays(backend, arrays, self.eta, self.lmbda, self.signal_shape,
                                 self.rates)

    def _prepare(self, backend):
        self.n_classes = len(self.gamma)
        self.n_channels = self.stacked.shape[-1]
        order = self.dense_classes + self.lowrank_classes
        self._order = np.argsort(order)  # class j sits at position _order[j]
        self._identity_order = list(order) == list(range(self.n_classes))
        self._constants = {}
        self._sorted = np.asarray(order)  # sorted position i holds class _sorted[i]
        if self.lowrank_classes:
            f, g, c, width = self.V.shape
            self._V_H = backend.contiguous(
                backend.reshape(backend.H(self.V), (f, g * width, c)))
            self._V_flat = backend.contiguous(
                backend.reshape(backend.permute(self.V, (0, 2, 1, 3)), (f, c, g * width)))
            self._G = backend.H(self.V) @ self.V  # (F, g, w, w)

    def constants(self, backend, like):
        """Small per-layer arrays on ``like``'s device and precision, made once.

        Keeps host-to-device copies out of every application of the layer.
        """
        key = (backend.name, str(backend.real_dtype(like)), str(backend.device(like)))
        if key not in self._constants:
            real = backend.zeros((0,), like=like.real)
            self._constants[key] = {
                "gamma": backend.astype(self.gamma, like=real),
                "alphas": backend.astype(self.alphas.reshape(1, -1, 1, 1), like=real),
                "weights": backend.astype(spectral.half_spectrum_weights(self.signal_shape),
                                          like=real),
                "order": backend.from_numpy(self._order, like=like),
                "sorted": backend.from_numpy(self._sorted, like=like),
                "eye": backend.astype(np.eye(self.n_classes), like=real),
            }
        return self._constants[key]

    # --- application -----------------------------------------------------------
    def operators_hat(self, backend):
        """Dense ``E_hat`` ``(F, C, C)`` and ``C_hat`` ``(k, F, C, C)``."""
        c = self.n_channels
        f = self.stacked.shape[0]
        e_hat = self.stacked[:, :c]
        parts = {}
        if self.dense_classes:
            dense = backend.reshape(self.stacked[:, c:], (f, -1, c, c))
            parts.update(zip(self.dense_classes, backend.permute(dense, (1, 0, 2, 3))))
        if self.lowrank_classes:
            v = backend.permute(self.V, (1, 0, 2, 3))
            m_inv = backend.permute(self.M_inv, (1, 0, 2, 3))
            dense = spectral.woodbury_dense(backend, v, m_inv, self.alphas)
            parts.update(zip(self.lowrank_classes, dense))
        return e_hat, backend.stack([parts[j] for j in range(self.n_classes)])

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
        Dense classes: ``C^j v`` comes from the stacked product and its norm
        is taken directly. Low-rank classes never form ``C^j v`` (that would
        be a ``(F, k, C, b)`` array): with ``p = V^H v``, ``q = M^-1 p``,
        ``C^j v = alpha (v - alpha V q)``, so
        ``||C^j v||^2 = alpha^2 sum_p w_p (|v|^2 - 2 alpha Re p^H q + alpha^2 q^H (V^H V) q)``
        and ``sum_j g_j C^j v = (sum_j g_j alpha_j) v - V (alpha^2 g q)``.
        """
        v = spectral.spectrum(backend, z, self.signal_shape)
        consts = self.constants(backend, v)
        slices = _frequency_slices(backend, v)
        # Phase 1, per frequency: responses and each frequency's share of ||C^j z||^2.
        parts = _map(lambda fs: self._responses(backend, v, fs, consts), slices)
        sq = parts[0][1]
        for _, more in parts[1:]:
            sq = sq + more
        if not self._identity_order:
            sq = sq[consts["order"]]  # (k, b) in class order
        norms = backend.sqrt(backend.maximum(sq, 0.0))
        pi = backend.permute(backend.softmax(-self.lmbda * norms, axis=0), (1, 0))  # (b, k)

        weight = pi
        if labels is not None:
            weight = consts["eye"][backend.from_numpy(labels, like=pi)]
        weight = backend.permute(weight * consts["gamma"], (1, 0))  # (k, b)
        if not self._identity_order:
            weight = weight[consts["sorted"]]  # rows in dense-then-low-rank order
        # Phase 2, per frequency: the step z + eta (E z - sum_j gamma_j pi_j C^j z).
        steps = _map(lambda item: self._step(backend, v, item[0], item[1][0], weight, consts),
                     list(zip(slices, parts)))
        step = steps[0] if len(steps) == 1 else backend.concat(steps, axis=0)
        z_next = spectral.inverse_spectrum(backend, step, self.signal_shape)
        return normalize(backend, z_next), pi

    def _responses(self, backend, v, fs, consts):
        """Products for the frequencies ``fs``; returns (state, partial squared norms (k, b))."""
        v = v[fs]
        f, c, b = v.shape
        freq_weights = consts["weights"][fs]
        w = self.stacked[fs] @ v
        kd = len(self.dense_classes)
        state = {"u": w[:, :c]}
        sq = []
        if kd:
            state["dense"] = backend.reshape(w[:, c:], (f, kd, c, b))
            sq.append(backend.class_sq_norms(state["dense"], freq_weights))
        if self.lowrank_classes:
            g, width = self.M_inv.shape[1], self.M_inv.shape[-1]
            alpha = consts["alphas"][0, :, 0]  # (g, 1)
            # V_j^H v for every class at once: one (g*w x C) product per frequency.
            p = backend.reshape(self._V_H[fs] @ v, (f, g, width, b))
            q = self.M_inv[fs] @ p  # (F, g, w, b)
            gq = self._G[fs] @ q
            vv = backend.abs2(v).sum(1)  # (F, b)
            pq = (p.conj() * q).real.sum(2)  # (F, g, b)
            qgq = (q.conj() * gq).real.sum(2)
            inner = vv[:, None] - 2 * alpha * pq + alpha * alpha * qgq
            sq.append(alpha * alpha * backend.einsum("f,fgb->gb", freq_weights, inner))
            state["q"] = q
        return state, (sq[0] if len(sq) == 1 else backend.concat(sq, axis=0))

    def _step(self, backend, v, fs, state, weight, consts):
        """``v + eta (E v - sum_j weight_j C^j v)`` for the frequencies ``fs``."""
        v = v[fs]
        f, c, b = v.shape
        kd = len(self.dense_classes)
        compress = None
        if kd:
            dense = state["dense"]
            compress = backend.einsum("fkcb,kb->fcb", dense,
                                      backend.as_dtype_of(weight[:kd], dense))
        if self.lowrank_classes:
            g, width = self.M_inv.shape[1], self.M_inv.shape[-1]
            alpha = consts["alphas"][0, :, 0]
            gw = weight[kd:]  # (g, b)
            scaled = state["q"] * (alpha * alpha * gw)[None, :, None, :]
            lowrank = v * (alpha * gw).sum(0)[None, None, :] - self._V_flat[fs] @ backend.reshape(
                scaled, (f, g * width, b))
            compress = lowrank if compress is None else compress + lowrank
        return v + self.eta * (state["u"] - compress)


def _frequency_slices(backend, v):
    """Frequency slices of ``v`` ``(F, C, b)`` for the threads (one when small)."""
    return _parallel.batch_slices(backend, v.shape[0], math.prod(v.shape))


_map = _parallel.pmap
