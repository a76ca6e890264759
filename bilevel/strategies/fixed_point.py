r"""Fixed-point differentiation at ``x* = T(x*, theta)``.

.. math:: (dx^*/d\theta)^\top v = (d_\theta T)^\top u, \qquad (I - d_x T)^\top u = v,

with ``u`` from the truncated Neumann series ``sum_{k<n} (d_x T^T)^k v`` (exact as
``n -> inf`` when ``T`` contracts) or from a GMRES solve.

References
----------
Lorraine, Vicol, Duvenaud, "Optimizing Millions of Hyperparameters by Implicit
Differentiation", AISTATS 2020 (Neumann series).
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
from bilevel.linalg import solve
from bilevel.strategies.base import Strategy, step_hooks, theta_tensors, warn_if_unconverged

__all__ = ["FixedPoint"]


@register_strategy
@dataclass(frozen=True)
class FixedPoint(Strategy):
    """Differentiate the fixed point of the problem's ``step`` map at ``x*``.

    Parameters
    ----------
    method : {"neumann", "gmres"}
        "neumann": ``n_terms`` terms of the Neumann series (a VJP of ``T`` each; error
        ``~ rho^n_terms`` with ``rho`` the contraction rate of ``T``). "gmres": Krylov solve
        of ``(I - d_x T)^T u = v`` to ``tol``.
    n_terms : int
        Series terms (``method="neumann"``).
    tol : float
        Relative residual tolerance (``method="gmres"``).
    maxiter : int, optional
        GMRES iteration cap.

    Notes
    -----
    ``info`` has ``iterations`` (VJPs of ``T``), ``residual`` (the norm of the last series
    term relative to ``||v||``, or GMRES's relative residual), ``time`` and ``warm_start``
    (the adjoint ``u``; GMRES starts from it when passed back).
    """

    name = "fixed_point"
    requires = frozenset({"step"})
    iterative = True

    method: str = "gmres"
    n_terms: int = 100
    tol: float = 1e-10
    maxiter: int | None = None

    def __post_init__(self):
        if self.method not in ("neumann", "gmres"):
            raise ValueError(f"method must be 'neumann' or 'gmres', got {self.method!r}")
        if self.n_terms < 1:
            raise ValueError(f"n_terms must be >= 1, got {self.n_terms}")
        if not (self.tol > 0):
            raise ValueError(f"tol must be > 0, got {self.tol}")
        if self.maxiter is not None and self.maxiter < 1:
            raise ValueError(f"maxiter must be >= 1, got {self.maxiter}")

    def with_budget(self, budget):
        """Truncate the Neumann series to ``budget`` terms."""
        return replace(self, method="neumann", n_terms=int(budget))

    def vjp(self, problem, solution, v, warm_start=None):
        """``(d_theta T)^T u`` with ``(I - d_x T)^T u = v``; see the class docstring."""
        check_applicable(self, problem)
        warn_if_unconverged(self, solution)
        start = time.perf_counter()
        _, solution_state, output = step_hooks(problem)
        z_star = solution_state(solution)
        shape = z_star.shape
        parts, theta = theta_tensors(solution.theta, requires_grad=True)
        x_t = torch.tensor(z_star, requires_grad=True)
        with torch.enable_grad():
            T = problem.step(x_t, theta)
            out = output(x_t, theta)

        def jt(w):  # (d_x T)^T w
            return pullback(T, (x_t,), w, retain_graph=True)[0].ravel()

        readout = out is not x_t            # x read off a larger state z: x = R(z, theta)
        if readout:                          # (dx*/dtheta)^T v = R_theta^T v + T_theta^T u,
            b = pullback(out, (x_t,), v, retain_graph=True)[0].ravel()   # (I - T_z)^T u = R_z^T v
        else:
            b = np.asarray(v, dtype=np.float64).ravel()
        if self.method == "neumann":
            u, term = b.copy(), b
            for _ in range(self.n_terms - 1):
                term = jt(term)
                u += term
            iterations = self.n_terms - 1
            residual = float(np.linalg.norm(term) / max(np.linalg.norm(b), 1e-300))
        else:
            x0 = None if warm_start is None else np.asarray(warm_start, np.float64).ravel()
            u, linfo = solve(lambda w: w - jt(w), b, method="gmres", tol=self.tol,
                             maxiter=self.maxiter, x0=x0)
            iterations, residual = linfo["iterations"], linfo["residual"]
        info = {"iterations": iterations, "residual": residual, "method": self.method,
                "warm_start": u.reshape(shape), "time": time.perf_counter() - start}
        grads = pullback(T, parts, u, retain_graph=readout)
        if readout:
            grads = tuple(g + h for g, h in zip(grads, pullback(out, parts, v)))
        return like_structure(grads, solution.theta), info
