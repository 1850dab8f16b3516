"""The construction benchmark's loop baseline against the dense spatial reference.

The benchmark reports speedups over ``bench/baselines.py``; these tests make
sure that baseline computes the right numbers, and that the benchmark runs.
"""
import json

import numpy as np
import pytest

import convredunet as crn

from conftest import make_features, rel_err, load_bench

baselines = load_bench("baselines.py")


@pytest.mark.parametrize("sample_shape", [(3, 8), (2, 5, 4), (2, 4, 3)],
                         ids=["1d-even", "2d-odd-H", "2d-odd-W"])
def test_loop_baseline_matches_spatial(sample_shape):
    Z, y = make_features(12, sample_shape, k=3, seed=3)
    got = baselines.loop_operators(Z, y, eps2=0.1)
    ref = crn.construct_operators(Z, y, eps2=0.1, domain="spatial")
    E_ref, C_ref = ref.kernels()
    assert got["E"].shape == E_ref.shape and got["C"].shape == C_ref.shape
    assert rel_err(got["E"], E_ref) < 1e-9
    assert rel_err(got["C"], C_ref) < 1e-9
    assert got["R"] == pytest.approx(ref.rates.expansion, rel=1e-9)
    assert got["R_c"] == pytest.approx(ref.rates.compression, rel=1e-9)
    np.testing.assert_allclose(got["gamma"], np.bincount(y) / len(y))
    # The full spectrum holds the stored half spectrum of the reference.
    half = sample_shape[-1] // 2 + 1
    assert rel_err(got["E_hat"][..., :half, :, :], ref.E_hat) < 1e-9
    assert rel_err(got["C_hat"][..., :half, :, :], ref.C_hat) < 1e-9


@pytest.mark.slow
def test_construction_benchmark_runs(tmp_path):
    bench = load_bench("construction.py")
    grid = [bench.Case(8, 2, 2, (8,)), bench.Case(6, 2, 3, (4, 5))]
    result = bench.run(quick=True, out_dir=str(tmp_path), threads=(1,), grid=grid,
                       repeats=1, verbose=False, peak_size=256)
    for name in ("construction.json", "construction.md", "construction.png"):
        assert (tmp_path / name).stat().st_size > 0
    saved = json.loads((tmp_path / "construction.json").read_text())
    assert saved["settings"]["threads"] == [1]
    cells = saved["cells"]
    assert len(cells) == 6 and all(c["status"] == "ok" for c in cells)
    for cell in cells:
        assert cell["seconds"] > 0 and cell["gflops"] > 0
        if cell["method"] != "spectral":
            assert cell["rel_diff_vs_spectral"]["max"] <= 1e-8
    assert result["cells"][0]["method"] == "spectral"
    assert "| method |" in (tmp_path / "construction.md").read_text()
