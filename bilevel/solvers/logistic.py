r"""L2-regularized logistic regression by damped Newton.

.. math:: w^* = \arg\min_w \frac1n \sum_i \log(1 + e^{-y_i x_i^\top w})
          + \frac{\lambda}{2}\|w\|^2, \quad y_i \in \{-1, +1\}

Newton direction from the Cholesky factor of ``X^T D X / n + lam I`` and Armijo
backtracking on the energy; quadratic convergence near ``w*``.
"""

import numpy as np
from numba import njit

from bilevel.solvers.cholesky import cholesky_solve
from bilevel.solvers.reductions import max_nan

__all__ = ["KERNELS", "logistic_l2_energy", "newton_logistic_l2", "warmup"]


@njit(cache=True)
def _softplus(t):
    """Stable ``log(1 + exp(t))``."""
    if t > 0:
        return t + np.log1p(np.exp(-t))
    return np.log1p(np.exp(t))


@njit(cache=True)
def _margins(X, w, z):
    """``z = X w``, in place."""
    n, p = X.shape
    for i in range(n):
        s = 0.0
        for j in range(p):
            s += X[i, j] * w[j]
        z[i] = s


@njit(cache=True)
def _energy_from_margins(z, y, lam, w):
    total = 0.0
    for i in range(z.shape[0]):
        total += _softplus(-y[i] * z[i])
    norm2 = 0.0
    for j in range(w.shape[0]):
        norm2 += w[j] * w[j]
    return total / z.shape[0] + 0.5 * lam * norm2


@njit(cache=True)
def _hessian_from_margins(X, y, lam, z):
    """Hessian ``X^T diag(s (1 - s)) X / n + lam I`` with ``s = sigmoid(y * z)``, ``z = Xw``."""
    n, p = X.shape
    Xd = np.empty((n, p))
    for i in range(n):
        s = 1.0 / (1.0 + np.exp(y[i] * z[i]))
        d = np.sqrt(s * (1.0 - s) / n)
        for j in range(p):
            Xd[i, j] = d * X[i, j]
    H = Xd.T @ Xd                   # the O(n p^2) part: BLAS
    for j in range(p):
        H[j, j] += lam
    return H


@njit(cache=True)
def logistic_l2_energy(X, y, lam, w):
    """Energy ``mean softplus(-y * Xw) + lam/2 ||w||^2``."""
    z = np.empty(X.shape[0])
    _margins(X, w, z)
    return _energy_from_margins(z, y, lam, w)


@njit(cache=True)
def newton_logistic_l2(X, y, lam, w0, tol, max_iter):
    """Minimize the L2-logistic energy from ``w0``.

    Returns ``(w, n_iter, residual)`` with residual ``||grad E(w)||_inf`` relative to the
    data term's gradient bound ``max_j mean_i |X_ij|`` (``|sigmoid| <= 1``): scale-free,
    ``(c X, c^2 lam)`` stops at ``w* / c`` where ``(X, lam)`` stops at ``w*``.

    Matrix-vector products and reductions are loops: numba's BLAS bindings and ``np.max``
    would cost seconds of compilation in every new environment, and the O(n p) products
    are cheap beside the Hessian's O(n p^2), which stays a BLAS product.
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
    z = np.empty(n)
    _margins(X, w, z)
    energy = _energy_from_margins(z, y, lam, w)
    g = np.empty(p)
    candidate = np.empty(p)
    z_new = np.empty(n)
    residual = np.inf
    for it in range(max_iter + 1):
        for j in range(p):                          # g = X^T r / n + lam w,
            g[j] = lam * w[j]
        for i in range(n):                          # r_i = -y_i sigmoid(-y_i z_i)
            r = -y[i] / (1.0 + np.exp(y[i] * z[i])) / n
            for j in range(p):
                g[j] += X[i, j] * r
        residual = 0.0
        for j in range(p):
            residual = max_nan(residual, abs(g[j]))
        residual /= gscale
        if residual <= tol or it == max_iter:
            return w, it, residual
        direction, ok = cholesky_solve(_hessian_from_margins(X, y, lam, z), g)
        if not ok:          # lam = 0 and a rank-deficient X: no Newton step
            return w, it, residual
        slope = 0.0
        for j in range(p):
            slope += g[j] * direction[j]
        t = 1.0
        e_new = energy
        for _ in range(40):
            for j in range(p):
                candidate[j] = w[j] - t * direction[j]
            _margins(X, candidate, z_new)
            e_new = _energy_from_margins(z_new, y, lam, candidate)
            # Armijo, with round-off slack once the decrease is below machine precision.
            if e_new <= energy - 1e-4 * t * slope + 1e-15 * abs(energy):
                break
            t *= 0.5
        w, candidate = candidate, w                 # the step taken; the old w is scratch
        z, z_new = z_new, z
        energy = e_new
    return w, max_iter, residual


KERNELS = (logistic_l2_energy, newton_logistic_l2)


def warmup(parallel=True):
    """Compile this module's kernels once on a tiny float64 instance.

    ``parallel`` is unused: this module has no ``prange`` kernels.
    """
    X = np.array([[1.0, 0.5], [-0.5, 1.0], [0.3, -1.0]])
    y, w0 = np.array([1.0, -1.0, 1.0]), np.zeros(2)
    newton_logistic_l2(X, y, 1.0, w0, 1e-8, 50)
    logistic_l2_energy(X, y, 1.0, w0)
