"""Export a fitted ReduNet to PyTorch: circular convolutions, run directly or by FFT.

Every operator of SPEC.md is a circular convolution whose kernel is the
inverse DFT of its per-frequency blocks. The exported module keeps each layer's
kernels as the weight of an ordinary ``nn.Conv1d`` / ``nn.Conv2d`` (behind an
``nn.CircularPad1d/2d``) and runs them in one of two ways, chosen by ``conv``:

``"direct"``
    The padded convolution itself: plain CNN operations that trace, script
    and export to ONNX, cheap for short kernels.
``"fft"``
    The same convolution as a per-frequency channel mix (SPEC.md): the
    features' unitary half spectrum ``torch.fft.rfftn`` ``(F, C, b)``, one
    batched complex product with the kernels' spectra ``(F, (1+k) C, C)``,
    the membership norms from the half spectrum with its weights (2 for a
    frequency whose conjugate twin is not stored), and the normalization by
    Parseval, so the layers never leave the frequency domain; one
    ``irfftn`` at the end. Cheap for full-size kernels. Scripts and traces;
    the ONNX exporter has no complex tensors, so ONNX files use ``"direct"``.
``"auto"``
    ``"direct"`` when the kernels are short, ``"fft"`` otherwise (see
    :func:`choose_conv`).

Both modes hold the same parameters (the same ``state_dict``), so a module
fine-tuned in one mode runs in the other: :meth:`ReduNetModule.with_conv`.

Kernel layout. A kernel with ``K`` taps per axis puts tap ``r`` at offset
``r - (K - 1) // 2`` (centred), as the lifting does. PyTorch convolutions are
cross-correlations, so the weight is the kernel flipped, and circular padding
of ``K - 1 - (K - 1)//2`` before and ``(K - 1)//2`` after keeps the length.
With ``K`` equal to the signal size every offset appears once and the export
is exact; a smaller ``kernel_size`` keeps the ``K`` central taps.
"""
import copy
import math
from typing import List, Tuple

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted
from torch import nn

from . import spectral
from .backend import resolve

__all__ = ["to_torch", "export_onnx", "ReduNetModule", "ReduNetLayer", "ExportGraph",
           "kernel_energy_kept", "centred_kernels", "choose_conv"]

CONV_MODES = ("auto", "fft", "direct")
# "auto" runs a layer by FFT when its kernel has more taps than this (per
# signal; K in 1D, K*K in 2D). Measured on one CPU thread (bench/export_mnist1d.py):
# the FFT path costs about as much as a direct convolution of ~4 taps.
AUTO_DIRECT_MAX_TAPS = 4
# Bytes of layer responses per block of samples in predict/forward (see _run_in_chunks).
CHUNK_BYTES = 32 << 20
MIN_CHUNK = 32


def _network_parts(net):
    """The fitted network as plain pieces: the one place this module reads the estimator.

    Returns
    -------
    dict with ``network`` (Network), ``lifting`` (Lifting or None), ``layers`` (list of Layer),
    ``classes`` (numpy array), ``signal_shape`` (tuple, ``()`` for vectors)
    and ``input_shape`` (tuple, one sample's shape).
    """
    check_is_fitted(net, "network_")
    network = net.network_
    return {"network": network, "lifting": network.lifting, "layers": list(network.layers),
            "classes": net.classes_, "signal_shape": tuple(network.signal_shape),
            "input_shape": tuple(network.input_shape)}


def centred_kernels(kernels, kernel_size=None):
    """The ``K`` central taps of cyclic kernels ``(..., *S)`` -> ``(..., K, [K])``.

    Tap ``r`` holds the kernel at cyclic offset ``r - (K - 1) // 2``.
    ``kernel_size=None`` keeps every tap (``K = S`` per axis).
    """
    kernels = np.asarray(kernels)
    nd = kernels.ndim - 2
    signal_shape = kernels.shape[2:]
    sizes = signal_shape if kernel_size is None else (kernel_size,) * nd
    index = np.ix_(*[(np.arange(k) - (k - 1) // 2) % n for k, n in zip(sizes, signal_shape)])
    return kernels[(slice(None), slice(None)) + index]


def kernel_energy_kept(net, kernel_size):
    """Fraction of the layer kernels' energy (sum of squares) in the central taps.

    Parameters
    ----------
    net : fitted ReduNet1D or ReduNet2D
    kernel_size : int

    Returns
    -------
    float in [0, 1], over every E and C^j kernel of every layer.
    """
    parts = _network_parts(net)
    kept = total = 0.0
    for e, c in _layer_kernels(parts):
        for kern in (e, c.reshape((-1,) + c.shape[2:])):
            total += float(np.sum(kern ** 2))
            kept += float(np.sum(centred_kernels(kern, kernel_size) ** 2))
    return kept / total


def _layer_kernels(parts):
    """Real kernels (E (C, C, *S), C (k, C, C, *S)) of every layer, numpy float64."""
    workspace = resolve("numpy", None, "float64")
    backend = workspace.backend
    for layer in parts["network"].to(workspace).layers:
        e_hat, c_hat = layer.operators_hat(backend)
        yield (spectral.operator_kernels(backend, e_hat, parts["signal_shape"]),
               spectral.operator_kernels(backend, c_hat, parts["signal_shape"]))


def choose_conv(kernel_size, signal_ndim):
    """What ``conv="auto"`` picks for layer kernels of ``kernel_size`` taps per axis.

    ``"direct"`` when ``kernel_size ** signal_ndim <= AUTO_DIRECT_MAX_TAPS``,
    else ``"fft"``. A direct convolution costs ``K^d`` multiply-adds per
    position and channel pair; the FFT path about four (a complex product on
    half the frequencies) plus the transforms.
    """
    return "direct" if kernel_size ** signal_ndim <= AUTO_DIRECT_MAX_TAPS else "fft"


def _conv_modules(kernels, dtype, bias=None):
    """``(CircularPad, Conv)`` computing ``sum_c' k[c, c'] (*) x_c' (+ bias)``.

    ``kernels``: numpy ``(C_out, C_in, *K)``, centred (tap ``r`` at offset
    ``r - (K-1)//2``); ``bias``: numpy ``(C_out,)`` or None.
    """
    nd = kernels.ndim - 2
    sizes = kernels.shape[2:]
    weight = np.flip(kernels, axis=tuple(range(2, 2 + nd))).copy()
    pads = []
    for k in reversed(sizes):  # torch pads the last axis first
        pads += [k - 1 - (k - 1) // 2, (k - 1) // 2]
    conv_cls, pad_cls = (nn.Conv1d, nn.CircularPad1d) if nd == 1 else (nn.Conv2d,
                                                                         nn.CircularPad2d)
    conv = conv_cls(kernels.shape[1], kernels.shape[0], tuple(sizes), bias=bias is not None,
                    dtype=dtype)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(weight))
        if bias is not None:
            conv.bias.copy_(torch.from_numpy(np.asarray(bias)))
    return pad_cls(tuple(pads)), conv


def _circular_conv(kernels, dtype, bias=None):
    return nn.Sequential(*_conv_modules(kernels, dtype, bias))


def _linear(matrix, dtype):
    linear = nn.Linear(matrix.shape[1], matrix.shape[0], bias=False, dtype=dtype)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(matrix)))
    return linear


class Normalize(nn.Module):
    """Scale every sample to unit Frobenius norm (samples of norm 0 stay 0)."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        flat = z.flatten(1)
        norms = torch.sqrt((flat * flat).sum(dim=1)).clamp_min(1e-30)
        return z / norms.reshape([-1] + [1] * (z.dim() - 1))


class _Abs(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.abs(z)


class ReduNetLayer(nn.Module):
    """``z+ = normalize(z + eta (E z - sum_j gamma_j pi_j C^j z))``.

    ``pi = softmax(-lmbda ||C^j z||_F)``, the estimated membership.

    One convolution ``conv`` maps C channels to ``(1 + k) C``: ``E`` on top of
    every ``C^j`` in class order. ``mode`` is ``"direct"`` (input and output
    ``(b, C, *S)``), ``"fft"`` (unitary half spectra ``(F, C, b)``, complex)
    or ``"linear"`` (vectors ``(b, d)``, ``conv`` an ``nn.Linear``).
    """

    signal_shape: List[int]
    kernel_shape: List[int]
    dims: List[int]
    full_pads: List[int]
    roll_shifts: List[int]

    def __init__(self, kernels, gamma, eta, lmbda, signal_shape, mode, dtype):
        super().__init__()
        signal_shape = tuple(int(n) for n in signal_shape)
        if mode == "linear":
            self.pad = nn.Identity()
            self.conv = _linear(kernels, dtype)
            kernel_shape: List[int] = []
        else:
            self.pad, self.conv = _conv_modules(kernels, dtype)
            kernel_shape = [int(k) for k in kernels.shape[2:]]
        self.mode = mode
        self.spectral = mode == "fft"
        self.n_channels = int(kernels.shape[1])
        self.n_classes = int(kernels.shape[0] // kernels.shape[1] - 1)
        self.eta = float(eta)
        self.lmbda = float(lmbda)
        self.signal_shape: List[int] = list(signal_shape)
        self.kernel_shape: List[int] = kernel_shape
        nd = len(signal_shape)
        self.dims: List[int] = list(range(2, 2 + nd))
        # Zero padding of the flipped weight up to the signal size, then a roll
        # that puts tap r at cyclic offset r - (K-1)//2.
        pads: List[int] = []
        for k, n in zip(reversed(kernel_shape), reversed(signal_shape)):
            pads += [0, n - k]
        self.full_pads: List[int] = pads
        self.roll_shifts: List[int] = [-((k - 1) // 2) for k in kernel_shape]
        self.register_buffer("gamma", torch.as_tensor(np.asarray(gamma), dtype=dtype))
        self.register_buffer("freq_weights", torch.as_tensor(
            spectral.half_spectrum_weights(signal_shape), dtype=dtype))

    def operators_hat(self) -> torch.Tensor:
        """The kernels' unnormalized DFT on the half spectrum, ``(F, (1+k) C, C)`` complex."""
        weight = self.conv.weight
        kernel = torch.flip(weight, self.dims)
        full = torch.roll(torch.nn.functional.pad(kernel, self.full_pads), self.roll_shifts,
                          self.dims)
        hat = torch.fft.rfftn(full, dim=self.dims)
        return hat.reshape(weight.shape[0], weight.shape[1], -1).permute(2, 0, 1)

    def real_operators(self) -> torch.Tensor:
        """:meth:`operators_hat` as real ``(F, (1+k) 2C, 2C)`` block matrices.

        Block ``g`` (``E``, then each ``C^j``) maps ``[Re v; Im v]`` to
        ``[Re(A_g v); Im(A_g v)]`` with ``[[Re A_g, -Im A_g], [Im A_g, Re A_g]]``,
        so one real batched product applies every operator.
        """
        hat = self.operators_hat()
        f, r, c = hat.shape
        g = r // c
        re = hat.real.reshape(f, g, c, c)
        im = hat.imag.reshape(f, g, c, c)
        top = torch.cat([re, -im], dim=3)
        bottom = torch.cat([im, re], dim=3)
        return torch.stack([top, bottom], dim=2).reshape(f, 2 * r, 2 * c)

    def _logits(self, sq: torch.Tensor) -> torch.Tensor:
        return -self.lmbda * torch.sqrt(sq.clamp_min(0.0))

    def _spectral_sq(self, cj: torch.Tensor) -> torch.Tensor:
        """``||C^j z||^2`` ``(b, k)`` from half-spectrum responses ``(F, k, 2C, b)``."""
        f, k, _, b = cj.shape
        per_freq = (cj * cj).sum(dim=2).reshape(f, k * b)
        return torch.matmul(self.freq_weights.unsqueeze(0), per_freq).reshape(k, b).t()

    def _responses_spatial(self, z: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pad(z))

    def operators(self) -> torch.Tensor:
        """What :meth:`step` needs from the weights: :meth:`real_operators` (fft), else empty.

        Computing it once and passing it to :meth:`step` for every block of
        samples saves the kernels' FFT per block.
        """
        if self.spectral:
            return self.real_operators()
        return torch.zeros(0, dtype=self.gamma.dtype, device=self.gamma.device)

    def scores(self, z: torch.Tensor) -> torch.Tensor:
        """``-lmbda ||C^j z||_F`` per class, ``(b, k)``, without the layer's step."""
        return self.scores_with(z, self.operators())

    def scores_with(self, z: torch.Tensor, ops: torch.Tensor) -> torch.Tensor:
        """:meth:`scores` with ``ops = self.operators()`` given."""
        k, c = self.n_classes, self.n_channels
        if self.spectral:
            f, _, b = z.shape
            cj = torch.matmul(ops[:, 2 * c:], z).reshape(f, k, 2 * c, b)
            return self._logits(self._spectral_sq(cj))
        b = z.shape[0]
        cj = self._responses_spatial(z)[:, c:].reshape(b, k, c, -1)
        return self._logits((cj * cj).sum(dim=(2, 3)))

    def forward(self, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """One layer: ``(b, C, *S)`` (direct) or spectra ``(F, 2C, b)`` (fft) in and out.

        Returns the next features and this layer's ``-lmbda ||C^j z||_F`` ``(b, k)``.
        """
        return self.step(z, self.operators())

    def step(self, z: torch.Tensor, ops: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` with ``ops = self.operators()`` given."""
        k, c = self.n_classes, self.n_channels
        if self.spectral:
            f, _, b = z.shape
            w = torch.matmul(ops, z).reshape(f, k + 1, 2 * c, b)
            cj = w[:, 1:]
            logits = self._logits(self._spectral_sq(cj))
            weight = (torch.softmax(logits, dim=1) * self.gamma).t()  # (k, b)
            # sum_j weight_j C^j v, one class at a time: no (F, k, 2C, b) temporary.
            compressed = cj[:, 0] * weight[0]
            for j in range(1, k):
                compressed = compressed + cj[:, j] * weight[j]
            step = z + self.eta * (w[:, 0] - compressed)
            sq = torch.matmul(self.freq_weights.unsqueeze(0), (step * step).sum(dim=1))
            return step / torch.sqrt(sq).clamp_min(1e-30), logits
        b = z.shape[0]
        w = self._responses_spatial(z)
        cj = w[:, c:].reshape(b, k, c, -1)
        logits = self._logits((cj * cj).sum(dim=(2, 3)))
        weight = torch.softmax(logits, dim=1) * self.gamma
        compressed = (cj * weight.reshape(b, k, 1, 1)).sum(dim=1).reshape(z.shape)
        step = z + self.eta * (w[:, :c].reshape(z.shape) - compressed)
        flat = step.reshape(b, -1)
        norms = torch.sqrt((flat * flat).sum(dim=1)).clamp_min(1e-30)
        return step / norms.reshape([-1] + [1] * (z.dim() - 1)), logits


class SubspaceHead(nn.Module):
    """Squared distances to the class subspaces (``classifier="subspace"``), ``(b, k)``.

    The projector on class ``j``'s subspace (``n_components`` directions per
    frequency of the class and all its cyclic shifts) is block circulant, so
    it is a ``C -> C`` circular convolution ``P_j``; ``project`` stacks them
    (``C -> k*C``, or a linear map for vectors) and
    ``d_j(z) = ||z||^2 - ||P_j z||^2``.
    """

    def __init__(self, project, n_classes):
        super().__init__()
        self.project = project
        self.n_classes = int(n_classes)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        b = z.shape[0]
        p = self.project(z).reshape(b, self.n_classes, -1)
        flat = z.reshape(b, 1, -1)
        return (flat * flat).sum(-1) - (p * p).sum(-1)


def _subspace_head(net, dtype, kernel_size):
    """The :class:`SubspaceHead` of a net fitted with ``classifier="subspace"``."""
    if getattr(net, "subspaces_", None) is None:
        raise ValueError(f"classifier='subspace' needs the class subspaces, but this "
                         f"{type(net).__name__} was fitted with classifier='membership'; "
                         "set classifier='subspace' before calling fit")
    bases = np.asarray(net.subspaces_)  # (k, F, C, r)
    k, c = bases.shape[0], bases.shape[2]
    projectors = bases @ np.conj(np.swapaxes(bases, -1, -2))  # (k, F, C, C)
    if not net.signal_shape_:
        return SubspaceHead(_linear(projectors[:, 0].real.reshape(k * c, c), dtype), k)
    backend = resolve("numpy", None, "float64").backend
    kernels = spectral.operator_kernels(backend, projectors, net.signal_shape_)
    kernels = kernels.reshape((k * c,) + kernels.shape[2:])
    return SubspaceHead(_circular_conv(centred_kernels(kernels, kernel_size), dtype), k)


class ReduNetModule(nn.Module):
    """A fitted ReduNet as a PyTorch module.

    ``forward(x)`` returns the features after the last layer (as
    ``net.transform``); ``predict(x)`` the labels (as ``net.predict``),
    ``membership(x)`` the last layer's ``pi`` (as ``net.predict_proba``) and
    ``logits(x)`` its ``-lmbda ||C^j z||_F`` (``(b, k)``, class scores). With
    ``classifier="subspace"``, ``subspace_distances(x)`` gives the squared
    distances to the class subspaces and ``predict`` their argmin.

    Input ``x``: ``(b, *signal_shape)`` or ``(b, C_in, *signal_shape)``;
    vectors ``(b, d)``. ``conv`` (read-only) says how the layers run.
    """

    signal_shape: List[int]
    dims: List[int]
    input_shape: List[int]

    def __init__(self, lifting, layers, classes, signal_shape, conv, input_shape=None,
                 head=None):
        super().__init__()
        self.input_shape: List[int] = [int(n) for n in (input_shape or [])]
        self.lifting = lifting
        self.layers = nn.ModuleList(layers)
        self.register_buffer("classes", torch.as_tensor(classes))
        self.signal_shape: List[int] = [int(n) for n in signal_shape]
        self.signal_ndim = len(self.signal_shape)
        self.dims: List[int] = list(range(2, 2 + self.signal_ndim))
        self.conv = conv
        self.spectral = conv == "fft"
        self.n_layers = len(layers)
        # Samples per block: a layer's responses ((1+k) C channels, 2 floats per
        # stored frequency or 1 per position) take about CHUNK_BYTES.
        first = layers[0].conv.weight if layers else None
        per_sample = 1 if first is None else (
            first.shape[0] * max(1, math.prod(self.signal_shape)) * 2 * first.element_size())
        self.chunk_size = max(MIN_CHUNK, CHUNK_BYTES // per_sample)
        self.use_subspace = head is not None
        self.head = head if head is not None else nn.Identity()

    def _enter(self, z: torch.Tensor) -> torch.Tensor:
        """Direct: ``z`` itself; fft: its unitary half spectrum as real ``(F, 2C, b)``."""
        if not self.spectral:
            return z
        b, c = z.shape[0], z.shape[1]
        v = torch.view_as_real(torch.fft.rfftn(z, dim=self.dims, norm="ortho"))
        return v.reshape(b, c, -1, 2).permute(2, 3, 1, 0).reshape(-1, 2 * c, b).contiguous()

    def _leave(self, v: torch.Tensor) -> torch.Tensor:
        if not self.spectral:
            return v
        f, c2, b = v.shape
        c = c2 // 2
        half: List[int] = self.signal_shape[:-1] + [self.signal_shape[-1] // 2 + 1]
        parts = v.reshape(f, 2, c, b).permute(3, 2, 0, 1).contiguous()
        x_hat = torch.view_as_complex(parts).reshape([b, c] + half)
        return torch.fft.irfftn(x_hat, s=self.signal_shape, dim=self.dims, norm="ortho")

    def _operators(self) -> List[torch.Tensor]:
        ops: List[torch.Tensor] = []
        for layer in self.layers:
            ops.append(layer.operators())
        return ops

    def _run(self, x: torch.Tensor, features: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        return self._run_with(x, features, self._operators())

    def _run_with(self, x: torch.Tensor, features: bool,
                  ops: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.signal_ndim > 0 and x.dim() == self.signal_ndim + 1:
            x = x.unsqueeze(1)
        z = self._enter(self.lifting(x))
        logits = torch.zeros(0, dtype=x.dtype, device=x.device)
        for index, layer in enumerate(self.layers):
            if index == self.n_layers - 1 and not features:
                logits = layer.scores_with(z, ops[index])
            else:
                z, logits = layer.step(z, ops[index])
        return (self._leave(z) if features else z), logits

    def _run_in_chunks(self, x: torch.Tensor,
                       features: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        """:meth:`_run` over blocks of ``chunk_size`` samples (not when tracing).

        Large batches are cut so that a layer's responses stay near
        ``CHUNK_BYTES``: the temporaries then stay in cache and the
        allocator reuses them (measured 2-3x faster on 1,000 MNIST-1D
        signals). The kernels' spectra are computed once for all blocks.
        """
        n = x.shape[0]
        if torch.jit.is_tracing() or n <= self.chunk_size:
            return self._run(x, features)
        ops = self._operators()
        zs: List[torch.Tensor] = []
        ls: List[torch.Tensor] = []
        for start in range(0, n, self.chunk_size):
            z, logits = self._run_with(x[start:start + self.chunk_size], features, ops)
            if features:
                zs.append(z)
            ls.append(logits)
        if not features:  # only the scores are wanted (z is a spectrum, batch last)
            return torch.zeros(0, dtype=x.dtype, device=x.device), torch.cat(ls, dim=0)
        return torch.cat(zs, dim=0), torch.cat(ls, dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run_in_chunks(x, True)[0]

    @torch.jit.export
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``-lmbda ||C^j z||_F`` of the last layer, ``(b, k)``: class scores."""
        return self._run_in_chunks(x, False)[1]

    @torch.jit.export
    def membership(self, x: torch.Tensor) -> torch.Tensor:
        """The last layer's estimated membership ``pi``, ``(b, k)``."""
        return torch.softmax(self._run_in_chunks(x, False)[1], dim=1)

    @torch.jit.export
    def subspace_distances(self, x: torch.Tensor) -> torch.Tensor:
        """Squared distances to the class subspaces, ``(b, k)`` (``classifier="subspace"``)."""
        if not self.use_subspace:
            raise RuntimeError("the network was exported without class subspaces "
                               "(classifier='membership')")
        return self.head(self._run(x)[0])

    @torch.jit.export
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Labels: ``classes[argmax_j pi_j]``, or the nearest subspace's.

        The latter when the network was fitted with ``classifier="subspace"``.
        """
        if self.use_subspace:
            return self.classes[torch.argmin(self.subspace_distances(x), dim=1)]
        return self.classes[torch.argmax(self._run_in_chunks(x, False)[1], dim=1)]

    @torch.jit.export
    def subspace_distances(self, x: torch.Tensor) -> torch.Tensor:
        """Squared distances of the features to each class subspace, ``(b, k)``."""
        return self.head(self._run_in_chunks(x, True)[0])

    def with_conv(self, conv):
        """A copy of this module (same parameters, copied) whose layers run as ``conv``.

        Parameters
        ----------
        conv : {"fft", "direct", "auto"}
        """
        _check_conv(conv)
        if self.signal_ndim == 0:
            return copy.deepcopy(self)
        if conv == "auto":
            conv = choose_conv(self.layers[0].kernel_shape[0], self.signal_ndim)
        new = copy.deepcopy(self)
        new.conv, new.spectral = conv, conv == "fft"
        for layer in new.layers:
            layer.mode, layer.spectral = conv, conv == "fft"
        return new


class ExportGraph(nn.Module):
    """``x -> (features, scores, labels)`` in one graph, for ONNX and other deployments.

    ``x`` is reshaped to ``(b, *input_shape)`` first, so ``(b, C_in, *S)``,
    ``(b, *S)`` (one input channel) and flattened ``(b, n_features)`` all work
    in PyTorch.
    ``features`` ``(b, C, *S)`` as ``net.transform``, ``scores`` ``(b, k)``
    the membership ``pi`` (as ``net.predict_proba``), ``labels`` ``(b,)``
    as ``net.predict``.
    """

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = x.reshape([-1] + self.module.input_shape)
        z, logits = self.module._run(x, True)
        scores = torch.softmax(logits, dim=1)
        if self.module.use_subspace:
            labels = self.module.classes[torch.argmin(self.module.head(z), dim=1)]
        else:
            labels = self.module.classes[torch.argmax(logits, dim=1)]
        return z, scores, labels


ONNX_OUTPUTS = ("features", "scores", "labels")
ONNX_OPSET = 17


def export_onnx(module, path, opset=ONNX_OPSET):
    """Write ``module`` (a :class:`ReduNetModule`) as an ONNX file.

    The graph has one input ``"x"`` ``(b, *input_shape)`` (``(b, C_in, *S)``
    or vectors ``(b, d)``; ONNX fixes an input's rank, so a one-channel batch
    ``(b, *S)`` needs ``x[:, None]``, which the module itself does not) and
    three outputs: ``"features"`` ``(b, C, *S)``,
    ``"scores"`` ``(b, k)`` (the membership ``pi``) and ``"labels"`` ``(b,)``.
    ONNX has no complex tensors, so the layers are exported as direct
    circular convolutions (``module.with_conv("direct")``, same numbers);
    opset 17 by default, through the TorchScript-based exporter.

    Parameters
    ----------
    module : ReduNetModule
    path : str or path-like
    opset : int
    """
    import warnings

    if not isinstance(module, ReduNetModule):
        raise TypeError(f"module must be a ReduNetModule (from to_torch), got "
                        f"{type(module).__name__}")
    graph = ExportGraph(module.with_conv("direct")).eval()
    dtype = next(module.parameters()).dtype
    example = torch.zeros([2] + module.input_shape, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=["x"], output_names=list(ONNX_OUTPUTS),
                          dynamic_axes={"x": {0: "batch"}, "features": {0: "batch"},
                                        "scores": {0: "batch"}, "labels": {0: "batch"}})


def _check_conv(conv):
    if not isinstance(conv, str) or conv not in CONV_MODES:
        raise ValueError(f"conv must be one of {', '.join(map(repr, CONV_MODES))}, "
                         f"got {conv!r}")


def to_torch(net, dtype=torch.float32, kernel_size=None, conv="auto"):
    """Export a fitted ReduNet1D / ReduNet2D / ReduNetVector to a ``torch.nn.Module``.

    Parameters
    ----------
    net : fitted estimator
    dtype : torch.float32 or torch.float64
    kernel_size : int or None
        Keep only the ``kernel_size`` (2D: square) central taps of each layer
        kernel; None keeps all (exact). Use :func:`kernel_energy_kept` to see
        what a size keeps.
    conv : {"auto", "fft", "direct"}
        How the layers run (the module's parameters are the same): direct
        circular convolutions, or per-frequency products after ``rfftn``;
        ``"auto"`` picks by cost (:func:`choose_conv`). Ignored for vectors.

    Returns
    -------
    ReduNetModule
    """
    parts = _network_parts(net)
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    _check_conv(conv)
    signal_shape = parts["signal_shape"]
    nd = len(signal_shape)
    if kernel_size is not None:
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, (int, np.integer)) \
                or kernel_size < 1:
            raise ValueError(f"kernel_size must be a positive integer or None, got "
                             f"{kernel_size!r}")
        if nd == 0:
            raise ValueError("kernel_size applies to signals; a ReduNetVector has none")
        if any(kernel_size > n for n in signal_shape):
            raise ValueError(f"kernel_size must be at most the signal size "
                             f"{signal_shape}, got {kernel_size}")
        kernel_size = int(kernel_size)
    if nd == 0:
        mode = "linear"
    elif conv == "auto":
        size = max(signal_shape) if kernel_size is None else kernel_size
        mode = choose_conv(size, nd)
    else:
        mode = conv
    lifting_parts = parts["lifting"]
    if lifting_parts is None:
        lifting = Normalize()
    else:
        modules = [_circular_conv(lifting_parts.kernels, dtype, lifting_parts.bias)]
        if lifting_parts.nonlinearity == "relu":
            modules.append(nn.ReLU())
        elif lifting_parts.nonlinearity == "abs":
            modules.append(_Abs())
        lifting = nn.Sequential(*modules, Normalize())
    layers = []
    for layer, (e, c) in zip(parts["layers"], _layer_kernels(parts)):
        stacked = np.concatenate([e[None], c], axis=0)  # (1+k, C, C, *S)
        stacked = stacked.reshape((-1,) + stacked.shape[2:])
        if nd:
            stacked = centred_kernels(stacked, kernel_size)
        layers.append(ReduNetLayer(stacked, layer.gamma, layer.eta, layer.lmbda, signal_shape,
                                   mode, dtype))
    classes = parts["classes"]
    if classes.dtype.kind not in "biuf":
        classes = np.arange(len(classes))  # non-numeric labels: predict returns indices
    head = None
    if net.classifier == "subspace":
        head = _subspace_head(net, dtype, kernel_size)
    return ReduNetModule(lifting, layers, np.asarray(classes), signal_shape,
                         "direct" if mode == "linear" else mode, parts["input_shape"], head)
