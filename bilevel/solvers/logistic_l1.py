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

The outer loop is NumPy around the jitted
:func:`~bilevel.solvers.coordinate_descent.enet_cd`, which does all the per-coordinate
work: a few outer steps cost a few NumPy calls each, while a jitted outer loop would link a
second copy of ``enet_cd`` and its callees into its own machine code, about 20 s of
compilation in every new cache for no speed (the Lasso shares the one ``enet_cd``).
"""

import numpy as np

from bilevel._threads import serial_blas
from bilevel.solvers.cholesky import cholesky_solve
from bilevel.solvers.coordinate_descent import designs, enet_cd

__all__ = ["KERNELS", "logistic_l1_prox_newton", "warmup"]

_POLISH_GAP = 1e-3
_POLISH_MAX = 2000
_LOG2 = np.log(2.0)
_TINY = np.finfo(np.float64).tiny
_BELOW_ONE = 1.0 - np.finfo(np.float64).epsneg

#: No jitted kernel of its own: the subproblems run in coordinate_descent's.
KERNELS = ()


class _Columns:
    """A design ``X`` (n, p) with the products the outer loop needs.

    Built from the column kernels' ``(Xt, data, indices, indptr, sparse)``
    (:mod:`bilevel.solvers.columns`).
    """

    def __init__(self, Xt, data, indices, indptr, sparse, n, p):
        self.Xt, self.data, self.indices, self.indptr = Xt, data, indices, indptr
        self.sparse, self.n, self.p = sparse, n, p
        if sparse:
            import scipy.sparse

            self.X = scipy.sparse.csc_matrix((data, indices, indptr), shape=(n, p))
            self.col_of_entry = np.repeat(np.arange(p), np.diff(indptr))
        else:
            self.X = Xt.T

    def matvec(self, w):
        """``X @ w`` over the non-zero entries of ``w``."""
        nonzero = np.flatnonzero(w)
        return self.columns(nonzero) @ w[nonzero]

    def rmatvec(self, r):
        """``X^T r``."""
        return self.X.T @ r

    def columns(self, cols):
        """Return the dense columns ``X[:, cols]``, shape (n, len(cols))."""
        return self.X[:, cols].toarray() if self.sparse else self.Xt[cols].T

    def scaled_rows(self, rows):
        """Return the kernel arguments and squared column norms of ``diag(rows) X``."""
        if self.sparse:
            data = self.data * rows[self.indices]
            sq_norms = np.bincount(self.col_of_entry, weights=data * data, minlength=self.p)
            return (self.Xt, data, self.indices, self.indptr, True), sq_norms
        Xt = self.Xt * rows
        return (Xt, self.data, self.indices, self.indptr, False), np.einsum("ij,ij->i", Xt, Xt)


def _weights(z, y):
    """``a_i = sigmoid(-y_i z_i)``, without overflow."""
    return np.exp(-np.logaddexp(0.0, y * z))


def _data_term(z, y):
    """``mean_i log(1 + exp(-y_i z_i))``."""
    return np.logaddexp(0.0, -y * z).sum() / y.shape[0]


def _primal(z, y, lam, w):
    return _data_term(z, y) + np.dot(lam, np.abs(w))


def _state(design, y, lam, w, z):
    """Return ``a``, the data term's gradient, the energy and the duality gap at ``w``.

    ``z = Xw`` are the margins, ``a = sigmoid(-y z)`` and the gradient ``X^T(-y a)/n``; the
    gap is the module docstring's.
    """
    n = y.shape[0]
    a = _weights(z, y)
    grad = design.rmatvec(-y * a) / n
    energy = _primal(z, y, lam, w)
    t = a / max(1.0, np.max(np.abs(grad) / lam))
    # Binary entropy H(t) = -t log t - (1 - t) log(1 - t), 0 at t = 0 and t = 1.
    dual = -(t @ np.log(np.maximum(t, _TINY))
             + (1.0 - t) @ np.log1p(-np.minimum(t, _BELOW_ONE))) / n
    return a, grad, energy, energy - dual


def _polish(design, y, lam, w):
    """Newton's method on the support ``S`` and signs ``s`` of ``w``.

    It minimizes the smooth energy of the support, ``mean softplus(-y * X_S w_S) +
    (lam_S s)^T w_S``, which equals the l1 energy on the orthant of ``s``; its minimizer is
    ``w*_S`` when the support is right. ``ok`` is False when it leaves that orthant (a wrong
    support) or the Hessian is singular.
    """
    n = y.shape[0]
    support = np.flatnonzero(w)
    k = support.shape[0]
    if k == 0 or k > _POLISH_MAX:
        return w, False
    XS = design.columns(support)
    wS = w[support]
    signs = np.sign(wS)
    linear = lam[support] * signs
    z = XS @ wS
    energy = _data_term(z, y) + np.dot(linear, wS)
    for _ in range(30):
        a = _weights(z, y)
        g = XS.T @ (-y * a) / n + linear
        if np.max(np.abs(g)) < 1e-15:
            break
        Xd = XS * np.sqrt(a * (1.0 - a) / n)[:, None]
        step, ok = cholesky_solve(Xd.T @ Xd, g)
        if not ok:
            return w, False
        t = 1.0
        for _ in range(40):
            cand = wS - t * step
            z_new = XS @ cand
            e_new = _data_term(z_new, y) + np.dot(linear, cand)
            if e_new <= energy - 1e-4 * t * np.dot(g, step) + 1e-15 * abs(energy):
                break
            t *= 0.5
        decrease = energy - e_new
        wS, z, energy = cand, z_new, e_new
        if decrease <= 1e-16 * abs(energy):
            break
    if np.any(np.sign(wS) != signs):
        return w, False
    out = np.zeros_like(w)
    out[support] = wS
    return out, True


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
    and the data term's gradient at ``w``. BLAS runs on one thread: its products here are
    vector-sized, and idle OpenBLAS threads spinning between them slow the kernel down
    (3x on 2 busy cores).
    """
    with serial_blas():
        return _prox_newton(Xt, data, indices, indptr, sparse, y, lam, w0, tol, max_iter)


def _prox_newton(Xt, data, indices, indptr, sparse, y, lam, w0, tol, max_iter):
    n, p = y.shape[0], w0.shape[0]
    design = _Columns(Xt, data, indices, indptr, sparse, n, p)
    w = w0.copy()
    z = design.matvec(w)
    a, grad, energy, gap = _state(design, y, lam, w, z)
    polished = False
    last_polish = np.full(p, -2.0)
    no_ridge = np.zeros(p)
    it = 0
    while True:
        signs = np.sign(w)
        if gap / _LOG2 < _POLISH_GAP and not polished and np.any(signs != last_polish):
            last_polish = signs
            cand, ok = _polish(design, y, lam, w)
            if ok:
                z2 = design.matvec(cand)
                state = _state(design, y, lam, cand, z2)
                if state[3] < gap:
                    w, z, polished = cand, z2, True
                    a, grad, energy, gap = state
        if gap / _LOG2 <= tol or it >= max_iter:
            break
        it += 1
        polished = False
        # Curvature weights clipped away from 0: any positive metric keeps the step a
        # descent direction, and extreme margins keep a finite model.
        clipped = np.clip(a, 1e-12, 1.0 - 1e-12)
        rows = np.sqrt(clipped * (1.0 - clipped))
        target = rows * z + y * a / rows
        weighted, sq_norms = design.scaled_rows(rows)
        inner_tol = max(min(1e-1 * gap / _LOG2, 1e-2), 1e-8)
        u = enet_cd(*weighted, sq_norms, target, lam, no_ridge, w, inner_tol,
                    np.int64(100_000))[0]
        d = u - w
        Xd = design.matvec(d)
        # Backtracking on the energy along d.
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
        a, grad, energy, gap = _state(design, y, lam, w, z)
    return w, it, gap / _LOG2, polished, grad


def warmup(parallel=True):
    """Run the solver once on a tiny instance, dense and sparse.

    It compiles (or loads) :func:`~bilevel.solvers.coordinate_descent.enet_cd`, the one
    kernel it calls.

    ``parallel`` is unused: there is no ``prange`` kernel here.
    """
    X = np.array([[1.0, 0.5], [-0.5, 1.0], [0.3, -1.0]])
    y, w0, lam = np.array([1.0, -1.0, 1.0]), np.zeros(2), np.full(2, 0.1)
    for design in designs(X):
        logistic_l1_prox_newton(*design, y, lam, w0, 1e-8, 50)
