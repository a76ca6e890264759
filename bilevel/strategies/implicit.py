r"""Implicit differentiation of the optimality condition.

With ``F(x*(theta), theta) = 0`` the implicit function theorem gives
``dx*/dtheta = -(d_x F)^{-1} d_theta F``, hence

.. math:: (dx^*/d\theta)^\top v = -(d_\theta F)^\top u, \qquad (d_x F)^\top u = v.

References
----------
Gould, Hartley, Campbell, "Deep Declarative Networks", TPAMI 2021.
Blondel et al., "Efficient and Modular Implicit Differentiation", NeurIPS 2022.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from bilevel._autograd import pullback
from bilevel._registry import check_applicable, register_strategy
from bilevel._types import like_structure
from bilevel.linalg import METHODS, solve
from bilevel.strategies.base import Strategy, theta_tensors, warn_if_unconverged

__all__ = ["Implicit"]

# Below this many unknowns the dense system is formed and solved directly.
_DIRECT_MAX = 500


@register_strategy
@dataclass(frozen=True)
class Implicit(Strategy):
    """Implicit function theorem on the optimality residual.

    Parameters
    ----------
    linear_solver : {"auto", "cg", "minres", "gmres", "direct"}
        Solver for ``(d_x F)^T u = v``. "auto": direct up to 500 unknowns, else CG
        (``d_x F`` is the Hessian, symmetric positive definite at a strict minimum).
    tol : float
        Relative residual tolerance of Krylov solvers.
    maxiter : int, optional
        Krylov iteration cap (default ``10 n``).
    damping : float
        ``d_x F + damping I``: regularizes a singular Hessian, at a bias of order damping.
    hvp : {"auto", "autograd"}
        "auto" uses the problem's own dense Hessian and ``d_theta F`` when it offers them,
        else torch autograd; "autograd" always differentiates ``optimality`` with torch.

    Notes
    -----
    Cost: one linear solve in ``x``, plus one VJP of ``F`` in theta. Memory does not grow
    with the inner solver's iterations. ``info`` has ``iterations``, ``residual``,
    ``linear_solver``, ``hvp``, ``time`` and ``warm_start`` (the adjoint ``u``, which the
    next call may start from).
    """

    name = "implicit"
    requires = frozenset({"optimality"})
    iterative = True

    linear_solver: str = "auto"
    tol: float = 1e-10
    maxiter: int | None = None
    damping: float = 0.0
    hvp: str = "auto"

    def __post_init__(self):
        if self.linear_solver not in ("auto", *METHODS):
            raise ValueError(f"linear_solver must be 'auto' or one of {METHODS}, "
                             f"got {self.linear_solver!r}")
        if self.hvp not in ("auto", "autograd"):
            raise ValueError(f"hvp must be 'auto' or 'autograd', got {self.hvp!r}")
        if not (self.tol > 0):
            raise ValueError(f"tol must be > 0, got {self.tol}")
        if self.maxiter is not None and self.maxiter < 1:
            raise ValueError(f"maxiter must be >= 1, got {self.maxiter}")
        if not (self.damping >= 0 and np.isfinite(self.damping)):
            raise ValueError(f"damping must be finite and >= 0, got {self.damping}")

    def with_budget(self, budget):
        """``budget`` Krylov iterations (CG unless a Krylov solver was chosen)."""
        solver = "cg" if self.linear_solver in ("auto", "direct") else self.linear_solver
        return replace(self, linear_solver=solver, maxiter=int(budget))

    def vjp(self, problem, solution, v, warm_start=None):
        """``-(d_theta F)^T u`` with ``(d_x F)^T u = v``; see the class docstring."""
        check_applicable(self, problem)
        warn_if_unconverged(self, solution)
        start = time.perf_counter()
        x = solution.x
        n = x.size
        method = self.linear_solver
        if method == "auto":
            method = "direct" if n <= _DIRECT_MAX else "cg"
        own = (self.hvp == "auto" and hasattr(problem, "hessian")
               and hasattr(problem, "optimality_theta_vjp"))
        b = np.asarray(v, dtype=np.float64).ravel()
        x0 = None if warm_start is None else np.asarray(warm_start, np.float64).ravel()
        if own:
            H = problem.hessian(solution)
            u, linfo = solve(H.__matmul__, b, method=method, tol=self.tol,
                             maxiter=self.maxiter, x0=x0, damping=self.damping, matrix=H)
            grad = like_structure(problem.optimality_theta_vjp(solution, -u.reshape(x.shape)),
                                  solution.theta)
        else:
            parts, theta = theta_tensors(solution.theta, requires_grad=True)
            x_t = torch.tensor(x, requires_grad=True)
            with torch.enable_grad():
                F = problem.optimality(x_t, theta)

            def matvec(w):  # (d_x F)^T w
                return pullback(F, (x_t,), w, retain_graph=True)[0].ravel()

            u, linfo = solve(matvec, b, method=method, tol=self.tol, maxiter=self.maxiter,
                             x0=x0, damping=self.damping)
            grad = like_structure(pullback(F, parts, -u), solution.theta)
        info = {"iterations": linfo["iterations"], "residual": linfo["residual"],
                "linear_solver": method, "hvp": "problem" if own else "autograd",
                "warm_start": u.reshape(x.shape), "time": time.perf_counter() - start}
        return grad, info
