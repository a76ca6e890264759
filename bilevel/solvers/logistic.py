r"""L2-regularized logistic regression by damped Newton.

.. math:: w^* = \arg\min_w \frac1n \sum_i \log(1 + e^{-y_i x_i^\top w})
          + \frac{\lambda}{2}\|w\|^2, \quad y_i \in \{-1, +1\}

Newton direction from the Cholesky factor of ``X^T D X / n + lam I`` and Armijo
backtracking on the energy; quadratic convergence near ``w*``.
"""

import numpy as np
from numba import njit

from bilevel.solvers.cholesky import cholesky_solve

__all__ = ["KERNELS", "logistic_l2_energy", "logistic_l2_hessian", "newton_logistic_l2",
           "warmup"]


@njit(cache=True)
def _softplus(t):
    """Stable ``log(1 + exp(t))``."""
    if t > 0:
        return t + np.log1p(np.exp(-t))
    return np.log1p(np.exp(t))


@njit(cache=True)
def _energy_from_margins(z, y, lam, w):
    total = 0.0
    for i in range(z.shape[0]):
        total += _softplus(-y[i] * z[i])
    return total / z.shape[0] + 0.5 * lam * np.dot(w, w)


@njit(cache=True)
def logistic_l2_energy(X, y, lam, w):
    """Energy ``mean softplus(-y * Xw) + lam/2 ||w||^2``."""
    return _energy_from_margins(X @ w, y, lam, w)


@njit(cache=True)
def logistic_l2_hessian(X, y, lam, w):
    """Hessian ``X^T diag(s (1 - s)) X / n + lam I`` with ``s = sigmoid(y * Xw)``."""
    n, p = X.shape
    z = X @ w
    scale = np.empty((n, 1))
    for i in range(n):
        s = 1.0 / (1.0 + np.exp(y[i] * z[i]))
        scale[i, 0] = np.sqrt(s * (1.0 - s) / n)
    Xd = X * scale
    H = Xd.T @ Xd
    for j in range(p):
        H[j, j] += lam
    return H


@njit(cache=True)
def newton_logistic_l2(X, y, lam, w0, tol, max_iter):
    """Minimize the L2-logistic energy from ``w0``.

    Returns ``(w, n_iter, residual)`` with residual ``||grad E(w)||_inf`` relative to the
    data term's gradient bound ``max_j mean_i |X_ij|`` (``|sigmoid| <= 1``): scale-free,
    ``(c X, c^2 lam)`` stops at ``w* / c`` where ``(X, lam)`` stops at ``w*``.
    """
    n, p = X.shape
    gscale = 0.0
    for j in range(p):
        col = 0.0
        for i in range(n):
            col += abs(X[i, j])
        gscale = max(gscale, col / n)
    if gscale == 0.0:
        gscale = 1.0
    w = w0.copy()
    z = X @ w
    energy = _energy_from_margins(z, y, lam, w)
    r = np.empty(n)
    for it in range(max_iter + 1):
        for i in range(n):
            r[i] = -y[i] / (1.0 + np.exp(y[i] * z[i]))     # -y_i sigmoid(-y_i z_i)
        g = X.T @ r / n + lam * w
        residual = np.max(np.abs(g)) / gscale
        if residual <= tol or it == max_iter:
            return w, it, residual
        direction, ok = cholesky_solve(logistic_l2_hessian(X, y, lam, w), g)
        if not ok:          # lam = 0 and a rank-deficient X: no Newton step
            return w, it, residual
        slope = np.dot(g, direction)
        t = 1.0
        for _ in range(40):
            candidate = w - t * direction
            z_new = X @ candidate
            e_new = _energy_from_margins(z_new, y, lam, candidate)
            # Armijo, with round-off slack once the decrease is below machine precision.
            if e_new <= energy - 1e-4 * t * slope + 1e-15 * abs(energy):
                break
            t *= 0.5
        w, z, energy = candidate, z_new, e_new
    return w, max_iter, residual


KERNELS = (logistic_l2_energy, logistic_l2_hessian, newton_logistic_l2)


def warmup(parallel=True):
    """Compile this module's kernels once on a tiny float64 instance.

    ``parallel`` is unused: this module has no ``prange`` kernels.
    """
    X = np.array([[1.0, 0.5], [-0.5, 1.0], [0.3, -1.0]])
    y, w0 = np.array([1.0, -1.0, 1.0]), np.zeros(2)
    newton_logistic_l2(X, y, 1.0, w0, 1e-8, 50)
    logistic_l2_energy(X, y, 1.0, w0)
    logistic_l2_hessian(X, y, 1.0, w0)
