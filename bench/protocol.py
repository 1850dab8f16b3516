"""The validation protocol the accuracy scripts share: choices are made inside the training set.

A network built with ``n_layers=L`` is the first ``L`` layers of one built with more:
construction is greedy, layer after layer. So one fit scores every depth at once:

* ``membership`` at depth ``L`` (``n_layers=L``, ``L >= 1``): the argmax of the
  membership that layer ``L - 1`` estimates from the features entering it;
* ``subspace`` at depth ``L`` with ``r`` directions per frequency
  (``n_layers=L, classifier="subspace", n_components=r``): the nearest class
  subspace of the training features after ``L`` layers (``L = 0`` is the lifting
  alone, reported for reference only; the estimators build at least one layer).

:func:`layer_scores` does this for one split (fit part, validation part);
:func:`cross_validated` averages it over stratified folds of a training set;
:func:`best_choice` reads the best (depth, classifier, rank) off the result. The test
set never enters these functions.
"""
import math

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

from convredunet.backend import NumpyBackend
from convredunet.subspace import class_subspaces, subspace_distances

import harness

__all__ = ["validation_split", "per_class_split", "layer_scores", "cross_validated",
           "best_choice", "lifted_channels", "RANKS"]

#: Directions per frequency tried for the subspace classifier.
RANKS = (1, 2, 4, 8, 16, 32)
_BACKEND = NumpyBackend()


def validation_split(X, y, fraction=0.2, seed=0):
    """Stratified ``(X_fit, y_fit, X_val, y_val)``: ``fraction`` of the training set held out."""
    X_fit, X_val, y_fit, y_val = train_test_split(X, y, test_size=fraction, stratify=y,
                                                  random_state=seed)
    return X_fit, y_fit, X_val, y_val


def per_class_split(y, fraction=0.1, seed=0):
    """Stratified ``(fit, validation)`` indices: the split ``convredunet.fine_tune`` makes.

    Each class, in a ``numpy.random.default_rng(seed)`` permutation, holds out its first
    ``round(fraction * n_j)`` members; both index arrays are sorted. The same indices as
    the library's own split of ``validation_fraction`` (checked by
    ``tests/test_bench_contract.py``), written here because that split is not public.
    """
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    fit, val = [], []
    for j in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == j))
        n_val = int(round(fraction * len(members)))
        val.append(members[:n_val])
        fit.append(members[n_val:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(val))


def lifted_channels(n_channels, signal_shape):
    """The channels a lifting of ``n_channels`` gives signals of ``signal_shape``.

    ``n_channels`` itself, or for ``"auto"`` the estimators' rule (docs/guide.md): the
    largest power of two ``C <= 256`` with ``C * prod(signal_shape) <= 2**17``, at
    least 32. A script that relies on it checks it against a fitted network's features
    (the library's rule is not public).
    """
    if n_channels != "auto":
        return n_channels
    size = max(1, math.prod(signal_shape))
    fitting = 2 ** max(0, int(math.floor(math.log2(max(1, (1 << 17) // size)))))
    return int(min(256, max(32, fitting)))


def layer_scores(make, X_fit, y_fit, X_val, y_val, ranks=RANKS, train=True, depths=None):
    """Fit ``make()`` (membership classifier) on one part, score every depth on the other.

    Returns
    -------
    dict
        ``fit_s``; ``train_membership`` (per layer, from ``history_``);
        ``membership``: validation accuracy for ``n_layers = 1..L``;
        ``subspace``: ``{r: accuracy for features after 0..L layers}``;
        ``subspace_train``: the same on the fit part (for the depth figure; only
        with ``train``, else None). With ``depths`` (indices into ``0..L``), the
        subspace scores of the other depths are None (each depth costs one
        eigendecomposition per class and frequency).
    """
    net = make()
    with harness.Timer() as fit:
        net.fit(X_fit, y_fit)
    classes = net.classes_
    labels_fit = np.searchsorted(classes, y_fit)
    labels_val = np.searchsorted(classes, y_val)
    k = len(classes)
    feats_fit = [np.asarray(z) for z in net.layer_features(X_fit)]
    feats_val = [np.asarray(z) for z in net.layer_features(X_val)]
    backend = net.network_.workspace.backend
    membership = []
    with harness.one_blas_thread():  # batched small products, as inside the estimators
        for layer, z in zip(net.network_.layers, feats_val):
            _, pi = layer(backend, net.network_.workspace.to_working(z))
            membership.append(float(np.mean(np.argmax(backend.asnumpy(pi), 1) == labels_val)))
    n_channels = feats_fit[0].shape[1]
    signal_shape = feats_fit[0].shape[2:]
    ranks = [r for r in ranks if r < n_channels]  # r = C: every distance 0
    subspace = {r: [] for r in ranks}
    subspace_train = {r: [] for r in ranks} if train else None
    for depth, (zf, zv) in enumerate(zip(feats_fit, feats_val)):
        if depths is not None and depth not in depths:
            for out in (subspace, subspace_train):
                for r in (out or {}):
                    out[r].append(None)
            continue
        bases = class_subspaces(_BACKEND, zf, labels_fit, k, max(ranks))  # largest first
        for r in ranks:
            parts = [(zv, labels_val, subspace)]
            if train:
                parts.append((zf, labels_fit, subspace_train))
            for z, labels, out in parts:
                distances = subspace_distances(_BACKEND, z, bases[..., :r], signal_shape)
                out[r].append(float(np.mean(np.argmin(distances, 1) == labels)))
    return {"fit_s": round(fit.seconds, 2),
            "train_membership": [float(h["train_accuracy"]) for h in net.history_],
            "membership": membership, "subspace": subspace, "subspace_train": subspace_train}


def _mean(records, key):
    """Element-wise mean of ``records[i][key]`` (lists, or dicts of lists)."""
    first = records[0][key]
    def mean(rows):
        return [None if row[0] is None else float(np.mean(row)) for row in zip(*rows)]

    if isinstance(first, dict):
        return {r: mean([rec[key][r] for rec in records]) for r in first}
    return mean([rec[key] for rec in records])


def cross_validated(make, X, y, n_folds=5, seed=0, ranks=RANKS, verbose=False, depths=None):
    """:func:`layer_scores` averaged over stratified folds of a training set ``(X, y)``."""
    folds = StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(X, y)
    records = []
    for index, (fit, val) in enumerate(folds):
        records.append(layer_scores(make, X[fit], y[fit], X[val], y[val], ranks,
                                    depths=depths))
        harness.log(verbose, f"    fold {index}: fit {records[-1]['fit_s']:.1f} s")
    out = {key: _mean(records, key) for key in ("train_membership", "membership",
                                                 "subspace", "subspace_train")}
    out["fit_s"] = float(np.mean([r["fit_s"] for r in records]))
    out["n_folds"] = n_folds
    return out


def choices(scores, min_layers=1):
    """Every ``(accuracy, n_layers, classifier, n_components)`` a score record offers."""
    out = [(acc, depth + 1, "membership", None)
           for depth, acc in enumerate(scores["membership"])]
    for r, accs in scores["subspace"].items():
        out += [(acc, depth, "subspace", int(r)) for depth, acc in enumerate(accs)
                if depth >= min_layers and acc is not None]
    return out


def best_choice(scores, min_layers=1):
    """The best choice of a score record: highest accuracy, then fewest layers, then rank."""
    return max(choices(scores, min_layers),
               key=lambda c: (c[0], -c[1], -(c[3] or 0)))
