r"""Value strategies: the gradient of the optimal value ``p(theta) = min_x E(x, theta)``.

For ``E`` jointly convex in ``(x, theta)``,

.. math:: \partial p(\theta) = \arg\max_y\ \langle\theta, y\rangle - E^*(0, y),

so the gradient of the value is the solution of the dual problem, which exists and
converges (with rates, along the dual iterates of a primal-dual method) even when ``E``
is not strongly convex in ``x`` and ``x*`` is not unique (:class:`ValueFunction`). Special
cases: the envelope (Danskin) theorem ``grad p = grad_theta E(x*, theta)`` for smooth
energies with a unique minimizer (:class:`Envelope`); the Lagrange multipliers of the
constraints that theta enters (``grad_b p = y*`` for ``min c^T x`` s.t. ``A x = b``); the
dual solution ``y*`` of least absolute deviations. Finite differences of ``p`` itself are
the reference (:class:`ValueFiniteDifference`).

These strategies differentiate the value ``p``, not the solution ``x*``: use them through
:func:`bilevel.value_gradient`, or :func:`bilevel.hypergradient` and :func:`bilevel.compare`
with the loss :class:`bilevel.losses.OptimalValue`.

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

from bilevel._autograd import envelope
from bilevel._registry import check_applicable, register_value_strategy
from bilevel._types import NotApplicable, as_tuple, like_structure
from bilevel.strategies.base import ValueStrategy, warn_if_unconverged
from bilevel.strategies.finite_difference import check_stencil, stencil_gradient

__all__ = ["Envelope", "ValueFiniteDifference", "ValueFunction"]


@register_value_strategy
@dataclass(frozen=True)
class ValueFunction(ValueStrategy):
    """``grad p(theta)`` for ``p(theta) = min_x E(x, theta)`` from the problem's ``dual``.

    Parameters
    ----------
    n_steps : int, optional
        None: the exact dual solution of the problem's certificate. An integer ``k``: the
        estimate from the ``k``-th dual iterate of the problem's primal-dual method
        (``Dual.iterates``), a convergent derivative sequence.

    Notes
    -----
    ``info``: ``iterations``, ``residual`` (the certificate's duality gap), ``dual``
    (``y*``), ``time``.
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

    def value_gradient(self, problem, solution):
        """Return ``(p(theta), grad p(theta), info)`` from the problem's dual certificate."""
        check_applicable(self, problem)
        warn_if_unconverged(self, solution)
        start = time.perf_counter()
        dual = problem.capabilities.dual(solution)
        if self.n_steps is None:
            grad, iterations = dual.gradient, 0
        else:
            if dual.iterates is None:
                raise NotApplicable(
                    f"{problem.name!r} offers its dual solution but no dual iterates: use "
                    "ValueFunction(n_steps=None)")
            grad, iterations = dual.iterates(self.n_steps)[-1], self.n_steps
        grad = like_structure(tuple(np.asarray(g, dtype=np.float64) for g in as_tuple(grad)),
                              solution.theta)
        info = {"iterations": iterations, "residual": float(dual.gap), "dual": dual.y,
                "time": time.perf_counter() - start, **dual.info}
        return float(dual.value), grad, info


@register_value_strategy
@dataclass(frozen=True)
class Envelope(ValueStrategy):
    """The envelope (Danskin) theorem: ``grad p(theta) = grad_theta E(x*, theta)``.

    Exact for a unique minimizer ``x*`` over a set that does not depend on theta, with the
    ``energy`` capability's contract: ``E`` differentiable in theta at ``x*`` (it may be
    non-smooth in ``x``: the Lasso's ``lam ||x||_1`` is linear in ``lam``). On a problem
    with ``constraints`` (which theta may enter) it is the theorem's constrained form, the
    theta-gradient of the Lagrangian at ``(x*, nu*, lam*)``. No knobs. ``info``:
    ``iterations`` (0), ``residual`` (the solve's), ``time``.
    """

    name = "envelope"
    requires = (frozenset({"energy"}), frozenset({"constraints"}))

    def value_gradient(self, problem, solution):
        """Return ``(E(x*, theta), grad_theta E(x*, theta), info)``."""
        check_applicable(self, problem)
        warn_if_unconverged(self, solution)
        start = time.perf_counter()
        caps = problem.capabilities
        if caps.constraints is not None:
            certificate = caps.constraints.dual(solution)
            value, grad = certificate.value, certificate.gradient
        else:
            value, grad = envelope(caps.energy, solution)
        info = {"iterations": 0, "residual": solution.info.get("residual"),
                "time": time.perf_counter() - start}
        return value, grad, info


def optimal_value(problem, solution):
    """``p(theta)`` at a solution: the energy at ``x*``, or the dual certificate's value."""
    caps = problem.capabilities
    if caps.energy is not None:
        return envelope(caps.energy, solution, gradient=False)[0]
    return float(caps.dual(solution).value)


@register_value_strategy
@dataclass(frozen=True)
class ValueFiniteDifference(ValueStrategy):
    """Central finite differences of ``p(theta)``: the reference value strategy.

    ``p`` at each shifted theta is the energy at the re-solved minimizer (or the dual
    certificate's value when the problem has no energy), each solve from the problem's own
    start (a warm start at ``x*`` may stop at once); one-sided stencils at the edge of
    theta's domain, and the default step checked against the map's scale, as in
    :class:`~bilevel.strategies.FiniteDifference`.

    Parameters
    ----------
    order : {2, 4}
        Accuracy order of the central stencil.
    rel_step : float, optional
        Step relative to ``|theta_i|`` (``rel_step`` itself at ``theta_i = 0``); default
        ``eps^(1/(order+1))``.
    """

    name = "finite_difference"
    requires = (frozenset({"energy"}), frozenset({"dual"}))

    order: int = 4
    rel_step: float | None = None

    def __post_init__(self):
        check_stencil(self.order, self.rel_step)

    def value_gradient(self, problem, solution):
        """Differences of ``p`` along each coordinate of theta."""
        check_applicable(self, problem)
        warn_if_unconverged(self, solution)
        start = time.perf_counter()
        rel = self.rel_step if self.rel_step is not None else \
            np.finfo(float).eps ** (1 / (self.order + 1))
        grad, n_solves = stencil_gradient(
            lambda theta: optimal_value(problem, problem.solve(theta)),
            solution.theta, self.order, rel, valid=problem.in_domain,
            refine=self.rel_step is None)
        info = {"iterations": n_solves, "residual": None, "rel_step": rel,
                "time": time.perf_counter() - start}
        return optimal_value(problem, solution), grad, info
