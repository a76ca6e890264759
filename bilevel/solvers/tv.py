r"""1-D total-variation denoising of orders 1-3, with l1 or l2 penalty.

.. math:: y^* = \arg\min_y \tfrac12\|y - s\|^2 + \lambda\|D^k y\|_1
          \qquad\text{or}\qquad \tfrac12\|y - s\|^2 + \tfrac{\lambda}{2}\|D^k y\|^2

with ``D^k`` the k-th forward difference, shape ``(n - k, n)``. Solvers:

- order 1, l1: Condat's direct algorithm, exact in O(n) (L. Condat, "A direct algorithm
  for 1D total variation denoising", IEEE Signal Process. Lett. 2013);
- any order, l1: projected Newton on the dual box QP
  ``min_{|u| <= lam} 1/2 ||s - D^T u||^2`` (Bertsekas, SIAM J. Control Optim. 1982), with
  banded LDL^T solves on the free set; finite identification of the active set makes it
  exact to round-off; stopping rule: the duality gap;
- l2: the banded system ``(I + lam D^T D) y = s``.

Every kernel has a batched ``prange`` variant over the rows of ``s`` and its serial twin
(``*_rows``) for small batches.
"""

import numpy as np
from numba import njit, prange

from bilevel.solvers.assign import assign
from bilevel.solvers.reductions import max_abs, sum_abs
from bilevel.solvers.serial import serial_twin

__all__ = ["KERNELS", "band_ldlt", "band_solve", "banded_solve", "diff_adjoint", "diff_forward",
           "diff_gram_band", "tv1d_condat", "tv1d_condat_batched", "tv1d_condat_rows",
           "tv1d_segments_vjp", "tv1d_segments_vjp_batched", "tv1d_segments_vjp_rows",
           "tv_dual_from_primal", "tv_dual_newton",
           "tv_dual_newton_batched", "tv_dual_newton_rows", "tv_l1_gap", "tv_l2", "tv_l2_band",
           "tv_l2_batched", "tv_l2_rows", "tv_l2_vjp", "tv_l2_vjp_batched", "tv_l2_vjp_rows",
           "tv_manifold", "tv_manifold_vjp", "tv_manifold_vjp_batched", "tv_manifold_vjp_rows",
           "tv_project", "warmup"]


@njit(cache=True)
def diff_forward(y, order):
    """``D^k y``: ``order`` forward differences ``y[i+1] - y[i]``."""
    out = y.copy()
    for _ in range(order):
        out = out[1:] - out[:-1]
    return out


@njit(cache=True)
def diff_adjoint(u, order):
    """``(D^k)^T u``: the adjoint of :func:`diff_forward`."""
    out = u.copy()
    for _ in range(order):
        grown = np.zeros(out.shape[0] + 1)
        for i in range(out.shape[0]):
            grown[i + 1] += out[i]
            grown[i] -= out[i]
        out = grown
    return out


@njit(cache=True)
def _stencil(order):
    """Coefficients ``c_m`` of one row of ``D^k`` (``(D^k y)_i = sum_m c_m y_{i+m}``)."""
    c = np.zeros(order + 1)
    c[0] = 1.0
    for _ in range(order):
        nxt = np.zeros(order + 1)
        for m in range(order + 1):
            nxt[m] = (c[m - 1] if m > 0 else 0.0) - c[m]
        c = nxt
    return c


@njit(cache=True)
def diff_gram_band(order):
    """Return ``T[d] = (D D^T)_{i, i+d}``, the Toeplitz band of ``D^k (D^k)^T``."""
    c = _stencil(order)
    T = np.zeros(order + 1)
    for d in range(order + 1):
        for m in range(order + 1 - d):
            T[d] += c[m] * c[m + d]
    return T


@njit(cache=True)
def band_ldlt(A, rows):
    """Overwrite the first ``rows`` rows of ``A`` by their ``L D L^T`` factor, in place.

    ``A`` holds a symmetric banded matrix ``M`` in lower band storage,
    ``A[i, d] = M[i, i - d]`` for ``d = 0..k``; the factor takes the same storage:
    ``L[i, i - d]`` for ``d >= 1`` (``L`` unit lower triangular) and ``1 / D[i, i]`` for
    ``d = 0``. No square roots, and one division per row: the factorization's and the
    substitutions' sequential chains carry multiplications. Returns False at a pivot <= 0
    (``M`` not positive definite in float64; the rows from there on are then no factor).

    Row ``i`` first holds ``E[i, j] = L[i, j] D[j, j] = M[i, j] - sum_{c < j} E[i, c] L[j, c]``
    (from the band's far end inwards, so that the ``E[i, c]`` it needs are ready), then
    ``D[i, i] = M[i, i] - sum_j E[i, j] L[i, j]``, then ``L[i, j] = E[i, j] / D[j, j]``.
    """
    k = A.shape[1] - 1
    for i in range(rows):
        first = max(i - k, 0)
        for j in range(first, i):
            s = A[i, i - j]
            for c in range(first, j):
                s -= A[i, i - c] * A[j, j - c]
            A[i, i - j] = s
        pivot = A[i, 0]
        for j in range(first, i):
            e = A[i, i - j]
            lij = e * A[j, 0]
            pivot -= e * lij
            A[i, i - j] = lij
        if not pivot > 0.0:
            return False
        A[i, 0] = 1.0 / pivot
    return True


@njit(cache=True)
def band_solve(F, w, rows):
    """Overwrite ``w[:rows]`` by ``M^{-1} w``, ``F`` the :func:`band_ldlt` factor of ``M``.

    ``L z = w`` forward, then ``L^T x = D^{-1} z`` backward, both in ``w``.
    """
    k = F.shape[1] - 1
    for i in range(rows):
        s = w[i]
        for c in range(max(i - k, 0), i):
            s -= F[i, i - c] * w[c]
        w[i] = s
    for i in range(rows - 1, -1, -1):
        s = w[i] * F[i, 0]
        for row in range(i + 1, min(rows, i + k + 1)):
            s -= F[row, row - i] * w[row]
        w[i] = s


@njit(cache=True)
def banded_solve(A, b):
    """Return ``M^{-1} b`` for ``M`` in lower band storage ``A``; both are overwritten.

    Raises ``LinAlgError`` when ``M`` is not positive definite in float64.
    """
    if not band_ldlt(A, A.shape[0]):
        raise np.linalg.LinAlgError("banded LDL^T: a pivot <= 0, the matrix is not "
                                    "positive definite in float64")
    band_solve(A, b, A.shape[0])
    return b


@njit(cache=True)
def tv1d_condat(s, lam):
    """Exact order-1 l1 TV denoising of ``s`` by Condat's direct algorithm, O(n).

    It sweeps left to right keeping the current segment's start and the lowest and highest
    values it may take (with the dual running sums that certify them); a segment ends when
    no value keeps the dual within ``[-lam, lam]``, and is then fixed.
    """
    n = s.shape[0]
    x = np.empty(n)
    if n == 0:
        return x
    if not lam > 0.0:
        assign(x, s)
        return x
    k = k0 = kmin = kmax = 0
    vmin = s[0] - lam
    vmax = s[0] + lam
    umin = lam
    umax = -lam
    while True:
        while k == n - 1:
            if umin < 0.0:
                x[k0:kmin + 1] = vmin
                k = k0 = kmin = kmin + 1
                vmin = s[k]
                umin = lam
                umax = vmin + umin - vmax
            elif umax > 0.0:
                x[k0:kmax + 1] = vmax
                k = k0 = kmax = kmax + 1
                vmax = s[k]
                umax = -lam
                umin = vmax + umax - vmin
            else:
                vmin += umin / (k - k0 + 1)
                x[k0:k + 1] = vmin
                return x
        umin += s[k + 1] - vmin
        umax += s[k + 1] - vmax
        if umin < -lam:                     # a downward jump after kmin is unavoidable
            x[k0:kmin + 1] = vmin
            k = k0 = kmax = kmin = kmin + 1
            vmin = s[k]
            vmax = vmin + 2.0 * lam
            umin = lam
            umax = -lam
        elif umax > lam:                    # an upward jump after kmax is unavoidable
            x[k0:kmax + 1] = vmax
            k = k0 = kmin = kmax = kmax + 1
            vmax = s[k]
            vmin = vmax - 2.0 * lam
            umin = lam
            umax = -lam
        else:
            k += 1
            if umin >= lam:
                kmin = k
                vmin += (umin - lam) / (k - k0 + 1)
                umin = lam
            if umax <= -lam:
                kmax = k
                vmax += (umax + lam) / (k - k0 + 1)
                umax = -lam


@njit(cache=True, parallel=True)
def tv1d_condat_batched(S, lam):
    """:func:`tv1d_condat` on each row of ``S`` with ``lam[i]``, in parallel."""
    out = np.empty_like(S)
    for i in prange(S.shape[0]):
        assign(out[i], tv1d_condat(S[i], lam[i]))
    return out


@njit(cache=True)
def tv_l1_gap(s, y, lam, order):
    """Duality gap ``P(y) - D(u)`` at ``y = s - D^T u`` (``u`` feasible)."""
    r = y - s
    primal = 0.5 * np.dot(r, r) + lam * sum_abs(diff_forward(y, order))
    dual = 0.5 * np.dot(s, s) - 0.5 * np.dot(y, y)
    return primal - dual


@njit(cache=True, inline="always")
def _forward_into(y, order, out):
    """``out[:n - order] = D^k y``, in place of :func:`diff_forward` and bitwise equal to it."""
    n = y.shape[0]
    for i in range(n):
        out[i] = y[i]
    for p in range(order):
        for i in range(n - 1 - p):
            out[i] = out[i + 1] - out[i]


@njit(cache=True, inline="always")
def _residual_into(s, u, order, work, y):
    """``y = s - (D^k)^T u`` with ``work`` (length n) as scratch; bitwise :func:`diff_adjoint`.

    Each pass grows the vector by one, ``w_j <- w_{j-1} - w_j``, right to left in place.
    """
    size = u.shape[0]
    for i in range(size):
        work[i] = u[i]
    for _ in range(order):
        work[size] = work[size - 1]
        for j in range(size - 1, 0, -1):
            work[j] = work[j - 1] - work[j]
        work[0] = 0.0 - work[0]
        size += 1
    for j in range(size):
        y[j] = s[j] - work[j]


@njit(cache=True, inline="always")
def _tv_l1_gap_dual(y, u, lam, order, work, g):
    """Duality gap at ``y = s - D^T u``, ``|u| <= lam``, without cancellation; ``g = -D^k y``.

    ``P(y) - D(u) = sum_i (lam |(D^k y)_i| - u_i (D^k y)_i)``: a sum of non-negative terms,
    exact to rounding relative to the gap itself, where :func:`tv_l1_gap`'s difference of
    two ``||s||^2/2``-sized numbers has a floor of ``n eps ||s||^2`` (false non-convergence
    at tight tolerances). ``g`` receives the gradient of the dual objective in ``u``.
    """
    _forward_into(y, order, work)
    gap = 0.0
    for i in range(u.shape[0]):
        gap += max(lam * abs(work[i]) - u[i] * work[i], 0.0)
        g[i] = -work[i]
    return gap


@njit(cache=True)
def _free_band(T, free, rows, A):
    """Lower band storage of ``(D D^T)`` restricted to ``free[:rows]`` (sorted), into ``A``."""
    order = A.shape[1] - 1
    for a in range(rows):
        for d in range(order + 1):
            A[a, d] = 0.0
        for d in range(min(a, order) + 1):
            gap = free[a] - free[a - d]
            if gap <= order:
                A[a, d] = T[gap]


@njit(cache=True)
def tv_dual_newton(s, lam, order, u0, tol, max_iter):
    """Order-``k`` l1 TV denoising by projected Newton on the dual box QP.

    Returns ``(y, u, n_iter, gap)``: the solution, the dual (``y = s - D^T u``,
    ``|u| <= lam``), iterations and the duality gap relative to ``||s||^2/2`` (the data's
    own scale: ``(c s, c lam)`` stops where ``(s, lam)`` does), summed term by term
    (:func:`_tv_l1_gap_dual`), net of its rounding uncertainty
    ``2^(k+1) eps lam sqrt(n - k) (||s||_inf + 2^k lam)`` (no false non-convergence where
    the gap is rounding noise, near ``lam_max``). Every iterate lives in buffers allocated
    once: an iteration allocates nothing.
    """
    n = s.shape[0]
    m = n - order
    T = diff_gram_band(order)
    u = np.minimum(np.maximum(u0, -lam), lam)
    smax = max_abs(s)
    scale = 1.0
    if smax > 0.0:                      # ||s||^2 / 2, scaled against overflow
        scale = 0.0
        for i in range(n):
            scale += (s[i] / smax) ** 2
        scale *= 0.5 * smax * smax
    if scale == 0.0:
        scale = 1.0
    # Rounding uncertainty of the gap: y = s - D^T u carries errors ~ eps (|s| + 2^k lam)
    # (D^T u cancels lam-sized entries), D^k multiplies them by 2^k, the gap weighs them by
    # 2 lam over m terms that add up like a random walk (sqrt(m)). Below it the gap is noise.
    floor = (2.0 ** (order + 1) * np.finfo(np.float64).eps * lam * np.sqrt(m)
             * (smax + 2.0 ** order * lam))
    work = np.empty(n)
    y_new = np.empty(n)
    g = np.empty(m)                     # gradient of q(u) = ||y||^2 / 2: -D^k y
    u_new = np.empty(m)
    du = np.empty(m)
    step = np.empty(m)
    free = np.empty(m, dtype=np.int64)
    band = np.empty((m, order + 1))
    y = s - diff_adjoint(u, order)
    it = 0
    while True:
        gap = _tv_l1_gap_dual(y, u, lam, order, work, g)
        if not (gap > tol * scale + floor and it < max_iter):
            break
        it += 1
        n_free = 0
        for i in range(m):
            if not ((u[i] <= -lam and g[i] > 0.0) or (u[i] >= lam and g[i] < 0.0)):
                free[n_free] = i
                n_free += 1
        if n_free == 0:
            break
        _free_band(T, free, n_free, band)
        if not band_ldlt(band, n_free):
            break
        for a in range(n_free):
            step[a] = g[free[a]]
        band_solve(band, step, n_free)
        q0 = 0.5 * np.dot(y, y)
        t = 1.0
        for _ in range(60):
            for i in range(m):
                u_new[i] = u[i]
            for a in range(n_free):
                i = free[a]
                u_new[i] = min(max(u[i] - t * step[a], -lam), lam)
            _residual_into(s, u_new, order, work, y_new)
            for i in range(m):
                du[i] = u_new[i] - u[i]
            if 0.5 * np.dot(y_new, y_new) <= q0 + 1e-4 * np.dot(g, du) + 1e-15 * q0:
                break
            t *= 0.5
        u, u_new = u_new, u
        y, y_new = y_new, y
    return y, u, it, max(gap - floor, 0.0) / scale


@njit(cache=True, parallel=True)
def tv_dual_newton_batched(S, lam, order, U0, tol, max_iter):
    """:func:`tv_dual_newton` on each row of ``S`` with ``lam[i]``, in parallel."""
    b = S.shape[0]
    Y = np.empty_like(S)
    U = np.empty_like(U0)
    n_iter = np.empty(b, dtype=np.int64)
    gaps = np.empty(b)
    for i in prange(b):
        y, u, n_iter[i], gaps[i] = tv_dual_newton(S[i], lam[i], order, U0[i], tol, max_iter)
        assign(Y[i], y)
        assign(U[i], u)
    return Y, U, n_iter, gaps


@njit(cache=True)
def tv_l2_band(n, lam, order):
    """Lower band storage of ``I + lam (D^k)^T D^k`` (n x n, bandwidth ``order``)."""
    c = _stencil(order)
    A = np.zeros((n, order + 1))
    for i in range(n):
        A[i, 0] = 1.0
    for row in range(n - order):                     # row r of D touches r..r+order
        for p in range(order + 1):
            for q in range(p + 1):
                A[row + p, p - q] += lam * c[p] * c[q]
    return A


@njit(cache=True)
def tv_l2(s, lam, order):
    """``(I + lam D^T D)^{-1} s`` by a banded LDL^T factorization, O(n k^2)."""
    return banded_solve(tv_l2_band(s.shape[0], lam, order), s.copy())


@njit(cache=True, parallel=True)
def tv_l2_batched(S, lam, order):
    """:func:`tv_l2` on each row of ``S`` with ``lam[i]``, in parallel."""
    out = np.empty_like(S)
    for i in prange(S.shape[0]):
        assign(out[i], tv_l2(S[i], lam[i], order))
    return out


@njit(cache=True)
def tv_dual_from_primal(s, y, order):
    """Return the dual ``u`` with ``(D^k)^T u = s - y`` (``D^T`` is injective), O(n)."""
    m = s.shape[0] - order
    band = np.empty((m, order + 1))
    _free_band(diff_gram_band(order), np.arange(m), m, band)
    return banded_solve(band, diff_forward(s - y, order))


@njit(cache=True, inline="always")
def _zero_set(Dy, zero_tol):
    return np.flatnonzero(np.abs(Dy) <= zero_tol)


@njit(cache=True)
def tv_project(v, zero, order):
    """``P v``: projection onto ``null(D_Z)``, ``Z = zero`` (rows where ``D^k y = 0``).

    ``P = I - D_Z^T (D_Z D_Z^T)^{-1} D_Z``: the tangent space of the manifold
    ``{y : (D^k y)_Z = 0}``; for order 1, averaging over the constant segments.
    """
    if zero.shape[0] == 0:
        return v.copy()
    band = np.empty((zero.shape[0], order + 1))
    _free_band(diff_gram_band(order), zero, zero.shape[0], band)
    Dv = diff_forward(v, order)
    w = np.zeros(v.shape[0] - order)
    solved = banded_solve(band, Dv[zero])
    for a in range(zero.shape[0]):
        w[zero[a]] = solved[a]
    return v - diff_adjoint(w, order)


@njit(cache=True)
def tv_manifold(s, y, lam, order, zero_tol, dual):
    """Zero set ``Z``, jump signs ``sigma`` (0 on Z) and non-degeneracy margin at ``y``.

    The margin is the smallest of ``1 - |u_i| / lam`` on ``Z`` (dual slack; ``u`` the dual)
    and ``|(D^k y)_j| / max |D^k y|`` on the jumps. ``dual`` is the solver's ``u``
    (``y = s - D^T u`` by construction, exact where recovering it from ``y`` through
    ``D D^T``, whose condition number grows like ``n^(2k)``, is not); empty: recovered.
    """
    Dy = diff_forward(y, order)
    zero = _zero_set(Dy, zero_tol)
    sigma = np.sign(Dy)
    sigma[zero] = 0.0
    margin = np.inf
    if zero.shape[0] > 0 and lam > 0.0:
        u = dual if dual.shape[0] > 0 else tv_dual_from_primal(s, y, order)
        for i in zero:
            margin = min(margin, 1.0 - abs(u[i]) / lam)
    biggest = max_abs(Dy)
    for j in range(Dy.shape[0]):
        if sigma[j] != 0.0:
            margin = min(margin, abs(Dy[j]) / biggest)
    return zero, sigma, margin


@njit(cache=True)
def tv1d_segments_vjp(s, y, lam, v, zero_tol):
    """Order 1 in one pass: segment means of ``v``, ``-sum_j sigma_j (m_{j+1} - m_j)``.

    ``m`` are the means of ``v`` over the constant segments of ``y`` and ``sigma_j`` the
    sign of the jump between segments; the margin as in :func:`tv_manifold`, with the
    dual ``u_i = -sum_{j <= i} (s_j - y_j)``.
    """
    n = y.shape[0]
    g = np.empty(n)
    biggest = 0.0
    for i in range(n - 1):
        biggest = max(biggest, abs(y[i + 1] - y[i]))
    g_lam = 0.0
    margin = np.inf
    u = 0.0
    start = 0
    total = 0.0
    prev_mean = 0.0
    prev_sign = 0.0
    for i in range(n):
        u -= s[i] - y[i]
        total += v[i]
        step = y[i + 1] - y[i] if i < n - 1 else 0.0
        if i < n - 1 and abs(step) <= zero_tol:
            if lam > 0.0:
                margin = min(margin, 1.0 - abs(u) / lam)
            continue
        mean = total / (i + 1 - start)
        g[start:i + 1] = mean
        if start > 0:
            g_lam -= prev_sign * (mean - prev_mean)
        if i < n - 1:
            prev_sign = np.sign(step)
            margin = min(margin, abs(step) / biggest)
        prev_mean = mean
        start = i + 1
        total = 0.0
    return g, g_lam, margin


@njit(cache=True)
def tv_manifold_vjp(s, y, lam, order, v, zero_tol, dual):
    """``(dy*/ds)^T v = P v`` and ``(dy*/dlam)^T v = -sigma^T D P v``, with the margin.

    ``dual``: as for :func:`tv_manifold`.
    """
    if order == 1:
        return tv1d_segments_vjp(s, y, lam, v, zero_tol)
    zero, sigma, margin = tv_manifold(s, y, lam, order, zero_tol, dual)
    pv = tv_project(v, zero, order)
    return pv, -np.dot(sigma, diff_forward(pv, order)), margin


@njit(cache=True, parallel=True)
def tv_manifold_vjp_batched(S, Y, lam, order, V, zero_tol, U):
    """:func:`tv_manifold_vjp` for each row, in parallel: ``(G_s, g_lam, margins)``.

    ``U``: the solver's duals, one row each, or shape ``(b, 0)`` to recover them.
    """
    b = S.shape[0]
    G = np.empty_like(S)
    g_lam = np.empty(b)
    margins = np.empty(b)
    for i in prange(b):
        g, g_lam[i], margins[i] = tv_manifold_vjp(S[i], Y[i], lam[i], order, V[i],
                                                  zero_tol[i], U[i])
        assign(G[i], g)
    return G, g_lam, margins


@njit(cache=True, parallel=True)
def tv1d_segments_vjp_batched(S, Y, lam, V, zero_tol):
    """:func:`tv1d_segments_vjp` for each row, in parallel: ``(G_s, g_lam, margins)``.

    Order 1's own batched kernel: it compiles none of the banded solves of orders 2 and 3
    that :func:`tv_manifold_vjp_batched` carries.
    """
    b = S.shape[0]
    G = np.empty_like(S)
    g_lam = np.empty(b)
    margins = np.empty(b)
    for i in prange(b):
        g, g_lam[i], margins[i] = tv1d_segments_vjp(S[i], Y[i], lam[i], V[i], zero_tol[i])
        assign(G[i], g)
    return G, g_lam, margins


@njit(cache=True)
def tv_l2_vjp(y, lam, order, v):
    """l2 TV: ``A^{-1} v`` and ``-(A^{-1} v)^T D^T D y`` with ``A = I + lam D^T D``."""
    w = tv_l2(v, lam, order)
    return w, -np.dot(diff_forward(w, order), diff_forward(y, order))


@njit(cache=True, parallel=True)
def tv_l2_vjp_batched(Y, lam, order, V):
    """:func:`tv_l2_vjp` for each row, in parallel."""
    G = np.empty_like(Y)
    g_lam = np.empty(Y.shape[0])
    for i in prange(Y.shape[0]):
        g, g_lam[i] = tv_l2_vjp(Y[i], lam[i], order, V[i])
        assign(G[i], g)
    return G, g_lam


tv1d_condat_rows = serial_twin(tv1d_condat_batched, "tv1d_condat_rows")
tv_dual_newton_rows = serial_twin(tv_dual_newton_batched, "tv_dual_newton_rows")
tv_l2_rows = serial_twin(tv_l2_batched, "tv_l2_rows")
tv_l2_vjp_rows = serial_twin(tv_l2_vjp_batched, "tv_l2_vjp_rows")
tv_manifold_vjp_rows = serial_twin(tv_manifold_vjp_batched, "tv_manifold_vjp_rows")
tv1d_segments_vjp_rows = serial_twin(tv1d_segments_vjp_batched, "tv1d_segments_vjp_rows")


KERNELS = (diff_adjoint, diff_forward, tv1d_condat, tv1d_condat_batched, tv1d_condat_rows,
           tv_dual_from_primal, tv_dual_newton, tv_dual_newton_batched, tv_dual_newton_rows,
           tv_l2, tv_l2_batched, tv_l2_rows, tv_l2_vjp, tv_l2_vjp_batched, tv_l2_vjp_rows,
           tv_manifold, tv_manifold_vjp, tv_manifold_vjp_batched, tv_manifold_vjp_rows,
           tv_project, tv1d_segments_vjp, tv1d_segments_vjp_batched, tv1d_segments_vjp_rows)


def warmup(parallel=True):
    """Compile this module's kernels once on a tiny float64 instance, for orders 1-3.

    ``parallel=False`` leaves the ``prange`` kernels (``*_batched``) to their first use.
    """
    s = np.array([0.0, 1.0, 3.0, 2.0, 2.5])
    S, lams, zero_tol = np.stack([s, -s]), np.array([0.5, 0.5]), np.array([1e-9, 1e-9])
    for order in (1, 2, 3):
        y = tv_l2(s, 0.5, order)
        tv_l2_rows(S, lams, order)
        tv_l2_vjp(y, 0.5, order, s)
        tv_l2_vjp_rows(S, lams, order, S)
        y, u, _, _ = tv_dual_newton(s, 0.5, order, np.zeros(5 - order), 1e-12, 50)
        tv_dual_newton_rows(S, lams, order, np.zeros((2, 5 - order)), 1e-12, 50)
        tv_dual_from_primal(s, y, order)
        tv_manifold(s, y, 0.5, order, 1e-9, u)
        tv_manifold_vjp(s, y, 0.5, order, s, 1e-9, u)
        tv_manifold_vjp_rows(S, S, lams, order, S, zero_tol, np.zeros((2, 5 - order)))
        if parallel:
            tv_l2_batched(S, lams, order)
            tv_l2_vjp_batched(S, lams, order, S)
            tv_dual_newton_batched(S, lams, order, np.zeros((2, 5 - order)), 1e-12, 50)
            tv_manifold_vjp_batched(S, S, lams, order, S, zero_tol, np.zeros((2, 5 - order)))
        tv_project(s, np.arange(5 - order), order)
        diff_adjoint(diff_forward(s, order), order)
    tv1d_condat(s, 0.5)
    tv1d_condat_rows(S, lams)
    tv1d_segments_vjp(s, s, 0.5, s, 1e-9)
    tv1d_segments_vjp_rows(S, S, lams, S, zero_tol)
    if parallel:
        tv1d_condat_batched(S, lams)
        tv1d_segments_vjp_batched(S, S, lams, S, zero_tol)
