"""Export a fitted ReduNet to PyTorch as ordinary (circular) convolutions.

Every operator of SPEC.md is a circular convolution whose kernel is the
inverse DFT of its per-frequency blocks, so the whole network becomes a CNN
of standard modules: circular padding (``nn.CircularPad1d/2d``), ``nn.Conv1d``
/ ``nn.Conv2d`` without bias, the nonlinearity, and a few tensor operations for
the soft membership and the normalization. No FFT and no complex numbers:
the module traces, scripts and exports to ONNX like any CNN, and its weights
can be fine-tuned by backpropagation.

Kernel layout. A kernel with ``K`` taps per axis puts tap ``r`` at offset
``r - (K - 1) // 2`` (centred), as the lifting does. PyTorch convolutions are
cross-correlations, so the weight is the kernel flipped, and circular padding
of ``K - 1 - (K - 1)//2`` before and ``(K - 1)//2`` after keeps the length.
With ``K`` equal to the signal size every offset appears once and the export
is exact; a smaller ``kernel_size`` keeps the ``K`` central taps.
"""
from typing import Tuple

import numpy as np
import torch
from torch import nn

from . import spectral
from sklearn.utils.validation import check_is_fitted

from .backend import resolve

__all__ = ["to_torch", "ReduNetModule", "kernel_energy_kept", "centred_kernels"]


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
    kept = total = 0.0
    for e, c in _layer_kernels(net):
        for kern in (e, c.reshape((-1,) + c.shape[2:])):
            total += float(np.sum(kern ** 2))
            kept += float(np.sum(centred_kernels(kern, kernel_size) ** 2))
    return kept / total


def _layer_kernels(net):
    """Real kernels (E (C, C, *S), C (k, C, C, *S)) of every layer, numpy float64."""
    workspace = resolve("numpy", None, "float64")
    backend = workspace.backend
    for layer in net.network_.to(workspace).layers:
        e_hat, c_hat = layer.operators_hat(backend)
        yield (spectral.operator_kernels(backend, e_hat, net.signal_shape_),
               spectral.operator_kernels(backend, c_hat, net.signal_shape_))


def _circular_conv(kernels, dtype, bias=None):
    """``nn.Sequential(CircularPad, Conv)`` computing ``sum_c' k[c, c'] (*) x_c' (+ bias)``.

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
    return nn.Sequential(pad_cls(tuple(pads)), conv)


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


class ReduNetLayer(nn.Module):
    """``z+ = normalize(z + eta (E z - sum_j gamma_j pi_j C^j z))`` with convolutions.

    ``expand`` maps C -> C channels (``E``), ``compress`` C -> k*C (every
    ``C^j`` stacked); ``pi = softmax(-lmbda ||C^j z||_F)``.
    """

    def __init__(self, expand, compress, gamma, eta, lmbda, n_classes, dtype):
        super().__init__()
        self.expand = expand
        self.compress = compress
        self.register_buffer("gamma", torch.as_tensor(gamma, dtype=dtype))
        self.eta = float(eta)
        self.lmbda = float(lmbda)
        self.n_classes = int(n_classes)
        self.normalize = Normalize()

    def logits(self, c: torch.Tensor) -> torch.Tensor:
        """``-lmbda ||C^j z||_F`` per class, ``(b, k)``, from stacked responses."""
        b = c.shape[0]
        flat = c.reshape(b, self.n_classes, -1)
        return -self.lmbda * torch.sqrt((flat * flat).sum(dim=2))

    def forward(self, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        b = z.shape[0]
        u = self.expand(z)
        c = self.compress(z)
        logits = self.logits(c)
        pi = torch.softmax(logits, dim=1)
        weight = pi * self.gamma  # (b, k)
        cj = c.reshape([b, self.n_classes] + list(z.shape[1:]))
        shape = [b, self.n_classes] + [1] * (z.dim() - 1)
        compressed = (cj * weight.reshape(shape)).sum(dim=1)
        return self.normalize(z + self.eta * (u - compressed)), logits


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
    """A fitted ReduNet as a standard PyTorch module.

    ``forward(x)`` returns the features after the last layer (as
    ``net.transform``); ``predict(x)`` the labels (as ``net.predict``),
    ``membership(x)`` the last layer's ``pi`` and ``logits(x)`` its
    ``-lmbda ||C^j z||`` (use these with cross-entropy to fine-tune). With
    ``classifier="subspace"``, ``subspace_distances(x)`` gives the squared
    distances to the class subspaces and ``predict`` their argmin.

    Input ``x``: ``(b, *signal_shape)`` or ``(b, C_in, *signal_shape)``;
    vectors ``(b, d)``.
    """

    def __init__(self, lifting, layers, classes, signal_ndim, head=None):
        super().__init__()
        self.lifting = lifting
        self.layers = nn.ModuleList(layers)
        self.register_buffer("classes", torch.as_tensor(classes))
        self.signal_ndim = int(signal_ndim)
        self.use_subspace = head is not None
        self.head = head if head is not None else nn.Identity()

    def _run(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.signal_ndim > 0 and x.dim() == self.signal_ndim + 1:
            x = x.unsqueeze(1)
        z = self.lifting(x)
        logits = torch.zeros(0, dtype=z.dtype, device=z.device)
        for layer in self.layers:
            z, logits = layer(z)
        return z, logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x)[0]

    @torch.jit.export
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``-lmbda ||C^j z||_F`` of the last layer, ``(b, k)``: class scores."""
        return self._run(x)[1]

    @torch.jit.export
    def membership(self, x: torch.Tensor) -> torch.Tensor:
        """The last layer's estimated membership ``pi``, ``(b, k)``."""
        return torch.softmax(self._run(x)[1], dim=1)

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
        z, logits = self._run(x)
        if self.use_subspace:
            return self.classes[torch.argmin(self.head(z), dim=1)]
        return self.classes[torch.argmax(logits, dim=1)]


def to_torch(net, dtype=torch.float32, kernel_size=None):
    """Export a fitted ReduNet1D / ReduNet2D / ReduNetVector to a ``torch.nn.Module``.

    Parameters
    ----------
    net : fitted estimator
    dtype : torch.float32 or torch.float64
    kernel_size : int or None
        Keep only the ``kernel_size`` (2D: square) central taps of each layer
        kernel; None keeps all (exact). Use :func:`kernel_energy_kept` to see
        what a size keeps.

    Returns
    -------
    ReduNetModule
    """
    check_is_fitted(net, "network_")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    nd = len(net.signal_shape_)
    if kernel_size is not None:
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1:
            raise ValueError(f"kernel_size must be a positive integer or None, got "
                             f"{kernel_size!r}")
        if nd == 0:
            raise ValueError("kernel_size applies to signals; a ReduNetVector has none")
        if any(kernel_size > n for n in net.signal_shape_):
            raise ValueError(f"kernel_size must be at most the signal size "
                             f"{net.signal_shape_}, got {kernel_size}")
    if net.lifting_ is None:
        lifting = Normalize()
    else:
        parts = [_circular_conv(net.lifting_.kernels, dtype, net.lifting_.bias)]
        if net.lifting_.nonlinearity == "relu":
            parts.append(nn.ReLU())
        elif net.lifting_.nonlinearity == "abs":
            parts.append(_Abs())
        lifting = nn.Sequential(*parts, Normalize())
    layers = []
    for layer, (e, c) in zip(net.layers_, _layer_kernels(net)):
        k = c.shape[0]
        if nd == 0:
            expand, compress = _linear(e, dtype), _linear(c.reshape(-1, c.shape[-1]), dtype)
        else:
            c_flat = c.reshape((-1,) + c.shape[2:])
            expand = _circular_conv(centred_kernels(e, kernel_size), dtype)
            compress = _circular_conv(centred_kernels(c_flat, kernel_size), dtype)
        layers.append(ReduNetLayer(expand, compress, layer.gamma, layer.eta, layer.lmbda, k,
                                   dtype))
    classes = net.classes_
    if classes.dtype.kind not in "biuf":
        classes = np.arange(len(classes))  # non-numeric labels: predict returns indices
    head = None
    if net.classifier == "subspace":
        net._check_subspaces()
        head = _subspace_head(net, dtype, kernel_size)
    return ReduNetModule(lifting, layers, np.asarray(classes), nd, head)


class _Abs(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.abs(z)
