"""Unrolling: reverse-mode autodiff through replayed steps of the solver's fixed-point map.

With ``x_{k+1} = T(x_k, theta)`` from ``x_0``, the strategy returns the exact VJP of
``x_n(theta)``, which tends to ``(dx*/dtheta)^T v`` at the linear rate of ``T`` when ``T``
is a contraction. Truncated backpropagation differentiates only the last ``k`` steps.

References
----------
Domke, "Generic Methods for Optimization-Based Modeling", AISTATS 2012.
Shaban et al., "Truncated Back-propagation for Bilevel Optimization", AISTATS 2019.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, replace

import numpy as np
import torch

from bilevel._autograd import pullback
from bilevel._registry import check_applicable, register_strategy
from bilevel._types import ConvergenceWarning, as_tuple, like_structure
from bilevel.strategies.base import Strategy, theta_tensors

__all__ = ["Unroll"]


@register_strategy
@dataclass(frozen=True)
class Unroll(Strategy):
    """Backpropagate through replayed steps of the problem's step map (:class:`~bilevel.StepMap`).

    The VJP of the ``n``-th iterate, ``(dx_n/dtheta)^T v``, misses the tail of a Neumann
    series whose size the backward pass measures: the adjoint that reaches the start,
    ``lambda_0 = (d x_n / d z_0)^T v``. The replay is converged when both the iterate and
    this adjoint are, ``||x_n - x*|| <= tol max(||x*||, ||x_0||)`` and
    ``||lambda_0|| <= tol ||v||`` (an iterate can reach ``x*`` in a few steps, a projection
    in one, long before its derivative does).

    Parameters
    ----------
    n_steps : int, optional
        Steps replayed from ``start``. None (default): replay until converged in the sense
        above, doubling the steps, at most ``max_steps`` (then a
        :class:`~bilevel.ConvergenceWarning` names the cap). A fixed ``n_steps`` that ends
        unconverged warns with the distance and the adjoint residual: the VJP is that of
        ``x_n``, not of ``x*``.
    tol : float
        Relative tolerance of the iterate's distance to ``x*`` and of the adjoint residual.
    max_steps : int
        Cap of the adaptive replay (``n_steps=None``).
    truncate : int, optional
        Differentiate only the last ``truncate`` steps (the earlier ones run without a
        graph; the adjoint residual is then the truncation's bias, reported, by design not
        warned about); None differentiates all.
    start : {"init", "solution"}
        "init" replays from the problem's starting point (classic unrolling); "solution"
        from ``x*``, which makes the result a truncated Neumann series (it needs
        ``n_steps``, its number of terms).

    Notes
    -----
    Memory grows linearly with the differentiated steps (the autograd graph); ``info``
    reports ``iterations``, ``residual`` (the adjoint residual ``||lambda_0|| / ||v||``)
    and ``distance`` (``||x_n - x*|| / max(||x*||, ||x_0||)``). A problem whose iteration
    carries more than ``x`` (a primal-dual pair) steps a state ``z`` and reads ``x`` off it.

    References
    ----------
    Domke, "Generic Methods for Optimization-Based Modeling", AISTATS 2012.
    Shaban et al., "Truncated Back-propagation for Bilevel Optimization", AISTATS 2019.
    """

    name = "unroll"
    requires = frozenset({"step"})
    iterative = True

    n_steps: int | None = None
    tol: float = 1e-10
    max_steps: int = 10_000
    truncate: int | None = None
    start: str = "init"

    def __post_init__(self):
        if self.n_steps is not None and self.n_steps < 1:
            raise ValueError(f"n_steps must be >= 1 or None, got {self.n_steps}")
        if not (self.tol > 0):
            raise ValueError(f"tol must be > 0, got {self.tol}")
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.truncate is not None and not 1 <= self.truncate:
            raise ValueError(f"truncate must be >= 1 or None, got {self.truncate}")
        if self.start not in ("init", "solution"):
            raise ValueError(f"start must be 'init' or 'solution', got {self.start!r}")
        if self.start == "solution" and self.n_steps is None:
            raise ValueError("start='solution' replays from x* itself: give n_steps (the "
                             "number of Neumann terms), or use FixedPoint")

    def with_budget(self, budget):
        """``budget`` replayed steps."""
        return replace(self, n_steps=int(budget))

    def vjp(self, problem, solution, v, warm_start=None):
        """VJP of the replayed iterate ``x_n(theta)``; see the class docstring."""
        check_applicable(self, problem)
        begin = time.perf_counter()
        step_map = problem.capabilities.step
        parts, theta = theta_tensors(solution.theta, requires_grad=True)
        z = torch.tensor(step_map.at_solution(solution) if self.start == "solution" else
                         step_map.start(as_tuple(solution.theta)), dtype=torch.float64)
        x_star = torch.from_numpy(np.asarray(solution.x, dtype=np.float64))
        with torch.no_grad():
            x_first = step_map.read(z, theta)
        scale = max(float(torch.linalg.vector_norm(x_star)),
                    float(torch.linalg.vector_norm(x_first)), 1e-300)
        v_norm = float(np.linalg.norm(v))

        def distance(state):
            with torch.no_grad():
                return float(torch.linalg.vector_norm(step_map.read(state, theta) - x_star)) \
                    / scale

        steps = 0
        if self.truncate is not None:       # steps without a graph, then the last ones
            total = self.n_steps if self.n_steps is not None else self._steps_to_reach(
                step_map, z, theta, distance)
            with torch.no_grad():
                for _ in range(max(total - self.truncate, 0)):
                    z = step_map.step(z, theta)
                    steps += 1
            graph_steps = total - steps
        else:
            graph_steps = self.n_steps
        z0 = z.detach().requires_grad_()
        z = z0
        adaptive = graph_steps is None
        target = None if adaptive else steps + graph_steps   # None: until x_n reaches x*
        with torch.enable_grad():
            while True:
                while steps < (self.max_steps if target is None else target):
                    z = step_map.step(z, theta)
                    steps += 1
                    d = distance(z)
                    if not np.isfinite(d):
                        _diverged(steps)
                    if target is None and d <= self.tol:
                        break
                x = step_map.read(z, theta)
                *grads, lam0 = pullback(x, (*parts, z0), v, retain_graph=adaptive)
                residual = float(np.linalg.norm(lam0)) / v_norm if v_norm else 0.0
                if not (np.isfinite(residual) and all(np.all(np.isfinite(g)) for g in grads)):
                    _diverged(steps)
                converged = distance(z) <= self.tol and (residual <= self.tol
                                                         or self.truncate is not None)
                if not adaptive or converged or steps >= self.max_steps:
                    break
                target = min(2 * steps, self.max_steps)       # the derivative lags: double
        dist = distance(z)
        if not converged:
            what = (f"after the cap of max_steps={self.max_steps} steps" if adaptive
                    else f"after n_steps={steps} steps")
            knob = "max_steps" if adaptive else "n_steps (or leave it None)"
            warnings.warn(
                f"unroll: the replay is not converged {what}: the iterate is {dist:.1e} "
                f"(relative) from x* and the adjoint residual is {residual:.1e} > "
                f"tol={self.tol:.0e}; the VJP is that of x_n, not of x*. Raise {knob}, or "
                "use fixed_point or implicit", ConvergenceWarning, stacklevel=3)
        info = {"iterations": steps, "residual": residual, "distance": dist,
                "time": time.perf_counter() - begin}
        return like_structure(tuple(grads), solution.theta), info

    def _steps_to_reach(self, step_map, z, theta, distance):
        """Count the steps until the iterate is within ``tol`` of ``x*`` (no graph; capped)."""
        with torch.no_grad():
            for k in range(1, self.max_steps + 1):
                z = step_map.step(z, theta)
                d = distance(z)
                if not np.isfinite(d):
                    _diverged(k)
                if d <= self.tol:
                    return k
        return self.max_steps


def _diverged(steps):
    """Raise: the replay left the finite range (the step map is no contraction)."""
    raise ValueError(f"unroll: the replayed iterates or their derivatives are not finite after "
                     f"{steps} steps: the problem's step map diverges, typically a step size "
                     "above 2/L (L the Lipschitz constant of grad_x E); lower the problem's "
                     "step_size (e.g. Smooth(step_size=...)), or use implicit")
