"""Dask input (convredunet.distributed) on a LocalCluster of 2 worker processes.

Every result is compared with the in-process one on the same data: rates and
features within 1e-12 relative in float64, predictions identical. The networks
are small and shallow; rounding amplified by many layers is discussed in
convredunet/distributed.py.
"""
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import make_features, rel_err, signals

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

from convredunet import (ReduNet1D, ReduNet2D, ReduNetVector,  # noqa: E402
                         construct_operators, rate_reduction)

TOL = 1e-12


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, memory_limit="4GiB") as cluster, \
            distributed.Client(cluster) as c:
        yield c


def _assert_same_fit(a, b):
    for ra, rb in zip(a.history_, b.history_):
        for key in ("R", "R_c"):
            assert abs(ra[key] - rb[key]) <= TOL * abs(ra[key]), (key, ra, rb)
        assert ra["train_accuracy"] == rb["train_accuracy"]
    assert len(a.history_) == len(b.history_)


CASES = {
    "1d": (lambda: ReduNet1D(n_layers=3, n_channels=6, kernel_size=5, eps2=0.1),
           (32,), 3),
    "2d": (lambda: ReduNet2D(n_layers=2, n_channels=4, kernel_size=3, eps2=0.1),
           (2, 8, 8), 3),
    "vector": (lambda: ReduNetVector(n_layers=4, eps2=0.1), (12,), 4),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_same_numbers_as_in_process(client, case):
    make, shape, k = CASES[case]
    X, y = signals(240, shape, k, seed=1, kind="mean")
    X_test, _ = signals(90, shape, k, seed=2, kind="mean")
    ref = make().fit(X, y)
    model = make().fit(da.from_array(X, chunks=70), y)
    _assert_same_fit(ref, model)

    Z_ref, pi_ref = ref.transform_with_membership(X_test)
    Z, pi = model.transform_with_membership(da.from_array(X_test, chunks=40))
    assert isinstance(Z, da.Array) and isinstance(pi, da.Array)
    Z, pi = da.compute(Z, pi)
    assert Z.shape == Z_ref.shape and pi.shape == pi_ref.shape
    assert rel_err(Z, Z_ref) <= TOL
    assert rel_err(pi, pi_ref) <= TOL
    assert np.array_equal(model.predict(da.from_array(X_test, chunks=25)).compute(),
                          ref.predict(X_test))
    if ref.classifier == "subspace":  # the class subspaces from Grams summed over chunks
        assert rel_err(model.subspace_distances(X_test), ref.subspace_distances(X_test)) <= 1e-9


@pytest.mark.slow
def test_chunk_size_invariance(client):
    X, y = signals(300, (24,), 3, seed=3, kind="mean")
    y_dask = da.from_array(y, chunks=111)
    fits = [ReduNet1D(n_layers=3, n_channels=5, eps2=0.1).fit(da.from_array(X, chunks=c),
                                                                labels)
            for c, labels in [(300, y), (41, y_dask), (((7, 150, 143), (24,)), y)]]
    for other in fits[1:]:
        _assert_same_fit(fits[0], other)
    Z = [m.transform(da.from_array(X[:50], chunks=13)).compute() for m in fits]
    for z in Z[1:]:
        assert rel_err(z, Z[0]) <= TOL


@pytest.mark.slow
def test_classes_smaller_than_channels(client):
    """Woodbury classes: their spectra are gathered (m_j < C columns), as in process."""
    rng = np.random.default_rng(4)
    counts = [120, 60, 4]  # d = 24: the last class is kept low rank
    y = np.repeat(np.arange(3), counts)
    rng.shuffle(y)
    X = rng.standard_normal((len(y), 24)) + y[:, None]
    ref = ReduNetVector(n_layers=3, eps2=0.1).fit(X, y)
    assert ref.layers_[0].lowrank_classes == [2]
    model = ReduNetVector(n_layers=3, eps2=0.1).fit(da.from_array(X, chunks=50), y)
    assert model.layers_[0].lowrank_classes == [2]
    _assert_same_fit(ref, model)
    assert rel_err(model.transform(da.from_array(X, chunks=64)).compute(),
                   ref.transform(X)) <= TOL


@pytest.mark.slow
def test_rate_reduction_and_operators(client):
    Z, _ = make_features(90, (16, 10), 3, seed=5)
    y = np.repeat([0, 1, 2], [80, 7, 3])  # classes 1 and 2 by Woodbury, class 2 low rank
    Zd, yd = da.from_array(Z, chunks=25), da.from_array(y, chunks=40)
    ref = rate_reduction(Z, y, eps2=0.5)
    got = rate_reduction(Zd, yd, eps2=0.5)
    assert abs(got.expansion - ref.expansion) <= TOL * abs(ref.expansion)
    assert abs(got.compression - ref.compression) <= TOL * abs(ref.compression)
    ops_ref = construct_operators(Z, y, eps2=0.5)
    ops = construct_operators(Zd, y, eps2=0.5)
    assert rel_err(ops.E_hat, ops_ref.E_hat) <= TOL
    assert rel_err(ops.C_hat, ops_ref.C_hat) <= TOL
    assert np.array_equal(ops.gamma, ops_ref.gamma)


@pytest.mark.slow
def test_inference_is_lazy_and_worker_errors_are_clear(client):
    X, y = signals(120, (16,), 2, seed=6, kind="mean")
    model = ReduNet1D(n_layers=2, n_channels=4, eps2=0.1).fit(X, y)
    bad = X.copy()
    bad[77, 3] = np.nan
    # Nothing runs until compute: a NaN in the input is found by the worker then.
    for result in (model.predict(da.from_array(bad, chunks=30)),
                   model.predict_proba(da.from_array(bad, chunks=30)),
                   model.transform(da.from_array(bad, chunks=30))):
        assert isinstance(result, da.Array)
        with pytest.raises(ValueError, match="X must contain only finite values.*sample 77"):
            result.compute()
    assert model.score(da.from_array(X, chunks=50), da.from_array(y, chunks=50)) == \
        model.score(X, y)

    def fail(block, block_info=None):
        if block_info[0]["chunk-location"][0] == 2:
            raise RuntimeError("sensor 2 is unplugged")
        return block

    broken = da.from_array(X, chunks=30).map_blocks(fail, dtype=X.dtype)
    with pytest.raises(RuntimeError, match="sensor 2 is unplugged"):
        ReduNet1D(n_layers=1, n_channels=4).fit(broken, y)
    with pytest.raises(RuntimeError, match="sensor 2 is unplugged"):
        model.predict(broken).compute()


@pytest.mark.slow
def test_errors_name_the_rule(client):
    X, y = signals(40, (16,), 2, seed=7, kind="mean")
    with pytest.raises(ValueError, match="X must have shape"):
        ReduNet1D().fit(da.zeros((4, 2, 3, 5)), y[:4])
    with pytest.raises(ValueError, match="Complex data not supported"):
        ReduNet1D().fit(da.from_array(X.astype(complex), chunks=20), y)
    with pytest.raises(ValueError, match="backend='torch' is not available for Dask input"):
        ReduNet1D(backend="torch").fit(da.from_array(X, chunks=20), y)
    with pytest.raises(ValueError, match="y must have one label per sample"):
        ReduNet1D().fit(da.from_array(X, chunks=20), da.from_array(y[:-1], chunks=20))
    with pytest.raises(ValueError, match="domain='spatial'"):
        rate_reduction(da.from_array(X[:, None], chunks=20), y, domain="spatial")
    model = ReduNet1D(n_layers=1, n_channels=4).fit(X, y)
    with pytest.raises(ValueError, match="expecting 16 features"):
        model.predict(da.from_array(X[:, :8], chunks=20))


def _rss():
    import psutil

    return psutil.Process().memory_info().rss


@pytest.mark.slow
def test_client_memory_stays_far_below_the_features(client):
    """A fit on a dask array built on the workers never brings the features to the client.

    The lifted features and the next layer's (both persisted on the workers) are
    two arrays of ``feature_bytes``; the client's peak RSS is sampled every 20 ms.
    """
    m, t, channels = 64_000, 64, 4
    feature_bytes = m * channels * t * 8  # one layer's features: 131 MB
    rng = da.random.default_rng(0)
    X = rng.standard_normal((m, t), chunks=(8_000, t))
    y = (da.arange(m, chunks=8_000) % 2)
    ReduNet1D(n_layers=1, n_channels=channels, kernel_size=3).fit(X[:2000], y[:2000])  # warm up
    before, peak, done = _rss(), [0], threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        model = ReduNet1D(n_layers=1, n_channels=channels, kernel_size=3).fit(X, y)
    finally:
        done.set()
        watcher.join()
    growth = max(peak[0], _rss()) - before
    assert len(model.history_) == 1
    print(f"client memory grew by {growth / 2**20:.1f} MiB during a fit on "
          f"{feature_bytes / 2**20:.0f} MiB of features per layer")
    assert growth < feature_bytes / 10, (growth, feature_bytes)


@pytest.mark.slow
def test_import_does_not_need_dask():
    code = ("import sys; sys.modules['dask'] = None; sys.modules['distributed'] = None\n"
            "import numpy as np, convredunet\n"
            "X = np.random.default_rng(0).standard_normal((20, 8)); y = np.arange(20) % 2\n"
            "print(convredunet.ReduNetVector(n_layers=1).fit(X, y).predict(X).shape)")
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(20,)"


@pytest.mark.slow
def test_command_line_scheduler(client, tmp_path, capsys):
    from convredunet.cli import main

    model = tmp_path / "model.npz"
    address = client.scheduler.address
    assert main(["fit", "--data", "mnist1d:600", "--scheduler", address, "--chunk-size", "200",
                 "--n-layers", "1", "--n-channels", "4", "--quiet", "--out", str(model)]) == 0
    out = capsys.readouterr().out
    assert "built 1 layers on 480 samples" in out and "test accuracy" in out
    data = tmp_path / "data.npz"
    X, y = signals(160, (40,), 10, seed=8, kind="mean")
    np.savez(data, X=X[:100], y=y[:100], X_test=X[100:], y_test=y[100:])
    assert main(["evaluate", str(model), "--data", str(data), "--scheduler", address,
                 "--json"]) == 0
    assert '"accuracy"' in capsys.readouterr().out
    assert main(["fit", "--data", "mnist1d:600", "--out", str(tmp_path / "m2.npz")]) == 2
    assert "add --scheduler" in capsys.readouterr().err


def test_mnist1d_dask_is_lazy_and_seeded_per_chunk():
    import dask

    from convredunet.datasets import _mnist1d_chunk, mnist1d_dask

    X, y = mnist1d_dask(250, chunk_size=100, seed=3)
    assert X.shape == (250, 40) and y.shape == (250,) and X.chunks[0] == (100, 100, 50)
    X1, y1 = dask.compute(X, y, scheduler="sync")
    X2, y2 = dask.compute(*mnist1d_dask(250, chunk_size=100, seed=3), scheduler="threads")
    assert np.array_equal(X1, X2) and np.array_equal(y1, y2)
    seed = int(np.random.SeedSequence([3, 2]).generate_state(1)[0])
    assert np.array_equal(X1[200:], _mnist1d_chunk(50, seed)[0])
    assert not np.array_equal(X1[:50], X1[100:150])
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        mnist1d_dask(10, seed=-1)


@pytest.mark.parametrize("scheduler", ["threads", "sync"])
def test_without_a_client(scheduler):
    """Dask's own schedulers (no distributed.Client) give the same numbers."""
    import dask

    X, y = signals(150, (16,), 3, seed=9, kind="mean")
    ref = ReduNet1D(n_layers=2, n_channels=4, eps2=0.1).fit(X, y)
    with dask.config.set(scheduler=scheduler):
        model = ReduNet1D(n_layers=2, n_channels=4, eps2=0.1).fit(
            da.from_array(X, chunks=40), da.from_array(y, chunks=40))
        _assert_same_fit(ref, model)
        assert np.array_equal(model.predict(da.from_array(X, chunks=60)).compute(),
                              ref.predict(X))


@pytest.mark.slow
def test_label_membership_and_float32(client):
    X, y = signals(200, (20,), 3, seed=10, kind="mean")
    for params, tol in [(dict(membership="label"), TOL), (dict(dtype="float32"), 1e-5)]:
        ref = ReduNet1D(n_layers=2, n_channels=4, eps2=0.1, **params).fit(X, y)
        model = ReduNet1D(n_layers=2, n_channels=4, eps2=0.1, **params).fit(
            da.from_array(X, chunks=64), y)
        for ra, rb in zip(ref.history_, model.history_):
            assert abs(ra["R"] - rb["R"]) <= tol * abs(ra["R"])
        Z = model.transform(da.from_array(X, chunks=50))
        assert Z.dtype == ref.transform(X).dtype
        assert rel_err(Z.compute(), ref.transform(X)) <= tol


@pytest.mark.slow
def test_workers_keep_their_thread_setting(client):
    """A fit runs each task on one thread and leaves every worker's setting as it was."""
    def setting():
        from convredunet import _threads

        return _threads.get_num_threads(), _threads._setting

    before = client.run(setting)
    X, y = signals(40, (1, 16), k=2, seed=0, kind="mean")
    ReduNet1D(n_layers=1, n_channels=8, kernel_size=3).fit(da.from_array(X, chunks=10), y)
    assert client.run(setting) == before
