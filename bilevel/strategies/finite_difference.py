r"""Finite differences of the solution map: the reference strategy.

.. math:: (dx^*/d\theta_i)^\top v \approx
          \frac{-x^*(\theta + 2h e_i) + 8x^*(\theta + h e_i) - 8x^*(\theta - h e_i)
          + x^*(\theta - 2h e_i)}{12 h} \cdot v

(fourth order; second order is the plain central difference). Cost: 4 (or 2) solves per
entry of theta, each warm-started from ``x*``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from bilevel._registry import register_strategy
from bilevel._types import as_tuple, like_structure
from bilevel.strategies.base import Strategy, warn_if_unconverged

__all__ = ["FiniteDifference", "check_stencil", "stencil_gradient"]

_STENCILS = {2: ((1, 0.5), (-1, -0.5)),
             4: ((2, -1 / 12), (1, 8 / 12), (-1, -8 / 12), (-2, 1 / 12))}


def check_stencil(order, rel_step):
    """Validate the knobs of a central stencil: ``order`` 2 or 4, ``rel_step`` in (0, 0.5)."""
    if order not in _STENCILS:
        raise ValueError(f"order must be 2 or 4, got {order}")
    if rel_step is not None and not (0 < rel_step < 0.5):
        raise ValueError(f"rel_step must be in (0, 0.5), got {rel_step}")


def stencil_gradient(fn, theta, order, rel):
    """Central differences of a scalar ``fn(theta)`` along each coordinate of theta.

    The step of coordinate ``i`` is ``rel |theta_i|`` (``rel`` at ``theta_i = 0``).
    Returns ``(gradient in theta's structure, number of evaluations)``.
    """
    parts = tuple(np.asarray(t, dtype=np.float64) for t in as_tuple(theta))
    grads, calls = [], 0
    for k, part in enumerate(parts):
        g = np.zeros(part.shape)
        for idx in np.ndindex(part.shape):
            h = rel * (abs(part[idx]) if part[idx] != 0 else 1.0)
            total = 0.0
            for shift, weight in _STENCILS[order]:
                moved = [p.copy() for p in parts]
                moved[k][idx] += shift * h
                total += weight * fn(like_structure(tuple(moved), theta))
                calls += 1
            g[idx] = total / h
        grads.append(g)
    return like_structure(tuple(grads), theta), calls


@register_strategy
@dataclass(frozen=True)
class FiniteDifference(Strategy):
    """Central finite differences on ``problem.solve``.

    Parameters
    ----------
    order : {2, 4}
        Accuracy order of the central stencil.
    rel_step : float, optional
        Step relative to ``|theta_i|`` (``h = rel_step |theta_i|``, or ``rel_step`` at
        ``theta_i = 0``); the default ``eps^(1/(order+1))`` balances truncation against
        round-off, shrunk on partly smooth problems to a tenth of the non-degeneracy margin
        so that the stencil does not cross a change of the active manifold. Below 0.5, so
        that the stencil keeps a positive weight positive.

    Notes
    -----
    Exact to ``O(h^order) + O(tol / h)`` for a solver of tolerance ``tol``: problems
    solved to ~1e-12 or better make it a reference to ~1e-9.
    """

    name = "finite_difference"
    requires = frozenset()

    order: int = 4
    rel_step: float | None = None

    def __post_init__(self):
        check_stencil(self.order, self.rel_step)

    def _rel_step(self, problem, solution):
        """``rel_step``, or the default shrunk to a tenth of the manifold's margin.

        On a partly smooth problem the solution map has kinks where the active manifold
        changes, at a relative distance in theta of about its non-degeneracy margin; a
        stencil that straddles one differences two smooth pieces.
        """
        if self.rel_step is not None:
            return self.rel_step
        rel = np.finfo(float).eps ** (1 / (self.order + 1))
        manifold = problem.capabilities.manifold
        if manifold is not None:
            rel = min(rel, max(manifold(solution).margin / 10, 1e-9))
        return rel

    def vjp(self, problem, solution, v, warm_start=None):
        """Differences of ``v . x*(theta)`` along each coordinate of theta."""
        warn_if_unconverged(self, solution)
        start = time.perf_counter()
        rel = self._rel_step(problem, solution)
        v = np.asarray(v, dtype=np.float64)
        grad, n_solves = stencil_gradient(
            lambda theta: np.vdot(v, problem.solve(theta, init=solution.x).x),
            solution.theta, self.order, rel)
        info = {"iterations": n_solves, "residual": None, "rel_step": rel,
                "time": time.perf_counter() - start}
        return grad, info

    def jvp(self, problem, solution, dtheta):
        """Differences of ``x*(theta + t dtheta)`` in ``t``: forward mode, ``order`` solves.

        The step is ``rel_step`` times the smallest ``|theta_i| / |dtheta_i|``, so that no
        coordinate moves by more than its relative step (a positive lam stays positive).
        """
        warn_if_unconverged(self, solution)
        start = time.perf_counter()
        rel = self._rel_step(problem, solution)
        parts = tuple(np.asarray(t, dtype=np.float64) for t in as_tuple(solution.theta))
        dirs = tuple(np.broadcast_to(np.asarray(d, dtype=np.float64), p.shape)
                     for d, p in zip(as_tuple(dtheta), parts))
        ratios = [np.abs(p[d != 0]) / np.abs(d[d != 0]) for p, d in zip(parts, dirs)]
        ratios = np.concatenate([r.ravel() for r in ratios] + [np.zeros(0)])
        ratios = ratios[ratios > 0]
        if not any(np.any(d != 0) for d in dirs):
            return np.zeros_like(solution.x), {"iterations": 0, "residual": None,
                                               "time": time.perf_counter() - start}
        h = rel * (ratios.min() if ratios.size else 1.0)
        total = np.zeros_like(solution.x)
        for shift, weight in _STENCILS[self.order]:
            moved = tuple(p + shift * h * d for p, d in zip(parts, dirs))
            total += weight * problem.solve(like_structure(moved, solution.theta),
                                            init=solution.x).x
        info = {"iterations": len(_STENCILS[self.order]), "residual": None, "rel_step": rel,
                "time": time.perf_counter() - start}
        return total / h, info
