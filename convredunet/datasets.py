"""Data sets and data transforms for the experiments.

* :func:`load_mnist1d` -- MNIST-1D (4000 train / 1000 test signals of length 40), generated
  locally by the ``mnist1d`` package; nothing is downloaded.
* :func:`mnist1d_dask` -- MNIST-1D-style signals of any number as lazy Dask arrays, generated
  chunk by chunk on the workers (each chunk its own seed); needs ``dask``.
* :func:`load_mnist` -- the MNIST test set (10,000 digits, 28 x 28) read from IDX gzip files.
* :func:`load_ucr` -- a UCR/UEA time-series classification set that ships inside the
  optional ``aeon`` package (GunPoint, ArrowHead, ...), read from its files; nothing is
  downloaded.
* :func:`train_test_split_per_class` -- a seeded stratified split (e.g. 10 digits per class).
* :func:`to_polar` -- resampling images on a polar grid, so that rotations about the image
  center become cyclic shifts along the angle axis.
* :func:`cyclic_shifts`, :func:`random_cyclic_shift`, :func:`all_shifts` -- cyclically
  shifted copies of 1D or 2D signals.

No function modifies its inputs in place; randomness comes only from ``random_state``.
"""
import functools
import gzip
import importlib.resources
import numbers
import os
import random
import threading
import zlib
from pathlib import Path

import numpy as np
import scipy.sparse

from ._validation import check_int, check_real, check_rng

__all__ = [
    "load_mnist1d",
    "mnist1d_dask",
    "load_mnist",
    "load_ucr",
    "ucr_names",
    "train_test_split_per_class",
    "to_polar",
    "cyclic_shifts",
    "random_cyclic_shift",
    "all_shifts",
]

MNIST_IMAGES_FILE = "t10k-images-idx3-ubyte.gz"
MNIST_LABELS_FILE = "t10k-labels-idx1-ubyte.gz"
_IDX_IMAGES_MAGIC = 2051  # unsigned bytes, 3 dimensions (n, rows, cols)
_IDX_LABELS_MAGIC = 2049  # unsigned bytes, 1 dimension (n,)
_DATA_ENV_VAR = "CONVREDUNET_DATA"
# The MNIST files ship inside the package, in convredunet/data/ (package data).
_PACKAGE_DATA_DIR = "data"


# --------------------------------------------------------------------------------------------
# UCR/UEA time-series classification sets bundled with aeon
# --------------------------------------------------------------------------------------------
UNEQUAL_LENGTH_HINT = ("pad them to the longest (e.g. numpy.pad with zeros or the edge value "
                       "at the end of each signal) or resample them to one length first")


def _aeon_data_dir():
    try:
        import aeon.datasets
    except ImportError:
        raise ImportError("load_ucr reads the data sets that ship inside the aeon package: "
                          "pip install 'convredunet[ucr]' (or aeon)") from None
    return Path(aeon.datasets.__file__).parent / "data"


def ucr_names():
    """Names of the classification sets with a train and a test file bundled in ``aeon``."""
    base = _aeon_data_dir()
    return sorted(d.name for d in base.iterdir() if d.is_dir()
                  and (d / f"{d.name}_TRAIN.ts").is_file() and (d / f"{d.name}_TEST.ts").is_file())


def load_ucr(name):
    """A UCR/UEA classification set bundled in ``aeon``: its default train and test split.

    Reads ``aeon``'s own files (``aeon.datasets.load_from_ts_file``); nothing is
    downloaded: names that are not bundled are refused (:func:`ucr_names` lists
    them: ACSF1, ArrowHead, BasicMotions, GunPoint, ItalyPowerDemand, OSULeaf, ...).

    Parameters
    ----------
    name : str

    Returns
    -------
    X_train : numpy array (n_train, C_in, T), float64
    y_train : numpy array (n_train,), the set's labels (strings)
    X_test, y_test : the same for the test split

    Raises
    ------
    ImportError
        Without ``aeon`` (``pip install 'convredunet[ucr]'``).
    ValueError
        For a name that is not bundled, or signals of unequal length (which
        the networks cannot take: the message says how to pad them).
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be the name of a data set, got {name!r}")
    names = ucr_names()
    if name not in names:
        raise ValueError(f"name must be one of the classification sets bundled in aeon "
                         f"({', '.join(names)}), got {name!r}; nothing is downloaded")
    from aeon.datasets import load_from_ts_file

    base = _aeon_data_dir() / name
    out = []
    for split in ("TRAIN", "TEST"):
        X, y = load_from_ts_file(str(base / f"{name}_{split}.ts"))
        if isinstance(X, list):
            lengths = sorted({int(np.shape(x)[-1]) for x in X})
            raise ValueError(f"ucr:{name} holds signals of unequal length ({lengths[0]} to "
                             f"{lengths[-1]} samples in its {split.lower()} split); "
                             f"{UNEQUAL_LENGTH_HINT}")
        X = np.asarray(X, dtype=np.float64)
        if not np.all(np.isfinite(X)):
            raise ValueError(f"ucr:{name} has missing values in its {split.lower()} split; "
                             "fill or drop them first")
        out += [X, np.asarray(y)]
    return tuple(out)


# --------------------------------------------------------------------------------------------
# small checks at the API boundary
# --------------------------------------------------------------------------------------------
def _check_real_array(X, name):
    """A real numeric numpy array (bool and complex rejected); never copies needlessly."""
    try:
        X = np.asarray(X)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a numeric array, got {type(X).__name__}") from exc
    if X.dtype.kind not in "iuf":
        raise TypeError(f"{name} must hold real numbers (integer or float), got dtype {X.dtype}")
    return X


def _check_signal_ndim(ndim):
    if isinstance(ndim, bool) or not isinstance(ndim, numbers.Integral) or ndim not in (1, 2):
        raise ValueError(
            f"ndim must be 1 (signals of shape (m, T) or (m, C, T)) or 2 (images of shape "
            f"(m, H, W) or (m, C, H, W)), got {ndim!r}"
        )
    return int(ndim)


def _check_signals(X, ndim, name="X"):
    """Validate ``X`` of shape (m, *signal) or (m, C, *signal) with ``ndim`` signal axes."""
    X = np.asarray(X)
    if ndim == 1:
        rule = "2 dimensions (m, T) or 3 dimensions (m, C, T) for ndim=1"
    else:
        rule = "3 dimensions (m, H, W) or 4 dimensions (m, C, H, W) for ndim=2"
    if X.ndim not in (ndim + 1, ndim + 2):
        raise ValueError(f"{name} must have {rule}, got shape {X.shape}")
    if any(s == 0 for s in X.shape):
        raise ValueError(f"{name} must not be empty, got shape {X.shape}")
    return X


# --------------------------------------------------------------------------------------------
# MNIST-1D
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _mnist1d_arrays():
    """Generate MNIST-1D once with the package's default arguments (read-only arrays)."""
    # make_dataset only computes; the download path of mnist1d is get_dataset(), not used here.
    from mnist1d.data import get_dataset_args, make_dataset

    # make_dataset seeds the global `random` and `numpy.random` generators; put the caller's
    # global states back so that loading data never changes anyone else's random stream.
    np_state = np.random.get_state()
    py_state = random.getstate()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    arrays = (
        np.ascontiguousarray(data["x"], dtype=np.float64),
        np.ascontiguousarray(data["y"], dtype=np.int64),
        np.ascontiguousarray(data["x_test"], dtype=np.float64),
        np.ascontiguousarray(data["y_test"], dtype=np.int64),
    )
    for a in arrays:
        a.setflags(write=False)
    return arrays


def load_mnist1d():
    """Load MNIST-1D, generated locally with the ``mnist1d`` package's default arguments.

    The data are computed by ``mnist1d.data.make_dataset(get_dataset_args())`` (5000 signals,
    seed 42, 80 % / 20 % train / test split); no file is read or written and nothing is
    downloaded. The arrays are generated once per process (about 1 s) and cached; every call
    returns fresh copies, so modifying them does not affect later calls. The global ``random``
    and ``numpy.random`` states, which ``mnist1d`` reseeds, are restored afterwards.

    Returns
    -------
    X_train : ndarray of shape (4000, 40), float64
        Training signals (the whole data set is centered and scaled to unit standard
        deviation).
    y_train : ndarray of shape (4000,), int64
        Training labels in ``0..9``.
    X_test : ndarray of shape (1000, 40), float64
        Test signals.
    y_test : ndarray of shape (1000,), int64
        Test labels in ``0..9``.

    Examples
    --------
    >>> X_train, y_train, X_test, y_test = load_mnist1d()
    >>> X_train.shape, X_test.shape
    ((4000, 40), (1000, 40))
    """
    return tuple(a.copy() for a in _mnist1d_arrays())


_MNIST1D_LOCK = threading.Lock()


def _mnist1d_chunk(n_samples, seed):
    """``n_samples`` MNIST-1D signals ``(n, 40)`` and labels from ``mnist1d`` with ``seed``."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    # make_dataset draws num_samples // 10 signals per class, split 80 / 20; both halves
    # are used, in the package's shuffled order.
    args.num_samples = -(-n_samples // 10) * 10
    args.seed = int(seed)
    # mnist1d draws from the global generators: one chunk at a time per process.
    with _MNIST1D_LOCK:
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            data = make_dataset(args)
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
    X = np.concatenate([data["x"], data["x_test"]])[:n_samples]
    y = np.concatenate([data["y"], data["y_test"]])[:n_samples]
    return np.ascontiguousarray(X, dtype=np.float64), np.ascontiguousarray(y, dtype=np.int64)


def mnist1d_dask(n_samples, chunk_size=10_000, seed=0):
    """MNIST-1D-style signals of any number, as lazy Dask arrays built chunk by chunk.

    Nothing is generated when this returns: chunk ``i`` is made by its task, where the
    graph runs (a worker of the active ``distributed.Client``), with
    ``mnist1d.data.make_dataset`` seeded by ``SeedSequence([seed, i])``. So a set of 10^7
    signals never exists in one process, and the same arguments give the same numbers
    with any scheduler. Needs ``dask`` (``pip install convredunet[dask]``).

    Parameters
    ----------
    n_samples : int
        Signals in all.
    chunk_size : int, default 10000
        Signals per chunk (the last one may be shorter). The ``mnist1d`` package makes
        about 1000 signals per second per core.
    seed : int, default 0
        Seeds every chunk (with the chunk's index).

    Returns
    -------
    X : dask array, shape (n_samples, 40), float64, chunks ``(chunk_size, 40)``
    y : dask array, shape (n_samples,), int64 labels 0..9, the same chunks

    Notes
    -----
    Each chunk is a complete ``mnist1d`` data set of its own: its signals are centered and
    scaled by the chunk's own mean and standard deviation (close to the whole set's for
    chunks of thousands), and its classes are balanced up to the last chunk's cut. X and y
    come from the same tasks: compute or persist them together (``dask.persist(X, y)``),
    or each chunk is generated once for each.
    ``convredunet`` estimators fitted on Dask persist the input with its labels when
    both are Dask arrays, so each chunk is generated once.

    Examples
    --------
    >>> from convredunet.datasets import mnist1d_dask
    >>> X, y = mnist1d_dask(1_000_000, chunk_size=20_000)   # lazy: nothing made yet
    >>> X.shape, X.numblocks
    ((1000000, 40), (50, 1))
    """
    import dask
    import dask.array as da

    n_samples = check_int(n_samples, "n_samples")
    chunk_size = check_int(chunk_size, "chunk_size")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    sizes = [min(chunk_size, n_samples - s) for s in range(0, n_samples, chunk_size)]
    xs, ys = [], []
    for index, n in enumerate(sizes):
        chunk_seed = int(np.random.SeedSequence([int(seed), index]).generate_state(1)[0])
        task = dask.delayed(_mnist1d_chunk, nout=2, pure=True)(n, chunk_seed)
        xs.append(da.from_delayed(task[0], shape=(n, 40), dtype=np.float64))
        ys.append(da.from_delayed(task[1], shape=(n,), dtype=np.int64))
    return da.concatenate(xs), da.concatenate(ys)


# --------------------------------------------------------------------------------------------
# MNIST (IDX files)
# --------------------------------------------------------------------------------------------
def _mnist_folder(path):
    """The folder to read from and a phrase naming where it came from (for error messages).

    ``path`` (already validated) wins, then the ``CONVREDUNET_DATA`` environment variable,
    then the copy that ships inside the package (an ``importlib.resources`` Traversable, so
    that it is found from any install, a wheel, an editable checkout or a zip).
    """
    if path is not None:
        folder = Path(path)
        return folder, (f"path='{folder}' must name a folder that holds {MNIST_IMAGES_FILE} "
                        f"and {MNIST_LABELS_FILE} (or leave path=None to read the copy "
                        f"shipped with convredunet)")
    env = os.environ.get(_DATA_ENV_VAR)
    if env:
        return Path(env), (f"the {_DATA_ENV_VAR} environment variable ('{env}') must name a "
                           f"folder that holds {MNIST_IMAGES_FILE} and {MNIST_LABELS_FILE} "
                           f"(or unset it to read the copy shipped with convredunet)")
    return importlib.resources.files("convredunet") / _PACKAGE_DATA_DIR, (
        "the installed convredunet package lacks its MNIST data: reinstall convredunet, or "
        f"pass path= to a folder that holds {MNIST_IMAGES_FILE} and {MNIST_LABELS_FILE}")


def _read_idx(file, magic, n_dims, where):
    """Read an unsigned-byte IDX gzip file; returns (uint8 array of the header's shape).

    ``file`` is a ``pathlib.Path`` or an ``importlib.resources`` Traversable; ``where`` ends
    the message of a missing file (which folder was searched and how to change it).
    """
    if not file.is_file():
        raise FileNotFoundError(f"MNIST file {file} not found: {where}")
    try:
        with file.open("rb") as packed, gzip.GzipFile(fileobj=packed, mode="rb") as fh:
            raw = fh.read()
    except (EOFError, OSError, zlib.error) as exc:
        raise ValueError(
            f"{file} is not a valid gzip file or is truncated (gzip error: {exc})"
        ) from exc
    header_len = 4 + 4 * n_dims
    if len(raw) < 4:
        raise ValueError(f"{file} is truncated: {len(raw)} bytes, too short for an IDX header")
    found = int(np.frombuffer(raw, dtype=">i4", count=1)[0])
    if found != magic:
        raise ValueError(
            f"{file} has IDX magic number {found}, expected {magic} "
            f"(unsigned bytes, {n_dims} dimension{'s' if n_dims > 1 else ''})"
        )
    if len(raw) < header_len:
        raise ValueError(
            f"{file} is truncated: {len(raw)} bytes, shorter than its {header_len}-byte IDX header"
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=n_dims, offset=4))
    if any(d <= 0 for d in dims):
        raise ValueError(f"{file} has IDX dimensions {dims}; every dimension must be positive")
    expected = header_len + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        problem = "is truncated" if len(raw) < expected else "has trailing bytes"
        raise ValueError(
            f"{file} {problem}: {len(raw)} bytes after decompression, expected {expected} "
            f"({header_len}-byte header + data of shape {dims})"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(dims)


def load_mnist(path=None):
    """Load the MNIST test set (10,000 handwritten digits, 28 x 28) from IDX gzip files.

    Reads ``t10k-images-idx3-ubyte.gz`` and ``t10k-labels-idx1-ubyte.gz`` and checks their
    IDX headers (magic numbers 2051 and 2049, big-endian int32 dimensions), their sizes and
    that they hold as many images as labels.

    Parameters
    ----------
    path : str or os.PathLike, optional
        Folder that holds the two files. By default the folder named by the environment
        variable ``CONVREDUNET_DATA`` if it is set, else the copy that ships inside the
        package (``convredunet/data/``, read with :mod:`importlib.resources`, so it is found
        from any install).

    Returns
    -------
    X : ndarray of shape (n_images, n_rows, n_cols), float64
        The images scaled to ``[0, 1]`` (pixel / 255); (10000, 28, 28) for MNIST.
    y : ndarray of shape (n_images,), int64
        The digit labels in ``0..9``.

    Raises
    ------
    FileNotFoundError
        If a file is missing (the message gives the file and the folder that was searched).
    ValueError
        If a file is not valid gzip, is truncated or too long, has the wrong magic number,
        holds labels outside ``0..9``, or the image and label counts differ.

    Examples
    --------
    >>> X, y = load_mnist()
    >>> X.shape, y.shape
    ((10000, 28, 28), (10000,))
    """
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike folder, got {type(path).__name__}")
    folder, where = _mnist_folder(path)
    images_file = folder / MNIST_IMAGES_FILE
    labels_file = folder / MNIST_LABELS_FILE
    images = _read_idx(images_file, _IDX_IMAGES_MAGIC, 3, where)
    labels = _read_idx(labels_file, _IDX_LABELS_MAGIC, 1, where)
    if len(images) != len(labels):
        raise ValueError(
            f"image and label counts differ: {images_file} holds {len(images)} images but "
            f"{labels_file} holds {len(labels)} labels"
        )
    if labels.max() > 9:
        raise ValueError(f"{labels_file} holds label {labels.max()}; digit labels must be 0..9")
    X = images.astype(np.float64) / 255.0
    y = labels.astype(np.int64)
    return X, y


# --------------------------------------------------------------------------------------------
# stratified split
# --------------------------------------------------------------------------------------------
def train_test_split_per_class(X, y, n_train_per_class, n_test_per_class=None, random_state=0):
    """Split a data set with a fixed number of training (and test) samples per class.

    For every class, ``n_train_per_class`` samples are drawn at random without replacement
    for training, then ``n_test_per_class`` of the remaining ones for testing (all of them
    when ``n_test_per_class`` is None). Train and test never share a sample. In both outputs
    the samples are grouped by class (labels in increasing order) and, within a class, kept
    in their original order.

    Parameters
    ----------
    X : array_like of shape (m, ...)
        Samples; any trailing shape (e.g. (m, T), (m, C, T), (m, H, W)).
    y : array_like of shape (m,)
        Integer class labels (any integer values).
    n_train_per_class : int
        Training samples per class (positive).
    n_test_per_class : int, optional
        Test samples per class (non-negative); None takes every sample not used for training.
    random_state : None, int or numpy.random.Generator, default 0
        Seed or generator for the choice of samples; the same seed gives the same split.

    Returns
    -------
    X_train : ndarray of shape (k * n_train_per_class, ...)
        Training samples (a copy), ``k`` being the number of classes.
    y_train : ndarray of shape (k * n_train_per_class,)
        Their labels.
    X_test : ndarray of shape (m_test, ...)
        Test samples (a copy); ``m_test = k * n_test_per_class``, or ``m - k *
        n_train_per_class`` when ``n_test_per_class`` is None.
    y_test : ndarray of shape (m_test,)
        Their labels.

    Raises
    ------
    ValueError
        If a class has fewer than ``n_train_per_class`` samples (``n_train_per_class +
        n_test_per_class`` when ``n_test_per_class`` is given).

    Examples
    --------
    >>> X, y = load_mnist()
    >>> X_tr, y_tr, X_te, y_te = train_test_split_per_class(X, y, 10, random_state=0)
    >>> X_tr.shape, X_te.shape
    ((100, 28, 28), (9900, 28, 28))
    """
    X = np.asarray(X)
    y = np.asarray(y)
    if X.ndim < 1:
        raise ValueError(f"X must have at least one dimension (samples first), got shape {X.shape}")
    if y.ndim != 1:
        raise ValueError(f"y must be a 1D array of labels, got shape {y.shape}")
    if y.dtype.kind not in "iu":
        raise TypeError(f"y must hold integer labels, got dtype {y.dtype}")
    if len(y) != len(X):
        raise ValueError(
            f"y must have one label per sample: X has {len(X)} samples, y has {len(y)}"
        )
    n_train = check_int(n_train_per_class, "n_train_per_class", rule="a positive integer")
    n_test = None
    if n_test_per_class is not None:
        n_test = check_int(n_test_per_class, "n_test_per_class", minimum=0)
    rng = check_rng(random_state)

    train_idx, test_idx = [], []
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        if n_test is None:
            needed, rule = n_train, f"n_train_per_class = {n_train}"
        else:
            needed = n_train + n_test
            rule = f"n_train_per_class + n_test_per_class = {n_train} + {n_test}"
        if len(members) < needed:
            raise ValueError(f"class {label} has {len(members)} samples, fewer than {rule}")
        chosen = rng.permutation(len(members))
        train_idx.append(np.sort(members[chosen[:n_train]]))
        rest = chosen[n_train:] if n_test is None else chosen[n_train:n_train + n_test]
        test_idx.append(np.sort(members[rest]))
    train_idx = np.concatenate(train_idx)
    test_idx = np.concatenate(test_idx)
    return X[train_idx], y[train_idx], X[test_idx], y[test_idx]


# --------------------------------------------------------------------------------------------
# polar resampling
# --------------------------------------------------------------------------------------------
def _polar_weights(height, width, radii, angles):
    """Sparse bilinear-interpolation matrix of shape (n_radii * n_angles, height * width)."""
    cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
    rr, tt = np.meshgrid(radii, angles, indexing="ij")  # (n_radii, n_angles)
    rows_f = (cy - rr * np.sin(tt)).ravel()  # angle counter-clockwise as displayed (row 0 on top)
    cols_f = (cx + rr * np.cos(tt)).ravel()
    r0 = np.floor(rows_f).astype(np.int64)
    c0 = np.floor(cols_f).astype(np.int64)
    fr = rows_f - r0
    fc = cols_f - c0
    n_points = rows_f.size
    point = np.arange(n_points)
    entries_p, entries_pix, entries_w = [], [], []
    for dr, wr in ((0, 1.0 - fr), (1, fr)):
        for dc, wc in ((0, 1.0 - fc), (1, fc)):
            r, c = r0 + dr, c0 + dc
            w = wr * wc
            inside = (r >= 0) & (r < height) & (c >= 0) & (c < width) & (w != 0)
            entries_p.append(point[inside])
            entries_pix.append(r[inside] * width + c[inside])
            entries_w.append(w[inside])
    return scipy.sparse.csr_matrix(
        (np.concatenate(entries_w), (np.concatenate(entries_p), np.concatenate(entries_pix))),
        shape=(n_points, height * width),
    )


def to_polar(images, n_radii=15, n_angles=200, r_min=0.0, r_max=None):
    """Resample images on a polar grid centered at the image center.

    Sample ``(i, k)`` is taken at radius ``radii[i]`` and angle ``theta_k = 2 pi k /
    n_angles`` by bilinear interpolation, pixels outside the image counting as 0. The center
    is the pixel-grid center ``((H - 1) / 2, (W - 1) / 2)`` (in row, column pixel
    coordinates); the radii are ``numpy.linspace(r_min, r_max, n_radii)``.

    Parameters
    ----------
    images : array_like of shape (m, H, W) or (m, C, H, W)
        Real images (integer images are converted to float64).
    n_radii : int, default 15
        Number of radii (positive).
    n_angles : int, default 200
        Number of angles evenly spaced over ``[0, 2 pi)`` (positive).
    r_min : float, default 0.0
        Smallest radius in pixels (non-negative). With the default, the first ring samples
        the center ``n_angles`` times (a rotation-invariant value); for 28 x 28 MNIST the
        default radii are 0, 1, ..., 14 pixels.
    r_max : float, optional
        Largest radius in pixels, greater than ``r_min``; default ``min(H, W) / 2``.

    Returns
    -------
    polar : ndarray of shape (m, n_radii, n_angles) or (m, C, n_radii, n_angles)
        The resampled images, float32 for float32 input and float64 otherwise.

    Notes
    -----
    Angle convention: ``theta = 0`` points along increasing column index (to the right),
    and angles grow counter-clockwise as the image is displayed with row 0 at the top, i.e.
    the sample point is ``(row, col) = (cy - r sin theta, cx + r cos theta)``. Hence rotating
    an image counter-clockwise by ``2 pi s / n_angles`` about its center (``numpy.rot90(x)``
    is ``s = n_angles / 4``) shifts its polar image by ``+s`` along the angle axis:
    ``to_polar(rotate(x)) ~ numpy.roll(to_polar(x), s, axis=-1)``, exactly (up to rounding)
    for rotations by multiples of 90 degrees of a square image, up to interpolation error
    otherwise.

    Examples
    --------
    >>> X, y = load_mnist()
    >>> to_polar(X[:5]).shape
    (5, 15, 200)
    """
    images = _check_real_array(images, "images")
    if images.ndim not in (3, 4):
        raise ValueError(
            f"images must have 3 dimensions (m, H, W) or 4 dimensions (m, C, H, W), "
            f"got shape {images.shape}"
        )
    if any(s == 0 for s in images.shape):
        raise ValueError(f"images must not be empty, got shape {images.shape}")
    n_radii = check_int(n_radii, "n_radii", rule="a positive integer")
    n_angles = check_int(n_angles, "n_angles", rule="a positive integer")
    r_min = check_real(r_min, "r_min", "a non-negative finite number", lambda v: v >= 0)
    height, width = images.shape[-2:]
    if r_max is None:
        r_max = min(height, width) / 2.0
    r_max = check_real(
        r_max, "r_max", f"a finite number greater than r_min={r_min}", lambda v: v > r_min
    )
    dtype = np.float32 if images.dtype == np.float32 else np.float64
    radii = np.linspace(r_min, r_max, n_radii)
    angles = 2.0 * np.pi * np.arange(n_angles) / n_angles
    weights = _polar_weights(height, width, radii, angles).astype(dtype)
    lead = images.shape[:-2]
    flat = images.reshape(-1, height * width).astype(dtype, copy=False)
    polar = np.asarray((weights @ flat.T).T, dtype=dtype)  # (n_images, n_radii * n_angles)
    return np.ascontiguousarray(polar).reshape(*lead, n_radii, n_angles)


# --------------------------------------------------------------------------------------------
# cyclic shifts
# --------------------------------------------------------------------------------------------
def _signal_shape(signal_shape):
    if isinstance(signal_shape, numbers.Integral) and not isinstance(signal_shape, bool):
        signal_shape = (signal_shape,)
    try:
        shape = tuple(signal_shape)
    except TypeError:
        raise TypeError(
            f"signal_shape must be an int T or a tuple (T,) or (H, W), got {signal_shape!r}"
        ) from None
    if len(shape) not in (1, 2):
        raise ValueError(
            f"signal_shape must be an int T or a tuple (T,) or (H, W), got {signal_shape!r}"
        )
    for s in shape:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1:
            raise ValueError(
                f"signal_shape must hold positive integers, got {signal_shape!r}"
            )
    return tuple(int(s) for s in shape)


def all_shifts(signal_shape):
    """List every cyclic shift of a 1D or 2D signal.

    Parameters
    ----------
    signal_shape : int or tuple of int
        ``T`` or ``(T,)`` for 1D signals, ``(H, W)`` for 2D signals.

    Returns
    -------
    shifts : list of int or list of tuple (int, int)
        ``[0, 1, ..., T - 1]`` in 1D; in 2D the ``H * W`` pairs ``(dy, dx)`` in row-major
        order ``(0, 0), (0, 1), ..., (H - 1, W - 1)``. Ready for :func:`cyclic_shifts`.

    Examples
    --------
    >>> all_shifts(3)
    [0, 1, 2]
    >>> all_shifts((2, 2))
    [(0, 0), (0, 1), (1, 0), (1, 1)]
    """
    shape = _signal_shape(signal_shape)
    if len(shape) == 1:
        return list(range(shape[0]))
    return [(dy, dx) for dy in range(shape[0]) for dx in range(shape[1])]


def _check_shifts(shifts, ndim):
    rule = "integers" if ndim == 1 else "(dy, dx) pairs of integers"
    if isinstance(shifts, (str, bytes)) or not hasattr(shifts, "__len__"):
        raise TypeError(f"shifts must be a sequence of {rule}, got {shifts!r}")
    if len(shifts) == 0:
        raise ValueError(f"shifts must be a non-empty sequence of {rule}, got {shifts!r}")
    arr = np.asarray(shifts, dtype=object)
    expected_shape = (len(shifts),) if ndim == 1 else (len(shifts), 2)
    ok = arr.shape == expected_shape and all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in arr.ravel()
    )
    if not ok:
        raise ValueError(f"shifts must be a sequence of {rule} for ndim={ndim}, got {shifts!r}")
    return arr.astype(np.int64)


def cyclic_shifts(X, ndim, shifts):
    """Every sample under every listed cyclic shift.

    Parameters
    ----------
    X : array_like of shape (m, T), (m, C, T), (m, H, W) or (m, C, H, W)
        Signals; the last ``ndim`` axes are the signal axes.
    ndim : {1, 2}
        Number of signal axes: 1 for (m, T) / (m, C, T), 2 for (m, H, W) / (m, C, H, W).
    shifts : sequence of int (ndim=1) or of (int, int) pairs (ndim=2)
        Non-empty list of shifts, e.g. from :func:`all_shifts`; any integers, taken modulo
        the signal length.

    Returns
    -------
    shifted : ndarray of shape (n_shifts, *X.shape)
        ``shifted[i] = numpy.roll(X, shifts[i], axis=-1)`` for ``ndim=1`` and
        ``numpy.roll(X, shifts[i], axis=(-2, -1))`` for ``ndim=2`` (a positive shift moves
        the content towards higher indices). Same dtype as ``X``; ``X`` is not modified.

    Examples
    --------
    >>> cyclic_shifts(np.arange(3)[None], 1, [0, 1])
    array([[[0, 1, 2]],
    <BLANKLINE>
           [[2, 0, 1]]])
    """
    ndim = _check_signal_ndim(ndim)
    X = _check_signals(X, ndim)
    shifts = _check_shifts(shifts, ndim)
    axes = (-1,) if ndim == 1 else (-2, -1)
    out = np.empty((len(shifts),) + X.shape, dtype=X.dtype)
    for i, s in enumerate(shifts):
        out[i] = np.roll(X, tuple(int(v) for v in np.atleast_1d(s)), axis=axes)
    return out


def random_cyclic_shift(X, ndim, random_state=0):
    """Shift each sample cyclically by its own uniformly random shift.

    Parameters
    ----------
    X : array_like of shape (m, T), (m, C, T), (m, H, W) or (m, C, H, W)
        Signals; the last ``ndim`` axes are the signal axes (all channels of a sample move
        together).
    ndim : {1, 2}
        Number of signal axes.
    random_state : None, int or numpy.random.Generator, default 0
        Seed or generator of the shifts.

    Returns
    -------
    shifted : ndarray of the shape and dtype of X
        ``shifted[j] = numpy.roll(X[j], shifts[j], axis=-1)`` (``ndim=1``) or
        ``numpy.roll(X[j], shifts[j], axis=(-2, -1))`` (``ndim=2``); ``X`` is not modified.
    shifts : ndarray of shape (m,) (ndim=1) or (m, 2) (ndim=2), int64
        The shifts used, uniform over ``0..T-1`` (or ``(0..H-1, 0..W-1)``).

    Examples
    --------
    >>> X_shifted, shifts = random_cyclic_shift(np.eye(4), 1, random_state=0)
    >>> X_shifted.shape, shifts.shape
    ((4, 4), (4,))
    """
    ndim = _check_signal_ndim(ndim)
    X = _check_signals(X, ndim)
    rng = check_rng(random_state)
    m = X.shape[0]
    sizes = X.shape[-ndim:]
    shifts = np.stack([rng.integers(0, n, size=m) for n in sizes], axis=1).astype(np.int64)
    out = X
    for a, n in enumerate(sizes):
        axis = X.ndim - ndim + a
        # out[j, ..., t, ...] = X[j, ..., (t - s_j) mod n, ...]; channels move together
        idx = (np.arange(n)[None, :] - shifts[:, a][:, None]) % n  # (m, n)
        index_shape = [1] * X.ndim
        index_shape[0], index_shape[axis] = m, n
        idx = np.broadcast_to(idx.reshape(index_shape), X.shape)
        out = np.take_along_axis(out, idx, axis=axis)  # a new array: X is not modified
    return out, (shifts[:, 0] if ndim == 1 else shifts)
