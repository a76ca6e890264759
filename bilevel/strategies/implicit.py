r"""Implicit differentiation of the optimality condition, and of the KKT system.

Unconstrained: with ``F(x*(theta), theta) = 0`` the implicit function theorem gives
``dx*/dtheta = -(d_x F)^{-1} d_theta F``, hence

.. math:: (dx^*/d\theta)^\top v = -(d_\theta F)^\top u, \qquad (d_x F)^\top u = v.

Constrained (problems with the ``constraints`` capability, whose KKT system the problem
builds, :class:`~bilevel.KKTSystem`):
``x* = argmin f(x, theta)`` s.t. ``h(x, theta) = 0`` (p equalities) and
``g(x, theta) <= 0`` (q inequalities). With ``c = (h, g_A)`` the equalities and the active
inequalities (``A = {i : g_i(x*) = 0}``, to ``active_tol``), multipliers
``mu = (nu, lam_A)`` with ``grad_x f + (d_x c)^T mu = 0`` and ``lam_A >= 0``, the KKT map
``K(x, mu, theta) = (grad_x f + (d_x c)^T mu, c)`` vanishes at ``(x*, mu*)``; its Jacobian
in ``(x, mu)`` is the symmetric indefinite matrix

.. math:: \begin{pmatrix} H & A^\top \\ A & 0 \end{pmatrix}, \qquad
          H = \nabla^2_{xx} \big(f + \mu^\top c\big), \quad A = \partial_x c,

and (Gould, Hartley, Campbell 2021, Propositions 4.5-4.6)

.. math:: (dx^*/d\theta)^\top v = -\big(B^\top u + C^\top w\big), \qquad
          \begin{pmatrix} H & A^\top \\ A & 0 \end{pmatrix}
          \begin{pmatrix} u \\ w \end{pmatrix} = \begin{pmatrix} v \\ 0 \end{pmatrix},

with ``B = d_theta grad_x (f + mu^T c)`` and ``C = d_theta c``. The derivative is one-sided
when an active inequality has a zero multiplier (weakly active, strict complementarity
fails): it is then the derivative of the branch on which the constraint stays active.

References
----------
Gould, Hartley, Campbell, "Deep Declarative Networks", TPAMI 2021.
Blondel et al., "Efficient and Modular Implicit Differentiation", NeurIPS 2022.
Amos, Kolter, "OptNet: Differentiable Optimization as a Layer in Neural Networks", ICML 2017.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from bilevel._autograd import pullback
from bilevel._registry import check_applicable, register_strategy
from bilevel._types import SingularSystemError, like_structure
from bilevel.linalg import METHODS, solve
from bilevel.strategies.base import Strategy, theta_tensors, warn_if_unconverged

__all__ = ["Implicit"]

# Below this many unknowns the dense system is formed and solved directly.
_DIRECT_MAX = 500
# Singular-value cut-off of the pseudo-inverse, relative to the largest.
_PINV_RCOND = 1e-12


@register_strategy
@dataclass(frozen=True)
class Implicit(Strategy):
    """Implicit function theorem on the optimality residual, or on the KKT system.

    Parameters
    ----------
    linear_solver : {"auto", "cg", "minres", "gmres", "direct"}
        Solver for ``(d_x F)^T u = v``. "auto": direct up to 500 unknowns, else CG
        (``d_x F`` is the Hessian, symmetric positive definite at a strict minimum); on a
        KKT system (symmetric indefinite) "auto" is direct up to 500 unknowns, else MINRES,
        and CG is replaced by MINRES.
    tol : float
        Relative residual tolerance of Krylov solvers.
    maxiter : int, optional
        Krylov iteration cap (default ``10 n``).
    damping : float
        ``d_x F + damping I``: regularizes a singular Hessian, at a bias of order damping.
        On a KKT system: ``H + damping I`` and ``-damping I`` in the multiplier block (a
        quasi-definite regularization, also for rank-deficient constraint Jacobians).
    hvp : {"auto", "autograd"}
        "auto" uses the problem's own dense Hessian and ``d_theta F`` when its
        :class:`~bilevel.Optimality` offers them, else torch autograd; "autograd" always
        differentiates the residual with torch.
    pinv : bool
        Solve the (dense) system by its pseudo-inverse instead of raising
        :class:`~bilevel.SingularSystemError` on a singular one: the minimum-norm adjoint
        (Gould et al. 2021, section 4.5). For redundant active constraints (a
        rank-deficient ``A``) it gives the exact gradient.
    active_tol : float
        An inequality counts as active when ``g_i(x*) >= -active_tol max(1, ||x*||_inf)``.
    multiplier_tol : float
        An active inequality is weakly active (``info["one_sided"]``) when its multiplier
        is ``<= multiplier_tol max(1, ||grad_x f||_inf)``.

    Notes
    -----
    Cost: one linear solve in ``x`` (``x`` and the active multipliers with constraints),
    plus one VJP in theta. Memory does not grow with the inner solver's iterations.
    ``info`` has ``iterations``, ``residual``, ``linear_solver``, ``hvp``, ``time`` and
    ``warm_start`` (the adjoint, which the next call may start from). With constraints
    also ``active`` (indices of the active inequalities), ``nu``, ``lam`` (all q, zero off
    the active set), ``multipliers`` ("solver", "recovered" by non-negative least squares
    from ``grad f + A^T mu = 0``, or "not needed" for affine constraints),
    ``stationarity``, ``one_sided`` and ``weakly_active`` (indices with a zero
    multiplier).

    Affine constraints (a :class:`~bilevel.problems.KKT` with ``affine=True``: ``h`` and
    ``g`` affine in ``x``, ``A`` independent of theta) take the linear shortcut of Gould et
    al.'s Corollary 4.9: ``H = grad^2 f`` and ``B = d_theta grad_x f`` need no multipliers.
    """

    name = "implicit"
    requires = (frozenset({"optimality"}), frozenset({"constraints"}))
    iterative = True

    linear_solver: str = "auto"
    tol: float = 1e-10
    maxiter: int | None = None
    damping: float = 0.0
    hvp: str = "auto"
    pinv: bool = False
    active_tol: float = 1e-9
    multiplier_tol: float = 1e-10

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
        for knob in ("active_tol", "multiplier_tol"):
            value = getattr(self, knob)
            if not (value >= 0 and np.isfinite(value)):
                raise ValueError(f"{knob} must be finite and >= 0, got {value}")

    def with_budget(self, budget):
        """``budget`` Krylov iterations (CG unless a Krylov solver was chosen)."""
        solver = "cg" if self.linear_solver in ("auto", "direct") else self.linear_solver
        return replace(self, linear_solver=solver, maxiter=int(budget), pinv=False)

    def vjp(self, problem, solution, v, warm_start=None):
        """``-(d_theta F)^T u`` with ``(d_x F)^T u = v``; see the class docstring."""
        check_applicable(self, problem)
        warn_if_unconverged(self, solution)
        caps = problem.capabilities
        if caps.constraints is not None:
            return self._vjp_kkt(caps.constraints, solution, v, warm_start)
        optimality = caps.optimality
        start = time.perf_counter()
        x = solution.x
        n = x.size
        method = self.linear_solver
        if method == "auto" or self.pinv:
            method = "direct" if (n <= _DIRECT_MAX or self.pinv) else "cg"
        own = self.hvp == "auto" and optimality.fast_path
        b = np.asarray(v, dtype=np.float64).ravel()
        x0 = None if warm_start is None else np.asarray(warm_start, np.float64).ravel()
        if own:
            H = optimality.hessian(solution)
            u, linfo = self._solve(H.__matmul__, b, method, x0, matrix=H)
            grad = like_structure(optimality.theta_vjp(solution, -u.reshape(x.shape)),
                                  solution.theta)
        else:
            parts, theta = theta_tensors(solution.theta, requires_grad=True)
            x_t = torch.tensor(x, requires_grad=True)
            with torch.enable_grad():
                F = optimality.residual(x_t, theta)

            def matvec(w):  # (d_x F)^T w
                return pullback(F, (x_t,), w, retain_graph=True)[0].ravel()

            u, linfo = self._solve(matvec, b, method, x0)
            grad = like_structure(pullback(F, parts, -u), solution.theta)
        info = {"iterations": linfo["iterations"], "residual": linfo["residual"],
                "linear_solver": method, "hvp": "problem" if own else "autograd",
                "warm_start": u.reshape(x.shape), "time": time.perf_counter() - start}
        return grad, info

    # linear algebra ---------------------------------------------------------------------
    def _solve(self, matvec, b, method, x0, matrix=None, n_x=None):
        """Solve the (damped) system; ``n_x`` splits a KKT system's x and multiplier blocks."""
        n = b.shape[0]
        kkt = n_x is not None
        if kkt and self.damping:
            sign = np.where(np.arange(n) < n_x, 1.0, -1.0) * self.damping

            def damped(w):
                return matvec(w) + sign * w

            if matrix is not None:
                matrix = matrix + np.diag(sign)
        else:
            damped = matvec
        damping = 0.0 if kkt else self.damping
        if self.pinv:
            start = time.perf_counter()
            A = np.array(matrix if matrix is not None else
                         np.column_stack([damped(e) for e in np.eye(n)]), dtype=np.float64)
            A[np.diag_indices(n)] += damping
            u = np.linalg.lstsq(A, b, rcond=_PINV_RCOND)[0]
            bnorm = np.linalg.norm(b)
            residual = np.linalg.norm(A @ u - b) / bnorm if bnorm else 0.0
            return u, {"iterations": 1, "residual": residual, "method": "pinv",
                       "time": time.perf_counter() - start}
        try:
            return solve(damped, b, method=method, tol=self.tol, maxiter=self.maxiter, x0=x0,
                         damping=damping, matrix=matrix)
        except SingularSystemError as exc:
            what = ("the KKT system (singular Hessian on the constraints' tangent space, or "
                    "linearly dependent active constraints: LICQ fails)" if kkt
                    else "the Hessian system")
            raise SingularSystemError(
                f"implicit: {what} is singular: {exc}. Remedies: Implicit(pinv=True) for the "
                "minimum-norm gradient, or Implicit(damping=1e-8) to regularize") from exc

    # constrained problems ---------------------------------------------------------------
    def _vjp_kkt(self, kkt, solution, v, warm_start):
        """Solve the adjoint of the problem's KKT system; return its theta part."""
        start = time.perf_counter()
        system = kkt.system(solution, active_tol=self.active_tol,
                            multiplier_tol=self.multiplier_tol)
        n, size = system.n_x, system.size
        method = self.linear_solver
        if method == "auto":
            method = "direct" if size <= _DIRECT_MAX else "minres"
        elif method == "cg":        # K is indefinite: MINRES, with the same budget
            method = "minres"
        if self.pinv:
            method = "direct"
        b = np.concatenate([np.asarray(v, dtype=np.float64).ravel(), np.zeros(size - n)])
        x0 = None
        if warm_start is not None and np.size(warm_start) == size:
            x0 = np.asarray(warm_start, np.float64).ravel()
        matrix = (np.column_stack([system.matvec(e) for e in np.eye(size)])
                  if method == "direct" else None)
        uw, linfo = self._solve(system.matvec, b, method, x0, matrix=matrix, n_x=n)
        grad = like_structure(system.theta_vjp(-uw), solution.theta)
        info = {"iterations": linfo["iterations"], "residual": linfo["residual"],
                "linear_solver": "pinv" if self.pinv else method, "hvp": "autograd",
                "warm_start": uw, "time": time.perf_counter() - start, **system.info,
                "kkt_size": size}
        return grad, info
