"""Scale-out: samples per second for fit and transform against the number of samples,
in process and on a Dask LocalCluster of 1 and 2 worker processes, with peak memory.

    python3 bench/scale.py [--quick] [--sizes 10000,30000,100000] [--big 300000] [--out DIR]
                           [--threads N]
    python3 bench/scale.py --agreement    # default network, in process vs 2 workers

``--threads``: the setting of this process (the in-process cells, the Dask client's
solves); default every core, as the recorded ``scale.json`` ran. Each Dask worker runs one
thread.

Data: MNIST-1D-style signals made chunk by chunk on the workers from a pool of the 5000
MNIST-1D signals (each sample a pool signal, cyclically shifted and with 5 % noise, seeded
per chunk): the same numbers in every mode, and cheap to make, so that the times are the
network's (the ``mnist1d`` package itself makes about 1000 signals per second per core;
``convredunet.datasets.mnist1d_dask`` uses it). The input is made and persisted before
the clock starts. Network: ``ReduNet1D(n_layers=4, n_channels=8)`` (else the defaults).

Every cell checks its rates per layer against the in-process fit of the same size (the
benchmark refuses to record disagreeing numbers). Memory: the peak resident memory of the
client process (above its level before the fit) and of each worker process, sampled every
0.2 s; in process, the peak of a fresh process (``ru_maxrss``).

Writes ``scale.json``, ``scale.md`` and ``scale.png`` (log-log) to ``--out``, and the cost
model fitted on the 2-worker points (``time = L (a + b n / w)`` per fit), checked against
the other points, with its estimate for 10^8 signals on N machines.
"""
import json
import os
import resource
import subprocess
import sys
import threading
import time

import numpy as np

import harness

PARAMS = dict(n_layers=4, n_channels=8)
CHUNK = 10_000
NOISE = 0.05


# --- data -----------------------------------------------------------------------------------
def _pool():
    from convredunet.datasets import load_mnist1d

    X, y, Xt, yt = load_mnist1d()
    return np.concatenate([X, Xt]), np.concatenate([y, yt])


def make_chunk(pool_X, pool_y, n, seed):
    """``n`` signals: pool signals, each cyclically shifted, with ``NOISE`` noise."""
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(pool_X), n)
    shifts = rng.integers(0, pool_X.shape[1], n)
    idx = (np.arange(pool_X.shape[1])[None, :] - shifts[:, None]) % pool_X.shape[1]
    X = pool_X[pick[:, None], idx] + NOISE * rng.standard_normal((n, pool_X.shape[1]))
    return X, pool_y[pick]


def _sizes(n):
    return [min(CHUNK, n - s) for s in range(0, n, CHUNK)]


def numpy_data(n):
    pool_X, pool_y = _pool()
    parts = [make_chunk(pool_X, pool_y, size, [7, i]) for i, size in enumerate(_sizes(n))]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def dask_data(client, n):
    import dask
    import dask.array as da

    pool_X, pool_y = _pool()
    shared = client.scatter([pool_X, pool_y], broadcast=True)
    xs, ys = [], []
    for i, size in enumerate(_sizes(n)):
        task = dask.delayed(make_chunk, nout=2, pure=False)(shared[0], shared[1], size, [7, i])
        xs.append(da.from_delayed(task[0], (size, pool_X.shape[1]), np.float64))
        ys.append(da.from_delayed(task[1], (size,), pool_y.dtype))
    X, y = client.persist([da.concatenate(xs), da.concatenate(ys)])
    from distributed import wait

    wait([X, y])
    return X, y


# --- memory ---------------------------------------------------------------------------------
def _rss():
    import psutil

    return psutil.Process().memory_info().rss


def _spilled(dask_worker):
    """Bytes a worker holds on disk now (0 where its store does not spill)."""
    total = getattr(dask_worker.data, "spilled_total", None)
    return 0 if total is None else int(total[0])


class Sampler:
    """Peak RSS of this process and of every worker, and the most any worker spilled."""

    def __init__(self, client=None, period=0.2):
        self.client, self.period = client, period
        self.client_peak, self.worker_peak, self.spilled = 0, {}, 0
        self._stop = threading.Event()

    def __enter__(self):
        self.base = _rss()
        self.worker_base = {} if self.client is None else self.client.run(_rss)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.client_peak = max(self.client_peak, _rss())
            if self.client is not None:
                try:
                    for w, rss in self.client.run(_rss).items():
                        self.worker_peak[w] = max(self.worker_peak.get(w, 0), rss)
                    self.spilled = max([self.spilled]
                                       + list(self.client.run(_spilled).values()))
                except Exception:  # a busy worker answers late; the next sample counts
                    pass
            time.sleep(self.period)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.client_peak = max(self.client_peak, _rss())
        return False


# --- cells ----------------------------------------------------------------------------------
def inprocess_cell(n):
    """Fit and transform in this process (run in a fresh process: its peak is the cell's)."""
    from convredunet import ReduNet1D

    X, y = numpy_data(n)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with harness.Timer() as fit:
        model = ReduNet1D(**PARAMS).fit(X, y)
    with harness.Timer() as tr:
        Z = model.transform(X)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"mode": "in-process", "workers": 0, "n": n, "fit_s": fit.seconds,
            "transform_s": tr.seconds, "client_peak_bytes": peak - base,
            "worker_peak_bytes": None, "feature_bytes": Z.nbytes,
            "rates": [[h["R"], h["R_c"]] for h in model.history_],
            "train_accuracy": model.history_[-1]["train_accuracy"]}


def dask_cell(client, n, workers):
    from distributed import wait

    from convredunet import ReduNet1D

    X, y = dask_data(client, n)
    idle = max(client.run(_rss).values())
    with Sampler(client) as fit_mem, harness.Timer() as fit:
        model = ReduNet1D(**PARAMS).fit(X, y)
    with Sampler(client) as tr_mem, harness.Timer() as tr:
        Z = model.transform(X).persist()
        wait(Z)
    feature_bytes = Z.nbytes
    del Z, X, y
    return {"mode": f"dask {workers} worker" + ("s" if workers > 1 else ""),
            "workers": workers, "n": n, "fit_s": fit.seconds, "transform_s": tr.seconds,
            "client_peak_bytes": max(fit_mem.client_peak - fit_mem.base,
                                     tr_mem.client_peak - tr_mem.base),
            "worker_peak_bytes": max(list(fit_mem.worker_peak.values())
                                     + list(tr_mem.worker_peak.values())),
            "worker_idle_bytes": idle, "feature_bytes": feature_bytes,
            "worker_spilled_bytes": max(fit_mem.spilled, tr_mem.spilled),
            "memory_limit": client.run(lambda dask_worker: dask_worker.memory_manager
                                       .memory_limit).popitem()[1],
            "rates": [[h["R"], h["R_c"]] for h in model.history_],
            "train_accuracy": model.history_[-1]["train_accuracy"]}


def run_inprocess(n, threads=None):
    """One in-process cell in a fresh Python process, at ``threads`` (None: every core)."""
    setting = [] if threads is None else ["--threads", str(threads)]
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--cell", str(n)]
                         + setting, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- cost model -----------------------------------------------------------------------------
def fit_model(rows, key):
    """Least squares ``seconds = a + b n / w`` on the 1-worker rows (one core's cost)."""
    pts = [(r["n"] / r["workers"], r[key]) for r in rows if r["workers"] == 1]
    A = np.array([[1.0, x] for x, _ in pts])
    (a, b), *_ = np.linalg.lstsq(A, np.array([t for _, t in pts]), rcond=None)
    return float(max(a, 0.0)), float(b)


def estimate(a, b, n, machines, cores, n_layers_ratio=1.0):
    """Seconds for ``n`` samples on ``machines`` x ``cores`` one-thread workers."""
    return n_layers_ratio * (a + b * n / (machines * cores))


def main(argv=None):
    parser = harness.arguments(__doc__.splitlines()[0],
                               quick_help="sizes 10000 and 20000, no --big sizes",
                               threads_default=None,
                               threads_help="this process's: the in-process cells and the "
                                            "Dask client, as the recorded scale.json ran; "
                                            "each Dask worker runs one thread")
    parser.add_argument("--sizes", default="10000,30000,100000")
    parser.add_argument("--big", default="300000",
                        help="sizes run on 2 workers only (comma separated, or none)")
    parser.add_argument("--memory-limit", default="8GiB",
                        help="memory limit of each worker (beyond it, the cluster spills)")
    parser.add_argument("--append", action="store_true",
                        help="run only the --big sizes on 2 workers and add them to the rows "
                             "of --out/scale.json")
    parser.add_argument("--cell", type=int, default=None, help=argparse_hidden())
    parser.add_argument("--agreement", action="store_true",
                        help="only compare a 12-layer ReduNet1D on MNIST-1D in process and "
                             "on 2 workers (scale_agreement.json)")
    args = parser.parse_args(argv)
    with harness.thread_setting(args.threads):
        if args.cell is not None:
            print(json.dumps(inprocess_cell(args.cell)))
            return 0
        if args.agreement:
            return agreement(harness.output_dir(args.out))
        return measure(args)


def measure(args):
    """The scale-out cells of ``args`` (parsed by :func:`main`); writes the records."""
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    big = [] if args.big in ("", "none") else [int(float(s)) for s in args.big.split(",")]
    if args.quick:
        sizes, big = [10_000, 20_000], []
    out = harness.output_dir(args.out)
    started = time.time()
    machine = harness.machine_info()
    load_before = harness.load_average()
    rows, previous = [], None
    if args.append:
        previous = json.loads((out / "scale.json").read_text())
        rows = previous["rows"]
        load_before = previous["load_average_before"]
    else:
        for n in sizes:
            harness.log(True, f"in-process n={n}")
            rows.append(run_inprocess(n, args.threads))
    import distributed

    for workers in ((2,) if args.append else (1, 2)):
        with distributed.LocalCluster(n_workers=workers, threads_per_worker=1,
                                      processes=True, dashboard_address=None,
                                      memory_limit=args.memory_limit) as cluster, \
                distributed.Client(cluster) as client:
            todo = ([] if args.append else sizes) + (big if workers == 2 else [])
            for n in todo:
                harness.log(True, f"dask {workers} worker(s) n={n}")
                row = dask_cell(client, n, workers)
                if args.memory_limit != "8GiB":
                    row["mode"] += f", {args.memory_limit} each"
                rows.append(row)
    # Same numbers: every cell's rates against the in-process cell of its size.
    reference = {r["n"]: np.array(r["rates"]) for r in rows if r["workers"] == 0}
    for r in rows:
        if r["n"] in reference:
            ref = reference[r["n"]]
            r["max_rate_rel_diff"] = float(np.max(np.abs(np.array(r["rates"]) - ref)
                                                  / np.abs(ref)))
            if r["max_rate_rel_diff"] > 1e-10:
                raise SystemExit(f"{r['mode']} n={r['n']}: rates differ from in-process by "
                                 f"{r['max_rate_rel_diff']:.2e}; not recorded")
    for r in rows:
        r["fit_samples_per_s"] = r["n"] / r["fit_s"]
        r["transform_samples_per_s"] = r["n"] / r["transform_s"]

    fit_a, fit_b = fit_model(rows, "fit_s")
    tr_a, tr_b = fit_model(rows, "transform_s")
    for r in rows:
        if r["workers"]:
            r["model_fit_s"] = estimate(fit_a, fit_b, r["n"], 1, r["workers"])
            r["model_transform_s"] = estimate(tr_a, tr_b, r["n"], 1, r["workers"])
    # Parallel efficiency reached here: 2-worker time predicted / measured.
    two = [r for r in rows if r["workers"] == 2 and "each" not in r["mode"]]
    efficiency = float(np.median([r["model_fit_s"] / r["fit_s"] for r in two])) if two else None
    feature_per_sample = rows[0]["feature_bytes"] / rows[0]["n"]
    projection = []
    for machines in (1, 10, 100):
        n, cores = 10 ** 8, 16
        projection.append({
            "machines": machines, "cores_per_machine": cores, "n": n,
            "fit_hours": estimate(fit_a, fit_b, n, machines, cores) / 3600,
            "transform_hours": estimate(tr_a, tr_b, n, machines, cores) / 3600,
            "features_per_machine_GB": 2 * n * feature_per_sample / machines / 1e9})

    result = {"benchmark": "scale", "params": PARAMS, "chunk": CHUNK, "machine": machine,
              "load_average_before": load_before, "load_average_after": harness.load_average(),
              "rows": rows, "cost_model": {
                  "form": "seconds = a + b * n / workers, a and b fitted on the 1-worker "
                          "points (fit: all layers; a: per-run overhead: scheduling, the "
                          "client's solves); checked against the 2-worker points",
                  "two_worker_efficiency": efficiency,
                  "fit": {"a_s": fit_a, "b_s_per_sample": fit_b},
                  "transform": {"a_s": tr_a, "b_s_per_sample": tr_b},
                  "feature_bytes_per_sample": feature_per_sample,
                  "projection_1e8": projection},
              "seconds": time.time() - started}
    harness.write_json(out / "scale.json", result)
    header = ["mode", "n", "fit samples/s", "transform samples/s", "fit s (model)",
              "client peak MB", "worker peak MB (idle)", "features MB", "spilled MB",
              "rates vs in-process"]
    table = []
    for r in rows:
        table.append([
            r["mode"], f"{r['n']:,}", f"{r['fit_samples_per_s']:,.0f}",
            f"{r['transform_samples_per_s']:,.0f}",
            f"{r['fit_s']:.1f}" + (f" ({r['model_fit_s']:.1f})" if "model_fit_s" in r else ""),
            f"{r['client_peak_bytes'] / 1e6:,.0f}",
            "-" if r["worker_peak_bytes"] is None else
            f"{r['worker_peak_bytes'] / 1e6:,.0f} ({r['worker_idle_bytes'] / 1e6:,.0f})",
            f"{r['feature_bytes'] / 1e6:,.0f}",
            "-" if r.get("worker_spilled_bytes") is None else
            f"{r['worker_spilled_bytes'] / 1e6:,.0f}",
            f"{r['max_rate_rel_diff']:.1e}" if "max_rate_rel_diff" in r else "-"])
    proj = [[f"{p['machines']} x {p['cores_per_machine']} cores", f"{p['fit_hours']:.2f}",
             f"{p['transform_hours']:.2f}", f"{p['features_per_machine_GB']:,.0f}"]
            for p in projection]
    text = (harness.markdown_table(header, table) + "\n\n"
            f"Cost model (1-worker points, least squares): fit = {fit_a:.2f} s + "
            f"{fit_b * 1e3:.3f} ms x n / workers; transform = {tr_a:.2f} s + "
            f"{tr_b * 1e3:.3f} ms x n / workers. On the 2-worker points it predicts "
            f"{efficiency:.2f} of the measured time (1.00 = perfect scaling; this machine "
            "is shared, see the load average).\n\n"
            "10^8 signals (same network), one worker per core, perfect scaling assumed, "
            "estimated:\n\n"
            + harness.markdown_table(["cluster", "fit hours", "transform hours",
                                      "features per machine GB (2 layers held)"], proj)
            + f"\n\nLoad average before / after: {load_before} / {harness.load_average()} "
              f"on {machine['cores_available']} cores.")
    harness.write_text(out / "scale.md", text)
    print(harness.text_table(header, table))
    print(text.split("\n\n", 1)[1])

    fig = harness.figure(10, 4.5)
    for i, key in enumerate(("fit_samples_per_s", "transform_samples_per_s")):
        ax = fig.add_subplot(1, 2, i + 1)
        for mode in dict.fromkeys(r["mode"] for r in rows):
            pts = sorted((r["n"], r[key]) for r in rows if r["mode"] == mode)
            ax.plot(*zip(*pts), "o-", label=mode)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("samples")
        ax.set_ylabel("samples / s")
        ax.set_title(key.split("_")[0] + f" (ReduNet1D, {PARAMS['n_layers']} layers, "
                     f"{PARAMS['n_channels']} channels)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    harness.save_figure(fig, out / "scale.png")
    return 0


# A deep network at a small eps2, where rounding is amplified from layer to layer.
AGREEMENT_PARAMS = dict(n_layers=12, eps2=3e-4, n_channels=32, kernel_size=7, dilations=None,
                        nonlinearity="abs", lifting_bias=1.0, classifier="membership")


def agreement(out):
    """A 12-layer ``ReduNet1D`` on MNIST-1D: in process vs a 2-worker LocalCluster.

    The yardstick is the in-process fit's own change when only its ``batch_size`` changes
    (another order of the same sums).
    """
    import dask.array as da
    import distributed

    from convredunet import ReduNet1D
    from convredunet.datasets import load_mnist1d

    X, y, Xt, yt = load_mnist1d()
    ref = ReduNet1D(**AGREEMENT_PARAMS).fit(X, y)
    other = ReduNet1D(**AGREEMENT_PARAMS, batch_size=1000).fit(X, y)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster):
        with harness.Timer() as t:
            model = ReduNet1D(**AGREEMENT_PARAMS).fit(da.from_array(X, chunks=1000), y)
        Z = model.transform(da.from_array(Xt, chunks=250)).compute()
        predicted = model.predict(da.from_array(Xt, chunks=250)).compute()
        accuracy = model.score(da.from_array(Xt, chunks=250), yt)
    Z_ref, Z_other = ref.transform(Xt), other.transform(Xt)

    def rates(a, b, key):
        return max(abs(p[key] - q[key]) / abs(p[key]) for p, q in zip(a.history_, b.history_))

    def rel(a, b):
        return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))

    record = {"network": f"ReduNet1D({AGREEMENT_PARAMS})",
              "data": "MNIST-1D, 4000 train / 1000 test; dask chunks of 1000 (fit), 250",
              "dask_fit_s": t.seconds, "machine": harness.machine_info(),
              "load_average": harness.load_average()}
    for name, a, z in (("dask_2_workers", model, Z), ("in_process_batch_size_1000", other,
                                                       Z_other)):
        record[name] = {key: rates(a, ref, key) for key in ("R", "R_c", "delta_R")}
        record[name]["features_max_rel"] = rel(z, Z_ref)
    record["dask_2_workers"]["same_predictions"] = bool(np.array_equal(predicted,
                                                                       ref.predict(Xt)))
    record["dask_2_workers"]["test_accuracy"] = accuracy
    record["in_process_test_accuracy"] = ref.score(Xt, yt)
    harness.write_json(out / "scale_agreement.json", record)
    print(json.dumps({k: v for k, v in record.items() if k != "machine"}, indent=1))
    return 0


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main())
