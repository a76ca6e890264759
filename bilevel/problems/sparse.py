r"""Sparse linear models: the Lasso and the elastic net, with their l1 active manifold.

.. math:: x^*(\lambda) = \arg\min_x \frac{1}{2n}\|Xx - y\|^2 + \sum_j \lambda_{1,j}|x_j|
          + \frac12\sum_j \lambda_{2,j} x_j^2

The l1 norm is partly smooth relative to ``M_S = {x : supp(x) = S}``. On a non-degenerate
solution (``|X_j^T r| / n < lam1_j`` off the support ``S``) the support and signs ``s`` are
locally constant and ``x*_S = H^{-1}(X_S^T y / n - lam1_S s)``,
``H = X_S^T X_S / n + diag(lam2_S)``: the derivatives cost one ``k x k`` factorization,
``k = |S|`` (Vaiter, Deledalle, Peyre, Fadili, Dossal, "The degrees of freedom of partly
smooth regularizers", 2016; Bertrand et al., "Implicit differentiation of Lasso-type models
for hyperparameter optimization", ICML 2020).
"""

from __future__ import annotations

import numpy as np
import torch

from bilevel._registry import register_problem
from bilevel._types import Batch, StepMap, as_tuple
from bilevel.datasets import regression_data
from bilevel.problems.base import Capabilities, Problem, check_array, check_nonnegative
from bilevel.problems.design import Design
from bilevel.problems.l1 import check_positive, l1_manifold, per_feature, soft_threshold

__all__ = ["ElasticNet", "Lasso"]

# Why the sparse models lack a capability (Capabilities.why_not).
_WHY_NOT = {
    "analytic_vjp": "the exact derivative is the support formula -H_S^{-1} d_lam grad_S E, a "
                    "k x k solve on the support the solver identifies: that is "
                    "partial_smoothness (no further closed form)",
    "optimality": "the l1 penalty is not smooth: no optimality residual (partial_smoothness "
                  "differentiates its support)",
    "mirror": "soft-thresholding, the l1 prox, is not smooth: the proximal step is no Bregman "
              "method with a smooth update (that would need the split x = x+ - x- with the "
              "entropy on each part, a different variable)",
    "straight_through": "theta is the penalty and x* the coefficients: x* does not approximate "
                        "theta, and is piecewise smooth in it (partial_smoothness): no "
                        "identity backward",
    "dual": "lam multiplies ||x||_1 (and lam2 ||x||^2 / 2): E is not jointly convex in (x, "
            "lam), so p has no convex-dual gradient; the envelope theorem gives it (envelope)",
    "constraints": "x is unconstrained: no KKT system (the l1 penalty's kinks are the support "
                   "manifold of partial_smoothness)",
}


@register_problem
class ElasticNet(Problem):
    """Elastic net ``||Xx - y||^2/(2n) + lam1 ||x||_1 + (lam2/2)||x||^2``; theta ``(lam1, lam2)``.

    Scaled as scikit-learn's ``ElasticNet(alpha, l1_ratio, fit_intercept=False)`` with
    ``lam1 = alpha * l1_ratio`` and ``lam2 = alpha * (1 - l1_ratio)``.

    Parameters
    ----------
    X : ndarray or scipy.sparse matrix, shape (n, p)
        Design matrix.
    y : ndarray, shape (n,)
        Targets.
    tol : float
        Tolerance on the duality gap relative to ``||y||^2/(2n)``.
    max_epochs : int
        Coordinate-descent passes.

    Notes
    -----
    ``lam1`` (> 0) and ``lam2`` (>= 0) are scalars or arrays of shape (p,). Solved by
    cyclic coordinate descent with working sets and an exact solve on the identified
    support (:mod:`bilevel.solvers.coordinate_descent`); ``Solution.info`` holds
    ``support``, ``signs``, ``gap`` (relative), ``polished`` and, when polished, the
    ``hessian`` on the support that the manifold's VJP reuses. Capabilities:
    ``manifold`` (the support), ``step`` (a proximal gradient step), ``energy``; in
    :class:`bilevel.torch.Layer` batches of scalar penalties (``theta_ndim`` 0 each).

    Examples
    --------
    >>> import numpy as np, bilevel as bl
    >>> X = np.eye(2); y = np.array([3.0, 0.5])       # n = 2: x = S(y/2, lam1) / (1/2 + lam2)
    >>> bl.problems.ElasticNet(X, y).solve((0.5, 0.5)).x
    array([1., 0.])
    """

    name = "elastic_net"
    _remedy = "Raise lam2 or lam1 (a smaller support), or use finite_difference."

    def __init__(self, X, y, tol=1e-12, max_epochs=100_000):
        self.design = Design(X)
        n, p = self.design.shape
        self.y = check_array(y, "y", shape=(n,))
        if not (tol > 0 and max_epochs >= 1):
            raise ValueError(f"need tol > 0 and max_epochs >= 1, got tol={tol}, "
                             f"max_epochs={max_epochs}")
        self.tol, self.max_epochs = float(tol), int(max_epochs)
        self._yt = torch.from_numpy(self.y)

    def offers(self):
        """Return the support manifold, a proximal gradient step, the energy."""
        return Capabilities(manifold=self.manifold, step=StepMap(self.step, start=self.init),
                            energy=self.energy, batch=Batch(theta_ndim=self._theta_ndim),
                            why_not=_WHY_NOT)

    _theta_ndim = (0, 0)

    @classmethod
    def examples(cls):
        """Penalties with a clear support on a small regression."""
        X, y = regression_data(30, 3, seed=4)
        return [("elastic_net-tuple", cls(X, y), (np.asarray(0.1), np.asarray(0.2)))]

    def lam_max(self):
        """Smallest ``lam1`` with ``x* = 0``: ``||X^T y||_inf / n``."""
        return float(np.max(np.abs(self.design.rmatvec(self.y))) / self.y.shape[0])

    def check_theta(self, theta):
        """``(lam1, lam2)``: each a scalar or shape (p,); lam1 > 0, lam2 >= 0."""
        parts = as_tuple(theta)
        if not isinstance(theta, (tuple, list)) or len(parts) != 2:
            raise ValueError("ElasticNet takes theta = (lam1, lam2)")
        p = self.design.shape[1]
        return (check_positive(parts[0], "lam1", p),
                check_nonnegative(parts[1], "lam2", shapes=((), (p,))))

    def _penalties(self, theta):
        lam1, lam2 = as_tuple(theta)
        p = self.design.shape[1]
        return (np.broadcast_to(lam1, (p,)).astype(np.float64),
                np.broadcast_to(lam2, (p,)).astype(np.float64))

    def init(self, parts):
        """Zeros."""
        return np.zeros(self.design.shape[1])

    def _solve(self, theta, x0):
        from bilevel.solvers.coordinate_descent import enet_cd

        lam1, lam2 = self._penalties(theta)
        x, epochs, gap, polished, corr, gram = enet_cd(
            *self.design.kernel_args, self.design.sq_norms, self.y, lam1, lam2, x0, self.tol,
            self.max_epochs)
        support = np.flatnonzero(x)
        info = {"gap": gap, "support": support, "signs": np.sign(x[support]),
                "polished": bool(polished), "neg_gradient": corr - lam2 * x}
        if polished and gram.shape[0] == support.size:
            info["hessian"] = gram      # the manifold's restricted Hessian, from the polish
        return x, epochs, gap, info

    # torch maps -----------------------------------------------------------------------
    def _torch_penalties(self, theta):
        parts = as_tuple(theta)
        return parts[0], (parts[1] if len(parts) > 1 else 0.0)

    def energy(self, x, theta):
        """``||Xx - y||^2/(2n) + sum(lam1 |x|) + sum(lam2 x^2)/2``."""
        lam1, lam2 = self._torch_penalties(theta)
        r = self.design.torch_matvec(x) - self._yt
        return (0.5 * (r @ r) / r.shape[0] + torch.sum(lam1 * torch.abs(x))
                + 0.5 * torch.sum(lam2 * x * x))

    def step(self, x, theta):
        """Proximal gradient step ``S(x - grad f(x)/L, lam1/L)``, ``L = sigma_max^2/n + max lam2``.

        Its Jacobian in ``x`` at ``x*`` is the support mask times ``I - H/L``.
        """
        lam1, lam2 = self._torch_penalties(theta)
        n = self.y.shape[0]
        lam2_max = float(torch.as_tensor(lam2).detach().max())
        lipschitz = self.design.sigma_max() ** 2 / n + lam2_max
        grad = self.design.torch_rmatvec(self.design.torch_matvec(x) - self._yt) / n + lam2 * x
        return soft_threshold(x - grad / lipschitz, lam1 / lipschitz)

    # the active manifold --------------------------------------------------------------
    def manifold(self, solution):
        """Return the support of ``x*`` with ``H = X_S^T X_S/n + diag(lam2_S)`` (see module doc)."""
        theta = as_tuple(solution.theta)
        lam1, lam2 = self._penalties(solution.theta)
        x = solution.x
        n = self.y.shape[0]
        corr = solution.info.get("neg_gradient")
        if corr is None:
            corr = self.design.rmatvec(self.y - self.design.matvec(x)) / n - lam2 * x

        def hessian(support):
            H = solution.info.get("hessian")
            if H is not None and H.shape[0] == support.size:
                return H
            XS = self.design.columns(support)
            H = XS.T @ XS
            H /= n
            H.flat[::support.size + 1] += lam2[support]
            return H

        def theta_vjp(support, signs, u):
            grads = (per_feature(support, signs * u, theta[0], x.size),)
            if len(theta) > 1:
                grads += (per_feature(support, x[support] * u, theta[1], x.size),)
            return grads

        def theta_jvp(support, signs, dtheta):
            d1 = np.broadcast_to(dtheta[0], x.shape)[support]
            out = signs * d1
            if len(theta) > 1:
                out = out + x[support] * np.broadcast_to(dtheta[1], x.shape)[support]
            return out

        return l1_manifold(x, corr, lam1, hessian, theta_vjp, theta_jvp, self._remedy)

    def __repr__(self):
        return f"{type(self).__name__}(n={self.design.shape[0]}, p={self.design.shape[1]}, " \
               f"sparse={self.design.sparse})"


@register_problem
class Lasso(ElasticNet):
    """Lasso ``||Xx - y||^2/(2n) + lam ||x||_1``; theta is ``lam`` (scalar or per feature).

    ``Lasso(X, y).solve(lam)`` equals scikit-learn's
    ``Lasso(alpha=lam, fit_intercept=False)``. A ``lam`` of shape (p,) is the weighted Lasso
    (one hyperparameter per feature). Same solver, ``info`` and parameters as
    :class:`ElasticNet`.

    Examples
    --------
    >>> import numpy as np, bilevel as bl
    >>> X = np.eye(2); y = np.array([3.0, 0.5])       # n = 2: x = 2 S(y/2, lam)
    >>> prob = bl.problems.Lasso(X, y)
    >>> prob.lam_max(), prob.solve(0.5).x
    (1.5, array([2., 0.]))
    """

    name = "lasso"
    _theta_ndim = (0,)
    _remedy = ("Add an l2 term (ElasticNet with lam2 > 0), raise lam for a smaller support, "
               "or use finite_difference.")

    @classmethod
    def examples(cls):
        """Return a scalar and a per-feature penalty on a small regression."""
        X, y = regression_data(30, 3, seed=4)
        return [("lasso-scalar", cls(X, y), np.asarray(0.1)),
                ("lasso-vector", cls(X, y), np.array([0.1, 0.3, 0.05]))]

    def check_theta(self, theta):
        """``lam``: a scalar or shape (p,), finite and > 0."""
        if isinstance(theta, (tuple, list)):
            if len(theta) != 1:
                raise ValueError(f"Lasso has one hyperparameter (lam), got {len(theta)}")
            theta = theta[0]
        return (check_positive(theta, "lam", self.design.shape[1]),)

    def _penalties(self, theta):
        p = self.design.shape[1]
        return np.broadcast_to(as_tuple(theta)[0], (p,)).astype(np.float64), np.zeros(p)
