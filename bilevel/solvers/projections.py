r"""Euclidean projections onto norm balls, spheres and the simplex, and the softmax, row by row.

.. math:: y^*(x) = \arg\min_{u \in C} \tfrac12 \|u - x\|^2

for each row ``x`` of a (b, n) array, with ``C`` (codes of :data:`SETS`, radius ``r``):

====  ==========  =========================================================================
code  set         solution
====  ==========  =========================================================================
0     l2_sphere   ``r x / ||x||``
1     l2_ball     ``x`` if ``||x|| <= r``, else ``r x / ||x||``
2     l1_sphere   ``sign(x) max(|x| - tau, 0)``, ``tau`` (of either sign) such that
                  ``||y||_1 = r``
3     l1_ball     ``x`` if ``||x||_1 <= r``, else the l1-sphere projection (``tau > 0``)
4     linf_ball   ``clip(x, -r, r)``
5     simplex     ``max(x - tau, 0)`` with ``sum y = r``
====  ==========  =========================================================================

``tau = (sum_{i<=rho} mu_i - r) / rho`` with ``mu`` sorted decreasingly and ``rho = max{j :
mu_j > (sum_{i<=j} mu_i - r) / j}`` (Duchi, Shalev-Shwartz, Singer, Chandra, ICML 2008),
found without sorting by Michelot's algorithm (:func:`simplex_tau`). ``sign(0)``
is taken as ``+1`` on the l1 sphere (a point of ``x`` with a zero coordinate inside the
ball has two projections; the layer flags it through the margin).

Jacobians (symmetric, so the VJP is ``J v``), ``plateau`` 0 ("zero") or 1 ("tangent"):

- l2 sphere (and l2 ball outside): ``(r / ||x||) (I - u u^T)``, ``u = x / ||x||``;
- l1 sphere / l1 ball outside, with ``S`` the support of ``y`` and ``s = sign(y)``:
  "zero": ``diag(1_S) - s s^T / |S|`` (the exact Jacobian: coordinates clipped to 0 do
  not move); "tangent": ``I - s s^T / |S|`` (Gould et al.'s Proposition 4.5 with the
  minimum-norm subgradient ``a = s`` of ``||u||_1`` at ``y``, not masked);
- simplex: "zero": ``diag(1_S) - 1_S 1_S^T / |S|``; "tangent": ``I - 1 1^T / n``
  (Proposition 4.5 with the equality ``sum u = r`` alone);
- linf ball, ``M`` the clipped coordinates, ``s = sign(x)``: "zero": ``diag(1 - 1_M)``;
  "tangent": ``I - s_M s_M^T / |M|`` (Proposition 4.5 with the minimum-norm subgradient
  ``s_M / |M|`` of ``||u||_inf``);
- inside a ball: ``I``.

The softmax ``p = exp(z) / sum exp(z)`` (max-shifted) has Jacobian ``diag(p) - p p^T``.
"""

import numpy as np
from numba import njit, prange

from bilevel.solvers.assign import assign
from bilevel.solvers.reductions import max_abs, sum_abs
from bilevel.solvers.serial import serial_twin

__all__ = ["KERNELS", "SETS", "proj_batched", "proj_rows", "proj_vjp_batched", "proj_vjp_rows",
           "simplex_tau", "softmax_batched", "softmax_rows", "softmax_vjp_batched",
           "softmax_vjp_rows", "warmup"]

SETS = {"l2_sphere": 0, "l2_ball": 1, "l1_sphere": 2, "l1_ball": 3, "linf_ball": 4,
        "simplex": 5}


@njit(cache=True)
def _norm2(x):
    """Return ``||x||_2`` as ``m ||x / m||_2`` with ``m = max |x_i|``.

    No overflow above 1e154 and no underflow below 1e-154, where the projections' answers
    are still computable.
    """
    m = 0.0
    for i in range(x.shape[0]):
        m = max(m, abs(x[i]))
    if m == 0.0 or not np.isfinite(m):
        return m
    s = 0.0
    for i in range(x.shape[0]):
        t = x[i] / m
        s += t * t
    return m * np.sqrt(s)


@njit(cache=True)
def simplex_tau(u, r):
    """Threshold ``tau`` with ``sum max(u - tau, 0) = r`` (any sign of tau), without sorting.

    Michelot's algorithm (J. Optim. Theory Appl. 1986; Condat, Math. Program. 2016,
    Algorithm 2): ``tau = (sum_A u - r) / |A|`` over the set ``A`` of entries above the
    previous ``tau``, from ``A`` = all; ``tau`` only grows, so an entry that leaves ``A``
    never returns, and ``A`` stops changing after a few passes (``O(n^2)`` at worst). The
    result is the sort-based formula's ``(sum_{i<=rho} mu_i - r) / rho``, ``A`` its top
    ``rho`` entries; no ``np.sort``, whose compilation costs every new process seconds.

    Computed on ``u - max(u)`` (the threshold is translation-equivariant): return
    ``(tau - max(u), max(u))``. Callers form ``y_i = max((u_i - max u) - (tau - max u), 0)``
    so that the sums have the scale of ``r`` and of the gaps ``max u - u_i``, not of ``|u|``:
    ``sum y = r`` holds to rounding relative to ``r`` even when ``|u| >> r``.
    """
    n = u.shape[0]
    top = u[0]
    for i in range(1, n):
        top = max(top, u[i])
    tot = 0.0
    for i in range(n):
        tot += u[i] - top
    count = n
    tau = (tot - r) / count
    while True:
        tot = 0.0
        kept = 0
        for i in range(n):
            mu = u[i] - top
            if mu > tau:
                tot += mu
                kept += 1
        if kept >= count:                       # (> only by rounding)
            return tau, top
        count = kept
        tau = (tot - r) / count


@njit(cache=True)
def _project_row(x, code, r, y):
    """Write the projection of ``x`` into ``y``; return ``(tau, residual)``."""
    n = x.shape[0]
    if code <= 1:
        nx = _norm2(x)
        if code == 1 and nx <= r:
            assign(y, x)
            return nx, 0.0
        if nx == 0.0:
            for i in range(n):
                y[i] = r / np.sqrt(n)
        else:
            for i in range(n):
                y[i] = r * (x[i] / nx)
        ny = _norm2(y)
        return nx, abs(ny - r) / r
    if code == 4:
        for i in range(n):
            y[i] = min(max(x[i], -r), r)
        return r, 0.0
    if code == 5:
        tau, top = simplex_tau(x, r)
        s = 0.0
        for i in range(n):
            y[i] = max((x[i] - top) - tau, 0.0)
            s += y[i]
        return tau + top, abs(s - r) / r
    l1 = sum_abs(x)
    if code == 3 and l1 <= r:
        assign(y, x)
        return 0.0, 0.0
    magnitudes = np.empty(n)
    for i in range(n):
        magnitudes[i] = abs(x[i])
    tau, top = simplex_tau(magnitudes, r)
    s = 0.0
    for i in range(n):
        w = max((abs(x[i]) - top) - tau, 0.0)
        y[i] = -w if (x[i] < 0.0 and w > 0.0) else w     # no -0.0
        s += w
    return tau + top, abs(s - r) / r


@njit(cache=True, parallel=True)
def proj_batched(X, code, radius):
    """Project every row of ``X`` (b, n) onto set ``code``; return ``(Y, tau, residual)``.

    ``tau`` (b,): ``||x||`` (l2), the threshold (l1, simplex; 0 inside the l1 ball), ``r``
    (linf); ``residual`` (b,): the relative constraint violation of ``y`` (round-off).
    """
    b, n = X.shape
    Y = np.empty((b, n))
    tau = np.empty(b)
    res = np.empty(b)
    for k in prange(b):
        t, rr = _project_row(X[k], code, radius, Y[k])
        tau[k] = t
        res[k] = rr
    return Y, tau, res


@njit(cache=True)
def _vjp_row(x, y, code, r, plateau, v, g):
    """Write ``J v`` into ``g``; return the row's non-degeneracy margin."""
    n = x.shape[0]
    if code <= 1:
        nx = _norm2(x)
        if code == 1 and nx <= r:
            assign(g, v)
            return abs(nx - r) / r
        if nx == 0.0:
            g[:] = 0.0
            return 0.0
        uv = 0.0
        for i in range(n):
            uv += (x[i] / nx) * v[i]
        for i in range(n):
            g[i] = (r / nx) * (v[i] - (x[i] / nx) * uv)
        return nx / r if code == 0 else abs(nx - r) / r
    scale = max(max_abs(x), r)
    if code == 4:
        k = 0
        sv = 0.0
        margin = np.inf
        for i in range(n):
            margin = min(margin, abs(abs(x[i]) - r) / r)
            if abs(x[i]) > r:
                k += 1
                sv += v[i] if x[i] > 0 else -v[i]
        for i in range(n):
            if abs(x[i]) <= r:
                g[i] = v[i]
            elif plateau == 0:
                g[i] = 0.0
            else:
                g[i] = v[i] - (1.0 if x[i] > 0 else -1.0) * sv / k
        return margin
    if code == 5:
        k = 0
        sv = 0.0
        tot = 0.0
        tau = np.inf
        for i in range(n):
            tot += v[i]
            if y[i] > 0.0:
                k += 1
                sv += v[i]
                tau = min(tau, x[i] - y[i])
        margin = np.inf
        for i in range(n):
            margin = min(margin, abs(x[i] - tau) / scale)
        for i in range(n):
            if plateau == 1:
                g[i] = v[i] - tot / n
            elif y[i] > 0.0:
                g[i] = v[i] - sv / k
            else:
                g[i] = 0.0
        return margin
    l1 = sum_abs(x)
    if code == 3 and l1 <= r:
        assign(g, v)
        return (r - l1) / r
    k = 0
    sv = 0.0
    tau = np.inf
    for i in range(n):
        if y[i] != 0.0:
            k += 1
            sv += v[i] if y[i] > 0.0 else -v[i]
            tau = min(tau, abs(x[i]) - abs(y[i]))
    margin = np.inf
    for i in range(n):
        if tau > 0.0:
            margin = min(margin, abs(abs(x[i]) - tau) / scale)
        else:
            margin = min(margin, abs(x[i]) / scale)
    if code == 3:
        margin = min(margin, (l1 - r) / r)
    for i in range(n):
        if y[i] != 0.0:
            g[i] = v[i] - (1.0 if y[i] > 0.0 else -1.0) * sv / k
        else:
            g[i] = v[i] if plateau == 1 else 0.0
    return margin


@njit(cache=True, parallel=True)
def proj_vjp_batched(X, Y, code, radius, plateau, V):
    """``G[k] = J(X[k]) V[k]`` for every row; return ``(G (b, n), margins (b,))``.

    ``plateau``: 0 masks the plateau coordinates (the exact Jacobian), 1 keeps them
    (Proposition 4.5 with the minimum-norm subgradient; see the module docstring).
    ``margins``: relative distance to the nearest non-differentiable configuration
    (a coordinate at the threshold, the norm at the radius, ``x = 0`` on the l2 sphere).
    """
    b, n = X.shape
    G = np.empty((b, n))
    margins = np.empty(b)
    for k in prange(b):
        margins[k] = _vjp_row(X[k], Y[k], code, radius, plateau, V[k], G[k])
    return G, margins


@njit(cache=True, parallel=True)
def softmax_batched(Z):
    """Row-wise softmax of ``Z`` (b, n), shifted by the row maximum."""
    b, n = Z.shape
    P = np.empty((b, n))
    for k in prange(b):
        m = Z[k].max()
        s = 0.0
        for i in range(n):
            P[k, i] = np.exp(Z[k, i] - m)
            s += P[k, i]
        for i in range(n):
            P[k, i] /= s
    return P


@njit(cache=True, parallel=True)
def softmax_vjp_batched(P, V):
    """``G[k] = (diag(p) - p p^T) v`` for every row: ``p * (v - <p, v>)``."""
    b, n = P.shape
    G = np.empty((b, n))
    for k in prange(b):
        pv = 0.0
        for i in range(n):
            pv += P[k, i] * V[k, i]
        for i in range(n):
            G[k, i] = P[k, i] * (V[k, i] - pv)
    return G


proj_rows = serial_twin(proj_batched, "proj_rows")
proj_vjp_rows = serial_twin(proj_vjp_batched, "proj_vjp_rows")
softmax_rows = serial_twin(softmax_batched, "softmax_rows")
softmax_vjp_rows = serial_twin(softmax_vjp_batched, "softmax_vjp_rows")


KERNELS = (proj_batched, proj_rows, proj_vjp_batched, proj_vjp_rows, softmax_batched,
           softmax_rows, softmax_vjp_batched, softmax_vjp_rows)


def warmup(parallel=True):
    """Compile this module's kernels once on a tiny float64 instance.

    ``parallel=False`` leaves the ``prange`` kernels (``*_batched``) to their first use.
    """
    X = np.array([[0.5, -1.0, 2.0], [0.1, 0.2, -0.1]])
    pairs = ((proj_rows, proj_vjp_rows), (proj_batched, proj_vjp_batched))[:1 + parallel]
    for code in range(6):
        for kernel, vjp in pairs:
            Y, _, _ = kernel(X, code, 1.0)
            vjp(X, Y, code, 1.0, 0, X)
    for kernel, vjp in ((softmax_rows, softmax_vjp_rows),
                        (softmax_batched, softmax_vjp_batched))[:1 + parallel]:
        vjp(kernel(X), X)
