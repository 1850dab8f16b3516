"""Bad input is refused with an error that names the parameter, value and rule."""
import numpy as np
import pytest

import convredunet as crn

from conftest import make_features

Z, Y = make_features(8, (2, 6), k=2)


@pytest.mark.parametrize("fn", [crn.rate_reduction, crn.construct_operators])
@pytest.mark.parametrize("bad, kwargs, error, match", [
    (dict(Z=np.where(np.arange(96).reshape(8, 2, 6) == 13, np.nan, Z)), {}, ValueError,
     r"Z must contain only finite values; found 1 NaN or infinite entries \(the first in sample 1\)"),
    (dict(Z=np.full((8, 2, 6), np.inf)), {}, ValueError, "Z must contain only finite values"),
    (dict(Z=np.zeros(8)), {}, ValueError, r"Z must have 2 .* dimensions, got 1 \(shape \(8,\)\)"),
    (dict(Z=np.zeros((8, 1, 2, 3, 4))), {}, ValueError, "Z must have .* dimensions, got 5"),
    (dict(Z=Z[:0]), {}, ValueError, r"Z is empty: found array with 0 sample\(s\)"),
    (dict(Z=Z[:, :0]), {}, ValueError, r"Z is empty: found array with 0 feature\(s\)"),
    (dict(Z=Z.astype(np.complex128)), {}, ValueError,
     "Complex data not supported: Z must be real, got complex dtype complex128"),
    (dict(Z=Z.astype(str)), {}, TypeError, "Z must be a float32 or float64 array, got dtype <U"),
    (dict(y=Y[:7]), {}, ValueError, "y must have one label per sample: Z has 8 samples, y has 7"),
    (dict(y=Y + 0.5), {}, ValueError, "y must hold integer labels 0..k-1, got non-integer values"),
    (dict(y=Y - 1), {}, ValueError, "y must hold labels 0..k-1, got negative label -1"),
    (dict(y=Y.astype(str)), {}, TypeError, "y must hold integer labels 0..k-1, got dtype <U"),
    (dict(y=Y.reshape(2, 4)), {}, ValueError, r"y must be a 1D array of labels, got shape \(2, 4\)"),
    (dict(y=np.where(Y == 1, 2, Y)), {}, ValueError,
     r"class 1 has no samples; y must use labels 0..2 with every class present"),
    ({}, dict(eps2=0.0), ValueError, "eps2 must be a positive finite number, got 0.0"),
    ({}, dict(eps2=-0.1), ValueError, "eps2 must be a positive finite number, got -0.1"),
    ({}, dict(eps2=float("nan")), ValueError, "eps2 must be a positive finite number, got nan"),
    ({}, dict(eps2=float("inf")), ValueError, "eps2 must be a positive finite number, got inf"),
    ({}, dict(eps2="0.1"), TypeError, "eps2 must be a positive finite number, got '0.1'"),
    ({}, dict(domain="fourier"), ValueError,
     "domain must be one of 'spectral', 'spatial', got 'fourier'"),
    ({}, dict(batch_size=0), ValueError, "batch_size must be a positive integer or None, got 0"),
    ({}, dict(batch_size=2.5), TypeError, "batch_size must be a positive integer or None"),
])
def test_bad_input(fn, bad, kwargs, error, match):
    args = dict(Z=Z, y=Y)
    args.update(bad)
    with pytest.raises(error, match=match):
        fn(args["Z"], args["y"], **kwargs)


def test_bad_woodbury():
    with pytest.raises(ValueError, match="woodbury must be 'auto', True or False, got 'yes'"):
        crn.construct_operators(Z, Y, woodbury="yes")


def test_torch_bad_input():
    torch = pytest.importorskip("torch")
    Zt = torch.from_numpy(Z)
    with pytest.raises(ValueError, match="Z must be real, got a complex tensor"):
        crn.rate_reduction(Zt.to(torch.complex128), Y)
    with pytest.raises(TypeError, match="Z must be float32 or float64, got torch.float16"):
        crn.rate_reduction(Zt.half(), Y)
    with pytest.raises(ValueError, match="Z must contain only finite values"):
        crn.rate_reduction(Zt * float("nan"), Y)
    # Labels on another device than the features ("meta" stands in for a GPU here).
    with pytest.raises(ValueError, match="y is on device meta but Z is on device cpu"):
        crn.rate_reduction(Zt, torch.zeros(8, dtype=torch.long, device="meta"))


def test_integer_features_are_accepted_as_float64():
    r = crn.rate_reduction(np.arange(48).reshape(8, 6) % 5, Y)
    assert np.isfinite(r.delta)
