r"""Finite differences of the solution map: the reference strategy.

.. math:: (dx^*/d\theta_i)^\top v \approx
          \frac{-x^*(\theta + 2h e_i) + 8x^*(\theta + h e_i) - 8x^*(\theta - h e_i)
          + x^*(\theta - 2h e_i)}{12 h} \cdot v

(fourth order; second order is the plain central difference; one-sided stencils of the
same orders at the edge of theta's domain). Cost: 4 (or 2) solves per entry of theta and
per step tried (the default refines the step, 2 to 4 tries).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from bilevel._registry import register_strategy
from bilevel._types import as_tuple, like_structure
from bilevel.strategies.base import Strategy, warn_if_unconverged

__all__ = ["FiniteDifference", "check_stencil", "directional_derivative", "refined_derivative",
           "stencil_gradient"]

_STENCILS = {2: ((1, 0.5), (-1, -0.5)),
             4: ((2, -1 / 12), (1, 8 / 12), (-1, -8 / 12), (-2, 1 / 12))}
# One-sided (forward) stencils of the same orders, for theta at the edge of its domain:
# (-3 f0 + 4 f1 - f2) / 2h and (-25 f0 + 48 f1 - 36 f2 + 16 f3 - 3 f4) / 12h.
_FORWARD = {2: ((0, -1.5), (1, 2.0), (2, -0.5)),
            4: ((0, -25 / 12), (1, 4.0), (2, -3.0), (3, 4 / 3), (4, -0.25))}
# Step check: the fourth-order estimate is trusted when the second-order one from the same
# points agrees with it to _AGREE relative (then its own error is ~_AGREE^2); else the step
# shrinks by _SHRINK, at most _MAX_SHRINK times, while that gap decreases.
_SHRINK, _MAX_SHRINK, _AGREE = 4.0, 4, 1e-5
# Second-order estimates from a subset of each fourth-order stencil's points.
_LOWER = {"central": ((1, 0.5), (-1, -0.5)), "forward": ((0, -1.5), (1, 2.0), (2, -0.5))}


def check_stencil(order, rel_step):
    """Validate the knobs of a central stencil: ``order`` 2 or 4, ``rel_step`` in (0, 0.5)."""
    if order not in _STENCILS:
        raise ValueError(f"order must be 2 or 4, got {order}")
    if rel_step is not None and not (0 < rel_step < 0.5):
        raise ValueError(f"rel_step must be in (0, 0.5), got {rel_step}")


def _stencils(order):
    """Return the central stencil, then the forward and the backward one-sided ones."""
    forward = _FORWARD[order]
    return (_STENCILS[order], forward, tuple((-s, -w) for s, w in forward))


def directional_derivative(fn, theta, direction, h, order, valid=None, lower=False):
    """``d/dt fn(theta + t direction)`` at 0 by a stencil of step ``h``; ``(value, calls)``.

    The central stencil when all its points pass ``valid`` (the problem's domain), else a
    one-sided one of the same order (at ``lam = 0``, the forward one). ``fn`` may return a
    scalar or an array. With ``lower`` (order 4), also the second-order estimate from the
    same points: ``(value, second_order_value, calls)``.
    """
    parts = tuple(np.asarray(t, dtype=np.float64) for t in as_tuple(theta))
    for kind, stencil in zip(("central", "forward", "backward"), _stencils(order)):
        points = {s: like_structure(tuple(p + s * h * d for p, d in zip(parts, direction)),
                                    theta) for s, _ in stencil}
        if valid is None or all(valid(pt) for pt in points.values()):
            values = {s: np.asarray(fn(pt), dtype=np.float64) for s, pt in points.items()}
            total = sum(w * values[s] for s, w in stencil) / h
            if not lower:
                return total, len(points)
            sign = -1 if kind == "backward" else 1
            low = _LOWER["central" if kind == "central" else "forward"]
            second = sum(sign * w * values[sign * s] for s, w in low) / h
            return total, second, len(points)
    raise ValueError(f"no finite-difference stencil of step {h:.2e} stays inside theta's "
                     "domain (the problem's check_theta rejects points on both sides); pass a "
                     "smaller rel_step")


def refined_derivative(fn, theta, direction, h, order, valid=None, refine=True):
    """:func:`directional_derivative`, with a step checked against the map's own scale.

    A step relative to ``|theta_i|`` can be far larger than the scale on which the map
    varies (softmax of ``z + 1000`` sees only differences of ``z``). With ``refine`` (order
    4), the fourth-order estimate is compared with the second-order one from the same
    points, free of extra solves: their gap, about ``h^2 |f^(3)| / 6``, estimates the
    truncation. When it exceeds 1e-5 relative, ``h`` shrinks by 4 while the gap decreases
    (Richardson's error estimate, as in Ridders, Adv. Eng. Software 4(2), 1982). Returns
    ``(estimate, calls, step)``.
    """
    if not refine or order != 4:
        value, calls = directional_derivative(fn, theta, direction, h, order, valid)
        return value, calls, h

    def gap_of(d4, d2):
        return float(np.linalg.norm(np.ravel(d4 - d2))), float(np.linalg.norm(np.ravel(d4)))

    best, second, calls = directional_derivative(fn, theta, direction, h, order, valid, True)
    gap, size = gap_of(best, second)
    step = h
    for _ in range(_MAX_SHRINK):
        if gap <= _AGREE * size:
            break
        h = h / _SHRINK
        cur, second, more = directional_derivative(fn, theta, direction, h, order, valid, True)
        calls += more
        cur_gap, cur_size = gap_of(cur, second)
        if not cur_gap < gap:          # round-off took over: keep the larger step
            break
        best, gap, size, step = cur, cur_gap, cur_size, h
    return best, calls, step


def stencil_gradient(fn, theta, order, rel, *, valid=None, refine=False):
    """Finite differences of a scalar ``fn(theta)`` along each coordinate of theta.

    The step of coordinate ``i`` is ``rel |theta_i|`` (``rel`` at ``theta_i = 0``), then
    refined (:func:`refined_derivative`) with ``refine``; stencils are one-sided where a
    central one leaves the domain ``valid``. Returns ``(gradient in theta's structure,
    number of evaluations)``.
    """
    parts = tuple(np.asarray(t, dtype=np.float64) for t in as_tuple(theta))
    grads, calls = [], 0
    for k, part in enumerate(parts):
        g = np.zeros(part.shape)
        for idx in np.ndindex(part.shape):
            h = rel * (abs(part[idx]) if part[idx] != 0 else 1.0)
            direction = [np.zeros(p.shape) for p in parts]
            direction[k][idx] = 1.0
            g[idx], more, _ = refined_derivative(fn, theta, direction, h, order, valid, refine)
            calls += more
        grads.append(g)
    return like_structure(tuple(grads), theta), calls


@register_strategy
@dataclass(frozen=True)
class FiniteDifference(Strategy):
    """Finite differences on ``problem.solve``: the reference.

    Parameters
    ----------
    order : {2, 4}
        Accuracy order of the stencil.
    rel_step : float, optional
        Step relative to ``|theta_i|`` (``h = rel_step |theta_i|``, or ``rel_step`` at
        ``theta_i = 0``), used as given. The default starts from ``eps^(1/(order+1))``
        (balancing truncation against round-off), shrunk on partly smooth problems to a
        tenth of the non-degeneracy margin so that the stencil does not cross a change of
        the active manifold, then refined: the step shrinks while successive estimates
        converge (:func:`refined_derivative`), so that a map that varies on a scale far
        below ``|theta_i|`` (softmax of ``z + 1000``) is resolved. Below 0.5, so that the
        stencil keeps a positive weight positive.
    warm : bool
        Warm-start the shifted solves from ``x*``. Off by default: a solver warm-started
        at ``x*`` may stop at once, its residual at the shifted theta being already below
        tol, and the differences then vanish (logistic regression at ``lam = 1e-9``); each
        solve starts where the problem's own solve starts.

    Notes
    -----
    Exact to ``O(h^order) + O(tol / h)`` for a solver of tolerance ``tol``: problems
    solved to ~1e-12 or better make it a reference to ~1e-9. Where a central stencil
    leaves theta's domain (the problem's :meth:`~bilevel.problems.Problem.in_domain`: a
    weight at 0), a one-sided stencil of the same order replaces it.
    """

    name = "finite_difference"
    requires = frozenset()

    order: int = 4
    rel_step: float | None = None
    warm: bool = False

    def __post_init__(self):
        check_stencil(self.order, self.rel_step)
        if not isinstance(self.warm, bool):
            raise ValueError(f"warm must be a bool, got {self.warm!r}")

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

    def _solver(self, problem, solution):
        init = solution.x if self.warm else None
        return lambda theta: problem.solve(theta, init=init).x

    def vjp(self, problem, solution, v, warm_start=None):
        """Differences of ``v . x*(theta)`` along each coordinate of theta."""
        warn_if_unconverged(self, solution)
        start = time.perf_counter()
        rel = self._rel_step(problem, solution)
        v = np.asarray(v, dtype=np.float64)
        solve = self._solver(problem, solution)
        grad, n_solves = stencil_gradient(
            lambda theta: np.vdot(v, solve(theta)), solution.theta, self.order, rel,
            valid=problem.in_domain, refine=self.rel_step is None)
        info = {"iterations": n_solves, "residual": None, "rel_step": rel,
                "time": time.perf_counter() - start}
        return grad, info

    def jvp(self, problem, solution, dtheta):
        """Differences of ``x*(theta + t dtheta)`` in ``t``: forward mode.

        The step is ``rel_step`` times the smallest ``|theta_i| / |dtheta_i|``, so that no
        coordinate moves by more than its relative step, then refined as in :meth:`vjp`.
        """
        warn_if_unconverged(self, solution)
        start = time.perf_counter()
        rel = self._rel_step(problem, solution)
        parts = tuple(np.asarray(t, dtype=np.float64) for t in as_tuple(solution.theta))
        dirs = tuple(np.broadcast_to(np.asarray(d, dtype=np.float64), p.shape)
                     for d, p in zip(as_tuple(dtheta), parts))
        if not any(np.any(d != 0) for d in dirs):
            return np.zeros_like(solution.x), {"iterations": 0, "residual": None,
                                               "time": time.perf_counter() - start}
        ratios = [np.abs(p[d != 0]) / np.abs(d[d != 0]) for p, d in zip(parts, dirs)]
        ratios = np.concatenate([r.ravel() for r in ratios] + [np.zeros(0)])
        ratios = ratios[ratios > 0]
        h = rel * (ratios.min() if ratios.size else 1.0)
        dx, n_solves, _ = refined_derivative(
            self._solver(problem, solution), solution.theta, dirs, h, self.order,
            problem.in_domain, refine=self.rel_step is None)
        info = {"iterations": n_solves, "residual": None, "rel_step": rel,
                "time": time.perf_counter() - start}
        return dx.reshape(solution.x.shape), info
