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
from dataclasses import dataclass, replace

import numpy as np
import torch

from bilevel._autograd import pullback
from bilevel._registry import check_applicable, register_strategy
from bilevel._types import as_tuple, like_structure
from bilevel.strategies.base import Strategy, step_hooks, theta_tensors

__all__ = ["Unroll"]


@register_strategy
@dataclass(frozen=True)
class Unroll(Strategy):
    """Backpropagate through ``n_steps`` replayed steps of the problem's ``step`` map.

    Parameters
    ----------
    n_steps : int
        Steps replayed from ``start``.
    truncate : int, optional
        Differentiate only the last ``truncate`` steps (the earlier ones run without a
        graph); None differentiates all.
    start : {"init", "solution"}
        "init" replays from the problem's default starting point (classic unrolling);
        "solution" from ``x*``, which makes the result a truncated Neumann series.

    Notes
    -----
    Memory grows linearly with the differentiated steps (the autograd graph); ``info``
    reports ``iterations`` and ``residual = ||x_n - x*|| / ||x*||``. A problem whose
    iteration carries more than ``x`` (a primal-dual pair) steps a state ``z`` and reads
    ``x`` off it (:func:`~bilevel.strategies.base.step_hooks`).
    """

    name = "unroll"
    requires = frozenset({"step"})
    iterative = True

    n_steps: int = 200
    truncate: int | None = None
    start: str = "init"

    def __post_init__(self):
        if self.n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {self.n_steps}")
        if self.truncate is not None and not 1 <= self.truncate:
            raise ValueError(f"truncate must be >= 1 or None, got {self.truncate}")
        if self.start not in ("init", "solution"):
            raise ValueError(f"start must be 'init' or 'solution', got {self.start!r}")

    def with_budget(self, budget):
        """``budget`` replayed steps."""
        return replace(self, n_steps=int(budget))

    def vjp(self, problem, solution, v, warm_start=None):
        """VJP of ``x_n(theta)`` after ``n_steps`` steps; see the class docstring."""
        check_applicable(self, problem)
        begin = time.perf_counter()
        parts, theta = theta_tensors(solution.theta, requires_grad=True)
        init_state, solution_state, output = step_hooks(problem)
        x0 = solution_state(solution) if self.start == "solution" else \
            init_state(as_tuple(solution.theta))
        x = torch.tensor(x0, dtype=torch.float64)
        n_graph = self.n_steps if self.truncate is None else min(self.truncate, self.n_steps)
        with torch.no_grad():
            for _ in range(self.n_steps - n_graph):
                x = problem.step(x, theta)
        with torch.enable_grad():
            for _ in range(n_graph):
                x = problem.step(x, theta)
        with torch.enable_grad():
            x = output(x, theta)
        grads = pullback(x, parts, v) if x.requires_grad else \
            tuple(np.zeros(np.shape(p)) for p in parts)
        xn = x.detach().numpy()
        scale = max(np.linalg.norm(solution.x), 1e-300)
        info = {"iterations": self.n_steps, "residual": float(np.linalg.norm(xn - solution.x)
                                                              / scale),
                "time": time.perf_counter() - begin}
        return like_structure(grads, solution.theta), info
