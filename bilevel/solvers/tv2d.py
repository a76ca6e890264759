r"""2-D isotropic total variation: denoising and deblurring by primal-dual methods.

.. math:: u^* = \arg\min_u \tfrac12\|A u - f\|^2 + \lambda \sum_{ij} \|(\nabla u)_{ij}\|_2

with ``\nabla`` forward differences (Neumann boundary: zero across the last row and column)
and ``A`` the identity or a separable convolution with half-sample symmetric boundaries.
The dual variable ``p`` (shape ``(2, H, W)``) lives in the product of l2 balls of radius
``lam``; at a solution ``A^T (A u - f) = div p`` and ``<p_ij, grad u_ij> = lam |grad u_ij|``.

- ``A = I``: Chambolle and Pock's accelerated primal-dual method (Algorithm 2 of
  A. Chambolle, T. Pock, "A first-order primal-dual algorithm for convex problems with
  applications to imaging", J. Math. Imaging Vis. 2011), the data term being 1-strongly
  convex;
- general ``A``: the Condat-Vu primal-dual method with an explicit gradient step on the data
  term (L. Condat, J. Optim. Theory Appl. 2013; B. C. Vu, Adv. Comput. Math. 2013).

Both stop on the KKT residual of :func:`tv2d_kkt_residual`.
"""

import numpy as np
from numba import njit

from bilevel.solvers.reductions import max_nan

__all__ = ["KERNELS", "blur_apply", "data_gradient", "div2d", "gaussian_kernel", "grad2d",
           "project_balls", "tv2d_kkt_residual", "tv2d_solve", "tv2d_steps", "warmup"]

# Norm bound of the discrete gradient: ||grad||^2 <= 8.
_GRAD_NORM_SQ = 8.0


@njit(cache=True)
def _grad_into(u, g):
    H, W = u.shape
    for i in range(H):
        for j in range(W):
            g[0, i, j] = u[i + 1, j] - u[i, j] if i < H - 1 else 0.0
            g[1, i, j] = u[i, j + 1] - u[i, j] if j < W - 1 else 0.0


@njit(cache=True)
def _div_into(p, d):
    _, H, W = p.shape
    for i in range(H):
        for j in range(W):
            v = 0.0
            if i < H - 1:
                v += p[0, i, j]
            if i > 0:
                v -= p[0, i - 1, j]
            if j < W - 1:
                v += p[1, i, j]
            if j > 0:
                v -= p[1, i, j - 1]
            d[i, j] = v


@njit(cache=True)
def grad2d(u):
    """Forward differences ``(u[i+1, j] - u[i, j], u[i, j+1] - u[i, j])``, zero at the end."""
    g = np.empty((2,) + u.shape)
    _grad_into(u, g)
    return g


@njit(cache=True)
def div2d(p):
    """``div p = -grad^T p``, the negative adjoint of :func:`grad2d`."""
    d = np.empty(p.shape[1:])
    _div_into(p, d)
    return d


@njit(cache=True)
def project_balls(p, lam):
    """Project every ``p[:, i, j]`` onto the l2 ball of radius ``lam``, in place."""
    _, H, W = p.shape
    for i in range(H):
        for j in range(W):
            nrm = np.sqrt(p[0, i, j] ** 2 + p[1, i, j] ** 2)
            if nrm > lam:
                scale = lam / nrm
                p[0, i, j] *= scale
                p[1, i, j] *= scale


def gaussian_kernel(sigma, truncate=3.0):
    """Return normalized 1-D Gaussian weights: std ``sigma``, radius ``ceil(truncate sigma)``."""
    radius = max(1, int(np.ceil(truncate * sigma)))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (t / sigma) ** 2)
    return w / w.sum()


@njit(cache=True)
def _reflected_indices(n, r):
    """Fold the indices ``-r .. n + r - 1`` half-sample symmetrically: ``1 0 | 0 1 ...``."""
    idx = np.empty(n + 2 * r, dtype=np.int64)
    period = 2 * n
    for t in range(n + 2 * r):
        i = (t - r) % period
        idx[t] = i if i < n else period - 1 - i
    return idx


@njit(cache=True)
def blur_apply(u, w):
    """Separable convolution of ``u`` with the symmetric kernel ``w`` along both axes.

    With half-sample symmetric boundaries and a symmetric kernel the operator is symmetric,
    so it is its own adjoint.
    """
    H, W = u.shape
    r = (w.shape[0] - 1) // 2
    cols = _reflected_indices(W, r)
    rows = _reflected_indices(H, r)
    tmp = np.zeros((H, W))
    for i in range(H):
        for j in range(W):
            s = 0.0
            for k in range(2 * r + 1):
                s += w[k] * u[i, cols[j + k]]
            tmp[i, j] = s
    out = np.zeros((H, W))
    for i in range(H):
        for k in range(2 * r + 1):
            src = rows[i + k]
            for j in range(W):
                out[i, j] += w[k] * tmp[src, j]
    return out


@njit(cache=True)
def data_gradient(u, f, w, identity):
    """``A^T (A u - f)``."""
    Au = u if identity else blur_apply(u, w)
    r = np.empty(f.shape)
    for i in range(f.shape[0]):         # a loop: 2-D array expressions compile slowly
        for j in range(f.shape[1]):
            r[i, j] = Au[i, j] - f[i, j]
    return r if identity else blur_apply(r, w)


@njit(cache=True)
def tv2d_kkt_residual(u, p, f, lam, w, identity):
    """Relative KKT residual of ``(u, p)``: ``max(stationarity, complementarity)``.

    Stationarity ``||A^T(Au - f) - div p||_inf / ||f||_inf``; complementarity
    ``sum_ij (lam |grad u_ij| - <p_ij, grad u_ij>) / (||f||^2 / 2)`` (for ``A = I``
    and ``u = f + div p`` it is the duality gap); ``p`` must be feasible. Both are relative
    to the data's own scale (1 for ``f = 0``), so that ``(c f, c lam)`` runs the same
    iterations as ``(f, lam)``, scaled by ``c``.
    """
    H, W = u.shape
    data = data_gradient(u, f, w, identity)
    dp = div2d(p)
    fs = 0.0                    # loops: 2-D array expressions and np.max compile slowly
    stat = 0.0
    for i in range(H):
        for j in range(W):
            fs = max_nan(fs, abs(f[i, j]))
            stat = max_nan(stat, abs(data[i, j] - dp[i, j]))
    if fs == 0.0:
        fs = 1.0
    stat /= fs
    g = grad2d(u)
    comp = 0.0
    energy = 0.0                # ||f||^2 / (2 fs^2), without underflow
    for i in range(H):
        for j in range(W):
            comp += lam * np.sqrt(g[0, i, j] ** 2 + g[1, i, j] ** 2) \
                - p[0, i, j] * g[0, i, j] - p[1, i, j] * g[1, i, j]
            energy += 0.5 * (f[i, j] / fs) ** 2
    if energy == 0.0:
        energy = 1.0
    comp = comp / fs / fs / energy
    return max_nan(stat, comp)


# Step sizes (tau, sigma). A = I: tau sigma ||grad||^2 < 1. Otherwise (||A|| <= 1 for a
# normalized non-negative kernel): 1/tau - sigma ||grad||^2 > ||A||^2 / 2.
_STEPS_IDENTITY = (0.99 / np.sqrt(_GRAD_NORM_SQ), 0.99 / np.sqrt(_GRAD_NORM_SQ))
_STEPS_BLUR = (1.0, 0.49 / _GRAD_NORM_SQ)


def tv2d_steps(identity):
    """Primal and dual step sizes ``(tau, sigma)`` of the fixed-step iteration."""
    return _STEPS_IDENTITY if identity else _STEPS_BLUR


@njit(cache=True)
def tv2d_solve(f, lam, u0, p0, w, identity, tol, max_iter):
    """Solve 2-D TV denoising (``identity``) or deblurring with kernel ``w`` from ``(u0, p0)``.

    The fixed-step primal-dual iteration (:func:`tv2d_steps` gives ``tau, sigma``):

    - ``A = I`` (Chambolle-Pock): ``u+ = (u + tau div p + tau f) / (1 + tau)``,
      ``p+ = P_lam(p + sigma grad(2 u+ - u))``;
    - otherwise (Condat-Vu): ``u+ = u - tau (A^T (A u - f) - div p)``, the same ``p+``;

    with ``P_lam`` the projection onto the balls. Returns ``(u, p, n_iter, residual)``;
    the residual (:func:`tv2d_kkt_residual`) is checked every 20 iterations and the loop
    stops once it is ``<= tol``.
    """
    H, W = f.shape
    tau, sigma = _STEPS_IDENTITY if identity else _STEPS_BLUR
    u = u0.copy()
    p = p0.copy()
    project_balls(p, lam)
    u_new = np.empty((H, W))
    d = np.empty((H, W))
    g = np.empty((2, H, W))
    ext = np.empty((H, W))
    residual = tv2d_kkt_residual(u, p, f, lam, w, identity)
    it = 0
    while it < max_iter and residual > tol:
        it += 1
        _div_into(p, d)
        if identity:
            for i in range(H):
                for j in range(W):
                    u_new[i, j] = (u[i, j] + tau * (d[i, j] + f[i, j])) / (1.0 + tau)
        else:
            r = data_gradient(u, f, w, identity)
            for i in range(H):
                for j in range(W):
                    u_new[i, j] = u[i, j] - tau * (r[i, j] - d[i, j])
        for i in range(H):
            for j in range(W):
                ext[i, j] = 2.0 * u_new[i, j] - u[i, j]
                u[i, j] = u_new[i, j]
        _grad_into(ext, g)
        for i in range(H):
            for j in range(W):
                a = p[0, i, j] + sigma * g[0, i, j]
                b = p[1, i, j] + sigma * g[1, i, j]
                nrm = np.sqrt(a * a + b * b)
                scale = lam / nrm if nrm > lam else 1.0
                p[0, i, j] = a * scale
                p[1, i, j] = b * scale
        if it % 20 == 0 or it == max_iter:
            residual = tv2d_kkt_residual(u, p, f, lam, w, identity)
    return u, p, it, residual


KERNELS = (tv2d_kkt_residual, tv2d_solve)


def warmup(parallel=True):
    """Compile this module's kernels once on a tiny float64 instance.

    ``parallel`` is unused: this module has no ``prange`` kernels.
    """
    f = np.array([[0.0, 1.0, 1.0], [0.0, 1.0, 2.0]])
    w = gaussian_kernel(0.8)
    for identity in (True, False):
        tv2d_solve(f, 0.3, f, np.zeros((2, 2, 3)), w, identity, 1e-8, 20)
    tv2d_kkt_residual(f, np.zeros((2, 2, 3)), f, 0.3, w, True)
    project_balls(np.zeros((2, 2, 3)), 0.3)
    blur_apply(f, w)
    div2d(grad2d(f))
