r"""Robust pooling: the minimizer of a sum of robust penalties of residuals, row by row.

.. math:: y^*(x) = \arg\min_y \sum_{i=1}^n \phi(y - x_i; \alpha)

for each row ``x`` of a (b, n) array. Penalty codes (see :data:`PENALTIES`):

====  ====================  ==========================================================
code  name                  :math:`\phi(z; \alpha)`
====  ====================  ==========================================================
0     quadratic             :math:`z^2 / 2`
1     pseudo_huber          :math:`\alpha^2 (\sqrt{1 + (z/\alpha)^2} - 1)`
2     huber                 :math:`z^2/2` if :math:`|z| \le \alpha`, else
                            :math:`\alpha (|z| - \alpha/2)`
3     welsch                :math:`1 - \exp(-z^2 / (2\alpha^2))`
4     truncated_quadratic   :math:`\min(z^2, \alpha^2) / 2`
====  ====================  ==========================================================

Solvers:

- quadratic: the mean;
- pseudo_huber, huber: safeguarded Newton on ``F(y) = sum_i phi'(y - x_i)`` (increasing)
  inside the bracket ``[min x, max x]``, a bisection step whenever Newton leaves it; for
  huber, ``F`` is piecewise linear and a Newton step lands on the exact root of its piece,
  so the iteration ends exactly (to round-off). When ``F`` vanishes on an interval (no
  residual inside ``(-alpha, alpha)``: the minimizers form an interval), the midpoint of
  that interval is returned;
- welsch (non-convex): descent from the start ``y0`` (the caller passes the median), with
  Newton steps where the curvature is positive and steps of length ``alpha`` (the trust
  radius) in the descent direction where it is not; once a sign change of ``F`` is
  bracketed, safeguarded Newton/bisection in the bracket. Every step goes downhill in the
  sense of ``-F``, so the result is a local minimizer (``F = 0``, ``F' > 0``);
- truncated_quadratic (non-convex, non-smooth): exact global minimizer by enumerating the
  ``2n + 1`` intervals cut by the points ``x_i +- alpha`` (the inlier set is constant on
  each; a local minimum is the inlier mean when it lies inside its interval), in
  ``O(n log n)`` after sorting. A minimizer never sits at a kink (the kinks are concave).

All stop when the Newton step falls below ``1e-15 (|y| + alpha)`` (after taking it: quadratic
convergence makes the result exact to round-off) and report the relative residual
``min(|F| / sum_i |phi'(y - x_i)|, |F / F'| / (|y| + alpha))`` (round-off level at the
solution; the second form covers rows where every term of ``F`` is tiny), or, when the
bracket of the root shrinks below that length, its relative width (``alpha`` far below the
spread of ``x``: ``F`` jumps across the root, a median).

The VJP is the unconstrained implicit formula (Gould et al., Proposition 4.4): ``y*`` solves
``F(y, x) = 0``, ``dF/dy = sum_j phi''(y - x_j)`` and ``dF/dx_i = -phi''(y - x_i)``, so

.. math:: \frac{\partial y^*}{\partial x_i} = \frac{\phi''(y^* - x_i)}{\sum_j \phi''(y^* - x_j)},

``O(n)`` per row (the huber interval case: ``1/2`` on the two points that bound it).

References
----------
S. Gould, R. Hartley, D. Campbell, "Deep Declarative Networks", IEEE TPAMI 2021, section 5.1.
"""

import numpy as np
from numba import njit, prange

from bilevel.solvers.reductions import mean
from bilevel.solvers.selection import median
from bilevel.solvers.serial import serial_twin

__all__ = ["KERNELS", "PENALTIES", "pool_solve_batched", "pool_solve_rows", "pool_vjp_batched",
           "pool_vjp_rows", "warmup"]

PENALTIES = {"quadratic": 0, "pseudo_huber": 1, "huber": 2, "welsch": 3,
             "truncated_quadratic": 4}

_STEP_TOL = 1e-15


@njit(cache=True, fastmath={"reassoc", "contract", "arcp", "nsz"})
def _inv_hypot1(r):
    """``1 / sqrt(1 + r^2)`` without overflow: ``(1/m) / sqrt((1/m)^2 + (r/m)^2)``, ``m >= 1``.

    ``r = z / alpha`` passes ``1e154`` (``r^2`` overflows, the pseudo-Huber derivative
    vanishes and the mean comes out instead of the median) once ``alpha`` is tiny; branch-free
    so that the sums still vectorize.
    """
    m = max(abs(r), 1.0)
    q = 1.0 / m
    w = r * q
    return q * (q * q + w * w) ** -0.5       # vectorizes (1 / sqrt does not)


@njit(cache=True)
def _dphi(z, penalty, a):
    """``(phi'(z), phi''(z))`` of penalty ``penalty`` with parameter ``a``."""
    if penalty == 0:
        return z, 1.0
    if penalty == 1:
        t = _inv_hypot1(z / a)
        return z * t, t * t * t
    if penalty == 2:
        if abs(z) < a:
            return z, 1.0
        return a if z > 0 else -a, 0.0
    if penalty == 3:
        r = z / a
        e = np.exp(-0.5 * r * r) / (a * a)
        return z * e, (1.0 - r * r) * e
    if abs(z) < a:                              # truncated quadratic
        return z, 1.0
    return 0.0, 0.0


# Reassociation lets LLVM vectorize the sums; no flag that assumes finite values.
_FM = {"reassoc", "contract", "arcp", "nsz"}


@njit(cache=True, fastmath=_FM)
def _sums_pseudo_huber(x, y, a):
    g = 0.0
    h = 0.0
    s = 0.0
    rr = 0.0                                    # sum (z/alpha)^2: inf iff one overflowed
    inv = 1.0 / a
    for i in range(x.shape[0]):
        z = y - x[i]
        r = z * inv
        q = r * r
        t = (1.0 + q) ** -0.5                 # vectorizes (1 / sqrt does not)
        g += z * t
        h += t * t * t
        s += abs(z * t)
        rr += q
    if rr < np.inf:
        return g, h, s
    # (z / alpha)^2 overflowed somewhere (tiny alpha): again without overflow, slower
    g = 0.0
    h = 0.0
    s = 0.0
    for i in range(x.shape[0]):
        z = y - x[i]
        t = _inv_hypot1(z * inv)
        g += z * t
        h += t * t * t
        s += abs(z * t)
    return g, h, s


@njit(cache=True, fastmath=_FM)
def _sums_huber(x, y, a):
    g = 0.0
    h = 0.0
    s = 0.0
    for i in range(x.shape[0]):
        z = y - x[i]
        c = min(max(z, -a), a)
        g += c
        h += 1.0 if abs(z) < a else 0.0
        s += abs(c)
    return g, h, s


@njit(cache=True, fastmath=_FM)
def _sums_welsch(x, y, a):
    g = 0.0
    h = 0.0
    s = 0.0
    inv = 1.0 / a
    inv2 = inv * inv
    for i in range(x.shape[0]):
        z = y - x[i]
        r = z * inv
        e = np.exp(-0.5 * r * r) * inv2
        g += z * e
        h += (1.0 - r * r) * e
        s += abs(z * e)
    return g, h, s


@njit(cache=True)
def _residual_sums(x, y, penalty, a):
    """``(F(y), F'(y), sum_i |phi'(y - x_i)|)``, one specialized loop per penalty."""
    if penalty == 1:
        return _sums_pseudo_huber(x, y, a)
    if penalty == 2:
        return _sums_huber(x, y, a)
    if penalty == 3:
        return _sums_welsch(x, y, a)
    g = 0.0
    h = 0.0
    s = 0.0
    for i in range(x.shape[0]):
        d1, d2 = _dphi(y - x[i], penalty, a)
        g += d1
        h += d2
        s += abs(d1)
    return g, h, s


@njit(cache=True)
def _certificate(g, h, s, y, a):
    """``|F| / sum |phi'|``, or the relative Newton step ``|F / F'| / (|y| + a)`` if smaller.

    The first is ``~ n eps`` at a solution unless every term is tiny (a point far from all
    others but one); the second is the distance to the root when ``F' > 0``.
    """
    res = abs(g) / s if s > 0.0 else abs(g)
    if h > 0.0:
        res = min(res, abs(g) / h / (abs(y) + a))
    return res


@njit(cache=True)
def _relative_residual(x, y, penalty, a):
    g, h, s = _residual_sums(x, y, penalty, a)
    return _certificate(g, h, s, y, a)


@njit(cache=True)
def _huber_interval(x, y, a):
    """Huber with no residual in ``(-a, a)``: the bracketing points ``(p, q)`` of ``y``."""
    p = -1
    q = -1
    for i in range(x.shape[0]):
        if x[i] <= y - a and (p < 0 or x[i] > x[p]):
            p = i
        if x[i] >= y + a and (q < 0 or x[i] < x[q]):
            q = i
    return p, q


@njit(cache=True, inline="always")
def _newton_row(x, penalty, a, y0, max_iter):
    """Safeguarded Newton for codes 1-3; returns ``(y, n_iter, relative residual)``.

    Inside a bracket ``lo < y < hi`` with ``F(lo) < 0 < F(hi)`` the steps follow
    Numerical Recipes' ``rtsafe``: Newton when it stays in the bracket and at least halves
    the step of two iterations before, bisection otherwise. The residual is the one of the
    last evaluation when the iteration ends on a step below ``1e-15 (|y| + alpha)``.
    """
    convex = penalty != 3
    lo = -np.inf
    hi = np.inf
    y = y0
    if convex:
        lo = x[0]                               # a loop: np.min / np.max cost ~1 s to compile
        hi = x[0]
        for i in range(1, x.shape[0]):
            lo = min(lo, x[i])
            hi = max(hi, x[i])
        if lo == hi:
            return lo, 0, 0.0
        y = min(max(y0, lo), hi)
    trust = a if not convex else np.inf
    dx = np.inf
    dxold = np.inf
    it = 0
    res = np.inf
    fresh = False                               # res belongs to the returned y (or a step < tol)
    while it < max_iter:
        it += 1
        g, h, sabs = _residual_sums(x, y, penalty, a)
        res = _certificate(g, h, sabs, y, a)
        if g == 0.0:
            if h > 0.0 or convex:
                fresh = True
                break
            # welsch at a stationary point that is not a minimum (a median halfway between
            # two clusters): leave it towards the nearest point, the larger one on a tie
            near = x[0]
            for i in range(x.shape[0]):
                d = abs(x[i] - y) - abs(near - y)
                if d < 0.0 or (d == 0.0 and x[i] > near):
                    near = x[i]
            y = y + (trust if near >= y else -trust)
            continue
        if g < 0.0:
            lo = y
        else:
            hi = y
        tol = _STEP_TOL * (abs(y) + a)
        if h > 0.0 and abs(g) <= tol * h:
            y = y - g / h                       # converged: a round-off-sized step
            fresh = True
            break
        dxold = dx
        if lo > -np.inf and hi < np.inf:
            if h > 0.0 and lo < y - g / h < hi and abs(2.0 * g) <= abs(dxold * h):
                dx = -g / h
            else:
                dx = 0.5 * (lo + hi) - y
        else:                                   # welsch, not yet bracketed: descend
            if h > 0.0:
                dx = -g / h
            else:
                dx = -trust if g > 0.0 else trust
            if abs(dx) > trust:
                dx = trust if dx > 0.0 else -trust
        y = y + dx
        if abs(dx) <= tol:
            fresh = True
            res = min(res, (hi - lo) / (abs(y) + a))
            break
        if hi - lo <= tol:
            # the root is bracketed to round-off (F(lo) < 0 < F(hi)): that is the certificate
            # where F jumps across it (alpha far below the spread: F ~ alpha sign, F' ~ 0)
            res = min(_relative_residual(x, y, penalty, a), (hi - lo) / (abs(y) + a))
            fresh = True
            break
    if penalty == 2:
        g, h, _ = _residual_sums(x, y, penalty, a)
        if h == 0.0 and g == 0.0:              # flat: minimizers form an interval
            p, q = _huber_interval(x, y, a)
            if p >= 0 and q >= 0:
                y = 0.5 * (x[p] + x[q])
            fresh = False
    if not fresh:
        res = _relative_residual(x, y, penalty, a)
    return y, it, res


@njit(cache=True)
def _tq_row(sorted_x, a):
    """Exact global minimizer of the truncated quadratic of a sorted row; ``(y, gap)``.

    ``gap`` is the energy difference between the best and the second-best local minimum
    (``inf`` when there is only one), in units of ``a^2 / 2``. The caller sorts the rows
    (in NumPy: ``np.sort`` in a kernel compiles for seconds in every new cache).
    """
    n = sorted_x.shape[0]
    shift = sorted_x[n // 2]
    xs = sorted_x - shift
    best = np.inf
    second = np.inf
    bj = 0
    bk = n
    p = 0                                       # points entered: xs[i] - a <= y
    q = 0                                       # points left: xs[i] + a <= y
    S = 0.0
    lo = -np.inf
    while p < n or q < n:
        # next event: an entry at xs[p] - a or an exit at xs[q] + a (exits first on ties)
        if q < n and (p >= n or xs[q] + a <= xs[p] - a):
            ev = xs[q] + a
            S -= xs[q]
            q += 1
        else:
            ev = xs[p] - a
            S += xs[p]
            p += 1
        lo = ev
        c = p - q
        if c <= 0:
            continue
        nxt = np.inf
        if p < n:
            nxt = xs[p] - a
        if q < n:
            nxt = min(nxt, xs[q] + a)
        m = S / c
        if lo < m < nxt:                        # a local minimum inside its interval
            # energy in units of a^2/2: sum_inliers (x - m)^2 / a^2 + (n - c)
            e = 0.0
            for i in range(q, p):
                e += (xs[i] - m) * (xs[i] - m)
            e = e / (a * a) + (n - c)
            if e < best:
                second = best
                best = e
                bj = q
                bk = p
            elif e < second:
                second = e
    tot = 0.0
    for i in range(bj, bk):
        tot += xs[i]
    return tot / (bk - bj) + shift, second - best


@njit(cache=True, inline="always")
def _solve_row(x, sorted_x, penalty, a, y0, max_iter):
    if penalty == 0:
        y = mean(x)
        it = 1
    elif penalty == 4:
        y, _ = _tq_row(sorted_x, a)
        it = 1
    else:
        if np.isnan(y0):
            y0 = median(x) if penalty == 3 else mean(x)
        return _newton_row(x, penalty, a, y0, max_iter)
    return y, it, _relative_residual(x, y, penalty, a)


@njit(cache=True, parallel=True)
def pool_solve_batched(X, sorted_X, penalty, alpha, Y0, max_iter):
    """Pool every row of ``X`` (b, n); return ``(Y (b,), n_iter (b,), residual (b,))``.

    ``sorted_X`` holds the rows of ``X`` sorted for the truncated quadratic
    (``np.sort(X, axis=1)``); the other penalties do not read it (pass ``X``).

    ``Y0`` (b,) is the start of the non-convex welsch descent (ignored by the convex and the
    exact solvers except as the first Newton iterate); NaN entries start at the row's
    median (welsch) or mean (pseudo-Huber, Huber); ``residual`` is the certificate of the
    module docstring.
    """
    b = X.shape[0]
    Y = np.empty(b)
    iters = np.empty(b, np.int64)
    res = np.empty(b)
    for r in prange(b):
        y, it, rr = _solve_row(X[r], sorted_X[r], penalty, alpha, Y0[r], max_iter)
        Y[r] = y
        iters[r] = it
        res[r] = rr
    return Y, iters, res


@njit(cache=True, fastmath=_FM)
def _weights_pseudo_huber(x, y, a, g):
    W = 0.0
    rr = 0.0
    inv = 1.0 / a
    for i in range(x.shape[0]):
        r = (y - x[i]) * inv
        q = r * r
        t = (1.0 + q) ** -0.5                 # vectorizes (1 / sqrt does not)
        g[i] = t * t * t
        W += g[i]
        rr += q
    if rr < np.inf:
        return W, W
    W = 0.0                                     # (z/alpha)^2 overflowed: without overflow
    for i in range(x.shape[0]):
        t = _inv_hypot1((y - x[i]) * inv)
        g[i] = t * t * t
        W += g[i]
    return W, W


@njit(cache=True, fastmath=_FM)
def _weights_welsch(x, y, a, g):
    W = 0.0
    Wabs = 0.0
    inv = 1.0 / a
    for i in range(x.shape[0]):
        r = (y - x[i]) * inv
        g[i] = (1.0 - r * r) * np.exp(-0.5 * r * r) * (inv * inv)
        W += g[i]
        Wabs += abs(g[i])
    return W, Wabs


@njit(cache=True, inline="always")
def _vjp_row(x, sorted_x, penalty, a, y, v, g):
    """Write ``v dy/dx`` into ``g``; return the row's non-degeneracy margin."""
    n = x.shape[0]
    kink = np.inf
    if penalty == 1:
        W, Wabs = _weights_pseudo_huber(x, y, a, g)
    elif penalty == 3:
        W, Wabs = _weights_welsch(x, y, a, g)
    else:
        W = 0.0
        Wabs = 0.0
        for i in range(n):
            z = y - x[i]
            _, w = _dphi(z, penalty, a)
            g[i] = w
            W += w
            Wabs += abs(w)
            if penalty == 2 or penalty == 4:
                kink = min(kink, abs(abs(z) - a) / a)
    if penalty == 2 and W == 0.0:               # interval of minimizers: its midpoint
        for i in range(n):
            g[i] = 0.0
        p, q = _huber_interval(x, y, a)
        if p >= 0 and q >= 0:
            g[p] += 0.5 * v
            g[q] += 0.5 * v
        return kink
    if W <= 0.0:
        for i in range(n):
            g[i] = 0.0
        return 0.0
    scale = v / W
    for i in range(n):
        g[i] *= scale
    if penalty == 3:
        return W / Wabs
    if penalty == 2:
        return kink
    if penalty == 4:
        _, gap = _tq_row(sorted_x, a)
        return min(kink, gap)
    return np.inf


@njit(cache=True, parallel=True)
def pool_vjp_batched(X, sorted_X, penalty, alpha, Y, V):
    """``G[r] = V[r] dy*/dx`` at the rows' solutions ``Y``; return ``(G (b, n), margins (b,))``.

    ``sorted_X`` as for :func:`pool_solve_batched`.

    ``margins``: ``inf`` for quadratic and pseudo-Huber; for welsch the relative curvature
    ``sum phi'' / sum |phi''|`` (0: degenerate, and the gradient is set to 0); for huber
    and the truncated quadratic the distance of the nearest residual to a kink
    ``min_i ||y - x_i| - alpha| / alpha`` (and, truncated quadratic, the energy gap to the
    second-best local minimum in units of ``alpha^2 / 2``).
    """
    b, n = X.shape
    G = np.empty((b, n))
    margins = np.empty(b)
    for r in prange(b):
        margins[r] = _vjp_row(X[r], sorted_X[r], penalty, alpha, Y[r], V[r], G[r])
    return G, margins


pool_solve_rows = serial_twin(pool_solve_batched, "pool_solve_rows")
pool_vjp_rows = serial_twin(pool_vjp_batched, "pool_vjp_rows")


KERNELS = (pool_solve_batched, pool_solve_rows, pool_vjp_batched, pool_vjp_rows)


def warmup(parallel=True):
    """Compile this module's kernels once on a tiny float64 instance.

    ``parallel=False`` leaves the ``prange`` kernels (``*_batched``) to their first use.
    """
    X = np.array([[0.0, 1.0, 5.0], [2.0, -1.0, 0.5]])
    Y0 = np.median(X, axis=1)
    sorted_X = np.sort(X, axis=1)
    for penalty in range(5):
        Y, _, _ = pool_solve_rows(X, sorted_X, penalty, 1.0, Y0, 50)
        pool_vjp_rows(X, sorted_X, penalty, 1.0, Y, np.ones(2))
        if parallel:
            pool_solve_batched(X, sorted_X, penalty, 1.0, Y0, 50)
            pool_vjp_batched(X, sorted_X, penalty, 1.0, Y, np.ones(2))
