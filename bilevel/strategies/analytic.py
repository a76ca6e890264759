"""The problem's own exact structured VJP (closed forms, block-sparse Jacobians)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from bilevel._registry import check_applicable, register_strategy
from bilevel._types import like_structure
from bilevel.strategies.base import Strategy, kernel_vjp_batch, warn_if_unconverged

__all__ = ["Analytic"]


@register_strategy
@dataclass(frozen=True)
class Analytic(Strategy):
    """Apply the problem's ``analytic_vjp``: its exact closed-form ``(dx*/dtheta)^T v``.

    For ``Ridge`` it is ``-x* . H^{-1} v`` by one Cholesky solve.

    Parameters
    ----------
    margin_tol : float
        On a batch differentiated by the problem's batched kernel
        (:class:`bilevel.torch.Layer`), rows whose non-degeneracy margin is at or below it
        (a kink of the solution map) raise a :class:`~bilevel.DegeneracyWarning`.
    """

    name = "analytic"
    requires = frozenset({"analytic_vjp"})

    margin_tol: float = 1e-6

    def __post_init__(self):
        if not (self.margin_tol >= 0):
            raise ValueError(f"margin_tol must be >= 0, got {self.margin_tol}")

    def vjp(self, problem, solution, v, warm_start=None):
        """Return the problem's closed-form VJP."""
        check_applicable(self, problem)
        warn_if_unconverged(self, solution)
        start = time.perf_counter()
        grad = like_structure(problem.capabilities.analytic_vjp(solution, v), solution.theta)
        return grad, {"iterations": 1, "residual": 0.0, "time": time.perf_counter() - start}

    def batch_kernel(self, problem):
        """Return the problem's batched closed form (``batch.analytic_vjp``), if any."""
        batch = problem.capabilities.batch
        return None if batch is None else batch.analytic_vjp

    def vjp_batch(self, problem, batch, V):
        """Every row by the batched closed form, or row by row; warns on degenerate rows."""
        return kernel_vjp_batch(self, problem, batch, V, self.margin_tol)
