"""Figures of a run (matplotlib): rates per layer and cosine-similarity heatmaps.

Each function returns a ``matplotlib.figure.Figure`` made without ``pyplot``
(so no backend is chosen or switched, and no figure is registered anywhere)
and writes it to ``path`` when one is given.
"""
import numpy as np

from . import spectral

__all__ = ["plot_rates", "plot_cosine_similarity", "max_shift_cosine"]


def _figure(width, height):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _save(fig, path, dpi):
    """``fig`` to ``path`` through the library's atomic writer (format from the extension)."""
    from pathlib import Path

    from ._files import atomic_path

    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=fmt)


def plot_rates(train, path=None, test=None, title=None):
    """Plot ``delta_R``, ``R`` and ``R_c`` per layer.

    Parameters
    ----------
    train : list of RateReduction (or dicts with delta_R, R, R_c), one per layer
    path : str, Path or None, the image to write (format from the extension)
    test : same as ``train`` for held-out data, or None

    Returns
    -------
    matplotlib.figure.Figure
    """

    def columns(records):
        get = (lambda r, a, b: r[a]) if isinstance(records[0], dict) else \
            (lambda r, a, b: getattr(r, b))
        return (np.array([get(r, "delta_R", "delta") for r in records]),
                np.array([get(r, "R", "expansion") for r in records]),
                np.array([get(r, "R_c", "compression") for r in records]))

    fig = _figure(6.4, 4.2)
    ax = fig.subplots()
    most = 0
    for records, style, name in ((train, "-o", "train"), (test, "--s", "test")):
        if not records:
            continue
        delta, expansion, compression = columns(records)
        layers = np.arange(len(records))
        most = max(most, len(records))
        ax.plot(layers, expansion, style, color="tab:blue", label=f"R ({name})")
        ax.plot(layers, compression, style, color="tab:orange", label=f"R_c ({name})")
        ax.plot(layers, delta, style, color="tab:green", label=f"ΔR ({name})")
    if 0 < most <= 30:
        ax.set_xticks(np.arange(most))  # whole layers (one point shows as a marker)
    ax.set_xlabel("layer")
    ax.set_ylabel("coding rate (nats)")
    ax.set_title(title or "Rate reduction per layer")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    if path is not None:
        _save(fig, path, 120)
    return fig


def _unit_rows(Z):
    flat = np.asarray(Z, dtype=np.float64).reshape(len(Z), -1)
    return flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-30)


def cosine_similarity(Z, y):
    """``|cos|`` between every pair of samples, rows sorted by class, and the order."""
    order = np.argsort(y, kind="stable")
    flat = _unit_rows(Z)[order]
    return np.abs(flat @ flat.T), order


def max_shift_cosine(Z, ndim, rows=200):
    """``max_s cos(z_i, roll(z_j, s))`` over every cyclic shift ``s``, shape ``(n, n)``.

    The similarity of two signals up to a cyclic shift: a circular
    cross-correlation for every shift at once (one FFT per sample, one product
    per frequency), ``rows`` samples at a time.

    Parameters
    ----------
    Z : array (n, C, *signal_shape)
    ndim : {1, 2}, number of signal axes
    """
    Z = np.asarray(Z, dtype=np.float64)
    n = len(Z)
    Z = (_unit_rows(Z)).reshape(Z.shape)
    shape = Z.shape[-ndim:]
    axes = tuple(range(-ndim, 0))
    A = np.fft.rfftn(Z, axes=axes).reshape(n, Z.shape[1], -1)
    A = np.ascontiguousarray(np.moveaxis(A, 2, 0))  # (F, n, C)
    A_t = np.ascontiguousarray(np.swapaxes(A, 1, 2))  # (F, C, n)
    freq = spectral.freq_shape(shape)
    out = np.empty((n, n))
    for start in range(0, n, rows):
        cross = np.conj(A[:, start:start + rows]) @ A_t  # (F, b, n)
        b = cross.shape[1]
        corr = np.fft.irfftn(np.moveaxis(cross, 0, -1).reshape((b, n) + freq), s=shape,
                             axes=tuple(range(2, 2 + ndim)))
        out[start:start + b] = corr.reshape(b, n, -1).max(-1)
    return out


def plot_cosine_similarity(before, after, y, path=None, titles=("before", "after"), ndim=None,
                           title=None):
    """Heatmaps of feature similarity, samples sorted by class (lines separate classes).

    Panels: ``|cos|`` of ``before`` and of ``after`` (the flattened features,
    at their positions), and, for signal features (``after`` of shape
    ``(n, C, *signal_shape)``), ``max over cyclic shifts of cos`` of ``after``:
    the similarity up to a shift. A block-diagonal panel means samples of one
    class are similar and samples of different classes are not. Features of
    one class at different shifts need not be aligned at their positions, so
    the second panel shows no class blocks for shift-equivariant features;
    the third compares them up to a shift.

    Parameters
    ----------
    before, after : arrays (n, ...)
    y : array (n,)
    path : str, Path or None, the image to write (format from the extension)
    titles : names of ``before`` and ``after``
    ndim : int or None
        Signal axes of ``after``; None infers ``after.ndim - 2`` (no third
        panel for vectors).
    title : str or None, over the panels

    Returns
    -------
    (matplotlib.figure.Figure, list of the panels' similarity matrices)
    """
    after = np.asarray(after)
    if ndim is None:
        ndim = after.ndim - 2 if after.ndim >= 3 else 0
    order = np.argsort(y, kind="stable")
    panels = [(f"|cos| of features {titles[0]}", cosine_similarity(before, y)[0]),
              (f"|cos| of features {titles[1]}", cosine_similarity(after, y)[0])]
    if ndim:
        panels.append((f"max over cyclic shifts of cos,\nfeatures {titles[1]}",
                       max_shift_cosine(after[order], ndim)))
    fig = _figure(5 * len(panels), 4.8)
    axes = fig.subplots(1, len(panels))
    sorted_y = np.asarray(y)[order]
    edges = np.flatnonzero(np.diff(sorted_y)) + 0.5
    for ax, (name, sim) in zip(axes, panels):
        image = ax.imshow(sim, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
        for e in edges:
            ax.axhline(e, color="k", lw=0.3)
            ax.axvline(e, color="k", lw=0.3)
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=axes, shrink=0.8)
    if title:
        fig.suptitle(title, fontsize=10)
    if path is not None:
        _save(fig, path, 110)
    return fig, [sim for _, sim in panels]
