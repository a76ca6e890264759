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


@njit(cache=True)
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


@njit(cache=True)
def _polish(Xt, data, indices, indptr, sparse, y, lam1, lam2, w):
    """Exact minimizer on the support and signs of ``w``.

    A singular system (collinear active features: the minimizers form an affine set) is
    solved by the smallest correction of ``w`` that solves it (:func:`_min_norm_solve`), so
    the signs tend to survive; the caller keeps the result only if it lowers the duality
    gap.
    """
    n = y.shape[0]
    support = np.flatnonzero(w)
    k = support.shape[0]
    if k == 0 or k > _POLISH_MAX:
        return w, False
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
    return out, True


@njit(cache=True)
def _ws_primal(r, w, ws, lam1, lam2):
    value = 0.5 * np.dot(r, r) / r.shape[0]
    for j in ws:
        value += lam1[j] * abs(w[j]) + 0.5 * lam2[j] * w[j] * w[j]
    return value


@njit(cache=True)
def _extrapolate(Xt, data, indices, indptr, sparse, y, lam1, lam2, ws, history, w, r):
    """Anderson extrapolation of the iterates in ``history``; kept if it lowers the energy.

    ``c = argmin ||U^T c||`` over ``sum(c) = 1`` with ``U`` the iterate differences
    (Bertrand, Massias, "Anderson acceleration of coordinate descent", AISTATS 2021).
    """
    diffs = history[1:] - history[:-1]
    gram = diffs @ diffs.T
    gram += 1e-10 * np.trace(gram) * np.eye(gram.shape[0]) + 1e-300
    z, ok = cholesky_solve(gram, np.ones(gram.shape[0]))
    total = z.sum()
    if not ok or total == 0.0 or not np.isfinite(total):
        return
    coef = z / total
    extrapolated = coef @ history[1:]
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
    ws_size = min(p, max(10, 2 * np.count_nonzero(w)))
    epochs = 0
    polished = False
    last_polish = np.full(p, -2.0)
    priority = np.empty(p)
    while True:
        signs = np.sign(w)
        # Polish when the gap is small (also once the tolerance is met: a gap of eps means
        # coefficients off by ~sqrt(eps)) and the signs differ from the last attempt.
        if gap / scale < _POLISH_GAP and not polished and np.any(signs != last_polish):
            last_polish = signs
            candidate, ok = _polish(Xt, data, indices, indptr, sparse, y, lam1, lam2, w)
            if ok:
                r2, corr2, gap2 = _full_state(Xt, data, indices, indptr, sparse, y, lam1, lam2,
                                              candidate)
                if gap2 < gap:
                    w, r, corr, gap, polished = candidate, r2, corr2, gap2, True
        if gap / scale <= tol or epochs >= max_epochs:
            if not polished and gap / scale < _POLISH_GAP:
                # A final exact solve on the support: a gap at round-off still leaves the
                # coefficients off by ~sqrt(gap); keep it if its gap is as small (to
                # round-off) and its signs are those it was solved for.
                candidate, ok = _polish(Xt, data, indices, indptr, sparse, y, lam1, lam2, w)
                if ok and np.all(np.sign(candidate) == signs):
                    r2, corr2, gap2 = _full_state(Xt, data, indices, indptr, sparse, y, lam1,
                                                  lam2, candidate)
                    if gap2 <= max(gap, _ROUNDOFF_GAP * scale):
                        w, r, corr, gap, polished = candidate, r2, corr2, gap2, True
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
        ws_size = min(p, max(10, 2 * np.count_nonzero(w)))
    return w, epochs, gap / scale, polished, corr


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
