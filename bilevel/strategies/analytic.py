"""The problem's own exact structured VJP (closed forms, block-sparse Jacobians)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from bilevel._registry import check_applicable, register_strategy
from bilevel._types import like_structure
from bilevel.strategies.base import Strategy, warn_if_unconverged

__all__ = ["Analytic"]


@register_strategy
@dataclass(frozen=True)
class Analytic(Strategy):
    """Call ``problem.analytic_vjp(solution, v)``: exact, with no knobs.

    For ``Ridge`` it is ``-x* . H^{-1} v`` by one Cholesky solve.
    """

    name = "analytic"
    requires = frozenset({"analytic_vjp"})

    def vjp(self, problem, solution, v, warm_start=None):
        """Return the problem's closed-form VJP."""
        check_applicable(self, problem)
        warn_if_unconverged(self, solution)
        start = time.perf_counter()
        grad = like_structure(problem.analytic_vjp(solution, v), solution.theta)
        return grad, {"iterations": 1, "residual": 0.0, "time": time.perf_counter() - start}
