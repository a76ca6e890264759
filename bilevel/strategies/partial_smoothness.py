r"""Implicit differentiation on the active manifold of a partly smooth energy.

For ``E(x, theta) = F(x, theta) + J(x)`` with ``J`` partly smooth at ``x*`` relative to a
manifold ``M`` (l1: the support; TV: the jump set), non-degenerate and with a positive
definite restricted Hessian, ``x*`` is locally the smooth minimizer on ``M``
(Vaiter et al. 2016), so with ``B`` a basis of the tangent space and ``H_M`` the Hessian of
``E`` restricted to ``M``:

.. math:: \frac{\partial x^*}{\partial\theta}
          = -B\,H_M^{-1}\,\partial_\theta \nabla_M E, \qquad
          \Big(\frac{\partial x^*}{\partial\theta}\Big)^\top v
          = -(\partial_\theta \nabla_M E)^\top H_M^{-1} B^\top v.

The cost is one factorization of the ``k x k`` restricted Hessian, ``k = dim M``.

References
----------
Ochs, "Towards differentiation of solution mappings of non-smooth optimization problems",
lecture notes, 2021.
Vaiter, Deledalle, Peyre, Fadili, Dossal, "The degrees of freedom of partly smooth
regularizers", Ann. Inst. Stat. Math. 2017.
Lewis, "Active sets, nonsmoothness, and sensitivity", SIAM J. Optim. 2002.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np

from bilevel._registry import check_applicable, register_strategy
from bilevel._types import DegeneracyWarning, LazyGradient, as_tuple, like_structure
from bilevel.strategies.base import Strategy, kernel_vjp_batch, warn_if_unconverged

__all__ = ["PartialSmoothness"]


@register_strategy
@dataclass(frozen=True)
class PartialSmoothness(Strategy):
    """Identify the active manifold at ``x*`` and differentiate the solution map on it.

    Parameters
    ----------
    margin_tol : float
        Non-degeneracy threshold: a :class:`~bilevel.DegeneracyWarning` is raised when the
        problem's relative margin (for l1: the smallest of ``1 - |X_j^T r| / (n lam_j)`` off
        the support ``S`` and ``|x_j| / max|x|`` on it) is at or below it. Below it, a
        relative change of theta of about the margin may change the manifold, and the
        derivative may not exist.
    pinv : bool
        On a singular restricted Hessian (collinear active features: ``x*`` not unique),
        apply its pseudo-inverse instead of raising :class:`~bilevel.SingularSystemError`.
        Exact for upper losses that see ``x*`` only through ``X' x*`` where ``X'`` has the
        same column dependencies (validation predictions): ``v`` then lies in the range.

    Notes
    -----
    Exact when the manifold is identified exactly (our coordinate-descent solvers polish
    ``x*`` on its support). ``info`` has ``dim`` (manifold dimension), ``margin``,
    ``kind``, ``iterations`` (1, one factorization), ``residual`` (None: a direct solve)
    and ``time``.
    """

    name = "partial_smoothness"
    requires = frozenset({"manifold"})
    reads_coordinates = True

    margin_tol: float = 1e-6
    pinv: bool = False

    def __post_init__(self):
        if not (self.margin_tol >= 0):
            raise ValueError(f"margin_tol must be >= 0, got {self.margin_tol}")

    def _manifold(self, problem, solution):
        check_applicable(self, problem)
        warn_if_unconverged(self, solution)
        manifold = problem.capabilities.manifold(solution)
        if manifold.margin <= self.margin_tol:
            where = manifold.info.get("margin_index")
            warnings.warn(
                f"{self.name}: the solution is degenerate, non-degeneracy margin "
                f"{manifold.margin:.2e} <= margin_tol={self.margin_tol:.0e}"
                + (f" (at coordinate {where})" if where is not None and where >= 0 else "")
                + f": the {manifold.kind} is about to change (a feature entering or "
                "leaving it), so x*(theta) may not be differentiable here and the result is "
                "one one-sided derivative. Perturb theta, or compare with finite_difference.",
                DegeneracyWarning, stacklevel=3)
        return manifold

    def _info(self, manifold, start):
        return {"dim": manifold.dim, "margin": manifold.margin, "kind": manifold.kind,
                "iterations": 1, "residual": None, "time": time.perf_counter() - start}

    def vjp(self, problem, solution, v, warm_start=None):
        """``-(d_theta grad_M E)^T H_M^{-1} B^T v``; see the module docstring."""
        start = time.perf_counter()
        manifold = self._manifold(problem, solution)
        if isinstance(v, LazyGradient) and manifold.coordinates is not None:
            b = v.at(manifold.coordinates)        # B^T v from the coordinates on M only
        else:
            b = manifold.restrict(v)
        u = manifold.solve(b, pinv=self.pinv)
        grad = tuple(-np.asarray(g, dtype=np.float64) for g in manifold.theta_vjp(u))
        return like_structure(grad, solution.theta), self._info(manifold, start)

    def jvp(self, problem, solution, dtheta):
        """Forward mode: ``dx* = -B H_M^{-1} (d_theta grad_M E) dtheta``, shaped like ``x*``."""
        start = time.perf_counter()
        manifold = self._manifold(problem, solution)
        parts = tuple(np.asarray(d, dtype=np.float64) for d in as_tuple(dtheta))
        dz = -manifold.solve(manifold.theta_jvp(parts), pinv=self.pinv)
        return manifold.lift(dz).reshape(solution.x.shape), self._info(manifold, start)

    def batch_kernel(self, problem):
        """Return the problem's batched manifold VJP (``batch.manifold_vjp``), if any."""
        batch = problem.capabilities.batch
        return None if batch is None else batch.manifold_vjp

    def vjp_batch(self, problem, batch, V):
        """Every row on its manifold by the batched kernel (with ``pinv``), or row by row."""
        return kernel_vjp_batch(self, problem, batch, V, self.margin_tol, self.pinv)
