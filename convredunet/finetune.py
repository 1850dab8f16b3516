"""Fine-tuning an exported ReduNet by backpropagation, with or without its closed-form teacher.

:func:`fine_tune` trains a copy of a :class:`convredunet.export.ReduNetModule`
(every layer stays a circular convolution, the prediction stays the argmax of
the module's class scores: ``-d_j(z)``, the squared distances to the class
subspaces, with ``classifier="subspace"``, else ``-||C^j z||``; so it stays
exactly invariant to cyclic shifts). Every parameter is trained: the lifting,
the layers' kernels and the class subspaces' bases (free, no longer
orthonormal: ``d_j`` stays a shift-invariant quadratic form).

Why the closed-form weights resist naive fine-tuning, and what is done here:

* **Scale.** Layer operators are of order ``alpha_j = C / (m_j eps2)``
  (hundreds to thousands) while their far taps are tiny; one learning rate
  for every tensor either leaves the large ones unchanged or wrecks the
  small ones. Each tensor gets its own Adam learning rate ``lr * rms(W0)``
  (``rms`` of its initial values): every weight moves by about ``lr`` of its
  tensor's typical size per step.
* **Saturated scores.** ``lmbda = 500`` makes ``softmax(-lmbda ||C^j z||)``
  one-hot, so a cross-entropy on it has no useful gradient. The loss uses
  normalized class scores ``tau * score / s`` instead, ``s`` the mean
  ``|score|`` on the training split at the start and ``tau`` a learnable
  temperature. Positive scaling does not change the argmax, so the module's
  own prediction is what is trained. Inside the network ``lmbda`` stays as
  built (hard routing).
* **Overconfident start.** The closed-form network was built from the
  training samples, and its class subspaces contain them: on the training
  split the best temperature is large and the cross-entropy almost zero
  (MNIST-1D: 0.01), so it would give almost no gradient. ``tau`` starts at
  the value that minimizes the cross-entropy on the *validation* split
  (temperature scaling): about 32 on MNIST-1D, where the training split
  asks for 50.
* **Schedule.** Adam with a cosine decay to zero over ``epochs``; the
  weights with the best accuracy on a validation split of the training data
  are kept (the closed-form start included, so fine-tuning never returns a
  worse module on that split).

With ``teacher`` (the fitted closed-form network), the loss is
``(1 - label_weight) KL(p_teacher || p_student) + label_weight CE(y, p_student)``
on class probabilities: ``p_teacher`` is the teacher's softened the same way
(its class scores computed by its exact float64 export, divided by their
mean, with the temperature that fits the validation labels best), so the
student learns the teacher's ranking of the classes, not just its top choice.
"""
import copy
import math
import time

import numpy as np
import torch

from ._fingerprints import seen
from ._inputs import check_features
from ._validation import check_int, check_real, check_verbose
from .backend import to_numpy
from .export import ReduNetModule

__all__ = ["fine_tune", "distillation_loss"]

# torch.Generator.manual_seed and numpy's SeedSequence both take seeds below this.
_SEED_LIMIT = 2 ** 63


def _check_positive_int(value, name):
    return check_int(value, name, rule="a positive integer")


def _check_positive_float(value, name):
    return check_real(value, name, "a positive finite number", lambda v: v > 0)


def _check_lr(value):
    # A relative step: a weight moves by about lr times its tensor's rms per step.
    return check_real(value, "lr", "a number in (0, 1] (a relative step)",
                      lambda v: 0 < v <= 1)


def _check_seed(value, name="random_state"):
    rule = "a non-negative integer seed below 2**63"
    seed = check_int(value, name, minimum=0, rule=rule)
    if seed >= _SEED_LIMIT:
        raise ValueError(f"{name} must be {rule}, got {seed}")
    return seed


_as_numpy = to_numpy


def _check_data(module, X, y, name="X", y_name="y"):
    """``(X as numpy (n, *input_shape), labels as class indices)``, checked.

    ``X``: real numbers (complex, non-numeric, empty and non-finite arrays are
    refused, as by the estimators), samples of the module's input shape (or
    the signal alone for one input channel), inside the module's dtype's
    range. ``y``: one label per sample, ``(n,)`` or ``(n, 1)``, among the
    module's classes.
    """
    nd = module.signal_ndim
    X = check_features(X, name=name, ndims=(2,) if nd == 0 else (nd + 1, nd + 2))
    X = _as_numpy(X)
    y = _as_numpy(y)
    shape = tuple(module.input_shape)
    n = X.shape[0]
    if X.shape[1:] != shape:
        if nd and shape[0] == 1 and X.shape[1:] == shape[1:]:
            X = X[:, None]
        else:
            raise ValueError(f"{name} must hold samples of shape {shape} (the module's input), "
                             f"got {X.shape[1:]}")
    dtype = next(module.parameters()).dtype
    largest = float(np.max(np.abs(X)))
    limit = torch.finfo(dtype).max
    if largest > limit:
        raise ValueError(f"{name} holds values up to {largest:.3g}, beyond the range of the "
                         f"module's dtype {str(dtype).replace('torch.', '')} ({limit:.3g}); "
                         "scale the data or export the module in float64")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"{y_name} must be a 1D array with one label per sample ({n}), got "
                         f"shape {y.shape}")
    classes = module.classes.cpu().numpy()
    index = {c: i for i, c in enumerate(classes.tolist())}
    try:
        unknown = sorted({v for v in y.tolist() if v not in index}, key=repr)
    except TypeError:  # unhashable labels
        raise TypeError(f"{y_name} must hold labels (numbers), got {y.dtype} values") from None
    if unknown:
        raise ValueError(f"{y_name} holds labels the module does not know: {unknown[:5]} (its "
                         f"classes: {classes.tolist()})")
    return X, np.asarray([index[v] for v in y.tolist()], dtype=np.int64)


def _split(n, labels, validation_fraction, random_state, allowed=None):
    """Stratified train/validation indices (numpy), deterministic for ``random_state``.

    Each class holds out ``round(validation_fraction * n_j)`` samples, drawn
    only among ``allowed`` (boolean ``(n,)``, default all) and as many as it
    has there.
    """
    rng = np.random.default_rng(random_state)
    allowed = np.ones(n, dtype=bool) if allowed is None else allowed
    train, val = [], []
    for j in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == j))
        n_val = int(round(validation_fraction * len(members)))
        candidates = members[allowed[members]][:n_val]
        val.append(candidates)
        train.append(np.setdiff1d(members, candidates))
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def _fitted_on(module, teacher):
    """Fingerprints of the signals the closed form behind ``module`` / ``teacher`` saw.

    The teacher's (``training_fingerprints_``) and the ones the module was
    exported with (``to_torch`` keeps its network's), merged and sorted; None
    when neither is known (a Dask fit, a module built by hand).
    """
    parts = [getattr(teacher, "training_fingerprints_", None),
             getattr(module, "training_fingerprints", None)]
    parts = [np.asarray(p, dtype=np.uint64) for p in parts if p is not None]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else np.unique(np.concatenate(parts))


def _class_scores(module, x):
    """What the module's prediction is the argmax of, ``(b, k)``, differentiable.

    ``-d_j(z)`` (squared distances to the class subspaces) with
    ``classifier="subspace"``, else ``-||C^j z||`` (``logits / lmbda``).
    """
    if module.use_subspace:
        return module.class_scores(x)
    return module.logits(x) / module.layers[-1].lmbda


def _scores(module, x, batch):
    """:func:`_class_scores` without gradient, in blocks of ``batch``."""
    with torch.no_grad():
        return torch.cat([_class_scores(module, x[s:s + batch])
                          for s in range(0, len(x), batch)])


def _best_temperature(scores, labels):
    """``tau`` in [1e-2, 1e2] minimizing ``CE(labels, softmax(tau * scores))`` on a log grid.

    Scores are normalized by their mean, so ``tau`` scales relative margins. The
    cap: on samples that are all classified correctly the cross-entropy keeps
    falling as ``tau`` grows, and an unbounded ``tau`` would make the first
    steps huge (a 6-sample validation split did that).
    """
    grid = np.geomspace(1e-2, 1e2, 81)
    losses = [float(torch.nn.functional.cross_entropy(scores * t, labels)) for t in grid]
    return float(grid[int(np.argmin(losses))])


def _check_teacher(teacher, module):
    """A fitted estimator whose network takes the module's input and has its classes."""
    from sklearn.exceptions import NotFittedError

    from .estimators import ReduNet1D, ReduNet2D, ReduNetVector

    if not isinstance(teacher, (ReduNet1D, ReduNet2D, ReduNetVector)):
        raise TypeError("teacher must be a fitted ReduNet1D, ReduNet2D or ReduNetVector "
                        f"(the closed-form network) or None, got {type(teacher).__name__}")
    if "network_" not in teacher.__dict__:
        raise NotFittedError(f"teacher: this {type(teacher).__name__} instance is not fitted "
                             "yet; call fit(X, y) first")
    shape = tuple(module.input_shape)
    if tuple(teacher.input_shape_) != shape:
        raise ValueError(f"teacher was fitted on samples of shape {tuple(teacher.input_shape_)}"
                         f", but the module takes samples of shape {shape}: distill from a "
                         "network fitted on the same signal size and input channels")
    classes = np.asarray(teacher.classes_)
    if classes.dtype.kind not in "biuf":
        classes = np.arange(len(classes))  # as to_torch exports them
    if classes.tolist() != module.classes.tolist():
        raise ValueError("teacher must have the module's classes "
                         f"({module.classes.tolist()}), got {classes.tolist()}")


def _teacher_scores(teacher, X, batch):
    """The teacher's class scores ``(n, k)`` (float64 torch) on numpy samples ``X``.

    ``classifier="subspace"``: ``-teacher.subspace_distances(X)``, the
    library's own pass (as fast as ``teacher.predict``). Otherwise
    ``-||C^j z||`` from its exact float64 export.
    """
    if getattr(teacher, "classifier", None) == "subspace":
        return -torch.from_numpy(np.asarray(teacher.subspace_distances(X), dtype=np.float64))
    from .export import to_torch

    module = to_torch(teacher, dtype=torch.float64, conv="auto")
    return _scores(module, torch.as_tensor(X, dtype=torch.float64), batch)


def _teacher_targets(teacher, X, X_cal, labels_cal, batch):
    """The teacher's class probabilities on ``X`` softened as in the module docstring.

    The temperature is the one that fits ``labels_cal`` best on ``X_cal``
    (held-out samples where there are any; None: ``X`` itself). Returns
    ``(n, k)`` float64 probabilities.
    """
    scores = _teacher_scores(teacher, X, batch)
    scale = float(-scores.mean())
    cal = (scores if X_cal is None else _teacher_scores(teacher, X_cal, batch)) / scale
    return torch.softmax(scores / scale * _best_temperature(cal, labels_cal), dim=1)


def distillation_loss(module, teacher, X, y):
    """``KL(p_teacher || p_module)`` on ``(X, y)``, both memberships softened alike.

    Each side's scores ``-||C^j z||`` are divided by their mean and scaled by
    the temperature that best fits ``y`` (module docstring): a measure of how
    well ``module`` reproduces the teacher's ranking of the classes.

    Returns
    -------
    float
    """
    if not isinstance(module, ReduNetModule):
        raise TypeError(f"module must be a ReduNetModule (from to_torch), got "
                        f"{type(module).__name__}")
    _check_teacher(teacher, module)
    X, labels = _check_data(module, X, y)
    dtype = next(module.parameters()).dtype
    x, labels = torch.as_tensor(X, dtype=dtype), torch.as_tensor(labels)
    targets = _teacher_targets(teacher, X, None, labels, 256)
    scores = _scores(module, x, 256).double()
    scores = scores / float(-scores.mean())
    log_p = torch.log_softmax(scores * _best_temperature(scores, labels), dim=1)
    return float(torch.nn.functional.kl_div(log_p, targets, reduction="batchmean"))


def _gentle_steps(module, x, step):
    """Set each layer's ``eta`` so that its update is ``step`` times the features' norm.

    A layer ``z+ = normalize(z + eta (E z - sum_j gamma_j pi_j C^j z))`` with
    operators of norm ~ alpha acts like a step of power iteration: with
    truncated kernels the closed-form balance between ``E`` and the ``C^j``
    is lost and a few layers send every input to the same feature (chance
    accuracy, no gradient). A small step keeps each layer near the identity,
    so information and gradients pass. Measured on ``x`` (mean over samples),
    layer by layer on the module's own features.
    """
    etas = [layer.eta for layer in module.layers]
    try:
        with torch.no_grad():
            z = module.layer_input(module.lift(module.check_input(x)))
            for layer in module.layers:
                layer.eta = float(step / max(_update_ratio(layer, z), 1e-30))
                z, _ = layer(z)
    except BaseException:
        for layer, eta in zip(module.layers, etas):
            layer.eta = eta
        raise


def _update_ratio(layer, z):
    """Mean over samples of ``||E z - sum_j gamma_j pi_j C^j z|| / ||z||`` for one layer."""
    update, _ = layer.update(z, layer.operators())
    ratio = layer.norms(update) / layer.norms(torch.view_as_real(z) if layer.spectral else z)
    return float(ratio.mean())


def _accuracy(module, x, labels, batch):
    if len(x) == 0:
        return float("nan")
    return float((torch.argmax(_scores(module, x, batch), dim=1) == labels).double().mean())


def fine_tune(module, X, y, *, teacher=None, epochs=10, lr=None, batch_size=64,
              validation_fraction=0.1, validation_data=None, trainable_layers=None,
              label_weight=0.5, student_step=None, random_state=0, verbose=None,
              callback=None):
    """Train a copy of an exported ReduNet by backpropagation.

    Parameters
    ----------
    module : ReduNetModule
        From :func:`convredunet.export.to_torch` (any ``kernel_size``, ``conv``
        and dtype); it is not modified.
    X : array (n, *input_shape) or (n, *signal_shape) for one input channel
        Training signals: real, finite, at least one, inside the range of the
        module's dtype.
    y : array (n,) or (n, 1)
        Their labels (values of the network's classes).
    teacher : fitted ReduNet1D / ReduNet2D / ReduNetVector or None
        The closed-form network to distill (module docstring), fitted on
        samples of the module's input shape with the module's classes; None
        trains on the labels only.
    epochs : int
        Passes over the training split (default 10).
    lr : float in (0, 1] or None
        Relative Adam step: a weight moves by about ``lr`` times its tensor's
        initial rms per step (module docstring); the temperature's step is
        ``lr`` on its logarithm. None: 1e-4, chosen on MNIST-1D validation
        (``ReduNet1D()`` built on 90 % of the training set, the other 10 %
        scored; ``bench/export_mnist1d.py --lr-sweep``): on labels 1e-4 took
        validation accuracy from 0.932 to 0.952 in 10 epochs, 3e-4 to 0.947
        (dipping to 0.870 on the way), 1e-3 dips to 0.870 in the first epoch;
        distilling into ``kernel_size=7`` for 3 epochs, 1e-4 reached 0.945 and
        1e-3 0.927.
    batch_size : int
    validation_fraction : float in [0, 1)
        Stratified share of ``X`` held out to choose the epoch kept (0: the
        last epoch is kept). It is drawn only among signals the closed-form
        network was not fitted on (the teacher's, and the one the module was
        exported from: both keep one fingerprint per training signal), since
        that network fits its own training signals almost perfectly and would
        always keep the start. When ``X`` holds no other signal, ``fine_tune``
        refuses and says to pass ``validation_data`` or
        ``validation_fraction=0``.
    validation_data : (X_val, y_val) or None
        Held-out samples for choosing the epoch; replaces the split of ``X``.
        Refused when it holds signals the closed-form network was fitted on.
    trainable_layers : int or None
        Train only the last ``trainable_layers`` layers (and the temperature);
        None trains every layer and the lifting.
    label_weight : float in [0, 1]
        With a teacher, the weight of the label cross-entropy against the
        distillation term.
    student_step : float or None
        With a teacher: each layer's ``eta`` is reset so that its update is
        this fraction of the features' norm (see ``_gentle_steps``: truncated
        deep closed-form layers with a small ``eps2`` collapse every input to
        one feature); None (default) keeps each layer's ``eta``.
    random_state : int
        Seeds the split and the batch order (a non-negative integer below
        2**63): the result is deterministic.
    verbose : bool or None
        A progress bar over the batches (epoch, loss and validation accuracy
        beside it). None (default): shown once the run has taken 2 seconds,
        so short runs stay quiet; True: always; False: never.
    callback : callable or None
        Called with each epoch's record (dict) after the epoch.

    Returns
    -------
    ReduNetModule
        The trained copy, in ``module``'s ``conv`` mode and dtype, in eval
        mode; ``.fine_tune_history`` holds one record per epoch (epoch 0 is
        the start): ``loss``, ``train_accuracy`` (running, over the epoch's
        batches), ``validation_accuracy``, ``temperature``, ``seconds``
        (the epoch's training and validation); ``.fine_tune_best_epoch`` the
        epoch kept.

    Raises
    ------
    TypeError
        A parameter of the wrong type (named in the message), a module that
        is not a ReduNetModule, a teacher that is not a ReduNet estimator.
    ValueError
        A parameter out of its range; ``X`` complex, empty, non-finite, of
        another sample shape or beyond the dtype's range; labels unknown to
        the module; a teacher fitted on another input shape or classes;
        validation signals the closed-form network was fitted on (see
        ``validation_fraction``); and a training loss or weights that become
        NaN or infinite (the message names the epoch and batch; the module
        passed in is never modified).
    """
    if not isinstance(module, ReduNetModule):
        raise TypeError(f"module must be a ReduNetModule (from to_torch), got "
                        f"{type(module).__name__}")
    epochs = _check_positive_int(epochs, "epochs")
    batch_size = _check_positive_int(batch_size, "batch_size")
    lr = 1e-4 if lr is None else _check_lr(lr)
    validation_fraction = check_real(validation_fraction, "validation_fraction",
                                     "a number in [0, 1)", lambda v: 0 <= v < 1)
    label_weight = check_real(label_weight, "label_weight", "a number in [0, 1]",
                              lambda v: 0 <= v <= 1)
    random_state = _check_seed(random_state)
    if trainable_layers is not None:
        trainable_layers = check_int(trainable_layers, "trainable_layers",
                                     rule="a positive integer or None")
        if trainable_layers > len(module.layers):
            raise ValueError(f"trainable_layers must be at most the module's {len(module.layers)}"
                             f" layer(s), got {trainable_layers}")
    if student_step is not None:
        student_step = check_real(student_step, "student_step",
                                  "a positive finite number or None", lambda v: v > 0)
    if verbose is not None:
        verbose = check_verbose(verbose)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be a callable or None, got {type(callback).__name__}")
    if teacher is not None:
        _check_teacher(teacher, module)
    X, labels = _check_data(module, X, y)
    fitted_on = _fitted_on(module, teacher)
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise ValueError("validation_data must be a pair (X_val, y_val), got "
                             f"{type(validation_data).__name__}")
        X_val, labels_val = _check_data(module, *validation_data, name="validation_data X",
                                        y_name="validation_data y")
        n_seen = int(np.sum(seen(fitted_on, X_val)))
        if n_seen:
            raise ValueError(
                f"validation_data holds {n_seen} of its {len(X_val)} signals that the "
                "closed-form network was fitted on; it fits its own training signals "
                "almost perfectly, so they cannot choose the epoch kept: pass "
                "validation_data=(X_val, y_val) held out from its fit")
        X = np.concatenate([X, X_val])
        labels = np.concatenate([labels, labels_val])
        train_idx = np.arange(len(X) - len(X_val))
        val_idx = np.arange(len(X) - len(X_val), len(X))
    else:
        unseen = ~seen(fitted_on, X)
        train_idx, val_idx = _split(len(X), labels, validation_fraction, random_state, unseen)
        if validation_fraction > 0 and len(val_idx) == 0 and not unseen.all():
            raise ValueError(
                f"X holds only signals the closed-form network was fitted on (all {len(X)}), "
                "so a validation split of them would score it on its own training signals, "
                "where it is almost perfect, and keep the start: pass validation_data="
                "(X_val, y_val) held out from its fit, or validation_fraction=0 to keep the "
                "last epoch")
    if len(train_idx) == 0:
        raise ValueError(f"validation_fraction={validation_fraction} leaves no training "
                         f"sample out of {len(X)}")

    dtype = next(module.parameters()).dtype
    original_conv = module.conv
    student = module.with_conv("auto")  # a copy; the caller's module is untouched
    student.eval()
    if teacher is not None and student_step is not None:
        _gentle_steps(student, torch.as_tensor(X[train_idx[:512]], dtype=dtype), student_step)
    if trainable_layers is not None:
        for param in student.parameters():
            param.requires_grad_(False)
        for layer in list(student.layers)[-trainable_layers:]:
            for param in layer.parameters():
                param.requires_grad_(True)
    x_all = torch.as_tensor(X, dtype=dtype)
    y_all = torch.as_tensor(labels)
    x_train, y_train = x_all[train_idx], y_all[train_idx]
    x_val, y_val = x_all[val_idx], y_all[val_idx]
    eval_batch = max(batch_size, 256)

    # Normalized scores tau * scores / s: s from the train split, the starting tau
    # calibrated on the validation split (the train split's scores of a closed-form
    # network built on it are overconfident: its subspaces hold those very samples).
    train_scores = _scores(student, x_train, eval_batch)
    norm_scale = float(-train_scores.mean())
    if not (math.isfinite(norm_scale) and norm_scale > 0):
        raise ValueError(f"the module's class scores on X have mean {-norm_scale!r}: they must "
                         "be finite and not all zero to be normalized (is the module trained "
                         "to NaN, or X degenerate?)")
    has_val = len(val_idx) > 0
    val_scores = _scores(student, x_val, eval_batch) if has_val else train_scores
    y_cal = y_val if has_val else y_train
    log_tau = torch.tensor(math.log(_best_temperature(val_scores / norm_scale, y_cal)),
                           dtype=dtype, requires_grad=True)
    soft_targets = None
    if teacher is not None:
        soft_targets = _teacher_targets(teacher, X[train_idx], X[val_idx] if has_val else None,
                                        y_cal, eval_batch)
        if not bool(torch.isfinite(soft_targets).all()):
            raise ValueError("the teacher's class probabilities on X are not finite; check "
                             "that teacher is the network the module was exported from")
        soft_targets = soft_targets.to(dtype)

    groups = []
    for param in student.parameters():
        if not param.requires_grad:
            continue
        rms = float(param.detach().pow(2).mean().sqrt()) or 1.0
        groups.append({"params": [param], "lr": lr * rms, "base_lr": lr * rms})
    groups.append({"params": [log_tau], "lr": lr, "base_lr": lr})
    optimizer = torch.optim.Adam(groups)
    generator = torch.Generator().manual_seed(int(random_state))
    n_train = len(x_train)
    steps_per_epoch = math.ceil(n_train / batch_size)
    total_steps = epochs * steps_per_epoch

    def accuracy(scores, target):
        return float((torch.argmax(scores, dim=1) == target).double().mean()) \
            if len(target) else float("nan")

    def evaluate():
        return _accuracy(student, x_val, y_val, eval_batch)

    history = [{"epoch": 0, "loss": None, "train_accuracy": accuracy(train_scores, y_train),
                "validation_accuracy": accuracy(val_scores, y_val) if has_val else float("nan"),
                "temperature": float(log_tau.detach().exp()), "seconds": 0.0}]
    best_state = copy.deepcopy(student.state_dict())
    best_epoch, best_val = 0, history[0]["validation_accuracy"]
    from tqdm.auto import tqdm

    # verbose None: a bar once the run has taken 2 s (tqdm's delay), so short runs stay quiet.
    progress = tqdm(total=total_steps, desc="fine-tuning", unit="batch",
                    disable=verbose is False, delay=0 if verbose else 2.0, leave=False)
    step = 0
    try:
        for epoch in range(1, epochs + 1):
            started = time.perf_counter()
            student.train()
            order = torch.randperm(n_train, generator=generator)
            total_loss, correct = 0.0, 0
            for s in range(0, n_train, batch_size):
                idx = order[s:s + batch_size]
                factor = 0.5 * (1 + math.cos(math.pi * step / total_steps))
                for group in optimizer.param_groups:
                    group["lr"] = group["base_lr"] * factor
                optimizer.zero_grad()
                scores = _class_scores(student, x_train[idx])
                logits = scores * (log_tau.exp() / norm_scale)
                loss = torch.nn.functional.cross_entropy(logits, y_train[idx])
                if soft_targets is not None:
                    kl = torch.nn.functional.kl_div(torch.log_softmax(logits, dim=1),
                                                    soft_targets[idx], reduction="batchmean")
                    loss = label_weight * loss + (1 - label_weight) * kl
                if not bool(torch.isfinite(loss)):
                    raise ValueError(
                        f"fine_tune stopped: the training loss is {float(loss.detach())} at epoch "
                        f"{epoch}, batch {s // batch_size + 1}; the steps are too large for "
                        f"these weights (lower lr, now {lr:g}) or the scores overflow "
                        f"{str(dtype).replace('torch.', '')}. The module passed in is "
                        "unchanged")
                loss.backward()
                optimizer.step()
                step += 1
                total_loss += float(loss.detach()) * len(idx)
                correct += int((torch.argmax(scores.detach(), dim=1) == y_train[idx]).sum())
                progress.update(1)
                progress.set_postfix(epoch=f"{epoch}/{epochs}",
                                     loss=f"{float(loss.detach()):.3f}", refresh=False)
            student.eval()
            bad = [name for name, p in student.named_parameters()
                   if not bool(torch.isfinite(p).all())]
            if bad or not math.isfinite(float(log_tau.detach())):
                raise ValueError(f"fine_tune stopped: epoch {epoch} left non-finite weights "
                                 f"({', '.join(bad[:3]) or 'the temperature'}); lower lr "
                                 f"(now {lr:g}). The module passed in is unchanged")
            record = {"epoch": epoch, "loss": total_loss / n_train,
                      "train_accuracy": correct / n_train, "validation_accuracy": evaluate(),
                      "temperature": float(log_tau.detach().exp()),
                      "seconds": time.perf_counter() - started}
            history.append(record)
            if not has_val or record["validation_accuracy"] > best_val:
                best_val, best_epoch = record["validation_accuracy"], epoch
                best_state = copy.deepcopy(student.state_dict())
            # refresh=False: a forced refresh would show the bar before tqdm's delay.
            progress.set_postfix(epoch=f"{epoch}/{epochs}", loss=f"{record['loss']:.3f}",
                                 val=f"{record['validation_accuracy']:.3f}", refresh=False)
            if callback is not None:
                callback(record)
    finally:
        progress.close()
    student.load_state_dict(best_state)
    for param in student.parameters():
        param.requires_grad_(True)
    tuned = student.with_conv(original_conv).eval()
    tuned.fine_tune_history = history
    tuned.fine_tune_best_epoch = best_epoch
    return tuned
