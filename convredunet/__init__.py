"""convredunet: shift-invariant ReduNets built in closed form, without backpropagation.

The public names are listed in ``__all__``; see ``README.md`` for a tour.
"""
from ._threads import get_num_threads, num_threads, set_num_threads
from .estimators import ReduNet1D, ReduNet2D, ReduNetVector
from .finetune import fine_tune
from .io import load
from .operators import Operators, RateReduction, construct_operators, rate_reduction

__version__ = "0.1.0"

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
