r"""L2-regularized logistic regression.

.. math:: x^*(\lambda) = \arg\min_x \frac1n \sum_i \log(1 + e^{-y_i a_i^\top x})
          + \frac{\lambda}{2}\|x\|^2, \qquad y_i \in \{-1, +1\}
"""

from __future__ import annotations

import numpy as np
import torch

from bilevel._registry import register_problem
from bilevel._types import as_tuple
from bilevel.problems.base import Problem, check_design, check_nonnegative

__all__ = ["LogisticRegression"]


@register_problem
class LogisticRegression(Problem):
    """Logistic regression with an L2 penalty; theta is ``lam`` (a scalar, >= 0).

    Solved by damped Newton (numba). ``lam = 0`` is allowed but has no minimizer on
    linearly separable data; the solve then reports non-convergence.

    Parameters
    ----------
    X : ndarray, shape (n, p)
        Design matrix (standardize columns for a well-conditioned problem).
    y : ndarray, shape (n,)
        Labels in {-1, +1}.
    penalty : {"l2"}
        The regularizer; the l1 penalty belongs to the sparse models.
    tol : float
        Tolerance on ``||grad E||_inf``.
    max_iter : int
        Newton iterations.

    Examples
    --------
    >>> import numpy as np, bilevel as bl
    >>> X = np.array([[1.0], [-1.0]]); y = np.array([1.0, -1.0])
    >>> sol = bl.problems.LogisticRegression(X, y).solve(0.1)
    >>> bool(sol.converged), round(float(sol.x[0]), 4)    # sigmoid(-x) = lam x
    (True, 1.6335)
    """

    name = "logistic"
    capabilities = frozenset({"optimality", "step", "energy"})

    def __init__(self, X, y, penalty="l2", tol=1e-10, max_iter=100):
        if penalty != "l2":
            raise ValueError(f"penalty must be 'l2', got {penalty!r}")
        self.X, self.y = check_design(X, y)
        if not np.all(np.isin(self.y, (-1.0, 1.0))):
            raise ValueError("y must hold labels in {-1, +1}; map 0/1 labels with 2 * y - 1")
        if not (tol > 0 and max_iter >= 1):
            raise ValueError(f"need tol > 0 and max_iter >= 1, got tol={tol}, max_iter={max_iter}")
        self.penalty, self.tol, self.max_iter = penalty, float(tol), int(max_iter)
        self._Xt = torch.from_numpy(self.X)
        self._yt = torch.from_numpy(self.y)
        n = self.X.shape[0]
        # Lipschitz constant of the data term's gradient: sigma_max(X)^2 / (4n).
        self._data_lipschitz = float(np.linalg.norm(self.X, 2) ** 2 / (4 * n))

    def check_theta(self, theta):
        """``lam``: a finite scalar >= 0."""
        if isinstance(theta, (tuple, list)):
            if len(theta) != 1:
                raise ValueError(f"LogisticRegression has one hyperparameter (lam), "
                                 f"got {len(theta)}")
            theta = theta[0]
        return (check_nonnegative(theta, "lam", shapes=((),)),)

    def init(self, parts):
        """Zeros."""
        return np.zeros(self.X.shape[1])

    def _solve(self, theta, x0):
        from bilevel.solvers import newton_logistic_l2

        lam = float(as_tuple(theta)[0])
        return newton_logistic_l2(self.X, self.y, lam, x0, self.tol, self.max_iter)

    # torch maps -----------------------------------------------------------------------
    def energy(self, x, theta):
        """``mean softplus(-y * Xx) + lam/2 ||x||^2``."""
        margins = self._yt * (self._Xt @ x)
        return torch.nn.functional.softplus(-margins).mean() + 0.5 * as_tuple(theta)[0] * (x @ x)

    def optimality(self, x, theta):
        """``-X^T (y * sigmoid(-y * Xx)) / n + lam * x``."""
        margins = self._yt * (self._Xt @ x)
        r = -self._yt * torch.sigmoid(-margins)
        return self._Xt.T @ r / self.X.shape[0] + as_tuple(theta)[0] * x

    def step(self, x, theta):
        """Gradient step ``x - F(x) / L`` with ``L = sigma_max(X)^2/(4n) + lam``."""
        lipschitz = self._data_lipschitz + float(as_tuple(theta)[0].detach())
        return x - self.optimality(x, theta) / lipschitz

    # numpy fast paths -----------------------------------------------------------------
    def hessian(self, solution):
        """``X^T diag(s(1-s)) X / n + lam I`` with ``s = sigmoid(y * Xx)``."""
        from bilevel.solvers import logistic_l2_hessian

        lam = float(as_tuple(solution.theta)[0])
        return logistic_l2_hessian(self.X, self.y, lam, solution.x)

    def optimality_theta_vjp(self, solution, u):
        """``(dF/dlam)^T u = x . u``; a tuple over theta."""
        return (np.asarray(solution.x @ u),)
