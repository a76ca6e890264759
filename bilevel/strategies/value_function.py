r"""The gradient of a value function from the dual solution.

For ``p(theta) = min_x E(x, theta)`` with ``E`` jointly convex in ``(x, theta)``,

.. math:: \partial p(\theta) = \arg\max_y\ \langle\theta, y\rangle - E^*(0, y),

so the gradient of the value is the solution of the dual problem, which exists and
converges (with rates, along the dual iterates of a primal-dual method) even when ``E``
is not strongly convex in ``x`` and ``x*`` is not unique. Special cases: the envelope
(Danskin) theorem ``grad p = grad_theta E(x*, theta)`` for smooth energies; the
Lagrange multipliers of the constraints that theta enters (``grad_b p = y*`` for
``min c^T x`` s.t. ``A x = b``); the dual solution ``y*`` of least absolute deviations.

This strategy differentiates the value ``p``, not the solution ``x*``: use it through
:func:`bilevel.value_gradient`, or :func:`bilevel.hypergradient` with the loss
:class:`bilevel.losses.OptimalValue`.

References
----------
Mehmood, Ochs, "Differentiating the value function by using convex duality", AISTATS
2021.
Danskin, "The theory of max-min, with applications", SIAM J. Appl. Math. 1966.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from bilevel._registry import check_applicable, register_strategy
from bilevel._types import NotApplicable, as_tuple, like_structure
from bilevel.strategies.base import Strategy, warn_if_unconverged

__all__ = ["ValueFunction"]


@register_strategy
@dataclass(frozen=True)
class ValueFunction(Strategy):
    """``grad p(theta)`` for ``p(theta) = min_x E(x, theta)`` from the problem's ``dual``.

    Parameters
    ----------
    n_steps : int, optional
        None: the exact dual solution of the problem's certificate. An integer ``k``: the
        estimate from the ``k``-th dual iterate of the problem's primal-dual method
        (``Dual.iterates``), a convergent derivative sequence.

    Notes
    -----
    :meth:`value_gradient` is the verb; :meth:`vjp` raises :class:`~bilevel.NotApplicable`
    (the strategy does not differentiate ``x*``). ``info``: ``iterations``, ``residual``
    (the certificate's duality gap), ``dual`` (``y*``), ``time``.
    """

    name = "value_function"
    requires = frozenset({"dual"})
    iterative = True

    n_steps: int | None = None

    def __post_init__(self):
        if self.n_steps is not None and self.n_steps < 1:
            raise ValueError(f"n_steps must be >= 1 or None, got {self.n_steps}")

    def with_budget(self, budget):
        """Use the ``budget``-th dual iterate."""
        return replace(self, n_steps=int(budget))

    def vjp(self, problem, solution, v, warm_start=None):
        """Not defined: this strategy differentiates the optimal value, not ``x*``."""
        check_applicable(self, problem)
        raise NotApplicable(
            "strategy 'value_function' differentiates the optimal value p(theta) = "
            "min_x E(x, theta), not the solution x*: call bl.value_gradient(problem, theta, "
            "strategy='value_function'), or bl.hypergradient with the loss "
            "bl.losses.OptimalValue(); for VJPs of x* pick another strategy")

    def value_gradient(self, problem, solution):
        """Return ``(p(theta), grad p(theta), info)`` from ``problem.dual(solution)``."""
        check_applicable(self, problem)
        warn_if_unconverged(self, solution)
        start = time.perf_counter()
        dual = problem.dual(solution)
        if self.n_steps is None:
            grad, iterations = dual.gradient, 0
        else:
            if dual.iterates is None:
                raise NotApplicable(
                    f"{getattr(problem, 'name', type(problem).__name__)!r} offers its dual "
                    "solution but no dual iterates: use ValueFunction(n_steps=None)")
            grad, iterations = dual.iterates(self.n_steps)[-1], self.n_steps
        grad = like_structure(tuple(np.asarray(g, dtype=np.float64) for g in as_tuple(grad)),
                              solution.theta)
        info = {"iterations": iterations, "residual": float(dual.gap), "dual": dual.y,
                "time": time.perf_counter() - start, **dual.info}
        return float(dual.value), grad, info
