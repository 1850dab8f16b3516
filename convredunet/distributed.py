"""Fit, transform and predict on Dask arrays: out of core and on a cluster, same numbers.

The estimators (:mod:`convredunet.estimators`) and :func:`convredunet.rate_reduction` /
:func:`convredunet.construct_operators` send a ``dask.array.Array`` here; numpy arrays and
torch tensors never come here. Dask is optional: this module imports it only when called
with a Dask array, and ``import convredunet`` never imports it.

Input
    ``X`` chunked along samples: whole samples per chunk, any chunk sizes (chunks along the
    other axes are merged first). Labels ``y`` as numpy or Dask. Everything runs on the
    current Dask scheduler: the active ``distributed.Client`` when there is one, Dask's
    default scheduler otherwise.

Fit (layer-major, as the mathematics requires)
    The lifted features are persisted on the workers and never gathered to the client.
    Per layer: one map-reduce pass sums the per-class Gram matrices of every chunk
    (:func:`convredunet.spectral.class_grams`) in a tree of fan-in :data:`FAN_IN`; the
    client solves them (:func:`convredunet.spectral.solve_grams`, small: ``O(k C^3 F)``);
    the layer is sent to the workers once (``Client.scatter(broadcast=True)``, or one graph
    key without a client); one map pass applies it and the next features are persisted in
    place of the previous ones. Memory per worker: its share of the persisted features
    (which the cluster spills to disk when needed) plus one chunk's work arrays and one
    layer. Classes with fewer samples than channels are solved by the engine through the
    Woodbury identity from their spectra ``V_j`` ``(F, C, m_j)`` themselves, exactly as in
    process: the reduction gathers those spectra (``m_j < C`` columns, so at most ``C^2 F``
    numbers per class), not Gram matrices.

Inference (chunk-major)
    ``transform`` / ``predict`` / ``predict_proba`` return lazy Dask arrays; each chunk
    goes through the lifting and every layer in one task, the network being one object
    shared by all tasks (sent once per worker). Chunk-major reads the input once, stores
    no intermediate features and keeps the result lazy; per worker it holds the whole
    network's operators plus one chunk's work arrays. Layer-major would hold one layer at
    a time but must materialize every sample's features between layers, which for 10^8
    signals is terabytes against the network's megabytes (MNIST-1D, a network of 12
    layers at 32 channels: 45 MB). The one case where the operators dominate is the deep 2D network of
    the paper (25 layers x 75 channels on 28 x 28 images: about 10 GB in float64, 5 GB in
    float32); there the workers need that much memory, or the network must be applied in
    groups of layers with :meth:`Network.forward`'s ``n_layers`` by the caller.

Numbers
    The sums over samples are added in another order than in process (per chunk, then a
    tree), so the results agree to rounding. For networks of a few layers (the tests) the
    rates, the operators and the features agree to better than 1e-12 relative in float64,
    for any chunking, and predictions are identical. Deep networks at small ``eps2``
    amplify rounding from layer to layer (the membership ``softmax(-lmbda ||C^j z||)``
    with ``lmbda = 500``, and ``alpha = C / (m eps2)`` large): for a ``ReduNet1D`` of 12
    layers at 32 channels and ``eps2 = 3e-4`` on MNIST-1D (``bench/scale.py
    --agreement``) ``R`` agrees to 1e-14 at every layer, ``R_c`` to 2.6e-12 and the last
    features to 5.5e-10, where the in-process fit itself moves by 1.3e-13 and 3.6e-10 when
    only its ``batch_size`` changes; predictions and test accuracy (0.856) are identical.
"""
import dataclasses
import functools
import math
import sys
import uuid

import numpy as np

from . import spectral
from ._threads import thread_limits, thread_num_threads
from ._validation import check_batch_size, check_choice, check_eps2
from ._inputs import is_dask
from .backend import numpy_dtype, resolve, runs_on_dask_workers, to_numpy
from .network import Network

__all__ = ["is_dask", "Training", "Fitted", "forward", "predict", "score", "solve", "layer_features",
           "subspace_distances", "rate_history"]

#: Partial sums combined per task in the tree reduction of the Gram matrices.
FAN_IN = 8


# --- detection and the scheduler ------------------------------------------------------------
def _dask():
    import dask
    import dask.array as da

    return dask, da


def current_client():
    """The ``distributed.Client`` Dask computes on now, or None (Dask's local scheduler)."""
    if "distributed" not in sys.modules:
        return None
    import dask
    from distributed import default_client

    try:
        client = default_client()
    except ValueError:
        return None
    scheduler = dask.base.get_scheduler()
    return client if getattr(scheduler, "__self__", None) is client else None


def _share(obj, what):
    """``obj`` as one piece of the cluster's data, used by many tasks.

    With a client: scattered to every worker once (a Future). Without: one graph key.
    """
    client = current_client()
    if client is not None:
        return client.scatter(obj, broadcast=True, hash=False)
    dask, _ = _dask()
    return dask.delayed(obj, name=f"convredunet-{what}-{uuid.uuid4().hex}", traverse=False)


def _task(function):
    """A function Dask runs on chunks: on a distributed worker, one thread per task.

    Dask runs one task per worker thread; convredunet's own threads would only
    compete with them. The setting is the task's thread's own and is restored
    when the task returns, so nothing stays changed on the worker.
    """
    @functools.wraps(function)
    def run(*args, **kwargs):
        if not _on_worker():
            return function(*args, **kwargs)
        with thread_num_threads(1):
            return function(*args, **kwargs)
    return run


def _on_worker():
    """True inside a task on a distributed worker."""
    if "distributed" not in sys.modules:
        return False
    from distributed import get_worker

    try:
        get_worker()
    except ValueError:
        return False
    return True


# --- input ----------------------------------------------------------------------------------
def _check_dask_X(X, name, ndims):
    """A Dask array of real numbers with ``ndim`` in ``ndims``, one chunk per sample block."""
    if X.ndim not in ndims:
        raise ValueError(f"{name} must have {' or '.join(map(str, ndims))} dimensions, got "
                         f"{X.ndim} (shape {X.shape}). Reshape your data")
    if any(isinstance(c, float) and math.isnan(c) for c in X.chunks[0]):
        raise ValueError(f"{name} has unknown chunk sizes along samples; call "
                         f"{name}.compute_chunk_sizes() first")
    if X.shape[0] == 0 or any(s == 0 for s in X.shape[1:]):
        raise ValueError(f"{name} is empty: found a Dask array of shape {X.shape} while a "
                         "minimum of 1 sample and 1 feature is required.")
    dtype = np.dtype(X.dtype)
    if dtype.kind == "c":
        raise ValueError(f"Complex data not supported: {name} must be real, got complex "
                         f"dtype {X.dtype}")
    if dtype.kind == "f" and dtype not in (np.float32, np.float64):
        # As in memory (the numpy backend's as_real_input).
        raise TypeError(f"{name} must be a float32 or float64 array, got dtype {dtype}")
    if dtype.kind not in "fbiu":
        raise TypeError(f"{name} must hold real numbers, got dtype {X.dtype}")
    if any(len(c) > 1 for c in X.chunks[1:]):
        X = X.rechunk({axis: -1 for axis in range(1, X.ndim)})
    if 0 in X.chunks[0]:
        # Empty blocks (boolean indexing leaves them) carry nothing; without them
        # every per-block result lines up with the labels' blocks.
        X = X.rechunk({0: tuple(c for c in X.chunks[0] if c)})
    return X


def _real(x, name, start, dtype=None):
    """A chunk as a real float array, refusing NaN and infinity (sample index in the message)."""
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    if dtype is not None:
        x = x.astype(dtype, copy=False)
    finite = np.isfinite(x)
    if not finite.all():
        bad = np.argwhere(~finite)
        raise ValueError(f"{name} must contain only finite values; found {len(bad)} NaN or "
                         f"infinite entries in the chunk starting at sample {start} (the "
                         f"first in sample {start + int(bad[0][0])})")
    return x


def _starts(chunks):
    return np.concatenate([[0], np.cumsum(chunks)[:-1]]).astype(int).tolist()


def _blocks(x):
    """The Delayed chunks of a sample-chunked Dask array, in order."""
    return list(x.to_delayed().ravel())


def _assemble(parts, chunks, tail, dtype):
    """One Dask array from per-chunk Delayed results of shapes ``(n_i, *tail)``."""
    _, da = _dask()
    return da.concatenate([da.from_delayed(p, shape=(n,) + tuple(tail), dtype=dtype)
                           for p, n in zip(parts, chunks)], axis=0)


# --- labels ---------------------------------------------------------------------------------
def _encode_chunk(y, classes):
    y = np.asarray(y)
    labels = np.searchsorted(classes, y)
    inside = labels < len(classes)
    if not (inside.all() and np.array_equal(classes[labels], y)):
        raise ValueError("y holds a label that is not among the classes found in y")
    return labels.astype(np.int64)


def _bincount_chunk(labels, k):
    return np.bincount(labels, minlength=k)[None]


def encode_labels(y, chunks, check_classes):
    """Classes, integer labels ``0..k-1`` as a persisted Dask array aligned with ``chunks``,
    and the class counts.

    Parameters
    ----------
    y : numpy array or Dask array (n_samples,)
    chunks : tuple of ints, the samples' chunks
    check_classes : callable(values, n) -> (classes, labels)
        The in-process label check, applied to numpy ``y`` or to Dask ``y``'s distinct values.
    """
    dask, da = _dask()
    n = sum(chunks)
    if is_dask(y):
        if y.ndim != 1:
            raise ValueError(f"y must be a 1D array of labels, got shape {y.shape}")
        if any(isinstance(c, float) and math.isnan(c) for c in y.chunks[0]):
            raise ValueError("y has unknown chunk sizes; call y.compute_chunk_sizes() first")
        if y.shape[0] != n:
            raise ValueError(f"y must have one label per sample: X has {n} samples, y has "
                             f"{y.shape[0]}")
        values = np.asarray(da.unique(y).compute())
        classes, _ = check_classes(values, len(values))
        labels = y.rechunk((chunks,)).map_blocks(_encode_chunk, classes, dtype=np.int64)
    else:
        classes, labels = check_classes(y, n)
        labels = da.from_array(np.asarray(labels, dtype=np.int64), chunks=(chunks,))
    k = len(classes)
    labels = labels.persist()
    counts = labels.map_blocks(_bincount_chunk, k, chunks=((1,) * len(chunks), (k,)),
                               new_axis=1, dtype=np.int64).sum(axis=0).compute()
    return classes, labels, np.asarray(counts, dtype=np.int64)


# --- the Gram pass --------------------------------------------------------------------------
@_task
def _gram_chunk(z, labels, k, keep, grams_of, total, batch_size, check=None):
    """Per-class Gram partial sums of one chunk (and the spectra of the ``keep`` classes)."""
    if check is not None:
        z = _real(z, *check)
    labels = np.asarray(labels)
    if z.shape[0] == 0:
        return {"grams": {}, "total": None, "kept": {}, "peak": 0.0}
    backend = resolve("numpy").backend
    present = set(np.unique(labels).tolist())
    with thread_limits():
        peak = spectral.peak_abs(backend, z, batch_size)
        grams, total_gram, kept = spectral.class_grams(
            backend, z, labels, k, batch_size, keep=set(keep) & present,
            grams_of=grams_of, total=total)
    return {"grams": grams, "total": total_gram, "kept": {j: [v] for j, v in kept.items()},
            "peak": peak}


def _add(a, b):
    return b if a is None else a if b is None else a + b


def _combine(parts):
    """The sum of partial results (new arrays; the parts are left as they are)."""
    grams, total, kept = {}, None, {}
    peak = max(part["peak"] for part in parts)
    for part in parts:
        for j, g in part["grams"].items():
            grams[j] = _add(grams.get(j), g)
        total = _add(total, part["total"])
        for j, pieces in part["kept"].items():
            kept[j] = kept.get(j, []) + pieces
    return {"grams": grams, "total": total, "kept": kept, "peak": peak}


def _tree(parts, combine=_combine):
    """Delayed ``parts`` reduced by ``combine`` in a tree of fan-in :data:`FAN_IN`."""
    dask, _ = _dask()
    while len(parts) > 1:
        parts = [dask.delayed(combine, pure=False)(parts[i:i + FAN_IN])
                 for i in range(0, len(parts), FAN_IN)]
    return parts[0]


def _solve(Z, labels, counts, eps2, batch_size, woodbury, operators, check=None):
    """One map-reduce pass over ``Z``'s chunks, then the engine's solve on the client."""
    dask, _ = _dask()
    keep, grams_of, total = spectral.gram_request(counts, Z.shape[1], woodbury)
    starts = _starts(Z.chunks[0])
    parts = [dask.delayed(_gram_chunk, pure=False)(
        z, lab, len(counts), keep, grams_of, total, batch_size,
        None if check is None else (check, start))
        for z, lab, start in zip(_blocks(Z), _blocks(labels), starts)]
    (sums,) = dask.compute(_tree(parts))
    return _finish(sums, counts, tuple(Z.shape[1:]), eps2, str(Z.dtype), woodbury, operators)


def _finish(sums, counts, sample_shape, eps2, dtype, woodbury, operators):
    """The client's part of a solve: the engine's solve of summed per-chunk results."""
    backend = resolve("numpy").backend
    kept = {j: np.ascontiguousarray(np.concatenate(p, axis=2)) for j, p in sums["kept"].items()}
    # The in-process solve's overflow check, from the largest |entry| of every chunk.
    spectral.check_scale(sums["peak"], counts, sample_shape, eps2, dtype)
    with thread_limits():
        return spectral.solve_grams(backend, sums["grams"], sums["total"], kept, counts,
                                    sample_shape, eps2, woodbury, operators)


# --- rate_reduction / construct_operators ---------------------------------------------------
def solve(Z, y, eps2, domain, batch_size, woodbury, operators):
    """:func:`convredunet.rate_reduction` (``operators=False``) and
    :func:`convredunet.construct_operators` of a Dask array ``Z``.

    Returns the engine's :class:`convredunet.spectral.LayerSolution` (numpy arrays) and the
    validated ``(Z, k, eps2)``.
    """
    from ._inputs import check_labels

    Z = _check_dask_X(Z, "Z", (2, 3, 4))
    dtype = Z.dtype if Z.dtype in (np.float32, np.float64) else np.float64
    eps2 = check_eps2(eps2, str(np.dtype(dtype)))
    check_choice(domain, "domain", ("spectral", "spatial"))
    if domain == "spatial":
        raise ValueError("domain='spatial' (the dense reference) needs Z in memory; a Dask "
                         "array is solved with domain='spectral'")
    batch_size = check_batch_size(batch_size)

    n_samples = Z.shape[0]

    def check(values, n):
        if n == n_samples:  # numpy y: the in-process check itself
            labels, k = check_labels(values, n, name="y")
            return np.arange(k), labels
        # Dask y: its distinct values, checked as in process for n_samples labels.
        values = np.asarray(values)
        if values.dtype.kind in "iuf" and len(values) and np.all(np.isfinite(values)) \
                and values.max() >= n_samples:
            raise ValueError(f"y has label {values.max()}, but with every class 0..k-1 "
                             f"present the largest label of {n_samples} samples is at most "
                             f"{n_samples - 1}")
        labels, k = check_labels(values, len(values), name="y", n_classes=(
            int(values.max()) + 1 if values.dtype.kind in "iuf" and len(values)
            and np.all(np.isfinite(values)) and np.all(values >= 0) else None))
        return np.arange(k), labels

    _, labels, counts = encode_labels(y, Z.chunks[0], check)
    Z = Z.astype(dtype)
    solution = _solve(Z, labels, counts, eps2, batch_size, woodbury, operators, check="Z")
    return solution, Z, len(counts), eps2


# --- fit ------------------------------------------------------------------------------------
@_task
def _lift_chunk(x, network, size, start):
    """The lifted, normalized features of one chunk of raw samples."""
    x = _real(x, "X", start)
    if network.signal_shape and x.ndim == len(network.input_shape):
        x = x[:, None]
    out = np.empty((x.shape[0],) + tuple(network.feature_shape),
                   dtype=numpy_dtype(network.workspace.like))
    with thread_limits():
        for s in range(0, x.shape[0], size):
            z = network.lift(*network.working(x[s:s + size]))
            out[s:s + z.shape[0]] = z
    return out


@_task
def _apply_chunk(z, labels, layer, use_labels, size):
    """One layer over one chunk of features: (next features, correct estimated memberships)."""
    backend = resolve("numpy").backend
    labels = np.asarray(labels)
    out, correct = np.empty_like(z), 0
    with thread_limits():
        for s in range(0, z.shape[0], size):
            part = labels[s:s + size]
            z_next, pi = layer(backend, z[s:s + size], part if use_labels else None)
            out[s:s + z_next.shape[0]] = z_next
            correct += int(np.sum(np.argmax(pi, axis=1) == part))
    return out, correct


def refuse_backend(backend):
    """Dask input runs on the numpy backend (checked before anything imports torch)."""
    if not runs_on_dask_workers(backend):
        raise ValueError(f"backend={backend!r} is not available for Dask input: the workers "
                         "run the numpy backend; use backend='numpy'")


def release_frames(exc):
    """Drop the local variables of the finished frames ``exc`` (and its causes) went through.

    The Dask futures they held are then released: their keys are forgotten
    by the client and their data dropped by the workers. The traceback
    itself (file, line, function) is kept for the message.
    """
    import traceback

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)
        exc = exc.__cause__ or exc.__context__
    import gc

    gc.collect()


def column(y, name="y"):
    """``y`` of shape ``(n, 1)`` as ``(n,)``, with scikit-learn's warning (as in memory)."""
    if y is not None and not is_dask(y):
        y = to_numpy(y)
    if y is not None and y.ndim == 2 and y.shape[1] == 1:
        import warnings

        from sklearn.exceptions import DataConversionWarning

        warnings.warn("A column-vector y was passed when a 1d array was expected. Please "
                      "change the shape of y to (n_samples, ), for example using ravel().",
                      DataConversionWarning, stacklevel=3)
        return y[:, 0]
    return y


def check_memory(params, workspace, chunks, sample_shape, n_classes):
    """The in-process size check (:func:`convredunet._memory.check_size`), for Dask.

    What one process must hold: one layer's operators (the client solves
    them, every worker receives them) and the features of a block of samples
    (twice while a layer is applied); checked against this machine's memory
    and, with a ``distributed.Client``, the smallest worker memory limit.
    The training set as a whole is spread over the workers (and spilled by
    them to disk), so it is not held by one process.
    """
    from ._memory import check_size

    block = max(chunks)
    check_size(params, workspace, block, sample_shape, n_classes)
    client = current_client()
    if client is None:
        return
    limits = {address: info.get("memory_limit") or 0
              for address, info in client.scheduler_info()["workers"].items()}
    limits = {address: limit for address, limit in limits.items() if limit > 0}
    if not limits:
        return
    address = min(limits, key=limits.get)
    check_size(params, workspace, block, sample_shape, n_classes, total=limits[address],
               where=f"memory limit of worker {address} (per block of samples)")


def persist_together(X, y):
    """``X`` and Dask labels ``y`` persisted side by side (one task makes both chunks)."""
    if is_dask(y):
        # Input and labels often come from the same tasks (a generator, a reader):
        # kept together on the workers, each chunk is made once.
        if y.ndim == 1 and y.shape[0] == X.shape[0]:
            y = y.rechunk((X.chunks[0],))
        X, y = _persist(X, y)
    return X, y


class Training:
    """The Dask strategy of the fit loop (:func:`convredunet.network.build_layers`).

    Holds the lifted features persisted on the workers; :meth:`solve` sums the
    class Grams in a tree and solves them on the client, :meth:`apply` sends
    the layer to the workers once and replaces the features by the next ones,
    :meth:`subspaces` builds the classifier's bases.
    """

    def __init__(self, network, X, labels, counts, params):
        dask, _ = _dask()
        self.network, self.labels, self.counts, self.params = network, labels, counts, params
        self.dtype = numpy_dtype(network.workspace.like)
        self.chunks = X.chunks[0]
        self.n_samples = X.shape[0]
        size = network.chunk_size(params["batch_size"], self.dtype.itemsize)
        lifting = _share(Network(network.lifting, [], network.input_shape, network.workspace),
                         "lifting")
        Z = _assemble([dask.delayed(_lift_chunk, pure=False)(x, lifting, size, start)
                       for x, start in zip(_blocks(X), _starts(self.chunks))],
                      self.chunks, network.feature_shape, self.dtype)
        (self.Z,) = _persist(Z)

    def solve(self):
        return _solve(self.Z, self.labels, self.counts, self.params["eps2"],
                      self.params["batch_size"], "auto", True)

    def apply(self, layer):
        """Apply ``layer`` on the workers; the next features replace these. Train accuracy."""
        dask, _ = _dask()
        size = self.network.chunk_size(self.params["batch_size"], self.dtype.itemsize)
        shared = _share(layer, f"layer{len(self.network.layers) - 1}")
        use_labels = self.params["membership"] == "label"
        # Each chunk's task runs once and is kept on its worker; the features
        # and the counts are then read from it (no copy, no second run).
        outs = _persist(*[dask.delayed(_apply_chunk, nout=2, pure=False)(
            z, lab, shared, use_labels, size)
            for z, lab in zip(_blocks(self.Z), _blocks(self.labels))])
        accuracy = float(sum(dask.compute(*[o[1] for o in outs]))) / self.n_samples
        # The previous layer's features are released here.
        self.Z = _persist(_assemble([o[0] for o in outs], self.chunks,
                                    self.network.feature_shape, self.dtype))[0]
        return accuracy

    def subspaces(self):
        """The class subspaces of the last features and the rank's scores (see :func:`_subspaces`)."""
        bases, scores = _subspaces(self.Z, self.labels, self.counts,
                                   self.params["n_components"], self.params["batch_size"])
        self.Z = None
        return bases, scores


@_task
def _subspace_chunk(z, labels, k, batch_size):
    """One chunk's per-class Gram partial sums for the subspace classifier."""
    from . import subspace

    with thread_limits():
        return subspace.class_grams(resolve("numpy").backend, z, np.asarray(labels), k,
                                    batch_size)


def _sum_grams(parts):
    """Per-class sums over chunks; a class absent from every chunk of a part stays None."""
    out = []
    for j in range(len(parts[0])):
        present = [grams[j] for grams in parts if grams[j] is not None]
        out.append(sum(present[1:], present[0]) if present else None)
    return out


def _subspaces(Z, labels, counts, n_components, batch_size):
    """The class subspaces of the last features, and the rank's cross-validation scores.

    Per-chunk Grams summed in a tree; with ``n_components="auto"`` and classes of
    at most ``C`` signals (then at most ``k C`` signals in all), the features are
    gathered and the rank cross-validated as in process.
    """
    from . import subspace, spectral

    dask, _ = _dask()
    k = len(counts)
    backend = resolve("numpy").backend
    if n_components in (None, "auto") and counts.max() <= Z.shape[1]:
        z, lab = dask.compute(Z, labels)
        order = np.argsort(lab, kind="stable")
        shape = tuple(Z.shape[1:])
        V = spectral.spectrum(backend, z[order], shape[1:])
        del z
        gram = backend.gram(V) if subspace.gram_fits(V) else None
        rule = subspace.n_directions("auto", shape[0])
        rank, scores = subspace.cross_validated_rank(backend, V, lab[order], k, shape, gram,
                                                     default=rule)
        rank = rule if rank is None else rank
        return subspace.class_subspaces(backend, V, lab[order], k, rank, batch_size,
                                        sample_shape=shape, gram=gram), scores
    parts = [dask.delayed(_subspace_chunk, pure=False)(z, lab, k, batch_size)
             for z, lab in zip(_blocks(Z), _blocks(labels))]
    (grams,) = dask.compute(_tree(parts, _sum_grams))
    return subspace.subspaces_from_grams(backend, grams, n_components), {}


def _persist(*collections):
    """``collections`` persisted on the current scheduler, waited for (errors surface here)."""
    dask, _ = _dask()
    collections = dask.persist(*collections)
    client = current_client()
    if client is not None:
        from distributed import futures_of, wait

        futures = futures_of(collections)
        wait(futures)
        # A worker's error is raised here, with its own type and message.
        for future in futures:
            if future.status == "error":
                future.result()
    return collections


def check_input(X, signal_ndim, owner, name="X"):
    """A Dask ``X`` of ``owner``'s (an estimator's name) accepted shapes, checked."""
    nd = signal_ndim
    ndims = (2,) if nd == 0 else (nd + 1, nd + 2)
    rules = {0: "(n_samples, n_features)", 1: "(n_samples, T) or (n_samples, n_channels, T)",
             2: "(n_samples, H, W) or (n_samples, n_channels, H, W)"}
    if X.ndim not in ndims:
        raise ValueError(f"{name} must have shape {rules[nd]} for {owner}, "
                         f"got shape {X.shape}. Reshape your data")
    return _check_dask_X(X, name, ndims)


# --- inference ------------------------------------------------------------------------------
@_task
def _forward_chunk(x, network, size, start, what, k):
    """The network over one chunk: features, membership, or both."""
    x = _real(x, "X", start)
    if network.signal_shape and x.ndim == len(network.input_shape):
        x = x[:, None]
    dtype = numpy_dtype(network.workspace.like)
    z_out = np.empty((x.shape[0],) + tuple(network.feature_shape), dtype=dtype)
    pi_out = np.empty((x.shape[0], k), dtype=dtype) if what != "z" else None
    with thread_limits():
        for s in range(0, x.shape[0], size):
            z, pi = network.forward(*network.working(x[s:s + size]))
            if what != "pi":
                z_out[s:s + z.shape[0]] = z
            if what != "z":
                pi_out[s:s + pi.shape[0]] = pi
    if what == "z":
        return z_out
    if what == "pi":
        return pi_out
    return z_out, pi_out


@dataclasses.dataclass(frozen=True)
class Fitted:
    """What inference on Dask arrays needs of a fitted estimator (it builds this).

    ``network`` in the numpy workspace; ``owner`` the estimator's class name
    (for messages); ``subspaces`` None without the subspace classifier.
    """

    owner: str
    network: object
    signal_ndim: int
    batch_size: object
    eps2: float
    classes: np.ndarray
    classifier: str
    subspaces: object


def _inference(model, X, name="X"):
    """Checked ``X`` and what a chunk-major pass needs: ``(X, network, size, shared, dtype)``.

    ``shared`` is the network as one piece of the cluster's data (:func:`_share`).
    """
    X = check_input(X, model.signal_ndim, model.owner, name)
    network = model.network
    shape = tuple(X.shape[1:])
    if model.signal_ndim and X.ndim == model.signal_ndim + 1:
        shape = (1,) + shape
    if shape != tuple(network.input_shape):
        raise ValueError(f"{name} has {math.prod(shape)} features, but "
                         f"{model.owner} is expecting {math.prod(network.input_shape)} "
                         f"features as input: samples of shape {shape} where the network was "
                         f"fitted on {tuple(network.input_shape)}")
    dtype = numpy_dtype(network.workspace.like)
    size = network.chunk_size(model.batch_size, dtype.itemsize)
    return X, network, size, _share(network, "network"), dtype


def forward(model, X, what="both", name="X"):
    """Lazy features ``(m, C, *S)`` and/or membership ``(m, k)`` of a Dask array ``X``.

    ``what``: ``"z"``, ``"pi"`` or ``"both"`` (a tuple).
    """
    dask, _ = _dask()
    X, network, size, shared, dtype = _inference(model, X, name)
    chunks = X.chunks[0]
    k = len(model.classes)
    starts = _starts(chunks)
    if what in ("z", "pi"):
        tail = network.feature_shape if what == "z" else (k,)
        parts = [dask.delayed(_forward_chunk, pure=False)(x, shared, size, start, what, k)
                 for x, start in zip(_blocks(X), starts)]
        return _assemble(parts, chunks, tail, dtype)
    outs = [dask.delayed(_forward_chunk, nout=2, pure=False)(x, shared, size, start, "both", k)
            for x, start in zip(_blocks(X), starts)]
    return (_assemble([o[0] for o in outs], chunks, network.feature_shape, dtype),
            _assemble([o[1] for o in outs], chunks, (k,), dtype))


@_task
def _layers_chunk(x, network, size, start):
    """The features entering every layer and after the last, for one chunk (a tuple)."""
    x = _real(x, "X", start)
    if network.signal_shape and x.ndim == len(network.input_shape):
        x = x[:, None]
    backend = resolve("numpy").backend
    dtype = numpy_dtype(network.workspace.like)
    out = [np.empty((x.shape[0],) + tuple(network.feature_shape), dtype=dtype)
           for _ in range(len(network.layers) + 1)]
    with thread_limits():
        for s in range(0, x.shape[0], size):
            z = network.lift(*network.working(x[s:s + size]))
            out[0][s:s + z.shape[0]] = z
            for index, layer in enumerate(network.layers):
                z, _ = layer(backend, z)
                out[index + 1][s:s + z.shape[0]] = z
    return tuple(out)


def layer_features(model, X):
    """:meth:`layer_features` of a Dask array: a list of ``n_layers + 1`` lazy Dask arrays.

    One task per chunk computes every layer's features of that chunk; the
    arrays share those tasks, so computing them together (``dask.compute``)
    runs the network once per chunk.
    """
    dask, _ = _dask()
    X, network, size, shared, dtype = _inference(model, X)
    chunks = X.chunks[0]
    n_out = len(network.layers) + 1
    outs = [dask.delayed(_layers_chunk, nout=n_out, pure=False)(x, shared, size, start)
            for x, start in zip(_blocks(X), _starts(chunks))]
    return [_assemble([o[i] for o in outs], chunks, network.feature_shape, dtype)
            for i in range(n_out)]


@_task
def _distances_chunk(z, bases, signal_shape):
    from . import subspace

    with thread_limits():
        return subspace.subspace_distances(resolve("numpy").backend, np.asarray(z), bases,
                                           signal_shape)


def subspace_distances(model, X):
    """:meth:`subspace_distances` of a Dask array: a lazy ``(n_samples, k)`` Dask array."""
    dask, _ = _dask()
    z = forward(model, X, "z")
    bases = _share(model.subspaces, "subspaces")
    parts = [dask.delayed(_distances_chunk, pure=False)(block, bases,
                                                        tuple(model.network.signal_shape))
             for block in _blocks(z)]
    return _assemble(parts, z.chunks[0], (len(model.classes),), z.dtype)


@_task
def _history_chunk(x, labels, network, size, start, k, keep, grams_of, total, batch_size):
    """Gram partial sums of one chunk's features entering every layer and after the last."""
    x = _real(x, "X", start)
    if network.signal_shape and x.ndim == len(network.input_shape):
        x = x[:, None]
    labels = np.asarray(labels)
    backend = resolve("numpy").backend
    with thread_limits():
        blocks = [network.lift(*network.working(x[s:s + size]))
                  for s in range(0, x.shape[0], size)]
    parts = []
    for index in range(len(network.layers) + 1):
        z = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
        parts.append(_gram_chunk(z, labels, k, keep, grams_of, total, batch_size))
        if index < len(network.layers):
            with thread_limits():
                blocks = [network.layers[index](backend, b)[0] for b in blocks]
    return parts


def _combine_lists(parts):
    return [_combine([part[i] for part in parts]) for i in range(len(parts[0]))]


def rate_history(model, X, y):
    """:meth:`rate_history` of a Dask array, in one streaming pass over ``X``.

    Each chunk's task runs the network once and returns the Gram partial sums
    of its features at every layer; they are summed in a tree and solved on
    the client, layer by layer (a list of ``n_layers + 1`` RateReduction).
    Labels: ``y`` numpy or Dask, among ``classes_``; as in memory, classes
    ``0..k-1`` of the largest label present must all be present.
    """
    dask, _ = _dask()
    X, network, size, shared, dtype = _inference(model, X)
    classes = np.asarray(model.classes)

    def check(values, n):
        values = np.asarray(values)
        if values.ndim != 1 or (not is_dask(y) and len(values) != X.shape[0]):
            raise ValueError(f"y must be a 1D array with one label per sample "
                             f"({X.shape[0]}), got shape {values.shape}")
        unknown = np.setdiff1d(np.unique(values), classes)
        if len(unknown):
            raise ValueError(f"y holds labels the network was not fitted on: {unknown[:5]}")
        return classes, np.searchsorted(classes, values)

    y = column(y)
    _, labels, counts = encode_labels(y, X.chunks[0], check)
    k = int(np.flatnonzero(counts)[-1]) + 1  # as in memory: k from the largest label
    counts = counts[:k]
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        raise ValueError(f"class {empty[0]} has no samples; y must use labels 0..{k - 1} with "
                         f"every class present (k={k} inferred from the largest label)")
    eps2 = check_eps2(model.eps2, str(dtype))
    feature_shape = tuple(network.feature_shape)
    keep, grams_of, total = spectral.gram_request(counts, feature_shape[0], "auto")
    parts = [dask.delayed(_history_chunk, pure=False)(
        x, lab, shared, size, start, k, keep, grams_of, total, model.batch_size)
        for x, lab, start in zip(_blocks(X), _blocks(labels), _starts(X.chunks[0]))]
    (sums,) = dask.compute(_tree(parts, _combine_lists))
    return [_finish(layer_sums, counts, feature_shape, eps2, str(dtype), "auto", False).rates
            for layer_sums in sums]


def _labels_of(pi, classes):
    return classes[np.argmax(pi, axis=1)]


@_task
def _nearest_subspace(z, bases, signal_shape, classes):
    from . import subspace

    with thread_limits():
        distances = subspace.subspace_distances(resolve("numpy").backend, z, bases,
                                                signal_shape)
    return classes[np.argmin(distances, axis=1)]


def predict(model, X):
    """Lazy predicted labels (original classes) of a Dask array ``X``.

    ``classifier="subspace"``: the nearest class subspace of each chunk's
    features (the bases travel with the task graph once); otherwise the
    argmax of the membership.
    """
    classes = np.asarray(model.classes)
    if model.classifier == "subspace":
        z = forward(model, X, "z")
        drop = tuple(range(1, z.ndim))
        return z.map_blocks(_nearest_subspace, model.subspaces,
                            tuple(model.network.signal_shape), classes, drop_axis=drop,
                            dtype=classes.dtype)
    pi = forward(model, X, "pi")
    return pi.map_blocks(_labels_of, classes, drop_axis=1, dtype=classes.dtype)


def score(model, X, y, sample_weight=None):
    """Mean accuracy of a Dask array ``X`` against ``y`` (numpy or Dask), computed."""
    _, da = _dask()
    predicted = predict(model, X)
    y = column(y)
    if not is_dask(y):
        y = np.asarray(y)
        if y.shape != predicted.shape:
            raise ValueError(f"y must have one label per sample: X has {predicted.shape[0]} "
                             f"samples, y has shape {y.shape}")
        y = da.from_array(y, chunks=predicted.chunks)
    elif y.shape != predicted.shape:
        raise ValueError(f"y must have one label per sample: X has {predicted.shape[0]} "
                         f"samples, y has shape {y.shape}")
    correct = (predicted == y.rechunk(predicted.chunks)).astype(np.float64)
    if sample_weight is None:
        return float(correct.mean().compute())
    n = predicted.shape[0]
    if is_dask(sample_weight):
        weight = sample_weight
    else:
        weight = np.asarray(sample_weight)
        if weight.dtype.kind not in "biuf":
            raise TypeError(f"sample_weight must hold real numbers, got dtype {weight.dtype}")
    if weight.ndim != 1 or weight.shape[0] != n:
        raise ValueError(f"sample_weight must have one weight per sample: X has {n} samples, "
                         f"sample_weight has shape {weight.shape}")
    if is_dask(weight):
        weight = weight.astype(np.float64).rechunk(predicted.chunks)
    else:
        weight = da.from_array(weight.astype(np.float64), chunks=predicted.chunks)
    total, hits, finite = da.compute(weight.sum(), (weight * correct).sum(),
                                     da.isfinite(weight).all())
    if not finite:
        raise ValueError("sample_weight must contain only finite values")
    if total == 0:
        raise ValueError("sample_weight sums to 0: the weighted accuracy is undefined")
    return float(hits / total)
