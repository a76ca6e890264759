r"""Elastic net (and Lasso) by cyclic coordinate descent with working sets.

.. math:: w^* = \arg\min_w \frac{1}{2n}\|y - Xw\|^2 + \sum_j \lambda_{1,j}|w_j|
          + \frac12\sum_j \lambda_{2,j} w_j^2

Stopping rule: the duality gap ``P(w) - D(u)`` at the rescaled dual point ``u = r / n``
(``r = y - Xw``), with ``D(u) = u^T y - n||u||^2/2 - sum_j S(X_j^T u, lam1_j)^2 / (2 lam2_j)``
(``S`` soft-thresholding; for ``lam2_j = 0`` the term is the constraint
``|X_j^T u| <= lam1_j``, met by rescaling ``u``), relative to ``P(0) = ||y||^2/(2n)``.

Working sets (Massias, Gramfort, Salmon, "Celer", ICML 2018): coordinate descent runs on
the support plus the features closest to violating their dual constraint, the set doubling
each outer round. Once the gap is small, the smooth problem on the current support and
signs is solved exactly (a Cholesky solve) and kept if it lowers the gap: on a stable
support this gives ``w*`` to round-off instead of to the CD tolerance.
"""

import numpy as np
from numba import njit

from bilevel.solvers.assign import assign
from bilevel.solvers.cholesky import cholesky_solve
from bilevel.solvers.columns import col_axpy, col_dot, dense_columns, matvec
from bilevel.solvers.selection import smallest

__all__ = ["KERNELS", "designs", "enet_cd", "enet_gap", "warmup"]

# Relative gap below which the exact solve on the current support is attempted.
_POLISH_GAP = 1e-3
# Relative duality gaps below this are round-off (the gap is a difference of two energies).
_ROUNDOFF_GAP = 1e-14
# Largest support solved exactly (a k x k Cholesky factorization).
_POLISH_MAX = 2000
# Iterates combined by Anderson extrapolation.
_ANDERSON = 5


@njit(cache=True)
def _soft(z, t):
    if z > t:
        return z - t
    if z < -t:
        return z + t
    return 0.0


@njit(cache=True, inline="always")
def _signs_equal(x, signs):
    """Whether ``np.sign(x) == signs`` holds everywhere."""
    for j in range(x.shape[0]):
        if np.sign(x[j]) != signs[j]:
            return False
    return True


@njit(cache=True, inline="always")
def _support_size(w):
    count = 0
    for j in range(w.shape[0]):
        if w[j] != 0.0:
            count += 1
    return count


@njit(cache=True)
def enet_gap(w, r, corr, y, lam1, lam2):
    """Duality gap ``P(w) - D(u)`` given ``r = y - Xw`` and ``corr = X^T r / n``."""
    n = y.shape[0]
    primal = 0.5 * np.dot(r, r) / n
    scale = 1.0
    for j in range(w.shape[0]):
        primal += lam1[j] * abs(w[j]) + 0.5 * lam2[j] * w[j] * w[j]
        if lam2[j] == 0.0 and lam1[j] > 0.0:
            scale = max(scale, abs(corr[j]) / lam1[j])
    # u = r / (n * scale)
    dual = np.dot(r, y) / (n * scale) - 0.5 * np.dot(r, r) / (n * scale * scale)
    for j in range(w.shape[0]):
        if lam2[j] > 0.0:
            s = _soft(corr[j] / scale, lam1[j])
            dual -= s * s / (2.0 * lam2[j])
    return primal - dual


@njit(cache=True, inline="always")
def _min_norm_solve(G, r):
    """Least-norm solution of ``G d = r``, ``G`` symmetric positive semi-definite singular.

    Iterated Tikhonov: ``d <- d + (G + delta I)^{-1} (r - G d)``, ``delta = 1e-12 max G_jj``;
    on the range of ``G`` the error shrinks by ``delta / (sigma + delta)`` per step, and
    ``d`` stays in that range (iterated Tikhonov regularization: Engl, Hanke, Neubauer,
    "Regularization of Inverse Problems", 1996, chapter 5). Three steps shrink the error by
    ``1e-12`` where ``sigma > 1e-8 max G_jj``. For ``r`` outside the range (no solution)
    the part of ``d`` in the null space grows like ``1 / delta``: the caller's gap test
    then rejects the candidate.
    """
    k = r.shape[0]
    delta = 0.0
    for a in range(k):
        delta = max(delta, G[a, a])
    delta = 1e-12 * delta + 1e-300
    shifted = G.copy()
    for a in range(k):
        shifted[a, a] += delta
    d = np.zeros(k)
    for _ in range(3):
        step, ok = cholesky_solve(shifted, r - G @ d)
        if not ok:
            break
        d += step
    return d


@njit(cache=True, inline="always")
def _polish(Xt, data, indices, indptr, sparse, y, lam1, lam2, w):
    """Exact minimizer on the support and signs of ``w``, and the support's Hessian ``G``.

    A singular system (collinear active features: the minimizers form an affine set) is
    solved by the smallest correction of ``w`` that solves it (:func:`_min_norm_solve`), so
    the signs tend to survive; the caller keeps the result only if it lowers the duality
    gap.
    """
    n = y.shape[0]
    support = np.flatnonzero(w)
    k = support.shape[0]
    if k == 0 or k > _POLISH_MAX:
        return w, False, np.empty((0, 0))
    XS = dense_columns(Xt, data, indices, indptr, sparse, support, n)
    G = XS @ XS.T / n
    b = XS @ y / n
    for a in range(k):
        j = support[a]
        G[a, a] += lam2[j]
        b[a] -= lam1[j] * np.sign(w[j])
    wS, ok = cholesky_solve(G, b)
    if not ok:
        wS = w[support] + _min_norm_solve(G, b - G @ w[support])
    out = np.zeros_like(w)
    for a in range(k):
        out[support[a]] = wS[a]
    return out, True, G


@njit(cache=True, inline="always")
def _ws_primal(r, w, ws, lam1, lam2):
    value = 0.5 * np.dot(r, r) / r.shape[0]
    for j in ws:
        value += lam1[j] * abs(w[j]) + 0.5 * lam2[j] * w[j] * w[j]
    return value


@njit(cache=True, inline="always")
def _extrapolate(Xt, data, indices, indptr, sparse, y, lam1, lam2, ws, history, w, r):
    """Anderson extrapolation of the iterates in ``history``; kept if it lowers the energy.

    ``c = argmin ||U^T c||`` over ``sum(c) = 1`` with ``U`` the iterate differences
    (Bertrand, Massias, "Anderson acceleration of coordinate descent", AISTATS 2021).
    """
    m, k = history.shape[0] - 1, history.shape[1]
    # gram = U U^T with U the differences of consecutive iterates, regularized by its trace
    # (loops: the sizes are tiny, and numba's gemm, trace and eye compile for seconds)
    gram = np.empty((m, m))
    for a in range(m):
        for b in range(a + 1):
            value = 0.0
            for i in range(k):
                value += ((history[a + 1, i] - history[a, i])
                          * (history[b + 1, i] - history[b, i]))
            gram[a, b] = value
            gram[b, a] = value
    trace = 0.0
    for a in range(m):
        trace += gram[a, a]
    for a in range(m):
        gram[a, a] += 1e-10 * trace + 1e-300
    z, ok = cholesky_solve(gram, np.ones(m))
    total = 0.0
    for a in range(m):
        total += z[a]
    if not ok or total == 0.0 or not np.isfinite(total):
        return
    extrapolated = np.zeros(k)
    for a in range(m):
        coef = z[a] / total
        for i in range(k):
            extrapolated[i] += coef * history[a + 1, i]
    r_new = y.copy()
    for a in range(ws.shape[0]):
        if extrapolated[a] != 0.0:
            col_axpy(ws[a], -extrapolated[a], Xt, data, indices, indptr, sparse, r_new)
    w_new = w.copy()
    for a in range(ws.shape[0]):
        w_new[ws[a]] = extrapolated[a]
    if _ws_primal(r_new, w_new, ws, lam1, lam2) < _ws_primal(r, w, ws, lam1, lam2):
        assign(w, w_new)
        assign(r, r_new)


@njit(cache=True)
def _full_state(Xt, data, indices, indptr, sparse, y, lam1, lam2, w):
    n = y.shape[0]
    p = w.shape[0]
    r = y - matvec(Xt, data, indices, indptr, sparse, w, n)
    if sparse:
        corr = np.empty(p)
        for j in range(p):
            corr[j] = col_dot(j, Xt, data, indices, indptr, sparse, r) / n
    else:
        corr = Xt @ r / n
    return r, corr, enet_gap(w, r, corr, y, lam1, lam2)


@njit(cache=True)
def enet_cd(Xt, data, indices, indptr, sparse, sq_norms, y, lam1, lam2, w0, tol, max_epochs):
    """Minimize the elastic-net energy from ``w0`` (``lam1``, ``lam2`` per feature).

    ``sq_norms`` holds ``||X[:, j]||^2`` (:func:`~bilevel.solvers.columns.col_sq_norms`),
    computed once per design.

    Returns
    -------
    w : ndarray
        The minimizer.
    n_epochs : int
        Coordinate-descent passes over the working set.
    gap : float
        Final duality gap relative to ``P(0) = ||y||^2 / (2n)``.
    polished : bool
        Whether ``w`` comes from the exact solve on its support.
    corr : ndarray
        ``X^T (y - Xw) / n`` at the returned ``w``.
    gram : ndarray
        When polished, the Hessian on the support it was solved on,
        ``X_S^T X_S / n + diag(lam2_S)`` (``S`` increasing); else of shape (0, 0).
    """
    n = y.shape[0]
    p = w0.shape[0]
    norms2 = sq_norms / n
    denom = norms2 + lam2
    scale = max(0.5 * np.dot(y, y) / n, 1e-300)
    w = w0.copy()
    for j in range(p):
        if denom[j] == 0.0:
            w[j] = 0.0
    r, corr, gap = _full_state(Xt, data, indices, indptr, sparse, y, lam1, lam2, w)
    ws_size = min(p, max(10, 2 * _support_size(w)))
    epochs = 0
    polished = False
    gram = np.empty((0, 0))
    last_polish = np.full(p, -2.0)
    priority = np.empty(p)
    while True:
        signs = np.sign(w)
        final = gap / scale <= tol or epochs >= max_epochs
        # Polish when the gap is small and the signs differ from the last attempt; at the
        # end, polish once more: a gap at round-off still leaves the coefficients off by
        # ~sqrt(gap). A fresh candidate is kept if it lowers the gap; the final one also
        # if its gap is as small (to round-off) and its signs are those it was solved for.
        fresh = not _signs_equal(signs, last_polish)
        if not polished and gap / scale < _POLISH_GAP and (fresh or final):
            last_polish = signs
            candidate, ok, G = _polish(Xt, data, indices, indptr, sparse, y, lam1, lam2, w)
            same_signs = ok and _signs_equal(candidate, signs)
            if ok and (fresh or same_signs):
                r2, corr2, gap2 = _full_state(Xt, data, indices, indptr, sparse, y, lam1, lam2,
                                              candidate)
                if (fresh and gap2 < gap) or (final and same_signs
                                              and gap2 <= max(gap, _ROUNDOFF_GAP * scale)):
                    w, r, corr, gap, polished, gram = candidate, r2, corr2, gap2, True, G
        if gap / scale <= tol or epochs >= max_epochs:
            break
        # Working set: the support, then features by distance to their dual constraint.
        for j in range(p):
            if w[j] != 0.0:
                priority[j] = -np.inf
            elif denom[j] == 0.0:
                priority[j] = np.inf
            else:
                priority[j] = (lam1[j] - abs(corr[j])) / np.sqrt(norms2[j])
        ws = smallest(priority, ws_size)
        # Inner coordinate descent until the working-set gap falls below 0.3 * gap,
        # with Anderson extrapolation of the last _ANDERSON + 1 iterates.
        target = 0.3 * gap
        history = np.empty((_ANDERSON + 1, ws.shape[0]))
        for inner in range(max_epochs - epochs):
            epochs += 1
            for j in ws:
                if denom[j] == 0.0:
                    continue
                old = w[j]
                rho = col_dot(j, Xt, data, indices, indptr, sparse, r) / n + norms2[j] * old
                new = _soft(rho, lam1[j]) / denom[j]
                if new != old:
                    col_axpy(j, old - new, Xt, data, indices, indptr, sparse, r)
                    w[j] = new
            latest = history[inner % (_ANDERSON + 1)]
            for a in range(ws.shape[0]):
                latest[a] = w[ws[a]]
            if inner % (_ANDERSON + 1) == _ANDERSON:
                _extrapolate(Xt, data, indices, indptr, sparse, y, lam1, lam2, ws, history,
                             w, r)
                wsub = np.zeros(ws.shape[0])
                csub = np.empty(ws.shape[0])
                for a in range(ws.shape[0]):
                    wsub[a] = w[ws[a]]
                    csub[a] = col_dot(ws[a], Xt, data, indices, indptr, sparse, r) / n
                if enet_gap(wsub, r, csub, y, lam1[ws], lam2[ws]) <= target:
                    break
        polished = False
        r, corr, gap = _full_state(Xt, data, indices, indptr, sparse, y, lam1, lam2, w)
        ws_size = min(p, max(10, 2 * _support_size(w)))
    return w, epochs, gap / scale, polished, corr, gram


KERNELS = (enet_cd, enet_gap)


def designs(X):
    """Return the two layouts of a small design ``X`` the column kernels take: dense, CSC."""
    n, p = X.shape
    Xt, empty, no_index = np.ascontiguousarray(X.T), np.empty(0), np.empty(0, np.int32)
    return ((Xt, empty, no_index, no_index, False),
            (np.empty((0, 0)), X.ravel(order="F"), np.tile(np.arange(n, dtype=np.int32), p),
             np.arange(0, n * p + 1, n, dtype=np.int32), True))


def warmup(parallel=True):
    """Compile this module's kernels once on a tiny float64 instance, dense and sparse.

    ``parallel`` is unused: this module has no ``prange`` kernels.
    """
    X = np.array([[1.0, 0.5], [-0.5, 1.0], [0.3, -1.0]])
    y, w0, lam = np.array([1.0, -1.0, 1.0]), np.zeros(2), np.full(2, 0.1)
    for design in designs(X):
        enet_cd(*design, (X * X).sum(axis=0), y, lam, lam, w0, 1e-8, 100)
        enet_gap(w0, y, X.T @ y, y, lam, lam)
