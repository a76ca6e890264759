r"""Ridge regression by a Cholesky solve of the normal equations.

.. math:: w^* = \arg\min_w \frac{1}{2n}\|Xw - y\|^2 + \frac12 \sum_j \lambda_j w_j^2
          \iff (X^\top X / n + \mathrm{diag}(\lambda)) w^* = X^\top y / n
"""

import numpy as np
from numba import njit, prange

from bilevel.solvers.cholesky import cholesky_solve

__all__ = ["ridge_cholesky", "ridge_cholesky_batched"]


@njit(cache=True)
def ridge_cholesky(X, y, lam):
    """Solve ridge regression with per-feature weights ``lam`` (shape (p,)).

    Returns ``(w, n_iter, residual)`` with residual ``||grad E(w)||_inf`` and
    ``n_iter = 0`` when the Hessian is not positive definite (w is then NaN).
    """
    n, p = X.shape
    H = X.T @ X / n
    for j in range(p):
        H[j, j] += lam[j]
    b = X.T @ y / n
    w, ok = cholesky_solve(H, b)
    if not ok:
        return w, 0, np.inf
    residual = np.max(np.abs(H @ w - b))
    return w, 1, residual


@njit(cache=True, parallel=True)
def ridge_cholesky_batched(X, y, lams):
    """Ridge solutions for each row of ``lams`` (shape (batch, p)), in parallel."""
    batch, p = lams.shape
    W = np.empty((batch, p))
    residuals = np.empty(batch)
    for i in prange(batch):
        w, _, r = ridge_cholesky(X, y, lams[i])
        W[i] = w
        residuals[i] = r
    return W, residuals
