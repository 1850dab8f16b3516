"""The command line's ``--scheduler``: fit and evaluate on a Dask cluster.

``--scheduler ADDRESS`` connects to a running scheduler (``tcp://host:8786``);
``--scheduler local[:N]`` starts a ``LocalCluster`` of N worker processes (default: one
per core), one thread each. The data go to the cluster as Dask arrays chunked along
samples (``--chunk-size``); ``--data mnist1d:N`` generates N MNIST-1D-style signals on
the workers (:func:`convredunet.datasets.mnist1d_dask`), 20 % of them held out for testing.
Without ``--scheduler`` nothing here is used and Dask is not needed.
"""
import contextlib
import re

import numpy as np

DEFAULT_CHUNK = 10_000
_LOCAL = re.compile(r"^local(?::(\d+))?$")
_GENERATED = re.compile(r"^mnist1d:(\d+)$")


def add_options(parser):
    group = parser.add_argument_group("scale-out (Dask)")
    group.add_argument("--scheduler", default=None, metavar="ADDRESS|local[:N]",
                       help="run on a Dask cluster: a scheduler address, or local[:N] for a "
                            "LocalCluster of N worker processes (needs convredunet[dask]); "
                            "with it, --data mnist1d:N generates N signals on the workers")
    group.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK,
                       help=f"samples per Dask chunk with --scheduler (default {DEFAULT_CHUNK})")


class Session:
    """The client of a ``--scheduler`` run (or nothing without one)."""

    def __init__(self, client, chunk_size, quiet):
        self.client = client
        self.chunk_size = chunk_size
        self.quiet = quiet

    def load(self, load_data, args, model=None):
        """``load_data``'s result, or with ``--data mnist1d:N`` lazily generated signals."""
        match = _GENERATED.match(args.data or "")
        if match is None:
            return load_data(args.data, model, args.n_train_per_class, args.n_test_per_class,
                             args.seed)
        if self.client is None:
            raise _error(f"--data {args.data} generates its signals on a Dask cluster; "
                         "add --scheduler local or --scheduler ADDRESS")
        from .datasets import mnist1d_dask

        n = int(match.group(1))
        if n < 10:
            raise _error(f"--data mnist1d:N needs N >= 10 signals, got {n}")
        X, y = mnist1d_dask(n, chunk_size=self.chunk_size, seed=args.seed)
        X, y = self.client.persist([X, y])
        cut = int(0.8 * n)
        return X[:cut], y[:cut], X[cut:], y[cut:], model or "1d"

    def array(self, a):
        """``a`` as a Dask array chunked along samples (unchanged without a scheduler)."""
        if self.client is None or a is None or _is_dask(a):
            return a
        import dask.array as da

        a = np.asarray(a)
        return da.from_array(a, chunks=(self.chunk_size,) + a.shape[1:])

    def compute(self, x):
        """A lazy result computed on the cluster, with a progress bar unless quiet."""
        if not _is_dask(x):
            return x
        future = self.client.compute(x)
        if not self.quiet:
            from distributed import progress

            progress(future)
            print()
        return future.result()

    def wrap(self, net):
        """``net`` whose ``predict`` and ``transform`` run on the cluster (numpy in, numpy out)."""
        return net if self.client is None else _OnCluster(net, self)


class _OnCluster:
    def __init__(self, net, session):
        self._net, self._session = net, session

    def __getattr__(self, name):
        return getattr(self._net, name)

    def predict(self, X):
        return self._session.compute(self._net.predict(self._session.array(X)))

    def transform(self, X):
        return self._session.compute(self._net.transform(self._session.array(X)))


def _is_dask(x):
    from .distributed import is_dask

    return is_dask(x)


def _error(message):
    """A user-input error (the command line prints it as one line, exit status 2)."""
    return ValueError(message)


@contextlib.contextmanager
def session(args):
    """A :class:`Session` for ``args.scheduler`` (closed, and a local cluster stopped, after)."""
    spec = getattr(args, "scheduler", None)
    chunk = getattr(args, "chunk_size", DEFAULT_CHUNK)
    quiet = getattr(args, "quiet", False) or getattr(args, "json", False)
    if chunk is None or chunk < 1:
        raise _error(f"--chunk-size must be a positive integer, got {chunk}")
    if spec is None:
        yield Session(None, chunk, quiet)
        return
    try:
        import distributed
    except ImportError:
        raise _error("--scheduler needs Dask: pip install 'convredunet[dask]'") from None
    match = _LOCAL.match(spec)
    with contextlib.ExitStack() as stack:
        if match:
            n = int(match.group(1)) if match.group(1) else None
            if n is not None and n < 1:
                raise _error(f"--scheduler local:N needs N >= 1 workers, got {n}")
            cluster = stack.enter_context(distributed.LocalCluster(
                n_workers=n, threads_per_worker=1, processes=True))
            client = stack.enter_context(distributed.Client(cluster))
        else:
            try:
                client = stack.enter_context(distributed.Client(spec, timeout="10s"))
            except (OSError, TimeoutError, ValueError) as exc:
                raise _error(f"--scheduler {spec!r}: no Dask scheduler answered ({exc})") \
                    from None
        workers = client.scheduler_info()["workers"]
        if not quiet:
            threads = sum(w["nthreads"] for w in workers.values())
            print(f"Dask: {len(workers)} workers, {threads} threads at "
                  f"{client.scheduler.address}; dashboard {client.dashboard_link}", flush=True)
        yield Session(client, chunk, quiet)
