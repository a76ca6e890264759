r"""Ridge regression.

.. math:: x^*(\lambda) = \arg\min_x \frac{1}{2n}\|Xx - y\|^2 + \frac12\sum_j \lambda_j x_j^2

with ``lam`` a scalar or one weight per feature. Closed-form Jacobian:
``dx*/dlam_j = -H^{-1} e_j x*_j`` with ``H = X^T X / n + diag(lam)``.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from bilevel._registry import register_problem
from bilevel._types import Batch, ConvergenceWarning, Optimality, StepMap, as_tuple
from bilevel.problems.base import Capabilities, Problem, check_design, check_nonnegative

# Condition number above which a direct solve warns: beyond it float64 keeps < 6 digits.
_COND_WARN = 1e10

__all__ = ["Ridge"]

# Why Ridge lacks a capability (Capabilities.why_not).
_WHY_NOT = {
    "manifold": "smooth, strongly convex energy: x* has no active manifold but the whole "
                "space, on which partial smoothness is implicit differentiation (implicit)",
    "mirror": "x is unconstrained and E quadratic: there is no constraint set for a Legendre "
              "function, and the Euclidean Bregman step is the gradient step (step)",
    "straight_through": "theta is the penalty lam and x* the coefficients: x* does not "
                        "approximate theta, and is smooth in it (analytic): no identity "
                        "backward",
    "dual": "lam multiplies ||x||^2 / 2: E is not jointly convex in (x, lam), so p has no "
            "convex-dual gradient; the envelope theorem gives it (envelope)",
    "constraints": "x is unconstrained: no KKT system (implicit differentiates grad_x E)",
}


@register_problem
class Ridge(Problem):
    """Ridge regression ``||Xx - y||^2/(2n) + (lam/2)||x||^2``; theta is ``lam``.

    Parameters
    ----------
    X : ndarray, shape (n, p)
        Design matrix.
    y : ndarray, shape (n,)
        Targets.

    Notes
    -----
    ``lam`` is a scalar or an array of shape (p,) (one weight per feature), ``>= 0``;
    ``X^T X / n + diag(lam)`` must be positive definite. Capabilities: ``optimality`` (with
    the dense Hessian fast path), ``step`` (a gradient step), ``energy``, ``analytic_vjp``;
    in :class:`bilevel.torch.Layer` a batch of scalar ``lam`` (``theta_ndim=(0,)``; pass
    ``theta_ndim=(1,)`` to the layer for one weight per feature).

    Examples
    --------
    >>> import numpy as np, bilevel as bl
    >>> X = np.eye(3); y = np.array([1.0, 2.0, 3.0])
    >>> bl.problems.Ridge(X, y).solve(1.0 / 3).x   # (1/3 + 1/3) x = y / 3
    array([0.5, 1. , 1.5])
    """

    name = "ridge"

    def __init__(self, X, y):
        self.X, self.y = check_design(X, y)
        n, p = self.X.shape
        self._Xt = torch.from_numpy(self.X)
        self._yt = torch.from_numpy(self.y)
        self._gram = self.X.T @ self.X / n
        self._rhs = self.X.T @ self.y / n
        eigs = np.linalg.eigvalsh(self._gram)
        self._smin, self._smax = max(float(eigs[0]), 0.0), float(eigs[-1])

    def offers(self):
        """Optimality (with its Hessian), a gradient step, the energy, the closed form."""
        return Capabilities(
            optimality=Optimality(self.optimality, hessian=self.hessian,
                                  theta_vjp=self.optimality_theta_vjp),
            step=StepMap(self.step, start=self.init), energy=self.energy,
            analytic_vjp=self.analytic_vjp, batch=Batch(theta_ndim=(0,)), why_not=_WHY_NOT)

    @classmethod
    def examples(cls):
        """Return a scalar and a per-feature penalty on a small regression."""
        from bilevel.datasets import regression_data

        X, y = regression_data(30, 3, seed=4)
        return [("ridge-scalar", cls(X, y), np.asarray(0.2)),
                ("ridge-vector", cls(X, y), np.array([0.1, 0.2, 0.3]))]

    def check_theta(self, theta):
        """``lam``: a scalar or shape (p,), finite and >= 0."""
        if isinstance(theta, (tuple, list)):
            if len(theta) != 1:
                raise ValueError(f"Ridge has one hyperparameter (lam), got {len(theta)}")
            theta = theta[0]
        p = self.X.shape[1]
        return (check_nonnegative(theta, "lam", shapes=((), (p,))),)

    def init(self, parts):
        """Zeros."""
        return np.zeros(self.X.shape[1])

    def _solve(self, theta, x0):
        from bilevel.solvers.ridge import ridge_cholesky

        lam = np.broadcast_to(as_tuple(theta)[0], (self.X.shape[1],)).copy()
        x, n_iter, residual = ridge_cholesky(self._gram, self._rhs, lam)
        if n_iter == 0:
            raise ValueError("X^T X / n + diag(lam) is singular: increase lam (it must be > 0 "
                             "when X has more columns than rows or collinear columns)")
        # cond(X^T X / n + diag(lam)) <= (s_max + max lam) / (s_min + min lam): the solve
        # loses about log10(cond) of float64's 16 digits.
        cond = (self._smax + lam.max()) / max(self._smin + lam.min(), 1e-300)
        if cond > _COND_WARN:
            warnings.warn(
                f"Ridge: X^T X / n + lam is ill-conditioned (condition number up to "
                f"{cond:.1e}, min lam {lam.min():.1e}): x* is accurate to about "
                f"{cond * np.finfo(float).eps:.0e} relative; increase lam, or standardize or "
                "drop collinear columns of X", ConvergenceWarning, stacklevel=3)
        return x, n_iter, residual

    # torch maps -----------------------------------------------------------------------
    def energy(self, x, theta):
        """``||Xx - y||^2/(2n) + sum(lam x^2)/2``."""
        r = self._Xt @ x - self._yt
        return 0.5 * (r @ r) / r.shape[0] + 0.5 * torch.sum(as_tuple(theta)[0] * x * x)

    def optimality(self, x, theta):
        """``X^T (Xx - y) / n + lam * x``."""
        return self._Xt.T @ (self._Xt @ x - self._yt) / self.X.shape[0] + as_tuple(theta)[0] * x

    def step(self, x, theta):
        """Gradient step ``x - F(x) / L`` with ``L = sigma_max(X^T X / n) + max(lam)``."""
        lipschitz = self._smax + float(as_tuple(theta)[0].detach().max())
        return x - self.optimality(x, theta) / lipschitz

    # numpy fast paths -----------------------------------------------------------------
    def hessian(self, solution):
        """``X^T X / n + diag(lam)``."""
        H = self._gram.copy()
        H[np.diag_indices_from(H)] += as_tuple(solution.theta)[0]
        return H

    def optimality_theta_vjp(self, solution, u):
        """``(dF/dlam)^T u = x * u``, summed for a scalar lam; a tuple over theta."""
        lam = as_tuple(solution.theta)[0]
        g = solution.x * u
        return (np.asarray(g.sum()) if lam.ndim == 0 else g,)

    def analytic_vjp(self, solution, v):
        """``-x* . H^{-1} v`` (per feature, summed for a scalar lam) by Cholesky."""
        import scipy.linalg

        u = scipy.linalg.cho_solve(scipy.linalg.cho_factor(self.hessian(solution)), v)
        return self.optimality_theta_vjp(solution, -u)
