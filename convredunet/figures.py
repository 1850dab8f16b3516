"""Figures of a run (matplotlib, PNG): rates per layer and cosine-similarity heatmaps."""
import numpy as np

__all__ = ["plot_rates", "plot_cosine_similarity"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_rates(train, path, test=None, title=None):
    """Plot ``delta_R``, ``R`` and ``R_c`` per layer.

    Parameters
    ----------
    train : list of RateReduction (or dicts with delta_R, R, R_c), one per layer
    path : str or Path, the PNG to write
    test : same as ``train`` for held-out data, or None
    """
    plt = _pyplot()

    def columns(records):
        get = (lambda r, a, b: r[a]) if isinstance(records[0], dict) else \
            (lambda r, a, b: getattr(r, b))
        return (np.array([get(r, "delta_R", "delta") for r in records]),
                np.array([get(r, "R", "expansion") for r in records]),
                np.array([get(r, "R_c", "compression") for r in records]))

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for records, style, name in ((train, "-", "train"), (test, "--", "test")):
        if not records:
            continue
        delta, expansion, compression = columns(records)
        layers = np.arange(len(records))
        ax.plot(layers, expansion, style, color="tab:blue", label=f"R ({name})")
        ax.plot(layers, compression, style, color="tab:orange", label=f"R_c ({name})")
        ax.plot(layers, delta, style, color="tab:green", label=f"ΔR ({name})")
    ax.set_xlabel("layer")
    ax.set_ylabel("coding rate (nats)")
    ax.set_title(title or "Rate reduction per layer")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cosine_similarity(Z, y):
    """``|cos|`` between every pair of samples, rows sorted by class, and the order."""
    flat = np.asarray(Z, dtype=np.float64).reshape(len(Z), -1)
    flat = flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-30)
    order = np.argsort(y, kind="stable")
    flat = flat[order]
    return np.abs(flat @ flat.T), order


def plot_cosine_similarity(before, after, y, path, titles=("before", "after")):
    """Class-by-class ``|cosine similarity|`` of features before and after the network.

    Samples are sorted by class, so a block-diagonal picture means features of
    one class are aligned and features of different classes orthogonal.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    for ax, Z, title in zip(axes, (before, after), titles):
        sim, order = cosine_similarity(Z, y)
        image = ax.imshow(sim, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
        sorted_y = np.asarray(y)[order]
        edges = np.flatnonzero(np.diff(sorted_y)) + 0.5
        for e in edges:
            ax.axhline(e, color="k", lw=0.3)
            ax.axvline(e, color="k", lw=0.3)
        ax.set_title(f"|cos| of features {title}")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=axes, shrink=0.8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
