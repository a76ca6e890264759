r"""Logistic regression with an l2 or an l1 penalty.

.. math:: x^*(\lambda) = \arg\min_x \frac1n \sum_i \log(1 + e^{-y_i a_i^\top x})
          + \frac{\lambda}{2}\|x\|^2 \ \text{(l2)} \quad\text{or}\quad
          + \sum_j \lambda_j |x_j| \ \text{(l1)}, \qquad y_i \in \{-1, +1\}

With the l1 penalty the energy is partly smooth relative to the support ``S`` of ``x*``;
on it, ``H_S = X_S^T diag(s(1-s)) X_S / n`` (``s = sigmoid(y * Xx)``) and
``dx*_S/dlam_j = -H_S^{-1} e_j sign(x*_j)``.
"""

from __future__ import annotations

import numpy as np
import torch

from bilevel._registry import register_problem
from bilevel._types import Batch, Optimality, StepMap, as_tuple
from bilevel.datasets import regression_data
from bilevel.problems.base import Capabilities, Problem, check_array, check_nonnegative
from bilevel.problems.design import Design
from bilevel.problems.l1 import check_positive, l1_manifold, per_feature, soft_threshold

__all__ = ["LogisticRegression"]

# Why a penalty lacks a capability (Capabilities.why_not).
_NOT_A_SURROGATE = ("theta is the penalty lam and x* the coefficients: x* does not approximate "
                    "theta, and is {how} in it ({strategy}): no identity backward")
_NOT_JOINTLY_CONVEX = ("lam multiplies {penalty}: E is not jointly convex in (x, lam), so p has "
                       "no convex-dual gradient; the envelope theorem gives it (envelope)")
_WHY_NOT = {
    "l2": {"analytic_vjp": "no closed form: x*(lam) solves the nonlinear logistic equations; "
                           "implicit with the dense Hessian is its exact derivative",
           "manifold": "smooth, strongly convex energy: x* has no active manifold but the "
                       "whole space, on which partial smoothness is implicit "
                       "differentiation (implicit)",
           "mirror": "x is unconstrained and E smooth: there is no constraint set for a "
                     "Legendre function, and the Euclidean Bregman step is the gradient step "
                     "(step)",
           "straight_through": _NOT_A_SURROGATE.format(how="smooth", strategy="implicit"),
           "dual": _NOT_JOINTLY_CONVEX.format(penalty="||x||^2 / 2"),
           "constraints": "x is unconstrained: no KKT system (implicit differentiates "
                          "grad_x E)"},
    "l1": {"analytic_vjp": "no closed form: on the support, x*_S solves the nonlinear logistic "
                           "equations (partial_smoothness differentiates them with the "
                           "restricted Hessian)",
           "optimality": "the l1 penalty is not smooth: no optimality residual "
                         "(partial_smoothness differentiates its support)",
           "mirror": "soft-thresholding, the l1 prox, is not smooth: the proximal step is no "
                     "Bregman method with a smooth update (that would need the split "
                     "x = x+ - x- with the entropy on each part, a different variable)",
           "straight_through": _NOT_A_SURROGATE.format(how="piecewise smooth",
                                                       strategy="partial_smoothness"),
           "dual": _NOT_JOINTLY_CONVEX.format(penalty="||x||_1"),
           "constraints": "x is unconstrained: no KKT system (the l1 penalty's kinks are "
                          "the support manifold of partial_smoothness)"},
}


@register_problem
class LogisticRegression(Problem):
    """Logistic regression with an l2 or l1 penalty; theta is ``lam``.

    ``penalty="l2"``: ``lam`` a scalar >= 0, solved by damped Newton (numba). ``lam = 0``
    is allowed but has no minimizer on linearly separable data; the solve then reports
    non-convergence. ``penalty="l1"``: ``lam`` > 0, a scalar or one weight per feature,
    solved by proximal Newton with working sets and a duality-gap stopping rule; matches
    scikit-learn's ``LogisticRegression(penalty="l1", C=1/(n lam), fit_intercept=False)``.
    ``Solution.info`` then holds ``support``, ``signs``, ``gap`` and ``polished``, and the
    problem offers the ``manifold`` capability instead of ``optimality`` (l2: with the
    dense Hessian fast path). Both offer ``step`` (a gradient or proximal gradient step)
    and ``energy``; in :class:`bilevel.torch.Layer` batches of scalar ``lam``.

    Parameters
    ----------
    X : ndarray, shape (n, p), or scipy.sparse matrix (l1 only)
        Design matrix (standardize columns for a well-conditioned problem).
    y : ndarray, shape (n,)
        Labels in {-1, +1}.
    penalty : {"l2", "l1"}
        The regularizer.
    tol : float
        Tolerance on ``||grad E||_inf`` (l2) or on the duality gap relative to ``log 2``
        (l1).
    max_iter : int
        Newton or proximal Newton iterations.

    Examples
    --------
    >>> import numpy as np, bilevel as bl
    >>> X = np.array([[1.0], [-1.0]]); y = np.array([1.0, -1.0])
    >>> sol = bl.problems.LogisticRegression(X, y).solve(0.1)
    >>> bool(sol.converged), round(float(sol.x[0]), 4)    # sigmoid(-x) = lam x
    (True, 1.6335)
    """

    name = "logistic"

    def __init__(self, X, y, penalty="l2", tol=None, max_iter=None):
        if penalty not in ("l2", "l1"):
            raise ValueError(f"penalty must be 'l2' or 'l1', got {penalty!r}")
        self.design = Design(X)
        if penalty == "l2" and self.design.sparse:
            raise ValueError("penalty='l2' needs a dense X (Newton forms X^T D X); "
                             "pass X.toarray()")
        self.X = self.design.X
        n, p = self.design.shape
        self.y = check_array(y, "y", shape=(n,))
        if not np.all(np.isin(self.y, (-1.0, 1.0))):
            raise ValueError("y must hold labels in {-1, +1}; map 0/1 labels with 2 * y - 1")
        tol = (1e-10 if penalty == "l2" else 1e-12) if tol is None else tol
        max_iter = (100 if penalty == "l2" else 1000) if max_iter is None else max_iter
        if not (tol > 0 and max_iter >= 1):
            raise ValueError(f"need tol > 0 and max_iter >= 1, got tol={tol}, max_iter={max_iter}")
        self.penalty, self.tol, self.max_iter = penalty, float(tol), int(max_iter)
        self._yt = torch.from_numpy(self.y)
        # Lipschitz constant of the data term's gradient: sigma_max(X)^2 / (4n).
        self._data_lipschitz = self.design.sigma_max() ** 2 / (4 * n)

    def offers(self):
        """l2: optimality (with its Hessian); l1: the support manifold; both a step and E."""
        l2 = self.penalty == "l2"
        return Capabilities(
            optimality=Optimality(self.optimality, hessian=self.hessian,
                                  theta_vjp=self.optimality_theta_vjp) if l2 else None,
            manifold=None if l2 else self.manifold,
            step=StepMap(self.step, start=self.init), energy=self.energy,
            batch=Batch(theta_ndim=(0,)), why_not=_WHY_NOT[self.penalty])

    @classmethod
    def examples(cls):
        """l2 and l1 penalties on a small classification."""
        X, y = regression_data(30, 3, seed=4)
        return [("logistic", cls(X, np.sign(y)), np.asarray(0.05)),
                ("logistic-l1", cls(X, np.sign(y), penalty="l1"), np.asarray(0.02))]

    def _require(self, penalty, what):
        if self.penalty != penalty:
            raise ValueError(f"LogisticRegression(penalty={self.penalty!r}) has no {what}: it "
                             f"is a capability of penalty={penalty!r} (see problem.capabilities)")

    def lam_max(self):
        """Smallest l1 ``lam`` with ``x* = 0``: ``||X^T y||_inf / (2n)``."""
        if self.penalty != "l1":
            raise ValueError("lam_max is defined for penalty='l1' (an l2 penalty never "
                             "makes x* exactly 0)")
        return float(np.max(np.abs(self.design.rmatvec(self.y))) / (2 * self.y.shape[0]))

    def check_theta(self, theta):
        """``lam``: a finite scalar >= 0 (l2); a scalar or shape (p,), > 0 (l1)."""
        if isinstance(theta, (tuple, list)):
            if len(theta) != 1:
                raise ValueError(f"LogisticRegression has one hyperparameter (lam), "
                                 f"got {len(theta)}")
            theta = theta[0]
        if self.penalty == "l1":
            return (check_positive(theta, "lam", self.design.shape[1]),)
        return (check_nonnegative(theta, "lam", shapes=((),)),)

    def init(self, parts):
        """Zeros."""
        return np.zeros(self.design.shape[1])

    def _solve(self, theta, x0):
        lam = as_tuple(theta)[0]
        if self.penalty == "l2":
            from bilevel.solvers.logistic import newton_logistic_l2

            x, n_iter, residual = newton_logistic_l2(self.X, self.y, float(lam), x0, self.tol,
                                                     self.max_iter)
            return x, n_iter, residual, self._diagnose(x, float(lam))
        from bilevel.solvers.logistic_l1 import logistic_l1_prox_newton

        lam = np.broadcast_to(lam, x0.shape).astype(np.float64)
        x, n_iter, gap, polished, grad = logistic_l1_prox_newton(
            *self.design.kernel_args, self.y, lam, x0, self.tol, self.max_iter)
        support = np.flatnonzero(x)
        return x, n_iter, gap, {"gap": gap, "support": support, "signs": np.sign(x[support]),
                                "polished": bool(polished), "neg_gradient": -grad}

    def _diagnose(self, x, lam):
        """At ``lam = 0``, a ``x`` with every margin ``y_i x_i^T x > 0`` separates the data.

        Then ``E(t x)`` decreases strictly in ``t > 0`` towards 0: the infimum is not
        attained, and no returned point is a minimizer.
        """
        if lam > 0:
            return {}
        margins = self.y * self.design.matvec(x)
        if not np.all(margins > 0):
            return {}
        return {"failure": "the data are linearly separable (every margin y_i x_i^T x > 0, "
                           f"min {margins.min():.2e}) and lam = 0: the loss decreases along x "
                           "forever and no minimizer exists; use lam > 0"}

    # torch maps -----------------------------------------------------------------------
    def _data_term(self, x):
        margins = self._yt * self.design.torch_matvec(x)
        return torch.nn.functional.softplus(-margins).mean()

    def _data_gradient(self, x):
        margins = self._yt * self.design.torch_matvec(x)
        r = -self._yt * torch.sigmoid(-margins)
        return self.design.torch_rmatvec(r) / self.y.shape[0]

    def energy(self, x, theta):
        """``mean softplus(-y * Xx)`` plus ``lam/2 ||x||^2`` (l2) or ``sum(lam |x|)`` (l1)."""
        lam = as_tuple(theta)[0]
        if self.penalty == "l1":
            return self._data_term(x) + torch.sum(lam * torch.abs(x))
        return self._data_term(x) + 0.5 * lam * (x @ x)

    def optimality(self, x, theta):
        """``-X^T (y * sigmoid(-y * Xx)) / n + lam * x`` (l2 only)."""
        self._require("l2", "optimality residual")
        return self._data_gradient(x) + as_tuple(theta)[0] * x

    def step(self, x, theta):
        """Gradient step (l2) or proximal gradient step (l1).

        l2: ``x - F(x) / L``, ``L = sigma_max(X)^2/(4n) + lam``; l1:
        ``S(x - grad f(x)/L, lam/L)`` with ``L = sigma_max(X)^2/(4n)``.
        """
        lam = as_tuple(theta)[0]
        if self.penalty == "l1":
            lipschitz = self._data_lipschitz
            return soft_threshold(x - self._data_gradient(x) / lipschitz, lam / lipschitz)
        lipschitz = self._data_lipschitz + float(lam.detach())
        return x - self.optimality(x, theta) / lipschitz

    def manifold(self, solution):
        """Return the support of ``x*`` with ``H_S = X_S^T diag(s(1-s)) X_S / n`` (l1 only)."""
        self._require("l1", "active manifold")
        x = solution.x
        n = self.y.shape[0]
        lam_arg = as_tuple(solution.theta)[0]
        lam = np.broadcast_to(lam_arg, x.shape)
        margins = self.y * self.design.matvec(x)
        corr = solution.info.get("neg_gradient")
        if corr is None:
            corr = self.design.rmatvec(self.y / (1.0 + np.exp(margins))) / n
        root = self._root_curvature(x)

        def hessian(support):
            XS = self.design.columns(support) * root[:, None]
            return XS.T @ XS

        def theta_vjp(support, signs, u):
            return (per_feature(support, signs * u, lam_arg, x.size),)

        def theta_jvp(support, signs, dtheta):
            return signs * np.broadcast_to(dtheta[0], x.shape)[support]

        return l1_manifold(x, corr, lam, hessian, theta_vjp, theta_jvp,
                           "Raise lam for a smaller support, or use finite_difference.")

    # numpy fast paths -----------------------------------------------------------------
    def hessian(self, solution):
        """``X^T diag(s(1-s)) X / n + lam I`` with ``s = sigmoid(y * Xx)`` (l2 only).

        One NumPy product: a single evaluation needs no compiled kernel.
        """
        lam = float(as_tuple(solution.theta)[0])
        Xd = self.X * self._root_curvature(solution.x)[:, None]
        return Xd.T @ Xd + lam * np.eye(self.X.shape[1])

    def _root_curvature(self, x):
        """``sqrt(s_i (1 - s_i) / n)`` with ``s = sigmoid(y * Xx)``: the data Hessian's root.

        The data term's Hessian is ``X^T diag(root^2) X``; ``s (1 - s) = e / (1 + e)^2``
        with ``e = exp(-|x_i^T x|)`` (``y_i = +-1``), which cannot overflow.
        """
        e = np.exp(-np.abs(self.design.matvec(x)))
        return np.sqrt(e / (self.y.shape[0] * (1.0 + e) ** 2))

    def optimality_theta_vjp(self, solution, u):
        """``(dF/dlam)^T u = x . u``; a tuple over theta."""
        return (np.asarray(solution.x @ u),)
