"""convredunet: shift-invariant ReduNets built in closed form, without backpropagation.

The public names are listed in ``__all__``; ``README.md`` and ``docs/guide.md`` describe them.
"""
from ._threads import get_num_threads, num_threads, set_num_threads
from .estimators import ReduNet1D, ReduNet2D, ReduNetVector, load
from .operators import Operators, RateReduction, construct_operators, rate_reduction

__version__ = "0.1.0"


def __getattr__(name):
    # fine_tune imports torch: loaded on first use, so `import convredunet` stays light.
    if name == "fine_tune":
        from .finetune import fine_tune

        return fine_tune
    raise AttributeError(f"module 'convredunet' has no attribute {name!r}")

__all__ = [
    "ReduNet1D",
    "ReduNet2D",
    "ReduNetVector",
    "load",
    "fine_tune",
    "Operators",
    "RateReduction",
    "construct_operators",
    "rate_reduction",
    "get_num_threads",
    "set_num_threads",
    "num_threads",
    "__version__",
]
