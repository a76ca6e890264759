r"""bilevel: hypergradients of argmin layers by interchangeable strategies.

.. math:: \min_\theta L(x^*(\theta), \theta),
          \quad x^*(\theta) \in \arg\min_x E(x, \theta)
"""

from bilevel import losses, problems, strategies, torch
from bilevel._report import CompareReport
from bilevel._types import (
    ConvergenceWarning,
    DegeneracyWarning,
    Dual,
    Manifold,
    Mirror,
    NotApplicable,
    SingularSystemError,
    Solution,
)
from bilevel.api import (
    MinimizeResult,
    compare,
    hypergradient,
    jacobian,
    jvp,
    minimize,
    value_gradient,
    vjp,
)

__all__ = [
    "CompareReport",
    "ConvergenceWarning",
    "DegeneracyWarning",
    "MinimizeResult",
    "NotApplicable",
    "SingularSystemError",
    "Solution",
    "compare",
    "hypergradient",
    "jacobian",
    "jvp",
    "losses",
    "Manifold",
    "Mirror",
    "Dual",
    "minimize",
    "problems",
    "strategies",
    "torch",
    "value_gradient",
    "vjp",
]

__version__ = "0.1.0"
