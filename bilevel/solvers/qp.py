r"""Active-set solvers for inequality-constrained quadratic programs and NNLS, with VJPs.

.. math:: x^* = \arg\min_x \tfrac12 x^\top Q x + c^\top x \ \text{ s.t. } G x \le h
          \qquad\text{and}\qquad
          x^* = \arg\min_{x \ge 0} \tfrac12\|A x - b\|^2

Solvers:

- QP (``Q`` positive definite): the dual active-set method of Goldfarb and Idnani
  ("A numerically stable dual method for solving strictly convex quadratic programs",
  Math. Programming 27, 1983). It starts from the unconstrained minimizer, adds the most
  violated constraint at each outer step and drops constraints whose multiplier would turn
  negative; it needs no feasible start, keeps the active normals linearly independent and
  ends on an exact active set with its multipliers ``lam >= 0``
  (``Q x + c + G^T lam = 0``, ``lam_i (h - G x)_i = 0``). Dense recomputation of the
  projected quantities per step: O(n^2 k) work for k active constraints.
- NNLS: Lawson and Hanson's active-set algorithm (*Solving Least Squares Problems*,
  Prentice-Hall 1974, chapter 23), the algorithm of ``scipy.optimize.nnls``; multipliers
  ``lam = A^T (A x - b) >= 0`` on the zero set.

VJPs on the active set ``S`` (rows with slack ``<= active_tol max(1, ||x||_inf)``):
QP, with ``M = G_S Q^{-1} G_S^T``: ``w = M^{-1} G_S Q^{-1} v``,
``grad_c = -(Q^{-1} v - Q^{-1} G_S^T w)``, ``(grad_h)_S = w`` (0 elsewhere);
NNLS, with ``F`` the free (positive) set: ``grad_b = A_F (A_F^T A_F)^{-1} v_F``.

Batched ``prange`` variants end in ``_batched``, serial twins in ``_rows``.
"""

import numpy as np
from numba import njit, prange

from bilevel.solvers.assign import assign
from bilevel.solvers.least_squares import lstsq_qr
from bilevel.solvers.reductions import max_abs
from bilevel.solvers.serial import serial_twin

__all__ = ["KERNELS", "nnls_active_vjp", "nnls_active_vjp_batched", "nnls_active_vjp_rows",
           "nnls_lawson_hanson", "nnls_lawson_hanson_batched", "nnls_lawson_hanson_rows",
           "qp_active_vjp", "qp_active_vjp_batched", "qp_active_vjp_rows", "qp_goldfarb_idnani",
           "qp_goldfarb_idnani_batched", "qp_goldfarb_idnani_rows", "warmup"]

# Status codes of the QP solver.
QP_OPTIMAL, QP_INFEASIBLE, QP_MAX_ITER = 0, 1, 2


@njit(cache=True, inline="always")
def _chol_solve(M, B):
    """Solve ``M X = B`` for SPD ``M`` (k, k) and ``B`` (k, r); return ``(X, ok)``.

    ``ok`` is False when ``M`` is numerically singular (a pivot below 1e-13 of its diagonal).
    """
    k = M.shape[0]
    L = np.zeros((k, k))
    scale = 0.0
    for i in range(k):
        scale = max(scale, abs(M[i, i]))
    ok = True
    for j in range(k):
        d = M[j, j]
        for p in range(j):
            d -= L[j, p] * L[j, p]
        if not d > 1e-13 * max(scale, 1e-300):
            ok = False
            d = 1.0
        L[j, j] = np.sqrt(d)
        for i in range(j + 1, k):
            s = M[i, j]
            for p in range(j):
                s -= L[i, p] * L[j, p]
            L[i, j] = s / L[j, j]
    X = B.copy()
    r = B.shape[1]
    for col in range(r):
        for i in range(k):
            s = X[i, col]
            for p in range(i):
                s -= L[i, p] * X[p, col]
            X[i, col] = s / L[i, i]
        for i in range(k - 1, -1, -1):
            s = X[i, col]
            for p in range(i + 1, k):
                s -= L[p, i] * X[p, col]
            X[i, col] = s / L[i, i]
    return X, ok


@njit(cache=True, inline="always")
def _chol_inplace(M, k, L):
    """Cholesky factor of ``M[:k, :k]`` into ``L[:k, :k]``; False if not positive definite."""
    scale = 0.0
    for i in range(k):
        scale = max(scale, abs(M[i, i]))
    for j in range(k):
        d = M[j, j]
        for p in range(j):
            d -= L[j, p] * L[j, p]
        if not d > 1e-13 * max(scale, 1e-300):
            return False
        L[j, j] = np.sqrt(d)
        for i in range(j + 1, k):
            t = M[i, j]
            for p in range(j):
                t -= L[i, p] * L[j, p]
            L[i, j] = t / L[j, j]
    return True


@njit(cache=True, inline="always")
def _chol_apply(L, k, b, out):
    """``out = (L L^T)^{-1} b`` on the leading ``k`` entries."""
    for i in range(k):
        t = b[i]
        for p in range(i):
            t -= L[i, p] * out[p]
        out[i] = t / L[i, i]
    for i in range(k - 1, -1, -1):
        t = out[i]
        for p in range(i + 1, k):
            t -= L[p, i] * out[p]
        out[i] = t / L[i, i]


@njit(cache=True)
def qp_goldfarb_idnani(Qinv, c, G, h, tol, max_iter):
    """Solve ``min 1/2 x^T Q x + c^T x`` s.t. ``G x <= h`` (Q SPD), given ``Q^{-1}``.

    Goldfarb-Idnani's dual method keeps ``QN = Q^{-1} N`` (columns of the active normals
    ``n_j = -G_j``) and ``M = N^T Q^{-1} N`` up to date as constraints enter and leave, so
    that a step costs O(n^2 + n k + k^3) in plain loops. The caller inverts ``Q`` once per
    problem (``np.linalg.inv``, outside numba: numba's LAPACK bindings would compile for
    seconds in every new process).

    Parameters
    ----------
    Qinv : ndarray, shape (n, n), the inverse of a symmetric positive definite Q
    c : ndarray, shape (n,)
    G : ndarray, shape (m, n)
    h : ndarray, shape (m,)
    tol : float
        Relative feasibility tolerance.
    max_iter : int
        Cap on active-set changes.

    Returns
    -------
    x : ndarray, shape (n,)
    lam : ndarray, shape (m,)
        Multipliers, >= 0, zero off the active set.
    n_iter : int
    status : int
        0 optimal, 1 infeasible, 2 iteration cap reached.
    """
    n, m = c.shape[0], G.shape[0]
    x = np.zeros(n)
    for i in range(n):
        t = 0.0
        for j in range(n):
            t -= Qinv[i, j] * c[j]
        x[i] = t
    lam = np.zeros(m)
    gnorm = np.zeros(m)
    for i in range(m):
        for j in range(n):
            gnorm[i] += abs(G[i, j])
    act = np.empty(n, np.int64)
    u = np.zeros(n + 1)
    QN = np.zeros((n, n))
    M = np.zeros((n, n))
    L = np.zeros((n, n))
    qn = np.zeros(n)
    z = np.zeros(n)
    rhs = np.zeros(n)
    r = np.zeros(n)
    npv = np.zeros(n)
    k = 0
    n_iter = 0
    status = QP_OPTIMAL
    # x is updated from the unconstrained minimizer -Q^{-1} c: its rounding error is
    # ~ eps |Q^{-1} c|, so violations are judged relative to that scale too (and to h's),
    # never to an absolute 1: the result is scale-free and large c is not "infeasible".
    x0norm = 0.0
    for i in range(n):
        x0norm = max(x0norm, abs(x[i]))
    while True:
        xnorm = x0norm
        for i in range(n):
            xnorm = max(xnorm, abs(x[i]))
        p = -1
        worst = 0.0
        for i in range(m):
            s = h[i]
            for j in range(n):
                s -= G[i, j] * x[j]
            if s < -tol * (abs(h[i]) + gnorm[i] * xnorm):
                score = s / max(1.0, gnorm[i])
                if score < worst:
                    worst = score
                    p = i
        if p < 0:
            break
        up = 0.0
        for j in range(n):
            npv[j] = -G[p, j]
        for i in range(n):
            t = 0.0
            for j in range(n):
                t += Qinv[i, j] * npv[j]
            qn[i] = t
        nqn = 0.0
        for i in range(n):
            nqn += npv[i] * qn[i]
        while True:
            n_iter += 1
            if n_iter > max_iter:
                status = QP_MAX_ITER
                break
            # r = M^{-1} N^T Q^{-1} n_p, z = Q^{-1} n_p - Q^{-1} N r
            for j in range(k):
                t = 0.0
                for i in range(n):
                    t += QN[i, j] * npv[i]
                rhs[j] = t
            if k > 0:
                _chol_inplace(M, k, L)
                _chol_apply(L, k, rhs, r)
            for i in range(n):
                t = qn[i]
                for j in range(k):
                    t -= QN[i, j] * r[j]
                z[i] = t
            ztn = 0.0
            for i in range(n):
                ztn += z[i] * npv[i]
            t1 = np.inf
            drop = -1
            for j in range(k):
                if r[j] > 0.0:
                    ratio = u[j] / r[j]
                    if ratio < t1:
                        t1 = ratio
                        drop = j
            sp = h[p]                   # n_p^T x - b_p: the slack, negative while violated
            for j in range(n):
                sp -= G[p, j] * x[j]
            t2 = np.inf
            if ztn > 1e-14 * nqn:
                t2 = -sp / ztn
            if t1 == np.inf and t2 == np.inf:
                status = QP_INFEASIBLE
                break
            t = t1 if t2 == np.inf else min(t1, t2)
            if t2 != np.inf:
                for i in range(n):
                    x[i] += t * z[i]
            for j in range(k):
                u[j] -= t * r[j]
            up += t
            if t2 <= t1:
                # add p: QN gains Q^{-1} n_p, M a row and a column
                for i in range(n):
                    QN[i, k] = qn[i]
                for j in range(k):
                    M[k, j] = rhs[j]
                    M[j, k] = rhs[j]
                M[k, k] = nqn
                act[k] = p
                u[k] = up
                k += 1
                break
            # drop constraint `drop`: shift its column of QN, its row and column of M
            for j in range(drop, k - 1):
                act[j] = act[j + 1]
                u[j] = u[j + 1]
                for i in range(n):
                    QN[i, j] = QN[i, j + 1]
            for a in range(drop, k - 1):
                for b in range(k):
                    M[a, b] = M[a + 1, b]
            for b in range(drop, k - 1):
                for a in range(k - 1):
                    M[a, b] = M[a, b + 1]
            k -= 1
        if status != QP_OPTIMAL:
            break
    for j in range(k):
        lam[act[j]] = max(u[j], 0.0)
    return x, lam, n_iter, status


@njit(cache=True, parallel=True)
def qp_goldfarb_idnani_batched(Qinv, C, G, H, tol, max_iter):
    """:func:`qp_goldfarb_idnani` on every row of ``C`` (b, n) and ``H`` (b, m).

    Returns ``X`` (b, n), ``Lam`` (b, m), ``n_iter`` (b,) and ``status`` (b,).
    """
    b, n = C.shape
    m = G.shape[0]
    X = np.empty((b, n))
    Lam = np.empty((b, m))
    iters = np.empty(b, np.int64)
    status = np.empty(b, np.int64)
    for row in prange(b):
        x, lam, it, st = qp_goldfarb_idnani(Qinv, C[row], G, H[row], tol, max_iter)
        assign(X[row], x)
        assign(Lam[row], lam)
        iters[row] = it
        status[row] = st
    return X, Lam, iters, status


qp_goldfarb_idnani_rows = serial_twin(qp_goldfarb_idnani_batched, "qp_goldfarb_idnani_rows")


@njit(cache=True)
def qp_active_vjp(Qinv, G, h, c, x, v, active_tol):
    """Active-set VJP of one QP; return ``(grad_c, grad_h, margin, ok)``."""
    n, m = x.shape[0], G.shape[0]
    xnorm = 0.0                 # the scale of x and h (relative: (c c, c h) gives c x*)
    for i in range(n):
        xnorm = max(xnorm, abs(x[i]))
    for i in range(m):
        xnorm = max(xnorm, abs(h[i]))
    if xnorm == 0.0:
        xnorm = 1.0
    slack = h - G @ x
    k = 0
    for i in range(m):
        if slack[i] <= active_tol * xnorm:
            k += 1
    idx = np.empty(k, np.int64)
    k = 0
    for i in range(m):
        if slack[i] <= active_tol * xnorm:
            idx[k] = i
            k += 1
    qv = Qinv @ v
    grad_h = np.zeros(m)
    margin = np.inf
    ok = True
    if k > n:
        ok = False
    if k == 0 or not ok:
        grad_c = -qv
    else:
        GA = np.empty((k, n))
        for j in range(k):
            assign(GA[j], G[idx[j]])
        QG = Qinv @ GA.T
        M = GA @ QG
        rhs = np.empty((k, 2))
        assign(rhs[:, 0], GA @ qv)
        assign(rhs[:, 1], GA @ (x + Qinv @ c))     # G_S Q^{-1} (Q x + c)
        sol, ok = _chol_solve(M, rhs)
        w = sol[:, 0].copy()
        grad_c = -(qv - QG @ w)
        gscale = 0.0
        gr = np.abs(x + Qinv @ c)           # scale of the multipliers
        for i in range(n):
            gscale = max(gscale, gr[i])
        if gscale == 0.0:
            gscale = 1.0
        for j in range(k):
            grad_h[idx[j]] = w[j]
            margin = min(margin, -sol[j, 1] / gscale)
    for i in range(m):
        if slack[i] > active_tol * xnorm:
            margin = min(margin, slack[i] / xnorm)
    return grad_c, grad_h, margin, ok


@njit(cache=True, parallel=True)
def qp_active_vjp_batched(Qinv, G, C, H, X, V, active_tol):
    """Active-set VJPs of QP rows: ``(grad_C (b, n), grad_H (b, m), margins (b,), ok (b,))``.

    ``margins`` is the strict-complementarity margin of each row (smallest active
    multiplier and inactive slack, relative); ``ok`` is False where the active normals are
    linearly dependent (the KKT system is singular).
    """
    b, n = C.shape
    m = G.shape[0]
    GC = np.empty((b, n))
    GH = np.empty((b, m))
    margins = np.empty(b)
    ok = np.empty(b, np.bool_)
    for row in prange(b):
        gc, gh, mg, good = qp_active_vjp(Qinv, G, H[row], C[row], X[row], V[row], active_tol)
        assign(GC[row], gc)
        assign(GH[row], gh)
        margins[row] = mg
        ok[row] = good
    return GC, GH, margins, ok


qp_active_vjp_rows = serial_twin(qp_active_vjp_batched, "qp_active_vjp_rows")


@njit(cache=True)
def nnls_lawson_hanson(A, b, tol, max_iter):
    """Solve ``min_{x >= 0} 1/2 ||A x - b||^2`` by Lawson-Hanson.

    Parameters
    ----------
    A : ndarray, shape (m, n)
    b : ndarray, shape (m,)
    tol : float
        Dual tolerance relative to the data: stop when ``A^T (b - A x) <= tol max_i |b_i|``
        off the passive set (scale-free: ``x*(c b) = c x*(b)``).
    max_iter : int
        Cap on inner iterations.

    Returns
    -------
    x : ndarray, shape (n,)
    lam : ndarray, shape (n,)
        Multipliers ``A^T (A x - b)`` on the zero set (>= 0), 0 on the passive set.
    n_iter : int
    converged : bool
    """
    m, n = A.shape
    x = np.zeros(n)
    passive = np.zeros(n, np.bool_)
    w = A.T @ (b - A @ x)
    n_iter = 0
    converged = True
    bscale = 0.0
    for i in range(m):
        bscale = max(bscale, abs(b[i]))
    while True:
        j = -1
        best = tol * bscale
        for i in range(n):
            if not passive[i] and w[i] > best:
                best = w[i]
                j = i
        if j < 0:
            break
        passive[j] = True
        while True:
            n_iter += 1
            if n_iter > max_iter:
                converged = False
                break
            k = 0
            for i in range(n):
                if passive[i]:
                    k += 1
            idx = np.empty(k, np.int64)
            k = 0
            for i in range(n):
                if passive[i]:
                    idx[k] = i
                    k += 1
            AP = np.empty((m, k))
            for q in range(k):
                assign(AP[:, q], A[:, idx[q]])
            sP = lstsq_qr(AP, b)
            if sP.min() > 0.0:
                x[:] = 0.0
                for q in range(k):
                    x[idx[q]] = sP[q]
                break
            alpha = np.inf
            hit = -1
            for q in range(k):
                if sP[q] <= 0.0:
                    xi = x[idx[q]]
                    ratio = xi / (xi - sP[q])
                    if ratio < alpha:
                        alpha = ratio
                        hit = idx[q]
            for q in range(k):
                i = idx[q]
                x[i] += alpha * (sP[q] - x[i])
            x[hit] = 0.0
            xmax = max_abs(x)
            for q in range(k):
                i = idx[q]
                if x[i] <= 1e-15 * xmax:
                    x[i] = 0.0
                    passive[i] = False
        if not converged:
            break
        w = A.T @ (b - A @ x)
    lam = np.zeros(n)
    for i in range(n):
        if not passive[i]:
            lam[i] = max(-w[i], 0.0)
    return x, lam, n_iter, converged


@njit(cache=True, parallel=True)
def nnls_lawson_hanson_batched(A, B, tol, max_iter):
    """:func:`nnls_lawson_hanson` on every row of ``B`` (r, m): ``X``, ``Lam``, iters, ok."""
    r = B.shape[0]
    n = A.shape[1]
    X = np.empty((r, n))
    Lam = np.empty((r, n))
    iters = np.empty(r, np.int64)
    ok = np.empty(r, np.bool_)
    for row in prange(r):
        x, lam, it, good = nnls_lawson_hanson(A, B[row], tol, max_iter)
        assign(X[row], x)
        assign(Lam[row], lam)
        iters[row] = it
        ok[row] = good
    return X, Lam, iters, ok


nnls_lawson_hanson_rows = serial_twin(nnls_lawson_hanson_batched, "nnls_lawson_hanson_rows")


@njit(cache=True)
def nnls_active_vjp(A, b, x, v, active_tol):
    """``grad_b = A_F (A_F^T A_F)^{-1} v_F``; return ``(grad_b, margin, ok)``."""
    m, n = A.shape
    xnorm = 0.0                 # scales of x and of the gradient, relative (x*(c b) = c x*(b))
    for i in range(n):
        xnorm = max(xnorm, abs(x[i]))
    if xnorm == 0.0:
        xnorm = 1.0
    k = 0
    for i in range(n):
        if x[i] > active_tol * xnorm:
            k += 1
    idx = np.empty(k, np.int64)
    k = 0
    for i in range(n):
        if x[i] > active_tol * xnorm:
            idx[k] = i
            k += 1
    grad = np.zeros(m)
    margin = np.inf
    ok = True
    if k > 0:
        AF = np.empty((m, k))
        for q in range(k):
            assign(AF[:, q], A[:, idx[q]])
            margin = min(margin, x[idx[q]] / xnorm)
        rhs = np.empty((k, 1))
        for q in range(k):
            rhs[q, 0] = v[idx[q]]
        sol, ok = _chol_solve(AF.T @ AF, rhs)
        grad = AF @ sol[:, 0].copy()
    gr = A.T @ (A @ x - b)
    gscale = 0.0
    for i in range(n):
        gscale = max(gscale, abs(gr[i]))
    if gscale == 0.0:
        gscale = 1.0
    for i in range(n):
        if x[i] <= active_tol * xnorm:
            margin = min(margin, gr[i] / gscale)
    return grad, margin, ok


@njit(cache=True, parallel=True)
def nnls_active_vjp_batched(A, B, X, V, active_tol):
    """Active-set VJPs of NNLS rows: ``(grad_B (r, m), margins (r,), ok (r,))``."""
    r, m = B.shape
    G = np.empty((r, m))
    margins = np.empty(r)
    ok = np.empty(r, np.bool_)
    for row in prange(r):
        g, mg, good = nnls_active_vjp(A, B[row], X[row], V[row], active_tol)
        assign(G[row], g)
        margins[row] = mg
        ok[row] = good
    return G, margins, ok


nnls_active_vjp_rows = serial_twin(nnls_active_vjp_batched, "nnls_active_vjp_rows")


KERNELS = (nnls_active_vjp, nnls_active_vjp_batched, nnls_active_vjp_rows, nnls_lawson_hanson,
           nnls_lawson_hanson_batched, nnls_lawson_hanson_rows, qp_active_vjp,
           qp_active_vjp_batched, qp_active_vjp_rows, qp_goldfarb_idnani,
           qp_goldfarb_idnani_batched, qp_goldfarb_idnani_rows)


def warmup(parallel=True):
    """Compile this module's kernels once on a tiny float64 instance.

    ``parallel=False`` leaves the ``prange`` kernels (``*_batched``) to their first use.
    """
    Q = np.array([[2.0, 0.5], [0.5, 1.0]])
    G = np.array([[1.0, 1.0], [-1.0, 0.0]])
    c, h = np.array([-1.0, -1.0]), np.array([0.5, 0.0])
    C, H = np.stack([c, -c]), np.stack([h, h])
    Qinv = np.linalg.inv(Q)
    x = qp_goldfarb_idnani(Qinv, c, G, h, 1e-12, 50)[0]
    qp_active_vjp(Qinv, G, h, c, x, c, 1e-9)
    for solve, vjp in ((qp_goldfarb_idnani_rows, qp_active_vjp_rows),
                       (qp_goldfarb_idnani_batched, qp_active_vjp_batched))[:1 + parallel]:
        X = solve(Qinv, C, G, H, 1e-12, 50)[0]
        vjp(Qinv, G, C, H, X, C, 1e-9)
    A = np.array([[1.0, 0.5], [0.2, 1.0], [0.3, -0.4]])
    b = np.array([1.0, -1.0, 0.5])
    B = np.stack([b, -b])
    x = nnls_lawson_hanson(A, b, 1e-12, 50)[0]
    nnls_active_vjp(A, b, x, b, 1e-9)
    for solve, vjp in ((nnls_lawson_hanson_rows, nnls_active_vjp_rows),
                       (nnls_lawson_hanson_batched, nnls_active_vjp_batched))[:1 + parallel]:
        X = solve(A, B, 1e-12, 50)[0]
        vjp(A, B, X, B, 1e-9)
