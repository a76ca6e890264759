r"""Bregman proximal methods whose update maps are smooth: the forward passes of BregmanUnroll.

Each kernel iterates a mirror step ``M(x, g) = grad psi*(grad psi(x) - g)``, which keeps
every iterate in the interior of the constraint set (Ochs, Ranftl, Brox, Pock, "Techniques
for gradient-based bilevel optimization with non-smooth lower level problems", J. Math.
Imaging Vis. 2016). Kinds (integer codes, ``x`` viewed as rows ``(m, d)``):

- 0 euclidean: ``x - g``;
- 1 entropy (``x >= 0``): ``x exp(-g)``;
- 2 simplex (each row on the unit simplex): ``softmax(log x - g)``;
- 3 box (``[-1, 1]``): ``tanh(atanh(x) - g)``;
- 4 ball (each row in the unit ball): ``tanh(|w|) w / |w|``, ``w = atanh(|x|) x / |x| - g``
  (the box's entropy applied to the radius).

Kernels stop after ``n_steps`` steps or at the first iterate whose natural optimality
residual ``||x - P_C(x - grad f(x))||_inf`` is ``<= tol`` and return the iterate, the
number of steps taken and that residual.
"""

import numpy as np
from numba import njit

from bilevel.solvers.assign import assign
from bilevel.solvers.projections import simplex_tau
from bilevel.solvers.tv import diff_adjoint, diff_forward
from bilevel.solvers.tv2d import data_gradient, div2d, grad2d

__all__ = ["KERNELS", "bregman_pd_game", "bregman_pd_tv1d", "bregman_pd_tv2d",
           "bregman_quadratic", "bregman_segmentation", "lad_pdhg", "mirror_dual",
           "mirror_primal", "natural_residual", "projection_simplex", "warmup"]

EUCLIDEAN, ENTROPY, SIMPLEX, BOX, BALL = 0, 1, 2, 3, 4
# Kernels pass a mirror code as ``np.int64(CODE)``: a global constant is typed as a literal
# and would compile the mirror maps a second time, beside the int64 version Python calls use.
KIND_CODES = {"euclidean": EUCLIDEAN, "entropy": ENTROPY, "simplex": SIMPLEX, "box": BOX,
              "ball": BALL}


@njit(cache=True)
def projection_simplex(v):
    """Euclidean projection of a vector onto the unit simplex (exact, no sorting)."""
    tau, top = simplex_tau(v, 1.0)
    out = np.empty_like(v)
    for i in range(v.shape[0]):
        out[i] = max((v[i] - top) - tau, 0.0)
    return out


@njit(cache=True)
def mirror_dual(x, kind):
    """``grad psi(x)`` row by row (the mirror coordinates); ``x`` of shape (m, d)."""
    m, d = x.shape
    out = np.empty_like(x)
    for i in range(m):
        if kind == SIMPLEX or kind == ENTROPY:
            for j in range(d):
                out[i, j] = np.log(x[i, j])
        elif kind == BOX:
            for j in range(d):
                out[i, j] = np.arctanh(x[i, j])
        elif kind == BALL:
            sq = 0.0
            for j in range(d):
                sq += x[i, j] * x[i, j]
            r = np.sqrt(sq)
            scale = np.arctanh(r) / r if r > 1e-8 else 1.0 + sq / 3.0
            for j in range(d):
                out[i, j] = x[i, j] * scale
        else:
            for j in range(d):
                out[i, j] = x[i, j]
    return out


@njit(cache=True)
def mirror_primal(w, kind):
    """``grad psi*(w)`` row by row, the inverse of :func:`mirror_dual`.

    For the simplex ``w`` is normalized in place to ``log x`` (``w - logsumexp(w)``).
    """
    m, d = w.shape
    out = np.empty_like(w)
    for i in range(m):
        if kind == SIMPLEX:
            top = -np.inf
            for j in range(d):
                top = max(top, w[i, j])
            total = 0.0
            for j in range(d):
                total += np.exp(w[i, j] - top)
            shift = top + np.log(total)
            for j in range(d):
                w[i, j] -= shift
                out[i, j] = np.exp(w[i, j])
        elif kind == ENTROPY:
            for j in range(d):
                out[i, j] = np.exp(w[i, j])
        elif kind == BOX:
            for j in range(d):
                out[i, j] = np.tanh(w[i, j])
        elif kind == BALL:
            sq = 0.0
            for j in range(d):
                sq += w[i, j] * w[i, j]
            r = np.sqrt(sq)
            scale = np.tanh(r) / r if r > 1e-8 else 1.0 - sq / 3.0
            for j in range(d):
                out[i, j] = w[i, j] * scale
        else:
            for j in range(d):
                out[i, j] = w[i, j]
    return out


@njit(cache=True)
def natural_residual(x, g, kind):
    """``||x - P_C(x - g)||_inf``: zero exactly at the minimizers of ``f`` over ``C``."""
    m, d = x.shape
    worst = 0.0
    for i in range(m):
        if kind == SIMPLEX:
            p = projection_simplex(x[i] - g[i])
            for j in range(d):
                worst = max(worst, abs(x[i, j] - p[j]))
        elif kind == BALL:
            sq = 0.0
            for j in range(d):
                sq += (x[i, j] - g[i, j]) ** 2
            scale = 1.0 / max(1.0, np.sqrt(sq))
            for j in range(d):
                worst = max(worst, abs(x[i, j] - (x[i, j] - g[i, j]) * scale))
        else:
            for j in range(d):
                y = x[i, j] - g[i, j]
                if kind == ENTROPY:
                    y = max(y, 0.0)
                elif kind == BOX:
                    y = min(max(y, -1.0), 1.0)
                worst = max(worst, abs(x[i, j] - y))
    return worst


@njit(cache=True)
def bregman_quadratic(H, c, x0, kind, tau, n_steps, tol):
    """Bregman proximal gradient on ``f(x) = x^T H x / 2 + c^T x`` over the mirror's set.

    ``x0`` (m, d) interior; ``H`` (m d, m d) symmetric positive semidefinite; ``c`` (m d,).
    ``x+ = M(x, tau (H x + c))``, iterated in the mirror coordinates ``w = grad psi(x)``
    (``w+ = w - tau grad f(x)``), which stay finite. Returns ``(x, n_iter, residual)``.
    """
    m, d = x0.shape
    w = mirror_dual(x0, kind)
    x = mirror_primal(w, kind)
    g = np.empty((m, d))
    residual = np.inf
    n_iter = 0
    while True:
        flat = H @ x.ravel() + c
        for i in range(m):
            for j in range(d):
                g[i, j] = flat[i * d + j]
        residual = natural_residual(x, g, kind)
        if residual <= tol or n_iter >= n_steps:
            break
        w = w - tau * g
        x = mirror_primal(w, kind)
        n_iter += 1
    return x, n_iter, residual


@njit(cache=True, inline="always")
def _segmentation_gradient(C, mu, alpha, X):
    """``C + alpha X + mu L X``, ``L`` the 4-neighbour graph Laplacian of the pixel grid.

    ``L X`` edge by edge, ``(L X)_p = sum_{q ~ p} (X_p - X_q)``: loops without branches on
    the border, which LLVM would otherwise unswitch into many loop versions (4 s of
    compilation).
    """
    h, w, k = X.shape
    G = np.empty((h, w, k))
    for i in range(h):
        for j in range(w):
            for q in range(k):
                G[i, j, q] = C[i, j, q] + alpha * X[i, j, q]
    for i in range(h - 1):                      # vertical edges
        for j in range(w):
            for q in range(k):
                d = mu * (X[i, j, q] - X[i + 1, j, q])
                G[i, j, q] += d
                G[i + 1, j, q] -= d
    for i in range(h):                          # horizontal edges
        for j in range(w - 1):
            for q in range(k):
                d = mu * (X[i, j, q] - X[i, j + 1, q])
                G[i, j, q] += d
                G[i, j + 1, q] -= d
    return G


@njit(cache=True)
def bregman_segmentation(C, mu, alpha, X0, tau, n_steps, tol):
    """Entropic mirror descent for multi-label segmentation on a pixel grid.

    Energy ``<C, X> + (alpha/2)||X||^2 + (mu/2) sum_{p~q} ||X_p - X_q||^2`` with each pixel's
    label vector ``X_p`` on the simplex; ``C``, ``X0`` of shape (h, w, k). Iterates
    ``log X+ = log X - tau grad E(X)`` (normalized per pixel). Returns ``(X, n_iter, residual)``.
    """
    simplex = np.int64(SIMPLEX)
    h, w, k = X0.shape
    W = mirror_dual(X0.reshape(h * w, k), simplex)
    X = mirror_primal(W, simplex).reshape(h, w, k)
    residual = np.inf
    n_iter = 0
    while True:
        G = _segmentation_gradient(C, mu, alpha, X)
        residual = natural_residual(X.reshape(h * w, k), G.reshape(h * w, k), simplex)
        if residual <= tol or n_iter >= n_steps:
            break
        W = W - tau * G.reshape(h * w, k)
        X = mirror_primal(W, simplex).reshape(h, w, k)
        n_iter += 1
    return X, n_iter, residual


@njit(cache=True)
def bregman_pd_tv1d(s, lam, order, y0, z0, tau, sigma, n_steps, tol):
    r"""Bregman primal-dual method for 1-D TV denoising through its dual box.

    ``min_y max_{|z| <= 1} 1/2||y - s||^2 + lam <D^k y, z>``:
    ``y+ = y - tau (y - s + lam D^T z)``, ``z+ = tanh(atanh(z) + sigma lam D^k (2 y+ - y))``.
    Residual: the larger of ``||y - s + lam D^T z||_inf`` and
    ``||z - clip(z + D^k y, -1, 1)||_inf``. Returns ``(y, z, n_iter, residual)``.
    """
    y = y0.copy()
    v = np.arctanh(z0)
    z = np.tanh(v)
    residual = np.inf
    n_iter = 0
    while True:
        Dy = diff_forward(y, order)
        r = np.max(np.abs(y - s + lam * diff_adjoint(z, order)))
        zr = np.max(np.abs(z - np.minimum(np.maximum(z + Dy, -1.0), 1.0)))
        residual = max(r, zr)
        if residual <= tol or n_iter >= n_steps:
            break
        y_new = y - tau * (y - s + lam * diff_adjoint(z, order))
        v = v + sigma * lam * diff_forward(2.0 * y_new - y, order)
        z = np.tanh(v)
        y = y_new
        n_iter += 1
    return y, z, n_iter, residual


@njit(cache=True)
def bregman_pd_game(A, x0, y0, tau, sigma, n_steps, tol):
    r"""Entropic primal-dual method for the matrix game ``min_{x in S_m} max_{y in S_n} x^T A y``.

    ``x+ = softmax(log x - tau A y)``, ``y+ = softmax(log y + sigma A^T (2 x+ - x))``.
    Residual: the larger natural residual ``||x - P(x - A y)||_inf``,
    ``||y - P(y + A^T x)||_inf``. Returns ``(x, y, n_iter, residual)``.
    """
    simplex = np.int64(SIMPLEX)
    m, n = A.shape
    wx = mirror_dual(x0.reshape(1, m), simplex)
    wy = mirror_dual(y0.reshape(1, n), simplex)
    x = mirror_primal(wx, simplex).ravel()
    y = mirror_primal(wy, simplex).ravel()
    residual = np.inf
    n_iter = 0
    while True:
        gx = A @ y
        gy = -(A.T @ x)
        residual = max(natural_residual(x.reshape(1, m), gx.reshape(1, m), simplex),
                       natural_residual(y.reshape(1, n), gy.reshape(1, n), simplex))
        if residual <= tol or n_iter >= n_steps:
            break
        # In place on the (1, m) and (1, n) dual rows: numba compiles 2-D array
        # expressions several times slower than loops or 1-D ones.
        for i in range(m):
            wx[0, i] -= tau * gx[i]
        x_new = mirror_primal(wx, simplex).ravel()
        gy = A.T @ (2.0 * x_new - x)
        for j in range(n):
            wy[0, j] += sigma * gy[j]
        y = mirror_primal(wy, simplex).ravel()
        x = x_new
        n_iter += 1
    return x, y, n_iter, residual


@njit(cache=True)
def lad_pdhg(A, u, x0, y0, tau, sigma, n_steps):
    r"""Primal-dual hybrid gradient for least absolute deviations, with its dual iterates.

    ``min_x max_{|y| <= 1} <A x - u, y>``: ``x+ = x - tau A^T y``,
    ``y+ = clip(y + sigma (A (2 x+ - x) - u), -1, 1)`` (``tau sigma ||A||^2 < 1``). The dual
    iterates converge to a maximizer ``y*`` of ``-<u, y>`` over ``{A^T y = 0, |y| <= 1}``,
    so ``-y_k -> grad p(u)`` for ``p(u) = min_x ||A x - u||_1``.
    Returns ``(x, y, Y)`` with ``Y[k]`` the dual iterate after ``k + 1`` steps.
    """
    m = A.shape[0]
    x = x0.copy()
    y = y0.copy()
    Y = np.empty((n_steps, m))
    for k in range(n_steps):
        x_new = x - tau * (A.T @ y)
        y = np.minimum(np.maximum(y + sigma * (A @ (2.0 * x_new - x) - u), -1.0), 1.0)
        x = x_new
        assign(Y[k], y)
    return x, y, Y


@njit(cache=True)
def bregman_pd_tv2d(f, lam, w, identity, u0, z0, tau, sigma, n_steps, tol):
    r"""Bregman primal-dual method for 2-D isotropic TV through its dual discs.

    ``min_u max_{|z_ij| <= 1} 1/2||A u - f||^2 + lam <grad u, z>`` with ``z`` of shape
    (H, W, 2) and the ``ball`` mirror on each ``z_ij``:
    ``u+ = u - tau (A^T(A u - f) - lam div z)``, ``z+ = M_ball(z, -sigma lam grad(2u+ - u))``.
    ``A`` is the identity or the blur with kernel ``w`` (:mod:`bilevel.solvers.tv2d`).
    Residual: the larger of ``||A^T(Au - f) - lam div z||_inf`` and
    ``||z - P_ball(z + grad u)||_inf``. Returns ``(u, z, n_iter, residual)``.
    """
    ball = np.int64(BALL)
    H, W = f.shape
    u = u0.copy()
    v = mirror_dual(z0.reshape(H * W, 2), ball)
    z = mirror_primal(v, ball).reshape(H, W, 2)
    p = np.empty((2, H, W))
    residual = np.inf
    n_iter = 0
    r = np.empty((H, W))
    u_new = np.empty((H, W))
    ext = np.empty((H, W))
    while True:
        for i in range(H):
            for j in range(W):
                p[0, i, j] = z[i, j, 0]
                p[1, i, j] = z[i, j, 1]
        # Loops rather than 2-D array expressions, which numba compiles several times slower.
        data = data_gradient(u, f, w, identity)
        d = div2d(p)
        r_max = 0.0
        for i in range(H):
            for j in range(W):
                r[i, j] = data[i, j] - lam * d[i, j]
                r_max = max(r_max, abs(r[i, j]))
        g = grad2d(u)
        zr = 0.0
        for i in range(H):
            for j in range(W):
                a0 = z[i, j, 0] + g[0, i, j]
                a1 = z[i, j, 1] + g[1, i, j]
                scale = 1.0 / max(1.0, np.sqrt(a0 * a0 + a1 * a1))
                zr = max(zr, abs(z[i, j, 0] - a0 * scale), abs(z[i, j, 1] - a1 * scale))
        residual = max(r_max, zr)
        if residual <= tol or n_iter >= n_steps:
            break
        for i in range(H):
            for j in range(W):
                u_new[i, j] = u[i, j] - tau * r[i, j]
                ext[i, j] = 2.0 * u_new[i, j] - u[i, j]
        g = grad2d(ext)
        for i in range(H):
            for j in range(W):
                v[i * W + j, 0] += sigma * lam * g[0, i, j]
                v[i * W + j, 1] += sigma * lam * g[1, i, j]
        z = mirror_primal(v, ball).reshape(H, W, 2)
        u, u_new = u_new, u
        n_iter += 1
    return u, z, n_iter, residual


KERNELS = (bregman_pd_game, bregman_pd_tv1d, bregman_pd_tv2d, bregman_quadratic,
           bregman_segmentation, lad_pdhg, projection_simplex)


def warmup(parallel=True):
    """Compile this module's kernels once on a tiny float64 instance.

    ``parallel`` is unused: this module has no ``prange`` kernels.
    """
    H = np.array([[2.0, 0.5], [0.5, 1.0]])
    c = np.array([-1.0, 0.3])
    for kind in (EUCLIDEAN, ENTROPY, SIMPLEX, BOX, BALL):
        x0 = np.full((1, 2), 0.3)
        bregman_quadratic(H, c, x0, kind, 0.2, 5, 1e-12)
        mirror_primal(mirror_dual(x0, kind), kind)
        natural_residual(x0, x0, kind)
    projection_simplex(c)
    C = np.zeros((2, 2, 3))
    bregman_segmentation(C, 0.5, 0.1, np.full((2, 2, 3), 1.0 / 3.0), 0.2, 5, 1e-12)
    s = np.array([0.0, 1.0, 3.0, 2.0])
    bregman_pd_tv1d(s, 0.5, 1, s.copy(), np.zeros(3), 0.5, 0.5, 5, 1e-12)
    bregman_pd_game(H, np.full(2, 0.5), np.full(2, 0.5), 0.5, 0.5, 5, 1e-12)
    lad_pdhg(H, c, np.zeros(2), np.zeros(2), 0.1, 0.1, 5)
    f = np.eye(3)
    for identity in (True, False):
        bregman_pd_tv2d(f, 0.2, np.array([0.25, 0.5, 0.25]), identity, f.copy(),
                        np.zeros((3, 3, 2)), 0.5, 0.5, 5, 1e-12)
