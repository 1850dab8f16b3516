"""Figures: the shift-invariant similarity against brute force, and the heatmaps are written."""
import numpy as np
import pytest

from convredunet.figures import max_shift_cosine, plot_cosine_similarity


def _brute(Z, ndim):
    flat = Z.reshape(len(Z), -1)
    flat = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    unit = flat.reshape(Z.shape)
    axes = tuple(range(-ndim, 0))
    shifts = np.ndindex(*Z.shape[-ndim:])
    best = np.full((len(Z), len(Z)), -np.inf)
    for s in shifts:
        rolled = np.roll(unit, s, axis=axes).reshape(len(Z), -1)
        best = np.maximum(best, unit.reshape(len(Z), -1) @ rolled.T)
    return best


@pytest.mark.parametrize("shape, ndim", [((3, 10), 1), ((2, 5, 6), 2)])
def test_max_shift_cosine_matches_brute_force(shape, ndim):
    Z = np.random.default_rng(0).standard_normal((7,) + shape)
    np.testing.assert_allclose(max_shift_cosine(Z, ndim, rows=3), _brute(Z, ndim), atol=1e-12)
    # a sample and its shifted copy are identical up to a shift
    Z[1] = np.roll(Z[0], 3, axis=-1)
    assert max_shift_cosine(Z, ndim)[0, 1] == pytest.approx(1.0)


def test_cosine_heatmaps_written(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((12, 16))
    F = rng.standard_normal((12, 3, 16))
    y = np.arange(12) % 3
    fig, panels = plot_cosine_similarity(X, F, y, tmp_path / "cos.png", title="t")
    assert (tmp_path / "cos.png").stat().st_size > 0
    assert len(panels) == 3 and all(p.shape == (12, 12) for p in panels)
    assert len(plot_cosine_similarity(X, X, y, tmp_path / "v.png")[1]) == 2  # vectors
    assert len(fig.axes) == 4  # three panels and the colour bar


def test_figures_leave_matplotlib_as_it_was():
    """No backend switch and no pyplot figure: figures are plain Figure objects."""
    import sys

    import matplotlib

    backend = matplotlib.get_backend()
    from convredunet.figures import plot_rates

    fig = plot_rates([{"delta_R": 1.0, "R": 2.0, "R_c": 1.0}])
    assert type(fig).__name__ == "Figure" and matplotlib.get_backend() == backend
    pyplot = sys.modules.get("matplotlib.pyplot")
    assert pyplot is None or not pyplot.get_fignums()
