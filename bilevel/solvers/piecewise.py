r"""Optimal k-piece piecewise-polynomial l2 projection by dynamic programming.

.. math:: h^*(s) = \arg\min_{h \in \mathcal F^k_d} \tfrac12\|h - s\|^2, \qquad
          \min_{0 = b_0 < b_1 < \dots < b_k = n}\ \sum_{j=1}^k
          c_{d_j}(b_{j-1}, b_j),

with :math:`c_q(a, b) = \min_{p \in P_q} \sum_{t=a}^{b-1} (s_t - p(t))^2` the residual of
the degree-``q`` least-squares fit on the piece ``s[a:b]`` and ``d_j`` the degree of piece
``j`` (Jagadish et al., "Optimal histograms with quality guarantees", VLDB 1998; for
polynomials: Guha, Koudas, Shim, ACM TODS 2006). ``D[j, i]``, the best cost of ``j``
pieces on ``s[:i]``, satisfies ``D[j, i] = min_m D[j-1, m] + c_{d_j}(m, i)``: O(n^2 k)
with O(1) work per segment cost.

Segment costs, stably. Costs from global cumulative moments (``sum t^p s_t`` by prefix
sums) cancel catastrophically for degree >= 1 on long signals: a piece of length L at
offset ~n loses about ``(n / L)^(d+1)`` in relative accuracy. Here, for a fixed end ``i``
the start ``m`` runs from ``i - 1`` down to 0 and each new sample is added to a running
QR factorization of the piece's Vandermonde matrix by Givens rotations, in the local
abscissa ``u = (i - 1 - t) / n`` (for degree 0: Welford's running mean and sum of
squares). The residual is the sum of the squared rotated-out components, and by the
nesting of the QR factorization the costs of every degree ``q <= max(d_j)`` come from one
factorization: ``c_q = c_d + sum_{p > q} z_p^2`` with ``z = Q^T s``. Each update is
O(d^2) and backward stable: no cancellation of large moments. The same loop keeps the
second-best cost ``D2[j, i]`` over the partitions distinct from the best one; the gap
``D2[k, n] - D[k, n]`` measures how far the optimal partition is from changing.

The fit on each piece is ``Q Q^T s[a:b]`` with ``Q`` the orthonormal discrete polynomials
on ``0..L-1`` (Stieltjes' three-term recurrence on the centred, scaled abscissa, with one
re-orthogonalization): the piece's *hat matrix* ``V (V^T V)^{-1} V^T = Q Q^T``, which
is also the block of the Jacobian (:func:`pp_hat_vjp_batched`); the bases of the pieces
up to some length are computed once per ``(length, degree)`` (:func:`pp_basis_table`).
"""

import math

import numpy as np
from numba import njit, prange

from bilevel.solvers.assign import assign
from bilevel.solvers.serial import serial_twin

__all__ = ["KERNELS", "pp_basis", "pp_basis_table", "pp_dp", "pp_dp_batched", "pp_dp_rows",
           "pp_hat_vjp_batched", "pp_hat_vjp_rows", "warmup"]


@njit(cache=True)
def pp_basis(L, q):
    """Orthonormal discrete polynomials of degree < ``min(q + 1, L)`` on ``0..L-1``.

    Returns ``Q`` of shape ``(L, r)``, ``r = min(q + 1, L)``, with ``Q^T Q = I`` and
    ``range(Q)`` the polynomials of degree ``< r`` sampled at ``0..L-1``.
    """
    r = min(q + 1, L)
    Q = np.zeros((L, r))
    if L == 1:
        Q[0, 0] = 1.0
        return Q
    half = 0.5 * (L - 1)
    u = np.empty(L)
    for t in range(L):
        u[t] = (t - half) / half                 # centred and scaled to [-1, 1]
    inv = 1.0 / math.sqrt(L)
    for t in range(L):
        Q[t, 0] = inv
    w = np.empty(L)
    for j in range(1, r):
        for t in range(L):
            w[t] = u[t] * Q[t, j - 1]
        for _ in range(2):                       # Gram-Schmidt against the previous columns,
            for p in range(j):                   # twice: orthogonal to round-off
                dot = 0.0
                for t in range(L):
                    dot += Q[t, p] * w[t]
                for t in range(L):
                    w[t] -= dot * Q[t, p]
        norm = 0.0
        for t in range(L):
            norm += w[t] * w[t]
        norm = math.sqrt(norm)
        for t in range(L):
            Q[t, j] = w[t] / norm
    return Q


@njit(cache=True)
def _fit_piece(s, a, b, q, out):
    """``out[a:b] = Q Q^T s[a:b]``, the degree-``q`` least-squares fit on the piece."""
    Q = pp_basis(b - a, q)
    for c in range(Q.shape[1]):
        dot = 0.0
        for t in range(b - a):
            dot += Q[t, c] * s[a + t]
        for t in range(b - a):
            out[a + t] += dot * Q[t, c]


@njit(cache=True)
def pp_dp(s, k, degrees):
    """Optimal ``k``-piece fit of ``s`` with piece ``j`` of degree ``degrees[j]``.

    Parameters
    ----------
    s : ndarray, shape (n,)
    k : int
        Number of pieces, ``1 <= k <= n``.
    degrees : ndarray of int64, shape (k,)
        Degree of each piece, left to right, ``>= 0``.

    Returns
    -------
    fit : ndarray, shape (n,)
        The projection ``h*(s)``.
    breaks : ndarray of int64, shape (k + 1,)
        Piece ``j`` is ``s[breaks[j]:breaks[j + 1]]``; ``breaks[0] = 0``, ``breaks[k] = n``.
    cost : float
        ``||s - h*(s)||^2``.
    gap : float
        Second-best cost over the other partitions minus ``cost`` (inf if there is none).
    """
    n = s.shape[0]
    dmax = 0
    for j in range(k):
        dmax = max(dmax, degrees[j])
    inf = np.inf
    D1 = np.full((n + 1, k + 1), inf)           # D1[i, j]: best cost of j pieces on s[:i]
    D2 = np.full((n + 1, k + 1), inf)           # second best, over the other partitions
    A1 = np.zeros((n + 1, k + 1), dtype=np.int64)   # start of the last piece of the best
    D1[0, 0] = 0.0
    R = np.zeros((dmax + 1, dmax + 1))
    z = np.zeros(dmax + 1)
    a = np.zeros(dmax + 1)
    cq = np.zeros(dmax + 1)
    scale = 1.0 / max(n - 1, 1)
    for i in range(1, n + 1):
        # the running fit of s[m:i], m = i-1, i-2, ..., 0
        count = 0
        mean = 0.0
        m2 = 0.0
        r2 = 0.0
        for p in range(dmax + 1):
            z[p] = 0.0
            for c in range(dmax + 1):
                R[p, c] = 0.0
        jlo = max(1, k - (n - i))
        for m in range(i - 1, -1, -1):
            y = s[m]
            if dmax == 0:                        # Welford: running mean and squares
                count += 1
                delta = y - mean
                mean += delta / count
                m2 += delta * (y - mean)
                cq[0] = m2
            else:                                # Givens update of the QR of [1 u .. u^d]
                uu = (i - 1 - m) * scale
                a[0] = 1.0
                for p in range(1, dmax + 1):
                    a[p] = a[p - 1] * uu
                absorbed = False
                for p in range(dmax + 1):
                    if p == count:               # rank still growing: the row becomes row p
                        for c in range(p, dmax + 1):
                            R[p, c] = a[c]
                        z[p] = y
                        absorbed = True
                        break
                    rpp = R[p, p]
                    ap = a[p]
                    if ap == 0.0:
                        continue
                    rho = math.sqrt(rpp * rpp + ap * ap)
                    cs = rpp / rho
                    sn = ap / rho
                    for c in range(p, dmax + 1):
                        rc = R[p, c]
                        R[p, c] = cs * rc + sn * a[c]
                        a[c] = cs * a[c] - sn * rc
                    zp = z[p]
                    z[p] = cs * zp + sn * y
                    y = cs * y - sn * zp
                if not absorbed:
                    r2 += y * y
                count += 1
                tail = r2
                cq[dmax] = tail
                for p in range(dmax, 0, -1):
                    if p < count:
                        tail += z[p] * z[p]
                    cq[p - 1] = tail
            jhi = min(k, m + 1)
            for j in range(jlo, jhi + 1):
                if j == 1 and m != 0:
                    continue
                prev1 = D1[m, j - 1]
                if prev1 == inf:
                    continue
                c = cq[degrees[j - 1]]
                v1 = prev1 + c
                v2 = D2[m, j - 1] + c
                if v1 < D1[i, j]:
                    D2[i, j] = D1[i, j]
                    D1[i, j] = v1
                    A1[i, j] = m
                elif v1 < D2[i, j]:
                    D2[i, j] = v1
                if v2 < D2[i, j]:
                    D2[i, j] = v2
    breaks = np.zeros(k + 1, dtype=np.int64)
    breaks[k] = n
    for j in range(k, 0, -1):
        breaks[j - 1] = A1[breaks[j], j]
    fit = np.zeros(n)
    for j in range(k):
        _fit_piece(s, breaks[j], breaks[j + 1], degrees[j], fit)
    cost = 0.0
    for t in range(n):
        cost += (s[t] - fit[t]) ** 2
    return fit, breaks, cost, D2[n, k] - D1[n, k]


@njit(cache=True, parallel=True)
def pp_dp_batched(S, k, degrees):
    """:func:`pp_dp` on every row of ``S`` (b, n): ``(fits, breaks, costs, gaps)``."""
    b, n = S.shape
    fits = np.zeros((b, n))
    breaks = np.zeros((b, k + 1), dtype=np.int64)
    costs = np.zeros(b)
    gaps = np.zeros(b)
    for r in prange(b):
        f, br, c, g = pp_dp(S[r], k, degrees)
        assign(fits[r], f)
        assign(breaks[r], br)
        costs[r] = c
        gaps[r] = g
    return fits, breaks, costs, gaps


@njit(cache=True)
def pp_basis_table(Lmax, dmax):
    """Every basis :func:`pp_basis` ``(L, q)`` for ``L <= Lmax``, ``q <= dmax``, cached flat.

    Returns ``(table, offsets)``: the row-major ``Q`` of ``(L, q)`` starts at
    ``table[offsets[q, L]]``; ``offsets`` has shape ``(dmax + 1, Lmax + 1)``.
    """
    offsets = np.zeros((dmax + 1, Lmax + 1), dtype=np.int64)
    total = 0
    for q in range(dmax + 1):
        for L in range(1, Lmax + 1):
            offsets[q, L] = total
            total += L * min(q + 1, L)
    table = np.empty(total)
    for q in range(dmax + 1):
        for L in range(1, Lmax + 1):
            Q = pp_basis(L, q)
            off = offsets[q, L]
            cols = Q.shape[1]
            for t in range(L):
                for c in range(cols):
                    table[off + t * cols + c] = Q[t, c]
    return table, offsets


@njit(cache=True, parallel=True)
def pp_hat_vjp_batched(V, breaks, degrees, table, offsets):
    """Block-sparse VJP: ``G[r, a:b] = Q Q^T V[r, a:b]`` on every piece of every row.

    Parameters
    ----------
    V : ndarray, shape (b, n)
        Cotangents.
    breaks : ndarray of int64, shape (b, k + 1)
        Partitions, as returned by :func:`pp_dp_batched`.
    degrees : ndarray of int64, shape (k,)
    table, offsets : ndarray
        Cached bases from :func:`pp_basis_table`; pieces longer than its ``Lmax`` get
        theirs computed on the fly (O(L d^2)).

    Returns
    -------
    ndarray, shape (b, n)
        ``(dh/ds)^T v`` row by row; the Jacobian is symmetric (an orthogonal projector on
        each piece). O(sum of ``L (d + 1)``) = O(n (d + 1)) per row.
    """
    nb, n = V.shape
    k = degrees.shape[0]
    Lmax = offsets.shape[1] - 1
    G = np.zeros((nb, n))
    for r in prange(nb):
        for j in range(k):
            a = breaks[r, j]
            L = breaks[r, j + 1] - a
            q = degrees[j]
            cols = min(q + 1, L)
            if L <= Lmax and q < offsets.shape[0]:
                off = offsets[q, L]
                for c in range(cols):
                    dot = 0.0
                    for t in range(L):
                        dot += table[off + t * cols + c] * V[r, a + t]
                    for t in range(L):
                        G[r, a + t] += dot * table[off + t * cols + c]
            else:
                Q = pp_basis(L, q)
                for c in range(cols):
                    dot = 0.0
                    for t in range(L):
                        dot += Q[t, c] * V[r, a + t]
                    for t in range(L):
                        G[r, a + t] += dot * Q[t, c]
    return G


pp_dp_rows = serial_twin(pp_dp_batched, "pp_dp_rows")
pp_hat_vjp_rows = serial_twin(pp_hat_vjp_batched, "pp_hat_vjp_rows")


KERNELS = (pp_basis, pp_basis_table, pp_dp, pp_dp_batched, pp_dp_rows, pp_hat_vjp_batched,
           pp_hat_vjp_rows)


def warmup(parallel=True):
    """Compile each kernel of this module once on a tiny float64 instance.

    ``parallel=False`` leaves the ``prange`` kernels (``*_batched``) to their first use.
    """
    s = np.array([0.0, 0.1, 2.0, 2.1, 5.0])
    deg = np.array([0, 1], dtype=np.int64)
    pp_dp(s, 2, deg)
    S = np.stack([s, -s])
    _, br, _, _ = pp_dp_rows(S, 2, deg)
    pp_basis(3, 1)
    table, offsets = pp_basis_table(2, 1)
    pp_hat_vjp_rows(S, br, deg, table, offsets)
    if parallel:
        pp_dp_batched(S, 2, deg)
        pp_hat_vjp_batched(S, br, deg, table, offsets)
