import os

import numpy as np
import pytest

# Tolerances per precision: float64 results are compared to 1e-10 relative,
# float32 ones (against a float64 reference) to 1e-4.
RTOL = {np.float64: 1e-10, np.float32: 1e-4}


@pytest.fixture(params=[np.float64, np.float32], ids=["float64", "float32"])
def dtype(request):
    return request.param


def make_features(m, sample_shape, k, seed=0, dtype=np.float64):
    """Random unit-norm samples with balanced labels 0..k-1."""
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((m,) + tuple(sample_shape))
    Z /= np.linalg.norm(Z.reshape(m, -1), axis=1).reshape((m,) + (1,) * len(sample_shape))
    y = np.arange(m) % k
    rng.shuffle(y)
    return Z.astype(dtype), y


def rel_err(a, b):
    """max |a - b| / max |b|, on numpy copies."""
    a = np.asarray(a.detach().cpu() if hasattr(a, "detach") else a)
    b = np.asarray(b.detach().cpu() if hasattr(b, "detach") else b)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


def load_bench(filename):
    """Import a script of bench/ (not a package) as a module, once.

    The scripts import their neighbours (``harness``, ``baselines``) as ``python3
    bench/X.py`` lets them, with bench/ first on ``sys.path``; it is put there while the
    script is imported, and those neighbours stay in ``sys.modules``.
    """
    import importlib.util
    import sys

    name = "convredunet_bench_" + filename[:-3]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, os.path.join(BENCH, filename))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, BENCH)
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    finally:
        sys.path.remove(BENCH)
    return module
