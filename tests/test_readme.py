"""The README's Python quick start: it parses, and every line runs as written."""
import numpy as np
import pytest

from conftest import load_bench


def test_quick_start_block_compiles():
    source = load_bench("quickstart.py").quickstart_source()
    compile(source, "<README quick start>", "exec")
    assert "crn.fine_tune(" in source and "validation_data=(X_val, y_val)" in source


@pytest.mark.slow
def test_quick_start_runs_as_written(monkeypatch, tmp_path):
    # The block as written, on the real data, with a 16-channel lifting so that the test
    # takes seconds (bench/quickstart.py times the 256-channel network itself).
    torch = pytest.importorskip("torch")
    import convredunet as crn

    original = crn.ReduNet1D.fit

    def small(self, X, y):
        return original(self.set_params(n_channels=16, n_components=4), X, y)

    monkeypatch.setattr(crn.ReduNet1D, "fit", small)
    monkeypatch.chdir(tmp_path)
    quickstart = load_bench("quickstart.py")
    rows, total, namespace = quickstart.run(quickstart.quickstart_source(), threads=1)
    assert (tmp_path / "model.npz").exists()
    net, net2, module = namespace["net"], namespace["net2"], namespace["module"]
    np.testing.assert_array_equal(namespace["labels"].numpy(), net.predict(namespace["X_test"]))
    np.testing.assert_array_equal(net2.transform(namespace["X_test"][:50]),
                                  net.transform(namespace["X_test"][:50]))
    small_module = namespace["small"]
    best = namespace["best"]
    history = small_module.fine_tune_history
    assert best == max(range(len(history)), key=lambda e: (history[e]["validation_accuracy"],
                                                           -e))
    assert isinstance(small_module, torch.nn.Module) and small_module is not module
    for name, value in net.to_torch().state_dict().items():  # the exported module untouched
        torch.testing.assert_close(module.state_dict()[name], value, rtol=0, atol=0)
