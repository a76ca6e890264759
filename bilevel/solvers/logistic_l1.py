r"""L1-regularized logistic regression by proximal Newton with coordinate-descent subproblems.

.. math:: w^* = \arg\min_w \frac1n \sum_i \log(1 + e^{-y_i x_i^\top w})
          + \sum_j \lambda_j |w_j|, \quad y_i \in \{-1, +1\}

Each outer step minimizes the quadratic model of the data term plus the l1 penalty, a
weighted Lasso solved by the elastic-net coordinate descent, then backtracks on the energy
(Lee, Sun, Saunders, "Proximal Newton-type methods", SIAM J. Optim. 2014; Friedman, Hastie,
Tibshirani, glmnet).
Stopping rule: the duality gap with the dual point ``theta_i = y_i a_i / (n s)``,
``a_i = sigmoid(-y_i x_i^T w)`` rescaled by ``s`` to feasibility ``|X^T theta| <= lam``,
``D = mean_i H(a_i / s)`` (binary entropy), relative to ``P(0) = log 2``. Once the gap is
small, Newton's method on the current support and signs gives ``w*`` to round-off.
"""

import numpy as np
from numba import njit

from bilevel.solvers.cholesky import cholesky_solve
from bilevel.solvers.columns import col_dot, col_sq_norms, dense_columns, matvec
from bilevel.solvers.coordinate_descent import designs, enet_cd

__all__ = ["KERNELS", "logistic_l1_gap", "logistic_l1_prox_newton", "warmup"]

_POLISH_GAP = 1e-3
_POLISH_MAX = 2000
_LOG2 = np.log(2.0)


@njit(cache=True)
def _softplus(t):
    if t > 0:
        return t + np.log1p(np.exp(-t))
    return np.log1p(np.exp(t))


@njit(cache=True)
def _entropy(t):
    out = 0.0
    if t > 0.0:
        out -= t * np.log(t)
    if t < 1.0:
        out -= (1.0 - t) * np.log1p(-t)
    return out


@njit(cache=True)
def _primal(z, y, lam, w):
    total = 0.0
    for i in range(z.shape[0]):
        total += _softplus(-y[i] * z[i])
    return total / z.shape[0] + np.dot(lam, np.abs(w))


@njit(cache=True)
def _weights(z, y):
    """``a_i = sigmoid(-y_i z_i)``."""
    a = np.empty(z.shape[0])
    for i in range(z.shape[0]):
        a[i] = 1.0 / (1.0 + np.exp(y[i] * z[i]))
    return a


@njit(cache=True)
def logistic_l1_gap(z, y, lam, w, grad):
    """Duality gap at ``w`` given margins ``z = Xw`` and ``grad = X^T(-y a)/n``."""
    n = z.shape[0]
    scale = 1.0
    for j in range(w.shape[0]):
        scale = max(scale, abs(grad[j]) / lam[j])
    a = _weights(z, y)
    dual = 0.0
    for i in range(n):
        dual += _entropy(a[i] / scale)
    return _primal(z, y, lam, w) - dual / n


@njit(cache=True)
def _gradient(Xt, data, indices, indptr, sparse, y, z, p):
    n = z.shape[0]
    a = _weights(z, y)
    ya = -y * a
    if not sparse:
        return a, Xt @ ya / n
    grad = np.empty(p)
    for j in range(p):
        grad[j] = col_dot(j, Xt, data, indices, indptr, sparse, ya) / n
    return a, grad


@njit(cache=True)
def _polish(Xt, data, indices, indptr, sparse, y, lam, w):
    """Newton's method on the support and signs of ``w``; ``ok`` False if it leaves them."""
    n = y.shape[0]
    support = np.flatnonzero(w)
    k = support.shape[0]
    if k == 0 or k > _POLISH_MAX:
        return w, False
    XS = dense_columns(Xt, data, indices, indptr, sparse, support, n)
    wS = w[support].copy()
    signs = np.sign(wS)
    lamS = lam[support] * signs
    z = XS.T @ wS
    energy = _primal(z, y, lam[support], wS)
    for _ in range(30):
        a = _weights(z, y)
        g = XS @ (-y * a) / n + lamS
        if np.max(np.abs(g)) < 1e-15:
            break
        Xd = XS * np.sqrt(a * (1.0 - a) / n)
        step, ok = cholesky_solve(Xd @ Xd.T, g)
        if not ok:
            return w, False
        t = 1.0
        for _ in range(40):
            cand = wS - t * step
            z_new = XS.T @ cand
            e_new = _primal(z_new, y, lam[support], cand)
            if e_new <= energy - 1e-4 * t * np.dot(g, step) + 1e-15 * abs(energy):
                break
            t *= 0.5
        if np.any(np.sign(cand) != signs):
            return w, False
        decrease = energy - e_new
        wS, z, energy = cand, z_new, e_new
        if decrease <= 1e-16 * abs(energy):
            break
    out = np.zeros_like(w)
    for a in range(k):
        out[support[a]] = wS[a]
    return out, True


@njit(cache=True)
def _weighted_design(Xt, data, indices, indptr, sparse, rows):
    """Return the design with row ``i`` scaled by ``rows[i]``, in the same representation."""
    if sparse:
        scaled = data.copy()
        for k in range(data.shape[0]):
            scaled[k] *= rows[indices[k]]
        return Xt, scaled
    return Xt * rows, data


@njit(cache=True)
def logistic_l1_prox_newton(Xt, data, indices, indptr, sparse, y, lam, w0, tol, max_iter):
    """Minimize the l1-logistic energy from ``w0`` (``lam`` per feature, > 0).

    Each step's model ``g^T d + d^T X^T diag(h) X d / 2 + sum_j lam_j |w_j + d_j|``
    (``h = a (1 - a) / n``) is the weighted Lasso
    ``||y~ - X~ u||^2 / (2n) + sum_j lam_j |u_j|`` in ``u = w + d``, with rows of ``X``
    scaled by ``sqrt(n h_i)`` and ``y~_i = sqrt(n h_i) x_i^T w + y_i a_i / sqrt(n h_i)``; it is
    solved by :func:`~bilevel.solvers.coordinate_descent.enet_cd` (working sets,
    extrapolation, exact polish), warm-started at ``w``.

    Returns ``(w, n_iter, gap, polished, grad)``: proximal Newton steps, the final duality
    gap relative to ``log 2``, whether ``w`` comes from the exact Newton solve on its support,
    and the data term's gradient at ``w``.
    """
    n = y.shape[0]
    p = w0.shape[0]
    w = w0.copy()
    z = matvec(Xt, data, indices, indptr, sparse, w, n)
    a, grad = _gradient(Xt, data, indices, indptr, sparse, y, z, p)
    gap = logistic_l1_gap(z, y, lam, w, grad)
    polished = False
    last_polish = np.full(p, -2.0)
    no_ridge = np.zeros(p)
    it = 0
    while True:
        signs = np.sign(w)
        if gap / _LOG2 < _POLISH_GAP and not polished and np.any(signs != last_polish):
            last_polish = signs
            cand, ok = _polish(Xt, data, indices, indptr, sparse, y, lam, w)
            if ok:
                z2 = matvec(Xt, data, indices, indptr, sparse, cand, n)
                a2, grad2 = _gradient(Xt, data, indices, indptr, sparse, y, z2, p)
                gap2 = logistic_l1_gap(z2, y, lam, cand, grad2)
                if gap2 < gap:
                    w, z, a, grad, gap, polished = cand, z2, a2, grad2, gap2, True
        if gap / _LOG2 <= tol or it >= max_iter:
            break
        it += 1
        polished = False
        # Curvature weights clipped away from 0: any positive metric keeps the step a
        # descent direction, and extreme margins keep a finite model.
        clipped = np.minimum(np.maximum(a, 1e-12), 1.0 - 1e-12)
        rows = np.sqrt(clipped * (1.0 - clipped))
        target = rows * z + y * a / rows
        Xt_w, data_w = _weighted_design(Xt, data, indices, indptr, sparse, rows)
        inner_tol = max(min(1e-1 * gap / _LOG2, 1e-2), 1e-8)
        u = enet_cd(Xt_w, data_w, indices, indptr, sparse,
                    col_sq_norms(Xt_w, data_w, indices, indptr, sparse, p), target, lam,
                    no_ridge, w, inner_tol, np.int64(100_000))[0]
        d = u - w
        Xd = matvec(Xt, data, indices, indptr, sparse, d, n)
        # Backtracking on the energy along d.
        energy = _primal(z, y, lam, w)
        decrease = np.dot(grad, d) + np.dot(lam, np.abs(u)) - np.dot(lam, np.abs(w))
        t = 1.0
        for _ in range(40):
            cand = w + t * d
            z_new = z + t * Xd
            if _primal(z_new, y, lam, cand) <= energy + 1e-4 * t * decrease \
                    + 1e-15 * abs(energy):
                break
            t *= 0.5
        w, z = cand, z_new
        a, grad = _gradient(Xt, data, indices, indptr, sparse, y, z, p)
        gap = logistic_l1_gap(z, y, lam, w, grad)
    return w, it, gap / _LOG2, polished, grad


KERNELS = (logistic_l1_gap, logistic_l1_prox_newton)


def warmup(parallel=True):
    """Compile this module's kernels once on a tiny float64 instance, dense and sparse.

    ``parallel`` is unused: this module has no ``prange`` kernels.
    """
    X = np.array([[1.0, 0.5], [-0.5, 1.0], [0.3, -1.0]])
    y, w0, lam = np.array([1.0, -1.0, 1.0]), np.zeros(2), np.full(2, 0.1)
    for design in designs(X):
        logistic_l1_prox_newton(*design, y, lam, w0, 1e-8, 50)
        logistic_l1_gap(X @ w0, y, lam, w0, X.T @ y)
