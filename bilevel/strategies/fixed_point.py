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
import warnings
from dataclasses import dataclass, replace

import numpy as np
import torch

from bilevel._autograd import pullback
from bilevel._registry import check_applicable, register_strategy
from bilevel._types import ConvergenceWarning, like_structure
from bilevel.linalg import solve
from bilevel.strategies.base import Strategy, theta_tensors, warn_if_unconverged

__all__ = ["FixedPoint"]

_DEFAULT_TERMS = 100       # n_terms' default: the only value method="gmres" accepts


@register_strategy
@dataclass(frozen=True)
class FixedPoint(Strategy):
    """Differentiate the fixed point of the problem's :class:`~bilevel.StepMap` at ``x*``.

    Parameters
    ----------
    method : {"neumann", "gmres"}
        "neumann": ``n_terms`` terms of the Neumann series (a VJP of ``T`` each; error
        ``~ rho^n_terms`` with ``rho`` the contraction rate of ``T``). "gmres": Krylov solve
        of ``(I - d_x T)^T u = v`` to ``tol``.
    n_terms : int
        Series terms (``method="neumann"``; with "gmres", which does not use it, a value
        other than the default raises).
    tol : float
        Relative residual tolerance of the adjoint system ``(I - d_x T)^T u = v``: GMRES's
        stopping rule; a Neumann series that ends above it warns
        (:class:`~bilevel.ConvergenceWarning`).
    maxiter : int, optional
        GMRES iteration cap.

    Notes
    -----
    ``info`` has ``iterations`` (VJPs of ``T``), ``residual`` (the adjoint residual
    ``||v - (I - d_x T)^T u|| / ||v||``: for the series, its next term, one more VJP),
    ``time`` and ``warm_start`` (the adjoint ``u``; GMRES starts from it when passed back).
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
        if self.method == "gmres" and self.n_terms != _DEFAULT_TERMS:
            raise ValueError(f"n_terms={self.n_terms} sets the Neumann series' length, which "
                             "method='gmres' does not use: pass method='neumann' with it (or "
                             "maxiter to cap GMRES)")
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
        step_map = problem.capabilities.step
        z_star = step_map.at_solution(solution)
        shape = z_star.shape
        parts, theta = theta_tensors(solution.theta, requires_grad=True)
        x_t = torch.tensor(z_star, requires_grad=True)
        with torch.enable_grad():
            T = step_map.step(x_t, theta)
            out = step_map.read(x_t, theta)

        def jt(w):  # (d_x T)^T w
            return pullback(T, (x_t,), w, retain_graph=True)[0].ravel()

        readout = step_map.output is not None   # x read off a larger state z: x = R(z, theta)
        if readout:                          # (dx*/dtheta)^T v = R_theta^T v + T_theta^T u,
            b = pullback(out, (x_t,), v, retain_graph=True)[0].ravel()   # (I - T_z)^T u = R_z^T v
        else:
            b = np.asarray(v, dtype=np.float64).ravel()
        if self.method == "neumann":
            u, term = b.copy(), b
            for _ in range(self.n_terms - 1):
                term = jt(term)
                u += term
            iterations = self.n_terms
            # v - (I - T_z^T) u_n = (T_z^T)^n v: the series' next term.
            residual = float(np.linalg.norm(jt(term)) / max(np.linalg.norm(b), 1e-300))
            if not residual <= 1.0:       # terms that grow: rho(d_x T) >= 1
                warnings.warn(
                    f"fixed_point: the Neumann series diverges (adjoint residual {residual:.1e} "
                    f"after {self.n_terms} terms): the step map is no contraction at x*, "
                    "typically a step size above 2/L; use method='gmres', or lower the "
                    "problem's step_size", ConvergenceWarning, stacklevel=3)
            elif residual > self.tol:
                warnings.warn(
                    f"fixed_point: the Neumann series of {self.n_terms} terms leaves the "
                    f"adjoint residual at {residual:.1e} > tol={self.tol:.0e}: the VJP is off "
                    "by about as much. Raise n_terms, or use method='gmres'",
                    ConvergenceWarning, stacklevel=3)
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
