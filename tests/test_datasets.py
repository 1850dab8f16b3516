"""Tests for convredunet.datasets: loaders, IDX validation, polar resampling, shifts, split."""
import gzip
import hashlib
import importlib.resources
import random
import socket

import numpy as np
import pytest

from convredunet import datasets
from convredunet.datasets import (
    all_shifts,
    cyclic_shifts,
    load_mnist,
    load_mnist1d,
    random_cyclic_shift,
    to_polar,
    train_test_split_per_class,
)

# The MNIST files ship inside the package (package data), wherever it is installed.
DATA_DIR = importlib.resources.files("convredunet") / "data"
MNIST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def mnist():
    return load_mnist()


@pytest.fixture(scope="module")
def mnist1d():
    return load_mnist1d()


# --------------------------------------------------------------------------------------------
# MNIST-1D
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_mnist1d_shapes_dtypes_classes(mnist1d):
    X_train, y_train, X_test, y_test = mnist1d
    assert X_train.shape == (4000, 40) and X_test.shape == (1000, 40)
    assert y_train.shape == (4000,) and y_test.shape == (1000,)
    assert X_train.dtype == X_test.dtype == np.float64
    assert y_train.dtype == y_test.dtype == np.int64
    assert np.isfinite(X_train).all() and np.isfinite(X_test).all()
    assert set(np.unique(y_train)) == set(range(10)) == set(np.unique(y_test))
    # the whole data set is standardized by mnist1d
    X_all = np.concatenate([X_train, X_test])
    np.testing.assert_allclose(X_all.mean(), 0.0, atol=1e-10)
    np.testing.assert_allclose(X_all.std(), 1.0, rtol=1e-10)


@pytest.mark.slow
def test_mnist1d_same_data_and_cache_protected(mnist1d):
    first = mnist1d
    mutated = load_mnist1d()
    for a in mutated:
        a[...] = 0  # callers get writable copies ...
    second = load_mnist1d()
    for a, b in zip(first, second):  # ... that do not reach the cache
        np.testing.assert_array_equal(a, b)
        assert a is not b


@pytest.mark.slow
def test_mnist1d_no_network_and_global_rng_untouched(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("load_mnist1d tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    np.random.seed(123)
    random.seed(123)
    np_before = np.random.random()
    py_before = random.random()
    np.random.seed(123)
    random.seed(123)
    arrays = datasets._mnist1d_arrays.__wrapped__()  # uncached: really generate again
    assert np.random.random() == np_before  # mnist1d's global reseeding was undone
    assert random.random() == py_before
    for a, b in zip(arrays, load_mnist1d()):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------------------------
# MNIST (IDX)
# --------------------------------------------------------------------------------------------
def test_mnist_shapes_dtypes_counts(mnist):
    X, y = mnist
    assert X.shape == (10000, 28, 28) and X.dtype == np.float64
    assert y.shape == (10000,) and y.dtype == np.int64
    assert X.min() == 0.0 and X.max() == 1.0
    np.testing.assert_array_equal(np.bincount(y, minlength=10), MNIST_COUNTS)
    np.testing.assert_array_equal(np.round(X * 255) / 255, X)  # exactly pixel / 255


def test_mnist_files_checksums():
    images = gzip.decompress((DATA_DIR / datasets.MNIST_IMAGES_FILE).read_bytes())
    labels = gzip.decompress((DATA_DIR / datasets.MNIST_LABELS_FILE).read_bytes())
    assert hashlib.md5(images).hexdigest() == "2646ac647ad5339dbf082846283269ea"
    assert hashlib.md5(labels).hexdigest() == "27ae3e4e09519cfbb04c329615203637"


def test_mnist_path_and_env_var(tmp_path, monkeypatch):
    _write_idx_pair(tmp_path, n_images=3, n_labels=3)
    X, y = load_mnist(tmp_path)
    assert X.shape == (3, 4, 5) and y.tolist() == [0, 1, 2]
    X2, _ = load_mnist(str(tmp_path))
    np.testing.assert_array_equal(X, X2)
    monkeypatch.setenv("CONVREDUNET_DATA", str(tmp_path))
    X3, _ = load_mnist()
    np.testing.assert_array_equal(X, X3)


def _idx_bytes(magic, dims, payload):
    header = np.array([magic, *dims], dtype=">i4").tobytes()
    return header + bytes(payload)


def _write_idx_pair(folder, n_images, n_labels, image_magic=2051, label_magic=2049):
    rows, cols = 4, 5
    pixels = np.arange(n_images * rows * cols, dtype=np.uint8)
    labels = np.arange(n_labels, dtype=np.uint8) % 10
    (folder / datasets.MNIST_IMAGES_FILE).write_bytes(
        gzip.compress(_idx_bytes(image_magic, (n_images, rows, cols), pixels.tobytes()))
    )
    (folder / datasets.MNIST_LABELS_FILE).write_bytes(
        gzip.compress(_idx_bytes(label_magic, (n_labels,), labels.tobytes()))
    )


def test_mnist_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError,
                       match=r"MNIST file .*t10k-images-idx3-ubyte\.gz not found: path='") as info:
        load_mnist(tmp_path)
    assert str(tmp_path) in str(info.value) and "shared" not in str(info.value)
    _write_idx_pair(tmp_path, 3, 3)
    (tmp_path / datasets.MNIST_LABELS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=r"t10k-labels-idx1-ubyte\.gz"):
        load_mnist(tmp_path)


def test_mnist_truncated_payload(tmp_path):
    _write_idx_pair(tmp_path, 3, 3)
    file = tmp_path / datasets.MNIST_IMAGES_FILE
    raw = gzip.decompress(file.read_bytes())
    file.write_bytes(gzip.compress(raw[:-7]))
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz is truncated: 69 bytes"):
        load_mnist(tmp_path)
    file.write_bytes(gzip.compress(raw[:10]))  # cut inside the header
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz is truncated"):
        load_mnist(tmp_path)


def test_mnist_truncated_gzip_stream(tmp_path):
    _write_idx_pair(tmp_path, 3, 3)
    file = tmp_path / datasets.MNIST_LABELS_FILE
    file.write_bytes(file.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte\.gz is not a valid gzip"):
        load_mnist(tmp_path)


def test_mnist_trailing_bytes(tmp_path):
    _write_idx_pair(tmp_path, 3, 3)
    file = tmp_path / datasets.MNIST_LABELS_FILE
    file.write_bytes(gzip.compress(gzip.decompress(file.read_bytes()) + b"\0"))
    with pytest.raises(ValueError, match=r"labels-idx1-ubyte\.gz has trailing bytes"):
        load_mnist(tmp_path)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"image_magic": 2049}, r"images-idx3-ubyte\.gz has IDX magic number 2049, expected 2051"),
        ({"label_magic": 2051}, r"labels-idx1-ubyte\.gz has IDX magic number 2051, expected 2049"),
    ],
)
def test_mnist_wrong_magic(tmp_path, kwargs, pattern):
    _write_idx_pair(tmp_path, 3, 3, **kwargs)
    with pytest.raises(ValueError, match=pattern):
        load_mnist(tmp_path)


def test_mnist_count_mismatch(tmp_path):
    _write_idx_pair(tmp_path, n_images=3, n_labels=4)
    with pytest.raises(ValueError, match=r"holds 3 images but .*labels-idx1-ubyte\.gz holds 4"):
        load_mnist(tmp_path)


def test_mnist_path_type():
    with pytest.raises(TypeError, match="path must be a str or os.PathLike"):
        load_mnist(3)


def test_mnist_missing_messages_name_only_the_searched_folder(tmp_path, monkeypatch):
    # The environment variable: the message names it, its folder, and how to go back.
    monkeypatch.setenv("CONVREDUNET_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError,
                       match=r"the CONVREDUNET_DATA environment variable .* unset it"):
        load_mnist()
    monkeypatch.delenv("CONVREDUNET_DATA")
    # The packaged copy: a damaged install says so, and names no folder outside the package.
    monkeypatch.setattr(datasets, "_PACKAGE_DATA_DIR", "no-such-folder")
    with pytest.raises(FileNotFoundError,
                       match=r"installed convredunet package lacks its MNIST data") as info:
        load_mnist()
    assert "no-such-folder" in str(info.value) and ".." not in str(info.value)


def test_mnist_default_is_the_packaged_copy(monkeypatch):
    monkeypatch.delenv("CONVREDUNET_DATA", raising=False)
    packaged = importlib.resources.files("convredunet") / "data"
    assert packaged.joinpath(datasets.MNIST_IMAGES_FILE).is_file()
    with importlib.resources.as_file(packaged) as folder:
        X, y = load_mnist(folder)
    X0, y0 = load_mnist()
    np.testing.assert_array_equal(X, X0)
    np.testing.assert_array_equal(y, y0)


# --------------------------------------------------------------------------------------------
# stratified split
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_split_counts_disjoint_deterministic(mnist):
    X, y = mnist
    X_copy, y_copy = X.copy(), y.copy()
    X_tr, y_tr, X_te, y_te = train_test_split_per_class(X, y, 10, random_state=0)
    assert X_tr.shape == (100, 28, 28) and X_te.shape == (9900, 28, 28)
    np.testing.assert_array_equal(np.bincount(y_tr), [10] * 10)
    np.testing.assert_array_equal(np.bincount(y_te), np.array(MNIST_COUNTS) - 10)
    assert np.all(np.diff(y_tr) >= 0) and np.all(np.diff(y_te) >= 0)  # grouped by class
    # every sample lands in exactly one side: compare by image content
    keys = {x.tobytes() for x in X}
    tr_keys = [x.tobytes() for x in X_tr]
    te_keys = [x.tobytes() for x in X_te]
    assert set(tr_keys).isdisjoint(te_keys) and set(tr_keys) | set(te_keys) <= keys
    again = train_test_split_per_class(X, y, 10, random_state=0)
    for a, b in zip((X_tr, y_tr, X_te, y_te), again):
        np.testing.assert_array_equal(a, b)
    other = train_test_split_per_class(X, y, 10, random_state=1)
    assert not np.array_equal(X_tr, other[0])
    np.testing.assert_array_equal(X, X_copy)
    np.testing.assert_array_equal(y, y_copy)


def test_split_fixed_test_count_and_labels_match():
    rng = np.random.default_rng(0)
    y = np.repeat([3, 7, 9], [6, 8, 5])
    X = np.arange(len(y))[:, None] * np.ones((1, 2))
    X_tr, y_tr, X_te, y_te = train_test_split_per_class(X, y, 2, 3, random_state=rng)
    assert y_tr.tolist() == [3, 3, 7, 7, 9, 9] and y_te.tolist() == [3] * 3 + [7] * 3 + [9] * 3
    np.testing.assert_array_equal(y[X_tr[:, 0].astype(int)], y_tr)  # rows keep their labels
    np.testing.assert_array_equal(y[X_te[:, 0].astype(int)], y_te)
    assert set(X_tr[:, 0]).isdisjoint(X_te[:, 0])


@pytest.mark.parametrize(
    "args, kwargs, error, pattern",
    [
        ((0,), {}, ValueError, "n_train_per_class must be a positive integer, got 0"),
        ((2.5,), {}, TypeError, "n_train_per_class must be a positive integer, got 2.5"),
        ((2,), {"n_test_per_class": -1}, ValueError, "n_test_per_class must be an integer >= 0"),
        ((5,), {}, ValueError, "class 1 has 4 samples, fewer than n_train_per_class = 5"),
        ((3,), {"n_test_per_class": 2}, ValueError, r"class 1 has 4 samples.*= 3 \+ 2"),
        ((2,), {"random_state": "x"}, TypeError, "random_state must be None"),
    ],
)
def test_split_errors(args, kwargs, error, pattern):
    y = np.array([0] * 6 + [1] * 4)
    with pytest.raises(error, match=pattern):
        train_test_split_per_class(np.zeros((10, 3)), y, *args, **kwargs)


def test_split_label_checks():
    with pytest.raises(ValueError, match="X has 3 samples, y has 2"):
        train_test_split_per_class(np.zeros((3, 2)), np.array([0, 1]), 1)
    with pytest.raises(TypeError, match="y must hold integer labels, got dtype float64"):
        train_test_split_per_class(np.zeros((2, 2)), np.array([0.0, 1.0]), 1)


# --------------------------------------------------------------------------------------------
# polar resampling
# --------------------------------------------------------------------------------------------
def test_polar_shapes_and_dtypes(mnist):
    X, _ = mnist
    P = to_polar(X[:4])
    assert P.shape == (4, 15, 200) and P.dtype == np.float64
    P32 = to_polar(X[:4].astype(np.float32), n_radii=5, n_angles=8)
    assert P32.shape == (4, 5, 8) and P32.dtype == np.float32
    multi = np.stack([X[:4], 1 - X[:4]], axis=1)  # (m, C, H, W)
    Pc = to_polar(multi, n_radii=6, n_angles=12)
    assert Pc.shape == (4, 2, 6, 12)
    np.testing.assert_allclose(Pc[:, 0], to_polar(X[:4], n_radii=6, n_angles=12), atol=1e-12)
    Pu8 = to_polar((X[:2] * 255).astype(np.uint8), n_radii=3, n_angles=4)
    assert Pu8.dtype == np.float64


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("n_angles", [200, 36])
def test_polar_rotation_is_cyclic_shift(mnist, k, n_angles):
    X, _ = mnist
    images = X[:20]
    multi = np.stack([images, images**2], axis=1)
    for imgs in (images, multi):
        P = to_polar(imgs, n_angles=n_angles)
        # np.rot90 turns the displayed image counter-clockwise by k * 90 degrees
        P_rot = to_polar(np.rot90(imgs, k, axes=(-2, -1)), n_angles=n_angles)
        np.testing.assert_allclose(P_rot, np.roll(P, k * n_angles // 4, axis=-1), atol=1e-12)
    assert not np.allclose(P_rot, P)  # the property is not trivially true


def test_polar_against_explicit_bilinear():
    rng = np.random.default_rng(0)
    img = rng.random((1, 7, 6))
    n_radii, n_angles, r_min, r_max = 4, 9, 0.5, 4.0
    P = to_polar(img, n_radii, n_angles, r_min=r_min, r_max=r_max)
    cy, cx = 3.0, 2.5
    padded = np.pad(img[0], 2)  # zeros outside the image
    for i, r in enumerate(np.linspace(r_min, r_max, n_radii)):
        for k in range(n_angles):
            t = 2 * np.pi * k / n_angles
            y, x = cy - r * np.sin(t) + 2, cx + r * np.cos(t) + 2
            y0, x0 = int(np.floor(y)), int(np.floor(x))
            fy, fx = y - y0, x - x0
            expected = (
                (1 - fy) * (1 - fx) * padded[y0, x0]
                + (1 - fy) * fx * padded[y0, x0 + 1]
                + fy * (1 - fx) * padded[y0 + 1, x0]
                + fy * fx * padded[y0 + 1, x0 + 1]
            )
            np.testing.assert_allclose(P[0, i, k], expected, atol=1e-12)


def test_polar_does_not_modify_input(mnist):
    X, _ = mnist
    images = X[:3].copy()
    to_polar(images)
    np.testing.assert_array_equal(images, X[:3])


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        ({"n_angles": 0}, ValueError, "n_angles must be a positive integer, got 0"),
        ({"n_radii": 2.0}, TypeError, r"n_radii must be a positive integer, got 2\.0"),
        ({"r_min": -1}, ValueError, r"r_min must be a non-negative finite number, got -1\.0"),
        ({"r_max": 0.0}, ValueError, r"r_max must be a finite number greater than r_min=0\.0"),
        ({"r_max": np.inf}, ValueError, "r_max must be a finite number"),
    ],
)
def test_polar_errors(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        to_polar(np.zeros((2, 8, 8)), **kwargs)


def test_polar_input_errors():
    with pytest.raises(ValueError, match=r"images must have 3 dimensions .* got shape \(8, 8\)"):
        to_polar(np.zeros((8, 8)))
    with pytest.raises(TypeError, match="images must hold real numbers"):
        to_polar(np.zeros((2, 8, 8), dtype=complex))


# --------------------------------------------------------------------------------------------
# cyclic shifts
# --------------------------------------------------------------------------------------------
def test_all_shifts():
    assert all_shifts(4) == [0, 1, 2, 3] == all_shifts((4,))
    pairs = all_shifts((2, 3))
    assert pairs == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    with pytest.raises(ValueError, match="signal_shape must hold positive integers"):
        all_shifts((3, 0))
    with pytest.raises(ValueError, match="signal_shape must be an int T or a tuple"):
        all_shifts((2, 2, 2))


@pytest.mark.parametrize("shape", [(5, 7), (5, 3, 7)])
def test_cyclic_shifts_1d_matches_roll(shape):
    X = np.random.default_rng(1).standard_normal(shape)
    X_copy = X.copy()
    shifts = all_shifts(7) + [-2, 9]
    out = cyclic_shifts(X, 1, shifts)
    assert out.shape == (len(shifts),) + shape and out.dtype == X.dtype
    for i, s in enumerate(shifts):
        np.testing.assert_array_equal(out[i], np.roll(X, s, axis=-1))
    np.testing.assert_array_equal(X, X_copy)


@pytest.mark.parametrize("shape", [(3, 4, 5), (3, 2, 4, 5)])
def test_cyclic_shifts_2d_matches_roll(shape):
    X = np.random.default_rng(2).integers(0, 100, size=shape)
    X_copy = X.copy()
    shifts = all_shifts((4, 5)) + [(-1, 7)]
    out = cyclic_shifts(X, 2, shifts)
    assert out.shape == (len(shifts),) + shape and out.dtype == X.dtype
    for i, s in enumerate(shifts):
        np.testing.assert_array_equal(out[i], np.roll(X, s, axis=(-2, -1)))
    np.testing.assert_array_equal(X, X_copy)


@pytest.mark.parametrize(
    "ndim, shape", [(1, (6, 9)), (1, (6, 2, 9)), (2, (6, 4, 5)), (2, (6, 3, 4, 5))]
)
def test_random_cyclic_shift_matches_roll(ndim, shape):
    X = np.random.default_rng(3).standard_normal(shape)
    X_copy = X.copy()
    out, shifts = random_cyclic_shift(X, ndim, random_state=0)
    assert out.shape == X.shape and out.dtype == X.dtype
    assert shifts.dtype == np.int64
    assert shifts.shape == ((shape[0],) if ndim == 1 else (shape[0], 2))
    axes = (-1,) if ndim == 1 else (-2, -1)
    for j in range(shape[0]):
        np.testing.assert_array_equal(out[j], np.roll(X[j], np.atleast_1d(shifts[j]), axis=axes))
    sizes = np.array(shape[-ndim:])
    assert np.all(shifts >= 0) and np.all(np.atleast_2d(shifts.T).T < sizes)
    again, shifts_again = random_cyclic_shift(X, ndim, random_state=0)
    np.testing.assert_array_equal(out, again)
    np.testing.assert_array_equal(shifts, shifts_again)
    np.testing.assert_array_equal(X, X_copy)


def test_random_cyclic_shift_is_uniform_over_all_shifts():
    _, shifts = random_cyclic_shift(np.zeros((4000, 4)), 1, random_state=np.random.default_rng(5))
    counts = np.bincount(shifts, minlength=4)
    assert counts.sum() == 4000 and np.all(np.abs(counts - 1000) < 150)


@pytest.mark.parametrize(
    "args, error, pattern",
    [
        ((np.zeros((2, 3)), 3, [0]), ValueError, "ndim must be 1 .* or 2 .*, got 3"),
        ((np.zeros((2, 3)), 2, [(0, 0)]), ValueError, r"X must have 3 dimensions .*\(2, 3\)"),
        ((np.zeros((2, 3, 4, 5)), 1, [0]), ValueError, r"X must have 2 dimensions .* got shape"),
        ((np.zeros((2, 3)), 1, []), ValueError, "shifts must be a non-empty sequence of integers"),
        ((np.zeros((2, 3)), 1, [0.5]), ValueError, "shifts must be a sequence of integers for"),
        ((np.zeros((2, 3, 3)), 2, [1, 2]), ValueError, r"shifts must be a sequence of \(dy, dx\)"),
        ((np.zeros((2, 3)), 1, 3), TypeError, "shifts must be a sequence of integers, got 3"),
    ],
)
def test_cyclic_shifts_errors(args, error, pattern):
    with pytest.raises(error, match=pattern):
        cyclic_shifts(*args)


def test_public_names():
    assert set(datasets.__all__) == {
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
    }
    for name in datasets.__all__:
        assert getattr(datasets, name).__doc__
