r"""Ridge regression by a Cholesky solve of the normal equations.

.. math:: w^* = \arg\min_w \frac{1}{2n}\|Xw - y\|^2 + \frac12 \sum_j \lambda_j w_j^2
          \iff (X^\top X / n + \mathrm{diag}(\lambda)) w^* = X^\top y / n
"""

import numpy as np
from numba import njit, prange

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
    # Cholesky by hand: numba's np.linalg.cholesky raises on non-PD input, which cannot be
    # caught inside a jitted function; a zero pivot is reported through n_iter instead.
    L = np.zeros((p, p))
    for j in range(p):
        s = H[j, j]
        for k in range(j):
            s -= L[j, k] * L[j, k]
        if s <= 1e-14 * (abs(H[j, j]) + 1e-300):
            return np.full(p, np.nan), 0, np.inf
        L[j, j] = np.sqrt(s)
        for i in range(j + 1, p):
            t = H[i, j]
            for k in range(j):
                t -= L[i, k] * L[j, k]
            L[i, j] = t / L[j, j]
    z = np.empty(p)
    for i in range(p):
        t = b[i]
        for k in range(i):
            t -= L[i, k] * z[k]
        z[i] = t / L[i, i]
    w = np.empty(p)
    for i in range(p - 1, -1, -1):
        t = z[i]
        for k in range(i + 1, p):
            t -= L[k, i] * w[k]
        w[i] = t / L[i, i]
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
