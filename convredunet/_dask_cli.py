"""The command line's ``--scheduler``: fit and evaluate on a Dask cluster.

``--scheduler ADDRESS`` connects to a running scheduler (``tcp://host:8786``);
``--scheduler local[:N]`` starts a ``LocalCluster`` of N worker processes (default: one
per core), one thread each. The data go to the cluster as Dask arrays chunked along
samples (``--chunk-size``); ``--data mnist1d:N`` generates N MNIST-1D-style signals on
the workers (:func:`convredunet.datasets.mnist1d_dask`), 20 % of them held out for testing.
Without ``--scheduler`` nothing here is used and Dask is not needed.

What is refused, and when (one line, exit status 2):

* before any cluster is started: a bad ``--scheduler`` or ``--chunk-size``, ``--data
  mnist1d:N`` without a scheduler or with ``N < 10``, a ``--backend`` other than numpy
  (the workers run numpy), and sizes this machine cannot hold: ``evaluate`` brings the
  signals and their features here, and with ``local[:N]`` the cluster's data (the
  signals and two layers of features) must fit in this machine's memory plus the free
  disk its workers spill to;
* when connecting (at most ``--connect-timeout`` seconds, default 10): an address where
  no Dask scheduler answers (nothing listening, a server speaking another protocol, a
  Dask worker);
* after connecting, before any data are made: sizes beyond the memory limits plus the
  free spill disk of the remote cluster's workers.
"""
import contextlib
import dataclasses
import math
import os
import re
import shutil
import tempfile

import numpy as np

DEFAULT_CHUNK = 10_000
DEFAULT_CONNECT_TIMEOUT = 10.0
_LOCAL = re.compile(r"^local(?::(\d+))?$")
_GENERATED = re.compile(r"^mnist1d:(\d+)$")
# One MNIST-1D signal: 40 float64 samples.
SIGNAL_LENGTH, _SIGNAL_BYTES = 40, 40 * 8


def add_options(parser):
    group = parser.add_argument_group("scale-out (Dask)")
    group.add_argument("--scheduler", default=None, metavar="ADDRESS|local[:N]",
                       help="run on a Dask cluster: a scheduler address, or local[:N] for a "
                            "LocalCluster of N worker processes (needs convredunet[dask]); "
                            "with it, --data mnist1d:N generates N signals on the workers")
    group.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK,
                       help=f"samples per Dask chunk with --scheduler (default {DEFAULT_CHUNK})")
    group.add_argument("--connect-timeout", type=float, default=DEFAULT_CONNECT_TIMEOUT,
                       metavar="SECONDS",
                       help="with --scheduler ADDRESS: give up when no Dask scheduler has "
                            f"answered within this time (default {DEFAULT_CONNECT_TIMEOUT:g})")


def _error(message):
    """A user-input error (the command line prints it as one line, exit status 2)."""
    return ValueError(message)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What ``--scheduler`` and ``--data`` ask for, checked before anything starts.

    Attributes
    ----------
    scheduler : str or None
    local_workers : int or None, or -1 for ``local`` (one worker per core)
    n_generated : int or None, N of ``--data mnist1d:N``
    chunk_size : int
    connect_timeout : float
    """

    scheduler: object
    local_workers: object
    n_generated: object
    chunk_size: int
    connect_timeout: float

    @property
    def local(self):
        return self.local_workers is not None


def plan(args):
    """Parse and check ``--scheduler``, ``--chunk-size``, ``--connect-timeout`` and ``--data``.

    Nothing is started or imported here beyond the check that Dask is installed.
    """
    spec = getattr(args, "scheduler", None)
    chunk = getattr(args, "chunk_size", DEFAULT_CHUNK)
    timeout = getattr(args, "connect_timeout", DEFAULT_CONNECT_TIMEOUT)
    if chunk is None or chunk < 1:
        raise _error(f"--chunk-size must be a positive integer, got {chunk}")
    if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
        raise _error(f"--connect-timeout must be a positive number of seconds, got {timeout}")
    match = _GENERATED.match(getattr(args, "data", None) or "")
    n = int(match.group(1)) if match else None
    if n is not None:
        if spec is None:
            raise _error(f"--data {args.data} generates its signals on a Dask cluster; "
                         "add --scheduler local or --scheduler ADDRESS")
        if n < 10:
            raise _error(f"--data mnist1d:N needs N >= 10 signals, got {n}")
    local = None
    if spec is not None:
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise _error("--scheduler needs Dask: pip install 'convredunet[dask]'") from None
        found = _LOCAL.match(spec)
        if found:
            local = int(found.group(1)) if found.group(1) else -1
            if local == 0:
                raise _error(f"--scheduler local:N needs N >= 1 workers, got {local}")
    return Plan(spec, local, n, chunk, float(timeout))


def fit_bytes(n, n_channels, itemsize):
    """What a fit of ``n`` generated signals keeps on the cluster (bytes).

    The signals and their labels, and two layers of features (a layer's
    input and output) of ``n_channels x 40`` values of ``itemsize`` bytes.
    """
    return n * (_SIGNAL_BYTES + 8) + 2 * n * n_channels * SIGNAL_LENGTH * itemsize


def evaluate_bytes(n, n_channels, itemsize):
    """What ``evaluate`` brings to this machine for ``n`` generated signals (bytes).

    The signals (train and test) and their features, for the reference classifiers.
    """
    return n * (_SIGNAL_BYTES + 8) + n * n_channels * SIGNAL_LENGTH * itemsize


def _gib(n_bytes):
    return f"{n_bytes / 2 ** 30:,.1f} GiB"


def _machine_memory():
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return None


def check_client_bytes(plan_, n_bytes, what):
    """Refuse ``n_bytes`` that this machine must hold and cannot (its physical memory)."""
    memory = _machine_memory()
    if plan_.n_generated is None or memory is None or n_bytes <= memory:
        return
    raise _error(f"--data mnist1d:{plan_.n_generated}: {what} needs about {_gib(n_bytes)} on "
                 f"this machine, more than its {_gib(memory)} of memory; use fewer signals")


def check_local_cluster_bytes(plan_, n_bytes):
    """With ``local[:N]``: refuse cluster data beyond this machine's memory plus free spill disk."""
    if plan_.n_generated is None or not plan_.local:
        return
    memory = _machine_memory()
    if memory is None:  # pragma: no cover
        return
    disk = shutil.disk_usage(tempfile.gettempdir()).free
    if n_bytes > memory + disk:
        raise _error(f"--data mnist1d:{plan_.n_generated} needs about {_gib(n_bytes)} on the "
                     f"cluster (the signals and two layers of features), more than this "
                     f"machine's {_gib(memory)} of memory and {_gib(disk)} of free disk in "
                     f"{tempfile.gettempdir()} that --scheduler {plan_.scheduler} can use; use "
                     "fewer signals or a larger cluster")


def _worker_capacity(dask_worker):
    memory = getattr(dask_worker, "memory_limit", None) or 0
    directory = getattr(dask_worker, "local_directory", None) or tempfile.gettempdir()
    return memory, shutil.disk_usage(directory).free


def check_remote_cluster_bytes(plan_, client, n_bytes):
    """On a remote cluster: refuse data beyond its workers' memory limits plus free spill disk."""
    if plan_.n_generated is None or plan_.local:
        return
    try:
        capacity = client.run(_worker_capacity)
    except Exception:  # a worker that cannot say: nothing to check against
        return
    memory = sum(m for m, _ in capacity.values())
    disk = sum(d for _, d in capacity.values())
    if memory and n_bytes > memory + disk:
        raise _error(f"--data mnist1d:{plan_.n_generated} needs about {_gib(n_bytes)} on the "
                     f"cluster (the signals and two layers of features), more than the "
                     f"{_gib(memory)} memory limits and {_gib(disk)} of free disk of its "
                     f"{len(capacity)} workers; use fewer signals or a larger cluster")


async def _identify(address, timeout):
    """The ``identity`` reply of whatever Dask server listens at ``address``."""
    import asyncio

    from distributed.comm import connect

    comm = await asyncio.wait_for(connect(address, timeout=timeout), timeout)
    try:
        await asyncio.wait_for(comm.write({"op": "identity", "reply": True}), timeout)
        return await asyncio.wait_for(comm.read(), timeout)
    finally:
        comm.abort()


def probe_scheduler(address, timeout):
    """Check, within ``timeout`` seconds, that a Dask scheduler answers at ``address``.

    ``distributed.Client(address, timeout=...)`` bounds the connection but not
    the handshake that follows, so a server that accepts and then says nothing
    (or speaks HTTP) can hold it forever; here every step is bounded, and any
    failure is one ``ValueError`` naming the address.
    """
    import asyncio

    try:
        reply = asyncio.run(asyncio.wait_for(_identify(address, timeout), timeout))
    except asyncio.TimeoutError:
        raise _error(f"--scheduler {address!r}: no Dask scheduler answered within "
                     f"{timeout:g} s (see --connect-timeout)") from None
    except OSError as exc:  # refused, unreachable, closed by the other side
        text = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise _error(f"--scheduler {address!r}: no Dask scheduler answered ({text})") from None
    except Exception as exc:  # a bad address, or a server speaking another protocol
        text = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise _error(f"--scheduler {address!r}: no Dask scheduler answered (the address is "
                     f"not valid, or the server there does not speak Dask's protocol: "
                     f"{text})") from None
    kind = reply.get("type") if isinstance(reply, dict) else None
    if kind != "Scheduler":
        raise _error(f"--scheduler {address!r}: the server there is not a Dask scheduler "
                     f"(it says it is {kind or 'something else'}); give the scheduler's "
                     "address, e.g. tcp://host:8786")


class Session:
    """The client of a ``--scheduler`` run (or nothing without one)."""

    def __init__(self, client, plan_, quiet):
        self.client = client
        self.plan = plan_
        self.chunk_size = plan_.chunk_size
        self.quiet = quiet

    def generate(self, seed):
        """``--data mnist1d:N``: ``(X_train, y_train, X_test, y_test)`` made on the workers."""
        from .datasets import mnist1d_dask

        n = self.plan.n_generated
        X, y = mnist1d_dask(n, chunk_size=self.chunk_size, seed=seed)
        X, y = self.client.persist([X, y])
        cut = int(0.8 * n)
        return X[:cut], y[:cut], X[cut:], y[cut:]

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
    from ._inputs import is_dask

    return is_dask(x)


@contextlib.contextmanager
def session(args, plan_=None, cluster_bytes=None):
    """A :class:`Session` for ``args.scheduler`` (closed, and a local cluster stopped, after).

    ``plan_``: from :func:`plan` (made here when None). ``cluster_bytes``: what
    the run keeps on the cluster, checked against a remote cluster's capacity
    once connected (a local one is checked by the caller before this).
    """
    plan_ = plan(args) if plan_ is None else plan_
    quiet = getattr(args, "quiet", False) or getattr(args, "json", False)
    if plan_.scheduler is None:
        yield Session(None, plan_, quiet)
        return
    import distributed

    with contextlib.ExitStack() as stack:
        if plan_.local:
            n = None if plan_.local_workers == -1 else plan_.local_workers
            cluster = stack.enter_context(distributed.LocalCluster(
                n_workers=n, threads_per_worker=1, processes=True))
            client = stack.enter_context(distributed.Client(cluster))
        else:
            probe_scheduler(plan_.scheduler, plan_.connect_timeout)
            try:
                client = stack.enter_context(distributed.Client(
                    plan_.scheduler, timeout=f"{plan_.connect_timeout}s"))
            except (OSError, TimeoutError, ValueError) as exc:
                raise _error(f"--scheduler {plan_.scheduler!r}: no Dask scheduler answered "
                             f"({exc})") from None
            if cluster_bytes is not None:
                check_remote_cluster_bytes(plan_, client, cluster_bytes)
        workers = client.scheduler_info()["workers"]
        if not quiet:
            threads = sum(w["nthreads"] for w in workers.values())
            print(f"Dask: {len(workers)} workers, {threads} threads at "
                  f"{client.scheduler.address}; dashboard {client.dashboard_link}", flush=True)
        yield Session(client, plan_, quiet)
