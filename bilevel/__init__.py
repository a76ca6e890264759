r"""bilevel: hypergradients of argmin layers by interchangeable strategies.

.. math:: \min_\theta L(x^*(\theta), \theta),
          \quad x^*(\theta) \in \arg\min_x E(x, \theta)
"""

from bilevel import losses, parallel, problems, prox, strategies, testing, torch
from bilevel._report import CompareReport
from bilevel._types import (
    Batch,
    BatchSolution,
    ConvergenceWarning,
    DegeneracyWarning,
    Dual,
    KKTSystem,
    Manifold,
    Mirror,
    NotApplicable,
    Optimality,
    SingularSystemError,
    Solution,
    StepMap,
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
from bilevel.parallel import InstanceSum, map_instances

__all__ = [
    "Batch",
    "BatchSolution",
    "CompareReport",
    "ConvergenceWarning",
    "DegeneracyWarning",
    "MinimizeResult",
    "NotApplicable",
    "SingularSystemError",
    "Solution",
    "compare",
    "hypergradient",
    "InstanceSum",
    "jacobian",
    "jvp",
    "KKTSystem",
    "losses",
    "Manifold",
    "Mirror",
    "Dual",
    "map_instances",
    "minimize",
    "Optimality",
    "parallel",
    "problems",
    "prox",
    "StepMap",
    "strategies",
    "testing",
    "torch",
    "value_gradient",
    "vjp",
]

__version__ = "0.1.0"
