"""Save and load fitted networks: one ``.npz`` file, no pickle, checked whole.

The file holds a format version, a JSON ``meta`` entry (estimator, every
hyper-parameter, shapes, per-layer ``eta``/``lmbda``, the training history,
the storage precision), the classes, the lifting kernels and, per layer, its
operators on the half spectrum and ``gamma``; with ``classifier="subspace"``
the class subspaces' bases; and one 64-bit fingerprint per training sample
(:mod:`convredunet._fingerprints`), so that a fine-tuning run can tell
held-out signals from training ones.

Format 3 stores each operator once, at its rank and with its Hermitian
structure: a dense ``C x C`` Hermitian block per frequency as ``C x C`` real
numbers (:func:`pack_hermitian`: real parts on and above the diagonal,
imaginary parts below it), half the numbers of a dense complex block; the
dense operators of a layer stacked (``stacked_packed``, ``(F, n, C, C)``: ``E``
unless low rank, then the dense classes' ``C^j``); the low-rank classes as
their spectra ``V`` ``(F, g, C, w)`` and packed ``M^-1`` ``(F, g, w, w)``; a
low-rank ``E`` as packed ``(F, g w, g w)``. Vectors (real symmetric blocks)
keep the upper triangles. ``save(..., dtype="float32")`` stores every
floating-point entry in single precision (half the bytes; the model keeps
computing in its own precision, from the rounded numbers). Formats 1 and 2
(full complex ``stacked``, ``M_inv``, ``E_M_inv``) are still read.

A fitted network's operators are exactly Hermitian in memory (the
estimators project them once, :func:`hermitian_network`), so a model saved in
its own precision loads with the same numbers bit for bit: same ``transform``,
same predictions.

Reading checks the file against the format before building anything: every
required entry is present, each entry's header (dtype, shape) is read before
its data and must agree with the bytes the archive holds, shapes agree with
each other and with the parameters, values are finite and class indices in
range. Unknown entries are never read. Every failure is a ``ValueError``
naming the file and the entry.

Writing goes through :func:`convredunet._files.atomic_path`: a fresh temporary
file beside the target (a unique name, never an existing path) that is renamed
over the target when complete and removed on any error or interruption; a new
file gets the umask's mode (``0644`` under umask 022), a replaced one keeps its own.
"""
import dataclasses
import json
import math
import zipfile
from pathlib import Path

import numpy as np

from . import spectral
from ._files import atomic_path
from ._validation import NONLINEARITIES, validate_params
from .backend import workspace_of
from .network import Network, lifting_channels, lifting_geometry
from .subspace import n_directions

__all__ = ["save_network", "read_model", "atomic_path", "FORMAT_VERSION", "ModelFile",
           "pack_hermitian", "unpack_hermitian", "hermitian_network", "STORAGE_DTYPES"]

FORMAT_VERSION = 3
# Versions this module reads: 1 has no low-rank E, dilations or rank-correct bases; 1 and 2
# store every operator as full complex blocks.
_READS = (1, 2, 3)
#: Precisions a file may store its numbers in (``save(..., dtype=...)``).
STORAGE_DTYPES = ("float32", "float64")
_MAGIC = "convredunet-model"
# Signal dimension of each estimator, by name.
_SIGNAL_NDIM = {"ReduNetVector": 0, "ReduNet1D": 1, "ReduNet2D": 2}


# --- Hermitian blocks ---------------------------------------------------------------------
def pack_hermitian(a):
    """Hermitian blocks ``(..., n, n)`` as real ``(..., n, n)``: half the numbers.

    Complex: entry ``[i, j]`` holds ``Re a[i, j]`` for ``i <= j`` and
    ``Im a[j, i]`` for ``i > j`` (the strict upper triangle's imaginary parts,
    transposed). Real (symmetric): the upper triangles as ``(..., n (n+1) / 2)``.
    Only the upper triangle of ``a`` is read.
    """
    n = a.shape[-1]
    upper = np.triu_indices(n)
    if not np.iscomplexobj(a):
        return np.ascontiguousarray(a[..., upper[0], upper[1]])
    out = np.empty(a.shape, dtype=a.real.dtype)
    out[..., upper[0], upper[1]] = a.real[..., upper[0], upper[1]]
    strict = np.triu_indices(n, 1)
    out[..., strict[1], strict[0]] = a.imag[..., strict[0], strict[1]]
    return out


def unpack_hermitian(packed, n=None, dtype=None):
    """:func:`pack_hermitian`'s inverse: exactly Hermitian blocks (real diagonal).

    ``packed`` real ``(..., n, n)`` gives complex blocks; ``(..., n (n+1)/2)``
    with ``n`` given gives real symmetric ones. ``dtype``: of the result.
    """
    if n is not None:  # real symmetric, from the upper triangles
        iu, ju = np.triu_indices(n)
        out = np.empty(packed.shape[:-1] + (n, n), dtype=dtype or packed.dtype)
        out[..., iu, ju] = packed
        out[..., ju, iu] = packed
        return out
    n = packed.shape[-1]
    iu, ju = np.triu_indices(n)  # i <= j: real parts
    si, sj = np.triu_indices(n, 1)  # i < j: imaginary parts, stored at [j, i]
    out = np.zeros(packed.shape, dtype=dtype or np.result_type(packed.dtype, np.complex64))
    re, im = packed[..., iu, ju], packed[..., sj, si]
    out.real[..., iu, ju] = re
    out.real[..., ju, iu] = re
    out.imag[..., si, sj] = im
    out.imag[..., sj, si] = -im
    return out


def _hermitian(a):
    """The exactly Hermitian (symmetric) matrix of ``a``'s upper triangle."""
    if not np.iscomplexobj(a):
        return unpack_hermitian(pack_hermitian(a), a.shape[-1], a.dtype)
    return unpack_hermitian(pack_hermitian(a), dtype=a.dtype)


def _stacked_blocks(stacked):
    """``(F, n C, C)`` as ``(F, n, C, C)`` (a view)."""
    f, rows, c = stacked.shape
    return stacked.reshape(f, rows // c, c, c)


def hermitian_network(network):
    """Replace every operator of ``network`` by its exactly Hermitian upper triangle.

    The solves give Hermitian operators up to rounding (the two triangles of a
    block can differ in their last bits); a model file stores one triangle.
    Projecting the fitted network once makes the network in memory and the
    one read back from its file the same, bit for bit. Layer by layer, in
    place (one layer's arrays are copied at a time); the rates are kept.
    Returns ``network``.
    """
    from .network import Layer

    numpy_backend = workspace_of(np.zeros(0)).backend
    backend = network.workspace.backend
    for index, layer in enumerate(network.layers):
        own = layer.to_arrays(backend)
        if "stacked" in own:
            own["stacked"] = _hermitian(_stacked_blocks(own["stacked"])).reshape(
                own["stacked"].shape)
        for key in ("M_inv", "E_M_inv"):
            if key in own:
                own[key] = _hermitian(own[key])
        rebuilt = Layer.from_arrays(numpy_backend, own, layer.eta, layer.lmbda,
                                    network.signal_shape, rates=layer.rates)
        network.layers[index] = rebuilt.to(numpy_backend, network.workspace)
    return network


# --- writing -------------------------------------------------------------------------------
def _storage(value, dtype):
    """``value`` (numpy, float or complex) in the storage precision ``dtype`` (real name)."""
    if value.dtype.kind == "c":
        return value.astype(np.complex64 if dtype == "float32" else np.complex128)
    if value.dtype.kind == "f":
        return value.astype(dtype)
    return value


def _packed_layers(arrays, dtype):
    """Network arrays (:meth:`Network.to_arrays`) in the format-3 layout, in ``dtype``."""
    out = {}
    for key, value in arrays.items():
        name = key.rsplit("/", 1)[-1]
        value = np.asarray(value)
        if not key.startswith("layer"):
            out[key] = _storage(value, dtype) if name != "dilations" else value
        elif name == "stacked":
            blocks = _stacked_blocks(value) if value.ndim == 3 else value
            out[key + "_packed"] = _storage(pack_hermitian(blocks), dtype)
        elif name in ("M_inv", "E_M_inv"):
            out[key + "_packed"] = _storage(pack_hermitian(value), dtype)
        elif name == "V":
            out[key] = _storage(value, dtype)
        else:  # gamma, alphas, alpha_E, class lists: exact, in float64 / int64
            out[key] = value
    return out


def save_network(path, network, meta, extra=None, dtype=None):
    """Write a fitted network and its estimator's description to ``path``.

    Parameters
    ----------
    path : str or Path
    network : convredunet.network.Network
    meta : dict
        ``estimator`` (class name), ``params`` (``get_params()``), ``classes``
        (array), ``history`` (list of dicts).
    extra : dict or None
        More arrays: ``classifier/bases`` (the class subspaces of
        ``classifier="subspace"``), ``training/fingerprints``.
    dtype : {"float32", "float64"} or None
        Precision of the stored numbers; None: the model's own (its ``dtype``
        parameter). ``"float32"`` halves a float64 model's file; the loaded
        model computes in its own precision from the rounded numbers.

    Raises
    ------
    TypeError
        When a hyper-parameter cannot be stored (e.g. a Generator as random_state).
    ValueError
        When the file cannot be written, or ``dtype`` is not a storage precision.
    """
    params = meta["params"]
    try:
        json.dumps(params)
    except TypeError as exc:
        raise TypeError(f"cannot save {meta['estimator']}: every parameter must be a "
                        f"number, string, bool or None ({exc}); use an int random_state"
                        ) from None
    if dtype is None:
        dtype = params.get("dtype", "float64")
    if not isinstance(dtype, str) or dtype not in STORAGE_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(map(repr, STORAGE_DTYPES))} or "
                         f"None (the model's own precision), got {dtype!r}")
    classes = np.asarray(meta["classes"])
    if classes.dtype == object:
        classes = classes.astype(str)
    header = {
        "magic": _MAGIC,
        "estimator": meta["estimator"],
        "params": params,
        "input_shape": list(network.input_shape),
        "signal_shape": list(network.signal_shape),
        "n_layers": len(network.layers),
        "layers": [{"eta": layer.eta, "lmbda": layer.lmbda} for layer in network.layers],
        "history": meta["history"],
        "nonlinearity": None if network.lifting is None else network.lifting.nonlinearity,
        "storage_dtype": dtype,
    }
    extra = dict(extra or {})
    for key in list(extra):
        if key != "training/fingerprints":
            extra[key] = _storage(np.asarray(extra[key]), dtype)
    arrays = {"format_version": np.array(FORMAT_VERSION), "meta": np.array(json.dumps(header)),
              "classes": classes, **_packed_layers(network.to_arrays(), dtype), **extra}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)


# --- reading -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ModelFile:
    """What a model file holds, checked: enough to rebuild the estimator."""

    estimator: str
    params: dict
    classes: np.ndarray
    history: list
    network: Network
    #: Fitted numbers of the classifier (``classifier/bases`` for ``classifier="subspace"``)
    #: and the training samples' fingerprints (``training/fingerprints``) when stored.
    arrays: dict = dataclasses.field(default_factory=dict)
    #: The file's format version (3: operators stored with their Hermitian structure).
    version: int = FORMAT_VERSION


class _Archive:
    """An ``.npz`` archive whose entries are checked by header before they are read."""

    def __init__(self, path, zf):
        self.path = path
        self.zf = zf
        self.names = {name[:-4]: name for name in zf.namelist() if name.endswith(".npy")}

    def bad(self, why):
        return ValueError(f"model file '{self.path}' {why}")

    def __contains__(self, key):
        return key in self.names

    def header(self, key):
        """``(shape, dtype, header bytes)`` of entry ``key``, reading only its header."""
        if key not in self.names:
            raise self.bad(f"lacks the entry '{key}'")
        info = self.zf.getinfo(self.names[key])
        try:
            with self.zf.open(info) as handle:
                version = np.lib.format.read_magic(handle)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
                elif version == (2, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
                else:
                    raise ValueError(f"unknown .npy version {version}")
                offset = handle.tell()
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise self.bad(f"has an unreadable entry '{key}' ({exc})") from None
        if dtype.hasobject:
            raise self.bad(f"entry '{key}' holds Python objects, which are never loaded")
        declared = math.prod(shape) * dtype.itemsize
        if declared != info.file_size - offset:
            raise self.bad(f"entry '{key}' declares shape {shape} of {dtype} "
                           f"({declared} bytes) but holds {info.file_size - offset} bytes")
        return tuple(shape), dtype

    def read(self, key, kinds, ndim=None, shape=None, finite=True):
        """Entry ``key``, checked: dtype kind in ``kinds``, ``ndim``/``shape``, finiteness."""
        entry_shape, dtype = self.header(key)
        if dtype.kind not in kinds:
            names = {"f": "real floats", "c": "complex numbers", "i": "integers",
                     "u": "integers", "U": "strings", "b": "booleans"}
            rule = " or ".join(dict.fromkeys(names[k] for k in kinds))
            raise self.bad(f"entry '{key}' must hold {rule}, got dtype {dtype}")
        if ndim is not None and len(entry_shape) != ndim:
            raise self.bad(f"entry '{key}' must have {ndim} dimension(s), got shape "
                           f"{entry_shape}")
        if shape is not None and entry_shape != tuple(shape):
            raise self.bad(f"entry '{key}' must have shape {tuple(shape)}, got {entry_shape}")
        try:
            with self.zf.open(self.names[key]) as handle:
                value = np.lib.format.read_array(handle, allow_pickle=False)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise self.bad(f"has an unreadable entry '{key}' ({exc})") from None
        if finite and dtype.kind in "fc" and not np.isfinite(value).all():
            raise self.bad(f"entry '{key}' holds NaN or infinite values")
        return value


def _open(path):
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"model file '{path}' is a directory, not a model file")
    if not path.exists():
        raise FileNotFoundError(f"model file '{path}' does not exist")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"model file '{path}' is not a readable convredunet model (not an "
                         ".npz archive: truncated, corrupted or another format)")
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError) as exc:
        raise ValueError(f"model file '{path}' is not a readable convredunet model "
                         f"(truncated or corrupted: {exc})") from None


def read_model(path, estimators):
    """Read and check a model file written by :func:`save_network`.

    Parameters
    ----------
    path : str or Path
    estimators : dict name -> estimator class (used to check the parameters)

    Returns
    -------
    ModelFile

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    ValueError
        For anything else that is not a complete, consistent model of a
        format version this library reads; names the file and the entry.
    """
    with _open(path) as zf:
        archive = _Archive(Path(path), zf)
        try:
            return _read(archive, estimators)
        except (zipfile.BadZipFile, EOFError, OSError) as exc:
            raise archive.bad(f"is truncated or corrupted ({exc})") from None


def _read(archive, estimators):
    bad = archive.bad
    if "format_version" not in archive or "meta" not in archive:
        raise bad("is not a convredunet model (no format_version/meta entries)")
    version = archive.read("format_version", "iu", shape=())
    if int(version) not in _READS:
        raise bad(f"has format version {version}; this convredunet reads versions "
                  f"{', '.join(map(str, _READS))}")
    try:
        meta = json.loads(str(archive.read("meta", "U", shape=())))
    except json.JSONDecodeError as exc:
        raise bad(f"has an unreadable meta entry ({exc})") from None
    if not isinstance(meta, dict) or meta.get("magic") != _MAGIC:
        raise bad("is not a convredunet model (wrong magic)")
    name = meta.get("estimator")
    if name not in estimators:
        raise bad(f"names an unknown estimator {name!r}")
    version = int(version)
    storage = meta.get("storage_dtype") if version >= 3 else None
    if version >= 3 and storage not in STORAGE_DTYPES:
        raise bad(f"meta storage_dtype must be one of {', '.join(STORAGE_DTYPES)}, got "
                  f"{storage!r}")
    if isinstance(meta.get("params"), dict):
        # Files written before the classifier parameter existed predicted by membership.
        meta["params"].setdefault("classifier", "membership")
    params = _check_params(bad, meta, estimators[name])
    nd = _SIGNAL_NDIM[name]
    input_shape = _shape(bad, meta.get("input_shape"), "input_shape", nd + 1 if nd else 1)
    signal_shape = input_shape[1:] if nd else ()
    if list(meta.get("signal_shape", [])) != list(signal_shape):
        raise bad(f"meta signal_shape {meta.get('signal_shape')} does not match input_shape "
                  f"{list(input_shape)}")
    n_layers = params["n_layers"]
    steps = meta.get("layers")
    if meta.get("n_layers") != n_layers or not isinstance(steps, list) or \
            len(steps) != n_layers:
        raise bad(f"describes {meta.get('n_layers')!r} layers with "
                  f"{len(steps) if isinstance(steps, list) else steps!r} layer records, "
                  f"but n_layers={n_layers}")
    steps = [(_positive(bad, step, "eta", i), _positive(bad, step, "lmbda", i))
             for i, step in enumerate(steps)]
    history = meta.get("history")
    if not isinstance(history, list) or len(history) != n_layers or \
            not all(isinstance(h, dict) for h in history):
        raise bad(f"meta history must be a list of {n_layers} records")

    classes = archive.read("classes", "iufU", ndim=1)
    k = len(classes)
    if k < 2 or len(np.unique(classes)) != k:
        raise bad(f"entry 'classes' must hold at least 2 distinct labels, got {k} entries "
                  f"({len(np.unique(classes))} distinct)")

    arrays = {}
    n_channels = input_shape[0]
    nonlinearity = meta.get("nonlinearity")
    lifted = nd and params["n_channels"] is not None
    if lifted:
        if nonlinearity not in NONLINEARITIES or nonlinearity != params["nonlinearity"]:
            raise bad(f"meta nonlinearity {nonlinearity!r} does not match the parameter "
                      f"nonlinearity={params['nonlinearity']!r}")
        n_channels = lifting_channels(params["n_channels"], signal_shape)
        try:
            size, dilations = lifting_geometry(params["kernel_size"], params["dilations"],
                                               n_channels, signal_shape)
        except ValueError as exc:
            raise bad(f"has lifting parameters that do not fit its signals ({exc})") from None
        kernel_shape = (n_channels, input_shape[0]) + (size,) * nd
        arrays["lifting/kernels"] = archive.read("lifting/kernels", "f", shape=kernel_shape
                                                 ).astype(np.float64)
        if dilations is not None:
            stored = archive.read("lifting/dilations", "iu", shape=(n_channels,))
            if not np.array_equal(stored, dilations):
                raise bad(f"entry 'lifting/dilations' does not match dilations="
                          f"{params['dilations']!r} for {n_channels} channels")
            arrays["lifting/dilations"] = stored.astype(np.int64)
        elif "lifting/dilations" in archive:
            raise bad("has an entry 'lifting/dilations' but its parameters give every "
                      "channel dilation 1")
        if params["lifting_bias"] is not None:
            arrays["lifting/bias"] = archive.read("lifting/bias", "f", shape=(n_channels,))
        elif "lifting/bias" in archive:
            raise bad("has an entry 'lifting/bias' but lifting_bias=None")
    elif "lifting/kernels" in archive:
        raise bad("has lifting kernels but its parameters describe no lifting "
                  "(n_channels=None or a vector model)")

    complex_dtype = np.dtype(np.complex128 if params["dtype"] == "float64" else np.complex64)
    op_dtype = complex_dtype if nd else np.dtype(params["dtype"])
    n_freqs = spectral.n_freqs(signal_shape) if nd else 1
    read_layer = _read_layer if version < 3 else _read_packed_layer
    for index in range(n_layers):
        arrays.update(read_layer(archive, f"layer{index}/", k, n_channels, n_freqs,
                                 op_dtype, storage))

    extra = {}
    if params.get("classifier") == "subspace":
        # Read only for this classifier: files of other settings (and files
        # written before the parameter existed) have no such entry.
        try:
            rank = n_directions(params["n_components"], n_channels)
        except ValueError as exc:
            raise bad(f"has classifier='subspace' parameters that do not fit its features "
                      f"({exc})") from None
        shape, _ = archive.header("classifier/bases")
        if len(shape) != 4 or shape[:3] != (k, n_freqs, n_channels) or \
                not 1 <= shape[3] <= rank:
            raise bad(f"entry 'classifier/bases' must have shape ({k}, {n_freqs}, "
                      f"{n_channels}, r) with 1 <= r <= {rank}, got {shape}")
        extra["classifier/bases"] = archive.read("classifier/bases", "c" if nd else "f",
                                                 shape=shape)
    if "training/fingerprints" in archive:
        prints = archive.read("training/fingerprints", "u", ndim=1)
        if prints.dtype != np.uint64 or np.any(prints[1:] < prints[:-1]):
            raise bad("entry 'training/fingerprints' must hold sorted uint64 fingerprints, "
                      f"got {prints.dtype}")
        extra["training/fingerprints"] = prints

    workspace = workspace_of(np.zeros(0, dtype=params["dtype"]))
    network = Network.from_arrays(arrays, input_shape, nonlinearity if lifted else None,
                                  steps, workspace)
    return ModelFile(name, meta["params"], classes, history, network, extra, version)


def _read_layer(archive, prefix, k, n_channels, n_freqs, op_dtype, storage=None):
    bad = archive.bad
    out = _read_classes(archive, prefix, k)
    dense = out[prefix + "dense_classes"]
    g = len(out[prefix + "lowrank_classes"])
    kinds = op_dtype.kind
    e_lowrank = _e_lowrank(archive, prefix + "E_M_inv", dense, g)
    n_rows = len(dense) + (0 if e_lowrank else 1)
    if n_rows:
        stacked_shape = (n_freqs, n_rows * n_channels, n_channels)
        stacked = archive.read(prefix + "stacked", kinds, shape=stacked_shape)
        if stacked.dtype != op_dtype:
            raise bad(f"entry '{prefix}stacked' must be {op_dtype} (the model's dtype), got "
                      f"{stacked.dtype}")
        out[prefix + "stacked"] = stacked
    elif prefix + "stacked" in archive:
        raise bad(f"has an entry '{prefix}stacked' but no operator of the layer is dense")
    out[prefix + "alphas"] = _read_alphas(archive, prefix, g)
    if g:
        v_shape = _v_shape(archive, prefix, n_freqs, g, n_channels)
        width = v_shape[3]
        for key, shape in (("V", v_shape), ("M_inv", (n_freqs, g, width, width))):
            value = archive.read(prefix + key, kinds, shape=shape)
            if value.dtype != op_dtype:
                raise bad(f"entry '{prefix}{key}' must be {op_dtype}, got {value.dtype}")
            out[prefix + key] = value
        if e_lowrank:
            value = archive.read(prefix + "E_M_inv", kinds, shape=(n_freqs, g * width, g * width))
            if value.dtype != op_dtype:
                raise bad(f"entry '{prefix}E_M_inv' must be {op_dtype}, got {value.dtype}")
            out[prefix + "E_M_inv"] = value
            out[prefix + "alpha_E"] = _read_alpha_e(archive, prefix)
    return out


def _e_lowrank(archive, key, dense, g):
    """Whether the layer stores ``E`` in low-rank form (entry ``key``), checked."""
    present = key in archive
    if present and (len(dense) or not g):
        raise archive.bad(f"entry '{key}' (E in low-rank form) needs every class in "
                          f"low-rank form, got dense classes {dense.tolist()}")
    return present


def _read_alphas(archive, prefix, g):
    """The ``g`` low-rank classes' ``alpha_j`` (float64, positive)."""
    alphas = archive.read(prefix + "alphas", "f", shape=(g,)) if (
        g or prefix + "alphas" in archive) else np.zeros(0)
    if (alphas <= 0).any():
        raise archive.bad(f"entry '{prefix}alphas' must be positive")
    return alphas.astype(np.float64)


def _v_shape(archive, prefix, n_freqs, g, n_channels):
    """The shape ``(F, g, C, w)`` of the low-rank classes' stacked spectra ``V``, checked."""
    v_shape, _ = archive.header(prefix + "V")
    if len(v_shape) != 4 or v_shape[:3] != (n_freqs, g, n_channels):
        raise archive.bad(f"entry '{prefix}V' must have shape ({n_freqs}, {g}, {n_channels}, "
                          f"w), got {v_shape}")
    return v_shape


def _read_alpha_e(archive, prefix):
    alpha = archive.read(prefix + "alpha_E", "f", shape=())
    if not alpha > 0:
        raise archive.bad(f"entry '{prefix}alpha_E' must be positive, got {alpha}")
    return alpha


def _read_classes(archive, prefix, k):
    """``gamma``, ``dense_classes``, ``lowrank_classes`` of one layer, checked."""
    bad = archive.bad
    gamma = archive.read(prefix + "gamma", "f", shape=(k,))
    if (gamma <= 0).any() or abs(gamma.sum() - 1) > 1e-6:
        raise bad(f"entry '{prefix}gamma' must hold {k} positive class proportions summing "
                  f"to 1, got sum {gamma.sum():.6g}")
    dense = archive.read(prefix + "dense_classes", "iu", ndim=1)
    lowrank = archive.read(prefix + "lowrank_classes", "iu", ndim=1)
    every = np.concatenate([dense, lowrank])
    if sorted(every.tolist()) != list(range(k)):
        raise bad(f"entries '{prefix}dense_classes' and '{prefix}lowrank_classes' must "
                  f"together list each class 0..{k - 1} once, got {every.tolist()}")
    return {prefix + "gamma": gamma.astype(np.float64),
            prefix + "dense_classes": dense.astype(np.int64),
            prefix + "lowrank_classes": lowrank.astype(np.int64)}


def _read_stored(archive, key, kind, shape, storage):
    """Entry ``key`` of kind ``"f"`` or ``"c"`` stored in the precision ``storage``."""
    value = archive.read(key, kind, shape=shape)
    expected = np.dtype(storage if kind == "f" else
                        ("complex64" if storage == "float32" else "complex128"))
    if value.dtype != expected:
        raise archive.bad(f"entry '{key}' must be {expected} (the file's storage_dtype "
                          f"{storage}), got {value.dtype}")
    return value


def _read_packed_layer(archive, prefix, k, n_channels, n_freqs, op_dtype, storage):
    """One layer of a format-3 file: packed Hermitian operators, unpacked to ``op_dtype``.

    Signals: ``stacked_packed`` ``(F, n, C, C)`` real; vectors ``(1, n, d (d+1)/2)``.
    """
    bad = archive.bad
    out = _read_classes(archive, prefix, k)
    dense = out[prefix + "dense_classes"]
    g = len(out[prefix + "lowrank_classes"])
    complex_ops = op_dtype.kind == "c"

    def unpack(value, n):
        if complex_ops:
            return unpack_hermitian(value, dtype=op_dtype)
        return unpack_hermitian(value, n, dtype=op_dtype)

    def packed_shape(lead, n):
        return lead + ((n, n) if complex_ops else (n * (n + 1) // 2,))

    e_lowrank = _e_lowrank(archive, prefix + "E_M_inv_packed", dense, g)
    n_rows = len(dense) + (0 if e_lowrank else 1)
    if n_rows:
        packed = _read_stored(archive, prefix + "stacked_packed", "f",
                              packed_shape((n_freqs, n_rows), n_channels), storage)
        out[prefix + "stacked"] = unpack(packed, n_channels).reshape(
            n_freqs, n_rows * n_channels, n_channels)
    elif prefix + "stacked_packed" in archive:
        raise bad(f"has an entry '{prefix}stacked_packed' but no operator of the layer is dense")
    out[prefix + "alphas"] = _read_alphas(archive, prefix, g)
    if g:
        v_shape = _v_shape(archive, prefix, n_freqs, g, n_channels)
        width = v_shape[3]
        out[prefix + "V"] = _read_stored(archive, prefix + "V", op_dtype.kind, v_shape,
                                         storage).astype(op_dtype)
        m_inv = _read_stored(archive, prefix + "M_inv_packed", "f",
                             packed_shape((n_freqs, g), width), storage)
        out[prefix + "M_inv"] = unpack(m_inv, width)
        if e_lowrank:
            e_inv = _read_stored(archive, prefix + "E_M_inv_packed", "f",
                                 packed_shape((n_freqs,), g * width), storage)
            out[prefix + "E_M_inv"] = unpack(e_inv, g * width)
            out[prefix + "alpha_E"] = _read_alpha_e(archive, prefix)
    return out


def _check_params(bad, meta, cls):
    params = meta.get("params")
    if not isinstance(params, dict):
        raise bad("has no parameter record in its meta entry")
    try:
        estimator = cls(**params)
        checked = validate_params(estimator.get_params())
    except (TypeError, ValueError) as exc:
        raise bad(f"holds invalid parameters ({exc})") from None
    return checked


def _shape(bad, value, name, ndim):
    if not isinstance(value, list) or len(value) != ndim or not all(
            isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in value):
        raise bad(f"meta {name} must be a list of {ndim} positive integers, got {value!r}")
    return tuple(value)


def _positive(bad, step, key, index):
    value = step.get(key) if isinstance(step, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value) or value <= 0:
        raise bad(f"meta layer {index} {key} must be a positive finite number, got {value!r}")
    return float(value)
