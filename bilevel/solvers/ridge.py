r"""Ridge regression by a Cholesky solve of the normal equations.

.. math:: w^* = \arg\min_w \frac{1}{2n}\|Xw - y\|^2 + \frac12 \sum_j \lambda_j w_j^2
          \iff (X^\top X / n + \mathrm{diag}(\lambda)) w^* = X^\top y / n

The kernel takes ``X^T X / n`` and ``X^T y / n``, formed once per problem by NumPy's BLAS:
every ``lam`` then costs one Cholesky factorization, and the kernel compiles without numba's
BLAS bindings (2.4 s of a 4.7 s first compilation).
"""

import numpy as np
from numba import njit

from bilevel.solvers.cholesky import cholesky_solve

__all__ = ["KERNELS", "ridge_cholesky", "warmup"]


@njit(cache=True)
def ridge_cholesky(gram, b, lam):
    """Solve ridge regression with per-feature weights ``lam`` (shape (p,)).

    ``gram = X^T X / n`` (p, p) and ``b = X^T y / n`` (p,). Returns ``(w, n_iter,
    residual)`` with residual ``||grad E(w)||_inf`` relative to its terms' scale
    ``||b||_inf + ||H||_inf ||w||_inf``, ``H = gram + diag(lam)`` (scale-free: ``c y`` gives
    ``c w*`` and the same residual), and ``n_iter = 0`` when ``H`` is not positive definite
    (w is then NaN).
    """
    p = b.shape[0]
    H = np.empty((p, p))
    for i in range(p):
        for j in range(p):
            H[i, j] = gram[i, j]
        H[i, i] += lam[i]
    w, ok = cholesky_solve(H, b)
    if not ok:
        return w, 0, np.inf
    # Plain loops, not axis reductions: numba compiles them in a fraction of the time.
    b_max = 0.0
    w_max = 0.0
    h_max = 0.0
    residual = 0.0
    for i in range(p):
        row = 0.0
        hw = 0.0
        for j in range(p):
            row += abs(H[i, j])
            hw += H[i, j] * w[j]
        h_max = max(h_max, row)
        b_max = max(b_max, abs(b[i]))
        w_max = max(w_max, abs(w[i]))
        residual = max(residual, abs(hw - b[i]))
    scale = b_max + h_max * w_max
    return w, 1, residual / scale if scale > 0.0 else residual


KERNELS = (ridge_cholesky,)


def warmup(parallel=True):
    """Compile this module's kernels once on a tiny float64 instance.

    ``parallel`` is unused: this module has no ``prange`` kernels.
    """
    X, y = np.array([[1.0, 0.5], [-0.5, 1.0], [0.3, -1.0]]), np.array([1.0, -1.0, 1.0])
    ridge_cholesky(X.T @ X / 3, X.T @ y / 3, np.ones(2))
