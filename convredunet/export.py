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
    batched complex product per operator with its kernels' spectrum
    ``(F, C, C)``, the membership norms from the half spectrum with its
    weights (2 for a frequency whose conjugate twin is not stored), and the
    normalization by Parseval, so the layers never leave the frequency
    domain; one ``irfftn`` at the end. Cheap for full-size kernels. Scripts
    and traces. The ONNX exporter has no complex tensors: an ONNX file runs
    the same per-frequency products in real arithmetic (:class:`ExportGraph`).
``"auto"``
    ``"direct"`` when the kernels are short, ``"fft"`` otherwise (see
    :func:`choose_conv`).

Both modes hold the same parameters (the same ``state_dict``), so a module
fine-tuned in one mode runs in the other: :meth:`ReduNetModule.with_conv`.

What is refused. A module (eager or TorchScript, either mode) refuses any
input but ``(b, C_in, *S)`` or, for one input channel, ``(b, *S)``, another
dtype, and NaN or infinity (:meth:`ReduNetModule.check_input`); an ONNX file
accepts those shapes and the flattened ``(b, prod(input_shape))``, and fails
at run time on any other (:func:`export_onnx`). Both prescale each sample by
the library's power of two, so extreme finite inputs keep the library's numbers.

Kernel layout. A kernel with ``K`` taps per axis puts tap ``r`` at offset
``r - (K - 1) // 2`` (centred), as the lifting does. PyTorch convolutions are
cross-correlations, so the weight is the kernel flipped, and circular padding
of ``K - 1 - (K - 1)//2`` before and ``(K - 1)//2`` after keeps the length.
With ``K`` equal to the signal size every offset appears once and the export
is exact; a smaller ``kernel_size`` keeps the ``K`` central taps.
"""
import copy
import math
from typing import Final, List, Tuple

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted
from torch import nn

from . import spectral
from .backend import resolve

__all__ = ["to_torch", "export_onnx", "ReduNetModule", "ReduNetLayer", "SubspaceHead",
           "RealDFT", "ExportGraph",
           "kernel_energy_kept", "centred_kernels", "choose_conv"]

CONV_MODES = ("auto", "fft", "direct")
# "auto" runs a layer by FFT when its kernel has more taps than this (per
# signal; K in 1D, K*K in 2D). Measured on one CPU thread (bench/export_mnist1d.py):
# the FFT path costs about as much as a direct convolution of ~4 taps.
AUTO_DIRECT_MAX_TAPS = 4
# Bytes of layer responses per block of samples in predict/forward (see ReduNetModule._run).
# Direct mode (every response at once): the library's one budget for work arrays,
# spectral.CHUNK_BYTES (256 MiB); the batched products' arithmetic intensity grows
# with the block. FFT mode (one operator's response (F, C, b) at a
# time): 10 MiB, so work arrays stay small enough to be reused by the allocator instead
# of being mapped afresh (page faults); on one thread, MNIST-1D at 256 channels (1,000
# signals, float64) took 4.33 / 3.87 / 3.63 / 4.07 / 5.65 s with blocks of 32 / 64 /
# 128 / 256 / 512 signals (float32: 2.40 / 2.03 / 1.92 / 1.87 / 2.16 s).
CHUNK_BYTES = spectral.CHUNK_BYTES
SPECTRAL_CHUNK_BYTES = 10 << 20
MIN_CHUNK = 64
MIN_SPECTRAL_CHUNK = 16
# Inference without autograd keeps the layers' operators (the kernels' spectra as
# real blocks) between calls when all of them take at most this much memory.
OPS_CACHE_BYTES = 1 << 30


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
    float in [0, 1], over every E and C^j kernel of every layer; 1.0 for a network
    without a layer (there is nothing to truncate).
    """
    parts = _network_parts(net)
    kept = total = 0.0
    for e, c in _layer_kernels(parts):
        for kern in (e, c.reshape((-1,) + c.shape[2:])):
            total += float(np.sum(kern ** 2))
            kept += float(np.sum(centred_kernels(kern, kernel_size) ** 2))
    return kept / total if total > 0 else 1.0


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
    pads = []
    for k in reversed(sizes):  # torch pads the last axis first
        pads += [k - 1 - (k - 1) // 2, (k - 1) // 2]
    conv_cls, pad_cls = (nn.Conv1d, nn.CircularPad1d) if nd == 1 else (nn.Conv2d,
                                                                         nn.CircularPad2d)
    # skip_init: no random initialization of weights about to be overwritten.
    conv = nn.utils.skip_init(conv_cls, kernels.shape[1], kernels.shape[0], tuple(sizes),
                              bias=bias is not None, dtype=dtype)
    with torch.no_grad():
        # The weight is the kernel flipped (a cross-correlation): one copy, flip and cast.
        conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernels)).flip(
            list(range(2, 2 + nd))))
        if bias is not None:
            conv.bias.copy_(torch.from_numpy(np.asarray(bias)))
    return pad_cls(tuple(pads)), conv


def _circular_conv(kernels, dtype, bias=None):
    return nn.Sequential(*_conv_modules(kernels, dtype, bias))


class LiftingConv(nn.Module):
    """The lifting's circular convolution ``K (*) x + s b``: one ``Conv`` per dilation.

    The output channels come in runs of equal dilation
    (:meth:`convredunet.network.Lifting.groups`); each run is an ordinary
    ``nn.Conv1d`` / ``nn.Conv2d`` with ``dilation=d`` behind circular padding
    of ``d (K - 1)`` positions, and the runs are concatenated. ``bias``
    ``(C,)`` is a parameter (zeros, a buffer, without a lifting bias).
    ``forward(x, scale)`` takes each sample's power of two ``scale`` ``(b,)``,
    by which ``x`` was multiplied, and scales the bias along.
    """

    has_bias: Final[bool]

    def __init__(self, kernels, groups, dtype, bias=None):
        super().__init__()
        nd = kernels.ndim - 2
        size = kernels.shape[2]
        convs = []
        for dilation, channels in groups:
            weight = np.flip(kernels[channels], axis=tuple(range(2, 2 + nd))).copy()
            pads = [dilation * (size - 1 - (size - 1) // 2), dilation * ((size - 1) // 2)] * nd
            conv_cls, pad_cls = (nn.Conv1d, nn.CircularPad1d) if nd == 1 else (
                nn.Conv2d, nn.CircularPad2d)
            conv = conv_cls(weight.shape[1], weight.shape[0], (size,) * nd, dilation=dilation,
                            bias=False, dtype=dtype)
            with torch.no_grad():
                conv.weight.copy_(torch.from_numpy(weight))
            convs.append(nn.Sequential(pad_cls(tuple(pads)), conv))
        self.convs = nn.ModuleList(convs)
        self.n_out = int(kernels.shape[0])
        self.signal_ndim = nd
        self.has_bias = bias is not None
        values = torch.as_tensor(np.zeros(self.n_out) if bias is None else np.asarray(bias),
                                 dtype=dtype)
        if self.has_bias:
            self.bias = nn.Parameter(values)
        else:
            self.register_buffer("bias", values)

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        parts: List[torch.Tensor] = []
        for conv in self.convs:
            parts.append(conv(x))
        z = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        if self.has_bias:
            shape = [1, -1] + [1] * self.signal_ndim
            z = z + self.bias.reshape(shape) * scale.reshape([-1, 1] + [1] * self.signal_ndim)
        return z


class LiftingModule(nn.Module):
    """``normalize(sigma(K (*) x + s b))``: :class:`LiftingConv`, then ``post`` (sigma, normalize)."""

    def __init__(self, conv, post):
        super().__init__()
        self.conv = conv
        self.post = post

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self.post(self.conv(x, scale))


def _linear(matrix, dtype):
    linear = nn.Linear(matrix.shape[1], matrix.shape[0], bias=False, dtype=dtype)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(matrix)))
    return linear


def pow2_scale(peak: torch.Tensor, limit: float) -> torch.Tensor:
    """Powers of two ``s`` with ``peak * s`` in ``[0.5, 1)``, ``|log2 s| <= limit``.

    What :meth:`convredunet.backend.NumpyBackend.pow2_scale` computes, with
    operations that script and export to ONNX (``log2``, ``floor``, ``pow``;
    exact for the integer exponents used). ``peak`` ``(b,)`` non-negative; a
    0 gives ``2^limit`` (harmless: it multiplies zeros).
    """
    exponent = (torch.floor(torch.log2(peak.detach())) + 1.0).clamp(-limit, limit)
    return torch.pow(2.0, -exponent).to(peak.dtype)


def _max_exponent(x: torch.Tensor) -> float:
    """``|log2|`` of the largest power of two a scale may have for ``x``'s dtype (as numpy's)."""
    return 1022.0 if x.dtype == torch.float64 else 126.0


class Normalize(nn.Module):
    """Scale every sample to unit Frobenius norm (samples of norm 0 stay 0).

    As :func:`convredunet.network.normalize`: each sample is first scaled by
    the power of two that brings its largest entry into ``[0.5, 1)``, so the
    sum of squares neither overflows nor underflows, whatever its scale; the
    scaling is exact, so the result is that of ``z / ||z||`` where that one is
    representable.
    """

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        flat = z.flatten(1)
        flat = flat * pow2_scale(flat.abs().amax(dim=1), _max_exponent(z)).unsqueeze(1)
        norms = torch.sqrt((flat * flat).sum(dim=1)).clamp_min(1e-30)
        return (flat / norms.unsqueeze(1)).reshape(z.shape)


def _dtype_name(x: torch.Tensor) -> str:
    """``"float32"``, ``"float64"``, ... of a tensor, in words (TorchScript-friendly)."""
    if x.dtype == torch.float32:
        return "float32"
    if x.dtype == torch.float64:
        return "float64"
    if x.dtype == torch.float16:
        return "float16"
    if x.dtype == torch.bfloat16:
        return "bfloat16"
    if x.is_complex():
        return "complex"
    return "non-float (integer or bool)"


def _accepted_shapes(input_shape, signal_ndim, flattened=False):
    """The per-sample shapes an exported network accepts, as lists, without repeats.

    ``input_shape``; the signal alone when there is one input channel; with
    ``flattened`` (ONNX) also ``(prod(input_shape),)``.
    """
    shapes = [list(input_shape)]
    if signal_ndim and input_shape[0] == 1:
        shapes.append(list(input_shape[1:]))
    if flattened:
        shapes.append([math.prod(input_shape)])
    unique = []
    for shape in shapes:
        if shape not in unique:
            unique.append(shape)
    return unique


def _shape_rule(input_shape, signal_ndim, flattened=False):
    """``"(batch, 1, 16) or (batch, 16)"``: the accepted input shapes, in words."""
    forms = ["(batch, " + ", ".join(map(str, shape)) + ")"
             for shape in _accepted_shapes(input_shape, signal_ndim, flattened)]
    return forms[0] if len(forms) == 1 else ", ".join(forms[:-1]) + " or " + forms[-1]


class _Abs(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.abs(z)


def _weighted_sum(freq_weights: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``sum_p w_p x[p]`` over the first axis of ``x`` ``(F, ...)``, as one product."""
    shape = x.shape[1:]
    return torch.matmul(freq_weights, x.reshape(x.shape[0], -1)).reshape(shape)


def _pair_sums(x: torch.Tensor) -> torch.Tensor:
    """``sum_{c, part} x[n, c, b, part]`` ``(N, b)`` of ``(N, C, b, 2)`` real pairs.

    Summed over the channels first, with the sample and part axes together
    as the contiguous inner axis: a reduction over the axes (1, 3) at once
    was 17 times slower (float64, 256 channels, 148 samples).
    """
    n, c, b = x.shape[0], x.shape[1], x.shape[2]
    return x.reshape(n, c, 2 * b).sum(dim=1).reshape(n, b, 2).sum(dim=-1)


def _sq_norms(x: torch.Tensor) -> torch.Tensor:
    """``sum_c |x[p, c, b]|^2`` ``(F, b)`` of real-pair spectra ``(F, C, b, 2)``."""
    return _pair_sums(x * x)


def update_from_responses(z: torch.Tensor, responses: List[torch.Tensor], gamma: torch.Tensor,
                          freq_weights: torch.Tensor, eta: float,
                          lmbda: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """The layer's update from its responses, on spectra in real-pair form.

    ``z`` ``(F, C, b, 2)``: the features' unitary half spectra, real and
    imaginary parts last (``torch.view_as_real`` of the complex ``(F, C, b)``);
    ``responses``: ``E z``, then ``C^j z`` for every class in order, each in
    the same form. Returns the next features ``normalize(z + eta (E z -
    sum_j gamma_j pi_j C^j z))`` ``(F, C, b, 2)`` (normalized by Parseval
    with the half-spectrum weights) and ``-lmbda ||C^j z||_F`` ``(b, k)``.

    Written once for every way the products are formed: complex matrix
    products in the module, real ones in an ONNX graph (:class:`ExportGraph`);
    with low-rank classes (:meth:`ReduNetLayer.step`) the norms and the
    compression come from the Woodbury factors, and :func:`membership_weights`
    and :func:`finish_step` are shared. Made of operations every ONNX opset
    the exporter writes has.
    """
    update, logits = direction_from_responses(responses, gamma, freq_weights, lmbda)
    return finish_step(z, update, eta, freq_weights), logits


def direction_from_responses(responses: List[torch.Tensor], gamma: torch.Tensor,
                             freq_weights: torch.Tensor,
                             lmbda: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(E z - sum_j gamma_j pi_j C^j z, -lmbda ||C^j z||_F)`` from the responses (real pairs)."""
    classes = responses[1:]
    logits, weight = membership_weights(class_sq_norms(classes, freq_weights), gamma, lmbda)
    # One work array, accumulated in place (its gradient needs none of its values).
    compressed = classes[0] * weight[0].unsqueeze(-1)
    for j in range(1, len(classes)):
        compressed.addcmul_(classes[j], weight[j].unsqueeze(-1))
    return responses[0] - compressed, logits


def membership_weights(sq: torch.Tensor, gamma: torch.Tensor,
                       lmbda: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(-lmbda ||C^j z||, gamma_j pi_j)``: ``(b, k)`` and ``(k, b)`` from ``||C^j z||^2``."""
    logits = -lmbda * torch.sqrt(sq.clamp_min(0.0))
    return logits, (torch.softmax(logits, dim=1) * gamma).t()


def finish_step(z: torch.Tensor, update: torch.Tensor, eta: float,
                freq_weights: torch.Tensor) -> torch.Tensor:
    """``normalize(z + eta update)`` on real-pair spectra ``(F, C, b, 2)`` (Parseval norm)."""
    step = torch.add(z, update, alpha=eta)
    return step / spectral_norms(step, freq_weights).unsqueeze(-1)


def spectral_norms(x: torch.Tensor, freq_weights: torch.Tensor) -> torch.Tensor:
    """Each sample's norm ``(b,)`` from its real-pair half spectrum ``(F, C, b, 2)``."""
    return torch.sqrt(_weighted_sum(freq_weights, _sq_norms(x))).clamp_min(1e-30)


def class_sq_norms(classes: List[torch.Tensor], freq_weights: torch.Tensor) -> torch.Tensor:
    """``||C^j z||^2`` ``(b, k)`` from the responses ``C^j z`` ``(F, C, b, 2)`` (real pairs)."""
    parts: List[torch.Tensor] = []
    for cj in classes:
        parts.append(_sq_norms(cj))
    return _weighted_sum(freq_weights, torch.stack(parts, dim=1)).t()


def _dft_matrix(kernel_size, n, dtype):
    """``(2F, K)``: rows ``Re``, then ``Im`` of the operator spectrum at each stored frequency.

    Tap ``r`` of a weight (the kernel flipped) sits at cyclic offset ``K//2 - r``,
    so ``A(p) = sum_r w[r] exp(-2 pi i p (K//2 - r) / n)``, ``p = 0 .. n//2``.
    """
    p = np.arange(n // 2 + 1)[:, None]
    offset = (kernel_size // 2 - np.arange(kernel_size))[None, :]
    angle = 2 * np.pi * p * offset / n
    return torch.as_tensor(np.concatenate([np.cos(angle), -np.sin(angle)]), dtype=dtype)


class _KernelSpectrum(torch.autograd.Function):
    """``A(p) = sum_r w[r] exp(-i theta_pr)`` from real weights ``(C, C, K)``: ``(F, C, C)`` complex.

    ``dft`` ``(2F, K)`` holds the cosines over the sines (:func:`_dft_matrix`).
    Forward one product ``dft @ w^T``; backward ``(dft^T @ [Re g; Im g])^T``:
    autograd's own gradient of the first product runs a transposed skinny
    product several times slower.
    """

    @staticmethod
    def forward(ctx, weight, dft):
        ctx.save_for_backward(dft)
        rows, cols = weight.shape[0], weight.shape[1]
        f = dft.shape[0] // 2
        parts = torch.matmul(dft, weight.reshape(rows * cols, -1).t()).reshape(2, f, rows, cols)
        return torch.complex(parts[0], parts[1])

    @staticmethod
    def backward(ctx, grad):
        dft, = ctx.saved_tensors
        f, rows, cols = grad.shape
        parts = torch.cat([grad.real, grad.imag]).reshape(2 * f, rows * cols)
        return torch.matmul(dft.t(), parts).t().reshape(rows, cols, -1), None


@torch.jit.unused
def _kernel_spectrum(weight: torch.Tensor, dft: torch.Tensor) -> torch.Tensor:
    return _KernelSpectrum.apply(weight, dft)


class ReduNetLayer(nn.Module):
    """``z+ = normalize(z + eta (E z - sum_j gamma_j pi_j C^j z))``.

    ``pi = softmax(-lmbda ||C^j z||_F)``, the estimated membership.

    One convolution ``conv`` maps C channels to ``(1 + k) C``: ``E`` on top of
    every ``C^j`` in class order. ``mode`` is ``"direct"`` (input and output
    ``(b, C, *S)``), ``"fft"`` (unitary half spectra ``(F, C, b)``, complex)
    or ``"linear"`` (vectors ``(b, d)``, ``conv`` an ``nn.Linear``).

    In ``"fft"`` mode the operators are the kernels' spectra, one ``(F, C, C)``
    complex block per operator (:meth:`operators`, :meth:`block_hat`): for 1D
    signals one real matrix product of the weights with the kernels' DFT
    matrix, for 2D ``torch.fft.rfftn``; the step is one batched complex product
    per operator, then :func:`update_from_responses`. The closed form's own
    operators (:func:`closed_form_operators`, with Woodbury factors for
    low-rank classes) are applied by the same :meth:`step`.
    """

    signal_shape: List[int]
    kernel_shape: List[int]
    dims: List[int]
    freq_first: List[int]
    freq_dims: List[int]

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
        # Positions per channel (1 for vectors): explicit sizes in reshapes keep a
        # batch of 0 samples working in exported graphs (no -1 to infer from 0).
        self.n_positions = int(math.prod(signal_shape)) if signal_shape else 1
        nd = len(signal_shape)
        self.dims: List[int] = list(range(2, 2 + nd))
        # The spectrum of the weight with its frequency axes first, so that it comes
        # out as (F, rows, cols) without transposing a complex array.
        self.freq_first: List[int] = [d for d in range(2, 2 + nd)] + [0, 1]
        self.freq_dims: List[int] = list(range(nd))
        # Tap r of a weight (the kernel flipped) sits at cyclic offset K//2 - r: its
        # DFT is exp(-2 pi i p (K//2) / n) conj(rfftn(weight, s=S)) (real weights).
        angle = np.zeros(1)
        for axis, (n, k) in enumerate(zip(signal_shape, kernel_shape)):
            m = n // 2 + 1 if axis == nd - 1 else n
            angle = (angle[:, None] - 2 * np.pi * np.arange(m) * (k // 2) / n).reshape(-1)
        self.register_buffer("phase", torch.as_tensor(
            np.stack([np.cos(angle), np.sin(angle)], axis=-1), dtype=dtype))
        self.register_buffer("gamma", torch.as_tensor(np.asarray(gamma), dtype=dtype))
        self.register_buffer("freq_weights", torch.as_tensor(
            spectral.half_spectrum_weights(signal_shape), dtype=dtype))
        # 1D: the kernels' spectra as one product with this (2F, K) matrix.
        dft = _dft_matrix(kernel_shape[0], signal_shape[0], dtype) if nd == 1 else \
            torch.zeros(0, dtype=dtype)
        self.register_buffer("dft", dft, persistent=False)

    def block_hat(self, index: int) -> torch.Tensor:
        """Operator ``index`` (0: ``E``, ``1 + j``: ``C^j``) on the half spectrum, ``(F, C, C)``.

        The unnormalized DFT of its kernels, complex: in 1D one real product of
        the weights with the kernels' DFT matrix, in 2D ``torch.fft.rfftn``.
        One block at a time keeps every array operator-block sized.
        """
        c = self.n_channels
        return self._block_hat(self.conv.weight[index * c:(index + 1) * c])

    def _block_hat(self, weight: torch.Tensor) -> torch.Tensor:
        """:meth:`block_hat` of the weights ``(C, C, *K)`` of one operator."""
        c = weight.shape[0]
        if len(self.signal_shape) == 1:
            dft = self.dft.to(weight.dtype)
            if not torch.jit.is_scripting() and not torch.jit.is_tracing():
                return _kernel_spectrum(weight, dft)
            # (2F, K) @ (K, C C): the weights' transpose is a view, not a copy.
            parts = torch.matmul(dft, weight.reshape(c * c, -1).t())
            f = parts.shape[0] // 2
            parts = parts.reshape(2, f, c, c)
            return torch.complex(parts[0], parts[1])
        spectrum = torch.fft.rfftn(weight.permute(self.freq_first), s=self.signal_shape,
                                   dim=self.freq_dims)
        phase = torch.complex(self.phase[:, 0], self.phase[:, 1])
        # contiguous: the transform of the permuted weights keeps their strides, and a
        # batched product copies every matrix of a strided operand.
        return (spectrum.reshape(-1, c, c).conj() * phase[:, None, None]).contiguous()

    def operators_hat(self) -> torch.Tensor:
        """Every operator's spectrum stacked, ``(F, (1+k) C, C)`` complex: ``E``, then each ``C^j``."""
        return torch.cat(self.operators(True), dim=1)

    def _logits(self, sq: torch.Tensor) -> torch.Tensor:
        return -self.lmbda * torch.sqrt(sq.clamp_min(0.0))

    def _responses_spatial(self, z: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pad(z))

    def operators(self, spectral: bool = False) -> List[torch.Tensor]:
        """What :meth:`step` needs from the weights: every :meth:`block_hat` (fft), else none.

        Computing them once and passing them to :meth:`step` for every block of
        samples saves the kernels' transform per block. ``spectral``: the
        spectra whatever the mode.
        """
        ops: List[torch.Tensor] = []
        if self.spectral or spectral:
            # One split (its gradient is one concatenation), not a slice per operator.
            for weight in torch.split(self.conv.weight, self.n_channels, dim=0):
                ops.append(self._block_hat(weight))
        return ops

    def responses(self, z: torch.Tensor, ops: List[torch.Tensor],
                  first: int = 0) -> List[torch.Tensor]:
        """``A z`` for the operators ``ops[first:]``, real pairs ``(F, C, b, 2)`` (fft)."""
        out: List[torch.Tensor] = []
        for index in range(first, len(ops)):
            out.append(torch.view_as_real(torch.matmul(ops[index], z)))
        return out

    def _factored(self, z: torch.Tensor, ops: List[torch.Tensor]
                  ) -> Tuple[torch.Tensor, List[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Closed-form factors applied to ``z``: ``(||C^j z||^2 (b, k), dense responses, q, p)``.

        Dense responses (real pairs) are listed for the operators whose spectra
        ``ops`` holds (``E`` first when dense); for a low-rank class, with
        ``p = V_j^H z`` and ``q = M_j^-1 p`` (``M_j = I + alpha_j V_j^H V_j``),
        ``||C^j z||^2 = alpha_j^2 sum_p w_p (|z|^2 - alpha_j (Re p^H q + |q|^2))``
        as in the library (:meth:`convredunet.network.Layer.__call__`).
        """
        n_ops = self.n_classes + 1
        vh, m_inv, alphas, classes = ops[n_ops + 1], ops[n_ops + 2], ops[n_ops + 3], \
            ops[n_ops + 4]
        f, g, w = m_inv.shape[0], m_inv.shape[1], m_inv.shape[2]
        b = z.shape[2]
        p = torch.matmul(vh, z)  # (F, g w, b)
        q = torch.matmul(m_inv, p.reshape(f, g, w, b))  # (F, g, w, b)
        zr = torch.view_as_real(z)
        qr = torch.view_as_real(q).reshape(f * g, w, b, 2)
        # Re p^H q + |q|^2 = Re (p + q)^H q, summed over each class's w columns: (F, g, b)
        pq = _pair_sums((torch.view_as_real(p).reshape(f * g, w, b, 2) + qr) * qr).reshape(
            f, g, b)
        inner = _sq_norms(zr).unsqueeze(1) - alphas[None, :, None] * pq
        lowrank_sq = (alphas * alphas)[:, None] * _weighted_sum(self.freq_weights, inner)
        dense: List[torch.Tensor] = []
        sq_cols: List[torch.Tensor] = []
        for index in range(n_ops):
            if ops[index].numel() > 0:
                r = torch.view_as_real(torch.matmul(ops[index], z))
                dense.append(r)
                if index > 0:
                    sq_cols.append(_weighted_sum(self.freq_weights, _sq_norms(r)))
            elif index > 0:
                group = int((classes == index - 1).nonzero()[0, 0])
                sq_cols.append(lowrank_sq[group])
        return torch.stack(sq_cols, dim=1), dense, q, p

    def _factored_update(self, z: torch.Tensor, ops: List[torch.Tensor]
                         ) -> Tuple[torch.Tensor, torch.Tensor]:
        """:meth:`update` with the closed form's factors (:func:`closed_form_operators`).

        ``sum_j g_j C^j z = (sum_j g_j alpha_j) z - V (alpha_j^2 g_j q_j)`` over
        the low-rank classes: one product with ``V`` for all of them, as in the
        library; a low-rank ``E`` shares ``p``.
        """
        n_ops = self.n_classes + 1
        v, alphas, classes, e_inv, alpha_e = ops[n_ops], ops[n_ops + 3], ops[n_ops + 4], \
            ops[n_ops + 5], ops[n_ops + 6]
        sq, dense, q, p = self._factored(z, ops)
        logits, weight = membership_weights(sq, self.gamma, self.lmbda)  # weight (k, b)
        f, g, w, b = q.shape
        low = weight[classes]  # (g, b)
        coef = (alphas[:, None] * low).sum(dim=0)  # (b,)
        scaled = q * ((alphas * alphas)[:, None] * low).to(q.dtype)[None, :, None, :]
        back = torch.matmul(v, scaled.reshape(f, g * w, b))  # (F, C, b)
        zr = torch.view_as_real(z)
        compressed = torch.view_as_real(back) * -1.0 + zr * coef[:, None]
        position = 0
        if ops[0].numel() > 0:
            ez = dense[0]
            position = 1
        else:  # E = alpha_E (I - alpha_E V M_E^-1 V^H)
            a = float(alpha_e[0])
            ez = zr * a - torch.view_as_real(torch.matmul(v, torch.matmul(e_inv, p))) * (a * a)
        for index in range(1, n_ops):
            if ops[index].numel() > 0:
                compressed = torch.addcmul(compressed, dense[position],
                                           weight[index - 1].unsqueeze(-1))
                position += 1
        return ez - compressed, logits

    def scores(self, z: torch.Tensor) -> torch.Tensor:
        """``-lmbda ||C^j z||_F`` per class, ``(b, k)``, without the layer's step."""
        return self.scores_with(z, self.operators())

    def scores_with(self, z: torch.Tensor, ops: List[torch.Tensor]) -> torch.Tensor:
        """:meth:`scores` with ``ops = self.operators()`` given."""
        k, c = self.n_classes, self.n_channels
        if self.spectral:
            if len(ops) > k + 1:
                return self._logits(self._factored(z, ops)[0])
            return self._logits(class_sq_norms(self.responses(z, ops, 1), self.freq_weights))
        b = z.shape[0]
        cj = self._responses_spatial(z)[:, c:].reshape(b, k, c, self.n_positions)
        return self._logits((cj * cj).sum(dim=(2, 3)))

    def forward(self, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """One layer: ``(b, C, *S)`` (direct) or complex spectra ``(F, C, b)`` (fft) in and out.

        Returns the next features and this layer's ``-lmbda ||C^j z||_F`` ``(b, k)``.
        """
        return self.step(z, self.operators())

    def step(self, z: torch.Tensor, ops: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` with ``ops = self.operators()`` given: :meth:`finish` of :meth:`update`."""
        # z's real view is taken before the responses: autograd sums the gradients that
        # reach z in the order their operations were recorded.
        base = torch.view_as_real(z) if self.spectral else z
        update, logits = self.update(z, ops)
        return self.finish(base, update), logits

    def update(self, z: torch.Tensor, ops: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """``E z - sum_j gamma_j pi_j C^j z`` and ``-lmbda ||C^j z||_F`` ``(b, k)``.

        The modes differ only in how the operators are applied: fft mode takes
        complex spectra ``(F, C, b)`` and returns the update as real pairs
        ``(F, C, b, 2)``; direct mode works on signals ``(b, C, *S)``.
        """
        k, c = self.n_classes, self.n_channels
        if self.spectral:
            if len(ops) > k + 1:
                return self._factored_update(z, ops)
            return direction_from_responses(self.responses(z, ops), self.gamma,
                                            self.freq_weights, self.lmbda)
        b = z.shape[0]
        w = self._responses_spatial(z)
        cj = w[:, c:].reshape(b, k, c, self.n_positions)
        logits = self._logits((cj * cj).sum(dim=(2, 3)))
        weight = torch.softmax(logits, dim=1) * self.gamma
        compressed = (cj * weight.reshape(b, k, 1, 1)).sum(dim=1).reshape(z.shape)
        return w[:, :c].reshape(z.shape) - compressed, logits

    def norms(self, z: torch.Tensor) -> torch.Tensor:
        """Each sample's norm ``(b,)``: of ``z`` ``(b, C, *S)`` (direct) or of real pairs (fft)."""
        if self.spectral:
            return spectral_norms(z, self.freq_weights)
        flat = z.reshape(z.shape[0], -1)
        return torch.sqrt((flat * flat).sum(dim=1)).clamp_min(1e-30)

    def finish(self, z: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        """``normalize(z + eta update)`` in the mode's form; fft: ``z`` and ``update`` as real
        pairs ``(F, C, b, 2)``, the result complex ``(F, C, b)``."""
        if self.spectral:
            return torch.view_as_complex(finish_step(z, update, self.eta, self.freq_weights))
        step = z + self.eta * update
        return step / self.norms(step).reshape([-1] + [1] * (z.dim() - 1))


class SubspaceHead(nn.Module):
    """Squared distances to the class subspaces (``classifier="subspace"``), ``(b, k)``.

    Class ``j``'s subspace keeps ``r`` directions ``U_j(p)`` (``C x r``) at
    every frequency ``p`` (:mod:`convredunet.subspace`), so from the features'
    unitary half spectrum ``v(p)``

        d_j(z) = sum_p w_p (||v(p)||^2 - ||U_j(p)^H v(p)||^2)

    (``w_p`` the half-spectrum weights): ``k r`` complex numbers per frequency,
    far cheaper than the projectors as full-size ``C -> C`` convolutions.
    ``bases`` holds ``Re U`` and ``Im U`` as one real parameter
    ``(k, F, C, r, 2)``. For vectors ``F = 1``, ``U`` is real and ``w = 1``.
    Trained freely, ``U`` need not stay orthonormal; ``d`` stays a
    shift-invariant quadratic form of ``z``, which is all exact invariance
    needs.

    Input: the complex spectrum ``(F, C, b)``, the layout of the module's
    ``"fft"`` mode (:meth:`from_real_pairs` takes it as real pairs, for ONNX).
    """

    def __init__(self, bases, signal_shape, dtype):
        super().__init__()
        bases = np.asarray(bases)
        k, f, c, r = bases.shape
        self.bases = nn.Parameter(torch.as_tensor(
            np.stack([bases.real, bases.imag], axis=-1), dtype=dtype))
        self.n_classes, self.n_freqs, self.n_channels, self.rank = int(k), int(f), int(c), int(r)
        weights = spectral.half_spectrum_weights(signal_shape) if signal_shape else np.ones(1)
        self.register_buffer("freq_weights", torch.as_tensor(weights, dtype=dtype))

    def adjoint_bases(self) -> torch.Tensor:
        """``U_j(p)^H`` of every class stacked, ``(F, k r, C)`` complex."""
        u = torch.view_as_complex(self.bases)  # (k, F, C, r)
        return u.permute(1, 0, 3, 2).conj().reshape(self.n_freqs, self.n_classes * self.rank,
                                                    self.n_channels)

    def real_bases(self) -> torch.Tensor:
        """``[Re U^T; Im U^T]`` of every class, ``(F, 2 k r, C)``: for :meth:`from_real_pairs`."""
        return self.bases.permute(1, 4, 0, 3, 2).reshape(
            self.n_freqs, 2 * self.n_classes * self.rank, self.n_channels)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.distances(v, self.adjoint_bases())

    def distances(self, v: torch.Tensor, adjoint: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` with ``adjoint = self.adjoint_bases()`` given."""
        f, b = v.shape[0], v.shape[2]
        q = torch.view_as_real(torch.matmul(adjoint, v))  # (F, k r, b, 2)
        kept = _sq_norms(q.reshape(f * self.n_classes, self.rank, b, 2))
        return self._distances(_sq_norms(torch.view_as_real(v)),
                               kept.reshape(f, self.n_classes, b))

    def from_real_pairs(self, v: torch.Tensor, real_bases: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` of real-pair spectra ``(F, C, b, 2)`` with real products only.

        ``real_bases``: :meth:`real_bases`. ``[Re U^T; Im U^T] [v_r, v_i]`` gives the
        four real products; ``Re(U^H v) = Ur^T v_r + Ui^T v_i`` and
        ``Im(U^H v) = Ur^T v_i - Ui^T v_r``.
        """
        f, c, b = v.shape[0], v.shape[1], v.shape[2]
        kr = self.n_classes * self.rank
        q = torch.matmul(real_bases, v.reshape(f, c, 2 * b)).reshape(f, 2, kr, b, 2)
        re = q[:, 0, :, :, 0] + q[:, 1, :, :, 1]
        im = q[:, 0, :, :, 1] - q[:, 1, :, :, 0]
        kept = (re * re + im * im).reshape(f, self.n_classes, self.rank, b).sum(dim=2)
        return self._distances(_sq_norms(v), kept)

    def _distances(self, total: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        """``(b, k)`` from ``||v(p)||^2`` ``(F, b)`` and ``||U_j(p)^H v(p)||^2`` ``(F, k, b)``."""
        return (_weighted_sum(self.freq_weights, total).unsqueeze(0)
                - _weighted_sum(self.freq_weights, kept)).t()


def _subspace_head(net, dtype):
    """The :class:`SubspaceHead` of a net fitted with ``classifier="subspace"``."""
    if getattr(net, "subspaces_", None) is None:
        raise ValueError(f"classifier='subspace' needs the class subspaces, but this "
                         f"{type(net).__name__} was fitted with classifier='membership'; "
                         "set classifier='subspace' before calling fit")
    return SubspaceHead(net.subspaces_, tuple(net.signal_shape_), dtype)


class RealDFT(nn.Module):
    """The unitary half spectrum of ``(b, C, *S)`` as real pairs ``(F, C, b, 2)``, and back.

    What :meth:`ReduNetModule.spectrum` computes with ``torch.fft.rfftn``
    (``torch.view_as_real`` of it), as plain ``MatMul`` operations: for
    ONNX, which has no complex tensors. The last axis is transformed by
    ``(S_last, S_last//2 + 1)`` cosine and sine matrices, a first axis (2D) by
    ``(S_0, S_0)`` ones. :meth:`inverse` is ``torch.fft.irfftn``: each stored
    frequency counts with its half-spectrum weight (2 where the conjugate twin
    is not stored), and the imaginary parts of self-conjugate frequencies are
    ignored, as by ``irfftn``.
    """

    signal_shape: List[int]

    def __init__(self, signal_shape, dtype):
        super().__init__()
        self.signal_ndim = len(signal_shape)
        self.signal_shape: List[int] = [int(s) for s in signal_shape]
        n = int(signal_shape[-1])
        self.n_last = n // 2 + 1
        self.n_freqs = int(math.prod(signal_shape[:-1]) * (n // 2 + 1))
        t = np.arange(n)
        angle = 2 * np.pi * np.outer(t, np.arange(n // 2 + 1)) / n
        scale = 1 / math.sqrt(math.prod(signal_shape))
        self.register_buffer("cos_last", torch.as_tensor(np.cos(angle) * scale, dtype=dtype))
        self.register_buffer("sin_last", torch.as_tensor(-np.sin(angle) * scale, dtype=dtype))
        # The inverse on the last axis: twice each frequency whose twin is not stored.
        twice = np.full(n // 2 + 1, 2.0)
        twice[0] = 1.0
        if n % 2 == 0:
            twice[-1] = 1.0
        self.register_buffer("icos_last", torch.as_tensor(
            (np.cos(angle) * scale * twice[None, :]).T, dtype=dtype))
        self.register_buffer("isin_last", torch.as_tensor(
            (-np.sin(angle) * scale * twice[None, :]).T, dtype=dtype))
        m = int(signal_shape[0])
        angle = 2 * np.pi * np.outer(np.arange(m), np.arange(m)) / m
        self.register_buffer("cos_first", torch.as_tensor(np.cos(angle), dtype=dtype))
        self.register_buffer("sin_first", torch.as_tensor(-np.sin(angle), dtype=dtype))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        b, c = z.shape[0], z.shape[1]
        re = torch.matmul(z, self.cos_last)  # (b, C, [H,] F_last)
        im = torch.matmul(z, self.sin_last)
        if self.signal_ndim == 2:  # the first axis: (cos + i sin) (re + i im)
            re, im = (torch.matmul(self.cos_first, re) - torch.matmul(self.sin_first, im),
                      torch.matmul(self.cos_first, im) + torch.matmul(self.sin_first, re))
        v = torch.stack([re.reshape(b, c, self.n_freqs), im.reshape(b, c, self.n_freqs)],
                        dim=-1)  # (b, C, F, 2)
        return v.permute(2, 1, 0, 3)

    def inverse(self, v: torch.Tensor) -> torch.Tensor:
        """``(b, C, *S)`` features from real-pair half spectra ``(F, C, b, 2)``."""
        c, b = v.shape[1], v.shape[2]
        v = v.permute(2, 1, 0, 3)  # (b, C, F, 2)
        shape = [b, c] + self.signal_shape[:-1] + [self.n_last]
        re, im = v[..., 0].reshape(shape), v[..., 1].reshape(shape)
        if self.signal_ndim == 2:  # the first axis, inverse: (cos - i sin) (re + i im)
            re, im = (torch.matmul(self.cos_first, re) + torch.matmul(self.sin_first, im),
                      torch.matmul(self.cos_first, im) - torch.matmul(self.sin_first, re))
        # Real part of sum_p w_p (re + i im)(cos + i sin): re cos - im sin.
        return torch.matmul(re, self.icos_last) + torch.matmul(im, self.isin_last)


def closed_form_operators(layer, dtype):
    """A closed-form layer's operators as :meth:`ReduNetLayer.step` takes them.

    ``layer``: a fitted :class:`convredunet.network.Layer` (numpy arrays).
    Returns a list of tensors: ``1 + k`` entries, ``E`` then each ``C^j``,
    each the operator's spectrum ``(F, C, C)`` (from the layer's stacked
    array) or, for an operator held in low-rank form, empty; then, when any
    is low rank, the Woodbury factors the library applies them with: ``V``
    ``(F, C, g w)``, ``V^H``, ``M^-1`` ``(F, g, w, w)``, the ``alpha_j``
    ``(g,)``, the low-rank classes ``(g,)``, and for a low-rank ``E``
    ``M_E^-1`` ``(F, g w, g w)`` and ``alpha_E`` ``(1,)`` (else two empty
    tensors). A low-rank class costs ``O(C m_j)`` per frequency instead of the
    ``O(C^2)`` of its spectrum. ``dtype``: the module's real dtype.
    """
    complex_dtype = torch.complex64 if dtype == torch.float32 else torch.complex128
    solution = layer.solution
    k, c = layer.n_classes, layer.n_channels

    def tensor(a):
        return torch.from_numpy(np.ascontiguousarray(a)).to(complex_dtype)

    empty = torch.zeros(0, dtype=complex_dtype)
    ops = [empty] * (k + 1)
    if solution.stacked is not None:
        stacked = np.asarray(solution.stacked)
        rows = 0
        if not solution.e_lowrank:
            ops[0] = tensor(stacked[:, :c])
            rows = c
        for j in layer.dense_classes:
            ops[1 + j] = tensor(stacked[:, rows:rows + c])
            rows += c
    if not layer.lowrank_classes:
        return ops
    v = tensor(solution.V)
    ops += [v, v.conj().transpose(1, 2).contiguous(), tensor(solution.M_inv),
            torch.as_tensor(np.asarray(solution.alphas), dtype=dtype),
            torch.as_tensor(layer.lowrank_classes, dtype=torch.long)]
    if solution.e_lowrank:
        ops += [tensor(solution.E_M_inv), torch.tensor([solution.alpha_E], dtype=dtype)]
    else:
        ops += [empty, torch.zeros(0, dtype=dtype)]
    return ops


def _chunk_size(layers, signal_shape, spectral):
    """Samples per block of :meth:`ReduNetModule._run` (see ``CHUNK_BYTES``).

    Direct mode: a layer's responses, ``(1+k) C`` channels at every position,
    take about ``CHUNK_BYTES``; fft mode: one operator's response, ``C``
    complex numbers per stored frequency, about ``SPECTRAL_CHUNK_BYTES``.
    """
    if not layers:
        return MIN_CHUNK
    weight = layers[0].conv.weight
    if spectral:
        n_freqs = spectral_n_freqs(signal_shape)
        per_sample = weight.shape[1] * n_freqs * 2 * weight.element_size()
        return max(MIN_SPECTRAL_CHUNK, SPECTRAL_CHUNK_BYTES // per_sample)
    per_sample = weight.shape[0] * max(1, math.prod(signal_shape)) * 2 * weight.element_size()
    return max(MIN_CHUNK, CHUNK_BYTES // per_sample)


spectral_n_freqs = spectral.n_freqs


class ReduNetModule(nn.Module):
    """A fitted ReduNet as a PyTorch module.

    ``forward(x)`` returns the features after the last layer (as
    ``net.transform``); ``predict(x)`` the labels (as ``net.predict``),
    ``membership(x)`` the last layer's ``pi`` (as ``net.predict_proba``) and
    ``logits(x)`` its ``-lmbda ||C^j z||_F`` (``(b, k)``, class scores). With
    ``classifier="subspace"``, ``subspace_distances(x)`` gives the squared
    distances to the class subspaces and ``predict`` their argmin.

    Input ``x``: ``(b, C_in, *signal_shape)``, or ``(b, *signal_shape)`` when
    ``C_in = 1``; vectors ``(b, d)``; a tensor of the module's dtype.
    ``conv`` (read-only) says how the layers run.

    What every method refuses (eager and TorchScript alike; a scripted
    module raises ``torch.jit.Error`` carrying the same ``ValueError``
    message): any other shape (another length, channel count, image size or
    rank: the operators are built for one signal size), another dtype
    (convert with ``x.float()`` / ``x.double()``), and NaN or infinite
    entries (the message names the first sample). A batch of 0 samples gives
    empty results.

    Numerics: as in the library (:func:`convredunet.network.rescale_samples`),
    each sample is first multiplied by the power of two that brings its
    largest entry into ``[0.5, 1)`` (at most ``2^(+-64)`` in float32,
    ``2^(+-512)`` in float64) and the lifting's bias is scaled along; the
    lifting is positively homogeneous and normalized, so nothing changes but
    the range: ``x * 1e38`` in float32 gives the features of ``x``.
    """

    signal_shape: List[int]
    dims: List[int]
    input_shape: List[int]
    feature_shape: List[int]
    lifted: Final[bool]
    lifting_bias: Final[bool]
    use_subspace: Final[bool]
    __jit_ignored_attributes__ = ["_ops_cache", "_ops_key", "_ops_snapshot",
                                  "training_fingerprints"]

    def __init__(self, lifting, layers, classes, signal_shape, conv, input_shape=None,
                 head=None, dtype=None):
        super().__init__()
        self.input_shape: List[int] = [int(n) for n in (input_shape or [])]
        self.lifting = lifting
        # lifting: Normalize() alone, or LiftingModule(LiftingConv, Sequential([sigma], Normalize()))
        self.lifted = not isinstance(lifting, Normalize)
        self.lifting_bias = self.lifted and lifting.conv.has_bias
        self.layers = nn.ModuleList(layers)
        self.register_buffer("classes", torch.as_tensor(classes))
        self.signal_shape: List[int] = [int(n) for n in signal_shape]
        self.signal_ndim = len(self.signal_shape)
        self.dims: List[int] = list(range(2, 2 + self.signal_ndim))
        self.conv = conv
        self.spectral = conv == "fft"
        self.n_layers = len(layers)
        self.chunk_size = _chunk_size(layers, self.signal_shape, self.spectral)
        self.use_subspace = head is not None
        self.head = head if head is not None else nn.Identity()
        if dtype is None:
            first_param = next(self.parameters(), None)
            dtype = torch.float32 if first_param is None else first_param.dtype
        # Follows .to(dtype) / .double(): the dtype inputs must have.
        self.register_buffer("dtype_like", torch.zeros(0, dtype=dtype), persistent=False)
        self.shape_rule = _shape_rule(self.input_shape, self.signal_ndim)
        # One sample's features: (C, *signal_shape); vectors (d,).
        if layers:
            n_features = layers[0].n_channels
        elif self.lifted:
            n_features = int(lifting.conv.n_out)
        else:
            n_features = self.input_shape[0]
        self.feature_shape: List[int] = [int(n_features)] + self.signal_shape
        self._ops_cache = None
        self._ops_key = None
        self._ops_snapshot = None
        # Fingerprints of the signals the exported network was fitted on (to_torch sets
        # them): fine_tune keeps its validation signals out of them.
        self.training_fingerprints = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_ops_cache"] = state["_ops_key"] = state["_ops_snapshot"] = None  # never saved
        return state

    def __setstate__(self, state):
        state.setdefault("_ops_snapshot", None)  # modules pickled before the snapshot existed
        state.setdefault("training_fingerprints", None)
        super().__setstate__(state)

    def check_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as ``(b, *input_shape)``; refuses any other shape, dtype or non-finite entries.

        Raises
        ------
        ValueError
            Naming what ``x`` must be and what it is (see the class docstring).
        """
        if x.dtype != self.dtype_like.dtype:
            raise ValueError("x must be a " + _dtype_name(self.dtype_like) + " tensor (the "
                             "module's dtype), got " + _dtype_name(x) + "; convert it with "
                             ".to(dtype) or export the module in that dtype")
        shape = self.input_shape
        if torch.jit.is_tracing():  # a trace records one shape: no check to record
            return x.unsqueeze(1) if self.signal_ndim > 0 and x.dim() == len(shape) else x
        got = x.shape
        if x.dim() == len(shape) + 1 and list(got[1:]) == shape:
            checked = x
        elif self.signal_ndim > 0 and shape[0] == 1 and x.dim() == len(shape) \
                and list(got[1:]) == self.signal_shape:
            checked = x.unsqueeze(1)
        else:
            raise ValueError("x must have shape " + self.shape_rule + ", got ("
                             + ", ".join([str(int(n)) for n in got]) + "); the network's "
                             "operators are built for one signal size")
        finite = torch.isfinite(checked)
        if not bool(finite.all()):
            rows = (~finite).flatten(1).any(dim=1).nonzero()
            raise ValueError("x must contain only finite values; found {} NaN or infinite "
                             "entries (the first in sample {})".format(
                                 int((~finite).sum()), int(rows[0, 0])))
        return checked

    def prescale(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(x * scale, scale)``: each sample times the power of two of the library.

        ``scale`` ``(b,)`` brings each sample's largest ``|entry|`` into
        ``[0.5, 1)``, capped at ``2^(+-64)`` (float32) or ``2^(+-512)``
        (float64) as in :meth:`convredunet.network.Network.working`; exact, and
        made of operations that script and export to ONNX.
        """
        # Network.working's cap: half the exponent range (maxexp // 2).
        limit = 512.0 if x.dtype == torch.float64 else 64.0
        scale = pow2_scale(x.detach().abs().flatten(1).amax(dim=1), limit)
        return x * scale.reshape([-1] + [1] * (x.dim() - 1)), scale

    def lift(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-norm lifted features ``(b, C, *S)`` of checked samples ``(b, *input_shape)``.

        ``x`` is prescaled (:meth:`prescale`) and the lifting's bias scaled
        along: ``sigma(K (*) (s x) + s b) = s sigma(K (*) x + b)``, then normalized.
        """
        x, scale = self.prescale(x)
        if self.lifted:
            return self.lifting(x, scale)
        return self.lifting(x)

    def spectrum(self, z: torch.Tensor) -> torch.Tensor:
        """The unitary half spectrum of ``(b, C, *S)`` features, complex ``(F, C, b)``.

        Vectors ``(b, d)``: ``(1, d, b)`` with zero imaginary parts.
        """
        if self.signal_ndim == 0:
            zt = z.t().unsqueeze(0)
            return torch.complex(zt, torch.zeros_like(zt))
        b, c = z.shape[0], z.shape[1]
        v = torch.fft.rfftn(z, dim=self.dims, norm="ortho")
        return v.reshape(b, c, -1).permute(2, 1, 0).contiguous()

    def layer_input(self, z: torch.Tensor) -> torch.Tensor:
        """Lifted features ``(b, C, *S)`` in the layers' form: direct, ``z``; fft, :meth:`spectrum`."""
        if not self.spectral:
            return z
        return self.spectrum(z)

    def layer_output(self, v: torch.Tensor) -> torch.Tensor:
        """The layers' output as features ``(b, C, *S)`` (fft: the inverse of :meth:`spectrum`)."""
        if not self.spectral:
            return v
        f, c, b = v.shape
        half: List[int] = self.signal_shape[:-1] + [self.signal_shape[-1] // 2 + 1]
        x_hat = v.permute(2, 1, 0).reshape([b, c] + half)
        return torch.fft.irfftn(x_hat, s=self.signal_shape, dim=self.dims, norm="ortho")

    def _operators(self) -> List[List[torch.Tensor]]:
        """Per layer its operators (:meth:`ReduNetLayer.operators`), then the head's ``[U^H]``."""
        if self.spectral and not torch.jit.is_scripting() and not torch.jit.is_tracing() \
                and not torch.is_grad_enabled():
            return self._cached_operators()
        return self._build_operators()

    def _build_operators(self) -> List[List[torch.Tensor]]:
        ops: List[List[torch.Tensor]] = []
        for layer in self.layers:
            ops.append(layer.operators())
        head: List[torch.Tensor] = []
        if self.use_subspace:
            head.append(self.head.adjoint_bases())
        ops.append(head)
        return ops

    def _weights(self) -> List[torch.Tensor]:
        """The parameters the operators are made from: the layers' kernels, the head's bases."""
        weights = [layer.conv.weight for layer in self.layers]
        if self.use_subspace:
            weights.append(self.head.bases)
        return weights

    @torch.jit.unused
    def _cached_operators(self) -> List[List[torch.Tensor]]:
        """The operators, kept while the weights they are made from are unchanged.

        Without autograd the operators are a function of the layers' weights
        (and the head's bases) only; building them (a transform of every
        kernel) costs as much as running a few hundred 28 x 28 digits. They
        are kept (when at most ``OPS_CACHE_BYTES``) with a copy of the weights
        they were built from, and reused only while every weight is the same
        tensor (storage, dtype, device) holding the same numbers: an exact
        comparison, so edits that bump no version counter (through ``.data``,
        or by another tensor sharing the storage) are seen too. The comparison
        reads the weights and their copy once per call: on one thread, for a
        128-channel MNIST-1D network in float32, 1000 signals took 0.98-1.10 s
        before and 1.02-1.14 s after; one signal 32 ms and 37 ms.
        """
        weights = self._weights()
        key = (self.conv,) + tuple((w.data_ptr(), w.dtype, w.device, tuple(w.shape))
                                   for w in weights)
        if self._ops_cache is not None and self._ops_key == key and all(
                torch.equal(w, copy) for w, copy in zip(weights, self._ops_snapshot)):
            return self._ops_cache
        ops = self._build_operators()
        if sum(o.numel() * o.element_size() for layer in ops for o in layer) \
                <= OPS_CACHE_BYTES:
            self._ops_cache, self._ops_key = ops, key
            self._ops_snapshot = [w.detach().clone() for w in weights]
        else:
            self._ops_cache = self._ops_key = self._ops_snapshot = None
        return ops

    @torch.jit.unused
    def _seed_operators(self, layer_ops: List[List[torch.Tensor]]):
        """Start the operator cache with the closed form's own operators (``to_torch``).

        With every kernel exported whole, the closed form's spectra and
        Woodbury factors are the operators of the module's weights (to
        rounding), and the library's own way to apply them: low-rank classes
        cost ``O(C m_j)`` per frequency instead of the ``O(C^2)`` of their
        kernels' spectra. They serve until the weights change (the cache's
        exact comparison), then the operators are rebuilt from the weights.
        """
        if sum(o.numel() * o.element_size() for ops in layer_ops for o in ops) \
                > OPS_CACHE_BYTES:
            return
        head: List[torch.Tensor] = []
        if self.use_subspace:
            with torch.no_grad():
                head.append(self.head.adjoint_bases())
        weights = self._weights()
        self._ops_cache = list(layer_ops) + [head]
        self._ops_key = (self.conv,) + tuple((w.data_ptr(), w.dtype, w.device, tuple(w.shape))
                                             for w in weights)
        self._ops_snapshot = [w.detach().clone() for w in weights]

    def _run_with(self, x: torch.Tensor, what: int, ops: List[List[torch.Tensor]]
                  ) -> torch.Tensor:
        """Features (``what`` 0), last-layer scores ``-lmbda ||C^j z||`` (1) or distances (2)."""
        z = self.layer_input(self.lift(x))
        for index, layer in enumerate(self.layers):
            if index == self.n_layers - 1 and what == 1:
                return layer.scores_with(z, ops[index])
            z, _ = layer.step(z, ops[index])
        if what == 0:
            return self.layer_output(z)
        if what == 1:  # no layer: no membership
            raise RuntimeError("a network without layers has no membership")
        if self.use_subspace:
            return self.head.distances(z if self.spectral else self.spectrum(z), ops[-1][0])
        raise RuntimeError("the network was exported without class subspaces "
                           "(classifier='membership')")

    def _run(self, x: torch.Tensor, what: int) -> torch.Tensor:
        """:meth:`_run_with` over blocks of ``chunk_size`` samples (not when tracing).

        Large batches are cut so that a layer's responses stay near
        ``CHUNK_BYTES`` (fft: ``SPECTRAL_CHUNK_BYTES`` per operator): memory
        stays bounded while the blocks are large enough for efficient batched
        products. The operators are computed once for all blocks.
        """
        if what == 2 and not self.use_subspace:
            raise RuntimeError("the network was exported without class subspaces "
                               "(classifier='membership')")
        x = self.check_input(x)
        n = x.shape[0]
        if not torch.jit.is_tracing() and n == 0:  # empty results of the right shapes
            if what == 0:
                return torch.zeros([0] + self.feature_shape, dtype=x.dtype, device=x.device)
            return torch.zeros([0, self.classes.shape[0]], dtype=x.dtype, device=x.device)
        ops = self._operators()
        if torch.jit.is_tracing() or n <= self.chunk_size:
            return self._run_with(x, what, ops)
        parts: List[torch.Tensor] = []
        for start in range(0, n, self.chunk_size):
            parts.append(self._run_with(x[start:start + self.chunk_size], what, ops))
        return torch.cat(parts, dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, 0)

    @torch.jit.export
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``-lmbda ||C^j z||_F`` of the last layer, ``(b, k)``: the membership's scores."""
        return self._run(x, 1)

    @torch.jit.export
    def membership(self, x: torch.Tensor) -> torch.Tensor:
        """The last layer's estimated membership ``pi``, ``(b, k)``."""
        return torch.softmax(self._run(x, 1), dim=1)

    @torch.jit.export
    def subspace_distances(self, x: torch.Tensor) -> torch.Tensor:
        """Squared distances of the features to each class subspace, ``(b, k)``.

        Only with ``classifier="subspace"`` (see :class:`SubspaceHead`).
        """
        return self._run(x, 2)

    @torch.jit.export
    def class_scores(self, x: torch.Tensor) -> torch.Tensor:
        """What :meth:`predict` takes the argmax of, ``(b, k)``.

        ``-subspace_distances`` with ``classifier="subspace"``, else :meth:`logits`.
        """
        return -self._run(x, 2) if self.use_subspace else self._run(x, 1)

    @torch.jit.export
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Labels: ``classes[argmax class_scores]`` (the nearest subspace or the membership)."""
        return self.classes[torch.argmax(self.class_scores(x), dim=1)]

    def with_conv(self, conv):
        """A copy of this module (same parameters, copied) whose layers run as ``conv``.

        Parameters
        ----------
        conv : {"fft", "direct", "auto"}
        """
        _check_conv(conv)
        if self.signal_ndim == 0 or len(self.layers) == 0:
            return copy.deepcopy(self)  # no convolution layer to switch
        if conv == "auto":
            conv = choose_conv(self.layers[0].kernel_shape[0], self.signal_ndim)
        new = copy.deepcopy(self)
        new.conv, new.spectral = conv, conv == "fft"
        new.chunk_size = _chunk_size(list(new.layers), new.signal_shape, new.spectral)
        new._ops_cache = new._ops_key = new._ops_snapshot = None
        for layer in new.layers:
            layer.mode, layer.spectral = conv, conv == "fft"
        return new


class ExportGraph(nn.Module):
    """``x -> (features, scores, labels)`` in one graph, for ONNX and other deployments.

    ``x`` may be ``(b, C_in, *S)``, ``(b, *S)`` (one input channel) or
    flattened ``(b, prod(input_shape))``; it is reshaped to
    ``(b, *input_shape)`` by a check made of graph operations (the rank of
    an ONNX input may be left open, so a Python ``if`` at export time cannot
    decide): any other shape makes that reshape fail (see :func:`export_onnx`).
    Each sample is prescaled by its power of two as in
    :meth:`ReduNetModule.lift`. Real operations only (ONNX has no complex
    tensors): the features' half spectrum comes from :class:`RealDFT`, and
    each layer is one real product per frequency of its operators' spectra
    ``[Re A; Im A]`` ``(F, 2 (1+k) C, C)`` (computed once, here) with the
    spectra as real pairs, whose four partial products give
    ``Re(A v) = Re A Re v - Im A Im v`` and ``Im(A v) = Re A Im v + Im A Re v``;
    then the module's own update (:func:`update_from_responses`). Layers of
    short kernels (``choose_conv`` gives ``"direct"``) run as direct circular
    convolutions instead.

    Outputs: ``features`` ``(b, C, *S)`` as ``net.transform``; ``scores``
    ``(b, k)`` what ``labels`` is the argmax of: ``-net.subspace_distances``
    with ``classifier="subspace"``, else the membership ``pi`` (as
    ``net.predict_proba``); ``labels`` ``(b,)`` as ``net.predict``.
    """

    def __init__(self, module):
        super().__init__()
        dtype = next(module.parameters()).dtype
        nd = module.signal_ndim
        self.spectral = bool(nd and len(module.layers) and choose_conv(
            module.layers[0].kernel_shape[0], nd) == "fft")
        self.module = module.with_conv("direct")
        self.dft = RealDFT(module.signal_shape, dtype) if nd else None
        self.n_ops = len(module.layers) if self.spectral else 0
        with torch.no_grad():
            for index in range(self.n_ops):
                hat = module.layers[index].operators_hat()
                self.register_buffer(f"ops{index}", torch.cat([hat.real, hat.imag], dim=1)
                                     .contiguous(), persistent=False)
            if module.use_subspace:
                self.register_buffer("real_bases", module.head.real_bases().contiguous(),
                                     persistent=False)
        shapes = _accepted_shapes(module.input_shape, module.signal_ndim, flattened=True)
        self.shape_rule = _shape_rule(module.input_shape, module.signal_ndim, flattened=True)
        width = max(len(shape) for shape in shapes)
        # Each accepted per-sample shape padded with zeros to ``width``, and its rank.
        self.register_buffer("accepted", torch.tensor(
            [shape + [0] * (width - len(shape)) for shape in shapes], dtype=torch.long),
            persistent=False)
        self.register_buffer("accepted_ranks", torch.tensor(
            [len(shape) + 1 for shape in shapes], dtype=torch.long), persistent=False)

    def checked(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` reshaped to ``(b, *input_shape)`` when its shape is one accepted, else an error.

        Written with shape arithmetic only, so that it holds in an exported
        graph for inputs of any rank: ``ok`` is computed from ``Shape(x)``,
        then the flattened input is gathered at ``arange(n) + n (1 - ok)``
        (``n`` entries): the identity when ``ok``, every index out of range
        otherwise, which fails the ``Gather`` at run time. (A reshape to an
        impossible shape would not do: onnxruntime's graph optimizations
        assume reshape targets valid and rewrite them to ``-1``.)
        """
        module = self.module
        if not torch.jit.is_tracing() and not torch.jit.is_scripting():
            if not (x.dim() >= 1 and list(x.shape[1:]) in
                    [row[:int(r) - 1] for row, r in zip(self.accepted.tolist(),
                                                         self.accepted_ranks.tolist())]):
                raise ValueError(f"x must have shape {self.shape_rule}, got {tuple(x.shape)}")
        width = self.accepted.shape[1]
        shape = torch._shape_as_tensor(x)  # Shape(x): every axis is dynamic (export_onnx)
        padded = torch.cat([shape, torch.zeros(width + 1, dtype=torch.long)])[:width + 1]
        # The rank from the values (ones_like would be folded to the traced rank).
        rank = (shape * 0 + 1).sum()
        ok = ((padded[1:].unsqueeze(0) == self.accepted).all(dim=1)
              & (rank == self.accepted_ranks)).any().long()
        n = shape.prod()
        flat = torch.index_select(x.reshape(-1), 0, torch.arange(n) + n * (1 - ok))
        return flat.reshape([-1] + module.input_shape)

    def _spectral_layers(self, v: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The layers on real-pair spectra ``(F, C, b, 2)``: (features, last logits)."""
        logits = torch.zeros(0, dtype=v.dtype)
        for index, layer in enumerate(self.module.layers):
            ops = getattr(self, f"ops{index}")  # (F, 2 R, C)
            f, c, b = v.shape[0], v.shape[1], v.shape[2]
            rows = ops.shape[1] // 2
            p = torch.matmul(ops, v.reshape(f, c, 2 * b)).reshape(f, 2, rows, b, 2)
            w = torch.stack([p[:, 0, :, :, 0] - p[:, 1, :, :, 1],
                             p[:, 0, :, :, 1] + p[:, 1, :, :, 0]], dim=-1)
            v, logits = update_from_responses(
                v, list(w.reshape(f, layer.n_classes + 1, layer.n_channels, b, 2).unbind(1)),
                layer.gamma, layer.freq_weights, layer.eta, layer.lmbda)
        return v, logits

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        module = self.module
        z = module.lift(self.checked(x))
        if self.spectral:
            v, logits = self._spectral_layers(self.dft(z))
            z = self.dft.inverse(v)
            if module.use_subspace:
                scores = -module.head.from_real_pairs(v, self.real_bases)
            else:
                scores = torch.softmax(logits, dim=1)
            return z, scores, module.classes[torch.argmax(scores, dim=1)]
        logits = torch.zeros(0, dtype=z.dtype)
        for layer in module.layers:
            z, logits = layer(z)
        if module.use_subspace:
            if self.dft is not None:
                v = self.dft(z)
            else:  # vectors: one frequency, zero imaginary parts
                zt = z.t().unsqueeze(0)
                v = torch.stack([zt, torch.zeros_like(zt)], dim=-1)
            scores = -module.head.from_real_pairs(v, self.real_bases)
        else:
            scores = torch.softmax(logits, dim=1)
        return z, scores, module.classes[torch.argmax(scores, dim=1)]


ONNX_OUTPUTS = ("features", "scores", "labels")
ONNX_OPSET = 17
#: Opsets export_onnx writes: graphs of these run in onnxruntime with the module's numbers
#: (tests/test_surface_reliability.py checks each).
ONNX_OPSETS = (ONNX_MIN_OPSET, ONNX_MAX_OPSET) = (9, 20)


def _check_opset(opset):
    low, high = ONNX_OPSETS
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)):
        raise TypeError(f"opset must be an integer from {low} to {high}, got {opset!r}")
    if not low <= opset <= high:
        raise ValueError(f"opset must be an integer from {low} to {high} (the ONNX opsets "
                         f"export_onnx writes and checks), got {opset}")
    return int(opset)


def export_onnx(module, path, opset=ONNX_OPSET, any_rank=True):
    """Write ``module`` (a :class:`ReduNetModule`) as an ONNX file.

    The graph (:class:`ExportGraph`) has one input ``"x"`` and three outputs:
    ``"features"`` ``(b, C, *S)``, ``"scores"`` ``(b, k)`` (the class scores
    ``labels`` is the argmax of: minus the squared distances to the class
    subspaces, or the membership ``pi``) and ``"labels"`` ``(b,)``. The input
    accepts ``(b, C_in, *S)``, ``(b, *S)`` for one input channel, or
    ``(b, prod(input_shape))``, because with ``any_rank`` its shape is left
    undeclared, which the ONNX IR allows for "a tensor of any shape" and
    onnxruntime accepts (``onnx.checker`` insists on a declared shape for
    graph inputs: onnx/onnx#2932). ``any_rank=False`` declares
    ``(batch, *input_shape)``. ONNX has no complex tensors, so the spectra are
    real pairs and every product real (:class:`ExportGraph`: the layers as
    per-frequency products with their operators' spectra, stored in the file;
    kernels of at most 4 taps as direct circular convolutions); opset 17 by
    default, through the TorchScript-based exporter.

    What the file refuses. Any other input shape (another length, channel
    count or rank, or a reshuffle such as ``(b, 2, 8)`` for ``(b, 16)``):
    the graph's input check (a ``Gather``, see :meth:`ExportGraph.checked`)
    fails, and onnxruntime's error names that node, whose name is the rule
    (``"x must have shape (batch, 1, 16) or (batch, 16)"``). An empty batch
    fails too (onnxruntime reads a 0 in a reshape's target as "keep this
    axis"); the module gives empty results. Another dtype: onnxruntime
    refuses it itself. NaN or infinite entries are not refused by the graph
    (ONNX has no assertions): they give NaN for that sample; the module
    refuses them. Each sample is prescaled by its power of two as in the
    module, so extreme finite inputs keep the library's numbers.

    The file is written through the library's atomic writer: a temporary
    file renamed over ``path`` when complete (an error or Ctrl-C leaves
    ``path`` as it was), with the umask's mode for a new file.

    Parameters
    ----------
    module : ReduNetModule
        A float32 module: onnxruntime implements no float64 ``Conv``, so a
        float64 module is refused.
    path : str or path-like
    opset : int
        From :data:`ONNX_MIN_OPSET` to :data:`ONNX_MAX_OPSET`.
    any_rank : bool
        Leave the input's shape undeclared. (Either way the ``onnx`` package
        is needed: the graph is edited after export.)

    Raises
    ------
    TypeError
        ``module`` is not a ReduNetModule, or ``opset`` not an integer.
    ValueError
        ``opset`` out of range, a float64 module, or a path that cannot be written.
    """
    import warnings

    from ._files import atomic_path

    if not isinstance(module, ReduNetModule):
        raise TypeError(f"module must be a ReduNetModule (from to_torch), got "
                        f"{type(module).__name__}")
    opset = _check_opset(opset)
    try:
        import onnx
    except ImportError:
        raise ImportError("export_onnx needs the onnx package (pip install onnx): it checks "
                          "and names the graph's input check") from None
    dtype = next(module.parameters()).dtype
    if dtype != torch.float32:
        raise ValueError(f"export_onnx needs a float32 module: onnxruntime implements no "
                         f"{str(dtype).replace('torch.', '')} Conv, so the file could not "
                         "run; export with to_torch(dtype=torch.float32)")
    graph = ExportGraph(module).eval()
    example = torch.zeros([2] + module.input_shape, dtype=dtype)
    with atomic_path(path) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Every input axis dynamic: otherwise the exporter folds Shape(x) into a
            # constant and the input check with it.
            axes = {0: "batch"} | {i: f"x_axis{i}" for i in range(1, example.dim())}
            torch.onnx.export(graph, (example,), str(tmp), dynamo=False, opset_version=opset,
                              input_names=["x"], output_names=list(ONNX_OUTPUTS),
                              dynamic_axes={"x": axes, "features": {0: "batch"},
                                            "scores": {0: "batch"}, "labels": {0: "batch"}})
        model = onnx.load(str(tmp))
        # The input check's Gather (ExportGraph.checked) reads the flattened x: named
        # after the rule, so that onnxruntime's error for a wrong shape states it.
        flattened = {node.output[0] for node in model.graph.node
                     if node.op_type == "Reshape" and node.input[0] == "x"}
        checks = [node for node in model.graph.node
                  if node.op_type == "Gather" and node.input[0] in flattened]
        if len(checks) != 1:  # pragma: no cover - the exporter changed
            raise RuntimeError("export_onnx: the input check is missing from the graph")
        checks[0].name = f"x must have shape {graph.shape_rule}"
        declared = model.graph.input[0].type.tensor_type
        if any_rank:
            declared.ClearField("shape")  # any rank
        else:  # (batch, *input_shape): onnxruntime checks it before running
            for dim, size in zip(list(declared.shape.dim)[1:], module.input_shape):
                dim.Clear()
                dim.dim_value = size
        onnx.save(model, str(tmp))


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
        what a size keeps. The class subspaces (``classifier="subspace"``)
        are kept whole: per frequency (:class:`SubspaceHead`), they cost
        ``k r`` products per frequency and channel, not a convolution.
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
        modules = []
        if lifting_parts.nonlinearity == "relu":
            modules.append(nn.ReLU())
        elif lifting_parts.nonlinearity == "abs":
            modules.append(_Abs())
        lifting = LiftingModule(LiftingConv(lifting_parts.kernels, lifting_parts.groups(), dtype,
                                            lifting_parts.bias),
                                nn.Sequential(*modules, Normalize()))
    layers = []
    for layer, (e, c) in zip(parts["layers"], _layer_kernels(parts)):
        c = c.reshape((-1,) + c.shape[2:])  # every C^j's rows in class order: (k C, C, ...)
        if nd:  # the central taps, taken before stacking (one copy of the smaller arrays)
            e, c = centred_kernels(e, kernel_size), centred_kernels(c, kernel_size)
        stacked = np.concatenate([e, c], axis=0)  # ((1+k) C, C, *K): E on top
        layers.append(ReduNetLayer(stacked, layer.gamma, layer.eta, layer.lmbda, signal_shape,
                                   mode, dtype))
    classes = parts["classes"]
    if classes.dtype.kind not in "biuf":
        classes = np.arange(len(classes))  # non-numeric labels: predict returns indices
    head = None
    if net.classifier == "subspace":
        head = _subspace_head(net, dtype)
    module = ReduNetModule(lifting, layers, np.asarray(classes), signal_shape,
                           "direct" if mode == "linear" else mode, parts["input_shape"], head,
                           dtype)
    module.training_fingerprints = getattr(net, "training_fingerprints_", None)
    if module.spectral and kernel_size is None:
        module._seed_operators([closed_form_operators(layer, dtype)
                                for layer in parts["layers"]])
    return module
