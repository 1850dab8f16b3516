"""Checks at the public API boundary; errors name the parameter, value and rule.

Every checker of values and parameters lives here (it imports nothing from the
package, so every module can use it); arrays are checked by
:mod:`convredunet._inputs`, which hands them to their backend. Here too is
:data:`PARAMETERS`, the one table of the
estimators' hyper-parameters (type, rule, help) that drives their
validation and the command line's options; each default is declared once,
in its estimator's signature.
"""
import dataclasses
import math
import numbers

import numpy as np

def check_positive(value, name):
    """A positive finite real number (eps2, eta, ...)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive finite number, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    return value


def check_finite(value, name):
    """A finite real number."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a finite number or None, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number or None, got {value}")
    return value


def check_choice(value, name, choices):
    if value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {options}, got {value!r}")
    return value


def check_int(value, name, minimum=1, allow_none=False, rule=None):
    """An integer >= ``minimum`` (bool rejected), or None when allowed; a Python int.

    ``rule`` replaces the default wording ("an integer >= 1 [or None]").
    """
    if value is None and allow_none:
        return None
    if rule is None:
        rule = f"an integer >= {minimum}" + (" or None" if allow_none else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {rule}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be {rule}, got {value}")
    return int(value)


def check_real(value, name, rule, predicate):
    """A finite real number for which ``predicate`` holds; ``rule`` describes it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {rule}, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and predicate(value)):
        raise ValueError(f"{name} must be {rule}, got {value}")
    return value


def check_n_channels(value, name="n_channels"):
    """An integer >= 1, ``"auto"`` or None."""
    if value is None or (isinstance(value, str) and value == "auto"):
        return value
    return check_int(value, name, rule="an integer >= 1, 'auto' or None")


def check_n_components(value, name="n_components"):
    """An integer >= 1, ``"auto"`` or None (the same as ``"auto"``)."""
    if value is None or (isinstance(value, str) and value == "auto"):
        return value
    return check_int(value, name, rule="an integer >= 1, 'auto' or None")


def check_dilations(value, name="dilations"):
    """None, ``"auto"`` or a non-empty sequence of distinct integers >= 1 (returned sorted)."""
    rule = "None, 'auto' or a non-empty list of distinct integers >= 1"
    if value is None or (isinstance(value, str) and value == "auto"):
        return value
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError(f"{name} must be {rule}, got {value!r}")
    items = list(value)
    if not items:
        raise ValueError(f"{name} must be {rule}, got an empty list")
    for item in items:
        if isinstance(item, bool) or not isinstance(item, numbers.Integral):
            raise TypeError(f"{name} must be {rule}, got {value!r}")
        if item < 1:
            raise ValueError(f"{name} must be {rule}, got {value!r}")
    if len(set(int(i) for i in items)) != len(items):
        raise ValueError(f"{name} must be {rule}, got repeated values in {value!r}")
    return sorted(int(i) for i in items)


def check_random_state(random_state, name="random_state"):
    """None, a non-negative integer seed or a ``numpy.random.Generator``; returned as is."""
    if random_state is None or isinstance(random_state, np.random.Generator):
        return random_state
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        if random_state < 0:
            raise ValueError(f"{name} must be a non-negative integer seed, got {random_state}")
        return int(random_state)
    raise TypeError(f"{name} must be None, a non-negative integer seed or a "
                    f"numpy.random.Generator, got {random_state!r}")


def check_rng(random_state, name="random_state"):
    """:func:`check_random_state`, then a ``numpy.random.Generator``."""
    random_state = check_random_state(random_state, name)
    if isinstance(random_state, np.random.Generator):
        return random_state
    return np.random.default_rng(random_state)


def check_eps2(eps2, dtype):
    """``eps2`` positive, finite and representable in ``dtype`` (a name).

    ``alpha = C / (m eps2)`` must be a finite number of that precision and
    ``eps2`` a normal one: below the precision's smallest normal number
    (``numpy.finfo(dtype).tiny``) the operators overflow.
    """
    eps2 = check_positive(eps2, "eps2")
    tiny = float(np.finfo(dtype).tiny)
    if eps2 < tiny:
        raise ValueError(f"eps2 must be at least {tiny:.3g} (the smallest normal {dtype} "
                         f"number) for dtype={dtype!r}, got {eps2:g}")
    return eps2


def check_batch_size(batch_size, name="batch_size"):
    if batch_size is None:
        return None
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer or None, got {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"{name} must be a positive integer or None, got {batch_size}")
    return int(batch_size)


def check_device(value, name="device"):
    """None or a device name (its meaning is checked when the backend is resolved)."""
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} must be a device name such as 'cpu' or 'cuda', or None, "
                        f"got {value!r}")
    return value


def check_verbose(value, name="verbose"):
    if not isinstance(value, (bool, np.bool_)) and value not in (0, 1):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


NONLINEARITIES = ("relu", "abs", None)
MEMBERSHIPS = ("estimated", "label")
CLASSIFIERS = ("membership", "subspace")


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One estimator hyper-parameter.

    Attributes
    ----------
    name : str
    check : callable
        ``check(value) -> value``: raises TypeError/ValueError naming the
        parameter, the value and the rule.
    help : str
        One line for the docs and the command line.
    parse : callable
        Command-line text to value (``float``, ``int``, ...).
    signals_only : bool
        Only for ReduNet1D / ReduNet2D (the lifting's parameters).
    """

    name: str
    check: object
    help: str
    parse: object = str
    signals_only: bool = False


def _none_or(parse):
    """Command-line parser of ``parse``'s values or the word 'none'."""
    def parse_text(text):
        return None if text.lower() == "none" else parse(text)

    parse_text.__name__ = f"{parse.__name__}-or-none"
    return parse_text


def _parse_dilations(text):
    """Command-line dilations: ``auto``, ``none`` or comma-separated integers (``1,2,4``)."""
    if text.lower() in ("auto", "none"):
        return None if text.lower() == "none" else "auto"
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"dilations must be 'auto', 'none' or integers separated by commas "
                         f"such as 1,2,4, got {text!r}") from None


_parse_dilations.__name__ = "dilations"


def _parse_channels(text):
    """Command-line n_channels: ``auto``, ``none`` or an integer."""
    lowered = text.lower()
    return None if lowered == "none" else "auto" if lowered == "auto" else int(text)


_parse_channels.__name__ = "int-auto-or-none"


def _parse_components(text):
    """Command-line n_components: ``auto`` or an integer."""
    return "auto" if text.lower() in ("auto", "none") else int(text)


_parse_components.__name__ = "int-or-auto"


def _choice(name, choices):
    return lambda value: check_choice(value, name, choices)


PARAMETERS = {p.name: p for p in [
    Parameter("n_layers", lambda v: check_int(v, "n_layers", minimum=0),
              "layers to build (0: the lifted features themselves, classifier subspace)", int),
    Parameter("eps2", lambda v: check_positive(v, "eps2"),
              "squared precision epsilon^2 of the coding rates", float),
    Parameter("eta", lambda v: check_positive(v, "eta"), "step size of each layer", float),
    Parameter("lmbda", lambda v: check_positive(v, "lmbda"),
              "temperature of the membership softmax(-lmbda ||C^j z||)", float),
    Parameter("n_channels", check_n_channels,
              "channels of the random lifting; auto: by the signal size (256 up to 512 "
              "positions, fewer beyond); none: the input's own channels",
              _parse_channels, signals_only=True),
    Parameter("kernel_size", lambda v: check_int(v, "kernel_size"),
              "taps per axis of each lifting kernel (centred)", int, signals_only=True),
    Parameter("dilations", check_dilations,
              "spacings of the lifting kernels' taps, the channels split evenly among "
              "them: auto (1, 2, 4, ... up to the signal), none (1) or a list such as 1,2,4",
              _parse_dilations, signals_only=True),
    Parameter("nonlinearity", _choice("nonlinearity", NONLINEARITIES),
              "after the lifting convolution: relu, abs or none", _none_or(str),
              signals_only=True),
    Parameter("lifting_bias", lambda v: None if v is None else check_real(
        v, "lifting_bias", "a finite number or None", lambda x: True),
        "value of a constant extra input channel of the lifting, or none",
        _none_or(float), signals_only=True),
    Parameter("membership", _choice("membership", MEMBERSHIPS),
              "how training features advance while building: estimated or label"),
    Parameter("classifier", _choice("classifier", CLASSIFIERS),
              "prediction rule: membership (argmax of the last layer's membership) or "
              "subspace (nearest class subspace of the training features, shift-invariant)"),
    Parameter("n_components", check_n_components,
              "at most this many directions per frequency of each class subspace, and never "
              "more than the class's data span (classifier subspace); auto: an eighth of the "
              "feature channels, moved by 5-fold cross-validation inside fit when every "
              "class has at most as many signals as channels", _parse_components),
    Parameter("random_state", check_random_state, "seed of the lifting kernels", int),
    Parameter("backend", _choice("backend", ("numpy", "torch")), "numpy or torch"),
    Parameter("device", check_device, "torch device, e.g. cpu or cuda (backend torch)",
              _none_or(str)),
    Parameter("dtype", _choice("dtype", ("float64", "float32")), "float64 or float32"),
    Parameter("batch_size", check_batch_size,
              "samples per chunk in construction and inference (bounds memory)",
              _none_or(int)),
    Parameter("verbose", check_verbose, "show progress bars (layers while fitting, samples "
              "while predicting)"),
]}


def validate_params(params):
    """Check every hyper-parameter of ``params`` (a dict) against :data:`PARAMETERS`."""
    out = {name: PARAMETERS[name].check(value) for name, value in params.items()}
    if out.get("n_layers") == 0 and out.get("classifier", "subspace") != "subspace":
        raise ValueError("n_layers=0 needs classifier='subspace' (the membership is the last "
                         "layer's), got classifier='membership'")
    if "eps2" in out:
        out["eps2"] = check_eps2(out["eps2"], out.get("dtype", "float64"))
    return out
