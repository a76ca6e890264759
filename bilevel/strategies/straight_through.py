r"""The straight-through estimator: identity backward, the baseline of the paper.

.. math:: \Big(\frac{\partial x^*}{\partial\theta}\Big)^\top v \;\approx\; v

The forward pass is the exact ``x*(theta)``; the backward pass pretends the map is the
identity (Bengio, Leonard, Courville 2013). It is **not a correct gradient**: it ignores
the structure of the Jacobian (for a piecewise-polynomial projection, the averaging within
each piece), and it is biased by design. It is here as the baseline that the
differentiable piecewise-polynomial paper compares its exact block-sparse Jacobian
against, and it applies only to problems that opt in with the ``straight_through``
capability (their ``x*`` has theta's shape), never by default: ``strategy=None`` does not
pick it.

References
----------
Y. Bengio, N. Leonard, A. Courville, "Estimating or propagating gradients through
stochastic neurons for conditional computation", arXiv:1308.3432, 2013.
P. Yin et al., "Understanding straight-through estimator in training activation quantized
neural nets", ICLR 2019.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from bilevel._registry import check_applicable, register_strategy
from bilevel._types import as_tuple, like_structure
from bilevel.strategies.base import Strategy

__all__ = ["StraightThrough"]


@register_strategy
@dataclass(frozen=True)
class StraightThrough(Strategy):
    """Return ``v`` itself as the VJP: a biased baseline, not a derivative.

    Requires the ``straight_through`` capability, which a problem declares when its
    solution has the shape of its single theta part (``PiecewisePolynomial``,
    ``ConnectedComponents``). No knobs. ``info`` has ``iterations = 0``, ``residual``
    None and ``time``.

    Examples
    --------
    >>> import numpy as np, bilevel as bl
    >>> prob = bl.problems.PiecewisePolynomial(k=2)
    >>> s, v = np.array([0.0, 0.1, 3.0]), np.array([1.0, 0.0, 0.0])
    >>> bl.vjp(prob, s, v, "straight_through")        # the exact one is [0.5, 0.5, 0]
    array([1., 0., 0.])
    """

    name = "straight_through"
    requires = frozenset({"straight_through"})

    def vjp(self, problem, solution, v, warm_start=None):
        """Return ``v``, reshaped to theta's shape."""
        check_applicable(self, problem)
        start = time.perf_counter()
        parts = as_tuple(solution.theta)
        v = np.asarray(v, dtype=np.float64)
        if len(parts) != 1 or np.size(parts[0]) != v.size:
            raise ValueError(f"straight_through needs x* shaped like a single theta part; got "
                             f"theta parts of shapes {[np.shape(p) for p in parts]} and v of "
                             f"shape {v.shape}")
        grad = v.reshape(np.shape(parts[0])).copy()
        return like_structure((grad,), solution.theta), {
            "iterations": 0, "residual": None, "time": time.perf_counter() - start}
